"""lcron.data.validate: the dry run reports every day, writes nothing, and lists problems."""

from __future__ import annotations

import numpy as np
import pyarrow.feather as feather
import pytest

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
    table = handmade.table()
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
