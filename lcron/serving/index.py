"""The item corpus of a trained cascade and its faiss inner-product index.

Why: the paper measures a cascade inside each request's 40-50 logged candidates, but in
production the first stage (the two-tower DSSM) retrieves from the whole corpus. The DSSM
logit is the inner product <user vector, item vector>, so retrieving the top-K1 items of
a request is a maximum-inner-product search of the request's user vector over the item
vectors of the corpus - exactly what a faiss ``METRIC_INNER_PRODUCT`` index answers.

Index kinds:

* ``flat``  - ``IndexFlatIP``: exact search (the default, and the reference for the others).
* ``ivf``   - ``IndexIVFFlat``: k-means into ``nlist`` cells, search the ``nprobe`` cells
  whose centroids score highest. Only the probed cells depend on the query (not on k),
  so the top-K1 of a search for k > K1 is exactly the top-K1 of a search for K1. Which
  cells those are is itself a search over the ``nlist`` centroids (the coarse quantizer):
  exact (``IndexFlatIP``) for small ``nlist``, a small HNSW graph from
  :data:`HNSW_QUANTIZER_MIN_NLIST` cells (``quantizer`` option): at 6.79M items (10,425
  cells) that cut the build from 157 s to 40 - 44 s here, at the same recall (docs/serving.md).
* ``hnsw``  - ``IndexHNSWFlat``: a navigable small-world graph with ``M`` links per node,
  searched with a beam of ``max(efSearch, k)``.

The approximate kinds are reported with their recall@K1 against the exact search
(:func:`overlap_recall`): |approx top-K1 intersect exact top-K1| / K1.

faiss-cpu here, faiss-gpu in the GPU image: the same code. When faiss was built with GPU
support, sees a GPU and the device is CUDA, flat and IVF indexes are moved to every GPU
with ``faiss.index_cpu_to_all_gpus``; HNSW has no GPU version and stays on the CPU.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from lcron.data import fields
from lcron.errors import ConfigError, DataError
from lcron.serving.config import AUTO_FLAT_MAX_ITEMS, check_kind
from lcron.settings import Setting
from lcron.step_config import option

# Items embedded per forward pass of the item tower (memory: ~ this x 64 floats of activations).
ITEM_BATCH = 65536


def import_faiss():
    """Import faiss with a clear error (it is a hard dependency of the serving code only)."""
    try:
        import faiss  # noqa: PLC0415
    except ImportError as exc:  # pragma: no cover - faiss-cpu is a project dependency
        raise ConfigError(f"the serving evaluation needs faiss (pip install faiss-cpu): {exc}") from None
    return faiss


# ------------------------------------------------------------------------- options
#: IVF defaults, measured on a RecFlow-size corpus (6.79M items embedded by a trained LCRON
#: item tower, 2,048 test requests, 2 cores; docs/serving.md "Catalogue scale"): nprobe 16
#: recalled 0.83 of the exact top-1000 at 4,408 requests/s, 64 recalled 0.987 at 3,813.
#: k-means on faiss's default 256 points per cell took 431 s of the build; see
#: :data:`DEFAULT_TRAIN_POINTS_PER_CELL`.
DEFAULT_NPROBE = 64
DEFAULT_TRAIN_POINTS_PER_CELL = 64
QUANTIZERS = ("auto", "flat", "hnsw")
#: ``quantizer`` auto: an HNSW coarse quantizer from this many IVF cells (~1M items at the
#: default nlist), an exact one below. Assigning each of I items to one of nlist centroids
#: exactly costs I x nlist inner products - at 6.79M items and 10,425 cells ~80 s of the
#: add and most of the k-means training here; the graph makes it ~I x log(nlist).
HNSW_QUANTIZER_MIN_NLIST = 4096
#: efSearch of the HNSW coarse quantizer: recall 0.985 / 0.986 / 0.984 at K1 = 100 / 500 /
#: 1000 (nprobe 64) against 0.987 / 0.986 / 0.985 with the exact quantizer; 64 gave 0.984 /
#: 0.984 / 0.982 (docs/serving.md).
DEFAULT_QUANTIZER_EF = 128


@dataclass(frozen=True)
class IndexOptions:
    """Tuning knobs of the approximate indexes (ignored by ``flat``).

    ``nlist`` None -> ``round(4 * sqrt(I))`` clamped so every cell gets at least 39
    training points (faiss warns below that); ``nprobe`` is clamped to ``nlist``;
    ``train_points_per_cell``: k-means trains on at most that many sampled vectors per cell.
    ``quantizer``: how IVF finds the cells to probe - ``flat`` (exact), ``hnsw`` (a graph over
    the centroids, searched with beam ``quantizer_ef``) or ``auto`` (hnsw from
    :data:`HNSW_QUANTIZER_MIN_NLIST` cells).
    ``hnsw_m`` links per node; ``ef_search`` / ``ef_construction`` beam widths.
    """

    # The fields with option() are options of ``lcron export`` and ``lcron serve-eval``
    # (lcron.serving.export.add_index_option_arguments); the others are library-only.
    nlist: int | None = option(None, "IVF cells (default 4 sqrt(corpus))")
    nprobe: int = option(DEFAULT_NPROBE, "IVF cells searched per query")
    hnsw_m: int = option(32, "HNSW links per node")
    ef_search: int = option(128, "HNSW search beam")
    ef_construction: int = 80
    train_points_per_cell: int = DEFAULT_TRAIN_POINTS_PER_CELL
    quantizer: str = option("auto", "how IVF finds the cells to probe: flat (exact), hnsw (a graph over the "
                                    "centroids: a much faster build) or auto (hnsw from "
                                    f"{HNSW_QUANTIZER_MIN_NLIST:,} cells; default)", choices=QUANTIZERS)
    quantizer_ef: int = DEFAULT_QUANTIZER_EF

    def __post_init__(self) -> None:
        if self.quantizer not in QUANTIZERS:
            raise ConfigError(f"index option 'quantizer' must be one of {', '.join(QUANTIZERS)}, "
                              f"got {self.quantizer!r}")
        for name in ("nprobe", "hnsw_m", "ef_search", "ef_construction", "train_points_per_cell", "quantizer_ef"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"index option {name!r} must be an integer >= 1, got {v!r}")
        if self.nlist is not None and (isinstance(self.nlist, bool) or not isinstance(self.nlist, int)
                                       or self.nlist < 1):
            raise ConfigError(f"index option 'nlist' must be an integer >= 1 or None, got {self.nlist!r}")

    @classmethod
    def from_mapping(cls, options: "IndexOptions | Mapping[str, Any] | None") -> "IndexOptions":
        """Accept an IndexOptions, a dict of its fields, or None (defaults)."""
        if options is None:
            return cls()
        if isinstance(options, IndexOptions):
            return options
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(f"unknown index option(s) {unknown}; known: {sorted(known)}")
        return cls(**dict(options))

    def resolved_nlist(self, num_items: int) -> int:
        """The IVF cell count used for a corpus of ``num_items`` vectors."""
        most = max(1, num_items // 39)
        want = self.nlist if self.nlist is not None else int(round(4 * math.sqrt(max(num_items, 1))))
        return int(min(max(1, want), most, max(1, num_items)))

    def resolved_quantizer(self, nlist: int) -> str:
        """``flat`` or ``hnsw``: the IVF coarse quantizer for ``nlist`` cells."""
        if self.quantizer != "auto":
            return self.quantizer
        return "hnsw" if nlist >= HNSW_QUANTIZER_MIN_NLIST else "flat"


def resolve_index_kind(kind: str, items: int) -> str:
    """The index kind to build for a corpus of ``items``: ``kind`` itself, or for ``auto``
    flat up to :data:`AUTO_FLAT_MAX_ITEMS` items (lcron.serving.config, with its measurements;
    read from this module, where tests lower it) and ivf above."""
    if kind == "auto":
        return "flat" if items <= AUTO_FLAT_MAX_ITEMS else "ivf"
    return check_kind(kind)


# ---------------------------------------------------------------------- the towers
def stage_modules(cascade: nn.Module, setting: Setting) -> list[nn.Module]:
    """The cascade's stage models in stage order.

    Accepts ``cascade.stages`` / ``cascade.models`` as an ``nn.ModuleDict`` keyed by stage
    name, or ``cascade.models`` as a list in stage order.
    """
    for attr in ("stages", "models"):
        group = getattr(cascade, attr, None)
        if isinstance(group, nn.ModuleDict):
            missing = [n for n in setting.stage_names if n not in group]
            if missing:
                raise ConfigError(f"cascade lacks stage model(s) {missing} of setting {setting.name!r}")
            return [group[n] for n in setting.stage_names]
    models = list(getattr(cascade, "models", []))
    if len(models) != setting.num_stages:
        raise ConfigError(f"cascade has {len(models)} stage models, setting {setting.name!r} has "
                          f"{setting.num_stages} stages")
    return models


def retrieval_tower(cascade: nn.Module, setting: Setting) -> nn.Module:
    """The first-stage two-tower model; it must offer ``user_vectors`` and ``item_vectors``."""
    model = stage_modules(cascade, setting)[0]
    for method in ("user_vectors", "item_vectors"):
        if not callable(getattr(model, method, None)):
            raise ConfigError(
                f"the first stage {setting.stage_names[0]!r} ({type(model).__name__}) has no {method}(); "
                "serving retrieval needs a two-tower first stage (DSSM)")
    return model


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def embed_items(tower: nn.Module, features: np.ndarray, *, batch_size: int = ITEM_BATCH) -> np.ndarray:
    """Item vectors [I, D] (float32, C-contiguous) of the item feature table [I, 8].

    Runs the item tower alone in inference mode on the tower's device, ``batch_size``
    items per pass.
    """
    features = np.asarray(features)
    if features.ndim != 2 or features.shape[1] != len(fields.ITEM_FIELDS):
        raise DataError(f"item feature table must be [I, {len(fields.ITEM_FIELDS)}] "
                        f"(columns {list(fields.ITEM_FIELDS)}), got shape {features.shape}")
    device = _model_device(tower)
    parts = []
    with torch.inference_mode():
        for start in range(0, len(features), batch_size):
            chunk = torch.from_numpy(np.ascontiguousarray(features[start:start + batch_size], dtype=np.int64))
            parts.append(tower.item_vectors(chunk.to(device)).float().cpu().numpy())
    if not parts:
        raise DataError("the item feature table is empty: no corpus to retrieve from")
    return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)


def user_vectors(tower: nn.Module, batch: Mapping[str, torch.Tensor]) -> np.ndarray:
    """User vectors [B, D] (float32 numpy) of a request batch (context, user, seq, seq_mask)."""
    with torch.inference_mode():
        return np.ascontiguousarray(tower.user_vectors(batch).float().cpu().numpy())


# --------------------------------------------------------------------- the index
def build_index(vectors: np.ndarray, kind: str = "flat", options: "IndexOptions | Mapping | None" = None, *,
                device: "str | torch.device" = "cpu"):
    """A faiss inner-product index over ``vectors`` [I, D] (row i = corpus item i).

    ``device`` cuda moves flat/IVF indexes to the GPUs when faiss has GPU support.
    """
    faiss = import_faiss()
    check_kind(kind)
    opts = IndexOptions.from_mapping(options)
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] == 0:
        raise DataError(f"corpus vectors must be a non-empty [I, D] array, got shape {x.shape}")
    dim = x.shape[1]
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
        index.add(x)
    elif kind == "ivf":
        nlist = opts.resolved_nlist(len(x))
        # A GPU IVF index needs an exact quantizer: faiss moves only flat ones to the GPU.
        on_gpus = torch.device(device).type == "cuda" and faiss_has_gpus(faiss)
        hnsw = opts.resolved_quantizer(nlist) == "hnsw" and not on_gpus
        # Items are assigned to their cell with the graph's default beam (16): a wider beam
        # while adding 6.79M items made the build 5x slower (207 s instead of 41 s) for no
        # measurable recall; queries then search the centroids with ``quantizer_ef``.
        quantizer = (faiss.IndexHNSWFlat(dim, opts.hnsw_m, faiss.METRIC_INNER_PRODUCT) if hnsw
                     else faiss.IndexFlatIP(dim))
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.max_points_per_centroid = opts.train_points_per_cell  # faiss samples the training set
        index.train(x)
        index.add(x)
        if hnsw:
            quantizer.hnsw.efSearch = opts.quantizer_ef
        index.nprobe = min(opts.nprobe, nlist)
    else:
        index = faiss.IndexHNSWFlat(dim, opts.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = opts.ef_construction
        index.hnsw.efSearch = opts.ef_search
        index.add(x)
    return to_device(index, kind, device)


def faiss_has_gpus(faiss: Any) -> bool:
    """Whether this faiss build can put indexes on a GPU here (faiss-cpu cannot)."""
    return (hasattr(faiss, "index_cpu_to_all_gpus") and hasattr(faiss, "get_num_gpus")
            and faiss.get_num_gpus() > 0)


def to_device(index, kind: str, device: "str | torch.device"):
    """The index for searching on ``device``.

    On CUDA: a flat/IVF index moves to every GPU when faiss has GPU support; without it (the
    GPU image carries faiss-cpu: no faiss GPU wheel shares torch's CUDA major) the exact flat
    index becomes a :class:`TorchFlatIndex` on the GPU. HNSW stays a faiss CPU index."""
    faiss = import_faiss()
    dev = torch.device(device) if not isinstance(device, torch.device) else device
    if dev.type == "cuda" and kind in ("flat", "ivf") and faiss_has_gpus(faiss):
        return faiss.index_cpu_to_all_gpus(index)
    if dev.type == "cuda" and kind == "flat":
        return TorchFlatIndex.from_faiss(index, dev)
    return index


def to_cpu(index):
    """A CPU faiss copy of a (possibly GPU or torch) index, for serialisation."""
    faiss = import_faiss()
    if isinstance(index, TorchFlatIndex):
        return index.to_faiss()
    if hasattr(faiss, "index_gpu_to_cpu") and "Gpu" in type(index).__name__:
        return faiss.index_gpu_to_cpu(index)
    return index


class TorchFlatIndex:
    """Exact inner-product top-k with torch: the same answer as ``faiss.IndexFlatIP`` (up to
    the order of equal scores), computed on any torch device.

    It is the GPU retrieval path where faiss has no GPU support: ``search`` multiplies the
    queries [B, D] with the corpus [I, D] one block of items at a time (at most
    ``max_scores`` scores in memory), keeps each block's top-k and merges them. Rows past the
    corpus are -1 with score -inf, like faiss's padding."""

    def __init__(self, vectors: "np.ndarray | torch.Tensor", device: "str | torch.device" = "cpu",
                 max_scores: int = 1 << 27) -> None:
        x = torch.as_tensor(np.ascontiguousarray(vectors, dtype=np.float32)) if isinstance(vectors, np.ndarray) \
            else vectors.float()
        if x.dim() != 2 or x.shape[0] == 0:
            raise DataError(f"corpus vectors must be a non-empty [I, D] array, got shape {tuple(x.shape)}")
        self.device = torch.device(device)
        self.vectors = x.to(self.device).contiguous()
        self.ntotal, self.d = int(x.shape[0]), int(x.shape[1])
        self.max_scores = int(max_scores)

    @classmethod
    def from_faiss(cls, index: Any, device: "str | torch.device") -> "TorchFlatIndex":
        return cls(index.reconstruct_n(0, index.ntotal), device)

    def to_faiss(self) -> Any:
        faiss = import_faiss()
        index = faiss.IndexFlatIP(self.d)
        index.add(np.ascontiguousarray(self.vectors.cpu().numpy(), dtype=np.float32))
        return index

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = torch.as_tensor(np.ascontiguousarray(queries, dtype=np.float32)).to(self.device)
        b, k = q.shape[0], int(k)
        kk = min(k, self.ntotal)
        block = max(kk, self.max_scores // max(1, b))
        best_s = torch.full((b, 0), -math.inf, device=self.device)
        best_i = torch.zeros((b, 0), dtype=torch.int64, device=self.device)
        with torch.inference_mode():
            for start in range(0, self.ntotal, block):
                scores = q @ self.vectors[start:start + block].T
                s, i = torch.topk(scores, min(kk, scores.shape[1]), dim=1)
                best_s, pos = torch.topk(torch.cat([best_s, s], 1), min(kk, best_s.shape[1] + s.shape[1]), dim=1)
                best_i = torch.gather(torch.cat([best_i, i + start], 1), 1, pos)
        if kk < k:  # fewer items than asked for: pad as faiss does
            best_s = torch.nn.functional.pad(best_s, (0, k - kk), value=-math.inf)
            best_i = torch.nn.functional.pad(best_i, (0, k - kk), value=-1)
        return best_s.cpu().numpy().astype(np.float32), best_i.cpu().numpy().astype(np.int64)


def search(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` (scores [B, k] float32, corpus rows [B, k] int64) per query, best first.

    Rows are -1 where the index returned fewer than k results (possible for IVF when the
    probed cells hold fewer than k items).
    """
    q = np.ascontiguousarray(queries, dtype=np.float32)
    if q.ndim != 2:
        raise DataError(f"queries must be [B, D], got shape {q.shape}")
    if q.shape[0] == 0:
        return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
    scores, rows = index.search(q, int(k))
    return scores, rows.astype(np.int64, copy=False)


def index_options_used(index, kind: str) -> dict[str, Any]:
    """The parameters an index was built/searched with (for the report)."""
    if isinstance(index, TorchFlatIndex):
        return {"kind": kind, "ntotal": index.ntotal, "dim": index.d, "search": f"torch on {index.device}"}
    cpu = to_cpu(index)
    out: dict[str, Any] = {"kind": kind, "ntotal": int(cpu.ntotal), "dim": int(cpu.d)}
    if kind == "ivf":
        faiss = import_faiss()
        ivf = faiss.extract_index_ivf(cpu)
        out.update(nlist=int(ivf.nlist), nprobe=int(ivf.nprobe))
        coarse = faiss.downcast_index(ivf.quantizer)
        hnsw = getattr(coarse, "hnsw", None)
        out["quantizer"] = "flat" if hnsw is None else f"hnsw (efSearch {int(hnsw.efSearch)})"
    elif kind == "hnsw":
        out.update(ef_search=int(cpu.hnsw.efSearch), ef_construction=int(cpu.hnsw.efConstruction))
    return out


# ---------------------------------------------------------------------- recall
def overlap_recall(approx_rows: np.ndarray, exact_rows: np.ndarray) -> np.ndarray:
    """Per query: |approx top-k intersect exact top-k| / k (float64 [B]).

    Both arrays are [B, k] corpus rows without repeats inside a row; -1 (no result) never
    matches. Vectorised: the two rows are concatenated and sorted, and an element equal
    to its right neighbour is one shared item.
    """
    a = np.asarray(approx_rows, dtype=np.int64)
    e = np.asarray(exact_rows, dtype=np.int64)
    if a.shape != e.shape or a.ndim != 2:
        raise DataError(f"overlap_recall: rows must be two [B, k] arrays of one shape, got {a.shape} and {e.shape}")
    if a.shape[1] == 0:
        return np.ones(a.shape[0])
    # Missing results: -1 in the approximate rows, -2 in the exact ones, so they never pair up.
    both = np.sort(np.concatenate([np.where(a < 0, -1, a), np.where(e < 0, -2, e)], axis=1), axis=1)
    shared = ((both[:, 1:] == both[:, :-1]) & (both[:, 1:] >= 0)).sum(axis=1)
    return shared / a.shape[1]


def rows_in(values: np.ndarray, pool: np.ndarray) -> np.ndarray:
    """Row-wise membership: ``out[b, g] = values[b, g] in pool[b, :]`` (bool [B, G]).

    Both are non-negative integer arrays with the same number of rows; negative entries
    are never members (padding / missing). One global sort of ``row * M + value``
    (M = 1 + the largest value) and a binary search: no loop per row.
    """
    v = np.asarray(values, dtype=np.int64)
    p = np.asarray(pool, dtype=np.int64)
    if v.ndim != 2 or p.ndim != 2 or v.shape[0] != p.shape[0]:
        raise DataError(f"rows_in: expected [B, G] and [B, K] arrays, got {v.shape} and {p.shape}")
    if v.size == 0 or p.size == 0:
        return np.zeros(v.shape, dtype=bool)
    span = int(max(v.max(initial=0), p.max(initial=0))) + 1
    if span * v.shape[0] >= 2**62:
        raise DataError(f"rows_in: ids up to {span - 1} over {v.shape[0]} rows overflow int64 keys")
    rows = np.arange(v.shape[0], dtype=np.int64)[:, None] * span
    keys = np.sort(np.where(p >= 0, rows + p, -1).ravel())
    q = rows + v
    pos = np.minimum(np.searchsorted(keys, q), keys.size - 1)
    return (keys[pos] == q) & (v >= 0)


# --------------------------------------------------------------------- the corpus
@dataclass
class Corpus:
    """The embedded item table: ids, features, vectors and an index over the vectors.

    ``video_ids`` [I] are shifted ids (raw + 1, as in the shards); row i of ``features``
    [I, 8] and ``vectors`` [I, D] is item i; faiss returns rows into these arrays.
    """

    video_ids: np.ndarray
    features: np.ndarray
    vectors: np.ndarray
    index: Any
    kind: str
    options: IndexOptions = field(default_factory=IndexOptions)

    @property
    def size(self) -> int:
        return int(len(self.video_ids))

    def describe(self) -> dict[str, Any]:
        return {**index_options_used(self.index, self.kind), "options": asdict(self.options)}


def check_item_table(video_ids: np.ndarray, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate an item table: [I] ids matching column 0 of [I, 8] features, no repeated id."""
    ids = np.asarray(video_ids)
    feats = np.asarray(features)
    if ids.ndim != 1 or feats.ndim != 2 or feats.shape[0] != ids.shape[0] or feats.shape[1] != len(fields.ITEM_FIELDS):
        raise DataError(f"item table must be video_id [I] and features [I, {len(fields.ITEM_FIELDS)}], "
                        f"got {ids.shape} and {feats.shape}")
    if ids.size == 0:
        raise DataError("the item table is empty: no corpus to retrieve from")
    if not np.array_equal(ids, feats[:, 0]):
        raise DataError("item table: video_id does not match column 0 (video_id) of the features")
    if np.unique(ids).size != ids.size:
        raise DataError(f"item table: {ids.size - np.unique(ids).size} repeated video_id(s); one row per item expected")
    return ids.astype(np.int64, copy=False), feats.astype(np.int64, copy=False)


def build_corpus(tower: nn.Module, video_ids: np.ndarray, features: np.ndarray, kind: str = "flat",
                 options: "IndexOptions | Mapping | None" = None, *,
                 device: "str | torch.device" = "cpu") -> Corpus:
    """Embed the item table with the item tower and index it."""
    ids, feats = check_item_table(video_ids, features)
    opts = IndexOptions.from_mapping(options)
    vectors = embed_items(tower, feats)
    return Corpus(ids, feats, vectors, build_index(vectors, kind, opts, device=device), check_kind(kind), opts)


def clamp_k1(k1: Sequence[int], corpus_size: int) -> tuple[list[int], list[str]]:
    """K1 values clamped to the corpus size, and a note for each one that was clamped."""
    out, notes = [], []
    for k in k1:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ConfigError(f"K1 must be a positive integer, got {k!r}")
        if k > corpus_size:
            notes.append(f"K1 = {k} exceeds the corpus of {corpus_size} items; clamped to {corpus_size}")
        out.append(int(min(k, corpus_size)))
    return out, notes
