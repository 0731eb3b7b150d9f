"""The project images the components run in, and the options every component shares.

A lightweight component's image is fixed when the pipeline is compiled, so the image
reference is a module constant built from ``LCRON_REGISTRY``, ``LCRON_IMAGE`` and
``LCRON_TAG`` (the Makefile's REGISTRY / IMAGE / TAG); ``pipelines.compile`` can also
pass an explicit image per variant. The GPU image carries the same tag with ``-gpu``.
"""

from __future__ import annotations

import os

REGISTRY = os.environ.get("LCRON_REGISTRY", "localhost:5000")
IMAGE = os.environ.get("LCRON_IMAGE", "lcron-pipelines")
TAG = os.environ.get("LCRON_TAG", "latest")
GPU_SUFFIX = "-gpu"


def image_ref(registry: str = REGISTRY, image: str = IMAGE, tag: str = TAG, *, gpu: bool = False) -> str:
    """``REGISTRY/IMAGE:TAG`` (``TAG-gpu`` for the GPU variant); an empty registry is left out."""
    name = f"{registry.rstrip('/')}/{image}" if registry else image
    return f"{name}:{tag}{GPU_SUFFIX if gpu else ''}"


CPU_IMAGE = image_ref()
GPU_IMAGE = image_ref(gpu=True)

# Every component: the CPU project image by default (the GPU variant of the pipeline swaps
# the image per task), and no run-time pip install - kfp is part of the image.
COMPONENT_OPTIONS = {"base_image": CPU_IMAGE, "install_kfp_package": False}
