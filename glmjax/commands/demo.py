"""``glmjax demo``: the whole audit on the embedded default data."""

from __future__ import annotations

from glmjax.commands import argtypes as A


def register(sub) -> None:
    p = sub.add_parser("demo", help="run the whole audit on bundled real genomes (no downloads, CPU minutes)",
                       description="Window three bundled real genomes, plant canaries at repetitions 1, 4, 16 and "
                       "64, train small models (the first family is pretrained on a fourth genome as the reference "
                       "model, then fine-tuned in full and with LoRA), audit each model with every vector, and write "
                       "OUT/report.html, OUT/report.json, OUT/audits/<model>/ and OUT/summary.json.")
    p.add_argument("--out", default="glmjax-demo", help="output folder (replaced; default glmjax-demo)")
    p.add_argument("--families", default="llama,hyenadna",
                   help="comma-separated model families to train (default llama,hyenadna); `evo` stands for "
                   "evo1,evo2 (StripedHyena 1 and 2, the Evo architectures)")
    p.add_argument("--quick", action="store_true", help="smaller run (shorter secrets, fewer epochs)")
    p.add_argument("--seed", type=A.seed, default=0)
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from glmjax.demo import run_demo
    from glmjax.errors import ConfigError

    aliases = {"evo": ("evo1", "evo2")}
    fams = tuple(dict.fromkeys(g for f in args.families.split(",") if f.strip()
                               for g in aliases.get(f.strip(), (f.strip(),))))
    if not fams:
        raise ConfigError("--families names no family")
    s = run_demo(args.out, fams, quick=args.quick, seed=args.seed)
    h = s["headline"]
    print(f"report: {Path(args.out) / 'report.html'} (all models: {Path(args.out) / 'summary.json'})")
    print(f"headline: worst-case memorization risk {h['risk']:.3f} ({h['band']}) for {h['model']}; "
          f"{s['seconds']:.0f} s")
    return 0
