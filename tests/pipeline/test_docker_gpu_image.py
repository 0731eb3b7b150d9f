"""The GPU image, run by a real Docker engine on a machine without a GPU: torch's CUDA build
with one CUDA major in every CUDA wheel, a GPU retrieval path, and a clear error for
``--device cuda`` where no GPU can be used.

These tests need the image, so they run under ``make test-docker-gpu`` (which builds it and
sets LCRON_TEST_GPU_IMAGE); without it they skip. docs/docker.md says what CI runs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

pytestmark = pytest.mark.docker

# Per CUDA distribution of the image: its CUDA major, from its name (nvidia-cudnn-cu13), the
# folder its libraries install into (nvidia/cu13/lib), or its version (cuda-toolkit 13.0.3).
INSPECT = r"""
import importlib.metadata as m, json, re, torch
found = {}
for d in m.distributions():
    name = d.metadata['Name'].lower()
    if not name.startswith(('nvidia-', 'cuda-')):
        continue
    files = [str(f) for f in (d.files or [])]
    libs = [f for f in files if '.so' in f]
    majors = set(re.findall(r'-cu(\d+)$', name))
    majors |= {x for f in libs for x in re.findall(r'nvidia/cu(\d+)/', f)}
    if not majors and name in ('cuda-toolkit', 'cuda-bindings', 'nvidia-cuda-runtime'):
        majors = {d.version.split('.')[0]}
    found[name] = {'version': d.version, 'majors': sorted(majors), 'libs': len(libs)}
print(json.dumps({'torch': torch.__version__, 'cuda': torch.version.cuda, 'dists': found}))
"""


@pytest.fixture(scope="module")
def gpu_image() -> str:
    ref = os.environ.get("LCRON_TEST_GPU_IMAGE")
    if not ref:
        pytest.skip("GPU image tests run under `make test-docker-gpu` (it builds the image and sets "
                    "LCRON_TEST_GPU_IMAGE)")
    if shutil.which("docker") is None or subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        pytest.fail("LCRON_TEST_GPU_IMAGE is set but no Docker engine answers: start dockerd (docs/docker.md)")
    if subprocess.run(["docker", "image", "inspect", ref], capture_output=True).returncode != 0:
        pytest.fail(f"image {ref} is not built: run `make image-gpu` with the same REGISTRY/TAG")
    return ref


def _run(image: str, *args: str, entrypoint: str | None = None) -> subprocess.CompletedProcess:
    cmd = ["docker", "run", "--rm", "--network", "none"]
    if entrypoint:
        cmd += ["--entrypoint", entrypoint]
    return subprocess.run([*cmd, image, *args], capture_output=True, text=True, timeout=600)


def test_torch_is_the_cuda_build_and_every_cuda_wheel_has_its_major(gpu_image):
    res = _run(gpu_image, "-c", INSPECT, entrypoint="python3")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout.strip().splitlines()[-1])
    assert doc["torch"].split("+")[0] == "2.13.0" and doc["cuda"] == "13.0", doc
    major = doc["cuda"].split(".")[0]
    dists = doc["dists"]
    assert {"nvidia-cudnn-cu13", "nvidia-cuda-runtime", "nvidia-nccl-cu13"} <= set(dists), sorted(dists)
    for name, info in dists.items():
        if info["libs"] or info["majors"]:  # cuda-pathfinder holds no library and names no major
            assert info["majors"] == [major], f"{name} {info}"


def test_serving_has_a_gpu_retrieval_path(gpu_image):
    """faiss here is faiss-cpu (no faiss GPU wheel shares CUDA 13): GPU retrieval goes through torch."""
    script = ("import faiss, torch; from lcron.serving import index as ix\n"
              "print(hasattr(faiss, 'index_cpu_to_all_gpus') and faiss.get_num_gpus() > 0)\n"
              "print(ix.TorchFlatIndex.__name__, ix.to_device.__doc__.count('TorchFlatIndex'))\n")
    res = _run(gpu_image, "-c", script, entrypoint="python3")
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["False", "TorchFlatIndex", "1"]


def test_device_cuda_without_a_gpu_fails_naming_the_reason(gpu_image):
    res = _run(gpu_image, "train", "--shards", "/nonexistent", "--out", "/tmp/run", "--method", "bce",
               "--device", "cuda")
    assert res.returncode == 2, res.stdout + res.stderr
    line = res.stderr.strip().splitlines()[-1]
    assert "Traceback" not in res.stderr
    assert line.startswith("lcron train: error: --device cuda was asked for, but CUDA is not usable here: no NVIDIA "
                           "driver is visible to this process"), line


def test_device_cuda_reason_in_the_image_names_the_driver(gpu_image):
    script = ("from lcron import devices\n"
              "try:\n    devices.resolve_device('cuda')\nexcept Exception as e:\n    print(e)\n")
    res = _run(gpu_image, "-c", script, entrypoint="python3")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().startswith(
        "--device cuda was asked for, but CUDA is not usable here: no NVIDIA driver is visible to this process "
        "(libcuda.so.1 cannot be loaded; NVIDIA_VISIBLE_DEVICES='all'); this PyTorch is built for CUDA 13.0 and "
        "needs a driver >= 580.65.06"), res.stdout


def test_image_user_is_not_root_and_gcc_is_there_for_torch_compile(gpu_image):
    res = _run(gpu_image, "-c", "id -u; gcc --version | head -1; python3 -c \"import sysconfig, os; "
               "print(os.path.exists(sysconfig.get_paths()['include'] + '/Python.h'))\"", entrypoint="sh")
    assert res.returncode == 0, res.stderr
    uid, gcc, headers = res.stdout.strip().splitlines()
    assert uid == "1000" and gcc.startswith("gcc") and headers == "True"
