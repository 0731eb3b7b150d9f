"""The progress line in a log (not a terminal): no repeated last line."""

from __future__ import annotations

import io

from lcron.progress import Progress


def test_a_log_gets_the_final_line_once():
    stream = io.StringIO()
    with Progress(4, "work", unit="req", interval=0.0, stream=stream) as bar:
        bar.update(2)
        bar.update(2, postfix="done")           # drawn: the final state
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and lines[-1].startswith("work: 4/4 req") and lines[-1].endswith("done")


def test_the_final_line_is_written_when_the_last_update_was_not():
    stream = io.StringIO()
    bar = Progress(3, "work", unit="req", interval=3600.0, stream=stream)
    bar.update(3)                                # within the interval: not drawn
    bar.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("work: 3/3 req")


def test_slow_work_shows_seconds_per_unit_not_zero(monkeypatch):
    """A day every 25 s is 0.04 day/s: the line says 25.0 s/day instead of a stuck-looking 0.0 day/s."""
    import lcron.progress as progress

    clock = iter([0.0, 50.0, 50.0])
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
    stream = io.StringIO()
    bar = Progress(4, "preprocess", unit="day", interval=0.0, stream=stream)
    bar.update(2)
    line = stream.getvalue().splitlines()[0]
    assert "2/4 day" in line and "25.0 s/day" in line and "eta    50s" in line and "0.0 day/s" not in line
    assert progress._rate_text(1234.0, "req") == "1,234 req/s"
    assert progress._rate_text(2.5, "day") == "2.5 day/s"
    assert progress._rate_text(0.0, "day") == "- day/s"
