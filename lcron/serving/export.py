"""Export a trained cascade into one folder that serves without the training code.

Folder layout (all files written atomically, the folder itself renamed into place)::

    cascade.json          format, setting, quotas, input spec, file names, sizes and sha256s, provenance
    user_tower.pt2        torch.export program: (context, user, seq, seq_mask) -> [B, D]
    item_tower.pt2        torch.export program: items [I, 8] -> [I, D]
    stage-<s>-<name>.pt2  one per later stage: (context, user, seq, seq_mask, items [B, N, 8]) -> [B, N]
    corpus.faiss          faiss inner-product index over the item vectors (row i = item i)
    item_ids.npy          [I] shifted video ids (raw + 1) of the index rows
    item_features.npy     [I, 8] ITEM_FIELDS of the index rows
    loader.py             a copy of lcron/serving/loader.py (torch, faiss, numpy, json only)
    README.txt            the inputs and how to load

Why torch.export: TorchScript cannot save the models (their embedding lookup is a custom
autograd function), while torch.export captures the inference graph with symbolic batch
and candidate dimensions and loads with torch alone. For the capture, each model's
embedding module is swapped for :class:`_ExportEmbedding`, an inference-only equivalent
(one ``F.embedding`` over the same weight and row offsets) without the data-dependent id
range check that torch.export cannot trace; the loader does that check on the inputs
instead (:func:`lcron.serving.loader.check_request`). The export verifies every program
against the eager model before writing anything.

``load_exported`` is re-exported here; importing this module pulls in no training code
(lcron.models / lcron.train / lcron.losses are imported inside :func:`export_cascade`).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lcron import atomic
from lcron.errors import ConfigError, LcronError, OutputExistsError
from lcron.serving import loader
from lcron.serving.loader import ExportedCascade, ExportError, load_exported

__all__ = ["export_cascade", "load_exported", "ExportedCascade", "ExportError",
           "add_export_arguments", "run_export"]

# Request/candidate inputs: trailing shape and the embedding kind of every column.
_CONTEXT_KINDS = ("weekday", "hour", "minute")
_EXAMPLE_B, _EXAMPLE_N = 3, 5  # example sizes for the capture (>= 2 so no dimension specialises)
_TOLERANCE = 1e-5


def _input_spec(embedding_sizes: Mapping[str, int]) -> dict[str, dict[str, Any]]:
    """What the loader checks a request against: trailing dims, column kinds, table sizes."""
    from lcron.data import fields

    layout = {
        "context": (fields.CONTEXT_KINDS, [len(fields.CONTEXT_FIELDS)], 2, "[B, 3]"),
        "user": (fields.USER_KINDS, [len(fields.USER_FIELDS)], 2, "[B, 5]"),
        "seq": (fields.SEQ_KINDS, [fields.SEQ_LEN, len(fields.SEQ_FIELDS)], 3, f"[B, {fields.SEQ_LEN}, 5]"),
        "items": (fields.ITEM_KINDS, [len(fields.ITEM_FIELDS)], None, "[..., 8] ([B, N, 8] for a request)"),
    }
    spec: dict[str, dict[str, Any]] = {}
    for name, (kinds, trailing, ndim, text) in layout.items():
        spec[name] = {"trailing": trailing, "ndim": ndim, "shape_text": text, "kinds": list(kinds),
                      "sizes": [int(embedding_sizes[k]) for k in kinds]}
    spec["seq_mask"] = {"trailing": [fields.SEQ_LEN], "ndim": 2, "shape_text": f"[B, {fields.SEQ_LEN}]",
                        "kinds": [], "sizes": []}
    spec["items"]["columns"] = list(fields.ITEM_FIELDS)
    return spec


# ------------------------------------------------------------------- capture helpers
class _ExportEmbedding(nn.Module):
    """Inference-only stand-in for ``lcron.models.embeddings.FeatureEmbedding``.

    Same call convention (keyword arrays in, one ``[..., F * dim]`` tensor per array out,
    in the given order) and the same weight: row ``offset[kind] + id``. It skips the id
    range check (done by the loader) and uses shape-generic ops only, so torch.export
    keeps the batch and candidate dimensions symbolic.
    """

    def __init__(self, embedding: nn.Module, layout: Mapping[str, tuple[str, ...]]) -> None:
        super().__init__()
        self.weight = embedding.weight
        for name, kinds in layout.items():
            self.register_buffer(f"_off_{name}", torch.tensor([embedding.offsets[k] for k in kinds],
                                                              dtype=torch.int64), persistent=False)

    def forward(self, **arrays: Tensor) -> list[Tensor]:
        return [F.embedding(ids + getattr(self, f"_off_{name}"), self.weight).flatten(-2)
                for name, ids in arrays.items()]


def _exportable(model: nn.Module) -> nn.Module:
    """A deep copy of a stage model in eval mode with its embedding swapped for export."""
    from lcron.data import fields

    layout = {"context": fields.CONTEXT_KINDS, "user": fields.USER_KINDS, "seq": fields.SEQ_KINDS,
              "items": fields.ITEM_KINDS}
    clone = copy.deepcopy(model).cpu().eval()
    emb = getattr(clone, "embedding", None)
    if emb is None or not hasattr(emb, "weight") or not hasattr(emb, "offsets"):
        raise ConfigError(f"{type(model).__name__} has no FeatureEmbedding 'embedding' (weight, offsets); "
                          "the exporter cannot capture it")
    clone.embedding = _ExportEmbedding(emb, layout)
    return clone


class _UserTower(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, context: Tensor, user: Tensor, seq: Tensor, seq_mask: Tensor) -> Tensor:
        return self.model.user_vectors({"context": context, "user": user, "seq": seq, "seq_mask": seq_mask})


class _ItemTower(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, items: Tensor) -> Tensor:
        return self.model.item_vectors(items)


class _Stage(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, context: Tensor, user: Tensor, seq: Tensor, seq_mask: Tensor, items: Tensor) -> Tensor:
        return self.model({"context": context, "user": user, "seq": seq, "seq_mask": seq_mask, "items": items})


def example_request(inputs: Mapping[str, Mapping[str, Any]], b: int, n: int, seed: int = 0) -> dict[str, Tensor]:
    """A random valid request batch (ids inside every table; a few padded steps)."""
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, Tensor] = {}
    for name, lead in (("context", [b]), ("user", [b]), ("seq", [b]), ("items", [b, n])):
        spec = inputs[name]
        shape = lead + [int(s) for s in spec["trailing"]]
        sizes = torch.tensor(spec["sizes"], dtype=torch.float64)
        out[name] = (torch.rand(shape, generator=gen, dtype=torch.float64) * (sizes - 1)).long() + 1
    seq_len = int(inputs["seq_mask"]["trailing"][0])
    out["seq_mask"] = (torch.rand((b, seq_len), generator=gen) > 0.25).float()
    out["seq"] = out["seq"] * out["seq_mask"].long().unsqueeze(-1)
    return out


def _capture(wrapper: nn.Module, args: tuple[Tensor, ...], dynamic: tuple[dict[int, Any], ...], what: str):
    """torch.export of ``wrapper`` with the given symbolic dimensions (non-strict tracing)."""
    try:
        return torch.export.export(wrapper, args, dynamic_shapes=dynamic, strict=False)
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise LcronError(f"torch.export could not capture the {what} ({type(exc).__name__}: {first})") from exc


def _verify(program, reference: nn.Module, args: tuple[Tensor, ...], what: str) -> None:
    with torch.inference_mode():
        got = program.module()(*args)
        want = reference(*args)
    err = float((got - want).abs().max()) if got.numel() else 0.0
    if got.shape != want.shape or not err <= _TOLERANCE * max(1.0, float(want.abs().max()) if want.numel() else 1.0):
        raise LcronError(f"export check failed for {what}: the exported program differs from the model by {err:g}")


def export_programs(cascade_models: list[nn.Module], inputs: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """torch.export programs of the user tower, the item tower and each later stage, each
    verified against the eager model on a fresh random batch of other sizes."""
    from torch.export import Dim

    batch, n = Dim("batch", min=1), Dim("candidates", min=1)
    ex = example_request(inputs, _EXAMPLE_B, _EXAMPLE_N, seed=0)
    check = example_request(inputs, _EXAMPLE_B + 4, _EXAMPLE_N + 6, seed=1)
    req = ("context", "user", "seq", "seq_mask")
    first = _exportable(cascade_models[0])
    out: dict[str, Any] = {}

    user = _UserTower(first)
    out["user_tower"] = _capture(user, tuple(ex[k] for k in req), tuple({0: batch} for _ in req), "user tower")
    _verify(out["user_tower"], _UserTower(cascade_models[0].cpu().eval()), tuple(check[k] for k in req), "user tower")

    items_flat = ex["items"].reshape(-1, ex["items"].shape[-1])
    out["item_tower"] = _capture(_ItemTower(first), (items_flat,), ({0: batch},), "item tower")
    _verify(out["item_tower"], _ItemTower(cascade_models[0].cpu().eval()),
            (check["items"].reshape(-1, check["items"].shape[-1]),), "item tower")

    stages = []
    for s, model in enumerate(cascade_models[1:], start=1):
        wrapper = _Stage(_exportable(model))
        dyn = tuple({0: batch} for _ in req) + ({0: batch, 1: n},)
        prog = _capture(wrapper, tuple(ex[k] for k in req + ("items",)), dyn, f"stage {s} model")
        _verify(prog, _Stage(model.cpu().eval()), tuple(check[k] for k in req + ("items",)), f"stage {s}")
        stages.append(prog)
    out["stages"] = stages
    return out


# ------------------------------------------------------------------------- export
README = """\
Exported cascade: {setting} ({stages})
========================================================================

Made by lcron-pipelines from run {run_dir} (seed {seed}, method {method}).
Stages and quotas: {funnel}. Corpus: {items} items, faiss index '{index}'.

Load and serve (needs only torch {torch_version}, faiss and numpy):

    import importlib.util, sys
    spec = importlib.util.spec_from_file_location("cascade_loader", "<this folder>/loader.py")
    mod = importlib.util.module_from_spec(spec); sys.modules["cascade_loader"] = mod; spec.loader.exec_module(mod)
    cascade = mod.load_exported("<this folder>")            # device="cuda" for a GPU
    got = cascade.score(request, k1=100)   # got.video_ids [B, {last}] best first (0 = empty)
    got = cascade.retrieve(request, k1=100)                   # top-K1 video ids and scores
    cascade.stage_scores(request, items)                      # every stage on given candidates

(or `from lcron.serving.export import load_exported` where lcron is installed).

A request batch is a dict of integer arrays (numpy or torch), B requests:
  context   [B, 3]       request weekday (ISO, 1-7), hour + 1 (1-24), minute + 1 (1-60), local time (UTC+{tz})
  user      [B, 5]       user_id, device_id, age, gender, province        (raw id + 1)
  seq       [B, 50, 5]   last 50 effective views, left-padded (valid steps last):
                         video_id, author_id, category_level_two, category_level_one, upload_type (raw id + 1)
  seq_mask  [B, 50]      1 for a real view, 0 for padding
  items     [B, N, 8]    (stage_scores only) video_id, author_id, category_level_two, category_level_one,
                         upload_type (raw id + 1), upload weekday, hour + 1, minute + 1
Every id is raw id + 1 so 0 means padding; ids must be below the table sizes listed in
cascade.json ("inputs"); an unknown id should be mapped to 0.

Files: cascade.json (setting, quotas, input spec, the size and sha256 of every file; the
loader checks them, and refuses a .pt2 holding anything but tensors and aten operators,
before it loads anything), user_tower.pt2 and item_tower.pt2
(retrieval towers, torch.export), stage-*.pt2 (later stages, torch.export), corpus.faiss
(inner-product index over the item vectors; row i = item i), item_ids.npy (video ids of
the rows), item_features.npy ([I, 8] features of the rows), loader.py.
"""


def is_export(folder: Path) -> bool:
    """Whether ``folder`` is an lcron export: its cascade.json (a regular file, not a link) is a
    JSON object whose ``format`` is the export format (any version)."""
    meta_path = folder / loader.META_FILE
    try:
        if folder.is_symlink() or not folder.is_dir() or meta_path.is_symlink() or not meta_path.is_file() \
                or meta_path.stat().st_size > loader.MAX_META_BYTES:
            return False
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(meta, dict) and meta.get("format") == loader.FORMAT


def _check_output(out: Path, overwrite: bool) -> None:
    """Refuse an ``out`` that holds something: an earlier export is replaced only with
    ``overwrite``; anything else (a file, a link, a folder that is not an lcron export) is
    never deleted, with or without ``overwrite``."""
    if not (out.exists() or out.is_symlink()):
        return
    if out.is_dir() and not out.is_symlink() and not any(out.iterdir()):
        return
    if is_export(out):
        if not overwrite:
            raise OutputExistsError(f"{out} exists and is not empty (an earlier lcron export); choose another --out "
                                    f"or pass --overwrite to replace it")
        return
    what = "a symbolic link" if out.is_symlink() else "a folder" if out.is_dir() else "a file"
    raise OutputExistsError(f"{out} exists and is not an lcron export ({what} without a {loader.META_FILE} of format "
                            f"{loader.FORMAT!r}); it will not be deleted, not even with --overwrite; choose "
                            f"another --out")


def export_cascade(run_dir: "str | Path", out: "str | Path", **kwargs: Any) -> Path:
    """Export a trained cascade (see :func:`_export_cascade`) holding the lock of ``out``. The
    folder is built under a staging name and renamed into place, so it is complete or absent."""
    from lcron import outputs

    with outputs.output_lock(out, outputs.current_command(f"lcron export --model {run_dir} --out {out}")):
        return _export_cascade(run_dir, out, **kwargs)


def _export_cascade(run_dir: "str | Path", out: "str | Path", *, seed: int | None = None, index: str = "flat",
                   index_options: "Mapping[str, Any] | None" = None, shards: "str | Path | None" = None,
                   overwrite: bool = False) -> Path:
    """Export seed ``seed`` (default: the first completed) of a training run into ``out``.

    The corpus is the item table of ``shards`` (default: the run's shard set);
    ``index`` is flat (exact), ivf or hnsw (``index_options``: see IndexOptions).
    Returns the folder. An existing non-empty ``out`` is refused unless it is an earlier lcron
    export and ``overwrite`` is given; a folder that is not an lcron export is never deleted.
    """
    from lcron.run_folder import FinishedRun, load_cascade
    from lcron.serving.index import IndexOptions, build_corpus, check_kind, retrieval_tower, stage_modules, to_cpu

    run_dir, out = Path(run_dir), Path(out)
    check_kind(index)
    opts = IndexOptions.from_mapping(index_options)
    _check_output(out, overwrite)
    run = FinishedRun.open(run_dir)
    seed_dir = run.seed_dirs[0] if seed is None else run.seed_dir(seed)
    model_path = seed_dir / "model.pt"
    cascade, payload = load_cascade(model_path, "cpu", compile=False)
    cfg = payload["config"]
    setting = run.setting
    shard_set = run.shards(shards)
    video_ids, features = shard_set.item_table()
    tower = retrieval_tower(cascade, setting)
    corpus = build_corpus(tower, video_ids, features, index, opts, device="cpu")
    inputs = _input_spec(cfg["embedding_sizes"])
    programs = export_programs(stage_modules(cascade, setting), inputs)

    import faiss

    stage_files = [f"stage-{s}-{name}.pt2" for s, name in enumerate(setting.stage_names) if s > 0]
    meta = {
        "format": loader.FORMAT,
        "format_version": loader.FORMAT_VERSION,
        "setting": setting.to_dict(),
        "stage_names": list(setting.stage_names),
        "stage_models": list(setting.stage_models),
        "quotas": list(setting.quotas),
        "gt_size": setting.gt_size,
        "embedding_sizes": dict(cfg["embedding_sizes"]),
        "dim": int(cfg["train"]["dim"]),
        "vector_dim": int(corpus.vectors.shape[1]),
        "inputs": inputs,
        "corpus_size": corpus.size,
        "index": corpus.describe(),
        "files": {"user_tower": "user_tower.pt2", "item_tower": "item_tower.pt2", "stages": stage_files,
                  "index": "corpus.faiss", "item_ids": "item_ids.npy", "item_features": "item_features.npy",
                  "loader": "loader.py"},
        "source": {"run_dir": str(run_dir), "seed": int(payload.get("seed", seed_dir.name.split("-", 1)[1])),
                   "model_file": str(model_path), "method": cfg.get("method"), "config_hash": cfg.get("config_hash"),
                   "data_fingerprint": cfg.get("data_fingerprint"), "shards": str(shard_set.root),
                   "day": payload.get("day")},
        "versions": {"torch": torch.__version__, "faiss": getattr(faiss, "__version__", "?"),
                     "numpy": np.__version__},
    }
    staging = out.parent / f".{out.name}.staging-{uuid.uuid4().hex[:8]}"
    try:
        staging.mkdir(parents=True)
        for key, prog in (("user_tower", programs["user_tower"]), ("item_tower", programs["item_tower"])):
            with atomic.atomic_open(staging / meta["files"][key], "wb") as fh:
                torch.export.save(prog, fh)
        for fname, prog in zip(stage_files, programs["stages"]):
            with atomic.atomic_open(staging / fname, "wb") as fh:
                torch.export.save(prog, fh)
        atomic.write_bytes(staging / "corpus.faiss", faiss.serialize_index(to_cpu(corpus.index)).tobytes())
        atomic.save_npy(staging / "item_ids.npy", corpus.video_ids)
        atomic.save_npy(staging / "item_features.npy", corpus.features)
        atomic.write_text(staging / "loader.py", Path(loader.__file__).read_text())
        atomic.write_text(staging / "README.txt", README.format(
            setting=setting.name, stages=" -> ".join(f"{n} ({m})" for n, m in zip(setting.stage_names,
                                                                                 setting.stage_models)),
            run_dir=run_dir, seed=meta["source"]["seed"], method=cfg.get("method"),
            funnel=f"retrieve K1 -> " + " -> ".join(f"{n} keeps {q}" for n, q in
                                                   zip(setting.stage_names[1:], setting.quotas[1:])),
            items=corpus.size, index=index, torch_version=torch.__version__.split("+")[0],
            last=setting.quotas[-1], tz=shard_set.tz_offset_hours))
        # cascade.json is written last and lists every file with its size and sha256: the loader
        # checks them before it opens any file, so a folder copied in part, damaged or changed
        # since is refused by file name, not by a torch error.
        written = [p for p in sorted(staging.iterdir()) if p.is_file()]
        meta["file_bytes"] = {p.name: p.stat().st_size for p in written}
        meta["file_sha256"] = {p.name: loader.file_sha256(p) for p in written}
        atomic.write_json(staging / loader.META_FILE, meta)
        if out.exists() or out.is_symlink():
            _check_output(out, overwrite)  # again: only an earlier export is ever deleted
            if out.is_dir() and any(out.iterdir()):
                shutil.rmtree(out)
        os.replace(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return out


# ---------------------------------------------------------------------------- CLI
def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    """``lcron export --model RUN_DIR --out DIR [--seed N] [--index flat|ivf|hnsw]``."""
    parser.add_argument("--model", required=True, metavar="RUN_DIR", help="training run folder (holds run.json)")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder to write the exported cascade to")
    parser.add_argument("--seed", type=int, default=None, help="which seed's model (default: the first completed)")
    parser.add_argument("--index", choices=("flat", "ivf", "hnsw"), default="flat",
                        help="faiss index over the corpus (default flat = exact)")
    parser.add_argument("--shards", default=None, metavar="DIR",
                        help="shard set whose item table is the corpus (default: the run's)")
    add_index_option_arguments(parser)
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier lcron export in --out (any other non-empty folder is refused)")


def add_index_option_arguments(parser: argparse.ArgumentParser) -> None:
    """The approximate-index knobs shared by ``export`` and ``serve-eval``."""
    from lcron.serving.index import DEFAULT_NPROBE

    parser.add_argument("--nlist", type=int, default=None, help="IVF cells (default 4 sqrt(corpus))")
    parser.add_argument("--nprobe", type=int, default=DEFAULT_NPROBE,
                        help=f"IVF cells searched per query (default {DEFAULT_NPROBE})")
    parser.add_argument("--hnsw-m", type=int, default=32, help="HNSW links per node (default 32)")
    parser.add_argument("--ef-search", type=int, default=128, help="HNSW search beam (default 128)")


def index_options_from_args(args: argparse.Namespace) -> dict[str, Any]:
    return {"nlist": args.nlist, "nprobe": args.nprobe, "hnsw_m": args.hnsw_m, "ef_search": args.ef_search}


def run_export(args: argparse.Namespace) -> int:
    folder = export_cascade(args.model, args.out, seed=args.seed, index=args.index,
                            index_options=index_options_from_args(args), shards=args.shards,
                            overwrite=args.overwrite)
    meta = json.loads((folder / loader.META_FILE).read_text())
    print(f"exported {meta['setting']['name']} cascade (seed {meta['source']['seed']}, "
          f"{meta['corpus_size']} items, index {meta['index']['kind']}) to {folder}", file=sys.stderr)
    return 0
