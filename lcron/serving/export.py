"""Export a trained cascade into one folder that serves without the training code.

Folder layout (all files written atomically, the folder itself renamed into place)::

    cascade.json              format, setting, quotas, input spec, file names, sizes and sha256s, provenance
    embedding-<s>-<name>.npy  one per distinct embedding table: [rows, dim] float32 (raw .npy, memory-mapped)
    user_tower.pt2            torch.export program: (table, context, user, seq, seq_mask) -> [B, D]
    item_tower.pt2            torch.export program: (table, items [I, 8]) -> [I, D]
    stage-<s>-<name>.pt2      one per later stage: (table, context, user, seq, seq_mask, items [B, N, 8]) -> [B, N]
    corpus.faiss              faiss inner-product index over the item vectors (row i = item i)
    item_ids.npy              [I] shifted video ids (raw + 1) of the index rows
    item_features.npy         [I, 8] ITEM_FIELDS of the index rows
    loader.py                 a copy of lcron/serving/loader.py (torch, faiss, numpy, json only)
    README.txt                the inputs and how to load

Why torch.export: TorchScript cannot save the models (their embedding lookup is a custom
autograd function), while torch.export captures the inference graph with symbolic batch
and candidate dimensions and loads with torch alone. For the capture, each model's
embedding module is swapped for :class:`_ExportEmbedding`, an inference-only equivalent
(one ``F.embedding`` at the same row offsets) without the data-dependent id range check
that torch.export cannot trace; the loader does that check on the inputs instead
(:func:`lcron.serving.loader.check_request`). The export verifies every program against
the eager model before writing anything.

Why the embedding tables are files of their own (format version 2): a table is almost all
of a model's bytes (RecFlow vocabularies: 11.2M rows x 8 floats = 341 MiB; the rest of a
model is well under 1 MiB), and the user and item towers read the same table. Version 1
captured the table as a weight of every program, so the folder held it once per program
(three 341 MiB programs for two tables) and a loaded cascade held it once per program too.
Now each program takes its table as its first input, each distinct table is written once
as a raw ``.npy``, and the loader memory-maps it and passes the same tensor to every
program that reads it. The tables are captured with a symbolic row count, and the sample
inputs torch stores in a ``.pt2`` hold a 2-row stand-in, so a program's size does not
depend on the vocabulary.

Memory: nothing here copies a table. A program's model is a shallow clone (its own
``embedding`` slot, every other module and weight shared; :func:`_exportable`), the table
files are written straight from the weights, the later stage models are released once
their tables and programs are written, the item table is written and then read back from
its file a batch at a time while the corpus is embedded and indexed (:func:`_build_corpus`),
and the index is streamed to its file. The peak is then the larger of loading the run
(``load_cascade``: the stored state and the model, two copies of every table, for a moment)
and the corpus phase (the retrieval model's table and the index; plus all item vectors while
an IVF index trains on them), over about 0.5 GiB for the libraries and one item batch;
docs/scale.md ("Export at RecFlow vocabularies") has the measurements.

``load_exported`` is re-exported here; importing this module pulls in no training code
(lcron.models / lcron.train / lcron.losses are imported inside :func:`export_cascade`).
"""

from __future__ import annotations

import argparse
import contextlib
import contextvars
import copy
import dataclasses
import json
import os
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lcron import atomic, memtrim, outputs
from lcron.errors import ConfigError, LcronError, OutputExistsError
from lcron.serving import loader
from lcron.serving.config import ExportConfig
from lcron.serving.loader import ExportedCascade, ExportError, load_exported
from lcron.step_config import add_arguments, from_args, option_fields
from lcron.step_output import step_output

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
# The embedding table of the program being captured or verified. The wrappers below take the
# table as their first input and hand it to _ExportEmbedding through this variable, so that
# the table is a graph input (not a weight the program would store) and no module attribute
# is assigned during the capture (torch.export refuses tensor attributes set in forward).
_TABLE: contextvars.ContextVar["Tensor | None"] = contextvars.ContextVar("lcron_export_table", default=None)
_ROWS_MIN = 2  # the symbolic table row count's lower bound (0 and 1 would specialise)


@contextlib.contextmanager
def _table_input(table: Tensor) -> Iterator[None]:
    token = _TABLE.set(table)
    try:
        yield
    finally:
        _TABLE.reset(token)


class _ExportEmbedding(nn.Module):
    """Inference-only stand-in for ``lcron.models.embeddings.FeatureEmbedding``.

    Same call convention (keyword arrays in, one ``[..., F * dim]`` tensor per array out,
    in the given order) and the same rows: ``offset[kind] + id`` of the table. The table is
    not held here: it is the input the enclosing wrapper received (:data:`_TABLE`), so the
    captured program reads it from its caller and stores only the row offsets. It skips the
    id range check (done by the loader) and uses shape-generic ops only, so torch.export
    keeps the batch, candidate and table-row dimensions symbolic.
    """

    def __init__(self, embedding: nn.Module, layout: Mapping[str, tuple[str, ...]]) -> None:
        super().__init__()
        for name, kinds in layout.items():
            self.register_buffer(f"_off_{name}", torch.tensor([embedding.offsets[k] for k in kinds],
                                                              dtype=torch.int64), persistent=False)

    def forward(self, **arrays: Tensor) -> list[Tensor]:
        table = _TABLE.get()
        if table is None:
            raise LcronError("_ExportEmbedding was called outside an export wrapper (no table input)")
        return [F.embedding(ids + getattr(self, f"_off_{name}"), table).flatten(-2)
                for name, ids in arrays.items()]


def _embedding_of(model: nn.Module) -> nn.Module:
    emb = getattr(model, "embedding", None)
    if emb is None or not isinstance(getattr(emb, "weight", None), Tensor) or not hasattr(emb, "offsets"):
        raise ConfigError(f"{type(model).__name__} has no FeatureEmbedding 'embedding' (weight, offsets); "
                          "the exporter cannot capture it")
    return emb


def _exportable(model: nn.Module) -> nn.Module:
    """A shallow clone of a stage model (eval mode) whose ``embedding`` is an :class:`_ExportEmbedding`.

    Why not ``copy.deepcopy``: that copies the embedding table (341 MiB per model at RecFlow
    vocabularies) only to throw the copy away. The clone gets its own submodule dict, so
    swapping its ``embedding`` leaves ``model`` as it was; every other submodule, weight and
    buffer is ``model``'s own.
    """
    from lcron.data import fields

    layout = {"context": fields.CONTEXT_KINDS, "user": fields.USER_KINDS, "seq": fields.SEQ_KINDS,
              "items": fields.ITEM_KINDS}
    emb = _embedding_of(model)
    model.eval()
    clone = copy.copy(model)
    clone._modules = dict(model._modules)
    clone._modules["embedding"] = _ExportEmbedding(emb, layout)
    return clone


class _UserTower(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, table: Tensor, context: Tensor, user: Tensor, seq: Tensor, seq_mask: Tensor) -> Tensor:
        with _table_input(table):
            return self.model.user_vectors({"context": context, "user": user, "seq": seq, "seq_mask": seq_mask})


class _ItemTower(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, table: Tensor, items: Tensor) -> Tensor:
        with _table_input(table):
            return self.model.item_vectors(items)


class _Stage(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, table: Tensor, context: Tensor, user: Tensor, seq: Tensor, seq_mask: Tensor,
                items: Tensor) -> Tensor:
        with _table_input(table):
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
    """torch.export of ``wrapper`` with the given symbolic dimensions (non-strict tracing).

    ``args[0]`` is the embedding table: torch.export traces it as a fake tensor (no copy),
    and the sample inputs the program keeps for ``torch.export.save`` get a 2-row stand-in
    instead of it, so the saved program does not hold the table."""
    try:
        program = torch.export.export(wrapper, args, dynamic_shapes=dynamic, strict=False)
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise LcronError(f"torch.export could not capture the {what} ({type(exc).__name__}: {first})") from exc
    table = args[0]
    program.example_inputs = ((torch.zeros((_ROWS_MIN, table.shape[1]), dtype=table.dtype), *args[1:]), {})
    return program


def _verify(program, reference: Callable[..., Tensor], table: Tensor, args: tuple[Tensor, ...], what: str) -> None:
    """``program`` (given ``table``) against the eager ``reference`` (the model, which reads
    its own weight) on ``args``: equal to :data:`_TOLERANCE`, relative to the largest score."""
    with torch.inference_mode():
        got = program.module()(table, *args)
        want = reference(*args)
    err = float((got - want).abs().max()) if got.numel() else 0.0
    if got.shape != want.shape or not err <= _TOLERANCE * max(1.0, float(want.abs().max()) if want.numel() else 1.0):
        raise LcronError(f"export check failed for {what}: the exported program differs from the model by {err:g}")


def export_programs(cascade_models: list[nn.Module], inputs: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """torch.export programs of the user tower, the item tower and each later stage, each
    verified against the eager model on a fresh random batch of other sizes.

    Returns ``user_tower``, ``item_tower``, ``stages`` (the programs), ``tables`` (each
    distinct embedding table once: the models' own weights, detached, not copies; two models
    that share one embedding module share one entry) and ``table_of`` (the ``tables`` index
    each program reads: ``user_tower``, ``item_tower`` and a list for ``stages``). Every
    program takes its table as its first input."""
    from torch.export import Dim

    dims = _Dims(batch=Dim("batch", min=1), candidates=Dim("candidates", min=1),
                 table_rows=Dim("table_rows", min=_ROWS_MIN))
    ex = example_request(inputs, _EXAMPLE_B, _EXAMPLE_N, seed=0)
    check = example_request(inputs, _EXAMPLE_B + 4, _EXAMPLE_N + 6, seed=1)
    tables = _DistinctTables()
    first_model = cascade_models[0].cpu().eval()
    first = _exportable(first_model)
    t0 = tables.index_of(first_model)
    out: dict[str, Any] = _tower_programs(first_model, first, tables.tables[t0], dims, ex, check)
    stages, stage_tables = [], []
    for s, model in enumerate(cascade_models[1:], start=1):
        model = model.cpu().eval()
        ts = tables.index_of(model)
        stages.append(_stage_program(model, s, tables.tables[ts], dims, ex, check))
        stage_tables.append(ts)
    out["stages"] = stages
    out["tables"] = tables.tables
    out["table_of"] = {"user_tower": t0, "item_tower": t0, "stages": stage_tables}
    return out


@dataclasses.dataclass(frozen=True)
class _Dims:
    """The symbolic dimensions the programs are captured with (torch.export ``Dim``\\ s)."""

    batch: Any  # requests of a batch (items, for the item tower)
    candidates: Any  # candidates per request
    table_rows: Any  # rows of the embedding table input


class _DistinctTables:
    """The embedding tables the programs read, each distinct table once: two models that
    share one embedding module share one entry, so the table is written and loaded once."""

    def __init__(self) -> None:
        self.tables: list[Tensor] = []
        self._keys: list[tuple[int, int, tuple[int, ...], tuple[int, ...]]] = []

    def index_of(self, model: nn.Module) -> int:
        """The index in ``tables`` of ``model``'s embedding table, added if new: the weight
        itself, detached, never a copy; refused unless a float32 [rows, dim] CPU tensor."""
        weight = _embedding_of(model).weight.detach()
        if weight.device.type != "cpu" or weight.dtype != torch.float32 or weight.dim() != 2:
            raise ConfigError(f"{type(model).__name__}'s embedding table is {weight.dtype} {tuple(weight.shape)} on "
                              f"{weight.device}; the export writes float32 [rows, dim] tables from the CPU")
        key = (weight.untyped_storage().data_ptr(), weight.storage_offset(), tuple(weight.shape), weight.stride())
        if key not in self._keys:
            self._keys.append(key)
            self.tables.append(weight)
        return self._keys.index(key)


def _tower_programs(first_model: nn.Module, first: nn.Module, table: Tensor, dims: _Dims,
                    ex: Mapping[str, Tensor], check: Mapping[str, Tensor]) -> dict[str, Any]:
    """The user and item tower programs of the retrieval model ``first_model`` (``first``: its
    exportable clone), captured on ``ex`` and verified on ``check``."""
    from lcron.data import fields

    req = fields.REQUEST_INPUTS
    out: dict[str, Any] = {}
    out["user_tower"] = _capture(_UserTower(first), (table, *(ex[k] for k in req)),
                                 ({0: dims.table_rows},) + tuple({0: dims.batch} for _ in req), "user tower")
    _verify(out["user_tower"], lambda *a: first_model.user_vectors(dict(zip(req, a))), table,
            tuple(check[k] for k in req), "user tower")

    items_flat = ex["items"].reshape(-1, ex["items"].shape[-1])
    out["item_tower"] = _capture(_ItemTower(first), (table, items_flat), ({0: dims.table_rows}, {0: dims.batch}),
                                 "item tower")
    _verify(out["item_tower"], first_model.item_vectors, table,
            (check["items"].reshape(-1, check["items"].shape[-1]),), "item tower")
    return out


def _stage_program(model: nn.Module, s: int, table: Tensor, dims: _Dims, ex: Mapping[str, Tensor],
                   check: Mapping[str, Tensor]) -> Any:
    """The program of later stage ``s`` (``model``), captured on ``ex`` and verified on ``check``."""
    from lcron.data import fields

    names = fields.REQUEST_INPUTS + ("items",)
    wrapper = _Stage(_exportable(model))
    dyn = ({0: dims.table_rows},) + tuple({0: dims.batch} for _ in fields.REQUEST_INPUTS) \
        + ({0: dims.batch, 1: dims.candidates},)
    prog = _capture(wrapper, (table, *(ex[k] for k in names)), dyn, f"stage {s} model")
    _verify(prog, lambda *a: model(dict(zip(names, a))), table, tuple(check[k] for k in names), f"stage {s}")
    return prog


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
before it loads anything), embedding-*.npy (each model's embedding table, written once:
float32 [rows, dim], memory-mapped by the loader and passed to every program that reads
it), user_tower.pt2 and item_tower.pt2 (retrieval towers, torch.export; both read the
first table), stage-*.pt2 (later stages, torch.export), corpus.faiss (inner-product index
over the item vectors; row i = item i), item_ids.npy (video ids of the rows),
item_features.npy ([I, 8] features of the rows), loader.py.
Each program takes its embedding table as its first input (cascade.json "program_tables"
says which); the loader passes it, so its programs are called with the request arrays only.
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


def export_cascade(run_dir: "str | Path", out: "str | Path", *, seed: int | None = ExportConfig.seed,
                   index: str = ExportConfig.index,
                   index_options: "Mapping[str, Any] | None" = ExportConfig.index_options,
                   shards: "str | Path | None" = None, overwrite: bool = False) -> Path:
    """Export seed ``seed`` (default: the first completed) of a training run into ``out``.

    The corpus is the item table of ``shards`` (default: the run's shard set);
    ``index`` is flat (exact), ivf or hnsw (``index_options``: see IndexOptions).
    Returns the folder. An existing non-empty ``out`` is refused unless it is an earlier lcron
    export and ``overwrite`` is given; a folder that is not an lcron export is never deleted.
    The step holds the lock of ``out`` (lcron.step_output); the folder is built under a
    staging name and renamed into place, so it is complete or absent (``cascade.json``, which
    lists every file, is its completion record).

    Order, for memory (see the module docstring): every program is captured and verified,
    then the tables and programs are written and the later stage models released, then the
    corpus is embedded, indexed and written with the retrieval model alone in memory.
    ``seed``, ``index`` and ``index_options`` are :class:`ExportConfig`'s fields, checked before
    anything is written.
    """
    from lcron.run_folder import FinishedRun, load_cascade
    from lcron.serving.index import IndexOptions, retrieval_tower, stage_modules

    ExportConfig(seed=seed, index=index, index_options=index_options)
    opts = IndexOptions.from_mapping(index_options)
    with step_output(out, outputs.current_command(f"lcron export --model {run_dir} --out {out}")):
        run_dir, out = Path(run_dir), Path(out)
        _check_output(out, overwrite)
        run = FinishedRun.open(run_dir)
        seed_dir = run.seed_dirs[0] if seed is None else run.seed_dir(seed)
        model_path = seed_dir / "model.pt"
        cascade, payload = load_cascade(model_path, "cpu", compile=False)
        # The model holds the weights now; the stored state is a second copy of every table.
        payload = {k: payload[k] for k in ("config", "seed", "day") if k in payload}
        setting, shard_set = run.setting, run.shards(shards)
        # Held only by this dict: _build_staging pops and releases each model once its files are written.
        held = {"tower": retrieval_tower(cascade, setting), "models": stage_modules(cascade, setting)}
        del cascade
        meta = _export_meta(run_dir, seed_dir, payload, setting, shard_set)
        staging = out.parent / f".{out.name}.staging-{uuid.uuid4().hex[:8]}"
        try:
            _build_staging(staging, held, meta, setting, shard_set, index, opts, run_dir, payload["config"])
            if out.exists() or out.is_symlink():
                _check_output(out, overwrite)  # again: only an earlier export is ever deleted
                if out.is_dir() and any(out.iterdir()):
                    shutil.rmtree(out)
            os.replace(staging, out)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    return out


def _export_meta(run_dir: Path, seed_dir: Path, payload: Mapping[str, Any], setting: Any,
                 shard_set: Any) -> dict[str, Any]:
    """cascade.json's document as far as it is known before anything is written."""
    import faiss

    cfg = payload["config"]
    stage_files = [f"stage-{s}-{name}.pt2" for s, name in enumerate(setting.stage_names) if s > 0]
    return {
        "format": loader.FORMAT,
        "format_version": loader.FORMAT_VERSION,
        "setting": setting.to_dict(),
        "stage_names": list(setting.stage_names),
        "stage_models": list(setting.stage_models),
        "quotas": list(setting.quotas),
        "gt_size": setting.gt_size,
        "embedding_sizes": dict(cfg["embedding_sizes"]),
        "dim": int(cfg["train"]["dim"]),
        "inputs": _input_spec(cfg["embedding_sizes"]),
        "files": {"user_tower": "user_tower.pt2", "item_tower": "item_tower.pt2", "stages": stage_files,
                  "index": "corpus.faiss", "item_ids": "item_ids.npy", "item_features": "item_features.npy",
                  "loader": "loader.py"},
        "source": {"run_dir": str(run_dir), "seed": int(payload.get("seed", seed_dir.name.split("-", 1)[1])),
                   "model_file": str(seed_dir / "model.pt"), "method": cfg.get("method"),
                   "config_hash": cfg.get("config_hash"), "data_fingerprint": cfg.get("data_fingerprint"),
                   "shards": str(shard_set.root), "day": payload.get("day")},
        "versions": {"torch": torch.__version__, "faiss": getattr(faiss, "__version__", "?"),
                     "numpy": np.__version__},
    }


def _build_staging(staging: Path, held: dict[str, Any], meta: dict[str, Any], setting: Any, shard_set: Any,
                   index: str, opts: Any, run_dir: Path, cfg: Mapping[str, Any]) -> None:
    """Write every file of the export into ``staging``, cascade.json last. ``held`` holds the
    only references to the later stage models ("models") and the retrieval model ("tower"):
    each is popped and released as soon as its files are written, so the corpus is embedded
    with the retrieval model alone in memory."""
    from lcron.serving.index import index_options_used

    models = held.pop("models")
    written = _write_models(staging, models, meta["inputs"], meta["files"], list(setting.stage_names),
                            loader.table_shape(meta))
    meta["files"]["tables"] = written["tables"]
    meta["program_tables"] = written["program_tables"]
    del models, written  # the later stage models and their tables go; the retrieval model stays
    tower = held.pop("tower")
    corpus_size, corpus_index = _build_corpus(tower, shard_set, index, opts, staging, meta["files"])
    del tower
    meta["vector_dim"] = int(corpus_index.d)
    meta["corpus_size"] = corpus_size
    meta["index"] = {**index_options_used(corpus_index, index), "options": dataclasses.asdict(opts)}
    _write_index(staging / meta["files"]["index"], corpus_index)
    del corpus_index
    atomic.write_text(staging / "loader.py", Path(loader.__file__).read_text())
    atomic.write_text(staging / "README.txt", README.format(
        setting=setting.name, stages=" -> ".join(f"{n} ({m})" for n, m in zip(setting.stage_names,
                                                                             setting.stage_models)),
        run_dir=run_dir, seed=meta["source"]["seed"], method=cfg.get("method"),
        funnel="retrieve K1 -> " + " -> ".join(f"{n} keeps {q}" for n, q in
                                               zip(setting.stage_names[1:], setting.quotas[1:])),
        items=meta["corpus_size"], index=index, torch_version=torch.__version__.split("+")[0],
        last=setting.quotas[-1], tz=shard_set.tz_offset_hours))
    # cascade.json is written last and lists every file with its size and sha256: the loader
    # checks them before it opens any file, so a folder copied in part, damaged or changed
    # since is refused by file name, not by a torch error.
    files = [p for p in sorted(staging.iterdir()) if p.is_file()]
    meta["file_bytes"] = {p.name: p.stat().st_size for p in files}
    meta["file_sha256"] = {p.name: loader.file_sha256(p) for p in files}
    atomic.write_json(staging / loader.META_FILE, meta)


def _write_models(staging: Path, models: list[nn.Module], inputs: Mapping[str, Mapping[str, Any]],
                  files: Mapping[str, Any], stage_names: list[str], table_shape: tuple[int, int]) -> dict[str, Any]:
    """Capture and verify every program (:func:`export_programs`), then create ``staging``
    and write each distinct embedding table once and every program into it.

    A table file is named after the first stage whose model owns it
    (``embedding-<s>-<name>.npy``) and written straight from the weight (``np.save`` of the
    weight's own memory). Returns the table file names and which table each program reads
    (cascade.json's ``files.tables`` and ``program_tables``). Nothing is written unless every
    program passed its check; the programs and the references to the tables die on return."""
    programs = export_programs(models, inputs)
    tables, table_of = programs["tables"], programs["table_of"]
    owner: dict[int, int] = {}  # table index -> first stage whose model reads it
    for s, t in enumerate([table_of["user_tower"], *table_of["stages"]]):
        owner.setdefault(t, s)
    names = [f"embedding-{owner[t]}-{stage_names[owner[t]]}.npy" for t in range(len(tables))]
    for name, table in zip(names, tables):
        if tuple(table.shape) != tuple(table_shape):
            raise LcronError(f"the embedding table of {name} is {tuple(table.shape)}, not the {tuple(table_shape)} "
                             f"that the run's embedding sizes and dim give")
    staging.mkdir(parents=True)
    for name, table in zip(names, tables):
        atomic.save_npy(staging / name, table.numpy())
    for fname, prog in [(files["user_tower"], programs["user_tower"]), (files["item_tower"], programs["item_tower"]),
                        *zip(files["stages"], programs["stages"])]:
        with atomic.atomic_open(staging / fname, "wb") as fh:
            torch.export.save(prog, fh)
    return {"tables": names, "program_tables": table_of}


def _build_corpus(tower: nn.Module, shard_set: Any, kind: str, opts: Any, staging: Path,
                  files: Mapping[str, Any]) -> tuple[int, Any]:
    """Write the shard set's item table into ``staging`` (item_ids.npy, item_features.npy),
    then embed and index it holding about one index's worth of item vectors and no item
    table: returns (corpus size, faiss index).

    ``build_corpus`` holds the item table and, at its peak, the item vectors three times
    over (the embedded batches, their concatenation, the index's copy). Here the item table
    is written first and released, and the features are read back from the written file
    one item batch (``ITEM_BATCH``) at a time. A flat or HNSW index is built on the first
    half of the items (embedded into one array, which goes once the index has copied it) and
    the rest is added a batch at a time. Why half first: faiss keeps the vectors in a
    ``std::vector`` that doubles its capacity when an add overflows it, and a doubling
    briefly holds the old and the new buffer; adding batch by batch from empty doubles at
    up to the whole index size (measured: +200 MiB above the final 830 MiB for 6.8M 32-float
    vectors), while after a half-size start the one doubling copies half an index into a
    buffer that then takes the rest. IVF trains on all the vectors, so they are embedded into
    one array, indexed and released. Batches start at multiples of ``ITEM_BATCH`` like
    ``embed_items``'s, so the vectors are ``build_corpus``'s, bit for bit (a flat index of
    6.8M items came out byte-identical to the one the previous export wrote)."""
    from lcron.serving.index import ITEM_BATCH, build_index, check_item_table

    ids, feats = check_item_table(*shard_set.item_table())  # int64 copies; the stored int32 arrays go
    atomic.save_npy(staging / files["item_ids"], ids)
    atomic.save_npy(staging / files["item_features"], feats)
    n = len(ids)
    del ids, feats
    # check_item_table's np.unique leaves freed heap pages resident (measured: 400 - 600 MiB
    # on 6.8M items); give them back before the index grows on top of them.
    memtrim.trim()
    with contextlib.closing(_row_batches(staging / files["item_features"], ITEM_BATCH)) as batches:
        if kind == "ivf":
            return n, build_index(_stacked_vectors(tower, batches, n), kind, opts)
        head = min(n, -(-((n + 1) // 2) // ITEM_BATCH) * ITEM_BATCH)  # half the items, up to a whole batch
        index = build_index(_stacked_vectors(tower, batches, head), kind, opts)
        for part in batches:
            index.add(_item_vectors(tower, part))
    return n, index


def _item_vectors(tower: nn.Module, features: np.ndarray) -> np.ndarray:
    from lcron.serving.index import embed_items

    return embed_items(tower, features)


def _stacked_vectors(tower: nn.Module, batches: Iterator[np.ndarray], count: int) -> np.ndarray:
    """The item vectors [count, D] of the next ``count`` items of ``batches``, in one array."""
    out: np.ndarray | None = None
    filled = 0
    while filled < count:
        part = _item_vectors(tower, next(batches))
        if out is None:
            out = np.empty((count, part.shape[1]), dtype=np.float32)
        out[filled:filled + len(part)] = part
        filled += len(part)
    assert out is not None and filled == count
    return out


def _row_batches(path: Path, batch: int) -> Iterator[np.ndarray]:
    """The rows of a 2-D C-order ``.npy`` this export wrote, ``batch`` rows at a time, read
    from the file: not memory-mapped, because mapped pages that have been read count as the
    process's resident memory until the mapping goes."""
    fmt = np.lib.format
    with open(path, "rb") as fh:
        version = fmt.read_magic(fh)
        read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, fortran, dtype = read_header(fh)
        if fortran or len(shape) != 2 or dtype.hasobject:
            raise LcronError(f"{path}: expected a 2-D C-order array of numbers, got {dtype} {shape}")
        rows, width = shape
        for start in range(0, rows, batch):
            count = min(batch, rows - start)
            part = np.fromfile(fh, dtype=dtype, count=count * width)
            if part.size != count * width:
                raise LcronError(f"{path}: ends after {start} of its {rows} rows")
            yield part.reshape(count, width)


def _write_index(path: Path, index: Any) -> None:
    """Write a faiss index to ``path`` (atomically) in 1 MiB blocks, never as one byte string
    (``serialize_index`` plus ``tobytes`` held two extra copies of an index, 1.6 GiB for a
    6.8M-item flat index)."""
    import faiss

    with atomic.atomic_open(path, "wb") as fh:
        faiss.write_index(index, faiss.PyCallbackIOWriter(fh.write))


# ---------------------------------------------------------------------------- CLI
def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    """``lcron export --model RUN_DIR --out DIR [--seed N] [--index flat|ivf|hnsw]``: the inputs, one
    option per :class:`ExportConfig` field and the index options."""
    parser.add_argument("--model", required=True, metavar="RUN_DIR", help="training run folder (holds run.json)")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder to write the exported cascade to")
    add_arguments(parser, ExportConfig)
    parser.add_argument("--shards", default=None, metavar="DIR",
                        help="shard set whose item table is the corpus (default: the run's)")
    add_index_option_arguments(parser)
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier lcron export in --out (any other non-empty folder is refused)")


def add_index_option_arguments(parser: argparse.ArgumentParser) -> None:
    """The approximate-index knobs shared by ``export`` and ``serve-eval``: one option per
    command-line field of :class:`lcron.serving.index.IndexOptions`."""
    from lcron.serving.index import IndexOptions

    add_arguments(parser, IndexOptions)


def index_options_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The index options given on the command line (every command-line field of IndexOptions)."""
    from lcron.serving.index import IndexOptions

    return {f.name: getattr(args, f.name) for f, opt in option_fields(IndexOptions) if opt.cli}


def run_export(args: argparse.Namespace) -> int:
    config = from_args(ExportConfig, args, index_options=index_options_from_args(args))
    folder = export_cascade(args.model, args.out, **config.as_kwargs(), shards=args.shards, overwrite=args.overwrite)
    meta = json.loads((folder / loader.META_FILE).read_text())
    print(f"exported {meta['setting']['name']} cascade (seed {meta['source']['seed']}, "
          f"{meta['corpus_size']} items, index {meta['index']['kind']}) to {folder}", file=sys.stderr)
    return 0
