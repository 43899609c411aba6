"""Benchmark: exact exposure by trie enumeration vs scoring every candidate with a full forward pass.

For each model (random weights, published shapes: HyenaDNA ``small-32k`` and the Llama ``small``
preset by default) canaries (random prefixes and secrets of ``k`` nucleotides) are ranked among
all ``4^k`` candidate secrets:

* **trie**: :func:`glmjax.audit.candidates.causal_candidate_logprobs_many` with one canary
  (prefix state computed once and shared by every trie node, one batched decoding step per trie
  level, ``(4^k - 4) / 3`` single-token rows). Timed cold (compilation included) and warm.
* **trie_copied_state**: the same walk with every node carrying a copy of the whole decoding
  state, prefix included (the path before shared-prefix decoding).
* **trie_batched**: ``--canaries`` canaries walked in the same device calls.
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


def full_forward(model, prefix: np.ndarray, k: int, sample: int, batch: int, rng: np.random.Generator,
                 trie_logp: np.ndarray | None = None) -> dict:
    """The peer baseline: a jitted full forward pass over ``prefix + secret`` for ``sample`` random
    candidates in batches of ``batch``; throughput extrapolated to ``4^k`` candidates, and the
    largest difference to the trie's log p of the same candidates when ``trie_logp`` is given."""
    tok = model.tokenizer
    pids = causal_prefix_ids(tok, prefix)
    bids = base_token_ids(tok)
    fn, params = _full_forward_fn(model)
    pick = rng.choice(4 ** k, size=min(sample, 4 ** k), replace=False)
    nb = -(-pick.shape[0] // batch)
    pick = np.resize(pick, nb * batch)
    ids = np.concatenate([np.broadcast_to(pids, (pick.shape[0], pids.shape[0])),
                          bids[index_to_codes(pick, k)]], axis=1).astype(np.int32)
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
    out = {"sampled_candidates": int(nb * batch), "batch": batch, "tokens_per_candidate": int(ids.shape[1]),
           "seconds_sampled": full_s, "compile_s": compile_s, "candidates_per_s": rate,
           "extrapolated_seconds_all": 4 ** k / rate, "extrapolated": True}
    if trie_logp is not None:
        diff = np.abs(full - trie_logp[pick])
        out["max_abs_logp_diff_vs_trie"] = float(diff.max())
        out["max_rel_logp_diff_vs_trie"] = float((diff / np.abs(full)).max())
    return out


def _walk(model, prefixes, k: int, limit: int, repeats: int, **kw) -> tuple[dict, np.ndarray]:
    """Cold and warm timings of one batched trie walk over ``prefixes``."""
    t0 = time.perf_counter()
    logp, stats = en.causal_candidate_logprobs_many(model, prefixes, k, memory_limit=limit, **kw)
    cold = time.perf_counter() - t0
    warm = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        logp, stats = en.causal_candidate_logprobs_many(model, prefixes, k, memory_limit=limit, **kw)
        warm.append(time.perf_counter() - t0)
    best = min(warm)
    n = len(prefixes) * 4 ** k
    return {"canaries": len(prefixes), "cold_s": cold, "warm_s": warm, "seconds": best, "candidates": n,
            "candidates_per_s": n / best, "decode_rows": stats.decode_rows,
            "decode_rows_needed": len(prefixes) * (4 ** k - 4) // 3, "block": stats.block,
            "canaries_per_call": stats.canaries_per_call, "calls": stats.calls,
            "bytes_per_node": stats.bytes_per_node, "shared_bytes": stats.shared_bytes,
            "shared_prefix": stats.shared_prefix, "memory_limit_bytes": limit}, logp


def bench_family(family: str, preset: str, args: argparse.Namespace) -> dict:
    """Trie walks (shared prefix, one canary and a batch of canaries; copied state, one canary)
    and the sampled full-forward baseline for one model."""
    cfg = _config(family, preset, args.dtype)
    model = glmjax.models.build(family, cfg, seed=args.seed)
    rng = np.random.default_rng(args.seed)
    prefixes = [rng.integers(0, 4, args.prefix_len).astype(np.uint8) for _ in range(args.canaries)]
    secret_index = int(rng.integers(0, 4 ** args.k))
    limit = en.default_memory_limit() if args.memory_limit_gb is None else int(args.memory_limit_gb * 1024 ** 3)
    out: dict = {"family": family, "preset": preset, "params": model.num_params(), "dtype": args.dtype,
                 "k": args.k, "candidates": 4 ** args.k, "prefix_nt": args.prefix_len}

    one, logp = _walk(model, prefixes[:1], args.k, limit, args.repeats, canaries_per_call=1)
    rank, expo = en.exposure_of_scores(logp[0], secret_index)
    out["trie"] = {**one, "rank": rank, "exposure_bits": expo}
    copied, logp_c = _walk(model, prefixes[:1], args.k, limit, args.repeats, canaries_per_call=1,
                           share_prefix=False)
    copied["max_abs_logp_diff_vs_shared"] = float(np.abs(logp_c[0] - logp[0]).max())
    out["trie_copied_state"] = copied
    if args.canaries > 1:
        out["trie_batched"], _ = _walk(model, prefixes, args.k, limit, args.repeats)
    out["full_forward"] = ff = full_forward(model, prefixes[0], args.k, args.sample, args.batch, rng, logp[0])
    for key in ("trie", "trie_copied_state", "trie_batched"):
        if key in out:
            out[key]["speedup_vs_full_forward"] = out[key]["candidates_per_s"] / ff["candidates_per_s"]
    out["memory"] = _memory_stats()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--families", default="hyenadna,llama", help="comma-separated causal families")
    ap.add_argument("--k", type=int, default=12, help="secret length in nucleotides (4^k candidates)")
    ap.add_argument("--prefix-len", type=int, default=64, help="canary prefix length in nucleotides")
    ap.add_argument("--sample", type=int, default=65536, help="candidates scored by the full-forward baseline")
    ap.add_argument("--batch", type=int, default=4096, help="full-forward batch (candidates per call)")
    ap.add_argument("--memory-limit-gb", type=float, default=None,
                    help="trie decoding-state memory limit per device (default: the library's, a quarter of "
                    "the device memory)")
    ap.add_argument("--dtype", default=None,
                    help="compute dtype of both paths (default: bfloat16 on GPU/TPU, float32 on CPU)")
    ap.add_argument("--repeats", type=int, default=1, help="warm trie runs (the fastest is reported)")
    ap.add_argument("--canaries", type=int, default=16,
                    help="canaries (random prefixes) of the batched walk (1: no batched walk)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true", help="tiny models, k = 5: a CPU check that it runs")
    args = ap.parse_args(argv)
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    if args.dtype is None:
        args.dtype = "float32" if jax.default_backend() == "cpu" else "bfloat16"
    if args.smoke:
        args.k, args.prefix_len, args.sample, args.batch, args.canaries = 5, 16, 256, 64, 4
        args.memory_limit_gb = 0.0005
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
