"""Pseudo-log-likelihood kernels: exact PLL against one masked forward per position, strided and
random masks against explicit loops, batch/padding independence of the random masks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_logprob_kernels import ref_position

from glmjax.kernels.logprob import STAT_NAMES
from glmjax.kernels.pll import (
    mask_hash,
    masks_per_copy,
    pll_exact,
    pll_patterns,
    random_patterns,
    strided_patterns,
)

V, D, MASK = 9, 6, 1
_rng = np.random.default_rng(0)
_E = jnp.asarray(_rng.normal(size=(V, D)), jnp.float32)
_W = jnp.asarray(_rng.normal(size=(D, V)), jnp.float32)


def toy_forward(ids, mask):
    """A tiny bidirectional masked LM: embedding, one key-masked attention mixing, projection."""
    h = _E[ids]
    s = jnp.einsum("bld,bmd->blm", h, h)
    s = jnp.where(mask[:, None, :], s, -1e9)
    return (h + jax.nn.softmax(s, axis=-1) @ h) @ _W


def _np(tree):
    return jax.tree_util.tree_map(np.asarray, tree)


def _batch(lengths, n):
    rng = np.random.default_rng(1)
    b = len(lengths)
    ids = np.zeros((b, n), np.int32)
    att = np.zeros((b, n), bool)
    sc = np.zeros((b, n), bool)
    for i, t in enumerate(lengths):
        ids[i, :t] = rng.integers(2, V, size=t)
        ids[i, 0] = 0  # a special token at the front, never scored
        att[i, :t] = True
        sc[i, 1:t] = True
    return ids, att, sc


def toy_forward_np(ids, mask):
    """``toy_forward`` in float64 numpy (the reference)."""
    e, w = np.asarray(_E, np.float64), np.asarray(_W, np.float64)
    h = e[ids]
    s = np.where(mask[:, None, :], np.einsum("bld,bmd->blm", h, h), -1e9)
    a = np.exp(s - s.max(-1, keepdims=True))
    return (h + (a / a.sum(-1, keepdims=True)) @ h) @ w


def loop_reference(ids, att, patterns_of_row):
    """Average over explicit masked copies: one float64 forward per copy, no batching."""
    b, n = ids.shape
    acc = np.zeros((6, b, n))
    cnt = np.zeros((b, n))
    for r in range(b):
        for pat in patterns_of_row(r):
            x = ids[r].copy()
            x[pat] = MASK
            logits = toy_forward_np(x[None], att[r][None])[0]
            for t in np.flatnonzero(pat):
                ref = ref_position(logits[t], int(ids[r, t]))
                for k, name in enumerate(STAT_NAMES):
                    acc[k, r, t] += ref[name]
            cnt[r][pat] += 1
    with np.errstate(invalid="ignore"):
        return acc / cnt, cnt > 0


@pytest.mark.parametrize("copies", [1, 4])
def test_pll_exact_equals_one_forward_per_position(copies):
    ids, att, sc = _batch([7, 5, 9], 10)
    st, valid = _np(jax.jit(lambda i, a, s: pll_exact(toy_forward, i, a, s, MASK, copies))(ids, att, sc))
    ref, _ = loop_reference(ids, att, lambda r: [np.eye(10, dtype=bool)[t] for t in np.flatnonzero(sc[r])])
    np.testing.assert_array_equal(valid, sc)
    for k in range(6):
        np.testing.assert_allclose(st[k][sc], ref[k][sc], rtol=1e-5, atol=1e-5)


def test_pll_strided_equals_loop_and_k_equal_length_is_exact():
    ids, att, sc = _batch([8, 6], 8)
    k = 3
    st, valid = _np(jax.jit(lambda i, a, s: pll_patterns(toy_forward, i, a, s, MASK, strided_patterns(s, k), 2))(
        ids, att, sc))
    ref, cov = loop_reference(ids, att,
                              lambda r: [(np.arange(8) % k == j) & sc[r] for j in range(k)])
    np.testing.assert_array_equal(valid, sc)
    np.testing.assert_array_equal(cov, sc)
    for i in range(6):
        np.testing.assert_allclose(st[i][sc], ref[i][sc], rtol=1e-5, atol=1e-5)
    full, exact = _np(jax.jit(lambda i, a, s: (
        pll_patterns(toy_forward, i, a, s, MASK, strided_patterns(s, 8), 8)[0],
        pll_exact(toy_forward, i, a, s, MASK, 8)[0]))(ids, att, sc))
    np.testing.assert_allclose(full.logp[sc], exact.logp[sc], rtol=1e-6)


def numpy_random_masks(scored_row, row, piece, k, fraction, seed):
    """The documented random-mask rule, recomputed with numpy (lexsort by unscored, hash, position)."""
    n = scored_row.shape[0]
    m = int(masks_per_copy(np.asarray(scored_row.sum()), fraction, xp=np))
    out = []
    for j in range(k):
        h = mask_hash(seed, row, piece, j, np.arange(n), xp=np)
        order = np.lexsort((np.arange(n), h, ~scored_row))
        pat = np.zeros(n, bool)
        pat[order[:m]] = True
        out.append(pat & scored_row)
    return out


def test_random_patterns_follow_rule_and_ignore_padding():
    ids, att, sc = _batch([20, 12, 31], 32)
    rows = np.array([5, 900, 7], np.int32)
    pieces = np.array([0, 2, 0], np.int32)
    rp = jax.jit(random_patterns, static_argnums=(3, 4, 5))
    pats = np.asarray(rp(sc, rows, pieces, 6, 0.15, 3))
    for r in range(3):
        ref = numpy_random_masks(sc[r], rows[r], pieces[r], 6, 0.15, 3)
        np.testing.assert_array_equal(pats[r], np.stack(ref))
        assert (pats[r].sum(-1) == max(1, int(np.floor(0.15 * sc[r].sum() + 0.5)))).all()
    # the same row padded to another bucket gets the same masks
    sc64 = np.zeros((3, 64), bool)
    sc64[:, :32] = sc
    pats64 = np.asarray(rp(sc64, rows, pieces, 6, 0.15, 3))
    np.testing.assert_array_equal(pats64[:, :, :32], pats)
    assert not pats64[:, :, 32:].any()
    # another seed or row gives other masks
    other = np.asarray(rp(sc, rows, pieces, 6, 0.15, 4))
    assert (other != pats).any()


def test_random_pll_averages_over_covering_masks():
    ids, att, sc = _batch([12, 9], 12)
    rows, pieces = np.array([0, 1], np.int32), np.zeros(2, np.int32)
    (st, valid), p = _np(jax.jit(lambda i, a, s, r, q: (
        pll_patterns(toy_forward, i, a, s, MASK, random_patterns(s, r, q, 5, 0.3, 0), 2),
        random_patterns(s, r, q, 5, 0.3, 0)))(ids, att, sc, rows, pieces))
    ref, cov = loop_reference(ids, att, lambda r: list(p[r]))
    np.testing.assert_array_equal(valid, cov & sc)
    for i in range(6):
        np.testing.assert_allclose(st[i][valid], ref[i][valid], rtol=1e-5, atol=1e-5)
    assert np.isnan(st.logp[sc & ~valid]).all()
    assert (p.sum(1) > 1).any()  # some position averaged over several masks


def test_pll_exact_matches_separate_model_forwards():
    """With a real masked LM (NT tiny): exact PLL == L separate masked forward passes."""
    import glmjax.models as gm

    model = gm.build("nt")
    tok = model.tokenizer
    rng = np.random.default_rng(5)
    encs = [tok.encode_codes(rng.integers(0, 4, size=n).astype(np.uint8)) for n in (40, 27)]
    ids, att, sc = tok.pad_batch(encs, max(e.ids.shape[0] for e in encs))
    from flax import nnx

    graphdef, state = nnx.split(model.module)
    fwd = lambda x, m: nnx.merge(graphdef, state)(x, m)
    st, valid = _np(jax.jit(lambda i, a, s: pll_exact(fwd, i, a, s, tok.mask_id, 3))(ids, att, sc))
    for r in range(2):
        for t in np.flatnonzero(sc[r]):
            x = ids[r].copy()
            x[t] = tok.mask_id
            logits = np.asarray(model.logits(x[None], att[r][None]))[0, t]
            z = logits.astype(np.float64)
            lp = z - z.max() - np.log(np.exp(z - z.max()).sum())
            np.testing.assert_allclose(st.logp[r, t], lp[ids[r, t]], rtol=1e-5, atol=1e-5)
