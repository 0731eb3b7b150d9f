"""Choose, check and fingerprint the days of a RecFlow source; reference them or stage a copy.

Why a separate step: KFP's cache decides whether a step can be skipped from the
step's parameters and the identities of its input artifacts, never from the bytes behind
a URI. A source is therefore first reduced to a *fingerprint* - a string that changes
whenever the data that would be staged changes - and the ingest step takes that string
as a parameter: same data -> same fingerprint -> cache hit -> the same staged artifact is
reused by every run; changed data -> new fingerprint -> a new staged copy and fresh
downstream results (docs/pipeline.md explains the whole chain).

Fingerprints (sha256 over a canonical JSON document):

* local folder: for every staged file, its relative path, size and sha256 of the content;
* ``gs://bucket/prefix``: relative path, size, generation and md5 from object metadata
  (no download needed);
* synthetic (``source`` "" or "synthetic"): the generator's parameters, the chosen days,
  the library version and a hash of the generator's own source file, so a changed
  generator never reuses data made by the old one.

Two modes, one output folder (``out``) that every later step opens as a RecFlow source:

* **reference** (the default for a folder, gs:// or s3:// source): ``out`` holds only
  ``ingest.json`` - the source URI (absolute for a folder), the days, the fingerprint and
  every chosen file's source fingerprint. Nothing is copied: a RecFlow-size source (~100 GB)
  stays where it is and the pipeline root grows by kilobytes. Preprocessing opens ``out``
  through :class:`lcron.data.source.ReferencedSource`, which shows only the chosen files and
  fails by name if one changed since ingest. The steps must be able to read the source
  (same mounted folder, same bucket credentials).
* **copy** (``copy=True``, ``--copy``, the pipeline's ``ingest_copy``; always for the
  synthetic source, whose data exists nowhere else): the RecFlow files of the chosen days
  (``all_stage``, ``request_id_dict``, ``seq_effective_50_dict``), ``others/id_cnt.pkl``
  and, when the source has it, ``others/realshow_video_info.feather`` are copied into
  ``out``, for sources that only the ingest step can read or that may change while the
  pipeline runs.

Either way ingest checks the layout (every required file present, all_stage columns,
id_cnt keys) before writing ``ingest.json`` last, so its presence means the folder is
complete.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from . import __version__, atomic, outputs
from .errors import ConfigError, DataError, OutputExistsError
from .data.source import INGEST_KIND as MANIFEST_KIND
from .data.source import INGEST_MANIFEST as MANIFEST_NAME
from .data.source import REFERENCE_MODE, read_ingest_manifest
from .data.step_configs import SYNTHETIC_SOURCE, IngestConfig, SourceConfig
from .progress import Progress
from .step_config import add_arguments, from_args
from .step_output import StepOutput

__all__ = ["SYNTHETIC", "MANIFEST_NAME", "REFERENCE_MODE", "COPY_MODE", "VIDEO_INFO", "IngestResult", "is_synthetic",
           "synthetic_config", "source_fingerprint", "ingest", "read_manifest", "add_ingest_arguments", "run_ingest",
           "add_fingerprint_arguments", "run_fingerprint"]

SYNTHETIC = SYNTHETIC_SOURCE
COPY_MODE = "copy"
#: The pending-record kind of an unfinished staging (`_pending-ingest.json`, lcron.outputs).
INGEST_KIND = "ingest"
VIDEO_INFO = "others/realshow_video_info.feather"
_CHUNK = 1 << 20
# Arguments of lcron.data.synthetic.generate that a user may set (everything else keeps its default).
SYNTHETIC_PARAMS = ("num_days", "start_date", "requests_per_day", "users", "items", "seed", "published_spellings")


@dataclass(frozen=True)
class IngestResult:
    """What :func:`ingest` recorded: the folder, its days, the source fingerprint and the mode
    (``reference``: ``files`` are the source's fingerprints; ``copy``: the staged files')."""

    path: Path
    source: str
    days: list[str]
    fingerprint: str
    files: dict[str, dict[str, Any]]
    skipped: bool = False
    mode: str = COPY_MODE

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["path"] = str(self.path)
        return d


def is_synthetic(source: "str | Path | None") -> bool:
    """True for the built-in synthetic source ("" / None / "synthetic")."""
    return source is None or str(source).strip() in ("", SYNTHETIC)


def synthetic_config(params: "Mapping[str, Any] | Any | None" = None):
    """A :class:`lcron.data.synthetic.SyntheticConfig` from a config or a mapping of generate() arguments."""
    from .data.synthetic import SyntheticConfig

    if isinstance(params, SyntheticConfig):
        cfg = params
    else:
        params = dict(params or {})
        unknown = sorted(set(params) - set(SYNTHETIC_PARAMS))
        if unknown:
            raise ConfigError(f"synthetic data: unknown parameter(s) {unknown}; known: {list(SYNTHETIC_PARAMS)}")
        cfg = SyntheticConfig(**params)
    cfg.validate()
    return cfg


# --------------------------------------------------------------------------- fingerprints
def _digest(doc: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _generator_hash() -> str:
    from .data import synthetic

    return hashlib.sha256(Path(synthetic.__file__).read_bytes()).hexdigest()


def _synthetic_doc(cfg: Any, days: list[str]) -> dict[str, Any]:
    conf = dataclasses.asdict(cfg)
    conf["stage_noise"] = list(conf["stage_noise"])
    return {"kind": "synthetic", "config": conf, "days": days, "lcron_version": __version__,
            "generator_sha256": _generator_hash()}


def _files_doc(files: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    return {"kind": "recflow-files", "files": {rel: dict(fp) for rel, fp in files.items()}}


def _layout_files(source: Any, days: list[str]) -> list[str]:
    """Relative paths to stage for ``days``; DataError listing every required file that is missing."""
    from .data import schemas as S

    rels = [S.LAYOUT[k].format(day=day) for day in days for k in S.DAY_FILES] + [S.LAYOUT["id_cnt"]]
    missing = [source.describe(rel) for rel in rels if not source.exists(rel)]
    if missing:
        raise DataError(f"RecFlow source {source.uri}: {len(missing)} required file(s) missing: "
                        f"{', '.join(missing)}")
    if source.exists(VIDEO_INFO):
        rels.append(VIDEO_INFO)
    return rels


def _select(available: list[str], days: str | None, where: str) -> list[str]:
    from .data.recflow import select_days

    return select_days(available, days or None, where=where)


def source_fingerprint(source: "str | Path", days: str | None = None, *,
                       synthetic: "Mapping[str, Any] | Any | None" = None) -> str:
    """The fingerprint of what :func:`ingest` would stage from ``source`` (see the module docstring).

    ``days``: "FIRST:LAST", "DAY" or None/"" for every day of the source. ``synthetic``
    is used only when ``source`` is synthetic.
    """
    if is_synthetic(source):
        cfg = synthetic_config(synthetic)
        return _digest(_synthetic_doc(cfg, _select(cfg.days, days, "synthetic data")))
    from .data.source import open_source

    with open_source(str(source)) as src:
        chosen = _select(src.list_days(), days, src.uri)
        files = {rel: src.fingerprint(rel) for rel in _layout_files(src, chosen)}
    return _digest(_files_doc(files))


# --------------------------------------------------------------------------- staging
def _copy(src: Path, dst: Path) -> dict[str, Any]:
    """Copy ``src`` to ``dst`` atomically; size, sha256 and md5 (base64, as GCS reports it) of the bytes."""
    sha, md5, size = hashlib.sha256(), hashlib.md5(usedforsecurity=False), 0
    with open(src, "rb") as fin, atomic.atomic_open(dst, "wb") as fout:
        while chunk := fin.read(_CHUNK):
            sha.update(chunk)
            md5.update(chunk)
            fout.write(chunk)
            size += len(chunk)
    return {"size": size, "sha256": sha.hexdigest(), "md5": base64.b64encode(md5.digest()).decode()}


def _check_copy(where: str, source_fp: Mapping[str, Any], copied: Mapping[str, Any]) -> None:
    """The staged bytes must be what the source's metadata promised (size, and md5 where known)."""
    if int(source_fp.get("size", copied["size"])) != copied["size"]:
        raise DataError(f"{where}: copied {copied['size']} bytes but the source reports {source_fp['size']}; "
                        "the object changed during the copy - run again")
    md5 = source_fp.get("md5")
    if md5 and md5 != copied["md5"]:
        raise DataError(f"{where}: md5 of the copied bytes ({copied['md5']}) differs from the source's ({md5}); "
                        "the object changed during the copy - run again")


def _check_all_stage_columns(path: Path, where: str) -> None:
    """Cheap early check (the Arrow footer only): every required all_stage column is present."""
    import pyarrow as pa

    from .data import schemas as S

    try:
        with pa.memory_map(str(path)) as mm:
            names = set(pa.ipc.open_file(mm).schema.names)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{where}: not a Feather v2 (Arrow IPC) file ({exc})") from None
    missing = [c["name"] for c in S.ALL_STAGE_COLUMNS if c["required"] and c["name"] not in names]
    if missing:
        raise DataError(f"{where}: required column(s) missing: {', '.join(missing)}")


def read_manifest(folder: "str | Path") -> dict[str, Any]:
    """``ingest.json`` of an ingest output; DataError if it is not a complete one."""
    doc = read_ingest_manifest(folder)
    if doc is None:
        raise DataError(f"{Path(folder) / MANIFEST_NAME}: missing - {folder} is not a complete ingest output")
    return doc


def _prepare_out(out: Path, fingerprint_ok: Callable[[dict], bool], overwrite: bool) -> dict[str, Any] | None:
    """Return the existing manifest when ``out`` already holds this staging; clear or refuse
    otherwise (the output protocol's claim, on ingest.json: the manifest is the completion
    marker, so a non-empty folder without one holds other data). Only a folder ingest made (its
    manifest, or the pending record of an unfinished staging) is ever cleared: --out pointed at
    a RecFlow source must not delete it."""
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out} exists and is not a folder")
    step = StepOutput(out, outputs.current_command(f"lcron ingest --out {out}"), INGEST_KIND,
                      lambda folder: _manifest(folder) is not None or outputs.has_marker(folder, [INGEST_KIND]),
                      f"an lcron ingest output ({MANIFEST_NAME})")
    if out.exists() and any(out.iterdir()):
        claim = step.claim(MANIFEST_NAME, {}, None, overwrite, missing_record_ok=False,
                           read=lambda path: _manifest(path.parent) or {},
                           same=lambda old: bool(old) and fingerprint_ok(old), refusal=_refusal(out))
        if claim.same:
            return claim.previous
        shutil.rmtree(out)  # only with overwrite: claim refused otherwise
    step.begin()  # recorded, so a crashed staging may be cleared later
    return None


def _manifest(folder: Path) -> dict[str, Any] | None:
    """The folder's complete ingest manifest; None when it has none or it is not readable."""
    try:
        return read_manifest(folder)
    except DataError:
        return None


def _refusal(out: Path) -> Callable[[dict], str]:
    """The refusal of a folder holding other staged data (``old``: its manifest, {} when none)."""
    def message(old: dict) -> str:
        what = (f"staged data of {old.get('source')!r} (days {old.get('days')}, fingerprint "
                f"{str(old.get('fingerprint'))[:12]})" if old else "files that are not a complete ingest output")
        return f"{out} already holds {what}; choose another folder or pass --overwrite"
    return message


def ingest(source: "str | Path", out: "str | Path", *, days: str | None = None,
           synthetic: "Mapping[str, Any] | Any | None" = None, expected_fingerprint: str | None = None,
           copy: bool = False, overwrite: bool = False, progress: bool = True) -> IngestResult:
    """Check the chosen ``days`` of ``source`` (folder, gs://, s3:// or synthetic) and record them in ``out``.

    ``copy``: stage a copy of the files in ``out`` instead of a reference to the source
    (see the module docstring); the synthetic source is always copied.
    ``synthetic``: generate() arguments (or a SyntheticConfig); used only when ``source``
    is synthetic, so a pipeline can always pass its synthetic parameters.
    ``expected_fingerprint``: the fingerprint the pipeline's fingerprint step computed; if
    the source changed since, this raises DataError instead of recording data that does
    not match the cache key. A folder that already holds the same result is reused as is.
    """
    out = Path(out)
    if is_synthetic(source):
        return _ingest_synthetic(out, days, synthetic, expected_fingerprint, overwrite, progress)
    from .data.source import LocalSource, open_source

    mode = COPY_MODE if copy else REFERENCE_MODE
    with open_source(str(source)) as src:
        chosen = _select(src.list_days(), days, src.uri)
        rels = _layout_files(src, chosen)
        local = isinstance(src, LocalSource)
        # A local folder is hashed while it is read (one read); other sources are
        # fingerprinted from their metadata, and a copy is checked against it.
        pre = None if local else {rel: src.fingerprint(rel) for rel in rels}

        def same(old: dict) -> bool:
            if old.get("mode", COPY_MODE) != mode or old.get("days") != chosen \
                    or sorted(old.get("files", {})) != sorted(rels):
                return False
            if expected_fingerprint:
                return old.get("fingerprint") == expected_fingerprint
            fps = pre if pre is not None else {rel: src.fingerprint(rel) for rel in rels}
            return old.get("fingerprint") == _digest(_files_doc(fps))

        old = _prepare_out(out, same, overwrite)
        if old is not None:
            return _reuse(out, old, src.uri)
        uri = str(src.root.resolve()) if local else src.uri
        if copy:
            files, source_fps = _stage_copy(src, rels, out, pre, progress)
            checked = out
        else:
            source_fps = pre if pre is not None else _hash_files(src, rels, progress)
            files, checked = source_fps, (src.root if local else src)
        return _finish(out, uri, chosen, _digest(_files_doc(source_fps)), expected_fingerprint, files, None,
                       mode=mode, checked=checked)


def _stage_copy(src: Any, rels: list[str], out: Path, pre: "dict[str, Any] | None",
                progress: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """Copy ``rels`` into ``out``; (the staged files' size + sha256, the source fingerprints)."""
    files, source_fps = {}, {}
    with Progress(len(rels), f"ingest {src.uri}", unit="file", enabled=progress) as bar:
        for rel in rels:
            copied = _copy(src.local_path(rel), out / rel)
            files[rel] = {"size": copied["size"], "sha256": copied["sha256"]}
            if pre is None:
                source_fps[rel] = files[rel]
            else:
                _check_copy(src.describe(rel), pre[rel], copied)
                source_fps[rel] = pre[rel]
            bar.update(1, postfix=rel)
    return files, source_fps


def _hash_files(src: Any, rels: list[str], progress: bool) -> dict[str, Any]:
    """Fingerprints (size + sha256) of a local folder's files, with progress in MiB read."""
    mib = 1 << 20
    total = -(-sum(src.size(rel) for rel in rels) // mib)
    out, done = {}, 0
    with Progress(total, f"ingest {src.uri} (fingerprint)", unit="MiB", enabled=progress) as bar:
        for rel in rels:
            out[rel] = src.fingerprint(rel)
            done += out[rel]["size"]
            bar.update(-(-done // mib) - bar.count, postfix=rel)
    return out


def _ingest_synthetic(out: Path, days: str | None, synthetic: Any, expected: str | None, overwrite: bool,
                      progress: bool) -> IngestResult:
    from .data.source import LocalSource
    from .data.synthetic import generate_from_config

    cfg = synthetic_config(synthetic)
    chosen = _select(cfg.days, days, "synthetic data")
    doc = _synthetic_doc(cfg, chosen)
    fingerprint = _digest(doc)
    old = _prepare_out(out, lambda m: m.get("fingerprint") == fingerprint, overwrite)
    if old is not None:
        return _reuse(out, old, SYNTHETIC)
    # Generated in local temporary space (``out`` may be a slow network mount on a
    # cluster), then staged like any local source.
    with tempfile.TemporaryDirectory(prefix="lcron-synthetic-") as tmp:
        generate_from_config(tmp, cfg, progress=progress)
        src = LocalSource(tmp)
        files = {}
        for rel in _layout_files(src, chosen):
            copied = _copy(src.local_path(rel), out / rel)
            files[rel] = {"size": copied["size"], "sha256": copied["sha256"]}
    return _finish(out, SYNTHETIC, chosen, fingerprint, expected, files, doc["config"])


def _finish(out: Path, source: str, days: list[str], fingerprint: str, expected: str | None,
            files: dict[str, dict[str, Any]], synthetic: dict[str, Any] | None, *, mode: str = COPY_MODE,
            checked: "Path | Any | None" = None) -> IngestResult:
    """Check the chosen files, then write ``ingest.json`` (the completion marker).

    ``checked``: where the files can be read for the checks - the staged copy (default
    ``out``), a local source folder, or an open remote :class:`~lcron.data.source.Source`,
    whose all_stage columns are then left to preprocessing (reading a Feather footer from
    an object store means downloading the file)."""
    from .data import schemas as S
    from .data.recflow import RecFlowReader

    if expected and expected != fingerprint:
        raise DataError(f"RecFlow source {source} changed after it was fingerprinted (expected fingerprint "
                        f"{expected[:12]}, staged data has {fingerprint[:12]}); run the pipeline again")
    checked = out if checked is None else checked
    if isinstance(checked, Path):
        for day in days:
            rel = S.LAYOUT["all_stage"].format(day=day)
            _check_all_stage_columns(checked / rel, f"{source.rstrip('/')}/{rel}")
    with RecFlowReader(checked) as reader:
        reader.id_counts()  # every id_cnt key present (either spelling), counts positive
    manifest = {"kind": MANIFEST_KIND, "format_version": 2, "mode": mode, "source": source, "days": days,
                "fingerprint": fingerprint, "files": files, "synthetic": synthetic, "lcron_version": __version__}
    atomic.write_json(out / MANIFEST_NAME, manifest)
    outputs.pending_path(out, INGEST_KIND).unlink(missing_ok=True)  # ingest.json is the completion marker
    return IngestResult(out, source, days, fingerprint, files, mode=mode)


def _reuse(out: Path, old: dict[str, Any], source: str) -> IngestResult:
    mode = old.get("mode", COPY_MODE)
    if mode == COPY_MODE:
        missing = [rel for rel in old["files"] if not (out / rel).is_file()]
        if missing:
            raise DataError(f"{out}: staged file(s) {', '.join(missing)} listed in {MANIFEST_NAME} are missing; "
                            "pass --overwrite to stage again")
    return IngestResult(out, source, list(old["days"]), str(old["fingerprint"]), dict(old["files"]), skipped=True,
                        mode=mode)


# --------------------------------------------------------------------------- CLI
def _synthetic_args(config: SourceConfig) -> dict[str, Any] | None:
    return config.synthetic() if is_synthetic(config.source) else None


def add_ingest_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``lcron ingest``: one option per :class:`IngestConfig` field, and where to."""
    add_arguments(parser, IngestConfig)
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="local folder for ingest.json (and, with --copy, the staged files); later steps "
                             "(lcron preprocess --source DIR) read the days through it")
    parser.add_argument("--expect-fingerprint", default=None, metavar="HEX",
                        help="fail if the source's fingerprint is not this one (it changed since)")
    parser.add_argument("--overwrite", action="store_true", help="replace a folder holding other staged data")


def run_ingest(args: argparse.Namespace) -> int:
    """``lcron ingest``: reference (or stage) the days; print the folder and the fingerprint."""
    cfg = from_args(IngestConfig, args)
    res = ingest(cfg.source, args.out, days=cfg.days, synthetic=_synthetic_args(cfg),
                 expected_fingerprint=args.expect_fingerprint, copy=cfg.copy, overwrite=args.overwrite,
                 progress=not args.quiet)
    what = "staged" if res.mode == COPY_MODE else f"referenced {res.source}"
    state = f"already {what}" if res.skipped else what
    print(f"{state}: {res.path} ({len(res.days)} day(s): {res.days[0]}..{res.days[-1]})")
    print(f"fingerprint: {res.fingerprint}")
    return 0


def add_fingerprint_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``lcron fingerprint``: one option per :class:`SourceConfig` field."""
    add_arguments(parser, SourceConfig)


def run_fingerprint(args: argparse.Namespace) -> int:
    """``lcron fingerprint``: print the fingerprint of the chosen days of a source."""
    cfg = from_args(SourceConfig, args)
    print(source_fingerprint(cfg.source, cfg.days, synthetic=_synthetic_args(cfg)))
    return 0
