"""Shared fixtures of the pipeline tests: the repository on sys.path, tiny data, fake artifacts."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # components/ and pipelines/ are not installed packages
    sys.path.insert(0, str(ROOT))

# Small enough for seconds, large enough that every stage group has items: 3 days x 80 requests.
TINY_SYNTHETIC = {"num_days": 3, "requests_per_day": 80, "users": 50, "items": 300, "seed": 1}


class FakeArtifact:
    """Stands in for a KFP artifact in direct calls of a component's python_func."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.metadata: dict[str, Any] = {}

    def log_metric(self, key: str, value: float) -> None:
        self.metadata[key] = value


@pytest.fixture(scope="session")
def tiny_recflow(tmp_path_factory) -> Path:
    """A tiny synthetic RecFlow folder (3 days, 2024-01-13 .. 2024-01-15)."""
    from lcron.data.synthetic import generate

    return generate(tmp_path_factory.mktemp("recflow") / "src", progress=False, **TINY_SYNTHETIC)
