"""Submission: run names, the sweep plan, KFP with a fake client, Vertex AI with a fake module."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from lcron.errors import ConfigError
from pipelines import submit
from pipelines.run_local import parse_params
from pipelines.submit import ALL_METHODS, plan_runs, run_name, seeds_label, submit_kfp, submit_vertex


def test_seed_labels_and_run_names():
    assert seeds_label([1, 2, 3]) == "seed1-3"
    assert seeds_label([4]) == "seed4"
    assert seeds_label([1, 5, 9]) == "seed1_5_9"
    assert seeds_label([3, 2]) == "seed3_2"
    assert run_name("lcron", 2, [1, 2, 3]) == "lcron-2stage-seed1-3"
    assert run_name("arf_v2", 3, [7], prefix="exp1") == "exp1-arf_v2-3stage-seed7"
    with pytest.raises(ConfigError):
        seeds_label([])


def test_full_sweep_plan_is_16_distinct_runs():
    runs = plan_runs(ALL_METHODS, [2, 3], [1, 2, 3], {"batch_size": 512})
    assert len(runs) == 16 and len({r.name for r in runs}) == 16
    first = runs[0]
    assert first.name == "bce-2stage-seed1-3"
    assert first.params == {"batch_size": 512, "method": "bce", "stages": 2, "seeds": [1, 2, 3]}
    assert {(r.method, r.stages) for r in runs} == {(m, s) for m in ALL_METHODS for s in (2, 3)}


def test_plan_rejects_unknown_methods_stages_and_reserved_params():
    with pytest.raises(ConfigError, match="unknown method"):
        plan_runs(["lcorn"], [2], [1])
    with pytest.raises(ConfigError, match="stages must be 2 or 3"):
        plan_runs(["lcron"], [4], [1])
    with pytest.raises(ConfigError, match="--methods/--stages/--seeds"):
        plan_runs(["lcron"], [2], [1], {"method": "arf"})


class FakeClient:
    """Records create_run_from_pipeline_package calls like kfp.Client would receive them."""

    def __init__(self):
        self.calls = []

    def create_run_from_pipeline_package(self, pipeline_file, arguments=None, run_name=None, experiment_name=None,
                                         namespace=None, pipeline_root=None, enable_caching=None, **kwargs):
        self.calls.append({"pipeline_file": pipeline_file, "arguments": arguments, "run_name": run_name,
                           "experiment_name": experiment_name, "pipeline_root": pipeline_root,
                           "enable_caching": enable_caching, **kwargs})
        return types.SimpleNamespace(run_id=f"run-{len(self.calls)}")


def test_submit_kfp_one_run_per_configuration_under_one_experiment():
    client = FakeClient()
    runs = plan_runs(["lcron", "arf"], [2, 3], [1, 2], {"source": "gs://b/recflow"})
    out = submit_kfp(client, "build/cascade-cpu.yaml", runs, "paper", pipeline_root="gs://b/root")
    assert out == [("lcron-2stage-seed1-2", "run-1"), ("lcron-3stage-seed1-2", "run-2"),
                   ("arf-2stage-seed1-2", "run-3"), ("arf-3stage-seed1-2", "run-4")]
    assert {c["experiment_name"] for c in client.calls} == {"paper"}
    assert {c["pipeline_file"] for c in client.calls} == {"build/cascade-cpu.yaml"}
    assert client.calls[3]["arguments"] == {"source": "gs://b/recflow", "method": "arf", "stages": 3, "seeds": [1, 2]}
    assert client.calls[0]["pipeline_root"] == "gs://b/root" and client.calls[0]["enable_caching"] is None


def test_submit_kfp_passes_the_service_account_of_the_runs():
    client = FakeClient()
    submit_kfp(client, "p.yaml", plan_runs(["lcron"], [2], [1]), "exp", service_account="lcron-runner")
    assert client.calls[0]["service_account"] == "lcron-runner"
    submit_kfp(client, "p.yaml", plan_runs(["lcron"], [2], [1]), "exp")
    assert "service_account" not in client.calls[1]  # the namespace's default when none is given


def test_vertex_without_aiplatform_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "google.cloud.aiplatform", None)  # makes the import fail
    with pytest.raises(ConfigError, match=r"pip install 'lcron-pipelines\[vertex\]'"):
        submit_vertex("p.yaml", plan_runs(["lcron"], [2], [1]), "exp", project="p", region="r",
                      pipeline_root="gs://b/root")


def test_vertex_pipeline_jobs(monkeypatch):
    made = []

    class PipelineJob:
        def __init__(self, **kwargs):
            self.kwargs = kwargs
            self.resource_name = f"projects/p/pipelineJobs/{len(made) + 1}"
            made.append(self)

        def submit(self, **kwargs):
            self.submitted = kwargs

    fake = types.ModuleType("google.cloud.aiplatform")
    fake.PipelineJob = PipelineJob
    fake.init = lambda **kwargs: setattr(fake, "init_kwargs", kwargs)
    monkeypatch.setitem(sys.modules, "google.cloud.aiplatform", fake)
    import google.cloud

    monkeypatch.setattr(google.cloud, "aiplatform", fake, raising=False)
    runs = plan_runs(["lcron"], [2, 3], [1, 2, 3])
    out = submit_vertex("build/cascade-gpu.yaml", runs, "paper", project="proj", region="europe-west4",
                        pipeline_root="gs://b/root", enable_caching=False)
    assert fake.init_kwargs == {"project": "proj", "location": "europe-west4"}
    assert out == [("lcron-2stage-seed1-3", "projects/p/pipelineJobs/1"),
                   ("lcron-3stage-seed1-3", "projects/p/pipelineJobs/2")]
    job = made[1]
    assert job.kwargs == {"display_name": "lcron-3stage-seed1-3", "template_path": "build/cascade-gpu.yaml",
                          "parameter_values": {"method": "lcron", "stages": 3, "seeds": [1, 2, 3]},
                          "pipeline_root": "gs://b/root", "enable_caching": False}
    assert job.submitted["experiment"] == "paper"
    with pytest.raises(ConfigError, match="gs:// pipeline root"):
        submit_vertex("p.yaml", runs, "paper", project="p", region="r", pipeline_root="/local/root")


def test_parse_params_follows_kfp_cli_rules():
    assert parse_params(["method=lcron", "stages=3", "seeds=[1,2]", "compile=false", "lr=0.005",
                         "loss_options={\"k_mode\": \"quota\"}", "days=2024-01-13:2024-01-20"]) == {
        "method": "lcron", "stages": 3, "seeds": [1, 2], "compile": False, "lr": 0.005,
        "loss_options": {"k_mode": "quota"}, "days": "2024-01-13:2024-01-20"}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_params(["method"])


def test_main_dry_run_and_missing_host(tmp_path, capsys):
    package = tmp_path / "p.yaml"
    package.write_text("# compiled pipeline\n")
    assert submit.main(["--package", str(package), "--methods", "all", "--stages", "2", "--seeds", "1,2,3",
                        "--dry-run", "batch_size=256"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 8 and lines[-1].startswith("lcron-2stage-seed1-3: ")
    assert "'batch_size': 256" in lines[-1]
    with pytest.raises(SystemExit) as exc:
        submit.main(["--package", str(package)])
    assert exc.value.code == 2 and "--host is needed" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        submit.main(["--package", str(tmp_path / "missing.yaml"), "--host", "http://h"])


def test_documented_kfp_run_submit_syntax(tmp_path):
    """`kfp run submit -e EXP -r RUN -f PACKAGE key=value ...` as kfp 2.16.1's CLI parses it.

    The `kfp` entry point builds a real client from --endpoint before any subcommand, so the
    `run` command group is invoked here with a fake client in its context instead.
    """
    from click.testing import CliRunner
    from kfp.cli.run import run as run_group

    class Client:
        def __init__(self):
            self.runs = []

        def create_experiment(self, name):
            self.experiment = name
            return types.SimpleNamespace(experiment_id="exp-1")

        def run_pipeline(self, **kwargs):
            self.runs.append(kwargs)
            return types.SimpleNamespace(run_id="run-1")

        def get_run(self, run_id):
            return types.SimpleNamespace(to_dict=lambda: {"run_id": run_id})

    package = tmp_path / "cascade-cpu.yaml"
    package.write_text("# compiled pipeline\n")
    client = Client()
    res = CliRunner().invoke(run_group, ["submit", "-e", "lcron", "-r", "lcron-2stage-seed1-3", "-f", str(package),
                                         "method=lcron", "stages=2", "seeds=[1,2,3]", "compile=false"],
                             obj={"client": client, "namespace": "kubeflow", "output": "json"})
    assert res.exit_code == 0, res.output
    assert client.experiment == "lcron"
    (call,) = client.runs
    assert call["job_name"] == "lcron-2stage-seed1-3" and call["pipeline_package_path"] == str(package)
    assert call["params"] == {"method": "lcron", "stages": 2, "seeds": [1, 2, 3], "compile": False}


@pytest.fixture
def ninth_method():
    """A ninth method registered the documented way (a @register'ed CascadeLoss), removed after."""
    from lcron.losses import register, unregister
    from lcron.losses.bce import BCELoss

    @register("ninth")
    class Ninth(BCELoss):
        pass

    yield "ninth"
    unregister("ninth")


def test_a_ninth_registered_method_is_submitted_and_swept(ninth_method, tmp_path, monkeypatch, capsys):
    from pipelines import sweep_local
    from pipelines.run_local import LocalRun

    assert ninth_method in submit.ALL_METHODS and ninth_method in submit.expand_methods("all")
    assert [r.method for r in plan_runs([ninth_method], [2], [1])] == [ninth_method]
    package = tmp_path / "p.yaml"
    package.write_text("{}")
    assert submit.main(["--package", str(package), "--methods", "all", "--stages", "2", "--dry-run"]) == 0
    assert "ninth-2stage-seed1-5" in capsys.readouterr().out
    ran = []
    monkeypatch.setattr(sweep_local, "run_pipeline",
                        lambda package, params, root, docker=False: ran.append(params) or LocalRun(Path(root), params))
    summary = sweep_local.sweep_local([ninth_method], [2], tmp_path / "sweep", package=package, compare=False)
    assert summary["ran"] == ["ninth-2stage"]
    assert ran == [{"method": "ninth", "stages": 2, "shared_shards": str((tmp_path / "sweep" / "shared-shards").resolve())}]


def test_no_method_list_outside_the_registry():
    """The Makefile, submit and the local sweep name no methods: they read the registry."""
    root = Path(__file__).resolve().parents[2]
    for rel in ("Makefile", "pipelines/submit.py", "pipelines/sweep_local.py"):
        text = (root / rel).read_text()
        assert "fs_lambdaloss" not in text and "arf_v2" not in text, rel


def test_readme_recipe_for_the_paper_table_reaches_the_sweep():
    """README's `make sweep-local PARAMS=...` recipe passes the RecFlow source and the pipeline's
    defaults (5 seeds) through to pipelines.sweep_local; the plain target is said to be synthetic."""
    import re
    import shutil
    import subprocess

    root = Path(__file__).resolve().parents[2]
    readme = (root / "README.md").read_text()
    assert "synthetic data" in readme and "five seeds" in readme
    recipe = re.search(r"make sweep-local PARAMS='([^']*)'", readme)
    assert recipe is not None and "source=" in recipe.group(1)
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    dry = subprocess.run(["make", "-n", "-C", str(root), "sweep-local", f"PARAMS={recipe.group(1)}"],
                         capture_output=True, text=True, timeout=60)
    command = " ".join(dry.stdout.replace("\\\n", " ").split())
    assert "pipelines.sweep_local" in command and "--methods all" in command and recipe.group(1) in command
    import argparse

    from pipelines.cascade_pipeline import DEFAULT_SEEDS
    from pipelines.run_local import add_local_options

    parser = argparse.ArgumentParser()
    parser.add_argument("params", nargs="*")
    add_local_options(parser)
    args = parser.parse_args(recipe.group(1).split())
    # --no-local-defaults: no laptop seed/batch override, so the pipeline's five seeds apply
    assert args.no_local_defaults and "seeds" not in parse_params(args.params) and len(DEFAULT_SEEDS) == 5
