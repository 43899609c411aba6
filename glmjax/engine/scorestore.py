"""ScoreStore: per-sequence likelihood statistics in HDF5 (schema ``glmjax.ScoreStore`` v1).

One row per scored input sequence, in input order, on top of :mod:`glmjax.storage` (append-only,
committed-row counter, ``.partial`` + rename, resume). Columns (``/rows/<name>``):

=================  =======  ==================================================================
``index``          int64    row index in the input (SequenceStore row or FASTA record order)
``id``             str      input sequence id
``n_nucleotides``  int32    sequence length in nucleotides
``n_tokens``       int32    scored token positions
``sum_logp``       float64  sum of log p over scored tokens (natural log; PLL for masked LMs)
``mean_logp``      float32  sum_logp / n_tokens
``logp_per_nt``    float32  sum_logp / nucleotides covered by the scored tokens
``mean_entropy``   float32  mean entropy (nats) of the predictive distribution
``mink_<p>``       float32  Min-K%: mean of the lowest max(1, floor(n p / 100)) log p
``minkpp_<p>``     float32  Min-K%++: same over (log p - mu) / sigma
``mean_rank``      float32  mean rank of the true token (0 = most likely)
=================  =======  ==================================================================

``logp_per_nt`` divides by the nucleotides of the *scored* tokens: it equals ``mean_logp`` for
character tokenizers (also for causal models whose first nucleotide has no prediction) and
normalises k-mer and BPE scores per nucleotide.

Optional ragged per-token columns (``/ragged/<name>``): ``token_logp``, ``token_mu``,
``token_sigma``, ``token_entropy`` (float32) and ``token_rank`` (int32), one value per scored
token in sequence order. In ``pll-random`` mode a token's values are averages over the random
masks that covered it (``token_rank`` rounded); tokens no mask covered hold NaN (rank -1) and
are left out of the row statistics, and ``sum_logp`` is then ``n_tokens * mean_logp``.

File attributes: ``schema``, ``schema_version``, ``committed_rows``, ``complete``,
``provenance`` (JSON), ``mode`` (``causal`` | ``pll-exact`` | ``pll-strided`` | ``pll-random``),
``mode_params`` (JSON), ``objective`` and ``run`` (JSON identity of the run, checked on resume).
Stores of different modes or parameters are never mixed: :func:`check_compatible` raises.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from glmjax.errors import StoreError
from glmjax.storage import TableReader, TableWriter, base_provenance, get_json_attr, partial_path

SCHEMA = "glmjax.ScoreStore"
SCHEMA_VERSION = 1
MINK_PERCENTS = (5, 10, 20, 30, 40, 50)
MODES = ("causal", "pll-exact", "pll-strided", "pll-random")

ROW_COLUMNS: dict[str, Any] = {
    "index": np.int64, "id": str, "n_nucleotides": np.int32, "n_tokens": np.int32,
    "sum_logp": np.float64, "mean_logp": np.float32, "logp_per_nt": np.float32,
    "mean_entropy": np.float32,
    **{f"mink_{p}": np.float32 for p in MINK_PERCENTS},
    **{f"minkpp_{p}": np.float32 for p in MINK_PERCENTS},
    "mean_rank": np.float32,
}
TOKEN_COLUMNS: dict[str, Any] = {
    "token_logp": np.float32, "token_mu": np.float32, "token_sigma": np.float32,
    "token_entropy": np.float32, "token_rank": np.int32,
}


class ScoreStoreWriter(TableWriter):
    """Append score rows (see the module docstring); resumable and atomically finalized.

    Args:
      path: final file name (written as ``<path>.partial`` until :meth:`finalize`).
      mode: one of :data:`MODES`.
      mode_params: parameters of the mode (e.g. ``{"k": 4}``).
      objective: ``causal`` or ``masked``.
      provenance: provenance dict (model, input, seed...); package version and command added.
      per_token: also store the ragged per-token columns.
      run: JSON-able identity of the run; resuming a partial file requires the same value.
      resume: continue a ``.partial`` file left by a killed run of the same command.
      overwrite: replace an existing finished file.
    """

    def __init__(self, path: str | os.PathLike, mode: str, mode_params: Mapping[str, Any], objective: str,
                 provenance: Mapping[str, Any] | None = None, per_token: bool = False,
                 run: Mapping[str, Any] | None = None, resume: bool = True, overwrite: bool = True):
        if mode not in MODES:
            raise ValueError(f"unknown scoring mode {mode!r}")
        run = dict(run or {})
        tmp = partial_path(path)
        if resume and tmp.exists():
            _check_resumable(tmp, run)
        attrs = {"provenance": base_provenance(**dict(provenance or {})), "mode": mode,
                 "mode_params": dict(mode_params), "objective": objective, "run": run}
        super().__init__(path, SCHEMA, SCHEMA_VERSION, ROW_COLUMNS, TOKEN_COLUMNS if per_token else None,
                         attrs=attrs, resume=resume, overwrite=overwrite)

    def add(self, columns: Mapping[str, Any], tokens: Mapping[str, Sequence[np.ndarray]] | None = None) -> None:
        """Append rows (all of :data:`ROW_COLUMNS`, plus per-token lists when enabled) and commit."""
        self.append(columns, tokens if self.ragged else None)


def _check_resumable(tmp: Path, run: Mapping[str, Any]) -> None:
    import h5py

    try:
        with h5py.File(tmp, "r") as f:
            got = get_json_attr(f, "run")
            schema = f.attrs.get("schema")
    except OSError:
        return  # TableWriter reports (and removes) a damaged partial file itself
    if isinstance(schema, bytes):
        schema = schema.decode()
    if schema == SCHEMA and got != dict(run):
        raise StoreError(f"{tmp} was left by a scoring run with other options or inputs; remove it, or "
                         "rerun the original command to resume it")


class ScoreStore(TableReader):
    """Read a ScoreStore: ``len()``, ``column(name)``, ``mode``, ``mode_params``, ``provenance``,
    ``token_values(name, i)``."""

    schema = SCHEMA
    kind = "ScoreStore"
    MINK_PERCENTS = MINK_PERCENTS

    def __init__(self, path: str | os.PathLike):
        super().__init__(path)
        if self.schema_version > SCHEMA_VERSION:
            v = self.schema_version
            self.close()
            raise StoreError(f"{path} has ScoreStore schema v{v}; this glmjax reads up to v{SCHEMA_VERSION}")

    @property
    def mode(self) -> str:
        return str(self.attr("mode"))

    @property
    def mode_params(self) -> dict[str, Any]:
        return dict(self.attr("mode_params", {}) or {})

    @property
    def objective(self) -> str:
        return str(self.attr("objective"))

    @property
    def complete(self) -> bool:
        return bool(self.attr("complete", False))

    @property
    def has_token_values(self) -> bool:
        return "ragged" in self.f and "token_logp" in self.f["ragged"]

    def token_values(self, name: str, i: int) -> np.ndarray:
        """Per-token values of row ``i`` (``name`` in :data:`TOKEN_COLUMNS`, ``token_`` prefix optional)."""
        key = name if name.startswith("token_") else f"token_{name}"
        if key not in TOKEN_COLUMNS:
            raise StoreError(f"unknown per-token column {name!r}; choose one of {', '.join(TOKEN_COLUMNS)}")
        if not self.has_token_values:
            raise StoreError(f"{self.path} has no per-token values; score with --per-token")
        return self.ragged_row(key, i)

    def identity(self) -> dict[str, Any]:
        """What must agree for two stores to be merged or compared."""
        model = self.provenance.get("model", {}) or {}
        return {"mode": self.mode, "mode_params": self.mode_params, "objective": self.objective,
                "model": model.get("fingerprint"), "dtype": model.get("dtype")}


def check_compatible(stores: Sequence[ScoreStore], what: str = "merged") -> None:
    """Raise :class:`StoreError` unless all stores share mode, mode parameters, objective and model."""
    if not stores:
        return
    ref = stores[0].identity()
    for s in stores[1:]:
        got = s.identity()
        for key in ref:
            if got[key] != ref[key]:
                raise StoreError(f"{s.path} has {key} {got[key]!r} but {stores[0].path} has {ref[key]!r}; "
                                 f"scores of different {key.replace('_', ' ')} are never {what}")


def merge_scores(paths: Sequence[str | os.PathLike], out: str | os.PathLike, overwrite: bool = False,
                 allow_partial: bool = False, block_rows: int = 1 << 18) -> Path:
    """Concatenate the shard outputs of a multi-process run into one ScoreStore.

    Shards are ordered by their first ``index``; they must come from the same run (same mode,
    parameters, objective and model) and, unless ``allow_partial``, form the complete set of
    shards of that run. Rows are copied in blocks of ``block_rows``.
    """
    if not paths:
        raise StoreError("no shard files given to merge")
    stores = [ScoreStore(p) for p in paths]
    try:
        check_compatible(stores)
        for s in stores:
            if not s.complete:
                raise StoreError(f"{s.path} is not complete; finish its run first")
        shards = [s.provenance.get("shard") for s in stores]
        if not allow_partial:
            counts = {sh["count"] for sh in shards if sh}
            got = sorted(sh["index"] for sh in shards if sh)
            if None in shards or len(counts) != 1 or got != list(range(counts.pop())):
                raise StoreError("the files are not the complete set of shards of one run "
                                 f"(shards found: {got}); pass --allow-partial to merge them anyway")
        per_token = {s.has_token_values for s in stores}
        if len(per_token) != 1:
            raise StoreError("some shards have per-token values and others not; they cannot be merged")
        firsts = [int(s.column("index", 0, 1)[0]) if len(s) else -1 for s in stores]
        stores = [s for _, s in sorted(zip(firsts, stores, strict=True), key=lambda t: t[0])]
        first = stores[0]
        prov = dict(first.provenance)
        prov.pop("shard", None)
        prov["scored_by"] = prov.pop("command", "")
        prov.pop("glmjax_version", None)
        prov["merged_from"] = [str(Path(s.path).name) for s in stores]
        w = ScoreStoreWriter(out, first.mode, first.mode_params, first.objective, provenance=prov,
                             per_token=per_token.pop(), run={"merged_from": prov["merged_from"]},
                             resume=False, overwrite=overwrite)
        try:
            last = -1
            for s in stores:
                for lo in range(0, len(s), block_rows):
                    hi = min(lo + block_rows, len(s))
                    cols = {n: s.column(n, lo, hi) for n in ROW_COLUMNS}
                    idx = cols["index"]
                    if idx.size and (idx[0] <= last or np.any(np.diff(idx) <= 0)):
                        raise StoreError(f"{s.path} repeats or reorders rows of another shard "
                                         f"(index {int(idx[0])}); the shards overlap")
                    last = int(idx[-1]) if idx.size else last
                    toks = {n: s.ragged_rows(n, lo, hi) for n in TOKEN_COLUMNS} if w.ragged else None
                    w.add(cols, toks)
            return w.finalize()
        except BaseException:
            w.abort()
            raise
    finally:
        for s in stores:
            s.close()
