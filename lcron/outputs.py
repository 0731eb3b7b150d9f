"""Multi-file outputs: completion markers and one writer at a time.

:mod:`lcron.atomic` makes each *file* complete or absent. An output made of many files
(a shard set, a run folder, an evaluation, a serving result, an export) needs two more
guarantees, and both live here so every step gets them the same way:

* **Completion marker.** A writer calls :func:`begin` before its first file (this removes
  the old marker and records the command in ``_pending-<kind>.json``) and :func:`finish`
  after its last one (this writes ``_complete-<kind>.json`` listing every file with its
  size, then removes the pending record). A reader calls :func:`require_complete` before
  reading anything: no marker, or a listed file missing or of another size, is a
  :class:`~lcron.errors.IncompleteOutputError` naming what is missing and the command that
  completes it. Outputs written before markers existed ("legacy": neither marker nor
  pending record) are accepted when a per-kind check proves them complete, and refused
  with the same kind of message otherwise.
* **Lock.** :func:`output_lock` holds an advisory ``flock`` on ``.<name>.lcron-lock``
  beside the folder for the duration of a step (beside, not inside, so "is the folder
  empty" checks and a rename of the whole folder are unaffected). A second writer fails at
  once naming the holder (pid, host, start time, command). The kernel drops a ``flock``
  when its process dies, so after a SIGKILL the next writer gets the lock and, seeing the
  dead pid of the same host in the file, takes it over with a warning.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import os
import shlex
import socket
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from . import atomic
from .errors import IncompleteOutputError, OutputLockedError

__all__ = ["begin", "finish", "require_complete", "is_complete", "output_lock", "marker_path", "pending_path",
           "lock_path", "command_line", "current_command", "OutputWarning"]

FORMAT_VERSION = 1
_COMMAND: list[str] | None = None


class OutputWarning(UserWarning):
    """Something about an output folder worth telling (a stale lock taken over)."""


# --------------------------------------------------------------------------- the command
@contextlib.contextmanager
def command_line(argv: Iterable[str]) -> Iterator[None]:
    """Record the running ``lcron`` command; markers and lock files quote it (the CLI sets it)."""
    global _COMMAND
    old, _COMMAND = _COMMAND, list(argv)
    try:
        yield
    finally:
        _COMMAND = old


def current_command(fallback: str) -> str:
    """The ``lcron ...`` command being run, or ``fallback`` (library calls, pipeline steps)."""
    return shlex.join(_COMMAND) if _COMMAND else fallback


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


# --------------------------------------------------------------------------- markers
def marker_path(folder: str | os.PathLike, kind: str) -> Path:
    return Path(folder) / f"_complete-{kind}.json"


def pending_path(folder: str | os.PathLike, kind: str) -> Path:
    return Path(folder) / f"_pending-{kind}.json"


def begin(folder: str | os.PathLike, kind: str, command: str) -> None:
    """Mark ``folder`` as being written: drop the completion marker, record ``command``."""
    folder = Path(folder)
    marker_path(folder, kind).unlink(missing_ok=True)
    atomic.write_json(pending_path(folder, kind), {"kind": kind, "command": command, "started": _now(),
                                                   "pid": os.getpid(), "host": socket.gethostname()})


def finish(folder: str | os.PathLike, kind: str, files: Iterable[str | os.PathLike],
           info: dict[str, Any] | None = None) -> Path:
    """Write the completion marker listing ``files`` (paths inside ``folder``) with their sizes."""
    folder = Path(folder)
    listed: dict[str, int] = {}
    for f in files:
        p = Path(f)
        # An absolute path, ``folder / name`` as the folder was given (maybe relative), or a bare name.
        if p.is_absolute():
            if not p.is_relative_to(folder.absolute()):
                raise ValueError(f"{p} is not inside the output folder {folder}")
            rel = p.relative_to(folder.absolute())
        else:
            rel = p.relative_to(folder) if p.is_relative_to(folder) else p
        try:
            listed[rel.as_posix()] = (folder / rel).stat().st_size
        except FileNotFoundError:
            raise IncompleteOutputError(f"{folder / rel}: expected output file is missing at the end of the "
                                        "step; the output is not marked complete") from None
    pending = pending_path(folder, kind)
    path = marker_path(folder, kind)
    # No time, host or command in the marker: reruns of a step stay byte-identical.
    atomic.write_json(path, {"kind": kind, "format_version": FORMAT_VERSION, "files": listed, **(info or {})})
    pending.unlink(missing_ok=True)
    return path


def _problem(folder: Path, kind: str, legacy: Callable[[Path], str | None] | None) -> str | None:
    """None when complete, else what is wrong (one sentence)."""
    marker = marker_path(folder, kind)
    if marker.is_file():
        try:
            doc = json.loads(marker.read_text())
            files = dict(doc["files"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return f"its completion marker {marker} is not readable ({type(exc).__name__})"
        for rel, size in files.items():
            p = folder / rel
            try:
                actual = p.stat().st_size
            except FileNotFoundError:
                return f"{p} is missing (listed in {marker.name})"
            if actual != size:
                return f"{p} has {actual} bytes, {size} when it was written (damaged or replaced)"
        return None
    pending = pending_path(folder, kind)
    if pending.is_file():
        try:
            doc = json.loads(pending.read_text())
        except (OSError, ValueError):
            doc = {}
        holder = _live_holder(folder)
        state = (f"it is being written right now by pid {holder.get('pid')} on {holder.get('host')}"
                 if holder else "the step writing it did not finish")
        return (f"{state} (started {doc.get('started', '?')}; no {marker.name})")
    if legacy is not None:
        return legacy(folder)
    return f"{marker} is missing"


def is_complete(folder: str | os.PathLike, kind: str, legacy: Callable[[Path], str | None] | None = None) -> bool:
    return _problem(Path(folder), kind, legacy) is None


def require_complete(folder: str | os.PathLike, kind: str, what: str, how: str,
                     legacy: Callable[[Path], str | None] | None = None) -> None:
    """Raise :class:`IncompleteOutputError` unless ``folder`` holds a complete output of ``kind``.

    ``what`` names the output ("shard set"), ``how`` is the command that completes it;
    the command recorded by the writer is preferred when there is one. ``legacy(folder)``
    judges folders written before markers existed: None when provably complete, else the problem.
    """
    folder = Path(folder)
    problem = _problem(folder, kind, legacy)
    if problem is None:
        return
    recorded = None
    with contextlib.suppress(OSError, ValueError, AttributeError):
        recorded = json.loads(pending_path(folder, kind).read_text()).get("command")
    raise IncompleteOutputError(f"{what} {folder} is incomplete: {problem}; complete it with: {recorded or how}")


# --------------------------------------------------------------------------- lock
def lock_path(folder: str | os.PathLike) -> Path:
    folder = Path(os.path.abspath(folder))
    return folder.parent / f".{folder.name}.lcron-lock"


def _read_holder(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _live_holder(folder: Path) -> dict[str, Any] | None:
    """The recorded holder of ``folder``'s lock when that process is still running."""
    path = lock_path(folder)
    if not path.is_file():
        return None
    holder = _read_holder(path)
    if not holder:
        return None
    if holder.get("host") != socket.gethostname() or _pid_alive(holder.get("pid")):
        return holder
    return None


def _describe(holder: dict[str, Any]) -> str:
    return (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, started {holder.get('started', '?')}"
            f", command: {holder.get('command') or '?'}")


@contextlib.contextmanager
def output_lock(folder: str | os.PathLike, command: str) -> Iterator[Path]:
    """Hold the advisory lock of output ``folder`` for the block (see the module docstring).

    Folders created to hold the lock file are removed again if the step leaves them empty."""
    folder = Path(folder)
    path = lock_path(folder)
    created = _make_parents(path.parent, folder)
    try:
        yield from _locked(folder, path, command)
    finally:
        _remove_if_empty(created)


def _make_parents(parent: Path, folder: Path) -> list[Path]:
    """Create ``parent`` and its missing ancestors; returns those it created, deepest first."""
    created = [p for p in [parent, *parent.parents] if not p.exists()]
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot create the folder of {folder}: {exc.strerror}", str(parent)) from None
    return created


def _remove_if_empty(folders: list[Path]) -> None:
    """Remove the folders the lock created when the step left nothing in them (it failed before
    writing), deepest first: a failed step leaves no empty directory tree behind."""
    for p in folders:
        try:
            p.rmdir()
        except OSError:  # not empty (the step wrote its output), or already gone
            return


def _locked(folder: Path, path: Path, command: str) -> Iterator[Path]:
    import fcntl

    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except FileNotFoundError:  # a failing step of another process removed the empty parent just now
            path.parent.mkdir(parents=True, exist_ok=True)
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(path)
            os.close(fd)
            raise OutputLockedError(
                f"{folder} is being written by another lcron process ({_describe(holder)}); wait for it to "
                f"finish or choose another output folder (lock file {path})") from None
        except OSError as exc:  # a file system without flock (some network mounts)
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                os.close(fd)
                raise
            warnings.warn(f"{path}: file locks are not supported here ({exc.strerror}); "
                          "nothing stops a second writer of this folder", OutputWarning, stacklevel=4)
        # The file may have been removed and recreated by a finishing holder between our
        # open and flock: then we lock a dead inode; start again on the current one.
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        old = _read_holder(path)
        host = socket.gethostname()
        if old:
            if old.get("host") == host and not _pid_alive(old.get("pid")):
                warnings.warn(f"{folder}: taking over the stale lock of a process that is no longer running "
                              f"({_describe(old)}); its output is checked before use", OutputWarning, stacklevel=4)
            elif old.get("host") != host:
                os.close(fd)
                raise OutputLockedError(
                    f"{folder} is locked by a process on another host ({_describe(old)}); if it is no longer "
                    f"running, remove {path} and start again")
        me = {"pid": os.getpid(), "host": host, "started": _now(), "command": command}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        os.fsync(fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.close(fd)
        raise
    try:
        yield path
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(fd)
