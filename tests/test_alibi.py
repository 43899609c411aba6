"""ALiBi slopes against the published schedule, the bias layout, and the bias inside attention."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from glmjax.kernels.alibi import alibi_bias, alibi_slopes
from glmjax.kernels.attention import attention


def reference_slopes(n: int) -> list[float]:
    """The ALiBi schedule written from its definition (Press et al.; MosaicBERT/DNABERT-2)."""
    if math.log2(n).is_integer():
        start = 2 ** (-2 ** -(math.log2(n) - 3))
        return [start ** (k + 1) for k in range(n)]
    p = 2 ** math.floor(math.log2(n))
    return reference_slopes(p) + reference_slopes(2 * p)[0::2][: n - p]


@pytest.mark.parametrize("n", range(1, 33))
def test_slopes_match_reference_formula(n):
    ours = alibi_slopes(n)
    assert ours.shape == (n,)
    np.testing.assert_allclose(ours, reference_slopes(n), rtol=1e-13, atol=0)


def test_slopes_closed_forms():
    # 8 heads: 1/2, 1/4, ..., 1/256 exactly; 16 heads interleave sqrt(2) steps
    np.testing.assert_array_equal(alibi_slopes(8), 2.0 ** -np.arange(1, 9))
    np.testing.assert_allclose(alibi_slopes(16), 2.0 ** (-0.5 * np.arange(1, 17)), rtol=1e-13)
    # 12 heads (DNABERT-2-117M): the 8-head slopes, then 2^-0.5, 2^-1.5, 2^-2.5, 2^-3.5
    expect = np.concatenate([2.0 ** -np.arange(1, 9), 2.0 ** -(np.arange(4) + 0.5)])
    np.testing.assert_allclose(alibi_slopes(12), expect, rtol=1e-13)
    with pytest.raises(ValueError):
        alibi_slopes(0)


@pytest.mark.parametrize("heads,lq,lk", [(4, 5, 5), (3, 4, 7), (12, 6, 2)])
def test_bias_is_negative_slope_times_distance(heads, lq, lk):
    b = np.asarray(alibi_bias(heads, lq, lk))
    assert b.shape == (1, heads, lq, lk) and b.dtype == np.float32
    s = alibi_slopes(heads).astype(np.float32)
    i, j = np.arange(lq)[:, None], np.arange(lk)[None, :]
    np.testing.assert_array_equal(b[0], -s[:, None, None] * np.abs(i - j).astype(np.float32)[None])
    if lq == lk:
        np.testing.assert_array_equal(b, np.swapaxes(b, -1, -2))
        assert np.all(np.diagonal(b[0], axis1=-2, axis2=-1) == 0)


def test_bias_inside_attention_matches_explicit_softmax():
    rng = np.random.default_rng(3)
    bsz, n, h, d = 2, 7, 6, 8
    q, k, v = (rng.normal(size=(bsz, n, h, d)).astype(np.float32) for _ in range(3))
    key_mask = np.ones((bsz, n), bool)
    key_mask[1, 5:] = False
    bias = alibi_bias(h, n, n)
    ours = np.asarray(attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v),
                                key_mask=jnp.asarray(key_mask), bias=bias))

    logits = np.einsum("bqhd,bkhd->bhqk", q.astype(np.float64), k) / math.sqrt(d)
    logits = logits + np.asarray(bias, np.float64)
    logits = np.where(key_mask[:, None, None, :], logits, -np.inf)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    ref = np.einsum("bhqk,bkhd->bqhd", p, v)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=2e-6)
