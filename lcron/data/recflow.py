"""Read and validate one day of the RecFlow layout (local folder or ``gs://``).

The reader turns a day's three files into column arrays, checking everything that
would otherwise surface later as a wrong label or an out-of-range embedding index:

* ``all_stage/<day>.feather`` is read **by columns** (the required ones of
  :data:`lcron.data.schemas.ALL_STAGE_COLUMNS`, or only those preprocessing uses); any
  integer width is accepted, feedback columns are never read; wrong types, nulls, negative ids, ids ``>= id_cnt``, flags
  other than 0/1 are :class:`DataError`\\ s naming the file, the column and the value;
* the requests of the day are the distinct (request_id, user_id, request_timestamp,
  device_id, age, gender, province) rows; a request whose user columns disagree between
  its rows is an error (they must be constant within a request);
* both pickles go through :func:`lcron.safe_pickle.safe_load`; a request of all_stage
  missing from either dict, or whose top-group items have no index in all_stage, is
  dropped and counted: a warning up to ``max_missing_fraction`` of the day, an error above;
* candidate lists keep the first ``limit`` (10) stored rows per stage label.

No Python work runs per row or per item: a request is one dict lookup per stage label,
and every list is built with ``np.concatenate`` + lengths, then checked with vectorised
min/max.
Requests come out ordered by request time (ties: order of first appearance in
all_stage), so "latest seen" is simply "last in the day".
"""

from __future__ import annotations

import re
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from lcron.data import fields
from lcron.data import schemas as S
from lcron.data.all_stage import AllStageDay, check_range as _check_range, check_schema, read_all_stage
from lcron.data.source import Source, open_source
from lcron.defaults import PREPROCESS
from lcron.errors import ConfigError, DataError
from lcron.memtrim import trim
from lcron.safe_pickle import safe_load

__all__ = ["RecFlowReader", "RecFlowDay", "DayInputs", "Candidates", "RecFlowWarning", "select_days", "parse_day"]


_DAY_SPEC = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class RecFlowWarning(UserWarning):
    """Data was usable but not clean (requests dropped, extra columns)."""


@dataclass
class Candidates:
    """The candidates of one stage label for every request of the day.

    ``rows`` holds the first ``limit`` stored rows of each request back to back, in
    request order; ``lengths[r]`` of them belong to request ``r``.
    """

    lengths: np.ndarray  # [R] int64, rows kept (<= limit)
    stored: np.ndarray  # [R] int64, rows stored in the pickle
    rows: np.ndarray  # [sum(lengths), 8] int64, RecFlow request_id_dict columns
    top_index: np.ndarray | None = None  # [sum(lengths)] int64 stage position (index labels only)

    @property
    def offsets(self) -> np.ndarray:
        """Start of each request's rows in ``rows``."""
        return np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)


@dataclass
class DayInputs:
    """What :meth:`RecFlowReader.fetch_day` reads ahead: the reduced all_stage columns.

    The two pickles are not read ahead: they are unpickled straight from their files, one
    after the other, each dropped once reduced (see :meth:`RecFlowReader.read_day`)."""

    day: str
    all_stage: AllStageDay

    @property
    def rows(self) -> int:
        return self.all_stage.rows


@dataclass
class RecFlowDay:
    """One validated day, raw ids (not shifted), requests in time order."""

    day: str
    request_id: np.ndarray  # [R] int64
    request_timestamp: np.ndarray  # [R] int64, ms
    user: np.ndarray  # [R, 5] int64, fields.USER_FIELDS
    seq: np.ndarray  # [R, 50, 10] int64, schemas.SEQ_COLUMNS
    candidates: dict[str, Candidates]
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def num_requests(self) -> int:
        return int(self.request_id.shape[0])


def parse_day(text: str, *, what: str = "day") -> str:
    """Check a ``YYYY-MM-DD`` string (DataError otherwise) and return it."""
    import datetime as _dt

    if not _DAY_SPEC.match(text):
        raise DataError(f"{what} {text!r} is not a date YYYY-MM-DD")
    try:
        _dt.date.fromisoformat(text)
    except ValueError:
        raise DataError(f"{what} {text!r} is not a valid date") from None
    return text


def select_days(available: Sequence[str], spec: str | None, *, where: str) -> list[str]:
    """Days of ``available`` selected by ``spec``.

    ``spec`` is ``None`` (all), ``"DAY"``, or ``"FIRST:LAST"`` inclusive (either side may be
    empty: from the first / to the last available day). A bound outside the available
    range is a DataError listing that range (``where`` names the data set).
    """
    avail = sorted(available)
    if not avail:
        raise DataError(f"{where}: no days available")
    rng = f"{avail[0]}..{avail[-1]} ({len(avail)} day{'s' if len(avail) != 1 else ''})"
    if spec is None or spec.strip() in ("", ":"):
        return avail
    spec = spec.strip()
    if ":" in spec:
        first, _, last = spec.partition(":")
        first = parse_day(first.strip(), what="first day") if first.strip() else avail[0]
        last = parse_day(last.strip(), what="last day") if last.strip() else avail[-1]
    else:
        first = last = parse_day(spec, what="day")
    if first > last:
        raise DataError(f"{where}: day range {spec!r} is empty (first day after last day)")
    for d in (first, last):
        if d < avail[0] or d > avail[-1]:
            raise DataError(f"{where}: day {d} is outside the available range {rng}")
    chosen = [d for d in avail if first <= d <= last]
    if ":" not in spec and chosen != [first]:
        raise DataError(f"{where}: day {first} is not available (available: {rng})")
    if not chosen:
        raise DataError(f"{where}: no available day in {first}..{last}; available: {rng}")
    return chosen


def _int_column(col: Any) -> np.ndarray:
    """An Arrow integer column without nulls as int64 numpy, straight from its data buffers
    (``ChunkedArray.to_numpy`` would import pandas, which costs about a second)."""
    parts = []
    for chunk in col.chunks:
        data = np.frombuffer(chunk.buffers()[1], dtype=np.dtype(str(chunk.type)))
        parts.append(data[chunk.offset: chunk.offset + len(chunk)])
    if not parts:
        return np.zeros(0, dtype=np.int64)
    return (parts[0] if len(parts) == 1 else np.concatenate(parts)).astype(np.int64, copy=False)


class RecFlowReader:
    """Validating reader of a RecFlow root (local folder or ``gs://bucket/prefix``)."""

    def __init__(self, source: "str | Source", *, max_missing_fraction: float = PREPROCESS.max_missing_fraction,
                 max_no_gt_fraction: float = 0.5) -> None:
        if not 0.0 <= max_missing_fraction <= 1.0:
            raise ConfigError(f"max_missing_fraction must be in [0, 1], got {max_missing_fraction}")
        if not 0.0 <= max_no_gt_fraction <= 1.0:
            raise ConfigError(f"max_no_gt_fraction must be in [0, 1], got {max_no_gt_fraction}")
        self.max_no_gt_fraction = float(max_no_gt_fraction)
        self.source = open_source(source)
        self.max_missing_fraction = float(max_missing_fraction)
        self._days: list[str] | None = None
        self._id_counts: dict[str, int] | None = None
        self._warned_extra: set[str] = set()

    # ------------------------------------------------------------------ layout
    @property
    def available_days(self) -> list[str]:
        if self._days is None:
            self._days = self.source.list_days()
            if not self._days:
                raise DataError(f"{self.source.describe('all_stage')}: no <YYYY-MM-DD>.feather files "
                                "(is this a RecFlow root?)")
        return self._days

    def select_days(self, spec: str | None) -> list[str]:
        return select_days(self.available_days, spec, where=self.source.uri)

    @staticmethod
    def day_files(day: str) -> dict[str, str]:
        """Relative paths of the three files of ``day``."""
        return {k: S.LAYOUT[k].format(day=day) for k in S.DAY_FILES}

    def fingerprint_day(self, day: str, *, keep_bytes: bool = False) -> dict[str, Any]:
        """Fingerprints of the day's three files and of others/id_cnt.pkl (relative path -> dict).

        ``keep_bytes``: keep the pickles' bytes read for hashing for the following
        :meth:`read_day` (call :meth:`release_day` if the day is not read after all).
        """
        items = [*self.day_files(day).items(), ("id_cnt", S.LAYOUT["id_cnt"])]
        for _, rel in items:
            self._require_file(rel)
        keep = {kind: keep_bytes and kind in ("request_id_dict", "seq_effective_50_dict") for kind, _ in items}
        if not self.source.hashes_content:  # metadata only (GCS): nothing to overlap
            return {rel: self.source.fingerprint(rel, keep=keep[kind]) for kind, rel in items}
        # Local files are hashed concurrently: sha256 and file reads release the GIL.
        with ThreadPoolExecutor(max_workers=len(items), thread_name_prefix="lcron-hash") as pool:
            futures = {rel: pool.submit(self.source.fingerprint, rel, keep=keep[kind]) for kind, rel in items}
            return {rel: f.result() for rel, f in futures.items()}

    def release_day(self, day: str) -> None:
        """Drop cached bytes / downloads of ``day``'s files."""
        for rel in self.day_files(day).values():
            self.source.release(rel)

    def id_counts(self) -> dict[str, int]:
        """``others/id_cnt.pkl`` with canonical keys (``photo_id`` -> ``video_id``, ...)."""
        if self._id_counts is not None:
            return self._id_counts
        rel = S.LAYOUT["id_cnt"]
        where = self.source.describe(rel)
        raw = safe_load(self.source.read_bytes(rel), source=where)
        if not isinstance(raw, dict):
            raise DataError(f"{where}: expected a dict field -> count, got {type(raw).__name__}")
        out: dict[str, int] = {}
        missing = []
        for key, spellings in S.ID_CNT_SPELLINGS.items():
            found = next((s for s in spellings if s in raw), None)
            if found is None:
                missing.append(f"{key} (accepted: {', '.join(repr(s) for s in spellings)})")
                continue
            value = raw[found]
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or int(value) < 1:
                raise DataError(f"{where}: id_cnt[{found!r}] must be a positive integer, got {value!r}")
            out[key] = int(value)
        if missing:
            raise DataError(f"{where}: missing key(s) {'; '.join(missing)}; present: {sorted(map(str, raw))}")
        self._id_counts = out
        return out

    def close(self) -> None:
        self.source.close()

    def __enter__(self) -> "RecFlowReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --------------------------------------------------------------- reading
    def _require_file(self, rel: str) -> None:
        if not self.source.exists(rel):
            raise DataError(f"{self.source.describe(rel)}: file is missing (every day needs "
                            f"{', '.join(S.LAYOUT[k].format(day='<day>') for k in S.DAY_FILES)})")
        if self.source.size(rel) == 0:
            raise DataError(f"{self.source.describe(rel)}: file is empty")

    def _read_all_stage(self, rel: str, read: set[str]) -> tuple[dict[str, np.ndarray], int]:
        import pyarrow as pa

        where = self.source.describe(rel)
        path = self.source.local_path(rel)
        try:
            mm = pa.memory_map(str(path), "r")
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f"{where}: cannot open ({exc})") from None
        try:
            table = self._read_columns(mm, where, read)
        finally:
            mm.close()  # arrays already handed out keep their part of the mapping alive
        if table.num_rows == 0:
            raise DataError(f"{where}: file has no rows")
        out: dict[str, np.ndarray] = {}
        for c in S.all_stage_columns(required_only=True):
            if c["name"] not in read:
                continue
            col = table.column(c["name"])
            if col.null_count:
                if not c.get("null_allowed_elsewhere"):
                    raise DataError(f"{where}: column {c['name']} has {col.null_count} null/NaN value(s); "
                                    "expected integers everywhere")
                # Index columns are meaningful only on flagged rows: nulls elsewhere become -1,
                # and read_day rejects a -1 on a flagged row.
                col = col.fill_null(-1)
            out[c["name"]] = _int_column(col)
        return out, table.num_rows

    def _read_columns(self, mm: Any, where: str, read: set[str]) -> Any:
        """Check the schema (required columns present, integer types), then read the
        ``read`` columns; only those are decompressed (column projection in the IPC reader,
        where pyarrow.feather.read_table would also import pandas, ~1 s)."""
        import pyarrow as pa
        import pyarrow.ipc

        try:
            schema = pa.ipc.open_file(mm).schema
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise DataError(f"{where}: not a readable Feather v2 (Arrow IPC) file ({exc})") from None
        check_schema(schema, where, self._warned_extra)
        required = S.all_stage_columns(required_only=True)
        wanted = [c["name"] for c in required if c["name"] in read]
        try:
            options = pa.ipc.IpcReadOptions(included_fields=[schema.get_field_index(n) for n in wanted])
            return pa.ipc.open_file(mm, options=options).read_all()
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise DataError(f"{where}: cannot read Feather columns ({exc}); is the file truncated?") from None

    @staticmethod
    def _load_dict(data: bytes, where: str) -> dict:
        obj = safe_load(data, source=where)
        if not isinstance(obj, dict):
            raise DataError(f"{where}: expected a dict request_id -> ..., got {type(obj).__name__}")
        if not obj:
            raise DataError(f"{where}: the dict holds no requests")
        return obj

    @staticmethod
    def _keys(d: dict, where: str) -> np.ndarray:
        try:
            keys = np.asarray(list(d.keys()))
        except (TypeError, ValueError, OverflowError):
            keys = np.zeros(0, dtype=object)
        if keys.dtype.kind not in "iu" or keys.ndim != 1:
            bad = next((k for k in d if not isinstance(k, (int, np.integer)) or isinstance(k, bool)), None)
            raise DataError(f"{where}: keys must be integer request ids, found {bad!r} "
                            f"({type(bad).__name__})")
        return keys.astype(np.int64, copy=False)

    def fetch_day(self, day: str, *, index_labels: Iterable[str] = tuple(S.INDEX_COLUMNS),
                  check_all_columns: bool = True) -> DayInputs:
        """The all_stage half of :meth:`read_day`: schema and values checked, reduced column
        by column (:mod:`lcron.data.all_stage`). It releases the GIL most of the time (file
        reads, Arrow decompression, numpy), so preprocessing runs it in a helper thread
        while the main thread unpickles."""
        if day not in self.available_days:
            self.select_days(day)  # raises with the available range
        files = self.day_files(day)
        for rel in files.values():
            self._require_file(rel)
        index_labels = tuple(index_labels)
        if check_all_columns:
            read = {c["name"] for c in S.all_stage_columns(required_only=True)}
        else:
            read = {*S.REQUEST_COLUMNS, "video_id", *index_labels, *(S.INDEX_COLUMNS[lb] for lb in index_labels)}
        rel = files["all_stage"]
        counts = self.id_counts()
        try:
            table = read_all_stage(self.source.local_path(rel), self.source.describe(rel), read, index_labels,
                                   counts, self._warned_extra)
        finally:
            self.source.release(rel)
        return DayInputs(day=day, all_stage=table)

    def _load_pickle(self, rel: str) -> dict:
        """Unpickle ``rel`` straight from its file: the bytes are never held whole next to
        the objects they become."""
        where = self.source.describe(rel)
        try:
            with self.source.open_binary(rel) as fh:
                return self._load_dict(fh, where)
        finally:
            self.source.release(rel)
            trim()  # the unpickler's memo held every array's bytes a second time until now

    @staticmethod
    def _resolve(inputs: "DayInputs | Future[DayInputs]", day: str) -> DayInputs:
        got = inputs.result() if isinstance(inputs, Future) else inputs
        if got.day != day:
            raise DataError(f"inputs of day {got.day} given for day {day}")
        return got

    def read_day(self, day: str, *, labels: Iterable[str] = S.STAGE_LABELS,
                 index_labels: Iterable[str] | None = None, limit: int = 10,
                 check_all_columns: bool = True, inputs: "DayInputs | Future[DayInputs] | None" = None) -> RecFlowDay:
        """Read and validate ``day``; keep the first ``limit`` rows of each label in ``labels``.

        ``index_labels`` (default: those of ``labels`` with an index column, i.e. rank_pos
        and rerank_pos) get their stage position looked up in all_stage by
        (request_id, video_id) among the rows flagged with that label.

        Every required all_stage column must be present with an integer type (read off the
        file's schema). ``check_all_columns=False`` (preprocessing) then reads and checks the
        values of only the columns the shards are built from: the request columns, video_id
        and the index labels' flag and index columns. Item features come from
        request_id_dict, whose used rows are always checked. ``inputs``: the result of
        :meth:`fetch_day` when it ran ahead, or its Future while it still runs (then
        request_id_dict is unpickled meanwhile); otherwise it is called here.

        Memory: one pickled dict is alive at a time. request_id_dict is unpickled and
        reduced to the first ``limit`` rows per label (for every request of all_stage it
        holds) and dropped; then seq_effective_50_dict is unpickled, the sequences of the
        usable requests stacked, and it is dropped. Values are checked only for the
        requests that end up used, exactly as when both dicts were held together.
        """
        labels = tuple(labels)
        unknown = [lb for lb in labels if lb not in S.STAGE_LABELS]
        if unknown:
            raise DataError(f"unknown stage label(s) {unknown}; known: {list(S.STAGE_LABELS)}")
        if index_labels is None:
            index_labels = tuple(lb for lb in labels if lb in S.INDEX_COLUMNS)
        index_labels = tuple(index_labels)
        bad_idx = [lb for lb in index_labels if lb not in S.INDEX_COLUMNS or lb not in labels]
        if bad_idx:
            raise DataError(f"index label(s) {bad_idx} must be among the labels read and have an index column "
                            f"({sorted(S.INDEX_COLUMNS)})")
        if inputs is None:
            inputs = self.fetch_day(day, index_labels=index_labels, check_all_columns=check_all_columns)
        files = self.day_files(day)
        counts = self.id_counts()
        where_rd = self.source.describe(files["request_id_dict"])
        where_sq = self.source.describe(files["seq_effective_50_dict"])

        # ---- request_id_dict (while all_stage may still be read in a helper thread)
        try:
            rd = self._load_pickle(files["request_id_dict"])
        except DataError:
            self._resolve(inputs, day)  # problems of all_stage are reported first
            raise
        table = self._resolve(inputs, day).all_stage
        lacking = [lb for lb in index_labels if lb not in table.flagged]
        if lacking:
            raise DataError(f"day {day}: fetched without the index column(s) of {sorted(lacking)}")
        n_all = table.num_requests
        ts_u = table.request_columns["request_timestamp"]
        user_u = np.stack([table.request_columns[name] for name in fields.USER_FIELDS], axis=1)
        order = np.lexsort((table.first, ts_u))  # time order, ties by first appearance
        req = table.request_id[order]  # request ids in output order
        uidx = order  # index into the distinct requests of each output request
        in_rd = np.isin(req, self._keys(rd, where_rd))
        entries: list | None = [rd[r] for r in req[in_rd].tolist()]
        del rd
        drafts = {label: self._draft(entries, label, limit) for label in labels}  # type: ignore[arg-type]
        if all(d is not None for d in drafts.values()):
            entries = None  # the dict's arrays are freed here (seq_effective_50_dict reuses the heap)

        # ---- seq_effective_50_dict: which requests it holds
        sd = self._load_pickle(files["seq_effective_50_dict"])
        in_sq = np.isin(req, self._keys(sd, where_sq))
        keep = in_rd & in_sq
        kept_of_rd = in_sq[in_rd]

        # ---- candidates per label for the requests present in both dicts
        req_k = req[keep]
        cands: dict[str, Candidates] = {}
        for label in labels:
            draft = drafts.pop(label)
            if draft is None:  # slow path: name the first bad entry among the kept requests
                assert entries is not None
                kept_entries = [entries[i] for i in np.flatnonzero(kept_of_rd).tolist()]
                cands[label] = self._candidates(kept_entries, req_k, label, limit, where_rd, counts)
            else:
                cands[label] = self._checked(_subset(draft, kept_of_rd), req_k, label, where_rd, counts)
        entries = None

        # ---- top-group positions from all_stage
        missing_index = np.zeros(req_k.shape[0], dtype=bool)
        index_missing_rows: dict[str, int] = {}
        for label in index_labels:
            cand = cands[label]
            idx, found = self._lookup_index(table.flagged[label], n_all, uidx[keep], cand, label)
            cand.top_index = idx
            owner = np.repeat(np.arange(req_k.shape[0]), cand.lengths)
            missing_index |= np.bincount(owner[~found], minlength=req_k.shape[0]) > 0
            index_missing_rows[label] = int((~found).sum())
        n_rows = table.rows
        del table

        n_missing_rd = int((~in_rd).sum())
        n_missing_sq = int((~in_sq).sum())
        n_missing_idx = int(missing_index.sum())
        final = ~missing_index
        n_usable = int(final.sum())
        n_dropped = n_all - n_usable
        stats: dict[str, Any] = {
            "rows": int(n_rows),
            "requests_in_all_stage": n_all,
            "requests": n_usable,
            "dropped": {"missing_request_id_dict": n_missing_rd, "missing_seq_effective_50_dict": n_missing_sq,
                        "missing_top_index": n_missing_idx, "total": n_dropped},
        }
        detail = (f"{n_missing_rd} missing from request_id_dict, {n_missing_sq} missing from "
                  f"seq_effective_50_dict, {n_missing_idx} with a top-group item that has no "
                  f"{'/'.join(S.INDEX_COLUMNS[lb] for lb in index_labels) or 'index'} in all_stage")
        if n_usable == 0:
            raise DataError(f"day {day} ({self.source.uri}): zero usable requests out of {n_all} ({detail})")
        frac = n_dropped / n_all
        if frac > self.max_missing_fraction:
            raise DataError(f"day {day} ({self.source.uri}): {n_dropped} of {n_all} requests unusable "
                            f"({frac:.2%} > max_missing_fraction {self.max_missing_fraction:.2%}): {detail}")
        if n_dropped:
            msg = f"day {day}: dropped {n_dropped} of {n_all} requests ({frac:.2%}): {detail}"
            warnings.warn(msg, RecFlowWarning, stacklevel=2)
            for cand in cands.values():
                row_keep = np.repeat(final, cand.lengths)
                cand.rows = cand.rows[row_keep]
                if cand.top_index is not None:
                    cand.top_index = cand.top_index[row_keep]
                cand.lengths, cand.stored = cand.lengths[final], cand.stored[final]
            req_k = req_k[final]
        idx_out = np.nonzero(keep)[0][final]

        # ---- sequences of the usable requests, stacked in request order
        seq = self._sequences(sd, req_k, where_sq, counts)
        del sd
        trim()
        stats["items_per_label"] = {
            lb: {"mean": float(c.stored.mean()), "max": int(c.stored.max(initial=0)),
                 "requests_with_items": int((c.stored > 0).sum()), "kept_mean": float(c.lengths.mean())}
            for lb, c in cands.items()}
        stats["top_index_missing_rows"] = index_missing_rows
        stats["degenerate"] = check_degenerate(f"day {day} ({self.source.uri})", cands, index_labels,
                                               self.max_no_gt_fraction)
        sel = order[idx_out]
        return RecFlowDay(day=day, request_id=req_k, request_timestamp=ts_u[sel], user=user_u[sel],
                          seq=seq, candidates=cands, stats=stats)

    # -------------------------------------------------------------- helpers
    @staticmethod
    def _draft(entries: list, label: str, limit: int) -> "Candidates | None":
        """First ``limit`` rows of ``label`` for every entry (one list pass, one concatenate),
        or None when the arrays do not combine into int rows of the 8 columns (then the
        slow path names the bad entry). Values are not checked here (see :meth:`_checked`)."""
        width = len(S.REQUEST_ID_DICT_COLUMNS)
        empty = np.zeros((0, width), dtype=np.int64)
        try:
            arrs = [e.get(label, empty) for e in entries]
            stored = np.fromiter(map(len, arrs), dtype=np.int64, count=len(arrs))
            rows = np.concatenate([a[:limit] for a in arrs]) if arrs else empty
            ok = rows.ndim == 2 and rows.shape[1] == width and rows.dtype.kind in "iu"
        except (AttributeError, TypeError, ValueError, IndexError):
            ok = False
        if not ok:
            return None
        return Candidates(lengths=np.minimum(stored, limit), stored=stored, rows=rows.astype(np.int64, copy=False))

    @classmethod
    def _candidates(cls, entries: list, req: np.ndarray, label: str, limit: int, where: str,
                    counts: dict[str, int]) -> Candidates:
        """First ``limit`` rows of ``label`` for every request, structure and values checked."""
        cand = cls._draft(entries, label, limit)
        if cand is None:
            _locate_bad_candidates(entries, req, label, where)
        return cls._checked(cand, req, label, where, counts)  # type: ignore[arg-type]

    @staticmethod
    def _checked(cand: Candidates, req: np.ndarray, label: str, where: str, counts: dict[str, int]) -> Candidates:
        """``cand`` (rows of the requests ``req``) after the id and timestamp checks."""
        rows = cand.rows
        owner_ids = np.repeat(req, cand.lengths)
        for name, col in S.REQUEST_ID_DICT_ID_COLUMNS.items():
            _check_range(rows[:, col], where=f"{where}: label {label}", column=name, check="id", id_field=name,
                         id_counts=counts, example_ids=owner_ids)
        _check_range(rows[:, S.REQUEST_ID_DICT_COLUMNS.index("upload_timestamp")], where=f"{where}: label {label}",
                     column="upload_timestamp", check="timestamp_s", id_field=None, id_counts=counts,
                     example_ids=owner_ids)
        return cand

    @staticmethod
    def _lookup_index(flagged: tuple[np.ndarray, np.ndarray, np.ndarray], n_requests: int, cand_uidx: np.ndarray,
                      cand: Candidates, label: str) -> tuple[np.ndarray, np.ndarray]:
        """Stage position of each candidate row: all_stage rows with ``label`` == 1 (``flagged``:
        their request index, video_id and position), keyed by (request, video_id); the first
        such row wins if a pair repeats. Returns (index, found)."""
        owner_rows, vid_rows, idx_rows = flagged
        vid_q = cand.rows[:, 0]
        span = int(max(vid_rows.max(initial=0), vid_q.max(initial=0))) + 1
        if max(n_requests, 1) * span >= 2**62:  # pragma: no cover - beyond any real data set
            raise DataError(f"{label}: too many (request, video) pairs to index")
        keys = owner_rows.astype(np.int64) * span + vid_rows
        o = np.argsort(keys, kind="stable")
        ks = keys[o]
        first = np.ones(ks.shape[0], dtype=bool)
        first[1:] = ks[1:] != ks[:-1]
        ks, vals = ks[first], idx_rows[o][first]
        q = np.repeat(cand_uidx.astype(np.int64), cand.lengths) * span + vid_q
        pos = np.searchsorted(ks, q)
        pos_c = np.minimum(pos, max(ks.shape[0] - 1, 0))
        found = (pos < ks.shape[0]) & (ks[pos_c] == q) if ks.size else np.zeros(q.shape[0], dtype=bool)
        idx = np.where(found, vals[pos_c] if ks.size else -1, -1).astype(np.int64)
        return idx, found

    @staticmethod
    def _sequences(sd: dict, req: np.ndarray, where: str, counts: dict[str, int]) -> np.ndarray:
        """The sequences of ``req`` stacked; ids checked on the valid steps. A column whose
        whole range (padding included) is already within its vocabulary needs no masking:
        only a column that fails that test is checked step by step."""
        shape = (fields.SEQ_LEN, len(S.SEQ_COLUMNS))
        try:
            seq = np.stack([sd[r] for r in req.tolist()])
            ok = seq.shape[1:] == shape and seq.dtype.kind in "iu"
        except (TypeError, ValueError, IndexError):
            ok = False
        if not ok:
            _locate_bad_sequence(sd, req, where, shape)
        seq = seq.astype(np.int64, copy=False)
        valid = ids_of = None
        for name, col in S.SEQ_ID_COLUMNS.items():
            column = seq[:, :, col]
            if column.size == 0 or (int(column.min()) >= 0 and int(column.max()) < counts[name]):
                continue
            if valid is None:
                valid = seq[:, :, S.SEQ_TIME_COLUMN] > 0
                ids_of = np.repeat(req, valid.sum(axis=1))
            _check_range(column[valid], where=where, column=name, check="id", id_field=name, id_counts=counts,
                         example_ids=ids_of)
        return seq


def _subset(cand: Candidates, kept: np.ndarray) -> Candidates:
    """The rows of the requests with ``kept`` set (all of them: ``cand`` itself)."""
    if kept.all():
        return cand
    return Candidates(lengths=cand.lengths[kept], stored=cand.stored[kept], rows=cand.rows[np.repeat(kept, cand.lengths)])


def _locate_bad_candidates(entries: list, req: np.ndarray, label: str, where: str) -> None:
    """Slow path, only after the vectorised path failed: name the first bad entry."""
    width = len(S.REQUEST_ID_DICT_COLUMNS)
    for r, e in zip(req.tolist(), entries):
        if not isinstance(e, dict):
            raise DataError(f"{where}: request_id {r}: expected a dict stage_label -> array, got {type(e).__name__}")
        if label not in e:
            continue
        a = np.asarray(e[label])
        if a.ndim != 2 or a.shape[1] != width:
            raise DataError(f"{where}: request_id {r}, label {label}: array of shape {list(a.shape)}; "
                            f"expected [n, {width}] ({', '.join(S.REQUEST_ID_DICT_COLUMNS)})")
        if a.dtype.kind not in "iu":
            raise DataError(f"{where}: request_id {r}, label {label}: dtype {a.dtype}; expected integers")
    raise DataError(f"{where}: label {label}: candidate arrays cannot be combined (mixed shapes or types)")


def _locate_bad_sequence(sd: dict, req: np.ndarray, where: str, shape: tuple[int, int]) -> None:
    for r in req.tolist():
        a = np.asarray(sd[r])
        if a.shape != shape:
            raise DataError(f"{where}: request_id {r}: sequence of shape {list(a.shape)}; expected {list(shape)}")
        if a.dtype.kind not in "iu":
            raise DataError(f"{where}: request_id {r}: sequence dtype {a.dtype}; expected integers")
    raise DataError(f"{where}: sequences cannot be stacked (mixed shapes or types)")


def check_degenerate(where: str, cands: dict[str, Candidates], gt_labels: Iterable[str],
                     max_no_gt_fraction: float) -> dict[str, int]:
    """Degenerate requests of a day: a DataError for what would leave nothing to learn from
    (every candidate list empty; no request with a ground-truth (top-group) item; more than
    ``max_no_gt_fraction`` of the requests without one), a warning with counts otherwise.
    Returns the counts (``no_candidates``, ``no_gt/<label>``) for the day's statistics."""
    lengths = [c.lengths for c in cands.values()]
    n = int(lengths[0].shape[0]) if lengths else 0
    if n == 0:
        return {}
    total = np.sum(lengths, axis=0)
    labels = ", ".join(cands)
    counts = {"no_candidates": int((total == 0).sum())}
    if counts["no_candidates"] == n:
        raise DataError(f"{where}: every candidate list is empty ({n} request(s), labels {labels}): "
                        "there is nothing to train or evaluate on")
    if counts["no_candidates"]:
        warnings.warn(f"{where}: {counts['no_candidates']} of {n} request(s) have no candidate in {labels}",
                      RecFlowWarning, stacklevel=3)
    for lb in gt_labels:
        k = int((cands[lb].lengths == 0).sum())
        counts[f"no_gt/{lb}"] = k
        if k == n:
            raise DataError(f"{where}: no request has an item of the ground-truth group {lb} ({n} request(s)): "
                            "no positive to learn from")
        if k / n > max_no_gt_fraction:
            raise DataError(f"{where}: {k} of {n} requests ({k / n:.2%}) have no item of the ground-truth group "
                            f"{lb} (> max_no_gt_fraction {max_no_gt_fraction:.2%}, --max-no-gt-fraction)")
        if k:
            warnings.warn(f"{where}: {k} of {n} request(s) ({k / n:.2%}) have no item of the ground-truth group "
                          f"{lb}; they add nothing to recall", RecFlowWarning, stacklevel=3)
    return counts
