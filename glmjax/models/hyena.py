"""HyenaDNA: a causal character-level DNA language model built from Hyena long convolutions.

Architecture (LongSafari/hyenadna-*-seqlen-hf, remote code ``modeling_hyena.py``):

* embeddings ``[V_pad, d]`` (vocabulary padded to a multiple of ``pad_vocab_size_multiple``), no
  position embeddings; residual stream in float32;
* each block (pre-norm): ``r = x + mixer(LN1(x)); x = r + mlp(LN2(r))``; LN1/LN2 use eps 1e-5
  whatever the config says, the final ``ln_f`` uses ``layer_norm_epsilon``; the MLP is
  ``fc2(gelu_tanh(fc1(.)))``;
* mixer = Hyena operator of order 2: ``u = in_proj(x)`` ``[L, 3d]``; a depthwise causal
  convolution of width 3 (``uc[t] = w0 u[t-2] + w1 u[t-1] + w2 u[t] + b``); split into
  ``x0, x1, v``; ``v = v * x1``; long convolution ``y = k * v + D v`` with the implicit filter
  ``k [L, d]``; output ``out_proj(y * x0)``;
* implicit filter: positional features ``z [max_seq_len, emb_dim]`` (time, then cos/sin bands),
  an MLP ``Linear sin Linear sin ... Linear(no bias)`` whose sine ``sin(freq * x)`` shares ONE
  ``freq`` vector per layer, then the exponential window ``k * (exp(-t |deltas|) + 0.05)``. The
  features are built for ``max_seq_len`` and sliced to the input length, so a prefix's filter does
  not depend on how long the full input is;
* ``lm_head`` without bias (untied).

The long convolution runs through :func:`glmjax.kernels.fftconv.fftconv` in float32 whatever the
compute dtype. ``z`` is trained in the published checkpoints and is a parameter here (loaded from
the file); ``t`` and ``deltas`` are fixed buffers, rebuilt from their formulas and checked against
the file on load. The checkpoint stores ``freq`` once per layer (safetensors de-duplicates the
aliases ``implicit_filter.3/.5.freq``); it is one parameter here, so the tie is kept.
``use_bias`` and the dropouts of the config are ignored, as in the reference (the skip ``D`` is
always applied).

There is no attention mask: left pads (``[PAD]`` = 4) are ordinary inputs, as in the reference.

Incremental decoding (extraction, exact exposure): ``init_cache`` / ``prefill`` / ``decode_step``
keep, per layer, the last two ``in_proj`` outputs (short-convolution history) and the gated ``v``
sequence at absolute positions ``[B, max_len, d]``; each step's long-convolution output is a
multiply-reduce of that history against the time-reversed filter (``O(t d)`` per step). The
tokenizer appends ``[SEP]`` to every sequence; a decoding prefix is the token ids WITHOUT that
trailing ``[SEP]`` (left padding kept), since ``[SEP]`` marks the end of a finished sequence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from glmjax.errors import CheckpointError, ConfigError, SequenceError
from glmjax.kernels.fftconv import causal_conv_step, fftconv
from glmjax.models.base import FamilySpec, config_from_dict, config_to_dict, float32_matmuls
from glmjax.models.checkpoints import TensorSource
from glmjax.tokenizers import CharTokenizer, hyena_char_tokenizer

_List = getattr(nnx, "List", list)

# Exponential modulation constants of the reference (HyenaExponentialModulation defaults).
MOD_FAST_DECAY = 0.3
MOD_SLOW_DECAY = 1.5
MOD_TARGET = 1e-2
MOD_SHIFT = 0.05
BLOCK_NORM_EPS = 1e-5  # norm1/norm2 are nn.LayerNorm(d) with the default eps in the reference


@dataclass(frozen=True)
class HyenaConfig:
    """HyenaDNA hyper-parameters (names as in the published ``config.json``).

    Attributes:
      vocab_size: tokenizer vocabulary (12); embedding rows are padded to ``padded_vocab_size``.
      d_model: model width ``d``.
      n_layer: number of blocks.
      d_inner: MLP hidden width.
      max_seq_len: length the implicit filter is built for = the context length in tokens
        (published checkpoints add 2 to the nominal length, e.g. 1026 for "1k").
      emb_dim: positional feature size of the filter (odd, >= 3).
      filter_order: hidden width of the filter MLP.
      num_inner_mlps: inner ``Linear + sin`` layers of the filter MLP.
      short_filter_order: width of the short depthwise convolution (3 in every checkpoint).
      hyena_order: order of the Hyena recurrence (2 in every checkpoint).
      activation_freq: initial ``freq`` of the sine activation (fresh models).
      layer_norm_epsilon: eps of ``ln_f``.
      pad_vocab_size_multiple: embedding / lm_head rows are padded to a multiple of this.
      initializer_range: std of the normal init of linear and embedding weights (fresh models).
      dtype: compute dtype name; parameters, the residual stream and the FFT stay float32.
    """

    vocab_size: int = 12
    d_model: int = 256
    n_layer: int = 4
    d_inner: int = 1024
    max_seq_len: int = 1026
    emb_dim: int = 5
    filter_order: int = 64
    num_inner_mlps: int = 2
    short_filter_order: int = 3
    hyena_order: int = 2
    activation_freq: float = 10.0
    layer_norm_epsilon: float = 1e-5
    pad_vocab_size_multiple: int = 8
    initializer_range: float = 0.02
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.hyena_order != 2:
            raise ConfigError(f"HyenaDNA hyena_order={self.hyena_order} is not supported; the published "
                              "models (and the reference code) use order 2")
        if self.short_filter_order != 3:
            raise ConfigError(f"HyenaDNA short_filter_order={self.short_filter_order} is not supported; the "
                              "reference's causal short filter is width 3 (padding 2)")
        if self.emb_dim < 3 or self.emb_dim % 2 == 0:
            raise ConfigError(f"HyenaDNA emb_dim must be odd and >= 3 (time, cos and sin bands), got {self.emb_dim}")
        if min(self.vocab_size, self.d_model, self.n_layer, self.d_inner, self.max_seq_len,
               self.filter_order, self.pad_vocab_size_multiple) < 1 or self.num_inner_mlps < 0:
            raise ConfigError("HyenaDNA sizes must be positive integers")

    @property
    def padded_vocab_size(self) -> int:
        """Rows of the embedding and the lm_head (= V of the logits)."""
        m = self.pad_vocab_size_multiple
        return -(-self.vocab_size // m) * m

    @property
    def max_len(self) -> int:
        """Context length in tokens (the longest input the filter covers)."""
        return self.max_seq_len

    @property
    def compute_dtype(self):
        """The compute dtype as a numpy/jax dtype."""
        return jnp.dtype(self.dtype)

    @classmethod
    def tiny(cls) -> HyenaConfig:
        """A small config for tests (the golden fixture's shapes)."""
        return cls(d_model=32, n_layer=2, d_inner=128, max_seq_len=64, emb_dim=5, filter_order=16)

    @classmethod
    def preset_names(cls) -> tuple[str, ...]:
        """The names :meth:`preset` accepts, in the order `glmjax models presets` lists them."""
        return ("tiny", *PRESETS)

    @classmethod
    def preset(cls, name: str) -> HyenaConfig:
        """Published model shapes: ``tiny`` (tests), ``tiny-1k``, ``small-32k``, ``medium-160k``,
        ``medium-450k``, ``large-1m`` (LongSafari/hyenadna-<name>-seqlen-hf)."""
        if name == "tiny":
            return cls.tiny()
        if name not in PRESETS:
            raise ConfigError(f"unknown HyenaDNA preset {name!r}; choose one of: tiny, {', '.join(PRESETS)}")
        return cls(**PRESETS[name])

    @classmethod
    def from_hf(cls, d: dict) -> HyenaConfig:
        """From a LongSafari ``config.json`` (HyenaConfig of the remote code)."""
        try:
            d_model = int(d.get("d_model", 256))
            d_inner = d.get("d_inner")
            return cls(
                vocab_size=int(d.get("vocab_size", 12)),
                d_model=d_model,
                n_layer=int(d.get("n_layer", 12)),
                d_inner=int(d_inner) if d_inner is not None else 4 * d_model,
                max_seq_len=int(d.get("max_seq_len", 1024)),
                emb_dim=int(d.get("emb_dim", 3)),
                filter_order=int(d.get("filter_order", 64)),
                num_inner_mlps=int(d.get("num_inner_mlps", 2)),
                short_filter_order=int(d.get("short_filter_order", 3)),
                hyena_order=int(d.get("hyena_order", 2)),
                activation_freq=float(d.get("activation_freq", 1)),
                layer_norm_epsilon=float(d.get("layer_norm_epsilon", 1e-5)),
                pad_vocab_size_multiple=int(d.get("pad_vocab_size_multiple", 8)),
                initializer_range=float(d.get("initializer_range", 0.02)),
            )
        except (TypeError, ValueError) as e:
            raise ConfigError(f"HyenaDNA config.json has an invalid value ({e})") from None

    def to_dict(self) -> dict:
        """Plain dict of the fields (glmjax's own checkpoints)."""
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, d: dict) -> HyenaConfig:
        """Inverse of :meth:`to_dict` (unknown keys ignored)."""
        return config_from_dict(cls, d)


# Published checkpoints (LongSafari/hyenadna-*-seqlen-hf config.json: emb_dim 5, filter_order 64,
# activation_freq 10, d_inner 4 d; max_seq_len = nominal length + 2).
_COMMON = dict(emb_dim=5, filter_order=64, activation_freq=10.0)
PRESETS: dict[str, dict] = {
    "tiny-1k": dict(d_model=128, n_layer=2, d_inner=512, max_seq_len=1026, **_COMMON),
    "tiny-16k-d128": dict(d_model=128, n_layer=2, d_inner=512, max_seq_len=16386, **_COMMON),
    "small-32k": dict(d_model=256, n_layer=4, d_inner=1024, max_seq_len=32770, **_COMMON),
    "medium-160k": dict(d_model=256, n_layer=8, d_inner=1024, max_seq_len=160002, **_COMMON),
    "medium-450k": dict(d_model=256, n_layer=8, d_inner=1024, max_seq_len=450002, **_COMMON),
    "large-1m": dict(d_model=256, n_layer=8, d_inner=1024, max_seq_len=1000002, **_COMMON),
}


def detect(cfg: dict) -> bool:
    """True for a HyenaDNA ``config.json``."""
    if cfg.get("model_type") == "hyenadna":
        return True
    return any("HyenaDNA" in str(a) for a in cfg.get("architectures") or ())


# ---------------------------------------------------------------------------------------------
# Fixed tensors of the implicit filter


def positional_features(max_seq_len: int, emb_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Analytic ``z [max_seq_len, emb_dim]`` and ``t [max_seq_len, 1]`` of the implicit filter.

    ``t = linspace(0, 1, M)``; ``z = [t, cos(-f w), sin(-f w)]`` with ``w = 2 pi m / M`` and
    ``f = linspace(1e-4, bands - 1, bands)``, ``bands = (emb_dim - 1) // 2`` (float32, as the
    reference computes them).
    """
    m = max_seq_len
    t = np.linspace(0.0, 1.0, m, dtype=np.float64).astype(np.float32)[:, None]
    bands = (emb_dim - 1) // 2
    w = (2 * math.pi * np.arange(m, dtype=np.float32) / np.float32(m)).astype(np.float32)[:, None]
    f = np.linspace(1e-4, bands - 1, bands, dtype=np.float64).astype(np.float32)[None, :]
    z = np.concatenate([t, np.cos(-f * w), np.sin(-f * w)], axis=-1).astype(np.float32)
    return z, t


def modulation_deltas(d_model: int) -> np.ndarray:
    """Decay rates ``deltas [d]`` of the exponential window (float32)."""
    max_decay = math.log(MOD_TARGET) / MOD_FAST_DECAY
    min_decay = math.log(MOD_TARGET) / MOD_SLOW_DECAY
    return np.linspace(min_decay, max_decay, d_model, dtype=np.float64).astype(np.float32)


class FilterBuffer(nnx.Variable):
    """A fixed tensor of the implicit filter (not trained, rebuilt from its formula)."""


# ---------------------------------------------------------------------------------------------
# Modules


def _linear(din: int, dout: int, cfg: HyenaConfig, rngs: nnx.Rngs, use_bias: bool = True,
            dtype=None) -> nnx.Linear:
    return nnx.Linear(din, dout, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
                      kernel_init=nnx.initializers.normal(cfg.initializer_range),
                      bias_init=nnx.initializers.zeros_init(), rngs=rngs)


class ImplicitFilter(nnx.Module):
    """Long filter ``k [L, d]`` from positional features (float32 throughout)."""

    def __init__(self, cfg: HyenaConfig, rngs: nnx.Rngs):
        z, t = positional_features(cfg.max_seq_len, cfg.emb_dim)
        self.z = nnx.Param(jnp.asarray(z))
        self.t = FilterBuffer(jnp.asarray(t))
        self.deltas = FilterBuffer(jnp.asarray(modulation_deltas(cfg.d_model)))
        self.freq = nnx.Param(jnp.full((cfg.filter_order,), cfg.activation_freq, jnp.float32))
        dims = [cfg.emb_dim] + [cfg.filter_order] * (cfg.num_inner_mlps + 1)
        self.mlp = _List([_linear(a, b, cfg, rngs) for a, b in zip(dims[:-1], dims[1:], strict=True)])
        self.out = _linear(cfg.filter_order, cfg.d_model, cfg, rngs, use_bias=False)
        # the skip D of the long convolution ("filter_fn.bias" in the checkpoint)
        self.bias = nnx.Param(jax.random.normal(rngs.params(), (cfg.d_model,), jnp.float32))

    def __call__(self, length: int) -> jax.Array:
        """The filter for the first ``length`` positions: float32 ``[length, d]``."""
        z = self.z.value[:length]
        t = self.t.value[:length]
        freq = self.freq.value
        h = z
        for lin in self.mlp:
            h = jnp.sin(freq * lin(h))
        h = self.out(h)
        return h * (jnp.exp(-t * jnp.abs(self.deltas.value)) + MOD_SHIFT)


class ShortConv(nnx.Module):
    """Depthwise causal convolution of width 3: ``y[t] = w0 x[t-2] + w1 x[t-1] + w2 x[t] + b``."""

    def __init__(self, channels: int, width: int, rngs: nnx.Rngs):
        bound = 1.0 / math.sqrt(width)  # torch Conv1d default init (fan_in = width for depthwise)
        init = nnx.initializers.uniform(2 * bound)
        self.kernel = nnx.Param(init(rngs.params(), (width, channels), jnp.float32) - bound)
        self.bias = nnx.Param(init(rngs.params(), (channels,), jnp.float32) - bound)

    def __call__(self, x: jax.Array) -> jax.Array:
        """``x [B, L, C]`` -> ``[B, L, C]`` (math in float32, result in ``x.dtype``)."""
        w = self.kernel.value
        width, length = w.shape[0], x.shape[1]
        xp = jnp.pad(x.astype(jnp.float32), ((0, 0), (width - 1, 0), (0, 0)))
        y = self.bias.value + sum(w[j] * xp[:, j:j + length] for j in range(width))
        return y.astype(x.dtype)

    def step(self, history: jax.Array, x: jax.Array) -> jax.Array:
        """One output from ``history [B, width-1, C]`` (oldest first) and the new input ``x [B, C]``."""
        w = self.kernel.value
        window = jnp.concatenate([history, x[:, None]], axis=1).astype(jnp.float32)
        y = self.bias.value + jnp.sum(window * w, axis=1)
        return y.astype(x.dtype)


class HyenaOperator(nnx.Module):
    """Order-2 Hyena mixer."""

    def __init__(self, cfg: HyenaConfig, rngs: nnx.Rngs):
        d, cdt = cfg.d_model, cfg.compute_dtype
        self.d_model = d
        self.in_proj = _linear(d, 3 * d, cfg, rngs, dtype=cdt)
        self.short_filter = ShortConv(3 * d, cfg.short_filter_order, rngs)
        self.filter_fn = ImplicitFilter(cfg, rngs)
        self.out_proj = _linear(d, d, cfg, rngs, dtype=cdt)

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """``x [B, L, d]`` -> (output ``[B, L, d]``, ``in_proj`` output ``[B, L, 3d]``, gated ``v [B, L, d]``)."""
        d = self.d_model
        u = self.in_proj(x)
        uc = self.short_filter(u)
        x0, x1, v = uc[..., :d], uc[..., d:2 * d], uc[..., 2 * d:]
        v = v * x1
        k = self.filter_fn(x.shape[1])
        y = fftconv(v, k, self.filter_fn.bias.value, out_dtype=x.dtype)
        return self.out_proj(y * x0), u, v


class Mlp(nnx.Module):
    """``fc2(gelu_tanh(fc1(x)))``."""

    def __init__(self, cfg: HyenaConfig, rngs: nnx.Rngs):
        cdt = cfg.compute_dtype
        self.fc1 = _linear(cfg.d_model, cfg.d_inner, cfg, rngs, dtype=cdt)
        self.fc2 = _linear(cfg.d_inner, cfg.d_model, cfg, rngs, dtype=cdt)

    def __call__(self, x: jax.Array) -> jax.Array:
        """``[..., d]`` -> ``[..., d]`` in the compute dtype."""
        return self.fc2(jax.nn.gelu(self.fc1(x), approximate=True))


def _norm(d: int, eps: float, cfg: HyenaConfig, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(d, epsilon=eps, dtype=cfg.compute_dtype, param_dtype=jnp.float32, rngs=rngs)


class HyenaBlock(nnx.Module):
    """Pre-norm block with a float32 residual: ``r = x + mixer(LN1(x)); x = r + mlp(LN2(r))``."""

    def __init__(self, cfg: HyenaConfig, rngs: nnx.Rngs):
        self.norm1 = _norm(cfg.d_model, BLOCK_NORM_EPS, cfg, rngs)
        self.mixer = HyenaOperator(cfg, rngs)
        self.norm2 = _norm(cfg.d_model, BLOCK_NORM_EPS, cfg, rngs)
        self.mlp = Mlp(cfg, rngs)

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """float32 ``x [B, L, d]`` -> (float32 ``[B, L, d]``, the mixer's ``in_proj`` output and gated ``v``)."""
        h, u, v = self.mixer(self.norm1(x))
        r = x + h.astype(jnp.float32)
        return r + self.mlp(self.norm2(r)).astype(jnp.float32), u, v


class HyenaDNA(nnx.Module):
    """HyenaDNA causal LM: ``module(input_ids [B, L]) -> float32 logits [B, L, V_pad]``."""

    def __init__(self, cfg: HyenaConfig, rngs: nnx.Rngs):
        self.config = cfg
        self.embed = nnx.Embed(cfg.padded_vocab_size, cfg.d_model, param_dtype=jnp.float32,
                               embedding_init=nnx.initializers.normal(cfg.initializer_range), rngs=rngs)
        self.layers = _List([HyenaBlock(cfg, rngs) for _ in range(cfg.n_layer)])
        self.ln_f = _norm(cfg.d_model, cfg.layer_norm_epsilon, cfg, rngs)
        self.lm_head = _linear(cfg.d_model, cfg.padded_vocab_size, cfg, rngs, use_bias=False,
                               dtype=cfg.compute_dtype)

    def _check_length(self, length: int) -> None:
        if length > self.config.max_seq_len:
            raise SequenceError(f"input of {length} tokens exceeds this HyenaDNA model's context of "
                                f"{self.config.max_seq_len} tokens; split the sequence into shorter windows")

    def _head(self, x: jax.Array) -> jax.Array:
        return self.lm_head(self.ln_f(x)).astype(jnp.float32)

    def _forward(self, input_ids: jax.Array) -> tuple[jax.Array, list[tuple[jax.Array, jax.Array]]]:
        self._check_length(input_ids.shape[1])
        x = self.embed(input_ids).astype(jnp.float32)
        aux = []
        for layer in self.layers:
            x, u, v = layer(x)
            aux.append((u, v))
        return self._head(x), aux

    @float32_matmuls
    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
        """Logits float32 ``[B, L, V_pad]`` of int ``input_ids [B, L]``.

        ``attention_mask`` is accepted for the common model interface and ignored: HyenaDNA has no
        mask, left pads are inputs like in the reference.
        """
        return self._forward(input_ids)[0]

    # -- incremental decoding ------------------------------------------------------------------

    def init_cache(self, batch_size: int, max_len: int) -> dict:
        """An empty decoding cache for ``batch_size`` rows and at most ``max_len`` tokens.

        Returns ``{"pos": int32 [B], "conv": (per layer [B, 2, 3d]), "hist": (per layer
        [B, max_len, d])}`` in the compute dtype; ``conv`` holds the last two ``in_proj`` outputs
        (oldest first), ``hist[:, s]`` the gated ``v`` of position ``s``.
        """
        cfg = self.config
        if not 1 <= max_len <= cfg.max_seq_len:
            raise ConfigError(f"decoding max_len {max_len} must be in [1, {cfg.max_seq_len}] "
                              "(the model's context length)")
        cdt = cfg.compute_dtype
        width = cfg.short_filter_order - 1
        return {
            "pos": jnp.zeros((batch_size,), jnp.int32),
            "conv": tuple(jnp.zeros((batch_size, width, 3 * cfg.d_model), cdt) for _ in range(cfg.n_layer)),
            "hist": tuple(jnp.zeros((batch_size, max_len, cfg.d_model), cdt) for _ in range(cfg.n_layer)),
        }

    def decode_filters(self, max_len: int) -> tuple[jax.Array, ...]:
        """Per layer, the time-reversed long filter padded with zeros: float32 ``[2 max_len, d]``
        with ``row[max_len - 1 - j] = k[j]`` (rows from ``max_len`` on are zero).

        Optional input of :meth:`decode_step`; precompute it once when stepping many times.
        """
        out = []
        for layer in self.layers:
            k = layer.mixer.filter_fn(max_len)
            out.append(jnp.concatenate([k[::-1], jnp.zeros_like(k)], axis=0))
        return tuple(out)

    @float32_matmuls
    def decode_step(self, cache: dict, token_ids: jax.Array,
                    filters: tuple[jax.Array, ...] | None = None) -> tuple[jax.Array, dict]:
        """Feed one token per row: ``token_ids int [B]`` -> (float32 logits ``[B, V_pad]`` predicting
        the next token, updated cache). Equals the full forward pass at that position.

        Stepping past the cache's ``max_len`` is not supported (the new input is dropped).
        """
        pos = cache["pos"]
        max_len = cache["hist"][0].shape[1]
        if filters is None:
            filters = self.decode_filters(max_len)
        x = self.embed(token_ids.astype(jnp.int32)).astype(jnp.float32)
        x, conv, hist = self._step_layers(x, cache["conv"], cache["hist"], filters, pos)
        return self._head(x), {"pos": pos + 1, "conv": conv, "hist": hist}

    def _step_layers(self, x: jax.Array, convs: tuple, hists: tuple, filters: tuple, slot: jax.Array,
                     extra: tuple | None = None) -> tuple[jax.Array, tuple, tuple]:
        """The blocks of one decoding step over ``N`` rows: float32 ``x [N, d]``, per layer the
        short-filter history ``[N, 2, 3d]``, the long-convolution history ``[N, S, d]`` (the new
        gated input is written at ``slot [N]``), the time-reversed filter of :meth:`decode_filters`
        and optionally ``extra [N, d]``: the convolution output the history does not cover (the
        shared prefix's part). Returns ``(x, convs, hists)``."""
        d = self.config.d_model
        max_len = hists[0].shape[1]
        rows = jnp.arange(x.shape[0])
        # window[b, s] = k[slot_b - s] for s <= slot_b, 0 after (reads the zero half of the filter)
        starts = max_len - 1 - slot
        new_conv, new_hist = [], []
        for i, (layer, conv, hist, kpad) in enumerate(zip(self.layers, convs, hists, filters, strict=True)):
            mixer = layer.mixer
            u = mixer.in_proj(layer.norm1(x))
            uc = mixer.short_filter.step(conv, u)
            x0, x1, v = uc[..., :d], uc[..., d:2 * d], uc[..., 2 * d:]
            v = v * x1
            hist = hist.at[rows, slot].set(v.astype(hist.dtype), mode="drop")
            window = jax.vmap(lambda s, kp=kpad: jax.lax.dynamic_slice_in_dim(kp, s, max_len, axis=0))(starts)
            y = causal_conv_step(hist, window, v, mixer.filter_fn.bias.value)
            if extra is not None:
                y = y + extra[i]
            y = y.astype(u.dtype)
            r = x + mixer.out_proj(y * x0).astype(jnp.float32)
            x = r + layer.mlp(layer.norm2(r)).astype(jnp.float32)
            new_conv.append(jnp.concatenate([conv[:, 1:], u[:, None].astype(conv.dtype)], axis=1))
            new_hist.append(hist)
        return x, tuple(new_conv), tuple(new_hist)

    @float32_matmuls
    def prefix_state(self, input_ids: jax.Array, suffix_len: int) -> tuple[jax.Array, dict, dict]:
        """Shared-prefix decoding (:mod:`glmjax.models.decoding`) over prefixes int ``[C, T]``.

        Returns (float32 logits ``[C, T, V_pad]``, shared, row state). ``shared["prefix_conv"]``
        holds per layer float32 ``[C, S, d]``: the long convolution of the prefix's gated inputs
        at the ``S = suffix_len`` positions after it (an FFT convolution of the zero-padded
        prefix), so a row's history holds only its own suffix. The row state is the prefix's
        short-filter history and an empty ``[C, S, d]`` suffix history.
        """
        cfg = self.config
        c, t = input_ids.shape
        s = max(int(suffix_len), 1)
        self._check_length(t + s)
        logits, aux = self._forward(input_ids)
        width = cfg.short_filter_order - 1
        cdt = cfg.compute_dtype
        pre, conv = [], []
        for layer, (u, v) in zip(self.layers, aux, strict=True):
            padded = jnp.pad(v.astype(jnp.float32), ((0, 0), (0, s), (0, 0)))
            # v is zero after the prefix, so the skip term adds nothing there
            y = fftconv(padded, layer.mixer.filter_fn(t + s), out_dtype=jnp.float32)
            pre.append(y[:, t:])
            tail = jnp.concatenate([jnp.zeros((c, width, 3 * cfg.d_model), cdt), u.astype(cdt)], axis=1)
            conv.append(tail[:, -width:])
        state = {"pos": jnp.zeros((c,), jnp.int32), "conv": tuple(conv),
                 "hist": tuple(jnp.zeros((c, s, cfg.d_model), cdt) for _ in range(cfg.n_layer))}
        return logits, {"prefix_conv": tuple(pre)}, state

    @float32_matmuls
    def suffix_step(self, shared: dict, state: dict, token_ids: jax.Array) -> tuple[jax.Array, dict]:
        """One token per row (int ``[C, M]``) after the shared prefixes and each row's suffix:
        (float32 logits ``[C, M, V_pad]``, advanced row state)."""
        c, m = token_ids.shape
        pos = state["pos"]
        s = state["hist"][0].shape[2]

        def flat(a):
            return a.reshape(c * m, *a.shape[2:])

        # the prefix's convolution output at this row's position: prefix_conv[c, pos[c, m]]
        extra = tuple(flat(jnp.take_along_axis(p[:, None], pos[:, :, None, None], axis=2)[:, :, 0])
                      for p in shared["prefix_conv"])
        x = self.embed(flat(token_ids)).astype(jnp.float32)
        x, conv, hist = self._step_layers(x, tuple(map(flat, state["conv"])), tuple(map(flat, state["hist"])),
                                          self.decode_filters(s), flat(pos), extra)

        def unflat(a):
            return a.reshape(c, m, *a.shape[1:])

        return unflat(self._head(x)), {"pos": pos + 1, "conv": tuple(map(unflat, conv)),
                                       "hist": tuple(map(unflat, hist))}

    @float32_matmuls
    def prefill(self, input_ids: jax.Array, max_len: int) -> tuple[jax.Array, dict]:
        """Run the FFT forward over a prefix and build the decoding cache.

        Args:
          input_ids: int ``[B, T]`` prefix (without the trailing ``[SEP]``), ``T <= max_len``.
          max_len: the cache capacity in tokens (prefix plus tokens still to be decoded).
        Returns:
          (float32 logits ``[B, T, V_pad]``, cache positioned at ``T``).
        """
        b, length = input_ids.shape
        if length > max_len:
            raise ConfigError(f"prefix of {length} tokens does not fit a decoding cache of {max_len}")
        cache = self.init_cache(b, max_len)
        if length == 0:
            return jnp.zeros((b, 0, self.config.padded_vocab_size), jnp.float32), cache
        logits, aux = self._forward(input_ids)
        width = self.config.short_filter_order - 1
        conv, hist = [], []
        for (u, v), c0, h0 in zip(aux, cache["conv"], cache["hist"], strict=True):
            tail = jnp.concatenate([c0, u.astype(c0.dtype)], axis=1)[:, -width:]
            conv.append(tail)
            hist.append(h0.at[:, :length].set(v.astype(h0.dtype)))
        cache = {"pos": jnp.full((b,), length, jnp.int32), "conv": tuple(conv), "hist": tuple(hist)}
        return logits, cache


def build(cfg: HyenaConfig, rngs: nnx.Rngs) -> HyenaDNA:
    """A freshly initialised HyenaDNA (filter features, ``t`` and ``deltas`` analytic)."""
    return HyenaDNA(cfg, rngs)


def tokenizer(cfg: HyenaConfig, path: Path | None) -> CharTokenizer:
    """HyenaDNA's character tokenizer (``[SEP]`` appended, left ``[PAD]``)."""
    return hyena_char_tokenizer(cfg.vocab_size)


# ---------------------------------------------------------------------------------------------
# Published checkpoint -> NNX parameters


def _prefix(src: TensorSource) -> str:
    for p in ("hyena.backbone.", "backbone.", ""):
        if f"{p}embeddings.word_embeddings.weight" in src:
            return p
    raise CheckpointError(f"{src.origin}: no HyenaDNA embedding tensor "
                          "(hyena.backbone.embeddings.word_embeddings.weight); not a HyenaDNA checkpoint")


def convert_hf(src: TensorSource, cfg: HyenaConfig) -> dict[tuple, np.ndarray]:
    """LongSafari ``*-hf`` tensors -> flat NNX parameter paths.

    ``freq`` is read once per layer (``implicit_filter.1.freq``, or an alias if that one is
    absent); aliases that are present must equal it. ``pos_emb.t`` and ``modulation.deltas`` are
    checked against their formulas (they are fixed buffers here).
    """
    d, vp, f, e, m = cfg.d_model, cfg.padded_vocab_size, cfg.filter_order, cfg.emb_dim, cfg.max_seq_len
    p = _prefix(src)
    out: dict[tuple, np.ndarray] = {}

    def lin(path: tuple, key: str, din: int, dout: int, bias: bool = True) -> None:
        out[(*path, "kernel")] = src.take(f"{key}.weight", (dout, din)).T
        if bias:
            out[(*path, "bias")] = src.take(f"{key}.bias", (dout,))

    def norm(path: tuple, key: str) -> None:
        out[(*path, "scale")] = src.take(f"{key}.weight", (d,))
        out[(*path, "bias")] = src.take(f"{key}.bias", (d,))

    out[("embed", "embedding")] = src.take(f"{p}embeddings.word_embeddings.weight", (vp, d))
    z_ref, t_ref = positional_features(m, e)
    deltas_ref = modulation_deltas(d)
    n_lin = cfg.num_inner_mlps + 1
    for i in range(cfg.n_layer):
        lp, pp = f"{p}layers.{i}.", ("layers", i)
        norm((*pp, "norm1"), f"{lp}norm1")
        norm((*pp, "norm2"), f"{lp}norm2")
        mp, mk = (*pp, "mixer"), f"{lp}mixer"
        lin((*mp, "in_proj"), f"{mk}.in_proj", d, 3 * d)
        lin((*mp, "out_proj"), f"{mk}.out_proj", d, d)
        lin((*pp, "mlp", "fc1"), f"{lp}mlp.fc1", d, cfg.d_inner)
        lin((*pp, "mlp", "fc2"), f"{lp}mlp.fc2", cfg.d_inner, d)
        out[(*mp, "short_filter", "kernel")] = src.take(f"{mk}.short_filter.weight", (3 * d, 1, 3))[:, 0, :].T
        out[(*mp, "short_filter", "bias")] = src.take(f"{mk}.short_filter.bias", (3 * d,))
        fp, fk = (*mp, "filter_fn"), f"{mk}.filter_fn"
        out[(*fp, "bias")] = src.take(f"{fk}.bias", (d,))
        out[(*fp, "z")] = src.take(f"{fk}.pos_emb.z", (1, m, e))[0]
        _check_buffer(src, f"{fk}.pos_emb.t", t_ref[None], (1, m, 1))
        _check_buffer(src, f"{fk}.modulation.deltas", deltas_ref[None, None], (1, 1, d))
        dims = [e] + [f] * n_lin
        for j in range(n_lin):
            lin((*fp, "mlp", j), f"{fk}.implicit_filter.{2 * j}", dims[j], dims[j + 1])
        lin((*fp, "out"), f"{fk}.implicit_filter.{2 * n_lin}", f, d, bias=False)
        aliases = [f"{fk}.implicit_filter.{2 * j + 1}.freq" for j in range(n_lin)]
        freq = src.take(aliases[0], (1, f), *aliases[1:])
        for a in aliases:
            if a in src and not np.array_equal(src.take(a, (1, f)), freq):
                raise CheckpointError(f"{src.origin}: {a} differs from the layer's other freq tensors; "
                                      "HyenaDNA shares one sine frequency per layer")
        out[(*fp, "freq")] = freq[0]
    norm(("ln_f",), f"{p}ln_f")
    if "lm_head.weight" not in src:
        raise CheckpointError(f"{src.origin}: no lm_head.weight; glmjax needs a HyenaDNAForCausalLM "
                              "checkpoint (a backbone or classifier has no language-model head)")
    out[("lm_head", "kernel")] = src.take("lm_head.weight", (vp, d)).T
    src.check_unused()
    return out


def _check_buffer(src: TensorSource, key: str, ref: np.ndarray, shape: tuple[int, ...]) -> None:
    if key not in src:
        return  # non-persistent in some exports; the formula is what the reference computes
    got = src.take(key, shape)
    if src.shapes_only:
        return
    if not np.allclose(got, ref, rtol=1e-5, atol=1e-6):
        raise CheckpointError(f"{src.origin}: {key} differs from the HyenaDNA formula "
                              f"(max |diff| {float(np.abs(got - ref).max()):.3g}); unsupported filter variant")


SPEC = FamilySpec(
    attention_mask=False,
    name="hyenadna",
    objective="causal",
    config_cls=HyenaConfig,
    build=build,
    tokenizer=tokenizer,
    detect=detect,
    convert_hf=convert_hf,
    description="HyenaDNA causal DNA LM (Hyena long convolutions, single-nucleotide tokens)",
    architecture_class="long-convolution",
    lora_targets=("in_proj", "out_proj", "fc1", "fc2"),
)
