"""Images the cluster cannot confuse (pipelines.images): a tag that names the commit and the
locks and says when the tree was dirty, and compiled pipelines that name the pushed digests."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from pipelines import compile as pcompile
from pipelines import images

DIGEST = "sha256:" + "ab" * 32


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=True).stdout


@pytest.fixture
def repo(tmp_path):
    root = tmp_path / "repo"
    (root / "lcron").mkdir(parents=True)
    (root / "docker").mkdir()
    (root / "tests").mkdir()
    (root / "lcron" / "x.py").write_text("x = 1\n")
    (root / "docker" / "lock-cpu.txt").write_text("torch==2.13.0+cpu --hash=sha256:00\n")
    (root / "docker" / "lock-gpu.txt").write_text("torch==2.13.0 --hash=sha256:11\n")
    (root / "tests" / "t.py").write_text("")
    _git(root, "init", "-q")
    _git(root, "-c", "user.email=a@b", "-c", "user.name=a", "add", "-A")
    _git(root, "-c", "user.email=a@b", "-c", "user.name=a", "commit", "-qm", "x")
    return root


def test_the_tag_names_the_commit_and_the_locks_and_marks_a_dirty_tree(repo):
    sha = _git(repo, "rev-parse", "--short", "HEAD").strip()
    clean = images.source_tag(repo)
    assert clean == f"{sha}-{images.lock_digest(repo)}" and len(images.lock_digest(repo)) == 8
    (repo / "tests" / "t.py").write_text("changed")  # not part of the images: still clean
    assert images.source_tag(repo) == clean
    (repo / "lcron" / "x.py").write_text("x = 2\n")
    assert images.source_tag(repo) == f"{clean}-dirty"
    _git(repo, "checkout", "--", "lcron/x.py")
    (repo / "docker" / "new.sh").write_text("")  # untracked files that go into an image count
    assert images.source_tag(repo).endswith("-dirty") and images.dirty_files(repo) == ["docker/new.sh"]
    (repo / "docker" / "new.sh").unlink()
    (repo / "docker" / "lock-gpu.txt").write_text("torch==2.13.1 --hash=sha256:22\n")
    _git(repo, "-c", "user.email=a@b", "-c", "user.name=a", "commit", "-qam", "new lock")
    assert images.source_tag(repo).split("-")[1] != clean.split("-")[1]  # another lock, another tag


def test_check_clean_refuses_a_dirty_tree(monkeypatch, capsys):
    monkeypatch.setattr(images, "dirty_files", lambda: [])
    assert images.main(["check-clean"]) == 0
    monkeypatch.setattr(images, "dirty_files", lambda: ["lcron/x.py"])
    assert images.main(["check-clean"]) == 2
    assert "the tree has changes not in a commit (lcron/x.py)" in capsys.readouterr().err


def _fake_docker(monkeypatch, digests: dict[str, list[str]]):
    real = subprocess.run

    def run(cmd, *args, **kwargs):
        if cmd[:3] == ["docker", "image", "inspect"]:
            ref = cmd[-1]
            if ref not in digests:
                return subprocess.CompletedProcess(cmd, 1, "", f"No such image: {ref}")
            return subprocess.CompletedProcess(cmd, 0, json.dumps(digests[ref]), "")
        return real(cmd, *args, **kwargs)

    monkeypatch.setattr(images.subprocess, "run", run)


def test_record_and_compile_with_the_pushed_digests(tmp_path, monkeypatch, capsys):
    cpu, gpu = "reg.example:5000/lcron:abc-1234", "reg.example:5000/lcron:abc-1234-gpu"
    _fake_docker(monkeypatch, {cpu: ["other.example/lcron@sha256:" + "cd" * 32, f"reg.example:5000/lcron@{DIGEST}"],
                               gpu: [f"reg.example:5000/lcron@sha256:{'ef' * 32}"]})
    record = tmp_path / "images.json"
    doc = images.record({"cpu": cpu, "gpu": gpu}, record)
    assert doc["cpu"] == {"tag": cpu, "digest": f"reg.example:5000/lcron@{DIGEST}"}
    out = tmp_path / "build"
    assert pcompile.main(["--out", str(out), "--image-ref", cpu, "--pushed", str(record),
                          "--resource-profile", "none"]) == 0
    printed = capsys.readouterr().out
    assert f"(image reg.example:5000/lcron@{DIGEST} = {cpu} as pushed" in printed
    for variant, want in (("cpu", f"reg.example:5000/lcron@{DIGEST}"),
                          ("gpu", f"reg.example:5000/lcron@sha256:{'ef' * 32}")):
        spec = yaml.safe_load((out / f"cascade-{variant}.yaml").read_text())
        used = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
        assert used == {want}, variant
    # a record of other tags (an earlier push) is not used: the tags are compiled as they are
    assert pcompile.main(["--out", str(out), "--image-ref", "reg.example:5000/lcron:new-5678", "--pushed",
                          str(record), "--resource-profile", "none", "--variants", "cpu"]) == 0
    spec = yaml.safe_load((out / "cascade-cpu.yaml").read_text())
    assert {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()} == {
        "reg.example:5000/lcron:new-5678"}


def test_record_needs_a_pushed_image(monkeypatch, tmp_path):
    _fake_docker(monkeypatch, {"r/x:t": []})
    with pytest.raises(SystemExit, match=r"r/x:t has no digest in r/x: push it first"):
        images.record({"cpu": "r/x:t"}, tmp_path / "i.json")
    with pytest.raises(SystemExit, match="is not a local image"):
        images.record({"cpu": "r/y:t"}, tmp_path / "i.json")
