"""Nucleotide alphabet: A C G T N -> uint8 codes 0..4, IUPAC handling, reverse complement.

Codes are the storage format of every SequenceStore: one byte per nucleotide. Lowercase
(soft-masked) bases map to the same codes; IUPAC ambiguity codes (R Y S W K M B D H V) become N
and are counted; anything else is an error naming the record, the position and the character.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from glmjax.errors import SequenceError

A, C, G, T, N = 0, 1, 2, 3, 4
BASES = "ACGTN"
NUM_CODES = 5
INVALID = 255
IUPAC_AMBIGUOUS = "RYSWKMBDHV"

# Byte -> code lookup table; INVALID marks characters that are not nucleotides.
_ENCODE = np.full(256, INVALID, dtype=np.uint8)
for _i, _b in enumerate(BASES):
    _ENCODE[ord(_b)] = _i
    _ENCODE[ord(_b.lower())] = _i
_AMBIG = np.zeros(256, dtype=bool)
for _b in IUPAC_AMBIGUOUS:
    for _c in (_b, _b.lower()):
        _ENCODE[ord(_c)] = N
        _AMBIG[ord(_c)] = True
_ENCODE[ord("U")] = INVALID  # RNA is not silently accepted as DNA
_DECODE = np.frombuffer(BASES.encode(), dtype=np.uint8)
_COMPLEMENT = np.array([T, G, C, A, N], dtype=np.uint8)


@dataclass
class EncodeStats:
    """Counts collected while encoding: ambiguity codes turned into N, and soft-masked bases."""

    ambiguous: int = 0
    lowercase: int = 0

    def add(self, other: EncodeStats) -> None:
        self.ambiguous += other.ambiguous
        self.lowercase += other.lowercase


def encode(seq: str | bytes | np.ndarray, record: str = "<sequence>", offset: int = 0,
           stats: EncodeStats | None = None) -> np.ndarray:
    """Encode a nucleotide string into uint8 codes (A C G T N -> 0..4).

    Args:
      seq: the sequence (str, ASCII bytes, or a uint8 array of ASCII bytes); whitespace is not
        allowed here (strip it first).
      record: record name used in error messages.
      offset: 0-based position of ``seq[0]`` within the record, for error messages.
      stats: optional counters updated with ambiguity codes and lowercase bases seen.

    Returns:
      uint8 array of shape [len(seq)].

    Raises:
      SequenceError: on any character that is neither a base nor an IUPAC ambiguity code.
    """
    if isinstance(seq, str) and not seq.isascii():
        pos = next(i for i, ch in enumerate(seq) if not ch.isascii())
        _invalid(record, offset + pos, repr(seq[pos]) if seq[pos].isprintable() else f"U+{ord(seq[pos]):04X}")
    if isinstance(seq, np.ndarray):
        raw = seq.astype(np.uint8, copy=False).ravel()
    else:
        raw = np.frombuffer(seq.encode("ascii") if isinstance(seq, str) else bytes(seq), dtype=np.uint8)
    codes = _ENCODE[raw]
    bad = np.flatnonzero(codes == INVALID)
    if bad.size:
        pos = int(bad[0])
        _invalid(record, offset + pos, _shown(raw, pos))
    if stats is not None:
        stats.ambiguous += int(_AMBIG[raw].sum())
        stats.lowercase += int(((raw >= 97) & (raw <= 122)).sum())
    return codes


def _shown(raw: np.ndarray, pos: int) -> str:
    """The offending character at byte ``pos``: a printable ASCII character as itself, a UTF-8
    encoded character (a non-ASCII letter in a text file) decoded, anything else as its byte."""
    b = int(raw[pos])
    if b < 0x80:
        ch = chr(b)
        return repr(ch) if ch.isprintable() else f"byte 0x{b:02x}"
    for n in (2, 3, 4):
        try:
            ch = bytes(raw[pos:pos + n]).decode("utf-8")
        except UnicodeDecodeError:
            continue
        return f"{ch!r} (UTF-8 bytes {' '.join(f'0x{x:02x}' for x in raw[pos:pos + n])})"
    return f"byte 0x{b:02x}"


def _invalid(record: str, index: int, shown: str) -> None:
    raise SequenceError(
        f"record {record!r}, position {index + 1}: {shown} is not a nucleotide "
        "(allowed: A C G T N, lowercase, IUPAC codes R Y S W K M B D H V)"
    )


def decode(codes: np.ndarray) -> str:
    """Decode uint8 codes 0..4 back to an uppercase ACGTN string."""
    codes = np.asarray(codes, dtype=np.uint8)
    if codes.size and codes.max() >= NUM_CODES:
        raise SequenceError(f"code {int(codes.max())} is not a nucleotide code (0..4)")
    return _DECODE[codes].tobytes().decode("ascii")


def reverse_complement(codes: np.ndarray) -> np.ndarray:
    """Reverse complement of a code array (N stays N). Works on the last axis of any shape."""
    codes = np.asarray(codes, dtype=np.uint8)
    return _COMPLEMENT[codes[..., ::-1]]


def reverse_complement_str(seq: str) -> str:
    """Reverse complement of a nucleotide string (uppercase result)."""
    return decode(reverse_complement(encode(seq)))


def gc_content(codes: np.ndarray) -> float:
    """Fraction of G+C among the non-N bases (0.0 when there are none)."""
    codes = np.asarray(codes)
    acgt = codes[codes < N]
    if acgt.size == 0:
        return 0.0
    return float(np.isin(acgt, (C, G)).mean())
