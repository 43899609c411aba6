"""Scoring throughput of a glmjax model vs its PyTorch (transformers) peer, in the same run.

Times what scoring needs: the forward pass, log-softmax in float32 and the gather of the true
token's log p, on random tokens of one length, for glmjax (jitted as the scoring engine jits its
step: flat parameter list, the family's GPU compiler options; cuDNN flash attention on GPU in
bf16) and for the peer (``transformers``, SDPA attention, same
dtype, ``torch.inference_mode``). Both hold the same randomly initialised weights: the peer is
built from its config with a fixed seed (no network) and its ``state_dict`` goes through glmjax's
own checkpoint converter, so the per-token log p of the two can be compared too.

Each side is timed twice: per batch with a synchronisation after each call (``--rounds``
alternating rounds of ``--iters`` batches per side, so clock and temperature drift reach both;
the median over all rounds gives ``tokens_per_s``), and back to back with one synchronisation at the end
(``pipelined_tokens_per_s``: batches in flight, as a scoring loop runs them, so host dispatch
overlaps device work).

The same run measures the bf16 matmul peak (an 8192^3 matmul in JAX and in torch) and reports
achieved TFLOP/s and the fraction of that peak. FLOPs per token = 2 x matmul parameters (all
linear layers and the LM head) + attention (4 x L x heads x head_dim per layer), from the config.

Usage::

    python scripts/bench_forward.py                                   # GPU: NT v1-500m, 1000 tokens x 64
    python scripts/bench_forward.py --family nt --shape v1-500m --seq-tokens 1000 --batch 64 --dtype bf16
    python scripts/bench_forward.py --smoke                           # tiny model on CPU (seconds)

``--profile`` adds a per-kernel breakdown of one batch on the device for both sides (JAX's
profiler trace and ``torch.profiler``): the kernels that take the time, grouped by name, so a gap
to the peer can be traced to GEMMs, attention or element-wise fusions.

Prints one JSON object (also written to ``--out`` if given). Families with a peer: ``nt`` (v1
shapes: stock ``EsmForMaskedLM``); ``evo1`` and ``evo2`` (the reference ``stripedhyena`` and
``vortex`` code, imported from ``--peer-src DIR``: that folder holds ``stripedhyena/``,
``vortex/`` (its ``ops/__init__.py`` emptied where the CUDA extension is absent), the Python
modules of ``flash_attn`` they import (``modules/mha.py``, ``layers/rotary.py``,
``ops/triton/rotary.py``, ``utils/distributed.py``, an ``__init__.py`` without the CUDA
interface), ``configs/SHAPE.yml`` (the published model yaml, e.g. ``configs/evo2-7b-8k.yml``;
``configs/evo1-tiny.yml``/``evo2-tiny.yml`` for ``--smoke``) and optionally ``PROVENANCE.txt``
(copied into the report); without it only glmjax is timed). Add one by writing a
:class:`FamilyBench` entry in ``FAMILIES``.

    python scripts/bench_forward.py --family evo2 --shape evo2-7b-8k --seq-tokens 8192 --batch 1 --peer-src PEERS
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# JAX and PyTorch share the GPU in this run: JAX must not reserve most of its memory up front.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from bench_common import emit_json, timed, torch_sync  # noqa: E402
from flax import nnx  # noqa: E402

from glmjax.models.checkpoints import TensorSource, fill_module  # noqa: E402

DTYPES = {"bf16": ("bfloat16", torch.bfloat16), "bfloat16": ("bfloat16", torch.bfloat16),
          "fp32": ("float32", torch.float32), "float32": ("float32", torch.float32)}


@dataclass
class Setup:
    """One benchmark subject: the glmjax module (split), its inputs, the peer and the FLOP count.

    ``peer_logits(ids, mask) -> logits`` runs the PyTorch model on device tensors.
    """

    config: Any
    graphdef: Any
    state: Any
    ids: np.ndarray
    mask: np.ndarray
    peer_logits: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None  # None: no peer on this machine
    peer_info: dict
    flops_per_token: float


@dataclass
class FamilyBench:
    """How to benchmark one family: ``setup(shape, dtype, seq_tokens, batch, seed, device)``."""

    default_shape: str
    smoke_shape: str
    setup: Callable[..., Setup]


# ---------------------------------------------------------------------------------------------
# Nucleotide Transformer

def nt_flops_per_token(cfg, length: int) -> float:
    """2 x matmul MACs per token (layers + LM head) + attention score and value products."""
    d, inner, f = cfg.hidden_size, cfg.num_heads * cfg.head_size, cfg.intermediate_size
    f1 = f * (2 if cfg.ffn_glu else 1)
    per_layer = 4 * d * inner + d * f1 + f * d
    matmul = cfg.num_layers * per_layer + d * d + d * cfg.vocab_size
    attention = cfg.num_layers * 4 * length * inner
    return 2.0 * matmul + attention


def nt_setup(shape: str, dtype: str, seq_tokens: int, batch: int, seed: int, device: torch.device) -> Setup:
    import transformers

    from glmjax.errors import ConfigError
    from glmjax.models import nt

    cfg32 = nt.NTConfig.preset(shape)
    if cfg32.ffn_glu or cfg32.position_embedding != "learned":
        raise ConfigError(f"NT shape {shape!r} is a v2 model (SwiGLU, rotary), which stock transformers cannot "
                          "build; the PyTorch peer exists for the v1 shapes (tiny, v1-500m, v1-2.5b)")
    if seq_tokens > cfg32.max_len:
        raise ConfigError(f"--seq-tokens {seq_tokens} exceeds the {cfg32.max_len}-token context of {shape}")
    hf_kwargs = dict(
        vocab_size=cfg32.vocab_size, hidden_size=cfg32.hidden_size, num_hidden_layers=cfg32.num_layers,
        num_attention_heads=cfg32.num_heads, intermediate_size=cfg32.intermediate_size,
        max_position_embeddings=cfg32.max_position_embeddings, position_embedding_type="absolute",
        layer_norm_eps=cfg32.layer_norm_eps, token_dropout=cfg32.token_dropout, pad_token_id=1, mask_token_id=2,
        tie_word_embeddings=False, attention_probs_dropout_prob=0.0, hidden_dropout_prob=0.0,
        emb_layer_norm_before=False)
    torch.manual_seed(seed)
    try:
        with torch.device(device):
            peer = transformers.EsmForMaskedLM(transformers.EsmConfig(**hf_kwargs, attn_implementation="sdpa")).eval()
    except (ValueError, TypeError):  # a transformers without SDPA for ESM: its default attention
        torch.manual_seed(seed)
        with torch.device(device):
            peer = transformers.EsmForMaskedLM(transformers.EsmConfig(**hf_kwargs)).eval()
    tensors = {k: v.detach().float().cpu().numpy() for k, v in peer.state_dict().items()}
    flat = nt.convert_hf(TensorSource(tensors, "transformers peer"), cfg32)
    del tensors
    cfg = nt.NTConfig.from_dict({**cfg32.to_dict(), "dtype": dtype})
    module = nnx.eval_shape(lambda: nt.build(cfg, nnx.Rngs(0)))
    fill_module(module, flat, origin="transformers peer")
    del flat
    graphdef, state = nnx.split(module)
    # the serving representation: weights stored in the compute dtype, like the peer's
    state = jax.tree_util.tree_map(lambda x: x.astype(cfg.compute_dtype), state)
    peer = peer.to(dtype=DTYPES[dtype][1])

    rng = np.random.default_rng(seed)
    ids = rng.integers(4, 4100, size=(batch, seq_tokens)).astype(np.int32)  # 6-mer ids
    ids[:, 0] = 3  # <cls>
    mask = np.ones_like(ids, dtype=bool)

    def peer_logits(tids: torch.Tensor, tmask: torch.Tensor) -> torch.Tensor:
        return peer(input_ids=tids, attention_mask=tmask).logits

    info = {"class": type(peer).__name__, "attn_implementation": getattr(peer.config, "_attn_implementation", None),
            "transformers": transformers.__version__}
    return Setup(cfg, graphdef, state, ids, mask, peer_logits, info, nt_flops_per_token(cfg, seq_tokens))


# ---------------------------------------------------------------------------------------------
# Evo 1 (StripedHyena) and Evo 2 (StripedHyena 2)
#
# The peers are the reference implementations themselves, imported from ``--peer-src``: a folder
# holding the ``stripedhyena`` package (Evo 1), the ``vortex`` package (Evo 2) and the Python
# modules of ``flash_attn`` they import (``modules/mha.py``, ``layers/rotary.py`` with its Triton
# rotary kernel, ``utils/distributed.py``; an ``__init__`` without the CUDA extension). They run
# their pure-PyTorch paths: ``use_flash_attn=False`` (the torch attention classes), no
# flashfftconv, no Transformer Engine (``use_fp8_input_projections=False``: bf16 projections).
# The peer's model yaml is ``{peer_src}/configs/{shape}.yml``; glmjax builds its own config from
# the same file through its loader, so both sides run the same architecture.

EVO_PEER_OVERRIDES = {"use_flash_attn": False, "use_flashfft": False, "use_flash_depthwise": False,
                      "use_flash_rmsnorm": False, "use_fp8_input_projections": False, "print_activations": False}


class _AttrDict(dict):
    """The references' ``dotdict``: attribute access, ``None`` for a missing key."""

    __getattr__ = dict.get
    __setattr__ = dict.__setitem__


def _torch_apply_rotary(x, cos, sin, seqlen_offsets=0, cu_seqlens=None, max_seqlen=None, interleaved=False,
                        inplace=False, conjugate=False):
    """The Triton rotary kernel's math in torch (GPT-NeoX halves), for CPU smoke runs only."""
    if cu_seqlens is not None or interleaved:
        raise RuntimeError("the CPU rotary fallback covers the non-interleaved, padded layout only")
    seq = x.shape[1]
    if isinstance(seqlen_offsets, int):
        c, s = cos[seqlen_offsets:seqlen_offsets + seq][None, :, None], sin[seqlen_offsets:seqlen_offsets + seq][None, :, None]
    else:
        idx = seqlen_offsets[:, None] + torch.arange(seq, device=x.device)[None]
        c, s = cos[idx][:, :, None], sin[idx][:, :, None]
    if conjugate:
        s = -s
    half = cos.shape[-1]
    xf = x.float()
    x1, x2 = xf[..., :half], xf[..., half:2 * half]
    out = torch.cat([x1 * c - x2 * s, x1 * s + x2 * c, xf[..., 2 * half:]], dim=-1).to(x.dtype)
    if inplace:
        x.copy_(out)
        return x
    return out


def _import_evo_peer(generation: int, peer_src: str | None, device: torch.device):
    """The reference ``StripedHyena`` class of this generation, imported from ``peer_src``."""
    from glmjax.errors import ConfigError

    if not peer_src:
        raise ConfigError("the Evo peer needs --peer-src DIR (stripedhyena, vortex and flash_attn's Python "
                          "modules); without it only glmjax is timed")
    src = Path(peer_src).resolve()
    if not src.is_dir():
        raise ConfigError(f"--peer-src {peer_src}: no such folder")
    sys.path.insert(0, str(src))
    if device.type != "cuda":  # no Triton on the CPU: the kernel's math in torch
        import types

        for name in ("flash_attn.ops.triton.rotary", "vortex.ops.embedding.rotary"):
            mod = types.ModuleType(name)
            mod.apply_rotary = _torch_apply_rotary
            sys.modules[name] = mod
        import contextlib

        torch.cuda.device = lambda *_a, **_k: contextlib.nullcontext()  # vortex enters it unconditionally
    import logging

    logging.getLogger("StripedHyena").setLevel(logging.ERROR)
    if generation == 1:
        from stripedhyena.model import StripedHyena
    else:
        import tempfile

        here = os.getcwd()
        with tempfile.TemporaryDirectory() as tmp:  # vortex opens an activations_debug.log in the working folder
            os.chdir(tmp)
            try:
                from vortex.model.model import StripedHyena
            finally:
                os.chdir(here)
    return StripedHyena


def evo_matmul_flops_per_token(cfg, length: int) -> float:
    """2 x the multiply-adds of every dense projection (Hyena in/out projections, Wqkv and out of the
    attention blocks, the gated MLPs, the tied LM head) + attention score and value products
    (4 x L x d per attention layer). The convolutions (FFT long filters, short and medium FIRs) are
    not counted: they are not matmuls, so this is the FLOP count against the matmul peak."""
    d, f = cfg.hidden_size, cfg.inner_mlp_size
    attn = sum(1 for k in cfg.layers if k == "attn")
    hyena = cfg.num_layers - attn
    per_attn = 3 * d * d + d * d
    per_hyena = 3 * d * d + d * d
    mlp = 3 * d * f
    matmul = attn * per_attn + hyena * per_hyena + cfg.num_layers * mlp + d * cfg.vocab_size
    return 2.0 * matmul + attn * 4 * length * d


def _evo_setup(generation: int, shape: str, dtype: str, seq_tokens: int, batch: int, seed: int,
               device: torch.device, peer_src: str | None = None) -> Setup:
    import yaml

    from glmjax.errors import ConfigError
    from glmjax.models import evo

    cls = evo.Evo1Config if generation == 1 else evo.Evo2Config
    peer_cls = peer_err = None
    try:
        peer_cls = _import_evo_peer(generation, peer_src, device)
    except (ConfigError, ImportError) as e:
        peer_err = f"{type(e).__name__}: {e}"
    yml = Path(peer_src or ".") / "configs" / (f"{shape}.yml" if shape.startswith("evo") else
                                               f"evo{generation}-{shape}.yml")
    if peer_cls is not None and yml.is_file():
        raw = yaml.safe_load(yml.read_text())
        cfg32 = cls.from_hf(raw)
    elif shape == "tiny":
        cfg32 = cls.tiny()
        raw = None
    else:
        cfg32 = cls.preset(shape)
        raw = None
        if peer_cls is not None:
            peer_err, peer_cls = f"no peer model yaml {yml}", None
    if seq_tokens > cfg32.max_len:
        raise ConfigError(f"--seq-tokens {seq_tokens} exceeds the {cfg32.max_len}-token context of {shape}")
    cfg = cls.from_dict({**cfg32.to_dict(), "dtype": dtype, "fp8_input_projections": False})

    peer = None
    if peer_cls is not None and raw is None:  # tiny: the reference yaml of the tiny config
        peer_cls, peer_err = None, f"no peer model yaml {yml}"
    if peer_cls is not None:
        torch.manual_seed(seed)
        tdt = DTYPES[dtype][1]
        pcfg = _AttrDict({**raw, **EVO_PEER_OVERRIDES, "max_seqlen": max(int(raw.get("max_seqlen") or 0), seq_tokens),
                          "max_batch_size": batch, "attn_block_dtype": tdt, "mlp_dtype": tdt,
                          "hyena_block_dtype": tdt, "depthwise_dtype": tdt})
        with torch.device(device):
            peer = peer_cls(pcfg).eval()
        peer = peer.to(device)
        with torch.no_grad():
            for name, prm in peer.named_parameters():
                if name.endswith("log_poles"):  # vortex draws randn log-poles (|pole| > 1 diverges): decaying poles
                    prm.copy_(torch.log(torch.empty_like(prm).uniform_(0.5, 0.99)))
                elif name.endswith("residues") and prm.dim() == 2:
                    prm.mul_(0.1)
        if dtype == "float32":
            peer = peer.float()
        # the references' own bf16 conversion keeps poles and residues in fp32
        if dtype == "bfloat16":
            if generation == 1:
                peer.to_bfloat16_except_poles_residues()
            else:
                peer.to_bfloat16_except_pr_lc()
        tensors = {k: v.detach().float().cpu().numpy() for k, v in peer.state_dict().items()
                   if not k.endswith("_extra_state")}
        # a live reference module holds Wqkv in its runtime [Q; K; V] layout (the (h, 3, hd)
        # training layout is permuted when a checkpoint is loaded): convert it as such
        flat = evo.convert(TensorSource(tensors, "reference peer"),
                           cls.from_dict({**cfg.to_dict(), "wqkv_per_head": False}))
        del tensors
        module = nnx.eval_shape(lambda: evo.build(cfg, nnx.Rngs(0)))
        fill_module(module, flat, origin="reference peer")
        del flat
    else:
        module = evo.build(cfg, nnx.Rngs(seed))
    graphdef, state = nnx.split(module)
    # the serving representation: bf16 weights, the long filters' poles and residues in fp32 (as
    # the reference's to_bfloat16_except_pr_lc)

    def cast(path, x):
        keep = any(str(getattr(k, "key", k)) in ("poles", "log_poles", "residues") for k in path)
        return x if keep else x.astype(cfg.compute_dtype)

    state = jax.tree_util.tree_map_with_path(cast, state)

    rng = np.random.default_rng(seed)
    ids = rng.choice(np.array([65, 67, 71, 84], np.int32), size=(batch, seq_tokens))  # A C G T bytes
    if generation == 1:
        ids[:, 0] = 0  # BOS
    mask = np.ones_like(ids, dtype=bool)

    def peer_logits(tids: torch.Tensor, tmask: torch.Tensor) -> torch.Tensor:
        return peer(tids)[0]

    info = {"class": f"{'stripedhyena' if generation == 1 else 'vortex'}.model.StripedHyena",
            "overrides": EVO_PEER_OVERRIDES}
    if peer is None:
        info = {"error": peer_err}
    else:
        prov = Path(peer_src) / "PROVENANCE.txt"
        if prov.is_file():
            info["source"] = prov.read_text().strip().splitlines()
    return Setup(cfg, graphdef, state, ids, mask, peer_logits if peer is not None else None, info,
                 evo_matmul_flops_per_token(cfg, seq_tokens))


def evo1_setup(*args, **kw) -> Setup:
    return _evo_setup(1, *args, **kw)


def evo2_setup(*args, **kw) -> Setup:
    return _evo_setup(2, *args, **kw)


FAMILIES: dict[str, FamilyBench] = {
    "nt": FamilyBench(default_shape="v1-500m", smoke_shape="tiny", setup=nt_setup),
    "evo1": FamilyBench(default_shape="evo1-7b-8k", smoke_shape="tiny", setup=evo1_setup),
    "evo2": FamilyBench(default_shape="evo2-7b-8k", smoke_shape="tiny", setup=evo2_setup),
}


# ---------------------------------------------------------------------------------------------
# Timing


def pipelined(fn, sync, iters: int, warmup: int) -> float:
    """Seconds per call of ``iters`` back-to-back calls of ``fn`` synchronised once at the end
    (batches in flight, as a scoring loop runs them), after ``warmup`` calls."""
    for _ in range(warmup):
        sync(fn())
    t0 = time.perf_counter()
    out = None
    for _ in range(iters):
        out = fn()
    sync(out)
    return (time.perf_counter() - t0) / iters


def jax_matmul_peak(n: int, dtype, iters: int) -> float:
    """FLOP/s of a jitted ``n x n @ n x n`` matmul in ``dtype`` (best of ``iters``)."""
    ka, kb = jax.random.split(jax.random.key(0))
    a = jax.random.normal(ka, (n, n), jnp.float32).astype(dtype)
    b = jax.random.normal(kb, (n, n), jnp.float32).astype(dtype)
    f = jax.jit(jnp.matmul)
    times = timed(lambda: f(a, b), lambda y: y.block_until_ready(), iters, 3)
    return 2.0 * n ** 3 / min(times)


def torch_matmul_peak(n: int, dtype, iters: int, device: torch.device) -> float:
    """FLOP/s of ``a @ b`` for ``n x n`` matrices in ``dtype`` on ``device`` (best of ``iters``)."""
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, generator=g).to(dtype)
    b = torch.randn(n, n, device=device, generator=g).to(dtype)
    times = timed(lambda: a @ b, lambda _: torch_sync(device), iters, 3)
    return 2.0 * n ** 3 / min(times)


def _kernel_class(name: str) -> str:
    """A coarse class of a GPU kernel name: gemm, gemm+gelu (glmjax's fused Mosaic GPU kernel),
    attention, reduction/elementwise, copy, other."""
    low = name.lower()
    if "mosaic_gpu" in low:
        return "gemm+gelu"
    if any(t in low for t in ("flash", "fmha", "sdpa", "attention")):
        return "attention"
    if any(t in low for t in ("gemm", "nvjet", "cutlass", "xmma", "cublas", "matmul", "wgmma")):
        return "gemm"
    if any(t in low for t in ("memcpy", "memset", "copy")):
        return "copy"
    if any(t in low for t in ("fusion", "reduce", "elementwise", "loop_", "input_", "vectorized", "softmax",
                              "layer_norm", "norm", "gelu", "add", "mul")):
        return "elementwise/reduction"
    return "other"


def summarize_kernels(durations: dict[str, list[float]], batches: int, top: int = 25) -> dict:
    """Per-kernel-name totals (ms per batch), the top ``top`` and the totals by class."""
    rows = sorted(((name, sum(d) / batches / 1e3, len(d) // batches) for name, d in durations.items()),
                  key=lambda r: -r[1])
    by_class: dict[str, float] = {}
    for name, ms, _ in rows:
        cls = _kernel_class(name)
        by_class[cls] = by_class.get(cls, 0.0) + ms
    return {"device_ms_per_batch": round(sum(r[1] for r in rows), 3),
            "by_class_ms": {k: round(v, 3) for k, v in sorted(by_class.items(), key=lambda kv: -kv[1])},
            "top_kernels": [{"name": n[:160], "ms": round(ms, 3), "calls": c} for n, ms, c in rows[:top]]}


def profile_jax(fn, batches: int) -> dict:
    """GPU kernel time of ``batches`` calls of ``fn`` from a JAX profiler trace (perfetto JSON)."""
    import gzip
    import tempfile

    with tempfile.TemporaryDirectory(prefix="glmjax-profile-") as tmp:
        with jax.profiler.trace(tmp, create_perfetto_trace=True):
            for _ in range(batches):
                fn().block_until_ready()
        traces = sorted(Path(tmp).rglob("perfetto_trace.json.gz"))
        if not traces:
            return {"error": "the JAX profiler wrote no perfetto trace"}
        events = json.load(gzip.open(traces[-1]))["traceEvents"]
    procs = {e["pid"]: e["args"]["name"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"}
    threads = {(e["pid"], e.get("tid")): e["args"]["name"] for e in events
               if e.get("ph") == "M" and e.get("name") == "thread_name"}
    durations: dict[str, list[float]] = {}
    for e in events:
        if e.get("ph") != "X" or "/device:" not in procs.get(e.get("pid"), ""):
            continue
        thread = threads.get((e["pid"], e.get("tid")), "")
        if not thread.lower().startswith("stream"):  # "XLA Ops"/"XLA Modules" lines repeat the kernels
            continue
        durations.setdefault(e["name"], []).append(float(e.get("dur", 0.0)))
    if not durations:
        return {"error": "no device kernel events in the trace",
                "processes": sorted(set(procs.values()))[:20], "threads": sorted(set(threads.values()))[:40]}
    return summarize_kernels(durations, batches)


def profile_torch(fn, batches: int, device: torch.device) -> dict:
    """GPU kernel time of ``batches`` calls of ``fn`` from ``torch.profiler``."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(batches):
            fn()
        torch_sync(device)
    durations: dict[str, list[float]] = {}
    for e in prof.events():
        if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA:
            durations.setdefault(e.name, []).append(float(e.time_range.elapsed_us()))
    return summarize_kernels(durations, batches)


def make_jax_scorer(graphdef, treedef, options: dict | None):
    """``score(leaves, ids, mask) -> log p of every true token [B, L]`` (float32; 0 at pads).

    Jitted as the scoring engine jits its step: the parameters travel as a flat list of arrays
    and ``options`` are the XLA options of the engine's program for this family and backend.
    """

    def score(leaves, ids, mask):
        state = jax.tree_util.tree_unflatten(treedef, leaves)
        logits = nnx.merge(graphdef, state)(ids, mask)
        # log p(token) = logit(token) - logsumexp(logits): no [B, L, V] log-probabilities are stored
        lse = jax.nn.logsumexp(logits.astype(jnp.float32), axis=-1)
        tok = jnp.take_along_axis(logits, ids[..., None], axis=-1)[..., 0].astype(jnp.float32)
        return jnp.where(mask, tok - lse, 0.0)

    return jax.jit(score, compiler_options=options)


def run(args) -> dict:
    """Run the benchmark described by the parsed ``args``; returns the JSON report."""
    bench = FAMILIES[args.family]
    shape = args.shape or (bench.smoke_shape if args.smoke else bench.default_shape)
    dtype_name, torch_dtype = DTYPES[args.dtype]
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    if args.smoke:
        torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))

    extra = {"peer_src": args.peer_src} if args.family.startswith("evo") else {}
    s = bench.setup(shape, dtype_name, args.seq_tokens, args.batch, args.seed, device, **extra)
    tokens = int(s.mask.sum())

    # glmjax, compiled as the scoring engine compiles it
    from glmjax.engine.runner import compiler_options
    from glmjax.models import get_family

    options = None if args.xla_defaults else compiler_options(get_family(args.family))
    leaves, treedef = jax.tree_util.tree_flatten(s.state)
    score = make_jax_scorer(s.graphdef, treedef, options)
    ids, mask = jnp.asarray(s.ids), jnp.asarray(s.mask)
    precision = "highest" if dtype_name == "float32" else "default"
    with jax.default_matmul_precision(precision):
        t0 = time.perf_counter()
        compiled = score.lower(leaves, ids, mask).compile()
        compile_s = time.perf_counter() - t0

    def ours():
        return compiled(leaves, ids, mask)

    # peer
    tids = torch.from_numpy(s.ids).long().to(device)
    tmask = torch.from_numpy(s.mask).long().to(device)

    def peer_score():
        with torch.inference_mode():
            logp = s.peer_logits(tids, tmask).float().log_softmax(-1)
            return logp.gather(-1, tids[..., None])[..., 0] * tmask

    has_peer = s.peer_logits is not None
    # the two sides alternate, round by round, so that clock and temperature drift reach both
    ours_times, peer_times, round_ratios = [], [], []
    for r in range(args.rounds):
        warm = args.warmup if r == 0 else 1
        t_ours = timed(ours, lambda y: y.block_until_ready(), args.iters, warm)
        ours_times += t_ours
        if has_peer:
            t_peer = timed(peer_score, lambda _: torch_sync(device), args.iters, warm)
            peer_times += t_peer
            round_ratios.append(statistics.median(t_peer) / statistics.median(t_ours))
    ours_pipe = pipelined(ours, lambda y: y.block_until_ready(), args.iters, 1)
    ours_logp = np.asarray(ours())
    if has_peer:
        peer_pipe = pipelined(peer_score, lambda _: torch_sync(device), args.iters, 1)
        peer_logp = peer_score().cpu().numpy()
    profiles = None
    if args.profile:
        profiles = {"glmjax": profile_jax(ours, 2)}
        if has_peer:
            profiles["torch"] = (profile_torch(peer_score, 2, device) if device.type == "cuda" else
                                 {"error": "torch.profiler records CUDA kernels only"})
    del s.peer_logits
    if device.type == "cuda":
        torch.cuda.empty_cache()

    n = args.peak_n or (512 if args.smoke else 8192)
    jax_peak = jax_matmul_peak(n, jnp.dtype(dtype_name), max(args.iters, 10))
    torch_peak = torch_matmul_peak(n, torch_dtype, max(args.iters, 10), device)

    ours_med = statistics.median(ours_times)
    ours_tps = tokens / ours_med
    fpt = s.flops_per_token
    cfg = s.config
    report = {
        "benchmark": f"{args.family} scoring: forward + log_softmax(fp32) + gather of the true token",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "family": args.family, "shape": shape, "dtype": dtype_name,
        "seq_tokens": args.seq_tokens, "batch": args.batch, "tokens_per_batch": tokens,
        "config": {k: getattr(cfg, k) for k in ("num_layers", "hidden_size", "num_heads", "num_attention_heads",
                                                 "intermediate_size", "inner_mlp_size", "vocab_size") if hasattr(cfg, k)},
        "jax_device": str(jax.devices()[0].device_kind), "jax_backend": jax.default_backend(),
        "torch_device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "versions": {"python": platform.python_version(), "jax": jax.__version__, "torch": torch.__version__,
                     "numpy": np.__version__, **{k: v for k, v in s.peer_info.items() if k == "transformers"}},
        "peer": {k: v for k, v in s.peer_info.items() if k != "transformers"},
        "jax_matmul_precision": precision,
        "flops_per_token": fpt,
        "matmul_peak_flops": {"n": n, "jax": jax_peak, "torch": torch_peak},
        "glmjax": {"median_s": ours_med, "min_s": min(ours_times), "tokens_per_s": ours_tps,
                   "tflops": fpt * ours_tps / 1e12, "fraction_of_peak": fpt * ours_tps / jax_peak,
                   "compile_s": compile_s, "pipelined_s": ours_pipe, "pipelined_tokens_per_s": tokens / ours_pipe},
        "iters": args.iters, "warmup": args.warmup, "rounds": args.rounds,
        "compiler_options": options or {},
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }
    if has_peer:
        peer_med = statistics.median(peer_times)
        peer_tps = tokens / peer_med
        report.update({
            "torch": {"median_s": peer_med, "min_s": min(peer_times), "tokens_per_s": peer_tps,
                      "tflops": fpt * peer_tps / 1e12, "fraction_of_peak": fpt * peer_tps / torch_peak,
                      "pipelined_s": peer_pipe, "pipelined_tokens_per_s": tokens / peer_pipe},
            "speedup_vs_torch": ours_tps / peer_tps,
            "speedup_per_round": [round(x, 4) for x in round_ratios],
            "speedup_vs_torch_pipelined": peer_pipe / ours_pipe,
            "max_abs_logp_diff_vs_torch": float(np.abs(ours_logp - peer_logp).max()),
            "mean_logp": {"glmjax": float(ours_logp[s.mask].mean()), "torch": float(peer_logp[s.mask].mean())},
        })
    if profiles is not None:
        report["profile"] = profiles
    return report


def main(argv: list[str] | None = None) -> dict:
    """Parse ``argv`` (as on the command line), run, print and return the JSON report."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", default="nt", choices=sorted(FAMILIES))
    ap.add_argument("--shape", default=None, help="the family's preset name (default: the family's main shape; "
                    "--smoke: its tiny shape)")
    ap.add_argument("--seq-tokens", type=int, default=None, help="tokens per sequence (default 1000; smoke 32)")
    ap.add_argument("--batch", type=int, default=None, help="sequences per batch (default 64; smoke 2)")
    ap.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    ap.add_argument("--iters", type=int, default=None, help="timed iterations (default 10; smoke 2)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed iterations first (default 3; smoke 1)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds of --iters timed batches per side "
                    "(default 3); medians are over all rounds")
    ap.add_argument("--xla-defaults", action="store_true",
                    help="compile glmjax with XLA's default options instead of the family's GPU options")
    ap.add_argument("--peak-n", type=int, default=None, help="matmul size of the peak probe (default 8192)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true", help="tiny shape on CPU, a few iterations")
    ap.add_argument("--profile", action="store_true", help="add a per-kernel device-time breakdown (GPU)")
    ap.add_argument("--peer-src", default=None,
                    help="evo1/evo2: folder with the reference packages (stripedhyena, vortex, flash_attn's Python "
                    "modules) and configs/SHAPE.yml; without it only glmjax is timed")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args(argv)
    if args.smoke:
        jax.config.update("jax_platforms", "cpu")
    args.seq_tokens = args.seq_tokens or (32 if args.smoke else 1000)
    args.batch = args.batch or (2 if args.smoke else 64)
    args.iters = args.iters or (2 if args.smoke else 10)
    args.warmup = args.warmup or (1 if args.smoke else 3)
    if args.rounds < 1 or args.iters < 1:
        print("bench_forward: error: --rounds and --iters must be at least 1", file=sys.stderr)
        raise SystemExit(2)
    from glmjax.errors import GlmjaxError

    try:
        report = run(args)
    except GlmjaxError as e:
        print(f"bench_forward: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    return emit_json(report, args.out)


if __name__ == "__main__":
    main()
