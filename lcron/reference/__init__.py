"""Reference mode: the published LCRON experiments' conventions, next to the faithful defaults.

METHODS.md section 7 ("Reference model quirks") lists where the published code differs
from the specification. This package holds what the switch ``--reference-quirks`` needs
besides the model flags (which live in :mod:`lcron.models`):

* :mod:`lcron.reference.mapping` - reference parameter names/layouts -> this project's
  models, reference forward inputs -> a model batch (tests and ``lcron import-reference``);
* :mod:`lcron.reference.protocol` - the reference's evaluation protocol;
* :mod:`lcron.reference.mode` - reading and checking the mode recorded in shards and runs.
"""
