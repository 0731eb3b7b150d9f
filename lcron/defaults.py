"""The defaults of the user-facing knobs, in one place.

The library's signatures (``TrainConfig``, ``generate``, ``preprocess``), the command-line
options (``lcron generate|preprocess|ingest|train``) and the pipeline's parameters
(``pipelines/cascade_pipeline.py``) all read them from here, so a changed default changes
everywhere at once and the docs' parameter tables have one source to match.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SyntheticDefaults:
    """The generator's embedded data set: 4 days x 2,000 requests, 500 users, 5,000 items
    (a few seconds to write; the product's default data source)."""

    num_days: int = 4
    start_date: str = "2024-01-13"
    requests_per_day: int = 2000
    users: int = 500
    items: int = 5000
    seed: int = 0


@dataclass(frozen=True)
class PreprocessDefaults:
    """RecFlow's time zone (UTC+8), the share of a day's requests that may be dropped for
    missing from a pkl, and the size (MiB of a day's files) up to which the next day is read
    ahead while one is parsed (bigger days are read one at a time, docs/scale.md)."""

    tz_offset_hours: int = 8
    max_missing_fraction: float = 0.01
    # the share of a day's requests that may lack every ground-truth item of a group
    # before the day is refused (they add nothing to recall; a warning names them below it)
    max_no_gt_fraction: float = 0.5
    prefetch_budget_mb: int = 256


@dataclass(frozen=True)
class TrainDefaults:
    """The reference protocol (METHODS.md section 3): Adam at 0.01, batches of 1,024 requests,
    embeddings of 8; one seed from the command line, five in the pipeline (mean and std)."""

    method: str = "lcron"
    batch_size: int = 1024
    lr: float = 1e-2
    dim: int = 8
    seeds: tuple[int, ...] = (1,)
    pipeline_seeds: tuple[int, ...] = (1, 2, 3, 4, 5)


SYNTHETIC = SyntheticDefaults()
PREPROCESS = PreprocessDefaults()
TRAIN = TrainDefaults()

__all__ = ["SYNTHETIC", "PREPROCESS", "TRAIN", "SyntheticDefaults", "PreprocessDefaults", "TrainDefaults"]
