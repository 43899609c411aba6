"""Mamba v1: the selective state-space mixer and a causal Mamba language model.

The mixer (shared with Caduceus, :mod:`glmjax.models.caduceus`) follows ``mamba_ssm`` 1.x /
``transformers.MambaMixer``: ``x, z = split(in_proj(h))``; ``x = silu(causal depthwise conv(x))``
(kernel ``d_conv``, left zero padding); ``Δ, B, C = split(x_proj(x), [dt_rank, N, N])``;
``Δ = softplus(dt_proj(Δ))``; ``A = -exp(A_log)``; the selective scan (:mod:`glmjax.kernels.selective_scan`)
with the ``D`` skip and the ``silu(z)`` gate; ``out_proj``. Scan and norms run in float32.

The causal LM is ``transformers.MambaForCausalLM``: embedding, pre-norm residual blocks
``h = h + mixer(RMSNorm(h))``, final RMSNorm, LM head tied to the embedding (unless the config
unties it). Like the reference, an ``attention_mask`` zeroes padded positions before ``in_proj``
and after the convolution, so padding (left or right) contributes nothing to the state.

Checkpoints: HF ``MambaForCausalLM`` folders (``backbone.embeddings``, ``backbone.layers.N.mixer.*``,
``backbone.layers.N.norm``, ``backbone.norm_f``, ``lm_head`` absent when tied) and the original
``mamba_ssm`` layout (``backbone.embedding``, config with ``d_model``/``n_layer``/``ssm_cfg``).

Incremental decoding: :meth:`MambaLM.init_cache` / :meth:`MambaLM.decode_step` carry, per layer,
the last ``d_conv`` inputs of the convolution and the ``[d_inner, d_state]`` SSM state; the
per-token cost does not depend on the position.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from glmjax.errors import CheckpointError, ConfigError
from glmjax.kernels.selective_scan import selective_scan, selective_state_update
from glmjax.models.base import FamilySpec, PresetTable, config_from_dict, config_to_dict, float32_matmuls
from glmjax.models.checkpoints import TensorSource
from glmjax.tokenizers import BPETokenizer, Tokenizer, causal_char_tokenizer

_List = getattr(nnx, "List", list)
F32 = jnp.float32



def _draw(key: jax.Array, shape: tuple[int, ...], kind: str, scale: float = 1.0) -> jax.Array:
    """Float32 initial values: ``uniform`` in [-scale, scale], ``unit`` in [0, 1), ``normal``
    with std ``scale``, or ``zeros``/``ones``.

    Values are drawn with NumPy from a seed taken from ``key`` (same key, same values): eager
    ``jax.random`` calls compile one XLA program per shape, which dominates building a model.
    Under tracing (``nnx.eval_shape``, ``jax.jit``) ``jax.random`` draws from the same
    distribution instead.
    """
    if kind in ("zeros", "ones"):
        return jnp.asarray((np.zeros if kind == "zeros" else np.ones)(shape, np.float32))
    try:
        raw = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
        rng = np.random.default_rng(np.asarray(raw).ravel().tolist())
    except jax.errors.TracerArrayConversionError:
        if kind == "normal":
            return scale * jax.random.normal(key, shape, F32)
        lo = 0.0 if kind == "unit" else -scale
        return jax.random.uniform(key, shape, F32, lo, 1.0 if kind == "unit" else scale)
    if kind == "normal":
        out = rng.normal(0.0, scale, shape)
    else:
        out = rng.uniform(0.0, 1.0, shape) if kind == "unit" else rng.uniform(-scale, scale, shape)
    return jnp.asarray(out.astype(np.float32))


def _init(kind: str, scale: float = 1.0):
    """An NNX initializer ``(key, shape, dtype)`` drawing with :func:`_draw`."""
    return lambda key, shape, dtype=F32: _draw(key, tuple(shape), kind, scale).astype(dtype)


def _torch_linear_init(key, shape, dtype=F32):
    """torch's default ``nn.Linear`` weight init, U(+-1/sqrt(fan_in)), for an [in, out] kernel."""
    return _draw(key, tuple(shape), "uniform", 1.0 / math.sqrt(shape[0])).astype(dtype)


def normal_init(std: float):
    """N(0, std) initializer (embeddings)."""
    return _init("normal", std)


# ---------------------------------------------------------------------------------------------
# Building blocks (also used by Caduceus)

def check_scan_options(chunk: int | None, inner: str) -> None:
    """ConfigError unless ``chunk`` is None or >= 1 and ``inner`` is ``scan`` or ``segsum``."""
    if chunk is not None and int(chunk) < 1:
        raise ConfigError(f"scan_chunk must be >= 1 (or None for automatic), got {chunk}")
    if inner not in ("scan", "segsum"):
        raise ConfigError(f"scan_inner must be 'scan' or 'segsum', got {inner!r}")


class Norm(nnx.Module):
    """RMSNorm (``rms=True``: ``x / sqrt(mean(x^2) + eps) * w``) or LayerNorm (with bias), in
    float32 over the last axis. ``reverse_weight=True`` applies the channel-reversed weight (what
    reverse-complement wrappers compute as ``rc(norm(rc(x)))``)."""

    def __init__(self, dim: int, eps: float, rms: bool = True):
        self.weight = nnx.Param(_draw(None, (dim,), "ones"))
        self.bias = None if rms else nnx.Param(_draw(None, (dim,), "zeros"))
        self.eps = float(eps)
        self.rms = bool(rms)

    def __call__(self, x: jax.Array, reverse_weight: bool = False) -> jax.Array:
        x = x.astype(F32)
        w = self.weight[...]
        if self.rms:
            y = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.eps)
        else:
            mu = jnp.mean(x, axis=-1, keepdims=True)
            var = jnp.mean(jnp.square(x - mu), axis=-1, keepdims=True)
            y = (x - mu) * jax.lax.rsqrt(var + self.eps)
        b = None if self.bias is None else self.bias[...]
        if reverse_weight:
            w = w[::-1]
            b = None if b is None else b[::-1]
        y = y * w
        return y if b is None else y + b


def linear(din: int, dout: int, use_bias: bool, dtype, rngs: nnx.Rngs, kernel_init=None) -> nnx.Linear:
    """``nnx.Linear`` with float32 parameters, compute ``dtype`` and torch's default init."""
    return nnx.Linear(din, dout, use_bias=use_bias, dtype=dtype, param_dtype=F32,
                      kernel_init=kernel_init or _torch_linear_init, bias_init=_init("zeros"), rngs=rngs)


def causal_depthwise_conv(x: jax.Array, weight: jax.Array, bias: jax.Array | None) -> jax.Array:
    """Causal depthwise 1-D convolution: ``x [R, L, D]``, ``weight [D, k]``, ``bias [D]`` ->
    ``[R, L, D]`` with ``y_t = b + sum_j w[:, j] * x_{t-k+1+j}`` (zeros before the start), i.e.
    torch ``Conv1d(groups=D, padding=k-1)`` truncated to the first ``L`` outputs."""
    k = weight.shape[1]
    length = x.shape[1]
    xp = jnp.pad(x, ((0, 0), (k - 1, 0), (0, 0)))
    y = sum(xp[:, j:j + length] * weight[:, j] for j in range(k))
    return y if bias is None else y + bias


class SSMCore(nnx.Module):
    """The direction-specific part of a Mamba mixer: depthwise conv, ``x_proj``, ``dt_proj``,
    ``A_log``, ``D``. ``in_proj`` / ``out_proj`` live in the owning mixer (Caduceus ties them
    between its forward and reverse directions)."""

    def __init__(self, d_inner: int, d_state: int, d_conv: int, dt_rank: int, conv_bias: bool,
                 dtype, rngs: nnx.Rngs, dt_min: float = 1e-3, dt_max: float = 0.1, dt_floor: float = 1e-4):
        self.d_inner, self.d_state, self.dt_rank = d_inner, d_state, dt_rank
        bound = 1.0 / math.sqrt(d_conv)
        self.conv_weight = nnx.Param(_draw(rngs.params(), (d_inner, d_conv), "uniform", bound))
        self.conv_bias = nnx.Param(_draw(rngs.params(), (d_inner,), "uniform", bound)) if conv_bias else None
        self.x_proj = linear(d_inner, dt_rank + 2 * d_state, False, dtype, rngs)
        self.dt_proj = linear(dt_rank, d_inner, True, dtype, rngs, kernel_init=_init("uniform", dt_rank ** -0.5))
        # dt_proj.bias = softplus^-1(dt) with dt log-uniform in [dt_min, dt_max] (mamba_ssm init)
        u = _draw(rngs.params(), (d_inner,), "unit")
        try:
            u, xp = np.asarray(u), np
        except jax.errors.TracerArrayConversionError:
            xp = jnp
        dt = xp.maximum(xp.exp(u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)), dt_floor)
        self.dt_proj.bias[...] = jnp.asarray(dt + xp.log(-xp.expm1(-dt)), F32)
        a = np.broadcast_to(np.arange(1, d_state + 1, dtype=np.float32), (d_inner, d_state))
        self.A_log = nnx.Param(jnp.asarray(np.log(a)))
        self.D = nnx.Param(_draw(None, (d_inner,), "ones"))

    def A(self) -> jax.Array:
        """``A = -exp(A_log)``, float32 ``[d_inner, d_state]``."""
        return -jnp.exp(self.A_log[...].astype(F32))

    def params_from_conv(self, u: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Selection parameters from the post-conv activations ``u [..., d_inner]``: ``Δ`` (after
        softplus, float32 ``[..., d_inner]``), ``B``, ``C`` (float32 ``[..., d_state]``)."""
        proj = self.x_proj(u)
        r, n = self.dt_rank, self.d_state
        dt = jax.nn.softplus(self.dt_proj(proj[..., :r]).astype(F32))
        return dt, proj[..., r:r + n].astype(F32), proj[..., r + n:].astype(F32)

    def conv(self, x: jax.Array) -> jax.Array:
        """``silu(causal depthwise conv(x))`` over ``[R, L, d_inner]`` (float32)."""
        bias = None if self.conv_bias is None else self.conv_bias[...]
        return jax.nn.silu(causal_depthwise_conv(x.astype(F32), self.conv_weight[...], bias))

    def conv_step(self, window: jax.Array, x_t: jax.Array) -> tuple[jax.Array, jax.Array]:
        """One convolution step: ``window [R, d_inner, d_conv]`` (last inputs, oldest first) and the
        new input ``x_t [R, d_inner]`` -> ``(silu(conv output) [R, d_inner], new window)``."""
        window = jnp.concatenate([window[..., 1:], x_t.astype(F32)[..., None]], axis=-1)
        y = jnp.sum(window * self.conv_weight[...], axis=-1)
        if self.conv_bias is not None:
            y = y + self.conv_bias[...]
        return jax.nn.silu(y), window


class MambaMixer(nnx.Module):
    """A Mamba v1 mixer: ``in_proj`` -> :class:`SSMCore` -> selective scan -> ``out_proj``."""

    def __init__(self, d_model: int, d_inner: int, d_state: int, d_conv: int, dt_rank: int,
                 conv_bias: bool, bias: bool, dtype, rngs: nnx.Rngs, scan_chunk: int | None = None,
                 scan_inner: str = "scan"):
        self.d_inner = d_inner
        self.dtype = dtype
        self.scan_chunk = scan_chunk
        self.scan_inner = scan_inner
        self.in_proj = linear(d_model, 2 * d_inner, bias, dtype, rngs)
        self.ssm = SSMCore(d_inner, d_state, d_conv, dt_rank, conv_bias, dtype, rngs)
        self.out_proj = linear(d_inner, d_model, bias, dtype, rngs)

    def __call__(self, h: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        """``h [R, L, d_model]`` (and optional bool ``mask [R, L]``) -> ``[R, L, d_model]``."""
        if mask is not None:
            h = h * mask[..., None].astype(h.dtype)
        xz = self.in_proj(h.astype(self.dtype))
        u = self.ssm.conv(xz[..., :self.d_inner])
        if mask is not None:
            u = u * mask[..., None].astype(u.dtype)
        dt, b, c = self.ssm.params_from_conv(u.astype(self.dtype))
        y = selective_scan(u, dt, self.ssm.A(), b, c, self.ssm.D[...], xz[..., self.d_inner:],
                           chunk_size=self.scan_chunk, inner=self.scan_inner)
        return self.out_proj(y.astype(self.dtype))

    def prefill(self, h: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Full pass over an unpadded prefix ``h [R, T, d_model]`` that also returns the decoding
        state after it: ``(out [R, T, d_model], conv window [R, d_inner, d_conv], ssm state
        [R, d_inner, d_state])``."""
        xz = self.in_proj(h.astype(self.dtype))
        x_in = xz[..., :self.d_inner].astype(F32)
        u = self.ssm.conv(x_in)
        dt, b, c = self.ssm.params_from_conv(u.astype(self.dtype))
        y, state = selective_scan(u, dt, self.ssm.A(), b, c, self.ssm.D[...], xz[..., self.d_inner:],
                                  chunk_size=self.scan_chunk, inner=self.scan_inner, return_final_state=True)
        k = self.ssm.conv_weight.shape[1]
        window = jnp.pad(x_in, ((0, 0), (k, 0), (0, 0)))[:, -k:]  # last k inputs, zeros before the start
        return self.out_proj(y.astype(self.dtype)), jnp.swapaxes(window, 1, 2), state

    def step(self, h_t: jax.Array, conv_window: jax.Array, ssm_state: jax.Array):
        """One decoding step: ``h_t [R, d_model]`` -> ``(out [R, d_model], conv window, ssm state)``."""
        xz = self.in_proj(h_t.astype(self.dtype))
        u, conv_window = self.ssm.conv_step(conv_window, xz[..., :self.d_inner])
        dt, b, c = self.ssm.params_from_conv(u.astype(self.dtype))
        y, ssm_state = selective_state_update(ssm_state, u, dt, self.ssm.A(), b, c, self.ssm.D[...],
                                              xz[..., self.d_inner:])
        return self.out_proj(y.astype(self.dtype)), conv_window, ssm_state


# ---------------------------------------------------------------------------------------------
# Causal Mamba LM

@dataclass(frozen=True)
class MambaConfig(PresetTable):
    """Causal Mamba LM hyper-parameters (``transformers.MambaConfig`` names in brackets).

    Attributes:
      vocab_size: embedding / LM head rows [vocab_size].
      d_model: residual width [hidden_size].
      n_layer: blocks [num_hidden_layers].
      d_state: SSM state size N [state_size].
      d_conv: depthwise conv kernel [conv_kernel].
      expand: ``d_inner = expand * d_model`` [expand].
      dt_rank: rank of the Δ projection; None = ``ceil(d_model / 16)`` [time_step_rank "auto"].
      conv_bias / bias: bias of the conv / of in_proj and out_proj [use_conv_bias / use_bias].
      norm_eps: RMSNorm epsilon [layer_norm_epsilon].
      rms_norm: RMSNorm (True) or LayerNorm with bias (original ``mamba_ssm`` option).
      tie_embeddings: LM head = embedding [tie_word_embeddings].
      max_len: default context length in tokens (the recurrence itself has no limit).
      scan_chunk: chunk length of the selective scan (None: chosen from the sequence length).
      scan_inner: how the scan treats a chunk, ``scan`` (sequential steps) or ``segsum`` (see
        :func:`glmjax.kernels.selective_scan.selective_scan_chunked`); same results.
      dtype: compute dtype name; parameters stay float32, scan and norms run in float32.
    """

    PRESET_LABEL = "Mamba"

    vocab_size: int = 16
    d_model: int = 768
    n_layer: int = 24
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int | None = None
    conv_bias: bool = True
    bias: bool = False
    norm_eps: float = 1e-5
    rms_norm: bool = True
    tie_embeddings: bool = True
    max_len: int = 131072
    scan_chunk: int | None = None
    scan_inner: str = "scan"
    dtype: str = "float32"

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_layer", "d_state", "d_conv", "expand"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"Mamba config {name} must be >= 1, got {getattr(self, name)}")
        check_scan_options(self.scan_chunk, self.scan_inner)

    @property
    def d_inner(self) -> int:
        return int(self.expand * self.d_model)

    @property
    def time_step_rank(self) -> int:
        return int(self.dt_rank) if self.dt_rank else math.ceil(self.d_model / 16)

    @classmethod
    def tiny(cls) -> MambaConfig:
        """A small model for tests (char vocabulary of 16 ids)."""
        return cls(vocab_size=16, d_model=32, n_layer=2, d_state=8, d_conv=4, expand=2, max_len=256)

    @classmethod
    def _preset_table(cls) -> dict:
        """Named sizes: ``tiny``; ``d256-l16`` (d_model 256, 16 layers, char vocabulary: the
        benchmark shape); ``130m`` (state-spaces/mamba-130m: d 768, 24 layers, vocabulary 50280)."""
        return {
            "tiny": cls.tiny,
            "d256-l16": lambda: cls(vocab_size=16, d_model=256, n_layer=16),
            "130m": lambda: cls(vocab_size=50280, d_model=768, n_layer=24, max_len=2048),
        }

    @classmethod
    def from_hf(cls, cfg: dict) -> MambaConfig:
        """From a ``transformers`` Mamba ``config.json`` (``model_type`` mamba) or an original
        ``mamba_ssm`` one (``d_model``, ``n_layer``, ``ssm_cfg``; vocabulary padded to
        ``pad_vocab_size_multiple`` as ``MambaLMHeadModel`` does)."""
        try:
            if cfg.get("model_type") == "mamba" or "hidden_size" in cfg:
                rank = cfg.get("time_step_rank", "auto")
                d = int(cfg["hidden_size"])
                inner = cfg.get("intermediate_size")
                expand = int(cfg.get("expand", 2))
                if inner is not None and int(inner) != expand * d:
                    raise ConfigError(f"Mamba config intermediate_size {inner} != expand * hidden_size "
                                      f"({expand} * {d})")
                return cls(vocab_size=int(cfg["vocab_size"]), d_model=d, n_layer=int(cfg["num_hidden_layers"]),
                           d_state=int(cfg.get("state_size", 16)), d_conv=int(cfg.get("conv_kernel", 4)),
                           expand=expand, dt_rank=None if rank == "auto" else int(rank),
                           conv_bias=bool(cfg.get("use_conv_bias", True)), bias=bool(cfg.get("use_bias", False)),
                           norm_eps=float(cfg.get("layer_norm_epsilon", 1e-5)),
                           tie_embeddings=bool(cfg.get("tie_word_embeddings", True)))
            ssm = cfg.get("ssm_cfg") or {}
            if ssm.get("layer", "Mamba1") != "Mamba1":
                raise ConfigError(f"Mamba config ssm_cfg.layer {ssm['layer']!r}: only Mamba v1 is supported")
            vocab = int(cfg["vocab_size"])
            mult = int(cfg.get("pad_vocab_size_multiple", 8))
            vocab += (-vocab) % mult
            rank = ssm.get("dt_rank", "auto")
            return cls(vocab_size=vocab, d_model=int(cfg["d_model"]), n_layer=int(cfg["n_layer"]),
                       d_state=int(ssm.get("d_state", 16)), d_conv=int(ssm.get("d_conv", 4)),
                       expand=int(ssm.get("expand", 2)), dt_rank=None if rank == "auto" else int(rank),
                       conv_bias=bool(ssm.get("conv_bias", True)), bias=bool(ssm.get("bias", False)),
                       norm_eps=float(cfg.get("norm_epsilon", 1e-5)), rms_norm=bool(cfg.get("rms_norm", True)),
                       tie_embeddings=bool(cfg.get("tie_embeddings", True)))
        except KeyError as e:
            raise ConfigError(f"Mamba config.json lacks {e.args[0]!r}") from None

    def to_dict(self) -> dict:
        """Plain dict (for glmjax's own checkpoints)."""
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, d: dict) -> MambaConfig:
        """Inverse of :meth:`to_dict` (unknown keys ignored)."""
        return config_from_dict(cls, d)


def detect(cfg: dict) -> bool:
    """True for a ``transformers`` Mamba (v1) ``config.json`` or an original ``mamba_ssm`` one."""
    if cfg.get("model_type") == "mamba":
        return True
    archs = cfg.get("architectures") or []
    if "MambaForCausalLM" in archs:
        return True
    ssm = cfg.get("ssm_cfg")
    return ("model_type" not in cfg and isinstance(ssm, dict) and "d_model" in cfg and "n_layer" in cfg
            and ssm.get("layer", "Mamba1") == "Mamba1")


class MambaBlock(nnx.Module):
    """``h + mixer(norm(h))``."""

    def __init__(self, cfg: MambaConfig, dtype, rngs: nnx.Rngs):
        self.norm = Norm(cfg.d_model, cfg.norm_eps, cfg.rms_norm)
        self.mixer = MambaMixer(cfg.d_model, cfg.d_inner, cfg.d_state, cfg.d_conv, cfg.time_step_rank,
                                cfg.conv_bias, cfg.bias, dtype, rngs, scan_chunk=cfg.scan_chunk,
                                scan_inner=cfg.scan_inner)

    def __call__(self, h: jax.Array, mask: jax.Array | None) -> jax.Array:
        return h + self.mixer(self.norm(h), mask).astype(F32)


class MambaLM(nnx.Module):
    """Causal Mamba language model (``transformers.MambaForCausalLM`` semantics)."""

    def __init__(self, cfg: MambaConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        dtype = jnp.dtype(cfg.dtype)
        self.embed = nnx.Embed(cfg.vocab_size, cfg.d_model, dtype=F32, param_dtype=F32,
                               embedding_init=normal_init(0.02), rngs=rngs)
        self.layers = _List([MambaBlock(cfg, dtype, rngs) for _ in range(cfg.n_layer)])
        self.norm_f = Norm(cfg.d_model, cfg.norm_eps, cfg.rms_norm)
        self.lm_head = None if cfg.tie_embeddings else linear(cfg.d_model, cfg.vocab_size, False, F32, rngs)

    def _logits(self, h: jax.Array) -> jax.Array:
        h = self.norm_f(h)
        if self.lm_head is None:
            return jnp.einsum("...d,vd->...v", h, self.embed.embedding[...].astype(F32),
                              precision=jax.lax.Precision.HIGHEST)
        return self.lm_head(h).astype(F32)

    @float32_matmuls
    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
        """``input_ids int [B, L]`` (optional bool ``attention_mask [B, L]``) -> float32 logits
        ``[B, L, V]``."""
        h = self.embed(jnp.asarray(input_ids, jnp.int32)).astype(F32)
        mask = None if attention_mask is None else jnp.asarray(attention_mask, bool)
        for layer in self.layers:
            h = layer(h, mask)
        return self._logits(h)

    def init_cache(self, batch_size: int, max_len: int) -> dict:
        """Empty decoding state: ``{"conv": [B, n_layer, d_inner, d_conv], "ssm": [B, n_layer,
        d_inner, d_state], "pos": [B] int32}`` (float32; the state size does not depend on
        ``max_len``, which is accepted for the common cache contract)."""
        c = self.cfg
        del max_len
        return {"conv": jnp.zeros((batch_size, c.n_layer, c.d_inner, c.d_conv), F32),
                "ssm": jnp.zeros((batch_size, c.n_layer, c.d_inner, c.d_state), F32),
                "pos": jnp.zeros((batch_size,), jnp.int32)}

    @float32_matmuls
    def prefill(self, input_ids: jax.Array, max_len: int) -> tuple[jax.Array, dict]:
        """Process unpadded prefixes ``int [B, T]`` at once: ``(logits float32 [B, T, V], cache
        at position T)`` (the cache :meth:`decode_step` continues from)."""
        ids = jnp.asarray(input_ids, jnp.int32)
        h = self.embed(ids).astype(F32)
        convs, ssms = [], []
        for layer in self.layers:
            out, conv_i, ssm_i = layer.mixer.prefill(layer.norm(h))
            h = h + out.astype(F32)
            convs.append(conv_i)
            ssms.append(ssm_i)
        cache = self.init_cache(ids.shape[0], max_len)
        cache = {"conv": jnp.stack(convs, axis=1), "ssm": jnp.stack(ssms, axis=1),
                 "pos": cache["pos"] + ids.shape[1]}
        return self._logits(h), cache

    @float32_matmuls
    def decode_step(self, cache: dict, token_ids: jax.Array) -> tuple[jax.Array, dict]:
        """Feed one token per row: ``token_ids int [B]`` -> ``(logits float32 [B, V], new cache)``;
        equals the full forward pass's logits at that position."""
        h = self.embed(jnp.asarray(token_ids, jnp.int32)).astype(F32)
        convs, ssms = [], []
        for i, layer in enumerate(self.layers):
            out, conv_i, ssm_i = layer.mixer.step(layer.norm(h), cache["conv"][:, i], cache["ssm"][:, i])
            h = h + out.astype(F32)
            convs.append(conv_i)
            ssms.append(ssm_i)
        new = {"conv": jnp.stack(convs, axis=1), "ssm": jnp.stack(ssms, axis=1), "pos": cache["pos"] + 1}
        return self._logits(h), new


def build(cfg: MambaConfig, rngs: nnx.Rngs) -> MambaLM:
    """A freshly initialised causal Mamba LM (``mamba_ssm`` init: ``A_log = log(1..N)``, ``D = 1``,
    log-uniform Δ in [1e-3, 0.1], N(0, 0.02) embeddings, torch-default linear/conv init)."""
    return MambaLM(cfg, rngs)


def tokenizer(cfg: MambaConfig, path: Path | None) -> Tokenizer:
    """The checkpoint folder's ``tokenizer.json`` when it has one; otherwise glmjax's causal
    character tokenizer (``[BOS]`` first, A C G T N = 7..11, right padding)."""
    if path is not None and (Path(path) / "tokenizer.json").exists():
        return BPETokenizer(str(Path(path) / "tokenizer.json"), name="mamba-tokenizer")
    if cfg.vocab_size < 12:
        raise ConfigError(f"Mamba vocabulary of {cfg.vocab_size} ids is too small for the character "
                          "tokenizer (ids 0..11); use vocab_size >= 12 or ship a tokenizer.json")
    return causal_char_tokenizer(vocab_size=min(cfg.vocab_size, 16))


def convert_mixer(src: TensorSource, prefix: str, cfg_dims: tuple[int, int, int, int, int], bias: bool,
                  conv_bias: bool, with_proj: bool = True) -> dict[tuple, np.ndarray]:
    """One ``mamba_ssm``/HF Mamba mixer's tensors under ``prefix`` (``...mixer.``) -> flat params
    relative to the mixer: ``in_proj``/``out_proj`` (when ``with_proj``) and ``ssm.*``.

    ``cfg_dims`` = ``(d_model, d_inner, d_state, d_conv, dt_rank)``; torch ``[out, in]`` weights
    become NNX ``[in, out]`` kernels, the conv weight ``[d_inner, 1, k]`` becomes ``[d_inner, k]``.
    """
    d, di, n, k, r = cfg_dims
    out: dict[tuple, np.ndarray] = {}
    if with_proj:
        out[("in_proj", "kernel")] = src.take(f"{prefix}in_proj.weight", (2 * di, d)).T
        out[("out_proj", "kernel")] = src.take(f"{prefix}out_proj.weight", (d, di)).T
        if bias:
            out[("in_proj", "bias")] = src.take(f"{prefix}in_proj.bias", (2 * di,))
            out[("out_proj", "bias")] = src.take(f"{prefix}out_proj.bias", (d,))
    out[("ssm", "conv_weight")] = src.take(f"{prefix}conv1d.weight", (di, 1, k)).reshape(di, k)
    if conv_bias:
        out[("ssm", "conv_bias")] = src.take(f"{prefix}conv1d.bias", (di,))
    out[("ssm", "x_proj", "kernel")] = src.take(f"{prefix}x_proj.weight", (r + 2 * n, di)).T
    out[("ssm", "dt_proj", "kernel")] = src.take(f"{prefix}dt_proj.weight", (di, r)).T
    out[("ssm", "dt_proj", "bias")] = src.take(f"{prefix}dt_proj.bias", (di,))
    out[("ssm", "A_log")] = src.take(f"{prefix}A_log", (di, n))
    out[("ssm", "D")] = src.take(f"{prefix}D", (di,))
    return out


def convert_hf(src: TensorSource, cfg: MambaConfig) -> dict[tuple, np.ndarray]:
    """HF ``MambaForCausalLM`` (or original ``MambaLMHeadModel``) tensors -> flat NNX params.

    A stored ``lm_head.weight`` of a tied model must equal the embedding."""
    d, v = cfg.d_model, cfg.vocab_size
    dims = (d, cfg.d_inner, cfg.d_state, cfg.d_conv, cfg.time_step_rank)
    flat: dict[tuple, np.ndarray] = {}
    emb = src.take("backbone.embeddings.weight", (v, d), "backbone.embedding.weight")
    flat[("embed", "embedding")] = emb

    def norm(dst: tuple, key: str) -> None:
        flat[(*dst, "weight")] = src.take(f"{key}.weight", (d,))
        if not cfg.rms_norm:
            flat[(*dst, "bias")] = src.take(f"{key}.bias", (d,))

    for i in range(cfg.n_layer):
        p = f"backbone.layers.{i}."
        norm(("layers", i, "norm"), f"{p}norm")
        for k, arr in convert_mixer(src, f"{p}mixer.", dims, cfg.bias, cfg.conv_bias).items():
            flat[("layers", i, "mixer", *k)] = arr
    norm(("norm_f",), "backbone.norm_f")
    if cfg.tie_embeddings:
        if "lm_head.weight" in src and not np.array_equal(src.take("lm_head.weight", (v, d)), emb):
            raise CheckpointError(f"{src.origin}: 'lm_head.weight' differs from the embedding although the "
                                  "config ties them (tie_word_embeddings); set it to false to use the head")
    else:
        flat[("lm_head", "kernel")] = src.take("lm_head.weight", (v, d)).T
    src.check_unused()
    return flat


SPEC = FamilySpec(
    attention_mask=False,
    name="mamba",
    objective="causal",
    config_cls=MambaConfig,
    build=build,
    tokenizer=tokenizer,
    detect=detect,
    convert_hf=convert_hf,
    description="Mamba v1 causal LM (selective state space; transformers MambaForCausalLM layout)",
    architecture_class="state-space",
    lora_targets=("in_proj", "out_proj"),
)
