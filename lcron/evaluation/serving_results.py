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
#: serving.json's format version. 2: the end-to-end recall per K1 is ``joint_recall``, the
#: name the evaluation gives it (version 1 files call it ``recall_e2e``; :func:`load_serving`
#: reads them under the current name, :func:`with_current_names`).
FORMAT_VERSION = 2

#: Keys of a per-K1 result that serving.json files of an earlier format version spell
#: differently: ``{old name: current name}``.
RENAMED_KEYS = {"recall_e2e": "joint_recall"}

SERVING_FILE = "serving.json"


def find_serving(serving_dir: str | Path | None, eval_dir: str | Path | None) -> Path | None:
    """The serving.json that belongs to a report: in ``serving_dir`` first (the pipeline's
    serving artifact), else in ``eval_dir`` (``lcron serve-eval`` writes RUN_DIR/eval/serving.json
    beside metrics.json); None when neither holds one (the serving evaluation was not run)."""
    for folder in (serving_dir, eval_dir):
        if folder is not None and (Path(folder) / SERVING_FILE).is_file():
            return Path(folder) / SERVING_FILE
    return None


def with_current_names(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` (a serving.json's document) with the keys of :data:`RENAMED_KEYS` under their
    current name, in every per-K1 result and every seed's: the one place where a file written
    before a rename is read (e.g. format 1's ``recall_e2e`` is ``joint_recall``). Changes
    ``doc`` in place and returns it; the file itself is left as it is (its hash stays valid)."""
    results = doc.get("results") if isinstance(doc.get("results"), dict) else {}
    per_seed = doc.get("per_seed") if isinstance(doc.get("per_seed"), dict) else {}
    for entries in [results, *(s for s in per_seed.values() if isinstance(s, dict))]:
        for entry in entries.values():
            if not isinstance(entry, dict):
                continue
            for old, new in RENAMED_KEYS.items():
                if old in entry and new not in entry:
                    entry[new] = entry.pop(old)
    return doc


def load_serving(path: str | Path) -> dict[str, Any]:
    """A serving.json, checked to be one (kind, and the fields the tables read); one written
    before a key was renamed is read under the current names (:func:`with_current_names`)."""
    path = Path(path)
    doc = read_json(path, "serving evaluation")
    if not isinstance(doc, dict) or doc.get("kind") != KIND:
        kind = doc.get("kind") if isinstance(doc, dict) else None
        raise DataError(f"{path} is not an lcron serving evaluation (kind {kind!r}, expected {KIND!r})")
    missing = [k for k in ("stage_names", "k1", "results", "index", "seeds") if k not in doc]
    missing += [str(k) for k in doc.get("k1", []) if str(k) not in doc.get("results", {})]
    if missing:
        raise DataError(f"{path} lacks the field(s) {missing}; was it written by lcron serve-eval?")
    return with_current_names(doc)


def serving_metric_key(name: str, k1: int | str) -> str:
    """The scalar name of a per-K1 serving number, e.g. ``serving/joint_recall@K1=100``."""
    return f"serving/{name}@K1={k1}"


def serving_metric_means(doc: Mapping[str, Any]) -> dict[str, float]:
    """The mean over seeds of every serving number as flat scalars (the KFP Metrics view).

    ``serving/gt_in_corpus`` and ``serving/gt_cold`` (independent of K1), and per K1
    ``serving/recall_retrieval@K1=k``, ``serving/recall_after/<stage>@K1=k`` for the later
    stages before the last,
    ``serving/joint_recall@K1=k`` (= recall after the last stage, logged once under this name)
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
        put(serving_metric_key("joint_recall", k), res.get("joint_recall"))
        if "index_recall" in res:
            put(serving_metric_key("index_recall", k), res["index_recall"])
    return out
