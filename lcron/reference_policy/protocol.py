"""The published experiments' evaluation protocol (``lcron evaluate --reference-quirks``).

METHODS.md section 7: "Evaluation in the reference also drops the test day's last partial
batch, lets padding slots be selected, and divides recall by 10 even for shorter lists."
Concretely, against this project's protocol (section 6):

* only the first ``floor(R / batch) * batch`` requests of each test day are evaluated
  (``batch`` = the run's training batch size; the reference's test loader drops the last
  partial batch, in data order);
* every top-m selection - the cascade and each stage's Recall@10@m - runs over all N
  slots, padding included (padding slots carry the model's logit for an all-padding
  candidate and can take a quota place; they are never GT);
* recall = |selected intersect GT| / 10 for every request (GT = the min(10, n) valid slots
  with the largest labels, as in the default protocol), so a request with fewer than 10
  valid slots cannot reach 1 and a request without any counts 0 instead of being skipped;
* NDCG@10 is computed over all N slots (padding has gain 0 but takes rank positions).

Tie-breaks are the default protocol's seeded ones, so the two protocols differ only in
the three points above. Functions mirror :func:`lcron.evaluation.per_request.request_metrics` and
:func:`lcron.evaluation.per_request.quota_sweep_values` (same keys, same shapes).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from lcron import metrics
from lcron.errors import DataError
from lcron.settings import Setting

REFERENCE_GT = 10


def full_batches(arrays: Mapping[str, np.ndarray], batch_size: int, *, where: str = "") -> dict[str, np.ndarray]:
    """The day's arrays cut to its full batches of ``batch_size`` requests (a view, no copy)."""
    r = len(arrays["label"])
    keep = (r // int(batch_size)) * int(batch_size)
    if keep == 0:
        raise DataError(f"{where or 'test day'}: {r} requests, fewer than one batch of {batch_size}; the reference "
                        "protocol evaluates full batches only (drop --reference-quirks, or use a larger test day)")
    return {k: v[:keep] for k, v in arrays.items()}


def _hits(selected: np.ndarray, gt: np.ndarray) -> np.ndarray:
    return np.count_nonzero(selected & gt, axis=1).astype(np.float64)


def request_metrics(scores: Sequence[np.ndarray], labels: np.ndarray, mask: np.ndarray, setting: Setting,
                    tie_seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, float], dict[str, Any]]:
    """Per-request values, their means and the GT funnel under the reference protocol (module docstring)."""
    everything = np.ones(np.shape(mask), dtype=bool)
    gt = metrics.gt_mask(labels, mask, gt=setting.gt_size, tie_seed=tie_seed)
    survivors = metrics.cascade_survivors(scores, everything, setting.quotas, tie_seed=tie_seed)
    per: dict[str, np.ndarray] = {"joint_recall": _hits(survivors[-1], gt) / REFERENCE_GT}
    for z, q, name in zip(scores, setting.quotas, setting.stage_names):
        top = metrics.cascade_survivors([z], everything, (q,), tie_seed=tie_seed)[0]
        per[f"recall_at_10_m/{name}"] = _hits(top, gt) / REFERENCE_GT
    for z, name in zip(scores, setting.stage_names):
        per[f"ndcg_at_10/{name}"] = metrics.ndcg_at_k(z, labels, everything, k=10)
    gt_size = np.count_nonzero(gt, axis=1)
    gt_survivors = np.stack([np.count_nonzero(alive & gt, axis=1) for alive in survivors])
    for s, name in enumerate(setting.stage_names):
        per[f"funnel/gt_after/{name}"] = np.where(gt_size == 0, np.nan, gt_survivors[s].astype(np.float64))
    funnel = metrics.summarize_funnel(gt_survivors, gt_size, setting.quotas, setting.stage_names)
    means = {k: metrics.request_mean(v).mean for k, v in per.items()}
    for st in funnel["stages"]:
        means[f"funnel/lost_share/{st['stage']}"] = st["gt_lost_share"] if funnel["gt_lost_total"] else math.nan
    return per, means, funnel


def quota_sweep_values(scores: Sequence[np.ndarray], labels: np.ndarray, mask: np.ndarray, setting: Setting,
                       grid: Sequence[Sequence[int]], tie_seed: int = 0) -> np.ndarray:
    """Mean end-to-end recall under the reference protocol for each quota tuple of ``grid`` ([G])."""
    everything = np.ones(np.shape(mask), dtype=bool)
    gt = metrics.gt_mask(labels, mask, gt=setting.gt_size, tie_seed=tie_seed)
    return np.array([
        float((_hits(metrics.cascade_survivors(scores, everything, tuple(q), tie_seed=tie_seed)[-1], gt)
               / REFERENCE_GT).mean())
        for q in grid
    ])
