"""Submit a sweep of the compiled pipeline - one run per configuration - to KFP or to Vertex AI Pipelines.

    python -m pipelines.submit --host https://KFP_HOST --experiment lcron \\
        --package build/cascade-cpu.yaml --methods lcron,arf --stages 2,3 [--seeds 1,2,3] [KEY=VALUE ...]

On KFP the package is uploaded once as a **pipeline version** of the pipeline ``lcron-cascade``,
named ``<git sha>[-dirty]-<variant>-<package digest>`` (reused when it exists), and every run
is created from that version. Runs are named
``<method>-<stages>stage-<seeds>-<git sha>[-dirty]-<UTC time of the submission>``, e.g.
``lcron-2stage-seed1-5-4ec343c-20250114T093000Z``: unique across resubmissions, and each says
which code and which sweep it belongs to.

The shared steps run once. KFP (and Vertex) look a task up in the cache when the task starts,
and only a finished, successful execution is a cache entry; so 16 runs submitted at once would
all start their own ingest and preprocess. The runs are therefore submitted in waves:

1. one run of the first setting (e.g. two-stage); wait until its ``ingest`` has succeeded;
2. one run of every other setting (three-stage): ingest is a cache hit, the settings'
   preprocess steps run side by side; wait until each first run's ``preprocess`` is done;
3. all other runs: fingerprint is recomputed, ingest and preprocess are cache hits.

A failed first run stops the sweep (naming the run and the failed step) before the rest is
submitted; ``--timeout`` bounds each wait, ``--poll-seconds`` sets how often the runs are
read, and ``--no-wait-shared`` submits everything at once.

    python -m pipelines.submit --vertex --project P --region europe-west4 \\
        --pipeline-root gs://BUCKET/pipeline-root --package build/cascade-gpu.yaml ...

submits the same waves as Vertex AI PipelineJobs (needs google-cloud-aiplatform:
``pip install '.[vertex]'`` in the project folder). The package is checked against its
target first: Vertex wants accelerator names such as ``NVIDIA_L4`` and a single-document
package (no Kubernetes platform spec); KFP on Kubernetes wants an extended resource such as
``nvidia.com/gpu``. ``--dry-run`` checks the package and prints the plan (version, waves,
run names and parameters) without submitting.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence

from lcron.errors import ConfigError, LcronError

ALL_STAGES = (2, 3)
VERTEX_HINT = "pip install '.[vertex]' (in the lcron-pipelines source folder)"
REPO = Path(__file__).resolve().parents[1]
#: What a compiled package is made of (its components and DAG) and what its images hold:
#: a change in any of them, not yet committed, marks the revision ``-dirty``.
REVISION_INPUTS = ("components", "pipelines", "lcron", "pyproject.toml", "docker")
#: The cached chain every run of a sweep shares, in DAG order (``fingerprint`` is never cached).
SHARED_CHAIN = ("fingerprint", "ingest", "preprocess")
DEFAULT_POLL_SECONDS = 30.0
DEFAULT_TIMEOUT = 7200.0  # preprocessing a full RecFlow setting takes ~15-20 min (docs/scale.md)
PROGRESS_EVERY = 300.0  # seconds between progress lines while nothing changes
#: Task and run states, normalised from KFP's V2beta1RuntimeState and Vertex's enums.
DONE_STATES = frozenset({"SUCCEEDED", "SKIPPED"})  # SKIPPED: served from the cache
FAILED_STATES = frozenset({"FAILED", "CANCELED", "CANCELING"})
#: A Kubernetes extended resource name (``domain/name``), as KFP on Kubernetes requests GPUs.
K8S_RESOURCE = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
#: The shape of a Vertex AI accelerator name, used when google-cloud-aiplatform (which lists
#: the exact names) is not installed.
VERTEX_ACCELERATOR = re.compile(r"^(NVIDIA|TPU)_[A-Z0-9_]+$")


class SweepStopped(LcronError):
    """The sweep stopped before every run was submitted (a first run failed, or a wait timed out).

    ``submitted`` are the runs already created (they keep running); ``not_submitted`` the
    names of the runs that were not."""

    def __init__(self, message: str, submitted: Sequence["Submitted"] = (),
                 not_submitted: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.submitted = list(submitted)
        self.not_submitted = list(not_submitted)


def all_methods() -> tuple[str, ...]:
    """Every method of the registry (lcron.losses): a method added there is submitted and swept
    without any edit here."""
    from lcron.losses import METHODS

    return tuple(METHODS)


def __getattr__(name: str) -> Any:
    # ALL_METHODS is read live from the registry (and imports torch only when asked for).
    if name == "ALL_METHODS":
        return all_methods()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def check_methods_and_stages(methods: Iterable[str], stages: Iterable[int]) -> None:
    """Unknown methods (not in the registry) and stage counts other than 2 and 3 are ConfigErrors."""
    known = all_methods()
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise ConfigError(f"unknown method(s) {unknown}; known: {', '.join(known)}")
    bad = [s for s in stages if int(s) not in ALL_STAGES]
    if bad:
        raise ConfigError(f"stages must be 2 or 3, got {bad}")


def expand_methods(text: str) -> list[str]:
    """``"all"`` (every registered method) or a comma/space-separated list."""
    if text.strip() == "all":
        return list(all_methods())
    return [m.strip() for m in text.replace(" ", ",").split(",") if m.strip()]


# --------------------------------------------------------------------------- names


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=True).stdout


def git_revision(root: Path = REPO) -> str:
    """``<short sha>``, ``<short sha>-dirty`` when the package's sources or the images' inputs
    (:data:`REVISION_INPUTS`) have changes not in that commit, ``nogit`` outside a git checkout.

    A dirty tree is marked, not refused: the pipeline version also carries the package's own
    digest, so what runs is identified exactly, and the mark says the commit alone cannot
    reproduce it (``make push`` is the step that refuses a dirty tree, for the images)."""
    try:
        sha = _git(root, "rev-parse", "--short", "HEAD").strip()
        dirty = _git(root, "status", "--porcelain", "--untracked-files=all", "--", *REVISION_INPUTS).strip()
    except (OSError, subprocess.CalledProcessError):
        return "nogit"
    return f"{sha}-dirty" if dirty else sha


def submission_stamp(now: dt.datetime | None = None) -> str:
    """The UTC time of a submission, ``20250114T093000Z``: sortable, the same on every machine,
    and shared by every run of one sweep (so a sweep's runs can be found by it)."""
    now = now or dt.datetime.now(dt.timezone.utc)
    return now.astimezone(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: its name and the pipeline parameters."""

    name: str
    method: str
    stages: int
    params: dict[str, Any]


def seeds_label(seeds: Sequence[int]) -> str:
    """``[1, 2, 3]`` -> ``seed1-3`` (a consecutive range), ``[1, 5, 9]`` -> ``seed1_5_9``, ``[4]`` -> ``seed4``."""
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ConfigError("at least one seed is needed")
    if len(seeds) > 1 and seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"seed{seeds[0]}-{seeds[-1]}"
    return "seed" + "_".join(str(s) for s in seeds)


def run_name(method: str, stages: int, seeds: Sequence[int], prefix: str = "", *, revision: str = "",
             stamp: str = "") -> str:
    """``[prefix-]<method>-<stages>stage-<seeds>[-<revision>][-<stamp>]``, e.g.
    ``lcron-2stage-seed1-5-4ec343c-20250114T093000Z``.

    The configuration comes first (the KFP UI sorts and filters by name), then the commit that
    built the package and the submission time: KFP does not keep run names unique, so without
    them a resubmitted sweep would be indistinguishable from the last one."""
    parts = [prefix, method, f"{int(stages)}stage", seeds_label(seeds), revision, stamp]
    return "-".join(p for p in parts if p)


def plan_runs(methods: Iterable[str], stages: Iterable[int], seeds: Sequence[int],
              params: Mapping[str, Any] | None = None, prefix: str = "", *, revision: str = "",
              stamp: str = "") -> list[RunSpec]:
    """One RunSpec per (method, stages), methods outer; ``params`` are shared by every run."""
    methods, stages = list(methods), [int(s) for s in stages]
    check_methods_and_stages(methods, stages)
    repeated = sorted({m for m in methods if methods.count(m) > 1} | {str(s) for s in stages if stages.count(s) > 1})
    if repeated:
        raise ConfigError(f"--methods/--stages name {', '.join(repeated)} twice: each run would be submitted twice")
    reserved = sorted({"method", "stages", "seeds"} & set(params or {}))
    if reserved:
        raise ConfigError(f"give {', '.join(reserved)} with --methods/--stages/--seeds, not as KEY=VALUE")
    seeds = [int(s) for s in seeds]
    return [RunSpec(run_name(m, s, seeds, prefix, revision=revision, stamp=stamp), m, s,
                    {**dict(params or {}), "method": m, "stages": s, "seeds": seeds})
            for m in methods for s in stages]


# --------------------------------------------------------------------------- waves


@dataclass(frozen=True)
class Wave:
    """Runs submitted together; then, if ``wait_for`` names a task, wait until that task is done
    in every run submitted so far (all of them first runs) before the next wave."""

    runs: tuple[RunSpec, ...]
    wait_for: str | None = None


def plan_waves(runs: Sequence[RunSpec], wait_shared: bool = True) -> list[Wave]:
    """The submission order that lets every run after the first ones hit the cache.

    Runs share ingest (it does not depend on the setting) and, per setting (``stages``; every
    other preprocessing parameter is common to the sweep), preprocess. So: the first run of the
    first setting, until its ingest is done; the first run of each other setting, until every
    first run's preprocess is done (the settings preprocess in parallel); then the rest.
    ``wait_shared=False``: one wave, everything at once."""
    runs = list(runs)
    if not wait_shared or len(runs) <= 1:
        return [Wave(tuple(runs))] if runs else []
    leaders: dict[int, RunSpec] = {}
    for spec in runs:
        leaders.setdefault(spec.stages, spec)
    first, *other_leaders = leaders.values()
    rest = tuple(r for r in runs if r not in leaders.values())
    waves = [Wave((first,), "ingest" if other_leaders else "preprocess")]
    if other_leaders:
        waves.append(Wave(tuple(other_leaders), "preprocess"))
    if rest:
        waves.append(Wave(rest))
    else:  # nothing waits on the last wave
        waves[-1] = Wave(waves[-1].runs)
    return waves


# --------------------------------------------------------------------------- the package


@dataclass(frozen=True)
class PackageInfo:
    """What the submission needs to know about a compiled package."""

    path: Path
    pipeline_name: str  # pipelineInfo.name: KFP and Vertex share cache entries within one name
    digest: str  # sha256 of the file
    accelerators: dict[str, str]  # executor -> accelerator type
    images: dict[str, str]  # executor -> image
    platform_spec: bool  # a second YAML document with the Kubernetes settings (kfp-kubernetes)

    @property
    def variant(self) -> str:
        """``cpu`` / ``gpu`` from ``cascade-<variant>.yaml``, else ``package``."""
        match = re.fullmatch(r"cascade-([A-Za-z0-9_]+)\.ya?ml", self.path.name)
        return match.group(1) if match else "package"


def read_package(path: str | Path) -> PackageInfo:
    """Parse a compiled package (one or two YAML documents); ConfigError if it is not one."""
    import yaml

    path = Path(path)
    text = path.read_bytes()
    try:
        docs = [d for d in yaml.safe_load_all(text) if d]
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not a compiled pipeline (YAML): {exc}") from None
    spec = docs[0] if docs and isinstance(docs[0], dict) else {}
    name = (spec.get("pipelineInfo") or {}).get("name")
    executors = (spec.get("deploymentSpec") or {}).get("executors")
    if not name or not isinstance(executors, dict):
        raise ConfigError(f"{path} is not a compiled KFP pipeline (no pipelineInfo.name / deploymentSpec); "
                          "compile it with `make pipeline`")
    accelerators, images = {}, {}
    for executor, body in executors.items():
        container = (body or {}).get("container") or {}
        if "image" in container:
            images[executor] = str(container["image"])
        acc = (container.get("resources") or {}).get("accelerator") or {}
        kind = acc.get("resourceType") or acc.get("type")
        if kind:
            accelerators[executor] = str(kind)
    platform = any(isinstance(d, dict) and "platforms" in d for d in docs[1:])
    return PackageInfo(path, str(name), hashlib.sha256(text).hexdigest(), accelerators, images, platform)


def vertex_accelerator_names() -> tuple[str, ...] | None:
    """The accelerator names Vertex AI accepts, from google-cloud-aiplatform's enum; None when
    it is not installed."""
    try:
        from google.cloud.aiplatform_v1.types.accelerator_type import AcceleratorType
    except ImportError:
        return None
    return tuple(m.name for m in AcceleratorType if m.value != 0)


def check_package(info: PackageInfo, target: str) -> list[str]:
    """Refuse (ConfigError) a package its target would refuse, or worse run wrongly; return warnings.

    * ``vertex``: every accelerator must be a Vertex name (``NVIDIA_L4``, ``NVIDIA_TESLA_T4``:
      ``nvidia.com/gpu`` is refused by Vertex), the package a single document (aiplatform reads
      it with ``yaml.safe_load`` and fails on the Kubernetes platform spec that the
      ``--secret-env``/``--gpu-toleration``/... compile options add; Vertex runs no Kubernetes
      pods of yours anyway) and no image on ``localhost`` (Vertex cannot pull from it).
    * ``kfp``: every accelerator must be a Kubernetes extended resource (``nvidia.com/gpu``):
      a Vertex name is not a resource any node has, so the step would never be scheduled.
    * both: an image given by tag rather than digest is a warning (a tag can be moved; ``make
      push`` records digests and ``make pipeline`` then compiles with them)."""
    if target not in ("kfp", "vertex"):
        raise ValueError(f"unknown target {target!r}")
    problems = []
    if target == "vertex":
        known = vertex_accelerator_names()
        bad = {e: a for e, a in info.accelerators.items()
               if not (a in known if known is not None else VERTEX_ACCELERATOR.match(a))}
        if bad:
            names = ", ".join(known) if known is not None else "NVIDIA_TESLA_T4, NVIDIA_L4, NVIDIA_A100_80GB, ..."
            problems.append(f"accelerator {_describe(bad)} is not a Vertex AI accelerator type; compile with one "
                            f"of {names} (make pipeline ACCELERATOR=NVIDIA_L4)")
        if info.platform_spec:
            problems.append("the package carries a Kubernetes platform spec (compiled with K8S=... options): Vertex AI "
                            "reads a single-document package; compile it without the Kubernetes options")
        local = {e: i for e, i in info.images.items() if re.match(r"^(localhost|127\.0\.0\.1)(:\d+)?/", i)}
        if local:
            problems.append(f"image {_describe(local)} is on localhost, which Vertex AI cannot pull from; "
                            "make push REGISTRY=REGION-docker.pkg.dev/PROJECT/REPO, then make pipeline with the "
                            "same REGISTRY")
    else:
        bad = {e: a for e, a in info.accelerators.items() if not K8S_RESOURCE.match(a)}
        if bad:
            problems.append(f"accelerator {_describe(bad)} is not a Kubernetes resource name; KFP on Kubernetes "
                            "requests GPUs as e.g. nvidia.com/gpu (make pipeline ACCELERATOR=nvidia.com/gpu); "
                            "Vertex AI names such as NVIDIA_L4 are for --vertex")
    if problems:
        raise ConfigError(f"{info.path} cannot be submitted to {'Vertex AI' if target == 'vertex' else 'KFP'}: "
                          + "; ".join(problems))
    tags = sorted({i for i in info.images.values() if "@sha256:" not in i})
    if tags:
        return [f"{info.path} runs image(s) {', '.join(tags)} by tag, not by pushed digest: a tag can be moved "
                "under a cached step (make push, then make pipeline, compiles with the pushed digests)"]
    return []


def _describe(items: Mapping[str, str]) -> str:
    values = sorted(set(items.values()))
    steps = sorted(e.removeprefix("exec-") for e in items)
    return f"{', '.join(values)} (steps {', '.join(steps)})"


def version_name(info: PackageInfo, revision: str, *, no_cache: bool = False) -> str:
    """``<revision>-<variant>-<first 8 hex of the package's sha256>[-nocache]``.

    The revision says which commit compiled the package; the digest makes the name a promise
    about its content (one commit compiles different packages for other registries,
    accelerators or resources, and a KFP version name is unique within its pipeline), so an
    existing version of that name can be reused as it is."""
    return f"{revision}-{info.variant}-{info.digest[:8]}" + ("-nocache" if no_cache else "")


def without_cache(package: str | Path, out: str | Path) -> Path:
    """Write ``package`` with caching off on every task to ``out``.

    ``enable_caching`` of ``kfp.Client.run_pipeline`` only rewrites a package it is given by
    path; a run created from an uploaded version keeps the version's settings. So ``--no-cache``
    uploads this variant as its own version."""
    import yaml

    docs = [d for d in yaml.safe_load_all(Path(package).read_text()) if d]
    spec = docs[0]
    dags = [spec.get("root", {}).get("dag", {})] + [c.get("dag", {}) for c in spec.get("components", {}).values()]
    for dag in dags:
        for task in (dag or {}).get("tasks", {}).values():
            task.setdefault("cachingOptions", {})["enableCache"] = False
            task["cachingOptions"].pop("cacheKey", None)
    out = Path(out)
    out.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return out


# --------------------------------------------------------------------------- run states


@dataclass
class RunStatus:
    """A run as the submitter sees it: its state and each task's (normalised upper-case names)."""

    state: str
    tasks: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)  # task (or "run") -> error message


def state_name(value: Any) -> str:
    """KFP's ``"SUCCEEDED"``, Vertex's ``PipelineState.PIPELINE_STATE_SUCCEEDED`` or
    ``State.CANCELLED`` -> ``SUCCEEDED`` / ``CANCELED``; ``""`` when unknown."""
    if value is None:
        return ""
    text = str(getattr(value, "name", value)).upper().rsplit(".", 1)[-1]
    text = text.removeprefix("PIPELINE_STATE_")
    return {"CANCELLED": "CANCELED", "CANCELLING": "CANCELING"}.get(text, text)


def _combine(states: Sequence[str]) -> str:
    """One state for several entries of the same task name (a retried task, a driver/executor pair)."""
    for wanted in ("FAILED", "CANCELED", "CANCELING", "SUCCEEDED", "SKIPPED", "RUNNING", "PENDING"):
        if wanted in states:
            return wanted
    return states[0] if states else ""


def gate(status: RunStatus, task: str) -> tuple[str, str]:
    """(``done`` | ``failed`` | ``waiting``, why) for one first run and the task the next wave needs.

    A task counts as done when it SUCCEEDED or was SKIPPED because it was served from the cache
    (both leave a cache entry the next runs hit), or when the whole run SUCCEEDED. Any failed
    task, or a failed/cancelled run, stops the sweep: the next runs would fail the same way."""
    failed = {t: s for t, s in status.tasks.items() if s in FAILED_STATES}
    if failed or status.state in FAILED_STATES:
        what = ", ".join(f"{t} {s}" + (f" ({status.errors[t]})" if status.errors.get(t) else "")
                         for t, s in failed.items()) or f"run {status.state}"
        if not failed and status.errors.get("run"):
            what += f" ({status.errors['run']})"
        return "failed", what
    chain = SHARED_CHAIN[:SHARED_CHAIN.index(task) + 1] if task in SHARED_CHAIN else (task,)
    progress = ", ".join(f"{t} {status.tasks.get(t) or '-'}" for t in chain)
    if status.tasks.get(task) in DONE_STATES or status.state == "SUCCEEDED":
        return "done", progress
    return "waiting", f"run {status.state or '-'}: {progress}"


# --------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class Submitted:
    """A created run: its name, the id its target knows it by, and the target's handle."""

    name: str
    ident: str
    handle: Any = None


class Target(Protocol):
    """Where runs go: KFP (:class:`KfpTarget`) or Vertex AI (:class:`VertexTarget`)."""

    def submit(self, spec: RunSpec) -> Submitted: ...

    def status(self, run: Submitted) -> RunStatus: ...


def _equals_filter(name: str) -> str:
    # The filter kfp.Client.get_pipeline_id sends (operation 1 = EQUALS), here with a namespace.
    return json.dumps({"predicates": [{"operation": 1, "key": "display_name", "stringValue": name}]})


class KfpTarget:
    """Runs created from an uploaded pipeline version through a ``kfp.Client``."""

    def __init__(self, client: Any, experiment: str, *, pipeline_id: str, version_id: str,
                 namespace: str | None = None, pipeline_root: str | None = None,
                 service_account: str | None = None) -> None:
        self.client = client
        self.pipeline_id, self.version_id = pipeline_id, version_id
        self.pipeline_root, self.service_account = pipeline_root, service_account
        self.experiment_id = str(client.create_experiment(name=experiment, namespace=namespace).experiment_id)

    def submit(self, spec: RunSpec) -> Submitted:
        run = self.client.run_pipeline(experiment_id=self.experiment_id, job_name=spec.name, params=spec.params,
                                       pipeline_id=self.pipeline_id, version_id=self.version_id,
                                       pipeline_root=self.pipeline_root, service_account=self.service_account)
        return Submitted(spec.name, str(run.run_id))

    def status(self, run: Submitted) -> RunStatus:
        """From ``client.get_run``: ``V2beta1Run.state`` and ``run_details.task_details``
        (``display_name`` = the task's name in the pipeline spec, ``state``, ``error``)."""
        got = self.client.get_run(run.ident)
        tasks: dict[str, list[str]] = {}
        errors: dict[str, str] = {}
        details = getattr(getattr(got, "run_details", None), "task_details", None) or []
        for task in details:
            name = getattr(task, "display_name", None) or getattr(task, "name", None)
            if not name:
                continue
            state = state_name(getattr(task, "state", None) or getattr(task, "status", None))
            tasks.setdefault(name, []).append(state)
            message = getattr(getattr(task, "error", None), "message", None)
            if message and state in FAILED_STATES:
                errors[name] = str(message)
        message = getattr(getattr(got, "error", None), "message", None)
        if message:
            errors["run"] = str(message)
        return RunStatus(state_name(getattr(got, "state", None)), {t: _combine(s) for t, s in tasks.items()}, errors)


def ensure_pipeline_version(client: Any, package: str | Path, pipeline_name: str, version: str, *,
                            namespace: str | None = None, log: Callable[[str], None] = print) -> tuple[str, str]:
    """(pipeline id, version id) of version ``version`` of pipeline ``pipeline_name``, uploading
    what is missing: a new pipeline (KFP gives it a first version named like the pipeline), then
    the version. An existing version of that name is reused - the name carries the package
    digest (:func:`version_name`), so it is the same package."""
    found = client.list_pipelines(filter=_equals_filter(pipeline_name), namespace=namespace, page_size=100)
    pipelines = [p for p in (getattr(found, "pipelines", None) or []) if p.display_name == pipeline_name]
    if len(pipelines) > 1:
        raise ConfigError(f"{len(pipelines)} KFP pipelines are named {pipeline_name!r}; delete or rename all but one")
    if pipelines:
        pipeline_id = str(pipelines[0].pipeline_id)
    else:
        log(f"uploading pipeline {pipeline_name}")
        pipeline_id = str(client.upload_pipeline(str(package), pipeline_name=pipeline_name, namespace=namespace,
                                                 description="lcron cascade ranking: one configuration per run "
                                                             "(pipelines/cascade_pipeline.py)").pipeline_id)
    listed = client.list_pipeline_versions(pipeline_id=pipeline_id, filter=_equals_filter(version), page_size=100)
    versions = [v for v in (getattr(listed, "pipeline_versions", None) or []) if v.display_name == version]
    if versions:
        log(f"pipeline {pipeline_name}, version {version} (already uploaded)")
        return pipeline_id, str(versions[0].pipeline_version_id)
    log(f"uploading pipeline {pipeline_name}, version {version}")
    made = client.upload_pipeline_version(str(package), version, pipeline_id=pipeline_id,
                                          description=f"compiled from {Path(package).name}")
    return pipeline_id, str(made.pipeline_version_id)


class VertexTarget:
    """Runs as Vertex AI PipelineJobs (google-cloud-aiplatform)."""

    def __init__(self, package: str | Path, experiment: str, *, project: str, region: str, pipeline_root: str,
                 enable_caching: bool | None = None, service_account: str | None = None,
                 labels: Mapping[str, str] | None = None, credentials: Any = None) -> None:
        if not pipeline_root.startswith("gs://"):
            raise ConfigError(f"Vertex AI needs a gs:// pipeline root, got {pipeline_root!r}")
        self.aiplatform = _aiplatform()
        self.package, self.experiment = str(package), experiment
        self.project, self.region, self.pipeline_root = project, region, pipeline_root
        self.enable_caching, self.service_account = enable_caching, service_account
        self.labels, self.credentials = dict(labels or {}), credentials

    def job(self, spec: RunSpec) -> Any:
        """The PipelineJob of one run, built locally (aiplatform reads the package and checks the
        parameter names against it; nothing is sent)."""
        return self.aiplatform.PipelineJob(display_name=spec.name, job_id=vertex_job_id(spec.name),
                                           template_path=self.package,
                                           parameter_values=spec.params, pipeline_root=self.pipeline_root,
                                           enable_caching=self.enable_caching, labels=self.labels or None,
                                           project=self.project, location=self.region, credentials=self.credentials)

    def submit(self, spec: RunSpec) -> Submitted:
        job = self.job(spec)
        job.submit(service_account=self.service_account, experiment=self.experiment)
        return Submitted(spec.name, str(getattr(job, "resource_name", "")), job)

    def status(self, run: Submitted) -> RunStatus:
        """From the job's ``state`` and ``task_details`` (``task_name``, ``state``, ``error``);
        each read refreshes the job from Vertex."""
        job = run.handle
        tasks: dict[str, list[str]] = {}
        errors: dict[str, str] = {}
        for task in job.task_details:
            state = state_name(task.state)
            tasks.setdefault(task.task_name, []).append(state)
            message = getattr(getattr(task, "error", None), "message", None)
            if message and state in FAILED_STATES:
                errors[task.task_name] = str(message)
        return RunStatus(state_name(job.state), {t: _combine(s) for t, s in tasks.items()}, errors)


def _aiplatform() -> Any:
    try:
        from google.cloud import aiplatform
    except ImportError:
        raise ConfigError("Vertex AI submission needs the google-cloud-aiplatform package, which is not "
                          f"installed: {VERTEX_HINT}") from None
    return aiplatform


def vertex_job_id(name: str) -> str:
    """The Vertex job id of a run: its name lower-cased, other characters as ``-``.

    Without one, aiplatform names a job ``<pipeline name>-<local time to the second>``, so
    the runs of a sweep submitted within one second get the same id and Vertex refuses all
    but the first; the run name is unique (configuration + submission time)."""
    job_id = re.sub(r"[^-0-9a-z]+", "-", name.lower()).strip("-")
    if not job_id[:1].isalpha():
        job_id = f"run-{job_id}"
    return job_id[:128].rstrip("-")


def vertex_labels(revision: str, stamp: str) -> dict[str, str]:
    """Labels of every job of a sweep (Vertex has no pipeline versions): the commit and the
    submission time, lower-cased as Vertex labels must be."""
    return {"lcron-revision": revision.lower()[:63], "lcron-sweep": stamp.lower()[:63]}


# --------------------------------------------------------------------------- submitting


def _clock_text(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def wait_for_task(target: Target, runs: Sequence[Submitted], task: str, *, poll_seconds: float, timeout: float,
                  log: Callable[[str], None] = print, sleep: Callable[[float], None] = time.sleep,
                  clock: Callable[[], float] = time.monotonic) -> None:
    """Poll ``runs`` until ``task`` is done in each; SweepStopped when one fails or after ``timeout`` s.

    Prints a line when a run's progress changes, and at least every five minutes."""
    start = clock()
    pending = list(runs)
    last_line, last_time = "", -PROGRESS_EVERY
    log(f"waiting for {task} of {', '.join(r.name for r in runs)} (every {poll_seconds:g}s, "
        f"at most {_clock_text(timeout)})")
    while True:
        waiting = []
        for run in pending:
            verdict, why = gate(target.status(run), task)
            if verdict == "failed":
                raise SweepStopped(f"first run {run.name} ({run.ident}) failed: {why}")
            if verdict == "done":
                log(f"  {run.name}: {why}")
            else:
                waiting.append((run, why))
        pending = [run for run, _ in waiting]
        if not pending:
            return
        elapsed = clock() - start
        if elapsed >= timeout:
            raise SweepStopped(f"{task} of {', '.join(r.name for r in pending)} not done after "
                               f"{_clock_text(elapsed)} (--timeout {timeout:g}); the runs keep going")
        line = "; ".join(f"{run.name}: {why}" for run, why in waiting)
        if line != last_line or elapsed - last_time >= PROGRESS_EVERY:
            log(f"  [{_clock_text(elapsed)}] {line}")
            last_line, last_time = line, elapsed
        sleep(max(0.0, min(poll_seconds, timeout - elapsed)))


def submit_waves(target: Target, waves: Sequence[Wave], *, poll_seconds: float = DEFAULT_POLL_SECONDS,
                 timeout: float = DEFAULT_TIMEOUT, log: Callable[[str], None] = print,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> list[Submitted]:
    """Submit wave after wave, waiting between them as each wave asks; returns every run created.

    SweepStopped (with what was and was not submitted) when a first run fails or a wait times out."""
    submitted: list[Submitted] = []
    for number, wave in enumerate(waves, 1):
        for spec in wave.runs:
            run = target.submit(spec)
            submitted.append(run)
            log(f"submitted {run.name}: {run.ident}")
        if wave.wait_for:
            try:
                wait_for_task(target, submitted, wave.wait_for, poll_seconds=poll_seconds, timeout=timeout,
                              log=log, sleep=sleep, clock=clock)
            except SweepStopped as exc:
                left = [s.name for later in waves[number:] for s in later.runs]
                raise SweepStopped(f"{exc}; the sweep is stopped, {len(left)} run(s) not submitted",
                                   submitted, left) from None
    return submitted


def submit_kfp(client: Any, package: str | Path, waves: Sequence[Wave], experiment: str, *, version: str,
               pipeline_name: str | None = None, pipeline_root: str | None = None, namespace: str | None = None,
               service_account: str | None = None, no_cache: bool = False, **wait: Any) -> list[Submitted]:
    """Upload (or reuse) pipeline version ``version`` of the package and submit ``waves`` from it.

    ``service_account``: the Kubernetes service account the run's pods run as (a KFP run
    property, not part of the compiled package): with Workload Identity (GKE) or IRSA (EKS)
    it is how the steps get cloud credentials without keys (docs/pipeline.md). ``no_cache``:
    upload a copy of the package with caching off on every task (:func:`without_cache`).
    ``wait``: ``poll_seconds``, ``timeout``, ``log``, ``sleep``, ``clock`` of :func:`submit_waves`."""
    log = wait.get("log", print)
    pipeline_name = pipeline_name or read_package(package).pipeline_name
    with tempfile.TemporaryDirectory(prefix="lcron-submit-") as tmp:
        upload = without_cache(package, Path(tmp) / Path(package).name) if no_cache else Path(package)
        pipeline_id, version_id = ensure_pipeline_version(client, upload, pipeline_name, version,
                                                          namespace=namespace, log=log)
    target = KfpTarget(client, experiment, pipeline_id=pipeline_id, version_id=version_id, namespace=namespace,
                       pipeline_root=pipeline_root, service_account=service_account)
    return submit_waves(target, waves, **wait)


def submit_vertex(package: str | Path, waves: Sequence[Wave], experiment: str, *, project: str, region: str,
                  pipeline_root: str, enable_caching: bool | None = None, service_account: str | None = None,
                  labels: Mapping[str, str] | None = None, **wait: Any) -> list[Submitted]:
    """Check the package for Vertex, then submit ``waves`` as PipelineJobs (returns them with
    their resource names)."""
    for warning in check_package(read_package(package), "vertex"):
        wait.get("log", print)(f"warning: {warning}")
    target = VertexTarget(package, experiment, project=project, region=region, pipeline_root=pipeline_root,
                          enable_caching=enable_caching, service_account=service_account, labels=labels)
    target.aiplatform.init(project=project, location=region)
    return submit_waves(target, waves, **wait)


# --------------------------------------------------------------------------- command line


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def print_plan(waves: Sequence[Wave], header: Sequence[str], log: Callable[[str], None] = print) -> None:
    """The dry run's output: the header lines, then each wave, its runs and their parameters."""
    for line in header:
        log(line)
    for number, wave in enumerate(waves, 1):
        log(f"wave {number}: {len(wave.runs)} run(s)" + (f", then wait for {wave.wait_for}" if wave.wait_for else ""))
        for spec in wave.runs:
            log(f"  {spec.name}: {spec.params}")


def main(argv: list[str] | None = None) -> int:
    from pipelines.run_local import parse_params

    parser = argparse.ArgumentParser(prog="python -m pipelines.submit", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("params", nargs="*", metavar="KEY=VALUE", help="pipeline parameters shared by every run")
    parser.add_argument("--package", default="build/cascade-cpu.yaml", help="compiled pipeline (make pipeline)")
    parser.add_argument("--experiment", default="lcron", help="experiment the runs are grouped under")
    parser.add_argument("--methods", default="lcron", help="comma-separated, or 'all' (every registered method)")
    parser.add_argument("--stages", default="2", help="comma-separated subset of 2,3, or 'all'")
    parser.add_argument("--seeds", default="1,2,3,4,5", help="comma-separated seeds of every run (default 1-5)")
    parser.add_argument("--name-prefix", default="", help="prefix of every run name")
    parser.add_argument("--pipeline-root", default=None, help="where artifacts go (KFP: optional; Vertex: gs://)")
    parser.add_argument("--no-cache", action="store_true",
                        help="disable caching for these runs (every step reruns; implies --no-wait-shared)")
    parser.add_argument("--no-wait-shared", action="store_true",
                        help="submit every run at once instead of waiting for the first runs' ingest/preprocess "
                             "(each run then preprocesses on its own)")
    parser.add_argument("--poll-seconds", type=float, default=DEFAULT_POLL_SECONDS,
                        help=f"how often the first runs are read while waiting (default {DEFAULT_POLL_SECONDS:g})")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                        help=f"longest wait for a first run's shared step, seconds (default {DEFAULT_TIMEOUT:g})")
    parser.add_argument("--dry-run", action="store_true",
                        help="check the package and print the version, waves and runs; submit nothing")
    kfp_group = parser.add_argument_group("Kubeflow Pipelines")
    kfp_group.add_argument("--host", default=None, help="KFP API endpoint, e.g. http://localhost:8080")
    kfp_group.add_argument("--namespace", default=None, help="KFP namespace (multi-user deployments)")
    kfp_group.add_argument("--pipeline-name", default=None,
                           help="KFP pipeline the version is uploaded to (default: the package's name, lcron-cascade)")
    vertex = parser.add_argument_group("Vertex AI Pipelines")
    vertex.add_argument("--vertex", action="store_true", help="submit to Vertex AI instead of KFP")
    vertex.add_argument("--project", default=None, help="Google Cloud project")
    vertex.add_argument("--region", default="us-central1", help="Vertex AI region (default us-central1)")
    parser.add_argument("--service-account", default=None,
                        help="service account the runs' pods run as (KFP: a Kubernetes service account, e.g. one "
                             "bound by Workload Identity or IRSA; Vertex: a Google service account)")
    args = parser.parse_args(argv)

    if args.poll_seconds <= 0 or args.timeout <= 0:
        parser.error("--poll-seconds and --timeout must be > 0")
    if not Path(args.package).is_file():
        parser.error(f"--package {args.package} does not exist (run `make pipeline`)")
    revision, stamp = git_revision(), submission_stamp()
    try:
        params = parse_params(args.params)
        methods = expand_methods(args.methods)
        stages = list(ALL_STAGES) if args.stages == "all" else [int(s) for s in _csv(args.stages)]
        seeds = [int(s) for s in _csv(args.seeds)]
        runs = plan_runs(methods, stages, seeds, params, args.name_prefix, revision=revision, stamp=stamp)
        info = read_package(args.package)
        warnings = check_package(info, "vertex" if args.vertex else "kfp")
    except (ValueError, ConfigError) as exc:
        parser.error(str(exc))
    if args.vertex and (not args.project or not args.pipeline_root):
        parser.error("--vertex needs --project and --pipeline-root gs://...")
    if not args.vertex and not args.host and not args.dry_run:
        parser.error("--host is needed (the KFP API endpoint), or --vertex")
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if revision.endswith("-dirty"):
        print(f"warning: the tree has changes not in commit {revision.removesuffix('-dirty')}: the version and "
              "the runs are marked -dirty", file=sys.stderr)
    waves = plan_waves(runs, wait_shared=not (args.no_wait_shared or args.no_cache))
    caching = False if args.no_cache else None
    version = version_name(info, revision, no_cache=args.no_cache)
    wait = {"poll_seconds": args.poll_seconds, "timeout": args.timeout}

    if args.dry_run:
        where = (f"Vertex AI {args.project}/{args.region}, labels {vertex_labels(revision, stamp)}" if args.vertex
                 else f"KFP pipeline {args.pipeline_name or info.pipeline_name}, version {version}")
        print_plan(waves, [f"{where} (package {args.package}), experiment {args.experiment}"])
        if args.vertex and vertex_accelerator_names() is not None:
            from google.auth.credentials import AnonymousCredentials

            target = VertexTarget(args.package, args.experiment, project=args.project, region=args.region,
                                  pipeline_root=args.pipeline_root, enable_caching=caching,
                                  labels=vertex_labels(revision, stamp), credentials=AnonymousCredentials())
            try:
                for spec in runs:
                    target.job(spec)
            except ValueError as exc:
                print(f"error: aiplatform refuses a run: {exc}", file=sys.stderr)
                return 2
            print(f"aiplatform built all {len(runs)} PipelineJobs from the package (nothing submitted)")
        return 0
    try:
        if args.vertex:
            submitted = submit_vertex(args.package, waves, args.experiment, project=args.project,
                                      region=args.region, pipeline_root=args.pipeline_root, enable_caching=caching,
                                      service_account=args.service_account, labels=vertex_labels(revision, stamp),
                                      **wait)
        else:
            import kfp

            client = kfp.Client(host=args.host, namespace=args.namespace)
            submitted = submit_kfp(client, args.package, waves, args.experiment, version=version,
                                   pipeline_name=args.pipeline_name, pipeline_root=args.pipeline_root,
                                   namespace=args.namespace, service_account=args.service_account,
                                   no_cache=args.no_cache, **wait)
    except SweepStopped as exc:
        print(f"error: {exc}", file=sys.stderr)
        for name in exc.not_submitted:
            print(f"not submitted: {name}", file=sys.stderr)
        return 1
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{len(submitted)} run(s) submitted, experiment {args.experiment}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
