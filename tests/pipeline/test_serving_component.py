"""The serving component called directly (``.python_func``) on a tiny trained run, and the
report component (on the run's record) with and without its artifact.

The run: the tiny synthetic data of tests/pipeline/conftest.py (3 days x 80 requests, 300
items), two-stage, BCE, one seed, 2 steps per day; serving evaluated on the last day.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

import components

from .conftest import FakeArtifact


@pytest.fixture(scope="module")
def run(tiny_recflow, tmp_path_factory):
    """A trained and evaluated two-stage run: (model artifact, shards artifact, evaluation artifact)."""
    from lcron.data.shards import preprocess
    from lcron.evaluate import evaluate
    from lcron.train import TrainConfig, train

    base = tmp_path_factory.mktemp("serving_component")
    shards = preprocess(tiny_recflow, base / "shards", 2, progress=False)
    train(shards, base / "model", TrainConfig(method="bce", batch_size=16, seeds=(1,), compile=False),
          max_steps_per_day=2, progress=False)
    evaluate(base / "model", out=base / "eval", compile=False, progress=False, batch_size=64)
    return FakeArtifact(base / "model"), FakeArtifact(shards.root), FakeArtifact(base / "eval")


def _serve(run, out: Path, *, enabled: bool = True, k1=(5.0, 20.0, 100.0), index: str = "flat",
           index_options: dict | None = None):
    model, shards, _ = run
    serving, metrics = FakeArtifact(out / "serving"), FakeArtifact(out / "metrics")
    # k1 as floats: KFP hands list parameters to a component as JSON numbers
    components.serving.python_func(model=model, shards=shards, enabled=enabled, k1=list(k1), index=index,
                                   index_options=index_options or {}, day="", batch_size=32, device="cpu",
                                   compile=False, tie_seed=0, serving=serving, metrics=metrics)
    return serving, metrics


@pytest.fixture(scope="module")
def served(run, tmp_path_factory):
    return _serve(run, tmp_path_factory.mktemp("served"))


def test_serving_component_writes_serving_json_and_logs_the_means(served):
    serving, metrics = served
    doc = json.loads((Path(serving.path) / "serving.json").read_text())
    assert doc["kind"] == "lcron-serving-evaluation" and doc["k1"] == [5, 20, 100] and doc["seeds"] == [1]
    assert doc["day"] == "2024-01-15" and doc["index"]["kind"] == "flat"
    logged = metrics.metadata
    assert set(logged) == {"serving/gt_in_corpus", "serving/gt_cold"} | {
        f"serving/{name}@K1={k}" for k in (5, 20, 100) for name in ("recall_retrieval", "joint_recall")}
    assert logged["serving/gt_in_corpus"] == doc["results"]["gt_in_corpus"]["mean"]
    for k in (5, 20, 100):
        res = doc["results"][str(k)]
        assert logged[f"serving/joint_recall@K1={k}"] == res["joint_recall"]["mean"]
        assert logged[f"serving/recall_retrieval@K1={k}"] == res["recall_retrieval"]["mean"]
        assert logged[f"serving/joint_recall@K1={k}"] <= logged[f"serving/recall_retrieval@K1={k}"] + 1e-12
    # K1 = 5 is below the pre-rank quota (20): the later stage keeps everything retrieved
    assert logged["serving/joint_recall@K1=5"] == logged["serving/recall_retrieval@K1=5"]
    assert all(isinstance(v, float) and 0.0 <= v <= 1.0 and math.isfinite(v) for v in logged.values())
    assert serving.metadata == {"skipped": False, "day": "2024-01-15", "k1": [5, 20, 100], "index": "flat",
                                "seeds": [1]}


def test_serving_component_approximate_index_logs_index_recall(run, tmp_path):
    # index options arrive as floats from a KFP dict parameter; the component makes them integers
    serving, metrics = _serve(run, tmp_path, k1=(10.0,), index="ivf", index_options={"nlist": 2.0, "nprobe": 2.0})
    doc = json.loads((Path(serving.path) / "serving.json").read_text())
    assert doc["index"]["nlist"] == 2 and doc["index"]["nprobe"] == 2
    assert metrics.metadata["serving/index_recall@K1=10"] == pytest.approx(1.0)  # every cell probed: exact
    assert metrics.metadata["serving/index_recall@K1=10"] == doc["results"]["10"]["index_recall"]["mean"]


def test_serving_component_switched_off_writes_only_a_marker(run, tmp_path):
    serving, metrics = _serve(run, tmp_path, enabled=False)
    assert sorted(p.name for p in Path(serving.path).iterdir()) == ["serving_skipped.json"]
    assert json.loads((Path(serving.path) / "serving_skipped.json").read_text())["kind"] == "lcron-serving-skipped"
    assert metrics.metadata == {} and serving.metadata == {"skipped": True}


def _report(run, out: Path, serving=None) -> tuple[str, dict]:
    """The report component on the run's record (what the train step hands it, no weights)."""
    from lcron.report import copy_run_record

    model, _, evaluation = run
    record = FakeArtifact(out / "run_record")
    copy_run_record(model.path, record.path)
    files, html, md = FakeArtifact(out / "files"), FakeArtifact(out / "r.html"), FakeArtifact(out / "r.md")
    kwargs = {} if serving is None else {"serving": serving}
    components.report.python_func(run_record=record, evaluation=evaluation, report_files=files, html=html,
                                  markdown=md, **kwargs)
    return Path(md.path).read_text(), json.loads((Path(files.path) / "report.json").read_text())


def test_report_component_takes_the_serving_artifact(run, served, tmp_path):
    """With the artifact (a cluster package's serving branch, or the local package with
    serving on): a serving section. With the local package's marker, or with the input left
    unset (the cluster package's other branch): none."""
    md, doc = _report(run, tmp_path / "with", served[0])
    assert "## Serving-style evaluation" in md
    assert doc["serving"]["metrics"] == served[1].metadata
    assert [r[0] for r in doc["tables"]["serving"]["rows"]] == [5, 20, 100]

    skipped, _ = _serve(run, tmp_path / "off", enabled=False)
    for name, art in (("skipped", skipped), ("none", None)):
        md, doc = _report(run, tmp_path / name, art)
        assert "Serving-style" not in md and "serving" not in doc and "serving" not in doc["tables"], name
