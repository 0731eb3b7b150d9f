"""The report step: HTML and Markdown report of one run, for the KFP UI and for people.

``html`` and ``markdown`` are the single files the UI renders; ``report_files`` keeps the
whole report folder (the JSON summary and any images beside the pages).
"""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Markdown, Model, Output

from components.common import COMPONENT_OPTIONS


@dsl.component(**COMPONENT_OPTIONS)
def report(
    model: Input[Model],
    evaluation: Input[Dataset],
    report_files: Output[Dataset],
    html: Output[HTML],
    markdown: Output[Markdown],
):
    """Build the report of the run in ``model`` from its ``evaluation``."""
    import shutil

    from lcron.report import build_report

    paths = build_report(model.path, evaluation.path, report_files.path)
    shutil.copyfile(paths["html"], html.path)
    shutil.copyfile(paths["markdown"], markdown.path)
