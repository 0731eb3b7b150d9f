"""The figures of the evaluation, the report and the comparison, as PNG bytes.

Each function takes plain numbers and returns PNG bytes, so a figure can be written to a
file or embedded in a self-contained HTML page (base64) without a display. Figures are
built with matplotlib's object API on the Agg canvas: no pyplot global state, no GUI
backend, safe in tests, CI and KFP pods.
"""

from __future__ import annotations

import io
import math
from typing import Any, Mapping, Sequence

DPI = 100


def preload() -> None:
    """Import the plotting library now (about a second of start-up), e.g. from a helper
    thread while other work runs, so the first figure does not wait for it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
    from matplotlib.figure import Figure  # noqa: F401


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _num(v: Any) -> float:
    return float("nan") if v is None else float(v)


def quota_sweep_png(rows: Sequence[Mapping[str, Any]], stage_names: Sequence[str], title: str = "") -> bytes:
    """End-to-end recall (mean ± std over seeds) against the items the later stages score.

    x = items scored by every stage after the first (sum over s >= 2 of min(quota_{s-1}, n)),
    the cost the first stages' quotas impose; each point is labelled with its quota tuple and
    the setting's own quotas are drawn as a filled marker."""
    fig = _figure(6.4, 4.2)
    ax = fig.subplots()
    later = ", ".join(stage_names[1:]) or stage_names[0]
    xs = [_num(r["items_scored_after_first"]) for r in rows]
    ys = [_num(r["joint_recall"]["mean"]) for r in rows]
    es = [_num(r["joint_recall"]["std"]) if r["joint_recall"]["std"] is not None else 0.0 for r in rows]
    # Points that vary the same stage form a line; group them by the other stages' quotas.
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(rows):
        q = tuple(r["quotas"])
        key = q[1:] if len(q) > 1 else ()
        groups.setdefault(key, []).append(i)
    for key, idx in groups.items():
        idx = sorted(idx, key=lambda i: xs[i])
        label = "later quotas " + ",".join(map(str, key)) if key else None
        ax.errorbar([xs[i] for i in idx], [ys[i] for i in idx], yerr=[es[i] for i in idx], marker="o",
                    capsize=3, label=label, linewidth=1.2)
    for i, r in enumerate(rows):
        ax.annotate(",".join(map(str, r["quotas"])), (xs[i], ys[i]), textcoords="offset points", xytext=(4, 6),
                    fontsize=7)
        if r.get("default"):
            ax.plot([xs[i]], [ys[i]], marker="*", markersize=14, color="black", linestyle="none",
                    label="setting's quotas")
    ax.set_xlabel(f"items scored per request by {later}")
    ax.set_ylabel("end-to-end recall")
    ax.set_title(title or "quota sweep")
    ax.grid(True, alpha=0.3)
    if any(lbl for lbl in ax.get_legend_handles_labels()[1]):
        ax.legend(fontsize=8)
    return _png(fig)


def loss_curves_png(curves: Mapping[str, Mapping[str, tuple[Sequence[float], Sequence[float]]]],
                    title: str = "") -> bytes:
    """One panel per loss part, one line per seed: ``curves[part][seed_label] = (steps, values)``."""
    parts = list(curves)
    if not parts:
        parts = ["(no training steps logged)"]
    cols = min(3, len(parts))
    rows = math.ceil(len(parts) / cols)
    fig = _figure(4.2 * cols, 2.8 * rows + 0.4)
    axes = fig.subplots(rows, cols, squeeze=False)
    for k, ax in enumerate(axes.ravel()):
        if k >= len(parts):
            ax.set_visible(False)
            continue
        part = parts[k]
        for seed_label, (steps, values) in curves.get(part, {}).items():
            ax.plot(list(steps), list(values), linewidth=1.0, label=seed_label)
        ax.set_title(part, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, alpha=0.3)
        if curves.get(part):
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return _png(fig)


def funnel_png(stage_names: Sequence[str], gt_before: float, gt_after: Sequence[float | None],
               lost_share: Sequence[float | None], title: str = "") -> bytes:
    """Left: GT items alive before the cascade and after each stage; right: share of the lost
    GT items that each stage drops."""
    fig = _figure(8.4, 3.4)
    ax1, ax2 = fig.subplots(1, 2)
    labels = ["candidates"] + list(stage_names)
    ax1.bar(labels, [_num(gt_before)] + [_num(v) for v in gt_after], color="#4C72B0")
    ax1.set_ylabel("GT items per request")
    ax1.set_title("GT items alive", fontsize=10)
    ax1.grid(True, axis="y", alpha=0.3)
    ax2.bar(list(stage_names), [_num(v) for v in lost_share], color="#C44E52")
    ax2.set_ylim(0, 1)
    ax2.set_ylabel("share of lost GT items")
    ax2.set_title("where GT items are lost", fontsize=10)
    ax2.grid(True, axis="y", alpha=0.3)
    if title:
        fig.suptitle(title)
    return _png(fig)


def bar_chart_png(labels: Sequence[str], means: Sequence[float | None], stds: Sequence[float | None],
                  best: Sequence[bool] | None = None, ylabel: str = "end-to-end recall", title: str = "") -> bytes:
    """Bars of a metric per method with error bars (std over seeds); the best bar is darker."""
    fig = _figure(max(6.5, 0.9 * len(labels) + 2.0), 4.2)
    ax = fig.subplots()
    best = list(best) if best is not None else [False] * len(labels)
    colors = ["#1f4e79" if b else "#7fa7cf" for b in best]
    ax.bar(list(labels), [_num(m) for m in means], yerr=[0.0 if s is None else float(s) for s in stds],
           capsize=4, color=colors)
    ax.set_ylabel(ylabel)
    ax.set_title(title or ylabel, fontsize=10, wrap=True)
    ax.grid(True, axis="y", alpha=0.3)
    ax.tick_params(axis="x", labelrotation=30)
    return _png(fig)
