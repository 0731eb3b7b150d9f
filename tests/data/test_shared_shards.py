"""Shard sets shared by the runs of a local sweep: one build per (data, setting), references that follow it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from lcron.data.shards import SHARDS_REFERENCE, ShardSet
from lcron.data.shared_shards import preprocess_shared, shared_folder, write_reference
from lcron.errors import DataError, OutputExistsError
from lcron.ingest import ingest

OPTIONS = {"tz_offset_hours": 8, "max_missing_fraction": 0.01}


@pytest.fixture()
def staged(tiny_recflow, tmp_path) -> Path:
    """An ingest output (a reference) of a private copy of the tiny RecFlow folder."""
    src = Path(shutil.copytree(tiny_recflow, tmp_path / "src"))
    return ingest(src, tmp_path / "raw", progress=False).path


def test_the_second_run_reuses_the_first_runs_shard_set(staged, tmp_path, monkeypatch):
    import lcron.data.shards as shards_module

    shared = tmp_path / "shared"
    first = preprocess_shared(staged, shared, 2, progress=False, **OPTIONS)
    assert first.root == shared_folder(staged, shared, 2, **OPTIONS) and first.root.parent == shared.resolve()
    assert first.root.name.startswith("two_stage-") and first.days == ["2024-01-13", "2024-01-14", "2024-01-15"]
    built = []
    real = shards_module._write_day
    monkeypatch.setattr(shards_module, "_write_day", lambda *a, **k: built.append(a) or real(*a, **k))
    second = preprocess_shared(staged, shared, 2, progress=False, **OPTIONS)
    assert second.root == first.root and built == []  # every day up to date: nothing rebuilt
    assert [p.name for p in shared.iterdir()] == [first.root.name]  # one shard set on disk
    # each run's own output is a reference that opens as the shared set
    for name in ("a", "b"):
        write_reference(tmp_path / name, second)
        assert [p.name for p in (tmp_path / name).iterdir()] == [SHARDS_REFERENCE]
        opened = ShardSet(tmp_path / name)
        assert opened.root == first.root and opened.days == first.days
        assert opened.fingerprint() == first.fingerprint()
        day = opened.load_day(first.days[0])
        ref_day = first.load_day(first.days[0])
        assert all(np.array_equal(day[k], ref_day[k]) for k in ref_day)


def test_the_key_follows_the_data_and_the_configuration(staged, tiny_recflow, tmp_path):
    base = shared_folder(staged, tmp_path, 2, **OPTIONS)
    assert base == shared_folder(staged, tmp_path, "two_stage", **OPTIONS)
    assert shared_folder(staged, tmp_path, 3, **OPTIONS).name.startswith("three_stage-")
    assert shared_folder(staged, tmp_path, 2, tz_offset_hours=0, max_missing_fraction=0.01) != base
    assert shared_folder(staged, tmp_path, 2, tz_offset_hours=8, max_missing_fraction=0.5) != base
    assert shared_folder(staged, tmp_path, 2, reference_quirks=True, **OPTIONS) != base
    fewer = ingest(tmp_path / "src", tmp_path / "raw-2days", days="2024-01-14:", progress=False).path
    assert shared_folder(fewer, tmp_path, 2, **OPTIONS) != base
    with pytest.raises(DataError, match="keyed by ingest's fingerprint.*give the output of lcron ingest"):
        shared_folder(tiny_recflow, tmp_path, 2, **OPTIONS)


def test_a_reference_to_a_changed_or_missing_set_fails_by_name(staged, tmp_path):
    shard_set = preprocess_shared(staged, tmp_path / "shared", 2, progress=False, **OPTIONS)
    write_reference(tmp_path / "ref", shard_set)
    ref = tmp_path / "ref" / SHARDS_REFERENCE
    doc = json.loads(ref.read_text())
    assert doc["path"] == str(shard_set.root) and doc["fingerprint"] == shard_set.fingerprint()
    ref.write_text(json.dumps({**doc, "fingerprint": "0" * 16}))  # as if the set was rebuilt from other data since
    with pytest.raises(DataError, match=r"shards-reference.json: the shared shard set .* changed since this "
                                        r"reference was written"):
        ShardSet(tmp_path / "ref")
    shutil.rmtree(shard_set.root)
    with pytest.raises(DataError, match="dataset.json"):
        ShardSet(tmp_path / "ref")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="holds notes.txt"):
        write_reference(tmp_path / "junk", shard_set)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / SHARDS_REFERENCE).write_text(json.dumps({"kind": "other"}))
    with pytest.raises(DataError, match="not a shard set reference"):
        ShardSet(tmp_path / "bad")
