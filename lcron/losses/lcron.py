"""LCRON (Wang et al., ICML 2025): learning the cascade as one network.

Every stage model ``s`` gets ``P_s = NeuralSort(z_s, tau)`` (tau = 50), computed once per
step and shared by both parts. ``L`` is the label permutation (soft, or hard
``1[L > 1e-3]``; the default is the setting's ``lcron_hard_labels``: soft in two-stage, hard
in three-stage as in the reference), ``t_i = sum_{r<G} L[r, i]`` with ``G`` the GT size (10)
and ``t'_i = sum_{r>=G} L[r, i]``. With the column-normalised memberships
``p_s(i; k) = sum_{r<k} P_s[r, i] / sg(sum_r P_s[r, i])`` and
``pbar_s(i; k) = sum_{r>=k} P_s[r, i] / sg(sum_r P_s[r, i])``:

* end-to-end loss - a lower bound of a GT item's survival through the whole cascade:

      P_joint(i) = prod_s p_s(i; k_s),      Q_joint(i) = prod_s (1 - pbar_s(i; k_s)),
      L_e2e = mean_i [ -log(P_joint(i) + 1e-6) t_i - log(1 - Q_joint(i) + 1e-6) (1 - t_i) ]

  (``1 - pbar`` equals ``p`` in value but its gradient runs through the rows ``r >= k``);
* single-stage loss per stage (tightens the bound) - ARF-v2's two-sided relaxation with
  quota ``m = k_s``, over requests with more than ``k_s`` valid slots:

      L_single(s) = mean_i [ -log(p_s(i; k_s) + 1e-6) t_i - log(pbar_s(i; k_s) + 1e-6) t'_i ];

* total, with learned weights ``w_s`` (init 1):
  ``L = sum_s 0.5 / w_s^2 * L_single(s) + L_e2e + log prod_s w_s``.

``k_s`` defaults to 10 for every stage (the reference value); ``k="quotas"`` uses the
cascade's real quotas, ``k="30,20"`` any per-stage values.

``reference_quirks=True`` reproduces how the published loss treats padding
(:mod:`lcron.losses.published`): NeuralSort of all ``N`` raw logits and the label
permutation of the published labels, kept on the rows and columns of the first ``count``
slots; single-stage terms weighted by that prefix (requests with more than ``k_s`` valid
slots), both means over all ``B * N`` entries, and the non-GT weight ``1 - t_i`` of the
end-to-end loss clamped to [0, 1] (it is negative for a hard-label tie straddling the GT
boundary). Without padding and such ties it is the default loss.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lcron.settings import Setting

from .arf import LOG_EPS, eligible_slots, two_sided_terms
from .base import CascadeLoss, LossInputs, LossOutput, masked_mean, stage_weights, uncertainty_weighted
from .options import parse_stage_ints, positive, resolve_stage_ints
from .published import mean_over_all, stage_permutations
from .registry import register
from .sorting import LABEL_TAU, gt_indicator, outside_topk_membership, topk_membership

#: The reference's k_s for every stage.
REFERENCE_K = 10


@register("lcron")
class LCRONLoss(CascadeLoss):
    """End-to-end cascade survival bound + per-stage two-sided relaxations, learned weights."""

    OPTION_PARSERS = {"k": parse_stage_ints}
    OPTION_CHECKS = {"tau": positive, "label_tau": positive}

    def __init__(
        self,
        setting: Setting,
        *,
        k: int | tuple[int, ...] | str | None = REFERENCE_K,
        hard_labels: bool | None = None,
        tau: float = 50.0,
        label_tau: float = LABEL_TAU,
        reference_quirks: bool = False,
    ) -> None:
        super().__init__(setting)
        self.reference_quirks = bool(reference_quirks)
        # the published labels of padding are per slot group: lists must have the setting's layout
        self.uses_slot_groups = self.reference_quirks
        self.k = resolve_stage_ints(REFERENCE_K if k is None else k, setting, method="lcron", option="k")
        self.hard_labels = setting.lcron_hard_labels if hard_labels is None else bool(hard_labels)
        self.tau = positive("lcron", "tau", tau)
        self.label_tau = positive("lcron", "label_tau", label_tau)
        self.weights = stage_weights(setting)

    def extra_repr(self) -> str:
        return (f"setting={self.setting.name!r}, k={self.k}, hard_labels={self.hard_labels}, "
                f"tau={self.tau}, label_tau={self.label_tau}, reference_quirks={self.reference_quirks}")

    def compute(self, inputs: LossInputs) -> LossOutput:
        sort, label_perm, slots = stage_permutations(inputs, self.setting, tau=self.tau, label_tau=self.label_tau,
                                                     hard=self.hard_labels, reference_quirks=self.reference_quirks)
        mean = mean_over_all if self.reference_quirks else masked_mean
        t_in, t_out = gt_indicator(label_perm, self.setting.gt_size)
        p_joint = torch.ones_like(inputs.labels)
        q_joint = torch.ones_like(inputs.labels)
        total = inputs.labels.new_zeros(())
        parts: dict[str, Tensor] = {}
        for s, stage in enumerate(self.stage_names):
            perm = sort(s)
            k = self.k[s]
            inside = topk_membership(perm, k)
            outside = outside_topk_membership(perm, k)
            p_joint = p_joint * inside
            q_joint = q_joint * (1.0 - outside)
            single = mean(two_sided_terms(inside, outside, t_in, t_out), eligible_slots(inputs, k, slots))
            w = self.weights[stage].to(inputs.labels.dtype)
            total = total + uncertainty_weighted(single, w)
            parts[f"single/{stage}"] = single.detach()
            parts[f"weight/{stage}"] = w.detach()
        # 1 - t_i is negative for an item of a hard-label tie group straddling the GT boundary
        # (t_i counts every GT row of its group); the published loss clamps it to [0, 1].
        t_not = torch.clamp(1.0 - t_in, 0.0, 1.0) if self.reference_quirks else 1.0 - t_in
        per_item = -torch.log(p_joint + LOG_EPS) * t_in - torch.log(1.0 - q_joint + LOG_EPS) * t_not
        # the published mean runs over every column, also those its mask drops (each adds -log 1e-6)
        e2e = per_item.mean() if self.reference_quirks else masked_mean(per_item, inputs.maskf)
        total = total + e2e
        parts["e2e"] = e2e.detach()
        return LossOutput(total, parts)
