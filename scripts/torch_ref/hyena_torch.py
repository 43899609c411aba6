"""HyenaDNA forward in plain PyTorch: the peer baseline of the HyenaDNA benchmark.

HyenaDNA exists only as remote code on the model hub (LongSafari/hyenadna-*-seqlen-hf), so this
module re-states that forward in eager PyTorch with the same module tree, so that
``state_dict()`` keys are the published ones (``hyena.backbone.layers.{i}.mixer.filter_fn...``,
``lm_head.weight``) and a published ``model.safetensors`` loads as is:

* channels-first Hyena operator: ``in_proj`` -> depthwise ``Conv1d(k=3, padding=2)`` truncated to
  the first ``L`` outputs -> ``x0, x1, v``; ``v = v * x1``; FFT long convolution in float32 with
  ``n = 2L`` and the skip ``D``; ``out_proj((v * x0)^T)``;
* implicit filter ``Linear sin Linear sin Linear sin Linear(no bias)`` with one shared sine module
  (so ``freq`` appears under ``implicit_filter.1/.3/.5`` and is stored once), exponential window;
* pre-norm blocks with a float32 residual, tanh-GELU MLP, ``ln_f``, untied ``lm_head``.

In reduced precision (``model.to(torch.bfloat16)``) it behaves like the hub code: weights and
activations in bf16, the residual and the FFT in float32.

Usable without glmjax: ``python hyena_torch.py <model dir> ACGT...`` prints the logits' shape.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


class HyenaTorchConfig:
    """The fields of a HyenaDNA ``config.json`` that shape the network."""

    def __init__(self, d: dict):
        self.vocab_size = int(d.get("vocab_size", 12))
        self.d_model = int(d.get("d_model", 256))
        self.n_layer = int(d.get("n_layer", 12))
        self.d_inner = int(d.get("d_inner") or 4 * self.d_model)
        self.max_seq_len = int(d.get("max_seq_len", 1024))
        self.emb_dim = int(d.get("emb_dim", 3))
        self.filter_order = int(d.get("filter_order", 64))
        self.num_inner_mlps = int(d.get("num_inner_mlps", 2))
        self.short_filter_order = int(d.get("short_filter_order", 3))
        self.activation_freq = float(d.get("activation_freq", 1))
        self.layer_norm_epsilon = float(d.get("layer_norm_epsilon", 1e-5))
        multiple = int(d.get("pad_vocab_size_multiple", 8))
        self.padded_vocab_size = -(-self.vocab_size // multiple) * multiple


def fft_long_conv(u: torch.Tensor, k: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    """Causal depthwise convolution of ``u [B, C, L]`` with ``k [C, L]`` plus ``skip [C] * u``,
    computed in float32 through a zero-padded FFT of size ``2L``; returns ``u.dtype``."""
    length = u.shape[-1]
    n = 2 * length
    uf = torch.fft.rfft(u.float(), n=n)
    kf = torch.fft.rfft(k.float(), n=n)
    y = torch.fft.irfft(uf * kf, n=n)[..., :length]
    return (y + u.float() * skip.float()[:, None]).to(u.dtype)


class Sine(nn.Module):
    """``sin(freq * x)`` with a learnable frequency per filter channel."""

    def __init__(self, cfg: HyenaTorchConfig):
        super().__init__()
        self.freq = nn.Parameter(cfg.activation_freq * torch.ones(1, cfg.filter_order))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.freq * x)


class PositionalFeatures(nn.Module):
    """``z [1, M, emb_dim]`` (time, cos and sin bands) and ``t [1, M, 1]`` for ``M = max_seq_len``."""

    def __init__(self, cfg: HyenaTorchConfig):
        super().__init__()
        m = cfg.max_seq_len
        bands = (cfg.emb_dim - 1) // 2
        t = torch.linspace(0, 1, m)[None, :, None]
        w = 2 * math.pi * torch.linspace(0, m - 1, m)[None, :, None] / m
        f = torch.linspace(1e-4, bands - 1, bands)[None, None]
        self.register_buffer("z", torch.cat([t, torch.cos(-f * w), torch.sin(-f * w)], dim=-1))
        self.register_buffer("t", t)


class Modulation(nn.Module):
    """Exponential window ``k * (exp(-t |deltas|) + 0.05)``."""

    def __init__(self, d_model: int):
        super().__init__()
        deltas = torch.linspace(math.log(1e-2) / 1.5, math.log(1e-2) / 0.3, d_model)[None, None]
        self.register_buffer("deltas", deltas)

    def forward(self, t: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return k * (torch.exp(-t * self.deltas.abs()) + 0.05)


class ImplicitFilter(nn.Module):
    """The long filter ``k [L, d]`` and the skip ``bias [d]`` of one Hyena operator."""

    def __init__(self, cfg: HyenaTorchConfig):
        super().__init__()
        self.bias = nn.Parameter(torch.randn(cfg.d_model))
        self.pos_emb = PositionalFeatures(cfg)
        act = Sine(cfg)  # one module appended after every hidden Linear: a single shared freq
        layers: list[nn.Module] = [nn.Linear(cfg.emb_dim, cfg.filter_order), act]
        for _ in range(cfg.num_inner_mlps):
            layers += [nn.Linear(cfg.filter_order, cfg.filter_order), act]
        layers.append(nn.Linear(cfg.filter_order, cfg.d_model, bias=False))
        self.implicit_filter = nn.Sequential(*layers)
        self.modulation = Modulation(cfg.d_model)

    def forward(self, length: int) -> torch.Tensor:
        z = self.pos_emb.z[:, :length]
        t = self.pos_emb.t[:, :length]
        k = self.implicit_filter(z.to(self.implicit_filter[0].weight.dtype))
        return self.modulation(t, k)[0]


class HyenaMixer(nn.Module):
    """Order-2 Hyena operator on ``[B, L, d]`` inputs."""

    def __init__(self, cfg: HyenaTorchConfig):
        super().__init__()
        d = cfg.d_model
        self.d_model = d
        self.in_proj = nn.Linear(d, 3 * d)
        self.out_proj = nn.Linear(d, d)
        self.short_filter = nn.Conv1d(3 * d, 3 * d, cfg.short_filter_order, padding=2, groups=3 * d)
        self.filter_fn = ImplicitFilter(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        length = x.shape[1]
        u = self.in_proj(x).transpose(1, 2)
        uc = self.short_filter(u)[..., :length]
        x0, x1, v = uc.split(self.d_model, dim=1)
        k = self.filter_fn(length).transpose(0, 1)
        v = fft_long_conv(v * x1, k, self.filter_fn.bias)
        return self.out_proj((v * x0).transpose(1, 2))


class HyenaMlp(nn.Module):
    """``fc2(gelu_tanh(fc1(x)))``."""

    def __init__(self, cfg: HyenaTorchConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.d_model, cfg.d_inner)
        self.fc2 = nn.Linear(cfg.d_inner, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class HyenaBlock(nn.Module):
    """Pre-norm block; the residual is carried in float32."""

    def __init__(self, cfg: HyenaTorchConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.d_model)  # default eps, whatever the config says
        self.mixer = HyenaMixer(cfg)
        self.norm2 = nn.LayerNorm(cfg.d_model)
        self.mlp = HyenaMlp(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = x.float()
        r = self.mixer(self.norm1(r.to(self.norm1.weight.dtype))) + r
        return self.mlp(self.norm2(r.to(self.norm2.weight.dtype))) + r


class Embeddings(nn.Module):
    """Token embeddings (rows padded to a multiple of ``pad_vocab_size_multiple``)."""

    def __init__(self, cfg: HyenaTorchConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.padded_vocab_size, cfg.d_model)


class Backbone(nn.Module):
    """Embeddings, blocks and ``ln_f``: ``input_ids [B, L] -> hidden [B, L, d]``."""

    def __init__(self, cfg: HyenaTorchConfig):
        super().__init__()
        self.embeddings = Embeddings(cfg)
        self.layers = nn.ModuleList([HyenaBlock(cfg) for _ in range(cfg.n_layer)])
        self.ln_f = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_epsilon)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.embeddings.word_embeddings(input_ids)
        for layer in self.layers:
            x = layer(x)
        return self.ln_f(x.to(self.ln_f.weight.dtype))


class _Wrapper(nn.Module):
    """Holds the backbone under the published ``hyena.`` prefix."""

    def __init__(self, cfg: HyenaTorchConfig):
        super().__init__()
        self.backbone = Backbone(cfg)


class HyenaTorchLM(nn.Module):
    """``model(input_ids [B, L]) -> logits [B, L, V_pad]`` (the parameter dtype)."""

    def __init__(self, cfg: HyenaTorchConfig):
        super().__init__()
        self.config = cfg
        self.hyena = _Wrapper(cfg)
        self.lm_head = nn.Linear(cfg.d_model, cfg.padded_vocab_size, bias=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if input_ids.shape[1] > self.config.max_seq_len:
            raise ValueError(f"input of {input_ids.shape[1]} tokens exceeds max_seq_len {self.config.max_seq_len}")
        return self.lm_head(self.hyena.backbone(input_ids))


def load_state(model: HyenaTorchLM, tensors: dict[str, torch.Tensor]) -> None:
    """Load published tensors; only the de-duplicated ``freq`` aliases may be absent."""
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    missing = [k for k in missing if not k.endswith(".freq")]
    if missing or unexpected:
        raise ValueError(f"checkpoint does not match the HyenaDNA layout: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")


def load(path: str | Path) -> HyenaTorchLM:
    """A HyenaDNA folder (``config.json`` + ``model.safetensors``) as an fp32 eval-mode model."""
    from safetensors.torch import load_file

    path = Path(path)
    cfg = HyenaTorchConfig(json.loads((path / "config.json").read_text()))
    model = HyenaTorchLM(cfg)
    load_state(model, load_file(str(path / "model.safetensors")))
    return model.eval()


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: hyena_torch.py <model dir> <DNA sequence>")
    vocab = {"A": 7, "C": 8, "G": 9, "T": 10, "N": 11}
    ids = torch.tensor([[vocab.get(c, 6) for c in sys.argv[2]] + [1]])
    with torch.inference_mode():
        print(tuple(load(sys.argv[1])(ids).shape))
