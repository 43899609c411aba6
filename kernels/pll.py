"""Pseudo-log-likelihood (PLL) of masked language models: exact, strided and random-mask modes.

A masked LM gives no joint likelihood; the PLL of a sequence (Salazar et al., 2020) is

    PLL(x) = sum_t log p(x_t | x with position t replaced by [MASK])

over the scored (nucleotide) positions. The masked copies are built inside ``jax.jit`` from one
batch of token ids and pushed through the model ``copies`` at a time (``lax.scan``), which bounds
the memory of a step to ``B * copies`` sequences whatever the sequence length.

Modes:

* **exact** (:func:`pll_exact`): every position masked once, alone: ``L`` forward passes of one
  copy each per sequence (batched). Exact PLL.
* **strided** (:func:`strided_patterns` + :func:`pll_patterns`): ``k`` copies; copy ``r`` masks
  every scored position ``t`` with ``t mod k == r`` (``t`` = token position, special tokens
  included). Every position is predicted once, but with the other positions of its residue class
  masked as well: an approximation of the PLL from ``k`` passes instead of ``L``; ``k = L`` is
  the exact PLL.
* **random** (:func:`random_patterns` + :func:`pll_patterns`): ``k`` copies; copy ``j`` masks
  ``m = max(1, round(fraction * n))`` of the ``n`` scored positions chosen uniformly without
  replacement (the BERT pre-training corruption, without the 80/10/10 replacement). A position's
  log p (and its mu, sigma, entropy, rank) is the average over the copies that masked it.
  Positions that no copy masked get NaN per-token values and are left out of the means;
  the sequence's PLL estimate is ``n * mean(covered log p)``, the unbiased scaling of the
  covered positions' mean (each position is covered with the same probability).
  The choice of positions depends only on ``(seed, row, piece, copy, position)`` through the
  integer hash :func:`mask_hash`, so it does not depend on the batch, the padding or the device
  count, and can be recomputed with numpy.

Every function returns ``(TokenStats [B, L], valid [B, L])`` with ``valid`` the positions that
received a value. Positions are aligned with the input tokens (no shift, unlike causal LMs).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from glmjax.kernels.logprob import TokenStats, token_stats

Forward = Callable[[jax.Array, jax.Array], jax.Array]


def _steps(total: int, copies: int) -> tuple[int, int]:
    c = max(1, min(int(copies), int(total)))
    return c, -(-int(total) // c)


def pll_exact(forward: Forward, ids: jax.Array, attention_mask: jax.Array, scored: jax.Array,
              mask_id: int, copies: int = 16, chunk: int | None = None) -> tuple[TokenStats, jax.Array]:
    """Exact PLL statistics: each position masked alone (call inside ``jax.jit``).

    Args:
      forward: ``(ids [N, L], attention_mask [N, L]) -> logits [N, L, V]``.
      ids: int ``[B, L]`` token ids.
      attention_mask: bool ``[B, L]``.
      scored: bool ``[B, L]`` positions whose log p counts.
      mask_id: id of the mask token.
      copies: masked copies per sequence and forward pass (``B * copies`` sequences per pass).
      chunk: see :func:`glmjax.kernels.logprob.token_stats`.

    Returns:
      ``(stats, valid)``: :class:`TokenStats` ``[B, L]`` (statistic of position t from the copy
      that masks t) and ``valid = scored``.
    """
    b, n = ids.shape
    c, steps = _steps(n, copies)
    cols = jnp.arange(n)

    def step(carry, start):
        pos = jnp.minimum(start + jnp.arange(c), n - 1)
        onehot = cols[None, :] == pos[:, None]                                   # [C, L]
        x = jnp.where(onehot[None], jnp.asarray(mask_id, ids.dtype), ids[:, None, :])
        am = jnp.broadcast_to(attention_mask[:, None, :], (b, c, n))
        logits = forward(x.reshape(b * c, n), am.reshape(b * c, n))
        logits = logits.reshape(b, c, n, logits.shape[-1])
        at = jnp.take_along_axis(logits, pos[None, :, None, None], axis=2)[:, :, 0]  # [B, C, V]
        return carry, token_stats(at, ids[:, pos], chunk)

    _, st = jax.lax.scan(step, None, jnp.arange(steps) * c)
    st = TokenStats(*(jnp.moveaxis(x, 0, 1).reshape(b, steps * c)[:, :n] for x in st))
    return st, scored.astype(bool)


def pll_patterns(forward: Forward, ids: jax.Array, attention_mask: jax.Array, scored: jax.Array,
                 mask_id: int, patterns: jax.Array, copies: int = 8,
                 chunk: int | None = None) -> tuple[TokenStats, jax.Array]:
    """PLL statistics from explicit mask patterns, averaged over the copies covering a position.

    Args:
      forward, ids, attention_mask, scored, mask_id, chunk: as in :func:`pll_exact`.
      patterns: bool ``[B, M, L]``; copy ``m`` of row ``b`` replaces positions
        ``patterns[b, m]`` with ``mask_id`` and contributes the statistics of those positions.
      copies: copies per forward pass (``B * copies`` sequences per pass).

    Returns:
      ``(stats, valid)``: averaged :class:`TokenStats` ``[B, L]`` (NaN where no copy masked the
      position) and ``valid = scored & covered``.
    """
    b, m, n = patterns.shape
    c, steps = _steps(m, copies)
    pad = steps * c - m
    if pad:
        patterns = jnp.concatenate([patterns, jnp.zeros((b, pad, n), bool)], axis=1)
    pats = jnp.moveaxis(patterns.reshape(b, steps, c, n), 1, 0)                  # [S, B, C, L]
    targets = jnp.broadcast_to(ids[:, None, :], (b, c, n))

    def step(acc, pat):
        x = jnp.where(pat, jnp.asarray(mask_id, ids.dtype), ids[:, None, :])
        am = jnp.broadcast_to(attention_mask[:, None, :], (b, c, n))
        logits = forward(x.reshape(b * c, n), am.reshape(b * c, n))
        st = token_stats(logits.reshape(b, c, n, logits.shape[-1]), targets, chunk)
        sums = tuple(a + jnp.sum(jnp.where(pat, s, 0.0), axis=1) for a, s in zip(acc[0], st, strict=True))
        return (sums, acc[1] + jnp.sum(pat, axis=1)), None

    zeros = jnp.zeros((b, n), jnp.float32)
    init = (tuple(zeros for _ in TokenStats._fields), jnp.zeros((b, n), jnp.int32))
    (sums, count), _ = jax.lax.scan(step, init, pats)
    covered = count > 0
    denom = jnp.where(covered, count, 1).astype(jnp.float32)
    st = TokenStats(*(jnp.where(covered, s / denom, jnp.nan) for s in sums))
    return st, scored.astype(bool) & covered


def strided_patterns(scored: jax.Array, k: int) -> jax.Array:
    """Strided masks: bool ``[B, k, L]``, copy ``r`` masks scored positions ``t`` with ``t % k == r``."""
    n = scored.shape[-1]
    res = (jnp.arange(n)[None, :] % k) == jnp.arange(k)[:, None]                 # [k, L]
    return res[None] & scored.astype(bool)[:, None, :]


def _lowbias32(x: Any, xp: Any) -> Any:
    # "lowbias32" integer finaliser (C. Wellons): a fast, well-mixed uint32 -> uint32 hash.
    x = x ^ (x >> 16)
    x = x * xp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * xp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def mask_hash(seed: Any, row: Any, piece: Any, copy: Any, pos: Any, xp: Any = jnp) -> Any:
    """uint32 hash of ``(seed, row, piece, copy, position)`` (broadcasting; numpy or jax.numpy).

    The random PLL masks rank the scored positions of a copy by this hash (ties by position) and
    mask the ``m`` lowest.
    """
    def u32(v):
        return xp.asarray(v).astype(xp.uint32)

    h = _lowbias32(u32(pos) ^ xp.uint32(0x9E3779B9), xp)
    h = _lowbias32(h ^ u32(copy), xp)
    h = _lowbias32(h ^ u32(piece) * xp.uint32(0x85EBCA6B), xp)
    h = _lowbias32(h ^ u32(row), xp)
    return _lowbias32(h ^ u32(seed) * xp.uint32(0xC2B2AE35), xp)


def masks_per_copy(n_scored: Any, fraction: float, xp: Any = jnp) -> Any:
    """``m = max(1, floor(fraction * n + 0.5))`` positions masked per copy (0 when ``n`` is 0)."""
    m = xp.floor(xp.asarray(n_scored).astype(xp.float32) * np.float32(fraction) + np.float32(0.5))
    m = xp.maximum(m.astype(xp.int32), 1)
    return xp.where(xp.asarray(n_scored) > 0, m, 0)


def random_patterns(scored: jax.Array, rows: jax.Array, pieces: jax.Array, k: int, fraction: float,
                    seed: int) -> jax.Array:
    """Random 15%-style masks, bool ``[B, k, L]`` (see the module docstring).

    Args:
      scored: bool ``[B, L]``.
      rows: int ``[B]`` input row index of each sequence (part of the hash).
      pieces: int ``[B]`` window index within the row (0 without windows).
      k: number of copies.
      fraction: fraction of scored positions masked per copy.
      seed: integer seed.
    """
    b, n = scored.shape
    sc = scored.astype(bool)
    h = mask_hash(seed, rows[:, None, None], pieces[:, None, None], jnp.arange(k)[None, :, None],
                  jnp.arange(n)[None, None, :])                                 # [B, k, L]
    # Lexicographic order (unscored last, then hash, then position): ties are broken exactly.
    unscored = jnp.broadcast_to(~sc[:, None, :], h.shape).astype(jnp.uint32)
    pos = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), h.shape)
    order = jax.lax.sort((unscored, h, pos), dimension=-1, num_keys=3)[2]
    rank = jnp.argsort(order, axis=-1)
    m = masks_per_copy(jnp.sum(sc, axis=-1), fraction)                          # [B]
    return (rank < m[:, None, None]) & sc[:, None, :]
