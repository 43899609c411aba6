"""Llama-style causal decoder (registry name ``llama``): the "lightweight transformer" baseline.

Pre-norm blocks with RMSNorm, rotary position embeddings (HF Llama convention: ``rotate_half``
over contiguous halves, ``rope_theta`` and optional ``linear``/``llama3`` scaling from the
config), SwiGLU MLP (``down(act(gate(x)) * up(x))``), grouped-query attention
(``num_key_value_heads``) and an optional tied LM head. Parameter names follow HF
``LlamaForCausalLM`` without the ``model.`` prefix (``layers.0.self_attn.q_proj.kernel``);
kernels are stored ``[in, out]`` (HF ``nn.Linear`` weights are transposed on load).

Tokenizer: :func:`glmjax.tokenizers.causal_char_tokenizer` (``[BOS]`` first, right padding).
With right padding and the causal mask, real positions never see pads; ``attention_mask`` must mark
a prefix of each row (cuDNN attention masks by sequence length).

>>> cfg = LlamaConfig.preset("small")                     # ~14M parameters, vocab 16
>>> model = glmjax.models.build("llama", cfg, seed=0)
>>> logits = model.logits(ids, mask)                      # [B, L, V] float32
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from glmjax.errors import ConfigError
from glmjax.kernels.attention import attention, prefix_shared_attention
from glmjax.models.base import FamilySpec, PresetTable, config_from_dict, config_to_dict, float32_matmuls
from glmjax.models.checkpoints import TensorSource
from glmjax.models.layers import (
    RMSNorm,
    activation,
    apply_rope,
    cache_from_prefill,
    cache_key_mask,
    cache_write,
    check_dtype,
    embed,
    init_kv_cache,
    init_suffix_kv,
    linear,
    lm_logits,
    rope_cos_sin,
    rope_inv_freq,
    suffix_valid,
    suffix_write,
)
from glmjax.tokenizers import Tokenizer, causal_char_tokenizer


@dataclass(frozen=True)
class LlamaConfig(PresetTable):
    """Shape and numerics of a Llama-style decoder (field names as in HF ``LlamaConfig``).

    ``num_key_value_heads``/``head_dim`` None mean "as many as query heads" / ``hidden_size //
    num_attention_heads``. Rotary: ``rope_type`` ``default`` | ``linear`` | ``llama3`` with the
    ``rope_*`` scaling fields. ``dtype`` is the compute dtype (parameters stay float32).
    """

    PRESET_LABEL = "llama"

    vocab_size: int = 16
    hidden_size: int = 32
    intermediate_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    max_position_embeddings: int = 256
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_type: str = "default"
    rope_factor: float = 1.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_position_embeddings: int = 8192
    hidden_act: str = "silu"
    attention_bias: bool = False
    mlp_bias: bool = False
    tie_word_embeddings: bool = False
    initializer_range: float = 0.02
    dtype: str = "float32"

    def __post_init__(self):
        if self.head_dim is None and self.hidden_size % self.num_attention_heads:
            raise ConfigError(f"llama: hidden_size {self.hidden_size} is not divisible by "
                              f"num_attention_heads {self.num_attention_heads}; set head_dim")
        if self.num_attention_heads % self.kv_heads:
            raise ConfigError(f"llama: num_attention_heads {self.num_attention_heads} is not a multiple of "
                              f"num_key_value_heads {self.kv_heads}")
        if self.head_size % 2:
            raise ConfigError(f"llama: head dimension {self.head_size} must be even for rotary embeddings")
        activation(self.hidden_act)
        check_dtype(self.dtype)
        if self.rope_type not in ("default", "linear", "llama3"):
            raise ConfigError(f"llama: unsupported rope type {self.rope_type!r}; supported: default, linear, llama3")

    @property
    def kv_heads(self) -> int:
        """Number of key/value heads."""
        return self.num_key_value_heads or self.num_attention_heads

    @property
    def head_size(self) -> int:
        """Dimension of one attention head."""
        return self.head_dim or self.hidden_size // self.num_attention_heads

    @property
    def max_len(self) -> int:
        """Context length the model was built for (``max_position_embeddings``)."""
        return self.max_position_embeddings

    @classmethod
    def tiny(cls) -> LlamaConfig:
        """2 layers, d=32, 4 query / 2 key-value heads, vocab 16 (tests)."""
        return cls(num_key_value_heads=2)

    @classmethod
    def _preset_table(cls) -> dict:
        """Named shapes: ``tiny`` (tests), ``small`` (~14M params, 1024 tokens), ``100m`` (~99M, 2048)."""
        return {
            "tiny": cls.tiny(),
            "small": cls(hidden_size=384, intermediate_size=1024, num_hidden_layers=8, num_attention_heads=6,
                         max_position_embeddings=1024),
            "100m": cls(hidden_size=768, intermediate_size=2560, num_hidden_layers=12, num_attention_heads=12,
                        max_position_embeddings=2048),
        }

    @classmethod
    def from_hf(cls, d: dict) -> LlamaConfig:
        """From an HF ``LlamaConfig`` ``config.json`` dict (``rope_parameters`` or legacy
        ``rope_theta``/``rope_scaling`` keys)."""
        if d.get("model_type") != "llama":
            raise ConfigError(f"llama: config.json has model_type {d.get('model_type')!r}, expected 'llama'")
        rope = dict(d.get("rope_parameters") or d.get("rope_scaling") or {})
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        try:
            return cls(
                vocab_size=int(d["vocab_size"]),
                hidden_size=int(d["hidden_size"]),
                intermediate_size=int(d["intermediate_size"]),
                num_hidden_layers=int(d["num_hidden_layers"]),
                num_attention_heads=int(d["num_attention_heads"]),
                num_key_value_heads=d.get("num_key_value_heads"),
                head_dim=d.get("head_dim"),
                max_position_embeddings=int(d.get("max_position_embeddings", 2048)),
                rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
                rope_theta=float(rope.get("rope_theta", d.get("rope_theta", 10000.0))),
                rope_type=rope_type,
                rope_factor=float(rope.get("factor", 1.0)),
                rope_low_freq_factor=float(rope.get("low_freq_factor", 1.0)),
                rope_high_freq_factor=float(rope.get("high_freq_factor", 4.0)),
                rope_original_max_position_embeddings=int(rope.get("original_max_position_embeddings",
                                                                   d.get("max_position_embeddings", 8192))),
                hidden_act=d.get("hidden_act", "silu"),
                attention_bias=bool(d.get("attention_bias", False)),
                mlp_bias=bool(d.get("mlp_bias", False)),
                tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
                initializer_range=float(d.get("initializer_range", 0.02)),
            )
        except KeyError as e:
            raise ConfigError(f"llama: config.json lacks required key {e.args[0]!r}") from None

    def to_dict(self) -> dict:
        """Plain dict of the fields (for glmjax's own checkpoints)."""
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, d: dict) -> LlamaConfig:
        """Inverse of :meth:`to_dict` (unknown keys ignored)."""
        return config_from_dict(cls, d)

    def inv_freq(self):
        """Rotary inverse frequencies [head_size // 2] (float32 numpy)."""
        return rope_inv_freq(self.head_size, self.rope_theta, self.rope_type, self.rope_factor,
                             self.rope_low_freq_factor, self.rope_high_freq_factor,
                             self.rope_original_max_position_embeddings)


class LlamaAttention(nnx.Module):
    """Causal self-attention with rotary embeddings and grouped key/value heads."""

    def __init__(self, cfg: LlamaConfig, rngs: nnx.Rngs):
        h, kv, hd, d = cfg.num_attention_heads, cfg.kv_heads, cfg.head_size, cfg.hidden_size
        kw = dict(bias=cfg.attention_bias, dtype=cfg.dtype, std=cfg.initializer_range, rngs=rngs)
        self.q_proj = linear(d, h * hd, **kw)
        self.k_proj = linear(d, kv * hd, **kw)
        self.v_proj = linear(d, kv * hd, **kw)
        self.o_proj = linear(h * hd, d, **kw)
        self.num_heads, self.kv_heads, self.head_dim = h, kv, hd

    def _qkv(self, x, cos, sin):
        b, t, _ = x.shape
        q = self.q_proj(x).reshape(b, t, self.num_heads, self.head_dim)
        k = self.k_proj(x).reshape(b, t, self.kv_heads, self.head_dim)
        v = self.v_proj(x).reshape(b, t, self.kv_heads, self.head_dim)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def __call__(self, x, cos, sin, key_mask):
        """x [B, L, d], cos/sin [B, L, D], key_mask bool [B, L] | None -> (y [B, L, d], k, v)."""
        b, t, _ = x.shape
        q, k, v = self._qkv(x, cos, sin)
        # right padding: the mask is a prefix, so cuDNN masks by length (no [B, H, L, L] bias)
        lengths = None if key_mask is None else key_mask.sum(-1).astype(jnp.int32)
        o = attention(q, k, v, causal=True, key_lengths=lengths)
        return self.o_proj(o.reshape(b, t, -1)), k, v

    def step(self, x, cos, sin, k_cache, v_cache, pos):
        """One token per row: x [B, 1, d] at positions pos [B] -> (y [B, 1, d], k_cache, v_cache)."""
        b = x.shape[0]
        q, k, v = self._qkv(x, cos, sin)
        k_cache = cache_write(k_cache, k, pos)
        v_cache = cache_write(v_cache, v, pos)
        # a one-query attention is memory-bound; XLA handles it on every backend
        o = attention(q, k_cache, v_cache, key_mask=cache_key_mask(pos, k_cache.shape[1]), implementation="xla")
        return self.o_proj(o.reshape(b, 1, -1)), k_cache, v_cache

    def step_shared(self, x, cos, sin, k_prefix, v_prefix, k_suffix, v_suffix, pos):
        """One token per row, rows ``[C, M]`` continuing ``C`` prefixes: x [C, M, d], suffix slot
        pos [C, M] -> (y [C, M, d], k_suffix, v_suffix); see :func:`prefix_shared_attention`."""
        q, k, v = self._qkv(x, cos, sin)
        k_suffix = suffix_write(k_suffix, k, pos)
        v_suffix = suffix_write(v_suffix, v, pos)
        o = prefix_shared_attention(q, k_prefix, v_prefix, k_suffix, v_suffix,
                                    suffix_valid(pos, k_suffix.shape[2]))
        return self.o_proj(o.reshape(*x.shape[:2], -1)), k_suffix, v_suffix


class LlamaMLP(nnx.Module):
    """SwiGLU feed-forward: ``down_proj(act(gate_proj(x)) * up_proj(x))``."""

    def __init__(self, cfg: LlamaConfig, rngs: nnx.Rngs):
        kw = dict(bias=cfg.mlp_bias, dtype=cfg.dtype, std=cfg.initializer_range, rngs=rngs)
        self.gate_proj = linear(cfg.hidden_size, cfg.intermediate_size, **kw)
        self.up_proj = linear(cfg.hidden_size, cfg.intermediate_size, **kw)
        self.down_proj = linear(cfg.intermediate_size, cfg.hidden_size, **kw)
        self.act_name = cfg.hidden_act

    def __call__(self, x):
        return self.down_proj(activation(self.act_name)(self.gate_proj(x)) * self.up_proj(x))


class LlamaDecoderLayer(nnx.Module):
    """Pre-norm block: ``x + attn(norm(x))`` then ``x + mlp(norm(x))``."""

    def __init__(self, cfg: LlamaConfig, rngs: nnx.Rngs):
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = LlamaAttention(cfg, rngs)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = LlamaMLP(cfg, rngs)

    def __call__(self, x, cos, sin, key_mask):
        a, k, v = self.self_attn(self.input_layernorm(x), cos, sin, key_mask)
        x = x + a
        return x + self.mlp(self.post_attention_layernorm(x)), k, v

    def step(self, x, cos, sin, k_cache, v_cache, pos):
        a, k_cache, v_cache = self.self_attn.step(self.input_layernorm(x), cos, sin, k_cache, v_cache, pos)
        x = x + a
        return x + self.mlp(self.post_attention_layernorm(x)), k_cache, v_cache

    def step_shared(self, x, cos, sin, k_prefix, v_prefix, k_suffix, v_suffix, pos):
        a, k_suffix, v_suffix = self.self_attn.step_shared(self.input_layernorm(x), cos, sin, k_prefix, v_prefix,
                                                           k_suffix, v_suffix, pos)
        x = x + a
        return x + self.mlp(self.post_attention_layernorm(x)), k_suffix, v_suffix


class Llama(nnx.Module):
    """Llama-style causal LM: ``(input_ids [B, L], attention_mask [B, L] | None) -> logits [B, L, V]``.

    Incremental decoding: :meth:`init_cache`, :meth:`decode_step`, :meth:`prefill` (see
    :mod:`glmjax.models.layers` for the cache layout).
    """

    def __init__(self, cfg: LlamaConfig, rngs: nnx.Rngs):
        self.config = cfg
        self.embed_tokens = embed(cfg.vocab_size, cfg.hidden_size, dtype=cfg.dtype, std=cfg.initializer_range,
                                  rngs=rngs)
        self.layers = nnx.List([LlamaDecoderLayer(cfg, rngs) for _ in range(cfg.num_hidden_layers)])
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        if not cfg.tie_word_embeddings:
            self.lm_head = linear(cfg.hidden_size, cfg.vocab_size, bias=False, dtype=cfg.dtype,
                                  std=cfg.initializer_range, rngs=rngs)

    def _head(self, x: jax.Array) -> jax.Array:
        x = self.norm(x)
        if self.config.tie_word_embeddings:
            return lm_logits(x, self.embed_tokens.embedding[...], transposed=True)
        return lm_logits(x, self.lm_head.kernel[...], transposed=False)

    def _forward(self, input_ids, attention_mask):
        b, t = input_ids.shape
        positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        cos, sin = rope_cos_sin(positions, self.config.inv_freq())
        x = self.embed_tokens(input_ids)
        ks, vs = [], []
        for layer in self.layers:
            x, k, v = layer(x, cos, sin, attention_mask)
            ks.append(k)
            vs.append(v)
        return self._head(x), ks, vs

    @float32_matmuls
    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
        """int [B, L] ids, bool [B, L] mask (False = pad) -> float32 logits [B, L, V]."""
        return self._forward(input_ids, attention_mask)[0]

    def init_cache(self, batch_size: int, max_len: int) -> dict:
        """An empty KV cache for ``batch_size`` rows of up to ``max_len`` tokens."""
        c = self.config
        return init_kv_cache(batch_size, max_len, c.num_hidden_layers, c.kv_heads, c.head_size, c.dtype)

    @float32_matmuls
    def prefill(self, input_ids: jax.Array, max_len: int) -> tuple[jax.Array, dict]:
        """Process prefixes int [B, T] (no padding) at once: (logits float32 [B, T, V], cache at pos T)."""
        logits, ks, vs = self._forward(input_ids, None)
        return logits, cache_from_prefill(ks, vs, max_len)

    @float32_matmuls
    def decode_step(self, cache: dict, token_ids: jax.Array) -> tuple[jax.Array, dict]:
        """Feed one token per row (int [B]) at the cache's positions: (logits float32 [B, V], cache)."""
        pos = cache["pos"]
        x = self.embed_tokens(token_ids[:, None])
        cos, sin = rope_cos_sin(pos[:, None], self.config.inv_freq())
        ks, vs = [], []
        for layer, kc, vc in zip(self.layers, cache["k"], cache["v"], strict=True):
            x, kc, vc = layer.step(x, cos, sin, kc, vc, pos)
            ks.append(kc)
            vs.append(vc)
        return self._head(x)[:, 0], {"pos": pos + 1, "k": tuple(ks), "v": tuple(vs)}

    @float32_matmuls
    def prefix_state(self, input_ids: jax.Array, suffix_len: int) -> tuple[jax.Array, dict, dict]:
        """Shared-prefix decoding (:mod:`glmjax.models.decoding`): prefixes int [C, T] (no padding)
        -> (logits float32 [C, T, V], the prefixes' keys/values, empty suffix caches of
        ``suffix_len`` slots)."""
        c = self.config
        logits, ks, vs = self._forward(input_ids, None)
        state = init_suffix_kv(input_ids.shape[0], suffix_len, c.num_hidden_layers, c.kv_heads, c.head_size,
                               c.dtype)
        return logits, {"k": tuple(ks), "v": tuple(vs)}, state

    @float32_matmuls
    def suffix_step(self, shared: dict, state: dict, token_ids: jax.Array) -> tuple[jax.Array, dict]:
        """One token per row (int [C, M]) after the shared prefixes and each row's suffix:
        (logits float32 [C, M, V], advanced row state)."""
        pos = state["pos"]
        t = shared["k"][0].shape[1]
        x = self.embed_tokens(token_ids)
        cos, sin = rope_cos_sin(pos + t, self.config.inv_freq())
        ks, vs = [], []
        for layer, kp, vp, kc, vc in zip(self.layers, shared["k"], shared["v"], state["k"], state["v"],
                                         strict=True):
            x, kc, vc = layer.step_shared(x, cos, sin, kp, vp, kc, vc, pos)
            ks.append(kc)
            vs.append(vc)
        return self._head(x), {"pos": pos + 1, "k": tuple(ks), "v": tuple(vs)}


# ---------------------------------------------------------------------------------------------
# Checkpoints and registry

def convert_hf(src: TensorSource, cfg: LlamaConfig) -> dict[tuple, np.ndarray]:
    """HF ``LlamaForCausalLM`` / ``LlamaModel`` tensors -> flat NNX params (Linear weights transposed)."""
    p = "model." if "model.embed_tokens.weight" in src else ""
    d, v, hd = cfg.hidden_size, cfg.vocab_size, cfg.head_size
    out: dict[tuple, np.ndarray] = {("embed_tokens", "embedding"): src.take(f"{p}embed_tokens.weight", (v, d))}

    def lin(key: str, path: tuple, din: int, dout: int, bias: bool) -> None:
        out[(*path, "kernel")] = src.take(f"{key}.weight", (dout, din)).T
        if bias:
            out[(*path, "bias")] = src.take(f"{key}.bias", (dout,))

    qkv = {"q_proj": cfg.num_attention_heads * hd, "k_proj": cfg.kv_heads * hd, "v_proj": cfg.kv_heads * hd}
    for i in range(cfg.num_hidden_layers):
        pre = f"{p}layers.{i}"
        for name, dout in qkv.items():
            lin(f"{pre}.self_attn.{name}", ("layers", i, "self_attn", name), d, dout, cfg.attention_bias)
        lin(f"{pre}.self_attn.o_proj", ("layers", i, "self_attn", "o_proj"), cfg.num_attention_heads * hd, d,
            cfg.attention_bias)
        for name, din, dout in (("gate_proj", d, cfg.intermediate_size), ("up_proj", d, cfg.intermediate_size),
                                ("down_proj", cfg.intermediate_size, d)):
            lin(f"{pre}.mlp.{name}", ("layers", i, "mlp", name), din, dout, cfg.mlp_bias)
        for name in ("input_layernorm", "post_attention_layernorm"):
            out[("layers", i, name, "weight")] = src.take(f"{pre}.{name}.weight", (d,))
    out[("norm", "weight")] = src.take(f"{p}norm.weight", (d,))
    ignore = [r"rotary_emb\.inv_freq$"]
    if cfg.tie_word_embeddings:
        ignore.append(r"^lm_head\.weight$")  # some tied checkpoints store the shared matrix twice
    else:
        out[("lm_head", "kernel")] = src.take("lm_head.weight", (v, d)).T
    src.check_unused(ignore=ignore)
    return out


def _tokenizer(cfg: LlamaConfig, path: Path | None) -> Tokenizer:
    return causal_char_tokenizer(cfg.vocab_size)


def build(cfg: LlamaConfig, rngs: nnx.Rngs) -> Llama:
    """A freshly initialised :class:`Llama` (N(0, initializer_range) weights, unit norms)."""
    return Llama(cfg, rngs)


SPEC = FamilySpec(
    name="llama",
    objective="causal",
    config_cls=LlamaConfig,
    build=build,
    tokenizer=_tokenizer,
    detect=lambda d: d.get("model_type") == "llama",
    convert_hf=convert_hf,
    description="Llama-style causal decoder (RMSNorm, rotary, SwiGLU, GQA): lightweight transformer baseline",
    architecture_class="causal-transformer",
    lora_targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
)
