"""The report of one run: HTML (self-contained), Markdown and JSON views of the same tables.

The three views are rendered by :mod:`lcron.render` from one list of sections, so they
cannot disagree. This module decides what the sections of a run's report are and reads
their inputs through the modules that own them: the run folder (:mod:`lcron.run_folder`),
the evaluation folder (:mod:`lcron.evaluation.results`) and the serving result
(:mod:`lcron.evaluation.serving_results`).

Contents: configuration; the metric table (mean ± std over seeds, with n); the GT funnel;
the quota sweep (table + plot); streaming results per day (streaming evaluations);
training-loss curves per loss part (one line per seed, from ``train_log.jsonl``); learned
loss weights (ARF, LCRON; from ``summary.json``); the serving-style evaluation (retrieval
from the whole corpus, ``serving.json`` of :mod:`lcron.serving.evaluate`) when one was run;
provenance.

Of a run folder the report reads only run.json and each seed's summary.json and
train_log.jsonl (:data:`RUN_RECORD_FILES`), never a model file: :func:`copy_run_record`
copies exactly those into a folder that stands in for the run folder, which is how the
pipeline's report step gets its input without downloading every seed's weights.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from . import atomic
from .errors import ConfigError, DataError
from .evaluation.results import load_metrics, metric_label
from .evaluation.serving_results import SERVING_FILE, find_serving, load_serving, serving_metric_means
from .jsonfile import read_json
from .render import Section, Table, count_value, guard_page, write_page
from .run_folder import read_run_config, read_summaries, read_train_logs
from .step_config import StepConfig, add_arguments, from_args, option

REPORT_KIND = "lcron-report"
#: What the report reads of each seed folder of a run, besides the run's run.json
#: (:func:`build_report`: training table and learned weights from the summary, loss curves
#: from the log). Model files, day snapshots and resume checkpoints are not among them.
RUN_RECORD_FILES = ("summary.json", "train_log.jsonl")


# --------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class ReportConfig(StepConfig):
    """The choices of one report besides the run folder(s), the report folder and --overwrite:
    which evaluation and which serving evaluation to show. Each field is an ``lcron report``
    option and a keyword of :func:`build_report` with the same default
    (tests/test_step_configs_report.py)."""

    eval_dir: str | Path | None = option(None, "evaluation folder (default: RUN_DIR/eval; only with one run)",
                                         flag="--eval", metavar="DIR")
    serving_dir: str | Path | None = option(
        None, "folder holding serving.json (default: the evaluation folder; only with one run)",
        flag="--serving", metavar="DIR")


def _mean_std(entry: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return None if entry is None else {"mean": entry.get("mean"), "std": entry.get("std")}


def _serving_table(s: Mapping[str, Any]) -> Table:
    """One row per K1: GT in corpus, recall after retrieval, after each later stage, end to end."""
    names = list(s["stage_names"])
    later = names[1:]
    has_ir = any("index_recall" in s["results"][str(k)] for k in s["k1"])
    cols = (["K1", "GT in corpus", f"recall after {names[0]} (top-K1)"]
            + [f"recall after {stage}" for stage in later[:-1]]
            + [f"end-to-end recall (after {later[-1]})" if later else "end-to-end recall (retrieval only)", "n"]
            + (["index recall vs exact"] if has_ir else []))
    gic = _mean_std(s["results"].get("gt_in_corpus"))
    rows = []
    for k in s["k1"]:
        res = s["results"][str(k)]
        row = ([k, gic, _mean_std(res["recall_retrieval"])]
               + [_mean_std(res.get(f"recall_after/{stage}")) for stage in later[:-1]]
               + [_mean_std(res["joint_recall"]), res["joint_recall"].get("n")])
        if has_ir:
            row.append(_mean_std(res.get("index_recall")))
        rows.append(row)
    quotas = " -> ".join(str(q) for q in s.get("later_quotas", []))
    note = ("shares of the request's ground-truth items (its logged top group), averaged over the test requests "
            "with a GT, per seed; mean ± sample std (ddof = 1) over seeds, n = number of seeds. The first stage "
            f"retrieves the top-K1 of the whole corpus, the later stages keep their quotas ({quotas or 'none'}). "
            "GT in corpus is the ceiling of every other column")
    if has_ir:
        note += "; index recall = |approximate top-K1 ∩ exact top-K1| / K1"
    return Table("serving", "Serving-style evaluation per K1", cols, rows, note=note)


def _index_text(index: Mapping[str, Any]) -> str:
    kind = index.get("kind", "n/a")
    opts = index.get("options") or {}
    if kind == "ivf":
        return f"ivf (nlist {index.get('nlist')}, nprobe {index.get('nprobe')})"
    if kind == "hnsw":
        return (f"hnsw (M {opts.get('hnsw_m')}, efSearch {index.get('ef_search')}, "
                f"efConstruction {index.get('ef_construction')})")
    return "flat (exact inner product)" if kind == "flat" else str(kind)


def _serving_details_table(s: Mapping[str, Any], path: Path) -> Table:
    rates = [t.get("requests_per_s") for t in (s.get("timing") or {}).values()
             if t.get("requests_per_s") is not None]
    k1_text = ", ".join(map(str, s["k1"]))
    if list(s.get("k1_requested", s["k1"])) != list(s["k1"]):
        k1_text += f" (requested {', '.join(map(str, s['k1_requested']))})"
    rows = [
        ["test day", s.get("day")],
        ["requests evaluated", s.get("evaluated")],
        ["requests skipped (no GT)", s.get("skipped_no_gt")],
        ["seeds", ", ".join(str(x) for x in s["seeds"])],
        ["corpus items", s["index"].get("items")],
        *_catalogue_rows(s),
        ["index", _index_text(s["index"])],
        ["K1", k1_text],
        ["device", s.get("device")],
        ["tie seed", s.get("tie_seed")],
        ["requests/s (retrieval + scoring, mean over seeds)", sum(rates) / len(rates) if rates else None],
        ["file", str(path)],
    ]
    return Table("serving_setup", "Serving evaluation setup", ["field", "value"], rows)


def _catalogue_rows(s: Mapping[str, Any]) -> list[list[Any]]:
    """Cold items, the GT's cold share, the recall sample and a subset of the day, when recorded
    (serving.json files written before they were recorded have none of them)."""
    cat = s.get("catalogue") or {}
    rows: list[list[Any]] = []
    if "cold_items" in cat:
        rows.append(["cold corpus items (never a candidate on a training day)",
                     f"{cat['cold_items']:,} ({cat['cold_share']:.1%})"])
    cold = (s.get("results") or {}).get("gt_cold")
    if cold is not None and cold.get("mean") is not None:
        rows.append(["GT items that are cold (mean share)", cold["mean"]])
    sampled = [v.get("index_recall_requests") for v in (s.get("per_seed") or {}).values()
               if v.get("index_recall_requests") is not None]
    if sampled:
        rows.append(["requests in the index-recall sample (exact search)", min(sampled)])
    if cat.get("day_requests") and cat.get("requests_evaluated_of_day", cat["day_requests"]) < cat["day_requests"]:
        rows.append(["subset of the test day", f"first {cat['requests_evaluated_of_day']:,} of "
                                               f"{cat['day_requests']:,} requests"])
    return rows


def serving_section(s: Mapping[str, Any], path: Path) -> Section:
    """The report section of a serving evaluation: the per-K1 table, its setup, its notes."""
    text = ["The trained cascade serving from the whole item corpus: the first stage retrieves the top-K1 "
            "items by the DSSM inner product (faiss), the later stages score only those."]
    text += [f"Note: {n}" for n in s.get("notes", [])]
    return Section("serving", "Serving-style evaluation", text=text,
                   tables=[_serving_table(s), _serving_details_table(s, path)])


# --------------------------------------------------------------------------- the report
def _mode_text(m: Mapping[str, Any]) -> str:
    """Which conventions the run used (docs/reference.md)."""
    if m.get("reference_quirks"):
        return ("reference (--reference-quirks: the published experiments' features, model quirks and "
                "evaluation protocol)")
    return "default (faithful features, models and evaluation)"


def _config_table(cfg: Mapping[str, Any], m: Mapping[str, Any]) -> Table:
    train_cfg = cfg.get("train", {})
    rows = [
        ["method", m["method"]],
        ["loss options", json.dumps(m.get("loss_options") or {}, sort_keys=True)],
        ["mode", _mode_text(m)],
        ["setting", m["setting"]],
        ["stages", ", ".join(m["stage_names"])],
        ["quotas", ", ".join(str(q) for q in m["quotas"])],
        ["candidate list size N", str(m["list_size"])],
        ["batch size (training)", str(train_cfg.get("batch_size"))],
        ["learning rate", str(train_cfg.get("lr"))],
        ["embedding dim", str(train_cfg.get("dim"))],
        ["trained days", _day_range(cfg.get("days", []))],
        ["test days", _day_range(m["days"])],
        ["evaluation", "streaming (checkpoint after day t-1 on day t)" if m.get("streaming") else "final model"],
        ["seeds", ", ".join(str(s) for s in m["seeds"])],
        ["requests evaluated", str(m["requests"]["evaluated"])],
        ["requests skipped (no valid slot)", str(m["requests"]["skipped"])],
        ["run folder", m["run_dir"]],
        ["shards", m["shards"]],
    ]
    return Table("config", "Configuration", ["field", "value"], rows)


def _day_range(days: Sequence[str]) -> str:
    days = list(days)
    if not days:
        return "n/a"
    return days[0] if len(days) == 1 else f"{days[0]} .. {days[-1]} ({len(days)} days)"


def _metric_table(m: Mapping[str, Any]) -> Table:
    rows = []
    for key, entry in m["metrics"].items():
        if key.startswith("funnel/"):
            continue
        rows.append([metric_label(key, m), key, {"mean": entry["mean"], "std": entry["std"]}, entry["n"],
                     entry["per_seed"]])
    note = ("mean ± sample standard deviation (ddof = 1) over seeds; n = number of seeds; "
            "each seed's value is the mean over the test requests")
    return Table("metrics", "Metrics on the test day(s)", ["metric", "key", "mean ± std", "n", "per seed"], rows,
                 note=note)


def _funnel_table(m: Mapping[str, Any]) -> Table:
    rows = [["candidates (GT per request)", None, count_value(m.get("gt_per_request")), None]]
    for stage, quota in zip(m["stage_names"], m["quotas"]):
        after = m["metrics"][f"funnel/gt_after/{stage}"]
        share = m["metrics"][f"funnel/lost_share/{stage}"]
        rows.append([stage, quota, {"mean": after["mean"], "std": after["std"]},
                     {"mean": share["mean"], "std": share["std"]}])
    note = ("GT alive = ground-truth items still in the cascade after the stage (mean per request); "
            "lost share = of the GT items the cascade loses, the share this stage drops (sums to 1 over stages)")
    return Table("funnel", "GT funnel", ["stage", "quota", "GT alive after (mean ± std)", "share of lost GT"],
                 rows, note=note)


def _sweep_table(m: Mapping[str, Any]) -> Table:
    names = list(m["stage_names"])
    rows = []
    best = max((r["joint_recall"]["mean"] for r in m["quota_sweep"] if r["joint_recall"]["mean"] is not None),
               default=None)
    marks = []
    for i, r in enumerate(m["quota_sweep"]):
        rows.append([",".join(map(str, r["quotas"])), r["default"]]
                    + [count_value(r["items_scored"][s]) for s in names]
                    + [count_value(r["items_scored_after_first"]), {"mean": r["joint_recall"]["mean"], "std": r["joint_recall"]["std"]},
                       r["joint_recall"]["n"]])
        if best is not None and r["joint_recall"]["mean"] == best:
            marks.append((i, len(names) + 3))
    cols = (["quotas", "setting's own"] + [f"items scored by {s}" for s in names]
            + ["items scored after stage 1", "end-to-end recall", "n"])
    note = ("the same trained scores cut with other quotas; stage 1 scores the n valid slots, stage s the "
            "min(quota of stage s-1, n) survivors")
    return Table("quota_sweep", "Quota sweep", cols, rows, best=marks, note=note)


def _streaming_table(stream: Mapping[str, Any], m: Mapping[str, Any]) -> Table:
    names = list(m["stage_names"])
    keys = ["joint_recall"] + [f"recall_at_10_m/{s}" for s in names] + [f"ndcg_at_10/{s}" for s in names]
    rows = []
    for d in stream["days"]:
        rows.append([d["day"], d["checkpoint_day"], d["requests"]["evaluated"]]
                    + [{"mean": d["metrics"][k]["mean"], "std": d["metrics"][k]["std"]} for k in keys])
    avg = stream["average"]
    rows.append(["average", None, None] + [{"mean": avg[k]["mean"], "std": avg[k]["std"]} for k in keys])
    return Table("streaming", "Streaming evaluation per test day",
                 ["test day", "model after day", "requests"] + [metric_label(k, m) for k in keys], rows,
                 note="each day scored by the checkpoint saved after the previous day; the average is taken per "
                      "seed over days, then over seeds")


def _training_table(summaries: Mapping[int, Mapping[str, Any]]) -> Table:
    rows = [[f"seed {s}", d.get("steps"), d.get("requests"), d.get("final_loss"), d.get("steady_requests_per_s"),
             d.get("device"), _dropped(d)] for s, d in summaries.items()]
    return Table("training", "Training summary",
                 ["seed", "steps", "requests", "final loss", "requests/s (steady)", "device",
                  "dropped (partial batches)"], rows,
                 note="each day's last partial batch is not trained on; dropped = those requests of the training days")


def _dropped(summary: Mapping[str, Any]) -> str | None:
    """``"976 of 6000 (16.3%)"``; None for runs trained before the count was recorded."""
    if summary.get("dropped_requests") is None or not summary.get("requests_in_days"):
        return None
    return (f"{summary['dropped_requests']} of {summary['requests_in_days']} "
            f"({100 * summary['dropped_requests'] / summary['requests_in_days']:.1f}%)")


def _weights_table(summaries: Mapping[int, Mapping[str, Any]]) -> Table | None:
    names: list[str] = []
    for d in summaries.values():
        for k in (d.get("learned_weights") or {}):
            if k not in names:
                names.append(k)
    if not names:
        return None
    seeds = list(summaries)
    rows = [[name] + [(summaries[s].get("learned_weights") or {}).get(name) for s in seeds] for name in names]
    return Table("loss_weights", "Learned loss weights", ["parameter"] + [f"seed {s}" for s in seeds], rows,
                 note="the learned scalars w of the method's uncertainty weighting (0.5 / w^2 * L + log w), "
                      "initial value 1")


def _provenance_table(prov: Mapping[str, Any]) -> Table:
    git = prov.get("git") or {}
    rows = [[f"package {k}", v if v is not None else "not installed"] for k, v in (prov.get("packages") or {}).items()]
    rows += [
        ["lcron version", prov.get("lcron_version")],
        ["git commit", (git.get("commit", "") + (" (modified working tree)" if git.get("dirty") else ""))
         if git else "n/a (not a git checkout, or no commit yet)"],
        ["data fingerprint", prov.get("data_fingerprint")],
        ["device", prov.get("device")],
        ["python", prov.get("python")],
        ["platform", prov.get("platform")],
        ["date (UTC)", prov.get("date_utc")],
    ]
    return Table("provenance", "Provenance", ["item", "value"], rows)


def copy_run_record(run_dir: str | Path, out: str | Path) -> list[Path]:
    """Copy the part of a finished run folder that :func:`build_report` reads into ``out``:
    run.json and ``seed-<n>/`` + each of :data:`RUN_RECORD_FILES` of every completed seed.
    Returns the copied files (their paths under ``out``).

    ``out`` can then be given to :func:`build_report` (or ``lcron report``) in place of the
    run folder and gives the same report. Why it exists: a run folder holds every seed's
    model.pt (and per-day snapshots in streaming runs), at RecFlow vocabularies gigabytes,
    while the report renders tables and curves from a few kilobytes to megabytes; the
    pipeline's train step writes this copy as a second artifact, so the report step
    downloads only it. A run that training has not finished is refused here
    (:func:`lcron.run_folder.FinishedRun.open`), naming the command that completes it.
    """
    from .run_folder import FinishedRun

    run = FinishedRun.open(run_dir)
    out = Path(out)
    if out.resolve() == run.root.resolve():
        raise ConfigError(f"the run record of {run.root} cannot be written into the run folder itself")
    sources = [run.root / "run.json"] + [d / name for d in run.seed_dirs for name in RUN_RECORD_FILES]
    copied = []
    for src in sources:
        if not src.is_file():  # no train log (a run of an older lcron): the report has no curve for it
            continue
        dst = out / src.relative_to(run.root)
        dst.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_bytes(dst, src.read_bytes())  # kilobytes to megabytes; never a half-written copy
        copied.append(dst)
    return copied


def build_report(run_dir: str | Path, eval_dir: str | Path | None = None,
                 out: str | Path | None = None, serving_dir: str | Path | None = None,
                 overwrite: bool = False) -> dict[str, Path]:
    """Write report.html, report.md, report.json (and the plot PNGs) for an evaluated run;
    returns ``{"html", "markdown", "json", <plot name>: path}``.

    ``run_dir`` is the run folder or its record (:func:`copy_run_record`): only run.json and
    the seeds' summaries and train logs are read, never a model file.

    The serving section is there when a serving.json is found (:func:`find_serving`: in
    ``serving_dir``, else in the evaluation folder); it must describe the same setting."""
    from . import provenance

    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir)
    eval_dir = Path(eval_dir) if eval_dir is not None else run_dir / "eval"
    m = load_metrics(eval_dir)
    out = Path(out) if out is not None else run_dir / "report"
    inputs = {"run_dir": str(run_dir.resolve()), "eval_dir": str(eval_dir.resolve()),
              "serving_dir": None if serving_dir is None else str(Path(serving_dir).resolve())}
    guard_page(out, "report", inputs, overwrite, "report")
    seeds = list(m["seeds"])
    summaries = read_summaries(run_dir, seeds)
    curves = read_train_logs(run_dir, seeds)
    title = f"lcron report: {m['method']} ({m['setting']})"

    sections = _evaluation_sections(cfg, m, eval_dir) + _training_sections(summaries, curves, m["method"])
    serving_path, serving = _serving_evaluation(serving_dir, eval_dir, m)
    if serving is not None:
        sections.append(serving_section(serving, serving_path))
    prov = dict(m.get("provenance") or {})
    report_prov = provenance.collect(data_fingerprint=m.get("data_fingerprint"), device=m.get("device"))
    sections.append(_provenance_section(prov, report_prov))
    doc = _report_doc(run_dir, eval_dir, m, inputs, prov, report_prov, serving_path, serving)
    return write_page(out, "report", title, sections, doc, subtitle=f"run {run_dir}")


def _evaluation_sections(cfg: Mapping[str, Any], m: Mapping[str, Any], eval_dir: Path) -> list[Section]:
    """The sections of the run's evaluation, in report order: configuration, metrics, GT
    funnel, quota sweep, and streaming when the evaluation streamed (and left its results)."""
    from . import plots

    sections = [Section("config", "Configuration", tables=[_config_table(cfg, m)])]
    sections.append(Section("metrics", "Metrics", tables=[_metric_table(m)],
                            text=[f"{m['requests']['evaluated']} test requests evaluated, "
                                  f"{m['requests']['skipped']} skipped (no valid slot)."]))
    fun = _funnel_table(m)
    funnel_png = plots.funnel_png(m["stage_names"], m.get("gt_per_request"),
                                  [m["metrics"][f"funnel/gt_after/{s}"]["mean"] for s in m["stage_names"]],
                                  [m["metrics"][f"funnel/lost_share/{s}"]["mean"] for s in m["stage_names"]],
                                  title=f"GT funnel, {m['method']}")
    sections.append(Section("funnel", "GT funnel", tables=[fun],
                            images=[("funnel.png", "GT funnel: GT items alive per stage and where they are lost",
                                     funnel_png)]))
    sweep_png = plots.quota_sweep_png(m["quota_sweep"], m["stage_names"], title=f"quota sweep, {m['method']}")
    sections.append(Section("quota-sweep", "Quota sweep", tables=[_sweep_table(m)],
                            images=[("quota_sweep.png", "End-to-end recall against items scored by later stages",
                                     sweep_png)]))
    stream_path = eval_dir / "streaming.json"
    if m.get("streaming") and stream_path.is_file():
        sections.append(Section("streaming", "Streaming evaluation",
                                tables=[_streaming_table(read_json(stream_path, "streaming results"), m)]))
    return sections


def _training_sections(summaries: Mapping[int, Mapping[str, Any]], curves: Mapping[str, Any],
                       method: str) -> list[Section]:
    """The sections of the run's training: the loss curves (with a table of the seeds'
    training when they left summaries) and the learned loss weights, when the method learns any."""
    from . import plots

    train_tables = [_training_table(summaries)] if summaries else []
    loss_png = plots.loss_curves_png(curves, title=f"training loss, {method}")
    sections = [Section("training-loss", "Training loss", tables=train_tables,
                        text=[] if curves else ["No training steps were logged."],
                        images=[("loss_curves.png", "Training loss per loss part, one line per seed", loss_png)])]
    weights = _weights_table(summaries)
    if weights is not None:
        sections.append(Section("loss-weights", "Learned loss weights", tables=[weights]))
    return sections


def _serving_evaluation(serving_dir: str | Path | None, eval_dir: Path,
                 m: Mapping[str, Any]) -> tuple[Path | None, dict[str, Any] | None]:
    """The serving evaluation to report (:func:`find_serving`) and its path, or (None, None);
    one of another setting than the run's evaluation is refused, not reported beside it."""
    serving_path = find_serving(serving_dir, eval_dir)
    serving = load_serving(serving_path) if serving_path is not None else None
    if serving is not None:
        if serving.get("setting") != m["setting"] or list(serving["stage_names"]) != list(m["stage_names"]):
            raise DataError(f"{serving_path} is a serving evaluation of setting {serving.get('setting')!r} "
                            f"(stages {serving['stage_names']}); the run's evaluation is {m['setting']!r} "
                            f"(stages {m['stage_names']})")
    return serving_path, serving


def _provenance_section(prov: Mapping[str, Any], report_prov: Mapping[str, Any]) -> Section:
    """Provenance: the evaluation's (the report's own when the evaluation recorded none), and
    when the evaluation and the report were made."""
    return Section("provenance", "Provenance", tables=[_provenance_table(prov or report_prov)],
                   text=[f"Evaluated {prov.get('date_utc', 'n/a')}; report written {report_prov['date_utc']}."])


def _report_doc(run_dir: Path, eval_dir: Path, m: Mapping[str, Any], inputs: Mapping[str, Any],
                prov: dict[str, Any], report_prov: dict[str, Any], serving_path: Path | None,
                serving: Mapping[str, Any] | None) -> dict[str, Any]:
    """report.json's content: what the report shows, for machines (and the inputs it was made from)."""
    doc = {"kind": REPORT_KIND, "run_dir": str(run_dir), "eval_dir": str(eval_dir), "method": m["method"],
           "setting": m["setting"], "reference_quirks": bool(m.get("reference_quirks")), "metrics": m["metrics"],
           "provenance": prov, "report_provenance": report_prov, "inputs": inputs}
    if serving is not None:
        doc["serving"] = {"path": str(serving_path), "day": serving.get("day"), "k1": list(serving["k1"]),
                          "index": serving["index"], "seeds": list(serving["seeds"]),
                          "results": serving["results"], "metrics": serving_metric_means(serving)}
    return doc


# --------------------------------------------------------------------------- CLI
def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``lcron report``."""
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="evaluated training run folder(s)")
    add_arguments(parser, ReportConfig)  # --eval, --serving: one option per ReportConfig field
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="report folder (default: RUN_DIR/report; with several runs: DIR/<run name>)")
    parser.add_argument("--overwrite", action="store_true", help="replace a report of another run in --out")


def run_report(args: argparse.Namespace) -> int:
    """``lcron report``: write each run's report and print where it is."""
    config = from_args(ReportConfig, args)
    runs = [Path(p) for p in args.run_dirs]
    if config.eval_dir is not None and len(runs) > 1:
        raise ConfigError("--eval names one evaluation folder; give one RUN_DIR with it")
    serving_dir = config.serving_dir
    if serving_dir is not None and len(runs) > 1:
        raise ConfigError("--serving names one serving folder; give one RUN_DIR with it")
    names = [p.resolve().name for p in runs]
    if args.out is not None and len(runs) > 1 and len(set(names)) != len(names):
        raise ConfigError(f"run folders share a name ({names}); report them one at a time with --out")
    if serving_dir is not None and not (Path(serving_dir) / SERVING_FILE).is_file():
        raise DataError(f"--serving {serving_dir}: no {SERVING_FILE} there; run lcron serve-eval --out {serving_dir}")
    for run in runs:
        out = None
        if args.out is not None:
            out = Path(args.out) if len(runs) == 1 else Path(args.out) / run.resolve().name
        paths = build_report(run, out=out, **config.as_kwargs(), overwrite=getattr(args, "overwrite", False))
        print(f"report: {paths['html']}")
        print(f"  markdown: {paths['markdown']}")
        print(f"  json: {paths['json']}")
    return 0
