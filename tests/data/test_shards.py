"""lcron.data.shards: exact shard values for hand-built requests, idempotence, the loader."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import time

import numpy as np
import pytest

from lcron.data import fields
from lcron.data.shards import ShardSet, preprocess, smallest_int_dtype, time_features
from lcron.errors import ConfigError, DataError, OutputExistsError
from lcron.settings import THREE_STAGE, TWO_STAGE

DAY = "2024-01-15"
UTC8 = dt.timezone(dt.timedelta(hours=8))


def _time3(epoch_s: int) -> list[int]:
    """Independent oracle: ISO weekday, hour + 1, minute + 1 via datetime in an explicit UTC+8."""
    t = dt.datetime.fromtimestamp(epoch_s, tz=UTC8)
    return [t.isoweekday(), t.hour + 1, t.minute + 1]


def _item(video: int, author: int | None = None, *, upload_base: int) -> list[int]:
    """Expected ITEM_FIELDS of a hand-made video (see conftest.item_row): ids + 1, upload time."""
    a = video % 50 if author is None else author
    return [video + 1, a + 1, video % 30 + 1, video % 10 + 1, video % 5 + 1, *_time3(upload_base + 60 * video)]


# ------------------------------------------------------------------ pure helpers
def test_time_features_hand_checked():
    # 1970-01-01 00:00 UTC is a Thursday; in UTC+8 it is 08:00 -> [4, 9, 1].
    np.testing.assert_array_equal(time_features(np.array([0]), 8), [[4, 9, 1]])
    # 2024-01-14 16:30:15 UTC = Monday 2024-01-15 00:30:15 UTC+8 -> [1, 1, 31]; in UTC it is Sunday.
    t = 1705249815
    np.testing.assert_array_equal(time_features(np.array([t]), 8), [[1, 1, 31]])
    np.testing.assert_array_equal(time_features(np.array([t]), 0), [[7, 17, 31]])
    # A negative offset and a negative epoch both floor correctly: 1969-12-31 23:59 UTC, Wednesday.
    np.testing.assert_array_equal(time_features(np.array([-60]), 0), [[3, 24, 60]])
    np.testing.assert_array_equal(time_features(np.array([0]), -5), [[3, 20, 1]])


def test_smallest_int_dtype():
    assert smallest_int_dtype(255) == np.uint8
    assert smallest_int_dtype(256) == np.int16
    assert smallest_int_dtype(40_000) == np.int32
    assert smallest_int_dtype(2**31) == np.int64
    assert smallest_int_dtype(5, -1) == np.int8


# ------------------------------------------------------------------ exact values
def test_two_stage_exact_values(handmade, tmp_path, other_tz):
    assert time.localtime(0).tm_hour == 16  # the process really is in Los Angeles (UTC-8)
    shards = preprocess(handmade.write(tmp_path / "recflow"), tmp_path / "s2", 2, progress=False)
    assert shards.days == [DAY] and shards.setting == TWO_STAGE
    a = shards.load_day(DAY)
    up = handmade.UPLOAD_BASE_S
    np.testing.assert_array_equal(a["request_id"], [501, 502])
    # Request A: 2024-01-15 00:30:15 UTC+8 (Sunday in UTC and in Los Angeles); B: 23:59:59 UTC+8.
    np.testing.assert_array_equal(a["context"], [[1, 1, 31], [1, 24, 60]])
    np.testing.assert_array_equal(a["user"], [[4, 5, 3, 2, 8], [1, 1, 1, 1, 1]])  # raw + 1, zeros -> 1

    n = 40
    assert a["items"].shape == (2, n, 8) and a["mask"].shape == (2, n) and a["label"].shape == (2, n)
    exp_items = np.zeros((2, n, 8), dtype=np.int64)
    exp_label = np.zeros((2, n), dtype=np.int64)
    # A, rank_pos: the first 10 stored rows (not the index order), label 30 - rank_index.
    a_rank = [15, 10, 11, 12, 13, 14, 16, 17, 18, 19]
    for k, v in enumerate(a_rank):
        exp_items[0, k] = _item(v, upload_base=up)
        exp_label[0, k] = 30 - (v - 10)
    for k, v in enumerate([30, 31, 32]):  # rank_neg -> 7
        exp_items[0, 10 + k] = _item(v, upload_base=up)
        exp_label[0, 10 + k] = 7
    # B: rank_pos 40 (index 0), 41 (index 9); rank_neg empty; coarse_neg 32 by author 7; prerank 60..69.
    exp_items[1, 0], exp_label[1, 0] = _item(40, upload_base=up), 30
    exp_items[1, 1], exp_label[1, 1] = _item(41, upload_base=up), 21
    exp_items[1, 20], exp_label[1, 20] = _item(32, 7, upload_base=up), 6
    for k, v in enumerate(range(60, 70)):
        exp_items[1, 30 + k], exp_label[1, 30 + k] = _item(v, upload_base=up), 5
    np.testing.assert_array_equal(a["items"], exp_items)
    np.testing.assert_array_equal(a["label"], exp_label)
    np.testing.assert_array_equal(a["mask"], (exp_items[:, :, 0] > 0).astype(np.uint8))
    # Hand-checked literals for two slots: video 15 -> ids 16/16/16/6/1, uploaded 2024-01-01 20:15 UTC+8.
    np.testing.assert_array_equal(a["items"][0, 0], [16, 16, 16, 6, 1, 1, 21, 16])
    # video 65 uploaded 65 minutes after 20:00 -> 21:05 -> hour 22, minute 6.
    np.testing.assert_array_equal(a["items"][1, 35], [66, 16, 6, 6, 1, 1, 22, 6])

    # Sequences: A has valid steps 47..49 (videos 0, 71, 72), B none; padding stays 0.
    exp_seq = np.zeros((2, 50, 5), dtype=np.int64)
    for k, v in enumerate([0, 71, 72]):
        exp_seq[0, 47 + k] = [v + 1, v % 50 + 1, v % 30 + 1, v % 10 + 1, v % 5 + 1]
    np.testing.assert_array_equal(a["seq"], exp_seq)
    np.testing.assert_array_equal(a["seq_mask"][0], [0] * 47 + [1, 1, 1])
    assert not a["seq_mask"][1].any()

    # Integer dtypes sized to the vocabularies (all counts here are < 255).
    assert {k: v.dtype for k, v in a.items()} == {
        "request_id": np.int64, "context": np.uint8, "user": np.uint8, "seq": np.uint8, "seq_mask": np.uint8,
        "items": np.uint8, "mask": np.uint8, "label": np.uint8}
    assert isinstance(a["items"], np.memmap)


def test_three_stage_exact_values(handmade, tmp_path, other_tz):
    shards = preprocess(handmade.write(tmp_path / "recflow"), tmp_path / "s3", 3, progress=False)
    assert shards.setting == THREE_STAGE
    a = shards.load_day(DAY)
    up = handmade.UPLOAD_BASE_S
    n = 50
    exp_items = np.zeros((2, n, 8), dtype=np.int64)
    exp_label = np.zeros((2, n), dtype=np.int64)
    # A: rerank_pos 10 (rerank_index 1), 11 (0); rerank_neg 12 -> 8; rank_neg 30..32 -> 7.
    for slot, v, y in [(0, 10, 29), (1, 11, 30), (10, 12, 8), (20, 30, 7), (21, 31, 7), (22, 32, 7)]:
        exp_items[0, slot], exp_label[0, slot] = _item(v, upload_base=up), y
    # B: rerank_pos 40 -> 30; coarse_neg 32 (author 7) at slot 30 -> 6; prerank_neg 60..69 -> 5.
    exp_items[1, 0], exp_label[1, 0] = _item(40, upload_base=up), 30
    exp_items[1, 30], exp_label[1, 30] = _item(32, 7, upload_base=up), 6
    for k, v in enumerate(range(60, 70)):
        exp_items[1, 40 + k], exp_label[1, 40 + k] = _item(v, upload_base=up), 5
    np.testing.assert_array_equal(a["items"], exp_items)
    np.testing.assert_array_equal(a["label"], exp_label)
    np.testing.assert_array_equal(a["mask"], (exp_label > 0).astype(np.uint8))
    np.testing.assert_array_equal(a["context"], [[1, 1, 31], [1, 24, 60]])


def test_other_tz_offset(handmade, tmp_path):
    shards = preprocess(handmade.write(tmp_path / "recflow"), tmp_path / "s", 2, tz_offset_hours=0, progress=False)
    a = shards.load_day(DAY)
    # A is Sunday 2024-01-14 16:30:15 UTC, B Monday 15:59:59 UTC.
    np.testing.assert_array_equal(a["context"], [[7, 17, 31], [1, 16, 60]])
    assert shards.tz_offset_hours == 0


def test_dtypes_follow_the_vocabularies(handmade, tmp_path):
    handmade.id_cnt["photo_id"] = 40_000  # video ids + 1 up to 40000: int32 (uint16 is never used)
    handmade.id_cnt["user_id"] = 300
    shards = preprocess(handmade.write(tmp_path / "recflow"), tmp_path / "s", 2, progress=False)
    a = shards.load_day(DAY)
    assert a["items"].dtype == np.int32 and a["user"].dtype == np.int16 and a["seq"].dtype == np.int32
    assert a["context"].dtype == np.uint8 and a["label"].dtype == np.uint8
    assert a["items"][0, 0, 0] == 16 and shards.embedding_sizes["video_id"] == 40_002
    assert shards.manifest(DAY)["arrays"]["items"] == {"dtype": "int32", "shape": [2, 40, 8]}


def test_dataset_json_and_manifest(handmade, tmp_path):
    shards = preprocess(handmade.write(tmp_path / "recflow"), tmp_path / "s", 2, progress=False)
    meta = json.loads((tmp_path / "s" / "dataset.json").read_text())
    assert meta["format_version"] == 1 and meta["days"] == [DAY] and meta["tz_offset_hours"] == 8
    assert meta["id_counts"] == handmade.CANONICAL_ID_CNT  # canonical keys, published spellings mapped
    assert meta["embedding_sizes"]["video_id"] == 102 and meta["embedding_sizes"]["weekday"] == 8
    assert meta["setting"] == TWO_STAGE.to_dict()
    assert shards.embedding_sizes == fields.embedding_sizes(handmade.CANONICAL_ID_CNT)
    m = shards.manifest(DAY)
    assert m["requests"] == 2 == shards.num_requests(DAY)
    assert m["dropped"]["total"] == 0
    assert m["slot_fill_rate"] == {"rank_pos": 0.6, "rank_neg": 0.15, "coarse_neg": 0.05, "prerank_neg": 0.5}
    fp = m["source_fingerprint"]
    assert set(fp) == {f"all_stage/{DAY}.feather", f"request_id_dict/{DAY}.pkl",
                       f"seq_effective_50_dict/{DAY}.pkl", "others/id_cnt.pkl"}
    assert all(len(v["sha256"]) == 64 and v["size"] > 0 for v in fp.values())
    assert len(shards.fingerprint()) == 16 and shards.fingerprint() == ShardSet(tmp_path / "s").fingerprint()


def test_item_table_keeps_the_latest_features(handmade, tmp_path):
    shards = preprocess(handmade.write(tmp_path / "recflow"), tmp_path / "s", 2, progress=False)
    vid, feats = shards.item_table()
    expected_videos = sorted({15, 10, 11, 12, 13, 14, 16, 17, 18, 19, 30, 31, 32, 40, 41, *range(60, 70)})
    np.testing.assert_array_equal(vid, np.array(expected_videos) + 1)
    np.testing.assert_array_equal(feats[:, 0], vid)
    # Video 32: author 32 in request A, author 7 in the later request B -> B's features.
    row = feats[np.searchsorted(vid, 33)]
    np.testing.assert_array_equal(row, _item(32, 7, upload_base=handmade.UPLOAD_BASE_S))


# ------------------------------------------------------------------ idempotence
def test_idempotent_skip_and_rebuild_on_change(handmade, tmp_path, caplog):
    src = handmade.write(tmp_path / "recflow", days=("2024-01-15", "2024-01-16"))
    out = tmp_path / "s"
    preprocess(src, out, 2, progress=False)
    arr = out / "days" / "2024-01-15" / "items.npy"
    before = arr.stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="lcron"):
        preprocess(src, out, 2, progress=False)
    assert "day 2024-01-15: up to date, skipped" in caplog.text
    assert "day 2024-01-16: up to date, skipped" in caplog.text
    assert arr.stat().st_mtime_ns == before
    # Change one input file of one day: only that day is redone.
    handmade.seq_dict[501][49, 0] = 5
    (src / "seq_effective_50_dict" / "2024-01-16.pkl").write_bytes(
        __import__("pickle").dumps(handmade.for_day(handmade.seq_dict, "2024-01-16")))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="lcron"):
        shards = preprocess(src, out, 2, progress=False)
    assert "day 2024-01-15: up to date, skipped" in caplog.text
    assert "day 2024-01-16: 2 requests" in caplog.text
    assert shards.load_day("2024-01-16")["seq"][0, 49, 0] == 6
    assert shards.load_day("2024-01-15")["seq"][0, 49, 0] == 73
    # The item table mixes a day read back from disk and a fresh one: same as a clean run.
    clean = preprocess(src, tmp_path / "clean", 2, progress=False)
    for x, y in zip(shards.item_table(), clean.item_table()):
        np.testing.assert_array_equal(x, y)


def test_incomplete_day_is_ignored_and_redone(handmade, tmp_path):
    src = handmade.write(tmp_path / "recflow", days=("2024-01-15", "2024-01-16"))
    out = tmp_path / "s"
    preprocess(src, out, 2, progress=False)
    (out / "days" / "2024-01-16" / "manifest.json").unlink()  # as if killed before the manifest
    # The set's completion marker lists that manifest: readers refuse the set, naming it.
    with pytest.raises(DataError, match=r"incomplete: .*2024-01-16/manifest.json is missing.*lcron preprocess"):
        ShardSet(out)
    partial = ShardSet(out, require_complete=False)  # inspection only
    assert partial.days == ["2024-01-15"]
    with pytest.raises(DataError, match="day 2024-01-16 is not complete"):
        partial.load_day("2024-01-16")
    assert preprocess(src, out, 2, progress=False).days == ["2024-01-15", "2024-01-16"]


def test_config_mismatch_and_overwrite(handmade, tmp_path):
    src = handmade.write(tmp_path / "recflow")
    out = tmp_path / "s"
    preprocess(src, out, 2, progress=False)
    with pytest.raises(OutputExistsError, match=r"different setting/config .*existing: setting 'two_stage'.*"
                                                r"requested: setting 'three_stage'"):
        preprocess(src, out, 3, progress=False)
    with pytest.raises(OutputExistsError, match="tz_offset_hours 8"):
        preprocess(src, out, 2, tz_offset_hours=0, progress=False)
    shards = preprocess(src, out, 3, overwrite=True, progress=False)
    assert shards.setting.name == "three_stage" and shards.load_day(DAY)["items"].shape == (2, 50, 8)


def test_refuses_a_non_shard_folder(handmade, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(OutputExistsError, match="not empty and is not a shard set"):
        preprocess(handmade.write(tmp_path / "recflow"), out, 2, overwrite=True, progress=False)
    assert (out / "precious.txt").read_text() == "keep me"


def test_bad_arguments(handmade, tmp_path):
    src = handmade.write(tmp_path / "recflow")
    with pytest.raises(ConfigError, match="no built-in setting with 4 stages"):
        preprocess(src, tmp_path / "s", 4, progress=False)
    with pytest.raises(ConfigError, match="tz_offset_hours"):
        preprocess(src, tmp_path / "s", 2, tz_offset_hours=99, progress=False)
    with pytest.raises(DataError, match="outside the available range"):
        preprocess(src, tmp_path / "s", 2, days="2024-02-01", progress=False)
    with pytest.raises(ConfigError, match=r"max_missing_fraction must be in \[0, 1\], got 2"):
        preprocess(src, tmp_path / "s", 2, max_missing_fraction=2, progress=False)


def test_setting_file(handmade, tmp_path):
    f = tmp_path / "mine.json"
    f.write_text(json.dumps({"name": "two_stage_25_10", "base": "two_stage", "quotas": [25, 10]}))
    shards = preprocess(handmade.write(tmp_path / "recflow"), tmp_path / "s", f, progress=False)
    assert shards.setting.quotas == (25, 10) and shards.setting.name == "two_stage_25_10"


# ------------------------------------------------------------------ loader
def test_shardset_errors(handmade, tmp_path):
    with pytest.raises(DataError, match="dataset.json .* is missing"):
        ShardSet(tmp_path)
    out = tmp_path / "s"
    preprocess(handmade.write(tmp_path / "recflow"), out, 2, progress=False)
    s = ShardSet(out)
    assert s.select_days(None) == [DAY] and s.select_days(DAY) == [DAY]
    with pytest.raises(DataError, match="outside the available range"):
        s.select_days("2024-01-16")
    (out / "days" / DAY / "label.npy").unlink()
    with pytest.raises(DataError, match="label.npy: shard array is missing"):
        s.load_day(DAY)
    meta = json.loads((out / "dataset.json").read_text())
    meta["format_version"] = 99
    (out / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="format_version 99; this lcron reads format_version 1"):
        ShardSet(out)


def test_load_without_mmap(handmade, tmp_path):
    shards = preprocess(handmade.write(tmp_path / "recflow"), tmp_path / "s", 2, progress=False)
    a = shards.load_day(DAY, mmap=False)
    assert not isinstance(a["items"], np.memmap) and a["items"].flags.writeable


# ------------------------------------------------------------------ generated data
@pytest.mark.parametrize("fixture", ["tiny_shards_2", "tiny_shards_3"])
def test_generator_output_invariants(fixture, request):
    shards = request.getfixturevalue(fixture)
    st = shards.setting
    assert len(shards.days) == 3
    for day in shards.days:
        a = shards.load_day(day)
        r = a["request_id"].shape[0]
        assert r == shards.num_requests(day) == 60
        assert a["items"].shape == (r, st.list_size, 8)
        valid = a["mask"].astype(bool)
        assert (a["items"][~valid] == 0).all() and (a["label"][~valid] == 0).all()
        assert (a["items"][valid][:, :5] > 0).all()  # shifted ids
        top = a["label"][:, : st.group_size][valid[:, : st.group_size]]
        assert ((top >= 21) & (top <= 30)).all()
        for g, group in enumerate(st.groups[1:], start=1):
            sl = slice(g * st.group_size, (g + 1) * st.group_size)
            assert (a["label"][:, sl][valid[:, sl]] == st.group_labels[group]).all()
        # Slots of a group are filled from the left.
        m = valid.reshape(r, len(st.groups), st.group_size)
        assert (np.diff(m.astype(int), axis=2) <= 0).all()
        # Sequence padding is zero, valid steps are last.
        sm = a["seq_mask"].astype(bool)
        assert (a["seq"][~sm] == 0).all() and (a["seq"][sm] > 0).all()
        assert (np.diff(sm.astype(int), axis=1) >= 0).all()
        ctx = a["context"]
        assert ((ctx[:, 0] >= 1) & (ctx[:, 0] <= 7)).all() and ((ctx[:, 1] >= 1) & (ctx[:, 1] <= 24)).all()
    vid, feats = shards.item_table()
    assert (np.diff(vid) > 0).all() and feats.shape == (vid.shape[0], 8)
    assert os.path.isfile(shards.root / "item_table" / "manifest.json")
