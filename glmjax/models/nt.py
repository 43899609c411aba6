"""Nucleotide Transformer (NT) v1 and v2: ESM-style masked-LM encoders over 6-mer tokens.

Both generations share one pre-LayerNorm encoder (``x + Attn(LN(x))``, ``x + FFN(LN(x))``, a
final ``emb_layer_norm_after``) and the RoBERTa LM head ``decoder(LN(gelu(dense(h)))) + bias``
(exact erf GELU, decoder not tied to the token embedding). They differ in:

* **v1** (InstaDeepAI/nucleotide-transformer-500m-*, -2.5b-*; HF port = stock
  ``transformers.EsmForMaskedLM``): learned absolute positions with the fairseq/ESM offset
  (position of a real token = ``pad_id + cumsum(non-pad)``, so ``<cls>`` uses row 2 and pads row
  1; the table has ``max_len + 2`` rows), exact-GELU FFN with biases, token dropout (word
  embeddings of ``<mask>`` tokens zeroed, then every row scaled by
  ``(1 - 0.15 * 0.8) / (1 - n_mask / n_real)``), embeddings multiplied by the attention mask,
  LayerNorm eps 1e-12 in the HF port (1e-5 in the official JAX checkpoint).
* **v2** (InstaDeepAI/nucleotide-transformer-v2-*-multi-species): rotary position embeddings
  (ESM style, base 10000, positions 0..L-1 with no pad offset) on q and k, a bias-free SwiGLU FFN
  (``fc1: d -> 2f``; ``silu(first half) * second half``; ``fc2: f -> d``), no token dropout,
  LayerNorm eps 1e-5 (the HF port's config.json says 1e-12; glmjax follows the file it loads), and
  the official model writes 0 to the logits of pad positions.

Attention scales queries by ``head_dim ** -0.5`` and masks padded keys. Computation runs in
``config.dtype`` (bf16 on accelerators, with cuDNN flash attention on GPU); LayerNorms, GELU/SiLU,
rotary angles, token-dropout scaling and the logits are float32. The module always returns float32
logits ``[B, L, vocab_size]``.

``attention_mask`` must mark a prefix of each row (right padding, as the NT tokenizer pads); when
it is omitted it is ``input_ids != pad_id``.

Checkpoints: HF snapshots (stock v1 ``EsmForMaskedLM`` keys, and the v2 remote-code port whose
``config.json`` carries ``add_bias_fnn``), and the official JAX checkpoint folder
(``hyperparams.json`` + ``*.joblib``; a pickle, so only with ``trust_pickle=True``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from glmjax.errors import CheckpointError, ConfigError, SequenceError
from glmjax.kernels import gemm_gelu
from glmjax.kernels.attention import attention
from glmjax.models.base import FamilySpec, config_from_dict, config_to_dict, float32_matmuls
from glmjax.models.checkpoints import TensorSource
from glmjax.models.layers import gelu_erf
from glmjax.tokenizers import nt_kmer_tokenizer

_List = getattr(nnx, "List", list)

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
_ACTIVATIONS = ("gelu", "gelu_tanh", "silu", "relu")
TOKENIZER_VOCAB = {1: 4105, 2: 4107}


def _nt_shapes() -> dict[str, tuple]:
    """NT preset name -> (base fields, layers, width, heads, FFN width, overrides)."""
    v1 = dict(version=1, vocab_size=4105, max_position_embeddings=1002, position_embedding="learned",
              ffn_activation="gelu", ffn_glu=False, ffn_bias=True, layer_norm_eps=1e-12, token_dropout=True)
    v2 = dict(version=2, vocab_size=4107, max_position_embeddings=2050, position_embedding="rotary",
              ffn_activation="silu", ffn_glu=True, ffn_bias=False, layer_norm_eps=1e-5, token_dropout=False,
              zero_pad_logits=True)
    return {
        "tiny": (v1, 2, 32, 4, 64, {"max_position_embeddings": 66}),
        "tiny-v2": (v2, 2, 32, 4, 64, {"max_position_embeddings": 66}),
        "v1-500m": (v1, 24, 1280, 20, 5120, {}),
        "v1-2.5b": (v1, 32, 2560, 20, 10240, {}),
        "v2-50m": (v2, 12, 512, 16, 2048, {}),
        "v2-100m": (v2, 22, 512, 16, 2048, {}),
        "v2-250m": (v2, 24, 768, 16, 3072, {}),
        "v2-500m": (v2, 29, 1024, 16, 4096, {}),
    }


@dataclass(frozen=True)
class NTConfig:
    """Nucleotide Transformer hyper-parameters.

    Attributes:
      version: tokenizer generation (1: 4105-id vocabulary; 2: adds ``<eos> <bos>``, 4107 ids).
      vocab_size: rows of the token embedding and of the LM head.
      hidden_size: model width ``d``.
      num_layers, num_heads: encoder depth and attention heads.
      head_dim: per-head size (0: ``hidden_size // num_heads``).
      intermediate_size: FFN hidden width ``f`` (for SwiGLU the gated width; fc1 outputs ``2 f``).
      max_position_embeddings: HF convention: learned table rows, ``max_len + pad_token_id + 1``.
      position_embedding: ``"learned"`` (v1), ``"rotary"`` (v2) or ``"none"``.
      ffn_activation: ``gelu`` (exact erf), ``gelu_tanh``, ``silu`` or ``relu``.
      ffn_glu: gated FFN (``act(first half) * second half``).
      ffn_bias: FFN linear layers have biases.
      layer_norm_eps: eps of every LayerNorm.
      emb_layer_norm_before: LayerNorm on the embeddings before the first layer.
      token_dropout: ESM token dropout at inference (zero ``<mask>`` embeddings and rescale).
      mask_ratio_train: the training masking ratio the token dropout compensates (0.15 * 0.8).
      embed_scale: factor on the token embeddings (official JAX ``embed_scale``).
      rope_theta: rotary base.
      zero_pad_logits: write 0 to the logits of pad positions (official JAX model).
      tie_word_embeddings: an HF checkpoint without ``lm_head.decoder.weight`` reuses the token
        embedding as the decoder (conversion only; the module keeps its own decoder).
      pad_token_id, mask_token_id: ``<pad>`` and ``<mask>`` ids.
      dtype: compute dtype name (``float32``, ``bfloat16``, ``float16``); parameters stay fp32.
    """

    version: int = 1
    vocab_size: int = 4105
    hidden_size: int = 1280
    num_layers: int = 24
    num_heads: int = 20
    head_dim: int = 0
    intermediate_size: int = 5120
    max_position_embeddings: int = 1002
    position_embedding: str = "learned"
    ffn_activation: str = "gelu"
    ffn_glu: bool = False
    ffn_bias: bool = True
    layer_norm_eps: float = 1e-12
    emb_layer_norm_before: bool = False
    token_dropout: bool = True
    mask_ratio_train: float = 0.15 * 0.8
    embed_scale: float = 1.0
    rope_theta: float = 10000.0
    zero_pad_logits: bool = False
    tie_word_embeddings: bool = False
    pad_token_id: int = 1
    mask_token_id: int = 2
    dtype: str = "float32"

    def __post_init__(self):
        if self.version not in TOKENIZER_VOCAB:
            raise ConfigError(f"NT version must be 1 or 2, got {self.version}")
        if self.vocab_size < TOKENIZER_VOCAB[self.version]:
            raise ConfigError(f"vocab_size {self.vocab_size} is smaller than the NT v{self.version} 6-mer "
                              f"vocabulary ({TOKENIZER_VOCAB[self.version]} ids); protein ESM models are not "
                              "Nucleotide Transformers")
        if self.position_embedding not in ("learned", "rotary", "none"):
            raise ConfigError(f"position_embedding must be learned, rotary or none, got {self.position_embedding!r}")
        if self.ffn_activation not in _ACTIVATIONS:
            raise ConfigError(f"ffn_activation must be one of {', '.join(_ACTIVATIONS)}, got {self.ffn_activation!r}")
        if self.dtype not in _DTYPES:
            raise ConfigError(f"unsupported compute dtype {self.dtype!r}; choose one of {', '.join(_DTYPES)}")
        if self.head_dim == 0 and self.hidden_size % self.num_heads:
            raise ConfigError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.position_embedding == "rotary" and self.head_size % 2:
            raise ConfigError(f"rotary positions need an even head size, got {self.head_size}")

    @property
    def head_size(self) -> int:
        """Per-head width of queries, keys and values."""
        return self.head_dim or self.hidden_size // self.num_heads

    @property
    def max_len(self) -> int:
        """Longest input in tokens (``<cls>`` included): the learned table's reach, or the trained
        context of rotary models."""
        return self.max_position_embeddings - self.pad_token_id - 1

    @property
    def compute_dtype(self):
        return _DTYPES[self.dtype]

    # -- constructors ------------------------------------------------------------------------

    @classmethod
    def tiny(cls, version: int = 1) -> NTConfig:
        """A 2-layer, width-32 model for tests (v1: learned positions; v2: rotary + SwiGLU)."""
        if version == 2:
            return cls.preset("tiny-v2")
        return cls.preset("tiny")

    @classmethod
    def preset_names(cls) -> tuple[str, ...]:
        """The names :meth:`preset` accepts, in the order `glmjax models presets` lists them."""
        return tuple(_nt_shapes())

    @classmethod
    def preset(cls, name: str) -> NTConfig:
        """Named shapes: ``tiny``, ``tiny-v2``, ``v1-500m``, ``v1-2.5b``, ``v2-50m``, ``v2-100m``,
        ``v2-250m``, ``v2-500m`` (the published InstaDeepAI checkpoints' HF configs)."""
        shapes = _nt_shapes()
        if name not in shapes:
            raise ConfigError(f"unknown NT preset {name!r}; choose one of {', '.join(shapes)}")
        base, layers, d, heads, ffn, extra = shapes[name]
        return cls(**{**base, "num_layers": layers, "hidden_size": d, "num_heads": heads,
                      "intermediate_size": ffn, **extra})

    @classmethod
    def from_hf(cls, cfg: dict) -> NTConfig:
        """From an HF ``EsmConfig`` ``config.json`` of an NT checkpoint.

        Stock ``EsmForMaskedLM`` (v1) has a GELU FFN with biases; the v2 remote-code port is
        recognised by its ``add_bias_fnn`` key (its FFN is always SwiGLU, biased or not).
        """
        try:
            pos = cfg.get("position_embedding_type", "absolute")
            if pos not in ("absolute", "rotary"):
                raise ConfigError(f"unsupported ESM position_embedding_type {pos!r} (absolute or rotary)")
            glu = "add_bias_fnn" in cfg
            return cls(
                version=2 if pos == "rotary" else 1,
                vocab_size=int(cfg["vocab_size"]),
                hidden_size=int(cfg["hidden_size"]),
                num_layers=int(cfg["num_hidden_layers"]),
                num_heads=int(cfg["num_attention_heads"]),
                intermediate_size=int(cfg["intermediate_size"]),
                max_position_embeddings=int(cfg.get("max_position_embeddings", 1026)),
                position_embedding="rotary" if pos == "rotary" else "learned",
                ffn_activation="silu" if glu else "gelu",
                ffn_glu=glu,
                ffn_bias=bool(cfg.get("add_bias_fnn", True)),
                layer_norm_eps=float(cfg.get("layer_norm_eps", 1e-12)),
                emb_layer_norm_before=bool(cfg.get("emb_layer_norm_before") or False),
                token_dropout=bool(cfg.get("token_dropout", False)),
                rope_theta=float(cfg.get("rope_theta", 10000.0)),
                zero_pad_logits=False,
                tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
                pad_token_id=int(cfg["pad_token_id"] if cfg.get("pad_token_id") is not None else 1),
                mask_token_id=int(cfg["mask_token_id"] if cfg.get("mask_token_id") is not None else 2),
            )
        except KeyError as e:
            raise CheckpointError(f"ESM config.json lacks {e.args[0]!r}") from None
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"ESM config.json has an invalid value ({e})") from None

    @classmethod
    def from_nt_hyperparams(cls, hp: dict, vocab_size: int | None = None) -> NTConfig:
        """From the official JAX checkpoint's ``hyperparams.json`` (keys read by the reference's
        ``get_pretrained_model``). ``vocab_size`` comes from the embedding table; without it the
        generation is inferred (rotary -> v2)."""
        try:
            if hp.get("add_bias_kv", False):
                raise CheckpointError("NT checkpoints with add_bias_kv=true are not supported")
            if not hp.get("pre_layer_norm", True):
                raise CheckpointError("post-LayerNorm NT checkpoints (pre_layer_norm=false) are not supported")
            rotary = bool(hp.get("use_rotary_embedding", False))
            pos = hp.get("positional_embedding", "learned")
            if rotary:
                position = "rotary"
            elif pos == "learned":
                position = "learned"
            elif pos is None:
                position = "none"
            else:
                raise CheckpointError(f"unsupported NT positional_embedding {pos!r}")
            acts = {"gelu-no-approx": "gelu", "gelu": "gelu_tanh", "swish": "silu", "silu": "silu", "relu": "relu"}
            act_name = hp.get("ffn_activation_name", "gelu-no-approx")
            if act_name not in acts:
                raise CheckpointError(f"unsupported NT ffn_activation_name {act_name!r}")
            if vocab_size is None:
                vocab_size = TOKENIZER_VOCAB[2 if rotary else 1]
            versions = {v: k for k, v in TOKENIZER_VOCAB.items()}
            if vocab_size not in versions:
                raise CheckpointError(f"embedding table has {vocab_size} rows; NT 6-mer checkpoints have 4105 (v1) "
                                      "or 4107 (v2)")
            d, heads = int(hp["embed_dim"]), int(hp["attention_heads"])
            key = hp.get("key_dim") or d // heads
            return cls(
                version=versions[vocab_size],
                vocab_size=vocab_size,
                hidden_size=d,
                num_layers=int(hp["num_layers"]),
                num_heads=heads,
                head_dim=0 if key * heads == d else int(key),
                intermediate_size=int(hp["ffn_embed_dim"]),
                max_position_embeddings=int(hp["max_positions"]) + 2,
                position_embedding=position,
                ffn_activation=acts[act_name],
                ffn_glu=bool(hp.get("use_glu_in_ffn", False)),
                ffn_bias=bool(hp.get("add_bias_ffn", True)),
                layer_norm_eps=float(hp.get("layer_norm_eps", 1e-5)),
                emb_layer_norm_before=bool(hp.get("emb_layer_norm_before", False)),
                token_dropout=bool(hp.get("token_dropout", False)),
                mask_ratio_train=float(hp.get("masking_ratio", 0.15)) * float(hp.get("masking_prob", 0.8)),
                embed_scale=float(hp.get("embed_scale", 1.0)),
                zero_pad_logits=True,
            )
        except KeyError as e:
            raise CheckpointError(f"NT hyperparams.json lacks {e.args[0]!r}") from None
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"NT hyperparams.json has an invalid value ({e})") from None

    def to_dict(self) -> dict:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, d: dict) -> NTConfig:
        return config_from_dict(cls, d)


# ---------------------------------------------------------------------------------------------
# Module

def _layer_norm(x: jax.Array, ln: nnx.LayerNorm, eps: float) -> jax.Array:
    """Two-pass LayerNorm in float32 (returns float32)."""
    h = x.astype(jnp.float32)
    h = h - jnp.mean(h, axis=-1, keepdims=True)
    h = h * jax.lax.rsqrt(jnp.mean(h * h, axis=-1, keepdims=True) + eps)
    return h * ln.scale[...] + ln.bias[...]


def _activation(name: str, x: jax.Array) -> jax.Array:
    if name == "gelu":
        return gelu_erf(x)
    if name == "gelu_tanh":
        return jax.nn.gelu(x, approximate=True)
    if name == "silu":
        return jax.nn.silu(x)
    return jax.nn.relu(x)


def _rotate(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """ESM/NT rotary embedding of ``x`` [B, L, H, D] (float32) with cos/sin [L, D]."""
    half = x.shape[-1] // 2
    rot = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos[None, :, None, :] + rot * sin[None, :, None, :]


def _precision(dtype):
    """Full float32 matmuls for float32 compute (GPUs would otherwise use TF32), default else."""
    return jax.lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32 else None


def _linear(din: int, dout: int, bias: bool, cfg: NTConfig, rngs: nnx.Rngs) -> nnx.Linear:
    """fp32 parameters, computing in ``cfg.dtype`` (an adapter such as LoRA may wrap it)."""
    return nnx.Linear(din, dout, use_bias=bias, dtype=cfg.compute_dtype, param_dtype=jnp.float32,
                      precision=_precision(cfg.compute_dtype), kernel_init=nnx.initializers.normal(0.02), rngs=rngs)


def _norm(d: int, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(d, param_dtype=jnp.float32, rngs=rngs)


class NTLayer(nnx.Module):
    """One pre-LN encoder block. Params: ``attn_ln``, ``query``/``key``/``value``/``attn_out``,
    ``ffn_ln``, ``fc1`` (d -> f or 2f), ``fc2`` (f -> d); kernels are ``[in, out]``."""

    def __init__(self, cfg: NTConfig, rngs: nnx.Rngs):
        d, inner = cfg.hidden_size, cfg.num_heads * cfg.head_size
        self.cfg = cfg
        self.attn_ln = _norm(d, rngs)
        self.query = _linear(d, inner, True, cfg, rngs)
        self.key = _linear(d, inner, True, cfg, rngs)
        self.value = _linear(d, inner, True, cfg, rngs)
        self.attn_out = _linear(inner, d, True, cfg, rngs)
        self.ffn_ln = _norm(d, rngs)
        self.fc1 = _linear(d, cfg.intermediate_size * (2 if cfg.ffn_glu else 1), cfg.ffn_bias, cfg, rngs)
        self.fc2 = _linear(cfg.intermediate_size, d, cfg.ffn_bias, cfg, rngs)

    def __call__(self, x: jax.Array, mask: jax.Array, lengths: jax.Array, rope: tuple | None) -> jax.Array:
        cfg = self.cfg
        cd = cfg.compute_dtype
        b, n = x.shape[:2]
        h = _layer_norm(x, self.attn_ln, cfg.layer_norm_eps).astype(cd)
        heads = (b, n, cfg.num_heads, cfg.head_size)
        # three GEMMs rather than one fused [d, 3 inner] GEMM: each writes its heads in the layout
        # cuDNN attention reads, where slicing a fused output costs a copy of q, k and v
        q, k, v = (m(h).astype(cd).reshape(heads) for m in (self.query, self.key, self.value))
        if rope is not None:
            cos, sin = rope
            q = _rotate(q.astype(jnp.float32), cos, sin).astype(cd)
            k = _rotate(k.astype(jnp.float32), cos, sin).astype(cd)
        o = attention(q, k, v, key_mask=mask, key_lengths=lengths, scale=cfg.head_size ** -0.5)
        x = x + self.attn_out(o.reshape(b, n, -1)).astype(cd)
        h = _layer_norm(x, self.ffn_ln, cfg.layer_norm_eps).astype(cd)
        if cfg.ffn_glu:
            a, g = jnp.split(self.fc1(h).astype(jnp.float32), 2, axis=-1)
            h = _activation(cfg.ffn_activation, a) * g
        elif cfg.ffn_activation == "gelu":
            h = self._fc1_gelu(h)
        else:
            h = _activation(cfg.ffn_activation, self.fc1(h).astype(jnp.float32))
        return x + self.fc2(h.astype(cd)).astype(cd)

    def _fc1_gelu(self, h: jax.Array) -> jax.Array:
        """``gelu(fc1(h))`` in the compute dtype. On Hopper GPUs in bf16/fp16 the exact GELU runs
        in the fc1 GEMM's epilogue (:mod:`glmjax.kernels.gemm_gelu`); elsewhere, in bf16/fp16, a
        table lookup of the correctly rounded exact GELU (one memory-bound pass where the erf
        polynomial made it compute-bound), and the float32 formula in float32."""
        cd = self.cfg.compute_dtype
        fc1 = self.fc1

        def unfused(v):
            return gelu_erf(fc1(v).astype(cd))

        if type(fc1) is not nnx.Linear:  # adapters (LoRA) compute their own projection
            return unfused(h)
        bias = fc1.bias[...] if fc1.bias is not None else None
        return gemm_gelu.dense_gelu(h, fc1.kernel[...].astype(cd), bias, unfused)


class NTModel(nnx.Module):
    """Nucleotide Transformer encoder + RoBERTa LM head.

    ``__call__(input_ids int [B, L], attention_mask bool [B, L] | None) -> float32 logits
    [B, L, vocab_size]``; :meth:`encode` returns the hidden states after the final LayerNorm
    ``[B, L, d]`` (compute dtype).
    """

    def __init__(self, cfg: NTConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        d = cfg.hidden_size
        init = nnx.initializers.normal(0.02)
        self.embed = nnx.Embed(cfg.vocab_size, d, param_dtype=jnp.float32, embedding_init=init, rngs=rngs)
        if cfg.position_embedding == "learned":
            self.pos_embed = nnx.Embed(cfg.max_position_embeddings, d, param_dtype=jnp.float32,
                                       embedding_init=init, rngs=rngs)
        if cfg.emb_layer_norm_before:
            self.emb_ln_before = _norm(d, rngs)
        self.layers = _List([NTLayer(cfg, rngs) for _ in range(cfg.num_layers)])
        self.final_ln = _norm(d, rngs)
        self.lm_dense = _linear(d, d, True, cfg, rngs)
        self.lm_ln = _norm(d, rngs)
        self.lm_decoder = _linear(d, cfg.vocab_size, False, cfg, rngs)
        self.lm_bias = nnx.Param(jnp.zeros((cfg.vocab_size,), jnp.float32))

    def _mask(self, input_ids: jax.Array, attention_mask: jax.Array | None) -> jax.Array:
        if attention_mask is None:
            return input_ids != self.cfg.pad_token_id
        return attention_mask.astype(bool)

    @float32_matmuls
    def encode(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
        """Final hidden states ``[B, L, d]`` (after ``emb_layer_norm_after``), compute dtype."""
        cfg = self.cfg
        cd = cfg.compute_dtype
        ids = input_ids.astype(jnp.int32)
        n = ids.shape[1]
        if cfg.position_embedding == "learned" and n > cfg.max_len:
            raise SequenceError(f"{n} tokens exceed this NT model's {cfg.max_len}-token context; "
                                "split the sequence into shorter windows")
        mask = self._mask(ids, attention_mask)
        x = jnp.take(self.embed.embedding[...], ids, axis=0)
        if cfg.token_dropout:
            is_mask = ids == cfg.mask_token_id
            x = jnp.where(is_mask[..., None], 0.0, x)
            n_real = jnp.maximum(mask.sum(-1), 1).astype(jnp.float32)
            observed = is_mask.sum(-1).astype(jnp.float32) / n_real
            # a row made only of <mask> tokens would divide by zero; its embeddings are all 0 anyway
            denom = jnp.where(observed < 1.0, 1.0 - observed, 1.0)
            x = x * ((1.0 - cfg.mask_ratio_train) / denom)[:, None, None]
        if cfg.embed_scale != 1.0:
            x = x * cfg.embed_scale
        if cfg.position_embedding == "learned":
            real = ids != cfg.pad_token_id
            pos = jnp.cumsum(real, axis=1) * real + cfg.pad_token_id
            x = x + jnp.take(self.pos_embed.embedding[...], pos, axis=0)
        if cfg.emb_layer_norm_before:
            x = _layer_norm(x, self.emb_ln_before, cfg.layer_norm_eps)
        x = (x * mask[..., None]).astype(cd)
        rope = None
        if cfg.position_embedding == "rotary":
            exps = np.arange(0, cfg.head_size, 2, dtype=np.float32) / np.float32(cfg.head_size)
            inv_freq = (np.float32(1.0) / np.float32(cfg.rope_theta) ** exps).astype(np.float32)
            freqs = jnp.arange(n, dtype=jnp.float32)[:, None] * jnp.asarray(inv_freq)[None, :]
            emb = jnp.concatenate([freqs, freqs], axis=-1)
            rope = (jnp.cos(emb), jnp.sin(emb))
        lengths = mask.sum(-1).astype(jnp.int32)
        for layer in self.layers:
            x = layer(x, mask, lengths, rope)
        return _layer_norm(x, self.final_ln, cfg.layer_norm_eps).astype(cd)

    @float32_matmuls
    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
        cfg = self.cfg
        cd = cfg.compute_dtype
        h = self.encode(input_ids, attention_mask)
        h = _activation("gelu", self.lm_dense(h).astype(jnp.float32))
        h = _layer_norm(h, self.lm_ln, cfg.layer_norm_eps).astype(cd)
        if type(self.lm_decoder) is nnx.Linear:
            # float32 accumulation written out directly: no rounding of the logits to the compute dtype
            logits = jnp.einsum("bld,dv->blv", h, self.lm_decoder.kernel[...].astype(cd), precision=_precision(cd),
                                preferred_element_type=jnp.float32)
        else:
            logits = self.lm_decoder(h).astype(jnp.float32)
        logits = logits + self.lm_bias[...].astype(jnp.float32)
        if cfg.zero_pad_logits:
            logits = jnp.where(self._mask(input_ids, attention_mask)[..., None], logits, 0.0)
        return logits


def build(cfg: NTConfig, rngs: nnx.Rngs) -> NTModel:
    """A randomly initialised :class:`NTModel`: N(0, 0.02) kernels and embeddings, unit LayerNorm
    scales, zero biases.

    The values are drawn with numpy from a seed taken from ``rngs`` (same rngs, same weights):
    eager JAX initialisers would compile one XLA program per parameter shape. Under tracing
    (``nnx.eval_shape``, ``jax.jit``) the module's own initialisers are used and cost nothing.
    """
    key = rngs.params()
    try:
        raw = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
        seed = np.asarray(raw).ravel().tolist()
    except jax.errors.TracerArrayConversionError:
        return NTModel(cfg, rngs)
    module = nnx.eval_shape(lambda: NTModel(cfg, nnx.Rngs(0)))
    rng = np.random.default_rng(seed)
    state = nnx.state(module, nnx.Param)
    values = {}
    flat = nnx.to_flat_state(state) if hasattr(nnx, "to_flat_state") else state.flat_state()
    for path, var in flat:
        shape, leaf = tuple(_value(var).shape), path[-1]
        if leaf == "scale":
            values[tuple(path)] = np.ones(shape, np.float32)
        elif leaf == "bias" or tuple(path) == ("lm_bias",):
            values[tuple(path)] = np.zeros(shape, np.float32)
        else:
            values[tuple(path)] = rng.normal(0.0, 0.02, shape).astype(np.float32)
    if hasattr(nnx, "replace_by_pure_dict"):
        nnx.replace_by_pure_dict(state, _nest(values))
    else:
        state.replace_by_pure_dict(_nest(values))
    nnx.update(module, state)
    return module


def _value(var):
    return var.get_value() if hasattr(var, "get_value") else var.value


def _nest(flat: dict) -> dict:
    out: dict = {}
    for path, value in flat.items():
        node = out
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = jnp.asarray(value)
    return out


def tokenizer(cfg: NTConfig, path: Path | None = None):
    """The official 6-mer tokenizer of the config's generation (the vocabulary is built in)."""
    return nt_kmer_tokenizer(cfg.version)


# ---------------------------------------------------------------------------------------------
# Checkpoint conversion

def detect(cfg_json: dict) -> bool:
    """An HF ``config.json`` of an ESM masked LM (``model_type`` esm, or the v2 port's auto_map)."""
    if cfg_json.get("is_folding_model"):
        return False
    if cfg_json.get("model_type") == "esm":
        return True
    auto = cfg_json.get("auto_map") or {}
    return isinstance(auto, dict) and str(auto.get("AutoConfig", "")).endswith("esm_config.EsmConfig")


def _lin(flat: dict, name: tuple, w: np.ndarray, b: np.ndarray | None = None) -> None:
    flat[(*name, "kernel")] = w
    if b is not None:
        flat[(*name, "bias")] = b


def _ln(flat: dict, name: tuple, scale: np.ndarray, bias: np.ndarray) -> None:
    flat[(*name, "scale")] = scale
    flat[(*name, "bias")] = bias


def _hf_ln(flat: dict, name: tuple, src: TensorSource, prefix: str, d: int) -> None:
    """An HF LayerNorm (``weight``/``bias``; transformers also writes the legacy ``gamma``/``beta``)."""
    _ln(flat, name, src.take(prefix + ".weight", (d,), prefix + ".gamma"),
        src.take(prefix + ".bias", (d,), prefix + ".beta"))


HF_IGNORED = (r"^esm\.contact_head\.", r"position_ids$", r"rotary_embeddings\.inv_freq$")


def convert_hf(src: TensorSource, cfg: NTConfig) -> dict:
    """HF ``EsmForMaskedLM`` tensors (stock v1 and the v2 port) -> flat NNX params.

    torch ``Linear.weight`` is ``[out, in]`` and is transposed; ``esm.contact_head.*``,
    ``position_ids`` and rotary ``inv_freq`` buffers are ignored; any other unused tensor is an error.
    """
    if "esm.embeddings.word_embeddings.weight" not in src and "embeddings.word_embeddings.weight" in src:
        raise CheckpointError(f"{src.origin}: an EsmModel checkpoint without LM head; scoring needs "
                              "EsmForMaskedLM weights (lm_head.*)")
    d, v, f = cfg.hidden_size, cfg.vocab_size, cfg.intermediate_size
    inner = cfg.num_heads * cfg.head_size
    f1 = f * (2 if cfg.ffn_glu else 1)
    flat: dict = {}
    emb = src.take("esm.embeddings.word_embeddings.weight", (v, d))
    flat[("embed", "embedding")] = emb
    if cfg.position_embedding == "learned":
        flat[("pos_embed", "embedding")] = src.take("esm.embeddings.position_embeddings.weight",
                                                     (cfg.max_position_embeddings, d))
    if cfg.emb_layer_norm_before:
        _hf_ln(flat, ("emb_ln_before",), src, "esm.embeddings.layer_norm", d)
    for i in range(cfg.num_layers):
        p = f"esm.encoder.layer.{i}."
        L = ("layers", i)
        for ours, theirs, (dout, din) in (("query", "attention.self.query", (inner, d)),
                                          ("key", "attention.self.key", (inner, d)),
                                          ("value", "attention.self.value", (inner, d)),
                                          ("attn_out", "attention.output.dense", (d, inner))):
            _lin(flat, (*L, ours), src.take(p + theirs + ".weight", (dout, din)).T,
                 src.take(p + theirs + ".bias", (dout,)))
        _hf_ln(flat, (*L, "attn_ln"), src, p + "attention.LayerNorm", d)
        _lin(flat, (*L, "fc1"), src.take(p + "intermediate.dense.weight", (f1, d)).T,
             src.take(p + "intermediate.dense.bias", (f1,)) if cfg.ffn_bias else None)
        _lin(flat, (*L, "fc2"), src.take(p + "output.dense.weight", (d, f)).T,
             src.take(p + "output.dense.bias", (d,)) if cfg.ffn_bias else None)
        _hf_ln(flat, (*L, "ffn_ln"), src, p + "LayerNorm", d)
    _hf_ln(flat, ("final_ln",), src, "esm.encoder.emb_layer_norm_after", d)
    _lin(flat, ("lm_dense",), src.take("lm_head.dense.weight", (d, d)).T, src.take("lm_head.dense.bias", (d,)))
    _hf_ln(flat, ("lm_ln",), src, "lm_head.layer_norm", d)
    if "lm_head.decoder.weight" in src or not cfg.tie_word_embeddings:
        flat[("lm_decoder", "kernel")] = src.take("lm_head.decoder.weight", (v, d)).T
    else:
        flat[("lm_decoder", "kernel")] = emb.T
    flat[("lm_bias",)] = src.take("lm_head.bias", (v,))
    ignored = HF_IGNORED
    if cfg.position_embedding != "learned":
        # older ESM code always created the absolute table; rotary models never read it
        ignored = (*ignored, r"^esm\.embeddings\.position_embeddings\.weight$")
    src.check_unused(ignore=ignored)
    return flat


# Official JAX (Haiku) checkpoint: module paths before/after the reference's rename_modules_dcnuc.
_JAX_RENAMES = ((re.compile(r"/~/self_attention/"), "/~/mha/"), (re.compile(r"self_attention_layer_norm"), "mha_layer_norm"),
                (re.compile(r"(?<!esm_)roberta_lm_head"), "esm_roberta_lm_head"))
JAX_FILES = ("pytree_ckpt.joblib", "ckpt.joblib")


def _jax_tensor_source(params: dict, origin: str) -> TensorSource:
    """Flatten ``{module_path: {param: array}}`` into ``"module/param"`` keys without the model name."""
    if not isinstance(params, dict):
        raise CheckpointError(f"{origin}: expected a dict of Haiku modules, found {type(params).__name__}")
    tensors = {}
    for module, leaves in params.items():
        if not isinstance(leaves, dict):
            raise CheckpointError(f"{origin}: module {module!r} is not a dict of arrays")
        name = str(module).split("/", 1)[1] if "/" in str(module) else str(module)
        for pat, rep in _JAX_RENAMES:
            name = pat.sub(rep, name)
        for pname, arr in leaves.items():
            tensors[f"{name}/{pname}"] = np.asarray(arr, np.float32)
    return TensorSource(tensors, origin)


def convert_jax(src: TensorSource, cfg: NTConfig) -> dict:
    """Official NT Haiku params (``w`` is ``[in, out]``: no transposes) -> flat NNX params."""
    d, v, f = cfg.hidden_size, cfg.vocab_size, cfg.intermediate_size
    inner = cfg.num_heads * cfg.head_size
    f1 = f * (2 if cfg.ffn_glu else 1)
    flat: dict = {("embed", "embedding"): src.take("~/embed/embeddings", (v, d))}
    if cfg.position_embedding == "learned":
        flat[("pos_embed", "embedding")] = src.take("~/esm_learned_positional_embeddings/~/embed/embeddings",
                                                     (cfg.max_position_embeddings, d))
    if cfg.emb_layer_norm_before:
        _ln(flat, ("emb_ln_before",), src.take("~/emb_layer_norm_before/scale", (d,)),
            src.take("~/emb_layer_norm_before/offset", (d,)))
    for i in range(cfg.num_layers):
        p = f"attention_layer_{i}/~/"
        L = ("layers", i)
        for ours, theirs, shape in (("query", "mha/query", (d, inner)), ("key", "mha/key", (d, inner)),
                                    ("value", "mha/value", (d, inner)), ("attn_out", "mha/mha_output", (inner, d))):
            _lin(flat, (*L, ours), src.take(p + theirs + "/w", shape), src.take(p + theirs + "/b", (shape[1],)))
        _ln(flat, (*L, "attn_ln"), src.take(p + "mha_layer_norm/scale", (d,)),
            src.take(p + "mha_layer_norm/offset", (d,)))
        _lin(flat, (*L, "fc1"), src.take(p + "fc1/w", (d, f1)), src.take(p + "fc1/b", (f1,)) if cfg.ffn_bias else None)
        _lin(flat, (*L, "fc2"), src.take(p + "fc2/w", (f, d)), src.take(p + "fc2/b", (d,)) if cfg.ffn_bias else None)
        _ln(flat, (*L, "ffn_ln"), src.take(p + "final_layer_norm/scale", (d,)),
            src.take(p + "final_layer_norm/offset", (d,)))
    h = "~/esm_roberta_lm_head/~/"
    _ln(flat, ("final_ln",), src.take(h + "emb_layer_norm_after/scale", (d,)),
        src.take(h + "emb_layer_norm_after/offset", (d,)))
    _lin(flat, ("lm_dense",), src.take(h + "lm_head_fc_1/w", (d, d)), src.take(h + "lm_head_fc_1/b", (d,)))
    _ln(flat, ("lm_ln",), src.take(h + "lm_head_layer_norm/scale", (d,)), src.take(h + "lm_head_layer_norm/offset", (d,)))
    flat[("lm_decoder", "kernel")] = src.take(h + "lm_final_fc/w", (d, v))
    flat[("lm_bias",)] = src.take(h + "lm_final_fc/b", (v,))
    src.check_unused()
    return flat


def _jax_files(path: Path) -> tuple[Path, Path]:
    hp = path / "hyperparams.json"
    for name in JAX_FILES:
        if (path / name).exists():
            return hp, path / name
    found = sorted(path.glob("*.joblib"))
    if len(found) == 1:
        return hp, found[0]
    raise CheckpointError(f"{path}: expected one of {', '.join(JAX_FILES)} next to hyperparams.json")


def detect_dir(path: Path) -> bool:
    """The official NT JAX checkpoint folder: ``hyperparams.json`` and a ``.joblib`` file."""
    path = Path(path)
    return (path / "hyperparams.json").exists() and any(path.glob("*.joblib"))


def _read_hyperparams(file: Path) -> dict:
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{file} is not valid JSON ({e})") from None


def config_dir(path: Path) -> NTConfig:
    """The config of an official JAX checkpoint folder from ``hyperparams.json`` alone (no pickle
    is read; the generation is inferred from the position encoding)."""
    hp_file, _ = _jax_files(Path(path))
    return NTConfig.from_nt_hyperparams(_read_hyperparams(hp_file))


def load_dir(path: Path, trust_pickle: bool = False) -> tuple[NTConfig, dict]:
    """Config and flat NNX params of an official NT JAX checkpoint folder.

    The ``.joblib`` weights are a pickle: without ``trust_pickle`` this raises CheckpointError
    saying so; with it they are read by a restricted unpickler (numpy arrays only).
    """
    from glmjax.models.joblib_io import read_joblib_arrays

    path = Path(path)
    hp_file, ckpt = _jax_files(path)
    hp = _read_hyperparams(hp_file)
    params = read_joblib_arrays(ckpt, trust_pickle=trust_pickle)
    src = _jax_tensor_source(params, str(ckpt))
    embed_key = "~/embed/embeddings"
    if embed_key not in src:
        raise CheckpointError(f"{ckpt}: missing tensor {embed_key!r} (is this a Nucleotide Transformer checkpoint?)")
    cfg = NTConfig.from_nt_hyperparams(hp, vocab_size=int(src.tensors[embed_key].shape[0]))
    return cfg, convert_jax(src, cfg)


SPEC = FamilySpec(
    name="nt",
    objective="masked",
    config_cls=NTConfig,
    build=build,
    tokenizer=tokenizer,
    detect=detect,
    convert_hf=convert_hf,
    description="Nucleotide Transformer v1/v2 (ESM-style masked-LM encoder over 6-mer tokens)",
    architecture_class="masked-transformer",
    lora_targets=("query", "key", "value", "attn_out", "fc1", "fc2"),
    detect_dir=detect_dir,
    load_dir=load_dir,
    config_dir=config_dir,
    # cuBLAS for every GEMM (its epilogue then adds the residual stream) instead of XLA's Triton
    # GEMMs: faster NT scoring on an H200 at every shape measured (BENCHMARKS.md)
    gpu_compiler_options={"xla_gpu_enable_triton_gemm": False},
)
