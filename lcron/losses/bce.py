"""BCE baseline: every stage model trained alone, pointwise, on binary labels.

Each stage ``s`` sees the leading ``bce_groups[s]`` slot groups of the list - the items
that reach it in the logged cascade - with target 1 for the top group and 0 for the rest:

    L_s = sum_{b, i < R_s} m_bi * BCE(z_s[b, i], 1[i in top group]) / sum_{b, i < R_s} m_bi,
    R_s = bce_groups[s] * group_size,           L = sum_s L_s.

(two-stage: prerank on rank_pos vs rank_neg, retrieval on all 40 slots; three-stage: rank
on rerank_pos vs rerank_neg, prerank on the first 40, retrieval on all 50.)
"""

from __future__ import annotations

from lcron.settings import Setting

from .base import CascadeLoss, LossInputs, LossOutput, bce_with_logits, masked_mean
from .registry import register


@register("bce")
class BCELoss(CascadeLoss):
    """Pointwise binary cross-entropy per stage over its slot range; no options."""

    uses_slot_groups = True

    def __init__(self, setting: Setting) -> None:
        super().__init__(setting)

    def compute(self, inputs: LossInputs) -> LossOutput:
        targets = self.top_group_targets(inputs).expand_as(inputs.labels)
        total = inputs.labels.new_zeros(())
        parts = {}
        for s, stage in enumerate(self.stage_names):
            used = self.setting.bce_slots(s)
            term = masked_mean(
                bce_with_logits(inputs.logits[s][:, :used], targets[:, :used]), inputs.maskf[:, :used]
            )
            parts[f"single/{stage}"] = term.detach()
            total = total + term
        return LossOutput(total, parts)
