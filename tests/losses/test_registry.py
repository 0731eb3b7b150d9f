"""The public API: METHODS, build_loss, options and their checks, @register for a ninth method,
parts, parameters, the method listing of ``lcron train --help``.

The spec's eight (``spec.EIGHT``, read from METHODS.md) are checked exactly; the registry may
hold more (a method added as one file), so no test pins it to exactly eight.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import textwrap

import pytest
import torch

import lcron.losses as losses
from lcron.errors import ConfigError, DataError, LcronError
from lcron import cli
from lcron.losses import METHODS, LossOutput, build_loss, parse_options, register
from lcron.losses.options import Check, in_range, positive
from lcron.losses.registry import LISTING_HEADING, describe_methods, discover, method_options, unregister
from lcron.settings import THREE_STAGE, TWO_STAGE, Setting

from .generic import padded_inputs as _inputs
from .spec import EIGHT, SPEC_FILE

#: The order the package registers the eight in (lcron/losses/__init__.py; tables and the
#: benchmark list methods in it). Other methods follow them.
BUILT_IN_ORDER = ("bce", "icc", "rankflow", "fs_ranknet", "fs_lambdaloss", "arf", "arf_v2", "lcron")


def test_the_spec_lists_eight_methods():
    assert SPEC_FILE.is_file(), f"spec missing: {SPEC_FILE}"
    assert len(EIGHT) == len(set(EIGHT)) == 8, EIGHT
    assert set(BUILT_IN_ORDER) == set(EIGHT)


def test_the_eight_are_registered_first_in_the_built_in_order():
    assert set(EIGHT) <= set(METHODS)
    assert METHODS[:len(BUILT_IN_ORDER)] == BUILT_IN_ORDER
    assert losses.METHODS == METHODS  # read live; nothing registered or removed since collection


def test_unknown_method_lists_the_registered_methods():
    with pytest.raises(ConfigError) as info:
        build_loss("lcorn", stages=2)
    assert str(info.value) == f"unknown method 'lcorn'; known methods: {', '.join(losses.METHODS)}"
    assert set(EIGHT) <= set(str(info.value).split("known methods: ")[1].split(", "))
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


def test_expected_parts_cover_the_eight():
    assert set(EXPECTED_PARTS) == set(EIGHT)


# (Padding, gradients and the generic shape of parts are checked for every registered method
# in test_generic.py; here: the exact part names of the eight.)
@pytest.mark.parametrize("setting", [TWO_STAGE, THREE_STAGE], ids=["two_stage", "three_stage"])
@pytest.mark.parametrize("method", EIGHT)
def test_the_eight_report_their_parts(setting, method):
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
def test_the_eight_read_quotas_from_a_user_setting(method):
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
    before = losses.METHODS
    try:
        _import_file(path, "ninth_method")
        assert losses.METHODS == before + ("ninth_test_method",)
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
    assert losses.METHODS == before


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
    before = losses.METHODS

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

    class ParserForNoOption(losses.CascadeLoss):
        OPTION_PARSERS = {"tua": float}

        def __init__(self, setting, *, tau: float = 1.0) -> None:
            super().__init__(setting)

    with pytest.raises(ConfigError, match=r"OPTION_PARSERS names \['tua'\].*its options: tau"):
        register("parser_test")(ParserForNoOption)

    class CheckForNoOption(losses.CascadeLoss):
        OPTION_CHECKS = {"tua": positive}

        def __init__(self, setting, *, tau: float = 1.0) -> None:
            super().__init__(setting)

    with pytest.raises(ConfigError, match=r"OPTION_CHECKS names \['tua'\]"):
        register("check_test")(CheckForNoOption)

    class NotACheck(losses.CascadeLoss):
        OPTION_CHECKS = {"tau": "> 0"}

        def __init__(self, setting, *, tau: float = 1.0) -> None:
            super().__init__(setting)

    with pytest.raises(ConfigError, match="a check is called"):
        register("check_test")(NotACheck)

    class BadDefault(losses.CascadeLoss):
        OPTION_CHECKS = {"tau": positive}

        def __init__(self, setting, *, tau: float = 0.0) -> None:
            super().__init__(setting)

    with pytest.raises(ConfigError, match="default of option 'tau' fails its own check.*must be positive"):
        register("check_test")(BadDefault)
    assert losses.METHODS == before


# ----------------------------------------------------------------- option checks
def test_positive_and_in_range_checks():
    assert positive("m", "tau", 0.5) == 0.5
    with pytest.raises(ConfigError, match=r"^m: option tau=0 must be positive \(and finite\)$"):
        positive("m", "tau", 0)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="must be positive"):
            positive("m", "tau", bad)
    check = in_range(0, 1)
    assert isinstance(check, Check) and check.text == "in [0, 1]"
    assert check("m", "mu", 1.0) == 1.0 and check("m", "mu", 0) == 0
    with pytest.raises(ConfigError, match=r"^m: option mu=1.5 must be in \[0, 1\]$"):
        check("m", "mu", 1.5)


def test_declared_checks_run_on_parsed_values_and_are_listed():
    class Checked(losses.CascadeLoss):
        """A method with declared checks."""

        OPTION_CHECKS = {"tau": positive, "mix": (in_range(0, 1),), "k": positive}

        def __init__(self, setting, *, tau: float = 1.0, mix: float = 0.5, k: int | None = None) -> None:
            super().__init__(setting)
            self.tau, self.mix, self.k = tau, mix, k

    register("checked_test")(Checked)
    try:
        assert parse_options("checked_test", {"tau": "2", "mix": "1", "k": "none"}) == {"tau": 2.0, "mix": 1.0,
                                                                                       "k": None}
        with pytest.raises(ConfigError, match=r"^checked_test: option tau=-1.0 must be positive \(and finite\)$"):
            build_loss("checked_test", stages=2, tau="-1")
        with pytest.raises(ConfigError, match=r"mix=1.5 must be in \[0, 1\]"):
            parse_options("checked_test", {"mix": 1.5})
        with pytest.raises(ConfigError, match="k=0 must be positive"):
            build_loss("checked_test", stages=3, k=0)
        assert method_options("checked_test")["mix"].help_text() == "mix=0.5: a number; in [0, 1]"
        text = describe_methods(width=200, only=["checked_test"])
        assert text.splitlines() == [
            "  checked_test - A method with declared checks.",
            "      tau=1.0: a number; > 0",
            "      mix=0.5: a number; in [0, 1]",
            "      k=none: an integer, or none (the method's default); > 0",
        ]
    finally:
        unregister("checked_test")


# ----------------------------------------------------------------- the listing of lcron train --help
def test_describe_methods_lists_every_registered_method_with_its_options():
    text = describe_methods(width=200)
    heads = [line for line in text.splitlines() if not line.startswith("      ")]
    assert [h.split(" - ")[0].strip() for h in heads] == list(losses.METHODS)
    for name in EIGHT:  # the first paragraph of the class's docstring, on one line
        assert f"  {name} - {' '.join(losses.get_method(name).__doc__.split())}" in heads
    for name in losses.METHODS:
        for spec in method_options(name).values():
            assert f"      {spec.help_text()}" in text.splitlines()
    assert "      k=10: an integer for every stage, a list first stage first (30,20), or 'quotas'" in text
    assert "      hard_labels=none: true/false, or none (the method's default)" in text
    assert "      reference_quirks=false: true/false" in text
    assert text.split("  fs_ranknet - ")[1].splitlines()[1] == "      no options"
    for line in describe_methods(width=60).splitlines():
        assert len(line) <= 60, line


def test_train_help_lists_the_registered_methods(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    assert cli.main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    assert describe_methods(width=198) in out
    assert f"training method: {', '.join(losses.METHODS)}" in out


@pytest.mark.parametrize("method, option, bad", [
    ("lcron", "tau", "0"), ("lcron", "label_tau", "-1"), ("icc", "cutoff_tau", "0"), ("arf", "k", "0"),
    ("arf_v2", "tau", "-2"), ("fs_lambdaloss", "mu", "1.5"), ("fs_lambdaloss", "topn", "0"),
])
def test_the_eight_methods_declare_their_checks(method, option, bad):
    """The spec methods' own checks are declared (OPTION_CHECKS): the registry refuses a bad
    value before any loss is built, and `lcron train --help` lists the check."""
    from lcron.losses.registry import method_options, parse_options

    with pytest.raises(ConfigError, match=rf"^{method}: option {option}=.* must be"):
        parse_options(method, {option: bad})
    assert method_options(method)[option].help_text().split("; ")[-1] in ("> 0", "in [0, 1]")


# ----------------------------------------------------------------- lcron methods
def _lcron(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_lcron_methods_lists_every_registered_method_with_its_options(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    code, out, err = _lcron(capsys, "methods")
    assert code == 0 and err == ""
    assert out == textwrap.fill(LISTING_HEADING, 198) + "\n" + describe_methods(width=198) + "\n"
    heads = [line.split(" - ")[0].strip() for line in out.splitlines()[1:] if not line.startswith("      ")]
    assert heads == list(losses.METHODS) and set(EIGHT) <= set(heads)
    assert "      tau=50.0: a number; > 0" in out.split("  lcron - ")[1].splitlines()
    assert "      mu=0.8: a number; in [0, 1]" in out.splitlines()


def test_lcron_methods_names_some_methods_and_refuses_unknown_ones(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    code, out, _ = _lcron(capsys, "methods", "lcron", "bce")
    assert code == 0 and out.splitlines()[1:] == describe_methods(width=198, only=["lcron", "bce"]).splitlines()
    code, out, err = _lcron(capsys, "methods", "bce", "lcorn")
    assert code == 2 and out == ""  # checked before anything is printed
    assert err.strip() == f"lcron methods: error: unknown method 'lcorn'; known methods: {', '.join(losses.METHODS)}"


def test_lcron_methods_json_round_trips_the_defaults(capsys):
    code, out, _ = _lcron(capsys, "methods", "--json")
    assert code == 0
    listed = json.loads(out)
    assert [m["name"] for m in listed] == list(losses.METHODS)
    for entry in listed:
        specs = method_options(entry["name"])
        assert [o["name"] for o in entry["options"]] == list(specs)
        assert entry["class"].endswith(losses.get_method(entry["name"]).__qualname__)
        for option in entry["options"]:
            # The default is written as on a command line: --loss-option NAME=DEFAULT gives it back.
            parsed = parse_options(entry["name"], {option["name"]: option["default"]})[option["name"]]
            assert parsed == specs[option["name"]].default, (entry["name"], option)
    lcron_tau = next(o for o in next(m for m in listed if m["name"] == "lcron")["options"] if o["name"] == "tau")
    assert lcron_tau == {"name": "tau", "default": "50.0", "takes": "a number", "checks": ["> 0"]}
