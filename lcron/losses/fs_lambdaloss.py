"""FS-LambdaLoss: LambdaLoss (Wang et al. 2018, NDCG-Loss2++) for every stage model.

Over the graded labels ``y`` of the valid slots of a request (padding excluded - the
reference included it):

* gains ``g_i = y_i / IDCG`` with ``IDCG = sum_r y_(r) / ln(1 + r)``, labels sorted
  descending, ``r = 1..n``;
* current ranks ``r_i`` from ``z`` (1 = top) among the valid slots;
* ``u_ij = |1/ln(1+d) - 1/ln(2+d)|``, ``d = |r_i - r_j|``, when ``d > 0`` and
  ``min(r_i, r_j) <= topn``, else 0;
* ``v_ij = |D_i - D_j|``, ``D_i = 1/ln(1 + r_i)`` if ``r_i <= topn`` else 0;
* ``w_ij = |g_i - g_j| ((1 - mu) u_ij + mu v_ij)``, no gradient;

    L_s = mean over requests of sum_{i,j valid} w_ij * BCE(z_i - z_j, 1[y_i > y_j]),
    L = sum_s L_s.

The sum runs over ordered pairs; a pair with ``y_i = y_j`` has ``w_ij = 0``, and the two
orders of a pair with different labels give the same term. Requests with fewer than two
valid slots contribute nothing. The logarithm base cancels out of ``w`` (gain and discount
scale inversely), so ``ln`` and ``log2`` give the same loss.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lcron.settings import Setting

from .base import LossInputs, SameLossEveryStage, bce_with_logits
from .options import in_range, positive
from .registry import register


def ranks_from_scores(scores: Tensor, mask: Tensor) -> Tensor:
    """1-based descending ranks of the valid slots ``[B, N]`` (padding ranked after them).

    Score ties are broken by slot order (a stable sort); they carry no gradient here.
    """
    filled = scores.detach().masked_fill(~mask, float("-inf"))
    order = torch.sort(filled, dim=-1, descending=True, stable=True).indices
    positions = torch.arange(1, scores.shape[-1] + 1, device=scores.device, dtype=scores.dtype)
    ranks = torch.empty_like(scores)
    ranks.scatter_(-1, order, positions.expand_as(scores).contiguous())
    return ranks


def ideal_dcg(labels: Tensor, mask: Tensor) -> Tensor:
    """``IDCG = sum_r y_(r) / ln(1 + r)`` over the valid labels sorted descending ``[B]``."""
    filled = labels.masked_fill(~mask, float("-inf"))
    ordered = torch.sort(filled, dim=-1, descending=True).values
    positions = torch.arange(1, labels.shape[-1] + 1, device=labels.device, dtype=labels.dtype)
    discount = 1.0 / torch.log1p(positions)
    n = mask.sum(dim=-1, keepdim=True)
    ordered = torch.where(positions.unsqueeze(0) <= n, ordered, torch.zeros_like(ordered))
    return (ordered * discount).sum(dim=-1)


def lambda_weights(scores: Tensor, labels: Tensor, mask: Tensor, *, mu: float, topn: int) -> Tensor:
    """The NDCG-Loss2++ pair weights ``w_ij`` ``[B, N, N]`` (zero for any pair with padding)."""
    with torch.no_grad():
        ranks = ranks_from_scores(scores, mask)
        idcg = ideal_dcg(labels, mask)
        gains = labels / torch.clamp(idcg, min=torch.finfo(labels.dtype).tiny).unsqueeze(-1)
        in_top = ranks <= topn
        discount = torch.where(in_top, 1.0 / torch.log1p(ranks), torch.zeros_like(ranks))
        d = (ranks.unsqueeze(-1) - ranks.unsqueeze(-2)).abs()
        safe_d = torch.clamp(d, min=1.0)
        u = (1.0 / torch.log1p(safe_d) - 1.0 / torch.log(2.0 + safe_d)).abs()
        u_used = (d > 0) & (in_top.unsqueeze(-1) | in_top.unsqueeze(-2))
        u = torch.where(u_used, u, torch.zeros_like(u))
        v = (discount.unsqueeze(-1) - discount.unsqueeze(-2)).abs()
        gain_gap = (gains.unsqueeze(-1) - gains.unsqueeze(-2)).abs()
        pairs = (mask.unsqueeze(-1) & mask.unsqueeze(-2)).to(scores.dtype)
        return gain_gap * ((1.0 - mu) * u + mu * v) * pairs


@register("fs_lambdaloss")
class FSLambdaLoss(SameLossEveryStage):
    """LambdaLoss (NDCG-Loss2++) on graded labels for every stage model."""

    OPTION_CHECKS = {"mu": in_range(0, 1), "topn": positive}

    def __init__(self, setting: Setting, *, mu: float = 0.8, topn: int = 30) -> None:
        super().__init__(setting)
        self.mu = float(self.OPTION_CHECKS["mu"]("fs_lambdaloss", "mu", mu))
        self.topn = int(positive("fs_lambdaloss", "topn", topn))

    def stage_loss(self, z: Tensor, inputs: LossInputs) -> Tensor:
        y = inputs.labels
        w = lambda_weights(z, y, inputs.mask, mu=self.mu, topn=self.topn)
        diff = z.unsqueeze(-1) - z.unsqueeze(-2)
        target = (y.unsqueeze(-1) > y.unsqueeze(-2)).to(z.dtype)
        per_request = (w * bce_with_logits(diff, target)).sum(dim=(-1, -2))
        has_pair = (inputs.counts >= 2).to(z.dtype)
        return (per_request * has_pair).sum() / has_pair.sum().clamp(min=1.0)
