"""Sequence-level reductions of per-token statistics: sums, means, Min-K% and Min-K%++.

Definitions (``n`` = number of valid tokens of a sequence, ``p`` in percent):

* ``sum_logp``  = sum of log p over valid tokens; ``mean_logp`` = sum_logp / n;
  perplexity = exp(-mean_logp) (derived, not stored).
* ``mean_entropy``, ``mean_rank``: means over valid tokens.
* ``mink_<p>``  (Min-K%, Shi et al. 2024) = mean of the ``k = max(1, floor(n * p / 100))``
  lowest log p values.
* ``minkpp_<p>`` (Min-K%++, Zhang et al. 2024) = the same mean over the per-token scores
  ``(log p - mu) / max(sigma, SIGMA_FLOOR)``.

Sequences without a valid token get ``n_tokens`` 0, ``sum_logp`` 0 and NaN for every mean. The same code runs
on device (``xp=jax.numpy``, float32) and on the host (``xp=numpy``, any float dtype), so both
paths apply identical formulas.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from glmjax.kernels.logprob import SIGMA_FLOOR

MINK_PERCENTS = (5, 10, 20, 30, 40, 50)


def row_stat_names(percents: tuple[int, ...] = MINK_PERCENTS) -> tuple[str, ...]:
    """Names of the per-sequence statistics returned by :func:`sequence_reductions`, in order."""
    return ("n_tokens", "sum_logp", "mean_logp", "mean_entropy", "mean_rank",
            *(f"mink_{p}" for p in percents), *(f"minkpp_{p}" for p in percents))


def lowest_mean(values: Any, valid: Any, percents: tuple[int, ...], xp: Any = jnp) -> Any:
    """Mean of the lowest ``max(1, floor(n*p/100))`` valid values of each row, for each ``p``.

    Args:
      values: float ``[..., B, L]`` (leading axes are independent sets of values).
      valid: bool ``[B, L]``.
      percents: integer percentages.
      xp: ``jax.numpy`` or ``numpy``.

    Returns:
      ``[len(percents), ..., B]`` (NaN for rows without valid values).
    """
    inf = xp.asarray(xp.inf, dtype=values.dtype)
    srt = xp.sort(xp.where(valid, values, inf), axis=-1)
    n = xp.sum(valid, axis=-1).astype(xp.int32)                                   # [B]
    k = xp.maximum((n[None, :] * xp.asarray(percents, xp.int32)[:, None]) // 100, 1)  # [P, B]
    k = k.reshape(k.shape[:1] + (1,) * (srt.ndim - 2) + k.shape[1:])              # [P, ..., B]
    col = xp.arange(values.shape[-1])
    s = xp.sum(xp.where(col < k[..., None], srt[None], 0), axis=-1)
    return xp.where(n > 0, s / k.astype(values.dtype), xp.nan)


def sequence_reductions(logp: Any, mu: Any, sigma: Any, entropy: Any, rank: Any, z: Any, valid: Any,
                        percents: tuple[int, ...] = MINK_PERCENTS, xp: Any = jnp) -> dict[str, Any]:
    """Per-sequence statistics of ``[B, L]`` per-token arrays over the ``valid`` positions.

    ``z`` is the Min-K%++ token score (see :class:`glmjax.kernels.logprob.TokenStats`); pass None
    to compute it as ``(logp - mu) / max(sigma, SIGMA_FLOOR)``.

    Returns:
      dict name -> ``[B]`` array with the names of :func:`row_stat_names` (``n_tokens`` as a float
      of the same dtype as ``logp``).
    """
    valid = valid.astype(bool)
    dt = logp.dtype
    n = xp.sum(valid, axis=-1).astype(dt)
    safe_n = xp.where(n > 0, n, 1)
    sums = xp.sum(xp.where(valid, xp.stack([logp, entropy, rank]), 0), axis=-1).astype(dt)   # [3, B]
    means = xp.where(n > 0, sums / safe_n, xp.asarray(xp.nan, dt))
    out = {"n_tokens": n, "sum_logp": sums[0], "mean_logp": means[0], "mean_entropy": means[1],
           "mean_rank": means[2]}
    if z is None:
        z = (logp - mu) / xp.maximum(sigma, xp.asarray(SIGMA_FLOOR, dt))
    low = lowest_mean(xp.stack([logp, z]), valid, percents, xp)                  # [P, 2, B]
    for i, p in enumerate(percents):
        out[f"mink_{p}"] = low[i, 0]
    for i, p in enumerate(percents):
        out[f"minkpp_{p}"] = low[i, 1]
    return out
