"""The eight losses against the published reference implementation (spec reference cases).

The oracle file lives beside the repository (``../shared/spec/reference_cases``), also in
CI. A missing file is a failure, not a skip: these cases are the acceptance test.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from lcron.losses import build_loss

from losses.spec import EIGHT  # tests/losses/spec.py: the spec's eight (METHODS.md section 5); other registered methods have no cases

CASES_FILE = Path(__file__).resolve().parents[2].parent / "shared/spec/reference_cases/losses.json"


def _cases() -> list[dict]:
    return json.loads(CASES_FILE.read_text()) if CASES_FILE.is_file() else []


CASES = _cases()


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """Tiny tensors: one intra-op thread, as for the other loss tests (tests/losses/conftest.py)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_reference_file_is_present_and_complete():
    assert CASES_FILE.is_file(), f"reference cases missing: {CASES_FILE}"
    assert len(CASES) == 32
    assert Counter((c["method"], c["setting"]) for c in CASES) == {(m, s): 2 for m in EIGHT for s in (2, 3)}


@pytest.mark.parametrize("case", CASES, ids=[f"{c['method']}-{c['setting']}stage-{i}" for i, c in enumerate(CASES)])
def test_reference_case(case):
    options = {"reference_quirks": True} if case["icc_reference"] else {}
    assert case["icc_reference"] == (case["method"] == "icc")
    loss = build_loss(case["method"], stages=case["setting"], **options)
    stages = loss.setting.stage_names
    assert sorted(case["logits"]) == sorted(stages)
    logits = [torch.tensor(case["logits"][s], dtype=torch.float32, requires_grad=True) for s in stages]
    labels = torch.tensor(case["labels"])
    assert tuple(labels.shape) == (case["B"], case["N"])
    mask = torch.ones_like(labels)
    out = loss(logits, labels, mask)
    out.total.backward()
    assert out.total.item() == pytest.approx(case["loss"], rel=1e-4)
    for stage, z in zip(stages, logits):
        torch.testing.assert_close(z.grad, torch.tensor(case["grads"][stage]), rtol=1e-3, atol=1e-5,
                                   msg=lambda m: f"gradient of stage {stage}: {m}")
    # Learned loss weights start at 1 (the reference cases assume it).
    for p in loss.parameters():
        assert torch.all(p == 1)
