"""Throughput of glmjax's state-space models: Caduceus at 131k context, Mamba vs transformers,
and the chunked selective-scan kernel vs a plain ``lax.associative_scan``, in one run.

Sections (``--only`` selects some):

* ``kernel``: the selective scan alone (x, Δ, z ``[R, L, D]``; B, C ``[R, L, N]``; float32) on the
  Mamba-d256 layer shapes (R x L = 64 x 1k, 8 x 8k; D 512, N 16) and one Caduceus-PS 131k layer
  (4 rows = 2 directions x 2 strands of one sequence), chunked at several chunk lengths (chunks
  processed as sequential steps, or as segment sums: ``inner="segsum"``) and as one associative
  scan. Reports seconds, state updates/s (R·L·D·N / s), and the achieved bytes/s
  of the scan's unavoidable input/output traffic (``4 · (4·R·L·D + 2·R·L·N)`` bytes: x, Δ, z, y
  and B, C read/written once) against the device copy bandwidth measured in the same run.
* ``caduceus``: masked-LM scoring throughput (forward + log_softmax + gather of the input token)
  of the published ``ps-131k`` / ``ph-131k`` shapes (16 BiMamba blocks, d 256) at the native
  131072 tokens, with the largest batch that fits (chosen from XLA's memory analysis of a batch-1
  compile). There is no transformers peer: Caduceus exists only as remote code on top of
  ``mamba_ssm``'s CUDA kernels.
* ``mamba``: causal scoring (forward + log_softmax + gather of the next token) of a Mamba with
  d_model 256 and 16 layers (char vocabulary) at 1024 x 64 and 8192 x 8, glmjax vs
  ``transformers.MambaForCausalLM`` on the same GPU with the same weights (saved with
  ``save_pretrained`` and loaded by ``glmjax.models.load``). Without ``mamba_ssm`` /
  ``causal_conv1d`` installed, transformers runs its pure-PyTorch scan; the report says which.

float32 runs use full float32 matmuls in both frameworks (JAX ``highest``; torch without TF32).

Usage::

    python scripts/bench_forward_caduceus.py                   # GPU, every section
    python scripts/bench_forward_caduceus.py --only mamba,kernel
    python scripts/bench_forward_caduceus.py --smoke           # tiny CPU run

Prints one JSON object (also written to ``--out`` if given).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

# JAX and PyTorch share the GPU in this run: JAX must not reserve most of its memory up front.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from bench_common import bytes_accessed, emit_json, jax_copy_bandwidth, timed  # noqa: E402
from flax import nnx  # noqa: E402

import glmjax.models as gm  # noqa: E402
from glmjax.kernels import selective_scan as ss  # noqa: E402
from glmjax.models.caduceus import CaduceusConfig  # noqa: E402
from glmjax.models.mamba import MambaConfig  # noqa: E402

# (name, rows, length, d_inner, d_state)
KERNEL_SHAPES = [("mamba-1k-x64", 64, 1024, 512, 16), ("mamba-8k-x8", 8, 8192, 512, 16),
                 ("caduceus-ps-131k-x1", 4, 131072, 512, 16)]
SMOKE_KERNEL_SHAPES = [("smoke", 4, 300, 32, 8)]
KERNEL_CHUNKS = "32,64,128,256"
KERNEL_SEGSUM_CHUNKS = "8,16,32"
CADUCEUS_CASES = "ps-131k:bfloat16,ph-131k:bfloat16,ps-131k:float32"
SMOKE_CADUCEUS_CASES = "tiny-ps:float32,tiny:bfloat16"
MAMBA_CASES = "1024:64,8192:8"
SMOKE_MAMBA_CASES = "64:4,256:2"


def _block(y):
    return jax.block_until_ready(y)


def device_bytes(compiled) -> int | None:
    """Device memory a compiled call needs (arguments + outputs + temporaries), if reported."""
    try:
        m = compiled.memory_analysis()
        return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes)
    except Exception:  # noqa: BLE001 - not every backend reports memory
        return None


def device_limit() -> int | None:
    """Usable bytes of device 0 (None on backends without memory stats, e.g. CPU)."""
    try:
        stats = jax.devices()[0].memory_stats() or {}
    except Exception:  # noqa: BLE001
        return None
    return int(stats["bytes_limit"]) if "bytes_limit" in stats else None


def _error(e: Exception) -> dict:
    msg = str(e).splitlines()[0] if str(e) else ""
    return {"error": f"{type(e).__name__}: {msg[:300]}"}


# ---------------------------------------------------------------------------------------------
# kernel

def _run(fn, inputs: tuple, args) -> tuple[list[float], float, object, object]:
    """Compile ``fn`` for ``inputs``, time it; returns (times, compile seconds, output, compiled)."""
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*inputs).compile()
    compile_s = time.perf_counter() - t0
    times = timed(lambda: compiled(*inputs), _block, args.iters, args.warmup)
    return times, compile_s, compiled(*inputs), compiled


def kernel_case(name: str, r: int, length: int, d: int, n: int, chunks: list[int], segsum_chunks: list[int],
                args, copy_bw: float) -> dict:
    """Chunked (several chunk lengths, sequential or segment-sum chunks) vs associative selective
    scan on one shape."""
    k = jax.random.split(jax.random.key(args.seed), 6)
    inputs = (jax.random.normal(k[0], (r, length, d), jnp.float32),                             # x
              jax.nn.softplus(jax.random.normal(k[1], (r, length, d), jnp.float32) - 4.0),       # dt
              -jnp.exp(jax.random.normal(k[5], (d, n), jnp.float32)),                            # A
              jax.random.normal(k[3], (r, length, n), jnp.float32),                              # B
              jax.random.normal(k[4], (r, length, n), jnp.float32),                              # C
              jnp.ones((d,), jnp.float32),                                                       # D
              jax.random.normal(k[2], (r, length, d), jnp.float32))                              # z
    io_bytes = 4 * (4 * r * length * d + 2 * r * length * n)
    row = {"shape": name, "rows": r, "length": length, "d": d, "n": n, "min_io_bytes": io_bytes, "variants": {}}
    ref = None
    variants = [(f"chunked-{t}", dict(method="chunked", chunk_size=t)) for t in chunks]
    variants.append((f"chunked-default({ss.default_chunk_size(length)})", dict(method="chunked")))
    variants += [(f"chunked-segsum-{t}", dict(method="chunked", chunk_size=t, inner="segsum")) for t in segsum_chunks]
    variants.append(("associative", dict(method="associative")))
    for vname, kw in variants:
        try:
            times, compile_s, out, compiled = _run(lambda *a, kw=kw: ss.selective_scan(*a, **kw), inputs, args)
        except Exception as e:  # noqa: BLE001 - e.g. the associative scan running out of memory
            row["variants"][vname] = _error(e)
            continue
        med = statistics.median(times)
        res = {"median_s": med, "min_s": min(times), "compile_s": compile_s,
               "state_updates_per_s": r * length * d * n / med,
               "io_bytes_per_s": io_bytes / med, "io_fraction_of_copy_bandwidth": io_bytes / med / copy_bw}
        nb = bytes_accessed(compiled)
        if nb is not None:
            res["xla_bytes_accessed"] = nb
        if ref is None:
            ref = out
        else:
            res["max_rel_diff_vs_first"] = float(jnp.abs(out - ref).max() / jnp.abs(ref).max())
        row["variants"][vname] = res
    ok = {k: v for k, v in row["variants"].items() if "median_s" in v}
    if ok:
        best = min(ok, key=lambda k: ok[k]["median_s"])
        row["fastest"] = best
        if "associative" in ok and best != "associative":
            row["speedup_fastest_vs_associative"] = ok["associative"]["median_s"] / ok[best]["median_s"]
    return row


# ---------------------------------------------------------------------------------------------
# caduceus

def masked_score_fn(graphdef):
    """forward + log_softmax + log p of the input token at every position (float32 [B, L])."""
    def score(state, ids):
        logits = nnx.merge(graphdef, state)(ids)
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        return jnp.take_along_axis(logp, ids[..., None], axis=-1)[..., 0]
    return score


def caduceus_case(preset: str, dtype: str, length: int | None, args) -> dict:
    """Scoring throughput of one Caduceus preset at its native length, largest batch that fits."""
    cfg = dataclasses.replace(CaduceusConfig.preset(preset), dtype=dtype, scan_chunk=args.scan_chunk,
                              scan_inner=args.scan_inner)
    seq_len = length or cfg.max_len
    model = gm.build("caduceus", cfg, seed=args.seed)
    graphdef, state = nnx.split(model.module)
    score = jax.jit(masked_score_fn(graphdef))
    rng = np.random.default_rng(args.seed)
    precision = "highest" if dtype == "float32" else "default"
    row = {"preset": preset, "variant": cfg.variant, "dtype": dtype, "length": seq_len,
           "scan_chunk": cfg.scan_chunk or ss.default_chunk_size(seq_len), "scan_inner": cfg.scan_inner,
           "d_model": cfg.d_model, "n_layer": cfg.n_layer, "params": model.num_params(),
           "jax_matmul_precision": precision}

    def compile_for(batch: int):
        ids = rng.integers(7, 11, size=(batch, seq_len)).astype(np.int32)
        ids[:, -1] = 1
        ids = jnp.asarray(ids)
        with jax.default_matmul_precision(precision):
            t0 = time.perf_counter()
            c = score.lower(state, ids).compile()
        return c, ids, time.perf_counter() - t0

    try:
        batch = args.caduceus_batch or 1
        compiled, ids, compile_s = compile_for(batch)
        need, limit = device_bytes(compiled), device_limit()
        row["device_bytes_needed"] = need
        row["device_bytes_limit"] = limit
        if need and limit and not args.caduceus_batch:
            # activations grow linearly with the batch; keep 20% headroom for the allocator
            fit = int(0.8 * limit // need)
            batch = max(1, min(args.max_batch, 1 << max(0, fit.bit_length() - 1)))
            if batch != 1:
                compiled, ids, compile_s = compile_for(batch)
        times = timed(lambda: compiled(state, ids), _block, args.iters, args.warmup)
        out = np.asarray(compiled(state, ids))
    except Exception as e:  # noqa: BLE001 - report and go on with the next case
        row.update(_error(e))
        return row
    med = statistics.median(times)
    tokens = batch * seq_len
    row.update({"batch": batch, "tokens": tokens, "median_s": med, "min_s": min(times), "compile_s": compile_s,
                "tokens_per_s": tokens / med, "finite": bool(np.isfinite(out).all())})
    nb = bytes_accessed(compiled)
    if nb is not None:
        row["xla_bytes_accessed"] = nb
    return row


# ---------------------------------------------------------------------------------------------
# mamba vs transformers

def hf_path() -> str:
    fast = all(importlib.util.find_spec(m) is not None for m in ("mamba_ssm", "causal_conv1d"))
    return "mamba_ssm CUDA kernels" if fast else "pure-PyTorch selective scan (slow path)"


def bench_mamba(cases: list[tuple[int, int]], cfg: MambaConfig, args) -> list[dict]:
    import torch
    import transformers

    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    torch.manual_seed(args.seed)
    hf_cfg = transformers.MambaConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.d_model,
                                      num_hidden_layers=cfg.n_layer, state_size=cfg.d_state,
                                      conv_kernel=cfg.d_conv, expand=cfg.expand, use_cache=False)
    peer = transformers.MambaForCausalLM(hf_cfg).eval()
    with tempfile.TemporaryDirectory() as tmp:
        peer.save_pretrained(tmp)
        loaded = gm.load(tmp)
    rows = []
    for dtype in args.mamba_dtypes:
        jcfg = dataclasses.replace(loaded.config, dtype=dtype, scan_chunk=args.scan_chunk, scan_inner=args.scan_inner)
        module = gm.get_family("mamba").build(jcfg, nnx.Rngs(0))
        nnx.update(module, nnx.state(loaded.module, nnx.Param))
        graphdef, state = nnx.split(module)

        def score(state, ids, graphdef=graphdef):
            logits = nnx.merge(graphdef, state)(ids)
            logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
            return jnp.take_along_axis(logp[:, :-1], ids[:, 1:, None], axis=-1)[..., 0]

        precision = "highest" if dtype == "float32" else "default"
        for length, batch in cases:
            rng = np.random.default_rng(args.seed)
            ids_np = rng.integers(7, 11, size=(batch, length)).astype(np.int32)
            ids_np[:, 0] = 2
            ids = jnp.asarray(ids_np)
            row = {"model": f"mamba d{cfg.d_model} x{cfg.n_layer}", "length": length, "batch": batch,
                   "tokens": length * batch, "dtype": dtype, "jax_matmul_precision": precision,
                   "scan_chunk": jcfg.scan_chunk or ss.default_chunk_size(length), "scan_inner": jcfg.scan_inner}
            try:
                with jax.default_matmul_precision(precision):
                    times, compile_s, out, _ = _run(score, (state, ids), args)
                ours_logp = np.asarray(out)
            except Exception as e:  # noqa: BLE001
                row["glmjax"] = _error(e)
                rows.append(row)
                continue
            med = statistics.median(times)
            row["glmjax"] = {"median_s": med, "min_s": min(times), "compile_s": compile_s,
                             "tokens_per_s": length * batch / med}
            row["_logp"] = ours_logp
            rows.append(row)

    # the peer, after glmjax (the torch caching allocator keeps what it takes)
    for dtype in args.hf_dtypes:
        tdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
        model = peer.to(device=device, dtype=tdtype)
        for length, batch in cases:
            rng = np.random.default_rng(args.seed)
            ids_np = rng.integers(7, 11, size=(batch, length)).astype(np.int32)
            ids_np[:, 0] = 2
            tids = torch.from_numpy(ids_np).long().to(device)

            def peer_score(model=model, tids=tids):
                with torch.inference_mode():
                    logp = model(input_ids=tids, use_cache=False).logits.float().log_softmax(-1)
                    return logp[:, :-1].gather(-1, tids[:, 1:, None])[..., 0]

            sync = (lambda _: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda _: None)
            try:
                times = timed(peer_score, sync, args.hf_iters, 1)
                ref = peer_score().cpu().numpy()
                res = {"median_s": statistics.median(times), "min_s": min(times),
                       "tokens_per_s": length * batch / statistics.median(times)}
            except Exception as e:  # noqa: BLE001
                res, ref = _error(e), None
            for row in rows:
                if row["length"] == length and row["batch"] == batch:
                    row.setdefault("transformers", {})[dtype] = res
                    g = row.get("glmjax", {})
                    if "tokens_per_s" in g and "tokens_per_s" in res:
                        row.setdefault("speedup_vs_transformers", {})[dtype] = g["tokens_per_s"] / res["tokens_per_s"]
                    if ref is not None and "_logp" in row:
                        row.setdefault("max_abs_logp_diff_vs_transformers", {})[dtype] = float(
                            np.abs(row["_logp"] - ref).max())
        if device.type == "cuda":
            torch.cuda.empty_cache()
    for row in rows:
        row.pop("_logp", None)
    return rows


# ---------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark (``argv`` as on the command line); prints and returns the JSON report."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="kernel,caduceus,mamba", help="sections: kernel, caduceus, mamba")
    ap.add_argument("--caduceus-cases", default=None, help=f"preset:dtype,... (default {CADUCEUS_CASES})")
    ap.add_argument("--caduceus-length", type=int, default=None, help="default: the preset's max_len")
    ap.add_argument("--caduceus-batch", type=int, default=None, help="fixed batch (default: as fits)")
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--mamba-cases", default=None, help=f"length:batch,... (default {MAMBA_CASES})")
    ap.add_argument("--mamba-dtypes", default="float32,bfloat16")
    ap.add_argument("--hf-dtypes", default="float32")
    ap.add_argument("--kernel-chunks", default=KERNEL_CHUNKS, help="chunk lengths of the sequential-chunk scan")
    ap.add_argument("--kernel-segsum-chunks", default=KERNEL_SEGSUM_CHUNKS, help="chunk lengths of the segsum scan")
    ap.add_argument("--scan-chunk", type=int, default=None, help="models: scan chunk (default: automatic)")
    ap.add_argument("--scan-inner", default="scan", choices=("scan", "segsum"), help="models: chunk method")
    ap.add_argument("--iters", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--hf-iters", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--copy-mib", type=int, default=None)
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on CPU, a few iterations")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args(argv)
    if args.smoke:
        jax.config.update("jax_platforms", "cpu")
    args.iters = args.iters or (2 if args.smoke else 5)
    args.warmup = args.warmup or (1 if args.smoke else 2)
    args.hf_iters = args.hf_iters or (2 if args.smoke else 3)
    args.mamba_dtypes = [s.strip() for s in args.mamba_dtypes.split(",") if s.strip()]
    args.hf_dtypes = [s.strip() for s in args.hf_dtypes.split(",") if s.strip()]
    sections = {s.strip() for s in args.only.split(",")}
    copy_mib = args.copy_mib or (16 if args.smoke else 2048)

    copy_bw = jax_copy_bandwidth(copy_mib << 20, 10)
    report = {
        "benchmark": "glmjax state-space models: selective-scan kernel, Caduceus 131k, Mamba vs transformers",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "jax_device": str(jax.devices()[0].device_kind),
        "jax_backend": jax.default_backend(),
        "versions": {"python": platform.python_version(), "jax": jax.__version__, "numpy": np.__version__},
        "copy_bandwidth_bytes_per_s": copy_bw,
        "iters": args.iters, "warmup": args.warmup,
    }
    if "kernel" in sections:
        shapes = SMOKE_KERNEL_SHAPES if args.smoke else KERNEL_SHAPES
        chunks = [int(c) for c in args.kernel_chunks.split(",") if c.strip()]
        chunks = [c for c in chunks if not args.smoke or c <= 64]
        if args.smoke:
            args.kernel_segsum_chunks = ",".join(c for c in args.kernel_segsum_chunks.split(",") if int(c) <= 16)
        seg = [int(c) for c in args.kernel_segsum_chunks.split(",") if c.strip()]
        report["kernel"] = [kernel_case(*shape, chunks, seg, args, copy_bw) for shape in shapes]
    if "caduceus" in sections:
        spec = args.caduceus_cases or (SMOKE_CADUCEUS_CASES if args.smoke else CADUCEUS_CASES)
        cases = [tuple(c.strip().split(":")) for c in spec.split(",") if c.strip()]
        length = args.caduceus_length or (512 if args.smoke else None)
        report["caduceus"] = [caduceus_case(preset, dtype, length, args) for preset, dtype in cases]
    if "mamba" in sections:
        import torch
        import transformers

        spec = args.mamba_cases or (SMOKE_MAMBA_CASES if args.smoke else MAMBA_CASES)
        cases = [tuple(int(v) for v in c.strip().split(":")) for c in spec.split(",") if c.strip()]
        cfg = MambaConfig.tiny() if args.smoke else MambaConfig.preset("d256-l16")
        report["versions"].update({"torch": torch.__version__, "transformers": transformers.__version__})
        report["torch_device"] = (torch.cuda.get_device_name(0) if torch.cuda.is_available() and not args.smoke
                                  else platform.processor() or "cpu")
        report["transformers_mamba_path"] = hf_path()
        report["torch_allow_tf32"] = bool(torch.backends.cuda.matmul.allow_tf32)
        report["mamba"] = bench_mamba(cases, cfg, args)
    return emit_json(report, args.out)


if __name__ == "__main__":
    main()
