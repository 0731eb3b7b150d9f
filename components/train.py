"""The train step: every seed of one method on one shard set, into one Model artifact.

The Model artifact is the trainer's run folder (run.json, seed-<n>/model.pt, per-day
streaming snapshots, train logs). All seeds train inside this one step, so the DAG needs no
fan-in (``dsl.Collected``), which kfp.local cannot run.

``run_record`` (Dataset) is the part of that folder the report reads - run.json and every
seed's summary.json and train_log.jsonl (:func:`lcron.report.copy_run_record`), no weights -
so the report step (1 CPU, 4 GB) downloads kilobytes to megabytes instead of every seed's
model.pt (gigabytes at RecFlow vocabularies). Evaluate and serving still take ``model``.
"""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components.common import COMPONENT_OPTIONS


@dsl.component(**COMPONENT_OPTIONS)
def train(
    shards: Input[Dataset],
    method: str,
    loss_options: dict,
    seeds: list,
    batch_size: int,
    lr: float,
    dim: int,
    days: str,
    max_steps_per_day: int,
    device: str,
    compile: bool,
    model: Output[Model],
    run_record: Output[Dataset],
    reference_quirks: bool = False,
    embedding_optimizer: str = "auto",
    day_snapshots: bool = False,
):
    """Train ``method`` for each seed; ``days`` "" = every shard day but the last; ``max_steps_per_day`` 0 = no cap.
    ``run_record``: the run's configuration, summaries and logs for the report, without weights."""
    from lcron.report import copy_run_record
    from lcron.train import TrainConfig
    from lcron.train import train as fit

    config = TrainConfig(method=method, loss_options=dict(loss_options), batch_size=batch_size, lr=lr,
                         seeds=tuple(int(s) for s in seeds), days=days or None, device=device, compile=compile,
                         dim=dim, reference_quirks=reference_quirks, embedding_optimizer=embedding_optimizer,
                         day_snapshots=day_snapshots)
    results = fit(shards.path, model.path, config, max_steps_per_day=max_steps_per_day or None, overwrite=True)
    model.metadata["framework"] = "pytorch"
    model.metadata["method"] = method
    model.metadata["reference_quirks"] = reference_quirks
    model.metadata["seeds"] = [r.seed for r in results]
    model.metadata["steps"] = {str(r.seed): r.summary.get("steps") for r in results}
    model.metadata["final_loss"] = {str(r.seed): r.summary.get("final_loss") for r in results}
    record = copy_run_record(model.path, run_record.path)
    run_record.metadata["method"] = method
    run_record.metadata["seeds"] = model.metadata["seeds"]
    run_record.metadata["files"] = len(record)
