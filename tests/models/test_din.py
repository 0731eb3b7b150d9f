"""DIN: the decomposed attention equals the textbook concatenation; sequence masking (all models); fusion."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lcron.data import fields
from lcron.models import DIN, build_model
from lcron.models.fused import (FallbackCompiled, ReluScores, attention_pool, compiled_attention_pool, relu_scores,
                                relu_scores_backward, split_attention_pool)
from .model_batches import SIZES, make_batch


def _embed(model, ids: torch.Tensor, kinds: tuple[str, ...]) -> torch.Tensor:
    """Column-by-column lookup in each kind's table (independent of the fused gather)."""
    return torch.cat([F.embedding(ids[..., c].long(), model.embedding.table(k)) for c, k in enumerate(kinds)], -1)


def naive_din(model: DIN, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """DIN as the spec writes it: concatenate [seq, item] for every (candidate, step) pair."""
    ctx = _embed(model, batch["context"], fields.CONTEXT_KINDS)
    user = _embed(model, batch["user"], fields.USER_KINDS)
    seq = _embed(model, batch["seq"], fields.SEQ_KINDS)                     # [B, L, 5d]
    item = _embed(model, batch["items"], fields.ITEM_KINDS)                 # [B, N, 8d]
    b, n, _ = item.shape
    seq_len = seq.shape[1]
    d5 = 5 * model.dim
    pairs = torch.cat([seq[:, None].expand(b, n, seq_len, d5),
                       item[:, :, None, :d5].expand(b, n, seq_len, d5)], -1)  # [B, N, L, 10d]
    scores = model.attention(pairs).squeeze(-1)                            # [B, N, L]
    valid = batch["seq_mask"].bool()[:, None, :].expand_as(scores)
    alpha = torch.softmax(scores.masked_fill(~valid, float("-inf")), -1)
    alpha = torch.nan_to_num(alpha, nan=0.0)                                # no valid step -> zero interest
    interest = torch.einsum("bnl,ble->bne", alpha, seq)
    request = torch.cat([ctx, user], -1)[:, None].expand(b, n, 8 * model.dim)
    x = torch.cat([request, interest, item], -1)                           # [B, N, 21d]
    return model.head(x).squeeze(-1)


def test_decomposed_attention_equals_naive_concatenation():
    torch.manual_seed(0)
    model = DIN(SIZES, dim=8)
    batch = make_batch(b=4, n=6, seq_len=9, seed=1)
    torch.testing.assert_close(model(batch), naive_din(model, batch), rtol=1e-5, atol=1e-5)


def test_attention_pool_hand_checked():
    # B = N = 1, L = 2, H = 1: scores relu(1 + 0) = 1 and relu(1 + 1) = 2, w = 1, c = 0.
    item_proj = torch.tensor([[[1.0]]])
    seq_proj = torch.tensor([[[0.0], [1.0]]])
    w, c = torch.tensor([1.0]), torch.tensor(0.0)
    seq_emb = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    both = attention_pool(item_proj, seq_proj, w, c, seq_emb, torch.tensor([[1.0, 1.0]]))
    e = math.e
    torch.testing.assert_close(both, torch.tensor([[[e / (e + e * e), e * e / (e + e * e)]]]))  # 0.2689, 0.7311
    first_only = attention_pool(item_proj, seq_proj, w, c, seq_emb, torch.tensor([[1.0, 0.0]]))
    torch.testing.assert_close(first_only, torch.tensor([[[1.0, 0.0]]]))
    none = attention_pool(item_proj, seq_proj, w, c, seq_emb, torch.tensor([[0.0, 0.0]]))
    torch.testing.assert_close(none, torch.zeros(1, 1, 2))


def test_relu_scores_backward_matches_autograd():
    g = torch.Generator().manual_seed(0)
    f64 = dict(generator=g, dtype=torch.float64)
    args = [torch.randn(2, 3, 4, **f64), torch.randn(2, 5, 4, **f64), torch.randn(4, **f64),
            torch.tensor(0.3, dtype=torch.float64)]
    args = [a.requires_grad_() for a in args]
    assert torch.autograd.gradcheck(lambda *a: ReluScores.apply(*a, relu_scores, relu_scores_backward), args)
    upstream = torch.randn(2, 3, 5, generator=g, dtype=torch.float64)
    expected = torch.autograd.grad(relu_scores(*args), args, upstream)
    got = relu_scores_backward(*[a.detach() for a in args[:3]], upstream)
    for e, o in zip(expected, got):
        torch.testing.assert_close(o, e)


def test_split_attention_pool_matches_plain_autograd():
    g = torch.Generator().manual_seed(1)
    mask = torch.tensor([[1.0, 1.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    args = [torch.randn(2, 3, 6, generator=g), torch.randn(2, 4, 6, generator=g), torch.randn(6, generator=g),
            torch.tensor(0.1), torch.randn(2, 4, 5, generator=g)]
    args = [a.requires_grad_() for a in args]
    up = torch.randn(2, 3, 5, generator=g)
    out, ref = split_attention_pool(*args, mask), attention_pool(*args, mask)
    torch.testing.assert_close(out, ref)
    for a, b in zip(torch.autograd.grad(out, args, up), torch.autograd.grad(ref, args, up)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("kind", ["din", "dssm", "mlp"])
def test_padded_steps_change_nothing(kind):
    torch.manual_seed(0)
    model = build_model(kind, SIZES)
    batch = make_batch(b=3, n=5, seq_len=8, seed=2)
    other = {k: v.clone() for k, v in batch.items()}
    pad = other["seq_mask"] == 0
    assert pad.any()
    other["seq"][pad] = torch.tensor([5, 3, 2, 4, 1])                     # real-looking ids on padded steps
    torch.testing.assert_close(model(batch), model(other), rtol=0, atol=0)
    # and a padded step placed first or last is all the same: only the mask decides
    moved = {k: v.clone() for k, v in batch.items()}
    moved["seq"] = moved["seq"].flip(1)
    moved["seq_mask"] = moved["seq_mask"].flip(1)
    torch.testing.assert_close(model(batch), model(moved), rtol=1e-6, atol=1e-6)


def test_request_without_valid_step_is_finite_with_finite_gradients():
    torch.manual_seed(0)
    model = DIN(SIZES)
    batch = make_batch(b=3, n=4, seq_len=6, seed=3)
    batch["seq_mask"][:] = 0
    batch["seq"][:] = 0
    logits = model(batch)
    assert torch.isfinite(logits).all()
    logits.sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    # zero interest: the logits equal the naive model's with the interest block forced to 0
    torch.testing.assert_close(logits, naive_din(model, batch), rtol=1e-5, atol=1e-5)


def test_fallback_compiled_switches_to_eager_on_compile_error():
    calls = []

    def fn(x: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return x * 2

    def broken(*args):
        raise RuntimeError("C++ compiler not found")

    wrapped = FallbackCompiled(fn, broken)
    with pytest.warns(RuntimeWarning, match="continuing eager"):
        out = wrapped(torch.ones(2))
    torch.testing.assert_close(out, torch.full((2,), 2.0))
    assert not wrapped.active and isinstance(wrapped.error, RuntimeError)
    out = wrapped(torch.ones(3))                                           # no second warning, eager
    assert out.shape == (3,) and len(calls) == 2


@pytest.mark.parametrize("reference_quirks", [False, True])
def test_eager_din_without_autograd_scores_in_blocks_with_identical_logits(monkeypatch, reference_quirks):
    """Evaluation and serving (no autograd) run the core in cache-sized blocks; training keeps autograd's."""
    from lcron.models import din as din_module

    torch.manual_seed(0)
    model = DIN(SIZES, compile=False, reference_quirks=reference_quirks).eval()
    batch = make_batch(b=5, n=6, seq_len=9, seed=3)  # request 2 has no history
    with torch.enable_grad():
        trained_path = model(batch)
    calls = []
    real = din_module.blocked_attention_pool
    monkeypatch.setattr(din_module, "blocked_attention_pool", lambda *a: (calls.append(1), real(*a))[1])
    with torch.inference_mode():
        blocked = model(batch)
    with torch.no_grad():
        no_grad = model(batch)
    assert len(calls) == 2
    assert torch.equal(blocked, trained_path.detach()) and torch.equal(no_grad, blocked)
    with torch.inference_mode():  # a torch.compile of the whole model (serving) traces the plain core
        torch.compile(model, fullgraph=True, dynamic=False)(batch)
    assert len(calls) == 2


@pytest.mark.slow
def test_compiled_din_matches_eager():
    """Fused core (training, forward + backward) and whole-model compile (inference) match eager."""
    torch.manual_seed(0)
    eager = build_model("din", SIZES, compile=False)
    torch.manual_seed(0)
    fused = build_model("din", SIZES, compile=True)
    batch = make_batch(b=4, n=6, seq_len=10, seed=4)
    out_e, out_f = eager(batch), fused(batch)
    torch.testing.assert_close(out_f, out_e, rtol=1e-5, atol=1e-5)
    out_e.sum().backward()
    out_f.sum().backward()
    for (name, pe), (_, pf) in zip(eager.named_parameters(), fused.named_parameters()):
        torch.testing.assert_close(pf.grad, pe.grad, rtol=1e-4, atol=1e-5, msg=name)
    assert compiled_attention_pool().active, compiled_attention_pool().error
    # the whole model compiles as one graph too (serving compiles it for inference)
    with torch.no_grad():
        whole = torch.compile(eager, fullgraph=True, dynamic=False)
        torch.testing.assert_close(whole(batch), out_e, rtol=1e-5, atol=1e-5)
