"""Differentiable sorting: masked NeuralSort and the permutation helpers the losses share.

NeuralSort (Grover et al., 2019) relaxes the permutation matrix that sorts a score vector
``s`` descending into a row-stochastic matrix

    P[r, i] = softmax_i( ((n + 1 - 2 (r + 1)) * s_i - sum_j |s_i - s_j|) / tau ),

rows ``r`` = rank positions (0 = top), columns ``i`` = items. Row ``r`` is a distribution
over which item sits at rank ``r``; as ``tau -> 0`` it becomes the hard sorting permutation.

Padding (METHODS.md section 7): for a request with ``n`` valid slots the matrix is
NeuralSort over the valid slots only - ``n`` in the coefficient, ``sum_j`` over valid ``j``,
softmax over valid columns - and rows ``r >= n`` and padding columns are exactly zero. So a
request padded to any length gives the same matrix as its valid slots alone, and padding
never receives probability mass or gradient.

Everything is vectorized over the batch: one call costs ``O(B N^2)`` time and memory,
which is why a loss computes each stage's matrix once per step and shares it.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "neural_sort",
    "label_permutation",
    "topk_membership",
    "outside_topk_membership",
    "gt_indicator",
    "HARD_LABEL_THRESHOLD",
    "LABEL_TAU",
]

#: Temperature of the label permutation: hard for distinct integer labels, an even spread
#: over the rows of a tie group.
LABEL_TAU = 1e-4
#: The "hard" label permutation is ``1[L > HARD_LABEL_THRESHOLD]``.
HARD_LABEL_THRESHOLD = 1e-3


def _valid(mask: Tensor | None, like: Tensor) -> Tensor:
    if mask is None:
        return torch.ones_like(like, dtype=torch.bool)
    if mask.shape != like.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} differs from scores shape {tuple(like.shape)}")
    return mask if mask.dtype == torch.bool else mask != 0


def neural_sort(scores: Tensor, mask: Tensor | None = None, tau: float = 1.0) -> Tensor:
    """Masked NeuralSort of ``scores`` ``[B, N]`` -> ``P`` ``[B, N, N]`` (rows = ranks, cols = items).

    ``P[b, r, i]`` is the probability that item ``i`` sits at rank ``r`` of request ``b``
    (descending). ``mask`` ``[B, N]`` (any dtype, nonzero = valid) restricts the sort to
    the valid slots; rows ``r >= n_b`` and padding columns are zero. Differentiable in
    ``scores``; the computation runs in the dtype of ``scores``.
    """
    if scores.dim() != 2:
        raise ValueError(f"neural_sort expects scores of shape [B, N], got {tuple(scores.shape)}")
    valid = _valid(mask, scores)
    dtype = scores.dtype
    # Padding scores are replaced by 0 so that whatever a model emits there (even inf)
    # cannot reach a valid entry or a gradient.
    s = scores.masked_fill(~valid, 0.0)
    validf = valid.to(dtype)
    n = validf.sum(dim=-1)  # [B]
    n_slots = s.shape[-1]
    # B_i = sum over valid j of |s_i - s_j| (a batched mat-vec: no extra [B, N, N] temporary).
    abs_diff = (s.unsqueeze(-1) - s.unsqueeze(-2)).abs()
    b_sum = torch.bmm(abs_diff, validf.unsqueeze(-1)).squeeze(-1)  # [B, N]
    rank = torch.arange(1, n_slots + 1, device=s.device, dtype=dtype)  # r + 1
    coef = n.unsqueeze(-1) + 1.0 - 2.0 * rank  # [B, rows]
    # logits[r, i] = coef_r s_i / tau - B_i / tau, fused into one batched outer product.
    logits = torch.baddbmm((b_sum / -tau).unsqueeze(-2), (coef / tau).unsqueeze(-1), s.unsqueeze(-2))
    # A large finite negative (not -inf) on padding columns: they get exactly 0 after the
    # softmax, and a row with no valid column (n = 0) stays finite in both passes.
    logits = logits.masked_fill(~valid.unsqueeze(-2), torch.finfo(dtype).min)
    perm = torch.softmax(logits, dim=-1)  # softmax subtracts the row max before exp
    row_valid = (rank.unsqueeze(0) <= n.unsqueeze(-1)).to(dtype)  # [B, rows]: zero rows r >= n
    return perm * row_valid.unsqueeze(-1)


def label_permutation(
    labels: Tensor,
    mask: Tensor | None = None,
    *,
    tau: float = LABEL_TAU,
    hard: bool = False,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """The label permutation ``L`` ``[B, N, N]``: NeuralSort of the graded labels at ``tau``.

    For distinct labels it is the hard sorting permutation; a group of ``g`` tied labels
    spreads evenly, ``1/g`` per item in each of the ``g`` rows the group occupies. The
    ``hard`` variant thresholds it, ``1[L > 1e-3]``, so every tied item gets 1 in every row
    of its group. Built in float64 (labels up to 30 at tau 1e-4 give logits near 1e7) and
    returned in ``dtype`` (default: float32 unless labels are float64); no gradient.
    """
    valid = _valid(mask, labels)
    out_dtype = dtype or (labels.dtype if labels.dtype == torch.float64 else torch.float32)
    with torch.no_grad():
        perm = neural_sort(labels.to(torch.float64), valid, tau)
        if hard:
            perm = (perm > HARD_LABEL_THRESHOLD).to(torch.float64)
    return perm.to(out_dtype)


def _column_total(perm: Tensor) -> Tensor:
    """Stopped-gradient ``sum_r P[r, i]``; 1 for padding columns so that 0/1 = 0 there."""
    total = perm.detach().sum(dim=-2)
    return torch.where(total > 0, total, torch.ones_like(total))


def topk_membership(perm: Tensor, k: int) -> Tensor:
    """Soft top-``k`` membership ``p(i; k) = sum_{r<k} P[r, i] / sg(sum_r P[r, i])`` ``[B, N]``.

    The denominator is a stopped-gradient column normaliser (NeuralSort columns need not
    sum to 1); the gradient flows through the numerator only. ``k`` larger than the list
    covers every valid row, so ``p = 1`` for a valid item.
    """
    if k < 1:
        raise ValueError(f"top-k membership needs k >= 1, got {k}")
    return perm[..., :k, :].sum(dim=-2) / _column_total(perm)


def outside_topk_membership(perm: Tensor, k: int) -> Tensor:
    """``sum_{r>=k} P[r, i] / sg(sum_r P[r, i])`` ``[B, N]``: soft membership outside the top ``k``.

    Equal in value to ``1 - topk_membership`` for a valid item, but its gradient runs
    through the rows ``r >= k`` - that difference is part of LCRON and ARF-v2.
    """
    if k < 0:
        raise ValueError(f"outside-top-k membership needs k >= 0, got {k}")
    return perm[..., k:, :].sum(dim=-2) / _column_total(perm)


def gt_indicator(label_perm: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Ground-truth indicators from a label permutation: ``(t, t_out)``, each ``[B, N]``.

    ``t_i = sum_{r<k} L[r, i]`` (1 for an item surely in the top ``k``, 0 surely outside, a
    fraction - soft L - or 1 - hard L - for a tie group straddling place ``k``) and
    ``t_out_i = sum_{r>=k} L[r, i]``.
    """
    return label_perm[..., :k, :].sum(dim=-2), label_perm[..., k:, :].sum(dim=-2)
