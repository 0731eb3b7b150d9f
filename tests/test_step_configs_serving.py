"""The serving steps' configurations are the one source of their options: ``lcron serve-eval``
and ``lcron export`` are built from ServeEvalConfig / ExportConfig (and IndexOptions) fields,
the library keywords and the serving component's parameters carry the same names, types and
defaults, the pipeline's serving defaults are the fields', and a configuration is checked
when it is made."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
from pathlib import Path

import pytest

from lcron.errors import ConfigError
from lcron.serving.config import ExportConfig, ServeEvalConfig
from lcron.serving.evaluate import add_serve_eval_arguments, serving_evaluate
from lcron.serving.export import add_export_arguments, export_cascade, index_options_from_args
from lcron.serving.index import IndexOptions
from lcron.step_config import add_arguments, from_args, option_fields

from step_config_checks import assert_component_matches, component_configurations


def _parser(add) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add(parser)
    return parser


def test_the_serving_component_parameters_are_fields_of_the_same_type():
    pytest.importorskip("kfp")
    assert_component_matches(*component_configurations()["serving"])


def test_the_pipeline_serving_defaults_are_the_configuration_fields():
    """The pipeline's serving K1 and batch defaults are read from the fields, not spelled again
    (tests/pipeline/test_compile.py checks the compiled defaults' values)."""
    source = (Path(__file__).resolve().parents[1] / "pipelines" / "cascade_pipeline.py").read_text()
    assert "serving_k1: list = list(ServeEvalConfig.k1)" in source
    assert "serving_batch_size: int = ServeEvalConfig.batch_size" in source
    assert "[100, 500, 1000]" not in source


@pytest.mark.parametrize("config", [ServeEvalConfig, ExportConfig, IndexOptions], ids=lambda c: c.__name__)
def test_one_option_per_command_line_field_with_its_default(config):
    parser = argparse.ArgumentParser()
    add_arguments(parser, config)
    by_dest: dict[str, argparse.Action] = {}
    for action in parser._actions:  # the first of a dest: the option itself, not a hidden older spelling
        by_dest.setdefault(action.dest, action)
    for f, opt in option_fields(config):
        action = by_dest[f.name]
        assert action.option_strings[0] == (opt.flag or "--" + f.name.replace("_", "-"))
        assert action.default == f.default, f.name


def test_serve_eval_options_round_trip_into_the_configuration():
    parser = _parser(add_serve_eval_arguments)
    args = parser.parse_args(["--model", "m", "--day", "2024-01-16", "--k1", "500,50,50", "--index", "ivf",
                              "--recall-sample", "7", "--batch-size", "8", "--device", "cpu", "--tie-seed", "3",
                              "--max-requests", "9", "--no-compile", "--nprobe", "4", "--quantizer", "flat"])
    cfg = from_args(ServeEvalConfig, args, index_options=index_options_from_args(args))
    assert cfg == ServeEvalConfig(day="2024-01-16", k1=(50, 500), index="ivf", recall_sample=7, batch_size=8,
                                  device="cpu", tie_seed=3, max_requests=9, compile=False,
                                  index_options={"nlist": None, "nprobe": 4, "hnsw_m": 32, "ef_search": 128,
                                                 "quantizer": "flat"})
    assert parser.parse_args(["--model", "m", "--days", "2024-01-17"]).day == "2024-01-17"
    defaults = parser.parse_args(["--model", "m"])
    assert from_args(ServeEvalConfig, defaults) == ServeEvalConfig()
    assert IndexOptions.from_mapping(index_options_from_args(defaults)) == IndexOptions()


def test_export_options_round_trip_into_the_configuration():
    parser = _parser(add_export_arguments)
    args = parser.parse_args(["--model", "m", "--out", "o", "--seed", "2", "--index", "hnsw", "--hnsw-m", "8",
                              "--ef-search", "16"])
    cfg = from_args(ExportConfig, args, index_options=index_options_from_args(args))
    assert (cfg.seed, cfg.index, cfg.index_options["hnsw_m"], cfg.index_options["ef_search"]) == (2, "hnsw", 8, 16)
    assert from_args(ExportConfig, parser.parse_args(["--model", "m", "--out", "o"])) == ExportConfig()


@pytest.mark.parametrize("function,config", [(serving_evaluate, ServeEvalConfig), (export_cascade, ExportConfig)],
                         ids=["serving_evaluate", "export_cascade"])
def test_library_keywords_are_the_configuration_with_its_defaults(function, config):
    params = inspect.signature(function).parameters
    for f in dataclasses.fields(config):
        assert f.name in params and params[f.name].default == f.default, f.name
    assert config().as_kwargs().keys() == {f.name for f in dataclasses.fields(config)}


@pytest.mark.parametrize("make,message", [
    (lambda: ServeEvalConfig(batch_size=0), "batch size must be a positive integer, got 0"),
    (lambda: ServeEvalConfig(recall_sample=-1), r"recall sample must be an integer >= 0 \(requests\), got -1"),
    (lambda: ServeEvalConfig(k1="10,x"), "--k1 must be comma-separated positive integers"),
    (lambda: ServeEvalConfig(k1=(0,)), "--k1 must be comma-separated positive integers"),
    (lambda: ServeEvalConfig(index="annoy"), "unknown index kind 'annoy'"),
    (lambda: ExportConfig(index="auto"), "unknown index kind 'auto'"),
    (lambda: IndexOptions(nprobe=0), "index option 'nprobe' must be an integer >= 1, got 0"),
])
def test_a_configuration_is_checked_when_made(make, message):
    with pytest.raises(ConfigError, match=message):
        make()


def test_a_bad_choice_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ConfigError, match="recall sample"):
        serving_evaluate(tmp_path / "no-run", out=tmp_path / "eval", recall_sample=-1, progress=False)
    with pytest.raises(ConfigError, match="unknown index kind"):
        export_cascade(tmp_path / "no-run", tmp_path / "export", index="annoy")
    with pytest.raises(ConfigError, match="unknown index option"):
        export_cascade(tmp_path / "no-run", tmp_path / "export", index_options={"cells": 3})
    assert list(tmp_path.iterdir()) == []


def test_configurations_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        ServeEvalConfig().k1 = (5,)  # type: ignore[misc]
