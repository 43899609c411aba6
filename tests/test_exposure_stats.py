"""Exposure: closed form of exact ranks, the skew-normal extrapolation formula, and agreement of
the sampled estimate with exact enumeration of 4^8 candidates."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate, stats

from glmjax.audit import exposure as E
from glmjax.errors import ConfigError


def test_exact_exposure_closed_form():
    rng = np.random.default_rng(0)
    r = 4**6
    cands = rng.permutation(r).astype(float)  # distinct scores 0..R-1: rank of value v is v + 1
    canary = np.array([0.0, 9.0, 4095.0])
    exp, rank = E.exact_exposure(canary, cands)
    np.testing.assert_array_equal(rank, [1, 10, 4096])
    np.testing.assert_allclose(exp, [12.0, 12.0 - math.log2(10), 0.0])


def test_ties_favour_the_canary_and_per_canary_candidate_sets():
    cands = np.array([[1.0, 2.0, 2.0, 2.0, 3.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    exp, rank = E.exact_exposure(np.array([2.0, 0.0]), cands)
    np.testing.assert_array_equal(rank, [2, 1])  # 1 + #strictly more likely
    np.testing.assert_allclose(exp, [math.log2(5) - 1, math.log2(5)])
    # Candidates given without the canary itself: |R| = R + 1.
    exp2, _ = E.exact_exposure(np.array([0.5]), np.array([1.0, 2.0, 3.0]), n_candidates=4)
    np.testing.assert_allclose(exp2, [2.0])
    with pytest.raises(ConfigError):
        E.exposure_from_rank(5, 4)


def tf_privacy_interpolation(perplexities, references):
    """TF Privacy's compute_exposure_interpolation, as published: sort secrets and references
    together, a secret's rank is 1 + the references sorted before it."""
    reps = {1: list(perplexities)}
    allp = np.concatenate([reps[1], references])
    rep = np.concatenate([[1] * len(reps[1]), [0] * len(references)])
    order = np.argsort(allp, kind="stable")
    cum = np.cumsum(rep[order] == 0)
    position = np.empty(order.size, np.int64)
    position[order] = np.arange(order.size)  # where each input landed in the sorted list
    ranks = cum[position[:len(reps[1])]] + 1
    return np.log2(len(references)) - np.log2(ranks)


def test_tf_privacy_convention_and_canaries_below_every_reference():
    rng = np.random.default_rng(3)
    refs = rng.normal(5.0, 1.0, 500)
    secrets = np.concatenate([rng.normal(3.0, 1.0, 20), [refs.max() + 1.0, refs.min() - 1.0]])
    got, rank = E.exact_exposure(secrets, refs, convention="tf_privacy")
    np.testing.assert_allclose(got, tf_privacy_interpolation(secrets, refs), rtol=1e-12)
    assert got[-2] == pytest.approx(math.log2(500 / 501)) and got[-1] == pytest.approx(math.log2(500))
    # ties count against the canary: 1 + #{references <= canary}
    e, r = E.exact_exposure(np.array([2.0]), np.array([1.0, 2.0, 2.0, 3.0]), convention="tf_privacy")
    assert r[0] == 4 and e[0] == pytest.approx(math.log2(4 / 4))
    # the default convention does not raise for a canary less likely than every candidate
    e0, r0 = E.exact_exposure(np.array([9.0, 0.5]), np.array([1.0, 2.0, 3.0]))
    np.testing.assert_array_equal(r0, [4, 1])
    np.testing.assert_allclose(e0, [0.0, math.log2(3)])
    with pytest.raises(ConfigError, match="unknown exposure convention"):
        E.exact_exposure(secrets, refs, convention="tf")


def test_count_more_likely_is_jittable_and_chunk_additive():
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(1)
    canary = rng.normal(size=3).astype(np.float32)
    cands = rng.normal(size=(3, 1000)).astype(np.float32)
    want = E.count_more_likely(canary, cands)
    got = jax.jit(E.count_more_likely)(jnp.asarray(canary), jnp.asarray(cands))
    np.testing.assert_array_equal(np.asarray(got), want)
    chunks = sum(E.count_more_likely(canary, cands[:, i:i + 128]) for i in range(0, 1000, 128))
    np.testing.assert_array_equal(chunks, want)


def test_extrapolation_formula_matches_integrated_skewnormal_cdf():
    a, loc, scale = 4.0, 20.0, 3.0
    for x in (12.0, 16.0, 19.0, 25.0):
        cdf, _ = integrate.quad(lambda t: stats.skewnorm.pdf(t, a, loc, scale), -np.inf, x,
                                epsabs=0, epsrel=1e-12, limit=200)
        assert E.extrapolated_exposure(x, a, loc, scale) == pytest.approx(-math.log2(cdf), rel=1e-6)
    # Capped at log2 |R| (rank >= 1), never negative.
    assert E.extrapolated_exposure(5.0, a, loc, scale, n_candidates=4**8) == 16.0
    assert E.extrapolated_exposure(1e3, a, loc, scale) == 0.0


def test_newton_fit_reaches_the_likelihood_maximum():
    rng = np.random.default_rng(2)
    x = stats.skewnorm.rvs(3.0, loc=10.0, scale=2.0, size=(4, 1500), random_state=rng)
    start = stats.skewnorm.fit(x[0])
    fits = E.fit_skewnorm(x, start)
    for i in range(4):
        ref = stats.skewnorm.fit(x[i])
        ll = stats.skewnorm.logpdf(x[i], *fits[i]).sum()
        assert ll >= stats.skewnorm.logpdf(x[i], *ref).sum() - 1e-6
        np.testing.assert_allclose(fits[i], ref, rtol=2e-3)


def test_sampled_estimate_agrees_with_exact_enumeration():
    """4^8 candidates with skew-normal log-perplexities; the canary is the candidate at a given
    rank; the estimate from 2000 sampled candidates must bracket the exact exposure."""
    rng = np.random.default_rng(3)
    r = 4**8
    cands = stats.skewnorm.rvs(3.0, loc=20.0, scale=4.0, size=r, random_state=rng)
    srt = np.sort(cands)
    # Error bounds: about the largest |estimate - exact| seen over 20 seeds at 2000 samples; the
    # extrapolation to 40 / 4^8 lies beyond the sample's own smallest values.
    tolerance = {40: 2.0, 400: 0.8, 4000: 0.3}
    for i, rank in enumerate((40, 400, 4000)):
        canary = srt[rank - 1]
        exact, got_rank = E.exact_exposure(np.array([canary]), cands)
        assert got_rank[0] == rank
        sample = cands[rng.choice(r, 2000, replace=False)]
        est = E.estimate_exposure(canary, sample, n_candidates=r, n_bootstrap=100, seed=i)
        lo, hi = est.ci
        assert lo <= exact[0] <= hi, (rank, exact[0], est.exposure, est.ci)
        assert abs(est.exposure - exact[0]) < tolerance[rank]
        assert hi - lo < 2 * tolerance[rank]
        assert est.method == "skewnorm" and est.n_samples == 2000


def test_estimate_is_seeded_and_validates():
    rng = np.random.default_rng(4)
    sample = rng.normal(size=500)
    a = E.estimate_exposure(-2.0, sample, n_bootstrap=20, seed=1)
    b = E.estimate_exposure(-2.0, sample, n_bootstrap=20, seed=1)
    assert a.to_dict() == b.to_dict()
    with pytest.raises(ConfigError, match="at least 20"):
        E.estimate_exposure(0.0, sample[:5])


def test_summarise_by_repetition():
    rows = E.summarise_by_repetition([1, 10, 1, 10, 100],
                                     {"exposure": np.array([1.0, 5.0, 3.0, 7.0, 16.0]),
                                      "extracted": np.array([0, 1, 0, 0, 1])})
    assert rows == [
        {"repetitions": 1, "n": 2, "exposure_mean": 2.0, "extracted_mean": 0.0},
        {"repetitions": 10, "n": 2, "exposure_mean": 6.0, "extracted_mean": 0.5},
        {"repetitions": 100, "n": 1, "exposure_mean": 16.0, "extracted_mean": 1.0},
    ]


def test_exact_exposure_record_reports_the_tf_privacy_convention():
    from glmjax.audit.candidates import tf_privacy_exposure

    rng = np.random.default_rng(4)
    logp = np.round(rng.normal(-8.0, 1.0, 4**5), 1).astype(np.float32)  # ties on purpose
    for idx in (77, int(np.argmax(logp)), int(np.argmin(logp))):
        others = -np.delete(logp.astype(np.float64), idx)
        want, _ = E.exact_exposure(np.array([-float(logp[idx])]), others, convention="tf_privacy")
        assert tf_privacy_exposure(logp, idx) == pytest.approx(float(want[0]), abs=1e-12)
