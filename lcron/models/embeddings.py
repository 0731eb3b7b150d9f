"""The id embedding shared by every field of a kind inside one model, and batch checks.

Why one matrix: a model reads 21 id columns (3 context, 5 user, 5 per sequence step,
8 per candidate) from 13 kinds of id. Thirteen ``nn.Embedding`` tables looked up column by
column cost 21 gathers, 21 dense backward passes and a concatenation per forward, and
the CPU ``embedding_dense_backward`` was measured at 4x the cost of the column-wise
backward used here (see ``_GatherRows``). So a model owns ONE matrix
``weight [sum of table sizes, dim]`` in which kind ``k`` occupies the block of rows
``[offset_k, offset_k + size_k)``; every field of that kind reads that block (the
candidate's video id and the sequence's video ids hit the very same rows, and so do the
request's weekday/hour/minute and the upload weekday/hour/minute). All arrays of a
forward pass are embedded with one gather, and the backward pass is one scatter-add.

Padding: index 0 of every kind is padding. Its row starts at zero and never receives a
gradient (the ``padding_idx=0`` semantics of ``nn.Embedding``), so a padding id embeds to
the zero vector for the whole of training.

Sparse gradients: with ``sparse = True`` (set by the trainer for ``--embedding-optimizer
lazy``) the backward returns the gradient as an uncoalesced sparse COO tensor - one
``[dim]`` row per lookup, like ``nn.Embedding(sparse=True)`` - instead of a dense
``[rows, dim]`` one. Its shape is fixed by the batch (no ``unique`` or filtering here), so
the backward stays capturable in a CUDA graph; summing repeated ids and the row-wise Adam
step are :class:`lcron.optim.LazyAdam`'s work. Padding lookups carry zero
values, so a padding row's moments stay zero and the row itself stays zero.

Initialisation: PyTorch's ``nn.Embedding`` default, N(0, 1) for every non-padding row,
drawn in a fixed kind order (``EMBEDDING_KINDS``) so that the same torch seed gives the same
weights whatever order the caller's size dict has.
"""

from __future__ import annotations

import contextlib
import contextvars
import warnings
from typing import Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lcron.data import fields
from lcron.errors import ConfigError, DataError

# Every kind a stage model embeds, in the canonical (row-block) order.
EMBEDDING_KINDS: tuple[str, ...] = fields.ID_FIELDS + fields.ITEM_TIME_FIELDS

# Per model input: the kind of each column, and its shape as error messages describe it.
_LAYOUT: dict[str, tuple[tuple[str, ...], str]] = {
    "context": (fields.CONTEXT_KINDS, "[B, 3]"),
    "user": (fields.USER_KINDS, "[B, 5]"),
    "seq": (fields.SEQ_KINDS, "[B, L, 5]"),
    "items": (fields.ITEM_KINDS, "[B, N, 8]"),
}


class _GatherRows(torch.autograd.Function):
    """``weight[index]`` with the padding rows' gradient zeroed, and a faster CPU backward.

    Equivalent to ``F.embedding(index, weight)`` with one padding row per kind. Written
    out because the backward is the slow part of a lookup: the gradient scatter-adds
    [n, dim] rows into random rows of a table far larger than the CPU caches. On CPU it is
    done column by column with ``torch.bincount(index, weights=grad[:, j])``, whose target
    (one column, 4 bytes per row) stays in cache - measured 2-3x faster than
    ``index_add_``/``index_put_`` and 4x faster than ``embedding_dense_backward`` for
    600k lookups into a 680k-row table. ``index_add_`` elsewhere (GPU atomics).
    """

    @staticmethod
    def forward(ctx, weight: Tensor, index: Tensor, padding_rows: Tensor,  # type: ignore[override]
                sparse: bool = False) -> Tensor:
        ctx.save_for_backward(index, padding_rows)
        ctx.num_rows = weight.shape[0]
        ctx.sparse = sparse
        return F.embedding(index, weight)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        index, padding_rows = ctx.saved_tensors
        rows = ctx.num_rows
        if ctx.sparse:
            return _sparse_rows_grad(index, grad, padding_rows, rows), None, None, None
        if grad.device.type == "cpu":
            columns = grad.t().contiguous()                                  # one copy, then contiguous rows
            grad_weight = torch.stack(
                [torch.bincount(index, weights=col, minlength=rows) for col in columns], 1
            ).to(grad.dtype)
        else:
            grad_weight = grad.new_zeros((rows, grad.shape[1])).index_add_(0, index, grad)
        grad_weight.index_fill_(0, padding_rows, 0.0)
        return grad_weight, None, None, None


def _sparse_rows_grad(index: Tensor, grad: Tensor, padding_rows: Tensor, rows: int) -> Tensor:
    """The gradient of ``weight[index]`` as an uncoalesced sparse COO [rows, dim] tensor:
    one value row per lookup (repeats not summed), padding lookups zeroed. Fixed shapes, no
    host synchronisation (CUDA-graph friendly)."""
    values = grad.contiguous().masked_fill(torch.isin(index, padding_rows).unsqueeze(1), 0.0)
    return torch.sparse_coo_tensor(index.unsqueeze(0), values, (rows, grad.shape[1]), check_invariants=False)


class FeatureEmbedding(nn.Module):
    """One embedding matrix with a block of rows per kind of id (see the module docstring)."""

    def __init__(self, sizes: Mapping[str, int], dim: int, kinds: Sequence[str] = EMBEDDING_KINDS) -> None:
        super().__init__()
        missing = [k for k in kinds if k not in sizes]
        if missing:
            raise ConfigError(
                f"embedding sizes lack kind(s) {missing}; expected a size for every kind in {list(kinds)} "
                "(use lcron.data.fields.embedding_sizes(id_counts))"
            )
        bad = {k: sizes[k] for k in kinds if int(sizes[k]) < 2}
        if bad:
            raise ConfigError(f"embedding sizes must be >= 2 (padding row + at least one id), got {bad}")
        if int(dim) < 1:
            raise ConfigError(f"embedding dim must be positive, got {dim}")
        self.kinds = tuple(kinds)
        self.sizes = {k: int(sizes[k]) for k in self.kinds}
        self.dim = int(dim)
        offsets, start = {}, 0
        for k in self.kinds:
            offsets[k] = start
            start += self.sizes[k]
        self.offsets = offsets
        self.weight = nn.Parameter(torch.empty(start, self.dim))
        # True: the backward returns a sparse (touched rows only) gradient, for LazyAdam.
        self.sparse = False
        self.register_buffer("padding_rows", torch.tensor([offsets[k] for k in self.kinds], dtype=torch.long),
                             persistent=False)
        # Per input array: the row offset and the table size of each column's kind.
        for name, (col_kinds, _) in _LAYOUT.items():
            self.register_buffer(f"_{name}_offsets", torch.tensor([offsets[k] for k in col_kinds], dtype=torch.long),
                                 persistent=False)
            self.register_buffer(f"_{name}_sizes", torch.tensor([self.sizes[k] for k in col_kinds], dtype=torch.long),
                                 persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """N(0, 1) per kind in canonical order (nn.Embedding's default); padding rows zero."""
        with torch.no_grad():
            for k in self.kinds:
                o = self.offsets[k]
                self.weight[o:o + self.sizes[k]].normal_()
            self.weight.index_fill_(0, self.padding_rows, 0.0)

    def table(self, kind: str) -> Tensor:
        """The rows of ``kind`` (a view of ``weight``: every field of the kind reads these rows)."""
        if kind not in self.offsets:
            raise ConfigError(f"no embedding table for kind {kind!r}; kinds: {list(self.kinds)}")
        o = self.offsets[kind]
        return self.weight[o:o + self.sizes[kind]]

    def rows_used(self, arrays: Mapping[str, "np.ndarray"], chunk: int = 65536) -> Tensor:
        """The rows of ``weight`` that the model inputs in ``arrays`` (a day's shard arrays)
        look up, ascending (int64, on the tables' device): what scoring those requests reads.
        Chunked over requests, so memory stays bounded on a full-size day; the marks stay on
        the tables' device, so a GPU run synchronises once, not once per chunk."""
        import numpy as np

        device = self.padding_rows.device
        used = torch.zeros(self.weight.shape[0], dtype=torch.bool, device=device)
        for name in _LAYOUT:
            if name not in arrays:
                continue
            ids = arrays[name]
            for start in range(0, len(ids), chunk):
                part = torch.from_numpy(np.asarray(ids[start:start + chunk], dtype=np.int64)).to(device)
                used[self._global_rows(name, part).reshape(-1)] = True
        return used.nonzero().reshape(-1)

    def forward(self, **arrays: Tensor) -> list[Tensor]:
        """Embed the given input arrays (names from ``context``, ``user``, ``seq``, ``items``).

        Each ``[..., F]`` integer array becomes ``[..., F * dim]`` (the F field embeddings
        side by side, in column order). All arrays are gathered in one lookup; the results
        come back in the order the arrays were given.
        """
        flat, shapes = [], []
        for name, ids in arrays.items():
            flat.append(self._global_rows(name, ids).reshape(-1))
            shapes.append(ids.shape)
        index = flat[0] if len(flat) == 1 else torch.cat(flat)
        rows = _GatherRows.apply(self.weight, index, self.padding_rows, self.sparse)
        # split (not slicing): its backward writes all parts' gradients into one tensor.
        parts = rows.split([shape.numel() for shape in shapes]) if len(shapes) > 1 else (rows,)
        return [p.view(*shape[:-1], shape[-1] * self.dim) for p, shape in zip(parts, shapes)]

    def _global_rows(self, name: str, ids: Tensor) -> Tensor:
        """Row of ``weight`` for every id of array ``name`` (int64), after checking the ids."""
        # The range check reads values (a host synchronisation; a graph break under
        # torch.compile of a whole model): skipped where the caller checked the ids before
        # (a trainer that checked the whole day, the serving loader) or cannot read values.
        if not (torch.compiler.is_compiling() or _IDS_PRECHECKED.get()):
            self.check_ids(name, ids)
        # Integer type promotion makes the sum int64 whatever the input width (uint8 included).
        return ids + getattr(self, f"_{name}_offsets")

    def check_day(self, arrays: "Mapping[str, Tensor | np.ndarray]") -> None:
        """:meth:`check_ids` of every model input in ``arrays`` (tensors or numpy arrays, e.g. a
        whole shard day), once: callers that check a day up front then look ids up under
        :func:`ids_prechecked` (the trainer per training day, the evaluation per test day)."""
        for name in _LAYOUT:
            if name in arrays:
                ids = arrays[name]
                if not isinstance(ids, Tensor):
                    with warnings.catch_warnings():  # a read-only memory map: the check only reads it
                        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
                        ids = torch.from_numpy(np.ascontiguousarray(ids))
                self.check_ids(name, ids)

    def check_ids(self, name: str, ids: Tensor) -> None:
        """DataError unless ``ids`` (any leading shape) is an integer array of input ``name`` within its tables."""
        if name not in _LAYOUT:
            raise ConfigError(f"unknown model input {name!r}; expected one of {list(_LAYOUT)}")
        col_kinds, shape_text = _LAYOUT[name]
        if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
            raise DataError(f"batch field {name!r} must hold integer ids, got dtype {ids.dtype}")
        if ids.dim() < 1 or ids.shape[-1] != len(col_kinds):
            raise DataError(f"batch field {name!r} must have shape {shape_text} (columns {list(col_kinds)}), "
                            f"got {tuple(ids.shape)}")
        sizes = getattr(self, f"_{name}_sizes")
        if ids.numel():
            lo, hi = ids.reshape(-1, ids.shape[-1]).aminmax(dim=0)
            # The ids may live elsewhere than the tables (a host day checked against tables on a GPU).
            lo, hi = lo.to(sizes.device), hi.to(sizes.device)
            bad = (lo.long() < 0) | (hi.long() >= sizes)
            if bool(bad.any()):
                c = int(bad.nonzero()[0, 0])
                raise DataError(
                    f"batch field {name!r} column {c} ({col_kinds[c]}): ids must lie in [0, {int(sizes[c]) - 1}] "
                    f"(embedding table size {int(sizes[c])}), got min {int(lo[c])} max {int(hi[c])}"
                )


_IDS_PRECHECKED: contextvars.ContextVar[bool] = contextvars.ContextVar("lcron_ids_prechecked", default=False)


@contextlib.contextmanager
def ids_prechecked() -> Iterator[None]:
    """Skip the per-lookup id range check inside the block: the caller has checked every id it
    will look up (e.g. a trainer that ran :meth:`FeatureEmbedding.check_ids` on a whole day).
    Needed where a lookup must not synchronise with the host (a CUDA graph capture)."""
    token = _IDS_PRECHECKED.set(True)
    try:
        yield
    finally:
        _IDS_PRECHECKED.reset(token)


def embedding_tables(module: nn.Module) -> list[FeatureEmbedding]:
    """Every :class:`FeatureEmbedding` inside ``module`` (one per stage model), in module order."""
    return [m for m in module.modules() if isinstance(m, FeatureEmbedding)]


def float_mask(seq_mask: Tensor, seq: Tensor, dtype: torch.dtype) -> Tensor:
    """``seq_mask`` [B, L] as 0/1 floats of ``dtype``, checked against ``seq`` [B, L, 5]."""
    if tuple(seq_mask.shape) != tuple(seq.shape[:-1]):
        raise DataError(f"batch field 'seq_mask' must have shape [B, L] = {tuple(seq.shape[:-1])} "
                        f"(matching 'seq'), got {tuple(seq_mask.shape)}")
    if seq_mask.dtype == dtype:
        return seq_mask
    return (seq_mask != 0).to(dtype)


def require(batch: Mapping[str, Tensor], *names: str) -> list[Tensor]:
    """The named model inputs of ``batch``, with a DataError naming any missing one."""
    missing = [n for n in names if n not in batch]
    if missing:
        raise DataError(f"batch lacks model input(s) {missing}; a model reads {list(fields.MODEL_INPUTS)}")
    return [batch[n] for n in names]
