"""Timing and device probes shared by the benchmark scripts (``scripts/bench_*.py``).

Needs the installed package; torch is imported only by the functions that need it, so JAX-only
benchmarks run without it.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp


def timed(fn: Callable[[], Any], sync: Callable[[Any], Any], iters: int, warmup: int) -> list[float]:
    """Wall seconds of ``iters`` calls of ``fn`` (each synchronised) after ``warmup`` calls."""
    for _ in range(warmup):
        sync(fn())
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        sync(fn())
        times.append(time.perf_counter() - t0)
    return times


def torch_sync(device) -> None:
    """Wait for the work queued on a torch ``device`` (no-op on CPU)."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def jax_copy_bandwidth(nbytes: int, iters: int) -> float:
    """Bytes/s (read + written) of a jitted elementwise pass over an ``nbytes`` float32 array."""
    x = jnp.ones((nbytes // 4,), jnp.float32)
    f = jax.jit(lambda a: a * 2.0)
    return 2 * x.nbytes / min(timed(lambda: f(x), jax.block_until_ready, iters, 2))


def bytes_accessed(compiled) -> float | None:
    """XLA's 'bytes accessed' of a compiled computation (None if the backend does not report it)."""
    try:
        ca = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - some backends do not implement cost analysis
        return None
    if isinstance(ca, (list, tuple)):
        ca = ca[0] if ca else None
    val = (ca or {}).get("bytes accessed")
    return float(val) if val is not None else None


def emit_json(report: dict, out: str | None) -> dict:
    """Print ``report`` as indented JSON and, if ``out`` is given, write it there atomically
    (a temporary file renamed into place: an interrupted run leaves no half-written report)."""
    text = json.dumps(report, indent=2)
    print(text)
    if out:
        path = Path(out)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text + "\n")
        os.replace(tmp, path)
    return report


def run_cli(argv: list[str]) -> float:
    """Run one ``glmjax`` command in process (its own output goes to stderr, so that stdout holds
    the benchmark's JSON); wall seconds. Exits with the command's message when it fails."""
    from glmjax.cli import main as cli

    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):
        rc = cli(argv)
    if rc != 0:
        raise SystemExit(f"glmjax {' '.join(argv)} exited with {rc}")
    return time.perf_counter() - t0


#: published causal shapes the audit benchmarks run (family -> preset)
CAUSAL_PRESETS = {"llama": "small", "hyenadna": "small-32k", "gpt2": "small", "mamba": "tiny"}
#: the real genome the audit benchmarks window, under the shared data folder
ECOLI = "prokaryote/ecoli_k12_mg1655.fa.gz"


def shared_genome(path: str | None, relative: str = ECOLI) -> Path:
    """``path``, or ``relative`` under the shared data folder (``$GLMJAX_SHARED`` or ``../shared``)."""
    if path:
        return Path(path)
    shared = Path(os.environ.get("GLMJAX_SHARED", Path(__file__).resolve().parents[2] / "shared"))
    return shared / "data" / relative
