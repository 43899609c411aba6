"""Synthetic sequences: i.i.d. GC content, Markov order-k fitting and sampling, seeds, stores."""

from __future__ import annotations

import itertools
from collections import Counter
from functools import partial

import numpy as np
import pytest
from conftest import shared_path

from glmjax import alphabet
from glmjax.data import fasta, synthetic
from glmjax.data.store import SequenceStore
from glmjax.data.synthetic import MarkovModel, iid_sequences, kmer_index, synth_to_store
from glmjax.errors import ConfigError


@pytest.mark.parametrize("gc", [0.2, 0.5, 0.65])
def test_iid_gc_content_and_symmetry(gc):
    x = iid_sequences(200, 500, gc, np.random.default_rng(0))
    assert x.shape == (200, 500) and x.dtype == np.uint8 and x.max() < 4
    n = x.size
    se = np.sqrt(gc * (1 - gc) / n)
    assert abs(alphabet.gc_content(x) - gc) < 5 * se
    counts = np.bincount(x.ravel(), minlength=4) / n
    # A and T (and C and G) are equally likely
    assert abs(counts[0] - counts[3]) < 5 * np.sqrt(0.5 / n)
    assert abs(counts[1] - counts[2]) < 5 * np.sqrt(0.5 / n)


def test_iid_seeds():
    a = iid_sequences(5, 50, 0.5, np.random.default_rng(1))
    b = iid_sequences(5, 50, 0.5, np.random.default_rng(1))
    c = iid_sequences(5, 50, 0.5, np.random.default_rng(2))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    with pytest.raises(ConfigError):
        iid_sequences(1, 5, 1.5, np.random.default_rng(0))


def test_kmer_index_matches_direct_computation():
    codes = alphabet.encode("ACGTNACCGTTA")
    idx, ok = kmer_index(codes, 3)
    for i in range(codes.size - 2):
        kmer = codes[i:i + 3]
        assert ok[i] == (kmer < 4).all()
        if ok[i]:
            assert idx[i] == kmer[0] * 16 + kmer[1] * 4 + kmer[2]
    assert kmer_index(codes[:2], 3)[0].size == 0


def brute_counts(seqs, k):
    c = Counter()
    for s in seqs:
        t = alphabet.decode(s)
        for i in range(len(t) - k + 1):
            if "N" not in t[i:i + k]:
                c[t[i:i + k]] += 1
    return c


def test_fit_counts_every_k_plus_1_mer_once():
    rng = np.random.default_rng(3)
    seqs = [rng.integers(0, 5, n).astype(np.uint8) for n in (50, 3, 200)]
    m = MarkovModel.fit(seqs, order=2, pseudocount=0.5)
    ref = brute_counts(seqs, 3)
    for i, kmer in enumerate(itertools.product("ACGT", repeat=3)):
        assert m.counts[i] == ref["".join(kmer)]
    t = m.transition()
    assert t.shape == (16, 4)
    np.testing.assert_allclose(t.sum(1), 1.0)
    row = m.counts.reshape(16, 4)[5] + 0.5
    np.testing.assert_allclose(t[5], row / row.sum())


def test_fit_fasta_is_independent_of_block_size(tmp_path, monkeypatch):
    rng = np.random.default_rng(4)
    recs = {f"r{i}": alphabet.decode(rng.integers(0, 5, n).astype(np.uint8)) for i, n in enumerate((300, 41))}
    p = tmp_path / "g.fa"
    p.write_text("".join(f">{k}\n{v}\n" for k, v in recs.items()))
    whole = MarkovModel.fit([alphabet.encode(v) for v in recs.values()], order=3)
    monkeypatch.setattr(fasta, "iter_fasta", partial(fasta.iter_fasta, block_bytes=5))
    pieces = MarkovModel.fit_fasta(p, order=3)
    np.testing.assert_array_equal(pieces.counts, whole.counts)


@pytest.mark.parametrize("order", [1, 3])
def test_deterministic_chain_is_reproduced_exactly(order):
    # ACGT repeated: with pseudocount 0 every context has one successor.
    m = MarkovModel.fit([np.tile(np.arange(4, dtype=np.uint8), 50)], order=order, pseudocount=0.0)
    x = m.sample(20, 37, np.random.default_rng(0))
    np.testing.assert_array_equal(np.diff(x.astype(int), axis=1) % 4, 1)
    assert len(set(x[:, 0].tolist())) > 1  # first bases drawn from the k-mer distribution


def test_sampled_transitions_match_the_fitted_model():
    (_, codes), = fasta.read_fasta(shared_path("data", "small", "phiX174.fa.gz"))
    m = MarkovModel.fit([codes], order=2)
    x = m.sample(2000, 300, np.random.default_rng(5))
    emp = brute_counts_array(x, 3)
    emp = emp.reshape(16, 4)
    emp = emp / emp.sum(1, keepdims=True)
    assert np.abs(emp - m.transition()).max() < 0.02
    assert abs(alphabet.gc_content(x) - m.gc()) < 0.01


def brute_counts_array(x, k):
    out = np.zeros(4 ** k, np.int64)
    for row in x:
        idx, ok = kmer_index(row, k)
        out += np.bincount(idx[ok], minlength=4 ** k)
    return out


def test_order_zero_fit_is_the_base_composition():
    codes = alphabet.encode("AAAACCGT")
    m = MarkovModel.fit([codes], order=0, pseudocount=0.0)
    np.testing.assert_allclose(m.transition()[0], [0.5, 0.25, 0.125, 0.125])
    x = m.sample(400, 100, np.random.default_rng(0))
    freq = np.bincount(x.ravel(), minlength=4) / x.size
    np.testing.assert_allclose(freq, [0.5, 0.25, 0.125, 0.125], atol=0.01)


def test_bad_parameters():
    with pytest.raises(ConfigError, match="--order"):
        MarkovModel.fit([], order=synthetic.MAX_ORDER + 1)
    with pytest.raises(ConfigError, match="--pseudocount"):
        MarkovModel.fit([], order=1, pseudocount=-1)


def test_synth_store_is_reproducible(tmp_path):
    g = shared_path("data", "small", "phiX174.fa.gz")
    a = synth_to_store(tmp_path / "a.h5", 30, 120, seed=7, order=2, fit=g)
    synth_to_store(tmp_path / "b.h5", 30, 120, seed=7, order=2, fit=g)
    synth_to_store(tmp_path / "c.h5", 30, 120, seed=8, order=2, fit=g)
    assert a["kind"] == "markov" and a["order"] == 2
    with SequenceStore(tmp_path / "a.h5") as sa, SequenceStore(tmp_path / "b.h5") as sb, \
            SequenceStore(tmp_path / "c.h5") as sc:
        assert len(sa) == 30 and (sa.lengths() == 120).all()
        assert sa.ids[0] == "synthetic-000000" and sa.column("kind")[0] == "synthetic"
        for x, y in zip(sa.sequences(), sb.sequences(), strict=True):
            np.testing.assert_array_equal(x, y)
        assert any(not np.array_equal(x, y) for x, y in zip(sa.sequences(), sc.sequences(), strict=True))
        prov = sa.provenance
        assert prov["seed"] == 7 and prov["generator"]["fit"]["sha256"]
    with pytest.raises(ConfigError, match="--order needs --fit"):
        synth_to_store(tmp_path / "d.h5", 3, 10, seed=1, order=2)
    assert not (tmp_path / "d.h5").exists()
