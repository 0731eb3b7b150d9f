"""The report step: HTML and Markdown report of one run, for the KFP UI and for people.

``html`` and ``markdown`` are the single files the UI renders; ``report_files`` keeps the
whole report folder (the JSON summary and any images beside the pages).

Inputs are small artifacts only: ``run_record`` (the train step's copy of run.json and the
seeds' summaries and train logs, :func:`lcron.report.copy_run_record`), ``evaluation`` and
``serving``. The report never reads a model file, and the train step's ``model`` artifact
(every seed's weights) is not an input, so the step's pod downloads no weights
(tests/pipeline/test_compile.py checks the compiled wiring).

``serving`` (optional) is the serving step's artifact: when it holds a ``serving.json`` the
report has a serving section. In the cluster packages the report is two tasks, one per
branch of ``dsl.If(serving_eval)``: with the serving artifact in the branch that runs the
serving step, without it in the other. In the kfp.local package the serving step always
runs and the input is always wired (kfp.local cannot leave an optional input artifact
unset); with serving off it holds only a marker and the report leaves the section out.
See pipelines/cascade_pipeline.py.
"""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Markdown, Output

from components.common import COMPONENT_OPTIONS


@dsl.component(**COMPONENT_OPTIONS)
def report(
    run_record: Input[Dataset],
    evaluation: Input[Dataset],
    report_files: Output[Dataset],
    html: Output[HTML],
    markdown: Output[Markdown],
    serving: Input[Dataset] = None,
):
    """Build the report of the run recorded in ``run_record`` from its ``evaluation`` (and ``serving``, if given)."""
    import shutil

    from lcron.report import build_report

    paths = build_report(run_record.path, evaluation.path, report_files.path,
                         serving_dir=serving.path if serving is not None else None, overwrite=True)
    shutil.copyfile(paths["html"], html.path)
    shutil.copyfile(paths["markdown_standalone"], markdown.path)  # its plots inside: the UI shows one file
