"""``gelu(x @ w + b)`` fused into one Hopper kernel (kernels/gemm_gelu.py).

Everywhere: the in-kernel GELU against float64, its derivative, the XLA reference, the backward
pass, the shape rules, the choice of configuration and the dispatch (fallback, the environment
switch, vmap). On a Hopper GPU also the kernel itself, in both schedules: full and partial row
blocks, one to three tiles per CTA, both 16-bit types, with and without bias, gradients, and the
NT model with the kernel against the model without it.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
from conftest import rel_err

from glmjax.kernels import gemm_gelu as gg

HOPPER = gg.supported((256, 640), (640, 256), jnp.bfloat16)
needs_hopper = pytest.mark.skipif(not HOPPER, reason="the Mosaic GPU kernel needs a Hopper (sm_90) GPU; "
                                  "elsewhere its formula, reference, backward pass and dispatch are tested")


def _gelu64(z: np.ndarray) -> np.ndarray:
    """float64 GELU through erfc (no cancellation in the negative tail)."""
    return z * 0.5 * scipy.special.erfc(-z / math.sqrt(2.0))


def test_gelu_f32_matches_float64_wherever_float32_is_normal():
    x = np.linspace(-13.0, 13.0, 200001, dtype=np.float32)
    want = np.array([v * 0.5 * math.erfc(-v / math.sqrt(2.0)) for v in x.astype(np.float64)])
    got = np.asarray(jax.jit(gg.gelu_f32)(jnp.asarray(x)), np.float64)
    normal = np.abs(want) > np.finfo(np.float32).tiny
    rel = np.abs(got - want)[normal] / np.abs(want)[normal]
    assert rel.max() <= 3e-5
    assert rel[np.abs(x[normal]) <= 6].max() <= 1.5e-5


def test_gelu_f32_grad_is_the_exact_derivative():
    x = np.linspace(-8.0, 8.0, 4001)
    want = 0.5 * scipy.special.erfc(-x / math.sqrt(2.0)) + x * np.exp(-x * x / 2) / math.sqrt(2 * math.pi)
    got = np.asarray(gg.gelu_f32_grad(jnp.asarray(x, jnp.float32)), np.float64)
    assert np.abs(got - want).max() <= 3e-5


def _operands(m: int, k: int, n: int, dtype=jnp.bfloat16, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(m, k)), dtype)
    w = jnp.asarray(rng.normal(0, 2.0 / math.sqrt(k), size=(k, n)), dtype)
    b = jnp.asarray(rng.normal(0, 0.5, size=(n,)), jnp.float32)
    return x, w, b


def _exact(x, w, b) -> tuple[np.ndarray, np.ndarray]:
    """float64 ``gelu(x @ w + b)`` and the bound of a float32 accumulation's error on it:
    ``K * 2^-24 * |x| @ |w|`` times the GELU's largest slope (1.13)."""
    x64, w64 = np.asarray(x, np.float64), np.asarray(w, np.float64)
    z = x64 @ w64
    if b is not None:
        z = z + np.asarray(b, np.float64)
    return _gelu64(z), 1.2 * x64.shape[1] * 2.0 ** -24 * (np.abs(x64) @ np.abs(w64))


def _assert_one_rounding(got, exact, dtype):
    """Each element is the rounding to ``dtype`` (half a unit in the last place: 2^-8 relative
    in bf16, 2^-11 in fp16, 2^-25 absolute below fp16's normal range) of a value within 1e-4
    (relative) of the exact GELU of a float32-accumulated pre-activation."""
    want, accumulation = exact
    got = np.asarray(got, np.float64)
    assert np.isfinite(got).all()
    half_ulp = 2.0 ** -8 if jnp.dtype(dtype) == jnp.bfloat16 else 2.0 ** -11
    underflow = 2.0 ** -25 if jnp.dtype(dtype) == jnp.float16 else 1e-38
    bound = (half_ulp + 1e-4) * np.abs(want) + accumulation + underflow
    assert (np.abs(got - want) <= bound).all(), float((np.abs(got - want) / bound).max())


@pytest.mark.parametrize("bias", [True, False])
def test_reference_is_one_rounding_of_the_exact_function(bias):
    x, w, b = _operands(96, 64, 48)
    b = b if bias else None
    got = jax.jit(gg.reference)(x, w, b)
    assert got.dtype == jnp.bfloat16
    _assert_one_rounding(got, _exact(x, w, b), jnp.bfloat16)


def test_backward_pass_is_the_derivative_of_the_float32_function():
    x, w, b = _operands(64, 32, 48, seed=1)
    g = jnp.asarray(np.random.default_rng(2).normal(size=(64, 48)), jnp.bfloat16)
    dx, dw, db = gg._bwd(gg.DEFAULT_CONFIG, (x, w, b), g)
    assert (dx.dtype, dw.dtype, db.dtype) == (x.dtype, w.dtype, b.dtype)

    def f32(x, w, b):
        return gg.gelu_f32(jnp.dot(x, w, precision=jax.lax.Precision.HIGHEST) + b)

    _, vjp = jax.vjp(f32, x.astype(jnp.float32), w.astype(jnp.float32), b)
    ex, ew, eb = vjp(g.astype(jnp.float32))
    # dz is rounded to the operands' bf16 before the two GEMMs; the bias gradient is not
    assert rel_err(dx, ex) < 1e-2
    assert rel_err(dw, ew) < 1e-2
    assert rel_err(db, eb) < 1e-5
    _, _, none = gg._bwd(gg.DEFAULT_CONFIG, (x, w, None), g)
    assert none is None


def test_shape_rules():
    bf16 = jnp.bfloat16
    coop = gg.COOPERATIVE_CONFIG
    assert gg._cta_block(gg.DEFAULT_CONFIG) == (128, 128)  # ping-pong: one warpgroup's tile
    assert gg._cta_block(coop) == (128, 256)
    assert gg._cta_block(gg.GemmConfig(tile_m=128, tile_n=128, schedule="cooperative", split="n")) == (128, 256)
    assert gg.shapes_fit((64000, 1280), (1280, 5120), bf16)
    assert gg.shapes_fit((65000, 1280), (1280, 5120), jnp.float16)  # partial last row block
    assert gg.shapes_fit((128, 640), (640, 128), bf16)
    assert not gg.shapes_fit((127, 640), (640, 128), bf16)  # fewer rows than one block
    assert not gg.shapes_fit((256, 1280), (1280, 5000), bf16)  # N not a multiple of 128
    assert not gg.shapes_fit((256, 1000), (1000, 5120), bf16)  # K not a multiple of 64
    # ping-pong: K / tile_k a multiple of 2 * stages, so every tile uses each slot evenly
    assert not gg.shapes_fit((256, 1024), (1024, 5120), bf16)  # 16 steps, 5 stages
    assert gg.shapes_fit((256, 1024), (1024, 5120), bf16, dataclasses.replace(gg.DEFAULT_CONFIG, stages=4))
    assert not gg.shapes_fit((256, 640), (640, 128), bf16, dataclasses.replace(gg.DEFAULT_CONFIG, stages=1))
    assert gg.shapes_fit((256, 1024), (1024, 5120), bf16, coop)
    assert not gg.shapes_fit((256, 1280), (1280, 5120), jnp.float32)
    assert not gg.shapes_fit((256, 1280), (1024, 5120), bf16)
    assert not gg.shapes_fit((2, 128, 1280), (1280, 5120), bf16)
    with pytest.raises(ValueError, match="split"):
        gg.GemmConfig(split="k")
    with pytest.raises(ValueError, match="schedule"):
        gg.GemmConfig(schedule="stream-k")
    with pytest.raises(ValueError, match="epilogue tile"):
        gg.GemmConfig(epi_n=96)
    with pytest.raises(ValueError, match="stages"):
        gg.GemmConfig(stages=0)


@pytest.mark.parametrize(("k", "n", "want"), [
    (1280, 5120, ("pingpong", 5)),  # NT-v1-500M (20 steps of 64)
    (2560, 10240, ("pingpong", 5)),  # NT-v1-2.5B
    (1024, 4096, ("pingpong", 4)),
    (768, 3072, ("pingpong", 3)),
    (256, 1024, ("cooperative", 2)),  # 4 steps: no ping-pong depth divides them evenly
    (256, 128, None),  # N fits neither the ping-pong (with K) nor the cooperative block
    (1000, 4096, None),
])
def test_config_for_takes_the_deepest_pipeline_that_fits(k, n, want):
    cfg = gg.config_for((4096, k), (k, n), jnp.bfloat16)
    assert (None if cfg is None else (cfg.schedule, cfg.stages)) == want
    if cfg is not None:
        assert gg.shapes_fit((4096, k), (k, n), jnp.bfloat16, cfg)
    assert gg.config_for((4096, k), (k, n), jnp.float32) is None


def test_environment_switch(monkeypatch):
    monkeypatch.delenv("GLMJAX_FUSED_GELU", raising=False)
    assert gg.enabled()
    for off in ("0", "off", "False", " no "):
        monkeypatch.setenv("GLMJAX_FUSED_GELU", off)
        assert not gg.enabled()
    monkeypatch.setenv("GLMJAX_FUSED_GELU", "1")
    assert gg.enabled()


def test_vmap_is_detected():
    seen = []

    def probe(a):
        seen.append(gg._batched(a, None))
        return a

    jax.jit(probe)(jnp.ones(2))
    jax.vmap(probe)(jnp.ones((3, 2)))
    jax.jit(jax.vmap(probe))(jnp.ones((3, 2)))
    assert seen == [False, True, True]
    assert not gg._batched(jnp.ones(2))


def test_dense_gelu_falls_back_where_the_kernel_cannot_run(monkeypatch):
    x, w, b = _operands(256, 128, 256)
    x3 = x.reshape(2, 128, 128)
    calls = []

    def unfused(v):
        calls.append(v.shape)
        return gg.reference(v.reshape(-1, v.shape[-1]), w, b).reshape(*v.shape[:-1], -1)

    monkeypatch.setenv("GLMJAX_FUSED_GELU", "0")
    out = gg.dense_gelu(x3, w, b, unfused)
    assert calls == [(2, 128, 128)] and out.shape == (2, 128, 256)
    np.testing.assert_array_equal(np.asarray(out.reshape(256, 256)), np.asarray(gg.reference(x, w, b)))
    monkeypatch.setenv("GLMJAX_FUSED_GELU", "1")
    calls.clear()
    gg.dense_gelu(x3, w, b, unfused)
    assert calls == ([] if HOPPER else [(2, 128, 128)])
    calls.clear()
    jax.vmap(lambda v: gg.dense_gelu(v, w, b, unfused))(x3)  # under vmap: always the fallback
    assert calls == [(128, 128)]
    if not HOPPER:
        with pytest.raises(ValueError, match="no fused kernel"):
            gg.matmul_bias_gelu(x, w, b)


@pytest.mark.skipif(gg.plgpu is None, reason="this JAX build has no Pallas Mosaic GPU backend")
@pytest.mark.parametrize(("m", "dtype", "bias"), [(64000, "bfloat16", True), (1000, "float16", False)])
@pytest.mark.parametrize("schedule", ["pingpong", "cooperative"])
def test_kernel_lowers_for_cuda_with_the_installed_jax(m, dtype, bias, schedule):
    """The kernel's use of Pallas' experimental Mosaic GPU API is valid for this JAX (lowering
    for CUDA needs no GPU): the guard against API changes that the runtime fallback would hide."""
    x = jax.ShapeDtypeStruct((m, 1280), jnp.dtype(dtype))
    w = jax.ShapeDtypeStruct((1280, 5120), jnp.dtype(dtype))
    b = jax.ShapeDtypeStruct((5120,), jnp.float32) if bias else None
    cfg = gg.DEFAULT_CONFIG if schedule == "pingpong" else gg.COOPERATIVE_CONFIG
    text = gg._fused.trace(x, w, b, cfg).lower(lowering_platforms=("cuda",)).as_text()
    assert text.count("mosaic_gpu") >= 1


def test_a_kernel_that_does_not_lower_falls_back_with_one_warning(monkeypatch):
    class Broken:
        calls = 0

        def lower(self, *args):
            Broken.calls += 1
            raise RuntimeError("changed API")

    monkeypatch.setattr(gg, "supported", lambda *a, **k: True)
    monkeypatch.setattr(gg, "_fused", Broken())
    monkeypatch.setattr(gg, "_LOWERS", {})
    monkeypatch.setenv("GLMJAX_FUSED_GELU", "1")
    x, w, b = _operands(256, 128, 256)
    want = np.asarray(gg.reference(x, w, b))
    with pytest.warns(UserWarning, match="does not lower.*changed API"):
        out = gg.dense_gelu(x, w, b, lambda v: gg.reference(v, w, b))
    np.testing.assert_array_equal(np.asarray(out), want)
    gg.dense_gelu(x, w, b, lambda v: gg.reference(v, w, b))  # checked once per shape
    assert Broken.calls == 1


@needs_hopper
@pytest.mark.parametrize(("m", "k", "n", "schedule"), [
    (128, 640, 512, "pingpong"),  # one row of tiles
    (1000, 640, 512, "pingpong"),  # a partial last row; fewer tiles than SMs
    (4160, 512, 1536, "pingpong"),  # 4 stages; three tiles per CTA on 132 SMs (warpgroups take turns)
    (2000, 640, 2048, "pingpong"),  # one or two tiles per CTA
    (128, 256, 512, "cooperative"),
    (1000, 256, 512, "cooperative"),
    (4160, 256, 512, "cooperative"),
])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("bias", [True, False])
def test_fused_kernel_is_one_rounding_of_the_exact_function(m, k, n, schedule, dtype, bias):
    x, w, b = _operands(m, k, n, jnp.dtype(dtype), seed=m)
    b = b if bias else None
    assert gg.config_for(x.shape, w.shape, x.dtype).schedule == schedule
    got = jax.jit(gg.matmul_bias_gelu)(x, w, b)
    assert got.dtype == jnp.dtype(dtype) and got.shape == (m, n)
    _assert_one_rounding(got, _exact(x, w, b), dtype)
    ref = np.asarray(gg.reference(x, w, b), np.float64)
    assert rel_err(got, ref) <= 2.0 ** -7


@needs_hopper
def test_fused_kernel_gradients_match_the_reference():
    x, w, b = _operands(512, 640, 512, seed=3)  # the ping-pong schedule
    g = jnp.asarray(np.random.default_rng(4).normal(size=(512, 512)), jnp.float32)

    def loss(fn):
        return lambda x, w, b: jnp.sum(fn(x, w, b).astype(jnp.float32) * g)

    got = jax.jit(jax.grad(loss(gg.matmul_bias_gelu), argnums=(0, 1, 2)))(x, w, b)
    want = jax.jit(jax.grad(loss(gg.reference), argnums=(0, 1, 2)))(x, w, b)
    for a, e in zip(got, want, strict=True):
        assert a.dtype == e.dtype
        assert rel_err(a, e) < 2e-2


@needs_hopper
def test_nt_model_with_the_fused_kernel_matches_the_unfused_model(monkeypatch):
    import glmjax.models as models
    from glmjax.models.nt import NTConfig

    base = NTConfig.tiny().to_dict()
    cfg = {**base, "hidden_size": 640, "num_heads": 5, "intermediate_size": 2560}  # ping-pong fc1
    m32 = models.build("nt", NTConfig.from_dict(cfg), seed=1)
    m16 = models.build("nt", NTConfig.from_dict({**cfg, "dtype": "bfloat16"}), seed=1)
    rng = np.random.default_rng(0)
    ids = rng.integers(4, 4100, size=(4, 64)).astype(np.int32)  # 256 rows
    ids[3, 50:] = 1  # right padding
    att = ids != 1

    def logits(env):
        monkeypatch.setenv("GLMJAX_FUSED_GELU", env)
        fn = jax.jit(lambda i, a: m16.module(i, a))  # a fresh trace per setting
        return fn.lower(ids, att).as_text(), np.asarray(fn(ids, att))

    text_on, on = logits("1")
    text_off, off = logits("0")
    assert "mosaic_gpu" in text_on and "mosaic_gpu" not in text_off
    ref = np.asarray(m32.logits(ids, att))
    assert rel_err(on, ref, att) < 3e-2
    assert rel_err(on, off, att) < 3e-2


def test_bench_script_reports_every_side_and_rejects_bad_sizes(tmp_path, capsys):
    """scripts/bench_gemm_gelu.py on a tiny shape: the unfused sides everywhere (the fused one
    only on Hopper), the JSON written where asked; sizes below 1 exit 2 with one line."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "bench_gemm_gelu.py"
    spec = importlib.util.spec_from_file_location("bench_gemm_gelu", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "r.json"
    report = bench.main(["--m", "256", "--k", "128", "--n", "256", "--rounds", "2", "--iters", "1", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert {"xla_unfused", "xla_gemm_only"} <= set(report["ms"]) and all(v > 0 for v in report["ms"].values())
    assert all(len(v) == 2 for v in report["ms_per_round"].values())
    assert ("fused" in report["ms"]) == HOPPER == report["fused_kernel"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        bench.main(["--m", "0"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "at least 1" in err[0]
