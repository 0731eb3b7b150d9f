"""Reference mode against the published LCRON code, on the same synthetic RecFlow data.

    .venv/bin/python bench/published_comparison.py --published PATH [--out build/published-comparison]
        [--stages 2,3] [--methods bce,...,lcron] [--repeats 4] [--batch-size 256] [--jobs 2]
    .venv/bin/python bench/published_comparison.py --out DIR --table-only

``--published`` is a checkout of the published experiments (github.com/kwai/LCRON) or its
bare git directory. The tool never imports that code: it extracts a copy under
``<out>/published-code``, applies the small patches listed in :data:`PATCHES` (train and test
on the generated days, no CUDA-only memory report) and runs its own ``run_train{2,3}.py`` /
``run_test{2,3}.py`` in subprocesses, one folder per run (``root_path``: data link,
checkpoints, logs), with ``TZ`` set to the data's time zone (``--tz-offset-hours``, default 8
as ``lcron generate`` writes) so its ``time.localtime`` features match this project's. The published loaders shuffle without a seed, so its repeats differ
by their batch order and initial weights; this project's runs differ by their seeds.

This project's side is ``lcron preprocess/train/evaluate --reference-quirks`` on the same
data (every day but the last for training, the last day for testing, the same batch size and
learning rate, compile off). The tool writes ``<out>/result.json`` and prints a Markdown
table per setting: each method's end-to-end recall from both, their difference, whether
reference mode's mean lies within the published runs' range, Welch's t, and over the methods
the mean difference, how many differences are positive, and a two-sided sign test.

Everything is reused when rerun (finished published runs are read from their logs,
finished project runs skip; a larger ``--repeats`` adds runs). ``--table-only`` runs nothing
and prints the table over every finished run under ``--out``, so methods that were given
more repeats (``--methods icc --repeats 8``) count all of theirs. docs/reference.md holds
the tables this produced.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tarfile
import io
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
METHODS = ("bce", "icc", "rankflow", "fs_ranknet", "fs_lambdaloss", "arf", "arf_v2", "lcron")
GENERATE = {"num-days": 5, "requests-per-day": 3072, "users": 1500, "items": 12000, "seed": 33}

#: (file, old text, new text, occurrences, why). Each must match exactly that often; a changed upstream fails
#: by name instead of running something else.
PATCHES = (
    ("deep_components/run_train2.py", "torch.cuda.memory_summary()", '"(no CUDA memory summary on CPU)"', 2,
     "torch.cuda.memory_summary raises without a GPU (a debug print)"),
    ("deep_components/run_train3.py", "torch.cuda.memory_summary()", '"(no CUDA memory summary on CPU)"', 2,
     "the same in the three-stage trainer"),
    ("deep_components/run_test2.py", "eval_day_list = ['2024-02-04']", "eval_day_list = [{test_day!r}]", 1,
     "the test day is the generated data's last day"),
    ("deep_components/run_test3.py", "eval_day_list = ['2024-02-04']", "eval_day_list = [{test_day!r}]", 1,
     "the same in the three-stage test"),
)
#: The published scripts' per-method temperature argument (two_stage/*.sh); it only names files.
TAU = {"lcron": 50, "arf": 200, "arf_v2": 200}
JOINT = re.compile(r"^metrics\t(\S+)\tjoint\t([0-9.]+)\s*$", re.M)


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _published_files(source: Path) -> bytes:
    """A tar of the published code: ``git archive HEAD`` of a git directory, else the folder itself."""
    is_git = (source / "HEAD").is_file() or (source / ".git").exists()
    if is_git:
        return subprocess.run(["git", "-C", str(source), "archive", "HEAD"], check=True, capture_output=True).stdout
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(source, arcname=".")
    return buf.getvalue()


def prepare_published(source: Path, code: Path, train_days: list[str], test_day: str) -> None:
    """Extract the published code into ``code`` and apply :data:`PATCHES` (idempotent)."""
    stamp = code / ".prepared.json"
    want = {"source": str(source), "train_days": train_days, "test_day": test_day}
    if stamp.is_file() and json.loads(stamp.read_text()) == want:
        return
    shutil.rmtree(code, ignore_errors=True)
    code.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(_published_files(source))) as tar:
        tar.extractall(code, filter="data")
    for rel, old, new, count, why in PATCHES:
        path = code / rel
        text = path.read_text()
        if text.count(old) != count:
            raise SystemExit(f"patch for {rel} ({why}) expects {old!r} {count} time(s), found {text.count(old)}: "
                             "the published code changed")
        path.write_text(text.replace(old, new.format(test_day=test_day)))
    (code / "deep_components" / "file_1st.txt").write_text("".join(d + "\n" for d in train_days))
    stamp.write_text(json.dumps(want))


def _env(threads: int, extra_path: str | None = None, tz_offset_hours: int = 8) -> dict[str, str]:
    # POSIX TZ names the offset to *add* to local time to get UTC: "UTC-8" is UTC+8.
    env = {**os.environ, "TZ": f"UTC{-tz_offset_hours:+d}", "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    if extra_path:
        env["PYTHONPATH"] = extra_path
    return env


def run_published(code: Path, data: Path, root: Path, stages: int, method: str, batch: int, lr: float,
                  threads: int, tz_offset_hours: int) -> dict:
    """One published train + test run in ``root``; its joint recall from the test log."""
    result = root / "result.json"
    if result.is_file():
        return json.loads(result.read_text())
    shutil.rmtree(root, ignore_errors=True)
    (root / "checkpoints").mkdir(parents=True)
    (root / "logs").mkdir()
    (root / "data").symlink_to(data.resolve())
    args = [f"--epochs=0", f"--loss_type={method}", f"--tau={TAU.get(method, 0)}", f"--batch_size={batch}",
            f"--infer_realshow_batch_size={batch}", f"--infer_recall_batch_size={batch}", "--emb_dim=8",
            f"--lr={lr}", "--seq_len=50", "--cuda=0", f"--root_path={root.resolve()}", "--print_freq=100",
            f"--tag={method}-1st"]
    t0 = time.perf_counter()
    for phase in ("train", "test"):
        log = root / "logs" / f"{phase}.log"
        with open(log, "w") as fh:
            rc = subprocess.run([PYTHON, "-B", "-u", f"deep_components/run_{phase}{stages}.py", *args], cwd=code,
                                env=_env(threads, str(code), tz_offset_hours), stdout=fh, stderr=subprocess.STDOUT).returncode
        if rc:
            raise RuntimeError(f"published {phase} failed ({rc}): see {log}")
    found = JOINT.findall((root / "logs" / "test.log").read_text())
    if not found:
        raise RuntimeError(f"no joint recall line in {root / 'logs' / 'test.log'}")
    doc = {"joint_recall": float(found[-1][1]), "seconds": round(time.perf_counter() - t0, 1)}
    shutil.rmtree(root / "checkpoints")
    result.write_text(json.dumps(doc))
    return doc


def _lcron(*args: str, threads: int) -> None:
    subprocess.run([PYTHON, "-m", "lcron", *args], check=True, env=_env(threads, str(ROOT)), cwd=ROOT)


def run_ours(shards: Path, run: Path, method: str, seeds: list[int], batch: int, lr: float,
             threads: int) -> list[float]:
    """``lcron train`` + ``evaluate`` in reference mode; joint recall per seed."""
    _lcron("train", "-q", "--shards", str(shards), "--out", str(run), "--method", method,
           "--seeds", ",".join(map(str, seeds)), "--batch-size", str(batch), "--lr", str(lr),
           "--reference-quirks", "--no-compile", threads=threads)
    # One evaluation folder per seed list: a rerun with more repeats adds seeds to the run and
    # evaluates them all, next to (not over) the earlier evaluation.
    evaluation = run / f"eval-seeds-{'-'.join(map(str, seeds))}"
    _lcron("evaluate", "-q", "--model", str(run), "--out", str(evaluation), "--no-compile", threads=threads)
    doc = json.loads((evaluation / "metrics.json").read_text())
    return [float(v) for v in doc["metrics"]["joint_recall"]["per_seed"]]


def _mean_std(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else float("nan")
    return mean, std


def sign_test(positive: int, n: int) -> float:
    """Two-sided exact sign test: P(a count at least this far from n/2) under p = 1/2."""
    k = max(positive, n - positive)
    tail = sum(math.comb(n, i) for i in range(k, n + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def compare(published: dict[str, list[float]], ours: dict[str, list[float]]) -> dict:
    """Per method: both means and spreads, the difference, Welch's t; over methods: mean difference and sign test."""
    rows = {}
    for method in published:
        p, o = published[method], ours.get(method)
        if not p or not o:
            continue
        pm, ps = _mean_std(p)
        om, os_ = _mean_std(o)
        se = math.sqrt((ps ** 2 if len(p) > 1 else 0) / len(p) + (os_ ** 2 if len(o) > 1 else 0) / len(o))
        rows[method] = {"published": p, "reference_mode": o, "published_mean": pm, "published_std": ps,
                        "reference_mean": om, "reference_std": os_, "difference": om - pm,
                        "welch_t": (om - pm) / se if se > 0 else None,
                        "within_published_range": min(p) <= om <= max(p)}
    diffs = [r["difference"] for r in rows.values()]
    positive = sum(d > 0 for d in diffs)
    return {"methods": rows, "mean_difference": sum(diffs) / len(diffs) if diffs else None,
            "positive": positive, "n": len(diffs), "sign_test_p": sign_test(positive, len(diffs)) if diffs else None,
            "within_range": sum(r["within_published_range"] for r in rows.values())}


def finished_runs(out: Path, stages: int, methods: list[str]) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Every finished run under ``out`` for one setting, whatever ``--repeats`` each had: the
    published runs' results (``published/<S>stage/<method>/r<k>/result.json``) and, per
    method, reference mode's evaluation with the most seeds (``ours/<S>stage/<method>/eval-seeds-*``)."""
    published: dict[str, list[float]] = {}
    ours: dict[str, list[float]] = {}
    for method in methods:
        runs = sorted((out / "published" / f"{stages}stage" / method).glob("r*/result.json"),
                      key=lambda p: int(p.parent.name[1:]))
        published[method] = [json.loads(p.read_text())["joint_recall"] for p in runs]
        evals = [p for p in (out / "ours" / f"{stages}stage" / method).glob("eval-seeds-*/metrics.json")]
        if evals:
            best = max(evals, key=lambda p: len(p.parent.name.split("-")) - 2)
            doc = json.loads(best.read_text())
            ours[method] = [float(v) for v in doc["metrics"]["joint_recall"]["per_seed"]]
    return published, ours


def table(stages: int, cmp: dict) -> str:
    lines = [f"{stages}-stage | published code (mean ± std, n) | reference mode (mean ± std, n) | difference | "
             "Welch t | inside published range",
             "---|---|---|---|---|---"]
    for method, r in cmp["methods"].items():
        t = "" if r["welch_t"] is None else f"{r['welch_t']:+.1f}"
        lines.append(f"{method} | {r['published_mean']:.4f} ± {r['published_std']:.4f} ({len(r['published'])}) | "
                     f"{r['reference_mean']:.4f} ± {r['reference_std']:.4f} ({len(r['reference_mode'])}) | "
                     f"{r['difference']:+.4f} | {t} | {'yes' if r['within_published_range'] else 'no'}")
    if cmp["n"]:
        lines.append(f"**all** | | | **{cmp['mean_difference']:+.4f}** | | {cmp['within_range']} of {cmp['n']}; "
                     f"{cmp['positive']} of {cmp['n']} above, sign test p = {cmp['sign_test_p']:.3f}")
    return "\n".join("| " + line + " |" for line in lines)


def print_finished(out: Path, stages_list: list[int], methods: list[str]) -> int:
    """``--table-only``: the table per setting over the finished runs, written to
    ``<out>/result-finished.json`` too."""
    doc = {}
    for stages in stages_list:
        cmp = compare(*finished_runs(out, stages, methods))
        doc[str(stages)] = cmp
        if cmp["n"]:
            print(table(stages, cmp) + "\n")
    (out / "result-finished.json").write_text(json.dumps({"settings": doc}, indent=1))
    return 0


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--published", type=Path, help="kwai/LCRON checkout or bare git directory (needed unless --table-only)")
    ap.add_argument("--out", type=Path, default=ROOT / "build" / "published-comparison")
    ap.add_argument("--data", type=Path, help="RecFlow-layout folder (default: generate one under --out)")
    ap.add_argument("--stages", default="2,3")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--repeats", type=int, default=4, help="published runs and project seeds per method")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--jobs", type=int, default=2, help="runs at once")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")
    ap.add_argument("--tz-offset-hours", type=int, default=8, help="the data's time zone (both sides)")
    ap.add_argument("--only", choices=("published", "ours"), help="run one side only (the table needs both)")
    ap.add_argument("--table-only", action="store_true",
                    help="run nothing: the table of every finished run under --out (any number of repeats per method)")
    a = ap.parse_args(argv)
    if a.table_only:
        return print_finished(a.out.resolve(), [int(x) for x in a.stages.split(",") if x],
                              [m for m in a.methods.split(",") if m])
    if a.published is None:
        ap.error("--published is required (the published code to run), unless --table-only")

    out = a.out.resolve()
    data = a.data.resolve() if a.data else out / "data"
    if not a.data and not (data / "others" / "id_cnt.pkl").is_file():
        _log(f"generating {GENERATE} into {data}")
        _lcron("generate", "-q", "--out", str(data), *[x for k, v in GENERATE.items() for x in (f"--{k}", str(v))],
               threads=a.threads)
    days = sorted(p.stem for p in (data / "all_stage").glob("*.feather"))
    if len(days) < 2:
        raise SystemExit(f"{data}: needs at least two days in all_stage/")
    train_days, test_day = days[:-1], days[-1]
    code = out / "published-code"
    prepare_published(a.published.resolve(), code, train_days, test_day)
    stages_list = [int(s) for s in a.stages.split(",") if s]
    methods = [m for m in a.methods.split(",") if m]
    seeds = list(range(1, a.repeats + 1))

    for stages in stages_list:
        if a.only != "published":
            _lcron("preprocess", "-q", "--source", str(data), "--out", str(out / f"shards-{stages}"),
                   "--stages", str(stages), "--reference-quirks", "--tz-offset-hours", str(a.tz_offset_hours),
                   threads=a.threads)
    jobs: dict[concurrent.futures.Future, tuple] = {}
    published: dict[int, dict[str, list[float]]] = {s: {m: [] for m in methods} for s in stages_list}
    ours: dict[int, dict[str, list[float]]] = {s: {} for s in stages_list}
    t_start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(a.jobs) as pool:
        for stages in stages_list:
            for method in methods:
                if a.only != "ours":
                    for r in seeds:
                        root = out / "published" / f"{stages}stage" / method / f"r{r}"
                        jobs[pool.submit(run_published, code, data, root, stages, method, a.batch_size, a.lr,
                                         a.threads, a.tz_offset_hours)] = ("published", stages, method, r)
                if a.only != "published":
                    run = out / "ours" / f"{stages}stage" / method
                    jobs[pool.submit(run_ours, out / f"shards-{stages}", run, method, seeds, a.batch_size, a.lr,
                                     a.threads)] = ("ours", stages, method, None)
        for fut in concurrent.futures.as_completed(jobs):
            side, stages, method, r = jobs[fut]
            value = fut.result()
            if side == "published":
                published[stages][method].append(value["joint_recall"])
                _log(f"published {stages}-stage {method} r{r}: {value['joint_recall']:.4f} ({value['seconds']:.0f} s)")
            else:
                ours[stages][method] = value
                _log(f"reference mode {stages}-stage {method}: " + ", ".join(f"{v:.4f}" for v in value))
    doc = {"data": str(data), "train_days": train_days, "test_day": test_day, "batch_size": a.batch_size,
           "lr": a.lr, "tz_offset_hours": a.tz_offset_hours, "repeats": a.repeats, "seconds": round(time.perf_counter() - t_start),
           "patches": [{"file": f, "why": w} for f, _, _, _, w in PATCHES], "settings": {}}
    for stages in stages_list:
        cmp = compare(published[stages], ours[stages])
        doc["settings"][str(stages)] = cmp
        if cmp["n"]:
            print(table(stages, cmp) + "\n")
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
