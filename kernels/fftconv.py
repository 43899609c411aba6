"""Long causal convolution through the FFT (the Hyena long filter), always computed in float32.

A causal linear convolution of a length-``L`` signal with a length-``L`` filter is the first ``L``
outputs of a circular convolution of length ``N >= 2L - 1`` of the zero-padded sequences, i.e.
``irfft(rfft(u, N) * rfft(k, N))[:L]``. Any such ``N`` gives the same result up to rounding, so
:func:`fft_length` picks a fast one: the smallest even 2,3,5-smooth number ``>= 2L`` (FFT
libraries, cuFFT included, run these radices natively; an arbitrary ``2L`` may contain a large
prime factor and a plain next power of two can be almost twice as long).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


@functools.cache
def fft_length(length: int, policy: str = "smooth") -> int:
    """FFT size for a causal linear convolution of ``length`` samples.

    Args:
      length: signal (and filter) length ``L >= 1``.
      policy: ``"smooth"`` -> smallest even number ``>= 2L`` whose only prime factors are 2, 3
        and 5; ``"pow2"`` -> smallest power of two ``>= 2L``; ``"exact"`` -> ``2L`` (what the
        HyenaDNA reference uses).
    Returns:
      the FFT length ``N`` (``N >= 2L``, so no circular wrap-around reaches the first ``L`` outputs).
    """
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    target = 2 * length
    if policy == "exact":
        return target
    if policy == "pow2":
        return 1 << (target - 1).bit_length()
    if policy != "smooth":
        raise ValueError(f"unknown FFT length policy {policy!r} (smooth, pow2, exact)")
    best = 1 << (target - 1).bit_length()
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            # smallest power of two lifting p35 to the target; it must be >= 2 to keep N even
            m = p35 * 2
            while m < target:
                m *= 2
            best = min(best, m)
            p35 *= 3
        p5 *= 5
    return best


def fftconv(u: jax.Array, k: jax.Array, d: jax.Array | None = None, *, fft_len: int | None = None,
            out_dtype=None) -> jax.Array:
    """Depthwise causal convolution ``y[t, c] = sum_{s<=t} k[t-s, c] u[s, c] + d[c] u[t, c]``.

    The FFT, the product and the skip term are computed in float32 whatever the input dtype.

    Args:
      u: input ``[..., L, C]`` (time on axis -2, channels last).
      k: filter ``[L, C]`` (or ``[..., L, C]`` broadcastable against ``u``), time on axis -2.
      d: optional skip weights ``[C]``.
      fft_len: FFT size (default :func:`fft_length` ``(L)``); must be ``>= 2L - 1``.
      out_dtype: dtype of the result (default ``u.dtype``).
    Returns:
      ``[..., L, C]`` in ``out_dtype``.
    """
    length = u.shape[-2]
    if k.shape[-2] != length:
        raise ValueError(f"filter length {k.shape[-2]} != signal length {length}")
    n = fft_length(length) if fft_len is None else int(fft_len)
    if n < 2 * length - 1:
        raise ValueError(f"fft_len {n} < 2L-1 = {2 * length - 1}: the circular convolution would wrap")
    out_dtype = u.dtype if out_dtype is None else out_dtype
    u32 = u.astype(jnp.float32)
    # transform along the last axis: FFT libraries work on contiguous innermost dimensions
    uf = jnp.fft.rfft(jnp.swapaxes(u32, -1, -2), n=n, axis=-1)
    kf = jnp.fft.rfft(jnp.swapaxes(k.astype(jnp.float32), -1, -2), n=n, axis=-1)
    y = jnp.fft.irfft(uf * kf, n=n, axis=-1)[..., :length]
    y = jnp.swapaxes(y, -1, -2)
    if d is not None:
        y = y + u32 * d.astype(jnp.float32)
    return y.astype(out_dtype)


def causal_conv_step(history: jax.Array, k_window: jax.Array, u_t: jax.Array,
                     d: jax.Array | None = None) -> jax.Array:
    """One output of the causal convolution from a cached history (incremental decoding).

    Args:
      history: ``[B, M, C]`` past inputs at absolute positions ``0..M-1`` (the current input
        already written at its position; positions after it are zero or ignored).
      k_window: ``[B, M, C]`` or ``[M, C]`` filter aligned to the history: ``k_window[s] =
        k[t - s]`` for ``s <= t`` and 0 for ``s > t``.
      u_t: ``[B, C]`` the current input (for the skip term).
      d: optional skip weights ``[C]``.
    Returns:
      float32 ``[B, C]``: ``sum_s k_window[s] * history[s] + d * u_t``.
    """
    # depthwise: a multiply-reduce over time (a fused reduction), not a matmul
    y = jnp.sum(history.astype(jnp.float32) * k_window.astype(jnp.float32), axis=-2)
    if d is not None:
        y = y + u_t.astype(jnp.float32) * d.astype(jnp.float32)
    return y
