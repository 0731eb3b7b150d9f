"""The evaluation's numbers from one seed's fixed scores: per-request values, means, funnel, sweep.

Every number comes from :mod:`lcron.metrics` (METHODS.md section 6); this module only
names them with the keys of metrics.json (:func:`lcron.evaluation.results.metric_keys`).
:mod:`lcron.reference_policy.protocol` mirrors these functions for the reference's protocol.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from .. import metrics
from ..settings import Setting

NDCG_K = 10


def request_metrics(scores: Sequence[np.ndarray], labels: np.ndarray, mask: np.ndarray, setting: Setting,
                    tie_seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, float], dict[str, Any]]:
    """Per-request values ([R] per key, NaN for a request without valid slot), the per-key
    means over requests, and the GT funnel summary, for one seed's scores."""
    rm = metrics.cascade_metrics(scores, labels, mask, setting.quotas, gt=setting.gt_size, ndcg_k=NDCG_K,
                                 tie_seed=tie_seed)
    skipped = rm.gt_size == 0
    per: dict[str, np.ndarray] = {"joint_recall": rm.joint_recall}
    for s, name in enumerate(setting.stage_names):
        per[f"recall_at_10_m/{name}"] = rm.recall_at_k_m[s]
        per[f"ndcg_at_10/{name}"] = rm.ndcg_at_k[s]
    for s, name in enumerate(setting.stage_names):
        per[f"funnel/gt_after/{name}"] = np.where(skipped, np.nan, rm.gt_survivors[s].astype(np.float64))
    funnel = metrics.summarize_funnel(rm.gt_survivors, rm.gt_size, setting.quotas, setting.stage_names)
    means = {k: metrics.request_mean(v).mean for k, v in per.items()}
    for st in funnel["stages"]:
        means[f"funnel/lost_share/{st['stage']}"] = st["gt_lost_share"] if funnel["gt_lost_total"] else math.nan
    return per, means, funnel


def items_scored(mask: np.ndarray, quotas: Sequence[int]) -> np.ndarray:
    """Mean number of items each stage scores per request (requests with a valid slot):
    stage 1 scores the n valid slots, stage s the min(quota_{s-1}, n) survivors of stage s-1."""
    n = np.asarray(mask).astype(bool).sum(axis=1)
    n = n[n > 0].astype(np.float64)
    if n.size == 0:
        return np.full(len(quotas), np.nan)
    cols = [n] + [np.minimum(q, n) for q in quotas[:-1]]
    return np.array([c.mean() for c in cols])


def quota_sweep_values(scores: Sequence[np.ndarray], labels: np.ndarray, mask: np.ndarray, setting: Setting,
                       grid: Sequence[Sequence[int]], tie_seed: int = 0) -> np.ndarray:
    """Mean end-to-end recall of one seed's fixed scores for each quota tuple of ``grid`` ([G])."""
    return np.array([
        metrics.request_mean(metrics.joint_recall(scores, labels, mask, tuple(q), gt=setting.gt_size,
                                                  tie_seed=tie_seed)).mean
        for q in grid
    ])
