"""The ``lcron`` command (also ``python -m lcron``).

Each subcommand is one :class:`Command` entry in :data:`COMMANDS`: a name, a one-line
help, a function that adds its arguments to an ``argparse`` parser and a function that
runs it. To add a subcommand, write the two functions and append one entry; the run
function imports its library module itself, so ``lcron --help`` stays fast (no torch at
start-up). A command whose code lives in a heavy module is :func:`_lazy`: one small
function here imports that module (a plain import statement, which import analysis and
tests/test_architecture.py see), only when the command is chosen.

Exit codes: 0 success; 2 for a problem the user can fix (any :class:`LcronError`, a bad
setting, an unreadable input file, bad arguments), printed as one line
``lcron <cmd>: error: <message>``; 1 for an unexpected exception, with its traceback.
"""

from __future__ import annotations

import argparse
import sys
import traceback
import warnings
from dataclasses import dataclass
from types import ModuleType
from typing import Callable, Sequence

from lcron.data.step_configs import GenerateConfig, PreprocessConfig, ValidateConfig
from lcron.errors import LcronError
from lcron.settings import SettingError
from lcron.step_config import add_arguments, from_args

__all__ = ["Command", "COMMANDS", "build_parser", "main"]


@dataclass(frozen=True)
class Command:
    """A subcommand: ``add_arguments(parser)`` and ``run(args)``. A ``lazy`` command's code lives
    in a heavy module (torch) that both functions import when called: the parser adds a lazy
    command's arguments only when that command is chosen, so ``lcron --help`` stays fast."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int | None]
    description: str = ""
    lazy: bool = False


def _lazy(name: str, help: str, load: Callable[[], ModuleType], func: str) -> Command:
    """A command whose module ``load()`` imports and returns, with ``add_<func>_arguments(parser)``
    and ``run_<func>(args)``."""
    return Command(name, help, lambda p: getattr(load(), f"add_{func}_arguments")(p),
                   lambda a: getattr(load(), f"run_{func}")(a), lazy=True)


# The heavy modules of the lazy commands, one import each (run only when that command is chosen).
def _ingest() -> ModuleType:
    from lcron import ingest

    return ingest


def _train() -> ModuleType:
    from lcron import train

    return train


def _reference_importer() -> ModuleType:
    from lcron.reference import importer

    return importer


def _evaluate() -> ModuleType:
    from lcron import evaluate

    return evaluate


def _report() -> ModuleType:
    from lcron import report

    return report


def _compare() -> ModuleType:
    from lcron import compare

    return compare


def _serving_evaluate() -> ModuleType:
    from lcron.serving import evaluate

    return evaluate


def _serving_export() -> ModuleType:
    from lcron.serving import export

    return export


# ------------------------------------------------------------------------ generate
def _generate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write the RecFlow layout into")
    add_arguments(p, GenerateConfig)  # one option per GenerateConfig field


def _generate_run(a: argparse.Namespace) -> int:
    from dataclasses import asdict

    from lcron.data.synthetic import generate

    cfg = from_args(GenerateConfig, a)
    out = generate(a.out, progress=not a.quiet, **asdict(cfg))
    print(f"wrote synthetic RecFlow data ({cfg.num_days} days x {cfg.requests_per_day} requests) to {out}")
    return 0


# ---------------------------------------------------------------------- preprocess
def _source_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", required=True, metavar="DIR_OR_GS_URI",
                   help="RecFlow root: a local folder, gs://bucket/prefix or s3://bucket/prefix")


def _validate_args(p: argparse.ArgumentParser) -> None:
    _source_args(p)
    add_arguments(p, ValidateConfig)  # one option per ValidateConfig field


def _preprocess_args(p: argparse.ArgumentParser) -> None:
    _source_args(p)
    p.add_argument("--out", required=True, metavar="DIR", help="shard folder to write (one setting per folder)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--stages", type=int, choices=(2, 3), help="built-in two- or three-stage setting")
    which.add_argument("--setting", metavar="FILE", help="a setting file (JSON/YAML) or a built-in setting name")
    add_arguments(p, PreprocessConfig)  # one option per PreprocessConfig field
    p.add_argument("--overwrite", action="store_true",
                   help="rebuild the folder even if it holds shards of another setting/configuration")


def _preprocess_run(a: argparse.Namespace) -> int:
    from dataclasses import asdict

    from lcron.data.shards import preprocess

    cfg = from_args(PreprocessConfig, a)  # checked here, before anything is read or written
    setting = a.stages if a.stages is not None else a.setting
    shards = preprocess(a.source, a.out, setting, overwrite=a.overwrite, progress=not a.quiet, **asdict(cfg))
    total = sum(shards.num_requests(d) for d in shards.days)
    print(f"{shards.root}: setting {shards.setting.name}, {len(shards.days)} day(s), {total} requests, "
          f"N = {shards.setting.list_size}{', reference mode' if shards.reference_quirks else ''}")
    return 0


# ------------------------------------------------------------------------ validate
def _validate_run(a: argparse.Namespace) -> int:
    from dataclasses import asdict

    from lcron.data.validate import format_summary, validate

    cfg = from_args(ValidateConfig, a)
    summaries = validate(a.source, progress=not a.quiet, **asdict(cfg))
    print(format_summary(summaries))
    bad = [s["day"] for s in summaries if not s["ok"]]
    if bad:
        raise LcronError(f"{len(bad)} of {len(summaries)} day(s) failed validation: {', '.join(bad)}")
    return 0


# ------------------------------------------------------------------------- methods
def _methods_args(p: argparse.ArgumentParser) -> None:
    # Plain arguments, no registry: the listing itself is built in _methods_run, so that
    # `lcron --help` does not import the losses (torch).
    p.add_argument("names", nargs="*", metavar="METHOD", help="list only these methods (default: every registered one)")
    p.add_argument("--json", action="store_true",
                   help="print the methods as JSON (name, summary, class, options with default, what they take "
                        "and their checks) for scripts")


def _methods_run(a: argparse.Namespace) -> int:
    import json
    import shutil
    import textwrap

    from lcron.losses.registry import LISTING_HEADING, describe_methods, method_info, methods

    names = tuple(a.names) or methods()
    infos = [method_info(name) for name in names]  # an unknown name is an error before any output
    if a.json:
        print(json.dumps(infos, indent=2))
        return 0
    width = max(shutil.get_terminal_size().columns - 2, 40)
    print(textwrap.fill(LISTING_HEADING, width))
    print(describe_methods(width=width, only=names))
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
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where the training rows run (default auto: CUDA when present); on CUDA the rows "
                   "add the step mode and the peak GPU memory")


def _bench_run(a: argparse.Namespace) -> int:
    from lcron.benchmarks.suite import run_benchmarks

    mode = "full" if a.full else "quick" if a.quick else "default"
    run_benchmarks(mode=mode, json_path=a.json, data_dir=a.data_dir, only=a.only, progress=not a.quiet,
                   device=a.device)
    return 0


COMMANDS: list[Command] = [
    Command("generate", "write a synthetic data set in the RecFlow layout", _generate_args, _generate_run),
    Command("preprocess", "RecFlow days (folder or gs://) -> shards for one cascade setting",
            _preprocess_args, _preprocess_run),
    Command("validate", "check a RecFlow source and print a per-day summary (writes nothing)",
            _validate_args, _validate_run),
    _lazy("fingerprint", "print the fingerprint of a data source (what KFP caching keys on)", _ingest,
          "fingerprint"),
    _lazy("ingest", "stage the chosen days of a source (or the synthetic default) into a folder", _ingest,
          "ingest"),
    Command("methods", "list the registered training methods with their options (lcron train --method)",
            _methods_args, _methods_run,
            description="List every registered training method - the eight and any method added as one file "
                        "in lcron/losses/ (docs/methods.md, Adding a method) - with its one-line summary and "
                        "its options: KEY=DEFAULT (give one as lcron train --loss-option KEY=VALUE), the values "
                        "it takes and the checks on them."),
    _lazy("train", "train one method on a shard set, one model folder per seed", _train, "train"),
    _lazy("import-reference", "models trained by the published LCRON code -> a run folder to evaluate",
          _reference_importer, "import_reference"),
    _lazy("evaluate", "metrics of a trained run on its test day(s): joint recall, per stage, funnel, sweep",
          _evaluate, "evaluate"),
    _lazy("report", "HTML + Markdown + JSON report of a run", _report, "report"),
    _lazy("compare", "the methods table of several evaluated runs, with paired bootstrap intervals", _compare,
          "compare"),
    _lazy("serve-eval", "serving-style evaluation: retrieve from the whole item corpus with faiss",
          _serving_evaluate, "serve_eval"),
    _lazy("export", "export a trained cascade (models, faiss index, item table) to serve without lcron",
          _serving_export, "export"),
    Command("bench", "run the benchmarks, print a table and write JSON", _bench_args, _bench_run),
]


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; lazy commands get their arguments only when ``only`` names them."""
    parser = argparse.ArgumentParser(prog="lcron", description="Cascade ranking (LCRON and baselines) end to end.")
    from lcron import __version__

    parser.add_argument("--version", action="version", version=f"lcron {__version__}")
    # -q before the subcommand too (`lcron -q train ...`); its own dest, because a subparser's
    # defaults would overwrite a shared one.
    parser.add_argument("-q", "--quiet", dest="quiet_all", action="store_true",
                        help="no progress output (also accepted after the command)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for cmd in COMMANDS:
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.description or cmd.help)
        p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
        if not cmd.lazy or cmd.name == only:
            cmd.add_arguments(p)
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
    args.quiet = args.quiet or args.quiet_all
    restore = _setup_logging(quiet=args.quiet)
    from lcron.outputs import command_line

    try:
        with warnings.catch_warnings(), command_line(["lcron", *argv]):
            warnings.showwarning = _show_warning
            return _run(cmd, args)
    finally:
        restore()  # main() called in-process (tests, notebooks) leaves the logger as it found it


def console_main() -> None:
    """The ``lcron`` console script (and ``python -m lcron``): :func:`main`, then a quick exit.

    Why: after a command has finished, Python's own exit tears down every imported module
    one by one (torch's and matplotlib's are thousands), which took 0.3 - 0.5 s of every
    command's wall time: 10% of a small ``lcron evaluate`` (measured, docs/benchmarks.md).
    Everything the command wrote is closed by then, so the exit does only what matters
    from Python's shutdown, in its order: wait for non-daemon threads, run the ``atexit``
    handlers (temporary folders, logging), flush stdout and stderr; then it ends the
    process without the teardown. Where this interpreter lacks either hook, it exits the
    normal way.
    """
    code = main()
    _quick_exit(code)


def _quick_exit(code: int) -> None:
    import atexit
    import os
    import threading

    wait_for_threads = getattr(threading, "_shutdown", None)
    run_exit_handlers = getattr(atexit, "_run_exitfuncs", None)
    if wait_for_threads is None or run_exit_handlers is None:
        sys.exit(code)
    wait_for_threads()
    run_exit_handlers()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more can be said
            pass
    os._exit(code)


def _run(cmd: Command, args: argparse.Namespace) -> int:
    try:
        code = cmd.run(args)
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


def _setup_logging(quiet: bool) -> Callable[[], None]:
    """The library logs progress facts (per-day counts, skipped days, seeds trained) on the
    ``lcron`` logger (lcron.logs); the CLI shows them on stderr unless ``--quiet``. Returns
    a function that puts the previous level back."""
    from lcron.logs import configure

    logger = configure()
    level = logger.level
    configure(quiet=quiet)
    return lambda: logger.setLevel(level)


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: object = None, line: str | None = None) -> None:
    """Warnings (dropped requests, extra columns) as one readable line on stderr."""
    print(f"lcron: warning: {message}", file=sys.stderr)


def _one_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
