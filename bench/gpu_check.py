"""The GPU checks of docs/benchmarks.md ("GPU") in one process tree, within a few minutes.

Run from the repository root on a machine with one CUDA GPU (kfp is not needed; faiss for the serving section):

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
               the tolerance of tests/reference/test_reference_cases.py; trained models' logits
               on CUDA (float32 and TF32) against CPU
7. startup     where a whole `lcron train` process spends its time: fresh processes timing
               import torch / CUDA initialisation / import lcron.train, and one whole training
               process with timestamps (imports, CLI, train() call, exit) plus its cProfile top
8. kernels     the captured step replayed and timed with CUDA events, and the eager step's
               CUDA kernels (bench/gpu_profile.py), two- and three-stage
9. serving     `lcron serve-eval` on the GPU (flat index: faiss GPU when the installed faiss
               has it, else torch top-k): per-K1 rate (eager), and the default CLI as a process
10. long       steady rates from long runs on RecFlow-size days (--big-days x --big-requests,
               generated and preprocessed in the background while sections 1-9 run): LCRON
               two- and three-stage, default and --compile, whole processes
11. protocol   `lcron evaluate` of the long two-stage run on its held-out 250,000-request day,
               with what the paper's protocol costs extrapolated from the long runs

They run in the order data, kernels, whole, startup, recflow, methods, long, protocol,
fidelity, serving, tf32 (what the targets need first). --only picks sections; --deadline-s
skips the sections that would start after that many seconds (the result says which), so a
lease of fixed length still returns every number it measured. --estimate-from prints the
protocol estimate from saved results. About 7 minutes on one H200.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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

    only: set[str] | None = None
    deadline_s: float | None = None

    def section(self, name: str, fn: Callable[[], Any]) -> Any:
        if self.only is not None and name not in self.only:
            return None
        if self.deadline_s is not None and time.perf_counter() - self.t0 > self.deadline_s:
            self.doc.setdefault("skipped", []).append(name)
            self.flush()
            print(f"== {name}: skipped (past the deadline)", flush=True)
            return None
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


BIG_DATA_CODE = """
import json, os, subprocess, sys, time
from pathlib import Path
from lcron.data.synthetic import generate
big, days, requests, items, users = Path(sys.argv[1]), *map(int, sys.argv[2:6])
out = {}
t = time.perf_counter()
generate(big / "src", num_days=days, requests_per_day=requests, users=users, items=items, seed=0, progress=False,
         workers=None)
out["generate_s"] = round(time.perf_counter() - t, 1)
t = time.perf_counter()
procs = {st: subprocess.Popen([sys.executable, "-m", "lcron", "preprocess", "--source", str(big / "src"), "--out",
                               str(big / f"shards-{st}"), "--stages", str(st), "-q"]) for st in (2, 3)}
out["preprocess_rc"] = {st: p.wait() for st, p in procs.items()}
out["preprocess_both_s"] = round(time.perf_counter() - t, 1)
(big / "build.json").write_text(json.dumps(out))
"""


def start_big_data(big: Path, days: int, requests: int, items: int, users: int) -> subprocess.Popen:
    """Generate and preprocess the RecFlow-size days in a background process tree."""
    big.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    log = open(big / "build.log", "w")  # noqa: SIM115 - the child writes it until it ends
    # Two BLAS threads per generator worker: the GPU sections' processes keep most cores.
    env.update({v: "2" for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")})
    return subprocess.Popen([sys.executable, "-c", BIG_DATA_CODE, str(big), str(days), str(requests), str(items),
                             str(users)], env=env, stdout=log, stderr=subprocess.STDOUT)


def wait_big_data(builder: subprocess.Popen, big: Path, seconds: float) -> dict[str, Any]:
    t = time.perf_counter()
    try:
        builder.wait(timeout=max(1.0, seconds))
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"the RecFlow-size days were not ready after {seconds:.0f} s more; "
                           f"log: {(big / 'build.log').read_text()[-1500:]}") from None
    if builder.returncode != 0 or not (big / "build.json").is_file():
        raise RuntimeError(f"building the RecFlow-size days failed: {(big / 'build.log').read_text()[-1500:]}")
    return {**json.loads((big / "build.json").read_text()), "waited_s": round(time.perf_counter() - t, 1)}


PROBE_CODE = """
import json, sys, time
marks = {"python_up": time.time()}
import torch
marks["import_torch"] = time.time()
torch.zeros(1, device="cuda" if torch.cuda.is_available() else "cpu")
if torch.cuda.is_available():
    torch.cuda.synchronize()
marks["cuda_init"] = time.time()
import lcron.train
marks["import_lcron_train"] = time.time()
from lcron.train import TrainConfig, train
train(sys.argv[1], sys.argv[2], TrainConfig(method="lcron", batch_size=1024, seeds=(1,), days=sys.argv[3],
                                             device=sys.argv[4]), progress=False, overwrite=True)
marks["train_call"] = time.time()
print("MARKS " + json.dumps(marks), flush=True)
"""


def protocol_estimate(sections: dict[str, Any], requests_per_day: int = 250_000, days: int = 36,
                      seeds: int = 5) -> dict[str, Any]:
    """GPU seconds of training for the paper's protocol, from measured parts only.

    Per setting and method-seed: the fixed cost of a process (start-up, set-up, first step,
    exit) and the data loading per day come from the long runs (section 10, RecFlow-size
    days); the steady rate and the checkpoint writing per day from the RecFlow-vocabulary
    runs (section 4: 11.2M embedding rows per model, whose dense Adam state makes each day's
    resume checkpoint several GB); each method's rate relative to LCRON from section 3.
    ``without_day_checkpoints`` is the same with the checkpoint writing left out.
    """
    long_rows = {r["stages"]: r for r in (sections.get("long") or [])[1:]
                 if isinstance(r, dict) and r.get("variant") == "default" and r.get("steady_requests_per_s")}
    vocab_rows = {r["stages"]: r for r in sections.get("recflow") or [] if isinstance(r, dict) and "timing" in r}
    rates: dict[int, dict[str, float]] = {}
    for r in sections.get("methods") or []:
        if isinstance(r, dict) and r.get("steady_requests_per_s"):
            rates.setdefault(r["stages"], {})[r["method"]] = r["steady_requests_per_s"]
    out: dict[str, Any] = {"requests_per_day": requests_per_day, "training_days": days, "seeds": seeds}
    totals = {"with_day_checkpoints": 0.0, "without_day_checkpoints": 0.0}
    for st in (2, 3):
        if st not in long_rows or st not in vocab_rows or "lcron" not in rates.get(st, {}):
            out[f"stages_{st}"] = "missing measurements"
            totals = {k: float("nan") for k in totals}
            continue
        lr, vr = long_rows[st], vocab_rows[st]
        train_days = max(1, len(lr.get("days") or []) or round(lr["requests"] / requests_per_day))
        fixed = lr["timing"]["setup_seconds"] + (lr["first_step_seconds"] or 0) + (lr["wall_s"] -
                                                                                    lr["timing"]["seed_seconds"])
        data_per_day = lr["timing"]["data_seconds"] / train_days
        vocab_days = len(vr.get("days") or []) or 2
        ckpt_per_day = vr["timing"]["checkpoints_seconds"] / vocab_days
        steady_lcron = days * requests_per_day / vr["steady_requests_per_s"]
        per_method = {m: steady_lcron * rates[st]["lcron"] / rate for m, rate in rates[st].items()}
        setting = {"fixed_s": round(fixed, 2), "data_per_day_s": round(data_per_day, 3),
                   "checkpoint_per_day_s": round(ckpt_per_day, 3), "lcron_steady_s": round(steady_lcron, 1),
                   "lcron_method_seed_s": round(fixed + days * (data_per_day + ckpt_per_day) + steady_lcron, 1)}
        for m, steady in per_method.items():
            base = fixed + days * data_per_day + steady
            totals["with_day_checkpoints"] += seeds * (base + days * ckpt_per_day)
            totals["without_day_checkpoints"] += seeds * base
        out[f"stages_{st}"] = setting
    out["methods"] = sorted({m for r in rates.values() for m in r})
    out["paper_table_gpu_hours"] = {k: (round(v / 3600, 2) if v == v else None) for k, v in totals.items()}
    return out


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
    ap.add_argument("--only", default=None, help="comma-separated sections to run (default: all)")
    ap.add_argument("--deadline-s", type=float, default=None, help="start no section after this many seconds")
    ap.add_argument("--big-days", type=int, default=3, help="RecFlow-size days for long/protocol (last = test day)")
    ap.add_argument("--big-requests", type=int, default=250_000, help="requests per RecFlow-size day")
    ap.add_argument("--big-items", type=int, default=5_000,
                    help="items of the big days' catalogue (the generator's cost grows with it; the models' "
                         "tables are sized to RecFlow's vocabularies either way)")
    ap.add_argument("--big-users", type=int, default=42_000)
    ap.add_argument("--estimate-from", nargs="+", metavar="JSON",
                    help="print the protocol estimate from saved results (later files' sections win) and exit")
    a = ap.parse_args()
    if a.estimate_from:
        merged: dict[str, Any] = {}
        for path in a.estimate_from:
            merged.update({k: v for k, v in json.loads(Path(path).read_text())["sections"].items()
                           if not (isinstance(v, dict) and "error" in v)})
        print(json.dumps(protocol_estimate(merged, a.big_requests), indent=1))
        return 0

    import torch

    from lcron.data.shards import ShardSet, preprocess
    from lcron.data.synthetic import generate
    from lcron.losses import METHODS
    from lcron.train import TrainConfig, train

    report = Report(Path(a.out))
    report.only = set(a.only.split(",")) | {"data"} if a.only else None  # every section trains on the data
    report.deadline_s = a.deadline_s
    work = Path(a.work or tempfile.mkdtemp(prefix="lcron-gpu-"))
    wants = lambda name: report.only is None or name in report.only  # noqa: E731
    # The RecFlow-size days are made in the background, while the GPU sections run.
    big = work / "big"
    builder = None
    if wants("long") or wants("protocol"):
        builder = start_big_data(big, a.big_days, a.big_requests, a.big_items, a.big_users)
    cuda = torch.cuda.is_available()
    report.put("environment", {
        "torch": torch.__version__, "cuda": torch.version.cuda, "device": torch.cuda.get_device_name(0) if cuda else None,
        "python": sys.version.split()[0], "cpus": os.cpu_count(), "load_1m": os.getloadavg()[0]})
    dev = "cuda" if cuda else "cpu"

    sections: dict[str, Callable[[], Any]] = {}

    # ---------------------------------------------------------------- 1. data
    shards: dict[int, Path] = {}

    def data() -> dict[str, Any]:
        t = time.perf_counter()
        src = generate(work / "recflow", num_days=3, requests_per_day=a.requests_per_day, users=2000, items=20000,
                       seed=0, progress=False, workers=3)
        gen_s = time.perf_counter() - t
        out = {"generate_s": round(gen_s, 1)}
        for st in (2, 3):
            t = time.perf_counter()
            preprocess(str(src), work / f"shards-{st}", st, progress=False)
            shards[st] = work / f"shards-{st}"
            out[f"preprocess_{st}_s"] = round(time.perf_counter() - t, 1)
        return out

    sections["data"] = data
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

    sections["whole"] = whole

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

    sections["methods"] = methods

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

    sections["recflow"] = recflow

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

    sections["fidelity"] = fidelity

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

    sections["tf32"] = tf32

    # ---------------------------------------------------------------- 7. whole-process start-up
    def startup() -> dict[str, Any]:
        import pstats

        from bench.gpu_profile import startup as fresh_processes

        out: dict[str, Any] = {"fresh_processes": fresh_processes() if cuda else None}
        for old in ("probe-run", "prof-run"):
            shutil.rmtree(work / old, ignore_errors=True)
        env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        t = time.time()
        p = subprocess.run([sys.executable, "-c", PROBE_CODE, str(shards[2]), str(work / "probe-run"), first_days(2),
                            dev], env=env, capture_output=True, text=True, timeout=300)
        end = time.time()
        line = next((x for x in p.stdout.splitlines() if x.startswith("MARKS ")), None)
        if line is None:
            raise RuntimeError(f"probe failed: {p.stderr[-1500:]}")
        marks = json.loads(line[6:])
        names = list(marks)
        out["probe_s"] = {"interpreter_start": round(marks["python_up"] - t, 3),
                          **{n: round(marks[n] - marks[prev], 3) for prev, n in zip(names, names[1:])},
                          "exit": round(end - marks["train_call"], 3), "whole": round(end - t, 3)}
        out["probe_summary"] = summary(work / "probe-run")
        prof = work / "train.prof"
        args = ["train", "--shards", str(shards[2]), "--out", str(work / "prof-run"), "--method", "lcron", "--seeds",
                "1", "--days", first_days(2), "--device", dev, "-q", "--batch-size", "1024"]
        t = time.perf_counter()
        # lcron's console entry ends the process without Python's teardown (and so without
        # cProfile's dump): profile its main() in the process instead.
        code = (f"import cProfile; from lcron.cli import main; args = {args!r}; "
                f"cProfile.run('main(args)', {str(prof)!r})")
        p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
        if not prof.is_file():
            raise RuntimeError(f"cProfile run failed: {p.stderr[-1500:]}")
        out["cprofile_whole_s"] = round(time.perf_counter() - t, 2)
        stats = pstats.Stats(str(prof))
        rows = sorted(stats.stats.items(), key=lambda kv: -kv[1][3])  # cumulative time
        out["cprofile_top"] = [f"{v[3]:8.3f} {v[2]:8.3f} {k[0].split('site-packages/')[-1]}:{k[1]}({k[2]})"
                               for k, v in rows[:45]]
        return out

    sections["startup"] = startup

    # ---------------------------------------------------------------- 8. kernels and graph replay
    def kernels() -> dict[str, Any]:
        from bench.gpu_profile import kernels as profile_kernels

        if not cuda:
            return {"skipped": "no CUDA"}
        return {f"stages_{st}": profile_kernels(shards[st], st) for st in (2, 3)}

    sections["kernels"] = kernels

    # ---------------------------------------------------------------- 9. serving on the GPU
    def serving() -> dict[str, Any]:
        from lcron.serving.evaluate import serving_evaluate
        from lcron.serving.index import faiss_has_gpus, import_faiss

        run = work / "fid-cuda"
        if not (run / "run.json").is_file():
            train(shards[2], run, TrainConfig(method="lcron", batch_size=1024, seeds=(1, 2), days=first_days(2),
                                              device=dev), progress=False, overwrite=True)
        out: dict[str, Any] = {"faiss_gpu": faiss_has_gpus(import_faiss())}
        for k in (100, 500, 1000):
            t = time.perf_counter()
            doc = serving_evaluate(run, k1=(k,), device=dev, compile=False, out=work / f"serve-{k}", progress=False,
                                   overwrite=True)
            out[f"k1_{k}"] = {"call_s": round(time.perf_counter() - t, 2), "timing": doc.get("timing"),
                              "index": doc.get("index"), "results": doc.get("results")}
        wall, _ = cli("serve-eval", "--model", str(run), "--out", str(work / "serve-cli"), "--device", dev, "-q")
        out["cli_default_whole_process_s"] = round(wall, 2)
        out["cli_default_timing"] = json.loads((work / "serve-cli" / "serving.json").read_text()).get("timing")
        return out

    sections["serving"] = serving

    # ---------------------------------------------------------------- 10. long runs, RecFlow-size days
    big_shards: dict[int, Path] = {}

    def long() -> list[dict[str, Any]]:
        left = (a.deadline_s or 1e9) - (time.perf_counter() - report.t0) - 60
        rows: list[dict[str, Any]] = [{"build": wait_big_data(builder, big, left)}]
        for st in (2, 3):
            big_shards[st] = big / f"shards-{st}"
        train_days = lambda st: ":".join(ShardSet(big_shards[st]).days[:-1])  # noqa: E731
        for st, name, extra in ((2, "default", []), (3, "default", []), (2, "compile", ["--compile"]),
                                (3, "compile", ["--compile"])):
            if a.deadline_s is not None and time.perf_counter() - report.t0 > a.deadline_s:
                rows.append({"stages": st, "variant": name, "skipped": "deadline"})
                continue
            run = work / f"long-{st}-{name}"
            wall, _ = cli("train", "--shards", str(big_shards[st]), "--out", str(run), "--method", "lcron",
                          "--seeds", "1", "--days", train_days(st), "--device", dev, "--batch-size", "1024", "-q",
                          *extra, timeout=600)
            rows.append({"stages": st, "variant": name, "wall_s": round(wall, 2), **summary(run)})
            print(rows[-1], flush=True)
            report.put("long", rows)
        return rows

    sections["long"] = long

    # ---------------------------------------------------------------- 11. the paper's protocol
    def protocol() -> dict[str, Any]:
        run = work / "long-2-default"
        out: dict[str, Any] = {}
        wall, _ = cli("evaluate", "--model", str(run), "--out", str(work / "long-eval"), "--device", dev, "-q",
                      timeout=600)
        doc = json.loads((work / "long-eval" / "metrics.json").read_text())
        out["evaluate_whole_process_s"] = round(wall, 2)
        out["evaluate_timing"] = doc.get("timing")
        out["test_requests"] = doc.get("requests")
        out["joint_recall"] = (doc.get("metrics") or {}).get("joint_recall")
        out["estimate"] = protocol_estimate(report.doc["sections"], a.big_requests)
        return out

    sections["protocol"] = protocol
    # Most wanted first, so that a lease cut short keeps the numbers the targets need.
    for name in ("data", "kernels", "whole", "startup", "recflow", "methods", "long", "protocol", "fidelity",
                 "serving", "tf32"):
        report.section(name, sections[name])
    if builder is not None and builder.poll() is None:
        builder.kill()
    print(f"wrote {report.path} ({report.doc['elapsed_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
