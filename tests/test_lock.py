"""The images' locks (docker/lock-{cpu,gpu}.txt, made by `make lock`) agree with pyproject.toml.

Checked offline: each lock records the digest of the pyproject dependency lists it was made
from, pins every dependency (with the pipeline extra) at a version pyproject allows, with a
sha256 on every line, and each variant carries its own torch build.
"""

from __future__ import annotations

import importlib.util
import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LINE = re.compile(r"^(?P<name>[A-Za-z0-9._-]+)==(?P<version>\S+) --hash=sha256:(?P<sha>[0-9a-f]{64})$")


def _lock_module():
    spec = importlib.util.spec_from_file_location("lcron_docker_lock", ROOT / "docker" / "lock.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _pins(variant: str) -> tuple[str, dict[str, Version]]:
    lines = (ROOT / "docker" / f"lock-{variant}.txt").read_text().splitlines()
    header = lines[0]
    pins = {}
    for line in lines[1:]:
        if not line or line.startswith("#"):
            continue
        m = LINE.match(line)
        assert m, f"lock-{variant}.txt: not 'name==version --hash=sha256:...': {line!r}"
        pins[canonicalize_name(m["name"])] = Version(m["version"])
    return header, pins


@pytest.mark.parametrize("variant", ["cpu", "gpu"])
def test_the_lock_was_made_from_this_pyproject(variant):
    header, _ = _pins(variant)
    digest = _lock_module().pyproject_digest()
    assert header == f"# pyproject-sha256: {digest}", (
        f"docker/lock-{variant}.txt was made from other dependency lists than pyproject.toml's: run `make lock`")


@pytest.mark.parametrize("variant", ["cpu", "gpu"])
def test_every_dependency_is_pinned_at_a_version_pyproject_allows(variant):
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    _, pins = _pins(variant)
    for text in project["dependencies"] + project["optional-dependencies"]["pipeline"]:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name in pins, f"lock-{variant}.txt does not pin {req.name}: run `make lock`"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"lock-{variant}.txt pins {req.name}=={pins[name]}, which pyproject's {text!r} does not allow")


def test_each_image_has_its_own_torch_build():
    _, cpu = _pins("cpu")
    _, gpu = _pins("gpu")
    assert str(cpu["torch"]) == "2.13.0+cpu"
    assert not [n for n in cpu if n.startswith(("nvidia-", "cuda-")) or n == "triton"]
    assert str(gpu["torch"]) == "2.13.0"
    assert gpu["cuda-toolkit"].major == 13 and gpu["nvidia-cuda-runtime"].major == 13
    assert not [n for n in gpu if n.endswith("-cu12")]
    assert gpu["faiss-cpu"] == cpu["faiss-cpu"]  # retrieval on the GPU goes through torch
