"""lcron.atomic: a file appears complete at its final name or not at all.

Why these tests matter: every output of the library (shards, checkpoints, metrics,
reports) goes through lcron.atomic, and the idempotent-skip / resume logic trusts that a
file present under its final name is complete. Each test interrupts a write in a
different way (an exception in the caller's block, a failing serialiser, a process
killed mid-write) and checks the final name and the folder's leftovers.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from lcron import atomic

ROOT = Path(__file__).resolve().parents[1]


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ------------------------------------------------------------------ success
def test_success_writes_the_content_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / "deep" / "er" / "out.bin"  # parent folders are created
    with atomic.atomic_open(target, "wb") as fh:
        fh.write(b"abc")
        assert not target.exists()  # nothing at the final name while writing
    assert target.read_bytes() == b"abc"
    assert _names(target.parent) == ["out.bin"]


def test_permissions_follow_the_umask_not_mkstemp(tmp_path):
    # mkstemp creates 0600 files; outputs must get what open() would give: 0666 & ~umask
    # (0644 under the usual 022), so other users / KFP steps running as another uid can read them.
    current = os.umask(0)
    os.umask(current)
    assert atomic._UMASK == current
    atomic.write_text(tmp_path / "f.txt", "x")
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o666 & ~current


def test_fsync_happens_before_the_rename(tmp_path, monkeypatch):
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])

    def replace(src, dst):
        events.append("replace")
        # the temporary file lives in the target's folder (same file system: atomic rename)
        assert Path(src).parent == Path(dst).parent and Path(src).name.startswith(".out.json.")
        assert Path(src).name.endswith(".tmp")
        return real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace)
    atomic.write_json(tmp_path / "out.json", {"a": 1})
    assert events == ["fsync", "replace"]


def test_helpers_round_trip(tmp_path):
    atomic.write_bytes(tmp_path / "b.bin", b"\x00\x01")
    atomic.write_text(tmp_path / "t.txt", "héllo")
    atomic.write_json(tmp_path / "j.json", {"n": np.int64(3), "x": np.float32(0.5), "a": np.arange(3),
                                            "p": Path("/a/b")})
    atomic.save_npy(tmp_path / "a.npy", np.arange(6, dtype=np.int16).reshape(2, 3)[:, ::2])  # non-contiguous
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "t.txt").read_text() == "héllo"
    assert json.loads((tmp_path / "j.json").read_text()) == {"n": 3, "x": 0.5, "a": [0, 1, 2], "p": "/a/b"}
    a = np.load(tmp_path / "a.npy", allow_pickle=False)
    assert a.dtype == np.int16 and a.tolist() == [[0, 2], [3, 5]]


# ------------------------------------------------------------------ interrupted writes
def test_exception_inside_the_block_leaves_nothing(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError, match="disk on fire"):
        with atomic.atomic_open(target, "wb") as fh:
            fh.write(b"half of the content")
            raise RuntimeError("disk on fire")
    assert _names(tmp_path) == []  # no file at the final name and no stray temp file


def test_exception_keeps_the_previous_complete_file(tmp_path):
    target = tmp_path / "out.txt"
    atomic.write_text(target, "version 1, complete")
    with pytest.raises(KeyboardInterrupt):
        with atomic.atomic_open(target, "w") as fh:
            fh.write("version 2, trunc")
            raise KeyboardInterrupt  # not an Exception subclass: still cleaned up
    assert target.read_text() == "version 1, complete"
    assert _names(tmp_path) == ["out.txt"]


def test_failing_np_save_leaves_nothing(tmp_path):
    # An object array cannot be saved with allow_pickle=False: np.save raises ValueError.
    with pytest.raises(ValueError):
        atomic.save_npy(tmp_path / "x.npy", np.array([{"a": 1}], dtype=object))
    assert _names(tmp_path) == []


def test_np_save_failing_after_a_partial_write_leaves_nothing(tmp_path, monkeypatch):
    atomic.save_npy(tmp_path / "x.npy", np.arange(4))

    def broken_save(fh, arr, allow_pickle=False):
        fh.write(b"\x93NUMPY partial header")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.np, "save", broken_save)
    with pytest.raises(OSError, match="No space left"):
        atomic.save_npy(tmp_path / "x.npy", np.arange(100))
    monkeypatch.undo()
    assert _names(tmp_path) == ["x.npy"]
    assert np.load(tmp_path / "x.npy").tolist() == [0, 1, 2, 3]  # the old complete file


def test_unserialisable_json_leaves_nothing(tmp_path):
    with pytest.raises(TypeError, match="not JSON serialisable: object"):
        atomic.write_json(tmp_path / "m.json", {"ok": 1, "bad": object()})
    assert _names(tmp_path) == []


class _Unpicklable:
    """Raises while torch.save pickles it, after torch has started writing the archive."""

    def __reduce__(self):
        raise RuntimeError("cannot pickle this on purpose")


def test_failing_torch_save_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError, match="on purpose"):
        atomic.save_torch(tmp_path / "m.pt", {"weights": np.zeros(3), "bad": _Unpicklable()})
    assert _names(tmp_path) == []


def test_killed_process_never_leaves_a_truncated_file_at_the_final_name(tmp_path):
    """SIGKILL mid-write (no Python cleanup can run): the final name keeps the old complete
    content; at most a hidden ``.<name>.*.tmp`` file is left, which no reader looks at."""
    target = tmp_path / "manifest.json"
    atomic.write_json(target, {"version": 1})
    child = textwrap.dedent(f"""
        import os, signal
        from lcron import atomic
        with atomic.atomic_open({str(target)!r}, "w") as fh:
            fh.write('{{"version": 2, "trunc')
            fh.flush()
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", child], env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    assert json.loads(target.read_text()) == {"version": 1}
    leftovers = [n for n in _names(tmp_path) if n != "manifest.json"]
    assert len(leftovers) == 1 and leftovers[0].startswith(".manifest.json.") and leftovers[0].endswith(".tmp")
    # the next write succeeds and does not trip over the leftover
    atomic.write_json(target, {"version": 3})
    assert json.loads(target.read_text()) == {"version": 3}
