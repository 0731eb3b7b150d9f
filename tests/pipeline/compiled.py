"""Reading a compiled pipeline package the way the KFP backend does, for the pipeline tests.

A cluster package nests the serving step and the report in condition groups
(``dsl.If``/``dsl.Else``: ``root -> condition-branches-1 -> condition-2 | condition-3``),
so a test that looks for a step among the root DAG's tasks, or for the producer of an
input, has to follow that nesting. These helpers do, and a test can then ask what actually
matters: under which conditions a task runs, and which task's output an input really is.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

#: The only parameter a condition of the cascade pipeline reads.
SERVING_EVAL = "serving_eval"


def documents(path: Path) -> tuple[dict, dict | None]:
    """(pipeline spec, kubernetes platform spec or None) of a compiled package."""
    docs = [d for d in yaml.safe_load_all(Path(path).read_text()) if d]
    platform = next((d["platforms"]["kubernetes"] for d in docs[1:] if "platforms" in d), None)
    return docs[0], platform


def step_of(name: str) -> str:
    """The pipeline step of a task or executor name: the compiler numbers a second task of
    the same component (``report-2``, ``exec-report-2``)."""
    return re.sub(r"-\d+$", "", name.removeprefix("exec-"))


_CHANNEL = re.compile(r"inputs\.parameter_values\['([^']+)'\]")


@dataclass(frozen=True)
class Condition:
    """A trigger condition around a task, and the pipeline parameters it reads."""

    text: str  # as compiled (CEL)
    reads: tuple[str, ...]  # the pipeline parameters behind its channels


@dataclass(frozen=True)
class Task:
    """A container task anywhere in the package."""

    name: str
    spec: dict  # the task's entry in its DAG
    dag: str  # the component whose DAG holds it ("root" for the top level)
    conditions: tuple[Condition, ...]  # of the groups around it (and its own), outermost first

    @property
    def step(self) -> str:
        return step_of(self.name)


def _component(spec: dict, name: str) -> dict:
    return spec["root"] if name == "root" else spec["components"][name]


def _parent(spec: dict, dag_name: str) -> tuple[str, dict]:
    """(the DAG that invokes ``dag_name``, the invoking task)."""
    for parent in ["root", *spec["components"]]:
        for task in _component(spec, parent).get("dag", {}).get("tasks", {}).values():
            if task["componentRef"]["name"] == dag_name:
                return parent, task
    raise AssertionError(f"no task invokes {dag_name}")


def parameter_source(spec: dict, dag: str, name: str) -> str:
    """The pipeline parameter that the input parameter ``name`` of DAG ``dag`` carries."""
    while dag != "root":
        dag, invoking = _parent(spec, dag)
        name = invoking["inputs"]["parameters"][name]["componentInputParameter"]
    return name


def _condition(spec: dict, dag: str, task: dict) -> Condition:
    """The trigger condition of ``task`` (in DAG ``dag``): its channels are inputs of that task."""
    text = task["triggerPolicy"]["condition"]
    reads = tuple(parameter_source(spec, dag, task["inputs"]["parameters"][ref]["componentInputParameter"])
                  for ref in _CHANNEL.findall(text))
    return Condition(text, reads)


def container_tasks(spec: dict) -> dict[str, Task]:
    """Every task that runs a container, at any depth, by task name (unique in a package)."""
    out: dict[str, Task] = {}

    def walk(dag_name: str, conditions: tuple[Condition, ...]) -> None:
        for name, task in _component(spec, dag_name)["dag"]["tasks"].items():
            ref = task["componentRef"]["name"]
            here = conditions + ((_condition(spec, dag_name, task),) if "triggerPolicy" in task else ())
            if "dag" in spec["components"][ref]:
                walk(ref, here)
            else:
                assert name not in out, f"task name {name} twice"
                out[name] = Task(name, task, dag_name, here)

    walk("root", ())
    return out


def artifact_source(spec: dict, task: Task, name: str) -> tuple[str, str]:
    """(producer task, output key) of the input artifact ``name`` of ``task``, followed out
    of the condition groups to the task that writes it."""
    dag, entry = task.dag, task.spec["inputs"]["artifacts"][name]
    while "componentInputArtifact" in entry:
        dag, invoking = _parent(spec, dag)
        entry = invoking["inputs"]["artifacts"][entry["componentInputArtifact"]]
    out = entry["taskOutputArtifact"]
    return out["producerTask"], out["outputArtifactKey"]


def runs(task: Task, serving_eval: bool) -> bool:
    """Whether ``task`` runs for a value of ``serving_eval``: every condition around it,
    evaluated as the backend would (the compiler writes CEL; these conditions may use only
    ``==``, ``!``, parentheses and boolean literals, and read only ``serving_eval``)."""
    for condition in task.conditions:
        assert set(condition.reads) == {SERVING_EVAL}, f"{condition.text!r} reads {condition.reads}"
        expr = _CHANNEL.sub(json.dumps(serving_eval), condition.text)
        expr = expr.replace("!", " not ").replace("true", "True").replace("false", "False")
        assert re.fullmatch(r"[\s()]*(not|True|False|==|[\s()])*", expr), f"unexpected {condition.text!r}"
        if not eval(expr, {"__builtins__": {}}, {}):  # noqa: S307 - checked: booleans, ==, not
            return False
    return True


def output_sources(spec: dict, name: str, dag: str = "root") -> set[tuple[str, str]]:
    """The (container task, output key) pairs behind the output artifact ``name`` of ``dag``
    (the pipeline's outputs by default): more than one where ``dsl.OneOf`` picks among branches."""
    component = _component(spec, dag)["dag"]
    found: set[tuple[str, str]] = set()
    for selector in component["outputs"]["artifacts"][name]["artifactSelectors"]:
        subtask, key = selector["producerSubtask"], selector["outputArtifactKey"]
        ref = component["tasks"][subtask]["componentRef"]["name"]
        found |= output_sources(spec, key, ref) if "dag" in spec["components"][ref] else {(subtask, key)}
    return found
