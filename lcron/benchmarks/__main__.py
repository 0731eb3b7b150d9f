"""``python -m lcron.benchmarks``: a measured benchmark child (``--worker STEP ARGS``, started
by :func:`lcron.benchmarks.base.run_worker`) or the training profiler (``--profile METHOD ...``).

Why a file of its own: run as ``__main__``, the suite's module would be a second copy of
itself beside :mod:`lcron.benchmarks.suite` (a registry filled twice in a child that imports
both); this entry point only hands the command line on.
"""

import sys

from lcron.benchmarks.suite import main

sys.exit(main(sys.argv[1:]))
