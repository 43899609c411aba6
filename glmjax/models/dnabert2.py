"""DNABERT-2: a BPE-tokenized masked-LM encoder with ALiBi attention (MosaicBERT-derived).

Architecture (zhihan1996/DNABERT-2-117M, remote code ``bert_layers.py``), all post-LayerNorm
with eps 1e-12:

* embeddings: ``LN(word[id] + token_type[0])``; no position embeddings (ALiBi instead);
* each layer: fused ``Wqkv`` (q, k, v blocks of ``hidden`` each, heads major within a block),
  attention with the symmetric ALiBi bias ``-slope_h * |i - j|`` and a key padding mask,
  ``LN(dense(attn) + x)``; then a GeGLU MLP ``LN(wo(gelu(g) * u) + x)`` where the bias-free
  ``gated_layers`` output is split into ``g`` (first half, exact erf GELU) and ``u`` (second half);
* MLM head: ``decoder(LN(gelu(transform(h))))`` whose weight is the word embedding matrix (tied)
  with its own bias.

The reference runs its encoder on unpadded tokens and writes zero vectors back at pads, so pad
positions' logits are ``head(0)``; glmjax does the same (final hidden zeroed where the mask is
False), and real positions never see pads (the padding mask removes them from attention), so a
row's logits do not depend on how much it was padded.

ALiBi has no hard length limit; ``max_len`` defaults to the checkpoint's ``alibi_starting_size``
(or ``max_position_embeddings``), the length the reference precomputes its bias for (512).

Tokenizer: the checkpoint folder's ``tokenizer.json`` (BPE, 4096 ids). Freshly built models and
glmjax folders without one use ``glmjax/resources/dnabert2_tokenizer.json``, a copy of the
published DNABERT-2-117M ``tokenizer.json`` (vocabulary, merges, whitespace pre-tokenizer and
``[CLS] $A [SEP]`` template of the zhihan1996/DNABERT-2-117M hub repository, with padding and
truncation settings removed).
"""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from glmjax.errors import CheckpointError, ConfigError
from glmjax.kernels.alibi import alibi_bias
from glmjax.kernels.attention import attention
from glmjax.models.base import FamilySpec, PresetTable, config_from_dict, config_to_dict, float32_matmuls
from glmjax.models.checkpoints import TensorSource
from glmjax.models.layers import gelu_erf
from glmjax.tokenizers import BPETokenizer

PACKAGED_TOKENIZER = "dnabert2_tokenizer.json"
PACKAGED_VOCAB_SIZE = 4096

_List = getattr(nnx, "List", list)


@dataclass(frozen=True)
class DNABERT2Config(PresetTable):
    """DNABERT-2 hyper-parameters.

    Attributes:
      vocab_size: rows of the word embedding and the (tied) decoder; 4096 for the published BPE.
      hidden_size: model width ``d``.
      num_layers: encoder layers.
      num_heads: attention heads (any count; ALiBi slopes follow the official schedule).
      intermediate_size: GeGLU width (``gated_layers`` produces twice this).
      type_vocab_size: token type rows (only type 0 is used).
      layer_norm_eps: epsilon of every LayerNorm.
      max_len: default context length in tokens (ALiBi itself has no limit).
      dtype: compute dtype name; parameters stay float32.
    """

    PRESET_LABEL = "DNABERT-2"

    vocab_size: int = 4096
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    max_len: int = 512
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"DNABERT-2 hidden_size {self.hidden_size} is not divisible by "
                              f"num_heads {self.num_heads}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @classmethod
    def tiny(cls) -> DNABERT2Config:
        """A small model for tests (the vocabulary stays 4096: the BPE tokenizer is fixed)."""
        return cls(vocab_size=4096, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                   max_len=128)

    @classmethod
    def _preset_table(cls) -> dict:
        """Named sizes: ``tiny`` and ``117m`` (DNABERT-2-117M: 12 layers, d 768, 12 heads, ffn 3072)."""
        return {"tiny": cls.tiny, "117m": cls}

    @classmethod
    def from_hf(cls, cfg: dict) -> DNABERT2Config:
        """From a DNABERT-2 ``config.json`` (``model_type`` bert, remote code ``bert_layers``)."""
        act = cfg.get("hidden_act", "gelu")
        if act != "gelu":
            raise ConfigError(f"DNABERT-2 config has hidden_act {act!r}; only the published exact 'gelu' "
                              "is supported")
        try:
            return cls(vocab_size=int(cfg["vocab_size"]), hidden_size=int(cfg["hidden_size"]),
                       num_layers=int(cfg["num_hidden_layers"]), num_heads=int(cfg["num_attention_heads"]),
                       intermediate_size=int(cfg["intermediate_size"]),
                       type_vocab_size=int(cfg.get("type_vocab_size", 2)),
                       layer_norm_eps=float(cfg.get("layer_norm_eps", 1e-12)),
                       max_len=int(cfg.get("alibi_starting_size", cfg.get("max_position_embeddings", 512))))
        except KeyError as e:
            raise ConfigError(f"DNABERT-2 config.json lacks {e.args[0]!r}") from None

    def to_dict(self) -> dict:
        """Plain dict (for glmjax's own checkpoints)."""
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DNABERT2Config:
        """Inverse of :meth:`to_dict` (unknown keys ignored)."""
        return config_from_dict(cls, d)


def _dnabert2_code(cfg: dict) -> bool:
    """The config carries DNABERT-2's remote code: ALiBi's ``alibi_starting_size`` or an
    ``auto_map`` into ``bert_layers`` (plain BERT has neither)."""
    auto = cfg.get("auto_map") or {}
    return "alibi_starting_size" in cfg or any("bert_layers" in str(v) for v in auto.values())


def detect(cfg: dict) -> bool:
    """True for a DNABERT-2 ``config.json``: a BERT masked LM with DNABERT-2's remote code. The
    published file exists in two forms: with ``model_type: bert`` and ``architectures:
    [BertForMaskedLM]``, and the older hub revision with neither, whose ``auto_map`` names
    ``bert_layers.BertForMaskedLM``."""
    if not _dnabert2_code(cfg) or cfg.get("model_type", "bert") != "bert":
        return False
    archs = cfg.get("architectures")
    if archs is None:
        return "BertForMaskedLM" in str((cfg.get("auto_map") or {}).get("AutoModelForMaskedLM", ""))
    return "BertForMaskedLM" in archs


def reject(cfg: dict) -> str | None:
    """Why a DNABERT-2-derived encoder (DNABERT-S: ``architectures: [BertModel]``) cannot be
    audited: its checkpoint holds no masked-LM head, so there is no per-token likelihood to
    measure (a head initialised here would measure nothing the model learned)."""
    if not _dnabert2_code(cfg) or cfg.get("model_type", "bert") != "bert":
        return None
    archs = cfg.get("architectures") or []
    if archs and "BertForMaskedLM" not in archs:
        return (f"architectures {archs}: a DNABERT-2 encoder without its masked-LM head (e.g. DNABERT-S, an "
                "embedding model); glmjax audits language models, which need the head's token likelihoods")
    return None


# ---------------------------------------------------------------------------------------------
# Module

def _linear(din: int, dout: int, cfg: DNABERT2Config, rngs: nnx.Rngs, use_bias: bool = True) -> nnx.Linear:
    return nnx.Linear(din, dout, use_bias=use_bias, dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.float32,
                      kernel_init=nnx.initializers.normal(0.02), rngs=rngs)


def _norm(cfg: DNABERT2Config, rngs: nnx.Rngs) -> nnx.LayerNorm:
    # two-pass variance: the one-pass E[x^2]-E[x]^2 form loses digits that the fp32 parity needs
    return nnx.LayerNorm(cfg.hidden_size, epsilon=cfg.layer_norm_eps, dtype=jnp.dtype(cfg.dtype),
                         param_dtype=jnp.float32, use_fast_variance=False, rngs=rngs)


class Embeddings(nnx.Module):
    """``LN(word[id] + token_type[0])``: ids int [B, L] -> [B, L, d]."""

    def __init__(self, cfg: DNABERT2Config, rngs: nnx.Rngs):
        init = nnx.initializers.normal(0.02)
        self.word_embeddings = nnx.Embed(cfg.vocab_size, cfg.hidden_size, dtype=jnp.dtype(cfg.dtype),
                                         param_dtype=jnp.float32, embedding_init=init, rngs=rngs)
        self.token_type_embeddings = nnx.Embed(cfg.type_vocab_size, cfg.hidden_size,
                                               dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.float32,
                                               embedding_init=init, rngs=rngs)
        self.norm = _norm(cfg, rngs)

    def __call__(self, input_ids: jax.Array) -> jax.Array:
        x = self.word_embeddings(input_ids)
        x = x + self.token_type_embeddings.embedding[0].astype(x.dtype)
        return self.norm(x)


class Attention(nnx.Module):
    """Fused-QKV self-attention with an additive bias, then ``LN(dense(attn) + x)``."""

    def __init__(self, cfg: DNABERT2Config, rngs: nnx.Rngs):
        self.num_heads = cfg.num_heads
        self.head_dim = cfg.head_dim
        self.Wqkv = _linear(cfg.hidden_size, 3 * cfg.hidden_size, cfg, rngs)
        self.dense = _linear(cfg.hidden_size, cfg.hidden_size, cfg, rngs)
        self.norm = _norm(cfg, rngs)

    def __call__(self, x: jax.Array, key_mask: jax.Array | None, bias: jax.Array) -> jax.Array:
        b, n, d = x.shape
        qkv = self.Wqkv(x).reshape(b, n, 3, self.num_heads, self.head_dim)
        o = attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], key_mask=key_mask, bias=bias)
        return self.norm(self.dense(o.reshape(b, n, d)) + x)


class GeGLU(nnx.Module):
    """``LN(wo(gelu(g) * u) + x)`` with ``[g, u] = gated_layers(x)`` (no bias, exact GELU)."""

    def __init__(self, cfg: DNABERT2Config, rngs: nnx.Rngs):
        self.intermediate_size = cfg.intermediate_size
        self.gated_layers = _linear(cfg.hidden_size, 2 * cfg.intermediate_size, cfg, rngs, use_bias=False)
        self.wo = _linear(cfg.intermediate_size, cfg.hidden_size, cfg, rngs)
        self.norm = _norm(cfg, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        gu = self.gated_layers(x)
        g, u = gu[..., : self.intermediate_size], gu[..., self.intermediate_size:]
        return self.norm(self.wo(gelu_erf(g) * u) + x)


class Layer(nnx.Module):
    """One encoder layer: attention block then GeGLU block, both post-LN."""

    def __init__(self, cfg: DNABERT2Config, rngs: nnx.Rngs):
        self.attention = Attention(cfg, rngs)
        self.mlp = GeGLU(cfg, rngs)

    def __call__(self, x: jax.Array, key_mask: jax.Array | None, bias: jax.Array) -> jax.Array:
        return self.mlp(self.attention(x, key_mask, bias))


class MLMHead(nnx.Module):
    """``LN(gelu(transform(h)))`` then the tied decoder ``@ E.T + decoder_bias`` (float32 logits)."""

    def __init__(self, cfg: DNABERT2Config, rngs: nnx.Rngs):
        self.transform = _linear(cfg.hidden_size, cfg.hidden_size, cfg, rngs)
        self.norm = _norm(cfg, rngs)
        self.decoder_bias = nnx.Param(jnp.zeros((cfg.vocab_size,), jnp.float32))

    def __call__(self, h: jax.Array, embedding: jax.Array) -> jax.Array:
        h = self.norm(gelu_erf(self.transform(h)))
        logits = jnp.einsum("bld,vd->blv", h, embedding.astype(h.dtype), preferred_element_type=jnp.float32)
        return logits + self.decoder_bias[...]


class DNABERT2(nnx.Module):
    """DNABERT-2 masked LM: ``(input_ids int [B, L], attention_mask bool [B, L] | None)`` ->
    float32 logits ``[B, L, vocab_size]``."""

    def __init__(self, cfg: DNABERT2Config, rngs: nnx.Rngs):
        self.config = cfg
        self.embeddings = Embeddings(cfg, rngs)
        self.layers = _List([Layer(cfg, rngs) for _ in range(cfg.num_layers)])
        self.head = MLMHead(cfg, rngs)

    @float32_matmuls
    def encode(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
        """Final encoder hidden states ``[B, L, d]`` (compute dtype), zero where the mask is False."""
        n = input_ids.shape[1]
        mask = None if attention_mask is None else attention_mask.astype(bool)
        h = self.embeddings(input_ids)
        bias = alibi_bias(self.config.num_heads, n, n)
        for layer in self.layers:
            h = layer(h, mask, bias)
        if mask is not None:
            h = jnp.where(mask[..., None], h, jnp.zeros((), h.dtype))
        return h

    @float32_matmuls
    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
        h = self.encode(input_ids, attention_mask)
        return self.head(h, self.embeddings.word_embeddings.embedding[...])


def build(cfg: DNABERT2Config, rngs: nnx.Rngs) -> DNABERT2:
    """A freshly initialised DNABERT-2 module (BERT init: N(0, 0.02) weights, zero biases)."""
    return DNABERT2(cfg, rngs)


# ---------------------------------------------------------------------------------------------
# Tokenizer and checkpoint conversion

def packaged_tokenizer() -> BPETokenizer:
    """The published DNABERT-2 BPE tokenizer shipped with glmjax (4096 ids)."""
    res = importlib.resources.files("glmjax.resources").joinpath(PACKAGED_TOKENIZER)
    with importlib.resources.as_file(res) as f:
        return BPETokenizer(str(f), name="dnabert2-bpe")


def tokenizer(cfg: DNABERT2Config, path: Path | None) -> BPETokenizer:
    """The checkpoint folder's ``tokenizer.json``; the packaged DNABERT-2 tokenizer when the folder
    has none (or there is no folder) and the model has the published 4096-id vocabulary."""
    if path is not None and (Path(path) / "tokenizer.json").exists():
        return BPETokenizer(str(Path(path) / "tokenizer.json"), name="dnabert2-bpe")
    if cfg.vocab_size == PACKAGED_VOCAB_SIZE:
        return packaged_tokenizer()
    where = f"{path} has no tokenizer.json" if path is not None else "no checkpoint folder was given"
    raise CheckpointError(f"{where} and the model's vocabulary ({cfg.vocab_size}) is not the published "
                          f"DNABERT-2 one ({PACKAGED_VOCAB_SIZE}); put the model's tokenizer.json in its folder")


def convert_hf(src: TensorSource, cfg: DNABERT2Config) -> dict[tuple, np.ndarray]:
    """zhihan1996/DNABERT-2-117M tensors (``bert.*``, ``cls.predictions.*``) -> flat NNX params.

    The decoder weight is stored next to the word embeddings it is tied to; it must equal them.
    """
    d, ff, v = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    flat: dict[tuple, np.ndarray] = {}

    def linear(dst: tuple, key: str, din: int, dout: int, bias: bool = True) -> None:
        flat[(*dst, "kernel")] = src.take(f"{key}.weight", (dout, din)).T
        if bias:
            flat[(*dst, "bias")] = src.take(f"{key}.bias", (dout,))

    def norm(dst: tuple, key: str) -> None:
        flat[(*dst, "scale")] = src.take(f"{key}.weight", (d,))
        flat[(*dst, "bias")] = src.take(f"{key}.bias", (d,))

    emb = src.take("bert.embeddings.word_embeddings.weight", (v, d))
    flat[("embeddings", "word_embeddings", "embedding")] = emb
    flat[("embeddings", "token_type_embeddings", "embedding")] = src.take(
        "bert.embeddings.token_type_embeddings.weight", (cfg.type_vocab_size, d))
    norm(("embeddings", "norm"), "bert.embeddings.LayerNorm")
    for i in range(cfg.num_layers):
        p = f"bert.encoder.layer.{i}"
        dst = ("layers", i)
        linear((*dst, "attention", "Wqkv"), f"{p}.attention.self.Wqkv", d, 3 * d)
        linear((*dst, "attention", "dense"), f"{p}.attention.output.dense", d, d)
        norm((*dst, "attention", "norm"), f"{p}.attention.output.LayerNorm")
        linear((*dst, "mlp", "gated_layers"), f"{p}.mlp.gated_layers", d, 2 * ff, bias=False)
        linear((*dst, "mlp", "wo"), f"{p}.mlp.wo", ff, d)
        norm((*dst, "mlp", "norm"), f"{p}.mlp.layernorm")
    linear(("head", "transform"), "cls.predictions.transform.dense", d, d)
    norm(("head", "norm"), "cls.predictions.transform.LayerNorm")
    flat[("head", "decoder_bias")] = src.take("cls.predictions.decoder.bias", (v,))
    if "cls.predictions.decoder.weight" in src:
        dec = src.take("cls.predictions.decoder.weight", (v, d))
        if not np.array_equal(dec, emb):
            raise CheckpointError(f"{src.origin}: tensor 'cls.predictions.decoder.weight' differs from "
                                  "'bert.embeddings.word_embeddings.weight'; DNABERT-2 ties them")
    # the pooler belongs to the classification models that share this checkpoint layout
    src.check_unused(ignore=(r"^bert\.pooler\.",))
    return flat


SPEC = FamilySpec(
    name="dnabert2",
    objective="masked",
    config_cls=DNABERT2Config,
    build=build,
    tokenizer=tokenizer,
    detect=detect,
    reject=reject,
    convert_hf=convert_hf,
    description="DNABERT-2 (BPE masked LM, ALiBi, GeGLU, post-LN; zhihan1996/DNABERT-2-117M)",
    architecture_class="masked-transformer",
    lora_targets=("Wqkv", "dense", "gated_layers", "wo"),
)
