"""Compare finished runs: the paper's main table, with a paired bootstrap against the best method.

Input: any mix of run folders (holding ``eval/metrics.json``), evaluation folders (holding
``metrics.json``), metrics.json files, or roots (e.g. a local KFP pipeline root) searched
recursively for metrics.json files of kind "lcron-evaluation". Runs are grouped by setting:
one table per setting, rows = methods, columns = end-to-end recall and each stage's
Recall@10@m and NDCG@10 (mean ± std over seeds); the best mean of every column is marked.

The paired test. Two methods evaluated on the same test requests differ per request, and
most of the variance of a mean recall is the variance between requests, which both
methods share. So instead of comparing two means with their own spreads, every method is
compared with the best one (by end-to-end recall) request by request:

    d_r = x_r(method) - x_r(best),   x_r = the request's end-to-end recall averaged over seeds,

for the requests present in both evaluations (matched by (day, request_id); requests
without a valid slot dropped). The observed difference is mean_r d_r; its 95% interval is
the 2.5th and 97.5th percentile of mean(d) over ``bootstrap`` resamples of the requests
with replacement (a seeded generator; resamples drawn as index matrices, in chunks that
bound the memory). An interval that excludes 0 means the gap is larger than the
request-sampling noise of this test set; the best method compared with itself gets
exactly [0, 0]. The interval speaks about the test requests, not about training seeds:
the std over seeds in the table shows that other source of variation.

Serving columns. A run whose serving-style evaluation was run (``serving.json`` of
``lcron serve-eval``: beside its metrics.json, or anywhere under the given folders with
the same ``run_dir`` and one of the evaluation's test days - the pipeline's serving
artifact) adds the end-to-end recall from the whole corpus at each K1 that every such run
of the setting evaluated (``serving/joint_recall@K1=<k>``, mean ± std over seeds); runs
without one show n/a there. The best mean of those columns is marked as well.

Remote roots. A ``gs://`` or ``s3://`` argument (a cluster's KFP pipeline root, one run's
folder in it, or one metrics.json) is listed once (lcron.remote); every metrics.json,
serving.json and evaluation completion record under it is read, and of each lcron
evaluation only the files its completion marker lists (metrics.json, per_request.npz, the
quota sweep: kilobytes) are downloaded, never model weights, checkpoints or shards. They
go into a temporary folder with the bucket's layout and times, removed at the end; the
local code path above runs on it unchanged, and every path the comparison shows (sources,
notes, errors) is written as the URI it came from.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from . import outputs
from .errors import ConfigError, DataError, IncompleteOutputError, LcronError
from .logs import get_logger
from .evaluation.results import (EVALUATION_KIND, KIND, load_per_request, metric_label, npz_name,
                                 require_complete_evaluation)
from .evaluation.serving_results import KIND as SERVING_KIND
from .evaluation.serving_results import SERVING_FILE, load_serving, serving_metric_key
from .jsonfile import read_json
from .remote import RemoteFolder, is_remote, size_text
from .render import Section, Table, format_cell, guard_page, write_page
from .step_config import StepConfig, add_arguments, from_args, integer_at_least, option

COMPARE_KIND = "lcron-comparison"
HEADLINE = "joint_recall"
CHUNK_ELEMENTS = 4_000_000  # bootstrap indices drawn per chunk (32 MB of int64)
#: A path as the comparison shows it: the identity, or a remote folder's URI for its local copy.
Shown = Callable[[object], str]


@dataclass
class Evaluation:
    """One evaluated run found on disk."""

    metrics_path: Path
    doc: dict[str, Any]
    label: str = ""
    serving_path: Path | None = None
    serving: dict[str, Any] | None = None

    @property
    def eval_dir(self) -> Path:
        return self.metrics_path.parent


# --------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class CompareConfig(StepConfig):
    """The choices of one comparison besides its inputs (the paths, the output folder); checked
    when made. Each field is an ``lcron compare`` option and a keyword of :func:`compare` with
    the same default (tests/test_step_configs_report.py)."""

    setting: str | None = option(None, "only this setting (e.g. two_stage)", metavar="NAME")
    bootstrap: int = option(1000, "bootstrap resamples", check=integer_at_least(1, "bootstrap"))
    seed: int = option(0, "seed of the bootstrap")


# --------------------------------------------------------------------------- discovery
def _is_evaluation(doc: Any) -> bool:
    return isinstance(doc, dict) and doc.get("kind") == KIND


def find_evaluations(paths: Iterable[str | Path], skipped: list[str] | None = None,
                     shown: Shown = str) -> list[Evaluation]:
    """Every complete lcron evaluation under the local ``paths`` (see the module docstring),
    each once, in a stable order.

    A folder named directly must hold a complete evaluation (else IncompleteOutputError). An
    evaluation found by searching a root that ``lcron evaluate`` has not finished (still being
    written, or its writer died) is left out with a warning, appended to ``skipped``: a root
    is typically a pipeline root where other runs are still going on. ``shown`` writes paths
    in those notes as the user knows them (and identifies an evaluation: two remote inputs
    overlapping in the bucket are two local copies of one evaluation)."""
    found: dict[str, Evaluation] = {}
    for raw in paths:
        p = Path(raw)
        if p.is_file():
            explicit = [p]
        elif (p / "metrics.json").is_file():
            explicit = [p / "metrics.json"]
        elif (p / "eval" / "metrics.json").is_file():
            explicit = [p / "eval" / "metrics.json"]
        elif p.is_dir():
            explicit = []
        else:
            raise DataError(f"{p} does not exist")
        hits, unfinished = 0, []
        for f in explicit:
            doc = read_json(f, "evaluation metrics")
            if not _is_evaluation(doc):
                raise DataError(f"{f} is not an lcron evaluation (kind {doc.get('kind')!r})")
            require_complete_evaluation(f.parent)
            found.setdefault(shown(f.resolve()), Evaluation(f, doc))
            hits += 1
        if not explicit:
            for f in sorted(p.rglob("metrics.json")):
                try:
                    doc = json.loads(f.read_text())
                except (OSError, ValueError, RecursionError):
                    continue  # another tool's metrics file
                if not _is_evaluation(doc):
                    continue
                try:
                    require_complete_evaluation(f.parent)
                except IncompleteOutputError as exc:
                    note = shown(f"left out: {exc}")
                    get_logger(__name__).warning("warning: %s", note)
                    unfinished.append(note)
                    continue
                found.setdefault(shown(f.resolve()), Evaluation(f, doc))
                hits += 1
        if not hits:
            extra = f" ({len(unfinished)} unfinished: {'; '.join(unfinished)})" if unfinished else ""
            raise DataError(f"no complete lcron evaluation (metrics.json of kind 'lcron-evaluation') under {p}; "
                            f"run lcron evaluate first{extra}")
        if skipped is not None:
            skipped.extend(unfinished)
    return list(found.values())


def _resolved(path: Any) -> Path | None:
    return None if not path else Path(path).resolve()


def attach_serving(evals: list[Evaluation], paths: Iterable[str | Path], shown: Shown = str) -> list[str]:
    """Give every evaluation its serving.json, if it has one; returns notes for the reader.

    Beside metrics.json first (``lcron serve-eval`` writes RUN_DIR/eval/serving.json); else a
    serving.json found under the folders in ``paths`` whose ``run_dir`` is the evaluation's
    and whose day is one of its test days (a pipeline keeps the serving artifact in another
    folder than the evaluation). Of several such files the newest is taken, with a note.
    ``shown`` as in :func:`find_evaluations`.
    """
    found: dict[Path, list[tuple[Path, dict[str, Any]]]] = {}
    searched: set[str] = set()
    for raw in paths:
        p = Path(raw)
        if not p.is_dir() or shown(p.resolve()) in searched:
            continue
        searched.add(shown(p.resolve()))
        for f in sorted(p.rglob(SERVING_FILE)):
            try:
                doc = json.loads(f.read_text())
            except (OSError, ValueError, RecursionError):
                continue  # another tool's file
            run = _resolved(doc.get("run_dir")) if isinstance(doc, dict) else None
            if run is not None and doc.get("kind") == SERVING_KIND:
                known = found.setdefault(run, [])
                if all(shown(g.resolve()) != shown(f.resolve()) for g, _ in known):
                    known.append((f, doc))
    notes = []
    for e in evals:
        days = set(e.doc.get("days", []))
        beside = e.eval_dir / SERVING_FILE
        if beside.is_file():
            chosen = beside
        else:
            cands = [f for f, doc in found.get(_resolved(e.doc.get("run_dir")), []) if doc.get("day") in days]
            if not cands:
                continue
            chosen = max(cands, key=lambda f: f.stat().st_mtime)
            if len(cands) > 1:
                notes.append(shown(f"{len(cands)} serving evaluations belong to {e.eval_dir}; the newest, "
                                   f"{chosen}, is used"))
        doc = load_serving(chosen)
        if doc.get("setting") != e.doc["setting"] or list(doc["stage_names"]) != list(e.doc["stage_names"]):
            raise DataError(f"{chosen} is a serving evaluation of setting {doc.get('setting')!r}, but "
                            f"{e.metrics_path} evaluates {e.doc['setting']!r}")
        if doc.get("day") not in days:
            notes.append(shown(f"{chosen} was served on {doc.get('day')}, not on a test day of {e.metrics_path}"))
        e.serving_path, e.serving = chosen, doc
    return notes


def _label_rows(evals: list[Evaluation]) -> None:
    """Row labels: the method; where methods repeat, the run folder's name is added, then the
    evaluation folder's (a run evaluated twice), then a counter."""
    def candidates(e: Evaluation) -> list[str]:
        method = e.doc["method"] + (" [reference mode]" if e.doc.get("reference_quirks") else "")
        run = Path(e.doc.get("run_dir") or e.eval_dir.parent).name
        return [method, f"{method} ({run})", f"{method} ({run}/{e.eval_dir.name})"]

    cands = [candidates(e) for e in evals]
    level = [0] * len(evals)
    for _ in range(3):
        labels = [c[lv] for c, lv in zip(cands, level)]
        dup = {lb for lb in labels if labels.count(lb) > 1}
        if not dup:
            break
        level = [min(lv + 1, 2) if lb in dup else lv for lb, lv in zip(labels, level)]
    seen: set[str] = set()
    for e, c, lv in zip(evals, cands, level):
        label, k = c[lv], 2
        while label in seen:
            label, k = f"{c[lv]} #{k}", k + 1
        seen.add(label)
        e.label = label


# --------------------------------------------------------------------------- the paired test
def paired_bootstrap(diff: np.ndarray, bootstrap: int = 1000, seed: int = 0,
                     chunk_elements: int = CHUNK_ELEMENTS) -> tuple[float, float, float]:
    """(mean difference, 2.5th percentile, 97.5th percentile) of the mean of ``diff`` over
    ``bootstrap`` resamples of its entries with replacement, from ``np.random.default_rng(seed)``.

    Each chunk draws a [k, n] index matrix and averages the resampled rows at once; the
    loop only runs over chunks (k * n <= ``chunk_elements``)."""
    d = np.asarray(diff, dtype=np.float64).ravel()
    if d.size == 0:
        raise DataError("paired bootstrap: no request is shared by both evaluations")
    if isinstance(bootstrap, bool) or not isinstance(bootstrap, int) or bootstrap < 1:
        raise ConfigError(f"bootstrap must be an integer >= 1, got {bootstrap!r}")
    rng = np.random.default_rng(seed)
    n = d.size
    means = np.empty(bootstrap)
    step = max(1, chunk_elements // n)
    for start in range(0, bootstrap, step):
        k = min(step, bootstrap - start)
        means[start:start + k] = d[rng.integers(0, n, size=(k, n))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(d.mean()), float(lo), float(hi)


def per_request_headline(e: Evaluation):
    """A DataFrame (day, request_id, value) of the headline metric averaged over seeds."""
    import pandas as pd

    arr = load_per_request(e.eval_dir)
    name = npz_name(HEADLINE)
    if name not in arr or "request_id" not in arr:
        raise DataError(f"{e.eval_dir / 'per_request.npz'} lacks {name!r} or 'request_id'")
    values = arr[name].astype(np.float64)
    with np.errstate(all="ignore"):
        ok = np.isfinite(values)
        mean = np.where(ok.any(axis=0), np.where(ok, values, 0.0).sum(axis=0) / np.maximum(ok.sum(axis=0), 1), np.nan)
    day = arr["day"] if "day" in arr else np.full(len(mean), "")
    return pd.DataFrame({"day": day.astype(str), "request_id": arr["request_id"].astype(np.int64), "value": mean})


def paired_difference(e: Evaluation, ref: Evaluation, bootstrap: int, seed: int) -> dict[str, Any]:
    """The paired bootstrap of ``e`` minus ``ref`` on their shared test requests."""
    a, b = per_request_headline(e), per_request_headline(ref)
    both = a.merge(b, on=["day", "request_id"], suffixes=("", "_ref"), validate="one_to_one")
    both = both[np.isfinite(both["value"]) & np.isfinite(both["value_ref"])]
    out: dict[str, Any] = {"reference": ref.label, "metric": HEADLINE, "n_requests": int(len(both)),
                           "bootstrap": bootstrap, "seed": seed}
    if len(both) == 0:
        out.update(mean_diff=None, ci_low=None, ci_high=None,
                   note="no shared test request (evaluated on other days or data)")
        return out
    diff = both["value"].to_numpy() - both["value_ref"].to_numpy()
    mean, lo, hi = paired_bootstrap(diff, bootstrap, seed)
    out.update(mean_diff=mean, ci_low=lo, ci_high=hi)
    return out


# --------------------------------------------------------------------------- the table
def _columns(doc: Mapping[str, Any]) -> list[str]:
    names = list(doc["stage_names"])
    return [HEADLINE] + [f"recall_at_10_m/{s}" for s in names] + [f"ndcg_at_10/{s}" for s in names]


def _column_title(key: str, doc: Mapping[str, Any]) -> str:
    return metric_label(key, doc)


EMPTY = {"mean": None, "std": None, "n": 0, "per_seed": []}


def _serving_columns(evals: list[Evaluation]) -> tuple[list[int], list[str]]:
    """K1 values every run with a serving evaluation has (sorted), and notes on the rest."""
    served = [e for e in evals if e.serving is not None]
    if not served:
        return [], []
    k1_sets = [{int(k) for k in e.serving["k1"]} for e in served]
    common = sorted(set.intersection(*k1_sets))
    notes = []
    missing = [e.label for e in evals if e.serving is None]
    if missing:
        notes.append(f"no serving evaluation for {', '.join(missing)} (n/a in the serving columns)")
    dropped = sorted(set.union(*k1_sets) - set(common))
    if dropped:
        notes.append("serving K1 not evaluated by every run left out: " + ", ".join(map(str, dropped)))
    if len({e.serving["index"].get("kind") for e in served}) > 1:
        notes.append("the serving evaluations used different faiss indexes (" + ", ".join(
            f"{e.label}: {e.serving['index'].get('kind')}" for e in served) + "); approximate indexes lose recall")
    if len({e.serving.get("day") for e in served}) > 1:
        notes.append("the serving evaluations ran on different test days")
    return common, notes


def _entry(e: Evaluation, key: str) -> dict[str, Any]:
    """A column's {mean, std, n, per_seed} of one run: from metrics.json, or for a
    ``serving/joint_recall@K1=k`` column from its serving.json (empty if it has none)."""
    if key.startswith("serving/"):
        k1 = key.rsplit("@K1=", 1)[1]
        if e.serving is None or k1 not in e.serving["results"]:
            return dict(EMPTY)
        return dict(e.serving["results"][k1]["joint_recall"])
    return dict(e.doc["metrics"].get(key, EMPTY))


def compare_setting(evals: list[Evaluation], bootstrap: int, seed: int, shown: Shown = str) -> dict[str, Any]:
    """The comparison of the runs of one setting (rows sorted by end-to-end recall, best first);
    ``shown`` writes the evaluation and serving paths (:func:`find_evaluations`)."""
    first = evals[0].doc
    for e in evals[1:]:
        if list(e.doc["stage_names"]) != list(first["stage_names"]):
            raise DataError(f"{e.metrics_path}: setting {e.doc['setting']!r} has stages {e.doc['stage_names']}, "
                            f"{evals[0].metrics_path} has {first['stage_names']}; cannot share one table")
    serving_k1, serving_notes = _serving_columns(evals)
    serving_cols = [serving_metric_key("joint_recall", k) for k in serving_k1]
    cols = _columns(first) + serving_cols

    def mean_of(e: Evaluation, key: str) -> float:
        v = _entry(e, key).get("mean")
        return -math.inf if v is None else float(v)

    evals = sorted(evals, key=lambda e: -mean_of(e, HEADLINE))
    best = {}
    for key in cols:
        top = max(mean_of(e, key) for e in evals)
        best[key] = [e.label for e in evals if mean_of(e, key) == top and top > -math.inf]
    ref = evals[0]
    rows = []
    for e in evals:
        rows.append({
            "label": e.label,
            "method": e.doc["method"],
            "loss_options": e.doc.get("loss_options", {}),
            "mode": "reference" if e.doc.get("reference_quirks") else "default",
            "run_dir": e.doc.get("run_dir"),
            "eval_dir": shown(e.eval_dir),
            "seeds": e.doc.get("seeds", []),
            "days": e.doc.get("days", []),
            "streaming": e.doc.get("streaming", False),
            "requests": e.doc.get("requests", {}),
            "values": {k: _entry(e, k) for k in cols},
            "serving_file": None if e.serving_path is None else shown(e.serving_path),
            "best": [k for k in cols if e.label in best[k]],
            "paired": paired_difference(e, ref, bootstrap, seed),
        })
    notes = []
    fps = {e.doc.get("data_fingerprint") for e in evals}
    if len(fps) > 1:
        notes.append("the runs were evaluated on different data (data fingerprints differ); compare with care")
    days = {tuple(e.doc.get("days", [])) for e in evals}
    if len(days) > 1:
        notes.append("the runs were evaluated on different test days; the paired test uses the shared requests")
    if len({bool(e.doc.get("reference_quirks")) for e in evals}) > 1:
        notes.append("rows marked [reference mode] were preprocessed, trained and evaluated with --reference-quirks "
                     "(the published experiments' conventions, docs/reference.md); the other rows in default mode")
    ties = {e.doc.get("tie_seed") for e in evals}
    if len(ties) > 1:
        notes.append("the runs used different tie-break seeds; GT membership of tied labels may differ")
    notes += serving_notes
    titles = [_column_title(k, first) for k in _columns(first)]
    titles += [f"serving end-to-end recall, K1={k}" for k in serving_k1]
    return {"setting": first["setting"], "stage_names": list(first["stage_names"]), "quotas": list(first["quotas"]),
            "columns": cols, "column_titles": titles, "serving_columns": serving_cols, "serving_k1": serving_k1,
            "reference": ref.label, "best": best, "rows": rows, "notes": notes}


def _table(res: Mapping[str, Any]) -> Table:
    cols = res["columns"]
    header = (["method"] + list(res["column_titles"]) + ["seeds (n)", f"Δ end-to-end recall vs {res['reference']}",
                                                         "95% interval", "paired requests"])
    rows, marks = [], []
    for i, r in enumerate(res["rows"]):
        cells: list[Any] = [r["label"]]
        for j, k in enumerate(cols):
            v = r["values"][k]
            cells.append({"mean": v.get("mean"), "std": v.get("std")})
            if k in r["best"]:
                marks.append((i, j + 1))
        p = r["paired"]
        n_seeds = r["values"][HEADLINE].get("n")
        ci = None if p["ci_low"] is None else {"low": p["ci_low"], "high": p["ci_high"]}
        cells += [n_seeds, p["mean_diff"], ci, p["n_requests"]]
        rows.append(cells)
    note = ("mean ± std over seeds (ddof = 1); bold = best mean of the column; Δ = paired difference of "
            "end-to-end recall per test request (averaged over seeds) against the best method, with a 95% "
            f"paired-bootstrap interval over requests ({res['rows'][0]['paired']['bootstrap']} resamples)")
    if res.get("serving_columns"):
        note += ("; serving columns = end-to-end recall when the first stage retrieves the top-K1 of the whole "
                 "item corpus (serving.json), n/a where a run has no serving evaluation")
    return Table(f"compare-{res['setting']}", f"Setting {res['setting']} (quotas "
                 + " -> ".join(map(str, res["quotas"])) + ")", header, rows, best=marks, note=note)


def compare(paths: Sequence[str | Path], out: str | Path, *, setting: str | None = None, bootstrap: int = 1000,
            seed: int = 0, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Compare evaluated runs; writes compare.md, compare.html, compare.json (and one bar
    chart per setting) into ``out``. Returns compare.json's content plus ``"paths"``.
    A comparison of other inputs (paths, setting, bootstrap) already in ``out`` is refused
    unless ``overwrite``; the same comparison is simply refreshed. ``gs://`` and ``s3://``
    paths are read as the module docstring says (``progress``: a progress line per download)."""
    CompareConfig(setting=setting, bootstrap=bootstrap, seed=seed)  # the choices checked before --out is touched
    if not paths:
        raise ConfigError("compare: give at least one run, evaluation folder or root")
    inputs = {"paths": sorted(p.rstrip("/") if is_remote(p) else str(Path(p).resolve()) for p in paths),
              "setting": setting, "bootstrap": bootstrap, "seed": seed}
    guard_page(Path(out), "compare", inputs, overwrite, "comparison")
    with contextlib.ExitStack() as stack:
        folders: dict[int, RemoteFolder] = {}
        if any(is_remote(p) for p in paths):
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="lcron-compare-")))
            folders = {i: _fetch_remote(str(p), tmp / str(i), progress) for i, p in enumerate(paths) if is_remote(p)}
        local = [folders[i].path if i in folders else p for i, p in enumerate(paths)]

        def shown(path: object) -> str:
            text = str(path)
            for folder in folders.values():
                text = folder.shown(text)
            return text

        try:
            return _compare_found(local, Path(out), setting, bootstrap, seed, inputs, shown)
        except LcronError as exc:
            if not folders:
                raise
            raise type(exc)(shown(exc)) from None  # name the URI, not the temporary copy


# What compare reads of a remote folder to learn what is there: small JSON documents, chosen
# by name before any content is read.
_MARKER = outputs.marker_path(".", EVALUATION_KIND).name
_PENDING = outputs.pending_path(".", EVALUATION_KIND).name
_DOCUMENTS = frozenset({"metrics.json", SERVING_FILE, _MARKER, _PENDING})
DOCUMENT_LIMIT = 64 << 20  # a larger "metrics.json" is another tool's file


def _json(data: bytes | None) -> Any:
    """The JSON document in ``data``; None for anything else (another tool's file)."""
    try:
        return json.loads(data) if data is not None else None
    except (ValueError, RecursionError):
        return None


def _fetch_remote(uri: str, into: Path, progress: bool) -> RemoteFolder:
    """Copy what the comparison reads of ``uri`` into ``into``: every metrics.json,
    serving.json and evaluation completion record (read, to learn what each is), then of
    every lcron evaluation the files its completion marker lists (before markers: those its
    metrics.json lists) - the files the local completeness check hashes, and per_request.npz.
    Nothing else is downloaded: not the model weights, checkpoints or shards beside them."""
    folder = RemoteFolder(uri, into)
    names = folder.objects
    docs = {rel for rel in names if rel.rpartition("/")[2] in _DOCUMENTS}
    too_big = sorted(rel for rel in docs if names[rel].size > DOCUMENT_LIMIT)
    if too_big:
        get_logger(__name__).warning("warning: %s: ignored %d file(s) over %s, not lcron documents: %s", folder.uri,
                                     len(too_big), size_text(DOCUMENT_LIMIT), ", ".join(too_big))
    texts = folder.read(docs - set(too_big), progress=progress)
    wanted: set[str] = set()
    evaluations = served = 0
    for rel, data in texts.items():
        head, _, name = rel.rpartition("/")
        doc = _json(data)
        if name == SERVING_FILE and isinstance(doc, dict) and doc.get("kind") == SERVING_KIND:
            served += 1
        if name != "metrics.json" or not _is_evaluation(doc):
            continue
        evaluations += 1
        prefix = f"{head}/" if head else ""
        marker = _json(texts.get(prefix + _MARKER))
        if isinstance(marker, dict) and isinstance(marker.get("files"), dict):
            listed = [str(f) for f in marker["files"]]
        else:  # an evaluation from before completion markers: its metrics.json names its files
            files = doc.get("files")
            listed = [str(f) for f in files.values()] if isinstance(files, dict) else []
        wanted.update(prefix + f for f in [*listed, "per_request.npz"] if prefix + f in names)
    if not evaluations:
        raise DataError(f"no lcron evaluation (metrics.json of kind {KIND!r}) under {uri} ({len(names):,} object(s), "
                        f"{size_text(folder.listed_bytes)}); run lcron evaluate first, or check the path")
    folder.download(wanted - set(texts), progress=progress)
    get_logger(__name__).info(
        f"{uri}: {evaluations} evaluation(s), {served} serving evaluation(s); fetched {folder.fetched_files:,} of "
        f"{len(names):,} object(s), {size_text(folder.fetched_bytes)} of {size_text(folder.listed_bytes)}, into a "
        "temporary folder")
    return folder


def _compare_found(paths: Sequence[str | Path], out: Path, setting: str | None, bootstrap: int, seed: int,
                   inputs: dict[str, Any], shown: Shown) -> dict[str, Any]:
    """:func:`compare` on local paths (remote ones already copied; ``shown`` names them)."""
    from . import plots, provenance

    unfinished: list[str] = []
    evals = find_evaluations(paths, unfinished, shown)
    serving_notes = unfinished + attach_serving(evals, paths, shown)
    groups: dict[str, list[Evaluation]] = {}
    for e in evals:
        groups.setdefault(e.doc["setting"], []).append(e)
    if setting is not None:
        if setting not in groups:
            raise ConfigError(f"no evaluated run of setting {setting!r} among the inputs; found: "
                              f"{', '.join(sorted(groups))}")
        groups = {setting: groups[setting]}

    results, sections = {}, []
    for name in sorted(groups):
        group = groups[name]
        _label_rows(group)
        res = compare_setting(group, bootstrap, seed, shown)
        results[name] = res
        png = plots.bar_chart_png([r["label"] for r in res["rows"]],
                                  [r["values"][HEADLINE].get("mean") for r in res["rows"]],
                                  [r["values"][HEADLINE].get("std") for r in res["rows"]],
                                  best=[HEADLINE in r["best"] for r in res["rows"]],
                                  title=f"end-to-end recall, {name}\n(error bars: std over seeds)")
        sections.append(Section(f"setting-{name}", f"Setting {name}", text=list(res["notes"]), tables=[_table(res)],
                                images=[(f"compare_{name}.png", f"End-to-end recall per method, {name}", png)]))
    sources = Table("sources", "Evaluations compared",
                    ["setting", "method", "metrics file", "test days", "serving file"],
                    [[e.doc["setting"], e.label, shown(e.metrics_path), ", ".join(e.doc.get("days", [])),
                      None if e.serving_path is None else shown(e.serving_path)]
                     for name in sorted(groups) for e in groups[name]])
    prov = provenance.collect()
    sections.append(Section("sources", "Sources", tables=[sources],
                            text=serving_notes + [f"Written {prov['date_utc']} by lcron {prov['lcron_version']}."]))
    doc = {"kind": COMPARE_KIND, "bootstrap": bootstrap, "seed": seed, "settings": results, "provenance": prov,
           "inputs": inputs}
    paths_out = write_page(out, "compare", "lcron comparison", sections, doc)
    for res in results.values():
        print_summary(res)
    return {**doc, "paths": {k: str(v) for k, v in paths_out.items()}}


def print_summary(res: Mapping[str, Any]) -> None:
    """One line per method on the ``lcron`` logger: end-to-end recall and the paired difference."""
    from lcron.logs import get_logger

    log = get_logger(__name__)
    log.info(f"setting {res['setting']}:")
    for r in res["rows"]:
        p = r["paired"]
        diff = "" if p["mean_diff"] is None else (
            f"  Δ {p['mean_diff']:+.4f} [{p['ci_low']:+.4f}, {p['ci_high']:+.4f}]")
        log.info(f"  {r['label']:<28} {format_cell(r['values'][HEADLINE])}{diff}")


# --------------------------------------------------------------------------- CLI
def add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``lcron compare``."""
    parser.add_argument("paths", nargs="+", metavar="RUN_DIR",
                        help="run folders, evaluation folders or roots searched for metrics.json: local, "
                             "gs://bucket/prefix or s3://bucket/prefix (only the evaluation files are downloaded)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    add_arguments(parser, CompareConfig)  # --setting, --bootstrap, --seed: one option per CompareConfig field
    parser.add_argument("--overwrite", action="store_true", help="replace a comparison of other inputs in --out")


def run_compare(args: argparse.Namespace) -> int:
    """``lcron compare``: write the comparison and print where it is."""
    config = from_args(CompareConfig, args)
    res = compare(args.paths, args.out, **config.as_kwargs(),
                  overwrite=getattr(args, "overwrite", False), progress=not getattr(args, "quiet", False))
    print(f"comparison: {res['paths']['html']}")
    print(f"  markdown: {res['paths']['markdown']}")
    print(f"  json: {res['paths']['json']}")
    return 0
