"""Read a finished training run: its configuration, seeds, models, checkpoints, logs and shards.

``lcron train`` (:mod:`lcron.train`) writes a run folder (layout in its docstring); every
step that reads one - evaluation, serving evaluation, export, report, reference import -
goes through this module and never imports the trainer. :class:`FinishedRun` is the usual
entry: it checks the folder is complete (its completion marker, :mod:`lcron.outputs`),
reads run.json once and hands out the completed seeds, their model files and the shard
set the run was trained on, checked against the run's setting and vocabulary.

Loading goes through :func:`load_checkpoint` only: ``torch.load(weights_only=True)``, so a
file carrying code is refused without running anything.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from . import outputs
from .errors import ConfigError, DataError
from .jsonfile import read_json
from .settings import Setting

if TYPE_CHECKING:
    import torch

#: The completion-marker kind of a run folder (``_complete-run.json``).
RUN_KIND = "run"
#: How a refusal names a run folder (the output protocol's ``folder_what``).
RUN_FOLDER_WHAT = "an lcron run folder (run.json of lcron train)"
#: A seed's folder: ``seed-<n>`` (other names in a run folder are not seeds).
_SEED_FOLDER = re.compile(r"seed-\d{1,9}")


#: What every model file, day snapshot and resume checkpoint holds.
MODEL_KEYS = ("config", "model_state")


def load_checkpoint(path: str | Path, map_location: "str | torch.device" = "cpu", *,
                    expect: Sequence[str] = MODEL_KEYS, what: str = "an lcron model file", hint: str = "") -> dict:
    """Load a checkpoint or model file without executing anything it might carry (weights_only).

    The payload must be a mapping holding the ``expect`` keys: a file of another kind put in
    its place (a day snapshot as ``resume.pt``, someone else's state dict) is a DataError
    naming the file and what it lacks, not a KeyError deep inside a step."""
    import torch

    path = Path(path)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise DataError(f"model file {path} does not exist") from None
    except Exception as exc:
        # torch's own message suggests weights_only=False: never do that with a file you did not write.
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        useful = [ln for ln in lines if ln.lower().startswith(("trying to load unsupported", "unsupported"))]
        reason = useful[0] if useful else ("not a valid checkpoint" if "Weights only" in str(exc) else lines[0])
        raise DataError(f"model file {path} cannot be loaded safely (weights only; nothing was executed): "
                        f"{reason}") from None
    missing = [k for k in expect if not isinstance(payload, dict) or k not in payload]
    if missing:
        kind = f"a {type(payload).__name__}" if not isinstance(payload, dict) else f"keys {sorted(map(str, payload))[:8]}"
        raise DataError(f"{path} is not {what}: it lacks {', '.join(missing)} (it holds {kind}){hint}")
    return payload


def load_state(module: "torch.nn.Module", state: Mapping[str, Any], path: Path, what: str = "model") -> None:
    """``module.load_state_dict(state)``; a state of another architecture or vocabulary is a
    DataError naming the file (torch's own error lists every tensor, one line kept)."""
    try:
        module.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError, ValueError) as exc:
        first = next((ln.strip() for ln in str(exc).splitlines()[1:] if ln.strip()), str(exc).strip())
        raise DataError(f"{path}: its {what} state does not fit this model ({first[:300]})") from None


def load_cascade(path: str | Path, device: "str | torch.device" = "cpu", compile: bool = False):
    """Rebuild a trained cascade from model.pt or a day checkpoint: (cascade in eval mode, payload)."""
    import torch

    from .models import build_cascade

    path = Path(path)
    payload = load_checkpoint(path, map_location=device)
    from .devices import check_table_memory

    try:
        cfg = payload["config"]
        setting = Setting.from_dict(cfg["setting"])
        check_table_memory(dict(cfg["embedding_sizes"]), len(setting.stage_models), int(cfg["train"]["dim"]),
                           torch.device(device), where=str(path), training=False)
        cascade = build_cascade(setting, dict(cfg["embedding_sizes"]), dim=int(cfg["train"]["dim"]), compile=compile,
                                reference_quirks=bool(cfg.get("reference_quirks", False)))
        state = dict(payload["model_state"])
        shapes = {k: v.shape for k, v in cascade.state_dict().items()}
        for key, part in payload.get("embedding_rows", {}).items():  # a day snapshot: the stored rows, NaN elsewhere
            weight = torch.full(shapes[key], math.nan, dtype=part["values"].dtype, device=part["values"].device)
            state[key] = weight.index_copy_(0, part["rows"].to(weight.device, torch.int64), part["values"])
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError) as exc:
        raise DataError(f"{path}: malformed model file ({type(exc).__name__}: {str(exc)[:200]})") from None
    load_state(cascade, state, path)
    cascade.to(device).eval()
    return cascade, payload


def train_command(out: Path, run_cfg: Mapping[str, Any], seeds: Sequence[int]) -> str:
    """The ``lcron train`` command that completes the run at ``out`` (a hint; the writer's own is preferred)."""
    t = run_cfg.get("train", {})
    days = run_cfg.get("days") or []
    cmd = (f"lcron train --shards {run_cfg.get('shards')} --out {out} --method {run_cfg.get('method')} "
           f"--seeds {','.join(str(s) for s in seeds)} --batch-size {t.get('batch_size')} --lr {t.get('lr')}")
    if days:
        cmd += f" --days {days[0]}:{days[-1]}"
    if t.get("max_steps_per_day") is not None:
        cmd += f" --max-steps-per-day {t['max_steps_per_day']}"
    for k, v in (run_cfg.get("loss_options") or {}).items():
        cmd += f" --loss-option {k}={v}"
    return cmd


def seed_complete(folder: Path, chash: Any) -> bool:
    """A seed folder whose model.pt exists and whose summary.json (written last) is of config ``chash``."""
    try:
        summary = json.loads((folder / "summary.json").read_bytes())
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(summary, dict) and summary.get("config_hash") == chash and (folder / "model.pt").is_file()


def is_run_folder(out: Path) -> bool:
    """Whether ``out`` is a run folder lcron made - by training or import-reference - (its
    marker, or a run.json of a run's fields): the output protocol's ``ours`` test."""
    if outputs.has_marker(out, [RUN_KIND]):
        return True
    try:
        doc = json.loads((out / "run.json").read_text())
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(doc, dict) and {"method", "config_hash", "setting"} <= set(doc)


def config_difference(old: dict, new: dict, limit: int = 4) -> str:
    """The hashed fields of two run configurations (run.json) that differ, as ``key: old -> new``
    (nested keys dotted): the refusal's words when a folder holds another run."""
    def flat(d: Any, prefix: str = "") -> dict[str, Any]:
        if not isinstance(d, dict):
            return {prefix: d}
        return {k: v for key, val in d.items() for k, v in flat(val, f"{prefix}{key}.").items()} if d else {prefix: d}

    skip = ("config_hash", "seeds", "shards", "batch_plan")
    a = flat({k: v for k, v in old.items() if k not in skip})
    b = flat({k: v for k, v in new.items() if k not in skip})
    diffs = [f"{k.rstrip('.')}: {a.get(k, '(absent)')!r} -> {b.get(k, '(absent)')!r}"
             for k in sorted(set(a) | set(b)) if a.get(k, "(absent)") != b.get(k, "(absent)")]
    if not diffs:
        return "the same fields, an older format"
    return "differs in " + "; ".join(diffs[:limit]) + (f"; and {len(diffs) - limit} more" if len(diffs) > limit else "")


def _legacy_run_problem(run_dir: Path) -> str | None:
    """A run written before completion markers: complete when every seed that run.json
    lists has model.pt and a summary.json (written last) of the same configuration."""
    try:
        cfg = json.loads((run_dir / "run.json").read_bytes())
    except (OSError, ValueError, RecursionError):
        return f"{run_dir / 'run.json'} is not readable"
    if not isinstance(cfg, dict):
        return f"{run_dir / 'run.json'} is not a run configuration"
    missing = [s for s in cfg.get("seeds", []) if not seed_complete(run_dir / f"seed-{s}", cfg.get("config_hash"))]
    if missing:
        return (f"seed(s) {', '.join(map(str, missing))} have no summary.json or model.pt of this configuration "
                "(training did not finish)")
    return None


def require_complete_run(run_dir: str | Path) -> None:
    """Refuse a run folder that training has not finished (see :mod:`lcron.outputs`)."""
    run_dir = Path(run_dir)
    try:
        cfg = json.loads((run_dir / "run.json").read_bytes())
    except (OSError, ValueError, RecursionError):
        cfg = {}
    cfg = cfg if isinstance(cfg, dict) else {}
    hint = train_command(run_dir, cfg, cfg.get("seeds") or [1]) if cfg else f"lcron train ... --out {run_dir}"
    outputs.require_complete(run_dir, RUN_KIND, "run folder", hint, legacy=_legacy_run_problem)


def run_seeds(run_dir: str | Path) -> list[Path]:
    """The completed seed folders of a run (those with model.pt and summary.json)."""
    run_dir = Path(run_dir)
    if not (run_dir / "run.json").exists():
        raise DataError(f"{run_dir} is not a training run folder (no run.json)")
    require_complete_run(run_dir)
    seeds = sorted((p for p in run_dir.glob("seed-*") if _SEED_FOLDER.fullmatch(p.name) and p.is_dir()
                    and (p / "summary.json").exists() and (p / "model.pt").exists()), key=seed_number)
    if not seeds:
        raise DataError(f"{run_dir} holds no completed seed (seed-*/model.pt with summary.json)")
    return seeds


def read_run_config(run_dir: Path) -> dict[str, Any]:
    """run.json of a run folder, checked to hold the fields every reader needs."""
    path = run_dir / "run.json"
    if not path.is_file():
        raise DataError(f"{run_dir} is not a training run folder (no run.json)")
    cfg = read_json(path, "run configuration")
    for key in ("method", "setting", "embedding_sizes", "config_hash", "days"):
        if key not in cfg:
            raise DataError(f"{path} lacks the field {key!r}; was it written by lcron train?")
    return cfg


def seed_number(folder: Path) -> int:
    """The seed of a ``seed-<n>`` folder."""
    return int(folder.name.split("-", 1)[1])


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


def read_train_logs(run_dir: Path, seeds: Sequence[int]) -> dict[str, dict[str, tuple[list[int], list[float]]]]:
    """Loss curves from every seed's train_log.jsonl: ``{part: {"seed N": (steps, values)}}``."""
    curves: dict[str, dict[str, tuple[list[int], list[float]]]] = {}
    for seed in seeds:
        path = run_dir / f"seed-{seed}" / "train_log.jsonl"
        if not path.is_file():
            continue
        for n, line in enumerate(path.read_bytes().splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except (ValueError, RecursionError) as exc:
                raise DataError(f"{path} line {n} is not valid JSON: {type(exc).__name__}: {str(exc)[:200]}") from None
            if not isinstance(rec, dict):
                raise DataError(f"{path} line {n} is not a JSON object")
            for part, value in rec.items():
                if part in ("seed", "day", "step") or not isinstance(value, (int, float)):
                    continue
                steps, values = curves.setdefault(part, {}).setdefault(f"seed {seed}", ([], []))
                steps.append(int(rec.get("step", len(steps) + 1)))
                values.append(float(value))
    # "total" first, then the parts in the order they were logged.
    return dict(sorted(curves.items(), key=lambda kv: kv[0] != "total"))


def read_summaries(run_dir: Path, seeds: Sequence[int]) -> dict[int, dict[str, Any]]:
    """summary.json of every given seed that has one: ``{seed: summary}``."""
    out = {}
    for seed in seeds:
        path = run_dir / f"seed-{seed}" / "summary.json"
        if path.is_file():
            out[seed] = read_json(path, "seed summary")
    return out


@dataclass
class FinishedRun:
    """A complete run folder, read once: run.json, the setting and the completed seed folders."""

    root: Path
    config: dict[str, Any]
    setting: Setting
    seed_dirs: list[Path]

    @classmethod
    def open(cls, run_dir: "str | Path") -> "FinishedRun":
        """Read ``run_dir``; an incomplete run or one without a completed seed is a DataError."""
        root = Path(run_dir)
        config = read_run_config(root)
        return cls(root, config, Setting.from_dict(config["setting"]), run_seeds(root))

    @property
    def seeds(self) -> list[int]:
        return [seed_number(p) for p in self.seed_dirs]

    @property
    def method(self) -> str:
        return str(self.config["method"])

    @property
    def reference_quirks(self) -> bool:
        """Whether the run was trained in the reference's mode (lcron.reference_policy.mode)."""
        from .reference_policy import mode

        return mode.recorded(self.config)

    def seed_dir(self, seed: int) -> Path:
        for p in self.seed_dirs:
            if seed_number(p) == seed:
                return p
        raise DataError(f"{self.root} has no completed seed {seed}; completed: "
                        f"{', '.join(str(s) for s in self.seeds)}")

    def model_path(self, seed: int) -> Path:
        """The final model of ``seed``."""
        return self.seed_dir(seed) / "model.pt"

    def checkpoint_path(self, seed: int, day: str) -> Path:
        """The day snapshot written after training ``day`` (what streaming evaluation of the next day reads)."""
        return self.seed_dir(seed) / "checkpoints" / f"{day}.pt"

    def shards(self, override: Any = None) -> Any:
        """The shard set to read (run.json's unless ``override``), checked against the run (:func:`open_run_shards`)."""
        return open_run_shards(override, self.config, self.setting)

    def summaries(self) -> dict[int, dict[str, Any]]:
        return read_summaries(self.root, self.seeds)

    def train_logs(self) -> dict[str, dict[str, tuple[list[int], list[float]]]]:
        return read_train_logs(self.root, self.seeds)
