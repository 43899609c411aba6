"""Full-forward references for candidate enumeration and extraction tests (shared, computed once).

For a tiny causal model of each family, every one of the ``4^K`` candidate secrets is appended to
one prefix and the batch goes through a plain forward pass; the per-step log-distributions over
the four bases and the summed log p of each candidate are the references the trie walk, greedy
decoding and beam search must reproduce.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

import glmjax.models
from glmjax.audit.decoding import base_token_ids, causal_prefix_ids, index_to_codes

CAUSAL_FAMILIES = ("llama", "gpt2", "hyenadna", "mamba", "evo1", "evo2")
# Evo's tiny models compile for much longer than the others (five operator kinds, FIR states):
# its heavier parametrisations run with -m slow, the ones named in ``keep`` also by default


def causal_params(*keep: str) -> list:
    """``CAUSAL_FAMILIES`` as pytest parameters, Evo families marked slow unless in ``keep``."""
    return [pytest.param(f, marks=pytest.mark.slow) if f.startswith("evo") and f not in keep else f
            for f in CAUSAL_FAMILIES]
PREFIX_LEN = 9
K = 6


@dataclass
class CausalCase:
    """A tiny model, a prefix, and its full-forward references over all ``4^K`` candidates.

    ``step_lp`` float64 ``[4^K, K, 4]``: log p of each base at step ``j`` after the candidate's
    first ``j`` bases; ``total`` float64 ``[4^K]``: log p of each candidate given the prefix.
    """

    model: Any
    prefix: np.ndarray
    others: list[np.ndarray]
    step_lp: np.ndarray
    total: np.ndarray


@functools.cache
def _case(family: str) -> CausalCase | None:
    if family not in glmjax.models.families():
        return None
    model = glmjax.models.build(family, seed=3)
    rng = np.random.default_rng(11)
    prefix = rng.integers(0, 4, PREFIX_LEN).astype(np.uint8)
    others = [rng.integers(0, 4, PREFIX_LEN).astype(np.uint8) for _ in range(2)]
    tok = model.tokenizer
    pids = causal_prefix_ids(tok, prefix)
    bids = base_token_ids(tok)
    n = 4 ** K
    cands = index_to_codes(np.arange(n), K)
    ids = np.concatenate([np.broadcast_to(pids, (n, pids.shape[0])), bids[cands]], axis=1).astype(np.int32)
    logits = np.asarray(model.logits(ids), np.float64)
    t = pids.shape[0]
    z = logits[:, t - 1:t - 1 + K]                                                # [n, K, V]
    zmax = z.max(axis=-1, keepdims=True)
    lsm = z - zmax - np.log(np.exp(z - zmax).sum(axis=-1, keepdims=True))
    step_lp = lsm[..., bids]                                                      # [n, K, 4]
    total = np.take_along_axis(step_lp, cands[..., None].astype(np.int64), axis=-1)[..., 0].sum(axis=1)
    return CausalCase(model, prefix, others, step_lp, total)


def causal_case(family: str) -> CausalCase:
    """The shared case of ``family``; skips the test when the family is not registered."""
    case = _case(family)
    if case is None:
        pytest.skip(f"model family {family!r} is not registered in glmjax.models")
    return case
