"""Mamba (S6) selective scan: ``h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t x_t``, ``y_t = C_t·h_t + D x_t``.

Three implementations of the same function, all computing in float32:

* :func:`selective_scan_chunked` (the fast one, default of :func:`selective_scan`). The length is
  cut into chunks of ``T`` steps. Phase 1 runs the recurrence inside *all chunks at once* from a
  zero state (a ``lax.scan`` of only ``T`` steps over a ``[R, n_chunks, D, N]`` state; ``y`` is
  contracted with ``C`` inside the step, so the ``[R, L, D, N]`` state history is never stored).
  Phase 2 carries the chunk-boundary states across chunks with an associative scan over the
  chunk axis (``n_chunks`` elements of ``[R, D, N]``). Phase 3 adds the carried state's
  contribution ``C_t · (exp(A · cumsum(Δ)_t) ⊙ h_chunk_start)`` in one fused reduction. Decays are
  handled in log space as differences of cumulative sums of ``Δ A`` that are always ``<= 0``
  (``A < 0``, ``Δ > 0``), so no ``exp`` can overflow; they only underflow to 0, which is the true
  value to fp32 precision. Sequential depth: ``T + log2(n_chunks)`` instead of ``L``.
  With ``inner="segsum"`` phase 1 has no sequential part: each chunk's outputs are the masked
  segment sums ``y_t = Σ_{s<=t} Σ_n C_tn exp(A_n (cum_t - cum_s)) Δ_s B_sn x_s`` (differences of
  cumulative sums, exponent <= 0), reduced in fused kernels: ``T`` times the exponentials of the
  sequential inner loop but no per-step state traffic (suits small chunks, e.g. 8-32).
* :func:`selective_scan_associative`: ``lax.associative_scan`` over the whole length on the
  materialised ``[R, L, D, N]`` decay/input tensors (simple, parallel, memory-hungry).
* :func:`selective_scan_sequential`: the step-by-step recurrence (reference for tests).

Shapes (R = rows, i.e. batch; L = length; D = channels; N = state size):
``x``, ``dt``, ``z``: ``[R, L, D]``; ``A``: ``[D, N]`` or per-row ``[R, D, N]``; ``B``, ``C``:
``[R, L, N]``; ``D``: ``[D]`` or ``[R, D]``; state ``[R, D, N]``. ``dt`` is the step size Δ
after ``softplus`` (positive). Outputs are float32 ``[R, L, D]``.

Per-row ``A``/``D`` let callers batch several parameter sets through one scan (Caduceus runs the
forward and the reverse Mamba of a BiMamba layer, and both strands of its RC-equivariant variant,
as one call).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

F32 = jnp.float32


def default_chunk_size(length: int) -> int:
    """Chunk length used by :func:`selective_scan_chunked` when none is given: a power of two
    near ``sqrt(length)``, clamped to [16, 256] (balances the ``T`` sequential steps of phase 1
    against the size of the chunk-carry scan)."""
    t = 1 << max(0, math.ceil(math.log2(max(1.0, math.sqrt(max(length, 1))))))
    return int(min(256, max(16, t)))


def _prep(x, dt, A, B, C, D, z, initial_state):
    x, dt, B, C = (jnp.asarray(a, F32) for a in (x, dt, B, C))
    A = jnp.asarray(A, F32)
    r, _, d = x.shape
    n = A.shape[-1]
    if A.ndim == 2:
        A = A[None]
    if A.shape[1:] != (d, n) or A.shape[0] not in (1, r):
        raise ValueError(f"A must be [D, N] or [R, D, N] with D={d}; got {A.shape}")
    if D is not None:
        D = jnp.asarray(D, F32)
        D = D[None] if D.ndim == 1 else D
    if z is not None:
        z = jnp.asarray(z, F32)
    h0 = None if initial_state is None else jnp.asarray(initial_state, F32)
    return x, dt, A, B, C, D, z, h0, n


def _finish(y, x, D, z):
    if D is not None:
        y = y + x * D[:, None, :]
    if z is not None:
        y = y * jax.nn.silu(z)
    return y


def selective_scan_chunked(x: jax.Array, dt: jax.Array, A: jax.Array, B: jax.Array, C: jax.Array,
                           D: jax.Array | None = None, z: jax.Array | None = None,
                           initial_state: jax.Array | None = None, *, chunk_size: int | None = None,
                           inner: str = "scan", unroll: int | None = None, return_final_state: bool = False):
    """Chunked selective scan (see the module docstring); returns ``y`` float32 ``[R, L, D]``, and
    the final state ``[R, D, N]`` as well when ``return_final_state``.

    Args:
      x, dt, A, B, C, D, z, initial_state: as in the module docstring (``D``, ``z``,
        ``initial_state`` optional: skip term, SiLU gate ``y * silu(z)``, state before step 0).
      chunk_size: steps per chunk (default :func:`default_chunk_size`); any ``L`` works (the last
        chunk is padded with ``Δ = 0`` steps, which leave the state unchanged).
      inner: phase 1 as a ``"scan"`` over the chunk's steps or as masked ``"segsum"`` reductions.
      unroll: unrolling of the phase-1 step loop (``inner="scan"``); default 4 on GPU, where it
        saves loop-iteration overhead, and 1 elsewhere (faster to compile, same speed on CPU).
    """
    if inner not in ("scan", "segsum"):
        raise ValueError(f"unknown inner chunk method {inner!r}; use scan or segsum")
    x, dt, A, B, C, D, z, h_init, n = _prep(x, dt, A, B, C, D, z, initial_state)
    r, length, d = x.shape
    t = int(chunk_size or default_chunk_size(length))
    nc = -(-length // t)
    pad = nc * t - length
    if pad:
        # dt = 0 steps: decay exp(0) = 1 and input 0, so the state passes through unchanged
        pw = ((0, 0), (0, pad), (0, 0))
        xp, dtp, Bp, Cp = (jnp.pad(a, pw) for a in (x, dt, B, C))
    else:
        xp, dtp, Bp, Cp = x, dt, B, C
    xc = xp.reshape(r, nc, t, d)
    dtc = dtp.reshape(r, nc, t, d)
    Bc = Bp.reshape(r, nc, t, n)
    Cc = Cp.reshape(r, nc, t, n)
    a4 = A[:, None]  # [R|1, 1, D, N], broadcasts against the [R, nc, D, N] chunk states

    cum = jnp.cumsum(dtc, axis=2)  # [R, nc, T, D]: within-chunk cumulative step sizes
    if inner == "scan":
        # Phase 1: the recurrence inside every chunk, all chunks in parallel, from a zero state.
        def step(h, inp):
            x_t, dt_t, b_t, c_t = inp
            h = jnp.exp(dt_t[..., None] * a4) * h + (dt_t * x_t)[..., None] * b_t[:, :, None, :]
            return h, jnp.sum(h * c_t[:, :, None, :], axis=-1)

        xs = tuple(jnp.moveaxis(a, 2, 0) for a in (xc, dtc, Bc, Cc))
        if unroll is None:
            unroll = 4 if jax.default_backend() == "gpu" else 1
        h_end, y_loc = lax.scan(step, jnp.zeros((r, nc, d, n), F32), xs, unroll=max(1, min(unroll, t)))
        y_loc = jnp.moveaxis(y_loc, 0, 2)  # [R, nc, T, D]
    else:
        y_loc, h_end = _segsum_chunks(xc, dtc, cum, Bc, Cc, a4)

    # Phase 2: state entering each chunk. Chunk c maps h -> exp(A * sum(dt_c)) h + h_end_c; the
    # log-decays are <= 0 and are summed, never exponentiated with a positive sign.
    log_decay = cum[:, :, -1, :, None] * a4  # [R, nc, D, N]

    def combine(left, right):
        la1, h1 = left
        la2, h2 = right
        return la1 + la2, jnp.exp(la2) * h1 + h2

    if nc > 1:
        la_in, h_in = lax.associative_scan(combine, (log_decay, h_end), axis=1)
    else:
        la_in, h_in = log_decay, h_end
    if h_init is not None:
        h_in = h_in + jnp.exp(la_in) * h_init[:, None]
        start = jnp.concatenate([h_init[:, None], h_in[:, :-1]], axis=1)
    else:
        start = jnp.concatenate([jnp.zeros_like(h_in[:, :1]), h_in[:, :-1]], axis=1)
    final = h_in[:, -1]

    # Phase 3: contribution of the state entering the chunk, decayed to each step of the chunk.
    decay = jnp.exp(cum[..., None] * a4[:, :, None])  # [R, nc, T, D, N], fused into the reduction
    y_carry = jnp.sum(decay * start[:, :, None] * Cc[:, :, :, None, :], axis=-1)
    y = (y_loc + y_carry).reshape(r, nc * t, d)[:, :length]
    y = _finish(y, x, D, z)
    return (y, final) if return_final_state else y


def _segsum_chunks(xc, dtc, cum, Bc, Cc, a4):
    """Phase 1 without a loop: per chunk, outputs and final state from a zero start state.

    ``xc, dtc, cum [R, nc, T, D]``, ``Bc, Cc [R, nc, T, N]``, ``a4 [R|1, 1, D, N]`` ->
    ``(y [R, nc, T, D], h_end [R, nc, D, N])``. Broadcasts are ordered so every reduction runs
    over trailing axes (``s, N`` / ``s``) and fuses with the exponentials (nothing of size
    ``T^2 D N`` is stored).
    """
    t = xc.shape[2]
    u = dtc * xc  # Δ_s x_s
    causal = jnp.tril(jnp.ones((t, t), bool))  # [t, s]: s <= t
    # [R, nc, t, D, s, 1]: cum_t - cum_s >= 0 for s <= t (clamped where masked out)
    seg = jnp.maximum(cum[:, :, :, :, None] - jnp.swapaxes(cum, 2, 3)[:, :, None], 0.0)[..., None]
    a6 = a4[:, :, None, :, None, :]  # [R|1, 1, 1, D, 1, N]
    decay = jnp.where(causal[None, None, :, None, :, None], jnp.exp(seg * a6), 0.0)
    w = Bc[:, :, None, None, :, :] * Cc[:, :, :, None, None, :]  # [R, nc, t, 1, s, N]
    y = jnp.sum(decay * w * jnp.swapaxes(u, 2, 3)[:, :, None, :, :, None], axis=(-2, -1))
    # final state: decay from each step s to the chunk end, [R, nc, D, N, s]
    to_end = (cum[:, :, -1:, :] - cum)  # [R, nc, s, D], >= 0
    e = jnp.exp(jnp.moveaxis(to_end, 2, -1)[:, :, :, None, :] * a4[..., None])  # [R, nc, D, N, s]
    h_end = jnp.sum(e * jnp.moveaxis(u, 2, -1)[:, :, :, None, :] * jnp.moveaxis(Bc, 2, -1)[:, :, None], axis=-1)
    return y, h_end


def selective_scan_associative(x: jax.Array, dt: jax.Array, A: jax.Array, B: jax.Array, C: jax.Array,
                               D: jax.Array | None = None, z: jax.Array | None = None,
                               initial_state: jax.Array | None = None, *, return_final_state: bool = False):
    """Selective scan as one ``lax.associative_scan`` over the length on materialised
    ``[R, L, D, N]`` tensors (same arguments and results as :func:`selective_scan_chunked`)."""
    x, dt, A, B, C, D, z, h_init, _ = _prep(x, dt, A, B, C, D, z, initial_state)
    decay = jnp.exp(dt[..., None] * A[:, None])  # [R, L, D, N]
    inp = (dt * x)[..., None] * B[:, :, None, :]
    if h_init is not None:
        inp = inp.at[:, 0].add(decay[:, 0] * h_init)

    def combine(left, right):
        a1, b1 = left
        a2, b2 = right
        return a1 * a2, a2 * b1 + b2

    _, h = lax.associative_scan(combine, (decay, inp), axis=1)
    y = jnp.einsum("rldn,rln->rld", h, C, precision=lax.Precision.HIGHEST)
    y = _finish(y, x, D, z)
    return (y, h[:, -1]) if return_final_state else y


def selective_scan_sequential(x: jax.Array, dt: jax.Array, A: jax.Array, B: jax.Array, C: jax.Array,
                              D: jax.Array | None = None, z: jax.Array | None = None,
                              initial_state: jax.Array | None = None, *, return_final_state: bool = False):
    """Reference: the recurrence one step at a time (``lax.scan`` over all ``L`` steps)."""
    x, dt, A, B, C, D, z, h_init, n = _prep(x, dt, A, B, C, D, z, initial_state)
    r, _, d = x.shape

    def step(h, inp):
        x_t, dt_t, b_t, c_t = inp
        h = jnp.exp(dt_t[..., None] * A) * h + (dt_t * x_t)[..., None] * b_t[:, None, :]
        return h, jnp.sum(h * c_t[:, None, :], axis=-1)

    h0 = jnp.zeros((r, d, n), F32) if h_init is None else h_init
    xs = tuple(jnp.moveaxis(a, 1, 0) for a in (x, dt, B, C))
    final, y = lax.scan(step, h0, xs)
    y = _finish(jnp.moveaxis(y, 0, 1), x, D, z)
    return (y, final) if return_final_state else y


def selective_scan(x: jax.Array, dt: jax.Array, A: jax.Array, B: jax.Array, C: jax.Array,
                   D: jax.Array | None = None, z: jax.Array | None = None,
                   initial_state: jax.Array | None = None, *, method: str = "chunked",
                   chunk_size: int | None = None, inner: str = "scan", return_final_state: bool = False):
    """Selective scan with the chosen ``method`` (``"chunked"``, ``"associative"``,
    ``"sequential"``); see :func:`selective_scan_chunked` for arguments and results."""
    if method == "chunked":
        return selective_scan_chunked(x, dt, A, B, C, D, z, initial_state, chunk_size=chunk_size, inner=inner,
                                      return_final_state=return_final_state)
    if method == "associative":
        return selective_scan_associative(x, dt, A, B, C, D, z, initial_state,
                                          return_final_state=return_final_state)
    if method == "sequential":
        return selective_scan_sequential(x, dt, A, B, C, D, z, initial_state,
                                         return_final_state=return_final_state)
    raise ValueError(f"unknown selective-scan method {method!r}; use chunked, associative or sequential")


def selective_state_update(state: jax.Array, x: jax.Array, dt: jax.Array, A: jax.Array, B: jax.Array,
                           C: jax.Array, D: jax.Array | None = None, z: jax.Array | None = None):
    """One recurrence step (incremental decoding): ``state [R, D, N]``, ``x, dt, z [R, D]``,
    ``B, C [R, N]`` -> ``(y [R, D] float32, new state [R, D, N])``."""
    x, dt, B, C = (jnp.asarray(a, F32) for a in (x, dt, B, C))
    A = jnp.asarray(A, F32)
    h = jnp.exp(dt[..., None] * A) * jnp.asarray(state, F32) + (dt * x)[..., None] * B[:, None, :]
    y = jnp.sum(h * C[:, None, :], axis=-1)
    if D is not None:
        y = y + x * jnp.asarray(D, F32)
    if z is not None:
        y = y * jax.nn.silu(jnp.asarray(z, F32))
    return y, h
