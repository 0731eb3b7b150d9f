"""Degenerate days: no candidates at all, no ground-truth (top-group) item, and the threshold
between a warning with counts and an error (--max-no-gt-fraction)."""

from __future__ import annotations

import numpy as np
import pytest

from lcron import cli
from lcron.data.shards import preprocess
from lcron.data.validate import validate
from lcron.errors import ConfigError, DataError

EMPTY = np.zeros((0, 8), dtype=np.int64)


def _without(handmade, request_ids, labels):
    for rid, entry in handmade.request_id_dict.items():
        if int(rid) in request_ids:
            for lb in labels:
                if lb in entry:
                    entry[lb] = EMPTY.copy()
    return handmade


def test_requests_without_gt_warn_with_counts_below_the_threshold(handmade, tmp_path):
    src = _without(handmade, {502}, ["rank_pos"]).write(tmp_path / "recflow")
    with pytest.warns(UserWarning, match=r"1 of 2 request\(s\) \(50.00%\) have no item of the ground-truth group "
                                         r"rank_pos"):
        shards = preprocess(src, tmp_path / "s", 2, progress=False)
    assert shards.num_requests(shards.days[0]) == 2
    with pytest.raises(DataError, match=r"1 of 2 requests \(50.00%\) have no item of the ground-truth group rank_pos "
                                        r"\(> max_no_gt_fraction 49.00%, --max-no-gt-fraction\)"):
        preprocess(src, tmp_path / "s2", 2, progress=False, max_no_gt_fraction=0.49)


def test_a_day_without_any_gt_item_is_an_error(handmade, tmp_path):
    src = _without(handmade, {501, 502}, ["rank_pos"]).write(tmp_path / "recflow")
    with pytest.raises(DataError, match=r"day 2024-01-15 \(.*\): no request has an item of the ground-truth group "
                                        r"rank_pos \(2 request\(s\)\): no positive to learn from"):
        preprocess(src, tmp_path / "s", 2, progress=False, max_no_gt_fraction=1.0)
    assert not (tmp_path / "s" / "days" / "2024-01-15" / "manifest.json").exists()


def test_a_day_whose_candidate_lists_are_all_empty_is_an_error(handmade, tmp_path, capsys):
    labels = ["realshow", "rerank_pos", "rerank_neg", "rank_pos", "rank_neg", "coarse_neg", "prerank_neg"]
    src = _without(handmade, {501, 502}, labels).write(tmp_path / "recflow")
    with pytest.raises(DataError, match=r"every candidate list is empty \(2 request\(s\), labels "
                                        r"rank_pos, rank_neg, coarse_neg, prerank_neg\): there is nothing to train"):
        preprocess(src, tmp_path / "s", 2, progress=False)
    code = cli.main(["preprocess", "--source", str(src), "--out", str(tmp_path / "s2"), "--stages", "2", "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "every candidate list is empty" in err and "Traceback" not in err


def test_validate_reports_degenerate_days_for_every_day(handmade, tmp_path, capsys):
    src = _without(handmade, {502}, ["rank_pos"]).write(tmp_path / "recflow", days=("2024-01-15", "2024-01-16"))
    summaries = validate(src, max_no_gt_fraction=0.49)
    assert [s["ok"] for s in summaries] == [False, False]
    assert all("no item of the ground-truth group rank_pos" in s["problems"][0] for s in summaries)
    summaries = validate(src)
    assert [s["ok"] for s in summaries] == [True, True]
    assert all(any("1 of 2 request(s) (50.00%) have no item of the ground-truth group rank_pos" in w
                   for w in s["warnings"]) for s in summaries)
    code = cli.main(["validate", "--source", str(src), "--max-no-gt-fraction", "0.49"])
    out, err = capsys.readouterr()
    assert code == 2 and out.count("no item of the ground-truth group rank_pos") == 2
    assert "2 of 2 day(s) failed validation" in err


def test_threshold_out_of_range(handmade, tmp_path):
    with pytest.raises(ConfigError, match="max_no_gt_fraction must be in"):
        preprocess(handmade.write(tmp_path / "recflow"), tmp_path / "s", 2, progress=False, max_no_gt_fraction=2)


@pytest.mark.parametrize("value, expected", [
    (-1, r"label rank_neg: column author_id: 1 negative value\(s\) \(min -1\); ids must be >= 0"),
    (10**9, r"label rank_neg: column author_id: 1 value\(s\) >= id_cnt\['author_id'\]"),
])
def test_an_unknown_author_id_is_refused_not_shifted_to_padding(handmade, tmp_path, capsys, value, expected):
    """Issue 23: an author id of -1 (an upstream "unknown") must not become padding id 0."""
    entry = handmade.request_id_dict[501]
    entry["rank_neg"] = entry["rank_neg"].copy()
    entry["rank_neg"][0, 1] = value
    src = handmade.write(tmp_path / "recflow")
    code = cli.main(["preprocess", "--source", str(src), "--out", str(tmp_path / "s"), "--stages", "2", "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "request_id_dict/2024-01-15.pkl" in err
    import re

    assert re.search(expected, err), err
