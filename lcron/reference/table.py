"""The measured faithful-vs-reference table of docs/reference.md (``make reference-table``).

On one fixed synthetic data set, for every method and both settings it trains each seed
twice - default mode (faithful shards and models) and reference mode (``--reference-quirks``
at preprocess and train) - and scores the test day three ways:

* ``default``: default models, default protocol (what ``lcron evaluate`` reports for a default run);
* ``ref models``: reference-mode models, default protocol - what the feature/model quirks cost;
* ``reference``: reference-mode models, reference protocol (what ``lcron evaluate`` reports
  for a reference run) - the further effect of the evaluation protocol.

Everything runs in one process so the compiled DIN kernels are reused. The numbers are
written to ``<out>/reference_table.json`` and printed as the markdown table of the docs.
Rerunnable: a finished (method, setting, mode) is read back from its run folder's
evaluation files, not retrained.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

METHODS = ("bce", "icc", "rankflow", "fs_ranknet", "fs_lambdaloss", "arf", "arf_v2", "lcron")
COLUMNS = ("default", "ref_models", "reference")
NEW_USER_RATE = 0.5


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _scores(run_seed_dir: Path, arrays: dict[str, np.ndarray], compile: bool) -> list[np.ndarray]:
    from lcron.evaluation.scoring import item_index, score_arrays
    from lcron.run_folder import load_cascade

    cascade, _ = load_cascade(run_seed_dir / "model.pt", "cpu", compile=compile)
    return score_arrays(cascade, arrays, batch_size=4096, pad_last=compile, items=item_index(arrays["items"]))


def _joint(scores, arrays, setting, reference_protocol: bool, batch_size: int) -> float:
    from lcron.evaluation.per_request import request_metrics
    from lcron.reference_policy import protocol

    if reference_protocol:
        kept = protocol.full_batches(arrays, batch_size)
        r = len(kept["label"])
        _, means, _ = protocol.request_metrics([s[:r] for s in scores], np.asarray(kept["label"]),
                                               np.asarray(kept["mask"]), setting)
    else:
        _, means, _ = request_metrics(scores, np.asarray(arrays["label"]), np.asarray(arrays["mask"]), setting)
    return float(means["joint_recall"])


def _stats(values: list[float]) -> dict[str, Any]:
    a = np.asarray(values, dtype=np.float64)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if a.size > 1 else None, "n": int(a.size),
            "per_seed": [float(v) for v in a]}


def data_facts(shards) -> dict[str, float]:
    """How often the quirks apply on the test day: empty histories, history fill, cat1 = 2 items, padding slots."""
    a = shards.load_day(shards.days[-1])
    seq_mask = np.asarray(a["seq_mask"]).astype(bool)
    mask = np.asarray(a["mask"]).astype(bool)
    cat1 = np.asarray(a["items"])[..., 3]
    return {
        "requests": int(mask.shape[0]),
        "empty_history_share": float((~seq_mask.any(1)).mean()),
        "mean_valid_steps": float(seq_mask.sum(1).mean()),
        # default shards store raw + 1, so raw category 2 is stored as 3
        "cat1_2_share_of_filled_slots": float((cat1[mask] == 3).mean()),
        "padding_slot_share": float((~mask).mean()),
        "requests_with_fewer_than_10_valid": float((mask.sum(1) < 10).mean()),
    }


def run(out: Path, *, seeds: tuple[int, ...], days: int, requests: int, users: int, items: int, batch_size: int,
        methods: tuple[str, ...], stages: tuple[int, ...], compile: bool) -> dict[str, Any]:
    import torch

    from lcron import atomic
    from lcron.data.shards import preprocess
    from lcron.data.synthetic import SyntheticConfig, generate_from_config
    from lcron.train import TrainConfig, train

    out.mkdir(parents=True, exist_ok=True)
    # Half the users new (the generator's default is 10%), so that short and empty histories -
    # where quirks 1 and 3 act - are common rather than rare.
    data_cfg = SyntheticConfig(num_days=days, requests_per_day=requests, users=users, items=items, seed=7,
                               new_user_rate=NEW_USER_RATE)
    src = generate_from_config(out / "recflow", data_cfg, progress=False)
    doc: dict[str, Any] = {"data": {"days": days, "requests_per_day": requests, "users": users, "items": items,
                                    "generator_seed": 7, "new_user_rate": NEW_USER_RATE},
                           "train": {"batch_size": batch_size, "lr": 1e-2, "seeds": list(seeds), "compile": compile},
                           "rows": [], "facts": {}}
    t_start = time.perf_counter()
    for st in stages:
        shards = {mode: preprocess(str(src), out / f"shards-{st}-{mode}", st, progress=False,
                                   reference_quirks=(mode == "reference"))
                  for mode in ("default", "reference")}
        doc["facts"][str(st)] = data_facts(shards["default"])
        test = {mode: s.load_day(s.days[-1]) for mode, s in shards.items()}
        setting = shards["default"].setting
        for method in methods:
            row: dict[str, Any] = {"setting": st, "method": method}
            values: dict[str, list[float]] = {c: [] for c in COLUMNS}
            for mode in ("default", "reference"):
                run_dir = out / "runs" / f"{method}-{st}-{mode}"
                cfg = TrainConfig(method=method, batch_size=batch_size, seeds=seeds, compile=compile,
                                  reference_quirks=(mode == "reference"))
                t0 = time.perf_counter()
                results = train(shards[mode], run_dir, cfg, progress=False)
                for r in sorted(results, key=lambda r: r.seed):
                    scores = _scores(r.folder, test[mode], compile)
                    if mode == "default":
                        values["default"].append(_joint(scores, test[mode], setting, False, batch_size))
                    else:
                        values["ref_models"].append(_joint(scores, test[mode], setting, False, batch_size))
                        values["reference"].append(_joint(scores, test[mode], setting, True, batch_size))
                _log(f"{method} {st}-stage {mode}: {time.perf_counter() - t0:.1f} s "
                     f"(elapsed {time.perf_counter() - t_start:.0f} s)")
            row.update({c: _stats(v) for c, v in values.items()})
            doc["rows"].append(row)
            atomic.write_json(out / "reference_table.json", doc)
    doc["seconds"] = time.perf_counter() - t_start
    atomic.write_json(out / "reference_table.json", doc)
    return doc


def _fmt(entry: dict[str, Any]) -> str:
    s = f"{entry['mean']:.3f}"
    return s + (f" ± {entry['std']:.3f}" if entry.get("std") is not None and math.isfinite(entry["std"]) else "")


def markdown(doc: dict[str, Any]) -> str:
    """The docs table: one row per (setting, method), the three columns and the two differences."""
    lines = ["| setting | method | default | reference models, default protocol | reference (models + protocol) "
             "| model quirks cost | protocol cost |",
             "|---|---|---|---|---|---|---|"]
    for row in doc["rows"]:
        d, m, r = (row[c]["mean"] for c in COLUMNS)
        lines.append(f"| {row['setting']}-stage | {row['method']} | {_fmt(row['default'])} | {_fmt(row['ref_models'])} "
                     f"| {_fmt(row['reference'])} | {m - d:+.3f} | {r - m:+.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lcron.reference.table", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/reference-table", help="work folder (data, shards, runs, json)")
    p.add_argument("--seeds", default="1,2", help="training seeds (default 1,2)")
    p.add_argument("--days", type=int, default=4, help="synthetic days; the last is the test day (default 4)")
    p.add_argument("--requests-per-day", type=int, default=640, help="requests per day (default 640)")
    p.add_argument("--users", type=int, default=200)
    p.add_argument("--items", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=64, help="training batch; also the reference protocol's "
                   "evaluation batch (default 64)")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--stages", default="2,3")
    p.add_argument("--compile", action="store_true", help="fuse DIN's attention (pays off for longer runs only)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice); with one "
                   "process per setting on a 2-core machine, 1")
    p.add_argument("--print", nargs="+", metavar="JSON", dest="print_only",
                   help="only print the table of finished reference_table.json files (e.g. one per setting)")
    a = p.parse_args(argv)
    if a.print_only:
        docs = [json.loads(Path(f).read_text()) for f in a.print_only]
        merged = {**docs[0], "rows": [r for d in docs for r in d["rows"]],
                  "facts": {k: v for d in docs for k, v in d["facts"].items()}}
        print(markdown(merged))
        print(json.dumps(merged["facts"], indent=1))
        print("seconds: " + ", ".join(f"{d.get('seconds', float('nan')):.0f}" for d in docs))
        return 0
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    doc = run(Path(a.out), seeds=tuple(int(s) for s in a.seeds.split(",")), days=a.days,
              requests=a.requests_per_day, users=a.users, items=a.items, batch_size=a.batch_size,
              methods=tuple(a.methods.split(",")), stages=tuple(int(s) for s in a.stages.split(",")),
              compile=a.compile)
    print(markdown(doc))
    print(json.dumps(doc["facts"], indent=1))
    print(f"total {doc['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
