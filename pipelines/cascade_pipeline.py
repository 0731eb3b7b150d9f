"""The DAG for one method / cascade configuration.

    fingerprint (never cached) -> ingest -> preprocess -> train -> evaluate -> [serving] -> report

``serving`` is the serving-style evaluation (the cascade retrieving from the whole item
corpus). It costs minutes on real data and a GPU in the GPU package, so it runs only with
``serving_eval=true``. How depends on where the package runs, a compile-time choice
(``build_pipeline(local=...)``):

- cluster packages (``local=False``; ``cascade-cpu.yaml``, ``cascade-gpu.yaml``): the step
  sits in ``dsl.If(serving_eval == True)``, with a report task in that branch (taking the
  serving artifact) and one in the ``dsl.Else`` branch (without it); the report pages are
  pipeline outputs through ``dsl.OneOf``. A run without ``serving_eval`` schedules no
  serving pod: no GPU request, no download of the shards and models.
- the kfp.local package (``local=True``; ``cascade-local.yaml``, what ``pipelines.run_local``
  and ``pipelines.sweep_local`` run): kfp.local 2.16.1 runs none of that. A root-level
  ``dsl.If`` branch never runs (its condition, ``inputs.parameter_values[...] == true``, is
  not Python, so kfp.local's evaluator fails and skips the branch even when true), an
  ``If``/``Else`` pair is handed to the plain orchestrator, which ignores conditions and
  runs both branches, and ``dsl.OneOf`` outputs raise. So here the serving step is always a
  task that gets ``serving_eval`` as ``enabled`` (false: it writes only a marker), and one
  report task always takes its artifact. The local package also keeps the serving artifact
  and metrics as pipeline outputs, which ``pipelines.run_local`` prints.

Both shapes come from one function, so the steps, parameters and wiring cannot drift apart;
``tests/pipeline/test_compile.py`` checks both packages, ``test_local_run.py`` runs the
local one. ``pipelines.run_local`` refuses a cluster package (it would run both branches).

The report step takes the train step's ``run_record`` (run.json, the seeds' summaries and
train logs), never ``model``: it downloads no weights (components/report.py).

Caching (KFP v2 keys a step on its parameters and its input artifacts' identities, not on
the bytes behind a URI): ``fingerprint`` runs on every submission and outputs a string
that changes exactly when the chosen data changes; ``ingest`` takes it as a parameter, so
unchanged data is a cache hit that returns the *same* ingest artifact, and ``preprocess``
(keyed by that artifact and the setting) is then a cache hit too. Sixteen runs over the
same data (8 methods x 2 settings) therefore share one ingest and one shard set per
setting, while changed data can never be served from the cache. The ingest artifact is a
reference to the source (``ingest.json``; preprocessing reads the source itself and checks
it is unchanged) unless ``ingest_copy`` is true. docs/pipeline.md has the long version.

``reference_quirks`` (docs/reference.md) is the one switch of reference mode: preprocess,
train and evaluate all receive it, so the shards, the models and the evaluation protocol
follow the published experiments together (and preprocess is cached per mode).

The image is fixed at compile time, hence :func:`build_pipeline` builds a CPU or a GPU
variant (GPU: the GPU image on every step and an accelerator request on train, evaluate
and serving). Kubernetes settings (secrets, GPU node pool, retries, timeouts, labels, disk)
are compile-time options too (pipelines/kubernetes.py); by default there are none.
"""

from typing import Callable, Mapping, NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Dataset, Markdown, Metrics, Model

from components import evaluate, fingerprint, ingest, preprocess, report, serving, train
from components.common import CPU_IMAGE
from lcron.defaults import PREPROCESS, SYNTHETIC, TRAIN
from lcron.serving.config import ServeEvalConfig
from pipelines import kubernetes as k8s
from pipelines import resources as step_resources

PIPELINE_NAME = "lcron-cascade"
DEFAULT_SEEDS = list(TRAIN.pipeline_seeds)  # METHODS.md section 3: mean and std over 5 seeds


class PipelineOutputs(NamedTuple):
    """Outputs of a cluster package. The serving artifacts are not among them: a pipeline
    output from inside the ``dsl.If`` branch would need a producer in every branch
    (``dsl.OneOf``), and a run without ``serving_eval`` has none; the serving task shows
    its artifacts in the run's graph."""

    metrics: Metrics
    report: HTML
    report_markdown: Markdown
    report_files: Dataset
    evaluation: Dataset
    model: Model


# Outputs of the kfp.local package: those of a cluster package and the serving step's
# artifact and metrics (always present there; only a marker and no metric without
# ``serving_eval``), which ``pipelines.run_local`` reads. Built from PipelineOutputs' fields
# so the two packages cannot come to disagree on the outputs they share.
LocalPipelineOutputs = NamedTuple("LocalPipelineOutputs", [*PipelineOutputs.__annotations__.items(),
                                                           ("serving", Dataset), ("serving_metrics", Metrics)])


def build_pipeline(image: str = CPU_IMAGE, *, accelerator_type: str | None = None, accelerator_count: int = 1,
                   compile_default: bool = False, device_default: str = "auto", name: str = PIPELINE_NAME,
                   resources: Mapping[str, step_resources.StepResources] | None = None,
                   kubernetes: k8s.KubernetesOptions | None = None, local: bool = False) -> Callable:
    """The pipeline function for one image.

    ``local``: build the package kfp.local can run (the serving step always a task, switched
    by its ``enabled`` parameter) instead of the cluster shape (the serving step and its
    report inside ``dsl.If(serving_eval == True)``); the module docstring says why.

    ``accelerator_type`` (e.g. ``nvidia.com/gpu`` on KFP, ``NVIDIA_TESLA_T4`` on Vertex AI)
    adds a request for ``accelerator_count`` accelerators to train, evaluate and serving.
    ``compile_default`` is the default of the pipeline's ``compile`` parameter (torch.compile):
    the packages take each device's training default (on for CPU, off for the GPU package).
    ``device_default`` is the default of the ``device`` parameter: the GPU package says
    ``cuda``, so a step on a node whose GPU is not usable fails naming why instead of
    training on the node's CPUs (``auto`` falls back to the CPU and says so in the log).
    ``resources`` maps a step name (:data:`pipelines.resources.STEPS`) to its CPU/memory
    requests and limits; ``None`` or a missing step leaves them to the cluster.
    ``kubernetes``: the platform settings of :mod:`pipelines.kubernetes` (GPU node selector
    and tolerations go on the accelerated steps, and only when ``accelerator_type`` is set).
    """
    if accelerator_type is not None and accelerator_count < 1:
        raise ValueError(f"accelerator_count must be >= 1 when an accelerator type is set, got {accelerator_count}")
    # The return annotation is evaluated here, when the function is defined: the local
    # package has the serving outputs, the cluster packages cannot (see PipelineOutputs).
    Outputs = LocalPipelineOutputs if local else PipelineOutputs

    @dsl.pipeline(name=name, description=(
        "Train and evaluate one cascade ranking configuration (method x setting) on RecFlow-format data: "
        "fingerprint -> ingest -> preprocess -> train (all seeds) -> evaluate -> serving (if serving_eval) "
        "-> report."))
    def cascade_pipeline(
        source: str = "synthetic",
        days: str = "",
        ingest_copy: bool = False,
        synthetic_days: int = SYNTHETIC.num_days,
        synthetic_start_date: str = SYNTHETIC.start_date,
        synthetic_requests_per_day: int = SYNTHETIC.requests_per_day,
        synthetic_users: int = SYNTHETIC.users,
        synthetic_items: int = SYNTHETIC.items,
        synthetic_seed: int = SYNTHETIC.seed,
        stages: int = 2,
        setting: dict = {},  # noqa: B006 - KFP reads the default from the signature
        tz_offset_hours: int = PREPROCESS.tz_offset_hours,
        max_missing_fraction: float = PREPROCESS.max_missing_fraction,
        method: str = TRAIN.method,
        loss_options: dict = {},  # noqa: B006
        seeds: list = DEFAULT_SEEDS,
        batch_size: int = TRAIN.batch_size,
        lr: float = TRAIN.lr,
        dim: int = TRAIN.dim,
        embedding_optimizer: str = "auto",  # lcron.optim.DEFAULT_EMBEDDING_OPTIMIZER (tested)
        train_days: str = "",
        max_steps_per_day: int = 0,
        device: str = device_default,
        compile: bool = compile_default,
        eval_days: str = "",
        streaming: bool = False,
        eval_batch_size: int = 0,  # 0: the device's default (lcron.devices.DEVICE_DEFAULTS)
        tie_seed: int = 0,
        serving_eval: bool = False,
        serving_k1: list = list(ServeEvalConfig.k1),  # noqa: B008 - KFP reads the default from the signature
        serving_index: str = ServeEvalConfig.index,
        serving_index_options: dict = {},  # noqa: B006
        serving_day: str = "",
        serving_batch_size: int = ServeEvalConfig.batch_size,
        reference_quirks: bool = False,
        shared_shards: str = "",
    ) -> Outputs:
        synthetic = {"synthetic_days": synthetic_days, "synthetic_start_date": synthetic_start_date,
                     "synthetic_requests_per_day": synthetic_requests_per_day, "synthetic_users": synthetic_users,
                     "synthetic_items": synthetic_items, "synthetic_seed": synthetic_seed}
        fp = fingerprint(source=source, days=days, **synthetic)
        fp.set_caching_options(False)
        fp.set_display_name("fingerprint data")
        staged = ingest(source=source, days=days, fingerprint=fp.output, copy=ingest_copy, **synthetic)
        staged.set_display_name("ingest")
        shards = preprocess(raw_data=staged.outputs["raw_data"], stages=stages, setting=setting,
                            tz_offset_hours=tz_offset_hours, max_missing_fraction=max_missing_fraction,
                            reference_quirks=reference_quirks, shared_root=shared_shards)
        shards.set_display_name("preprocess")
        trained = train(shards=shards.outputs["shards"], method=method, loss_options=loss_options, seeds=seeds,
                        batch_size=batch_size, lr=lr, dim=dim, days=train_days,
                        max_steps_per_day=max_steps_per_day, device=device, compile=compile,
                        reference_quirks=reference_quirks, embedding_optimizer=embedding_optimizer,
                        day_snapshots=streaming)  # the per-day snapshots serve streaming evaluation only
        trained.set_display_name("train")
        evaluated = evaluate(model=trained.outputs["model"], shards=shards.outputs["shards"], days=eval_days,
                             streaming=streaming, batch_size=eval_batch_size, device=device, compile=compile,
                             tie_seed=tie_seed, reference_quirks=reference_quirks)
        evaluated.set_display_name("evaluate")

        def serving_task() -> dsl.PipelineTask:
            # enabled: in the local package the switch itself; in a cluster package's branch always true
            served = serving(model=trained.outputs["model"], shards=shards.outputs["shards"], enabled=serving_eval,
                             k1=serving_k1, index=serving_index, index_options=serving_index_options,
                             day=serving_day, batch_size=serving_batch_size, device=device, compile=compile,
                             tie_seed=tie_seed)
            served.after(evaluated)  # one accelerator-hungry step at a time
            served.set_display_name("serving evaluation")
            return served

        def report_task(served: dsl.PipelineTask | None) -> dsl.PipelineTask:
            # run_record, not model: the report reads no weights, so its pod downloads none
            extra = {} if served is None else {"serving": served.outputs["serving"]}
            reported = report(run_record=trained.outputs["run_record"], evaluation=evaluated.outputs["evaluation"],
                              **extra)
            reported.set_display_name("report")
            return reported

        if local:  # kfp.local runs no condition: the serving step always runs, switched by `enabled`
            served = serving_task()
            reports = [report_task(served)]
        else:
            with dsl.If(serving_eval == True, name="serving_eval"):  # noqa: E712 - builds a condition
                served = serving_task()
                with_serving = report_task(served)
            with dsl.Else(name="no serving_eval"):
                without_serving = report_task(None)
            reports = [with_serving, without_serving]

        # The step name of each task (resources, Kubernetes settings, labels): every report
        # task is the step "report".
        groups = [dict(zip(step_resources.STEPS, (fp, staged, shards, trained, evaluated, served, reports[0])))]
        groups += [{"report": task} for task in reports[1:]]
        for tasks in groups:
            for step, task in tasks.items():
                task.set_container_image(image)
                if resources and step in resources:
                    step_resources.apply(task, resources[step])
            if kubernetes is not None:
                k8s.apply(tasks, kubernetes, gpu=accelerator_type is not None,
                          variant="gpu" if accelerator_type is not None else "cpu")
        if accelerator_type is not None:
            for task in (trained, evaluated, served):
                task.set_accelerator_type(accelerator_type)
                task.set_accelerator_limit(accelerator_count)
        common = {"metrics": evaluated.outputs["metrics"], "evaluation": evaluated.outputs["evaluation"],
                  "model": trained.outputs["model"]}
        if local:
            return LocalPipelineOutputs(report=reports[0].outputs["html"],
                                        report_markdown=reports[0].outputs["markdown"],
                                        report_files=reports[0].outputs["report_files"],
                                        serving=served.outputs["serving"], serving_metrics=served.outputs["metrics"],
                                        **common)
        # Exactly one report task runs; OneOf names whichever did.
        return PipelineOutputs(report=dsl.OneOf(*(r.outputs["html"] for r in reports)),
                               report_markdown=dsl.OneOf(*(r.outputs["markdown"] for r in reports)),
                               report_files=dsl.OneOf(*(r.outputs["report_files"] for r in reports)), **common)

    return cascade_pipeline


cascade_pipeline = build_pipeline()
