"""Compile the cascade pipeline to KFP IR YAML: a CPU and a GPU variant.

    python -m pipelines.compile --out build [--image-ref R/NAME:TAG | --registry R --image NAME --tag T]
                                [--accelerator-type nvidia.com/gpu --accelerator-count 1]
                                [--resource-profile recflow|small|none] [--memory STEP=48G ...]
                                [Kubernetes: --secret-env ENV=SECRET:KEY --gcs-key-secret SECRET
                                 --gpu-node-selector KEY=VALUE --gpu-toleration KEY[=VALUE]:EFFECT
                                 --retries N --retry-backoff 60s --timeout STEP=SECONDS --label KEY=VALUE
                                 --ephemeral-storage-mount /gcs --ephemeral-storage STEP=SIZE]

writes ``build/cascade-cpu.yaml`` (CPU image on every step) and ``build/cascade-gpu.yaml``
(GPU image on every step, an accelerator request on train, evaluate and serving, and
``device=cuda`` by default: a GPU step never trains on the CPU without a word). Both files
are cluster packages: submit them with ``kfp run submit``, ``pipelines.submit`` or Vertex
AI. Their serving step sits in a ``dsl.If``, which kfp.local does not run, so
``pipelines.run_local`` compiles and runs a third package, the ``local`` variant
(``cascade-local.yaml``: CPU image, serving step switched by a parameter; see
pipelines/cascade_pipeline.py).
``--image-ref`` is the one reference the Makefile computes (``make image-refs``); the GPU
variant uses it with ``-gpu`` appended. Every step gets the CPU/memory requests and limits
of a resource profile (pipelines/resources.py), each overridable per step. The Kubernetes
options (pipelines/kubernetes.py, docs/pipeline.md "Deploy on GKE / EKS") go into the
package's platform spec; without them the package is exactly what it was before.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Mapping

from components.common import GPU_SUFFIX, IMAGE, REGISTRY, TAG, image_ref
from pipelines import kubernetes as k8s
from pipelines import resources as step_resources

VARIANTS = ("cpu", "gpu")  # the cluster packages
LOCAL_VARIANT = "local"  # the package kfp.local runs (pipelines.run_local), CPU image
DEFAULT_ACCELERATOR_TYPE = "nvidia.com/gpu"
REPO = Path(__file__).resolve().parents[1]
# Sources the compiled YAML is made from: a package older than any of them is stale.
SOURCES = (REPO / "components", REPO / "pipelines")


def package_path(out_dir: str | Path, variant: str) -> Path:
    """``<out_dir>/cascade-<variant>.yaml``."""
    if variant not in (*VARIANTS, LOCAL_VARIANT):
        raise ValueError(f"unknown variant {variant!r}; known: {', '.join((*VARIANTS, LOCAL_VARIANT))}")
    return Path(out_dir) / f"cascade-{variant}.yaml"


def compile_variant(variant: str, path: str | Path, *, registry: str = REGISTRY, image: str = IMAGE,
                    tag: str = TAG, accelerator_type: str = DEFAULT_ACCELERATOR_TYPE,
                    accelerator_count: int = 1, ref: str | None = None, exact_image: str | None = None,
                    resources: Mapping[str, step_resources.StepResources] | None = None,
                    kubernetes: k8s.KubernetesOptions | None = None) -> Path:
    """Compile one variant to ``path`` (written whole or not at all) and return the path.

    ``ref`` (the CPU image reference; the GPU variant appends ``-gpu``) replaces
    registry/image/tag; ``exact_image`` (e.g. a pushed ``REPO@sha256:...``) replaces both;
    ``resources`` are the steps' requests and limits; ``kubernetes`` the platform settings.
    ``variant`` ``local``: the CPU package in the shape kfp.local can run."""
    from kfp import compiler

    from lcron import atomic
    from pipelines.cascade_pipeline import build_pipeline

    gpu = variant == "gpu"
    if variant not in (*VARIANTS, LOCAL_VARIANT):
        raise ValueError(f"unknown variant {variant!r}; known: {', '.join((*VARIANTS, LOCAL_VARIANT))}")
    image_name = exact_image or (variant_ref(ref, gpu) if ref else image_ref(registry, image, tag, gpu=gpu))
    pipeline = build_pipeline(image_name, accelerator_type=accelerator_type if gpu else None,
                              accelerator_count=accelerator_count,
                              # each device's training default (lcron.devices.DEVICE_DEFAULTS): the CPU
                              # package compiles DIN's attention core (~5x faster steps), the GPU one
                              # runs eager kernels in a CUDA graph
                              compile_default=not gpu, device_default="cuda" if gpu else "auto",
                              resources=resources, kubernetes=kubernetes, local=variant == LOCAL_VARIANT)
    path = Path(path)
    # The compiler writes to a file name: compile into a temporary folder, then put the
    # text in place atomically (a stale-but-whole package beats a truncated one).
    with tempfile.TemporaryDirectory(prefix="lcron-compile-") as tmp:
        tmp_path = Path(tmp) / path.name
        compiler.Compiler().compile(pipeline, str(tmp_path))
        atomic.write_text(path, tmp_path.read_text())
    return path


def variant_ref(ref: str, gpu: bool) -> str:
    """The image of a variant from the one CPU reference (GPU: ``ref`` + ``-gpu``)."""
    return f"{ref}{GPU_SUFFIX}" if gpu else ref


def compile_all(out_dir: str | Path = "build", *, registry: str = REGISTRY, image: str = IMAGE, tag: str = TAG,
                accelerator_type: str = DEFAULT_ACCELERATOR_TYPE, accelerator_count: int = 1,
                variants: tuple[str, ...] = VARIANTS, ref: str | None = None,
                images: Mapping[str, str] | None = None,
                resources: Mapping[str, step_resources.StepResources] | None = None,
                kubernetes: k8s.KubernetesOptions | None = None,
                gpu_resources: Mapping[str, step_resources.StepResources] | None = None) -> dict[str, Path]:
    """Compile every variant into ``out_dir``; returns variant -> path. ``images``: an exact
    image per variant (the pushed digests, pipelines.images), overriding the tag references.
    ``gpu_resources``: the GPU variant's requests and limits (default ``resources``)."""
    return {v: compile_variant(v, package_path(out_dir, v), registry=registry, image=image, tag=tag,
                               accelerator_type=accelerator_type, accelerator_count=accelerator_count, ref=ref,
                               exact_image=(images or {}).get(v),
                               resources=gpu_resources if v == "gpu" and gpu_resources is not None else resources,
                               kubernetes=kubernetes)
            for v in variants}


def _step_values(pairs: list[str], field: str) -> dict[str, str]:
    """``STEP=VALUE`` options -> {step: value}; ValueError on a malformed pair."""
    out = {}
    for pair in pairs:
        step, sep, value = pair.partition("=")
        if not sep or not step.strip() or not value.strip():
            raise ValueError(f"--{field.replace('_', '-')} {pair!r}: expected STEP=VALUE, "
                             f"steps: {', '.join(step_resources.STEPS)}")
        out[step.strip()] = value.strip()
    return out


def _add_kubernetes_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "Kubernetes (kfp-kubernetes platform spec; docs/pipeline.md \"Deploy on GKE / EKS\")")
    group.add_argument("--secret-env", action="append", default=[], metavar="ENV=SECRET:KEY",
                       help="every step gets ENV from key KEY of the Kubernetes secret SECRET (repeatable), "
                            "e.g. AWS_ACCESS_KEY_ID=s3-creds:access_key")
    group.add_argument("--gcs-key-secret", default=None, metavar="SECRET",
                       help=f"secret with a GCS service-account key file (no Workload Identity): mounted at "
                            f"{k8s.GCS_KEY_DIR} on every step, GOOGLE_APPLICATION_CREDENTIALS set to it")
    group.add_argument("--gcs-key-file", default=k8s.GCS_KEY_FILE, metavar="KEY",
                       help=f"the key of that secret holding the key file (default {k8s.GCS_KEY_FILE})")
    group.add_argument("--gpu-node-selector", action="append", default=[], metavar="KEY=VALUE",
                       help="GPU variant: node selector of train, evaluate and serving (repeatable), e.g. "
                            "cloud.google.com/gke-accelerator=nvidia-l4")
    group.add_argument("--gpu-toleration", action="append", default=[], metavar="KEY[=VALUE]:EFFECT",
                       help="GPU variant: toleration of train, evaluate and serving (repeatable), e.g. "
                            "nvidia.com/gpu=present:NoSchedule; no VALUE: operator Exists")
    group.add_argument("--retries", type=int, default=0, metavar="N",
                       help=f"retries of {', '.join(k8s.RETRIED)} on failure (default 0)")
    group.add_argument("--retry-backoff", default=None, metavar="SECONDS",
                       help="wait before the first retry, e.g. 60s (KFP default 0s)")
    group.add_argument("--retry-backoff-factor", type=float, default=None, metavar="F",
                       help="each further wait is the previous one x F (KFP default 2)")
    group.add_argument("--retry-backoff-max", default=None, metavar="SECONDS",
                       help="how long the retries of a step may go on (KFP default and maximum 3600s)")
    group.add_argument("--timeout", action="append", default=[], metavar="STEP=SECONDS",
                       help="the step's pod deadline (activeDeadlineSeconds; repeatable), e.g. train=86400")
    group.add_argument("--label", action="append", default=[], metavar="KEY=VALUE",
                       help=f"pod label on every step (repeatable), e.g. lcron.dev/git-sha=4ec343c; with any, "
                            f"{k8s.STEP_LABEL} and {k8s.VARIANT_LABEL} are added")
    group.add_argument("--ephemeral-storage-mount", default=None, metavar="PATH",
                       help="give every step a disk of its profile's size (--ephemeral-storage-volume) mounted at "
                            "PATH: the launcher's artifact root, /gcs (gs:// root), /s3 (s3://) or /minio (minio://)")
    group.add_argument("--ephemeral-storage", action="append", default=[], metavar="STEP=SIZE",
                       help="override one step's disk size (repeatable), e.g. preprocess=200Gi; "
                            "needs --ephemeral-storage-mount")
    group.add_argument("--ephemeral-storage-volume", default="emptydir", choices=k8s.VOLUME_KINDS,
                       help="emptydir (default): an emptyDir with that sizeLimit on the node's disk; pvc: a generic "
                            "ephemeral volume (a PVC of that size made and deleted with the pod)")
    group.add_argument("--storage-class", default=None, metavar="NAME",
                       help="storage class of the pvc volumes (default: the cluster's default class)")


def kubernetes_options(args: argparse.Namespace) -> k8s.KubernetesOptions:
    """The parsed options as :class:`pipelines.kubernetes.KubernetesOptions`; ValueError on bad input."""
    if args.retries < 0:
        raise ValueError("--retries must be >= 0")
    if args.retries == 0 and (args.retry_backoff or args.retry_backoff_factor is not None or args.retry_backoff_max):
        raise ValueError("--retry-backoff/--retry-backoff-factor/--retry-backoff-max need --retries N (N >= 1)")
    if args.retry_backoff_factor is not None and args.retry_backoff_factor < 1:
        raise ValueError("--retry-backoff-factor must be >= 1")
    if args.ephemeral_storage and not args.ephemeral_storage_mount:
        raise ValueError("--ephemeral-storage needs --ephemeral-storage-mount PATH (where the volume goes)")
    if args.storage_class and args.ephemeral_storage_volume != "pvc":
        raise ValueError("--storage-class needs --ephemeral-storage-volume pvc (and --ephemeral-storage-mount PATH)")
    if args.ephemeral_storage_volume != "emptydir" and not args.ephemeral_storage_mount:
        raise ValueError("--ephemeral-storage-volume needs --ephemeral-storage-mount PATH")
    if args.ephemeral_storage_mount is not None and not args.ephemeral_storage_mount.startswith("/"):
        raise ValueError(f"--ephemeral-storage-mount {args.ephemeral_storage_mount!r}: expected an absolute path")
    if args.gcs_key_file != k8s.GCS_KEY_FILE and not args.gcs_key_secret:
        raise ValueError("--gcs-key-file needs --gcs-key-secret SECRET")
    mount = args.ephemeral_storage_mount
    timeouts = dict(k8s.parse_timeout(step, value)
                    for step, value in _step_values(args.timeout, "timeout").items())
    return k8s.KubernetesOptions(
        secret_env=tuple(k8s.parse_secret_env(s) for s in args.secret_env),
        gcs_key_secret=k8s.parse_secret_name(args.gcs_key_secret) if args.gcs_key_secret else None,
        gcs_key_file=args.gcs_key_file,
        gpu_node_selector=dict(k8s.parse_label(s, "--gpu-node-selector") for s in args.gpu_node_selector),
        gpu_tolerations=tuple(k8s.parse_toleration(s) for s in args.gpu_toleration),
        retries=args.retries,
        retry_backoff=k8s.parse_duration(args.retry_backoff, "--retry-backoff") if args.retry_backoff else None,
        retry_backoff_factor=args.retry_backoff_factor,
        retry_backoff_max=(k8s.parse_duration(args.retry_backoff_max, "--retry-backoff-max")
                           if args.retry_backoff_max else None),
        timeouts=timeouts,
        labels=dict(k8s.parse_label(s) for s in args.label),
        ephemeral_storage=step_resources.resolve_ephemeral(
            args.resource_profile, _step_values(args.ephemeral_storage, "ephemeral_storage")) if mount else {},
        ephemeral_mount=mount,
        ephemeral_volume=args.ephemeral_storage_volume,
        storage_class=args.storage_class)


def is_stale(package: str | Path) -> bool:
    """True if ``package`` is missing or older than a source file of components/ or pipelines/."""
    package = Path(package)
    if not package.is_file():
        return True
    built = package.stat().st_mtime
    return any(src.stat().st_mtime > built for folder in SOURCES for src in folder.glob("*.py"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.compile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="build", help="output folder (default build)")
    parser.add_argument("--registry", default=REGISTRY, help=f"image registry (default {REGISTRY})")
    parser.add_argument("--image", default=IMAGE, help=f"image name (default {IMAGE})")
    parser.add_argument("--tag", default=TAG, help=f"image tag; the GPU image is TAG-gpu (default {TAG})")
    parser.add_argument("--accelerator-type", default=DEFAULT_ACCELERATOR_TYPE,
                        help="GPU variant: accelerator of train, evaluate and serving, e.g. nvidia.com/gpu (KFP) or "
                             f"NVIDIA_TESLA_T4 (Vertex AI) (default {DEFAULT_ACCELERATOR_TYPE})")
    parser.add_argument("--accelerator-count", type=int, default=1, help="GPU variant: accelerators per step")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated subset of cpu,gpu (default), or {LOCAL_VARIANT}: the package "
                             "kfp.local runs (pipelines.run_local compiles it itself)")
    parser.add_argument("--image-ref", default=None,
                        help="the CPU image reference REGISTRY/IMAGE:TAG (the GPU one adds -gpu); replaces "
                             "--registry/--image/--tag (the Makefile passes its IMAGE_REF)")
    parser.add_argument("--pushed", default=None, metavar="FILE",
                        help="build/images.json of `make push`: where it records these very tags as pushed, "
                             "compile with their digests (REPO@sha256:...) instead of the tags")
    parser.add_argument("--resource-profile", default=step_resources.DEFAULT_PROFILE,
                        choices=sorted(step_resources.PROFILES),
                        help=f"CPU/memory requests and limits of every step (default {step_resources.DEFAULT_PROFILE}: "
                             "a real RecFlow day; small: synthetic data; none: the cluster's defaults)")
    for field in step_resources.FIELDS:
        parser.add_argument(f"--{field.replace('_', '-')}", action="append", default=[], metavar="STEP=VALUE",
                            help=f"override one step's {field.replace('_', ' ')} (repeatable), e.g. "
                                 + ("preprocess=16" if field.startswith("cpu") else "preprocess=60G"))
    _add_kubernetes_arguments(parser)
    args = parser.parse_args(argv)
    variants = tuple(v.strip() for v in args.variants.split(",") if v.strip())
    bad = [v for v in variants if v not in (*VARIANTS, LOCAL_VARIANT)]
    if bad or not variants:
        parser.error(f"--variants: unknown {bad or 'empty'}; choose from {', '.join((*VARIANTS, LOCAL_VARIANT))}")
    if args.accelerator_count < 1:
        parser.error("--accelerator-count must be >= 1")
    try:
        overrides = {field: _step_values(getattr(args, field), field) for field in step_resources.FIELDS}
        resources = step_resources.resolve(args.resource_profile, overrides)
        gpu_resources = step_resources.resolve(args.resource_profile, overrides, gpu=True)
        kubernetes = kubernetes_options(args)
    except ValueError as exc:
        parser.error(str(exc))
    tags = {v: variant_ref(args.image_ref, v == "gpu") if args.image_ref
            else image_ref(args.registry, args.image, args.tag, gpu=v == "gpu") for v in variants}
    images = tags
    if args.pushed:
        from pipelines.images import pushed_refs

        images = pushed_refs(tags, Path(args.pushed))
    paths = compile_all(args.out, registry=args.registry, image=args.image, tag=args.tag,
                        accelerator_type=args.accelerator_type, accelerator_count=args.accelerator_count,
                        variants=variants, ref=args.image_ref, images=images, resources=resources,
                        gpu_resources=gpu_resources,
                        kubernetes=kubernetes)
    platform = "" if kubernetes == k8s.KubernetesOptions() else ", Kubernetes settings"
    for variant, path in paths.items():
        pinned = "" if images[variant] == tags[variant] else f" = {tags[variant]} as pushed"
        print(f"{variant}: {path} (image {images[variant]}{pinned}, resources {args.resource_profile}{platform})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
