"""Completion markers, output-folder locks and disk-full fault injection (lcron.outputs).

Each test here fails on the code before markers and locks existed: a half-written output
was accepted by the next step, and two writers of one folder both ran.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import error_line as _error_line, run_cli as _cli
from lcron import atomic, outputs
from lcron.data.shards import ShardSet, preprocess
from lcron.errors import DataError, IncompleteOutputError, OutputLockedError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tiny_shards_2, tmp_path_factory):
    from lcron.train import TrainConfig, train

    run = tmp_path_factory.mktemp("outputs") / "run"
    train(tiny_shards_2, run, TrainConfig(method="bce", batch_size=16, seeds=(1,), compile=False), progress=False,
          max_steps_per_day=1)
    return run


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# ------------------------------------------------------------------ markers
def test_marker_lists_files_and_catches_missing_damaged_and_unfinished(tmp_path):
    folder = tmp_path / "out"
    outputs.begin(folder, "thing", "lcron thing --out X")
    atomic.write_text(folder / "a.txt", "hello")
    with pytest.raises(IncompleteOutputError, match=r"the step writing it did not finish .*"
                                                    r"complete it with: lcron thing --out X"):
        outputs.require_complete(folder, "thing", "thing", "HOW")
    outputs.finish(folder, "thing", [folder / "a.txt"])
    outputs.require_complete(folder, "thing", "thing", "HOW")
    assert not outputs.pending_path(folder, "thing").exists()
    (folder / "a.txt").write_text("hello, longer")
    with pytest.raises(IncompleteOutputError, match=r"a.txt has 13 bytes, 5 when it was written.*HOW"):
        outputs.require_complete(folder, "thing", "thing", "HOW")
    (folder / "a.txt").unlink()
    with pytest.raises(IncompleteOutputError, match=r"a.txt is missing \(listed in _complete-thing.json\)"):
        outputs.require_complete(folder, "thing", "thing", "HOW")
    outputs.marker_path(folder, "thing").write_text("{not json")
    with pytest.raises(IncompleteOutputError, match="completion marker .* is not readable"):
        outputs.require_complete(folder, "thing", "thing", "HOW")


def test_finish_refuses_a_missing_file(tmp_path):
    outputs.begin(tmp_path, "thing", "x")
    with pytest.raises(IncompleteOutputError, match="nope.txt: expected output file is missing"):
        outputs.finish(tmp_path, "thing", ["nope.txt"])
    assert not outputs.marker_path(tmp_path, "thing").exists()


def test_finish_with_a_relative_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = Path("out") / "step"
    folder.mkdir(parents=True)
    (folder / "a.txt").write_text("a")
    (folder / "b.txt").write_text("bb")
    outputs.begin(folder, "thing", "x")
    outputs.finish(folder, "thing", [folder / "a.txt", "b.txt", tmp_path / folder / "a.txt"])
    assert json.loads(outputs.marker_path(folder, "thing").read_text())["files"] == {"a.txt": 1, "b.txt": 2}
    outputs.require_complete(folder, "thing", "thing", "HOW")
    with pytest.raises(ValueError, match="not inside the output folder"):
        outputs.finish(folder, "thing", [tmp_path / "elsewhere.txt"])


def test_legacy_outputs_go_through_the_kind_check(tmp_path):
    outputs.require_complete(tmp_path, "thing", "thing", "HOW", legacy=lambda p: None)
    with pytest.raises(IncompleteOutputError, match="incomplete: seed 2 is missing; complete it with: HOW"):
        outputs.require_complete(tmp_path, "thing", "thing", "HOW", legacy=lambda p: "seed 2 is missing")


def test_a_legacy_shard_set_is_accepted_when_verifiably_complete(tiny_recflow, tmp_path):
    out = preprocess(tiny_recflow, tmp_path / "s", 2, progress=False).root
    outputs.marker_path(out, "shards").unlink()  # as written by lcron before markers
    assert ShardSet(out).days == ["2024-01-13", "2024-01-14", "2024-01-15"]
    (out / "item_table" / "manifest.json").unlink()  # the last file that version wrote
    with pytest.raises(IncompleteOutputError, match="no completion marker and its item table .* is missing"):
        ShardSet(out)


# ------------------------------------------------------------------ locks
def test_second_writer_is_refused_naming_the_holder(tmp_path):
    folder = tmp_path / "out"
    with outputs.output_lock(folder, "lcron train --out out") as lock:
        holder = json.loads(lock.read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        with pytest.raises(OutputLockedError, match=rf"{folder} is being written by another lcron process "
                                                    rf"\(pid {os.getpid()} on host .*, started .*Z, "
                                                    r"command: lcron train --out out\)"):
            with outputs.output_lock(folder, "second"):
                pass
    assert not lock.exists()
    with outputs.output_lock(folder, "third"):  # free again
        pass


def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_warning(tmp_path):
    folder = tmp_path / "out"
    lock = outputs.lock_path(folder)
    lock.write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname(), "started": "2026-01-01T00:00:00Z",
                                "command": "lcron preprocess ..."}))
    with pytest.warns(outputs.OutputWarning, match="taking over the stale lock .*started 2026-01-01T00:00:00Z"):
        with outputs.output_lock(folder, "mine"):
            assert json.loads(lock.read_text())["command"] == "mine"


def test_a_lock_of_another_host_is_not_taken_over(tmp_path):
    folder = tmp_path / "out"
    lock = outputs.lock_path(folder)
    lock.write_text(json.dumps({"pid": 1, "host": "elsewhere.example", "started": "x", "command": "c"}))
    with pytest.raises(OutputLockedError, match=rf"locked by a process on another host .*remove {lock}"):
        with outputs.output_lock(folder, "mine"):
            pass


def test_a_failed_step_leaves_no_empty_folders_behind(tmp_path, tiny_shards_2, capsys):
    deep = tmp_path / "a" / "b" / "c" / "eval"
    with pytest.raises(RuntimeError):
        with outputs.output_lock(deep, "x"):
            raise RuntimeError("the step failed before writing anything")
    assert not (tmp_path / "a").exists() and sorted(tmp_path.iterdir()) == []
    with outputs.output_lock(deep, "y"):  # a step that wrote its output keeps the folders
        deep.mkdir()
        (deep / "f.txt").write_text("done")
    assert (deep / "f.txt").is_file() and not outputs.lock_path(deep).exists()
    # through the CLI: a run folder that is no run, evaluated into a new nested folder
    code, _, err = _cli(capsys, "evaluate", "--model", str(tiny_shards_2.root), "--out", str(tmp_path / "n" / "m" / "ev"),
                        "-q")
    assert code == 2 and "not a training run folder" in _error_line(err, "evaluate")
    assert not (tmp_path / "n").exists()


def test_cli_second_writer_exits_2_at_once(tiny_recflow, tmp_path, capsys):
    out = tmp_path / "s"
    with outputs.output_lock(out, "lcron preprocess (the first one)"):
        code, _, err = _cli(capsys, "preprocess", "--source", str(tiny_recflow), "--out", str(out), "--stages", "2",
                            "-q")
    assert code == 2
    line = _error_line(err, "preprocess")
    assert f"pid {os.getpid()}" in line and "lcron preprocess (the first one)" in line
    assert not (out / "dataset.json").exists()


# ------------------------------------------------------------------ disk full mid-write
class _DiskFills:
    """os.fsync that fails with ENOSPC from its ``after``-th call on (lcron.atomic fsyncs every file)."""

    def __init__(self, after: int) -> None:
        self.after, self.calls = after, 0
        self.real = os.fsync

    def __call__(self, fd: int) -> None:
        self.calls += 1
        if self.calls >= self.after:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.real(fd)


def test_disk_full_during_preprocess_leaves_nothing_a_later_step_accepts(tiny_recflow, tmp_path, capsys,
                                                                         monkeypatch):
    out = tmp_path / "s"
    monkeypatch.setattr(atomic.os, "fsync", _DiskFills(after=16))  # inside the second day
    code, _, err = _cli(capsys, "preprocess", "--source", str(tiny_recflow), "--out", str(out), "--stages", "2", "-q")
    monkeypatch.undo()
    assert code == 2
    line = _error_line(err, "preprocess")
    assert "No space left on device" in line and str(out) in line  # names the file being written
    assert (out / "dataset.json").exists()  # what the old code accepted
    with pytest.raises(IncompleteOutputError, match=r"shard set .* is incomplete: the step writing it did not "
                                                    r"finish .*complete it with: lcron preprocess"):
        ShardSet(out)
    code, _, err = _cli(capsys, "train", "--shards", str(out), "--out", str(tmp_path / "run"), "--method", "bce",
                        "--no-compile", "-q")
    assert code == 2 and "is incomplete" in _error_line(err, "train")
    assert not (tmp_path / "run").exists()
    assert not list(out.rglob("*.tmp"))
    code, _, _ = _cli(capsys, "preprocess", "--source", str(tiny_recflow), "--out", str(out), "--stages", "2", "-q")
    assert code == 0
    assert ShardSet(out).days == ["2024-01-13", "2024-01-14", "2024-01-15"]


def _train_args(shards: Path, run: Path) -> list[str]:
    return ["train", "--shards", str(shards), "--out", str(run), "--method", "bce", "--batch-size", "16",
            "--max-steps-per-day", "1", "--no-compile", "--device", "cpu", "--seeds", "1,2", "-q"]


def test_disk_full_during_train_and_evaluate(tiny_shards_2, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    # fsyncs: lock, run.json, pending marker, then 8 per seed (2 days of log + snapshot + resume.pt,
    # model.pt, summary.json): the 14th falls inside seed 2 - seed 1 done, seed 2 half-written.
    monkeypatch.setattr(atomic.os, "fsync", _DiskFills(after=14))
    code, _, err = _cli(capsys, *_train_args(tiny_shards_2.root, run))
    monkeypatch.undo()
    assert code == 2
    line = _error_line(err, "train")
    assert "No space left on device" in line and str(run) in line
    assert (run / "seed-1" / "summary.json").exists()  # the old code evaluated seed 1 alone
    for cmd in (["evaluate", "--model", str(run), "--no-compile", "--device", "cpu"],
                ["export", "--model", str(run), "--out", str(tmp_path / "export")]):
        code, _, err = _cli(capsys, *cmd, "-q")
        line = _error_line(err, cmd[0])
        assert code == 2 and f"run folder {run} is incomplete" in line and "complete it with: lcron train" in line
    assert not (run / "eval").exists() and not (tmp_path / "export").exists()
    assert _cli(capsys, *_train_args(tiny_shards_2.root, run))[0] == 0

    # evaluate: the disk fills after per_request.npz, before metrics.json
    ev = run / "eval"
    monkeypatch.setattr(atomic.os, "fsync", _DiskFills(after=6))
    code, _, err = _cli(capsys, "evaluate", "--model", str(run), "--no-compile", "--device", "cpu", "-q")
    monkeypatch.undo()
    assert code == 2 and "No space left on device" in _error_line(err, "evaluate")
    from lcron.evaluation.results import load_per_request

    with pytest.raises(IncompleteOutputError, match=r"evaluation .* is incomplete"):
        load_per_request(ev)
    code, _, err = _cli(capsys, "report", str(run), "--out", str(tmp_path / "report"), "-q")
    assert code == 2
    code, out, _ = _cli(capsys, "evaluate", "--model", str(run), "--no-compile", "--device", "cpu")
    assert code == 0
    outputs.require_complete(ev, "evaluation", "evaluation", "x")
    assert load_per_request(ev)["seeds"].tolist() == [1, 2]


def test_an_evaluation_rerun_after_a_crash_is_not_skipped(trained, tmp_path):
    from lcron.evaluate import evaluate

    ev = tmp_path / "ev"
    evaluate(trained, out=ev, compile=False, device="cpu", progress=False)
    outputs.begin(ev, "evaluation", "x")  # as if an --overwrite rerun died mid-way
    res = evaluate(trained, out=ev, compile=False, device="cpu", progress=False)
    assert res["skipped"] is False
    assert evaluate(trained, out=ev, compile=False, device="cpu", progress=False)["skipped"] is True


def test_a_replaced_model_file_is_caught_by_the_run_marker(trained, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run, ignore=shutil.ignore_patterns("eval"))
    with open(run / "seed-1" / "model.pt", "ab") as fh:
        fh.write(b"junk")
    code, _, err = _cli(capsys, "evaluate", "--model", str(run), "--no-compile", "--device", "cpu", "-q")
    assert code == 2
    assert "seed-1/model.pt has" in _error_line(err, "evaluate") and "damaged or replaced" in err


# ------------------------------------------------------------------ concurrent processes
def _spawn(*argv: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "lcron", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env, text=True)


def _wait_for(path: Path, proc: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_sigkill_of_one_of_two_concurrent_writers_leaves_the_survivor_intact(tiny_shards_2, tmp_path):
    run = tmp_path / "run"
    args = [a for a in _train_args(tiny_shards_2.root, run) if a != "-q"]
    args[args.index("--max-steps-per-day") + 1] = "3"
    first = _spawn(*args)
    _wait_for(outputs.pending_path(run, "run"), first)
    second = _spawn(*args)
    _, err = second.communicate(timeout=120)
    assert second.returncode == 2
    assert f"is being written by another lcron process (pid {first.pid}" in err and "Traceback" not in err
    third = _spawn(*args)
    third.send_signal(signal.SIGKILL)  # killed whatever it was doing
    third.wait()
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    outputs.require_complete(run, "run", "run", "x")
    from lcron.run_folder import run_seeds

    assert [p.name for p in run_seeds(run)] == ["seed-1", "seed-2"]
    assert not outputs.lock_path(run).exists()


def test_sigkill_of_the_holder_then_the_rerun_takes_over_and_completes(tiny_recflow, tmp_path, capsys):
    out = tmp_path / "s"
    args = ["preprocess", "--source", str(tiny_recflow), "--out", str(out), "--stages", "2"]
    first = _spawn(*args)
    _wait_for(outputs.pending_path(out, "shards"), first)
    first.send_signal(signal.SIGKILL)
    first.wait()
    if outputs.marker_path(out, "shards").exists():  # pragma: no cover - it finished before the kill
        pytest.skip("the first writer finished before it could be killed")
    with pytest.raises(DataError, match="incomplete"):
        ShardSet(out)
    with warnings.catch_warnings():
        code, _, err = _cli(capsys, *args, "-q")
    assert code == 0, err
    assert f"taking over the stale lock of a process that is no longer running (pid {first.pid}" in err
    shards = ShardSet(out)
    assert shards.days == ["2024-01-13", "2024-01-14", "2024-01-15"]
    assert np.asarray(shards.load_day("2024-01-15")["label"]).shape[0] > 0
