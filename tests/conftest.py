"""Shared fixtures: the ../shared folder (golden fixtures, real genomes), skipped cleanly when absent."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("GLMJAX_QUIET", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GLMJAX_SHARED", ROOT.parent / "shared"))

# ``python -m pytest`` puts the checkout first on sys.path, where its top-level kernels/ folder
# (installed as glmjax.kernels) would shadow any other package named ``kernels`` (transformers
# imports one). Keep the checkout importable, but after site-packages.
_here = [p for p in sys.path if Path(p or ".").resolve() == ROOT]
if _here:
    sys.path[:] = [p for p in sys.path if p not in _here] + [str(ROOT)]


def shared_path(*parts: str) -> Path:
    """A path under ../shared; skips the calling test when it is absent."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"{p} not available (tests that need the shared data folder are skipped)")
    return p


class GoldenCase:
    """One folder of ../shared/golden: config, inputs, reference outputs, case description."""

    def __init__(self, name: str):
        self.dir = shared_path("golden", name)
        self.case = json.loads((self.dir / "case.json").read_text())
        self.inputs = dict(np.load(self.dir / "inputs.npz"))
        self.outputs = dict(np.load(self.dir / "outputs.npz"))


@pytest.fixture
def golden():
    """``golden("nt_v1")`` -> GoldenCase, skipping when ../shared/golden is absent."""
    return GoldenCase


def rel_err(ours: np.ndarray, ref: np.ndarray, mask: np.ndarray | None = None) -> float:
    """max |ours - ref| / max |ref| over the positions where mask is True (all if None)."""
    ours = np.asarray(ours, np.float64)
    ref = np.asarray(ref, np.float64)
    if mask is not None:
        ours, ref = ours[mask], ref[mask]
    return float(np.abs(ours - ref).max() / np.abs(ref).max())
