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
import hashlib
import itertools
import json
import os
import shlex
import socket
import stat
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from . import atomic
from .errors import IncompleteOutputError, OutputExistsError, OutputLockedError

__all__ = ["begin", "finish", "require_complete", "require_content", "file_sha256", "has_marker", "json_kind", "refuse_foreign", "is_complete", "output_lock", "marker_path", "pending_path",
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
    """Mark ``folder`` as being written: drop the completion marker, record ``command``.

    The digests of the old marker move into the pending record (``previous``): a step that
    keeps files of an earlier run (a skipped day or seed) has :func:`finish` check them
    against those, so a file damaged since is not blessed by the next marker."""
    folder = Path(folder)
    previous = _previous_digests(folder, kind)
    marker_path(folder, kind).unlink(missing_ok=True)
    atomic.write_json(pending_path(folder, kind), {"kind": kind, "command": command, "started": _now(),
                                                   "pid": os.getpid(), "host": socket.gethostname(),
                                                   "previous": previous})


def _previous_digests(folder: Path, kind: str) -> dict[str, str]:
    """The content digests recorded for ``folder``: its marker's, else those an unfinished
    step carried over in its pending record; {} when there are none (or they are unreadable)."""
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        return _read_marker(marker_path(folder, kind))[1]
    with contextlib.suppress(OSError, ValueError, AttributeError, RecursionError):
        prev = json.loads(_read_small(pending_path(folder, kind))).get("previous") or {}
        if isinstance(prev, dict):
            return {str(k): str(v) for k, v in prev.items()}
    return {}


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
    previous = _previous_digests(folder, kind)
    digests = {}
    for rel in listed:
        p = folder / rel
        kept = not atomic.written_in_this_process(p)
        digests[rel] = _cached_sha256(p) if kept else file_sha256(p)
        if kept and rel in previous and previous[rel] != digests[rel]:
            raise IncompleteOutputError(
                f"{p} has been changed since it was written (sha256 {digests[rel][:16]}... instead of "
                f"{previous[rel][:16]}...) and this step kept it: delete it (or the day or seed folder that holds "
                "it) and run the step again")
    pending = pending_path(folder, kind)
    path = marker_path(folder, kind)
    # No time, host or command in the marker: reruns of a step stay byte-identical.
    atomic.write_json(path, {"kind": kind, "format_version": FORMAT_VERSION, "files": listed, "sha256": digests,
                             **(info or {})})
    pending.unlink(missing_ok=True)
    return path


def _read_marker(marker: Path) -> tuple[dict[str, int], dict[str, str]]:
    """(sizes, sha256 digests) of the files a completion marker lists; markers written
    before content hashes existed give no digests. Raises ValueError when malformed."""
    doc = json.loads(_read_small(marker))
    if not isinstance(doc, dict) or not isinstance(doc.get("files"), dict):
        raise ValueError("no 'files' mapping")
    files = {str(k): int(v) for k, v in doc["files"].items()}
    digests = doc.get("sha256") or {}
    if not isinstance(digests, dict) or not all(isinstance(v, str) for v in digests.values()):
        raise ValueError("malformed 'sha256' mapping")
    for rel in files:  # a listed name never leads outside the folder
        if rel.startswith("/") or ".." in Path(rel).parts:
            raise ValueError(f"listed file {rel!r} is outside the folder")
    return files, {str(k): v for k, v in digests.items()}


def _read_small(path: Path, limit: int = 64 << 20) -> str:
    """The text of a marker file, opened without following a link; a link, a device or a
    file larger than ``limit`` is not one of ours (ValueError)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ValueError("it is a symbolic link") from None
        raise
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("not a regular file")
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"larger than {limit} bytes")
    return data.decode()


def _problem(folder: Path, kind: str, legacy: Callable[[Path], str | None] | None,
             content: bool = True) -> str | None:
    """None when complete, else what is wrong (one sentence). ``content``: also compare every
    listed file's sha256 with the marker's (sizes alone miss a flipped byte)."""
    marker = marker_path(folder, kind)
    if marker.is_file() or marker.is_symlink():
        try:
            files, digests = _read_marker(marker)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return f"its completion marker {marker} is not readable ({type(exc).__name__}: {exc})"
        for rel, size in files.items():
            p = folder / rel
            try:
                actual = p.stat().st_size
            except FileNotFoundError:
                return f"{p} is missing (listed in {marker.name})"
            if actual != size:
                return f"{p} has {actual} bytes, {size} when it was written (damaged or replaced)"
        if content:
            for rel in files:
                bad = _content_problem(folder / rel, digests.get(rel), marker)
                if bad:
                    return bad
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


def is_complete(folder: str | os.PathLike, kind: str, legacy: Callable[[Path], str | None] | None = None,
                content: bool = True) -> bool:
    return _problem(Path(folder), kind, legacy, content) is None


def require_complete(folder: str | os.PathLike, kind: str, what: str, how: str,
                     legacy: Callable[[Path], str | None] | None = None, content: bool = True) -> None:
    """Raise :class:`IncompleteOutputError` unless ``folder`` holds a complete output of ``kind``.

    ``what`` names the output ("shard set"), ``how`` is the command that completes it;
    the command recorded by the writer is preferred when there is one. ``legacy(folder)``
    judges folders written before markers existed: None when provably complete, else the problem.
    ``content=False`` checks names and sizes only; the reader then calls :func:`require_content`
    for the files it reads (a shard set's reader reads one day, not 19 GB).
    """
    folder = Path(folder)
    problem = _problem(folder, kind, legacy, content)
    if problem is None:
        return
    recorded = None
    with contextlib.suppress(OSError, ValueError, AttributeError):
        recorded = json.loads(pending_path(folder, kind).read_text()).get("command")
    if "has been changed since it was written" in problem or "when it was written (damaged" in problem:
        raise IncompleteOutputError(f"{what} {folder} is damaged: {problem}; delete the damaged file (or the day or "
                                    f"seed folder that holds it) and make it again with: {recorded or how}")
    raise IncompleteOutputError(f"{what} {folder} is incomplete: {problem}; complete it with: {recorded or how}")


# --------------------------------------------------------------------------- ownership
def has_marker(folder: str | os.PathLike, kinds: Iterable[str] | None = None) -> bool:
    """Whether ``folder`` carries a completion marker or pending record of one of ``kinds``
    (None: of any kind)."""
    folder = Path(folder)
    if kinds is None:
        return any(folder.glob(marker_path(".", "*").name)) or any(folder.glob(pending_path(".", "*").name))
    return any(os.path.lexists(marker_path(folder, k)) or os.path.lexists(pending_path(folder, k)) for k in kinds)


def json_kind(path: str | os.PathLike) -> Any:
    """The ``kind`` field of a small JSON document (None when absent, unreadable or not JSON)."""
    try:
        doc = json.loads(_read_small(Path(path), 16 << 20))
    except (OSError, ValueError, RecursionError):
        return None
    return doc.get("kind") if isinstance(doc, dict) else None


def refuse_foreign(folder: str | os.PathLike, ours: bool, what: str) -> None:
    """Refuse a non-empty ``folder`` that is not ``what`` (``ours`` false): a step never writes
    into, clears or replaces a folder lcron did not make - ``--overwrite`` included, because
    the folder given may be a data source or anything else of the user's."""
    folder = Path(folder)
    if not os.path.lexists(folder):
        return
    if not folder.is_dir():
        raise OutputExistsError(f"{folder} exists and is not a folder; lcron does not replace it - choose another "
                                "output folder")
    if ours:
        return
    names = sorted(p.name for p in itertools.islice(folder.iterdir(), 6))
    if names:
        shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        raise OutputExistsError(f"{folder} is not empty and is not {what} (it holds {shown}); lcron never writes into "
                                "or replaces a folder it did not make, even with --overwrite: choose a new or empty "
                                "folder")


# --------------------------------------------------------------------------- content
_HASH_BLOCK = 4 << 20
# Files already verified in this process, by (device, inode, size, mtime): a training run
# reads each shard day once per seed, and hashes it once.
_VERIFIED: dict[tuple[int, int, int, int], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file, read in 4 MiB blocks (about 1.7 GB/s with the CPU's SHA
    instructions; docs/reliability.md has the cost on a RecFlow-size shard set)."""
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as fh:
        st = os.fstat(fh.fileno())
        buf = bytearray(_HASH_BLOCK)
        view = memoryview(buf)
        while n := fh.readinto(buf):
            h.update(view[:n])
    digest = h.hexdigest()
    _VERIFIED[(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)] = digest
    return digest


def _cached_sha256(path: Path) -> str:
    st = path.stat()
    return _VERIFIED.get((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)) or file_sha256(path)


def _content_problem(path: Path, expected: str | None, marker: Path) -> str | None:
    if expected is None:  # a marker from before content hashes: sizes only
        return None
    try:
        actual = _cached_sha256(path)
    except FileNotFoundError:  # the reader names a missing file itself
        return None
    except OSError as exc:
        return f"{path} is not readable ({exc.strerror or exc})"
    if actual != expected:
        return (f"{path} has been changed since it was written: its sha256 {actual[:16]}... differs from "
                f"{expected[:16]}... recorded in {marker.name} (damaged or replaced)")
    return None


def require_content(folder: str | os.PathLike, kind: str, what: str, how: str,
                    files: Iterable[str | os.PathLike]) -> None:
    """Refuse, as :func:`require_complete` does, when one of ``files`` (inside ``folder``) no
    longer has the content its completion marker recorded. Files the marker does not list, or
    a marker without hashes (older outputs), are not checked."""
    folder = Path(folder)
    marker = marker_path(folder, kind)
    try:
        _, digests = _read_marker(marker)
    except FileNotFoundError:
        return
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise IncompleteOutputError(f"{what} {folder} is damaged: its completion marker {marker} is not readable "
                                    f"({type(exc).__name__}: {exc}); redo it with: {how}") from None
    for f in files:
        p = Path(f)
        rel = (p.relative_to(folder) if p.is_relative_to(folder) else p).as_posix()
        bad = _content_problem(folder / rel, digests.get(rel), marker)
        if bad:
            raise IncompleteOutputError(f"{what} {folder} is damaged: {bad}; redo it with: {how}")


# --------------------------------------------------------------------------- lock
def lock_path(folder: str | os.PathLike) -> Path:
    folder = Path(os.path.abspath(folder))
    return folder.parent / f".{folder.name}.lcron-lock"


def _read_holder(path: Path) -> dict[str, Any]:
    """The holder recorded in a lock file; a link or anything but a small regular file holds none."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return {}
    try:
        return _holder_of(fd)
    finally:
        os.close(fd)


def _holder_of(fd: int) -> dict[str, Any]:
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return {}
        doc = json.loads(os.pread(fd, 1 << 16, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _open_lock(path: Path, folder: Path) -> int:
    """Open (or create) the lock file without following a link planted at its name: lcron
    never writes through a symbolic link to a file elsewhere. Anything but a regular file
    there is refused, naming it."""
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP or path.is_symlink():
            raise OutputLockedError(
                f"{path} (the lock file of {folder}) is a symbolic link; lcron does not follow links at its lock "
                f"files - remove it (rm {shlex.quote(str(path))}) and start again") from None
        raise OSError(exc.errno, f"cannot open the lock file of {folder}: {exc.strerror}", str(path)) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OutputLockedError(f"{path} (the lock file of {folder}) is not a regular file; remove it and start "
                                "again")
    return fd


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
    holder = _read_holder(lock_path(folder))
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
    atomic.forget_written(folder)  # a step's own writes count from here (finish trusts only those)
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
            fd = _open_lock(path, folder)
        except FileNotFoundError:  # a failing step of another process removed the empty parent just now
            path.parent.mkdir(parents=True, exist_ok=True)
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder_of(fd)
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
            same = os.fstat(fd).st_ino == os.stat(path, follow_symlinks=False).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        old = _holder_of(fd)
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
