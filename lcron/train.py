"""One trainer for every method and every setting.

The loop (METHODS.md section 3): for each training day in date order, shuffle the day's
requests, and for each full batch forward every stage model, compute the method's loss,
one backward pass, then step every optimizer (one Adam per stage model, one for the
learned loss weights). Nothing here knows which method or setting it runs: both come
from the registry and the setting table.

Run folder (``--out``)::

    run.json                     the run's configuration (method, options, setting, data fingerprint, ...)
    seed-<n>/train_log.jsonl     one line per step: day, step, total loss and every loss part
    seed-<n>/checkpoints/<day>.pt  after every day: models, loss weights, optimizer states, config
    seed-<n>/model.pt            the final model; carries its config so evaluation needs no settings
    seed-<n>/summary.json        written last: the seed is complete (steps, requests/s, learned weights)

Reliability: every file is written atomically; a seed whose summary exists is skipped; a
seed with checkpoints resumes after its last completed day and, because a day's shuffle
depends only on (seed, day index) and the checkpoint holds every optimizer state, ends
with exactly the weights an uninterrupted run would have.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from . import atomic
from .batches import day_order, iter_batches
from .defaults import TRAIN
from .errors import ConfigError, DataError, NumericalError, OutputExistsError
from .progress import Progress
from .logs import get_logger
from .settings import Setting, get_setting

FORMAT_VERSION = 1


def log(msg: str) -> None:
    """A progress fact on the ``lcron`` logger (stderr; ``lcron -q`` silences it)."""
    get_logger(__name__).info(msg)


@dataclass
class TrainConfig:
    """What a user chooses for one training run (all seeds share it)."""

    method: str = TRAIN.method
    loss_options: dict[str, Any] = field(default_factory=dict)
    batch_size: int = TRAIN.batch_size
    lr: float = TRAIN.lr
    seeds: tuple[int, ...] = TRAIN.seeds
    days: str | None = None  # "FIRST:LAST" of the shard set; default: every day but the last (the test day)
    device: str = "auto"
    compile: bool = True
    dim: int = TRAIN.dim
    shuffle: bool = True

    def validate(self) -> None:
        from .losses import METHODS

        if self.method not in METHODS:
            raise ConfigError(f"unknown method {self.method!r}; known methods: {', '.join(METHODS)}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"batch size must be an integer >= 1, got {self.batch_size!r}")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"learning rate must be a positive number, got {self.lr!r}")
        if not self.seeds:
            raise ConfigError("at least one seed is needed")
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds repeat: {list(self.seeds)}")
        if self.device not in ("auto", "cpu", "cuda") and not str(self.device).startswith("cuda:"):
            raise ConfigError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.dim < 1:
            raise ConfigError(f"embedding dim must be >= 1, got {self.dim}")


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


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for but CUDA is not available on this machine")
    return torch.device(name)


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
        return shards.select_days(spec)
    if len(shards.days) < 2:
        raise DataError(
            f"shard set {shards.root} holds {len(shards.days)} day(s); training by default uses every day "
            "but the last (the test day), so at least 2 are needed - or give --days FIRST:LAST")
    return shards.days[:-1]


def _canonical(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    return obj


def config_hash(payload: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(_canonical(payload), sort_keys=True).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- building blocks
def build_training_objects(setting: Setting, embedding_sizes: Mapping[str, int], cfg: TrainConfig, seed: int,
                           device: torch.device):
    """Models, loss and optimizers of one seed, initialised from that seed."""
    from .losses import build_loss
    from .models import build_cascade

    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))
    cascade = build_cascade(setting, dict(embedding_sizes), dim=cfg.dim, compile=cfg.compile).to(device)
    loss = build_loss(cfg.method, setting=setting, **cfg.loss_options).to(device)
    optimizers = {name: torch.optim.Adam(cascade.stages[name].parameters(), lr=cfg.lr)
                  for name in setting.stage_names}
    loss_params = list(loss.parameters())
    if loss_params:
        optimizers["loss_weights"] = torch.optim.Adam(loss_params, lr=cfg.lr)
    return cascade, loss, optimizers


def learned_weights(loss: torch.nn.Module) -> dict[str, float]:
    return {name: float(p.detach().reshape(-1)[0]) for name, p in loss.named_parameters()}


def _check_finite(out, cfg: TrainConfig, seed: int, day: str, step: int) -> None:
    if torch.isfinite(out.total).item():
        return
    bad = [k for k, v in out.parts.items() if not torch.isfinite(torch.as_tensor(v)).all()]
    raise NumericalError(
        f"method {cfg.method!r} (seed {seed}): the loss became {float(out.total.detach())} at day {day}, "
        f"step {step}; "
        f"loss part(s) that went bad: {', '.join(bad) if bad else 'total only'}. "
        "Lower --lr or check the input data.")


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


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint or model file without executing anything it might carry (weights_only)."""
    path = Path(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise DataError(f"model file {path} does not exist") from None
    except Exception as exc:
        # torch's own message suggests weights_only=False: never do that with a file you did not write.
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        useful = [ln for ln in lines if ln.lower().startswith(("trying to load unsupported", "unsupported"))]
        reason = useful[0] if useful else ("not a valid checkpoint" if "Weights only" in str(exc) else lines[0])
        raise DataError(f"model file {path} cannot be loaded safely (weights only; nothing was executed): "
                        f"{reason}") from None


def load_cascade(path: str | Path, device: str | torch.device = "cpu", compile: bool = False):
    """Rebuild a trained cascade from model.pt or a day checkpoint: (cascade in eval mode, payload)."""
    from .models import build_cascade

    payload = load_checkpoint(path, map_location=device)
    cfg = payload["config"]
    setting = Setting.from_dict(cfg["setting"])
    cascade = build_cascade(setting, dict(cfg["embedding_sizes"]), dim=int(cfg["train"]["dim"]), compile=compile)
    cascade.load_state_dict(payload["model_state"])
    cascade.to(device).eval()
    return cascade, payload


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
    shard_set = shards if isinstance(shards, ShardSet) else ShardSet(shards)
    run_setting = _resolve_setting(shard_set.setting, setting, stages)
    cfg = dataclasses.replace(cfg, lr=float(cfg.lr),
                              loss_options=normalise_loss_options(cfg.method, cfg.loss_options, run_setting))
    days = training_days(shard_set, cfg.days)
    plan = batch_plan({d: shard_set.num_requests(d) for d in days}, cfg.batch_size, max_steps_per_day)
    device = resolve_device(cfg.device)
    out = Path(out)

    run_cfg = {
        "format_version": FORMAT_VERSION,
        "method": cfg.method,
        "loss_options": dict(cfg.loss_options),
        "setting": run_setting.to_dict(),
        "embedding_sizes": dict(shard_set.embedding_sizes),
        "train": {"batch_size": cfg.batch_size, "lr": cfg.lr, "dim": cfg.dim, "shuffle": cfg.shuffle,
                  "max_steps_per_day": max_steps_per_day},
        "days": days,
        "shards": str(shard_set.root),
        "data_fingerprint": shard_set.fingerprint(),
        "batch_plan": plan.summary(),  # a function of the fields above: the hash does not change with it
    }
    run_cfg["config_hash"] = config_hash({k: v for k, v in run_cfg.items() if k != "shards"})
    _claim_run_folder(out, run_cfg, cfg, overwrite)

    results = []
    for seed in cfg.seeds:
        results.append(_train_seed(shard_set, out, run_cfg, run_setting, days, cfg, seed, device, progress,
                                   max_steps_per_day))
    return results


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


def _claim_run_folder(out: Path, run_cfg: dict, cfg: TrainConfig, overwrite: bool) -> None:
    """Record the run's config; a folder holding another configuration is refused unless overwriting."""
    run_json = out / "run.json"
    seeds = list(cfg.seeds)
    if run_json.exists():
        old = json.loads(run_json.read_text())
        if old.get("config_hash") == run_cfg["config_hash"]:
            seeds = sorted(set(seeds) | set(old.get("seeds", [])))
        elif not overwrite:
            raise OutputExistsError(
                f"{out} holds a run with a different configuration (method {old.get('method')!r}, "
                f"config {old.get('config_hash')} vs {run_cfg['config_hash']}); choose another --out or "
                "pass --overwrite")
        else:
            import shutil

            for child in out.glob("seed-*"):
                shutil.rmtree(child)
    atomic.write_json(run_json, {**run_cfg, "seeds": seeds})


def _train_seed(shard_set, out: Path, run_cfg: dict, setting: Setting, days: list[str], cfg: TrainConfig,
                seed: int, device: torch.device, progress: bool, max_steps_per_day: int | None) -> SeedResult:
    folder = out / f"seed-{seed}"
    summary_path = folder / "summary.json"
    if summary_path.exists():
        summary = json.loads(summary_path.read_text())
        if summary.get("config_hash") == run_cfg["config_hash"]:
            log(f"seed {seed}: complete in {folder}, skipped")
            return SeedResult(seed, folder, True, summary)
    ckpt_dir = folder / "checkpoints"
    cascade, loss, optimizers = build_training_objects(setting, run_cfg["embedding_sizes"], cfg, seed, device)

    start_day, step, requests, records = 0, 0, 0, []
    resumed = _latest_checkpoint(ckpt_dir, days)
    if resumed is not None:
        state = load_checkpoint(resumed, map_location=device)
        if state["config"].get("config_hash") != run_cfg["config_hash"]:
            raise OutputExistsError(f"checkpoint {resumed} was made with another configuration; pass --overwrite")
        cascade.load_state_dict(state["model_state"])
        loss.load_state_dict(state["loss_state"])
        for k, opt in optimizers.items():
            opt.load_state_dict(state["optim_state"][k])
        start_day, step, requests = state["day_index"] + 1, state["step"], state["requests"]
        records = _read_log(folder / "train_log.jsonl", max_step=step)
        log(f"seed {seed}: resuming after day {state['day']} (step {step}) from {resumed}")

    cascade.train()
    timing = {"steady_seconds": 0.0, "steady_requests": 0, "first_step_seconds": None}
    for day_index in range(start_day, len(days)):
        day = days[day_index]
        arrays = shard_set.load_day(day)
        order = day_order(len(arrays["label"]), seed, day_index, cfg.shuffle)
        n_batches = len(order) // cfg.batch_size
        if max_steps_per_day is not None:
            n_batches = min(n_batches, max_steps_per_day)
            order = order[: n_batches * cfg.batch_size]
        if n_batches == 0:
            log(f"seed {seed}: day {day} has {len(order)} requests, fewer than one batch of {cfg.batch_size}; "
                "nothing to train on that day")
        bar = Progress(n_batches, f"train {cfg.method} seed {seed} day {day}", unit="batch", enabled=progress)
        t_last = time.perf_counter()
        for batch in iter_batches(arrays, order, cfg.batch_size, drop_last=True, device=device):
            logits = cascade(batch)
            result = loss(logits, batch["label"], batch["mask"])
            _check_finite(result, cfg, seed, day, step + 1)
            for opt in optimizers.values():
                opt.zero_grad(set_to_none=True)
            result.total.backward()
            for opt in optimizers.values():
                opt.step()
            step += 1
            requests += cfg.batch_size
            rec = {"seed": seed, "day": day, "step": step, "total": float(result.total.detach())}
            rec.update({k: float(torch.as_tensor(v).detach()) for k, v in result.parts.items()})
            records.append(rec)
            now = time.perf_counter()
            if timing["first_step_seconds"] is None:
                timing["first_step_seconds"] = now - t_last
            else:
                timing["steady_seconds"] += now - t_last
                timing["steady_requests"] += cfg.batch_size
            t_last = now
            bar.update(postfix=f"loss {rec['total']:.4f}")
        bar.close()
        _write_log(folder / "train_log.jsonl", records)
        atomic.save_torch(ckpt_dir / f"{day}.pt", _checkpoint_payload(
            run_cfg, seed, day, day_index, step, requests, cascade, loss, optimizers))

    final = _checkpoint_payload(run_cfg, seed, days[-1], len(days) - 1, step, requests, cascade, loss, optimizers,
                                with_optim=False)
    atomic.save_torch(folder / "model.pt", final)
    steady = timing["steady_requests"] / timing["steady_seconds"] if timing["steady_seconds"] > 0 else None
    summary = {
        "seed": seed,
        "method": cfg.method,
        "setting": setting.name,
        "config_hash": run_cfg["config_hash"],
        "days": days,
        "steps": step,
        "requests": requests,
        "first_step_seconds": timing["first_step_seconds"],
        "steady_requests_per_s": steady,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "compile": cfg.compile,
        "learned_weights": learned_weights(loss),
        "final_loss": records[-1]["total"] if records else None,
        **run_cfg.get("batch_plan", {}),
    }
    atomic.write_json(summary_path, summary)
    log(f"seed {seed}: trained {step} steps on {len(days)} day(s); model in {folder / 'model.pt'}")
    return SeedResult(seed, folder, False, summary)


def _latest_checkpoint(ckpt_dir: Path, days: list[str]) -> Path | None:
    latest = None
    for day in days:
        p = ckpt_dir / f"{day}.pt"
        if p.exists():
            latest = p
        else:
            break
    return latest


def _read_log(path: Path, max_step: int) -> list[dict]:
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r["step"] <= max_step]


def _write_log(path: Path, records: list[dict]) -> None:
    atomic.write_text(path, "".join(json.dumps(r) + "\n" for r in records))


def run_seeds(run_dir: str | Path) -> list[Path]:
    """The completed seed folders of a run (those with model.pt and summary.json)."""
    run_dir = Path(run_dir)
    if not (run_dir / "run.json").exists():
        raise DataError(f"{run_dir} is not a training run folder (no run.json)")
    seeds = sorted((p for p in run_dir.glob("seed-*") if (p / "summary.json").exists() and (p / "model.pt").exists()),
                   key=lambda p: int(p.name.split("-", 1)[1]))
    if not seeds:
        raise DataError(f"{run_dir} holds no completed seed (seed-*/model.pt with summary.json)")
    return seeds


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
    parser.add_argument("--shards", required=True, help="shard folder written by `lcron preprocess`")
    parser.add_argument("--out", required=True, help="run folder (one seed-<n>/ subfolder per seed)")
    parser.add_argument("--method", required=True, help="training method (bce, icc, rankflow, fs_ranknet, "
                        "fs_lambdaloss, arf, arf_v2, lcron, or a registered one)")
    parser.add_argument("--stages", type=int, choices=(2, 3), help="check the shards hold this built-in setting")
    parser.add_argument("--setting", help="setting file (JSON/YAML) overriding the shard set's setting, e.g. other quotas")
    seeds = ",".join(map(str, TRAIN.seeds))
    parser.add_argument("--seeds", default=seeds, help=f"comma-separated seeds, one model folder each (default {seeds})")
    parser.add_argument("--loss-option", action="append", metavar="KEY=VALUE",
                        help="an option of the method, e.g. reference_quirks=true or k=30,20 (repeatable)")
    parser.add_argument("--batch-size", type=int, default=TRAIN.batch_size,
                        help=f"requests per step (default {TRAIN.batch_size})")
    parser.add_argument("--lr", type=float, default=TRAIN.lr, help=f"Adam learning rate (default {TRAIN.lr})")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    parser.add_argument("--days", help="training days FIRST:LAST (inclusive); default every day but the last")
    parser.add_argument("--no-compile", action="store_true", help="run eager PyTorch (no torch.compile fusion)")
    parser.add_argument("--max-steps-per-day", type=int, help="cap the steps of each day (smoke tests)")
    parser.add_argument("--overwrite", action="store_true", help="replace a run with another configuration in --out")


def run_train(args) -> int:
    cfg = TrainConfig(method=args.method, loss_options=parse_loss_options(args.loss_option),
                      batch_size=args.batch_size, lr=args.lr, seeds=parse_seeds(args.seeds), days=args.days,
                      device=args.device, compile=not args.no_compile)
    results = train(args.shards, args.out, cfg, setting=args.setting, stages=args.stages, overwrite=args.overwrite,
                    progress=not args.quiet, max_steps_per_day=args.max_steps_per_day)
    for r in results:
        s = r.summary
        rate = f"{s['steady_requests_per_s']:,.0f} requests/s" if s.get("steady_requests_per_s") else "n/a"
        print(f"seed {r.seed}: {'skipped (complete)' if r.skipped else 'trained'} - {s['steps']} steps, "
              f"final loss {s['final_loss']}, {rate}; {r.folder / 'model.pt'}")
    print(f"run folder: {args.out}")
    return 0
