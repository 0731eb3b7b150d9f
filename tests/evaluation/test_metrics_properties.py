"""Property tests of lcron.metrics (hypothesis): perfect scorers, cascade bounds, ranges,
slot-permutation invariance and agreement of the batch evaluation with the single metrics.

Arrays are built from a drawn numpy seed (fast, reproducible); the shapes, quotas and
tie densities are drawn by hypothesis."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from lcron.metrics import (
    cascade_metrics,
    cascade_survivors,
    gt_mask,
    joint_recall,
    ndcg_at_k,
    recall_at_k_m,
)

FAST = settings(max_examples=60, deadline=None)


@st.composite
def cascades(draw, distinct_labels: bool = False, distinct_scores: bool = False):
    """A batch of requests with padding, labels, per-stage scores and quotas.

    Labels and scores come from small integer ranges unless asked to be distinct, so tie
    groups (also straddling the GT boundary and the quotas) are frequent."""
    b = draw(st.integers(1, 6))
    n = draw(st.integers(1, 24))
    n_stages = draw(st.integers(1, 3))
    quotas = sorted((draw(st.integers(1, n + 3)) for _ in range(n_stages)), reverse=True)
    gt = draw(st.integers(1, 12))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    mask = rng.random((b, n)) < draw(st.sampled_from([0.0, 0.5, 0.8, 1.0]))
    if distinct_labels:
        labels = rng.permuted(np.tile(np.arange(n, dtype=np.float64), (b, 1)), axis=1)
    else:
        labels = rng.integers(0, 4, size=(b, n)).astype(np.float64)
    if distinct_scores:
        scores = [rng.permuted(np.tile(np.arange(n, dtype=np.float64), (b, 1)), axis=1) + 0.5
                  for _ in range(n_stages)]
    else:
        scores = [rng.integers(0, draw(st.sampled_from([1, 3, 50])), size=(b, n)).astype(np.float64)
                  for _ in range(n_stages)]
    return scores, labels, mask, tuple(quotas), gt, seed


def gt_fraction(selected: np.ndarray, g: np.ndarray, mask: np.ndarray, gt: int) -> np.ndarray:
    size = np.minimum(gt, mask.sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(size > 0, (selected & g).sum(axis=1) / size, np.nan)


@FAST
@given(cascades(distinct_labels=True))
def test_perfect_scorer_has_full_joint_recall(case):
    _, labels, mask, quotas, gt, seed = case
    # scores = labels + tiny distinct jitter that keeps the label order
    rng = np.random.default_rng(seed)
    jitter = rng.random(labels.shape) * 1e-3
    perfect = [labels + jitter for _ in quotas]
    jr = joint_recall(perfect, labels, mask, quotas, gt=gt, tie_seed=seed)
    evaluated = mask.any(axis=1)
    if quotas[-1] >= gt:
        np.testing.assert_array_equal(jr[evaluated], 1.0)
    # in general the perfect scorer keeps min(quota, |GT|) of the GT items
    size = np.minimum(gt, mask.sum(axis=1))
    expected = np.minimum(quotas[-1], size)[evaluated] / size[evaluated]
    np.testing.assert_allclose(jr[evaluated], expected, rtol=1e-12)
    assert np.isnan(jr[~evaluated]).all()


@FAST
@given(cascades())
def test_joint_recall_is_bounded_by_every_stage_of_the_cascade(case):
    scores, labels, mask, quotas, gt, seed = case
    jr = joint_recall(scores, labels, mask, quotas, gt=gt, tie_seed=seed)
    g = gt_mask(labels, mask, gt=gt, tie_seed=seed)
    survivors = cascade_survivors(scores, mask, quotas, tie_seed=seed)
    evaluated = mask.any(axis=1)
    assert (np.isnan(jr) == ~evaluated).all()
    for alive in survivors:
        assert not (alive & ~mask).any()  # padding never survives
        bound = gt_fraction(alive, g, mask, gt)
        assert (jr[evaluated] <= bound[evaluated] + 1e-12).all()
    # the last stage's survivors are exactly what joint recall counts
    np.testing.assert_array_equal(jr, gt_fraction(survivors[-1], g, mask, gt))
    # and the first stage alone (same seed -> same selection) is a bound too
    r1 = recall_at_k_m(scores[0], labels, mask, k=gt, m=quotas[0], tie_seed=seed)
    assert (jr[evaluated] <= r1[evaluated] + 1e-12).all()
    # survivor counts: min(quota, what the previous stage passed on)
    previous = mask.sum(axis=1)
    for alive, q in zip(survivors, quotas):
        np.testing.assert_array_equal(alive.sum(axis=1), np.minimum(q, previous))
        previous = alive.sum(axis=1)
    assert (g.sum(axis=1) == np.minimum(gt, mask.sum(axis=1))).all()


@FAST
@given(cascades(), st.integers(1, 12))
def test_values_lie_in_the_unit_interval(case, k):
    scores, labels, mask, quotas, gt, seed = case
    evaluated = mask.any(axis=1)
    values = [
        joint_recall(scores, labels, mask, quotas, gt=gt, tie_seed=seed),
        recall_at_k_m(scores[0], labels, mask, k=gt, m=quotas[-1], tie_seed=seed),
        ndcg_at_k(scores[0], labels, mask, k=k),
    ]
    for v in values:
        assert v.shape == (labels.shape[0],) and v.dtype == np.float64
        assert np.isnan(v[~evaluated]).all()
        assert ((v[evaluated] >= 0) & (v[evaluated] <= 1 + 1e-12)).all()


@FAST
@given(cascades(distinct_scores=True))
def test_slot_permutation_invariance(case):
    """Permuting the slots of each request together with scores, labels, mask and both
    tie-break priorities changes nothing (scores have no ties; labels may)."""
    scores, labels, mask, quotas, gt, seed = case
    rng = np.random.default_rng(seed)
    prio, gt_prio = rng.random(labels.shape), rng.random(labels.shape)
    perm = np.argsort(rng.random(labels.shape), axis=1)

    def p(x: np.ndarray) -> np.ndarray:
        return np.take_along_axis(x, perm, axis=1)

    kw = dict(priority=prio, gt_priority=gt_prio)
    kw_p = dict(priority=p(prio), gt_priority=p(gt_prio))
    np.testing.assert_array_equal(
        joint_recall(scores, labels, mask, quotas, gt=gt, **kw),
        joint_recall([p(z) for z in scores], p(labels), p(mask), quotas, gt=gt, **kw_p))
    np.testing.assert_array_equal(
        recall_at_k_m(scores[-1], labels, mask, k=gt, m=quotas[-1], **kw),
        recall_at_k_m(p(scores[-1]), p(labels), p(mask), k=gt, m=quotas[-1], **kw_p))
    np.testing.assert_allclose(ndcg_at_k(scores[0], labels, mask), ndcg_at_k(p(scores[0]), p(labels), p(mask)),
                               rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(p(gt_mask(labels, mask, gt=gt, gt_priority=gt_prio)),
                                  gt_mask(p(labels), p(mask), gt=gt, gt_priority=p(gt_prio)))
    for a, b in zip(cascade_survivors(scores, mask, quotas, priority=prio),
                    cascade_survivors([p(z) for z in scores], p(mask), quotas, priority=p(prio))):
        np.testing.assert_array_equal(p(a), b)


@FAST
@given(cascades())
def test_batch_evaluation_agrees_with_the_single_metrics(case):
    scores, labels, mask, quotas, gt, seed = case
    m = cascade_metrics(scores, labels, mask, quotas, gt=gt, tie_seed=seed)
    np.testing.assert_array_equal(m.joint_recall, joint_recall(scores, labels, mask, quotas, gt=gt, tie_seed=seed))
    for s, (z, q) in enumerate(zip(scores, quotas)):
        np.testing.assert_array_equal(m.recall_at_k_m[s], recall_at_k_m(z, labels, mask, k=gt, m=q, tie_seed=seed))
        np.testing.assert_array_equal(m.ndcg_at_k[s], ndcg_at_k(z, labels, mask))
