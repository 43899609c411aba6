"""Host side of scoring: vectorised tokenization, windows, length buckets and padded batches.

Sequences are tokenized a block at a time into one flat array (:class:`TokenBlock`), grouped by
token length into a small fixed set of **buckets** (so that ``jax.jit`` compiles a few shapes, not
one per batch) and packed into right-padded batches.

Bucket lengths (:func:`bucket_length`): the smallest ``m * 2**e`` (``m`` in 8..15) that holds the
sequence, i.e. eight buckets per octave (at most 12.5 % padding beyond 64 tokens), at least 16,
rounded to a multiple of 8 and clipped to the model's context.

Padding policy (:func:`padding_policy`), chosen so that a sequence's scores never depend on its
batch companions, its bucket or the batch size, and equal the reference on unpadded input:

* ``"right"``: causal models (pads come after every scored position, so causality alone keeps
  them out of every prediction, whatever the family's padding side) and masked LMs with an
  attention mask (pads are masked keys);
* ``"exact"``: bidirectional models without an attention mask (Caduceus): any pad would be seen
  as input, so sequences are grouped by *exact* token length and batches carry no padding at all.
  Windowed data has one or two distinct lengths, so this compiles few shapes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from glmjax.tokenizers import TokenBlock, Tokenizer, segment_positions


def padding_policy(spec) -> str:
    """``"right"`` or ``"exact"`` for a family (its :class:`~glmjax.models.base.FamilySpec`;
    see the module docstring): exact-length batches only for a masked LM without an attention mask."""
    return "exact" if (spec.objective == "masked" and not spec.attention_mask) else "right"


def bucket_length(n: int, max_len: int | None = None, min_len: int = 16) -> int:
    """Padded length for a sequence of ``n`` tokens: eight buckets per octave, multiple of 8."""
    n = max(int(n), min_len)
    e = max(n.bit_length() - 4, 0)
    q = 1 << e
    b = -(-n // q) * q
    b = -(-b // 8) * 8
    if max_len is not None and b > max_len >= n:
        b = int(max_len)
    return b


def tokenize_block(tokenizer: Tokenizer, codes: np.ndarray, offsets: np.ndarray) -> TokenBlock:
    """Tokenize pieces given as one flat code array and ``offsets`` (``[P + 1]``, absolute): the
    tokenizer's own :meth:`~glmjax.tokenizers.Tokenizer.encode_block` (vectorised for character
    and k-mer tokenizers, the Rust batch encoder for BPE)."""
    return tokenizer.encode_block(codes, np.asarray(offsets, np.int64))


def window_pieces(lengths: np.ndarray, window: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut sequences into consecutive non-overlapping windows of ``window`` nucleotides.

    Sequences not longer than ``window`` (or all, when ``window`` is None) stay whole.

    Returns:
      ``(seq_index, piece_index, start)`` int64 arrays, one entry per piece, in sequence order:
      the piece covers nucleotides ``[start, min(start + window, length))`` of its sequence.
    """
    lengths = np.asarray(lengths, np.int64)
    if window is None:
        idx = np.arange(lengths.shape[0], dtype=np.int64)
        return idx, np.zeros_like(idx), np.zeros_like(idx)
    counts = np.maximum(1, -(-lengths // int(window)))
    seq = np.repeat(np.arange(lengths.shape[0], dtype=np.int64), counts)
    piece = segment_positions(counts)
    return seq, piece, piece * int(window)


@dataclass
class Batch:
    """One padded batch, numpy, ready to be put on devices.

    ``pieces`` are indices into the block's pieces (``-1`` for filler rows that only pad the
    batch to its fixed size; fillers repeat the first row and their results are dropped).
    """

    pieces: np.ndarray
    ids: np.ndarray
    attention_mask: np.ndarray
    scored: np.ndarray
    rows: np.ndarray
    piece_index: np.ndarray

    @property
    def length(self) -> int:
        return int(self.ids.shape[1])

    @property
    def num_real(self) -> int:
        return int((self.pieces >= 0).sum())


def rows_per_batch(length: int, batch_tokens: int, num_devices: int, copies: int = 1,
                   max_rows: int | None = None) -> int:
    """Sequences per batch for a bucket: ``batch_tokens`` tokens per device and forward pass
    (``copies`` masked copies of each sequence count as ``copies`` sequences), a multiple of
    ``num_devices``. ``max_rows`` (the size of a small input) caps it, rounded up to a power of
    two per device so that inputs of similar sizes share compiled shapes."""
    per_dev = max(1, int(batch_tokens) // (int(length) * max(1, int(copies))))
    if max_rows is not None:
        cap = max(1, -(-int(max_rows) // num_devices))
        per_dev = min(per_dev, 1 << (cap - 1).bit_length())
    return per_dev * num_devices


def plan_batches(lengths: np.ndarray, policy: str, max_len: int | None, batch_rows) -> list[tuple[int, np.ndarray]]:
    """Group pieces into batches: ``[(padded_length, piece_indices), ...]``.

    Args:
      lengths: token length of every piece.
      policy: ``"right"`` (bucketed) or ``"exact"`` (group by exact length).
      max_len: model context (bucket lengths are clipped to it).
      batch_rows: ``padded_length -> rows per batch``.

    Within a bucket pieces keep their input order; batches are ordered by bucket length.
    """
    lengths = np.asarray(lengths, np.int64)
    if lengths.size == 0:
        return []
    if policy == "exact":
        buckets = np.maximum(lengths, 1)
    else:
        uniq, inv = np.unique(lengths, return_inverse=True)
        buckets = np.array([bucket_length(int(u), max_len) for u in uniq], np.int64)[inv.reshape(-1)]
    order = np.argsort(buckets, kind="stable")
    sb = buckets[order]
    cuts = np.flatnonzero(np.diff(sb)) + 1
    out = []
    for grp in np.split(order, cuts):
        blen = int(buckets[grp[0]])
        b = int(batch_rows(blen))
        for lo in range(0, grp.shape[0], b):
            out.append((blen, grp[lo:lo + b]))
    return out


def assemble(block: TokenBlock, pieces: np.ndarray, length: int, size: int, pad_id: int,
             rows: np.ndarray, piece_index: np.ndarray) -> Batch:
    """Right-pad the given pieces of ``block`` into a :class:`Batch` of ``size`` rows x ``length``.

    Args:
      block: the tokenized pieces.
      pieces: indices of the pieces in this batch (at most ``size``).
      length: padded length (every piece must fit).
      size: rows of the batch; missing rows are fillers (copies of the first piece).
      pad_id: token id of padding.
      rows, piece_index: per-piece input row and window index (for the random PLL masks).
    """
    real = np.asarray(pieces, np.int64)
    fill = np.concatenate([real, np.full(size - real.shape[0], real[0], np.int64)])
    lens = block.lengths[fill]
    if int(lens.max(initial=0)) > length:
        raise ValueError(f"a piece of {int(lens.max())} tokens does not fit length {length}")
    # one 2-D gather per array (clipped at the block's end), then the padding is written over
    col = np.arange(length, dtype=np.int64)
    att = col[None, :] < lens[:, None]
    src = np.minimum(block.offsets[fill][:, None] + col[None, :], max(block.ids.shape[0] - 1, 0))
    if block.ids.shape[0]:
        ids = block.ids[src]
        ids[~att] = pad_id
        sc = block.scored[src] & att
    else:
        ids = np.full((size, length), pad_id, np.int32)
        sc = np.zeros((size, length), bool)
    tag = np.concatenate([real, np.full(size - real.shape[0], -1, np.int64)])
    return Batch(tag, ids.astype(np.int32, copy=False), att, sc, np.asarray(rows, np.int64)[fill].astype(np.int32),
                 np.asarray(piece_index, np.int64)[fill].astype(np.int32))
