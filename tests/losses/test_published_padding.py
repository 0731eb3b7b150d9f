"""``reference_quirks`` of ICC, LCRON, ARF and ARF-v2: padding as the published losses see it
(lcron/losses/published.py). The reference cases use full lists, so they cannot check this;
here: without padding the option changes nothing, with padding it follows the published
slots (all slots sorted, the first ``count`` kept), and its values on a padded batch are the
published code's."""

from __future__ import annotations

import pytest
import torch

from lcron.losses import build_loss
from lcron.settings import get_setting

QUIRKED = ("icc", "lcron", "arf", "arf_v2")

#: The published loss functions (kwai/LCRON loss/{two,three}_stage/*.py, learned weights at
#: their initial 1) on :func:`padded_batch`, computed with that code on 2026-12-05.
PUBLISHED_VALUES = {
    (2, "lcron"): 2.841191, (2, "icc"): 0.423278, (2, "arf"): 1.646158, (2, "arf_v2"): 1.530578,
    (3, "lcron"): 5.657257, (3, "icc"): 0.725461, (3, "arf"): 2.187849, (3, "arf_v2"): 2.470778,
}


def padded_batch(setting):
    """4 requests: full; top group short by 2 (padding inside the list); last group short by 5
    (padding at the end); second group empty."""
    n, b = setting.list_size, 4
    g = torch.Generator().manual_seed(5)
    z = [torch.randn(b, n, generator=g, dtype=torch.float32) for _ in setting.stage_names]
    labels = torch.tensor(setting.reference_padding_labels).repeat(b, 1)
    labels[:, :10] = torch.tensor([30, 29, 28, 26, 25, 24, 23, 21, 20, 19])
    mask = torch.ones(b, n, dtype=torch.long)
    mask[1, 8:10] = 0
    mask[2, n - 5:] = 0
    mask[3, 10:20] = 0
    return z, labels * mask, mask


@pytest.mark.parametrize("stages", [2, 3])
@pytest.mark.parametrize("method", QUIRKED)
def test_on_a_padded_batch_the_value_is_the_published_codes(method, stages):
    z, y, mask = padded_batch(get_setting(stages=stages))
    out = build_loss(method, stages=stages, reference_quirks=True)(z, y, mask).total.item()
    assert out == pytest.approx(PUBLISHED_VALUES[(stages, method)], rel=1e-5)


@pytest.mark.parametrize("stages", [2, 3])
@pytest.mark.parametrize("method", ("lcron", "arf", "arf_v2"))
def test_without_padding_the_option_changes_nothing(method, stages):
    z, y, mask = padded_batch(get_setting(stages=stages))
    z, y, full = [t[:1].double().requires_grad_(True) for t in z], y[:1], mask[:1]  # request 0 is full
    assert bool(full.all())
    values, grads = [], []
    for quirks in (False, True):
        total = build_loss(method, stages=stages, reference_quirks=quirks)(z, y, full).total
        values.append(total.item())
        grads.append(torch.autograd.grad(total, z))
    assert values[0] == pytest.approx(values[1], rel=1e-12)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("method", ("lcron", "arf", "arf_v2"))
def test_padding_inside_the_list_is_sorted_and_scored(method):
    """Request 1 has its top group's last two slots padded. The published NeuralSort runs over
    all slots, and its mask keeps the first 48: those two padding slots are scored like
    candidates (their logits get gradient). The default loss never lets padding through."""
    z, y, mask = padded_batch(get_setting(stages=3))
    for quirks in (True, False):
        zs = [t.clone().requires_grad_(True) for t in z]
        build_loss(method, stages=3, reference_quirks=quirks)(zs, y, mask).total.backward()
        for grad in (t.grad for t in zs):
            assert bool(grad[1, 8:10].abs().sum() > 0) is quirks
            if not quirks:
                assert torch.all(grad[mask == 0] == 0)
