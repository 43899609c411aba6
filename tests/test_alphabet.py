"""Nucleotide alphabet: codes, lowercase, IUPAC ambiguity codes, errors, reverse complement."""

from __future__ import annotations

import numpy as np
import pytest

from glmjax import alphabet
from glmjax.errors import SequenceError


def test_codes_of_the_five_bases():
    np.testing.assert_array_equal(alphabet.encode("ACGTN"), np.array([0, 1, 2, 3, 4], np.uint8))
    assert alphabet.encode("ACGTN").dtype == np.uint8
    assert alphabet.decode(np.array([0, 1, 2, 3, 4])) == "ACGTN"


def test_lowercase_maps_to_the_same_codes_and_is_counted():
    stats = alphabet.EncodeStats()
    np.testing.assert_array_equal(alphabet.encode("acgtnACGT", stats=stats), alphabet.encode("ACGTNACGT"))
    assert stats.lowercase == 5
    assert stats.ambiguous == 0


def test_iupac_codes_become_n_and_are_counted():
    stats = alphabet.EncodeStats()
    codes = alphabet.encode("ARYSWKMBDHVryswkmbdhvT", stats=stats)
    assert codes[0] == alphabet.A and codes[-1] == alphabet.T
    assert (codes[1:-1] == alphabet.N).all()
    assert stats.ambiguous == 20
    assert stats.lowercase == 10
    # N itself is a base code, not an ambiguity code
    stats2 = alphabet.EncodeStats()
    alphabet.encode("NNNn", stats=stats2)
    assert stats2.ambiguous == 0 and stats2.lowercase == 1


def test_stats_accumulate():
    a, b = alphabet.EncodeStats(1, 2), alphabet.EncodeStats(3, 4)
    a.add(b)
    assert (a.ambiguous, a.lowercase) == (4, 6)


@pytest.mark.parametrize("seq,pos,shown", [("ACG@T", 4, "'@'"), ("ACGU", 4, "'U'"), ("E", 1, "'E'"),
                                           ("AC-GT", 3, "'-'"), ("AC GT", 3, "' '"),
                                           ("AC\x00G", 3, "byte 0x00")])
def test_invalid_character_names_record_position_and_character(seq, pos, shown):
    with pytest.raises(SequenceError) as e:
        alphabet.encode(seq, record="chr7", offset=100)
    msg = str(e.value)
    assert "'chr7'" in msg
    assert f"position {100 + pos}" in msg
    assert shown in msg
    assert "\n" not in msg


def test_first_bad_character_is_reported():
    with pytest.raises(SequenceError, match="position 2: '!'"):
        alphabet.encode("A!@#")


def test_encode_accepts_bytes_and_uint8_arrays():
    ref = alphabet.encode("ACGTRN")
    np.testing.assert_array_equal(alphabet.encode(b"ACGTRN"), ref)
    np.testing.assert_array_equal(alphabet.encode(np.frombuffer(b"ACGTRN", np.uint8)), ref)


def test_decode_rejects_non_codes():
    with pytest.raises(SequenceError):
        alphabet.decode(np.array([0, 5]))


def test_reverse_complement():
    assert alphabet.reverse_complement_str("AACGTN") == "NACGTT"
    assert alphabet.reverse_complement_str("acgtRY") == "NNACGT"
    codes = alphabet.encode("GATTACA")
    np.testing.assert_array_equal(alphabet.decode(alphabet.reverse_complement(codes)), "TGTAATC")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 5, size=(7, 33)).astype(np.uint8)
    rc = alphabet.reverse_complement(x)
    assert rc.shape == x.shape
    np.testing.assert_array_equal(alphabet.reverse_complement(rc), x)  # an involution
    for row, rrow in zip(x, rc, strict=True):  # batched = row by row
        np.testing.assert_array_equal(alphabet.reverse_complement(row), rrow)
    # complement pairs: A<->T, C<->G, N<->N
    np.testing.assert_array_equal(alphabet.reverse_complement(np.arange(5)), [4, 0, 1, 2, 3])


def test_gc_content_ignores_n():
    assert alphabet.gc_content(alphabet.encode("GGCCNNNNAT")) == pytest.approx(4 / 6)
    assert alphabet.gc_content(alphabet.encode("NNN")) == 0.0
