"""The torch exact index: serve-eval's GPU retrieval path where faiss has no GPU support
(the GPU image carries faiss-cpu; no faiss GPU wheel shares torch's CUDA major)."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch

from lcron.serving import index as ix


def _data(items: int, dim: int = 16, queries: int = 37, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((items, dim)).astype(np.float32), rng.standard_normal((queries, dim)).astype(np.float32)


@pytest.mark.parametrize("items, k, max_scores", [(1000, 10, 1 << 27), (1000, 50, 37 * 64), (5, 10, 1 << 27),
                                                  (513, 513, 37 * 100)])
def test_it_finds_what_faiss_flat_finds(items, k, max_scores):
    x, q = _data(items)
    ref_scores, ref_rows = ix.search(ix.build_index(x, "flat"), q, k)
    got = ix.TorchFlatIndex(x, "cpu", max_scores=max_scores)  # small max_scores: several corpus blocks
    scores, rows = got.search(q, k)
    assert rows.shape == ref_rows.shape == (len(q), k) and rows.dtype == np.int64 and scores.dtype == np.float32
    np.testing.assert_array_equal(rows, ref_rows)  # random floats: no ties, one order
    real = ref_rows >= 0
    np.testing.assert_allclose(scores[real], ref_scores[real], rtol=1e-5, atol=1e-5)
    assert (rows[~real] == -1).all() and np.isneginf(scores[~real]).all()


def test_no_queries():
    x, _ = _data(10)
    scores, rows = ix.TorchFlatIndex(x).search(np.zeros((0, 16), np.float32), 3)
    assert scores.shape == rows.shape == (0, 3)


def test_round_trip_to_faiss_for_serialisation():
    x, q = _data(200)
    t = ix.TorchFlatIndex(x)
    back = ix.to_cpu(t)
    assert back.ntotal == 200 and back.d == 16
    np.testing.assert_array_equal(ix.search(back, q, 5)[1], t.search(q, 5)[1])
    assert ix.index_options_used(t, "flat") == {"kind": "flat", "ntotal": 200, "dim": 16, "search": "torch on cpu"}


def test_cuda_without_faiss_gpus_chooses_torch_and_with_them_faiss(monkeypatch):
    """The choice of to_device, with faiss and CUDA stood in for (no GPU here)."""
    x, _ = _data(50)
    flat = ix.build_index(x, "flat")
    moved = []
    monkeypatch.setattr(ix.TorchFlatIndex, "from_faiss", classmethod(lambda cls, index, dev: ("torch", dev)))
    no_gpu = types.SimpleNamespace(index_cpu_to_all_gpus=lambda i: ("faiss-gpu", i), get_num_gpus=lambda: 0)
    monkeypatch.setattr(ix, "import_faiss", lambda: no_gpu)
    assert ix.to_device(flat, "flat", torch.device("cuda")) == ("torch", torch.device("cuda"))
    assert ix.to_device(flat, "hnsw", torch.device("cuda")) is flat  # HNSW stays a faiss CPU index
    assert ix.to_device(flat, "flat", torch.device("cpu")) is flat
    gpu = types.SimpleNamespace(index_cpu_to_all_gpus=lambda i: moved.append(i) or "faiss-gpu", get_num_gpus=lambda: 1)
    monkeypatch.setattr(ix, "import_faiss", lambda: gpu)
    assert ix.to_device(flat, "flat", torch.device("cuda")) == "faiss-gpu" and moved == [flat]
