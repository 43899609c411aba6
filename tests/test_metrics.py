"""Attack metrics against independent loop/numpy references (sklearn semantics), bootstrap
coverage, Clopper–Pearson ε bounds and the one-run audit bound."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from glmjax.audit import metrics as M
from glmjax.errors import ConfigError

# ---------------------------------------------------------------- independent references


def ref_roc(labels, scores):
    """sklearn roc_curve(drop_intermediate=False) written as a plain loop over thresholds."""
    labels = np.asarray(labels, bool)
    n1, n0 = labels.sum(), (~labels).sum()
    fpr, tpr, thr = [0.0], [0.0], [np.inf]
    for t in sorted(set(scores.tolist()), reverse=True):
        pred = scores >= t
        tpr.append((pred & labels).sum() / n1)
        fpr.append((pred & ~labels).sum() / n0)
        thr.append(t)
    return np.array(fpr), np.array(tpr), np.array(thr)


def ref_auc(labels, scores):
    """Mann–Whitney over all pairs, ties one half."""
    pos = scores[labels.astype(bool)]
    neg = scores[~labels.astype(bool)]
    gt = (pos[:, None] > neg[None, :]).sum()
    eq = (pos[:, None] == neg[None, :]).sum()
    return (gt + 0.5 * eq) / (pos.size * neg.size)


def ref_tpr_at(labels, scores, f):
    fpr, tpr, _ = ref_roc(labels, scores)
    return max(t for x, t in zip(fpr, tpr, strict=True) if x <= f)


def ref_bacc(labels, scores):
    fpr, tpr, _ = ref_roc(labels, scores)
    return max((t + 1 - x) / 2 for x, t in zip(fpr, tpr, strict=True))


def _data(seed, n=300, shift=0.7, ties=False, frac=0.4):
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < frac
    scores = rng.normal(size=n) + shift * labels
    if ties:
        scores = np.round(scores * 2) / 2  # heavy ties inside and across classes
    return labels, scores


# ---------------------------------------------------------------- point metrics


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_point_metrics_match_reference(seed, ties):
    labels, scores = _data(seed, ties=ties)
    fpr, tpr, thr = M.roc_curve(labels, scores)
    rf, rt, rth = ref_roc(labels, scores)
    np.testing.assert_array_equal(thr, rth)
    np.testing.assert_allclose(fpr, rf, rtol=0, atol=1e-15)
    np.testing.assert_allclose(tpr, rt, rtol=0, atol=1e-15)
    assert M.roc_auc(labels, scores) == pytest.approx(ref_auc(labels, scores), abs=1e-15)
    for f in (0.0, 0.001, 0.01, 0.05, 0.1, 0.37, 1.0):
        assert M.tpr_at_fpr(labels, scores, f) == pytest.approx(ref_tpr_at(labels, scores, f), abs=1e-15)
    assert M.balanced_accuracy(labels, scores) == pytest.approx(ref_bacc(labels, scores), abs=1e-15)


def test_fpr_boundary_uses_same_float_comparison():
    # 29 / 100 <= 0.29 in float but 0.29 * 100 < 29: the boundary point must be admitted.
    rng = np.random.default_rng(3)
    labels = np.r_[np.ones(50, bool), np.zeros(100, bool)]
    scores = rng.permutation(150).astype(float)
    assert M.tpr_at_fpr(labels, scores, 0.29) == ref_tpr_at(labels, scores, 0.29)


def test_perfect_and_inverted_and_constant():
    labels = np.r_[np.ones(10, bool), np.zeros(10, bool)]
    good = np.r_[np.arange(10, 20), np.arange(10)].astype(float)
    assert M.roc_auc(labels, good) == 1.0
    assert M.tpr_at_fpr(labels, good, 0.0) == 1.0
    assert M.balanced_accuracy(labels, good) == 1.0
    assert M.roc_auc(labels, -good) == 0.0
    assert M.balanced_accuracy(labels, -good) == 0.5  # an inverted attack has no advantage
    const = np.zeros(20)
    assert M.roc_auc(labels, const) == 0.5
    assert M.tpr_at_fpr(labels, const, 0.5) == 0.0


def test_invalid_inputs_raise():
    with pytest.raises(ConfigError, match="both"):
        M.roc_auc(np.ones(4, bool), np.arange(4.0))
    with pytest.raises(ConfigError, match="NaN"):
        M.roc_auc(np.array([1, 0, 1, 0]), np.array([1.0, np.nan, 0.0, 2.0]))
    with pytest.raises(ConfigError, match="1-D"):
        M.roc_auc(np.array([1, 0]), np.arange(3.0))


def test_downsampled_roc_is_conservative_step_of_full_curve():
    labels, scores = _data(4, n=2000)
    fpr, tpr, _ = M.roc_curve(labels, scores)
    gf, gt = M.roc_points(M.RocBasis(labels, scores), 50)
    for f, t in zip(gf, gt, strict=True):
        assert t == tpr[fpr <= f].max()


# ---------------------------------------------------------------- bootstrap


@pytest.mark.parametrize("ties", [False, True])
def test_weighted_metrics_equal_metrics_of_the_explicit_resample(ties):
    """A replicate's weights must give exactly the metrics of the resampled data set."""
    labels, scores = _data(5, n=200, ties=ties)
    basis = M.RocBasis(labels, scores)
    rng = np.random.default_rng(0)
    wp = M._resample_counts(rng, basis.n_pos, 3)
    wn = M._resample_counts(rng, basis.n_neg, 3)
    got = basis.metrics((0.01, 0.1), wp, wn)
    for r in range(3):
        s = np.r_[np.repeat(basis.pos_sorted, wp[r]), np.repeat(basis.neg_sorted, wn[r])]
        lab = np.r_[np.ones(basis.n_pos, bool), np.zeros(basis.n_neg, bool)]
        assert got["auc"][r] == pytest.approx(ref_auc(lab, s), abs=1e-14)
        assert got["tpr@0.01"][r] == pytest.approx(ref_tpr_at(lab, s, 0.01), abs=1e-14)
        assert got["tpr@0.1"][r] == pytest.approx(ref_tpr_at(lab, s, 0.1), abs=1e-14)
        assert got["balanced_accuracy"][r] == pytest.approx(ref_bacc(lab, s), abs=1e-14)


def test_bootstrap_is_seeded_and_chunking_invariant():
    labels, scores = _data(6, n=500)
    basis = M.RocBasis(labels, scores)
    a = M.bootstrap_replicates(basis, 40, seed=7)
    b = M.bootstrap_replicates(basis, 40, seed=7)
    c = M.bootstrap_replicates(basis, 40, seed=8)
    np.testing.assert_array_equal(a["auc"], b["auc"])
    assert not np.array_equal(a["auc"], c["auc"])
    r = M.evaluate_attack(labels, scores, n_bootstrap=100, seed=1)
    lo, hi = r.ci["auc"]
    assert lo < r.auc < hi
    assert r.to_dict()["auc_ci"] == [lo, hi]


def test_bootstrap_auc_interval_covers_truth_at_nominal_rate():
    """200 simulated data sets with known AUC = Phi(d / sqrt 2); 95% percentile intervals."""
    d = 0.8
    true_auc = stats.norm.cdf(d / math.sqrt(2))
    reps, covered = 200, 0
    rng = np.random.default_rng(2024)
    for i in range(reps):
        pos = rng.normal(d, 1, 150)
        neg = rng.normal(0, 1, 150)
        labels = np.r_[np.ones(150, bool), np.zeros(150, bool)]
        r = M.evaluate_attack(labels, np.r_[pos, neg], n_bootstrap=300, seed=i, roc_points_n=10)
        lo, hi = r.ci["auc"]
        covered += lo <= true_auc <= hi
    # Binomial(200, 0.95): sd 0.0154; accept within 3 sd.
    assert abs(covered / reps - 0.95) <= 3 * math.sqrt(0.95 * 0.05 / reps), covered


# ---------------------------------------------------------------- ε lower bounds


def test_clopper_pearson_matches_beta_quantiles_and_edges():
    lo, hi = M.clopper_pearson(7, 20, 0.05)
    assert lo == pytest.approx(stats.beta.ppf(0.025, 7, 14))
    assert hi == pytest.approx(stats.beta.ppf(0.975, 8, 13))
    lo0, hi0 = M.clopper_pearson(0, 20, 0.05)
    assert lo0 == 0.0 and hi0 == pytest.approx(1 - 0.025 ** (1 / 20))
    lon, hin = M.clopper_pearson(20, 20, 0.05)
    assert hin == 1.0 and lon == pytest.approx(0.025 ** (1 / 20))


def test_epsilon_lower_bound_formula():
    tp, n1, fp, n0, alpha, delta = 900, 1000, 10, 1000, 0.05, 1e-5
    tlo = stats.beta.ppf(alpha / 2, tp, n1 - tp + 1)
    fhi = stats.beta.ppf(1 - alpha / 2, fp + 1, n0 - fp)
    want = max(math.log((tlo - delta) / fhi), math.log((1 - fhi - delta) / (1 - tlo)))
    assert M.epsilon_lower_bound(tp, n1, fp, n0, delta=delta, alpha=alpha) == pytest.approx(want)
    assert M.epsilon_lower_bound(10, 1000, 10, 1000) == 0.0  # a useless test proves nothing


def test_epsilon_bound_from_scores_below_randomized_response_epsilon():
    # ε-DP randomized response: the likelihood ratio of any test is at most e^ε.
    eps = 2.0
    rng = np.random.default_rng(1)
    n = 20000
    labels = rng.random(n) < 0.5
    keep = rng.random(n) < math.exp(eps) / (1 + math.exp(eps))
    out = np.where(keep, labels, ~labels).astype(float) + 1e-3 * rng.random(n)
    b = M.epsilon_lower_bound_from_scores(labels, out, fpr_targets=(0.05, 0.2), delta=0.0)
    assert 0.8 * eps < b.epsilon <= eps


def test_one_run_p_value_matches_binomial_tail_and_delta_term():
    m, r, v, eps = 1000, 100, 80, 1.0
    q = 1 / (1 + math.exp(-eps))
    assert M.one_run_p_value(m, r, v, eps) == pytest.approx(stats.binom.sf(v - 1, r, q))
    delta = 1e-6
    pmf = {j: stats.binom.pmf(v - j, r, q) for j in range(1, v + 1)}
    alpha = max(sum(pmf[j] for j in range(1, i + 1)) / i for i in range(1, v + 1))
    want = stats.binom.sf(v - 1, r, q) + 2 * m * delta * alpha
    assert M.one_run_p_value(m, r, v, eps, delta) == pytest.approx(want)


def test_one_run_bound_on_randomized_response_is_valid_and_tight():
    """ε-DP randomized response: the bound must not exceed ε (w.p. >= 1 - β) and be close to it."""
    eps, beta, m = 2.0, 0.05, 20000
    q = math.exp(eps) / (1 + math.exp(eps))
    rng = np.random.default_rng(11)
    bounds = []
    for _ in range(40):
        included = rng.random(m) < 0.5
        keep = rng.random(m) < q
        guess = np.where(keep, included, ~included)
        scores = guess.astype(float) + 1e-6 * rng.random(m)  # ties broken at random
        k_pos = int(guess.sum())
        bounds.append(M.one_run_epsilon(scores, included, k_pos=k_pos, k_neg=m - k_pos, beta=beta).epsilon)
    bounds = np.array(bounds)
    # Exceeding ε happens with probability <= β; in 40 runs allow a binomial margin.
    assert (bounds > eps).sum() <= stats.binom.ppf(0.999, 40, beta)
    assert np.median(bounds) > 0.93 * eps


def test_one_run_closed_form_all_correct():
    # v = r, δ = 0: p(ε) = q^r, so the bound solves q^r = β exactly.
    r, beta = 50, 0.05
    q = beta ** (1 / r)
    want = math.log(q / (1 - q))
    got = M.one_run_epsilon_from_counts(100, r, r, beta=beta)
    assert got == pytest.approx(want, abs=1e-5)
    assert M.one_run_epsilon_from_counts(100, 50, 25, beta=beta) == 0.0


def test_one_run_search_applies_bonferroni():
    rng = np.random.default_rng(0)
    included = rng.random(2000) < 0.5
    scores = included + rng.normal(0, 0.8, 2000)
    single = M.one_run_epsilon(scores, included, k_pos=100, k_neg=100, beta=0.05 / 4)
    best = M.one_run_epsilon_search(scores, included, [(100, 100), (50, 50), (200, 0), (0, 200)], beta=0.05)
    assert best.epsilon >= single.epsilon
    assert best.confidence == 0.95 and best.details["grid_size"] == 4


# ------------------------------------------------------------------ randomised-threshold metrics
# An independent implementation of jax_privacy's CanaryScoreAuditor definitions, written from its
# published description: FN/TN counts at every threshold (score >= t is "in"), their Pareto
# frontier by a stack scan, TPR interpolated on TN counts, AUC by trapezoids, raw-count and GDP ε.

def _ref_counts(pos, neg):
    thr = np.concatenate([np.union1d(pos, neg), [np.inf]])
    fn = np.array([int((pos < t).sum()) for t in thr])
    tn = np.array([int((neg < t).sum()) for t in thr])
    hull = []
    for p in zip(fn.tolist(), tn.tolist(), strict=True):
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            if (b[0] - a[0]) * (p[1] - a[1]) - (b[1] - a[1]) * (p[0] - a[0]) >= 0:
                hull.pop()
            else:
                break
        hull.append(p)
    h = np.array(hull)
    return h[:, 1], h[:, 0]  # tn, fn


def _ref_tpr(f, tn, fn):
    target = tn[-1] * (1 - f)
    j = max(int(np.searchsorted(tn, target)), 1)
    p = (target - tn[j - 1]) / (tn[j] - tn[j - 1])
    return 1 - ((1 - p) * fn[j - 1] + p * fn[j]) / fn[-1]


def _ref_auc(tn, fn):
    tn, fn = tn.astype(float), fn.astype(float)
    return 0.5 * np.dot(tn[:-1] + tn[1:], fn[1:] - fn[:-1]) / (fn[-1] * tn[-1])


def _scores(seed, n=300, ties=False):
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < 0.4
    s = rng.normal(0, 1, n) + 0.9 * labels
    if ties:
        s = np.round(s, 1)
    return labels, s


@pytest.mark.parametrize("seed,ties", [(0, False), (1, True), (2, True)])
def test_hull_metrics_match_jax_privacy_definitions(seed, ties):
    labels, s = _scores(seed, ties=ties)
    tn, fn = _ref_counts(s[labels], s[~labels])
    got = M.randomised_metrics(labels, s, fpr_targets=(0.0, 0.001, 0.01, 0.1, 0.5))
    assert got["auc"] == pytest.approx(_ref_auc(tn, fn), abs=1e-12)
    for f in (0.0, 0.001, 0.01, 0.1, 0.5):
        assert got[f"tpr@{f:g}"] == pytest.approx(_ref_tpr(f, tn, fn), abs=1e-12)
    # the hull dominates the step ROC of a single threshold
    step = M.RocBasis(labels, s).metrics((0.01, 0.1))
    assert got["auc"] >= float(step["auc"][0]) - 1e-12
    assert got["tpr@0.1"] >= float(step["tpr@0.1"][0]) - 1e-12
    # raw counts: ln(TPR / FPR) at FPR = min_count / n_neg on the hull; with δ the max over thresholds
    n0 = int((~labels).sum())
    for mc in (5, 20):
        want = max(math.log(_ref_tpr(mc / n0, tn, fn) / (mc / n0)), 0.0)
        assert M.epsilon_raw_counts(labels, s, min_count=mc) == pytest.approx(want, abs=1e-12)
        fp = n0 - tn
        tp = fn[-1] - fn
        rates = [(t / fn[-1], f / n0) for t, f in zip(tp, fp, strict=True) if f >= mc]
        rates.append((_ref_tpr(mc / n0, tn, fn), mc / n0))
        d = 0.01
        want_d = max(max(math.log(t - d) - math.log(f) for t, f in rates if t > d), 0.0)
        assert M.epsilon_raw_counts(labels, s, min_count=mc, delta=d) == pytest.approx(want_d, abs=1e-12)
    assert M.epsilon_raw_counts(labels, s, min_count=n0) == 0.0


def test_hull_closed_forms():
    # one informative threshold: TPR a, FPR b -> hull AUC (1 + a - b) / 2, TPR interpolated linearly
    labels = np.array([True] * 10 + [False] * 10)
    s = np.array([1.0] * 7 + [0.0] * 3 + [1.0] * 2 + [0.0] * 8)
    r = M.randomised_metrics(labels, s, fpr_targets=(0.1,))
    assert r["auc"] == pytest.approx((1 + 0.7 - 0.2) / 2)
    assert r["tpr@0.1"] == pytest.approx(0.35)
    perfect = M.randomised_metrics(labels, labels.astype(float), fpr_targets=(0.0,))
    assert perfect == {"auc": 1.0, "tpr@0": 1.0}
    inverted = M.randomised_metrics(labels, -labels.astype(float), fpr_targets=(0.5,))
    assert inverted["auc"] == pytest.approx(0.5) and inverted["tpr@0.5"] == pytest.approx(0.5)  # the chord


def _ref_gdp(pos, neg, alpha, delta, absolute):
    tn, fn = _ref_counts(pos, neg)
    n1, n0 = fn[-1], tn[-1]
    fp = n0 - tn

    def ub(k, n):
        return 1.0 if k >= n else stats.beta.ppf(1 - alpha / 2, k + 1, n - k)

    mus = [stats.norm.isf(ub(f, n0)) - stats.norm.ppf(ub(g, n1))
           for f, g in zip(fp, fn, strict=True) if max(ub(f, n0), ub(g, n1)) < 1 - delta]
    mu = max((abs(m) if absolute else m) for m in mus) if mus else 0.0
    mu = max(mu, 0.0)

    def dlt(e):
        return stats.norm.cdf(-e / mu + mu / 2) - math.exp(e) * stats.norm.cdf(-e / mu - mu / 2)

    lo, hi = 0.0, 100.0
    if mu == 0 or dlt(0.0) <= delta:
        return 0.0, mu
    for _ in range(200):  # bisection: δ(ε) decreases in ε
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if dlt(mid) > delta else (lo, mid)
    return lo, mu


@pytest.mark.parametrize("seed", [3, 4])
def test_epsilon_gdp_matches_published_conversion(seed):
    labels, s = _scores(seed, n=400)
    for absolute in (False, True):
        eps, mu = M.epsilon_gdp(labels, s, delta=1e-5, alpha=0.05, absolute=absolute)
        want_eps, want_mu = _ref_gdp(s[labels], s[~labels], 0.05, 1e-5, absolute)
        assert mu == pytest.approx(want_mu, rel=1e-10) and mu > 0
        assert eps == pytest.approx(want_eps, abs=1e-6) and eps > 0
        assert M.gdp_delta(eps, mu) == pytest.approx(1e-5, rel=1e-4)
    # a chance attack supports nothing by default; |μ| (jax_privacy) reads the uninformative
    # thresholds (FPR_ub + FNR_ub > 1) as evidence
    chance = np.random.default_rng(seed).normal(size=labels.size)
    assert M.epsilon_gdp(labels, chance, delta=1e-5) == (0.0, 0.0)
    assert M.epsilon_gdp(labels, chance, delta=1e-5, absolute=True)[0] > 1.0


def test_max_accuracy_bound():
    assert M.max_accuracy_bound(0.0) == 0.5
    assert M.max_accuracy_bound(math.log(3.0)) == pytest.approx(0.75)
    assert M.max_accuracy_bound(math.log(3.0), 0.1) == pytest.approx((3 + 0.1) / 4)
    # randomised response at ε attains it
    eps = 1.2
    assert M.max_accuracy_bound(eps) == pytest.approx(math.exp(eps) / (1 + math.exp(eps)))


def test_hull_of_many_rows_equals_the_exact_scan(monkeypatch):
    """Above 4096 candidates the hull scan runs on Qhull's vertices: same hull as the full scan."""
    labels, s = _scores(5, n=30_000)
    fpr, tpr, fp, tp = M.roc_hull(labels, s)
    full_fpr, full_tpr, _ = M.roc_curve(labels, s)
    n1, n0 = int(labels.sum()), int((~labels).sum())
    x, y = np.rint(full_fpr * n0).astype(np.int64), np.rint(full_tpr * n1).astype(np.int64)
    hull = []
    for i in range(x.size):  # the plain scan over every ROC point
        while len(hull) >= 2 and ((x[hull[-1]] - x[hull[-2]]) * (y[i] - y[hull[-2]])
                                  - (y[hull[-1]] - y[hull[-2]]) * (x[i] - x[hull[-2]])) >= 0:
            hull.pop()
        hull.append(i)
    np.testing.assert_array_equal(fp, x[hull])
    np.testing.assert_array_equal(tp, y[hull])
