"""Run many configurations of the pipeline locally, one after another, then compare them.

    python -m pipelines.sweep_local --methods bce,lcron --stages 2,3 [--root runs/sweep-local] [KEY=VALUE ...]

Each (method, stages) configuration runs the compiled pipeline through kfp.local (see
``pipelines.run_local``) with its own pipeline root ``<root>/<method>-<stages>stage/``.
A configuration that finished writes ``<root>/<method>-<stages>stage/done.json`` (its
parameters, output paths and metrics); a rerun of the sweep skips those, so an
interrupted sweep resumes where it stopped. A configuration whose parameters changed
since is run again. At the end, every configuration of the sweep is compared per
setting with :func:`lcron.compare.compare` into ``<root>/compare/``.

kfp.local has no cache, so the sweep shares the data work itself: every configuration's
preprocess step builds its shard set in ``<root>/shared-shards/<setting>-<key>`` (the
pipeline's ``shared_shards`` parameter; ``key`` hashes ingest's source fingerprint and the
setting), so all configurations of one setting train on one shard set on disk, built by
the first and re-checked by the others; ingest references the source instead of copying
it. ``shared_shards=""`` as KEY=VALUE gives every configuration its own shard set again.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from lcron.errors import ConfigError, LcronError
from lcron.logs import get_logger
from pipelines.run_local import (DEFAULT_PACKAGE, add_local_options, resolve_local_options, run_pipeline)
from pipelines.submit import check_methods_and_stages, expand_methods

DEFAULT_ROOT = Path("runs/sweep-local")
MARKER = "done.json"
SHARED = "shared-shards"  # <root>/shared-shards: one shard set per data and setting
# Where the sweep puts the shard sets changes no result, so a change of it reruns nothing.
NOT_COMPARED = ("shared_shards",)
log = get_logger(__name__)


def config_name(method: str, stages: int) -> str:
    """Folder name of one configuration: ``<method>-<stages>stage``."""
    return f"{method}-{int(stages)}stage"


def read_marker(folder: Path) -> dict[str, Any] | None:
    """The completion marker of a configuration folder, or None if it did not finish."""
    try:
        doc = json.loads((folder / MARKER).read_text())
    except (FileNotFoundError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def sweep_local(methods: Sequence[str], stages: Sequence[int], root: str | Path = DEFAULT_ROOT,
                params: Mapping[str, Any] | None = None, *, package: str | Path = DEFAULT_PACKAGE,
                docker: bool = False, compare: bool = True) -> dict[str, Any]:
    """Run every missing configuration, then compare all of them; returns a summary.

    Summary: ``{"configs": {name: marker}, "ran": [...], "skipped": [...],
    "compare": result of lcron.compare.compare (None without evaluations or compare=False)}``.
    """
    from lcron import atomic

    check_methods_and_stages(methods, stages)
    reserved = sorted({"method", "stages"} & set(params or {}))
    if reserved:
        raise ConfigError(f"give {', '.join(reserved)} with --methods/--stages, not as KEY=VALUE")
    root = Path(root)
    summary: dict[str, Any] = {"configs": {}, "ran": [], "skipped": [], "compare": None}
    shared = {"shared_shards": str((root / SHARED).resolve())}
    for method in methods:
        for n in (int(s) for s in stages):
            name = config_name(method, n)
            folder = root / name
            run_params = {**shared, **dict(params or {}), "method": method, "stages": n}
            done = read_marker(folder)
            if done is not None and _compared(done.get("params")) == _compared(run_params):
                log.info(f"[sweep] {name}: complete, skipped")
                summary["skipped"].append(name)
                summary["configs"][name] = done
                continue
            log.info(f"[sweep] {name}: running")
            run = run_pipeline(package, run_params, folder / "kfp", docker=docker)
            marker = {"name": name, "method": method, "stages": n, **run.to_dict()}
            atomic.write_json(folder / MARKER, marker)
            summary["ran"].append(name)
            summary["configs"][name] = marker
    if compare:
        summary["compare"] = compare_configs(summary["configs"].values(), root / "compare")
    return summary


def _compared(params: Any) -> Any:
    """The parameters that decide a configuration's results (what a rerun is decided by)."""
    return {k: v for k, v in params.items() if k not in NOT_COMPARED} if isinstance(params, dict) else params


def compare_configs(markers: Iterable[Mapping[str, Any]], out: Path) -> dict[str, Any] | None:
    """Compare the configurations (one table per setting, serving columns where they ran) into ``out``."""
    from lcron.compare import compare

    # Each configuration's pipeline-run folder (<run>/<step>/<output>) holds its evaluation
    # and, when it ran, its serving.json: compare finds both by searching the folder.
    paths = sorted({str(Path(m["paths"]["evaluation"]).parents[1])
                    for m in markers if m.get("paths", {}).get("evaluation")})
    if not paths:
        return None
    return compare(paths, out, overwrite=True)  # the sweep owns <root>/compare; it grows with the sweep


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.sweep_local", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("params", nargs="*", metavar="KEY=VALUE", help="pipeline parameters of every configuration")
    parser.add_argument("--methods", default="all",
                        help="comma-separated methods, or 'all' (default: every registered method)")
    parser.add_argument("--stages", default="2,3", help="comma-separated subset of 2,3 (default both)")
    parser.add_argument("--root", default=str(DEFAULT_ROOT), help=f"sweep folder (default {DEFAULT_ROOT})")
    add_local_options(parser)
    args = parser.parse_args(argv)
    try:
        methods = expand_methods(args.methods)
        stages = [int(s) for s in args.stages.replace(" ", ",").split(",") if s.strip()]
    except ValueError as exc:
        parser.error(str(exc))
    params, package = resolve_local_options(parser, args)
    try:
        summary = sweep_local(methods, stages, args.root, params, package=package, docker=args.docker)
    except (LcronError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # a step failed in kfp.local (its log is above)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"\nsweep {args.root}: {len(summary['ran'])} configuration(s) run, {len(summary['skipped'])} skipped")
    for name, marker in summary["configs"].items():
        recall = marker.get("metrics", {}).get("joint_recall")
        print(f"  {name:22s} joint recall {recall:.4f}" if recall is not None else f"  {name:22s} (no metrics)")
    if summary["compare"] is not None:
        print(f"comparison: {summary['compare']['paths']['html']}")
        print(f"  markdown: {summary['compare']['paths']['markdown']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
