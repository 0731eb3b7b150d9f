"""Where a GPU training step and a GPU training process spend their time (one H200 run, ~2 min).

    PYTHONPATH=. python bench/gpu_profile.py --out build/gpu_profile.json

1. start-up: fresh processes timing `import torch`, CUDA initialisation and `import lcron.train`
2. kernels: LCRON two- and three-stage at batch 1024, eager: CUDA time per kernel over 5
   steps (torch.profiler), the step's total kernel time, and the replay time of the captured
   step (eager and compiled kernels) measured with CUDA events
3. phases of `lcron.train.train` for one run (set-up before the first step, steps,
   checkpoint writing), from a timed run with the trainer's own clock
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def startup() -> dict:
    code = ("import time;t=time.perf_counter();import torch;a=time.perf_counter();torch.zeros(1,device='cuda');"
            "torch.cuda.synchronize();b=time.perf_counter();import lcron.train;c=time.perf_counter();"
            "print(a-t,b-a,c-b)")
    out = {}
    for i in range(2):
        t = time.perf_counter()
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                           env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
        wall = time.perf_counter() - t
        vals = [float(x) for x in p.stdout.split()] if p.returncode == 0 else p.stderr[-500:]
        out[f"run{i}"] = {"wall_s": round(wall, 2), "import_torch_cuda_init_import_lcron_s": vals}
    return out


def kernels(shards: Path, stages: int) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from lcron.data.shards import ShardSet
    from lcron.models.embeddings import ids_prechecked
    from lcron.train import TrainConfig, build_training_objects
    from lcron.train_step import DeviceDay, GraphedStep, TrainStep

    shard_set = ShardSet(shards)
    day = DeviceDay(shard_set.load_day(shard_set.days[0]), "cuda")
    import numpy as np

    order = np.arange(day.num_requests)
    res: dict = {}
    for compile in (False, True):
        cfg = TrainConfig(method="lcron", batch_size=1024, compile=compile, device="cuda")
        cascade, loss, opts = build_training_objects(shard_set.setting, shard_set.embedding_sizes, cfg, 1,
                                                     torch.device("cuda"))
        step = TrainStep(cascade, loss, opts)
        batches = list(day.batches(order, 1024, drop_last=True))
        with ids_prechecked():
            for b in batches[:3]:
                step(b)
            torch.cuda.synchronize()
            if not compile:
                with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
                    for b in batches[3:8]:
                        step(b)
                    torch.cuda.synchronize()
                ev = [e for e in prof.key_averages() if e.device_type.name == "CUDA" or e.self_device_time_total > 0]
                ev.sort(key=lambda e: -e.self_device_time_total)
                total = sum(e.self_device_time_total for e in ev)
                res["eager_kernel_ms_per_step"] = round(total / 5 / 1000, 3)
                res["kernels_per_step"] = round(sum(e.count for e in ev if e.self_device_time_total > 0) / 5, 1)
                res["top_kernels"] = [{"name": e.key[:90], "ms_per_step": round(e.self_device_time_total / 5 / 1000, 3),
                                       "calls_per_step": e.count / 5} for e in ev[:30]]
            graphed = GraphedStep(step, warmup=0)
            graphed(batches[8])
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            timed = batches[9:29]  # a 20,000-request day has 19 batches of 1024: count what was replayed
            start.record()
            for b in timed:
                graphed(b)
            end.record()
            torch.cuda.synchronize()
        res[f"graph_replay_ms_per_step_{'compiled' if compile else 'eager'}"] = round(
            start.elapsed_time(end) / len(timed), 3)
        res["replays_timed"] = len(timed)
        res[f"mode_{'compiled' if compile else 'eager'}"] = graphed.mode
    return res


def phases(shards: Path, work: Path) -> dict:
    import torch

    from lcron.train import TrainConfig, train

    t = time.perf_counter()
    res = train(shards, work / "phases-run", TrainConfig(method="lcron", batch_size=1024, device="cuda"),
                progress=False, overwrite=True)
    total = time.perf_counter() - t
    s = res[0].summary
    return {"train_call_s": round(total, 2), "first_step_s": s["first_step_seconds"],
            "steady_s": s["requests"] / s["steady_requests_per_s"] if s["steady_requests_per_s"] else None,
            "timing": s.get("timing"), "cuda": torch.version.cuda}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="build/gpu_profile.json")
    ap.add_argument("--requests-per-day", type=int, default=20_000)
    a = ap.parse_args()
    from lcron.data.shards import preprocess
    from lcron.data.synthetic import generate

    doc: dict = {}
    out = Path(a.out)

    def save() -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=1, default=str))

    doc["startup"] = startup()
    save()
    print(doc["startup"], flush=True)
    work = Path(tempfile.mkdtemp(prefix="lcron-gpuprof-"))
    src = generate(work / "recflow", num_days=3, requests_per_day=a.requests_per_day, users=2000, items=20000,
                   seed=0, progress=False)
    for st in (2, 3):
        preprocess(str(src), work / f"shards-{st}", st, progress=False)
        doc[f"kernels_{st}"] = kernels(work / f"shards-{st}", st)
        save()
        print(json.dumps(doc[f"kernels_{st}"], indent=1), flush=True)
    doc["phases_2"] = phases(work / "shards-2", work)
    save()
    print(doc["phases_2"], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
