"""The module layout: docs/architecture.md describes every module of the library, and the
steps that read a finished run (evaluation, serving evaluation, export, report, compare)
do so without importing the trainer."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ROOT / "lcron"


def _documented_paths() -> set[str]:
    """Every `path.py` or `folder/` named in the first column of the module table."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    section = text.split("## The library", 1)[1].split("\n## ", 1)[0]
    paths: set[str] = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            first = line.split("|")[1]
            paths.update(re.findall(r"`([\w/]+(?:\.py|/))`", first))
    return paths


def test_every_module_is_in_the_architecture_table_and_every_entry_exists():
    documented = _documented_paths()
    assert documented, "no module table found in docs/architecture.md"
    missing = []
    for path in sorted(LIBRARY.rglob("*.py")):
        rel = path.relative_to(LIBRARY).as_posix()
        if path.name in ("__init__.py", "__main__.py") or "__pycache__" in rel:
            continue
        folders = {"/".join(rel.split("/")[:i]) + "/" for i in range(1, rel.count("/") + 1)}
        if rel not in documented and not folders & documented:
            missing.append(rel)
    assert not missing, f"modules not described in docs/architecture.md: {missing}"
    stale = [p for p in documented if not (LIBRARY / p).exists()]
    assert not stale, f"docs/architecture.md names modules that do not exist: {stale}"


READERS = ["lcron/evaluate.py", "lcron/evaluation", "lcron/serving/evaluate.py", "lcron/serving/export.py",
           "lcron/serving/results.py", "lcron/report.py", "lcron/compare.py", "lcron/run_folder.py", "lcron/render.py"]
TRAINER = ("lcron.train", "lcron.train_step", "lcron.optim")


def _imports(path: Path, package: str | None = None) -> set[str]:
    """Every module ``path`` imports anywhere (also inside functions), relative imports resolved
    against ``package`` (default: the package the file lies in)."""
    if package is None:
        package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            mod = ".".join([*base, node.module] if node.module else base)
            found.add(mod)
            found.update(f"{mod}.{a.name}" for a in node.names)
    return found


@pytest.mark.parametrize("reader", READERS)
def test_readers_of_a_finished_run_do_not_import_the_trainer(reader):
    files = sorted((ROOT / reader).rglob("*.py")) if (ROOT / reader).is_dir() else [ROOT / reader]
    for f in files:
        bad = sorted(m for m in _imports(f) if m in TRAINER or m.startswith(tuple(t + "." for t in TRAINER)))
        assert not bad, f"{f.relative_to(ROOT)} imports the trainer: {bad}"


def test_the_import_scan_sees_relative_and_nested_imports(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from ..train import load_cascade\n    from lcron import optim\n")
    assert {"lcron.train", "lcron.train.load_cascade", "lcron.optim"} <= _imports(probe, "lcron.serving")


def test_one_summary_over_seeds_for_evaluation_and_serving():
    import lcron.evaluate
    import lcron.serving.evaluate
    from lcron.evaluation.results import summarize_seeds

    assert not hasattr(lcron.evaluate, "aggregate") and not hasattr(lcron.serving.evaluate, "summarize")
    assert lcron.evaluate.summarize_seeds is summarize_seeds is lcron.serving.evaluate.summarize_seeds
    s = summarize_seeds([0.5, None, float("nan"), 0.7])
    assert s == {"mean": pytest.approx(0.6), "std": pytest.approx(0.1414213562), "n": 2,
                 "per_seed": [0.5, None, None, 0.7]}
