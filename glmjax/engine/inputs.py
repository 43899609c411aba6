"""Inputs of the scoring engine: a SequenceStore (HDF5) or a FASTA file, read in row blocks.

Both expose the same small surface: ``len()``, ``lengths()`` (nucleotides per row), ``ids(lo, hi)``,
``block(lo, hi) -> (codes, offsets)`` (one flat uint8 array and ``hi - lo + 1`` offsets into it,
read from a SequenceStore in one contiguous HDF5 read), ``span(a, b)`` (codes between absolute
positions of the concatenated rows) and ``provenance()``. :class:`WindowedInput` presents the
consecutive windows of another input as rows of their own (``glmjax score --per-window``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from glmjax.errors import InputFileError


class StoreInput:
    """Rows of a :class:`glmjax.data.store.SequenceStore`."""

    def __init__(self, path: str | os.PathLike):
        from glmjax.data.store import SequenceStore

        self.path = Path(path)
        self.store = SequenceStore(path)
        self._offsets = np.asarray(self.store.offsets("seq"), np.int64)
        self._values = self.store.f["ragged"]["seq"]["values"]
        self._ids = self.store.f["rows"]["id"]

    def __len__(self) -> int:
        return len(self.store)

    def lengths(self) -> np.ndarray:
        """Nucleotides per row, int64 ``[N]``."""
        return np.diff(self._offsets)

    def ids(self, lo: int, hi: int) -> np.ndarray:
        """Ids of rows ``[lo, hi)`` (Python str)."""
        return self._ids.asstr()[lo:hi]

    def block(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        """Codes of rows ``[lo, hi)``: one contiguous read; offsets relative to the returned codes."""
        a, b = int(self._offsets[lo]), int(self._offsets[hi])
        codes = np.empty(b - a, np.uint8)
        if b > a:
            self._values.read_direct(codes, np.s_[a:b])
        return codes, self._offsets[lo:hi + 1] - a

    def offsets(self) -> np.ndarray:
        """Start of every row in the concatenated codes, int64 ``[N + 1]``."""
        return self._offsets

    def span(self, a: int, b: int) -> np.ndarray:
        """Codes between absolute positions ``[a, b)`` of the concatenated rows (one read)."""
        codes = np.empty(b - a, np.uint8)
        if b > a:
            self._values.read_direct(codes, np.s_[a:b])
        return codes

    def provenance(self) -> dict[str, Any]:
        """Path, row count and the store's own provenance."""
        return {"path": str(self.path), "kind": "SequenceStore", "rows": len(self),
                "store_provenance": self.store.provenance}

    def close(self) -> None:
        self.store.close()


class FastaInput:
    """Records of a (plain or gzipped) FASTA file, held in memory as one code array."""

    def __init__(self, path: str | os.PathLike):
        from glmjax.data.fasta import read_fasta

        self.path = Path(path)
        recs = read_fasta(path)
        self._names = np.asarray([r[0] for r in recs], dtype=object)
        lens = np.fromiter((r[1].shape[0] for r in recs), np.int64, count=len(recs))
        self._offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
        self._codes = np.concatenate([r[1] for r in recs]).astype(np.uint8) if recs else np.zeros(0, np.uint8)

    def __len__(self) -> int:
        return int(self._names.shape[0])

    def lengths(self) -> np.ndarray:
        return np.diff(self._offsets)

    def ids(self, lo: int, hi: int) -> np.ndarray:
        return self._names[lo:hi]

    def block(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = int(self._offsets[lo]), int(self._offsets[hi])
        return self._codes[a:b], self._offsets[lo:hi + 1] - a

    def offsets(self) -> np.ndarray:
        return self._offsets

    def span(self, a: int, b: int) -> np.ndarray:
        return self._codes[a:b]

    def provenance(self) -> dict[str, Any]:
        from glmjax.data.provenance import file_sha256

        return {"path": str(self.path), "kind": "FASTA", "rows": len(self), "sha256": file_sha256(self.path)}

    def close(self) -> None:
        pass


class WindowedInput:
    """The consecutive non-overlapping windows of ``window`` nucleotides of every row of ``source``
    as rows of their own (the last window of a row may be shorter).

    A window's id is ``ID:START-END`` with 1-based inclusive coordinates in its sequence (the
    notation of ``samtools faidx``); :meth:`origin` maps windows back to (source row, start).
    """

    def __init__(self, source, window: int):
        if window < 1:
            raise ValueError("window must be positive")
        self.source, self.window = source, int(window)
        lens = source.lengths()
        per = np.maximum(1, -(-lens // self.window))          # an empty row keeps one empty window
        self._row = np.repeat(np.arange(lens.shape[0], dtype=np.int64), per)
        first = np.concatenate([[0], np.cumsum(per)[:-1]])
        self._start = (np.arange(self._row.shape[0], dtype=np.int64) - first[self._row]) * self.window
        self._len = np.minimum(self.window, lens[self._row] - self._start)
        self._abs = source.offsets()[self._row] + self._start   # absolute start in the concatenation

    def __len__(self) -> int:
        return int(self._row.shape[0])

    def lengths(self) -> np.ndarray:
        return self._len

    def origin(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        """(source row, 0-based start) of windows ``[lo, hi)``."""
        return self._row[lo:hi], self._start[lo:hi]

    def ids(self, lo: int, hi: int) -> np.ndarray:
        rows = self._row[lo:hi]
        if hi <= lo:
            return np.zeros(0, dtype=object)
        r0, r1 = int(rows[0]), int(rows[-1]) + 1
        names = np.asarray(self.source.ids(r0, r1), dtype=object)[rows - r0]
        s, n = self._start[lo:hi], self._len[lo:hi]
        return np.asarray([f"{name}:{a + 1}-{a + b}" for name, a, b in zip(names, s, n, strict=True)], dtype=object)

    def block(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        if hi <= lo:
            return np.zeros(0, np.uint8), np.zeros(1, np.int64)
        a = int(self._abs[lo])
        b = int(self._abs[hi - 1] + self._len[hi - 1])   # windows of consecutive rows are contiguous
        return self.source.span(a, b), np.concatenate([[0], np.cumsum(self._len[lo:hi])]).astype(np.int64)

    def offsets(self) -> np.ndarray:
        return np.concatenate([self._abs, [self._abs[-1] + self._len[-1]] if len(self) else [0]]).astype(np.int64)

    def span(self, a: int, b: int) -> np.ndarray:
        return self.source.span(a, b)

    def provenance(self) -> dict[str, Any]:
        return {**self.source.provenance(), "per_window": self.window, "windows": len(self)}

    def close(self) -> None:
        self.source.close()


def open_input(path: str | os.PathLike) -> StoreInput | FastaInput:
    """A SequenceStore (any HDF5 file is checked to be one) or a FASTA file."""
    p = Path(path)
    if not p.exists():
        raise InputFileError(f"{p}: no such input file (give a SequenceStore .h5 or a FASTA file)")
    if p.is_dir():
        raise InputFileError(f"{p} is a folder; give a SequenceStore .h5 or a FASTA file")
    if p.stat().st_size > 0 and h5py.is_hdf5(p):
        return StoreInput(p)
    return FastaInput(p)
