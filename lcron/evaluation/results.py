"""The evaluation folder as other steps read it: metric keys, per-seed summaries, completion, loading.

``lcron evaluate`` (:mod:`lcron.evaluate`) writes the folder; the report, ``lcron compare``,
the pipeline's components and the serving evaluation read it through this module, and
every mean-over-seeds in the project (evaluation and serving) is :func:`summarize_seeds`.
"""

from __future__ import annotations

import json
import math
import zipfile
import zlib
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .. import outputs
from ..errors import DataError
from ..jsonfile import read_json
from ..settings import Setting

#: ``kind`` of metrics.json.
KIND = "lcron-evaluation"

#: metrics.json's format version (part of an evaluation's inputs hash).
FORMAT_VERSION = 1


def metric_keys(setting: Setting) -> list[str]:
    """Every metric key of metrics.json for ``setting``, in report order."""
    names = setting.stage_names
    return (["joint_recall"]
            + [f"recall_at_10_m/{s}" for s in names]
            + [f"ndcg_at_10/{s}" for s in names]
            + [f"funnel/gt_after/{s}" for s in names]
            + [f"funnel/lost_share/{s}" for s in names])


#: What the KFP Metrics view shows for a mean or std that is undefined (no seed defined the
#: metric, or fewer than 2 seeds for a std): KFP metrics must be numbers and NaN is not valid
#: JSON, and every metric is in [0, 1], so -1 cannot be mistaken for a value; ``/n`` says 0.
UNDEFINED = -1.0


def stage_label(doc: Mapping[str, Any], stage: str) -> str:
    """A stage as the KFP view names it: its position and model (``s2_din``), so the same
    column never holds a two-stage and a three-stage model (``prerank`` is the last stage of
    two-stage, the middle one of three-stage)."""
    names = list(doc.get("stage_names") or [])
    if stage not in names:
        return stage
    i = names.index(stage)
    models = list(doc.get("stage_models") or [])
    return f"s{i + 1}_{models[i]}" if i < len(models) else f"s{i + 1}"


def kfp_metrics(doc: Mapping[str, Any]) -> tuple[dict[str, float], list[str]]:
    """The scalars an evaluation logs to its KFP Metrics artifact, and the undefined ones.

    Per metric of metrics.json: ``<key>`` (mean over seeds), ``<key>/std`` (sample std) and
    ``<key>/n`` (seeds that defined it), with the stage part of the key named by position
    and model (:func:`stage_label`: ``recall_at_10_m/s2_din``). Every key is always logged,
    so runs compared in the UI have the same columns; an undefined value is
    :data:`UNDEFINED` and is listed in the second return value."""
    values: dict[str, float] = {}
    missing: list[str] = []
    for key, entry in doc["metrics"].items():
        head, _, stage = key.rpartition("/")
        ui = f"{head}/{stage_label(doc, stage)}" if head else key
        n = int(entry.get("n") or 0)
        for name, value in ((ui, entry.get("mean")), (f"{ui}/std", entry.get("std"))):
            ok = value is not None and math.isfinite(float(value))
            values[name] = float(value) if ok else UNDEFINED
            if not ok:
                missing.append(name)
        values[f"{ui}/n"] = float(n)
    return values, missing


def npz_name(key: str) -> str:
    """The per_request.npz array name of a metric key ('/' is not safe inside a zip member name)."""
    return key.replace("/", "__")


def summarize_seeds(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean over seeds, sample standard deviation (ddof = 1; None for fewer than 2 values), n.

    NaN/None values (a seed on which the metric is undefined) are kept in ``per_seed`` as
    None and left out of mean, std and n."""
    per_seed = [None if v is None or not math.isfinite(float(v)) else float(v) for v in values]
    ok = np.array([v for v in per_seed if v is not None], dtype=np.float64)
    n = int(ok.size)
    return {
        "mean": float(ok.mean()) if n else None,
        "std": float(ok.std(ddof=1)) if n > 1 else None,
        "n": n,
        "per_seed": per_seed,
    }

#: The completion-marker kind of an evaluation folder (``_complete-evaluation.json``).
EVALUATION_KIND = "evaluation"


def _legacy_evaluation_problem(eval_dir: Path) -> str | None:
    """An evaluation written before completion markers: complete when metrics.json (written
    last) exists and names files that all exist."""
    try:
        doc = json.loads((eval_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return f"{eval_dir / 'metrics.json'} is missing or not readable"
    files = doc.get("files") if isinstance(doc, dict) else None
    for name in (files or {}).values():
        if not (eval_dir / str(name)).is_file():
            return f"{eval_dir / str(name)} is missing"
    return None


def is_eval_folder(folder: str | Path) -> bool:
    """Whether ``folder`` is one lcron's evaluation steps made: an evaluation (marker or
    metrics.json) or a serving evaluation (serving.json), which share ``RUN/eval`` by default."""
    from .serving_results import KIND as SERVING_KIND

    folder = Path(folder)
    return (outputs.has_marker(folder, [EVALUATION_KIND]) or outputs.json_kind(folder / "metrics.json") == KIND
            or outputs.json_kind(folder / "serving.json") == SERVING_KIND)


def is_complete_evaluation(eval_dir: str | Path) -> bool:
    """Whether ``lcron evaluate`` finished writing ``eval_dir`` (its completion marker, or a
    verifiably complete evaluation from before markers existed)."""
    return outputs.is_complete(eval_dir, EVALUATION_KIND, _legacy_evaluation_problem)


def require_complete_evaluation(eval_dir: str | Path) -> None:
    """Refuse an evaluation folder that ``lcron evaluate`` has not finished."""
    eval_dir = Path(eval_dir)
    outputs.require_complete(eval_dir, EVALUATION_KIND, "evaluation",
                             f"lcron evaluate --model RUN_DIR --out {eval_dir} (the same options as before)",
                             legacy=_legacy_evaluation_problem)


def load_per_request(eval_dir: str | Path) -> dict[str, np.ndarray]:
    """per_request.npz of an evaluation folder as a dict of arrays (no pickle)."""
    path = Path(eval_dir) / "per_request.npz"
    if path.is_file():
        require_complete_evaluation(eval_dir)
    if not path.is_file():
        raise DataError(f"{path} does not exist; evaluate the run first")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise DataError(f"{path}: not a readable per-request archive ({type(exc).__name__}: {exc}); "
                        "evaluate the run again (lcron evaluate --overwrite)") from None


def load_metrics(eval_dir: Path) -> dict[str, Any]:
    """An evaluation's metrics.json, checked to be one."""
    doc = read_json(eval_dir / "metrics.json", "evaluation metrics")
    if doc.get("kind") == KIND:
        require_complete_evaluation(eval_dir)
    if doc.get("kind") != KIND:
        raise DataError(f"{eval_dir / 'metrics.json'} is not an lcron evaluation (kind {doc.get('kind')!r}, "
                        f"expected {KIND!r})")
    return doc


def metric_label(key: str, m: Mapping[str, Any]) -> str:
    """A readable name of a metric key, e.g. 'Recall@10@30 (retrieval)'."""
    names, quotas = list(m["stage_names"]), list(m["quotas"])
    if key == "joint_recall":
        return "end-to-end recall (" + " -> ".join(map(str, quotas)) + ")"
    kind, _, stage = key.rpartition("/")
    quota = quotas[names.index(stage)] if stage in names else "m"
    if kind == "recall_at_10_m":
        return f"Recall@10@{quota} ({stage})"
    if kind == "ndcg_at_10":
        return f"NDCG@10 ({stage})"
    if kind == "funnel/gt_after":
        return f"GT alive after {stage}"
    if kind == "funnel/lost_share":
        return f"share of lost GT dropped by {stage}"
    return key
