"""``python -m lcron``: the same command line as the ``lcron`` console script."""

import sys

from lcron.cli import main

sys.exit(main())
