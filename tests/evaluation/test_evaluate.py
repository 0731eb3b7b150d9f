"""Evaluation: metrics.json against lcron.metrics, seeds aggregation, funnel, quota sweep,
streaming checkpoints, idempotency and the CLI functions."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lcron import metrics
from lcron.errors import ConfigError, DataError, OutputExistsError
from lcron.evaluate import add_evaluate_arguments, evaluate, run_evaluate
from lcron.evaluation.per_request import items_scored, quota_sweep_values, request_metrics
from lcron.evaluation.quota_grid import default_quota_grid, parse_quota_grid
from lcron.evaluation.results import summarize_seeds, load_per_request, metric_keys, npz_name
from lcron.evaluation.scoring import item_index, score_arrays
from lcron.settings import THREE_STAGE, TWO_STAGE
from lcron.run_folder import load_cascade
from lcron.train import TrainConfig, train


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """4 days x 60 requests; a BCE run with seeds 1 and 2 trained on the first 3 days
    (1 step per day, so every day's checkpoint holds different weights)."""
    from lcron.data.shards import preprocess
    from lcron.data.synthetic import generate

    base = tmp_path_factory.mktemp("evaluate")
    src = generate(base / "recflow", num_days=4, requests_per_day=60, users=60, items=300, seed=4, progress=False)
    shards = preprocess(src, base / "shards", 2, progress=False)
    run = base / "run"
    train(shards, run, TrainConfig(method="bce", batch_size=16, seeds=(1, 2), compile=False, day_snapshots=True),
          progress=False, max_steps_per_day=1)
    res = evaluate(run, batch_size=25, device="cpu", compile=False, progress=False)
    return SimpleNamespace(base=base, shards=shards, run=run, res=res, days=list(shards.days))


def _scores(model_path: Path, shards, day: str) -> list[np.ndarray]:
    cascade, _ = load_cascade(model_path, "cpu")
    return score_arrays(cascade, shards.load_day(day), batch_size=1000)


# --------------------------------------------------------------------------- pure parts
def test_aggregate_hand_checked():
    a = summarize_seeds([0.5, 0.7])
    assert a["mean"] == pytest.approx(0.6)
    assert a["std"] == pytest.approx(math.sqrt(0.02))  # ((0.1^2 + 0.1^2) / (2 - 1)) ** 0.5
    assert a["n"] == 2 and a["per_seed"] == [0.5, 0.7]
    one = summarize_seeds([0.25])
    assert one == {"mean": 0.25, "std": None, "n": 1, "per_seed": [0.25]}
    holes = summarize_seeds([0.2, float("nan"), 0.4, None])
    assert holes["n"] == 2 and holes["mean"] == pytest.approx(0.3) and holes["per_seed"] == [0.2, None, 0.4, None]
    assert summarize_seeds([])["mean"] is None


def test_quota_grids_and_parsing():
    assert default_quota_grid(TWO_STAGE) == [(20, 20), (25, 20), (30, 20), (35, 20), (40, 20)]
    three = default_quota_grid(THREE_STAGE)
    assert (40, 30, 20) in three
    assert {q[0] for q in three if q[1:] == (30, 20)} == {30, 35, 40, 45, 50}
    assert {q[1] for q in three if q[0] == 40} == {20, 25, 30, 35, 40}
    assert all(q[2] == 20 for q in three)
    assert parse_quota_grid("30,20;25,20; 40,20;", TWO_STAGE) == [(30, 20), (25, 20), (40, 20)]
    for bad in ("30;20", "20,30", "50,20", "x,20", ";", "30,20,10"):
        with pytest.raises(ConfigError):
            parse_quota_grid(bad, TWO_STAGE)


def _tiny_setting():
    # 4 groups of 2 slots: N = 8, GT = the top 2 labels.
    return dataclasses.replace(TWO_STAGE, group_size=2, gt_size=2, quotas=(6, 2))


def test_quota_sweep_hand_checked():
    """One request, N = 8, GT = slots 0 and 1 (labels 5, 4). Stage 1 ranks slot 0 last;
    stage 2 is an oracle (its score is the label). Keeping 2 or 7 after stage 1 loses slot
    0 (recall 1/2); keeping all 8 lets it through (recall 1)."""
    setting = _tiny_setting()
    labels = np.array([[5, 4, 3, 3, 2, 1, 1, 0]], dtype=float)
    mask = np.ones_like(labels)
    z1 = np.array([[1, 8, 7, 6, 5, 4, 3, 2]], dtype=float)
    vals = quota_sweep_values([z1, labels.copy()], labels, mask, setting, [(2, 2), (7, 2), (8, 2)])
    np.testing.assert_allclose(vals, [0.5, 0.5, 1.0])
    np.testing.assert_allclose(items_scored(mask, (7, 2)), [8.0, 7.0])
    # A request with 5 valid slots: stage 2 scores min(quota, 5).
    mask2 = np.array([[1, 1, 1, 1, 1, 0, 0, 0], [0] * 8])
    np.testing.assert_allclose(items_scored(mask2, (7, 2)), [5.0, 5.0])


def test_quota_sweep_monotone_in_first_quota_with_oracle_last_stage():
    rng = np.random.default_rng(0)
    b, n = 300, 40
    labels = np.tile(np.r_[30 - np.arange(10), np.full(10, 7), np.full(10, 6), np.full(10, 5)], (b, 1)).astype(float)
    mask = (rng.random((b, n)) > 0.05).astype(float)
    z1 = labels + rng.normal(scale=6.0, size=(b, n))     # a noisy first stage
    z2 = labels + rng.normal(scale=0.01, size=(b, n))    # an (almost) perfect last stage
    grid = [(q, 20) for q in range(20, 41)]
    vals = quota_sweep_values([z1, z2], labels, mask, TWO_STAGE, grid)
    assert np.all(np.diff(vals) >= -1e-12), vals
    assert vals[-1] > vals[0]


def test_request_metrics_three_stage_matches_metric_functions():
    rng = np.random.default_rng(1)
    b, n = 50, THREE_STAGE.list_size
    labels = rng.integers(0, 8, size=(b, n)).astype(float)
    mask = (rng.random((b, n)) > 0.1).astype(float)
    mask[0] = 0  # a request without valid slot is skipped
    scores = [rng.normal(size=(b, n)) for _ in range(3)]
    per, means, funnel = request_metrics(scores, labels, mask, THREE_STAGE, tie_seed=3)
    assert set(per) | set(means) == set(metric_keys(THREE_STAGE))
    np.testing.assert_array_equal(per["joint_recall"],
                                  metrics.joint_recall(scores, labels, mask, (40, 30, 20), gt=10, tie_seed=3))
    for s, (name, q) in enumerate(zip(THREE_STAGE.stage_names, THREE_STAGE.quotas)):
        np.testing.assert_array_equal(per[f"recall_at_10_m/{name}"],
                                      metrics.recall_at_k_m(scores[s], labels, mask, k=10, m=q, tie_seed=3))
        np.testing.assert_allclose(per[f"ndcg_at_10/{name}"], metrics.ndcg_at_k(scores[s], labels, mask, k=10))
    assert np.isnan(per["joint_recall"][0]) and np.isnan(per["funnel/gt_after/rank"][0])
    gt_size = np.minimum(10, mask.sum(1))[1:]
    np.testing.assert_allclose(per["funnel/gt_after/rank"][1:] / gt_size, per["joint_recall"][1:])
    shares = [means[f"funnel/lost_share/{s}"] for s in THREE_STAGE.stage_names]
    assert sum(shares) == pytest.approx(1.0)


def test_item_index_and_dedup_scoring_match_forward(world):
    arrays = world.shards.load_day(world.days[-1])
    ix = item_index(arrays["items"])
    np.testing.assert_array_equal(ix.unique[ix.inverse], np.asarray(arrays["items"]))
    assert len(ix.unique) < ix.inverse.size
    cascade, _ = load_cascade(world.run / "seed-1" / "model.pt", "cpu")
    plain = score_arrays(cascade, arrays, batch_size=25)
    dedup = score_arrays(cascade, arrays, batch_size=25, pad_last=True, items=ix)
    batch = {k: torch.from_numpy(np.asarray(arrays[k]).astype(np.int64)) for k in ("context", "user", "seq", "items")}
    batch["seq_mask"] = torch.from_numpy(np.asarray(arrays["seq_mask"]).astype(np.float32))
    with torch.no_grad():
        full = [z.numpy() for z in cascade(batch)]
    for a, b, c in zip(plain, dedup, full):
        assert a.dtype == np.float32 and a.shape == c.shape
        np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(b, c, rtol=1e-5, atol=1e-5)


def test_item_index_of_a_video_seen_with_two_feature_rows():
    """Rows are a function of the video id almost always (one sort of column 0); where they are
    not, every distinct row still gets its own entry."""
    items = np.array([[[5, 1, 2], [7, 3, 4], [5, 1, 2]],
                      [[7, 3, 4], [5, 9, 2], [0, 0, 0]]], dtype=np.int32)  # video 5 with author 1 and 9
    ix = item_index(items)
    np.testing.assert_array_equal(ix.unique[ix.inverse], items)
    assert len(ix.unique) == 4 and ix.inverse.dtype == np.int64
    same = item_index(np.where(items == 9, 1, items))  # video 5 always with author 1
    np.testing.assert_array_equal(same.unique, [[0, 0, 0], [5, 1, 2], [7, 3, 4]])
    np.testing.assert_array_equal(same.inverse, [[1, 2, 1], [2, 1, 0]])


# --------------------------------------------------------------------------- the evaluation
def test_metrics_json_matches_lcron_metrics(world):
    res, run = world.res, world.run
    doc = json.loads((run / "eval" / "metrics.json").read_text())
    assert doc["kind"] == "lcron-evaluation" and doc["method"] == "bce" and doc["setting"] == "two_stage"
    assert doc["stage_names"] == ["retrieval", "prerank"] and doc["quotas"] == [30, 20]
    assert doc["days"] == [world.days[-1]] and doc["seeds"] == [1, 2] and doc["trained_days"] == world.days[:-1]
    assert set(doc["metrics"]) == set(metric_keys(TWO_STAGE))
    assert doc["requests"]["evaluated"] + doc["requests"]["skipped"] == world.shards.num_requests(world.days[-1])
    assert res["skipped"] is False and res["metrics"] == doc["metrics"]

    arrays = world.shards.load_day(world.days[-1])
    labels, mask = np.asarray(arrays["label"]), np.asarray(arrays["mask"])
    npz = load_per_request(run / "eval")
    np.testing.assert_array_equal(npz["request_id"], np.asarray(arrays["request_id"]))
    np.testing.assert_array_equal(npz["seeds"], [1, 2])
    for i, seed in enumerate((1, 2)):
        z = _scores(run / f"seed-{seed}" / "model.pt", world.shards, world.days[-1])
        joint = metrics.joint_recall(z, labels, mask, (30, 20), gt=10, tie_seed=0)
        assert doc["metrics"]["joint_recall"]["per_seed"][i] == pytest.approx(np.nanmean(joint), abs=1e-12)
        np.testing.assert_allclose(npz["joint_recall"][i], joint.astype(np.float32))
        for s, (name, q) in enumerate((("retrieval", 30), ("prerank", 20))):
            r = metrics.recall_at_k_m(z[s], labels, mask, k=10, m=q, tie_seed=0)
            nd = metrics.ndcg_at_k(z[s], labels, mask, k=10)
            assert doc["metrics"][f"recall_at_10_m/{name}"]["per_seed"][i] == pytest.approx(np.nanmean(r), abs=1e-12)
            assert doc["metrics"][f"ndcg_at_10/{name}"]["per_seed"][i] == pytest.approx(np.nanmean(nd), abs=1e-6)
            np.testing.assert_allclose(npz[npz_name(f"recall_at_10_m/{name}")][i], r.astype(np.float32))


def test_mean_std_n_over_two_seeds(world):
    for key, entry in world.res["metrics"].items():
        a, b = entry["per_seed"]
        assert entry["n"] == 2, key
        assert entry["mean"] == pytest.approx((a + b) / 2), key
        assert entry["std"] == pytest.approx(abs(a - b) / math.sqrt(2)), key  # ddof = 1 with two values


def test_funnel_shares_sum_to_one_and_counts_fall(world):
    m = world.res["metrics"]
    mask = np.asarray(world.shards.load_day(world.days[-1])["mask"])
    gt_size = np.minimum(10, mask.sum(axis=1))
    npz = load_per_request(world.run / "eval")
    for i in range(2):
        shares = [m[f"funnel/lost_share/{s}"]["per_seed"][i] for s in ("retrieval", "prerank")]
        assert sum(shares) == pytest.approx(1.0)
        after = [m[f"funnel/gt_after/{s}"]["per_seed"][i] for s in ("retrieval", "prerank")]
        assert world.res["gt_per_request"] == pytest.approx(gt_size.mean())
        assert gt_size.mean() >= after[0] >= after[1]
        # a request's end-to-end recall = its GT items alive after the last stage / |GT|
        np.testing.assert_allclose(npz["funnel__gt_after__prerank"][i] / gt_size, npz["joint_recall"][i], rtol=1e-6)


def test_quota_sweep_of_the_run(world):
    doc = json.loads((world.run / "eval" / "quota_sweep.json").read_text())
    assert [r["quotas"] for r in doc["rows"]] == [[20, 20], [25, 20], [30, 20], [35, 20], [40, 20]]
    default = [r for r in doc["rows"] if r["default"]]
    assert len(default) == 1 and default[0]["quotas"] == [30, 20]
    assert default[0]["joint_recall"]["per_seed"] == world.res["metrics"]["joint_recall"]["per_seed"]
    assert [r["items_scored"]["prerank"] for r in doc["rows"]] == sorted(r["items_scored"]["prerank"] for r in doc["rows"])
    assert (world.run / "eval" / "quota_sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert world.res["quota_sweep"] == doc["rows"]


def test_idempotent_and_refuses_other_inputs(world, tmp_path):
    out = tmp_path / "ev"
    shutil.copytree(world.run / "eval", out)
    stamp = (out / "metrics.json").stat().st_mtime_ns
    again = evaluate(world.run, out=out, compile=False, progress=False, batch_size=3)
    assert again["skipped"] is True and again["metrics"] == world.res["metrics"]
    assert (out / "metrics.json").stat().st_mtime_ns == stamp
    with pytest.raises(OutputExistsError, match="other inputs"):
        evaluate(world.run, out=out, compile=False, progress=False, tie_seed=1)
    redone = evaluate(world.run, out=out, compile=False, progress=False, tie_seed=1, overwrite=True, batch_size=60)
    assert redone["skipped"] is False and redone["tie_seed"] == 1
    assert json.loads((out / "metrics.json").read_text())["tie_seed"] == 1


def test_bad_arguments(world, tmp_path):
    with pytest.raises(ConfigError, match="batch size"):
        evaluate(world.run, out=tmp_path / "a", batch_size=0, progress=False)
    with pytest.raises(DataError, match="run.json"):
        evaluate(tmp_path, progress=False)
    with pytest.raises(ConfigError):
        evaluate(world.run, out=tmp_path / "b", quota_grid="20,30", progress=False)


# --------------------------------------------------------------------------- streaming
def test_streaming_uses_the_checkpoint_of_the_previous_day(world, tmp_path):
    d = world.days
    res = evaluate(world.run, out=tmp_path / "stream", streaming=True, compile=False, progress=False, batch_size=60)
    # default test days: every day that follows a trained day
    assert res["days"] == d[1:] and res["checkpoint_days"] == {d[1]: d[0], d[2]: d[1], d[3]: d[2]}
    stream = json.loads((tmp_path / "stream" / "streaming.json").read_text())
    per_day = {x["day"]: x for x in stream["days"]}
    for t, prev in zip(d[1:], d[:-1]):
        assert per_day[t]["checkpoint_day"] == prev
        assert per_day[t]["checkpoints"]["1"].endswith(f"seed-1/checkpoints/{prev}.pt")
        arrays = world.shards.load_day(t)
        labels, mask = np.asarray(arrays["label"]), np.asarray(arrays["mask"])
        for i, seed in enumerate((1, 2)):
            z = _scores(world.run / f"seed-{seed}" / "checkpoints" / f"{prev}.pt", world.shards, t)
            nd = np.nanmean(metrics.ndcg_at_k(z[1], labels, mask, k=10))
            assert per_day[t]["metrics"]["ndcg_at_10/prerank"]["per_seed"][i] == pytest.approx(nd, abs=1e-6)
            jr = np.nanmean(metrics.joint_recall(z, labels, mask, (30, 20)))
            assert per_day[t]["metrics"]["joint_recall"]["per_seed"][i] == pytest.approx(jr, abs=1e-12)
    # The checkpoints differ: scoring day 2 with the final model would give another NDCG.
    arrays = world.shards.load_day(d[1])
    z_final = _scores(world.run / "seed-1" / "model.pt", world.shards, d[1])
    nd_final = np.nanmean(metrics.ndcg_at_k(z_final[1], np.asarray(arrays["label"]), np.asarray(arrays["mask"])))
    assert per_day[d[1]]["metrics"]["ndcg_at_10/prerank"]["per_seed"][0] != pytest.approx(nd_final, abs=1e-9)
    # Averages: per seed over days, then over seeds.
    for key in ("joint_recall", "ndcg_at_10/retrieval"):
        per_seed = [np.mean([per_day[t]["metrics"][key]["per_seed"][i] for t in d[1:]]) for i in range(2)]
        np.testing.assert_allclose(res["metrics"][key]["per_seed"], per_seed)
        assert stream["average"][key] == res["metrics"][key]
    npz = load_per_request(tmp_path / "stream")
    assert list(np.unique(npz["day"])) == d[1:]


def test_streaming_errors(world, tmp_path):
    d = world.days
    with pytest.raises(ConfigError, match="first day"):
        evaluate(world.run, out=tmp_path / "x", streaming=True, days=d[0], compile=False, progress=False)
    short = tmp_path / "short"
    train(world.shards, short, TrainConfig(method="bce", batch_size=16, seeds=(1,), compile=False, days=d[0],
                                           day_snapshots=True), progress=False, max_steps_per_day=1)
    with pytest.raises(ConfigError, match=f"the day before it \\({d[1]}\\) was not trained"):
        evaluate(short, out=tmp_path / "y", streaming=True, days=d[2], compile=False, progress=False)
    broken = tmp_path / "broken"
    shutil.copytree(world.run, broken, ignore=shutil.ignore_patterns("eval*"))
    (broken / "seed-2" / "checkpoints" / f"{d[1]}.pt").unlink()
    with pytest.raises(DataError, match=f"seed-2/checkpoints/{d[1]}.pt"):
        evaluate(broken, out=tmp_path / "z", streaming=True, days=d[2], compile=False, progress=False)


# --------------------------------------------------------------------------- CLI
def test_cli_functions_and_user_quota_grid(world, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    parser.add_argument("-q", "--quiet", action="store_true")  # lcron.cli adds it to every subcommand
    add_evaluate_arguments(parser)
    args = parser.parse_args(["--model", str(world.run), "--out", str(tmp_path / "cli"), "--no-compile",
                              "--batch-size", "13", "--device", "cpu", "--quota-grid", "30,20;25,20;40,20",
                              "--quiet"])
    assert run_evaluate(args) == 0
    out = capsys.readouterr().out
    assert str(tmp_path / "cli" / "metrics.json") in out and str(tmp_path / "cli" / "quota_sweep.json") in out
    res = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    assert [r["quotas"] for r in res["quota_sweep"]] == [[30, 20], [25, 20], [40, 20]]
    assert res["quota_sweep"][0]["joint_recall"] == world.res["metrics"]["joint_recall"]
    assert res["metrics"] == world.res["metrics"]  # the inference batch size changes nothing
    bad = parser.parse_args(["--model", str(world.run), "--batch-size", "0"])
    with pytest.raises(ConfigError, match="batch size must be an integer >= 1, got 0"):
        run_evaluate(bad)


def test_kfp_metrics_name_stages_by_position_and_model_and_keep_undefined_values():
    from lcron.evaluation.results import UNDEFINED, kfp_metrics

    two = {"stage_names": ["retrieval", "prerank"], "stage_models": ["dssm", "din"],
           "metrics": {"joint_recall": {"mean": 0.5, "std": 0.1, "n": 2},
                       "recall_at_10_m/prerank": {"mean": None, "std": None, "n": 0},
                       "funnel/gt_after/retrieval": {"mean": 0.9, "std": None, "n": 1}}}
    values, missing = kfp_metrics(two)
    assert values == {"joint_recall": 0.5, "joint_recall/std": 0.1, "joint_recall/n": 2.0,
                      "recall_at_10_m/s2_din": UNDEFINED, "recall_at_10_m/s2_din/std": UNDEFINED,
                      "recall_at_10_m/s2_din/n": 0.0,
                      "funnel/gt_after/s1_dssm": 0.9, "funnel/gt_after/s1_dssm/std": UNDEFINED,
                      "funnel/gt_after/s1_dssm/n": 1.0}
    assert missing == ["recall_at_10_m/s2_din", "recall_at_10_m/s2_din/std", "funnel/gt_after/s1_dssm/std"]
    three = {"stage_names": ["retrieval", "prerank", "rank"], "stage_models": ["dssm", "mlp", "din"],
             "metrics": {"recall_at_10_m/prerank": {"mean": 0.4, "std": 0.0, "n": 2}}}
    assert set(kfp_metrics(three)[0]) == {"recall_at_10_m/s2_mlp", "recall_at_10_m/s2_mlp/std",
                                          "recall_at_10_m/s2_mlp/n"}  # never the two-stage column
    legacy = {"stage_names": ["retrieval", "prerank"], "metrics": {"ndcg_at_10/prerank": {"mean": 0.3, "n": 1}}}
    assert "ndcg_at_10/s2" in kfp_metrics(legacy)[0]  # no stage_models recorded: position only
