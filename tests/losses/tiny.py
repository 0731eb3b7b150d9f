"""Small cascades (N = 6) and batches with padding for hand-checkable loss tests."""

from __future__ import annotations

import numpy as np
import torch

from lcron.settings import Setting

# Two-stage: groups of 2 slots -> N = 6; retrieval keeps 4, pre-rank 2; GT = top 2.
TINY2 = Setting.from_dict({
    "base": "two_stage", "name": "tiny2", "groups": ["rank_pos", "rank_neg", "coarse_neg"],
    "group_size": 2, "quotas": [4, 2], "bce_groups": [3, 2], "gt_size": 2,
})
# Three-stage: N = 6; retrieval keeps 5, pre-rank 4, rank 2; GT = top 2.
TINY3 = Setting.from_dict({
    "base": "three_stage", "name": "tiny3", "groups": ["rerank_pos", "rerank_neg", "rank_neg"],
    "group_size": 2, "quotas": [5, 4, 2], "bce_groups": [3, 2, 1], "gt_size": 2,
})
TINY = {"tiny2": TINY2, "tiny3": TINY3}

# Graded labels in the spec's layout (top group 30 - position, then group constants), and
# masks: a full request, one with two padding slots (a tie of 7s/8s then straddles the GT
# boundary), one with 4 valid slots (at most the first quota: single-stage terms skip it).
LABELS = {
    "tiny2": [[29, 30, 7, 7, 6, 6], [30, 29, 7, 7, 6, 6], [30, 29, 7, 7, 6, 6]],
    "tiny3": [[28, 30, 8, 8, 7, 7], [30, 28, 8, 8, 7, 7], [30, 29, 8, 8, 7, 7]],
}
MASKS = [[1, 1, 1, 1, 1, 1], [1, 0, 1, 1, 0, 1], [1, 1, 0, 1, 0, 1]]


def batch(name: str, seed: int = 0, scale: float = 1.5):
    """(z as nested lists per stage, labels, mask) with distinct random logits."""
    setting = TINY[name]
    rng = np.random.default_rng(seed)
    z = [(rng.standard_normal((3, 6)) * scale).tolist() for _ in range(setting.num_stages)]
    return z, LABELS[name], MASKS


def as_tensors(z, y, mask, dtype=torch.float64, requires_grad=True):
    zt = [torch.tensor(v, dtype=dtype, requires_grad=requires_grad) for v in z]
    return zt, torch.tensor(y), torch.tensor(mask)


def numeric_grad(fn, z, eps: float = 1e-6):
    """Central differences of ``fn(z)`` w.r.t. every entry of every stage's logits."""
    grads = []
    for s in range(len(z)):
        g = np.zeros((len(z[s]), len(z[s][0])))
        for b in range(len(z[s])):
            for i in range(len(z[s][0])):
                up = [[row[:] for row in stage] for stage in z]
                dn = [[row[:] for row in stage] for stage in z]
                up[s][b][i] += eps
                dn[s][b][i] -= eps
                g[b, i] = (fn(up) - fn(dn)) / (2 * eps)
        grads.append(g)
    return grads


def set_weights(loss, values) -> None:
    """Set a loss's learned per-stage weights (first stage first)."""
    with torch.no_grad():
        for name, v in zip(loss.setting.stage_names, values):
            loss.weights[name].fill_(float(v))
