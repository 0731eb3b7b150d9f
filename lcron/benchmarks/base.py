"""The bottom of the benchmark harness: what every benchmark, the runner, the vocabulary rows
and the profiler share, and nothing that depends on them.

* the bench modes: :data:`SIZES` (the cached data set of each mode) and :data:`RUN_PARAMS`
  (how the model benchmarks run in it), the settings :data:`STAGES` and their names;
* :class:`BenchContext`, what a benchmark gets (mode, data, scratch folder, the shard sets
  and trained runs it shares with the other benchmarks of a bench run);
* machine facts (:func:`environment`, :func:`loadavg`, :func:`memory_mb`);
* the child-process protocol: :func:`run_worker` runs ``python -m lcron.benchmarks --worker
  STEP ARGS`` (:func:`run_child` another module speaking it) and returns the JSON line it prints.

It imports no torch and no other module of the harness; the children are named by module
(a command line), never imported. What stays in lcron/benchmarks/suite.py: the registry of
benchmarks and the measuring children with their peak-memory reset.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lcron.atomic import write_json
from lcron.errors import LcronError

__all__ = ["SIZES", "RUN_PARAMS", "STAGES", "SETTING_NAMES", "WORKER_MODULE", "BenchContext", "run_evaluate_worker",
           "environment", "loadavg", "memory_mb", "run_worker", "run_child", "rounded", "all_days"]

SIZES: dict[str, dict[str, Any]] = {
    "quick": {"num_days": 2, "requests_per_day": 100, "users": 100, "items": 1000, "seed": 0, "repeats": 1},
    "default": {"num_days": 4, "requests_per_day": 2000, "users": 500, "items": 5000, "seed": 0, "repeats": 3},
    "full": {"num_days": 8, "requests_per_day": 10000, "users": 2000, "items": 20000, "seed": 0, "repeats": 3},
}

# How the model benchmarks run in each mode (kept apart from SIZES: SIZES keys the cached data).
# Training uses every day of the data set, ``steps_per_day`` batches each: the first step is
# the warm-up (compile), the others are measured - default 4 days x 1 = 1 + 3 steps.
RUN_PARAMS: dict[str, dict[str, Any]] = {
    "quick": {"batch_size": 32, "steps_per_day": 1, "compile": False, "process_per_method": False,
              "k1": (100,), "serving_requests": 64, "serving_repeats": 1, "metrics_repeats": 1},
    "default": {"batch_size": 1024, "steps_per_day": 1, "compile": True, "process_per_method": True,
                "k1": (100, 500), "serving_requests": 1024, "serving_repeats": 2, "metrics_repeats": 5},
    "full": {"batch_size": 1024, "steps_per_day": 2, "compile": True, "process_per_method": True,
             "k1": (100, 500, 1000), "serving_requests": 4096, "serving_repeats": 3, "metrics_repeats": 5},
}

STAGES: tuple[int, ...] = (2, 3)
SETTING_NAMES = {2: "two_stage", 3: "three_stage"}

#: The module whose ``--worker STEP ARGS`` runs a measured step in a child process.
WORKER_MODULE = "lcron.benchmarks"


@dataclass
class BenchContext:
    """What a benchmark gets: the mode, the shared data set and a scratch folder.

    Shard sets and trained LCRON runs are made on first use and shared by the benchmarks of
    one bench run (the evaluation and serving rows reuse the run the training row made).
    """

    mode: str
    data_dir: Path
    work_dir: Path
    progress: bool = True
    device: str = "auto"  # auto (CUDA when present), cpu or cuda: where the model benchmarks run
    data_shape: dict[str, Any] = field(default_factory=dict)
    shard_dirs: dict[int, Path] = field(default_factory=dict)
    runs: dict[tuple[str, int], Path] = field(default_factory=dict)
    scores: dict[int, Path] = field(default_factory=dict)

    @property
    def size(self) -> dict[str, Any]:
        return SIZES[self.mode]

    @property
    def params(self) -> dict[str, Any]:
        return RUN_PARAMS[self.mode]

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

    def shards(self, stages: int) -> Path:
        """The mode's data preprocessed for ``stages`` (in a child process), made once per bench run."""
        if stages not in self.shard_dirs:
            out = self.work_dir / f"shards-{stages}"
            res = run_worker(["preprocess", str(self.recflow()), str(out), str(stages)])
            self.note_shape(res)
            self.shard_dirs[stages] = out
        return self.shard_dirs[stages]

    def train(self, methods: list[str], stages: int) -> list[dict[str, Any]]:
        """Train ``methods`` for ``stages`` in one child process (fresh run folders) and keep
        the runs (the evaluation and serving rows reuse LCRON's): one worker result per method."""
        p = self.params
        outs = [self.work_dir / "runs" / f"{m}-{stages}" for m in methods]
        for out in outs:
            shutil.rmtree(out, ignore_errors=True)
        res = run_worker(["train", json.dumps({
            "shards": str(self.shards(stages)), "outs": [str(o) for o in outs], "methods": list(methods),
            "batch_size": p["batch_size"], "steps_per_day": p["steps_per_day"], "compile": p["compile"],
            "device": self.device})])
        for m, out in zip(methods, outs):
            self.runs[(m, stages)] = out
        return res["runs"]

    def lcron_run(self, stages: int) -> Path:
        """A trained LCRON run of ``stages`` for the evaluation and serving rows."""
        if ("lcron", stages) not in self.runs:
            self.log(f"  training an LCRON run ({SETTING_NAMES[stages]}) for evaluation ...")
            self.train(["lcron"], stages)
        return self.runs[("lcron", stages)]

    def stored_scores(self, stages: int) -> Path:
        """The scores the evaluation benchmark stored (made by running it when it did not run)."""
        if stages not in self.scores:
            run_evaluate_worker(self, stages)
        return self.scores[stages]

    def note_shape(self, res: dict[str, Any]) -> None:
        """Record the stored candidates per label (mean) that a preprocess child reported."""
        for lb, mean in res.get("items_per_label", {}).items():
            self.data_shape.setdefault("stored_items_per_label_mean", {})[lb] = round(mean, 2)

    def log(self, msg: str) -> None:
        if self.progress:
            print(msg, file=sys.stderr, flush=True)


def run_evaluate_worker(ctx: BenchContext, stages: int) -> dict[str, Any]:
    """Run the evaluation worker on the LCRON run of ``stages`` and remember its stored scores."""
    scores = ctx.work_dir / f"scores-{stages}.npz"
    res = run_worker(["evaluate", json.dumps({
        "shards": str(ctx.shards(stages)), "run": str(ctx.lcron_run(stages)),
        "out": str(ctx.work_dir / f"eval-{stages}"), "compile": ctx.params["compile"], "scores_out": str(scores),
        "warm_call": ctx.params["compile"]})])
    ctx.scores[stages] = scores
    return res


# ------------------------------------------------------------------ machine facts
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
            "platform": platform.platform(), "load_average_1m": loadavg()}


def loadavg() -> float | None:
    """The 1-minute load average, rounded (None where the system has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def memory_mb() -> tuple[float, float]:
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


# ------------------------------------------------------------------ child runs
def run_child(module: str, step: str, args: list[str]) -> dict[str, Any]:
    """Run ``python -m MODULE --worker STEP ARGS`` and return the JSON line it prints last."""
    cmd = [sys.executable, "-m", module, "--worker", step, *args]
    pkg_parent = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [pkg_parent, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise LcronError(f"benchmark step {step} failed (exit {proc.returncode}): {tail[0]}")
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise LcronError(f"benchmark step {step} printed no result")


def run_worker(args: list[str]) -> dict[str, Any]:
    """Run ``python -m lcron.benchmarks --worker ARGS`` (a measured step) and return the JSON line it prints."""
    return run_child(WORKER_MODULE, args[0], args[1:])


# ------------------------------------------------------------------ small helpers
def rounded(x: float | None, nd: int = 1) -> float | None:
    """``x`` rounded to ``nd`` decimals as a float (None stays None)."""
    return None if x is None else round(float(x), nd)


def all_days(shard_set: Any) -> str:
    """The ``--days`` spec of every day of a shard set (``FIRST:LAST``)."""
    return f"{shard_set.days[0]}:{shard_set.days[-1]}"
