"""The ``lcron`` command (also ``python -m lcron``).

Each subcommand is one :class:`Command` entry in :data:`COMMANDS`: a name, a one-line
help, a function that adds its arguments to an ``argparse`` parser and a function that
runs it. To add a subcommand, write the two functions and append one entry; the run
function imports its library module itself, so ``lcron --help`` stays fast (no torch at
start-up).

Exit codes: 0 success; 2 for a problem the user can fix (any :class:`LcronError`, a bad
setting, an unreadable input file, bad arguments), printed as one line
``lcron <cmd>: error: <message>``; 1 for an unexpected exception, with its traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

from lcron.errors import LcronError
from lcron.settings import SettingError

__all__ = ["Command", "COMMANDS", "build_parser", "main"]


@dataclass(frozen=True)
class Command:
    """A subcommand. ``add_arguments`` and ``run`` are callables, or ``"module:function"`` strings
    for commands whose code lives in a heavy module (torch): those are imported only when that
    command runs, so ``lcron --help`` stays fast."""

    name: str
    help: str
    add_arguments: "Callable[[argparse.ArgumentParser], None] | str"
    run: "Callable[[argparse.Namespace], int | None] | str"
    description: str = ""

    @property
    def lazy(self) -> bool:
        return isinstance(self.add_arguments, str)

    def resolve(self, attr: str) -> Callable:
        target = getattr(self, attr)
        if not isinstance(target, str):
            return target
        import importlib

        module, _, func = target.partition(":")
        return getattr(importlib.import_module(module), func)


def _lazy(name: str, help: str, module: str, func: str) -> Command:
    return Command(name, help, f"{module}:add_{func}_arguments", f"{module}:run_{func}")


# ------------------------------------------------------------------------ generate
def _generate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write the RecFlow layout into")
    p.add_argument("--num-days", type=int, default=4, metavar="N", help="number of days (default 4)")
    p.add_argument("--start-date", default="2024-01-13", metavar="YYYY-MM-DD", help="first day (default 2024-01-13)")
    p.add_argument("--requests-per-day", type=int, default=2000, metavar="N", help="requests per day (default 2000)")
    p.add_argument("--users", type=int, default=500, metavar="N", help="number of users (default 500)")
    p.add_argument("--items", type=int, default=5000, metavar="N", help="number of items (default 5000)")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="random seed (default 0)")


def _generate_run(a: argparse.Namespace) -> int:
    from lcron.data.synthetic import generate

    out = generate(a.out, num_days=a.num_days, start_date=a.start_date, requests_per_day=a.requests_per_day,
                   users=a.users, items=a.items, seed=a.seed, progress=not a.quiet)
    print(f"wrote synthetic RecFlow data ({a.num_days} days x {a.requests_per_day} requests) to {out}")
    return 0


# ---------------------------------------------------------------------- preprocess
def _source_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", required=True, metavar="DIR_OR_GS_URI",
                   help="RecFlow root: a local folder, gs://bucket/prefix or s3://bucket/prefix")
    p.add_argument("--days", default=None, metavar="FIRST:LAST",
                   help="days to use, inclusive (YYYY-MM-DD:YYYY-MM-DD, or one day); default: all")
    p.add_argument("--max-missing-fraction", type=float, default=0.01, metavar="F",
                   help="largest fraction of a day's requests that may be dropped for missing from a pkl "
                        "(default 0.01)")


def _preprocess_args(p: argparse.ArgumentParser) -> None:
    _source_args(p)
    p.add_argument("--out", required=True, metavar="DIR", help="shard folder to write (one setting per folder)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--stages", type=int, choices=(2, 3), help="built-in two- or three-stage setting")
    which.add_argument("--setting", metavar="FILE", help="a setting file (JSON/YAML) or a built-in setting name")
    p.add_argument("--tz-offset-hours", type=int, default=8, metavar="H",
                   help="time zone of the data for weekday/hour/minute features (default 8 = UTC+8)")
    p.add_argument("--overwrite", action="store_true",
                   help="rebuild the folder even if it holds shards of another setting/configuration")


def _preprocess_run(a: argparse.Namespace) -> int:
    from lcron.data.shards import preprocess

    setting = a.stages if a.stages is not None else a.setting
    shards = preprocess(a.source, a.out, setting, a.days, tz_offset_hours=a.tz_offset_hours,
                        max_missing_fraction=a.max_missing_fraction, overwrite=a.overwrite, progress=not a.quiet)
    total = sum(shards.num_requests(d) for d in shards.days)
    print(f"{shards.root}: setting {shards.setting.name}, {len(shards.days)} day(s), {total} requests, "
          f"N = {shards.setting.list_size}")
    return 0


# ------------------------------------------------------------------------ validate
def _validate_run(a: argparse.Namespace) -> int:
    from lcron.data.validate import format_summary, validate

    summaries = validate(a.source, a.days, max_missing_fraction=a.max_missing_fraction)
    print(format_summary(summaries))
    bad = [s["day"] for s in summaries if not s["ok"]]
    if bad:
        raise LcronError(f"{len(bad)} of {len(summaries)} day(s) failed validation: {', '.join(bad)}")
    return 0


# --------------------------------------------------------------------------- bench
def _bench_args(p: argparse.ArgumentParser) -> None:
    size = p.add_mutually_exclusive_group()
    size.add_argument("--full", action="store_true", help="larger data set (slower, steadier numbers)")
    size.add_argument("--quick", action="store_true", help="tiny data set: checks that every benchmark runs")
    p.add_argument("--json", default="build/bench.json", metavar="FILE", help="where to write the results")
    p.add_argument("--data-dir", default="build/bench-data", metavar="DIR",
                   help="where the benchmark data sets are generated and reused")
    p.add_argument("--only", action="append", metavar="NAME", help="run only this benchmark (repeatable)")


def _bench_run(a: argparse.Namespace) -> int:
    from lcron.bench import run_benchmarks

    mode = "full" if a.full else "quick" if a.quick else "default"
    run_benchmarks(mode=mode, json_path=a.json, data_dir=a.data_dir, only=a.only, progress=not a.quiet)
    return 0


COMMANDS: list[Command] = [
    Command("generate", "write a synthetic data set in the RecFlow layout", _generate_args, _generate_run),
    Command("preprocess", "RecFlow days (folder or gs://) -> shards for one cascade setting",
            _preprocess_args, _preprocess_run),
    Command("validate", "check a RecFlow source and print a per-day summary (writes nothing)",
            _source_args, _validate_run),
    _lazy("fingerprint", "print the fingerprint of a data source (what KFP caching keys on)", "lcron.ingest",
          "fingerprint"),
    _lazy("ingest", "stage the chosen days of a source (or the synthetic default) into a folder", "lcron.ingest",
          "ingest"),
    _lazy("train", "train one method on a shard set, one model folder per seed", "lcron.train", "train"),
    _lazy("evaluate", "metrics of a trained run on its test day(s): joint recall, per stage, funnel, sweep",
          "lcron.evaluate", "evaluate"),
    _lazy("report", "HTML + Markdown + JSON report of a run", "lcron.report", "report"),
    _lazy("compare", "the methods table of several evaluated runs, with paired bootstrap intervals",
          "lcron.compare", "compare"),
    _lazy("serve-eval", "serving-style evaluation: retrieve from the whole item corpus with faiss",
          "lcron.serving.evaluate", "serve_eval"),
    _lazy("export", "export a trained cascade (models, faiss index, item table) to serve without lcron",
          "lcron.serving.export", "export"),
    Command("bench", "run the benchmarks, print a table and write JSON", _bench_args, _bench_run),
]


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; lazy commands get their arguments only when ``only`` names them."""
    parser = argparse.ArgumentParser(prog="lcron", description="Cascade ranking (LCRON and baselines) end to end.")
    from lcron import __version__

    parser.add_argument("--version", action="version", version=f"lcron {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for cmd in COMMANDS:
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.description or cmd.help)
        p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
        if not cmd.lazy or cmd.name == only:
            cmd.resolve("add_arguments")(p)
        p.set_defaults(_command=cmd)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 2 user error, 1 unexpected)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(only=chosen)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2, message already printed)
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    cmd: Command = args._command
    _setup_logging(quiet=args.quiet)
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        return _run(cmd, args)


def _run(cmd: Command, args: argparse.Namespace) -> int:
    try:
        code = cmd.resolve("run")(args)
    except (LcronError, SettingError) as exc:
        print(f"lcron {cmd.name}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"lcron {cmd.name}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lcron {cmd.name}: interrupted", file=sys.stderr)
        return 130
    except Exception:  # noqa: BLE001 - a bug: show everything
        traceback.print_exc()
        print(f"lcron {cmd.name}: unexpected error (a bug; the traceback is above)", file=sys.stderr)
        return 1
    return int(code or 0)


class _StderrHandler(logging.Handler):
    """Writes to whatever ``sys.stderr`` is at the time (tests swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record), file=sys.stderr)


def _setup_logging(quiet: bool) -> None:
    """The library logs progress facts (per-day counts, skipped days) on the ``lcron``
    logger at INFO; the CLI shows them on stderr unless ``--quiet``."""
    logger = logging.getLogger("lcron")
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        logger.addHandler(_StderrHandler())


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: object = None, line: str | None = None) -> None:
    """Warnings (dropped requests, extra columns) as one readable line on stderr."""
    print(f"lcron: warning: {message}", file=sys.stderr)


def _one_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
