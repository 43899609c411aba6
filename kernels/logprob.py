"""Per-token log-likelihood statistics fused with the model's own predictive distribution.

For every position with logits ``z`` (``[V]``) and observed token ``x`` the kernels return, in
float32 whatever the logits' dtype:

* ``logp``    = log p(x) = z_x - logsumexp(z)                        (natural log)
* ``mu``      = E_{y~p}[log p(y)] = sum_y p(y) log p(y)
* ``sigma``   = sqrt(Var_{y~p}[log p(y)]) = sqrt(sum_y p(y) (log p(y) - mu)^2)
* ``entropy`` = -mu                                                  (nats)
* ``rank``    = #{y : z_y > z_x}  (0 = the most likely token; ties count in the token's favour)
* ``z``       = (logp - mu) / max(sigma, SIGMA_FLOOR)                the Min-K%++ token score

``mu`` and ``sigma`` are the calibration terms of Min-K%++ (Zhang et al., 2024):
``(logp - mu) / sigma``. The statistics are taken over all ``V`` output rows of the model (rows
beyond the tokenizer's vocabulary included), i.e. over the distribution the model defines.

The functions are meant to be called inside the same ``jax.jit`` as the forward pass: every
statistic is a reduction over the vocabulary of an elementwise expression of the logits, which
XLA can fuse with the logits producer, and only per-position results leave the kernel. Where a
backend still materialises full-vocabulary float32 intermediates (XLA:CPU does), ``chunk`` bounds
them by mapping over blocks of positions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

# Smallest sigma used in Min-K%++ z-scores: a (near) one-hot distribution has sigma = 0 and a
# log-probability equal to its mean, so the z-score is 0 rather than 0/0.
SIGMA_FLOOR = 1e-6


class TokenStats(NamedTuple):
    """Per-position statistics, float32 arrays of identical shape (``rank`` stored as float32).

    ``z`` is the Min-K%++ score ``(logp - mu) / max(sigma, SIGMA_FLOOR)``, computed from centred
    logits (``z_x - E_p[z]``) rather than as a difference of two nearly equal log-probabilities,
    which keeps it accurate to float32 precision when sigma is small (near-uniform predictions).
    """

    logp: jax.Array
    mu: jax.Array
    sigma: jax.Array
    entropy: jax.Array
    rank: jax.Array
    z: jax.Array


STAT_NAMES = TokenStats._fields


def _stats_rows(logits: jax.Array, targets: jax.Array) -> TokenStats:
    z = logits.astype(jnp.float32)
    lse = jax.nn.logsumexp(z, axis=-1, keepdims=True)
    p = jnp.exp(z - lse)
    live = p > 0
    # E_p[z] and the centred logits: log p(y) - mu == z_y - E_p[z] exactly (the lse cancels), so
    # sigma and the z-score are computed without the cancellation of two ~log(V) sized numbers.
    zbar = jnp.sum(jnp.where(live, p * z, 0.0), axis=-1, keepdims=True)
    c = jnp.where(live, z - zbar, 0.0)
    sigma = jnp.sqrt(jnp.sum(p * jnp.square(c), axis=-1))
    mu = (zbar - lse)[..., 0]
    zt = jnp.take_along_axis(z, targets[..., None].astype(jnp.int32), axis=-1)
    logp = (zt - lse)[..., 0]
    rank = jnp.sum(z > zt, axis=-1).astype(jnp.float32)
    zscore = (zt - zbar)[..., 0] / jnp.maximum(sigma, SIGMA_FLOOR)
    return TokenStats(logp, mu, sigma, -mu, rank, zscore)


def token_stats(logits: jax.Array, targets: jax.Array, chunk: int | None = None) -> TokenStats:
    """Statistics of the observed tokens under ``logits``.

    Args:
      logits: ``[..., V]`` any float dtype (upcast to float32 inside).
      targets: int ``[...]`` observed token ids (same leading shape as ``logits``).
      chunk: if given, process the flattened positions in blocks of ``chunk`` rows with
        ``lax.map`` (bounds float32 temporaries for very large vocabularies).

    Returns:
      :class:`TokenStats` of float32 arrays with the shape of ``targets``.
    """
    lead = targets.shape
    if chunk is None or chunk <= 0:
        return _stats_rows(logits, targets)
    v = logits.shape[-1]
    n = 1
    for d in lead:
        n *= d
    z = logits.reshape(n, v)
    t = targets.reshape(n)
    nb = -(-n // chunk)
    pad = nb * chunk - n
    if pad:
        z = jnp.concatenate([z, jnp.zeros((pad, v), z.dtype)], axis=0)
        t = jnp.concatenate([t, jnp.zeros((pad,), t.dtype)], axis=0)
    out = jax.lax.map(lambda a: _stats_rows(a[0], a[1]), (z.reshape(nb, chunk, v), t.reshape(nb, chunk)))
    return TokenStats(*(x.reshape(nb * chunk)[:n].reshape(lead) for x in out))


def causal_token_stats(logits: jax.Array, ids: jax.Array, scored: jax.Array,
                       chunk: int | None = None) -> tuple[TokenStats, jax.Array]:
    """Next-token statistics of a causal LM, aligned to the predicted token.

    Position ``t`` of the outputs describes token ``ids[:, t]`` predicted from ``logits[:, t-1]``;
    position 0 has no prediction and is never valid.

    Args:
      logits: ``[B, L, V]`` logits of a forward pass over ``ids``.
      ids: int ``[B, L]`` input ids.
      scored: bool ``[B, L]`` True for tokens whose log p counts (nucleotide tokens).
      chunk: see :func:`token_stats`.

    Returns:
      ``(stats, valid)``: :class:`TokenStats` ``[B, L]`` (position 0 filled with 0) and bool
      ``valid`` ``[B, L]`` = ``scored`` with position 0 cleared.
    """
    st = token_stats(logits[:, :-1], ids[:, 1:], chunk)
    first = jnp.zeros_like(st.logp[:, :1])
    st = TokenStats(*(jnp.concatenate([first, x], axis=1) for x in st))
    valid = scored.astype(bool) & (jnp.arange(ids.shape[1]) >= 1)[None, :]
    return st, valid


def causal_scores(forward: Callable[[jax.Array, jax.Array], jax.Array], ids: jax.Array,
                  attention_mask: jax.Array, scored: jax.Array,
                  chunk: int | None = None) -> tuple[TokenStats, jax.Array]:
    """One causal forward pass fused with :func:`causal_token_stats` (call inside ``jax.jit``).

    Args:
      forward: ``(ids [B, L], attention_mask [B, L]) -> logits [B, L, V]``.
      ids, attention_mask, scored: ``[B, L]`` batch (right padded).
      chunk: see :func:`token_stats`.
    """
    return causal_token_stats(forward(ids, attention_mask), ids, scored, chunk)
