"""The configurations of the data steps (``lcron generate``, ``fingerprint``, ``ingest``,
``validate`` and ``preprocess``):
frozen dataclasses whose fields carry their command-line option (lcron.step_config).

Light on purpose (no numpy, no torch): the command line builds its options from these
fields at start-up. The defaults are read from :mod:`lcron.defaults`, their one source; the
checks here are the ones the library runs too (lcron.data.recflow, lcron.data.shards), so a
bad value is refused with the same sentence whether it comes from the command line, when the
configuration is made, or from a library call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lcron.defaults import PREPROCESS, SYNTHETIC
from lcron.step_config import Check, StepConfig, integer_at_least, integer_in, option

__all__ = ["ValidateConfig", "PreprocessConfig", "GenerateConfig", "SourceConfig", "IngestConfig",
           "SYNTHETIC_SOURCE", "fraction", "check_tz_offset_hours",
           "check_prefetch_budget_mb"]


def fraction(what: str) -> Check:
    """``what must be in [0, 1], got X``."""
    def check(value: Any) -> str | None:
        try:
            ok = 0.0 <= value <= 1.0
        except TypeError:
            ok = False
        return None if ok else f"{what} must be in [0, 1], got {value}"
    return check


#: ``tz_offset_hours must be an integer in [-12, 14], got X``
check_tz_offset_hours = integer_in(-12, 14, "tz_offset_hours")
#: ``prefetch_budget_mb must be an integer >= 0, got X``
check_prefetch_budget_mb = integer_at_least(0, "prefetch_budget_mb")


@dataclass(frozen=True)
class ValidateConfig(StepConfig):
    """How RecFlow days are read and checked (``lcron validate``; the first fields of
    :class:`PreprocessConfig`)."""

    days: str | None = option(None, "days to use, inclusive (YYYY-MM-DD:YYYY-MM-DD, or one day); default: all",
                              metavar="FIRST:LAST")
    max_missing_fraction: float = option(
        PREPROCESS.max_missing_fraction,
        "largest fraction of a day's requests that may be dropped for missing from a pkl",
        metavar="F", check=fraction("max_missing_fraction"))
    max_no_gt_fraction: float = option(
        PREPROCESS.max_no_gt_fraction,
        "largest fraction of a day's requests that may have no item of the ground-truth (top) group; more is an "
        "error, fewer a warning with the count",
        metavar="F", check=fraction("max_no_gt_fraction"))
    tz_offset_hours: int = option(
        PREPROCESS.tz_offset_hours,
        "time zone of the data for weekday/hour/minute features and the day check "
        f"(default {PREPROCESS.tz_offset_hours} = UTC+{PREPROCESS.tz_offset_hours})",
        metavar="H", check=check_tz_offset_hours)


@dataclass(frozen=True)
class PreprocessConfig(ValidateConfig):
    """The options of ``lcron preprocess`` besides where from, where to and which setting
    (``source``, ``out``, ``stages``/``setting``, ``overwrite``): the keywords of
    :func:`lcron.data.shards.preprocess` of the same names."""

    reference_quirks: bool = option(
        False, "build the features as the published experiments did (cat1 unshifted, padded steps' cat1 0, "
               "padding slots' cat1 2; docs/reference.md); train and evaluate with --reference-quirks too")
    prefetch_budget_mb: int = option(
        PREPROCESS.prefetch_budget_mb,
        "read the next day ahead while one is parsed only when its files total at most MB MiB "
        f"(default {PREPROCESS.prefetch_budget_mb}; 0: never), so two big days are never in memory together "
        "(docs/scale.md, Preprocessing memory)",
        metavar="MB", check=check_prefetch_budget_mb)


@dataclass(frozen=True)
class GenerateConfig:
    """The options of ``lcron generate`` besides ``--out``: the keywords of
    :func:`lcron.data.synthetic.generate` of the same names (whose checks, in
    ``SyntheticConfig.validate``, run when the data is generated)."""

    num_days: int = option(SYNTHETIC.num_days, "number of days", metavar="N")
    start_date: str = option(SYNTHETIC.start_date, "first day", metavar="YYYY-MM-DD")
    requests_per_day: int = option(SYNTHETIC.requests_per_day, "requests per day", metavar="N")
    users: int = option(SYNTHETIC.users, "number of users", metavar="N")
    items: int = option(SYNTHETIC.items, "number of items", metavar="N")
    seed: int = option(SYNTHETIC.seed, "random seed", metavar="N")
    authors: int | None = option(
        None, "number of authors (default items / 10; RecFlow has about 2.1M for its 9M videos)", metavar="N")
    workers: int | None = option(
        None, "days simulated at once in worker processes; the files are the same for any N (default: one per CPU "
              "as memory allows, from 20,000 requests a day)", metavar="N")


#: The ``--source`` of the built-in synthetic data (lcron.ingest.SYNTHETIC).
SYNTHETIC_SOURCE = "synthetic"


@dataclass(frozen=True)
class SourceConfig:
    """Which data ``lcron fingerprint`` and ``lcron ingest`` take: a source and its days, and
    the generator's parameters when the source is the synthetic one (the parameters of the
    fingerprint and ingest components of the same names)."""

    source: str = option(SYNTHETIC_SOURCE, "RecFlow root (default: the built-in synthetic data)",
                         metavar="DIR|gs://BUCKET/PREFIX|s3://BUCKET/PREFIX|synthetic")
    days: str | None = option(None, "days to stage (default: all)", metavar="DAY|FIRST:LAST")
    synthetic_days: int = option(SYNTHETIC.num_days, "synthetic data: number of days")
    # not on the command line (as before); the pipeline passes it
    synthetic_start_date: str = option(SYNTHETIC.start_date, "synthetic data: first day", cli=False)
    synthetic_requests_per_day: int = option(SYNTHETIC.requests_per_day, "synthetic data: requests per day",
                                             flag="--synthetic-requests", metavar="SYNTHETIC_REQUESTS")
    synthetic_users: int = option(SYNTHETIC.users, "synthetic data: users")
    synthetic_items: int = option(SYNTHETIC.items, "synthetic data: items")
    synthetic_seed: int = option(SYNTHETIC.seed, "synthetic data: seed")

    def synthetic(self) -> dict[str, Any]:
        """The generator's parameters (``generate()``'s keywords)."""
        return {"num_days": self.synthetic_days, "start_date": self.synthetic_start_date,
                "requests_per_day": self.synthetic_requests_per_day, "users": self.synthetic_users,
                "items": self.synthetic_items, "seed": self.synthetic_seed}


@dataclass(frozen=True)
class IngestConfig(SourceConfig):
    """The options of ``lcron ingest`` besides ``--out``, ``--expect-fingerprint`` and ``--overwrite``."""

    copy: bool = option(False, "copy the chosen files into --out instead of referencing the source (for a source "
                               "the later steps cannot read, or one that may change meanwhile); the synthetic "
                               "source is always copied")
