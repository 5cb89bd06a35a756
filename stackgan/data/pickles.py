"""Safe loading (and faithful writing) of the StackGAN birds-bundle pickles.

The bundle's ``filenames.pickle``, ``class_info.pickle`` and
``char-CNN-RNN-embeddings.pickle`` were written by Python 2 (protocol 2, binary data
stored as Python-2 ``str``), so Python 3 needs ``encoding="latin1"``.

:func:`load_pickle` runs a *restricted* unpickler: only numpy array/dtype/scalar
reconstruction and a few inert builtins may be imported. Anything else (``os.system``,
``builtins.eval``, arbitrary classes) is refused with :class:`UnsafePickleError`, so
loading a downloaded file can never run code.

With ``lazy_min_bytes`` set, large binary payloads are not read into memory: the
returned arrays are :class:`LazyArray` views onto the pickle file that read rows on
demand, so validating and sharding 8,855 x 10 x 1024 embeddings needs constant memory.

:func:`dump_py2_pickle` writes the same byte format as Python 2's ``cPickle.dump(obj, f,
protocol=2)`` for the types the bundle contains; the synthetic twin uses it.
"""

from __future__ import annotations

import _compat_pickle
import io
import os
import pickle
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from stackgan.errors import StackGANError

__all__ = [
    "LazyArray",
    "UnsafePickleError",
    "dump_py2_pickle",
    "load_pickle",
    "materialize",
]


class UnsafePickleError(StackGANError, pickle.UnpicklingError):
    """The pickle tried to import something outside the allow-list."""


class _Blob:
    """A binary payload left on disk: ``length`` bytes at ``offset`` of ``path``."""

    __slots__ = ("length", "offset", "path")

    def __init__(self, path: str, offset: int, length: int) -> None:
        self.path, self.offset, self.length = path, offset, length


class LazyArray:
    """A C-ordered numpy array stored inside a file, read on demand.

    Supports ``len()``, ``shape``, ``dtype``, integer indexing along the first axis
    (one ``pread`` per row) and ``np.asarray`` (reads everything).
    """

    def __init__(self, path: str, offset: int, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.path, self.offset = path, offset
        self.shape, self.dtype = tuple(int(s) for s in shape), np.dtype(dtype)
        self.ndim = len(self.shape)
        self.nbytes = int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of a 0-d LazyArray")
        return self.shape[0]

    @property
    def _row_bytes(self) -> int:
        return self.nbytes // self.shape[0] if self.shape and self.shape[0] else 0

    def _read(self, offset: int, length: int) -> bytes:
        fd = os.open(self.path, os.O_RDONLY)
        try:
            data = os.pread(fd, length, offset)
        finally:
            os.close(fd)
        if len(data) != length:
            raise EOFError(
                f"{self.path}: truncated array data at byte {offset} (wanted {length} bytes)"
            )
        return data

    def __getitem__(self, index: int) -> np.ndarray:
        if not isinstance(index, int | np.integer):
            return np.asarray(self)[index]
        n = len(self)
        i = int(index) + n if index < 0 else int(index)
        if not 0 <= i < n:
            raise IndexError(f"index {index} out of range for {n} rows")
        row = self._row_bytes
        data = self._read(self.offset + i * row, row)
        return np.frombuffer(data, dtype=self.dtype).reshape(self.shape[1:]).copy()

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(len(self)):
            yield self[i]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        arr = np.frombuffer(self._read(self.offset, self.nbytes), dtype=self.dtype).reshape(
            self.shape
        )
        return arr.astype(dtype) if dtype is not None else arr.copy()

    def __repr__(self) -> str:
        return (
            f"LazyArray(shape={self.shape}, dtype={self.dtype}, file={self.path!r}, "
            f"offset={self.offset})"
        )


class _ArrayStub:
    """Stands in for ``numpy.core.multiarray._reconstruct``'s result until BUILD."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.value: np.ndarray | LazyArray | None = None

    def __setstate__(self, state: tuple) -> None:
        if len(state) == 5:
            _version, shape, dtype, fortran, data = state
        elif len(state) == 4:
            shape, dtype, fortran, data = state
        else:
            raise pickle.UnpicklingError(
                f"{self.path}: unexpected ndarray state of length {len(state)}"
            )
        dtype = np.dtype(dtype)
        shape = tuple(int(s) for s in shape)
        if isinstance(data, _Blob):
            if fortran:
                raise pickle.UnpicklingError(
                    f"{self.path}: lazy loading of Fortran-ordered arrays is unsupported"
                )
            expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            if data.length != expected:
                raise pickle.UnpicklingError(
                    f"{self.path}: array data has {data.length} bytes, "
                    f"expected {expected} for shape {shape} {dtype}"
                )
            self.value = LazyArray(data.path, data.offset, shape, dtype)
            return
        raw = data.encode("latin1") if isinstance(data, str) else bytes(data)
        if dtype.hasobject:
            raise UnsafePickleError(f"{self.path}: object arrays are not allowed")
        arr = np.frombuffer(raw, dtype=dtype)
        self.value = arr.reshape(shape, order="F" if fortran else "C").copy()


def _np_scalar(dtype: np.dtype, data: Any = None) -> Any:
    raw = data.encode("latin1") if isinstance(data, str) else bytes(data or b"")
    if np.dtype(dtype).hasobject:
        raise UnsafePickleError("object-dtype numpy scalars are not allowed")
    return np.frombuffer(raw, dtype=dtype)[0]


def _codecs_encode(text: str, encoding: str = "utf-8") -> bytes:
    return text.encode(encoding)


# (module, name) -> what the unpickler may receive. Python 2 names are mapped to
# Python 3 by fix_imports before find_class is called (e.g. __builtin__ -> builtins).
_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "complex"): complex,
    ("builtins", "bytearray"): bytearray,
    ("_codecs", "encode"): _codecs_encode,
}
_RECONSTRUCT = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
}
_SCALAR = {("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar")}


class _RestrictedUnpickler(pickle._Unpickler):  # type: ignore[name-defined]
    """Pure-Python unpickler with an import allow-list and optional lazy payloads."""

    dispatch: ClassVar[dict] = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]

    def __init__(self, fh: io.BufferedReader, path: str, lazy_min_bytes: int | None) -> None:
        super().__init__(fh, encoding="latin1")
        self._fh, self._path, self._lazy_min = fh, path, lazy_min_bytes

    def find_class(self, module: str, name: str) -> Any:
        if self.proto < 3:  # Python 2 names -> Python 3 (what fix_imports does in the stdlib)
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
        key = (module, name)
        if key in _RECONSTRUCT:
            path = self._path
            return lambda *_args: _ArrayStub(path)
        if key in _SCALAR:
            return _np_scalar
        if key in _ALLOWED:
            return _ALLOWED[key]
        raise UnsafePickleError(
            f"{self._path}: refusing to load global '{module}.{name}': only numpy arrays/dtypes "
            "and plain builtin containers are allowed in StackGAN bundle pickles (the file may be "
            "corrupt or malicious)"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self._path}: persistent ids are not allowed")

    def _maybe_lazy(self, length: int) -> _Blob | None:
        unframed = getattr(self._unframer, "current_frame", None) is None
        if self._lazy_min is None or length < self._lazy_min or not unframed:
            return None
        offset = self._fh.tell()
        self._fh.seek(length, os.SEEK_CUR)
        if self._fh.tell() > os.fstat(self._fh.fileno()).st_size:
            raise pickle.UnpicklingError(
                f"{self._path}: truncated pickle (payload runs past end of file)"
            )
        return _Blob(self._path, offset, length)

    def _load_binstring(self) -> None:  # py2 str (binary data) -> latin1 str, or lazy
        (length,) = struct.unpack("<i", self.read(4))
        if length < 0:
            raise pickle.UnpicklingError(f"{self._path}: negative BINSTRING length")
        blob = self._maybe_lazy(length)
        if blob is not None:
            self.append(blob)
            return
        data = self.read(length)
        if len(data) != length:
            raise pickle.UnpicklingError(f"{self._path}: truncated pickle")
        self.append(self._decode_string(data))

    def _load_binbytes(self) -> None:
        (length,) = struct.unpack("<I", self.read(4))
        blob = self._maybe_lazy(length)
        if blob is not None:
            self.append(blob)
            return
        data = self.read(length)
        if len(data) != length:
            raise pickle.UnpicklingError(f"{self._path}: truncated pickle")
        self.append(data)

    dispatch[pickle.BINSTRING[0]] = _load_binstring
    dispatch[pickle.BINBYTES[0]] = _load_binbytes


def _unwrap(obj: Any) -> Any:
    if isinstance(obj, _ArrayStub):
        if obj.value is None:
            raise pickle.UnpicklingError(f"{obj.path}: ndarray without state")
        return obj.value
    if isinstance(obj, list):
        return [_unwrap(x) for x in obj]
    if isinstance(obj, tuple):
        return tuple(_unwrap(x) for x in obj)
    if isinstance(obj, dict):
        return {_unwrap(k): _unwrap(v) for k, v in obj.items()}
    return obj


def load_pickle(path: str | os.PathLike[str], *, lazy_min_bytes: int | None = None) -> Any:
    """Load a (Python-2 or 3) pickle with the restricted unpickler.

    Args:
        path: the pickle file.
        lazy_min_bytes: binary payloads at least this large become :class:`LazyArray`
            views onto the file instead of in-memory arrays (``None``: load everything).

    Raises:
        UnsafePickleError: the pickle imports something outside the allow-list.
        pickle.UnpicklingError: the file is truncated or malformed (message names the file).
    """
    path = os.fspath(path)
    with open(path, "rb") as fh:
        try:
            obj = _RestrictedUnpickler(fh, path, lazy_min_bytes).load()
        except UnsafePickleError as err:
            if path in str(err):
                raise
            raise UnsafePickleError(f"{path}: {err}") from err
        except (
            EOFError,
            struct.error,
            ValueError,
            KeyError,
            IndexError,
            TypeError,
            AttributeError,
        ) as err:
            raise pickle.UnpicklingError(
                f"{path}: not a valid pickle ({type(err).__name__}: {err})"
            ) from err
    return _unwrap(obj)


def materialize(obj: Any) -> Any:
    """Turn every :class:`LazyArray` inside ``obj`` into an in-memory ndarray."""
    if isinstance(obj, LazyArray):
        return np.asarray(obj)
    if isinstance(obj, list):
        return [materialize(x) for x in obj]
    if isinstance(obj, tuple):
        return tuple(materialize(x) for x in obj)
    if isinstance(obj, dict):
        return {k: materialize(v) for k, v in obj.items()}
    return obj


# --------------------------------------------------------------------------- writer


class _Py2Writer:
    """Emit protocol-2 opcodes the way Python 2's cPickle does for our types."""

    def __init__(self, fh: io.BufferedWriter) -> None:
        self.fh = fh
        self.memo: dict[Any, int] = {}

    def w(self, data: bytes) -> None:
        self.fh.write(data)

    def put(self, key: Any) -> None:
        idx = len(self.memo)
        self.memo[key] = idx
        self.w(
            pickle.BINPUT + bytes([idx])
            if idx < 256
            else pickle.LONG_BINPUT + struct.pack("<I", idx)
        )

    def get(self, key: Any) -> bool:
        if key not in self.memo:
            return False
        idx = self.memo[key]
        self.w(
            pickle.BINGET + bytes([idx])
            if idx < 256
            else pickle.LONG_BINGET + struct.pack("<I", idx)
        )
        return True

    def global_(self, module: str, name: str) -> None:
        if not self.get(("global", module, name)):
            self.w(pickle.GLOBAL + f"{module}\n{name}\n".encode("ascii"))
            self.put(("global", module, name))

    def py2str(self, data: bytes) -> None:  # a Python 2 `str`: raw bytes, read back as latin1
        if len(data) < 256:
            self.w(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.w(pickle.BINSTRING + struct.pack("<i", len(data)) + data)

    def int_(self, v: int) -> None:
        if 0 <= v < 256:
            self.w(pickle.BININT1 + bytes([v]))
        elif 0 <= v < 65536:
            self.w(pickle.BININT2 + struct.pack("<H", v))
        elif -(2**31) <= v < 2**31:
            self.w(pickle.BININT + struct.pack("<i", v))
        else:
            raise ValueError(f"integer {v} out of range for this writer")

    def tuple_(self, items: tuple) -> None:
        if not items:
            self.w(pickle.EMPTY_TUPLE)
            return
        if len(items) <= 3:
            for x in items:
                self.save(x)
            self.w([pickle.TUPLE1, pickle.TUPLE2, pickle.TUPLE3][len(items) - 1])
            return
        self.w(pickle.MARK)
        for x in items:
            self.save(x)
        self.w(pickle.TUPLE)

    def dtype(self, dt: np.dtype) -> None:
        key = ("dtype", dt.str)
        if self.get(key):
            return
        self.global_("numpy", "dtype")
        self.tuple_((dt.str[1:].encode("ascii"), 0, 1))
        self.w(pickle.REDUCE)
        self.put(key)
        order = dt.str[0].encode("ascii") if dt.str[0] in "<>" else b"|"
        self.tuple_((3, order, None, None, None, -1, -1, 0))
        self.w(pickle.BUILD)

    def ndarray(self, arr: np.ndarray) -> None:
        arr = np.ascontiguousarray(arr)
        self.global_("numpy.core.multiarray", "_reconstruct")
        self.global_("numpy", "ndarray")
        self.tuple_((0,))
        self.py2str(b"b")
        self.w(pickle.TUPLE3 + pickle.REDUCE)
        self.put(("obj", id(arr)))
        self.w(pickle.MARK)
        self.int_(1)
        self.tuple_(tuple(int(s) for s in arr.shape))
        self.dtype(arr.dtype)
        self.w(pickle.NEWFALSE)
        self.py2str(arr.tobytes())
        self.w(pickle.TUPLE + pickle.BUILD)

    def save(self, obj: Any) -> None:
        if obj is None:
            self.w(pickle.NONE)
        elif obj is True or obj is False:
            self.w(pickle.NEWTRUE if obj else pickle.NEWFALSE)
        elif isinstance(obj, int | np.integer):
            self.int_(int(obj))
        elif isinstance(obj, float):
            self.w(pickle.BINFLOAT + struct.pack(">d", obj))
        elif isinstance(obj, bytes):
            self.py2str(obj)
        elif isinstance(obj, str):  # Python-2 code holds file names as (byte) str
            self.py2str(obj.encode("latin1"))
        elif isinstance(obj, tuple):
            self.tuple_(obj)
        elif isinstance(obj, list):
            self.w(pickle.EMPTY_LIST)
            self.put(("obj", id(obj)))
            for start in range(0, len(obj), 1000):  # cPickle batches APPENDS by 1000
                chunk = obj[start : start + 1000]
                if len(chunk) == 1:
                    self.save(chunk[0])
                    self.w(pickle.APPEND)
                    continue
                self.w(pickle.MARK)
                for x in chunk:
                    self.save(x)
                self.w(pickle.APPENDS)
        elif isinstance(obj, np.ndarray):
            self.ndarray(obj)
        else:
            raise TypeError(f"dump_py2_pickle cannot write {type(obj).__name__}")


def dump_py2_pickle(obj: Any, path: str | os.PathLike[str]) -> None:
    """Write ``obj`` in Python 2 ``cPickle`` protocol-2 format (atomically).

    Supports None, bool, int, float, str/bytes (as Python-2 ``str``), tuple, list and
    numeric numpy arrays -- the types found in the StackGAN birds bundle.
    """
    from stackgan.fileio import atomic_open

    with atomic_open(Path(path), "wb") as fh:
        writer = _Py2Writer(fh)
        writer.w(pickle.PROTO + bytes([2]))
        writer.save(obj)
        writer.w(pickle.STOP)
