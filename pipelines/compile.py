"""Compile the cascade pipeline to KFP IR YAML: a CPU and a GPU variant.

    python -m pipelines.compile --out build [--image-ref R/NAME:TAG | --registry R --image NAME --tag T]
                                [--accelerator-type nvidia.com/gpu --accelerator-count 1]
                                [--resource-profile recflow|small|none] [--memory STEP=48G ...]

writes ``build/cascade-cpu.yaml`` (CPU image on every step) and ``build/cascade-gpu.yaml``
(GPU image on every step, an accelerator request on train, evaluate and serving, and
``device=cuda`` by default: a GPU step never trains on the CPU without a word). Both files
are plain pipeline packages: submit them with ``kfp run submit``,
``pipelines.submit`` or Vertex AI, or run them locally with ``pipelines.run_local``.
``--image-ref`` is the one reference the Makefile computes (``make image-refs``); the GPU
variant uses it with ``-gpu`` appended. Every step gets the CPU/memory requests and limits
of a resource profile (pipelines/resources.py), each overridable per step.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Mapping

from components.common import GPU_SUFFIX, IMAGE, REGISTRY, TAG, image_ref
from pipelines import resources as step_resources

VARIANTS = ("cpu", "gpu")
DEFAULT_ACCELERATOR_TYPE = "nvidia.com/gpu"
REPO = Path(__file__).resolve().parents[1]
# Sources the compiled YAML is made from: a package older than any of them is stale.
SOURCES = (REPO / "components", REPO / "pipelines")


def package_path(out_dir: str | Path, variant: str) -> Path:
    """``<out_dir>/cascade-<variant>.yaml``."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
    return Path(out_dir) / f"cascade-{variant}.yaml"


def compile_variant(variant: str, path: str | Path, *, registry: str = REGISTRY, image: str = IMAGE,
                    tag: str = TAG, accelerator_type: str = DEFAULT_ACCELERATOR_TYPE,
                    accelerator_count: int = 1, ref: str | None = None, exact_image: str | None = None,
                    resources: Mapping[str, step_resources.StepResources] | None = None) -> Path:
    """Compile one variant to ``path`` (written whole or not at all) and return the path.

    ``ref`` (the CPU image reference; the GPU variant appends ``-gpu``) replaces
    registry/image/tag; ``exact_image`` (e.g. a pushed ``REPO@sha256:...``) replaces both;
    ``resources`` are the steps' requests and limits."""
    from kfp import compiler

    from lcron import atomic
    from pipelines.cascade_pipeline import build_pipeline

    gpu = variant == "gpu"
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
    image_name = exact_image or (variant_ref(ref, gpu) if ref else image_ref(registry, image, tag, gpu=gpu))
    pipeline = build_pipeline(image_name, accelerator_type=accelerator_type if gpu else None,
                              accelerator_count=accelerator_count,
                              # eager + CUDA graph is the GPU default (lcron.train_step.DEVICE_DEFAULTS)
                              compile_default=False, device_default="cuda" if gpu else "auto",
                              resources=resources)
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
                resources: Mapping[str, step_resources.StepResources] | None = None) -> dict[str, Path]:
    """Compile every variant into ``out_dir``; returns variant -> path. ``images``: an exact
    image per variant (the pushed digests, pipelines.images), overriding the tag references."""
    return {v: compile_variant(v, package_path(out_dir, v), registry=registry, image=image, tag=tag,
                               accelerator_type=accelerator_type, accelerator_count=accelerator_count, ref=ref,
                               exact_image=(images or {}).get(v), resources=resources)
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
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of cpu,gpu")
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
    args = parser.parse_args(argv)
    variants = tuple(v.strip() for v in args.variants.split(",") if v.strip())
    bad = [v for v in variants if v not in VARIANTS]
    if bad or not variants:
        parser.error(f"--variants: unknown {bad or 'empty'}; choose from {', '.join(VARIANTS)}")
    if args.accelerator_count < 1:
        parser.error("--accelerator-count must be >= 1")
    try:
        resources = step_resources.resolve(args.resource_profile, {
            field: _step_values(getattr(args, field), field) for field in step_resources.FIELDS})
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
                        variants=variants, ref=args.image_ref, images=images, resources=resources)
    for variant, path in paths.items():
        pinned = "" if images[variant] == tags[variant] else f" = {tags[variant]} as pushed"
        print(f"{variant}: {path} (image {images[variant]}{pinned}, resources {args.resource_profile})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
