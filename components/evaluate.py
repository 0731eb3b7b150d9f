"""The evaluate step: every trained seed on the test day(s); scalar means to a Metrics artifact.

The Metrics artifact holds the mean over seeds of every metric (end-to-end recall,
per-stage Recall@10@m and NDCG@10, funnel), so the KFP UI can compare runs side by side;
the full evaluation (std, n, per seed, per request, quota sweep) is the Dataset artifact.
"""

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
    reference_quirks: bool = False,
):
    """Evaluate the run in ``model`` on ``shards``; ``days`` "" = the shard set's last day,
    ``batch_size`` 0 = the device's default."""
    import math

    from lcron.evaluate import evaluate as run_evaluation

    result = run_evaluation(model.path, shards.path, evaluation.path, days=days or None, streaming=streaming,
                            batch_size=batch_size or None, device=device, compile=compile, tie_seed=tie_seed,
                            overwrite=True, reference_quirks=reference_quirks)
    for key, entry in result["metrics"].items():
        mean = entry.get("mean")
        if mean is not None and math.isfinite(mean):  # a NaN is not valid JSON for the UI
            metrics.log_metric(key, float(mean))
    evaluation.metadata["method"] = result["method"]
    evaluation.metadata["setting"] = result["setting"]
    evaluation.metadata["reference_quirks"] = result["reference_quirks"]
    evaluation.metadata["days"] = result["days"]
    evaluation.metadata["seeds"] = result["seeds"]
