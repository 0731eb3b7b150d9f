"""The serving step: the trained cascade retrieving from the whole item corpus (optional).

Calls :func:`lcron.serving.evaluate.serving_evaluate` for every trained seed and writes
``serving.json`` into the ``serving`` Dataset artifact; the mean over seeds of every
number (``serving/joint_recall@K1=100`` style keys, see
:func:`lcron.report.serving_metric_means`) goes to the ``metrics`` Metrics artifact.

Where it runs (pipelines/cascade_pipeline.py): in the cluster packages the step sits in a
``dsl.If(serving_eval == True)`` branch, so a run without the serving evaluation schedules
no serving pod at all (no GPU request, no download of the shards and models). kfp.local
2.16.1 cannot run that branch (its condition never evaluates, docs/pipeline.md), so the
package for local runs has the step unconditionally and passes ``serving_eval`` as
``enabled``: with ``enabled`` false the step only writes a small marker file
(``serving_skipped.json``) and logs no metric, and the report finds no ``serving.json`` in
the artifact and leaves its serving section out. In the cluster packages ``enabled`` is the
same ``serving_eval``, true whenever the branch runs.
"""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.common import COMPONENT_OPTIONS


@dsl.component(**COMPONENT_OPTIONS)
def serving(
    model: Input[Model],
    shards: Input[Dataset],
    enabled: bool,
    k1: list,
    index: str,
    index_options: dict,
    day: str,
    batch_size: int,
    device: str,
    compile: bool,
    tie_seed: int,
    serving: Output[Dataset],
    metrics: Output[Metrics],
):
    """Serving-style evaluation of the run in ``model`` on the test ``day`` ("" = the shard set's
    last day) at each K1 in ``k1``, with the faiss ``index`` (auto, flat, ivf or hnsw); a marker only
    when ``enabled`` is false."""
    import os

    from lcron import atomic
    from lcron.evaluation.serving_results import serving_metric_means
    from lcron.serving.evaluate import serving_evaluate

    if not enabled:
        # Only in the kfp.local package. A file, not an empty folder: an object store keeps
        # no empty folder, and the report step reads this artifact either way.
        atomic.write_json(os.path.join(serving.path, "serving_skipped.json"),
                          {"kind": "lcron-serving-skipped", "reason": "the pipeline ran with serving_eval=false"})
        serving.metadata["skipped"] = True
        return
    # KFP passes the numbers of a dict parameter as floats (a protobuf Struct); the index
    # options are integers.
    options = {k: int(v) if isinstance(v, float) and v.is_integer() else v for k, v in index_options.items()}
    doc = serving_evaluate(model.path, shards.path, day=day or None, k1=[int(k) for k in k1], index=index,
                           index_options=options, batch_size=batch_size, device=device,
                           compile=compile, tie_seed=tie_seed, out=serving.path, overwrite=True)
    for key, value in serving_metric_means(doc).items():
        metrics.log_metric(key, value)
    serving.metadata["skipped"] = False
    serving.metadata["day"] = doc["day"]
    serving.metadata["k1"] = doc["k1"]
    serving.metadata["index"] = doc["index"].get("kind")
    serving.metadata["seeds"] = doc["seeds"]
