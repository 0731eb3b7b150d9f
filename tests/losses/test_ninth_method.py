"""A ninth method added the documented way - one file with a ``@register`` class in the
losses package - runs through everything the suite asks of a method: it is listed
(``METHODS``, ``lcron methods`` and ``lcron train --help`` with its options and checks),
passes the loss-level checks, trains one step per day on the tiny shards with ``lcron
train`` in both settings and evaluates with ``lcron evaluate``.

The file is the example of docs/methods.md ("Adding a method"), so the documented example is
tested too. It is found the way a file in ``lcron/losses/`` is: its folder joins the
package's search path and :func:`~lcron.losses.registry.discover` - the call
``lcron/losses/__init__.py`` makes for its own folder - imports it as
``lcron.losses.<module>``. (Writing it into the source tree itself would leave a stray
method behind for any run that overlaps or is interrupted.) Afterwards the method is
unregistered and the module forgotten, so other tests see the registry as it was.
"""

from __future__ import annotations

import importlib
import json
import re
import sys
import textwrap
from pathlib import Path

import pytest

import lcron.losses as losses
from lcron import cli
from lcron.errors import ConfigError
from lcron.losses import build_loss, method_options, unregister
from lcron.losses.registry import LISTING_HEADING, describe_methods, discover
from lcron.settings import THREE_STAGE, TWO_STAGE, Setting

from . import generic
from .spec import EIGHT

DOC = Path(__file__).resolve().parents[2] / "docs" / "methods.md"


def _documented_example() -> str:
    """The first python block of the "Adding a method" section of docs/methods.md."""
    text = DOC.read_text(encoding="utf-8")
    section = text.split("\n## Adding a method", 1)
    assert len(section) == 2, "docs/methods.md has no '## Adding a method' section"
    block = re.search(r"```python\n(.*?)```", section[1], re.DOTALL)
    assert block, "the 'Adding a method' section has no python example"
    return block.group(1)


MODULE = "ninth_doc_method"


@pytest.fixture
def ninth(tmp_path, monkeypatch):
    """The documented example, written as ``ninth_doc_method.py`` into a folder of the losses
    package's search path and imported by the package's own discovery call; yields its
    method name, then unregisters it and forgets the module."""
    before = losses.METHODS
    source = _documented_example()
    assert len(re.findall(r'@register\("\w+"\)', source)) == 1, "the example should register one method"
    # Its own name, so a real method added under the example's name does not collide.
    source = re.sub(r'@register\("\w+"\)', '@register("ninth_doc_example")', source)
    folder = tmp_path / "more_losses"
    folder.mkdir()
    (folder / f"{MODULE}.py").write_text(source, encoding="utf-8")
    monkeypatch.setattr(losses, "__path__", [*losses.__path__, str(folder)])
    importlib.invalidate_caches()
    added: tuple[str, ...] = ()
    try:
        found = discover(losses.__path__, losses.__name__)  # what lcron/losses/__init__.py runs
        assert MODULE in found and {"bce", "icc", "lcron"} <= set(found)
        assert sys.modules[f"lcron.losses.{MODULE}"].__file__ == str(folder / f"{MODULE}.py")
        added = tuple(m for m in losses.METHODS if m not in before)
        assert added == ("ninth_doc_example",), added
        assert losses.METHODS == before + added  # listed after the others, the eight untouched
        assert losses.get_method(added[0]).__module__ == f"lcron.losses.{MODULE}"
        yield added[0]
    finally:
        for name in added:
            unregister(name)
        sys.modules.pop(f"lcron.losses.{MODULE}", None)
        if hasattr(losses, MODULE):  # an import binds the submodule on its package
            delattr(losses, MODULE)
        assert losses.METHODS == before


def _lcron(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_the_ninth_is_listed_with_its_options(ninth, capsys, monkeypatch):
    assert set(EIGHT) <= set(losses.METHODS) and len(losses.METHODS) >= 9
    with pytest.raises(ConfigError) as info:
        build_loss("no_such_method", stages=2)
    assert str(info.value).endswith(f", {ninth}")
    monkeypatch.setenv("COLUMNS", "200")
    doc_line = " ".join(losses.get_method(ninth).__doc__.split())
    option_lines = [f"      {spec.help_text()}" for spec in method_options(ninth).values()]
    # The example declares label_temp > 0: listed, and checked before the loss is built.
    assert option_lines == ["      label_temp=1.0: a number; > 0"]

    code, out, _ = _lcron(capsys, "methods")
    assert code == 0
    assert out == textwrap.fill(LISTING_HEADING, 198) + "\n" + describe_methods(width=198) + "\n"
    assert out.splitlines()[-2:] == [f"  {ninth} - {doc_line}", *option_lines]  # last, after the eight
    code, out, _ = _lcron(capsys, "methods", "--json")
    assert code == 0 and json.loads(out)[-1] == {
        "name": ninth, "summary": doc_line, "class": f"lcron.losses.{MODULE}.{losses.get_method(ninth).__qualname__}",
        "options": [{"name": "label_temp", "default": "1.0", "takes": "a number", "checks": ["> 0"]}]}

    code, out, _ = _lcron(capsys, "train", "--help")
    assert code == 0
    assert f"training method: {', '.join(losses.METHODS)}" in out
    assert f"  {ninth} - {doc_line}" in out.splitlines()
    assert option_lines[0] in out.splitlines()
    with pytest.raises(ConfigError, match="label_temp=0.0 must be positive"):
        build_loss(ninth, stages=2, label_temp="0")


def test_the_documented_listing_is_what_lcron_methods_prints(ninth):
    """docs/methods.md shows `lcron methods lcron listnet` at 79 columns: the heading and LCRON
    exactly, the example's entry up to its name (registered here under another)."""
    text = DOC.read_text(encoding="utf-8").split("\n## Adding a method", 1)[1]
    block = re.search(r"```\n\$ lcron methods lcron listnet\n(.*?)```", text, re.DOTALL)
    assert block, "docs/methods.md: no listing of `lcron methods lcron listnet`"
    shown = block.group(1).splitlines()
    expected = (textwrap.fill(LISTING_HEADING, 79) + "\n" + describe_methods(width=79, only=["lcron"])).splitlines()
    assert shown[:len(expected)] == expected
    ninth_entry = describe_methods(width=79, only=[ninth]).replace(ninth, "listnet", 1)
    assert " ".join(shown[len(expected):]).split() == ninth_entry.split()


@pytest.mark.parametrize("setting", [TWO_STAGE, THREE_STAGE], ids=["two_stage", "three_stage"])
def test_the_ninth_passes_the_loss_level_checks(ninth, setting):
    for check in generic.ALL_CHECKS:
        check(ninth, setting)
    generic.check_runs_with_padding(ninth, setting, {"label_temp": "2.5"})
    for tiny in ("tiny2", "tiny3"):
        generic.check_dtypes(ninth, tiny)
    mine = Setting.from_dict({"base": setting.name, "name": "other_quotas",
                              "quotas": [q - 5 for q in setting.quotas]})
    generic.check_runs_with_padding(ninth, mine, seed=3)


@pytest.mark.parametrize("stages", [2, 3])
def test_the_ninth_trains_and_evaluates(ninth, stages, tiny_shards_2, tiny_shards_3, tmp_path, capsys):
    """As a user runs it: ``lcron train --method <ninth> --loss-option ...``, then ``lcron evaluate``."""
    shards = {2: tiny_shards_2, 3: tiny_shards_3}[stages]
    run = tmp_path / "run"
    code, _, err = _lcron(capsys, "train", "--shards", shards.root, "--out", run, "--stages", stages,
                          "--method", ninth, "--loss-option", "label_temp=2", "--seeds", "1", "--batch-size", 16,
                          "--max-steps-per-day", 1, "--device", "cpu", "--no-compile", "-q")
    assert code == 0, err
    doc = json.loads((run / "run.json").read_text())
    assert doc["method"] == ninth and doc["loss_options"] == {"label_temp": 2.0}
    summary = json.loads((run / "seed-1" / "summary.json").read_text())
    assert summary["steps"] == len(shards.days) - 1  # one step on every training day
    log = [json.loads(line) for line in (run / "seed-1" / "train_log.jsonl").read_text().splitlines()]
    assert log and all(f"single/{s}" in row for row in log for s in shards.setting.stage_names)
    code, _, err = _lcron(capsys, "evaluate", "--model", run, "--device", "cpu", "--no-compile", "-q")
    assert code == 0, err
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert metrics["method"] == ninth
