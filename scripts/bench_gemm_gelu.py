"""Speed of ``gelu(x @ w + b)`` (exact GELU): glmjax's fused Hopper kernel vs the unfused paths.

The NT-v1 feed-forward's first projection and its GELU, timed four or five ways in the same run
on the same operands (``x [M, K]`` and ``w [K, N]`` in bf16, a float32 bias):

* ``fused``: ``glmjax.kernels.gemm_gelu.matmul_bias_gelu`` (GELU in the GEMM epilogue; Hopper
  only) with the configuration ``config_for`` picks, and ``fused_cooperative`` with the
  cooperative schedule (``COOPERATIVE_CONFIG``) where that is not the one picked;
* ``xla_unfused``: what glmjax compiles without the kernel (cuBLAS GEMM + bias, then the GELU
  table lookup as its own pass; Triton GEMMs off as for NT);
* ``xla_gemm_only``: the GEMM + bias alone (the floor for any unfused path);
* ``torch``: PyTorch's ``F.gelu(F.linear(x, w, b))`` in bf16, as Hugging Face's ESM runs it.

The default shape is NT-v1-500M's fc1 at batch 64 x 1000 tokens. The sides alternate over
``--rounds``; each figure is the median over rounds of the mean time of ``--iters`` calls.

Usage::

    python scripts/bench_gemm_gelu.py                        # GPU (Hopper for the fused kernel)
    python scripts/bench_gemm_gelu.py --m 65000 --out r.json # a partial last row block

Prints one JSON object (also written to ``--out`` if given).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # torch shares the GPU

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from bench_common import emit_json  # noqa: E402

from glmjax.kernels import gemm_gelu  # noqa: E402
from glmjax.models.layers import gelu_erf  # noqa: E402


def _mean_ms(fn, sync, iters: int) -> float:
    t0 = time.perf_counter()
    for _ in range(iters):
        out = fn()
    sync(out)
    return (time.perf_counter() - t0) / iters * 1e3


def run(args) -> dict:
    m, k, n = args.m, args.k, args.n
    rng = np.random.default_rng(0)
    x_np = rng.normal(size=(m, k)).astype(np.float32)
    w_np = (rng.normal(size=(k, n)) * 0.03).astype(np.float32)
    b_np = (rng.normal(size=(n,)) * 0.1).astype(np.float32)
    x = jnp.asarray(x_np, jnp.bfloat16)
    w = jnp.asarray(w_np, jnp.bfloat16)
    b = jnp.asarray(b_np)
    opts = {"xla_gpu_enable_triton_gemm": False} if jax.default_backend() == "gpu" else None
    sides = {
        "xla_unfused": jax.jit(lambda x, w, b: gelu_erf(jnp.dot(x, w) + b.astype(x.dtype)), compiler_options=opts),
        "xla_gemm_only": jax.jit(lambda x, w, b: jnp.dot(x, w) + b.astype(x.dtype), compiler_options=opts),
    }
    config = gemm_gelu.config_for(x.shape, w.shape, x.dtype)
    fused_ok = gemm_gelu.supported(x.shape, w.shape, x.dtype)
    if fused_ok:
        sides["fused"] = jax.jit(functools.partial(gemm_gelu.matmul_bias_gelu, config=config))
        coop = gemm_gelu.COOPERATIVE_CONFIG
        if config != coop and gemm_gelu.supported(x.shape, w.shape, x.dtype, coop):
            sides["fused_cooperative"] = jax.jit(functools.partial(gemm_gelu.matmul_bias_gelu, config=coop))
    calls = {name: (lambda f=f: f(x, w, b), jax.block_until_ready) for name, f in sides.items()}
    torch_info = None
    try:
        import torch
        import torch.nn.functional as F

        if torch.cuda.is_available():
            dev = torch.device("cuda")
            tx = torch.from_numpy(x_np).to(dev, torch.bfloat16)
            tw = torch.from_numpy(w_np.T.copy()).to(dev, torch.bfloat16)  # nn.Linear's [out, in]
            tb = torch.from_numpy(b_np).to(dev, torch.bfloat16)

            def torch_sync(_):
                torch.cuda.synchronize(dev)

            calls["torch"] = (lambda: F.gelu(F.linear(tx, tw, tb)), torch_sync)
            torch_info = {"version": torch.__version__, "device": torch.cuda.get_device_name(dev)}
    except ImportError:
        pass
    for fn, sync in calls.values():  # compile and warm up
        for _ in range(args.warmup):
            sync(fn())
    per_round: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(args.rounds):
        for name, (fn, sync) in calls.items():
            per_round[name].append(_mean_ms(fn, sync, args.iters))
    ms = {name: statistics.median(v) for name, v in per_round.items()}
    flops = 2.0 * m * k * n
    report = {
        "benchmark": "gelu(x @ w + b), exact GELU, bf16 operands, float32 bias",
        "shape": {"m": m, "k": k, "n": n},
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "jax_device": str(jax.devices()[0].device_kind),
        "versions": {"python": platform.python_version(), "jax": jax.__version__},
        "torch": torch_info,
        "fused_kernel": fused_ok,
        "config": dataclasses.asdict(config) if fused_ok else None,
        "rounds": args.rounds, "iters": args.iters,
        "ms": ms, "ms_per_round": per_round,
        "tflops": {name: flops / (v * 1e-3) / 1e12 for name, v in ms.items()},
    }
    if fused_ok:
        y = np.asarray(sides["fused"](x, w, b), np.float32)
        r = np.asarray(gemm_gelu.reference(x, w, b), np.float32)
        report["max_abs_diff_vs_reference"] = float(np.abs(y - r).max())
        report["speedup_vs_xla_unfused"] = ms["xla_unfused"] / ms["fused"]
        if "fused_cooperative" in ms:
            report["speedup_vs_cooperative"] = ms["fused_cooperative"] / ms["fused"]
        if "torch" in ms:
            report["speedup_vs_torch"] = ms["torch"] / ms["fused"]
    return report


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--m", type=int, default=64000, help="rows of x (default 64000 = 64 x 1000 tokens)")
    ap.add_argument("--k", type=int, default=1280, help="inner dimension (default 1280, NT-v1-500M width)")
    ap.add_argument("--n", type=int, default=5120, help="columns of w (default 5120, NT-v1-500M FFN)")
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
    ap.add_argument("--iters", type=int, default=20, help="calls per round and side (default 20)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args(argv)
    if min(args.m, args.k, args.n, args.rounds, args.iters) < 1 or args.warmup < 0:
        print("bench_gemm_gelu: error: sizes, --rounds and --iters must be at least 1", file=sys.stderr)
        raise SystemExit(2)
    report = run(args)
    return emit_json(report, args.out)


if __name__ == "__main__":
    main()
