"""The run report (HTML/Markdown/JSON agree), its inputs (loss logs, learned weights,
provenance, serving.json), escaping, the CLI function, and compare on real evaluation outputs."""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import platform
import re
import shutil
import struct
from types import SimpleNamespace

import pytest

from lcron.compare import compare
from lcron.errors import ConfigError, DataError
from lcron.evaluate import evaluate
from lcron.render import Section, Table, format_cell, markdown_table, render_html
from lcron.report import RUN_RECORD_FILES, add_report_arguments, build_report, copy_run_record, run_report
from lcron.run_folder import read_train_logs
from lcron.evaluation.serving_results import load_serving, serving_metric_means
from lcron.train import TrainConfig, train


@pytest.fixture(scope="module")
def evaluated(tiny_shards_2, tmp_path_factory):
    base = tmp_path_factory.mktemp("report")
    run = base / "run"
    train(tiny_shards_2, run, TrainConfig(method="bce", batch_size=16, seeds=(1, 2), compile=False, day_snapshots=True),
          progress=False, max_steps_per_day=1)
    res = evaluate(run, compile=False, progress=False, batch_size=64)
    paths = build_report(run)
    return SimpleNamespace(run=run, res=res, paths=paths, base=base)


def _md_tables(md: str) -> dict[str, list[list[str]]]:
    """Markdown tables keyed by the bold title line above them: header + rows as cell texts."""
    out, lines = {}, md.splitlines()
    for i, line in enumerate(lines):
        m = re.fullmatch(r"\*\*(.+)\*\*", line)
        if m and i + 2 < len(lines) and lines[i + 2].startswith("|"):
            rows, j = [], i + 2
            while j < len(lines) and lines[j].startswith("|"):
                rows.append([c.strip() for c in re.split(r"(?<!\\)\|", lines[j].strip())[1:-1]])
                j += 1
            out[m.group(1)] = [rows[0]] + rows[2:]
    return out


def test_format_cell_hand_checked():
    assert format_cell({"mean": 0.123456, "std": 0.01}) == "0.123 ± 0.010"  # two significant digits of the std
    assert format_cell({"mean": 0.5, "std": 0.35}) == "0.50 ± 0.35"
    assert format_cell({"mean": 0.123456, "std": 1e-6}) == "0.1235 ± 0.0000"  # never more than 4 decimals
    assert format_cell({"mean": 0.123456, "std": 0.0}) == "0.1235 ± 0.0000"
    assert format_cell({"mean": 12.3456, "std": 3.2}) == "12.3 ± 3.2"
    assert format_cell({"mean": 0.5, "std": None}) == "0.5000"
    assert format_cell({"mean": None, "std": None}) == "n/a"
    assert format_cell({"low": -0.01, "high": 0.02}) == "[-0.0100, +0.0200]"
    assert format_cell(3) == "3" and format_cell(0.25) == "0.2500" and format_cell(None) == "n/a"
    assert format_cell(39.3) == "39.30" and format_cell(1234.5678) == "1234.6"
    assert format_cell(True) == "yes" and format_cell([0.5, None]) == "0.5000, n/a"


def assert_json_matches_markdown(paths) -> None:
    """Every table of report.json is the Markdown table of the same title, cell by cell."""
    doc = json.loads(paths["json"].read_text())
    md_tables = _md_tables(paths["markdown"].read_text())
    for tid, tab in doc["tables"].items():
        md = md_tables[tab["title"]]
        assert md[0] == tab["columns"], tid
        assert len(md) - 1 == len(tab["rows"]), tid
        best = {tuple(b) for b in tab["best"]}
        for i, row in enumerate(tab["rows"]):
            expected = [format_cell(v).replace("|", "\\|") for v in row]
            expected = [f"**{t}**" if (i, j) in best else t for j, t in enumerate(expected)]
            assert md[i + 1] == expected, (tid, i)


def test_report_files_and_json_matches_markdown(evaluated):
    paths = evaluated.paths
    for key in ("html", "markdown", "json", "funnel", "quota_sweep", "loss_curves"):
        assert paths[key].is_file(), key
    doc = json.loads(paths["json"].read_text())
    assert doc["kind"] == "lcron-report" and doc["method"] == "bce"
    assert {"config", "metrics", "funnel", "quota_sweep", "training", "provenance"} <= set(doc["tables"])
    assert_json_matches_markdown(paths)


def test_report_numbers_are_the_evaluation_numbers(evaluated):
    doc = json.loads(evaluated.paths["json"].read_text())
    metrics = json.loads((evaluated.run / "eval" / "metrics.json").read_text())["metrics"]
    rows = doc["tables"]["metrics"]["rows"]
    assert [r[1] for r in rows] == ["joint_recall", "recall_at_10_m/retrieval", "recall_at_10_m/prerank",
                                    "ndcg_at_10/retrieval", "ndcg_at_10/prerank"]
    for label, key, cell, n, per_seed in rows:
        assert cell == {"mean": metrics[key]["mean"], "std": metrics[key]["std"]}
        assert n == 2 and per_seed == metrics[key]["per_seed"]
    funnel = doc["tables"]["funnel"]["rows"]
    assert [r[0] for r in funnel[1:]] == ["retrieval", "prerank"]
    assert funnel[2][2]["mean"] == metrics["funnel/gt_after/prerank"]["mean"]
    shares = [r[3]["mean"] for r in funnel[1:]]
    assert sum(shares) == pytest.approx(1.0)
    sweep = doc["tables"]["quota_sweep"]["rows"]
    own = [r for r in sweep if r[1] is True]
    assert len(own) == 1 and own[0][0] == "30,20" and own[0][5]["mean"] == metrics["joint_recall"]["mean"]
    # counts print as integers (10 GT items per request), mean counts with 2 decimals, not 4
    md = evaluated.paths["markdown"].read_text()
    scored = sweep[0][2]
    assert isinstance(scored, float) and f"| {sweep[0][0]} | no | {scored:.2f} |" in md
    assert funnel[0][2] == 10 and "| candidates (GT per request) | n/a | 10 | n/a |" in md


def test_html_is_self_contained_with_decodable_plots(evaluated):
    page = evaluated.paths["html"].read_text()
    assert "<style>" in page and "<script" not in page and "<link" not in page
    srcs = re.findall(r'<img [^>]*src="([^"]+)"', page)
    assert len(srcs) == 3
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        png = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
        width, height = struct.unpack(">II", png[16:24])
        assert width > 300 and height > 200
    for sid in ("config", "metrics", "funnel", "quota-sweep", "training-loss", "provenance"):
        assert f'<section id="{sid}">' in page


def test_escaping():
    tab = Table("t", "A <table> & more", ["col|1", "<b>"], [["<script>alert(1)</script>", "a|b"]])
    page = render_html("<title>", [Section("s", "S & <h>", text=["<i>x</i>"], tables=[tab])])
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;i&gt;x&lt;/i&gt;" in page and "A &lt;table&gt; &amp; more" in page
    md = markdown_table(tab)
    assert "col\\|1" in md and "a\\|b" in md


def test_training_loss_curves_from_the_logs(evaluated, tiny_shards_2):
    curves = read_train_logs(evaluated.run, [1, 2])
    assert list(curves)[0] == "total"
    assert {"single/retrieval", "single/prerank"} <= set(curves)
    for seed in (1, 2):
        log = [json.loads(x) for x in (evaluated.run / f"seed-{seed}" / "train_log.jsonl").read_text().splitlines()]
        steps, values = curves["total"][f"seed {seed}"]
        assert steps == [r["step"] for r in log] and values == [r["total"] for r in log]
    doc = json.loads(evaluated.paths["json"].read_text())
    summary = json.loads((evaluated.run / "seed-1" / "summary.json").read_text())
    assert doc["tables"]["training"]["rows"][0][:4] == ["seed 1", summary["steps"], summary["requests"],
                                                        summary["final_loss"]]
    total, dropped = summary["requests_in_days"], summary["dropped_requests"]
    days = json.loads((evaluated.run / "run.json").read_text())["days"]
    assert dropped == sum(tiny_shards_2.num_requests(d) % 16 for d in days) > 0 and doc["tables"]["training"]["rows"][0][6] == (
        f"{dropped} of {total} ({100 * dropped / total:.1f}%)")
    assert "loss_weights" not in doc["tables"]  # BCE learns no loss weights


def test_learned_weights_and_provenance(evaluated, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(evaluated.run, run, ignore=shutil.ignore_patterns("report"))
    for seed, w in ((1, 0.9), (2, 1.1)):
        path = run / f"seed-{seed}" / "summary.json"
        summary = json.loads(path.read_text())
        summary["learned_weights"] = {"log_w.retrieval": w, "log_w.prerank": 2 * w}
        path.write_text(json.dumps(summary))
    paths = build_report(run, out=tmp_path / "rep")
    doc = json.loads(paths["json"].read_text())
    assert doc["tables"]["loss_weights"]["rows"] == [["log_w.retrieval", 0.9, 1.1], ["log_w.prerank", 1.8, 2.2]]
    assert "| log_w.prerank | 1.8000 | 2.2000 |" in paths["markdown"].read_text()
    prov = doc["provenance"]
    assert prov["packages"]["torch"] and prov["packages"]["numpy"] and prov["packages"]["pyarrow"]
    assert prov["python"] == platform.python_version()
    assert prov["date_utc"].endswith("Z")
    stamp = dt.datetime.fromisoformat(prov["date_utc"].replace("Z", "+00:00"))
    assert stamp.utcoffset() == dt.timedelta(0)
    assert prov["data_fingerprint"] == json.loads((run / "eval" / "metrics.json").read_text())["data_fingerprint"]


def test_streaming_section(evaluated, tmp_path):
    days = json.loads((evaluated.run / "run.json").read_text())["days"]
    ev = evaluate(evaluated.run, out=tmp_path / "stream", streaming=True, compile=False, progress=False,
                  batch_size=64)
    paths = build_report(evaluated.run, eval_dir=tmp_path / "stream", out=tmp_path / "rep")
    rows = json.loads(paths["json"].read_text())["tables"]["streaming"]["rows"]
    assert [r[0] for r in rows] == ev["days"] + ["average"]
    assert [r[1] for r in rows[:-1]] == days  # each test day scored by the model after the day before
    assert rows[-1][3]["mean"] == ev["metrics"]["joint_recall"]["mean"]


def test_missing_evaluation_and_cli(evaluated, tmp_path, capsys):
    bare = tmp_path / "bare"
    shutil.copytree(evaluated.run, bare, ignore=shutil.ignore_patterns("eval", "report"))
    with pytest.raises(DataError, match="metrics.json"):
        build_report(bare)
    parser = argparse.ArgumentParser()
    add_report_arguments(parser)
    assert run_report(parser.parse_args([str(evaluated.run), "--out", str(tmp_path / "one")])) == 0
    assert str(tmp_path / "one" / "report.html") in capsys.readouterr().out
    with pytest.raises(ConfigError, match="--eval"):
        run_report(parser.parse_args([str(evaluated.run), str(bare), "--eval", str(evaluated.run / "eval")]))


def test_run_record_holds_what_the_report_reads_and_no_weights(evaluated, tmp_path):
    """copy_run_record: run.json and each seed's summary and train log, byte for byte, no
    model file; the report built from it has the same tables as the one from the run folder
    (the pipeline's report step reads only this record)."""
    record = tmp_path / "record"
    copied = copy_run_record(evaluated.run, record)
    names = sorted(str(p.relative_to(record)) for p in record.rglob("*") if p.is_file())
    assert names == sorted(str(p.relative_to(record)) for p in copied)
    assert names == ["run.json"] + [f"seed-{s}/{f}" for s in (1, 2) for f in sorted(RUN_RECORD_FILES)]
    assert all((record / n).read_bytes() == (evaluated.run / n).read_bytes() for n in names)
    assert list(evaluated.run.rglob("*.pt")) and not list(record.rglob("*.pt"))
    paths = build_report(record, evaluated.run / "eval", tmp_path / "report")
    assert json.loads(paths["json"].read_text())["tables"] == json.loads(evaluated.paths["json"].read_text())["tables"]
    assert paths["loss_curves"].read_bytes() == evaluated.paths["loss_curves"].read_bytes()


def test_run_record_refuses_an_unfinished_run_and_its_own_folder(evaluated, tmp_path):
    with pytest.raises(ConfigError, match="into the run folder itself"):
        copy_run_record(evaluated.run, evaluated.run / ".")
    unfinished = tmp_path / "unfinished"
    shutil.copytree(evaluated.run, unfinished, ignore=shutil.ignore_patterns("eval", "report"))
    for marker in unfinished.glob("_complete-*.json"):
        marker.unlink()
    (unfinished / "seed-2" / "summary.json").unlink()  # as if training stopped during seed 2
    with pytest.raises(DataError, match="lcron train"):
        copy_run_record(unfinished, tmp_path / "record")
    assert not (tmp_path / "record").exists()


def test_compare_reads_real_evaluations(evaluated, tmp_path):
    """The run against a copy of its own evaluation: same requests, difference exactly 0."""
    other = tmp_path / "copy" / "run-copy" / "eval"
    shutil.copytree(evaluated.run / "eval", other)
    res = compare([evaluated.run, tmp_path / "copy"], tmp_path / "cmp", bootstrap=200)
    rows = res["settings"]["two_stage"]["rows"]
    assert len(rows) == 2 and rows[0]["label"] != rows[1]["label"]
    for r in rows:
        assert r["paired"]["n_requests"] == evaluated.res["requests"]["evaluated"]
        assert (r["paired"]["mean_diff"], r["paired"]["ci_low"], r["paired"]["ci_high"]) == (0.0, 0.0, 0.0)
        assert r["values"]["joint_recall"] == {**evaluated.res["metrics"]["joint_recall"]}


# --------------------------------------------------------------------------- the serving section
def serving_doc(run_dir, *, k1=(100, 500), index=None, day="2024-01-15", setting="two_stage",
                stages=("retrieval", "prerank"), e2e=None) -> dict:
    """A serving.json written by hand: per-seed values [0.5, 0.7] everywhere except ``e2e``
    ({k1: [seed values]}); index recall only for a non-flat ``index``."""
    from lcron.evaluation.results import summarize_seeds as summarize

    index = index or {"kind": "flat", "items": 300, "ntotal": 300, "dim": 32, "options": {}}
    results = {"gt_in_corpus": summarize([0.9, 1.0])}
    for k in k1:
        res = {"recall_retrieval": summarize([0.5, 0.7])}
        for s in stages[1:]:
            res[f"recall_after/{s}"] = summarize([0.3, 0.5])
        res["joint_recall"] = summarize((e2e or {}).get(k, [0.3, 0.5]))
        if index["kind"] != "flat":
            res["index_recall"] = summarize([0.95, 1.0])
        results[str(k)] = res
    return {"kind": "lcron-serving-evaluation", "format_version": 2, "run_dir": str(run_dir), "method": "bce",
            "setting": setting, "stage_names": list(stages), "later_quotas": [20] if len(stages) == 2 else [30, 20],
            "shards": "shards", "day": day, "requests": 60, "evaluated": 58, "skipped_no_gt": 2, "seeds": [1, 2],
            "k1": list(k1), "k1_requested": list(k1), "index": index, "device": "cpu", "tie_seed": 0,
            "notes": ["a note <b>"], "results": results, "per_seed": {},
            "timing": {"1": {"requests_per_s": 100.0}, "2": {"requests_per_s": 300.0}}}


def test_serving_metric_means_hand_checked():
    doc = serving_doc("r", k1=(100,), stages=("retrieval", "prerank", "rank"),
                      index={"kind": "hnsw", "items": 9, "options": {"hnsw_m": 32}}, e2e={100: [0.2, 0.4]})
    doc["results"]["100"]["recall_after/rank"] = doc["results"]["100"]["joint_recall"]
    doc["results"]["gt_in_corpus"] = {"mean": float("nan"), "std": None, "n": 0, "per_seed": []}
    assert serving_metric_means(doc) == pytest.approx({
        "serving/recall_retrieval@K1=100": 0.6, "serving/recall_after/prerank@K1=100": 0.4,
        "serving/joint_recall@K1=100": 0.3, "serving/index_recall@K1=100": 0.975})  # NaN left out, rank = e2e


def test_report_serving_section_from_the_serving_folder(evaluated, tmp_path):
    folder = tmp_path / "serving"
    folder.mkdir()
    (folder / "serving.json").write_text(json.dumps(serving_doc(evaluated.run, e2e={500: [0.25, 0.75]})))
    paths = build_report(evaluated.run, out=tmp_path / "rep", serving_dir=folder)
    doc = json.loads(paths["json"].read_text())
    tab = doc["tables"]["serving"]
    assert tab["columns"] == ["K1", "GT in corpus", "recall after retrieval (top-K1)",
                              "end-to-end recall (after prerank)", "n"]
    assert [r[0] for r in tab["rows"]] == [100, 500] and [r[4] for r in tab["rows"]] == [2, 2]
    # [0.25, 0.75]: mean 0.5, sample std sqrt((0.25² + 0.25²) / 1) = sqrt(0.125)
    assert tab["rows"][1][3] == {"mean": 0.5, "std": pytest.approx(0.125 ** 0.5, rel=1e-12)}
    md = paths["markdown"].read_text()
    assert "| 500 | 0.950 ± 0.071 | 0.60 ± 0.14 | 0.50 ± 0.35 | 2 |" in md
    setup = dict((r[0], r[1]) for r in doc["tables"]["serving_setup"]["rows"])
    assert setup["index"] == "flat (exact inner product)" and setup["requests evaluated"] == 58
    assert setup["requests/s (retrieval + scoring, mean over seeds)"] == 200.0
    assert setup["file"] == str(folder / "serving.json")
    assert doc["serving"]["metrics"]["serving/joint_recall@K1=500"] == 0.5
    assert doc["serving"]["k1"] == [100, 500]
    page = paths["html"].read_text()
    assert '<section id="serving">' in page and "Note: a note &lt;b&gt;" in page
    assert_json_matches_markdown(paths)  # every table, the serving ones included


def test_serving_json_from_before_the_rename_reads_as_joint_recall(evaluated, tmp_path):
    """A serving.json of format 1 calls the end-to-end recall ``recall_e2e``: it is read as
    ``joint_recall`` (lcron.evaluation.serving_results.with_current_names), in the results
    and per seed, by the report as by lcron compare (tests/test_compare.py); the file is left as it is."""
    old = serving_doc(evaluated.run, e2e={500: [0.25, 0.75]})
    old["format_version"] = 1
    for k in ("100", "500"):
        old["results"][k]["recall_e2e"] = old["results"][k].pop("joint_recall")
    old["per_seed"] = {"1": {"500": {"recall_retrieval": 0.5, "recall_e2e": 0.25}}}
    folder = tmp_path / "serving"
    folder.mkdir()
    text = json.dumps(old)
    (folder / "serving.json").write_text(text)
    doc = load_serving(folder / "serving.json")
    assert "recall_e2e" not in doc["results"]["500"] and doc["results"]["500"]["joint_recall"]["mean"] == 0.5
    assert doc["per_seed"]["1"]["500"] == {"recall_retrieval": 0.5, "joint_recall": 0.25}
    assert serving_metric_means(doc)["serving/joint_recall@K1=500"] == 0.5
    paths = build_report(evaluated.run, out=tmp_path / "rep", serving_dir=folder)
    rep = json.loads(paths["json"].read_text())
    assert rep["tables"]["serving"]["rows"][1][3] == {"mean": 0.5, "std": pytest.approx(0.125 ** 0.5, rel=1e-12)}
    assert rep["serving"]["metrics"]["serving/joint_recall@K1=500"] == 0.5
    assert (folder / "serving.json").read_text() == text


def test_report_serving_beside_metrics_and_absent_without(evaluated, tmp_path):
    assert "serving" not in json.loads(evaluated.paths["json"].read_text())["tables"]
    assert '<section id="serving">' not in evaluated.paths["html"].read_text()
    run = tmp_path / "run"
    shutil.copytree(evaluated.run, run, ignore=shutil.ignore_patterns("report"))
    index = {"kind": "ivf", "items": 300, "nlist": 4, "nprobe": 2, "options": {}}
    (run / "eval" / "serving.json").write_text(json.dumps(serving_doc(run, index=index)))
    empty = tmp_path / "skipped"
    empty.mkdir()  # a serving folder without serving.json (the step was off): the evaluation folder is used
    paths = build_report(run, out=tmp_path / "rep", serving_dir=empty)
    doc = json.loads(paths["json"].read_text())
    assert doc["tables"]["serving"]["columns"][-1] == "index recall vs exact"
    assert doc["tables"]["serving"]["rows"][0][-1] == {"mean": 0.975, "std": pytest.approx(0.0353553, abs=1e-6)}
    setup = dict((r[0], r[1]) for r in doc["tables"]["serving_setup"]["rows"])
    assert setup["index"] == "ivf (nlist 4, nprobe 2)"


def test_report_serving_errors(evaluated, tmp_path):
    folder = tmp_path / "s"
    folder.mkdir()
    (folder / "serving.json").write_text(json.dumps({"kind": "something-else"}))
    with pytest.raises(DataError, match="not an lcron serving evaluation"):
        build_report(evaluated.run, out=tmp_path / "r1", serving_dir=folder)
    three = serving_doc(evaluated.run, setting="three_stage", stages=("retrieval", "prerank", "rank"))
    (folder / "serving.json").write_text(json.dumps(three))
    with pytest.raises(DataError, match="three_stage"):
        build_report(evaluated.run, out=tmp_path / "r2", serving_dir=folder)
    broken = serving_doc(evaluated.run)
    del broken["results"]["500"]
    (folder / "serving.json").write_text(json.dumps(broken))
    with pytest.raises(DataError, match=r"lacks the field\(s\) \['500'\]"):
        build_report(evaluated.run, out=tmp_path / "r3", serving_dir=folder)
    parser = argparse.ArgumentParser()
    add_report_arguments(parser)
    with pytest.raises(DataError, match="no serving.json"):
        run_report(parser.parse_args([str(evaluated.run), "--serving", str(tmp_path / "nothing")]))


def test_report_and_compare_do_not_replace_other_outputs_silently(evaluated, tmp_path):
    """Like every step: another run's report (another comparison) in --out is refused unless --overwrite;
    the same inputs render again."""
    from lcron.errors import OutputExistsError

    other = tmp_path / "other"
    shutil.copytree(evaluated.run, other, ignore=shutil.ignore_patterns("report"))
    out = tmp_path / "rep"
    build_report(evaluated.run, out=out)
    build_report(evaluated.run, out=out)  # the same run again: refreshed
    with pytest.raises(OutputExistsError, match=r"holds a report of other inputs.*--overwrite"):
        build_report(other, out=out)
    assert json.loads((out / "report.json").read_text())["run_dir"] == str(evaluated.run)
    assert json.loads((build_report(other, out=out, overwrite=True)["json"]).read_text())["run_dir"] == str(other)
    cmp = tmp_path / "cmp"
    compare([evaluated.run, other], cmp, bootstrap=20)
    compare([other, evaluated.run], cmp, bootstrap=20)  # the same inputs (order does not matter)
    with pytest.raises(OutputExistsError, match=r"holds a comparison of other inputs"):
        compare([evaluated.run], cmp, bootstrap=20)
    assert compare([evaluated.run], cmp, bootstrap=20, overwrite=True)["inputs"]["paths"] == [
        str(evaluated.run.resolve())]


def test_report_serving_setup_states_the_catalogue(evaluated, tmp_path):
    """Cold items, the GT's cold share, the index-recall sample and a subset of the day."""
    from lcron.evaluation.results import summarize_seeds as summarize

    doc = serving_doc(evaluated.run, index={"kind": "ivf", "items": 300, "nlist": 4, "nprobe": 2, "options": {}})
    doc["catalogue"] = {"items": 300, "cold_items": 30, "cold_share": 0.1, "training_days": ["2024-01-13"],
                        "requests_evaluated_of_day": 60, "day_requests": 600}
    doc["results"]["gt_cold"] = summarize([0.25, 0.75])
    doc["per_seed"] = {"1": {"index_recall_requests": 48}, "2": {"index_recall_requests": 48}}
    folder = tmp_path / "serving"
    folder.mkdir()
    (folder / "serving.json").write_text(json.dumps(doc))
    paths = build_report(evaluated.run, out=tmp_path / "rep", serving_dir=folder)
    setup = dict((r[0], r[1]) for r in json.loads(paths["json"].read_text())["tables"]["serving_setup"]["rows"])
    assert setup["cold corpus items (never a candidate on a training day)"] == "30 (10.0%)"
    assert setup["GT items that are cold (mean share)"] == 0.5
    assert setup["requests in the index-recall sample (exact search)"] == 48
    assert setup["subset of the test day"] == "first 60 of 600 requests"
    assert_json_matches_markdown(paths)
