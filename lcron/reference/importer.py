"""``lcron import-reference``: models trained by the published code -> a run folder ``lcron evaluate`` reads.

The published experiments save one ``state_dict`` per stage model (DSSM, DIN, MLP). This
converts each into this project's model with :mod:`lcron.reference.mapping` and writes a
run folder with one seed: ``run.json`` (``method`` as given, no training days) and
``seed-<n>/model.pt`` + ``summary.json``. Imported in reference mode (``--reference-quirks``)
the models behave exactly as the published ones, and evaluate on reference-mode shards with
the reference protocol; imported in default mode the same weights run through the faithful
forward (masked mean, zero padding) on default shards.

The folder follows every step's output protocol (:mod:`lcron.step_output`): locked while
written, completion marker at the end; importing the same files (by content) the same way
again writes nothing, and a folder holding another run is refused unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import torch

from lcron import atomic, outputs
from lcron.errors import ConfigError, DataError
from lcron.reference import mapping
from lcron.reference_policy import mode
from lcron.run_folder import RUN_FOLDER_WHAT, RUN_KIND, config_difference, is_run_folder, seed_complete
from lcron.step_output import StepOutput, step_output
from lcron.step_config import StepConfig, add_arguments, from_args, integer_at_least, option

if TYPE_CHECKING:
    from lcron.data.shards import ShardSet
    from lcron.models import Cascade
    from lcron.settings import Setting

FORMAT_VERSION = 1


@dataclass(frozen=True)
class ImportReferenceConfig(StepConfig):
    """The choices of one import besides its inputs (the --stage files, --shards, --out); checked
    when made. Each field is an ``lcron import-reference`` option and a keyword of
    :func:`import_reference` with the same default (tests/reference/test_import_reference_config.py)."""

    stages: int | None = option(None, "built-in setting (without --shards)", choices=(2, 3))
    reference_quirks: bool = option(False, "keep the published models' behaviour (for reference-mode shards); "
                                           "without it the weights run through the faithful models")
    method: str = option("reference", "the method name to record (default 'reference')")
    seed: int = option(1, "the seed folder to write (default 1)")
    batch_size: int = option(1024, "the training batch of the published run (the reference protocol's batch; "
                                   "default 1024)", check=integer_at_least(1, "batch size"))


def load_reference_state(path: str | Path) -> dict[str, torch.Tensor]:
    """A reference state dict from ``path`` (weights only; a ``{"state_dict": ...}`` wrapper is unwrapped)."""
    from lcron.run_folder import load_checkpoint

    obj: Any = load_checkpoint(path, expect=())
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise DataError(f"{path}: not a state dict of tensors (a published model's model.state_dict())")
    return {str(k): v for k, v in obj.items()}


def parse_stage_files(items: list[str] | None) -> dict[str, Path]:
    """``STAGE=PATH`` pairs from repeated --stage flags."""
    out: dict[str, Path] = {}
    for item in items or []:
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise ConfigError(f"--stage expects STAGE=PATH (e.g. retrieval=dssm.pt), got {item!r}")
        out[name.strip()] = Path(path.strip())
    return out


def import_reference(stage_files: Mapping[str, str | Path], out: str | Path, *, stages: int | None = None,
                     shards: str | Path | None = None, reference_quirks: bool = False, method: str = "reference",
                     seed: int = 1, batch_size: int = 1024, overwrite: bool = False) -> Path:
    """Write a run folder at ``out`` holding the published models of ``stage_files`` ({stage name: file}).

    The setting comes from ``shards`` (whose vocabulary and mode must match) or ``stages``.
    ``batch_size`` is what the reference protocol drops partial batches by (the published 1024).
    """
    from lcron.data.shards import ShardSet

    # the choices checked once, before anything is read or written (ImportReferenceConfig's own checks)
    ImportReferenceConfig(stages=stages, reference_quirks=reference_quirks, method=method, seed=seed,
                          batch_size=batch_size)
    shard_set = ShardSet(shards) if shards is not None else None
    setting = _import_setting(shard_set, stages, reference_quirks)
    states, sizes = _load_stage_states(stage_files, setting, shard_set)
    dim = int(states[setting.stage_names[0]]["uid_emb.weight"].shape[1])
    cascade = _reference_cascade(setting, states, sizes, dim, reference_quirks)

    out = Path(out)
    run_cfg = _imported_run_config(stage_files, setting, sizes, dim, shard_set, reference_quirks=reference_quirks,
                                   method=method, batch_size=batch_size)
    command = outputs.current_command(_import_command(stage_files, out, shards, setting, run_cfg, seed))
    with step_output(out, command, kind=RUN_KIND, ours=is_run_folder, folder_what=RUN_FOLDER_WHAT) as step:
        if _claim_import_folder(step, run_cfg, seed, overwrite):
            return out  # the same files imported the same way: nothing to write
        step.begin()
        files = _write_imported_run(out, run_cfg, cascade, seed=seed, method=method, setting_name=setting.name)
        step.finish(files, {"seeds": [seed]})
    return out


def _claim_import_folder(step: StepOutput, run_cfg: dict[str, Any], seed: int, overwrite: bool) -> bool:
    """The output protocol's claim on run.json: True when ``out`` already holds this import
    (same configuration hash - which covers the files' contents - same seed, complete);
    another run is refused unless overwriting, which removes its seed folders."""
    import shutil

    chash = run_cfg["config_hash"]
    claim = step.claim(
        "run.json", run_cfg, chash, overwrite, hash_field="config_hash", held="another run",
        same=lambda old: old.get("config_hash") == chash and old.get("seeds") == [seed],
        describe=lambda old: _import_difference(old, run_cfg, seed))
    if claim.same and not overwrite and seed_complete(step.folder / f"seed-{seed}", chash):
        return True
    for child in step.folder.glob("seed-*"):
        shutil.rmtree(child)
    return False


def _import_difference(old: Mapping[str, Any], run_cfg: Mapping[str, Any], seed: int) -> str:
    """What differs between the run in the folder and this import (the refusal's parenthesis)."""
    if not old.get("config_hash"):
        return "a run.json without a configuration it can read"
    if not old.get("imported_from"):
        return f"a trained {old.get('method')!r} run, not an import"
    if old.get("config_hash") == run_cfg["config_hash"]:
        return f"differs in seeds {old.get('seeds')} -> [{seed}]"
    return config_difference(old, run_cfg)


def _import_command(stage_files: Mapping[str, str | Path], out: Path, shards: str | Path | None,
                    setting: "Setting", run_cfg: Mapping[str, Any], seed: int) -> str:
    """The ``lcron import-reference`` command that writes this folder (for its lock and markers)."""
    cmd = "lcron import-reference " + " ".join(f"--stage {k}={v}" for k, v in stage_files.items())
    cmd += f" --out {out}" + (f" --shards {shards}" if shards is not None else f" --stages {setting.num_stages}")
    cmd += f" --method {run_cfg['method']} --seed {seed} --batch-size {run_cfg['train']['batch_size']}"
    return cmd + (" --reference-quirks" if run_cfg.get(mode.KEY) else "")


def _import_setting(shard_set: "ShardSet | None", stages: int | None, reference_quirks: bool) -> "Setting":
    """The setting to import into: the shard set's (its mode must match, and ``stages``, if
    given, its number of stages) or the built-in one of ``stages``."""
    from lcron.settings import get_setting

    if shard_set is not None:
        mode.check_match(reference_quirks, shard_set.reference_quirks, step="import-reference",
                         what=f"shard set {shard_set.root}", fix="import in the shards' mode")
        setting = shard_set.setting
        if stages is not None and setting.num_stages != stages:
            raise ConfigError(f"--stages {stages} but shard set {shard_set.root} has {setting.num_stages} stages")
        return setting
    if stages is not None:
        return get_setting(stages)
    raise ConfigError("import-reference needs --shards DIR or --stages 2|3")


def _load_stage_states(stage_files: Mapping[str, str | Path], setting: "Setting",
                       shard_set: "ShardSet | None") -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, int]]:
    """The state dict of each stage of ``setting`` and their vocabulary sizes, checked before
    anything is built: one file per stage, each of the model kind its stage expects, all with
    the same vocabulary, and that of the shard set if there is one."""
    if set(stage_files) != set(setting.stage_names):
        raise ConfigError(f"give one --stage file per stage of {setting.name}: {list(setting.stage_names)}; "
                          f"got {sorted(stage_files)}")
    states = {name: load_reference_state(stage_files[name]) for name in setting.stage_names}
    sizes = mapping.embedding_sizes(states[setting.stage_names[0]])
    for name, kind in zip(setting.stage_names, setting.stage_models):
        cls = mapping.reference_class(states[name])
        if mapping.KINDS[cls] != kind:
            raise ConfigError(f"{stage_files[name]}: a reference {cls}, but stage {name!r} of {setting.name} is a "
                              f"{kind.upper()}")
        if mapping.embedding_sizes(states[name]) != sizes:
            raise DataError(f"{stage_files[name]}: its vocabulary sizes differ from the other stages'")
    if shard_set is not None and dict(shard_set.embedding_sizes) != sizes:
        diff = sorted(k for k in sizes if shard_set.embedding_sizes.get(k) != sizes[k])
        raise DataError(f"the reference models' vocabularies differ from shard set {shard_set.root} in {diff}")
    return states, sizes


def _reference_cascade(setting: "Setting", states: Mapping[str, dict[str, torch.Tensor]], sizes: dict[str, int],
                       dim: int, reference_quirks: bool) -> "Cascade":
    """This project's cascade for ``setting`` holding the published weights of every stage."""
    from lcron.models import build_cascade

    cascade = build_cascade(setting, sizes, dim=dim, reference_quirks=reference_quirks)
    for name in setting.stage_names:
        mapping.load_reference(cascade.stages[name], states[name])
    return cascade


def _imported_run_config(stage_files: Mapping[str, str | Path], setting: "Setting", sizes: dict[str, int], dim: int,
                         shard_set: "ShardSet | None", *, reference_quirks: bool, method: str,
                         batch_size: int) -> dict[str, Any]:
    """run.json of the imported run (less its seed list): no training days, no learning rate,
    and the files imported from; its config hash leaves out where the shards are."""
    from lcron.hashing import config_hash

    run_cfg: dict[str, Any] = {
        "format_version": FORMAT_VERSION, "method": method, "loss_options": {}, "setting": setting.to_dict(),
        "embedding_sizes": sizes, "train": {"batch_size": int(batch_size), "lr": None, "dim": dim, "shuffle": None,
                                            "max_steps_per_day": None},
        "days": [], "shards": str(shard_set.root) if shard_set is not None else "",
        "data_fingerprint": shard_set.fingerprint() if shard_set is not None else None,
        "imported_from": {k: str(v) for k, v in stage_files.items()},
        # the files' contents, so that re-importing changed files at the same paths is not "the same inputs"
        "imported_sha256": {k: outputs.file_sha256(v) for k, v in stage_files.items()},
    }
    if reference_quirks:
        run_cfg[mode.KEY] = True
    run_cfg["config_hash"] = config_hash({k: v for k, v in run_cfg.items() if k != "shards"})
    return run_cfg


def _write_imported_run(out: Path, run_cfg: dict[str, Any], cascade: "Cascade", *, seed: int, method: str,
                        setting_name: str) -> list[Path]:
    """The seed's model file and summary (no training steps), then run.json, which lists the
    seed: the files every reader of a run folder expects (returned for the completion marker)."""
    folder = out / f"seed-{seed}"
    payload = {"format_version": FORMAT_VERSION, "config": run_cfg, "seed": seed, "day": None, "day_index": -1,
               "step": 0, "requests": 0, "model_state": {k: v.detach().cpu() for k, v in cascade.state_dict().items()},
               "loss_state": {}}
    atomic.save_torch(folder / "model.pt", payload)
    atomic.write_json(folder / "summary.json", {"seed": seed, "method": method, "setting": setting_name,
                                                "config_hash": run_cfg["config_hash"], "imported": True, "steps": 0,
                                                "requests": 0, "learned_weights": {}, "final_loss": None})
    atomic.write_json(out / "run.json", {**run_cfg, "seeds": [seed]})
    return [out / "run.json", folder / "model.pt", folder / "summary.json"]


def add_import_reference_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``lcron import-reference``."""
    parser.add_argument("--stage", action="append", required=True, metavar="STAGE=PATH",
                        help="a published stage model's state dict, e.g. retrieval=dssm.pt (one per stage)")
    parser.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder to write")
    parser.add_argument("--shards", metavar="DIR", help="the shard set to evaluate on (gives the setting; checked)")
    add_arguments(parser, ImportReferenceConfig)  # one option per ImportReferenceConfig field
    parser.add_argument("--overwrite", action="store_true", help="replace a run in --out")


def run_import_reference(args: argparse.Namespace) -> int:
    """``lcron import-reference``: write the run folder and print how to evaluate it."""
    config = from_args(ImportReferenceConfig, args)
    out = import_reference(parse_stage_files(args.stage), args.out, shards=args.shards, **config.as_kwargs(),
                           overwrite=args.overwrite)
    print(f"imported the reference models into {out} ({mode.mode_name(config.reference_quirks)} mode); "
          f"evaluate with: lcron evaluate --model {out}" + ("" if args.shards else " --shards DIR"))
    return 0
