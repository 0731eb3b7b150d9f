"""The GPU checks of docs/benchmarks.md ("GPU") in one process tree, within a few minutes.

Run from the repository root on a machine with one CUDA GPU (kfp and faiss are not needed):

    PYTHONPATH=. python bench/gpu_check.py --out build/gpu_check.json [--reference-cases DIR] [--quick]

Sections, in this order (each result is written to the JSON file as soon as it exists, so
a run cut short still reports what it measured):

1. data        synthetic RecFlow 3 days x 20,000 requests, preprocessed two- and three-stage
2. whole       `lcron train` as a user runs it (fresh process, 2 training days, batch 1024):
               wall time, steady requests/s, step mode, peak GPU memory; per setting the
               device default (eager + CUDA graph), dense embedding Adam, no CUDA graph,
               batch 4096 (two-stage) and, with --with-compile, compiled + CUDA graph
3. methods     every method x setting with the device default (in one process)
4. recflow     RecFlow vocabulary sizes (9M videos, 2M authors, 42k users): steady rate and
               peak GPU memory, two- and three-stage
5. fidelity    LCRON two-stage trained on CPU and on CUDA from the same seed: loss curves and
               end-to-end recall side by side, with a second CUDA seed as the seed noise;
               `lcron evaluate` of the 2-seed CUDA run as a whole process
6. tf32        the reference loss cases (losses.json) on CUDA with TF32 off and on, against
               the tolerance of tests/losses/test_reference_cases.py; trained models' logits
               on CUDA (float32 and TF32) against CPU
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RECFLOW_VOCAB = {"user_id": 42_472, "device_id": 42_561, "age": 8, "gender": 3, "province": 79,
                 "video_id": 9_013_446, "author_id": 2_115_325, "category_level_two": 1_066,
                 "category_level_one": 42, "upload_type": 25}


class Report:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.doc: dict[str, Any] = {"sections": {}, "seconds": {}}
        self.t0 = time.perf_counter()

    def put(self, section: str, value: Any) -> None:
        self.doc["sections"][section] = value
        self.flush()

    def flush(self) -> None:
        self.doc["elapsed_s"] = round(time.perf_counter() - self.t0, 1)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.doc, indent=1, default=str))

    def section(self, name: str, fn: Callable[[], Any]) -> Any:
        print(f"== {name}", flush=True)
        t = time.perf_counter()
        try:
            value = fn()
        except Exception as exc:  # one broken section must not hide the others' results
            import traceback

            traceback.print_exc()
            value = {"error": f"{type(exc).__name__}: {exc}"}
        self.doc["seconds"][name] = round(time.perf_counter() - t, 1)
        self.put(name, value)
        print(json.dumps(value, default=str)[:3000], flush=True)
        return value


def cli(*args: str, timeout: int = 300) -> tuple[float, str]:
    """Run `python -m lcron ARGS` as a fresh process; (wall seconds, stderr tail)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "lcron", *args], env=env, capture_output=True, text=True,
                       timeout=timeout)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        raise RuntimeError(f"lcron {' '.join(args)} exited {p.returncode}: {p.stderr[-2000:]}")
    return wall, p.stderr[-500:]


def summary(run: Path, seed: int = 1) -> dict[str, Any]:
    s = json.loads((run / f"seed-{seed}" / "summary.json").read_text())
    keep = ("steps", "requests", "steady_requests_per_s", "first_step_seconds", "startup_steps", "step_mode", "compile",
            "cuda_graph", "tf32", "peak_device_memory_mb", "final_loss", "device", "timing")
    return {k: s.get(k) for k in keep}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="build/gpu_check.json")
    ap.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--reference-cases", default=str(ROOT.parent / "shared/spec/reference_cases"))
    ap.add_argument("--requests-per-day", type=int, default=20_000)
    ap.add_argument("--quick", action="store_true", help="fewer variants (a smoke test of this script)")
    ap.add_argument("--with-compile", action="store_true", help="also the compiled + CUDA graph variant (+45 s)")
    a = ap.parse_args()

    import torch

    from lcron.data.shards import ShardSet, preprocess
    from lcron.data.synthetic import generate
    from lcron.losses import METHODS
    from lcron.train import TrainConfig, train

    report = Report(Path(a.out))
    work = Path(a.work or tempfile.mkdtemp(prefix="lcron-gpu-"))
    cuda = torch.cuda.is_available()
    report.put("environment", {
        "torch": torch.__version__, "cuda": torch.version.cuda, "device": torch.cuda.get_device_name(0) if cuda else None,
        "python": sys.version.split()[0], "cpus": os.cpu_count(), "load_1m": os.getloadavg()[0]})
    dev = "cuda" if cuda else "cpu"

    # ---------------------------------------------------------------- 1. data
    shards: dict[int, Path] = {}

    def data() -> dict[str, Any]:
        t = time.perf_counter()
        src = generate(work / "recflow", num_days=3, requests_per_day=a.requests_per_day, users=2000, items=20000,
                       seed=0, progress=False)
        gen_s = time.perf_counter() - t
        out = {"generate_s": round(gen_s, 1)}
        for st in (2, 3):
            t = time.perf_counter()
            preprocess(str(src), work / f"shards-{st}", st, progress=False)
            shards[st] = work / f"shards-{st}"
            out[f"preprocess_{st}_s"] = round(time.perf_counter() - t, 1)
        return out

    report.section("data", data)
    first_days = lambda st: ":".join(ShardSet(shards[st]).days[:2])  # noqa: E731 - the 2 training days

    # ---------------------------------------------------------------- 2. whole process
    def whole() -> list[dict[str, Any]]:
        # One throwaway process first: the first process of a machine also pays for a cold file cache.
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import torch; torch.zeros(1, device='cuda' if torch.cuda.is_available() "
                        "else 'cpu')"], check=True)
        rows: list[dict[str, Any]] = [{"variant": "python -c 'import torch' + CUDA init", "wall_s":
                                       round(time.perf_counter() - t, 2)}]
        variants = [("default", []), ("dense_embeddings", ["--embedding-optimizer", "dense"]),
                    ("no_cuda_graph", ["--no-cuda-graph"]), ("batch_4096", ["--batch-size", "4096"])]
        if a.with_compile:
            variants.append(("compile_graph", ["--compile"]))
        if a.quick:
            variants = variants[:2]
        for st in (2, 3):
            for name, extra in variants:
                if st == 3 and name == "batch_4096":
                    continue
                run = work / f"whole-{st}-{name}"
                args = ["train", "--shards", str(shards[st]), "--out", str(run), "--method", "lcron", "--seeds", "1",
                        "--days", first_days(st), "--device", dev, "-q", *extra]
                if "--batch-size" not in extra:
                    args += ["--batch-size", "1024"]
                wall, _ = cli(*args)
                rows.append({"stages": st, "variant": name, "wall_s": round(wall, 2), **summary(run)})
                print(rows[-1], flush=True)
        return rows

    report.section("whole", whole)

    # ---------------------------------------------------------------- 3. every method
    def methods() -> list[dict[str, Any]]:
        rows = []
        for st in (2, 3):
            for m in METHODS:
                run = work / f"m-{st}-{m}"
                cfg = TrainConfig(method=m, batch_size=1024, seeds=(1,), days=first_days(st), device=dev)
                t = time.perf_counter()
                train(shards[st], run, cfg, progress=False, overwrite=True)
                rows.append({"stages": st, "method": m, "train_call_s": round(time.perf_counter() - t, 2),
                             **summary(run)})
        return rows

    report.section("methods", methods)

    # ---------------------------------------------------------------- 4. RecFlow vocabularies
    def recflow() -> list[dict[str, Any]]:
        from lcron.data.fields import embedding_sizes

        rows = []
        for st in (2, 3):
            shard_set = ShardSet(shards[st])
            shard_set.embedding_sizes = embedding_sizes(RECFLOW_VOCAB)  # the ids in the data stay valid
            run = work / f"recflow-{st}"
            cfg = TrainConfig(method="lcron", batch_size=1024, seeds=(1,), days=first_days(st), device=dev)
            if cuda:
                torch.cuda.empty_cache()
            t = time.perf_counter()
            train(shard_set, run, cfg, progress=False, overwrite=True)
            rows.append({"stages": st, "train_call_s": round(time.perf_counter() - t, 2),
                         "embedding_rows_per_model": int(sum(shard_set.embedding_sizes.values())), **summary(run)})
        return rows

    report.section("recflow", recflow)

    # ---------------------------------------------------------------- 5. fidelity CPU vs CUDA
    def fidelity() -> dict[str, Any]:
        from lcron.evaluate import evaluate

        st = 2
        out: dict[str, Any] = {}
        gpu_run, cpu_run = work / "fid-cuda", work / "fid-cpu"
        train(shards[st], gpu_run, TrainConfig(method="lcron", batch_size=1024, seeds=(1, 2), days=first_days(st),
                                               device=dev), progress=False, overwrite=True)
        t = time.perf_counter()
        train(shards[st], cpu_run, TrainConfig(method="lcron", batch_size=1024, seeds=(1,), days=first_days(st),
                                               device="cpu"), progress=False, overwrite=True)
        out["cpu_train_s"] = round(time.perf_counter() - t, 1)

        def curve(run: Path, seed: int) -> np.ndarray:
            lines = (run / f"seed-{seed}" / "train_log.jsonl").read_text().splitlines()
            return np.array([json.loads(x)["total"] for x in lines])

        c_cpu, c_gpu, c_gpu2 = curve(cpu_run, 1), curve(gpu_run, 1), curve(gpu_run, 2)
        out["steps"] = len(c_cpu)
        out["loss_cpu_first_last10"] = [float(c_cpu[0]), float(c_cpu[-10:].mean())]
        out["loss_cuda_first_last10"] = [float(c_gpu[0]), float(c_gpu[-10:].mean())]
        out["loss_cuda_seed2_first_last10"] = [float(c_gpu2[0]), float(c_gpu2[-10:].mean())]
        out["mean_abs_diff_cpu_vs_cuda_same_seed"] = float(np.abs(c_cpu - c_gpu).mean())
        out["mean_abs_diff_cuda_seed1_vs_seed2"] = float(np.abs(c_gpu - c_gpu2).mean())
        t = time.perf_counter()
        ev_gpu = evaluate(gpu_run, device=dev, progress=False, overwrite=True)
        out["evaluate_call_cuda_s"] = round(time.perf_counter() - t, 2)
        ev_cpu = evaluate(cpu_run, device="cpu", progress=False, overwrite=True)
        jr = lambda ev: ev["metrics"]["joint_recall"] if "metrics" in ev else ev.get("joint_recall")  # noqa: E731
        out["joint_recall_cuda_2_seeds"] = jr(ev_gpu)
        out["joint_recall_cpu_seed1"] = jr(ev_cpu)
        wall, _ = cli("evaluate", "--model", str(gpu_run), "--out", str(work / "fid-eval-cli"), "--device", dev, "-q")
        out["evaluate_whole_process_s"] = round(wall, 2)
        return out

    report.section("fidelity", fidelity)

    # ---------------------------------------------------------------- 6. TF32
    def tf32() -> dict[str, Any]:
        from lcron.batches import gather
        from lcron.data.fields import MODEL_INPUTS
        from lcron.losses import build_loss
        from lcron.run_folder import load_cascade

        out: dict[str, Any] = {}
        cases_file = Path(a.reference_cases) / "losses.json"
        if cases_file.is_file() and cuda:
            cases = json.loads(cases_file.read_text())
            for mode in ("highest", "high"):
                torch.set_float32_matmul_precision(mode)
                worst_loss, worst_grad, fails = 0.0, 0.0, []
                for i, case in enumerate(cases):
                    opts = {"reference_quirks": True} if case["icc_reference"] else {}
                    loss = build_loss(case["method"], stages=case["setting"], **opts).to("cuda")
                    stages = loss.setting.stage_names
                    zs = [torch.tensor(case["logits"][s], dtype=torch.float32, device="cuda", requires_grad=True)
                          for s in stages]
                    labels = torch.tensor(case["labels"], device="cuda")
                    res = loss(zs, labels, torch.ones_like(labels))
                    res.total.backward()
                    rel = abs(res.total.item() - case["loss"]) / max(abs(case["loss"]), 1e-12)
                    worst_loss = max(worst_loss, rel)
                    ok = rel <= 1e-4
                    for s, z in zip(stages, zs):
                        want = torch.tensor(case["grads"][s], device="cuda")
                        err = ((z.grad - want).abs() - 1e-5).clamp_min(0) / want.abs().clamp_min(1e-30)
                        worst_grad = max(worst_grad, float(err.max()))
                        ok = ok and bool(torch.allclose(z.grad, want, rtol=1e-3, atol=1e-5))
                    if not ok:
                        fails.append(f"{case['method']}-{case['setting']}-{i}")
                out[f"loss_cases_{'tf32' if mode == 'high' else 'fp32'}"] = {
                    "worst_loss_rel_err": worst_loss, "worst_grad_excess_rel": worst_grad, "failing": fails}
            torch.set_float32_matmul_precision("highest")
        run = work / "fid-cuda"
        if (run / "seed-1" / "model.pt").is_file():
            shard_set = ShardSet(shards[2])
            arrays = shard_set.load_day(shard_set.days[-1])
            batch = gather(arrays, slice(0, 4096), MODEL_INPUTS)
            cpu_model, _ = load_cascade(run / "seed-1" / "model.pt", "cpu")
            with torch.no_grad():
                ref = [z.numpy() for z in cpu_model(batch)]
            if cuda:
                gpu_model, _ = load_cascade(run / "seed-1" / "model.pt", "cuda")
                on_gpu = {k: v.to("cuda") for k, v in batch.items()}
                for mode in ("highest", "high"):
                    torch.set_float32_matmul_precision(mode)
                    with torch.no_grad():
                        got = [z.cpu().numpy() for z in gpu_model(on_gpu)]
                    out[f"logits_max_abs_diff_vs_cpu_{'tf32' if mode == 'high' else 'fp32'}"] = [
                        float(np.abs(g - r).max()) for g, r in zip(got, ref)]
                out["logits_scale_std"] = [float(r.std()) for r in ref]
                torch.set_float32_matmul_precision("highest")
        return out

    report.section("tf32", tf32)
    print(f"wrote {report.path} ({report.doc['elapsed_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
