"""Tokenizers of the supported model families, all working from nucleotide codes.

Every tokenizer turns a uint8 code array (A C G T N = 0..4, see :mod:`glmjax.alphabet`) or a DNA
string into int32 token ids *including* the family's special tokens (``<cls>``, ``[SEP]``...),
and tells which token positions carry nucleotides (the positions that are scored) and how many
nucleotides each token covers (for per-nucleotide normalisation of k-mer and BPE scores).

Families: ``CharTokenizer`` (HyenaDNA / Caduceus id conventions, and the plain character
vocabulary of the causal baselines), ``KmerTokenizer`` (Nucleotide Transformer 6-mers, v1 and v2
vocabulary orders) and ``BPETokenizer`` (DNABERT-2, through the ``tokenizers`` library).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from glmjax import alphabet


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
