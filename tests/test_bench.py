"""lcron.benchmarks (``lcron bench``): the CI-sized run completes and writes valid JSON with every expected row
(no timing assertions), and the training profiler reports what it claims to."""

from __future__ import annotations

import json
import sys
from contextlib import nullcontext

import pytest

from lcron import cli
from lcron.benchmarks import profiler, suite
from lcron.errors import ConfigError
from lcron.losses import METHODS
from lcron.train_step import TrainStep

SETTINGS = ["two_stage", "three_stage"]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One ``lcron bench --quick`` run shared by the tests that read its output."""
    root = tmp_path_factory.mktemp("bench")
    out = root / "bench.json"
    code = cli.main(["bench", "--quick", "--json", str(out), "--data-dir", str(root / "data"), "-q"])
    return {"code": code, "root": root, "json": out}


def _rows(result, name):
    return [r for r in result["results"] if r["name"] == name]


def test_quick_bench_writes_valid_json(quick_run):
    assert quick_run["code"] == 0
    result = json.loads(quick_run["json"].read_text())
    assert result["schema"] == "lcron-bench/1" and result["mode"] == "quick"
    env = result["environment"]
    assert env["device"] == "cpu" and env["usable_cpus"] >= 1 and env["torch_threads"] >= 1
    assert result["data"]["requests"] == 200 and result["data"]["days"] == 2
    assert set(result["data"]["stored_items_per_label_mean"]) >= {"rank_pos", "rank_neg", "coarse_neg", "prerank_neg"}
    assert result["run_params"]["batch_size"] == 32 and result["run_params"]["compile"] is False
    assert list(result["seconds"]) == [*suite.BENCHMARKS, "total"]
    assert list(suite.BENCHMARKS)[:2] == ["preprocess", "train"]

    rows = _rows(result, "preprocess")
    assert [r["setting"] for r in rows] == SETTINGS
    for r in rows:
        assert r["unit"] == "requests/s" and r["value"] > 0 and r["requests"] == 200
        assert r["peak_rss_mb"] >= r["baseline_rss_mb"] > 0


def test_quick_bench_has_a_training_row_per_method_and_setting(quick_run):
    result = json.loads(quick_run["json"].read_text())
    rows = _rows(result, "train")
    assert [(r["setting"], r["case"]) for r in rows] == [(s, m) for s in SETTINGS for m in suite.method_order()]
    for r in rows:
        # 2 days x 1 step: the first step is the warm-up, one step is measured.
        assert r["unit"] == "requests/s" and r["value"] > 0
        assert r["batch_size"] == 32 and r["steps"] == 2 and r["measured_steps"] == 1
        assert r["compile"] is False and r["first_step_s"] > 0 and r["compile_s"] >= 0
        assert r["peak_rss_mb"] >= r["baseline_rss_mb"] > 0 and r["threads"] >= 1


def test_quick_bench_has_vocabulary_training_and_checkpoint_rows(quick_run):
    """One train_vocab and one checkpoint row per embedding optimizer (quick mode: two-stage,
    a 10x smaller vocabulary than RecFlow's)."""
    from lcron.benchmarks.vocabulary import VOCAB_PARAMS
    from lcron.data.fields import embedding_sizes

    result = json.loads(quick_run["json"].read_text())
    rows_total = 2 * sum(embedding_sizes(VOCAB_PARAMS["quick"]["id_counts"]).values())
    train_rows, ckpt_rows = _rows(result, "train_vocab"), _rows(result, "checkpoint")
    assert [r["case"] for r in train_rows] == [r["case"] for r in ckpt_rows] == ["lcron/dense", "lcron/lazy"]
    for r in train_rows:
        assert r["value"] > 0 and r["unit"] == "requests/s" and r["embedding_rows"] == rows_total
        assert r["steps"] == 2 and r["steady_steps"] == 1                # 2 days x 1 step, the first is start-up
    for r in ckpt_rows:
        # 2 days: one day snapshot (the last day is followed by no shard day); the resume
        # state holds the weights and both Adam moments, the model only the weights
        assert len(r["day_snapshot_mb"]) == 1 and 0 < r["day_snapshot_mb"][0] < r["model_mb"]
        assert r["resume_mb"] > 2.5 * r["model_mb"] and r["value"] >= r["model_mb"]


def test_quick_bench_evaluation_metrics_and_serving_rows(quick_run):
    result = json.loads(quick_run["json"].read_text())
    for name in ("evaluate", "metrics"):
        rows = _rows(result, name)
        assert [r["setting"] for r in rows] == SETTINGS
        for r in rows:
            # Every request of the data set (2 days x 100) is evaluated.
            assert r["unit"] == "requests/s" and r["value"] > 0 and r["requests"] == 200
            assert r["peak_rss_mb"] >= r["baseline_rss_mb"] > 0
    for r in _rows(result, "evaluate"):
        assert r["load_and_inference_s"] > 0 and r["first_call_s"] > 0
    rows = _rows(result, "serving")
    assert [r["setting"] for r in rows] == SETTINGS
    for r in rows:
        assert r["case"] == "K1=100" and r["k1"] == 100 and r["value"] > 0
        assert r["retrieval_requests_per_s"] > 0 and r["scoring_requests_per_s"] > 0


def test_quick_bench_reuses_its_data(quick_run):
    data = quick_run["root"] / "data"
    marker = data / "quick.json"
    assert json.loads(marker.read_text())["requests_per_day"] == 100
    config = data / "quick" / "synthetic_config.json"
    before = config.stat().st_mtime_ns
    ctx = suite.BenchContext(mode="quick", data_dir=data, work_dir=quick_run["root"], progress=False)
    assert ctx.recflow() == config.parent and config.stat().st_mtime_ns == before
    # The scratch folder (shards, runs, scores) is gone after the run.
    assert [p.name for p in data.iterdir() if p.name.startswith("lcron-bench-")] == []


def test_quick_bench_prints_one_table(quick_run, capsys):
    # The printed table of a run restricted to one benchmark, on the data the module already made.
    result = suite.run_benchmarks(mode="quick", json_path=None, data_dir=quick_run["root"] / "data",
                                  only=["preprocess"], progress=False)
    out = capsys.readouterr().out
    assert "data (quick): 200 requests = 2 days x 100" in out and "load (1 min)" in out
    lines = [ln for ln in out.splitlines() if ln.startswith("preprocess ")]
    assert len(lines) == 2 and all("requests/s" in ln for ln in lines)
    assert [r["name"] for r in result["results"]] == ["preprocess", "preprocess"]


def test_profile_training_counts_sorts_and_ids(quick_run, tmp_path):
    from lcron.data.shards import preprocess

    shards = tmp_path / "shards"
    preprocess(quick_run["root"] / "data" / "quick", shards, 2, progress=False)
    res = profiler.profile_training(shards, "lcron", batch_size=16, steps=1, warmup=1, compile=False, memory=True,
                                 small_batch=4)
    assert res["setting"] == "two_stage" and res["batch_size"] == 16
    assert list(res["phases_ms"]) == list(profiler.PHASES) and res["phases_ms"]["backward"] > 0
    # LCRON: one NeuralSort per stage model (2) shared by its two loss parts, one label permutation.
    assert res["instrumented"]["neural_sort"]["calls"] == 2
    assert res["instrumented"]["label_permutation"]["calls"] == 1
    # Per request: context 3 + user 5 + seq 50 x 5 + items 40 x 8 = 578 ids; 16 requests.
    ids = res["ids_per_batch"]
    assert (ids["context"], ids["user"], ids["seq"], ids["items"]) == (48, 80, 4000, 5120)
    assert ids["embedding_lookups_per_model"] == 16 * 578 and ids["embedding_lookups_per_step"] == 2 * 16 * 578
    assert res["matmul_gflop_per_step"] > 0 and res["top_ops"] and res["autograd_nodes"]
    assert 0 < sum(op["share"] for op in res["top_ops"]) <= 1.0
    assert res["memory_mb"]["peak_total_mb"] > 0 and res["fixed_step_ms"]["batch_size"] == 4
    text = profiler.format_profile(res)
    assert "neural_sort 2 calls/step" in text and "9,248 lookups per model x 2 models = 18,496" in text
    # The helpers are restored after profiling.
    from lcron.losses import published, sorting

    assert published.neural_sort is sorting.neural_sort and published.label_permutation is sorting.label_permutation


def test_profile_training_needs_a_full_batch(quick_run, tmp_path):
    from lcron.data.shards import preprocess

    shards = tmp_path / "shards"
    preprocess(quick_run["root"] / "data" / "quick", shards, 2, progress=False)
    with pytest.raises(ConfigError, match="no day holds a full batch of 1000 requests"):
        profiler.profile_training(shards, "bce", batch_size=1000, compile=False)
    with pytest.raises(ConfigError, match="steps and warmup"):
        profiler.profile_training(shards, "bce", steps=0, compile=False)


def test_registry_and_bad_arguments():
    assert {"preprocess", "train", "evaluate", "metrics", "serving"} <= set(suite.BENCHMARKS)
    with pytest.raises(ConfigError, match="registered twice"):
        suite.register("preprocess")(lambda ctx: [])
    with pytest.raises(ConfigError, match="unknown benchmark"):
        suite.run_benchmarks(mode="quick", only=["nope"], json_path=None)
    with pytest.raises(ConfigError, match="bench mode"):
        suite.run_benchmarks(mode="huge", json_path=None)
    assert set(suite.RUN_PARAMS) == set(suite.SIZES)
    assert suite.method_order() == METHODS


def test_worker_entry_point_rejects_bad_steps(capsys):
    assert suite.main([]) == 2
    assert suite.main(["--worker", "nope", "{}"]) == 2
    assert suite.main(["--worker", "train"]) == 2
    assert "unknown benchmark step" in capsys.readouterr().err


def test_serving_rows_note_when_unavailable(monkeypatch):
    monkeypatch.setitem(sys.modules, "lcron.serving.evaluate", None)  # import fails
    res = suite._worker_serving({"shards": "x", "run": "y", "k1": [100], "requests": 1, "repeats": 1,
                                 "compile": False})
    assert "not available" in res["skipped"]
    rows = suite.serving_rows(res, "two_stage")
    assert rows == [{"name": "serving", "case": "-", "setting": "two_stage", "value": None, "unit": "requests/s",
                     "note": res["skipped"]}]
    assert "n/a" in suite.format_table(rows)


def test_format_table():
    text = suite.format_table([
        {"name": "preprocess", "setting": "two_stage", "value": 12345.6, "unit": "requests/s", "wall_s": 0.5,
         "all_values": [1, 2], "peak_rss_mb": 214.3},
        {"name": "train", "case": "lcron", "setting": "three_stage", "value": None, "unit": "requests/s",
         "compile_s": 1.23456},
    ])
    lines = text.splitlines()
    assert "peak MiB" in lines[0] and "case" in lines[0]
    assert "12,345.6" in lines[2] and "wall_s=0.5" in lines[2] and "all_values" not in text and " 214 " in lines[2]
    assert "lcron" in lines[3] and "n/a" in lines[3] and "compile_s=1.235" in lines[3]


def test_profiled_step_is_the_trainers_step(quick_run, tmp_path):
    """The profiler's loop body reproduces lcron.train.train step for step: same batches (seed 1,
    day 0), same initial weights, same losses in the trainer's log."""
    import torch

    from lcron.data.shards import ShardSet, preprocess
    from lcron.train import TrainConfig, build_training_objects, train

    shards = ShardSet(preprocess(quick_run["root"] / "data" / "quick", tmp_path / "shards", 2, progress=False).root)
    cfg = TrainConfig(method="lcron", batch_size=16, compile=False, days=f"{shards.days[0]}:{shards.days[-1]}")
    train(shards, tmp_path / "run", cfg, progress=False, max_steps_per_day=3)
    logged = [json.loads(line) for line in (tmp_path / "run" / "seed-1" / "train_log.jsonl").read_text().splitlines()]
    cascade, loss, optimizers = build_training_objects(shards.setting, shards.embedding_sizes, cfg, 1,
                                                       torch.device("cpu"))
    batches = profiler._endless_batches(shards, 16, "cpu")
    step = TrainStep(cascade, loss, optimizers)
    for expected in logged[:3]:  # day 0
        rec = profiler._train_step(step, batches, lambda _: nullcontext())
        assert set(rec) == set(expected) - {"seed", "day", "step"}
        for key, value in rec.items():
            assert value == pytest.approx(expected[key], rel=1e-5, abs=1e-7), key


def test_real_size_rows_are_registered_with_their_day_sizes():
    """Issue 19: a real-size preprocessing day (full mode 250,000 requests, 42,000 users) and
    the whole-process evaluation; the first five rows keep their order."""
    assert {"preprocess_day", "evaluate_process"} <= set(suite.BENCHMARKS)
    assert suite.DAY_SIZES["full"]["requests_per_day"] == 250_000 and suite.DAY_SIZES["full"]["users"] == 42_000
    assert set(suite.DAY_SIZES) == set(suite.SIZES)


def test_quick_bench_day_row_reports_the_memory_bound(quick_run):
    """Issue 19: the real-size day row states the documented bound for its day and whether
    the measured peak stayed under it."""
    from lcron.data.shards import memory_bound_mb

    (row,) = _rows(json.loads(quick_run["json"].read_text()), "day_prep")
    assert 0 < row["requests"] <= suite.DAY_SIZES["quick"]["requests_per_day"]
    assert row["bound_mb"] == pytest.approx(memory_bound_mb(row["requests"]), abs=0.1)
    assert isinstance(row["bound_held"], bool) and row["bound_held"] == (row["peak_rss_mb"] <= row["bound_mb"])
    assert row["peak_kb_per_request"] is not None


def test_day_row_is_skipped_with_a_reason_when_the_generator_would_not_fit_in_memory(tmp_path, monkeypatch, capsys):
    """A full-mode day of 250,000 requests needs ~5.7 GiB in the generator: on a smaller machine
    the row says why it is missing instead of running the machine out of memory."""
    monkeypatch.setattr(suite, "available_memory_mb", lambda: 1000.0)
    monkeypatch.setattr("lcron.data.synthetic.generate", lambda *a, **k: pytest.fail("must not generate"))
    ctx = suite.BenchContext(mode="full", data_dir=tmp_path / "data", work_dir=tmp_path / "work", progress=False)
    (row,) = suite.bench_preprocess_day(ctx)
    assert row["value"] is None and row["name"] == "day_prep" and row["case"] == "250,000 req"
    assert "needs about 5,815 MiB" in row["skipped"] and "1,000 MiB available" in row["skipped"]
    assert "WARNING day_prep skipped" in capsys.readouterr().err
    assert "n/a" in suite.format_table([row])
    assert suite.generator_memory_mb(20_000) == pytest.approx(200 + 23 * 20_000 / 1024)
