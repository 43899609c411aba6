"""``glmjax score``, ``glmjax merge-scores`` and ``glmjax bench``."""

from __future__ import annotations

import argparse
import json
import sys

from glmjax.commands import argtypes as A
from glmjax.dtypes import DTYPE_CHOICES, dtype_name
from glmjax.errors import ConfigError


def register(sub) -> None:
    p = sub.add_parser(
        "score", help="score every sequence of a store or FASTA with a model (log-likelihood statistics)",
        description="Score every sequence of a SequenceStore (or FASTA) with a model and write a ScoreStore: "
        "sum/mean log p, per-nucleotide log p, entropy, Min-K% and Min-K%++ (5..50%), mean rank, and "
        "optionally per-token values. Causal models are scored exactly; masked LMs by pseudo-log-likelihood "
        "(--pll). A killed run resumes when the same command is run again.")
    p.add_argument("--model", required=True, help="model folder (HF snapshot or glmjax checkpoint) or Hugging Face Hub id "
                   "ORG/NAME[@REVISION] (fetched into the HF cache; HF_HUB_OFFLINE=1 reads the cache only)")
    p.add_argument("--input", required=True, help="SequenceStore (.h5) or FASTA (.fa, .fa.gz)")
    p.add_argument("--out", required=True, help="output ScoreStore (.h5)")
    p.add_argument("--pll", default=None,
                   help="masked LMs: exact (default; every token masked once), strided:K (K passes, "
                        "positions = r mod K masked together), random:K[:F] (K random masks of F=0.15 of the "
                        "tokens, seeded by --seed; each token averaged over the masks covering it)")
    p.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto",
                   help="compute dtype (auto: bf16 on GPU/TPU, fp32 on CPU); statistics are always fp32")
    p.add_argument("--batch-tokens", type=A.positive_int, default=None,
                   help="tokens per device and forward pass (default 65536 on accelerators, 4096 on CPU)")
    p.add_argument("--per-token", action="store_true", help="also store per-token log p, mu, sigma, entropy, rank")
    p.add_argument("--window", type=A.positive_int, default=None, metavar="W",
                   help="score sequences longer than W nucleotides in consecutive windows of W "
                        "(each window scored on its own; row statistics over all windows' tokens)")
    p.add_argument("--per-window", action="store_true",
                   help="with --window: one output row per window, id ID:START-END (1-based, inclusive), "
                        "instead of one row per sequence")
    p.add_argument("--seed", type=A.seed, default=0, help="seed of the random PLL masks")
    p.add_argument("--block-rows", type=A.positive_int, default=16384,
                   help="rows per block: unit of in-order writing and of resume commits")
    p.add_argument("--devices", type=A.positive_int, default=None, help="use the first N local devices (default: all)")
    p.add_argument("--host-workers", type=A.positive_int, default=None,
                   help="threads that read and tokenize blocks ahead of the devices (default: half the CPUs, "
                        "1 to 4; $GLMJAX_HOST_WORKERS)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--restart", action="store_true", help="ignore a partial output of a killed run; start over")
    p.add_argument("--trust-pickle", action="store_true", help="allow pickle-based checkpoint files")
    g = p.add_argument_group("multi-process (jax.distributed; each process writes OUT.shardIIIII-of-NNNNN.h5)")
    g.add_argument("--distributed", action="store_true",
                   help="join a multi-process run detected from the environment (TPU pod, SLURM, JAX_* vars)")
    g.add_argument("--coordinator", default=None, help="coordinator address host:port")
    g.add_argument("--num-processes", type=A.positive_int, default=None)
    g.add_argument("--process-id", type=A.count, default=None)
    p.set_defaults(func=run_score, io=(("model", "input"), ("out",)))

    m = sub.add_parser("merge-scores", help="merge the shard ScoreStores of a multi-process run",
                       description="Concatenate shard outputs of `glmjax score` (one per process) in row order. "
                       "Shards must share mode, PLL parameters, objective and model.")
    m.add_argument("shards", nargs="+", help="shard files")
    m.add_argument("--out", required=True, help="merged ScoreStore")
    m.add_argument("--overwrite", action="store_true")
    m.add_argument("--allow-partial", action="store_true", help="merge even if some shards of the run are missing")
    m.set_defaults(func=run_merge, io=(("shards:SHARD",), ("out",)))

    b = sub.add_parser("bench", help="benchmark scoring throughput (tokens/s, FLOP/s vs measured peak)",
                       description="Time the compiled scoring step on device-resident random sequences: compile "
                       "time, tokens/s, sequences/s, achieved FLOP/s as a fraction of the matmul peak and bytes/s "
                       "against the copy bandwidth (both measured in the same run), per device count.")
    src = b.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="model folder")
    src.add_argument("--family", help="randomly initialised model of this family (with --shape)")
    b.add_argument("--shape", default=None, help="preset of the family (tiny, small, 100m, ...; default tiny)")
    b.add_argument("--seq-len", type=A.positive_int, default=1000, help="sequence length in nucleotides (default 1000)")
    b.add_argument("--batch-tokens", type=A.positive_int, default=None)
    b.add_argument("--devices", default=None, help="device counts to run on, e.g. 1,2,4 (default: all)")
    b.add_argument("--pll", default=None, help="PLL mode for masked LMs (default strided:8 for benchmarks)")
    b.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto",
                   help="compute dtype (auto: bf16 on GPU/TPU, fp32 on CPU)")
    b.add_argument("--iters", type=A.positive_int, default=10)
    b.add_argument("--json", action="store_true", help="print JSON instead of a table")
    b.add_argument("--trust-pickle", action="store_true")
    b.set_defaults(func=run_bench)


def run_score(args: argparse.Namespace) -> int:
    from glmjax.engine.distributed import env_requests_distributed, initialize

    index, count = 0, 1
    if args.distributed or args.coordinator or args.num_processes or env_requests_distributed():
        index, count = initialize(args.coordinator, args.num_processes, args.process_id)
    import glmjax.models as gm
    from glmjax.engine.inputs import open_input
    from glmjax.engine.runner import parse_mode, score

    # cheap checks first: input readable, options valid, before the model is loaded
    open_input(args.input).close()
    if args.window is not None and args.window < 1:
        raise ConfigError(f"--window must be a positive number of nucleotides, not {args.window}")
    if args.per_window and args.window is None:
        raise ConfigError("--per-window needs --window N (the window length in nucleotides)")
    if args.batch_tokens is not None and args.batch_tokens < 1:
        raise ConfigError("--batch-tokens must be positive")
    if args.host_workers is not None and args.host_workers < 1:
        raise ConfigError(f"--host-workers must be at least 1, not {args.host_workers}")
    model = gm.load(args.model, trust_pickle=args.trust_pickle, dtype=dtype_name(args.dtype))
    parse_mode(model.objective, args.pll, args.seed)
    s = score(model, args.input, args.out, pll=args.pll, seed=args.seed, batch_tokens=args.batch_tokens,
              per_token=args.per_token, window=args.window, per_window=args.per_window, block_rows=args.block_rows, devices=args.devices,
              host_workers=args.host_workers,
              overwrite=args.overwrite, resume=not args.restart, process_index=index, process_count=count)
    resumed = f" (resumed after {s.resumed_rows:,} rows)" if s.resumed_rows else ""
    print(f"{s.out}: {s.rows:,} rows{resumed}, {s.mode.describe()}, {s.seconds:.1f} s, "
          f"{s.sequences_per_s:,.1f} seq/s, {s.tokens_per_s:,.0f} tok/s")
    if count > 1 and index == 0:
        print(f"merge the {count} shard files with: glmjax merge-scores {args.out.rsplit('.', 1)[0]}.shard*"
              f" --out {args.out}")
    return 0


def run_merge(args: argparse.Namespace) -> int:
    from glmjax.engine.scorestore import ScoreStore, merge_scores

    out = merge_scores(args.shards, args.out, overwrite=args.overwrite, allow_partial=args.allow_partial)
    with ScoreStore(out) as s:
        print(f"{out}: {len(s):,} rows from {len(args.shards)} shards ({s.mode})")
    return 0


def run_bench(args: argparse.Namespace) -> int:
    from glmjax.engine.bench import bench_scoring, model_for_bench
    from glmjax.engine.runner import configure_compilation_cache, parse_mode

    configure_compilation_cache()
    try:
        devices = [int(x) for x in args.devices.split(",")] if args.devices else None
    except ValueError:
        raise ConfigError(f"--devices takes counts like 1,2,4, not {args.devices!r}") from None
    model = model_for_bench(args.family, args.shape, args.model, dtype_name(args.dtype), args.trust_pickle)
    pll = args.pll or ("strided:8" if model.objective == "masked" else None)
    mode = parse_mode(model.objective, pll)
    rows = bench_scoring(model, mode, args.seq_len, args.batch_tokens, devices, args.iters)
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        print()
        return 0
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{model.family} {args.shape or ''} · {mode.describe()} · {rows[0]['dtype']} · "
              f"{rows[0]['device_kind']}")
    for c in ("devices", "compile s", "tokens/s", "seq/s", "TFLOP/s", "% peak", "GB/s", "% copy bw"):
        t.add_column(c, justify="right")
    for r in rows:
        t.add_row(str(r["devices"]), f"{r['compile_s']:.1f}", f"{r['tokens_per_s']:,.0f}",
                  f"{r['sequences_per_s']:,.1f}", f"{r['flops_per_s'] / 1e12:.3f}",
                  f"{100 * r['flops_fraction']:.1f}", f"{r['bytes_per_s'] / 1e9:.1f}",
                  f"{100 * r['bandwidth_fraction']:.1f}")
    Console().print(t)
    return 0
