"""The fast evaluation path gives the numbers of the slow one.

The fast path (issue 19): DIN scores with one compiled inference graph of its attention
core, the day is scored in even batches with the scores kept on the device until one
copy at the end, the provenance record and the plotting import run in a helper thread.
The reference here is the plain eager model scoring one request at a time, with the
metrics computed by the same oracle-tested functions (tests/evaluation/test_metrics.py).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lcron.evaluate import evaluate
from lcron.evaluation.per_request import quota_sweep_values, request_metrics
from lcron.evaluation.quota_grid import resolve_quota_grid
from lcron.evaluation.results import metric_keys
from lcron.evaluation.scoring import even_batch_size, score_arrays
from lcron.models import fused
from lcron.settings import Setting
from lcron.run_folder import load_cascade
from lcron.train import TrainConfig, train


@pytest.mark.parametrize("rows, batch, expected", [
    (6000, 4096, 3000), (4096, 4096, 4096), (4097, 4096, 2049), (10, 4096, 10), (7, 3, 3), (1, 1, 1),
])
def test_even_batch_size(rows, batch, expected):
    size = even_batch_size(rows, batch)
    assert size == expected
    assert size <= batch and -(-rows // size) == -(-rows // batch)  # as few batches as before


def test_inference_attention_pool_matches_eager_oracle():
    gen = torch.Generator().manual_seed(0)
    b, n, length, h, e = 3, 5, 7, 6, 4
    item_proj, seq_proj = torch.randn(b, n, h, generator=gen), torch.randn(b, length, h, generator=gen)
    w, c = torch.randn(h, generator=gen), torch.randn((), generator=gen)
    seq_emb = torch.randn(b, length, e, generator=gen)
    mask = (torch.rand(b, length, generator=gen) > 0.3).float()
    mask[1] = 0.0  # a request without any valid step
    with torch.inference_mode():
        fast = fused.compiled_inference_attention_pool()(item_proj, seq_proj, w, c, seq_emb, mask)
        ref = fused.attention_pool(item_proj, seq_proj, w, c, seq_emb, mask)
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-6)
    assert torch.all(fast[1] == 0)


@pytest.mark.parametrize("b, block_elements", [(5, 1), (5, 2 * 5 * 7 * 6), (5, 3 * 5 * 7 * 6), (5, 10**9), (1, 1)])
def test_blocked_attention_pool_equals_the_eager_core(b, block_elements):
    gen = torch.Generator().manual_seed(1)
    n, length, h, e = 5, 7, 6, 4
    item_proj, seq_proj = torch.randn(b, n, h, generator=gen), torch.randn(b, length, h, generator=gen)
    w, c = torch.randn(h, generator=gen), torch.randn((), generator=gen)
    seq_emb = torch.randn(b, length, e, generator=gen)
    mask = (torch.rand(b, length, generator=gen) > 0.3).float()
    mask[0] = 0.0  # a request without any valid step
    args = (item_proj, seq_proj, w, c, seq_emb, mask)
    with torch.inference_mode():
        blocked = fused.blocked_attention_pool(*args, block_elements=block_elements)
        ref = fused.attention_pool(*args)
    torch.testing.assert_close(blocked, ref, rtol=1e-6, atol=1e-6)  # BLAS may sum a block in another order
    if block_elements >= b * n * length * h:
        assert torch.equal(blocked, ref)  # one block: the very same operations
    assert torch.all(blocked[0] == 0)


def test_evaluation_compiles_only_where_it_pays_for_itself():
    from lcron.devices import DEVICE_DEFAULTS, default_eval_batch_size, default_eval_compile

    threshold = DEVICE_DEFAULTS["cpu"].eval_compile_from
    assert threshold is not None and threshold > 6_000 * 2  # a 6,000-request day, 2 seeds: eager
    assert not default_eval_compile("cpu", threshold - 1)
    assert default_eval_compile("cpu", threshold)
    assert not default_eval_compile("cuda", 10**9)  # on CUDA never by default
    assert (default_eval_batch_size("cpu"), default_eval_batch_size("cuda")) == (512, 4096)


def test_a_read_only_day_is_checked_without_a_warning(run):
    import warnings

    shards, run_dir = run
    cascade, _ = load_cascade(run_dir / "seed-1" / "model.pt", "cpu", compile=False)
    arrays = shards.load_day(shards.days[-1])  # memory-mapped, read-only
    assert not np.asarray(arrays["items"]).flags.writeable
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cascade.models[0].embedding.check_day(arrays)


def test_trust_cpu_isa_respects_an_explicit_setting(monkeypatch):
    from torch._inductor import config

    with config.patch({"cpp.vec_isa_ok": None}):  # restored afterwards
        monkeypatch.setenv("TORCHINDUCTOR_VEC_ISA_OK", "0")
        fused.trust_cpu_isa()
        assert config.cpp.vec_isa_ok is None
        monkeypatch.delenv("TORCHINDUCTOR_VEC_ISA_OK")
        fused.trust_cpu_isa()
        assert config.cpp.vec_isa_ok is True


def test_compile_in_process_respects_an_explicit_setting(monkeypatch):
    from torch._inductor import config

    with config.patch({"compile_threads": 2}):  # restored afterwards
        monkeypatch.setenv("TORCHINDUCTOR_COMPILE_THREADS", "2")
        fused.compile_in_process()
        assert config.compile_threads == 2
        monkeypatch.delenv("TORCHINDUCTOR_COMPILE_THREADS")
        fused.compile_in_process()
        assert config.compile_threads == 1


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from lcron.data.shards import preprocess
    from lcron.data.synthetic import generate

    base = tmp_path_factory.mktemp("evaluate-fast")
    src = generate(base / "recflow", num_days=3, requests_per_day=70, users=60, items=300, seed=7, progress=False)
    shards = preprocess(src, base / "shards", 2, progress=False)
    train(shards, base / "run", TrainConfig(method="lcron", batch_size=16, seeds=(1, 2), compile=False),
          progress=False, max_steps_per_day=2)
    return shards, base / "run"


@pytest.mark.parametrize("options, compiled, batch", [
    ({"compile": True, "batch_size": 40}, True, 40),
    ({}, False, 512),  # the CPU defaults for a small evaluation: eager, blocked attention core
])
def test_fast_evaluation_equals_the_slow_reference(run, tmp_path, options, compiled, batch):
    shards, run_dir = run
    doc = evaluate(run_dir, out=tmp_path / "fast", device="cpu", progress=False, **options)
    assert (doc["compile"], doc["batch_size"]) == (compiled, batch)
    setting = Setting.from_dict(json_setting(run_dir))
    day = shards.days[-1]
    arrays = shards.load_day(day)
    labels, mask = np.asarray(arrays["label"]), np.asarray(arrays["mask"])
    grid = resolve_quota_grid(None, setting)
    for i, seed in enumerate(doc["seeds"]):
        cascade, _ = load_cascade(run_dir / f"seed-{seed}" / "model.pt", "cpu", compile=False)
        scores = score_arrays(cascade, arrays, batch_size=1)  # eager, one request per batch, no dedup
        _, means, _ = request_metrics(scores, labels, mask, setting, tie_seed=0)
        for key in metric_keys(setting):
            got, want = doc["metrics"][key]["per_seed"][i], means[key]
            assert got == pytest.approx(want, rel=1e-12, abs=1e-12), key
        sweep = quota_sweep_values(scores, labels, mask, setting, grid, tie_seed=0)
        got_sweep = [row["joint_recall"]["per_seed"][i] for row in doc["quota_sweep"]]
        np.testing.assert_allclose(got_sweep, sweep, rtol=1e-12, atol=1e-12)
    assert doc["provenance"]["data_fingerprint"] == shards.fingerprint()
    assert (tmp_path / "fast" / "quota_sweep.png").read_bytes()[:4] == b"\x89PNG"


def json_setting(run_dir):
    import json

    return json.loads((run_dir / "run.json").read_text())["setting"]


def test_ids_are_checked_once_per_day_and_a_bad_id_is_still_refused(run, monkeypatch):
    from lcron.errors import DataError
    from lcron.models.embeddings import FeatureEmbedding

    shards, run_dir = run
    cascade, _ = load_cascade(run_dir / "seed-1" / "model.pt", "cpu", compile=False)
    arrays = shards.load_day(shards.days[-1], mmap=False)
    calls: list[str] = []
    real = FeatureEmbedding.check_ids
    monkeypatch.setattr(FeatureEmbedding, "check_ids", lambda self, name, ids: (calls.append(name),
                                                                                 real(self, name, ids))[1])
    scores = score_arrays(cascade, arrays, batch_size=8)  # 70 requests: 9 batches, 2 stage models
    assert sorted(calls) == ["context", "items", "seq", "user"]  # once per input for the day
    assert all(np.isfinite(s[arrays["mask"] > 0]).all() for s in scores)
    bad = dict(arrays, items=arrays["items"].astype(np.int64))
    bad["items"][5, 0, 0] = 10**7  # a video id far outside the table
    with pytest.raises(DataError, match=r"batch field 'items' column 0 \(video_id\): ids must lie in"):
        score_arrays(cascade, bad, batch_size=8)
