"""The ``lcron`` command: exit codes, one-line errors, and the data subcommands end to end."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lcron import cli
from lcron.data.shards import ShardSet


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_help_everywhere(capsys):
    code, out, _ = _run(capsys, "--help")
    assert code == 0 and "preprocess" in out and "validate" in out and "bench" in out
    for cmd in cli.COMMANDS:
        code, out, _ = _run(capsys, cmd.name, "--help")
        assert code == 0 and f"usage: lcron {cmd.name}" in out


def test_usage_error_exit_2(capsys):
    code, _, err = _run(capsys, "preprocess", "--source", "x", "--out", "y")  # neither --stages nor --setting
    assert code == 2 and "one of the arguments --stages --setting is required" in err
    code, _, err = _run(capsys, "no-such-command")
    assert code == 2


def test_console_script_exits_quickly_but_completely(tmp_path):
    """console_main skips the module teardown, not what Python's exit owes: non-daemon threads
    finish, atexit handlers run, buffered output is flushed, and the exit code is the command's."""
    marker = tmp_path / "thread-finished"
    probe = (
        "import atexit, sys, threading, time\n"
        "atexit.register(lambda: print('atexit handler ran'))\n"
        f"threading.Thread(target=lambda: (time.sleep(0.3), open({str(marker)!r}, 'w').close())).start()\n"
        "print('buffered before exit', end='')\n"
        "sys.argv = ['lcron', 'evaluate', '--model', " + repr(str(tmp_path / "no-such-run")) + "]\n"
        "from lcron.cli import console_main\n"
        "console_main()\n"
        "print('never reached')\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "lcron evaluate: error:" in proc.stderr and "no-such-run" in proc.stderr
    assert proc.stdout == "buffered before exitatexit handler ran\n"
    assert marker.exists()


def test_python_dash_m_lcron_help():
    proc = subprocess.run([sys.executable, "-m", "lcron", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "usage: lcron" in proc.stdout
    # Start-up stays light: no torch, pandas or pyarrow behind `lcron --help`.
    probe = ("import sys; from lcron import cli; cli.build_parser(); "
             "print(sorted(m for m in ('torch', 'pandas', 'pyarrow') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "[]"


def test_preprocess_and_validate(handmade, tmp_path, capsys):
    src = handmade.write(tmp_path / "recflow")
    code, out, err = _run(capsys, "preprocess", "--source", str(src), "--out", str(tmp_path / "s"), "--stages", "3",
                          "--quiet")
    assert code == 0, err
    assert "setting three_stage, 1 day(s), 2 requests, N = 50" in out
    assert ShardSet(tmp_path / "s").setting.name == "three_stage"
    code, out, err = _run(capsys, "validate", "--source", str(src), "--days", "2024-01-15")
    assert code == 0 and "2024-01-15  ok" in out


def test_preprocess_with_a_setting_file(handmade, tmp_path, capsys):
    f = tmp_path / "s.yaml"
    f.write_text("name: mine\nbase: three_stage\nquotas: [40, 25, 15]\n")
    code, _, err = _run(capsys, "preprocess", "--source", str(handmade.write(tmp_path / "r")), "--out",
                        str(tmp_path / "s"), "--setting", str(f), "-q")
    assert code == 0, err
    assert ShardSet(tmp_path / "s").setting.quotas == (40, 25, 15)


def test_user_errors_are_one_line_exit_2(handmade, tmp_path, capsys):
    code, out, err = _run(capsys, "preprocess", "--source", str(tmp_path / "missing"), "--out", str(tmp_path / "s"),
                          "--stages", "2")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lcron preprocess: error: ") and "is not a folder" in lines[0]
    src = handmade.write(tmp_path / "recflow")
    code, _, err = _run(capsys, "preprocess", "--source", str(src), "--out", str(tmp_path / "s"), "--stages", "2",
                        "--days", "2024-02-01:2024-02-02", "-q")
    assert code == 2 and "outside the available range 2024-01-15..2024-01-15" in err
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    code, _, err = _run(capsys, "preprocess", "--source", str(src), "--out", str(tmp_path / "s"), "--setting", str(bad))
    assert code == 2 and err.startswith("lcron preprocess: error: setting file") and len(err.strip().splitlines()) == 1


def test_validate_failing_day_exit_2(handmade, tmp_path, capsys):
    src = handmade.write(tmp_path / "recflow")
    p = src / "request_id_dict" / "2024-01-15.pkl"
    p.write_bytes(p.read_bytes()[:40])
    code, out, err = _run(capsys, "validate", "--source", str(src), "-q")  # -q: no progress line on stderr
    assert code == 2
    assert "FAILED" in out and "the pickle is truncated" in out
    assert err.strip() == "lcron validate: error: 1 of 1 day(s) failed validation: 2024-01-15"


def test_dropped_requests_warn_on_one_line(handmade, tmp_path, capsys):
    del handmade.seq_dict[501]
    src = handmade.write(tmp_path / "recflow")
    code, _, err = _run(capsys, "preprocess", "--source", str(src), "--out", str(tmp_path / "s"), "--stages", "2",
                        "--max-missing-fraction", "0.5", "-q")
    assert code == 0
    assert "lcron: warning: day 2024-01-15: dropped 1 of 2 requests" in err


def test_unexpected_exception_exit_1(monkeypatch, capsys):
    def boom(args):
        raise RuntimeError("a bug")

    cmd = next(c for c in cli.COMMANDS if c.name == "validate")
    patched = [cli.Command(c.name, c.help, c.add_arguments, boom) if c is cmd else c for c in cli.COMMANDS]
    monkeypatch.setattr(cli, "COMMANDS", patched)
    code, _, err = _run(capsys, "validate", "--source", "x")
    assert code == 1 and "Traceback" in err and "RuntimeError: a bug" in err


def test_generate_then_preprocess(tmp_path, capsys):
    out = tmp_path / "gen"
    code, stdout, err = _run(capsys, "generate", "--out", str(out), "--num-days", "2", "--requests-per-day", "20",
                             "--users", "30", "--items", "400", "--seed", "3", "-q")
    assert code == 0, err
    assert sorted(p.name for p in (out / "all_stage").iterdir()) == ["2024-01-13.feather", "2024-01-14.feather"]
    code, stdout, err = _run(capsys, "preprocess", "--source", str(out), "--out", str(tmp_path / "s"), "--stages",
                             "2", "--days", "2024-01-14", "-q")
    assert code == 0, err
    s = ShardSet(tmp_path / "s")
    assert s.days == ["2024-01-14"] and s.num_requests("2024-01-14") == 20
    assert json.loads((tmp_path / "s" / "dataset.json").read_text())["source"] == str(out)


@pytest.mark.parametrize("cmd,options", [
    ("bench", ["--full", "--quick", "--json"]),
    ("generate", ["--out", "--num-days", "--start-date", "--requests-per-day", "--users", "--items", "--seed"]),
    ("preprocess", ["--source", "--out", "--stages", "--setting", "--days", "--tz-offset-hours",
                    "--max-missing-fraction", "--overwrite"]),
    ("validate", ["--source", "--days", "--max-missing-fraction"]),
])
def test_subcommand_options(cmd, options, capsys):
    code, out, _ = _run(capsys, cmd, "--help")
    assert code == 0
    missing = [o for o in options if o not in out]
    assert not missing


@pytest.mark.parametrize("where", ["before", "after"])
def test_quiet_silences_every_progress_line(tiny_shards_2, tmp_path, capsys, where):
    """-q before or after the command: train and evaluate print their results, nothing on stderr."""
    run = tmp_path / "run"
    for argv in (["train", "--shards", str(tiny_shards_2.root), "--out", str(run), "--method", "bce",
                  "--batch-size", "16", "--no-compile", "--max-steps-per-day", "1"],
                 ["evaluate", "--model", str(run), "--no-compile", "--overwrite"]):
        argv = ["-q", *argv] if where == "before" else [*argv, "-q"]
        code, out, err = _run(capsys, *argv)
        assert code == 0, err
        assert out.strip()  # the result
        assert [ln for ln in err.splitlines() if not ln.startswith("lcron: warning:")] == [], err
    code, _, err = _run(capsys, "train", "--shards", str(tiny_shards_2.root), "--out", str(run), "--method", "bce",
                        "--batch-size", "16", "--no-compile", "--max-steps-per-day", "1")
    assert code == 0 and "seed 1: complete" in err  # without -q the same command reports on stderr


def test_relative_paths_from_data_to_evaluation(tiny_recflow, tmp_path, capsys, monkeypatch):
    """What a user types: folders relative to the working directory, at every step."""
    import shutil

    shutil.copytree(tiny_recflow, tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    for argv in (["preprocess", "--source", "data", "--out", "work/shards", "--stages", "2"],
                 ["train", "--shards", "work/shards", "--out", "work/run", "--method", "bce", "--batch-size", "16",
                  "--no-compile", "--max-steps-per-day", "1"],
                 ["evaluate", "--model", "work/run"]):
        code, _, err = _run(capsys, *argv, "-q")
        assert code == 0, err
    assert json.loads((tmp_path / "work" / "run" / "eval" / "metrics.json").read_text())["seeds"] == [1]
    code, _, err = _run(capsys, "evaluate", "--model", "work/run")  # the finished evaluation is recognised
    assert code == 0 and "already in" in err


def test_serve_eval_takes_days_like_every_command():
    for flag in ("--days", "--day"):
        args = cli.build_parser(only="serve-eval").parse_args(["serve-eval", "--model", "r", flag, "2024-01-16"])
        assert args.day == "2024-01-16"
    for cmd in ("evaluate", "serve-eval", "preprocess", "validate", "ingest", "train"):
        assert "--days" in cli.build_parser(only=cmd)._subparsers._group_actions[0].choices[cmd].format_help()


def test_preprocess_prefetch_budget(handmade, tmp_path, capsys):
    src = handmade.write(tmp_path / "recflow", days=("2024-01-15", "2024-01-16"))
    code, out, err = _run(capsys, "preprocess", "--source", str(src), "--out", str(tmp_path / "s"), "--stages", "2",
                          "--prefetch-budget-mb", "0", "-q")
    assert code == 0, err
    assert "2 day(s), 4 requests" in out
    code, _, err = _run(capsys, "preprocess", "--source", str(src), "--out", str(tmp_path / "t"), "--stages", "2",
                        "--prefetch-budget-mb", "-1", "-q")
    assert code == 2 and "prefetch_budget_mb must be an integer >= 0" in err
