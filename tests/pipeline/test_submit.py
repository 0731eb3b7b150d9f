"""Submission: run names, the wave plan, package checks per target, KFP with a fake client that
simulates task states (real kfp_server_api models), Vertex AI with a fake module and - when
google-cloud-aiplatform is installed - with real PipelineJobs built from the compiled package."""

from __future__ import annotations

import inspect
import subprocess
import sys
import types
from pathlib import Path

import kfp_server_api as api
import pytest
import yaml

from lcron.errors import ConfigError
from pipelines import submit
from pipelines.run_local import parse_params
from pipelines.submit import (ALL_METHODS, KfpTarget, RunSpec, SweepStopped, Wave, check_package, plan_runs,
                              plan_waves, read_package, run_name, seeds_label, submit_kfp, submit_vertex,
                              version_name)

REV, STAMP = "4ec343c", "20250114T093000Z"

#: The runs of a full sweep, one per registered method and setting: 16 for the spec's eight,
#: more when a method was added as one file in lcron/losses/ (it is swept too).
FULL = 2 * len(ALL_METHODS)


# --------------------------------------------------------------------------- names and plan


def test_seed_labels_and_run_names():
    assert seeds_label([1, 2, 3]) == "seed1-3"
    assert seeds_label([4]) == "seed4"
    assert seeds_label([1, 5, 9]) == "seed1_5_9"
    assert seeds_label([3, 2]) == "seed3_2"
    assert run_name("lcron", 2, [1, 2, 3]) == "lcron-2stage-seed1-3"
    assert run_name("arf_v2", 3, [7], prefix="exp1") == "exp1-arf_v2-3stage-seed7"
    assert run_name("lcron", 2, [1, 2, 3, 4, 5], revision="4ec343c-dirty", stamp=STAMP) == \
        "lcron-2stage-seed1-5-4ec343c-dirty-20250114T093000Z"
    with pytest.raises(ConfigError):
        seeds_label([])


def test_submission_stamp_is_utc():
    import datetime as dt

    tokyo = dt.datetime(2025, 1, 14, 18, 30, tzinfo=dt.timezone(dt.timedelta(hours=9)))
    assert submit.submission_stamp(tokyo) == "20250114T093000Z"


def test_full_sweep_plan_is_two_distinct_runs_per_method_named_by_commit_and_time():
    from losses.spec import EIGHT  # the spec's eight (tests/losses/spec.py)

    runs = plan_runs(ALL_METHODS, [2, 3], [1, 2, 3], {"batch_size": 512}, revision=REV, stamp=STAMP)
    assert len(runs) == FULL >= 16 and len({r.name for r in runs}) == FULL
    assert set(EIGHT) <= {r.method for r in runs}
    first = runs[0]
    assert first.name == f"bce-2stage-seed1-3-{REV}-{STAMP}"
    assert first.params == {"batch_size": 512, "method": "bce", "stages": 2, "seeds": [1, 2, 3]}
    assert {(r.method, r.stages) for r in runs} == {(m, s) for m in ALL_METHODS for s in (2, 3)}
    # a resubmission of the same sweep a second later gets other names
    again = plan_runs(ALL_METHODS, [2, 3], [1, 2, 3], revision=REV, stamp="20250114T093001Z")
    assert not {r.name for r in runs} & {r.name for r in again}


def test_plan_rejects_unknown_methods_stages_repeats_and_reserved_params():
    with pytest.raises(ConfigError, match="unknown method"):
        plan_runs(["lcorn"], [2], [1])
    with pytest.raises(ConfigError, match="stages must be 2 or 3"):
        plan_runs(["lcron"], [4], [1])
    with pytest.raises(ConfigError, match="--methods/--stages/--seeds"):
        plan_runs(["lcron"], [2], [1], {"method": "arf"})
    with pytest.raises(ConfigError, match="lcron twice"):
        plan_runs(["lcron", "lcron"], [2], [1])


def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t", *args], check=True,
                   capture_output=True)


def test_git_revision_marks_a_dirty_tree(tmp_path):
    assert submit.git_revision(tmp_path) == "nogit"
    _git(tmp_path, "init", "-q")
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "pipelines" / "a.py").write_text("x = 1\n")
    (tmp_path / "notes.txt").write_text("not a source\n")
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "commit", "-q", "-m", "one")
    sha = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True, check=True).stdout.strip()
    assert submit.git_revision(tmp_path) == sha
    (tmp_path / "notes.txt").write_text("changed, but nothing the package or the images are made of\n")
    assert submit.git_revision(tmp_path) == sha
    (tmp_path / "pipelines" / "a.py").write_text("x = 2\n")
    assert submit.git_revision(tmp_path) == f"{sha}-dirty"


def _names(wave: Wave) -> list[str]:
    return [r.name for r in wave.runs]


def test_waves_share_ingest_then_one_preprocess_per_setting():
    runs = plan_runs(ALL_METHODS, [2, 3], [1], revision=REV, stamp=STAMP)
    waves = plan_waves(runs)
    assert [len(w.runs) for w in waves] == [1, 1, FULL - 2]
    assert [w.wait_for for w in waves] == ["ingest", "preprocess", None]
    assert [(r.method, r.stages) for w in waves[:2] for r in w.runs] == [("bce", 2), ("bce", 3)]
    assert sorted(r.name for w in waves for r in w.runs) == sorted(r.name for r in runs)
    one_setting = plan_waves(plan_runs(["bce", "lcron", "arf"], [3], [1]))
    assert [(_names(w), w.wait_for) for w in one_setting] == [
        (["bce-3stage-seed1"], "preprocess"), (["lcron-3stage-seed1", "arf-3stage-seed1"], None)]
    # nothing waits after the last wave, nor for a single run
    assert [(_names(w), w.wait_for) for w in plan_waves(plan_runs(["lcron"], [2, 3], [1]))] == [
        (["lcron-2stage-seed1"], "ingest"), (["lcron-3stage-seed1"], None)]
    assert [(_names(w), w.wait_for) for w in plan_waves(plan_runs(["lcron"], [2], [1]))] == [
        (["lcron-2stage-seed1"], None)]
    everything = plan_waves(runs, wait_shared=False)
    assert len(everything) == 1 and len(everything[0].runs) == FULL and everything[0].wait_for is None


# --------------------------------------------------------------------------- packages per target


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    """GPU packages as `make pipeline` writes them: for KFP (nvidia.com/gpu), for Vertex
    (NVIDIA_L4), and for Vertex but with Kubernetes options (a second YAML document)."""
    from pipelines import kubernetes as k8s
    from pipelines.compile import compile_variant

    out = tmp_path_factory.mktemp("packages")
    return {
        "kfp": compile_variant("gpu", out / "kfp" / "cascade-gpu.yaml", tag="4ec343c-0a1b2c3d"),
        "vertex": compile_variant("gpu", out / "vertex" / "cascade-gpu.yaml", registry="europe-docker.pkg.dev/p/r",
                                  tag="4ec343c-0a1b2c3d", accelerator_type="NVIDIA_L4"),
        "vertex_k8s": compile_variant("gpu", out / "k8s" / "cascade-gpu.yaml", registry="europe-docker.pkg.dev/p/r",
                                      accelerator_type="NVIDIA_L4",
                                      kubernetes=k8s.KubernetesOptions(secret_env=(("AWS_ACCESS_KEY_ID", "s3", "k"),))),
        "cpu": compile_variant("cpu", out / "cpu" / "cascade-cpu.yaml"),
    }


def test_read_package(packages):
    info = read_package(packages["kfp"])
    assert info.pipeline_name == "lcron-cascade" and info.variant == "gpu" and not info.platform_spec
    assert set(info.accelerators) == {"exec-train", "exec-evaluate", "exec-serving"}
    assert set(info.accelerators.values()) == {"nvidia.com/gpu"}
    assert read_package(packages["vertex_k8s"]).platform_spec
    assert read_package(packages["cpu"]).accelerators == {}
    assert version_name(info, "4ec343c-dirty") == f"4ec343c-dirty-gpu-{info.digest[:8]}"
    assert version_name(info, REV, no_cache=True).endswith("-nocache")
    assert version_name(read_package(packages["vertex"]), REV) != version_name(info, REV)


def test_read_package_refuses_what_is_not_a_compiled_pipeline(tmp_path):
    bad = tmp_path / "cascade-cpu.yaml"
    bad.write_text("just: a mapping\n")
    with pytest.raises(ConfigError, match="not a compiled KFP pipeline"):
        read_package(bad)


def test_accelerator_names_are_checked_per_target(packages):
    kfp_pkg, vertex_pkg = read_package(packages["kfp"]), read_package(packages["vertex"])
    assert check_package(kfp_pkg, "kfp")  # a warning only: images by tag
    with pytest.raises(ConfigError, match=r"nvidia.com/gpu \(steps evaluate, serving, train\) is not a Vertex AI"):
        check_package(kfp_pkg, "vertex")
    with pytest.raises(ConfigError, match="NVIDIA_L4 .* is not a Kubernetes resource name"):
        check_package(vertex_pkg, "kfp")
    warnings = check_package(vertex_pkg, "vertex")
    assert len(warnings) == 1 and "by tag, not by pushed digest" in warnings[0]
    with pytest.raises(ConfigError, match="Kubernetes platform spec"):
        check_package(read_package(packages["vertex_k8s"]), "vertex")
    # the default registry (localhost:5000) is out of Vertex's reach
    with pytest.raises(ConfigError, match="localhost"):
        check_package(read_package(packages["cpu"]), "vertex")
    assert check_package(read_package(packages["cpu"]), "kfp")


def test_vertex_accelerator_names_without_aiplatform_follow_the_pattern(packages, monkeypatch):
    monkeypatch.setattr(submit, "vertex_accelerator_names", lambda: None)
    check_package(read_package(packages["vertex"]), "vertex")
    with pytest.raises(ConfigError, match="not a Vertex AI accelerator type"):
        check_package(read_package(packages["kfp"]), "vertex")


def test_without_cache_turns_caching_off_on_every_task(packages, tmp_path):
    out = submit.without_cache(packages["vertex_k8s"], tmp_path / "nocache.yaml")
    docs = list(yaml.safe_load_all(out.read_text()))
    assert len(docs) == 2 and "platforms" in docs[1]  # the Kubernetes settings stay
    spec = docs[0]
    tasks = [t for dag in [spec["root"]["dag"]] + [c["dag"] for c in spec["components"].values() if "dag" in c]
             for t in dag["tasks"].values()]
    assert len(tasks) > 6 and all(t["cachingOptions"]["enableCache"] is False for t in tasks)
    original = yaml.safe_load(Path(packages["vertex"]).read_text())
    assert original["root"]["dag"]["tasks"]["preprocess"]["cachingOptions"]["enableCache"] is True


# --------------------------------------------------------------------------- KFP


class FakeKfp:
    """The kfp.Client methods submit uses, answering with kfp_server_api models, no network.

    ``script`` maps a run name prefix to the snapshots ``get_run`` returns for it, one per call
    (the last repeats): ``(run state, {task: state}, {task: error message})``."""

    def __init__(self, pipelines=None, versions=None, script=None):
        self.pipelines = dict(pipelines or {})  # name -> id
        self.versions = {pid: dict(v) for pid, v in (versions or {}).items()}  # pipeline id -> {name: id}
        self.script = dict(script or {})
        self.events, self.runs, self.uploads, self.polls = [], {}, [], {}

    def list_pipelines(self, page_token="", page_size=10, sort_by="", filter=None, namespace=None):
        import json

        (pred,) = json.loads(filter)["predicates"]
        assert pred["key"] == "display_name" and pred["operation"] == 1
        name = pred["stringValue"]
        found = [api.V2beta1Pipeline(pipeline_id=self.pipelines[name], display_name=name)] \
            if name in self.pipelines else None
        return api.V2beta1ListPipelinesResponse(pipelines=found)

    def upload_pipeline(self, pipeline_package_path, pipeline_name=None, description=None, namespace=None):
        pid = f"pipeline-{len(self.pipelines) + 1}"
        self.pipelines[pipeline_name] = pid
        self.versions[pid] = {pipeline_name: f"{pid}-first"}  # KFP's first version is named like the pipeline
        self.uploads.append(("pipeline", pipeline_name, Path(pipeline_package_path).read_text()))
        return api.V2beta1Pipeline(pipeline_id=pid, display_name=pipeline_name)

    def list_pipeline_versions(self, pipeline_id, page_token="", page_size=10, sort_by="", filter=None):
        import json

        name = json.loads(filter)["predicates"][0]["stringValue"]
        versions = self.versions.get(pipeline_id, {})
        found = [api.V2beta1PipelineVersion(pipeline_id=pipeline_id, pipeline_version_id=versions[name],
                                            display_name=name)] if name in versions else None
        return api.V2beta1ListPipelineVersionsResponse(pipeline_versions=found)

    def upload_pipeline_version(self, pipeline_package_path, pipeline_version_name, pipeline_id=None,
                                pipeline_name=None, description=None):
        vid = f"version-{sum(len(v) for v in self.versions.values()) + 1}"
        self.versions.setdefault(pipeline_id, {})[pipeline_version_name] = vid
        self.uploads.append(("version", pipeline_version_name, Path(pipeline_package_path).read_text()))
        return api.V2beta1PipelineVersion(pipeline_id=pipeline_id, pipeline_version_id=vid,
                                          display_name=pipeline_version_name)

    def create_experiment(self, name, description=None, namespace=None):
        self.experiment = (name, namespace)
        return api.V2beta1Experiment(experiment_id="exp-1", display_name=name)

    def run_pipeline(self, experiment_id, job_name, pipeline_package_path=None, params=None, pipeline_id=None,
                     version_id=None, pipeline_root=None, enable_caching=None, cache_key=None,
                     service_account=None):
        run_id = f"run-{len(self.runs) + 1}"
        self.runs[run_id] = {"experiment_id": experiment_id, "job_name": job_name, "params": params,
                             "pipeline_id": pipeline_id, "version_id": version_id,
                             "pipeline_package_path": pipeline_package_path, "pipeline_root": pipeline_root,
                             "enable_caching": enable_caching, "service_account": service_account}
        self.events.append(("submit", job_name))
        return api.V2beta1Run(run_id=run_id, display_name=job_name, state="PENDING")

    def get_run(self, run_id):
        name = self.runs[run_id]["job_name"]
        snapshots = next((s for prefix, s in self.script.items() if name.startswith(prefix)), [("RUNNING", {}, {})])
        n = self.polls[run_id] = self.polls.get(run_id, -1) + 1
        state, tasks, errors = snapshots[min(n, len(snapshots) - 1)]
        self.events.append(("poll", name, n))
        details = [api.V2beta1PipelineTaskDetail(run_id=run_id, display_name=task, state=task_state,
                                                 error=api.GoogleRpcStatus(message=errors[task])
                                                 if task in errors else None)
                   for task, task_state in tasks.items()]
        details.append(api.V2beta1PipelineTaskDetail(run_id=run_id, display_name=f"{next(iter(tasks), 'x')}-driver",
                                                     state="SUCCEEDED"))  # another name: must not count
        return api.V2beta1Run(run_id=run_id, display_name=name, state=state,
                              run_details=api.V2beta1RunDetails(task_details=details))


def test_the_fake_client_has_kfp_clients_signatures():
    """Every method the fake answers exists on kfp.Client (2.16.1) with the same parameters, so
    a call submit makes that the real client would refuse fails here."""
    import kfp

    for name, method in inspect.getmembers(FakeKfp, inspect.isfunction):
        if name.startswith("_"):
            continue
        real = inspect.signature(getattr(kfp.Client, name))
        assert list(inspect.signature(method).parameters) == list(real.parameters), name


def _wait(log):
    """Fake time: sleeping advances the clock; nothing really waits."""
    now = [0.0]

    def sleep(seconds):
        assert seconds > 0
        now[0] += seconds

    return {"poll_seconds": 30, "timeout": 3600, "log": log.append, "sleep": sleep, "clock": lambda: now[0]}


def _first_runs_script(preprocess_3="SUCCEEDED"):
    running = ("RUNNING", {"fingerprint": "SUCCEEDED", "ingest": "RUNNING"}, {})
    ingested = ("RUNNING", {"fingerprint": "SUCCEEDED", "ingest": "SUCCEEDED", "preprocess": "RUNNING"}, {})
    done = ("RUNNING", {"fingerprint": "SUCCEEDED", "ingest": "SUCCEEDED", "preprocess": "SUCCEEDED",
                        "train": "RUNNING"}, {})
    cached_ingest = ("RUNNING", {"fingerprint": "SUCCEEDED", "ingest": "SKIPPED", "preprocess": "RUNNING"}, {})
    done_3 = ("RUNNING", {"fingerprint": "SUCCEEDED", "ingest": "SKIPPED", "preprocess": preprocess_3}, {})
    return {"bce-2stage": [running, running, ingested, ingested, ingested, done],
            "bce-3stage": [cached_ingest, cached_ingest, done_3]}


def test_kfp_uploads_a_version_and_submits_in_waves(packages):
    client = FakeKfp(script=_first_runs_script())
    runs = plan_runs(ALL_METHODS, [2, 3], [1, 2], {"source": "gs://b/recflow"}, revision=REV, stamp=STAMP)
    log = []
    version = version_name(read_package(packages["kfp"]), REV)
    out = submit_kfp(client, packages["kfp"], plan_waves(runs), "paper", version=version,
                     pipeline_root="gs://b/root", service_account="lcron-runner", **_wait(log))
    # the pipeline and the version, uploaded from the package as it is
    package_text = Path(packages["kfp"]).read_text()
    assert client.uploads == [("pipeline", "lcron-cascade", package_text), ("version", version, package_text)]
    assert client.experiment == ("paper", None)
    # every run from that version, none from a package file
    assert len(out) == FULL and {r["version_id"] for r in client.runs.values()} == {"version-2"}
    assert {r["pipeline_id"] for r in client.runs.values()} == {"pipeline-1"}
    assert all(r["pipeline_package_path"] is None for r in client.runs.values())
    first = client.runs["run-1"]
    assert first["job_name"] == f"bce-2stage-seed1-2-{REV}-{STAMP}" and first["experiment_id"] == "exp-1"
    assert first["params"] == {"source": "gs://b/recflow", "method": "bce", "stages": 2, "seeds": [1, 2]}
    assert first["pipeline_root"] == "gs://b/root" and first["service_account"] == "lcron-runner"
    # order: the 3-stage first run only once ingest succeeded, the rest only once both preprocessed
    submits = [i for i, e in enumerate(client.events) if e[0] == "submit"]
    ev = client.events
    ingest_done = ev.index(("poll", runs[0].name, 2))
    assert ev[submits[1]] == ("submit", runs[1].name) and submits[1] > ingest_done
    assert submits[0] < ingest_done and all(e[0] == "submit" for e in ev[submits[2]:])
    last_polls: dict[str, int] = {}
    for kind, *rest in ev:
        if kind == "poll":
            last_polls[rest[0]] = max(last_polls.get(rest[0], -1), rest[1])
    assert last_polls == {runs[0].name: 5, runs[1].name: 2}  # preprocess done: 2-stage at poll 5, 3-stage at 2
    assert len(submits) == FULL and submits[2] > ev.index(("poll", runs[0].name, 5))
    # progress while waiting, and what each wait ended with
    text = "\n".join(log)
    assert "waiting for ingest of bce-2stage" in text and "ingest RUNNING" in text
    assert f"{runs[1].name}: fingerprint SUCCEEDED, ingest SKIPPED, preprocess SUCCEEDED" in text
    assert text.count("submitted ") == FULL


def test_kfp_reuses_an_uploaded_version(packages):
    version = version_name(read_package(packages["kfp"]), REV)
    client = FakeKfp(pipelines={"lcron-cascade": "p-7"}, versions={"p-7": {version: "v-9"}})
    runs = plan_runs(["lcron"], [2], [1], revision=REV, stamp=STAMP)
    submit_kfp(client, packages["kfp"], plan_waves(runs), "paper", version=version, **_wait([]))
    assert client.uploads == [] and client.runs["run-1"]["version_id"] == "v-9"
    assert client.runs["run-1"]["pipeline_id"] == "p-7"
    # another package of the same commit is another version of the same pipeline
    other = version_name(read_package(packages["cpu"]), REV)
    submit_kfp(client, packages["cpu"], plan_waves(runs), "paper", version=other, **_wait([]))
    assert [u[:2] for u in client.uploads] == [("version", other)]


def test_a_failed_preprocess_stops_the_sweep_with_the_run_name(packages):
    failing = ("FAILED", {"fingerprint": "SUCCEEDED", "ingest": "SUCCEEDED", "preprocess": "FAILED"},
               {"preprocess": "data/2024-01-20 changed since ingest referenced it"})
    script = _first_runs_script()
    script["bce-3stage"] = [script["bce-3stage"][0], failing]
    client = FakeKfp(script=script)
    runs = plan_runs(ALL_METHODS, [2, 3], [1], revision=REV, stamp=STAMP)
    with pytest.raises(SweepStopped) as exc:
        submit_kfp(client, packages["kfp"], plan_waves(runs), "paper", version="v", **_wait([]))
    message = str(exc.value)
    assert f"first run {runs[1].name} (run-2) failed: preprocess FAILED" in message
    assert "changed since ingest referenced it" in message and f"{FULL - 2} run(s) not submitted" in message
    assert [s.name for s in exc.value.submitted] == [runs[0].name, runs[1].name]
    assert len(exc.value.not_submitted) == FULL - 2 and runs[2].name in exc.value.not_submitted
    assert len(client.runs) == 2


def test_a_failed_ingest_stops_before_the_second_setting(packages):
    client = FakeKfp(script={"bce-2stage": [("FAILED", {"fingerprint": "SUCCEEDED", "ingest": "FAILED"}, {})]})
    runs = plan_runs(["bce", "lcron"], [2, 3], [1])
    with pytest.raises(SweepStopped, match=r"bce-2stage-seed1 \(run-1\) failed: ingest FAILED.*3 run\(s\) not"):
        submit_kfp(client, packages["kfp"], plan_waves(runs), "paper", version="v", **_wait([]))
    assert len(client.runs) == 1


def test_a_cancelled_first_run_stops_the_sweep(packages):
    client = FakeKfp(script={"lcron-2stage": [("CANCELED", {"fingerprint": "SUCCEEDED"}, {})]})
    runs = plan_runs(["lcron", "arf"], [2], [1])
    with pytest.raises(SweepStopped, match="failed: run CANCELED"):
        submit_kfp(client, packages["kfp"], plan_waves(runs), "paper", version="v", **_wait([]))


def test_waiting_times_out_with_progress_output(packages):
    client = FakeKfp(script={"lcron-3stage": [("RUNNING", {"fingerprint": "SUCCEEDED", "ingest": "SUCCEEDED",
                                                           "preprocess": "RUNNING"}, {})]})
    runs = plan_runs(["lcron", "arf"], [3], [1])
    log = []
    wait = {**_wait(log), "timeout": 900, "poll_seconds": 60}
    with pytest.raises(SweepStopped) as exc:
        submit_kfp(client, packages["kfp"], plan_waves(runs), "paper", version="v", **wait)
    assert "preprocess of lcron-3stage-seed1 not done after 15m00s (--timeout 900)" in str(exc.value)
    assert exc.value.not_submitted == ["arf-3stage-seed1"] and len(client.runs) == 1
    assert client.polls["run-1"] == 15  # polled every 60 s for 15 min (16 reads)
    progress = [line for line in log if line.startswith("  [")]
    assert progress and "run RUNNING: fingerprint SUCCEEDED, ingest SUCCEEDED, preprocess RUNNING" in progress[0]
    assert len(progress) == 3  # on change only, and every five minutes: 0, 5 and 10 min


def test_a_whole_succeeded_run_or_a_cache_hit_counts_as_done():
    status = submit.RunStatus("SUCCEEDED", {})
    assert submit.gate(status, "preprocess")[0] == "done"  # a backend that reports no task details
    assert submit.gate(submit.RunStatus("RUNNING", {"preprocess": "SKIPPED"}), "preprocess")[0] == "done"
    assert submit.gate(submit.RunStatus("RUNNING", {"preprocess": "PENDING"}), "preprocess")[0] == "waiting"
    assert submit.gate(submit.RunStatus("RUNNING", {"train": "FAILED"}), "preprocess")[0] == "failed"


def test_no_wait_shared_submits_everything_at_once(packages):
    client = FakeKfp()
    runs = plan_runs(["lcron", "arf"], [2, 3], [1])
    submit_kfp(client, packages["kfp"], plan_waves(runs, wait_shared=False), "paper", version="v", **_wait([]))
    assert [e[0] for e in client.events] == ["submit"] * 4


def test_no_cache_uploads_a_version_without_caching(packages):
    client = FakeKfp()
    version = version_name(read_package(packages["kfp"]), REV, no_cache=True)
    submit_kfp(client, packages["kfp"], plan_waves(plan_runs(["lcron"], [2], [1]), wait_shared=False), "paper",
               version=version, no_cache=True, **_wait([]))
    kind, name, text = client.uploads[-1]
    assert (kind, name) == ("version", version) and name.endswith("-nocache")
    assert yaml.safe_load(text)["root"]["dag"]["tasks"]["preprocess"]["cachingOptions"] == {"enableCache": False}


def test_kfp_target_reads_task_states_of_the_run_api():
    client = FakeKfp(script={"x": [("RUNNING", {"ingest": "SUCCEEDED", "preprocess": "FAILED"},
                                    {"preprocess": "out of memory"})]})
    target = KfpTarget(client, "paper", pipeline_id="p", version_id="v")
    run = target.submit(RunSpec("x-2stage", "x", 2, {}))
    status = target.status(run)
    assert status.state == "RUNNING" and status.tasks == {"ingest": "SUCCEEDED", "preprocess": "FAILED",
                                                          "ingest-driver": "SUCCEEDED"}
    assert status.errors == {"preprocess": "out of memory"}


# --------------------------------------------------------------------------- Vertex AI


def test_vertex_without_aiplatform_says_what_to_install(monkeypatch, packages):
    monkeypatch.setitem(sys.modules, "google.cloud.aiplatform", None)  # makes the import fail
    with pytest.raises(ConfigError, match=r"pip install '\.\[vertex\]'"):
        submit_vertex(packages["vertex"], plan_waves(plan_runs(["lcron"], [2], [1])), "exp", project="p",
                      region="r", pipeline_root="gs://b/root")


def test_vertex_job_ids_are_unique_and_valid():
    runs = plan_runs(ALL_METHODS, [2, 3], [1], revision="4ec343c-dirty", stamp=STAMP)
    ids = [submit.vertex_job_id(r.name) for r in runs]
    assert len(set(ids)) == FULL
    assert all(submit.re.fullmatch(r"[a-z][-a-z0-9]{0,127}", i) for i in ids)
    assert submit.vertex_job_id("ARF_v2-2stage") == "arf-v2-2stage"
    assert submit.vertex_job_id("1x-lcron") == "run-1x-lcron"


def test_vertex_pipeline_jobs_in_waves(monkeypatch, packages):
    made = []

    class State(types.SimpleNamespace):
        pass

    def enum(name):
        return types.SimpleNamespace(name=name)

    class PipelineJob:
        def __init__(self, **kwargs):
            self.kwargs = kwargs
            self.resource_name = f"projects/p/pipelineJobs/{kwargs['job_id']}"
            self.reads = 0
            made.append(self)

        def submit(self, **kwargs):
            self.submitted = kwargs

        @property
        def state(self):
            return enum("PIPELINE_STATE_RUNNING")

        @property
        def task_details(self):
            self.reads += 1
            done = self.reads > 1
            return [State(task_name="ingest", state=enum("SUCCEEDED"), error=None),
                    State(task_name="preprocess", state=enum("SKIPPED" if done else "RUNNING"), error=None)]

    fake = types.ModuleType("google.cloud.aiplatform")
    fake.PipelineJob = PipelineJob
    fake.init = lambda **kwargs: setattr(fake, "init_kwargs", kwargs)
    monkeypatch.setitem(sys.modules, "google.cloud.aiplatform", fake)
    import google.cloud

    monkeypatch.setattr(google.cloud, "aiplatform", fake, raising=False)
    runs = plan_runs(["lcron", "arf"], [2, 3], [1, 2, 3], revision=REV, stamp=STAMP)
    log = []
    out = submit_vertex(packages["vertex"], plan_waves(runs), "paper", project="proj", region="europe-west4",
                        pipeline_root="gs://b/root", enable_caching=False, labels={"lcron-revision": REV},
                        **_wait(log))
    assert fake.init_kwargs == {"project": "proj", "location": "europe-west4"}
    assert [s.name for s in out] == [runs[0].name, runs[1].name, runs[2].name, runs[3].name]
    assert out[0].ident == f"projects/p/pipelineJobs/lcron-2stage-seed1-3-{REV}-{STAMP.lower()}"
    job = made[1]
    assert job.kwargs["display_name"] == runs[1].name and job.kwargs["template_path"] == str(packages["vertex"])
    assert job.kwargs["parameter_values"] == {"method": "lcron", "stages": 3, "seeds": [1, 2, 3]}
    assert job.kwargs["pipeline_root"] == "gs://b/root" and job.kwargs["enable_caching"] is False
    assert job.kwargs["labels"] == {"lcron-revision": REV} and job.submitted["experiment"] == "paper"
    assert made[0].reads == 2 and made[1].reads == 2  # ingest; then preprocess in both first runs
    assert any("preprocess SKIPPED" in line for line in log)
    with pytest.raises(ConfigError, match="gs:// pipeline root"):
        submit_vertex(packages["vertex"], plan_waves(runs), "paper", project="p", region="r",
                      pipeline_root="/local/root")
    with pytest.raises(ConfigError, match="nvidia.com/gpu .* is not a Vertex AI accelerator type"):
        submit_vertex(packages["kfp"], plan_waves(runs), "paper", project="p", region="r",
                      pipeline_root="gs://b/root")
    assert len(made) == 4  # nothing built for a refused package


def _real_aiplatform():
    try:
        from google.cloud import aiplatform
    except ImportError:
        pytest.skip("google-cloud-aiplatform is not installed (pip install '.[vertex]'): the Vertex AI package "
                    "is checked against a fake module only")
    if not hasattr(aiplatform, "PipelineJob"):
        pytest.skip("google.cloud.aiplatform is not the real package")
    return aiplatform


def test_real_vertex_pipeline_jobs_from_the_compiled_gpu_package(packages):
    """aiplatform itself reads the compiled GPU package and builds every run's PipelineJob
    (anonymous credentials, nothing sent): the parameters must be the package's, the job ids
    valid and distinct; the packages Vertex would refuse are refused before that."""
    _real_aiplatform()
    from google.auth.credentials import AnonymousCredentials

    runs = plan_runs(ALL_METHODS, [2, 3], [1, 2, 3], {"source": "gs://b/recflow", "loss_options": {"k": "quotas"}},
                     revision=REV, stamp=STAMP)
    assert check_package(read_package(packages["vertex"]), "vertex")  # accepted, warned about the tag
    target = submit.VertexTarget(packages["vertex"], "paper", project="proj", region="europe-west4",
                                 pipeline_root="gs://b/root", labels=submit.vertex_labels(REV, STAMP),
                                 credentials=AnonymousCredentials())
    jobs = [target.job(spec) for spec in runs]
    assert len({job.job_id for job in jobs}) == FULL
    resource = jobs[-1]._gca_resource  # the PipelineJob proto that submit() would send
    assert resource.display_name == runs[-1].name
    assert resource.pipeline_spec["pipelineInfo"]["name"] == "lcron-cascade"
    values = resource.runtime_config.parameter_values
    assert values["method"] == runs[-1].method and values["stages"] == 3 and list(values["seeds"]) == [1, 2, 3]
    assert dict(values["loss_options"]) == {"k": "quotas"} and values["source"] == "gs://b/recflow"
    assert resource.labels["lcron-sweep"] == STAMP.lower()
    # a parameter the package does not have is refused by aiplatform itself
    with pytest.raises(ValueError, match="not found in the pipeline job input definitions"):
        target.job(RunSpec("x", "lcron", 2, {"methd": "lcron"}))
    # what Vertex would refuse: nvidia.com/gpu, and a package with a Kubernetes platform spec -
    # which aiplatform cannot even read
    with pytest.raises(ConfigError, match="nvidia.com/gpu"):
        check_package(read_package(packages["kfp"]), "vertex")
    with pytest.raises(ConfigError, match="Kubernetes platform spec"):
        check_package(read_package(packages["vertex_k8s"]), "vertex")
    k8s_target = submit.VertexTarget(packages["vertex_k8s"], "paper", project="proj", region="europe-west4",
                                     pipeline_root="gs://b/root", credentials=AnonymousCredentials())
    with pytest.raises(Exception, match="expected a single document"):
        k8s_target.job(runs[0])


def test_documented_vertex_path_compiles_the_images_make_push_pushes():
    """docs/pipeline.md's Vertex recipe: the extra is installed from the source folder (the
    project is on no package index), and `make pipeline` with the documented REGISTRY compiles
    the GPU image `make push` pushes (not `:latest-gpu`), with a Vertex accelerator name."""
    import re
    import shlex
    import shutil

    root = Path(__file__).resolve().parents[2]
    doc = (root / "docs" / "pipeline.md").read_text()
    section = doc.split("## Submit to Vertex AI Pipelines", 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash", 1)[1].split("```", 1)[0]
    assert "lcron-pipelines[vertex]" not in section and "install -e '.[vertex]'" in block
    make_lines = {line.split()[1]: shlex.split(line.split("#")[0])[1:] for line in block.splitlines()
                  if line.startswith("make ")}  # target -> the make arguments (target first)
    assert set(make_lines) == {"push", "pipeline"}
    assert make_lines["push"][1] == make_lines["pipeline"][1] and make_lines["push"][1].startswith("REGISTRY=")
    accelerator = next(a.split("=", 1)[1] for a in make_lines["pipeline"] if a.startswith("ACCELERATOR="))
    assert submit.VERTEX_ACCELERATOR.match(accelerator)
    assert "--package build/cascade-gpu.yaml" in block and "--vertex" in block
    if shutil.which("make") is None:
        pytest.skip("make is not installed")

    def dry(*args: str) -> str:
        out = subprocess.run(["make", "-n", "-C", str(root), *args], capture_output=True, text=True, timeout=120)
        return " ".join(out.stdout.replace("\\\n", " ").split())

    pushed = re.findall(r"docker push (\S+)", dry(*make_lines["push"], "ALLOW_DIRTY=1"))
    compiled = dry(*make_lines["pipeline"])
    ref = re.search(r"pipelines\.compile .*--image-ref (\S+)", compiled)
    assert len(pushed) == 2 and ref is not None, (pushed, compiled)
    assert pushed == [ref.group(1), ref.group(1) + "-gpu"] and "latest" not in ref.group(1)
    assert f"--accelerator-type {accelerator}" in compiled and "--pushed build/images.json" in compiled


def test_real_vertex_accelerator_list_has_the_documented_names():
    _real_aiplatform()
    names = submit.vertex_accelerator_names()
    assert {"NVIDIA_TESLA_T4", "NVIDIA_L4"} <= set(names) and "nvidia.com/gpu" not in names
    assert all(submit.VERTEX_ACCELERATOR.match(n) for n in names)


# --------------------------------------------------------------------------- command line


def test_parse_params_follows_kfp_cli_rules():
    assert parse_params(["method=lcron", "stages=3", "seeds=[1,2]", "compile=false", "lr=0.005",
                         "loss_options={\"k_mode\": \"quota\"}", "days=2024-01-13:2024-01-20"]) == {
        "method": "lcron", "stages": 3, "seeds": [1, 2], "compile": False, "lr": 0.005,
        "loss_options": {"k_mode": "quota"}, "days": "2024-01-13:2024-01-20"}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_params(["method"])


def test_main_dry_run_prints_version_and_waves(packages, capsys, monkeypatch):
    monkeypatch.setattr(submit, "git_revision", lambda root=submit.REPO: REV)
    monkeypatch.setattr(submit, "submission_stamp", lambda now=None: STAMP)
    assert submit.main(["--package", str(packages["kfp"]), "--methods", "all", "--stages", "2,3", "--seeds", "1,2,3",
                        "--dry-run", "batch_size=256"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    version = version_name(read_package(packages["kfp"]), REV)
    assert lines[0].startswith(f"KFP pipeline lcron-cascade, version {version} ")
    assert lines[1] == "wave 1: 1 run(s), then wait for ingest"
    assert lines[2].startswith(f"  bce-2stage-seed1-3-{REV}-{STAMP}: ") and "'batch_size': 256" in lines[2]
    assert lines[3] == "wave 2: 1 run(s), then wait for preprocess"
    assert lines[5] == f"wave 3: {FULL - 2} run(s)" and len(lines) == 6 + FULL - 2
    assert "by tag, not by pushed digest" in captured.err
    assert submit.main(["--package", str(packages["kfp"]), "--stages", "2,3", "--dry-run", "--no-wait-shared"]) == 0
    assert capsys.readouterr().out.splitlines()[1] == "wave 1: 2 run(s)"


def test_main_refuses_a_package_for_the_wrong_target_and_a_missing_host(packages, capsys):
    with pytest.raises(SystemExit) as exc:
        submit.main(["--package", str(packages["kfp"])])
    assert exc.value.code == 2 and "--host is needed" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        submit.main(["--package", str(packages["kfp"]) + ".missing", "--host", "http://h"])
    with pytest.raises(SystemExit):
        submit.main(["--package", str(packages["kfp"]), "--vertex", "--project", "p", "--pipeline-root", "gs://b/r",
                     "--dry-run"])
    assert "is not a Vertex AI accelerator type" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        submit.main(["--package", str(packages["vertex"]), "--host", "http://h", "--dry-run"])
    assert "is not a Kubernetes resource name" in capsys.readouterr().err


def test_main_reports_a_stopped_sweep(packages, capsys, monkeypatch):
    import kfp

    client = FakeKfp(script={"lcron-2stage": [("FAILED", {"ingest": "FAILED"}, {"ingest": "no such bucket"})]})
    monkeypatch.setattr(kfp, "Client", lambda host=None, namespace=None: client)
    code = submit.main(["--package", str(packages["kfp"]), "--host", "http://h", "--methods", "lcron,arf",
                        "--stages", "2", "--poll-seconds", "0.01"])
    err = capsys.readouterr().err
    assert code == 1 and "failed: ingest FAILED (no such bucket)" in err
    assert "not submitted: arf-2stage-seed1-5-" in err and len(client.runs) == 1


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


def test_a_ninth_registered_method_is_submitted_and_swept(ninth_method, packages, tmp_path, monkeypatch, capsys):
    from pipelines import sweep_local
    from pipelines.run_local import LocalRun

    assert ninth_method in submit.ALL_METHODS and ninth_method in submit.expand_methods("all")
    assert [r.method for r in plan_runs([ninth_method], [2], [1])] == [ninth_method]
    assert submit.main(["--package", str(packages["kfp"]), "--methods", "all", "--stages", "2", "--dry-run"]) == 0
    assert "  ninth-2stage-seed1-5-" in capsys.readouterr().out
    package = tmp_path / "p.yaml"
    package.write_text("{}")
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
