"""lcron.hugepages: ``import lcron`` asks PyTorch for huge pages unless the environment says."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from lcron import hugepages

_PROBE = "import os, lcron; print(os.environ.get('THP_MEM_ALLOC_ENABLE'))"


def _import_lcron(env_value: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != hugepages.ENV}
    if env_value is not None:
        env[hugepages.ENV] = env_value
    return subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.mark.parametrize("preset, seen", [(None, "1"), ("0", "0"), ("1", "1")])
def test_import_sets_the_switch_unless_already_set(preset, seen):
    assert _import_lcron(preset) == seen


@pytest.mark.parametrize("value, asked", [("1", True), ("0", False), ("", False)])
def test_ask_reports_what_the_environment_says(monkeypatch, value, asked):
    monkeypatch.setenv(hugepages.ENV, value)
    assert hugepages.ask_for_huge_pages() is asked
    assert os.environ[hugepages.ENV] == value                            # never overrides the user


def test_ask_sets_it_when_absent(monkeypatch):
    monkeypatch.delenv(hugepages.ENV, raising=False)
    assert hugepages.ask_for_huge_pages() is True and os.environ[hugepages.ENV] == "1"
