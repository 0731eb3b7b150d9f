"""Serving-style evaluation on tiny trained runs, and its ground truth by hand."""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

import numpy as np
import pytest

from lcron.data.shards import ShardSet
from lcron.errors import ConfigError, DataError
from lcron.serving.evaluate import (add_serve_eval_arguments, bench_serving, logged_gt, parse_k1, run_serve_eval,
                                    serving_evaluate as serving_evaluate_default)
from lcron.serving.export import load_exported
from lcron.settings import THREE_STAGE, TWO_STAGE


# The library takes the device's default like the command line (compiled on CPU); these
# tiny runs score a few hundred requests, where compiling costs more than it saves.
serving_evaluate = functools.partial(serving_evaluate_default, compile=False)


def test_library_and_command_line_share_the_compile_default():
    """``compile`` None in both: the device's choice (lcron.devices.DEVICE_DEFAULTS)."""
    import inspect

    assert inspect.signature(serving_evaluate_default).parameters["compile"].default is None
    parser = argparse.ArgumentParser()
    add_serve_eval_arguments(parser)
    assert parser.parse_args(["--model", "m"]).compile is None


def _shards(run: Path) -> ShardSet:
    return ShardSet(json.loads((run / "run.json").read_text())["shards"])


def _share(entry: dict) -> float:
    assert entry["n"] == 1 and entry["std"] is None and len(entry["per_seed"]) == 1
    return entry["mean"]


def test_logged_gt_is_the_valid_top_group_by_video_id():
    n = TWO_STAGE.list_size
    items = np.zeros((2, n, 8), np.int64)
    items[:, :, 0] = np.arange(1, n + 1) + 100          # video ids 101..140 in slot order
    mask = np.zeros((2, n), np.int64)
    mask[0, :] = 1                                        # request 0: everything valid
    mask[1, [0, 4, 7, 12]] = 1                            # request 1: three top-group slots (and one rank_neg)
    label = np.where(mask > 0, 5, 0)
    label[:, :10] = np.where(mask[:, :10] > 0, 30 - np.arange(10), 0)
    arrays = {"items": items, "mask": mask, "label": label}
    gt = logged_gt(arrays, slice(0, 2), TWO_STAGE, tie_seed=0)
    assert gt.shape == (2, 10)
    assert gt[0].tolist() == list(range(101, 111))
    assert sorted(gt[1][gt[1] >= 0].tolist()) == [101, 105, 108]
    # three-stage: the top group is rerank_pos (slots 0..9) as well
    arrays3 = {"items": np.zeros((1, 50, 8), np.int64), "mask": np.ones((1, 50), np.int64),
               "label": np.full((1, 50), 5)}
    arrays3["items"][0, :, 0] = np.arange(1, 51)
    arrays3["label"][0, :10] = 30 - np.arange(10)
    assert logged_gt(arrays3, slice(0, 1), THREE_STAGE, tie_seed=0)[0].tolist() == list(range(1, 11))


def test_two_stage_serving_shares_are_consistent(run_2: Path, tmp_path: Path):
    corpus = len(_shards(run_2).item_table()[0])
    doc = serving_evaluate(run_2, k1=(5, 20, 100, 10**6), out=tmp_path, progress=False)
    assert json.loads((tmp_path / "serving.json").read_text()) == json.loads(json.dumps(doc))
    assert doc["k1"] == [5, 20, 100, corpus] and doc["k1_requested"] == [5, 20, 100, 10**6]
    assert any(f"K1 = {10**6}" in n for n in doc["notes"])
    assert doc["seeds"] == [1] and doc["requests"] == 60 and doc["index"]["kind"] == "flat"
    res = doc["results"]
    in_corpus = _share(res["gt_in_corpus"])
    retrieval = [_share(res[str(k)]["recall_retrieval"]) for k in doc["k1"]]
    e2e = [_share(res[str(k)]["joint_recall"]) for k in doc["k1"]]
    for v in [in_corpus] + retrieval + e2e:
        assert 0.0 <= v <= 1.0
    assert retrieval == sorted(retrieval)                       # monotone in K1
    assert all(e <= r + 1e-12 for e, r in zip(e2e, retrieval))  # the later stage only removes
    assert retrieval[-1] == pytest.approx(in_corpus)            # K1 = whole corpus retrieves every GT item in it
    assert e2e[0] == retrieval[0]                                # K1 = 5 < quota 20: the pre-rank keeps all 5
    assert res["100"]["joint_recall"] == res["100"]["recall_after/prerank"]
    assert "index_recall" not in res["100"]


def test_three_stage_and_approximate_indexes(run_3: Path, tmp_path: Path):
    doc = serving_evaluate(run_3, k1=(50, 200), index="ivf", out=tmp_path / "ivf", progress=False)
    for k in ("50", "200"):
        r = doc["results"][k]
        ret, pre, rank = (_share(r[key]) for key in ("recall_retrieval", "recall_after/prerank", "recall_after/rank"))
        assert 0.0 <= rank <= pre <= ret <= 1.0
        assert r["joint_recall"] == r["recall_after/rank"]
        # the default nprobe (16) covers every cell of this small corpus: an exhaustive search
        assert doc["index"]["nprobe"] == doc["index"]["nlist"]
        assert _share(r["index_recall"]) == pytest.approx(1.0)
    hnsw = serving_evaluate(run_3, k1=(50,), index="hnsw", index_options={"ef_search": 16, "hnsw_m": 4},
                            out=tmp_path / "hnsw", progress=False)
    assert 0.0 <= _share(hnsw["results"]["50"]["index_recall"]) <= 1.0


def test_auto_index_and_a_sampled_index_recall(run_3: Path, tmp_path: Path, monkeypatch):
    """auto is exact for a small corpus and IVF for a large one; the IVF is compared with the
    exact search on the first recall_sample requests only (at catalogue scale the exact search
    is the cost the index avoids)."""
    from lcron.serving import evaluate as serving
    from lcron.serving import index as index_module

    doc = serving_evaluate(run_3, k1=(50,), out=tmp_path / "auto", progress=False, max_requests=16)
    assert doc["index"]["kind"] == "flat" and "index_recall" not in doc["results"]["50"]
    monkeypatch.setattr(index_module, "AUTO_FLAT_MAX_ITEMS", 10)  # this corpus is "large" now
    searched = []
    real = serving.search

    def counting(index, queries, k):
        searched.append((type(index).__name__, len(queries)))
        return real(index, queries, k)

    monkeypatch.setattr(serving, "search", counting)
    doc = serving_evaluate(run_3, k1=(50,), out=tmp_path / "large", progress=False, max_requests=16, batch_size=4,
                           recall_sample=6)
    assert doc["index"]["kind"] == "ivf"
    assert doc["per_seed"]["1"]["index_recall_requests"] == 6
    exact = [n for name, n in searched if name == "IndexFlatIP"]
    assert exact == [4, 2]  # 6 requests compared over two batches of 4, none after
    assert _share(doc["results"]["50"]["index_recall"]) == pytest.approx(1.0)  # nprobe covers every cell here
    with pytest.raises(ConfigError, match="recall sample"):
        serving_evaluate(run_3, k1=(50,), out=tmp_path / "bad", progress=False, recall_sample=-1)


def test_cold_items_are_counted_from_the_training_days(run_2: Path, tmp_path: Path):
    """The catalogue's cold items (no valid candidate on any training day), counted by hand."""
    from lcron.serving.evaluate import cold_items

    doc = serving_evaluate(run_2, k1=(100,), out=tmp_path, progress=False, max_requests=32)
    shards = _shards(run_2)
    corpus, _ = shards.item_table()
    train_days = json.loads((run_2 / "run.json").read_text())["days"]
    seen = set()
    for day in train_days:
        a = shards.load_day(day)
        seen |= set(np.asarray(a["items"][..., 0])[np.asarray(a["mask"]) > 0].tolist())
    want = sorted(set(corpus.tolist()) - seen)
    assert cold_items(shards, train_days, corpus, chunk=7).tolist() == want
    cat = doc["catalogue"]
    assert cat["items"] == len(corpus) and cat["cold_items"] == len(want) and cat["training_days"] == train_days
    assert cat["requests_evaluated_of_day"] == 32 and cat["day_requests"] >= 32
    assert 0.0 <= _share(doc["results"]["gt_cold"]) <= _share(doc["results"]["gt_in_corpus"])


class _Stop(Exception):
    pass


def test_a_stopped_serving_evaluation_resumes_after_its_saved_batches(run_2: Path, tmp_path: Path, monkeypatch):
    """Counts are saved as batches finish; a stopped run's rerun keeps them, continues after the
    last saved batch and ends with the numbers of an uninterrupted run; the partial file goes."""
    from lcron.serving import evaluate as serving

    args = dict(k1=(20, 100), progress=False, max_requests=40, batch_size=8)
    whole = serving_evaluate(run_2, out=tmp_path / "whole", **args)
    monkeypatch.setattr(serving, "PARTIAL_SAVE_EVERY_S", 0.0)  # save after every batch
    real = serving._SeedEvaluator.batch
    calls = []

    def dies_at_batch_3(self, request, gt, batch_no):
        calls.append(batch_no)
        if len(calls) == 4:
            raise _Stop()
        return real(self, request, gt, batch_no)

    monkeypatch.setattr(serving._SeedEvaluator, "batch", dies_at_batch_3)
    out = tmp_path / "stopped"
    with pytest.raises(_Stop):
        serving_evaluate(run_2, out=out, **args)
    assert (out / serving.PARTIAL_FILE).is_file() and not (out / "serving.json").exists()
    monkeypatch.setattr(serving._SeedEvaluator, "batch", real)
    resumed_batches = []
    monkeypatch.setattr(serving._SeedEvaluator, "batch",
                        lambda self, request, gt, batch_no: resumed_batches.append(batch_no) or real(
                            self, request, gt, batch_no))
    doc = serving_evaluate(run_2, out=out, **args)
    seeds = doc["seeds"]
    assert resumed_batches[:2] == [3, 4]  # seed 1 went on after its 3 saved batches
    assert doc["results"] == whole["results"] and doc["per_seed"] == whole["per_seed"]
    assert doc["timing"][str(seeds[0])]["resumed_after_requests"] == 24
    assert not (out / serving.PARTIAL_FILE).exists()
    # other inputs never take a stopped run's counts
    partial = serving._Partial(out / serving.PARTIAL_FILE, "another-hash")
    assert partial.seeds == {}


def test_serving_evaluation_matches_the_exported_cascade(run_2: Path, exported_2: Path, tmp_path: Path):
    from lcron.serving.index import rows_in

    doc = serving_evaluate(run_2, k1=(100,), out=tmp_path, progress=False)
    shards = _shards(run_2)
    arrays = shards.load_day(shards.days[-1])
    served = load_exported(exported_2)
    res = served.score({k: np.asarray(arrays[k]) for k in ("context", "user", "seq", "seq_mask")}, 100)
    gt = logged_gt(arrays, slice(0, None), shards.setting, tie_seed=0)
    n_gt = (gt >= 0).sum(1)
    ok = n_gt > 0
    e2e = rows_in(gt, np.where(res.video_ids > 0, res.video_ids, -1)).sum(1)[ok] / n_gt[ok]
    retrieved = rows_in(gt, res.retrieved).sum(1)[ok] / n_gt[ok]
    assert _share(doc["results"]["100"]["joint_recall"]) == pytest.approx(e2e.mean(), abs=1e-12)
    assert _share(doc["results"]["100"]["recall_retrieval"]) == pytest.approx(retrieved.mean(), abs=1e-12)


def test_cli_and_errors(run_2: Path, tmp_path: Path, capsys):
    parser = argparse.ArgumentParser()
    add_serve_eval_arguments(parser)
    args = parser.parse_args(["--model", str(run_2), "--k1", "10,40", "--batch-size", "7", "--device", "cpu",
                              "--out", str(tmp_path), "--no-progress", "--no-compile"])
    assert args.compile is False
    # the device decides by default: compiled on CPU (issue 19), eager on CUDA (measured on an H200)
    assert parser.parse_args(["--model", str(run_2)]).compile is None
    assert run_serve_eval(args) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0].split("\t") == ["K1", "retrieval", "after prerank"]
    assert json.loads((tmp_path / "serving.json").read_text())["k1"] == [10, 40]
    with pytest.raises(ConfigError, match="--k1"):
        parse_k1("10,x")
    with pytest.raises(DataError, match="1999-01-01"):
        serving_evaluate(run_2, day="1999-01-01", out=tmp_path, progress=False)
    with pytest.raises(DataError, match="no run.json"):
        serving_evaluate(tmp_path, out=tmp_path, progress=False)


def test_bench_rows(run_2: Path):
    import torch

    threads = torch.get_num_threads()
    rows = bench_serving(_shards(run_2), run_2, [10, 50], requests=32, max_slots=400, compile=False, repeats=1,
                         threads=1)
    assert torch.get_num_threads() == threads  # restored
    assert [r["k1"] for r in rows] == [10, 50]
    # one batch shape per K1: 400 // 10 = 40 requests -> all 32; 400 // 50 = 8 requests -> 4 batches of 8
    assert [r["batch_requests"] for r in rows] == [32, 8]
    for r in rows:
        assert r["requests"] == 32 and r["index"] == "flat" and r["device"] == "cpu" and r["threads"] == 1
        assert r["retrieval_requests_per_s"] > 0 and r["scoring_requests_per_s"] > 0
        assert r["requests_per_s"] < min(r["retrieval_requests_per_s"], r["scoring_requests_per_s"])


def test_an_earlier_serving_evaluation_is_not_replaced_silently(run_2: Path, tmp_path: Path):
    from lcron.errors import OutputExistsError

    first = serving_evaluate(run_2, k1=(10,), out=tmp_path, progress=False, max_requests=16)
    again = serving_evaluate(run_2, k1=(10,), out=tmp_path, progress=False, max_requests=16)  # same inputs: fine
    assert again["inputs_hash"] == first["inputs_hash"]
    with pytest.raises(OutputExistsError, match=r"other inputs \(k1 \[10\] -> \[20\]\).*--overwrite"):
        serving_evaluate(run_2, k1=(20,), out=tmp_path, progress=False, max_requests=16)
    assert json.loads((tmp_path / "serving.json").read_text())["k1"] == [10]
    doc = serving_evaluate(run_2, k1=(20,), out=tmp_path, progress=False, max_requests=16, overwrite=True)
    assert doc["k1"] == [20] and json.loads((tmp_path / "serving.json").read_text())["k1"] == [20]
