"""Every membership attack side by side on one audit of a model that memorised its members.

The job, with the CLI commands a user runs (in process): ``glmjax data window`` a genome,
``glmjax data split`` 50/50, ``glmjax train`` a target model on the members, ``glmjax
train-shadows`` shadow models on random halves of all windows (LiRA, RMIA), then ``glmjax audit
--shadows`` (no reference model: the reference-ratio attack is listed as skipped). Prints one JSON object and, with ``--md-out``, writes the table
(AUC with its bootstrap interval, TPR at 1 % FPR, the ROC-hull AUC, rows evaluated)::

    python scripts/compare_attacks.py --genome ecoli.fa.gz --md-out table.md       # GPU
    python scripts/compare_attacks.py --smoke                                      # CPU, minutes
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import jax  # noqa: E402
from bench_common import run_cli as _run  # noqa: E402

import glmjax  # noqa: E402
import glmjax.models  # noqa: E402


def table(rep: dict) -> str:
    rows = ["| attack | AUC | 95 % CI | TPR @ 1 % FPR | ROC-hull AUC | rows |", "|---|---|---|---|---|---|"]
    attacks = rep["mia"]["attacks"]
    for name, a in sorted(attacks.items(), key=lambda kv: -kv[1]["auc"]):
        lo, hi = a["auc_ci"]
        n = a.get("rows") or a["n_members"] + a["n_nonmembers"]
        rows.append(f"| `{name}` | {a['auc']:.3f} | [{lo:.3f}, {hi:.3f}] | {a['tpr_at_fpr']['0.01']:.3f} | "
                    f"{a['randomised']['auc']:.3f} | {n:,} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--genome", help="FASTA (default: the bundled lambda phage genome)")
    ap.add_argument("--family", default="llama")
    ap.add_argument("--hidden", type=int, default=128, help="hidden size of the family's tiny config")
    ap.add_argument("--layers", type=int, default=None, help="layers (default: the tiny config's)")
    ap.add_argument("--window", type=int, default=64)
    ap.add_argument("--stride", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--shadows", type=int, default=8)
    ap.add_argument("--lr", type=float, default=5e-3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--bootstrap", type=int, default=200)
    ap.add_argument("--md-out", help="write the markdown table here")
    ap.add_argument("--work", help="working folder (default: a temporary one)")
    ap.add_argument("--smoke", action="store_true", help="4 shadows, 10 epochs")
    args = ap.parse_args(argv)
    if args.smoke:
        args.shadows, args.epochs, args.bootstrap = 4, 10, 50
    if args.genome is None:
        from importlib import resources

        args.genome = str(resources.files("glmjax.resources").joinpath("lambda_phage.fa.gz"))
    with tempfile.TemporaryDirectory(prefix="glmjax-compare-attacks-") as tmp:
        w = Path(args.work or tmp)
        w.mkdir(parents=True, exist_ok=True)
        t = {}
        t["window"] = _run(["data", "window", args.genome, "--out", str(w / "w.h5"), "--length", str(args.window),
                            "--stride", str(args.stride)])
        t["split"] = _run(["data", "split", str(w / "w.h5"), "--member-fraction", "0.5", "--seed", "3"])
        cls = glmjax.models.get_family(args.family).config_cls
        cfg = cls.tiny()
        changes = {}
        for name, value in (("hidden_size", args.hidden), ("d_model", args.hidden)):
            if hasattr(cfg, name):
                changes[name] = value
        if hasattr(cfg, "intermediate_size"):
            changes["intermediate_size"] = 2 * args.hidden
        if args.layers is not None:
            for name in ("num_layers", "num_hidden_layers", "n_layer"):  # the families name it differently
                if hasattr(cfg, name):
                    changes[name] = args.layers
        cfg = dataclasses.replace(cfg, **changes)
        init = glmjax.models.save(glmjax.models.build(args.family, cfg, seed=0), w / "init", overwrite=True)
        common = ["--config", str(init), "--data", str(w / "w.h5"), "--epochs", str(args.epochs), "--lr", str(args.lr),
                  "--batch-size", str(args.batch_size), "--warmup-steps", "5"]
        t["train"] = _run(["train", *common, "--out", str(w / "target"), "--val-fraction", "0"])
        t["train_shadows"] = _run(["train-shadows", *common, "--out", str(w / "shadows"), "--num-models",
                                   str(args.shadows)])
        audit = ["audit", "--model", str(w / "target" / "model"), "--data", str(w / "w.h5"), "--shadows",
                 str(w / "shadows"), "--out", str(w / "report"), "--bootstrap", str(args.bootstrap)]
        t["audit"] = _run(audit)
        rep = json.loads((w / "report" / "report.json").read_text())
        md = table(rep)
        result = {"script": "scripts/compare_attacks.py", "date": time.strftime("%Y-%m-%d"),
                  "device": jax.devices()[0].device_kind, "jax": jax.__version__, "python": platform.python_version(),
                  "glmjax": glmjax.__version__, "genome": args.genome, "family": args.family,
                  "config": glmjax.models.base.config_to_dict(cfg), "params": glmjax.models.load(init).num_params(),
                  "args": vars(args), "seconds": {k: round(v, 2) for k, v in t.items()},
                  "audit_command": "glmjax " + " ".join(audit), "timings": rep["timings"],
                  "skipped": rep["skipped"], "strongest_attack": rep["mia"]["strongest_attack"],
                  "attacks": {k: {"auc": a["auc"], "auc_ci": a["auc_ci"], "tpr_at_1pct_fpr": a["tpr_at_fpr"]["0.01"],
                                  "hull_auc": a["randomised"]["auc"], "rows": a.get("rows")}
                              for k, a in rep["mia"]["attacks"].items()},
                  "table": md}
        if args.md_out:
            Path(args.md_out).write_text(md + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
