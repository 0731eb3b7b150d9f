"""One logger for everything lcron tells a user on stderr: the ``lcron`` logger.

Every module logs through a child of it (``get_logger(__name__)``), so one switch -
``configure(quiet=True)``, which ``lcron -q`` calls - silences every progress fact at
once while warnings still show. Without any configuration (the library called from a
KFP component, a notebook, a test) the logger writes INFO and above to stderr, as the
``print(..., file=sys.stderr)`` helpers it replaces did, so pod logs keep their lines.
Results a command prints (a table, a path) go to stdout and are not log lines.
"""

from __future__ import annotations

import logging
import sys

ROOT = "lcron"

__all__ = ["ROOT", "configure", "get_logger", "StderrHandler"]


class StderrHandler(logging.Handler):
    """Writes each record as one line to whatever ``sys.stderr`` is at the time (tests swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(self.format(record), file=sys.stderr, flush=True)
        except Exception:  # noqa: BLE001 - logging must never break the work it reports on
            self.handleError(record)


def _install() -> logging.Logger:
    logger = logging.getLogger(ROOT)
    if not any(isinstance(h, StderrHandler) for h in logger.handlers):
        logger.addHandler(StderrHandler())
    if logger.level == logging.NOTSET:  # keep a level someone (the CLI's -q) already chose
        logger.setLevel(logging.INFO)
    return logger


def configure(quiet: bool = False) -> logging.Logger:
    """INFO and above on stderr, or (``quiet``) warnings and errors only."""
    logger = _install()
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    return logger


def get_logger(name: str = ROOT) -> logging.Logger:
    """The logger of a module: ``name`` under ``lcron`` (``lcron.train``; ``pipelines.x`` becomes
    ``lcron.pipelines.x``), whose lines the ``lcron`` logger's handler writes."""
    _install()
    return logging.getLogger(name if name == ROOT or name.startswith(ROOT + ".") else f"{ROOT}.{name}")
