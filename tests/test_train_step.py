"""The training step's fast paths, checked on CPU: per-device plan, loss rows kept on the
device, device-resident days, and that the step is free of host synchronisation (the
precondition of capturing it in a CUDA graph)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from lcron import train_step as ts
from lcron.batches import day_order, iter_batches
from lcron.errors import ConfigError, DataError, NumericalError
from lcron.losses import METHODS
from lcron.models.embeddings import ids_prechecked
from lcron.train import TrainConfig, _log_records, build_training_objects, train

# The operators that synchronise with the host, and the counter that finds them: the
# loss-level tests' (tests/losses/generic.py), one list for both checks.
from losses.generic import SYNCING_OPS, OpCounter


# ------------------------------------------------------------------ the per-device plan
def test_device_defaults_cpu_and_cuda():
    cpu = ts.plan_step("cpu")
    assert (cpu.compile, cpu.cuda_graph, cpu.tf32, cpu.device_resident) == (True, False, False, False)
    cuda = ts.plan_step(torch.device("cuda"))  # planning needs no GPU
    assert (cuda.compile, cuda.cuda_graph, cuda.tf32, cuda.device_resident) == (False, True, False, True)
    assert ts.plan_step("cuda:0", compile=True, cuda_graph=False, tf32=True).describe() == (
        "cuda:0: compile on, CUDA graph off, TF32 on, data on the device")
    assert ts.plan_step("cpu", compile=False).compile is False
    assert ts.plan_step("mps").cuda_graph is False  # kinds without an entry get the CPU defaults


def test_cuda_only_features_are_refused_elsewhere():
    with pytest.raises(ConfigError, match="CUDA graphs need a CUDA device"):
        ts.plan_step("cpu", cuda_graph=True)
    with pytest.raises(ConfigError, match="TF32 matmuls need a CUDA device"):
        ts.plan_step("cpu", tf32=True)
    assert ts.plan_step("cpu", cuda_graph=False, tf32=False).cuda_graph is False
    with pytest.raises(ConfigError, match="CUDA graphs"):
        train_dummy = ts.TrainStep(torch.nn.Identity(), torch.nn.Identity(), {})
        ts.make_stepper(train_dummy, dataclasses.replace(ts.plan_step("cpu"), cuda_graph=True))


def test_adam_options_per_device():
    assert ts.adam_options(torch.device("cpu")) == {}
    assert ts.adam_options(torch.device("cuda")) == {"capturable": True, "fused": True}


def test_float32_matmul_precision_is_restored():
    before = torch.get_float32_matmul_precision()
    with ts.float32_matmul_precision(True):
        assert torch.get_float32_matmul_precision() == "high"
    assert torch.get_float32_matmul_precision() == before


# ------------------------------------------------------------------ loss rows on the device
def test_loss_log_reads_back_every_row_once():
    log = ts.LossLog(flush_every=3)
    assert log.read().shape == (0, 0)
    log.append(torch.tensor([1.0, 2.0]))
    log.append(torch.tensor([3.0, float("nan")]))
    assert len(log) == 2 and not log.full
    log.append(torch.tensor([5.0, 6.0]))
    assert log.full
    with pytest.raises(RuntimeError, match="full"):
        log.append(torch.tensor([7.0, 8.0]))
    rows = log.read()
    assert rows.dtype == np.float64 and rows.shape == (3, 2)
    np.testing.assert_array_equal(rows[[0, 2]], [[1.0, 2.0], [5.0, 6.0]])
    assert np.isnan(rows[1, 1])
    assert len(log) == 0 and log.read().shape == (0, 2)
    log.append(torch.tensor([9.0, 10.0]))
    with pytest.raises(RuntimeError, match="changed"):
        log.append(torch.tensor([1.0, 2.0, 3.0]))
    with pytest.raises(ConfigError):
        ts.LossLog(flush_every=0)


def test_log_records_and_the_late_nan_guard_name_the_exact_step():
    cfg = TrainConfig(method="lcron")
    cols = ("total", "a", "b")
    ok = np.array([[1.0, 0.5, 0.5], [2.0, 1.0, 1.0]])
    recs = _log_records(ok, cols, 11, cfg, 4, "2024-01-02")
    assert recs == [{"seed": 4, "day": "2024-01-02", "step": 11, "total": 1.0, "a": 0.5, "b": 0.5},
                    {"seed": 4, "day": "2024-01-02", "step": 12, "total": 2.0, "a": 1.0, "b": 1.0}]
    bad = np.array([[1.0, 0.5, 0.5], [np.inf, 0.5, np.inf], [np.nan, np.nan, np.nan]])
    with pytest.raises(NumericalError) as info:
        _log_records(bad, cols, 11, cfg, 4, "2024-01-02")
    msg = str(info.value)
    assert "'lcron' (seed 4): the loss became inf at day 2024-01-02, step 12;" in msg
    assert "loss part(s) that went bad: b." in msg


# ------------------------------------------------------------------ device-resident days
def test_device_day_batches_equal_host_batches(tiny_shards_3):
    arrays = tiny_shards_3.load_day(tiny_shards_3.days[0])
    order = day_order(len(arrays["label"]), 7, 0, True)
    day = ts.DeviceDay(arrays, "cpu")
    assert day.num_requests == len(order) and day.nbytes > 0
    for drop_last in (True, False):
        host = list(iter_batches(arrays, order, 16, drop_last=drop_last))
        # gathered 3 batches at a time: runs of batches and a last partial run give the same batches
        for per_gather in (64, 3):
            resident = list(day.batches(order, 16, drop_last=drop_last, batches_per_gather=per_gather))
            assert len(host) == len(resident) == (len(order) // 16 if drop_last else -(-len(order) // 16))
            for h, r in zip(host, resident):
                assert h.keys() == r.keys()
                for k in h:
                    assert h[k].dtype == r[k].dtype, k
                    assert torch.equal(h[k], r[k]), k


def test_device_day_checks_ids_once_for_the_whole_day(tiny_shards_2):
    cfg = TrainConfig(method="bce", compile=False)
    cascade, _, _ = build_training_objects(tiny_shards_2.setting, tiny_shards_2.embedding_sizes, cfg, 1,
                                           torch.device("cpu"))
    arrays = dict(tiny_shards_2.load_day(tiny_shards_2.days[0]))
    embedding = cascade.models[0].embedding
    ts.DeviceDay(arrays, "cpu").check_ids(embedding)  # a valid day passes
    items = np.array(arrays["items"]).astype(np.int64)
    items[-1, 0, 1] = tiny_shards_2.embedding_sizes["author_id"]  # one past the author table, last request
    arrays["items"] = items
    with pytest.raises(DataError, match=r"'items' column 1 \(author_id\)"):
        ts.DeviceDay(arrays, "cpu").check_ids(embedding)


# ------------------------------------------------------------------ capturable: no host synchronisation
@pytest.mark.parametrize("stages", [2, 3])
def test_the_step_never_synchronises_with_the_host(stages, tiny_shards_2, tiny_shards_3):
    """Forward, loss and backward of every method, run as a captured step runs them (ids
    checked for the day beforehand), use no operator that reads a value back or makes a
    tensor from host data; neither does gathering a batch from a device-resident day. The
    optimizers are left out here: CPU Adam keeps its step count on the host by design, and
    CUDA runs use capturable Adam (adam_options)."""
    shards = {2: tiny_shards_2, 3: tiny_shards_3}[stages]
    arrays = shards.load_day(shards.days[0])
    day = ts.DeviceDay(arrays, "cpu")
    order = day_order(day.num_requests, 1, 0, True)
    batches = day.batches(order, 16, drop_last=True)
    next(batches)  # the day's first batch copies the day's order to the device, once
    with OpCounter() as gather_ops:
        batch = next(batches)
    assert not (set(gather_ops.ops) & SYNCING_OPS), gather_ops.ops
    for method in METHODS:
        cfg = TrainConfig(method=method, batch_size=16, compile=False)
        cascade, loss, _ = build_training_objects(shards.setting, shards.embedding_sizes, cfg, 1, torch.device("cpu"))
        with ids_prechecked(), OpCounter() as counter:
            out = loss(cascade(batch), batch["label"], batch["mask"])
            out.total.backward()
            torch.stack([out.total.detach(), *[v.detach().reshape(()) for v in out.parts.values()]])
        syncing = {op: n for op, n in counter.ops.items() if op in SYNCING_OPS}
        assert not syncing, f"{method} ({stages} stages) synchronises: {syncing}"


def test_per_batch_id_check_runs_outside_prechecked_blocks(tiny_shards_2):
    cfg = TrainConfig(method="bce", batch_size=16, compile=False)
    cascade, _, _ = build_training_objects(tiny_shards_2.setting, tiny_shards_2.embedding_sizes, cfg, 1,
                                           torch.device("cpu"))
    batch = next(iter_batches(tiny_shards_2.load_day(tiny_shards_2.days[0]), np.arange(16), 16, drop_last=True))
    with OpCounter() as counter:
        cascade(batch)
    assert counter.ops["_local_scalar_dense"] > 0  # the check reads values: what ids_prechecked skips


# ------------------------------------------------------------------ the trainer on both data paths
def _run_files(run) -> dict:
    seed = run / "seed-1"
    log = (seed / "train_log.jsonl").read_text()
    state = torch.load(seed / "model.pt", weights_only=True)["model_state"]
    return {"log": log, "state": state, "summary": json.loads((seed / "summary.json").read_text())}


def test_device_resident_path_and_log_interval_change_no_number(tiny_shards_3, tmp_path, monkeypatch):
    """The host-gather loop with a read-back every step, and the device-resident loop that
    reads loss rows back every 5 steps: the same log and bit-identical weights on CPU."""
    base = TrainConfig(method="lcron", batch_size=8, compile=False, seeds=(1,), log_every=1)
    train(tiny_shards_3, tmp_path / "host", base, progress=False)
    resident = dataclasses.replace(ts.DEVICE_DEFAULTS["cpu"], device_resident=True)
    monkeypatch.setitem(ts.DEVICE_DEFAULTS, "cpu", resident)
    train(tiny_shards_3, tmp_path / "resident", dataclasses.replace(base, log_every=5), progress=False)
    a, b = _run_files(tmp_path / "host"), _run_files(tmp_path / "resident")
    assert a["log"] == b["log"] and a["log"].count("\n") == a["summary"]["steps"] > 5
    assert a["state"].keys() == b["state"].keys()
    assert all(torch.equal(a["state"][k], b["state"][k]) for k in a["state"])
    assert a["summary"]["step_mode"] == b["summary"]["step_mode"] == "eager"
    assert a["summary"]["cuda_graph"] is False and a["summary"]["compile"] is False


def test_loss_rows_are_read_every_step_on_cpu_and_every_64_on_cuda(tiny_shards_2, tmp_path, monkeypatch):
    """On CPU a read costs nothing, so the progress line shows the current loss (it showed the
    first step's for 64 steps); on CUDA each read is a synchronisation."""
    import lcron.train as train_module

    assert ts.DEVICE_DEFAULTS["cpu"].loss_read_every == 1 and ts.DEVICE_DEFAULTS["cuda"].loss_read_every == 64
    intervals = []
    real = train_module.LossLog

    def spy(flush_every):
        intervals.append(flush_every)
        return real(flush_every)

    monkeypatch.setattr(train_module, "LossLog", spy)
    train(tiny_shards_2, tmp_path / "r", TrainConfig(method="bce", batch_size=8, compile=False), progress=False,
          max_steps_per_day=2)
    assert intervals == [1]


def test_train_config_rejects_a_bad_log_interval():
    with pytest.raises(ConfigError, match="log_every"):
        TrainConfig(method="bce", log_every=0).validate()


def test_startup_steps_are_timed_apart_from_the_steady_rate(tiny_shards_2, tmp_path, monkeypatch):
    """A stepper that is still warming up (a CUDA graph before its capture) keeps the trainer
    in its start-up phase: those steps count as start-up, like a compile, not as steady."""
    import lcron.train as train_module

    class Warming:
        def __init__(self, step, plan):
            self.step, self.calls = step, 0

        @property
        def warming_up(self):
            return self.calls < 3

        @property
        def columns(self):
            return self.step.columns

        mode = "test"

        def __call__(self, batch):
            self.calls += 1
            return self.step(batch)

    monkeypatch.setattr(train_module, "make_stepper", Warming)
    cfg = TrainConfig(method="bce", batch_size=8, compile=False, seeds=(1,))
    (res,) = train(tiny_shards_2, tmp_path / "run", cfg, progress=False)
    s = res.summary
    assert s["startup_steps"] == 3 and s["step_mode"] == "test"
    assert s["steps"] == 2 * (60 // 8) and s["first_step_seconds"] > 0 and s["steady_requests_per_s"] > 0
    assert set(s["timing"]) == {"setup_seconds", "data_seconds", "checkpoints_seconds", "seed_seconds"}


def test_which_optimizers_step_beside_a_graph():
    p = torch.nn.Parameter(torch.zeros(2))
    assert not ts.is_capturable(torch.optim.Adam([p]))
    assert ts.is_capturable(torch.optim.Adam([p], capturable=True))
    assert not ts.is_capturable(torch.optim.SparseAdam([p]))
    step = ts.TrainStep(torch.nn.Identity(), torch.nn.Identity(),
                        {"dense": torch.optim.Adam([p], capturable=True), "rows": torch.optim.SparseAdam([p])})
    assert ts.GraphedStep(step).beside == ("rows",)


def test_skipped_optimizers_are_left_to_the_caller(tiny_shards_2):
    cfg = TrainConfig(method="lcron", batch_size=8, compile=False)
    cascade, loss, opts = build_training_objects(tiny_shards_2.setting, tiny_shards_2.embedding_sizes, cfg, 1,
                                                 torch.device("cpu"))
    step = ts.TrainStep(cascade, loss, opts)
    batch = next(iter_batches(tiny_shards_2.load_day(tiny_shards_2.days[0]), np.arange(8), 8, drop_last=True))
    before = {k: v.clone() for k, v in loss.state_dict().items()}
    step(batch, skip_optimizers=("loss_weights",))
    assert all(torch.equal(before[k], v) for k, v in loss.state_dict().items())  # the loss weights did not move
    opts["loss_weights"].step()
    assert not all(torch.equal(before[k], v) for k, v in loss.state_dict().items())
