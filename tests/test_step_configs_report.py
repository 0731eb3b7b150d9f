"""``lcron report`` and ``lcron compare`` take their choices from one configuration each
(ReportConfig, CompareConfig): the command line is built from its fields, the library's
keywords carry the same names and defaults, and a bad value is refused when it is made."""

from __future__ import annotations

import argparse
import dataclasses
import inspect

import pytest

from lcron.compare import CompareConfig, add_compare_arguments, compare
from lcron.errors import ConfigError
from lcron.report import ReportConfig, add_report_arguments, build_report
from lcron.step_config import from_args


def _parser(add) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add(parser)
    return parser


@pytest.mark.parametrize("cls,function", [(ReportConfig, build_report), (CompareConfig, compare)])
def test_library_keywords_are_the_configuration_with_its_defaults(cls, function):
    params = inspect.signature(function).parameters
    for f in dataclasses.fields(cls):
        assert f.name in params and params[f.name].default == f.default, f.name


def test_report_command_line_round_trip():
    parser = _parser(add_report_arguments)
    args = parser.parse_args(["run", "--eval", "ev", "--serving", "sv", "--out", "o", "--overwrite"])
    assert from_args(ReportConfig, args) == ReportConfig(eval_dir="ev", serving_dir="sv")
    assert (args.run_dirs, args.out, args.overwrite) == (["run"], "o", True)
    assert from_args(ReportConfig, parser.parse_args(["a", "b"])) == ReportConfig()


def test_compare_command_line_round_trip():
    parser = _parser(add_compare_arguments)
    args = parser.parse_args(["r1", "r2", "--out", "o", "--setting", "two_stage", "--bootstrap", "50",
                              "--seed", "3"])
    assert from_args(CompareConfig, args) == CompareConfig(setting="two_stage", bootstrap=50, seed=3)
    assert (args.paths, args.out, args.overwrite) == (["r1", "r2"], "o", False)
    assert from_args(CompareConfig, parser.parse_args(["r", "--out", "o"])) == CompareConfig()
    with pytest.raises(SystemExit):  # --out stays required
        parser.parse_args(["r"])


def test_help_keeps_its_spellings_and_sentences():
    text = _parser(add_compare_arguments).format_help()
    for piece in ("--setting NAME", "only this setting (e.g. two_stage)", "--bootstrap BOOTSTRAP",
                  "bootstrap resamples (default 1000)", "--seed SEED", "seed of the bootstrap (default 0)"):
        assert piece in text, piece
    text = " ".join(_parser(add_report_arguments).format_help().split())
    for piece in ("--eval DIR", "evaluation folder (default: RUN_DIR/eval; only with one run)", "--serving DIR",
                  "folder holding serving.json (default: the evaluation folder; only with one run)"):
        assert piece in text, piece


@pytest.mark.parametrize("bad", [0, -1, True, 2.5])
def test_a_bad_bootstrap_is_refused_when_the_configuration_is_made(bad):
    with pytest.raises(ConfigError, match=f"bootstrap must be an integer >= 1, got {bad!r}"):
        CompareConfig(bootstrap=bad)


def test_compare_refuses_a_bad_bootstrap_before_writing(tmp_path):
    with pytest.raises(ConfigError, match="bootstrap must be an integer >= 1, got 0"):
        compare([tmp_path], tmp_path / "out", bootstrap=0, progress=False)
    assert not (tmp_path / "out").exists()


def test_configurations_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        CompareConfig().seed = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        ReportConfig().eval_dir = "x"  # type: ignore[misc]
