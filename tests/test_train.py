"""The trainer: every method in both settings learns; resumable, deterministic, guarded."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from lcron.batches import gather
from lcron.data.fields import MODEL_INPUTS
from lcron.data.shards import ShardSet, preprocess
from lcron.data.synthetic import generate
from lcron.errors import ConfigError, NumericalError, OutputExistsError
from lcron.losses import METHODS
from lcron.metrics import recall_at_k_m
from lcron.run_folder import load_cascade, load_checkpoint
from lcron.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]


def _learnable_world(base: Path, requests_per_day: int) -> dict:
    """A small but learnable world: 3 training days + 1 test day, both settings."""
    src = generate(base / "recflow", num_days=4, requests_per_day=requests_per_day, users=120, items=800, seed=3,
                   progress=False)
    return {
        2: preprocess(str(src), base / "shards-2", 2, progress=False),
        3: preprocess(str(src), base / "shards-3", 3, progress=False),
        "source": src,
    }


@pytest.fixture(scope="module")
def learn_data(tmp_path_factory):
    return _learnable_world(tmp_path_factory.mktemp("learn"), 400)


@pytest.fixture(scope="module")
def learn_data_large(tmp_path_factory):
    """Three times the requests: for ICC, the slowest learner (below)."""
    return _learnable_world(tmp_path_factory.mktemp("learn-large"), 1200)


def _stage_recalls(run_dir: Path, shards: ShardSet, seed: int = 1) -> tuple[list[float], list[float]]:
    """Mean Recall@10@m per stage of the trained model and of a random scorer on the test day."""
    cascade, _ = load_cascade(run_dir / f"seed-{seed}" / "model.pt")
    arrays = shards.load_day(shards.days[-1])
    batch = gather(arrays, slice(None), MODEL_INPUTS)
    with torch.no_grad():
        logits = [z.numpy() for z in cascade(batch)]
    labels, mask = np.asarray(arrays["label"]), np.asarray(arrays["mask"])
    rng = np.random.default_rng(0)
    trained, random = [], []
    for z, m in zip(logits, shards.setting.quotas):
        trained.append(float(np.nanmean(recall_at_k_m(z, labels, mask, k=10, m=m))))
        random.append(float(np.nanmean(recall_at_k_m(rng.normal(size=z.shape), labels, mask, k=10, m=m))))
    return trained, random


# RankFlow distils each stage into the one before it (MSE to a stopped-gradient target that
# moves as the later stage learns): its total is not a fixed objective, so learning is judged on
# its supervised BCE parts.
SUPERVISED_PARTS = {"rankflow": "bce/"}


def _fixed_batch_loss(run_dir: Path, shards: ShardSet, method: str, payload_path: Path | None, *, seed: int = 1,
                      requests: int | None = None) -> float:
    """The method's loss on the first ``requests`` test requests (None: the whole test day), with the
    models (and loss weights) of a payload, or as the trainer initialised them for ``seed``."""
    from lcron.losses import build_loss
    from lcron.models import build_cascade

    setting = shards.setting
    torch.manual_seed(seed)
    cascade = build_cascade(setting, dict(shards.embedding_sizes), compile=False)
    loss = build_loss(method, setting=setting)
    if payload_path is not None:
        state = load_checkpoint(payload_path)
        cascade.load_state_dict(state["model_state"])
        loss.load_state_dict(state["loss_state"])
    arrays = shards.load_day(shards.days[-1])
    n = len(arrays["label"]) if requests is None else requests
    batch = gather(arrays, np.arange(n), ("context", "user", "seq", "seq_mask", "items", "label", "mask"))
    with torch.no_grad():
        out = loss(cascade(batch), batch["label"], batch["mask"])
    prefix = SUPERVISED_PARTS.get(method)
    if prefix is None:
        return float(out.total)
    return sum(float(v) for k, v in out.parts.items() if k.startswith(prefix))


# How the learning test judges, and where its margins come from. Every method trains one pass
# over 3 days with batches of 32 and lr 0.01: 36 steps on 400 requests a day. Judged on the
# whole test day (not a 64-request slice): the method's loss falls by at least LOSS_DROP
# (relative) and every stage's Recall@10@m beats a random scorer by RECALL_MARGIN.
#
# ICC is the exception, by its design: its cut-off-gated ensemble hands a stage a gradient only
# around the cut-offs (in the paper it trails every method). On 400 requests a day its loss
# ROSE for seed 1 (0.694 -> 0.709) while seeds 2-4 fell by 1-4%: that run length judged the
# seed and the CPU's floating-point path, not the method. So ICC gets 1,200 requests a day
# (111 steps) and is judged on its loss and its last stage, whose score the ensemble carries;
# its earlier stages are not judged (seed 2 of the three-stage setting left the pre-rank stage
# 0.046 below chance).
#
# Margins measured with exactly this set-up, seeds 1-2 at least (1-4 for bce, rankflow and ICC
# on 400 a day, 1-3 for ICC on 1,200), both settings (issue 24, 2-core machine under load 15-18,
# OMP_NUM_THREADS 1 and default). Smallest over seeds, two-stage / three-stage:
#   relative loss drop: bce 24 / 28%, rankflow 20 / 27%, fs_ranknet 15 / 16%, fs_lambdaloss 52 / 45%,
#   arf 47 / 55%, arf_v2 53 / 51%, lcron 59 / 25%; ICC on 1,200 a day 4.3 / 2.1%.
#   Recall@10@m above random, over stages too: bce +0.187 / +0.165, rankflow +0.119 / +0.083,
#   fs_ranknet +0.191 / +0.185, fs_lambdaloss +0.197 / +0.180, arf +0.194 / +0.180,
#   arf_v2 +0.192 / +0.182, lcron +0.196 / +0.165; ICC's last stage on 1,200 a day +0.254 / +0.151.
# The thresholds are about a third of the smallest measured margin.
LEARN_REQUESTS = {"icc": 1200}  # requests per day; others 400
LOSS_DROP = {"icc": 0.007}  # others 0.05
RECALL_MARGIN = {"icc": 0.05}  # others 0.03
LAST_STAGE_ONLY = {"icc"}


@pytest.mark.parametrize("stages", [2, 3])
@pytest.mark.parametrize("method", METHODS)
def test_every_method_learns(request, tmp_path, method, stages):
    requests_per_day = LEARN_REQUESTS.get(method, 400)
    shards = request.getfixturevalue("learn_data_large" if requests_per_day > 400 else "learn_data")[stages]
    train_days = shards.days[:-1]
    assert [shards.num_requests(d) for d in train_days] == [requests_per_day] * 3
    out = tmp_path / "run"
    cfg = TrainConfig(method=method, batch_size=32, lr=1e-2, seeds=(1,), compile=False)
    (res,) = train(shards, out, cfg, progress=False)
    assert res.summary["steps"] == 3 * (requests_per_day // 32)  # one step per full batch: 36 (111 for ICC)
    before = _fixed_batch_loss(out, shards, method, None)
    after = _fixed_batch_loss(out, shards, method, out / "seed-1" / "model.pt")
    drop = LOSS_DROP.get(method, 0.05)
    assert after < before * (1 - drop), f"{method}: loss {before:.4f} -> {after:.4f} (needs a {drop:.1%} drop)"
    trained, random = _stage_recalls(out, shards)
    margin = RECALL_MARGIN.get(method, 0.03)
    judged = list(zip(shards.setting.stage_names, trained, random))
    for stage, t, r in judged[-1:] if method in LAST_STAGE_ONLY else judged:
        assert t > r + margin, f"{method} {stage}: Recall@10@m {t:.3f} vs random {r:.3f} (needs +{margin})"


def test_methods_registry_covers_the_eight():
    from losses.spec import EIGHT  # tests/losses/spec.py: the spec's list, the one place the eight are named

    assert len(EIGHT) == 8 and set(EIGHT) <= set(METHODS)  # more may be registered (a method added as one file)


def test_custom_setting_file_trains(learn_data, tmp_path):
    setting_file = tmp_path / "setting.json"
    setting_file.write_text(json.dumps({"name": "two_stage_25_10", "base": "two_stage", "quotas": [25, 10]}))
    out = tmp_path / "run"
    (res,) = train(learn_data[2], out, TrainConfig(method="lcron", batch_size=32, compile=False), setting=setting_file,
                   progress=False, max_steps_per_day=3)
    run = json.loads((out / "run.json").read_text())
    assert run["setting"]["quotas"] == [25, 10]
    cascade, payload = load_cascade(out / "seed-1" / "model.pt")
    assert payload["config"]["setting"]["name"] == "two_stage_25_10"
    assert res.summary["steps"] == 9


def test_setting_that_does_not_match_the_shards_is_refused(learn_data, tmp_path):
    with pytest.raises(ConfigError, match="does not match the shard set"):
        train(learn_data[2], tmp_path / "r", TrainConfig(method="bce", compile=False), setting="three_stage",
              progress=False)
    with pytest.raises(ConfigError, match="--stages 3"):
        train(learn_data[2], tmp_path / "r", TrainConfig(method="bce", compile=False), stages=3, progress=False)


@pytest.mark.parametrize("kwargs,match", [
    ({"method": "nope"}, "unknown method 'nope'; known methods: bce"),
    ({"batch_size": 0}, "batch size must be an integer >= 1"),
    ({"lr": -1.0}, "learning rate"),
    ({"resume_every": 0}, "resume_every must be an integer >= 1"),
])
def test_config_errors(learn_data, tmp_path, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        train(learn_data[2], tmp_path / "r", TrainConfig(**kwargs), progress=False)


def _state(path: Path) -> dict:
    return load_checkpoint(path)["model_state"]


def test_bit_identical_reruns_and_checkpoints_per_day(learn_data, tmp_path):
    cfg = TrainConfig(method="lcron", batch_size=32, seeds=(7,), compile=False, day_snapshots=True)
    train(learn_data[2], tmp_path / "a", cfg, progress=False, max_steps_per_day=4)
    train(learn_data[2], tmp_path / "b", cfg, progress=False, max_steps_per_day=4)
    a, b = _state(tmp_path / "a/seed-7/model.pt"), _state(tmp_path / "b/seed-7/model.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    days = learn_data[2].days[:-1]
    assert sorted(p.stem for p in (tmp_path / "a/seed-7/checkpoints").glob("*.pt")) == days
    assert sorted(p.name for p in (tmp_path / "a/seed-7").iterdir()) == [
        "checkpoints", "model.pt", "summary.json", "train_log.jsonl"]
    log_a = (tmp_path / "a/seed-7/train_log.jsonl").read_text()
    assert log_a == (tmp_path / "b/seed-7/train_log.jsonl").read_text()
    assert len(log_a.splitlines()) == 12
    # another seed gives other weights
    train(learn_data[2], tmp_path / "c", TrainConfig(method="lcron", batch_size=32, seeds=(8,), compile=False),
          progress=False, max_steps_per_day=4)
    c = _state(tmp_path / "c/seed-8/model.pt")
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_idempotent_skip_and_config_mismatch(learn_data, tmp_path, capsys):
    cfg = TrainConfig(method="bce", batch_size=32, compile=False)
    train(learn_data[2], tmp_path / "r", cfg, progress=False, max_steps_per_day=1)
    mtime = (tmp_path / "r/seed-1/model.pt").stat().st_mtime_ns
    (res,) = train(learn_data[2], tmp_path / "r", cfg, progress=False, max_steps_per_day=1)
    assert res.skipped and "complete" in capsys.readouterr().err
    assert (tmp_path / "r/seed-1/model.pt").stat().st_mtime_ns == mtime
    other = TrainConfig(method="bce", batch_size=16, compile=False)
    with pytest.raises(OutputExistsError, match=r"different configuration \(.*differs in train.batch_size: 32 -> 16\)"):
        train(learn_data[2], tmp_path / "r", other, progress=False, max_steps_per_day=1)
    (res,) = train(learn_data[2], tmp_path / "r", other, progress=False, max_steps_per_day=1, overwrite=True)
    assert not res.skipped


def test_numerical_guard_names_method_day_step_and_part(learn_data, tmp_path):
    cfg = TrainConfig(method="bce", batch_size=32, lr=1e30, compile=False)
    with pytest.raises(NumericalError) as info:
        train(learn_data[2], tmp_path / "r", cfg, progress=False)
    msg = str(info.value)
    assert "'bce'" in msg and "day 20" in msg and "step" in msg and "loss part" in msg


def test_checkpoints_refuse_pickled_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    bad = tmp_path / "model.pt"
    torch.save({"config": Evil()}, bad)
    from lcron.errors import DataError

    with pytest.raises(DataError, match="cannot be loaded safely"):
        load_checkpoint(bad)
    assert not (tmp_path / "pwned").exists()


def _cli_train(args: list[str], out: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "lcron", "train", *args, "--out", str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("embedding_optimizer", ["dense", "lazy"])
def test_kill_and_resume_matches_uninterrupted_run(learn_data, tmp_path, embedding_optimizer):
    """SIGKILL after the first day, start again: same weights, same log, same loss as an uninterrupted run.

    Every run is a fresh `lcron train` process, as a user (or a preempted KFP pod) would run it.
    """
    shards = learn_data[2]
    # Not --quiet: the resumed process's "resuming after day" line is checked below.
    args = ["--shards", str(shards.root), "--method", "lcron", "--batch-size", "8", "--seeds", "5", "--no-compile",
            "--embedding-optimizer", embedding_optimizer]
    ref = tmp_path / "ref"
    proc = _cli_train(args, ref)
    assert proc.wait(timeout=600) == 0, proc.stderr.read()

    out = tmp_path / "killed"
    first_ckpt = out / "seed-5" / "resume.pt"
    proc = _cli_train(args, out)
    deadline = time.time() + 300
    while not first_ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert first_ckpt.exists(), "the resume checkpoint never appeared"
    assert not (out / "seed-5" / "summary.json").exists(), "training finished before it could be killed"
    assert not (out / "seed-5" / "model.pt").exists()

    proc = _cli_train(args, out)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert "resuming after day" in err
    resumed = next(line for line in err.splitlines() if "resuming after day" in line)
    a, b = _state(ref / "seed-5/model.pt"), _state(out / "seed-5/model.pt")
    assert a.keys() == b.keys()
    ref_log = (ref / "seed-5/train_log.jsonl").read_text()
    res_log = (out / "seed-5/train_log.jsonl").read_text()
    differ = {k: float((a[k] - b[k]).abs().max()) for k in a if not torch.equal(a[k], b[k])}
    ref_lines, res_lines = ref_log.splitlines(), res_log.splitlines()
    first_log_diff = next((i for i, (x, y) in enumerate(zip(ref_lines, res_lines)) if x != y), None)
    # On a failure, the message says where the runs parted: the resumed day, the weights that
    # differ (largest difference), the first log line (step) that differs and each process's
    # torch threads (MKL's results depend on its thread count).
    ref_sum = json.loads((ref / "seed-5/summary.json").read_text())
    res_sum = json.loads((out / "seed-5/summary.json").read_text())
    threads = (ref_sum["torch_threads"], res_sum["torch_threads"])
    assert not differ and ref_log == res_log, (resumed, differ, first_log_diff, len(ref_lines), len(res_lines), threads)
    assert res_sum["final_loss"] == ref_sum["final_loss"] and res_sum["steps"] == ref_sum["steps"]
    assert not (out / "seed-5" / "resume.pt").exists()  # a complete seed keeps no resume state


# ------------------------------------------------------------------ embedding optimizers, run-folder size
def test_dense_embedding_optimizer_trains_exactly_as_one_adam_per_stage(learn_data):
    """The embedding tables' own optimizer changes nothing in dense mode: the same weights,
    bit for bit, as the former one-Adam-per-stage-model construction after a few steps."""
    from lcron.batches import day_order, iter_batches
    from lcron.train import EMBEDDINGS, build_training_objects

    shards = learn_data[2]
    cfg = TrainConfig(method="lcron", batch_size=32, compile=False, embedding_optimizer="dense")
    new_cascade, new_loss, new_opts = build_training_objects(shards.setting, shards.embedding_sizes, cfg, 3, "cpu")
    old_cascade, old_loss, _ = build_training_objects(shards.setting, shards.embedding_sizes, cfg, 3, "cpu")
    old_opts = {name: torch.optim.Adam(old_cascade.stages[name].parameters(), lr=cfg.lr)
                for name in shards.setting.stage_names}
    old_opts["loss_weights"] = torch.optim.Adam(old_loss.parameters(), lr=cfg.lr)
    assert isinstance(new_opts[EMBEDDINGS], torch.optim.Adam)
    assert not any(p.is_sparse for p in new_cascade.parameters())
    arrays = shards.load_day(shards.days[0])
    for batch in list(iter_batches(arrays, day_order(len(arrays["label"]), 3, 0, True), 32, drop_last=True))[:4]:
        for cascade, loss, opts in ((new_cascade, new_loss, new_opts), (old_cascade, old_loss, old_opts)):
            out = loss(cascade(batch), batch["label"], batch["mask"])
            for opt in opts.values():
                opt.zero_grad(set_to_none=True)
            out.total.backward()
            for opt in opts.values():
                opt.step()
    a, b = new_cascade.state_dict(), old_cascade.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    init = build_training_objects(shards.setting, shards.embedding_sizes, cfg, 3, "cpu")[0].state_dict()
    tables = [k for k in a if k.endswith("embedding.weight")]
    assert len(tables) == 2 and all(not torch.equal(a[k], init[k]) for k in tables)  # the tables did train


def test_lazy_run_updates_only_rows_its_batches_touched(learn_data, tmp_path):
    """A lazy run's embedding rows that no training request looks up keep their initial
    values; a dense run moves rows only while they have momentum (so the two runs differ)."""
    from lcron.models.embeddings import embedding_tables
    from lcron.train import build_training_objects

    shards = learn_data[2]
    cfg = TrainConfig(method="bce", batch_size=32, seeds=(2,), compile=False, embedding_optimizer="lazy")
    train(shards, tmp_path / "lazy", cfg, progress=False, max_steps_per_day=2)
    trained, _ = load_cascade(tmp_path / "lazy" / "seed-2" / "model.pt")
    init, _, _ = build_training_objects(shards.setting, shards.embedding_sizes, cfg, 2, "cpu")
    table = embedding_tables(trained)[0]
    changed = (table.weight != embedding_tables(init)[0].weight).any(1)
    # the rows the 2 batches of each day looked up (an upper bound of what may change)
    from lcron.batches import day_order

    touched = torch.zeros(len(changed), dtype=torch.bool)
    for i, day in enumerate(shards.days[:-1]):
        arrays = shards.load_day(day)
        rows = day_order(len(arrays["label"]), 2, i, True)[:64]
        touched[table.rows_used({k: np.asarray(arrays[k])[rows] for k in ("context", "user", "seq", "items")})] = True
    assert changed.any() and not (changed & ~touched).any()
    assert not changed[table.padding_rows].any()
    run = json.loads((tmp_path / "lazy" / "run.json").read_text())
    assert run["train"]["embedding_optimizer"] == "lazy"


def test_day_snapshot_scores_the_next_day_like_the_full_model(learn_data, tmp_path):
    """checkpoints/<day>.pt holds only the rows the next day reads (weights only), yet scores
    that day exactly as the full model of the same moment; other rows are NaN."""
    shards = learn_data[2]
    first = shards.days[0]
    cfg = TrainConfig(method="lcron", batch_size=32, compile=False, days=f"{first}:{first}", day_snapshots=True)
    train(shards, tmp_path / "r", cfg, progress=False, max_steps_per_day=3)
    snap_path = tmp_path / "r" / "seed-1" / "checkpoints" / f"{first}.pt"
    payload = load_checkpoint(snap_path)
    assert "optim_state" not in payload and payload["rows_for_day"] == shards.days[1]
    full, _ = load_cascade(tmp_path / "r" / "seed-1" / "model.pt")   # trained on the first day only
    snap, _ = load_cascade(snap_path)
    stored = next(iter(payload["embedding_rows"].values()))["rows"]
    assert 0 < len(stored) < full.stages[shards.setting.stage_names[0]].embedding.weight.shape[0]
    batch = gather(shards.load_day(shards.days[1]), slice(None), MODEL_INPUTS)
    with torch.no_grad():
        for a, b in zip(full(batch), snap(batch)):
            assert torch.equal(a, b)
    weight = snap.stages[shards.setting.stage_names[0]].embedding.weight
    missing = torch.ones(weight.shape[0], dtype=torch.bool)
    missing[stored] = False
    assert torch.isnan(weight[missing]).all() and not torch.isnan(weight[~missing]).any()


def test_unknown_embedding_optimizer_is_refused(learn_data, tmp_path):
    with pytest.raises(ConfigError, match="unknown embedding optimizer 'adagrad'; choose one of auto, dense, lazy"):
        train(learn_data[2], tmp_path / "r", TrainConfig(method="bce", embedding_optimizer="adagrad"), progress=False)
    assert not (tmp_path / "r").exists()


def test_no_day_snapshots_leaves_only_the_final_model(learn_data, tmp_path):
    assert TrainConfig().day_snapshots is False  # only streaming evaluation reads them: written when asked
    cfg = TrainConfig(method="bce", batch_size=32, compile=False)
    train(learn_data[2], tmp_path / "r", cfg, progress=False, max_steps_per_day=1)
    assert sorted(p.name for p in (tmp_path / "r" / "seed-1").iterdir()) == [
        "model.pt", "summary.json", "train_log.jsonl"]
    assert json.loads((tmp_path / "r" / "run.json").read_text())["train"]["day_snapshots"] is False


@pytest.mark.parametrize("every, written_after", [(1, [0, 1]), (2, [1]), (5, [])])
def test_resume_checkpoint_every_n_days_and_never_after_the_last(learn_data, tmp_path, monkeypatch, every,
                                                                  written_after):
    """3 training days: resume.pt after the days the interval names, none after the last (model.pt
    supersedes it there); the interval changes what is written, not what is trained."""
    import lcron.train as train_module

    saved: list[int] = []
    real_save = train_module.atomic.save_torch

    def spy(path, obj):
        if Path(path).name == "resume.pt":
            saved.append(int(obj["day_index"]))
        real_save(path, obj)

    monkeypatch.setattr(train_module.atomic, "save_torch", spy)
    cfg = TrainConfig(method="bce", batch_size=32, seeds=(3,), compile=False, resume_every=every)
    train(learn_data[2], tmp_path / "r", cfg, progress=False, max_steps_per_day=2)
    assert saved == written_after
    assert not (tmp_path / "r" / "seed-3" / "resume.pt").exists()
    train(learn_data[2], tmp_path / "daily", TrainConfig(method="bce", batch_size=32, seeds=(3,), compile=False),
          progress=False, max_steps_per_day=2)
    a, b = _state(tmp_path / "r/seed-3/model.pt"), _state(tmp_path / "daily/seed-3/model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cli_resume_every_flag():
    from lcron import cli

    parser = cli.build_parser(only="train")
    args = parser.parse_args(["train", "--shards", "s", "--out", "o", "--method", "bce", "--resume-every", "6"])
    assert args.resume_every == 6
    assert parser.parse_args(["train", "--shards", "s", "--out", "o", "--method", "bce"]).resume_every == 1


def test_cli_embedding_optimizer_flag():
    import argparse

    from lcron.optim import DEFAULT_EMBEDDING_OPTIMIZER
    from lcron.train import add_train_arguments

    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    base = ["--shards", "s", "--out", "o", "--method", "bce"]
    args = parser.parse_args(base)
    assert args.embedding_optimizer == DEFAULT_EMBEDDING_OPTIMIZER and args.day_snapshots is False
    assert parser.parse_args(base + ["--embedding-optimizer", "dense", "--no-day-snapshots"]).embedding_optimizer == "dense"
    assert parser.parse_args(base + ["--day-snapshots"]).day_snapshots is True
    with pytest.raises(SystemExit):
        parser.parse_args(base + ["--embedding-optimizer", "sparse"])


# ---------------------------------------------------------------- configuration checked before writing
def test_no_full_batch_is_an_error_before_anything_is_written(learn_data, tmp_path):
    """Batch larger than every day: the run would write an untrained model; nothing is written."""
    from lcron.errors import DataError

    with pytest.raises(DataError, match=r"no training day holds a full batch of 1000 requests .*2024-01-\d\d: 400"):
        train(learn_data[2], tmp_path / "r", TrainConfig(method="bce", batch_size=1000, compile=False), progress=False)
    assert not (tmp_path / "r").exists()
    with pytest.raises(ConfigError, match="max steps per day must be an integer >= 1"):
        train(learn_data[2], tmp_path / "r", TrainConfig(method="bce", batch_size=32, compile=False), progress=False,
              max_steps_per_day=0)
    assert not (tmp_path / "r").exists()


def test_dropped_requests_are_counted_and_warned(learn_data, tmp_path):
    """300 of each 400-request day fall in no batch of 256: the summary counts them, training warns."""
    shards = learn_data[2]
    days = shards.days[:-1]
    with pytest.warns(UserWarning, match=r"of \d+ training requests \(\d+%\) fall in the last partial batch"):
        (res,) = train(shards, tmp_path / "r", TrainConfig(method="bce", batch_size=256, compile=False),
                       progress=False, max_steps_per_day=1)
    total = sum(shards.num_requests(d) for d in days)
    dropped = sum(shards.num_requests(d) % 256 for d in days)
    assert res.summary["requests_in_days"] == total and res.summary["dropped_requests"] == dropped
    assert res.summary["dropped_fraction"] == pytest.approx(dropped / total)
    on_disk = json.loads((tmp_path / "r" / "seed-1" / "summary.json").read_text())
    assert on_disk["dropped_requests"] == dropped


def test_short_day_is_a_warning_with_counts():
    from lcron.train import batch_plan

    with pytest.warns(UserWarning, match=r"1 of 2 training day\(s\) .* 2024-01-02 \(10 requests\)"):
        plan = batch_plan({"2024-01-01": 64, "2024-01-02": 10}, 32, None)
    assert plan.batches == {"2024-01-01": 2, "2024-01-02": 0} and plan.dropped == 10


def test_bad_loss_option_writes_nothing_and_the_corrected_rerun_works(learn_data, tmp_path):
    out = tmp_path / "r"
    with pytest.raises(ConfigError, match="has no option"):
        train(learn_data[2], out, TrainConfig(method="lcron", loss_options={"tua": "5"}, batch_size=32, compile=False),
              progress=False, max_steps_per_day=1)
    with pytest.raises(ConfigError, match="option k=.* has 3 entries"):
        train(learn_data[2], out, TrainConfig(method="lcron", loss_options={"k": "5,4,3"}, batch_size=32,
                                              compile=False), progress=False, max_steps_per_day=1)
    assert not out.exists()
    (res,) = train(learn_data[2], out, TrainConfig(method="lcron", loss_options={"tau": "5"}, batch_size=32,
                                                  compile=False), progress=False, max_steps_per_day=1)
    assert not res.skipped


def test_option_spellings_hash_alike(learn_data, tmp_path):
    """"50" from a command line, 50.0 from KFP and 50 from Python are one configuration."""
    out = tmp_path / "r"
    hashes = set()
    for spelling in ("50", 50.0, 50):
        train(learn_data[2], out, TrainConfig(method="lcron", loss_options={"tau": spelling, "k": "30,20"},
                                              batch_size=32, lr=1, compile=False), progress=False,
              max_steps_per_day=1)
        run = json.loads((out / "run.json").read_text())
        hashes.add(run["config_hash"])
        assert run["loss_options"] == {"tau": 50.0, "k": [30, 20]} and run["train"]["lr"] == 1.0
    assert len(hashes) == 1
