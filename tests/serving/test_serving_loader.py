"""The serving cascade core shared by the evaluation and the exported loader, by hand."""

from __future__ import annotations

import math

import numpy as np

import pytest
import torch

from lcron.serving.loader import ExportError, compact, keep_top, run_cascade, score_items


def test_keep_top_keeps_the_largest_alive_scores():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.7, 0.3], [5.0, 4.0, 3.0, 2.0, 1.0]])
    alive = torch.tensor([[True, True, True, False, True], [False, False, True, True, True]])
    prio = torch.zeros(2, 5)
    got = keep_top(scores, alive, 2, prio)
    # row 0: alive scores .1 .9 .5 .3 -> slots 1, 2 (slot 3 has .7 but is dead)
    # row 1: alive 3, 2, 1 -> slots 2, 3
    assert got.tolist() == [[False, True, True, False, False], [False, False, True, True, False]]


def test_keep_top_with_fewer_alive_than_the_quota_keeps_them_all():
    scores = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    alive = torch.tensor([[True, False, False, True]])
    assert keep_top(scores, alive, 3, torch.zeros(1, 4)).tolist() == [[True, False, False, True]]
    # a dead entry with a -inf key never displaces an alive -inf score
    scores = torch.tensor([[0.0, 0.0, -math.inf]])
    alive = torch.tensor([[False, False, True]])
    assert keep_top(scores, alive, 1, torch.zeros(1, 3)).tolist() == [[False, False, True]]


def test_keep_top_breaks_ties_by_priority_not_position():
    scores = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    alive = torch.ones(1, 4, dtype=torch.bool)
    assert keep_top(scores, alive, 1, torch.tensor([[0.5, 0.2, 0.9, 0.0]])).tolist() == [[False, True, False, False]]
    assert keep_top(scores, alive, 2, torch.tensor([[0.5, 0.2, 0.1, 0.0]])).tolist() == [[False, True, True, False]]


def test_keep_top_refuses_nan_for_live_candidates():
    with pytest.raises(ExportError, match="NaN"):
        keep_top(torch.tensor([[float("nan"), 1.0, 2.0]]), torch.ones(1, 3, dtype=torch.bool), 1, torch.zeros(1, 3))


def test_compact_lists_alive_positions_first():
    pos, valid = compact(torch.tensor([[False, True, False, True], [True, False, False, False]]))
    assert pos[0].tolist() == [1, 3]
    assert pos[1, 0].item() == 0 and valid.tolist() == [[True, True], [True, False]]


def _stage(weights):
    """A fake stage model: score = item column 0 * weight (so scores are known by hand)."""
    def fn(context, user, seq, seq_mask, items):
        return items[..., 0].float() * weights
    return fn


def test_run_cascade_scores_only_the_survivors_of_the_previous_stage():
    calls = []

    def recording(weight):
        inner = _stage(weight)

        def fn(*args):
            calls.append(args[-1].shape[1])
            return inner(*args)
        return fn

    items = torch.zeros(1, 6, 8, dtype=torch.long)
    items[0, :, 0] = torch.tensor([3, 1, 6, 2, 5, 4])
    req = {k: torch.zeros(1, 1, dtype=torch.long) for k in ("context", "user", "seq", "seq_mask")}
    alive = torch.ones(1, 6, dtype=torch.bool)
    prio = torch.zeros(1, 6)
    # stage A prefers large ids, keeps 4 (ids 6, 5, 4, 3 at slots 2, 4, 5, 0);
    # stage B prefers small ids, keeps 2 of those (ids 3, 4 at slots 0, 5)
    survivors, scores = run_cascade([recording(1.0), recording(-1.0)], [4, 2], req, items, alive, prio)
    assert survivors[0].tolist() == [[True, False, True, False, True, True]]
    assert survivors[1].tolist() == [[True, False, False, False, False, True]]
    assert calls == [6, 4]  # stage B saw only stage A's four survivors
    assert torch.isnan(scores[1][0, [1, 3]]).all() and scores[1][0, 0].item() == -3.0
    # precomputed first-stage scores are used as given (restricted to the alive prefix)
    prefix = torch.tensor([[True, True, True, False, False, False]])
    survivors, _ = run_cascade([_stage(1.0), _stage(-1.0)], [2, 1], req, items, prefix, prio,
                               first_scores=items[..., 0].float())
    assert survivors[0].tolist() == [[True, False, True, False, False, False]]
    assert survivors[1].tolist() == [[True, False, False, False, False, False]]


def test_score_items_chunks_give_the_same_scores():
    items = torch.randint(1, 9, (7, 5, 8))
    req = {k: torch.zeros(7, 1, dtype=torch.long) for k in ("context", "user", "seq", "seq_mask")}
    whole = score_items(_stage(2.0), req, items, max_slots=10_000)
    assert torch.equal(whole, score_items(_stage(2.0), req, items, max_slots=6))  # one request per chunk
    assert torch.equal(whole, items[..., 0].float() * 2.0)


def test_serving_and_evaluation_break_the_same_ties_the_same_way():
    """Many tied scores at each cut-off: the serving cascade (torch, keep_top) and the
    evaluation's cascade (numpy, metrics.cascade_survivors) keep the same candidates for the
    same seed, and another seed keeps others - the tie-break is the shared seeded draw, not
    the position."""
    from lcron import metrics
    from lcron.serving.loader import tie_priority

    rng = np.random.default_rng(5)
    b, k, quotas = 64, 30, (12, 5)
    z1 = rng.integers(0, 3, (b, k)).astype(np.float32)  # three score levels: ties straddle every cut
    z2 = rng.integers(0, 2, (b, k)).astype(np.float32)
    alive = np.ones((b, k), bool)
    for seed in (0, 7):
        want = metrics.cascade_survivors([z1, z2], alive, quotas, tie_seed=seed)
        priority = tie_priority((b, k), seed)
        np.testing.assert_array_equal(priority.numpy(), metrics.tie_priority((b, k), seed))
        first = keep_top(torch.from_numpy(z1), torch.from_numpy(alive), quotas[0], priority)
        second = keep_top(torch.from_numpy(z2), first, quotas[1], priority)
        np.testing.assert_array_equal(first.numpy(), want[0])
        np.testing.assert_array_equal(second.numpy(), want[1])
    other = metrics.cascade_survivors([z1, z2], alive, quotas, tie_seed=7)[1]
    assert (other != metrics.cascade_survivors([z1, z2], alive, quotas, tie_seed=0)[1]).any()


def test_the_stand_alone_loader_names_the_request_inputs_of_the_library():
    """loader.py spells the request inputs out (it also runs without lcron installed); they
    must stay the library's one list."""
    from lcron.data import fields
    from lcron.serving import loader

    assert loader.REQUEST_INPUTS == fields.REQUEST_INPUTS
    assert fields.MODEL_INPUTS == fields.REQUEST_INPUTS + ("items",)
