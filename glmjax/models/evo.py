"""Evo: StripedHyena (Evo 1, registry name ``evo1``) and StripedHyena 2 (Evo 2, ``evo2``).

Both generations are byte-level causal DNA language models that stripe gated convolution
("Hyena") blocks with a few rotary attention blocks. One module serves both; the config says
which operator each layer runs:

* ``attn``: ``u += out_proj(MHA(pre_norm(u)))`` with ``Wqkv`` rows ``[Q; K; V]``, rotary on the
  whole head (GPT-NeoX halves, base ``rotary_emb_base``, optional linear position interpolation
  ``pos / rotary_emb_scaling_factor``), causal softmax attention, no GQA;
* Hyena blocks: ``z = projections(pre_norm(u))`` (``d -> 3d``), a depthwise causal FIR of
  ``short_filter_length`` taps over the 3d channels (cross-correlation: the last tap multiplies
  the current step), split into ``x2`` (output gate), ``x1`` (input gate) and ``v``; then with
  ``w = x1 * v``, ``y = x2 * (conv(w) + D * w)`` and ``u += out_filter_dense(y)``, where ``conv`` is

  - ``modal`` (Evo 1): the long filter ``h[t, c] = Re(sum_s R[c, s] p[c, s] ** t)`` of complex
    poles and residues (stored as real pairs), an FFT convolution over the whole input;
  - ``hcl`` (Evo 2 long): ``h[t, c] = sum_s R[c, s] exp(log_p[c, s] t)`` with real log-poles;
  - ``hcm`` (Evo 2 medium, ``hcm_filter_length`` taps, grouped): an explicit filter of at least
    128 taps is a TRUE convolution (first tap on the current step, through the FFT);
  - ``hcs`` (Evo 2 short, ``hcs_filter_length`` taps, grouped): an explicit filter shorter than 128
    taps is a cross-correlation (last tap on the current step) and has no ``D`` term;

  grouped filters give channel ``c`` the row ``c // (d / groups)``;
* every block ends with ``u += l3(act(l1 x) * l2 x)`` on ``post_norm(u)``; Evo 1 uses exact GELU
  in every block, Evo 2 (``evo2_style_activations``) only in block 0 and the identity elsewhere;
* RMSNorm as StripedHyena computes it: ``scale * x / (||x||_2 d**-0.5 + eps)`` (eps added to the
  RMS); embedding without scaling or positions; final norm; logits ``h @ E^T`` (tied).

How the projections are split differs: Evo 1 (``column_split_hyena``) reads the 3d channels as
``[heads, 3, head_dim]``; Evo 2 (``interleave``) takes every third channel. Evo 2 checkpoints store
``Wqkv`` in the training layout ``(heads, 3, head_dim)``, permuted to ``[Q; K; V]`` on load
(``column_split``); Evo 1 checkpoints of HF revision ``1.1_fix`` are already ``[Q; K; V]``.

Tokenizer: one token per byte (A C G T N = 65 67 71 84 78, vocab 512), right padding with 1;
Evo 1 prepends the BOS/EOD id 0 (as evo's ``prepare_batch``), Evo 2 does not. glmjax encodes
nucleotides from their codes, so soft-masked (lower-case) bases are read as upper case.

Numerics: parameters are float32; the projections, attention and MLP compute in the config's
``dtype``; norms, the FIR filters, the filter construction and the FFT convolutions in float32.
Published Evo 2 1B/40B checkpoints run their input projections in FP8 through Transformer Engine
on Hopper; glmjax computes them in the compute dtype (bf16 or fp32), which is the same function at
a higher precision (``glmjax models info`` says so).

Incremental decoding (extraction, exact exposure): the recurrent form of every operator, with a
state whose size does not depend on the position: the FIR filters keep their last ``taps - 1``
inputs, the modal / ``hcl`` filters keep one state per (channel, pole) (``s_t = p s_{t-1} + w_t``,
``y_t = Re(sum_s R s_t)``; a prefix's state is computed in one pass), attention keeps a KV cache.
In shared-prefix decoding (:mod:`glmjax.models.decoding`) the prefix's keys/values are shared by
all its continuations and a row holds only its suffix's keys/values besides the fixed-size
filter states.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from glmjax.errors import CheckpointError, ConfigError, SequenceError
from glmjax.kernels.attention import attention, prefix_shared_attention
from glmjax.kernels.fftconv import fftconv
from glmjax.models.base import FamilySpec, config_from_dict, config_to_dict, float32_matmuls
from glmjax.models.checkpoints import TensorSource, read_safetensors, read_torch_state
from glmjax.models.layers import (
    apply_rope,
    cache_key_mask,
    cache_write,
    check_dtype,
    gelu_erf,
    lm_logits,
    suffix_valid,
    suffix_write,
)
from glmjax.tokenizers import CharTokenizer

KINDS = ("attn", "modal", "hcs", "hcm", "hcl")
FFT_FIR_MIN = 128  # explicit filters of at least this many taps are true convolutions (via FFT)
BYTE_BASES = (65, 67, 71, 84, 78)  # A C G T N as UTF-8 bytes
BOS_ID, PAD_ID = 0, 1


# ---------------------------------------------------------------------------------------------
# Configuration


def _pattern(spec: str) -> tuple[str, ...]:
    """Layer kinds from a compact pattern: ``A`` attn, ``H`` modal, ``S`` hcs, ``M`` hcm, ``L`` hcl."""
    table = {"A": "attn", "H": "modal", "S": "hcs", "M": "hcm", "L": "hcl"}
    return tuple(table[ch] for ch in spec)


@dataclass(frozen=True)
class EvoConfig:
    """Shape and numerics of an Evo model (names as in the published configs).

    Attributes:
      generation: 1 (StripedHyena, Evo 1) or 2 (StripedHyena 2, Evo 2).
      layers: the operator of each block, in order: ``attn``, ``modal`` (Evo 1 Hyena),
        ``hcs`` / ``hcm`` / ``hcl`` (Evo 2 short / medium / long Hyena).
      hidden_size, num_attention_heads, inner_mlp_size, vocab_size: the usual sizes.
      state_size: poles per channel of the modal / ``hcl`` filters.
      short_filter_length, short_filter_bias: the FIR applied to the projections.
      hcs_filter_length, hcm_filter_length, hcs_filter_groups, hcm_filter_groups: Evo 2's explicit
        filters (taps and distinct filters).
      eps: RMSNorm epsilon (added to the RMS).
      rotary_emb_base, rotary_emb_scaling_factor: rotary base and linear position interpolation
        (1 = none; positions are divided by it).
      proj_bias: bias of the Hyena ``projections`` (Evo 1 always; Evo 2 ``qkv_proj_bias``).
      qkv_proj_bias, mha_out_proj_bias, hyena_out_proj_bias: biases of ``Wqkv``, ``out_proj``
        and ``out_filter_dense``.
      split: how the projected channels become ``x2, x1, v``: ``column`` (Evo 1
        ``column_split_hyena``), ``interleave`` (Evo 2) or ``contiguous``.
      hyena_flip_x1x2: swap the two gates (Evo 2 option).
      wqkv_per_head: the checkpoint stores ``Wqkv`` as ``(heads, 3, head_dim)`` (Evo 2
        ``column_split``): permuted on load.
      mlp_activation: ``gelu`` (exact erf form) or ``silu``.
      evo2_style_activations: the activation only in block 0, the identity elsewhere.
      max_seqlen: the longest input in tokens.
      fp8_input_projections: the published model runs its Hyena projections in FP8 (recorded; glmjax
        computes them in ``dtype``).
      rotary_inv_freq: the rotary inverse frequencies stored by the checkpoint when they differ from
        the formula (vortex uses the stored buffer); empty = the formula.
      initializer_range: std of fresh linear weights.
      dtype: compute dtype name.
    """

    generation: int = 1
    layers: tuple[str, ...] = _pattern("HHAHH")
    hidden_size: int = 64
    num_attention_heads: int = 4
    inner_mlp_size: int = 176
    vocab_size: int = 512
    state_size: int = 8
    short_filter_length: int = 3
    short_filter_bias: bool = True
    hcs_filter_length: int = 7
    hcm_filter_length: int = 128
    hcs_filter_groups: int = 16
    hcm_filter_groups: int = 16
    eps: float = 1e-6
    rotary_emb_base: float = 10000.0
    rotary_emb_scaling_factor: float = 1.0
    proj_bias: bool = True
    qkv_proj_bias: bool = True
    mha_out_proj_bias: bool = True
    hyena_out_proj_bias: bool = True
    split: str = "column"
    hyena_flip_x1x2: bool = False
    wqkv_per_head: bool = False
    mlp_activation: str = "gelu"
    evo2_style_activations: bool = False
    max_seqlen: int = 8192
    fp8_input_projections: bool = False
    rotary_inv_freq: tuple[float, ...] = ()
    initializer_range: float = 0.02
    dtype: str = "float32"

    def __post_init__(self) -> None:
        check_dtype(self.dtype)
        name = f"evo{self.generation}"
        if self.generation not in (1, 2):
            raise ConfigError(f"evo: generation must be 1 or 2, got {self.generation}")
        bad = sorted(set(self.layers) - set(KINDS))
        if bad or not self.layers:
            raise ConfigError(f"{name}: unknown layer kind(s) {bad}; choose from {', '.join(KINDS)}")
        allowed = {1: {"attn", "modal"}, 2: {"attn", "hcs", "hcm", "hcl"}}[self.generation]
        if set(self.layers) - allowed:
            raise ConfigError(f"{name}: layer kinds {sorted(set(self.layers) - allowed)} belong to the other "
                              "Evo generation")
        if min(self.hidden_size, self.num_attention_heads, self.inner_mlp_size, self.vocab_size, self.state_size,
               self.short_filter_length, self.hcs_filter_length, self.hcm_filter_length, self.max_seqlen) < 1:
            raise ConfigError(f"{name}: sizes must be positive integers")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(f"{name}: hidden_size {self.hidden_size} is not a multiple of num_attention_heads "
                              f"{self.num_attention_heads}")
        for groups in (self.hcs_filter_groups, self.hcm_filter_groups):
            if groups < 1 or self.hidden_size % groups:
                raise ConfigError(f"{name}: filter groups {groups} must divide hidden_size {self.hidden_size}")
        if self.split not in ("column", "interleave", "contiguous"):
            raise ConfigError(f"{name}: split must be column, interleave or contiguous, got {self.split!r}")
        if self.mlp_activation not in ("gelu", "silu"):
            raise ConfigError(f"{name}: mlp_activation must be gelu or silu, got {self.mlp_activation!r}")
        if self.rotary_emb_scaling_factor <= 0:
            raise ConfigError(f"{name}: rotary_emb_scaling_factor must be positive")
        if self.rotary_inv_freq and len(self.rotary_inv_freq) != self.head_dim // 2:
            raise ConfigError(f"{name}: rotary_inv_freq has {len(self.rotary_inv_freq)} values, the heads need "
                              f"{self.head_dim // 2}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def max_len(self) -> int:
        """Context length in tokens."""
        return self.max_seqlen

    @property
    def compute_dtype(self):
        return jnp.dtype(self.dtype)

    def inv_freq(self) -> np.ndarray:
        """Rotary inverse frequencies: :attr:`rotary_inv_freq` if set, else
        ``1 / base ** (arange(0, hd, 2) / hd)`` (float32)."""
        if self.rotary_inv_freq:
            return np.asarray(self.rotary_inv_freq, np.float32)
        return self.formula_inv_freq()

    def formula_inv_freq(self) -> np.ndarray:
        """``1 / base ** (arange(0, hd, 2) / hd)`` in float32, as the references compute it."""
        hd = self.head_dim
        exps = np.arange(0, hd, 2, dtype=np.float32) / np.float32(hd)
        return (np.float32(1.0) / (np.float32(self.rotary_emb_base) ** exps)).astype(np.float32)

    def to_dict(self) -> dict:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, d: dict) -> EvoConfig:
        return config_from_dict(cls, d)

    @classmethod
    def preset_names(cls) -> tuple[str, ...]:
        """The names :meth:`preset` accepts, in the order `glmjax models presets` lists them."""
        gen = 1 if cls is Evo1Config else 2
        return ("tiny", *(n for n, p in PRESETS.items() if p["generation"] == gen))

    @classmethod
    def preset(cls, name: str) -> EvoConfig:
        """Published shapes (see :data:`PRESETS`) and ``tiny`` (tests)."""
        gen = 1 if cls is Evo1Config else 2
        names = cls.preset_names()[1:]
        if name == "tiny":
            return cls.tiny()
        if name not in names:
            raise ConfigError(f"evo{gen}: unknown preset {name!r}; choose one of: tiny, {', '.join(names)}")
        return cls(**PRESETS[name])


def _layer_kinds_from_indices(d: dict, keys: dict[str, str], n: int, name: str) -> tuple[str, ...]:
    kinds: list[str | None] = [None] * n
    for key, kind in keys.items():
        for i in d.get(key) or ():
            i = int(i)
            if not 0 <= i < n:
                raise ConfigError(f"{name}: {key} names layer {i}, but the model has {n} layers")
            if kinds[i] is not None:
                raise ConfigError(f"{name}: layer {i} is listed as both {kinds[i]} and {kind}")
            kinds[i] = kind
    missing = [i for i, k in enumerate(kinds) if k is None]
    if missing:
        raise ConfigError(f"{name}: layer(s) {missing[:8]} are in none of {', '.join(keys)}")
    return tuple(kinds)  # type: ignore[arg-type]


def _rotary(d: dict) -> float:
    if d.get("use_interpolated_rotary_pos_emb", False):
        return float(d.get("rotary_emb_scaling_factor", 1.0) or 1.0)
    return 1.0


@dataclass(frozen=True)
class Evo1Config(EvoConfig):
    """Evo 1 (StripedHyena): ``modal`` Hyena blocks and attention blocks."""

    @classmethod
    def tiny(cls) -> Evo1Config:
        """5 layers (attention at 2), d = 64, 4 heads, 8 poles: the golden fixture's shapes."""
        return cls(max_seqlen=2048)

    @classmethod
    def from_hf(cls, d: dict) -> Evo1Config:
        """From the HF ``config.json`` of togethercomputer/evo-1-* (``model_type: stripedhyena``) or
        the StripedHyena inference yaml (same keys)."""
        name = "evo1"
        try:
            hidden = int(d["hidden_size"])
            n = int(d["num_layers"])
            if int(d.get("num_filters", hidden)) != hidden:
                raise ConfigError(f"{name}: num_filters {d['num_filters']} != hidden_size {hidden} is not supported "
                                  "(StripedHyena asserts they are equal)")
            if int(d.get("hyena_filter_groups", 1)) != 1:
                raise ConfigError(f"{name}: hyena_filter_groups={d['hyena_filter_groups']} is not supported; the "
                                  "published Evo 1 checkpoints use 1 (one modal filter per channel)")
            if int(d.get("proj_groups", 1)) != 1:
                raise ConfigError(f"{name}: proj_groups={d['proj_groups']} (grouped-query attention) is not supported")
            inner = d.get("inner_mlp_size")
            if inner is None:  # StripedHyena's rule when the key is missing or null
                mult = int(d.get("inner_size_multiple_of", 64)) * int(d.get("model_parallel_size", 1))
                inner = mult * ((int(2 * hidden * 4 / 3) + mult - 1) // mult)
            return cls(
                generation=1,
                layers=_layer_kinds_from_indices(d, {"attn_layer_idxs": "attn", "hyena_layer_idxs": "modal"}, n, name),
                hidden_size=hidden,
                num_attention_heads=int(d["num_attention_heads"]),
                inner_mlp_size=int(inner),
                vocab_size=int(d.get("vocab_size", 512)),
                state_size=int(d["state_size"]),
                short_filter_length=int(d.get("short_filter_length", 3)),
                short_filter_bias=bool(d.get("short_filter_bias", True)),
                eps=float(d.get("eps", 1e-6)),
                rotary_emb_base=float(d.get("rotary_emb_base", 10000)),
                rotary_emb_scaling_factor=_rotary(d),
                proj_bias=True,
                qkv_proj_bias=bool(d.get("qkv_proj_bias", True)),
                mha_out_proj_bias=bool(d.get("mha_out_proj_bias", True)),
                hyena_out_proj_bias=True,
                split="column" if d.get("column_split_hyena", True) else "contiguous",
                wqkv_per_head=False,
                mlp_activation=str(d.get("mlp_activation", "silu")),
                max_seqlen=int(d.get("max_seqlen", d.get("max_sequence_len", 8192))),
            )
        except KeyError as e:
            raise ConfigError(f"{name}: config lacks required key {e.args[0]!r}") from None
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{name}: config has an invalid value ({e})") from None


@dataclass(frozen=True)
class Evo2Config(EvoConfig):
    """Evo 2 (StripedHyena 2): ``hcs`` / ``hcm`` / ``hcl`` Hyena blocks and attention blocks."""

    @classmethod
    def tiny(cls) -> Evo2Config:
        """6 layers (hcs, hcm, hcl, attn, hcs, hcm), d = 64, 4 heads: the golden fixture's shapes."""
        return cls(generation=2, layers=_pattern("SMLASM"), state_size=16, short_filter_bias=False, proj_bias=False,
                   qkv_proj_bias=False, split="interleave", wqkv_per_head=True, evo2_style_activations=True,
                   max_seqlen=2048)

    @classmethod
    def from_hf(cls, d: dict) -> Evo2Config:
        """From a vortex / evo2 model yaml (``evo2/configs/evo2-*.yml``), or the same dict as JSON."""
        name = "evo2"
        try:
            hidden = int(d["hidden_size"])
            n = int(d["num_layers"])
            if int(d.get("num_filters", hidden)) != hidden:
                raise ConfigError(f"{name}: num_filters {d['num_filters']} != hidden_size {hidden} is not supported")
            if int(d.get("proj_groups", 1)) != 1:
                raise ConfigError(f"{name}: proj_groups={d['proj_groups']} (grouped-query attention) is not supported")
            keys = {"attn_layer_idxs": "attn", "hcs_layer_idxs": "hcs", "hcm_layer_idxs": "hcm",
                    "hcl_layer_idxs": "hcl"}
            if d.get("column_split_hyena", False):
                split = "column"
            elif d.get("interleave", True):
                split = "interleave"
            else:
                split = "contiguous"
            return cls(
                generation=2,
                layers=_layer_kinds_from_indices(d, keys, n, name),
                hidden_size=hidden,
                num_attention_heads=int(d["num_attention_heads"]),
                inner_mlp_size=int(d["inner_mlp_size"]),
                vocab_size=int(d.get("vocab_size", 512)),
                state_size=int(d.get("state_size", 16)),
                short_filter_length=int(d.get("short_filter_length", 3)),
                short_filter_bias=bool(d.get("short_filter_bias", False)),
                hcs_filter_length=int(d.get("hcs_filter_length", 7)),
                hcm_filter_length=int(d.get("hcm_filter_length", 128)),
                hcs_filter_groups=int(d.get("hcs_filter_groups", hidden)),
                hcm_filter_groups=int(d.get("hcm_filter_groups", hidden)),
                eps=float(d.get("eps", 1e-6)),
                rotary_emb_base=float(d.get("rotary_emb_base", 1e6)),
                rotary_emb_scaling_factor=_rotary(d),
                proj_bias=bool(d.get("qkv_proj_bias", False)),
                qkv_proj_bias=bool(d.get("qkv_proj_bias", False)),
                mha_out_proj_bias=bool(d.get("mha_out_proj_bias", True)),
                hyena_out_proj_bias=bool(d.get("hyena_out_proj_bias", True)),
                split=split,
                hyena_flip_x1x2=bool(d.get("hyena_flip_x1x2", False)),
                wqkv_per_head=bool(d.get("column_split", True)),
                mlp_activation=str(d.get("mlp_activation", "gelu")),
                evo2_style_activations=bool(d.get("evo2_style_activations", False)),
                max_seqlen=int(d.get("max_seqlen", 8192)),
                fp8_input_projections=bool(d.get("use_fp8_input_projections", False)),
            )
        except KeyError as e:
            raise ConfigError(f"{name}: config lacks required key {e.args[0]!r}") from None
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{name}: config has an invalid value ({e})") from None


_EVO1 = dict(generation=1, hidden_size=4096, num_attention_heads=32, inner_mlp_size=10928, state_size=8,
             layers=_pattern("HHHHHHHHAHHHHHHHAHHHHHHHAHHHHHHH"))
_EVO2 = dict(generation=2, state_size=16, short_filter_bias=False, proj_bias=False, qkv_proj_bias=False,
             split="interleave", wqkv_per_head=True, evo2_style_activations=True)
_P7 = _pattern("SMLA" + "SMLSMLA" * 4)                       # 32 layers, attention at 3, 10, 17, 24, 31
_P1 = _pattern("SMLA" + "SMLSMLA" * 3)                       # 25 layers, attention at 3, 10, 17, 24
_P40 = _pattern("SMLA" + "SMLSMLA" * 4 + "SMLA" + "SMLSMLA" * 2)  # 50 layers, attention at 3 ... 31, 35, 42, 49
_P20 = _pattern("SMLA" + "SMLSMLA" * 2 + "SMLSML")           # 24 layers, attention at 3, 10, 17
_D7 = dict(hidden_size=4096, num_attention_heads=32, hcs_filter_groups=256, hcm_filter_groups=256)
_D40 = dict(hidden_size=8192, num_attention_heads=64, hcs_filter_groups=512, hcm_filter_groups=512,
            rotary_emb_base=1e6)

#: Published checkpoints: Evo 1 (togethercomputer/evo-1-{8k,131k}-base, HF config / inference yaml)
#: and Evo 2 (arcinstitute evo2_* with the evo2 package's ``configs/evo2-*.yml``).
PRESETS: dict[str, dict] = {
    "evo1-7b-8k": dict(_EVO1, max_seqlen=8192),
    "evo1-7b-131k": dict(_EVO1, max_seqlen=131072, rotary_emb_scaling_factor=16.0),
    "evo2-1b-8k": dict(_EVO2, layers=_P1, hidden_size=1920, num_attention_heads=15, hcs_filter_groups=128,
                       hcm_filter_groups=128, inner_mlp_size=5120, max_seqlen=8192, fp8_input_projections=True),
    "evo2-7b-8k": dict(_EVO2, layers=_P7, **_D7, inner_mlp_size=11008, max_seqlen=32768,
                       fp8_input_projections=True),
    "evo2-7b-262k": dict(_EVO2, layers=_P7, **_D7, inner_mlp_size=11008, max_seqlen=262144,
                         rotary_emb_scaling_factor=32.0, fp8_input_projections=True),
    "evo2-7b-1m": dict(_EVO2, layers=_P7, **_D7, inner_mlp_size=11264, max_seqlen=1048576,
                       rotary_emb_scaling_factor=128.0, fp8_input_projections=True),
    "evo2-20b-1m": dict(_EVO2, layers=_P20, **_D40, inner_mlp_size=22528, max_seqlen=1048576,
                        rotary_emb_scaling_factor=128.0, fp8_input_projections=True),
    "evo2-40b-8k": dict(_EVO2, layers=_P40, **_D40, inner_mlp_size=21888, max_seqlen=8192,
                        fp8_input_projections=True),
    "evo2-40b-1m": dict(_EVO2, layers=_P40, **_D40, inner_mlp_size=22528, max_seqlen=1048576,
                        rotary_emb_scaling_factor=128.0, fp8_input_projections=True),
}

#: Weight files of the published Evo 2 checkpoints (arcinstitute/<name> on the Hub) -> preset.
EVO2_FILES = {"evo2_1b_base": "evo2-1b-8k", "evo2_7b_base": "evo2-7b-8k", "evo2_7b_262k": "evo2-7b-262k",
              "evo2_7b": "evo2-7b-1m", "evo2_20b": "evo2-20b-1m", "evo2_40b_base": "evo2-40b-8k",
              "evo2_40b": "evo2-40b-1m"}


# ---------------------------------------------------------------------------------------------
# Layers


class EvoRMSNorm(nnx.Module):
    """StripedHyena's RMSNorm: ``scale * x / (||x||_2 * d**-0.5 + eps)`` in float32."""

    def __init__(self, dim: int, eps: float):
        self.eps = eps
        self.scale = nnx.Param(jnp.ones((dim,), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        h = x.astype(jnp.float32)
        rms = jnp.sqrt(jnp.sum(h * h, axis=-1, keepdims=True)) * (h.shape[-1] ** -0.5)
        return (self.scale[...] * (h / (rms + self.eps))).astype(x.dtype)


def _linear(din: int, dout: int, bias: bool, cfg: EvoConfig, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(din, dout, use_bias=bias, dtype=cfg.compute_dtype, param_dtype=jnp.float32,
                      kernel_init=nnx.initializers.normal(cfg.initializer_range),
                      bias_init=nnx.initializers.zeros_init(), rngs=rngs)


def fir(x: jax.Array, w: jax.Array, bias: jax.Array | None = None) -> jax.Array:
    """Depthwise causal cross-correlation in float32: ``y[t] = sum_j w[j] x[t - K + 1 + j] (+ b)``.

    ``x [B, L, C]``, ``w [K, C]`` (the last tap multiplies the current step)."""
    k, length = w.shape[0], x.shape[1]
    xp = jnp.pad(x.astype(jnp.float32), ((0, 0), (k - 1, 0), (0, 0)))
    y = sum(w[j] * xp[:, j:j + length] for j in range(k))
    return y if bias is None else y + bias


def fir_step(history: jax.Array, x: jax.Array, w: jax.Array, bias: jax.Array | None = None
             ) -> tuple[jax.Array, jax.Array]:
    """One step of :func:`fir`: ``history [N, K-1, C]`` (oldest first), ``x [N, C]`` ->
    (float32 ``y [N, C]``, the new history)."""
    window = jnp.concatenate([history.astype(jnp.float32), x[:, None].astype(jnp.float32)], axis=1)
    # readouts of a state that is also returned are contractions, not multiply-reduce fusions:
    # XLA:CPU (jaxlib 0.10) miscompiles a reduce fused with a sibling output of the same operands
    y = jnp.einsum("nkc,kc->nc", window, w, precision="highest")
    if bias is not None:
        y = y + bias
    return y, window[:, 1:].astype(history.dtype)


def fir_history(x: jax.Array, taps: int, dtype) -> jax.Array:
    """The last ``taps - 1`` rows of ``x [B, T, C]`` (zeros before the start): a FIR's state."""
    b, _, c = x.shape
    pad = jnp.concatenate([jnp.zeros((b, taps - 1, c), jnp.float32), x.astype(jnp.float32)], axis=1)
    return pad[:, pad.shape[1] - (taps - 1):].astype(dtype)


class HyenaFilter(nnx.Module):
    """The gated convolution of one Hyena block (``filter.*`` in the checkpoints)."""

    def __init__(self, cfg: EvoConfig, kind: str, rngs: nnx.Rngs):
        d, s = cfg.hidden_size, cfg.state_size
        self.kind = kind
        self.cfg = cfg
        key = rngs.params
        k = cfg.short_filter_length
        # stored [K, 3d]: tap j of every channel (checkpoints: [3d, 1, K])
        self.short_filter_weight = nnx.Param(jax.random.normal(key(), (k, 3 * d), jnp.float32) / math.sqrt(k))
        if cfg.short_filter_bias:
            self.short_filter_bias = nnx.Param(jnp.zeros((3 * d,), jnp.float32))
        if kind == "modal":
            r = jax.random.uniform(key(), (d, s), jnp.float32, 0.5, 0.99)
            theta = jax.random.uniform(key(), (d, s), jnp.float32, 0.0, math.pi)
            self.poles = nnx.Param(jnp.stack([r * jnp.cos(theta), r * jnp.sin(theta)], axis=-1))
            self.residues = nnx.Param(0.1 * jax.random.normal(key(), (d, s, 2), jnp.float32))
        elif kind == "hcl":
            self.log_poles = nnx.Param(jnp.log(jax.random.uniform(key(), (d, s), jnp.float32, 0.5, 0.99)))
            self.residues = nnx.Param(0.1 * jax.random.normal(key(), (d, s), jnp.float32))
        else:
            groups = cfg.hcs_filter_groups if kind == "hcs" else cfg.hcm_filter_groups
            taps = cfg.hcs_filter_length if kind == "hcs" else cfg.hcm_filter_length
            decay = jnp.exp(-jnp.arange(taps, dtype=jnp.float32) / max(taps / 4, 1.0))
            self.h = nnx.Param(0.3 * jax.random.normal(key(), (groups, taps), jnp.float32) * decay)
        if kind != "hcs":
            self.D = nnx.Param(jnp.ones((d,), jnp.float32))

    # -- the filters ---------------------------------------------------------------------------

    @property
    def taps(self) -> int:
        """Taps of an explicit filter (``hcs``/``hcm``)."""
        return self.h.shape[1]

    def _explicit(self) -> jax.Array:
        """The explicit filter per channel, float32 ``[taps, d]`` in checkpoint tap order."""
        h = self.h[...]
        per = self.cfg.hidden_size // h.shape[0]
        return jnp.repeat(h, per, axis=0).T  # channel c uses row c // per

    def is_convolution(self) -> bool:
        """True when the filter is a causal convolution over the whole input (FFT), False for a
        cross-correlation FIR (``hcs`` and explicit filters shorter than 128 taps)."""
        return self.kind in ("modal", "hcl") or self.taps >= FFT_FIR_MIN

    def fir_weights(self) -> jax.Array:
        """Cross-correlation weights ``[taps, d]`` (last tap on the current step) of an explicit filter."""
        w = self._explicit()
        return w[::-1] if self.taps >= FFT_FIR_MIN else w

    def long_filter(self, length: int) -> jax.Array:
        """The causal convolution filter ``k [length, d]`` (``k[0]`` multiplies the current step)."""
        t = jnp.arange(length, dtype=jnp.float32)[:, None, None]
        if self.kind == "modal":
            p, r = self.poles[...], self.residues[...]
            log_r = 0.5 * jnp.log(p[..., 0] ** 2 + p[..., 1] ** 2)
            theta = jnp.arctan2(p[..., 1], p[..., 0])
            mag = jnp.exp(t * log_r)
            return jnp.sum(mag * (r[..., 0] * jnp.cos(t * theta) - r[..., 1] * jnp.sin(t * theta)), axis=-1)
        if self.kind == "hcl":
            return jnp.sum(self.residues[...] * jnp.exp(t * self.log_poles[...]), axis=-1)
        w = self._explicit()[:length]
        return jnp.pad(w, ((0, length - w.shape[0]), (0, 0)))

    # -- parallel ------------------------------------------------------------------------------

    def split(self, z: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """``x2, x1, v`` from the filtered projections ``[..., 3d]``."""
        cfg = self.cfg
        d = cfg.hidden_size
        if cfg.split == "column":
            zz = z.reshape(*z.shape[:-1], cfg.num_attention_heads, 3, cfg.head_dim)
            x2, x1, v = (zz[..., i, :].reshape(*z.shape[:-1], d) for i in range(3))
        elif cfg.split == "interleave":
            x2, x1, v = z[..., 0::3], z[..., 1::3], z[..., 2::3]
        else:
            x2, x1, v = z[..., :d], z[..., d:2 * d], z[..., 2 * d:]
        if cfg.hyena_flip_x1x2:
            x1, x2 = x2, x1
        return x2, x1, v

    def _bias(self):
        return self.short_filter_bias[...] if self.cfg.short_filter_bias else None

    def __call__(self, z: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Projections ``z [B, L, 3d]`` -> (float32 ``y [B, L, d]``, float32 ``w = x1 v``)."""
        zf = fir(z, self.short_filter_weight[...], self._bias())
        x2, x1, v = self.split(zf)
        w = x1 * v
        length = w.shape[1]
        if self.kind == "hcs" or not self.is_convolution():
            y = fir(w, self.fir_weights())
            if self.kind != "hcs":
                y = y + w * self.D[...]
        else:
            y = fftconv(w, self.long_filter(length), self.D[...], out_dtype=jnp.float32)
        return y * x2, w

    # -- recurrent -----------------------------------------------------------------------------

    def init_state(self, n: int, dtype) -> dict:
        cfg = self.cfg
        d, s = cfg.hidden_size, cfg.state_size
        st = {"fir": jnp.zeros((n, cfg.short_filter_length - 1, 3 * d), dtype)}
        if self.kind == "modal":
            st["re"] = jnp.zeros((n, d, s), jnp.float32)
            st["im"] = jnp.zeros((n, d, s), jnp.float32)
        elif self.kind == "hcl":
            st["s"] = jnp.zeros((n, d, s), jnp.float32)
        else:
            st["hist"] = jnp.zeros((n, self.taps - 1, d), jnp.float32)
        return st

    def prefix_state(self, z: jax.Array, w: jax.Array, dtype) -> dict:
        """The recurrent state after a prefix: projections ``z [B, T, 3d]``, gated input ``w``."""
        cfg = self.cfg
        st = {"fir": fir_history(z, cfg.short_filter_length, dtype)}
        t = w.shape[1]
        # n = T - 1 - t: the power of the pole that input t carries at the end of the prefix
        n = (t - 1 - jnp.arange(t, dtype=jnp.float32))[:, None, None]
        w32 = w.astype(jnp.float32)
        if self.kind == "modal":
            p = self.poles[...]
            log_r = 0.5 * jnp.log(p[..., 0] ** 2 + p[..., 1] ** 2)
            theta = jnp.arctan2(p[..., 1], p[..., 0])
            mag = jnp.exp(n * log_r)
            st["re"] = jnp.einsum("btd,tds->bds", w32, mag * jnp.cos(n * theta), precision="highest")
            st["im"] = jnp.einsum("btd,tds->bds", w32, mag * jnp.sin(n * theta), precision="highest")
        elif self.kind == "hcl":
            st["s"] = jnp.einsum("btd,tds->bds", w32, jnp.exp(n * self.log_poles[...]), precision="highest")
        else:
            st["hist"] = fir_history(w32, self.taps, jnp.float32)
        return st

    def step(self, st: dict, z: jax.Array) -> tuple[jax.Array, dict]:
        """One token per row: projections ``z [N, 3d]`` -> (float32 ``y [N, d]``, new state)."""
        zf, fir_state = fir_step(st["fir"], z, self.short_filter_weight[...], self._bias())
        x2, x1, v = self.split(zf)
        w = x1 * v
        new = {"fir": fir_state}
        if self.kind == "modal":
            p, r = self.poles[...], self.residues[...]
            re = p[..., 0] * st["re"] - p[..., 1] * st["im"] + w[:, :, None]
            im = p[..., 0] * st["im"] + p[..., 1] * st["re"]
            y = (jnp.einsum("nds,ds->nd", re, r[..., 0], precision="highest")
                 - jnp.einsum("nds,ds->nd", im, r[..., 1], precision="highest") + w * self.D[...])
            new.update(re=re, im=im)
        elif self.kind == "hcl":
            s = jnp.exp(self.log_poles[...]) * st["s"] + w[:, :, None]
            y = jnp.einsum("nds,ds->nd", s, self.residues[...], precision="highest") + w * self.D[...]
            new["s"] = s
        else:
            y, hist = fir_step(st["hist"], w, self.fir_weights())
            if self.kind != "hcs":
                y = y + w * self.D[...]
            new["hist"] = hist
        return y * x2, new


class EvoMLP(nnx.Module):
    """``l3(act(l1 x) * l2 x)`` without biases."""

    def __init__(self, cfg: EvoConfig, layer: int, rngs: nnx.Rngs):
        d, inner = cfg.hidden_size, cfg.inner_mlp_size
        self.l1 = _linear(d, inner, False, cfg, rngs)
        self.l2 = _linear(d, inner, False, cfg, rngs)
        self.l3 = _linear(inner, d, False, cfg, rngs)
        identity = cfg.evo2_style_activations and layer > 0
        self.act = "identity" if identity else cfg.mlp_activation

    def __call__(self, x: jax.Array) -> jax.Array:
        a = self.l1(x)
        if self.act == "gelu":
            a = gelu_erf(a)
        elif self.act == "silu":
            a = jax.nn.silu(a)
        return self.l3(a * self.l2(x))


class EvoAttention(nnx.Module):
    """Multi-head causal attention with rotary embeddings (``inner_mha_cls`` in the checkpoints)."""

    def __init__(self, cfg: EvoConfig, rngs: nnx.Rngs):
        d = cfg.hidden_size
        self.cfg = cfg
        self.Wqkv = _linear(d, 3 * d, cfg.qkv_proj_bias, cfg, rngs)
        self.out_proj = _linear(d, d, cfg.mha_out_proj_bias, cfg, rngs)

    def _qkv(self, x: jax.Array, positions: jax.Array):
        cfg = self.cfg
        qkv = self.Wqkv(x).reshape(*x.shape[:-1], 3, cfg.num_attention_heads, cfg.head_dim)
        q, k, v = qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]
        pos = positions.astype(jnp.float32) / jnp.float32(cfg.rotary_emb_scaling_factor)
        freqs = pos[..., None] * jnp.asarray(cfg.inv_freq(), jnp.float32)
        emb = jnp.concatenate([freqs, freqs], axis=-1)
        cos, sin = jnp.cos(emb), jnp.sin(emb)
        # x [B, L, d] (or rows [C, M, d]): q/k [B, L, H, D], cos/sin [B, L, D]
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        b, t, _ = x.shape
        positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        q, k, v = self._qkv(x, positions)
        o = attention(q, k, v, causal=True)
        return self.out_proj(o.reshape(b, t, -1)), k, v

    def step(self, x: jax.Array, st: dict, pos: jax.Array) -> tuple[jax.Array, dict]:
        """``x [B, d]`` at positions ``pos [B]`` with a KV cache ``{"k", "v": [B, M, H, D]}``."""
        q, k, v = self._qkv(x[:, None], pos[:, None])
        kc = cache_write(st["k"], k, pos)
        vc = cache_write(st["v"], v, pos)
        o = attention(q, kc, vc, key_mask=cache_key_mask(pos, kc.shape[1]), implementation="xla")
        return self.out_proj(o.reshape(x.shape[0], -1)), {"k": kc, "v": vc}

    def step_shared(self, x: jax.Array, shared: dict, st: dict, pos: jax.Array, offset: int
                    ) -> tuple[jax.Array, dict]:
        """Rows ``[C, M]``: ``x [C, M, d]``, suffix slot ``pos [C, M]`` after ``offset`` prefix tokens."""
        q, k, v = self._qkv(x, pos + offset)
        ks = suffix_write(st["k"], k, pos)
        vs = suffix_write(st["v"], v, pos)
        o = prefix_shared_attention(q, shared["k"], shared["v"], ks, vs, suffix_valid(pos, ks.shape[2]))
        return self.out_proj(o.reshape(*x.shape[:2], -1)), {"k": ks, "v": vs}


class EvoBlock(nnx.Module):
    """One block: the mixer (attention or Hyena) and the gated MLP, both pre-norm residual."""

    def __init__(self, cfg: EvoConfig, layer: int, rngs: nnx.Rngs):
        d = cfg.hidden_size
        self.kind = cfg.layers[layer]
        self.compute = cfg.dtype
        self.pre_norm = EvoRMSNorm(d, cfg.eps)
        self.post_norm = EvoRMSNorm(d, cfg.eps)
        if self.kind == "attn":
            self.inner_mha_cls = EvoAttention(cfg, rngs)
        else:
            self.projections = _linear(d, 3 * d, cfg.proj_bias, cfg, rngs)
            self.filter = HyenaFilter(cfg, self.kind, rngs)
            self.out_filter_dense = _linear(d, d, cfg.hyena_out_proj_bias, cfg, rngs)
        self.mlp = EvoMLP(cfg, layer, rngs)

    def _mlp(self, u: jax.Array) -> jax.Array:
        return u + self.mlp(self.post_norm(u).astype(jnp.dtype(self.compute))).astype(jnp.float32)

    def __call__(self, u: jax.Array) -> tuple[jax.Array, tuple]:
        """float32 residual ``u [B, L, d]`` -> (``u``, aux for decoding: (k, v) or (z, w))."""
        x = self.pre_norm(u).astype(jnp.dtype(self.compute))
        if self.kind == "attn":
            a, k, v = self.inner_mha_cls(x)
            return self._mlp(u + a.astype(jnp.float32)), (k, v)
        z = self.projections(x)
        y, w = self.filter(z)
        u = u + self.out_filter_dense(y.astype(z.dtype)).astype(jnp.float32)
        return self._mlp(u), (z, w)

    def mix_step(self, u: jax.Array, st: dict, shared: dict, attend: Callable) -> tuple[jax.Array, dict]:
        """One token per row ``u [N, d]``; ``attend(attn_module, x, st, shared)`` runs the attention
        step (``shared``: this block's prefix keys/values in shared-prefix decoding)."""
        x = self.pre_norm(u).astype(jnp.dtype(self.compute))
        if self.kind == "attn":
            a, st = attend(self.inner_mha_cls, x, st, shared)
            return self._mlp(u + a.astype(jnp.float32)), st
        z = self.projections(x)
        y, st = self.filter.step(st, z)
        u = u + self.out_filter_dense(y.astype(z.dtype)).astype(jnp.float32)
        return self._mlp(u), st


class Evo(nnx.Module):
    """Evo 1 / Evo 2 causal LM: ``(input_ids [B, L], attention_mask ignored) -> logits [B, L, V]``."""

    def __init__(self, cfg: EvoConfig, rngs: nnx.Rngs):
        self.config = cfg
        self.embedding_layer = nnx.Embed(cfg.vocab_size, cfg.hidden_size, dtype=jnp.float32,
                                         param_dtype=jnp.float32,
                                         embedding_init=nnx.initializers.normal(cfg.initializer_range),
                                         rngs=rngs)
        self.blocks = nnx.List([EvoBlock(cfg, i, rngs) for i in range(cfg.num_layers)])
        self.norm = EvoRMSNorm(cfg.hidden_size, cfg.eps)

    def _check_length(self, length: int) -> None:
        if length > self.config.max_seqlen:
            raise SequenceError(f"input of {length} tokens exceeds this Evo model's context of "
                                f"{self.config.max_seqlen} tokens; split the sequence into shorter windows")

    def _head(self, u: jax.Array) -> jax.Array:
        h = self.norm(u).astype(self.config.compute_dtype)
        return lm_logits(h, self.embedding_layer.embedding[...], transposed=True)

    def _trunk(self, input_ids: jax.Array) -> tuple[jax.Array, list]:
        """float32 residual stream after the last block, and each block's decoding aux."""
        self._check_length(input_ids.shape[1])
        u = self.embedding_layer(input_ids.astype(jnp.int32)).astype(jnp.float32)
        aux = []
        for block in self.blocks:
            u, a = block(u)
            aux.append(a)
        return u, aux

    def _forward(self, input_ids: jax.Array) -> tuple[jax.Array, list]:
        u, aux = self._trunk(input_ids)
        return self._head(u), aux

    @float32_matmuls
    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
        """float32 logits ``[B, L, V]``. ``attention_mask`` is accepted and ignored: the model is
        causal and right pads never reach an earlier position, as in the reference."""
        return self._forward(input_ids)[0]

    @float32_matmuls
    def hidden_states(self, input_ids: jax.Array) -> jax.Array:
        """Output of the final norm ``[B, L, d]`` (float32), before the tied unembedding."""
        return self.norm(self._trunk(input_ids)[0])

    # -- incremental decoding ------------------------------------------------------------------

    def _kv(self, n: int, length: int) -> dict:
        cfg = self.config
        shape = (n, length, cfg.num_attention_heads, cfg.head_dim)
        return {"k": jnp.zeros(shape, cfg.compute_dtype), "v": jnp.zeros(shape, cfg.compute_dtype)}

    def init_cache(self, batch_size: int, max_len: int) -> dict:
        """An empty decoding cache: ``{"pos": int32 [B], "layers": per block a dict}`` (KV cache
        ``[B, max_len, H, D]`` for attention, fixed-size filter states for Hyena blocks)."""
        if not 1 <= max_len <= self.config.max_seqlen:
            raise ConfigError(f"decoding max_len {max_len} must be in [1, {self.config.max_seqlen}]")
        cdt = self.config.compute_dtype
        layers = tuple(self._kv(batch_size, max_len) if b.kind == "attn" else b.filter.init_state(batch_size, cdt)
                       for b in self.blocks)
        return {"pos": jnp.zeros((batch_size,), jnp.int32), "layers": layers}

    def _states(self, aux: list, kv: Callable[[jax.Array, jax.Array], dict]) -> tuple:
        cdt = self.config.compute_dtype
        return tuple(kv(*a) if b.kind == "attn" else b.filter.prefix_state(a[0], a[1], cdt)
                     for b, a in zip(self.blocks, aux, strict=True))

    @float32_matmuls
    def prefill(self, input_ids: jax.Array, max_len: int) -> tuple[jax.Array, dict]:
        """Prefixes int ``[B, T]`` (no padding) -> (float32 logits ``[B, T, V]``, cache at ``T``)."""
        b, t = input_ids.shape
        if t > max_len:
            raise ConfigError(f"prefix of {t} tokens does not fit a decoding cache of {max_len}")
        if t == 0:
            return jnp.zeros((b, 0, self.config.vocab_size), jnp.float32), self.init_cache(b, max_len)
        logits, aux = self._forward(input_ids)
        pad = ((0, 0), (0, max_len - t), (0, 0), (0, 0))
        layers = self._states(aux, lambda k, v: {"k": jnp.pad(k, pad), "v": jnp.pad(v, pad)})
        return logits, {"pos": jnp.full((b,), t, jnp.int32), "layers": layers}

    def _step(self, token_ids: jax.Array, layers: tuple, shared: tuple, attend: Callable) -> tuple[jax.Array, tuple]:
        u = self.embedding_layer(token_ids.astype(jnp.int32)).astype(jnp.float32)
        new = []
        for block, st, sh in zip(self.blocks, layers, shared, strict=True):
            u, st = block.mix_step(u, st, sh, attend)
            new.append(st)
        return self._head(u), tuple(new)

    @float32_matmuls
    def decode_step(self, cache: dict, token_ids: jax.Array) -> tuple[jax.Array, dict]:
        """One token per row (int ``[B]``): (float32 logits ``[B, V]``, advanced cache)."""
        pos = cache["pos"]

        def attend(mha, x, st, shared):
            return mha.step(x, st, pos)

        layers = cache["layers"]
        logits, layers = self._step(token_ids, layers, (None,) * len(layers), attend)
        return logits, {"pos": pos + 1, "layers": layers}

    @float32_matmuls
    def prefix_state(self, input_ids: jax.Array, suffix_len: int) -> tuple[jax.Array, dict, dict]:
        """Shared-prefix decoding over prefixes int ``[C, T]``: (float32 logits ``[C, T, V]``, the
        prefixes' attention keys/values, row state: filter states and empty suffix KV caches)."""
        c, t = input_ids.shape
        s = max(int(suffix_len), 1)
        self._check_length(t + s)
        logits, aux = self._forward(input_ids)
        shared = tuple({"k": a[0], "v": a[1]} if b.kind == "attn" else {}
                       for b, a in zip(self.blocks, aux, strict=True))
        layers = self._states(aux, lambda k, v: self._kv(c, s))
        return logits, {"layers": shared}, {"pos": jnp.zeros((c,), jnp.int32), "layers": layers}

    @float32_matmuls
    def suffix_step(self, shared: dict, state: dict, token_ids: jax.Array) -> tuple[jax.Array, dict]:
        """One token per row (int ``[C, M]``) after the shared prefixes: (float32 logits
        ``[C, M, V]``, advanced row state)."""
        c, m = token_ids.shape
        pos = state["pos"]
        offset = next((sh["k"].shape[1] for sh in shared["layers"] if sh), 0)  # prefix tokens

        def flat(a):
            return a.reshape(c * m, *a.shape[2:])

        def unflat(a):
            return a.reshape(c, m, *a.shape[1:])

        def attend(mha, x, st, sh):
            a, st = mha.step_shared(x.reshape(c, m, -1), sh, jax.tree.map(unflat, st), pos, offset)
            return a.reshape(c * m, -1), jax.tree.map(flat, st)

        logits, layers = self._step(flat(token_ids), jax.tree.map(flat, state["layers"]), shared["layers"], attend)
        return unflat(logits), {"pos": pos + 1, "layers": jax.tree.map(unflat, layers)}


# ---------------------------------------------------------------------------------------------
# Tokenizers, building


def evo1_tokenizer(cfg: EvoConfig | None = None, path: Path | None = None) -> CharTokenizer:
    """Evo 1's byte tokenizer: BOS/EOD 0 first, bytes of the bases, right padding with 1."""
    return CharTokenizer(name="byte-evo1", vocab_size=512, pad_id=PAD_ID, mask_id=None, padding_side="right",
                         special_ids=frozenset({BOS_ID, PAD_ID}), base_ids=BYTE_BASES, bos_id=BOS_ID)


def evo2_tokenizer(cfg: EvoConfig | None = None, path: Path | None = None) -> CharTokenizer:
    """Evo 2's byte tokenizer: bytes of the bases, no BOS, right padding with 1."""
    return CharTokenizer(name="byte-evo2", vocab_size=512, pad_id=PAD_ID, mask_id=None, padding_side="right",
                         special_ids=frozenset({BOS_ID, PAD_ID}), base_ids=BYTE_BASES)


def build(cfg: EvoConfig, rngs: nnx.Rngs) -> Evo:
    """A freshly initialised Evo model of ``cfg``."""
    return Evo(cfg, rngs)


def notes(cfg: EvoConfig) -> list[str]:
    """What ``glmjax models info`` should tell about this configuration."""
    out = []
    if cfg.fp8_input_projections:
        out.append("the published model runs its Hyena input projections in FP8 (Transformer Engine); "
                   f"glmjax computes them in {cfg.dtype} (same function, higher precision), so scores differ "
                   "from the FP8 reference at the level of FP8 rounding")
    return out


# ---------------------------------------------------------------------------------------------
# Checkpoints


def detect_evo1(cfg: dict) -> bool:
    """True for a StripedHyena (Evo 1) ``config.json``."""
    if cfg.get("model_type") == "stripedhyena":
        return True
    return "hyena_layer_idxs" in cfg and "attn_layer_idxs" in cfg and "hcl_layer_idxs" not in cfg


def detect_evo2(cfg: dict) -> bool:
    """True for a vortex / evo2 model config (the yaml's keys, also as ``config.json``)."""
    return "hcl_layer_idxs" in cfg and "attn_layer_idxs" in cfg


def _linear_in(out: dict, src: TensorSource, key: str, path: tuple, din: int, dout: int, bias: bool) -> None:
    out[(*path, "kernel")] = src.take(f"{key}.weight", (dout, din)).T
    if bias:
        out[(*path, "bias")] = src.take(f"{key}.bias", (dout,))


def convert(src: TensorSource, cfg: EvoConfig) -> dict[tuple, np.ndarray]:
    """Published Evo tensors (Evo 1: HF ``backbone.*`` names; Evo 2: the vortex state dict) ->
    flat NNX parameter paths. Evo 2's ``Wqkv`` is permuted from ``(h, 3, hd)`` to ``[Q; K; V]``."""
    d, s, hd, heads = cfg.hidden_size, cfg.state_size, cfg.head_dim, cfg.num_attention_heads
    p = "backbone." if "backbone.embedding_layer.weight" in src else ""
    out: dict[tuple, np.ndarray] = {("embedding_layer", "embedding"): src.take(f"{p}embedding_layer.weight",
                                                                               (cfg.vocab_size, d))}
    out[("norm", "scale")] = src.take(f"{p}norm.scale", (d,))
    # Transformer Engine metadata, rotary buffers (see stored_inv_freq), cached time vectors
    ignore = [r"_extra_state$", r"\.rotary_emb\.inv_freq$", r"\.filter\.t$"]
    for key in (f"{p}unembed.weight", "unembed.weight"):
        if key in src:  # tied: a stored copy must be the embedding itself
            if not np.array_equal(src.take(key, (cfg.vocab_size, d)), out[("embedding_layer", "embedding")]):
                raise CheckpointError(f"{src.origin}: {key} differs from the embedding; Evo ties them")
    for i, kind in enumerate(cfg.layers):
        bp, path = f"{p}blocks.{i}.", ("blocks", i)
        out[(*path, "pre_norm", "scale")] = src.take(f"{bp}pre_norm.scale", (d,))
        out[(*path, "post_norm", "scale")] = src.take(f"{bp}post_norm.scale", (d,))
        for name, din, dout in (("l1", d, cfg.inner_mlp_size), ("l2", d, cfg.inner_mlp_size),
                                ("l3", cfg.inner_mlp_size, d)):
            _linear_in(out, src, f"{bp}mlp.{name}", (*path, "mlp", name), din, dout, False)
        if kind == "attn":
            mp, mk = (*path, "inner_mha_cls"), f"{bp}inner_mha_cls"
            w = src.take(f"{mk}.Wqkv.weight", (3 * d, d))
            b = src.take(f"{mk}.Wqkv.bias", (3 * d,)) if cfg.qkv_proj_bias else None
            if cfg.wqkv_per_head:  # rows (h, three, hd) -> (three, h, hd)
                w = w.reshape(heads, 3, hd, d).transpose(1, 0, 2, 3).reshape(3 * d, d)
                if b is not None:
                    b = b.reshape(heads, 3, hd).transpose(1, 0, 2).reshape(3 * d)
            out[(*mp, "Wqkv", "kernel")] = w.T
            if b is not None:
                out[(*mp, "Wqkv", "bias")] = b
            _linear_in(out, src, f"{mk}.out_proj", (*mp, "out_proj"), d, d, cfg.mha_out_proj_bias)
            continue
        _linear_in(out, src, f"{bp}projections", (*path, "projections"), d, 3 * d, cfg.proj_bias)
        _linear_in(out, src, f"{bp}out_filter_dense", (*path, "out_filter_dense"), d, d, cfg.hyena_out_proj_bias)
        fp, fk = (*path, "filter"), f"{bp}filter"
        k = cfg.short_filter_length
        out[(*fp, "short_filter_weight")] = src.take(f"{fk}.short_filter_weight", (3 * d, 1, k))[:, 0, :].T
        if cfg.short_filter_bias:
            out[(*fp, "short_filter_bias")] = src.take(f"{fk}.short_filter_bias", (3 * d,))
        if kind != "hcs":
            out[(*fp, "D")] = src.take(f"{fk}.D", (d,))
        if kind == "modal":
            out[(*fp, "poles")] = src.take(f"{fk}.poles", (d, s, 1, 2))[:, :, 0]
            out[(*fp, "residues")] = src.take(f"{fk}.residues", (d, s, 1, 2))[:, :, 0]
        elif kind == "hcl":
            out[(*fp, "log_poles")] = src.take(f"{fk}.log_poles", (d, s, 1))[..., 0]
            out[(*fp, "residues")] = src.take(f"{fk}.residues", (d, s))
        else:
            groups = cfg.hcs_filter_groups if kind == "hcs" else cfg.hcm_filter_groups
            taps = cfg.hcs_filter_length if kind == "hcs" else cfg.hcm_filter_length
            out[(*fp, "h")] = src.take(f"{fk}.h", (groups, 1, taps))[:, 0]
    src.check_unused(ignore=ignore)
    return out


def stored_inv_freq(src: TensorSource, cfg: EvoConfig) -> EvoConfig:
    """``cfg`` with the rotary ``inv_freq`` the checkpoint stores (vortex uses the stored buffer,
    Evo 2), when it differs from the formula; every attention block must store the same values."""
    p = "backbone." if "backbone.embedding_layer.weight" in src else ""
    found = None
    for i, kind in enumerate(cfg.layers):
        key = f"{p}blocks.{i}.inner_mha_cls.rotary_emb.inv_freq"
        if kind == "attn" and key in src:
            got = np.asarray(src.tensors[key], np.float32).reshape(-1)
            if got.shape[0] != cfg.head_dim // 2:
                raise CheckpointError(f"{src.origin}: {key} has {got.shape[0]} values, expected {cfg.head_dim // 2}")
            if found is not None and not np.array_equal(found, got):
                raise CheckpointError(f"{src.origin}: the attention blocks store different rotary inv_freq buffers")
            found = got
    if found is None or np.array_equal(found, cfg.formula_inv_freq()):
        return cfg
    return dataclasses.replace(cfg, rotary_inv_freq=tuple(float(x) for x in found))


def _weight_files(path: Path) -> tuple[str, list[Path]] | None:
    """The Evo 2 weights of a folder: ``("safetensors", files)`` or ``("torch", files)``."""
    st = sorted(path.glob("*.safetensors"))
    if st:
        return "safetensors", st
    pts = sorted(path.glob("*.pt"))
    if len(pts) == 1:
        return "torch", pts
    if len(pts) > 1:
        raise CheckpointError(f"{path} holds several .pt files ({', '.join(p.name for p in pts[:4])}); "
                              "keep one checkpoint per folder")
    parts = sorted(path.glob("*.pt.part*"), key=lambda p: (len(p.name), p.name))  # part2 before part10
    if parts:
        stems = {p.name.rsplit(".pt.part", 1)[0] for p in parts}
        if len(stems) > 1:
            raise CheckpointError(f"{path} holds .pt.part files of several checkpoints ({', '.join(sorted(stems))})")
        return "torch", parts
    return None


def _vortex_config(path: Path) -> dict | None:
    """The vortex config dict of a folder (``*.yml``/``*.yaml`` or ``config.json`` with vortex keys),
    else the preset named by a published weight file (``evo2_7b.pt`` ...), else None."""
    for f in sorted(path.glob("*.yml")) + sorted(path.glob("*.yaml")):
        import yaml

        try:
            d = yaml.safe_load(f.read_text())
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{f} is not a readable yaml file ({e})") from None
        if isinstance(d, dict) and detect_evo2(d):
            return d
    if (path / "config.json").exists():
        try:
            d = json.loads((path / "config.json").read_text())
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{path / 'config.json'} is not valid JSON ({e})") from None
        if isinstance(d, dict) and detect_evo2(d):
            return d
    return None


def _preset_for_files(path: Path) -> str | None:
    for f in list(path.glob("*.pt")) + list(path.glob("*.pt.part*")) + list(path.glob("*.safetensors")):
        stem = f.name.split(".pt")[0].split(".safetensors")[0]
        if stem in EVO2_FILES:
            return EVO2_FILES[stem]
    return None


def detect_dir_evo2(path: Path) -> bool:
    """An Evo 2 folder: a vortex config (yaml, or JSON with the yaml's keys) or a weight file named
    like a published Evo 2 checkpoint (``evo2_7b.pt`` ...)."""
    return _vortex_config(path) is not None or _preset_for_files(path) is not None


def config_dir_evo2(path: Path) -> Evo2Config:
    """The config of an Evo 2 folder without reading its weights."""
    d = _vortex_config(path)
    if d is not None:
        return Evo2Config.from_hf(d)
    preset = _preset_for_files(path)
    if preset is None:
        raise CheckpointError(f"{path}: no vortex model yaml (evo2/configs/evo2-*.yml) and no published Evo 2 "
                              "weight file name; put the model's yaml next to its weights")
    return Evo2Config.preset(preset)


def load_dir_evo2(path: Path, trust_pickle: bool = False) -> tuple[Evo2Config, dict]:
    """An Evo 2 folder in its published layout: the vortex yaml (or the published weight file's name)
    and the state dict (``.pt`` through ``weights_only``, ``.pt.part*`` pieces, or safetensors)."""
    cfg = config_dir_evo2(path)
    found = _weight_files(path)
    if found is None:
        raise CheckpointError(f"{path}: no Evo 2 weights (*.safetensors, *.pt or *.pt.part*)")
    kind, files = found
    if kind == "safetensors":
        tensors: dict[str, np.ndarray] = {}
        for f in files:
            tensors.update(read_safetensors(f))
    else:
        tensors = read_torch_state(files)
    src = TensorSource(tensors, str(files[0]))
    return stored_inv_freq(src, cfg), convert(src, cfg)


_LORA = ("projections", "out_filter_dense", "Wqkv", "out_proj", "l1", "l2", "l3")

EVO1_SPEC = FamilySpec(
    attention_mask=False,
    name="evo1",
    objective="causal",
    config_cls=Evo1Config,
    build=build,
    tokenizer=evo1_tokenizer,
    detect=detect_evo1,
    convert_hf=convert,
    description="Evo 1 (StripedHyena): byte-level causal DNA LM, modal long convolutions + rotary attention",
    architecture_class="long-convolution",
    lora_targets=_LORA,
    notes=notes,
)

EVO2_SPEC = FamilySpec(
    attention_mask=False,
    name="evo2",
    objective="causal",
    config_cls=Evo2Config,
    build=build,
    tokenizer=evo2_tokenizer,
    detect=detect_evo2,
    convert_hf=convert,
    description="Evo 2 (StripedHyena 2): byte-level causal DNA LM, short/medium/long Hyena + rotary attention",
    architecture_class="long-convolution",
    lora_targets=_LORA,
    detect_dir=detect_dir_evo2,
    load_dir=load_dir_evo2,
    config_dir=config_dir_evo2,
    notes=notes,
)

__all__ = ["EVO1_SPEC", "EVO2_SPEC", "PRESETS", "Evo", "Evo1Config", "Evo2Config", "EvoConfig"]
