"""FS-RankNet (full-stage learning to rank, Zheng et al. 2024, RankNet flavour).

Every stage model gets the same pairwise loss: every item of a slot group must outrank
every item of every lower group. For each group ``g`` but the last, over valid pairs
``(i in g, j in a group below g)`` of the whole batch:

    L_g = sum softplus(-(z_i - z_j)) / #valid pairs,     L_s = sum_g L_g,     L = sum_s L_s.

(``softplus(-(z_i - z_j))`` is the RankNet cross-entropy ``-log sigmoid(z_i - z_j)``.)
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from lcron.settings import Setting

from .base import LossInputs, SameLossEveryStage
from .registry import register


@register("fs_ranknet")
class FSRankNetLoss(SameLossEveryStage):
    """Group-versus-lower-groups RankNet loss for every stage model; no options."""

    uses_slot_groups = True

    def __init__(self, setting: Setting) -> None:
        super().__init__(setting)

    def stage_loss(self, z: Tensor, inputs: LossInputs) -> Tensor:
        size = self.setting.group_size
        total = z.new_zeros(())
        for g in range(len(self.setting.groups) - 1):
            upper = slice(g * size, (g + 1) * size)
            lower = slice((g + 1) * size, None)
            diff = z[:, upper].unsqueeze(-1) - z[:, lower].unsqueeze(-2)  # [B, |g|, |below|]
            pairs = inputs.maskf[:, upper].unsqueeze(-1) * inputs.maskf[:, lower].unsqueeze(-2)
            count = pairs.sum()
            total = total + (F.softplus(-diff) * pairs).sum() / count.clamp(min=1.0)
        return total
