"""The training profiler: ``python -m lcron.benchmarks --profile METHOD [--stages 2|3] [--memory]``.

Runs the trainer's own step (:class:`lcron.train_step.TrainStep`, so profiler and trainer
cannot drift apart) under ``torch.profiler`` and reports the time per phase of the step, the
top operators, autograd nodes, NeuralSort calls, ids gathered per batch, the fixed per-step
cost and, with ``--memory``, the peak tensor memory by category (docs/benchmarks.md).

It stands on :mod:`lcron.benchmarks.base` (the bench modes and their data sets) and imports
nothing else of the harness; the suite's ``main`` (lcron/benchmarks/suite.py) calls :func:`profile_main`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from lcron.atomic import write_json
from lcron.benchmarks.base import SIZES, STAGES, BenchContext, loadavg
from lcron.errors import ConfigError
from lcron.train_step import TrainStep

__all__ = ["PHASES", "profile_training", "format_profile", "profile_main"]

PHASES = ("gather", "forward", "loss", "zero_grad", "backward", "optimizer", "log")
_INSTRUMENTED = ("neural_sort", "label_permutation")


def _endless_batches(shard_set: Any, batch_size: int, device: Any) -> Iterator[dict[str, Any]]:
    """The trainer's batches (days in order, each shuffled by (seed 1, day index)), cycling
    through the days again when they run out."""
    from lcron.batches import day_order, iter_batches

    if all(shard_set.num_requests(d) < batch_size for d in shard_set.days):
        raise ConfigError(f"shard set {shard_set.root}: no day holds a full batch of {batch_size} requests "
                          f"(requests per day: {[shard_set.num_requests(d) for d in shard_set.days]})")
    while True:
        for i, day in enumerate(shard_set.days):
            arrays = shard_set.load_day(day)
            yield from iter_batches(arrays, day_order(len(arrays["label"]), 1, i, True), batch_size,
                                    drop_last=True, device=device)


def _train_step(step: TrainStep, batches: Iterator[dict[str, Any]], mark: Callable[[str], Any]) -> dict[str, float]:
    """One step of the trainer (:class:`lcron.train_step.TrainStep`, the very object the
    trainer runs) on the next batch, each phase under ``mark(phase)`` (a profiler label, or
    nothing); returns the step's log record (total loss and every part). Reading the record
    back is the ``log`` phase: on a GPU it waits for the step, so the step times are complete
    (the trainer itself reads loss rows back only every 64 steps)."""
    with mark("gather"):
        batch = next(batches)
    row = step(batch, mark=mark)
    with mark("log"):
        values = row.tolist()
    return dict(zip(step.columns, values))


@contextmanager
def _instrument(loss: Any) -> Iterator[None]:
    """Put a profiler label ``fn/<name>`` around the sorting helpers the loss calls - from its
    own module or through :mod:`lcron.losses.published` (LCRON, ARF) - so the profile counts
    how often NeuralSort runs per step and what it costs."""
    from torch.profiler import record_function

    from lcron.losses import published

    modules = {sys.modules[type(loss).__module__], published}
    saved = [(module, name, getattr(module, name)) for module in modules for name in _INSTRUMENTED
             if hasattr(module, name)]

    def wrap(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def labelled(*args: Any, **kwargs: Any) -> Any:
            with record_function(f"fn/{name}"):
                return fn(*args, **kwargs)
        return labelled

    for module, name, fn in saved:
        setattr(module, name, wrap(name, fn))
    try:
        yield
    finally:
        for module, name, fn in saved:
            setattr(module, name, fn)


def _timed_steps(n: int, step: Callable[[], None]) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        step()
        out.append(time.perf_counter() - t0)
    return out


def _memory_by_category(prof: Any) -> dict[str, float]:
    """Peak of the live tensor memory during the profiled step, in MiB, split by the
    profiler's categories (parameter, optimizer state, input, activation, gradient, ...)."""
    import numpy as np
    import warnings

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "timeline.json"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prof.export_memory_timeline(str(path), device="cpu")
        _, sizes = json.loads(path.read_text())
    sizes = np.asarray(sizes, dtype=np.float64)
    # Columns: [unused, parameter, optimizer state, input, temporary, activation, gradient,
    # autograd detail, unknown] (torch.profiler._memory_profiler category order, shifted by one).
    names = ("parameter", "optimizer_state", "input", "temporary", "activation", "gradient", "autograd_detail",
             "unknown")
    total = sizes.sum(axis=1)
    i = int(total.argmax())
    out = {"peak_total_mb": round(total[i] / 2**20, 1)}
    out.update({n: round(sizes[i, j + 1] / 2**20, 1) for j, n in enumerate(names)})
    return out


@dataclass
class _Session:
    """What every profiled phase shares: the trainer's step object, its loss (instrumented
    while profiling) and one endless batch stream, so the phases see consecutive batches as
    the trainer would."""

    shard_set: Any
    device: Any
    train_step: TrainStep
    loss: Any
    batches: Iterator[dict[str, Any]]

    def plain_step(self) -> None:
        """One trainer step on the next batch, without profiler labels."""
        _train_step(self.train_step, self.batches, lambda _: nullcontext())


def _open_session(shards: str | Path, method: str, batch_size: int, compile: bool) -> _Session:
    """Build the trainer's objects for ``method`` on the shard set (the trainer's own
    builder and configuration checks) in train mode on the automatically chosen device."""
    from lcron.data.shards import ShardSet
    from lcron.devices import resolve_device
    from lcron.train import TrainConfig, build_training_objects

    shard_set = ShardSet(shards)
    cfg = TrainConfig(method=method, batch_size=batch_size, compile=compile)
    cfg.validate()
    device = resolve_device("auto")
    cascade, loss, optimizers = build_training_objects(shard_set.setting, shard_set.embedding_sizes, cfg, 1, device)
    cascade.train()
    return _Session(shard_set, device, TrainStep(cascade, loss, optimizers), loss,
                    _endless_batches(shard_set, batch_size, device))


def profile_training(shards: str | Path, method: str, *, batch_size: int = 1024, steps: int = 3, warmup: int = 2,
                     compile: bool = True, top: int = 20, memory: bool = False,
                     small_batch: int = 8) -> dict[str, Any]:
    """Profile training steps of ``method`` on a shard set with torch.profiler.

    Runs ``warmup`` steps (the first one compiles), ``steps`` timed steps without the
    profiler, then ``steps`` steps under it (CPU activities, with FLOP counts of the matmul
    family), and reports per step: time per phase of the trainer's loop; the top operators
    by self time and their share of the profiled time; the autograd nodes by time; the
    calls and time of NeuralSort and of the label permutation (``fn/...``); the ids gathered
    per batch; and the fixed per-step cost, i.e. the step time at ``small_batch`` requests,
    where the arithmetic is negligible (Python, dispatch, optimizer loops). ``memory``
    profiles one more step with memory tracking and reports the peak live tensor memory
    by category (host tensors; on CUDA also the caching allocator's peak of one more step).
    The loop body's logging converts the loss parts to floats, which synchronises a GPU
    every step, so the step times are complete. Everything runs in this process.
    """
    import torch

    if steps < 1 or warmup < 1:
        raise ConfigError(f"profile: steps and warmup must be >= 1, got steps={steps}, warmup={warmup}")
    session = _open_session(shards, method, batch_size, compile)
    warm = _timed_steps(warmup, session.plain_step)
    timed = _timed_steps(steps, session.plain_step)
    step_s = sorted(timed)[len(timed) // 2]
    events = _profiled_events(session, steps)
    operators = _operator_report(events, steps, top)
    ids = _batch_ids(session)
    result: dict[str, Any] = {
        "method": method, "setting": session.shard_set.setting.name, "batch_size": batch_size,
        "device": str(session.device), "threads": torch.get_num_threads(), "compile": compile,
        "load_1m": loadavg(), "first_step_s": round(warm[0], 3), "step_s": round(step_s, 4),
        "timed_steps_s": [round(t, 4) for t in timed], "requests_per_s": round(batch_size / step_s, 1),
        **operators, **ids,
    }
    if memory:
        result.update(_memory_report(session))
    if small_batch:
        result["fixed_step_ms"] = _fixed_step_ms(session, small_batch, steps)
    return result


def _profiled_events(session: _Session, steps: int) -> Any:
    """``steps`` trainer steps under torch.profiler (CPU activities, FLOP counts), each phase
    labelled ``phase/<name>`` and the loss's sorting helpers ``fn/<name>``; the averaged events."""
    from torch.profiler import ProfilerActivity, profile, record_function

    with _instrument(session.loss), profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        for _ in range(steps):
            _train_step(session.train_step, session.batches, lambda ph: record_function(f"phase/{ph}"))
    return prof.key_averages()


def _operator_report(events: Any, steps: int, top: int) -> dict[str, Any]:
    """The profiled time per step: in total, outside any operator (Python), per phase, per
    top operator and autograd node, of the instrumented helpers, and the matmul FLOPs."""
    profiled_us = sum(e.self_cpu_time_total for e in events)
    per_step = lambda us: round(us / steps / 1000.0, 2)  # noqa: E731 - µs over the profiled steps -> ms/step

    phases = {e.key.split("/", 1)[1]: e.cpu_time_total for e in events if e.key.startswith("phase/")}
    ops = [e for e in events if not e.key.startswith(("phase/", "fn/", "autograd::engine"))]
    ops.sort(key=lambda e: -e.self_cpu_time_total)
    nodes = [e for e in events if e.key.startswith("autograd::engine::evaluate_function: ")]
    nodes.sort(key=lambda e: -e.cpu_time_total)
    flops = sum(e.flops or 0 for e in events)
    return {
        "profiled_ms_per_step": per_step(profiled_us),
        # Self time of the phase labels: time inside the loop body spent outside every
        # operator - the Python of models, losses and trainer (plus the profiler's own cost).
        "python_ms_per_step": per_step(sum(e.self_cpu_time_total for e in events
                                           if e.key.startswith(("phase/", "fn/")))),
        "phases_ms": {ph: per_step(phases.get(ph, 0.0)) for ph in PHASES},
        "top_ops": [{"name": e.key, "self_ms": per_step(e.self_cpu_time_total),
                     "share": round(e.self_cpu_time_total / profiled_us, 4), "calls": e.count / steps,
                     "gflop": round((e.flops or 0) / steps / 1e9, 3)} for e in ops[:top]],
        "autograd_nodes": [{"name": e.key.split(": ", 1)[1], "ms": per_step(e.cpu_time_total), "calls": e.count / steps}
                           for e in nodes[:top]],
        "instrumented": {e.key.split("/", 1)[1]: {"calls": e.count / steps, "ms": per_step(e.cpu_time_total)}
                         for e in events if e.key.startswith("fn/")},
        "matmul_gflop_per_step": round(flops / steps / 1e9, 3),
    }


def _batch_ids(session: _Session) -> dict[str, Any]:
    """The ids one batch (the stream's next) feeds each model and all stage models together,
    and the batch's tensor bytes: the embedding lookups a step costs."""
    from lcron.data.fields import MODEL_INPUTS

    sample = next(session.batches)
    model_ids = {k: int(sample[k].numel()) for k in MODEL_INPUTS if k != "seq_mask"}
    lookups = sum(model_ids.values())
    n_models = len(session.shard_set.setting.stage_names)
    return {
        "ids_per_batch": {**model_ids, "embedding_lookups_per_model": lookups,
                          "embedding_lookups_per_step": lookups * n_models,
                          "batch_bytes": int(sum(t.element_size() * t.numel() for t in sample.values()))},
        "stage_models": n_models,
    }


def _memory_report(session: _Session) -> dict[str, Any]:
    """One step under the memory profiler: the peak live tensor memory by category; on CUDA,
    where the CPU timeline misses device tensors, also the allocator's peak of one more step."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                 with_stack=True) as mprof:
        session.plain_step()
    report: dict[str, Any] = {"memory_mb": _memory_by_category(mprof)}
    device = session.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        session.plain_step()
        report["cuda_peak_allocated_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
        report["cuda_peak_reserved_mb"] = round(torch.cuda.max_memory_reserved(device) / 2**20, 1)
    return report


def _fixed_step_ms(session: _Session, small_batch: int, steps: int) -> dict[str, Any]:
    """The median step time at ``small_batch`` requests (at least 3 steps, after 2 that
    compile the new shape): the per-step cost that does not scale with the batch."""
    small = _endless_batches(session.shard_set, small_batch, session.device)

    def tiny() -> None:
        _train_step(session.train_step, small, lambda _: nullcontext())

    _timed_steps(2, tiny)  # a new shape compiles the fused kernels once more
    ts = sorted(_timed_steps(max(steps, 3), tiny))
    return {"batch_size": small_batch, "ms": round(ts[len(ts) // 2] * 1000, 2)}


def format_profile(res: dict[str, Any]) -> str:
    """A readable summary of :func:`profile_training`'s result."""
    step_ms = res["step_s"] * 1000
    lines = [f"profile {res['method']} ({res['setting']}), batch {res['batch_size']}, {res['device']}, "
             f"{res['threads']} threads, compile {res['compile']}, load {res['load_1m']}",
             f"step {step_ms:.1f} ms ({res['requests_per_s']:,.0f} requests/s), "
             f"first step {res['first_step_s']:.2f} s; "
             f"under the profiler {res['profiled_ms_per_step']:.1f} ms/step; matmul family "
             f"{res['matmul_gflop_per_step']:.2f} GFLOP/step; outside any operator (Python) "
             f"{res['python_ms_per_step']:.1f} ms/step"]
    if "fixed_step_ms" in res:
        f = res["fixed_step_ms"]
        lines.append(f"fixed per-step cost (batch {f['batch_size']}): {f['ms']:.1f} ms = "
                     f"{100 * f['ms'] / step_ms:.1f}% of a step")
    total = res["profiled_ms_per_step"]
    lines.append("phases (ms/step, share): " + ", ".join(
        f"{k} {v:.1f} ({100 * v / total:.1f}%)" for k, v in res["phases_ms"].items()))
    if res["instrumented"]:
        lines.append("sorting: " + ", ".join(f"{k} {v['calls']:g} calls/step, {v['ms']:.1f} ms"
                                             for k, v in res["instrumented"].items()))
    ids = res["ids_per_batch"]
    lines.append(f"ids per batch: {ids['embedding_lookups_per_model']:,} lookups per model x {res['stage_models']} "
                 f"models = {ids['embedding_lookups_per_step']:,}; batch tensors {ids['batch_bytes'] / 2**20:.1f} MiB")
    if "memory_mb" in res:
        lines.append("peak tensor memory (MiB): " + ", ".join(f"{k} {v:,.1f}" for k, v in res["memory_mb"].items()))
    lines.append(f"{'operator':<48}{'ms/step':>9}{'share':>8}{'calls':>7}{'GFLOP':>8}")
    for op in res["top_ops"]:
        lines.append(f"{op['name'][:47]:<48}{op['self_ms']:>9.1f}{100 * op['share']:>7.1f}%{op['calls']:>7g}"
                     f"{op['gflop']:>8.2f}")
    lines.append(f"{'autograd node':<48}{'ms/step':>9}{'calls':>15}")
    for nd in res["autograd_nodes"][:10]:
        lines.append(f"{nd['name'][:47]:<48}{nd['ms']:>9.1f}{nd['calls']:>15g}")
    return "\n".join(lines)


def profile_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m lcron.benchmarks --profile",
                                 description="profile training steps of one method (torch.profiler)")
    ap.add_argument("method", help="training method, e.g. lcron")
    ap.add_argument("--stages", type=int, choices=STAGES, default=2)
    ap.add_argument("--mode", choices=sorted(SIZES), default="default", help="bench data set to use")
    ap.add_argument("--data-dir", default="build/bench-data")
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--memory", action="store_true", help="also the peak tensor memory by category")
    ap.add_argument("--json", metavar="FILE", help="write the result as JSON too")
    a = ap.parse_args(argv)
    from lcron.data.shards import preprocess

    with tempfile.TemporaryDirectory(prefix="lcron-profile-") as tmp:
        ctx = BenchContext(mode=a.mode, data_dir=Path(a.data_dir), work_dir=Path(tmp))
        preprocess(ctx.recflow(), Path(tmp) / "shards", a.stages, progress=False)
        res = profile_training(Path(tmp) / "shards", a.method, batch_size=a.batch_size, steps=a.steps,
                               warmup=a.warmup, compile=not a.no_compile, top=a.top, memory=a.memory)
    print(format_profile(res))
    if a.json:
        write_json(a.json, res)
    return 0
