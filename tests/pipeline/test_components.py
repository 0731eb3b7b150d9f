"""Each component's function called directly (``.python_func``) with stand-in artifacts.

The chain mirrors the pipeline on tiny data: fingerprint -> ingest -> preprocess -> train
(1 step per day) -> evaluate -> report, each step reading the previous step's artifact.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pytest

import components
from lcron.errors import DataError
from lcron.ingest import read_manifest, source_fingerprint

from .conftest import TINY_SYNTHETIC, FakeArtifact

SYN = {"synthetic_days": TINY_SYNTHETIC["num_days"], "synthetic_start_date": "2024-01-13",
       "synthetic_requests_per_day": TINY_SYNTHETIC["requests_per_day"], "synthetic_users": TINY_SYNTHETIC["users"],
       "synthetic_items": TINY_SYNTHETIC["items"], "synthetic_seed": TINY_SYNTHETIC["seed"]}


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """Run every component once on the tiny synthetic data; the artifacts by step name."""
    base = tmp_path_factory.mktemp("components")
    arts: dict = {}
    fp = components.fingerprint.python_func(source="synthetic", days="", **SYN)
    arts["fingerprint"] = fp
    arts["raw"] = FakeArtifact(base / "raw")
    components.ingest.python_func(source="synthetic", days="", fingerprint=fp, raw_data=arts["raw"], **SYN)
    arts["shards"] = FakeArtifact(base / "shards")
    components.preprocess.python_func(raw_data=arts["raw"], stages=2, setting={}, tz_offset_hours=8,
                                      max_missing_fraction=0.01, shards=arts["shards"])
    arts["model"], arts["run_record"] = FakeArtifact(base / "model"), FakeArtifact(base / "run_record")
    components.train.python_func(shards=arts["shards"], method="lcron", loss_options={}, seeds=[1.0],
                                 batch_size=16, lr=0.01, dim=8, days="", max_steps_per_day=2, device="cpu",
                                 compile=False, embedding_optimizer="lazy", model=arts["model"],
                                 run_record=arts["run_record"])
    arts["evaluation"], arts["metrics"] = FakeArtifact(base / "eval"), FakeArtifact(base / "metrics")
    components.evaluate.python_func(model=arts["model"], shards=arts["shards"], days="", streaming=False,
                                    batch_size=64, device="cpu", compile=False, tie_seed=0,
                                    evaluation=arts["evaluation"], metrics=arts["metrics"])
    arts["report_files"], arts["html"], arts["markdown"] = (FakeArtifact(base / "report"), FakeArtifact(base / "r.html"),
                                                            FakeArtifact(base / "r.md"))
    components.report.python_func(run_record=arts["run_record"], evaluation=arts["evaluation"],
                                  report_files=arts["report_files"], html=arts["html"], markdown=arts["markdown"])
    return arts


def test_fingerprint_component_is_the_library_fingerprint(chain):
    assert chain["fingerprint"] == source_fingerprint("synthetic", synthetic=TINY_SYNTHETIC)
    other = components.fingerprint.python_func(source="synthetic", days="2024-01-14:", **SYN)
    assert other != chain["fingerprint"]


def test_ingest_component_stages_and_records(chain):
    raw = chain["raw"]
    assert raw.metadata == {"source": "synthetic", "days": ["2024-01-13", "2024-01-14", "2024-01-15"],
                            "fingerprint": chain["fingerprint"], "mode": "copy"}  # synthetic data is copied
    assert read_manifest(raw.path)["fingerprint"] == chain["fingerprint"]


def test_ingest_component_on_a_local_folder(tiny_recflow, tmp_path):
    src = Path(shutil.copytree(tiny_recflow, tmp_path / "src"))
    fp = components.fingerprint.python_func(source=str(src), days="2024-01-15", **SYN)
    raw = FakeArtifact(tmp_path / "raw")
    components.ingest.python_func(source=str(src), days="2024-01-15", fingerprint=fp, raw_data=raw, **SYN)
    assert raw.metadata["days"] == ["2024-01-15"] and raw.metadata["fingerprint"] == fp
    assert raw.metadata["source"] == str(src.resolve()) and raw.metadata["mode"] == "reference"
    assert [p.name for p in Path(raw.path).iterdir()] == ["ingest.json"]  # nothing copied
    shards = FakeArtifact(tmp_path / "shards")  # preprocess follows the reference to the source
    components.preprocess.python_func(raw_data=raw, stages=2, setting={}, tz_offset_hours=8,
                                      max_missing_fraction=0.01, shards=shards)
    assert shards.metadata["days"] == ["2024-01-15"]
    copied = FakeArtifact(tmp_path / "copied")
    components.ingest.python_func(source=str(src), days="2024-01-15", fingerprint=fp, raw_data=copied, copy=True,
                                  **SYN)
    assert copied.metadata["mode"] == "copy" and copied.metadata["fingerprint"] == fp
    assert sorted(p.name for p in (Path(copied.path) / "all_stage").iterdir()) == ["2024-01-15.feather"]
    # data that changed after the fingerprint step is refused, never staged under the old key
    day = src / "request_id_dict" / "2024-01-15.pkl"
    day.write_bytes(day.read_bytes() + b"\0")
    with pytest.raises(DataError, match="changed after it was fingerprinted"):
        components.ingest.python_func(source=str(src), days="2024-01-15", fingerprint=fp,
                                      raw_data=FakeArtifact(tmp_path / "raw2"), **SYN)


def test_preprocess_component(chain):
    meta = chain["shards"].metadata
    assert meta["setting"] == "two_stage" and meta["stages"] == 2
    assert meta["days"] == ["2024-01-13", "2024-01-14", "2024-01-15"] and len(meta["fingerprint"]) == 16
    dataset = json.loads((Path(chain["shards"].path) / "dataset.json").read_text())
    assert dataset["setting"]["quotas"] == [30, 20]


def test_preprocess_component_setting_overrides(chain, tmp_path):
    out = FakeArtifact(tmp_path / "shards")
    components.preprocess.python_func(raw_data=chain["raw"], stages=3, setting={"quotas": [40, 25, 15]},
                                      tz_offset_hours=8, max_missing_fraction=0.01, shards=out)
    dataset = json.loads((Path(out.path) / "dataset.json").read_text())
    assert out.metadata["stages"] == 3 and dataset["setting"]["quotas"] == [40, 25, 15]
    assert dataset["setting"]["groups"][0] == "rerank_pos"


def test_preprocess_component_setting_numbers_as_floats(chain, tmp_path):
    """Under kfp.local a dict parameter arrives through a protobuf Struct: 25 becomes 25.0."""
    out = FakeArtifact(tmp_path / "shards")
    components.preprocess.python_func(raw_data=chain["raw"], stages=2, setting={"quotas": [25.0, 10.0]},
                                      tz_offset_hours=8, max_missing_fraction=0.01, shards=out)
    dataset = json.loads((Path(out.path) / "dataset.json").read_text())
    assert dataset["setting"]["quotas"] == [25, 10]


def test_train_component(chain):
    model = Path(chain["model"].path)
    run = json.loads((model / "run.json").read_text())
    assert run["method"] == "lcron" and run["train"]["batch_size"] == 16
    assert run["days"] == ["2024-01-13", "2024-01-14"]  # the last day is the test day
    assert (model / "seed-1" / "model.pt").is_file()
    meta = chain["model"].metadata
    assert meta["framework"] == "pytorch" and meta["method"] == "lcron" and meta["seeds"] == [1]
    assert meta["steps"] == {"1": 4}  # 2 steps per day x 2 training days
    assert math.isfinite(meta["final_loss"]["1"])


def test_evaluate_component_logs_metric_means(chain):
    metrics = chain["metrics"].metadata
    doc = json.loads((Path(chain["evaluation"].path) / "metrics.json").read_text())
    assert 0.0 <= metrics["joint_recall"] <= 1.0
    assert metrics["joint_recall"] == pytest.approx(doc["metrics"]["joint_recall"]["mean"])
    for stage in ("s1_dssm", "s2_din"):
        assert 0.0 <= metrics[f"recall_at_10_m/{stage}"] <= 1.0
        assert 0.0 <= metrics[f"ndcg_at_10/{stage}"] <= 1.0
    # every metric has its mean, std and seed count; one seed has no std: explicit, not dropped
    assert len(metrics) == 3 * len(doc["metrics"])
    assert metrics["joint_recall/n"] == 1.0 and metrics["joint_recall/std"] == -1.0
    assert "joint_recall/std" in chain["evaluation"].metadata["undefined_metrics"]
    assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values())
    assert chain["evaluation"].metadata["days"] == ["2024-01-15"]
    assert chain["evaluation"].metadata["seeds"] == [1]


def test_report_component(chain):
    html = Path(chain["html"].path).read_text()
    md = Path(chain["markdown"].path).read_text()
    assert html.lstrip().lower().startswith("<!doctype html") or "<html" in html[:200].lower()
    assert "lcron" in md and "joint" in md.lower()
    assert (Path(chain["report_files"].path) / "report.json").is_file()
    # the Markdown artifact is one file: every image it shows is inside it, none is a link to a file
    images = re.findall(r"!\[[^\]]*\]\(([^)]*)\)", md)
    assert images and all(src.startswith("data:image/png;base64,") for src in images)


def test_train_component_writes_a_run_record_without_weights(chain):
    """The report step's input: run.json and the seed's summary and train log, no model file."""
    record, model = Path(chain["run_record"].path), Path(chain["model"].path)
    files = sorted(str(p.relative_to(record)) for p in record.rglob("*") if p.is_file())
    assert files == ["run.json", "seed-1/summary.json", "seed-1/train_log.jsonl"]
    for name in files:
        assert (record / name).read_bytes() == (model / name).read_bytes(), name
    assert (model / "seed-1" / "model.pt").is_file()  # the weights stay in the model artifact
    assert chain["run_record"].metadata == {"method": "lcron", "seeds": [1], "files": 3}
    # the report from the record is the report of the run: same tables as from the run folder
    from lcron.report import build_report

    full = build_report(model, chain["evaluation"].path, record.parent / "report-from-model", overwrite=True)
    tables = json.loads(full["json"].read_text())["tables"]
    assert json.loads((Path(chain["report_files"].path) / "report.json").read_text())["tables"] == tables
    assert {"training", "loss_weights", "metrics"} <= set(tables)


def test_reference_mode_through_the_components(chain, tmp_path):
    """reference_quirks reaches preprocess, train and evaluate; each records it."""
    shards = FakeArtifact(tmp_path / "shards")
    components.preprocess.python_func(raw_data=chain["raw"], stages=2, setting={}, tz_offset_hours=8,
                                      max_missing_fraction=0.01, shards=shards, reference_quirks=True)
    assert shards.metadata["reference_quirks"] is True
    model = FakeArtifact(tmp_path / "model")
    components.train.python_func(shards=shards, method="bce", loss_options={}, seeds=[1], batch_size=16, lr=0.01,
                                 dim=8, days="", max_steps_per_day=1, device="cpu", compile=False, model=model,
                                 run_record=FakeArtifact(tmp_path / "run_record"), reference_quirks=True)
    assert model.metadata["reference_quirks"] is True
    evaluation, metrics = FakeArtifact(tmp_path / "eval"), FakeArtifact(tmp_path / "metrics")
    components.evaluate.python_func(model=model, shards=shards, days="", streaming=False, batch_size=64,
                                    device="cpu", compile=False, tie_seed=0, evaluation=evaluation, metrics=metrics,
                                    reference_quirks=True)
    assert evaluation.metadata["reference_quirks"] is True
    assert json.loads((Path(evaluation.path) / "metrics.json").read_text())["reference_quirks"] is True
