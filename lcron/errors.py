"""Error and warning types. Every user-facing failure is an LcronError whose message names
the file, the field and what was expected; the CLI prints it on one line and exits non-zero.
Warnings about usable but unclean data are :class:`RecFlowWarning`\\ s (the CLI prints each
on one line). Everything here imports nothing from lcron: every module may use it."""

from __future__ import annotations


class LcronError(Exception):
    """Base class of every error the CLI reports as a clean one-line message."""


class DataError(LcronError):
    """Input data does not follow the RecFlow layout or the shard format."""


class UnsafePickleError(DataError):
    """A pickle asked to construct something outside the allowlist; nothing was executed."""


class ConfigError(LcronError, ValueError):
    """A configuration value (method, option, setting, batch size, ...) is invalid."""


class OutputExistsError(LcronError):
    """An output folder holds a result made with a different configuration."""


class NumericalError(LcronError):
    """Training produced a NaN or infinite loss."""


class IncompleteOutputError(DataError):
    """A multi-file output (shard set, run, evaluation, ...) has no valid completion marker."""


class OutputLockedError(LcronError):
    """Another process is writing the same output folder."""


class RecFlowWarning(UserWarning):
    """Data was usable but not clean (requests dropped, extra columns)."""
