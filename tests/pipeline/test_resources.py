"""Compile-time CPU/memory requests and limits, and the one image reference of the Makefile:
`make pipeline` compiles exactly the images `make push` pushes."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipelines import compile as pcompile
from pipelines import resources

from .compiled import step_of

ROOT = Path(__file__).resolve().parents[2]


def _containers(path: Path) -> dict[str, dict]:
    spec = next(d for d in yaml.safe_load_all(path.read_text()) if d)
    return {name.removeprefix("exec-"): e["container"] for name, e in spec["deploymentSpec"]["executors"].items()}


def test_default_profile_sizes_preprocess_for_a_real_day(tmp_path):
    assert pcompile.main(["--out", str(tmp_path), "--variants", "cpu"]) == 0
    res = _containers(tmp_path / "cascade-cpu.yaml")
    pre = res["preprocess"]["resources"]
    # the documented bound for a 300,000-request day is 9.3 GiB (docs/scale.md)
    assert pre["resourceMemoryRequest"] == "12G" and pre["resourceMemoryLimit"] == "12G"
    assert _gib(pre["resourceMemoryRequest"]) > 9.3
    assert pre["resourceCpuRequest"] == "4" and pre["resourceCpuLimit"] == "8"
    assert {step_of(name) for name in res} == set(resources.STEPS)  # report-2: the other branch's report
    assert res["report-2"] == res["report"]
    assert all("resourceMemoryRequest" in c["resources"] for c in res.values())


def _gib(quantity: str) -> float:
    units = {"G": 1e9 / 2**30, "Gi": 1.0, "M": 1e6 / 2**30, "Mi": 1 / 1024}
    number = quantity.rstrip("GMi")
    return float(number) * units[quantity[len(number):]]


# Allocatable on common one-GPU nodes of 8 vCPU (GKE n1-standard-8 + T4: 30 GB, the smallest):
# capacity less the kubelet's reservations (GKE: 25% of the first 4 GiB, 20% of the next 4, 10%
# of the next 8, 6% of the rest, + 100 MiB eviction threshold; CPU 6% of the first core, 1% of
# the next, 0.5% of the next 2, 0.25% above).
N1_STANDARD_8 = {"cpu": 8 - (0.06 + 0.01 + 2 * 0.005 + 4 * 0.0025), "memory_gib": 30 - (1 + 0.8 + 0.8 + 0.06 * 14)
                 - 0.1}


def test_gpu_package_steps_fit_a_one_gpu_node(tmp_path):
    """The GPU package's train, evaluate and serving fit n1-standard-8 + T4 with ~1 CPU and
    ~4 GiB left for the node's daemon sets; the CPU package keeps the CPU profile."""
    assert pcompile.main(["--out", str(tmp_path), "--variants", "cpu,gpu"]) == 0
    gpu, cpu = _containers(tmp_path / "cascade-gpu.yaml"), _containers(tmp_path / "cascade-cpu.yaml")
    for step in resources.GPU_STEPS:
        r = gpu[step]["resources"]
        assert float(r["resourceCpuRequest"]) <= N1_STANDARD_8["cpu"] - 1, step
        assert _gib(r["resourceMemoryRequest"]) <= N1_STANDARD_8["memory_gib"] - 4, step
        assert r["accelerator"]["resourceType"] == "nvidia.com/gpu"
        assert cpu[step]["resources"]["resourceMemoryRequest"] == resources.PROFILES["recflow"][step].memory
    assert gpu["preprocess"]["resources"] == cpu["preprocess"]["resources"]  # CPU steps: the same profile
    # an override still wins on the GPU package
    assert pcompile.main(["--out", str(tmp_path / "o"), "--variants", "gpu", "--memory", "train=20Gi"]) == 0
    assert _containers(tmp_path / "o" / "cascade-gpu.yaml")["train"]["resources"]["resourceMemoryRequest"] == "20Gi"


def test_overrides_and_profiles(tmp_path):
    assert pcompile.main(["--out", str(tmp_path), "--variants", "gpu", "--resource-profile", "small",
                          "--memory", "train=3Gi", "--cpu-limit", "train=4"]) == 0
    res = _containers(tmp_path / "cascade-gpu.yaml")
    assert res["train"]["resources"]["resourceMemoryRequest"] == "3Gi"
    assert res["train"]["resources"]["resourceCpuLimit"] == "4"
    assert res["train"]["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert res["report"]["resources"]["resourceMemoryRequest"] == "2G"
    assert pcompile.main(["--out", str(tmp_path / "none"), "--variants", "cpu", "--resource-profile", "none"]) == 0
    assert all("resources" not in c for c in _containers(tmp_path / "none" / "cascade-cpu.yaml").values())


@pytest.mark.parametrize("args, message", [
    (["--memory", "preprocess=lots"], "memory of preprocess: 'lots' is not a Kubernetes quantity"),
    (["--cpu", "prepro=2"], "unknown step 'prepro'"),
    (["--cpu", "train"], "expected STEP=VALUE"),
])
def test_bad_resource_options_are_usage_errors(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exc:
        pcompile.main(["--out", str(tmp_path), *args])
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_resolve_rejects_unknown_profile_and_field():
    with pytest.raises(ValueError, match="unknown resource profile 'huge'"):
        resources.resolve("huge")
    with pytest.raises(ValueError, match="unknown resource field 'gpu'"):
        resources.resolve("small", {"gpu": {"train": "1"}})


def _make(*args: str) -> str:
    res = subprocess.run(["make", "-s", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return res.stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_pipeline_names_exactly_the_pushed_images(tmp_path):
    """The compiled packages name the images `make push` pushes, for the same REGISTRY and TAG."""
    where = ["REGISTRY=registry.example:5000/team", "TAG=v7", "STAMP=pyproject.toml"]
    refs = _make("image-refs", *where).split()
    assert refs == ["registry.example:5000/team/lcron-pipelines:v7", "registry.example:5000/team/lcron-pipelines:v7-gpu"]
    dry = _make("-n", "push", *where)
    assert [line.split()[-1] for line in dry.splitlines() if line.startswith("docker push")] == refs
    compile_line = next(line for line in _make("-n", "pipeline", *where).replace("\\\n", " ").splitlines()
                        if "-m pipelines.compile" in line)
    argv = shlex.split(compile_line)
    argv = argv[argv.index("pipelines.compile") + 1:]
    argv[argv.index("--out") + 1] = str(tmp_path)
    subprocess.run([sys.executable, "-m", "pipelines.compile", *argv], cwd=ROOT, check=True, capture_output=True,
                   timeout=300)
    for variant, ref in zip(("cpu", "gpu"), refs):
        images = {c["image"] for c in _containers(tmp_path / f"cascade-{variant}.yaml").values()}
        assert images == {ref}
