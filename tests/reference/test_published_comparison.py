"""bench/published_comparison.py: the patches it applies to the published code, how it runs
and reads a published run, and the statistics of its table (hand-checked numbers)."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("published_comparison", ROOT / "bench" / "published_comparison.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fake_published(root: Path, *, summaries: int = 2) -> Path:
    """A folder shaped like the published code: scripts holding the lines the tool patches,
    which print what the real ones print (a joint recall line) and record their arguments."""
    dc = root / "deep_components"
    dc.mkdir(parents=True)
    (dc / "file_1st.txt").write_text("2024-01-13\n2024-01-14\n")
    train = ("import json, os, sys, time\n"
             + "if False:\n" + "".join("    print(torch.cuda.memory_summary())\n" for _ in range(summaries))
             + "open(os.environ['CALLS'], 'a').write(json.dumps({'script': sys.argv[0], 'args': sys.argv[1:], "
               "'tz': time.localtime(0).tm_hour, 'days': open('deep_components/file_1st.txt').read()}) + '\\n')\n")
    test = ("import os, sys\n"
            "eval_day_list = ['2024-02-04']\n"
            "open(os.environ['CALLS'], 'a').write(repr(eval_day_list) + '\\n')\n"
            "print('metrics\\tbce\\tjoint\\tjoint_recall')\n"
            "print('metrics\\tbce\\tjoint\\t0.7912')\n")
    for stages in (2, 3):
        (dc / f"run_train{stages}.py").write_text(train)
        (dc / f"run_test{stages}.py").write_text(test)
    return root


def test_prepare_patches_the_published_code_and_names_the_training_days(tool, tmp_path):
    src = _fake_published(tmp_path / "src")
    code = tmp_path / "code"
    tool.prepare_published(src, code, ["2024-01-13", "2024-01-14", "2024-01-15"], "2024-01-16")
    assert "memory_summary" not in (code / "deep_components" / "run_train2.py").read_text()
    assert "eval_day_list = ['2024-01-16']" in (code / "deep_components" / "run_test3.py").read_text()
    assert (code / "deep_components" / "file_1st.txt").read_text() == "2024-01-13\n2024-01-14\n2024-01-15\n"
    # the source is left as it was
    assert "2024-02-04" in (src / "deep_components" / "run_test2.py").read_text()


def test_prepare_refuses_published_code_that_changed_under_a_patch(tool, tmp_path):
    src = _fake_published(tmp_path / "src", summaries=1)
    with pytest.raises(SystemExit, match=r"run_train2.py .*2 time\(s\), found 1"):
        tool.prepare_published(src, tmp_path / "code", ["2024-01-13"], "2024-01-14")


def test_prepare_reads_a_bare_git_directory(tool, tmp_path):
    src = _fake_published(tmp_path / "src")
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q", str(src)], check=True)
    subprocess.run([*git, "-C", str(src), "add", "."], check=True)
    subprocess.run([*git, "-C", str(src), "commit", "-qm", "x"], check=True)
    tool.prepare_published(src / ".git", tmp_path / "code", ["2024-01-13"], "2024-01-14")
    assert "eval_day_list = ['2024-01-14']" in (tmp_path / "code" / "deep_components" / "run_test2.py").read_text()


def test_a_published_run_gets_its_own_root_the_time_zone_and_is_read_once(tool, tmp_path, monkeypatch):
    code = tmp_path / "code"
    tool.prepare_published(_fake_published(tmp_path / "src"), code, ["2024-01-13"], "2024-01-14")
    data = tmp_path / "data"
    data.mkdir()
    calls = tmp_path / "calls.jsonl"
    monkeypatch.setenv("CALLS", str(calls))
    root = tmp_path / "runs" / "r1"
    doc = tool.run_published(code, data, root, 2, "lcron", 256, 0.01, threads=1, tz_offset_hours=8)
    assert doc["joint_recall"] == pytest.approx(0.7912)
    train_call, test_call = calls.read_text().splitlines()
    train = json.loads(train_call)
    assert train["script"].endswith("run_train2.py")
    assert f"--root_path={root.resolve()}" in train["args"] and "--batch_size=256" in train["args"]
    assert "--loss_type=lcron" in train["args"] and "--tau=50" in train["args"]
    assert train["tz"] == 8  # time.localtime(0) at UTC+8
    assert train["days"] == "2024-01-13\n"
    assert test_call == "['2024-01-14']"
    assert (root / "data").resolve() == data.resolve()
    assert not (root / "checkpoints").exists()  # weights are not kept
    calls.unlink()
    assert tool.run_published(code, data, root, 2, "lcron", 256, 0.01, threads=1, tz_offset_hours=8) == doc
    assert not calls.exists()  # a finished run is read back, not rerun


def test_a_failed_published_phase_names_its_log(tool, tmp_path, monkeypatch):
    code = tmp_path / "code"
    tool.prepare_published(_fake_published(tmp_path / "src"), code, ["2024-01-13"], "2024-01-14")
    (code / "deep_components" / "run_train2.py").write_text("raise SystemExit(3)\n")
    with pytest.raises(RuntimeError, match=r"published train failed \(3\): see .*train.log"):
        tool.run_published(code, tmp_path, tmp_path / "r1", 2, "bce", 256, 0.01, threads=1, tz_offset_hours=0)


def test_sign_test_is_the_exact_two_sided_binomial(tool):
    assert tool.sign_test(8, 8) == pytest.approx(2 / 256)
    assert tool.sign_test(0, 8) == pytest.approx(2 / 256)
    assert tool.sign_test(6, 8) == pytest.approx(2 * (28 + 8 + 1) / 256)  # 0.289
    assert tool.sign_test(4, 8) == 1.0


def test_compare_hand_checked(tool):
    published = {"bce": [0.60, 0.62], "lcron": [0.74, 0.76, 0.75]}
    ours = {"bce": [0.63, 0.65], "lcron": [0.745, 0.755]}
    cmp = tool.compare(published, ours)
    bce, lcron = cmp["methods"]["bce"], cmp["methods"]["lcron"]
    assert bce["difference"] == pytest.approx(0.03)
    # Welch: se = sqrt(0.0002/2 + 0.0002/2) = 0.01414 -> t = 0.03 / 0.01414 = 2.121
    assert bce["welch_t"] == pytest.approx(0.03 / math.sqrt(0.0002), rel=1e-9)
    assert bce["within_published_range"] is False and lcron["within_published_range"] is True
    assert lcron["difference"] == pytest.approx(0.0)
    assert cmp["mean_difference"] == pytest.approx(0.015)
    assert (cmp["positive"], cmp["n"], cmp["within_range"]) == (1, 2, 1)
    text = tool.table(2, cmp)
    assert "| bce | 0.6100 ± 0.0141 (2) | 0.6400 ± 0.0141 (2) | +0.0300 | +2.1 | no |" in text
    assert "1 of 2 above, sign test p = 1.000" in text


def test_table_only_counts_every_finished_run_and_the_largest_evaluation(tool, tmp_path, capsys):
    out = tmp_path / "cmp"
    for k, value in enumerate([0.70, 0.72, 0.74, 0.76], start=1):
        run = out / "published" / "3stage" / "icc" / f"r{k}"
        run.mkdir(parents=True)
        (run / "result.json").write_text(json.dumps({"joint_recall": value, "seconds": 1.0}))
    (out / "published" / "3stage" / "icc" / "r5").mkdir()  # unfinished: no result.json
    for seeds, values in (("1-2", [0.1, 0.2]), ("1-2-3", [0.73, 0.75, 0.77])):
        folder = out / "ours" / "3stage" / "icc" / f"eval-seeds-{seeds}"
        folder.mkdir(parents=True)
        (folder / "metrics.json").write_text(json.dumps({"metrics": {"joint_recall": {"per_seed": values}}}))
    assert tool.main(["--out", str(out), "--stages", "3", "--methods", "icc", "--table-only"]) == 0
    printed = capsys.readouterr().out
    assert "| icc | 0.7300 ± 0.0258 (4) | 0.7500 ± 0.0200 (3) | +0.0200 |" in printed
    doc = json.loads((out / "result-finished.json").read_text())["settings"]["3"]
    assert doc["methods"]["icc"]["published"] == [0.70, 0.72, 0.74, 0.76] and doc["positive"] == 1
    with pytest.raises(SystemExit):
        tool.main(["--out", str(out)])  # running needs the published code
