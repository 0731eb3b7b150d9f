"""A dependency-free progress display for long work (stderr, one line, rate and ETA).

On a terminal the line is redrawn in place; elsewhere (CI logs, KFP pods) a line is
printed at most every ``interval`` seconds so logs stay readable.
"""

from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")


class Progress:
    def __init__(self, total: int | None, desc: str, unit: str = "it", interval: float = 2.0,
                 enabled: bool = True, stream=None) -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = 0.2 if self.tty else interval
        self.count = 0
        self.start = self.last = time.perf_counter()
        self.postfix = ""
        self._drawn: tuple[int, str] | None = None  # (count, postfix) of the last line written

    def update(self, n: int = 1, postfix: str | None = None) -> None:
        self.count += n
        if postfix is not None:
            self.postfix = postfix
        now = time.perf_counter()
        if self.enabled and now - self.last >= self.interval:
            self.last = now
            self._draw(final=False)

    def close(self) -> None:
        # A log (not a terminal) whose last line already says where things ended gets no copy of it.
        if self.enabled and (self.tty or self._drawn != (self.count, self.postfix)):
            self._draw(final=True)

    def _draw(self, final: bool) -> None:
        elapsed = time.perf_counter() - self.start
        rate = self.count / elapsed if elapsed > 0 else 0.0
        if self.total:
            pct = 100.0 * self.count / self.total
            eta = (self.total - self.count) / rate if rate > 0 else float("nan")
            body = (f"{self.count}/{self.total} {self.unit} ({pct:5.1f}%) {_rate_text(rate, self.unit)} "
                    f"eta {eta:5.0f}s")
        else:
            body = f"{self.count} {self.unit} {_rate_text(rate, self.unit)}"
        line = f"{self.desc}: {body} {self.postfix}".rstrip()
        self._drawn = (self.count, self.postfix)
        if self.tty:
            self.stream.write("\r" + line + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _rate_text(rate: float, unit: str) -> str:
    """``1,234 req/s``, ``2.5 day/s``, or for slow work the time per unit (``24.3 s/day``):
    a day every 20 s would read "0.0 day/s", which looks stuck."""
    if rate >= 10:
        return f"{rate:,.0f} {unit}/s"
    if rate >= 0.1:
        return f"{rate:.1f} {unit}/s"
    if rate > 0:
        return f"{1.0 / rate:,.1f} s/{unit}"
    return f"- {unit}/s"


def track(items: Iterable[T], total: int | None, desc: str, unit: str = "it", enabled: bool = True) -> Iterator[T]:
    with Progress(total, desc, unit, enabled=enabled) as bar:
        for item in items:
            yield item
            bar.update()
