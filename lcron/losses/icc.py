"""ICC (Gallagher et al. 2019, joint optimisation of cascade ranking models).

The stages are trained through one ensemble score built from smooth stage cut-offs.
For stage ``s`` with cut-off ``k_s``: ``kappa_s`` = the ``k_s``-th largest valid ``z_s`` of the
request (the smallest valid score when fewer than ``k_s`` slots are valid: everything
passes) and ``I_s = sigmoid((z_s - kappa_s) / cutoff_tau)`` (about 1 for an item the stage
keeps). With the setting's coefficients ``c_s`` and ``S`` stages:

    e = sum_{s < S-1} c_s (prod_{t<s} I_t) (1 - I_s) z_s + c_{S-1} (prod_{t<S} I_t) z_{S-1}

so an item dropped at stage ``s`` is scored by that stage (two-stage:
``(1 - I_ret) z_ret + I_ret I_pre z_pre``; three-stage: coefficients 1, 2, 4). The loss is
pairwise over valid slot pairs ``i < j`` (slot order):

    L = sum_{i<j valid} BCE(e_i - e_j, 1[y_i > y_j]) / #pairs.

Default cut-offs are the quotas. ``reference_quirks=True`` reproduces the reference exactly,
its three quirks together: cut-offs ``setting.icc_reference_cutoffs`` ((30, 30) /
(40, 30, 30)); the pair sum divided by ``B * N * N`` instead of the number of pairs; and
padding let through - the cut-offs and the pairs run over all ``N`` slots, with the models'
own logits for the padding candidates and the labels the reference's loader gives padding
(``setting.reference_padding_labels``: the top label ``top_label_base`` in the top group,
the group's label elsewhere). So a request with a padded top-group slot teaches the
cascade to rank the padding candidate first, which the reference evaluation, where padding
can take a quota place, then pays for.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lcron.settings import Setting

from .base import CascadeLoss, LossInputs, LossOutput, bce_with_logits
from .options import positive
from .published import published_labels
from .registry import register


def kth_largest(scores: Tensor, mask: Tensor, k: int) -> Tensor:
    """The ``k``-th largest valid score per request ``[B]`` (the smallest valid one when
    fewer than ``k`` are valid; 0 for a request with no valid slot). Differentiable: the
    gradient reaches the slot holding that score, as in the reference."""
    filled = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    ordered, _ = torch.sort(filled, dim=-1, descending=True)
    n = mask.sum(dim=-1)
    index = torch.clamp(torch.clamp(n, max=k) - 1, min=0)
    kappa = ordered.gather(-1, index.unsqueeze(-1)).squeeze(-1)
    return torch.where(n > 0, kappa, torch.zeros_like(kappa))


@register("icc")
class ICCLoss(CascadeLoss):
    """Joint cascade loss on a cut-off-gated ensemble score (pairwise BCE)."""

    OPTION_CHECKS = {"cutoff_tau": positive}

    def __init__(self, setting: Setting, *, reference_quirks: bool = False, cutoff_tau: float = 1e-3) -> None:
        super().__init__(setting)
        self.reference_quirks = reference_quirks
        self.cutoff_tau = positive("icc", "cutoff_tau", cutoff_tau)
        self.cutoffs = tuple(setting.icc_reference_cutoffs if reference_quirks else setting.quotas)
        # The reference's padding labels are per slot group, so its lists must have the setting's layout.
        self.uses_slot_groups = reference_quirks

    def extra_repr(self) -> str:
        return f"setting={self.setting.name!r}, cutoffs={self.cutoffs}, reference_quirks={self.reference_quirks}"

    def ensemble(self, logits: tuple[Tensor, ...], mask: Tensor) -> Tensor:
        """The ensemble score ``e`` ``[B, N]`` of per-stage ``logits``, cut-offs over ``mask``'s slots."""
        coefficients = self.setting.icc_coefficients
        last = self.setting.num_stages - 1
        passed = torch.ones_like(logits[0])  # prod_{t<s} I_t
        e = torch.zeros_like(logits[0])
        for s, z in enumerate(logits):
            kappa = kth_largest(z, mask, self.cutoffs[s])
            gate = torch.sigmoid((z - kappa.unsqueeze(-1)) / self.cutoff_tau)
            if s < last:
                e = e + coefficients[s] * passed * (1.0 - gate) * z
                passed = passed * gate
            else:
                e = e + coefficients[s] * passed * gate * z
        return e

    def scored_slots(self, inputs: LossInputs) -> tuple[tuple[Tensor, ...], Tensor, Tensor]:
        """The logits, labels and slot mask the loss runs over: the valid slots, or in
        reference mode every slot with the reference's padding labels (module docstring)."""
        if not self.reference_quirks:
            return inputs.logits, inputs.labels, inputs.mask
        return inputs.raw_logits, published_labels(inputs, self.setting), torch.ones_like(inputs.mask)

    def compute(self, inputs: LossInputs) -> LossOutput:
        logits, y, mask = self.scored_slots(inputs)
        e = self.ensemble(logits, mask)
        diff = e.unsqueeze(-1) - e.unsqueeze(-2)  # [B, i, j]
        target = (y.unsqueeze(-1) > y.unsqueeze(-2)).to(e.dtype)
        n_slots = inputs.list_size
        upper = torch.ones(n_slots, n_slots, dtype=torch.bool, device=e.device).triu(diagonal=1)
        pairs = (mask.unsqueeze(-1) & mask.unsqueeze(-2) & upper).to(e.dtype)
        summed = (bce_with_logits(diff, target) * pairs).sum()
        if self.reference_quirks:
            denominator = float(inputs.batch_size * n_slots * n_slots)
        else:
            denominator = torch.clamp(pairs.sum(), min=1.0)
        total = summed / denominator
        return LossOutput(total, {"ensemble": total.detach()})
