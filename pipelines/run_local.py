"""Run the compiled pipeline on this machine with kfp.local (no cluster, no Docker needed).

    python -m pipelines.run_local [KEY=VALUE ...] [--package build/cascade-local.yaml]
                                  [--pipeline-root runs/kfp-local] [--docker]

Compiles the local package (``build/cascade-local.yaml``: the CPU image, in the shape
kfp.local can run - the serving step always a task, switched by ``serving_eval``; see
pipelines/cascade_pipeline.py) first if it is missing or older than the pipeline's sources,
then runs it through ``kfp.local`` with the SubprocessRunner (every step a subprocess of
this Python, ``use_venv=False``: the library must be installed here, as ``make install``
does). ``KEY=VALUE`` pairs are pipeline parameters, parsed as ``kfp run submit`` parses
them (JSON first, then true/false, numbers, else a string): ``method=arf stages=3
seeds=[1,2]``. Laptop-sized defaults apply unless overridden: one seed, batch size 256,
no torch.compile, on the generator's default synthetic data.

``--docker`` runs every step in the project image with kfp.local's DockerRunner instead
(needs a Docker engine and the image from ``make image``; a local-folder source is mounted
read-only into every container at its absolute path, since ingest references it and
preprocess reads it there). ``--image REF``
names that image (``make test-docker`` passes the Makefile's IMAGE_REF); the local package
is then compiled for it into ``build/docker/``. Containers use the host network (gs://, s3://
and a loopback S3 server are reachable) and run as the calling user, or as the image's
user 1000 when called as root (the pipeline root is then handed to uid 1000); the
AWS_* / STORAGE_EMULATOR_HOST variables set here are passed into them.

A cluster package (``cascade-cpu.yaml``, ``cascade-gpu.yaml``: its serving step sits in a
``dsl.If``) is refused by name, since kfp.local 2.16.1 would skip that branch or run both
branches of it.

kfp.local does not cache: every step runs each time.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from pipelines.compile import LOCAL_VARIANT, is_stale, package_path

DEFAULT_PACKAGE = package_path("build", LOCAL_VARIANT)
DOCKER_PACKAGE = package_path(Path("build") / "docker", LOCAL_VARIANT)
IMAGE_UID = 1000  # the image's non-root user (docker/Dockerfile)
# Passed from this environment into the containers (where set): the object-store endpoints
# and credentials that gs:// and s3:// sources read (lcron/data/source.py).
PASS_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_REGION", "STORAGE_EMULATOR_HOST", "GOOGLE_CLOUD_PROJECT")
DEFAULT_ROOT = Path("runs/kfp-local")
# What makes `make run` fit a laptop: one seed, small batches (the default synthetic data
# has 2000 requests a day), eager models (torch.compile costs more than it saves here).
LOCAL_DEFAULTS: dict[str, Any] = {"seeds": [1], "batch_size": 256, "compile": False}
OUTPUTS = ("metrics", "report", "report_markdown", "report_files", "evaluation", "model", "serving",
           "serving_metrics")
# Metrics artifacts merged into LocalRun.metrics (the serving keys all start with "serving/").
METRICS_OUTPUTS = ("metrics", "serving_metrics")


@dataclass
class LocalRun:
    """Where a local run put its outputs (artifact paths) and its scalar metrics."""

    pipeline_root: Path
    params: dict[str, Any]
    paths: dict[str, Path] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"pipeline_root": str(self.pipeline_root), "params": self.params,
                "paths": {k: str(v) for k, v in self.paths.items()}, "metrics": self.metrics}


def parse_params(pairs: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings -> parameters, with the value rules of ``kfp run submit``."""
    from kfp.cli.utils.parsing import parse_parameter_value

    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"pipeline parameter {pair!r} is not KEY=VALUE")
        params[key.strip()] = parse_parameter_value(value)
    return params


def ensure_package(package: str | Path = DEFAULT_PACKAGE, image: str | None = None) -> Path:
    """Compile the local variant to ``package`` if it is missing, stale or (with ``image``)
    names another image; return its path."""
    from pipelines.compile import compile_variant

    package = Path(package)
    if is_stale(package) or (image is not None and f"image: {image}\n" not in package.read_text()):
        from lcron.logs import get_logger

        get_logger(__name__).info(f"compiling {package}" + (f" for image {image}" if image else ""))
        compile_variant(LOCAL_VARIANT, package, ref=image)
    return package


def check_docker(image: str | None) -> None:
    """A reachable Docker engine (and ``image`` present locally): RuntimeError naming the fix
    instead of kfp.local's stack trace or an attempt to pull from an unreachable registry."""
    try:
        import docker

        client = docker.from_env()
        client.ping()
    except Exception as exc:
        raise RuntimeError(f"no Docker engine answers ({type(exc).__name__}); install and start one "
                           "(apt-get install docker.io; dockerd --iptables=false --ip-masq=false --bridge=none &) "
                           "or set DOCKER_HOST - see docs/docker.md") from None
    try:
        if image is not None:
            try:
                client.images.get(image)
            except docker.errors.ImageNotFound:
                raise RuntimeError(f"image {image} is not in the local Docker engine; build it with "
                                   "`make image` (same REGISTRY/TAG) or docker pull it") from None
    finally:
        client.close()


def local_source(params: Mapping[str, Any]) -> Path | None:
    """The absolute path of a local-folder ``source`` parameter (None for synthetic, gs://, s3://)."""
    from lcron.ingest import is_synthetic

    source = params.get("source")
    if not isinstance(source, str) or is_synthetic(source) or "://" in source:
        return None
    return Path(source).expanduser().resolve()


def _docker_runner(root: Path, source: Path | None = None, shared: Path | None = None) -> Any:
    """kfp.local's DockerRunner for the project image (see the module docstring); ``source``
    (a local RecFlow folder) is bind-mounted read-only at the same path, ``shared`` (the
    shared shard sets' folder) read-write."""
    from kfp import local

    uid, gid = os.getuid(), os.getgid()
    if uid == 0:
        uid = gid = IMAGE_UID
        for folder in (root, shared):
            for path in (folder, *folder.rglob("*")) if folder is not None else ():
                os.chown(path, uid, gid)
    # The image's entry point is `lcron`; KFP passes the step's command as the container
    # command, so `env` (which runs its arguments) stands in as entry point.
    environment = {"HOME": "/tmp", **{k: os.environ[k] for k in PASS_ENV if k in os.environ}}
    extra: dict[str, Any] = {}
    if source is not None or shared is not None:
        from docker.types import Mount

        extra["mounts"] = [Mount(target=str(path), source=str(path), type="bind", read_only=read_only)
                           for path, read_only in ((source, True), (shared, False)) if path is not None]
    return local.DockerRunner(entrypoint=["env"], user=f"{uid}:{gid}", environment=environment,
                              network_mode="host", **extra)


def check_params(component: Any, params: Mapping[str, Any]) -> None:
    """Unknown parameter names are an error that lists the known ones."""
    known = set(component.component_spec.inputs or {})
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(f"unknown pipeline parameter(s) {unknown}; known: {', '.join(sorted(known))}")


def check_runs_locally(component: Any, package: str | Path) -> None:
    """Refuse a package with a task under a trigger condition (a cluster package: its serving
    step and report sit in ``dsl.If``/``dsl.Else``): kfp.local 2.16.1 would run both branches
    of the pair (its plain orchestrator ignores conditions) or, for a root-level ``dsl.If``,
    never the branch (its evaluator cannot read the condition), so the run would be wrong
    rather than fail. A component without a pipeline spec (a stand-in in tests) passes."""
    spec = getattr(component, "pipeline_spec", None)
    if spec is None:
        return
    dags = [spec.root, *spec.components.values()]
    conditional = sorted(name for dag in dags if dag.WhichOneof("implementation") == "dag"
                         for name, task in dag.dag.tasks.items() if task.trigger_policy.condition)
    if conditional:
        raise ValueError(f"{package} is a cluster package: its task(s) {', '.join(conditional)} run under a "
                         "condition (dsl.If), which kfp.local cannot run; run the local package instead "
                         f"(leave --package at its default, {DEFAULT_PACKAGE}, compiled when missing or stale)")


def run_pipeline(package: str | Path, params: Mapping[str, Any], pipeline_root: str | Path, *,
                 docker: bool = False, image: str | None = None) -> LocalRun:
    """Run the compiled ``package`` with ``params`` under ``pipeline_root``; outputs and metrics."""
    from kfp import components, local

    root = Path(pipeline_root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    # A folder source goes in as an absolute path: ingest records it in its reference and
    # preprocess (another process, or a container) reads it from there.
    source = local_source(params)
    run_params = {**params, "source": str(source)} if source is not None else dict(params)
    shared = Path(params["shared_shards"]).resolve() if params.get("shared_shards") else None
    if shared is not None:
        shared.mkdir(parents=True, exist_ok=True)
        run_params["shared_shards"] = str(shared)
    if docker:
        check_docker(image)
        runner: Any = _docker_runner(root, source, shared)
    else:
        runner = local.SubprocessRunner(use_venv=False)
    local.init(runner=runner, pipeline_root=str(root), raise_on_error=True)
    pipeline = components.load_component_from_file(str(package))
    check_runs_locally(pipeline, package)
    check_params(pipeline, params)
    with warnings.catch_warnings():
        # The SubprocessRunner warns that the project image is "not a Python image": the
        # steps run in this Python instead, which is what we want here.
        warnings.filterwarnings("ignore", message=".*non-Python base image.*", category=RuntimeWarning)
        task = pipeline(**run_params)
    run = LocalRun(root, dict(params))
    for name in OUTPUTS:
        artifact = task.outputs.get(name)
        if artifact is not None:
            run.paths[name] = Path(artifact.path)
    for name in METRICS_OUTPUTS:
        metrics = task.outputs.get(name)
        if metrics is not None:
            run.metrics.update({k: float(v) for k, v in metrics.metadata.items()
                                if isinstance(v, (int, float)) and not isinstance(v, bool)})
    return run


def report_locations(run: LocalRun) -> list[tuple[str, Path]]:
    """What to print after a run: the report pages (with their file extensions, from the
    report folder, so a browser opens them), the evaluation, the model and the metrics file."""
    out = []
    folder = run.paths.get("report_files")
    for label, key, name in (("report (HTML)", "report", "report.html"),
                             ("report (Markdown)", "report_markdown", "report.md")):
        if folder is not None and (folder / name).is_file():
            out.append((label, folder / name))
        elif key in run.paths:
            out.append((label, run.paths[key]))
    for label, key in (("evaluation", "evaluation"), ("model", "model")):
        if key in run.paths:
            out.append((label, run.paths[key]))
    if "evaluation" in run.paths:
        out.append(("metrics", run.paths["evaluation"] / "metrics.json"))
    if "serving" in run.paths and (run.paths["serving"] / "serving.json").is_file():
        out.append(("serving", run.paths["serving"] / "serving.json"))
    return out


def add_local_options(parser: argparse.ArgumentParser) -> None:
    """The options every local runner shares: which package, Docker or not, which defaults."""
    parser.add_argument("--package", default=str(DEFAULT_PACKAGE),
                        help=f"compiled pipeline (default {DEFAULT_PACKAGE}; compiled if missing or stale)")
    parser.add_argument("--docker", action="store_true", help="run the steps in the project image (DockerRunner)")
    parser.add_argument("--image", default=None, metavar="REF",
                        help="with --docker: the image to run (make test-docker passes the Makefile's IMAGE_REF); "
                             f"the package is compiled for it into {DOCKER_PACKAGE.parent}")
    parser.add_argument("--no-local-defaults", action="store_true",
                        help=f"use the pipeline's own defaults instead of {LOCAL_DEFAULTS}")


def resolve_local_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[dict[str, Any], Path]:
    """The run's parameters (laptop defaults under the user's KEY=VALUE) and the compiled package
    (the default one compiled when missing or stale); a bad value is a usage error."""
    try:
        params = parse_params(args.params)
    except ValueError as exc:
        parser.error(str(exc))
    if not args.no_local_defaults:
        params = {**LOCAL_DEFAULTS, **params}
    package = Path(args.package)
    if args.image and not args.docker:
        parser.error("--image needs --docker")
    if package.resolve() == DEFAULT_PACKAGE.resolve():
        package = ensure_package(DOCKER_PACKAGE, args.image) if args.image else ensure_package(package)
    elif not package.is_file():
        parser.error(f"--package {package} does not exist")
    return params, package


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.run_local", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("params", nargs="*", metavar="KEY=VALUE", help="pipeline parameters")
    parser.add_argument("--pipeline-root", default=str(DEFAULT_ROOT),
                        help=f"where the steps' outputs go (default {DEFAULT_ROOT})")
    add_local_options(parser)
    args = parser.parse_args(argv)
    params, package = resolve_local_options(parser, args)
    try:
        run = run_pipeline(package, params, args.pipeline_root, docker=args.docker, image=args.image)
    except ValueError as exc:
        parser.error(str(exc))
    except RuntimeError as exc:  # kfp.local: a step failed (its log is above)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    from lcron import atomic

    atomic.write_json(Path(args.pipeline_root) / "latest.json", run.to_dict())
    print()
    for label, path in report_locations(run):
        print(f"{label:18s} {path}")
    if "joint_recall" in run.metrics:
        print(f"{'joint recall':18s} {run.metrics['joint_recall']:.4f}")
    for key, value in run.metrics.items():
        if key.startswith("serving/joint_recall@"):  # serving_eval=true: end to end from the corpus per K1
            print(f"{'serving e2e ' + key.split('@', 1)[1]:18s} {value:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
