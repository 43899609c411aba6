"""Per-token log-probability statistics and sequence reductions against float64 references."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from glmjax.kernels.logprob import SIGMA_FLOOR, causal_token_stats, token_stats
from glmjax.kernels.reductions import MINK_PERCENTS, sequence_reductions


def _np(tree):
    return jax.tree_util.tree_map(np.asarray, tree)


# one compiled program per call shape (eager op-by-op dispatch compiles every primitive)
token_stats_j = jax.jit(token_stats, static_argnums=(2,))
causal_token_stats_j = jax.jit(causal_token_stats)


def ref_position(z: np.ndarray, target: int) -> dict[str, float]:
    """Explicit float64 log-softmax and moments of one position, with Python loops."""
    z = [float(v) for v in z]
    m = max(z)
    lse = m + math.log(sum(math.exp(v - m) for v in z))
    lp = [v - lse for v in z]
    mu = sum(math.exp(a) * a for a in lp)
    var = sum(math.exp(a) * (a - mu) ** 2 for a in lp)
    rank = sum(1 for v in z if v > z[target])
    sigma = math.sqrt(var)
    return {"logp": lp[target], "mu": mu, "sigma": sigma, "entropy": -mu, "rank": rank,
            "z": (lp[target] - mu) / max(sigma, SIGMA_FLOOR)}


def ref_sequence(lp: list[float], mu: list[float], sigma: list[float], ent: list[float],
                 rank: list[float]) -> dict[str, float]:
    """Reference sequence statistics: Min-K% / Min-K%++ by their definitions."""
    n = len(lp)
    out = {"n_tokens": n, "sum_logp": sum(lp), "mean_logp": sum(lp) / n, "mean_entropy": sum(ent) / n,
           "mean_rank": sum(rank) / n}
    z = [(a - m) / max(s, SIGMA_FLOOR) for a, m, s in zip(lp, mu, sigma, strict=True)]
    for p in MINK_PERCENTS:
        k = max(1, int(n * p / 100))
        out[f"mink_{p}"] = sum(sorted(lp)[:k]) / k
        out[f"minkpp_{p}"] = sum(sorted(z)[:k]) / k
    return out


def test_token_stats_match_float64_reference():
    rng = np.random.default_rng(0)
    logits = (rng.normal(size=(3, 7, 11)) * 3).astype(np.float32)
    targets = rng.integers(0, 11, size=(3, 7))
    st = _np(token_stats_j(jnp.asarray(logits), jnp.asarray(targets)))
    for b in range(3):
        for t in range(7):
            ref = ref_position(logits[b, t], int(targets[b, t]))
            for name in ("logp", "mu", "sigma", "entropy", "z"):
                np.testing.assert_allclose(float(getattr(st, name)[b, t]), ref[name], rtol=1e-5, atol=1e-5)
            assert float(st.rank[b, t]) == ref["rank"]
    # chunking over positions changes nothing
    st2 = token_stats_j(jnp.asarray(logits), jnp.asarray(targets), 4)
    for a, b in zip(st, st2, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)


def test_token_stats_bf16_logits_and_extremes():
    """bf16 logits are upcast; -inf logits and one-hot distributions give no NaN."""
    z = np.array([[0.0, -np.inf, 2.0, 1.0], [50.0, -50.0, -50.0, -50.0]], np.float32)
    st = _np(token_stats_j(jnp.asarray(z), jnp.asarray([2, 0])))
    for b, t in ((0, 2), (1, 0)):
        ref = ref_position(np.where(np.isinf(z[b]), -1e30, z[b]), t)
        for name in ("logp", "mu", "sigma"):
            np.testing.assert_allclose(float(getattr(st, name)[b]), ref[name], rtol=1e-5, atol=1e-6)
    assert np.isfinite(np.asarray(st.sigma)).all() and np.isfinite(np.asarray(st.mu)).all()
    zb = jnp.asarray(np.random.default_rng(1).normal(size=(2, 5, 9)), jnp.bfloat16)
    stb = token_stats_j(zb, jnp.zeros((2, 5), jnp.int32))
    ref = token_stats_j(zb.astype(jnp.float32), jnp.zeros((2, 5), jnp.int32))
    assert stb.logp.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(stb.logp), np.asarray(ref.logp), rtol=1e-6)


def test_rank_ties_count_in_favour():
    st = _np(token_stats_j(jnp.asarray([[1.0, 3.0, 3.0, 0.0]] * 2), jnp.asarray([2, 3])))
    assert st.rank[0] == 0.0 and st.rank[1] == 3.0


def test_causal_alignment():
    """Position t describes token t predicted from logits t-1; position 0 is never valid."""
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(2, 6, 5)).astype(np.float32)
    ids = rng.integers(0, 5, size=(2, 6))
    scored = np.ones((2, 6), bool)
    scored[1, 4:] = False
    st, valid = _np(causal_token_stats_j(jnp.asarray(logits), jnp.asarray(ids), jnp.asarray(scored)))
    assert not bool(valid[0, 0]) and bool(valid[0, 1]) and not bool(valid[1, 4])
    for b in range(2):
        for t in range(1, 6):
            ref = ref_position(logits[b, t - 1], int(ids[b, t]))
            np.testing.assert_allclose(float(st.logp[b, t]), ref["logp"], rtol=1e-5)


def test_sequence_reductions_match_definitions():
    rng = np.random.default_rng(3)
    b, n = 4, 37
    lp = -np.abs(rng.normal(size=(b, n))) * 2
    mu = lp + rng.normal(size=(b, n))
    sigma = np.abs(rng.normal(size=(b, n))) + 0.1
    sigma[0, 3] = 0.0  # floored
    ent = np.abs(rng.normal(size=(b, n)))
    rank = rng.integers(0, 9, size=(b, n)).astype(np.float64)
    valid = rng.random((b, n)) < 0.7
    valid[3] = False
    valid[2] = False
    valid[2, 5] = True  # a single token: every Min-K% is that token
    dev = _np(jax.jit(sequence_reductions)(*(jnp.asarray(x, jnp.float32) for x in (lp, mu, sigma, ent, rank)),
                                           None, jnp.asarray(valid)))
    host = sequence_reductions(lp, mu, sigma, ent, rank, None, valid, xp=np)
    for r in range(b):
        sel = valid[r]
        if not sel.any():
            assert float(dev["n_tokens"][r]) == 0 and np.isnan(float(dev["mean_logp"][r]))
            assert float(dev["sum_logp"][r]) == 0.0 and np.isnan(float(dev["mink_20"][r]))
            continue
        ref = ref_sequence(*(list(x[r][sel]) for x in (lp, mu, sigma, ent, rank)))
        for k, v in ref.items():
            np.testing.assert_allclose(float(dev[k][r]), v, rtol=1e-5, atol=1e-5, err_msg=k)
            np.testing.assert_allclose(float(host[k][r]), v, rtol=1e-12, atol=1e-12, err_msg=k)


def test_fused_in_jit_equals_unfused():
    """Statistics computed inside the forward's jit equal the ones from materialised logits."""
    rng = np.random.default_rng(4)
    w = jnp.asarray(rng.normal(size=(8, 6)), jnp.float32)

    def forward(ids, mask):
        return jax.nn.one_hot(ids, 8) @ w @ w.T

    ids = jnp.asarray(rng.integers(0, 8, size=(2, 9)))
    mask = jnp.ones((2, 9), bool)
    fused = jax.jit(lambda i, m: causal_token_stats(forward(i, m), i, m)[0])(ids, mask)
    plain = causal_token_stats_j(np.asarray(forward(ids, mask)), ids, mask)[0]
    np.testing.assert_allclose(np.asarray(fused.logp), np.asarray(plain.logp), rtol=1e-5)


def test_min_k_plus_plus_score_is_accurate_for_near_uniform_predictions():
    """Large vocabulary, tiny logits (an untrained model): sigma is small and log p ~ mu ~ -log V,
    so the z-score must not be formed from their float32 difference."""
    rng = np.random.default_rng(6)
    logits = (rng.normal(size=(4, 4105)) * 0.02).astype(np.float32)
    targets = rng.integers(0, 4105, size=4)
    st = _np(token_stats_j(jnp.asarray(logits), jnp.asarray(targets)))
    for b in range(4):
        ref = ref_position(logits[b], int(targets[b]))
        np.testing.assert_allclose(st.z[b], ref["z"], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(st.sigma[b], ref["sigma"], rtol=1e-5)
