"""Candidate-trie expansion for exact exposure: one batched incremental decoding step per level,
for many canaries at once.

The 4^k candidate secrets of a canary form a complete 4-ary trie below the canary's prefix. A node
at depth ``d`` is a string of ``d`` bases; its children append one base. For a causal LM the
log-probability of a candidate is the sum, along its path, of ``log p(base | parent)``, and the
distribution ``p(. | node)`` needs the decoding state after the node's bases. Expanding a level
therefore costs one decoding step per *child*:

* gather the parents' row states by index (``x[:, parent_idx]`` on every leaf of the state pytree),
* feed each child its base token (``step``),
* keep the child's cumulative log p and its next-base log-distribution.

The last level needs no step: a leaf's log p comes from its parent's distribution
(:func:`leaf_scores`), and :func:`expand_to_leaves` fuses the second-to-last expansion with the
leaves so that the final states are never written out. Enumerating depth ``k`` thus costs
``(4^k - 4) / 3`` single-token steps instead of ``4^k`` full forward passes.

Every array has a leading canary axis ``C``: the tries of ``C`` canaries with the same secret length
(and prefix token length) have the same shape and are walked in the same calls. ``shared`` is what
the decoding step reads for every node of a canary and never copies (the prefix's keys/values or
its long-convolution output, see :mod:`glmjax.models.decoding`); a row state holds only a node's own
suffix, so the per-child gather moves at most ``k`` tokens of state.

Node order: children of parent ``i`` are ``4 i + b`` with the base index ``b`` (A=0 C=1 G=2 T=3),
so a level's array index is the base-4 code of the node's string, first base most significant,
and a contiguous block of parents maps to a contiguous block of children.

Everything here is a pure function of arrays; ``step(params, shared, state, tokens int32 [C, N]) ->
(logits [C, N, V], state)`` is the model's shared-prefix decoding step. Log-probabilities are
taken over all ``V`` output rows (the model's distribution), in float32, exactly like the
full-sequence scoring kernels.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

Step = Callable[[Any, Any, Any, jax.Array], tuple[jax.Array, Any]]


def base_log_probs(logits: jax.Array, base_ids: jax.Array) -> jax.Array:
    """float32 ``[..., 4]`` log p of the four base tokens under ``logits [..., V]`` (log-softmax over
    all ``V`` rows); ``base_ids`` int32 ``[4]`` are the token ids of A C G T."""
    lp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return jnp.take(lp, base_ids, axis=-1)


def _children(state: Any, cum: jax.Array, logp4: jax.Array, base_ids: jax.Array, start: jax.Array,
              size: int) -> tuple[Any, jax.Array, jax.Array]:
    """Gathered row states, tokens ``[C, 4 size]`` and cumulative log p of the ``4 * size``
    children of parents ``start .. start + size - 1`` of every canary."""
    c = cum.shape[0]
    parent = start + jnp.repeat(jnp.arange(size, dtype=jnp.int32), 4)
    child_state = jax.tree.map(lambda x: jnp.take(x, parent, axis=1), state)
    tokens = jnp.broadcast_to(jnp.tile(base_ids.astype(jnp.int32), size), (c, 4 * size))
    blk_cum = jax.lax.dynamic_slice_in_dim(cum, start, size, axis=1)
    blk_lp = jax.lax.dynamic_slice_in_dim(logp4, start, size, axis=1)
    child_cum = (blk_cum[:, :, None] + blk_lp).reshape(c, 4 * size)
    return child_state, tokens, child_cum


def expand_level(step: Step, params: Any, shared: Any, state: Any, cum: jax.Array, logp4: jax.Array,
                 base_ids: jax.Array, start: jax.Array, size: int) -> tuple[Any, jax.Array, jax.Array]:
    """Expand parents ``start .. start + size - 1`` of a level into their ``4 * size`` children,
    for every canary.

    Args:
      step: shared-prefix decoding step ``(params, shared, state, tokens [C, N]) -> (logits
        [C, N, V], state)``.
      params: model parameters passed to ``step``.
      shared: per-canary state read by every node (passed through to ``step``).
      state: row-state pytree of the level, ``[C, n, ...]`` on every leaf.
      cum: float32 ``[C, n]`` cumulative log p of each parent node given its canary's prefix.
      logp4: float32 ``[C, n, 4]`` log p of each base after each parent.
      base_ids: int32 ``[4]`` token ids of A C G T.
      start: int32 scalar, first parent of the block (``start + size <= n``).
      size: static number of parents in the block.

    Returns:
      ``(child_state, child_cum float32 [C, 4 size], child_logp4 float32 [C, 4 size, 4])``;
      child ``4 j + b`` extends parent ``start + j`` by base ``b``.
    """
    child_state, tokens, child_cum = _children(state, cum, logp4, base_ids, start, size)
    logits, child_state = step(params, shared, child_state, tokens)
    return child_state, child_cum, base_log_probs(logits, base_ids)


def expand_to_leaves(step: Step, params: Any, shared: Any, state: Any, cum: jax.Array, logp4: jax.Array,
                     base_ids: jax.Array, start: jax.Array, size: int) -> jax.Array:
    """Expand a block of parents two levels down to leaves: float32 ``[C, 16 size]`` log p of the
    grandchildren ``16 j + 4 b1 + b2`` of parent ``start + j`` (arguments as :func:`expand_level`).

    The children's row states are not returned, so XLA drops their cache writes.
    """
    child_state, tokens, child_cum = _children(state, cum, logp4, base_ids, start, size)
    logits, _ = step(params, shared, child_state, tokens)
    return leaf_scores(child_cum, base_log_probs(logits, base_ids))


def leaf_scores(cum: jax.Array, logp4: jax.Array) -> jax.Array:
    """float32 ``[C, 4 n]`` log p of the children of ``n`` nodes: ``cum[:, i] + logp4[:, i, b]`` at
    ``4 i + b``."""
    return (cum[..., None] + logp4).reshape(*cum.shape[:-1], -1)


def make_expanders(step: Step) -> tuple[Callable, Callable]:
    """Jitted :func:`expand_level` and :func:`expand_to_leaves` for one decoding ``step``.

    Returns ``(level, leaves)``, each called as ``f(params, shared, state, cum, logp4, base_ids,
    start, size)`` with ``size`` static (one compilation per distinct block and canary count).
    """
    level = jax.jit(partial(expand_level, step), static_argnames=("size",))
    leaves = jax.jit(partial(expand_to_leaves, step), static_argnames=("size",))
    return level, leaves


def live_nodes(levels: int, block: int) -> int:
    """Peak number of decoding states alive during a depth-first walk that keeps ``levels`` trie
    levels of ``block`` rows each on its current path, plus the ``block`` children being built."""
    return (levels + 1) * block
