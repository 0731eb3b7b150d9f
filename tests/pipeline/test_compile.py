"""The compiled pipeline: both cluster variants and the kfp.local package, their images,
artifacts, accelerators, caching, defaults; the serving step under ``dsl.If(serving_eval)`` in
the cluster packages (switched by a parameter in the local one); a report that reads no
model weights."""

from __future__ import annotations

import os

import pytest
import yaml

from components.common import image_ref
from pipelines import compile as pcompile

from .compiled import artifact_source, container_tasks, output_sources, parameter_source, runs

STEPS = ("fingerprint", "ingest", "preprocess", "train", "evaluate", "serving", "report")
ACCELERATED = ("train", "evaluate", "serving")


def _load(path):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs[0]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    out = tmp_path_factory.mktemp("build")
    paths = pcompile.compile_all(out, registry="reg.example:5000", image="lcron", tag="abc123")
    local = pcompile.compile_variant("local", pcompile.package_path(out, "local"), registry="reg.example:5000",
                                     image="lcron", tag="abc123")
    return {variant: _load(path) for variant, path in paths.items()} | {"paths": paths, "local": _load(local)}


def _container(spec, step):
    return spec["deploymentSpec"]["executors"][f"exec-{step}"]["container"]


def _artifact_type(spec, step, name, direction="outputDefinitions"):
    return spec["components"][f"comp-{step}"][direction]["artifacts"][name]["artifactType"]["schemaTitle"]


def test_both_variants_are_written(compiled):
    assert set(compiled["paths"]) == {"cpu", "gpu"}
    assert compiled["paths"]["cpu"].name == "cascade-cpu.yaml" and compiled["paths"]["gpu"].name == "cascade-gpu.yaml"
    assert compiled["cpu"]["pipelineInfo"]["name"] == "lcron-cascade"


@pytest.mark.parametrize("variant", ["cpu", "gpu", "local"])
def test_components_images_and_no_runtime_install(compiled, variant):
    spec = compiled[variant]
    tasks = container_tasks(spec)
    assert {t.step for t in tasks.values()} == set(STEPS)
    # one task per step; the cluster packages have a report task in each branch of dsl.If/Else
    assert sorted(tasks) == sorted(STEPS + (("report-2",) if variant != "local" else ()))
    want = "reg.example:5000/lcron:abc123" + ("-gpu" if variant == "gpu" else "")
    assert set(spec["deploymentSpec"]["executors"]) == {f"exec-{name}" for name in tasks}
    for name in tasks:
        c = _container(spec, name)
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
    assert _artifact_type(spec, "train", "run_record") == "system.Dataset"
    assert _artifact_type(spec, "evaluate", "metrics") == "system.Metrics"
    assert _artifact_type(spec, "evaluate", "evaluation") == "system.Dataset"
    assert _artifact_type(spec, "report", "html") == "system.HTML"
    assert _artifact_type(spec, "report", "markdown") == "system.Markdown"
    assert _artifact_type(spec, "serving", "serving") == "system.Dataset"
    assert _artifact_type(spec, "serving", "metrics") == "system.Metrics"
    assert _artifact_type(spec, "report", "serving", "inputDefinitions") == "system.Dataset"
    outputs = spec["root"]["outputDefinitions"]["artifacts"]
    common = {"metrics": "system.Metrics", "report": "system.HTML", "report_markdown": "system.Markdown",
              "report_files": "system.Dataset", "evaluation": "system.Dataset", "model": "system.Model"}
    assert {k: v["artifactType"]["schemaTitle"] for k, v in outputs.items()} == common
    # the local package also outputs the serving step's artifacts (pipelines.run_local prints them)
    local = compiled["local"]["root"]["outputDefinitions"]["artifacts"]
    assert {k: v["artifactType"]["schemaTitle"] for k, v in local.items()} == common | {
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


@pytest.mark.parametrize("variant", ["cpu", "gpu", "local"])
def test_caching_off_only_for_the_fingerprint(compiled, variant):
    tasks = container_tasks(compiled[variant])
    assert not tasks["fingerprint"].spec.get("cachingOptions", {}).get("enableCache", False)
    for name, task in tasks.items():
        if name != "fingerprint":
            assert task.spec["cachingOptions"]["enableCache"] is True, name


def test_the_fingerprint_feeds_ingest_and_ingest_feeds_preprocess(compiled):
    tasks = compiled["cpu"]["root"]["dag"]["tasks"]
    fp_in = tasks["ingest"]["inputs"]["parameters"]["fingerprint"]["taskOutputParameter"]
    assert fp_in == {"outputParameterKey": "Output", "producerTask": "fingerprint"}
    raw = tasks["preprocess"]["inputs"]["artifacts"]["raw_data"]["taskOutputArtifact"]
    assert raw == {"outputArtifactKey": "raw_data", "producerTask": "ingest"}
    shards = tasks["evaluate"]["inputs"]["artifacts"]["shards"]["taskOutputArtifact"]
    assert shards["producerTask"] == "preprocess"
    report = container_tasks(compiled["cpu"])["report"]
    assert artifact_source(compiled["cpu"], report, "evaluation") == ("evaluate", "evaluation")
    # preprocess is keyed by the artifact and the setting only (and where a shared shard set lives,
    # "" on a cluster), not by method or seeds
    assert set(tasks["preprocess"]["inputs"]["parameters"]) == {"stages", "setting", "tz_offset_hours",
                                                               "max_missing_fraction", "reference_quirks",
                                                               "shared_root"}
    assert tasks["preprocess"]["inputs"]["parameters"]["shared_root"]["componentInputParameter"] == "shared_shards"
    # ingest references the source unless ingest_copy
    assert tasks["ingest"]["inputs"]["parameters"]["copy"]["componentInputParameter"] == "ingest_copy"
    params = compiled["cpu"]["root"]["inputDefinitions"]["parameters"]
    assert params["ingest_copy"]["defaultValue"] is False and params["shared_shards"]["defaultValue"] == ""
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


SERVING_PARAMS = (("k1", "serving_k1"), ("index", "serving_index"), ("index_options", "serving_index_options"),
                  ("day", "serving_day"), ("batch_size", "serving_batch_size"), ("device", "device"),
                  ("compile", "compile"), ("tie_seed", "tie_seed"))


@pytest.mark.parametrize("variant", ["cpu", "gpu"])
def test_with_serving_off_no_serving_task_can_run(compiled, variant):
    """Cluster packages: the serving step sits under ``serving_eval == true`` (so a run
    without it schedules no serving pod), and exactly one report task runs either way - the
    one taking the serving artifact when the step ran, the one without it otherwise."""
    spec = compiled[variant]
    tasks = container_tasks(spec)
    serving = [t for t in tasks.values() if t.step == "serving"]
    assert len(serving) == 1 and serving[0].name == "serving" and "serving" not in spec["root"]["dag"]["tasks"]
    assert not runs(serving[0], serving_eval=False) and runs(serving[0], serving_eval=True)
    assert [c.text for c in serving[0].conditions] == [
        "inputs.parameter_values['pipelinechannel--serving_eval'] == true"]
    # every other step runs whatever serving_eval is
    assert all(runs(t, v) for t in tasks.values() if t.step not in ("serving", "report") for v in (False, True))
    reports = [t for t in tasks.values() if t.step == "report"]
    for value in (False, True):
        (ran,) = [t for t in reports if runs(t, value)]
        has_serving = "serving" in ran.spec["inputs"].get("artifacts", {})
        assert has_serving == value, value
        if has_serving:
            assert artifact_source(spec, ran, "serving") == ("serving", "serving")
            assert ran.dag == serving[0].dag  # same branch: it runs after the serving step, never without it
    # the report's pages are pipeline outputs through dsl.OneOf over the two report tasks
    for output, key in (("report", "html"), ("report_markdown", "markdown"), ("report_files", "report_files")):
        assert output_sources(spec, output) == {(t.name, key) for t in reports}, output


@pytest.mark.parametrize("variant", ["cpu", "gpu", "local"])
def test_serving_step_wiring(compiled, variant):
    """``serving_eval`` reaches the step as ``enabled`` (true in a cluster branch, the switch
    itself in the local package), the serving parameters reach it, and it runs after evaluate."""
    spec = compiled[variant]
    serving = container_tasks(spec)["serving"]
    params = serving.spec["inputs"]["parameters"]
    dag = serving.dag

    def source(entry: dict) -> str:
        return parameter_source(spec, dag, entry["componentInputParameter"])

    assert source(params["enabled"]) == "serving_eval"
    for name, pipeline_param in SERVING_PARAMS:
        assert source(params[name]) == pipeline_param, name
    assert artifact_source(spec, serving, "model") == ("train", "model")
    assert artifact_source(spec, serving, "shards") == ("preprocess", "shards")
    # after evaluate (one accelerator-hungry step at a time): directly, or through its branch group
    assert "evaluate" in serving.spec.get("dependentTasks", []) or "evaluate" in \
        spec["root"]["dag"]["tasks"]["condition-branches-1"]["dependentTasks"]
    assert serving.spec["taskInfo"]["name"] == "serving evaluation"
    text = " ".join(_container(spec, "serving")["command"])
    assert "serving_evaluate(" in text and "serving_metric_means" in text
    defaults = spec["root"]["inputDefinitions"]["parameters"]
    assert defaults["serving_eval"] == {"defaultValue": False, "isOptional": True, "parameterType": "BOOLEAN"}
    assert defaults["serving_k1"]["defaultValue"] == [100, 500, 1000]
    assert defaults["serving_index"]["defaultValue"] == "auto"
    assert defaults["serving_index_options"]["defaultValue"] == {}
    assert defaults["serving_day"]["defaultValue"] == "" and defaults["serving_batch_size"]["defaultValue"] == 1024


def test_local_package_has_no_condition_and_always_wires_the_serving_artifact(compiled):
    """kfp.local 2.16.1 runs no dsl.If branch (docs/pipeline.md), so the local package has none:
    the serving step is always a task (``enabled`` switches it) and the one report task takes
    its artifact; run_local reads the serving outputs."""
    spec = compiled["local"]
    assert "triggerPolicy" not in yaml.safe_dump(spec)
    assert not [c for c in spec["components"] if c.startswith("comp-condition")]
    tasks = container_tasks(spec)
    assert all(t.dag == "root" for t in tasks.values())
    assert artifact_source(spec, tasks["report"], "serving") == ("serving", "serving")
    assert spec["components"]["comp-report"]["inputDefinitions"]["artifacts"]["serving"]["isOptional"] is True
    outputs = spec["root"]["dag"]["outputs"]["artifacts"]
    assert outputs["serving"]["artifactSelectors"] == [{"outputArtifactKey": "serving", "producerSubtask": "serving"}]
    assert outputs["serving_metrics"]["artifactSelectors"] == [{"outputArtifactKey": "metrics",
                                                                "producerSubtask": "serving"}]


@pytest.mark.parametrize("variant", ["cpu", "gpu", "local"])
def test_report_inputs_hold_no_model_weights(compiled, variant):
    """The report step (1 CPU, 4 GB) takes the train step's run record, the evaluation and
    the serving result - never the ``model`` artifact, so its pod downloads no weights."""
    spec = compiled[variant]
    component = spec["components"]["comp-report"]["inputDefinitions"]["artifacts"]
    assert set(component) == {"run_record", "evaluation", "serving"}
    assert {a["artifactType"]["schemaTitle"] for a in component.values()} == {"system.Dataset"}
    reports = [t for t in container_tasks(spec).values() if t.step == "report"]
    assert len(reports) == (1 if variant == "local" else 2)
    allowed = {("train", "run_record"), ("evaluate", "evaluation"), ("serving", "serving")}
    for task in reports:
        sources = {artifact_source(spec, task, name) for name in task.spec["inputs"]["artifacts"]}
        assert ("train", "model") not in sources and sources <= allowed, (task.name, sources)
        assert {("train", "run_record"), ("evaluate", "evaluation")} <= sources, task.name
        assert "parameters" not in task.spec["inputs"]
    # the artifacts it does take carry no weights: the train step fills run_record from the
    # run folder's JSON files only (tests/pipeline/test_components.py checks the files)
    assert "build_report(run_record.path," in " ".join(_container(spec, "report")["command"])
