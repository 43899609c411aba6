"""Benchmark: exact exposure by trie enumeration vs scoring every candidate with a full forward pass.

For each model (random weights, published shapes: HyenaDNA ``small-32k`` and the Llama ``small``
preset by default) one canary (random prefix and secret of ``k`` nucleotides) is ranked among all
``4^k`` candidate secrets:

* **trie**: :func:`glmjax.audit.enumerate.causal_candidate_logprobs` (prefill once, one batched
  decoding step per trie level, ``(4^k - 4) / 3`` single-token rows). Timed cold (compilation
  included) and warm (a second identical run).
* **full forward** (the peer baseline, same model, same device, same dtype): a jitted forward pass
  over ``prefix + secret`` fused with the log-probability sum of the secret tokens, on a random
  sample of candidates in fixed-size batches; its throughput is **extrapolated** to ``4^k``
  candidates (scoring all 16.7M candidates of k = 12 in full is exactly what the trie avoids).
  The sampled candidates' log p are compared with the trie's.

Prints one JSON object. Examples::

    python scripts/bench_exposure.py                       # GPU: k = 12, hyenadna small-32k + llama small (bf16)
    python scripts/bench_exposure.py --dtype float32       # both paths in float32
    python scripts/bench_exposure.py --smoke               # tiny models, k = 5, CPU, seconds
    python scripts/bench_exposure.py --families llama --k 10 --memory-limit-gb 4
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

import glmjax  # noqa: E402
import glmjax.models  # noqa: E402
from glmjax.audit import candidates as en  # noqa: E402
from glmjax.audit.decoding import base_token_ids, causal_prefix_ids, index_to_codes  # noqa: E402

PRESETS = {"hyenadna": "small-32k", "llama": "small", "gpt2": "small", "mamba": "tiny"}


def _config(family: str, preset: str, dtype: str):
    import dataclasses

    cls = glmjax.models.get_family(family).config_cls
    cfg = cls.preset(preset) if hasattr(cls, "preset") else cls.tiny()
    return dataclasses.replace(cfg, dtype=dtype)


def _full_forward_fn(model):
    """Jitted ``(params, ids [B, T + k], t) -> log p [B]`` of the secret tokens (positions >= t)."""
    graphdef, params = nnx.split(model.module)

    @jax.jit
    def run(params, ids, start):
        logits = nnx.merge(graphdef, params)(ids, None).astype(jnp.float32)
        lp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
        tok = jnp.take_along_axis(lp, ids[:, 1:, None], axis=-1)[..., 0]           # [B, L-1]
        pos = jnp.arange(ids.shape[1] - 1)[None, :] + 1
        return jnp.sum(jnp.where(pos >= start, tok, 0.0), axis=1)

    return run, params


def _memory_stats() -> dict:
    try:
        stats = jax.local_devices()[0].memory_stats() or {}
    except Exception:  # noqa: BLE001 - backends without memory statistics
        stats = {}
    return {k: int(stats[k]) for k in ("peak_bytes_in_use", "bytes_limit") if k in stats}


def bench_family(family: str, preset: str, args: argparse.Namespace) -> dict:
    """Trie walk (cold, warm) and sampled full-forward baseline for one model."""
    cfg = _config(family, preset, args.dtype)
    model = glmjax.models.build(family, cfg, seed=args.seed)
    rng = np.random.default_rng(args.seed)
    prefix = rng.integers(0, 4, args.prefix_len).astype(np.uint8)
    secret_index = int(rng.integers(0, 4 ** args.k))
    limit = int(args.memory_limit_gb * 1024 ** 3)
    out: dict = {"family": family, "preset": preset, "params": model.num_params(), "dtype": args.dtype,
                 "k": args.k, "candidates": 4 ** args.k, "prefix_nt": args.prefix_len}

    t0 = time.perf_counter()
    logp, stats = en.causal_candidate_logprobs(model, prefix, args.k, memory_limit=limit)
    cold = time.perf_counter() - t0
    warm = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        logp, stats = en.causal_candidate_logprobs(model, prefix, args.k, memory_limit=limit)
        warm.append(time.perf_counter() - t0)
    trie_s = min(warm)
    rank, expo = en.exposure_of_scores(logp, secret_index)
    out["trie"] = {"cold_s": cold, "warm_s": warm, "seconds": trie_s, "candidates_per_s": 4 ** args.k / trie_s,
                   "decode_rows": stats.decode_rows, "decode_rows_needed": (4 ** args.k - 4) // 3,
                   "block": stats.block, "calls": stats.calls, "bytes_per_node": stats.bytes_per_node,
                   "memory_limit_bytes": limit, "rank": rank, "exposure_bits": expo}

    # peer baseline: full forward over prefix + secret for a random sample of candidates
    tok = model.tokenizer
    pids = causal_prefix_ids(tok, prefix)
    bids = base_token_ids(tok)
    fn, params = _full_forward_fn(model)
    sample = rng.choice(4 ** args.k, size=args.sample, replace=False)
    batch = args.batch
    nb = -(-args.sample // batch)
    sample = np.resize(sample, nb * batch)
    ids = np.concatenate([np.broadcast_to(pids, (sample.shape[0], pids.shape[0])),
                          bids[index_to_codes(sample, args.k)]], axis=1).astype(np.int32)
    start = jnp.asarray(pids.shape[0], jnp.int32)
    t0 = time.perf_counter()
    np.asarray(fn(params, jnp.asarray(ids[:batch]), start))                   # compile + one batch
    compile_s = time.perf_counter() - t0
    dev = [jax.device_put(ids[i * batch:(i + 1) * batch]) for i in range(nb)]
    jax.block_until_ready(dev)
    t0 = time.perf_counter()
    res = [fn(params, d, start) for d in dev]
    full = np.concatenate([np.asarray(r) for r in res])
    full_s = time.perf_counter() - t0
    rate = nb * batch / full_s
    extrap = 4 ** args.k / rate
    diff = np.abs(full - logp[sample])
    out["full_forward"] = {"sampled_candidates": int(nb * batch), "batch": batch, "tokens_per_candidate":
                           int(ids.shape[1]), "seconds_sampled": full_s, "compile_s": compile_s,
                           "candidates_per_s": rate, "extrapolated_seconds_all": extrap,
                           "extrapolated": True,
                           "max_abs_logp_diff_vs_trie": float(diff.max()),
                           "max_rel_logp_diff_vs_trie": float((diff / np.abs(full)).max())}
    out["speedup_trie_vs_full"] = extrap / trie_s
    out["memory"] = _memory_stats()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--families", default="hyenadna,llama", help="comma-separated causal families")
    ap.add_argument("--k", type=int, default=12, help="secret length in nucleotides (4^k candidates)")
    ap.add_argument("--prefix-len", type=int, default=64, help="canary prefix length in nucleotides")
    ap.add_argument("--sample", type=int, default=65536, help="candidates scored by the full-forward baseline")
    ap.add_argument("--batch", type=int, default=4096, help="full-forward batch (candidates per call)")
    ap.add_argument("--memory-limit-gb", type=float, default=8.0,
                    help="trie decoding-state memory limit (the library default is 2 GB)")
    ap.add_argument("--dtype", default=None,
                    help="compute dtype of both paths (default: bfloat16 on GPU/TPU, float32 on CPU)")
    ap.add_argument("--repeats", type=int, default=1, help="warm trie runs (the fastest is reported)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true", help="tiny models, k = 5: a CPU check that it runs")
    args = ap.parse_args(argv)
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    if args.dtype is None:
        args.dtype = "float32" if jax.default_backend() == "cpu" else "bfloat16"
    if args.smoke:
        args.k, args.prefix_len, args.sample, args.batch = 5, 16, 256, 64
        args.memory_limit_gb = min(args.memory_limit_gb, 0.0005)
    result = {
        "benchmark": "exact exposure: trie enumeration vs full-forward scoring of every candidate",
        "note": "full-forward time is measured on a random sample of candidates and extrapolated to 4^k",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"), "smoke": args.smoke,
        "backend": jax.default_backend(), "device": str(jax.devices()[0].device_kind),
        "jax": jax.__version__, "glmjax": glmjax.__version__, "python": platform.python_version(),
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "results": [],
    }
    for fam in families:
        preset = "tiny" if args.smoke else PRESETS.get(fam, "tiny")
        result["results"].append(bench_family(fam, preset, args))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
