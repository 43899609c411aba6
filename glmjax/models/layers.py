"""Small layers shared by the transformer families: norms, activations, rotary embeddings, KV caches.

Conventions: activations are ``[B, L, ...]`` in the compute dtype; parameters are float32; norms
and rotary angles are computed in float32 and cast back to the compute dtype.

KV cache layout (incremental decoding): every leaf has the batch on axis 0, so a cache can be
gathered row-wise (``jax.tree.map(lambda x: x[idx], cache)``) when a candidate trie is walked::

    {"pos": int32 [B],                     # position of the next token of each row
     "k":   tuple of [B, M, H_kv, D_head], # one per layer, M = max_len
     "v":   tuple of [B, M, H_kv, D_head]}
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from glmjax.errors import ConfigError

_SQRT_HALF = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_GELU_TABLES: dict[np.dtype, np.ndarray] = {}


def _gelu_formula(x: jax.Array) -> jax.Array:
    return x * 0.5 * (1.0 + jax.lax.erf(x * np.asarray(_SQRT_HALF, x.dtype)))


def gelu_table(dtype) -> np.ndarray:
    """Exact GELU of every value of a 16-bit float type (65536 entries, indexed by bit pattern).

    Evaluated in float64 as ``x / 2 * erfc(-x / sqrt(2))`` (``scipy.special.erfc``: no
    cancellation in the negative tail, where ``1 + erf`` cancels: at x = -8 a few bits remain) and
    rounded to the nearest ``dtype`` value (NaN stays NaN; GELU(-inf) is NaN, as the formula
    gives).
    """
    dt = np.dtype(dtype)
    if dt not in _GELU_TABLES:
        import scipy.special

        if dt.itemsize != 2:
            raise ValueError(f"gelu_table needs a 16-bit float type, got {dt}")
        with np.errstate(invalid="ignore", over="ignore"):
            x = np.arange(1 << 16, dtype=np.uint16).view(dt).astype(np.float64)
            y = 0.5 * x * scipy.special.erfc(-x * _SQRT_HALF)
            table = y.astype(np.float32).astype(dt)
            # float64 -> float32 -> 16 bits can round twice: keep the nearer bit-pattern neighbour
            bits = table.view(np.uint16).astype(np.int64)
            err = np.abs(table.astype(np.float64) - y)
            for step in (-1, 1):
                nb = np.clip(bits + step, 0, 0xFFFF)
                cand = nb.astype(np.uint16).view(dt).astype(np.float64)
                e = np.abs(cand - y)
                better = np.isfinite(cand) & (np.sign(cand) == np.sign(table.astype(np.float64))) & (e < err)
                bits = np.where(better, nb, bits)
                err = np.where(better, e, err)
        _GELU_TABLES[dt] = bits.astype(np.uint16).view(dt)
    return _GELU_TABLES[dt]


@jax.custom_jvp
def _gelu_lookup(x: jax.Array) -> jax.Array:
    idx = jax.lax.bitcast_convert_type(x, jnp.uint16).astype(jnp.int32)
    return jnp.take(jnp.asarray(gelu_table(x.dtype)), idx, axis=0, mode="clip")


@_gelu_lookup.defjvp
def _gelu_lookup_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    h = x.astype(jnp.float32)
    # d/dx [x Phi(x)] = Phi(x) + x phi(x)
    grad = 0.5 * (1.0 + jax.lax.erf(h * _SQRT_HALF)) + h * jnp.exp(-0.5 * h * h) * _INV_SQRT_2PI
    return _gelu_lookup(x), (dx.astype(jnp.float32) * grad).astype(dx.dtype)


def gelu_erf(x: jax.Array) -> jax.Array:
    """Exact GELU, ``x / 2 * (1 + erf(x / sqrt(2)))`` as the PyTorch references write it.

    float32/float64 inputs: that formula (``jax.nn.gelu(approximate=False)`` evaluates
    ``x / 2 * erfc(-x / sqrt(2))``, whose erfc expansion makes an NT-500M FFN activation
    compute-bound on GPUs; the two agree to a few float32 roundings).

    bfloat16/float16 inputs: a lookup in :func:`gelu_table`, the correctly rounded exact GELU of
    each of the 65536 inputs. Evaluating the formula in float32 and rounding gives the same value
    to within one unit in the last place (bfloat16: identical except for x < -3.8, where
    ``1 + erf`` cancels in float32); the lookup costs one table read per element instead of an erf
    polynomial and a division, and is identical on every backend. Gradients use the analytic
    derivative ``Phi(x) + x phi(x)``.
    """
    if x.dtype in (jnp.bfloat16, jnp.float16):
        return _gelu_lookup(x)
    return _gelu_formula(x)


# HF ``ACT2FN`` names -> functions (the subset used by Llama/GPT-2-style checkpoints).
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "gelu": gelu_erf,
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
}

DTYPES = ("float32", "bfloat16", "float16")


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """The activation function of an HF ``hidden_act`` / ``activation_function`` name."""
    if name not in ACTIVATIONS:
        raise ConfigError(f"unsupported activation {name!r}; supported: {', '.join(sorted(ACTIVATIONS))}")
    return ACTIVATIONS[name]


def check_dtype(name: str) -> None:
    """Raise ConfigError unless ``name`` is a supported compute dtype name."""
    if name not in DTYPES:
        raise ConfigError(f"unsupported compute dtype {name!r}; choose one of {', '.join(DTYPES)}")


class RMSNorm(nnx.Module):
    """Root-mean-square norm (Llama): ``x / sqrt(mean(x^2) + eps) * weight``, computed in fp32.

    Parameter ``weight`` [dim] (HF name), initialised to ones. Output has the input's dtype.
    """

    def __init__(self, dim: int, eps: float = 1e-6):
        self.eps = eps
        self.weight = nnx.Param(jnp.ones((dim,), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        h = x.astype(jnp.float32)
        h = h * jax.lax.rsqrt(jnp.mean(h * h, axis=-1, keepdims=True) + self.eps)
        return (h * self.weight[...]).astype(x.dtype)


class LayerNorm(nnx.Module):
    """LayerNorm with HF parameter names ``weight``/``bias`` [dim], computed in fp32."""

    def __init__(self, dim: int, eps: float = 1e-5):
        self.eps = eps
        self.weight = nnx.Param(jnp.ones((dim,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((dim,), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        h = x.astype(jnp.float32)
        mu = jnp.mean(h, axis=-1, keepdims=True)
        h = h - mu
        var = jnp.mean(h * h, axis=-1, keepdims=True)
        h = h * jax.lax.rsqrt(var + self.eps)
        return (h * self.weight[...] + self.bias[...]).astype(x.dtype)


def linear(din: int, dout: int, *, bias: bool, dtype: str, std: float, rngs: nnx.Rngs) -> nnx.Linear:
    """An ``nnx.Linear`` (kernel [din, dout], fp32 params, compute in ``dtype``), N(0, std) init."""
    return nnx.Linear(din, dout, use_bias=bias, dtype=jnp.dtype(dtype), param_dtype=jnp.float32,
                      kernel_init=nnx.initializers.normal(std), bias_init=nnx.initializers.zeros_init(),
                      rngs=rngs)


def embed(num: int, dim: int, *, dtype: str, std: float, rngs: nnx.Rngs) -> nnx.Embed:
    """An ``nnx.Embed`` (table [num, dim], fp32 params, output in ``dtype``), N(0, std) init."""
    return nnx.Embed(num, dim, dtype=jnp.dtype(dtype), param_dtype=jnp.float32,
                     embedding_init=nnx.initializers.normal(std), rngs=rngs)


def lm_logits(x: jax.Array, weight: jax.Array, transposed: bool) -> jax.Array:
    """Output projection with float32 accumulation and result.

    Args:
      x: hidden states [..., d] in the compute dtype.
      weight: [V, d] (``transposed=True``: a tied embedding table) or [d, V] (an LM head kernel).
    Returns:
      float32 logits [..., V].
    """
    w = weight.astype(x.dtype)
    spec = "...d,vd->...v" if transposed else "...d,dv->...v"
    return jnp.einsum(spec, x, w, preferred_element_type=jnp.float32)


# ---------------------------------------------------------------------------------------------
# Rotary position embedding (HF Llama convention: rotate_half over two contiguous halves)

def rope_inv_freq(head_dim: int, theta: float, rope_type: str = "default", factor: float = 1.0,
                  low_freq_factor: float = 1.0, high_freq_factor: float = 4.0,
                  original_max_position_embeddings: int = 8192) -> np.ndarray:
    """Inverse frequencies [head_dim // 2] (float32) as HF computes them for ``rope_type``.

    ``default``: ``theta ** (-2i / head_dim)``; ``linear``: divided by ``factor``; ``llama3``:
    Llama 3.1 wavelength-dependent scaling (long wavelengths divided by ``factor``, a smooth
    interpolation between ``low_freq_factor`` and ``high_freq_factor`` wavelengths).
    """
    # fp32 exponentiation, like HF's torch code, so the angles match bit for bit where possible
    exps = np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)
    inv = (np.float32(1.0) / (np.float32(theta) ** exps)).astype(np.float32)
    if rope_type == "default":
        return inv
    if rope_type == "linear":
        return (inv / np.float32(factor)).astype(np.float32)
    if rope_type == "llama3":
        old = float(original_max_position_embeddings)
        low_wl, high_wl = old / low_freq_factor, old / high_freq_factor
        wl = (2 * math.pi / inv).astype(np.float32)
        scaled = np.where(wl > low_wl, inv / np.float32(factor), inv).astype(np.float32)
        smooth = ((old / wl - low_freq_factor) / (high_freq_factor - low_freq_factor)).astype(np.float32)
        smoothed = ((1 - smooth) * scaled / np.float32(factor) + smooth * scaled).astype(np.float32)
        medium = ~(wl < high_wl) & ~(wl > low_wl)
        return np.where(medium, smoothed, scaled).astype(np.float32)
    raise ConfigError(f"unsupported rope type {rope_type!r}; supported: default, linear, llama3")


def rope_cos_sin(positions: jax.Array, inv_freq: np.ndarray) -> tuple[jax.Array, jax.Array]:
    """cos, sin [*positions.shape, head_dim] (float32) for integer ``positions``."""
    freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq, jnp.float32)
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def rotate_half(x: jax.Array) -> jax.Array:
    """``[-x2, x1]`` for ``x = [x1, x2]`` split in halves on the last axis."""
    x1, x2 = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([-x2, x1], axis=-1)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate ``x`` [B, L, H, D] by cos/sin [B, L, D] (fp32 arithmetic, result in x's dtype)."""
    h = x.astype(jnp.float32)
    c, s = cos[:, :, None, :], sin[:, :, None, :]
    return (h * c + rotate_half(h) * s).astype(x.dtype)


# ---------------------------------------------------------------------------------------------
# KV cache

def init_kv_cache(batch_size: int, max_len: int, num_layers: int, kv_heads: int, head_dim: int,
                  dtype: str) -> dict:
    """An empty cache (see the module docstring for the layout); ``pos`` starts at 0."""
    shape = (batch_size, max_len, kv_heads, head_dim)
    dt = jnp.dtype(dtype)
    return {"pos": jnp.zeros((batch_size,), jnp.int32),
            "k": tuple(jnp.zeros(shape, dt) for _ in range(num_layers)),
            "v": tuple(jnp.zeros(shape, dt) for _ in range(num_layers))}


def cache_write(buf: jax.Array, new: jax.Array, pos: jax.Array) -> jax.Array:
    """Write ``new`` [B, T, H, D] into ``buf`` [B, M, H, D] at row-specific offsets ``pos`` [B].

    Each row is written with ``dynamic_update_slice`` (a scatter after vmap, in place when the
    cache is donated); offsets past ``M - T`` are clamped by XLA, so callers keep ``pos + T <= M``.
    """
    def one(b, n, p):
        return jax.lax.dynamic_update_slice(b, n.astype(b.dtype), (p, 0, 0))

    return jax.vmap(one)(buf, new, pos.astype(jnp.int32))


def cache_key_mask(pos: jax.Array, max_len: int) -> jax.Array:
    """bool [B, M]: cache slots ``<= pos`` of each row (the keys the token at ``pos`` attends to)."""
    return jnp.arange(max_len, dtype=jnp.int32)[None, :] <= pos[:, None]


def cache_from_prefill(ks: list[jax.Array], vs: list[jax.Array], max_len: int) -> dict:
    """A cache holding prefix keys/values ``ks[l], vs[l]`` [B, T, H, D], padded to ``max_len``."""
    b, t = ks[0].shape[:2]
    if t > max_len:
        raise ConfigError(f"prefix of {t} tokens does not fit a cache of max_len {max_len}")
    pad = ((0, 0), (0, max_len - t), (0, 0), (0, 0))
    return {"pos": jnp.full((b,), t, jnp.int32),
            "k": tuple(jnp.pad(k, pad) for k in ks),
            "v": tuple(jnp.pad(v, pad) for v in vs)}


# ---------------------------------------------------------------------------------------------
# Shared-prefix decoding (see glmjax.models.decoding): prefix keys/values once per prefix, a
# suffix cache per row

def init_suffix_kv(prefixes: int, suffix_len: int, num_layers: int, kv_heads: int, head_dim: int,
                   dtype: str) -> dict:
    """Row state of shared-prefix decoding: ``{"pos": int32 [C] (suffix tokens so far), "k"/"v":
    per layer [C, S, KV, D]}`` (zeros), one row per prefix."""
    shape = (prefixes, max(int(suffix_len), 1), kv_heads, head_dim)
    dt = jnp.dtype(dtype)
    return {"pos": jnp.zeros((prefixes,), jnp.int32),
            "k": tuple(jnp.zeros(shape, dt) for _ in range(num_layers)),
            "v": tuple(jnp.zeros(shape, dt) for _ in range(num_layers))}


def suffix_write(buf: jax.Array, new: jax.Array, pos: jax.Array) -> jax.Array:
    """Write ``new [C, M, KV, D]`` into the suffix caches ``buf [C, M, S, KV, D]`` at slots
    ``pos [C, M]`` (a select, so it fuses with the gather that made the rows)."""
    hit = jnp.arange(buf.shape[2], dtype=jnp.int32)[None, None, :] == pos[..., None]
    return jnp.where(hit[..., None, None], new[:, :, None].astype(buf.dtype), buf)


def suffix_valid(pos: jax.Array, suffix_len: int) -> jax.Array:
    """bool ``[C, M, S]``: the suffix slots ``<= pos`` a row's token attends to."""
    return jnp.arange(suffix_len, dtype=jnp.int32)[None, None, :] <= pos[..., None]
