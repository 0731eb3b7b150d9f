"""The benchmarks behind ``lcron bench`` / ``make bench``: registry, rows, measuring children, runner.

A benchmark is a function ``fn(ctx: BenchContext) -> list[dict]`` registered with
:func:`register`; each row it returns has ``name``, ``setting``, ``value``, ``unit``, often
a ``case`` (the method, the K1) and any extra fields. :func:`run_benchmarks` runs the
registered functions, prints one table and writes everything to JSON (default
``build/bench.json``) with the environment (device, threads, load) and the data shape, so
numbers from different machines or commits can be compared. The rows (docs/benchmarks.md):

==========  ===============================================================================
preprocess  RecFlow files -> shards, requests/s (best of the mode's repeats)
train       one row per method and setting: steady training requests/s of
            :func:`lcron.train.train` (data loading included), its own ``summary.json``
            accounting; the first step (compile) is reported apart
evaluate    the whole evaluation step, :func:`lcron.evaluate.evaluate` on a trained LCRON
            run: loading shards + inference of every stage model + metrics + outputs
train_vocab training at RecFlow vocabulary sizes per embedding optimizer, and the seed
            folder's checkpoint sizes (``checkpoint`` rows; vocabulary.py)
metrics     :func:`lcron.metrics.cascade_metrics` alone on the stored scores of that run
serving     :func:`lcron.serving.evaluate.bench_serving` per K1 (a note if it is absent)
==========  ===============================================================================

Each timed step runs in a fresh child process (``python -m lcron.benchmarks --worker ...``):
the timing excludes interpreter start-up and imports, and the child's own peak resident
memory is the step's peak (VmHWM, reset just before the step), not the parent's. The
parent never imports torch.

Data sets are generated once per mode under ``build/bench-data/<mode>`` with a fixed seed
and reused while their parameters match; the shards and the trained LCRON runs of a
bench run live in a scratch folder that is removed at the end:

=======  ====================================================================
quick    2 days x 100 requests (CI: checks every benchmark runs; batch 32, 1
         measured step per method, compile off)
default  4 days x 2,000 requests (the synthetic generator's defaults); batch 1024,
         1 warm-up + 3 measured steps per method, torch.compile on
full     8 days x 10,000 requests, 2,000 users, 20,000 items; batch 1024, 1 warm-up
         + 15 measured steps per method
=======  ====================================================================

``python -m lcron.benchmarks --profile METHOD [--stages 2|3]`` profiles training steps with
torch.profiler (:func:`lcron.benchmarks.profiler.profile_training`): time per phase of the trainer's
loop, the top operators and their shares, autograd nodes, NeuralSort calls per step, ids
gathered per batch, the fixed per-step cost and, with ``--memory``, the peak tensor memory
by category.

Layers (lcron/benchmarks/__init__.py): the modes, :class:`BenchContext`, machine facts and
the child protocol live in :mod:`lcron.benchmarks.base`, which the vocabulary rows
(vocabulary.py) and the profiler (profiler.py) use too; this module sits on those three,
and ``lcron bench`` (lcron/cli.py) on this one. The ``eval_proc`` row's child runs the
``lcron`` command itself, so it lives above lcron.cli (:mod:`lcron.measured_command`) and
is started by name.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from lcron.atomic import atomic_open, write_json
from lcron.benchmarks.base import (RUN_PARAMS, SETTING_NAMES, SIZES, STAGES, BenchContext, all_days, environment,
                                   loadavg, memory_mb, rounded, run_child, run_evaluate_worker, run_worker)
from lcron.benchmarks.vocabulary import (RECFLOW_ID_COUNTS, VocabularyScaledShards, bench_train_vocab, dir_bytes,
                                         resume_checkpoint)
from lcron.errors import ConfigError
from lcron.memtrim import available_bytes

__all__ = ["BenchContext", "BENCHMARKS", "SIZES", "RUN_PARAMS", "method_order", "register", "run_benchmarks",
           "environment", "format_table", "main"]


def method_order() -> tuple[str, ...]:
    """The training rows' methods: every registered one, in registry order (the eight of
    METHODS.md, then any method added to lcron/losses/)."""
    from lcron.losses import METHODS

    return tuple(METHODS)


BenchFn = Callable[[BenchContext], list[dict[str, Any]]]
BENCHMARKS: dict[str, BenchFn] = {}


def register(name: str) -> Callable[[BenchFn], BenchFn]:
    """Decorator: add ``fn`` to the benchmarks run by ``lcron bench`` under ``name``."""
    def deco(fn: BenchFn) -> BenchFn:
        if name in BENCHMARKS:
            raise ConfigError(f"benchmark {name!r} is registered twice")
        BENCHMARKS[name] = fn
        return fn
    return deco

#: The child that runs an ``lcron`` command in its own process (the ``eval_proc`` row), started by name.
COMMAND_MODULE = "lcron.measured_command"


# ------------------------------------------------------------------ child runs
def _reset_peak_memory() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0) so the peak covers only the step."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


@contextmanager
def _measured() -> Iterator[dict[str, float]]:
    """Wall seconds, CPU seconds and peak/baseline RSS (MiB) of the block, filled in on exit."""
    _reset_peak_memory()
    stats: dict[str, float] = {"baseline_rss_mb": memory_mb()[0]}
    t0, c0 = time.perf_counter(), time.process_time()
    yield stats
    stats["wall_s"] = time.perf_counter() - t0
    stats["cpu_s"] = time.process_time() - c0
    stats["peak_rss_mb"] = memory_mb()[1]


def _worker_preprocess(source: str, out: str, stages: str) -> dict[str, Any]:
    import pyarrow.ipc  # noqa: F401 - imported before the clock starts, as in a warm process

    from lcron.data.shards import preprocess

    _reset_peak_memory()
    base_rss, _ = memory_mb()
    t0, c0 = time.perf_counter(), time.process_time()
    shards = preprocess(source, out, int(stages), progress=False)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    _, peak = memory_mb()
    per_day = [shards.num_requests(d) for d in shards.days]
    requests = sum(per_day)
    first = shards.manifest(shards.days[0])
    return {"wall_s": wall, "cpu_s": cpu, "requests": requests, "days": len(shards.days),
            "largest_day_requests": max(per_day),
            "setting": shards.setting.name, "peak_rss_mb": peak, "baseline_rss_mb": base_rss,
            "items_per_label": {k: v["mean"] for k, v in first["items_per_label"].items()}}


def _worker_train(p: dict[str, Any]) -> dict[str, Any]:
    """:func:`lcron.train.train` of each of ``methods`` on every day of the shard set,
    ``steps_per_day`` batches each, one after the other in this process.

    The trainer's summary.json gives the steady rate (every step after the first, batch
    gathering included) and the first step's time; the first step minus a steady step is
    the compile (and first-call) cost. The peak memory is reset before each method.
    """
    import torch

    from lcron.data.shards import ShardSet
    from lcron.devices import resolve_device
    from lcron.train import TrainConfig, train

    shard_set = ShardSet(p["shards"])
    device = p.get("device", "auto")
    # The mode's compile choice is a CPU choice; elsewhere the device's own default applies.
    compile = bool(p["compile"]) if resolve_device(device).type == "cpu" else None
    runs = []
    for method, out in zip(p["methods"], p["outs"]):
        cfg = TrainConfig(method=method, batch_size=int(p["batch_size"]), seeds=(1,), days=all_days(shard_set),
                          compile=compile, device=device)
        with _measured() as m:
            result = train(shard_set, out, cfg, overwrite=True, progress=False,
                           max_steps_per_day=int(p["steps_per_day"]))
        s = result[0].summary
        steady = s["steady_requests_per_s"]
        step_s = cfg.batch_size / steady if steady else None
        first = s["first_step_seconds"]
        runs.append({**m, "method": method, "setting": s["setting"], "steps": s["steps"], "requests": s["requests"],
                     "steady": steady, "first_step_s": first, "step_s": step_s,
                     "compile_s": max(first - step_s, 0.0) if first is not None and step_s is not None else None,
                     "device": s["device"], "threads": torch.get_num_threads(), "compile": s["compile"],
                     "step_mode": s.get("step_mode"), "peak_device_memory_mb": s.get("peak_device_memory_mb"),
                     "batch_size": cfg.batch_size, "final_loss": s["final_loss"], "load_1m": loadavg()})
    return {"runs": runs}


def _worker_evaluate(p: dict[str, Any]) -> dict[str, Any]:
    """The whole evaluation step twice in one process: cold (compiles) and warm (the rate);
    once (cold = the rate) when ``warm_call`` is false.

    Afterwards (not timed) the scores of every stage model are stored for the metrics row.
    """
    import numpy as np
    import torch

    from lcron.data.shards import ShardSet
    from lcron.devices import resolve_device
    from lcron.evaluate import evaluate
    from lcron.evaluation.scoring import score_arrays
    from lcron.run_folder import load_cascade, run_seeds

    shard_set = ShardSet(p["shards"])
    days = all_days(shard_set)
    kwargs = dict(days=days, overwrite=True, progress=False, compile=bool(p["compile"]))
    with _measured() as m:
        t0, c0 = time.perf_counter(), time.process_time()
        doc = evaluate(p["run"], shard_set, p["out"], **kwargs)
        first_s = wall = time.perf_counter() - t0
        cpu = time.process_time() - c0
        if p.get("warm_call", True):
            t0, c0 = time.perf_counter(), time.process_time()
            doc = evaluate(p["run"], shard_set, p["out"], **kwargs)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    if p.get("scores_out"):
        dev = resolve_device("auto")
        cascade, _ = load_cascade(run_seeds(p["run"])[0] / "model.pt", dev, compile=bool(p["compile"]))
        parts = [(score_arrays(cascade, a, device=dev, pad_last=bool(p["compile"])), a)
                 for a in (shard_set.load_day(d) for d in shard_set.days)]
        with atomic_open(p["scores_out"], "wb") as fh:
            np.savez(fh, scores=np.stack([np.concatenate([sc[s] for sc, _ in parts]) for s in range(len(parts[0][0]))]),
                     label=np.concatenate([np.asarray(a["label"]) for _, a in parts]),
                     mask=np.concatenate([np.asarray(a["mask"]) for _, a in parts]),
                     quotas=np.asarray(shard_set.setting.quotas), gt=np.asarray(shard_set.setting.gt_size))
    t = doc["timing"]
    return {**m, "wall_s": wall, "cpu_s": cpu, "first_call_s": first_s, "requests": t["requests_scored"],
            "load_and_inference_s": t["load_and_inference_seconds"], "metrics_s": t["metrics_seconds"],
            "setting": doc["setting"], "device": doc["device"], "compile": doc["compile"],
            "threads": torch.get_num_threads(), "load_1m": loadavg()}


def _worker_metrics(p: dict[str, Any]) -> dict[str, Any]:
    """:func:`lcron.metrics.cascade_metrics` on stored scores, best of ``repeats`` passes."""
    import numpy as np

    from lcron.metrics import cascade_metrics

    with np.load(p["scores"], allow_pickle=False) as z:
        scores, label, mask = z["scores"], z["label"], z["mask"]
        quotas, gt = [int(q) for q in z["quotas"]], int(z["gt"])
    times = []
    with _measured() as m:
        for _ in range(max(1, int(p["repeats"]))):
            t0 = time.perf_counter()
            res = cascade_metrics(list(scores), label, mask, quotas, gt=gt, tie_seed=0)
            times.append(time.perf_counter() - t0)
    return {**m, "requests": int(label.shape[0]), "times_s": times, "joint_recall": float(np.nanmean(res.joint_recall)),
            "load_1m": loadavg()}


def _worker_serving(p: dict[str, Any]) -> dict[str, Any]:
    """The serving engineer's ``bench_serving`` rows, or why they are missing."""
    try:
        from lcron.serving.evaluate import bench_serving
    except ImportError as exc:
        return {"skipped": f"lcron.serving.evaluate.bench_serving is not available ({exc})"}
    import torch

    with _measured() as m:
        rows = bench_serving(p["shards"], p["run"], list(p["k1"]), requests=int(p["requests"]),
                             repeats=int(p["repeats"]), compile=bool(p["compile"]))
    return {**m, "rows": rows, "threads": torch.get_num_threads(), "load_1m": loadavg()}


def _worker_train_vocab(p: dict[str, Any]) -> dict[str, Any]:
    """Train ``method`` once at RecFlow vocabulary with ``embedding_optimizer``
    (lcron/benchmarks/vocabulary.py): steady requests/s from summary.json, peak memory, and the sizes
    of the seed folder, model.pt, the day snapshots and a resume checkpoint (full state,
    written once more after training since a complete seed deletes its own)."""
    import torch

    from lcron.train import TrainConfig, train

    shards = VocabularyScaledShards(p["shards"], p.get("id_counts", RECFLOW_ID_COUNTS), int(p.get("day_repeat", 1)))
    cfg = TrainConfig(method=p["method"], batch_size=int(p["batch_size"]), seeds=(1,), compile=bool(p["compile"]),
                      embedding_optimizer=p["embedding_optimizer"], days=all_days(shards),
                      day_snapshots=True)  # their size is one of the row's numbers
    out = Path(p["out"])
    with _measured() as m:
        (res,) = train(shards, out, cfg, overwrite=True, progress=False, max_steps_per_day=int(p["steps_per_day"]))
    s = res.summary
    folder = out / "seed-1"
    snapshots = sorted((folder / "checkpoints").glob("*.pt"))
    sizes = {"seed_folder_mb": dir_bytes(folder) / 2**20, "model_mb": (folder / "model.pt").stat().st_size / 2**20,
             "day_snapshot_mb": [round(x.stat().st_size / 2**20, 2) for x in snapshots],
             **resume_checkpoint(shards, cfg, folder)}
    return {**m, "method": p["method"], "embedding_optimizer": p["embedding_optimizer"], "setting": s["setting"],
            "steps": s["steps"], "steady_steps": s["steps"] - s["startup_steps"], "steady": s["steady_requests_per_s"],
            "first_step_s": s["first_step_seconds"],
            "batch_size": cfg.batch_size, "days": len(s["days"]), **sizes,
            "threads": torch.get_num_threads(), "device": s["device"], "load_1m": loadavg()}


WORKERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "train": _worker_train, "evaluate": _worker_evaluate, "metrics": _worker_metrics, "serving": _worker_serving,
    "train_vocab": _worker_train_vocab,
}


def _worker_main(argv: list[str]) -> int:
    if not argv or argv[0] != "--worker" or len(argv) < 2:
        print("usage: python -m lcron.benchmarks --worker STEP ARGS... (a benchmark child) | "
              "--profile METHOD [--stages 2|3] [--memory] ...", file=sys.stderr)
        return 2
    step, args = argv[1], argv[2:]
    if step == "preprocess":
        result = _worker_preprocess(*args)
    elif step in WORKERS and len(args) == 1:
        result = WORKERS[step](json.loads(args[0]))
    else:
        print(f"unknown benchmark step {step!r} (or bad arguments {args!r})", file=sys.stderr)
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
    for stages in STAGES:
        runs = []
        for _ in range(ctx.size["repeats"]):
            out = Path(tempfile.mkdtemp(prefix="shards-", dir=ctx.work_dir))
            shutil.rmtree(out)
            try:
                runs.append(run_worker(["preprocess", str(source), str(out), str(stages)]))
                if stages not in ctx.shard_dirs:  # the first output is the bench run's shard set
                    ctx.shard_dirs[stages] = out.rename(ctx.work_dir / f"shards-{stages}")
            finally:
                shutil.rmtree(out, ignore_errors=True)
        rates = [r["requests"] / r["wall_s"] for r in runs]
        best = max(range(len(runs)), key=lambda i: rates[i])
        r = runs[best]
        ctx.note_shape(r)
        rows.append({
            "name": "preprocess", "setting": r["setting"], "value": round(rates[best], 1), "unit": "requests/s",
            "requests": r["requests"], "days": r["days"], "wall_s": round(r["wall_s"], 4),
            "cpu_s": round(r["cpu_s"], 4), "cpu_requests_per_s": round(r["requests"] / max(r["cpu_s"], 1e-9), 1),
            "peak_rss_mb": round(max(x["peak_rss_mb"] for x in runs), 1),
            "baseline_rss_mb": round(r["baseline_rss_mb"], 1), "runs": len(runs),
            "all_values": [round(x, 1) for x in rates],
        })
    return rows


@register("train")
def bench_train(ctx: BenchContext) -> list[dict[str, Any]]:
    """Training requests/s of every method in both settings.

    value = the trainer's steady rate (summary.json ``steady_requests_per_s``: every step
    after the first; gathering the batch from the memory-mapped shards, forward, loss,
    backward, optimizer steps and the per-step logging). ``compile_s`` = first step minus
    a steady step. Default and full modes train each method in a fresh process (its own
    compile, its own peak memory); quick mode trains a setting's methods in one process.
    The LCRON runs are kept for the evaluation and serving rows.
    """
    rows = []
    for stages in STAGES:
        if ctx.params["process_per_method"]:
            results = []
            for method in method_order():
                ctx.log(f"  train {method} ({SETTING_NAMES[stages]}) ...")
                results.extend(ctx.train([method], stages))
        else:
            ctx.log(f"  train {', '.join(method_order())} ({SETTING_NAMES[stages]}) ...")
            results = ctx.train(list(method_order()), stages)
        for r in results:
            rows.append({
                "name": "train", "case": r["method"], "setting": r["setting"], "value": rounded(r["steady"]),
                "unit": "requests/s", "batch_size": r["batch_size"], "steps": r["steps"],
                "measured_steps": r["steps"] - 1, "step_s": rounded(r["step_s"], 3),
                "first_step_s": rounded(r["first_step_s"], 2), "compile_s": rounded(r["compile_s"], 2),
                "compile": r["compile"], "train_call_s": rounded(r["wall_s"], 2), "cpu_s": rounded(r["cpu_s"], 2),
                "peak_rss_mb": rounded(r["peak_rss_mb"]), "baseline_rss_mb": rounded(r["baseline_rss_mb"]),
                "device": r["device"], "threads": r["threads"], "load_1m": r["load_1m"],
                "step_mode": r.get("step_mode"), "peak_device_memory_mb": r.get("peak_device_memory_mb"),
            })
    return rows


# RecFlow-vocabulary training and checkpoint sizes (vocabulary.py; its child is _worker_train_vocab).
register("train_vocab")(bench_train_vocab)


@register("evaluate")
def bench_evaluate(ctx: BenchContext) -> list[dict[str, Any]]:
    """The whole evaluation step (:func:`lcron.evaluate.evaluate`) of a trained LCRON run on
    every day of the data set: opening the shards, inference of every stage model, every
    metric, the quota sweep and the output files. value = requests / wall time of a warm
    call; the first call (which compiles) is reported apart."""
    rows = []
    for stages in STAGES:
        ctx.log(f"  evaluate ({SETTING_NAMES[stages]}) ...")
        r = run_evaluate_worker(ctx, stages)
        rows.append({
            "name": "evaluate", "case": "lcron", "setting": r["setting"],
            "value": rounded(r["requests"] / r["wall_s"]), "unit": "requests/s", "requests": r["requests"],
            "wall_s": rounded(r["wall_s"], 3), "first_call_s": rounded(r["first_call_s"], 2),
            "load_and_inference_s": rounded(r["load_and_inference_s"], 3),
            "metrics_s": rounded(r["metrics_s"], 3), "cpu_s": rounded(r["cpu_s"], 2), "compile": r["compile"],
            "peak_rss_mb": rounded(r["peak_rss_mb"]), "baseline_rss_mb": rounded(r["baseline_rss_mb"]),
            "device": r["device"], "threads": r["threads"], "load_1m": r["load_1m"],
        })
    return rows


@register("metrics")
def bench_metrics(ctx: BenchContext) -> list[dict[str, Any]]:
    """:func:`lcron.metrics.cascade_metrics` (joint recall, Recall@10@m and NDCG@10 of every
    stage, GT funnel) on the stored scores of the evaluated run; value = requests/s, best of
    the mode's repeats."""
    rows = []
    for stages in STAGES:
        ctx.log(f"  metrics ({SETTING_NAMES[stages]}) ...")
        r = run_worker(["metrics", json.dumps({"scores": str(ctx.stored_scores(stages)),
                                                "repeats": ctx.params["metrics_repeats"]})])
        best = min(r["times_s"])
        rows.append({
            "name": "metrics", "case": "cascade_metrics", "setting": SETTING_NAMES[stages],
            "value": rounded(r["requests"] / best), "unit": "requests/s", "requests": r["requests"],
            "best_s": rounded(best, 4), "runs": len(r["times_s"]), "peak_rss_mb": rounded(r["peak_rss_mb"]),
            "baseline_rss_mb": rounded(r["baseline_rss_mb"]), "load_1m": r["load_1m"],
            "all_values": [rounded(r["requests"] / t) for t in r["times_s"]],
        })
    return rows


@register("serving")
def bench_serving_rows(ctx: BenchContext) -> list[dict[str, Any]]:
    """Serving-style evaluation per K1 (user tower + exact faiss top-K1 over the item corpus,
    then the later stages with their quotas), from ``lcron.serving.evaluate.bench_serving``;
    value = requests/s (best pass). One row with a note when that function is missing."""
    rows = []
    p = ctx.params
    for stages in STAGES:
        ctx.log(f"  serving ({SETTING_NAMES[stages]}, K1 {list(p['k1'])}) ...")
        r = run_worker(["serving", json.dumps({
            "shards": str(ctx.shards(stages)), "run": str(ctx.lcron_run(stages)), "k1": list(p["k1"]),
            "requests": p["serving_requests"], "repeats": p["serving_repeats"], "compile": p["compile"]})])
        rows.extend(serving_rows(r, SETTING_NAMES[stages]))
    return rows


def serving_rows(result: dict[str, Any], setting: str) -> list[dict[str, Any]]:
    """Table rows from the serving worker's result: one per K1, or one row with a note (value
    None) when the serving benchmark is not available."""
    if "skipped" in result:
        return [{"name": "serving", "case": "-", "setting": setting, "value": None, "unit": "requests/s",
                 "note": result["skipped"]}]
    return [{
        "name": "serving", "case": f"K1={s['k1']}", "setting": s["setting"], "value": rounded(s["requests_per_s"]),
        "unit": "requests/s", "k1": s["k1"], "requests": s["requests"], "batch_requests": s["batch_requests"],
        "corpus_items": s["corpus_items"], "retrieval_requests_per_s": rounded(s["retrieval_requests_per_s"]),
        "scoring_requests_per_s": rounded(s["scoring_requests_per_s"]),
        "requests_per_cpu_s_per_thread": rounded(s.get("requests_per_cpu_s_per_thread")),
        "warmup_s": rounded(s["warmup_s"], 2), "compile": s["compile"], "index": s["index"],
        "peak_rss_mb": rounded(result["peak_rss_mb"]), "baseline_rss_mb": rounded(result["baseline_rss_mb"]),
        "device": s["device"], "threads": s["threads"], "load_1m": result["load_1m"],
    } for s in result["rows"]]


# ------------------------------------------------------------------ real-size rows (issue 19)
#: One real-size day for the preprocessing row: RecFlow has about 250,000 requests a day and
#: 42,000 users (full mode); the smaller modes only check that the row runs.
DAY_SIZES: dict[str, dict[str, Any]] = {
    "quick": {"num_days": 1, "requests_per_day": 300, "users": 100, "items": 1000, "seed": 1},
    "default": {"num_days": 1, "requests_per_day": 20_000, "users": 42_000, "items": 20_000, "seed": 1},
    "full": {"num_days": 1, "requests_per_day": 250_000, "users": 42_000, "items": 20_000, "seed": 1},
}


def _timed_cli(argv: list[str]) -> dict[str, Any]:
    """Wall time of a fresh ``lcron`` process running ``argv`` (start-up and imports included), with
    its exit code and peak memory: the child ``python -m lcron.measured_command`` (it imports
    lcron.cli, which imports this module: started by name, never imported)."""
    t0 = time.perf_counter()
    res = run_child(COMMAND_MODULE, "cli", [json.dumps({"argv": argv})])
    return {**res, "wall_s": time.perf_counter() - t0}


#: Peak memory of ``lcron generate`` per request of a day: it simulates a day in parts
#: (lcron.data.synthetic.DAY_PART_REQUESTS) but holds the day's two dicts until they are
#: pickled. Measured 2026-12-01: 5,511 MiB for one 250,000-request day with 42,000 users and
#: 20,000 items (22 KB per request; 14,521 MiB before days came in parts).
GENERATOR_KB_PER_REQUEST = 23


def generator_memory_mb(requests_per_day: int) -> float:
    """About how much memory the synthetic generator needs for a day of ``requests_per_day``."""
    return 200 + GENERATOR_KB_PER_REQUEST * requests_per_day / 1024


def available_memory_mb() -> float | None:
    """MemAvailable of /proc/meminfo in MiB (None where there is no such file)."""
    available = available_bytes()
    return None if available is None else available / 2**20


@register("preprocess_day")
def bench_preprocess_day(ctx: BenchContext) -> list[dict[str, Any]]:
    """One real-size day (:data:`DAY_SIZES`; full mode 250,000 requests, 42,000 users)
    preprocessed for the two-stage setting in a fresh process: requests/s and the peak
    resident memory of the preprocessing child (docs/scale.md states the bound)."""
    size = DAY_SIZES[ctx.mode]
    root, marker = ctx.data_dir / f"{ctx.mode}-day", ctx.data_dir / f"{ctx.mode}-day.json"
    fresh = not (root.is_dir() and marker.is_file() and json.loads(marker.read_text()) == size)
    need, have = generator_memory_mb(size["requests_per_day"]), available_memory_mb() if fresh else None
    if have is not None and need > have:
        # The generator holds a day's dicts in memory: rather no row than a machine out of memory.
        reason = (f"generating a {size['requests_per_day']:,}-request day needs about {need:,.0f} MiB "
                  f"(the synthetic generator holds a day's dicts), {have:,.0f} MiB available; put a day of "
                  f"that size in {root} (with {marker.name}) or run on a machine with more memory")
        print(f"WARNING day_prep skipped: {reason}", file=sys.stderr, flush=True)
        return [{"name": "day_prep", "case": f"{size['requests_per_day']:,} req", "setting": "two_stage",
                 "value": None, "unit": "requests/s", "skipped": reason, "load_1m": loadavg()}]
    if fresh:
        from lcron.data.synthetic import generate

        shutil.rmtree(root, ignore_errors=True)
        ctx.log(f"generating the real-size day ({ctx.mode}): {size}")
        generate(root, progress=ctx.progress, **size)
        write_json(marker, size)
    from lcron.data.shards import memory_bound_mb

    out = ctx.work_dir / "shards-day"
    r = run_worker(["preprocess", str(root), str(out), "2"])
    shutil.rmtree(out, ignore_errors=True)
    bound = memory_bound_mb(r["largest_day_requests"])
    if r["peak_rss_mb"] > bound:
        print(f"WARNING day_prep: peak {r['peak_rss_mb']:.0f} MiB is above the documented bound {bound:.0f} MiB "
              "(docs/scale.md, Preprocessing memory)", file=sys.stderr, flush=True)
    return [{"name": "day_prep", "case": f"{r['requests']:,} req", "setting": r["setting"],
             "value": rounded(r["requests"] / r["wall_s"]), "unit": "requests/s", "requests": r["requests"],
             "wall_s": rounded(r["wall_s"], 2), "cpu_s": rounded(r["cpu_s"], 2),
             "peak_rss_mb": rounded(r["peak_rss_mb"]), "baseline_rss_mb": rounded(r["baseline_rss_mb"]),
             "peak_kb_per_request": rounded((r["peak_rss_mb"] - r["baseline_rss_mb"]) * 1024 / max(r["requests"], 1)),
             "bound_mb": rounded(bound), "bound_held": bool(r["peak_rss_mb"] <= bound), "load_1m": loadavg()}]


@register("evaluate_process")
def bench_evaluate_process(ctx: BenchContext) -> list[dict[str, Any]]:
    """``lcron evaluate`` of the two-stage LCRON run as a user runs it: a fresh process,
    wall time from start to exit (interpreter, imports, compile, scoring, metrics, sweep,
    plot, files) and its peak memory. Run twice; the second run (inductor's compile
    cache warm, as on any machine after the first evaluation) is the value."""
    run, shards = ctx.lcron_run(2), ctx.shards(2)
    argv = ["evaluate", "-q", "--model", str(run), "--shards", str(shards), "--out", str(ctx.work_dir / "eval-cli"),
            "--overwrite", "--days", _all_days_of(shards)]
    if not ctx.params["compile"]:
        argv.append("--no-compile")
    first, second = _timed_cli(argv), _timed_cli(argv)
    doc = json.loads((ctx.work_dir / "eval-cli" / "metrics.json").read_text())
    requests = doc["timing"]["requests_scored"]
    return [{"name": "eval_proc", "case": f"{len(doc['seeds'])} seed(s)", "setting": doc["setting"],
             "value": rounded(second["wall_s"], 2), "unit": "s/process", "requests": requests,
             "first_process_s": rounded(first["wall_s"], 2), "peak_rss_mb": rounded(max(first["peak_rss_mb"],
                                                                               second["peak_rss_mb"])),
             "compile": doc["compile"], "load_1m": second["load_1m"]}]


def _all_days_of(shards: Path) -> str:
    from lcron.data.shards import ShardSet

    return all_days(ShardSet(shards))


# ------------------------------------------------------------------ runner
_MAIN_KEYS = ("name", "case", "setting", "value", "unit", "peak_rss_mb")


def _fmt_extra(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def format_table(rows: list[dict[str, Any]]) -> str:
    """One line per row: benchmark, case, setting, value, unit, peak memory, then the other scalar fields."""
    head = f"{'benchmark':<11}{'case':<16}{'setting':<13}{'value':>12}  {'unit':<12}{'peak MiB':>9}  details"
    lines = [head, "-" * len(head)]
    for r in rows:
        extra = ", ".join(f"{k}={_fmt_extra(v)}" for k, v in r.items()
                          if k not in _MAIN_KEYS and not isinstance(v, (list, dict)))
        value = "n/a" if r.get("value") is None else f"{r['value']:,.1f}"
        peak = "" if r.get("peak_rss_mb") is None else f"{r['peak_rss_mb']:,.0f}"
        lines.append(f"{r['name']:<11}{str(r.get('case', '')):<16}{str(r.get('setting', '')):<13}{value:>12}  "
                     f"{r['unit']:<12}{peak:>9}  {extra}")
    return "\n".join(lines)


def run_benchmarks(mode: str = "default", json_path: str | Path | None = "build/bench.json",
                   data_dir: str | Path = "build/bench-data", only: list[str] | None = None,
                   progress: bool = True, device: str = "auto") -> dict[str, Any]:
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
    load_before = loadavg()
    t_start = time.perf_counter()
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="lcron-bench-", dir=data_dir) as work:
        ctx = BenchContext(mode=mode, data_dir=data_dir, work_dir=Path(work), progress=progress, device=device,
                           data_shape={"days": size["num_days"], "requests_per_day": size["requests_per_day"],
                                       "requests": size["num_days"] * size["requests_per_day"],
                                       "users": size["users"], "items": size["items"]})
        rows: list[dict[str, Any]] = []
        for name in names:
            ctx.log(f"bench {name} ...")
            t0 = time.perf_counter()
            rows.extend(BENCHMARKS[name](ctx))
            seconds[name] = round(time.perf_counter() - t0, 1)
    env = environment()
    env["load_average_1m_before"] = load_before
    threads = sorted({r["threads"] for r in rows if isinstance(r.get("threads"), int)})
    env["torch_threads"] = threads[0] if len(threads) == 1 else threads or None
    devices = sorted({str(r["device"]) for r in rows if r.get("device")})
    if devices:  # what the model benchmarks ran on (the children import torch; this process does not)
        env["device"] = devices[0] if len(devices) == 1 else devices
    shape = ctx.data_shape
    print(f"data ({mode}): {shape['requests']} requests = {shape['days']} days x {shape['requests_per_day']}, "
          f"stored candidates per label (mean): {shape.get('stored_items_per_label_mean', 'n/a')}")
    print(f"device: {env['device']} ({env['cpu']}), {env['usable_cpus']} usable CPU(s), torch threads "
          f"{env['torch_threads'] if env['torch_threads'] is not None else 'n/a'}, load (1 min) "
          f"{load_before} before / {env['load_average_1m']} after")
    print(format_table(rows))
    run_params = {k: list(v) if isinstance(v, tuple) else v for k, v in RUN_PARAMS[mode].items()}
    result = {"schema": "lcron-bench/1", "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "mode": mode, "run_params": run_params, "environment": env, "data": shape,
              "seconds": {**seconds, "total": round(time.perf_counter() - t_start, 1)}, "results": rows}
    if json_path is not None:
        write_json(json_path, result)
        print(f"wrote {json_path}")
    return result


def main(argv: list[str]) -> int:
    """``python -m lcron.benchmarks --worker STEP ARGS`` (a benchmark child) or ``--profile METHOD ...``."""
    if argv and argv[0] == "--profile":
        from lcron.benchmarks.profiler import profile_main

        return profile_main(argv[1:])
    return _worker_main(argv)

