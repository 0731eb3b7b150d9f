"""``python -m lcron``: the same command line as the ``lcron`` console script."""

from lcron.cli import console_main

if __name__ == "__main__":  # worker processes (spawn) import this module too
    console_main()
