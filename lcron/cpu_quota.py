"""Size the thread pools to the CPUs the container may use, not the node's cores.

torch, OpenMP and the BLAS libraries size their pools from the cores they see
(``os.cpu_count()`` or the affinity mask). A pod limited to 2 CPUs on a 64-core node sees 64
cores: 64 spinning threads share 2 CPUs of quota and the step runs several times slower
(docs/benchmarks.md). The limit is the cgroup's CPU quota:

* cgroup v2: ``cpu.max`` of the process's cgroup and its ancestors (``"200000 100000"`` =
  2 CPUs; ``"max ..."`` = none);
* cgroup v1: ``cpu.cfs_quota_us / cpu.cfs_period_us`` of the ``cpu`` controller's cgroup and
  its ancestors (``-1`` = none).

:func:`limit_thread_pools` (run when ``lcron`` is imported, so every command and every
pipeline step gets it) sets ``OMP_NUM_THREADS``, ``MKL_NUM_THREADS`` and
``OPENBLAS_NUM_THREADS`` to ``ceil(quota)`` when the quota is below the CPUs the process may
run on and the user set none of them, and sizes torch's pool too when torch is already
loaded. ``LCRON_CGROUP_ROOT`` / ``LCRON_PROC_CGROUP`` point the reader at another tree (tests).
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

__all__ = ["cgroup_cpu_limit", "usable_cpus", "limit_thread_pools", "THREAD_VARIABLES"]

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _ancestors(root: Path, rel: str) -> list[Path]:
    """``root/rel`` and every folder above it up to ``root`` (a limit anywhere above applies)."""
    parts = [p for p in rel.strip("/").split("/") if p and p not in (".", "..")]
    return [root.joinpath(*parts[:i]) for i in range(len(parts), -1, -1)]


def _v2_limit(root: Path, rel: str) -> float | None:
    limits = []
    for folder in _ancestors(root, rel):
        text = _read(folder / "cpu.max")
        if not text:
            continue
        quota, _, period = text.partition(" ")
        try:
            if quota != "max" and float(period or 100000) > 0:
                limits.append(float(quota) / float(period or 100000))
        except ValueError:
            continue
    return min(limits) if limits else None


def _v1_limit(root: Path, rel: str) -> float | None:
    limits = []
    for controller in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        base = root / controller
        if not base.is_dir():
            continue
        for folder in _ancestors(base, rel):
            quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
            try:
                if quota and period and int(quota) > 0 and int(period) > 0:
                    limits.append(int(quota) / int(period))
            except ValueError:
                continue
        break
    return min(limits) if limits else None


def cgroup_cpu_limit(root: str | os.PathLike | None = None, proc_cgroup: str | os.PathLike | None = None
                     ) -> float | None:
    """The CPUs this process's cgroup may use (e.g. 2.0, or 0.5), or None without a limit."""
    root = Path(root or os.environ.get("LCRON_CGROUP_ROOT", "/sys/fs/cgroup"))
    lines = _read(Path(proc_cgroup or os.environ.get("LCRON_PROC_CGROUP", "/proc/self/cgroup"))) or ""
    v1_rel = v2_rel = None
    for line in lines.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, rel = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            v2_rel = rel
        elif "cpu" in controllers.split(","):
            v1_rel = rel
    limits = [x for x in ((_v1_limit(root, v1_rel) if v1_rel is not None else None),
                          (_v2_limit(root, v2_rel) if v2_rel is not None else None)) if x is not None]
    return min(limits) if limits else None


def usable_cpus(limit: float | None = None) -> int:
    """The threads a pool should use: the CPUs of the affinity mask, capped by the quota
    (rounded up: 1.5 CPUs of quota keep 2 threads busy)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    limit = cgroup_cpu_limit() if limit is None else limit
    return cpus if limit is None else max(1, min(cpus, math.ceil(limit - 1e-9)))


def limit_thread_pools() -> int | None:
    """Set the pools to :func:`usable_cpus` when a CPU quota is below the visible CPUs and the
    user chose nothing; returns the thread count set, or None when nothing was changed."""
    if any(os.environ.get(v) for v in THREAD_VARIABLES):
        return None  # the user's choice wins
    limit = cgroup_cpu_limit()
    if limit is None:
        return None
    threads = usable_cpus(limit)
    try:
        visible = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        visible = os.cpu_count() or 1
    if threads >= visible:
        return None
    for var in THREAD_VARIABLES:
        os.environ[var] = str(threads)
    torch = sys.modules.get("torch")
    if torch is not None:  # already loaded: its pool was sized from the cores it saw
        torch.set_num_threads(threads)
    return threads
