"""Export of a trained cascade and the stand-alone loader."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lcron.batches import gather
from lcron.data.shards import ShardSet
from lcron.errors import OutputExistsError
from lcron.serving.export import add_export_arguments, export_cascade, load_exported, run_export
from lcron.serving.loader import ExportError
from lcron.run_folder import load_cascade

ROOT = Path(__file__).resolve().parents[2]
REQUEST = ("context", "user", "seq", "seq_mask")


@pytest.fixture(scope="module")
def exported_3(run_3: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_cascade(run_3, tmp_path_factory.mktemp("serving_export") / "cascade-3")


def _test_day(run: Path) -> tuple[ShardSet, dict]:
    shards = ShardSet(json.loads((run / "run.json").read_text())["shards"])
    return shards, shards.load_day(shards.days[-1])


def _request(arrays: dict, n: int) -> dict[str, np.ndarray]:
    return {k: np.asarray(arrays[k][:n]) for k in REQUEST}


def test_folder_holds_every_file_and_the_item_table_round_trips(run_2: Path, exported_2: Path):
    names = {p.name for p in exported_2.iterdir()}
    assert {"cascade.json", "README.txt", "loader.py", "user_tower.pt2", "item_tower.pt2",
            "stage-1-prerank.pt2", "corpus.faiss", "item_ids.npy", "item_features.npy"} <= names
    assert not [n for n in names if n.endswith(".tmp")]
    shards, _ = _test_day(run_2)
    ids, feats = shards.item_table()
    served = load_exported(exported_2)
    np.testing.assert_array_equal(served.video_ids, ids)
    np.testing.assert_array_equal(served.features, feats)
    assert served.index.ntotal == len(ids)
    meta = json.loads((exported_2 / "cascade.json").read_text())
    assert meta["quotas"] == [30, 20] and meta["stage_names"] == ["retrieval", "prerank"]
    assert meta["source"]["seed"] == 1 and meta["corpus_size"] == len(ids)
    readme = (exported_2 / "README.txt").read_text()
    assert "seq_mask  [B, 50]" in readme and "load_exported" in readme


@pytest.mark.parametrize("stages", [2, 3])
def test_exported_models_score_logged_candidates_like_load_cascade(stages, run_2, run_3, exported_2, exported_3):
    run, folder = (run_2, exported_2) if stages == 2 else (run_3, exported_3)
    _, arrays = _test_day(run)
    cascade, _ = load_cascade(run / "seed-1" / "model.pt")
    batch = gather(arrays, slice(0, None), REQUEST + ("items",))
    with torch.inference_mode():
        want = [z.numpy() for z in cascade(batch)]
    got = load_exported(folder).stage_scores(_request(arrays, None), np.asarray(arrays["items"]))
    assert len(got) == len(want) == stages
    for g, w in zip(got, want):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-5)


def test_retrieve_is_the_exact_top_k1_by_inner_product(run_2: Path, exported_2: Path):
    _, arrays = _test_day(run_2)
    served = load_exported(exported_2)
    req = _request(arrays, 12)
    got = served.retrieve(req, 25)
    # brute force: every corpus item's score <u, v>
    scores = served.user_vectors(req) @ served.item_vectors(served.features).T
    assert got.video_ids.shape == (12, 25)
    assert np.all(np.diff(got.scores, axis=1) <= 1e-6)  # best first
    kth = np.sort(scores, axis=1)[:, -25]
    assert np.all(got.scores[:, -1] >= kth - 1e-5)
    np.testing.assert_allclose(got.scores, np.take_along_axis(scores, got.rows, 1), atol=1e-5)
    np.testing.assert_array_equal(got.video_ids, served.video_ids[got.rows])


def test_score_keeps_the_later_stage_quota_of_the_retrieved_items(run_2: Path, exported_2: Path):
    _, arrays = _test_day(run_2)
    served = load_exported(exported_2)
    req = _request(arrays, 10)
    res = served.score(req, 50)
    assert res.video_ids.shape == (10, 20)
    np.testing.assert_array_equal(res.retrieved, served.retrieve(req, 50).video_ids)
    retrieval, prerank = res.stage_scores
    assert retrieval.shape == prerank.shape == (10, 50) and np.isfinite(prerank).all()
    # the final 20 are the 20 best of the 50 retrieved by the prerank model, best first
    order = np.argsort(-prerank, axis=1, kind="stable")[:, :20]
    np.testing.assert_array_equal(res.video_ids, np.take_along_axis(res.retrieved, order, 1))
    # K1 below the quota keeps everything retrieved; K1 above the corpus is clamped
    small = served.score(req, 5)
    assert (small.video_ids[:, 5:] == 0).all() and (small.video_ids[:, :5] > 0).all()
    assert served.retrieve(req, 10**6).video_ids.shape == (10, served.corpus_size)


def test_loader_checks_requests(exported_2: Path, run_2: Path):
    _, arrays = _test_day(run_2)
    served = load_exported(exported_2)
    req = _request(arrays, 3)
    bad = dict(req, user=req["user"].astype(np.int64))
    bad["user"][1, 2] = 10**6
    with pytest.raises(ExportError, match=r"'user' column 2 \(age\)"):
        served.score(bad, 10)
    with pytest.raises(ExportError, match="lacks 'seq_mask'"):
        served.retrieve({k: v for k, v in req.items() if k != "seq_mask"}, 10)
    with pytest.raises(ExportError, match=r"'seq' must have shape \[B, 50, 5\]"):
        served.retrieve(dict(req, seq=req["seq"][:, :10]), 10)
    with pytest.raises(ExportError, match="not an exported cascade"):
        load_exported(exported_2.parent)


def test_loader_refuses_a_partial_or_damaged_copy_by_file_name(exported_2: Path, tmp_path: Path):
    import shutil

    meta = json.loads((exported_2 / "cascade.json").read_text())
    assert set(meta["file_bytes"]) == set(meta["file_sha256"]) == {p.name for p in exported_2.iterdir()
                                                                  if p.name != "cascade.json"}
    copy = tmp_path / "copy"
    shutil.copytree(exported_2, copy)
    (copy / "corpus.faiss").unlink()  # a copy that stopped early
    with open(copy / "stage-1-prerank.pt2", "ab") as fh:  # and one file changed since the export
        fh.write(b"x")
    with pytest.raises(ExportError, match=r"copy is not a complete exported cascade: corpus.faiss is missing; "
                                          r"stage-1-prerank.pt2 has \d+ bytes, \d+ when it was exported"):
        load_exported(copy)
    # an export written before sizes were listed: presence of the files it names is still checked
    del meta["file_bytes"], meta["file_sha256"]
    (copy / "cascade.json").write_text(json.dumps(meta))
    with pytest.raises(ExportError, match="corpus.faiss is missing"):
        load_exported(copy)


def test_loader_imports_no_training_code_and_its_copy_serves_without_lcron(exported_2: Path, run_2: Path,
                                                                          tmp_path: Path):
    """One subprocess, two phases. (1) lcron is blocked: the folder's own loader.py loads and
    serves. (2) lcron unblocked: lcron.serving.export.load_exported serves, and sys.modules
    shows no training code (models, train, losses, batches, data, settings) was imported."""
    _, arrays = _test_day(run_2)
    req = _request(arrays, 6)
    np.savez(tmp_path / "req.npz", **req)
    code = (
        "import sys, importlib.abc, importlib.util, numpy as np\n"
        "folder, req = sys.argv[1], dict(np.load(sys.argv[2]))\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name == 'lcron' or name.startswith('lcron.'):\n"
        "            raise ImportError('lcron is blocked')\n"
        "blocker = Block()\n"
        "sys.meta_path.insert(0, blocker)\n"
        "spec = importlib.util.spec_from_file_location('cascade_loader', folder + '/loader.py')\n"
        "mod = importlib.util.module_from_spec(spec); sys.modules['cascade_loader'] = mod\n"
        "spec.loader.exec_module(mod)\n"
        "np.save(sys.argv[3], mod.load_exported(folder).score(req, 40).video_ids)\n"
        "print('BASE', mod.ExportError.__mro__[1].__name__)\n"
        "sys.meta_path.remove(blocker)\n"
        "from lcron.serving.export import load_exported\n"
        "assert load_exported(folder).score(req, 30).video_ids.shape == (6, 20)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[:2] in (['lcron', 'models'], ['lcron', 'train'],\n"
        "             ['lcron', 'losses'], ['lcron', 'batches'], ['lcron', 'data'], ['lcron', 'settings']))\n"
        "print('BAD', bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(exported_2), str(tmp_path / "req.npz"),
                          str(tmp_path / "ids.npy")], capture_output=True, text=True, timeout=180, cwd=str(ROOT))
    assert out.returncode == 0, out.stderr
    assert "BASE ValueError" in out.stdout  # the copy fell back to ValueError: lcron was not importable
    assert "BAD []" in out.stdout
    np.testing.assert_array_equal(np.load(tmp_path / "ids.npy"), load_exported(exported_2).score(req, 40).video_ids)


def test_export_refuses_a_non_empty_folder_and_the_cli_overwrites_only_an_export(run_2: Path, tmp_path: Path):
    out = tmp_path / "exp"
    out.mkdir()
    (out / "something").write_text("x")
    parser = argparse.ArgumentParser()
    add_export_arguments(parser)
    args = parser.parse_args(["--model", str(run_2), "--out", str(out), "--index", "hnsw", "--overwrite"])
    # a folder that is not an lcron export is never deleted, not even with --overwrite
    for overwrite in (False, True):
        with pytest.raises(OutputExistsError, match="is not an lcron export .*it will not be deleted"):
            export_cascade(run_2, out, overwrite=overwrite)
    with pytest.raises(OutputExistsError, match="is not an lcron export"):
        run_export(args)
    assert [p.name for p in out.iterdir()] == ["something"]
    # an earlier export is replaced with --overwrite, and only then
    (out / "something").unlink()
    export_cascade(run_2, out)
    with pytest.raises(OutputExistsError, match=r"not empty \(an earlier lcron export\)"):
        export_cascade(run_2, out)
    assert run_export(args) == 0
    meta = json.loads((out / "cascade.json").read_text())
    assert meta["index"]["kind"] == "hnsw"
    assert load_exported(out).score(_request(_test_day(run_2)[1], 2), 30).video_ids.shape == (2, 20)
