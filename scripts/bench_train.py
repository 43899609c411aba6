"""Training throughput of glmjax, and the speed-up of the vmapped shadow ensemble, with a PyTorch
peer in the same run.

Measured (all with a fresh compilation: the persistent compilation cache is switched off here):

1. **single-model training steps** — forward + backward + AdamW update (global-norm clipping,
   warmup-cosine schedule: exactly the step :class:`glmjax.train.trainer.Trainer` runs, built from
   the same :func:`make_loss` / :func:`make_step` / :func:`make_optimizer`), on random DNA tokens,
   compute in ``--dtype`` (bf16 by default; parameters and optimizer state fp32). Compile time
   (``jit.lower().compile()``) is reported apart from the steady-state step time (``--steps``
   timed steps after ``--warmup`` untimed ones). Subjects: the ``tiny`` Llama, the ~100M-parameter
   Llama (preset ``100m``: d 768, 12 layers, 2048-token context) and HyenaDNA of the ``small-32k``
   shape (d 256, 4 layers, filter built for 32k) trained on ``--hyena-tokens`` tokens.
2. **the peer** — the same ~100M Llama as ``transformers.LlamaForCausalLM`` (SDPA attention, fp32
   master weights, ``torch.autocast`` bf16, ``torch.optim.AdamW`` fused on CUDA, the same
   clipping), same batch and length, on the same GPU: tokens/s and glmjax's ratio to it.
3. **the shadow ensemble** — M small Llamas (~1M parameters; ``--ensemble-models``) trained on
   random halves of one pool, (a) one after another with :class:`Trainer` (what ``glmjax
   train-shadows --mode sequential`` runs: a compilation, checkpoints and an exported model per
   model) and (b) with :func:`glmjax.train.shadows.train_shadows_vmapped` (one compilation, M
   models per step) followed by saving the M models. Compile time is the XLA compile + lowering
   time reported by ``jax.monitoring``; ``run_s`` is the rest of the wall time. The sequential
   runs stop after ``--ensemble-seq-budget`` seconds and their time is extrapolated to M models
   (flagged ``extrapolated``; every run is identical in shape and step count). A step-level
   comparison (one compiled step applied to the M parameter sets in turn vs the vmapped step,
   no I/O) isolates the device-side gain.

Throughput is tokens (attended positions, padding excluded) per second. FLOPs per trained token
for the Llamas = 6 x (matmul parameters) + 12 x layers x length x d_model; the bf16 matmul peak
is measured in the same run (an N^3 matmul in JAX) and the fraction of it reported.

Usage (from a checkout; glmjax need not be installed)::

    python scripts/bench_train.py                  # GPU: everything above, bf16
    python scripts/bench_train.py --skip-peer --ensemble-models 8
    python scripts/bench_train.py --smoke          # one-layer shapes on CPU, XLA's cheapest passes; seconds

Prints one JSON object. With ``--out`` the JSON is also written there after every section
(``"finished": false`` until the end), so a run cut off by a time limit keeps what it measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# JAX and PyTorch share the GPU in this run: JAX must not reserve most of its memory up front.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
os.environ.setdefault("GLMJAX_QUIET", "1")
SMOKE_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
if "--smoke" in sys.argv[1:]:
    # The smoke run checks the plumbing on a CPU, where compilation dominates its time: XLA's
    # cheapest CPU passes (set before jax initialises its backend). Its numbers mean nothing.
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {SMOKE_XLA_FLAGS}".strip()


import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

import glmjax  # noqa: E402
from glmjax import models  # noqa: E402
from glmjax.train.data import TokenizedSet  # noqa: E402
from glmjax.train.trainer import TrainConfig, make_loss, make_optimizer, make_step, replacement_ids  # noqa: E402

DTYPES = {"bf16": "bfloat16", "bfloat16": "bfloat16", "fp32": "float32", "float32": "float32"}
_COMPILE_EVENTS = ("/jax/core/compile/backend_compile_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration")


# ------------------------------------------------------------------------------------------------
# Compile-time accounting
# ------------------------------------------------------------------------------------------------
class CompileClock:
    """Sums XLA compile + lowering seconds reported through ``jax.monitoring`` while active."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.count = 0
        self.active = False
        jax.monitoring.register_event_duration_secs_listener(self._on_event)

    def _on_event(self, event: str, duration_secs: float, **kwargs: Any) -> None:
        if self.active and event in _COMPILE_EVENTS:
            self.seconds += float(duration_secs)
            self.count += event == _COMPILE_EVENTS[0]

    def __enter__(self) -> CompileClock:
        self.seconds, self.count, self.active = 0.0, 0, True
        return self

    def __exit__(self, *exc: Any) -> None:
        self.active = False


# ------------------------------------------------------------------------------------------------
# Data and FLOPs
# ------------------------------------------------------------------------------------------------
def random_dna(n: int, length: int, seed: int) -> np.ndarray:
    """uint8 [n, length] random A C G T codes."""
    return np.random.default_rng(seed).integers(0, 4, size=(n, length), dtype=np.uint8)


def tokenized(model: models.LoadedModel, codes: np.ndarray) -> TokenizedSet:
    """Random DNA rows through the model's tokenizer, padded to one length (a multiple of 8)."""
    tok = model.tokenizer
    encs = [tok.encode_codes(c) for c in codes]
    length = -(-max(e.ids.shape[0] for e in encs) // 8) * 8
    ids, att, sc = tok.pad_batch(encs, length)
    return TokenizedSet(ids, att, sc, np.arange(len(encs), dtype=np.int64))


def llama_flops_per_token(cfg: Any, length: int) -> float:
    """Training FLOPs per token: 6 x matmul parameters + 12 x layers x length x d_model."""
    d, f, n = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    hd = cfg.head_size
    attn = d * cfg.num_attention_heads * hd * 2 + d * cfg.kv_heads * hd * 2
    matmul = n * (attn + 3 * d * f) + d * cfg.vocab_size
    return 6.0 * matmul + 12.0 * n * length * d


def matmul_peak_tflops(n: int, dtype: str, reps: int = 10) -> float:
    """Measured TFLOP/s of an n x n x n matmul in ``dtype`` (the device's practical peak)."""
    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), dtype)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    t0 = time.perf_counter()
    for _ in range(reps):
        out = f(a)
    out.block_until_ready()
    return 2.0 * n ** 3 * reps / (time.perf_counter() - t0) / 1e12


# ------------------------------------------------------------------------------------------------
# 1. single-model training steps
# ------------------------------------------------------------------------------------------------
def step_benchmark(name: str, family: str, cfg: Any, batch: int, nucleotides: int, steps: int, warmup: int,
                   clock: CompileClock) -> dict[str, Any]:
    """Compile and time the trainer's step on one model; returns the JSON entry."""
    model = models.build(family, cfg, seed=0)
    data = tokenized(model, random_dna(batch, nucleotides, 1))
    tc = TrainConfig(lr=1e-4, warmup_steps=min(10, warmup + steps - 1), batch_size=batch)
    graphdef, trainable, frozen = nnx.split(model.module, nnx.Param, ...)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), trainable)
    params = nnx.to_pure_dict(trainable)
    tx = make_optimizer(tc, warmup + steps)
    tok = model.tokenizer
    loss_fn = make_loss(graphdef, abstract, model.objective, tok.mask_id, jnp.asarray(replacement_ids(data)),
                        tc.mask_prob)
    step = jax.jit(make_step(loss_fn, tx), donate_argnums=(0, 1))
    opt_state = tx.init(params)
    ids, att, sc = (jnp.asarray(x[None]) for x in (data.ids, data.attention, data.scored))
    key = jax.random.key(0)
    t0 = time.perf_counter()
    with clock:
        compiled = step.lower(params, opt_state, frozen, ids, att, sc, key).compile()
    compile_s = time.perf_counter() - t0
    loss = None
    for i in range(warmup):
        params, opt_state, loss, _ = compiled(params, opt_state, frozen, ids, att, sc, jax.random.fold_in(key, i))
    jax.block_until_ready((params, loss))
    t0 = time.perf_counter()
    for i in range(steps):
        params, opt_state, loss, _ = compiled(params, opt_state, frozen, ids, att, sc,
                                              jax.random.fold_in(key, warmup + i))
    jax.block_until_ready((params, loss))
    step_s = (time.perf_counter() - t0) / steps
    tokens = int(data.attention.sum())
    entry = {"family": family, "config": cfg.to_dict(), "params": model.num_params(), "batch": batch,
             "seq_tokens": int(data.ids.shape[1]), "tokens_per_step": tokens, "compile_s": round(compile_s, 3),
             "step_s": step_s, "tokens_per_s": tokens / step_s, "final_loss": float(loss),
             "finite": bool(np.isfinite(float(loss)))}
    if family == "llama":
        fpt = llama_flops_per_token(cfg, int(data.ids.shape[1]))
        entry["flops_per_token"] = fpt
        entry["tflops"] = fpt * entry["tokens_per_s"] / 1e12
    entry["name"] = name
    return entry


# ------------------------------------------------------------------------------------------------
# 2. the PyTorch peer
# ------------------------------------------------------------------------------------------------
def torch_llama_peer(cfg: Any, batch: int, seq_tokens: int, steps: int, warmup: int, dtype: str) -> dict[str, Any]:
    """The same Llama in transformers + torch AdamW, same batch and length; tokens/s."""
    import torch
    import transformers

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    hf_cfg = transformers.LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.kv_heads, max_position_embeddings=cfg.max_position_embeddings,
        rms_norm_eps=cfg.rms_norm_eps, rope_theta=cfg.rope_theta, tie_word_embeddings=cfg.tie_word_embeddings,
        attention_bias=cfg.attention_bias, mlp_bias=cfg.mlp_bias, hidden_act=cfg.hidden_act)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM._from_config(hf_cfg, attn_implementation="sdpa").to(dev)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.01,
                            **({"fused": True} if dev == "cuda" else {}))
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(7, 11, (batch, seq_tokens), generator=g).to(dev)  # A C G T ids of the char vocab
    use_amp = dtype == "bfloat16"

    def step() -> torch.Tensor:
        with torch.autocast(device_type=dev, dtype=torch.bfloat16, enabled=use_amp):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    def sync() -> None:
        if dev == "cuda":
            torch.cuda.synchronize()

    t0 = time.perf_counter()
    for _ in range(max(warmup, 1)):
        loss = step()
    sync()
    warm_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step()
    sync()
    step_s = (time.perf_counter() - t0) / steps
    tokens = batch * seq_tokens
    return {"name": "transformers LlamaForCausalLM (SDPA) + torch.optim.AdamW" + (" (fused)" if dev == "cuda" else "")
            + (", bf16 autocast" if use_amp else ", fp32"),
            "device": torch.cuda.get_device_name(0) if dev == "cuda" else platform.processor() or "cpu",
            "torch_version": torch.__version__, "transformers_version": transformers.__version__,
            "params": sum(p.numel() for p in model.parameters()), "batch": batch, "seq_tokens": seq_tokens,
            "warmup_s": round(warm_s, 3), "step_s": step_s, "tokens_per_s": tokens / step_s,
            "final_loss": float(loss.detach().float().cpu())}


# ------------------------------------------------------------------------------------------------
# 3. the shadow ensemble: sequential Trainer runs vs the vmapped ensemble
# ------------------------------------------------------------------------------------------------
def ensemble_benchmark(cfg: Any, m_count: int, pool_rows: int, nucleotides: int, tc: TrainConfig,
                       clock: CompileClock, workdir: Path, seq_budget: float = 0.0) -> dict[str, Any]:
    """M models on random halves of one pool: Trainer one after another vs train_shadows_vmapped.

    ``seq_budget`` (seconds, 0 = none): stop the sequential runs once the next one would pass it
    and extrapolate the sequential time to M models (the first model's time, which carries the
    one-off compilations of the optimizer's eager ops, plus M - 1 times the mean of the others);
    ``sequential.models_measured`` and ``sequential.extrapolated`` say so.
    """
    from glmjax.train.shadows import inclusion_matrix, shadow_seed, train_shadows_vmapped
    from glmjax.train.trainer import Trainer, steps_per_epoch

    def factory(seed: int) -> models.LoadedModel:
        return models.build("llama", cfg, seed=seed)

    probe = factory(0)
    pool = tokenized(probe, random_dna(pool_rows, nucleotides, 2))
    keep = inclusion_matrix(len(pool), m_count, tc.seed)
    subsets = [np.flatnonzero(keep[m]) for m in range(m_count)]
    spe = steps_per_epoch(len(subsets[0]), tc)
    tok_per_row = pool.attention.sum(1)
    tokens = 0
    for m in range(m_count):
        order_tokens = tok_per_row[subsets[m]]
        tokens += int(order_tokens.mean() * tc.batch_size * spe * tc.epochs)

    # (a) sequential: one Trainer after another (as train_shadows mode="sequential")
    wall, comp, count = [], [], 0
    for m in range(m_count):
        if seq_budget and wall and sum(wall) + max(wall) > seq_budget:
            break
        t0 = time.perf_counter()
        with clock:
            lm = factory(shadow_seed(tc.seed, m))
            sub = TokenizedSet(pool.ids[subsets[m]], pool.attention[subsets[m]], pool.scored[subsets[m]],
                               pool.rows[subsets[m]])
            Trainer(lm, dataclasses.replace(tc, seed=shadow_seed(tc.seed, m), patience=0),
                    workdir / f"seq_{m:03d}").fit(sub)
        wall.append(time.perf_counter() - t0)
        comp.append(clock.seconds)
        count += clock.count
        _log(f"  sequential model {m + 1}/{m_count}: {wall[-1]:.1f} s (compile {comp[-1]:.1f} s)")

    def scaled(x: list[float]) -> float:
        if len(x) == m_count:
            return float(sum(x))
        return float(x[0] + (m_count - 1) * (np.mean(x[1:]) if len(x) > 1 else x[0]))

    seq_total, seq_compile = scaled(wall), scaled(comp)
    seq = {"total_s": round(seq_total, 3), "compile_s": round(seq_compile, 3), "compilations": count,
           "run_s": round(seq_total - seq_compile, 3), "models_measured": len(wall),
           "extrapolated": len(wall) < m_count, "per_model_s": [round(x, 3) for x in wall],
           "per_model_compile_s": [round(x, 3) for x in comp]}

    # (b) vmapped: one compiled step for the M models, then the M models saved
    t0 = time.perf_counter()
    with clock:
        trained = train_shadows_vmapped(factory, pool, keep, tc)
    train_s = time.perf_counter() - t0
    vm_compile, vm_count = clock.seconds, clock.count
    t1 = time.perf_counter()
    for m, lm in enumerate(trained):
        models.save(lm, workdir / f"vmap_{m:03d}", overwrite=True)
    save_s = time.perf_counter() - t1
    vm_total = train_s + save_s
    vm = {"total_s": round(vm_total, 3), "compile_s": round(vm_compile, 3), "compilations": vm_count,
          "run_s": round(vm_total - vm_compile, 3), "save_s": round(save_s, 3)}
    for d in (seq, vm):
        d["tokens_per_s_total"] = tokens / d["total_s"]
        d["tokens_per_s_run"] = tokens / max(d["run_s"], 1e-9)
    return {"models": m_count, "family": "llama", "config": cfg.to_dict(), "params_per_model": probe.num_params(),
            "pool_rows": len(pool), "seq_tokens": int(pool.ids.shape[1]), "epochs": tc.epochs,
            "batch_size": tc.batch_size, "steps_per_model": spe * tc.epochs, "tokens": tokens,
            "sequential": seq, "vmapped": vm,
            "speedup_total": seq["total_s"] / vm["total_s"],
            "speedup_excluding_compile": seq["run_s"] / max(vm["run_s"], 1e-9)}


def ensemble_step_benchmark(cfg: Any, m_count: int, batch: int, nucleotides: int, steps: int,
                            clock: CompileClock) -> dict[str, Any]:
    """Device-side gain alone: one compiled step applied to M parameter sets in turn vs the
    vmapped step over the stacked M sets (no data loading, checkpoints or exports)."""
    loaded = [models.build("llama", cfg, seed=m) for m in range(m_count)]
    data = tokenized(loaded[0], random_dna(batch, nucleotides, 3))
    tc = TrainConfig(lr=1e-3, warmup_steps=2, batch_size=batch)
    splits = [nnx.split(lm.module, nnx.Param, ...) for lm in loaded]
    graphdef, trainable, frozen = splits[0]
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), trainable)
    plist = [nnx.to_pure_dict(s[1]) for s in splits]
    tx = make_optimizer(tc, steps + 1)
    tok = loaded[0].tokenizer
    loss_fn = make_loss(graphdef, abstract, "causal", tok.mask_id, jnp.asarray(replacement_ids(data)), tc.mask_prob)
    step = make_step(loss_fn, tx)
    ids, att, sc = (jnp.asarray(x[None]) for x in (data.ids, data.attention, data.scored))
    key = jax.random.key(0)
    one = jax.jit(step, donate_argnums=(0, 1))
    states = [tx.init(p) for p in plist]
    with clock:
        c_one = one.lower(plist[0], states[0], frozen, ids, att, sc, key).compile()
    one_compile = clock.seconds
    vstep = jax.jit(jax.vmap(step, in_axes=(0, 0, None, 0, 0, 0, 0)), donate_argnums=(0, 1))
    vp = jax.tree.map(lambda *xs: jnp.stack(xs), *plist)
    vs = jax.vmap(tx.init)(vp)
    tile = lambda x: jnp.broadcast_to(x, (m_count, *x.shape))  # noqa: E731
    vids, vatt, vsc = tile(ids), tile(att), tile(sc)
    keys = jnp.stack([jax.random.key(m) for m in range(m_count)])
    with clock:
        c_v = vstep.lower(vp, vs, frozen, vids, vatt, vsc, keys).compile()
    v_compile = clock.seconds

    def run_seq(n: int) -> None:
        for _ in range(n):
            for m in range(m_count):
                plist[m], states[m], loss, _ = c_one(plist[m], states[m], frozen, ids, att, sc, key)
        jax.block_until_ready(plist)

    def run_vmap(n: int) -> None:
        nonlocal vp, vs
        for _ in range(n):
            vp, vs, loss, _ = c_v(vp, vs, frozen, vids, vatt, vsc, keys)
        jax.block_until_ready(vp)

    run_seq(1)
    run_vmap(1)
    t0 = time.perf_counter()
    run_seq(steps)
    seq_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    run_vmap(steps)
    v_s = time.perf_counter() - t0
    tokens = int(data.attention.sum()) * m_count * steps
    return {"models": m_count, "batch": batch, "seq_tokens": int(data.ids.shape[1]), "steps": steps,
            "compile_s": {"single": round(one_compile, 3), "vmapped": round(v_compile, 3)},
            "sequential_tokens_per_s": tokens / seq_s, "vmapped_tokens_per_s": tokens / v_s, "speedup": seq_s / v_s}


# ------------------------------------------------------------------------------------------------
# Driver
# ------------------------------------------------------------------------------------------------
def ensemble_config(smoke: bool, dtype: str) -> Any:
    """~1M-parameter Llama for the ensemble (the tiny test config with --smoke)."""
    from glmjax.models.llama import LlamaConfig

    if smoke:
        return dataclasses.replace(LlamaConfig.tiny(), num_hidden_layers=1, dtype=dtype)
    return LlamaConfig(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
                       max_position_embeddings=1024, dtype=dtype)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every measurement of the module docstring; returns the JSON-able result."""
    from glmjax.models.hyena import HyenaConfig
    from glmjax.models.llama import LlamaConfig

    jax.config.update("jax_enable_compilation_cache", False)
    dtype = DTYPES[args.dtype or ("float32" if args.smoke else "bfloat16")]
    dev = jax.devices()[0]
    clock = CompileClock()
    result: dict[str, Any] = {
        "benchmark": "train", "smoke": bool(args.smoke), "dtype": dtype,
        "device": getattr(dev, "device_kind", str(dev)), "backend": jax.default_backend(),
        "device_count": jax.device_count(), "jax_version": jax.__version__,
        "flax_version": _version("flax"), "optax_version": _version("optax"), "glmjax_version": glmjax.__version__,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "python": platform.python_version(), "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    n = 512 if args.smoke else 8192
    result["matmul_peak_tflops"] = {"n": n, "dtype": dtype, "tflops": matmul_peak_tflops(n, dtype)}
    peak = result["matmul_peak_tflops"]["tflops"]

    subjects = []
    if args.smoke:
        # one-layer stand-ins: the smoke run checks the plumbing, and compilation dominates it
        subjects.append(("tiny", "llama", dataclasses.replace(LlamaConfig.tiny(), num_hidden_layers=1, dtype=dtype),
                         4, 32))
        subjects.append(("llama-100m", "llama", LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                                            num_attention_heads=4, dtype=dtype), 4, 64))
        subjects.append(("hyenadna-small-32k", "hyenadna",
                         dataclasses.replace(HyenaConfig.tiny(), n_layer=1, dtype=dtype), 4, 64))
    else:
        subjects.append(("tiny", "llama", dataclasses.replace(LlamaConfig.tiny(), dtype=dtype), args.batch,
                         args.tokens))
        subjects.append(("llama-100m", "llama", dataclasses.replace(LlamaConfig.preset("100m"), dtype=dtype),
                         args.batch, args.tokens))
        subjects.append(("hyenadna-small-32k", "hyenadna",
                         dataclasses.replace(HyenaConfig.preset("small-32k"), dtype=dtype), args.batch,
                         args.hyena_tokens))
    result["models"] = {}
    _save(result, args.out)
    for name, family, cfg, batch, nts in subjects:
        # a causal char tokenizer adds one token: nts + 1 <= context
        entry = step_benchmark(name, family, cfg, batch, nts - 1, args.steps, args.warmup, clock)
        if "tflops" in entry:
            entry["fraction_of_matmul_peak"] = entry["tflops"] / peak
        result["models"][name] = entry
        _save(result, args.out)
        _log(f"{name}: {entry['tokens_per_s']:,.0f} tokens/s (compile {entry['compile_s']:.1f} s)")

    if not args.skip_peer:
        big = result["models"]["llama-100m"]
        peer = torch_llama_peer(_cfg_of(subjects, "llama-100m"), big["batch"], big["seq_tokens"], args.steps,
                                args.warmup, dtype)
        if "flops_per_token" in big:
            peer["tflops"] = big["flops_per_token"] * peer["tokens_per_s"] / 1e12
        result["peer"] = {"llama-100m": peer}
        big["ratio_vs_peer"] = big["tokens_per_s"] / peer["tokens_per_s"]
        _save(result, args.out)
        _log(f"peer llama-100m: {peer['tokens_per_s']:,.0f} tokens/s; glmjax / peer = {big['ratio_vs_peer']:.2f}")

    if not args.skip_ensemble:
        m = args.ensemble_models if args.ensemble_models else (2 if args.smoke else 16)
        ecfg = ensemble_config(args.smoke, dtype)
        tc = TrainConfig(epochs=1 if args.smoke else args.ensemble_epochs, batch_size=8 if args.smoke else 32,
                         lr=1e-3, warmup_steps=2 if args.smoke else 10, log_every=10 ** 6, checkpoint_every=10 ** 9)
        with tempfile.TemporaryDirectory(prefix="glmjax-bench-train-") as tmp:
            ens = ensemble_benchmark(ecfg, m, 32 if args.smoke else args.ensemble_pool,
                                     31 if args.smoke else args.ensemble_tokens - 1, tc, clock, Path(tmp),
                                     seq_budget=0.0 if args.smoke else args.ensemble_seq_budget)
        result["ensemble"] = ens
        _save(result, args.out)
        ens["step_level"] = ensemble_step_benchmark(ecfg, m, tc.batch_size, 31 if args.smoke else
                                                    args.ensemble_tokens - 1, 3 if args.smoke else args.steps, clock)
        _log(f"ensemble of {m}: vmapped {ens['speedup_total']:.2f}x faster end to end, "
             f"{ens['speedup_excluding_compile']:.2f}x without compilation, "
             f"{ens['step_level']['speedup']:.2f}x per step")

    result["tokens_per_s"] = {k: v["tokens_per_s"] for k, v in result["models"].items()}
    if "peer" in result:
        result["tokens_per_s"]["peer:llama-100m"] = result["peer"]["llama-100m"]["tokens_per_s"]
    result["speedup"] = {}
    if "peer" in result:
        result["speedup"]["llama-100m_vs_peer"] = result["models"]["llama-100m"]["ratio_vs_peer"]
    if "ensemble" in result:
        e = result["ensemble"]
        result["speedup"].update({"ensemble_vmapped_vs_sequential_total": e["speedup_total"],
                                  "ensemble_vmapped_vs_sequential_excluding_compile": e["speedup_excluding_compile"],
                                  "ensemble_vmapped_vs_sequential_step": e["step_level"]["speedup"]})
    return result


def _save(result: dict[str, Any], out: str | None) -> None:
    """Write what is measured so far (atomically): a run cut off by a time limit keeps it."""
    if not out:
        return
    tmp = Path(out).with_name(Path(out).name + ".partial")
    tmp.write_text(json.dumps({**result, "finished": False}, indent=1, default=float) + "\n")
    os.replace(tmp, out)


def _cfg_of(subjects: list, name: str) -> Any:
    return next(s[2] for s in subjects if s[0] == name)


def _version(mod: str) -> str:
    try:
        return __import__(mod).__version__
    except (ImportError, AttributeError):
        return "?"


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny shapes on CPU (seconds); for tests")
    p.add_argument("--dtype", choices=sorted(DTYPES), help="compute dtype (default bf16; fp32 with --smoke)")
    p.add_argument("--batch", type=int, default=8, help="sequences per step of the single-model runs")
    p.add_argument("--tokens", type=int, default=2048, help="tokens per sequence of the Llama runs")
    p.add_argument("--hyena-tokens", type=int, default=1024, help="tokens per sequence of the HyenaDNA run")
    p.add_argument("--steps", type=int, help="timed steps (default 20; 3 with --smoke)")
    p.add_argument("--warmup", type=int, help="untimed steps after compilation (default 3; 1 with --smoke)")
    p.add_argument("--skip-peer", action="store_true", help="leave out the transformers baseline")
    p.add_argument("--skip-ensemble", action="store_true", help="leave out the shadow-ensemble comparison")
    p.add_argument("--ensemble-models", type=int, default=0, help="M (default 16; 2 with --smoke)")
    p.add_argument("--ensemble-pool", type=int, default=1024, help="pool rows (each model trains on half)")
    p.add_argument("--ensemble-tokens", type=int, default=256, help="tokens per pool sequence")
    p.add_argument("--ensemble-epochs", type=int, default=3)
    p.add_argument("--ensemble-seq-budget", type=float, default=240.0,
                   help="seconds for the sequential Trainer runs; beyond it the sequential time is "
                        "extrapolated to M models from those measured (0: train all M)")
    p.add_argument("--out", help="also write the JSON here")
    args = p.parse_args(argv)
    if args.steps is None:
        args.steps = 3 if args.smoke else 20
    if args.warmup is None:
        args.warmup = 1 if args.smoke else 3
    for name in ("batch", "tokens", "hyena_tokens", "steps", "ensemble_pool", "ensemble_tokens", "ensemble_epochs"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0:
        p.error("--warmup must be >= 0")
    if args.ensemble_seq_budget < 0:
        p.error("--ensemble-seq-budget must be >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run and print the JSON result."""
    args = parse_args(argv)
    result = run(args)
    result["finished"] = True
    text = json.dumps(result, indent=1, default=float)
    if args.out:
        _save(result, args.out)
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
