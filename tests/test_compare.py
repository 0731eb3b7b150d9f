"""The cross-run comparison on hand-made evaluation folders: discovery, best-per-column marks,
request matching and the paired bootstrap, one table per setting, the CLI functions."""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from lcron.compare import add_compare_arguments, compare, find_evaluations, paired_bootstrap, run_compare
from lcron.errors import ConfigError, DataError
from lcron.evaluation.results import summarize_seeds

DAY = "2024-01-16"


def make_eval(root: Path, run: str, method: str, joint: np.ndarray, request_ids, *, means=None,
              setting: str = "two_stage", stages=("retrieval", "prerank"), quotas=(30, 20), day: str = DAY,
              folder: str = "eval") -> Path:
    """An evaluation folder written by hand: joint [S, R] per-request recalls; ``means``
    gives the per-seed values of the other columns ({key: [seed values]})."""
    out = root / run / folder
    out.mkdir(parents=True)
    joint = np.asarray(joint, dtype=np.float64)
    seeds = list(range(1, joint.shape[0] + 1))
    keys = ([f"recall_at_10_m/{s}" for s in stages] + [f"ndcg_at_10/{s}" for s in stages])
    table = {"joint_recall": summarize_seeds([float(np.nanmean(row)) for row in joint])}
    for k in keys:
        table[k] = summarize_seeds((means or {}).get(k, [0.5] * len(seeds)))
    doc = {"kind": "lcron-evaluation", "method": method, "setting": setting, "stage_names": list(stages),
           "quotas": list(quotas), "seeds": seeds, "days": [day], "run_dir": str(root / run), "metrics": table,
           "data_fingerprint": "fp", "tie_seed": 0, "requests": {"evaluated": joint.shape[1], "skipped": 0},
           "loss_options": {}}
    (out / "metrics.json").write_text(json.dumps(doc))
    np.savez(out / "per_request.npz", request_id=np.asarray(request_ids, dtype=np.int64),
             day=np.full(joint.shape[1], day).astype("U10"), seeds=np.asarray(seeds),
             joint_recall=joint.astype(np.float32))
    return out


@pytest.fixture
def three_methods(tmp_path):
    """A is best end to end; B has the best retrieval recall; C the best prerank NDCG.
    B's requests come in another order and include two requests A never saw."""
    rng = np.random.default_rng(0)
    ids = np.arange(100, 160)
    a = np.clip(0.7 + 0.2 * rng.standard_normal((2, 60)), 0, 1).round(1)
    b = np.clip(a - 0.1 + 0.1 * rng.standard_normal((2, 60)), 0, 1).round(1)
    c = np.clip(a - 0.3, 0, 1)
    perm = rng.permutation(60)
    b_ids = np.r_[ids[perm], [900, 901]]
    b_vals = np.c_[b[:, perm], [[1.0, 1.0], [1.0, 1.0]]]
    make_eval(tmp_path, "runA", "lcron", a, ids,
              means={"recall_at_10_m/retrieval": [0.80, 0.82], "ndcg_at_10/prerank": [0.60, 0.62]})
    make_eval(tmp_path, "runB", "arf", b_vals, b_ids,
              means={"recall_at_10_m/retrieval": [0.90, 0.92], "ndcg_at_10/prerank": [0.61, 0.61]})
    make_eval(tmp_path, "runC", "bce", c, ids,
              means={"recall_at_10_m/retrieval": [0.70, 0.70], "ndcg_at_10/prerank": [0.70, 0.72]})
    return tmp_path, {"a": a, "b": b, "c": c, "perm": perm}


def test_best_per_column_and_paired_differences(three_methods, tmp_path_factory):
    root, data = three_methods
    out = tmp_path_factory.mktemp("cmp")
    res = compare([root / "runA", root / "runB", root / "runC"], out, bootstrap=500, seed=1)
    tab = res["settings"]["two_stage"]
    assert [r["label"] for r in tab["rows"]] == ["lcron", "arf", "bce"]  # sorted by end-to-end recall
    assert tab["reference"] == "lcron"
    assert tab["best"]["joint_recall"] == ["lcron"]
    assert tab["best"]["recall_at_10_m/retrieval"] == ["arf"]
    assert tab["best"]["ndcg_at_10/prerank"] == ["bce"]
    assert tab["best"]["ndcg_at_10/retrieval"] == ["lcron", "arf", "bce"]  # a three-way tie: all marked
    rows = {r["label"]: r for r in tab["rows"]}

    ref = rows["lcron"]["paired"]
    assert (ref["mean_diff"], ref["ci_low"], ref["ci_high"]) == (0.0, 0.0, 0.0)
    assert ref["n_requests"] == 60

    arf = rows["arf"]["paired"]
    assert arf["n_requests"] == 60  # requests 900, 901 are not in A's evaluation
    expected = (data["b"].mean(0) - data["a"].mean(0)).mean()  # matched by request id despite the new order
    assert arf["mean_diff"] == pytest.approx(expected, abs=1e-6)
    assert arf["ci_low"] <= arf["mean_diff"] <= arf["ci_high"] and arf["ci_high"] < 0

    bce = rows["bce"]["paired"]
    assert bce["mean_diff"] == pytest.approx((data["c"].mean(0) - data["a"].mean(0)).mean(), abs=1e-6)
    assert bce["ci_low"] <= bce["mean_diff"] <= bce["ci_high"]

    md = (out / "compare.md").read_text()
    line = next(ln for ln in md.splitlines() if ln.startswith("| arf "))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[2] == "**0.910 ± 0.014**"  # Recall@10@30 (retrieval): arf is best
    assert not cells[1].startswith("**")
    assert cells[-2] == f"[{arf['ci_low']:+.4f}, {arf['ci_high']:+.4f}]" and cells[-1] == "60"
    saved = json.loads((out / "compare.json").read_text())
    assert saved["settings"]["two_stage"]["rows"][1]["paired"] == arf
    page = (out / "compare.html").read_text()
    assert 'src="data:image/png;base64,' in page and "<script" not in page and "http://" not in page
    assert (out / "compare_two_stage.png").read_bytes()[:4] == b"\x89PNG"


def test_paired_bootstrap_properties():
    assert paired_bootstrap(np.full(50, 0.25), 200, seed=3) == (0.25, 0.25, 0.25)
    d = np.random.default_rng(5).normal(0.1, 1.0, size=400)
    mean, lo, hi = paired_bootstrap(d, 2000, seed=0)
    assert mean == pytest.approx(d.mean())
    se = d.std(ddof=1) / np.sqrt(d.size)
    assert lo == pytest.approx(mean - 1.96 * se, abs=0.25 * se) and hi == pytest.approx(mean + 1.96 * se, abs=0.25 * se)
    assert paired_bootstrap(d, 2000, seed=0) == (mean, lo, hi)  # seeded
    # chunking does not change the resamples: one replicate per chunk gives the same interval
    assert paired_bootstrap(d, 300, seed=2, chunk_elements=d.size) == paired_bootstrap(d, 300, seed=2)
    # the same interval by a plain loop over replicates with the same generator
    rng = np.random.default_rng(2)
    loop = [d[rng.integers(0, d.size, size=d.size)].mean() for _ in range(300)]
    assert paired_bootstrap(d, 300, seed=2)[1:] == pytest.approx(tuple(np.percentile(loop, [2.5, 97.5])))
    with pytest.raises(DataError):
        paired_bootstrap(np.array([]), 10)
    with pytest.raises(ConfigError):
        paired_bootstrap(d, 0)


def test_one_table_per_setting_and_setting_filter(three_methods, tmp_path_factory):
    root, data = three_methods
    rng = np.random.default_rng(1)
    make_eval(root, "run3", "lcron", rng.random((3, 20)), np.arange(20), setting="three_stage",
              stages=("retrieval", "prerank", "rank"), quotas=(40, 30, 20))
    res = compare([root], tmp_path_factory.mktemp("all"), bootstrap=50)
    assert sorted(res["settings"]) == ["three_stage", "two_stage"]
    three = res["settings"]["three_stage"]
    assert three["columns"] == ["joint_recall", "recall_at_10_m/retrieval", "recall_at_10_m/prerank",
                                "recall_at_10_m/rank", "ndcg_at_10/retrieval", "ndcg_at_10/prerank", "ndcg_at_10/rank"]
    assert three["rows"][0]["values"]["joint_recall"]["n"] == 3
    only = compare([root], tmp_path_factory.mktemp("one"), setting="three_stage", bootstrap=50)
    assert list(only["settings"]) == ["three_stage"]
    with pytest.raises(ConfigError, match="three_stage, two_stage"):
        compare([root], tmp_path_factory.mktemp("none"), setting="four_stage")


def test_discovery(tmp_path):
    ids = np.arange(5)
    make_eval(tmp_path / "pipeline_root" / "a" / "b", "r1", "bce", np.ones((1, 5)), ids)
    make_eval(tmp_path / "pipeline_root" / "c", "r2", "bce", np.ones((1, 5)), ids, folder="eval-stream")
    (tmp_path / "pipeline_root" / "other").mkdir()
    (tmp_path / "pipeline_root" / "other" / "metrics.json").write_text(json.dumps({"accuracy": 0.9}))
    (tmp_path / "pipeline_root" / "other2").mkdir()
    (tmp_path / "pipeline_root" / "other2" / "metrics.json").write_text("not json")
    found = find_evaluations([tmp_path / "pipeline_root"])
    assert sorted(e.metrics_path.parent.name for e in found) == ["eval", "eval-stream"]
    # the same evaluation named twice (root and run folder) counts once
    again = find_evaluations([tmp_path / "pipeline_root", tmp_path / "pipeline_root" / "a" / "b" / "r1"])
    assert len(again) == 2
    with pytest.raises(DataError, match="not an lcron evaluation"):
        find_evaluations([tmp_path / "pipeline_root" / "other"])
    with pytest.raises(DataError, match="does not exist"):
        find_evaluations([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no complete lcron evaluation"):
        find_evaluations([tmp_path / "empty"])


def test_a_root_scan_leaves_out_unfinished_evaluations_with_a_warning(tmp_path, caplog):
    from lcron import outputs
    from lcron.errors import IncompleteOutputError

    ids = np.arange(5)
    make_eval(tmp_path / "root", "done", "bce", np.ones((1, 5)), ids)
    busy = make_eval(tmp_path / "root", "busy", "lcron", np.ones((1, 5)), ids)
    outputs.begin(busy, "evaluation", "lcron evaluate --model busy")  # an evaluation being (re)written
    notes: list[str] = []
    found = find_evaluations([tmp_path / "root"], notes)
    assert [e.doc["method"] for e in found] == ["bce"]
    assert len(notes) == 1 and str(busy) in notes[0] and "lcron evaluate --model busy" in notes[0]
    assert "left out" in caplog.text
    res = compare([tmp_path / "root"], tmp_path / "cmp", bootstrap=20)
    assert [r["label"] for r in res["settings"]["two_stage"]["rows"]] == ["bce"]
    assert "left out" in (tmp_path / "cmp" / "compare.md").read_text()
    # named directly, an unfinished evaluation is an error, not a silent omission
    with pytest.raises(IncompleteOutputError, match="is incomplete"):
        find_evaluations([busy])
    # a root holding only unfinished evaluations says so
    other = make_eval(tmp_path / "only" / "x", "run", "bce", np.ones((1, 5)), ids)
    outputs.begin(other, "evaluation", "lcron evaluate --model run")
    with pytest.raises(DataError, match=r"no complete lcron evaluation .*\(1 unfinished: left out: "
                                        r"evaluation .*only/x/run/eval is incomplete"):
        find_evaluations([tmp_path / "only"])


def test_repeated_methods_get_distinct_labels_and_html_escapes(tmp_path):
    ids = np.arange(10)
    make_eval(tmp_path, "run-x", "bce", np.full((2, 10), 0.5), ids)
    make_eval(tmp_path, "run-y", "bce", np.full((2, 10), 0.6), ids)
    make_eval(tmp_path, "run-z", "<b>odd</b>", np.full((2, 10), 0.4), ids, day="2024-01-17")
    res = compare([tmp_path], tmp_path / "out", bootstrap=20)
    tab = res["settings"]["two_stage"]
    assert [r["label"] for r in tab["rows"]] == ["bce (run-y)", "bce (run-x)", "<b>odd</b>"]
    odd = tab["rows"][2]["paired"]
    assert odd["n_requests"] == 0 and odd["mean_diff"] is None  # another test day: nothing to pair
    assert any("different test days" in n for n in tab["notes"])
    page = (tmp_path / "out" / "compare.html").read_text()
    assert "&lt;b&gt;odd&lt;/b&gt;" in page and "<b>odd" not in page


def test_cli_functions(three_methods, tmp_path_factory, capsys):
    root, _ = three_methods
    parser = argparse.ArgumentParser()
    add_compare_arguments(parser)
    out = tmp_path_factory.mktemp("cli")
    args = parser.parse_args([str(root / "runA"), str(root / "runB"), "--out", str(out), "--setting", "two_stage",
                              "--bootstrap", "100"])
    assert run_compare(args) == 0
    printed = capsys.readouterr().out
    assert str(out / "compare.html") in printed and str(out / "compare.md") in printed
    assert re.search(r"\| lcron \| \*\*", (out / "compare.md").read_text())


# --------------------------------------------------------------------------- serving columns
def make_serving(folder: Path, run_dir: Path, e2e: dict, *, day: str = DAY, index: str = "flat",
                 setting: str = "two_stage", stages=("retrieval", "prerank"), e2e_key: str = "joint_recall") -> Path:
    """A serving.json written by hand into ``folder``: ``e2e`` = {K1: per-seed end-to-end recalls}
    under ``e2e_key`` (``recall_e2e``: a file written before the rename to ``joint_recall``)."""
    from lcron.evaluation.results import summarize_seeds as summarize

    results = {"gt_in_corpus": summarize([1.0])}
    for k, values in e2e.items():
        results[str(k)] = {"recall_retrieval": summarize([1.0] * len(values)), e2e_key: summarize(values)}
    doc = {"kind": "lcron-serving-evaluation", "run_dir": str(run_dir), "setting": setting,
           "stage_names": list(stages), "day": day, "k1": sorted(e2e), "index": {"kind": index, "items": 300},
           "seeds": [1, 2], "results": results}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "serving.json").write_text(json.dumps(doc))
    return folder / "serving.json"


def test_serving_columns_common_k1_best_marked_and_na(three_methods, tmp_path_factory):
    root, _ = three_methods
    make_serving(root / "runA" / "eval", root / "runA", {100: [0.30, 0.40], 500: [0.50, 0.52]})
    make_serving(root / "runB" / "eval", root / "runB", {100: [0.40, 0.44], 500: [0.45, 0.47], 1000: [0.6, 0.6]},
                 index="hnsw")
    out = tmp_path_factory.mktemp("cmp-serving")
    res = compare([root / "runA", root / "runB", root / "runC"], out, bootstrap=50)
    tab = res["settings"]["two_stage"]
    assert tab["serving_k1"] == [100, 500]  # 1000 only in B's evaluation
    assert tab["serving_columns"] == ["serving/joint_recall@K1=100", "serving/joint_recall@K1=500"]
    assert tab["columns"][-2:] == tab["serving_columns"]
    assert tab["column_titles"][-2:] == ["serving end-to-end recall, K1=100", "serving end-to-end recall, K1=500"]
    assert tab["best"]["serving/joint_recall@K1=100"] == ["arf"]
    assert tab["best"]["serving/joint_recall@K1=500"] == ["lcron"]
    rows = {r["label"]: r for r in tab["rows"]}
    assert rows["lcron"]["values"]["serving/joint_recall@K1=500"]["mean"] == pytest.approx(0.51)
    assert rows["bce"]["values"]["serving/joint_recall@K1=100"] == {"mean": None, "std": None, "n": 0, "per_seed": []}
    assert rows["bce"]["serving_file"] is None and rows["arf"]["serving_file"] == str(root / "runB" / "eval" /
                                                                                      "serving.json")
    notes = " ".join(tab["notes"])
    assert "no serving evaluation for bce" in notes and "left out: 1000" in notes and "different faiss indexes" in notes
    md = (out / "compare.md").read_text()
    header = next(ln for ln in md.splitlines() if ln.startswith("| method "))
    assert "serving end-to-end recall, K1=100 | serving end-to-end recall, K1=500 | seeds (n)" in header
    cells = {ln.split("|")[1].strip(): [c.strip() for c in ln.strip().strip("|").split("|")]
             for ln in md.splitlines() if ln.startswith(("| lcron ", "| arf ", "| bce "))}
    n = len(tab["columns"])
    assert cells["arf"][n - 1:n + 1] == ["**0.420 ± 0.028**", "0.460 ± 0.014"]
    assert cells["lcron"][n - 1:n + 1] == ["0.350 ± 0.071", "**0.510 ± 0.014**"]
    assert cells["bce"][n - 1:n + 1] == ["n/a", "n/a"]
    saved = json.loads((out / "compare.json").read_text())["settings"]["two_stage"]
    assert saved["best"] == tab["best"] and saved["rows"][0]["values"] == tab["rows"][0]["values"]
    assert "<th>serving end-to-end recall, K1=500</th>" in (out / "compare.html").read_text()


def test_serving_json_from_before_the_rename_still_compared(three_methods, tmp_path_factory):
    """serving.json files written before the rename call the end-to-end recall ``recall_e2e``;
    compare reads them as ``joint_recall``, beside files that already do."""
    root, _ = three_methods
    make_serving(root / "runA" / "eval", root / "runA", {100: [0.30, 0.40]}, e2e_key="recall_e2e")
    make_serving(root / "runB" / "eval", root / "runB", {100: [0.40, 0.44]})
    tab = compare([root / "runA", root / "runB"], tmp_path_factory.mktemp("cmp-old-serving"),
                  bootstrap=20)["settings"]["two_stage"]
    assert tab["serving_columns"] == ["serving/joint_recall@K1=100"]
    rows = {r["label"]: r for r in tab["rows"]}
    assert rows["lcron"]["values"]["serving/joint_recall@K1=100"]["mean"] == pytest.approx(0.35)
    assert rows["arf"]["values"]["serving/joint_recall@K1=100"]["mean"] == pytest.approx(0.42)
    assert tab["best"]["serving/joint_recall@K1=100"] == ["arf"]


def test_no_serving_no_serving_columns(three_methods, tmp_path_factory):
    root, _ = three_methods
    tab = compare([root], tmp_path_factory.mktemp("plain"), bootstrap=20)["settings"]["two_stage"]
    assert tab["serving_columns"] == [] and not any(c.startswith("serving/") for c in tab["columns"])
    assert not any("serving" in n for n in tab["notes"])


def test_serving_found_by_run_dir_under_a_pipeline_root(tmp_path):
    """The pipeline layout: the evaluation and the serving artifact are sibling folders; the
    serving.json is matched by run_dir (the model artifact) and test day."""
    root = tmp_path / "kfp"
    model = root / "train" / "model"
    ev = make_eval(root / "evaluate", "evaluation", "lcron", np.full((2, 5), 0.5), np.arange(5), folder="out")
    doc = json.loads((ev / "metrics.json").read_text())
    doc["run_dir"] = str(model)
    (ev / "metrics.json").write_text(json.dumps(doc))
    served = make_serving(root / "serving" / "serving", model, {100: [0.2, 0.3]})
    make_serving(root / "other-day" / "serving", model, {100: [0.9, 0.9]}, day="2024-01-17")  # not a test day
    make_serving(root / "other-run" / "serving", tmp_path / "elsewhere", {100: [0.9, 0.9]})  # another run
    (root / "junk").mkdir()
    (root / "junk" / "serving.json").write_text("not json")
    res = compare([root], tmp_path / "out", bootstrap=20)
    row = res["settings"]["two_stage"]["rows"][0]
    assert row["serving_file"] == str(served)
    assert row["values"]["serving/joint_recall@K1=100"]["mean"] == pytest.approx(0.25)
    # a second serving evaluation of the same run and day: the newest one, with a note
    newer = make_serving(root / "serving-2" / "serving", model, {100: [0.4, 0.4]})
    os.utime(served, (1_000_000, 1_000_000))
    os.utime(newer, (2_000_000, 2_000_000))
    res = compare([root], tmp_path / "out2", bootstrap=20)
    assert res["settings"]["two_stage"]["rows"][0]["serving_file"] == str(newer)
    assert "the newest" in (tmp_path / "out2" / "compare.md").read_text()


def test_serving_of_another_setting_is_refused(tmp_path):
    make_eval(tmp_path, "run", "bce", np.full((1, 5), 0.5), np.arange(5))
    make_serving(tmp_path / "run" / "eval", tmp_path / "run", {100: [0.2]}, setting="three_stage",
                 stages=("retrieval", "prerank", "rank"))
    with pytest.raises(DataError, match="three_stage"):
        compare([tmp_path / "run"], tmp_path / "out", bootstrap=20)


def test_reference_mode_rows_are_marked(tmp_path):
    ids = np.arange(10)
    make_eval(tmp_path, "run-default", "bce", np.full((2, 10), 0.6), ids)
    ref = make_eval(tmp_path, "run-ref", "bce", np.full((2, 10), 0.5), ids)
    doc = json.loads((ref / "metrics.json").read_text())
    doc["reference_quirks"] = True
    (ref / "metrics.json").write_text(json.dumps(doc))
    tab = compare([tmp_path], tmp_path / "out", bootstrap=20)["settings"]["two_stage"]
    assert [(r["label"], r["mode"]) for r in tab["rows"]] == [("bce", "default"), ("bce [reference mode]", "reference")]
    assert any("--reference-quirks" in n for n in tab["notes"])
    assert "bce [reference mode]" in (tmp_path / "out" / "compare.md").read_text()
