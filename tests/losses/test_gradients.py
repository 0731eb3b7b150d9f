"""Gradient checks in float64: autograd against finite differences of the real code.

ARF has no stopped gradient, so ``torch.autograd.gradcheck`` applies as is. LCRON and
ARF-v2 divide by a stopped-gradient column normaliser, which makes a plain gradcheck fail
by design; there the normaliser is recorded at the base point and replayed (held
constant) while gradcheck perturbs the logits.
"""

from __future__ import annotations

import pytest
import torch

import lcron.losses.sorting as sorting
from lcron.losses import build_loss

from .tiny import TINY2, TINY3, as_tensors, batch, set_weights


class FrozenNormaliser:
    """Stands in for ``sorting._column_total``: records its values once, then replays them."""

    def __init__(self, original):
        self.original = original
        self.values: list[torch.Tensor] = []
        self.recording = True
        self.index = 0

    def __call__(self, perm: torch.Tensor) -> torch.Tensor:
        if self.recording:
            value = self.original(perm)
            self.values.append(value.detach().clone())
            return value
        value = self.values[self.index]
        self.index += 1
        return value


def _loss_fn(loss, y, mask, frozen=None):
    def fn(*logits):
        if frozen is not None:
            frozen.index = 0
        return loss(list(logits), y, mask).total

    return fn


@pytest.mark.parametrize("setting", [TINY2, TINY3], ids=["tiny2", "tiny3"])
def test_arf_gradcheck(setting):
    z, y, mask = batch(setting.name, seed=21)
    loss = build_loss("arf", setting=setting, tau=0.7)
    set_weights(loss, torch.linspace(0.6, 1.7, setting.num_stages).tolist())
    zt, yt, mt = as_tensors(z, y, mask)
    assert torch.autograd.gradcheck(_loss_fn(loss, yt, mt), tuple(zt))


@pytest.mark.parametrize("method,options", [("lcron", {"k": "quotas", "tau": 0.8}), ("lcron", {"k": 3, "tau": 2.0}),
                                            ("arf_v2", {"tau": 0.9})])
@pytest.mark.parametrize("setting", [TINY2, TINY3], ids=["tiny2", "tiny3"])
def test_finite_differences_with_the_normaliser_held_constant(monkeypatch, setting, method, options):
    z, y, mask = batch(setting.name, seed=22)
    loss = build_loss(method, setting=setting, **options)
    zt, yt, mt = as_tensors(z, y, mask)
    # Without freezing, finite differences also move the normaliser: the check must fail,
    # which shows the stopped gradient is really there.
    assert not torch.autograd.gradcheck(_loss_fn(loss, yt, mt), tuple(zt), raise_exception=False)
    frozen = FrozenNormaliser(sorting._column_total)
    monkeypatch.setattr(sorting, "_column_total", frozen)
    loss(zt, yt, mt)  # record at the base point
    assert len(frozen.values) == 2 * setting.num_stages
    frozen.recording = False
    assert torch.autograd.gradcheck(_loss_fn(loss, yt, mt, frozen), tuple(zt))


def test_learned_weight_gradient_matches_formula():
    # d/dw (0.5 / w^2 * L + log w) = -L / w^3 + 1 / w.
    z, y, mask = batch("tiny3", seed=9)
    loss = build_loss("lcron", setting=TINY3, k="quotas")
    set_weights(loss, [0.5, 1.0, 2.0])
    out = loss(*as_tensors(z, y, mask))
    out.total.backward()
    for s, stage in enumerate(TINY3.stage_names):
        w = loss.weights[stage].item()
        single = out.parts[f"single/{stage}"].item()
        assert loss.weights[stage].grad.item() == pytest.approx(-single / w**3 + 1 / w, rel=1e-5)
