"""Inputs of the scoring engine: a SequenceStore (HDF5) or a FASTA file, read in row blocks.

Both expose the same small surface: ``len()``, ``lengths()`` (nucleotides per row), ``ids(lo, hi)``,
``block(lo, hi) -> (codes, offsets)`` (one flat uint8 array and ``hi - lo + 1`` offsets into it,
read from a SequenceStore in one contiguous HDF5 read) and ``provenance()``.
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

    def provenance(self) -> dict[str, Any]:
        from glmjax.data.provenance import file_sha256

        return {"path": str(self.path), "kind": "FASTA", "rows": len(self), "sha256": file_sha256(self.path)}

    def close(self) -> None:
        pass


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
