"""Tokenizer parity with the golden inputs of every family, and structural properties."""

import numpy as np
import pytest

from glmjax import alphabet
from glmjax.tokenizers import (
    BPETokenizer,
    caduceus_char_tokenizer,
    causal_char_tokenizer,
    hyena_char_tokenizer,
    nt_kmer_tokenizer,
)

CASES = {
    "nt_v1": lambda d: nt_kmer_tokenizer(1),
    "nt_v2": lambda d: nt_kmer_tokenizer(2),
    "hyenadna": lambda d: hyena_char_tokenizer(),
    "caduceus_ph": lambda d: caduceus_char_tokenizer(),
    "caduceus_ps": lambda d: caduceus_char_tokenizer(),
    "dnabert2": lambda d: BPETokenizer(d / "tokenizer.json"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden_token_ids(golden, case):
    g = golden(case)
    tok = CASES[case](g.dir)
    ref = g.inputs.get("input_ids_before_masking", g.inputs["input_ids"])
    encs = [tok.encode_codes(alphabet.encode(str(s))) for s in g.inputs["sequences"]]
    ids, att, _ = tok.pad_batch(encs, ref.shape[1])
    np.testing.assert_array_equal(ids, ref)
    if "attention_mask" in g.inputs:
        np.testing.assert_array_equal(att, g.inputs["attention_mask"].astype(bool))


@pytest.mark.parametrize("version", [1, 2])
def test_nt_vocab_file_order(golden, version):
    g = golden(f"nt_v{version}")
    assert (g.dir / "vocab.txt").read_text().split() == nt_kmer_tokenizer(version).vocab()


def test_kmer_rules_and_nucleotide_counts():
    tok = nt_kmer_tokenizer(1)
    vocab = tok.vocab()
    enc = tok.encode_codes(alphabet.encode("ACGTACGTANNGGGGGGC"))
    toks = [vocab[i] for i in enc.ids]
    assert toks == ["<cls>", "ACGTAC", "G", "T", "A", "N", "N", "GGGGGG", "C"]
    assert enc.nucleotides.tolist() == [0, 6, 1, 1, 1, 1, 1, 6, 1]
    assert enc.nucleotides.sum() == 18
    assert enc.scored.tolist() == [False] + [True] * 8


def test_char_tokenizers_padding_sides():
    seqs = ["ACGT", "AC"]
    for tok, side in [(hyena_char_tokenizer(), "left"), (causal_char_tokenizer(), "right")]:
        encs = [tok.encode_codes(alphabet.encode(s)) for s in seqs]
        ids, att, sc = tok.pad_batch(encs, 6)
        assert att.sum(1).tolist() == [5, 3]
        if side == "left":
            assert ids[1].tolist() == [4, 4, 4, 7, 8, 1]
        else:
            assert ids[1].tolist() == [2, 7, 8, 4, 4, 4]
        assert sc.sum(1).tolist() == [4, 2]
