"""Benchmark: what DC-PDD, ReCaLL and the gradient-norm attack cost in ``glmjax audit``.

The job, as a user runs it (the CLI commands, in process): ``glmjax data window`` a real genome
into ``--window``-nt windows, ``glmjax data split`` 50/50, a target model of each family
(published shapes, random weights: speed does not depend on the weights), then two audits of the
same model and store (membership inference only, no canaries, no neighbourhood attack):

* **previous path**: ``--no-dcpdd --recall-shots 0 --gradnorm-rows 0``;
* **new attacks**: the defaults (DC-PDD over every window, reduced from the per-token log p while
  the target scores the store; ReCaLL and the gradient norm on ``--rows`` windows per class).

Each audit runs twice; the first (compiling, filling the compilation cache) is timed as
``cold_wall_s``, the second gives the stage timings. The difference of the ``scoring`` stages is DC-PDD's cost (plus ``dcpdd_reference``, counting the
reference n-grams); ``recall`` and ``gradnorm`` are their own stages. Prints one JSON object::

    python scripts/bench_attacks.py                      # GPU: llama small, hyenadna small-32k
    python scripts/bench_attacks.py --smoke              # tiny models, CPU
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import jax  # noqa: E402
from bench_common import CAUSAL_PRESETS, ECOLI, shared_genome  # noqa: E402
from bench_common import run_cli as _run  # noqa: E402

import glmjax  # noqa: E402
import glmjax.models  # noqa: E402

PRESETS, GENOME = CAUSAL_PRESETS, ECOLI


def _config(family: str, preset: str | None):
    cls = glmjax.models.get_family(family).config_cls
    return cls.tiny() if preset is None else cls.preset(preset)


def bench_family(family: str, preset: str | None, store: Path, work: Path, args) -> dict:
    fam = work / family
    fam.mkdir(parents=True, exist_ok=True)
    model = glmjax.models.build(family, _config(family, preset), seed=0)
    glmjax.models.save(model, fam / "target", overwrite=True)
    base = ["audit", "--model", str(fam / "target"), "--data", str(store), "--neighbours", "0",
            "--bootstrap", str(args.bootstrap), "--recall-rows", str(args.rows), "--gradnorm-rows", str(args.rows)]
    if args.dtype:
        base += ["--dtype", {"bfloat16": "bf16", "float32": "fp32"}[args.dtype]]
    runs = {}
    configs = (("previous", ["--no-dcpdd", "--recall-shots", "0", "--gradnorm-rows", "0"]), ("new_attacks", []))
    cold = {}
    for name, extra in configs:  # first runs compile (and fill the compilation cache): timed apart
        cold[name] = _run(base + ["--out", str(fam / f"{name}_cold")] + extra)
    for name, extra in configs:
        argv = base + ["--out", str(fam / name)] + extra
        wall = _run(argv)
        rep = json.loads((fam / name / "report.json").read_text())
        runs[name] = {"command": "glmjax " + " ".join(argv), "wall_s": round(wall, 3),
                      "cold_wall_s": round(cold[name], 3), "seconds": rep["seconds"],
                      "timings": rep["timings"], "skipped": rep["skipped"],
                      "auc": {k: round(a["auc"], 4) for k, a in rep["mia"]["attacks"].items()},
                      "rows": {k: a.get("rows") for k, a in rep["mia"]["attacks"].items() if a.get("rows")}}
    p, n = runs["previous"]["timings"], runs["new_attacks"]["timings"]
    return {"family": family, "preset": preset, "params": model.num_params(), "runs": runs,
            "cost_s": {"dcpdd": round(n["scoring"] - p["scoring"] + n.get("dcpdd_reference", 0.0), 3),
                       "dcpdd_reference": n.get("dcpdd_reference"), "recall": n.get("recall"),
                       "gradnorm": n.get("gradnorm"),
                       "total": round(runs["new_attacks"]["seconds"] - runs["previous"]["seconds"], 3)}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--families", default="llama,hyenadna", help="comma-separated families")
    ap.add_argument("--genome", help=f"FASTA to window (default: $GLMJAX_SHARED or ../shared, data/{GENOME})")
    ap.add_argument("--window", type=int, default=500, help="window length (ReCaLL needs room for a prefix of the same length in the context)")
    ap.add_argument("--stride", type=int, default=None, help="window stride (default: the window length)")
    ap.add_argument("--rows", type=int, default=1000, help="ReCaLL / gradient-norm windows per class")
    ap.add_argument("--bootstrap", type=int, default=200)
    ap.add_argument("--dtype", default=None, choices=["bfloat16", "float32"])
    ap.add_argument("--work", help="working folder (default: a temporary one)")
    ap.add_argument("--smoke", action="store_true", help="tiny models, the bundled lambda genome, 256 nt windows")
    args = ap.parse_args(argv)
    if args.smoke:
        from importlib import resources

        args.genome = args.genome or str(resources.files("glmjax.resources").joinpath("lambda_phage.fa.gz"))
        args.window, args.rows, args.bootstrap = 40, 50, 20
    with tempfile.TemporaryDirectory(prefix="glmjax-bench-attacks-") as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        g = shared_genome(args.genome)
        if not g.exists():
            raise SystemExit(f"genome {g} not found (pass --genome or set GLMJAX_SHARED)")
        store = work / "windows.h5"
        _run(["data", "window", str(g), "--out", str(store), "--length", str(args.window),
              "--stride", str(args.stride or args.window)])
        _run(["data", "split", str(store), "--member-fraction", "0.5", "--seed", "1"])
        with glmjax.data.store.SequenceStore(store) as s:
            rows = len(s)
        result = {"script": "scripts/bench_attacks.py", "date": time.strftime("%Y-%m-%d"),
                  "device": jax.devices()[0].device_kind, "platform": jax.devices()[0].platform,
                  "jax": jax.__version__, "python": platform.python_version(), "glmjax": glmjax.__version__,
                  "genome": str(g), "window": args.window, "stride": args.stride or args.window, "windows": rows,
                  "families": []}
        for fam in [f for f in args.families.split(",") if f]:
            result["families"].append(bench_family(fam, None if args.smoke else PRESETS.get(fam), store, work, args))
            print(json.dumps(result["families"][-1]["cost_s"]), file=sys.stderr)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
