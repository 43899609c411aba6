"""Per-sequence membership scores of an audit (schema ``glmjax.MembershipScores`` v1).

``glmjax audit`` writes ``OUT/scores/membership.h5``: one row per genome window the attacks were
evaluated on (canary copies excluded), in store order, with the window's store row (``index``),
its ``id``, its true label (``member``) and one float64 column per attack (higher = more likely a
member; the same scores the report's metrics were computed from). An attack run on a sample of
the rows (the neighbourhood attack) holds NaN for the rows it did not see. This is the table
that ML Privacy Meter and MIMIR users export to compute their own metrics:
``glmjax scores export OUT/scores/membership.h5 --out scores.csv``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from glmjax.errors import StoreError
from glmjax.storage import TableReader, TableWriter, base_provenance

SCHEMA = "glmjax.MembershipScores"
SCHEMA_VERSION = 1
FIXED_COLUMNS = ("index", "id", "member")


def write_membership_scores(path: str | os.PathLike, index: np.ndarray, ids: Sequence[str], member: np.ndarray,
                            scores: Mapping[str, np.ndarray], sampled: Mapping[str, tuple[np.ndarray, np.ndarray]]
                            | None = None, provenance: Mapping[str, Any] | None = None) -> Path:
    """Write the table (through ``PATH.partial``) and return its path.

    Args:
      index: int [N] store rows; ids: [N] sequence ids; member: bool [N] labels.
      scores: attack -> float [N] (every row).
      sampled: attack -> (positions into the N rows, float scores there); the rest is NaN.
    """
    n = int(np.asarray(index).shape[0])
    cols: dict[str, np.ndarray] = {"index": np.asarray(index, np.int64), "id": np.asarray(ids, dtype=object),
                                   "member": np.asarray(member, bool)}
    for name, s in scores.items():
        cols[name] = np.asarray(s, np.float64)
    for name, (pos, s) in (sampled or {}).items():
        full = np.full(n, np.nan)
        full[np.asarray(pos, np.int64)] = np.asarray(s, np.float64)
        cols[name] = full
    clash = [k for k in list(scores) + list(sampled or {}) if k in FIXED_COLUMNS]
    if clash:
        raise StoreError(f"an attack may not be called {clash[0]!r}")
    for k, v in cols.items():
        if v.shape[0] != n:
            raise StoreError(f"column {k} has {v.shape[0]} rows for {n} sequences")
    dtypes = {"index": np.int64, "id": str, "member": bool, **{k: np.float64 for k in cols if k not in FIXED_COLUMNS}}
    w = TableWriter(path, SCHEMA, SCHEMA_VERSION, dtypes,
                    attrs={"provenance": base_provenance(**dict(provenance or {})),
                           "attacks": [k for k in cols if k not in FIXED_COLUMNS]})
    try:
        w.append(cols)
        return w.finalize()
    except BaseException:
        w.abort()
        raise


class MembershipScores(TableReader):
    """Read the table: ``len()``, ``column(name)``, ``attacks`` (the score columns)."""

    schema = SCHEMA
    kind = "MembershipScores table"

    def __init__(self, path: str | os.PathLike):
        super().__init__(path)
        if self.schema_version > SCHEMA_VERSION:
            v = self.schema_version
            self.close()
            raise StoreError(f"{path} has MembershipScores schema v{v}; this glmjax reads up to v{SCHEMA_VERSION}")

    @property
    def attacks(self) -> list[str]:
        return list(self.attr("attacks", []) or [])
