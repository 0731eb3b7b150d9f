"""Chosen files of a ``gs://`` or ``s3://`` folder in a local folder: list once, fetch only what is asked for.

Why: a cluster's pipeline root (``gs://bucket/pipeline-root``) holds a few kilobytes that a
reader such as ``lcron compare`` needs per run (metrics.json, a completion marker,
per_request.npz) next to gigabytes it must not touch (model weights, shard sets). Copying
the prefix would fetch everything. :class:`RemoteFolder` lists the prefix once (names,
sizes and times are metadata, no content), lets the caller read the small documents it
chooses by name, then download only the files it chooses by their content, into a local
folder with the same relative layout; the caller's local code then runs on that folder
unchanged, and :meth:`RemoteFolder.shown` turns local paths in its messages back into URIs.

Clients and credentials are those of :mod:`lcron.data.source` (``gcs_client``,
``s3_client``: ``STORAGE_EMULATOR_HOST`` / application default credentials for GCS, the
standard AWS environment for S3), and S3 failures get its messages (``s3_message``); GCS
failures get the same kind of message here (:func:`gcs_message`). Every message names the URI.
"""

from __future__ import annotations

import os
import re
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, TypeGuard

from . import atomic
from .data.source import gcs_client, s3_client, s3_message
from .errors import DataError
from .logs import get_logger
from .progress import Progress

__all__ = ["RemoteObject", "RemoteFolder", "is_remote", "parse_uri", "gcs_message", "size_text"]

#: Objects read or downloaded at once: the files are small, so the time is the round trips.
WORKERS = 8
_URI = re.compile(r"^(gs|s3)://([^/]+)/?(.*)$")


def is_remote(path: object) -> TypeGuard[str]:
    """Whether ``path`` is a ``gs://`` or ``s3://`` URI (a string: ``Path`` would fold the ``//``)."""
    return isinstance(path, str) and path.startswith(("gs://", "s3://"))


def parse_uri(uri: str) -> tuple[str, str, str]:
    """(scheme, bucket, key prefix without surrounding slashes) of ``gs://bucket/prefix`` or ``s3://...``."""
    m = _URI.match(uri)
    if not m:
        raise DataError(f"{uri}: not a gs://bucket/prefix or s3://bucket/prefix URI")
    return m.group(1), m.group(2), m.group(3).strip("/")


def size_text(n: int) -> str:
    """Bytes for a person: ``512 B``, ``48.1 KiB``, ``3.2 MiB``, ``1.5 GiB``."""
    if n < 1024:
        return f"{n} B"
    for unit, scale in (("KiB", 1 << 10), ("MiB", 1 << 20)):
        if n < scale * 1024:
            return f"{n / scale:.1f} {unit}"
    return f"{n / (1 << 30):.1f} GiB"


# GCS failure (exception class name) -> what the user should fix ({bucket} is filled in).
_GCS_HINTS = {
    "NotFound": "bucket {bucket} does not exist (or these credentials cannot see it); check the bucket name",
    "Forbidden": "access to bucket {bucket} denied; give these credentials list and read rights on it "
                 "(e.g. roles/storage.objectViewer)",
    "Unauthorized": "the credentials were rejected; run `gcloud auth application-default login` or fix "
                    "GOOGLE_APPLICATION_CREDENTIALS",
    "DefaultCredentialsError": "no Google Cloud credentials found; run `gcloud auth application-default login` "
                               "or set GOOGLE_APPLICATION_CREDENTIALS (STORAGE_EMULATOR_HOST for an emulator)",
    "RefreshError": "the Google Cloud credentials could not be refreshed (expired or revoked); run `gcloud auth "
                    "application-default login` again or fix GOOGLE_APPLICATION_CREDENTIALS",
    "ConnectionError": "cannot reach Cloud Storage (or the emulator STORAGE_EMULATOR_HOST names)",
    "TransportError": "cannot reach Cloud Storage (or the emulator STORAGE_EMULATOR_HOST names)",
}


def gcs_message(bucket: str, where: str, exc: Exception, *, listing: bool = True) -> str:
    """``where: <what to fix> (<error>)`` for a GCS failure. A 404 while reading a listed
    object (``listing=False``) means the object went away, not the bucket."""
    name = type(exc).__name__
    if name == "NotFound" and not listing:
        hint = "the object was deleted since it was listed (a step rewriting it?); run again"
    else:
        hint = _GCS_HINTS.get(name, "Cloud Storage request failed").format(bucket=bucket)
    return f"{where}: {hint} ({name}: {exc})"


@dataclass(frozen=True)
class RemoteObject:
    """One listed object: its full key, size in bytes, and last change (POSIX seconds)."""

    key: str
    size: int
    mtime: float | None


class _Store(ABC):
    """The calls a :class:`RemoteFolder` makes on one bucket."""

    scheme = ""

    def __init__(self, bucket: str) -> None:
        self.bucket = bucket

    def uri(self, key: str = "") -> str:
        return f"{self.scheme}://{self.bucket}/{key}".rstrip("/")

    @abstractmethod
    def list(self, prefix: str, *, shallow: bool = False, limit: int | None = None) -> list[RemoteObject]:
        """Objects whose key starts with ``prefix`` (``shallow``: none below a further '/'),
        in key order; at most ``limit``."""

    @abstractmethod
    def read(self, key: str) -> bytes: ...

    @abstractmethod
    def download(self, key: str, dest: Path) -> None: ...


class _GCSStore(_Store):
    scheme = "gs"

    def __init__(self, bucket: str, client: Any = None) -> None:
        super().__init__(bucket)
        self._client = client or gcs_client()

    def list(self, prefix: str, *, shallow: bool = False, limit: int | None = None) -> list[RemoteObject]:
        try:
            blobs = self._client.list_blobs(self.bucket, prefix=prefix or None, delimiter="/" if shallow else None,
                                            max_results=limit)
            return [RemoteObject(b.name, int(b.size or 0), b.updated.timestamp() if b.updated else None)
                    for b in blobs]
        except Exception as exc:
            raise DataError(gcs_message(self.bucket, self.uri(prefix), exc)) from None

    def _blob(self, key: str) -> Any:
        return self._client.bucket(self.bucket).blob(key)

    def read(self, key: str) -> bytes:
        try:
            return self._blob(key).download_as_bytes()
        except Exception as exc:
            raise DataError(gcs_message(self.bucket, self.uri(key), exc, listing=False)) from None

    def download(self, key: str, dest: Path) -> None:
        try:
            self._blob(key).download_to_filename(str(dest))
        except Exception as exc:
            raise DataError(gcs_message(self.bucket, self.uri(key), exc, listing=False)) from None


class _S3Store(_Store):
    scheme = "s3"

    def __init__(self, bucket: str, client: Any = None) -> None:
        super().__init__(bucket)
        self._client = client or s3_client()

    def _fail(self, key: str, exc: Exception) -> DataError:
        return DataError(s3_message(self.bucket, self.uri(key), exc))

    def list(self, prefix: str, *, shallow: bool = False, limit: int | None = None) -> list[RemoteObject]:
        args: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        if shallow:
            args["Delimiter"] = "/"
        if limit is not None:
            args["PaginationConfig"] = {"MaxItems": limit}
        try:
            pages = self._client.get_paginator("list_objects_v2").paginate(**args)
            return [RemoteObject(o["Key"], int(o["Size"]), o["LastModified"].timestamp() if o.get("LastModified")
                                 else None) for page in pages for o in page.get("Contents", [])]
        except Exception as exc:
            raise self._fail(prefix, exc) from None

    def read(self, key: str) -> bytes:
        try:
            return self._client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except Exception as exc:
            raise self._fail(key, exc) from None

    def download(self, key: str, dest: Path) -> None:
        try:
            self._client.download_file(self.bucket, key, str(dest))
        except Exception as exc:
            raise self._fail(key, exc) from None


def _safe(rel: str) -> bool:
    """Whether an object's relative name is a plain relative path (no '', '.' or '..' part):
    object names are arbitrary strings, and a local copy must stay inside its folder."""
    return bool(rel) and not any(part in ("", ".", "..") for part in rel.split("/"))


class RemoteFolder:
    """The objects under ``uri``, listed once, and a local folder ``into/<name>`` that gets
    only the files :meth:`read` and :meth:`download` are asked for.

    ``uri`` names a folder (every object below it) or one object (then the folder holding
    it, without subfolders, and :attr:`path` is that object's local copy). Local copies keep
    the objects' times, so "the newest file" means the same here as in the bucket.
    """

    def __init__(self, uri: str, into: str | Path, *, store: _Store | None = None) -> None:
        scheme, bucket, key = parse_uri(uri)
        self.given = uri
        try:
            self._store = store or (_GCSStore(bucket) if scheme == "gs" else _S3Store(bucket))
        except DataError as exc:  # no client (no credentials): say which URI needed one
            raise DataError(f"{uri}: {exc}") from None
        base = f"{key}/" if key else ""
        found = self._store.list(base)
        self.single: str | None = None
        if not found and key:  # the URI may name an object: it sorts first among the keys it prefixes
            first = self._store.list(key, limit=1)
            if first and first[0].key == key:
                base = key.rpartition("/")[0] + "/" if "/" in key else ""
                found = self._store.list(base, shallow=True)
                self.single = key[len(base):]
        if not found:
            raise DataError(f"{uri}: nothing found (no object under this prefix of bucket {bucket}); check the path")
        self.base = base
        self.uri = self._store.uri(base)
        self.objects: dict[str, RemoteObject] = {}
        unsafe = 0
        for o in found:
            rel = o.key[len(base):]
            if _safe(rel):
                self.objects[rel] = o
            elif not rel.endswith("/"):  # "folder/" placeholder objects are not files
                unsafe += 1
        if unsafe:
            get_logger(__name__).warning("warning: %s: %d object name(s) with an empty, '.' or '..' part cannot be "
                                         "copied to a local path and are ignored", self.uri, unsafe)
        self.root = Path(into).resolve() / (base.rstrip("/").rpartition("/")[2] or bucket)
        self.root.mkdir(parents=True, exist_ok=True)
        self.fetched_files = 0
        self.fetched_bytes = 0

    @property
    def path(self) -> Path:
        """The local path that stands for the URI as given (the folder, or the object named)."""
        return self.root / self.single if self.single else self.root

    @property
    def listed_bytes(self) -> int:
        return sum(o.size for o in self.objects.values())

    def local(self, rel: str) -> Path:
        """Where the copy of the object named ``rel`` (relative to the folder) goes."""
        return self.root / rel

    def shown(self, text: object) -> str:
        """``text`` with this folder's local root written as its URI (for messages and reports)."""
        return str(text).replace(str(self.root), self.uri)

    def _run(self, rels: list[str], desc: str, progress: bool, one: Callable[[str, Path], None]) -> None:
        """``one(rel, dest)`` for every name, on a small thread pool, with a progress line in
        files and bytes; each local copy then gets its object's time."""
        def copy(rel: str) -> int:
            dest, obj = self.local(rel), self.objects[rel]
            try:
                dest.parent.mkdir(parents=True, exist_ok=True)
                one(rel, dest)
                if obj.mtime is not None:
                    os.utime(dest, (obj.mtime, obj.mtime))
            except OSError as exc:  # e.g. an object named like a folder of other objects
                raise DataError(f"{self.uri}/{rel}: cannot be copied to a local file "
                                f"({type(exc).__name__}: {exc})") from None
            return obj.size

        done = 0
        with Progress(len(rels), desc, unit="file", enabled=progress and bool(rels)) as bar, \
                ThreadPoolExecutor(WORKERS) as pool:
            for job in as_completed([pool.submit(copy, rel) for rel in rels]):
                done += job.result()
                bar.update(1, postfix=size_text(done))
        self.fetched_files += len(rels)
        self.fetched_bytes += done

    def read(self, rels: Iterable[str], *, progress: bool = True) -> dict[str, bytes]:
        """The content of the listed objects ``rels``, each also written to its local copy."""
        names = sorted(set(rels))
        got: dict[str, bytes] = {}

        def one(rel: str, dest: Path) -> None:
            got[rel] = self._store.read(self.base + rel)
            atomic.write_bytes(dest, got[rel])

        self._run(names, f"read {self.uri}", progress, one)
        return got

    def download(self, rels: Iterable[str], *, progress: bool = True) -> None:
        """Download the listed objects ``rels`` to their local copies (streamed to disk)."""
        self._run(sorted(set(rels)), f"download {self.uri}", progress,
                  lambda rel, dest: self._store.download(self.base + rel, dest))
