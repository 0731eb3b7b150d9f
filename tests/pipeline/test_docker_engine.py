"""The built image, run by a real Docker engine: --help, one real step as a non-root user
on a mounted folder, the whole compiled pipeline through kfp.local's DockerRunner, and the
message for a base image that cannot be had.

These tests need the image, so they run under ``make test-docker`` (which builds it and
sets LCRON_TEST_IMAGE); CI runs that target. Without LCRON_TEST_IMAGE they skip; with it
and no engine they fail, naming what to start.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from pipelines import run_local

pytestmark = pytest.mark.docker
ROOT = Path(__file__).resolve().parents[2]
# Tiny synthetic data and one seed: the pipeline's seven containers in a few minutes.
TINY = ["synthetic_days=3", "synthetic_requests_per_day=80", "synthetic_users=50", "synthetic_items=300",
        "synthetic_seed=1", "seeds=[1]", "batch_size=16", "compile=false", "eval_batch_size=64"]


@pytest.fixture(scope="module")
def image() -> str:
    ref = os.environ.get("LCRON_TEST_IMAGE")
    if not ref:
        pytest.skip("Docker image tests run under `make test-docker` (it builds the image and sets LCRON_TEST_IMAGE)")
    if shutil.which("docker") is None or subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        pytest.fail("LCRON_TEST_IMAGE is set but no Docker engine answers: start dockerd (docs/docker.md)")
    if subprocess.run(["docker", "image", "inspect", ref], capture_output=True).returncode != 0:
        pytest.fail(f"image {ref} is not built: run `make image` with the same REGISTRY/TAG")
    return ref


def _docker(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)


def test_help_runs_the_lcron_command(image):
    res = _docker("run", "--rm", "--network", "none", image, "--help")
    assert res.returncode == 0, res.stderr
    assert "preprocess" in res.stdout and "usage: lcron" in res.stdout


def test_the_cpu_image_holds_no_cuda_library(image):
    """The CPU image must carry torch's CPU build: no nvidia-* / CUDA wheel and no CUDA shared
    library anywhere in its site-packages (a CUDA torch would add several GB and nothing else)."""
    script = ("import importlib.metadata as m, pathlib, site, torch\n"
              "dists = sorted(d.metadata['Name'] for d in m.distributions())\n"
              "libs = sorted(str(p) for s in site.getsitepackages() for p in pathlib.Path(s).rglob('lib*.so*')\n"
              "              if any(k in p.name for k in ('cuda', 'cudnn', 'cublas', 'nccl', 'cusparse', 'nvrtc')))\n"
              "print(torch.__version__, torch.version.cuda)\n"
              "print([d for d in dists if d.lower().startswith(('nvidia', 'cuda', 'triton'))])\n"
              "print(libs)\n")
    res = _docker("run", "--rm", "--network", "none", "--entrypoint", "python3", image, "-c", script)
    assert res.returncode == 0, res.stderr
    version, dists, libs = res.stdout.strip().splitlines()
    assert version.endswith(" None"), version  # torch.version.cuda is None: the CPU build
    assert dists == "[]" and libs == "[]", res.stdout


def test_image_user_is_not_root(image):
    res = _docker("run", "--rm", "--network", "none", "--entrypoint", "id", image, "-u")
    assert res.returncode == 0 and res.stdout.strip() == "1000"


def test_preprocess_step_on_a_mounted_folder_as_non_root(image, tiny_recflow, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(tiny_recflow, work / "recflow")
    os.chmod(work, 0o777)  # the image's user (uid 1000) writes the shards here
    res = _docker("run", "--rm", "--network", "none", "-v", f"{work}:/data", image, "preprocess",
                  "--source", "/data/recflow", "--out", "/data/shards", "--stages", "2")
    assert res.returncode == 0, res.stdout + res.stderr
    manifests = sorted((work / "shards").rglob("*.json"))
    assert manifests, sorted(p.name for p in (work / "shards").rglob("*"))
    assert {p.stat().st_uid for p in manifests} == {1000}


def test_whole_pipeline_in_containers_leaves_the_report(image, tmp_path, capsys):
    root = tmp_path / "kfp"
    rc = run_local.main(["--docker", "--image", image, "--pipeline-root", str(root), *TINY])
    out = capsys.readouterr().out
    assert rc == 0, out
    latest = json.loads((root / "latest.json").read_text())
    report = Path(latest["paths"]["report_files"]) / "report.html"
    assert report.is_file() and "<html" in report.read_text().lower()
    assert 0.0 <= latest["metrics"]["joint_recall"] <= 1.0
    assert "report (HTML)" in out


def test_pipeline_in_containers_reads_an_s3_source(image, tiny_recflow, tmp_path, monkeypatch, capsys):
    """source=s3://... from moto's S3 server on loopback; the steps reach it over the host
    network with the AWS_* variables run_local passes in."""
    import socket

    import boto3
    from moto.server import ThreadedMotoServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        for key, value in {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
                           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
            monkeypatch.setenv(key, value)
        client = boto3.client("s3")
        client.create_bucket(Bucket="recflow")
        for p in sorted(tiny_recflow.rglob("*")):
            if p.is_file():
                client.upload_file(str(p), "recflow", f"tiny/{p.relative_to(tiny_recflow).as_posix()}")
        root = tmp_path / "kfp"
        params = [p for p in TINY if not p.startswith("synthetic_")] + ["source=s3://recflow/tiny"]
        rc = run_local.main(["--docker", "--image", image, "--pipeline-root", str(root), *params])
        out = capsys.readouterr().out
        assert rc == 0, out
        latest = json.loads((root / "latest.json").read_text())
        assert (Path(latest["paths"]["report_files"]) / "report.html").is_file()
        manifests = [json.loads(p.read_text()) for p in root.rglob("ingest.json")]
        assert [m["source"] for m in manifests] == ["s3://recflow/tiny"]
        assert manifests[0]["days"] == ["2024-01-13", "2024-01-14", "2024-01-15"]
    finally:
        server.stop()


def test_pipeline_in_containers_reads_a_local_folder_by_reference(image, tiny_recflow, tmp_path, capsys):
    """source=<folder>: ingest references it (nothing copied into the pipeline root) and every
    container reads it through the read-only mount run_local adds at the same path."""
    src = tmp_path / "recflow"
    shutil.copytree(tiny_recflow, src)
    for path in (tmp_path, *src.rglob("*")):  # readable by the image's user
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    os.chmod(src, 0o755)
    root = tmp_path / "kfp"
    params = [p for p in TINY if not p.startswith("synthetic_")] + [f"source={src}"]
    rc = run_local.main(["--docker", "--image", image, "--pipeline-root", str(root), *params])
    out = capsys.readouterr().out
    assert rc == 0, out
    manifests = list(root.rglob("ingest.json"))
    assert len(manifests) == 1 and json.loads(manifests[0].read_text())["mode"] == "reference"
    assert [p.name for p in manifests[0].parent.iterdir()] == ["ingest.json"]
    assert not list(root.rglob("*.feather"))  # no copy of the source anywhere under the root
    latest = json.loads((root / "latest.json").read_text())
    assert 0.0 <= latest["metrics"]["joint_recall"] <= 1.0


def test_unreachable_base_image_names_the_fix(image):
    res = subprocess.run([str(ROOT / "docker" / "build.sh"), "docker/Dockerfile", "lcron-test:never",
                          "registry.invalid/python:3.11-slim"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 2
    assert "base image registry.invalid/python:3.11-slim is neither local nor pullable" in res.stderr
    assert "make base-image" in res.stderr
