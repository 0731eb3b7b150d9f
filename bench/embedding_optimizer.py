"""Dense vs lazy embedding Adam: end-to-end recall of every method on the same data.

    .venv/bin/python bench/embedding_optimizer.py [--out build/embedding-optimizer] [--seeds 1,2]
        [--days 3] [--requests 3000] [--stages 2] [--methods bce,...,lcron]

Generates one synthetic RecFlow data set (``lcron generate``), preprocesses it
(``lcron preprocess``), trains every method with ``--embedding-optimizer dense`` and
``lazy`` on every day but the last (``lcron train``, same seeds, same batches) and
evaluates each run on the last day (``lcron evaluate``). Prints a Markdown table of joint
recall (mean +- std over seeds) and per-stage Recall@10@m per method and optimizer, with
the lazy - dense difference, and writes it with the raw numbers to ``<out>/result.json``.
Everything is reused when rerun with the same arguments (training and evaluation skip
what is complete). docs/embedding_optimizer.md holds the table this produced.

About 15 minutes on the 2-core development machine with the defaults (compile off).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lcron.losses import METHODS  # noqa: E402 - every registered method, in registry order

OPTIMIZERS = ("dense", "lazy")


def _cell(entry: dict) -> str:
    if entry.get("std") is None:
        return f"{entry['mean']:.4f}"
    return f"{entry['mean']:.4f} ± {entry['std']:.4f}"


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="build/embedding-optimizer")
    ap.add_argument("--seeds", default="1,2")
    ap.add_argument("--days", type=int, default=3, help="days generated (the last one is the test day)")
    ap.add_argument("--requests", type=int, default=3000, help="requests per day")
    ap.add_argument("--users", type=int, default=500)
    ap.add_argument("--items", type=int, default=5000)
    ap.add_argument("--stages", type=int, choices=(2, 3), default=2)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--batch-size", type=int, default=256, help="requests per step (256: ~11 steps a day)")
    ap.add_argument("--optimizers", default=",".join(OPTIMIZERS), help="embedding optimizers to run (default both)")
    ap.add_argument("--table-only", action="store_true",
                    help="train nothing: print the table of the runs already evaluated under --out")
    a = ap.parse_args(argv)

    from lcron.data.shards import ShardSet, preprocess
    from lcron.data.synthetic import generate
    from lcron.evaluate import evaluate
    from lcron.train import TrainConfig, parse_seeds, train

    out = Path(a.out)
    data = {"num_days": a.days, "requests_per_day": a.requests, "users": a.users, "items": a.items, "seed": 0}
    marker = out / "data.json"
    source, shard_dir = out / "recflow", out / f"shards-{a.stages}"
    if not a.table_only and not (marker.is_file() and json.loads(marker.read_text()) == {**data, "stages": a.stages}
                                 and (shard_dir / "dataset.json").exists()):
        import shutil

        shutil.rmtree(out, ignore_errors=True)
        generate(source, progress=False, **data)
        preprocess(str(source), shard_dir, a.stages, progress=False)
        out.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps({**data, "stages": a.stages}))
    shards = None if a.table_only else ShardSet(shard_dir)
    seeds = parse_seeds(a.seeds)
    methods = [m for m in a.methods.split(",") if m]
    results: dict[str, dict[str, dict]] = {}
    t_start = time.perf_counter()
    for method in methods:
        for opt in OPTIMIZERS:
            run = out / "runs" / f"{method}-{opt}"
            if opt not in a.optimizers.split(","):
                continue
            if a.table_only:
                metrics = run / "eval" / "metrics.json"
                if metrics.is_file():
                    results.setdefault(method, {})[opt] = {"metrics": json.loads(metrics.read_text())["metrics"]}
                continue
            cfg = TrainConfig(method=method, batch_size=a.batch_size, seeds=seeds, compile=False,
                              embedding_optimizer=opt)
            t0 = time.perf_counter()
            trained = train(shards, run, cfg, progress=False)
            doc = evaluate(run, shards, run / "eval", compile=False, progress=False)
            rates = [r.summary.get("steady_requests_per_s") for r in trained]
            seconds = round(time.perf_counter() - t0, 1)
            results.setdefault(method, {})[opt] = {"metrics": doc["metrics"], "steady_requests_per_s": rates,
                                                   "seconds": seconds}
            jr = doc["metrics"]["joint_recall"]
            print(f"{method:<14} {opt:<6} joint recall {_cell(jr)}  ({seconds:.0f} s)", file=sys.stderr)

    results = {m: r for m, r in results.items() if set(r) == set(OPTIMIZERS)}  # both modes evaluated
    if not results:
        print("no method has both modes evaluated yet", file=sys.stderr)
        return 1
    stage_keys = [k for k in next(iter(results.values()))["dense"]["metrics"] if k.startswith("recall_at_10_m/")]
    lines = ["| method | joint recall, dense | joint recall, lazy | lazy - dense | "
             + " | ".join(f"Recall@10@m {k.split('/')[1]} dense / lazy" for k in stage_keys) + " |",
             "|---|---|---|---|" + "---|" * len(stage_keys)]
    for method, by_opt in results.items():
        d, z = by_opt["dense"]["metrics"], by_opt["lazy"]["metrics"]
        diff = z["joint_recall"]["mean"] - d["joint_recall"]["mean"]
        stages = " | ".join(f"{d[k]['mean']:.4f} / {z[k]['mean']:.4f}" for k in stage_keys)
        lines.append(f"| {method} | {_cell(d['joint_recall'])} | {_cell(z['joint_recall'])} | {diff:+.4f} | {stages} |")
    table = "\n".join(lines)
    print(table)
    load = os.getloadavg()
    if shards is None:
        return 0
    (out / "result.json").write_text(json.dumps({
        "data": {**data, "stages": a.stages, "test_day": shards.days[-1], "train_days": shards.days[:-1]},
        "seeds": list(seeds), "batch_size": a.batch_size, "results": results, "table": table,
        "total_seconds": round(time.perf_counter() - t_start, 1), "load_average": load}, indent=1))
    print(f"total {time.perf_counter() - t_start:.0f} s, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
