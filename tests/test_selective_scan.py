"""Selective scan kernels: chunked == associative == sequential == a float64 NumPy recurrence."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from glmjax.kernels import selective_scan as ss
from glmjax.kernels.selective_scan import default_chunk_size, selective_scan

# jitted once per static configuration: eager op-by-op dispatch of the scans is far slower
_STATIC = ("return_final_state", "chunk_size", "inner")
selective_scan_chunked = jax.jit(ss.selective_scan_chunked, static_argnames=_STATIC)
selective_scan_associative = jax.jit(ss.selective_scan_associative, static_argnames=_STATIC[:1])
selective_scan_sequential = jax.jit(ss.selective_scan_sequential, static_argnames=_STATIC[:1])
selective_state_update = jax.jit(ss.selective_state_update)


def _inputs(seed, r=2, length=45, d=6, n=4, per_row=False, scale_a=1.0, dt_scale=1.0):
    rng = np.random.default_rng(seed)
    f = lambda *s: rng.normal(size=s).astype(np.float32)
    x, z = f(r, length, d), f(r, length, d)
    dt = (np.log1p(np.exp(f(r, length, d))) * dt_scale).astype(np.float32)
    a_shape = (r, d, n) if per_row else (d, n)
    A = (-np.exp(rng.uniform(-1, 1, size=a_shape) * scale_a)).astype(np.float32)
    B, C = f(r, length, n), f(r, length, n)
    D = f(r, d) if per_row else f(d)
    h0 = f(r, d, n)
    return x, dt, A, B, C, D, z, h0


def _numpy_ref(x, dt, A, B, C, D, z, h0):
    """float64 recurrence, written independently of the kernels."""
    x, dt, A, B, C, D, z, h0 = (np.asarray(a, np.float64) for a in (x, dt, A, B, C, D, z, h0))
    r, length, d = x.shape
    A = np.broadcast_to(A, (r, *A.shape[-2:]))
    D = np.broadcast_to(D, (r, d))
    y = np.zeros((r, length, d))
    h = h0.copy()
    for t in range(length):
        h = np.exp(dt[:, t, :, None] * A) * h + (dt[:, t] * x[:, t])[:, :, None] * B[:, t, None, :]
        y[:, t] = np.einsum("rdn,rn->rd", h, C[:, t]) + D * x[:, t]
    y = y * z / (1 + np.exp(-z))
    return y, h


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("per_row", [False, True])
def test_all_methods_match_float64_reference(per_row):
    args = _inputs(0, per_row=per_row)
    ref_y, ref_h = _numpy_ref(*args)
    seq_y, seq_h = selective_scan_sequential(*args, return_final_state=True)
    assert seq_y.dtype == jnp.float32 and seq_y.shape == ref_y.shape
    assert _rel(seq_y, ref_y) <= 1e-5 and _rel(seq_h, ref_h) <= 1e-5
    asc_y, asc_h = selective_scan_associative(*args, return_final_state=True)
    assert _rel(asc_y, ref_y) <= 1e-5 and _rel(asc_h, ref_h) <= 1e-5
    # L = 45 is not a multiple of any of these; 64 > L is a single padded chunk
    cases = [(1, "scan"), (7, "scan"), (64, "scan"), (7, "segsum")] if not per_row else [(7, "scan"), (4, "segsum")]
    for chunk, inner in cases:
        y, h = selective_scan_chunked(*args, chunk_size=chunk, inner=inner, return_final_state=True)
        assert y.shape == ref_y.shape
        assert _rel(y, ref_y) <= 1e-5, (chunk, inner)
        assert _rel(h, ref_h) <= 1e-5, (chunk, inner)


def test_without_optional_terms_and_state():
    x, dt, A, B, C, _, _, _ = _inputs(1, r=3, length=33, d=5, n=3)
    seq = selective_scan_sequential(x, dt, A, B, C)
    for chunk in (11,):
        np.testing.assert_allclose(selective_scan_chunked(x, dt, A, B, C, chunk_size=chunk), seq, rtol=0, atol=1e-5)
    np.testing.assert_allclose(jax.jit(lambda *a: selective_scan(*a, method="associative"))(x, dt, A, B, C), seq,
                               rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="unknown selective-scan method"):
        selective_scan(x, dt, A, B, C, method="fft")
    with pytest.raises(ValueError, match="unknown inner chunk method"):
        selective_scan(x, dt, A, B, C, inner="fft")


def test_chunked_is_stable_under_strong_decay():
    """|Δ A| up to ~3e4 per step: cumulative decays underflow to 0 but nothing overflows."""
    args = _inputs(2, length=70, scale_a=8.0, dt_scale=10.0)
    ref_y, ref_h = _numpy_ref(*args)
    for inner in ("scan", "segsum"):
        y, h = selective_scan_chunked(*args, chunk_size=16, inner=inner, return_final_state=True)
        assert np.isfinite(np.asarray(y)).all() and np.isfinite(np.asarray(h)).all()
        assert _rel(y, ref_y) <= 1e-5 and _rel(h, ref_h) <= 1e-5


def test_state_carries_across_calls():
    """Scanning [0, 20) then [20, 40) from the carried state equals one scan over [0, 40)."""
    x, dt, A, B, C, D, z, h0 = _inputs(3, length=40)
    full = selective_scan_chunked(x, dt, A, B, C, D, z, h0, chunk_size=8, return_final_state=True)
    halves = [tuple(a[:, s] for a in (x, dt, B, C, z)) for s in (slice(0, 20), slice(20, None))]
    state, ys = h0, []
    for xs, dts, bs, cs, zs in halves:
        y, state = selective_scan_chunked(xs, dts, A, bs, cs, D, zs, state, chunk_size=8, return_final_state=True)
        ys.append(y)
    assert _rel(jnp.concatenate(ys, axis=1), full[0]) <= 1e-5
    assert _rel(state, full[1]) <= 1e-5


def test_state_update_steps_match_scan():
    x, dt, A, B, C, D, z, h0 = _inputs(4, length=12)
    ref = selective_scan_sequential(x, dt, A, B, C, D, z, h0)
    h = jnp.asarray(h0)
    for t in range(x.shape[1]):
        y, h = selective_state_update(h, x[:, t], dt[:, t], A, B[:, t], C[:, t], D, z[:, t])
        assert _rel(y, ref[:, t]) <= 1e-5


def test_half_precision_inputs_compute_in_float32():
    args = _inputs(5)
    ref = selective_scan_chunked(*args, chunk_size=16)
    half = [jnp.asarray(a, jnp.bfloat16) for a in args]
    y = selective_scan_chunked(*half, chunk_size=16)
    assert y.dtype == jnp.float32
    exact = selective_scan_chunked(*(np.asarray(jnp.asarray(a, jnp.float32)) for a in half), chunk_size=16)
    assert _rel(y, exact) <= 1e-5 and _rel(y, ref) <= 0.1


def test_default_chunk_size():
    assert default_chunk_size(1) == 16
    assert default_chunk_size(1024) == 32
    assert default_chunk_size(8192) == 128
    assert default_chunk_size(131072) == 256
