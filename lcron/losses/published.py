"""How the published losses see a padded list: the slots their ``reference_quirks`` reproduce.

This project's losses never let padding contribute (METHODS.md section 7). The published
code does, in two ways, and a loss option ``reference_quirks`` reproduces them:

* **Every slot takes part.** The losses run over all ``N`` slots, padding included, with
  the models' own logits for the padding candidates (:attr:`LossInputs.raw_logits`) and the
  labels the published loader gives padding (:func:`published_labels`): the top label
  ``top_label_base`` in the top group - its loader fills an empty top slot with position 0 -
  and the group's label elsewhere. (ICC.)
* **A prefix mask instead of the padding mask.** LCRON and ARF sort all ``N`` slots
  (NeuralSort of the raw logits, label permutation of the published labels) and then keep
  the rows and columns of the first ``count`` slots (``sequence_mask(count, N)``, ``count``
  = the number of valid slots: :func:`count_prefix`), not the valid ones. A list whose
  padding sits at its end is kept exactly; a short group before a full one keeps its padding
  and drops as many real candidates at the end. Their means run over all ``N`` columns and
  all ``B`` requests (:func:`mean_over_all`).

For a list without padding all of this is the default computation, which is why the
reference cases (full lists) cannot tell the two apart.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from lcron.settings import Setting

from .base import LossInputs
from .sorting import label_permutation, neural_sort

__all__ = ["published_labels", "count_prefix", "kept_pairs", "published_neural_sort",
           "published_label_permutation", "mean_over_all", "stage_permutations", "full_requests"]


def published_labels(inputs: LossInputs, setting: Setting) -> Tensor:
    """The labels ``[B, N]`` with padding slots given the published loader's labels
    (``setting.reference_padding_labels``)."""
    padding = torch.tensor(setting.reference_padding_labels, dtype=inputs.labels.dtype, device=inputs.labels.device)
    return torch.where(inputs.mask, inputs.labels, padding)


def count_prefix(inputs: LossInputs) -> Tensor:
    """The published ``sequence_mask(count, N)`` ``[B, N]`` (float): 1 for the first ``count`` slots."""
    slots = torch.arange(inputs.list_size, device=inputs.labels.device, dtype=inputs.counts.dtype)
    return (slots.unsqueeze(0) < inputs.counts.unsqueeze(-1)).to(inputs.labels.dtype)


def kept_pairs(keep: Tensor) -> Tensor:
    """``keep_r * keep_i`` ``[B, N, N]``: the (rank row, slot column) entries kept."""
    return keep.unsqueeze(-1) * keep.unsqueeze(-2)


def published_neural_sort(raw_scores: Tensor, keep: Tensor, tau: float) -> Tensor:
    """NeuralSort of all ``N`` raw scores, then only the kept rows and columns."""
    return neural_sort(raw_scores, None, tau) * kept_pairs(keep)


def published_label_permutation(labels: Tensor, keep: Tensor, *, tau: float, hard: bool, dtype: torch.dtype) -> Tensor:
    """The label permutation of all ``N`` published labels, then only the kept rows and columns."""
    return label_permutation(labels, None, tau=tau, hard=hard, dtype=dtype) * kept_pairs(keep)


def mean_over_all(values: Tensor, weights: Tensor) -> Tensor:
    """``sum(weights * values) / (B * N)``: the published means over every column and request
    (a zero weight is an entry that adds 0, not one that leaves the denominator)."""
    values = torch.where(weights > 0, values, torch.zeros_like(values))
    return (values * weights).sum() / float(values.numel())


def stage_permutations(inputs: LossInputs, setting: Setting, *, tau: float, label_tau: float, hard: bool,
                      reference_quirks: bool) -> tuple[Callable[[int], Tensor], Tensor, Tensor]:
    """The stage sort, the label permutation ``[B, N, N]`` and the slot weights ``[B, N]`` that
    LCRON and ARF work on: over the valid slots (METHODS.md section 7), or with
    ``reference_quirks`` as the published losses (module docstring: all slots sorted, the
    first ``count`` kept).

    The stage sort is a function, ``sort(s)`` = stage ``s``'s NeuralSort ``[B, N, N]``, called
    inside the loss's stage loop: sorting every stage up front keeps every stage's ``[B, N, N]``
    temporaries alive at once, and on CPU that measured the eager two-stage LCRON step 40%
    slower (forward + backward, B = 1024: 37 -> 52 ms; equal again with glibc's mmap threshold
    raised - the larger working set is mapped and unmapped every step)."""
    dtype = inputs.labels.dtype
    if not reference_quirks:
        label_perm = label_permutation(inputs.labels, inputs.mask, tau=label_tau, hard=hard, dtype=dtype)
        return lambda s: neural_sort(inputs.logits[s], inputs.mask, tau), label_perm, inputs.maskf
    keep = count_prefix(inputs)
    label_perm = published_label_permutation(published_labels(inputs, setting), keep, tau=label_tau, hard=hard,
                                             dtype=dtype)
    return lambda s: published_neural_sort(inputs.raw_logits[s], keep, tau), label_perm, keep


def full_requests(inputs: LossInputs) -> Tensor:
    """``[B, 1, 1]`` 1 for a request whose every slot is valid: the only ones the published
    ARF's global loss counts (``count >= N``)."""
    return (inputs.counts >= inputs.list_size).to(inputs.labels.dtype).view(-1, 1, 1)
