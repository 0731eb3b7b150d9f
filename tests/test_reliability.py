"""The reliability contract of docs/reliability.md, row by row, through the ``lcron`` command.

Why this file exists: the library tests (tests/data, test_train, test_evaluate, ...)
prove that each bad input raises the right error class. A user, and a KFP step, sees
something else: the exit code and the one line on stderr, and whatever the failed
command left on disk. These tests run the real ``lcron.cli.main`` on small hand-made
inputs and check exactly that: exit 2, one line ``lcron <cmd>: error: <message>`` naming
the file/field/value, and no output that a later step could mistake for a result.
They also cover the rows no other test covers: pickled code in a data file or a
checkpoint (nothing runs), interrupted preprocessing/evaluation followed by a rerun,
bit-identical preprocessing and evaluation reruns, and a failing pipeline step.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import pickle
import re
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from lcron import atomic, cli
from lcron.data.shards import ShardSet, preprocess
from lcron.errors import ConfigError, DataError, UnsafePickleError
from lcron.evaluate import evaluate
from lcron.evaluation.results import load_per_request
from lcron.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # components/ is not an installed package
    sys.path.insert(0, str(ROOT))

DAY = "2024-01-15"  # the day the ``handmade`` fixture writes


def known_methods() -> str:
    """The registered methods as the unknown-method error lists them (read live: a method added
    as one file, or registered by a test, is listed too)."""
    import lcron.losses

    return ", ".join(lcron.losses.METHODS)


# ------------------------------------------------------------------ helpers
def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _error_line(err: str, cmd: str) -> str:
    """The single stderr line of a user error (exit 2); fails if there is more (a traceback).
    Warning lines (``lcron: warning: ...``, e.g. dropped partial batches) are not errors."""
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith("lcron: warning: ")]
    assert len(lines) == 1, f"expected one error line, got:\n{err}"
    assert lines[0].startswith(f"lcron {cmd}: error: "), lines[0]
    assert "Traceback" not in err
    return lines[0]


def _listing(root: Path) -> list[tuple[str, int, int]]:
    return sorted((p.relative_to(root).as_posix(), p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*"))


def _files_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


class FakeArtifact:
    """Stands in for a KFP artifact when a component's ``python_func`` is called directly."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.metadata: dict = {}

    def log_metric(self, key: str, value: float) -> None:
        self.metadata[key] = value


class _RunsShell:
    """Unpickling this with plain pickle would run ``os.system(cmd)``: a callable, not data."""

    def __init__(self, cmd: str) -> None:
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


def _no_day_written(out: Path) -> None:
    """A failed preprocess leaves no shard array and no complete day (at most dataset.json)."""
    if not out.exists():
        return
    assert not list(out.rglob("*.npy")), sorted(out.rglob("*"))
    assert not list(out.glob("days/*/manifest.json"))


# ------------------------------------------------------------------ bad input data
def _after(fn):
    """A case that writes the hand-made day and then edits its files (``fn(root)``)."""
    def case(h, tmp_path):
        root = h.write(tmp_path / "recflow")
        fn(root)
        return root, []
    return case


def _before(fn, *extra: str):
    """A case that edits the hand-made tables before writing (``fn(h)`` may return an Arrow table)."""
    def case(h, tmp_path):
        table = fn(h)
        return h.write(tmp_path / "recflow", all_stage=table), list(extra)
    return case


def _cut(rel: str, keep: int):
    def fn(root: Path) -> None:
        p = root / rel
        p.write_bytes(p.read_bytes()[:keep])
    return fn


def _set_column(h, name: str, array: pa.Array) -> pa.Table:
    t = h.table()
    return t.set_column(t.schema.get_field_index(name), name, array)


def _null_in_int(h) -> pa.Table:
    values = h.all_stage["device_id"].to_numpy()
    mask = np.zeros(len(values), dtype=bool)
    mask[2] = True
    return _set_column(h, "device_id", pa.array(values, type=pa.int64(), mask=mask))


def _nan_from_pandas(h) -> pa.Table:
    # What pandas does to an integer column with a missing value: float64 with NaN.
    col = h.all_stage["device_id"].astype(float)
    col.iloc[2] = np.nan
    return _set_column(h, "device_id", pa.array(col.to_numpy(), type=pa.float64(), from_pandas=True))


def _float_ids(h) -> pa.Table:
    return _set_column(h, "user_id", pa.array(h.all_stage["user_id"].to_numpy(dtype=float), type=pa.float64()))


def _set_value(column: str, value: int):
    def fn(h) -> None:
        h.all_stage.loc[3, column] = value  # row 3 belongs to request 502
    return fn


def _missing_day_in_the_middle(h, tmp_path):
    root = h.write(tmp_path / "recflow", days=("2024-01-15", "2024-01-16", "2024-01-17"))
    (root / "all_stage" / "2024-01-16.feather").unlink()
    return root, ["--days", "2024-01-16"]


def _drop_seq_of_501(h) -> None:
    del h.seq_dict[501]


def _no_request_in_dict(h) -> None:
    h.request_id_dict = {999: h.request_id_dict[501]}


def _id_cnt_without_video(h) -> None:
    del h.id_cnt["photo_id"]


# (case id, build(handmade, tmp_path) -> (source root, extra argv), expected message fragment as a regex)
DATA_CASES = [
    ("empty_all_stage", _after(lambda r: (r / f"all_stage/{DAY}.feather").write_bytes(b"")),
     r"all_stage/2024-01-15\.feather: file is empty$"),
    ("empty_request_id_dict", _after(lambda r: (r / f"request_id_dict/{DAY}.pkl").write_bytes(b"")),
     r"request_id_dict/2024-01-15\.pkl: file is empty$"),
    ("empty_seq_dict", _after(lambda r: (r / f"seq_effective_50_dict/{DAY}.pkl").write_bytes(b"")),
     r"seq_effective_50_dict/2024-01-15\.pkl: file is empty$"),
    ("missing_request_id_dict", _after(lambda r: (r / f"request_id_dict/{DAY}.pkl").unlink()),
     r"request_id_dict/2024-01-15\.pkl: file is missing \(every day needs all_stage/<day>\.feather, "
     r"request_id_dict/<day>\.pkl, seq_effective_50_dict/<day>\.pkl\)"),
    ("missing_seq_dict", _after(lambda r: (r / f"seq_effective_50_dict/{DAY}.pkl").unlink()),
     r"seq_effective_50_dict/2024-01-15\.pkl: file is missing"),
    ("missing_all_stage_day", _missing_day_in_the_middle,
     r"day 2024-01-16 is not available \(available: 2024-01-15\.\.2024-01-17 \(2 days\)\)"),
    ("day_outside_range", _before(lambda h: None, "--days", "2024-02-01:2024-02-03"),
     r"day 2024-02-01 is outside the available range 2024-01-15\.\.2024-01-15 \(1 day\)"),
    ("missing_required_column", _before(lambda h: h.table().drop_columns(["province"])),
     r"all_stage/2024-01-15\.feather: required column\(s\) missing: province$"),
    ("wrong_dtype", _before(_float_ids),
     r"all_stage/2024-01-15\.feather: column user_id has type double; expected an integer type$"),
    ("negative_id", _before(_set_value("user_id", -1)),
     r"column user_id: 1 negative value\(s\) \(min -1\); ids must be >= 0, e\.g\. request_id 502$"),
    ("id_out_of_vocabulary", _before(_set_value("video_id", 100)),
     r"column video_id: 1 value\(s\) >= id_cnt\['video_id'\] = 100 \(max 100\); ids must be in \[0, 100\), "
     r"e\.g\. request_id 502$"),
    ("null_in_integer_column", _before(_null_in_int),
     r"column device_id has 1 null/NaN value\(s\); expected integers everywhere$"),
    ("nan_from_pandas", _before(_nan_from_pandas),
     r"column device_id has type double; expected an integer type$"),
    ("truncated_feather", _after(_cut(f"all_stage/{DAY}.feather", -200)),
     r"all_stage/2024-01-15\.feather: not a readable Feather v2 \(Arrow IPC\) file"),
    ("corrupt_feather", _after(lambda r: (r / f"all_stage/{DAY}.feather").write_bytes(b"PAR1" + b"\0" * 300)),
     r"all_stage/2024-01-15\.feather: not a readable Feather v2 \(Arrow IPC\) file"),
    ("truncated_pickle", _after(_cut(f"request_id_dict/{DAY}.pkl", 100)),
     r"request_id_dict/2024-01-15\.pkl: the pickle is truncated"),
    ("corrupt_pickle", _after(lambda r: (r / f"seq_effective_50_dict/{DAY}.pkl").write_bytes(
        b"\x80\x04this is not a pickle at all")),
     r"seq_effective_50_dict/2024-01-15\.pkl: not a valid pickle \(UnpicklingError: "),
    ("missing_from_pkl_above_threshold", _before(_drop_seq_of_501),
     r"day 2024-01-15 \(.*\): 1 of 2 requests unusable \(50\.00% > max_missing_fraction 1\.00%\): "
     r"0 missing from request_id_dict, 1 missing from seq_effective_50_dict, 0 with a top-group item"),
    ("zero_usable_requests", _before(_no_request_in_dict, "--max-missing-fraction", "1"),
     r"day 2024-01-15 \(.*\): zero usable requests out of 2 \(2 missing from request_id_dict"),
    ("id_cnt_missing_key", _before(_id_cnt_without_video),
     r"others/id_cnt\.pkl: missing key\(s\) video_id \(accepted: 'video_id', 'photo_id'\); present: "),
]


@pytest.mark.parametrize("build,expected", [c[1:] for c in DATA_CASES], ids=[c[0] for c in DATA_CASES])
def test_bad_data_is_exit_2_with_one_line_and_no_shards(handmade, tmp_path, capsys, build, expected):
    src, extra = build(handmade, tmp_path)
    out = tmp_path / "shards"
    code, stdout, err = _cli(capsys, "preprocess", "--source", str(src), "--out", str(out), "--stages", "2", "-q",
                             *extra)
    assert code == 2
    line = _error_line(err, "preprocess")
    assert re.search(expected, line), line
    assert stdout == ""
    _no_day_written(out)


def test_missing_fraction_boundary(handmade, tmp_path, capsys):
    """1 of 2 requests dropped = 50.00%: allowed (a warning) at --max-missing-fraction 0.5,
    an error at 0.49 - the limit is inclusive."""
    del handmade.seq_dict[501]
    src = handmade.write(tmp_path / "recflow")
    code, _, err = _cli(capsys, "preprocess", "--source", str(src), "--out", str(tmp_path / "a"), "--stages", "2",
                        "--max-missing-fraction", "0.49", "-q")
    assert code == 2 and "(50.00% > max_missing_fraction 49.00%)" in _error_line(err, "preprocess")
    code, _, err = _cli(capsys, "preprocess", "--source", str(src), "--out", str(tmp_path / "b"), "--stages", "2",
                        "--max-missing-fraction", "0.5", "-q")
    assert code == 0
    assert err.strip() == ("lcron: warning: day 2024-01-15: dropped 1 of 2 requests (50.00%): 0 missing from "
                           "request_id_dict, 1 missing from seq_effective_50_dict, 0 with a top-group item that "
                           "has no rank_index in all_stage")
    shards = ShardSet(tmp_path / "b")
    assert shards.num_requests(DAY) == 1 and shards.load_day(DAY)["request_id"].tolist() == [502]


def test_extra_columns_and_null_feedback_are_not_errors(handmade, tmp_path, capsys):
    table = handmade.table().append_column("my_extra", pa.array(np.arange(len(handmade.all_stage))))
    # The hand-made feedback columns are float with nulls outside realshow rows.
    assert table.column("like").null_count > 0 and pa.types.is_floating(table.schema.field("like").type)
    src = handmade.write(tmp_path / "recflow", all_stage=table)
    code, out, err = _cli(capsys, "preprocess", "--source", str(src), "--out", str(tmp_path / "s"), "--stages", "2",
                          "-q")
    assert code == 0, err
    assert err.strip() == f"lcron: warning: {src}/all_stage/{DAY}.feather: ignoring extra column(s) my_extra"
    assert ShardSet(tmp_path / "s").num_requests(DAY) == 2
    code, out, err = _cli(capsys, "validate", "--source", str(src))
    assert code == 0 and f"{DAY}  ok" in out


def test_pickled_code_in_a_data_file_is_refused_and_nothing_runs(handmade, tmp_path, capsys):
    marker = tmp_path / "pwned"
    src = handmade.write(tmp_path / "recflow")
    (src / "request_id_dict" / f"{DAY}.pkl").write_bytes(pickle.dumps({501: _RunsShell(f"touch {marker}")}))
    for argv in (["preprocess", "--out", str(tmp_path / "s"), "--stages", "2", "-q"], ["validate"]):
        code, out, err = _cli(capsys, argv[0], "--source", str(src), *argv[1:])
        assert code == 2
        text = out + err
        assert f"request_id_dict/{DAY}.pkl: refusing to unpickle global {os.system.__module__}.system" in text
        assert "nothing from the file was executed" in text
        assert not marker.exists()
    _no_day_written(tmp_path / "s")


def test_validate_prints_every_day_exits_2_and_writes_nothing(handmade, tmp_path, capsys):
    src = handmade.write(tmp_path / "recflow", days=("2024-01-15", "2024-01-16"))
    _cut("all_stage/2024-01-16.feather", -200)(src)
    before = _listing(tmp_path)
    code, out, err = _cli(capsys, "validate", "--source", str(src), "-q")  # -q: no progress line on stderr
    assert _listing(tmp_path) == before  # not a byte written anywhere under tmp_path
    assert code == 2
    assert _error_line(err, "validate") == "lcron validate: error: 1 of 2 day(s) failed validation: 2024-01-16"
    lines = out.splitlines()
    assert lines[0].split() == ["day", "status", "rows", "requests", "dropped", "items", "per", "label",
                                "(mean", "stored)"]
    assert lines[1].split()[:5] == ["2024-01-15", "ok", str(len(handmade.all_stage)), "2", "0"]
    assert lines[2].split() == ["2024-01-16", "FAILED"]
    assert lines[3] == (f"problem: {src}/all_stage/2024-01-16.feather: not a readable Feather v2 (Arrow IPC) "
                        "file (Not an Arrow file)")


# ------------------------------------------------------------------ configuration errors
@pytest.fixture(scope="module")
def trained(tiny_shards_2, tmp_path_factory):
    """A BCE run (seed 1, batch 16, 1 step per day) on the tiny two-stage shards (days 1-2;
    day 3 is the test day)."""
    run = tmp_path_factory.mktemp("reliability") / "run"
    train(tiny_shards_2, run, TrainConfig(method="bce", batch_size=16, seeds=(1,), compile=False), progress=False,
          max_steps_per_day=1)
    return run


def _setting_file(tmp_path: Path, content: str) -> Path:
    p = tmp_path / "setting.json"
    p.write_text(content)
    return p


def test_train_config_errors_are_exit_2_before_anything_is_written(tiny_shards_2, tmp_path, capsys):
    out = tmp_path / "run"
    base = ["train", "--shards", str(tiny_shards_2.root), "--out", str(out), "--no-compile", "-q"]
    code, _, err = _cli(capsys, *base, "--method", "nope")
    assert code == 2
    assert _error_line(err, "train") == f"lcron train: error: unknown method 'nope'; known methods: {known_methods()}"
    code, _, err = _cli(capsys, *base, "--method", "bce", "--batch-size", "0")
    assert code == 2
    assert _error_line(err, "train") == "lcron train: error: batch size must be an integer >= 1, got 0"
    bad = _setting_file(tmp_path, '{"base": "two_stage", "name": "x", "quotas": [20, 30]}')
    code, _, err = _cli(capsys, *base, "--method", "bce", "--setting", str(bad))
    assert code == 2
    assert _error_line(err, "train").endswith(
        f"setting file {bad}: setting 'x': quota 30 of stage 'prerank' exceeds the 20 items it receives (list "
        "size N = 40, quotas [20, 30]); quotas must not increase and must fit N")
    bad.write_text("{not json")
    code, _, err = _cli(capsys, *base, "--method", "bce", "--setting", str(bad))
    assert code == 2 and f"setting file {bad} is not valid JSON" in _error_line(err, "train")
    assert not out.exists()


def test_preprocess_setting_quotas_that_do_not_fit(handmade, tmp_path, capsys):
    bad = _setting_file(tmp_path, '{"base": "two_stage", "name": "x", "quotas": [50, 20]}')
    code, _, err = _cli(capsys, "preprocess", "--source", str(handmade.write(tmp_path / "recflow")), "--out",
                        str(tmp_path / "s"), "--setting", str(bad), "-q")
    assert code == 2
    assert _error_line(err, "preprocess") == (
        f"lcron preprocess: error: setting file {bad}: setting 'x': quota 50 of stage 'retrieval' exceeds the 40 "
        "items it receives (list size N = 40, quotas [50, 20]); quotas must not increase and must fit N")
    assert not (tmp_path / "s").exists()


def test_evaluate_batch_size_below_1(trained, tmp_path, capsys):
    out = tmp_path / "eval"
    code, _, err = _cli(capsys, "evaluate", "--model", str(trained), "--out", str(out), "--batch-size", "0", "-q")
    assert code == 2
    assert _error_line(err, "evaluate") == "lcron evaluate: error: batch size must be an integer >= 1, got 0"
    with pytest.raises(ConfigError, match=r"batch size must be an integer >= 1, got -3"):
        evaluate(trained, out=out, batch_size=-3, progress=False)
    assert not out.exists()


# ------------------------------------------------------------------ checkpoints carrying code
def _poisoned_copy(run: Path, dest: Path, rel: str, marker: Path) -> Path:
    shutil.copytree(run, dest, ignore=shutil.ignore_patterns("eval"))
    torch.save({"config": _RunsShell(f"touch {marker}"), "model_state": {}}, dest / rel)
    # Whoever can replace a file can rewrite the completion marker too: the marker catches
    # damage, it is no security boundary, so the poisoned copy is re-marked as complete.
    marker_file = dest / "_complete-run.json"
    doc = json.loads(marker_file.read_text())
    if rel in doc["files"]:
        doc["files"][rel] = (dest / rel).stat().st_size
        doc["sha256"][rel] = hashlib.sha256((dest / rel).read_bytes()).hexdigest()
        marker_file.write_text(json.dumps(doc))
    return dest


def test_checkpoint_carrying_code_is_refused_by_evaluate(trained, tmp_path, capsys):
    marker = tmp_path / "pwned"
    run = _poisoned_copy(trained, tmp_path / "run", "seed-1/model.pt", marker)
    before = _listing(run)
    code, _, err = _cli(capsys, "evaluate", "--model", str(run), "--no-compile", "--device", "cpu", "-q")
    assert code == 2
    line = _error_line(err, "evaluate")
    assert line.startswith(f"lcron evaluate: error: model file {run}/seed-1/model.pt cannot be loaded safely "
                           "(weights only; nothing was executed): ")
    assert "posix.system" in line or "os.system" in line
    assert not marker.exists()
    assert _listing(run) == before  # no eval/ folder, nothing touched


def test_checkpoint_carrying_code_is_refused_on_resume(trained, tiny_shards_2, tmp_path, capsys):
    """A poisoned resume checkpoint is what ``lcron train`` would resume from: refused, nothing runs."""
    marker = tmp_path / "pwned"
    run = _poisoned_copy(trained, tmp_path / "run", "seed-1/resume.pt", marker)
    (run / "seed-1" / "summary.json").unlink()  # as if killed after day 1: the seed resumes
    code, _, err = _cli(capsys, "train", "--shards", str(tiny_shards_2.root), "--out", str(run), "--method", "bce",
                        "--batch-size", "16", "--max-steps-per-day", "1", "--no-compile", "-q")
    assert code == 2
    assert _error_line(err, "train").startswith(
        f"lcron train: error: model file {run}/seed-1/resume.pt cannot be loaded safely")
    assert not marker.exists()
    assert not (run / "seed-1" / "summary.json").exists()


# ------------------------------------------------------------------ numerical guard
def test_numerical_guard_through_the_cli(tiny_shards_2, tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = _cli(capsys, "train", "--shards", str(tiny_shards_2.root), "--out", str(out), "--method", "bce",
                        "--batch-size", "16", "--lr", "1e30", "--no-compile", "-q")
    assert code == 2 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("lcron train: error: method 'bce' (seed 1): the loss became nan at day "
                           f"{tiny_shards_2.days[0]}, step ")
    assert "loss part(s) that went bad: single/" in last and last.endswith("Lower --lr or check the input data.")
    # Nothing that looks like a result: no model, no summary, no checkpoint of the NaN weights,
    # and the run is recorded as unfinished (no completion marker).
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "_pending-run.json", "run.json"]


# ------------------------------------------------------------------ reruns: skip, mismatch, identical
def test_cli_reruns_skip_and_other_configurations_are_exit_2(handmade, trained, tiny_shards_2, tmp_path, capsys):
    src = handmade.write(tmp_path / "recflow")
    pre = ["preprocess", "--source", str(src), "--out", str(tmp_path / "s")]
    assert _cli(capsys, *pre, "--stages", "2", "-q")[0] == 0
    code, out, _ = _cli(capsys, *pre, "--stages", "2", "-q")
    assert code == 0 and "1 day(s), 2 requests" in out
    code, _, err = _cli(capsys, *pre, "--stages", "3", "-q")
    assert code == 2 and "holds shards made with a different setting/config (existing: setting 'two_stage'" \
        in _error_line(err, "preprocess")

    run = tmp_path / "run"
    shutil.copytree(trained, run, ignore=shutil.ignore_patterns("eval"))
    tr = ["train", "--shards", str(tiny_shards_2.root), "--out", str(run), "--method", "bce", "--max-steps-per-day",
          "1", "--no-compile", "-q"]
    model = run / "seed-1" / "model.pt"
    stamp = model.stat().st_mtime_ns
    code, out, err = _cli(capsys, *tr, "--batch-size", "16")
    assert code == 0 and "seed 1: skipped (complete)" in out and model.stat().st_mtime_ns == stamp
    code, _, err = _cli(capsys, *tr, "--batch-size", "8")
    assert code == 2 and f"{run} holds a run with a different configuration (method 'bce'" in _error_line(err, "train")

    ev = ["evaluate", "--model", str(run), "--no-compile", "--device", "cpu", "-q"]
    assert _cli(capsys, *ev)[0] == 0
    stamp = (run / "eval" / "metrics.json").stat().st_mtime_ns
    code, _, err = _cli(capsys, *ev[:-1])  # without -q: the skip is a progress line
    assert code == 0 and "same run, seeds, days and options); skipped" in err
    assert (run / "eval" / "metrics.json").stat().st_mtime_ns == stamp
    code, _, err = _cli(capsys, *ev, "--tie-seed", "3")
    assert code == 2 and _error_line(err, "evaluate") == (
        f"lcron evaluate: error: {run}/eval holds an evaluation with other inputs (tie_seed 0 -> 3); choose another "
        "--out or pass --overwrite")


def test_preprocess_reruns_are_bit_identical(tiny_recflow, tmp_path):
    first = preprocess(tiny_recflow, tmp_path / "first", 3, progress=False)
    again = preprocess(tiny_recflow, tmp_path / "again", 3, progress=False)
    a, b = _files_bytes(first.root), _files_bytes(again.root)
    assert sorted(a) == sorted(b) and len(a) > 20
    differing = [k for k in a if a[k] != b[k]]
    assert differing == [], differing


def _comparable(doc: dict) -> dict:
    """metrics.json less what legitimately differs between two runs (wall time, paths, host)."""
    return {k: v for k, v in doc.items() if k not in ("timing", "provenance", "run_dir", "skipped", "out")}


def test_evaluation_reruns_are_bit_identical_and_resume_after_a_crash(trained, tmp_path, monkeypatch):
    kw = dict(compile=False, device="cpu", progress=False, batch_size=7)
    first = evaluate(trained, out=tmp_path / "a", **kw)

    # Crash while writing metrics.json, the last file: the evaluation is not marked complete.
    real = atomic.write_json

    def failing(path, obj, indent=2):
        if Path(path).name == "metrics.json":
            raise OSError(28, "No space left on device")
        return real(path, obj, indent)

    monkeypatch.setattr(atomic, "write_json", failing)
    with pytest.raises(OSError, match="No space left"):
        evaluate(trained, out=tmp_path / "b", **kw)
    monkeypatch.undo()
    assert not (tmp_path / "b" / "metrics.json").exists()
    second = evaluate(trained, out=tmp_path / "b", **kw)  # the rerun redoes it, not "skipped"
    assert second["skipped"] is False
    assert _comparable(first) == _comparable(second)
    pa_, pb = load_per_request(tmp_path / "a"), load_per_request(tmp_path / "b")
    assert sorted(pa_) == sorted(pb)
    for k in pa_:
        np.testing.assert_array_equal(pa_[k], pb[k])  # exact, NaN in the same places


def test_preprocess_resumes_after_a_crash_mid_day(handmade, tmp_path, monkeypatch):
    """A write failing inside day 2 leaves day 1 complete and day 2 invisible; the rerun skips
    day 1, redoes day 2 and ends byte-identical to an uninterrupted run."""
    import lcron.data.shards as shards_mod

    src = handmade.write(tmp_path / "recflow", days=("2024-01-15", "2024-01-16"))
    clean = preprocess(src, tmp_path / "clean", 2, progress=False)
    real = shards_mod.save_npy

    def failing(path, array):
        if Path(path).parent.name == "2024-01-16" and Path(path).name == "label.npy":
            raise OSError(5, "Input/output error")
        return real(path, array)

    monkeypatch.setattr(shards_mod, "save_npy", failing)
    out = tmp_path / "s"
    with pytest.raises(OSError, match="Input/output error"):
        preprocess(src, out, 2, progress=False)
    monkeypatch.undo()
    with pytest.raises(DataError, match="incomplete: the step writing it did not finish"):
        ShardSet(out)  # the set as a whole: refused
    assert ShardSet(out, require_complete=False).days == ["2024-01-15"]
    with pytest.raises(DataError, match="day 2024-01-16 is not complete or not present"):
        ShardSet(out, require_complete=False).load_day("2024-01-16")
    assert not list(out.rglob("*.tmp"))
    stamp = (out / "days" / "2024-01-15" / "items.npy").stat().st_mtime_ns
    assert preprocess(src, out, 2, progress=False).days == ["2024-01-15", "2024-01-16"]
    assert (out / "days" / "2024-01-15" / "items.npy").stat().st_mtime_ns == stamp  # day 1 skipped
    a, b = _files_bytes(clean.root), _files_bytes(out)
    assert sorted(a) == sorted(b)
    assert [k for k in a if a[k] != b[k]] == []


# ------------------------------------------------------------------ pipeline steps fail, never green
def test_component_functions_raise_the_library_errors(trained, tiny_shards_2, handmade, tmp_path):
    """Each component body calls the library, which raises; KFP's executor turns the uncaught
    exception into a non-zero exit, so the step is marked failed."""
    import components

    src = handmade.write(tmp_path / "recflow")
    _cut(f"request_id_dict/{DAY}.pkl", 100)(src)
    with pytest.raises(DataError, match=r"request_id_dict/2024-01-15\.pkl: the pickle is truncated"):
        components.preprocess.python_func(raw_data=FakeArtifact(src), stages=2, setting={}, tz_offset_hours=8,
                                          max_missing_fraction=0.01, shards=FakeArtifact(tmp_path / "shards"))
    _no_day_written(tmp_path / "shards")

    with pytest.raises(ConfigError, match="unknown method 'nope'; known methods: bce"):
        components.train.python_func(shards=FakeArtifact(tiny_shards_2.root), method="nope", loss_options={},
                                     seeds=[1], batch_size=16, lr=0.01, dim=8, days="", max_steps_per_day=1,
                                     device="cpu", compile=False, model=FakeArtifact(tmp_path / "model"),
                                     run_record=FakeArtifact(tmp_path / "run_record"))
    assert not (tmp_path / "model").exists() and not (tmp_path / "run_record").exists()

    marker = tmp_path / "pwned"
    run = _poisoned_copy(trained, tmp_path / "run", "seed-1/model.pt", marker)
    metrics = FakeArtifact(tmp_path / "metrics")
    with pytest.raises(DataError, match="cannot be loaded safely"):
        components.evaluate.python_func(model=FakeArtifact(run), shards=FakeArtifact(tiny_shards_2.root), days="",
                                        streaming=False, batch_size=64, device="cpu", compile=False, tie_seed=0,
                                        evaluation=FakeArtifact(tmp_path / "eval"), metrics=metrics)
    assert not marker.exists() and metrics.metadata == {} and not (tmp_path / "eval").exists()

    (src / f"request_id_dict/{DAY}.pkl").write_bytes(pickle.dumps({501: _RunsShell(f"touch {marker}")}))
    with pytest.raises(UnsafePickleError, match="refusing to unpickle global"):
        components.preprocess.python_func(raw_data=FakeArtifact(src), stages=2, setting={}, tz_offset_hours=8,
                                          max_missing_fraction=0.01, shards=FakeArtifact(tmp_path / "shards2"))
    assert not marker.exists()


def test_a_failing_step_fails_the_kfp_local_run(tmp_path, capfd, monkeypatch):
    """The real KFP executor (kfp.local, SubprocessRunner) on the fingerprint component with a
    source that does not exist: the task ends in FAILURE and the run raises, with the
    library's one-line reason in the step's log."""
    from kfp import local
    from kfp.local import config as local_config

    import components

    monkeypatch.setattr(local_config.LocalExecutionConfig, "instance", None)  # restored after the test
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"),
               raise_on_error=True)
    missing = tmp_path / "no-such-source"
    with warnings.catch_warnings(), pytest.raises(RuntimeError, match="FAILURE"):
        warnings.simplefilter("ignore")  # "non-Python base image": the step runs in this Python
        components.fingerprint(source=str(missing), days="", synthetic_days=1, synthetic_start_date="2024-01-13",
                               synthetic_requests_per_day=1, synthetic_users=1, synthetic_items=1, synthetic_seed=0)
    log = "".join(capfd.readouterr())
    assert f"lcron.errors.DataError: RecFlow source {missing} is not a folder" in log
    assert not list((tmp_path / "root").rglob("Output"))  # no output parameter was produced


def test_components_never_swallow_exceptions():
    """No try/except in any component module: a library error always reaches the KFP executor."""
    handlers = []
    for path in sorted((ROOT / "components").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Try):
                handlers.append(f"{path.name}:{node.lineno}")
    assert handlers == []


# ------------------------------------------------------------------ every library write is atomic
# Serialisers that write to a file, and the position of their destination argument.
_SERIALISERS = {("np", "save"): 0, ("np", "savez"): 0, ("np", "savez_compressed"): 0, ("torch", "save"): 1,
                ("pickle", "dump"): 1, ("json", "dump"): 1, ("feather", "write_feather"): 1,
                ("shutil", "copyfile"): 1, ("shutil", "copy"): 1, ("shutil", "copy2"): 1, ("shutil", "copytree"): 1}
# Writes that are not outputs, each with its reason.
_ALLOWED = {
    ("lcron/benchmarks/suite.py", "write_text"): "/proc/self/clear_refs: resets the kernel's peak-memory counter",
}


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else path.name


def _raw_writes(path: Path) -> list[str]:
    """Calls in ``path`` that write a file without lcron.atomic: Path.write_text/write_bytes,
    open() for writing, and serialisers whose destination is not a handle opened by
    ``atomic_open`` (a ``with ... atomic_open(...) as fh`` target) or an in-memory buffer."""
    tree = ast.parse(path.read_text(), filename=str(path))
    safe: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.With):
            for item in node.items:
                call = item.context_expr
                if isinstance(call, ast.Call) and ast.unparse(call.func).split(".")[-1] == "atomic_open" \
                        and isinstance(item.optional_vars, ast.Name):
                    safe.add(item.optional_vars.id)
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) \
                and ast.unparse(node.value.func) in ("io.BytesIO", "BytesIO", "io.StringIO", "StringIO"):
            safe.update(t.id for t in node.targets if isinstance(t, ast.Name))
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = ast.unparse(node.func)
        parts = func.split(".")
        rel = _rel(path)
        where = f"{rel}:{node.lineno} {func}"
        if parts[-1] in ("write_text", "write_bytes") and len(parts) > 1 and parts[0] != "atomic":
            found.append((rel, parts[-1], where))  # a Path method (a bare name is lcron.atomic's helper)
        elif func == "open" and len(node.args) > 1 and isinstance(node.args[1], ast.Constant) \
                and any(c in str(node.args[1].value) for c in "wax+"):
            found.append((rel, "open", where))
        elif tuple(parts[-2:]) in _SERIALISERS or parts[-1] == "savefig":
            pos = _SERIALISERS.get(tuple(parts[-2:]), 0)
            dest = node.args[pos] if len(node.args) > pos else None
            if not (isinstance(dest, ast.Name) and dest.id in safe):
                found.append((rel, parts[-1], where))
    return [w for rel, kind, w in found if (rel, kind) not in _ALLOWED]


def test_every_library_write_goes_through_lcron_atomic():
    offenders = [w for p in sorted((ROOT / "lcron").rglob("*.py")) if p.name != "atomic.py" for w in _raw_writes(p)]
    assert offenders == []


def test_the_raw_write_scanner_finds_raw_writes(tmp_path):
    """The scanner above must be able to fail: it flags each kind of raw write in a sample."""
    sample = tmp_path / "sample.py"
    code = ("import io, json, numpy as np, torch\nfrom pathlib import Path\nfrom lcron import atomic\n"
            "def f(p, a):\n"
            "    Path(p).write_text('x')\n"
            "    open(p, 'wb').write(b'x')\n"
            "    np.save(p, a)\n"
            "    torch.save(a, p)\n"
            "    with open(p, 'w') as fh:\n"
            "        json.dump(a, fh)\n"
            "    with atomic.atomic_open(p) as ok:\n"
            "        np.save(ok, a)\n"
            "    buf = io.BytesIO()\n"
            "    np.save(buf, a)\n"
            "    atomic.write_text(p, 'fine')\n")
    sample.write_text(code)
    kinds = [w.split(" ")[1] for w in _raw_writes(sample)]
    assert sorted(kinds) == ["Path(p).write_text", "json.dump", "np.save", "open", "open", "torch.save"]


# ------------------------------------------------------------------ every library read is safe
# torch.export.load unpickles and evaluates what a .pt2 holds; the only accepted call is in
# lcron/serving/loader.py's _load_program, after check_program_archive has checked those bytes.
_CHECKED_EXPORT_LOAD = ("lcron/serving/loader.py", "_load_program", "check_program_archive")


def _unsafe_loads(path: Path, source: str | None = None) -> list[str]:
    """Loads in ``path`` (or in ``source``, as if it were that file) that could run code from a
    file: ``torch.load`` without ``weights_only=True``, ``np.load`` without
    ``allow_pickle=False``, any plain pickle load (only lcron.safe_pickle may unpickle), and
    ``torch.export.load`` / ``load_pt2`` anywhere but in the checked loader function
    (:data:`_CHECKED_EXPORT_LOAD`: there, after a call to ``check_program_archive``)."""
    tree = ast.parse(path.read_text() if source is None else source, filename=str(path))
    enclosing: dict[ast.AST, ast.AST] = {}
    for fn in ast.walk(tree):  # outer functions come first, so the innermost one wins
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                enclosing[node] = fn

    def checked_export_load(node: ast.Call) -> bool:
        fn = enclosing.get(node)
        file, name, check = _CHECKED_EXPORT_LOAD
        return (_rel(path) == file and fn is not None and fn.name == name
                and any(isinstance(c, ast.Call) and ast.unparse(c.func).split(".")[-1] == check
                        and c.lineno < node.lineno for c in ast.walk(fn)))

    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("torch.export") \
                and any(a.name in ("load", "load_pt2") for a in node.names):
            found.append(f"{_rel(path)}:{node.lineno} from {node.module} import load")  # hides the call below
        if not isinstance(node, ast.Call):
            continue
        func = ast.unparse(node.func)
        kw = {k.arg: k.value for k in node.keywords}

        def const(name: str):
            v = kw.get(name)
            return v.value if isinstance(v, ast.Constant) else None

        where = f"{_rel(path)}:{node.lineno} {func}"
        if func.endswith("torch.load") and const("weights_only") is not True:
            found.append(where)
        elif func in ("np.load", "numpy.load") and const("allow_pickle") is not False:
            found.append(where)
        elif func in ("pickle.load", "pickle.loads", "pickle.Unpickler", "cPickle.load", "pd.read_pickle"):
            found.append(where)
        elif (func.endswith("export.load") or func.split(".")[-1] == "load_pt2") and not checked_export_load(node):
            found.append(where)
    return found


def test_every_library_load_refuses_code():
    offenders = [w for p in sorted((ROOT / "lcron").rglob("*.py")) if p.name != "safe_pickle.py"
                 for w in _unsafe_loads(p)]
    assert offenders == []
    # torch.export.load: the library's one call is the checked one, and the scan flags any other
    file, name, check = _CHECKED_EXPORT_LOAD
    checked = ast.parse((ROOT / file).read_text())
    assert [f.name for f in ast.walk(checked) if isinstance(f, ast.FunctionDef)
            and "torch.export.load(" in ast.unparse(f)] == [name]
    ok = f"import torch\ndef {name}(p, d, c):\n    {check}(p, b'', c)\n    return torch.export.load(p)\n"
    assert _unsafe_loads(ROOT / file, ok) == []
    for source, where in [
        (ok.replace(f"def {name}", "def other"), file),  # another function
        (ok, "lcron/serving/export.py"),  # another file
        (f"import torch\ndef {name}(p, d, c):\n    return torch.export.load(p)\n", file),  # no check
        (f"import torch\ndef {name}(p, d, c):\n    x = torch.export.load(p)\n    {check}(p, b'', c)\n", file),
        ("from torch.export import load\n", file),
        ("import torch\ndef f(p):\n    return torch.export.pt2_archive._package.load_pt2(p)\n", file),
    ]:
        assert len(_unsafe_loads(ROOT / where, source)) == 1, source


def test_the_unsafe_load_scanner_finds_unsafe_loads(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import pickle, torch, numpy as np\n"
                      "def f(p):\n"
                      "    torch.load(p)\n"
                      "    torch.load(p, weights_only=False)\n"
                      "    torch.load(p, weights_only=True)\n"
                      "    np.load(p)\n"
                      "    np.load(p, allow_pickle=False)\n"
                      "    pickle.loads(b'')\n")
    assert [w.split(":")[1] for w in _unsafe_loads(sample)] == ["3 torch.load", "4 torch.load", "6 np.load",
                                                                "8 pickle.loads"]
