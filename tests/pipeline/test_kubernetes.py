"""Compile-time Kubernetes settings (pipelines/kubernetes.py, kfp-kubernetes): compiled with
every option, the YAML carries secrets as env, the GCS key file, node selector and toleration
on the GPU steps, retries, timeouts, labels and a disk per step on the right tasks; without
options the package is unchanged (no platform spec)."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipelines import compile as pcompile
from pipelines import kubernetes as k8s
from pipelines import resources

from .compiled import container_tasks, step_of

ROOT = Path(__file__).resolve().parents[2]
STEPS = resources.STEPS
ACCELERATED = ("train", "evaluate", "serving")
NOT_ACCELERATED = tuple(s for s in STEPS if s not in ACCELERATED)

ALL_OPTIONS = [
    "--secret-env", "AWS_ACCESS_KEY_ID=s3-creds:access_key",
    "--secret-env", "AWS_SECRET_ACCESS_KEY=s3-creds:secret_key",
    "--gcs-key-secret", "gcs-key", "--gcs-key-file", "sa.json",
    "--gpu-node-selector", "cloud.google.com/gke-accelerator=nvidia-l4",
    "--gpu-toleration", "nvidia.com/gpu=present:NoSchedule",
    "--gpu-toleration", "dedicated:NoExecute",
    "--retries", "3", "--retry-backoff", "60", "--retry-backoff-factor", "2", "--retry-backoff-max", "1800s",
    "--timeout", "train=86400", "--timeout", "ingest=7200",
    "--label", "lcron.dev/git-sha=4ec343c", "--label", "team=ranking",
    "--ephemeral-storage-mount", "/gcs", "--ephemeral-storage", "preprocess=200Gi",
    "--ephemeral-storage-volume", "pvc", "--storage-class", "premium-rwo",
]


def _docs(path: Path) -> tuple[dict, dict | None]:
    """(pipeline spec, kubernetes platform spec or None) of a compiled package."""
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    platform = next((d["platforms"]["kubernetes"] for d in docs[1:] if "platforms" in d), None)
    return docs[0], platform


def _executors(platform: dict) -> dict[str, dict]:
    return {name.removeprefix("exec-"): cfg for name, cfg in platform["deploymentSpec"]["executors"].items()}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    out = tmp_path_factory.mktemp("k8s")
    assert pcompile.main(["--out", str(out), "--tag", "t1", *ALL_OPTIONS]) == 0
    return {v: _docs(out / f"cascade-{v}.yaml") for v in ("cpu", "gpu")}


@pytest.mark.parametrize("variant", ["cpu", "gpu"])
def test_secrets_as_env_and_the_gcs_key_file_on_every_step(compiled, variant):
    spec, platform = compiled[variant]
    executors = _executors(platform)
    assert {step_of(name) for name in executors} == set(STEPS)  # report-2: the report of the other branch
    for step, cfg in executors.items():
        env = {(k["envVar"], s["secretName"], k["secretKey"]) for s in cfg["secretAsEnv"] for k in s["keyToEnv"]}
        assert env == {("AWS_ACCESS_KEY_ID", "s3-creds", "access_key"),
                       ("AWS_SECRET_ACCESS_KEY", "s3-creds", "secret_key")}, step
        assert cfg["secretAsVolume"] == [{"mountPath": k8s.GCS_KEY_DIR, "optional": False, "secretName": "gcs-key",
                                          "secretNameParameter": {"runtimeValue": {"constant": "gcs-key"}}}]
        container_env = spec["deploymentSpec"]["executors"][f"exec-{step}"]["container"]["env"]
        assert {"name": "GOOGLE_APPLICATION_CREDENTIALS", "value": f"{k8s.GCS_KEY_DIR}/sa.json"} in container_env


def test_node_selector_and_tolerations_only_on_the_gpu_steps_of_the_gpu_variant(compiled):
    gpu = _executors(compiled["gpu"][1])
    for step in ACCELERATED:
        assert gpu[step]["nodeSelector"] == {"labels": {"cloud.google.com/gke-accelerator": "nvidia-l4"}}
        assert gpu[step]["tolerations"] == [
            {"key": "nvidia.com/gpu", "operator": "Equal", "value": "present", "effect": "NoSchedule"},
            {"key": "dedicated", "operator": "Exists", "effect": "NoExecute"}]
    for step in NOT_ACCELERATED:
        assert "nodeSelector" not in gpu[step] and "tolerations" not in gpu[step]
    for step, cfg in _executors(compiled["cpu"][1]).items():
        assert "nodeSelector" not in cfg and "tolerations" not in cfg, step


@pytest.mark.parametrize("variant", ["cpu", "gpu"])
def test_retries_with_backoff_on_train_evaluate_and_serving(compiled, variant):
    tasks = {name: task.spec for name, task in container_tasks(compiled[variant][0]).items()}
    for step in ACCELERATED:
        assert tasks[step]["retryPolicy"] == {"maxRetryCount": 3, "backoffDuration": "60s", "backoffFactor": 2.0,
                                              "backoffMaxDuration": "1800s"}
    for name, task in tasks.items():
        if step_of(name) in NOT_ACCELERATED:
            assert "retryPolicy" not in task, name


@pytest.mark.parametrize("variant", ["cpu", "gpu"])
def test_timeouts_labels_and_disk_per_step(compiled, variant):
    executors = _executors(compiled[variant][1])
    assert executors["train"]["activeDeadlineSeconds"] == "86400"
    assert executors["ingest"]["activeDeadlineSeconds"] == "7200"
    assert all("activeDeadlineSeconds" not in executors[s] for s in STEPS if s not in ("train", "ingest"))
    sizes = resources.EPHEMERAL_STORAGE["recflow"] | {"preprocess": "200Gi"}
    for name, cfg in executors.items():
        step = step_of(name)
        assert cfg["podMetadata"]["labels"] == {"lcron.dev/git-sha": "4ec343c", "team": "ranking",
                                                k8s.STEP_LABEL: step, k8s.VARIANT_LABEL: variant}
        assert cfg["genericEphemeralVolume"] == [{
            "volumeName": k8s.EPHEMERAL_VOLUME, "mountPath": "/gcs", "accessModes": ["ReadWriteOnce"],
            "size": sizes[step], "storageClassName": "premium-rwo"}], name


def test_disk_sizes_hold_the_shard_set_where_it_is_read():
    recflow = resources.EPHEMERAL_STORAGE["recflow"]
    gib = {step: int(size.removesuffix("Gi")) for step, size in recflow.items()}
    assert set(gib) == set(STEPS)
    for step in ("preprocess", "train", "evaluate", "serving"):
        assert gib[step] >= 19 + 8, step  # the three-stage shard set (~19 GB) and room for the models
    # ingest writes a reference (ingest_copy=true needs an override); preprocess downloads at
    # most two ~2.7 GB source days from an object store beside the three-stage shard set
    assert gib["ingest"] <= 4 and gib["preprocess"] >= 19 + 2 * 3
    assert gib["report"] <= 4  # it reads the run record and the evaluation, no model (components/report.py)
    assert set(resources.EPHEMERAL_STORAGE) == set(resources.PROFILES)


def test_without_options_nothing_changes(tmp_path):
    """No option: no platform spec, no retry policy, no added env; a package compiled through
    ``compile_all`` (with or without empty options) is identical to one through ``main``."""
    assert pcompile.main(["--out", str(tmp_path / "a"), "--tag", "t1"]) == 0
    profile, gpu_profile = resources.resolve(), resources.resolve(gpu=True)  # main's default profile
    pcompile.compile_all(tmp_path / "b", tag="t1", resources=profile, gpu_resources=gpu_profile,
                         kubernetes=k8s.KubernetesOptions())
    pcompile.compile_all(tmp_path / "c", tag="t1", resources=profile, gpu_resources=gpu_profile)
    for variant in ("cpu", "gpu"):
        text = (tmp_path / "a" / f"cascade-{variant}.yaml").read_text()
        assert text == (tmp_path / "b" / f"cascade-{variant}.yaml").read_text()
        assert text == (tmp_path / "c" / f"cascade-{variant}.yaml").read_text()
        spec, platform = _docs(tmp_path / "a" / f"cascade-{variant}.yaml")
        assert platform is None and "retryPolicy" not in text and "GOOGLE_APPLICATION_CREDENTIALS" not in text


def test_gcs_key_without_s3_keys_and_one_option_alone(tmp_path):
    """Each option stands alone: a GCS key file only, on the CPU variant."""
    assert pcompile.main(["--out", str(tmp_path), "--variants", "cpu", "--gcs-key-secret", "gcs-key"]) == 0
    spec, platform = _docs(tmp_path / "cascade-cpu.yaml")
    for step, cfg in _executors(platform).items():
        assert set(cfg) == {"secretAsVolume"}, step
    assert "retryPolicy" not in (tmp_path / "cascade-cpu.yaml").read_text()


@pytest.mark.parametrize("args,message", [
    (["--secret-env", "AWS_ACCESS_KEY_ID=s3-creds"], "expected ENV=SECRET:KEY"),
    (["--secret-env", "1BAD=s3:key"], "expected ENV=SECRET:KEY"),
    (["--gcs-key-secret", "Bad_Name"], "not a Kubernetes secret name"),
    (["--gpu-toleration", "nvidia.com/gpu=present:Sometimes"], "EFFECT one of"),
    (["--gpu-toleration", "nvidia.com/gpu"], "expected KEY[=VALUE]:EFFECT"),
    (["--gpu-node-selector", "pool"], "expected KEY=VALUE"),
    (["--label", "method=lcron rocks"], "expected KEY=VALUE"),
    (["--retries", "-1"], "--retries must be >= 0"),
    (["--retry-backoff", "60s"], "need --retries"),
    (["--retries", "2", "--retry-backoff", "a minute"], "expected seconds"),
    (["--timeout", "trian=60"], "unknown step 'trian'"),
    (["--timeout", "train=0"], "whole number of seconds >= 1"),
    (["--timeout", "train"], "expected STEP=VALUE"),
    (["--ephemeral-storage", "train=10Gi"], "needs --ephemeral-storage-mount"),
    (["--ephemeral-storage-mount", "/gcs", "--ephemeral-storage", "train=ten"], "not a Kubernetes quantity"),
    (["--ephemeral-storage-mount", "gcs"], "expected an absolute path"),
    (["--ephemeral-storage-mount", "/s3", "--storage-class", "gp3"], "needs --ephemeral-storage-volume pvc"),
    (["--ephemeral-storage-volume", "pvc"], "needs --ephemeral-storage-mount"),
    (["--gcs-key-file", "sa.json"], "needs --gcs-key-secret"),
])
def test_bad_kubernetes_options_are_usage_errors(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exc:
        pcompile.main(["--out", str(tmp_path), *args])
    assert exc.value.code == 2 and message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_disk_as_empty_dir_by_default_sized_per_step(tmp_path):
    assert pcompile.main(["--out", str(tmp_path), "--variants", "cpu", "--resource-profile", "small",
                          "--ephemeral-storage-mount", "/minio", "--ephemeral-storage", "train=30Gi"]) == 0
    executors = _executors(_docs(tmp_path / "cascade-cpu.yaml")[1])
    sizes = resources.EPHEMERAL_STORAGE["small"] | {"train": "30Gi"}
    for name, cfg in executors.items():
        assert cfg == {"emptyDirMounts": [{"volumeName": k8s.EPHEMERAL_VOLUME, "mountPath": "/minio",
                                           "sizeLimit": sizes[step_of(name)]}]}, name
    assert {step_of(name) for name in executors} == set(STEPS)


def test_no_disk_with_profile_none_unless_given(tmp_path):
    assert pcompile.main(["--out", str(tmp_path), "--variants", "cpu", "--resource-profile", "none",
                          "--ephemeral-storage-mount", "/s3", "--ephemeral-storage-volume", "pvc",
                          "--ephemeral-storage", "train=30Gi"]) == 0
    executors = _executors(_docs(tmp_path / "cascade-cpu.yaml")[1])
    assert set(executors) == {"train"}
    assert executors["train"]["genericEphemeralVolume"][0]["size"] == "30Gi"
    assert executors["train"]["genericEphemeralVolume"][0]["defaultStorageClass"] is True


def test_packages_with_kubernetes_options_still_load_for_kfp_local(tmp_path):
    """kfp.local reads the package's pipeline spec and ignores the platform spec."""
    from kfp import components

    assert pcompile.main(["--out", str(tmp_path), "--variants", "cpu", *ALL_OPTIONS]) == 0
    pipeline = components.load_component_from_file(str(tmp_path / "cascade-cpu.yaml"))
    assert pipeline.name == "lcron-cascade"


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_pipeline_passes_k8s_through(tmp_path):
    """`make pipeline K8S='...'` hands the options to pipelines.compile unchanged."""
    k8s_args = "--retries 2 --retry-backoff 60s --label lcron.dev/git-sha=abc1234"
    out = subprocess.run(["make", "-s", "-n", "pipeline", "TAG=v7", "STAMP=pyproject.toml", f"K8S={k8s_args}"],
                         cwd=ROOT, check=True, capture_output=True, text=True, timeout=120).stdout
    line = next(x for x in out.replace("\\\n", " ").splitlines() if "-m pipelines.compile" in x)
    argv = shlex.split(line)
    argv = argv[argv.index("pipelines.compile") + 1:]
    assert argv[-len(k8s_args.split()):] == k8s_args.split()
    argv[argv.index("--out") + 1] = str(tmp_path)
    subprocess.run([sys.executable, "-m", "pipelines.compile", *argv, "--variants", "cpu"], cwd=ROOT, check=True,
                   capture_output=True, timeout=300)
    spec, platform = _docs(tmp_path / "cascade-cpu.yaml")
    assert spec["root"]["dag"]["tasks"]["train"]["retryPolicy"]["maxRetryCount"] == 2
    assert _executors(platform)["report"]["podMetadata"]["labels"]["lcron.dev/git-sha"] == "abc1234"


@pytest.mark.slow
def test_a_package_with_kubernetes_options_runs_under_kfp_local(tmp_path):
    """kfp.local runs the package (it ignores the platform spec; retries are only on failure).
    The local variant: a cluster package's dsl.If is refused by run_local (test_local_run.py)."""
    import json

    from pipelines import run_local

    options = list(ALL_OPTIONS)
    at = options.index("--gcs-key-secret")  # a local run has no key file at /var/secrets/google
    del options[at:at + 4]
    assert pcompile.main(["--out", str(tmp_path / "build"), "--variants", "local", "--resource-profile", "small",
                          *options]) == 0
    tiny = {"synthetic_days": 3, "synthetic_requests_per_day": 80, "synthetic_users": 50, "synthetic_items": 300,
            "synthetic_seed": 1, "seeds": [1], "batch_size": 16, "compile": False, "eval_batch_size": 64}
    root = tmp_path / "kfp-local"
    argv = ["--package", str(tmp_path / "build" / "cascade-local.yaml"), "--pipeline-root", str(root),
            *[f"{k}={json.dumps(v)}" for k, v in tiny.items()]]
    assert run_local.main(argv) == 0
    assert 0.0 <= json.loads((root / "latest.json").read_text())["metrics"]["joint_recall"] <= 1.0
