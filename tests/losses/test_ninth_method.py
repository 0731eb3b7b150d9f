"""A ninth method added the documented way - one file with a ``@register`` class - runs through
everything the suite asks of a method: it is listed (``METHODS``, ``lcron train --help`` with
its options and checks), passes the loss-level checks, trains one step per day on the tiny
shards in both settings and evaluates. The file is the example of docs/methods.md ("Adding a
method"), so the documented example is tested too. The method is unregistered afterwards so
other tests see the registry as it was.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

import lcron.losses as losses
from lcron import cli
from lcron.errors import ConfigError
from lcron.evaluate import evaluate
from lcron.losses import build_loss, method_options, unregister
from lcron.settings import THREE_STAGE, TWO_STAGE
from lcron.train import TrainConfig, train

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


@pytest.fixture
def ninth(tmp_path):
    """The documented example, written to a temporary file and imported (its decorator
    registers it); yields its method name, then unregisters it."""
    before = losses.METHODS
    source = _documented_example()
    assert len(re.findall(r'@register\("\w+"\)', source)) == 1, "the example should register one method"
    # Its own name, so a real method added under the example's name does not collide.
    source = re.sub(r'@register\("\w+"\)', '@register("ninth_doc_example")', source)
    path = tmp_path / "ninth_doc_method.py"
    path.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("ninth_doc_method", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["ninth_doc_method"] = module
    added: tuple[str, ...] = ()
    try:
        spec.loader.exec_module(module)
        added = tuple(m for m in losses.METHODS if m not in before)
        assert added == ("ninth_doc_example",), added
        assert losses.METHODS == before + added  # listed after the others, the eight untouched
        yield added[0]
    finally:
        for name in added:
            unregister(name)
        sys.modules.pop("ninth_doc_method", None)
        assert losses.METHODS == before


def test_the_ninth_is_listed_with_its_options(ninth, capsys, monkeypatch):
    assert set(EIGHT) <= set(losses.METHODS) and len(losses.METHODS) >= 9
    with pytest.raises(ConfigError) as info:
        build_loss("no_such_method", stages=2)
    assert str(info.value).endswith(f", {ninth}")
    monkeypatch.setenv("COLUMNS", "200")
    assert cli.main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    assert f"training method: {', '.join(losses.METHODS)}" in out
    doc_line = " ".join(losses.get_method(ninth).__doc__.split())
    assert f"  {ninth} - {doc_line}" in out.splitlines()
    for spec in method_options(ninth).values():
        assert f"      {spec.help_text()}" in out.splitlines()
    # The example declares label_temp > 0: listed, and checked before the loss is built.
    assert "      label_temp=1.0: a number; > 0" in out.splitlines()
    with pytest.raises(ConfigError, match="label_temp=0.0 must be positive"):
        build_loss(ninth, stages=2, label_temp="0")


@pytest.mark.parametrize("setting", [TWO_STAGE, THREE_STAGE], ids=["two_stage", "three_stage"])
def test_the_ninth_passes_the_loss_level_checks(ninth, setting):
    for check in generic.ALL_CHECKS:
        check(ninth, setting)
    generic.check_runs_with_padding(ninth, setting, {"label_temp": "2.5"})
    for tiny in ("tiny2", "tiny3"):
        generic.check_dtypes(ninth, tiny)


@pytest.mark.parametrize("stages", [2, 3])
def test_the_ninth_trains_and_evaluates(ninth, stages, tiny_shards_2, tiny_shards_3, tmp_path):
    shards = {2: tiny_shards_2, 3: tiny_shards_3}[stages]
    run = tmp_path / "run"
    cfg = TrainConfig(method=ninth, loss_options={"label_temp": "2"}, batch_size=16, seeds=(1,), compile=False)
    (res,) = train(shards, run, cfg, progress=False, max_steps_per_day=1)
    assert res.summary["steps"] == len(shards.days) - 1  # one step on every training day
    doc = json.loads((run / "run.json").read_text())
    assert doc["method"] == ninth and doc["loss_options"] == {"label_temp": 2.0}
    log = [json.loads(line) for line in (run / "seed-1" / "train_log.jsonl").read_text().splitlines()]
    assert log and all(f"single/{s}" in row for row in log for s in shards.setting.stage_names)
    metrics = evaluate(run, device="cpu", compile=False, progress=False)
    assert (run / "eval" / "metrics.json").is_file()
    assert json.loads((run / "eval" / "metrics.json").read_text())["method"] == ninth
    assert metrics["method"] == ninth
