"""RankFlow (Qin et al. 2022): stages trained in the cascade's own flow.

Binary labels: 1 for the top slot group, 0 for the rest. Let ``A_0`` be the valid slots and
``A_{s+1}`` the top ``min(q_s, |A_s|)`` slots of ``A_s`` by ``z_s`` (``q_s`` the stage quota;
selection on stopped-gradient scores, ties broken by ``torch.topk``). Then

    L = sum_s BCE(z_s on A_s)                              (each stage on what reaches it)
      + sum_{s>=1} MSE(z_{s-1}, sg(z_s)) on A_s            (distil a stage into the one before)
      [+ sum_{s>=1} -log sigmoid( mean_{A_{s+1}} z_{s-1} - mean_{A_s minus A_{s+1}} z_{s-1} )]

BCE and MSE average over the selected slots of the batch. The bracketed ranking terms ask
the earlier stage to rank what the next stage keeps above what it drops; the reference
used them in its three-stage experiments only, so their default comes from the setting
(``Setting.rankflow_ranking_terms``) and the option ``ranking_terms`` overrides it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lcron.settings import Setting

from .base import CascadeLoss, LossInputs, LossOutput, bce_with_logits, masked_mean
from .registry import register


def select_top(scores: Tensor, candidates: Tensor, k: int) -> Tensor:
    """Bool mask of the top ``min(k, |candidates|)`` candidates by ``scores`` (no gradient)."""
    filled = scores.detach().masked_fill(~candidates, torch.finfo(scores.dtype).min)
    index = torch.topk(filled, min(k, scores.shape[-1]), dim=-1).indices
    chosen = torch.zeros_like(candidates).scatter_(-1, index, True)
    return chosen & candidates


def _request_mean(values: Tensor, where: Tensor) -> Tensor:
    w = where.to(values.dtype)
    return (values * w).sum(dim=-1) / w.sum(dim=-1).clamp(min=1.0)


@register("rankflow")
class RankFlowLoss(CascadeLoss):
    """Cascade-flow BCE + distillation (+ ranking terms) loss."""

    uses_slot_groups = True

    def __init__(self, setting: Setting, *, ranking_terms: bool | None = None) -> None:
        super().__init__(setting)
        self.ranking_terms = setting.rankflow_ranking_terms if ranking_terms is None else bool(ranking_terms)

    def extra_repr(self) -> str:
        return f"setting={self.setting.name!r}, ranking_terms={self.ranking_terms}"

    def compute(self, inputs: LossInputs) -> LossOutput:
        z = inputs.logits
        targets = self.top_group_targets(inputs).expand_as(inputs.labels)
        names = self.stage_names
        reach = inputs.mask  # A_s
        total = inputs.labels.new_zeros(())
        parts: dict[str, Tensor] = {}
        for s, stage in enumerate(names):
            weight = reach.to(z[s].dtype)
            bce = masked_mean(bce_with_logits(z[s], targets), weight)
            parts[f"bce/{stage}"] = bce.detach()
            total = total + bce
            if s > 0:
                mse = masked_mean((z[s - 1] - z[s].detach()) ** 2, weight)
                parts[f"mse/{names[s - 1]}"] = mse.detach()
                total = total + mse
            kept = select_top(z[s], reach, self.setting.quotas[s])  # A_{s+1}
            if s > 0 and self.ranking_terms:
                dropped = reach & ~kept
                gap = _request_mean(z[s - 1], kept) - _request_mean(z[s - 1], dropped)
                usable = (kept.any(dim=-1) & dropped.any(dim=-1)).to(gap.dtype)
                rank = (F.softplus(-gap) * usable).sum() / usable.sum().clamp(min=1.0)
                parts[f"rank/{names[s - 1]}"] = rank.detach()
                total = total + rank
            reach = kept
        return LossOutput(total, parts)
