"""Incremental decoding of causal families as pure functions, for ``jax.jit``.

:class:`CausalDecoder` wraps a loaded causal model's decoding methods (split NNX state,
``nnx.merge`` inside each function) in two forms:

* **flat rows** (:meth:`CausalDecoder.prefill`, :meth:`CausalDecoder.step`): every row carries its
  own whole decoding state (KV cache of prefix + decoded tokens, Hyena history, Mamba state);
* **shared prefix** (:meth:`CausalDecoder.prefix`, :meth:`CausalDecoder.suffix_step`): rows are
  laid out ``[C, M]``, ``M`` continuations of each of ``C`` prefixes. What depends on the prefix
  alone (its keys/values, or its contribution to a long convolution) is computed once per prefix
  and read by all ``M`` rows; a row holds only the state of its own suffix (at most
  ``suffix_len`` tokens). Candidate-trie walks (exact exposure) and beam search copy row states
  when they branch, so a row state that excludes the prefix is what makes them cheap.

A family opts into prefix sharing by giving its module ``prefix_state(ids [C, T], suffix_len) ->
(logits [C, T, V], shared, state)`` (state leaves with the prefix axis ``C`` first) and
``suffix_step(shared, state [C, M, ...], tokens [C, M]) -> (logits [C, M, V], state)``. Families
without them (a Mamba state is already of fixed size) run the shared-prefix interface on their flat
step: the prefix's state is the row state, and ``shared`` is empty.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from glmjax.errors import ConfigError


@dataclass
class CausalDecoder:
    """A causal model's incremental decoding as pure functions (call them inside ``jax.jit``).

    ``params`` is the model's split NNX state; every method takes it as its first argument so that
    one compilation serves any parameter values of the same architecture.
    ``shares_prefix``: the shared-prefix methods use the family's own prefix sharing (False: they
    fall back on flat rows that carry the prefix in every row state).
    """

    graphdef: Any
    params: Any
    has_prefill: bool
    shares_prefix: bool

    @classmethod
    def of(cls, model: Any, share_prefix: bool = True) -> CausalDecoder:
        """The decoder of a loaded causal model (:class:`glmjax.models.LoadedModel`);
        ``share_prefix=False`` forces the flat-row (copied-state) path."""
        if getattr(model, "objective", "causal") != "causal":
            raise ConfigError(f"model family {model.family!r} is a masked LM; incremental decoding needs a "
                              "causal family")
        mod = model.module
        for name in ("init_cache", "decode_step"):
            if not callable(getattr(mod, name, None)):
                raise ConfigError(f"model family {model.family!r} has no {name}(); it cannot decode incrementally")
        graphdef, params = nnx.split(mod)
        native = all(callable(getattr(mod, n, None)) for n in ("prefix_state", "suffix_step"))
        return cls(graphdef, params, callable(getattr(mod, "prefill", None)), bool(share_prefix and native))

    @property
    def key(self) -> tuple:
        """Identifies the compiled functions of this decoder (architecture and sharing mode)."""
        return (self.graphdef, self.shares_prefix)

    # -- flat rows -------------------------------------------------------------------------------

    def step(self, params: Any, state: Any, tokens: jax.Array) -> tuple[jax.Array, Any]:
        """One decoding step for every row: logits float32 ``[B, V]`` and the advanced state."""
        m = nnx.merge(self.graphdef, params)
        logits, state = m.decode_step(state, tokens.astype(jnp.int32))
        return logits.astype(jnp.float32), state

    def prefill(self, params: Any, ids: jax.Array, max_len: int) -> tuple[jax.Array, Any]:
        """Condition on prefixes ``ids [B, T]`` (no padding): last-position logits ``[B, V]`` and
        the state at position ``T`` with room for ``max_len`` tokens in all."""
        m = nnx.merge(self.graphdef, params)
        ids = ids.astype(jnp.int32)
        if self.has_prefill:
            logits, state = m.prefill(ids, max_len)
            return logits[:, -1].astype(jnp.float32), state
        state = m.init_cache(ids.shape[0], max_len)

        def body(st, tok):
            lg, st = m.decode_step(st, tok)
            return st, lg.astype(jnp.float32)

        state, logits = jax.lax.scan(body, state, ids.T)
        return logits[-1], state

    # -- shared prefix ---------------------------------------------------------------------------

    def prefix(self, params: Any, ids: jax.Array, suffix_len: int) -> tuple[jax.Array, Any, Any]:
        """Condition on ``C`` prefixes ``ids [C, T]`` (no padding) with room for ``suffix_len``
        more tokens each.

        Returns ``(logits float32 [C, V] after the last prefix token, shared, state)``: ``shared``
        is read by every continuation of a prefix (None when nothing is shared); ``state`` is one
        row state per prefix, its leaves shaped ``[C, 1, ...]`` (the continuation axis ``M = 1``),
        ready to be gathered along axis 1.
        """
        ids = ids.astype(jnp.int32)
        if self.shares_prefix:
            m = nnx.merge(self.graphdef, params)
            logits, shared, state = m.prefix_state(ids, int(suffix_len))
            logits = logits[:, -1].astype(jnp.float32)
        else:
            logits, state = self.prefill(params, ids, int(ids.shape[1]) + int(suffix_len))
            shared = None
        return logits, shared, jax.tree.map(lambda x: x[:, None], state)

    def suffix_step(self, params: Any, shared: Any, state: Any, tokens: jax.Array) -> tuple[jax.Array, Any]:
        """Feed one token to each of ``C x M`` rows (``tokens int [C, M]``, row ``(c, m)`` continues
        prefix ``c``): logits float32 ``[C, M, V]`` and the advanced row states ``[C, M, ...]``."""
        c, mm = tokens.shape
        if self.shares_prefix:
            m = nnx.merge(self.graphdef, params)
            logits, state = m.suffix_step(shared, state, tokens.astype(jnp.int32))
            return logits.astype(jnp.float32), state
        flat = jax.tree.map(lambda x: x.reshape(c * mm, *x.shape[2:]), state)
        logits, flat = self.step(params, flat, tokens.reshape(c * mm))
        return logits.reshape(c, mm, -1), jax.tree.map(lambda x: x.reshape(c, mm, *x.shape[1:]), flat)


def state_bytes_per_row(state: Any, row_axes: int = 1) -> int:
    """Bytes of one row of a decoding-state pytree (rows on the first ``row_axes`` axes of every
    leaf; leaves with fewer axes count whole)."""
    total = 0
    for leaf in jax.tree_util.tree_leaves(state):
        shape = leaf.shape
        per = int(np.prod(shape[row_axes:])) if len(shape) > row_axes else 1
        total += per * jnp.dtype(leaf.dtype).itemsize
    return total


def tree_bytes(tree: Any) -> int:
    """Bytes of every array leaf of a pytree (0 for None)."""
    return sum(int(np.prod(x.shape)) * jnp.dtype(x.dtype).itemsize for x in jax.tree_util.tree_leaves(tree))
