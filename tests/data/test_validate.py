"""lcron.data.validate: the dry run reports every day, writes nothing, and lists problems."""

from __future__ import annotations

import copy

import numpy as np
import pyarrow as pa
import pyarrow.feather as feather
import pytest

from lcron.data.recflow import DayProblems
from lcron.data.shards import preprocess
from lcron.data.validate import format_summary, validate
from lcron.errors import DataError

DAYS = ("2024-01-15", "2024-01-16", "2024-01-17")


def _listing(root):
    return sorted((p.relative_to(root).as_posix(), p.stat().st_size, p.stat().st_mtime_ns)
                  for p in root.rglob("*"))


def test_summary_of_a_clean_source(handmade, tmp_path):
    root = handmade.write(tmp_path / "recflow", days=DAYS)
    before = _listing(tmp_path)
    out = validate(root, days="2024-01-15:2024-01-16")
    assert _listing(tmp_path) == before  # writes nothing
    assert [s["day"] for s in out] == ["2024-01-15", "2024-01-16"]
    s = out[0]
    assert s["ok"] and s["problems"] == [] and s["warnings"] == []
    assert s["requests"] == 2 and s["requests_in_all_stage"] == 2 and s["rows"] == len(handmade.all_stage)
    assert s["dropped"]["total"] == 0
    ipl = s["items_per_label"]
    assert set(ipl) == {"realshow", "rerank_pos", "rerank_neg", "rank_pos", "rank_neg", "coarse_neg", "prerank_neg"}
    assert ipl["rank_pos"]["mean"] == 7.0 and ipl["prerank_neg"]["max"] == 11 and ipl["realshow"]["requests_with_items"] == 1


def test_broken_days_are_listed_not_fatal(handmade, tmp_path):
    root = handmade.write(tmp_path / "recflow", days=DAYS)
    # Day 2: an author id beyond id_cnt in an all_stage column preprocessing never reads.
    handmade.all_stage.loc[0, "author_id"] = 50
    handmade.write(tmp_path / "broken", days=("2024-01-16",))
    (root / "all_stage" / "2024-01-16.feather").write_bytes(
        (tmp_path / "broken" / "all_stage" / "2024-01-16.feather").read_bytes())
    # Day 3: truncated pickle.
    p = root / "seq_effective_50_dict" / "2024-01-17.pkl"
    p.write_bytes(p.read_bytes()[:50])
    out = validate(root)
    assert [s["ok"] for s in out] == [True, False, False]
    assert "column author_id: 1 value(s) >= id_cnt['author_id'] = 50" in out[1]["problems"][0]
    assert "seq_effective_50_dict/2024-01-17.pkl: the pickle is truncated" in out[2]["problems"][0]
    text = format_summary(out)
    assert "2024-01-15  ok" in text and "2024-01-16  FAILED" in text and "problem: " in text


def test_dropped_requests_become_warnings(handmade, tmp_path):
    del handmade.request_id_dict[501]
    root = handmade.write(tmp_path / "recflow")
    out = validate(root, max_missing_fraction=0.6)
    assert out[0]["ok"] and out[0]["requests"] == 1
    assert out[0]["dropped"]["missing_request_id_dict"] == 1
    assert "dropped 1 of 2 requests" in out[0]["warnings"][0]
    assert "warning: day 2024-01-15: dropped 1 of 2" in format_summary(out)
    assert not validate(root)[0]["ok"]  # 50% > the default 1%


def test_source_level_problems_raise(handmade, tmp_path):
    root = handmade.write(tmp_path / "recflow")
    with pytest.raises(DataError, match="outside the available range"):
        validate(root, days="2024-03-01")
    (root / "others" / "id_cnt.pkl").unlink()
    with pytest.raises(DataError, match=r"others/id_cnt\.pkl: file is missing"):
        validate(root)


def test_generated_data_validates(tiny_recflow):
    out = validate(tiny_recflow)
    assert len(out) == 3 and all(s["ok"] for s in out)
    assert all(s["requests"] == 60 for s in out)
    # The generator stores 11-20 items for most labels, so the first-10 rule matters.
    assert np.mean([s["items_per_label"]["rank_neg"]["max"] for s in out]) > 10


def test_a_day_broken_in_every_file_names_every_problem(handmade, tmp_path, capsys):
    """all_stage lacks a column, request_id_dict is empty, the sequence pickle is truncated: three problems."""
    root = handmade.write(tmp_path / "recflow", days=DAYS[:2])
    day = DAYS[1]
    table = handmade.for_day(handmade.table(), day)
    feather.write_feather(table.drop_columns(["duration"]), root / "all_stage" / f"{day}.feather")
    (root / "request_id_dict" / f"{day}.pkl").write_bytes(b"")
    seq = root / "seq_effective_50_dict" / f"{day}.pkl"
    seq.write_bytes(seq.read_bytes()[:50])
    out = validate(root, progress=True)
    assert [s["ok"] for s in out] == [True, False]
    problems = out[1]["problems"]
    assert len(problems) == 3, problems
    assert any(f"all_stage/{day}.feather: required column(s) missing: duration" in p for p in problems)
    assert any(f"request_id_dict/{day}.pkl: file is empty" in p for p in problems)
    assert any(f"seq_effective_50_dict/{day}.pkl: the pickle is truncated" in p for p in problems)
    err = capsys.readouterr().err
    assert "validate: 2/2 day" in err and f"{day} FAILED" in err  # progress while it reads


# ------------------------------------------------------------------ every problem, not the first
def _where(root, day=DAYS[0]):
    return f"{root}/all_stage/{day}.feather"


def _float_column(table, name):
    i = table.schema.get_field_index(name)
    return table.set_column(i, name, pa.array(table.column(i).to_numpy().astype(float), type=pa.float64()))


def test_a_missing_column_does_not_hide_a_wrong_dtype(handmade, tmp_path):
    table = _float_column(handmade.table().drop_columns(["province"]), "user_id")
    root = handmade.write(tmp_path / "recflow", all_stage=table)
    problems = validate(root, progress=False)[0]["problems"]
    assert problems == [f"{_where(root)}: required column(s) missing: province",
                        f"{_where(root)}: column user_id has type double; expected an integer type"]
    # preprocess stops at the same stage and names the same two problems, on one line
    with pytest.raises(DayProblems) as exc:
        preprocess(root, tmp_path / "s", 2, progress=False)
    assert exc.value.problems == problems and str(exc.value) == " | ".join(problems)


def test_every_bad_column_of_all_stage_is_listed(handmade, tmp_path):
    """Nulls, out-of-range values in several columns and a user column that changes within a
    request: each named once, in the order nulls, values, not constant."""
    df = handmade.all_stage
    df.loc[3, "user_id"] = -1
    df.loc[4, "video_id"] = 100
    df.loc[5, "rank_neg"] = 2
    df.loc[df.index[df["request_id"] == 501][4], "age"] = 5
    table = handmade.table()
    i = table.schema.get_field_index("device_id")
    mask = np.zeros(table.num_rows, bool)
    mask[2] = True
    table = table.set_column(i, "device_id", pa.array(table.column(i).to_numpy(), type=pa.int64(), mask=mask))
    root = handmade.write(tmp_path / "recflow", all_stage=table)
    problems = validate(root, progress=False)[0]["problems"]
    w = _where(root)
    assert problems == [
        f"{w}: column device_id has 1 null/NaN value(s); expected integers everywhere",
        f"{w}: column user_id: 1 negative value(s) (min -1); ids must be >= 0, e.g. request_id 502",
        f"{w}: column video_id: 1 value(s) >= id_cnt['video_id'] = 100 (max 100); ids must be in [0, 100), "
        "e.g. request_id 502",
        f"{w}: column rank_neg: 1 value(s) other than 0/1 (min 0, max 2), e.g. request_id 502",
        f"{w}: column age is not constant within request_id 501 (1 row(s) disagree with the request's first row)"]
    with pytest.raises(DayProblems) as exc:
        preprocess(root, tmp_path / "s", 2, progress=False)
    assert exc.value.problems == problems


def test_validate_lists_the_problems_of_every_file_of_every_day(handmade, tmp_path):
    root = handmade.write(tmp_path / "recflow", days=DAYS)
    # Day 15: all_stage lacks a column and has an author id out of range; request_id_dict has a
    # negative id in a label no setting keeps and a video id out of range; a sequence has a bad cat1.
    h = copy.deepcopy(handmade)
    h.all_stage.loc[3, "author_id"] = 50
    h.request_id_dict[501]["realshow"][0, 1] = -1
    h.request_id_dict[502]["prerank_neg"][2, 0] = 100
    h.seq_dict[501][49, 3] = 10
    h.write(root, days=(DAYS[0],), all_stage=h.table().drop_columns(["province"]))
    # Day 16: a negative user id in all_stage, a truncated request_id_dict.
    h = copy.deepcopy(handmade)
    h.all_stage.loc[3, "user_id"] = -1
    h.write(root, days=(DAYS[1],))
    rd16 = root / "request_id_dict" / f"{DAYS[1]}.pkl"
    rd16.write_bytes(rd16.read_bytes()[:60])
    out = validate(root, progress=False)
    assert [s["ok"] for s in out] == [False, False, True]
    rd = f"{root}/request_id_dict/{DAYS[0]}.pkl"
    assert out[0]["problems"] == [
        f"{_where(root)}: required column(s) missing: province",
        f"{_where(root)}: column author_id: 1 value(s) >= id_cnt['author_id'] = 50 (max 50); ids must be in [0, 50), "
        "e.g. request_id 502",
        f"{rd}: label realshow: column author_id: 1 negative value(s) (min -1); ids must be >= 0, e.g. request_id 501",
        f"{rd}: label prerank_neg: column video_id: 1 value(s) >= id_cnt['video_id'] = 100 (max 100); ids must be in "
        "[0, 100), e.g. request_id 502",
        f"{root}/seq_effective_50_dict/{DAYS[0]}.pkl: column category_level_one: 1 value(s) >= "
        "id_cnt['category_level_one'] = 10 (max 10); ids must be in [0, 10), e.g. request_id 501"]
    assert out[1]["problems"] == [
        f"{_where(root, DAYS[1])}: column user_id: 1 negative value(s) (min -1); ids must be >= 0, "
        "e.g. request_id 1502",
        f"{root}/request_id_dict/{DAYS[1]}.pkl: the pickle is truncated (pickle data was truncated)"]
    text = format_summary(out)
    assert text.count("problem: ") == 7 and "2024-01-17  ok" in text
