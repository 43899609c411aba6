"""A restricted reader for joblib pickles of numpy arrays (the official NT JAX checkpoints).

``joblib.dump`` writes a pickle stream in which every numpy array is replaced by a small
``NumpyArrayWrapper`` object followed by the array's raw bytes. A pickle is code, not data, so
glmjax reads such a file only when the caller passed ``trust_pickle=True``, and even then through
an unpickler that resolves nothing but the three classes this format needs (the wrapper,
``numpy.ndarray`` and ``numpy.dtype``): any other global (``os.system``, ``builtins.eval``...) is
refused before it can run. joblib itself is not needed.

Compressed joblib files (gzip, bz2, xz/lzma, zlib) are decompressed with the standard library.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import pickle
import zlib
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from glmjax.errors import CheckpointError


class _ArrayWrapper:
    """Stand-in for ``joblib.numpy_pickle.NumpyArrayWrapper``: holds shape, dtype and order."""


_ALLOWED_GLOBALS = {
    ("joblib.numpy_pickle", "NumpyArrayWrapper"): _ArrayWrapper,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "dtype"): np.dtype,
    ("numpy._core.multiarray", "dtype"): np.dtype,
}


class _RestrictedNumpyUnpickler(pickle._Unpickler):  # the pure-Python unpickler: its BUILD is overridable
    """Unpickles joblib's numpy format, resolving only :data:`_ALLOWED_GLOBALS`."""

    def __init__(self, fh: BinaryIO, origin: str):
        super().__init__(fh)
        self._fh = fh
        self._origin = origin

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise CheckpointError(f"{self._origin}: the pickle references {module}.{name}, which is not part of "
                                  "a joblib array checkpoint; refusing to load it") from None

    def _load_build(self) -> None:
        super().load_build()
        if isinstance(self.stack[-1], _ArrayWrapper):
            self.stack.append(self._read_array(self.stack.pop()))

    dispatch = dict(pickle._Unpickler.dispatch)
    dispatch[pickle.BUILD[0]] = _load_build

    def _read_array(self, w: _ArrayWrapper) -> np.ndarray:
        state = vars(w)
        try:
            dtype = np.dtype(state["dtype"])
            shape = tuple(int(n) for n in state["shape"])
        except (KeyError, TypeError) as e:
            raise CheckpointError(f"{self._origin}: malformed array record in the joblib file ({e})") from None
        if dtype.hasobject:
            raise CheckpointError(f"{self._origin}: contains an object array; only numeric arrays are read")
        if state.get("numpy_array_alignment_bytes") is not None:
            pad = self._fh.read(1)
            if len(pad) != 1:
                raise CheckpointError(f"{self._origin}: truncated joblib file")
            if pad[0]:
                self._fh.read(pad[0])
        count = int(np.prod(shape, dtype=np.int64))
        buf = bytearray(count * dtype.itemsize)
        view = memoryview(buf)
        got = 0
        while got < len(buf):
            n = self._fh.readinto(view[got:])
            if not n:
                raise CheckpointError(f"{self._origin}: truncated joblib file (array of shape {shape})")
            got += n
        arr = np.frombuffer(buf, dtype=dtype, count=count)
        arr = arr.reshape(shape, order="F" if state.get("order") == "F" else "C")
        if not dtype.isnative:
            arr = arr.astype(dtype.newbyteorder("="))
        return arr


def _open_stream(path: Path) -> BinaryIO:
    """The decompressed byte stream of a (possibly compressed) joblib file."""
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic[:1] == b"\x80":
        return open(path, "rb")
    if magic[:2] == b"\x1f\x8b":
        return gzip.open(path, "rb")
    if magic[:3] == b"BZh":
        return bz2.open(path, "rb")
    if magic[:6] == b"\xfd7zXZ\x00" or magic[:3] == b"\x5d\x00\x00":
        return lzma.open(path, "rb")
    if magic[:1] == b"\x78":
        try:
            return io.BytesIO(zlib.decompress(path.read_bytes()))
        except zlib.error as e:
            raise CheckpointError(f"{path}: not a readable zlib-compressed joblib file ({e})") from None
    if magic[:2] == b"ZF":
        raise CheckpointError(f"{path} uses joblib's pre-0.10 compressed format; re-save it with a recent joblib")
    raise CheckpointError(f"{path} is not a joblib/pickle file (unrecognised header {magic[:4]!r})")


def read_joblib_arrays(path: str | Path, trust_pickle: bool = False) -> Any:
    """Read a joblib dump of (nested dicts/lists of) numpy arrays without importing joblib.

    Args:
      path: the ``.joblib`` file (raw or compressed).
      trust_pickle: must be True: the file is a pickle, i.e. a program; the caller confirms that
        its origin is trusted. Even then only the classes of joblib's array format are resolved.
    Returns:
      The unpickled object, with every array as a numpy array (native byte order).
    """
    path = Path(path)
    if not trust_pickle:
        raise CheckpointError(f"{path} is a pickle (joblib): loading it executes code from the file, not just "
                              "data. If you trust its origin pass trust_pickle=True (CLI: --trust-pickle), e.g. "
                              "once with `glmjax models convert SRC --out DST --trust-pickle`")
    with _open_stream(path) as fh:
        try:
            return _RestrictedNumpyUnpickler(fh, str(path)).load()
        except CheckpointError:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
            raise CheckpointError(f"{path}: not a readable joblib array file ({type(e).__name__}: {e})") from None
