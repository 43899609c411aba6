"""ALiBi (attention with linear biases) for bidirectional encoders such as DNABERT-2.

Each head ``h`` adds ``-slope_h * |i - j|`` to the attention logit of query ``i`` and key ``j``
(symmetric, so it works for masked LMs), instead of position embeddings. The slopes follow the
schedule of Press et al. as implemented in MosaicBERT / DNABERT-2: a geometric sequence for a
power-of-two head count, and for other counts the sequence of the nearest lower power of two
followed by every other slope of the next power of two.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np


def _power_of_two_slopes(n: int) -> list[float]:
    start = 2.0 ** (-(2.0 ** -(math.log2(n) - 3)))
    # a running product, as the reference computes it, so float64 values agree to the last bit
    return [start * start**i for i in range(n)]


def alibi_slopes(num_heads: int) -> np.ndarray:
    """Per-head ALiBi slopes, float64 numpy ``[num_heads]`` (largest first).

    ``num_heads`` a power of two: ``start = 2 ** (-2 ** -(log2(n) - 3))`` and slope ``k`` is
    ``start ** (k + 1)``; otherwise, with ``p`` the largest power of two below ``n``: the slopes
    of ``p`` followed by ``slopes(2p)[0::2][: n - p]``.
    """
    if num_heads < 1:
        raise ValueError(f"num_heads must be positive, got {num_heads}")
    if math.log2(num_heads).is_integer():
        return np.asarray(_power_of_two_slopes(num_heads), np.float64)
    p = 2 ** math.floor(math.log2(num_heads))
    extra = alibi_slopes(2 * p)[0::2][: num_heads - p]
    return np.concatenate([np.asarray(_power_of_two_slopes(p), np.float64), extra])


def alibi_bias(num_heads: int, q_len: int, k_len: int) -> jax.Array:
    """Additive attention bias ``[1, num_heads, q_len, k_len]`` float32: ``-slope_h * |i - j|``.

    Query ``i`` and key ``j`` are both counted from position 0. Built from ``iota`` so that under
    ``jax.jit`` XLA can fuse it into the attention logits rather than materialising a constant.
    """
    slopes = jnp.asarray(alibi_slopes(num_heads), jnp.float32)
    i = jnp.arange(q_len, dtype=jnp.float32)[:, None]
    j = jnp.arange(k_len, dtype=jnp.float32)[None, :]
    dist = jnp.abs(i - j)
    return (-slopes[:, None, None] * dist[None, :, :])[None]
