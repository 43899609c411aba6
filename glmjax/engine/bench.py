"""Scoring throughput benchmark: compile time, tokens/s, sequences/s, FLOP/s and bytes/s against
the device's matmul peak and copy bandwidth, both measured in the same run.

* **matmul peak**: a square matmul (8192 on accelerators, 512 on CPU) in the scoring dtype,
  timed on one device; the peak of ``n`` devices is ``n`` times that.
* **copy bandwidth**: ``y = x + 1`` over a large float32 array (read + write bytes / time).
* **model FLOPs and bytes**: XLA's cost analysis of one plain forward pass over the shape the
  scorer runs, times the number of passes per scoring call (PLL modes run ``ceil(copies / per
  pass)`` passes per call). XLA counts dot/convolution FLOPs exactly; FFT convolutions and
  scans contribute little or nothing to its count, so bandwidth is the more telling figure for
  the long-convolution and state-space families.

Timing covers whole scoring calls (forward + fused statistics + reductions) on device-resident
batches, after a warm-up call, and ends with ``block_until_ready``.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from glmjax.engine import batching, sharding
from glmjax.engine.runner import Scorer, ScoringMode, target_mask

BANDWIDTH_BOUND_CLASSES = ("long-convolution", "state-space")


def _sync(x: Any) -> None:
    jax.tree_util.tree_map(lambda a: a.block_until_ready() if hasattr(a, "block_until_ready") else a, x)


def _time(fn, iters: int, min_seconds: float = 0.0) -> float:
    """Seconds per call of ``fn`` (after one warm-up call)."""
    _sync(fn())
    n, t0 = 0, time.perf_counter()
    while True:
        out = fn()
        n += 1
        if n >= iters and time.perf_counter() - t0 >= min_seconds:
            break
    _sync(out)
    return (time.perf_counter() - t0) / n


def measure_matmul_peak(device: jax.Device | None = None, dtype: Any = None, n: int | None = None,
                        iters: int = 10) -> float:
    """Achieved FLOP/s of a square ``n x n`` matmul on one device (chained to stay on device)."""
    device = device or jax.local_devices()[0]
    accel = device.platform != "cpu"
    n = n or (8192 if accel else 512)
    dtype = dtype or (jnp.bfloat16 if accel else jnp.float32)
    a = jax.device_put(jnp.asarray(np.random.default_rng(0).normal(size=(n, n)) / np.sqrt(n), dtype), device)
    reps = 8 if accel else 4

    @jax.jit
    def f(x):
        def body(_, y):
            return (y @ a).astype(dtype)
        return jax.lax.fori_loop(0, reps, body, x)

    f(a).block_until_ready()
    dt = _time(lambda: f(a), iters)
    return 2.0 * n ** 3 * reps / dt


def measure_copy_bandwidth(device: jax.Device | None = None, nbytes: int | None = None, iters: int = 10) -> float:
    """Achieved bytes/s of an elementwise ``x + 1`` (one read and one write per element)."""
    device = device or jax.local_devices()[0]
    nbytes = nbytes or ((1 << 30) if device.platform != "cpu" else (64 << 20))
    x = jax.device_put(jnp.zeros(nbytes // 4, jnp.float32), device)
    f = jax.jit(lambda v: v + 1.0)
    dt = _time(lambda: f(x), iters)
    return 2.0 * nbytes / dt


def _cost(compiled) -> dict[str, float]:
    ca = compiled.cost_analysis()
    if isinstance(ca, list | tuple):
        ca = ca[0] if ca else {}
    ca = ca or {}
    return {"flops": float(ca.get("flops", 0.0)), "bytes": float(ca.get("bytes accessed", 0.0))}


@dataclass
class SyntheticBatch:
    """A device-resident batch of random sequences of one length, and its host description."""

    batch: batching.Batch
    device: dict[str, jax.Array]
    tokens_per_row: int
    length: int


def synthetic_batch(scorer: Scorer, seq_len: int, seed: int = 0, rows: int | None = None) -> SyntheticBatch:
    """Random ``seq_len``-nucleotide sequences tokenized, bucketed and put on the scorer's mesh
    (as many rows as the scorer uses for that bucket)."""
    tok = scorer.model.tokenizer
    rng = np.random.default_rng(seed)
    probe = batching.tokenize_block(tok, rng.integers(0, 4, seq_len).astype(np.uint8), np.array([0, seq_len]))
    ctx = scorer.model.config.max_len
    policy = batching.padding_policy(scorer.model.spec)
    n_tok = int(probe.lengths[0])
    if n_tok > ctx:
        from glmjax.errors import ConfigError

        raise ConfigError(f"{seq_len} nt are {n_tok} tokens, more than the model's context of {ctx}; "
                          "use a shorter --seq-len")
    length = n_tok if policy == "exact" else batching.bucket_length(n_tok, ctx)
    b = rows or scorer.rows_per_batch(length)
    codes = rng.integers(0, 4, size=b * seq_len).astype(np.uint8)
    offs = np.arange(b + 1, dtype=np.int64) * seq_len
    tb = batching.tokenize_block(tok, codes, offs)
    batch = batching.assemble(tb, np.arange(b), length, b, tok.pad_id, np.arange(b), np.zeros(b, np.int64))
    per_row = int(target_mask(batch.scored, scorer.model.objective)[0].sum())
    return SyntheticBatch(batch, scorer.device_batch(batch), per_row, length)


def forward_cost(scorer: Scorer, rows: int, length: int) -> dict[str, float]:
    """XLA cost (FLOPs, bytes) of all forward passes one scoring call makes on a batch."""
    graphdef, _ = nnx.split(scorer.model.module)
    copies = scorer.copies(length)
    if scorer.mode.name == "causal":
        passes = 1
    else:
        total = length if scorer.mode.name == "pll-exact" else int(scorer.mode.param_dict["k"])
        passes = -(-total // copies)
    n = rows * copies
    ids = jax.ShapeDtypeStruct((n, length), jnp.int32)
    mask = jax.ShapeDtypeStruct((n, length), jnp.bool_)
    # one device's share of the batch, on one device: parameters as abstract values
    state = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), scorer.state)
    fwd = jax.jit(lambda st, i, m: nnx.merge(graphdef, st)(i, m))
    c = _cost(fwd.lower(state, ids, mask).compile())
    return {"flops": c["flops"] * passes, "bytes": c["bytes"] * passes, "passes": passes}


def bench_scoring(model, mode: ScoringMode, seq_len: int = 1000, batch_tokens: int | None = None,
                  devices: list[int] | None = None, iters: int = 10, min_seconds: float = 1.0,
                  peak: float | None = None, bandwidth: float | None = None) -> list[dict[str, Any]]:
    """Benchmark the scoring kernel on device-resident data, one result per device count.

    Returns:
      list of dicts: devices, rows, length, tokens_per_row, compile_s, step_s, tokens_per_s,
      sequences_per_s, flops_per_s, peak_flops_per_s, flops_fraction, bytes_per_s,
      copy_bytes_per_s, bandwidth_fraction, bound (``compute`` or ``bandwidth``).
    """
    devices = devices or [len(jax.local_devices())]
    dtype = jnp.bfloat16 if getattr(model.config, "dtype", "float32") == "bfloat16" else jnp.float32
    reps = max(2, min(iters, 10))
    peak = peak or measure_matmul_peak(dtype=dtype, iters=reps)
    bandwidth = bandwidth or measure_copy_bandwidth(iters=5 * reps)
    out = []
    for nd in devices:
        mesh = sharding.make_mesh(nd)
        scorer = Scorer(model, mode, mesh, batch_tokens=batch_tokens)
        sb = synthetic_batch(scorer, seq_len)
        t0 = time.perf_counter()
        compiled = scorer.lower(sb.device).compile()
        compile_s = time.perf_counter() - t0
        cost = forward_cost(scorer, sb.batch.ids.shape[0] // nd, sb.length)
        args = (scorer.leaves, sb.device["ids"], sb.device["attention_mask"], sb.device["scored"],
                sb.device["rows"], sb.device["pieces"])
        dt = _time(functools.partial(compiled, *args), iters, min_seconds)
        rows = sb.batch.ids.shape[0]
        flops = cost["flops"] * nd / dt
        byts = cost["bytes"] * nd / dt
        bound = "bandwidth" if model.spec.architecture_class in BANDWIDTH_BOUND_CLASSES else "compute"
        out.append({
            "family": model.family, "mode": mode.name, "devices": nd, "platform": jax.local_devices()[0].platform,
            "device_kind": jax.local_devices()[0].device_kind, "dtype": str(getattr(model.config, "dtype", "")),
            "params": model.num_params(), "seq_len": seq_len, "rows": rows, "length": sb.length,
            "tokens_per_row": sb.tokens_per_row, "forward_passes": cost["passes"], "compile_s": compile_s,
            "step_s": dt, "tokens_per_s": rows * sb.tokens_per_row / dt, "sequences_per_s": rows / dt,
            "flops_per_s": flops, "peak_flops_per_s": peak * nd, "flops_fraction": flops / (peak * nd),
            "bytes_per_s": byts, "copy_bytes_per_s": bandwidth * nd, "bandwidth_fraction": byts / (bandwidth * nd),
            "bound": bound,
        })
    return out


def model_for_bench(family: str | None = None, shape: str | None = None, path: str | None = None,
                    dtype: str | None = None, trust_pickle: bool = False, seed: int = 0):
    """A model to benchmark: a checkpoint folder, or a randomly initialised ``family`` of preset
    ``shape`` (``Config.preset(shape)``; ``tiny()`` when the family has no presets)."""
    import glmjax.models as gm
    from glmjax.errors import ConfigError

    if path:
        return gm.load(path, trust_pickle=trust_pickle, dtype=dtype)
    if not family:
        raise ConfigError("give --model DIR or --family F (with --shape NAME)")
    spec = gm.get_family(family)
    cls = spec.config_cls
    cfg = cls.preset(shape) if (shape and hasattr(cls, "preset")) else cls.tiny()
    if dtype is not None and hasattr(cfg, "dtype"):
        import dataclasses

        cfg = dataclasses.replace(cfg, dtype=gm.dtype_name(dtype))
    return gm.build(family, cfg, seed=seed, source=f"{family}:{shape or 'tiny'}:random")
