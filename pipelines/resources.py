"""CPU and memory requests and limits of each pipeline step, chosen at compile time.

A Kubernetes scheduler places a pod by its requests and kills it past its memory limit;
without them every step lands on the default node size, and preprocessing a real
RecFlow day (~36 GB peak, docs/scale.md) would be OOM-killed there. The numbers depend
on the data, hence profiles: ``recflow`` (a real day: a 48-64 GB node for preprocess,
docs/scale.md) and ``small`` (synthetic or sampled data, fits any node), plus ``none``
(no requests: the cluster's defaults). Single values are overridden with ``STEP=VALUE``
options of ``pipelines.compile`` (``--memory preprocess=60G``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Mapping

STEPS = ("fingerprint", "ingest", "preprocess", "train", "evaluate", "serving", "report")
FIELDS = ("cpu", "memory", "cpu_limit", "memory_limit")
_CPU_RE = re.compile(r"^(\d+(\.\d+)?|\d+m)$")
_MEMORY_RE = re.compile(r"^\d+(\.\d+)?(E|Ei|P|Pi|T|Ti|G|Gi|M|Mi|K|Ki)?$")


@dataclass(frozen=True)
class StepResources:
    """Requests (``cpu``, ``memory``) and limits of one step, in Kubernetes quantities
    (``"8"``, ``"500m"``, ``"48G"``); ``None`` leaves the value to the cluster."""

    cpu: str | None = None
    memory: str | None = None
    cpu_limit: str | None = None
    memory_limit: str | None = None


def _step(cpu: str, memory: str, cpu_limit: str | None = None) -> StepResources:
    # Memory limit = request: a step that outgrows its request fails at a known size rather
    # than being killed later by node pressure. CPU may burst to cpu_limit.
    return StepResources(cpu=cpu, memory=memory, cpu_limit=cpu_limit or cpu, memory_limit=memory)


PROFILES: dict[str, dict[str, StepResources]] = {
    # docs/scale.md: ~36 GB peak preprocessing a 300k-request day (plan 48-64 GB); training
    # and evaluation hold a day's shards and the models (A2 vocabulary: a few GB).
    "recflow": {"fingerprint": _step("1", "2G"), "ingest": _step("2", "8G"), "preprocess": _step("8", "48G", "16"),
                "train": _step("8", "32G"), "evaluate": _step("8", "32G"), "serving": _step("8", "32G"),
                "report": _step("1", "4G")},
    # The synthetic defaults (2,000 requests a day): well under 1 GB per step.
    "small": {step: _step("1", "2G", "2") for step in STEPS},
    "none": {},
}
DEFAULT_PROFILE = "recflow"


def validate(step: str, field: str, value: str) -> str:
    """``value`` if it is a Kubernetes quantity for ``field``; ValueError naming the step otherwise."""
    if step not in STEPS:
        raise ValueError(f"unknown step {step!r}; steps: {', '.join(STEPS)}")
    pattern = _CPU_RE if field.startswith("cpu") else _MEMORY_RE
    if not pattern.match(value):
        example = "8 or 500m" if field.startswith("cpu") else "48G or 512Mi"
        raise ValueError(f"{field} of {step}: {value!r} is not a Kubernetes quantity (e.g. {example})")
    return value


def resolve(profile: str = DEFAULT_PROFILE,
            overrides: Mapping[str, Mapping[str, str]] | None = None) -> dict[str, StepResources]:
    """The profile's resources with ``overrides`` (field -> step -> value) applied on top."""
    if profile not in PROFILES:
        raise ValueError(f"unknown resource profile {profile!r}; profiles: {', '.join(PROFILES)}")
    out = dict(PROFILES[profile])
    for field, per_step in (overrides or {}).items():
        if field not in FIELDS:
            raise ValueError(f"unknown resource field {field!r}; fields: {', '.join(FIELDS)}")
        for step, value in per_step.items():
            out[step] = replace(out.get(step, StepResources()), **{field: validate(step, field, value)})
    return out


def apply(task: object, res: StepResources) -> None:
    """Set the step's requests and limits on a KFP pipeline task."""
    setters = {"cpu": "set_cpu_request", "memory": "set_memory_request", "cpu_limit": "set_cpu_limit",
               "memory_limit": "set_memory_limit"}
    for field, setter in setters.items():
        value = getattr(res, field)
        if value is not None:
            getattr(task, setter)(value)


# Disk per step (a generic ephemeral volume at the launcher's artifact root, pipelines/kubernetes.py):
# the step's input artifacts are downloaded there and its outputs written there before upload.
# RecFlow (docs/scale.md): the source is ~100 GB, ~2.7 GB a day. Ingest references it (a
# manifest; with ingest_copy=true it would stage the whole source: override ingest=120Gi);
# preprocess reads it where it is - from an object store it downloads a day at a time, at most
# two days (~6 GB) in flight - and writes a shard set of ~17 GB (two-stage) / ~19 GB
# (three-stage) for the whole period; a model folder is ~0.75 GB per seed (~2.8 GB at most
# while training; per-day snapshots add ~0.75 GB per day with streaming). The report reads no
# model: its inputs are the run record (JSON and train logs), the evaluation and serving.json,
# tens of MB at RecFlow scale.
EPHEMERAL_STORAGE: dict[str, dict[str, str]] = {
    "recflow": {"fingerprint": "1Gi", "ingest": "2Gi", "preprocess": "40Gi", "train": "64Gi",
                "evaluate": "64Gi", "serving": "48Gi", "report": "4Gi"},
    "small": {step: "4Gi" for step in STEPS},
    "none": {},
}


def resolve_ephemeral(profile: str = DEFAULT_PROFILE, overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """The profile's disk per step with ``overrides`` (step -> size) applied on top."""
    if profile not in EPHEMERAL_STORAGE:
        raise ValueError(f"unknown resource profile {profile!r}; profiles: {', '.join(EPHEMERAL_STORAGE)}")
    out = dict(EPHEMERAL_STORAGE[profile])
    for step, value in (overrides or {}).items():
        out[step] = validate(step, "ephemeral_storage", value)
    return out
