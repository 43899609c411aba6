"""FFT long convolution: FFT sizes, equality with a direct causal convolution, incremental step."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from glmjax.kernels import fftconv as fftconv_mod
from glmjax.kernels.fftconv import causal_conv_step, fft_length

# one compiled program per shape instead of op-by-op dispatch (keeps the CPU suite fast)
fftconv = jax.jit(fftconv_mod.fftconv, static_argnames=("fft_len", "out_dtype"))


def direct_causal_conv(u: np.ndarray, k: np.ndarray, d: np.ndarray | None) -> np.ndarray:
    """fp64 loop: y[b, t, c] = sum_{s<=t} k[t-s, c] u[b, s, c] + d[c] u[b, t, c]."""
    u = np.asarray(u, np.float64)
    k = np.asarray(k, np.float64)
    y = np.zeros_like(u)
    for t in range(u.shape[1]):
        y[:, t] = (k[t::-1] * u[:, :t + 1]).sum(axis=1)
    if d is not None:
        y += u * np.asarray(d, np.float64)
    return y


def _is_smooth(n: int) -> bool:
    for p in (2, 3, 5):
        while n % p == 0:
            n //= p
    return n == 1


@pytest.mark.parametrize("length", [1, 2, 41, 64, 129, 333])
def test_fftconv_equals_direct_convolution(length):
    rng = np.random.default_rng(length)
    u = rng.standard_normal((2, length, 5))
    k = rng.standard_normal((length, 5)) * np.exp(-np.arange(length) / 30.0)[:, None]
    d = rng.standard_normal(5)
    ref = direct_causal_conv(u, k, d)
    for policy in ("smooth", "pow2", "exact"):
        y = fftconv(jnp.asarray(u, jnp.float32), jnp.asarray(k, jnp.float32), jnp.asarray(d, jnp.float32),
                    fft_len=fft_length(length, policy))
        assert y.dtype == jnp.float32 and y.shape == u.shape
        err = np.abs(np.asarray(y, np.float64) - ref).max() / np.abs(ref).max()
        assert err < 2e-6, (length, policy, err)


def test_fftconv_minimal_fft_length_and_no_skip():
    """N = 2L-1 (odd) is the smallest wrap-free size; without D there is no skip term."""
    rng = np.random.default_rng(1)
    length = 37
    u = rng.standard_normal((3, length, 4))
    k = rng.standard_normal((length, 4))
    ref = direct_causal_conv(u, k, None)
    y = fftconv(jnp.asarray(u, jnp.float32), jnp.asarray(k, jnp.float32), fft_len=2 * length - 1)
    assert np.abs(np.asarray(y, np.float64) - ref).max() / np.abs(ref).max() < 2e-6
    with pytest.raises(ValueError, match="wrap"):
        fftconv(jnp.asarray(u, jnp.float32), jnp.asarray(k, jnp.float32), fft_len=2 * length - 2)
    with pytest.raises(ValueError, match="filter length"):
        fftconv(jnp.asarray(u, jnp.float32), jnp.asarray(k[:-1], jnp.float32))


def test_fftconv_bf16_input_computes_in_float32():
    rng = np.random.default_rng(2)
    u = jnp.asarray(rng.standard_normal((2, 50, 6)), jnp.bfloat16)
    k = jnp.asarray(rng.standard_normal((50, 6)), jnp.float32)
    d = jnp.asarray(rng.standard_normal(6), jnp.float32)
    y = fftconv(u, k, d)
    assert y.dtype == jnp.bfloat16
    ref = direct_causal_conv(np.asarray(u.astype(jnp.float32)), np.asarray(k), np.asarray(d))
    y32 = fftconv(u, k, d, out_dtype=jnp.float32)
    assert np.abs(np.asarray(y32, np.float64) - ref).max() / np.abs(ref).max() < 2e-6
    # the bf16 result is the float32 result rounded once
    np.testing.assert_array_equal(np.asarray(y), np.asarray(y32.astype(jnp.bfloat16)))


def test_fft_length_is_minimal_even_smooth():
    for length in range(1, 400):
        n = fft_length(length)
        assert n >= 2 * length and n % 2 == 0 and _is_smooth(n)
        assert not any(_is_smooth(m) for m in range(2 * length, n, 2)), length
        p = fft_length(length, "pow2")
        assert p >= 2 * length and p & (p - 1) == 0 and p < 4 * length
        assert fft_length(length, "exact") == 2 * length
    assert fft_length(1025) == 2160 and fft_length(32768) == 65536 and fft_length(32770) == 65610
    with pytest.raises(ValueError):
        fft_length(0)
    with pytest.raises(ValueError):
        fft_length(10, "prime")


def test_causal_conv_step_matches_fftconv():
    """Each step's output from an absolute-position history equals the FFT convolution."""
    rng = np.random.default_rng(3)
    b, length, c, cap = 2, 23, 4, 30
    u = rng.standard_normal((b, length, c)).astype(np.float32)
    k = rng.standard_normal((cap, c)).astype(np.float32)
    d = rng.standard_normal(c).astype(np.float32)
    full = np.asarray(fftconv(jnp.asarray(u), jnp.asarray(k[:length]), jnp.asarray(d)))
    hist = np.zeros((b, cap, c), np.float32)
    for t in range(length):
        hist[:, t] = u[:, t]
        window = np.zeros((cap, c), np.float32)
        window[:t + 1] = k[t::-1]
        y = np.asarray(causal_conv_step(jnp.asarray(hist), jnp.asarray(window), jnp.asarray(u[:, t]), jnp.asarray(d)))
        np.testing.assert_allclose(y, full[:, t], rtol=1e-5, atol=1e-5)
