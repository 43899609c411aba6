"""Shared plumbing of canary extraction and exact exposure: base tokens, prefixes, candidate codes
(the decoding steps themselves are :class:`glmjax.models.decoding.CausalDecoder`).

* :func:`base_token_ids`: the token ids of A C G T for a one-token-per-base tokenizer (causal
  families decode and enumerate one nucleotide per step).
* :func:`causal_prefix_ids`: the token ids a causal model is conditioned on for a prefix: the
  tokenizer's leading specials (``[BOS]``) and the prefix bases, without trailing specials
  (HyenaDNA's ``[SEP]`` marks the end of a finished sequence, not a prefix).
* :func:`token_strings`: the nucleotide string of every token id (masked families' constrained
  filling), from the tokenizer's vocabulary.
"""

from __future__ import annotations

import numpy as np

from glmjax import alphabet
from glmjax.errors import CanaryError, ConfigError
from glmjax.tokenizers import Tokenizer

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


def covering_tokens(tokenizer: Tokenizer, prefix: np.ndarray, body: np.ndarray):
    """Encode ``prefix + body`` and find the tokens that cover at least one nucleotide of
    ``body``: ``(positions int [m], Encoded, nucleotides per token int64 [T], first nucleotide of
    each token int64 [T])``."""
    enc = tokenizer.encode_codes(np.concatenate([prefix, body]).astype(np.uint8))
    nts = enc.nucleotides.astype(np.int64)
    end = np.cumsum(nts)
    start = end - nts
    p = prefix.shape[0]
    pos = np.flatnonzero((nts > 0) & (end > p) & (start < p + body.shape[0]))
    return pos, enc, nts, start


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


def token_strings(tokenizer: Tokenizer) -> list[str | None]:
    """For every token id below ``tokenizer.vocab_size``: its nucleotide string if it consists of
    A/C/G/T only, else None (specials, ``N``, unknown); see
    :meth:`glmjax.tokenizers.Tokenizer.token_strings`."""
    return tokenizer.token_strings()
