"""Benchmarks behind ``lcron bench`` / ``make bench``.

A benchmark is a function ``fn(ctx: BenchContext) -> list[dict]`` registered with
:func:`register`; each row it returns has ``name``, ``setting``, ``value``, ``unit`` and
any extra fields. :func:`run_benchmarks` runs the registered functions, prints one table
and writes everything to JSON (default ``build/bench.json``) with the environment
(device, threads) and the data shape, so numbers from different machines or commits can
be compared. Later work adds benchmarks (training steps/s, evaluation, serving) with one
decorated function each.

Each timed step runs in a fresh child process (``python -m lcron.bench --worker ...``):
the timing excludes interpreter start-up and imports, and the child's own peak resident
memory (``ru_maxrss``) is the step's peak, not the parent's.

Data sets are generated once per mode under ``build/bench-data/<mode>`` with a fixed seed
and reused while their parameters match:

=======  ====================================================================
quick    2 days x 100 requests (CI: checks every benchmark runs)
default  4 days x 2,000 requests (the synthetic generator's defaults)
full     8 days x 10,000 requests, 2,000 users, 20,000 items
=======  ====================================================================
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from lcron.atomic import write_json
from lcron.errors import ConfigError, LcronError

__all__ = ["BenchContext", "BENCHMARKS", "SIZES", "register", "run_benchmarks", "environment", "format_table"]

SIZES: dict[str, dict[str, Any]] = {
    "quick": {"num_days": 2, "requests_per_day": 100, "users": 100, "items": 1000, "seed": 0, "repeats": 1},
    "default": {"num_days": 4, "requests_per_day": 2000, "users": 500, "items": 5000, "seed": 0, "repeats": 3},
    "full": {"num_days": 8, "requests_per_day": 10000, "users": 2000, "items": 20000, "seed": 0, "repeats": 3},
}

BenchFn = Callable[["BenchContext"], list[dict[str, Any]]]
BENCHMARKS: dict[str, BenchFn] = {}


def register(name: str) -> Callable[[BenchFn], BenchFn]:
    """Decorator: add ``fn`` to the benchmarks run by ``lcron bench`` under ``name``."""
    def deco(fn: BenchFn) -> BenchFn:
        if name in BENCHMARKS:
            raise ConfigError(f"benchmark {name!r} is registered twice")
        BENCHMARKS[name] = fn
        return fn
    return deco


@dataclass
class BenchContext:
    """What a benchmark gets: the mode, the shared data set and a scratch folder."""

    mode: str
    data_dir: Path
    work_dir: Path
    progress: bool = True
    data_shape: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> dict[str, Any]:
        return SIZES[self.mode]

    def recflow(self) -> Path:
        """The mode's synthetic RecFlow folder, generated on first use and reused after."""
        root = self.data_dir / self.mode
        marker = self.data_dir / f"{self.mode}.json"
        params = {k: v for k, v in self.size.items() if k != "repeats"}
        if root.is_dir() and marker.is_file():
            try:
                if json.loads(marker.read_text()) == params:
                    return root
            except ValueError:
                pass
        from lcron.data.synthetic import generate

        shutil.rmtree(root, ignore_errors=True)
        self.log(f"generating bench data ({self.mode}): {params}")
        generate(root, progress=self.progress, **params)
        write_json(marker, params)
        return root

    def log(self, msg: str) -> None:
        if self.progress:
            print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ environment
def environment() -> dict[str, Any]:
    """Device and thread facts of this machine (no torch import)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count() or 1
    return {"device": "cpu", "cpu": cpu, "cpu_count": os.cpu_count(), "usable_cpus": usable,
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "python": platform.python_version(),
            "platform": platform.platform(), "load_average_1m": _loadavg()}


def _loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


# ------------------------------------------------------------------ child runs
def _run_worker(args: list[str]) -> dict[str, Any]:
    """Run ``python -m lcron.bench --worker ARGS`` and return the JSON line it prints."""
    cmd = [sys.executable, "-m", "lcron.bench", "--worker", *args]
    pkg_parent = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [pkg_parent, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise LcronError(f"benchmark step {' '.join(args[:1])} failed (exit {proc.returncode}): {tail[0]}")
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise LcronError(f"benchmark step {' '.join(args[:1])} printed no result")


def _memory_mb() -> tuple[float, float]:
    """(current, peak) resident memory of this process in MiB.

    Linux: VmRSS / VmHWM of /proc/self/status (the high-water mark belongs to this
    process image; ``ru_maxrss`` would carry over the parent's peak across fork + exec).
    Elsewhere: ``ru_maxrss`` for both.
    """
    try:
        status = Path("/proc/self/status").read_text().splitlines()
        vals = {ln.split(":")[0]: int(ln.split()[1]) for ln in status if ln.startswith(("VmRSS", "VmHWM"))}
        return vals["VmRSS"] / 1024, vals["VmHWM"] / 1024
    except (OSError, KeyError, ValueError, IndexError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return peak, peak


def _reset_peak_memory() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0) so the peak covers only the step."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _worker_preprocess(source: str, out: str, stages: str) -> dict[str, Any]:
    import pyarrow.ipc  # noqa: F401 - imported before the clock starts, as in a warm process

    from lcron.data.shards import preprocess

    _reset_peak_memory()
    base_rss, _ = _memory_mb()
    t0, c0 = time.perf_counter(), time.process_time()
    shards = preprocess(source, out, int(stages), progress=False)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    _, peak = _memory_mb()
    requests = sum(shards.num_requests(d) for d in shards.days)
    first = shards.manifest(shards.days[0])
    return {"wall_s": wall, "cpu_s": cpu, "requests": requests, "days": len(shards.days),
            "setting": shards.setting.name, "peak_rss_mb": peak, "baseline_rss_mb": base_rss,
            "items_per_label": {k: v["mean"] for k, v in first["items_per_label"].items()}}


def _worker_main(argv: list[str]) -> int:
    if not argv or argv[0] != "--worker" or len(argv) < 2:
        print("usage: python -m lcron.bench --worker STEP ARGS...", file=sys.stderr)
        return 2
    step, args = argv[1], argv[2:]
    if step == "preprocess":
        result = _worker_preprocess(*args)
    else:
        print(f"unknown benchmark step {step!r}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


# ------------------------------------------------------------------ benchmarks
@register("preprocess")
def bench_preprocess(ctx: BenchContext) -> list[dict[str, Any]]:
    """RecFlow files in -> shards out (feather, both pickles, hashing, writing) per setting,
    fresh output folder each run; value = requests/s (best of the runs)."""
    source = ctx.recflow()
    rows = []
    for stages in (2, 3):
        runs = []
        for _ in range(ctx.size["repeats"]):
            out = Path(tempfile.mkdtemp(prefix="shards-", dir=ctx.work_dir))
            shutil.rmtree(out)
            try:
                runs.append(_run_worker(["preprocess", str(source), str(out), str(stages)]))
            finally:
                shutil.rmtree(out, ignore_errors=True)
        rates = [r["requests"] / r["wall_s"] for r in runs]
        best = max(range(len(runs)), key=lambda i: rates[i])
        r = runs[best]
        for lb, mean in r["items_per_label"].items():
            ctx.data_shape.setdefault("stored_items_per_label_mean", {})[lb] = round(mean, 2)
        rows.append({
            "name": "preprocess", "setting": r["setting"], "value": round(rates[best], 1), "unit": "requests/s",
            "requests": r["requests"], "days": r["days"], "wall_s": round(r["wall_s"], 4),
            "cpu_s": round(r["cpu_s"], 4), "cpu_requests_per_s": round(r["requests"] / max(r["cpu_s"], 1e-9), 1),
            "peak_rss_mb": round(max(x["peak_rss_mb"] for x in runs), 1),
            "baseline_rss_mb": round(r["baseline_rss_mb"], 1), "runs": len(runs),
            "all_values": [round(x, 1) for x in rates],
        })
    return rows


# ------------------------------------------------------------------ runner
def format_table(rows: list[dict[str, Any]]) -> str:
    """One line per row: name, setting, value, unit and the extra scalar fields."""
    head = f"{'benchmark':<14}{'setting':<13}{'value':>14}  {'unit':<12}details"
    lines = [head, "-" * len(head)]
    for r in rows:
        extra = ", ".join(f"{k}={v}" for k, v in r.items()
                          if k not in ("name", "setting", "value", "unit") and not isinstance(v, (list, dict)))
        lines.append(f"{r['name']:<14}{str(r.get('setting', '')):<13}{r['value']:>14,.1f}  {r['unit']:<12}{extra}")
    return "\n".join(lines)


def run_benchmarks(mode: str = "default", json_path: str | Path | None = "build/bench.json",
                   data_dir: str | Path = "build/bench-data", only: list[str] | None = None,
                   progress: bool = True) -> dict[str, Any]:
    """Run the registered benchmarks (or ``only`` those), print the table, write JSON."""
    if mode not in SIZES:
        raise ConfigError(f"bench mode {mode!r}; expected one of {sorted(SIZES)}")
    names = list(BENCHMARKS) if not only else only
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise ConfigError(f"unknown benchmark(s) {unknown}; known: {sorted(BENCHMARKS)}")
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    size = SIZES[mode]
    with tempfile.TemporaryDirectory(prefix="lcron-bench-", dir=data_dir) as work:
        ctx = BenchContext(mode=mode, data_dir=data_dir, work_dir=Path(work), progress=progress,
                           data_shape={"days": size["num_days"], "requests_per_day": size["requests_per_day"],
                                       "requests": size["num_days"] * size["requests_per_day"],
                                       "users": size["users"], "items": size["items"]})
        rows: list[dict[str, Any]] = []
        for name in names:
            ctx.log(f"bench {name} ...")
            rows.extend(BENCHMARKS[name](ctx))
    env = environment()
    shape = ctx.data_shape
    print(f"data ({mode}): {shape['requests']} requests = {shape['days']} days x {shape['requests_per_day']}, "
          f"stored candidates per label (mean): {shape.get('stored_items_per_label_mean', 'n/a')}")
    print(f"device: {env['device']} ({env['cpu']}), {env['usable_cpus']} usable CPU(s), load {env['load_average_1m']}")
    print(format_table(rows))
    result = {"schema": "lcron-bench/1", "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "mode": mode, "environment": env, "data": shape, "results": rows}
    if json_path is not None:
        write_json(json_path, result)
        print(f"wrote {json_path}")
    return result


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
