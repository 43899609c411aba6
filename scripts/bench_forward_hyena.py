"""Throughput of glmjax HyenaDNA scoring vs the plain PyTorch HyenaDNA forward, in the same run.

Measures forward + log-softmax + gather of the true next token (per-token log p, float32) on
random DNA with the weights of one randomly initialised model shared by both implementations
(the PyTorch model is initialised, its ``state_dict`` is converted by glmjax's own checkpoint
converter). Cases default to the published shapes ``small-32k`` at 32768 tokens x batch 8 and
``tiny-1k`` at 1024 tokens x batch 256, in float32 and bfloat16 compute (the FFT stays float32
in both implementations). Matmuls of the float32 runs use full float32 precision in both (torch's
default; JAX is asked for ``highest``).

These models are small (d = 128-256) and bandwidth-bound, so the report also gives the bytes
XLA's cost analysis counts for the compiled glmjax step, the achieved bytes/s, and the device
copy bandwidth measured in the same run (bytes read + written by an elementwise pass over a
large array), as the ceiling to compare against.

Usage::

    python scripts/bench_forward_hyena.py                 # GPU: the default cases
    python scripts/bench_forward_hyena.py --smoke         # tiny CPU run (seconds)
    python scripts/bench_forward_hyena.py --cases small-32k:32768:8 --dtypes bfloat16 --torch-compile

Prints one JSON object (also written to ``--out`` if given).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

# JAX and PyTorch share the GPU in this run: JAX must not reserve most of its memory up front.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts" / "torch_ref"))
sys.path.insert(0, str(ROOT / "scripts"))

import hyena_torch  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from bench_common import bytes_accessed, emit_json, jax_copy_bandwidth, timed, torch_sync  # noqa: E402
from flax import nnx  # noqa: E402

from glmjax.models import hyena  # noqa: E402
from glmjax.models.checkpoints import TensorSource, fill_module  # noqa: E402

DEFAULT_CASES = "small-32k:32768:8,tiny-1k:1024:256"
SMOKE_CASES = "tiny:64:2"


def parse_cases(spec: str) -> list[tuple[str, int, int]]:
    """``"preset:length:batch,..."`` -> ``[(preset, length, batch), ...]``."""
    out = []
    for item in spec.split(","):
        name, length, batch = item.strip().split(":")
        out.append((name, int(length), int(batch)))
    return out


def torch_copy_bandwidth(nbytes: int, iters: int, device: torch.device) -> float:
    """Bytes/s (read + written) of ``dst.copy_(src)`` on ``device``."""
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    times = timed(lambda: dst.copy_(src), lambda _: torch_sync(device), iters, 2)
    return 2 * src.numel() * 4 / min(times)


def make_models(preset: str, dtype: str, seed: int):
    """The torch peer (random init, fp32) and a glmjax module holding the same weights."""
    cfg = hyena.HyenaConfig.preset(preset)
    cfg = hyena.HyenaConfig.from_dict({**cfg.to_dict(), "dtype": dtype})
    torch.manual_seed(seed)
    peer = hyena_torch.HyenaTorchLM(hyena_torch.HyenaTorchConfig(cfg.to_dict())).eval()
    tensors = {k: v.detach().float().numpy() for k, v in peer.state_dict().items()}
    module = hyena.build(cfg, nnx.Rngs(seed))
    fill_module(module, hyena.convert_hf(TensorSource(tensors, "torch peer"), cfg), origin="torch peer")
    return cfg, module, peer


def bench_case(preset: str, length: int, batch: int, dtype: str, args, device: torch.device,
               copy_bw: float) -> dict:
    """Time glmjax and the PyTorch peer on one shape and dtype; one JSON row (times in seconds)."""
    cfg, module, peer = make_models(preset, dtype, args.seed)
    rng = np.random.default_rng(args.seed)
    ids_np = rng.integers(7, 11, size=(batch, length), dtype=np.int32)
    ids_np[:, -1] = 1  # [SEP] closes every sequence, as the tokenizer does
    tokens = batch * length

    graphdef, state = nnx.split(module)

    def score(state, ids):
        logits = nnx.merge(graphdef, state)(ids)
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        return jnp.take_along_axis(logp[:, :-1], ids[:, 1:, None], axis=-1)[..., 0]

    ids = jnp.asarray(ids_np)
    precision = "highest" if dtype == "float32" else "default"
    with jax.default_matmul_precision(precision):
        t0 = time.perf_counter()
        compiled = jax.jit(score).lower(state, ids).compile()
        compile_s = time.perf_counter() - t0
    ours_times = timed(lambda: compiled(state, ids), lambda y: y.block_until_ready(), args.iters, args.warmup)
    ours_logp = np.asarray(compiled(state, ids))
    nbytes = bytes_accessed(compiled)

    tdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    peer = peer.to(device=device, dtype=tdtype)
    tids = torch.from_numpy(ids_np).long().to(device)

    def peer_score(model):
        with torch.inference_mode():
            logp = model(tids).float().log_softmax(-1)
            return logp[:, :-1].gather(-1, tids[:, 1:, None])[..., 0]

    results = {}
    variants = [("eager", peer)]
    if args.torch_compile:
        variants.append(("compiled", torch.compile(peer)))
    peer_logp = None
    for name, model in variants:
        try:
            times = timed(lambda m=model: peer_score(m), lambda _: torch_sync(device), args.iters, args.warmup)
        except Exception as e:  # noqa: BLE001 - report a failing peer variant instead of aborting the run
            results[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
            continue
        results[name] = {"median_s": statistics.median(times), "min_s": min(times),
                         "tokens_per_s": tokens / statistics.median(times)}
        if peer_logp is None:
            peer_logp = peer_score(model).cpu().numpy()
    del peer, variants
    if device.type == "cuda":
        torch.cuda.empty_cache()

    ours_med = statistics.median(ours_times)
    ours = {"median_s": ours_med, "min_s": min(ours_times), "tokens_per_s": tokens / ours_med,
            "compile_s": compile_s}
    if nbytes is not None:
        ours["xla_bytes_accessed"] = nbytes
        ours["bytes_per_s"] = nbytes / ours_med
        ours["fraction_of_copy_bandwidth"] = nbytes / ours_med / copy_bw
    row = {"preset": preset, "length": length, "batch": batch, "tokens": tokens, "dtype": dtype,
           "fft": "float32", "jax_matmul_precision": precision,
           "torch_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32), "d_model": cfg.d_model, "n_layer": cfg.n_layer, "glmjax": ours,
           "torch": results}
    eager = results.get("eager", {})
    if "tokens_per_s" in eager:
        row["speedup_vs_torch_eager"] = ours["tokens_per_s"] / eager["tokens_per_s"]
    comp = results.get("compiled", {})
    if "tokens_per_s" in comp:
        row["speedup_vs_torch_compiled"] = ours["tokens_per_s"] / comp["tokens_per_s"]
    if peer_logp is not None:
        row["max_abs_logp_diff_vs_torch"] = float(np.abs(ours_logp - peer_logp).max())
    return row


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark (``argv`` as on the command line); prints and returns the JSON report."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default=None, help=f"preset:length:batch,... (default {DEFAULT_CASES})")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--iters", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--copy-mib", type=int, default=None, help="array size of the bandwidth probe")
    ap.add_argument("--torch-compile", action="store_true", help="also time torch.compile of the peer")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on CPU, a few iterations")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args(argv)
    if args.smoke:
        jax.config.update("jax_platforms", "cpu")
    args.cases = args.cases or (SMOKE_CASES if args.smoke else DEFAULT_CASES)
    args.iters = args.iters or (2 if args.smoke else 20)
    args.warmup = args.warmup or (1 if args.smoke else 3)
    copy_mib = args.copy_mib or (16 if args.smoke else 2048)

    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    jax_bw = jax_copy_bandwidth(copy_mib << 20, max(args.iters, 5))
    torch_bw = torch_copy_bandwidth(copy_mib << 20, max(args.iters, 5), device)
    report = {
        "benchmark": "hyenadna forward + log_softmax + gather (tokens/s)",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "jax_device": str(jax.devices()[0].device_kind),
        "jax_backend": jax.default_backend(),
        "torch_device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "versions": {"python": platform.python_version(), "jax": jax.__version__, "torch": torch.__version__,
                     "numpy": np.__version__},
        "copy_bandwidth_bytes_per_s": {"jax": jax_bw, "torch": torch_bw},
        "iters": args.iters, "warmup": args.warmup,
        "results": [],
    }
    for preset, length, batch in parse_cases(args.cases):
        for dtype in args.dtypes.split(","):
            report["results"].append(bench_case(preset, length, batch, dtype.strip(), args, device, jax_bw))
    return emit_json(report, args.out)


if __name__ == "__main__":
    main()
