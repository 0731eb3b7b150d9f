"""Compile the cascade pipeline to KFP IR YAML: a CPU and a GPU variant.

    python -m pipelines.compile --out build [--registry R --image NAME --tag T]
                                [--accelerator-type nvidia.com/gpu --accelerator-count 1]

writes ``build/cascade-cpu.yaml`` (CPU image on every step) and ``build/cascade-gpu.yaml``
(GPU image on every step, an accelerator request on train, evaluate and serving,
torch.compile on by default). Both files are plain pipeline packages: submit them with ``kfp run submit``,
``pipelines.submit`` or Vertex AI, or run them locally with ``pipelines.run_local``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from components.common import IMAGE, REGISTRY, TAG, image_ref

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
                    accelerator_count: int = 1) -> Path:
    """Compile one variant to ``path`` (written whole or not at all) and return the path."""
    from kfp import compiler

    from lcron import atomic
    from pipelines.cascade_pipeline import build_pipeline

    gpu = variant == "gpu"
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
    pipeline = build_pipeline(image_ref(registry, image, tag, gpu=gpu),
                              accelerator_type=accelerator_type if gpu else None,
                              accelerator_count=accelerator_count,
                              # eager + CUDA graph is the GPU default (lcron.train_step.DEVICE_DEFAULTS)
                              compile_default=False)
    path = Path(path)
    # The compiler writes to a file name: compile into a temporary folder, then put the
    # text in place atomically (a stale-but-whole package beats a truncated one).
    with tempfile.TemporaryDirectory(prefix="lcron-compile-") as tmp:
        tmp_path = Path(tmp) / path.name
        compiler.Compiler().compile(pipeline, str(tmp_path))
        atomic.write_text(path, tmp_path.read_text())
    return path


def compile_all(out_dir: str | Path = "build", *, registry: str = REGISTRY, image: str = IMAGE, tag: str = TAG,
                accelerator_type: str = DEFAULT_ACCELERATOR_TYPE, accelerator_count: int = 1,
                variants: tuple[str, ...] = VARIANTS) -> dict[str, Path]:
    """Compile every variant into ``out_dir``; returns variant -> path."""
    return {v: compile_variant(v, package_path(out_dir, v), registry=registry, image=image, tag=tag,
                               accelerator_type=accelerator_type, accelerator_count=accelerator_count)
            for v in variants}


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
    args = parser.parse_args(argv)
    variants = tuple(v.strip() for v in args.variants.split(",") if v.strip())
    bad = [v for v in variants if v not in VARIANTS]
    if bad or not variants:
        parser.error(f"--variants: unknown {bad or 'empty'}; choose from {', '.join(VARIANTS)}")
    if args.accelerator_count < 1:
        parser.error("--accelerator-count must be >= 1")
    paths = compile_all(args.out, registry=args.registry, image=args.image, tag=args.tag,
                        accelerator_type=args.accelerator_type, accelerator_count=args.accelerator_count,
                        variants=variants)
    for variant, path in paths.items():
        print(f"{variant}: {path} (image {image_ref(args.registry, args.image, args.tag, gpu=variant == 'gpu')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
