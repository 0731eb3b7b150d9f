"""The evaluate step: every trained seed on the test day(s); scalar means to a Metrics artifact.

The Metrics artifact holds the mean, sample std and seed count of every metric (end-to-end
recall, per-stage Recall@10@m and NDCG@10, funnel), stages named by position and model
(``recall_at_10_m/s2_din``), undefined values as -1 with their names in the evaluation's
metadata (lcron.evaluation.results.kfp_metrics), so the KFP UI compares runs column by
column; the full evaluation (per seed, per request, quota sweep) is the Dataset artifact.
"""

from typing import Optional

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.common import COMPONENT_OPTIONS


@dsl.component(**COMPONENT_OPTIONS)
def evaluate(
    model: Input[Model],
    shards: Input[Dataset],
    days: str,
    streaming: bool,
    batch_size: int,
    device: str,
    compile: bool,
    tie_seed: int,
    evaluation: Output[Dataset],
    metrics: Output[Metrics],
    reference_quirks: Optional[bool] = None,
):
    """Evaluate the run in ``model`` on ``shards``; ``days`` "" = the shard set's last day,
    ``batch_size`` 0 = the device's default, ``reference_quirks`` None = the run's mode."""
    from lcron.evaluate import evaluate as run_evaluation
    from lcron.evaluation.results import kfp_metrics

    result = run_evaluation(model.path, shards.path, evaluation.path, days=days or None, streaming=streaming,
                            batch_size=batch_size or None, device=device, compile=compile, tie_seed=tie_seed,
                            overwrite=True, reference_quirks=reference_quirks)
    values, missing = kfp_metrics(result)  # mean, std and n of every metric; undefined ones explicit
    for key, value in values.items():
        metrics.log_metric(key, value)
    evaluation.metadata["undefined_metrics"] = missing
    evaluation.metadata["method"] = result["method"]
    evaluation.metadata["setting"] = result["setting"]
    evaluation.metadata["reference_quirks"] = result["reference_quirks"]
    evaluation.metadata["days"] = result["days"]
    evaluation.metadata["seeds"] = result["seeds"]
