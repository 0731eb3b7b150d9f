"""The quota grid of the evaluation's quota sweep: parsing, checking and the default grid.

A quota tuple has one quota per stage, non-increasing and at most the list size N (the
setting's own rule, :class:`lcron.settings.Setting`). The sweep re-runs the cascade with
each tuple of the grid on a seed's fixed scores, so the grid costs metrics time only.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Sequence

import numpy as np

from ..errors import ConfigError
from ..settings import Setting, SettingError

SWEEP_POINTS = 5


def check_quotas(quotas: Sequence[int], setting: Setting) -> tuple[int, ...]:
    """``quotas`` as a valid quota tuple of ``setting`` (one per stage, non-increasing, <= N)."""
    try:
        qs = tuple(int(q) for q in quotas)
    except (TypeError, ValueError):
        raise ConfigError(f"quota tuple {list(quotas)!r} must hold integers") from None
    if len(qs) != setting.num_stages:
        raise ConfigError(f"quota tuple {list(qs)} has {len(qs)} entries; setting {setting.name!r} has "
                          f"{setting.num_stages} stages ({', '.join(setting.stage_names)})")
    try:
        dataclasses.replace(setting, quotas=qs)
    except SettingError as exc:
        raise ConfigError(f"quota tuple {list(qs)}: {exc}") from None
    return qs


def parse_quota_grid(text: str, setting: Setting) -> list[tuple[int, ...]]:
    """Parse "30,20;25,20;40,20" (tuples separated by ';', quotas by ',') into checked tuples."""
    grid = []
    for part in text.split(";"):
        if not part.strip():
            continue
        try:
            qs = [int(q) for q in part.split(",")]
        except ValueError:
            raise ConfigError(f"--quota-grid: {part.strip()!r} is not a comma-separated list of integers "
                              "(expected e.g. '30,20;25,20')") from None
        grid.append(check_quotas(qs, setting))
    if not grid:
        raise ConfigError(f"--quota-grid {text!r} holds no quota tuple (expected e.g. '30,20;25,20')")
    return list(dict.fromkeys(grid))


def default_quota_grid(setting: Setting, points: int = SWEEP_POINTS) -> list[tuple[int, ...]]:
    """The setting's quotas plus, for every stage but the last, ``points`` values between the
    next stage's quota and what the stage receives (N for stage 1, the previous quota after),
    the other quotas fixed. Two-stage: (20, 20), (25, 20), (30, 20), (35, 20), (40, 20)."""
    base = tuple(setting.quotas)
    grid = {base}
    for s in range(setting.num_stages - 1):
        lo = base[s + 1]
        hi = setting.list_size if s == 0 else base[s - 1]
        for v in np.unique(np.rint(np.linspace(lo, hi, points)).astype(int)):
            grid.add(base[:s] + (int(v),) + base[s + 1:])
    return sorted(grid)


def resolve_quota_grid(quota_grid: "str | Iterable[Sequence[int]] | None", setting: Setting) -> list[tuple[int, ...]]:
    """The grid to sweep: the default grid for None, else the parsed or checked tuples (duplicates dropped)."""
    if quota_grid is None:
        return default_quota_grid(setting)
    if isinstance(quota_grid, str):
        return parse_quota_grid(quota_grid, setting)
    grid = [check_quotas(q, setting) for q in quota_grid]
    if not grid:
        raise ConfigError("the quota grid is empty")
    return list(dict.fromkeys(grid))
