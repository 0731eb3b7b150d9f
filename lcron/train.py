"""One trainer for every method and every setting.

The loop (METHODS.md section 3): for each training day in date order, shuffle the day's
requests, and for each full batch forward every stage model, compute the method's loss,
one backward pass, then step every optimizer (one Adam per stage model's dense layers,
one for the learned loss weights, one for the embedding tables: dense Adam or row-wise
lazy Adam, ``--embedding-optimizer``, lcron/optim.py). Nothing here knows which method or
setting it runs: both come from the registry and the setting table.

Run folder (``--out``)::

    run.json                     the run's configuration (method, options, setting, data fingerprint, ...)
    seed-<n>/train_log.jsonl     one line per step: day, step, total loss and every loss part
    seed-<n>/checkpoints/<day>.pt  after every day: weights only, and of the embedding tables only
                                 the rows the next shard day reads (what streaming evaluation of
                                 that day needs; a few MB, not the full tables)
    seed-<n>/resume.pt           while training: the full state after the last completed day (models,
                                 loss weights, every optimizer state), replaced atomically each day,
                                 removed when the seed completes
    seed-<n>/model.pt            the final model; carries its config so evaluation needs no settings
    seed-<n>/summary.json        written last: the seed is complete (steps, requests/s, learned weights)

So a seed folder holds one full model, one resume state while training and one small
snapshot per day - it does not grow by full tables per day (docs/scale.md).

Reliability: every file is written atomically; a seed whose summary exists is skipped; a
seed with a resume checkpoint resumes after its last completed day and, because a day's
shuffle depends only on (seed, day index) and the checkpoint holds every optimizer state,
ends with exactly the weights an uninterrupted run would have.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch

from . import atomic, outputs
from .batches import day_order, iter_batches
from .train_step import (DeviceDay, LossLog, StepPlan, TrainStep, adam_options, float32_matmul_precision,
                         make_stepper, plan_step)
from .defaults import TRAIN
from .devices import check_table_memory, device_defaults, resolve_device
from .errors import ConfigError, DataError, NumericalError, OutputExistsError
from .hashing import config_hash
from .models.embeddings import embedding_tables, ids_prechecked as embedding_ids_prechecked
from .optim import (DEFAULT_EMBEDDING_OPTIMIZER, EMBEDDING_OPTIMIZERS, build_embedding_optimizer,
                    check_embedding_optimizer, resolve_embedding_optimizer)
from .logs import get_logger
from .progress import Progress
from .run_folder import (RUN_FOLDER_WHAT, RUN_KIND, config_difference, is_run_folder, load_checkpoint, load_state,
                         seed_complete, train_command)
from .settings import Setting, get_setting
from .step_config import (StepConfig, add_arguments, check_options, from_args, integer_at_least, integer_in,
                          option, positive_number, raised)
from .step_output import StepOutput, step_output

FORMAT_VERSION = 1
#: The key of the embedding tables' optimizer in build_training_objects' optimizer dict.
EMBEDDINGS = "embeddings"
#: The seed folder's resume checkpoint: full state after the last completed day, replaced
#: atomically after every day and removed once the seed is complete.
RESUME_FILE = "resume.pt"
#: Seeds seed numpy's generator too (32 bits); the embedding dim is a model size, not a bomb.
MAX_SEED = 2**32 - 1
MAX_DIM = 4096
#: What a resume checkpoint holds beyond a model file (_checkpoint_payload with its optimizer state).
RESUME_KEYS = ("config", "model_state", "loss_state", "optim_state", "day", "day_index", "step", "requests")


def log(msg: str) -> None:
    """A progress fact on the ``lcron`` logger (stderr; ``lcron -q`` silences it)."""
    get_logger(__name__).info(msg)


def _methods() -> tuple[str, ...]:
    """The registered methods (read when asked: a method file in lcron/losses/ is found at import)."""
    from .losses import METHODS

    return tuple(METHODS)


def _known_method(method: Any) -> str | None:
    known = _methods()
    return None if method in known else f"unknown method {method!r}; known methods: {', '.join(known)}"


def _seed_list(seeds: Any) -> str | None:
    if not seeds:
        return "at least one seed is needed"
    if len(set(seeds)) != len(seeds):
        return f"seeds repeat: {list(seeds)}"
    bad = [s for s in seeds if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s <= MAX_SEED]
    return f"seeds must be integers in [0, {MAX_SEED}], got {bad}" if bad else None


def _device_name(device: Any) -> str | None:
    ok = device in ("auto", "cpu", "cuda") or str(device).startswith("cuda:")
    return None if ok else f"device must be auto, cpu or cuda, got {device!r}"


@dataclass(frozen=True)
class TrainConfig(StepConfig):
    """What a user chooses for one training run (all seeds share it); checked when made.

    Each field with :func:`~lcron.step_config.option` is a ``lcron train`` option of the same
    name (``--batch-size`` for ``batch_size``) and a parameter of the train component
    (tests/test_step_configs.py); ``shuffle`` and ``log_every`` are library-only knobs.
    """

    method: str = option(TRAIN.method, lambda: f"training method: {', '.join(_methods())} (listed below with their "
                                               "options)", required=True,
                         metavar="METHOD", check=_known_method)
    loss_options: dict[str, Any] = option(
        help="an option of the method, e.g. reference_quirks=true or k=30,20 (repeatable)", flag="--loss-option",
        metavar="KEY=VALUE", append=True, default_factory=dict, convert=lambda items: parse_loss_options(items))
    batch_size: int = option(TRAIN.batch_size, "requests per step", metavar="N",
                             check=integer_at_least(1, "batch size"))
    lr: float = option(TRAIN.lr, "Adam learning rate", check=positive_number("learning rate"))
    seeds: tuple[int, ...] = option(TRAIN.seeds, "comma-separated seeds, one model folder each", metavar="S1,S2,...",
                                    convert=lambda text: parse_seeds(text), check=_seed_list)
    # "FIRST:LAST" of the shard set; default: every day but the last (the test day)
    days: str | None = option(None, "training days FIRST:LAST (inclusive); default every day but the last",
                              metavar="FIRST:LAST")
    device: str = option("auto", "auto (CUDA when present), cpu or cuda (default auto)", check=_device_name)
    # None: the device's default (lcron.train_step.DEVICE_DEFAULTS)
    compile: bool | None = option(None, "torch.compile DIN's attention core (default: on for CPU, off for CUDA, "
                                        "where eager kernels in a CUDA graph measured faster)")
    cuda_graph: bool | None = option(None, "capture the training step as one CUDA graph (default: on for CUDA)")
    tf32: bool | None = option(None, "TF32 tensor-core matmuls on CUDA (default: off)")
    dim: int = option(TRAIN.dim, "embedding dimension", metavar="N", check=integer_in(1, MAX_DIM, "embedding dim"))
    shuffle: bool = True
    # loss rows read back every this many steps and at day end; None: the device's
    log_every: int | None = option(None, "", cli=False, check=integer_at_least(1, "log_every", optional=True))
    reference_quirks: bool = option(
        False, "the published models' quirks (unmasked sequence mean, cat1 padding row 2, uniform DIN attention "
               "without history; implies ICC's reference_quirks loss option); needs shards preprocessed with "
               "--reference-quirks (docs/reference.md)")
    embedding_optimizer: str = option(
        DEFAULT_EMBEDDING_OPTIMIZER, "embedding tables: 'lazy' updates only the rows a batch touches (row-wise "
        "Adam), 'dense' is Adam on every row, as the reference; 'auto' (default) is dense on CUDA and for small "
        "tables, lazy on CPU from 1M rows per model, always dense with --reference-quirks "
        "(docs/embedding_optimizer.md)", choices=EMBEDDING_OPTIMIZERS, check=raised(check_embedding_optimizer))
    # checkpoints/<day>.pt, read only by streaming evaluation (~200 MiB a day at RecFlow
    # vocabularies, docs/scale.md): written only when asked for (the pipeline asks when streaming=true)
    day_snapshots: bool = option(
        False, "write checkpoints/DAY.pt after each training day: the per-day snapshots that `lcron evaluate "
               "--streaming` reads (~200 MiB a day at RecFlow vocabularies; default off)")
    resume_every: int = option(
        1, "write the resume checkpoint (weights and optimizer state) after every N training days (default 1: "
           "each day but the last); an interrupted run resumes after the last one written. On a GPU at RecFlow "
           "vocabularies each one takes longer to write than a day takes to train (docs/benchmarks.md, GPU)",
        metavar="N", check=integer_at_least(1, "resume_every", "days"))

    def validate(self) -> None:
        """Every field's check (lcron.step_config.check_options); a ConfigError names the first bad one."""
        check_options(self)


def normalise_loss_options(method: str, options: Mapping[str, Any], setting: Setting) -> dict[str, Any]:
    """The method's options parsed to their typed values ("50" and 50.0 alike become 50.0; "30,20"
    becomes [30, 20]), checked by building the loss once for ``setting``.

    Runs before anything is written, so a bad option never leaves a run.json behind that would
    then refuse the corrected command, and equal configurations hash equally however they were
    spelled (CLI strings, KFP's floats, Python values).
    """
    from .losses import build_loss, parse_options

    parsed = {k: list(v) if isinstance(v, tuple) else v for k, v in parse_options(method, options).items()}
    build_loss(method, setting=setting, **parsed)  # constructor-side checks (e.g. k per stage)
    return parsed


def parse_seeds(text: str | Sequence[int]) -> tuple[int, ...]:
    if not isinstance(text, str):
        return tuple(int(s) for s in text)
    try:
        return tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise ConfigError(f"--seeds must be comma-separated integers, got {text!r}") from None


def training_days(shards, spec: str | None) -> list[str]:
    """The days to train on: the given range, or every day but the last (kept for testing)."""
    if spec:
        days = shards.select_days(spec)
        if days and days[-1] == shards.days[-1]:
            warnings.warn(f"training days {days[0]}..{days[-1]} include the shard set's last day, so no later day is "
                          f"held out for testing: evaluation of {days[-1]} (lcron evaluate's default test day) "
                          "measures fit to training data, not generalisation", stacklevel=2)
        return days
    if len(shards.days) < 2:
        raise DataError(
            f"shard set {shards.root} holds {len(shards.days)} day(s); training by default uses every day "
            "but the last (the test day), so at least 2 are needed - or give --days FIRST:LAST")
    return shards.days[:-1]


# --------------------------------------------------------------------------- building blocks

def build_training_objects(setting: Setting, embedding_sizes: Mapping[str, int], cfg: TrainConfig, seed: int,
                           device: torch.device):
    """Models, loss and optimizers of one seed, initialised from that seed.

    Optimizers: one Adam per stage model over its dense (MLP) parameters, one for the
    learned loss weights, and ``optimizers[EMBEDDINGS]`` for every stage's embedding table
    (``cfg.embedding_optimizer``, ``auto`` resolved by :func:`lcron.optim.resolve_embedding_optimizer`:
    Adam on dense gradients or LazyAdam on sparse ones).
    Adam is per-parameter, so with ``dense`` this split trains exactly as one Adam per stage.
    """
    from .losses import build_loss
    from .models import build_cascade

    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))
    compile = plan_step(device, compile=cfg.compile).compile
    cascade = build_cascade(setting, dict(embedding_sizes), dim=cfg.dim, compile=compile,
                            reference_quirks=cfg.reference_quirks).to(device)
    loss = build_loss(cfg.method, setting=setting, **cfg.loss_options).to(device)
    adam = adam_options(device)
    embedding_optimizer = resolve_embedding_optimizer(cfg.embedding_optimizer, device,
                                                      sum(int(v) for v in embedding_sizes.values()))
    tables = embedding_tables(cascade)
    for table in tables:
        table.sparse = embedding_optimizer == "lazy"
    table_ids = {id(t.weight) for t in tables}
    optimizers = {name: torch.optim.Adam([p for p in cascade.stages[name].parameters() if id(p) not in table_ids],
                                         lr=cfg.lr, **adam)
                  for name in setting.stage_names}
    optimizers[EMBEDDINGS] = build_embedding_optimizer(embedding_optimizer, [t.weight for t in tables], cfg.lr,
                                                   adam)
    loss_params = list(loss.parameters())
    if loss_params:
        optimizers["loss_weights"] = torch.optim.Adam(loss_params, lr=cfg.lr, **adam)
    return cascade, loss, optimizers


def learned_weights(loss: torch.nn.Module) -> dict[str, float]:
    return {name: float(p.detach().reshape(-1)[0]) for name, p in loss.named_parameters()}


def _log_records(rows: np.ndarray, columns: Sequence[str], first_step: int, cfg: TrainConfig, seed: int,
                 day: str) -> list[dict]:
    """Log records of steps ``first_step, first_step + 1, ...`` from loss rows read back from the
    device; the NaN guard: the first step whose total is not finite names its bad parts."""
    finite = np.isfinite(rows)
    bad_rows = np.flatnonzero(~finite[:, 0])
    if bad_rows.size:
        i = int(bad_rows[0])
        bad = [c for c, ok in zip(columns[1:], finite[i, 1:]) if not ok]
        raise NumericalError(
            f"method {cfg.method!r} (seed {seed}): the loss became {rows[i, 0]} at day {day}, "
            f"step {first_step + i}; "
            f"loss part(s) that went bad: {', '.join(bad) if bad else 'total only'}. "
            "Lower --lr or check the input data.")
    return [{"seed": seed, "day": day, "step": first_step + i, **{c: float(v) for c, v in zip(columns, row)}}
            for i, row in enumerate(rows)]


def _checkpoint_payload(run_cfg: dict, seed: int, day: str, day_index: int, step: int, requests: int,
                        cascade, loss, optimizers, with_optim: bool = True) -> dict:
    payload = {
        "format_version": FORMAT_VERSION,
        "config": run_cfg,
        "seed": seed,
        "day": day,
        "day_index": day_index,
        "step": step,
        "requests": requests,
        "model_state": {k: v.detach().cpu() for k, v in cascade.state_dict().items()},
        "loss_state": {k: v.detach().cpu() for k, v in loss.state_dict().items()},
    }
    if with_optim:
        payload["optim_state"] = {k: opt.state_dict() for k, opt in optimizers.items()}
    return payload


# --------------------------------------------------------------------------- the run
@dataclass
class SeedResult:
    seed: int
    folder: Path
    skipped: bool
    summary: dict


def train(shards: "str | Path | Any", out: str | Path, cfg: TrainConfig, *, setting: "str | Path | Setting | None" = None,
          stages: int | None = None, overwrite: bool = False, progress: bool = True,
          max_steps_per_day: int | None = None) -> list[SeedResult]:
    """Train ``cfg.method`` on a shard set, one model folder per seed, resumably.

    ``setting`` overrides the shard set's setting (same groups and list size; e.g. other
    quotas); ``stages`` only checks that the shard set has that many stages.
    ``max_steps_per_day`` caps the steps of each day (benchmarks and smoke tests).
    """
    from .data.shards import ShardSet

    cfg.validate()
    device = resolve_device(cfg.device)  # first: a GPU that cannot be used is said before any data is read
    shard_set = shards if isinstance(shards, ShardSet) else ShardSet(shards)
    cfg = _reference_mode_config(cfg, shard_set)
    run_setting = _resolve_setting(shard_set.setting, setting, stages)
    cfg = dataclasses.replace(cfg, lr=float(cfg.lr),
                              loss_options=normalise_loss_options(cfg.method, cfg.loss_options, run_setting))
    days = training_days(shard_set, cfg.days)
    batches = batch_plan({d: shard_set.num_requests(d) for d in days}, cfg.batch_size, max_steps_per_day)
    # run.json records the resolved choice: an "auto" run says what it trained with.
    cfg = dataclasses.replace(cfg, embedding_optimizer=resolve_embedding_optimizer(
        cfg.embedding_optimizer, device, sum(shard_set.embedding_sizes.values())))
    plan = plan_step(device, compile=cfg.compile, cuda_graph=cfg.cuda_graph, tf32=cfg.tf32)
    check_table_memory(shard_set.embedding_sizes, run_setting.num_stages, cfg.dim, device,
                       where=str(Path(shard_set.root) / "dataset.json"))
    out = Path(out)
    run_cfg = _run_config(cfg, run_setting, shard_set, days, batches, max_steps_per_day)
    command = outputs.current_command(train_command(out, run_cfg, cfg.seeds))
    with step_output(out, command, kind=RUN_KIND, ours=is_run_folder, folder_what=RUN_FOLDER_WHAT) as step:
        _claim_run_folder(step, run_cfg, cfg, overwrite)
        step.begin()
        results = []
        with float32_matmul_precision(plan.tf32):
            for seed in cfg.seeds:
                results.append(_train_seed(shard_set, out, run_cfg, run_setting, days, cfg, seed, plan, progress,
                                           max_steps_per_day))
        _finish_run(step, run_cfg)
    return results


def _reference_mode_config(cfg: TrainConfig, shard_set: Any) -> TrainConfig:
    """``cfg`` with what the reference-quirks mode implies for the loss options and the embedding
    optimizer; refused when the shard set was preprocessed in the other mode (its data differ)."""
    from .reference_policy import mode

    mode.check_match(cfg.reference_quirks, shard_set.reference_quirks, step="train", what=f"shard set {shard_set.root}",
                     fix="preprocess the data with the same --reference-quirks choice, or change it here")
    return dataclasses.replace(cfg, loss_options=mode.implied_loss_options(cfg.method, cfg.loss_options,
                                                                          cfg.reference_quirks),
                               embedding_optimizer=mode.implied_embedding_optimizer(cfg.embedding_optimizer,
                                                                                    cfg.reference_quirks))


def _run_config(cfg: TrainConfig, run_setting: Setting, shard_set: Any, days: list[str], batches: BatchPlan,
                max_steps_per_day: int | None) -> dict:
    """run.json's content with its ``config_hash``: what decides whether a run folder's seeds are
    this run's (resumed, skipped) or another's (refused unless overwriting)."""
    run_cfg = {
        "format_version": FORMAT_VERSION,
        "method": cfg.method,
        "loss_options": dict(cfg.loss_options),
        "setting": run_setting.to_dict(),
        "embedding_sizes": dict(shard_set.embedding_sizes),
        "train": {"batch_size": cfg.batch_size, "lr": cfg.lr, "dim": cfg.dim, "shuffle": cfg.shuffle,
                  "max_steps_per_day": max_steps_per_day, "embedding_optimizer": cfg.embedding_optimizer,
                  "day_snapshots": cfg.day_snapshots},
        "days": days,
        "shards": str(shard_set.root),
        "data_fingerprint": shard_set.fingerprint(),
        "batch_plan": batches.summary(),  # a function of the fields above: the hash does not change with it
    }
    if cfg.reference_quirks:  # only when set, so default-mode runs keep their config hash
        run_cfg["reference_quirks"] = True
    run_cfg["config_hash"] = config_hash({k: v for k, v in run_cfg.items() if k != "shards"})
    return run_cfg


def _finish_run(step: StepOutput, run_cfg: Mapping[str, Any]) -> None:
    """The run's completion marker: run.json and, of every seed run.json lists, model.pt,
    summary.json and train_log.jsonl (checkpoints stay out: they may be pruned)."""
    out = step.folder
    seeds = json.loads((out / "run.json").read_text()).get("seeds", [])
    done = [s for s in seeds if seed_complete(out / f"seed-{s}", run_cfg["config_hash"])]
    files = [out / "run.json"]
    for s in done:
        files += [out / f"seed-{s}" / name for name in ("model.pt", "summary.json", "train_log.jsonl")
                  if (out / f"seed-{s}" / name).is_file()]
    step.finish(files, {"seeds": done})


@dataclass(frozen=True)
class BatchPlan:
    """How many requests each training day holds and how many full batches it yields.

    The trainer drops each day's last partial batch (every step sees ``batch_size``
    requests); this makes that loss visible before anything is written.
    """

    requests: dict[str, int]
    batches: dict[str, int]
    batch_size: int

    @property
    def dropped(self) -> int:
        """Requests of the days that fall in no full batch (a ``max_steps_per_day`` cap not counted)."""
        return sum(n % self.batch_size for n in self.requests.values())

    def summary(self) -> dict[str, Any]:
        total = sum(self.requests.values())
        return {"requests_in_days": total, "dropped_requests": self.dropped,
                "dropped_fraction": self.dropped / total if total else 0.0}


#: Above this share of requests lost to partial batches, training warns (e.g. 2,000 requests a day
#: at batch 1,024 lose 49%).
DROPPED_WARN_FRACTION = 0.1


def batch_plan(day_requests: Mapping[str, int], batch_size: int, max_steps_per_day: int | None) -> BatchPlan:
    """Full batches per day; an error when no day holds one (the run would write an untrained model),
    a warning with counts for days without one or when many requests fall in partial batches."""
    if max_steps_per_day is not None and (isinstance(max_steps_per_day, bool) or
                                          not isinstance(max_steps_per_day, int) or max_steps_per_day < 1):
        raise ConfigError(f"max steps per day must be an integer >= 1 (or no cap), got {max_steps_per_day!r}")
    batches = {d: n // batch_size if max_steps_per_day is None else min(n // batch_size, max_steps_per_day)
               for d, n in day_requests.items()}
    plan = BatchPlan(dict(day_requests), batches, batch_size)
    counts = ", ".join(f"{d}: {n}" for d, n in day_requests.items())
    if not any(batches.values()):
        raise DataError(f"no training day holds a full batch of {batch_size} requests (requests per day: {counts}); "
                        f"training would write an untrained model. Lower --batch-size (at most "
                        f"{max(day_requests.values(), default=0)} here) or train on more data")
    short = [d for d, b in batches.items() if b == 0]
    if short:
        warnings.warn(f"{len(short)} of {len(batches)} training day(s) hold fewer requests than one batch of "
                      f"{batch_size} and are not trained on: "
                      + ", ".join(f"{d} ({day_requests[d]} requests)" for d in short), stacklevel=3)
    total = sum(day_requests.values())
    if total and plan.dropped / total > DROPPED_WARN_FRACTION:
        warnings.warn(f"{plan.dropped} of {total} training requests ({plan.dropped / total:.0%}) fall in the last "
                      f"partial batch of their day and are not trained on (batch size {batch_size}); "
                      "a smaller --batch-size uses more of the data", stacklevel=3)
    return plan


def _resolve_setting(shard_setting: Setting, override, stages: int | None) -> Setting:
    setting = shard_setting if override is None else get_setting(override)
    if setting.groups != shard_setting.groups or setting.group_size != shard_setting.group_size:
        raise ConfigError(
            f"setting {setting.name!r} (groups {list(setting.groups)}, N = {setting.list_size}) does not match the "
            f"shard set's setting {shard_setting.name!r} (groups {list(shard_setting.groups)}, "
            f"N = {shard_setting.list_size}); preprocess the data with this setting first")
    if stages is not None and setting.num_stages != stages:
        raise ConfigError(f"--stages {stages} but the setting {setting.name!r} has {setting.num_stages} stages")
    return setting


def _claim_run_folder(step: StepOutput, run_cfg: dict, cfg: TrainConfig, overwrite: bool) -> None:
    """Record the run's config (the output protocol's claim on run.json): the same configuration
    resumes and keeps the seeds it lists, another is refused unless overwriting, which removes
    its seed folders."""
    out, chash = step.folder, run_cfg["config_hash"]
    claim = step.claim(
        "run.json", run_cfg, chash, overwrite, hash_field="config_hash", held="a run with a different configuration",
        read=lambda path: _read_json_or_fail(path, "--overwrite"),
        describe=lambda old: (f"method {old.get('method')!r}, config {old.get('config_hash')} vs {chash}; "
                              f"{config_difference(old, run_cfg)}"))
    seeds = list(cfg.seeds)
    if claim.same:
        seeds = sorted(set(seeds) | set(claim.previous.get("seeds", [])))
    elif claim.previous is not None:
        import shutil

        for child in out.glob("seed-*"):
            shutil.rmtree(child)
    atomic.write_json(out / "run.json", {**run_cfg, "seeds": seeds})


def _completed_seed(folder: Path, run_cfg: Mapping[str, Any]) -> dict | None:
    """The summary of a seed already trained with this configuration (the seed is skipped);
    None when it is to be trained. A summary of another configuration is retrained over."""
    summary_path = folder / "summary.json"
    if summary_path.exists():
        summary = _read_json_or_fail(summary_path, "delete it to retrain the seed")
        if summary.get("config_hash") == run_cfg["config_hash"]:
            return summary
    return None


def _resume(folder: Path, run_cfg: Mapping[str, Any], seed: int, device: torch.device, cascade, loss,
            optimizers: Mapping[str, Any]) -> tuple[int, int, int, list[dict]]:
    """Load a stopped seed's resume checkpoint into the models and optimizers, if there is one;
    returns (first day index to train, step, requests, the log records up to that step)."""
    resumed = folder / RESUME_FILE
    if not resumed.is_file():
        return 0, 0, 0, []
    state = load_checkpoint(resumed, map_location=device, expect=RESUME_KEYS, what="a resume checkpoint",
                            hint=f"; a day snapshot or model.pt holds no optimizer state: remove {resumed} to "
                                 f"train seed {seed} from its first day")
    if not isinstance(state["config"], dict) or state["config"].get("config_hash") != run_cfg["config_hash"]:
        raise OutputExistsError(f"checkpoint {resumed} was made with another configuration; pass --overwrite")
    load_state(cascade, state["model_state"], resumed)
    load_state(loss, state["loss_state"], resumed, "loss")
    for k, opt in optimizers.items():
        if not isinstance(state["optim_state"], dict) or k not in state["optim_state"]:
            raise DataError(f"{resumed}: no state of the {k!r} optimizer; remove it to train seed {seed} "
                            "from its first day")
        load_state(opt, state["optim_state"][k], resumed, f"{k!r} optimizer")
    step = int(state["step"])
    records = _read_log(folder / "train_log.jsonl", max_step=step)
    log(f"seed {seed}: resuming after day {state['day']} (step {step}) from {resumed}")
    return int(state["day_index"]) + 1, step, int(state["requests"]), records


@dataclass
class _SeedClock:
    """Where a seed's wall time goes, for its summary.

    The start-up steps - the first step (it compiles) or, with a CUDA graph, the eager warm-up
    steps and the capture - are timed apart, like a compile; the steady rate counts the rest.
    """

    began: float
    phases: dict[str, float]  # setup, data, checkpoints: seconds
    startup_began: float | None = None
    startup_steps: int = 0
    first_step_seconds: float | None = None
    steady_seconds: float = 0.0
    steady_requests: int = 0


@dataclass
class _SeedRun:
    """One seed's training as it moves through the days: its models and optimizers, where it
    stands (step, requests, the log so far) and its clock."""

    seed: int
    folder: Path
    first_day: int  # index of the first day to train: after the resumed one
    cascade: Any
    loss: torch.nn.Module
    optimizers: dict[str, Any]
    stepper: Any
    id_table: Any  # every stage model has the same tables: one checks a day's ids
    losses: LossLog
    step: int
    requests: int
    records: list[dict]
    clock: _SeedClock


def _train_seed(shard_set, out: Path, run_cfg: dict, setting: Setting, days: list[str], cfg: TrainConfig,
                seed: int, plan: StepPlan, progress: bool, max_steps_per_day: int | None) -> SeedResult:
    """One seed's folder: skipped when complete, else trained from its first day or from its
    resume checkpoint, with a day's outputs written after each day."""
    t_seed = time.perf_counter()
    folder = out / f"seed-{seed}"
    done = _completed_seed(folder, run_cfg)
    if done is not None:
        log(f"seed {seed}: complete in {folder}, skipped")
        return SeedResult(seed, folder, True, done)
    run = _start_seed(folder, run_cfg, setting, cfg, seed, plan, t_seed)
    for day_index in range(run.first_day, len(days)):
        day = days[day_index]
        t_data = time.perf_counter()
        batches, ids_checked, n_batches = _day_batches(shard_set, day, day_index, run, cfg, plan, max_steps_per_day)
        run.clock.phases["data"] += time.perf_counter() - t_data
        _train_day(run, batches, ids_checked, n_batches, day, cfg, progress)
        _write_day_outputs(shard_set, run, run_cfg, cfg, day, day_index, len(days))
    return _finish_seed(run, run_cfg, setting, days, cfg, plan)


def _start_seed(folder: Path, run_cfg: dict, setting: Setting, cfg: TrainConfig, seed: int, plan: StepPlan,
                t_seed: float) -> _SeedRun:
    """The seed's models, optimizers and stepper, restored from its resume checkpoint if it has one."""
    device = plan.device
    cascade, loss, optimizers = build_training_objects(setting, run_cfg["embedding_sizes"], cfg, seed, device)
    start_day, step, requests, records = _resume(folder, run_cfg, seed, device, cascade, loss, optimizers)

    if device.type == "cuda":  # the seed's own peak: drop what earlier seeds left (graph pools in cycles)
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    cascade.train()
    stepper = make_stepper(TrainStep(cascade, loss, optimizers), plan)
    id_table = embedding_tables(cascade)[0]
    losses = LossLog(flush_every=cfg.log_every or device_defaults(device).loss_read_every)
    clock = _SeedClock(began=t_seed, phases={"setup": time.perf_counter() - t_seed, "data": 0.0, "checkpoints": 0.0})
    return _SeedRun(seed, folder, start_day, cascade, loss, optimizers, stepper, id_table, losses, step, requests,
                    records, clock)


def _day_batches(shard_set, day: str, day_index: int, run: _SeedRun, cfg: TrainConfig, plan: StepPlan,
                 max_steps_per_day: int | None
                 ) -> tuple[Iterator[dict[str, torch.Tensor]], contextlib.AbstractContextManager, int]:
    """The day's full batches in its shuffled order (a function of seed and day index only, so a
    resumed seed sees what an uninterrupted one would), the context to step them in, and their
    count. A day kept on the device has its ids checked once here, so no step reads ids back."""
    arrays = shard_set.load_day(day)
    order = day_order(len(arrays["label"]), run.seed, day_index, cfg.shuffle)
    n_batches = len(order) // cfg.batch_size
    if max_steps_per_day is not None:
        n_batches = min(n_batches, max_steps_per_day)
        order = order[: n_batches * cfg.batch_size]
    if plan.device_resident:
        resident = DeviceDay(arrays, plan.device)
        resident.check_ids(run.id_table)
        return resident.batches(order, cfg.batch_size, drop_last=True), embedding_ids_prechecked(), n_batches
    batches = iter_batches(arrays, order, cfg.batch_size, drop_last=True, device=plan.device)
    return batches, contextlib.nullcontext(), n_batches


def _train_day(run: _SeedRun, batches: Iterator[dict[str, torch.Tensor]],
               ids_checked: contextlib.AbstractContextManager, n_batches: int, day: str, cfg: TrainConfig,
               progress: bool) -> None:
    """Step through the day's batches. Loss rows are read back from the device only every so
    often (each read synchronises) and checked for NaN as they are; all before the day ends."""
    clock = run.clock
    bar = Progress(n_batches, f"train {cfg.method} seed {run.seed} day {day}", unit="batch", enabled=progress)
    day_first_step, steady_from = run.step + 1, run.step + 1
    t_start = time.perf_counter()

    def flush() -> None:
        nonlocal day_first_step
        if not len(run.losses):
            return
        rows = run.losses.read()
        new = _log_records(rows, run.stepper.columns, day_first_step, cfg, run.seed, day)
        run.records.extend(new)
        day_first_step += len(new)
        bar.postfix = f"loss {new[-1]['total']:.4f}"

    with ids_checked:
        for batch in batches:
            if clock.startup_began is None:
                clock.startup_began = time.perf_counter()
            run.losses.append(run.stepper(batch))
            run.step += 1
            run.requests += cfg.batch_size
            if clock.first_step_seconds is None:
                clock.startup_steps += 1
                if not getattr(run.stepper, "warming_up", False):
                    flush()
                    now = time.perf_counter()
                    clock.first_step_seconds = now - clock.startup_began
                    t_start, steady_from = now, run.step + 1
                elif run.losses.full:  # a log read more often than the warm-up lasts
                    flush()
            elif run.losses.full:
                flush()
            bar.update()
    flush()  # the day's last rows: every step is checked before the day's checkpoint is written
    if clock.first_step_seconds is not None:
        clock.steady_seconds += time.perf_counter() - max(t_start, clock.startup_began or t_start)
        clock.steady_requests += max(run.step + 1 - steady_from, 0) * cfg.batch_size
    bar.close()


def _write_day_outputs(shard_set, run: _SeedRun, run_cfg: dict, cfg: TrainConfig, day: str, day_index: int,
                       n_days: int) -> None:
    """After a day: the log so far, the day snapshot (if asked for) and the resume state (if due)."""
    t_ckpt = time.perf_counter()
    _write_log(run.folder / "train_log.jsonl", run.records)
    # The day snapshot first: a resume checkpoint past day t implies t's snapshot exists.
    if cfg.day_snapshots:
        _write_day_snapshot(shard_set, run.folder / "checkpoints", run_cfg, run.seed, day, day_index, run.step,
                            run.requests, run.cascade, run.loss)
    # The resume state every cfg.resume_every days, never after the last day (model.pt and
    # summary.json supersede it there): at RecFlow vocabularies on a GPU it holds several GB
    # of Adam state and takes longer to write than the day took to train (docs/benchmarks.md).
    if (day_index + 1) % cfg.resume_every == 0 and day_index + 1 < n_days:
        atomic.save_torch(run.folder / RESUME_FILE, _checkpoint_payload(
            run_cfg, run.seed, day, day_index, run.step, run.requests, run.cascade, run.loss, run.optimizers))
    run.clock.phases["checkpoints"] += time.perf_counter() - t_ckpt


def _finish_seed(run: _SeedRun, run_cfg: dict, setting: Setting, days: list[str], cfg: TrainConfig,
                 plan: StepPlan) -> SeedResult:
    """model.pt, then summary.json - the seed's completion - then the resume state goes."""
    final = _checkpoint_payload(run_cfg, run.seed, days[-1], len(days) - 1, run.step, run.requests, run.cascade,
                                run.loss, run.optimizers, with_optim=False)
    atomic.save_torch(run.folder / "model.pt", final)
    summary = _seed_summary(run, run_cfg, setting, days, cfg, plan)
    atomic.write_json(run.folder / "summary.json", summary)
    (run.folder / RESUME_FILE).unlink(missing_ok=True)  # model.pt + summary.json supersede it
    log(f"seed {run.seed}: trained {run.step} steps on {len(days)} day(s); model in {run.folder / 'model.pt'}")
    return SeedResult(run.seed, run.folder, False, summary)


def _seed_summary(run: _SeedRun, run_cfg: dict, setting: Setting, days: list[str], cfg: TrainConfig,
                  plan: StepPlan) -> dict:
    """summary.json: what was trained, how fast and on what, and the learned loss weights."""
    device, clock = plan.device, run.clock
    steady = clock.steady_requests / clock.steady_seconds if clock.steady_seconds > 0 else None
    return {
        "seed": run.seed,
        "method": cfg.method,
        "setting": setting.name,
        "config_hash": run_cfg["config_hash"],
        "days": days,
        "steps": run.step,
        "requests": run.requests,
        "first_step_seconds": clock.first_step_seconds,
        "startup_steps": clock.startup_steps,
        "steady_requests_per_s": steady,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "compile": plan.compile,
        "cuda_graph": plan.cuda_graph,
        "step_mode": getattr(run.stepper, "mode", "eager"),
        "tf32": plan.tf32,
        "peak_device_memory_mb": (round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
                                  if device.type == "cuda" else None),
        "learned_weights": learned_weights(run.loss),
        "final_loss": run.records[-1]["total"] if run.records else None,
        **run_cfg.get("batch_plan", {}),
        # Where the seed's wall time went: building models/optimizers (and resuming), loading and
        # placing the days' data, writing the daily checkpoints, and the seed's whole time.
        "timing": {**{f"{k}_seconds": round(v, 3) for k, v in clock.phases.items()},
                   "seed_seconds": round(time.perf_counter() - clock.began, 3)},
    }


def _write_day_snapshot(shard_set, ckpt_dir: Path, run_cfg: dict, seed: int, day: str, day_index: int, step: int,
                        requests: int, cascade, loss) -> None:
    """``checkpoints/<day>.pt``: what streaming evaluation of the next shard day reads.

    Weights only (no optimizer state), and of each embedding table only the rows the next
    shard day's requests look up (their ids, padding included); the dense layers and loss
    weights in full. So a day costs a few MB, not the full tables (docs/scale.md).
    :func:`load_cascade` fills the rows not stored with NaN, so scoring any other day with
    a snapshot fails loudly instead of silently reading wrong rows. No snapshot after the
    shard set's last day: no day follows it to evaluate.
    """
    from .models.embeddings import FeatureEmbedding

    all_days = list(shard_set.days)
    position = all_days.index(day)
    if position + 1 >= len(all_days):
        return
    next_day = all_days[position + 1]
    tables = {name: m for name, m in cascade.named_modules() if isinstance(m, FeatureEmbedding)}
    first = next(iter(tables.values()))  # every stage model has the same row layout (same sizes)
    rows = first.rows_used(shard_set.load_day(next_day)).to(first.weight.device)
    payload = _checkpoint_payload(run_cfg, seed, day, day_index, step, requests, cascade, loss, {}, with_optim=False)
    for name, table in tables.items():
        key = f"{name}.weight"
        del payload["model_state"][key]
        payload.setdefault("embedding_rows", {})[key] = {
            "rows": rows.to(torch.int32 if table.weight.shape[0] < 2**31 else torch.int64).cpu(),
            "values": table.weight.detach().index_select(0, rows).cpu()}
    payload["rows_for_day"] = next_day
    atomic.save_torch(ckpt_dir / f"{day}.pt", payload)


def _read_json_or_fail(path: Path, remedy: str) -> dict:
    """A JSON object lcron wrote earlier; damage is a DataError naming the file and the remedy."""
    try:
        doc = json.loads(path.read_text())
    except (ValueError, RecursionError) as exc:
        raise DataError(f"{path} is damaged (not valid JSON: {type(exc).__name__}: {exc}); {remedy}") from None
    if not isinstance(doc, dict):
        raise DataError(f"{path} is damaged (not a JSON object); {remedy}")
    return doc


def _read_log(path: Path, max_step: int) -> list[dict]:
    if not path.exists():
        return []
    try:
        rows = [json.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
        return [r for r in rows if int(r["step"]) <= max_step]
    except (ValueError, RecursionError, KeyError, TypeError) as exc:
        raise DataError(f"{path} is damaged ({type(exc).__name__}: {str(exc)[:200]}); remove the seed folder "
                        f"{path.parent} to train the seed again") from None


def _write_log(path: Path, records: list[dict]) -> None:
    atomic.write_text(path, "".join(json.dumps(r) + "\n" for r in records))


def config_to_dict(cfg: TrainConfig) -> dict:
    d = dataclasses.asdict(cfg)
    d["seeds"] = list(cfg.seeds)
    return d


# --------------------------------------------------------------------------- CLI
def parse_loss_options(items: Sequence[str] | None) -> dict[str, str]:
    """``KEY=VALUE`` pairs from repeated --loss-option flags (values stay strings; the loss coerces them)."""
    options: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--loss-option expects KEY=VALUE, got {item!r}")
        options[key.strip()] = value.strip()
    return options


def add_train_arguments(parser) -> None:
    import shutil
    import textwrap

    from .losses.registry import LISTING_HEADING, describe_methods

    # The registered methods and their options, generated from the registry (a method added as
    # one file in lcron/losses/ is listed too) - the listing of `lcron methods`; the raw
    # formatter keeps its layout.
    width = max(shutil.get_terminal_size().columns - 2, 40)
    heading = textwrap.fill(LISTING_HEADING, width)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = heading + "\n" + describe_methods(width=width)
    parser.add_argument("--shards", required=True, help="shard folder written by `lcron preprocess`")
    parser.add_argument("--out", required=True, help="run folder (one seed-<n>/ subfolder per seed)")
    parser.add_argument("--stages", type=int, choices=(2, 3), help="check the shards hold this built-in setting")
    parser.add_argument("--setting", help="setting file (JSON/YAML) overriding the shard set's setting, e.g. other quotas")
    add_arguments(parser, TrainConfig)  # the configuration's own options: one per TrainConfig field
    parser.add_argument("--max-steps-per-day", type=int, help="cap the steps of each day (smoke tests)")
    parser.add_argument("--overwrite", action="store_true", help="replace a run with another configuration in --out")


def run_train(args) -> int:
    cfg = from_args(TrainConfig, args)
    results = train(args.shards, args.out, cfg, setting=args.setting, stages=args.stages, overwrite=args.overwrite,
                    progress=not args.quiet, max_steps_per_day=args.max_steps_per_day)
    for r in results:
        s = r.summary
        rate = f"{s['steady_requests_per_s']:,.0f} requests/s" if s.get("steady_requests_per_s") else "n/a"
        print(f"seed {r.seed}: {'skipped (complete)' if r.skipped else 'trained'} - {s['steps']} steps, "
              f"final loss {s['final_loss']}, {rate}; {r.folder / 'model.pt'}")
    print(f"run folder: {args.out}")
    return 0
