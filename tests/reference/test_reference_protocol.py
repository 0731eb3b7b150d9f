"""The reference's evaluation protocol on a hand-built day, and the mode checks end to end."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from lcron.data.shards import preprocess
from lcron.data.synthetic import generate
from lcron.errors import ConfigError, DataError
from lcron.evaluate import evaluate
from lcron.evaluation.per_request import request_metrics
from lcron.reference_policy import protocol
from lcron.report import build_report
from lcron.settings import TWO_STAGE
from lcron.run_folder import load_cascade
from lcron.train import TrainConfig, train

N = 40


def _markdown(paths) -> str:
    """The Markdown page build_report wrote (its return value names the files)."""
    files = paths.values() if isinstance(paths, dict) else [paths]
    md = [p for p in files if str(p).endswith(".md")]
    return open(md[0]).read()


def _hand_day():
    """Four two-stage requests (quotas 30 -> 20, GT 10), written out by hand.

    A: 40 valid slots; GT = slots 0-9 (labels 30..21). Retrieval keeps slots 0-29;
       prerank prefers slots 0-4 and 15-29 -> 5 GT survive. Both protocols: 0.5.
    B: 12 valid slots (GT 0-9, two negatives), 28 padding slots that retrieval scores 100.
       Default: all 12 valid pass both stages -> 1.0. Reference: retrieval's 30 places go to
       the 28 padding slots and the two negatives (score 60) -> 0.
    C: 5 valid slots (all GT), scored highest by both models. Default 5/5 = 1.0;
       reference 5/10 = 0.5.
    D: no valid slot. Default: skipped (NaN); reference: 0.
    """
    labels = np.zeros((4, N))
    mask = np.zeros((4, N), dtype=np.uint8)
    z_ret = np.zeros((4, N))
    z_pre = np.zeros((4, N))
    slots = np.arange(N)
    # A
    mask[0] = 1
    labels[0, :10] = 30 - slots[:10]
    labels[0, 10:] = 5
    z_ret[0] = -slots
    z_pre[0] = np.where((slots < 5) | (slots >= 15), 10.0, 0.0) + slots * 1e-3
    # B
    mask[1, :12] = 1
    labels[1, :10] = 30 - slots[:10]
    labels[1, 10:12] = 7
    z_ret[1] = np.where(slots >= 12, 100.0, 50.0 - slots)
    z_ret[1, 10:12] = 60.0
    z_pre[1] = -slots.astype(float)
    # C
    mask[2, :5] = 1
    labels[2, :5] = 30 - slots[:5]
    z_ret[2] = np.where(slots < 5, 200.0, -slots)
    z_pre[2] = np.where(slots < 5, 200.0, -slots)
    # D: nothing valid, arbitrary scores
    z_ret[3] = slots
    z_pre[3] = -slots
    return [z_ret, z_pre], labels, mask


def test_reference_protocol_on_the_hand_built_day():
    scores, labels, mask = _hand_day()
    ref, ref_means, _ = protocol.request_metrics(scores, labels, mask, TWO_STAGE)
    np.testing.assert_allclose(ref["joint_recall"], [0.5, 0.0, 0.5, 0.0])
    np.testing.assert_allclose(ref["recall_at_10_m/retrieval"], [1.0, 0.0, 0.5, 0.0])
    assert ref_means["joint_recall"] == pytest.approx(0.25)
    default, default_means, _ = request_metrics(scores, labels, mask, TWO_STAGE)
    np.testing.assert_allclose(default["joint_recall"], [0.5, 1.0, 1.0, np.nan])
    np.testing.assert_allclose(default["recall_at_10_m/retrieval"], [1.0, 1.0, 1.0, np.nan])
    assert default_means["joint_recall"] == pytest.approx(2.5 / 3)
    # The sweep agrees with the per-request values at the setting's quotas.
    sweep = protocol.quota_sweep_values(scores, labels, mask, TWO_STAGE, [TWO_STAGE.quotas, (40, 20)])
    assert sweep[0] == pytest.approx(0.25)
    # Quotas (40, 20): retrieval passes everything. A's prerank then keeps slots 20-39 (0 GT),
    # B's its first 20 slots (10 GT), C's its 5 valid slots.
    assert sweep[1] == pytest.approx((0.0 + 1.0 + 0.5 + 0.0) / 4)


def test_full_lists_give_the_default_numbers():
    """With every slot valid and 10 GT per request the protocols agree request for request."""
    rng = np.random.default_rng(0)
    labels = rng.integers(1, 31, size=(64, N)).astype(float)
    mask = np.ones((64, N), dtype=np.uint8)
    scores = [rng.normal(size=(64, N)) for _ in range(2)]
    ref, _, _ = protocol.request_metrics(scores, labels, mask, TWO_STAGE, tie_seed=3)
    default, _, _ = request_metrics(scores, labels, mask, TWO_STAGE, tie_seed=3)
    for key in default:
        np.testing.assert_allclose(ref[key], default[key], err_msg=key)


def test_full_batches_drops_the_last_partial_batch():
    arrays = {"label": np.arange(10), "mask": np.arange(10) * 2}
    kept = protocol.full_batches(arrays, 4)
    np.testing.assert_array_equal(kept["label"], np.arange(8))
    np.testing.assert_array_equal(kept["mask"], np.arange(8) * 2)
    with pytest.raises(DataError, match="fewer than one batch of 16"):
        protocol.full_batches(arrays, 16, where="test day X")


# ---------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def both_modes(tmp_path_factory):
    base = tmp_path_factory.mktemp("refmode")
    src = generate(base / "recflow", num_days=3, requests_per_day=100, users=60, items=300, seed=5, progress=False)
    return {False: preprocess(str(src), base / "default", 2, progress=False),
            True: preprocess(str(src), base / "reference", 2, progress=False, reference_quirks=True),
            "base": base}


def _cfg(reference: bool, method: str = "bce") -> TrainConfig:
    return TrainConfig(method=method, batch_size=32, seeds=(1,), compile=False, reference_quirks=reference)


def test_train_refuses_a_mode_mismatch(both_modes, tmp_path):
    with pytest.raises(ConfigError, match="reference mode was asked for.*shard set .* is in default mode"):
        train(both_modes[False], tmp_path / "a", _cfg(True), progress=False)
    with pytest.raises(ConfigError, match="default mode was asked for.*is in reference mode"):
        train(both_modes[True], tmp_path / "b", _cfg(False), progress=False)


def test_reference_run_end_to_end(both_modes, tmp_path):
    run = tmp_path / "run"
    train(both_modes[True], run, _cfg(True), progress=False)
    cfg = json.loads((run / "run.json").read_text())
    assert cfg["reference_quirks"] is True
    cascade, _ = load_cascade(run / "seed-1" / "model.pt")
    assert cascade.reference_quirks and all(m.reference_quirks for m in cascade.models)
    # evaluate follows the run's mode; the test day's 100 requests -> 3 full batches of 32
    res = evaluate(run, out=tmp_path / "eval", compile=False, progress=False)
    assert res["reference_quirks"] is True and res["inputs"]["protocol"] == "reference"
    assert res["requests"]["evaluated"] == 96
    with pytest.raises(ConfigError, match="default mode was asked for.*run .* is in reference mode"):
        evaluate(run, out=tmp_path / "eval2", compile=False, progress=False, reference_quirks=False)
    evaluate(run, compile=False, progress=False)
    report = build_report(run)
    assert "| mode | reference (--reference-quirks" in _markdown(report)
    with pytest.raises(ConfigError, match="shard set .* is in default mode"):
        evaluate(run, both_modes[False], out=tmp_path / "eval3", compile=False, progress=False)


def test_default_run_keeps_its_hash_and_refuses_the_reference_protocol(both_modes, tmp_path):
    run = tmp_path / "run"
    train(both_modes[False], run, _cfg(False), progress=False)
    cfg = json.loads((run / "run.json").read_text())
    assert "reference_quirks" not in cfg
    res = evaluate(run, out=tmp_path / "eval", compile=False, progress=False)
    assert res["reference_quirks"] is False and "protocol" not in res["inputs"]
    assert res["requests"]["total"] == 100
    with pytest.raises(ConfigError, match="reference mode was asked for.*run .* is in default mode"):
        evaluate(run, out=tmp_path / "eval2", compile=False, progress=False, reference_quirks=True)
    evaluate(run, compile=False, progress=False)
    assert "| mode | default (faithful" in _markdown(build_report(run))


def test_switch_implies_the_icc_loss_option(both_modes, tmp_path):
    train(both_modes[True], tmp_path / "icc", _cfg(True, "icc"), progress=False)
    assert json.loads((tmp_path / "icc" / "run.json").read_text())["loss_options"] == {"reference_quirks": True}
    explicit = dataclasses.replace(_cfg(True, "icc"), loss_options={"reference_quirks": "false"})
    train(both_modes[True], tmp_path / "icc2", explicit, progress=False)
    # Loss options are stored as typed values (so "false" and False are one configuration).
    assert json.loads((tmp_path / "icc2" / "run.json").read_text())["loss_options"] == {"reference_quirks": False}
    # a method without that option is left alone
    train(both_modes[True], tmp_path / "bce", _cfg(True, "bce"), progress=False)
    assert json.loads((tmp_path / "bce" / "run.json").read_text())["loss_options"] == {}


def test_reference_mode_keeps_the_published_dense_embedding_adam(both_modes, tmp_path, monkeypatch):
    """``auto`` would pick lazy Adam on CPU for large tables; the published code steps Adam over
    every row, so a reference-mode run trains dense unless lazy is asked for by name."""
    from lcron import optim

    monkeypatch.setattr(optim, "LAZY_MIN_ROWS", 1)  # every table counts as large here
    train(both_modes[False], tmp_path / "default", _cfg(False), progress=False)
    assert json.loads((tmp_path / "default" / "run.json").read_text())["train"]["embedding_optimizer"] == "lazy"
    train(both_modes[True], tmp_path / "reference", _cfg(True), progress=False)
    assert json.loads((tmp_path / "reference" / "run.json").read_text())["train"]["embedding_optimizer"] == "dense"
    explicit = dataclasses.replace(_cfg(True), embedding_optimizer="lazy")
    train(both_modes[True], tmp_path / "lazy", explicit, progress=False)
    assert json.loads((tmp_path / "lazy" / "run.json").read_text())["train"]["embedding_optimizer"] == "lazy"
