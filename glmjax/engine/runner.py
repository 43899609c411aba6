"""The scoring engine: streaming, bucketed, sharded, resumable scoring of a sequence input.

Pipeline (:func:`score`)::

    input rows ──(host_workers threads: read block, window, tokenize, bucket, pad)──▶
        blocks in input order ──(thread: device_put)──▶ queue
        ──(main: jitted forward + statistics, async dispatch, a few batches in flight)──▶
        per-block results, reordered to input order ──(thread: HDF5 append + commit)──▶ ScoreStore

* Rows are processed in blocks (at most ``block_rows`` rows and ``block_nucleotides``
  nucleotides, cut from the whole shard so that a resumed run sees the same blocks); a block's
  rows are written, in input order, once
  all its batches are back, and each write commits the row counter. A killed run is resumed by
  the same command: rows up to the counter are kept, the rest are scored again (no lost and no
  duplicated rows). Out-of-order buffering is therefore bounded by one or two blocks.
* Every batch is padded to a fixed size (a multiple of the device count) and length bucket, so
  ``jax.jit`` compiles a handful of shapes; compiled programs are cached on disk
  (:func:`configure_compilation_cache`).
* Sequences longer than the model's context raise before any scoring, unless ``window`` is
  given: then each such sequence is cut into consecutive non-overlapping windows of ``window``
  nucleotides, every window is tokenized and scored as a sequence of its own (no context crosses
  a window boundary; for a causal model the first token of each window is predicted from the
  window's own start), and the row's statistics are computed over the tokens of all its windows.
"""

from __future__ import annotations

import functools
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import PartitionSpec

from glmjax.engine import batching, sharding
from glmjax.engine.inputs import open_input
from glmjax.engine.scorestore import MINK_PERCENTS, TOKEN_COLUMNS, ScoreStoreWriter
from glmjax.errors import ConfigError, GlmjaxError, SequenceError, StoreError
from glmjax.kernels.logprob import STAT_NAMES, causal_scores
from glmjax.kernels.pll import pll_exact, pll_patterns, random_patterns, strided_patterns
from glmjax.kernels.reductions import row_stat_names, sequence_reductions

ROW_STATS = row_stat_names(MINK_PERCENTS)
DEFAULT_FRACTION = 0.15

# XLA compiler options of the scoring programs, on top of the family's own GPU options (None:
# only those). On CPU, {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes":
# True} compiles several times faster, for runs that compile more than they compute (tests).
COMPILER_OPTIONS: dict[str, Any] | None = None


def compiler_options(spec, platform: str | None = None) -> dict[str, Any] | None:
    """XLA options of a scoring program for family ``spec`` on ``platform`` (default: JAX's
    default backend): the family's ``gpu_compiler_options`` on GPUs, then ``COMPILER_OPTIONS``."""
    platform = platform or jax.default_backend()
    opts = dict(spec.gpu_compiler_options) if platform in ("gpu", "cuda", "rocm") else {}
    opts.update(COMPILER_OPTIONS or {})
    return opts or None


# ---------------------------------------------------------------------------------------------
# Configuration

def configure_compilation_cache(path: str | None = None) -> str | None:
    """Enable JAX's persistent compilation cache.

    Location: ``path``, else ``$GLMJAX_JAX_CACHE``, else ``~/.cache/glmjax/jax``; the value
    ``off`` disables it. Returns the directory used (None when disabled).
    """
    path = path or os.environ.get("GLMJAX_JAX_CACHE") or str(Path.home() / ".cache" / "glmjax" / "jax")
    if path.lower() in ("off", "none", "0", ""):
        return None
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    jax.config.update("jax_compilation_cache_dir", path)
    return path


@dataclass(frozen=True)
class ScoringMode:
    """How a sequence's log-likelihood is computed: ``name`` in
    :data:`glmjax.engine.scorestore.MODES` and its parameters (recorded with every score)."""

    name: str
    params: tuple[tuple[str, Any], ...] = ()

    @property
    def param_dict(self) -> dict[str, Any]:
        return dict(self.params)

    def describe(self) -> str:
        ps = ", ".join(f"{k}={v}" for k, v in self.params)
        return f"{self.name} ({ps})" if ps else self.name


def parse_mode(objective: str, pll: str | None = None, seed: int = 0) -> ScoringMode:
    """The scoring mode of a model: ``causal`` for causal LMs; for masked LMs the PLL variant
    ``exact`` (default), ``strided:K`` or ``random:K`` / ``random:K:FRACTION``."""
    if objective == "causal":
        if pll:
            raise ConfigError("--pll applies to masked language models; this model is causal "
                              "(its log-likelihood is exact)")
        return ScoringMode("causal")
    spec = (pll or "exact").strip().lower()
    kind, _, rest = spec.partition(":")
    try:
        if kind == "exact" and not rest:
            return ScoringMode("pll-exact")
        if kind == "strided":
            k = int(rest)
            if k < 1:
                raise ValueError
            return ScoringMode("pll-strided", (("k", k),))
        if kind == "random":
            parts = rest.split(":")
            k = int(parts[0])
            frac = float(parts[1]) if len(parts) > 1 else DEFAULT_FRACTION
            if k < 1 or not 0.0 < frac <= 1.0 or len(parts) > 2:
                raise ValueError
            return ScoringMode("pll-random", (("fraction", frac), ("k", k), ("seed", int(seed))))
    except ValueError:
        pass
    raise ConfigError(f"--pll {pll!r} is not understood; use exact, strided:K (K >= 1) or "
                      "random:K[:FRACTION] (e.g. random:8 masks 15% per copy)")


def default_batch_tokens() -> int:
    """Tokens per device and forward pass: 64k on accelerators, 4k on CPU."""
    return 4096 if jax.default_backend() == "cpu" else 65536


def device_memory_bytes(device=None) -> int | None:
    """Memory one device can allocate: the accelerator's limit, or the host's RAM on CPU."""
    device = device or jax.devices()[0]
    try:
        stats = device.memory_stats() or {}
    except Exception:  # noqa: BLE001 - backends without memory statistics
        stats = {}
    if stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    if device.platform == "cpu":
        try:
            return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
        except (ValueError, OSError, AttributeError):
            return None
    return None


def check_batch_memory(model, batch_tokens: int, device=None) -> None:
    """Refuse a batch whose float32 logits alone (one ``[tokens, vocab]`` buffer: a lower bound
    of what a forward pass holds) with the parameters exceed a device's memory, before anything
    is compiled; the message names a ``--batch-tokens`` that fits."""
    limit = device_memory_bytes(device)
    if not limit:
        return
    vocab = int(model.config.vocab_size)
    params = 4 * int(model.num_params())
    per_token = 4 * vocab
    need = params + batch_tokens * per_token
    if need > limit:
        fits = max(0, (int(limit * 0.8) - params) // per_token)
        hint = f"use --batch-tokens {fits // 8 * 8 or 8}" if fits >= 8 else "the parameters alone do not fit"
        raise ConfigError(f"--batch-tokens {batch_tokens:,} needs about {need / 2**30:,.1f} GiB per device "
                          f"({vocab:,}-way float32 logits of every token + the parameters), more than the "
                          f"{limit / 2**30:,.1f} GiB it has; {hint}")


# ---------------------------------------------------------------------------------------------
# Compiled scoring of one batch

def copies_per_pass(mode: ScoringMode, batch_tokens: int, length: int) -> int:
    """Masked copies of each sequence per forward pass: as many as fit ``batch_tokens`` tokens
    (at least 1, at most the copies the mode needs: ``length`` for exact PLL, ``k`` otherwise)."""
    if mode.name == "causal":
        return 1
    total = length if mode.name == "pll-exact" else int(mode.param_dict["k"])
    return max(1, min(total, int(batch_tokens) // max(1, int(length))))


class Scorer:
    """Jitted scoring of padded batches for one model and mode on one mesh.

    ``scorer(batch)`` takes device arrays (``ids``, ``attention_mask``, ``scored``, ``rows``,
    ``pieces``; batch-sharded) and returns ``(row_stats [B, R] float32, token_stats)`` where
    ``R = len(ROW_STATS)`` and ``token_stats`` is ``[B, L, 6]`` float32 (``STAT_NAMES`` order)
    when ``per_token`` is set, else None. Row statistics are computed on device over the valid
    positions (causal: scored tokens after the first; PLL: scored tokens that were masked).

    Args:
      model: a :class:`glmjax.models.base.LoadedModel`.
      mode: the :class:`ScoringMode`.
      mesh: device mesh (batch on ``"data"``).
      per_token: also return per-token statistics.
      batch_tokens: tokens per device and forward pass; sets masked copies per pass for PLL.
      chunk: position block size for the vocabulary statistics (None: whole batch at once).
    """

    def __init__(self, model, mode: ScoringMode, mesh, per_token: bool = False,
                 batch_tokens: int | None = None, chunk: int | None = None):
        self.model = model
        self.mode = mode
        self.mesh = mesh
        self.per_token = per_token
        self.batch_tokens = int(batch_tokens or default_batch_tokens())
        check_batch_memory(model, self.batch_tokens)
        self.num_devices = sharding.num_devices(mesh)
        graphdef, state = nnx.split(model.module)
        self.state = sharding.replicate(state, mesh)
        # The jitted function takes the parameters as a flat list: flattening an nnx.State on
        # every call costs ~0.5 ms of Python, a list is flattened in C++.
        self.leaves, treedef = jax.tree_util.tree_flatten(self.state)
        mask_id = model.tokenizer.mask_id
        if mode.name != "causal" and mask_id is None:
            raise ConfigError(f"{model.family}: the tokenizer has no mask token; PLL scoring needs one")
        # copies per pass (hence the compiled program) depend on batch_tokens only in PLL modes
        options = compiler_options(model.spec, mesh.devices.flat[0].platform)
        opts = None if options is None else tuple(sorted(options.items()))
        mesh_key = None if self.num_devices == 1 else (tuple(d.id for d in mesh.devices.flat), mesh.axis_names)
        key = (graphdef, treedef, mode, per_token, None if mode.name == "causal" else self.batch_tokens, chunk,
               mask_id, opts, mesh_key)
        self._jit = _JIT_CACHE.get(key)
        if self._jit is None:
            self._jit = _build_jit(graphdef, treedef, mode, per_token, chunk, mask_id,
                                   functools.partial(copies_per_pass, mode, self.batch_tokens),
                                   mesh if self.num_devices > 1 else None, options)
            if len(_JIT_CACHE) >= 16:
                _JIT_CACHE.pop(next(iter(_JIT_CACHE)))
            _JIT_CACHE[key] = self._jit

    def copies(self, length: int) -> int:
        """Masked copies per sequence and forward pass for a bucket length (1 for causal)."""
        return copies_per_pass(self.mode, self.batch_tokens, length)

    def rows_per_batch(self, length: int, max_rows: int | None = None) -> int:
        """Batch rows for a bucket length (a multiple of the device count)."""
        return batching.rows_per_batch(length, self.batch_tokens, self.num_devices, self.copies(length), max_rows)

    def __call__(self, batch: dict[str, jax.Array]):
        return self._jit(self.leaves, batch["ids"], batch["attention_mask"], batch["scored"], batch["rows"],
                         batch["pieces"])

    def lower(self, batch: dict[str, Any]):
        """``jax.jit(...).lower`` for a batch (compile-time and cost analysis in benchmarks)."""
        return self._jit.lower(self.leaves, batch["ids"], batch["attention_mask"], batch["scored"], batch["rows"],
                               batch["pieces"])

    def device_batch(self, b: batching.Batch) -> dict[str, jax.Array]:
        """Put a host :class:`~glmjax.engine.batching.Batch` on the mesh."""
        return sharding.put_batch({"ids": b.ids, "attention_mask": b.attention_mask, "scored": b.scored,
                                   "rows": b.rows, "pieces": b.piece_index}, self.mesh)


# Compiled scoring functions, shared by scorers of models with the same structure and options
# (scoring several inputs with one model, or a model and its fine-tuned copies, compiles once).
_JIT_CACHE: dict = {}


def _build_jit(graphdef, treedef, mode: ScoringMode, per_token: bool, chunk: int | None, mask_id: int | None,
               copies_for: Callable[[int], int], mesh=None, options: dict[str, Any] | None = None):
    """The compiled scoring step. On a mesh of several devices the body runs per device on its
    slice of the batch (``shard_map``; parameters replicated): scoring is data-parallel with no
    communication, and XLA's sharding propagation is not relied on — it replicates operations it
    cannot partition (e.g. the FFT of the Hyena long convolution), which would make every device
    compute the whole batch. ``options``: XLA compiler options (:func:`compiler_options`)."""
    params = mode.param_dict

    def fn(leaves, ids, attention_mask, scored, rows, pieces):
        state = jax.tree_util.tree_unflatten(treedef, leaves)

        def forward(x, m):
            return nnx.merge(graphdef, state)(x, m)

        n = ids.shape[1]
        if mode.name == "causal":
            st, valid = causal_scores(forward, ids, attention_mask, scored, chunk)
        elif mode.name == "pll-exact":
            st, valid = pll_exact(forward, ids, attention_mask, scored, mask_id, copies_for(n), chunk)
        elif mode.name == "pll-strided":
            pats = strided_patterns(scored, params["k"])
            st, valid = pll_patterns(forward, ids, attention_mask, scored, mask_id, pats, copies_for(n), chunk)
        else:
            pats = random_patterns(scored, rows, pieces, params["k"], params["fraction"], params["seed"])
            st, valid = pll_patterns(forward, ids, attention_mask, scored, mask_id, pats, copies_for(n), chunk)
        red = sequence_reductions(*st, valid)
        row = jnp.stack([red[k].astype(jnp.float32) for k in ROW_STATS], axis=1)
        tok = jnp.stack(list(st), axis=-1) if per_token else None
        return row, tok

    if mesh is not None:
        data = PartitionSpec(sharding.DATA_AXIS)
        fn = _shard_map(fn, mesh, in_specs=(PartitionSpec(), data, data, data, data, data),
                        out_specs=(data, data if per_token else PartitionSpec()))
    return jax.jit(fn, compiler_options=options)


def _shard_map(fn, mesh, in_specs, out_specs):
    """``jax.shard_map`` (public since JAX 0.6; older releases: ``jax.experimental.shard_map``)."""
    sm = getattr(jax, "shard_map", None)
    if sm is not None:
        return sm(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)
    from jax.experimental.shard_map import shard_map

    return shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_rep=False)


def target_mask(scored: np.ndarray, objective: str) -> np.ndarray:
    """Host copy of the scored positions of a ``[B, L]`` batch (causal: the first token has no
    prediction and is left out)."""
    m = np.asarray(scored, bool).copy()
    if objective == "causal" and m.shape[-1]:
        m[..., 0] = False
    return m


# ---------------------------------------------------------------------------------------------
# Streaming run

@dataclass
class _Block:
    """One block of input rows moving through the pipeline."""

    lo: int
    hi: int
    lengths: np.ndarray
    seq: np.ndarray            # piece -> row (block-relative)
    piece: np.ndarray          # piece -> window index within its row
    tokens: batching.TokenBlock | None
    n_target: np.ndarray       # piece -> scored tokens
    nt_target: np.ndarray      # piece -> nucleotides of the scored tokens
    num_batches: int = 0
    done_batches: int = 0
    row_stats: np.ndarray | None = None
    token_values: list | None = None
    token_ids: list | None = None       # token_reducer: scored token ids per piece
    token_logp: list | None = None      # token_reducer: their log p (NaN: no prediction)


@dataclass
class _Item:
    block: _Block
    batch: batching.Batch
    device: dict[str, jax.Array]


@dataclass
class ScoreSummary:
    """What a scoring run did."""

    out: Path
    rows: int
    resumed_rows: int
    tokens: int
    seconds: float
    mode: ScoringMode
    shapes: set = field(default_factory=set)
    reduced: dict[str, np.ndarray] | None = None  # token_reducer's columns, one value per row

    @property
    def sequences_per_s(self) -> float:
        return (self.rows - self.resumed_rows) / max(self.seconds, 1e-9)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / max(self.seconds, 1e-9)


def _segment_sum(values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Sums of ``values`` over the segments ``[offsets[i], offsets[i+1])`` that tile it (int64)."""
    out = np.zeros(offsets.shape[0] - 1, np.int64)
    starts = offsets[:-1]
    nz = np.diff(offsets) > 0
    if nz.any():
        out[nz] = np.add.reduceat(values, starts[nz], dtype=np.int64)
    return out


def prepare_block(source, lo: int, hi: int, tokenizer, objective: str, window: int | None) -> _Block:
    """Read and tokenize rows ``lo..hi`` of an input (windowed when ``window`` is set): the host
    side of one block, with each piece's scored-token and nucleotide counts (benchmarks time it)."""
    codes, offs = source.block(lo, hi)
    lens = np.diff(offs)
    seq, piece, start = batching.window_pieces(lens, window)
    piece_offsets = np.concatenate([offs[seq] + start, [offs[-1]]]).astype(np.int64)
    tb = batching.tokenize_block(tokenizer, codes, piece_offsets)
    # Per piece: scored tokens and the nucleotides they cover. Every nucleotide is covered by
    # exactly one scored token, so only the few unscored tokens (specials, and the first token of
    # a causal sequence, which has no prediction) are looked at.
    tok_lens = np.diff(tb.offsets)
    unscored = ~tb.scored
    if objective == "causal" and tb.scored.size:
        unscored = unscored.copy()
        unscored[tb.offsets[:-1][tok_lens > 0]] = True
    u = np.flatnonzero(unscored)
    nts_u = np.concatenate([[0], np.cumsum(tb.nucleotides[u], dtype=np.int64)])
    a = np.searchsorted(u, tb.offsets[:-1])
    b = np.searchsorted(u, tb.offsets[1:])
    n_target = tok_lens - (b - a)
    nt_target = np.diff(piece_offsets) - (nts_u[b] - nts_u[a])
    return _Block(lo, hi, lens, seq, piece, tb, n_target, nt_target)


def _finish_block(blk: _Block, ids: np.ndarray, mode: ScoringMode, per_token: bool) -> tuple[dict, dict | None]:
    """Row columns (and per-token lists) of a block whose batches are all back."""
    nrows = blk.hi - blk.lo
    counts = np.bincount(blk.seq, minlength=nrows)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    stats = blk.row_stats[first].astype(np.float64)          # [rows, R], single-piece rows
    n_tokens = _segment_sum(blk.n_target, np.concatenate([[0], np.cumsum(counts)]))
    nt_scored = _segment_sum(blk.nt_target, np.concatenate([[0], np.cumsum(counts)]))
    tok_rows = None
    if blk.token_values is not None:
        tok_rows = [np.concatenate([blk.token_values[p] for p in range(first[r], first[r] + counts[r])], axis=0)
                    if counts[r] != 1 else blk.token_values[first[r]] for r in range(nrows)]
        for r in np.flatnonzero(counts > 1):
            t = tok_rows[r].astype(np.float64)[None]          # [1, n, 5]
            red = sequence_reductions(*(t[..., i] for i in range(len(STAT_NAMES))), ~np.isnan(t[..., 0]),
                                      MINK_PERCENTS, xp=np)
            stats[r] = [float(red[k][0]) for k in ROW_STATS]
    col = {k: stats[:, i] for i, k in enumerate(ROW_STATS)}
    sum_logp = col["sum_logp"]
    if mode.name == "pll-random":
        # positions no copy masked are estimated by the mean of the covered ones
        sum_logp = np.where(n_tokens > 0, col["mean_logp"] * n_tokens, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_nt = np.where(nt_scored > 0, sum_logp / np.maximum(nt_scored, 1), np.nan)
    out = {"index": np.arange(blk.lo, blk.hi, dtype=np.int64), "id": ids,
           "n_nucleotides": blk.lengths.astype(np.int32), "n_tokens": n_tokens.astype(np.int32),
           "sum_logp": sum_logp.astype(np.float64), "mean_logp": col["mean_logp"].astype(np.float32),
           "logp_per_nt": per_nt.astype(np.float32), "mean_entropy": col["mean_entropy"].astype(np.float32),
           "mean_rank": col["mean_rank"].astype(np.float32)}
    for p in MINK_PERCENTS:
        out[f"mink_{p}"] = col[f"mink_{p}"].astype(np.float32)
        out[f"minkpp_{p}"] = col[f"minkpp_{p}"].astype(np.float32)
    tokens = None
    if per_token and tok_rows is not None:
        tokens = {}
        for i, name in enumerate(TOKEN_COLUMNS):
            if name == "token_rank":
                tokens[name] = [np.where(np.isnan(t[:, i]), -1, np.rint(t[:, i])).astype(np.int32) for t in tok_rows]
            else:
                tokens[name] = [t[:, i].astype(np.float32) for t in tok_rows]
    return out, tokens


def default_host_workers() -> int:
    """Block-preparation threads: half the host's CPUs, between 1 and 4 (``$GLMJAX_HOST_WORKERS``
    overrides)."""
    env = os.environ.get("GLMJAX_HOST_WORKERS")
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            raise ConfigError(f"GLMJAX_HOST_WORKERS must be a positive integer, not {env!r}") from None
    return max(1, min(4, (os.cpu_count() or 2) // 2))


def block_bounds(lengths: np.ndarray, max_rows: int, max_nucleotides: int) -> np.ndarray:
    """Block boundaries ``[0, ..., len(lengths)]``: consecutive rows, at most ``max_rows`` rows and
    ``max_nucleotides`` nucleotides per block (a longer single row is a block of its own)."""
    n = int(lengths.shape[0])
    bounds = [0]
    csum = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
    while bounds[-1] < n:
        lo = bounds[-1]
        hi = int(np.searchsorted(csum, csum[lo] + max_nucleotides, side="right")) - 1
        bounds.append(min(max(hi, lo + 1), lo + max_rows, n))
    return np.asarray(bounds, np.int64)


def check_lengths(source, lo: int, hi: int, tokenizer, context: int | None, window: int | None) -> None:
    """Raise :class:`SequenceError` (before any scoring) if a sequence does not fit the context.

    Token counts are bounded from the nucleotide lengths (``tokenizer.max_tokens``); sequences
    whose bound exceeds the context are tokenized to count exactly.
    """
    if context is None:
        return
    if window is not None:
        need = tokenizer.max_tokens(int(window))
        if need > context:
            raise ConfigError(f"--window {window} gives up to {need} tokens but the model's context is "
                              f"{context}; use a smaller window")
        return
    lens = source.lengths()[lo:hi]
    if lens.size == 0:
        return
    uniq, inv = np.unique(lens, return_inverse=True)
    bound = np.array([tokenizer.max_tokens(int(u)) for u in uniq], np.int64)[inv.reshape(-1)]
    suspicious = np.flatnonzero(bound > context) + lo
    step = 4096
    for b0 in np.unique(suspicious // step) * step:
        b0 = int(max(b0, lo))
        b1 = min(b0 + step, hi)
        codes, offs = source.block(b0, b1)
        tl = batching.tokenize_block(tokenizer, codes, offs).lengths
        bad = np.flatnonzero(tl > context)
        if bad.size:
            r = b0 + int(bad[0])
            rid = source.ids(r, r + 1)[0]
            raise SequenceError(f"sequence {rid!r} (row {r}) has {int(lens[r - lo])} nucleotides = "
                                f"{int(tl[bad[0]])} tokens, more than the model's context of {context} tokens; "
                                "score long sequences in windows with --window N (nucleotides)")


def model_provenance(model, dtype: str | None = None) -> dict[str, Any]:
    """Family, source, parameter fingerprint and compute dtype of a model."""
    return {"family": model.family, "source": str(model.source), "fingerprint": model.fingerprint(),
            "dtype": dtype or getattr(model.config, "dtype", "float32")}


def score(model, input_path: str | os.PathLike, out: str | os.PathLike, *, pll: str | None = None,
          seed: int = 0, batch_tokens: int | None = None, per_token: bool = False, window: int | None = None,
          per_window: bool = False, block_rows: int = 16384, block_nucleotides: int = 1 << 23, devices=None, overwrite: bool = False,
          resume: bool = True,
          process_index: int = 0, process_count: int = 1, inflight: int = 3, prefetch: int = 6,
          chunk: int | None = None, on_commit: Callable[[int], None] | None = None,
          host_workers: int | None = None, label: str = "scoring",
          log: Callable[[str], None] | None = None, token_reducer: TokenReducer | None = None) -> ScoreSummary:
    """Score every sequence of ``input_path`` with ``model`` into a ScoreStore at ``out``.

    Args:
      model: a :class:`glmjax.models.base.LoadedModel`.
      input_path: SequenceStore (``.h5``) or FASTA file.
      out: output ScoreStore; in a multi-process run each process writes
        :func:`glmjax.engine.distributed.shard_path` of it.
      pll: masked LMs: ``exact`` (default), ``strided:K``, ``random:K[:FRACTION]``.
      seed: seed of the random PLL masks.
      batch_tokens: tokens per device and forward pass (default :func:`default_batch_tokens`).
      per_token: store per-token statistics too.
      window: score sequences longer than this many nucleotides in windows (see module doc).
      per_window: with ``window``, one output row per window (id ``ID:START-END``, 1-based
        inclusive; ``index`` counts windows) instead of one row per input sequence.
      block_rows: rows per block (unit of reordering and of commits).
      block_nucleotides: nucleotides per block (bounds host memory for long sequences; a
        single longer sequence makes a block of its own).
      devices: devices of the mesh (default: all local devices), or a count.
      overwrite: replace a finished output file.
      resume: continue a ``.partial`` output left by a killed run of the same command.
      process_index, process_count: this process's shard of the rows.
      inflight: batches dispatched ahead of the one being collected.
      prefetch: prepared batches buffered between the host thread and the devices.
      chunk: see :class:`Scorer`.
      on_commit: called with the committed row count after each block is written.
      host_workers: threads that read, tokenize and pad blocks ahead of the devices (default
        :func:`default_host_workers`); results do not depend on it.
      label: the progress bar's label.
      log: where plain progress lines go when no terminal bar is shown (see
        :func:`glmjax.progress.progress`).
      token_reducer: ``f(lo, hi, ids, logp) -> {name: array [hi - lo]}`` called on the host for
        every block of rows ``lo..hi`` with, per row, the scored token ids (int32) and their
        log p (float32, NaN where the mode gave no prediction, e.g. a causal row's first token);
        its columns, in row order, come back in :attr:`ScoreSummary.reduced` (statistics of
        per-token values, such as DC-PDD's, without storing them). Needs ``resume=False``.

    Raises:
      GlmjaxError: bad input, options or over-long sequences, before anything is written.
    """
    from glmjax.engine.distributed import shard_path, shard_range

    configure_compilation_cache()
    mode = parse_mode(model.objective, pll, seed)
    if window is not None and window < 1:
        raise ConfigError(f"--window must be a positive number of nucleotides, not {window}")
    if per_window and window is None:
        raise ConfigError("--per-window needs --window N (the window length in nucleotides)")
    if block_rows < 1 or block_nucleotides < 1:
        raise ConfigError("block_rows and block_nucleotides must be positive")
    if host_workers is not None and host_workers < 1:
        raise ConfigError(f"host_workers must be at least 1, not {host_workers}")
    workers = host_workers or default_host_workers()
    if token_reducer is not None and resume:
        raise ConfigError("a token reducer sees every row once: score with resume=False")
    out_path = shard_path(out, process_index, process_count)
    if out_path.exists() and not overwrite:
        raise StoreError(f"{out_path} already exists; choose another output or pass --overwrite")
    if not out_path.parent.exists():
        raise ConfigError(f"output folder {out_path.parent} does not exist; create it first")
    source = open_input(input_path)
    if per_window:
        from glmjax.engine.inputs import WindowedInput

        source, window = WindowedInput(source, window), None
    try:
        n = len(source)
        lo, hi = shard_range(n, process_index, process_count)
        tokenizer = model.tokenizer
        context = model.config.max_len
        check_lengths(source, lo, hi, tokenizer, context, window)
        mesh = sharding.make_mesh(devices)
        need_tokens = per_token or window is not None or token_reducer is not None
        scorer = Scorer(model, mode, mesh, per_token=need_tokens, batch_tokens=batch_tokens, chunk=chunk)
        policy = batching.padding_policy(model.spec)
        mprov = model_provenance(model)
        prov = {"model": mprov, "input": source.provenance(), "seed": int(seed),
                "scoring": {"mode": mode.name, "params": mode.param_dict, "window": window,
                            "per_window": getattr(source, "window", None), "padding": policy,
                            "bucket": "exact-length" if policy == "exact" else "8-per-octave"}}
        if process_count > 1:
            prov["shard"] = {"index": process_index, "count": process_count, "rows": [lo, hi], "total": n}
        run = {"mode": mode.name, "params": mode.param_dict, "model": mprov["fingerprint"], "dtype": mprov["dtype"],
               "input": str(Path(input_path).resolve()), "rows": [lo, hi], "total": n, "window": window,
               "per_window": getattr(source, "window", None), "per_token": per_token, "objective": model.objective}
        # the writer takes OUT's lock before it touches a partial file (a live run's is never removed)
        writer = ScoreStoreWriter(out_path, mode.name, mode.param_dict, model.objective, provenance=prov,
                                  per_token=per_token, run=run, resume=resume, overwrite=overwrite)
        try:
            summary = _run(source, scorer, writer, lo + writer.rows, hi, hi - lo, tokenizer, model.objective, mode,
                           policy, context, window, per_token,
                           block_bounds(source.lengths()[lo:hi], block_rows, block_nucleotides) + lo,
                           inflight, prefetch, on_commit, workers=workers, label=label, log=log,
                           token_reducer=token_reducer)
            summary.out = writer.finalize()
            summary.resumed_rows = writer.resumed_rows
            summary.rows = writer.rows
            return summary
        except GlmjaxError:
            writer.abort(keep_partial=False)
            raise
        except BaseException:
            # crashes and interrupts keep the committed rows for a resume
            writer.abort(keep_partial=True)
            raise
    finally:
        source.close()


def score_sequences(model, sequences, ids=None, *, pll: str | None = None, seed: int = 0,
                    per_token: bool = False, window: int | None = None, batch_tokens: int | None = None,
                    devices=None, label: str = "scoring", log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Score an in-memory list of sequences; returns the ScoreStore columns as arrays.

    The sequences go through :func:`score` (the same batching, statistics and checks) via a
    private temporary store that is removed afterwards.

    Args:
      model: a :class:`glmjax.models.base.LoadedModel`.
      sequences: DNA strings (ACGTN, any case) or uint8 code arrays (0..4).
      ids: one id per sequence (default ``seq0``, ``seq1``, ...).
      pll, seed, per_token, window, batch_tokens, devices, label, log: as for :func:`score`.

    Returns:
      ``{column: array [N]}`` for every ScoreStore row column (``id``, ``n_tokens``,
      ``sum_logp``, ``mean_logp``, ``mink_<p>``, ...), rows in input order; with ``per_token``
      also ``"tokens": {name: [array per sequence]}`` for every per-token column.
    """
    import tempfile

    from glmjax.alphabet import encode
    from glmjax.data.store import Record, SequenceStoreWriter
    from glmjax.engine.scorestore import ScoreStore

    if isinstance(sequences, (str, bytes)):
        raise ConfigError("sequences must be a list of sequences, not one string")
    sequences = list(sequences)
    if not sequences:
        raise ConfigError("no sequences to score")
    ids = [f"seq{i}" for i in range(len(sequences))] if ids is None else [str(i) for i in ids]
    if len(ids) != len(sequences):
        raise ConfigError(f"{len(ids)} ids for {len(sequences)} sequences")
    records = []
    for name, seq in zip(ids, sequences, strict=True):
        if isinstance(seq, np.ndarray):
            if seq.ndim != 1 or seq.size and (seq.min() < 0 or seq.max() > 4):
                raise SequenceError(f"{name}: code arrays must be 1-D with values 0..4 (A C G T N)")
            codes = seq.astype(np.uint8)
        else:
            codes = encode(seq, record=name)
        if codes.size == 0:
            raise SequenceError(f"{name}: empty sequence")
        records.append(Record(id=name, codes=codes, kind="query"))
    with tempfile.TemporaryDirectory(prefix="glmjax-sequences-") as work:
        store, out = Path(work) / "input.h5", Path(work) / "scores.h5"
        with SequenceStoreWriter(store) as w:
            w.add(records)
        score(model, store, out, pll=pll, seed=seed, per_token=per_token, window=window,
              batch_tokens=batch_tokens, devices=devices, label=label, log=log, resume=False)
        with ScoreStore(out) as s:
            result: dict[str, Any] = s.columns()
            if per_token:
                result["tokens"] = {name: s.ragged_rows(name) for name in TOKEN_COLUMNS}
    return result


_STOP = object()


def _run(source, scorer: Scorer, writer: ScoreStoreWriter, start: int, stop: int, shard_rows: int, tokenizer,
         objective: str, mode: ScoringMode, policy: str, context: int | None, window: int | None, per_token: bool,
         bounds: np.ndarray, inflight: int, prefetch: int, on_commit, workers: int = 1, label: str = "scoring",
         log=None, token_reducer: TokenReducer | None = None) -> ScoreSummary:
    from glmjax.progress import progress

    # batch sizes depend on the shard's size, not on what is left of it, so a resumed run builds
    # exactly the batches of an uninterrupted one (and writes bit-identical rows)
    total_pieces_cap = max(1, shard_rows)
    want_tokens = scorer.per_token
    keep_values = per_token or window is not None
    summary = ScoreSummary(out=writer.path, rows=0, resumed_rows=0, tokens=0, seconds=0.0, mode=mode)
    batches: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
    writes: queue.Queue = queue.Queue(maxsize=2)
    stop_event = threading.Event()
    errors: list[BaseException] = []

    def put(q: queue.Queue, item) -> bool:
        while not stop_event.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def build(b0: int, b1: int):
        """Read, tokenize, bucket and pad one block: (block, its host batches)."""
        blk = prepare_block(source, b0, b1, tokenizer, objective, window)
        plan = batching.plan_batches(blk.tokens.lengths, policy, context,
                                     lambda L: scorer.rows_per_batch(L, total_pieces_cap))
        blk.num_batches = len(plan)
        blk.row_stats = np.zeros((len(blk.tokens), len(ROW_STATS)), np.float32)
        # per-token values are kept for a per-token store and for windowed rows; a token reducer
        # alone needs only the ids and log p
        blk.token_values = [None] * len(blk.tokens) if want_tokens and keep_values else None
        if token_reducer is not None:
            blk.token_ids, blk.token_logp = [None] * len(blk.tokens), [None] * len(blk.tokens)
        host = [batching.assemble(blk.tokens, idx, length, scorer.rows_per_batch(length, total_pieces_cap),
                                  tokenizer.pad_id, blk.seq + b0, blk.piece) for length, idx in plan]
        blk.tokens = None  # the batches hold what is still needed
        return blk, host

    def producer() -> None:
        # blocks are prepared by a few worker threads (numpy releases the GIL for most of the
        # work) and handed on in order; this thread only transfers their batches to the devices
        spans = [(max(int(b0), start), int(b1)) for b0, b1 in zip(bounds[:-1], bounds[1:], strict=True)
                 if int(b1) > start]  # a partial file written with other block sizes resumes at its committed row
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="glmjax-prepare")
        try:
            ahead: deque = deque()
            todo = iter(spans)
            for span in todo:
                ahead.append(pool.submit(build, *span))
                if len(ahead) > workers:
                    break
            while ahead:
                blk, host = ahead.popleft().result()
                nxt = next(todo, None)
                if nxt is not None:
                    ahead.append(pool.submit(build, *nxt))
                if not put(batches, ("block", blk)):
                    return
                for b in host:
                    if not put(batches, ("batch", _Item(blk, b, scorer.device_batch(b)))):
                        return
                del host
            put(batches, ("end", None))
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            errors.append(e)
            put(batches, ("end", None))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def writer_loop() -> None:
        while True:
            item = writes.get()
            if item is _STOP:
                return
            if errors:
                continue
            blk = item
            try:
                cols, toks = _finish_block(blk, source.ids(blk.lo, blk.hi), mode, per_token)
                if token_reducer is not None:
                    reduced.append(_reduce_block(blk, token_reducer))
                writer.add(cols, toks)
                if on_commit is not None:
                    on_commit(writer.rows)
            except BaseException as e:  # noqa: BLE001 - handed to the main thread
                errors.append(e)

    prod = threading.Thread(target=producer, name="glmjax-batches", daemon=True)
    wthr = threading.Thread(target=writer_loop, name="glmjax-writer", daemon=True)
    pending: deque = deque()
    reduced: list[dict[str, np.ndarray]] = []
    t0 = time.perf_counter()

    def collect(bar) -> None:
        kind, obj, out = pending.popleft()
        if kind == "block":
            blk = obj
            put(writes, blk)
            bar.advance(blk.hi - blk.lo)
            return
        item: _Item = obj
        row, tok = jax.device_get(out)
        b = item.batch
        real = b.pieces >= 0
        item.block.row_stats[b.pieces[real]] = row[real]
        if tok is not None:
            mask = target_mask(b.scored, objective)
            if item.block.token_values is not None:
                for r in np.flatnonzero(real):
                    item.block.token_values[b.pieces[r]] = tok[r][mask[r]]
            if token_reducer is not None:
                sc = np.asarray(b.scored, bool)
                for r in np.flatnonzero(real):
                    item.block.token_ids[b.pieces[r]] = np.asarray(b.ids[r][sc[r]], np.int32)
                    item.block.token_logp[b.pieces[r]] = np.where(mask[r][sc[r]], tok[r][sc[r], 0],
                                                                  np.nan).astype(np.float32)
        done = int(item.block.n_target[b.pieces[real]].sum())
        summary.tokens += done
        bar.advance(0, tokens=done)  # the token rate moves while a long sequence is still being scored

    prod.start()
    wthr.start()
    try:
        with progress(label, total=stop - start, unit="seq", log=log) as bar:
            open_block = None
            while True:
                kind, obj = batches.get()
                if errors:
                    break
                if kind == "end":
                    break
                if kind == "block":
                    if open_block is not None:
                        pending.append(("block", open_block, None))
                    open_block = obj
                    if obj.num_batches == 0:
                        pending.append(("block", obj, None))
                        open_block = None
                    continue
                item: _Item = obj
                summary.shapes.add(tuple(item.batch.ids.shape))
                pending.append(("batch", item, scorer(item.device)))
                while len(pending) > inflight:
                    collect(bar)
            if open_block is not None:
                pending.append(("block", open_block, None))
            while pending and not errors:
                collect(bar)
    finally:
        stop_event.set()
        prod.join()
        # the writer drains what was handed to it before stopping
        writes.put(_STOP)
        wthr.join()
    if errors:
        raise errors[0]
    summary.seconds = time.perf_counter() - t0
    if token_reducer is not None:
        names = reduced[0].keys() if reduced else ()
        summary.reduced = {k: np.concatenate([r[k] for r in reduced]) for k in names}
    return summary


TokenReducer = Callable[[int, int, list, list], dict]


def _reduce_block(blk: _Block, reducer: TokenReducer) -> dict[str, np.ndarray]:
    """A token reducer's columns for one block: its pieces joined per row, in row order."""
    nrows = blk.hi - blk.lo
    counts = np.bincount(blk.seq, minlength=nrows)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])

    def rows(parts):
        return [np.concatenate([parts[p] for p in range(first[r], first[r] + counts[r])])
                if counts[r] != 1 else parts[first[r]] for r in range(nrows)]

    out = reducer(blk.lo, blk.hi, rows(blk.token_ids), rows(blk.token_logp))
    bad = [k for k, v in out.items() if np.shape(v) != (nrows,)]
    if bad:
        raise ValueError(f"token reducer column {bad[0]!r} has shape {np.shape(out[bad[0]])}, not ({nrows},)")
    blk.token_ids = blk.token_logp = None
    return {k: np.asarray(v) for k, v in out.items()}

