"""lcron.safe_pickle: only containers and numpy data come out of a pickle; nothing runs."""

from __future__ import annotations

import os
import pickle
import sys
import types

import numpy as np
import pytest

from lcron.errors import DataError, UnsafePickleError
from lcron.safe_pickle import allowed_global_names, safe_load


class _RunsShell:
    """Unpickling this with plain pickle would run ``os.system(cmd)``."""

    def __init__(self, cmd: str) -> None:
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


def test_callable_payload_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({1: _RunsShell(f"touch {marker}")})
    # Sanity: the payload is real (plain pickle would create the marker); don't run it here.
    assert b"system" in payload
    with pytest.raises(UnsafePickleError) as exc:
        safe_load(payload, source="request_id_dict/2024-01-13.pkl")
    msg = str(exc.value)
    assert "request_id_dict/2024-01-13.pkl" in msg
    assert f"{os.system.__module__}.system" in msg  # posix.system on Linux
    assert not marker.exists()


@pytest.mark.parametrize("target", [eval, getattr, __import__, os.popen, pickle.loads])
def test_other_globals_are_refused(target):
    class Evil:
        def __reduce__(self):
            return (target, ("1",))

    data = pickle.dumps(Evil(), protocol=2)
    with pytest.raises(UnsafePickleError, match=r"refusing to unpickle global "):
        safe_load(data, source="x.pkl")


def test_refused_even_from_a_file_object(tmp_path):
    p = tmp_path / "evil.pkl"
    p.write_bytes(pickle.dumps(_RunsShell("true")))
    with open(p, "rb") as fh, pytest.raises(UnsafePickleError, match="evil.pkl"):
        safe_load(fh, source=str(p))


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_numpy2_pickles_load(protocol):
    obj = {
        1: {"rank_pos": np.arange(16, dtype=np.int64).reshape(2, 8), "empty": np.zeros((0, 8), np.int32)},
        np.int64(2): np.arange(500, dtype=np.int16).reshape(50, 10),
        "scalars": [np.int64(7), np.uint8(3), np.float64(0.5), np.bool_(True)],
        "containers": (set([1, 2]), frozenset([3]), b"raw", bytearray(b"ba"), 1.5, complex(1, 2), None, True),
    }
    back = safe_load(pickle.dumps(obj, protocol=protocol), source="x.pkl")
    np.testing.assert_array_equal(back[1]["rank_pos"], obj[1]["rank_pos"])
    assert back[1]["empty"].shape == (0, 8) and back[1]["empty"].dtype == np.int32
    assert back[2].dtype == np.int16 and back[2].shape == (50, 10)
    assert back[np.int64(2)] is back[2]  # numpy int keys hash like Python ints
    assert back["scalars"] == obj["scalars"]
    assert back["containers"] == obj["containers"]


def test_numpy_dtype_classes_load():
    back = safe_load(pickle.dumps([np.dtypes.Int64DType, np.dtype("<u2")], protocol=4), source="x.pkl")
    assert back == [np.dtypes.Int64DType, np.dtype("<u2")]


def _numpy1_style(obj, protocol, monkeypatch):
    """Pickle ``obj`` the way numpy 1.x does: reconstructors under ``numpy.core.*``.

    numpy 2 writes ``numpy._core.multiarray._reconstruct``; here stand-ins named
    ``numpy.core.multiarray._reconstruct`` / ``.scalar`` are substituted via
    ``reducer_override`` (a fake module is registered so pickle can verify the names).
    """
    from numpy._core import multiarray

    fake = types.ModuleType("numpy.core.multiarray")

    def _reconstruct(*a):  # pragma: no cover - only its name is pickled
        return multiarray._reconstruct(*a)

    def scalar(*a):  # pragma: no cover - only its name is pickled
        return multiarray.scalar(*a)

    for f in (_reconstruct, scalar):
        f.__module__, f.__qualname__ = "numpy.core.multiarray", f.__name__
        setattr(fake, f.__name__, f)
    monkeypatch.setitem(sys.modules, "numpy.core.multiarray", fake)

    class P(pickle.Pickler):
        def reducer_override(self, o):
            if isinstance(o, np.ndarray):
                fn, args, state = o.__reduce__()
                return (_reconstruct, args, state)
            if isinstance(o, np.generic):
                fn, args = o.__reduce__()
                return (scalar, args)
            return NotImplemented

    import io

    buf = io.BytesIO()
    P(buf, protocol=protocol).dump(obj)
    monkeypatch.undo()
    return buf.getvalue()


@pytest.mark.parametrize("protocol", [2, 4])
def test_numpy1_pickles_load(protocol, monkeypatch):
    obj = {np.int64(5): np.arange(24, dtype=np.int64).reshape(3, 8), 6: np.ones((50, 10), np.int32)}
    data = _numpy1_style(obj, protocol, monkeypatch)
    assert b"numpy.core.multiarray" in data and b"numpy._core" not in data
    back = safe_load(data, source="seq.pkl")
    np.testing.assert_array_equal(back[5], obj[np.int64(5)])
    assert back[6].dtype == np.int32 and back[6].sum() == 500


def test_truncated_pickle_is_a_data_error():
    data = pickle.dumps({i: np.arange(8) for i in range(20)}, protocol=4)
    with pytest.raises(DataError, match=r"seq_effective_50_dict/2024-01-13\.pkl.*truncated"):
        safe_load(data[: len(data) // 2], source="seq_effective_50_dict/2024-01-13.pkl")


def test_garbage_is_a_data_error():
    with pytest.raises(DataError, match=r"x\.pkl: not a valid pickle"):
        safe_load(b"\x80\x04this is not a pickle at all", source="x.pkl")
    with pytest.raises(DataError, match="x.pkl"):
        safe_load(b"", source="x.pkl")


def test_allowlist_is_small_and_explicit():
    names = allowed_global_names()
    assert "numpy._core.multiarray._reconstruct" in names and "numpy.core.multiarray._reconstruct" in names
    assert not [n for n in names if n.startswith(("os.", "posix.", "subprocess.", "builtins.eval"))]
    assert {n.split(".")[0] for n in names} <= {"builtins", "_codecs", "numpy"}
