"""Bounded-memory preprocessing (issue 19 item 3): the same shard bytes as before, the
read-ahead decision, the column-by-column all_stage reader and its error precedence."""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from lcron.data.all_stage import group_requests
from lcron.data.recflow import RecFlowReader
from lcron.data.shards import _day_input_bytes, _overlap_next, preprocess
from lcron.data.source import LocalSource
from lcron.data.synthetic import generate
from lcron.errors import ConfigError, DataError
from lcron.memtrim import trim

HAND_DAY = "2024-01-15"

# sha256 over (relative path, bytes) of every .npy of the shard set, recorded with the code
# before bounded-memory preprocessing (main at 4877943: whole all_stage table, both pickles'
# bytes and dicts held together) on the synthetic set of _small_set. Any change to a shard
# byte changes it.
# Re-recorded on 2026-12-05 in a freshly installed environment (numpy 2.4.6, pyarrow 26.0.1,
# pandas 3.1.1, Python 3.11.7), where the code they were recorded with (4877943), the commit that recorded them (c51b026) and
# every later one give these digests: the bytes moved with the installed packages, not the code.
RECORDED = {
    2: "a939ce7b64da9cf871b7405a59906d5d61a7b21c7e691856fa33def096b89864",
    3: "c1c39c9c5ee1d564c805159f683c0a3f887ecf3a2420d7fd3f9eddca00353335",
}


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rf") / "recflow"
    generate(root, num_days=3, requests_per_day=300, users=100, items=1000, seed=3, progress=False)
    return root


def _digest(out: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(out.glob("**/*.npy")):
        h.update(str(p.relative_to(out)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


@pytest.mark.parametrize("stages", [2, 3])
def test_shards_byte_identical_to_the_previous_reader(small_set, tmp_path, stages):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        preprocess(small_set, tmp_path / "s", stages, progress=False)
    assert _digest(tmp_path / "s") == RECORDED[stages]


def test_read_ahead_or_not_gives_the_same_shards(small_set, tmp_path):
    """Budget 0: no day read ahead and no item reduction kept (the item table is read back)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        preprocess(small_set, tmp_path / "ahead", 2, progress=False)
        preprocess(small_set, tmp_path / "serial", 2, progress=False, prefetch_budget_mb=0)
    assert _digest(tmp_path / "ahead") == _digest(tmp_path / "serial") == RECORDED[2]


def test_overlap_decision_follows_the_day_size(small_set):
    reader = RecFlowReader(small_set)
    day = reader.available_days[1]
    size = sum((small_set / rel).stat().st_size for rel in reader.day_files(day).values())
    assert _day_input_bytes(reader, day) == size
    assert _overlap_next(reader, day, size)
    assert not _overlap_next(reader, day, size - 1)
    assert not _overlap_next(reader, day, 0)


def test_day_size_of_a_day_with_a_missing_file_is_zero(small_set, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(small_set, root)
    reader = RecFlowReader(root)
    day = reader.available_days[0]
    (root / reader.day_files(day)["request_id_dict"]).unlink()
    assert _day_input_bytes(reader, day) == 0  # the read itself reports the missing file


@pytest.mark.parametrize("bad", [-1, 1.5, True, "256"])
def test_prefetch_budget_must_be_a_non_negative_integer(small_set, tmp_path, bad):
    with pytest.raises(ConfigError, match="prefetch_budget_mb must be an integer >= 0"):
        preprocess(small_set, tmp_path / "s", 2, progress=False, prefetch_budget_mb=bad)


def test_group_requests_contiguous_and_scattered_agree_with_unique():
    rid = np.array([7, 7, 3, 3, 3, 9, 5, 5])
    g = group_requests(rid)
    assert g.inverse is None and g.ids.tolist() == [7, 3, 9, 5] and g.first.tolist() == [0, 2, 5, 6]
    rows = np.arange(rid.shape[0])
    assert g.of_rows(rows).tolist() == [0, 0, 1, 1, 1, 2, 3, 3]
    assert g.broadcast(np.array([10, 20, 30, 40])).tolist() == [10, 10, 20, 20, 20, 30, 40, 40]
    scattered = np.array([7, 3, 7, 9, 3])
    g = group_requests(scattered)
    uniq, first, inv = np.unique(scattered, return_index=True, return_inverse=True)
    assert g.lengths is None and g.ids.tolist() == uniq.tolist() and g.first.tolist() == first.tolist()
    assert g.of_rows(np.array([0, 2, 4])).tolist() == inv[[0, 2, 4]].tolist()


def test_value_error_is_reported_before_a_non_constant_user_column(handmade, tmp_path):
    """As when the whole table was read first: value checks (schema order) come before the
    constancy of the user columns, although age is read before video_id."""
    rows_a = handmade.all_stage.index[handmade.all_stage["request_id"] == 501]
    handmade.all_stage.loc[rows_a[4], "age"] = 5
    handmade.all_stage.loc[3, "video_id"] = -1
    with pytest.raises(DataError, match="column video_id: 1 negative value"):
        RecFlowReader(handmade.write(tmp_path)).read_day(HAND_DAY)


def test_null_error_is_reported_before_a_value_error_of_an_earlier_column(handmade, tmp_path):
    handmade.all_stage.loc[3, "user_id"] = -1
    table = handmade.table()
    i = table.schema.get_field_index("rank_pos")
    mask = np.zeros(table.num_rows, bool)
    mask[2] = True
    table = table.set_column(i, "rank_pos", pa.array(table.column(i).to_numpy(), type=pa.int64(), mask=mask))
    with pytest.raises(DataError, match=r"column rank_pos has 1 null/NaN value\(s\)"):
        RecFlowReader(handmade.write(tmp_path, all_stage=table)).read_day(HAND_DAY)


def test_several_record_batches_read_as_one_column(handmade, tmp_path):
    """A Feather file of many small record batches reads back as the single-batch one."""
    import pyarrow.feather as feather

    one = RecFlowReader(handmade.write(tmp_path / "one")).read_day(HAND_DAY)
    root = handmade.write(tmp_path / "many")
    feather.write_feather(handmade.table(), root / "all_stage" / f"{HAND_DAY}.feather", chunksize=3)
    many = RecFlowReader(root).read_day(HAND_DAY)
    assert np.array_equal(one.request_id, many.request_id) and np.array_equal(one.user, many.user)
    for lb, c in one.candidates.items():
        assert np.array_equal(c.top_index if c.top_index is not None else c.rows,
                              many.candidates[lb].top_index if c.top_index is not None else many.candidates[lb].rows)


def test_open_binary_streams_the_file_or_the_kept_bytes(tmp_path):
    (tmp_path / "all_stage").mkdir()
    (tmp_path / "x.bin").write_bytes(b"abc")
    src = LocalSource(tmp_path)
    with src.open_binary("x.bin") as fh:
        assert fh.read() == b"abc"
    src.fingerprint("x.bin", keep=True)
    (tmp_path / "x.bin").write_bytes(b"changed")
    with src.open_binary("x.bin") as fh:  # the bytes hashed, not a second read
        assert fh.read() == b"abc"


def test_trim_runs_on_linux():
    import sys

    assert trim() is sys.platform.startswith("linux")


def test_memory_bound_is_linear_in_the_largest_day():
    from lcron.data.shards import MEMORY_BOUND_BASE_MB, MEMORY_BOUND_KB_PER_REQUEST, memory_bound_mb

    assert memory_bound_mb(0) == MEMORY_BOUND_BASE_MB
    assert memory_bound_mb(250_000) == pytest.approx(MEMORY_BOUND_BASE_MB + MEMORY_BOUND_KB_PER_REQUEST * 250_000 / 1024)


def test_big_days_wait_for_the_previous_write(small_set, tmp_path, monkeypatch):
    """With every day above the read-ahead budget, a day is parsed only once the previous
    day is completely written (its manifest, written last, exists): one big day in memory.
    Small days are parsed while the previous one is still being written. Each write is held
    back (up to 1 s) so that a parse which does not wait would see no manifest."""
    import threading

    from lcron.data import shards as sh

    real, real_write = sh._build_day, sh._write_and_reduce
    state: dict = {"out": None, "seen": []}
    hold = threading.Event()

    def slow_write(*args):
        hold.wait(1.0)
        return real_write(*args)

    def spy(reader, day, *args, **kwargs):
        days = reader.available_days
        i = days.index(day)
        state["seen"].append(i == 0 or (state["out"] / "days" / days[i - 1] / "manifest.json").is_file())
        return real(reader, day, *args, **kwargs)

    monkeypatch.setattr(sh, "_build_day", spy)
    monkeypatch.setattr(sh, "_write_and_reduce", slow_write)
    for name, budget, expected in (("big", 0, [True, True, True]), ("small", 256, [True, False, False])):
        state.update(out=tmp_path / name, seen=[])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            preprocess(small_set, tmp_path / name, 2, progress=False, prefetch_budget_mb=budget)
        assert state["seen"] == expected, name
        assert _digest(tmp_path / name) == RECORDED[2]


def test_gcs_download_cache_is_made_once_across_threads():
    from concurrent.futures import ThreadPoolExecutor

    from lcron.data.source import GCSSource

    class _Client:
        def bucket(self, name):
            return object()

    src = GCSSource("gs://bucket/prefix", client=_Client())
    try:
        with ThreadPoolExecutor(8) as pool:
            folders = set(pool.map(lambda _: src._cache_folder("lcron-gcs-"), range(32)))
        assert len(folders) == 1 and next(iter(folders)).is_dir()
    finally:
        src.close()
    assert not next(iter(folders)).exists()
