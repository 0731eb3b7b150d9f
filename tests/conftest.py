"""Shared fixtures.

* ``tiny_recflow``: a small synthetic RecFlow folder written by the generator
  (3 days x 60 requests, 100 users, 400 items), session-scoped.
* ``tiny_shards_2`` / ``tiny_shards_3``: ShardSets preprocessed from it, session-scoped.
* ``handmade``: a fresh :class:`HandMade` data set written BY HAND (pandas/pyarrow/pickle
  exactly per RECFLOW_FORMAT.md, not by the generator), whose shard values the data tests
  assert exactly. Tests may edit its tables before calling ``write``.
* ``other_tz``: the process time zone set to America/Los_Angeles for the test (restored
  after), to prove that no result depends on the machine's zone.
"""

from __future__ import annotations

import copy
import datetime as dt
import pickle
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.feather as feather
import pytest

UTC8 = dt.timezone(dt.timedelta(hours=8))

# ------------------------------------------------------------------ hand-made data
HAND_DAY = "2024-01-15"  # a Monday
HAND_ID_CNT = {  # published spellings for two keys
    "user_id": 10, "device_id": 10, "age": 8, "gender": 3, "province": 40,
    "photo_id": 100, "author_id": 50, "category_level_one": 10, " category_level_two": 30, "upload_type": 5,
}
CANONICAL_ID_CNT = {"user_id": 10, "device_id": 10, "age": 8, "gender": 3, "province": 40, "video_id": 100,
                    "author_id": 50, "category_level_two": 30, "category_level_one": 10, "upload_type": 5}
# Request A: 2024-01-15 00:30:15 in UTC+8 (still Sunday 16:30 in UTC, Sunday 08:30 in Los Angeles).
TS_A_MS = int(dt.datetime(2024, 1, 15, 0, 30, 15, tzinfo=UTC8).timestamp() * 1000)
# Request B: 2024-01-15 23:59:59 in UTC+8; later than A but its rows come first in all_stage.
TS_B_MS = int(dt.datetime(2024, 1, 15, 23, 59, 59, tzinfo=UTC8).timestamp() * 1000)
# Uploads: 2024-01-01 20:00:00 UTC+8 (a Monday) plus v minutes for video v.
UPLOAD_BASE_S = int(dt.datetime(2024, 1, 1, 20, 0, 0, tzinfo=UTC8).timestamp())


def item_row(video: int, author: int | None = None) -> list[int]:
    """A request_id_dict row [video, author, duration, cat2, upload_type, upload_ts, cat1, effective_view]."""
    return [video, video % 50 if author is None else author, 1000 * video, video % 30, video % 5,
            UPLOAD_BASE_S + 60 * video, video % 10, 0]


def rows(videos: list[int], **authors: int) -> np.ndarray:
    return np.array([item_row(v, authors.get(f"v{v}")) for v in videos], dtype=np.int64).reshape(-1, 8)


def seq_rows(videos: list[int], *, request_id: int) -> np.ndarray:
    """[50, 10] left-padded; valid rows last, time_ms > 0."""
    out = np.zeros((50, 10), dtype=np.int64)
    for k, v in enumerate(videos):
        step = 50 - len(videos) + k
        out[step] = [v, v % 50, v % 30, v % 10, v % 5, UPLOAD_BASE_S + 60 * v, 1000 * v,
                     TS_A_MS - 3_600_000 * (len(videos) - k), 5000, request_id + 10_000]
    return out


@dataclass
class HandMade:
    """Two requests written by hand (see tests/data/test_shards.py for the expected shards).

    Request A (request_id 501, Python int key): rank_pos stores 12 rows in the order
    videos 15, 10, 11, ..., 14, 16, ..., 21 with rank_index = video - 10 (so only the first
    10 stored rows are used and they are not in index order); rank_neg 30, 31, 32;
    coarse_neg an empty [0, 8] array; prerank_neg absent; rerank_pos 10, 11 (rerank_index
    1, 0); rerank_neg 12; realshow 10. Sequence: 3 valid steps (videos 0, 71, 72).

    Request B (request_id 502, numpy int64 key, all user ids 0): rank_pos 40, 41
    (rank_index 0 and 9); rank_neg empty; coarse_neg 32 (by author 7, unlike A's 32);
    prerank_neg 60 .. 70 (11 rows); rerank_pos 40 (rerank_index 0). Empty sequence.
    """

    DAY: ClassVar[str] = HAND_DAY
    TS_A_MS: ClassVar[int] = TS_A_MS
    TS_B_MS: ClassVar[int] = TS_B_MS
    UPLOAD_BASE_S: ClassVar[int] = UPLOAD_BASE_S
    CANONICAL_ID_CNT: ClassVar[dict[str, int]] = CANONICAL_ID_CNT

    request_id_dict: dict[Any, dict[str, np.ndarray]]
    seq_dict: dict[Any, np.ndarray]
    id_cnt: dict[str, int]
    all_stage: pd.DataFrame = field(default_factory=pd.DataFrame)

    def write(self, root: Path, days: tuple[str, ...] = (HAND_DAY,), *, all_stage: pa.Table | None = None) -> Path:
        """Write the RecFlow layout: the same requests on every day in ``days``, moved to that
        day (:meth:`for_day`), so that no day is a copy of another."""
        table = all_stage if all_stage is not None else self.table()
        for day in days:
            (root / "all_stage").mkdir(parents=True, exist_ok=True)
            feather.write_feather(self.for_day(table, day), root / "all_stage" / f"{day}.feather")
            for folder, obj in (("request_id_dict", self.request_id_dict), ("seq_effective_50_dict", self.seq_dict)):
                (root / folder).mkdir(parents=True, exist_ok=True)
                (root / folder / f"{day}.pkl").write_bytes(pickle.dumps(self.for_day(obj, day), protocol=4))
        (root / "others").mkdir(parents=True, exist_ok=True)
        (root / "others" / "id_cnt.pkl").write_bytes(pickle.dumps(self.id_cnt))
        return root

    @staticmethod
    def for_day(obj: Any, day: str) -> Any:
        """``obj`` (the all_stage table or a pickled dict) moved from HAND_DAY to ``day``, k days
        later: request ids + 1000 k (dict keys keep their type), request times + k days.
        HAND_DAY itself is returned unchanged."""
        k = (dt.date.fromisoformat(day) - dt.date.fromisoformat(HAND_DAY)).days
        if k == 0:
            return obj
        if isinstance(obj, dict):
            return {type(r)(r + 1000 * k) if isinstance(r, (int, np.integer)) else r: v for r, v in obj.items()}
        for name, shift in (("request_id", 1000 * k), ("request_timestamp", 86_400_000 * k)):
            if name in obj.column_names and pa.types.is_integer(obj.schema.field(name).type):
                i = obj.schema.get_field_index(name)
                obj = obj.set_column(i, name, pc.add(obj.column(i), pa.scalar(shift, obj.schema.field(name).type)))
        return obj

    def table(self) -> pa.Table:
        """all_stage as Arrow with mixed integer widths and float/null feedback columns."""
        df = self.all_stage
        widths = {"age": pa.int8(), "gender": pa.uint8(), "province": pa.int16(), "rank_index": pa.int32(),
                  "rerank_index": pa.int32(), "realshow": pa.int8(), "upload_type": pa.uint16()}
        arrays, names = [], []
        for name in df.columns:
            col = df[name]
            if name in FEEDBACK:
                arrays.append(pa.array(col.to_numpy(dtype=float), type=pa.float64(), from_pandas=True))
            else:
                arrays.append(pa.array(col.to_numpy(dtype=np.int64), type=widths.get(name, pa.int64())))
            names.append(name)
        return pa.Table.from_arrays(arrays, names=names)


FEEDBACK = ("playing_time", "effective_view", "long_view", "like", "follow", "forward", "comment")
LABELS = ("realshow", "rerank_pos", "rerank_neg", "rank_pos", "rank_neg", "coarse_neg", "prerank_neg")


def _all_stage(requests: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per (request, stored item) like RecFlow: flags from the dict's labels."""
    out = []
    for rq in requests:
        items: dict[int, dict[str, Any]] = {}
        for label, arr in rq["labels"].items():
            for r in arr:
                v = int(r[0])
                d = items.setdefault(v, {"row": r, **{lb: 0 for lb in LABELS}})
                d[label] = 1
                if label in ("rerank_pos", "rerank_neg"):
                    d["rank_pos"] = 1  # it survived the rank stage
        for v, d in items.items():
            r = d["row"]
            row = {"request_id": rq["request_id"], "request_timestamp": rq["ts"], **rq["user"],
                   "video_id": v, "author_id": int(r[1]), "category_level_one": int(r[6]),
                   "category_level_two": int(r[3]), "upload_type": int(r[4]), "upload_timestamp": int(r[5]),
                   "duration": int(r[2]), **{lb: d[lb] for lb in LABELS},
                   "rank_index": rq["rank_index"].get(v, 0), "rerank_index": rq["rerank_index"].get(v, 0)}
            for f in FEEDBACK:
                row[f] = 1.0 if d["realshow"] else np.nan
            out.append(row)
    return pd.DataFrame(out)


def make_handmade() -> HandMade:
    a_rank_pos = [15, 10, 11, 12, 13, 14, 16, 17, 18, 19, 20, 21]
    req_a = {"request_id": 501, "ts": TS_A_MS,
             "user": {"user_id": 3, "device_id": 4, "age": 2, "gender": 1, "province": 7},
             "labels": {"rank_pos": rows(a_rank_pos), "rank_neg": rows([30, 31, 32]),
                        "coarse_neg": np.zeros((0, 8), dtype=np.int64), "rerank_pos": rows([10, 11]),
                        "rerank_neg": rows([12]), "realshow": rows([10])},
             "rank_index": {v: v - 10 for v in range(10, 22)}, "rerank_index": {10: 1, 11: 0}}
    req_b = {"request_id": 502, "ts": TS_B_MS,
             "user": {"user_id": 0, "device_id": 0, "age": 0, "gender": 0, "province": 0},
             "labels": {"rank_pos": rows([40, 41]), "rank_neg": np.zeros((0, 8), dtype=np.int64),
                        "coarse_neg": rows([32], v32=7), "prerank_neg": rows(list(range(60, 71))),
                        "rerank_pos": rows([40])},
             "rank_index": {40: 0, 41: 9}, "rerank_index": {40: 0}}
    # B's rows first in the file, A's after (the shards order requests by time: A, B).
    df = _all_stage([req_b, req_a])
    rid = {501: req_a["labels"], np.int64(502): req_b["labels"]}
    seq = {501: seq_rows([0, 71, 72], request_id=501), np.int64(502): np.zeros((50, 10), dtype=np.int64)}
    return HandMade(request_id_dict=rid, seq_dict=seq, id_cnt=dict(HAND_ID_CNT), all_stage=df)


@pytest.fixture
def handmade() -> HandMade:
    return copy.deepcopy(make_handmade())


@pytest.fixture
def other_tz(monkeypatch: pytest.MonkeyPatch):
    """Run the test with the process in America/Los_Angeles (UTC-8), then restore."""
    monkeypatch.setenv("TZ", "America/Los_Angeles")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


# ------------------------------------------------------------------ generated data
@pytest.fixture(scope="session")
def tiny_recflow(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small generated RecFlow folder: 3 days x 60 requests, 100 users, 400 items."""
    from lcron.data.synthetic import generate

    root = tmp_path_factory.mktemp("tiny_recflow")
    return generate(root, num_days=3, requests_per_day=60, users=100, items=400, seed=0, progress=False)


@pytest.fixture(scope="session")
def tiny_shards_2(tiny_recflow: Path, tmp_path_factory: pytest.TempPathFactory):
    from lcron.data.shards import preprocess

    return preprocess(tiny_recflow, tmp_path_factory.mktemp("tiny_shards") / "two_stage", 2, progress=False)


@pytest.fixture(scope="session")
def tiny_shards_3(tiny_recflow: Path, tmp_path_factory: pytest.TempPathFactory):
    from lcron.data.shards import preprocess

    return preprocess(tiny_recflow, tmp_path_factory.mktemp("tiny_shards") / "three_stage", 3, progress=False)



@pytest.fixture(scope="session")
def free_port():
    """A function that returns a free TCP port on loopback (for the servers tests start)."""
    def pick() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]
    return pick
