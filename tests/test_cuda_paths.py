"""The CUDA code paths, on a machine with a GPU (skipped without one; bench/gpu_check.py runs
them on a lent GPU). Each compares the GPU path with the CPU path on the same inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lcron.batches import iter_batches
from lcron.batches import day_order
from lcron.errors import DataError
from lcron.train import TrainConfig, build_training_objects, train
from lcron.train_step import DeviceDay

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CUDA = torch.device("cuda")


def _tables(shards, device):
    from lcron.models.embeddings import embedding_tables

    cfg = TrainConfig(method="bce", compile=False)
    cascade, _, _ = build_training_objects(shards.setting, shards.embedding_sizes, cfg, 1, torch.device(device))
    return embedding_tables(cascade)[0]


def test_host_day_checked_against_tables_on_the_gpu(tiny_shards_2):
    """The evaluation checks a host (numpy) day against tables on the GPU."""
    arrays = tiny_shards_2.load_day(tiny_shards_2.days[-1])
    table = _tables(tiny_shards_2, "cuda")
    table.check_day(arrays)
    bad = dict(arrays)
    bad["user"] = np.array(arrays["user"], dtype=np.int64)
    bad["user"][0, 0] = max(table.sizes.values()) + 1
    with pytest.raises(DataError, match="user"):
        table.check_day(bad)


def test_rows_used_on_the_gpu_match_the_cpu(tiny_shards_2):
    arrays = tiny_shards_2.load_day(tiny_shards_2.days[-1])
    on_gpu = _tables(tiny_shards_2, "cuda").rows_used(arrays, chunk=17)
    on_cpu = _tables(tiny_shards_2, "cpu").rows_used(arrays)
    assert on_gpu.device.type == "cuda"
    assert torch.equal(on_gpu.cpu(), on_cpu)


def test_device_day_on_the_gpu_equals_host_batches(tiny_shards_3):
    arrays = tiny_shards_3.load_day(tiny_shards_3.days[0])
    order = day_order(len(arrays["label"]), 3, 0, True)
    host = list(iter_batches(arrays, order, 8, drop_last=True))
    resident = list(DeviceDay(arrays, CUDA).batches(order, 8, drop_last=True, batches_per_gather=2))
    assert len(host) == len(resident)
    for h, r in zip(host, resident):
        for k in h:
            assert r[k].device.type == "cuda" and r[k].dtype == h[k].dtype
            assert torch.equal(h[k], r[k].cpu()), k


@pytest.mark.slow
def test_train_and_evaluate_on_the_gpu_agree_with_the_cpu(tiny_shards_2, tmp_path):
    from lcron.evaluate import evaluate

    days = ":".join(tiny_shards_2.days[:2])
    cfg = dict(method="lcron", batch_size=16, seeds=(1,), days=days)
    train(tiny_shards_2, tmp_path / "gpu", TrainConfig(device="cuda", **cfg), progress=False)
    summary = json.loads((tmp_path / "gpu" / "seed-1" / "summary.json").read_text())
    assert summary["device"].startswith("cuda") and summary["step_mode"] == "cuda_graph"
    on_gpu = evaluate(tmp_path / "gpu", out=tmp_path / "ev-gpu", device="cuda", progress=False)
    on_cpu = evaluate(tmp_path / "gpu", out=tmp_path / "ev-cpu", device="cpu", progress=False)
    for name in ("joint_recall",):
        assert on_gpu["metrics"][name]["mean"] == pytest.approx(on_cpu["metrics"][name]["mean"], abs=1e-6)
