"""The report step: HTML and Markdown report of one run, for the KFP UI and for people.

``html`` and ``markdown`` are the single files the UI renders; ``report_files`` keeps the
whole report folder (the JSON summary and any images beside the pages). ``serving``
(optional) is the serving step's artifact: when it holds a ``serving.json`` the report has
a serving section; the pipeline always wires it (the serving step leaves only a marker file
when it was switched off), since kfp.local cannot leave an optional input artifact unset.
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
    serving: Input[Dataset] = None,
):
    """Build the report of the run in ``model`` from its ``evaluation`` (and ``serving``, if given)."""
    import shutil

    from lcron.report import build_report

    paths = build_report(model.path, evaluation.path, report_files.path,
                         serving_dir=serving.path if serving is not None else None, overwrite=True)
    shutil.copyfile(paths["html"], html.path)
    shutil.copyfile(paths["markdown_standalone"], markdown.path)  # its plots inside: the UI shows one file
