"""Cascade training losses: LCRON and seven baselines behind one registry.

    from lcron.losses import build_loss, METHODS
    loss = build_loss("lcron", stages=2, tau=50)     # an nn.Module
    out = loss([z_retrieval, z_prerank], labels, mask)
    out.total.backward(); out.parts                  # {"e2e": ..., "single/retrieval": ...}

``METHODS`` is the tuple of registered names (built-ins first, in the order of
METHODS.md; read live, so a method registered later appears too). A new method is one new
module in this folder with a ``@register("name")`` class: this package imports every
module in its folder.
"""

from __future__ import annotations

from typing import Any

from .base import CascadeLoss, LossInputs, LossOutput
from .registry import build_loss, discover, get_method, method_options, methods, parse_options, register, unregister

# The built-ins in the canonical order of METHODS.md, then any other module of the folder.
from . import bce, icc, rankflow, fs_ranknet, fs_lambdaloss, arf, lcron  # noqa: E402,F401  (registration)

discover(__path__, __name__)

__all__ = [
    "METHODS",
    "CascadeLoss",
    "LossInputs",
    "LossOutput",
    "build_loss",
    "get_method",
    "method_options",
    "methods",
    "parse_options",
    "register",
    "unregister",
]


def __getattr__(name: str) -> Any:
    # METHODS is computed on access so that methods registered after import (a plugin
    # module, a test) are listed too.
    if name == "METHODS":
        return methods()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
