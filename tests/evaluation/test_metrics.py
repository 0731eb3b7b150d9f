"""Tests of lcron.metrics: the reference cases, hand-computed examples and the conventions
of METHODS.md sections 1, 6 and 7 (padding, seeded tie-breaks, denominators, NDCG ties)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from lcron.errors import ConfigError, DataError, NumericalError
from lcron.metrics import (
    RequestMetrics,
    cascade_metrics,
    cascade_survivors,
    funnel,
    gt_mask,
    joint_recall,
    ndcg_at_k,
    recall_at_k_m,
    request_mean,
    summarize_funnel,
    tie_priority,
)
from lcron.settings import get_setting

REFERENCE = Path(__file__).resolve().parents[2].parent / "shared/spec/reference_cases/metrics.json"


def two_stage_labels(n_requests: int = 1) -> np.ndarray:
    """RecFlow two-stage labels: rank_pos 30..21, rank_neg 7, coarse_neg 6, prerank_neg 5."""
    row = np.concatenate([30 - np.arange(10), np.full(10, 7), np.full(10, 6), np.full(10, 5)])
    return np.tile(row, (n_requests, 1))


def three_stage_labels(n_requests: int = 1) -> np.ndarray:
    row = np.concatenate([30 - np.arange(10), np.full(10, 8), np.full(10, 7), np.full(10, 6), np.full(10, 5)])
    return np.tile(row, (n_requests, 1))


def with_demoted(base: np.ndarray, slots: list[int]) -> np.ndarray:
    """Scores ``base`` with the given slots pushed below everything else."""
    z = base.astype(np.float64).copy()
    z[slots] = -1000.0 - np.asarray(slots, dtype=np.float64)
    return z


# ------------------------------------------------------------------- reference cases
def load_reference_cases() -> list[dict]:
    # A missing file must fail the suite, not skip it.
    assert REFERENCE.is_file(), f"reference cases missing: {REFERENCE}"
    cases = json.loads(REFERENCE.read_text())
    assert cases, "metrics.json holds no case"
    return cases


def test_reference_cases_exist_for_both_settings():
    settings = {case["setting"] for case in load_reference_cases()}
    assert settings == {2, 3}


@pytest.mark.parametrize("index", range(8))
def test_reference_case(index):
    cases = load_reference_cases()
    if index >= len(cases):
        pytest.fail(f"expected at least {index + 1} reference cases, found {len(cases)}")
    case = cases[index]
    setting = get_setting(stages=case["setting"])
    labels = np.asarray(case["labels"])
    mask = np.ones(labels.shape, dtype=bool)
    assert list(case["scores"]) == list(setting.stage_names)
    scores = [np.asarray(case["scores"][name]) for name in setting.stage_names]

    jr = joint_recall(scores, labels, mask, quotas=setting.quotas, gt=10, tie_seed=0)
    np.testing.assert_array_equal(jr, np.asarray(case["joint_recall"]))
    for name, z, quota in zip(setting.stage_names, scores, setting.quotas):
        r = recall_at_k_m(z, labels, mask, k=10, m=quota, tie_seed=0)
        np.testing.assert_array_equal(r, np.asarray(case["recall_at_10_m"][name]), err_msg=name)
        assert ndcg_at_k(z, labels, mask, k=10).mean() == pytest.approx(case["ndcg_at_10_mean"][name], abs=1e-4)

    combined = cascade_metrics(scores, labels, mask, setting.quotas)
    np.testing.assert_array_equal(combined.joint_recall, np.asarray(case["joint_recall"]))
    for s, name in enumerate(setting.stage_names):
        np.testing.assert_array_equal(combined.recall_at_k_m[s], np.asarray(case["recall_at_10_m"][name]))
        assert combined.ndcg_at_k[s].mean() == pytest.approx(case["ndcg_at_10_mean"][name], abs=1e-4)


# ------------------------------------------------------------- hand-computed recall
def two_stage_example() -> tuple[list[np.ndarray], np.ndarray]:
    """One request, N = 40, quotas 30 -> 20. Both models prefer lower slots, except:
    retrieval puts GT slot 0 last (lost at stage 1: survivors = slots 1..30), pre-rank
    puts GT slot 1 last (lost at stage 2: survivors = slots 2..21). GT = slots 0..9."""
    base = -np.arange(40.0)
    return [with_demoted(base, [0])[None], with_demoted(base, [1])[None]], two_stage_labels()


def test_joint_recall_two_stage_hand_computed():
    scores, labels = two_stage_example()
    mask = np.ones_like(labels)
    survivors = cascade_survivors(scores, mask, (30, 20))
    np.testing.assert_array_equal(np.flatnonzero(survivors[0][0]), np.arange(1, 31))
    np.testing.assert_array_equal(np.flatnonzero(survivors[1][0]), np.arange(2, 22))
    # final survivors hold GT slots 2..9: 8 of 10
    np.testing.assert_array_equal(joint_recall(scores, labels, mask, (30, 20)), [0.8])
    # Each model alone loses only one GT item (retrieval: slot 0 outside its top 30;
    # pre-rank over all 40: top 20 = slots 0, 2..20), yet the cascade loses two.
    np.testing.assert_array_equal(recall_at_k_m(scores[0], labels, mask, k=10, m=30), [0.9])
    np.testing.assert_array_equal(recall_at_k_m(scores[1], labels, mask, k=10, m=20), [0.9])


def test_joint_recall_three_stage_hand_computed():
    """N = 50, quotas 40 -> 30 -> 20. Request 0 loses one GT item at every stage
    (slots 0, 1, 2); request 1 keeps all GT through two stages and loses slots 0..4 at
    the last one."""
    base = -np.arange(50.0)
    z1 = np.stack([with_demoted(base, [0]), base])
    z2 = np.stack([with_demoted(base, [1]), base])
    z3 = np.stack([with_demoted(base, [2]), with_demoted(base, [0, 1, 2, 3, 4])])
    labels = three_stage_labels(2)
    mask = np.ones_like(labels, dtype=bool)
    survivors = cascade_survivors([z1, z2, z3], mask, (40, 30, 20))
    np.testing.assert_array_equal(np.flatnonzero(survivors[0][0]), np.arange(1, 41))
    np.testing.assert_array_equal(np.flatnonzero(survivors[1][0]), np.arange(2, 32))
    np.testing.assert_array_equal(np.flatnonzero(survivors[2][0]), np.arange(3, 23))
    np.testing.assert_array_equal(np.flatnonzero(survivors[2][1]), np.arange(5, 25))
    np.testing.assert_array_equal(joint_recall([z1, z2, z3], labels, mask, (40, 30, 20)), [0.7, 0.5])

    f = funnel([z1, z2, z3], labels, mask, (40, 30, 20), stage_names=("retrieval", "prerank", "rank"))
    assert [st["stage"] for st in f["stages"]] == ["retrieval", "prerank", "rank"]
    assert [st["quota"] for st in f["stages"]] == [40, 30, 20]
    assert [st["gt_survivors_mean"] for st in f["stages"]] == [9.5, 9.0, 6.0]
    assert [st["gt_lost"] for st in f["stages"]] == [1, 1, 6]
    assert [st["gt_lost_share"] for st in f["stages"]] == [0.125, 0.125, 0.75]
    assert (f["gt_mean"], f["gt_total"], f["gt_lost_total"]) == (10.0, 20, 8)
    assert (f["requests"], f["skipped"]) == (2, 0)


def test_two_stage_funnel_counts():
    scores, labels = two_stage_example()
    f = funnel(scores, labels, None, (30, 20))
    assert [st["stage"] for st in f["stages"]] == ["stage_1", "stage_2"]
    assert [st["gt_survivors_mean"] for st in f["stages"]] == [9.0, 8.0]
    assert [st["gt_survivors_total"] for st in f["stages"]] == [9, 8]
    assert [st["gt_lost"] for st in f["stages"]] == [1, 1]
    assert [st["gt_lost_share"] for st in f["stages"]] == [0.5, 0.5]


def test_padding_is_never_selected_nor_ground_truth():
    """Slots 0..14 are padding with the largest labels and scores; the 25 valid slots have
    labels 40 - slot, so GT = slots 15..24. Retrieval keeps all 25 (quota 30 > 25); pre-rank
    prefers high slots and keeps 20..39, which holds GT slots 20..24: recall 0.5."""
    n = 40
    slot = np.arange(n, dtype=np.float64)
    mask = (slot >= 15)[None]
    labels = np.where(mask, 40 - slot, 100.0)
    z1 = np.where(mask, -slot, 1e9)
    z2 = np.where(mask, slot, 1e9)
    np.testing.assert_array_equal(np.flatnonzero(gt_mask(labels, mask)[0]), np.arange(15, 25))
    survivors = cascade_survivors([z1, z2], mask, (30, 20))
    np.testing.assert_array_equal(np.flatnonzero(survivors[0][0]), np.arange(15, 40))
    np.testing.assert_array_equal(np.flatnonzero(survivors[1][0]), np.arange(20, 40))
    np.testing.assert_array_equal(joint_recall([z1, z2], labels, mask, (30, 20)), [0.5])
    # Recall@10@m over valid slots only: retrieval's top 30 of 25 valid = all of them.
    np.testing.assert_array_equal(recall_at_k_m(z1, labels, mask, k=10, m=30), [1.0])


def test_padding_three_stage_and_gt_denominator():
    """8 valid slots of 50: |GT| = min(10, 8) = 8; every quota exceeds 8, so all survive."""
    labels = three_stage_labels()
    mask = np.zeros_like(labels, dtype=bool)
    mask[0, [0, 3, 11, 12, 25, 31, 44, 49]] = True
    z = np.random.default_rng(0).normal(size=(3, 1, 50))
    z[:, ~mask] = 1e6  # padding scores are the largest; they must not matter
    np.testing.assert_array_equal(gt_mask(labels, mask), mask)
    np.testing.assert_array_equal(joint_recall(list(z), labels, mask, (40, 30, 20)), [1.0])
    # A last quota of 4 keeps 4 of the 8 GT items: recall 4 / 8.
    np.testing.assert_array_equal(joint_recall(list(z), labels, mask, (40, 30, 4)), [0.5])


def test_recall_at_k_m_hand_computed():
    labels = np.array([[3, 2, 1, 0, 0, 0], [3, 2, 1, 0, 0, 0]])
    scores = np.array([[0.1, 0.9, 0.8, 0.7, 0.2, 0.3], [0.1, 0.9, 0.8, 0.7, 0.2, 0.3]])
    mask = np.array([[1, 1, 1, 1, 1, 1], [1, 0, 1, 1, 1, 1]])
    # row 0: GT = {0, 1}, top 3 = {1, 2, 3} -> 1/2; row 1 (slot 1 padding):
    # GT = {0, 2}, top 3 = {2, 3, 5} -> 1/2
    np.testing.assert_array_equal(recall_at_k_m(scores, labels, mask, k=2, m=3), [0.5, 0.5])
    # m = 5: row 0 top 5 misses only slot 0 -> 1/2; row 1 keeps all 5 valid -> 1
    np.testing.assert_array_equal(recall_at_k_m(scores, labels, mask, k=2, m=5), [0.5, 1.0])
    # k larger than the valid slots: |GT| = n_valid = 5, top 3 of row 1 = 3 of them
    np.testing.assert_array_equal(recall_at_k_m(scores, labels, mask, k=10, m=3), [0.5, 0.6])


def test_requests_without_valid_slots_are_nan_and_counted():
    labels = two_stage_labels(3)
    mask = np.ones_like(labels, dtype=bool)
    mask[1] = False
    z = -np.arange(40.0)[None].repeat(3, axis=0)
    jr = joint_recall([z, z], labels, mask, (30, 20))
    np.testing.assert_array_equal(np.isnan(jr), [False, True, False])
    assert np.isnan(recall_at_k_m(z, labels, mask, m=20)[1])
    assert np.isnan(ndcg_at_k(z, labels, mask)[1])
    assert request_mean(jr) == (1.0, 2, 1)
    assert request_mean(np.array([np.nan])).evaluated == 0 and math.isnan(request_mean([np.nan]).mean)
    f = funnel([z, z], labels, mask, (30, 20))
    assert (f["requests"], f["skipped"], f["gt_total"]) == (2, 1, 20)
    assert f["gt_lost_total"] == 0 and [st["gt_lost_share"] for st in f["stages"]] == [0.0, 0.0]
    assert not np.any(cascade_survivors([z, z], mask, (30, 20))[0][1])


# --------------------------------------------------------------------------- ties
def test_all_equal_scores_tie_break_is_seeded_and_not_slot_order():
    labels = two_stage_labels()
    mask = np.ones_like(labels)
    z = np.zeros((1, 40))
    picks = [np.flatnonzero(cascade_survivors([z, z], mask, (30, 20), tie_seed=s)[1][0]) for s in range(8)]
    assert all(p.size == 20 for p in picks)
    # same seed -> same selection
    np.testing.assert_array_equal(picks[0], np.flatnonzero(cascade_survivors([z, z], mask, (30, 20), tie_seed=0)[1][0]))
    # different seeds -> different selections, and never simply the first 20 slots
    assert len({tuple(p) for p in picks}) == 8
    assert not any(np.array_equal(p, np.arange(20)) for p in picks)


def test_constant_scorer_gets_chance_recall_not_the_slot_order_leak():
    """GT sits in the first slots; a slot-order tie-break would give a constant scorer
    recall 1.0. Seeded random ties give the chance level 20/40 = 0.5 (hypergeometric mean;
    the mean over 2000 requests has a standard deviation of about 0.003)."""
    labels = two_stage_labels(2000)
    z = np.zeros(labels.shape)
    jr = joint_recall([z, z], labels, None, (30, 20), tie_seed=3)
    assert abs(jr.mean() - 0.5) < 0.02
    assert abs(recall_at_k_m(z, labels, None, k=10, m=20, tie_seed=3).mean() - 0.5) < 0.02


def test_gt_and_score_tie_breaks_are_independent_streams():
    """All labels tied (GT = 10 random slots) and all scores tied: with one shared priority
    the cascade would keep exactly the GT slots (recall 1.0); independent streams give
    chance level 20/40."""
    labels = np.full((2000, 40), 7)
    z = np.zeros(labels.shape)
    jr = joint_recall([z, z], labels, None, (30, 20), tie_seed=0)
    assert abs(jr.mean() - 0.5) < 0.02
    a = tie_priority((2, 5), 0)
    np.testing.assert_array_equal(a, np.random.default_rng(0).random((2, 5)))
    np.testing.assert_array_equal(tie_priority((2, 5), 0, stream=1), np.random.default_rng([0, 1]).random((2, 5)))


def test_partial_tie_at_the_cut_off_uses_the_priority():
    scores = np.array([[5.0, 4.0, 4.0, 4.0, 1.0]])
    # keep 2: slot 0 surely, then one of the tied slots 1..3 - the lowest priority (slot 2)
    prio = np.array([[0.0, 0.9, 0.1, 0.5, 0.0]])
    surv = cascade_survivors([scores], None, (2,), priority=prio)[0]
    np.testing.assert_array_equal(surv, [[True, False, True, False, False]])
    # keep 3: slot 0 and slots 2, 3
    surv = cascade_survivors([scores], None, (3,), priority=prio)[0]
    np.testing.assert_array_equal(surv, [[True, False, True, True, False]])
    # the tie-break of the GT set is the same rule on labels, with its own priority
    g = gt_mask(scores, None, gt=2, gt_priority=np.array([[0.0, 0.2, 0.3, 0.1, 0.0]]))
    np.testing.assert_array_equal(g, [[True, False, False, True, False]])


def test_gt_mask_straddling_tie_group_is_seeded():
    """Only 5 of the top group are valid: GT = those 5 plus 5 of the ten label-7 slots."""
    labels = two_stage_labels()
    mask = np.ones_like(labels, dtype=bool)
    mask[0, 5:10] = False
    chosen = []
    for seed in range(20):
        g = gt_mask(labels, mask, gt=10, tie_seed=seed)[0]
        assert g.sum() == 10
        assert g[:5].all() and not g[5:10].any() and not g[20:].any()
        chosen.append(tuple(np.flatnonzero(g[10:20]) + 10))
        assert len(chosen[-1]) == 5
    np.testing.assert_array_equal(gt_mask(labels, mask, tie_seed=4), gt_mask(labels, mask, tie_seed=4))
    assert len(set(chosen)) > 10  # different seeds draw different members
    assert set().union(*chosen) == set(range(10, 20))  # no member is favoured by slot order
    # with an explicit priority the choice is the five lowest-priority label-7 slots
    prio = np.zeros((1, 40))
    prio[0, 10:20] = [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]
    g = gt_mask(labels, mask, gt_priority=prio)[0]
    np.testing.assert_array_equal(np.flatnonzero(g), [0, 1, 2, 3, 4, 15, 16, 17, 18, 19])


def test_quota_larger_than_available_keeps_all():
    z = np.random.default_rng(1).normal(size=(2, 6))
    mask = np.array([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=bool)
    s = cascade_survivors([z, z], mask, (4, 10))
    assert s[0][0].tolist() == mask[0].tolist() and s[0][1].sum() == 4
    np.testing.assert_array_equal(s[1], s[0])


# --------------------------------------------------------------------------- NDCG
def loop_ndcg(scores: np.ndarray, labels: np.ndarray, mask: np.ndarray, k: int) -> np.ndarray:
    """Independent, plain re-implementation of scikit-learn's tie-averaged NDCG@k over
    the valid slots of each request (McSherry & Najork: walk the distinct scores from the
    top; a tie group of size c starting at position p contributes its mean gain times the
    sum of the discounts of positions p .. p+c-1 that fall inside the top k)."""
    out = []
    for z, y, m in zip(scores, labels, mask):
        z, y = z[m.astype(bool)], y[m.astype(bool)].astype(float)
        if z.size == 0:
            out.append(float("nan"))
            continue
        disc = [1.0 / math.log2(r + 2) if r < k else 0.0 for r in range(len(z))]
        dcg, pos = 0.0, 0
        for value in sorted(set(z.tolist()), reverse=True):
            members = [i for i in range(len(z)) if z[i] == value]
            mean_gain = sum(y[i] for i in members) / len(members)
            dcg += mean_gain * sum(disc[pos:pos + len(members)])
            pos += len(members)
        ideal = sorted(y.tolist(), reverse=True)
        idcg = sum(g * d for g, d in zip(ideal, disc))
        out.append(dcg / idcg if idcg > 0 else 0.0)
    return np.array(out)


def test_ndcg_with_ties_hand_computed():
    log3 = math.log2(3)
    # slots 0 and 1 tie at the top: their mean gain 2.5 sits at ranks 1 and 2
    labels = np.array([[3.0, 2.0, 1.0, 0.0]])
    scores = np.array([[1.0, 1.0, 0.5, 0.0]])
    dcg = 2.5 + 2.5 / log3
    idcg = 3 + 2 / log3
    assert ndcg_at_k(scores, labels, None, k=2)[0] == pytest.approx(dcg / idcg, rel=1e-12)
    assert dcg / idcg == pytest.approx(0.956701, abs=1e-6)  # 4.077350 / 4.261860
    # a tie group straddling the cut-off counts with the positions inside it only:
    # group {1, 2, 3} (mean gain 1) occupies ranks 2..4, k = 2 keeps rank 2
    labels = np.array([[0.0, 3.0, 0.0, 0.0]])
    scores = np.array([[1.0, 0.5, 0.5, 0.5]])
    assert ndcg_at_k(scores, labels, None, k=2)[0] == pytest.approx((1 / log3) / 3, rel=1e-12)
    # with k = 10 the whole group counts: (1/log2 3 + 1/log2 4 + 1/log2 5) / 3
    expected = (1 / log3 + 1 / 2 + 1 / math.log2(5)) / 3
    assert ndcg_at_k(scores, labels, None, k=10)[0] == pytest.approx(expected, rel=1e-12)


def test_ndcg_without_ties_hand_computed():
    labels = np.array([[3.0, 0.0, 2.0]])
    scores = np.array([[0.2, 0.9, 0.5]])  # order: slot 1 (0), slot 2 (2), slot 0 (3)
    dcg = 0 + 2 / math.log2(3) + 3 / 2
    idcg = 3 + 2 / math.log2(3)
    assert ndcg_at_k(scores, labels, None, k=10)[0] == pytest.approx(dcg / idcg, rel=1e-12)
    assert ndcg_at_k(labels, labels, None, k=10)[0] == pytest.approx(1.0)


def test_ndcg_conventions_padding_zero_idcg_single_slot():
    # padding (largest label and score) changes nothing; NDCG is over valid slots only
    labels = np.array([[3.0, 0.0, 2.0, 99.0]])
    scores = np.array([[0.2, 0.9, 0.5, 9.0]])
    mask = np.array([[1, 1, 1, 0]])
    assert ndcg_at_k(scores, labels, mask)[0] == pytest.approx(ndcg_at_k(scores[:, :3], labels[:, :3], None)[0])
    # IDCG 0 -> NDCG 0 (scikit-learn convention); a single valid slot with gain -> 1
    assert ndcg_at_k(scores, np.zeros((1, 4)), None)[0] == 0.0
    assert ndcg_at_k(scores, labels, np.array([[1, 0, 0, 0]]))[0] == 1.0


def test_ndcg_matches_loop_reference_with_ties_and_padding():
    rng = np.random.default_rng(7)
    b, n = 300, 12
    scores = rng.integers(0, 4, size=(b, n)).astype(np.float64)  # many ties
    labels = rng.integers(0, 4, size=(b, n))
    mask = rng.random((b, n)) < 0.8
    mask[0] = False
    mask[1] = False
    mask[1, 3] = True
    for k in (1, 3, 10, 20):
        np.testing.assert_allclose(ndcg_at_k(scores, labels, mask, k=k), loop_ndcg(scores, labels, mask, k),
                                   rtol=1e-12, atol=1e-12, equal_nan=True)


# ------------------------------------------------------------- inputs and errors
def test_torch_inputs_match_numpy():
    rng = np.random.default_rng(2)
    labels = two_stage_labels(16)
    mask = rng.random(labels.shape) < 0.9
    z = rng.normal(size=(2, 16, 40)).astype(np.float32)
    expected = joint_recall(list(z), labels, mask, (30, 20))
    got = joint_recall([torch.from_numpy(x) for x in z], torch.from_numpy(labels), torch.from_numpy(mask), (30, 20))
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(
        ndcg_at_k(torch.from_numpy(z[1]).to(torch.bfloat16), torch.from_numpy(labels), torch.from_numpy(mask)).shape,
        (16,))
    np.testing.assert_allclose(ndcg_at_k(torch.from_numpy(z[1]), torch.from_numpy(labels), mask.astype(np.float32)),
                               ndcg_at_k(z[1], labels, mask))


def test_nan_score_is_an_error_only_at_valid_slots():
    labels = two_stage_labels()
    z = -np.arange(40.0)[None]
    mask = np.ones_like(labels, dtype=bool)
    mask[0, 39] = False
    padded_nan = z.copy()
    padded_nan[0, 39] = np.nan
    assert joint_recall([padded_nan, padded_nan], labels, mask, (30, 20))[0] == 1.0
    bad = z.copy()
    bad[0, 3] = np.nan
    with pytest.raises(NumericalError, match="NaN"):
        joint_recall([z, bad], labels, mask, (30, 20))
    with pytest.raises(NumericalError, match="NaN"):
        ndcg_at_k(bad, labels, mask)


def test_infinite_scores_rank_among_valid_slots_above_padding():
    scores = np.array([[-np.inf, np.inf, 0.0, 5.0]])
    mask = np.array([[1, 1, 1, 0]], dtype=bool)
    # keep 3: every valid slot, including the -inf one, never the padding
    np.testing.assert_array_equal(cascade_survivors([scores], mask, (3,))[0], [[True, True, True, False]])
    np.testing.assert_array_equal(cascade_survivors([scores], mask, (1,))[0], [[False, True, False, False]])
    labels = np.array([[1.0, 0.0, 0.0, 9.0]])
    # order +inf, 0, -inf: the only gain sits at rank 3
    assert ndcg_at_k(scores, labels, mask)[0] == pytest.approx(0.5)


@pytest.mark.parametrize("call,error,match", [
    (lambda z, y, m: joint_recall([z], y, m, (30, 20)), ConfigError, "1 stages"),
    (lambda z, y, m: joint_recall([z, z[:, :5]], y, m, (30, 20)), DataError, r"scores\[1\] has shape"),
    (lambda z, y, m: joint_recall(z, y, m, (30, 20)), DataError, "list of"),
    (lambda z, y, m: joint_recall([z, z], y, m[:, :3], (30, 20)), DataError, "mask has shape"),
    (lambda z, y, m: joint_recall([z, z], y, m, (30, 0)), ConfigError, "quota 2"),
    (lambda z, y, m: recall_at_k_m(z, y, m, k=0), ConfigError, "k must be"),
    (lambda z, y, m: recall_at_k_m(z, y, m, tie_seed=-1), ConfigError, "tie_seed"),
    (lambda z, y, m: ndcg_at_k(z, -y, m), DataError, "non-negative"),
    (lambda z, y, m: ndcg_at_k(z, y[0], m), DataError, r"\[B, N\]"),
    (lambda z, y, m: gt_mask(y, m, gt_priority=np.zeros((1, 3))), DataError, "gt_priority has shape"),
    (lambda z, y, m: cascade_survivors([z], m, (5,), priority=np.full(z.shape, np.inf)), DataError, "finite"),
])
def test_clear_errors(call, error, match):
    labels = two_stage_labels()
    with pytest.raises(error, match=match):
        call(-np.arange(40.0)[None], labels, np.ones_like(labels))


# --------------------------------------------------------------- batch evaluation
def test_cascade_metrics_equals_the_single_functions_and_concat():
    rng = np.random.default_rng(5)
    labels = three_stage_labels(64)
    mask = rng.random(labels.shape) < 0.85
    mask[3] = False
    z = rng.integers(0, 6, size=(3, 64, 50)).astype(np.float32)  # ties everywhere
    quotas = (40, 30, 20)
    m = cascade_metrics(list(z), labels, mask, quotas, tie_seed=11)
    np.testing.assert_array_equal(m.joint_recall, joint_recall(list(z), labels, mask, quotas, tie_seed=11))
    for s in range(3):
        np.testing.assert_array_equal(m.recall_at_k_m[s], recall_at_k_m(z[s], labels, mask, 10, quotas[s], tie_seed=11))
        np.testing.assert_array_equal(m.ndcg_at_k[s], ndcg_at_k(z[s], labels, mask))
    f = funnel(list(z), labels, mask, quotas, tie_seed=11)
    assert summarize_funnel(m.gt_survivors, m.gt_size, quotas) == f
    both = RequestMetrics.concat([m, m])
    assert both.joint_recall.shape == (128,) and both.recall_at_k_m.shape == (3, 128)
    assert both.gt_survivors.shape == (3, 128) and both.ndcg_at_k.shape == (3, 128)
    with pytest.raises(ConfigError):
        RequestMetrics.concat([])


def test_results_do_not_depend_on_the_row_blocking(monkeypatch):
    """Batches are processed in row blocks; ties (resolved by the whole batch's seeded
    priority) and padding must come out the same with any block size."""
    import lcron.metrics as metrics

    rng = np.random.default_rng(9)
    labels = two_stage_labels(50)
    mask = rng.random(labels.shape) < 0.8
    z = rng.integers(0, 5, size=(2, 50, 40)).astype(np.float64)
    before = (cascade_metrics(list(z), labels, mask, (30, 20), tie_seed=2), gt_mask(labels, mask, tie_seed=2),
              cascade_survivors(list(z), mask, (30, 20), tie_seed=2), joint_recall(list(z), labels, mask, tie_seed=2))
    monkeypatch.setattr(metrics, "CHUNK_ROWS", 7)
    after = (cascade_metrics(list(z), labels, mask, (30, 20), tie_seed=2), gt_mask(labels, mask, tie_seed=2),
             cascade_survivors(list(z), mask, (30, 20), tie_seed=2), joint_recall(list(z), labels, mask, tie_seed=2))
    for field in ("joint_recall", "recall_at_k_m", "ndcg_at_k", "gt_size", "gt_survivors"):
        np.testing.assert_array_equal(getattr(before[0], field), getattr(after[0], field))
    np.testing.assert_array_equal(before[1], after[1])
    for a, b in zip(before[2], after[2]):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(before[3], after[3])


def test_empty_batch_gives_empty_results():
    labels = np.zeros((0, 40))
    z = np.zeros((0, 40))
    assert joint_recall([z, z], labels, None, (30, 20)).shape == (0,)
    assert recall_at_k_m(z, labels, None).shape == (0,)
    assert ndcg_at_k(z, labels, None).shape == (0,)
    assert gt_mask(labels, None).shape == (0, 40)
    assert cascade_metrics([z, z], labels, None, (30, 20)).recall_at_k_m.shape == (2, 0)
    f = funnel([z, z], labels, None, (30, 20))
    assert (f["requests"], f["skipped"]) == (0, 0) and math.isnan(f["gt_mean"])
