"""The public API: METHODS, build_loss, options, @register for a ninth method, parts, parameters."""

from __future__ import annotations

import importlib.util
import json
import sys
import textwrap

import pytest
import torch

import lcron.losses as losses
from lcron.errors import ConfigError, DataError, LcronError
from lcron.losses import METHODS, LossOutput, build_loss, parse_options, register
from lcron.losses.registry import discover, method_options, unregister
from lcron.settings import THREE_STAGE, TWO_STAGE, Setting

EIGHT = ("bce", "icc", "rankflow", "fs_ranknet", "fs_lambdaloss", "arf", "arf_v2", "lcron")


def _inputs(setting: Setting, batch: int = 4, seed: int = 0, padding: bool = True):
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
    logits = [torch.randn(batch, n, generator=g, requires_grad=True) for _ in setting.stage_names]
    return logits, labels, mask


def test_methods_are_the_eight_in_spec_order():
    assert METHODS == EIGHT
    assert losses.METHODS == EIGHT


def test_unknown_method_lists_the_methods():
    with pytest.raises(ConfigError) as info:
        build_loss("lcorn", stages=2)
    for name in EIGHT:
        assert name in str(info.value)
    assert isinstance(info.value, LcronError)


def test_unknown_option_lists_the_method_options():
    with pytest.raises(ConfigError, match="tau") as info:
        build_loss("lcron", stages=2, temperature=3)
    assert "temperature" in str(info.value) and "hard_labels" in str(info.value)
    with pytest.raises(ConfigError, match="no option"):
        build_loss("bce", stages=3, tau=1.0)


def test_options_from_strings():
    assert parse_options("lcron", {"k": "30,20", "hard_labels": "true", "tau": "25"}) == {
        "k": (30, 20), "hard_labels": True, "tau": 25.0}
    assert parse_options("icc", {"reference_quirks": "False", "cutoff_tau": "1e-2"}) == {
        "reference_quirks": False, "cutoff_tau": 0.01}
    assert parse_options("fs_lambdaloss", {"mu": "0.5", "topn": "20"}) == {"mu": 0.5, "topn": 20}
    assert parse_options("arf", {"k": "none"}) == {"k": None}
    loss = build_loss("lcron", stages="2", k="30,20", hard_labels="yes", tau="25", label_tau="1e-3")
    assert loss.k == (30, 20) and loss.hard_labels is True and loss.tau == 25.0 and loss.label_tau == 1e-3
    assert build_loss("lcron", stages=3, k="quotas").k == (40, 30, 20)
    assert build_loss("lcron", stages=3, k="7").k == (7, 7, 7)
    assert build_loss("lcron", stages=2, k=[5, 4]).k == (5, 4)
    assert build_loss("arf_v2", stages=2, tau="100", k="5").k == 5


@pytest.mark.parametrize("method,options,match", [
    ("lcron", {"k": "30,20,10"}, "3 entries; setting 'two_stage' has 2 stages"),
    ("lcron", {"k": "0"}, "positive"),
    ("lcron", {"hard_labels": "maybe"}, "boolean"),
    ("lcron", {"tau": "-1"}, "positive"),
    ("icc", {"cutoff_tau": "abc"}, "number"),
    ("fs_lambdaloss", {"mu": 2}, r"\[0, 1\]"),
    ("fs_lambdaloss", {"topn": "3.5"}, "integer"),
])
def test_bad_option_values_are_config_errors(method, options, match):
    with pytest.raises(ConfigError, match=match):
        build_loss(method, stages=2, **options)


def test_setting_resolution():
    assert build_loss("bce", stages=3).setting is THREE_STAGE
    assert build_loss("bce", setting="two_stage").setting is TWO_STAGE
    assert build_loss("bce", setting=THREE_STAGE, stages=3).setting is THREE_STAGE
    with pytest.raises(ConfigError, match="contradicts"):
        build_loss("bce", setting=THREE_STAGE, stages=2)
    with pytest.raises(ConfigError, match="stages"):
        build_loss("bce")
    with pytest.raises(ConfigError, match="unknown setting"):
        build_loss("bce", setting="four_stage")


def test_setting_from_a_user_file(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"base": "two_stage", "name": "mine", "quotas": [25, 10]}))
    loss = build_loss("icc", setting=str(path))
    assert loss.setting.name == "mine" and loss.cutoffs == (25, 10)


def test_input_errors_name_the_problem():
    loss = build_loss("lcron", stages=2)
    logits, labels, mask = _inputs(TWO_STAGE)
    with pytest.raises(ConfigError, match="2 stages"):
        loss(logits + [logits[0]], labels, mask)
    with pytest.raises(DataError, match="prerank"):
        loss([logits[0], logits[1][:, :30]], labels, mask)
    with pytest.raises(DataError, match="mask"):
        loss(logits, labels, mask[:, :30])
    with pytest.raises(DataError, match="N = 30"):
        build_loss("bce", stages=2)([z[:, :30] for z in logits], labels[:, :30], mask[:, :30])


def test_parameters_per_method():
    for stages in (2, 3):
        for method in EIGHT:
            params = list(build_loss(method, stages=stages).parameters())
            numel = sum(p.numel() for p in params)
            if method in ("arf", "arf_v2", "lcron"):
                named = dict(build_loss(method, stages=stages).named_parameters())
                setting = TWO_STAGE if stages == 2 else THREE_STAGE
                assert sorted(named) == sorted(f"weights.{s}" for s in setting.stage_names)
                assert numel == stages and all(p.dim() == 0 and p.item() == 1 for p in params)
            else:
                assert numel == 0, method


EXPECTED_PARTS = {
    "bce": lambda st: {f"single/{s}" for s in st},
    "icc": lambda st: {"ensemble"},
    "fs_ranknet": lambda st: {f"single/{s}" for s in st},
    "fs_lambdaloss": lambda st: {f"single/{s}" for s in st},
    "arf": lambda st: {f"{p}/{s}" for p in ("global", "relax", "weight") for s in st},
    "arf_v2": lambda st: {f"{p}/{s}" for p in ("global", "relax", "weight") for s in st},
    "lcron": lambda st: {"e2e"} | {f"{p}/{s}" for p in ("single", "weight") for s in st},
    "rankflow": lambda st: ({f"bce/{s}" for s in st} | {f"mse/{s}" for s in st[:-1]}
                            | ({f"rank/{s}" for s in st[:-1]} if len(st) == 3 else set())),
}


@pytest.mark.parametrize("setting", [TWO_STAGE, THREE_STAGE], ids=["two_stage", "three_stage"])
@pytest.mark.parametrize("method", EIGHT)
def test_every_method_runs_with_padding_and_reports_its_parts(setting, method):
    loss = build_loss(method, setting=setting)
    logits, labels, mask = _inputs(setting)
    out = loss(logits, labels, mask)
    assert isinstance(out, LossOutput) and out.total.dim() == 0 and torch.isfinite(out.total)
    assert set(out.parts) == EXPECTED_PARTS[method](setting.stage_names)
    out.total.backward()
    for z in logits:
        assert torch.isfinite(z.grad).all()
        assert torch.all(z.grad[mask == 0] == 0)
        assert z.grad.abs().sum() > 0


@pytest.mark.parametrize("method", EIGHT)
def test_user_setting_with_other_quotas_works_with_every_method(method):
    mine = Setting.from_dict({"base": "two_stage", "name": "q25_10", "quotas": [25, 10]})
    loss = build_loss(method, setting=mine)
    logits, labels, mask = _inputs(mine, seed=3)
    out = loss(logits, labels, mask)
    out.total.backward()
    assert torch.isfinite(out.total) and all(torch.isfinite(z.grad).all() for z in logits)
    # The quotas are read from the setting: the loss differs from the built-in 30 -> 20.
    if method not in ("bce", "fs_ranknet", "fs_lambdaloss", "lcron"):
        builtin = build_loss(method, setting=TWO_STAGE)([z.detach() for z in logits], labels, mask).total
        assert not torch.isclose(builtin, out.total.detach())
    if method == "lcron":
        assert build_loss("lcron", setting=mine, k="quotas").k == (25, 10)


NINTH = textwrap.dedent('''
    import torch
    from lcron.losses import CascadeLoss, LossOutput, register


    @register("ninth_test_method")
    class Ninth(CascadeLoss):
        """Mean squared logit per stage, times a scale (a toy ninth method)."""

        def __init__(self, setting, *, scale: float = 1.0, squared: bool = True) -> None:
            super().__init__(setting)
            self.scale = scale
            self.squared = squared

        def compute(self, inputs):
            total = sum(((z * inputs.maskf) ** 2).sum() / inputs.maskf.sum() for z in inputs.logits)
            return LossOutput(self.scale * total, {"sq": total.detach()})
''')


def _import_file(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_ninth_method_registered_from_its_own_file(tmp_path):
    path = tmp_path / "ninth_method.py"
    path.write_text(NINTH)
    try:
        _import_file(path, "ninth_method")
        assert losses.METHODS == EIGHT + ("ninth_test_method",)
        assert set(method_options("ninth_test_method")) == {"scale", "squared"}
        loss = build_loss("ninth_test_method", stages=2, scale="2.5", squared="false")
        assert loss.scale == 2.5 and loss.squared is False
        z = [torch.ones(2, 40), torch.full((2, 40), 2.0)]
        out = loss(z, torch.zeros(2, 40), torch.ones(2, 40))
        assert out.total.item() == pytest.approx(2.5 * (1 + 4))
        with pytest.raises(ConfigError, match="scale"):
            build_loss("ninth_test_method", stages=2, bogus=1)
    finally:
        unregister("ninth_test_method")
    assert losses.METHODS == EIGHT


def test_discover_imports_every_module_of_a_package_folder(tmp_path, monkeypatch):
    package = tmp_path / "my_losses_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "ninth.py").write_text(NINTH)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        import my_losses_pkg

        assert discover(my_losses_pkg.__path__, "my_losses_pkg") == ["ninth"]
        assert "ninth_test_method" in losses.METHODS
    finally:
        unregister("ninth_test_method")
        for mod in ("my_losses_pkg", "my_losses_pkg.ninth"):
            sys.modules.pop(mod, None)


def test_register_rejects_bad_registrations():
    class NotALoss:
        pass

    with pytest.raises(ConfigError, match="subclass"):
        register("not_a_loss")(NotALoss)
    with pytest.raises(ConfigError, match="lower-case"):
        register("Bad Name")
    with pytest.raises(ConfigError, match="already registered"):
        @register("lcron")
        class Other(losses.CascadeLoss):
            pass

    class Positional(losses.CascadeLoss):
        def __init__(self, setting, tau: float = 1.0) -> None:
            super().__init__(setting)

    with pytest.raises(ConfigError, match="keyword-only"):
        register("positional_test")(Positional)

    class Untyped(losses.CascadeLoss):
        def __init__(self, setting, *, table: dict = None) -> None:
            super().__init__(setting)

    with pytest.raises(ConfigError, match="OPTION_PARSERS"):
        register("untyped_test")(Untyped)
    assert losses.METHODS == EIGHT
