"""One day's ``all_stage`` Feather file, read column by column into what the reader keeps.

Why column by column: a real RecFlow day has ~200 all_stage rows per request (tens of
millions of rows); the ten int64 columns preprocessing uses would be 80 bytes a row, 4 GB
for a 250,000-request day. What the reader needs from them is small: each request's first
row of the user columns, and for each index label the (request, video, position) of the
rows flagged 1 (about ten a request). So each column is read batch by batch into one int64
array, value-checked, reduced and dropped before the next one is read; at most
``request_id``, ``video_id``, one flag mask per index label and the current column are
alive per row.

Every problem of the file is collected, in this order: the schema's (the missing required
columns, then each one that is not of an integer type), every null problem, every value
problem (columns in schema order), then each user column that is not constant within a
request (in ``REQUEST_COLUMNS`` order). A column with a problem is not used further, so one
pass names every bad column of the file (``lcron validate``); preprocessing stops after a
schema problem, since the values of a file it refuses do not matter.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lcron.data import schemas as S
from lcron.errors import DataError, RecFlowWarning
from lcron.memtrim import trim

__all__ = ["AllStageDay", "ColumnReader", "read_all_stage", "check_range", "range_problem", "group_requests",
           "check_schema"]


@dataclass
class AllStageDay:
    """What the reader keeps of one all_stage file (a few dozen bytes per request)."""

    rows: int
    request_id: np.ndarray | None  # [U] int64 distinct request ids (group_requests order); None: unreadable
    first: np.ndarray | None  # [U] int64 first row of each request
    request_columns: dict[str, np.ndarray]  # REQUEST_COLUMNS[1:] read, at each request's first row
    # label -> (request index [F], video_id [F], stage position [F]) of the rows flagged 1 (row order)
    flagged: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=dict)
    # Every problem found (schema, nulls, values, user columns not constant); the fields above
    # are then partial: only the columns without a problem were reduced.
    problems: list[str] = field(default_factory=list)

    @property
    def num_requests(self) -> int:
        return int(self.request_id.shape[0]) if self.request_id is not None else 0


def check_range(values: np.ndarray, *, where: str, column: str, check: str, id_field: str | None,
                id_counts: dict[str, int], example_ids: np.ndarray | None = None) -> None:
    """Vectorised value check of one integer column (see schemas: id/flag/index/timestamp):
    a DataError with :func:`range_problem`'s message."""
    msg = range_problem(values, where=where, column=column, check=check, id_field=id_field, id_counts=id_counts,
                        example_ids=example_ids)
    if msg is not None:
        raise DataError(msg)


def range_problem(values: np.ndarray, *, where: str, column: str, check: str, id_field: str | None,
                  id_counts: dict[str, int], example_ids: np.ndarray | None = None) -> str | None:
    """What is wrong with the values of one integer column (None: nothing). Ids: negative, or
    ``>= id_cnt[id_field]``; flags: other than 0/1; indexes and timestamps: negative. The
    message names ``where``, the column, the count, the extreme value and an example request."""
    if values.size == 0 or check in ("integer", "any"):
        return None
    lo, hi = int(values.min()), int(values.max())
    if check == "id":
        count = id_counts[id_field]  # type: ignore[index]
        bad_mask = None
        if lo < 0:
            bad_mask = values < 0
            what = f"{int(bad_mask.sum())} negative value(s) (min {lo}); ids must be >= 0"
        elif hi >= count:
            bad_mask = values >= count
            what = (f"{int(bad_mask.sum())} value(s) >= id_cnt[{id_field!r}] = {count} (max {hi}); "
                    f"ids must be in [0, {count})")
        if bad_mask is not None:
            return f"{where}: column {column}: {what}{_example(bad_mask, example_ids)}"
    elif check == "flag":
        if lo < 0 or hi > 1:
            bad = (values != 0) & (values != 1)
            return (f"{where}: column {column}: {int(bad.sum())} value(s) other than 0/1 "
                    f"(min {lo}, max {hi}){_example(bad, example_ids)}")
    elif check in ("index", "timestamp_ms", "timestamp_s"):
        if lo < 0:
            bad = values < 0
            return (f"{where}: column {column}: {int(bad.sum())} negative value(s) (min {lo}); "
                    f"expected >= 0{_example(bad, example_ids)}")
    else:  # pragma: no cover - schema and code out of sync
        raise AssertionError(f"unknown check {check!r}")
    return None


def _example(bad: np.ndarray, example_ids: np.ndarray | None) -> str:
    """", e.g. request_id X" for the first bad value (``example_ids`` aligned with the values)."""
    if example_ids is None or not bad.any():
        return ""
    return f", e.g. request_id {int(example_ids[np.argmax(bad)])}"


@dataclass
class _Groups:
    """Requests of the rows: ids, first rows, and either run starts/lengths (rows of a
    request contiguous, as RecFlow stores them) or the full row -> request inverse."""

    ids: np.ndarray
    first: np.ndarray
    lengths: np.ndarray | None
    inverse: np.ndarray | None

    def of_rows(self, rows: np.ndarray) -> np.ndarray:
        """Request index of each of ``rows`` (row numbers, ascending)."""
        if self.inverse is not None:
            return self.inverse[rows]
        return np.searchsorted(self.first, rows, side="right").astype(np.int64) - 1

    def broadcast(self, per_request: np.ndarray) -> np.ndarray:
        """``per_request`` repeated onto the rows."""
        if self.inverse is not None:
            return per_request[self.inverse]
        return np.repeat(per_request, self.lengths)


def group_requests(rid: np.ndarray) -> _Groups:
    """Requests in first-appearance order when RecFlow's rows of a request are contiguous
    (then only the run starts need checking for uniqueness); otherwise ``np.unique``'s
    sorted ids, first rows and inverse."""
    starts = np.flatnonzero(np.concatenate([[True], rid[1:] != rid[:-1]]))
    run_ids = rid[starts]
    if np.unique(run_ids).shape[0] == run_ids.shape[0]:
        return _Groups(run_ids, starts, np.diff(np.append(starts, rid.shape[0])), None)
    uniq, first, inv = np.unique(rid, return_index=True, return_inverse=True)
    return _Groups(uniq, first, None, inv.reshape(-1))


def _not_constant(values: np.ndarray, groups: _Groups, rid: np.ndarray, where: str, name: str) -> str | None:
    """The error message when ``values`` differ within a request, else None.

    Contiguous requests: a value changes inside a run iff some row differs from the row
    before it where that row is not a run start (one bool per row, no per-row int64 copy);
    the exact count of disagreeing rows is computed only when there is one."""
    if groups.inverse is None and values.shape[0] > 1:
        change = values[1:] != values[:-1]
        at_starts = int(change[groups.first[1:] - 1].sum())
        if int(change.sum()) == at_starts:
            return None
    bad = values != groups.broadcast(values[groups.first])
    if not bad.any():
        return None
    r = int(rid[np.argmax(bad)])
    return (f"{where}: column {name} is not constant within request_id {r} "
            f"({int(bad.sum())} row(s) disagree with the request's first row)")


def check_schema(schema: Any, where: str, warned_extra: set[str]) -> list[str]:
    """Every problem of the schema: the required columns that are missing (one message naming
    them all), then each required column that is not of an integer type. Extra columns are
    warned about once per reader."""
    import pyarrow as pa

    names = set(schema.names)
    required = S.all_stage_columns(required_only=True)
    problems = []
    missing = [c["name"] for c in required if c["name"] not in names]
    if missing:
        problems.append(f"{where}: required column(s) missing: {', '.join(missing)}")
    known = {c["name"] for c in S.ALL_STAGE_COLUMNS}
    extra = sorted(names - known - warned_extra)
    if extra:
        warned_extra.update(extra)
        warnings.warn(f"{where}: ignoring extra column(s) {', '.join(extra)}", RecFlowWarning, stacklevel=5)
    for c in required:
        if c["name"] not in names:
            continue
        t = schema.field(c["name"]).type
        if not pa.types.is_integer(t):
            problems.append(f"{where}: column {c['name']} has type {t}; expected an integer type")
    return problems


def _integer_columns(schema: Any) -> set[str]:
    """Names of the schema's integer columns."""
    import pyarrow as pa

    return {f.name for f in schema if pa.types.is_integer(f.type)}


class ColumnReader:
    """One Feather file opened once; each column read on its own into an int64 array."""

    def __init__(self, path: Path, where: str) -> None:
        import pyarrow as pa
        import pyarrow.ipc

        self.where = where
        try:
            # A plain file, not a memory map: the mapped (compressed) pages would count in
            # the resident memory for as long as any array read from them is alive.
            self.file = pa.OSFile(str(path), "r")
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f"{where}: cannot open ({exc})") from None
        try:
            self.schema = pa.ipc.open_file(self.file).schema
        except (pa.ArrowException, OSError, ValueError) as exc:
            self.file.close()
            raise DataError(f"{where}: not a readable Feather v2 (Arrow IPC) file ({exc})") from None

    def read(self, spec: dict[str, Any], rows: int | None) -> tuple[np.ndarray | None, int, str | None]:
        """Column ``spec`` as int64, its number of rows, and the null problem: nulls are a
        problem (then no values come back), or -1 where ``null_allowed_elsewhere``."""
        import pyarrow as pa
        import pyarrow.ipc

        name = spec["name"]
        parts: list[np.ndarray] = []
        nulls = 0
        allowed = bool(spec.get("null_allowed_elsewhere"))
        try:
            options = pa.ipc.IpcReadOptions(included_fields=[self.schema.get_field_index(name)])
            reader = pa.ipc.open_file(self.file, options=options)
            out = np.empty(rows, dtype=np.int64) if rows is not None else None
            pos = 0
            for i in range(reader.num_record_batches):
                chunk = reader.get_batch(i).column(0)
                if chunk.null_count:
                    nulls += chunk.null_count
                    if not allowed:
                        pos += len(chunk)
                        continue
                    chunk = chunk.fill_null(-1)
                if nulls and not allowed:
                    pos += len(chunk)  # the column is refused: only its rows and nulls are counted
                    continue
                data = np.frombuffer(chunk.buffers()[1], dtype=np.dtype(str(chunk.type)))
                data = data[chunk.offset: chunk.offset + len(chunk)]
                if out is None:
                    parts.append(data.astype(np.int64))
                else:
                    np.copyto(out[pos: pos + data.shape[0]], data, casting="unsafe")
                pos += data.shape[0]
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise DataError(f"{self.where}: cannot read Feather columns ({exc}); is the file truncated?") from None
        if nulls and not allowed:
            return None, pos, (f"{self.where}: column {name} has {nulls} null/NaN value(s); "
                               "expected integers everywhere")
        if rows is not None and pos != rows:  # pragma: no cover - Arrow guarantees equal column lengths
            raise DataError(f"{self.where}: column {name} has {pos} rows, expected {rows}")
        if out is None:
            out = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        return out, pos, None

    def close(self) -> None:
        self.file.close()


def read_all_stage(path: Path, where: str, read: set[str], index_labels: tuple[str, ...],
                   id_counts: dict[str, int], warned_extra: set[str], *, collect: bool = False) -> AllStageDay:
    """Read, check and reduce the ``read`` columns of one all_stage file (module docstring).

    ``index_labels``: the labels whose flagged rows' (request, video_id, position) are kept;
    their flag and index columns and video_id must be in ``read``.

    Every problem found goes to the result's ``problems`` (schema, then nulls, then values,
    then user columns not constant within a request); a file that cannot be opened at all is
    a DataError. A schema problem stops the reading unless ``collect`` (``lcron validate``:
    the values of the columns that are present with an integer type are still checked).
    """
    cr = ColumnReader(path, where)
    try:
        problems = check_schema(cr.schema, where, warned_extra)
        if problems and not collect:
            return AllStageDay(rows=0, request_id=None, first=None, request_columns={}, problems=problems)
        day = _reduce(cr, read & _integer_columns(cr.schema), index_labels, id_counts)
        day.problems[:0] = problems
        return day
    finally:
        cr.close()
        trim()  # this thread's freed columns back to the system before the pickles are parsed


def _reduce(cr: ColumnReader, read: set[str], index_labels: tuple[str, ...],
            id_counts: dict[str, int]) -> AllStageDay:
    """Read and check the ``read`` columns one by one (every problem is collected); reduce what
    the reader keeps from the columns that passed."""
    where = cr.where
    specs = [c for c in S.all_stage_columns(required_only=True) if c["name"] in read]
    # Flags whose index column is read: their masks are kept until that column is checked.
    kept = _Reduction(index_labels=index_labels,
                      masked_flags={flag for flag, col in S.INDEX_COLUMNS.items() if col in read and flag in read},
                      index_of={S.INDEX_COLUMNS[lb]: lb for lb in index_labels})
    rows: int | None = None
    for c in specs:
        values, n, null_problem = cr.read(c, rows)
        if rows is None:
            rows = n
            if rows == 0:
                return AllStageDay(rows=0, request_id=None, first=None, request_columns={},
                                   problems=[f"{where}: file has no rows"])
        if null_problem is not None:
            kept.null_problems.append(null_problem)
            continue
        assert values is not None
        if c["name"] == "request_id":
            kept.rid, kept.groups = values, group_requests(values)
        problem = _value_problem(c, values, kept.masks, kept.rid, where, id_counts)
        if problem is not None:
            kept.value_problems.append(problem)
            continue
        kept.add(c["name"], values, where)
        del values
    return kept.day(rows or 0)


def _value_problem(spec: dict[str, Any], values: np.ndarray, masks: dict[str, np.ndarray], rid: np.ndarray | None,
                   where: str, id_counts: dict[str, int]) -> str | None:
    """What is wrong with the values of column ``spec`` (:func:`range_problem`). An index
    column is checked only where its stage flag is 1 (``masks``), so not at all when the
    flag column could not be used."""
    name = spec["name"]
    if "checked_where" in spec:  # index columns: only where the stage flag is 1
        flag_col = spec["checked_where"].split(" ")[0]
        if flag_col not in masks:
            return None
        m = masks[flag_col]
        return range_problem(values[m], where=where, column=f"{name} (where {spec['checked_where']})",
                             check=spec["check"], id_field=spec.get("id_field"), id_counts=id_counts,
                             example_ids=rid[m] if rid is not None else None)
    return range_problem(values, where=where, column=name, check=spec["check"], id_field=spec.get("id_field"),
                         id_counts=id_counts, example_ids=rid)


@dataclass
class _Reduction:
    """What :func:`_reduce` keeps of the columns read so far: the request ids and their
    grouping, video_id and the flag masks while a later column needs them, each request's
    user columns, the index labels' flagged rows, and the problems by kind (reported nulls
    first, then values, then user columns not constant)."""

    index_labels: tuple[str, ...]
    masked_flags: set[str]  # flag columns whose mask is kept for their index column
    index_of: dict[str, str]  # index column -> its label (index labels only)
    rid: np.ndarray | None = None
    groups: _Groups | None = None
    video: np.ndarray | None = None
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    request_columns: dict[str, np.ndarray] = field(default_factory=dict)
    flagged: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=dict)
    null_problems: list[str] = field(default_factory=list)
    value_problems: list[str] = field(default_factory=list)
    not_constant: dict[str, str] = field(default_factory=dict)

    def add(self, name: str, values: np.ndarray, where: str) -> None:
        """Keep what the reader needs of column ``name``, whose values passed their check."""
        if self.groups is not None and self.rid is not None and name in S.REQUEST_COLUMNS[1:]:
            msg = _not_constant(values, self.groups, self.rid, where, name)
            if msg is not None:
                self.not_constant[name] = msg
            self.request_columns[name] = values[self.groups.first]
        if name == "video_id" and self.index_labels:
            self.video = values
        if name in self.masked_flags:
            self.masks[name] = values == 1
        if name in self.index_of:
            lb = self.index_of[name]
            if lb in self.masks and self.video is not None and self.groups is not None:
                rows_flagged = np.flatnonzero(self.masks[lb])
                self.flagged[lb] = (self.groups.of_rows(rows_flagged), self.video[rows_flagged], values[rows_flagged])

    def day(self, rows: int) -> AllStageDay:
        """The reduced file, its problems in the documented order."""
        problems = [*self.null_problems, *self.value_problems,
                    *(self.not_constant[n] for n in S.REQUEST_COLUMNS[1:] if n in self.not_constant)]
        groups = self.groups
        return AllStageDay(rows=rows, request_id=groups.ids if groups is not None else None,
                           first=groups.first.astype(np.int64, copy=False) if groups is not None else None,
                           request_columns=self.request_columns, flagged=self.flagged, problems=problems)
