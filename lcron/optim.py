"""The embedding optimizers: dense Adam or row-wise lazy Adam (``--embedding-optimizer``).

Why two: with dense gradients every Adam step reads and writes every row of every
embedding table (parameters, gradient and both moments), although a batch touches a small
fraction of the rows - at RecFlow vocabulary sizes (11M rows per stage model) that is most
of a CPU training step. ``lazy`` updates only the rows a batch touched.

=======  ============================================================================
dense    ``torch.optim.Adam`` on a dense gradient (the reference's behaviour): rows
         absent from a batch keep moving on their decaying first moment
lazy     :class:`LazyAdam` on a sparse gradient (``FeatureEmbedding.sparse``): only the
         touched rows and their moments change; untouched rows stay exactly as they are
=======  ============================================================================

The two differ only in what happens to rows absent from a batch: on a touched row both
apply the same Adam arithmetic (same operations in the same order as
``torch.optim.Adam``'s single-tensor step, bias correction from the optimizer's global step
count, as in ``torch.optim.SparseAdam``). Unlike ``SparseAdam``, ``eps`` is added after the
bias correction, exactly as ``torch.optim.Adam`` does, so a table whose every row is touched
by every batch trains identically under both.

Embedding tables always get their own optimizer, apart from the dense (MLP) parameters,
so the dense part of a step can run on its own (e.g. inside a captured CUDA graph) with
the embedding update beside it.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from torch import Tensor

from .errors import ConfigError

#: The embedding optimizers (``--embedding-optimizer``). ``auto`` (the default) picks one per
#: run from the device and the table size (:func:`resolve_embedding_optimizer`); the recall
#: of the two is the same within seed noise (docs/embedding_optimizer.md), so only cost decides.
EMBEDDING_OPTIMIZERS: tuple[str, ...] = ("auto", "dense", "lazy")
#: The two update rules ``auto`` resolves to.
UPDATE_RULES: tuple[str, ...] = ("dense", "lazy")
DEFAULT_EMBEDDING_OPTIMIZER = "auto"
#: On CPU, ``auto`` is lazy from this many embedding rows per stage model: dense Adam costs in
#: proportion to the rows (every row, every step), lazy in proportion to a batch's lookups
#: (~600k per model at batch 1,024) plus a sort of them - so small tables are cheaper dense.
#: Timed (docs/embedding_optimizer.md): the crossover lies between ~330k and ~1M rows; at
#: 1.08M rows lazy trains two-stage LCRON ~23% faster, so dense is kept up to there.
LAZY_MIN_ROWS = 1_000_000


class LazyAdam(torch.optim.Optimizer):
    """Adam that updates only the rows present in a sparse gradient ("lazy" Adam).

    Each parameter's ``.grad`` must be a sparse COO tensor whose indices select rows
    (dimension 0), as produced by ``nn.Embedding(sparse=True)`` or
    ``FeatureEmbedding.sparse``; repeated rows are summed first (``coalesce``). For the
    touched rows, the moments and the parameter get ``torch.optim.Adam``'s update; every
    other row and its moments are left untouched. The step count (bias correction) counts
    the optimizer's steps, not each row's.
    """

    def __init__(self, params: Iterable[Tensor], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        if not lr > 0:
            raise ConfigError(f"LazyAdam: learning rate must be positive, got {lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ConfigError(f"LazyAdam: betas must lie in [0, 1), got {betas}")
        if not eps >= 0:
            raise ConfigError(f"LazyAdam: eps must be >= 0, got {eps}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps))

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        plans = _RowPlans()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if not p.grad.is_sparse:
                    raise ConfigError(
                        "LazyAdam got a dense gradient: it updates rows of a sparse gradient only "
                        "(set FeatureEmbedding.sparse = True, or use torch.optim.Adam for dense gradients)")
                state = self.state[p]
                if not state:
                    # step on the host (as Adam's non-capturable step): no device sync to read it
                    state["step"] = torch.tensor(0.0, dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                rows, values = plans.coalesce(p.grad)
                _lazy_adam_rows(p, rows, values, state["exp_avg"], state["exp_avg_sq"], float(state["step"]),
                                lr=group["lr"], beta1=beta1, beta2=beta2, eps=group["eps"])
        return loss


def _lazy_adam_rows(param: Tensor, rows: Tensor, values: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor,
                    step: float, *, lr: float, beta1: float, beta2: float, eps: float) -> None:
    """Adam's update on ``rows`` (distinct) with their summed gradients ``values``, in
    ``torch.optim.Adam``'s op order (repeats must be summed first: the update is non-linear
    in the gradient)."""
    if rows.numel() == 0:
        return
    m = exp_avg.index_select(0, rows).lerp_(values, 1 - beta1)
    v = exp_avg_sq.index_select(0, rows).mul_(beta2).addcmul_(values, values, value=1 - beta2)
    exp_avg.index_copy_(0, rows, m)
    exp_avg_sq.index_copy_(0, rows, v)
    bias_correction1 = 1 - beta1 ** step
    bias_correction2_sqrt = (1 - beta2 ** step) ** 0.5
    denom = (v.sqrt() / bias_correction2_sqrt).add_(eps)
    new_rows = param.index_select(0, rows).addcdiv_(m, denom, value=-(lr / bias_correction1))
    param.index_copy_(0, rows, new_rows)


def coalesce_rows(grad: Tensor) -> tuple[Tensor, Tensor]:
    """(rows, values) of a sparse row gradient with repeated rows summed, rows ascending.

    Off the CPU this is ``grad.coalesce()``. On the CPU ``coalesce`` (like ``torch.sort``
    and ``torch.unique``) was measured at ~0.4 - 0.8 s for 600k lookups into an 11M-row
    table, most of a step; numpy's vectorised sort of one int64 key per lookup (row in the
    high bits, lookup position in the low bits: unique keys, so the order and the
    summation order of repeats are fixed on every machine) then a segment sum does it in a
    fraction of that (:func:`row_plan`, then :func:`sum_rows`). Repeats are summed in
    lookup order.
    """
    if grad.device.type != "cpu":
        grad = grad.coalesce()
        return grad.indices()[0], grad.values()
    return sum_rows(row_plan(grad._indices()[0], grad.shape[0]), grad._values())


#: What coalescing a CPU row gradient needs from its lookup rows alone: (the lookups in
#: (row, position) order, the length of each run of one row, the distinct rows ascending).
RowPlan = tuple[Tensor, Tensor, Tensor]


def row_plan(index: Tensor, num_rows: int) -> RowPlan:
    """The sort half of :func:`coalesce_rows` for the lookups ``index`` (CPU int64) into a
    table of ``num_rows`` rows; it depends on the rows looked up, not on the gradient."""
    import numpy as np

    n = index.numel()
    if n == 0:
        return index, index, index
    pos_bits = max(1, (n - 1).bit_length())
    row_bits = max(1, (num_rows - 1).bit_length())
    idx = index.numpy()
    if pos_bits + row_bits <= 62:
        keys = np.sort((idx << pos_bits) | np.arange(n, dtype=np.int64))
        order = keys & ((1 << pos_bits) - 1)
        sorted_rows = keys >> pos_bits
    else:  # too many rows x lookups for one key: a stable sort (slower, same result)
        order = np.argsort(idx, kind="stable")
        sorted_rows = idx[order]
    first = np.empty(n, dtype=bool)
    first[0] = True
    np.not_equal(sorted_rows[1:], sorted_rows[:-1], out=first[1:])
    starts = np.flatnonzero(first)
    lengths = torch.from_numpy(np.diff(np.append(starts, n)))
    return torch.from_numpy(order), lengths, torch.from_numpy(sorted_rows[starts])


def sum_rows(plan: RowPlan, values: Tensor) -> tuple[Tensor, Tensor]:
    """(distinct rows, their summed values): the segment-sum half of :func:`coalesce_rows`."""
    order, lengths, rows = plan
    if order.numel() == 0:
        return rows, values
    return rows, torch.segment_reduce(values.index_select(0, order), "sum", lengths=lengths)


class _RowPlans:
    """The row plans of one optimizer step, shared by gradients that look up the same rows.

    Why: every stage model of a cascade embeds the same batch with the same table layout,
    so their embedding gradients have identical lookup rows; the sort is done once per step
    instead of once per model (a comparison of the index, one pass, is far cheaper than a
    sort). Only the plan is shared - each table still sums its own values, in the same
    order as alone, so the result is bit-identical to :func:`coalesce_rows` per table.
    """

    def __init__(self) -> None:
        self._plans: list[tuple[Tensor, int, RowPlan]] = []

    def coalesce(self, grad: Tensor) -> tuple[Tensor, Tensor]:
        if grad.device.type != "cpu":
            return coalesce_rows(grad)
        index, num_rows = grad._indices()[0], grad.shape[0]
        for known, known_rows, plan in self._plans:
            if known is index or (known_rows == num_rows and torch.equal(known, index)):
                return sum_rows(plan, grad._values())
        plan = row_plan(index, num_rows)
        self._plans.append((index, num_rows, plan))
        return sum_rows(plan, grad._values())


def check_embedding_optimizer(name: str) -> str:
    """``name`` if it is a known embedding optimizer, else a ConfigError listing them."""
    if name not in EMBEDDING_OPTIMIZERS:
        raise ConfigError(f"unknown embedding optimizer {name!r}; choose one of {', '.join(EMBEDDING_OPTIMIZERS)}")
    return name


def resolve_embedding_optimizer(name: str, device: "torch.device | str", rows_per_model: int) -> str:
    """``dense`` or ``lazy`` for a run: ``name`` itself unless it is ``auto``.

    ``auto``: dense on CUDA (its update is captured in the training step's CUDA graph; on an
    H200 a dense Adam pass over RecFlow's ~11M rows per model costs well under a millisecond,
    while the lazy update's coalesce synchronises every step); on CPU lazy from
    :data:`LAZY_MIN_ROWS` rows per model, dense below.
    """
    check_embedding_optimizer(name)
    if name != "auto":
        return name
    if torch.device(device).type == "cuda":
        return "dense"
    return "lazy" if rows_per_model >= LAZY_MIN_ROWS else "dense"


def build_embedding_optimizer(name: str, tables: list[Tensor], lr: float,
                              adam_options: dict[str, Any] | None = None) -> torch.optim.Optimizer:
    """The optimizer of the embedding tables: ``torch.optim.Adam`` (dense, with the run's
    ``adam_options``, e.g. capturable on CUDA) or LazyAdam (lazy: never captured in a CUDA
    graph, it steps beside it)."""
    if name not in UPDATE_RULES:
        raise ConfigError(f"embedding optimizer {name!r} must be resolved to dense or lazy first "
                          "(resolve_embedding_optimizer)")
    options = dict(adam_options or {})
    factory: dict[str, Callable[[list[Tensor], float], torch.optim.Optimizer]] = {
        "dense": lambda ts, r: torch.optim.Adam(ts, lr=r, **options),
        "lazy": lambda ts, r: LazyAdam(ts, lr=r),
    }
    return factory[check_embedding_optimizer(name)](tables, lr)
