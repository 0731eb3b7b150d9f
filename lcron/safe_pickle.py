"""Restricted unpickling for RecFlow's ``.pkl`` files.

``pickle.load`` on a file from elsewhere runs whatever callable the file names (a pickle
is a small program: ``GLOBAL os.system`` + ``REDUCE`` executes a shell command). RecFlow
ships its candidate lists, behaviour sequences and vocabulary sizes as pickles, so every
one of them goes through :func:`safe_load`, whose ``find_class`` resolves a global only
if it is on a fixed allowlist of plain containers and the few numpy reconstructors that
numpy 1.x and 2.x pickles reference. Anything else raises :class:`UnsafePickleError`
*before* the callable is looked up, so nothing from the file runs.

The unpickler subclasses the C ``pickle.Unpickler`` (only ``find_class`` is Python), so
loading stays at C speed; globals are memoised by the pickle itself, so ``find_class``
runs a handful of times per file, not once per array.

What numpy writes (protocols 2-5; numpy 1.x uses ``numpy.core``, 2.x ``numpy._core``):

* arrays: ``numpy.core.multiarray._reconstruct`` (1.x) / ``numpy._core.multiarray.
  _reconstruct`` (2.x) with ``numpy.ndarray`` and ``numpy.dtype``; protocol 5 writes
  ``numpy(._)core.numeric._frombuffer`` instead;
* scalars (e.g. ``np.int64`` dict keys): ``numpy(._)core.multiarray.scalar`` + ``numpy.dtype``;
* protocol 2 encodes raw bytes as ``_codecs.encode(str, "latin1")``;
* numpy 2 pickles a dtype *class* as ``numpy.dtypes.<Name>DType``.

The 1.x module paths are mapped to the 2.x objects directly: importing ``numpy.core``
under numpy 2 emits a deprecation warning and is never needed.
"""

from __future__ import annotations

import _compat_pickle
import builtins
import codecs
import gc
import io
import pickle
from typing import Any, BinaryIO

import numpy as np

from lcron.errors import DataError, UnsafePickleError

__all__ = ["safe_load", "safe_loads", "ALLOWED_GLOBALS", "allowed_global_names"]


def _numpy_globals() -> dict[tuple[str, str], Any]:
    from numpy._core import multiarray, numeric

    table: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }
    for core in ("numpy.core", "numpy._core"):
        table[(f"{core}.multiarray", "_reconstruct")] = multiarray._reconstruct
        table[(f"{core}.multiarray", "scalar")] = multiarray.scalar
        table[(f"{core}.numeric", "_frombuffer")] = numeric._frombuffer
    # numpy 2 pickles DType classes by name (numpy.dtypes.Int64DType, ...). They only build
    # dtype objects; the object dtype's elements would themselves go through find_class.
    import numpy.dtypes as dtypes_module

    for name in dir(dtypes_module):
        obj = getattr(dtypes_module, name)
        if name.endswith("DType") and isinstance(obj, type):
            table[("numpy.dtypes", name)] = obj
    return table


_BUILTIN_NAMES = ("dict", "list", "tuple", "set", "frozenset", "int", "float", "complex",
                  "str", "bytes", "bytearray", "bool")

ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    **{("builtins", n): getattr(builtins, n) for n in _BUILTIN_NAMES},
    ("_codecs", "encode"): codecs.encode,
    **_numpy_globals(),
}


def allowed_global_names() -> list[str]:
    """The allowlist as ``module.name`` strings (for docs and error messages)."""
    return sorted(f"{m}.{n}" for m, n in ALLOWED_GLOBALS)


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: BinaryIO, source: str) -> None:
        super().__init__(file)
        self._source = source

    def find_class(self, module: str, name: str) -> Any:  # noqa: D401 - pickle hook
        # Protocol 0-2 pickles spell Python 2 names (__builtin__.set); map them the way
        # pickle's own fix_imports does, then look the result up in the allowlist.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self._source}: refusing to unpickle global {module}.{name} (not on the allowlist of "
                "plain containers and numpy arrays/scalars); nothing from the file was executed"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self._source}: refusing a persistent id in the pickle ({pid!r:.80})")


def safe_load(fileobj_or_bytes: BinaryIO | bytes | bytearray | memoryview, *, source: str) -> Any:
    """Unpickle ``fileobj_or_bytes`` allowing only builtin containers and numpy data.

    ``source`` names the file in every error. A forbidden global raises
    :class:`UnsafePickleError`; a truncated or corrupt pickle raises :class:`DataError`.
    """
    if isinstance(fileobj_or_bytes, (bytes, bytearray, memoryview)):
        fh: BinaryIO = io.BytesIO(fileobj_or_bytes)
    else:
        fh = fileobj_or_bytes
    # A RecFlow pickle is tens of thousands of small arrays; the cyclic garbage collector
    # would walk the growing dict again and again while they are created (none of them can
    # form a cycle), which costs up to a third of the load time.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _RestrictedUnpickler(fh, source).load()
    except UnsafePickleError:
        raise
    except EOFError:
        raise DataError(f"{source}: the pickle is truncated (ran out of data)") from None
    except (pickle.UnpicklingError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            OverflowError, UnicodeDecodeError, MemoryError) as exc:
        if "truncated" in str(exc):
            raise DataError(f"{source}: the pickle is truncated ({exc})") from None
        raise DataError(f"{source}: not a valid pickle ({type(exc).__name__}: {exc})") from None
    finally:
        if gc_was_enabled:
            gc.enable()


def safe_loads(data: bytes, *, source: str) -> Any:
    """:func:`safe_load` on a bytes object."""
    return safe_load(data, source=source)
