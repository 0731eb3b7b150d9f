"""Read and validate one day of the RecFlow layout (local folder or ``gs://``).

The reader turns a day's three files into column arrays, checking everything that
would otherwise surface later as a wrong label or an out-of-range embedding index:

* ``all_stage/<day>.feather`` is read **by columns** (the required ones of
  :data:`lcron.data.schemas.ALL_STAGE_COLUMNS`); any integer width is accepted, feedback
  columns are never read; wrong types, nulls, negative ids, ids ``>= id_cnt``, flags
  other than 0/1 are :class:`DataError`\\ s naming the file, the column and the value;
* the requests of the day are the distinct (request_id, user_id, request_timestamp,
  device_id, age, gender, province) rows; a request whose user columns disagree between
  its rows is an error (they must be constant within a request);
* the day must be the day it is named after (:class:`DayIdentity`): its request times
  within the named day (give or take :data:`DAY_MARGIN_HOURS`), its request ids new;
* both pickles go through :func:`lcron.safe_pickle.safe_load`; a request of all_stage
  missing from either dict, or whose top-group items have no index in all_stage, is
  dropped and counted: a warning up to ``max_missing_fraction`` of the day, an error above;
* the ids of the first :data:`CHECKED_ROWS` (or ``limit``, if more) stored rows of every
  stage label are checked for every request of all_stage that request_id_dict holds,
  whichever labels are kept, so ``lcron validate`` and ``lcron preprocess`` (any setting)
  give the same answer;
* candidate lists keep the first ``limit`` (10) stored rows per stage label.

The checks are the same for ``lcron validate`` and ``lcron preprocess``: both call
:meth:`RecFlowReader.read_day`. ``collect=False`` (preprocess) stops at the first stage of
the day with a problem (all_stage, day identity, request_id_dict, seq_effective_50_dict,
usable requests) and raises every problem of that stage; ``collect=True`` (validate) goes
on through every stage and raises :class:`DayProblems` listing every problem of the day.

No Python work runs per row or per item: a request is one dict lookup per stage label,
and every list is built with ``np.concatenate`` + lengths, then checked with vectorised
min/max.
Requests come out ordered by request time (ties: order of first appearance in
all_stage), so "latest seen" is simply "last in the day".
"""

from __future__ import annotations

import datetime as _dt
import re
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from lcron.data import fields
from lcron.data import schemas as S
from lcron.data.all_stage import AllStageDay, ColumnReader, group_requests, range_problem, read_all_stage
from lcron.data.source import Source, open_source
from lcron.data.step_configs import check_tz_offset_hours, fraction
from lcron.defaults import PREPROCESS
from lcron.errors import ConfigError, DataError, RecFlowWarning
from lcron.memtrim import trim
from lcron.safe_pickle import safe_load

__all__ = ["RecFlowReader", "RecFlowDay", "DayInputs", "Candidates", "RecFlowWarning", "DayProblems", "DayIdentity",
           "select_days", "parse_day", "CHECKED_ROWS", "DAY_MARGIN_HOURS", "MAX_OUTSIDE_FRACTION",
           "MAX_REPEATED_FRACTION"]


_DAY_SPEC = re.compile(r"^\d{4}-\d{2}-\d{2}$")

#: The largest id count of others/id_cnt.pkl: shifted ids (+1, + padding) must fit int32.
MAX_ID_COUNT = 2**31 - 3
#: Stored rows per stage label whose ids are checked (at least; ``limit`` if larger).
CHECKED_ROWS = 10
#: A day is refused when more than MAX_OUTSIDE_FRACTION of its requests lie outside the day it
#: is named after, widened by DAY_MARGIN_HOURS on each side: a file named in another time-zone
#: convention passes, a copy of another day does not.
DAY_MARGIN_HOURS = 12
MAX_OUTSIDE_FRACTION = 0.5
#: A day is refused when more than this share of its requests repeat an earlier day's ids.
MAX_REPEATED_FRACTION = 0.01
_DAY_MS = 86_400_000
_HOUR_MS = 3_600_000
# Requests per slice when a stage label is checked without being kept (bounded memory).
_CHECK_SLICE = 32_768


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


class DayProblems(DataError):
    """Several problems of one day (``problems``, in the order found); the message joins them
    with `` | `` so that the command line still prints one line."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__(" | ".join(self.problems))


@dataclass
class DayInputs:
    """What :meth:`RecFlowReader.fetch_day` reads ahead: the reduced all_stage columns.

    The two pickles are not read ahead: they are unpickled straight from their files, one
    after the other, each dropped once reduced (see :meth:`RecFlowReader.read_day`).
    ``all_stage`` is None when the file could not be read; ``problems`` lists what is wrong
    with it (only ``collect=True`` returns inputs with problems, otherwise they are raised)."""

    day: str
    all_stage: AllStageDay | None
    problems: list[str] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return self.all_stage.rows if self.all_stage is not None else 0


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


class _Problems:
    """The problems of one day, in the order found (a repeated message is kept once).

    :meth:`stop` ends a stage of the day: it raises what was found unless ``collect``
    (``lcron validate``, which goes on to report every problem of the day). A single
    problem is raised as the exception that reported it (its type kept, e.g.
    UnsafePickleError); several as one :class:`DayProblems`."""

    def __init__(self, collect: bool) -> None:
        self.collect = collect
        self.items: list[tuple[str, DataError | None]] = []

    def add(self, message: str, exc: DataError | None = None) -> None:
        if all(message != m for m, _ in self.items):
            self.items.append((message, exc))

    def add_error(self, exc: DataError) -> None:
        if isinstance(exc, DayProblems):
            for p in exc.problems:
                self.add(p)
        else:
            self.add(str(exc), exc)

    def extend(self, messages: Iterable[str]) -> None:
        for m in messages:
            self.add(m)

    @property
    def messages(self) -> list[str]:
        return [m for m, _ in self.items]

    def raise_if_any(self) -> None:
        if not self.items:
            return
        if len(self.items) == 1 and self.items[0][1] is not None:
            raise self.items[0][1]
        raise DayProblems(self.messages)

    def stop(self) -> None:
        if not self.collect:
            self.raise_if_any()


def _day_start_ms(day: str, tz_offset_hours: int) -> int:
    """Epoch ms of local midnight of ``day`` in UTC + ``tz_offset_hours``."""
    return (_dt.date.fromisoformat(day).toordinal() - _dt.date(1970, 1, 1).toordinal()) * _DAY_MS \
        - tz_offset_hours * _HOUR_MS


def _local_time(ms: int, tz_offset_hours: int) -> str:
    """``YYYY-MM-DD HH:MM:SS`` of epoch ``ms`` in UTC + ``tz_offset_hours`` (integer arithmetic)."""
    try:
        t = _dt.datetime(1970, 1, 1) + _dt.timedelta(milliseconds=int(ms) + tz_offset_hours * _HOUR_MS)
    except OverflowError:
        return f"{int(ms)} ms"
    return t.strftime("%Y-%m-%d %H:%M:%S")


class DayIdentity:
    """Is each day of a selection the day it is named after? The check that ``lcron validate``
    and ``lcron preprocess`` share (through :meth:`RecFlowReader.read_day`), so that a copy of
    another day (the same request ids, times outside the named day) cannot become a training or
    test day unnoticed:

    * **request times**: ``request_timestamp`` (ms) in UTC + ``tz_offset_hours``. More than
      :data:`MAX_OUTSIDE_FRACTION` of the day's requests outside the named day widened by
      :data:`DAY_MARGIN_HOURS` on each side is an error (any time-zone convention passes, a
      copy of a day that is not adjacent does not); some requests outside the named local day
      is a warning with the count;
    * **request ids**: the day's requests whose id already appeared on an earlier day checked
      by the same reader (days of one selection, in date order): more than
      :data:`MAX_REPEATED_FRACTION` is an error naming both days, the count and an example id;
      fewer is a warning.

    The ids of every day checked are kept as one sorted array with the day each id was first
    seen: a day costs a sort of its ids, a ``searchsorted`` into that array and an insert
    (12 bytes per request kept; about 110 MB for 37 days of 250,000 requests).
    """

    def __init__(self, tz_offset_hours: int) -> None:
        self.tz_offset_hours = int(tz_offset_hours)
        self._ids = np.zeros(0, dtype=np.int64)  # sorted, distinct
        self._first_day = np.zeros(0, dtype=np.int32)  # index into _days of the day each id was first seen
        self._days: list[str] = []

    @property
    def days(self) -> list[str]:
        """The days whose request ids are remembered."""
        return list(self._days)

    def check(self, day: str, where: str, request_id: np.ndarray,
              request_timestamp: np.ndarray | None = None) -> list[str]:
        """The errors of ``day`` (messages; warnings are issued as :class:`RecFlowWarning`), then
        remember its request ids for the days after it. ``request_id``: the day's distinct request
        ids; ``request_timestamp``: their times (ms; None: times not checked); ``where``: the
        all_stage file, named in the messages."""
        request_id = np.asarray(request_id, dtype=np.int64)
        problems = []
        if request_timestamp is not None:
            p = self._times(day, where, request_id, np.asarray(request_timestamp, dtype=np.int64))
            if p is not None:
                problems.append(p)
        ids = _sorted_unique(request_id)
        p = self._repeats(day, where, request_id, ids)
        if p is not None:
            problems.append(p)
        self._remember(day, ids)
        return problems

    def remember(self, day: str, request_id: np.ndarray) -> None:
        """Add ``day``'s request ids to those the later days are checked against (once per day)."""
        self._remember(day, _sorted_unique(np.asarray(request_id, dtype=np.int64)))

    def _remember(self, day: str, ids: np.ndarray) -> None:
        if day in self._days:
            return
        self._days.append(day)
        pos = np.searchsorted(self._ids, ids)
        if self._ids.size:
            new = self._ids[np.minimum(pos, self._ids.size - 1)] != ids
            new |= pos == self._ids.size
            ids, pos = ids[new], pos[new]
        self._ids = np.insert(self._ids, pos, ids)
        self._first_day = np.insert(self._first_day, pos, np.int32(len(self._days) - 1))

    def _times(self, day: str, where: str, rid: np.ndarray, ts: np.ndarray) -> str | None:
        n = int(ts.shape[0])
        if n == 0:
            return None
        tz = self.tz_offset_hours
        start = _day_start_ms(day, tz)
        end = start + _DAY_MS
        outside = (ts < start) | (ts >= end)
        k = int(outside.sum())
        if k == 0:
            return None
        margin = DAY_MARGIN_HOURS * _HOUR_MS
        far = (ts < start - margin) | (ts >= end + margin)
        k_far = int(far.sum())
        zone = f"UTC{tz:+d}"
        span = f"{_local_time(ts.min(), tz)} .. {_local_time(ts.max(), tz)}"
        if k_far > MAX_OUTSIDE_FRACTION * n:
            i = int(np.argmax(far))
            return (f"{where}: column request_timestamp: {k_far} of {n} requests ({k_far / n:.2%}) are more than "
                    f"{DAY_MARGIN_HOURS} h outside day {day} ({zone}), e.g. request_id {int(rid[i])} at "
                    f"{_local_time(ts[i], tz)}; the requests span {span}: is the file a copy of another day, or "
                    "named after the wrong day?")
        i = int(np.argmax(outside))
        warnings.warn(f"{where}: column request_timestamp: {k} of {n} requests ({k / n:.2%}) fall outside day {day} "
                      f"in {zone}, e.g. request_id {int(rid[i])} at {_local_time(ts[i], tz)} (the requests span "
                      f"{span}; is --tz-offset-hours {tz} the data's time zone?)", RecFlowWarning, stacklevel=4)
        return None

    def _repeats(self, day: str, where: str, rid: np.ndarray, ids: np.ndarray) -> str | None:
        """``ids``: ``rid`` sorted (distinct), looked up in order (a cache-friendly search)."""
        n = int(rid.shape[0])
        if n == 0 or self._ids.size == 0:
            return None
        pos = np.minimum(np.searchsorted(self._ids, ids), self._ids.size - 1)
        hit = self._ids[pos] == ids
        earlier = np.array([d < day for d in self._days])
        hit &= earlier[self._first_day[pos]]
        k = int(hit.sum())
        if k == 0:
            return None
        of_day = self._first_day[pos[hit]]
        per_day = np.bincount(of_day, minlength=len(self._days))
        order = [int(j) for j in np.argsort(-per_day, kind="stable") if per_day[j]]
        top = order[0]
        # the example: the first request of the day (in all_stage order) repeated from the top day
        example = int(rid[np.argmax(np.isin(rid, ids[hit][of_day == top]))])
        listed = ", ".join(f"{int(per_day[j])} on {self._days[j]}" for j in order[:3])
        if len(order) > 3:
            listed += f" and {len(order) - 3} more day(s)"
        frac = k / n
        msg = (f"{where}: column request_id: {k} of {n} requests ({frac:.2%}) of day {day} repeat request ids of "
               f"an earlier day ({listed}), e.g. request_id {example} of day {self._days[top]}")
        if frac > MAX_REPEATED_FRACTION:
            return (f"{msg}; more than {MAX_REPEATED_FRACTION:.0%} repeated: is the file a copy of day "
                    f"{self._days[top]}?")
        warnings.warn(msg, RecFlowWarning, stacklevel=4)
        return None


def _sorted_unique(ids: np.ndarray) -> np.ndarray:
    """``ids`` sorted without repeats (np.sort and a mask: several times faster than np.unique)."""
    ids = np.sort(ids)
    if ids.size > 1:
        ids = ids[np.concatenate([[True], ids[1:] != ids[:-1]])]
    return ids


@dataclass
class _DayRead:
    """One :meth:`RecFlowReader.read_day` between its phases: what it was asked for, the day's
    files, the problems so far, and each pickled dict while it is alive. A dict is referenced
    here only, so the phase done with it frees it by setting its field to None (a local of
    ``read_day`` would hold it until the day is read): one pickled dict is alive at a time."""

    day: str
    labels: tuple[str, ...]
    index_labels: tuple[str, ...]
    limit: int
    files: dict[str, str]
    counts: dict[str, int]
    where_all_stage: str
    where_request_dict: str
    where_seq_dict: str
    rows_checked: int  # stored rows per label whose ids are checked
    problems: _Problems
    # request_id_dict's problems, reported after all_stage's and the day identity's
    request_dict_problems: _Problems = field(default_factory=lambda: _Problems(True))
    request_dict: dict | None = None
    request_keys: np.ndarray | None = None
    seq_dict: dict | None = None
    seq_keys: np.ndarray | None = None


@dataclass
class _RequestOrder:
    """all_stage's distinct requests in output order: by request time, ties by first appearance
    in all_stage, so that "latest seen" is simply "last in the day"."""

    count: int  # distinct requests of all_stage
    timestamp: np.ndarray  # [U] request_timestamp of each distinct request (all_stage order)
    user: np.ndarray  # [U, 5] fields.USER_FIELDS of each distinct request (all_stage order)
    order: np.ndarray  # [U] the distinct request of each output request
    request_id: np.ndarray  # [U] request ids in output order

    @classmethod
    def of(cls, table: AllStageDay) -> "_RequestOrder":
        """The order of ``table``'s requests (a checked all_stage, every request column read)."""
        assert table.request_id is not None and table.first is not None
        timestamp = table.request_columns["request_timestamp"]
        user = np.stack([table.request_columns[name] for name in fields.USER_FIELDS], axis=1)
        order = np.lexsort((table.first, timestamp))  # time order, ties by first appearance
        return cls(count=table.num_requests, timestamp=timestamp, user=user, order=order,
                   request_id=table.request_id[order])


@dataclass
class _Joined:
    """The requests (output order) that both pickled dicts hold, and their candidates."""

    in_request_dict: np.ndarray  # [U] bool: request_id_dict holds the request
    in_seq_dict: np.ndarray  # [U] bool: seq_effective_50_dict holds it
    keep: np.ndarray  # [U] bool: both hold it
    request_id: np.ndarray  # ids of the requests kept (after _drop_unusable: of the usable ones)
    cands: dict[str, Candidates]  # label -> first ``limit`` rows of the requests kept


class RecFlowReader:
    """Validating reader of a RecFlow root (local folder or ``gs://bucket/prefix``).

    The reader remembers the request ids of the days it has read (:class:`DayIdentity`):
    read the days of a selection with one reader, in date order."""

    def __init__(self, source: "str | Source", *, max_missing_fraction: float = PREPROCESS.max_missing_fraction,
                 max_no_gt_fraction: float = PREPROCESS.max_no_gt_fraction,
                 tz_offset_hours: int = PREPROCESS.tz_offset_hours) -> None:
        # the checks of ValidateConfig (the same sentences when a configuration is made)
        problem = (fraction("max_missing_fraction")(max_missing_fraction)
                   or fraction("max_no_gt_fraction")(max_no_gt_fraction) or check_tz_offset_hours(tz_offset_hours))
        if problem:
            raise ConfigError(problem)
        self.max_no_gt_fraction = float(max_no_gt_fraction)
        self.source = open_source(source)
        self.max_missing_fraction = float(max_missing_fraction)
        self.identity = DayIdentity(tz_offset_hours)
        self._days: list[str] | None = None
        self._id_counts: dict[str, int] | None = None
        self._warned_extra: set[str] = set()

    # ------------------------------------------------------------------ layout
    @property
    def available_days(self) -> list[str]:
        """The days of the source (names of ``all_stage/*.feather``). The first call warns
        about every file of the three day folders that is not a day file, and every pickle of
        a day without an all_stage file: nothing is skipped without a word."""
        if self._days is None:
            listing = self.source.scan_days()
            for rel, ext in listing.not_days:
                warnings.warn(f"ignoring {self.source.describe(rel)}: not a day file (expected YYYY-MM-DD.{ext})",
                              RecFlowWarning, stacklevel=2)
            for rel, day in listing.orphans:
                warnings.warn(f"ignoring {self.source.describe(rel)}: there is no "
                              f"{S.LAYOUT['all_stage'].format(day=day)}, so {day} is not a day of this source (its "
                              "days are the names of all_stage/*.feather)", RecFlowWarning, stacklevel=2)
            self._days = listing.days
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
            if int(value) > MAX_ID_COUNT:
                raise DataError(f"{where}: id_cnt[{found!r}] = {int(value)} is more ids than an embedding table can "
                                f"index (at most {MAX_ID_COUNT}); RecFlow's largest, video_id, has about 9 million")
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

    @staticmethod
    def _load_dict(data: Any, where: str) -> dict:
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
                  check_all_columns: bool = True, collect: bool = False) -> DayInputs:
        """The all_stage half of :meth:`read_day`: schema and values checked, reduced column
        by column (:mod:`lcron.data.all_stage`). It releases the GIL most of the time (file
        reads, Arrow decompression, numpy), so preprocessing runs it in a helper thread
        while the main thread unpickles.

        Without ``collect`` a problem is raised (every missing or empty file of the day, or
        every problem of all_stage); with ``collect`` the problems of all_stage come back in
        the inputs, and the pickles' files are checked by :meth:`read_day`."""
        if day not in self.available_days:
            self.select_days(day)  # raises with the available range
        files = self.day_files(day)
        problems = _Problems(collect)
        for kind, rel in files.items():
            if collect and kind != "all_stage":
                continue
            try:
                self._require_file(rel)
            except DataError as exc:
                problems.add_error(exc)
        problems.stop()
        if problems.items:  # collect: no all_stage to read
            return DayInputs(day=day, all_stage=None, problems=problems.messages)
        index_labels = tuple(index_labels)
        if check_all_columns:
            read = {c["name"] for c in S.all_stage_columns(required_only=True)}
        else:
            read = {*S.REQUEST_COLUMNS, "video_id", *index_labels, *(S.INDEX_COLUMNS[lb] for lb in index_labels)}
        rel = files["all_stage"]
        counts = self.id_counts()
        table = None
        try:
            table = read_all_stage(self.source.local_path(rel), self.source.describe(rel), read, index_labels,
                                   counts, self._warned_extra, collect=collect)
        except DataError as exc:  # the file cannot be read at all
            problems.add_error(exc)
        finally:
            self.source.release(rel)
        if table is not None:
            problems.extend(table.problems)
        problems.stop()
        return DayInputs(day=day, all_stage=table, problems=problems.messages)

    def all_stage_request_ids(self, day: str) -> np.ndarray:
        """The distinct request ids of ``day``'s all_stage file (only its request_id column is read)."""
        rel = self.day_files(day)["all_stage"]
        self._require_file(rel)
        where = self.source.describe(rel)
        try:
            cr = ColumnReader(self.source.local_path(rel), where)
            try:
                spec = next(c for c in S.ALL_STAGE_COLUMNS if c["name"] == "request_id")
                if "request_id" not in cr.schema.names:
                    raise DataError(f"{where}: required column(s) missing: request_id")
                values, _, problem = cr.read(spec, None)
            finally:
                cr.close()
        finally:
            self.source.release(rel)
        if problem is not None:
            raise DataError(problem)
        return group_requests(values).ids  # type: ignore[arg-type]

    def check_known_day(self, day: str, request_id: np.ndarray) -> None:
        """The request-id part of the day identity check for a day that is not read again
        (preprocessing skips it as up to date): its ids are compared with the earlier days'
        and remembered for the later days. A DataError as :meth:`read_day` would raise it."""
        problems = self.identity.check(day, self.source.describe(self.day_files(day)["all_stage"]), request_id)
        if problems:
            raise DayProblems(problems) if len(problems) > 1 else DataError(problems[0])

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

    def _load_checked(self, rel: str, problems: "_Problems") -> tuple[dict | None, np.ndarray | None]:
        """A pickled dict and its keys; (None, None) with the problem recorded if it is unusable."""
        try:
            self._require_file(rel)
            d = self._load_pickle(rel)
            return d, self._keys(d, self.source.describe(rel))
        except DataError as exc:
            problems.add_error(exc)
            return None, None

    @staticmethod
    def _resolve(inputs: "DayInputs | Future[DayInputs]", day: str) -> DayInputs:
        got = inputs.result() if isinstance(inputs, Future) else inputs
        if got.day != day:
            raise DataError(f"inputs of day {got.day} given for day {day}")
        return got

    def read_day(self, day: str, *, labels: Iterable[str] = S.STAGE_LABELS,
                 index_labels: Iterable[str] | None = None, limit: int = 10,
                 check_all_columns: bool = True, inputs: "DayInputs | Future[DayInputs] | None" = None,
                 collect: bool = False) -> RecFlowDay:
        """Read and validate ``day``; keep the first ``limit`` rows of each label in ``labels``.

        ``index_labels`` (default: those of ``labels`` with an index column, i.e. rank_pos
        and rerank_pos) get their stage position looked up in all_stage by
        (request_id, video_id) among the rows flagged with that label.

        Every required all_stage column must be present with an integer type (read off the
        file's schema). ``check_all_columns=False`` reads and checks the values of only the
        columns the shards are built from (the request columns, video_id and the index labels'
        flag and index columns); validate and preprocess both check every column. The ids of
        every stage label (the first ``max(limit, CHECKED_ROWS)`` stored rows, whether the
        label is kept or not) are checked for every request of all_stage that request_id_dict
        holds; the sequences of the usable requests are checked. ``inputs``: the result of
        :meth:`fetch_day` when it ran ahead, or its Future while it still runs (then
        request_id_dict is unpickled meanwhile); otherwise it is called here.

        The day identity (:class:`DayIdentity`) is checked once all_stage is read: call
        ``read_day`` for the days of a selection in date order on one reader.

        ``collect=False``: the problems of the first stage that has any are raised (one
        problem as the DataError that reported it, several as :class:`DayProblems`).
        ``collect=True`` (``lcron validate``): every stage is checked as far as the files
        allow, and every problem of the day is raised at the end as :class:`DayProblems`.

        Memory: one pickled dict is alive at a time. request_id_dict is unpickled and reduced to the
        first ``limit`` rows per label (for every request of all_stage it holds) and dropped; then
        seq_effective_50_dict is unpickled, the sequences of the usable requests stacked, and it is
        dropped. A label that is checked but not kept is checked a slice of requests at a time.
        """
        labels, index_labels = _label_arguments(labels, index_labels)
        if inputs is None:  # fetch_day, the day identity and check_degenerate warn naming read_day's caller
            inputs = self.fetch_day(day, index_labels=index_labels, check_all_columns=check_all_columns,
                                    collect=collect)
        run = self._start_day_read(day, labels, index_labels, limit, collect)
        table = self._all_stage_after_request_dict(run, inputs)
        if table is not None and table.request_id is not None:
            run.problems.extend(self.identity.check(day, run.where_all_stage, table.request_id,
                                                    table.request_columns.get("request_timestamp")))
        table = self._usable_all_stage(run, table)
        requests = _RequestOrder.of(table)
        drafts, in_request_dict = self._check_stage_labels(run, requests.request_id)
        joined = self._join_seq_dict(run, requests.request_id, in_request_dict, drafts)
        missing_index, index_missing_rows = self._look_up_top_index(run, table, requests, joined)
        stats, usable = self._count_usable(run, table.rows, requests.count, joined, missing_index)
        sel = _drop_unusable(joined, usable, stats["dropped"]["total"], requests.order)
        seq = self._stacked_sequences(run, joined.request_id)
        stats.update(items_per_label=_items_per_label(joined.cands), top_index_missing_rows=index_missing_rows)
        try:
            stats["degenerate"] = check_degenerate(f"day {day} ({self.source.uri})", joined.cands, index_labels,
                                                   self.max_no_gt_fraction)
        except DataError as exc:
            run.problems.add_error(exc)
        run.problems.raise_if_any()
        assert seq is not None
        return RecFlowDay(day=day, request_id=joined.request_id, request_timestamp=requests.timestamp[sel],
                          user=requests.user[sel], seq=seq, candidates=joined.cands, stats=stats)

    def _start_day_read(self, day: str, labels: tuple[str, ...], index_labels: tuple[str, ...], limit: int,
                        collect: bool) -> "_DayRead":
        """The state :meth:`read_day` hands from phase to phase: the day's files, the id counts
        and the problems found so far."""
        files = self.day_files(day)
        counts = self.id_counts()
        return _DayRead(day=day, labels=labels, index_labels=index_labels, limit=limit, files=files, counts=counts,
                        where_all_stage=self.source.describe(files["all_stage"]),
                        where_request_dict=self.source.describe(files["request_id_dict"]),
                        where_seq_dict=self.source.describe(files["seq_effective_50_dict"]),
                        rows_checked=max(int(limit), CHECKED_ROWS), problems=_Problems(collect))

    def _all_stage_after_request_dict(self, run: "_DayRead",
                                      inputs: "DayInputs | Future[DayInputs]") -> AllStageDay | None:
        """Unpickle request_id_dict first (while all_stage may still be read in a helper
        thread), keeping its problems aside: the problems of all_stage are reported first, and
        end the day unless collecting. Returns all_stage (None: unreadable)."""
        run.request_dict, run.request_keys = self._load_checked(run.files["request_id_dict"],
                                                                run.request_dict_problems)
        got = self._resolve(inputs, run.day)
        run.problems.extend(got.problems)
        run.problems.stop()
        return got.all_stage

    def _usable_all_stage(self, run: "_DayRead", table: AllStageDay | None) -> AllStageDay:
        """The end of the input checks, once the day identity is checked: its problems, then
        request_id_dict's, each end the day unless collecting. Without a usable all_stage
        (collect only) the pickles are checked alone and every problem is raised; a table
        fetched without an index column needed is an error."""
        run.problems.stop()
        for m, exc in run.request_dict_problems.items:
            run.problems.add(m, exc)
        run.problems.stop()
        if table is None or table.problems:  # collect only: all_stage unusable, the pickles checked alone
            self._check_pickles_alone(run.request_dict, run.request_keys, run.files, run.rows_checked, run.counts,
                                      run.problems)
            run.request_dict = None
            run.problems.raise_if_any()
        assert table is not None and table.request_id is not None and table.first is not None
        lacking = [lb for lb in run.index_labels if lb not in table.flagged]
        if lacking:
            raise DataError(f"day {run.day}: fetched without the index column(s) of {sorted(lacking)}")
        return table

    def _check_stage_labels(self, run: "_DayRead",
                            request_id: np.ndarray) -> tuple[dict[str, Candidates], np.ndarray | None]:
        """Every stage label's ids checked for the requests (output order) that request_id_dict
        holds, the kept labels' first rows drafted; then the dict is dropped, so that it is
        never alive next to seq_effective_50_dict. Returns the drafts and which requests the
        dict holds (None: the dict is unusable)."""
        drafts: dict[str, Candidates] = {}
        in_request_dict = None
        request_dict, run.request_dict = run.request_dict, None  # this phase holds the only reference
        if request_dict is not None:
            in_request_dict = np.isin(request_id, run.request_keys)
            entries: list | None = [request_dict[r] for r in request_id[in_request_dict].tolist()]
            del request_dict
            held = request_id[in_request_dict]
            for label in S.STAGE_LABELS:
                cand, label_problems = self._label(entries, held, label, run.rows_checked, run.where_request_dict,
                                                   run.counts, keep=label in run.labels)
                run.problems.extend(label_problems)
                if cand is not None:
                    drafts[label] = cand
            entries = None  # the dict's arrays are freed here (seq_effective_50_dict reuses the heap)
        run.problems.stop()
        return drafts, in_request_dict

    def _join_seq_dict(self, run: "_DayRead", request_id: np.ndarray, in_request_dict: np.ndarray | None,
                       drafts: dict[str, Candidates]) -> "_Joined":
        """Unpickle seq_effective_50_dict and keep the requests both dicts hold, with the first
        ``limit`` rows of each kept label. When the dicts cannot be joined (collect only), the
        sequences of the requests it holds are checked and every problem is raised."""
        run.seq_dict, run.seq_keys = self._load_checked(run.files["seq_effective_50_dict"], run.problems)
        run.problems.stop()
        if in_request_dict is None or run.seq_dict is None or len(drafts) < len(run.labels):
            if run.seq_dict is not None:
                _, seq_problems = self._sequences(run.seq_dict, request_id[np.isin(request_id, run.seq_keys)],
                                                  run.where_seq_dict, run.counts)
                run.problems.extend(seq_problems)
            run.seq_dict = None
            run.problems.raise_if_any()
        assert in_request_dict is not None and run.seq_dict is not None
        in_seq_dict = np.isin(request_id, run.seq_keys)
        keep = in_request_dict & in_seq_dict
        kept_of_request_dict = in_seq_dict[in_request_dict]
        request_id = request_id[keep]
        cands = {label: _first_rows(_subset(drafts.pop(label), kept_of_request_dict), run.limit)
                 for label in run.labels}
        return _Joined(in_request_dict=in_request_dict, in_seq_dict=in_seq_dict, keep=keep, request_id=request_id,
                       cands=cands)

    def _look_up_top_index(self, run: "_DayRead", table: AllStageDay, requests: "_RequestOrder",
                           joined: "_Joined") -> tuple[np.ndarray, dict[str, int]]:
        """Each index label's stage positions from all_stage, set on its candidates. Returns which
        joined requests have a top-group item without a position (they are unusable) and the
        count of such rows per label."""
        n_joined = joined.request_id.shape[0]
        missing_index = np.zeros(n_joined, dtype=bool)
        index_missing_rows: dict[str, int] = {}
        for label in run.index_labels:
            cand = joined.cands[label]
            idx, found = self._lookup_index(table.flagged[label], requests.count, requests.order[joined.keep], cand,
                                            label)
            cand.top_index = idx
            owner = np.repeat(np.arange(n_joined), cand.lengths)
            missing_index |= np.bincount(owner[~found], minlength=n_joined) > 0
            index_missing_rows[label] = int((~found).sum())
        return missing_index, index_missing_rows

    def _count_usable(self, run: "_DayRead", n_rows: int, n_all: int, joined: "_Joined",
                      missing_index: np.ndarray) -> tuple[dict[str, Any], np.ndarray]:
        """The day's statistics so far and which joined requests are usable. Dropped requests
        are a problem when none is left (raised) or when more than ``max_missing_fraction`` of
        the day is dropped (ends the day unless collecting); a warning otherwise."""
        day = run.day
        n_missing_rd = int((~joined.in_request_dict).sum())
        n_missing_sq = int((~joined.in_seq_dict).sum())
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
                  f"{'/'.join(S.INDEX_COLUMNS[lb] for lb in run.index_labels) or 'index'} in all_stage")
        if n_usable == 0:
            run.problems.add(f"day {day} ({self.source.uri}): zero usable requests out of {n_all} ({detail})")
            run.problems.raise_if_any()
        frac = n_dropped / n_all
        if frac > self.max_missing_fraction:
            run.problems.add(f"day {day} ({self.source.uri}): {n_dropped} of {n_all} requests unusable "
                             f"({frac:.2%} > max_missing_fraction {self.max_missing_fraction:.2%}): {detail}")
            run.problems.stop()
        elif n_dropped:
            msg = f"day {day}: dropped {n_dropped} of {n_all} requests ({frac:.2%}): {detail}"
            warnings.warn(msg, RecFlowWarning, stacklevel=3)  # the line that called read_day
        return stats, final

    def _stacked_sequences(self, run: "_DayRead", request_id: np.ndarray) -> np.ndarray | None:
        """The sequences of the usable requests stacked in request order (None: they have a
        problem, recorded; it ends the day unless collecting); seq_effective_50_dict is dropped
        and the heap trimmed before anything else is built."""
        seq_dict, run.seq_dict = run.seq_dict, None  # this phase holds the only reference
        assert seq_dict is not None
        seq, seq_problems = self._sequences(seq_dict, request_id, run.where_seq_dict, run.counts)
        del seq_dict
        trim()
        run.problems.extend(seq_problems)
        run.problems.stop()
        return seq

    def _check_pickles_alone(self, rd: dict | None, rd_keys: np.ndarray | None, files: dict[str, str],
                             rows_checked: int, counts: dict[str, int], problems: "_Problems") -> None:
        """``lcron validate`` when all_stage is unusable: each pickle checked on its own, for
        every request it holds (structure and ids of every label; sequences)."""
        if rd is not None and rd_keys is not None:
            entries = list(rd.values())
            for label in S.STAGE_LABELS:
                problems.extend(self._label(entries, rd_keys, label, rows_checked,
                                            self.source.describe(files["request_id_dict"]), counts, keep=False)[1])
            del entries
        sd, sd_keys = self._load_checked(files["seq_effective_50_dict"], problems)
        if sd is not None and sd_keys is not None:
            problems.extend(self._sequences(sd, sd_keys, self.source.describe(files["seq_effective_50_dict"]),
                                            counts)[1])

    # -------------------------------------------------------------- helpers
    @staticmethod
    def _draft(entries: list, label: str, limit: int) -> "Candidates | None":
        """First ``limit`` rows of ``label`` for every entry (one list pass, one concatenate),
        or None when the arrays do not combine into int rows of the 8 columns (then the
        slow path names the bad entry). Values are not checked here (see :meth:`_candidate_problems`)."""
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
    def _label(cls, entries: list, req: np.ndarray, label: str, rows: int, where: str, counts: dict[str, int], *,
               keep: bool) -> tuple["Candidates | None", list[str]]:
        """The first ``rows`` stored rows of ``label`` for every entry (``req``: their request
        ids), checked: structure, ids and upload times. ``keep``: return them as Candidates;
        otherwise they are checked a slice of requests at a time and dropped, and the whole
        label is drafted only to word the problem (the same message either way)."""
        if not keep:
            for s in range(0, len(entries), _CHECK_SLICE):
                part = cls._draft(entries[s: s + _CHECK_SLICE], label, rows)
                if part is None or not _rows_in_range(part.rows, counts):
                    return None, cls._label(entries, req, label, rows, where, counts, keep=True)[1]
            return None, []
        cand = cls._draft(entries, label, rows)
        if cand is None:
            return None, [_bad_candidates(entries, req, label, where)]
        problems = cls._candidate_problems(cand, req, label, where, counts)
        return (None if problems else cand), problems

    @staticmethod
    def _candidate_problems(cand: Candidates, req: np.ndarray, label: str, where: str,
                            counts: dict[str, int]) -> list[str]:
        """Every id column and the upload time of ``cand`` (rows of the requests ``req``) checked."""
        rows = cand.rows
        owner_ids = np.repeat(req, cand.lengths)
        found = [range_problem(rows[:, col], where=f"{where}: label {label}", column=name, check="id", id_field=name,
                               id_counts=counts, example_ids=owner_ids)
                 for name, col in S.REQUEST_ID_DICT_ID_COLUMNS.items()]
        found.append(range_problem(rows[:, _UPLOAD_TS], where=f"{where}: label {label}", column="upload_timestamp",
                                   check="timestamp_s", id_field=None, id_counts=counts, example_ids=owner_ids))
        return [p for p in found if p is not None]

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
    def _sequences(sd: dict, req: np.ndarray, where: str,
                   counts: dict[str, int]) -> tuple[np.ndarray | None, list[str]]:
        """The sequences of ``req`` stacked, and their problems (the first sequence of a wrong
        shape or type; otherwise every id column with a bad value on a valid step). A column
        whose whole range (padding included) is already within its vocabulary needs no
        masking: only a column that fails that test is checked step by step."""
        shape = (fields.SEQ_LEN, len(S.SEQ_COLUMNS))
        try:
            seq = np.stack([sd[r] for r in req.tolist()]) if req.size else np.zeros((0, *shape), dtype=np.int64)
            ok = seq.shape[1:] == shape and seq.dtype.kind in "iu"
        except (TypeError, ValueError, IndexError):
            ok = False
        if not ok:
            return None, [_bad_sequence(sd, req, where, shape)]
        seq = seq.astype(np.int64, copy=False)
        valid = ids_of = None
        problems = []
        for name, col in S.SEQ_ID_COLUMNS.items():
            column = seq[:, :, col]
            if column.size == 0 or (int(column.min()) >= 0 and int(column.max()) < counts[name]):
                continue
            if valid is None:
                valid = seq[:, :, S.SEQ_TIME_COLUMN] > 0
                ids_of = np.repeat(req, valid.sum(axis=1))
            p = range_problem(column[valid], where=where, column=name, check="id", id_field=name, id_counts=counts,
                              example_ids=ids_of)
            if p is not None:
                problems.append(p)
        return (None if problems else seq), problems


_UPLOAD_TS = S.REQUEST_ID_DICT_COLUMNS.index("upload_timestamp")


def _rows_in_range(rows: np.ndarray, counts: dict[str, int]) -> bool:
    """Whether every id column of request_id_dict ``rows`` is in its vocabulary and every
    upload time >= 0 (one min and one max per column)."""
    if rows.shape[0] == 0:
        return True
    lo, hi = rows.min(axis=0), rows.max(axis=0)
    return all(lo[col] >= 0 and hi[col] < counts[name] for name, col in S.REQUEST_ID_DICT_ID_COLUMNS.items()) \
        and lo[_UPLOAD_TS] >= 0


def _subset(cand: Candidates, kept: np.ndarray) -> Candidates:
    """The rows of the requests with ``kept`` set (all of them: ``cand`` itself)."""
    if kept.all():
        return cand
    return Candidates(lengths=cand.lengths[kept], stored=cand.stored[kept],
                      rows=cand.rows[np.repeat(kept, cand.lengths)])


def _first_rows(cand: Candidates, limit: int) -> Candidates:
    """``cand`` cut to the first ``limit`` rows of each request (checked rows may be more)."""
    if cand.lengths.size == 0 or int(cand.lengths.max()) <= limit:
        return cand
    within = np.arange(cand.rows.shape[0]) - np.repeat(cand.offsets, cand.lengths)
    return Candidates(lengths=np.minimum(cand.lengths, limit), stored=cand.stored, rows=cand.rows[within < limit])


def _label_arguments(labels: Iterable[str],
                     index_labels: Iterable[str] | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """:meth:`RecFlowReader.read_day`'s labels and index labels as tuples (index labels by
    default: those of ``labels`` with an index column), refused before any file is read."""
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
    return labels, index_labels


def _drop_unusable(joined: _Joined, usable: np.ndarray, dropped: int, order: np.ndarray) -> np.ndarray:
    """Cut ``joined`` (in place) to its ``usable`` requests when the day dropped any
    (``dropped``: requests of all_stage dropped in all). Returns the distinct request of each
    usable request (``order``: of each output request), to pick their time and user columns."""
    if dropped:
        for cand in joined.cands.values():
            row_keep = np.repeat(usable, cand.lengths)
            cand.rows = cand.rows[row_keep]
            if cand.top_index is not None:
                cand.top_index = cand.top_index[row_keep]
            cand.lengths, cand.stored = cand.lengths[usable], cand.stored[usable]
        joined.request_id = joined.request_id[usable]
    return order[np.nonzero(joined.keep)[0][usable]]


def _items_per_label(cands: dict[str, Candidates]) -> dict[str, dict[str, Any]]:
    """The day's statistics of each label's candidates: items stored and kept per request."""
    return {lb: {"mean": float(c.stored.mean()), "max": int(c.stored.max(initial=0)),
                 "requests_with_items": int((c.stored > 0).sum()), "kept_mean": float(c.lengths.mean())}
            for lb, c in cands.items()}


def _bad_candidates(entries: list, req: np.ndarray, label: str, where: str) -> str:
    """Slow path, only after the vectorised path failed: what is wrong with the first bad entry."""
    width = len(S.REQUEST_ID_DICT_COLUMNS)
    for r, e in zip(req.tolist(), entries):
        if not isinstance(e, dict):
            return f"{where}: request_id {r}: expected a dict stage_label -> array, got {type(e).__name__}"
        if label not in e:
            continue
        a = np.asarray(e[label])
        if a.ndim != 2 or a.shape[1] != width:
            return (f"{where}: request_id {r}, label {label}: array of shape {list(a.shape)}; "
                    f"expected [n, {width}] ({', '.join(S.REQUEST_ID_DICT_COLUMNS)})")
        if a.dtype.kind not in "iu":
            return f"{where}: request_id {r}, label {label}: dtype {a.dtype}; expected integers"
    return f"{where}: label {label}: candidate arrays cannot be combined (mixed shapes or types)"


def _bad_sequence(sd: dict, req: np.ndarray, where: str, shape: tuple[int, int]) -> str:
    for r in req.tolist():
        a = np.asarray(sd[r])
        if a.shape != shape:
            return f"{where}: request_id {r}: sequence of shape {list(a.shape)}; expected {list(shape)}"
        if a.dtype.kind not in "iu":
            return f"{where}: request_id {r}: sequence dtype {a.dtype}; expected integers"
    return f"{where}: sequences cannot be stacked (mixed shapes or types)"


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
