"""Give the C heap's free pages back to the operating system (glibc ``malloc_trim``).

Why: unpickling a RecFlow dict creates hundreds of thousands of small numpy arrays on the
C heap. Once the dict is dropped their memory is free for Python but stays resident, and
the large arrays built next (stacked sequences, shard arrays) are mapped fresh, so the
process's peak would carry the freed dict on top of them. ``malloc_trim(0)`` returns every
free heap page (a few milliseconds). Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["trim", "available_bytes"]

_trim = None
if sys.platform.startswith("linux"):
    try:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        _trim = getattr(_libc, "malloc_trim", None)
    except OSError:  # pragma: no cover - no C library to load
        _trim = None


def trim() -> bool:
    """Release free heap pages; True when ``malloc_trim`` ran."""
    if _trim is None:
        return False
    _trim(0)
    return True


def available_bytes() -> int | None:
    """MemAvailable of /proc/meminfo: what new allocations can get without swapping (None
    where the file does not exist)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None
