"""The check that holds a KFP component's parameters to a step configuration's fields, and the
table of which configuration each component step carries (shared by the component tests and
the pipeline-parameter test)."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, NamedTuple

from lcron.step_config import field_default, field_type

#: KFP's parameter types and the field types they carry (a list travels as a tuple field).
KFP_TYPES = {"String": str, "Integer": int, "Float": float, "Boolean": bool, "Dict": dict, "List": tuple}


def assert_component_matches(component: Any, config: type, not_config: Mapping[str, str]) -> None:
    """Every parameter of ``component`` (artifacts and the declared ``not_config`` ones, each
    with its reason, aside) is a field of ``config`` with the same type, and a parameter with a
    default has the field's default."""
    fields = {f.name: f for f in dataclasses.fields(config)}
    for name, spec in component.component_spec.inputs.items():
        if spec.type.startswith("system.") or name in not_config:
            continue
        assert name in fields, f"{component.name}: parameter {name} is no field of {config.__name__}"
        kind, _ = field_type(config, name)
        assert KFP_TYPES[spec.type] is kind, f"{component.name}.{name}: {spec.type} vs {kind}"
        if spec.optional:
            f = fields[name]
            default = field_default(f)
            assert spec.default == default, f"{component.name}.{name}: default {spec.default!r} vs {default!r}"


class StepConfiguration(NamedTuple):
    component: Any
    config: type
    not_config: Mapping[str, str]  # component parameters that are no field of ``config`` -> why


def component_configurations() -> dict[str, StepConfiguration]:
    """Each pipeline step that runs a step of the library, by step (task) name: its component,
    the step's configuration and the component's parameters that are not configuration."""
    from components.evaluate import evaluate
    from components.ingest import fingerprint, ingest
    from components.preprocess import preprocess
    from components.serving import serving
    from components.train import train
    from lcron.data.step_configs import IngestConfig, PreprocessConfig, SourceConfig
    from lcron.evaluate import EvaluateConfig
    from lcron.serving.config import ServeEvalConfig
    from lcron.train import TrainConfig

    return {
        "fingerprint": StepConfiguration(fingerprint, SourceConfig, {}),
        "ingest": StepConfiguration(ingest, IngestConfig, {
            "fingerprint": "the fingerprint step's output: --expect-fingerprint"}),
        "preprocess": StepConfiguration(preprocess, PreprocessConfig, {
            "stages": "which built-in setting: the --stages choice, not a knob",
            "setting": "overrides of the setting's fields (quotas), not a knob",
            "shared_root": "where kfp.local shares shard sets, a deployment choice"}),
        "train": StepConfiguration(train, TrainConfig, {
            "max_steps_per_day": "a cap for smoke tests, a train() argument (0 = none)"}),
        "evaluate": StepConfiguration(evaluate, EvaluateConfig, {}),
        "serving": StepConfiguration(serving, ServeEvalConfig, {
            "enabled": "the pipeline's serving_eval switch (the kfp.local package runs the step always); not a "
                       "choice of the evaluation"}),
    }
