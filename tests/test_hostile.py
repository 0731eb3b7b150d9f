"""Hostile and damaged inputs to the output layer (issue "Reliability III"; docs/reliability.md).

Each test here failed on the code before it: a planted link made lcron write through it,
--overwrite cleared folders lcron did not make, a flipped byte of the same size passed the
completion markers, a short write said neither where nor why, a YAML alias bomb grew
without bound, a wrong file in a run folder ended in a traceback, and warnings vanished
under -q.
"""

from __future__ import annotations

import json
import resource
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import error_line as _error_line, run_cli as _cli
from lcron import atomic, outputs
from lcron.errors import IncompleteOutputError, OutputLockedError
from lcron.train import TrainConfig, train


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def evaluated(tiny_shards_2, tmp_path_factory):
    """A BCE run (seed 1, one step a day) and its evaluation on the test day."""
    from lcron.evaluate import evaluate

    run = tmp_path_factory.mktemp("hostile") / "run"
    train(tiny_shards_2, run, TrainConfig(method="bce", batch_size=16, seeds=(1,), compile=False), progress=False,
          max_steps_per_day=1)
    evaluate(run, device="cpu", compile=False, progress=False)
    return run


def _copy_run(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest, symlinks=True)
    return dest


def _flip_byte(path: Path, offset: int | None = None) -> None:
    """Change one byte in place: the size stays, the content does not."""
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0xFF
    path.write_bytes(bytes(data))


# ------------------------------------------------------------------ links
def test_a_lock_file_planted_as_a_link_is_never_written_through(tiny_recflow, tmp_path, capsys):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "shards"
    outputs.lock_path(out).symlink_to(victim)
    code, _, err = _cli(capsys, "preprocess", "--source", str(tiny_recflow), "--out", str(out), "--stages", "2", "-q")
    assert code == 2
    line = _error_line(err, "preprocess")
    assert f"{outputs.lock_path(out)} (the lock file of {out}) is a symbolic link" in line
    assert victim.read_text() == "precious" and not out.exists()
    with pytest.raises(OutputLockedError, match="is a symbolic link"):
        with outputs.output_lock(out, "x"):
            pass
    assert outputs.lock_path(out).is_symlink() and victim.read_text() == "precious"


def test_a_dangling_lock_link_creates_nothing_where_it_points(tmp_path):
    target = tmp_path / "elsewhere" / "created-by-lcron"
    target.parent.mkdir()
    folder = tmp_path / "out"
    outputs.lock_path(folder).symlink_to(target)
    with pytest.raises(OutputLockedError, match="symbolic link"):
        with outputs.output_lock(folder, "x"):
            pass
    assert not target.exists()


def test_a_link_at_an_output_file_is_replaced_not_written_through(tmp_path):
    victim = tmp_path / "victim.json"
    victim.write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.json").symlink_to(victim)
    atomic.write_json(out / "metrics.json", {"a": 1})
    assert victim.read_text() == "precious"
    assert not (out / "metrics.json").is_symlink() and json.loads((out / "metrics.json").read_text()) == {"a": 1}


def test_a_completion_marker_that_is_a_link_is_not_accepted(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "a.bin").write_bytes(b"x")
    outputs.finish(folder, "thing", ["a.bin"])
    real = tmp_path / "marker.json"
    outputs.marker_path(folder, "thing").rename(real)
    outputs.marker_path(folder, "thing").symlink_to(real)
    with pytest.raises(IncompleteOutputError, match="completion marker .* is not readable .*symbolic link"):
        outputs.require_complete(folder, "thing", "output", "redo")


# ------------------------------------------------------------------ content hashes
def test_markers_record_content_hashes_and_readers_catch_a_flipped_byte(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "a.bin").write_bytes(bytes(range(256)) * 64)
    outputs.finish(folder, "thing", ["a.bin"])
    doc = json.loads(outputs.marker_path(folder, "thing").read_text())
    assert doc["files"] == {"a.bin": 16384}
    assert doc["sha256"] == {"a.bin": outputs.file_sha256(folder / "a.bin")}
    outputs.require_complete(folder, "thing", "output", "redo")
    time.sleep(0.01)  # a new mtime: the per-process cache of verified files does not apply
    _flip_byte(folder / "a.bin")
    with pytest.raises(IncompleteOutputError, match=r"a.bin has been changed since it was written: its sha256 "
                                                    r".* differs from .* recorded in _complete-thing.json"):
        outputs.require_complete(folder, "thing", "output", "redo")
    outputs.require_complete(folder, "thing", "output", "redo", content=False)  # sizes only
    with pytest.raises(IncompleteOutputError, match="is damaged: .*a.bin has been changed"):
        outputs.require_content(folder, "thing", "output", "redo", ["a.bin"])


def test_a_marker_without_hashes_is_checked_by_size(tmp_path):
    """Outputs written before content hashes keep working (sizes only)."""
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "a.bin").write_bytes(b"abc")
    atomic.write_json(outputs.marker_path(folder, "thing"), {"kind": "thing", "format_version": 1,
                                                             "files": {"a.bin": 3}})
    outputs.require_complete(folder, "thing", "output", "redo")
    outputs.require_content(folder, "thing", "output", "redo", ["a.bin"])


def test_a_marker_naming_a_file_outside_its_folder_is_refused(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    (tmp_path / "secret").write_bytes(b"abc")
    atomic.write_json(outputs.marker_path(folder, "thing"), {"kind": "thing", "files": {"../secret": 3}})
    with pytest.raises(IncompleteOutputError, match="outside the folder"):
        outputs.require_complete(folder, "thing", "output", "redo")


def test_flipped_bytes_in_per_request_npz_are_a_clear_error_of_compare(evaluated, tmp_path, capsys):
    run = _copy_run(evaluated, tmp_path / "run")
    npz = run / "eval" / "per_request.npz"
    size = npz.stat().st_size
    _flip_byte(npz)
    assert npz.stat().st_size == size
    code, _, err = _cli(capsys, "compare", str(run / "eval"), "--out", str(tmp_path / "cmp"), "-q")
    assert code == 2
    line = _error_line(err, "compare")
    assert f"{npz} has been changed since it was written" in line
    assert not (tmp_path / "cmp").exists()


def test_an_undecodable_per_request_file_names_it(evaluated, tmp_path):
    """Without a marker to catch it first (an evaluation from before content hashes), the
    archive itself is a DataError naming the file, not a zipfile traceback."""
    from lcron.errors import DataError
    from lcron.evaluation.results import load_per_request

    run = _copy_run(evaluated, tmp_path / "run")
    ev = run / "eval"
    npz = ev / "per_request.npz"
    npz.write_bytes(b"PK\x03\x04" + b"\0" * (npz.stat().st_size - 4))
    marker = outputs.marker_path(ev, "evaluation")
    doc = json.loads(marker.read_text())
    del doc["sha256"]
    marker.write_text(json.dumps(doc))
    with pytest.raises(DataError, match=rf"{npz}: not a readable per-request archive"):
        load_per_request(ev)


def test_a_flipped_byte_in_a_model_file_is_refused_by_evaluate(evaluated, tmp_path, capsys):
    run = _copy_run(evaluated, tmp_path / "run")
    shutil.rmtree(run / "eval")
    _flip_byte(run / "seed-1" / "model.pt", offset=(run / "seed-1" / "model.pt").stat().st_size - 200)
    code, _, err = _cli(capsys, "evaluate", "--model", str(run), "--no-compile", "--device", "cpu", "-q")
    assert code == 2
    line = _error_line(err, "evaluate")
    assert f"run folder {run} is damaged: {run / 'seed-1' / 'model.pt'} has been changed since it was written" in line
    assert "delete the damaged file (or the day or seed folder that holds it) and make it again with: lcron train" \
        in line
    assert not (run / "eval").exists()


def test_a_rerun_does_not_bless_a_damaged_file_it_kept(evaluated, tmp_path, capsys):
    """Training again skips the complete seed; its damaged model.pt must not get a new marker."""
    run = _copy_run(evaluated, tmp_path / "run")
    model = run / "seed-1" / "model.pt"
    _flip_byte(model, offset=model.stat().st_size - 200)
    argv = ["train", "--shards", json.loads((run / "run.json").read_text())["shards"], "--out", str(run),
            "--method", "bce", "--batch-size", "16", "--max-steps-per-day", "1", "--no-compile", "--device", "cpu",
            "--seeds", "1", "-q"]
    code, _, err = _cli(capsys, *argv)
    assert code == 2
    assert f"{model} has been changed since it was written" in _error_line(err, "train")
    assert "this step kept it: delete it (or the day or seed folder that holds it)" in err
    with pytest.raises(IncompleteOutputError, match="is incomplete: the step writing it did not finish"):
        outputs.require_complete(run, "run", "run folder", "x")  # no marker for the damaged run
    shutil.rmtree(run / "seed-1")
    code, _, _ = _cli(capsys, *argv)
    assert code == 0
    outputs.require_complete(run, "run", "run folder", "x")


def test_preprocess_does_not_bless_a_damaged_day_it_skips(tiny_recflow, tmp_path, capsys):
    out = tmp_path / "shards"
    argv = ["preprocess", "--source", str(tiny_recflow), "--out", str(out), "--stages", "2", "-q"]
    assert _cli(capsys, *argv)[0] == 0
    day = sorted((out / "days").iterdir())[0]
    _flip_byte(day / "items.npy", offset=(day / "items.npy").stat().st_size - 8)
    code, _, err = _cli(capsys, *argv)
    assert code == 2 and f"{day / 'items.npy'} has been changed since it was written" in _error_line(err, "preprocess")
    shutil.rmtree(day)
    assert _cli(capsys, *argv)[0] == 0
    outputs.require_complete(out, "shards", "shard set", "x")


# ------------------------------------------------------------------ foreign folders and --overwrite
def _foreign(tmp_path: Path) -> Path:
    folder = tmp_path / "users-data"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    (folder / "metrics.json").write_text('{"mine": true}')
    (folder / "sub").mkdir()
    (folder / "sub" / "x.bin").write_bytes(b"\1\2\3")
    return folder


@pytest.mark.parametrize("step", ["train", "evaluate", "serve-eval", "report", "compare"])
def test_overwrite_never_touches_a_folder_lcron_did_not_make(step, evaluated, tiny_shards_2, tmp_path, capsys):
    folder = _foreign(tmp_path)
    before = _snapshot(folder)
    argv = {
        "train": ["train", "--shards", str(tiny_shards_2.root), "--method", "bce", "--batch-size", "16",
                  "--max-steps-per-day", "1", "--no-compile", "--device", "cpu", "--seeds", "1", "--out", str(folder)],
        "evaluate": ["evaluate", "--model", str(evaluated), "--no-compile", "--device", "cpu", "--out", str(folder)],
        "serve-eval": ["serve-eval", "--model", str(evaluated), "--k1", "50", "--device", "cpu", "--out", str(folder)],
        "report": ["report", str(evaluated), "--out", str(folder)],
        "compare": ["compare", str(evaluated / "eval"), "--out", str(folder)],
    }[step]
    code, _, err = _cli(capsys, *argv, "--overwrite", "-q")
    assert code == 2
    line = _error_line(err, step)
    assert f"{folder} is not empty and is not an lcron" in line and "even with --overwrite" in line
    assert _snapshot(folder) == before


def test_a_foreign_page_file_is_not_replaced_by_report(evaluated, tmp_path, capsys):
    out = tmp_path / "report"
    out.mkdir()
    (out / "report.json").write_text('{"kind": "lcron-report"}')
    (out / "_complete-x.json").write_text("{}")
    (out / "report.json").write_text('{"theirs": 1}')
    code, _, err = _cli(capsys, "report", str(evaluated), "--out", str(out), "--overwrite", "-q")
    assert code == 2 and "report.json exists and is not an lcron report" in _error_line(err, "report")
    assert (out / "report.json").read_text() == '{"theirs": 1}'


def test_overwrite_still_replaces_lcron_s_own_outputs(evaluated, tiny_shards_2, tmp_path, capsys):
    run = _copy_run(evaluated, tmp_path / "run")
    code, _, _ = _cli(capsys, "evaluate", "--model", str(run), "--no-compile", "--device", "cpu", "--tie-seed", "3",
                      "--overwrite", "-q")
    assert code == 0
    assert json.loads((run / "eval" / "metrics.json").read_text())["inputs"]["tie_seed"] == 3
    code, _, _ = _cli(capsys, "report", str(run), "-q")
    assert code == 0
    code, _, _ = _cli(capsys, "report", str(run), "--overwrite", "-q")
    assert code == 0


# ------------------------------------------------------------------ short writes: where and why
@pytest.fixture
def file_size_limit():
    """Run a block under a file-size limit (``ulimit -f``): writes past it stop short."""
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    def limit(n: int) -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (n, old_limit[1]))

    yield limit
    resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
    signal.signal(signal.SIGXFSZ, old_handler)


def test_a_short_numpy_write_names_the_file_and_the_cause(tmp_path, file_size_limit, monkeypatch):
    path = tmp_path / "a.npy"
    file_size_limit(200_000)
    with pytest.raises(OSError) as info:
        atomic.save_npy(path, np.zeros(100_000, dtype=np.int64))
    assert info.value.filename == str(path)
    assert "File too large" in str(info.value) and "ulimit -f" in str(info.value)
    assert "requested and" in str(info.value)  # numpy's own words are kept after the cause

    class Full:
        f_bavail, f_frsize = 0, 4096

    monkeypatch.setattr(atomic.os, "statvfs", lambda _: Full())
    with pytest.raises(OSError) as info:
        atomic.save_npy(path, np.zeros(100_000, dtype=np.int64))
    assert info.value.filename == str(path) and info.value.errno == 28
    assert str(info.value).startswith("[Errno 28] No space left on device (0 bytes free;")
    assert not path.exists() and not list(tmp_path.glob("*.tmp"))


def test_preprocess_on_a_filling_disk_names_the_file_and_the_cause(tiny_recflow, tmp_path, capsys,
                                                                   file_size_limit, monkeypatch):
    from lcron.data import shards as shards_mod

    real_save = shards_mod.save_npy

    def big_save(path, array):  # one array larger than the limit, as a real day's would be
        if Path(path).name == "items.npy":
            array = np.zeros((array.shape[0] + 40_000, *array.shape[1:]), dtype=array.dtype)
        real_save(path, array)

    monkeypatch.setattr(shards_mod, "save_npy", big_save)
    out = tmp_path / "shards"
    file_size_limit(1_000_000)
    code, _, err = _cli(capsys, "preprocess", "--source", str(tiny_recflow), "--out", str(out), "--stages", "2", "-q")
    assert code == 2
    line = _error_line(err, "preprocess")
    assert "items.npy" in line and str(out) in line and "File too large" in line


# ------------------------------------------------------------------ resource bombs in setting files
ALIAS_BOMB = """\
base: two_stage
name: bomb
extra:
  a: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x"]
  b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
  c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
  d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
  e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
  f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
  g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
  h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
  i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]
"""


@pytest.mark.parametrize("name, content, message", [
    ("bomb.yaml", ALIAS_BOMB, "anchors and aliases (&, *) are not accepted in a setting file (line 4"),
    ("binary.json", b"\xff\xfe\x00garbage", "is not valid JSON"),
    ("deep.json", "[" * 100_000 + "]" * 100_000, "is not valid JSON"),
    ("deep.yaml", "a: " + "[" * 20_000 + "]" * 20_000, "is not valid YAML"),
    ("huge.json", " " * (2 << 20) + "{}", "is larger than 1048576 bytes"),
    ("groups.json", '{"base": "two_stage", "name": "g", "group_size": 1000000000}', "'group_size' 1000000000 is "
                                                                                    "larger than 1000"),
    ("name.json", '{"base": "two_stage", "name": "../../etc"}', "'name' must be"),
])
def test_hostile_setting_files_are_refused_fast(name, content, message, tiny_recflow, tmp_path, capsys):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    t0 = time.perf_counter()
    code, _, err = _cli(capsys, "preprocess", "--source", str(tiny_recflow), "--out", str(tmp_path / "s"),
                        "--setting", str(path), "-q")
    assert code == 2 and time.perf_counter() - t0 < 30
    line = _error_line(err, "preprocess")
    assert str(path) in line and message in line
    assert not (tmp_path / "s").exists()


# ------------------------------------------------------------------ a wrong file in a run folder
def test_a_day_snapshot_in_place_of_resume_pt_is_a_clear_error(tiny_shards_2, tmp_path, capsys):
    run = tmp_path / "run"
    train(tiny_shards_2, run, TrainConfig(method="bce", batch_size=16, seeds=(1,), compile=False, day_snapshots=True),
          progress=False, max_steps_per_day=1)
    seed = run / "seed-1"
    snapshot = sorted((seed / "checkpoints").glob("*.pt"))[0]
    (seed / "summary.json").unlink()  # the seed is unfinished: training resumes from resume.pt
    shutil.copy(snapshot, seed / "resume.pt")
    code, _, err = _cli(capsys, "train", "--shards", json.loads((run / "run.json").read_text())["shards"],
                        "--out", str(run), "--method", "bce", "--batch-size", "16", "--max-steps-per-day", "1",
                        "--no-compile", "--device", "cpu", "--seeds", "1", "--day-snapshots", "-q")
    assert code == 2
    line = _error_line(err, "train")
    assert f"{seed / 'resume.pt'} is not a resume checkpoint" in line and "it lacks optim_state" in line
    assert f"remove {seed / 'resume.pt'}" in line


def test_a_foreign_state_dict_as_model_pt_is_a_clear_error(evaluated, tmp_path):
    import torch

    from lcron.errors import DataError
    from lcron.run_folder import load_cascade

    path = tmp_path / "model.pt"
    torch.save({"weight": torch.zeros(3)}, path)
    with pytest.raises(DataError, match=rf"{path} is not an lcron model file: it lacks config, model_state"):
        load_cascade(path)
    good = torch.load(evaluated / "seed-1" / "model.pt", weights_only=True)
    good["model_state"] = {k: v[:1] for k, v in good["model_state"].items()}
    torch.save(good, path)
    with pytest.raises(DataError, match=rf"{path}: its model state does not fit this model"):
        load_cascade(path)


# ------------------------------------------------------------------ warnings are warnings
def test_evaluating_a_training_day_warns_under_quiet(evaluated, tmp_path, capsys):
    run = _copy_run(evaluated, tmp_path / "run")
    train_day = json.loads((run / "run.json").read_text())["days"][0]
    code, _, err = _cli(capsys, "-q", "evaluate", "--model", str(run), "--days", train_day, "--no-compile",
                        "--device", "cpu", "--out", str(tmp_path / "ev"))
    assert code == 0
    assert f"lcron: warning: test day {train_day} was also a training day of this run" in err


def test_training_without_a_held_out_day_warns(tiny_shards_2, tmp_path, capsys):
    days = tiny_shards_2.days
    code, _, err = _cli(capsys, "train", "--shards", str(tiny_shards_2.root), "--out", str(tmp_path / "run"),
                        "--method", "bce", "--batch-size", "16", "--max-steps-per-day", "1", "--no-compile",
                        "--device", "cpu", "--seeds", "1", "--days", f"{days[0]}:{days[-1]}", "-q")
    assert code == 0
    assert (f"lcron: warning: training days {days[0]}..{days[-1]} include the shard set's last day, so no later "
            "day is held out") in err
    code, _, err = _cli(capsys, "train", "--shards", str(tiny_shards_2.root), "--out", str(tmp_path / "run2"),
                        "--method", "bce", "--batch-size", "16", "--max-steps-per-day", "1", "--no-compile",
                        "--device", "cpu", "--seeds", "1", "-q")
    assert code == 0 and "held out" not in err


def test_adding_seeds_to_a_run_rewrites_its_files_without_a_false_alarm(tiny_shards_2, tmp_path, capsys):
    """run.json changes when seeds are added; the step wrote it, so finish trusts it."""
    run = tmp_path / "run"
    base = ["train", "--shards", str(tiny_shards_2.root), "--out", str(run), "--method", "bce", "--batch-size", "16",
            "--max-steps-per-day", "1", "--no-compile", "--device", "cpu", "-q"]
    assert _cli(capsys, *base, "--seeds", "1")[0] == 0
    assert _cli(capsys, *base, "--seeds", "2")[0] == 0
    outputs.require_complete(run, "run", "run folder", "x")
    assert json.loads((run / "run.json").read_text())["seeds"] == [1, 2]


# ------------------------------------------------------------------ vocabulary bombs
def _with_id_count(tiny_recflow: Path, dest: Path, count: int) -> Path:
    import pickle

    shutil.copytree(tiny_recflow, dest)
    path = dest / "others" / "id_cnt.pkl"
    counts = pickle.loads(path.read_bytes())
    key = "video_id" if "video_id" in counts else "photo_id"
    counts[key] = count
    path.write_bytes(pickle.dumps(counts))
    return dest


def test_an_id_count_no_table_can_index_is_refused_by_validate_and_preprocess(tiny_recflow, tmp_path, capsys):
    src = _with_id_count(tiny_recflow, tmp_path / "recflow", 10**12)
    for cmd in (["validate", "--source", str(src)],
                ["preprocess", "--source", str(src), "--out", str(tmp_path / "s"), "--stages", "2"]):
        code, _, err = _cli(capsys, *cmd, "-q")
        assert code == 2
        assert (f"{src}/others/id_cnt.pkl: id_cnt[" in _error_line(err, cmd[0])
                and "= 1000000000000 is more ids than an embedding table can index (at most 2147483645)" in err)
    assert not (tmp_path / "s").exists()


def test_tables_that_cannot_fit_in_memory_are_refused_before_allocating(tiny_recflow, tmp_path, capsys):
    """2^31 videos pass the id check, but three stage tables with Adam's moments cannot fit:
    train says so before allocating (the old code died in torch's allocator, exit 1)."""
    src = _with_id_count(tiny_recflow, tmp_path / "recflow", 2**31 - 3)
    shards = tmp_path / "s"
    assert _cli(capsys, "preprocess", "--source", str(src), "--out", str(shards), "--stages", "2", "-q")[0] == 0
    t0 = time.perf_counter()
    code, _, err = _cli(capsys, "train", "--shards", str(shards), "--out", str(tmp_path / "run"), "--method", "bce",
                        "--batch-size", "16", "--no-compile", "--device", "cpu", "-q")
    assert code == 2 and time.perf_counter() - t0 < 30
    line = _error_line(err, "train")
    assert "the embedding tables need at least" in line and "GiB on cpu (2 stage models x" in line
    assert f"the largest vocabulary is 'video_id' with 2,147,483,647 rows ({shards / 'dataset.json'})" in line
    assert not (tmp_path / "run").exists()


def test_a_folder_named_like_a_seed_is_not_a_seed(evaluated, tmp_path):
    from lcron.run_folder import run_seeds

    run = _copy_run(evaluated, tmp_path / "run")
    shutil.copytree(run / "seed-1", run / "seed-old")
    assert [p.name for p in run_seeds(run)] == ["seed-1"]


@pytest.mark.parametrize("extra, message", [
    (["--seeds", "-1"], "seeds must be integers in [0, 4294967295], got [-1]"),
    (["--seeds", "99999999999999999999"], "seeds must be integers in [0, 4294967295]"),
    (["--method", "lcron", "--loss-option", "tau=1e999"], "must be positive (and finite)"),
])
def test_numbers_out_of_range_are_exit_2_not_a_traceback(extra, message, tiny_shards_2, tmp_path, capsys):
    argv = ["train", "--shards", str(tiny_shards_2.root), "--out", str(tmp_path / "run"), "--batch-size", "16",
            "--no-compile", "--device", "cpu", "-q"]
    if "--method" not in extra:
        argv += ["--method", "bce"]
    code, _, err = _cli(capsys, *argv, *extra)
    assert code == 2 and message in _error_line(err, "train")
    assert not (tmp_path / "run").exists()


def test_an_embedding_dim_out_of_range_is_a_config_error():
    from lcron.errors import ConfigError

    with pytest.raises(ConfigError, match=r"embedding dim must be an integer in \[1, 4096\], got 100000000"):
        TrainConfig(method="bce", dim=100_000_000).validate()


def test_generate_refuses_sizes_it_cannot_hold(tmp_path, capsys, monkeypatch):
    """The generator's world and day are sized before anything is allocated (the old code
    ended in numpy's allocation error, exit 1)."""
    from lcron.data import synthetic

    code, _, err = _cli(capsys, "generate", "--out", str(tmp_path / "g1"), "--items", "99999999999999", "-q")
    assert code == 2 and "items=99999999999999 is more ids than an embedding table can index" in _error_line(
        err, "generate")
    monkeypatch.setattr(synthetic, "available_bytes", lambda: 2**30)
    code, _, err = _cli(capsys, "generate", "--out", str(tmp_path / "g2"), "--requests-per-day", "200000", "-q")
    line = _error_line(err, "generate")
    assert code == 2 and "generating needs about 4.4 GiB" in line and "and 1.0 GiB are available" in line
    assert not (tmp_path / "g1").exists() and not (tmp_path / "g2").exists()


@pytest.mark.parametrize("sizes", [{"video_id": -5}, {"video_id": 0}, {"video_id": 2.5}, {"video_id": "9"},
                                   {"video_id": 2**40}])
def test_malformed_embedding_sizes_are_a_data_error_before_any_allocation(sizes):
    import torch

    from lcron.devices import check_table_memory
    from lcron.errors import DataError

    with pytest.raises(DataError, match=r"run.json: embedding table sizes must be integers in \[1, 2\^31\)"):
        check_table_memory({"user_id": 10, **sizes}, 2, 8, torch.device("cpu"), where="run.json")
