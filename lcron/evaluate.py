"""Evaluate a trained run on its test day(s): the cascade's metrics, the GT funnel, a quota sweep.

What is measured (METHODS.md section 6; every number is computed by :mod:`lcron.metrics`):

* ``joint_recall`` - the cascade run for real with the setting's quotas: stage 1 keeps
  quota_1 of the valid slots by its score, each next stage keeps its quota of the survivors;
  recall = |final survivors ∩ GT| / min(10, n_valid), averaged over requests.
* ``recall_at_10_m/<stage>`` - each stage model alone over all valid slots:
  |top-m by its score ∩ GT| / min(10, n_valid), m = that stage's quota.
* ``ndcg_at_10/<stage>`` - each stage model alone: DCG@10 / IDCG@10 with gain y and
  discount 1 / log2(1 + rank), score ties averaged (scikit-learn's convention).
* ``funnel/gt_after/<stage>`` - GT items still alive after that stage of the cascade,
  mean over requests (before stage 1 there are min(10, n_valid)).
* ``funnel/lost_share/<stage>`` - of all GT items the cascade loses, the share that stage
  drops (the shares of the stages sum to 1 whenever anything is lost).

Each seed's model gives one value per metric (mean over the test requests; requests with
no valid slot are skipped and counted); the report shows the mean over seeds, the sample
standard deviation (ddof = 1, null for one seed) and n.

Scores are computed once per seed - every stage model on every valid slot, batched, under
``torch.inference_mode`` - and kept in memory as float32 [R, N] arrays; the metrics and the
quota sweep reuse them. Metrics are computed on a whole evaluation unit at once, so the
seeded tie-breaks do not depend on the inference batch size.

Streaming evaluation (METHODS.md section 7): training is one pass in date order, so the
model "trained on every day before t" is the checkpoint written after day t - 1; each test
day t is scored by that checkpoint, and the metrics are reported per day and averaged over
the days (per seed first, then over seeds).

Outputs (``<run_dir>/eval`` by default), all written atomically; ``metrics.json`` last, so
its presence means the evaluation completed:

    metrics.json       kind "lcron-evaluation": info + {"metrics": {key: {mean, std, n, per_seed}}}
    per_request.npz    request_id [R], day [R], seeds [S], and per metric key [S, R] (for paired tests)
    quota_sweep.json   end-to-end recall for each quota tuple of the grid (+ quota_sweep.png)
    streaming.json     streaming only: per test day and averaged
"""

from __future__ import annotations

import argparse
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from . import atomic, outputs
from .devices import default_eval_batch_size, default_eval_compile, resolve_device
from .errors import ConfigError, DataError, NumericalError
from .evaluation.per_request import NDCG_K, items_scored, quota_sweep_values, request_metrics
from .evaluation.quota_grid import resolve_quota_grid
from .evaluation.results import (EVALUATION_KIND, FORMAT_VERSION, KIND, is_complete_evaluation, is_eval_folder,
                                 metric_keys, npz_name, summarize_seeds)
from .evaluation.scoring import item_index, score_arrays
from .hashing import config_hash
from .logs import get_logger
from .progress import Progress
from .run_folder import FinishedRun, load_cascade, seed_number
from .settings import Setting
from .step_config import StepConfig, add_arguments, from_args, integer_at_least, option
from .step_output import StepOutput, step_output


def log(msg: str) -> None:
    """A progress fact on the ``lcron`` logger (stderr; ``lcron -q`` silences it)."""
    get_logger(__name__).info(msg)


# --------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class EvaluateConfig(StepConfig):
    """The choices of one evaluation besides its inputs (run, shards, output folder); checked
    when made. Each field is an ``lcron evaluate`` option and a keyword of :func:`evaluate` with
    the same default, and the evaluate component's parameter of that name
    (tests/test_step_configs.py)."""

    days: str | None = option(None, "test day(s) (default: the shard set's last day; streaming: every day after "
                                    "a trained day)", metavar="DAY|FIRST:LAST")
    streaming: bool = option(False, "score each test day t with the checkpoint saved after day t-1")
    batch_size: int | None = option(None, "requests per inference batch (default: the device's, 512 on CPU, 4096 "
                                          "on CUDA)", metavar="N",
                                  check=integer_at_least(1, "batch size", optional=True))
    device: str = option("auto", "auto (CUDA when present), cpu or cuda", choices=("auto", "cpu", "cuda"))
    compile: bool | None = option(None, "torch.compile DIN's attention core (default: on CPU from 200,000 requests "
                                        "x seeds, where compiling pays for its start-up; never on CUDA)")
    quota_grid: str | None = option(None, "quota tuples of the sweep, e.g. '30,20;25,20;40,20' (default: a grid "
                                          "around the setting's)", metavar="Q1,Q2;...")
    tie_seed: int = option(0, "seed of the metric tie-breaks", metavar="N",
                          check=integer_at_least(0, "tie seed"))
    reference_quirks: bool | None = option(
        None, "the reference's evaluation protocol (drop the last partial batch, padding selectable, recall / 10); "
              "a run trained with --reference-quirks uses it anyway, a default run refuses it (default: the run's)")


# --------------------------------------------------------------------------- planning
@dataclass
class Unit:
    """One evaluation unit: the days pooled into one metric value, and the model file per seed."""

    name: str
    days: list[str]
    checkpoints: dict[int, Path]
    checkpoint_day: str | None = None


def plan_units(shard_set: Any, cfg: Mapping[str, Any], seed_dirs: Sequence[Path], days: str | None,
               streaming: bool, run_dir: Path) -> list[Unit]:
    """What to evaluate: one unit of the chosen test days (model.pt), or one unit per
    streaming test day t (the checkpoint written after the shard day before t)."""
    all_days = list(shard_set.days)
    trained = list(cfg["days"])
    if not streaming:
        chosen = shard_set.select_days(days) if days else all_days[-1:]
        if not chosen:
            raise DataError(f"shard set {shard_set.root} holds no complete day to evaluate")
        return [Unit("test", list(chosen), {seed_number(p): p / "model.pt" for p in seed_dirs})]

    if days:
        chosen = list(shard_set.select_days(days))
    else:
        chosen = [d for i, d in enumerate(all_days) if i > 0 and all_days[i - 1] in trained]
        if not chosen:
            raise ConfigError(f"streaming evaluation: no shard day of {shard_set.root} follows a day trained by "
                              f"{run_dir} (trained: {trained[0]}..{trained[-1]}); give --days FIRST:LAST")
    units = []
    for day in chosen:
        i = all_days.index(day)
        if i == 0:
            raise ConfigError(f"streaming test day {day} is the first day of shard set {shard_set.root}: no model "
                              "was trained on the days before it")
        prev = all_days[i - 1]
        if prev not in trained:
            raise ConfigError(
                f"streaming test day {day}: the day before it ({prev}) was not trained by run {run_dir} "
                f"(trained days: {trained[0]}..{trained[-1]}); choose test days in "
                f"{_next_day(all_days, trained[0])}..{_next_day(all_days, trained[-1])}")
        ckpts = {}
        for p in seed_dirs:
            ck = p / "checkpoints" / f"{prev}.pt"
            if not ck.is_file():
                raise DataError(f"streaming test day {day}: checkpoint {ck} (written after training day {prev}) "
                                "does not exist; streaming evaluation reads the per-day snapshots, which training "
                                "writes only when asked: `lcron train --day-snapshots` (the pipeline: streaming=true)")
            ckpts[seed_number(p)] = ck
        units.append(Unit(day, [day], ckpts, checkpoint_day=prev))
    return units


def _next_day(all_days: list[str], day: str) -> str:
    i = all_days.index(day) if day in all_days else -1
    return all_days[i + 1] if 0 <= i < len(all_days) - 1 else "(none)"


def evaluation_inputs(cfg: Mapping[str, Any], seeds: list[int], units: list[Unit], streaming: bool, tie_seed: int,
                      grid: list[tuple[int, ...]], fingerprint: str) -> dict[str, Any]:
    """Everything the numbers of an evaluation depend on (not the batch size, device or compile)."""
    return {
        "run_config_hash": cfg["config_hash"],
        "seeds": seeds,
        "units": [[u.name, u.days, u.checkpoint_day] for u in units],
        "streaming": streaming,
        "tie_seed": tie_seed,
        "quota_grid": [list(q) for q in grid],
        "data_fingerprint": fingerprint,
        "format_version": FORMAT_VERSION,
    }


# --------------------------------------------------------------------------- the evaluation
def evaluate(run_dir: str | Path, shards: Any = None, out: str | Path | None = None, *, days: str | None = None,
             streaming: bool = False, batch_size: int | None = None, device: str = "auto", compile: bool | None = None,
             quota_grid: "str | Iterable[Sequence[int]] | None" = None, tie_seed: int = 0, overwrite: bool = False,
             progress: bool = True, reference_quirks: bool | None = None) -> dict[str, Any]:
    """Evaluate every completed seed of ``run_dir``; returns metrics.json's content (plus
    ``"skipped"``: True when an identical evaluation already existed, and ``"out"``).

    ``days``: "DAY" or "FIRST:LAST" of the shard set (default: its last day; streaming:
    every day that follows a trained day). ``quota_grid``: "30,20;25,20" or a list of
    quota tuples (default :func:`default_quota_grid`). ``tie_seed`` seeds the metric
    tie-breaks (the same seed for every run makes runs comparable request by request).
    ``reference_quirks``: None follows the run's mode; True/False must match it. A
    reference-mode run is evaluated with the reference's protocol (lcron.reference_policy.protocol).
    The output folder (``out``, default ``<run_dir>/eval``) follows lcron.step_output: locked
    for the step, skipped when it holds this evaluation, refused when it holds another.
    """
    # the choices checked once, before the output folder is touched (EvaluateConfig's own checks)
    EvaluateConfig(days=days, streaming=streaming, batch_size=batch_size, device=device, compile=compile,
                   quota_grid=quota_grid, tie_seed=tie_seed, reference_quirks=reference_quirks)
    out = Path(out) if out is not None else Path(run_dir) / "eval"
    command = outputs.current_command(f"lcron evaluate --model {run_dir} --out {out}")
    with step_output(out, command, kind=EVALUATION_KIND, ours=is_eval_folder,
                     folder_what="an lcron evaluation folder") as step:
        plan = _plan_evaluation(run_dir, shards, days, streaming, quota_grid, tie_seed, reference_quirks)
        claim = step.claim("metrics.json", plan.inputs, plan.inputs_hash, overwrite,
                           held="an evaluation with other inputs")
        if claim.same and not overwrite and is_complete_evaluation(out):
            log(f"evaluation of {plan.run_dir} already in {out} (same run, seeds, days and options); skipped")
            return {**(claim.previous or {}), "skipped": True, "out": str(out)}
        dev = resolve_device(device)
        total_requests = _requests_to_score(plan)
        # devices.DEVICE_DEFAULTS: compile only where the evaluation is big enough to pay for it.
        compile = default_eval_compile(dev, total_requests * len(plan.seeds)) if compile is None else bool(compile)
        batch_size = default_eval_batch_size(dev) if batch_size is None else batch_size
        if compile:
            from .models.fused import compile_in_process, trust_cpu_isa

            trust_cpu_isa()
            compile_in_process()
        overlap = _training_day_overlap(plan)
        prov = _start_helpers(plan.fingerprint, dev)
        bar = Progress(total_requests * len(plan.seeds), f"evaluate {plan.cfg['method']}", unit="req",
                       enabled=progress)
        timing = {"load_and_inference_seconds": 0.0, "metrics_seconds": 0.0}
        results = [_evaluate_unit(unit, plan.shard_set, plan.seeds, plan.setting, plan.grid, tie_seed, batch_size,
                                  dev, compile, bar, timing, reference_batch=plan.reference_batch)
                   for unit in plan.units]
        bar.close()
        timing = {**timing, "requests_scored": total_requests * len(plan.seeds),
                  "requests_per_s": (total_requests * len(plan.seeds) / timing["load_and_inference_seconds"]
                                     if timing["load_and_inference_seconds"] > 0 else None)}
        run_info = {"device": str(dev), "batch_size": batch_size, "compile": bool(compile), "timing": timing,
                    "warnings": overlap}
        doc = _write_evaluation(step, plan, results, run_info, prov)
    return {**doc, "skipped": False, "out": str(out)}


@dataclass
class EvaluationPlan:
    """What an evaluation reads and what its numbers depend on, resolved before anything is scored."""

    run_dir: Path
    cfg: Mapping[str, Any]
    setting: Setting
    seeds: list[int]
    shard_set: Any
    reference: bool
    grid: list[tuple[int, ...]]
    units: list[Unit]
    streaming: bool
    tie_seed: int
    fingerprint: str
    inputs: dict[str, Any]
    inputs_hash: str

    @property
    def reference_batch(self) -> int | None:
        """The batch size of the reference's protocol (it scores full batches only); None by default."""
        return int(self.cfg["train"]["batch_size"]) if self.reference else None


def _plan_evaluation(run_dir: str | Path, shards: Any, days: str | None, streaming: bool, quota_grid: Any,
                     tie_seed: int, reference_quirks: bool | None) -> EvaluationPlan:
    """Check the run (the options were checked by EvaluateConfig), choose the units; the inputs and
    their hash name the evaluation."""
    from .reference_policy import mode

    run = FinishedRun.open(run_dir)
    run_dir, cfg, setting, seed_dirs, seeds = run.root, run.config, run.setting, run.seed_dirs, run.seeds
    shard_set = run.shards(shards)
    reference = run.reference_quirks
    if reference_quirks is not None:
        mode.check_match(reference_quirks, reference, step="evaluate", what=f"run {run_dir}",
                         fix="give --reference-quirks exactly when the run was trained with it")
    mode.check_match(reference, shard_set.reference_quirks, step="evaluate", what=f"shard set {shard_set.root}",
                     fix="evaluate on shards preprocessed in the run's mode")
    grid = resolve_quota_grid(quota_grid, setting)
    units = plan_units(shard_set, cfg, seed_dirs, days, streaming, run_dir)
    fingerprint = shard_set.fingerprint()
    inputs = evaluation_inputs(cfg, seeds, units, streaming, tie_seed, grid, fingerprint)
    if reference:  # only when set, so default-mode evaluations keep their inputs hash
        inputs["protocol"] = "reference"
    return EvaluationPlan(run_dir, cfg, setting, seeds, shard_set, reference, grid, units, streaming, tie_seed,
                          fingerprint, inputs, config_hash(inputs))


def _requests_to_score(plan: EvaluationPlan) -> int:
    """Requests of the units' days one seed scores (the reference protocol: full batches only)."""
    ref_batch = plan.reference_batch
    if ref_batch is not None:
        return sum(plan.shard_set.num_requests(d) // ref_batch * ref_batch for u in plan.units for d in u.days)
    return sum(plan.shard_set.num_requests(d) for u in plan.units for d in u.days)


def _training_day_overlap(plan: EvaluationPlan) -> list[str]:
    """The test days the run also trained on (not streaming), each warned about and recorded."""
    trained = set(plan.cfg["days"])
    overlap = [f"test day {d} was also a training day of this run" for u in plan.units for d in u.days
               if u.checkpoint_day is None and d in trained]
    for w in overlap:
        warnings.warn(f"{w}: its metrics measure fit to training data, not generalisation", stacklevel=2)
    return overlap


def _start_helpers(fingerprint: str, dev: Any) -> Any:
    """Start-up work off the critical path: a helper thread collects the provenance record (git
    subprocesses, package metadata) and imports the plotting library while the models score
    (scoring runs in torch kernels that release the GIL). Returns the provenance's future."""
    from concurrent.futures import ThreadPoolExecutor

    from . import plots, provenance

    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lcron-eval-helper")
    prov = pool.submit(provenance.collect, data_fingerprint=fingerprint, device=str(dev))
    pool.submit(plots.preload)
    pool.shutdown(wait=False)  # the thread ends after these tasks; the record is read at the end
    return prov


def _metric_table(results: list["UnitResult"], keys: list[str], seeds: list[int]) -> dict[str, Any]:
    """Per seed: the mean over units (one unit unless streaming), then mean/std over seeds."""
    def seed_values(key: str) -> list[float]:
        per_unit = np.array([[u.means[i][key] for i in range(len(seeds))] for u in results], dtype=np.float64)
        with np.errstate(all="ignore"):
            return [float(v) if np.isfinite(per_unit[:, i]).any() else math.nan
                    for i, v in enumerate(np.nanmean(np.where(np.isfinite(per_unit), per_unit, np.nan), axis=0))]

    with np.errstate(all="ignore"):
        return {k: summarize_seeds(seed_values(k)) for k in keys}


def _write_evaluation(step: StepOutput, plan: EvaluationPlan, results: list["UnitResult"],
                      run_info: Mapping[str, Any], prov: Any) -> dict[str, Any]:
    """Write the evaluation's files between the step's begin and finish markers, metrics.json
    last; returns its document."""
    from . import plots

    out, cfg, setting, seeds = step.folder, plan.cfg, plan.setting, plan.seeds
    keys = metric_keys(setting)
    metric_table = _metric_table(results, keys, seeds)
    sweep_rows = _sweep_rows(results, plan.grid, setting, seeds)
    # Marked "being written" only now: a failure before this point leaves a previous evaluation intact.
    step.begin()
    _write_per_request(out / "per_request.npz", results, keys, seeds)
    sweep_doc = {"kind": "lcron-quota-sweep", "method": cfg["method"], "setting": setting.name,
                 "stage_names": list(setting.stage_names), "default_quotas": list(setting.quotas),
                 "list_size": setting.list_size, "seeds": seeds, "rows": sweep_rows}
    atomic.write_json(out / "quota_sweep.json", sweep_doc)
    atomic.write_bytes(out / "quota_sweep.png", plots.quota_sweep_png(sweep_rows, setting.stage_names,
                                                                      title=f"{cfg['method']} ({setting.name})"))
    files = {"per_request": "per_request.npz", "quota_sweep": "quota_sweep.json",
             "quota_sweep_plot": "quota_sweep.png"}
    if plan.streaming:
        atomic.write_json(out / "streaming.json", _streaming_doc(results, keys, seeds, cfg, setting, metric_table))
        files["streaming"] = "streaming.json"
    doc = _metrics_doc(plan, results, metric_table, sweep_rows, run_info, files, prov.result())
    atomic.write_json(out / "metrics.json", doc)
    step.finish([out / name for name in files.values()] + [out / "metrics.json"])
    evaluated, skipped = doc["requests"]["evaluated"], doc["requests"]["skipped"]
    log(f"evaluated {cfg['method']} ({len(seeds)} seed(s), {evaluated} requests"
        f"{f', {skipped} skipped' if skipped else ''}): joint recall "
        f"{_fmt(metric_table['joint_recall'])}; {doc['timing']['requests_per_s'] or 0:,.0f} requests/s "
        f"(load + inference); outputs in {out}")
    return doc


def _metrics_doc(plan: EvaluationPlan, results: list["UnitResult"], metric_table: dict[str, Any],
                 sweep_rows: list[dict[str, Any]], run_info: Mapping[str, Any], files: dict[str, str],
                 provenance: Any) -> dict[str, Any]:
    """metrics.json's document (its keys in the order they have always been written)."""
    cfg, setting, units = plan.cfg, plan.setting, plan.units
    evaluated = sum(u.evaluated for u in results)
    skipped = sum(u.skipped for u in results)
    return {
        "kind": KIND,
        "format_version": FORMAT_VERSION,
        "method": cfg["method"],
        "loss_options": cfg.get("loss_options", {}),
        "reference_quirks": plan.reference,
        "setting": setting.name,
        "stage_names": list(setting.stage_names),
        "stage_models": list(setting.stage_models),
        "quotas": list(setting.quotas),
        "list_size": setting.list_size,
        "gt_size": setting.gt_size,
        "ndcg_k": NDCG_K,
        "streaming": bool(plan.streaming),
        "days": [d for u in units for d in u.days],
        "checkpoint_days": {u.name: u.checkpoint_day for u in units} if plan.streaming else None,
        "trained_days": list(cfg["days"]),
        "seeds": plan.seeds,
        "requests": {"evaluated": evaluated, "skipped": skipped, "total": evaluated + skipped},
        "metrics": metric_table,
        "gt_per_request": _finite_mean([u.gt_per_request for u in results]),
        "quota_sweep": sweep_rows,
        "run_dir": str(plan.run_dir),
        "run_config_hash": cfg["config_hash"],
        "shards": str(plan.shard_set.root),
        "data_fingerprint": plan.fingerprint,
        "train_data_fingerprint": cfg.get("data_fingerprint"),
        "tie_seed": plan.tie_seed,
        "inputs": plan.inputs,
        "inputs_hash": plan.inputs_hash,
        "device": run_info["device"],
        "batch_size": run_info["batch_size"],
        "compile": run_info["compile"],
        "timing": run_info["timing"],
        "warnings": run_info["warnings"],
        "files": files,
        "provenance": provenance,
    }


def _finite_mean(values: Sequence[float]) -> float | None:
    ok = [v for v in values if math.isfinite(v)]
    return float(np.mean(ok)) if ok else None


def _fmt(entry: Mapping[str, Any]) -> str:
    if entry["mean"] is None:
        return "n/a"
    return f"{entry['mean']:.4f}" + (f" ± {entry['std']:.4f}" if entry["std"] is not None else "") + f" (n={entry['n']})"


@dataclass
class UnitResult:
    """The numbers of one evaluation unit: per seed, the means and per-request values of every
    key and the sweep's recalls; per request, its id and day."""

    unit: Unit
    means: list[dict[str, float]]
    per_request: list[dict[str, np.ndarray]]
    sweep: list[np.ndarray]
    request_id: np.ndarray
    day: np.ndarray
    evaluated: int
    skipped: int
    gt_per_request: float
    items_scored: dict[tuple[int, ...], np.ndarray]


def _evaluate_unit(unit: Unit, shard_set: Any, seeds: list[int], setting: Setting, grid: list[tuple[int, ...]],
                   tie_seed: int, batch_size: int, dev: Any, compile: bool, bar: Progress,
                   timing: dict[str, float], reference_batch: int | None = None) -> UnitResult:
    """Score the unit's days with every seed's model and compute every metric; adds the time
    spent loading + scoring and computing metrics to ``timing``. ``reference_batch``: use the
    reference's protocol (lcron.reference_policy.protocol) with that batch size."""
    from .reference_policy import protocol

    t0 = time.perf_counter()
    day_arrays = [shard_set.load_day(d) for d in unit.days]
    if reference_batch is not None:
        day_arrays = [protocol.full_batches(a, reference_batch, where=f"test day {d}") for a, d in zip(day_arrays, unit.days)]
    metrics_fn = protocol.request_metrics if reference_batch is not None else request_metrics
    sweep_fn = protocol.quota_sweep_values if reference_batch is not None else quota_sweep_values
    labels = np.concatenate([np.asarray(a["label"]) for a in day_arrays])
    mask = np.concatenate([np.asarray(a["mask"]) for a in day_arrays])
    request_id = np.concatenate([np.asarray(a["request_id"]) for a in day_arrays])
    day = np.concatenate([np.full(len(a["label"]), d) for a, d in zip(day_arrays, unit.days)])
    indexes = [item_index(a["items"]) for a in day_arrays]  # shared by every seed
    timing["load_and_inference_seconds"] += time.perf_counter() - t0

    means, per_request, sweeps = [], [], []
    for seed in seeds:
        t0 = time.perf_counter()
        cascade, _ = load_cascade(unit.checkpoints[seed], dev, compile=compile)
        parts = [score_arrays(cascade, a, batch_size=batch_size, device=dev, pad_last=compile, bar=bar, items=ix)
                 for a, ix in zip(day_arrays, indexes)]
        scores = [np.concatenate([p[s] for p in parts]) for s in range(len(parts[0]))]
        t1 = time.perf_counter()
        timing["load_and_inference_seconds"] += t1 - t0
        try:
            per, mean, _ = metrics_fn(scores, labels, mask, setting, tie_seed)
            sweeps.append(sweep_fn(scores, labels, mask, setting, grid, tie_seed))
        except NumericalError as exc:
            raise NumericalError(f"seed {seed}, {unit.checkpoints[seed]} on {', '.join(unit.days)}: {exc}") from None
        timing["metrics_seconds"] += time.perf_counter() - t1
        means.append(mean)
        per_request.append(per)

    n_valid = mask.astype(bool).sum(axis=1)
    evaluated = int((n_valid > 0).sum()) if reference_batch is None else len(n_valid)
    gt_sizes = np.minimum(setting.gt_size, n_valid[n_valid > 0])
    return UnitResult(unit=unit, means=means, per_request=per_request, sweep=sweeps, request_id=request_id, day=day,
                      evaluated=evaluated, skipped=int(len(mask) - evaluated),
                      gt_per_request=float(gt_sizes.mean()) if gt_sizes.size else math.nan,
                      items_scored={tuple(q): items_scored(mask, q) for q in grid})


def _sweep_rows(results: list[UnitResult], grid: list[tuple[int, ...]], setting: Setting,
                seeds: list[int]) -> list[dict[str, Any]]:
    rows = []
    for g, q in enumerate(grid):
        per_seed = [float(np.nanmean([u.sweep[i][g] for u in results])) for i in range(len(seeds))]
        items = np.nanmean(np.stack([u.items_scored[q] for u in results]), axis=0)
        rows.append({
            "quotas": list(q),
            "default": tuple(q) == tuple(setting.quotas),
            "items_scored": {name: float(items[s]) for s, name in enumerate(setting.stage_names)},
            "items_scored_after_first": float(items[1:].sum()),
            "joint_recall": summarize_seeds(per_seed),
        })
    return rows


def _write_per_request(path: Path, results: list[UnitResult], keys: list[str], seeds: list[int]) -> None:
    arrays: dict[str, np.ndarray] = {
        "request_id": np.concatenate([u.request_id for u in results]).astype(np.int64),
        "day": np.concatenate([u.day for u in results]).astype("U10"),
        "seeds": np.asarray(seeds, dtype=np.int64),
    }
    for key in keys:
        if key.startswith("funnel/lost_share/"):
            continue  # a share of the lost GT items is a property of the whole set, not of a request
        arrays[npz_name(key)] = np.stack([
            np.concatenate([u.per_request[i][key] for u in results]) for i in range(len(seeds))
        ]).astype(np.float32)
    with atomic.atomic_open(path, "wb") as fh:
        np.savez_compressed(fh, **arrays)


def _streaming_doc(results: list[UnitResult], keys: list[str], seeds: list[int], cfg: Mapping[str, Any],
                   setting: Setting, average: Mapping[str, Any]) -> dict[str, Any]:
    days = []
    for u in results:
        days.append({
            "day": u.unit.name,
            "checkpoint_day": u.unit.checkpoint_day,
            "checkpoints": {str(s): str(p) for s, p in u.unit.checkpoints.items()},
            "requests": {"evaluated": u.evaluated, "skipped": u.skipped},
            "metrics": {k: summarize_seeds([m[k] for m in u.means]) for k in keys},
        })
    return {"kind": "lcron-streaming-evaluation", "method": cfg["method"], "setting": setting.name,
            "seeds": seeds, "days": days, "average": dict(average)}


# --------------------------------------------------------------------------- CLI
def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``lcron evaluate``."""
    parser.add_argument("--model", required=True, metavar="RUN_DIR", help="training run folder (holds run.json)")
    parser.add_argument("--shards", default=None, metavar="DIR", help="shard set (default: the run's own)")
    parser.add_argument("--out", default=None, metavar="DIR", help="output folder (default: RUN_DIR/eval)")
    add_arguments(parser, EvaluateConfig)  # one option per EvaluateConfig field
    parser.add_argument("--overwrite", action="store_true", help="replace an evaluation made with other inputs")
    # -q/--quiet (no progress output) is added to every subcommand by lcron.cli.


def run_evaluate(args: argparse.Namespace) -> int:
    """``lcron evaluate``: evaluate a run and print where the outputs are."""
    config = from_args(EvaluateConfig, args)
    res = evaluate(args.model, args.shards, args.out, **config.as_kwargs(), overwrite=args.overwrite,
                   progress=not getattr(args, "quiet", False))
    out = Path(res["out"])
    print(f"metrics: {out / 'metrics.json'}")
    for key, name in res.get("files", {}).items():
        print(f"{key.replace('_', ' ')}: {out / name}")
    return 0
