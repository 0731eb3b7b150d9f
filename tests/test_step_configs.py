"""Each step's configuration is the one source of its options: the command line is built from
its fields, the library's keywords and the KFP component's parameters carry the same names,
types and defaults, and a configuration is checked when it is made."""

from __future__ import annotations

import argparse
import dataclasses
import inspect

import pytest

from lcron.errors import ConfigError
from lcron.evaluate import EvaluateConfig, add_evaluate_arguments
from lcron.evaluate import evaluate as evaluate_function
from lcron.step_config import add_arguments, field_default, from_args, option, option_fields
from lcron.train import TrainConfig, add_train_arguments

from step_config_checks import assert_component_matches, component_configurations

kfp = pytest.importorskip("kfp")

@pytest.mark.parametrize("step", ["train", "evaluate"])
def test_every_component_parameter_is_a_field_of_the_same_type_and_default(step):
    assert_component_matches(*component_configurations()[step])


@pytest.mark.parametrize("config", [TrainConfig, EvaluateConfig], ids=lambda c: c.__name__)
def test_the_command_line_has_one_option_per_field_with_its_default(config):
    parser = argparse.ArgumentParser()
    add_arguments(parser, config)
    by_dest = {a.dest: a for a in parser._actions}
    for f, opt in option_fields(config):
        if not opt.cli:
            assert f.name not in by_dest
            continue
        action = by_dest[f.name]
        assert action.option_strings[0] == "--" + f.name.replace("_", "-") or action.option_strings[0] == opt.flag
        if not (opt.required or opt.append):
            default = field_default(f)
            assert action.default == default, f.name


def test_train_options_round_trip_into_the_configuration():
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    args = parser.parse_args(["--shards", "s", "--out", "o", "--method", "bce", "--seeds", "3,4", "--lr", "0.5",
                              "--loss-option", "k=30,20", "--no-compile", "--day-snapshots", "--resume-every", "2"])
    cfg = from_args(TrainConfig, args)
    assert (cfg.method, cfg.seeds, cfg.lr, cfg.loss_options, cfg.compile, cfg.day_snapshots, cfg.resume_every) == \
        ("bce", (3, 4), 0.5, {"k": "30,20"}, False, True, 2)
    defaults = from_args(TrainConfig, parser.parse_args(["--shards", "s", "--out", "o", "--method", "bce"]))
    assert defaults == TrainConfig(method="bce")


def test_evaluate_keywords_are_the_configuration_with_its_defaults():
    params = inspect.signature(evaluate_function).parameters
    for f in dataclasses.fields(EvaluateConfig):
        assert f.name in params and params[f.name].default == f.default, f.name
    parser = argparse.ArgumentParser()
    add_evaluate_arguments(parser)
    args = parser.parse_args(["--model", "m", "--days", "2024-01-15", "--tie-seed", "4", "--reference-quirks"])
    assert from_args(EvaluateConfig, args) == EvaluateConfig(days="2024-01-15", tie_seed=4, reference_quirks=True)


@pytest.mark.parametrize("make,message", [
    (lambda: TrainConfig(method="bce", batch_size=0), "batch size must be an integer >= 1, got 0"),
    (lambda: TrainConfig(method="bce", lr=float("nan")), "learning rate must be a positive number, got nan"),
    (lambda: TrainConfig(method="bce", seeds=(1, 1)), r"seeds repeat: \[1, 1\]"),
    (lambda: TrainConfig(method="bce", log_every=0), "log_every must be an integer >= 1, got 0"),
    (lambda: TrainConfig(method="bce", embedding_optimizer="adagrad"), "unknown embedding optimizer 'adagrad'"),
    (lambda: EvaluateConfig(batch_size=0), "batch size must be an integer >= 1, got 0"),
])
def test_a_configuration_is_checked_when_made(make, message):
    with pytest.raises(ConfigError, match=message):
        make()


def test_configurations_are_frozen():
    cfg = TrainConfig(method="bce")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.lr = 1.0  # type: ignore[misc]


def test_options_made_from_fields_on_a_configuration_of_its_own():
    """The mechanism on a configuration of its own: types, aliases, conversion, library-only fields."""
    @dataclasses.dataclass(frozen=True)
    class Knobs:
        count: int = option(3, "how many", aliases=("--n",))
        ratio: float | None = option(None, "a share")
        names: tuple[str, ...] = option(("a",), "comma list",
                                        convert=lambda v: tuple(v.split(",")) if isinstance(v, str) else tuple(v))
        loud: bool = option(False, "shout")
        hidden: int = option(7, "", cli=False)

    parser = argparse.ArgumentParser()
    add_arguments(parser, Knobs)
    assert from_args(Knobs, parser.parse_args([])) == Knobs()
    got = from_args(Knobs, parser.parse_args(["--n", "5", "--ratio", "0.5", "--names", "x,y", "--loud"]))
    assert got == Knobs(count=5, ratio=0.5, names=("x", "y"), loud=True)
    assert "--hidden" not in parser.format_help() and "--n COUNT" not in parser.format_help()
    assert "how many (default 3)" in parser.format_help()
    with pytest.raises(SystemExit):
        parser.parse_args(["--count", "many"])
