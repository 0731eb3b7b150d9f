"""Thread pools sized to the container's CPU quota (lcron.cpu_quota), read from a fake
cgroup tree (v1 and v2), and end to end in a fresh process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lcron import cpu_quota


def _v2(tmp_path: Path, limits: dict[str, str], rel: str = "/kubepods/pod1/ctr") -> tuple[Path, Path]:
    root = tmp_path / "cg"
    for folder, value in limits.items():
        (root / folder.strip("/")).mkdir(parents=True, exist_ok=True)
        (root / folder.strip("/") / "cpu.max").write_text(value + "\n")
    (root / rel.strip("/")).mkdir(parents=True, exist_ok=True)
    proc = tmp_path / "cgroup"
    proc.write_text(f"0::{rel}\n")
    return root, proc


def _v1(tmp_path: Path, quota: int, period: int, rel: str = "/kubepods/pod1/ctr",
        controller: str = "cpu,cpuacct") -> tuple[Path, Path]:
    root = tmp_path / "cg1"
    folder = root / controller / rel.strip("/")
    folder.mkdir(parents=True)
    (folder / "cpu.cfs_quota_us").write_text(f"{quota}\n")
    (folder / "cpu.cfs_period_us").write_text(f"{period}\n")
    proc = tmp_path / "cgroup1"
    proc.write_text(f"12:memory:/x\n4:{controller}:{rel}\n0::/\n")
    return root, proc


def test_v2_quota_of_the_cgroup_or_an_ancestor(tmp_path):
    root, proc = _v2(tmp_path, {"kubepods/pod1/ctr": "200000 100000"})
    assert cpu_quota.cgroup_cpu_limit(root, proc) == 2.0
    root, proc = _v2(tmp_path / "b", {"kubepods/pod1/ctr": "max 100000", "kubepods/pod1": "50000 100000"})
    assert cpu_quota.cgroup_cpu_limit(root, proc) == 0.5  # the pod's limit applies to its container
    root, proc = _v2(tmp_path / "c", {"kubepods/pod1/ctr": "max 100000"})
    assert cpu_quota.cgroup_cpu_limit(root, proc) is None


@pytest.mark.parametrize("controller", ["cpu,cpuacct", "cpu"])
def test_v1_quota(tmp_path, controller):
    root, proc = _v1(tmp_path, 150000, 100000, controller=controller)
    assert cpu_quota.cgroup_cpu_limit(root, proc) == 1.5
    root, proc = _v1(tmp_path / "b", -1, 100000, controller=controller)
    assert cpu_quota.cgroup_cpu_limit(root, proc) is None


def test_no_cgroup_files_mean_no_limit(tmp_path):
    assert cpu_quota.cgroup_cpu_limit(tmp_path / "none", tmp_path / "none-either") is None
    (tmp_path / "garbage").write_text("\x00\x01 not a cgroup file")
    assert cpu_quota.cgroup_cpu_limit(tmp_path, tmp_path / "garbage") is None


def test_usable_cpus_rounds_a_fractional_quota_up_and_never_exceeds_the_affinity():
    cpus = len(os.sched_getaffinity(0))
    assert cpu_quota.usable_cpus(0.5) == 1
    assert cpu_quota.usable_cpus(1.5) == min(2, cpus)
    assert cpu_quota.usable_cpus(1000.0) == cpus


def _threads_in_a_fresh_process(env: dict[str, str]) -> str:
    code = "import lcron, torch, os; print(torch.get_num_threads(), os.environ.get('OMP_NUM_THREADS'))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, **env})
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs to see a quota below them")
def test_a_quota_below_the_cpus_sizes_torch_and_openmp(tmp_path):
    root, proc = _v2(tmp_path, {"kubepods/pod1/ctr": "100000 100000"})
    env = {"LCRON_CGROUP_ROOT": str(root), "LCRON_PROC_CGROUP": str(proc)}
    for var in cpu_quota.THREAD_VARIABLES:
        env[var] = ""
    assert _threads_in_a_fresh_process(env) == "1 1"
    env["OMP_NUM_THREADS"] = "2"  # the user's choice wins
    assert _threads_in_a_fresh_process(env) == "2 2"
