"""The output protocol (lcron.step_output) on its own: what a step's claim on its folder
decides, without running a step. The steps' own tests check that each keeps its wording."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lcron import outputs
from lcron.errors import OutputExistsError, OutputLockedError
from lcron.hashing import config_hash
from lcron.step_output import field_diff, step_output

KIND = "thing"
INPUTS = {"a": 1, "b": [1, 2]}


def _ours(folder: Path) -> bool:
    return outputs.json_kind(folder / "record.json") == "lcron-thing"


def _write(folder: Path, inputs: dict, **extra) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    doc = {"kind": "lcron-thing", "inputs": inputs, "inputs_hash": config_hash(inputs), **extra}
    (folder / "record.json").write_text(json.dumps(doc))


def _claim(folder: Path, inputs: dict = INPUTS, overwrite: bool = False, **kwargs):
    with step_output(folder, "lcron thing", kind=KIND, ours=_ours, folder_what="an lcron thing folder") as step:
        return step.claim("record.json", inputs, config_hash(inputs), overwrite, held="a thing of other inputs",
                          **kwargs)


def test_a_new_folder_is_claimed_with_nothing_before(tmp_path):
    claim = _claim(tmp_path / "out")
    assert claim.previous is None and not claim.same
    assert not (tmp_path / "out").exists()  # claiming writes nothing


def test_the_same_inputs_return_the_record_and_other_inputs_are_refused(tmp_path):
    out = tmp_path / "out"
    _write(out, INPUTS, value=7)
    claim = _claim(out)
    assert claim.same and claim.previous["value"] == 7
    with pytest.raises(OutputExistsError, match=r"out holds a thing of other inputs \(a 1 -> 2\); choose another "
                                                r"--out or pass --overwrite"):
        _claim(out, {"a": 2, "b": [1, 2]})
    claim = _claim(out, {"a": 2, "b": [1, 2]}, overwrite=True)
    assert not claim.same and claim.previous["value"] == 7


def test_a_folder_lcron_did_not_make_is_refused_even_with_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("x")
    with pytest.raises(OutputExistsError, match="is not empty and is not an lcron thing folder.*even with --overwrite"):
        _claim(out, overwrite=True)
    assert (out / "mine.txt").read_text() == "x"


def test_a_record_of_another_kind_is_refused_even_with_overwrite(tmp_path):
    out = tmp_path / "out"
    _write(out, INPUTS)
    (out / "_complete-thing.json").write_text("{}")  # the folder is ours, its record is not
    (out / "record.json").write_text('{"kind": "theirs"}')
    with pytest.raises(OutputExistsError, match="record.json exists and is not an lcron thing; it is left untouched"):
        with step_output(out, "c", kind=KIND, ours=lambda f: True) as step:
            step.claim("record.json", INPUTS, config_hash(INPUTS), True, record_noun="thing",
                       record_kind_ok=lambda kind: kind == "lcron-thing")


def test_an_unreadable_record_matches_nothing(tmp_path):
    out = tmp_path / "out"
    _write(out, INPUTS)
    (out / "record.json").write_text("{not json")
    (out / "_complete-thing.json").write_text("{}")
    with pytest.raises(OutputExistsError, match=r"\(unknown format\)"):
        with step_output(out, "c", kind=KIND, ours=lambda f: True) as step:
            step.claim("record.json", {}, "h", False)


def test_inputs_compared_as_json_when_no_hash_is_recorded(tmp_path):
    out = tmp_path / "out"
    _write(out, {"a": [1, 2]})
    with step_output(out, "c", ours=_ours) as step:
        assert step.claim("record.json", {"a": (1, 2)}, None, False).same  # a tuple is a JSON list


def test_begin_and_finish_write_the_markers_and_the_lock_is_held(tmp_path):
    out = tmp_path / "out"
    with step_output(out, "lcron thing --out out", kind=KIND, ours=_ours) as step:
        with pytest.raises(OutputLockedError):
            with step_output(out, "second", kind=KIND):
                pass
        step.begin()
        assert json.loads(outputs.pending_path(out, KIND).read_text())["command"] == "lcron thing --out out"
        (out / "f.txt").write_text("data")
        step.finish([out / "f.txt"], {"n": 1})
    outputs.require_complete(out, KIND, "thing", "x")
    assert not outputs.lock_path(out).exists()


def test_field_diff_names_each_differing_field():
    assert field_diff({"a": 1, "b": 2}, {"a": 1, "b": 3, "c": None}) == "b 2 -> 3"
    assert field_diff({}, {}) == "unknown format"
