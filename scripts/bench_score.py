#!/usr/bin/env python
"""End-to-end scoring benchmark of glmjax against the kernel alone and against PyTorch.

What it measures (one JSON document on stdout; also written to ``--json-out`` after each stage so
that a run cut short still leaves its results):

1. **data**: time to generate a synthetic SequenceStore of ``--rows`` i.i.d. sequences of
   ``--seq-len`` nt (and a ``--rows-small`` one), on this machine's disk.
2. per model (``--models``, default a HyenaDNA-small shape and an NT-v2-100M shape, random
   weights, bf16 on accelerators):

   * **kernel**: the compiled scoring step alone on device-resident batches of the same bucket
     and batch size as the end-to-end run (tokens/s, FLOP/s vs the measured matmul peak, bytes/s
     vs the measured copy bandwidth), for every device count of ``--devices``;
   * **end_to_end**: ``glmjax score`` (library call, same code path as the CLI) on the small store
     for every device count and on the large store with the largest count: steady-state tokens/s
     (between the first and the last commit, compilation excluded), wall time, and the ratio to
     the kernel alone (target >= 0.85); peak RSS after the small and after the large run (host
     memory must stay flat);
   * **host**: the host pipeline alone (read, tokenize, bucket, pad) in tokens/s;
   * **torch** (NT only): HF ``transformers`` ``EsmForMaskedLM`` with rotary positions and the same
     width/depth/FFN FLOPs (the stock class closest to NT-v2; NT-v2 itself is remote code) scoring
     the same masked batches in PyTorch (eager, same dtype, same batch): tokens/s and our ratio
     (target >= 1.4);
   * **exact PLL** (NT only): our exact PLL (all masked copies batched in one jit) vs the naive
     loop of one masked copy per forward in PyTorch, sequences/s.

Masked models are scored end to end in ``random:1`` mode (one BERT-style 15 % masked pass per
sequence): the unit of work of every PLL variant, comparable with one PyTorch forward.

Run on a GPU machine::

    python scripts/bench_score.py --devices 1,2,4 --json-out bench_score.json

and tiny on CPU (a few minutes at most)::

    python scripts/bench_score.py --smoke
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("GLMJAX_QUIET", "1")

import jax  # noqa: E402
import numpy as np  # noqa: E402

import glmjax  # noqa: E402
from glmjax.data.store import Record, SequenceStoreWriter  # noqa: E402
from glmjax.engine import batching  # noqa: E402
from glmjax.engine.bench import bench_scoring, measure_copy_bandwidth, measure_matmul_peak, model_for_bench  # noqa: E402
from glmjax.engine.inputs import StoreInput  # noqa: E402
from glmjax.engine.runner import (  # noqa: E402
    Scorer,
    configure_compilation_cache,
    parse_mode,
    prepare_block,
    score,
)
from glmjax.engine.scorestore import ScoreStore  # noqa: E402
from glmjax.engine.sharding import make_mesh  # noqa: E402

FULL_MODELS = "hyenadna:small-32k,nt:v2-100m"
SMOKE_MODELS = "hyenadna:tiny,nt:tiny-v2"


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def env_info() -> dict:
    info = {"glmjax": glmjax.__version__, "jax": jax.__version__, "python": platform.python_version(),
            "backend": jax.default_backend(), "devices": len(jax.local_devices()),
            "device_kind": jax.local_devices()[0].device_kind, "host_cpus": os.cpu_count()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_cuda"] = bool(torch.cuda.is_available())
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        info["torch"] = None
    return info


def make_store(path: Path, rows: int, seq_len: int, seed: int = 0, block: int = 65536) -> float:
    """Write ``rows`` random sequences of ``seq_len`` nt; returns seconds."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    if path.exists():
        path.unlink()
    with SequenceStoreWriter(path, provenance={"synthetic": {"rows": rows, "seq_len": seq_len, "seed": seed}}) as w:
        for lo in range(0, rows, block):
            n = min(block, rows - lo)
            codes = rng.integers(0, 4, size=(n, seq_len), dtype=np.uint8)
            w.add([Record(id=f"syn{lo + i}", codes=codes[i], kind="synthetic") for i in range(n)])
    return time.perf_counter() - t0


def end_to_end(model, store: Path, out: Path, pll: str | None, batch_tokens: int | None, devices: int,
               block_rows: int) -> dict:
    """One ``score`` run: steady-state throughput between the first and last commit."""
    commits: list[tuple[float, int]] = []
    t0 = time.perf_counter()
    s = score(model, store, out, pll=pll, batch_tokens=batch_tokens, devices=devices, overwrite=True,
              resume=False, block_rows=block_rows, on_commit=lambda r: commits.append((time.perf_counter(), r)))
    wall = time.perf_counter() - t0
    with ScoreStore(out) as st:
        ntok = np.concatenate([[0], np.cumsum(st.column("n_tokens").astype(np.int64))])
    res = {"devices": devices, "rows": s.rows, "tokens": int(ntok[-1]), "wall_s": wall,
           "tokens_per_s_overall": float(ntok[-1] / wall), "compiled_shapes": sorted(map(list, s.shapes))}
    if len(commits) >= 2:
        (ta, ra), (tb, rb) = commits[0], commits[-1]
        res["steady_tokens_per_s"] = float((ntok[rb] - ntok[ra]) / (tb - ta))
        res["steady_sequences_per_s"] = float((rb - ra) / (tb - ta))
    else:
        res["steady_tokens_per_s"] = res["tokens_per_s_overall"]
        res["steady_sequences_per_s"] = s.rows / wall
    res["peak_rss_mb"] = peak_rss_mb()
    out.unlink(missing_ok=True)
    return res


def host_pipeline(model, store: Path, batch_tokens: int | None, rows: int, block_rows: int) -> dict:
    """The host side alone: read, tokenize, bucket and pad ``rows`` rows into batches."""
    src = StoreInput(store)
    scorer = Scorer(model, parse_mode(model.objective, "random:1" if model.objective == "masked" else None),
                    make_mesh(1), batch_tokens=batch_tokens)
    policy = batching.padding_policy(model.spec)
    ctx = model.config.max_len
    t0 = time.perf_counter()
    tokens = 0
    n = min(rows, len(src))
    for lo in range(0, n, block_rows):
        hi = min(lo + block_rows, n)
        blk = prepare_block(src, lo, hi, model.tokenizer, model.objective, None)
        for length, idx in batching.plan_batches(blk.tokens.lengths, policy, ctx, scorer.rows_per_batch):
            batching.assemble(blk.tokens, idx, length, scorer.rows_per_batch(length), model.tokenizer.pad_id,
                              blk.seq + lo, blk.piece)
        tokens += int(blk.n_target.sum())
    dt = time.perf_counter() - t0
    src.close()
    return {"rows": n, "seconds": dt, "tokens_per_s": tokens / dt, "sequences_per_s": n / dt}


def _esm_like(nt_cfg, dtype: str):
    """HF EsmForMaskedLM with rotary positions matching an NT-v2 config's width, depth and FFN FLOPs."""
    import torch
    from transformers import EsmConfig, EsmForMaskedLM

    # NT-v2's SwiGLU FFN (d -> 2f, f -> d) costs 3 d f multiply-adds per token; ESM's GELU FFN
    # (d -> I -> d) costs 2 d I: I = 1.5 f matches the FLOPs.
    cfg = EsmConfig(vocab_size=nt_cfg.vocab_size, hidden_size=nt_cfg.hidden_size,
                    num_hidden_layers=nt_cfg.num_layers, num_attention_heads=nt_cfg.num_heads,
                    intermediate_size=int(1.5 * nt_cfg.intermediate_size) if nt_cfg.ffn_glu else nt_cfg.intermediate_size,
                    position_embedding_type="rotary", max_position_embeddings=nt_cfg.max_position_embeddings,
                    token_dropout=False, mask_token_id=nt_cfg.mask_token_id, pad_token_id=nt_cfg.pad_token_id,
                    layer_norm_eps=nt_cfg.layer_norm_eps)
    torch.manual_seed(0)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    m = EsmForMaskedLM(cfg).eval().to(dev)
    if dtype == "bfloat16":
        m = m.to(torch.bfloat16)
    return m, dev, sum(p.numel() for p in m.parameters())


def _torch_stats(logits, targets):
    """The statistics glmjax computes per token (fp32): log p, mu, sigma, entropy, rank."""
    import torch

    z = logits.float()
    lp = torch.log_softmax(z, dim=-1)
    p = lp.exp()
    mu = (p * lp).sum(-1)
    sigma = (p * (lp - mu[..., None]) ** 2).sum(-1).sqrt()
    zt = z.gather(-1, targets[..., None])
    rank = (z > zt).sum(-1)
    return lp.gather(-1, targets[..., None])[..., 0], mu, sigma, rank


def torch_masked_scoring(model, batch: batching.Batch, mask_id: int, iters: int, tokens_per_row: int,
                         dtype: str) -> dict:
    """PyTorch scoring of one BERT-style masked copy per sequence (the batch ``random:1`` runs)."""
    import torch

    esm, dev, nparams = _esm_like(model.config, dtype)
    rng = np.random.default_rng(0)
    ids = batch.ids.copy()
    masked = (rng.random(ids.shape) < 0.15) & batch.scored
    ids[masked] = mask_id
    x = torch.as_tensor(ids, dtype=torch.long, device=dev)
    am = torch.as_tensor(batch.attention_mask, dtype=torch.long, device=dev)
    tgt = torch.as_tensor(batch.ids, dtype=torch.long, device=dev)

    def step():
        with torch.inference_mode():
            return _torch_stats(esm(input_ids=x, attention_mask=am).logits, tgt)

    def sync():
        if dev == "cuda":
            torch.cuda.synchronize()

    step()
    sync()
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    sync()
    dt = (time.perf_counter() - t0) / iters
    rows = ids.shape[0]
    return {"class": "transformers.EsmForMaskedLM (rotary)", "params": nparams, "rows": rows,
            "length": int(ids.shape[1]), "step_s": dt, "tokens_per_s": rows * tokens_per_row / dt,
            "sequences_per_s": rows / dt}


def torch_naive_exact_pll(model, seq_len: int, n_seqs: int, dtype: str) -> dict:
    """The naive exact PLL: one forward of one masked copy per position, in PyTorch."""
    import torch

    esm, dev, _ = _esm_like(model.config, dtype)
    tok = model.tokenizer
    rng = np.random.default_rng(1)

    def sync():
        if dev == "cuda":
            torch.cuda.synchronize()

    def one(codes):
        e = tok.encode_codes(codes)
        ids = torch.as_tensor(e.ids[None], dtype=torch.long, device=dev)
        total = 0.0
        with torch.inference_mode():
            for t in np.flatnonzero(e.scored):
                x = ids.clone()
                x[0, t] = tok.mask_id
                lp = torch.log_softmax(esm(input_ids=x).logits[0, t].float(), -1)
                total += float(lp[e.ids[t]])
        return total

    one(rng.integers(0, 4, seq_len).astype(np.uint8))  # warm-up
    sync()
    t0 = time.perf_counter()
    for _ in range(n_seqs):
        one(rng.integers(0, 4, seq_len).astype(np.uint8))
    sync()
    dt = time.perf_counter() - t0
    return {"sequences": n_seqs, "seconds": dt, "sequences_per_s": n_seqs / dt}


def run_model(spec: str, args, stores: dict, result: dict, peak: float, bw: float, dump) -> None:
    family, _, shape = spec.partition(":")
    dtype = "fp32" if jax.default_backend() == "cpu" else "bf16"
    model = model_for_bench(family, shape or None, dtype=dtype)
    pll = "random:1" if model.objective == "masked" else None
    mode = parse_mode(model.objective, pll)
    entry = {"family": family, "shape": shape, "objective": model.objective, "mode": mode.describe(),
             "params": model.num_params(), "dtype": model.config.dtype}
    result["models"].append(entry)
    devs = args.device_counts
    entry["kernel"] = bench_scoring(model, mode, args.seq_len, args.batch_tokens, devs, iters=args.iters,
                                    min_seconds=args.min_seconds, peak=peak, bandwidth=bw)
    dump()
    entry["host"] = host_pipeline(model, stores["small"], args.batch_tokens, args.rows_small, args.block_rows)
    dump()
    entry["end_to_end"] = []
    for d in devs:
        r = end_to_end(model, stores["small"], Path(args.workdir) / "scores.h5", pll, args.batch_tokens, d,
                       args.block_rows)
        r["store"] = "small"
        entry["end_to_end"].append(r)
        dump()
    entry["peak_rss_mb_small"] = peak_rss_mb()
    if not args.skip_large:
        r = end_to_end(model, stores["large"], Path(args.workdir) / "scores.h5", pll, args.batch_tokens, max(devs),
                       args.block_rows)
        r["store"] = "large"
        entry["end_to_end"].append(r)
        entry["peak_rss_mb_large"] = peak_rss_mb()
    kernel_by_dev = {k["devices"]: k["tokens_per_s"] for k in entry["kernel"]}
    for r in entry["end_to_end"]:
        r["fraction_of_kernel"] = r["steady_tokens_per_s"] / kernel_by_dev[r["devices"]]
    dump()
    if model.objective == "masked" and not args.skip_torch:
        try:
            import torch  # noqa: F401
        except ImportError:
            entry["torch"] = "torch not installed"
        else:
            scorer = Scorer(model, mode, make_mesh(1), batch_tokens=args.batch_tokens)
            from glmjax.engine.bench import synthetic_batch

            sb = synthetic_batch(scorer, args.seq_len)
            tdt = "bfloat16" if model.config.dtype == "bfloat16" else "float32"
            entry["torch"] = torch_masked_scoring(model, sb.batch, model.tokenizer.mask_id, args.iters,
                                                  sb.tokens_per_row, tdt)
            entry["torch"]["glmjax_kernel_ratio"] = kernel_by_dev[1] / entry["torch"]["tokens_per_s"] \
                if 1 in kernel_by_dev else None
            dump()
            exact = bench_scoring(model, parse_mode("masked", "exact"), args.pll_seq_len, args.batch_tokens, [1],
                                  iters=max(2, args.iters // 4), min_seconds=args.min_seconds, peak=peak,
                                  bandwidth=bw)[0]
            naive = torch_naive_exact_pll(model, args.pll_seq_len, args.naive_seqs, tdt)
            entry["exact_pll"] = {"seq_len": args.pll_seq_len, "glmjax_sequences_per_s": exact["sequences_per_s"],
                                  "glmjax_compile_s": exact["compile_s"], "torch_naive": naive,
                                  "speedup": exact["sequences_per_s"] / naive["sequences_per_s"]}
            dump()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny CPU run: small models, few rows")
    p.add_argument("--models", default=None, help=f"family:preset list (default {FULL_MODELS})")
    p.add_argument("--rows", type=int, default=1_000_000, help="rows of the large store")
    p.add_argument("--rows-small", type=int, default=100_000, help="rows of the small store")
    p.add_argument("--seq-len", type=int, default=1000)
    p.add_argument("--pll-seq-len", type=int, default=1000, help="sequence length of the exact-PLL comparison")
    p.add_argument("--naive-seqs", type=int, default=2, help="sequences for the naive PyTorch PLL loop")
    p.add_argument("--batch-tokens", type=int, default=None)
    p.add_argument("--block-rows", type=int, default=16384)
    p.add_argument("--devices", default=None, help="device counts, e.g. 1,2,4 (default: all local devices)")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--min-seconds", type=float, default=2.0)
    p.add_argument("--workdir", default="/tmp/glmjax_bench", help="where the synthetic stores are written")
    p.add_argument("--skip-large", action="store_true", help="skip the large-store end-to-end run")
    p.add_argument("--skip-torch", action="store_true")
    p.add_argument("--json-out", default=None, help="also write the JSON here (updated after each stage)")
    args = p.parse_args(argv)
    if args.smoke:
        args.models = args.models or SMOKE_MODELS
        args.rows, args.rows_small = 600, 120
        args.seq_len, args.pll_seq_len, args.naive_seqs = 60, 40, 1
        args.iters, args.min_seconds = 2, 0.0
        args.block_rows = 128
        args.batch_tokens = args.batch_tokens or 2048
        args.workdir = args.workdir if args.workdir != "/tmp/glmjax_bench" else "/tmp/glmjax_bench_smoke"
    models = (args.models or FULL_MODELS).split(",")
    args.device_counts = [int(x) for x in args.devices.split(",")] if args.devices else [len(jax.local_devices())]
    configure_compilation_cache()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    result: dict = {"benchmark": "glmjax score end to end", "smoke": args.smoke, "env": env_info(),
                    "args": {k: v for k, v in vars(args).items() if k != "device_counts"}, "models": []}

    def dump() -> None:
        if args.json_out:
            Path(args.json_out).write_text(json.dumps(result, indent=2))

    stores = {"small": work / "synthetic_small.h5", "large": work / "synthetic_large.h5"}
    result["data"] = {"small_rows": args.rows_small, "small_generate_s": make_store(stores["small"], args.rows_small,
                                                                                   args.seq_len, seed=1)}
    if not args.skip_large:
        result["data"]["large_rows"] = args.rows
        result["data"]["large_generate_s"] = make_store(stores["large"], args.rows, args.seq_len, seed=2)
    result["data"]["seq_len"] = args.seq_len
    accel = jax.default_backend() != "cpu"
    import jax.numpy as jnp

    peak = measure_matmul_peak(dtype=jnp.bfloat16 if accel else jnp.float32)
    bw = measure_copy_bandwidth()
    result["device"] = {"matmul_peak_flops_per_s": peak, "matmul_dtype": "bfloat16" if accel else "float32",
                        "copy_bytes_per_s": bw}
    dump()
    for spec in models:
        run_model(spec, args, stores, result, peak, bw, dump)
    dump()
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
