"""CPU and memory requests and limits of each pipeline step, chosen at compile time.

A Kubernetes scheduler places a pod by its requests and kills it past its memory limit;
without them every step lands on the default node size. The numbers depend on the data,
hence profiles: ``recflow`` (RecFlow-size days and vocabularies, sized from the peaks
measured on 250,000-request days at RecFlow vocabularies, docs/scale.md "RecFlow size end
to end", with the documented bound for a 300,000-request day where it is larger) and
``small`` (synthetic or sampled data, fits any node), plus ``none`` (no requests: the
cluster's defaults). Single values are overridden with ``STEP=VALUE`` options of
``pipelines.compile`` (``--memory preprocess=16G``).

The GPU package's accelerated steps (train, evaluate, serving) get :data:`GPU_NODE_FIT`
instead: requests that fit the common one-GPU node shapes - GKE n1-standard-8 + T4 (8
vCPU, 30 GB; ~7.9 CPU and ~26.5 GiB allocatable after the kubelet's reservations) and
g2-standard-8 + L4 (8 vCPU, 32 GB; ~28 GiB), AWS g4dn.2xlarge / g5.2xlarge (8 vCPU,
32 GiB) - with room left for the node's daemon sets (GPU device plugin, logging).
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
    # Measured peaks (docs/scale.md "RecFlow size end to end": 4 x 250,000-request days at
    # RecFlow vocabularies, two-stage, the local pipeline; resident memory, which counts the
    # shard pages a step has memory-mapped): fingerprint 40 MiB, ingest 65 MiB, preprocess
    # 4.1 GiB (its bound: 9.3 GiB for a 300,000-request day), train 3.5 GiB compiled / 5.0
    # GiB eager, evaluate 3.8 / 6.1 GiB (7.7 GiB the largest step of one eager run), report
    # < 0.1 GiB; serving 6.7 GiB with a 6.8M-item catalogue (docs/serving.md), ~9 GiB at 9M
    # items. Three-stage adds a third model's tables (~+50% for train and evaluate).
    # Requests: the larger of the bound and ~1.5-2x the two-stage peak, rounded up.
    "recflow": {"fingerprint": _step("1", "2G"), "ingest": _step("2", "4G"), "preprocess": _step("4", "12G", "8"),
                "train": _step("8", "12G"), "evaluate": _step("8", "16G"), "serving": _step("8", "20G"),
                "report": _step("1", "4G")},
    # The synthetic defaults (2,000 requests a day): well under 1 GB per step.
    "small": {step: _step("1", "2G", "2") for step in STEPS},
    "none": {},
}
DEFAULT_PROFILE = "recflow"

#: The accelerated steps of the GPU package, and what they ask for per profile there: a
#: request that fits one-GPU nodes of 8 vCPU and 30-32 GB (module docstring). The host side
#: of a GPU step holds the day's shards (memory-mapped) and a copy of the models: the CPU
#: package's 12-20G with room to spare.
GPU_STEPS = ("train", "evaluate", "serving")
GPU_NODE_FIT: dict[str, dict[str, StepResources]] = {
    "recflow": {step: _step("6", "24G", "7") for step in GPU_STEPS},
}


def validate(step: str, field: str, value: str) -> str:
    """``value`` if it is a Kubernetes quantity for ``field``; ValueError naming the step otherwise."""
    if step not in STEPS:
        raise ValueError(f"unknown step {step!r}; steps: {', '.join(STEPS)}")
    pattern = _CPU_RE if field.startswith("cpu") else _MEMORY_RE
    if not pattern.match(value):
        example = "8 or 500m" if field.startswith("cpu") else "48G or 512Mi"
        raise ValueError(f"{field} of {step}: {value!r} is not a Kubernetes quantity (e.g. {example})")
    return value


def resolve(profile: str = DEFAULT_PROFILE, overrides: Mapping[str, Mapping[str, str]] | None = None, *,
            gpu: bool = False) -> dict[str, StepResources]:
    """The profile's resources with ``overrides`` (field -> step -> value) applied on top;
    ``gpu``: for the GPU package (its accelerated steps sized to fit a GPU node)."""
    if profile not in PROFILES:
        raise ValueError(f"unknown resource profile {profile!r}; profiles: {', '.join(PROFILES)}")
    out = dict(PROFILES[profile])
    if gpu:
        out.update(GPU_NODE_FIT.get(profile, {}))
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
