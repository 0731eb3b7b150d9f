"""Atomic file output: a file appears complete at its final name or not at all.

Every writer in the library goes through these helpers: the content is written to a
temporary name in the same folder (same file system, so the rename is atomic), flushed
and fsynced, then renamed over the final name. An exception or a kill mid-write leaves
at most a ``.tmp`` file, never a truncated file under the final name.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator

import numpy as np

_UMASK = os.umask(0)
os.umask(_UMASK)


# Every final path this process has written: a completion marker trusts these as they are and
# checks any other file it lists (kept from an earlier run) against the earlier digests.
_WRITTEN: set[str] = set()


def written_in_this_process(path: str | os.PathLike) -> bool:
    """Whether this process wrote ``path`` through this module (since :func:`forget_written`)."""
    return os.path.abspath(path) in _WRITTEN


def forget_written(folder: str | os.PathLike) -> None:
    """Start counting writes under ``folder`` afresh (a step begins writing it)."""
    prefix = os.path.join(os.path.abspath(folder), "")
    _WRITTEN.difference_update([p for p in _WRITTEN if p.startswith(prefix)])


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success it is renamed to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # mkstemp creates the file with O_EXCL (a planted file or link at the name is never
    # followed); the rename below replaces a link at ``path`` instead of writing through it.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    ok = False
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give them the usual permissions
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _WRITTEN.add(os.path.abspath(path))
        ok = True
    except OSError as exc:
        if exc.filename is not None:
            raise
        # ENOSPC and friends come from write/fsync without a file name, and numpy's short
        # write ("1200 requested and 496 written") without even an errno: name the output
        # and, where the system did not say, find the cause.
        code, cause = (exc.errno, exc.strerror or str(exc)) if exc.errno is not None else _short_write_cause(tmp, exc)
        raise OSError(code, cause, str(path)) from exc
    finally:
        if not ok:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


def _short_write_cause(tmp: str, exc: OSError) -> tuple[int, str]:
    """(errno, message) for a write that stopped short without an errno: a full file system,
    the process's file-size limit (``ulimit -f``), or else the writer's own words."""
    import errno
    import resource

    detail = str(exc) or "short write"
    with contextlib.suppress(OSError):
        st = os.statvfs(os.path.dirname(tmp) or ".")
        free = st.f_bavail * st.f_frsize
        if free < 1 << 20:
            return errno.ENOSPC, f"No space left on device ({free} bytes free; {detail})"
    with contextlib.suppress(OSError, ValueError):
        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        if limit != resource.RLIM_INFINITY and os.stat(tmp).st_size >= limit - (1 << 16):
            return errno.EFBIG, (f"File too large: the process may write files of at most {limit} bytes "
                                 f"(ulimit -f); {detail}")
    return errno.EIO, f"the write stopped short ({detail})"


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as fh:
        fh.write(text)


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    write_text(path, json.dumps(obj, indent=indent, sort_keys=False, default=_json_default) + "\n")


def save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    with atomic_open(path, "wb") as fh:
        np.save(fh, np.ascontiguousarray(array), allow_pickle=False)


def save_torch(path: str | os.PathLike, obj: Any) -> None:
    import torch

    with atomic_open(path, "wb") as fh:
        torch.save(obj, fh)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
