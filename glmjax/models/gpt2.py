"""GPT-2-style causal decoder (registry name ``gpt2``): the second lightweight-transformer baseline.

Learned absolute positions, pre-norm LayerNorm blocks, fused ``c_attn`` (q|k|v) projection, GELU
(tanh approximation, HF ``gelu_new``) MLP, LM head tied to the token embedding by default.
Parameter names follow HF ``GPT2LMHeadModel`` without the ``transformer.`` prefix
(``h.0.attn.c_attn.kernel``); HF's ``Conv1D`` weights are already ``[in, out]``, like NNX kernels.

Tokenizer: :func:`glmjax.tokenizers.causal_char_tokenizer` (``[BOS]`` first, right padding).
``attention_mask`` must mark a prefix of each row (cuDNN attention masks by sequence length).

>>> cfg = GPT2Config.preset("small")                      # ~15M parameters, vocab 16
>>> model = glmjax.models.build("gpt2", cfg, seed=0)
>>> logits = model.logits(ids, mask)                      # [B, L, V] float32
"""

from __future__ import annotations

import math
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
    LayerNorm,
    activation,
    cache_from_prefill,
    cache_key_mask,
    cache_write,
    check_dtype,
    embed,
    init_kv_cache,
    init_suffix_kv,
    linear,
    lm_logits,
    suffix_valid,
    suffix_write,
)
from glmjax.tokenizers import Tokenizer, causal_char_tokenizer


@dataclass(frozen=True)
class GPT2Config(PresetTable):
    """Shape and numerics of a GPT-2-style decoder (field names as in HF ``GPT2Config``).

    ``n_inner`` None means ``4 * n_embd``. ``scale_attn_weights`` divides attention logits by
    ``sqrt(head_dim)``; ``scale_attn_by_inverse_layer_idx`` additionally by ``layer + 1``.
    ``dtype`` is the compute dtype (parameters stay float32).
    """

    PRESET_LABEL = "gpt2"

    vocab_size: int = 16
    n_positions: int = 256
    n_embd: int = 32
    n_layer: int = 2
    n_head: int = 4
    n_inner: int | None = None
    activation_function: str = "gelu_new"
    layer_norm_epsilon: float = 1e-5
    scale_attn_weights: bool = True
    scale_attn_by_inverse_layer_idx: bool = False
    tie_word_embeddings: bool = True
    initializer_range: float = 0.02
    dtype: str = "float32"

    def __post_init__(self):
        if self.n_embd % self.n_head:
            raise ConfigError(f"gpt2: n_embd {self.n_embd} is not divisible by n_head {self.n_head}")
        activation(self.activation_function)
        check_dtype(self.dtype)

    @property
    def head_dim(self) -> int:
        """Dimension of one attention head."""
        return self.n_embd // self.n_head

    @property
    def inner_size(self) -> int:
        """MLP hidden width."""
        return self.n_inner or 4 * self.n_embd

    @property
    def max_len(self) -> int:
        """Context length (``n_positions``: rows of the position table)."""
        return self.n_positions

    @classmethod
    def tiny(cls) -> GPT2Config:
        """2 layers, d=32, 4 heads, vocab 16 (tests)."""
        return cls()

    @classmethod
    def _preset_table(cls) -> dict:
        """Named shapes: ``tiny`` (tests), ``small`` (~15M params, 1024 tokens), ``100m`` (~101M, 1024)."""
        return {
            "tiny": cls.tiny(),
            "small": cls(n_embd=384, n_layer=8, n_head=6, n_positions=1024),
            "100m": cls(n_embd=768, n_layer=14, n_head=12, n_positions=1024),
        }

    @classmethod
    def from_hf(cls, d: dict) -> GPT2Config:
        """From an HF ``GPT2Config`` ``config.json`` dict."""
        if d.get("model_type") != "gpt2":
            raise ConfigError(f"gpt2: config.json has model_type {d.get('model_type')!r}, expected 'gpt2'")
        if d.get("add_cross_attention"):
            raise ConfigError("gpt2: checkpoints with cross-attention (encoder-decoder use) are not supported")
        try:
            return cls(
                vocab_size=int(d["vocab_size"]),
                n_positions=int(d.get("n_positions", d.get("n_ctx", 1024))),
                n_embd=int(d["n_embd"]),
                n_layer=int(d["n_layer"]),
                n_head=int(d["n_head"]),
                n_inner=d.get("n_inner"),
                activation_function=d.get("activation_function", "gelu_new"),
                layer_norm_epsilon=float(d.get("layer_norm_epsilon", 1e-5)),
                scale_attn_weights=bool(d.get("scale_attn_weights", True)),
                scale_attn_by_inverse_layer_idx=bool(d.get("scale_attn_by_inverse_layer_idx", False)),
                tie_word_embeddings=bool(d.get("tie_word_embeddings", True)),
                initializer_range=float(d.get("initializer_range", 0.02)),
            )
        except KeyError as e:
            raise ConfigError(f"gpt2: config.json lacks required key {e.args[0]!r}") from None

    def to_dict(self) -> dict:
        """Plain dict of the fields (for glmjax's own checkpoints)."""
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, d: dict) -> GPT2Config:
        """Inverse of :meth:`to_dict` (unknown keys ignored)."""
        return config_from_dict(cls, d)


class GPT2Attention(nnx.Module):
    """Causal self-attention with a fused q|k|v projection (``c_attn``) and output ``c_proj``."""

    def __init__(self, cfg: GPT2Config, layer_idx: int, rngs: nnx.Rngs):
        d, std = cfg.n_embd, cfg.initializer_range
        self.c_attn = linear(d, 3 * d, bias=True, dtype=cfg.dtype, std=std, rngs=rngs)
        # GPT-2 scales residual-branch outputs by 1/sqrt(2 * n_layer) at init
        self.c_proj = linear(d, d, bias=True, dtype=cfg.dtype, std=std / math.sqrt(2 * cfg.n_layer), rngs=rngs)
        self.n_head, self.head_dim = cfg.n_head, cfg.head_dim
        scale = cfg.head_dim ** -0.5 if cfg.scale_attn_weights else 1.0
        if cfg.scale_attn_by_inverse_layer_idx:
            scale /= float(layer_idx + 1)
        self.scale = scale

    def _qkv(self, x):
        b, t, _ = x.shape
        qkv = self.c_attn(x).reshape(b, t, 3, self.n_head, self.head_dim)
        return qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]

    def __call__(self, x, key_mask):
        """x [B, L, d], key_mask bool [B, L] | None -> (y [B, L, d], k, v)."""
        b, t, _ = x.shape
        q, k, v = self._qkv(x)
        # right padding: the mask is a prefix, so cuDNN masks by length (no [B, H, L, L] bias)
        lengths = None if key_mask is None else key_mask.sum(-1).astype(jnp.int32)
        o = attention(q, k, v, causal=True, scale=self.scale, key_lengths=lengths)
        return self.c_proj(o.reshape(b, t, -1)), k, v

    def step(self, x, k_cache, v_cache, pos):
        """One token per row: x [B, 1, d] at positions pos [B] -> (y [B, 1, d], k_cache, v_cache)."""
        b = x.shape[0]
        q, k, v = self._qkv(x)
        k_cache = cache_write(k_cache, k, pos)
        v_cache = cache_write(v_cache, v, pos)
        # a one-query attention is memory-bound; XLA handles it on every backend
        o = attention(q, k_cache, v_cache, key_mask=cache_key_mask(pos, k_cache.shape[1]), scale=self.scale,
                      implementation="xla")
        return self.c_proj(o.reshape(b, 1, -1)), k_cache, v_cache

    def step_shared(self, x, k_prefix, v_prefix, k_suffix, v_suffix, pos):
        """One token per row, rows ``[C, M]`` continuing ``C`` prefixes: x [C, M, d], suffix slot
        pos [C, M] -> (y [C, M, d], k_suffix, v_suffix); see :func:`prefix_shared_attention`."""
        q, k, v = self._qkv(x)
        k_suffix = suffix_write(k_suffix, k, pos)
        v_suffix = suffix_write(v_suffix, v, pos)
        o = prefix_shared_attention(q, k_prefix, v_prefix, k_suffix, v_suffix,
                                    suffix_valid(pos, k_suffix.shape[2]), scale=self.scale)
        return self.c_proj(o.reshape(*x.shape[:2], -1)), k_suffix, v_suffix


class GPT2MLP(nnx.Module):
    """``c_proj(act(c_fc(x)))``."""

    def __init__(self, cfg: GPT2Config, rngs: nnx.Rngs):
        std = cfg.initializer_range
        self.c_fc = linear(cfg.n_embd, cfg.inner_size, bias=True, dtype=cfg.dtype, std=std, rngs=rngs)
        self.c_proj = linear(cfg.inner_size, cfg.n_embd, bias=True, dtype=cfg.dtype,
                             std=std / math.sqrt(2 * cfg.n_layer), rngs=rngs)
        self.act_name = cfg.activation_function

    def __call__(self, x):
        return self.c_proj(activation(self.act_name)(self.c_fc(x)))


class GPT2Block(nnx.Module):
    """Pre-norm block: ``x + attn(ln_1(x))`` then ``x + mlp(ln_2(x))``."""

    def __init__(self, cfg: GPT2Config, layer_idx: int, rngs: nnx.Rngs):
        self.ln_1 = LayerNorm(cfg.n_embd, cfg.layer_norm_epsilon)
        self.attn = GPT2Attention(cfg, layer_idx, rngs)
        self.ln_2 = LayerNorm(cfg.n_embd, cfg.layer_norm_epsilon)
        self.mlp = GPT2MLP(cfg, rngs)

    def __call__(self, x, key_mask):
        a, k, v = self.attn(self.ln_1(x), key_mask)
        x = x + a
        return x + self.mlp(self.ln_2(x)), k, v

    def step(self, x, k_cache, v_cache, pos):
        a, k_cache, v_cache = self.attn.step(self.ln_1(x), k_cache, v_cache, pos)
        x = x + a
        return x + self.mlp(self.ln_2(x)), k_cache, v_cache

    def step_shared(self, x, k_prefix, v_prefix, k_suffix, v_suffix, pos):
        a, k_suffix, v_suffix = self.attn.step_shared(self.ln_1(x), k_prefix, v_prefix, k_suffix, v_suffix, pos)
        x = x + a
        return x + self.mlp(self.ln_2(x)), k_suffix, v_suffix


class GPT2(nnx.Module):
    """GPT-2-style causal LM: ``(input_ids [B, L], attention_mask [B, L] | None) -> logits [B, L, V]``.

    Incremental decoding: :meth:`init_cache`, :meth:`decode_step`, :meth:`prefill` (see
    :mod:`glmjax.models.layers` for the cache layout). Positions must stay below ``n_positions``.
    """

    def __init__(self, cfg: GPT2Config, rngs: nnx.Rngs):
        self.config = cfg
        std = cfg.initializer_range
        self.wte = embed(cfg.vocab_size, cfg.n_embd, dtype=cfg.dtype, std=std, rngs=rngs)
        self.wpe = embed(cfg.n_positions, cfg.n_embd, dtype=cfg.dtype, std=std, rngs=rngs)
        self.h = nnx.List([GPT2Block(cfg, i, rngs) for i in range(cfg.n_layer)])
        self.ln_f = LayerNorm(cfg.n_embd, cfg.layer_norm_epsilon)
        if not cfg.tie_word_embeddings:
            self.lm_head = linear(cfg.n_embd, cfg.vocab_size, bias=False, dtype=cfg.dtype, std=std, rngs=rngs)

    def _check_len(self, n: int) -> None:
        if n > self.config.n_positions:
            raise ConfigError(f"gpt2: {n} positions requested but the model has only n_positions="
                              f"{self.config.n_positions}")

    def _head(self, x: jax.Array) -> jax.Array:
        x = self.ln_f(x)
        if self.config.tie_word_embeddings:
            return lm_logits(x, self.wte.embedding[...], transposed=True)
        return lm_logits(x, self.lm_head.kernel[...], transposed=False)

    def _forward(self, input_ids, attention_mask):
        t = input_ids.shape[1]
        self._check_len(t)
        x = self.wte(input_ids) + self.wpe(jnp.arange(t, dtype=jnp.int32))[None]
        ks, vs = [], []
        for block in self.h:
            x, k, v = block(x, attention_mask)
            ks.append(k)
            vs.append(v)
        return self._head(x), ks, vs

    @float32_matmuls
    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
        """int [B, L] ids, bool [B, L] mask (False = pad) -> float32 logits [B, L, V]."""
        return self._forward(input_ids, attention_mask)[0]

    def init_cache(self, batch_size: int, max_len: int) -> dict:
        """An empty KV cache for ``batch_size`` rows of up to ``max_len`` (<= n_positions) tokens."""
        c = self.config
        self._check_len(max_len)
        return init_kv_cache(batch_size, max_len, c.n_layer, c.n_head, c.head_dim, c.dtype)

    @float32_matmuls
    def prefill(self, input_ids: jax.Array, max_len: int) -> tuple[jax.Array, dict]:
        """Process prefixes int [B, T] (no padding) at once: (logits float32 [B, T, V], cache at pos T)."""
        self._check_len(max_len)
        logits, ks, vs = self._forward(input_ids, None)
        return logits, cache_from_prefill(ks, vs, max_len)

    @float32_matmuls
    def decode_step(self, cache: dict, token_ids: jax.Array) -> tuple[jax.Array, dict]:
        """Feed one token per row (int [B]) at the cache's positions: (logits float32 [B, V], cache)."""
        pos = cache["pos"]
        x = self.wte(token_ids[:, None]) + self.wpe(pos[:, None])
        ks, vs = [], []
        for block, kc, vc in zip(self.h, cache["k"], cache["v"], strict=True):
            x, kc, vc = block.step(x, kc, vc, pos)
            ks.append(kc)
            vs.append(vc)
        return self._head(x)[:, 0], {"pos": pos + 1, "k": tuple(ks), "v": tuple(vs)}

    @float32_matmuls
    def prefix_state(self, input_ids: jax.Array, suffix_len: int) -> tuple[jax.Array, dict, dict]:
        """Shared-prefix decoding (:mod:`glmjax.models.decoding`): prefixes int [C, T] (no padding)
        -> (logits float32 [C, T, V], the prefixes' keys/values, empty suffix caches of
        ``suffix_len`` slots)."""
        c = self.config
        self._check_len(input_ids.shape[1] + suffix_len)
        logits, ks, vs = self._forward(input_ids, None)
        state = init_suffix_kv(input_ids.shape[0], suffix_len, c.n_layer, c.n_head, c.head_dim, c.dtype)
        return logits, {"k": tuple(ks), "v": tuple(vs)}, state

    @float32_matmuls
    def suffix_step(self, shared: dict, state: dict, token_ids: jax.Array) -> tuple[jax.Array, dict]:
        """One token per row (int [C, M]) after the shared prefixes and each row's suffix:
        (logits float32 [C, M, V], advanced row state)."""
        pos = state["pos"]
        t = shared["k"][0].shape[1]
        x = self.wte(token_ids) + self.wpe(pos + t)
        ks, vs = [], []
        for block, kp, vp, kc, vc in zip(self.h, shared["k"], shared["v"], state["k"], state["v"], strict=True):
            x, kc, vc = block.step_shared(x, kp, vp, kc, vc, pos)
            ks.append(kc)
            vs.append(vc)
        return self._head(x), {"pos": pos + 1, "k": tuple(ks), "v": tuple(vs)}


# ---------------------------------------------------------------------------------------------
# Checkpoints and registry

def convert_hf(src: TensorSource, cfg: GPT2Config) -> dict[tuple, np.ndarray]:
    """HF ``GPT2LMHeadModel`` / ``GPT2Model`` tensors -> flat NNX params (Conv1D is already [in, out])."""
    p = "transformer." if "transformer.wte.weight" in src else ""
    d, f = cfg.n_embd, cfg.inner_size
    out: dict[tuple, np.ndarray] = {
        ("wte", "embedding"): src.take(f"{p}wte.weight", (cfg.vocab_size, d)),
        ("wpe", "embedding"): src.take(f"{p}wpe.weight", (cfg.n_positions, d)),
    }

    def conv(key: str, path: tuple, din: int, dout: int) -> None:
        out[(*path, "kernel")] = src.take(f"{key}.weight", (din, dout))
        out[(*path, "bias")] = src.take(f"{key}.bias", (dout,))

    def norm(key: str, path: tuple) -> None:
        out[(*path, "weight")] = src.take(f"{key}.weight", (d,))
        out[(*path, "bias")] = src.take(f"{key}.bias", (d,))

    for i in range(cfg.n_layer):
        pre = f"{p}h.{i}"
        norm(f"{pre}.ln_1", ("h", i, "ln_1"))
        conv(f"{pre}.attn.c_attn", ("h", i, "attn", "c_attn"), d, 3 * d)
        conv(f"{pre}.attn.c_proj", ("h", i, "attn", "c_proj"), d, d)
        norm(f"{pre}.ln_2", ("h", i, "ln_2"))
        conv(f"{pre}.mlp.c_fc", ("h", i, "mlp", "c_fc"), d, f)
        conv(f"{pre}.mlp.c_proj", ("h", i, "mlp", "c_proj"), f, d)
    norm(f"{p}ln_f", ("ln_f",))
    # older checkpoints persist the causal-mask buffers ``attn.bias`` / ``attn.masked_bias``
    ignore = [r"\.attn\.(masked_)?bias$"]
    if cfg.tie_word_embeddings:
        ignore.append(r"^lm_head\.weight$")  # some tied checkpoints store the shared matrix twice
    else:
        out[("lm_head", "kernel")] = src.take("lm_head.weight", (cfg.vocab_size, d)).T
    src.check_unused(ignore=ignore)
    return out


def _tokenizer(cfg: GPT2Config, path: Path | None) -> Tokenizer:
    return causal_char_tokenizer(cfg.vocab_size)


def build(cfg: GPT2Config, rngs: nnx.Rngs) -> GPT2:
    """A freshly initialised :class:`GPT2` (N(0, initializer_range) weights, residual outputs scaled)."""
    return GPT2(cfg, rngs)


SPEC = FamilySpec(
    name="gpt2",
    objective="causal",
    config_cls=GPT2Config,
    build=build,
    tokenizer=_tokenizer,
    detect=lambda d: d.get("model_type") == "gpt2",
    convert_hf=convert_hf,
    description="GPT-2-style causal decoder (learned positions, LayerNorm, GELU): lightweight transformer baseline",
    architecture_class="causal-transformer",
    lora_targets=("c_attn", "c_proj", "c_fc"),
)
