"""The compiled pipeline YAML run end to end with kfp.local (SubprocessRunner, use_venv=False).

Two configurations on tiny synthetic data (3 days x 80 requests, batch 16, one seed, no
torch.compile): two-stage LCRON with the serving evaluation (``serving_eval=true``) through
``pipelines.run_local``'s command line, and three-stage BCE without it (the default)
through ``pipelines.sweep_local`` (which also compares and resumes).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from lcron.errors import ConfigError
from pipelines import run_local, sweep_local
from pipelines.compile import compile_variant
from pipelines.run_local import LocalRun

TINY = {"synthetic_days": 3, "synthetic_requests_per_day": 80, "synthetic_users": 50, "synthetic_items": 300,
        "synthetic_seed": 1, "seeds": [1], "batch_size": 16, "compile": False, "eval_batch_size": 64}


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    """The package run_local runs: the local variant (no dsl.If; pipelines/cascade_pipeline.py)."""
    return compile_variant("local", tmp_path_factory.mktemp("build") / "cascade-local.yaml")


def _pairs(params: dict) -> list[str]:
    return [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in params.items()]


@pytest.mark.slow
def test_two_stage_run_local(package, tmp_path, capsys):
    root = tmp_path / "kfp-local"
    serving = {"serving_eval": True, "serving_k1": [5, 50], "serving_batch_size": 64}
    # docs/pipeline.md's example: kfp.local hands the dicts' numbers to the steps as floats
    example = {"setting": {"quotas": [25, 10]}, "loss_options": {"k": "quotas"}}
    argv = ["--package", str(package), "--pipeline-root", str(root), "method=lcron", "stages=2", *_pairs(TINY),
            *_pairs(serving), *_pairs(example)]
    assert run_local.main(argv) == 0
    out = capsys.readouterr().out
    latest = json.loads((root / "latest.json").read_text())
    paths = {k: Path(v) for k, v in latest["paths"].items()}
    assert f"report (HTML)      {paths['report_files'] / 'report.html'}" in out
    assert f"metrics            {paths['evaluation'] / 'metrics.json'}" in out
    assert "joint recall" in out
    html = paths["report"].read_text()  # the KFP HTML artifact, the same page
    assert html == (paths["report_files"] / "report.html").read_text()
    assert "<html" in html[:300].lower() and "lcron" in html
    assert paths["report_markdown"].read_text().strip()
    recall = latest["metrics"]["joint_recall"]
    assert 0.0 <= recall <= 1.0 and math.isfinite(recall)
    doc = json.loads((paths["evaluation"] / "metrics.json").read_text())
    assert doc["setting"] == "two_stage" and doc["method"] == "lcron" and doc["seeds"] == [1]
    assert doc["metrics"]["joint_recall"]["mean"] == pytest.approx(recall)
    assert str(paths["report"]).startswith(str(root.resolve()))
    assert (paths["model"] / "seed-1" / "model.pt").is_file()
    run_cfg = json.loads((paths["model"] / "run.json").read_text())
    assert run_cfg["setting"]["quotas"] == [25, 10] and run_cfg["loss_options"] == {"k": "quotas"}
    # the serving step ran: serving.json, its means in the metrics, a report section, a printed line
    served = json.loads((paths["serving"] / "serving.json").read_text())
    assert served["k1"] == [5, 50] and served["run_dir"] == str(paths["model"])
    for k in (5, 50):
        e2e = latest["metrics"][f"serving/joint_recall@K1={k}"]
        assert e2e == pytest.approx(served["results"][str(k)]["joint_recall"]["mean"]) and 0.0 <= e2e <= 1.0
        assert f"serving e2e K1={k}" in out
    assert f"serving            {paths['serving'] / 'serving.json'}" in out
    assert "## Serving-style evaluation" in paths["report_markdown"].read_text()
    assert '<section id="serving">' in html


@pytest.mark.slow
def test_three_stage_sweep_local_compares_and_resumes(package, tmp_path):
    root = tmp_path / "sweep"
    summary = sweep_local.sweep_local(["bce"], [3], root, TINY, package=package)
    assert summary["ran"] == ["bce-3stage"] and summary["skipped"] == []
    marker = json.loads((root / "bce-3stage" / "done.json").read_text())
    metrics = marker["metrics"]
    assert 0.0 <= metrics["joint_recall"] <= 1.0
    # stages by position and model: three-stage's prerank is s2_mlp, never two-stage's s2_din
    assert {"recall_at_10_m/s3_din", "ndcg_at_10/s2_mlp", "recall_at_10_m/s1_dssm", "joint_recall/std",
            "joint_recall/n"} <= set(metrics)
    assert metrics["joint_recall/n"] == 1.0 and metrics["joint_recall/std"] == -1.0  # one seed: no std
    assert Path(marker["paths"]["report"]).is_file()
    # serving_eval defaults to false: the step leaves only its marker, the report has no serving section
    assert not any(k.startswith("serving/") for k in metrics)
    assert sorted(p.name for p in Path(marker["paths"]["serving"]).iterdir()) == ["serving_skipped.json"]
    assert '<section id="serving">' not in Path(marker["paths"]["report"]).read_text()
    assert Path(summary["compare"]["paths"]["html"]).is_file()
    assert list(summary["compare"]["settings"]) == ["three_stage"]
    again = sweep_local.sweep_local(["bce"], [3], root, TINY, package=package, compare=False)
    assert again["ran"] == [] and again["skipped"] == ["bce-3stage"]
    # the shard set lives once under <root>/shared-shards; the step's own output references it
    shared = sorted((root / "shared-shards").iterdir())
    assert [p.name.split("-")[0] for p in shared] == ["three_stage"] and (shared[0] / "dataset.json").is_file()
    refs = list((root / "bce-3stage").rglob("shards-reference.json"))
    assert len(refs) == 1 and json.loads(refs[0].read_text())["path"] == str(shared[0])
    assert not list((root / "bce-3stage").rglob("dataset.json"))
    ingest_out = [p.parent for p in (root / "bce-3stage").rglob("ingest.json")]
    assert len(ingest_out) == 1


def test_sweep_resumes_and_reruns_changed_configurations(tmp_path, monkeypatch):
    calls = []

    def fake_run(package, params, pipeline_root, docker=False):
        calls.append((params["method"], params["stages"]))
        assert params["shared_shards"] in ("", str((root / "shared-shards").resolve()))
        return LocalRun(Path(pipeline_root), dict(params), {"evaluation": Path(pipeline_root) / "eval"},
                        {"joint_recall": 0.5})

    monkeypatch.setattr(sweep_local, "run_pipeline", fake_run)
    root = tmp_path / "sweep"
    first = sweep_local.sweep_local(["bce", "lcron"], [2, 3], root, {"batch_size": 16}, package="p.yaml",
                                    compare=False)
    assert calls == [("bce", 2), ("bce", 3), ("lcron", 2), ("lcron", 3)]
    assert first["ran"] == ["bce-2stage", "bce-3stage", "lcron-2stage", "lcron-3stage"]
    (root / "lcron-3stage" / "done.json").unlink()  # as if interrupted during that configuration
    calls.clear()
    second = sweep_local.sweep_local(["bce", "lcron"], [2, 3], root, {"batch_size": 16}, package="p.yaml",
                                     compare=False)
    assert calls == [("lcron", 3)] and len(second["skipped"]) == 3
    calls.clear()
    # where the shard sets are shared changes no result: no rerun
    sweep_local.sweep_local(["bce"], [2], root, {"batch_size": 16, "shared_shards": ""}, package="p.yaml",
                            compare=False)
    assert calls == []
    sweep_local.sweep_local(["bce"], [2], root, {"batch_size": 32}, package="p.yaml", compare=False)
    assert calls == [("bce", 2)]  # other parameters: not the same configuration any more
    with pytest.raises(ConfigError, match="unknown method"):
        sweep_local.sweep_local(["nope"], [2], root, {}, package="p.yaml", compare=False)
    with pytest.raises(ConfigError, match="--methods/--stages"):
        sweep_local.sweep_local(["bce"], [2], root, {"method": "x"}, package="p.yaml", compare=False)


def test_a_cluster_package_is_refused_by_name(tmp_path):
    """A cluster package's serving step and report sit in dsl.If/dsl.Else: kfp.local 2.16.1
    would run both branches, so run_local stops before any step runs and names the fix."""
    cluster = compile_variant("cpu", tmp_path / "cascade-cpu.yaml")
    with pytest.raises(ValueError, match=r"cascade-cpu\.yaml is a cluster package: its task\(s\) condition-2, "
                                         r"condition-3 run under a condition .*cascade-local\.yaml"):
        run_local.run_pipeline(cluster, {}, tmp_path / "root")
    assert not list((tmp_path / "root").iterdir())
    assert run_local.DEFAULT_PACKAGE.name == "cascade-local.yaml"


def test_unknown_pipeline_parameter_is_refused(package, tmp_path):
    with pytest.raises(ValueError, match=r"unknown pipeline parameter\(s\) \['methd'\]"):
        run_local.run_pipeline(package, {"methd": "lcron"}, tmp_path / "root")


def test_docker_option_wires_the_docker_runner(tmp_path, monkeypatch):
    """--docker: kfp.local's DockerRunner with `env` as entry point (the image's is `lcron`),
    the calling user (the image's uid 1000 for root), HOME set and the host network; no
    Docker engine is needed to check the wiring."""
    import os
    import types

    from kfp import components, local

    seen = {}
    monkeypatch.setattr(local, "init", lambda **kwargs: seen.update(kwargs))
    monkeypatch.setattr(run_local, "check_docker", lambda image: seen.update(checked=image))
    monkeypatch.setattr(os, "chown", lambda path, uid, gid: seen.setdefault("chowned", []).append((path, uid)))

    class FakePipeline:
        component_spec = types.SimpleNamespace(inputs={"method": None})

        def __call__(self, **params):
            seen["params"] = params
            html = types.SimpleNamespace(path=str(tmp_path / "r.html"), metadata={})
            metrics = types.SimpleNamespace(path=str(tmp_path / "m"), metadata={"joint_recall": 0.25})
            return types.SimpleNamespace(outputs={"report": html, "metrics": metrics})

    monkeypatch.setattr(components, "load_component_from_file", lambda path: FakePipeline())
    run = run_local.run_pipeline("p.yaml", {"method": "lcron"}, tmp_path / "root", docker=True, image="r/i:t")
    runner = seen["runner"]
    assert isinstance(runner, local.DockerRunner) and seen["checked"] == "r/i:t"
    user = "1000:1000" if os.getuid() == 0 else f"{os.getuid()}:{os.getgid()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    run_local.run_pipeline("p.yaml", {"method": "lcron"}, tmp_path / "root", docker=True, image="r/i:t")
    args = seen["runner"].container_run_args
    assert args["environment"]["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9000"
    assert "AWS_SECRET_ACCESS_KEY" not in args["environment"]  # only variables that are set
    assert {k: v for k, v in args.items() if k != "environment"} == {"entrypoint": ["env"], "user": user,
                                                                      "network_mode": "host"}
    assert args["environment"]["HOME"] == "/tmp"
    assert ("chowned" in seen) == (os.getuid() == 0)
    assert seen["pipeline_root"] == str((tmp_path / "root").resolve()) and seen["raise_on_error"] is True
    assert seen["params"] == {"method": "lcron"}
    assert run.metrics == {"joint_recall": 0.25}
    assert run.paths == {"report": tmp_path / "r.html", "metrics": tmp_path / "m"}
    run_local.run_pipeline("p.yaml", {}, tmp_path / "root")
    assert isinstance(seen["runner"], local.SubprocessRunner) and seen["runner"].use_venv is False
    # a local-folder source: passed as an absolute path, mounted read-only into the containers
    FakePipeline.component_spec.inputs["source"] = None
    (tmp_path / "src").mkdir()
    monkeypatch.chdir(tmp_path)
    run = run_local.run_pipeline("p.yaml", {"source": "src"}, tmp_path / "root", docker=True, image="r/i:t")
    assert seen["params"] == {"source": str(tmp_path / "src")} and run.params == {"source": "src"}
    mounts = seen["runner"].container_run_args["mounts"]
    assert [(m["Source"], m["Target"], m["Type"], m["ReadOnly"]) for m in mounts] == [
        (str(tmp_path / "src"), str(tmp_path / "src"), "bind", True)]
    for source in ("synthetic", "s3://b/p"):
        run_local.run_pipeline("p.yaml", {"source": source}, tmp_path / "root", docker=True, image="r/i:t")
        assert "mounts" not in seen["runner"].container_run_args and seen["params"] == {"source": source}
