"""Where RecFlow files come from: a local folder, ``gs://bucket/prefix`` or ``s3://bucket/prefix``.

The reader only needs four things from a source: list the days (the names
``all_stage/YYYY-MM-DD.feather`` of a real date; :meth:`Source.scan_days` also names every
other file of the three day folders, which the reader warns about), read a small file's
bytes (the pickles), give a local path for a large file (Feather is memory-mapped, so a GCS
object is downloaded once into a temporary cache), and fingerprint a file so preprocessing
can tell whether a day's input changed. Local fingerprints are size + sha256 of the content; GCS fingerprints are
size + generation + md5 from the object's metadata (no download needed).

With ``STORAGE_EMULATOR_HOST`` set (tests, local emulators) the GCS client uses anonymous
credentials and the project ``test``; otherwise the default Google credentials.

S3 (AWS, MinIO, any S3-compatible store) goes through boto3 with its standard environment:
``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``) for a non-AWS endpoint,
``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (or a profile), ``AWS_DEFAULT_REGION``.
S3 fingerprints are size + ETag from the object listing (no download needed).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import os
import re
import shutil
import tempfile
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from lcron.errors import DataError
from lcron.jsonfile import read_json

__all__ = ["Source", "LocalSource", "GCSSource", "S3Source", "ReferencedSource", "open_source",
           "read_ingest_manifest", "INGEST_MANIFEST", "INGEST_KIND", "REFERENCE_MODE", "DAY_RE", "DAY_FOLDERS",
           "DayListing", "day_of_name", "gcs_client", "s3_client", "s3_message"]

DAY_RE = re.compile(r"^(\d{4}-\d{2}-\d{2})\.feather$")
_DAY_FILE = re.compile(r"^(\d{4}-\d{2}-\d{2})\.([A-Za-z0-9]+)$")
# The folders that hold one file per day, and the extension of those files.
DAY_FOLDERS = {"all_stage": "feather", "request_id_dict": "pkl", "seq_effective_50_dict": "pkl"}
_HASH_CHUNK = 1 << 20
#: The manifest ``lcron ingest`` writes last into its output folder, its ``kind``, and the
#: ``mode`` of a manifest that references the source instead of holding a copy of it.
INGEST_MANIFEST = "ingest.json"
INGEST_KIND = "lcron-ingest"
REFERENCE_MODE = "reference"


def day_of_name(name: str, ext: str) -> str | None:
    """The day of a file named ``YYYY-MM-DD.<ext>`` (a real date), else None."""
    m = _DAY_FILE.match(name)
    if m is None or m.group(2) != ext:
        return None
    try:
        _dt.date.fromisoformat(m.group(1))
    except ValueError:
        return None
    return m.group(1)


@dataclass
class DayListing:
    """What the three day folders hold: the days (names of ``all_stage/*.feather``), the files
    that are not day files (relative path, expected extension), and the pickles of a day that
    has no all_stage file (relative path, day)."""

    days: list[str]
    not_days: list[tuple[str, str]] = field(default_factory=list)
    orphans: list[tuple[str, str]] = field(default_factory=list)


class Source(ABC):
    """Read access to one RecFlow root. Paths are relative to the root, with ``/``."""

    uri: str
    # True when fingerprint() reads and hashes the content (worth running in parallel).
    hashes_content: bool = False

    @abstractmethod
    def exists(self, rel: str) -> bool: ...

    @abstractmethod
    def size(self, rel: str) -> int:
        """Size in bytes; DataError naming the file if it does not exist."""

    @abstractmethod
    def read_bytes(self, rel: str) -> bytes: ...

    @abstractmethod
    def local_path(self, rel: str) -> Path:
        """A local file with the content of ``rel`` (the file itself, or a cached download)."""

    @abstractmethod
    def fingerprint(self, rel: str, *, keep: bool = False) -> dict[str, Any]:
        """Identity of the file's content. ``keep=True`` (local files) keeps the bytes read
        for hashing so the next :meth:`read_bytes` of ``rel`` does not read the file again."""

    @abstractmethod
    def list_names(self, folder: str) -> list[str]:
        """Base names of the files directly in ``folder``."""

    def open_binary(self, rel: str) -> BinaryIO:
        """A binary stream of ``rel``'s content (a buffered file; remote objects are
        downloaded to the cache first, :meth:`release` drops them). Pickles are unpickled
        from it, so their bytes are never held whole next to the objects."""
        return open(self.local_path(rel), "rb")

    def describe(self, rel: str) -> str:
        """The full location of ``rel`` for messages."""
        return f"{self.uri.rstrip('/')}/{rel}"

    def list_days(self) -> list[str]:
        """Days that have an ``all_stage/<day>.feather`` file (a real date), sorted."""
        return sorted(d for n in self.list_names("all_stage") if (d := day_of_name(n, "feather")) is not None)

    def scan_days(self) -> DayListing:
        """The days, and every file of the three day folders that is not used as a day file
        (see :class:`DayListing`); one listing per folder."""
        found: dict[str, dict[str, str]] = {}  # folder -> day -> name
        not_days: list[tuple[str, str]] = []
        for folder, ext in DAY_FOLDERS.items():
            found[folder] = {}
            for name in self.list_names(folder):
                day = day_of_name(name, ext)
                if day is None:
                    not_days.append((f"{folder}/{name}", ext))
                else:
                    found[folder][day] = name
        days = sorted(found["all_stage"])
        orphans = sorted((f"{folder}/{name}", day) for folder in DAY_FOLDERS if folder != "all_stage"
                         for day, name in found[folder].items() if day not in found["all_stage"])
        return DayListing(days=days, not_days=not_days, orphans=orphans)

    def release(self, rel: str) -> None:
        """Drop anything cached for ``rel`` (kept bytes, a downloaded copy)."""

    def close(self) -> None:
        """Release temporary files (GCS cache)."""

    def __enter__(self) -> "Source":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LocalSource(Source):
    hashes_content = True

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._kept: dict[str, bytes] = {}
        if not self.root.is_dir():
            raise DataError(f"RecFlow source {self.root} is not a folder (expected all_stage/, request_id_dict/, "
                            "seq_effective_50_dict/, others/)")
        self.uri = str(self.root)

    def _path(self, rel: str) -> Path:
        return self.root / rel

    def describe(self, rel: str) -> str:
        return str(self._path(rel))

    def exists(self, rel: str) -> bool:
        return self._path(rel).is_file()

    def _require(self, rel: str) -> Path:
        p = self._path(rel)
        if not p.is_file():
            raise DataError(f"{p}: file is missing")
        return p

    def size(self, rel: str) -> int:
        return self._require(rel).stat().st_size

    def read_bytes(self, rel: str) -> bytes:
        kept = self._kept.pop(rel, None)
        return kept if kept is not None else self._require(rel).read_bytes()

    def local_path(self, rel: str) -> Path:
        return self._require(rel)

    def open_binary(self, rel: str) -> BinaryIO:
        kept = self._kept.pop(rel, None)
        return io.BytesIO(kept) if kept is not None else open(self._require(rel), "rb")

    def fingerprint(self, rel: str, *, keep: bool = False) -> dict[str, Any]:
        p = self._require(rel)
        if keep:
            data = p.read_bytes()
            self._kept[rel] = data
            return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        h = hashlib.sha256()
        size = 0
        with open(p, "rb") as fh:
            while chunk := fh.read(_HASH_CHUNK):
                h.update(chunk)
                size += len(chunk)
        return {"size": size, "sha256": h.hexdigest()}

    def release(self, rel: str) -> None:
        self._kept.pop(rel, None)

    def close(self) -> None:
        self._kept.clear()

    def list_names(self, folder: str) -> list[str]:
        d = self._path(folder)
        if not d.is_dir():
            return []
        return sorted(e.name for e in os.scandir(d) if e.is_file())


class GCSSource(Source):
    """``gs://bucket/prefix`` through google-cloud-storage."""

    def __init__(self, uri: str, client: Any = None) -> None:
        self._open_uri(uri, "gs", "a")
        self._client = client or gcs_client()
        self._bucket = self._client.bucket(self.bucket_name)

    def _open_uri(self, uri: str, scheme: str, article: str) -> None:
        """Bucket and prefix of ``scheme://bucket/prefix``, and an empty object and download cache."""
        m = re.match(rf"^{scheme}://([^/]+)/?(.*)$", uri)
        if not m:
            raise DataError(f"{uri}: not {article} {scheme}://bucket/prefix URI")
        self.uri = uri.rstrip("/")
        self.bucket_name, self.prefix = m.group(1), m.group(2).strip("/")
        self._blobs: dict[str, Any] = {}
        self._cache_dir: Path | None = None
        self._cache_lock = threading.Lock()
        self._cached: dict[str, Path] = {}

    def _cache_folder(self, prefix: str) -> Path:
        """The download cache, made once (preprocessing downloads from two threads)."""
        with self._cache_lock:
            if self._cache_dir is None:
                self._cache_dir = Path(tempfile.mkdtemp(prefix=prefix))
            return self._cache_dir

    def _name(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def _blob(self, rel: str, required: bool = True) -> Any:
        if rel not in self._blobs:
            try:
                self._blobs[rel] = self._bucket.get_blob(self._name(rel))
            except Exception as exc:  # network, permissions: name the object
                raise DataError(f"{self.describe(rel)}: cannot read object metadata ({exc})") from None
        blob = self._blobs[rel]
        if blob is None and required:
            raise DataError(f"{self.describe(rel)}: file is missing")
        return blob

    def exists(self, rel: str) -> bool:
        return self._blob(rel, required=False) is not None

    def size(self, rel: str) -> int:
        return int(self._blob(rel).size)

    def read_bytes(self, rel: str) -> bytes:
        if rel in self._cached:
            return self._cached[rel].read_bytes()
        blob = self._blob(rel)
        try:
            return blob.download_as_bytes()
        except Exception as exc:
            raise DataError(f"{self.describe(rel)}: download failed ({exc})") from None

    def local_path(self, rel: str) -> Path:
        if rel in self._cached:
            return self._cached[rel]
        blob = self._blob(rel)
        dest = self._cache_folder("lcron-gcs-") / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            blob.download_to_filename(str(dest))
        except Exception as exc:
            raise DataError(f"{self.describe(rel)}: download failed ({exc})") from None
        self._cached[rel] = dest
        return dest

    def fingerprint(self, rel: str, *, keep: bool = False) -> dict[str, Any]:
        blob = self._blob(rel)
        return {"size": int(blob.size), "generation": int(blob.generation or 0), "md5": blob.md5_hash}

    def list_names(self, folder: str) -> list[str]:
        prefix = self._name(folder).rstrip("/") + "/"
        try:
            blobs = list(self._client.list_blobs(self.bucket_name, prefix=prefix))
        except Exception as exc:
            raise DataError(f"{self.uri}/{folder}: cannot list objects ({exc})") from None
        names = []
        for b in blobs:
            rest = b.name[len(prefix):]
            if rest and "/" not in rest:
                names.append(rest)
                self._blobs.setdefault(f"{folder.rstrip('/')}/{rest}", b)
        return sorted(names)

    def release(self, rel: str) -> None:
        path = self._cached.pop(rel, None)
        if path is not None:
            path.unlink(missing_ok=True)

    def close(self) -> None:
        if self._cache_dir is not None:
            shutil.rmtree(self._cache_dir, ignore_errors=True)
            self._cache_dir = None
            self._cached.clear()


def gcs_client() -> Any:
    """The GCS client of every gs:// reader (an emulator's when STORAGE_EMULATOR_HOST is set)."""
    try:
        from google.cloud import storage
    except ImportError as exc:  # pragma: no cover - dependency declared in pyproject
        raise DataError(f"gs:// sources need google-cloud-storage ({exc})") from None
    if os.environ.get("STORAGE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(project=os.environ.get("GOOGLE_CLOUD_PROJECT", "test"),
                              credentials=AnonymousCredentials())
    try:
        return storage.Client()
    except Exception as exc:
        raise DataError(f"cannot create a Google Cloud Storage client ({exc}); set up application default "
                        "credentials or STORAGE_EMULATOR_HOST") from None


class S3Source(GCSSource):
    """``s3://bucket/prefix`` through boto3 (AWS or an S3-compatible server such as MinIO).

    It shares the download cache and the listing logic of :class:`GCSSource`; only the
    object calls differ. Errors name the bucket and the environment variable to fix.
    """

    def __init__(self, uri: str, client: Any = None) -> None:
        self._open_uri(uri, "s3", "an")
        self._client = client or s3_client()
        self._check_bucket()

    def _fail(self, what: str, exc: Exception) -> DataError:
        """One clear message for the S3 failures a user can fix."""
        return DataError(s3_message(self.bucket_name, f"{what}", exc))

    def _check_bucket(self) -> None:
        try:
            self._client.head_bucket(Bucket=self.bucket_name)
        except Exception as exc:
            raise self._fail(self.uri, exc) from None

    def _blob(self, rel: str, required: bool = True) -> Any:
        if rel not in self._blobs:
            try:
                head = self._client.head_object(Bucket=self.bucket_name, Key=self._name(rel))
                self._blobs[rel] = {"Size": head["ContentLength"], "ETag": head["ETag"]}
            except Exception as exc:
                if _s3_code(exc) in ("404", "NoSuchKey", "NotFound"):
                    self._blobs[rel] = None
                else:
                    raise self._fail(self.describe(rel), exc) from None
        blob = self._blobs[rel]
        if blob is None and required:
            raise DataError(f"{self.describe(rel)}: file is missing")
        return blob

    def size(self, rel: str) -> int:
        return int(self._blob(rel)["Size"])

    def read_bytes(self, rel: str) -> bytes:
        if rel in self._cached:
            return self._cached[rel].read_bytes()
        self._blob(rel)
        try:
            return self._client.get_object(Bucket=self.bucket_name, Key=self._name(rel))["Body"].read()
        except Exception as exc:
            raise self._fail(self.describe(rel), exc) from None

    def local_path(self, rel: str) -> Path:
        if rel in self._cached:
            return self._cached[rel]
        self._blob(rel)
        dest = self._cache_folder("lcron-s3-") / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._client.download_file(self.bucket_name, self._name(rel), str(dest))
        except Exception as exc:
            raise self._fail(self.describe(rel), exc) from None
        self._cached[rel] = dest
        return dest

    def fingerprint(self, rel: str, *, keep: bool = False) -> dict[str, Any]:
        blob = self._blob(rel)
        return {"size": int(blob["Size"]), "etag": str(blob["ETag"]).strip('"')}

    def list_names(self, folder: str) -> list[str]:
        prefix = self._name(folder).rstrip("/") + "/"
        names = []
        try:
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket_name, Prefix=prefix, Delimiter="/")
            for page in pages:
                for obj in page.get("Contents", []):
                    rest = obj["Key"][len(prefix):]
                    if rest:
                        names.append(rest)
                        self._blobs.setdefault(f"{folder.rstrip('/')}/{rest}", obj)
        except Exception as exc:
            raise self._fail(f"{self.uri}/{folder}", exc) from None
        return sorted(names)


def _s3_code(exc: Exception) -> str:
    """The error code of a botocore ClientError ('' for anything else)."""
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


# S3 error code -> what the user should fix ({bucket} is filled in).
_S3_HINTS = {
    "NoSuchBucket": "bucket {bucket} does not exist at this endpoint; check the bucket name or AWS_ENDPOINT_URL",
    "404": "bucket {bucket} does not exist at this endpoint; check the bucket name or AWS_ENDPOINT_URL",
    "InvalidAccessKeyId": "the S3 server does not know this access key; fix AWS_ACCESS_KEY_ID / "
                          "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)",
    "SignatureDoesNotMatch": "the S3 server rejected the secret key; fix AWS_SECRET_ACCESS_KEY",
    "AccessDenied": "access to bucket {bucket} denied; give these credentials read/list rights on it",
    "403": "access to bucket {bucket} denied (wrong credentials or no rights); check AWS_ACCESS_KEY_ID / "
           "AWS_SECRET_ACCESS_KEY and the bucket policy",
}


def s3_message(bucket: str, where: str, exc: Exception) -> str:
    """``where: <what to fix> (<error>)`` for an S3 failure (also used by :mod:`lcron.remote`)."""
    name = type(exc).__name__
    if name == "NoCredentialsError":
        hint = "no S3 credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)"
    elif name in ("EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError"):
        hint = "cannot reach the S3 endpoint; set AWS_ENDPOINT_URL to your server (e.g. http://minio:9000)"
    else:
        hint = _S3_HINTS.get(_s3_code(exc), "S3 request failed").format(bucket=bucket)
    return f"{where}: {hint} ({name}: {exc})"


def s3_client() -> Any:
    """The boto3 S3 client of every s3:// reader (standard AWS environment; path-style addressing)."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError as exc:  # pragma: no cover - dependency declared in pyproject
        raise DataError(f"s3:// sources need boto3 ({exc})") from None
    # Path-style addressing works with every S3-compatible server (MinIO, moto) and AWS.
    return boto3.client("s3", config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}))


class ReferencedSource(Source):
    """The days an ingest step chose, read where they lie: the source named by a reference
    manifest (``ingest.json`` with ``"mode": "reference"``, written by :mod:`lcron.ingest`).

    Why: staging a RecFlow-size source copies ~100 GB into the pipeline root; a reference
    is a few kilobytes and the later steps read the source itself. What a copy guaranteed,
    the reference checks instead: only the files ingest chose are visible (the listing is
    the manifest's, so preprocessing sees exactly the staged days), every file must still
    have the size ingest saw when the reference is opened, and :meth:`fingerprint` (which
    preprocessing calls for every day it reads) must return the fingerprint ingest
    recorded, so a source changed after ingest fails by name instead of feeding other
    data to cached downstream results.
    """

    def __init__(self, folder: "str | Path", manifest: dict[str, Any]) -> None:
        self.folder = Path(folder)
        where = self.folder / INGEST_MANIFEST
        target, files = manifest.get("source"), manifest.get("files")
        if not isinstance(target, str) or not target or not isinstance(files, dict) or not files:
            raise DataError(f"{where}: a reference manifest needs 'source' and 'files'")
        if "://" not in target and (Path(target) / INGEST_MANIFEST).is_file():
            raise DataError(f"{where}: references {target}, which is itself an ingest output; "
                            "reference the RecFlow source instead")
        try:
            self.inner = open_source(target)
        except DataError as exc:
            raise DataError(f"{exc} (referenced by {where}: this step cannot read the source ingest referenced; "
                            "run ingest with --copy, or the pipeline with ingest_copy=true, to stage a copy)") from None
        self.uri = self.inner.uri
        self.hashes_content = self.inner.hashes_content
        self._files: dict[str, dict[str, Any]] = {str(rel): dict(fp) for rel, fp in files.items()}
        sizes = {rel: self._size_now(rel) for rel in self._files}
        changed = [f"{self.inner.describe(rel)} ({'missing' if sizes[rel] is None else f'{sizes[rel]} bytes'}"
                   f", ingest saw {fp.get('size')} bytes)"
                   for rel, fp in self._files.items() if sizes[rel] != fp.get("size")]
        if changed:
            raise DataError(f"{where}: the referenced source changed since ingest: {'; '.join(changed)}; "
                            "run the pipeline (or lcron ingest) again")

    def _size_now(self, rel: str) -> "int | None":
        try:
            return self.inner.size(rel)
        except DataError:
            return None

    def _chosen(self, rel: str) -> str:
        if rel not in self._files:
            raise DataError(f"{self.inner.describe(rel)}: not one of the files ingest chose "
                            f"({self.folder / INGEST_MANIFEST})")
        return rel

    def describe(self, rel: str) -> str:
        return self.inner.describe(rel)

    def exists(self, rel: str) -> bool:
        return rel in self._files and self.inner.exists(rel)

    def size(self, rel: str) -> int:
        return self.inner.size(self._chosen(rel))

    def read_bytes(self, rel: str) -> bytes:
        return self.inner.read_bytes(self._chosen(rel))

    def local_path(self, rel: str) -> Path:
        return self.inner.local_path(self._chosen(rel))

    def open_binary(self, rel: str) -> BinaryIO:
        return self.inner.open_binary(self._chosen(rel))

    def fingerprint(self, rel: str, *, keep: bool = False) -> dict[str, Any]:
        fp = self.inner.fingerprint(self._chosen(rel), keep=keep)
        if fp != self._files[rel]:
            self.inner.release(rel)
            raise DataError(f"{self.inner.describe(rel)}: changed since ingest referenced it "
                            f"({self.folder / INGEST_MANIFEST} records {self._files[rel]}, the file now has {fp}); "
                            "run the pipeline (or lcron ingest) again")
        return fp

    def list_names(self, folder: str) -> list[str]:
        prefix = folder.rstrip("/") + "/"
        return sorted(rel[len(prefix):] for rel in self._files
                      if rel.startswith(prefix) and "/" not in rel[len(prefix):])

    def release(self, rel: str) -> None:
        self.inner.release(rel)

    def close(self) -> None:
        self.inner.close()


def read_ingest_manifest(folder: "str | Path") -> dict[str, Any] | None:
    """The ingest manifest of ``folder`` (None when it has none); DataError when unreadable."""
    path = Path(folder) / INGEST_MANIFEST
    if not path.is_file():
        return None
    doc = read_json(path, "ingest manifest")
    if doc.get("kind") != INGEST_KIND:
        raise DataError(f"{path}: not an ingest manifest (kind {INGEST_KIND!r} expected)")
    return doc


def open_source(uri: "str | Path | Source") -> Source:
    """A :class:`Source` for a local folder or a ``gs://bucket/prefix`` / ``s3://bucket/prefix`` URI.

    A folder written by ``lcron ingest`` in reference mode opens as the source it
    references (:class:`ReferencedSource`); a staged copy is an ordinary local folder.
    """
    if isinstance(uri, Source):
        return uri
    text = str(uri)
    if text.startswith("gs://"):
        return GCSSource(text)
    if text.startswith("s3://"):
        return S3Source(text)
    if "://" in text:
        raise DataError(f"{text}: unsupported source; give a local folder, gs://bucket/prefix or s3://bucket/prefix")
    manifest = read_ingest_manifest(text)
    if manifest is not None and manifest.get("mode") == REFERENCE_MODE:
        return ReferencedSource(text, manifest)
    return LocalSource(text)
