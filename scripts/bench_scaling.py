"""Multi-GPU scaling of ``glmjax score``: the same end-to-end run on 1, 2, 4 (and 8) devices.

Runs :mod:`bench_score` (stores of >= 1 M sequences of 1 kb, data-parallel over a ``Mesh``) for each
model and device count, then reports tokens/s and scaling efficiency
``tokens_per_s(n) / (n * tokens_per_s(1))`` per device count, next to the kernel-alone throughput on
the same devices (so a shortfall can be attributed: host input when end-to-end falls behind the
kernel; compilation is excluded from the steady-state figures; collectives when the kernel itself
does not scale).

    python scripts/bench_scaling.py --devices 1,2,4 --rows 1000000 --json-out scaling.json

Prints JSON. ``--smoke`` runs a tiny CPU version (8 host devices are forced when XLA_FLAGS is unset).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def efficiency(result: dict) -> list[dict]:
    """Scaling rows (model, devices, tokens/s, efficiency, kernel tokens/s, kernel efficiency)."""
    rows = []
    for m in result.get("models", []):
        e2e = {r["devices"]: r for r in m.get("end_to_end", [])}
        kern = {k["devices"]: k["tokens_per_s"] for k in m.get("kernel", [])}
        if 1 not in e2e:
            continue
        base = e2e[1]["steady_tokens_per_s"]
        kbase = kern.get(1)
        for n, r in sorted(e2e.items()):
            tps = r["steady_tokens_per_s"]
            rows.append({"model": f"{m['family']}:{m['shape']}", "devices": n, "rows": r["rows"],
                         "tokens_per_s": tps, "efficiency": tps / (n * base),
                         "kernel_tokens_per_s": kern.get(n),
                         "kernel_efficiency": (kern[n] / (n * kbase)) if kbase and n in kern else None,
                         "fraction_of_kernel": r.get("fraction_of_kernel"), "wall_s": r["wall_s"]})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", default="1,2,4", help="device counts (default 1,2,4)")
    p.add_argument("--models", default="hyenadna:small-32k,nt:v2-100m")
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--workdir", default="/tmp/glmjax-scaling")
    p.add_argument("--json-out", default=None)
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args(argv)
    if args.smoke and "XLA_FLAGS" not in os.environ:
        os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    sys.path.insert(0, str(ROOT / "scripts"))
    import bench_score

    raw = Path(args.workdir) / "bench_score.json"
    raw.parent.mkdir(parents=True, exist_ok=True)
    bargs = ["--devices", args.devices, "--json-out", str(raw), "--workdir", args.workdir, "--skip-torch"]
    # every device count scores the same store of --rows sequences (bench_score's "small" store)
    bargs += ["--skip-large"]
    bargs += ["--smoke"] if args.smoke else ["--models", args.models, "--rows-small", str(args.rows)]
    bench_score.main(bargs)
    result = json.loads(raw.read_text())
    out = {"benchmark": "glmjax score scaling over devices", "environment": result.get("environment"),
           "scaling": efficiency(result), "raw": result}
    text = json.dumps(out, indent=2)
    if args.json_out:
        Path(args.json_out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
