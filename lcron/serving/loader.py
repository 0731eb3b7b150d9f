"""Serve an exported cascade with torch, faiss, numpy and json only.

This module is the stand-alone half of :mod:`lcron.serving.export`: it is copied into
every exported folder as ``loader.py`` and must keep working there without the lcron
package, so it imports nothing from lcron (except, when lcron happens to be installed,
its error base class). The serving evaluation uses the same cascade code
(:func:`run_cascade`), so the evaluation measures what the exported folder serves.

Serving one request batch (:meth:`ExportedCascade.score`):

1. user vector u = user tower(context, user, seq, seq_mask)                [B, D]
2. top-K1 corpus items by <u, v_i> from the faiss index                    [B, K1]
3. each later stage s scores the survivors of the previous stage and keeps its quota
   q_s (two-stage: 20 of K1; three-stage: 30 of K1, then 20 of those 30). Ties at a
   cut-off go to a seeded random priority, never to the retrieval order.

Loading a folder runs nothing from it (:func:`check_files`, :func:`check_program_archive`):
every file listed in cascade.json is checked for its size and sha256 before any file is
opened, and every ``.pt2`` archive is checked against an allowlist of what
``torch.export.save`` writes for these models (raw tensors only, no pickles, aten/prims
operators only, plain shape expressions and guards) before ``torch.export.load`` sees it.

The embedding tables (format version 2): each distinct table is one ``embedding-*.npy`` of
the folder, float32 [rows, dim], and each program takes its table as its first input
(cascade.json ``program_tables``). The loader memory-maps every table read-only
(:func:`load_table`: ``np.load`` with ``allow_pickle=False``, dtype and shape checked) and
binds it to the programs that read it (:class:`TableBound`), so a served cascade holds each
table once - as file pages the system can share and drop, not as a copy per program - and
the programs are called with the request arrays alone. Version 1 folders, whose programs
each held their own copy of the table, are refused with a request to export again.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import numpy as np
import torch
from torch import Tensor

try:  # the project's error hierarchy when lcron is importable; a plain ValueError otherwise
    from lcron.errors import DataError as _ErrorBase
except ImportError:  # pragma: no cover - exercised by the stand-alone copy
    _ErrorBase = ValueError  # type: ignore[assignment,misc]

FORMAT = "lcron-exported-cascade"
FORMAT_VERSION = 2
# Version 1 (until issue 35): every .pt2 held its model's embedding table as a weight.
_OLD_VERSIONS = {1: "each program held its own copy of its embedding table"}
META_FILE = "cascade.json"
# lcron.data.fields.REQUEST_INPUTS, written out: this file also runs on its own inside an
# exported folder (a test holds the two equal).
REQUEST_INPUTS = ("context", "user", "seq", "seq_mask")
# Candidate slots (requests x items) per forward pass of a later stage: bounds the DIN's
# [slots, L, 80] attention intermediate (8192 slots x 50 x 80 floats = 131 MB on CPU).
DEFAULT_MAX_SLOTS = {"cpu": 8192, "cuda": 262144}

StageFn = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], Tensor]


class ExportError(_ErrorBase):
    """An exported cascade folder, or a request batch given to it, is not valid."""


# ------------------------------------------------------------------ the cascade core
def keep_top(scores: Tensor, alive: Tensor, quota: int, priority: Tensor) -> Tensor:
    """bool [B, K]: per row, the ``quota`` alive entries with the largest score.

    Rows with at most ``quota`` alive entries keep all of them. Equal scores at the
    cut-off are resolved by ``priority`` [B, K] (lower wins), not by position. One
    composite order via three stable sorts: priority ascending, then score descending,
    then alive first.
    """
    if scores.shape != alive.shape or scores.shape != priority.shape or scores.dim() != 2:
        raise ExportError(f"keep_top: scores {tuple(scores.shape)}, alive {tuple(alive.shape)} and priority "
                          f"{tuple(priority.shape)} must be one [B, K] shape")
    if quota >= scores.shape[1]:
        return alive.clone()
    if bool(torch.isnan(scores[alive]).any()):
        raise ExportError("a stage model produced NaN scores for live candidates")
    key = torch.where(alive, scores, torch.full_like(scores, -math.inf))
    order = torch.argsort(priority, dim=1, stable=True)
    order = torch.gather(order, 1, torch.argsort(torch.gather(key, 1, order), dim=1, descending=True, stable=True))
    dead_first_last = (~torch.gather(alive, 1, order)).to(torch.int8)
    order = torch.gather(order, 1, torch.argsort(dead_first_last, dim=1, stable=True))
    chosen = torch.zeros_like(alive)
    chosen.scatter_(1, order[:, :quota], True)
    return chosen & alive


def compact(alive: Tensor) -> tuple[Tensor, Tensor]:
    """Positions [B, M] of each row's alive entries (in position order, M = most alive in a
    row) and their validity [B, M]; short rows are padded with positions of dead entries."""
    counts = alive.sum(dim=1)
    m = int(counts.max()) if alive.numel() else 0
    pos = torch.argsort((~alive).to(torch.int8), dim=1, stable=True)[:, :m]
    valid = torch.arange(m, device=alive.device).unsqueeze(0) < counts.unsqueeze(1)
    return pos, valid


def score_items(fn: StageFn, request: Mapping[str, Tensor], items: Tensor, max_slots: int) -> Tensor:
    """``fn`` over [B, M, 8] candidates, in chunks of about ``max_slots`` candidate slots."""
    b, m = items.shape[0], items.shape[1]
    if b == 0 or m == 0:
        return torch.zeros((b, m), dtype=torch.float32, device=items.device)
    step = max(1, int(max_slots) // m)
    parts = []
    for start in range(0, b, step):
        sl = slice(start, start + step)
        parts.append(fn(request["context"][sl], request["user"][sl], request["seq"][sl],
                        request["seq_mask"][sl], items[sl]).float())
    return torch.cat(parts, 0)


def run_cascade(stage_fns: Sequence[StageFn], quotas: Sequence[int], request: Mapping[str, Tensor],
                items: Tensor, alive: Tensor, priority: Tensor, *, first_scores: Tensor | None = None,
                max_slots: int = DEFAULT_MAX_SLOTS["cpu"]) -> tuple[list[Tensor], list[Tensor]]:
    """The later stages of the cascade over retrieved candidates.

    ``items`` [B, K, 8] the retrieved candidates, ``alive`` [B, K] which of them take part.
    Stage s scores only the survivors of stage s - 1 (gathered compactly), then keeps
    ``quotas[s]`` of them (:func:`keep_top`). ``first_scores`` [B, K]: the first later
    stage's scores when already computed (stage models score each candidate
    independently, so a score of a longer list is valid for any of its prefixes).
    Returns (survivors after each stage, bool [B, K]; scores of each stage, float [B, K],
    NaN where the stage did not score the candidate).
    """
    if len(stage_fns) != len(quotas):
        raise ExportError(f"{len(stage_fns)} later stages but {len(quotas)} quotas")
    survivors, stage_scores = [], []
    nan = torch.tensor(float("nan"), device=items.device)
    for s, (fn, quota) in enumerate(zip(stage_fns, quotas)):
        if s == 0 and first_scores is not None:
            z = torch.where(alive, first_scores.float(), nan)
        else:
            pos, valid = compact(alive)
            sub = torch.gather(items, 1, pos.unsqueeze(-1).expand(-1, -1, items.shape[-1]))
            zc = score_items(fn, request, sub, max_slots)
            z = torch.full(alive.shape, float("nan"), device=items.device)
            z.scatter_(1, pos, torch.where(valid, zc, nan))
        alive = keep_top(z, alive, int(quota), priority)
        survivors.append(alive)
        stage_scores.append(z)
    return survivors, stage_scores


def tie_priority(shape: tuple[int, int], tie_seed: int, device: "str | torch.device" = "cpu") -> Tensor:
    """Seeded uniform priorities [B, K] for ties at a cut-off (lower wins).

    The same draw as the evaluation's score tie-break (``lcron.metrics.tie_priority``,
    ``np.random.default_rng(tie_seed)``), so serving and evaluation break a tie among the same
    candidates the same way for the same tie seed (a test holds the two together). Written out
    rather than imported: this file also runs on its own inside an exported folder."""
    return torch.from_numpy(np.random.default_rng(int(tie_seed)).random(shape)).to(device)


# ---------------------------------------------------------------- request checking
def check_request(batch: Mapping[str, Any], inputs: Mapping[str, Mapping[str, Any]],
                  names: Sequence[str], device: "str | torch.device") -> dict[str, Tensor]:
    """The named arrays of ``batch`` as tensors on ``device``, after checking shapes and id
    ranges against the exported input spec (one vectorised min/max per array)."""
    out: dict[str, Tensor] = {}
    batch_size = None
    for name in names:
        if name not in batch:
            raise ExportError(f"request batch lacks {name!r}; an exported cascade reads {list(names)}")
        spec = inputs[name]
        t = batch[name]
        if not isinstance(t, Tensor):
            a = np.ascontiguousarray(np.asarray(t))
            t = torch.from_numpy(a if a.flags.writeable else a.copy())
        t = t.detach()
        trailing = [int(s) for s in spec["trailing"]]
        ndim = spec.get("ndim")
        lead = t.dim() - len(trailing)
        if lead < 1 or list(t.shape[lead:]) != trailing or (ndim is not None and t.dim() != int(ndim)):
            raise ExportError(f"request field {name!r} must have shape {spec['shape_text']}, got {tuple(t.shape)}")
        if batch_size is None:
            batch_size = t.shape[0]
        elif t.shape[0] != batch_size:
            raise ExportError(f"request field {name!r} has {t.shape[0]} rows, expected {batch_size} like the others")
        if name == "seq_mask":
            out[name] = t.to(device=device, dtype=torch.float32)
            continue
        if t.is_floating_point() or t.dtype == torch.bool:
            raise ExportError(f"request field {name!r} must hold integer ids, got dtype {t.dtype}")
        t = t.to(torch.int64)
        sizes = torch.tensor(spec["sizes"], dtype=torch.int64, device=t.device)
        if t.numel():
            flat = t.reshape(-1, t.shape[-1])
            lo, hi = flat.min(0).values, flat.max(0).values
            bad = (lo < 0) | (hi >= sizes)
            if bool(bad.any()):
                c = int(bad.nonzero()[0, 0])
                raise ExportError(f"request field {name!r} column {c} ({spec['kinds'][c]}): ids must lie in "
                                  f"[0, {int(sizes[c]) - 1}], got min {int(lo[c])} max {int(hi[c])}")
        out[name] = t.to(device)
    return out


# -------------------------------------------------------------------- the folder
class Retrieved(NamedTuple):
    video_ids: np.ndarray  # [B, K1] shifted video ids, best first (0 where the index had no result)
    scores: np.ndarray     # [B, K1] retrieval scores <u, v> (-inf where no result)
    rows: np.ndarray       # [B, K1] rows of the item table (-1 where no result)


class Scored(NamedTuple):
    video_ids: np.ndarray          # [B, q_last] final survivors, best first by the last stage (0 = empty slot)
    stage_scores: list[np.ndarray]  # per stage, [B, K1] aligned with `retrieved` (NaN = not scored)
    retrieved: np.ndarray          # [B, K1] the retrieved video ids the stage scores refer to


# ------------------------------------------------------- integrity and the pre-load check
HASH_BLOCK_BYTES = 1 << 20  # sha256 is computed over 1 MiB blocks (constant memory)
MAX_META_BYTES = 16 << 20  # cascade.json
# A .pt2 holds one model's graph and its small dense layers (well under 1 MiB for these
# models); its embedding table is a file of its own. The cap leaves room for much wider layers.
PROGRAM_MAX_BYTES = 64 << 20
# An embedding-*.npy is its rows x dim float32 values and a .npy header (a few hundred bytes).
NPY_HEADER_MAX_BYTES = 4096
PROGRAM_CAP_TEXT = "that a program of an exported cascade may have (its embedding table is a file of its own)"
TABLE_CAP_TEXT = f"that an embedding table of the sizes in {META_FILE} takes"
MAX_PT2_ENTRIES = 4096
NOTHING_RAN = "nothing from the file was executed"
_FILE_KEYS = ("user_tower", "item_tower", "index", "item_ids", "item_features")
_LIST_KEYS = ("stages", "tables")


def file_sha256(path: "str | Path") -> str:
    """Hex sha256 of a file, read in :data:`HASH_BLOCK_BYTES` blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(HASH_BLOCK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def _plain_file_name(name: Any) -> bool:
    """A name of a file directly inside the folder (no path, no parent, not hidden)."""
    return (isinstance(name, str) and 0 < len(name) <= 255 and not name.startswith(".")
            and "/" not in name and "\\" not in name and "\0" not in name)


def listed_files(meta: Mapping[str, Any]) -> list[str]:
    """The file names cascade.json's ``files`` names (what the loader opens)."""
    files = meta.get("files") or {}
    return [f for v in files.values() for f in (v if isinstance(v, list) else [v])]


def table_shape(meta: Mapping[str, Any]) -> tuple[int, int]:
    """(rows, dim) of every embedding table of this export: one row block per kind of id, so
    rows is the sum of cascade.json's ``embedding_sizes``, and ``dim`` floats per row."""
    try:
        rows = sum(int(v) for v in dict(meta["embedding_sizes"]).values())
        dim = int(meta["dim"])
    except (KeyError, TypeError, ValueError, AttributeError):
        raise ExportError(f"{META_FILE}: 'embedding_sizes' and 'dim' must be given as integers") from None
    if rows < 1 or dim < 1:
        raise ExportError(f"{META_FILE}: 'embedding_sizes' and 'dim' must be positive, got {rows} rows, dim {dim}")
    return rows, dim


def table_byte_cap(meta: Mapping[str, Any]) -> int:
    """The most bytes one ``embedding-*.npy`` of this export may have: its float32 values
    (:func:`table_shape`) and a .npy header."""
    rows, dim = table_shape(meta)
    return 4 * rows * dim + NPY_HEADER_MAX_BYTES


def check_files(folder: Path, meta: Mapping[str, Any],
                max_bytes: "Mapping[str, tuple[int, str]] | None" = None) -> None:
    """Refuse an export whose files are not all there as written, before any of them is opened.

    ``file_bytes`` of cascade.json (written last by the exporter) lists every file with its
    size and ``file_sha256`` with its sha256: a folder copied in part, or a file damaged or
    replaced since, fails here with the file's name rather than deep inside torch or faiss.
    Sizes (and ``max_bytes`` caps: file name -> (bytes, what the cap is, for the message))
    are checked for every file first, then the hashes. Exports
    from before ``file_sha256`` existed are checked by size only, and exports from before
    ``file_bytes`` for the presence of the files they name. Every name must be a plain file
    name inside the folder, and every file the loader opens must be listed."""
    meta_path = folder / META_FILE
    named = listed_files(meta)
    listed = meta.get("file_bytes")
    hashes = meta.get("file_sha256")
    if listed is None:
        listed = {str(f): None for f in named}
    elif not isinstance(listed, dict):
        raise ExportError(f"{meta_path}: 'file_bytes' must map file names to sizes")
    for name in [*named, *listed]:
        if not _plain_file_name(name):
            raise ExportError(f"{meta_path}: {name!r} is not the name of a file in the folder; an exported "
                              f"cascade loads only files of its own folder")
    unlisted = sorted({str(f) for f in named} - set(listed))
    if unlisted:
        raise ExportError(f"{meta_path}: names {', '.join(unlisted)} among its files but lists no size for "
                          f"it in 'file_bytes'; re-run lcron export")
    if hashes is not None:
        if not isinstance(hashes, dict) or set(hashes) != set(listed) or not all(
                isinstance(h, str) and re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes.values()):
            raise ExportError(f"{meta_path}: 'file_sha256' must give a sha256 (64 hex digits) for every file "
                              f"of 'file_bytes'; re-run lcron export")
    problems = []
    for name, size in listed.items():
        path = folder / name
        try:
            actual = path.stat().st_size
        except FileNotFoundError:
            problems.append(f"{name} is missing")
            continue
        if size is not None and actual != int(size):
            problems.append(f"{name} has {actual} bytes, {int(size)} when it was exported")
    if problems:
        raise ExportError(f"{folder} is not a complete exported cascade: {'; '.join(problems)} (listed in "
                          f"{META_FILE}); copy the whole folder again or re-run lcron export")
    for name, (cap, what) in (max_bytes or {}).items():
        _refuse_if_too_big(folder / name, (folder / name).stat().st_size, cap, what)
    if hashes is None:
        return
    changed = []
    for name in listed:
        actual = file_sha256(folder / name)
        if actual != hashes[name]:
            changed.append(f"{name} has been changed since it was exported (sha256 {actual} != {hashes[name]} "
                           f"recorded in {META_FILE})")
    if changed:
        raise ExportError(f"{folder}: {'; '.join(changed)}; copy the whole folder again or re-run lcron export")


def _refuse_if_too_big(path: Path, size: int, cap: int, what: str = PROGRAM_CAP_TEXT) -> None:
    if size > cap:
        raise ExportError(f"{path}: refusing to load: {size} bytes, more than the {cap} bytes {what}, {NOTHING_RAN}")


class _Refused(Exception):
    """Internal: why a .pt2 archive is refused (turned into an ExportError naming the file)."""


# What torch.export.save writes for one of our programs, relative to the archive's folder.
_PT2_FIXED = frozenset({"archive_format", "archive_version", "byteorder", ".data/version", ".data/serialization_id",
                        "models/model.json", "data/sample_inputs/model.pt", "data/weights/model_weights_config.json",
                        "data/constants/model_constants_config.json"})
_PT2_REQUIRED = ("archive_format", "archive_version", "models/model.json", "data/sample_inputs/model.pt",
                 "data/weights/model_weights_config.json", "data/constants/model_constants_config.json")
_PT2_TENSOR_FILE = re.compile(r"data/weights/weight_[0-9]{1,6}|data/constants/tensor_[0-9]{1,6}")
_ARCHIVE_ROOT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")

# Graph node targets: aten/prims operator overloads (minus the few that touch files, the
# process or global state) and pure SymInt arithmetic of the _operator module.
_OP_TARGET = re.compile(r"torch\.ops\.(?:aten|prims)\.([A-Za-z][A-Za-z0-9_]{0,99}|_[A-Za-z0-9][A-Za-z0-9_]{0,98})"
                        r"\.[A-Za-z][A-Za-z0-9_]{0,99}")
_DENIED_OPS = frozenset({"save", "from_file", "_print", "warn", "manual_seed", "seed", "initial_seed",
                         "set_grad_enabled", "wait", "_set_item", "set_", "set_data", "record_stream"})
_OPERATOR_TARGETS = frozenset(f"_operator.{f}" for f in (
    "getitem", "add", "sub", "mul", "floordiv", "truediv", "mod", "neg", "pos", "eq", "ne", "lt", "le", "gt", "ge",
    "and_", "or_", "not_"))

# Symbolic shape expressions (sympy.sympify evaluates them as Python): the serializer's own
# sympy functions (less the power and shift ones, which can build huge integers), sympy's
# constructors seen in exports (srepr form: Mul(Integer(8), Symbol('s77', positive=True, ...))),
# symbols s0/u3/zf1/zuf2, integers, and + - * / % ( ) , < > = only.
_SYM_FUNCTIONS = frozenset({
    "FloorDiv", "ModularIndexing", "Where", "PythonMod", "Mod", "CleanDiv", "CeilToInt", "FloorToInt", "CeilDiv",
    "RShift", "FloatTrueDiv", "IntTrueDiv", "IsNonOverlappingAndDenseIndicator", "TruncToFloat", "TruncToInt",
    "RoundToInt", "RoundDecimal", "ToFloat", "Identity",
    "Symbol", "Integer", "Add", "Mul", "Max", "Min", "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "Equality", "Unequality",
    "StrictLessThan", "LessThan", "StrictGreaterThan", "GreaterThan", "And", "Or", "Not"})
_SYM_WORDS = frozenset({"positive", "negative", "nonnegative", "nonpositive", "integer", "real", "finite", "zero",
                        "nonzero", "True", "False", "true", "false"})
_SYMBOL = re.compile(r"(?:s|u|zf|zuf)[0-9]{1,9}")
_SYM_TOKEN = re.compile(r"(?P<space>[ ]+)|(?P<number>[0-9]{1,20})|(?P<word>[A-Za-z][A-Za-z0-9]{0,63})"
                        r"|(?P<quoted>'(?:s|u|zf|zuf)[0-9]{1,9}'|\"(?:s|u|zf|zuf)[0-9]{1,9}\")|(?P<op>[-+*/%(),<>=])")
MAX_EXPR_CHARS = 2048

# Guards (exec'd as Python by ExportedProgram.module()): comparisons of input sizes and integers.
_GUARD_TERM = r"(?:L\['[A-Za-z][A-Za-z0-9_]{0,63}'\]\.size\(\)\[[0-9]{1,2}\]|[0-9]{1,18})"
_GUARD_SIDE = rf"{_GUARD_TERM}(?: ?[-+*] ?{_GUARD_TERM}){{0,7}}"
_GUARD = re.compile(rf"{_GUARD_SIDE} ?(?:==|!=|<=|>=|<|>) ?{_GUARD_SIDE}")

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,199}")
_PART = r"(?:[A-Za-z_][A-Za-z0-9_]{0,199}|[0-9]{1,9})"
_FQN = re.compile(rf"(?:{_PART}(?:\.{_PART}){{0,63}})?")  # a dotted module path (or "", the root)
_PLAIN = re.compile(r"[A-Za-z0-9_.:+-]{0,200}")
_NAME_KEYS = frozenset({"name", "as_name", "forward_arg_names", "path_name", "type"})
_FQN_KEYS = frozenset({"parameter_name", "buffer_name", "tensor_constant_name", "fqn"})
_TEXT_KEYS = frozenset({"stack_trace", "nn_module_stack", "torch_fn"})
_FORBIDDEN_KEYS = {"as_graph": "a subgraph", "as_custom_obj": "a custom object", "as_operator": "an operator argument",
                   "custom_obj": "a custom object input", "token": "an effect token"}
_METADATA_KEYS = frozenset({"stack_trace", "nn_module_stack", "torch_fn"})
_INPUT_KINDS = frozenset({"user_input", "parameter", "buffer", "tensor_constant"})
_OUTPUT_KINDS = frozenset({"user_output"})
_VERIFIERS = frozenset({"", "ATEN", "TRAINING"})
_TREESPEC_TYPES = frozenset({None, "builtins.tuple", "builtins.list", "builtins.dict"})
_NON_FINITE = frozenset({"Infinity", "-Infinity", "NaN"})


def check_sym_expr(expr: Any) -> None:
    """Refuse a symbolic expression string that is not a plain shape expression (see
    :data:`_SYM_FUNCTIONS`); torch hands it to ``sympy.sympify``, which runs ``eval``."""
    if not isinstance(expr, str) or not 0 < len(expr) <= MAX_EXPR_CHARS:
        raise _Refused(f"symbolic expression {str(expr)[:80]!r} is not a short string")
    pos, depth, previous = 0, 0, ""
    while pos < len(expr):
        m = _SYM_TOKEN.match(expr, pos)
        if m is None:
            raise _Refused(f"symbolic expression {expr[:120]!r} has {expr[pos:pos + 20]!r}, which is not part of a "
                           f"plain shape expression (integers, symbols like s0, sympy shape functions, + - * / %)")
        kind, text = m.lastgroup, m.group()
        if kind == "word" and text not in _SYM_FUNCTIONS and text not in _SYM_WORDS and not _SYMBOL.fullmatch(text):
            raise _Refused(f"symbolic expression {expr[:120]!r} names {text!r}, which is not a sympy shape function "
                           f"or a symbol like s0")
        if kind == "op":
            if text == "*" and previous == "*":
                raise _Refused(f"symbolic expression {expr[:120]!r} raises to a power (**)")
            depth += {"(": 1, ")": -1}.get(text, 0)
            if not 0 <= depth <= 32:
                raise _Refused(f"symbolic expression {expr[:120]!r} has unbalanced or too deeply nested brackets")
        if kind != "space":
            previous = text
        pos = m.end()


def _check_target(target: Any) -> None:
    if not isinstance(target, str):
        raise _Refused(f"graph node target {target!r} is not a string")
    m = _OP_TARGET.fullmatch(target)
    if m is not None:
        if m.group(1) in _DENIED_OPS:
            raise _Refused(f"a graph node calls {target}, an operator that reaches files or the process; an "
                           f"exported cascade computes on tensors only")
        return
    if target in _OPERATOR_TARGETS:
        return
    raise _Refused(f"a graph node calls {target!r}, which is not an aten/prims tensor operator; an exported "
                   f"cascade's graph calls nothing else")


def _check_treespec(spec: Any, key: str) -> None:
    try:
        doc = json.loads(spec)
    except (TypeError, ValueError, RecursionError):
        raise _Refused(f"the {key} of the module call graph is not valid JSON") from None
    stack = [doc[1]] if isinstance(doc, list) and len(doc) == 2 else [None]
    while stack:
        node = stack.pop()
        if not isinstance(node, dict) or node.get("type") not in _TREESPEC_TYPES \
                or not isinstance(node.get("children_spec"), list) \
                or not (node.get("context") is None or isinstance(node.get("context"), str)):
            raise _Refused(f"the {key} of the module call graph holds "
                           f"{node.get('type') if isinstance(node, dict) else node!r}; only tuples, lists and dicts "
                           f"of tensors are expected")
        stack.extend(node["children_spec"])


def _check_string(key: "str | None", value: str) -> None:
    """One string of a program's JSON, by the key it is found under."""
    if key == "target":
        _check_target(value)
    elif key == "expr_str":
        check_sym_expr(value)
    elif key == "guards_code":
        if not _GUARD.fullmatch(value):
            raise _Refused(f"guard {value[:120]!r} is not a plain comparison of input sizes (torch runs guards as "
                           f"Python code)")
    elif key in ("in_spec", "out_spec"):
        _check_treespec(value, key)
    elif key == "verifiers":
        if value not in _VERIFIERS:
            raise _Refused(f"verifier {value[:80]!r} is not one of {sorted(_VERIFIERS)}")
    elif key in _TEXT_KEYS:
        if len(value) > (1 << 20) or any(ord(c) < 32 and c not in "\n\t" for c in value):
            raise _Refused(f"node metadata {key} holds control characters or is too long")
    elif key in _NAME_KEYS:
        if not _IDENT.fullmatch(value):
            raise _Refused(f"{key} {value[:120]!r} is not an identifier (names of a graph become Python code)")
    elif key in _FQN_KEYS:
        if not _FQN.fullmatch(value):
            raise _Refused(f"{key} {value[:120]!r} is not a dotted module path")
    elif key in ("as_float", "as_floats"):
        if value not in _NON_FINITE:
            raise _Refused(f"float constant {value[:80]!r} is not a number")
    elif key == "torch_version":
        if not re.fullmatch(r"[0-9A-Za-z.+_-]{1,64}", value):
            raise _Refused(f"torch_version {value[:80]!r} is not a version")
    elif not _PLAIN.fullmatch(value):
        raise _Refused(f"{key} {value[:120]!r} is not a plain token; an exported program holds no free text there")


def _check_json(doc: Any, what: str) -> None:
    """Walk a JSON document of the archive: every dict key a name, every string checked by its key."""
    stack: list[tuple[Any, "str | None"]] = [(doc, None)]
    while stack:
        value, key = stack.pop()
        if isinstance(value, dict):
            if key == "metadata":
                extra = sorted(set(value) - _METADATA_KEYS)
                if extra:
                    raise _Refused(f"{what}: node metadata {extra[0]!r} is not expected in an exported cascade")
            for k, v in value.items():
                if not isinstance(k, str) or not _FQN.fullmatch(k) or not k:
                    raise _Refused(f"{what}: key {str(k)[:80]!r} is not a name")
                if k in _FORBIDDEN_KEYS:
                    raise _Refused(f"{what} holds {_FORBIDDEN_KEYS[k]} ({k}); an exported cascade holds only "
                                   f"tensors and aten/prims operators")
                stack.append((v, k))
        elif isinstance(value, list):
            stack.extend((v, key) for v in value)
        elif isinstance(value, str):
            _check_string(key, value)
        elif not (value is None or isinstance(value, (bool, int, float))):
            raise _Refused(f"{what}: unexpected JSON value {value!r}")


def _check_program_json(doc: Any) -> None:
    """models/model.json: the serialized ExportedProgram."""
    if not isinstance(doc, dict):
        raise _Refused("models/model.json is not a JSON object")
    try:
        graph_module = doc["graph_module"]
        graph = graph_module["graph"]
        signature = graph_module["signature"]
        inputs, nodes = list(graph["inputs"]), list(graph["nodes"])
        input_specs, output_specs = list(signature["input_specs"]), list(signature["output_specs"])
        ranges = dict(doc.get("range_constraints") or {})
        guards = list(doc.get("guards_code") or [])
    except (KeyError, TypeError, ValueError):
        raise _Refused("models/model.json lacks the graph, its nodes or its signature") from None
    for node in nodes:  # the targets first, so that a refusal names the call
        if not isinstance(node, dict) or "target" not in node:
            raise _Refused("a graph node has no target")
        _check_target(node["target"])
    for inp in inputs:
        if not (isinstance(inp, dict) and list(inp) == ["as_tensor"]):
            kind = ", ".join(map(str, inp))[:80] if isinstance(inp, dict) else type(inp).__name__
            raise _Refused(f"a graph input is {kind}, not a tensor (torch writes a constant input into the guard "
                           f"code it runs); an exported cascade's inputs are tensors only")
    _check_json(doc, "models/model.json")
    for specs, allowed in ((input_specs, _INPUT_KINDS), (output_specs, _OUTPUT_KINDS)):
        for spec in specs:
            kinds = list(spec) if isinstance(spec, dict) else [spec]
            if len(kinds) != 1 or kinds[0] not in allowed:
                raise _Refused(f"signature entry {str(kinds)[:80]} is not one of {sorted(allowed)}")
    for name, bounds in ranges.items():
        if not _SYMBOL.fullmatch(name) or not isinstance(bounds, dict) or set(bounds) != {"min_val", "max_val"} \
                or not all(b is None or (isinstance(b, int) and not isinstance(b, bool)) for b in bounds.values()):
            raise _Refused(f"range constraint {name[:40]!r}: {str(bounds)[:80]} is not a symbol with integer bounds")
    for guard in guards:
        _check_string("guards_code", guard)
    if graph.get("custom_obj_values") or graph_module.get("treespec_namedtuple_fields"):
        raise _Refused("models/model.json holds custom objects or named tuples; an exported cascade holds neither")


def _check_payload_config(doc: Any, kind: str, prefix: str, folder: str, names: "set[str]") -> None:
    """data/weights/model_weights_config.json or data/constants/model_constants_config.json."""
    where = f"{folder}model_{kind}s_config.json"
    if not isinstance(doc, dict) or list(doc) != ["config"] or not isinstance(doc["config"], dict):
        raise _Refused(f"{where} is not a payload config")
    for fqn, entry in doc["config"].items():
        if not isinstance(entry, dict) or not set(entry) <= {"path_name", "is_param", "use_pickle", "tensor_meta"}:
            raise _Refused(f"{kind} {fqn!r}: unexpected payload entry {str(entry)[:80]}")
        path = entry.get("path_name")
        if entry.get("use_pickle") is not False:
            raise _Refused(f"{kind} {fqn!r} is stored as a pickle (use_pickle); an exported cascade holds only "
                           f"raw tensors")
        if isinstance(path, str) and path.startswith(("custom_obj_", "opaque_obj_")):
            raise _Refused(f"{kind} {fqn!r} is a custom object ({path}), which torch would unpickle; an exported "
                           f"cascade holds only raw tensors")
        if not isinstance(path, str) or not re.fullmatch(prefix + r"[0-9]{1,6}", path):
            raise _Refused(f"{kind} {fqn!r} is stored as {str(path)[:60]!r}, not as a raw tensor ({prefix}N)")
        if folder + path not in names:
            raise _Refused(f"{kind} {fqn!r}: its file {folder}{path} is missing")
        meta = entry.get("tensor_meta")
        if not isinstance(meta, dict) or not isinstance(meta.get("device"), dict) \
                or meta["device"].get("type") != "cpu":
            raise _Refused(f"{kind} {fqn!r} is not a CPU tensor")
    _check_json(doc, where)


def _check_stored_zip(data: bytes, what: str, max_entries: int) -> "zipfile.ZipFile":
    """``data`` as a zip of uncompressed entries whose sizes add up to at most its own size."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        infos = zf.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError) as exc:
        raise _Refused(f"{what} is not a zip archive ({exc})") from None
    if not infos:
        raise _Refused(f"{what} is an empty zip archive")
    if len(infos) > max_entries:
        raise _Refused(f"{what} has {len(infos)} entries, more than {max_entries}")
    total = 0
    for info in infos:
        if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
            raise _Refused(f"{what}: entry {info.filename[:80]!r} is compressed or encrypted; torch.export.save "
                           f"stores every entry as it is")
        total += info.file_size
    if total > len(data):
        raise _Refused(f"{what}: its entries add up to {total} bytes, more than the {len(data)} bytes of the "
                       f"archive (a zip bomb)")
    return zf


def _check_sample_inputs(raw: bytes) -> None:
    """data/sample_inputs/model.pt: torch.save of (args, kwargs) tensors. Loaded here with
    ``weights_only=True`` so that torch's own load of it, which falls back to a full
    unpickle when the weights-only load fails, never needs the fallback."""
    what = "data/sample_inputs/model.pt (the sample inputs)"
    _check_stored_zip(raw, what, 256)
    try:
        sample = torch.load(io.BytesIO(raw), weights_only=True)  # exactly torch's first attempt
    except Exception as exc:  # noqa: BLE001 - any failure is a refusal
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
        why = re.search(r"WeightsUnpickler error: (.*?)(?: Please use|$)", text, re.M)
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        first = why.group(1).strip() if why else lines[0] if lines else type(exc).__name__
        raise _Refused(f"{what} holds more than tensors: a weights-only load fails ({first[:200]}), and torch "
                       f"would then unpickle it in full") from None
    if not (isinstance(sample, tuple) and len(sample) == 2 and isinstance(sample[0], (tuple, list))
            and isinstance(sample[1], dict) and all(type(t) is Tensor for t in sample[0])
            and all(isinstance(k, str) and type(v) is Tensor for k, v in sample[1].items())):
        raise _Refused(f"{what} is not (tensors, {{name: tensor}})")


def check_program_archive(path: "str | Path", data: bytes, max_bytes: int) -> None:
    """Refuse a ``.pt2`` archive (its bytes ``data``) unless it holds only what
    ``torch.export.save`` writes for an exported cascade's model, so that ``torch.export.load``
    unpickles nothing and builds nothing but aten/prims calls from it (see the module
    docstring and docs/reliability.md). Raises :class:`ExportError` naming the file."""
    try:
        _refuse_if_too_big(path, len(data), max_bytes)
        zf = _check_stored_zip(data, "the archive", MAX_PT2_ENTRIES)
        infos = zf.infolist()
        root = infos[0].filename.split("/", 1)[0]
        if not _ARCHIVE_ROOT.fullmatch(root):
            raise _Refused(f"its first entry {infos[0].filename[:80]!r} is not inside an archive folder")
        names: set[str] = set()
        seen: set[str] = set()
        for info in infos:
            if not info.filename.startswith(root + "/"):
                raise _Refused(f"entry {info.filename[:80]!r} is outside the archive folder {root}/")
            rel = info.filename[len(root) + 1:]
            if info.filename.lower() in seen:
                raise _Refused(f"entry {rel[:80]!r} is in the archive twice")
            seen.add(info.filename.lower())
            if rel in _PT2_FIXED or _PT2_TENSOR_FILE.fullmatch(rel):
                names.add(rel)
            elif re.fullmatch(r"data/(weights|constants)/[^/]*\.pt", rel):
                raise _Refused(f"{rel} is a legacy pickled {rel.split('/')[1]} file, which torch would unpickle; an "
                               f"exported cascade holds only raw tensors")
            elif re.fullmatch(r"data/constants/(custom_obj|opaque_obj)_[^/]*", rel):
                raise _Refused(f"{rel} is a custom object, which torch would unpickle; an exported cascade holds "
                               f"only raw tensors")
            else:
                raise _Refused(f"unexpected entry {rel[:80]!r}; an exported cascade's model holds only its graph "
                               f"(models/model.json), raw tensors and sample inputs")
        missing = [n for n in _PT2_REQUIRED if n not in names]
        if missing:
            raise _Refused(f"it lacks {', '.join(missing)}")

        def read(rel: str) -> bytes:
            return zf.read(f"{root}/{rel}")

        def read_json(rel: str) -> Any:
            try:
                return json.loads(read(rel))
            except (ValueError, RecursionError):
                raise _Refused(f"{rel} is not valid JSON") from None

        if read("archive_format") != b"pt2" or read("archive_version") != b"0":
            raise _Refused("it is not a torch.export archive of format pt2, version 0")
        _check_payload_config(read_json("data/weights/model_weights_config.json"), "weight", "weight_",
                              "data/weights/", names)
        _check_payload_config(read_json("data/constants/model_constants_config.json"), "constant", "tensor_",
                              "data/constants/", names)
        _check_program_json(read_json("models/model.json"))
        _check_sample_inputs(read("data/sample_inputs/model.pt"))
    except _Refused as why:
        raise ExportError(f"{path}: refusing to load: {why}, {NOTHING_RAN}") from None
    except ExportError:
        raise
    except Exception as exc:  # noqa: BLE001 - a damaged entry (bad CRC, truncated) or an odd structure
        raise ExportError(f"{path}: refusing to load: the archive is damaged or not as torch.export.save writes it "
                          f"({type(exc).__name__}: {exc}), {NOTHING_RAN}") from None


def _load_program(path: Path, device: torch.device, max_bytes: int) -> torch.nn.Module:
    """A saved torch.export program as a callable module on ``device``.

    The file is read once; :func:`check_program_archive` checks those bytes, and
    ``torch.export.load`` gets the same bytes. The programs are captured on the CPU; for
    another device every parameter, buffer and lifted constant is moved by torch's
    ``move_to_device_pass`` (a plain ``.to`` would leave the lifted constants behind).
    """
    try:
        _refuse_if_too_big(path, path.stat().st_size, max_bytes)
        data = path.read_bytes()
    except FileNotFoundError:
        raise ExportError(f"{path}: exported model file is missing") from None
    check_program_archive(path, data, max_bytes)
    try:
        program = torch.export.load(io.BytesIO(data))
    except Exception as exc:
        raise ExportError(f"{path}: not a loadable torch.export program ({type(exc).__name__}: {exc})") from None
    try:
        if device.type != "cpu":
            from torch.export.passes import move_to_device_pass  # noqa: PLC0415

            program = move_to_device_pass(program, device)
        return program.module()
    except Exception as exc:
        raise ExportError(f"{path}: not a usable torch.export program ({type(exc).__name__}: {exc})") from None


def load_table(path: Path, shape: tuple[int, int], device: torch.device) -> Tensor:
    """An embedding table file as a float32 [rows, dim] tensor on ``device``.

    On the CPU the tensor is a read-only memory map of the file (``np.load(mmap_mode="r",
    allow_pickle=False)``: the header is parsed, nothing is unpickled and no value is read
    until a lookup needs it), so every program given it reads the same pages and the
    system can share them between processes. On another device it is copied there once.
    The file must hold exactly ``shape`` little-endian float32 values in C order."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise ExportError(f"{path}: embedding table file is missing") from None
    except (OSError, ValueError) as exc:
        raise ExportError(f"{path}: not a readable embedding table ({exc})") from None
    if array.dtype != np.dtype("<f4") or array.shape != tuple(shape) or not array.flags.c_contiguous:
        raise ExportError(f"{path}: embedding table is {array.dtype.str} {array.shape}"
                          f"{'' if array.flags.c_contiguous else ' in Fortran order'}; this export's tables are "
                          f"float32 (<f4) {tuple(shape)} in C order (the embedding sizes and dim of {META_FILE})")
    with warnings.catch_warnings():  # read-only on purpose: a program that wrote to it would crash, not diverge
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        table = torch.from_numpy(array)
    return table if device.type == "cpu" else table.to(device)


class TableBound:
    """A loaded program bound to its embedding table: called with the request arrays alone,
    it passes ``table`` as the program's first input. Programs reading the same table hold
    the same tensor (the user and item towers: the retrieval model's table)."""

    def __init__(self, program: torch.nn.Module, table: Tensor) -> None:
        self.program = program
        self.table = table

    def __call__(self, *arrays: Tensor) -> Tensor:
        return self.program(self.table, *arrays)


def _read_meta(meta_path: Path, folder: Path) -> dict[str, Any]:
    """cascade.json, read only once its size is within MAX_META_BYTES and checked to be this
    loader's format and version (an old version is told to export again), so nothing of a
    foreign or outdated folder is opened."""
    try:
        size = meta_path.stat().st_size
    except FileNotFoundError:
        raise ExportError(f"{meta_path} is missing: {folder} is not an exported cascade") from None
    if size > MAX_META_BYTES:
        raise ExportError(f"{meta_path}: {size} bytes, more than the {MAX_META_BYTES} a {META_FILE} may have")
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise ExportError(f"{meta_path} is missing: {folder} is not an exported cascade") from None
    except (ValueError, RecursionError) as exc:
        raise ExportError(f"{meta_path}: not valid JSON ({exc})") from None
    if isinstance(meta, dict) and meta.get("format") == FORMAT and meta.get("format_version") in _OLD_VERSIONS:
        version = meta["format_version"]
        raise ExportError(f"{meta_path}: an export of format version {version} ({_OLD_VERSIONS[version]}); "
                          f"this loader reads version {FORMAT_VERSION}, where each embedding table is a file "
                          f"shared by the programs: export the run again (lcron export --overwrite)")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        found = meta if not isinstance(meta, dict) else meta.get("format")
        version = meta.get("format_version") if isinstance(meta, dict) else None
        raise ExportError(f"{meta_path}: format {found!r} version {version!r}; "
                          f"this loader reads {FORMAT!r} version {FORMAT_VERSION}")
    return meta


def _listed_files(meta: Mapping[str, Any], meta_path: Path) -> dict[str, Any]:
    """cascade.json's ``files``, checked to name every single file (_FILE_KEYS) and the
    lists of stage programs and tables (_LIST_KEYS) as strings, before any path is used."""
    files = meta.get("files")
    if not isinstance(files, dict) or not all(isinstance(files.get(k), str) for k in _FILE_KEYS) \
            or not all(isinstance(files.get(k), list) and all(isinstance(f, str) for f in files[k])
                       for k in _LIST_KEYS):
        raise ExportError(f"{meta_path}: 'files' must name {', '.join(_FILE_KEYS)} and the lists of "
                          f"{' and '.join(repr(k) for k in _LIST_KEYS)}")
    return files


class ExportedCascade:
    """An exported cascade: the towers, the later stage models, the faiss index and the item table.

    ``folder`` is what :func:`lcron.serving.export.export_cascade` wrote. Request batches
    are mappings of numpy arrays or tensors: ``context`` [B, 3], ``user`` [B, 5], ``seq``
    [B, 50, 5], ``seq_mask`` [B, 50] (ids shifted by +1, 0 = padding; see README.txt).

    ``tables`` holds each embedding table once (memory-mapped on the CPU, :func:`load_table`);
    ``user_tower``, ``item_tower`` and ``stages`` are :class:`TableBound` programs, called
    with the request arrays alone, that pass their table to the program.
    """

    def __init__(self, folder: "str | Path", device: "str | torch.device" = "cpu",
                 max_slots: int | None = None) -> None:
        self.folder = Path(folder)
        meta_path = self.folder / META_FILE
        meta = _read_meta(meta_path, self.folder)
        files = _listed_files(meta, meta_path)
        table_of = self._program_tables(meta, meta_path, len(files["stages"]), len(files["tables"]))
        shape = table_shape(meta)
        programs = [files["user_tower"], files["item_tower"], *files["stages"]]
        caps = {**{str(f): (PROGRAM_MAX_BYTES, PROGRAM_CAP_TEXT) for f in programs},
                **{str(f): (table_byte_cap(meta), TABLE_CAP_TEXT) for f in files["tables"]}}
        # the size and sha256 of every listed file, before any of them is opened
        check_files(self.folder, meta, max_bytes=caps)
        self.meta = meta
        self.device = torch.device(device)
        self.max_slots = int(max_slots or DEFAULT_MAX_SLOTS.get(self.device.type, DEFAULT_MAX_SLOTS["cpu"]))
        self.stage_names: list[str] = list(meta["stage_names"])
        self.quotas: list[int] = [int(q) for q in meta["quotas"]]
        self.inputs: dict[str, dict[str, Any]] = meta["inputs"]
        self._load_item_table(files)
        self.index_kind = str(meta["index"]["kind"])
        self.index = self._load_index(self.folder / files["index"])
        if int(self.index.ntotal) != len(self.video_ids):
            raise ExportError(f"{self.folder}: the index holds {self.index.ntotal} vectors for "
                              f"{len(self.video_ids)} items")
        # each table once, shared by the programs that read it
        self.tables: list[Tensor] = [load_table(self.folder / f, shape, self.device) for f in files["tables"]]

        def bound(name: str, table: int) -> TableBound:
            return TableBound(_load_program(self.folder / name, self.device, PROGRAM_MAX_BYTES), self.tables[table])

        self.user_tower = bound(files["user_tower"], table_of["user_tower"])
        self.item_tower = bound(files["item_tower"], table_of["item_tower"])
        self.stages = [bound(f, t) for f, t in zip(files["stages"], table_of["stages"])]

    def _load_item_table(self, files: Mapping[str, Any]) -> None:
        """The corpus: ``video_ids`` and ``features`` (numpy, rows aligned) and their tensors
        on the device, which retrieval and the later stages index by corpus row."""
        try:
            self.video_ids = np.load(self.folder / files["item_ids"], allow_pickle=False)
            self.features = np.load(self.folder / files["item_features"], allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ExportError(f"{self.folder}: item table is not readable ({exc})") from None
        if self.video_ids.shape[0] != self.features.shape[0]:
            raise ExportError(f"{self.folder}: item_ids has {self.video_ids.shape[0]} rows, item_features "
                              f"{self.features.shape[0]}")
        # the exported arrays are int64 already: on the CPU the tensors share their memory
        self._features_t = torch.from_numpy(self.features.astype(np.int64, copy=False)).to(self.device)
        self._ids_t = torch.from_numpy(self.video_ids.astype(np.int64, copy=False)).to(self.device)

    @staticmethod
    def _program_tables(meta: Mapping[str, Any], meta_path: Path, stages: int, tables: int) -> dict[str, Any]:
        """cascade.json's ``program_tables``: the table (an index into ``files.tables``) of
        the user tower, the item tower and each later stage; every table read by some program."""
        pt = meta.get("program_tables")

        def ok(t: Any) -> bool:
            return isinstance(t, int) and not isinstance(t, bool) and 0 <= t < tables

        if not (isinstance(pt, dict) and ok(pt.get("user_tower")) and ok(pt.get("item_tower"))
                and isinstance(pt.get("stages"), list) and len(pt["stages"]) == stages
                and all(ok(t) for t in pt["stages"])):
            raise ExportError(f"{meta_path}: 'program_tables' must give, for the user tower, the item tower and "
                              f"each of the {stages} later stages, one of the {tables} tables of 'files.tables'")
        used = {pt["user_tower"], pt["item_tower"], *pt["stages"]}
        if used != set(range(tables)):
            raise ExportError(f"{meta_path}: 'files.tables' lists {tables} tables but the programs read "
                              f"{len(used)} of them")
        return pt

    def _load_index(self, path: Path):
        import faiss  # noqa: PLC0415 - only needed once a folder is loaded

        try:
            index = faiss.read_index(str(path))
        except Exception as exc:
            raise ExportError(f"{path}: not a readable faiss index ({exc})") from None
        if (self.device.type == "cuda" and self.index_kind in ("flat", "ivf")
                and hasattr(faiss, "index_cpu_to_all_gpus") and faiss.get_num_gpus() > 0):
            index = faiss.index_cpu_to_all_gpus(index)
        return index

    # ------------------------------------------------------------ pieces
    @property
    def corpus_size(self) -> int:
        return int(len(self.video_ids))

    def request(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        """The request fields of ``batch`` checked and on the device."""
        return check_request(batch, self.inputs, REQUEST_INPUTS, self.device)

    def user_vectors(self, batch: Mapping[str, Any]) -> np.ndarray:
        """User tower: [B, D] float32 user vectors of a request batch."""
        return self._user_vectors(self.request(batch))

    def _user_vectors(self, r: Mapping[str, Tensor]) -> np.ndarray:
        with torch.inference_mode():
            u = self.user_tower(r["context"], r["user"], r["seq"], r["seq_mask"])
        return np.ascontiguousarray(u.float().cpu().numpy(), dtype=np.float32)

    def item_vectors(self, items: Any) -> np.ndarray:
        """Item tower on [..., 8] item features (e.g. a new item to add to the index)."""
        t = check_request({"items": items}, self.inputs, ("items",), self.device)["items"]
        with torch.inference_mode():
            return self.item_tower(t.reshape(-1, t.shape[-1])).reshape(*t.shape[:-1], -1).float().cpu().numpy()

    def retrieve(self, batch: Mapping[str, Any], k1: int) -> Retrieved:
        """Top-``k1`` corpus items per request by the retrieval model (``k1`` clamped to the corpus)."""
        return self._retrieve(self.request(batch), k1)

    def _retrieve(self, r: Mapping[str, Tensor], k1: int) -> Retrieved:
        if isinstance(k1, bool) or not isinstance(k1, (int, np.integer)) or k1 < 1:
            raise ExportError(f"K1 must be a positive integer, got {k1!r}")
        k = min(int(k1), self.corpus_size)
        scores, rows = self.index.search(self._user_vectors(r), k)
        rows = rows.astype(np.int64)
        ids = np.where(rows >= 0, self.video_ids[np.maximum(rows, 0)], 0).astype(np.int64)
        return Retrieved(ids, scores, rows)

    def stage_scores(self, batch: Mapping[str, Any], items: Any) -> list[np.ndarray]:
        """Every stage's scores [B, N] of given candidates ``items`` [B, N, 8] (e.g. a logged
        candidate list): the retrieval score <u, v>, then each later stage's logit."""
        r = check_request({**batch, "items": items}, self.inputs, REQUEST_INPUTS + ("items",), self.device)
        if r["items"].dim() != 3:
            raise ExportError(f"items must be [B, N, 8] candidates per request, got {tuple(r['items'].shape)}")
        with torch.inference_mode():
            u = self.user_tower(r["context"], r["user"], r["seq"], r["seq_mask"])
            v = self.item_tower(r["items"].reshape(-1, r["items"].shape[-1])).reshape(*r["items"].shape[:-1], -1)
            out = [torch.bmm(v, u.unsqueeze(-1)).squeeze(-1)]
            for fn in self.stages:
                out.append(score_items(fn, r, r["items"], self.max_slots))
        return [z.float().cpu().numpy() for z in out]

    def score(self, batch: Mapping[str, Any], k1: int, tie_seed: int = 0) -> Scored:
        """Serve: retrieve top-``k1``, run the later stages with their quotas.

        Returns the final survivors' video ids [B, q_last] (best first; 0 where a request
        has fewer survivors), the stage scores [B, K1] aligned with the retrieved ids
        (stage 0 = retrieval score; NaN where an earlier stage had cut the item), and the
        retrieved ids. ``tie_seed`` fixes the tie-break at the cut-offs.
        """
        r = self.request(batch)
        got = self._retrieve(r, k1)
        rows = torch.from_numpy(got.rows).to(self.device)
        alive = rows >= 0
        items = self._features_t[rows.clamp_min(0)]
        priority = tie_priority(tuple(rows.shape), tie_seed, self.device)
        with torch.inference_mode():
            survivors, zs = run_cascade(self.stages, self.quotas[1:], r, items, alive, priority,
                                        max_slots=self.max_slots)
        last = survivors[-1] if survivors else alive
        key = zs[-1] if zs else torch.from_numpy(got.scores).to(self.device)
        q = self.quotas[-1]
        order = torch.argsort(torch.where(last, key.nan_to_num(nan=-math.inf), torch.full_like(key, -math.inf)),
                              dim=1, descending=True, stable=True)[:, :q]
        vid = torch.where(torch.gather(last, 1, order), self._ids_t[torch.gather(rows.clamp_min(0), 1, order)], 0)
        if vid.shape[1] < q:  # fewer retrieved than the last quota: pad with 0 (no item)
            vid = torch.nn.functional.pad(vid, (0, q - vid.shape[1]))
        retrieval = np.where(got.rows >= 0, got.scores, np.nan).astype(np.float32)
        return Scored(vid.cpu().numpy(), [retrieval] + [z.cpu().numpy() for z in zs], got.video_ids)


def load_exported(folder: "str | Path", device: "str | torch.device" = "cpu",
                  max_slots: int | None = None) -> ExportedCascade:
    """Load an exported cascade folder (see :class:`ExportedCascade`)."""
    return ExportedCascade(folder, device=device, max_slots=max_slots)
