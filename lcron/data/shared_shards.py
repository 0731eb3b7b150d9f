"""Shard sets shared by the runs of a sweep: one preprocessing per (data, setting).

Why: on a cluster KFP's cache hands every run over the same data and setting the one
cached preprocess output. kfp.local has no cache, so a local sweep of 16 configurations
would preprocess 16 times and keep 16 shard sets (~17-19 GB each at RecFlow size). With a
shared root, the preprocess step builds the shard set once, in
``<shared_root>/<setting>-<key>`` - ``key`` hashes ingest's source fingerprint and everything
else that decides the shards - and its own output is a reference to it
(``shards-reference.json``, which :class:`lcron.data.shards.ShardSet` follows, checking the
set's fingerprint). A later run with the same key finds the set complete: preprocessing
skips every day whose source fingerprint and configuration are unchanged (it re-reads the
source days to know that), under the folder's lock, so two runs never build it at once.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from lcron import atomic
from lcron.data.shards import SHARDS_REFERENCE, SHARDS_REFERENCE_KIND, ShardSet, config_hash, preprocess
from lcron.data.source import INGEST_MANIFEST, read_ingest_manifest
from lcron.defaults import PREPROCESS
from lcron.errors import ConfigError, DataError, OutputExistsError
from lcron.settings import Setting, SettingError, get_setting

__all__ = ["shared_folder", "preprocess_shared", "write_reference"]


def shared_folder(source: "str | Path", shared_root: "str | Path", setting: "str | int | Setting", *,
                  tz_offset_hours: int, max_missing_fraction: float, reference_quirks: bool = False) -> Path:
    """``<shared_root>/<setting name>-<key>``: the one shard set of this data and configuration.

    ``source`` must be an ingest output: its fingerprint is what changes with the data.
    """
    manifest = read_ingest_manifest(source)
    if manifest is None or not isinstance(manifest.get("fingerprint"), str):
        raise DataError(f"{source}: shared shard sets are keyed by ingest's fingerprint, and this folder has no "
                        f"{INGEST_MANIFEST}; give the output of lcron ingest")
    try:
        st = get_setting(setting)
    except SettingError as exc:
        raise ConfigError(str(exc)) from None
    doc = {"source_fingerprint": manifest["fingerprint"], "days": manifest.get("days"),
           "config_hash": config_hash(st, tz_offset_hours, bool(reference_quirks)),
           "max_missing_fraction": float(max_missing_fraction)}
    key = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]
    return Path(shared_root).resolve() / f"{st.name}-{key}"


def preprocess_shared(source: "str | Path", shared_root: "str | Path", setting: "str | int | Setting" = "two_stage",
                      *, tz_offset_hours: int = PREPROCESS.tz_offset_hours,
                      max_missing_fraction: float = PREPROCESS.max_missing_fraction, reference_quirks: bool = False,
                      **kwargs: Any) -> ShardSet:
    """Build (or find complete) the shared shard set of ``source`` (an ingest output) and ``setting``.

    ``kwargs`` go to :func:`lcron.data.shards.preprocess` (``progress``, ``prefetch_budget_mb``).
    """
    folder = shared_folder(source, shared_root, setting, tz_offset_hours=tz_offset_hours,
                           max_missing_fraction=max_missing_fraction, reference_quirks=reference_quirks)
    folder.parent.mkdir(parents=True, exist_ok=True)
    return preprocess(source, folder, setting, tz_offset_hours=tz_offset_hours,
                      max_missing_fraction=max_missing_fraction, reference_quirks=reference_quirks, **kwargs)


def write_reference(out: "str | Path", shard_set: ShardSet) -> Path:
    """Make ``out`` (empty, or holding an earlier reference) a reference to ``shard_set``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    others = sorted(p.name for p in out.iterdir() if p.name != SHARDS_REFERENCE)
    if others:
        raise OutputExistsError(f"{out}: holds {', '.join(others[:5])}; a shard set reference goes in an empty folder")
    path = out / SHARDS_REFERENCE
    atomic.write_json(path, {"kind": SHARDS_REFERENCE_KIND, "path": str(Path(shard_set.root).resolve()),
                             "fingerprint": shard_set.fingerprint(), "setting": shard_set.setting.name,
                             "days": shard_set.days})
    return path
