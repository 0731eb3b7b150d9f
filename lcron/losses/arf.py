"""ARF and ARF-v2 (Wang et al. 2024): adaptive relaxation of Recall@k@m, one stage at a time.

Each stage model ``s`` is trained alone with ``P = NeuralSort(z_s, tau)`` (tau = 200), the
soft label permutation ``L`` (NeuralSort of the labels at tau 1e-4), ``k`` = the GT size
(10) and ``m`` = the stage quota. GT indicators ``t_i = sum_{r<k} L[r, i]`` and
``t'_i = sum_{r>=k} L[r, i]``.

* ``L_global = mean over valid (r, i) of -log(P[r, i] + 1e-6) L[r, i]``: learn the whole
  permutation (every request).
* ARF: ``L_relax = mean_i -log((1/m) sum_{r<m} P[r, i] + 1e-6) t_i``: GT items should sit
  in the top ``m``.
* ARF-v2 (two-sided): ``L_relax = mean_i [-log p(i; m) t_i - log pbar(i; m) t'_i]`` with the
  column-normalised memberships ``p(i; m) = sum_{r<m} P[r, i] / sg(sum_r P[r, i])`` and
  ``pbar(i; m) = sum_{r>=m} P[r, i] / sg(sum_r P[r, i])``: non-GT items should also fall
  outside the top ``m``.

``L_relax`` averages over the valid slots of requests with more than ``m`` valid slots (for
the others the top ``m`` holds everything and the term is meaningless). With a learned
weight ``w_s`` (init 1) per stage:

    L_s = 0.5 / w_s^2 * L_global + L_relax + log w_s,        L = sum_s L_s.

``reference_quirks=True`` reproduces how the published loss treats padding
(:mod:`lcron.losses.published`): NeuralSort of all ``N`` raw logits and the label
permutation of the published labels, kept on the rows and columns of the first ``count``
slots; ``L_global`` only over requests without padding, ``L_global`` and ``L_relax`` as sums
over all ``B * N * N`` and ``B * N`` entries. Without padding it is the default loss.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lcron.settings import Setting

from .base import CascadeLoss, LossInputs, LossOutput, masked_mean, stage_weights, uncertainty_weighted
from .options import positive
from .published import full_requests, mean_over_all, stage_permutations
from .registry import register
from .sorting import LABEL_TAU, gt_indicator, outside_topk_membership, topk_membership

#: Added inside every logarithm of a probability so an exactly-zero entry stays finite.
LOG_EPS = 1e-6


def global_loss(perm: Tensor, label_perm: Tensor, valid_entries: Tensor) -> Tensor:
    """``sum -log(P + 1e-6) L / #valid (r, i) entries`` (``valid_entries = sum_b n_b^2``)."""
    summed = (-torch.log(perm + LOG_EPS) * label_perm).sum()
    return summed / valid_entries.clamp(min=1.0)


def relax_one_sided(perm: Tensor, m: int, t_in: Tensor) -> Tensor:
    """Per item ``-log((1/m) sum_{r<m} P[r, i] + 1e-6) t_i`` ``[B, N]`` (ARF)."""
    top = perm[..., :m, :].sum(dim=-2) / m
    return -torch.log(top + LOG_EPS) * t_in


def two_sided_terms(inside: Tensor, outside: Tensor, t_in: Tensor, t_out: Tensor) -> Tensor:
    """Per item ``-log(p(i; m) + 1e-6) t_i - log(pbar(i; m) + 1e-6) t'_i`` ``[B, N]`` from the
    memberships ``p = inside``, ``pbar = outside`` (ARF-v2 and LCRON's single-stage loss)."""
    return -torch.log(inside + LOG_EPS) * t_in - torch.log(outside + LOG_EPS) * t_out


def relax_two_sided(perm: Tensor, m: int, t_in: Tensor, t_out: Tensor) -> Tensor:
    """:func:`two_sided_terms` with the memberships of ``perm`` at quota ``m``."""
    return two_sided_terms(topk_membership(perm, m), outside_topk_membership(perm, m), t_in, t_out)


def eligible_slots(inputs: LossInputs, m: int, slots: Tensor | None = None) -> Tensor:
    """0/1 weights ``[B, N]``: the ``slots`` (default: the valid ones) of requests with more
    than ``m`` valid slots."""
    slots = inputs.maskf if slots is None else slots
    return slots * (inputs.counts > m).to(slots.dtype).unsqueeze(-1)


class _ARFBase(CascadeLoss):
    two_sided = False
    OPTION_CHECKS = {"tau": positive, "label_tau": positive, "k": positive}

    def __init__(self, setting: Setting, *, tau: float = 200.0, k: int | None = None,
                 label_tau: float = LABEL_TAU, reference_quirks: bool = False) -> None:
        super().__init__(setting)
        name = self.method_name or type(self).__name__
        self.reference_quirks = bool(reference_quirks)
        # the published labels of padding are per slot group: lists must have the setting's layout
        self.uses_slot_groups = self.reference_quirks
        self.tau = positive(name, "tau", tau)
        self.label_tau = positive(name, "label_tau", label_tau)
        self.k = setting.gt_size if k is None else int(positive(name, "k", k))
        # One learned scalar weight per stage model (their own optimizer in the trainer).
        self.weights = stage_weights(setting)

    def extra_repr(self) -> str:
        return (f"setting={self.setting.name!r}, tau={self.tau}, k={self.k}, label_tau={self.label_tau}, "
                f"reference_quirks={self.reference_quirks}")

    def compute(self, inputs: LossInputs) -> LossOutput:
        dtype = inputs.labels.dtype
        sort, label_perm, slots = stage_permutations(inputs, self.setting, tau=self.tau, label_tau=self.label_tau,
                                                     hard=False, reference_quirks=self.reference_quirks)
        t_in, t_out = gt_indicator(label_perm, self.k)
        if self.reference_quirks:  # the published global loss: full requests only, over B N N entries
            global_labels = label_perm * full_requests(inputs)
            valid_entries = inputs.labels.new_tensor(float(inputs.batch_size * inputs.list_size**2))
            mean = mean_over_all
        else:
            global_labels, valid_entries, mean = label_perm, (inputs.counts**2).sum(), masked_mean
        total = inputs.labels.new_zeros(())
        parts: dict[str, Tensor] = {}
        for s, stage in enumerate(self.stage_names):
            perm = sort(s)
            glob = global_loss(perm, global_labels, valid_entries)
            m = self.setting.quotas[s]
            if self.two_sided:
                per_item = relax_two_sided(perm, m, t_in, t_out)
            else:
                per_item = relax_one_sided(perm, m, t_in)
            relax = mean(per_item, eligible_slots(inputs, m, slots))
            w = self.weights[stage].to(dtype)
            total = total + uncertainty_weighted(glob, w) + relax
            parts[f"global/{stage}"] = glob.detach()
            parts[f"relax/{stage}"] = relax.detach()
            parts[f"weight/{stage}"] = w.detach()
        return LossOutput(total, parts)


@register("arf")
class ARFLoss(_ARFBase):
    """ARF: NeuralSort per stage, global permutation loss + one-sided Recall@k@m relaxation."""

    two_sided = False


@register("arf_v2")
class ARFv2Loss(_ARFBase):
    """ARF-v2: as ARF with the two-sided, column-normalised Recall@k@m relaxation."""

    two_sided = True
