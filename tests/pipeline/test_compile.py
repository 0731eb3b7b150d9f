"""The compiled pipeline: both variants, their images, artifacts, accelerators, caching, defaults,
and the serving step switched by the ``serving_eval`` parameter."""

from __future__ import annotations

import os

import pytest
import yaml

from components.common import image_ref
from pipelines import compile as pcompile

STEPS = ("fingerprint", "ingest", "preprocess", "train", "evaluate", "serving", "report")
ACCELERATED = ("train", "evaluate", "serving")


def _load(path):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs[0]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    out = tmp_path_factory.mktemp("build")
    paths = pcompile.compile_all(out, registry="reg.example:5000", image="lcron", tag="abc123")
    return {variant: _load(path) for variant, path in paths.items()} | {"paths": paths}


def _container(spec, step):
    return spec["deploymentSpec"]["executors"][f"exec-{step}"]["container"]


def _artifact_type(spec, step, name, direction="outputDefinitions"):
    return spec["components"][f"comp-{step}"][direction]["artifacts"][name]["artifactType"]["schemaTitle"]


def test_both_variants_are_written(compiled):
    assert set(compiled["paths"]) == {"cpu", "gpu"}
    assert compiled["paths"]["cpu"].name == "cascade-cpu.yaml" and compiled["paths"]["gpu"].name == "cascade-gpu.yaml"
    assert compiled["cpu"]["pipelineInfo"]["name"] == "lcron-cascade"


@pytest.mark.parametrize("variant", ["cpu", "gpu"])
def test_components_images_and_no_runtime_install(compiled, variant):
    spec = compiled[variant]
    assert set(spec["components"]) == {f"comp-{s}" for s in STEPS}
    assert set(spec["root"]["dag"]["tasks"]) == set(STEPS)
    want = "reg.example:5000/lcron:abc123" + ("-gpu" if variant == "gpu" else "")
    for step in STEPS:
        c = _container(spec, step)
        assert c["image"] == want
        text = " ".join(c["command"] + c.get("args", []))
        assert "pip install" not in text  # install_kfp_package=False: kfp comes with the image
        assert "import lcron" in text or "from lcron" in text  # the body adapts the library


def test_artifact_types(compiled):
    spec = compiled["cpu"]
    assert _artifact_type(spec, "ingest", "raw_data") == "system.Dataset"
    assert _artifact_type(spec, "preprocess", "raw_data", "inputDefinitions") == "system.Dataset"
    assert _artifact_type(spec, "preprocess", "shards") == "system.Dataset"
    assert _artifact_type(spec, "train", "model") == "system.Model"
    assert _artifact_type(spec, "evaluate", "metrics") == "system.Metrics"
    assert _artifact_type(spec, "evaluate", "evaluation") == "system.Dataset"
    assert _artifact_type(spec, "report", "html") == "system.HTML"
    assert _artifact_type(spec, "report", "markdown") == "system.Markdown"
    assert _artifact_type(spec, "serving", "serving") == "system.Dataset"
    assert _artifact_type(spec, "serving", "metrics") == "system.Metrics"
    assert _artifact_type(spec, "report", "serving", "inputDefinitions") == "system.Dataset"
    outputs = spec["root"]["outputDefinitions"]["artifacts"]
    assert {k: v["artifactType"]["schemaTitle"] for k, v in outputs.items()} == {
        "metrics": "system.Metrics", "report": "system.HTML", "report_markdown": "system.Markdown",
        "report_files": "system.Dataset", "evaluation": "system.Dataset", "model": "system.Model",
        "serving": "system.Dataset", "serving_metrics": "system.Metrics"}
    assert spec["components"]["comp-fingerprint"]["outputDefinitions"]["parameters"]["Output"]["parameterType"] == \
        "STRING"


def test_accelerator_only_on_train_evaluate_and_serving_of_the_gpu_variant(compiled):
    for step in STEPS:
        assert "resources" not in _container(compiled["cpu"], step)
        res = _container(compiled["gpu"], step).get("resources", {})
        if step in ACCELERATED:
            assert res["accelerator"]["resourceType"] == "nvidia.com/gpu"
            assert str(res["accelerator"]["resourceCount"]) == "1"
        else:
            assert "accelerator" not in res


def test_accelerator_type_and_count_are_compile_time_settings(tmp_path):
    path = pcompile.compile_variant("gpu", tmp_path / "vertex.yaml", accelerator_type="NVIDIA_TESLA_T4",
                                    accelerator_count=2)
    acc = _container(_load(path), "train")["resources"]["accelerator"]
    assert acc["resourceType"] == "NVIDIA_TESLA_T4" and str(acc["resourceCount"]) == "2"
    with pytest.raises(ValueError, match="unknown variant"):
        pcompile.compile_variant("tpu", tmp_path / "x.yaml")


@pytest.mark.parametrize("variant", ["cpu", "gpu"])
def test_caching_off_only_for_the_fingerprint(compiled, variant):
    tasks = compiled[variant]["root"]["dag"]["tasks"]
    assert not tasks["fingerprint"].get("cachingOptions", {}).get("enableCache", False)
    for step in STEPS[1:]:
        assert tasks[step]["cachingOptions"]["enableCache"] is True


def test_the_fingerprint_feeds_ingest_and_ingest_feeds_preprocess(compiled):
    tasks = compiled["cpu"]["root"]["dag"]["tasks"]
    fp_in = tasks["ingest"]["inputs"]["parameters"]["fingerprint"]["taskOutputParameter"]
    assert fp_in == {"outputParameterKey": "Output", "producerTask": "fingerprint"}
    raw = tasks["preprocess"]["inputs"]["artifacts"]["raw_data"]["taskOutputArtifact"]
    assert raw == {"outputArtifactKey": "raw_data", "producerTask": "ingest"}
    shards = tasks["evaluate"]["inputs"]["artifacts"]["shards"]["taskOutputArtifact"]
    assert shards["producerTask"] == "preprocess"
    assert tasks["report"]["inputs"]["artifacts"]["evaluation"]["taskOutputArtifact"]["producerTask"] == "evaluate"
    # preprocess is keyed by the artifact and the setting only, not by method or seeds
    assert set(tasks["preprocess"]["inputs"]["parameters"]) == {"stages", "setting", "tz_offset_hours",
                                                               "max_missing_fraction", "reference_quirks"}
    # the one reference-mode switch reaches every step that depends on it
    for step in ("preprocess", "train", "evaluate"):
        src = tasks[step]["inputs"]["parameters"]["reference_quirks"]["componentInputParameter"]
        assert src == "pipelinechannel--reference_quirks" or src == "reference_quirks"


def test_parameter_defaults(compiled):
    cpu = compiled["cpu"]["root"]["inputDefinitions"]["parameters"]
    gpu = compiled["gpu"]["root"]["inputDefinitions"]["parameters"]
    assert cpu["method"] == {"defaultValue": "lcron", "isOptional": True, "parameterType": "STRING"}
    assert cpu["stages"]["defaultValue"] == 2 and cpu["stages"]["parameterType"] == "NUMBER_INTEGER"
    assert cpu["seeds"]["defaultValue"] == [1, 2, 3, 4, 5] and cpu["seeds"]["parameterType"] == "LIST"
    assert cpu["source"]["defaultValue"] == "synthetic"
    assert cpu["loss_options"]["defaultValue"] == {} and cpu["loss_options"]["parameterType"] == "STRUCT"
    assert cpu["batch_size"]["defaultValue"] == 1024 and cpu["lr"]["defaultValue"] == 0.01
    # the GPU package never falls back to the node's CPUs: a GPU it cannot use is an error naming why
    assert cpu["device"]["defaultValue"] == "auto" and gpu["device"]["defaultValue"] == "cuda"
    # each package takes its device's training default: the CPU one compiles, the GPU one runs eager in a graph
    assert cpu["compile"]["defaultValue"] is True and gpu["compile"]["defaultValue"] is False
    assert cpu["synthetic_requests_per_day"]["defaultValue"] == 2000 and cpu["days"]["defaultValue"] == ""
    assert cpu["reference_quirks"]["defaultValue"] is False
    from lcron.optim import DEFAULT_EMBEDDING_OPTIMIZER

    assert cpu["embedding_optimizer"]["defaultValue"] == DEFAULT_EMBEDDING_OPTIMIZER == gpu["embedding_optimizer"][
        "defaultValue"]


def test_image_ref():
    assert image_ref("r:5000", "img", "t") == "r:5000/img:t"
    assert image_ref("r:5000/", "img", "t", gpu=True) == "r:5000/img:t-gpu"
    assert image_ref("", "img", "t") == "img:t"


def test_is_stale(tmp_path):
    package = tmp_path / "p.yaml"
    assert pcompile.is_stale(package)
    package.write_text("x")
    newest = max(p.stat().st_mtime for folder in pcompile.SOURCES for p in folder.glob("*.py"))
    os.utime(package, (newest + 10, newest + 10))
    assert not pcompile.is_stale(package)
    os.utime(package, (newest - 10, newest - 10))
    assert pcompile.is_stale(package)


def test_main_writes_selected_variants(tmp_path, capsys):
    assert pcompile.main(["--out", str(tmp_path), "--tag", "t1", "--variants", "gpu"]) == 0
    assert (tmp_path / "cascade-gpu.yaml").is_file() and not (tmp_path / "cascade-cpu.yaml").exists()
    assert ":t1-gpu" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        pcompile.main(["--out", str(tmp_path), "--variants", "tpu"])


@pytest.mark.parametrize("variant", ["cpu", "gpu"])
def test_serving_step_is_switched_by_serving_eval_and_feeds_the_report(compiled, variant):
    """The serving step is in both variants; ``serving_eval`` reaches it as ``enabled`` (no
    trigger condition anywhere: kfp.local 2.16.1 does not run dsl.If branches), it runs after
    evaluate, and the report takes its artifact through the optional ``serving`` input."""
    spec = compiled[variant]
    tasks = spec["root"]["dag"]["tasks"]
    assert all("triggerPolicy" not in t for t in tasks.values())
    serving = tasks["serving"]
    params = serving["inputs"]["parameters"]
    assert params["enabled"] == {"componentInputParameter": "serving_eval"}
    for name, source in (("k1", "serving_k1"), ("index", "serving_index"), ("index_options", "serving_index_options"),
                         ("day", "serving_day"), ("batch_size", "serving_batch_size"), ("device", "device"),
                         ("compile", "compile"), ("tie_seed", "tie_seed")):
        assert params[name] == {"componentInputParameter": source}, name
    arts = serving["inputs"]["artifacts"]
    assert arts["model"]["taskOutputArtifact"] == {"outputArtifactKey": "model", "producerTask": "train"}
    assert arts["shards"]["taskOutputArtifact"] == {"outputArtifactKey": "shards", "producerTask": "preprocess"}
    assert "evaluate" in serving["dependentTasks"]
    assert serving["taskInfo"]["name"] == "serving evaluation"
    report_in = tasks["report"]["inputs"]["artifacts"]["serving"]["taskOutputArtifact"]
    assert report_in == {"outputArtifactKey": "serving", "producerTask": "serving"}
    assert spec["components"]["comp-report"]["inputDefinitions"]["artifacts"]["serving"]["isOptional"] is True
    text = " ".join(_container(spec, "serving")["command"])
    assert "serving_evaluate(" in text and "serving_metric_means" in text
    root = spec["root"]["outputDefinitions"]["artifacts"]
    assert set(root) >= {"serving", "serving_metrics"}
    defaults = spec["root"]["inputDefinitions"]["parameters"]
    assert defaults["serving_eval"] == {"defaultValue": False, "isOptional": True, "parameterType": "BOOLEAN"}
    assert defaults["serving_k1"]["defaultValue"] == [100, 500, 1000]
    assert defaults["serving_index"]["defaultValue"] == "auto"
    assert defaults["serving_index_options"]["defaultValue"] == {}
    assert defaults["serving_day"]["defaultValue"] == "" and defaults["serving_batch_size"]["defaultValue"] == 1024
