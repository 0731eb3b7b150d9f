"""The serving steps' configurations (lcron.step_config): ``lcron serve-eval`` and ``lcron export``.

:class:`ServeEvalConfig` is the one source of the serving evaluation's choices: the options of
``lcron serve-eval``, the keywords of :func:`lcron.serving.evaluate.serving_evaluate` with their
defaults, the serving component's parameters (components/serving.py) and the pipeline's
``serving_*`` defaults (pipelines/cascade_pipeline.py) all read its fields. :class:`ExportConfig`
is the same for ``lcron export`` and :func:`lcron.serving.export.export_cascade`. The
approximate-index knobs shared by both are :class:`lcron.serving.index.IndexOptions`' fields.
tests/test_step_configs_serving.py holds them together.

Only the foundation is imported here (no torch, no faiss), so the pipeline definition reads
its defaults without loading the serving code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from lcron.errors import ConfigError
from lcron.step_config import StepConfig, integer_at_least, option, raised

__all__ = ["INDEX_KINDS", "AUTO_FLAT_MAX_ITEMS", "DEFAULT_RECALL_SAMPLE", "check_kind", "parse_k1",
           "ServeEvalConfig", "ExportConfig"]

INDEX_KINDS = ("flat", "ivf", "hnsw")

#: ``auto``: exact (flat) search up to this many corpus items, IVF above. Measured on the
#: 2-core machine (bench/serving_index.py, docs/serving.md "Catalogue scale"; K1 = 1000):
#: exact search ran 6,146 requests/s over 20,000 items, 1,646 over 200,000, 294 over 1M and
#: 48 - 58 over 6.79M; an IVF built in 3.5 s at 200,000 items and 40 - 44 s at 6.79M (157 s
#: before its coarse quantizer became a graph at that size). Up to
#: 200,000 items the exact search of a 250,000-request test day takes ~2.5 minutes here,
#: affordable for an exact answer; beyond, the IVF is many times faster.
AUTO_FLAT_MAX_ITEMS = 200_000

#: Requests on which an approximate index is compared with the exact search by default.
DEFAULT_RECALL_SAMPLE = 2048


def check_kind(kind: str) -> str:
    if kind not in INDEX_KINDS:
        raise ConfigError(f"unknown index kind {kind!r}; expected one of {', '.join(INDEX_KINDS)}")
    return kind


def parse_k1(text: "str | Sequence[int]") -> tuple[int, ...]:
    """``"100,500"`` (or a sequence) -> sorted distinct positive K1 values."""
    try:
        vals = [int(v) for v in text.split(",") if v.strip()] if isinstance(text, str) else [int(v) for v in text]
    except (TypeError, ValueError):
        raise ConfigError(f"--k1 must be comma-separated positive integers, got {text!r}") from None
    if not vals or any(v < 1 for v in vals):
        raise ConfigError(f"--k1 must be comma-separated positive integers, got {text!r}")
    return tuple(sorted(set(vals)))


# ------------------------------------------------------------------------- checks
def _kind_or_auto(kind: str) -> str:
    return kind if kind == "auto" else check_kind(kind)


def _positive_batch(value: Any) -> str | None:
    return None if isinstance(value, int) and value >= 1 else f"batch size must be a positive integer, got {value!r}"


# ------------------------------------------------------------------ the configurations
@dataclass(frozen=True)
class ServeEvalConfig(StepConfig):
    """The choices of one serving evaluation besides its inputs (run, shards, output folder);
    checked when made. ``index_options`` (a dict of :class:`lcron.serving.index.IndexOptions`
    fields, None = its defaults) is on the command line as those fields' own options."""

    day: str | None = option(None, "test day YYYY-MM-DD, one day (default: the shard set's last day); --days like "
                                   "every other command, --day still accepted",
                             flag="--days", aliases=("--day",), metavar="DAY")
    k1: tuple[int, ...] = option((100, 500, 1000), "retrieval sizes, comma-separated", convert=parse_k1,
                                 check=raised(parse_k1))
    index: str = option("auto", "faiss index: flat = exact, ivf/hnsw approximate (they also report their recall "
                                "against the exact search on a sample); auto (default): flat up to "
                                f"{AUTO_FLAT_MAX_ITEMS:,} corpus items, ivf above",
                        choices=("auto", *INDEX_KINDS), check=raised(_kind_or_auto))
    recall_sample: int = option(DEFAULT_RECALL_SAMPLE, "requests on which an approximate index is compared with the "
                                f"exact search (default {DEFAULT_RECALL_SAMPLE}; the exact search is the cost the "
                                "index avoids)", metavar="N",
                                check=integer_at_least(0, "recall sample", "requests"))
    batch_size: int = option(1024, "requests per batch", check=_positive_batch)
    device: str = option("auto", "auto, cpu or cuda")
    tie_seed: int = option(0, "seed of the GT and cut-off tie-breaks")
    max_requests: int | None = option(None, "evaluate only the first N requests")
    compile: bool | None = option(None, "compile the later stage models with torch.compile (default: on for CPU, "
                                        "about 10x faster scoring of K1 candidates per request for a compile of a "
                                        "few seconds; off for CUDA, where eager scoring measured faster; "
                                        "--no-compile runs eager)")
    index_options: dict[str, Any] | None = None  # IndexOptions' fields; their options are IndexOptions' own


@dataclass(frozen=True)
class ExportConfig(StepConfig):
    """The choices of one export besides its inputs (run, shards, output folder); checked when
    made. ``index_options`` as in :class:`ServeEvalConfig`."""

    seed: int | None = option(None, "which seed's model (default: the first completed)")
    index: str = option("flat", "faiss index over the corpus (default flat = exact)", choices=INDEX_KINDS,
                        check=raised(check_kind))
    index_options: dict[str, Any] | None = None  # IndexOptions' fields; their options are IndexOptions' own
