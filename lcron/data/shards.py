"""RecFlow days -> shards (one folder of ``.npy`` arrays per day), and the shard loader.

A shard set is what training, evaluation and serving read: per request the context,
user, behaviour sequence and the N candidate slots of one cascade setting, with masks
and graded labels, all as small integer arrays that load with ``np.load(mmap_mode="r")``.
The layout and every array are described in ``data_schemas/shards.json`` (generated from
:mod:`lcron.data.schemas`) and in ``docs/data.md``.

Conventions (METHODS.md sections 1 and 7):

* every id field is stored as raw id + 1 (cat1 included), so 0 is padding everywhere;
* time fields: ISO weekday 1-7, hour + 1, minute + 1, in UTC + ``tz_offset_hours``,
  computed with integer arithmetic on the epoch (the machine's time zone never matters):
  ``local = t + 3600 * tz``; ``weekday = (local // 86400 + 3) % 7 + 1`` (1970-01-01 was a
  Thursday, ISO 4); ``hour = local // 3600 % 24 + 1``; ``minute = local // 60 % 60 + 1``;
* group ``g`` of the setting fills slots ``[10 g, 10 g + 10)`` with the first 10 stored
  rows of that stage label, padding after; label = ``top_label_base - index`` in the top
  group, the group's constant elsewhere, 0 on padding;
* padded slots and padded sequence steps are 0 in every field.

``reference_quirks=True`` (``lcron preprocess --reference-quirks``) builds the features as
the published experiments did (METHODS.md section 7): cat1 stored unshifted (raw id; the
reference cat1 table's padding index is 2, so raw category 2 embeds to zero), padded
sequence steps all 0 (cat1 0 too: an ordinary cat1 row) and padding slots 0 except cat1 = 2.
The choice is recorded in ``dataset.json`` (``reference_quirks``) and in the configuration
hash; training checks that the models' mode matches it.

Preprocessing goes one day at a time (memory bounded by one day) and is idempotent: a day
whose manifest records the same source fingerprint and configuration hash is skipped. Every
file goes through :mod:`lcron.atomic`; a day's ``manifest.json`` is written last, so a day
folder without one is incomplete and is ignored by the loader.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from lcron import hashing, outputs
from lcron.atomic import save_npy, write_json
from lcron.data import fields
from lcron.data import schemas as S
from lcron.data.recflow import DayInputs, RecFlowDay, RecFlowReader, select_days
from lcron.data.step_configs import check_prefetch_budget_mb, check_tz_offset_hours
from lcron.defaults import PREPROCESS
from lcron.errors import ConfigError, DataError
from lcron.progress import Progress
from lcron.settings import Setting, SettingError, get_setting
from lcron.step_output import StepOutput, step_output

__all__ = ["FORMAT_VERSION", "ShardSet", "SHARDS_REFERENCE", "SHARDS_REFERENCE_KIND", "preprocess", "time_features",
           "build_day_arrays", "shard_dtypes", "smallest_int_dtype", "config_hash", "memory_bound_mb"]

log = logging.getLogger(__name__)

FORMAT_VERSION = S.SHARD_FORMAT_VERSION
_SECONDS_PER_DAY = 86_400
# Columns of a request_id_dict row, in fields.ITEM_ID_FIELDS order (video, author, cat2, cat1, type).
_ITEM_ID_COLS = [S.REQUEST_ID_DICT_COLUMNS.index(f) for f in fields.ITEM_ID_FIELDS]
_UPLOAD_TS_COL = S.REQUEST_ID_DICT_COLUMNS.index("upload_timestamp")
_SEQ_ID_COLS = [S.SEQ_COLUMNS.index(f) for f in fields.SEQ_FIELDS]
# Reference mode: cat1 (column _CAT1 of the id columns) is not shifted; padding slots hold cat1 2.
_CAT1 = fields.ITEM_ID_FIELDS.index("category_level_one")
_REFERENCE_CAT1_PADDING = 2


#: The documented bound of preprocessing's peak resident memory (docs/scale.md, "Preprocessing
#: memory"): MEMORY_BOUND_BASE_MB + MEMORY_BOUND_KB_PER_REQUEST x the requests of the largest
#: day, for days shaped like the synthetic data (about 90 stored candidate rows, 75 all_stage
#: rows and one 50-step sequence per request). The bench row ``day_prep`` checks it.
MEMORY_BOUND_BASE_MB = 160
MEMORY_BOUND_KB_PER_REQUEST = 17

#: Preprocessing reads and checks every required all_stage column, as ``lcron validate`` does
#: (the same data gets the same answer from both; docs/reliability.md).
CHECK_ALL_COLUMNS = True


def memory_bound_mb(largest_day_requests: int) -> float:
    """Peak resident MiB that preprocessing stays under (see MEMORY_BOUND_BASE_MB)."""
    return MEMORY_BOUND_BASE_MB + MEMORY_BOUND_KB_PER_REQUEST * int(largest_day_requests) / 1024


def _id_shift(reference_quirks: bool) -> np.ndarray:
    """What is added to the raw ids of the 5 item/sequence id columns: 1, except cat1 in reference mode."""
    shift = np.ones(len(fields.ITEM_ID_FIELDS), dtype=np.int64)
    if reference_quirks:
        shift[_CAT1] = 0
    return shift


# --------------------------------------------------------------------------- values
def time_features(seconds: np.ndarray, tz_offset_hours: int) -> np.ndarray:
    """``[..., 3]`` int64: ISO weekday (1-7), hour + 1 (1-24), minute + 1 (1-60) of epoch
    ``seconds`` in UTC + ``tz_offset_hours``; pure integer arithmetic (floor division)."""
    local = np.asarray(seconds, dtype=np.int64) + np.int64(tz_offset_hours) * 3600
    weekday = (local // _SECONDS_PER_DAY + 3) % 7 + 1
    hour = local // 3600 % 24 + 1
    minute = local // 60 % 60 + 1
    return np.stack([weekday, hour, minute], axis=-1)


def smallest_int_dtype(max_value: int, min_value: int = 0) -> np.dtype:
    """The narrowest of uint8/int8/int16/int32/int64 holding ``[min_value, max_value]``.

    uint16/uint32 are skipped on purpose: torch indexes embeddings with signed types and
    handles uint8 but not the wider unsigned ones.
    """
    if min_value >= 0 and max_value <= np.iinfo(np.uint8).max:
        return np.dtype(np.uint8)
    for t in (np.int8, np.int16, np.int32, np.int64):
        info = np.iinfo(t)
        if info.min <= min_value and max_value <= info.max:
            return np.dtype(t)
    raise DataError(f"value range [{min_value}, {max_value}] does not fit int64")


def shard_dtypes(setting: Setting, id_counts: dict[str, int]) -> dict[str, np.dtype]:
    """dtype of each shard array, sized from the vocabularies (so every day of a set agrees)."""
    max_time = max(fields.TIME_VOCAB.values()) - 1
    top = max([setting.top_label_base, *setting.group_labels.values()])
    return {
        "request_id": np.dtype(np.int64),
        "context": smallest_int_dtype(max_time),
        "user": smallest_int_dtype(max(id_counts[f] for f in fields.USER_FIELDS)),
        "seq": smallest_int_dtype(max(id_counts[f] for f in fields.SEQ_FIELDS)),
        "seq_mask": np.dtype(np.uint8),
        "items": smallest_int_dtype(max(max(id_counts[f] for f in fields.ITEM_ID_FIELDS), max_time)),
        "mask": np.dtype(np.uint8),
        "label": smallest_int_dtype(top, min(0, *setting.group_labels.values())),
    }


def config_hash(setting: Setting, tz_offset_hours: int, reference_quirks: bool = False) -> str:
    """Hash of everything besides the input files that decides a shard's content.

    Not :func:`lcron.hashing.config_hash`: that one orders keys as strings, this one as
    ``json.dumps(sort_keys=True)`` does, which differs for a setting file whose ``extra``
    has numeric keys (10 before 9 as strings, after as numbers). Every shard set on disk
    records this value, so it stays."""
    conf = {"format_version": FORMAT_VERSION, "setting": setting.to_dict(), "tz_offset_hours": int(tz_offset_hours)}
    if reference_quirks:  # only when set, so default-mode shard sets keep their hash
        conf["reference_quirks"] = True
    return hashlib.sha256(json.dumps(conf, sort_keys=True).encode()).hexdigest()[:16]


def build_day_arrays(day: RecFlowDay, setting: Setting, id_counts: dict[str, int],
                     tz_offset_hours: int, *, where: str = "", reference_quirks: bool = False) -> dict[str, np.ndarray]:
    """The shard arrays (fields.SHARD_ARRAYS) of one validated day; vectorised scatter per group.

    ``reference_quirks``: the reference's feature conventions (module docstring)."""
    dt = shard_dtypes(setting, id_counts)
    r_count, n, gsize = day.num_requests, setting.list_size, setting.group_size
    items = np.zeros((r_count, n, len(fields.ITEM_FIELDS)), dtype=dt["items"])
    shift = _id_shift(reference_quirks)
    if reference_quirks:
        items[:, :, _CAT1] = _REFERENCE_CAT1_PADDING
    mask = np.zeros((r_count, n), dtype=np.uint8)
    label = np.zeros((r_count, n), dtype=dt["label"])
    req_pos = np.arange(r_count)
    # Scatter through flat (request * N + slot) positions: one index array per group.
    items_flat, mask_flat, label_flat = items.reshape(-1, items.shape[2]), mask.reshape(-1), label.reshape(-1)
    for g, group in enumerate(setting.groups):
        cand = day.candidates[group]
        if cand.rows.shape[0] == 0:
            continue
        owner = np.repeat(req_pos, cand.lengths)
        slot = g * gsize + np.arange(cand.rows.shape[0]) - np.repeat(cand.offsets, cand.lengths)
        flat = owner * n + slot
        ids = cand.rows[:, _ITEM_ID_COLS]
        ids += shift
        items_flat[flat, :len(_ITEM_ID_COLS)] = ids
        items_flat[flat, len(_ITEM_ID_COLS):] = time_features(cand.rows[:, _UPLOAD_TS_COL], tz_offset_hours)
        del ids
        mask_flat[flat] = 1
        if g == 0:
            idx = cand.top_index
            if idx is None:  # pragma: no cover - the reader always looks the top group up
                raise DataError(f"{where}: no {setting.top_index_column} for top group {group}")
            bad = (idx < 0) | (idx >= setting.top_label_base)
            if bad.any():
                raise DataError(
                    f"{where}: column {setting.top_index_column}: {int(bad.sum())} top-group item(s) with a "
                    f"position outside [0, {setting.top_label_base}) (e.g. {int(idx[bad][0])}, request_id "
                    f"{int(day.request_id[owner[bad][0]])}); labels would not be positive")
            label_flat[flat] = setting.top_label_base - idx
        else:
            label_flat[flat] = setting.group_labels[group]
    seq_valid = day.seq[:, :, S.SEQ_TIME_COLUMN] > 0
    seq = day.seq[:, :, _SEQ_ID_COLS]  # a copy (fancy index): shifted and masked in place
    seq += shift
    seq *= seq_valid[:, :, None]
    return {
        "request_id": day.request_id.astype(np.int64, copy=False),
        "context": time_features(day.request_timestamp // 1000, tz_offset_hours).astype(dt["context"]),
        "user": (day.user + 1).astype(dt["user"]),
        "seq": seq.astype(dt["seq"]),
        "seq_mask": seq_valid.astype(np.uint8),
        "items": items,
        "mask": mask,
        "label": label,
    }


# --------------------------------------------------------------------------- loader
def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: {what} is missing") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: {what} is not readable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: {what} must be a JSON object")
    return data


#: A folder that holds only this file opens as the shard set it names (a pipeline step's
#: artifact pointing at a shard set shared by several runs: lcron.data.shared_shards).
SHARDS_REFERENCE = "shards-reference.json"
SHARDS_REFERENCE_KIND = "lcron-shards-reference"


def _follow_reference(root: Path) -> tuple[Path, dict | None]:
    """``root``, or the shard set its reference names (and the reference)."""
    ref_path = root / SHARDS_REFERENCE
    if (root / "dataset.json").is_file() or not ref_path.is_file():
        return root, None
    ref = _read_json(ref_path, "shard set reference")
    if ref.get("kind") != SHARDS_REFERENCE_KIND or not isinstance(ref.get("path"), str) \
            or not isinstance(ref.get("fingerprint"), str):
        raise DataError(f"{ref_path}: not a shard set reference (kind {SHARDS_REFERENCE_KIND!r}, path, fingerprint)")
    target = Path(ref["path"])
    if (target / SHARDS_REFERENCE).is_file():
        raise DataError(f"{ref_path}: names {target}, another reference; a reference names a shard set")
    return target, ref


class ShardSet:
    """A preprocessed shard folder for one setting (see the module docstring).

    A folder holding only ``shards-reference.json`` opens as the shard set it names, and
    only if that set still has the fingerprint recorded in the reference."""

    def __init__(self, root: str | Path, *, require_complete: bool = True) -> None:
        """``require_complete=False`` opens a shard set that preprocessing has not finished
        (preprocess itself, inspection); every other reader gets an IncompleteOutputError."""
        self.root, reference = _follow_reference(Path(root))
        meta = _read_json(self.root / "dataset.json", "dataset.json (is this a preprocessed shard folder?)")
        if meta.get("format_version") != FORMAT_VERSION:
            raise DataError(f"{self.root / 'dataset.json'}: format_version {meta.get('format_version')!r}; "
                            f"this lcron reads format_version {FORMAT_VERSION} (preprocess again)")
        if require_complete:
            # Names and sizes of the whole set here; the content of each file when it is read
            # (load_day, item_table): an evaluation reads one day of a 17 GB set.
            outputs.require_complete(self.root, SHARDS_KIND, "shard set", _complete_command(self.root, meta),
                                     legacy=_legacy_problem, content=False)
        self._verify = require_complete
        try:
            self.setting: Setting = Setting.from_dict(meta["setting"])
            self.id_counts: dict[str, int] = {k: int(v) for k, v in meta["id_counts"].items()}
            self.embedding_sizes: dict[str, int] = {k: int(v) for k, v in meta["embedding_sizes"].items()}
            self.tz_offset_hours: int = int(meta["tz_offset_hours"])
            self.reference_quirks: bool = bool(meta.get("reference_quirks", False))
        except (KeyError, TypeError, ValueError, SettingError) as exc:
            raise DataError(f"{self.root / 'dataset.json'}: malformed ({type(exc).__name__}: {exc})") from None
        self.source: str = str(meta.get("source", ""))
        self.config_hash: str = str(meta.get("config_hash", ""))
        self.meta = meta
        days_dir = self.root / "days"
        self.days: list[str] = sorted(p.parent.name for p in days_dir.glob("*/manifest.json")) \
            if days_dir.is_dir() else []
        if reference is not None and self.fingerprint() != reference["fingerprint"]:
            raise DataError(f"{Path(root) / SHARDS_REFERENCE}: the shared shard set {self.root} changed since this "
                            f"reference was written (fingerprint {self.fingerprint()}, recorded "
                            f"{reference['fingerprint']}); run the step that wrote it again")

    def __repr__(self) -> str:
        return f"ShardSet({str(self.root)!r}, setting={self.setting.name!r}, days={len(self.days)})"

    def select_days(self, spec: str | None) -> list[str]:
        """``"FIRST:LAST"`` inclusive, ``"DAY"`` or None (all complete days)."""
        return select_days(self.days, spec, where=f"shards {self.root}")

    def _day_dir(self, day: str) -> Path:
        if day not in self.days:
            raise DataError(f"shards {self.root}: day {day} is not complete or not present; "
                            f"days: {', '.join(self.days) or 'none'}")
        return self.root / "days" / day

    def manifest(self, day: str) -> dict:
        return _read_json(self._day_dir(day) / "manifest.json", "day manifest")

    def num_requests(self, day: str) -> int:
        return int(self.manifest(day)["requests"])

    def load_day(self, day: str, mmap: bool = True) -> dict[str, np.ndarray]:
        """Every array of fields.SHARD_ARRAYS for ``day`` (memory-mapped by default)."""
        d = self._day_dir(day)
        self._check_content([d / f"{name}.npy" for name in fields.SHARD_ARRAYS] + [d / "manifest.json"])
        out: dict[str, np.ndarray] = {}
        for name in fields.SHARD_ARRAYS:
            path = d / f"{name}.npy"
            try:
                out[name] = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
            except FileNotFoundError:
                raise DataError(f"{path}: shard array is missing") from None
            except (OSError, ValueError) as exc:
                raise DataError(f"{path}: not a readable .npy array ({exc})") from None
        self._check_shapes(day, out)
        return out

    def _check_content(self, files: list[Path]) -> None:
        """The files' sha256 against the completion marker (a reader of a complete set only)."""
        if self._verify:
            outputs.require_content(self.root, SHARDS_KIND, "shard set", _complete_command(self.root, self.meta),
                                    files)

    def _check_shapes(self, day: str, arrays: dict[str, np.ndarray]) -> None:
        sym = {"R": int(arrays["request_id"].shape[0]), "N": self.setting.list_size}
        for name, spec in S.SHARD_ARRAY_SCHEMA.items():
            a = arrays[name]
            want = tuple(sym.get(s, s) if isinstance(s, str) else s for s in spec["shape"])
            if a.shape != want or a.dtype.kind not in "iu":
                raise DataError(f"{self.root / 'days' / day / (name + '.npy')}: shape {list(a.shape)} dtype {a.dtype}; "
                                f"expected shape {list(want)} ({spec['shape']}) with an integer dtype")

    def item_table(self) -> tuple[np.ndarray, np.ndarray]:
        """(video_id [I] shifted and sorted, features [I, 8] ITEM_FIELDS) over the processed days."""
        d = self.root / "item_table"
        if not (d / "manifest.json").is_file():
            raise DataError(f"{d}: item table is missing or incomplete (run preprocess)")
        self._check_content([d / "manifest.json", d / "video_id.npy", d / "features.npy"])
        try:
            return (np.load(d / "video_id.npy", allow_pickle=False), np.load(d / "features.npy", allow_pickle=False))
        except (OSError, ValueError) as exc:
            raise DataError(f"{d}: item table is not readable ({exc})") from None

    def fingerprint(self) -> str:
        """Stable hash of the complete days' source fingerprints and configuration."""
        parts = []
        for day in self.days:
            m = self.manifest(day)
            parts.append([day, m.get("source_fingerprint"), m.get("config_hash")])
        # The manifests are JSON (string keys only): the canonical hash has the value this
        # fingerprint always had, so runs and evaluations keep matching their shard sets.
        return hashing.config_hash(parts)


# --------------------------------------------------------------------------- completion
SHARDS_KIND = "shards"


def _complete_command(out: Path, meta: dict, days: str | None = None) -> str:
    """The ``lcron preprocess`` command that completes (or redoes) the shard set at ``out``."""
    setting = (meta.get("setting") or {}).get("name", "SETTING") if isinstance(meta.get("setting"), dict) else "SETTING"
    cmd = f"lcron preprocess --source {meta.get('source') or 'SOURCE'} --out {out} --setting {setting}"
    if meta.get("tz_offset_hours") not in (None, 8):
        cmd += f" --tz-offset-hours {meta['tz_offset_hours']}"
    if meta.get("reference_quirks"):
        cmd += " --reference-quirks"
    return cmd + (f" --days {days}" if days else "") + " (days already complete are skipped)"


def _legacy_problem(root: Path) -> str | None:
    """A shard set written before completion markers: complete when its item table (written
    last by that version) covers exactly its complete days and every day has every array."""
    days = _complete_days(root)
    m = root / "item_table" / "manifest.json"
    try:
        table_days = json.loads(m.read_text()).get("days")
    except (OSError, ValueError, AttributeError):
        return f"it has no completion marker and its item table {m} is missing or unreadable"
    if table_days != days:
        return (f"it has no completion marker and its item table covers days {table_days}, "
                f"while the complete days are {days}")
    for day in days:
        for a in fields.SHARD_ARRAYS:
            if not (root / "days" / day / f"{a}.npy").is_file():
                return f"{root / 'days' / day / (a + '.npy')} is missing"
    return None


def _shard_files(out: Path, days: list[str]) -> list[Path]:
    files = [out / "dataset.json", out / "item_table" / "manifest.json", out / "item_table" / "video_id.npy",
             out / "item_table" / "features.npy"]
    for day in days:
        files += [out / "days" / day / f"{a}.npy" for a in fields.SHARD_ARRAYS] + [out / "days" / day / "manifest.json"]
    return files


# --------------------------------------------------------------------------- preprocess
def _is_shard_folder(out: Path) -> bool:
    """Whether ``out`` may be written as a shard set: it holds a dataset.json, or nothing but
    the pending records of steps that did not finish."""
    return (out / "dataset.json").is_file() or all(p.name.startswith("_pending-") for p in out.iterdir())


def _shard_diffs(old: Mapping[str, Any], dataset: Mapping[str, Any]) -> list[str]:
    """What makes the shard set in a folder another one: its configuration, its vocabulary counts."""
    diffs = []
    if old.get("config_hash") != dataset["config_hash"]:
        old_setting = (old.get("setting") or {}).get("name", "?") if isinstance(old.get("setting"), dict) else "?"
        diffs.append(f"setting/config (existing: setting {old_setting!r}, tz_offset_hours "
                     f"{old.get('tz_offset_hours')!r}, format_version {old.get('format_version')!r}, "
                     f"reference_quirks {bool(old.get('reference_quirks', False))}; "
                     f"requested: setting {dataset['setting']['name']!r}, tz_offset_hours "
                     f"{dataset['tz_offset_hours']}, format_version {FORMAT_VERSION}, "
                     f"reference_quirks {dataset['reference_quirks']})")
    if old.get("id_counts") != dataset["id_counts"]:
        diffs.append("id_cnt.pkl counts")
    return diffs


def _prepare_out(step: StepOutput, dataset: dict[str, Any], overwrite: bool) -> bool:
    """Claim the folder for this shard set (the output protocol, on dataset.json): empty, or
    the same configuration and counts; another is refused unless ``overwrite``, which clears
    it. Returns True if days must be redone."""
    out = step.folder
    claim = step.claim(
        "dataset.json", dataset, dataset["config_hash"], overwrite, same=lambda old: not _shard_diffs(old, dataset),
        refusal=lambda old: (f"{out}: holds shards made with a different {' and '.join(_shard_diffs(old, dataset))}; "
                             "use another folder or overwrite=True (--overwrite)"))
    if claim.previous is None:
        return False
    if not claim.same:
        _clear(out)
        return True
    return overwrite


def _clear(out: Path) -> None:
    for name in ("days", "item_table"):
        shutil.rmtree(out / name, ignore_errors=True)
    (out / "dataset.json").unlink(missing_ok=True)
    outputs.marker_path(out, SHARDS_KIND).unlink(missing_ok=True)


def _up_to_date(day_dir: Path, fingerprint: dict, chash: str) -> bool:
    m = day_dir / "manifest.json"
    if not m.is_file():
        return False
    try:
        old = json.loads(m.read_text())
    except (OSError, ValueError):
        return False
    if not (old.get("source_fingerprint") == fingerprint and old.get("config_hash") == chash):
        return False
    # Every array must still be readable with the shape the manifest recorded (a truncated
    # or replaced file makes the day be redone).
    for a in fields.SHARD_ARRAYS:
        try:
            arr = np.load(day_dir / f"{a}.npy", mmap_mode="r", allow_pickle=False)
            if list(arr.shape) != list(old["arrays"][a]["shape"]) or str(arr.dtype) != old["arrays"][a]["dtype"]:
                return False
        except (OSError, ValueError, KeyError, TypeError):
            return False
    return True


def _complete_days(out: Path) -> list[str]:
    d = out / "days"
    return sorted(p.parent.name for p in d.glob("*/manifest.json")) if d.is_dir() else []


def _latest_items(older: np.ndarray, newer: np.ndarray) -> np.ndarray:
    """Rows of ``older`` then ``newer`` ([*, 8] ITEM_FIELDS) reduced to one row per video id,
    the last one winning, sorted by video id."""
    both = np.concatenate([older, newer])[::-1]
    _, last = np.unique(both[:, 0], return_index=True)  # first in reversed order = latest
    return both[last]


def _day_items(arrays: dict[str, np.ndarray]) -> np.ndarray:
    """One day's candidates reduced to the latest row per video (requests are in time order),
    sorted by video id. Only the video column of the filled slots is gathered and sorted; the
    feature rows are gathered for the distinct videos alone (no copy of every filled slot)."""
    items = np.asarray(arrays["items"])
    rows = items.reshape(-1, items.shape[-1])
    pos = np.flatnonzero(np.asarray(arrays["mask"]).reshape(-1))[::-1]  # latest slot first
    _, first = np.unique(rows[pos, 0], return_index=True)  # first in reversed order = latest
    return rows[pos[first]]


def _write_item_table(out: Path, shards: ShardSet, fresh: dict[str, np.ndarray]) -> int:
    """video id -> ITEM_FIELDS as last seen, over every complete day (days in date order,
    requests in time order within a day, so "last" = latest request time). ``fresh`` holds
    the per-day reductions of the days just written; other days are read back."""
    fp = shards.fingerprint()
    d = out / "item_table"
    m = d / "manifest.json"
    if m.is_file():
        try:
            old = json.loads(m.read_text())
            if old.get("shard_fingerprint") == fp and old.get("days") == shards.days:
                return int(old["items"])
        except (OSError, ValueError, KeyError):
            pass
    m.unlink(missing_ok=True)
    width = len(fields.ITEM_FIELDS)
    table = np.zeros((0, width), dtype=shard_dtypes(shards.setting, shards.id_counts)["items"])
    for day in shards.days:
        day_table = fresh[day] if day in fresh else _day_items(shards.load_day(day))
        table = _latest_items(table, day_table.astype(table.dtype, copy=False))
    _save_arrays([(d / "video_id.npy", table[:, 0].copy()), (d / "features.npy", table)])
    write_json(m, {"format_version": FORMAT_VERSION, "items": int(table.shape[0]), "days": shards.days,
                   "shard_fingerprint": fp, "columns": list(fields.ITEM_FIELDS)})
    return int(table.shape[0])


def _known_request_ids(reader: RecFlowReader, day_dir: Path, day: str) -> np.ndarray:
    """The distinct request ids of the all_stage file of ``day``, a day skipped as up to date,
    for the day identity check of the days after it. Its shard's ``request_id.npy`` holds
    exactly those ids when its manifest records no dropped request (8 bytes a request, read
    from a memory map: 2 MB for 250,000 requests, where the source's all_stage is gigabytes and,
    on GCS/S3, a download); a day that dropped requests reads the request_id column of its
    all_stage file (the same content: the fingerprint matched)."""
    try:
        manifest = json.loads((day_dir / "manifest.json").read_text())
        if int(manifest["requests"]) == int(manifest["requests_in_all_stage"]):
            return np.load(day_dir / "request_id.npy", mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return reader.all_stage_request_ids(day)


def _may_skip(day_dir: Path, redo: bool) -> bool:
    """Whether ``day_dir`` could be up to date (then its fingerprint decides before any work)."""
    return not redo and (day_dir / "manifest.json").is_file()


def _day_input_bytes(reader: RecFlowReader, day: str) -> int:
    """Total size of ``day``'s three files (0 when one is missing: its read reports that)."""
    try:
        return sum(reader.source.size(rel) for rel in reader.day_files(day).values())
    except DataError:
        return 0


def _overlap_next(reader: RecFlowReader, day: str, budget_bytes: int) -> bool:
    """Read ``day`` ahead while the current day is parsed? Only when its files total at most
    ``budget_bytes``: small days keep the overlap (throughput), a big day is read only after
    the previous one is parsed, so two big days are never in memory at once."""
    return _day_input_bytes(reader, day) <= budget_bytes


def _done(value: Any) -> Future:
    """A Future already holding ``value``."""
    f: Future = Future()
    f.set_result(value)
    return f


def _build_day(reader: RecFlowReader, day: str, inputs: "DayInputs | Future[DayInputs]", st: Setting,
               counts: dict[str, int], tz_offset_hours: int,
               reference_quirks: bool = False) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Validate and convert one day (``inputs``: its all_stage read, maybe still running);
    returns its arrays and manifest (less fingerprints)."""
    rd = reader.read_day(day, labels=st.groups, index_labels=(st.top_group,), limit=st.group_size,
                         check_all_columns=CHECK_ALL_COLUMNS, inputs=inputs)
    arrays = build_day_arrays(rd, st, counts, tz_offset_hours,
                              where=reader.source.describe(reader.day_files(day)["all_stage"]),
                              reference_quirks=reference_quirks)
    fill = {g: round(float(rd.candidates[g].lengths.mean()) / st.group_size, 4) for g in st.groups}
    dropped = rd.stats["dropped"]
    log.info("day %s: %d requests (%d missing from request_id_dict, %d from seq_effective_50_dict, "
             "%d without top index); slot fill %s", day, rd.num_requests, dropped["missing_request_id_dict"],
             dropped["missing_seq_effective_50_dict"], dropped["missing_top_index"],
             ", ".join(f"{g} {v:.0%}" for g, v in fill.items()))
    manifest = {
        "format_version": FORMAT_VERSION, "day": day, "setting": st.name,
        "requests": rd.num_requests, "requests_in_all_stage": rd.stats["requests_in_all_stage"],
        "rows": rd.stats["rows"], "dropped": dropped, "slot_fill_rate": fill,
        "items_per_label": rd.stats["items_per_label"],
        "arrays": {k: {"dtype": str(v.dtype), "shape": list(v.shape)} for k, v in arrays.items()},
    }
    return arrays, manifest


def _save_arrays(paths_arrays: list[tuple[Path, np.ndarray]]) -> None:
    """Save several arrays atomically, concurrently: each save ends in an fsync, and fsyncs
    of different files overlap (about 4x less wall time than one after the other)."""
    with ThreadPoolExecutor(max_workers=len(paths_arrays), thread_name_prefix="lcron-npy") as pool:
        for f in [pool.submit(save_npy, p, a) for p, a in paths_arrays]:
            f.result()


def _write_day(day_dir: Path, arrays: dict[str, np.ndarray], manifest: dict[str, Any]) -> None:
    """Every array atomically, then the manifest (which marks the day complete)."""
    _save_arrays([(day_dir / f"{name}.npy", arrays[name]) for name in fields.SHARD_ARRAYS])
    write_json(day_dir / "manifest.json", manifest)


def _write_and_reduce(day_dir: Path, arrays: dict[str, np.ndarray], manifest: dict[str, Any]) -> np.ndarray:
    """:func:`_write_day`, then the day's item reduction (both in the writer thread, off the
    parsing thread's path)."""
    _write_day(day_dir, arrays, manifest)
    return _day_items(arrays)


def _keep_items(fresh: dict[str, np.ndarray], day: str, written: Future, budget_bytes: int) -> None:
    """Wait for ``day``'s write; keep its item reduction for the item table while all kept
    reductions stay within ``budget_bytes`` (otherwise the table reads that day back)."""
    items = written.result()
    if sum(a.nbytes for a in fresh.values()) + items.nbytes <= budget_bytes:
        fresh[day] = items


def preprocess(source: "str | Path", out: str | Path, setting: "str | int | Setting | Path" = "two_stage",
               days: str | None = None, *, tz_offset_hours: int = PREPROCESS.tz_offset_hours,
               max_missing_fraction: float = PREPROCESS.max_missing_fraction, overwrite: bool = False,
               progress: bool = True, max_no_gt_fraction: float = PREPROCESS.max_no_gt_fraction,
               reference_quirks: bool = False, prefetch_budget_mb: int = PREPROCESS.prefetch_budget_mb) -> ShardSet:
    """Turn the RecFlow ``days`` of ``source`` (folder or ``gs://``) into a shard set at ``out``.

    ``setting``: a Setting, a built-in name, 2/3 (stages) or a setting file. ``days``:
    ``"FIRST:LAST"`` inclusive, ``"DAY"`` or None for all. Days already in ``out`` with the
    same inputs and configuration are skipped; ``out`` holding another configuration is an
    OutputExistsError unless ``overwrite`` (which rebuilds everything). ``reference_quirks``:
    the published experiments' feature conventions (module docstring), recorded in dataset.json.
    ``prefetch_budget_mb``: the next day is read ahead while a day is parsed only when its
    files total at most this many MiB (and the per-day item reductions are kept in memory up
    to this size), so a big day never has another one next to it in memory.
    Holds the lock of ``out`` for the whole step (the output protocol, lcron.step_output).
    """
    name = setting.name if isinstance(setting, Setting) else setting
    fallback = f"lcron preprocess --source {source} --out {out} --setting {name}" + (f" --days {days}" if days else "")
    with step_output(out, outputs.current_command(fallback), kind=SHARDS_KIND, ours=_is_shard_folder,
                     folder_what="a shard set (no dataset.json)") as step:
        st = _checked_options(setting, tz_offset_hours, prefetch_budget_mb)
        out = Path(out)
        chash = config_hash(st, tz_offset_hours, bool(reference_quirks))
        with RecFlowReader(source, max_missing_fraction=max_missing_fraction,
                           max_no_gt_fraction=max_no_gt_fraction, tz_offset_hours=tz_offset_hours) as reader:
            chosen = reader.select_days(days)
            counts = reader.id_counts()
            dataset = {"format_version": FORMAT_VERSION, "setting": st.to_dict(), "id_counts": counts,
                       "embedding_sizes": fields.embedding_sizes(counts), "tz_offset_hours": tz_offset_hours,
                       "source": str(source), "days": [], "config_hash": chash,
                       "reference_quirks": bool(reference_quirks)}
            redo = _prepare_out(step, dataset, overwrite)
            if not outputs.is_complete(out, SHARDS_KIND, _legacy_problem, content=False):  # finish checks content
                (out / "item_table" / "manifest.json").unlink(missing_ok=True)  # rebuilt at the end
            step.begin(outputs.current_command(_complete_command(out, dataset, days)))
            dataset["days"] = _complete_days(out)
            write_json(out / "dataset.json", dataset)
            fresh_items = _Days(reader, out, st, counts, tz_offset_hours, bool(reference_quirks), chash,
                                redo).run(chosen, int(prefetch_budget_mb) * 2**20, progress)
            dataset["days"] = _complete_days(out)
            write_json(out / "dataset.json", dataset)
        shards = ShardSet(out, require_complete=False)
        n_items = _write_item_table(out, shards, fresh_items)
        log.info("item table: %d items over %d day(s)", n_items, len(shards.days))
        step.finish(_shard_files(out, shards.days), {"days": shards.days})
    return shards


def _checked_options(setting: "str | int | Setting | Path", tz_offset_hours: int, prefetch_budget_mb: int) -> Setting:
    """The setting; a bad option is a ConfigError before any data is read."""
    problem = check_prefetch_budget_mb(prefetch_budget_mb)  # PreprocessConfig's checks, the same sentences
    if problem:
        raise ConfigError(problem)
    try:
        st = get_setting(setting)
    except SettingError as exc:
        raise ConfigError(str(exc)) from None
    problem = check_tz_offset_hours(tz_offset_hours)
    if problem:
        raise ConfigError(problem)
    return st


@dataclass
class _Days:
    """The day loop of :func:`preprocess`: what every day is built from and checked against."""

    reader: RecFlowReader
    out: Path
    st: Setting
    counts: dict
    tz_offset_hours: int
    reference_quirks: bool
    chash: str
    redo: bool

    def fetch(self, day: str) -> DayInputs:
        return self.reader.fetch_day(day, index_labels=(self.st.top_group,), check_all_columns=CHECK_ALL_COLUMNS)

    def checked_fetch(self, day: str) -> tuple[dict, DayInputs | None]:
        """Fingerprint, then the all_stage read unless the day is up to date."""
        fp = self.reader.fingerprint_day(day)
        day_dir = self.out / "days" / day
        if _may_skip(day_dir, self.redo) and _up_to_date(day_dir, fp, self.chash):
            return fp, None
        return fp, self.fetch(day)

    def run(self, chosen: list[str], budget: int, progress: bool) -> dict[str, np.ndarray]:
        """Build and write every chosen day that is not up to date; returns the item reductions
        kept in memory for the item table (within ``budget`` bytes).

        Helper threads overlap the GIL-free parts with the parsing of day d: the
        fingerprint (sha256) and the column-by-column all_stage read of day d run while
        the main thread unpickles its request_id_dict; the writer saves day d - 1 (np.save
        and fsync). Only small days (_overlap_next) are read ahead and parsed while the
        previous day is still being written, so at most one big day is in memory; the
        memory bound is in docs/scale.md ("Preprocessing memory")."""
        reader = self.reader
        with Progress(len(chosen), f"preprocess {self.st.name}", unit="day", enabled=progress) as bar, \
                ThreadPoolExecutor(max_workers=2, thread_name_prefix="lcron-prefetch") as helpers, \
                ThreadPoolExecutor(max_workers=1, thread_name_prefix="lcron-shard-writer") as writer:
            pending: tuple[str, Future] | None = None
            fresh_items: dict[str, np.ndarray] = {}
            ahead: Future | None = None  # checked_fetch of the current day, when read ahead
            for i, day in enumerate(chosen):
                day_dir = self.out / "days" / day
                fp_f, inputs = self._inputs(day, ahead, helpers)
                ahead = None
                if i + 1 < len(chosen) and _overlap_next(reader, chosen[i + 1], budget):
                    ahead = helpers.submit(self.checked_fetch, chosen[i + 1])
                if inputs is None:
                    reader.check_known_day(day, _known_request_ids(reader, day_dir, day))
                    log.info("day %s: up to date, skipped", day)
                    bar.update(1, postfix=f"{day} skipped")
                    continue
                if pending is not None and not _overlap_next(reader, day, budget):
                    # A big day is parsed only after the previous day's arrays are written
                    # (its all_stage read has started meanwhile): one big day in memory.
                    _keep_items(fresh_items, *pending, budget)
                    pending = None
                (day_dir / "manifest.json").unlink(missing_ok=True)
                arrays, manifest = _build_day(reader, day, inputs, self.st, self.counts, self.tz_offset_hours,
                                              self.reference_quirks)
                del inputs
                manifest.update(source_fingerprint=fp_f.result(), config_hash=self.chash)
                if pending is not None:
                    _keep_items(fresh_items, *pending, budget)
                pending = (day, writer.submit(_write_and_reduce, day_dir, arrays, manifest))
                bar.update(1, postfix=f"{day}: {manifest['requests']} requests")
                del arrays
            if pending is not None:
                _keep_items(fresh_items, *pending, budget)
        return fresh_items

    def _inputs(self, day: str, ahead: Future | None,
                helpers: ThreadPoolExecutor) -> "tuple[Future[dict] | None, Future[DayInputs] | None]":
        """The day's fingerprint and inputs as futures; (None, None) when the day is up to date."""
        if ahead is not None:
            fp, fetched = ahead.result()
            return (None, None) if fetched is None else (_done(fp), _done(fetched))
        day_dir = self.out / "days" / day
        if _may_skip(day_dir, self.redo):
            fp = self.reader.fingerprint_day(day)
            if _up_to_date(day_dir, fp, self.chash):
                return None, None
            return _done(fp), helpers.submit(self.fetch, day)
        # nothing to skip: the fingerprint is only needed for the manifest
        return helpers.submit(self.reader.fingerprint_day, day), helpers.submit(self.fetch, day)
