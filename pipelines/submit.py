"""Submit the compiled pipeline: one run per configuration, to KFP or to Vertex AI Pipelines.

    python -m pipelines.submit --host https://KFP_HOST --experiment lcron \\
        --package build/cascade-cpu.yaml --methods lcron,arf --stages 2,3 [--seeds 1,2,3] [KEY=VALUE ...]

submits one run per (method, stages) - 8 methods x 2 settings for a full sweep - under
one experiment, named like ``lcron-2stage-seed1-3``. All runs over the same data share
the cached fingerprint -> ingest -> preprocess chain (docs/pipeline.md).

    python -m pipelines.submit --vertex --project P --region europe-west4 \\
        --pipeline-root gs://BUCKET/pipeline-root --package build/cascade-gpu.yaml ...

submits the same runs to Vertex AI Pipelines (needs ``pip install 'lcron-pipelines[vertex]'``
and, for the GPU variant, a package compiled with a Vertex accelerator type such as
``--accelerator-type NVIDIA_TESLA_T4``). ``--dry-run`` prints the runs without submitting.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from lcron.errors import ConfigError

ALL_STAGES = (2, 3)
VERTEX_HINT = "pip install 'lcron-pipelines[vertex]'"


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


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: its readable name and the pipeline parameters."""

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


def run_name(method: str, stages: int, seeds: Sequence[int], prefix: str = "") -> str:
    """``<prefix->method-<stages>stage-seed...``, e.g. ``lcron-2stage-seed1-3``."""
    name = f"{method}-{int(stages)}stage-{seeds_label(seeds)}"
    return f"{prefix}-{name}" if prefix else name


def plan_runs(methods: Iterable[str], stages: Iterable[int], seeds: Sequence[int],
              params: Mapping[str, Any] | None = None, prefix: str = "") -> list[RunSpec]:
    """One RunSpec per (method, stages), methods outer; ``params`` are shared by every run."""
    methods, stages = list(methods), [int(s) for s in stages]
    check_methods_and_stages(methods, stages)
    reserved = sorted({"method", "stages", "seeds"} & set(params or {}))
    if reserved:
        raise ConfigError(f"give {', '.join(reserved)} with --methods/--stages/--seeds, not as KEY=VALUE")
    seeds = [int(s) for s in seeds]
    return [RunSpec(run_name(m, s, seeds, prefix), m, s, {**dict(params or {}), "method": m, "stages": s,
                                                           "seeds": seeds})
            for m in methods for s in stages]


def submit_kfp(client: Any, package: str | Path, runs: Sequence[RunSpec], experiment: str, *,
               pipeline_root: str | None = None, enable_caching: bool | None = None,
               namespace: str | None = None, service_account: str | None = None) -> list[tuple[str, str]]:
    """Submit every run with ``client.create_run_from_pipeline_package``; returns (name, run id).

    ``service_account``: the Kubernetes service account the run's pods run as (a KFP run
    property, not part of the compiled package): with Workload Identity (GKE) or IRSA (EKS)
    it is how the steps get cloud credentials without keys (docs/pipeline.md)."""
    submitted = []
    extra = {"service_account": service_account} if service_account else {}
    for spec in runs:
        result = client.create_run_from_pipeline_package(
            str(package), arguments=spec.params, run_name=spec.name, experiment_name=experiment,
            namespace=namespace, pipeline_root=pipeline_root, enable_caching=enable_caching, **extra)
        submitted.append((spec.name, str(getattr(result, "run_id", ""))))
    return submitted


def _aiplatform() -> Any:
    try:
        from google.cloud import aiplatform
    except ImportError:
        raise ConfigError("Vertex AI submission needs the google-cloud-aiplatform package, which is not "
                          f"installed: {VERTEX_HINT}") from None
    return aiplatform


def submit_vertex(package: str | Path, runs: Sequence[RunSpec], experiment: str, *, project: str, region: str,
                  pipeline_root: str, enable_caching: bool | None = None, service_account: str | None = None,
                  ) -> list[tuple[str, str]]:
    """Submit every run as a Vertex AI PipelineJob; returns (name, job resource name)."""
    if not pipeline_root.startswith("gs://"):
        raise ConfigError(f"Vertex AI needs a gs:// pipeline root, got {pipeline_root!r}")
    aiplatform = _aiplatform()
    aiplatform.init(project=project, location=region)
    submitted = []
    for spec in runs:
        job = aiplatform.PipelineJob(display_name=spec.name, template_path=str(package),
                                     parameter_values=spec.params, pipeline_root=pipeline_root,
                                     enable_caching=enable_caching)
        job.submit(service_account=service_account, experiment=experiment)
        submitted.append((spec.name, str(getattr(job, "resource_name", ""))))
    return submitted


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


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
    parser.add_argument("--no-cache", action="store_true", help="disable caching for these runs (every step reruns)")
    parser.add_argument("--dry-run", action="store_true", help="print the runs and their parameters, submit nothing")
    kfp_group = parser.add_argument_group("Kubeflow Pipelines")
    kfp_group.add_argument("--host", default=None, help="KFP API endpoint, e.g. http://localhost:8080")
    kfp_group.add_argument("--namespace", default=None, help="KFP namespace (multi-user deployments)")
    vertex = parser.add_argument_group("Vertex AI Pipelines")
    vertex.add_argument("--vertex", action="store_true", help="submit to Vertex AI instead of KFP")
    vertex.add_argument("--project", default=None, help="Google Cloud project")
    vertex.add_argument("--region", default="us-central1", help="Vertex AI region (default us-central1)")
    parser.add_argument("--service-account", default=None,
                        help="service account the runs' pods run as (KFP: a Kubernetes service account, e.g. one "
                             "bound by Workload Identity or IRSA; Vertex: a Google service account)")
    args = parser.parse_args(argv)

    try:
        params = parse_params(args.params)
        methods = expand_methods(args.methods)
        stages = list(ALL_STAGES) if args.stages == "all" else [int(s) for s in _csv(args.stages)]
        seeds = [int(s) for s in _csv(args.seeds)]
        runs = plan_runs(methods, stages, seeds, params, args.name_prefix)
    except (ValueError, ConfigError) as exc:
        parser.error(str(exc))
    if not Path(args.package).is_file():
        parser.error(f"--package {args.package} does not exist (run `make pipeline`)")
    caching = False if args.no_cache else None
    if args.dry_run:
        for spec in runs:
            print(f"{spec.name}: {spec.params}")
        return 0
    try:
        if args.vertex:
            if not args.project or not args.pipeline_root:
                parser.error("--vertex needs --project and --pipeline-root gs://...")
            submitted = submit_vertex(args.package, runs, args.experiment, project=args.project,
                                      region=args.region, pipeline_root=args.pipeline_root, enable_caching=caching,
                                      service_account=args.service_account)
        else:
            if not args.host:
                parser.error("--host is needed (the KFP API endpoint), or --vertex")
            import kfp

            client = kfp.Client(host=args.host, namespace=args.namespace)
            submitted = submit_kfp(client, args.package, runs, args.experiment, pipeline_root=args.pipeline_root,
                                   enable_caching=caching, namespace=args.namespace,
                                   service_account=args.service_account)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for name, ident in submitted:
        print(f"submitted {name}: {ident}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
