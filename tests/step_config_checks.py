"""The check that holds a KFP component's parameters to a step configuration's fields."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from lcron.step_config import field_type

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
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            assert spec.default == default, f"{component.name}.{name}: default {spec.default!r} vs {default!r}"
