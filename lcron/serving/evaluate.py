"""Serving-style evaluation: the trained cascade retrieving from the whole item corpus.

The paper's evaluation runs the cascade inside each request's 40-50 logged candidates.
At serving time the first stage retrieves from the whole corpus instead; this module
measures what the trained cascade would do then. Per seed and test request:

1. user vector from the DSSM user tower; top-K1 of the corpus by inner product (faiss);
2. the later stage models score the retrieved items and keep their quotas
   (``setting.quotas[1:]``: two-stage 20; three-stage 30 then 20), the same code the
   exported cascade serves with (:func:`lcron.serving.loader.run_cascade`);
3. the request's ground truth is its logged top group: the valid slots of
   ``setting.groups[0]``, the ``gt_size`` best by label (seeded tie-break,
   :func:`lcron.metrics.gt_mask`), identified by video id.

Measured per K1, as a share of the request's GT items (|GT| = number of GT slots):

* ``gt_in_corpus``      - GT items present in the corpus at all (an upper bound for the rest);
* ``gt_cold``           - GT items that no training day offered as a candidate (the item
  tower never trained on them; ``catalogue`` in serving.json gives the corpus's cold share);
* ``recall_retrieval``  - GT items among the top-K1 retrieved;
* ``recall_after/<s>``  - GT items still alive after later stage s; the last one is
* ``joint_recall``      - GT items among the final survivors (end-to-end, the evaluation's name);
* ``index_recall``      - ivf/hnsw only: |approximate top-K1 ∩ exact top-K1| / K1.

Each is averaged over the requests with a GT (others skipped and counted), per seed, then
reported as mean, sample std (ddof = 1, None for one seed) and n over seeds.

Efficiency: one faiss search per batch with k = max K1; each K1 uses the prefix of that
ranked list. For ``flat`` (exact) and ``ivf`` (the probed cells depend only on the query)
the prefix is exactly what a search with k = K1 returns; for ``hnsw`` a search with
k = max K1 uses a wider beam (max(efSearch, k)), so a smaller K1 gets a prefix at least as
good as its own search would. The first later stage scores the max-K1 list once (stage
models score each candidate independently, so those scores hold for every prefix);
deeper stages score only the survivors, per K1.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from lcron import atomic, outputs
from lcron.data import fields
from lcron.devices import device_defaults, resolve_device
from lcron.errors import DataError
from lcron.evaluation.results import is_eval_folder, summarize_seeds
from lcron.evaluation.serving_results import FORMAT_VERSION, KIND
from lcron.hashing import config_hash
from lcron.logs import get_logger
from lcron.progress import Progress
from lcron.run_folder import FinishedRun, load_cascade, seed_number
from lcron.serving.config import ServeEvalConfig, parse_k1  # parse_k1 is read from here too
from lcron.serving.index import (Corpus, IndexOptions, build_corpus, build_index, clamp_k1, overlap_recall,
                                 resolve_index_kind, retrieval_tower, rows_in, search, stage_modules, user_vectors)
from lcron.serving.loader import DEFAULT_MAX_SLOTS, run_cascade, score_items
from lcron.settings import Setting
from lcron.step_config import add_arguments, from_args
from lcron.step_output import step_output



def log(msg: str) -> None:
    """A progress fact on the ``lcron`` logger (stderr; ``lcron -q`` silences it)."""
    get_logger(__name__).info(msg)


# ------------------------------------------------------------------ ground truth
def logged_gt(arrays: Mapping[str, np.ndarray], rows: "slice | np.ndarray", setting: Setting,
              tie_seed: int) -> np.ndarray:
    """GT video ids [b, group_size] of the requests ``rows`` (-1 = not a GT slot).

    GT = the request's logged top group (``setting.groups[0]``): its valid slots, the
    ``gt_size`` best by label with the seeded tie-break of :func:`lcron.metrics.gt_mask`.
    """
    from lcron.metrics import gt_mask

    sl = setting.group_slice(setting.groups[0])
    vid = np.asarray(arrays["items"][rows, sl, 0], dtype=np.int64)
    mask = np.asarray(arrays["mask"][rows, sl]) > 0
    label = np.asarray(arrays["label"][rows, sl], dtype=np.float64)
    if vid.shape[0] == 0:
        return vid
    gt = gt_mask(label, mask, gt=setting.gt_size, tie_seed=tie_seed)
    return np.where(gt & (vid > 0), vid, -1)


def cold_items(shard_set: Any, days: Sequence[str], corpus_ids: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """The corpus items (sorted shifted ids ``corpus_ids``) that are no valid candidate of any
    of ``days`` (the run's training days): their item-tower inputs were never trained on, so
    they are retrieved by untrained embeddings. Returns their ids (sorted)."""
    seen = np.zeros(len(corpus_ids), dtype=bool)
    if not len(corpus_ids):
        return corpus_ids
    for day in days:
        arrays = shard_set.load_day(day)
        items, mask = arrays["items"], arrays["mask"]
        # A day's distinct candidates first (one sort), then one binary search per distinct id.
        vid = np.unique(np.concatenate([
            np.asarray(items[start:start + chunk, :, 0])[np.asarray(mask[start:start + chunk]) > 0]
            for start in range(0, len(mask), chunk)] or [np.empty(0, np.int64)]).astype(np.int64))
        pos = np.minimum(np.searchsorted(corpus_ids, vid), len(corpus_ids) - 1)
        seen[pos[corpus_ids[pos] == vid]] = True
    return corpus_ids[~seen]


# --------------------------------------------------------------- one batch, one seed
def _model_fn(model: torch.nn.Module):
    def fn(context, user, seq, seq_mask, items):
        return model({"context": context, "user": user, "seq": seq, "seq_mask": seq_mask, "items": items})
    return fn


class CompiledStage:
    """A later stage model under ``torch.compile`` for inference, eager if compiling fails.

    Why the whole model and not only DIN's attention core (what ``build_cascade(compile=True)``
    fuses): at serving time the head MLP over K1 candidates costs more than the attention,
    and inductor fuses its broadcast add and ReLUs into the matrix products (measured, 1
    thread, 100 candidates per request: 434 requests/s eager, 3,548 with the compiled
    attention core, 4,872 with the whole model compiled).
    ``dynamic=False`` compiles once per input shape (the benchmark keeps one shape per K1);
    ``None`` lets torch switch to shape-generic code after a recompile (the evaluation's
    last partial batch).
    """

    def __init__(self, model: torch.nn.Module, dynamic: bool | None = None) -> None:
        self.model = model
        self.compiled = torch.compile(model, dynamic=dynamic)
        self.error: BaseException | None = None

    def __call__(self, context: torch.Tensor, user: torch.Tensor, seq: torch.Tensor, seq_mask: torch.Tensor,
                 items: torch.Tensor) -> torch.Tensor:
        batch = {"context": context, "user": user, "seq": seq, "seq_mask": seq_mask, "items": items}
        if self.error is None:
            try:
                return self.compiled(batch)
            except Exception as exc:  # compiler/toolchain failure: eager from now on
                self.error = exc
                import warnings

                warnings.warn(f"torch.compile of {type(self.model).__name__} failed ({type(exc).__name__}); "
                              "serving it eager (slower)", RuntimeWarning, stacklevel=2)
        return self.model(batch)


def stage_fns(cascade: torch.nn.Module, setting: Setting, compile: bool, dynamic: bool | None = None) -> list:
    """Callables (context, user, seq, seq_mask, items) -> [B, N] of the later stages."""
    models = stage_modules(cascade, setting)[1:]
    return [CompiledStage(m, dynamic) if compile else _model_fn(m) for m in models]


class _SeedEvaluator:
    """Everything one seed needs to serve a batch of requests."""

    def __init__(self, cascade: torch.nn.Module, setting: Setting, corpus: Corpus, exact_index: Any,
                 k1: list[int], device: torch.device, tie_seed: int, max_slots: int, compile: bool = False,
                 recall_sample: int = 0, cold_ids: np.ndarray | None = None) -> None:
        self.setting, self.corpus, self.exact_index = setting, corpus, exact_index
        self.cold_ids = cold_ids if cold_ids is not None else np.empty(0, np.int64)
        # An approximate index is compared with the exact search on the first requests only:
        # at catalogue scale the exact search is what the approximate index is there to avoid.
        self.recall_left = int(recall_sample)
        self.k1, self.kmax = k1, max(k1)
        self.device, self.tie_seed, self.max_slots = device, tie_seed, max_slots
        self.tower = retrieval_tower(cascade, setting)
        self.later = stage_fns(cascade, setting, compile)
        self.quotas = list(setting.quotas[1:])
        self.features = torch.from_numpy(corpus.features).to(device)
        self.timing = {"retrieval_s": 0.0, "scoring_s": 0.0}

    def batch(self, request: dict[str, torch.Tensor], gt: np.ndarray, batch_no: int) -> dict[str, np.ndarray]:
        """Per request counts for one batch: GT size, GT in corpus, GT retrieved / alive per K1."""
        t0 = time.perf_counter()
        u = user_vectors(self.tower, request)
        _, rows = search(self.corpus.index, u, self.kmax)
        t1 = time.perf_counter()
        b = rows.shape[0]
        rows_t = torch.from_numpy(rows).to(self.device)
        items = self.features[rows_t.clamp_min(0)]
        found = rows >= 0
        with torch.inference_mode():
            first = score_items(self.later[0], request, items, self.max_slots) if self.later else None
        gen = np.random.default_rng([self.tie_seed, batch_no])
        priority = torch.from_numpy(gen.random(rows.shape, dtype=np.float32)).to(self.device)

        vids = np.where(found, self.corpus.video_ids[np.maximum(rows, 0)], -1)
        n_gt = (gt >= 0).sum(1)
        out = {"gt": n_gt, "in_corpus": (np.isin(gt, self.corpus.video_ids) & (gt >= 0)).sum(1),
               "cold": (np.isin(gt, self.cold_ids) & (gt >= 0)).sum(1)}
        stages = self.setting.stage_names[1:]
        retrieved = np.zeros((b, len(self.k1)), np.int64)
        after = np.zeros((len(stages), b, len(self.k1)), np.int64)
        positions = np.arange(self.kmax)
        for j, k in enumerate(self.k1):
            prefix = found & (positions < k)
            retrieved[:, j] = rows_in(gt, np.where(prefix, vids, -1)).sum(1)
            with torch.inference_mode():
                survivors, _ = run_cascade(self.later, self.quotas, request, items,
                                           torch.from_numpy(prefix).to(self.device), priority,
                                           first_scores=first, max_slots=self.max_slots)
            for s, alive in enumerate(survivors):
                after[s, :, j] = rows_in(gt, np.where(alive.cpu().numpy(), vids, -1)).sum(1)
        out["retrieved"] = retrieved
        out["after"] = after
        t2 = time.perf_counter()
        self.timing["retrieval_s"] += t1 - t0
        self.timing["scoring_s"] += t2 - t1
        if self.exact_index is not None:  # the approximate index against the exact search (not timed)
            n = min(b, max(self.recall_left, 0))
            recall = np.full((b, len(self.k1)), np.nan)
            if n:
                _, exact = search(self.exact_index, u[:n], self.kmax)
                recall[:n] = np.stack([overlap_recall(rows[:n, :k], exact[:, :k]) for k in self.k1], 1)
                self.recall_left -= n
            out["index_recall"] = recall
        return out


def _request_batches(arrays: Mapping[str, np.ndarray], n: int, batch_size: int, device: torch.device,
                     first: int = 0):
    from lcron.batches import gather

    for start in range(first, n, batch_size):
        sl = slice(start, min(start + batch_size, n))
        yield sl, gather(arrays, sl, fields.REQUEST_INPUTS, device)


#: Requests' counts are saved for a resume at most this often (seconds) while a seed runs.
PARTIAL_SAVE_EVERY_S = 60.0
PARTIAL_FILE = "serving.partial.npz"
PARTIAL_KIND = "lcron-serving-partial"


class _Partial:
    """What a stopped serve-eval had counted: per seed, the per-request arrays of the batches
    it finished (and whether the seed was complete), saved atomically beside serving.json
    with the inputs' hash. A rerun with the same inputs continues after the last saved batch:
    batches are deterministic (the cut-off priorities are seeded by batch number), so the
    result equals an uninterrupted run's; other inputs start afresh."""

    def __init__(self, path: Path, inputs_hash: str) -> None:
        self.path, self.inputs_hash = path, inputs_hash
        self.seeds: dict[int, dict[str, Any]] = {}
        self.corpus_info: dict[str, Any] = {}
        if not path.is_file():
            return
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                if meta.get("inputs_hash") != inputs_hash:
                    return
                self.corpus_info = dict(meta.get("corpus_info") or {})
                for seed_no, info in meta["seeds"].items():
                    arrays = {k: z[f"{seed_no}/{k}"] for k in info["keys"]}
                    self.seeds[int(seed_no)] = {"parts": [arrays], "batches": int(info["batches"]),
                                                "requests": int(info["requests"]), "done": bool(info["done"])}
        except (OSError, ValueError, KeyError, TypeError) as exc:  # damaged: start afresh, say so
            warnings.warn(f"serve-eval: ignoring unreadable partial results {path} ({type(exc).__name__})",
                          stacklevel=2)
            self.seeds = {}

    @staticmethod
    def is_ours(path: Path) -> bool:
        """Whether ``path`` is partial results a stopped serve-eval wrote (a folder holding only
        them is one lcron made)."""
        if path.is_symlink() or not path.is_file():
            return False
        try:
            with np.load(path, allow_pickle=False) as z:
                return json.loads(str(z["meta"])).get("kind") == PARTIAL_KIND
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return False

    def save(self, seed_no: int, parts: list[dict[str, np.ndarray]], batches: int, requests: int,
             done: bool) -> None:
        merged = _merge_parts(parts)
        self.seeds[seed_no] = {"parts": [merged], "batches": batches, "requests": requests, "done": done}
        meta = {"kind": PARTIAL_KIND, "inputs_hash": self.inputs_hash, "corpus_info": self.corpus_info,
                "seeds": {str(k): {"keys": sorted(v["parts"][0]), "batches": v["batches"],
                                   "requests": v["requests"], "done": v["done"]} for k, v in self.seeds.items()}}
        arrays = {f"{k}/{name}": a for k, v in self.seeds.items() for name, a in v["parts"][0].items()}
        with atomic.atomic_open(self.path, "wb") as fh:
            np.savez(fh, meta=np.array(json.dumps(meta)), **arrays)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def _merge_parts(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """One part of many: arrays joined along the request axis (axis 1 of ``after``)."""
    if not parts:
        return {}
    return {k: np.concatenate([p[k] for p in parts], axis=1 if k == "after" else 0) for k in parts[0]}


def _recall_sampled(merged: Mapping[str, np.ndarray]) -> int | None:
    """Requests compared with the exact search (their index recall is not NaN); None without
    an approximate index."""
    recall = merged.get("index_recall")
    return None if recall is None else int((~np.isnan(recall[:, 0])).sum())


def _seed_metrics(parts: list[dict[str, np.ndarray]], stages: Sequence[str], k1: list[int]) -> dict[str, Any]:
    """Per-seed means over requests with a GT; counts of evaluated / skipped requests."""
    merged = _merge_parts(parts)
    gt = merged["gt"].astype(np.float64)
    ok = gt > 0
    denom = np.where(ok, gt, 1.0)

    def share(counts: np.ndarray) -> float:
        return float((counts[ok] / denom[ok]).mean()) if ok.any() else float("nan")

    res: dict[str, Any] = {"evaluated": int(ok.sum()), "skipped": int((~ok).sum()),
                           "index_recall_requests": _recall_sampled(merged),
                           "gt_in_corpus": share(merged["in_corpus"]), "gt_cold": share(merged["cold"])}
    retrieved, after, index_recall = merged["retrieved"], merged["after"], merged.get("index_recall")
    for j, k in enumerate(k1):
        entry = {"recall_retrieval": share(retrieved[:, j])}
        for s, name in enumerate(stages):
            entry[f"recall_after/{name}"] = share(after[s, :, j])
        entry["joint_recall"] = share(after[-1, :, j]) if len(stages) else entry["recall_retrieval"]
        if index_recall is not None:
            sampled = index_recall[:, j][~np.isnan(index_recall[:, j])]
            entry["index_recall"] = float(sampled.mean()) if len(sampled) else float("nan")
        res[str(k)] = entry
    return res


# ------------------------------------------------------------------------ the run
def _inputs_hash(inputs: Mapping[str, Any]) -> str:
    """The configuration hash of the inputs. Values JSON cannot hold were always hashed as their
    ``str`` (e.g. a numpy integer among the index options): the round trip keeps every
    recorded hash value, so existing serving.json files keep matching their inputs."""
    return config_hash(json.loads(json.dumps(inputs, default=str)))


def _is_ours(folder: Path) -> bool:
    """An evaluation folder, or one holding only a stopped serve-eval's partial results."""
    return is_eval_folder(folder) or _Partial.is_ours(folder / PARTIAL_FILE)


@dataclass
class _ServingPlan:
    """A serving evaluation resolved before anything is computed: the run, the test day,
    the device, the corpus and the inputs (with their hash) that name the result."""

    run_dir: Path
    cfg: Mapping[str, Any]
    setting: Setting
    seed_dirs: list[Path]
    shard_set: Any
    test_day: str
    notes: list[str]
    dev: torch.device
    compile: bool
    slots: int
    video_ids: Any
    features: Any
    k1_req: tuple[int, ...]
    k1_list: list[int]
    index: str
    opts: IndexOptions
    inputs: dict[str, Any]
    inputs_hash: str


def serving_evaluate(run_dir: "str | Path", shards: Any = None, *, day: str | None = ServeEvalConfig.day,
                     k1: "Sequence[int] | str" = ServeEvalConfig.k1, index: str = ServeEvalConfig.index,
                     batch_size: int = ServeEvalConfig.batch_size, device: str = ServeEvalConfig.device,
                     tie_seed: int = ServeEvalConfig.tie_seed,
                     index_options: "Mapping[str, Any] | None" = ServeEvalConfig.index_options,
                     out: "str | Path | None" = None, max_requests: int | None = ServeEvalConfig.max_requests,
                     compile: bool | None = ServeEvalConfig.compile, max_slots: int | None = None,
                     progress: bool = True, overwrite: bool = False,
                     recall_sample: int = ServeEvalConfig.recall_sample) -> dict[str, Any]:
    """Serving-style evaluation of every completed seed of a run; writes ``serving.json``.

    ``shards`` defaults to the run's shard set, ``day`` to its last day (the test day);
    ``k1`` values larger than the corpus are clamped (and noted); ``index`` flat / ivf /
    hnsw (``index_options``: nlist, nprobe, hnsw_m, ef_search, ef_construction), or auto:
    exact up to :data:`AUTO_FLAT_MAX_ITEMS` corpus items, IVF above; an approximate index is
    compared with the exact search on the first ``recall_sample`` requests (``index_recall``);
    ``tie_seed`` fixes the GT and cut-off tie-breaks; ``out`` defaults to ``<run_dir>/eval``;
    ``max_requests`` evaluates only the first requests of the day; ``compile`` None takes the
    device's default (``DEVICE_DEFAULTS``: on for CPU, off for CUDA). Returns the document.
    An existing ``serving.json`` made from other inputs (run, seeds, day, K1, index, tie seed)
    is an :class:`OutputExistsError` unless ``overwrite``, as with every other step's output;
    the same inputs are evaluated again (a stopped run's saved batches are kept). The output
    folder is locked for the step (lcron.step_output); serving.json is one atomic file, so its
    presence is its completion marker. The keywords besides ``out``, ``max_slots``, ``progress``
    and ``overwrite`` are :class:`ServeEvalConfig`'s fields, checked before anything is written.
    """
    ServeEvalConfig(day=day, k1=k1, index=index, batch_size=batch_size, device=device, tie_seed=tie_seed,
                    index_options=index_options, max_requests=max_requests, compile=compile,
                    recall_sample=recall_sample)
    IndexOptions.from_mapping(index_options)
    out_dir = Path(out) if out is not None else Path(run_dir) / "eval"
    command = outputs.current_command(f"lcron serve-eval --model {run_dir} --out {out_dir}")
    with step_output(out_dir, command, ours=_is_ours, folder_what="an lcron evaluation folder") as step:
        plan = _plan_serving(run_dir, shards, day, k1, index, index_options, batch_size, device, compile, max_slots,
                             tie_seed, max_requests, recall_sample)
        step.claim("serving.json", plan.inputs, plan.inputs_hash, overwrite, held="a serving evaluation of other inputs",
                   where=out_dir / "serving.json", record_noun="serving evaluation",
                   record_kind_ok=lambda kind: kind == KIND, read_always=False)
        arrays = plan.shard_set.load_day(plan.test_day)
        n_req = int(arrays["request_id"].shape[0])
        if max_requests is not None:
            n_req = min(n_req, int(max_requests))
        cold, catalogue = _catalogue(plan, arrays, n_req, progress)
        partial = _Partial(out_dir / PARTIAL_FILE, plan.inputs_hash)
        per_seed: dict[int, dict[str, Any]] = {}
        timings: dict[str, Any] = {}
        for seed_dir in plan.seed_dirs:
            seed_no = seed_number(seed_dir)
            per_seed[seed_no], timings[str(seed_no)] = _evaluate_seed(plan, seed_dir, partial, arrays, n_req, cold,
                                                                      tie_seed, batch_size, recall_sample, progress)
        doc = _serving_doc(plan, per_seed, timings, dict(partial.corpus_info), catalogue, n_req, tie_seed)
        atomic.write_json(out_dir / "serving.json", doc)
        partial.remove()
    return doc


def _plan_serving(run_dir: "str | Path", shards: Any, day: str | None, k1: "Sequence[int] | str", index: str,
                  index_options: "Mapping[str, Any] | None", batch_size: int, device: str, compile: bool | None,
                  max_slots: int | None, tie_seed: int, max_requests: int | None, recall_sample: int) -> _ServingPlan:
    """Open the run and its test day (the options were checked as a ServeEvalConfig), prepare
    the device, clamp K1 to the corpus and name the inputs."""
    opts = IndexOptions.from_mapping(index_options)
    k1_req = parse_k1(k1)
    run = FinishedRun.open(run_dir)
    cfg, shard_set = run.config, run.shards(shards)
    test_day, notes = _test_day(shard_set, day, cfg)
    dev = resolve_device(device)
    if compile is None:  # the device's default (lcron.devices.DEVICE_DEFAULTS): on for CPU, off for CUDA
        compile = device_defaults(dev).serve_compile
    if compile:
        from lcron.models.fused import compile_in_process, trust_cpu_isa

        trust_cpu_isa()
        compile_in_process()
    slots = int(max_slots or DEFAULT_MAX_SLOTS.get(dev.type, DEFAULT_MAX_SLOTS["cpu"]))
    video_ids, features = shard_set.item_table()
    k1_list, clamp_notes = clamp_k1(k1_req, len(video_ids))
    notes += clamp_notes
    for note in clamp_notes:
        log(f"serve-eval: {note}")
    k1_list = sorted(set(k1_list))
    index = resolve_index_kind(index, len(video_ids))
    inputs = {"run_config_hash": cfg.get("config_hash"), "seeds": [p.name for p in run.seed_dirs],
              "shards": shard_set.fingerprint(), "day": test_day, "k1": k1_list, "index": index,
              "index_options": dict(index_options or {}), "tie_seed": tie_seed, "max_requests": max_requests,
              **({"recall_sample": recall_sample} if index != "flat" else {})}
    return _ServingPlan(run.root, cfg, run.setting, run.seed_dirs, shard_set, test_day, notes, dev, bool(compile),
                        slots, video_ids, features, k1_req, k1_list, index, opts, inputs, _inputs_hash(inputs))


def _test_day(shard_set: Any, day: str | None, cfg: Mapping[str, Any]) -> tuple[str, list[str]]:
    """The test day (default: the shard set's last) and the note, warned about, when the run trained on it."""
    if not shard_set.days:
        raise DataError(f"shard set {shard_set.root} holds no complete day")
    test_day = day or shard_set.days[-1]
    if test_day not in shard_set.days:
        raise DataError(f"day {test_day} is not a complete day of {shard_set.root}; days: {', '.join(shard_set.days)}")
    notes = []
    if test_day in cfg.get("days", []):
        notes.append(f"day {test_day} was a training day of this run: the numbers are not held-out")
        warnings.warn(f"serve-eval: test {notes[-1]}", stacklevel=3)
    return test_day, notes


def _catalogue(plan: _ServingPlan, arrays: Mapping[str, np.ndarray], n_req: int,
               progress: bool) -> tuple[np.ndarray, dict[str, Any]]:
    """The cold items and the catalogue facts. Why catalogue recall can sit far below the
    cascade's recall on its logged candidates: items no training day offered as a candidate
    keep the item tower's untrained inputs."""
    video_ids = plan.video_ids
    trained_days = [d for d in plan.cfg.get("days", []) if d in plan.shard_set.days]
    t0 = time.perf_counter()
    cold = cold_items(plan.shard_set, trained_days, np.asarray(video_ids, dtype=np.int64))
    catalogue = {"items": int(len(video_ids)), "cold_items": int(len(cold)),
                 "cold_share": float(len(cold) / max(len(video_ids), 1)), "training_days": trained_days,
                 "requests_evaluated_of_day": n_req, "day_requests": int(arrays["request_id"].shape[0]),
                 "cold_seconds": round(time.perf_counter() - t0, 2)}
    if progress:
        log(f"serve-eval: {len(cold):,} of {len(video_ids):,} corpus items ({catalogue['cold_share']:.1%}) were never "
            f"a candidate on the run's {len(trained_days)} training day(s)")
    return cold, catalogue


def _evaluate_seed(plan: _ServingPlan, seed_dir: Path, partial: _Partial, arrays: Mapping[str, np.ndarray],
                   n_req: int, cold: np.ndarray, tie_seed: int, batch_size: int, recall_sample: int,
                   progress: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """One seed's metrics and timing: kept from a stopped run's complete seed, or computed
    (continuing after a stopped run's saved batches), saving the counts as batches finish."""
    seed_no, stages = seed_number(seed_dir), list(plan.setting.stage_names[1:])
    saved = partial.seeds.get(seed_no)
    if saved is not None and saved["done"]:
        log(f"serve-eval seed {seed_no}: complete in {partial.path}, kept")
        return _seed_metrics(saved["parts"], stages, plan.k1_list), {"kept_from_a_stopped_run": True}
    t0 = time.perf_counter()
    cascade, _ = load_cascade(seed_dir / "model.pt", plan.dev, compile=plan.compile)
    if progress:  # at catalogue scale the index takes minutes before the first request
        log(f"serve-eval seed {seed_no}: embedding {len(plan.video_ids):,} corpus items and building the {plan.index} "
            "index")
    corpus = build_corpus(retrieval_tower(cascade, plan.setting), plan.video_ids, plan.features, plan.index, plan.opts,
                          device=plan.dev)
    exact = build_index(corpus.vectors, "flat", device=plan.dev) if plan.index != "flat" else None
    t_build = time.perf_counter() - t0
    if progress:
        log(f"serve-eval seed {seed_no}: corpus and index ready in {t_build:.1f} s")
    partial.corpus_info = {"items": corpus.size, **corpus.describe()}
    ev = _SeedEvaluator(cascade, plan.setting, corpus, exact, plan.k1_list, plan.dev, tie_seed, plan.slots,
                        plan.compile, recall_sample, cold)
    parts: list[dict[str, np.ndarray]] = []
    first_batch = done_requests = 0
    if saved is not None:  # a stopped run's batches: kept, and the recall sample already taken
        parts, first_batch, done_requests = list(saved["parts"]), saved["batches"], saved["requests"]
        ev.recall_left -= _recall_sampled(parts[0]) or 0
        log(f"serve-eval seed {seed_no}: resuming after {done_requests:,} requests of a stopped run")
    parts, batches = _run_batches(plan, ev, partial, seed_no, arrays, n_req, parts, first_batch, done_requests,
                                  tie_seed, batch_size, progress)
    partial.save(seed_no, parts, batches, n_req, done=True)
    total = ev.timing["retrieval_s"] + ev.timing["scoring_s"]
    timing = {"corpus_and_index_s": t_build, **ev.timing,
              "requests_per_s": (n_req - done_requests) / total if total > 0 else None,
              **({"resumed_after_requests": done_requests} if done_requests else {})}
    return _seed_metrics(parts, stages, plan.k1_list), timing


def _run_batches(plan: _ServingPlan, ev: "_SeedEvaluator", partial: _Partial, seed_no: int,
                 arrays: Mapping[str, np.ndarray], n_req: int, parts: list[dict[str, np.ndarray]], first_batch: int,
                 done_requests: int, tie_seed: int, batch_size: int,
                 progress: bool) -> tuple[list[dict[str, np.ndarray]], int]:
    """Serve the requests after ``done_requests`` in batches, saving the counts for a resume at
    most every :data:`PARTIAL_SAVE_EVERY_S`; returns the parts and the number of batches done."""
    bar = Progress(n_req, f"serve-eval seed {seed_no} day {plan.test_day}", unit="req", enabled=progress)
    bar.update(done_requests)
    last_save = time.perf_counter()
    batch_no = first_batch
    for batch_no, (sl, request) in enumerate(
            _request_batches(arrays, n_req, batch_size, plan.dev, first=done_requests), start=first_batch):
        parts.append(ev.batch(request, logged_gt(arrays, sl, plan.setting, tie_seed), batch_no))
        bar.update(sl.stop - sl.start)
        if time.perf_counter() - last_save >= PARTIAL_SAVE_EVERY_S and sl.stop < n_req:
            partial.save(seed_no, parts, batch_no + 1, sl.stop, done=False)
            parts, last_save = list(partial.seeds[seed_no]["parts"]), time.perf_counter()
    bar.close()
    if not parts:
        raise DataError(f"day {plan.test_day} of {plan.shard_set.root} has no request to evaluate")
    return parts, batch_no + 1


def _serving_doc(plan: _ServingPlan, per_seed: dict[int, dict[str, Any]], timings: dict[str, Any],
                 corpus_info: dict[str, Any], catalogue: dict[str, Any], n_req: int, tie_seed: int) -> dict[str, Any]:
    """serving.json's document: the mean ± std over seeds of every number, and each seed's."""
    seeds = sorted(per_seed)
    results: dict[str, Any] = {"gt_in_corpus": summarize_seeds([per_seed[s]["gt_in_corpus"] for s in seeds]),
                               "gt_cold": summarize_seeds([per_seed[s]["gt_cold"] for s in seeds])}
    for k in plan.k1_list:
        keys = per_seed[seeds[0]][str(k)].keys()
        results[str(k)] = {key: summarize_seeds([per_seed[s][str(k)][key] for s in seeds]) for key in keys}
    setting = plan.setting
    return {
        "kind": KIND,
        "format_version": FORMAT_VERSION,
        "run_dir": str(plan.run_dir),
        "method": plan.cfg.get("method"),
        "setting": setting.name,
        "stage_names": list(setting.stage_names),
        "later_quotas": list(setting.quotas[1:]),
        "shards": str(plan.shard_set.root),
        "day": plan.test_day,
        "requests": n_req,
        "evaluated": per_seed[seeds[0]]["evaluated"],
        "skipped_no_gt": per_seed[seeds[0]]["skipped"],
        "seeds": seeds,
        "k1": plan.k1_list,
        "k1_requested": list(plan.k1_req),
        "index": corpus_info,
        "catalogue": catalogue,
        "device": str(plan.dev),
        "tie_seed": tie_seed,
        "notes": plan.notes,
        "results": results,
        "per_seed": {str(s): per_seed[s] for s in seeds},
        "timing": timings,
        "inputs": plan.inputs,
        "inputs_hash": plan.inputs_hash,
    }


# ---------------------------------------------------------------------------- bench
def bench_serving(shards: Any, run_dir: "str | Path", k1_list: Sequence[int], *, requests: int = 4096,
                  compile: bool = True, max_slots: int = 32768, seed_dir: "str | Path | None" = None,
                  repeats: int = 3, threads: int | None = None) -> list[dict[str, Any]]:
    """Serving throughput on CPU with the exact index: one row per K1.

    Per K1, requests of the shard set's last day are served in batches of
    ``max(1, max_slots // K1)`` requests (so every scoring call has one shape and compiles
    once): retrieval (user tower + faiss top-K1) and cascade scoring (the later stages over
    the K1 items with their quotas, :func:`lcron.serving.loader.run_cascade`) are timed
    separately, in requests/s, best of ``repeats`` passes after a warm-up pass (which
    compiles). ``compile``: the later stage models under torch.compile (see CompiledStage)
    with DIN's fused attention core; False runs them eager. ``threads``: torch and faiss
    threads for the measurement (restored afterwards; default: as they are).
    """
    if threads is None:
        return _bench_serving(shards, run_dir, k1_list, requests=requests, compile=compile, max_slots=max_slots,
                              seed_dir=seed_dir, repeats=repeats)
    from lcron.serving.index import import_faiss

    faiss = import_faiss()
    before = torch.get_num_threads(), faiss.omp_get_max_threads()
    torch.set_num_threads(int(threads))
    faiss.omp_set_num_threads(int(threads))
    try:
        return _bench_serving(shards, run_dir, k1_list, requests=requests, compile=compile, max_slots=max_slots,
                              seed_dir=seed_dir, repeats=repeats)
    finally:
        torch.set_num_threads(before[0])
        faiss.omp_set_num_threads(before[1])


def _bench_serving(shards: Any, run_dir: "str | Path", k1_list: Sequence[int], *, requests: int, compile: bool,
                   max_slots: int, seed_dir: "str | Path | None", repeats: int) -> list[dict[str, Any]]:
    run = FinishedRun.open(run_dir)
    setting, shard_set = run.setting, run.shards(shards)
    dev = torch.device("cpu")
    folder = Path(seed_dir) if seed_dir is not None else run.seed_dirs[0]
    cascade, _ = load_cascade(folder / "model.pt", dev, compile=compile)
    video_ids, features = shard_set.item_table()
    tower = retrieval_tower(cascade, setting)
    corpus = build_corpus(tower, video_ids, features, "flat")
    arrays = shard_set.load_day(shard_set.days[-1])
    available = int(arrays["request_id"].shape[0])
    later = stage_fns(cascade, setting, compile, dynamic=False)
    quotas = list(setting.quotas[1:])
    feats = torch.from_numpy(corpus.features)
    rows_out = []
    for k_req in k1_list:
        k = min(int(k_req), corpus.size)
        per_batch = max(1, min(max_slots // k, int(requests), available))
        n = max(1, min(int(requests), available) // per_batch) * per_batch
        batches = [r for _, r in _request_batches(arrays, n, per_batch, dev)]
        priorities = [torch.from_numpy(np.random.default_rng([0, i]).random((per_batch, k), dtype=np.float32))
                      for i in range(len(batches))]

        def one_pass() -> tuple[float, float, float]:
            t_ret = t_score = 0.0
            cpu0 = time.process_time()
            for request, priority in zip(batches, priorities):
                t0 = time.perf_counter()
                _, rows = search(corpus.index, user_vectors(tower, request), k)
                t1 = time.perf_counter()
                rows_t = torch.from_numpy(rows)
                with torch.inference_mode():
                    run_cascade(later, quotas, request, feats[rows_t.clamp_min(0)], rows_t >= 0, priority,
                                max_slots=per_batch * k)
                t_ret += t1 - t0
                t_score += time.perf_counter() - t1
            return t_ret, t_score, time.process_time() - cpu0

        t0 = time.perf_counter()
        one_pass()  # warm-up (and compile)
        warmup = time.perf_counter() - t0
        passes = [one_pass() for _ in range(max(1, repeats))]
        rows_out.append({"name": f"serving {setting.name} K1={k}", "setting": setting.name, "k1": k,
                         "k1_requested": int(k_req), "corpus_items": corpus.size, "requests": n,
                         "batch_requests": per_batch, **_bench_rates(n, passes, compile, warmup)})
    return rows_out


def _bench_rates(n: int, passes: list[tuple[float, float, float]], compile: bool, warmup: float) -> dict[str, Any]:
    """A serving benchmark row's rates from its timed passes (retrieval, scoring, CPU seconds):
    the best pass of each."""
    best_ret = min(p[0] for p in passes)
    best_score = min(p[1] for p in passes)
    best_total = min(p[0] + p[1] for p in passes)
    best_cpu = min(p[2] for p in passes)
    threads = torch.get_num_threads()
    return {
        "index": "flat",
        "device": "cpu",
        "threads": threads,
        "compile": compile,
        "warmup_s": warmup,
        "retrieval_requests_per_s": n / best_ret if best_ret > 0 else None,
        "scoring_requests_per_s": n / best_score if best_score > 0 else None,
        "requests_per_s": n / best_total if best_total > 0 else None,
        # Wall-clock rates suffer when other processes share the cores; this one counts the
        # process's own CPU seconds spread over its threads (an estimate for dedicated cores,
        # pessimistic where idle worker threads spin).
        "requests_per_cpu_s_per_thread": n * threads / best_cpu if best_cpu > 0 else None,
    }


# ---------------------------------------------------------------------------- CLI
def add_serve_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """``lcron serve-eval --model RUN_DIR [--shards DIR] [--days DAY] [--k1 K1,...] ...``: the inputs,
    one option per :class:`ServeEvalConfig` field and the index options."""
    from lcron.serving.export import add_index_option_arguments

    parser.add_argument("--model", required=True, metavar="RUN_DIR", help="training run folder (holds run.json)")
    parser.add_argument("--shards", default=None, metavar="DIR", help="shard set (default: the run's)")
    parser.add_argument("--out", default=None, metavar="DIR", help="folder for serving.json (default RUN_DIR/eval)")
    add_arguments(parser, ServeEvalConfig)
    add_index_option_arguments(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress line")
    parser.add_argument("--overwrite", action="store_true", help="replace a serving.json made from other inputs")


def format_table(doc: Mapping[str, Any]) -> str:
    """A plain-text table of serving.json's results (one line per K1)."""
    stages = doc["stage_names"][1:]
    head = ["K1", "retrieval"] + [f"after {s}" for s in stages]
    has_ir = any("index_recall" in doc["results"][str(k)] for k in doc["k1"])
    if has_ir:
        head.append("index recall")

    def cell(e: Mapping[str, Any]) -> str:
        if e["mean"] is None:
            return "n/a"
        return f"{e['mean']:.4f}" + (f" ± {e['std']:.4f}" if e["std"] is not None else "")

    lines = ["\t".join(head)]
    for k in doc["k1"]:
        r = doc["results"][str(k)]
        row = [str(k), cell(r["recall_retrieval"])] + [cell(r[f"recall_after/{s}"]) for s in stages]
        if has_ir:
            row.append(cell(r["index_recall"]))
        lines.append("\t".join(row))
    gic = doc["results"]["gt_in_corpus"]
    lines.append(f"GT in corpus: {cell(gic)}; seeds {doc['seeds']}; {doc['evaluated']} requests "
                 f"({doc['skipped_no_gt']} without GT skipped); corpus {doc['index'].get('items')} items, "
                 f"index {doc['index'].get('kind')}")
    return "\n".join(lines)


def run_serve_eval(args: argparse.Namespace) -> int:
    from lcron.serving.export import index_options_from_args

    config = from_args(ServeEvalConfig, args, index_options=index_options_from_args(args))
    doc = serving_evaluate(args.model, args.shards, **config.as_kwargs(), out=args.out, overwrite=args.overwrite,
                           progress=not (args.no_progress or getattr(args, "quiet", False)))
    print(format_table(doc))
    out_dir = Path(args.out) if args.out else Path(args.model) / "eval"
    log(f"serve-eval: wrote {out_dir / 'serving.json'}")
    return 0
