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
