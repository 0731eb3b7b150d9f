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
"""

from __future__ import annotations

import json
import math
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
FORMAT_VERSION = 1
META_FILE = "cascade.json"
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


def tie_priority(shape: tuple[int, int], seed: int, device: "str | torch.device" = "cpu") -> Tensor:
    """Seeded uniform priorities [B, K] for ties at a cut-off (lower wins)."""
    gen = torch.Generator().manual_seed(int(seed))
    return torch.rand(shape, generator=gen).to(device)


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


def _load_program(path: Path, device: torch.device) -> torch.nn.Module:
    """A saved torch.export program as a callable module on ``device``.

    The programs are captured on the CPU; for another device every parameter, buffer and
    lifted constant is moved by torch's ``move_to_device_pass`` (a plain ``.to`` would leave
    the lifted constants behind).
    """
    try:
        program = torch.export.load(str(path))
    except FileNotFoundError:
        raise ExportError(f"{path}: exported model file is missing") from None
    except Exception as exc:
        raise ExportError(f"{path}: not a loadable torch.export program ({type(exc).__name__}: {exc})") from None
    if device.type != "cpu":
        from torch.export.passes import move_to_device_pass  # noqa: PLC0415

        program = move_to_device_pass(program, device)
    return program.module()


def check_files(folder: Path, meta: Mapping[str, Any]) -> None:
    """Refuse an export whose files are not all there as written: ``file_bytes`` of cascade.json
    (written last by the exporter) lists every file with its size. A folder copied in part, or
    a file damaged or replaced since, fails here with the file's name rather than deep inside
    torch or faiss. Exports from before ``file_bytes`` existed are checked for presence only."""
    listed = meta.get("file_bytes")
    if listed is None:
        files = meta.get("files") or {}
        listed = {str(f): None for v in files.values() for f in (v if isinstance(v, list) else [v])}
    problems = []
    for name, size in dict(listed).items():
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


class ExportedCascade:
    """An exported cascade: the towers, the later stage models, the faiss index and the item table.

    ``folder`` is what :func:`lcron.serving.export.export_cascade` wrote. Request batches
    are mappings of numpy arrays or tensors: ``context`` [B, 3], ``user`` [B, 5], ``seq``
    [B, 50, 5], ``seq_mask`` [B, 50] (ids shifted by +1, 0 = padding; see README.txt).
    """

    def __init__(self, folder: "str | Path", device: "str | torch.device" = "cpu",
                 max_slots: int | None = None) -> None:
        self.folder = Path(folder)
        meta_path = self.folder / META_FILE
        try:
            meta = json.loads(meta_path.read_text())
        except FileNotFoundError:
            raise ExportError(f"{meta_path} is missing: {self.folder} is not an exported cascade") from None
        except ValueError as exc:
            raise ExportError(f"{meta_path}: not valid JSON ({exc})") from None
        if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
            raise ExportError(f"{meta_path}: format {meta.get('format')!r} version {meta.get('format_version')!r}; "
                              f"this loader reads {FORMAT!r} version {FORMAT_VERSION}")
        check_files(self.folder, meta)
        self.meta = meta
        self.device = torch.device(device)
        self.max_slots = int(max_slots or DEFAULT_MAX_SLOTS.get(self.device.type, DEFAULT_MAX_SLOTS["cpu"]))
        self.stage_names: list[str] = list(meta["stage_names"])
        self.quotas: list[int] = [int(q) for q in meta["quotas"]]
        self.inputs: dict[str, dict[str, Any]] = meta["inputs"]
        files = meta["files"]
        try:
            self.video_ids = np.load(self.folder / files["item_ids"], allow_pickle=False)
            self.features = np.load(self.folder / files["item_features"], allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ExportError(f"{self.folder}: item table is not readable ({exc})") from None
        if self.video_ids.shape[0] != self.features.shape[0]:
            raise ExportError(f"{self.folder}: item_ids has {self.video_ids.shape[0]} rows, item_features "
                              f"{self.features.shape[0]}")
        self._features_t = torch.from_numpy(self.features.astype(np.int64)).to(self.device)
        self._ids_t = torch.from_numpy(self.video_ids.astype(np.int64)).to(self.device)
        self.index_kind = str(meta["index"]["kind"])
        self.index = self._load_index(self.folder / files["index"])
        if int(self.index.ntotal) != len(self.video_ids):
            raise ExportError(f"{self.folder}: the index holds {self.index.ntotal} vectors for "
                              f"{len(self.video_ids)} items")
        self.user_tower = _load_program(self.folder / files["user_tower"], self.device)
        self.item_tower = _load_program(self.folder / files["item_tower"], self.device)
        self.stages = [_load_program(self.folder / f, self.device) for f in files["stages"]]

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

    def score(self, batch: Mapping[str, Any], k1: int, seed: int = 0) -> Scored:
        """Serve: retrieve top-``k1``, run the later stages with their quotas.

        Returns the final survivors' video ids [B, q_last] (best first; 0 where a request
        has fewer survivors), the stage scores [B, K1] aligned with the retrieved ids
        (stage 0 = retrieval score; NaN where an earlier stage had cut the item), and the
        retrieved ids. ``seed`` fixes the tie-break at the cut-offs.
        """
        r = self.request(batch)
        got = self._retrieve(r, k1)
        rows = torch.from_numpy(got.rows).to(self.device)
        alive = rows >= 0
        items = self._features_t[rows.clamp_min(0)]
        priority = tie_priority(tuple(rows.shape), seed, self.device)
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
