"""The common shape of every cascade training loss.

A loss is an ``nn.Module`` built for one :class:`~lcron.settings.Setting`. It sees only
per-stage logits ``[B, N]`` (first stage first), graded labels ``[B, N]`` and a validity
mask ``[B, N]`` - never models or raw batches - so it can be tested with hand-made tensors
and reused elsewhere. Everything that differs between cascades (quotas, slot groups, BCE
ranges, ICC coefficients) is read from the setting; no loss branches on the stage count.

Padding never contributes (METHODS.md section 7): :meth:`CascadeLoss.forward` zeroes the
logits of padding slots before a loss sees them, so no gradient reaches them, and the
helpers below average pointwise terms over valid slots only. The one exception is opt-in:
a loss reproducing the published code's padding reads :attr:`LossInputs.raw_logits`
(ICC, LCRON, ARF and ARF-v2 with ``reference_quirks``; :mod:`lcron.losses.published`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lcron.errors import ConfigError, DataError
from lcron.settings import Setting

__all__ = ["LossOutput", "LossInputs", "CascadeLoss", "masked_mean", "bce_with_logits", "stage_weights",
           "uncertainty_weighted"]


@dataclass
class LossOutput:
    """What a loss returns: ``total`` to backpropagate and named scalar ``parts`` for logging."""

    total: Tensor
    parts: dict[str, Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class LossInputs:
    """Validated inputs in one float dtype (that of the logits).

    ``logits`` have padding entries set to 0 (finite, no gradient to padding); ``labels``
    are float; ``mask`` is bool and ``maskf`` the same as 0/1 floats; ``counts`` is the
    number of valid slots per request ``[B]`` (float). ``raw_logits`` are the logits as the
    models gave them, padding included: only a loss reproducing the published code's padding
    (``reference_quirks`` of ICC, LCRON, ARF, ARF-v2) reads them.
    """

    logits: tuple[Tensor, ...]
    labels: Tensor
    mask: Tensor
    maskf: Tensor
    counts: Tensor
    raw_logits: tuple[Tensor, ...] = ()

    @property
    def batch_size(self) -> int:
        return self.labels.shape[0]

    @property
    def list_size(self) -> int:
        return self.labels.shape[1]


def masked_mean(values: Tensor, weights: Tensor) -> Tensor:
    """``sum(weights * values) / sum(weights)``, and 0 when no weight is positive.

    Entries with zero weight are replaced by 0 before the product, so a non-finite value
    there cannot leak in.
    """
    values = torch.where(weights > 0, values, torch.zeros_like(values))
    total = weights.sum()
    return (values * weights).sum() / torch.clamp(total, min=torch.finfo(values.dtype).tiny)


def bce_with_logits(logits: Tensor, targets: Tensor) -> Tensor:
    """Elementwise binary cross-entropy with logits: ``softplus(z) - t z`` (stable form)."""
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none")


def stage_weights(setting: Setting) -> nn.ParameterDict:
    """One learned scalar loss weight per stage, named by stage, initialised to 1.

    Kept as separate scalars (``weights.retrieval``, ``weights.prerank``, ...) so that a
    trainer or a checkpoint can read each one by name.
    """
    return nn.ParameterDict({name: nn.Parameter(torch.ones(())) for name in setting.stage_names})


def uncertainty_weighted(loss: Tensor, weight: Tensor) -> Tensor:
    """``0.5 / w^2 * loss + log w`` - the learned weighting of ARF and LCRON (w init 1).

    The ``log w`` term stops ``w`` from growing without bound; at ``w = 1`` the loss's
    gradient is halved.
    """
    return 0.5 / weight**2 * loss + torch.log(weight)


class CascadeLoss(nn.Module):
    """Base class: validates inputs, then calls :meth:`compute`.

    Subclasses take the setting as the first constructor argument and their options as
    keyword-only arguments with defaults; they implement :meth:`compute`. Register one
    with :func:`lcron.losses.register`. The first paragraph of a subclass's docstring is its
    one-line description in ``lcron methods`` and ``lcron train --help``.

    Hooks a subclass may use: :meth:`compute` (required), the class attributes
    ``uses_slot_groups``, ``OPTION_PARSERS`` and ``OPTION_CHECKS``, :meth:`extra_repr`, and
    ``nn.Parameter`` attributes (learned loss weights, trained by their own optimizer, see
    :func:`stage_weights`); :class:`SameLossEveryStage` needs only :meth:`stage_loss`.
    """

    #: Set by :func:`lcron.losses.register`.
    method_name: ClassVar[str] = ""
    #: True for methods that read the slot groups of the setting (BCE, FS-RankNet,
    #: RankFlow): their list size must be the setting's ``N``.
    uses_slot_groups: ClassVar[bool] = False
    #: Parsers for options whose annotation is not a plain bool/int/float/str.
    OPTION_PARSERS: ClassVar[dict] = {}
    #: Checks of options' parsed values, option -> a check or a tuple of checks
    #: (:class:`lcron.losses.options.Check`, e.g. ``{"tau": positive}``): the registry runs them
    #: on every value given to ``build_loss``/``parse_options`` (not on None) and on the
    #: defaults at registration, and ``lcron methods`` lists them.
    OPTION_CHECKS: ClassVar[dict] = {}

    def __init__(self, setting: Setting) -> None:
        super().__init__()
        if not isinstance(setting, Setting):
            raise ConfigError(f"{type(self).__name__}: expected a lcron.settings.Setting, got {type(setting).__name__}")
        self.setting = setting

    # ----------------------------------------------------------------- helpers
    @property
    def stage_names(self) -> tuple[str, ...]:
        return self.setting.stage_names

    def extra_repr(self) -> str:
        return f"setting={self.setting.name!r}"

    def top_group_targets(self, inputs: LossInputs) -> Tensor:
        """Binary targets ``[1, N]``: 1 on the slots of the top group, 0 elsewhere."""
        slots = torch.arange(inputs.list_size, device=inputs.labels.device)
        return (slots < self.setting.group_size).to(inputs.labels.dtype).unsqueeze(0)

    # --------------------------------------------------------------- interface
    def forward(self, logits: Sequence[Tensor], labels: Tensor, mask: Tensor | None = None) -> LossOutput:
        return self.compute(self.prepare(logits, labels, mask))

    def compute(self, inputs: LossInputs) -> LossOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def prepare(self, logits: Sequence[Tensor], labels: Tensor, mask: Tensor | None) -> LossInputs:
        """Check shapes against the setting and convert to one float dtype."""
        name = self.method_name or type(self).__name__
        if isinstance(logits, Tensor):
            raise DataError(f"{name}: logits must be a list of [B, N] tensors, one per stage, not a single tensor")
        logits = list(logits)
        s = self.setting.num_stages
        if len(logits) != s:
            raise ConfigError(
                f"{name}: got {len(logits)} logits tensors; setting {self.setting.name!r} has {s} stages "
                f"{list(self.stage_names)} (first stage first)"
            )
        if not isinstance(labels, Tensor) or labels.dim() != 2:
            raise DataError(f"{name}: labels must be a [B, N] tensor, got {getattr(labels, 'shape', type(labels))}")
        shape = tuple(labels.shape)
        for stage, z in zip(self.stage_names, logits):
            if not isinstance(z, Tensor) or tuple(z.shape) != shape:
                raise DataError(f"{name}: logits of stage {stage!r} have shape {tuple(getattr(z, 'shape', ()))}, expected {shape} like labels")
            if not z.is_floating_point():
                raise DataError(f"{name}: logits of stage {stage!r} must be floating point, got {z.dtype}")
        if mask is None:
            mask = torch.ones(shape, dtype=torch.bool, device=labels.device)
        if tuple(mask.shape) != shape:
            raise DataError(f"{name}: mask has shape {tuple(mask.shape)}, expected {shape} like labels")
        if self.uses_slot_groups and shape[1] != self.setting.list_size:
            raise DataError(
                f"{name}: list size N = {shape[1]}, but setting {self.setting.name!r} lays out "
                f"{len(self.setting.groups)} groups of {self.setting.group_size} slots (N = {self.setting.list_size})"
            )
        dtype = logits[0].dtype
        valid = mask if mask.dtype == torch.bool else mask != 0
        maskf = valid.to(dtype)
        zs = tuple(z.masked_fill(~valid, 0.0) for z in logits)
        y = labels.to(dtype).masked_fill(~valid, 0.0)
        return LossInputs(logits=zs, labels=y, mask=valid, maskf=maskf, counts=maskf.sum(dim=-1),
                          raw_logits=tuple(logits))


class SameLossEveryStage(CascadeLoss):
    """A method that gives every stage model the same loss on its own logits (full-stage methods).

    Subclasses implement :meth:`stage_loss`; the total is the sum over stages and each stage's
    term is logged as ``single/<stage>``.
    """

    def stage_loss(self, z: Tensor, inputs: LossInputs) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def compute(self, inputs: LossInputs) -> LossOutput:
        total = inputs.labels.new_zeros(())
        parts = {}
        for stage, z in zip(self.stage_names, inputs.logits):
            term = self.stage_loss(z, inputs)
            parts[f"single/{stage}"] = term.detach()
            total = total + term
        return LossOutput(total, parts)
