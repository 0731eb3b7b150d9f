"""Evaluation metrics of a cascade: end-to-end (joint) recall, Recall@k@m and NDCG@k.

Everything here is per request: each function takes ``[B, N]`` arrays (numpy arrays or
torch tensors, on any device) and returns a float64 numpy array of shape ``[B]``, so the
caller can average, bootstrap or concatenate batches before reducing.

Conventions (METHODS.md sections 1, 6 and 7), each pinned by a test:

* **Padding** (``mask == 0``) is never selected, never counts as ground truth and adds
  nothing to a DCG. ``mask=None`` means every slot is valid.
* **Ground truth (GT)**: the ``gt`` valid slots with the largest label. A tie group of
  labels that straddles the ``gt``-th place is resolved by a seeded random tie-break,
  never by slot order (slot order leaks the label: the top group sits in the first slots).
* **Top-m selections** (the cascade, Recall@k@m) keep the ``m`` valid slots with the
  largest score; a tie group straddling the cut-off is resolved the same seeded way.
  Conceptually every request gets a random priority per slot and slots are sorted by
  ``(score desc, priority asc)``; only the members of a straddling tie group ever look
  at the priority, so a batch without ties costs one partial sort per selection.
* **Tie-break streams**: score ties use ``np.random.default_rng(tie_seed).random((B, N))``;
  GT ties use an independent stream, ``np.random.default_rng([tie_seed, 1]).random((B, N))``.
  They must be independent: with one shared priority a constant scorer would keep exactly
  the low-priority slots that the GT tie-break also favoured, and score a recall above
  chance. Callers may pass explicit ``priority`` / ``gt_priority`` arrays instead (finite
  values, lower wins); permuting slots together with them permutes the selection.
  Because a priority row belongs to a batch position, evaluating the same request in a
  batch of another size or at another position can resolve its ties differently; results
  are exactly reproducible for the same batches and tie seed.
* **Recall** = ``|selected ∩ GT| / |GT|`` with ``|GT| = min(gt, n_valid)``.
* **Skipped requests**: a request without any valid slot has no defined recall or NDCG;
  every function returns NaN for it. :func:`request_mean` averages while ignoring NaN and
  reports how many requests were evaluated and skipped - report both numbers.
* **NDCG@k**: linear gain ``y``, discount ``1 / log2(1 + rank)`` (rank from 1), over the
  valid slots only. Ties in the score are averaged as in scikit-learn's ``ndcg_score``
  (McSherry & Najork 2008): every member of a tie group gets the mean gain of the group
  at each position the group occupies, and a group cut by the top-k boundary counts only
  with the positions inside it. IDCG is the DCG of the valid labels sorted descending.
  A request whose IDCG is 0 (all valid labels 0) gets NDCG 0, as scikit-learn does; a
  request with a single valid slot gets 1 (or 0), where scikit-learn refuses to compute.
  Labels must be non-negative at valid slots (a negative gain makes IDCG meaningless).
* **Scores** must not be NaN at valid slots (:class:`~lcron.errors.NumericalError`).
  An infinite score is ordered as the largest/smallest finite float of its dtype, so a
  valid ``-inf`` still ranks above padding (it ties with a score of exactly that float).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

from lcron.errors import ConfigError, DataError, NumericalError

ArrayLike = Any  # numpy array, torch tensor, or nested sequence of numbers

GT_STREAM = 1  # the GT tie-break draws from np.random.default_rng([tie_seed, GT_STREAM])

# Requests are processed in blocks of this many rows: a [4096, 50] float64 block fits in
# a core's L2 cache, which makes the chain of sorts and element-wise passes about twice
# as fast as one pass over a 100,000-request batch. Results do not depend on it.
CHUNK_ROWS = 4096


# --------------------------------------------------------------------------- inputs
def _to_numpy(x: ArrayLike, name: str) -> np.ndarray:
    """Convert a torch tensor (any device / dtype) or array-like to numpy without copying
    when possible. torch is not imported here: a tensor is recognised by ``detach``."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        t = x.detach().cpu()
        if t.is_floating_point() and t.dtype.itemsize < 4:  # float16 / bfloat16
            t = t.float()
        return t.numpy()
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{name}: cannot be read as an array ({exc})") from None


def _valid_mask(mask: ArrayLike | None, shape: tuple[int, ...], fn: str) -> np.ndarray:
    if mask is None:
        return np.ones(shape, dtype=bool)
    m = _to_numpy(mask, f"{fn}: mask")
    if m.shape != shape:
        raise DataError(f"{fn}: mask has shape {m.shape}, expected the labels'/scores' shape {shape}")
    return m.astype(bool, copy=False)


def _labels_mask(labels: ArrayLike, mask: ArrayLike | None, fn: str) -> tuple[np.ndarray, np.ndarray]:
    y = _to_numpy(labels, f"{fn}: labels")
    if y.ndim != 2:
        raise DataError(f"{fn}: labels must be [B, N], got shape {y.shape}")
    if not (np.issubdtype(y.dtype, np.number) or y.dtype == np.bool_):
        raise DataError(f"{fn}: labels must be numeric, got dtype {y.dtype}")
    y = y.astype(np.float64, copy=False)
    valid = _valid_mask(mask, y.shape, fn)
    if np.isnan(y).any() and np.isnan(y[valid]).any():  # NaN at padding is harmless
        raise DataError(f"{fn}: labels hold NaN at valid slots")
    return y, valid


def _scores(scores: ArrayLike, shape: tuple[int, ...], name: str) -> np.ndarray:
    z = _to_numpy(scores, name)
    if z.shape != shape:
        raise DataError(f"{name} has shape {z.shape}, expected the labels' shape {shape}")
    if not np.issubdtype(z.dtype, np.floating):
        z = z.astype(np.float64)
    return z


def _stage_scores(scores: ArrayLike, shape: tuple[int, ...], fn: str) -> list[np.ndarray]:
    """Accept a list of [B, N] score arrays (first stage first) or one [S, B, N] array."""
    if hasattr(scores, "ndim") and getattr(scores, "ndim") == 2:
        raise DataError(f"{fn}: scores must be a list of [B, N] arrays, one per stage, not one [B, N] array")
    return [_scores(z, shape, f"{fn}: scores[{s}]") for s, z in enumerate(scores)]


def _check_int(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_quotas(quotas: Sequence[int], n_stages: int, fn: str) -> tuple[int, ...]:
    qs = tuple(_check_int(q, f"{fn}: quota {i + 1}") for i, q in enumerate(quotas))
    if len(qs) != n_stages:
        raise ConfigError(f"{fn}: {len(qs)} quotas {list(qs)} for {n_stages} stages of scores")
    if not qs:
        raise ConfigError(f"{fn}: at least one stage is needed")
    return qs


# ----------------------------------------------------------------- tie-break priority
def tie_priority(shape: tuple[int, int], tie_seed: int = 0, *, stream: int = 0) -> np.ndarray:
    """The seeded tie-break priority: a ``[B, N]`` uniform array, lower value wins a tie.

    ``stream=0`` is the score tie-break (``np.random.default_rng(tie_seed)``); ``stream=1``
    (:data:`GT_STREAM`) is the GT tie-break (``np.random.default_rng([tie_seed, 1])``).
    """
    tie_seed = _check_int(tie_seed, "tie_seed", minimum=0)
    rng = np.random.default_rng(tie_seed if stream == 0 else [tie_seed, _check_int(stream, "stream", 0)])
    return rng.random(shape)


def _priority_source(priority: ArrayLike | None, shape: tuple[int, int], tie_seed: int, stream: int,
                     name: str) -> Callable[[], np.ndarray]:
    """A lazy, cached priority: drawn only when some request has a straddling tie."""
    if priority is not None:
        p = _to_numpy(priority, name).astype(np.float64, copy=False)
        if p.shape != shape:
            raise DataError(f"{name} has shape {p.shape}, expected {shape}")
        if not np.isfinite(p).all():
            raise DataError(f"{name} must be finite")
        return lambda: p
    _check_int(tie_seed, "tie_seed", minimum=0)
    cache: list[np.ndarray] = []

    def draw() -> np.ndarray:
        if not cache:
            cache.append(tie_priority(shape, tie_seed, stream=stream))
        return cache[0]

    return draw


def _rows(source: Callable[[], np.ndarray], rows: slice) -> Callable[[], np.ndarray]:
    """The priority rows of one block (the whole batch's priority is drawn once)."""
    return lambda: source()[rows]


def _by_rows(b: int, fn: Callable[[slice], Any]) -> list[Any]:
    """Apply ``fn`` to consecutive row blocks of a batch of ``b`` requests (one empty block
    when b = 0, so empty batches give empty results of the right shape)."""
    return [fn(slice(lo, min(lo + CHUNK_ROWS, b))) for lo in range(0, max(b, 1), CHUNK_ROWS)]


class _CascadeInputs(NamedTuple):
    """Validated inputs of a whole-cascade metric: labels, validity, stage scores, quotas,
    |GT| cap and the two tie-break priority sources (GT set, score ties)."""

    y: np.ndarray
    valid: np.ndarray
    zs: list[np.ndarray]
    qs: tuple[int, ...]
    g: int
    gsrc: Callable[[], np.ndarray]
    psrc: Callable[[], np.ndarray]


def _cascade_inputs(scores: Sequence[ArrayLike], labels: ArrayLike, mask: ArrayLike | None, quotas: Sequence[int],
                    gt: int, tie_seed: int, priority: ArrayLike | None, gt_priority: ArrayLike | None,
                    fn: str) -> _CascadeInputs:
    y, valid = _labels_mask(labels, mask, fn)
    zs = _stage_scores(scores, y.shape, fn)
    return _CascadeInputs(y, valid, zs, _check_quotas(quotas, len(zs), fn), _check_int(gt, "gt"),
                          _priority_source(gt_priority, y.shape, tie_seed, GT_STREAM, "gt_priority"),
                          _priority_source(priority, y.shape, tie_seed, 0, "priority"))


# ------------------------------------------------------------------------ selection
def _sort_key(values: np.ndarray, valid: np.ndarray, name: str) -> np.ndarray:
    """Ascending sort key: ``-value`` at valid slots, ``+inf`` at padding.

    A valid ``-inf`` value would become ``+inf`` and tie with padding, so it is moved to
    the largest finite float (see the module docstring)."""
    key = np.where(valid, -values, np.inf)
    if np.isnan(key).any():  # padding is +inf, so a NaN is at a valid slot
        raise NumericalError(f"{name} holds NaN at valid slots")
    if np.isinf(values).any():
        bad = valid & (key == np.inf)
        key[bad] = np.finfo(key.dtype).max
    return key


def _kth_from_order(key: np.ndarray, order: np.ndarray, q: int) -> np.ndarray:
    """[B, 1] q-th smallest key per request, read off an existing argsort."""
    return key[np.arange(key.shape[0]), order[:, q - 1]][:, None]


def _select_top(key: np.ndarray, valid: np.ndarray, q: int, priority: Callable[[], np.ndarray],
                kth: np.ndarray | None = None) -> np.ndarray:
    """Boolean [B, N]: the ``q`` valid slots with the smallest key; ties at the cut-off go
    to the lowest priority. All valid slots when there are at most ``q``.

    With ``kth`` the q-th smallest key of the row (padding is +inf, so it is the q-th
    smallest *valid* key whenever there are at least q valid slots), ``key <= kth`` keeps
    exactly q slots unless a tie group at ``kth`` crosses the cut-off; only those requests
    sort their tied members by priority. With fewer than q valid slots ``kth`` is +inf and
    ``& valid`` keeps every valid slot."""
    n = key.shape[1]
    if q >= n:
        return valid.copy()
    if kth is None:
        kth = np.partition(key, q - 1, axis=1)[:, q - 1 : q]
    selected = (key <= kth) & valid
    over = np.flatnonzero(np.count_nonzero(selected, axis=1) > q)
    if over.size:
        k_r, t_kth = key[over], kth[over]
        above = k_r < t_kth
        tied = k_r == t_kth
        need = q - np.count_nonzero(above, axis=1)
        pr = np.where(tied, priority()[over], np.inf)
        order = np.argsort(pr, axis=1, kind="stable")
        rank = np.empty_like(order)
        np.put_along_axis(rank, order, np.broadcast_to(np.arange(n), order.shape), axis=1)
        selected[over] = above | (tied & (rank < need[:, None]))
    return selected


def _gt(y: np.ndarray, valid: np.ndarray, gt: int, prio: Callable[[], np.ndarray]) -> np.ndarray:
    return _select_top(_sort_key(y, valid, "labels"), valid, gt, prio)


def _recall(selected: np.ndarray, gt: np.ndarray, gt_size: np.ndarray) -> np.ndarray:
    hits = np.count_nonzero(selected & gt, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(gt_size > 0, hits / np.maximum(gt_size, 1), np.nan)


# ------------------------------------------------------------------------ public API
def gt_mask(labels: ArrayLike, mask: ArrayLike | None, gt: int = 10, tie_seed: int = 0, *,
            gt_priority: ArrayLike | None = None) -> np.ndarray:
    """The GT set as a bool [B, N] mask: the ``min(gt, n_valid)`` valid slots with the
    largest label; a tie group straddling the ``gt``-th place is resolved by the seeded
    GT tie-break (``np.random.default_rng([tie_seed, 1])``, or ``gt_priority``)."""
    y, valid = _labels_mask(labels, mask, "gt_mask")
    g = _check_int(gt, "gt")
    src = _priority_source(gt_priority, y.shape, tie_seed, GT_STREAM, "gt_priority")
    return np.concatenate(_by_rows(y.shape[0], lambda r: _gt(y[r], valid[r], g, _rows(src, r))))


def cascade_survivors(scores: Sequence[ArrayLike], mask: ArrayLike | None, quotas: Sequence[int],
                      tie_seed: int = 0, *, priority: ArrayLike | None = None) -> list[np.ndarray]:
    """Run the cascade: bool [B, N] survivor masks after each stage, first stage first.

    Stage 1 keeps ``quotas[0]`` of the valid slots by ``scores[0]``; stage s keeps
    ``quotas[s]`` of stage s-1's survivors by its own ``scores[s]`` (all of them when the
    quota is not smaller). Ties at a cut-off: seeded score tie-break (shared by all stages;
    the stages' scores are independent, so sharing leaks nothing)."""
    if not len(scores):
        raise ConfigError("cascade_survivors: at least one stage of scores is needed")
    first = _to_numpy(scores[0], "cascade_survivors: scores[0]")
    if first.ndim != 2:
        raise DataError(f"cascade_survivors: scores[0] must be [B, N], got shape {first.shape}")
    valid = _valid_mask(mask, first.shape, "cascade_survivors")
    zs = _stage_scores(scores, first.shape, "cascade_survivors")
    qs = _check_quotas(quotas, len(zs), "cascade_survivors")
    src = _priority_source(priority, first.shape, tie_seed, 0, "priority")
    parts = _by_rows(first.shape[0], lambda r: _cascade([z[r] for z in zs], valid[r], qs, _rows(src, r)))
    return [np.concatenate([part[s] for part in parts]) for s in range(len(qs))]


def _cascade(zs: list[np.ndarray], valid: np.ndarray, qs: tuple[int, ...],
             prio: Callable[[], np.ndarray]) -> list[np.ndarray]:
    survivors, alive = [], valid
    for s, (z, q) in enumerate(zip(zs, qs)):
        alive = _select_top(_sort_key(z, alive, f"scores[{s}]"), alive, q, prio)
        survivors.append(alive)
    return survivors


def joint_recall(scores: Sequence[ArrayLike], labels: ArrayLike, mask: ArrayLike | None,
                 quotas: Sequence[int] = (30, 20), gt: int = 10, tie_seed: int = 0, *,
                 priority: ArrayLike | None = None, gt_priority: ArrayLike | None = None) -> np.ndarray:
    """End-to-end recall per request: ``|last stage's survivors ∩ GT| / min(gt, n_valid)``
    with the cascade run for real (see :func:`cascade_survivors`); NaN without valid slots.

    ``scores``: one [B, N] array per stage, first stage first; ``quotas`` likewise."""
    y, valid, zs, qs, g, gsrc, psrc = _cascade_inputs(scores, labels, mask, quotas, gt, tie_seed, priority,
                                                      gt_priority, "joint_recall")

    def block(r: slice) -> np.ndarray:
        v = valid[r]
        gmask = _gt(y[r], v, g, _rows(gsrc, r))
        final = _cascade([z[r] for z in zs], v, qs, _rows(psrc, r))[-1]
        return _recall(final, gmask, np.minimum(g, np.count_nonzero(v, axis=1)))

    return np.concatenate(_by_rows(y.shape[0], block))


def recall_at_k_m(scores: ArrayLike, labels: ArrayLike, mask: ArrayLike | None, k: int = 10, m: int = 20,
                  tie_seed: int = 0, *, priority: ArrayLike | None = None,
                  gt_priority: ArrayLike | None = None) -> np.ndarray:
    """Recall@k@m of one model alone per request: ``|top-m valid slots by score ∩ GT| /
    min(k, n_valid)``, GT = the top ``k`` by label; NaN without valid slots."""
    y, valid = _labels_mask(labels, mask, "recall_at_k_m")
    z = _scores(scores, y.shape, "recall_at_k_m: scores")
    kk, mm = _check_int(k, "k"), _check_int(m, "m")
    gsrc = _priority_source(gt_priority, y.shape, tie_seed, GT_STREAM, "gt_priority")
    psrc = _priority_source(priority, y.shape, tie_seed, 0, "priority")

    def block(r: slice) -> np.ndarray:
        v = valid[r]
        gmask = _gt(y[r], v, kk, _rows(gsrc, r))
        top = _select_top(_sort_key(z[r], v, "recall_at_k_m: scores"), v, mm, _rows(psrc, r))
        return _recall(top, gmask, np.minimum(kk, np.count_nonzero(v, axis=1)))

    return np.concatenate(_by_rows(y.shape[0], block))


def _discounts(k: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(k, dtype=np.float64) + 2.0)


def _discounted_sum(gains: np.ndarray, disc: np.ndarray) -> np.ndarray:
    """Row sums of gain x discount. Not a BLAS matmul: its rounding depends on how many
    rows it gets, and a request's NDCG must not depend on its batch or row block."""
    return (gains * disc).sum(axis=1)


def _gains(y: np.ndarray, valid: np.ndarray, name: str) -> np.ndarray:
    gain = np.where(valid, y, 0.0)
    if (gain < 0).any():
        raise DataError(f"{name}: labels must be non-negative at valid slots (they are the NDCG gains)")
    return gain


def _idcg(gain: np.ndarray, disc: np.ndarray) -> np.ndarray:
    kk = disc.shape[0]
    return _discounted_sum(np.sort(gain, axis=1)[:, : -kk - 1 : -1], disc)


def _ndcg(key: np.ndarray, order: np.ndarray, gain: np.ndarray, idcg: np.ndarray, disc: np.ndarray,
          any_valid: np.ndarray) -> np.ndarray:
    """NDCG from a stage's sort key and its argsort (ascending key = descending score)."""
    kk = disc.shape[0]
    head = order[:, : kk + 1]  # one slot past the cut-off shows a tie group crossing it
    sk = np.take_along_axis(key, head, axis=1)
    dcg = _discounted_sum(np.take_along_axis(gain, head[:, :kk], axis=1), disc)
    # Only rows with a tie among their first kk + 1 sorted valid slots need tie averaging.
    eq = (sk[:, 1:] == sk[:, :-1]) & (sk[:, 1:] < np.inf)  # padding (+inf) never ties
    rows = np.flatnonzero(eq.any(axis=1))
    if rows.size:
        dcg[rows] = _tie_averaged_dcg(key[rows], gain[rows], order[rows], disc)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(idcg > 0, dcg / np.where(idcg > 0, idcg, 1.0), 0.0)
    out[~any_valid] = np.nan
    return out


def _tie_averaged_dcg(key: np.ndarray, gain: np.ndarray, order: np.ndarray, disc: np.ndarray) -> np.ndarray:
    """McSherry-Najork DCG@k: DCG = sum over positions r < k of disc(r) * mean gain of the
    tie group occupying r. Group bounds [start, end) per position come from running
    max / min scans over the sorted keys; group sums from a cumulative sum of gains."""
    b, n = key.shape
    sk = np.take_along_axis(key, order, axis=1)
    sg = np.take_along_axis(gain, order, axis=1)
    pos = np.arange(n)
    new = np.ones((b, n), dtype=bool)
    new[:, 1:] = sk[:, 1:] != sk[:, :-1]
    start = np.maximum.accumulate(np.where(new, pos, 0), axis=1)
    last = np.ones((b, n), dtype=bool)
    last[:, :-1] = new[:, 1:]
    end = np.minimum.accumulate(np.where(last, pos + 1, n)[:, ::-1], axis=1)[:, ::-1]
    csum = np.zeros((b, n + 1))
    np.cumsum(sg, axis=1, out=csum[:, 1:])
    kk = disc.shape[0]
    s, e = start[:, :kk], end[:, :kk]
    mean_gain = (np.take_along_axis(csum, e, axis=1) - np.take_along_axis(csum, s, axis=1)) / (e - s)
    return _discounted_sum(mean_gain, disc)


def ndcg_at_k(scores: ArrayLike, labels: ArrayLike, mask: ArrayLike | None, k: int = 10) -> np.ndarray:
    """NDCG@k per request with linear gain ``y`` and discount ``1 / log2(1 + rank)``:

        DCG@k  = sum_{r=1..k} mean_gain(tie group at rank r) / log2(1 + r)
        NDCG@k = DCG@k / IDCG@k,  IDCG@k = sum_{r=1..k} y_(r) / log2(1 + r), y sorted desc

    over valid slots only; score ties averaged as in scikit-learn (McSherry & Najork);
    0 where IDCG is 0; NaN for a request without valid slots."""
    y, valid = _labels_mask(labels, mask, "ndcg_at_k")
    z = _scores(scores, y.shape, "ndcg_at_k: scores")
    disc = _discounts(min(_check_int(k, "k"), y.shape[1]))

    def block(r: slice) -> np.ndarray:
        v = valid[r]
        gain = _gains(y[r], v, "ndcg_at_k")
        key = _sort_key(z[r], v, "ndcg_at_k: scores")
        return _ndcg(key, np.argsort(key, axis=1), gain, _idcg(gain, disc), disc, v.any(axis=1))

    return np.concatenate(_by_rows(y.shape[0], block))


# ------------------------------------------------------------------ batch evaluation
class RequestMean(NamedTuple):
    """A mean over requests that ignores skipped (NaN) requests and says how many."""

    mean: float
    evaluated: int
    skipped: int


def request_mean(values: ArrayLike) -> RequestMean:
    """Mean of per-request values ignoring NaN (requests without a valid slot); the mean is
    NaN when nothing was evaluated. Report ``evaluated`` and ``skipped`` with the mean."""
    v = np.asarray(_to_numpy(values, "values"), dtype=np.float64).ravel()
    ok = ~np.isnan(v)
    n = int(ok.sum())
    return RequestMean(float(v[ok].mean()) if n else float("nan"), n, int(v.size - n))


@dataclass
class RequestMetrics:
    """Every per-request number the evaluation needs, from one pass over a batch.

    ``recall_at_k_m`` / ``ndcg_at_k`` / ``gt_survivors`` are [S, B] (stage first);
    ``gt_survivors[s]`` counts the GT items still alive after stage s of the cascade;
    ``gt_size`` = min(gt, n_valid), 0 for a skipped request."""

    joint_recall: np.ndarray
    recall_at_k_m: np.ndarray
    ndcg_at_k: np.ndarray
    gt_size: np.ndarray
    gt_survivors: np.ndarray

    @classmethod
    def concat(cls, parts: Sequence["RequestMetrics"]) -> "RequestMetrics":
        """Join batches (request axis) so the caller can reduce once at the end."""
        if not parts:
            raise ConfigError("RequestMetrics.concat: no batches to join")
        return cls(
            joint_recall=np.concatenate([p.joint_recall for p in parts]),
            recall_at_k_m=np.concatenate([p.recall_at_k_m for p in parts], axis=1),
            ndcg_at_k=np.concatenate([p.ndcg_at_k for p in parts], axis=1),
            gt_size=np.concatenate([p.gt_size for p in parts]),
            gt_survivors=np.concatenate([p.gt_survivors for p in parts], axis=1),
        )


def cascade_metrics(scores: Sequence[ArrayLike], labels: ArrayLike, mask: ArrayLike | None,
                    quotas: Sequence[int], gt: int = 10, ndcg_k: int = 10, tie_seed: int = 0, *,
                    priority: ArrayLike | None = None, gt_priority: ArrayLike | None = None) -> RequestMetrics:
    """Joint recall, each stage's Recall@gt@quota and NDCG@ndcg_k, and the GT funnel counts,
    sharing the GT set and the first stage's selection between them.

    Equal, request for request, to calling :func:`joint_recall`, :func:`recall_at_k_m`
    (m = the stage's quota) and :func:`ndcg_at_k` with the same ``tie_seed``."""
    y, valid, zs, qs, g, gsrc, psrc = _cascade_inputs(scores, labels, mask, quotas, gt, tie_seed, priority,
                                                      gt_priority, "cascade_metrics")
    disc = _discounts(min(_check_int(ndcg_k, "ndcg_k"), y.shape[1]))
    parts = _by_rows(y.shape[0], lambda r: _cascade_metrics_rows(
        [z[r] for z in zs], y[r], valid[r], qs, g, disc, _rows(gsrc, r), _rows(psrc, r)))
    return RequestMetrics.concat(parts)


def _cascade_metrics_rows(zs: list[np.ndarray], y: np.ndarray, valid: np.ndarray, qs: tuple[int, ...],
                          g: int, disc: np.ndarray, gprio: Callable[[], np.ndarray],
                          prio: Callable[[], np.ndarray]) -> RequestMetrics:
    gmask = _gt(y, valid, g, gprio)
    gt_size = np.minimum(g, np.count_nonzero(valid, axis=1))
    gain = _gains(y, valid, "cascade_metrics")
    idcg, any_valid = _idcg(gain, disc), gt_size > 0
    recalls, ndcgs, alive, survivors = [], [], valid, []
    for s, (z, q) in enumerate(zip(zs, qs)):
        # One argsort per stage over all valid slots serves NDCG and the Recall@k@m cut-off.
        key = _sort_key(z, valid, f"cascade_metrics: scores[{s}]")
        order = np.argsort(key, axis=1)
        top = _select_top(key, valid, q, prio, _kth_from_order(key, order, q) if q < y.shape[1] else None)
        recalls.append(_recall(top, gmask, gt_size))
        ndcgs.append(_ndcg(key, order, gain, idcg, disc, any_valid))
        # The cascade: stage 1 sees every valid slot (same selection); later stages only
        # the previous stage's survivors.
        alive = top if s == 0 else _select_top(_sort_key(z, alive, f"scores[{s}]"), alive, q, prio)
        survivors.append(alive)
    return RequestMetrics(
        joint_recall=_recall(survivors[-1], gmask, gt_size),
        recall_at_k_m=np.stack(recalls),
        ndcg_at_k=np.stack(ndcgs),
        gt_size=gt_size,
        gt_survivors=np.stack([np.count_nonzero(alive & gmask, axis=1) for alive in survivors]),
    )


def summarize_funnel(gt_survivors: ArrayLike, gt_size: ArrayLike, quotas: Sequence[int] | None = None,
                     stage_names: Sequence[str] | None = None) -> dict[str, Any]:
    """Where the GT items are lost, from per-request counts ([S, B] survivors, [B] |GT|).

    Requests with ``gt_size == 0`` (no valid slot) are skipped and counted. Per stage:
    ``gt_survivors_mean`` (GT items alive after the stage, mean over evaluated requests),
    ``gt_lost`` (GT items alive before the stage and dropped by it, summed) and
    ``gt_lost_share`` (its share of all lost GT items; 0.0 for every stage when none was
    lost, so the report stays valid JSON)."""
    surv = np.asarray(_to_numpy(gt_survivors, "gt_survivors"), dtype=np.int64)
    size = np.asarray(_to_numpy(gt_size, "gt_size"), dtype=np.int64)
    if surv.ndim != 2 or surv.shape[1] != size.shape[0]:
        raise DataError(f"summarize_funnel: gt_survivors must be [S, B] with B = {size.shape[0]}, got {surv.shape}")
    n_stages = surv.shape[0]
    names = list(stage_names) if stage_names is not None else [f"stage_{s + 1}" for s in range(n_stages)]
    if len(names) != n_stages:
        raise ConfigError(f"summarize_funnel: {len(names)} stage names for {n_stages} stages")
    if quotas is not None and len(quotas) != n_stages:
        raise ConfigError(f"summarize_funnel: {len(quotas)} quotas for {n_stages} stages")
    ok = size > 0
    n = int(ok.sum())
    surv, size = surv[:, ok], size[ok]
    before = np.concatenate([size[None], surv[:-1]], axis=0)
    lost = (before - surv).sum(axis=1)
    lost_total = int(lost.sum())
    stages = []
    for s in range(n_stages):
        stages.append({
            "stage": names[s],
            "quota": None if quotas is None else int(quotas[s]),
            "gt_survivors_mean": float(surv[s].mean()) if n else float("nan"),
            "gt_survivors_total": int(surv[s].sum()),
            "gt_lost": int(lost[s]),
            "gt_lost_share": float(lost[s] / lost_total) if lost_total else 0.0,
        })
    return {
        "stages": stages,
        "gt_mean": float(size.mean()) if n else float("nan"),
        "gt_total": int(size.sum()),
        "gt_lost_total": lost_total,
        "requests": n,
        "skipped": int((~ok).sum()),
    }


def funnel(scores: Sequence[ArrayLike], labels: ArrayLike, mask: ArrayLike | None, quotas: Sequence[int],
           gt: int = 10, tie_seed: int = 0, *, stage_names: Sequence[str] | None = None,
           priority: ArrayLike | None = None, gt_priority: ArrayLike | None = None) -> dict[str, Any]:
    """The GT funnel of one batch: how many GT items survive each stage of the cascade and
    which stage drops the lost ones (see :func:`summarize_funnel` for the fields)."""
    y, valid, zs, qs, g, gsrc, psrc = _cascade_inputs(scores, labels, mask, quotas, gt, tie_seed, priority,
                                                      gt_priority, "funnel")

    def block(r: slice) -> np.ndarray:
        gmask = _gt(y[r], valid[r], g, _rows(gsrc, r))
        survivors = _cascade([z[r] for z in zs], valid[r], qs, _rows(psrc, r))
        return np.stack([np.count_nonzero(alive & gmask, axis=1) for alive in survivors])

    counts = np.concatenate(_by_rows(y.shape[0], block), axis=1)
    return summarize_funnel(counts, np.minimum(g, np.count_nonzero(valid, axis=1)), qs, stage_names)
