"""Embedding optimizers: lazy (row-wise) and dense Adam against a hand-computed Adam step.

A tiny table of 5 rows x 2 dims, row 0 the padding row. Step 1 looks up rows 1, 3, 3 and
the padding row (row 3 twice: its gradients sum); step 2 looks up row 2 only. The
reference is Adam written out in float64 (lr 0.1, betas 0.9 / 0.999, eps 1e-8): lazy Adam
moves a row only on the steps that touch it (bias correction from the global step), dense
Adam moves every row that has a non-zero moment on every step.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from lcron.errors import ConfigError
from lcron.models.embeddings import _GatherRows
from lcron.optim import (UPDATE_RULES, LazyAdam, build_embedding_optimizer, check_embedding_optimizer,
                         coalesce_rows)

LR, B1, B2, EPS = 0.1, 0.9, 0.999, 1e-8
W0 = np.array([[0.0, 0.0], [1.0, -2.0], [0.5, 0.25], [-1.0, 3.0], [2.0, 2.0]])
PADDING = torch.tensor([0])
# (rows looked up, gradient of each lookup) per step
STEPS = [
    (torch.tensor([1, 3, 3, 0]), torch.tensor([[0.5, -1.0], [2.0, 0.25], [1.0, -0.75], [9.0, 9.0]])),
    (torch.tensor([2]), torch.tensor([[-0.3, 4.0]])),
]


def _run(kind: str) -> tuple[torch.Tensor, dict]:
    """Two steps of the embedding optimizer ``kind`` on the tiny table; (weights, state)."""
    weight = torch.nn.Parameter(torch.tensor(W0, dtype=torch.float32))
    opt = build_embedding_optimizer(kind, [weight], LR)
    for rows, grad in STEPS:
        opt.zero_grad(set_to_none=True)
        out = _GatherRows.apply(weight, rows, PADDING, kind == "lazy")
        (out * grad).sum().backward()                                    # d out = grad
        opt.step()
    return weight.detach(), opt.state[weight]


def _hand_adam(lazy: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Adam by hand in float64: (weights, first moment, second moment) after the steps."""
    w, m, v = W0.copy(), np.zeros_like(W0), np.zeros_like(W0)
    for t, (rows, grad) in enumerate(STEPS, start=1):
        g = np.zeros_like(W0)
        for r, gr in zip(rows.tolist(), grad.double().numpy()):
            if r != 0:                                                   # padding: no gradient
                g[r] += gr                                               # repeats sum
        touched = np.zeros(len(W0), dtype=bool)
        touched[[r for r in rows.tolist() if r != 0]] = True
        upd = touched if lazy else np.ones(len(W0), dtype=bool)
        m[upd] = B1 * m[upd] + (1 - B1) * g[upd]
        v[upd] = B2 * v[upd] + (1 - B2) * g[upd] ** 2
        step = LR / (1 - B1 ** t) * m[upd] / (np.sqrt(v[upd]) / math.sqrt(1 - B2 ** t) + EPS)
        w[upd] -= step
    return w, m, v


@pytest.mark.parametrize("kind", UPDATE_RULES)
def test_two_steps_match_hand_computed_adam(kind):
    weight, state = _run(kind)
    w, m, v = _hand_adam(lazy=kind == "lazy")
    np.testing.assert_allclose(weight.numpy(), w, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(state["exp_avg"].numpy(), m, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(state["exp_avg_sq"].numpy(), v, rtol=1e-6, atol=1e-12)
    assert float(state["step"]) == 2.0


def test_lazy_touches_only_rows_of_the_batch():
    weight, state = _run("lazy")
    w0 = torch.tensor(W0, dtype=torch.float32)
    # row 4 never looked up, row 0 the padding row: values and moments exactly as they started
    for r in (0, 4):
        assert torch.equal(weight[r], w0[r])
        assert torch.equal(state["exp_avg"][r], torch.zeros(2)) and torch.equal(state["exp_avg_sq"][r], torch.zeros(2))
    # step 1 by hand: the first Adam step moves a touched row by lr * sign(summed gradient)
    np.testing.assert_allclose(weight[1].numpy(), W0[1] - LR * np.sign([0.5, -1.0]), rtol=1e-6)
    np.testing.assert_allclose(weight[3].numpy(), W0[3] - LR * np.sign([3.0, -0.5]), rtol=1e-6)
    # step 2 touched row 2 only: rows 1 and 3 kept their step-1 values (dense Adam moves them)
    dense, _ = _run("dense")
    assert not torch.equal(dense[1], weight[1]) and not torch.equal(dense[3], weight[3])
    torch.testing.assert_close(dense[2], weight[2], rtol=0, atol=0)


def test_padding_row_never_updated_in_either_mode():
    for kind in UPDATE_RULES:
        weight, state = _run(kind)
        assert torch.equal(weight[0], torch.zeros(2)), kind
        assert torch.equal(state["exp_avg"][0], torch.zeros(2)), kind


def test_lazy_equals_dense_adam_when_every_row_is_touched():
    """The two differ only on rows absent from a batch: touch all rows, get identical weights."""
    torch.manual_seed(0)
    w0 = torch.randn(6, 3)
    grads = [torch.randn(6, 3) for _ in range(4)]
    dense_w = torch.nn.Parameter(w0.clone())
    lazy_w = torch.nn.Parameter(w0.clone())
    dense, lazy = torch.optim.Adam([dense_w], lr=0.05), LazyAdam([lazy_w], lr=0.05)
    for g in grads:
        dense_w.grad = g.clone()
        lazy_w.grad = torch.sparse_coo_tensor(torch.arange(6).flip(0)[None], g.flip(0), (6, 3),
                                                check_invariants=False)
        dense.step()
        lazy.step()
    assert torch.equal(dense_w, lazy_w)
    assert torch.equal(dense.state[dense_w]["exp_avg_sq"], lazy.state[lazy_w]["exp_avg_sq"])


def test_coalesce_rows_sums_repeats_in_order():
    idx = torch.tensor([7, 2, 7, 0, 2, 7])
    vals = torch.arange(12, dtype=torch.float32).reshape(6, 2)
    rows, summed = coalesce_rows(torch.sparse_coo_tensor(idx[None], vals, (9, 2)))
    assert rows.tolist() == [0, 2, 7]
    assert summed.tolist() == [[6, 7], [2 + 8, 3 + 9], [0 + 4 + 10, 1 + 5 + 11]]
    ref = torch.sparse_coo_tensor(idx[None], vals, (9, 2)).coalesce()
    assert torch.equal(ref.indices()[0], rows) and torch.equal(ref.values(), summed)
    empty_rows, empty_vals = coalesce_rows(torch.sparse_coo_tensor(torch.zeros(1, 0, dtype=torch.long),
                                                                   torch.zeros(0, 2), (9, 2)))
    assert empty_rows.numel() == 0 and empty_vals.shape == (0, 2)


def test_lazy_tables_with_the_same_lookups_share_one_sort_and_train_as_alone():
    """One LazyAdam over three tables (two looking up the same rows, as a cascade's stage
    models do, one other rows) ends bit-identical to one LazyAdam per table."""
    gen = torch.Generator().manual_seed(3)
    w0 = [torch.randn(50, 4, generator=gen) for _ in range(3)]
    lookups = [torch.randint(0, 50, (40,), generator=gen) for _ in range(3)]
    lookups[1] = lookups[0].clone()                                      # equal rows, another tensor
    together = [torch.nn.Parameter(w.clone()) for w in w0]
    alone = [torch.nn.Parameter(w.clone()) for w in w0]
    opt = LazyAdam(together, lr=LR)
    opts = [LazyAdam([p], lr=LR) for p in alone]
    for step in range(3):
        grads = [torch.randn(40, 4, generator=gen) for _ in range(3)]
        for params in (together, alone):
            for p, rows, g in zip(params, lookups, grads):
                p.grad = torch.sparse_coo_tensor(rows[None] if step % 2 else rows.flip(0)[None],
                                                 g, p.shape)
        opt.step()
        for o in opts:
            o.step()
    for a, b, o in zip(together, alone, opts):
        assert torch.equal(a, b)
        assert torch.equal(opt.state[a]["exp_avg"], o.state[b]["exp_avg"])
        assert torch.equal(opt.state[a]["exp_avg_sq"], o.state[b]["exp_avg_sq"])
    assert not torch.equal(together[0].detach(), w0[0])


def test_row_plan_is_shared_only_between_equal_lookups():
    from lcron.optim import _RowPlans

    vals = torch.ones(3, 2)
    plans = _RowPlans()
    r1, s1 = plans.coalesce(torch.sparse_coo_tensor(torch.tensor([[4, 1, 4]]), vals, (6, 2)))
    r2, s2 = plans.coalesce(torch.sparse_coo_tensor(torch.tensor([[4, 1, 3]]), 2 * vals, (6, 2)))
    r3, s3 = plans.coalesce(torch.sparse_coo_tensor(torch.tensor([[4, 1, 4]]), 3 * vals, (9, 2)))
    assert r1.tolist() == [1, 4] and s1.tolist() == [[1, 1], [2, 2]]
    assert r2.tolist() == [1, 3, 4] and s2.tolist() == [[2, 2], [2, 2], [2, 2]]
    assert r3.tolist() == [1, 4] and s3.tolist() == [[3, 3], [6, 6]]
    assert len(plans._plans) == 3                                        # other rows or table size: own plan


def test_lazy_state_survives_a_state_dict_round_trip():
    w = torch.nn.Parameter(torch.tensor(W0, dtype=torch.float32))
    opt = LazyAdam([w], lr=LR)
    w.grad = torch.sparse_coo_tensor(torch.tensor([[1]]), torch.tensor([[1.0, 1.0]]), (5, 2))
    opt.step()
    w2 = torch.nn.Parameter(w.detach().clone())
    opt2 = LazyAdam([w2], lr=LR)
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)                                    # as a resume checkpoint does
    buf.seek(0)
    opt2.load_state_dict(torch.load(buf, weights_only=True))
    for o, p in ((opt, w), (opt2, w2)):
        p.grad = torch.sparse_coo_tensor(torch.tensor([[1, 2]]), torch.tensor([[0.5, -1.0], [2.0, 2.0]]), (5, 2))
        o.step()
    assert torch.equal(w, w2)


def test_errors_name_the_choices():
    with pytest.raises(ConfigError, match="unknown embedding optimizer 'sparse'; choose one of auto, dense, lazy"):
        check_embedding_optimizer("sparse")
    w = torch.nn.Parameter(torch.zeros(3, 2))
    w.grad = torch.ones(3, 2)
    with pytest.raises(ConfigError, match="LazyAdam got a dense gradient"):
        LazyAdam([w]).step()
    with pytest.raises(ConfigError, match="learning rate must be positive"):
        LazyAdam([w], lr=0.0)
    with pytest.raises(ConfigError, match="betas"):
        LazyAdam([w], betas=(1.0, 0.9))


def test_auto_embedding_optimizer_by_device_and_table_size():
    from lcron.optim import LAZY_MIN_ROWS, resolve_embedding_optimizer

    assert resolve_embedding_optimizer("auto", "cpu", LAZY_MIN_ROWS - 1) == "dense"
    assert resolve_embedding_optimizer("auto", "cpu", LAZY_MIN_ROWS) == "lazy"
    assert resolve_embedding_optimizer("auto", "cuda", 20 * LAZY_MIN_ROWS) == "dense"
    assert resolve_embedding_optimizer("lazy", "cuda", 10) == "lazy"
    assert resolve_embedding_optimizer("dense", "cpu", 20 * LAZY_MIN_ROWS) == "dense"
    with pytest.raises(ConfigError, match="unknown embedding optimizer"):
        resolve_embedding_optimizer("sparse", "cpu", 10)
