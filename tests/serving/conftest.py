"""Fixtures of the serving tests: tiny trained runs (session-scoped) and an exported cascade."""

from __future__ import annotations

from pathlib import Path

import pytest


def _train(shards, out: Path) -> Path:
    from lcron.train import TrainConfig, train

    train(shards, out, TrainConfig(method="bce", batch_size=16, seeds=(1,), compile=False),
          max_steps_per_day=2, progress=False)
    return out


@pytest.fixture(scope="session")
def run_2(tiny_shards_2, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-stage run trained for 2 steps per day (BCE, seed 1) on tiny_shards_2."""
    return _train(tiny_shards_2, tmp_path_factory.mktemp("serving_runs") / "two_stage")


@pytest.fixture(scope="session")
def run_3(tiny_shards_3, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A three-stage run trained for 2 steps per day (BCE, seed 1) on tiny_shards_3."""
    return _train(tiny_shards_3, tmp_path_factory.mktemp("serving_runs") / "three_stage")


@pytest.fixture(scope="session")
def exported_2(run_2: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """run_2 exported with the exact index."""
    from lcron.serving.export import export_cascade

    return export_cascade(run_2, tmp_path_factory.mktemp("serving_export") / "cascade-2")
