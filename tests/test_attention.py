"""glmjax.kernels.attention: XLA path against a plain softmax reference (CPU); cuDNN against XLA
(GPU only)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from glmjax.kernels.attention import attention, choose_implementation


def _reference(q, k, v, key_mask=None, bias=None, causal=False, scale=None):
    """float64 softmax(q k^T * scale + bias + mask) v over [B, L, H, D] inputs."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) * scale
    if bias is not None:
        logits = logits + np.asarray(bias, np.float64)
    allowed = np.ones(logits.shape, bool)
    if key_mask is not None:
        allowed &= np.asarray(key_mask, bool)[:, None, None, :]
    if causal:
        allowed &= np.tril(np.ones(logits.shape[-2:], bool))
    logits = np.where(allowed, logits, -np.inf)
    logits -= logits.max(-1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(-1, keepdims=True)
    return np.einsum("bhqk,bkhd->bqhd", p, v)


def _qkv(seed, b=3, n=11, h=4, d=8, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return tuple(jnp.asarray(rng.normal(size=(b, n, h, d)), dtype) for _ in range(3))


@jax.default_matmul_precision("highest")  # GPUs would use TF32 for float32 matmuls otherwise
def test_xla_matches_reference_with_padding_bias_and_causal():
    q, k, v = _qkv(0)
    lengths = np.array([11, 6, 1])
    prefix = np.arange(11)[None] < lengths[:, None]
    holes = prefix.copy()
    holes[0, [2, 7]] = False  # a general (non-prefix) mask
    slopes = np.array([0.5, 0.25, 0.125, 0.0625])
    pos = np.arange(11)
    alibi = -slopes[:, None, None] * np.abs(pos[None, :, None] - pos[None, None, :])  # [H, L, L]
    for mask in (None, prefix, holes):
        for bias in (None, alibi, alibi[None]):
            for causal in (False, True):
                got = attention(q, k, v, key_mask=None if mask is None else jnp.asarray(mask),
                                bias=None if bias is None else jnp.asarray(bias, jnp.float32), causal=causal)
                want = _reference(q, k, v, mask, bias, causal)
                # rows with no visible key (causal + fully padded row) are undefined; skip them
                ok = np.ones(want.shape[:2], bool)
                if mask is not None and causal:
                    ok = np.cumsum(mask, axis=1) > 0
                np.testing.assert_allclose(np.asarray(got)[ok], want[ok], rtol=2e-5, atol=2e-5)


@jax.default_matmul_precision("highest")
def test_key_lengths_equal_prefix_mask_on_xla():
    q, k, v = _qkv(1)
    lengths = jnp.asarray([11, 4, 7], jnp.int32)
    mask = jnp.arange(11)[None] < lengths[:, None]
    a = attention(q, k, v, key_mask=mask, key_lengths=lengths, scale=0.3)
    b = attention(q, k, v, key_lengths=lengths, scale=0.3)
    want = _reference(q, k, v, np.asarray(mask), scale=0.3)
    np.testing.assert_allclose(np.asarray(a), want, rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(np.asarray(b), want, rtol=2e-5, atol=2e-5)


def test_implementation_choice():
    assert choose_implementation(jnp.float32) == "xla"
    assert choose_implementation(jnp.bfloat16, "xla") == "xla"
    expected = "cudnn" if jax.default_backend() == "gpu" else "xla"
    assert choose_implementation(jnp.bfloat16) == expected


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN flash attention needs a GPU; the XLA path "
                    "is checked against the reference on CPU")
def test_cudnn_equals_xla_on_gpu():
    q, k, v = _qkv(2, b=4, n=128, h=4, d=64, dtype=jnp.bfloat16)
    lengths = jnp.asarray([128, 100, 37, 1], jnp.int32)
    mask = jnp.arange(128)[None] < lengths[:, None]
    pos = jnp.arange(128)
    alibi = (-0.1 * jnp.abs(pos[:, None] - pos[None, :]))[None, None].astype(jnp.float32)
    for kw in ({"key_mask": mask}, {"key_mask": mask, "key_lengths": lengths}, {"bias": alibi},
               {"key_mask": mask, "bias": alibi}, {"causal": True}, {"key_lengths": lengths, "causal": True}):
        x = np.asarray(attention(q, k, v, implementation="xla", **kw), np.float32)
        c = np.asarray(attention(q, k, v, implementation="cudnn", **kw), np.float32)
        assert np.abs(c - x).max() / np.abs(x).max() < 2e-2, kw


def test_vmapped_attention_equals_each_model():
    """An ensemble (vmap over a leading model axis) with key lengths, masks and biases gives each
    model's own attention (on GPU this goes through cuDNN's batching rule)."""
    dtype = jnp.bfloat16 if jax.default_backend() == "gpu" else jnp.float32
    tol = 2e-2 if dtype == jnp.bfloat16 else 1e-5
    qkv = [_qkv(10 + m, b=2, n=64, h=2, d=32, dtype=dtype) for m in range(3)]
    q, k, v = (jnp.stack([x[i] for x in qkv]) for i in range(3))
    lengths = jnp.asarray([[64, 20], [33, 64], [1, 50]], jnp.int32)
    mask = jnp.arange(64)[None, None] < lengths[..., None]
    pos = jnp.arange(64)
    alibi = (-0.1 * jnp.abs(pos[:, None] - pos[None, :]))[None, None].astype(jnp.float32)
    cases = {"lengths": lambda q, k, v, n, m: attention(q, k, v, key_lengths=n),
             "lengths+causal": lambda q, k, v, n, m: attention(q, k, v, key_lengths=n, causal=True),
             "mask": lambda q, k, v, n, m: attention(q, k, v, key_mask=m),
             "mask+bias": lambda q, k, v, n, m: attention(q, k, v, key_mask=m, bias=alibi)}
    for name, f in cases.items():
        got = np.asarray(jax.jit(jax.vmap(f))(q, k, v, lengths, mask), np.float32)
        for m in range(3):
            want = np.asarray(jax.jit(f)(q[m], k[m], v[m], lengths[m], mask[m]), np.float32)
            assert np.abs(got[m] - want).max() <= tol * np.abs(want).max(), (name, m)
