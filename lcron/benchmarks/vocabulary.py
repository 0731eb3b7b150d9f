"""``lcron bench`` rows at RecFlow vocabulary sizes: training per embedding optimizer and
the run folder's checkpoint sizes (registered as the ``train_vocab`` benchmark).

Why a scaled shard set instead of generated data: what the vocabulary changes is the size
of the embedding tables (every dense Adam step reads and writes all of them, every
checkpoint stores them) and how many distinct rows a batch touches. So the bench takes its
own shard set and, per day, replaces every non-padding id of the kinds whose RecFlow
vocabulary is larger (videos, authors, users, devices) by an id drawn uniformly from that
vocabulary, one draw per occurrence (seeded by the day): every lookup hits a random row of
the full-size table - the worst case for the rows touched per batch and for the caches.
Vocabulary: ``RECFLOW_ID_COUNTS`` (9M videos, 2M authors, 42k users: ~11.1M rows per stage
model at dim 8, 355 MB of float32 weights).

Why ``day_repeat``: the bench shard set's days hold 2,000 requests, one batch of 1,024, so
a 4-day run measured its steady rate on 3 steps - noise on a shared machine. Each day is
read ``day_repeat`` times over (every copy with its own id draws), which gives several
steps per day and a steady rate from tens of steps.

Each run is a measured child, ``python -m lcron.benchmarks --worker train_vocab`` (suite.py,
with the other measuring children); it uses :class:`VocabularyScaledShards` and
:func:`resume_checkpoint` from here. This module stands on :mod:`lcron.benchmarks.base`
and imports nothing else of the harness.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from lcron.benchmarks.base import SETTING_NAMES, BenchContext, rounded, run_worker
from lcron.data import fields
from lcron.data.shards import ShardSet
from lcron.errors import ConfigError

__all__ = ["RECFLOW_ID_COUNTS", "VocabularyScaledShards", "VOCAB_PARAMS", "bench_train_vocab", "resume_checkpoint",
           "dir_bytes"]

#: RecFlow's vocabulary (issue 19): the synthetic id counts with 9M videos, 2M authors, 42k users.
RECFLOW_ID_COUNTS: dict[str, int] = {
    "user_id": 42_000, "device_id": 42_000, "age": 8, "gender": 3, "province": 34, "video_id": 9_000_000,
    "author_id": 2_000_000, "category_level_one": 24, "category_level_two": 120, "upload_type": 8,
}

# Per model input: the kind of each id column (the embedding's layout).
_COLUMNS: dict[str, tuple[str, ...]] = {"context": fields.CONTEXT_KINDS, "user": fields.USER_KINDS,
                                        "seq": fields.SEQ_KINDS, "items": fields.ITEM_KINDS}


class VocabularyScaledShards(ShardSet):
    """A shard set read with its ids spread over larger vocabularies (see the module docstring)."""

    def __init__(self, root: str | Path, id_counts: dict[str, int] = RECFLOW_ID_COUNTS, day_repeat: int = 1) -> None:
        super().__init__(root)
        if isinstance(day_repeat, bool) or not isinstance(day_repeat, int) or day_repeat < 1:
            raise ConfigError(f"day_repeat must be an integer >= 1, got {day_repeat!r}")
        self.embedding_sizes = fields.embedding_sizes(id_counts)
        self._small = dict(fields.embedding_sizes(self.id_counts))
        self.id_counts = dict(id_counts)
        self.day_repeat = day_repeat

    def num_requests(self, day: str) -> int:
        return super().num_requests(day) * self.day_repeat

    def load_day(self, day: str, mmap: bool = True) -> dict[str, np.ndarray]:
        arrays = dict(super().load_day(day, mmap=False))
        if self.day_repeat > 1:  # the copies differ in their ids, drawn below per occurrence
            arrays = {k: np.concatenate([v] * self.day_repeat) for k, v in arrays.items()}
        rng = np.random.default_rng([int(day.replace("-", "")), 19])
        for name, kinds in _COLUMNS.items():
            ids = np.asarray(arrays[name], dtype=np.int64).copy()
            for c, kind in enumerate(kinds):
                size = self.embedding_sizes[kind]
                if size <= self._small[kind]:
                    continue
                col = ids[..., c]
                draws = rng.integers(1, size, size=col.shape)
                ids[..., c] = np.where(col > 0, draws, 0)
            arrays[name] = ids
        return arrays


def dir_bytes(path: Path) -> int:
    """Bytes of every file under ``path``."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def resume_checkpoint(shards: VocabularyScaledShards, cfg: Any, seed_folder: Path) -> dict[str, Any]:
    """Write the seed's resume checkpoint once more, as training writes it after a day (a complete
    seed deletes its own), time the write and remove it again.

    Its optimizer state is that of one training step: fresh models, loss and optimizers of
    ``cfg`` (:func:`lcron.train.build_training_objects`) take one step of the trainer's own
    :class:`lcron.train_step.TrainStep` on the first batch of the first day. The rest is the
    model file the training wrote (format, configuration, weights): a resume checkpoint is
    that plus ``optim_state`` (:data:`lcron.train.RESUME_KEYS`). Returns ``resume_write_s``,
    ``resume_mb`` and ``embedding_rows`` (rows of every embedding table of the cascade).
    """
    from lcron import atomic
    from lcron.batches import day_order, iter_batches
    from lcron.run_folder import load_checkpoint
    from lcron.train import RESUME_FILE, RESUME_KEYS, build_training_objects
    from lcron.train_step import TrainStep

    cascade, loss, optimizers = build_training_objects(shards.setting, shards.embedding_sizes, cfg, 1, "cpu")
    arrays = shards.load_day(shards.days[0])
    batch = next(iter_batches(arrays, day_order(len(arrays["label"]), 1, 0, True), cfg.batch_size, drop_last=True))
    TrainStep(cascade, loss, optimizers)(batch)
    for opt in optimizers.values():  # the gradients are not part of the state: freed before the model file is read
        opt.zero_grad(set_to_none=True)
    payload = load_checkpoint(seed_folder / "model.pt")
    payload["optim_state"] = {k: opt.state_dict() for k, opt in optimizers.items()}
    missing = [k for k in RESUME_KEYS if k not in payload]
    if missing:
        raise RuntimeError(f"a resume checkpoint holds {', '.join(missing)} too (lcron.train.RESUME_KEYS)")
    resume = seed_folder.parent / RESUME_FILE
    t0 = time.perf_counter()
    atomic.save_torch(resume, payload)
    write_s = time.perf_counter() - t0
    size_mb = resume.stat().st_size / 2**20
    os.unlink(resume)
    rows = sum(t.numel() for n, t in cascade.state_dict().items() if n.endswith("embedding.weight")) // cfg.dim
    return {"resume_write_s": write_s, "resume_mb": size_mb, "embedding_rows": rows}


#: Per bench mode: the vocabulary, the methods and settings trained, how often each day is
#: read over (``day_repeat``) and the batches per day per update rule (dense steps cost ~5-15x
#: lazy ones at this vocabulary, and their cost barely varies: fewer of them keep the mode's
#: time bounded). Quick mode (CI) checks the rows work on a 10x smaller vocabulary.
VOCAB_PARAMS: dict[str, dict[str, Any]] = {
    "quick": {"id_counts": {**RECFLOW_ID_COUNTS, "video_id": 90_000, "author_id": 20_000}, "methods": ("lcron",),
              "stages": (2,), "batch_size": 32, "day_repeat": 1, "steps_per_day": {"dense": 1, "lazy": 1},
              "compile": False},
    "default": {"id_counts": RECFLOW_ID_COUNTS, "methods": ("lcron",), "stages": (2, 3), "batch_size": 1024,
                "day_repeat": 4, "steps_per_day": {"dense": 2, "lazy": 7}, "compile": True},
    "full": {"id_counts": RECFLOW_ID_COUNTS, "methods": ("lcron",), "stages": (2, 3), "batch_size": 1024,
             "day_repeat": 1, "steps_per_day": {"dense": 2, "lazy": 9}, "compile": True},
}


def bench_train_vocab(ctx: BenchContext) -> list[dict[str, Any]]:
    """Training requests/s at RecFlow vocabulary per embedding optimizer (one fresh child
    process per run), and the run folder's sizes: ``train_vocab`` rows (value = steady
    requests/s) and ``checkpoint`` rows (value = MiB of the seed folder after the run, with
    model.pt, the resume checkpoint and the day snapshots apart)."""
    from lcron.optim import UPDATE_RULES

    vp = VOCAB_PARAMS[ctx.mode]
    rows: list[dict[str, Any]] = []
    for stages in vp["stages"]:
        for method in vp["methods"]:
            for opt in UPDATE_RULES:
                ctx.log(f"  train {method} at RecFlow vocabulary, {opt} embeddings ({SETTING_NAMES[stages]}) ...")
                out = ctx.work_dir / "runs-vocab" / f"{method}-{stages}-{opt}"
                shutil.rmtree(out, ignore_errors=True)
                r = run_worker(["train_vocab", json.dumps({
                    "shards": str(ctx.shards(stages)), "out": str(out), "method": method, "embedding_optimizer": opt,
                    "id_counts": vp["id_counts"], "day_repeat": vp["day_repeat"],
                    "batch_size": vp["batch_size"], "steps_per_day": vp["steps_per_day"][opt],
                    "compile": vp["compile"]})])
                shutil.rmtree(out, ignore_errors=True)
                common = {"setting": r["setting"], "embedding_optimizer": opt, "embedding_rows": r["embedding_rows"],
                          "device": r["device"], "threads": r["threads"], "load_1m": r["load_1m"]}
                rows.append({"name": "train_vocab", "case": f"{method}/{opt}", "value": rounded(r["steady"]),
                             "unit": "requests/s", "batch_size": r["batch_size"], "steps": r["steps"],
                             "steady_steps": r["steady_steps"],
                             "first_step_s": rounded(r["first_step_s"], 2), "peak_rss_mb": rounded(r["peak_rss_mb"]),
                             **common})
                rows.append({"name": "checkpoint", "case": f"{method}/{opt}", "value": rounded(r["seed_folder_mb"]),
                             "unit": "MiB/seed", "days": r["days"], "model_mb": rounded(r["model_mb"]),
                             "resume_mb": rounded(r["resume_mb"]), "resume_write_s": rounded(r["resume_write_s"], 2),
                             "day_snapshot_mb": r["day_snapshot_mb"], **common})
    return rows
