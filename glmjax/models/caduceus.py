"""Caduceus: bidirectional Mamba masked LMs for DNA, PH and the reverse-complement-equivariant PS.

Reference: kuleshov-group/caduceus (``CaduceusForMaskedLM``, ``modeling_rcps.py``) on
``mamba_ssm`` 1.2 blocks with ``fused_add_norm=True`` (the published configuration).

* **BiMamba** mixer: ``out = mamba_fwd(x) + flip_L(mamba_rev(flip_L(x)))`` (``"add"``; or
  ``"ew_multiply"``). With ``bidirectional_weight_tie`` the reverse Mamba shares ``in_proj`` and
  ``out_proj`` with the forward one (the checkpoint stores only the forward copies); conv,
  ``x_proj``, ``dt_proj``, ``A_log`` and ``D`` are per direction. Because the projections are
  linear, glmjax computes ``in_proj`` once (the reverse input is its flip) and, for ``"add"``,
  ``out_proj`` once on the summed scan outputs; both directions run through one selective scan.
* **Blocks** (Mamba add-norm order): ``residual = h + residual`` (``h`` alone in the first layer),
  ``h = mixer(RMSNorm(residual))``; at the end ``norm_f(h + residual)``. RMSNorm in float32.
* **PH**: plain embedding, LM head tied to the embedding (``logits = h @ E^T``).
* **PS** (``rcps``): the stream has ``2 d_model`` channels; ``rc`` flips length and channels.
  Embedding ``cat[E[x], rc(E[comp(rc(x))])]``; mixer ``cat[M(h1), rc(M(rc(h2)))]`` (both halves
  go through one batched BiMamba call); LM head ``h1 @ E^T + flip_C(h2) @ E[comp]^T``. With
  ``fused_add_norm`` (published) the add-norm of every block *swaps* the stream halves:
  ``s1 = h2 + r2``, ``s2 = h1 + r1``, new residual ``cat[s1, s2]``, normed
  ``cat[norm(s1), rc(norm(rc(s2)))]``; the final ``norm_f`` does not swap. Without it
  (``RCPSAddNormWrapper``) no block swaps. Both variants are exactly RC-equivariant.
* No attention mask: pads are input, exactly like the reference (tokenizer pads on the left).

Checkpoints: the published ``caduceus.backbone.*`` safetensors (``lm_head`` and the reverse
projections are absent: they are tied and re-tied here); ``complement_map`` buffers must match
the config's map.
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
from glmjax.kernels.selective_scan import selective_scan
from glmjax.models.base import FamilySpec, PresetTable, config_from_dict, config_to_dict, float32_matmuls
from glmjax.models.checkpoints import TensorSource
from glmjax.models.mamba import Norm, SSMCore, check_scan_options, convert_mixer, linear, normal_init
from glmjax.tokenizers import CharTokenizer, caduceus_char_tokenizer

_List = getattr(nnx, "List", list)
F32 = jnp.float32

# CaduceusTokenizer ids: [CLS] [SEP] [BOS] [MASK] [PAD] [RESERVED] [UNK] A C G T N; A<->T, C<->G
CHAR_COMPLEMENT = (0, 1, 2, 3, 4, 5, 6, 10, 9, 8, 7, 11)


def _complement_map(vocab_size: int, base: tuple[int, ...] = CHAR_COMPLEMENT) -> tuple[int, ...]:
    """``base`` extended with identity entries up to ``vocab_size`` (the padded rows)."""
    return tuple(base[:vocab_size]) + tuple(range(len(base), vocab_size))


@dataclass(frozen=True)
class CaduceusConfig(PresetTable):
    """Caduceus hyper-parameters (``CaduceusConfig`` names; ``ssm_cfg`` fields flattened).

    Attributes:
      vocab_size: embedding rows, already padded to ``pad_vocab_size_multiple`` (16 for the char
        vocabulary of 12).
      d_model: model width (the PS stream carries ``2 * d_model`` channels).
      n_layer: BiMamba blocks.
      d_state, d_conv, expand, dt_rank: Mamba mixer sizes (``dt_rank`` None = ``ceil(d_model/16)``).
      conv_bias / bias: bias of the conv / of in_proj and out_proj.
      norm_eps: RMSNorm epsilon; rms_norm: RMSNorm (True, published) or LayerNorm.
      rcps: reverse-complement parameter sharing (PS) instead of PH.
      bidirectional, bidirectional_strategy (``add`` | ``ew_multiply``), bidirectional_weight_tie.
      fused_add_norm: the published block (see the module docstring: matters for PS only).
      complement_map: complement token id of every id (length ``vocab_size``).
      max_len: context length in tokens (131072 for the published 131k models).
      scan_chunk: chunk length of the selective scan (None: chosen from the sequence length).
      scan_inner: ``scan`` or ``segsum`` chunk processing (same results; see the kernel).
      dtype: compute dtype name; parameters stay float32, scan and norms run in float32.
    """

    PRESET_LABEL = "Caduceus"

    vocab_size: int = 16
    d_model: int = 256
    n_layer: int = 16
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int | None = None
    conv_bias: bool = True
    bias: bool = False
    norm_eps: float = 1e-5
    rms_norm: bool = True
    rcps: bool = False
    bidirectional: bool = True
    bidirectional_strategy: str = "add"
    bidirectional_weight_tie: bool = True
    fused_add_norm: bool = True
    complement_map: tuple[int, ...] = _complement_map(16)
    max_len: int = 131072
    scan_chunk: int | None = None
    scan_inner: str = "scan"
    dtype: str = "float32"

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_layer", "d_state", "d_conv", "expand"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"Caduceus config {name} must be >= 1, got {getattr(self, name)}")
        if self.bidirectional_strategy not in ("add", "ew_multiply"):
            raise ConfigError(f"Caduceus bidirectional_strategy {self.bidirectional_strategy!r} is not "
                              "one of the reference's 'add', 'ew_multiply'")
        cm = tuple(int(c) for c in self.complement_map)
        if len(cm) != self.vocab_size or sorted(cm) != list(range(self.vocab_size)) or any(
                cm[c] != i for i, c in enumerate(cm)):
            raise ConfigError(f"Caduceus complement_map must be an involution of the {self.vocab_size} token "
                              f"ids (one entry per id); got {list(cm)}")
        object.__setattr__(self, "complement_map", cm)
        check_scan_options(self.scan_chunk, self.scan_inner)

    @property
    def d_inner(self) -> int:
        return int(self.expand * self.d_model)

    @property
    def time_step_rank(self) -> int:
        return int(self.dt_rank) if self.dt_rank else math.ceil(self.d_model / 16)

    @property
    def variant(self) -> str:
        return "ps" if self.rcps else "ph"

    @classmethod
    def tiny(cls, rcps: bool = False) -> CaduceusConfig:
        """A small model for tests (``rcps=True`` for the PS variant)."""
        return cls(d_model=32, n_layer=2, d_state=8, rcps=rcps, max_len=256)

    @classmethod
    def _preset_table(cls) -> dict:
        """Published sizes: ``ph-131k`` / ``ps-131k`` (kuleshov-group/caduceus-{ph,ps}_seqlen-131k_
        d_model-256_n_layer-16: 16 BiMamba blocks, d 256, N 16, 7.7M parameters); ``ph-1k``
        (caduceus-ph_seqlen-1k_d_model-118_n_layer-4); ``ps-1k`` (caduceus-ps_seqlen-1k_d_model-256_
        n_layer-4); ``tiny`` / ``tiny-ps``."""
        return {
            "tiny": lambda: cls.tiny(False),
            "tiny-ps": lambda: cls.tiny(True),
            "ph-131k": lambda: cls(d_model=256, n_layer=16, rcps=False, max_len=131072),
            "ps-131k": lambda: cls(d_model=256, n_layer=16, rcps=True, max_len=131072),
            "ph-1k": lambda: cls(d_model=118, n_layer=4, rcps=False, max_len=1024),
            "ps-1k": lambda: cls(d_model=256, n_layer=4, rcps=True, max_len=1024),
        }

    @classmethod
    def from_hf(cls, cfg: dict) -> CaduceusConfig:
        """From a Caduceus ``config.json`` (``model_type`` caduceus). The vocabulary is padded to
        ``pad_vocab_size_multiple`` and the complement map extended with identities, as the
        reference model's constructor does."""
        try:
            ssm = cfg.get("ssm_cfg") or {}
            vocab = int(cfg["vocab_size"])
            mult = int(cfg.get("pad_vocab_size_multiple", 8))
            vocab += (-vocab) % mult
            raw = cfg.get("complement_map")
            if raw is None:
                if cfg.get("rcps"):
                    raise ConfigError("Caduceus config has rcps=true but no complement_map")
                cmap = _complement_map(vocab)
            else:
                items = sorted((int(k), int(v)) for k, v in raw.items())
                if [k for k, _ in items] != list(range(len(items))):
                    raise ConfigError("Caduceus config complement_map keys are not the ids 0..n-1")
                cmap = _complement_map(vocab, tuple(v for _, v in items))
            rank = ssm.get("dt_rank", "auto")
            return cls(vocab_size=vocab, d_model=int(cfg["d_model"]), n_layer=int(cfg["n_layer"]),
                       d_state=int(ssm.get("d_state", 16)), d_conv=int(ssm.get("d_conv", 4)),
                       expand=int(ssm.get("expand", 2)), dt_rank=None if rank == "auto" else int(rank),
                       conv_bias=bool(ssm.get("conv_bias", True)), bias=bool(ssm.get("bias", False)),
                       norm_eps=float(cfg.get("norm_epsilon", 1e-5)), rms_norm=bool(cfg.get("rms_norm", True)),
                       rcps=bool(cfg.get("rcps", False)), bidirectional=bool(cfg.get("bidirectional", True)),
                       bidirectional_strategy=str(cfg.get("bidirectional_strategy") or "add"),
                       bidirectional_weight_tie=bool(cfg.get("bidirectional_weight_tie", True)),
                       fused_add_norm=bool(cfg.get("fused_add_norm", True)), complement_map=cmap,
                       max_len=int(cfg.get("max_len", 131072)))
        except KeyError as e:
            raise ConfigError(f"Caduceus config.json lacks {e.args[0]!r}") from None

    def to_dict(self) -> dict:
        """Plain dict (for glmjax's own checkpoints)."""
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, d: dict) -> CaduceusConfig:
        """Inverse of :meth:`to_dict` (unknown keys ignored)."""
        return config_from_dict(cls, d)


def detect(cfg: dict) -> bool:
    """True for a Caduceus ``config.json``."""
    return cfg.get("model_type") == "caduceus"


# ---------------------------------------------------------------------------------------------
# Modules

def rc_channels(x: jax.Array) -> jax.Array:
    """Reverse complement of a ``[..., L, C]`` activation: flip length and channels."""
    return x[..., ::-1, ::-1]


class BiMamba(nnx.Module):
    """Caduceus's ``BiMambaWrapper`` around two Mamba mixers (``[R, L, d] -> [R, L, d]``)."""

    def __init__(self, cfg: CaduceusConfig, dtype, rngs: nnx.Rngs):
        d, di = cfg.d_model, cfg.d_inner
        self.d_inner = di
        self.dtype = dtype
        self.bias = cfg.bias
        self.bidirectional = cfg.bidirectional
        self.strategy = cfg.bidirectional_strategy
        self.tied = cfg.bidirectional_weight_tie
        self.scan_chunk = cfg.scan_chunk
        self.scan_inner = cfg.scan_inner
        self.in_proj = linear(d, 2 * di, cfg.bias, dtype, rngs)
        self.out_proj = linear(di, d, cfg.bias, dtype, rngs)
        core = lambda: SSMCore(di, cfg.d_state, cfg.d_conv, cfg.time_step_rank, cfg.conv_bias, dtype, rngs)
        self.fwd = core()
        self.rev = core() if cfg.bidirectional else None
        untied = cfg.bidirectional and not cfg.bidirectional_weight_tie
        self.rev_in_proj = linear(d, 2 * di, cfg.bias, dtype, rngs) if untied else None
        self.rev_out_proj = linear(di, d, cfg.bias, dtype, rngs) if untied else None

    def __call__(self, x: jax.Array) -> jax.Array:
        di = self.d_inner
        r = x.shape[0]
        x = x.astype(self.dtype)
        xz = self.in_proj(x)
        if not self.bidirectional:
            u = self.fwd.conv(xz[..., :di])
            dt, b, c = self.fwd.params_from_conv(u.astype(self.dtype))
            y = selective_scan(u, dt, self.fwd.A(), b, c, self.fwd.D[...], xz[..., di:],
                               chunk_size=self.scan_chunk, inner=self.scan_inner)
            return self.out_proj(y.astype(self.dtype))
        # the reverse Mamba reads flip_L(x): with tied weights its in_proj output is flip_L(xz)
        xz_rev = (xz if self.rev_in_proj is None else self.rev_in_proj(x))[:, ::-1]
        u_f = self.fwd.conv(xz[..., :di])
        u_r = self.rev.conv(xz_rev[..., :di])
        dt_f, b_f, c_f = self.fwd.params_from_conv(u_f.astype(self.dtype))
        dt_r, b_r, c_r = self.rev.params_from_conv(u_r.astype(self.dtype))
        # both directions as one scan: rows [0, R) forward, [R, 2R) reverse, per-row A and D
        cat = lambda a, b_: jnp.concatenate([a, b_], axis=0)
        per_row = lambda p_f, p_r: cat(jnp.broadcast_to(p_f, (r, *p_f.shape)), jnp.broadcast_to(p_r, (r, *p_r.shape)))
        y = selective_scan(cat(u_f, u_r), cat(dt_f, dt_r), per_row(self.fwd.A(), self.rev.A()), cat(b_f, b_r),
                           cat(c_f, c_r), per_row(self.fwd.D[...], self.rev.D[...]), cat(xz[..., di:], xz_rev[..., di:]),
                           chunk_size=self.scan_chunk, inner=self.scan_inner)
        y_f = y[:r].astype(self.dtype)
        y_r = y[r:, ::-1].astype(self.dtype)
        out_rev = self.out_proj if self.rev_out_proj is None else self.rev_out_proj
        if self.strategy == "add":
            if self.rev_out_proj is None and not self.bias:
                return self.out_proj(y_f + y_r)  # out_proj is linear: one matmul for both directions
            return self.out_proj(y_f) + out_rev(y_r)
        return self.out_proj(y_f) * out_rev(y_r)


class CaduceusBlock(nnx.Module):
    """Add-norm + BiMamba (PH) or its RCPS version (PS); see the module docstring."""

    def __init__(self, cfg: CaduceusConfig, dtype, rngs: nnx.Rngs):
        self.norm = Norm(cfg.d_model, cfg.norm_eps, cfg.rms_norm)
        self.mixer = BiMamba(cfg, dtype, rngs)
        self.rcps = cfg.rcps
        self.swap = cfg.rcps and cfg.fused_add_norm
        self.d = cfg.d_model

    def __call__(self, h: jax.Array, residual: jax.Array | None) -> tuple[jax.Array, jax.Array]:
        """``(hidden, residual)`` float32 ``[B, L, C]`` -> new ``(hidden, residual)``."""
        s = h if residual is None else h + residual
        if not self.rcps:
            return self.mixer(self.norm(s)).astype(F32), s
        d = self.d
        s1, s2 = s[..., :d], s[..., d:]
        if self.swap:
            # fused_add_norm RCPS block: the forward norm reads the second half and vice versa
            s1, s2 = s2, s1
            s = jnp.concatenate([s1, s2], axis=-1)
        n1 = self.norm(s1)
        n2 = self.norm(s2, reverse_weight=True)  # = rc(norm(rc(s2)))
        bsz = h.shape[0]
        out = self.mixer(jnp.concatenate([n1, rc_channels(n2)], axis=0)).astype(F32)
        return jnp.concatenate([out[:bsz], rc_channels(out[bsz:])], axis=-1), s


class Caduceus(nnx.Module):
    """``CaduceusForMaskedLM``: ``input_ids [B, L] -> logits [B, L, vocab_size]`` (float32)."""

    def __init__(self, cfg: CaduceusConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        dtype = jnp.dtype(cfg.dtype)
        self.embed = nnx.Embed(cfg.vocab_size, cfg.d_model, dtype=F32, param_dtype=F32,
                               embedding_init=normal_init(0.02), rngs=rngs)
        self.layers = _List([CaduceusBlock(cfg, dtype, rngs) for _ in range(cfg.n_layer)])
        self.norm_f = Norm(cfg.d_model, cfg.norm_eps, cfg.rms_norm)

    def hidden_states(self, input_ids: jax.Array) -> jax.Array:
        """Final normed hidden states ``[B, L, d_model]`` (PS: ``[B, L, 2 d_model]``), float32."""
        ids = jnp.asarray(input_ids, jnp.int32)
        # a jax array even when the parameter holds host (numpy) data, e.g. closed over in eval_shape
        emb = jnp.asarray(self.embed.embedding[...], F32)
        h = emb[ids]
        if self.cfg.rcps:
            comp = jnp.asarray(self.cfg.complement_map, jnp.int32)
            # rc(E[comp(rc(x))]) = flip_C(E[comp[x]]): the length flips cancel
            h = jnp.concatenate([h, emb[comp[ids]][..., ::-1]], axis=-1)
        residual = None
        for layer in self.layers:
            h, residual = layer(h, residual)
        s = h + residual
        if not self.cfg.rcps:
            return self.norm_f(s)
        d = self.cfg.d_model
        return jnp.concatenate([self.norm_f(s[..., :d]), self.norm_f(s[..., d:], reverse_weight=True)], axis=-1)

    @float32_matmuls
    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
        """Masked-LM logits ``[B, L, V]`` (float32). ``attention_mask`` is ignored: Caduceus has
        none and treats pads as input, like its reference."""
        del attention_mask
        h = self.hidden_states(input_ids)
        emb = self.embed.embedding[...].astype(F32)
        hp = jax.lax.Precision.HIGHEST
        if not self.cfg.rcps:
            return jnp.einsum("bld,vd->blv", h, emb, precision=hp)
        d = self.cfg.d_model
        comp = jnp.asarray(self.cfg.complement_map, jnp.int32)
        return (jnp.einsum("bld,vd->blv", h[..., :d], emb, precision=hp)
                + jnp.einsum("bld,vd->blv", h[..., d:][..., ::-1], emb[comp], precision=hp))


def build(cfg: CaduceusConfig, rngs: nnx.Rngs) -> Caduceus:
    """A freshly initialised Caduceus (PH or PS by ``cfg.rcps``; ``mamba_ssm`` mixer init)."""
    return Caduceus(cfg, rngs)


def tokenizer(cfg: CaduceusConfig, path: Path | None) -> CharTokenizer:
    """Caduceus's character tokenizer (``[SEP]`` appended, left ``[PAD]`` padding)."""
    del path
    return caduceus_char_tokenizer(vocab_size=cfg.vocab_size)


def convert_hf(src: TensorSource, cfg: CaduceusConfig) -> dict[tuple, np.ndarray]:
    """Published Caduceus tensors (``caduceus.backbone.*``; or ``backbone.*`` of the bare
    ``Caduceus`` model) -> flat NNX params. Absent tied tensors (reverse in/out projections,
    ``lm_head``) are re-tied; stored copies must equal what they are tied to."""
    d, v, di = cfg.d_model, cfg.vocab_size, cfg.d_inner
    dims = (d, di, cfg.d_state, cfg.d_conv, cfg.time_step_rank)
    keys = src.keys()
    p = "caduceus.backbone." if any(k.startswith("caduceus.backbone.") for k in keys) else "backbone."
    flat: dict[tuple, np.ndarray] = {}
    emb = src.take(f"{p}embeddings.word_embeddings.weight", (v, d), f"{p}embeddings.word_embeddings.embedding.weight")
    flat[("embed", "embedding")] = emb
    cm = np.asarray(cfg.complement_map)
    for key in (f"{p}embeddings.word_embeddings.complement_map", "lm_head.complement_map"):
        if key in src and not np.array_equal(src.take(key), cm) and not src.shapes_only:
            raise CheckpointError(f"{src.origin}: buffer {key!r} differs from the config's complement_map")

    def norm(dst: tuple, key: str) -> None:
        flat[(*dst, "weight")] = src.take(f"{key}.weight", (d,), f"{key}.submodule.weight")
        if not cfg.rms_norm:
            flat[(*dst, "bias")] = src.take(f"{key}.bias", (d,), f"{key}.submodule.bias")

    def tied(key: str, ref: np.ndarray, what: str) -> None:
        if key in src and not np.array_equal(src.take(key, ref.shape), ref):
            raise CheckpointError(f"{src.origin}: tensor {key!r} differs from {what} it is tied to")

    for i in range(cfg.n_layer):
        lp = f"{p}layers.{i}."
        mp = f"{lp}mixer.submodule." if any(k.startswith(f"{lp}mixer.submodule.") for k in keys) else f"{lp}mixer."
        norm(("layers", i, "norm"), f"{lp}norm")
        dst = ("layers", i, "mixer")
        for k, arr in convert_mixer(src, f"{mp}mamba_fwd.", dims, cfg.bias, cfg.conv_bias).items():
            flat[(*dst, *(("fwd", *k[1:]) if k[0] == "ssm" else k))] = arr
        if not cfg.bidirectional:
            continue
        for k, arr in convert_mixer(src, f"{mp}mamba_rev.", dims, cfg.bias, cfg.conv_bias, with_proj=False).items():
            flat[(*dst, "rev", *k[1:])] = arr
        for proj in ("in_proj", "out_proj"):
            for part in ("weight", "bias") if cfg.bias else ("weight",):
                key = f"{mp}mamba_rev.{proj}.{part}"
                if cfg.bidirectional_weight_tie:
                    fwd = flat[(*dst, proj, "kernel")].T if part == "weight" else flat[(*dst, proj, "bias")]
                    tied(key, fwd, f"mamba_fwd.{proj}.{part}")
                else:
                    arr = src.take(key)
                    flat[(*dst, f"rev_{proj}", "kernel" if part == "weight" else "bias")] = (
                        arr.T if part == "weight" else arr)
    norm(("norm_f",), f"{p}norm_f")
    tied("lm_head.weight", emb, "the word embedding")
    tied("lm_head.lm_head.weight", emb, "the word embedding")
    src.check_unused()
    return flat


SPEC = FamilySpec(
    attention_mask=False,
    name="caduceus",
    objective="masked",
    config_cls=CaduceusConfig,
    build=build,
    tokenizer=tokenizer,
    detect=detect,
    convert_hf=convert_hf,
    description="Caduceus PH / PS (bidirectional Mamba masked LM, RC-equivariant PS; kuleshov-group)",
    architecture_class="state-space",
    lora_targets=("in_proj", "out_proj"),
)
