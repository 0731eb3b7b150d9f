"""A serving evaluation's result file (``serving.json``) as other steps read it.

``lcron serve-eval`` (:mod:`lcron.serving.evaluate`) writes it; the report, ``lcron
compare`` and the pipeline's serving component (its KFP metrics) read it through this
module, which imports no torch or faiss.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

from ..errors import DataError
from ..jsonfile import read_json

#: ``kind`` of serving.json.
KIND = "lcron-serving-evaluation"
#: serving.json's format version.
FORMAT_VERSION = 1

SERVING_FILE = "serving.json"


def find_serving(serving_dir: str | Path | None, eval_dir: str | Path | None) -> Path | None:
    """The serving.json that belongs to a report: in ``serving_dir`` first (the pipeline's
    serving artifact), else in ``eval_dir`` (``lcron serve-eval`` writes RUN_DIR/eval/serving.json
    beside metrics.json); None when neither holds one (the serving evaluation was not run)."""
    for folder in (serving_dir, eval_dir):
        if folder is not None and (Path(folder) / SERVING_FILE).is_file():
            return Path(folder) / SERVING_FILE
    return None


def load_serving(path: str | Path) -> dict[str, Any]:
    """A serving.json, checked to be one (kind, and the fields the tables read)."""
    path = Path(path)
    doc = read_json(path, "serving evaluation")
    if not isinstance(doc, dict) or doc.get("kind") != KIND:
        kind = doc.get("kind") if isinstance(doc, dict) else None
        raise DataError(f"{path} is not an lcron serving evaluation (kind {kind!r}, expected {KIND!r})")
    missing = [k for k in ("stage_names", "k1", "results", "index", "seeds") if k not in doc]
    missing += [str(k) for k in doc.get("k1", []) if str(k) not in doc.get("results", {})]
    if missing:
        raise DataError(f"{path} lacks the field(s) {missing}; was it written by lcron serve-eval?")
    return doc


def serving_metric_key(name: str, k1: int | str) -> str:
    """The scalar name of a per-K1 serving number, e.g. ``serving/recall_e2e@K1=100``."""
    return f"serving/{name}@K1={k1}"


def serving_metric_means(doc: Mapping[str, Any]) -> dict[str, float]:
    """The mean over seeds of every serving number as flat scalars (the KFP Metrics view).

    ``serving/gt_in_corpus`` and ``serving/gt_cold`` (independent of K1), and per K1
    ``serving/recall_retrieval@K1=k``, ``serving/recall_after/<stage>@K1=k`` for the later
    stages before the last,
    ``serving/recall_e2e@K1=k`` (= recall after the last stage, logged once under this name)
    and, for ivf/hnsw, ``serving/index_recall@K1=k``. Means that are None or NaN are left out
    (NaN is not valid JSON for the KFP UI)."""
    out: dict[str, float] = {}

    def put(key: str, entry: Mapping[str, Any] | None) -> None:
        mean = (entry or {}).get("mean")
        if mean is not None and math.isfinite(float(mean)):
            out[key] = float(mean)

    put("serving/gt_in_corpus", doc["results"].get("gt_in_corpus"))
    put("serving/gt_cold", doc["results"].get("gt_cold"))
    later = list(doc["stage_names"][1:])
    for k in doc["k1"]:
        res = doc["results"][str(k)]
        put(serving_metric_key("recall_retrieval", k), res.get("recall_retrieval"))
        for stage in later[:-1]:
            put(serving_metric_key(f"recall_after/{stage}", k), res.get(f"recall_after/{stage}"))
        put(serving_metric_key("recall_e2e", k), res.get("recall_e2e"))
        if "index_recall" in res:
            put(serving_metric_key("index_recall", k), res["index_recall"])
    return out
