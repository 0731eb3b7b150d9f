"""This project's DSSM/DIN/MLP against the published reference models (spec reference cases).

``reference_cases/models.json`` holds the reference models' parameters, hand-built inputs
and their logits: ``logits`` contain reference quirks 1-3 (reference mode must match them),
``logits_zero_padded_steps`` are what the faithful models give (default mode must match
them). Loading goes through :mod:`lcron.reference.mapping`, the importer of checkpoints
trained by the published code. A missing file is a failure, not a skip.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lcron.errors import ConfigError, DataError
from lcron.models import build_model
from lcron.models.fused import compiled_attention_pool
from lcron.reference import mapping

CASES_FILE = Path(__file__).resolve().parents[2].parent / "shared/spec/reference_cases/models.json"
TOL = 1e-6


def _load() -> dict:
    return json.loads(CASES_FILE.read_text()) if CASES_FILE.is_file() else {"cases": []}


DOC = _load()
CASES = DOC["cases"]
STAGES = [(i, stage) for i, c in enumerate(CASES) for stage in c["models"]]


def _params(case: dict, stage: str) -> dict[str, torch.Tensor]:
    out = {}
    for name, p in case["parameters"][stage].items():
        ints = np.asarray(p["int_values"], dtype=np.float64).reshape(p["shape"])
        out[name] = torch.from_numpy((ints * p["scale"]).astype(np.float32))
    return out


def _inputs(case: dict) -> dict[str, np.ndarray]:
    return {k: np.asarray(v["values"]).reshape(v["shape"]) for k, v in case["inputs"].items()}


def _model(case: dict, stage: str, reference_quirks: bool, compile: bool = False):
    params = _params(case, stage)
    cls = case["models"][stage]
    assert mapping.reference_class(params) == cls
    model = build_model(mapping.KINDS[cls], mapping.embedding_sizes(params), dim=DOC["emb_dim"], compile=compile,
                        reference_quirks=reference_quirks)
    return mapping.load_reference(model, params).eval()


def _logits(case: dict, stage: str, reference_quirks: bool, compile: bool = False) -> np.ndarray:
    model = _model(case, stage, reference_quirks, compile)
    batch = mapping.reference_batch(_inputs(case), case["groups"], np.asarray(case["slot_mask"]), reference_quirks)
    with torch.no_grad():
        return model(batch).numpy()


def test_reference_file_is_present():
    assert CASES_FILE.is_file(), f"reference cases missing: {CASES_FILE}"
    assert {(c["setting"], tuple(sorted(c["models"].values()))) for c in CASES} == {
        (2, ("DIN", "DSSM")), (3, ("DIN", "DSSM", "MLP"))}


@pytest.mark.parametrize("i,stage", STAGES, ids=[f"case{i}-{s}" for i, s in STAGES])
def test_reference_mode_matches_reference_logits(i, stage):
    case = CASES[i]
    got = _logits(case, stage, reference_quirks=True)
    np.testing.assert_allclose(got, np.asarray(case["logits"][stage]), rtol=0, atol=TOL)


@pytest.mark.parametrize("i,stage", STAGES, ids=[f"case{i}-{s}" for i, s in STAGES])
def test_default_mode_matches_zero_padded_logits(i, stage):
    case = CASES[i]
    got = _logits(case, stage, reference_quirks=False)
    np.testing.assert_allclose(got, np.asarray(case["logits_zero_padded_steps"][stage]), rtol=0, atol=TOL)


def test_the_modes_differ_where_the_quirks_apply():
    """Each mode fails the other's oracle: the tests above can tell the modes apart."""
    case = CASES[0]
    for stage in case["models"]:
        ref, zero = np.asarray(case["logits"][stage]), np.asarray(case["logits_zero_padded_steps"][stage])
        assert np.abs(ref - zero).max() > 1e-3
        assert np.abs(_logits(case, stage, reference_quirks=False) - ref).max() > 1e-3
        assert np.abs(_logits(case, stage, reference_quirks=True) - zero).max() > 1e-3


@pytest.mark.parametrize("reference_quirks", [True, False])
def test_fused_din_attention_matches_too(reference_quirks):
    """The compiled (fused) DIN attention path implements the uniform-attention quirk as well."""
    case = next(c for c in CASES if c["setting"] == 2)
    stage = next(s for s, cls in case["models"].items() if cls == "DIN")
    want = case["logits" if reference_quirks else "logits_zero_padded_steps"][stage]
    got = _logits(case, stage, reference_quirks, compile=True)
    np.testing.assert_allclose(got, np.asarray(want), rtol=0, atol=TOL)
    assert compiled_attention_pool().active, "the fused path fell back to eager: nothing fused was tested"


def test_reference_padding_row_is_frozen_and_row0_trains():
    """Reference mode: cat1 row 2 stays zero under training, row 0 gets a gradient (default: the reverse)."""
    case = CASES[0]
    stage = next(s for s, cls in case["models"].items() if cls == "DSSM")
    for quirks, frozen, trained in ((True, 2, 0), (False, 0, 2)):
        model = _model(case, stage, quirks)
        batch = mapping.reference_batch(_inputs(case), case["groups"], np.asarray(case["slot_mask"]), quirks)
        model(batch).sum().backward()
        emb = model.embedding
        grad = emb.weight.grad[emb.offsets["category_level_one"]:][:4]
        assert float(grad[frozen].abs().sum()) == 0.0
        assert float(grad[trained].abs().sum()) > 0.0


def test_fresh_reference_model_initialises_cat1_like_the_reference():
    """Row 2 of cat1 is the zero padding row, row 0 an N(0, 1) draw; the other tables unchanged."""
    sizes = mapping.embedding_sizes(_params(CASES[0], "retrieval"))
    torch.manual_seed(0)
    default = build_model("dssm", sizes)
    torch.manual_seed(0)
    ref = build_model("dssm", sizes, reference_quirks=True)
    o = ref.embedding.offsets["category_level_one"]
    assert float(ref.embedding.weight.detach()[o + 2].abs().sum()) == 0.0
    assert torch.equal(ref.embedding.weight[o], default.embedding.weight[o + 2])
    keep = torch.ones(len(ref.embedding.weight), dtype=torch.bool)
    keep[[o, o + 2]] = False
    assert torch.equal(ref.embedding.weight[keep], default.embedding.weight[keep])
    # and the networks draw the same numbers (no extra random numbers consumed)
    assert torch.equal(ref.user_tower[0].weight, default.user_tower[0].weight)


def test_mapping_errors():
    params = _params(CASES[0], "retrieval")
    with pytest.raises(DataError, match="not a reference"):
        mapping.reference_class({"foo.weight": torch.zeros(1)})
    din = build_model("din", mapping.embedding_sizes(params))
    with pytest.raises(ConfigError, match="cannot be loaded into a DIN"):
        mapping.load_reference(din, params)
    broken = dict(params)
    del broken["vid_emb.weight"]
    with pytest.raises(DataError, match="vid_emb.weight"):
        mapping.embedding_sizes(broken)
    small = dict(params)
    small["wday_emb.weight"] = torch.zeros(3, 8)
    with pytest.raises(DataError, match="wday_emb.weight has 3 rows"):
        mapping.embedding_sizes(small)
