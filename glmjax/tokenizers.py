"""Tokenizers of the supported model families, all working from nucleotide codes.

Every tokenizer turns a uint8 code array (A C G T N = 0..4, see :mod:`glmjax.alphabet`) or a DNA
string into int32 token ids *including* the family's special tokens (``<cls>``, ``[SEP]``...),
and tells which token positions carry nucleotides (the positions that are scored) and how many
nucleotides each token covers (for per-nucleotide normalisation of k-mer and BPE scores).
:meth:`Tokenizer.encode_block` tokenizes many pieces of one flat code array at once
(:class:`TokenBlock`): the one tokenization path of training, scoring and the audit, vectorised
for character and k-mer tokenizers. :meth:`Tokenizer.token_strings` gives every token's
nucleotide string (constrained mask filling, candidate enumeration).

Families: ``CharTokenizer`` (HyenaDNA / Caduceus id conventions, and the plain character
vocabulary of the causal baselines), ``KmerTokenizer`` (Nucleotide Transformer 6-mers, v1 and v2
vocabulary orders) and ``BPETokenizer`` (DNABERT-2, through the ``tokenizers`` library).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from glmjax import alphabet
from glmjax.errors import ConfigError


@dataclass
class Encoded:
    """A tokenized sequence.

    ids: int32 [T] token ids including specials.
    scored: bool [T] True where the token covers nucleotides (positions whose log p is scored).
    nucleotides: int32 [T] number of nucleotides each token covers (0 for specials).
    """

    ids: np.ndarray
    scored: np.ndarray
    nucleotides: np.ndarray


@dataclass
class TokenBlock:
    """Tokenized pieces (sequences or windows of sequences), flattened.

    Attributes:
      ids: int32 ``[T]`` token ids of all pieces, concatenated.
      scored: bool ``[T]``: token covers nucleotides.
      nucleotides: int32 ``[T]``: nucleotides covered by each token.
      offsets: int64 ``[P + 1]``: piece ``i`` is ``ids[offsets[i]:offsets[i + 1]]``.
    """

    ids: np.ndarray
    scored: np.ndarray
    nucleotides: np.ndarray
    offsets: np.ndarray

    def __len__(self) -> int:
        return int(self.offsets.shape[0] - 1)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def piece(self, i: int) -> Encoded:
        sl = slice(int(self.offsets[i]), int(self.offsets[i + 1]))
        return Encoded(self.ids[sl], self.scored[sl], self.nucleotides[sl])


def _from_encoded(encs: Sequence[Encoded]) -> TokenBlock:
    lens = np.fromiter((e.ids.shape[0] for e in encs), np.int64, count=len(encs))
    offs = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    if not encs:
        return TokenBlock(np.zeros(0, np.int32), np.zeros(0, bool), np.zeros(0, np.int32), offs)
    return TokenBlock(np.concatenate([e.ids for e in encs]).astype(np.int32),
                      np.concatenate([e.scored for e in encs]).astype(bool),
                      np.concatenate([e.nucleotides for e in encs]).astype(np.int32), offs)


def segment_positions(lengths: np.ndarray) -> np.ndarray:
    """For concatenated segments of the given lengths: position of each element in its segment."""
    total = int(lengths.sum())
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    return np.arange(total, dtype=np.int64) - np.repeat(starts, lengths)


@dataclass
class Tokenizer:
    """Base class: subclasses implement :meth:`encode_codes`.

    Attributes:
      name: short name (``char``, ``nt-6mer-v1`` ...).
      vocab_size: number of ids the tokenizer can produce (the model may pad rows beyond it).
      pad_id: id used for padding.
      mask_id: id of the mask token (masked-LM families), or None.
      padding_side: ``"left"`` or ``"right"``.
    """

    name: str = "base"
    vocab_size: int = 0
    pad_id: int = 0
    mask_id: int | None = None
    padding_side: str = "right"
    special_ids: frozenset[int] = field(default_factory=frozenset)

    def encode_codes(self, codes: np.ndarray) -> Encoded:  # pragma: no cover - abstract
        raise TypeError(f"{type(self).__name__} must implement encode_codes")

    def encode_block(self, codes: np.ndarray, offsets: np.ndarray) -> TokenBlock:
        """Tokenize pieces given as one flat code array and ``offsets`` (``[P + 1]``, absolute);
        the one tokenization path of training, scoring and the audit. Subclasses vectorise it."""
        offsets = np.asarray(offsets, np.int64)
        return _from_encoded([self.encode_codes(codes[int(offsets[i]):int(offsets[i + 1])])
                              for i in range(offsets.shape[0] - 1)])

    def token_strings(self) -> list[str | None]:
        """For every token id below ``vocab_size``: its nucleotide string if it consists of A/C/G/T
        only, else None (specials, ``N``, unknown)."""
        raise ConfigError(f"tokenizer {type(self).__name__} exposes no vocabulary")

    #: every nucleotide is one token (a prefix never changes how the rest is tokenized)
    one_token_per_nucleotide: ClassVar[bool] = False
    #: every N-free sequence of a given length is split at the same places (k-mer and character)
    uniform_split: ClassVar[bool] = False

    def _strings_from_vocab(self, vocab: list[str]) -> list[str | None]:
        out: list[str | None] = [None] * int(self.vocab_size)
        for i, s in enumerate(vocab[:int(self.vocab_size)]):
            if i not in self.special_ids and s and set(s) <= set("ACGT"):
                out[i] = s
        return out

    def encode(self, seq: str) -> np.ndarray:
        """Token ids (int32, specials included) of a DNA string."""
        return self.encode_codes(alphabet.encode(seq)).ids

    def max_tokens(self, nucleotides: int) -> int:
        """Upper bound on the number of tokens for a sequence of this many nucleotides."""
        return nucleotides + 2

    def pad_batch(self, encs: list[Encoded], length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Pad encoded sequences to ``length``: returns ids int32 [B,L], attention mask bool [B,L],
        scored mask bool [B,L], honouring :attr:`padding_side`."""
        b = len(encs)
        ids = np.full((b, length), self.pad_id, np.int32)
        att = np.zeros((b, length), bool)
        sc = np.zeros((b, length), bool)
        for i, e in enumerate(encs):
            t = e.ids.shape[0]
            if t > length:
                raise ValueError(f"sequence of {t} tokens does not fit length {length}")
            sl = slice(length - t, length) if self.padding_side == "left" else slice(0, t)
            ids[i, sl] = e.ids
            att[i, sl] = True
            sc[i, sl] = e.scored
        return ids, att, sc


# ---------------------------------------------------------------------------------------------
# Character tokenizers

# HyenaDNA / Caduceus character vocabulary (CharacterTokenizer of both reference code bases).
HYENA_CHAR_VOCAB = {"[CLS]": 0, "[SEP]": 1, "[BOS]": 2, "[MASK]": 3, "[PAD]": 4, "[RESERVED]": 5, "[UNK]": 6,
                    "A": 7, "C": 8, "G": 9, "T": 10, "N": 11}


@dataclass
class CharTokenizer(Tokenizer):
    """One token per nucleotide.

    ``base_ids`` maps the codes A C G T N (0..4) to token ids; ``bos_id`` (if set) is prepended and
    ``eos_id`` (if set) appended. Presets: :func:`hyena_char_tokenizer` (HyenaDNA: ``[SEP]``
    appended, left padding), :func:`caduceus_char_tokenizer`, :func:`causal_char_tokenizer`
    (glmjax's causal baselines: ``[BOS]`` prepended so every nucleotide is predicted, right padding).
    """

    base_ids: tuple[int, ...] = (7, 8, 9, 10, 11)
    bos_id: int | None = None
    eos_id: int | None = None

    def encode_codes(self, codes: np.ndarray) -> Encoded:
        codes = np.asarray(codes, dtype=np.uint8)
        lut = np.asarray(self.base_ids, dtype=np.int32)
        body = lut[codes]
        pre = [] if self.bos_id is None else [self.bos_id]
        post = [] if self.eos_id is None else [self.eos_id]
        ids = np.concatenate([np.asarray(pre, np.int32), body, np.asarray(post, np.int32)])
        scored = np.zeros(ids.shape[0], bool)
        scored[len(pre):len(pre) + body.shape[0]] = True
        return Encoded(ids, scored, scored.astype(np.int32))

    def max_tokens(self, nucleotides: int) -> int:
        return nucleotides + (self.bos_id is not None) + (self.eos_id is not None)

    one_token_per_nucleotide = True
    uniform_split = True

    def encode_block(self, codes: np.ndarray, offsets: np.ndarray) -> TokenBlock:
        """Vectorised over all pieces (equal to :meth:`encode_codes` piece by piece, tested)."""
        n = np.diff(offsets).astype(np.int64)
        pre = int(self.bos_id is not None)
        post = int(self.eos_id is not None)
        toff = np.concatenate([[0], np.cumsum(n + pre + post)]).astype(np.int64)
        total = int(toff[-1])
        special = np.zeros(total, bool)
        if pre:
            special[toff[:-1]] = True
        if post:
            special[toff[1:] - 1] = True
        ids = np.empty(total, np.int32)
        scored = ~special
        # boolean-mask assignment: no index array as large as the block
        ids[scored] = np.asarray(self.base_ids, np.int32)[codes[int(offsets[0]):int(offsets[-1])]]
        if pre:
            ids[toff[:-1]] = self.bos_id
        if post:
            ids[toff[1:] - 1] = self.eos_id
        return TokenBlock(ids, scored, scored.view(np.int8).astype(np.int32), toff)

    def token_strings(self) -> list[str | None]:
        out: list[str | None] = [None] * int(self.vocab_size)
        for base, tid in zip("ACGT", self.base_ids[:4], strict=True):
            if tid < self.vocab_size:
                out[tid] = base
        return out


def hyena_char_tokenizer(vocab_size: int = 16) -> CharTokenizer:
    """HyenaDNA's tokenizer: A C G T N = 7..11, ``[SEP]`` appended, no ``[CLS]``, left ``[PAD]``=4."""
    return CharTokenizer(name="char-hyenadna", vocab_size=vocab_size, pad_id=4, mask_id=3, padding_side="left",
                         special_ids=frozenset(range(7)), eos_id=1)


def caduceus_char_tokenizer(vocab_size: int = 16) -> CharTokenizer:
    """Caduceus's tokenizer: as HyenaDNA's (upper-cased input, ``[SEP]`` appended, left padding)."""
    return CharTokenizer(name="char-caduceus", vocab_size=vocab_size, pad_id=4, mask_id=3, padding_side="left",
                         special_ids=frozenset(range(7)), eos_id=1)


def causal_char_tokenizer(vocab_size: int = 16) -> CharTokenizer:
    """glmjax's causal baselines (Llama-/GPT-2-style): HyenaDNA ids, ``[BOS]``=2 first, right padding."""
    return CharTokenizer(name="char-causal", vocab_size=vocab_size, pad_id=4, mask_id=3, padding_side="right",
                         special_ids=frozenset(range(7)), bos_id=2)


# ---------------------------------------------------------------------------------------------
# Nucleotide Transformer 6-mer tokenizer

_NT_ORDER = "ATCG"  # the official vocabulary enumerates k-mers in itertools.product("ATCG") order
_CODE_TO_NT = np.array([0, 2, 3, 1], dtype=np.int64)  # our A C G T (0..3) -> index in "ATCG"


@dataclass
class KmerTokenizer(Tokenizer):
    """Nucleotide Transformer tokenizer: ``<cls>``, then per N-separated chunk non-overlapping
    k-mers from the left with leftover bases as single-base tokens; every N is its own token.

    ``version`` 1: ``<unk> <pad> <mask> <cls>`` then the 4^k k-mers, then A T C G N (4105 ids for
    k=6). Version 2 adds ``<eos> <bos>`` after ``<cls>`` (4107 ids). Right padding with ``<pad>``=1.
    """

    k: int = 6
    version: int = 1
    cls_id: int = 3

    @property
    def kmer_offset(self) -> int:
        return 4 if self.version == 1 else 6

    @property
    def single_offset(self) -> int:
        return self.kmer_offset + 4 ** self.k

    def vocab(self) -> list[str]:
        """The vocabulary in id order (line i of the official vocab file is id i)."""
        import itertools

        specials = ["<unk>", "<pad>", "<mask>", "<cls>"] + (["<eos>", "<bos>"] if self.version == 2 else [])
        kmers = ["".join(p) for p in itertools.product(_NT_ORDER, repeat=self.k)]
        return specials + kmers + list(_NT_ORDER) + ["N"]

    def encode_codes(self, codes: np.ndarray) -> Encoded:
        codes = np.asarray(codes, dtype=np.uint8)
        k = self.k
        ids: list[np.ndarray] = [np.array([self.cls_id], np.int64)]
        nts: list[np.ndarray] = [np.zeros(1, np.int64)]
        n_pos = np.flatnonzero(codes == 4)
        bounds = np.concatenate([[-1], n_pos, [codes.shape[0]]])
        weights = 4 ** np.arange(k - 1, -1, -1, dtype=np.int64)
        for j in range(bounds.shape[0] - 1):
            lo, hi = int(bounds[j]) + 1, int(bounds[j + 1])
            if hi > lo:
                chunk = _CODE_TO_NT[codes[lo:hi]]
                m = (hi - lo) // k
                full = chunk[: m * k].reshape(m, k) @ weights + self.kmer_offset
                rest = chunk[m * k:] + self.single_offset
                ids += [full, rest]
                nts += [np.full(m, k, np.int64), np.ones(rest.shape[0], np.int64)]
            if j < bounds.shape[0] - 2:  # the N that ends this chunk
                ids.append(np.array([self.single_offset + 4], np.int64))
                nts.append(np.ones(1, np.int64))
        out = np.concatenate(ids).astype(np.int32)
        nt = np.concatenate(nts).astype(np.int32)
        return Encoded(out, nt > 0, nt)

    def max_tokens(self, nucleotides: int) -> int:
        return nucleotides + 1

    uniform_split = True

    def encode_block(self, codes: np.ndarray, offsets: np.ndarray) -> TokenBlock:
        """NT k-mer tokenization, vectorised over pieces without N (the others go through the tokenizer).

        Work is proportional to the number of tokens: k-mer values are gathered at the k-mer starts
        only (no per-nucleotide index arrays).
        """
        k = self.k
        base = int(offsets[0])
        n = np.diff(offsets).astype(np.int64)
        seg = codes[base:int(offsets[-1])]
        is_n = seg == 4
        has_n = np.zeros(n.shape[0], bool)
        if is_n.any():
            nz = n > 0
            has_n[nz] = np.add.reduceat(is_n, (offsets[:-1] - base)[nz], dtype=np.int64) > 0
        m = n // k
        r = n % k
        tl = np.where(has_n, 0, 1 + m + r)
        # Pieces with N: tokenized one by one (exact rules for N-separated chunks).
        slow = {int(i): self.encode_codes(codes[int(offsets[i]):int(offsets[i + 1])]) for i in np.flatnonzero(has_n)}
        for i, e in slow.items():
            tl[i] = e.ids.shape[0]
        toff = np.concatenate([[0], np.cumsum(tl)]).astype(np.int64)
        total = int(toff[-1])
        ids = np.empty(total, np.int32)
        nts = np.zeros(total, np.int32)
        fast = ~has_n
        ids[toff[:-1][fast]] = self.cls_id
        lut = np.array([0, 2, 3, 1, 0], np.int32)              # A C G T -> index in "ATCG"
        src0 = offsets[:-1] - base                               # piece starts within seg
        mf = np.where(fast, m, 0)
        if mf.sum():
            j = segment_positions(mf)
            owner = np.repeat(np.arange(n.shape[0]), mf)
            starts = src0[owner] + k * j
            val = np.zeros(starts.shape[0], np.int32)
            for t in range(k):
                val = val * 4 + lut[seg[starts + t]]
            dst = toff[owner] + 1 + j
            ids[dst] = val + self.kmer_offset
            nts[dst] = k
        rf = np.where(fast, r, 0)
        if rf.sum():
            i = segment_positions(rf)
            owner = np.repeat(np.arange(n.shape[0]), rf)
            dst = toff[owner] + 1 + m[owner] + i
            ids[dst] = lut[seg[src0[owner] + m[owner] * k + i]] + self.single_offset
            nts[dst] = 1
        for i, e in slow.items():
            ids[toff[i]:toff[i + 1]] = e.ids
            nts[toff[i]:toff[i + 1]] = e.nucleotides
        return TokenBlock(ids, nts > 0, nts, toff)

    def token_strings(self) -> list[str | None]:
        return self._strings_from_vocab(self.vocab())


def nt_kmer_tokenizer(version: int = 1, k: int = 6) -> KmerTokenizer:
    """The official Nucleotide Transformer 6-mer tokenizer (v1: 4105 ids; v2: 4107 ids)."""
    tok = KmerTokenizer(name=f"nt-{k}mer-v{version}", k=k, version=version, pad_id=1, mask_id=2,
                        padding_side="right", cls_id=3)
    tok.vocab_size = tok.single_offset + 5
    tok.special_ids = frozenset(range(tok.kmer_offset))
    return tok


# ---------------------------------------------------------------------------------------------
# BPE (DNABERT-2)

class BPETokenizer(Tokenizer):
    """A ``tokenizers`` BPE tokenizer from a ``tokenizer.json`` (DNABERT-2: ``[CLS] ... [SEP]``,
    right padding with ``[PAD]``=3, ``[MASK]``=4; N is not in the vocabulary and becomes ``[UNK]``)."""

    def __init__(self, path: str, name: str = "bpe"):
        from tokenizers import Tokenizer as HFTokenizer

        self._tok = HFTokenizer.from_file(str(path))
        self._tok.no_padding()
        self._tok.no_truncation()
        vocab = self._tok.get_vocab()
        super().__init__(name=name, vocab_size=self._tok.get_vocab_size(), pad_id=vocab.get("[PAD]", 0),
                         mask_id=vocab.get("[MASK]"), padding_side="right",
                         special_ids=frozenset(v for t, v in vocab.items() if t.startswith("[") and t.endswith("]")))
        self.unk_id = vocab.get("[UNK]")

    def encode_codes(self, codes: np.ndarray) -> Encoded:
        return self._encode_str(alphabet.decode(codes))

    def encode(self, seq: str) -> np.ndarray:
        return self._encode_str(seq.upper()).ids

    def _encode_str(self, seq: str) -> Encoded:
        enc = self._tok.encode(seq)
        ids = np.asarray(enc.ids, np.int32)
        nts = np.asarray([e - s for s, e in enc.offsets], np.int32)
        special = np.asarray(enc.special_tokens_mask, bool)
        nts[special] = 0
        return Encoded(ids, nts > 0, nts)

    def encode_block(self, codes: np.ndarray, offsets: np.ndarray) -> TokenBlock:
        """Through the Rust tokenizer's batch encoder."""
        offsets = np.asarray(offsets, np.int64)
        return _from_encoded(self.encode_batch([alphabet.decode(codes[int(offsets[i]):int(offsets[i + 1])])
                                                for i in range(offsets.shape[0] - 1)]))

    def token_strings(self) -> list[str | None]:
        inv = {v: s for s, v in self._tok.get_vocab().items()}
        return self._strings_from_vocab([inv.get(i, "") for i in range(int(self.vocab_size))])

    def encode_batch(self, seqs: list[str]) -> list[Encoded]:
        """Encode many strings at once (the Rust tokenizer parallelises the batch)."""
        out = []
        for enc in self._tok.encode_batch([s.upper() for s in seqs]):
            ids = np.asarray(enc.ids, np.int32)
            nts = np.asarray([e - s for s, e in enc.offsets], np.int32)
            nts[np.asarray(enc.special_tokens_mask, bool)] = 0
            out.append(Encoded(ids, nts > 0, nts))
        return out
