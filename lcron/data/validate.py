"""Dry-run validation of a RecFlow source: read every selected day, write nothing.

``lcron validate`` prints the per-day summary so a user can check a data set (their own
copy of RecFlow, a bucket, generated data) before spending time on preprocessing. Every
day goes through :meth:`lcron.data.recflow.RecFlowReader.read_day`, the same checks
``lcron preprocess`` runs (every required all_stage column, every stage label's ids, the
sequences, the day identity), with ``collect=True``: instead of stopping at the first
problem, every problem of every file of the day is listed (all bad columns of all_stage,
each pickle checked even when all_stage is unusable, the day identity, the usable
requests). A broken day does not stop the run, so one pass lists every broken day.
Source-level warnings (files in the day folders that are not day files) are ordinary
warnings, printed by the command line before the table.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from lcron.data import schemas as S
from lcron.data.recflow import DayProblems, RecFlowReader, RecFlowWarning
from lcron.data.source import Source
from lcron.defaults import PREPROCESS
from lcron.errors import DataError
from lcron.progress import Progress

__all__ = ["validate", "format_summary"]


def validate(source: "str | Path | Source", days: str | None = None,
             max_missing_fraction: float = PREPROCESS.max_missing_fraction,
             max_no_gt_fraction: float = PREPROCESS.max_no_gt_fraction,
             progress: bool = True, tz_offset_hours: int = PREPROCESS.tz_offset_hours) -> list[dict[str, Any]]:
    """Per-day summaries: ``day``, ``ok``, ``rows``, ``requests`` (usable),
    ``requests_in_all_stage``, ``dropped`` (missing from each pkl / without index),
    ``items_per_label`` (stored rows per request: mean, max, requests with any), ``problems``
    (every error message of the day; empty when the day is usable) and ``warnings``.

    ``tz_offset_hours``: the data's time zone, as for preprocessing (the day identity check
    compares request times with the day a file is named after).

    Problems of the whole source (no such folder, no days, bad day range, id_cnt.pkl
    unreadable or missing a key) raise :class:`DataError` instead.
    """
    out: list[dict[str, Any]] = []
    with RecFlowReader(source, max_missing_fraction=max_missing_fraction,
                       max_no_gt_fraction=max_no_gt_fraction, tz_offset_hours=tz_offset_hours) as reader:
        chosen = reader.select_days(days)
        reader.id_counts()
        bar = Progress(len(chosen), "validate", unit="day", enabled=progress)
        for day in chosen:
            summary: dict[str, Any] = {"day": day, "ok": False, "problems": [], "warnings": []}
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", RecFlowWarning)
                try:
                    rd = reader.read_day(day, labels=S.STAGE_LABELS, check_all_columns=True, collect=True)
                except DayProblems as exc:
                    summary["problems"] = list(exc.problems)
                except DataError as exc:
                    summary["problems"] = [str(exc)]
                else:
                    summary.update(ok=True, rows=rd.stats["rows"], requests=rd.num_requests,
                                   requests_in_all_stage=rd.stats["requests_in_all_stage"],
                                   dropped=rd.stats["dropped"], items_per_label=rd.stats["items_per_label"])
                    del rd
                finally:
                    reader.release_day(day)
            summary["warnings"] = [str(w.message) for w in caught if issubclass(w.category, RecFlowWarning)]
            out.append(summary)
            bar.update(postfix=f"{day} {'ok' if summary['ok'] else 'FAILED'}")
        bar.close()
    return out


def format_summary(summaries: list[dict[str, Any]]) -> str:
    """A plain-text table of :func:`validate`'s output, one line per day, problems below."""
    lines = [f"{'day':<12}{'status':<8}{'rows':>10}{'requests':>10}{'dropped':>9}  items per label (mean stored)"]
    for s in summaries:
        if s["ok"]:
            per = ", ".join(f"{lb} {v['mean']:.1f}" for lb, v in s["items_per_label"].items())
            lines.append(f"{s['day']:<12}{'ok':<8}{s['rows']:>10}{s['requests']:>10}{s['dropped']['total']:>9}  {per}")
        else:
            lines.append(f"{s['day']:<12}{'FAILED':<8}")
    for s in summaries:
        for p in s["problems"]:
            lines.append(f"problem: {p}")
        for w in s["warnings"]:
            lines.append(f"warning: {w}")
    return "\n".join(lines)
