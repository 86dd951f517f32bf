"""Unpickling the CIFAR batches without trusting them: dicts, lists, strings, numbers and integer numpy arrays only.

A numpy array pickles (protocol 2) as two steps::

    numpy.core.multiarray._reconstruct(numpy.ndarray, (0,), b'b')   # REDUCE: an empty array
    BUILD (1, shape, dtype, is_fortran, raw_bytes)                    # its real content

and its dtype as ``numpy.dtype('u1', False, True)`` followed by BUILD ``(3, '|', None, None, None, -1, -1, 0)``
(numpy 2 writes ``numpy._core.multiarray``; both names are accepted). :class:`RestrictedUnpickler` resolves those
globals to stand-ins that check their arguments and rebuild each array *by value* with ``np.frombuffer`` from its
raw bytes, after checking that the shape times the item size is exactly the number of raw bytes and that all arrays
together fit in ``max_bytes`` (the file's size). ``numpy.ndarray`` is only a marker passed to ``_reconstruct``:
calling it (which lets a few hundred bytes declare an array of any size with zero strides) is refused. The only
other globals are ``_codecs.encode(text, 'latin1')`` (how Python 3 writes bytes at protocol 2) and ``bytes()`` (an
empty byte string). Only integer dtypes are rebuilt. Opcodes that create instances (``INST``, ``OBJ``, ``NEWOBJ``),
persistent ids, extensions and protocol-5 byte arrays and buffers (``BYTEARRAY8`` allocates the size it declares
before reading) are refused, and ``BUILD`` applies only to the stand-ins.

The pure-Python unpickler is used on purpose: the C one resizes its memo array to twice the largest
``LONG_BINPUT`` index, so a 10-byte pickle can make it allocate tens of gigabytes.
"""

from __future__ import annotations

import io
import math
import pickle
import struct
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ..errors import DataError, DataNotFoundError, LowRankCNNError
from ..utils.io import describe_os_error

INTEGER_DTYPES: frozenset[str] = frozenset({"u1", "i1", "u2", "i2", "u4", "i4", "u8", "i8"})
"""dtype codes an array may have (images are ``u1``; the others only serve label arrays)."""

_MAX_NDIM = 32


class UnsafePickleError(DataError):
    """A pickle that references a global, or does something, that a CIFAR file never does."""


def _brief(err: BaseException) -> str:
    """First line of ``err``'s message, at most 160 characters (never fails)."""
    try:
        text = str(err).strip()
    except Exception:  # noqa: BLE001 - e.g. an int too large to print
        text = ""
    return f"{type(err).__name__}: {text.splitlines()[0][:160]}" if text else type(err).__name__


class _PendingDtype:
    """What ``numpy.dtype(code, ...)`` returns here; its BUILD state may only set the byte order."""

    __slots__ = ("dtype", "unpickler")

    def __init__(self, unpickler: RestrictedUnpickler, dtype: np.dtype) -> None:
        self.unpickler, self.dtype = unpickler, dtype

    def __setstate__(self, state: Any) -> None:
        ok = isinstance(state, tuple) and len(state) in (8, 9) and type(state[0]) is int and state[0] in (3, 4)
        order = state[1] if ok else None
        order = order.decode("latin1") if isinstance(order, bytes) else order
        ok = ok and order in ("|", "<", ">", "=") and all(v is None for v in state[2:5])
        ok = ok and all(type(v) is int for v in state[5:8]) and state[5:8] == (-1, -1, 0)
        if not ok:
            raise self.unpickler.refuse("a numpy dtype with a state other than a plain integer type's")
        self.dtype = self.dtype.newbyteorder(order) if order in "<>" and self.dtype.itemsize > 1 else self.dtype


class _PendingArray:
    """What ``_reconstruct(ndarray, (0,), b'b')`` returns here; its BUILD state gives the content."""

    __slots__ = ("array", "unpickler")

    def __init__(self, unpickler: RestrictedUnpickler) -> None:
        self.unpickler, self.array = unpickler, None

    def __setstate__(self, state: Any) -> None:
        self.array = self.unpickler.build_array(state)


def _refuse_opcode(self: RestrictedUnpickler) -> None:
    raise self.refuse("an opcode that creates objects of arbitrary classes")


def _refuse_protocol_5(self: RestrictedUnpickler) -> None:
    raise self.refuse("a protocol-5 byte array or buffer")


class RestrictedUnpickler(pickle._Unpickler):
    """Unpickler rebuilding only plain values and integer numpy arrays (see the module doc); anything else is
    refused with :class:`UnsafePickleError`.

    Args:
        file: the pickle.
        path: the file it came from (named in every error).
        max_bytes: the most array content the pickle may produce (the file's size: arrays are rebuilt from bytes
            the file holds, so more means the pickle is lying).
    """

    dispatch = pickle._Unpickler.dispatch.copy()
    for _op in (pickle.INST, pickle.OBJ, pickle.NEWOBJ, pickle.NEWOBJ_EX, pickle.PERSID, pickle.BINPERSID):
        dispatch[_op[0]] = _refuse_opcode
    for _op in (pickle.EXT1, pickle.EXT2, pickle.EXT4):
        dispatch[_op[0]] = _refuse_opcode
    for _op in (pickle.BYTEARRAY8, pickle.NEXT_BUFFER, pickle.READONLY_BUFFER):  # protocol 5: BYTEARRAY8
        dispatch[_op[0]] = _refuse_protocol_5  # allocates the length it declares before reading anything
    del _op

    def __init__(self, file: BinaryIO, path: Path, max_bytes: int) -> None:
        super().__init__(file, encoding="bytes")
        self.path = path
        self.budget = max_bytes
        self._ndarray_marker = self._ndarray  # one bound-method object, compared by identity in _reconstruct
        self._allowed: dict[tuple[str, str], Any] = {
            ("numpy.core.multiarray", "_reconstruct"): self._reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): self._reconstruct,
            ("numpy", "ndarray"): self._ndarray_marker,
            ("numpy", "dtype"): self._dtype,
            ("_codecs", "encode"): self._encode,
            ("__builtin__", "bytes"): self._empty_bytes,
            ("builtins", "bytes"): self._empty_bytes,
        }

    def refuse(self, what: str) -> UnsafePickleError:
        return UnsafePickleError(
            f"cifar: refusing to unpickle {self.path}: it uses {what}, which a CIFAR batch never does"
        )

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except (KeyError, TypeError):
            raise UnsafePickleError(
                f"cifar: refusing to unpickle {self.path}: it references {str(module)[:80]}.{str(name)[:80]}, "
                "which a CIFAR batch never contains"
            ) from None

    def load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if not isinstance(inst, (_PendingArray, _PendingDtype)):
            raise self.refuse(f"BUILD on a {type(inst).__name__}")
        inst.__setstate__(state)

    dispatch[pickle.BUILD[0]] = load_build

    def load(self) -> Any:
        """The unpickled object, with every array left by ``_reconstruct`` + BUILD replaced by the array (at the
        top level, and as values of a top-level dict)."""
        obj = super().load()
        if isinstance(obj, dict):
            return {k: self._resolve(v) for k, v in obj.items()}
        return self._resolve(obj)

    def _resolve(self, value: Any) -> Any:
        if isinstance(value, _PendingDtype):
            return value.dtype
        if isinstance(value, _PendingArray):
            if value.array is None:
                raise self.refuse("a numpy array without content")
            return value.array
        return value

    # ----------------------------------------------------------------------------------------- the stand-ins

    def _ndarray(self, *args: Any, **kwargs: Any) -> None:
        raise self.refuse("numpy.ndarray called directly (an array not rebuilt from its bytes)")

    def _reconstruct(self, cls: Any = None, shape: Any = None, typecode: Any = None) -> _PendingArray:
        if cls is not self._ndarray_marker or type(shape) is not tuple or shape != (0,) or typecode not in (b"b", "b"):
            raise self.refuse("numpy's _reconstruct with arguments other than (ndarray, (0,), b'b')")
        return _PendingArray(self)

    def _dtype(self, code: Any = None, align: Any = False, copy: Any = True) -> _PendingDtype:
        code = code.decode("latin1") if isinstance(code, bytes) else code
        if not isinstance(code, str) or code not in INTEGER_DTYPES:
            shown = repr(code[:20]) if isinstance(code, str) else type(code).__name__
            raise self.refuse(f"a numpy dtype {shown} (only {', '.join(sorted(INTEGER_DTYPES))} are read)")
        return _PendingDtype(self, np.dtype(code))

    def _encode(self, text: Any = None, encoding: Any = "utf-8", errors: Any = "strict") -> bytes:
        if not isinstance(text, str) or encoding not in ("latin1", "latin-1") or errors != "strict":
            raise self.refuse("_codecs.encode other than encode(text, 'latin1')")
        return text.encode("latin1")

    def _empty_bytes(self, *args: Any) -> bytes:
        if args:
            raise self.refuse("bytes() with arguments")
        return b""

    def build_array(self, state: Any) -> np.ndarray:
        """The array described by a BUILD state ``(1, shape, dtype, is_fortran, raw_bytes)``, copied by value."""
        ok = isinstance(state, tuple) and len(state) == 5 and type(state[0]) is int and state[0] == 1
        version, shape, dtype, fortran, raw = state if ok else (None,) * 5
        ok = ok and type(shape) is tuple and len(shape) <= _MAX_NDIM
        ok = ok and all(type(d) is int and 0 <= d < 2**62 for d in shape)
        ok = ok and isinstance(dtype, _PendingDtype) and type(fortran) in (bool, int) and fortran in (0, 1)
        if not ok or not isinstance(raw, bytes):
            raise self.refuse("a numpy array state other than (1, shape, integer dtype, is_fortran, raw bytes)")
        nbytes = math.prod(shape) * dtype.dtype.itemsize
        if nbytes != len(raw):
            raise DataError(
                f"{self.path}: corrupt CIFAR pickle: an array of shape {shape} ({dtype.dtype}) needs {nbytes:,} "
                f"bytes but {len(raw):,} are stored"
            )
        self.budget -= nbytes
        if self.budget < 0:
            raise DataError(f"{self.path}: corrupt CIFAR pickle: its arrays hold more bytes than the file")
        array = np.frombuffer(raw, dtype=dtype.dtype) if nbytes else np.empty(0, dtype=dtype.dtype)
        return array.reshape(shape, order="F" if fortran else "C").copy(order="C")


def unpickle(path: Path) -> dict[Any, Any]:
    """Unpickle one CIFAR file with :class:`RestrictedUnpickler`; ``bytes`` keys are decoded to ``str``.

    Raises:
        DataNotFoundError: the file does not exist.
        UnsafePickleError: the file does something a CIFAR pickle never does (nothing of it was executed).
        DataError: the file is unreadable, truncated or corrupt, or is not a dict (one line naming the file).
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataNotFoundError(f"{path} not found") from None
    except OSError as e:
        raise DataError(f"cannot read {path}: {describe_os_error(e)}") from e
    try:
        obj = RestrictedUnpickler(io.BytesIO(data), path, max_bytes=len(data)).load()
    except LowRankCNNError:
        raise
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        OverflowError,
        RecursionError,
        struct.error,
    ) as e:
        raise DataError(f"{path}: truncated or corrupt CIFAR pickle ({_brief(e)})") from e
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}
