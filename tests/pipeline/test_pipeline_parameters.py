"""The pipeline's parameters, field by field: each one that reaches a step's option has that
option's type, and its default (the parameter type's empty value where the option's default
is None) unless a different pipeline default is declared here with its reason. The wiring (which pipeline parameter feeds which step parameter, renames included:
``eval_batch_size`` -> evaluate's ``batch_size``) is read from the compiled package, so a
parameter wired somewhere new is checked without touching this test."""

from __future__ import annotations

import dataclasses

import pytest

from lcron.step_config import field_default, field_type

from step_config_checks import KFP_TYPES, component_configurations
from .compiled import container_tasks, documents, parameter_source

kfp = pytest.importorskip("kfp")

#: (pipeline parameter, step) -> why the pipeline's default is not the step option's default.
PIPELINE_DEFAULTS = {
    ("seeds", "train"): "five seeds in the pipeline (mean and std, METHODS.md section 3); one on the command line",
    ("compile", "train"): "a package setting (build_pipeline(compile_default=...)): the CPU package compiles, the "
                          "GPU package does not; lcron train's default is per device",
    ("compile", "evaluate"): "the package's compile setting, shared by train, evaluate and serving",
    ("compile", "serving"): "the package's compile setting, shared by train, evaluate and serving",
    ("reference_quirks", "evaluate"): "the pipeline's one switch of reference mode, given to preprocess, train and "
                                      "evaluate alike (evaluate's own default, None, follows the run)",
}
#: How a KFP parameter says "unset" for an option whose default is None (KFP parameters carry
#: no None): the components turn these into None.
UNSET = {"String": "", "Integer": 0, "Dict": {}, "List": []}
#: Pipeline parameters that feed no step option (only the steps' own parameters) -> why.
NOT_AN_OPTION = {
    "serving_eval": "switches the serving step (its 'enabled' parameter, not a choice of the evaluation)",
    "max_steps_per_day": "train()'s smoke-test cap, a parameter of the train component (0 = none)",
    "stages": "the built-in setting the preprocess step lays out",
    "setting": "overrides of the setting's fields for preprocess",
    "shared_shards": "where kfp.local shares shard sets (preprocess's shared_root)",
}


@pytest.fixture(scope="module")
def wiring(tmp_path_factory):
    """{pipeline parameter: [(step, step parameter), ...]} of the CPU cluster package, and the
    pipeline's parameter specs."""
    from pipelines import compile as pcompile
    from pipelines.cascade_pipeline import build_pipeline

    path = pcompile.compile_variant("cpu", tmp_path_factory.mktemp("pkg") / "cpu.yaml", registry="reg.example:5000",
                                    image="lcron", tag="abc123")
    spec, _ = documents(path)
    fed: dict[str, list[tuple[str, str]]] = {}
    for task in container_tasks(spec).values():
        for name, entry in task.spec["inputs"].get("parameters", {}).items():
            if "componentInputParameter" in entry:
                source = parameter_source(spec, task.dag, entry["componentInputParameter"])
                fed.setdefault(source, []).append((task.step, name))
    return fed, build_pipeline().component_spec.inputs


def _field_default(config: type, name: str):
    f = next(f for f in dataclasses.fields(config) if f.name == name)
    return field_default(f)


def test_every_pipeline_parameter_reaches_a_step(wiring):
    fed, inputs = wiring
    assert set(inputs) == set(fed), f"parameters feeding no step: {sorted(set(inputs) - set(fed))}"


def test_each_parameter_has_the_type_and_default_of_the_option_it_feeds(wiring):
    fed, inputs = wiring
    configs = component_configurations()
    checked = set()
    for parameter, targets in fed.items():
        spec = inputs[parameter]
        for step, name in targets:
            if step not in configs:  # the report's inputs are artifacts; none is a parameter of the pipeline
                raise AssertionError(f"{parameter} feeds {step}.{name}, a step without a configuration")
            component, config, not_config = configs[step]
            assert component.component_spec.inputs[name].type == spec.type, f"{parameter} -> {step}.{name}"
            if name in not_config:
                assert parameter in NOT_AN_OPTION, f"{parameter} -> {step}.{name} ({not_config[name]}): declare it"
                continue
            kind, _ = field_type(config, name)
            assert KFP_TYPES[spec.type] is kind, f"{parameter} ({spec.type}) -> {config.__name__}.{name} ({kind})"
            default = _field_default(config, name)
            if (parameter, step) in PIPELINE_DEFAULTS:
                assert spec.default != default, f"{parameter}: now the same as {step}'s; drop the declaration"
            elif default is None:
                assert spec.type in UNSET and spec.default == UNSET[spec.type], (
                    f"pipeline {parameter}={spec.default!r} for {config.__name__}.{name}, whose default is None")
            else:
                want = list(default) if isinstance(default, tuple) else default
                assert spec.default == want, (f"pipeline {parameter}={spec.default!r} but {config.__name__}.{name} "
                                              f"defaults to {default!r}")
            checked.add(parameter)
    assert set(inputs) - checked == set(NOT_AN_OPTION), "NOT_AN_OPTION lists a parameter that feeds an option"
