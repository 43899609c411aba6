"""Canary extraction: greedy / beam decoding vs full-forward references, iterative mask filling,
metrics and secret-hiding reports."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from trie_reference import K, causal_case

from glmjax import alphabet
from glmjax.audit import extraction as ex
from glmjax.audit.decoding import codes_to_index, index_to_codes
from glmjax.errors import ConfigError
from glmjax.models.base import FamilySpec, LoadedModel
from glmjax.tokenizers import caduceus_char_tokenizer, nt_kmer_tokenizer

# one family per kind of decoding state: KV cache (llama; gpt2 shares its cache code), long-convolution
# history (hyenadna), SSM state (mamba); every causal family's step is checked by the trie tests
DECODING_FAMILIES = ("llama", "hyenadna", "mamba")


def _greedy_chain(step_lp: np.ndarray) -> list[int]:
    """Arg-max chain over the bases from full-forward step distributions [4^K, K, 4]."""
    chain: list[int] = []
    for j in range(K):
        row = codes_to_index(np.asarray(chain + [0] * (K - j), np.uint8))  # any candidate sharing the chain
        chain.append(int(np.argmax(step_lp[row, j])))
    return chain


@pytest.mark.parametrize("family", DECODING_FAMILIES)
def test_greedy_equals_full_forward_argmax_chain(family):
    case = causal_case(family)
    prefixes = [case.prefix, *case.others]
    codes, logp = ex.decode_secrets(case.model, prefixes, K, width=1)
    chain = _greedy_chain(case.step_lp)
    assert codes[0].tolist() == chain
    assert logp[0] == pytest.approx(case.total[codes_to_index(codes[0])], rel=1e-5)
    # rows of a batch are independent: another order gives the same completions
    codes2, logp2 = ex.decode_secrets(case.model, prefixes[::-1], K, width=1)
    assert np.array_equal(codes2[::-1], codes)
    np.testing.assert_allclose(logp2[::-1], logp, rtol=1e-6)


@pytest.mark.parametrize("family", DECODING_FAMILIES)
def test_exhaustive_beam_finds_the_true_maximum(family):
    case = causal_case(family)
    codes, logp = ex.decode_secrets(case.model, [case.prefix], K, width=4 ** K)
    best = int(np.argmax(case.total))
    assert codes_to_index(codes[0]) == best
    assert logp[0] == pytest.approx(case.total[best], rel=1e-5)


def test_extract_report_per_repetition_hides_secrets():
    case = causal_case("llama")
    greedy = alphabet.decode(np.asarray(_greedy_chain(case.step_lp), np.uint8))
    wrong = "".join("ACGT"[(alphabet.encode(c)[0] + 1) % 4] for c in greedy)
    entries = [
        {"id": "canary-0000", "role": "canary", "prefix": alphabet.decode(case.prefix), "secret": greedy,
         "repetitions": 16},
        {"id": "canary-0001", "role": "canary", "prefix": alphabet.decode(case.prefix), "secret": wrong,
         "repetitions": 16},
        {"id": "control-0000", "role": "control", "prefix": alphabet.decode(case.prefix),
         "secret": greedy[:3] + wrong[3:], "repetitions": 0},
    ]
    rep = ex.extract(case.model, entries, method="greedy")
    r0, r1, r2 = rep.records
    assert (r0.exact, r0.accuracy, r0.edit_distance, r0.extracted) == (True, 1.0, 0, greedy)
    assert (r1.exact, r1.accuracy) == (False, 0.0) and r1.edit_distance == ex.edit_distance(
        alphabet.encode(wrong)[None], alphabet.encode(greedy)[None])[0]
    assert r2.accuracy == pytest.approx(0.5)
    agg = rep.by_repetitions()
    assert agg[16] == {"n": 2, "exact_rate": 0.5, "mean_accuracy": 0.5,
                       "mean_edit_distance": (r0.edit_distance + r1.edit_distance) / 2}
    assert agg[0]["n"] == 1 and agg[0]["exact_rate"] == 0.0
    text = str(rep.to_dict())
    assert greedy not in text and wrong not in text
    revealed = rep.to_dict(reveal=True)["records"][0]
    assert revealed["secret"] == greedy and revealed["extracted"] == greedy
    with pytest.raises(ConfigError):
        ex.extract(case.model, entries, method="fill")


def _levenshtein(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def test_edit_distance_and_accuracy():
    assert ex.edit_distance(alphabet.encode("GATTACA")[None], alphabet.encode("GCATGCT")[None])[0] == 4
    rng = np.random.default_rng(0)
    for la, lb in ((8, 8), (5, 9), (10, 3), (0, 4)):
        a = rng.integers(0, 4, (50, la))
        b = rng.integers(0, 4, (50, lb))
        b[:10, :min(la, lb)] = a[:10, :min(la, lb)]
        ours = ex.edit_distance(a, b)
        ref = [_levenshtein(alphabet.decode(x.astype(np.uint8)), alphabet.decode(y.astype(np.uint8)))
               for x, y in zip(a, b, strict=True)]
        assert ours.tolist() == ref
    acc = ex.nucleotide_accuracy(alphabet.encode("ACGTAC")[None], alphabet.encode("ACGAAA")[None])
    assert acc[0] == pytest.approx(4 / 6)


# ------------------------------------------------------------------------------------------------
# Masked filling on a model whose answer is known


class ChainOracle(nnx.Module):
    """A masked "LM" that knows one sequence: at position i it predicts the true token with logit
    ``a[i]`` when position i-1 holds its true token, else a wrong token ``alt[i]`` with logit
    ``b[i]`` (all other logits 0). Filling left to right recovers the sequence; filling all masks
    at once does not."""

    def __init__(self, target: np.ndarray, alt: np.ndarray, a: np.ndarray, b: np.ndarray, vocab: int = 16):
        self.target = nnx.Variable(jnp.asarray(target, jnp.int32))
        self.alt = nnx.Variable(jnp.asarray(alt, jnp.int32))
        self.a = nnx.Variable(jnp.asarray(a, jnp.float32))
        self.b = nnx.Variable(jnp.asarray(b, jnp.float32))
        self.vocab = vocab

    def __call__(self, ids, attention_mask=None):
        tgt = self.target[...]
        prev_ok = jnp.concatenate([jnp.ones((ids.shape[0], 1), bool), ids[:, :-1] == tgt[None, :-1]], axis=1)
        right = jax.nn.one_hot(tgt, self.vocab) * self.a[...][:, None]
        wrong = jax.nn.one_hot(self.alt[...], self.vocab) * self.b[...][:, None]
        return jnp.where(prev_ok[..., None], right[None], wrong[None])


def _oracle_model(prefix: str, secret: str, b_secret: list[float]) -> LoadedModel:
    tok = caduceus_char_tokenizer()
    ids = tok.encode(prefix + secret)                 # [prefix][secret][SEP]
    alt = np.where(ids >= 7, 7 + (ids - 7 + 1) % 4, ids)
    p = len(prefix)
    a = np.full(ids.shape[0], 5.0)
    b = np.full(ids.shape[0], 1.0)
    b[p:p + len(secret)] = b_secret
    spec = FamilySpec(name="oracle", objective="masked", config_cls=dict, build=lambda c, r: None,
                      tokenizer=lambda c, p: tok, detect=lambda d: False)
    return LoadedModel(spec, None, ChainOracle(ids, alt, a, b), tok)


def test_iterative_fill_is_most_confident_first():
    prefix, secret = "GATTACAG", "CTGAAC"
    entry = [{"id": "c", "prefix": prefix, "secret": secret, "repetitions": 4}]
    model = _oracle_model(prefix, secret, [1.0] * 6)
    rep = ex.extract(model, entry)
    assert rep.method == "fill" and rep.records[0].extracted == secret and rep.records[0].exact
    # a confidently wrong position (logit 8 > 5) is filled first; positions after it then see a wrong
    # neighbour and are filled wrong, those before it are recovered left to right
    model = _oracle_model(prefix, secret, [1.0, 1.0, 8.0, 1.0, 1.0, 1.0])
    got = ex.fill_secrets(model, [prefix], [secret])[0][0]
    shifted = "".join("ACGT"[(alphabet.encode(c)[0] + 1) % 4] for c in secret[2:])
    assert alphabet.decode(got) == secret[:2] + shifted
    # the filling order itself
    lay = ex.fill_layout(model.tokenizer, alphabet.encode(prefix), alphabet.encode(secret))
    graphdef, params = nnx.split(model.module)
    allowed = np.zeros((1, 6, 16), bool)
    allowed[..., 7:11] = True
    _, order, _ = jax.jit(lambda p, i, m, q, al: ex.fill_masks(nnx.merge(graphdef, p), i, m, q, al, 3))(
        params, jnp.asarray(lay.ids[None]), jnp.ones((1, lay.ids.shape[0]), bool),
        jnp.asarray(lay.positions[None].astype(np.int32)), jnp.asarray(allowed))
    assert np.asarray(order)[0].tolist() == [1, 2, 0, 3, 4, 5]


def test_kmer_fill_layout_constrains_straddling_tokens():
    tok = nt_kmer_tokenizer(1)
    prefix = alphabet.encode("ACGTACGTAC")                   # 10 nt: the second 6-mer straddles
    secret = alphabet.encode("GGTCA")
    lay = ex.fill_layout(tok, prefix, secret)
    # tokens: <cls>, 6-mer [0,6), 6-mer [6,12) (4 prefix + 2 secret bases), singles 12, 13, 14
    assert lay.positions.tolist() == [2, 3, 4, 5] and lay.widths.tolist() == [6, 1, 1, 1]
    assert lay.starts.tolist() == [6, 12, 13, 14]
    vocab = ex._Vocab(tok, tok.vocab_size)
    allowed = vocab.allowed(6, lay.known[0])
    assert allowed.sum() == 16
    strings = [vocab.strings[i] for i in np.flatnonzero(allowed)]
    assert all(s.startswith("GTAC") for s in strings)
    assert vocab.allowed(1, lay.known[1]).sum() == 4
    assert codes_to_index(index_to_codes(77, 5)) == 77
