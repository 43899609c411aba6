"""SequenceStore: ragged uint8 nucleotide sequences in HDF5 with ids, metadata and provenance.

Layout (schema ``glmjax.SequenceStore``, version 1), on top of :mod:`glmjax.storage`:

``/rows/id``        str    unique sequence id (windows: ``record:start-end(+|-)``, 1-based inclusive)
``/rows/source``    str    source record (FASTA record, individual haplotype, ``synthetic``, ``canary``)
``/rows/start``     int64  0-based start in the source record (-1 when not applicable)
``/rows/strand``    int8   +1 forward, -1 reverse complement
``/rows/kind``      str    ``genome`` | ``synthetic`` | ``canary`` | ``haplotype``
``/rows/canary``    str    canary id planted in this row ('' if none)
``/rows/group``     str    group (e.g. individual) for group-wise splits ('' if none)
``/ragged/seq``     uint8  nucleotide codes (A C G T N = 0..4)
``/split``          optional: ``member`` (int8 per row: 1 member, 0 non-member) and split attributes

File attributes: ``schema``, ``schema_version``, ``committed_rows``, ``complete``, ``provenance``
(JSON: source file hashes, seed, command line, package version), and optionally
``canary_manifest`` (JSON summary incl. the manifest hash) after planting.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import h5py
import numpy as np

from glmjax.errors import StoreError
from glmjax.storage import TableReader, TableWriter, get_json_attr, set_attr

SCHEMA = "glmjax.SequenceStore"
SCHEMA_VERSION = 1
COLUMNS: dict[str, Any] = {
    "id": str, "source": str, "start": np.int64, "strand": np.int8,
    "kind": str, "canary": str, "group": str,
}
DEFAULTS: dict[str, Any] = {"source": "", "start": -1, "strand": 1, "kind": "genome", "canary": "", "group": ""}


@dataclass
class Record:
    """One sequence with its metadata (codes are uint8 0..4)."""

    id: str
    codes: np.ndarray
    source: str = ""
    start: int = -1
    strand: int = 1
    kind: str = "genome"
    canary: str = ""
    group: str = ""


class SequenceStoreWriter(TableWriter):
    """Append :class:`Record` batches to a new SequenceStore (see :class:`glmjax.storage.TableWriter`)."""

    def __init__(self, path: str | os.PathLike, provenance: Mapping[str, Any] | None = None,
                 resume: bool = False, attrs: Mapping[str, Any] | None = None):
        a = {"provenance": dict(provenance or {})}
        a.update(attrs or {})
        super().__init__(path, SCHEMA, SCHEMA_VERSION, COLUMNS, {"seq": np.uint8}, attrs=a, resume=resume)

    def add(self, records: Sequence[Record]) -> None:
        """Append a batch of records and commit it."""
        if not records:
            return
        cols = {name: [getattr(r, name) for r in records] for name in COLUMNS}
        self.append(cols, {"seq": [r.codes for r in records]})


class SequenceStore(TableReader):
    """Read a SequenceStore: ``len(store)``, ``store[i]`` -> codes, batches, metadata, split."""

    schema = SCHEMA
    kind = "SequenceStore"

    def __init__(self, path: str | os.PathLike):
        super().__init__(path)
        if self.schema_version > SCHEMA_VERSION:
            v = self.schema_version
            self.close()
            raise StoreError(f"{path} has SequenceStore schema v{v}; this glmjax reads up to "
                             f"v{SCHEMA_VERSION}; upgrade glmjax")

    def __getitem__(self, i: int) -> np.ndarray:
        return self.ragged_row("seq", int(i))

    @property
    def ids(self) -> np.ndarray:
        return self.column("id")

    def lengths(self) -> np.ndarray:
        """Length in nucleotides of every sequence, int64 [N]."""
        return np.diff(self.offsets("seq"))

    def sequences(self, start: int = 0, stop: int | None = None) -> list[np.ndarray]:
        """Code arrays of rows [start, stop)."""
        return self.ragged_rows("seq", start, stop)

    def take(self, indices: Sequence[int] | np.ndarray) -> list[np.ndarray]:
        """Code arrays of arbitrary rows, in the order given (repeats allowed). Rows are read in
        runs of consecutive row numbers, one read per run, so taking most rows of a store costs
        about as much as reading it whole."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size == 0:
            return []
        if idx.min() < 0 or idx.max() >= self.n:
            bad = int(idx[(idx < 0) | (idx >= self.n)][0])
            raise IndexError(f"row {bad} out of range 0..{self.n - 1}")
        order = np.argsort(idx, kind="stable")
        rows = idx[order]
        out: list[np.ndarray] = [None] * idx.size  # type: ignore[list-item]
        for run in np.split(np.arange(rows.size), np.flatnonzero(np.diff(rows) > 1) + 1):
            lo = int(rows[run[0]])
            seqs = self.sequences(lo, int(rows[run[-1]]) + 1)
            for j in run:
                out[order[j]] = seqs[rows[j] - lo]
        return out

    def iter_batches(self, batch_size: int = 1024, start: int = 0,
                     stop: int | None = None) -> Iterator[tuple[int, list[np.ndarray]]]:
        """Yield ``(first_row, [codes, ...])`` in order, ``batch_size`` rows at a time."""
        stop = self.n if stop is None else min(stop, self.n)
        for lo in range(start, stop, batch_size):
            yield lo, self.sequences(lo, min(lo + batch_size, stop))

    def records(self, start: int = 0, stop: int | None = None) -> list[Record]:
        """Full records (codes + metadata) of rows [start, stop)."""
        stop = self.n if stop is None else min(stop, self.n)
        cols = {name: self.column(name, start, stop) for name in COLUMNS}
        seqs = self.sequences(start, stop)
        return [Record(codes=seqs[k], **{name: _py(cols[name][k]) for name in COLUMNS})
                for k in range(stop - start)]

    # -- split ---------------------------------------------------------------------------------
    @property
    def has_split(self) -> bool:
        return "split" in self.f

    def member_mask(self) -> np.ndarray:
        """Boolean [N]: True for members of the training split. Raises if the store has no split."""
        if not self.has_split:
            raise StoreError(f"{self.path} has no member/non-member split; run `glmjax data split` first")
        return self.f["split"]["member"][: self.n].astype(bool)

    def split_info(self) -> dict[str, Any]:
        return {k: get_json_attr(self.f["split"], k) for k in self.f["split"].attrs} if self.has_split else {}

    def canary_manifest(self) -> dict[str, Any] | None:
        return self.attr("canary_manifest")


def write_split(path: str | os.PathLike, member: np.ndarray, info: Mapping[str, Any]) -> None:
    """Write (or replace) the member/non-member split of a finished store, in place.

    The split is small (one byte per row) and written in one dataset; the previous split, if any,
    is replaced only after the new one is complete.
    """
    with h5py.File(path, "r+") as f:
        n = int(f.attrs["committed_rows"])
        if member.shape != (n,):
            raise StoreError(f"split has {member.shape[0]} rows but {path} has {n}")
        if "split_new" in f:
            del f["split_new"]
        g = f.create_group("split_new")
        g.create_dataset("member", data=member.astype(np.int8), compression="gzip")
        for k, v in info.items():
            set_attr(g, k, v)
        f.flush()
        if "split" in f:
            del f["split"]
        f.move("split_new", "split")


def _py(x: Any) -> Any:
    return x.item() if isinstance(x, np.generic) else x
