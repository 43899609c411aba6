"""Exact exposure by candidate enumeration: trie walk vs full forward passes, memory blocks,
masked-LM PLL of the secret, rank/exposure."""

from __future__ import annotations

import numpy as np
import pytest
from trie_reference import CAUSAL_FAMILIES, K, causal_case

import glmjax.models
from glmjax import alphabet
from glmjax.audit import candidates as en
from glmjax.audit.decoding import codes_to_index, index_to_codes
from glmjax.errors import ConfigError
from glmjax.kernels import trie
from glmjax.tokenizers import caduceus_char_tokenizer, nt_kmer_tokenizer


def _sample_indices(total: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.choice(total.shape[0], 24, replace=False), np.argsort(-total)[:4]])


@pytest.mark.parametrize("family", CAUSAL_FAMILIES)
def test_trie_matches_full_forward(family):
    case = causal_case(family)
    # block 16 < 4^(K-1): the deep levels are walked depth-first in several blocks
    logp, stats = en.causal_candidate_logprobs(case.model, case.prefix, K, block=16)
    assert logp.shape == (4 ** K,) and logp.dtype == np.float32
    rel = np.abs(logp - case.total) / np.abs(case.total)
    assert rel.max() <= 1e-5, rel.max()
    for idx in _sample_indices(case.total, 5):
        assert en.rank_of(logp, idx) == en.rank_of(case.total, idx)
    # levels 1..K-1 in blocks of 16 children (+ the padded top levels): far fewer rows than 4^K passes
    assert stats.decode_rows == stats.calls * 16
    assert (4 ** K - 4) // 3 <= stats.decode_rows < (4 ** K - 4) // 3 + 16 * 3


def test_choose_block_respects_memory_limit():
    for k, bpn, limit in ((12, 300_000, 2 * 1024 ** 3), (14, 3_000_000, 2 * 1024 ** 3), (8, 1000, 1 << 40)):
        block = en.choose_block(k, bpn, limit, vocab=16)
        per = bpn + 3 * 4 * 16
        assert block & (block - 1) == 0 and 4 <= block <= min(en.MAX_BLOCK, 4 ** (k - 1))
        assert trie.live_nodes(k - 1, block) * per <= limit or block == 4
        if block * 2 <= min(en.MAX_BLOCK, 4 ** (k - 1)):
            assert trie.live_nodes(k - 1, block * 2) * per > limit
    assert en.choose_block(12, 300_000, 2 * 1024 ** 3, 16) == 512
    assert en.choose_block(8, 1000, 1 << 40, 16) == 4 ** 7


def test_rank_and_exposure_closed_forms():
    scores = np.array([-3.0, -1.0, -2.0, -1.0, -5.0], np.float32)
    assert [en.rank_of(scores, i) for i in range(5)] == [4, 1, 3, 1, 5]
    rank, expo = en.exposure_of_scores(scores, 2)
    assert rank == 3 and expo == pytest.approx(np.log2(5) - np.log2(3))
    rank, expo = en.exposure_of_scores(scores, 4)
    assert rank == 5 and expo == pytest.approx(0.0)
    idx = np.arange(4 ** 5)
    assert np.array_equal(np.asarray([codes_to_index(c) for c in index_to_codes(idx, 5)]), idx)
    assert codes_to_index(alphabet.encode("CA")) == 4 and codes_to_index(alphabet.encode("AT")) == 3


def test_exact_exposure_of_a_canary_and_its_report():
    case = causal_case("llama")
    best = int(np.argmax(case.total))
    secret = alphabet.decode(index_to_codes(best, K))
    res = en.exact_exposure(case.model, case.prefix, secret, canary_id="canary-0001", repetitions=8, block=16)
    assert res.rank == 1 and res.exposure == pytest.approx(2.0 * K)
    assert res.mode == "causal-exact" and res.secret_index == best
    assert res.secret_logp == pytest.approx(case.total[best], rel=1e-5)
    worst = int(np.argmin(case.total))
    res2 = en.exact_exposure(case.model, case.prefix, index_to_codes(worst, K), block=16)
    assert res2.rank == en.rank_of(case.total, worst) and res2.exposure == pytest.approx(
        2.0 * K - np.log2(res2.rank))
    summary = en.summarise_exposures([res, res2])
    assert summary[0]["repetitions"] == 0 and summary[1]["repetitions"] == 8
    assert summary[1]["exposure_mean"] == pytest.approx(2.0 * K) and summary[1]["rank1_mean"] == 1.0
    assert summary[0]["exposure_fraction_mean"] == pytest.approx(res2.exposure / (2.0 * K))
    d = res.to_dict()
    assert "secret" not in d and secret not in str(d) and d["exposure_bits"] == pytest.approx(2.0 * K)
    assert res.to_dict(reveal=True)["secret"] == secret


def test_k_out_of_range_is_a_config_error():
    case = causal_case("llama")
    with pytest.raises(ConfigError):
        en.causal_candidate_logprobs(case.model, case.prefix, 0)
    with pytest.raises(ConfigError):
        en.causal_candidate_logprobs(case.model, case.prefix, 3, block=6)


@pytest.mark.parametrize("tok", [nt_kmer_tokenizer(1), caduceus_char_tokenizer()], ids=["kmer", "char"])
def test_vectorised_candidate_tokens_equal_per_candidate_encoding(tok):
    prefix = np.random.default_rng(0).integers(0, 4, 10).astype(np.uint8)
    secrets = index_to_codes(np.arange(4 ** 5), 5)
    [(pos, members, ids)] = en.candidate_token_groups(tok, prefix, secrets)
    assert np.array_equal(members, np.arange(4 ** 5))
    for j in (0, 1, 77, 500, 1023):
        enc = tok.encode_codes(np.concatenate([prefix, secrets[j]]))
        assert np.array_equal(ids[j], enc.ids)
    ref_pos, _ = en.secret_token_positions(tok, prefix, secrets[0])
    assert np.array_equal(pos, ref_pos)


def test_masked_pll_of_secret_matches_direct_masking():
    if "dnabert2" not in glmjax.models.families():
        pytest.skip("model family 'dnabert2' is not registered")
    model = glmjax.models.build("dnabert2", seed=0)
    tok = model.tokenizer
    prefix = np.random.default_rng(2).integers(0, 4, 12).astype(np.uint8)
    k = 3
    ours = en.masked_candidate_pll(model, prefix, k, batch_size=128)
    # reference: every (candidate, covering token) pair masked in its own row of one padded batch
    rows, owners, where = [], [], []
    for j, secret in enumerate(index_to_codes(np.arange(4 ** k), k)):
        pos, enc = en.secret_token_positions(tok, prefix, secret)
        for p in pos:
            x = enc.ids.copy()
            x[p] = tok.mask_id
            rows.append((x, enc.ids[p]))
            owners.append(j)
            where.append(p)
    length = max(x.shape[0] for x, _ in rows)
    ids = np.full((len(rows), length), tok.pad_id, np.int32)
    att = np.zeros((len(rows), length), bool)
    for r, (x, _) in enumerate(rows):
        ids[r, :x.shape[0]] = x
        att[r, :x.shape[0]] = True
    logits = np.asarray(model.logits(ids, att), np.float64)
    z = logits[np.arange(len(rows)), where]
    lsm = z - z.max(-1, keepdims=True)
    lsm -= np.log(np.exp(lsm).sum(-1, keepdims=True))
    ref = np.zeros(4 ** k)
    np.add.at(ref, owners, lsm[np.arange(len(rows)), [t for _, t in rows]])
    np.testing.assert_allclose(ours, ref, rtol=1e-5)
    res = en.exact_exposure(model, prefix, index_to_codes(7, k), batch_size=128)
    assert res.mode == "pll-secret" and res.rank == en.rank_of(ref, 7)
