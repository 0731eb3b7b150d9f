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
import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from . import atomic, metrics, outputs
from .errors import ConfigError, DataError, NumericalError, OutputExistsError
from .progress import Progress
from .logs import get_logger
from .settings import Setting, SettingError

KIND = "lcron-evaluation"
FORMAT_VERSION = 1
NDCG_K = 10
SWEEP_POINTS = 5


def log(msg: str) -> None:
    """A progress fact on the ``lcron`` logger (stderr; ``lcron -q`` silences it)."""
    get_logger(__name__).info(msg)


# --------------------------------------------------------------------------- metric keys
def metric_keys(setting: Setting) -> list[str]:
    """Every metric key of metrics.json for ``setting``, in report order."""
    names = setting.stage_names
    return (["joint_recall"]
            + [f"recall_at_10_m/{s}" for s in names]
            + [f"ndcg_at_10/{s}" for s in names]
            + [f"funnel/gt_after/{s}" for s in names]
            + [f"funnel/lost_share/{s}" for s in names])


def npz_name(key: str) -> str:
    """The per_request.npz array name of a metric key ('/' is not safe inside a zip member name)."""
    return key.replace("/", "__")


def aggregate(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean over seeds, sample standard deviation (ddof = 1; None for fewer than 2 values), n.

    NaN/None values (a seed on which the metric is undefined) are kept in ``per_seed`` as
    None and left out of mean, std and n."""
    per_seed = [None if v is None or not math.isfinite(float(v)) else float(v) for v in values]
    ok = np.array([v for v in per_seed if v is not None], dtype=np.float64)
    n = int(ok.size)
    return {
        "mean": float(ok.mean()) if n else None,
        "std": float(ok.std(ddof=1)) if n > 1 else None,
        "n": n,
        "per_seed": per_seed,
    }


# --------------------------------------------------------------------------- quota grid
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
    if quota_grid is None:
        return default_quota_grid(setting)
    if isinstance(quota_grid, str):
        return parse_quota_grid(quota_grid, setting)
    grid = [check_quotas(q, setting) for q in quota_grid]
    if not grid:
        raise ConfigError("the quota grid is empty")
    return list(dict.fromkeys(grid))


# --------------------------------------------------------------------------- scoring
@dataclass
class ItemIndex:
    """The distinct candidate feature rows of a day and where each slot points.

    A two-tower model's item vector depends only on the item's 8 feature ids, and a day's
    candidate slots repeat the same items many times (RecFlow: a few thousand popular
    videos fill most lists). Running the item tower once per distinct row instead of once
    per slot is how a retrieval model is served, and it removes most of the first stage's
    inference cost; ``unique[inverse[r, n]]`` is slot (r, n)'s feature row.
    """

    unique: np.ndarray  # [U, F] the distinct rows
    inverse: np.ndarray  # [R, N] int64 index into unique


def item_index(items: np.ndarray) -> ItemIndex:
    """Distinct rows of ``items`` [R, N, F] (one sort of the rows viewed as fixed-size bytes)."""
    items = np.ascontiguousarray(items)
    r, n, f = items.shape
    flat = items.reshape(r * n, f)
    keys = flat.view(np.dtype((np.void, flat.dtype.itemsize * f))).ravel()
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    return ItemIndex(flat[first], inverse.reshape(r, n).astype(np.int64))


def stage_models(cascade: Any) -> list[Any]:
    """The stage models of a cascade in stage order (``.models`` as a list or a ModuleDict)."""
    models = cascade.models
    return list(models.values()) if hasattr(models, "values") else list(models)


def _two_tower(model: Any) -> bool:
    return callable(getattr(model, "user_vectors", None)) and callable(getattr(model, "item_vectors", None))


def score_arrays(cascade: Any, arrays: Mapping[str, np.ndarray], *, batch_size: int = 4096,
                 device: Any = "cpu", pad_last: bool = False, bar: Progress | None = None,
                 items: ItemIndex | None = None) -> list[np.ndarray]:
    """Logits of every stage model for every slot of a day: a list of float32 [R, N], first stage first.

    Batches are consecutive row ranges (contiguous reads of the memory-mapped shards).
    ``pad_last`` repeats the last row to fill the final partial batch, so a compiled model
    (static shapes) does not compile a second graph for it; the padding rows are dropped.
    With ``items`` (:func:`item_index` of ``arrays["items"]``), a two-tower first stage
    scores as it is served: its item tower runs once per distinct item, and each slot's
    logit is the dot product of the request's user vector with its item's vector (the
    model's forward up to float rounding).
    """
    import torch

    from .batches import gather
    from .data.fields import MODEL_INPUTS

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch size must be an integer >= 1, got {batch_size!r}")
    r, n = arrays["mask"].shape
    models = stage_models(cascade)
    if r == 0:
        return [np.empty((r, n), dtype=np.float32) for _ in models]
    size = even_batch_size(r, batch_size)
    first = models[0]
    dedup = items is not None and _two_tower(first)
    parts: list[list[Any]] = [[] for _ in models]
    with torch.inference_mode():
        if dedup:
            vectors = torch.cat([
                first.item_vectors(torch.from_numpy(items.unique[i:i + size * n].astype(np.int64)).to(device))
                for i in range(0, len(items.unique), size * n)])
            inverse = torch.from_numpy(items.inverse).to(vectors.device)
        for start in range(0, r, size):
            stop = min(start + size, r)
            rows: slice | np.ndarray = slice(start, stop)
            if pad_last and stop - start < size:
                rows = np.concatenate([np.arange(start, stop), np.full(size - (stop - start), stop - 1)])
            batch = gather(arrays, rows, MODEL_INPUTS, device)
            if dedup:
                u = first.user_vectors(batch)[: stop - start]
                v = vectors[inverse[start:stop]]
                parts[0].append(torch.bmm(v, u.unsqueeze(-1)).squeeze(-1).float())
            for s in range(1 if dedup else 0, len(models)):
                parts[s].append(models[s](batch)[: stop - start].float())
            if bar is not None:
                bar.update(stop - start)
        # Scores stay on the device until here: one copy to the host per stage, no per-batch sync.
        return [torch.cat(p).cpu().numpy() for p in parts]


def even_batch_size(rows: int, batch_size: int) -> int:
    """The batch size that covers ``rows`` in as few batches as ``batch_size`` allows, all of
    (nearly) one size: 6,000 rows at 4,096 give 2 x 3,000, not 4,096 + a last batch padded
    from 1,904 to 4,096 (a third of the work wasted under ``pad_last``)."""
    batches = -(-rows // batch_size)
    return -(-rows // batches)


# --------------------------------------------------------------------------- metrics of scores
def request_metrics(scores: Sequence[np.ndarray], labels: np.ndarray, mask: np.ndarray, setting: Setting,
                    tie_seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, float], dict[str, Any]]:
    """Per-request values ([R] per key, NaN for a request without valid slot), the per-key
    means over requests, and the GT funnel summary, for one seed's scores."""
    rm = metrics.cascade_metrics(scores, labels, mask, setting.quotas, gt=setting.gt_size, ndcg_k=NDCG_K,
                                 seed=tie_seed)
    skipped = rm.gt_size == 0
    per: dict[str, np.ndarray] = {"joint_recall": rm.joint_recall}
    for s, name in enumerate(setting.stage_names):
        per[f"recall_at_10_m/{name}"] = rm.recall_at_k_m[s]
        per[f"ndcg_at_10/{name}"] = rm.ndcg_at_k[s]
    for s, name in enumerate(setting.stage_names):
        per[f"funnel/gt_after/{name}"] = np.where(skipped, np.nan, rm.gt_survivors[s].astype(np.float64))
    funnel = metrics.summarize_funnel(rm.gt_survivors, rm.gt_size, setting.quotas, setting.stage_names)
    means = {k: metrics.request_mean(v).mean for k, v in per.items()}
    for st in funnel["stages"]:
        means[f"funnel/lost_share/{st['stage']}"] = st["gt_lost_share"] if funnel["gt_lost_total"] else math.nan
    return per, means, funnel


def items_scored(mask: np.ndarray, quotas: Sequence[int]) -> np.ndarray:
    """Mean number of items each stage scores per request (requests with a valid slot):
    stage 1 scores the n valid slots, stage s the min(quota_{s-1}, n) survivors of stage s-1."""
    n = np.asarray(mask).astype(bool).sum(axis=1)
    n = n[n > 0].astype(np.float64)
    if n.size == 0:
        return np.full(len(quotas), np.nan)
    cols = [n] + [np.minimum(q, n) for q in quotas[:-1]]
    return np.array([c.mean() for c in cols])


def quota_sweep_values(scores: Sequence[np.ndarray], labels: np.ndarray, mask: np.ndarray, setting: Setting,
                       grid: Sequence[Sequence[int]], tie_seed: int = 0) -> np.ndarray:
    """Mean end-to-end recall of one seed's fixed scores for each quota tuple of ``grid`` ([G])."""
    return np.array([
        metrics.request_mean(metrics.joint_recall(scores, labels, mask, tuple(q), gt=setting.gt_size,
                                                  seed=tie_seed)).mean
        for q in grid
    ])


# --------------------------------------------------------------------------- planning
@dataclass
class Unit:
    """One evaluation unit: the days pooled into one metric value, and the model file per seed."""

    name: str
    days: list[str]
    checkpoints: dict[int, Path]
    checkpoint_day: str | None = None


def read_run_config(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "run.json"
    if not path.is_file():
        raise DataError(f"{run_dir} is not a training run folder (no run.json)")
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} is not valid JSON: {exc}") from None
    for key in ("method", "setting", "embedding_sizes", "config_hash", "days"):
        if key not in cfg:
            raise DataError(f"{path} lacks the field {key!r}; was it written by lcron train?")
    return cfg


def _seed_number(folder: Path) -> int:
    return int(folder.name.split("-", 1)[1])


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
        return [Unit("test", list(chosen), {_seed_number(p): p / "model.pt" for p in seed_dirs})]

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
                                "does not exist")
            ckpts[_seed_number(p)] = ck
        units.append(Unit(day, [day], ckpts, checkpoint_day=prev))
    return units


def _next_day(all_days: list[str], day: str) -> str:
    i = all_days.index(day) if day in all_days else -1
    return all_days[i + 1] if 0 <= i < len(all_days) - 1 else "(none)"


def open_run_shards(shards: Any, cfg: Mapping[str, Any], setting: Setting) -> Any:
    """The shard set to evaluate a run on (run.json's by default), checked against what the run was trained on."""
    from .data.shards import ShardSet

    if shards is None:
        if not cfg.get("shards"):
            raise ConfigError("run.json names no shard set; pass --shards DIR")
        shards = cfg["shards"]
    shard_set = shards if isinstance(shards, ShardSet) else ShardSet(shards)
    ss = shard_set.setting
    if ss.groups != setting.groups or ss.group_size != setting.group_size:
        raise ConfigError(f"shard set {shard_set.root} has setting {ss.name!r} (groups {list(ss.groups)}), the run "
                          f"was trained for {setting.name!r} (groups {list(setting.groups)})")
    sizes = {k: int(v) for k, v in shard_set.embedding_sizes.items()}
    trained_sizes = {k: int(v) for k, v in cfg["embedding_sizes"].items()}
    if sizes != trained_sizes:
        diff = sorted(k for k in set(sizes) | set(trained_sizes) if sizes.get(k) != trained_sizes.get(k))
        raise ConfigError(f"shard set {shard_set.root} has other vocabulary sizes than the run was trained with "
                          f"(fields {diff}); ids would not match the embedding tables")
    return shard_set


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


# --------------------------------------------------------------------------- completion
EVALUATION_KIND = "evaluation"


def _legacy_evaluation_problem(eval_dir: Path) -> str | None:
    """An evaluation written before completion markers: complete when metrics.json (written
    last) exists and names files that all exist."""
    try:
        doc = json.loads((eval_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return f"{eval_dir / 'metrics.json'} is missing or not readable"
    files = doc.get("files") if isinstance(doc, dict) else None
    for name in (files or {}).values():
        if not (eval_dir / str(name)).is_file():
            return f"{eval_dir / str(name)} is missing"
    return None


def require_complete_evaluation(eval_dir: str | Path) -> None:
    """Refuse an evaluation folder that ``lcron evaluate`` has not finished."""
    eval_dir = Path(eval_dir)
    outputs.require_complete(eval_dir, EVALUATION_KIND, "evaluation",
                             f"lcron evaluate --model RUN_DIR --out {eval_dir} (the same options as before)",
                             legacy=_legacy_evaluation_problem)


def evaluate(run_dir: str | Path, shards: Any = None, out: str | Path | None = None, **kwargs: Any) -> dict[str, Any]:
    """Evaluate a run (see :func:`_evaluate`) while holding the lock of the output folder."""
    folder = Path(out) if out is not None else Path(run_dir) / "eval"
    fallback = f"lcron evaluate --model {run_dir} --out {folder}"
    with outputs.output_lock(folder, outputs.current_command(fallback)):
        return _evaluate(run_dir, shards, folder, **kwargs)


# --------------------------------------------------------------------------- the evaluation
def _evaluate(run_dir: str | Path, shards: Any = None, out: str | Path | None = None, *, days: str | None = None,
             streaming: bool = False, batch_size: int = 4096, device: str = "auto", compile: bool | None = None,
             quota_grid: "str | Iterable[Sequence[int]] | None" = None, tie_seed: int = 0, overwrite: bool = False,
             progress: bool = True, reference_quirks: bool | None = None) -> dict[str, Any]:
    """Evaluate every completed seed of ``run_dir``; returns metrics.json's content (plus
    ``"skipped"``: True when an identical evaluation already existed, and ``"out"``).

    ``days``: "DAY" or "FIRST:LAST" of the shard set (default: its last day; streaming:
    every day that follows a trained day). ``quota_grid``: "30,20;25,20" or a list of
    quota tuples (default :func:`default_quota_grid`). ``tie_seed`` seeds the metric
    tie-breaks (the same seed for every run makes runs comparable request by request).
    ``reference_quirks``: None follows the run's mode; True/False must match it. A
    reference-mode run is evaluated with the reference's protocol (lcron.reference.protocol).
    """
    from .reference import mode
    from .train import config_hash, resolve_device, run_seeds
    from .train_step import plan_step

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch size must be an integer >= 1, got {batch_size!r}")
    if isinstance(tie_seed, bool) or not isinstance(tie_seed, int) or tie_seed < 0:
        raise ConfigError(f"tie seed must be an integer >= 0, got {tie_seed!r}")
    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir)
    setting = Setting.from_dict(cfg["setting"])
    seed_dirs = run_seeds(run_dir)
    seeds = [_seed_number(p) for p in seed_dirs]
    shard_set = open_run_shards(shards, cfg, setting)
    reference = mode.recorded(cfg)
    if reference_quirks is not None:
        mode.check_match(reference_quirks, reference, step="evaluate", what=f"run {run_dir}",
                         fix="give --reference-quirks exactly when the run was trained with it")
    mode.check_match(reference, shard_set.reference_quirks, step="evaluate", what=f"shard set {shard_set.root}",
                     fix="evaluate on shards preprocessed in the run's mode")
    grid = resolve_quota_grid(quota_grid, setting)
    units = plan_units(shard_set, cfg, seed_dirs, days, streaming, run_dir)
    fingerprint = shard_set.fingerprint()
    out = Path(out) if out is not None else run_dir / "eval"
    inputs = evaluation_inputs(cfg, seeds, units, streaming, tie_seed, grid, fingerprint)
    if reference:  # only when set, so default-mode evaluations keep their inputs hash
        inputs["protocol"] = "reference"
    inputs_hash = config_hash(inputs)

    metrics_path = out / "metrics.json"
    if metrics_path.exists():
        try:
            old = json.loads(metrics_path.read_text())
        except json.JSONDecodeError:
            old = {}
        if (old.get("inputs_hash") == inputs_hash and not overwrite
                and outputs.is_complete(out, EVALUATION_KIND, _legacy_evaluation_problem)):
            log(f"evaluation of {run_dir} already in {out} (same run, seeds, days and options); skipped")
            return {**old, "skipped": True, "out": str(out)}
        if not overwrite and old.get("inputs_hash") != inputs_hash:
            before = old.get("inputs") or {}
            diff = [f"{k} {before.get(k)!r} -> {inputs[k]!r}" for k in inputs if before.get(k) != inputs[k]]
            raise OutputExistsError(
                f"{out} holds an evaluation with other inputs ({'; '.join(diff) or 'unknown format'}); "
                "choose another --out or pass --overwrite")

    dev = resolve_device(device)
    compile = plan_step(dev, compile=compile).compile  # None: the device's default (train_step.DEVICE_DEFAULTS)
    if compile:
        from .models.fused import trust_cpu_isa

        trust_cpu_isa()
    keys = metric_keys(setting)
    trained = set(cfg["days"])
    warnings = [f"test day {d} was also a training day of this run" for u in units for d in u.days
                if u.checkpoint_day is None and d in trained]
    for w in warnings:
        log(f"warning: {w}")

    # Start-up work off the critical path: a helper thread collects the provenance record (git
    # subprocesses, package metadata) and imports the plotting library while the models score
    # (scoring runs in torch kernels that release the GIL).
    from concurrent.futures import ThreadPoolExecutor

    from . import plots, provenance

    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lcron-eval-helper")
    prov = pool.submit(provenance.collect, data_fingerprint=fingerprint, device=str(dev))
    pool.submit(plots.preload)
    pool.shutdown(wait=False)  # the thread ends after these tasks; the record is read at the end

    total_requests = sum(shard_set.num_requests(d) for u in units for d in u.days)
    ref_batch = int(cfg["train"]["batch_size"]) if reference else None
    if ref_batch is not None:  # the reference protocol scores full batches only
        total_requests = sum(shard_set.num_requests(d) // ref_batch * ref_batch for u in units for d in u.days)
    bar = Progress(total_requests * len(seeds), f"evaluate {cfg['method']}", unit="req", enabled=progress)
    timing = {"load_and_inference_seconds": 0.0, "metrics_seconds": 0.0}
    results = [_evaluate_unit(unit, shard_set, seeds, setting, grid, tie_seed, batch_size, dev, compile, bar, timing,
                              reference_batch=ref_batch)
               for unit in units]
    bar.close()

    # Per seed: the mean over units (one unit unless streaming), then mean/std over seeds.
    def seed_values(key: str) -> list[float]:
        per_unit = np.array([[u.means[i][key] for i in range(len(seeds))] for u in results], dtype=np.float64)
        with np.errstate(all="ignore"):
            return [float(v) if np.isfinite(per_unit[:, i]).any() else math.nan
                    for i, v in enumerate(np.nanmean(np.where(np.isfinite(per_unit), per_unit, np.nan), axis=0))]

    with np.errstate(all="ignore"):
        metric_table = {k: aggregate(seed_values(k)) for k in keys}
    sweep_rows = _sweep_rows(results, grid, setting, seeds)
    evaluated = sum(u.evaluated for u in results)
    skipped = sum(u.skipped for u in results)
    requests_scored = total_requests * len(seeds)

    out.mkdir(parents=True, exist_ok=True)
    # Marked "being written" only now: a failure before this point leaves a previous evaluation intact.
    outputs.begin(out, EVALUATION_KIND, outputs.current_command(f"lcron evaluate --model {run_dir} --out {out}"))
    _write_per_request(out / "per_request.npz", results, keys, seeds)
    sweep_doc = {"kind": "lcron-quota-sweep", "method": cfg["method"], "setting": setting.name,
                 "stage_names": list(setting.stage_names), "default_quotas": list(setting.quotas),
                 "list_size": setting.list_size, "seeds": seeds, "rows": sweep_rows}
    atomic.write_json(out / "quota_sweep.json", sweep_doc)
    atomic.write_bytes(out / "quota_sweep.png", plots.quota_sweep_png(sweep_rows, setting.stage_names,
                                                                      title=f"{cfg['method']} ({setting.name})"))
    files = {"per_request": "per_request.npz", "quota_sweep": "quota_sweep.json",
             "quota_sweep_plot": "quota_sweep.png"}
    if streaming:
        atomic.write_json(out / "streaming.json", _streaming_doc(results, keys, seeds, cfg, setting, metric_table))
        files["streaming"] = "streaming.json"

    doc = {
        "kind": KIND,
        "format_version": FORMAT_VERSION,
        "method": cfg["method"],
        "loss_options": cfg.get("loss_options", {}),
        "reference_quirks": reference,
        "setting": setting.name,
        "stage_names": list(setting.stage_names),
        "quotas": list(setting.quotas),
        "list_size": setting.list_size,
        "gt_size": setting.gt_size,
        "ndcg_k": NDCG_K,
        "streaming": bool(streaming),
        "days": [d for u in units for d in u.days],
        "checkpoint_days": {u.name: u.checkpoint_day for u in units} if streaming else None,
        "trained_days": list(cfg["days"]),
        "seeds": seeds,
        "requests": {"evaluated": evaluated, "skipped": skipped, "total": evaluated + skipped},
        "metrics": metric_table,
        "gt_per_request": _finite_mean([u.gt_per_request for u in results]),
        "quota_sweep": sweep_rows,
        "run_dir": str(run_dir),
        "run_config_hash": cfg["config_hash"],
        "shards": str(shard_set.root),
        "data_fingerprint": fingerprint,
        "train_data_fingerprint": cfg.get("data_fingerprint"),
        "tie_seed": tie_seed,
        "inputs": inputs,
        "inputs_hash": inputs_hash,
        "device": str(dev),
        "batch_size": batch_size,
        "compile": bool(compile),
        "timing": {
            **timing,
            "requests_scored": requests_scored,
            "requests_per_s": (requests_scored / timing["load_and_inference_seconds"]
                               if timing["load_and_inference_seconds"] > 0 else None),
        },
        "warnings": warnings,
        "files": files,
        "provenance": prov.result(),
    }
    atomic.write_json(metrics_path, doc)
    outputs.finish(out, EVALUATION_KIND, [out / name for name in files.values()] + [metrics_path])
    log(f"evaluated {cfg['method']} ({len(seeds)} seed(s), {evaluated} requests"
        f"{f', {skipped} skipped' if skipped else ''}): joint recall "
        f"{_fmt(metric_table['joint_recall'])}; {doc['timing']['requests_per_s'] or 0:,.0f} requests/s "
        f"(load + inference); outputs in {out}")
    return {**doc, "skipped": False, "out": str(out)}


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
    reference's protocol (lcron.reference.protocol) with that batch size."""
    from .reference import protocol
    from .train import load_cascade

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
            "joint_recall": aggregate(per_seed),
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
            "metrics": {k: aggregate([m[k] for m in u.means]) for k in keys},
        })
    return {"kind": "lcron-streaming-evaluation", "method": cfg["method"], "setting": setting.name,
            "seeds": seeds, "days": days, "average": dict(average)}


def load_per_request(eval_dir: str | Path) -> dict[str, np.ndarray]:
    """per_request.npz of an evaluation folder as a dict of arrays (no pickle)."""
    path = Path(eval_dir) / "per_request.npz"
    if path.is_file():
        require_complete_evaluation(eval_dir)
    if not path.is_file():
        raise DataError(f"{path} does not exist; evaluate the run first")
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


# --------------------------------------------------------------------------- CLI
def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``lcron evaluate``."""
    parser.add_argument("--model", required=True, metavar="RUN_DIR", help="training run folder (holds run.json)")
    parser.add_argument("--shards", default=None, metavar="DIR", help="shard set (default: the run's own)")
    parser.add_argument("--out", default=None, metavar="DIR", help="output folder (default: RUN_DIR/eval)")
    parser.add_argument("--days", default=None, metavar="DAY|FIRST:LAST",
                        help="test day(s) (default: the shard set's last day; streaming: every day after a trained day)")
    parser.add_argument("--streaming", action="store_true",
                        help="score each test day t with the checkpoint saved after day t-1")
    parser.add_argument("--batch-size", type=int, default=4096, help="requests per inference batch (default 4096)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile DIN's attention core (default: on for CPU, off for CUDA)")
    parser.add_argument("--quota-grid", default=None, metavar="Q1,Q2;...",
                        help="quota tuples of the sweep, e.g. '30,20;25,20;40,20' (default: a grid around the setting's)")
    parser.add_argument("--tie-seed", type=int, default=0, help="seed of the metric tie-breaks (default 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace an evaluation made with other inputs")
    parser.add_argument("--reference-quirks", action="store_true", default=None,
                        help="the reference's evaluation protocol (drop the last partial batch, padding selectable, "
                             "recall / 10); a run trained with --reference-quirks uses it anyway, a default run refuses it")
    # -q/--quiet (no progress output) is added to every subcommand by lcron.cli.


def run_evaluate(args: argparse.Namespace) -> int:
    """``lcron evaluate``: evaluate a run and print where the outputs are."""
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    res = evaluate(args.model, args.shards, args.out, days=args.days, streaming=args.streaming,
                   batch_size=args.batch_size, device=args.device, compile=args.compile, quota_grid=args.quota_grid,
                   tie_seed=args.tie_seed, overwrite=args.overwrite, progress=not getattr(args, "quiet", False),
                   reference_quirks=getattr(args, "reference_quirks", None))
    out = Path(res["out"])
    print(f"metrics: {out / 'metrics.json'}")
    for key, name in res.get("files", {}).items():
        print(f"{key.replace('_', ' ')}: {out / name}")
    return 0
