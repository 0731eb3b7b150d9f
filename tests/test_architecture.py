"""The module layout: docs/architecture.md describes every module of the library, the
steps that read a finished run (evaluation, serving evaluation, export, report, compare)
do so without importing the trainer, the library's imports form no circle and never run up
its layers (:data:`LAYERS`), no module imports another one's private names, and no module is
imported by a name in a string (except the listed plug-in discovery)."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

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
           "lcron/report.py", "lcron/compare.py", "lcron/run_folder.py", "lcron/render.py"]  # evaluation/: serving.json too
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


# ------------------------------------------------------------------ layers without circles
# The import graph of the library: one node per module (a package is its __init__.py), one
# edge per module another one imports - at the top, inside a function or under a condition,
# absolute (`import lcron.x`, `from lcron.x import y`) or relative (`from ..x import y`);
# `from pkg import name` is an edge to pkg.name when that is a module. An import of a.b.c
# is an edge to a.b.c only: Python runs a/__init__.py first, but a package importing its
# own modules is not a circle. A strongly connected component of more than one module is
# a circle: those modules can only be understood, tested and changed together.


def _modules(root: Path, package: str) -> dict[str, tuple[Path, bool]]:
    """Module name -> (file, is a package) for every .py file under ``root`` (the folder of ``package``)."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if "__pycache__" in parts:
            continue
        is_package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


def _import_graph(root: Path, package: str) -> dict[str, dict[str, list[tuple[int, str | None]]]]:
    """module -> {module it imports: [(line, the name taken from it, or None for a module)]},
    for imports of ``package``'s own modules."""
    modules = _modules(root, package)

    def known(name: str) -> str | None:  # the module a dotted name lives in
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    def inside(name: str) -> bool:
        return name == package or name.startswith(package + ".")

    graph: dict[str, dict[str, list[tuple[int, str | None]]]] = {m: {} for m in modules}
    for module, (path, is_package) in modules.items():
        here = module.split(".") if is_package else module.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            targets: list[tuple[str | None, str | None]] = []
            if isinstance(node, ast.Import):
                targets = [(known(a.name), None) for a in node.names if inside(a.name)]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here[: len(here) - node.level + 1]
                    source = ".".join([*base, node.module] if node.module else base)
                else:
                    source = node.module or ""
                if inside(source):
                    for a in node.names:
                        sub = f"{source}.{a.name}"
                        targets.append((sub, None) if sub in modules else (known(source), a.name))
            for target, name in targets:
                if target is not None and target != module:
                    graph[module].setdefault(target, []).append((node.lineno, name))
    return graph


def _circles(graph: dict[str, dict[str, Any]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    circles.append(sorted(component))
    return sorted(circles)


def _describe(graph: dict[str, dict[str, list[tuple[int, str | None]]]], circle: list[str]) -> str:
    lines = [f"import circle of {len(circle)} modules: {', '.join(circle)}"]
    for a in circle:
        for b in circle:
            if b in graph[a]:
                names = sorted({n or "(module)" for _, n in graph[a][b]})
                lines.append(f"  {a} -> {b} ({', '.join(names)}; line {graph[a][b][0][0]})")
    return "\n".join(lines)


def _private_imports(graph: dict[str, dict[str, list[tuple[int, str | None]]]]) -> list[str]:
    """Every ``from X import _name`` of one module from another (names with one leading underscore)."""
    return sorted(f"{module} line {line}: from {target} import {name}"
                  for module, targets in graph.items() for target, uses in targets.items()
                  for line, name in uses if name and name.startswith("_") and not name.startswith("__"))


# Imports by name at run time, which no import graph sees, each with its reason.
DYNAMIC_IMPORTS = {
    "lcron/losses/registry.py": "discover(): imports every file of a methods folder so its @register runs (plug-ins)",
}


def _dynamic_imports(path: Path) -> list[str]:
    """Calls of importlib.import_module, importlib.__import__ or __import__ in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Call):
            func = ast.unparse(node.func)
            if func.split(".")[-1] in ("import_module", "__import__"):
                found.append(f"{path.name}:{node.lineno} {func}")
    return found


def test_the_library_has_no_import_circles():
    graph = _import_graph(LIBRARY, "lcron")
    assert {"lcron.benchmarks.suite", "lcron.benchmarks.base", "lcron.cli", "lcron.data.recflow"} <= set(graph)
    assert "lcron.benchmarks.base" in graph["lcron.benchmarks.suite"]  # function-level and absolute imports are seen
    circles = _circles(graph)
    assert not circles, "\n".join(_describe(graph, c) for c in circles)


def test_no_module_imports_the_private_names_of_another():
    assert _private_imports(_import_graph(LIBRARY, "lcron")) == []


def test_every_import_in_the_library_is_a_statement():
    """Modules named in strings (importlib) are invisible to the graph above: only the listed ones."""
    found = [f"{p.relative_to(ROOT).as_posix()}: {hit}" for p in sorted(LIBRARY.rglob("*.py"))
             if p.relative_to(ROOT).as_posix() not in DYNAMIC_IMPORTS for hit in _dynamic_imports(p)]
    assert found == []


# ------------------------------------------------------------------ the layers
# The library's layers, bottom first (docs/architecture.md draws them). A module imports
# modules of its own layer or of a lower one, never of a higher one: what is low can be read,
# tested and reused without what stands on it. Inside a layer the circle check keeps an
# order. An entry is a module or a package (the package and every module under it); the
# root package ``lcron`` (its __init__: version, logger, thread pools) is an entry of its
# own. Every module is in exactly one layer, so a new module must be placed here.
LAYERS: list[tuple[str, set[str]]] = [
    ("foundation: errors, defaults, hashing, atomic files, output markers and protocol, step configurations, logging, progress, "
     "memory and CPU quota, tables, plots, provenance - nothing about cascades",
     {"lcron", "lcron.errors", "lcron.defaults", "lcron.hashing", "lcron.atomic", "lcron.jsonfile",
      "lcron.safe_pickle", "lcron.outputs", "lcron.step_output", "lcron.step_config", "lcron.logs", "lcron.progress", "lcron.memtrim", "lcron.cpu_quota",
      "lcron.render", "lcron.plots", "lcron.provenance"}),
    ("definitions: settings as data, metrics, losses, embedding optimizers, devices, the reference policy",
     {"lcron.settings", "lcron.metrics", "lcron.losses", "lcron.optim", "lcron.devices", "lcron.reference_policy"}),
    ("data: the RecFlow layout, shards, the synthetic generator, ingest, remote folders, batches",
     {"lcron.data", "lcron.ingest", "lcron.remote", "lcron.batches"}),
    ("models", {"lcron.models"}),
    ("the steps' parts: the training step, the run-folder reader, the evaluation's parts and result readers",
     {"lcron.train_step", "lcron.run_folder", "lcron.evaluation"}),
    ("the steps: train, evaluate, serving evaluation and export, report, compare",
     {"lcron.train", "lcron.evaluate", "lcron.serving", "lcron.report", "lcron.compare"}),
    ("tools that run the steps: the reference tools, the benchmark harness", {"lcron.reference", "lcron.benchmarks"}),
    ("the command line", {"lcron.cli", "lcron.__main__"}),
    ("above the command line: the benchmark child that runs it", {"lcron.measured_command"}),
]


def _layer_problems(graph: dict[str, dict[str, list[tuple[int, str | None]]]],
                    layers: list[tuple[str, set[str]]], package: str) -> list[str]:
    """Every import from a lower layer to a higher one, every module in no layer or in more
    than one, and every layer entry that names no module."""
    def layers_of(module: str) -> list[int]:
        return [i for i, (_, entries) in enumerate(layers) for entry in sorted(entries)
                if module == entry or (entry != package and module.startswith(entry + "."))]

    problems = [f"layer entry {entry} names no module" for _, entries in layers for entry in sorted(entries)
                if not any(m == entry or m.startswith(entry + ".") for m in graph)]
    where: dict[str, int] = {}
    for module in sorted(graph):
        found = layers_of(module)
        if len(found) == 1:
            where[module] = found[0]
        else:
            problems.append(f"{module} is in {len(found)} layers {[i + 1 for i in found]}; it must be in one")
    for module, targets in sorted(graph.items()):
        for target, uses in sorted(targets.items()):
            if module in where and target in where and where[target] > where[module]:
                names = ", ".join(sorted({n or "(module)" for _, n in uses}))
                problems.append(f"{module} (layer {where[module] + 1}) imports {target} (layer {where[target] + 1}: "
                                f"{layers[where[target]][0].split(':')[0]}) at line {uses[0][0]} ({names})")
    return problems


def test_every_import_goes_to_the_same_or_a_lower_layer():
    problems = _layer_problems(_import_graph(LIBRARY, "lcron"), LAYERS, "lcron")
    assert not problems, "\n".join(problems)


def _diagram_layers() -> dict[int, set[str]]:
    """Layer number -> the `file.py` and `folder/` names on its rows of the diagram under
    "### Layers" in docs/architecture.md (a row starts with its number; the rows under it
    that start with spaces continue it)."""
    text = (ROOT / "docs" / "architecture.md").read_text().split("### Layers", 1)[1]
    diagram = text.split("```", 2)[1]
    rows: dict[int, set[str]] = {}
    current = None
    for line in diagram.splitlines():
        number = re.match(r"(\d+) ", line)
        if number:
            current = int(number.group(1))
        if current is not None:
            rows.setdefault(current, set()).update(re.findall(r"[\w/]+(?:\.py|/)", line))
    return rows


def test_the_architecture_diagram_draws_the_tested_layers():
    modules = _modules(LIBRARY, "lcron")
    rows = _diagram_layers()
    assert sorted(rows) == list(range(1, len(LAYERS) + 1))
    for number, (name, entries) in enumerate(LAYERS, start=1):
        expected = set()
        for entry in entries:
            rel = "/".join(entry.split(".")[1:])
            expected.add("lcron/__init__.py" if entry == "lcron" else rel + "/" if modules[entry][1] else rel + ".py")
        assert expected <= rows[number], f"layer {number} ({name}) lacks {sorted(expected - rows[number])} in the diagram"


def test_the_layer_check_finds_upward_imports_and_unplaced_modules(tmp_path):
    """The layer check must be able to fail: a synthetic package whose bottom module imports
    a top one inside a function through a relative import, a module in no layer, one in two,
    and an entry that names nothing."""
    pkg = tmp_path / "lcron"
    files = {
        "__init__.py": "",
        "low.py": "X = 1\n",
        "mid.py": "from .low import X\nfrom lcron import peer\n",       # lower layer, same layer: fine
        "peer.py": "import lcron.low\n",
        "sub/__init__.py": "",
        "sub/deep.py": "from ..mid import X\n",                          # a package entry covers its modules
        "top.py": "from lcron.sub.deep import X\n",
    }
    for name, text in files.items():
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
        (pkg / name).write_text(text)
    layers = [("bottom", {"lcron", "lcron.low"}), ("middle", {"lcron.mid", "lcron.peer", "lcron.sub"}),
              ("top", {"lcron.top"})]
    assert _layer_problems(_import_graph(pkg, "lcron"), layers, "lcron") == []
    (pkg / "low.py").write_text("X = 1\n\ndef later():\n    from .top import X\n    return X\n")
    assert _layer_problems(_import_graph(pkg, "lcron"), layers, "lcron") == [
        "lcron.low (layer 1) imports lcron.top (layer 3: top) at line 4 (X)"]
    (pkg / "low.py").write_text("X = 1\n")
    (pkg / "extra.py").write_text("")
    misplaced = [*layers[:2], ("top", {"lcron.top", "lcron.sub.deep", "lcron.gone"})]
    assert _layer_problems(_import_graph(pkg, "lcron"), misplaced, "lcron") == [
        "layer entry lcron.gone names no module",
        "lcron.extra is in 0 layers []; it must be in one",
        "lcron.sub.deep is in 2 layers [2, 3]; it must be in one"]


def test_the_layer_checks_find_circles_and_private_imports(tmp_path):
    """The checks above must be able to fail: a synthetic package with a circle of three modules
    through a function-level relative import, a private import and a dynamic import."""
    pkg = tmp_path / "lcron"
    files = {
        "__init__.py": "from lcron.e import X as _X\n",                    # a package importing its module: no circle
        "a.py": "from lcron.b import B\n_hidden = 1\n",
        "b.py": "B = 2\n\ndef later():\n    from .sub import c\n    return c\n",  # relative, inside a function
        "sub/__init__.py": "",
        "sub/c.py": "from ..a import _hidden\nimport lcron.d as d\n",         # two levels up; a private name
        "d.py": "import os\nfrom lcron import e\n",                          # `from package import module`
        "e.py": "import importlib\nX = importlib.import_module('lcron.a')\n",
        "f.py": "from lcron.e import X\nfrom lcron.sub.c import __doc__ as doc\n",
    }
    for name, text in files.items():
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
        (pkg / name).write_text(text)
    graph = _import_graph(pkg, "lcron")
    assert {m: sorted(t) for m, t in graph.items()} == {
        "lcron": ["lcron.e"], "lcron.a": ["lcron.b"], "lcron.b": ["lcron.sub.c"], "lcron.sub": [],
        "lcron.sub.c": ["lcron.a", "lcron.d"], "lcron.d": ["lcron.e"], "lcron.e": [],
        "lcron.f": ["lcron.e", "lcron.sub.c"]}
    assert _circles(graph) == [["lcron.a", "lcron.b", "lcron.sub.c"]]
    text = _describe(graph, _circles(graph)[0])
    assert "lcron.b -> lcron.sub.c ((module); line 4)" in text and "lcron.sub.c -> lcron.a (_hidden; line 1)" in text
    assert _private_imports(graph) == ["lcron.sub.c line 1: from lcron.a import _hidden"]
    assert _dynamic_imports(pkg / "e.py") == ["e.py:2 importlib.import_module"]
    # Without the function-level import the circle is gone.
    (pkg / "b.py").write_text("B = 2\n")
    assert _circles(_import_graph(pkg, "lcron")) == []
    # Two modules importing each other are a circle too.
    (pkg / "e.py").write_text("from lcron.d import os\n")
    assert _circles(_import_graph(pkg, "lcron")) == [["lcron.d", "lcron.e"]]
