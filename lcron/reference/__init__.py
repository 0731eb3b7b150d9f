"""Reference tools: the published LCRON experiments' models and numbers, next to the faithful defaults.

METHODS.md section 7 ("Reference model quirks") lists where the published code differs
from the specification. What the switch ``--reference-quirks`` changes inside the steps
(the mode record and checks, the evaluation protocol) is policy and lives below the
trainer and the evaluator, in :mod:`lcron.reference_policy`; the model flags live in
:mod:`lcron.models`. This package holds the tools that stand above those steps:

* :mod:`lcron.reference.mapping` - reference parameter names/layouts -> this project's
  models, reference forward inputs -> a model batch (tests and ``lcron import-reference``);
* :mod:`lcron.reference.importer` - ``lcron import-reference``: checkpoints trained by the
  published code -> a run folder;
* :mod:`lcron.reference.table` - ``python -m lcron.reference.table``: the faithful-vs-reference table.
"""
