"""lcron.data.recflow: reading the RecFlow layout written by hand, and every clear error."""

from __future__ import annotations

import json
import pickle
import warnings

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from lcron.data import schemas as S
from lcron.data.recflow import RecFlowReader, RecFlowWarning, select_days
from lcron.errors import DataError, UnsafePickleError

HAND_DAY = "2024-01-15"  # the day the ``handmade`` fixture writes by default
DAYS3 = ("2024-01-15", "2024-01-16", "2024-01-17")


def _reader(root, **kw) -> RecFlowReader:
    return RecFlowReader(root, **kw)


# ------------------------------------------------------------------ happy path
def test_hand_written_day_reads_back_exactly(handmade, tmp_path):
    root = handmade.write(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RecFlowWarning)  # clean data: no warning
        day = _reader(root).read_day(HAND_DAY)
    # Requests in time order (A before B) although B's rows come first in all_stage.
    np.testing.assert_array_equal(day.request_id, [501, 502])
    np.testing.assert_array_equal(day.request_timestamp, [handmade.TS_A_MS, handmade.TS_B_MS])
    np.testing.assert_array_equal(day.user, [[3, 4, 2, 1, 7], [0, 0, 0, 0, 0]])  # raw ids, USER_FIELDS order
    rp = day.candidates["rank_pos"]
    np.testing.assert_array_equal(rp.stored, [12, 2])
    np.testing.assert_array_equal(rp.lengths, [10, 2])  # first 10 stored rows only
    np.testing.assert_array_equal(rp.rows[:, 0], [15, 10, 11, 12, 13, 14, 16, 17, 18, 19, 40, 41])
    np.testing.assert_array_equal(rp.top_index, [5, 0, 1, 2, 3, 4, 6, 7, 8, 9, 0, 9])
    rr = day.candidates["rerank_pos"]
    np.testing.assert_array_equal(rr.rows[:, 0], [10, 11, 40])
    np.testing.assert_array_equal(rr.top_index, [1, 0, 0])
    np.testing.assert_array_equal(day.candidates["coarse_neg"].lengths, [0, 1])  # [0, 8] array vs one row
    np.testing.assert_array_equal(day.candidates["prerank_neg"].stored, [0, 11])  # absent key vs 11 rows
    assert day.candidates["rank_neg"].top_index is None
    assert day.seq.shape == (2, 50, 10)
    np.testing.assert_array_equal(day.seq[0, 47:, 0], [0, 71, 72])
    assert not day.seq[1].any()
    assert day.stats["rows"] == len(handmade.all_stage)
    assert day.stats["dropped"]["total"] == 0
    assert day.stats["items_per_label"]["rank_pos"] == {"mean": 7.0, "max": 12, "requests_with_items": 2,
                                                         "kept_mean": 6.0}


def test_row_order_of_all_stage_does_not_matter(handmade, tmp_path):
    a = _reader(handmade.write(tmp_path / "grouped")).read_day(HAND_DAY)
    handmade.all_stage = handmade.all_stage.sample(frac=1.0, random_state=3).reset_index(drop=True)
    assert (handmade.all_stage["request_id"].diff().fillna(0) != 0).sum() > 1  # requests interleaved
    b = _reader(handmade.write(tmp_path / "shuffled")).read_day(HAND_DAY)
    np.testing.assert_array_equal(a.request_id, b.request_id)
    np.testing.assert_array_equal(a.user, b.user)
    for label in a.candidates:
        np.testing.assert_array_equal(a.candidates[label].rows, b.candidates[label].rows)
        if a.candidates[label].top_index is not None:
            np.testing.assert_array_equal(a.candidates[label].top_index, b.candidates[label].top_index)


def test_id_cnt_accepts_both_spellings(handmade, tmp_path):
    canonical = handmade.CANONICAL_ID_CNT
    assert "photo_id" in handmade.id_cnt and " category_level_two" in handmade.id_cnt
    assert _reader(handmade.write(tmp_path / "published")).id_counts() == canonical
    handmade.id_cnt = dict(canonical)
    assert _reader(handmade.write(tmp_path / "canonical")).id_counts() == canonical


def test_id_cnt_missing_key(handmade, tmp_path):
    del handmade.id_cnt["photo_id"]
    with pytest.raises(DataError, match=r"id_cnt\.pkl: missing key\(s\) video_id \(accepted: 'video_id', 'photo_id'\)"):
        _reader(handmade.write(tmp_path)).read_day(HAND_DAY)


def test_id_cnt_bad_value(handmade, tmp_path):
    handmade.id_cnt["age"] = "eight"
    with pytest.raises(DataError, match=r"id_cnt\['age'\] must be a positive integer"):
        _reader(handmade.write(tmp_path)).id_counts()


def test_extra_columns_and_null_feedback_are_accepted(handmade, tmp_path):
    table = handmade.table().append_column("not_a_recflow_column", pa.array(np.arange(len(handmade.all_stage))))
    assert table.column("like").null_count > 0 and pa.types.is_floating(table.schema.field("like").type)
    root = handmade.write(tmp_path, all_stage=table)
    with pytest.warns(RecFlowWarning, match="ignoring extra column.*not_a_recflow_column"):
        day = _reader(root).read_day(HAND_DAY)
    assert day.num_requests == 2


def test_feedback_columns_may_be_absent(handmade, tmp_path):
    table = handmade.table()
    table = table.select([n for n in table.column_names if n not in S.FEEDBACK_COLUMNS])
    assert _reader(handmade.write(tmp_path, all_stage=table)).read_day(HAND_DAY).num_requests == 2


def test_index_may_be_null_outside_its_stage(handmade, tmp_path):
    table = handmade.table()
    ri = table.column("rank_index").to_numpy()
    nulls = table.column("rank_pos").to_numpy() == 0
    table = table.set_column(table.schema.get_field_index("rank_index"), "rank_index",
                             pa.array(ri, type=pa.int64(), mask=nulls))
    day = _reader(handmade.write(tmp_path, all_stage=table)).read_day(HAND_DAY)
    np.testing.assert_array_equal(day.candidates["rank_pos"].top_index[:3], [5, 0, 1])


# ------------------------------------------------------------------ days
def test_select_days(handmade, tmp_path):
    r = _reader(handmade.write(tmp_path, days=DAYS3))
    assert r.available_days == list(DAYS3)
    assert r.select_days(None) == list(DAYS3)
    assert r.select_days("2024-01-16") == ["2024-01-16"]
    assert r.select_days("2024-01-15:2024-01-16") == ["2024-01-15", "2024-01-16"]
    assert r.select_days("2024-01-16:") == ["2024-01-16", "2024-01-17"]
    assert r.select_days(":2024-01-15") == ["2024-01-15"]
    with pytest.raises(DataError, match=r"day 2024-01-18 is outside the available range 2024-01-15\.\.2024-01-17"):
        r.select_days("2024-01-15:2024-01-18")
    with pytest.raises(DataError, match=r"outside the available range 2024-01-15\.\.2024-01-17 \(3 days\)"):
        r.read_day("2024-01-14")
    with pytest.raises(DataError, match="not a date YYYY-MM-DD"):
        r.select_days("15/01/2024")
    with pytest.raises(DataError, match="is empty"):
        r.select_days("2024-01-17:2024-01-15")


def test_select_days_gap():
    avail = ["2024-01-13", "2024-01-15"]
    assert select_days(avail, "2024-01-13:2024-01-15", where="x") == avail
    with pytest.raises(DataError, match="day 2024-01-14 is not available"):
        select_days(avail, "2024-01-14", where="x")


@pytest.mark.parametrize("rel", ["all_stage/2024-01-16.feather", "request_id_dict/2024-01-16.pkl",
                                 "seq_effective_50_dict/2024-01-16.pkl"])
def test_missing_or_empty_day_file(handmade, tmp_path, rel):
    root = handmade.write(tmp_path, days=DAYS3)
    (root / rel).write_bytes(b"")
    with pytest.raises(DataError, match=f"{rel}: file is empty"):
        _reader(root).read_day("2024-01-16")
    if not rel.startswith("all_stage"):  # a missing all_stage file means the day does not exist
        (root / rel).unlink()
        with pytest.raises(DataError, match=f"{rel}: file is missing"):
            _reader(root).read_day("2024-01-16")


def test_missing_source_folder(tmp_path):
    with pytest.raises(DataError, match="is not a folder"):
        _reader(tmp_path / "nope")
    with pytest.raises(DataError, match="no <YYYY-MM-DD>.feather files"):
        _ = _reader(tmp_path).available_days


# ------------------------------------------------------------------ all_stage errors
def test_missing_required_column(handmade, tmp_path):
    root = handmade.write(tmp_path, all_stage=handmade.table().drop_columns(["rank_index", "province"]))
    with pytest.raises(DataError, match=r"all_stage/2024-01-15\.feather: required column\(s\) missing: province, rank_index"):
        _reader(root).read_day(HAND_DAY)


@pytest.mark.parametrize("column,value,expected", [
    ("video_id", 100, r"column video_id: 1 value\(s\) >= id_cnt\['video_id'\] = 100 \(max 100\)"),
    ("user_id", -1, r"column user_id: 1 negative value\(s\) \(min -1\)"),
    ("category_level_two", 30, r"column category_level_two: 1 value\(s\) >= id_cnt\['category_level_two'\] = 30"),
    ("rank_neg", 2, r"column rank_neg: 1 value\(s\) other than 0/1"),
])
def test_bad_values_in_all_stage(handmade, tmp_path, column, value, expected):
    handmade.all_stage.loc[3, column] = value
    root = handmade.write(tmp_path)
    with pytest.raises(DataError, match=r"all_stage/2024-01-15\.feather: " + expected + r".*request_id 502"):
        _reader(root).read_day(HAND_DAY)


def test_null_in_integer_column(handmade, tmp_path):
    table = handmade.table()
    i = table.schema.get_field_index("device_id")
    vals = table.column(i).to_numpy()
    mask = np.zeros(len(vals), bool)
    mask[2] = True
    table = table.set_column(i, "device_id", pa.array(vals, type=pa.int64(), mask=mask))
    with pytest.raises(DataError, match=r"column device_id has 1 null/NaN value\(s\)"):
        _reader(handmade.write(tmp_path, all_stage=table)).read_day(HAND_DAY)


def test_wrong_dtype(handmade, tmp_path):
    handmade.all_stage["user_id"] = handmade.all_stage["user_id"].astype(float)
    table = handmade.table()
    table = table.set_column(table.schema.get_field_index("user_id"), "user_id",
                             pa.array(handmade.all_stage["user_id"].to_numpy(), type=pa.float64()))
    with pytest.raises(DataError, match="column user_id has type double; expected an integer type"):
        _reader(handmade.write(tmp_path, all_stage=table)).read_day(HAND_DAY)


def test_user_columns_must_be_constant_within_a_request(handmade, tmp_path):
    rows_a = handmade.all_stage.index[handmade.all_stage["request_id"] == 501]
    handmade.all_stage.loc[rows_a[4], "age"] = 5
    with pytest.raises(DataError, match="column age is not constant within request_id 501"):
        _reader(handmade.write(tmp_path)).read_day(HAND_DAY)


def test_truncated_feather(handmade, tmp_path):
    root = handmade.write(tmp_path)
    p = root / "all_stage" / f"{HAND_DAY}.feather"
    p.write_bytes(p.read_bytes()[:-200])
    with pytest.raises(DataError, match=r"all_stage/2024-01-15\.feather: not a readable Feather"):
        _reader(root).read_day(HAND_DAY)


def test_top_item_without_index_is_dropped(handmade, tmp_path):
    # B's rank_pos video 41 loses its rank_pos flag in all_stage: its label cannot be computed.
    df = handmade.all_stage
    df.loc[(df["request_id"] == 502) & (df["video_id"] == 41), "rank_pos"] = 0
    root = handmade.write(tmp_path)
    with pytest.raises(DataError, match=r"1 of 2 requests unusable .* 1 with a top-group item that has no rank_index"):
        _reader(root).read_day(HAND_DAY, labels=("rank_pos", "rank_neg"))
    with pytest.warns(RecFlowWarning, match="dropped 1 of 2 requests"):
        day = _reader(root, max_missing_fraction=0.5).read_day(HAND_DAY, labels=("rank_pos", "rank_neg"))
    np.testing.assert_array_equal(day.request_id, [501])
    assert day.candidates["rank_pos"].rows.shape[0] == 10 and day.stats["dropped"]["missing_top_index"] == 1


# ------------------------------------------------------------------ pickle errors
def test_truncated_pickle(handmade, tmp_path):
    root = handmade.write(tmp_path)
    p = root / "request_id_dict" / f"{HAND_DAY}.pkl"
    p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(DataError, match=r"request_id_dict/2024-01-15\.pkl: the pickle is truncated"):
        _reader(root).read_day(HAND_DAY)


def test_unsafe_pickle_in_the_data(handmade, tmp_path):
    root = handmade.write(tmp_path)
    (root / "seq_effective_50_dict" / f"{HAND_DAY}.pkl").write_bytes(
        pickle.dumps({501: print}))  # builtins.print: a callable, not data
    with pytest.raises(UnsafePickleError, match=r"seq_effective_50_dict/2024-01-15\.pkl: refusing .*builtins\.print"):
        _reader(root).read_day(HAND_DAY)


def test_id_out_of_range_in_request_id_dict(handmade, tmp_path):
    handmade.request_id_dict[501]["rank_neg"][1, 1] = 50  # author_id count is 50
    with pytest.raises(DataError, match=r"request_id_dict/2024-01-15\.pkl: label rank_neg: column author_id: "
                                        r"1 value\(s\) >= id_cnt\['author_id'\] = 50 .*request_id 501"):
        _reader(handmade.write(tmp_path)).read_day(HAND_DAY)


def test_negative_id_in_sequence(handmade, tmp_path):
    handmade.seq_dict[501][49, 3] = -2  # cat1 of a valid step
    with pytest.raises(DataError, match=r"seq_effective_50_dict/2024-01-15\.pkl: column category_level_one: "
                                        r"1 negative value"):
        _reader(handmade.write(tmp_path)).read_day(HAND_DAY)


def test_bad_candidate_array_shape(handmade, tmp_path):
    handmade.request_id_dict[501]["rank_neg"] = np.zeros((3, 7), dtype=np.int64)
    with pytest.raises(DataError, match=r"request_id 501, label rank_neg: array of shape \[3, 7\]; expected \[n, 8\]"):
        _reader(handmade.write(tmp_path)).read_day(HAND_DAY)


def test_bad_sequence_shape(handmade, tmp_path):
    handmade.seq_dict[501] = np.zeros((49, 10), dtype=np.int64)
    with pytest.raises(DataError, match=r"request_id 501: sequence of shape \[49, 10\]; expected \[50, 10\]"):
        _reader(handmade.write(tmp_path)).read_day(HAND_DAY)


def test_float_candidates_rejected(handmade, tmp_path):
    handmade.request_id_dict[501]["rank_neg"] = handmade.request_id_dict[501]["rank_neg"].astype(float)
    with pytest.raises(DataError, match="request_id 501, label rank_neg: dtype float64; expected integers"):
        _reader(handmade.write(tmp_path)).read_day(HAND_DAY)


# ------------------------------------------------------------------ missing requests
def _three_requests(handmade):
    """Add request 503 (a copy of A) to all_stage and to both dicts."""
    df = handmade.all_stage
    c = df[df["request_id"] == 501].copy()
    c["request_id"] = 503
    handmade.all_stage = pd.concat([df, c], ignore_index=True)
    handmade.request_id_dict[503] = handmade.request_id_dict[501]
    handmade.seq_dict[503] = handmade.seq_dict[501]


def test_missing_from_pkl_below_and_above_threshold(handmade, tmp_path):
    _three_requests(handmade)
    del handmade.seq_dict[503]
    root = handmade.write(tmp_path)
    with pytest.raises(DataError, match=r"1 of 3 requests unusable \(33\.33% > max_missing_fraction 1\.00%\): "
                                        r"0 missing from request_id_dict, 1 missing from seq_effective_50_dict"):
        _reader(root).read_day(HAND_DAY)
    with pytest.warns(RecFlowWarning, match=r"dropped 1 of 3 requests"):
        day = _reader(root, max_missing_fraction=0.4).read_day(HAND_DAY)
    np.testing.assert_array_equal(day.request_id, [501, 502])
    assert day.stats["dropped"] == {"missing_request_id_dict": 0, "missing_seq_effective_50_dict": 1,
                                    "missing_top_index": 0, "total": 1}


def test_zero_usable_requests(handmade, tmp_path):
    handmade.request_id_dict = {999: handmade.request_id_dict[501]}
    with pytest.raises(DataError, match=r"zero usable requests out of 2 \(2 missing from request_id_dict"):
        _reader(handmade.write(tmp_path), max_missing_fraction=1.0).read_day(HAND_DAY)


def test_non_integer_keys(handmade, tmp_path):
    handmade.seq_dict["501"] = handmade.seq_dict.pop(501)
    with pytest.raises(DataError, match=r"keys must be integer request ids, found '501'"):
        _reader(handmade.write(tmp_path)).read_day(HAND_DAY)


# ------------------------------------------------------------------ schemas
def test_committed_schema_json_matches_the_code():
    """data_schemas/*.json are generated from lcron.data.schemas (python -m lcron.data.schemas)."""
    for name in S.SCHEMAS:
        committed = (S.repo_schema_dir() / name).read_text()
        assert committed == S.render(name), f"data_schemas/{name} is stale: run python -m lcron.data.schemas"
        json.loads(committed)


def test_schema_marks_feedback_optional_and_untyped():
    cols = {c["name"]: c for c in S.RECFLOW_SCHEMA["all_stage"]["columns"]}
    for f in S.FEEDBACK_COLUMNS:
        assert cols[f]["required"] is False and cols[f]["check"] == "any"
    assert all(cols[c]["required"] and cols[c]["kind"] == "integer" for c in S.REQUEST_COLUMNS)
    assert S.RECFLOW_SCHEMA["request_id_dict"]["row_shape"] == ["n", 8]
    assert S.RECFLOW_SCHEMA["seq_effective_50_dict"]["shape"] == [50, 10]
    assert S.SHARD_SCHEMA["arrays"]["items"]["shape"] == ["R", "N", 8]


# ------------------------------------------------------------------ day checks of the reader
def test_tz_offset_is_checked(handmade, tmp_path):
    from lcron.errors import ConfigError

    with pytest.raises(ConfigError, match=r"tz_offset_hours must be an integer in \[-12, 14\], got 15"):
        RecFlowReader(handmade.write(tmp_path), tz_offset_hours=15)


def test_only_real_dates_are_days(handmade, tmp_path):
    root = handmade.write(tmp_path)
    (root / "all_stage" / "2024-02-30.feather").write_bytes(b"x")
    with pytest.warns(RecFlowWarning, match=r"ignoring .*all_stage/2024-02-30\.feather: not a day file"):
        assert _reader(root).available_days == [HAND_DAY]


def test_preprocessing_mode_raises_every_problem_of_the_first_stage(handmade, tmp_path):
    """Without ``collect`` a day stops at the first stage with a problem, naming all of its problems."""
    from lcron.data.recflow import DayProblems

    handmade.all_stage.loc[3, "user_id"] = -1
    handmade.all_stage.loc[3, "author_id"] = 50
    handmade.request_id_dict[501]["rank_neg"][0, 0] = 100  # a later stage: not reached
    root = handmade.write(tmp_path)
    with pytest.raises(DayProblems) as exc:
        _reader(root).read_day(HAND_DAY)
    assert [p.split(": column ")[1].split(":")[0] for p in exc.value.problems] == ["user_id", "author_id"]
    with pytest.raises(DayProblems) as exc:
        _reader(root).read_day(HAND_DAY, collect=True)
    assert len(exc.value.problems) == 3 and "label rank_neg: column video_id" in exc.value.problems[2]
