"""Shared plumbing of canary extraction and exact exposure: base tokens, prefixes, decoding steps.

* :func:`base_token_ids`: the token ids of A C G T for a one-token-per-base tokenizer (causal
  families decode and enumerate one nucleotide per step).
* :func:`causal_prefix_ids`: the token ids a causal model is conditioned on for a prefix: the
  tokenizer's leading specials (``[BOS]``) and the prefix bases, without trailing specials
  (HyenaDNA's ``[SEP]`` marks the end of a finished sequence, not a prefix).
* :class:`CausalDecoder`: the family's ``prefill`` / ``decode_step`` as pure functions of
  ``(params, ...)`` for ``jax.jit`` (split NNX state, ``nnx.merge`` inside), with a step-by-step
  prefill for families that only implement ``init_cache`` + ``decode_step``.
* :func:`token_strings`: the nucleotide string of every token id (masked families' constrained
  filling), from the tokenizer's vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from glmjax import alphabet
from glmjax.errors import CanaryError, ConfigError
from glmjax.tokenizers import BPETokenizer, CharTokenizer, KmerTokenizer, Tokenizer

BASES = "ACGT"


def base_token_ids(tokenizer: Tokenizer) -> np.ndarray:
    """int32 ``[4]`` token ids of the single bases A C G T (``encode_codes`` of each base alone).

    Raises ConfigError when a base is not exactly one token (causal decoding and the candidate
    trie advance one nucleotide per token).
    """
    out = []
    for code in range(4):
        enc = tokenizer.encode_codes(np.array([code], np.uint8))
        ids = enc.ids[enc.scored]
        if ids.shape[0] != 1 or int(enc.nucleotides[enc.scored][0]) != 1:
            raise ConfigError(f"tokenizer {tokenizer.name!r} does not give base {BASES[code]} a token of its own; "
                              "nucleotide-level decoding needs a character tokenizer")
        out.append(int(ids[0]))
    return np.asarray(out, np.int32)


def causal_prefix_ids(tokenizer: Tokenizer, prefix: np.ndarray) -> np.ndarray:
    """int32 ``[T]`` ids conditioning a causal model on ``prefix`` (uint8 codes): the encoded
    prefix up to its last nucleotide token (leading specials kept, trailing specials dropped).

    Raises CanaryError when nothing would be conditioned on (empty prefix and no ``[BOS]``).
    """
    enc = tokenizer.encode_codes(np.asarray(prefix, np.uint8))
    nuc = np.flatnonzero(enc.scored)
    if nuc.shape[0]:
        end = int(nuc[-1]) + 1
    else:
        # no nucleotides: keep the specials that would precede the first base (e.g. [BOS])
        end = int(np.flatnonzero(tokenizer.encode_codes(np.zeros(1, np.uint8)).scored)[0])
    ids = enc.ids[:end].astype(np.int32)
    if ids.shape[0] == 0:
        raise CanaryError(f"an empty prefix gives tokenizer {tokenizer.name!r} nothing to condition on; "
                          "canaries for causal models need a prefix of at least one base")
    return ids


def as_codes(seq: str | np.ndarray) -> np.ndarray:
    """uint8 codes of a DNA string (or a code array, returned as uint8)."""
    if isinstance(seq, str):
        return alphabet.encode(seq)
    return np.asarray(seq, np.uint8)


def codes_to_index(codes: np.ndarray) -> int:
    """Base-4 integer of an A/C/G/T code string, first base most significant (A=0 C=1 G=2 T=3)."""
    codes = np.asarray(codes, np.int64)
    if codes.size and codes.max() > 3:
        raise CanaryError("a secret must consist of A, C, G, T only (no N) to be ranked among candidates")
    idx = 0
    for c in codes.tolist():
        idx = 4 * idx + int(c)
    return idx


def index_to_codes(index: np.ndarray | int, k: int) -> np.ndarray:
    """Inverse of :func:`codes_to_index`: uint8 ``[..., k]`` codes of base-4 indices ``[...]``."""
    idx = np.asarray(index, np.int64)
    shifts = 2 * np.arange(k - 1, -1, -1, dtype=np.int64)
    return ((idx[..., None] >> shifts) & 3).astype(np.uint8)


@dataclass
class CausalDecoder:
    """A causal model's incremental decoding as pure functions (call them inside ``jax.jit``).

    ``prefill(params, ids int32 [B, T], max_len) -> (logits float32 [B, V] after the last prefix
    token, state at position T)`` and ``step(params, state, tokens int32 [B]) -> (logits float32
    [B, V], state)``; ``params`` is the model's split NNX state (:attr:`params`).
    """

    graphdef: Any
    params: Any
    has_prefill: bool

    @classmethod
    def of(cls, model: Any) -> CausalDecoder:
        """The decoder of a loaded causal model (:class:`glmjax.models.LoadedModel`)."""
        if getattr(model, "objective", "causal") != "causal":
            raise ConfigError(f"model family {model.family!r} is a masked LM; incremental decoding needs a "
                              "causal family")
        mod = model.module
        for name in ("init_cache", "decode_step"):
            if not callable(getattr(mod, name, None)):
                raise ConfigError(f"model family {model.family!r} has no {name}(); it cannot decode incrementally")
        graphdef, params = nnx.split(mod)
        return cls(graphdef, params, callable(getattr(mod, "prefill", None)))

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


def state_bytes_per_row(state: Any) -> int:
    """Bytes of one row of a decoding-state pytree (batch on axis 0 of every leaf)."""
    total = 0
    for leaf in jax.tree_util.tree_leaves(state):
        shape = leaf.shape
        per = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        total += per * jnp.dtype(leaf.dtype).itemsize
    return total


def token_strings(tokenizer: Tokenizer) -> list[str | None]:
    """For every token id below ``tokenizer.vocab_size``: its nucleotide string if it consists of
    A/C/G/T only, else None (specials, ``N``, unknown)."""
    n = int(tokenizer.vocab_size)
    out: list[str | None] = [None] * n
    if isinstance(tokenizer, CharTokenizer):
        for base, tid in zip(BASES, tokenizer.base_ids[:4], strict=True):
            if tid < n:
                out[tid] = base
        return out
    if isinstance(tokenizer, KmerTokenizer):
        vocab = tokenizer.vocab()
    elif isinstance(tokenizer, BPETokenizer):
        # the tokenizers library object is the only holder of the BPE vocabulary
        inv = {v: t for t, v in tokenizer._tok.get_vocab().items()}
        vocab = [inv.get(i, "") for i in range(n)]
    else:
        raise ConfigError(f"tokenizer {type(tokenizer).__name__} exposes no vocabulary for constrained filling")
    specials = tokenizer.special_ids
    for i, s in enumerate(vocab[:n]):
        if i not in specials and s and set(s) <= set(BASES):
            out[i] = s
    return out
