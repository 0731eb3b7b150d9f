"""``python -m lcron``: the same command line as the ``lcron`` console script."""

from lcron.cli import console_main

console_main()
