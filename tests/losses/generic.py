"""What the suite asks of every registered method at the loss level, as reusable checks.

The tests in ``test_generic.py`` run these for every method in ``lcron.losses.METHODS`` (a
method added as one file in ``lcron/losses/`` is collected with the eight), and the
ninth-method test (``test_ninth_method.py``) runs them for a method registered from a
temporary file. docs/methods.md ("What the suite asks of a method") lists them in words.
"""

from __future__ import annotations

import collections

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from lcron.errors import ConfigError, DataError
from lcron.losses import LossOutput, build_loss
from lcron.settings import Setting

from .tiny import TINY, as_tensors, batch

# Operators that read device values back to the host or make data-dependent shapes (each is
# a synchronisation on a GPU and makes CUDA-graph capture fail), and `lift_fresh`, the trace
# of `torch.tensor(host value)`. tests/test_train_step.py uses the same set and counter on
# the whole training step (models, loss, backward) of every registered method.
SYNCING_OPS = {"_local_scalar_dense", "item", "nonzero", "masked_select", "unique", "_unique2", "lift_fresh",
               "_assert_async", "equal", "is_nonzero"}


class OpCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.__name__.split(".")[0]] += 1
        return func(*args, **(kwargs or {}))


def padded_inputs(setting: Setting, batch: int = 4, seed: int = 0, padding: bool = True, dtype=torch.float32):
    """Random logits (requiring grad), graded labels in the spec's layout and a mask with
    padding: one slot, the tail of a request, and a request with only its top group."""
    g = torch.Generator().manual_seed(seed)
    n = setting.list_size
    size = setting.group_size
    top = torch.stack([torch.randperm(size, generator=g) for _ in range(batch)])
    labels = torch.zeros(batch, n, dtype=torch.int64)
    labels[:, :size] = setting.top_label_base - top
    for gi, group in enumerate(setting.groups[1:], start=1):
        labels[:, gi * size:(gi + 1) * size] = setting.group_labels[group]
    mask = torch.ones(batch, n, dtype=torch.int64)
    if padding:
        mask[1, 3] = 0
        mask[2, -7:] = 0
        mask[3, size:] = 0  # only the top group
    labels = labels * mask
    logits = [torch.randn(batch, n, generator=g, dtype=dtype).requires_grad_() for _ in setting.stage_names]
    return logits, labels, mask


def check_runs_with_padding(method: str, setting: Setting, options: dict | None = None, seed: int = 0) -> LossOutput:
    """A finite scalar total; named parts (strings -> finite, detached 0-dim tensors); every
    stage's logits get a finite, non-zero gradient and padding exactly zero; learned loss
    parameters get a finite gradient. Returns the output."""
    loss = build_loss(method, setting=setting, **(options or {}))
    logits, labels, mask = padded_inputs(setting, seed=seed)
    out = loss(logits, labels, mask)
    assert isinstance(out, LossOutput), f"{method}: returns {type(out).__name__}, not a LossOutput"
    assert out.total.dim() == 0 and torch.isfinite(out.total), f"{method}: total {out.total}"
    check_parts(method, out)
    out.total.backward()
    for stage, z in zip(setting.stage_names, logits):
        assert z.grad is not None, f"{method}: no gradient reaches stage {stage!r}"
        assert torch.isfinite(z.grad).all(), f"{method}: non-finite gradient at stage {stage!r}"
        assert torch.all(z.grad[mask == 0] == 0), f"{method}: padding of stage {stage!r} received gradient"
        assert z.grad.abs().sum() > 0, f"{method}: stage {stage!r} gets no gradient"
    for name, p in loss.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), f"{method}: parameter {name} has grad {p.grad}"
    return out


def check_parts(method: str, out: LossOutput) -> None:
    """Parts: a non-empty dict of names to finite 0-dim tensors that carry no graph."""
    assert isinstance(out.parts, dict) and out.parts, f"{method}: no named loss parts"
    for name, value in out.parts.items():
        assert isinstance(name, str) and name, f"{method}: part name {name!r}"
        assert isinstance(value, torch.Tensor) and value.dim() == 0, f"{method}: part {name} is not a scalar tensor"
        assert not value.requires_grad, f"{method}: part {name} is not detached"
        assert torch.isfinite(value), f"{method}: part {name} = {value}"


def check_padding_values_do_not_matter(method: str, setting: Setting, options: dict | None = None) -> None:
    """Garbage in the padding logits changes neither the total nor any part."""
    loss = build_loss(method, setting=setting, **(options or {}))
    logits, labels, mask = padded_inputs(setting, seed=1)
    base = loss([z.detach() for z in logits], labels, mask)
    garbage = [z.detach().masked_fill(mask == 0, 1e3) for z in logits]
    other = loss(garbage, labels, mask)
    assert other.total.item() == base.total.item(), f"{method}: padding logits changed the loss"
    assert {k: v.item() for k, v in other.parts.items()} == {k: v.item() for k, v in base.parts.items()}


def check_parts_are_the_same_every_batch(method: str, setting: Setting, options: dict | None = None) -> None:
    """The trainer logs one row of parts per step: their names may not change between batches."""
    loss = build_loss(method, setting=setting, **(options or {}))
    names = set()
    for seed, padding in ((0, True), (5, False)):
        logits, labels, mask = padded_inputs(setting, seed=seed, padding=padding)
        names.add(tuple(loss(logits, labels, mask).parts))
    assert len(names) == 1, f"{method}: the parts change between batches: {names}"


def check_dtypes(method: str, tiny: str = "tiny3", options: dict | None = None) -> None:
    """float32 logits give a float32 total close to float64's; integer labels and a float mask work."""
    z, y, mask = batch(tiny, seed=5)
    loss = build_loss(method, setting=TINY[tiny], **(options or {}))
    z64, y64, m64 = as_tensors(z, y, mask)
    ref = loss(z64, y64, m64).total
    assert ref.dtype == torch.float64, f"{method}: float64 logits gave a {ref.dtype} total"
    got = loss([t.detach().float() for t in z64], y64.to(torch.int32), m64.to(torch.float32)).total
    assert got.dtype == torch.float32, f"{method}: float32 logits gave a {got.dtype} total"
    assert abs(got.item() - ref.item()) <= 1e-5 * max(1.0, abs(ref.item())), f"{method}: {got.item()} vs {ref.item()}"


def check_input_errors(method: str, setting: Setting, options: dict | None = None) -> None:
    """Wrong inputs are ConfigError/DataError naming the problem (the base class's checks)."""
    import pytest

    loss = build_loss(method, setting=setting, **(options or {}))
    logits, labels, mask = padded_inputs(setting)
    with pytest.raises(ConfigError, match=f"{setting.num_stages} stages"):
        loss(logits + [logits[0]], labels, mask)
    with pytest.raises(DataError, match="mask"):
        loss(logits, labels, mask[:, :-1])


def check_no_host_sync(method: str, setting: Setting, options: dict | None = None) -> None:
    """Forward, backward and stacking the parts (what the trainer's step does with the loss)
    use no operator that reads a value back to the host or makes a tensor from host data."""
    loss = build_loss(method, setting=setting, **(options or {}))
    logits, labels, mask = padded_inputs(setting, seed=2)
    with OpCounter() as counter:
        out = loss(logits, labels, mask)
        out.total.backward()
        torch.stack([out.total.detach(), *[v.detach().reshape(()) for v in out.parts.values()]])
    syncing = {op: n for op, n in counter.ops.items() if op in SYNCING_OPS}
    assert not syncing, f"{method} ({setting.name}) synchronises with the host: {syncing}"


def check_learns(method: str, setting: Setting, options: dict | None = None, steps: int = 30) -> None:
    """Descent on free logits (and the loss's own parameters) lowers the loss on a fixed batch:
    the loss is an objective that gradient steps can improve. (tests/test_train.py asks more of
    every registered method: it learns a real cascade on a small synthetic data set.)"""
    torch.manual_seed(0)
    loss = build_loss(method, setting=setting, **(options or {}))
    logits, labels, mask = padded_inputs(setting, seed=3, batch=8)
    params = [torch.nn.Parameter(z.detach().clone()) for z in logits]
    opt = torch.optim.Adam(params + list(loss.parameters()), lr=0.05)
    first = None
    for _ in range(steps):
        opt.zero_grad()
        total = loss(params, labels, mask).total
        if first is None:
            first = total.item()
        total.backward()
        opt.step()
    with torch.no_grad():
        last = loss(params, labels, mask).total.item()
    assert last < first, f"{method} ({setting.name}): loss {first:.4f} -> {last:.4f} after {steps} steps"


ALL_CHECKS = (check_runs_with_padding, check_padding_values_do_not_matter, check_parts_are_the_same_every_batch,
              check_input_errors, check_no_host_sync, check_learns)
