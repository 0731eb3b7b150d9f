"""Is each day the day it is named after? The data check that ``lcron validate`` and
``lcron preprocess`` share (issue "Reliability III"): a copied day, shifted request times,
request ids repeated from earlier days (also earlier days skipped as up to date), files in
the day folders that are not day files, and ids of a request pickle that preprocessing does
not keep. Each case is run through both commands, which must give the same message.
"""

from __future__ import annotations

import datetime as dt
import pickle
import shutil
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.feather as feather
import pytest

from lcron import cli
from lcron.data.recflow import DAY_MARGIN_HOURS, DayIdentity, RecFlowReader, RecFlowWarning
from lcron.data.shards import ShardSet, preprocess
from lcron.data.validate import validate
from lcron.errors import DataError

DAY = "2024-01-15"  # the day the ``handmade`` fixture writes
DAYS3 = ("2024-01-15", "2024-01-16", "2024-01-17")
H = 3_600_000
UTC8 = dt.timezone(dt.timedelta(hours=8))


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _error_line(err: str, cmd: str) -> str:
    """The one error line (``lcron: warning:`` lines aside), without its prefix."""
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith("lcron: warning: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    prefix = f"lcron {cmd}: error: "
    assert lines[0].startswith(prefix), lines[0]
    return lines[0][len(prefix):]


def _warning_lines(err: str) -> list[str]:
    return [ln[len("lcron: warning: "):] for ln in err.splitlines() if ln.startswith("lcron: warning: ")]


def _problems(out: str) -> list[str]:
    """The ``problem:`` lines of ``lcron validate``'s table."""
    return [ln[len("problem: "):] for ln in out.splitlines() if ln.startswith("problem: ")]


def _copy_day(root: Path, src: str, dst: str) -> None:
    """The three files of day ``src`` copied over those of day ``dst``."""
    for folder, ext in (("all_stage", "feather"), ("request_id_dict", "pkl"), ("seq_effective_50_dict", "pkl")):
        shutil.copyfile(root / folder / f"{src}.{ext}", root / folder / f"{dst}.{ext}")


def _days(root: Path) -> list[str]:
    return sorted(p.stem for p in (root / "all_stage").glob("*.feather"))


def _rename_requests(root: Path, day: str, mapping: dict[int, int]) -> None:
    """Give requests of ``day`` other ids, in all_stage and in both pickles (our own data:
    plain pickle is fine here)."""
    path = root / "all_stage" / f"{day}.feather"
    table = feather.read_table(path)
    rid = table.column("request_id").to_numpy().copy()
    for old, new in mapping.items():
        rid[rid == old] = new
    i = table.schema.get_field_index("request_id")
    feather.write_feather(table.set_column(i, "request_id", pa.array(rid, type=table.schema.field(i).type)), path)
    for folder in ("request_id_dict", "seq_effective_50_dict"):
        p = root / folder / f"{day}.pkl"
        d = pickle.loads(p.read_bytes())
        for old, new in mapping.items():
            d[new] = d.pop(old)
        p.write_bytes(pickle.dumps(d, protocol=4))


def _request_ids(root: Path, day: str) -> list[int]:
    """Distinct request ids of ``day``'s all_stage, in order of first appearance."""
    rid = feather.read_table(root / "all_stage" / f"{day}.feather").column("request_id").to_numpy()
    _, first = np.unique(rid, return_index=True)
    return rid[np.sort(first)].tolist()


@pytest.fixture(scope="module")
def recflow_120(tmp_path_factory) -> Path:
    """Generated: 2 days x 120 requests (one repeated request is 0.83%, two are 1.67%)."""
    from lcron.data.synthetic import generate

    root = tmp_path_factory.mktemp("recflow_120")
    return generate(root, num_days=2, requests_per_day=120, users=60, items=300, seed=11, progress=False)


# ------------------------------------------------------------------ the generator's data passes
def test_generated_data_passes_the_day_checks_without_a_warning(tiny_recflow):
    with warnings.catch_warnings():
        warnings.simplefilter("error", RecFlowWarning)  # nothing odd in the day folders
        out = validate(tiny_recflow, progress=False)
    assert [s["ok"] for s in out] == [True, True, True]
    assert not [w for s in out for w in s["warnings"] if "column request_" in w]  # times in their day, ids new


# ------------------------------------------------------------------ a copied day
def test_a_copied_day_is_refused_by_validate_and_preprocess_with_the_same_message(tiny_recflow, tmp_path, capsys):
    root = Path(shutil.copytree(tiny_recflow, tmp_path / "recflow"))
    d1, d2, d3 = _days(root)
    _copy_day(root, d1, d3)  # day 3 becomes a copy of day 1: the test day would be a training day
    code, out, err = _cli(capsys, "validate", "--source", str(root), "-q")
    assert code == 2
    assert _error_line(err, "validate") == f"1 of 3 day(s) failed validation: {d3}"
    problems = _problems(out)
    assert len(problems) == 2, problems
    assert problems[0].startswith(
        f"{root}/all_stage/{d3}.feather: column request_timestamp: 60 of 60 requests (100.00%) are more than 12 h "
        f"outside day {d3} (UTC+8), e.g. request_id ")
    assert problems[0].endswith("is the file a copy of another day, or named after the wrong day?")
    assert f"the requests span {d1} " in problems[0]
    first = _request_ids(root, d3)[0]
    assert problems[1] == (f"{root}/all_stage/{d3}.feather: column request_id: 60 of 60 requests (100.00%) of day "
                           f"{d3} repeat request ids of an earlier day (60 on {d1}), e.g. request_id {first} of day "
                           f"{d1}; more than 1% repeated: is the file a copy of day {d1}?")
    code, out, err = _cli(capsys, "preprocess", "--source", str(root), "--out", str(tmp_path / "s"), "--stages", "2",
                          "-q")
    assert code == 2 and out == ""
    assert _error_line(err, "preprocess") == " | ".join(problems)
    # days 1 and 2 are complete, day 3 is not
    assert ShardSet(tmp_path / "s", require_complete=False).days == [d1, d2]


def test_a_day_copied_from_the_day_before_is_caught_by_its_request_ids(tiny_recflow, tmp_path):
    """Copied from the previous day, most request times are within the 12 h margin (a warning),
    but every request id repeats."""
    root = Path(shutil.copytree(tiny_recflow, tmp_path / "recflow"))
    d1, d2, _ = _days(root)
    _copy_day(root, d1, d2)
    out = validate(root, progress=False)
    assert [s["ok"] for s in out] == [True, False, True]
    assert len(out[1]["problems"]) == 1 and "60 of 60 requests (100.00%)" in out[1]["problems"][0]
    assert any("column request_timestamp:" in w and f"fall outside day {d2} in UTC+8" in w for w in out[1]["warnings"])
    with pytest.raises(DataError, match=f"repeat request ids of an earlier day \\(60 on {d1}\\)"):
        preprocess(root, tmp_path / "s", 2, progress=False)


# ------------------------------------------------------------------ request times
def _shifted(handmade, hours: float):
    handmade.all_stage["request_timestamp"] += int(hours * H)
    return handmade


def test_request_times_far_outside_the_named_day_are_an_error(handmade, tmp_path, capsys):
    src = _shifted(handmade, -48).write(tmp_path / "recflow")  # both requests on 2024-01-13 (UTC+8)
    summary = validate(src, progress=False)[0]
    assert not summary["ok"]
    assert summary["problems"] == [
        f"{src}/all_stage/{DAY}.feather: column request_timestamp: 2 of 2 requests (100.00%) are more than 12 h "
        f"outside day {DAY} (UTC+8), e.g. request_id 502 at 2024-01-13 23:59:59; the requests span "
        "2024-01-13 00:30:15 .. 2024-01-13 23:59:59: is the file a copy of another day, or named after the wrong day?"]
    code, _, err = _cli(capsys, "preprocess", "--source", str(src), "--out", str(tmp_path / "s"), "--stages", "2", "-q")
    assert code == 2 and _error_line(err, "preprocess") == summary["problems"][0]
    assert not (tmp_path / "s" / "days" / DAY / "manifest.json").exists()


def test_request_times_a_few_hours_off_are_a_warning(handmade, tmp_path, capsys):
    src = _shifted(handmade, -6).write(tmp_path / "recflow")  # request A at 2024-01-14 18:30:15 (UTC+8)
    summary = validate(src, progress=False)[0]
    assert summary["ok"] and summary["problems"] == []
    expected = (f"{src}/all_stage/{DAY}.feather: column request_timestamp: 1 of 2 requests (50.00%) fall outside day "
                f"{DAY} in UTC+8, e.g. request_id 501 at 2024-01-14 18:30:15 (the requests span 2024-01-14 18:30:15 .. "
                "2024-01-15 17:59:59; is --tz-offset-hours 8 the data's time zone?)")
    assert summary["warnings"] == [expected]
    code, _, err = _cli(capsys, "preprocess", "--source", str(src), "--out", str(tmp_path / "s"), "--stages", "2", "-q")
    assert code == 0 and _warning_lines(err) == [expected]


def test_another_time_zone_convention_is_a_warning_not_an_error(handmade, tmp_path, capsys):
    """Files named in UTC+8, read with --tz-offset-hours 0: request A (2024-01-14 16:30 UTC) is
    outside the UTC day but within the margin."""
    src = handmade.write(tmp_path / "recflow")
    summary = validate(src, progress=False, tz_offset_hours=0)[0]
    assert summary["ok"] and len(summary["warnings"]) == 1
    assert "1 of 2 requests (50.00%) fall outside day 2024-01-15 in UTC+0" in summary["warnings"][0]
    code, _, err = _cli(capsys, "preprocess", "--source", str(src), "--out", str(tmp_path / "s"), "--stages", "2",
                        "--tz-offset-hours", "0", "-q")
    assert code == 0 and _warning_lines(err) == summary["warnings"]


def _ms(day: str, hour: float, tz: int = 8) -> int:
    d = dt.date.fromisoformat(day)
    return int(dt.datetime(d.year, d.month, d.day, tzinfo=dt.timezone(dt.timedelta(hours=tz))).timestamp() * 1000
               + hour * H)


def test_time_rule_boundaries():
    """Inside: [local midnight, next midnight). Error: more than half beyond 12 h of margin."""
    ident = DayIdentity(8)
    ts = np.array([_ms(DAY, 0), _ms(DAY, 24) - 1, _ms(DAY, 12)])
    with warnings.catch_warnings():
        warnings.simplefilter("error", RecFlowWarning)
        assert ident.check(DAY, "f", np.array([1, 2, 3]), ts) == []
    ident = DayIdentity(8)
    edge = np.array([_ms(DAY, -DAY_MARGIN_HOURS), _ms(DAY, 24 + DAY_MARGIN_HOURS) - 1])  # outside the day, not far
    with pytest.warns(RecFlowWarning, match=r"2 of 2 requests \(100\.00%\) fall outside day"):
        assert ident.check(DAY, "f", np.array([1, 2]), edge) == []
    far = np.array([_ms(DAY, -DAY_MARGIN_HOURS) - 1, _ms(DAY, 24 + DAY_MARGIN_HOURS), _ms(DAY, 1), _ms(DAY, 2)])
    with pytest.warns(RecFlowWarning, match=r"2 of 4 requests"):  # exactly half: not more than half
        assert DayIdentity(8).check(DAY, "f", np.arange(4), far) == []
    errors = DayIdentity(8).check(DAY, "f", np.arange(3), far[:3])
    assert len(errors) == 1 and "2 of 3 requests (66.67%) are more than 12 h outside" in errors[0]


# ------------------------------------------------------------------ repeated request ids
def test_repeat_rule_threshold():
    """More than 1% of a day's requests repeating an earlier day's ids is an error, 1% a warning."""
    ident = DayIdentity(8)
    ts = lambda day, n: np.full(n, _ms(day, 12))  # noqa: E731
    assert ident.check("2024-01-15", "d15", np.arange(1000), ts("2024-01-15", 1000)) == []
    assert ident.check("2024-01-16", "d16", np.arange(1000, 2000), ts("2024-01-16", 1000)) == []
    day3 = np.arange(2000, 3000)
    day3[:10] = np.arange(10)  # 10 of 1000 = 1.00%: a warning
    with pytest.warns(RecFlowWarning, match=r"d17: column request_id: 10 of 1000 requests \(1\.00%\) of day 2024-01-17 "
                                            r"repeat request ids of an earlier day \(10 on 2024-01-15\), "
                                            r"e\.g\. request_id 0 of day 2024-01-15$"):
        assert ident.check("2024-01-17", "d17", day3, ts("2024-01-17", 1000)) == []
    day4 = np.arange(3000, 4000)
    day4[:11] = np.arange(1000, 1011)  # 11 of 1000 = 1.10%: an error
    day4[11:14] = [0, 1, 2]
    errors = ident.check("2024-01-18", "d18", day4, ts("2024-01-18", 1000))
    assert errors == ["d18: column request_id: 14 of 1000 requests (1.40%) of day 2024-01-18 repeat request ids of an "
                      "earlier day (11 on 2024-01-16, 3 on 2024-01-15), e.g. request_id 1000 of day 2024-01-16; more "
                      "than 1% repeated: is the file a copy of day 2024-01-16?"]
    assert ident.days == ["2024-01-15", "2024-01-16", "2024-01-17", "2024-01-18"]


@pytest.mark.parametrize("repeats, error", [(1, False), (2, True)], ids=["0.83%-warning", "1.67%-error"])
def test_repeated_request_ids_below_and_above_the_threshold(recflow_120, tmp_path, capsys, repeats, error):
    root = Path(shutil.copytree(recflow_120, tmp_path / "recflow"))
    d1, d2 = _days(root)
    earlier = _request_ids(root, d1)[:repeats]
    mine = _request_ids(root, d2)[:repeats]
    _rename_requests(root, d2, dict(zip(mine, earlier)))
    out = validate(root, progress=False)
    core = (f"{root}/all_stage/{d2}.feather: column request_id: {repeats} of 120 requests ({repeats / 120:.2%}) of day "
            f"{d2} repeat request ids of an earlier day ({repeats} on {d1}), e.g. request_id {earlier[0]} of day {d1}")
    code, _, err = _cli(capsys, "preprocess", "--source", str(root), "--out", str(tmp_path / "s"), "--stages", "2",
                        "-q")
    if error:
        message = f"{core}; more than 1% repeated: is the file a copy of day {d1}?"
        assert [s["ok"] for s in out] == [True, False] and out[1]["problems"] == [message]
        assert code == 2 and _error_line(err, "preprocess") == message
    else:
        assert [s["ok"] for s in out] == [True, True] and core in out[1]["warnings"]
        assert code == 0 and core in _warning_lines(err)


def test_days_skipped_as_up_to_date_still_count(handmade, tmp_path, caplog):
    """Day 17 repeats day 15's request ids (its times are its own). Preprocessing days 15-16
    first, then all three, skips 15 and 16 and still refuses 17, with validate's message."""
    src = handmade.write(tmp_path / "recflow", days=DAYS3[:2])
    assert preprocess(src, tmp_path / "s", 2, progress=False).days == list(DAYS3[:2])
    day17 = handmade.for_day(handmade.table(), DAYS3[2])  # moved to day 17 ...
    i = day17.schema.get_field_index("request_id")
    day17 = day17.set_column(i, "request_id", handmade.table().column("request_id"))  # ... but day 15's ids
    feather.write_feather(day17, src / "all_stage" / f"{DAYS3[2]}.feather")
    for folder, obj in (("request_id_dict", handmade.request_id_dict), ("seq_effective_50_dict", handmade.seq_dict)):
        (src / folder / f"{DAYS3[2]}.pkl").write_bytes(pickle.dumps(obj))
    problems = validate(src, progress=False)[2]["problems"]
    assert problems == [f"{src}/all_stage/{DAYS3[2]}.feather: column request_id: 2 of 2 requests (100.00%) of day "
                        f"{DAYS3[2]} repeat request ids of an earlier day (2 on {DAYS3[0]}), e.g. request_id 502 of "
                        f"day {DAYS3[0]}; more than 1% repeated: is the file a copy of day {DAYS3[0]}?"]
    with caplog.at_level("INFO", logger="lcron"), pytest.raises(DataError) as exc:
        preprocess(src, tmp_path / "s", 2, progress=False)
    assert "day 2024-01-15: up to date, skipped" in caplog.text and "day 2024-01-16: up to date, skipped" in caplog.text
    assert str(exc.value) == problems[0]


def test_a_skipped_day_with_dropped_requests_counts_every_request_of_its_all_stage(handmade, tmp_path, capsys, caplog):
    """Day 15 dropped request 501 (missing from its sequence pickle), so its shard lacks that
    id: the ids of a skipped day that dropped requests come from its all_stage file."""
    del handmade.seq_dict[501]
    src = handmade.write(tmp_path / "recflow")  # day 15 without the sequence of 501
    argv = ["--source", str(src), "--max-missing-fraction", "0.5"]
    assert _cli(capsys, "preprocess", *argv, "--out", str(tmp_path / "s"), "--stages", "2", "-q")[0] == 0
    assert ShardSet(tmp_path / "s").load_day(DAY)["request_id"].tolist() == [502]
    day16 = handmade.for_day(handmade.table(), DAYS3[1])
    i = day16.schema.get_field_index("request_id")
    feather.write_feather(day16.set_column(i, "request_id", handmade.table().column("request_id")),
                          src / "all_stage" / f"{DAYS3[1]}.feather")
    handmade.seq_dict[501] = handmade.seq_dict[502]
    for folder, obj in (("request_id_dict", handmade.request_id_dict), ("seq_effective_50_dict", handmade.seq_dict)):
        (src / folder / f"{DAYS3[1]}.pkl").write_bytes(pickle.dumps(obj))
    problems = validate(src, progress=False, max_missing_fraction=0.5)[1]["problems"]
    assert len(problems) == 1 and "2 of 2 requests (100.00%) of day 2024-01-16" in problems[0]
    with caplog.at_level("INFO", logger="lcron"), pytest.raises(DataError) as exc:
        preprocess(src, tmp_path / "s", 2, progress=False, max_missing_fraction=0.5)
    assert "day 2024-01-15: up to date, skipped" in caplog.text
    assert str(exc.value) == problems[0]


# ------------------------------------------------------------------ names in the day folders
NOT_DAYS = [("all_stage", "2024-01-15.feather.bak", "feather"), ("all_stage", "notes.txt", "feather"),
            ("all_stage", "2024-1-16.feather", "feather"), ("all_stage", "2024-02-30.feather", "feather"),
            ("request_id_dict", "2024-01-15.pickle", "pkl"), ("seq_effective_50_dict", "2024-01-15.pkl.tmp", "pkl")]


def test_files_that_are_not_day_files_are_named_by_both_commands(handmade, tmp_path, capsys):
    src = handmade.write(tmp_path / "recflow")
    for folder, name, _ in NOT_DAYS:
        (src / folder / name).write_bytes(b"x")
    # the pickles of a day that has no all_stage file
    (src / "request_id_dict" / "2024-01-20.pkl").write_bytes(b"x")
    (src / "seq_effective_50_dict" / "2024-01-20.pkl").write_bytes(b"x")
    expected = sorted([f"ignoring {src}/{folder}/{name}: not a day file (expected YYYY-MM-DD.{ext})"
                       for folder, name, ext in NOT_DAYS]
                      + [f"ignoring {src}/{folder}/2024-01-20.pkl: there is no all_stage/2024-01-20.feather, so "
                         "2024-01-20 is not a day of this source (its days are the names of all_stage/*.feather)"
                         for folder in ("request_id_dict", "seq_effective_50_dict")])
    code, out, err = _cli(capsys, "validate", "--source", str(src), "-q")
    assert code == 0 and f"{DAY}  ok" in out
    assert sorted(_warning_lines(err)) == expected
    code, _, err = _cli(capsys, "preprocess", "--source", str(src), "--out", str(tmp_path / "s"), "--stages", "2", "-q")
    assert code == 0 and sorted(_warning_lines(err)) == expected
    assert ShardSet(tmp_path / "s").days == [DAY]


def test_a_clean_source_lists_no_odd_file(handmade, tmp_path):
    src = handmade.write(tmp_path / "recflow", days=DAYS3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RecFlowWarning)
        assert RecFlowReader(src).available_days == list(DAYS3)


# ------------------------------------------------------------------ ids of a request pickle
@pytest.mark.parametrize("label, stages", [("realshow", "2"), ("rerank_pos", "2"), ("rerank_neg", "2"),
                                           ("realshow", "3"), ("rank_pos", "3"), ("rank_neg", "2")])
def test_a_negative_id_in_a_request_pickle_is_refused_by_both_commands(handmade, tmp_path, capsys, label, stages):
    """Labels the setting does not keep used to be checked by validate only."""
    entry = handmade.request_id_dict[501]
    entry[label] = entry[label].copy()
    entry[label][0, 1] = -1  # author_id
    src = handmade.write(tmp_path / "recflow")
    code, out, err = _cli(capsys, "validate", "--source", str(src), "-q")
    problems = _problems(out)
    assert code == 2 and problems == [
        f"{src}/request_id_dict/{DAY}.pkl: label {label}: column author_id: 1 negative value(s) (min -1); ids must be "
        ">= 0, e.g. request_id 501"]
    code, _, err = _cli(capsys, "preprocess", "--source", str(src), "--out", str(tmp_path / "s"), "--stages", stages,
                        "-q")
    assert code == 2 and _error_line(err, "preprocess") == problems[0]


@pytest.mark.parametrize("column, value", [("author_id", 50), ("category_level_one", -1), ("realshow", 2),
                                           ("upload_timestamp", -5)])
def test_all_stage_columns_preprocessing_does_not_keep_are_checked_by_both_commands(handmade, tmp_path, capsys,
                                                                                    column, value):
    handmade.all_stage.loc[3, column] = value  # row 3 belongs to request 502
    src = handmade.write(tmp_path / "recflow")
    code, out, err = _cli(capsys, "validate", "--source", str(src), "-q")
    problems = _problems(out)
    assert code == 2 and len(problems) == 1 and f"column {column}: 1 " in problems[0]
    code, _, err = _cli(capsys, "preprocess", "--source", str(src), "--out", str(tmp_path / "s"), "--stages", "2", "-q")
    assert code == 2 and _error_line(err, "preprocess") == problems[0]
