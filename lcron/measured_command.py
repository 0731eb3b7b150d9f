"""A benchmark child that runs one ``lcron`` command in its own process:
``python -m lcron.measured_command --worker cli '{"argv": [...]}'``.

It prints one JSON line: the command's exit code, the peak resident memory of the whole
process (interpreter, imports and the command: VmHWM) and the load. The ``eval_proc`` row
(lcron/benchmarks/suite.py) times it from the parent, start-up included.

Why a module of its own, outside lcron/benchmarks/: it imports the command line
(lcron.cli), and the command line imports the benchmarks (``lcron bench``); inside the
harness's package it would make the package and the command line import each other. Above
both, it closes no circle and no import runs up. Nothing imports it; the parent starts it by
name (``COMMAND_MODULE`` of lcron/benchmarks/suite.py). Why the child reads its own peak
(VmHWM) instead of the parent's ``wait4``: a child's ``ru_maxrss`` carries the parent's peak
over fork + exec (:func:`lcron.benchmarks.base.memory_mb`).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from lcron.benchmarks.base import loadavg, memory_mb

__all__ = ["worker_cli", "main"]

STEP = "cli"


def worker_cli(p: dict[str, Any]) -> dict[str, Any]:
    """Run ``lcron <argv>`` in this process and report its peak resident memory (VmHWM of
    the whole process: interpreter, imports and the command)."""
    from lcron.cli import main as cli_main

    code = cli_main(list(p["argv"]))
    return {"exit": code, "peak_rss_mb": memory_mb()[1], "load_1m": loadavg()}


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] != "--worker" or argv[1] != STEP:
        print(f"usage: python -m lcron.measured_command --worker {STEP} JSON (a benchmark child)", file=sys.stderr)
        return 2
    print(json.dumps(worker_cli(json.loads(argv[2]))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
