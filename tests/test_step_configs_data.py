"""The data steps' configurations (lcron.data.step_configs) are the one source of their options:
the command line of generate, validate, preprocess, fingerprint and ingest is built from their
fields, the KFP components' parameters carry the same names, types and defaults, and a bad
value is refused, with the library's sentence, when a configuration is made."""

from __future__ import annotations

import argparse
import dataclasses
import inspect

import pytest

from lcron import cli
from lcron.data.step_configs import GenerateConfig, IngestConfig, PreprocessConfig, SourceConfig, ValidateConfig
from lcron.defaults import PREPROCESS, SYNTHETIC
from lcron.errors import ConfigError
from lcron.step_config import from_args, option_fields

from step_config_checks import assert_component_matches, component_configurations


def _parse(*argv: str) -> argparse.Namespace:
    return cli.build_parser(only=argv[0]).parse_args(list(argv))


@pytest.mark.parametrize("step", ["preprocess", "ingest", "fingerprint"])
def test_every_component_parameter_is_a_field_of_the_same_type_and_default(step):
    pytest.importorskip("kfp")
    assert_component_matches(*component_configurations()[step])


def test_the_defaults_are_read_from_lcron_defaults():
    assert (PreprocessConfig().tz_offset_hours, PreprocessConfig().max_missing_fraction,
            PreprocessConfig().max_no_gt_fraction, PreprocessConfig().prefetch_budget_mb) == (
        PREPROCESS.tz_offset_hours, PREPROCESS.max_missing_fraction, PREPROCESS.max_no_gt_fraction,
        PREPROCESS.prefetch_budget_mb)
    assert {k: getattr(GenerateConfig(), k) for k in dataclasses.asdict(SYNTHETIC)} == dataclasses.asdict(SYNTHETIC)
    assert SourceConfig().synthetic() == dataclasses.asdict(SYNTHETIC)


def test_preprocess_options_round_trip_into_the_configuration():
    args = _parse("preprocess", "--source", "s", "--out", "o", "--stages", "2", "--days", "2024-01-13:2024-01-14",
                  "--max-missing-fraction", "0.2", "--max-no-gt-fraction", "0.3", "--tz-offset-hours", "-5",
                  "--reference-quirks", "--prefetch-budget-mb", "0")
    assert from_args(PreprocessConfig, args) == PreprocessConfig(
        days="2024-01-13:2024-01-14", max_missing_fraction=0.2, max_no_gt_fraction=0.3, tz_offset_hours=-5,
        reference_quirks=True, prefetch_budget_mb=0)
    assert from_args(PreprocessConfig, _parse("preprocess", "--source", "s", "--out", "o", "--setting", "x")) == \
        PreprocessConfig()


def test_the_library_keywords_carry_the_configuration_names_and_defaults():
    from lcron.data.shards import preprocess
    from lcron.data.synthetic import generate
    from lcron.data.validate import validate

    for function, config, skip in ((preprocess, PreprocessConfig, ()), (validate, ValidateConfig, ()),
                                   (generate, GenerateConfig, ("workers",))):
        params = inspect.signature(function).parameters
        for f in dataclasses.fields(config):
            assert f.name in params, (function.__name__, f.name)
            if f.name not in skip:  # generate(workers=1) in the library, one per CPU (None) from the CLI
                assert params[f.name].default == f.default, (function.__name__, f.name)


def test_validate_takes_the_reading_options_only():
    args = _parse("validate", "--source", "s", "--tz-offset-hours", "3", "--days", "2024-01-13")
    assert from_args(ValidateConfig, args) == ValidateConfig(days="2024-01-13", tz_offset_hours=3)
    with pytest.raises(SystemExit):
        _parse("validate", "--source", "s", "--prefetch-budget-mb", "3")


def test_generate_options_round_trip_into_the_configuration():
    args = _parse("generate", "--out", "o", "--num-days", "2", "--start-date", "2024-02-01", "--requests-per-day",
                  "50", "--users", "7", "--items", "400", "--seed", "3", "--authors", "9", "--workers", "2")
    assert from_args(GenerateConfig, args) == GenerateConfig(num_days=2, start_date="2024-02-01",
                                                             requests_per_day=50, users=7, items=400, seed=3,
                                                             authors=9, workers=2)
    assert from_args(GenerateConfig, _parse("generate", "--out", "o")) == GenerateConfig()


def test_ingest_options_round_trip_into_the_configuration():
    args = _parse("ingest", "--out", "o", "--synthetic-days", "2", "--synthetic-requests", "30", "--copy")
    cfg = from_args(IngestConfig, args)
    assert cfg == IngestConfig(synthetic_days=2, synthetic_requests_per_day=30, copy=True)
    assert cfg.synthetic()["requests_per_day"] == 30
    assert from_args(SourceConfig, _parse("fingerprint", "--source", "gs://b/p")) == SourceConfig(source="gs://b/p")


@pytest.mark.parametrize("config", [GenerateConfig, PreprocessConfig, ValidateConfig, IngestConfig],
                         ids=lambda c: c.__name__)
def test_every_field_has_its_option_and_help(config):
    names = [f.name for f in dataclasses.fields(config)]
    assert [f.name for f, _ in option_fields(config)] == names
    assert all(opt.help for _, opt in option_fields(config))


@pytest.mark.parametrize("make,message", [
    (lambda: PreprocessConfig(max_missing_fraction=2), r"max_missing_fraction must be in \[0, 1\], got 2"),
    (lambda: PreprocessConfig(max_no_gt_fraction=-0.5), r"max_no_gt_fraction must be in \[0, 1\], got -0.5"),
    (lambda: PreprocessConfig(tz_offset_hours=15), r"tz_offset_hours must be an integer in \[-12, 14\], got 15"),
    (lambda: PreprocessConfig(prefetch_budget_mb=-1), "prefetch_budget_mb must be an integer >= 0, got -1"),
    (lambda: ValidateConfig(tz_offset_hours=1.5), r"tz_offset_hours must be an integer in \[-12, 14\], got 1.5"),
])
def test_a_configuration_is_checked_when_made(make, message):
    with pytest.raises(ConfigError, match=message):
        make()


def test_a_bad_value_on_the_command_line_is_refused_before_any_output(tmp_path, capsys):
    out = tmp_path / "shards"
    code = cli.main(["preprocess", "--source", str(tmp_path / "none"), "--out", str(out), "--stages", "2",
                     "--tz-offset-hours", "15"])
    assert code == 2 and "tz_offset_hours must be an integer in [-12, 14], got 15" in capsys.readouterr().err
    assert not out.exists()


def test_configurations_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        PreprocessConfig().days = "x"  # type: ignore[misc]
