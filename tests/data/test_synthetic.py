"""The synthetic generator writes the RecFlow layout exactly (read back with pyarrow and
pickle directly, not with the project's reader) and its labels are learnable."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.feather as feather
import pytest

from lcron.data import synthetic
from lcron.data.synthetic import (
    MANIFEST_NAME,
    SyntheticConfig,
    generate,
    generate_from_config,
)
from lcron.errors import ConfigError, OutputExistsError

LABELS = ("realshow", "rerank_pos", "rerank_neg", "rank_pos", "rank_neg", "coarse_neg", "prerank_neg")
NEGATIVE_LABELS = ("rerank_neg", "rank_neg", "coarse_neg", "prerank_neg")
REQUIRED = ("request_id", "request_timestamp", "user_id", "device_id", "age", "gender", "province",
            "video_id", "author_id", "category_level_one", "category_level_two", "upload_type",
            "upload_timestamp", "duration", "realshow", "rerank_pos", "rerank_neg", "rank_pos", "rank_neg",
            "coarse_neg", "prerank_neg", "rank_index", "rerank_index")
FEEDBACK = ("playing_time", "effective_view", "long_view", "like", "follow", "forward", "comment")
DICT_COLS = ("video_id", "author_id", "duration", "category_level_two", "upload_type", "upload_timestamp",
             "category_level_one", "effective_view")
DAYS = ("2024-01-13", "2024-01-14")
# Local (UTC+8) midnight of 2024-01-13 = 2024-01-12T16:00:00Z; computed by hand:
# 2024-01-01T00:00Z = 1704067200 s, + 11 days (950400 s) + 16 h (57600 s) = 1705075200 s.
DAY_START_MS = {"2024-01-13": 1_705_075_200_000, "2024-01-14": 1_705_161_600_000}
SIZES = dict(num_days=2, requests_per_day=150, users=40, items=600, seed=3)
# The vocabulary sizes those arguments give (authors = items // 10; the rest are defaults).
EXPECTED_COUNTS = {"user_id": 40, "device_id": 40, "age": 8, "gender": 3, "province": 34, "photo_id": 600,
                   "author_id": 60, "category_level_one": 24, " category_level_two": 120, "upload_type": 8}


def _load(path: Path):
    with open(path, "rb") as fh:
        return pickle.load(fh)


@pytest.fixture(scope="module", params=[None, 40], ids=["one-part", "parts-of-40"])
def root(request, tmp_path_factory) -> Path:
    """The data set, written as usual and with its days simulated in parts of 40 requests
    (as days above synthetic.DAY_PART_REQUESTS are): every check below holds for both."""
    with pytest.MonkeyPatch.context() as mp:
        if request.param:
            mp.setattr(synthetic, "DAY_PART_REQUESTS", request.param)
        return generate(tmp_path_factory.mktemp("syn") / "recflow", progress=False, **SIZES)


@pytest.fixture(scope="module")
def days(root):
    """Per day: (all_stage table, request dict, seq dict)."""
    return {d: (feather.read_table(root / "all_stage" / f"{d}.feather"),
                _load(root / "request_id_dict" / f"{d}.pkl"),
                _load(root / "seq_effective_50_dict" / f"{d}.pkl")) for d in DAYS}


def _dict_frame(request_dict) -> pd.DataFrame:
    """The request dict as a long table: one row per (request, label, stored position)."""
    arrays, rids, labels, pos = [], [], [], []
    for rid, entry in request_dict.items():
        for label, arr in entry.items():
            arrays.append(arr)
            rids.append(np.full(len(arr), rid))
            labels.append(np.full(len(arr), label))
            pos.append(np.arange(len(arr)))
    frame = pd.DataFrame(np.concatenate(arrays), columns=list(DICT_COLS))
    frame["request_id"], frame["label"] = np.concatenate(rids), np.concatenate(labels)
    frame["pos"] = np.concatenate(pos)
    return frame


@pytest.fixture(scope="module")
def joined(days):
    """Per day: the dict's long table joined with the day's all_stage rows (suffix _row on clashes)."""
    return {d: _dict_frame(request_dict).merge(table.to_pandas(), on=["request_id", "video_id"], how="left",
                                               suffixes=("", "_row"), validate="many_to_one")
            for d, (table, request_dict, _) in days.items()}


# ------------------------------------------------------------------------ layout
def test_folder_layout(root):
    assert sorted(p.name for p in (root / "all_stage").iterdir()) == [f"{d}.feather" for d in DAYS]
    assert sorted(p.name for p in (root / "request_id_dict").iterdir()) == [f"{d}.pkl" for d in DAYS]
    assert sorted(p.name for p in (root / "seq_effective_50_dict").iterdir()) == [f"{d}.pkl" for d in DAYS]
    assert sorted(p.name for p in (root / "realshow").iterdir()) == [f"{d}.feather" for d in DAYS]
    assert (root / "others" / "id_cnt.pkl").is_file()
    assert (root / "others" / "realshow_video_info.feather").is_file()
    assert (root / MANIFEST_NAME).is_file()


def test_all_stage_columns_and_dtypes(days):
    for table, _, _ in days.values():
        names = table.schema.names
        assert set(REQUIRED + FEEDBACK) == set(names)
        for col in REQUIRED + FEEDBACK:
            assert table.schema.field(col).type == pa.int64(), col
        for col in REQUIRED:
            assert table[col].null_count == 0, col
        realshow = table["realshow"].to_numpy()
        for col in FEEDBACK:  # filled on realshow rows, null elsewhere
            valid = table[col].is_valid().to_numpy(zero_copy_only=False)
            np.testing.assert_array_equal(valid, realshow == 1, err_msg=col)


def test_units_and_request_columns(days):
    for day, (table, _, _) in days.items():
        t = table.to_pandas()
        start = DAY_START_MS[day]
        assert t.request_timestamp.between(start, start + 86_400_000 - 1).all()
        # upload times are seconds (about 1.7e9), 30-120 days before the first day
        first_s = DAY_START_MS[DAYS[0]] // 1000
        assert t.upload_timestamp.between(first_s - 120 * 86_400, first_s - 30 * 86_400).all()
        assert t.duration.between(3_000, 600_000).all()  # ms
        # the user-level columns are constant within a request
        per_request = t.groupby("request_id")[["request_timestamp", "user_id", "device_id", "age", "gender",
                                               "province"]].nunique()
        assert (per_request == 1).all().all()
        assert not t.duplicated(["request_id", "video_id"]).any()


def test_sizes_and_request_ids(days):
    ids = []
    for table, request_dict, seq_dict in days.values():
        rids = np.unique(table["request_id"].to_numpy())
        assert len(rids) == SIZES["requests_per_day"]
        assert set(request_dict) == set(seq_dict) == set(rids.tolist())
        assert all(type(k) is int for k in request_dict)
        ids.append(rids)
    assert len(np.intersect1d(ids[0], ids[1])) == 0  # unique across days


def test_id_cnt_published_spellings_and_ranges(root, days):
    counts = _load(root / "others" / "id_cnt.pkl")
    assert counts == EXPECTED_COUNTS
    canonical = {("video_id" if k == "photo_id" else k.strip()): v for k, v in counts.items()}
    for table, request_dict, seq_dict in days.values():
        for col, n in canonical.items():
            values = table[col].to_numpy()
            assert values.min() >= 0 and values.max() < n, col
        frame = _dict_frame(request_dict)
        for col in ("video_id", "author_id", "category_level_two", "upload_type", "category_level_one"):
            assert frame[col].between(0, canonical[col] - 1).all(), col
        seq = np.stack(list(seq_dict.values()))
        for j, col in enumerate(("video_id", "author_id", "category_level_two", "category_level_one", "upload_type")):
            assert seq[:, :, j].min() >= 0 and seq[:, :, j].max() < canonical[col], col


def test_canonical_spellings(tmp_path):
    out = generate(tmp_path / "c", num_days=1, requests_per_day=5, users=5, items=300,
                   published_spellings=False, progress=False)
    counts = _load(out / "others" / "id_cnt.pkl")
    assert set(counts) == {"user_id", "device_id", "age", "gender", "province", "video_id", "author_id",
                           "category_level_one", "category_level_two", "upload_type"}
    assert counts["video_id"] == 300 and counts["author_id"] == 30


# ---------------------------------------------------------------- request_id_dict
def test_request_dict_arrays(days):
    for _, request_dict, _ in days.values():
        for entry in request_dict.values():
            assert set(entry) <= set(LABELS)
            for arr in entry.values():
                assert isinstance(arr, np.ndarray) and arr.dtype == np.int64
                assert arr.ndim == 2 and arr.shape[1] == 8


def test_all_stage_rows_are_exactly_the_stored_items(days, joined):
    for day, (table, request_dict, _) in days.items():
        j = joined[day]
        assert len(j.drop_duplicates(["request_id", "video_id"])) == table.num_rows
        assert j.request_timestamp.notna().all()
        for col in ("author_id", "duration", "category_level_two", "upload_type", "upload_timestamp",
                    "category_level_one"):
            np.testing.assert_array_equal(j[col], j[f"{col}_row"], err_msg=col)
        # each stored item carries its label's flag; column 7 is the row's effective_view (0 if not shown)
        for label in LABELS:
            assert (j.loc[j.label == label, label] == 1).all(), label
        np.testing.assert_array_equal(j.effective_view, j.effective_view_row.fillna(0))
        assert j.effective_view[j.realshow == 1].mean() > 0.2


def test_label_list_sizes(days):
    sizes = pd.DataFrame([{label: len(entry.get(label, ())) for label in LABELS}
                          for _, request_dict, _ in days.values() for entry in request_dict.values()])
    for label in NEGATIVE_LABELS + ("rank_pos",):
        assert (sizes[label] > 10).mean() > 0.9, label       # the first-10 rule matters
        assert sizes[label].max() <= 20
    assert sizes.rerank_pos.max() == 10 and (sizes.rerank_pos == 10).mean() > 0.9
    assert sizes.realshow.between(0, 6).all() and sizes.realshow.mean() > 2
    short = (sizes[list(NEGATIVE_LABELS + ("rank_pos",))] < 10).any(axis=1)
    assert 0 < short.mean() < 0.15                              # a few percent of short requests
    assert (sizes.sum(axis=1) > 0).all()


def test_short_lists_come_in_both_forms(tmp_path):
    cfg = SyntheticConfig(num_days=1, requests_per_day=60, users=10, items=300, seed=1, short_request_rate=0.5)
    request_dict = _load(generate_from_config(tmp_path / "s", cfg, progress=False)
                         / "request_id_dict" / "2024-01-13.pkl")
    missing = sum(label not in entry for entry in request_dict.values() for label in LABELS)
    empty = sum(len(arr) == 0 for entry in request_dict.values() for arr in entry.values())
    partial = sum(0 < len(arr) < 10 for entry in request_dict.values() for arr in entry.values())
    assert missing > 0 and empty > 0 and partial > 0
    assert all(arr.shape == (0, 8) for entry in request_dict.values() for arr in entry.values() if len(arr) == 0)


def test_positive_lists_are_in_index_order(joined):
    for j in joined.values():
        rank_pos = j[j.label == "rank_pos"]
        np.testing.assert_array_equal(rank_pos.rank_index, rank_pos.pos)   # first 10 -> labels 30..21
        for label in ("rerank_pos", "realshow"):
            part = j[j.label == label]
            np.testing.assert_array_equal(part.rerank_index, part.pos, err_msg=label)
        # negatives are stored in random order: most rerank_neg lists are not sorted by rank_index
        neg = j[j.label == "rerank_neg"].sort_values(["request_id", "pos"])
        step_down = (neg.rank_index.diff() < 0) & (neg.request_id.diff() == 0)
        assert neg.request_id[step_down].nunique() > 0.5 * neg.request_id.nunique()


def test_stage_flags_are_one_cascade_outcome(days):
    for table, _, _ in days.values():
        t = table.to_pandas()
        exclusive = t[["rerank_pos", "rerank_neg", "rank_neg", "coarse_neg", "prerank_neg"]].sum(axis=1)
        assert (exclusive == 1).all()
        np.testing.assert_array_equal(t.rank_pos, t.rerank_pos | t.rerank_neg)
        assert (t.rerank_pos[t.realshow == 1] == 1).all()
        assert (t.rank_index[t.rank_pos == 0] == 0).all() and (t.rerank_index[t.rerank_pos == 0] == 0).all()
        assert t.rank_index.max() < 40 and t.rerank_index.max() < 10
        # realshow = the top of the rerank list
        shown = t[t.realshow == 1]
        assert (shown.rerank_index < shown.groupby("request_id").realshow.transform("sum")).all()
        # the stages disagree: rerank promotes items the rank stage put below its top 10
        assert (t.rank_index[t.rerank_pos == 1] >= 10).any()


def test_realshow_and_video_info_files(root, days):
    for day, (table, _, _) in days.items():
        shown = feather.read_table(root / "realshow" / f"{day}.feather")
        expected = table.filter(pa.compute.equal(table["realshow"], 1))
        assert shown.equals(expected)
        assert shown["playing_time"].null_count == 0 and shown.num_rows > 0
    info = feather.read_table(root / "others" / "realshow_video_info.feather").to_pandas()
    assert len(info) == SIZES["items"] and (info.video_id.to_numpy() == np.arange(SIZES["items"])).all()
    t = days[DAYS[0]][0].to_pandas().merge(info, on="video_id", suffixes=("", "_info"))
    np.testing.assert_array_equal(t.author_id, t.author_id_info)
    np.testing.assert_array_equal(t.upload_timestamp, t.upload_timestamp_info)


# ------------------------------------------------------------------ sequences
def test_sequences_left_padded_and_before_the_request(root, days):
    info = feather.read_table(root / "others" / "realshow_video_info.feather").to_pandas()
    logged = set()
    full = []
    for table, request_dict, seq_dict in days.values():
        t = table.to_pandas().drop_duplicates("request_id").set_index("request_id")
        rids = list(seq_dict)
        logged |= set(rids)
        seq = np.stack([seq_dict[r] for r in rids])
        assert all(seq_dict[r].dtype == np.int64 and seq_dict[r].shape == (50, 10) for r in rids)
        valid = seq[:, :, 7] > 0
        n = valid.sum(axis=1)
        # left padding: the valid rows are the last n, padding rows are all zero
        np.testing.assert_array_equal(valid, np.arange(50)[None, :] >= 50 - n[:, None])
        assert (seq[~valid] == 0).all()
        req_ts = t.loc[rids, "request_timestamp"].to_numpy()
        assert (np.where(valid, seq[:, :, 7], 0) < req_ts[:, None]).all()
        assert (np.diff(seq[:, :, 7], axis=1)[valid[:, 1:] & valid[:, :-1]] >= 0).all()  # oldest first
        # the item columns are that video's features
        v = seq[:, :, 0][valid]
        np.testing.assert_array_equal(seq[:, :, 1][valid], info.author_id.to_numpy()[v])
        np.testing.assert_array_equal(seq[:, :, 6][valid], info.duration.to_numpy()[v])
        np.testing.assert_array_equal(seq[:, :, 5][valid], info.upload_timestamp.to_numpy()[v])
        assert (seq[:, :, 8][valid] > 0).all()
        full.append(n == 50)
        view_requests = seq[:, :, 9][valid]
    full = np.concatenate(full)
    assert 0.7 < full.mean() < 1.0                      # most sequences are full, some shorter
    assert not (set(view_requests.tolist()) & logged)   # view request ids never collide


# ---------------------------------------------------------------- determinism
def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    args = dict(num_days=2, requests_per_day=30, users=12, items=320, progress=False)
    a, b = generate(tmp_path / "a", seed=7, **args), generate(tmp_path / "b", seed=7, **args)
    c = generate(tmp_path / "c", seed=8, **args)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) == 1 + 2 * 4 + 2
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    for day in ("2024-01-13", "2024-01-14"):
        for sub, ext in (("all_stage", "feather"), ("request_id_dict", "pkl"), ("seq_effective_50_dict", "pkl")):
            assert (a / sub / f"{day}.{ext}").read_bytes() != (c / sub / f"{day}.{ext}").read_bytes()


def test_days_in_worker_processes_are_the_same_bytes(tmp_path):
    """Each day draws from its own seed and reads the world only: workers change nothing."""
    args = dict(num_days=3, requests_per_day=40, users=20, items=350, seed=5, progress=False)
    one, three = generate(tmp_path / "one", workers=1, **args), generate(tmp_path / "three", workers=3, **args)
    files = sorted(p.relative_to(one) for p in one.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(three) for p in three.rglob("*") if p.is_file())
    for rel in files:
        assert (one / rel).read_bytes() == (three / rel).read_bytes(), rel


class _Stop(Exception):
    pass


@pytest.mark.parametrize("workers", [1, 2])
def test_a_stopped_run_resumes_keeping_its_complete_days(tmp_path, monkeypatch, workers):
    """Day 1 finished, day 2 was being written when the run died (a temporary file is left):
    the rerun keeps day 1 (hash checked), cleans the temporary and writes the rest, and the
    folder ends byte-identical to an uninterrupted run."""
    args = dict(num_days=3, requests_per_day=30, users=12, items=320, seed=4, progress=False)
    whole = generate(tmp_path / "whole", **args)
    out = tmp_path / "stopped"
    real = synthetic._write_day
    calls = []

    def dies_on_second_day(folder, day, parts, on_part=None):
        calls.append(day)
        if len(calls) == 2:
            (folder / "all_stage" / f".{day}.feather.k1ll3d.tmp").write_bytes(b"half a day")
            raise _Stop(day)
        return real(folder, day, parts, on_part)

    monkeypatch.setattr(synthetic, "_write_day", dies_on_second_day)
    with pytest.raises(_Stop):
        generate(out, **args)
    state = json.loads((out / MANIFEST_NAME).read_text())
    assert state["complete"] is False and list(state["days_done"]) == ["2024-01-13"]
    monkeypatch.setattr(synthetic, "_write_day", real)
    first_day = (out / "all_stage" / "2024-01-13.feather").stat().st_mtime_ns
    generate(out, workers=workers, **args)
    assert (out / "all_stage" / "2024-01-13.feather").stat().st_mtime_ns == first_day  # kept, not redone
    files = sorted(p.relative_to(whole) for p in whole.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())  # no temporary left
    for rel in files:
        assert (whole / rel).read_bytes() == (out / rel).read_bytes(), rel


def test_a_damaged_kept_day_is_simulated_again(tmp_path, monkeypatch):
    args = dict(num_days=2, requests_per_day=20, users=10, items=320, seed=2, progress=False)
    out = tmp_path / "g"
    real = synthetic._write_day

    def stop_after_first(folder, day, parts, on_part=None):
        if day != "2024-01-13":
            raise _Stop(day)
        return real(folder, day, parts, on_part)

    monkeypatch.setattr(synthetic, "_write_day", stop_after_first)
    with pytest.raises(_Stop):
        generate(out, **args)
    monkeypatch.setattr(synthetic, "_write_day", real)
    good = (out / "request_id_dict" / "2024-01-13.pkl").read_bytes()
    (out / "request_id_dict" / "2024-01-13.pkl").write_bytes(b"damaged")
    generate(out, **args)
    assert (out / "request_id_dict" / "2024-01-13.pkl").read_bytes() == good
    assert json.loads((out / MANIFEST_NAME).read_text()) == synthetic._manifest(SyntheticConfig(
        num_days=2, requests_per_day=20, users=10, items=320, seed=2))  # complete: the plain manifest


def test_authors_and_progress_within_days(tmp_path, capsys):
    from lcron import cli

    code = cli.main(["generate", "--out", str(tmp_path / "a"), "--num-days", "2", "--requests-per-day", "25",
                     "--users", "10", "--items", "400", "--authors", "7"])
    assert code == 0
    counts = _load(tmp_path / "a" / "others" / "id_cnt.pkl")
    assert counts[next(k for k in counts if "author" in k)] == 7
    err = capsys.readouterr().err
    assert "50/50 req" in err and "2/4 days" not in err and "2/2 days" in err
    with pytest.raises(ConfigError, match="authors"):
        generate(tmp_path / "b", num_days=1, requests_per_day=5, users=5, items=300, authors=0, progress=False)


def test_default_workers(monkeypatch):
    monkeypatch.setattr(synthetic, "usable_cpus", lambda: 16)
    monkeypatch.setattr(synthetic, "available_bytes", lambda: 64 * 2**30)
    big = SyntheticConfig(num_days=4, requests_per_day=250_000, users=42_000, items=200_000)
    assert synthetic.default_workers(big) == 4                        # one per day
    monkeypatch.setattr(synthetic, "available_bytes", lambda: 12 * 2**30)
    assert synthetic.default_workers(big) == 2                        # 5.5 GiB a day: memory holds two
    assert synthetic.default_workers(SyntheticConfig(num_days=4, requests_per_day=2_000)) == 1  # small days
    monkeypatch.setattr(synthetic, "available_bytes", lambda: 8 * 2**30)
    with pytest.raises(ConfigError, match="3 days at once"):
        big.validate(day_copies=3)
    with pytest.raises(ConfigError, match="workers must be at least 1"):
        generate_from_config("unused", SyntheticConfig(), workers=0)


def test_a_day_in_parts_is_one_day_in_time_order(tmp_path, monkeypatch):
    monkeypatch.setattr(synthetic, "DAY_PART_REQUESTS", 40)
    args = dict(num_days=2, requests_per_day=130, users=30, items=400, seed=11, progress=False)
    a, b = generate(tmp_path / "a", **args), generate(tmp_path / "b", **args)
    for rel in sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file()):
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel  # parts are deterministic too
    for d, day in enumerate(DAYS):
        reader = pa.ipc.open_file(a / "all_stage" / f"{day}.feather")
        assert reader.num_record_batches == 4  # 40 + 40 + 40 + 10 requests, one batch each
        table = reader.read_all()
        ts = table["request_timestamp"].to_numpy()
        assert (np.diff(ts) >= 0).all()  # the parts follow each other in time
        rids = np.unique(table["request_id"].to_numpy())
        np.testing.assert_array_equal(rids, d * 130 + np.arange(130))
        assert set(_load(a / "request_id_dict" / f"{day}.pkl")) == set(rids.tolist())
        assert set(_load(a / "seq_effective_50_dict" / f"{day}.pkl")) == set(rids.tolist())
        shown = feather.read_table(a / "realshow" / f"{day}.feather")
        assert shown.equals(table.filter(pa.compute.equal(table["realshow"], 1)))


def test_rerun_and_output_guard(tmp_path):
    args = dict(num_days=1, requests_per_day=10, users=5, items=300, progress=False)
    out = generate(tmp_path / "g", **args)
    before = (out / "all_stage" / "2024-01-13.feather").read_bytes()
    generate(out, **args)                                   # same configuration: rewritten identically
    assert (out / "all_stage" / "2024-01-13.feather").read_bytes() == before
    with pytest.raises(OutputExistsError, match="requests_per_day"):
        generate(out, **{**args, "requests_per_day": 11})
    real = tmp_path / "real"
    (real / "all_stage").mkdir(parents=True)
    with pytest.raises(OutputExistsError, match="all_stage"):
        generate(real, **args)
    assert list((real / "all_stage").iterdir()) == []


@pytest.mark.parametrize("kwargs, match", [
    (dict(items=299), "pool_size=300"),
    (dict(start_date="2024-13-01"), "start_date"),
    (dict(requests_per_day=0), "requests_per_day"),
    (dict(num_days=-1), "num_days"),
])
def test_config_errors(tmp_path, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        generate(tmp_path / "e", progress=False, **{**dict(num_days=1, requests_per_day=5, users=5, items=300),
                                                    **kwargs})
    assert not (tmp_path / "e").exists()


def test_progress_reports_days(tmp_path, capsys):
    generate(tmp_path / "p", num_days=2, requests_per_day=5, users=5, items=300, progress=True)
    err = capsys.readouterr().err
    assert "synthetic RecFlow" in err and "2/2" in err


# ---------------------------------------------------------------- learnability
def test_labels_are_predictable_from_features(days):
    """Ids and sequences carry the relevance the cascade used, without looking at the latent world.

    (a) The rank_pos rate per (user, cat1) on day 1 ranks day 2's rank_pos rows above its
        prerank_neg rows (AUC). The rates are smoothed towards the global rate with 5
        pseudo-rows. Random labels give 0.5, and seeds 0-5 at these sizes give 0.79-0.84.
    (b) The share of a request's sequence in the candidate's cat2 falls stage by stage.
    """
    t0, t1 = days[DAYS[0]][0].to_pandas(), days[DAYS[1]][0].to_pandas()
    g = t0.groupby(["user_id", "category_level_one"]).rank_pos.agg(["sum", "count"])
    prior = t0.rank_pos.mean()
    rate = ((g["sum"] + 5 * prior) / (g["count"] + 5)).rename("rate").reset_index()
    pred = t1.merge(rate, on=["user_id", "category_level_one"], how="left").rate.fillna(prior).to_numpy()
    pos, neg = pred[t1.rank_pos.to_numpy() == 1], pred[t1.prerank_neg.to_numpy() == 1]
    auc = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
    assert auc > 0.65

    seq_dict = days[DAYS[1]][2]
    seq = np.stack([seq_dict[r] for r in t1.request_id.tolist()])
    valid = seq[:, :, 7] > 0
    share = ((seq[:, :, 2] == t1.category_level_two.to_numpy()[:, None]) & valid).sum(1) / np.maximum(valid.sum(1), 1)
    means = [share[t1[label].to_numpy() == 1].mean() for label in ("rank_pos", "rank_neg", "coarse_neg", "prerank_neg")]
    assert means == sorted(means, reverse=True) and means[0] > 2 * means[-1]


# ------------------------------------------------------------ large catalogues (issue 19)
def test_sampled_catalogue_honours_the_vocabulary_sizes(tmp_path):
    """Above max_scan_items, retrieval and history draw from samples of the catalogue; the
    vocabulary sizes (id_cnt.pkl, video info, id ranges) are still exactly the requested ones
    and the candidates come from all over the catalogue, not from its first rows."""
    cfg = SyntheticConfig(num_days=2, requests_per_day=120, users=70, items=40_000, authors=9_000, seed=5,
                          max_scan_items=1_000, scan_sample=600)
    out = generate_from_config(tmp_path / "big", cfg, progress=False)
    counts = pickle.loads((out / "others" / "id_cnt.pkl").read_bytes())
    assert counts["photo_id"] == 40_000 and counts["author_id"] == 9_000 and counts["user_id"] == 70
    info = feather.read_table(out / "others" / "realshow_video_info.feather")
    assert info.num_rows == 40_000 and info["video_id"].to_pylist()[-1] == 39_999
    table = pd.concat([feather.read_table(out / "all_stage" / f"{d}.feather").to_pandas() for d in DAYS])
    video, author = table["video_id"].to_numpy(), table["author_id"].to_numpy()
    assert video.min() >= 0 and video.max() < 40_000 and author.max() < 9_000
    # spread over the whole catalogue; each day's requests (one group here) share a 600-item sample
    assert video.max() > 30_000 and len(np.unique(video)) > 600
    assert table["user_id"].max() < 70
    seqs = pickle.loads((out / "seq_effective_50_dict" / f"{DAYS[0]}.pkl").read_bytes())
    viewed = np.concatenate([s[:, 0][s[:, 0] > 0] for s in seqs.values()])
    assert viewed.max() < 40_000 and len(np.unique(viewed)) > 500
    # the new fields are recorded because they differ from their defaults
    assert '"max_scan_items": 1000' in (out / MANIFEST_NAME).read_text()


def test_new_fields_at_defaults_keep_old_manifests_valid(tmp_path):
    out = generate(tmp_path / "d", progress=False, num_days=1, requests_per_day=5, users=5, items=300)
    text = (out / MANIFEST_NAME).read_text()
    assert "max_scan_items" not in text and "scan_sample" not in text


@pytest.mark.parametrize("kwargs, match", [
    (dict(scan_sample=299), "scan_sample"), (dict(max_scan_items=10), "max_scan_items"),
])
def test_scan_config_errors(tmp_path, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        generate_from_config(tmp_path / "e", SyntheticConfig(num_days=1, requests_per_day=5, users=5, items=300,
                                                             **kwargs), progress=False)
