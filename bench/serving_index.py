"""Exact (flat) against IVF retrieval as the corpus grows: what serve-eval's ``--index auto``
threshold (lcron.serving.index.AUTO_FLAT_MAX_ITEMS) is chosen from.

    PYTHONPATH=. python bench/serving_index.py [--items 20000,100000,...] [--out build/serving_index.json]

For each corpus size: random 32-dimensional item and user vectors (the towers' width), one
flat and one IVF index built by lcron.serving.index.build_index with serve-eval's own
options (nlist = 4 sqrt(items), nprobe 16), the search time of 2,048 requests at K1 = 1000
(serve-eval searches once with the largest K1), the IVF build time, the IVF's recall of the
exact top-1000, and how many test requests it takes before the IVF build has paid for itself.
Random vectors are a pessimistic case for IVF recall (trained towers cluster); the times are
what matters here.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def measure(items: int, requests: int, k: int, dim: int = 32, seed: int = 0) -> dict:
    from lcron.serving.index import build_index, overlap_recall, search

    rng = np.random.default_rng(seed)
    corpus = rng.standard_normal((items, dim), dtype=np.float32)
    users = rng.standard_normal((requests, dim), dtype=np.float32)
    k = min(k, items)
    row: dict = {"items": items, "requests": requests, "k1": k}
    flat = build_index(corpus, "flat")
    t = time.perf_counter()
    _, exact = search(flat, users, k)
    row["flat_requests_per_s"] = requests / (time.perf_counter() - t)
    t = time.perf_counter()
    ivf = build_index(corpus, "ivf")
    row["ivf_build_s"] = time.perf_counter() - t
    t = time.perf_counter()
    _, approx = search(ivf, users, k)
    row["ivf_requests_per_s"] = requests / (time.perf_counter() - t)
    row["ivf_nlist"] = int(ivf.nlist)
    row["ivf_recall_at_k1"] = float(overlap_recall(approx, exact).mean())
    saved_per_request = 1 / row["flat_requests_per_s"] - 1 / row["ivf_requests_per_s"]
    row["ivf_pays_off_after_requests"] = (math.ceil(row["ivf_build_s"] / saved_per_request)
                                          if saved_per_request > 0 else None)
    return row


def measure_run(run_dir: str, requests: int, k1s: list[int], nprobes: list[int]) -> list[dict]:
    """The same comparison on a trained run's real towers: the corpus of its shard set's item
    table embedded by the item tower, the users of the first ``requests`` of the test day;
    IVF at each nprobe against the exact search, per K1."""
    import torch

    from lcron.batches import gather
    from lcron.data.fields import MODEL_INPUTS
    from lcron.run_folder import FinishedRun, load_cascade
    from lcron.serving.index import build_index, embed_items, overlap_recall, retrieval_tower, search

    run = FinishedRun.open(run_dir)
    shard_set = run.shards(None)
    cascade, _ = load_cascade(run.seed_dirs[0] / "model.pt", "cpu")
    tower = retrieval_tower(cascade, run.setting)
    t = time.perf_counter()
    _, features = shard_set.item_table()
    vectors = embed_items(tower, features)
    embed_s = time.perf_counter() - t
    arrays = shard_set.load_day(shard_set.days[-1])
    batch = gather(arrays, slice(0, requests), MODEL_INPUTS)
    with torch.inference_mode():
        users = np.ascontiguousarray(tower.user_vectors(batch).float().numpy())
    kmax = min(max(k1s), len(vectors))
    flat = build_index(vectors, "flat")
    t = time.perf_counter()
    _, exact = search(flat, users, kmax)
    flat_rate = len(users) / (time.perf_counter() - t)
    rows = [{"items": len(vectors), "requests": len(users), "embed_items_s": embed_s, "flat_requests_per_s": flat_rate}]
    t = time.perf_counter()
    ivf = build_index(vectors, "ivf")
    build_s = time.perf_counter() - t
    for nprobe in nprobes:
        ivf.nprobe = min(nprobe, ivf.nlist)
        t = time.perf_counter()
        _, approx = search(ivf, users, kmax)
        rate = len(users) / (time.perf_counter() - t)
        rows.append({"nlist": int(ivf.nlist), "nprobe": int(ivf.nprobe), "ivf_build_s": build_s,
                     "ivf_requests_per_s": rate,
                     **{f"recall_at_{k}": float(overlap_recall(approx[:, :k], exact[:, :k]).mean()) for k in k1s}})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", default="20000,100000,200000,500000,1000000")
    ap.add_argument("--requests", type=int, default=2048)
    ap.add_argument("--k1", type=int, default=1000)
    ap.add_argument("--out", default="build/serving_index.json")
    ap.add_argument("--run", default=None, help="a trained run: its real towers instead of random vectors")
    ap.add_argument("--nprobe", default="16,64,256", help="with --run: IVF cells searched, comma-separated")
    a = ap.parse_args()
    if a.run:
        rows = measure_run(a.run, a.requests, [100, 500, 1000], [int(x) for x in a.nprobe.split(",")])
        for row in rows:
            print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(rows, indent=1))
        return 0
    rows = []
    for n in (int(x) for x in a.items.split(",")):
        rows.append(measure(n, a.requests, a.k1))
        print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in rows[-1].items()}), flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
