"""Masked NeuralSort, label permutations and soft top-k membership (METHODS.md sections 4, 7)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lcron.losses.sorting import (
    gt_indicator,
    label_permutation,
    neural_sort,
    outside_topk_membership,
    topk_membership,
)

from . import loops


def _softmax(values):
    top = max(values)
    e = [math.exp(v - top) for v in values]
    return [x / sum(e) for x in e]


# Worked by hand for s = (0, 1, 3), tau = 1: B_i = sum_j |s_i - s_j| = (4, 3, 5);
# row coefficients n + 1 - 2(r + 1) = (2, 0, -2); logits[r, i] = coef_r * s_i - B_i.
HAND_LOGITS = [[-4.0, -1.0, 1.0], [-4.0, -3.0, -5.0], [-4.0, -5.0, -11.0]]
HAND_P = [_softmax(row) for row in HAND_LOGITS]


def test_neural_sort_matches_hand_computation():
    P = neural_sort(torch.tensor([[0.0, 1.0, 3.0]], dtype=torch.float64), tau=1.0)[0]
    torch.testing.assert_close(P, torch.tensor(HAND_P, dtype=torch.float64))
    # Row 0 puts most mass on the largest score (item 2), row 2 on the smallest (item 0).
    assert P[0].argmax() == 2 and P[2].argmax() == 0
    assert HAND_P[0][2] == pytest.approx(math.e / (math.e + math.exp(-1) + math.exp(-4)))


def test_padding_is_neural_sort_over_valid_slots_with_zero_rows_and_columns():
    # The hand example with padding at slots 1 and 3 holding wild values (even inf).
    scores = torch.tensor([[0.0, 1e4, 1.0, float("inf"), 3.0]], dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[1, 0, 1, 0, 1]])
    P = neural_sort(scores, mask, tau=1.0)[0]
    expected = torch.zeros(5, 5, dtype=torch.float64)
    expected[:3][:, [0, 2, 4]] = torch.tensor(HAND_P, dtype=torch.float64)
    torch.testing.assert_close(P, expected)
    assert torch.all(P[3:] == 0) and torch.all(P[:, [1, 3]] == 0)
    P.pow(2).sum().backward()
    assert torch.isfinite(scores.grad).all()
    assert torch.all(scores.grad[0, [1, 3]] == 0)


def test_fully_masked_request_gives_zeros_and_finite_gradients():
    scores = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[0, 0, 0, 0], [1, 1, 0, 1]])
    P = neural_sort(scores, mask, tau=0.5)
    assert torch.all(P[0] == 0)
    (P * torch.arange(16, dtype=torch.float64).view(4, 4)).sum().backward()
    assert torch.isfinite(scores.grad).all() and torch.all(scores.grad[0] == 0)


@pytest.mark.parametrize("tau", [0.3, 1.0, 50.0])
def test_masked_neural_sort_equals_loop_implementation(tau):
    rng = np.random.default_rng(3)
    scores = rng.standard_normal((5, 6)) * 2
    mask = np.array([[1, 1, 1, 1, 1, 1], [0, 1, 1, 0, 1, 1], [1, 0, 0, 0, 0, 0],
                     [0, 0, 0, 0, 0, 0], [1, 1, 0, 1, 1, 0]])
    P = neural_sort(torch.tensor(scores), torch.tensor(mask), tau)
    for b in range(5):
        np.testing.assert_allclose(P[b].numpy(), loops.neural_sort_padded(scores[b], mask[b], tau), atol=1e-12)


def test_valid_rows_are_distributions_and_small_tau_gives_the_sort():
    scores = torch.tensor([[0.3, -1.2, 2.5, 0.9, 7.0, -3.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 0, 1]])
    P = neural_sort(scores, mask, tau=1e-3)[0]
    torch.testing.assert_close(P[:5].sum(dim=1), torch.ones(5, dtype=torch.float64))
    assert P[:5].argmax(dim=1).tolist() == [2, 3, 0, 1, 5]  # descending over valid slots


def test_float32_with_tiny_tau_on_large_labels_is_finite():
    labels = torch.tensor([[30.0, 21.0, 7.0, 7.0, 5.0, 0.0]] * 2)
    P = neural_sort(labels, torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]]), tau=1e-4)
    assert torch.isfinite(P).all()
    assert P[0, 0, 0] == 1 and P[0, 1, 1] == 1 and P[0, 4, 4] == 1


def test_neural_sort_gradcheck_float64():
    scores = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 0, 1, 1, 0], [0, 0, 1, 0, 0]])
    assert torch.autograd.gradcheck(lambda s: neural_sort(s, mask, 0.7), (scores,))


# ---------------------------------------------------------------- label permutation
def test_label_permutation_hard_for_distinct_and_even_for_ties():
    # Labels 30 > 7 = 7 > 5 with a padding slot (label 9, must be ignored) at index 2.
    labels = torch.tensor([[7, 30, 9, 5, 7]])
    mask = torch.tensor([[1, 1, 0, 1, 1]])
    L = label_permutation(labels, mask)[0]
    expected = torch.tensor([
        [0.0, 1.0, 0.0, 0.0, 0.0],   # rank 0: the 30
        [0.5, 0.0, 0.0, 0.0, 0.5],   # ranks 1-2: the tied 7s, half each
        [0.5, 0.0, 0.0, 0.0, 0.5],
        [0.0, 0.0, 0.0, 1.0, 0.0],   # rank 3: the 5
        [0.0, 0.0, 0.0, 0.0, 0.0],   # no rank 4 (4 valid slots)
    ])
    torch.testing.assert_close(L, expected)
    hard = label_permutation(labels, mask, hard=True)[0]
    torch.testing.assert_close(hard, (expected > 0).float())


def test_ten_tied_items_get_a_tenth_in_each_of_their_rows():
    labels = torch.tensor([[25.0] + [7.0] * 10 + [5.0]])
    L = label_permutation(labels)[0]
    torch.testing.assert_close(L[1:11, 1:11], torch.full((10, 10), 0.1))
    assert L[0, 0] == 1 and L[11, 11] == 1


def test_gt_indicator_with_a_tie_straddling_the_boundary():
    labels = torch.tensor([[9, 7, 7, 5]])
    soft_in, soft_out = gt_indicator(label_permutation(labels), 2)
    torch.testing.assert_close(soft_in[0], torch.tensor([1.0, 0.5, 0.5, 0.0]))
    torch.testing.assert_close(soft_out[0], torch.tensor([0.0, 0.5, 0.5, 1.0]))
    hard_in, hard_out = gt_indicator(label_permutation(labels, hard=True), 2)
    torch.testing.assert_close(hard_in[0], torch.tensor([1.0, 1.0, 1.0, 0.0]))
    torch.testing.assert_close(hard_out[0], torch.tensor([0.0, 1.0, 1.0, 1.0]))


def test_gt_indicator_with_fewer_valid_slots_than_k_marks_every_valid_item():
    t, t_out = gt_indicator(label_permutation(torch.tensor([[9, 3, 0]]), torch.tensor([[1, 1, 0]])), 10)
    torch.testing.assert_close(t[0], torch.tensor([1.0, 1.0, 0.0]))
    assert torch.all(t_out == 0)


# ---------------------------------------------------------------- top-k membership
def test_topk_membership_values_and_stopped_gradient_normaliser():
    scores = torch.tensor([[0.5, -0.2, 1.3, 0.0, 9.0]], dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    P = neural_sort(scores, mask, tau=0.8)
    inside, outside = topk_membership(P, 2), outside_topk_membership(P, 2)
    col = P.detach().sum(dim=1)
    torch.testing.assert_close(inside[0, :4], P[0, :2, :4].sum(0) / col[0, :4])
    torch.testing.assert_close((inside + outside)[0], torch.tensor([1.0, 1, 1, 1, 0], dtype=torch.float64))
    assert inside[0, 4] == 0 and outside[0, 4] == 0  # padding column: 0, not NaN
    # Gradient: through the numerator only (normaliser held constant).
    g_in = torch.autograd.grad(inside[0, 1], scores, retain_graph=True)[0]
    g_num = torch.autograd.grad(P[0, :2, 1].sum() / col[0, 1], scores, retain_graph=True)[0]
    torch.testing.assert_close(g_in, g_num)
    g_out = torch.autograd.grad(outside[0, 1], scores, retain_graph=True)[0]
    # 1 - outside equals inside in value but not in gradient: the rows r >= k carry it.
    assert not torch.allclose(-g_out, g_in)
    g_out_num = torch.autograd.grad(P[0, 2:, 1].sum() / col[0, 1], scores)[0]
    torch.testing.assert_close(g_out, g_out_num)


def test_topk_membership_with_k_beyond_the_list_is_one():
    P = neural_sort(torch.tensor([[0.1, 0.4, -2.0]]), torch.tensor([[1, 1, 0]]), tau=1.0)
    torch.testing.assert_close(topk_membership(P, 10)[0], torch.tensor([1.0, 1.0, 0.0]))
    torch.testing.assert_close(outside_topk_membership(P, 10)[0], torch.zeros(3))
