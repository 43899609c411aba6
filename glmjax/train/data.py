"""Training data: a SequenceStore's rows tokenized into fixed-shape arrays.

Audit-scale fine-tuning sets (up to a few hundred thousand windows) fit in host memory as int32
token arrays; one padded length for the whole set keeps the train step compiled once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from glmjax.data.store import SequenceStore
from glmjax.errors import ConfigError
from glmjax.tokenizers import Tokenizer


@dataclass
class TokenizedSet:
    """ids int32 [N, L]; attention bool [N, L] (real tokens); scored bool [N, L] (nucleotide
    tokens: the ones masked-LM training may mask); rows int64 [N] (store row indices)."""

    ids: np.ndarray
    attention: np.ndarray
    scored: np.ndarray
    rows: np.ndarray

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def take(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.ids[idx], self.attention[idx], self.scored[idx]


def tokenize_rows(store: SequenceStore, rows: np.ndarray, tokenizer: Tokenizer, max_len: int | None,
                  length: int | None = None, block: int = 4096) -> TokenizedSet:
    """Tokenize the given store rows into one padded array.

    Args:
      store: the SequenceStore.
      rows: sorted int64 row indices.
      tokenizer: the model's tokenizer (padding side honoured).
      max_len: the model's context length in tokens (None: unlimited).
      length: pad length; default: the longest sequence, rounded up to a multiple of 8.
    """
    rows = np.asarray(rows, np.int64)
    encs = []
    # read in contiguous blocks: sorted rows are mostly dense
    for lo in range(0, rows.shape[0], block):
        chunk = rows[lo:lo + block]
        seqs = store.sequences(int(chunk[0]), int(chunk[-1]) + 1)
        base = int(chunk[0])
        encs.extend(tokenizer.encode_codes(seqs[r - base]) for r in chunk)
    longest = max((e.ids.shape[0] for e in encs), default=1)
    if length is None:
        length = int(-(-longest // 8) * 8)
        if max_len is not None:
            length = min(length, int(max_len))
    if longest > length:
        raise ConfigError(f"a training sequence has {longest} tokens but the model context is {length}; "
                          "window the data into shorter sequences (glmjax data window --length ...)")
    ids, att, sc = tokenizer.pad_batch(encs, length)
    return TokenizedSet(ids, att, sc, rows)


def training_rows(store: SequenceStore, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, validation rows).

    Train rows are the split's members (all rows if the store has no split). Validation rows are a
    seeded ``val_fraction`` of the non-members (they receive no gradient and stay non-members), or
    of all rows held out from training when there is no split.
    """
    n = len(store)
    rng = np.random.default_rng([seed, 0x5EED])
    if store.has_split:
        member = store.member_mask()
        train = np.flatnonzero(member)
        pool = np.flatnonzero(~member)
    else:
        train = np.arange(n)
        pool = np.zeros(0, np.int64)
    k = int(round(val_fraction * pool.shape[0]))
    val = np.sort(rng.choice(pool, size=k, replace=False)) if k else np.zeros(0, np.int64)
    if train.shape[0] == 0:
        raise ConfigError(f"{store.path} has no member rows to train on")
    return train, val
