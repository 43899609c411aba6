"""``gelu(x @ w + b)`` in one kernel on Hopper GPUs: the exact (erf) GELU in the GEMM epilogue.

The feed-forward block of the Nucleotide Transformer v1 applies the exact GELU to the output of
its first projection. cuBLAS can only fuse the tanh approximation into a GEMM, so XLA writes the
pre-activation to memory and reads it back for the GELU: one memory-bound pass over a ``[B*L, 4d]``
tensor per layer. :func:`matmul_bias_gelu` removes that pass with a warp-specialised Pallas
Mosaic GPU kernel (a producer warpgroup's TMA loads into a multi-stage shared-memory pipeline,
WGMMA into float32 accumulators in two consumer warpgroups that take alternate output tiles so
that one's epilogue overlaps the other's main loop, persistent over the SMs; see
:class:`GemmConfig`). The epilogue adds the
bias and applies the GELU to the float32 accumulator before the single rounding to the output
dtype, so the result is at least as accurate as rounding the GEMM output first.

In-kernel erfc: ``gelu(z) = z * erfc(-z / sqrt 2) / 2`` with ``erfc(u) = t exp(-u^2 + P(t))``,
``t = 1 / (1 + |u| / 2)`` (the form of Numerical Recipes' ``erfcc``) and a degree-5 polynomial
``P`` fitted for this module; ``1 / y`` is ``rsqrt(y)^2`` and ``exp`` is ``exp2``, so that the
epilogue needs two hardware special-function instructions and a few FMAs per element (the
epilogue is the kernel's cost beyond the GEMM itself: a degree-9 ``P`` made the kernel 8 % slower).
Wherever the GELU is a normal float32 it is within 2.6e-5 of the float64 value, relative (the
fit contributes 7.6e-6, float32 evaluation of the exponent the rest, in the far negative tail),
far inside one bf16 (2^-8) or fp16 (2^-11) rounding step.

Speed (H200; BENCHMARKS.md): in isolation the kernel is 1-15 % faster than cuBLAS's GEMM + bias
followed by XLA's GELU pass at NT-v1-500M's fc1 shape (and 3-20 % faster than the cooperative
schedule), its margin set by the card's temperature; inside the model the forward pass takes
2.5 % less device time with the kernel.

:func:`supported` says whether a call can take this path (a Hopper GPU, 16-bit operands, shapes
that fit the tiles of the configuration :func:`config_for` picks); :func:`dense_gelu` takes it
where it can and otherwise calls the caller's unfused function; :func:`matmul_bias_gelu`
differentiates (the backward pass recomputes the pre-activation with XLA); :func:`reference` is
the same function in XLA operations. The fused path is on by default; ``GLMJAX_FUSED_GELU=0``
turns it off.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import warnings

import jax
import jax.numpy as jnp
from jax import lax

try:  # Pallas' Mosaic GPU backend (experimental in JAX; absent from some builds)
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import mosaic_gpu as plgpu
except Exception:  # noqa: BLE001 - any import failure means the kernel is unavailable
    pl = plgpu = None

# erfc(u) = t exp(-u^2 + P(t)), t = 1 / (1 + u / 2), u >= 0: the form of Numerical Recipes'
# ``erfcc`` with a degree-5 P fitted (weighted least squares towards minimax) to log(erfcx(u) / t)
# over u in [0, 9.5]; the fit's largest error there is 7.6e-6, relative to erfc.
_ERFC_COEFFS = (-1.266542003587746, 1.0180168875986542, 0.25442765310055354, 0.47452545839126675,
                -0.7092216095681378, 0.2288012586679691)
_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_LOG2E = 1.0 / math.log(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


@dataclasses.dataclass(frozen=True)
class GemmConfig:
    """Tiling and schedule of :func:`matmul_bias_gelu`.

    Both schedules keep one producer warpgroup issuing TMA loads of ``tile_k`` columns of ``x``
    (and rows of ``w``) into ``stages`` shared-memory slots, and two consumer warpgroups running
    WGMMA into float32 accumulators of ``tile_m x tile_n``; CTAs are persistent over the SMs.

    ``"pingpong"``: each consumer owns whole output tiles, the two taking alternate tiles, so that
    one warpgroup's epilogue (bias, GELU, store) overlaps the other's main loop. Every tile uses
    each pipeline slot an even number of times: ``K / tile_k`` must be a multiple of
    ``2 * stages`` (see :func:`config_for`).
    ``"cooperative"``: both consumers share one CTA block, side by side along N (``split="n"``)
    or stacked along M (``split="m"``), and run their epilogues at the same time.

    Results leave through ``epi_m x epi_n`` shared-memory tiles. Output tiles are visited along a
    snake of ``grid_tile_width`` tiles across the minor dimension (N if ``n_minor``) for L2 reuse.
    """

    tile_m: int = 128
    tile_n: int = 128
    tile_k: int = 64
    stages: int = 5
    schedule: str = "pingpong"
    split: str = "m"
    epi_m: int = 64
    epi_n: int = 64
    n_minor: bool = True
    grid_tile_width: int = 8
    approx_math: bool = True  # hardware rsqrt/exp2 (relative error near 2^-22) in the GELU

    def __post_init__(self):
        if self.schedule not in ("cooperative", "pingpong"):
            raise ValueError(f"GemmConfig.schedule must be 'cooperative' or 'pingpong', got {self.schedule!r}")
        if self.split not in ("m", "n"):
            raise ValueError(f"GemmConfig.split must be 'm' or 'n', got {self.split!r}")
        if self.tile_m % self.epi_m or self.tile_n % self.epi_n:
            raise ValueError("GemmConfig: the epilogue tile must divide the warpgroup tile")
        if self.stages < 1:
            raise ValueError(f"GemmConfig.stages must be at least 1, got {self.stages}")


# the fastest measured at NT-v1-500M's fc1 shape (BENCHMARKS.md), and the fallbacks of config_for
DEFAULT_CONFIG = GemmConfig()
PINGPONG_STAGES = (5, 4, 3)
COOPERATIVE_CONFIG = GemmConfig(tile_m=64, tile_n=256, tile_k=128, stages=2, schedule="cooperative")


def _erfc_neg(z: jax.Array) -> jax.Array:
    """``erfc(-z / sqrt 2) = 2 Phi(z)`` of float32 ``z``, written with ``rsqrt`` and ``exp2`` so
    that the kernel (compiled with approximate math) maps each to one hardware instruction."""
    u = z * (-_INV_SQRT2)
    a = jnp.abs(u)
    r = lax.rsqrt(1.0 + 0.5 * a)
    t = r * r
    p = jnp.full_like(t, _ERFC_COEFFS[-1])
    for c in _ERFC_COEFFS[-2::-1]:
        p = p * t + c
    e = t * jnp.exp2((p - a * a) * _LOG2E)  # erfc(|u|)
    return jnp.where(u >= 0, e, 2.0 - e)


def gelu_f32(z: jax.Array) -> jax.Array:
    """Exact GELU ``z * Phi(z)`` of float32 ``z`` through the in-kernel erfc (see module doc)."""
    return (0.5 * z) * _erfc_neg(z)


def gelu_f32_grad(z: jax.Array) -> jax.Array:
    """``d gelu / dz = Phi(z) + z phi(z)`` of float32 ``z`` (the exact derivative, with the same erfc)."""
    return 0.5 * _erfc_neg(z) + z * jnp.exp(-0.5 * z * z) * _INV_SQRT_2PI


def reference(x: jax.Array, w: jax.Array, b: jax.Array | None, out_dtype=None) -> jax.Array:
    """The same function with XLA ops: float32 accumulation, bias and GELU, one rounding."""
    out_dtype = out_dtype or x.dtype
    z = jnp.dot(x, w, preferred_element_type=jnp.float32)
    if b is not None:
        z = z + b.astype(jnp.float32)
    return gelu_f32(z).astype(out_dtype)


def _hopper() -> bool:
    try:
        dev = jax.devices()[0]
    except RuntimeError:
        return False
    if dev.platform != "gpu":
        return False
    cc = getattr(dev, "compute_capability", None)
    return str(cc).split(".")[0] == "9"


def supported(x_shape, w_shape, dtype, config: GemmConfig | None = None) -> bool:
    """True when :func:`matmul_bias_gelu` runs the fused kernel for these operands (else it
    raises): Mosaic GPU available, a Hopper (sm_90) default device and :func:`shapes_fit` for
    ``config`` (None: the configuration :func:`config_for` picks)."""
    if config is None:
        config = config_for(x_shape, w_shape, dtype)
        if config is None:
            return False
    return plgpu is not None and _hopper() and shapes_fit(x_shape, w_shape, dtype, config)


def shapes_fit(x_shape, w_shape, dtype, config: GemmConfig = DEFAULT_CONFIG) -> bool:
    """bf16/fp16 operands ``x [M, K]``, ``w [K, N]`` with ``M`` at least the CTA block's rows
    (any multiple of it or not), ``N`` a multiple of its columns and ``K`` of ``tile_k`` (for
    the ping-pong schedule: of ``2 * stages * tile_k``)."""
    if jnp.dtype(dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        return False
    if len(x_shape) != 2 or len(w_shape) != 2 or x_shape[1] != w_shape[0]:
        return False
    m, k = x_shape
    n = w_shape[1]
    cta_m, cta_n = _cta_block(config)
    if not (m >= cta_m and n % cta_n == 0 and k % config.tile_k == 0):
        return False
    # ping-pong: every tile uses each pipeline slot an even number of times (see _body_pingpong)
    return config.schedule != "pingpong" or (config.stages >= 2 and (k // config.tile_k) % (2 * config.stages) == 0)


def config_for(x_shape, w_shape, dtype) -> GemmConfig | None:
    """The configuration for these operands: :data:`DEFAULT_CONFIG` (ping-pong, 5 stages) where
    it fits, else the same tiles with 4 or 3 stages, else :data:`COOPERATIVE_CONFIG`; None where
    no configuration fits (the caller computes without the kernel)."""
    for stages in PINGPONG_STAGES:
        cfg = dataclasses.replace(DEFAULT_CONFIG, stages=stages)
        if shapes_fit(x_shape, w_shape, dtype, cfg):
            return cfg
    return COOPERATIVE_CONFIG if shapes_fit(x_shape, w_shape, dtype, COOPERATIVE_CONFIG) else None


def _cta_block(cfg: GemmConfig) -> tuple[int, int]:
    if cfg.schedule == "pingpong":
        return cfg.tile_m, cfg.tile_n
    if cfg.split == "m":
        return 2 * cfg.tile_m, cfg.tile_n
    return cfg.tile_m, 2 * cfg.tile_n


def enabled() -> bool:
    """The fused path is on unless the environment sets ``GLMJAX_FUSED_GELU=0``."""
    return os.environ.get("GLMJAX_FUSED_GELU", "1").strip().lower() not in ("0", "false", "no", "off")


def _batched(*arrays) -> bool:
    """True for values traced under ``vmap`` (the Mosaic GPU kernel has no batching rule). The
    tracer class is matched by name: JAX does not export it under a stable path."""
    return any(any(c.__name__ == "BatchTracer" for c in type(a).__mro__) for a in arrays if a is not None)


def dense_gelu(x: jax.Array, w: jax.Array, b: jax.Array | None, fallback) -> jax.Array:
    """``gelu(x @ w + b)`` over the last axis of ``x`` (``w [K, N]`` already in ``x.dtype``):
    the fused kernel where :func:`supported` and :func:`enabled` (and not under ``vmap``), else
    ``fallback(x)``, the caller's unfused computation of the same function."""
    x2 = x.reshape(-1, x.shape[-1])
    cfg = config_for(x2.shape, w.shape, x.dtype)  # None: no configuration fits these shapes
    if (enabled() and cfg is not None and w.dtype == x.dtype and supported(x2.shape, w.shape, x.dtype, cfg)
            and not _batched(x, w, b) and _lowers(x2.shape, w.shape, x.dtype, None if b is None else b.dtype, cfg)):
        return matmul_bias_gelu(x2, w, b, cfg).reshape(*x.shape[:-1], w.shape[1])
    return fallback(x)


_LOWERS: dict[tuple, bool] = {}


def _lowers(x_shape, w_shape, dtype, bias_dtype, config: GemmConfig) -> bool:
    """Whether the kernel lowers for these operands with the installed JAX (checked once per
    shape). Pallas' Mosaic GPU API is experimental: should a JAX release change it, models fall
    back to the unfused computation with a warning instead of failing."""
    key = (tuple(x_shape), tuple(w_shape), jnp.dtype(dtype).name,
           None if bias_dtype is None else jnp.dtype(bias_dtype).name, config)
    if key not in _LOWERS:
        bias = None if bias_dtype is None else jax.ShapeDtypeStruct((w_shape[1],), bias_dtype)
        try:
            _fused.lower(jax.ShapeDtypeStruct(x_shape, dtype), jax.ShapeDtypeStruct(w_shape, dtype), bias, config)
            _LOWERS[key] = True
        except Exception as e:  # noqa: BLE001 - any failure means: use the unfused path
            warnings.warn(f"glmjax: the fused GEMM + GELU kernel does not lower with JAX {jax.__version__} "
                          f"({type(e).__name__}: {str(e)[:200]}); using the unfused computation", stacklevel=2)
            _LOWERS[key] = False
    return _LOWERS[key]


def _transforms(block_minor: int, dtype):
    swizzle = plgpu.find_swizzle(block_minor * jnp.dtype(dtype).itemsize * 8)
    return (plgpu.TilingTransform((8, swizzle // jnp.dtype(dtype).itemsize)), plgpu.SwizzleTransform(swizzle))


def _epilogue(acc, b_gmem, out_smem, out_gmem, row0, col0, cfg: GemmConfig):
    """Bias and GELU on a warpgroup's float32 ``tile_m x tile_n`` accumulator, stored at
    ``(row0, col0)`` through ``epi_m x epi_n`` tiles, alternating between the warpgroup's two
    shared-memory slots ``out_smem``."""
    tm, tn = acc.shape
    if b_gmem is not None:
        bias = plgpu.load(b_gmem.at[pl.ds(col0, tn)], (), layout=plgpu.Layout.WGMMA.reduce(0), optimized=False)
        acc = acc + lax.broadcast_in_dim(bias.astype(jnp.float32), (tm, tn), (1,))
    plgpu.wait_smem_to_gmem(0, wait_read_only=True)
    for ei in range(tm // cfg.epi_m):
        for ej in range(tn // cfg.epi_n):
            slot = (ei * (tn // cfg.epi_n) + ej) % 2
            z = acc[ei * cfg.epi_m:(ei + 1) * cfg.epi_m, ej * cfg.epi_n:(ej + 1) * cfg.epi_n]
            y = gelu_f32(z).astype(out_gmem.dtype)
            plgpu.wait_smem_to_gmem(1, wait_read_only=True)
            out_smem[slot] = y
            plgpu.commit_smem()
            plgpu.copy_smem_to_gmem(out_smem.at[slot], out_gmem.at[pl.ds(row0 + ei * cfg.epi_m, cfg.epi_m),
                                                                 pl.ds(col0 + ej * cfg.epi_n, cfg.epi_n)])


def _body(x_gmem, w_gmem, b_gmem, out_gmem, *, cfg: GemmConfig):
    """The cooperative schedule: Pallas' warp-specialised pipeline over K for each CTA block."""
    m, k = x_gmem.shape
    n = w_gmem.shape[1]
    tm, tn, tk = cfg.tile_m, cfg.tile_n, cfg.tile_k
    cta_m, cta_n = _cta_block(cfg)
    # a last, partial row block reads zeros past row M and its stores there are dropped (TMA
    # bounds handling), so M need not be a multiple of the block
    m_iters, n_iters, k_iters = -(-m // cta_m), n // cta_n, k // tk
    out_dtype = out_gmem.dtype
    in_tr = _transforms(tk, x_gmem.dtype)
    slots = min(2, (tm // cfg.epi_m) * (tn // cfg.epi_n))

    def pipeline(step, context):
        return plgpu.emit_pipeline_warp_specialized(
            step, grid=(k_iters,), memory_registers=40, wg_axis="wg", num_compute_wgs=2,
            max_concurrent_steps=cfg.stages, compute_context=context,
            in_specs=[plgpu.BlockSpec((cta_m, tk), lambda i: (0, i), transforms=in_tr, memory_space=plgpu.SMEM),
                      plgpu.BlockSpec((tk, cta_n), lambda i: (i, 0), transforms=in_tr, memory_space=plgpu.SMEM)])

    def ignore(*_, **__):
        return None

    @functools.partial(pl.run_scoped,
                       allocs=pipeline(ignore, ignore).get_allocations(x_gmem, w_gmem),
                       out_smem=plgpu.SMEM((2, slots, cfg.epi_m, cfg.epi_n), out_dtype,
                                           transforms=_transforms(cfg.epi_n, out_dtype)),
                       collective_axes="wg")
    def _scope(allocs, out_smem):
        wg = lax.axis_index("wg")
        minor = 1 if cfg.n_minor else 0

        @plgpu.nd_loop((m_iters * n_iters,), collective_axes="sm")
        def _tile(info):
            (lin,) = getattr(info, "index", info)
            mi, ni = plgpu.planar_snake(lin, (m_iters, n_iters), minor, cfg.grid_tile_width)
            by_m = cfg.split == "m"
            row0 = mi * cta_m + (wg * tm if by_m else 0)
            col0 = ni * cta_n + (0 if by_m else wg * tn)

            def context(run):
                @functools.partial(pl.run_scoped, acc_ref=plgpu.ACC((tm, tn), jnp.float32))
                def _acc(acc_ref):
                    run(acc_ref)
                    _epilogue(acc_ref[...], b_gmem, out_smem.at[wg], out_gmem, row0, col0, cfg)

            def step(_, x_smem, w_smem, acc_ref):
                if by_m:
                    plgpu.wgmma(acc_ref, x_smem.at[pl.ds(wg * tm, tm)], w_smem)
                else:
                    plgpu.wgmma(acc_ref, x_smem, w_smem.at[:, pl.ds(wg * tn, tn)])
                plgpu.wgmma_wait(0)
                return acc_ref

            pipeline(step, context)(x_gmem.at[pl.ds(mi * cta_m, cta_m), :], w_gmem.at[:, pl.ds(ni * cta_n, cta_n)],
                                    allocations=allocs)

    plgpu.wait_smem_to_gmem(0, wait_read_only=True)


def _body_pingpong(x_gmem, w_gmem, b_gmem, out_gmem, *, cfg: GemmConfig, num_sms: int):
    """The ping-pong schedule. CTA ``sm`` owns output tiles ``sm, sm + num_sms, ...`` (local
    tiles 0, 1, ...); warpgroup 2 loads every local tile's K steps into the ``stages`` slots in
    turn (``full``: data arrived, ``empty``: slot free), warpgroups 0 and 1 take the even and the
    odd local tiles, their main loops ordered by the ``turn`` barriers."""
    m, k = x_gmem.shape
    n = w_gmem.shape[1]
    tm, tn, tk, stages = cfg.tile_m, cfg.tile_n, cfg.tile_k, cfg.stages
    m_iters, n_iters, k_iters = -(-m // tm), n // tn, k // tk
    num_tiles = m_iters * n_iters
    out_dtype = out_gmem.dtype
    in_tr = _transforms(tk, x_gmem.dtype)
    epi_tiles = (tm // cfg.epi_m) * (tn // cfg.epi_n)
    slots = min(2, epi_tiles)
    minor = 1 if cfg.n_minor else 0

    @functools.partial(pl.run_scoped,
                       a_smem=plgpu.SMEM((stages, tm, tk), x_gmem.dtype, transforms=in_tr),
                       b_smem=plgpu.SMEM((stages, tk, tn), w_gmem.dtype, transforms=in_tr),
                       full=plgpu.Barrier(num_arrivals=2, num_barriers=stages),
                       empty=plgpu.Barrier(num_arrivals=1, num_barriers=stages),
                       turn=plgpu.Barrier(num_arrivals=1, num_barriers=2),
                       out_smem=plgpu.SMEM((2, slots, cfg.epi_m, cfg.epi_n), out_dtype,
                                           transforms=_transforms(cfg.epi_n, out_dtype)),
                       collective_axes="wg")
    def _scope(a_smem, b_smem, full, empty, turn, out_smem):
        wg = lax.axis_index("wg")
        sm = lax.axis_index("sm")
        n_local = lax.div(num_tiles - sm + (num_sms - 1), num_sms)

        def coords(i):
            return plgpu.planar_snake(sm + i * num_sms, (m_iters, n_iters), minor, cfg.grid_tile_width)

        @pl.when(wg == 2)
        def _producer():
            plgpu.set_max_registers(40, action="decrease")

            @pl.loop(0, n_local)
            def _tile(i):
                mi, ni = coords(i)

                @pl.loop(0, k_iters)
                def _step(kk):
                    slot = lax.rem(i * k_iters + kk, stages)
                    plgpu.barrier_wait(empty.at[slot])
                    plgpu.copy_gmem_to_smem(x_gmem.at[pl.ds(mi * tm, tm), pl.ds(kk * tk, tk)], a_smem.at[slot],
                                            full.at[slot])
                    plgpu.copy_gmem_to_smem(w_gmem.at[pl.ds(kk * tk, tk), pl.ds(ni * tn, tn)], b_smem.at[slot],
                                            full.at[slot])

        @pl.when(wg < 2)
        def _consumer():
            plgpu.set_max_registers(232, action="increase")

            @pl.when(wg == 0)
            def _open_slots():
                for s in range(stages):
                    plgpu.barrier_arrive(empty.at[s])

            @pl.loop(0, lax.div(n_local - wg + 1, 2))
            def _tile(j):
                i = 2 * j + wg
                mi, ni = coords(i)
                base = i * k_iters

                # mainloops alternate: this one starts once the other warpgroup has waited for all
                # of tile i - 1's data, so that no pipeline barrier is more than one phase ahead of
                # the phase this warpgroup expects (barrier waits test parity only)
                @pl.when(i > 0)
                def _await_turn():
                    plgpu.barrier_wait(turn.at[1 - wg])

                def mainloop(acc_ref):
                    # one WGMMA group stays in flight: step kk's wait releases the slot of kk - 1
                    # (the accumulator is the loop's carry, as in Pallas' own pipelines)
                    def step(kk, acc_ref):
                        slot = lax.rem(base + kk, stages)
                        plgpu.barrier_wait(full.at[slot])
                        plgpu.wgmma(acc_ref, a_smem.at[slot], b_smem.at[slot])
                        plgpu.wgmma_wait(1)

                        @pl.when(kk > 0)
                        def _release():
                            plgpu.barrier_arrive(empty.at[lax.rem(base + kk + (stages - 1), stages)])

                        return acc_ref

                    acc_ref = lax.fori_loop(0, k_iters, step, acc_ref)
                    plgpu.barrier_arrive(turn.at[wg])
                    plgpu.wgmma_wait(0)
                    plgpu.barrier_arrive(empty.at[lax.rem(base + (k_iters - 1), stages)])
                    return acc_ref[...]

                acc = pl.run_scoped(mainloop, plgpu.ACC((tm, tn), jnp.float32))
                _epilogue(acc, b_gmem, out_smem.at[wg], out_gmem, mi * tm, ni * tn, cfg)

            plgpu.wait_smem_to_gmem(0, wait_read_only=True)


def _num_sms() -> int:
    return int(getattr(jax.devices()[0], "core_count", 0) or 132)


@functools.partial(jax.jit, static_argnums=(3,))
def _fused(x, w, b, config: GemmConfig):
    """The kernel call. Jitted so that the layers of a model, which call it with equal shapes,
    share one lowering (a model of 24 layers otherwise lowers and compiles the kernel 24 times)."""
    m = x.shape[0]
    n = w.shape[1]

    def body(x_ref, w_ref, *rest):
        if b is None:
            (out_ref,) = rest
            b_ref = None
        else:
            b_ref, out_ref = rest
        if config.schedule == "pingpong":
            _body_pingpong(x_ref, w_ref, b_ref, out_ref, cfg=config, num_sms=_num_sms())
        else:
            _body(x_ref, w_ref, b_ref, out_ref, cfg=config)

    call = plgpu.kernel(body, out_type=jax.ShapeDtypeStruct((m, n), x.dtype), grid=(_num_sms(),),
                        grid_names=("sm",), num_threads=3, thread_name="wg",
                        compiler_params=plgpu.CompilerParams(lowering_semantics=plgpu.LoweringSemantics.Warpgroup,
                                                                 approx_math=config.approx_math))
    return call(x, w) if b is None else call(x, w, b)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _matmul_bias_gelu(x, w, b, config):
    return _fused(x, w, b, config)


def _fwd(x, w, b, config):
    return _fused(x, w, b, config), (x, w, b)


def _bwd(config, res, g):
    x, w, b = res
    z = jnp.dot(x, w, preferred_element_type=jnp.float32)
    if b is not None:
        z = z + b.astype(jnp.float32)
    dz = g.astype(jnp.float32) * gelu_f32_grad(z)
    dz16 = dz.astype(x.dtype)
    dx = jnp.dot(dz16, w.T, preferred_element_type=jnp.float32).astype(x.dtype)
    dw = jnp.dot(x.T, dz16, preferred_element_type=jnp.float32).astype(w.dtype)
    db = None if b is None else jnp.sum(dz, axis=0).astype(b.dtype)
    return dx, dw, db


_matmul_bias_gelu.defvjp(_fwd, _bwd)


def matmul_bias_gelu(x: jax.Array, w: jax.Array, b: jax.Array | None = None,
                     config: GemmConfig | None = None) -> jax.Array:
    """``gelu(x @ w + b)`` for ``x [M, K]``, ``w [K, N]`` (same 16-bit dtype) and ``b [N]`` (any
    float dtype, or None), returned in ``x.dtype``; exact-erf GELU applied to the float32
    accumulator. ``config`` None takes :func:`config_for`'s. Requires :func:`supported` (raises
    ``ValueError`` otherwise)."""
    config = config or config_for(x.shape, w.shape, x.dtype)
    if config is None or not supported(x.shape, w.shape, x.dtype, config) or w.dtype != x.dtype:
        raise ValueError(f"matmul_bias_gelu: no fused kernel for x {x.shape} {x.dtype}, w {w.shape} {w.dtype} "
                         "on this device (see kernels.gemm_gelu.supported)")
    if b is not None and b.shape != (w.shape[1],):
        raise ValueError(f"matmul_bias_gelu: bias shape {b.shape} != ({w.shape[1]},)")
    return _matmul_bias_gelu(x, w, b, config)
