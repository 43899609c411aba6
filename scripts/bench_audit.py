"""Benchmark: ``glmjax audit`` end to end on a real genome, stage by stage, with the exact
exposure also done the way it was done before it was batched, and against full-forward scoring.

The job, as a user runs it (every step is the CLI command, in process):

1. ``glmjax data window`` E. coli K-12 MG1655 into ``--window``-nt windows;
2. ``glmjax data canaries`` ``--canaries`` canaries (``--prefix-len`` + ``--k`` nt) and
   ``--controls`` never-planted controls, screened against the windows;
3. ``glmjax data plant`` at repetitions 1, 4, 16, 64 and ``glmjax data split`` 50/50;
4. a target and a reference model of each family (published shapes, random weights: speed does
   not depend on the weights), saved as glmjax folders;
5. ``glmjax audit --reference REF --exact-k-max K --exact-budget inf`` (neighbourhood attack on,
   every canary's exposure exact over all 4^k candidates), its ``report.json`` timings.

Then, on the same model and canaries, in the same process:

* **kernel**: the batched exact exposure alone (:func:`exact_exposures`, warm, on
  ``--kernel-canaries`` canaries, scaled to all);
* **per canary**: the path before batching, one canary per call with every trie node carrying a
  copy of the whole decoding state, timed on ``--per-canary`` canaries and extrapolated to all;
* **full forward**: scoring candidates with a full forward pass over prefix + secret, timed on a
  sample and extrapolated to every candidate of every canary (what the trie walk avoids).

Prints one JSON object. Examples::

    python scripts/bench_audit.py                         # GPU: llama small + hyenadna small-32k, k = 12
    python scripts/bench_audit.py --families llama --k 10
    python scripts/bench_audit.py --smoke                 # tiny models, k = 8, CPU, a few minutes
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from bench_common import CAUSAL_PRESETS, ECOLI, shared_genome  # noqa: E402
from bench_common import run_cli as _run  # noqa: E402
from bench_exposure import full_forward  # noqa: E402

import glmjax  # noqa: E402
import glmjax.models  # noqa: E402
from glmjax.audit import candidates as en  # noqa: E402

PRESETS, GENOME = CAUSAL_PRESETS, ECOLI


def prepare_data(work: Path, args: argparse.Namespace) -> dict:
    """Windows, canaries, planting and the split, each with its wall time."""
    g = shared_genome(args.genome)
    if not g.exists():
        raise SystemExit(f"genome {g} not found (pass --genome or set GLMJAX_SHARED)")
    t = {}
    t["window"] = _run(["data", "window", str(g), "--out", str(work / "windows.h5"), "--length", str(args.window)])
    t["canaries"] = _run(["data", "canaries", "--out", str(work / "canaries.json"), "--num", str(args.canaries),
                          "--prefix-len", str(args.prefix_len), "--secret-len", str(args.k), "--controls",
                          str(args.controls), "--seed", "1", "--screen", str(work / "windows.h5")])
    t["plant"] = _run(["data", "plant", str(work / "windows.h5"), "--canaries", str(work / "canaries.json"),
                       "--schedule", "1,4,16,64", "--out", str(work / "planted.h5"), "--seed", "1"])
    t["split"] = _run(["data", "split", str(work / "planted.h5"), "--member-fraction", "0.5", "--seed", "1"])
    with glmjax.data.store.SequenceStore(work / "planted.h5") as s:
        rows = len(s)
    return {"genome": str(g), "rows": rows, "seconds": t}


def _config(family: str, preset: str):
    cls = glmjax.models.get_family(family).config_cls
    return cls.preset(preset) if hasattr(cls, "preset") else cls.tiny()


def bench_family(family: str, preset: str, work: Path, args: argparse.Namespace) -> dict:
    fam = work / family
    for name, seed in (("target", 0), ("reference", 1)):
        glmjax.models.save(glmjax.models.build(family, _config(family, preset), seed=seed), fam / name,
                           overwrite=True)
    dtype = {"bfloat16": "bf16", "float32": "fp32"}[args.dtype]
    argv = ["audit", "--model", str(fam / "target"), "--data", str(work / "planted.h5"), "--canaries",
            str(work / "planted.canaries.json"), "--reference", str(fam / "reference"), "--out",
            str(fam / "report"), "--dtype", dtype, "--exact-k-max", str(args.k), "--exact-budget", "inf"]
    wall = _run(argv)
    rep = json.loads((fam / "report" / "report.json").read_text())
    exact = [c for c in rep["canaries"] if c["exposure_method"] == "exact"]
    out: dict = {"family": family, "preset": preset, "dtype": args.dtype, "k": args.k,
                 "audit": {"command": "glmjax " + " ".join(argv), "wall_s": wall, "seconds": rep["seconds"],
                           "timings": rep["timings"], "exposure_plan": rep["exposure_plan"],
                           "canaries": len(rep["canaries"]), "exact_canaries": len(exact)}}

    # the same exact exposure outside the audit, on the same model and canaries
    model = glmjax.models.load(fam / "target", dtype=args.dtype)
    out["params"] = model.num_params()
    manifest = json.loads((work / "planted.canaries.json").read_text())
    entries = [e for e in manifest["canaries"] if e.get("role", "canary") in ("canary", "control")]
    n_cand = len(entries) * 4 ** args.k
    sub = entries[:args.kernel_canaries] if args.kernel_canaries else entries
    t0 = time.perf_counter()
    res = en.exact_exposures(model, sub)
    kernel_sub = time.perf_counter() - t0
    kernel = kernel_sub * len(entries) / len(sub)
    stats = res[0].stats
    out["kernel"] = {"canaries_timed": len(sub), "seconds_timed": kernel_sub, "seconds": kernel,
                     "extrapolated": len(sub) < len(entries), "canaries": len(entries), "candidates": n_cand,
                     "candidates_per_s": n_cand / kernel, "canaries_per_call": stats.canaries_per_call,
                     "block": stats.block, "calls": stats.calls, "decode_rows": stats.decode_rows,
                     "bytes_per_node": stats.bytes_per_node, "shared_bytes": stats.shared_bytes,
                     "memory_limit_bytes": en.default_memory_limit()}
    ranks = {r.canary_id: r.rank for r in res}
    n_old = min(args.per_canary, len(entries))
    t0 = time.perf_counter()
    old = en.exact_exposures(model, entries[:n_old], share_prefix=False, canaries_per_call=1)
    old_s = time.perf_counter() - t0
    per = old_s / n_old
    out["per_canary"] = {"canaries_timed": n_old, "seconds_timed": old_s, "seconds_per_canary": per,
                         "extrapolated_seconds_all": per * len(entries), "extrapolated": True,
                         "candidates_per_s": 4 ** args.k / per,
                         "ranks_equal_batched": all(r.rank == ranks[r.canary_id] for r in old)}
    ff = full_forward(model, np.asarray(glmjax.alphabet.encode(entries[0]["prefix"])), args.k, args.sample,
                      args.batch, np.random.default_rng(0))
    ff["extrapolated_seconds_all"] *= len(entries)
    out["full_forward"] = ff
    out["speedup"] = {"kernel_vs_per_canary": out["per_canary"]["extrapolated_seconds_all"] / kernel,
                      "kernel_vs_full_forward": ff["extrapolated_seconds_all"] / kernel,
                      "audit_exposure_vs_per_canary": out["per_canary"]["extrapolated_seconds_all"]
                      / rep["timings"]["exposure"]}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--families", default="llama,hyenadna", help="comma-separated causal families")
    ap.add_argument("--genome", help=f"FASTA to window (default: $GLMJAX_SHARED or ../shared, data/{GENOME})")
    ap.add_argument("--window", type=int, default=512, help="window length in nucleotides")
    ap.add_argument("--canaries", type=int, default=100)
    ap.add_argument("--controls", type=int, default=16)
    ap.add_argument("--prefix-len", type=int, default=32)
    ap.add_argument("--k", type=int, default=12, help="secret length in nucleotides (4^k candidates)")
    ap.add_argument("--kernel-canaries", type=int, default=16,
                    help="canaries of the warm batched exposure run outside the audit (0: all)")
    ap.add_argument("--per-canary", type=int, default=2, help="canaries timed on the one-canary copied-state path")
    ap.add_argument("--sample", type=int, default=65536, help="candidates scored by the full-forward baseline")
    ap.add_argument("--batch", type=int, default=4096, help="full-forward batch (candidates per call)")
    ap.add_argument("--dtype", default=None, choices=["bfloat16", "float32"],
                    help="compute dtype (default: bfloat16 on GPU/TPU, float32 on CPU)")
    ap.add_argument("--work", help="working folder (default: a temporary one)")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny models, k = 8, the bundled lambda-phage genome in 48-nt windows: a CPU check")
    args = ap.parse_args(argv)
    if args.dtype is None:
        args.dtype = "float32" if jax.default_backend() == "cpu" else "bfloat16"
    if args.smoke:
        from importlib import resources

        args.k, args.canaries, args.controls, args.window = 8, 6, 2, 48
        args.genome = args.genome or str(resources.files("glmjax.resources").joinpath("lambda_phage.fa.gz"))
        args.sample, args.batch, args.per_canary = 256, 64, 1
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    result = {
        "benchmark": "glmjax audit end to end, and its exact exposure: batched vs per canary vs full forward",
        "note": "per-canary and full-forward times are measured on a subset and extrapolated to all canaries",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"), "smoke": args.smoke,
        "backend": jax.default_backend(), "device": str(jax.devices()[0].device_kind),
        "devices": jax.device_count(), "jax": jax.__version__, "glmjax": glmjax.__version__,
        "python": platform.python_version(),
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        result["data"] = prepare_data(work, args)
        result["results"] = []
        for fam in families:
            preset = "tiny" if args.smoke else PRESETS.get(fam, "tiny")
            result["results"].append(bench_family(fam, preset, work, args))
            print(json.dumps(result["results"][-1]), file=sys.stderr)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
