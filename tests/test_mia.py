"""Membership-inference attacks against plain-loop references."""

from __future__ import annotations

import math
import zlib
from collections import Counter

import numpy as np
import pytest
from scipy import stats

from glmjax.audit import metrics as M
from glmjax.audit import mia
from glmjax.errors import ConfigError


def _ragged(seed, n=30, lo=0, hi=40, n_frac=0.05):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(lo, hi, n)
    seqs = [rng.integers(0, 4, L).astype(np.uint8) for L in lengths]
    for s in seqs:
        s[rng.random(s.size) < n_frac] = 4
    offsets = np.r_[0, np.cumsum(lengths)]
    return seqs, np.concatenate(seqs) if seqs else np.zeros(0, np.uint8), offsets


def test_zlib_bits_and_ratio():
    seqs, flat, offsets = _ragged(0, lo=1)
    want = np.array([8 * len(zlib.compress("".join("ACGTN"[c] for c in s).encode(), 9)) for s in seqs])
    np.testing.assert_array_equal(mia.zlib_bits(seqs), want)
    np.testing.assert_array_equal(mia.zlib_bits(flat, offsets), want)
    for w in (1, 3):  # the thread count changes nothing
        np.testing.assert_array_equal(mia.zlib_bits(flat, offsets, workers=w), want)
    sl = -np.arange(1.0, len(seqs) + 1)
    np.testing.assert_allclose(mia.zlib_ratio(sl, want), sl / math.log(2) / want)


def ref_kmer_entropy(s, k):
    c = Counter(tuple(s[i:i + k]) for i in range(len(s) - k + 1) if (s[i:i + k] < 4).all())
    tot = sum(c.values())
    return 0.0 if tot == 0 else -sum(v / tot * math.log2(v / tot) for v in c.values())


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_kmer_entropy_matches_counter_reference(k):
    seqs, flat, offsets = _ragged(1, n=40, lo=0, hi=30, n_frac=0.1)
    want = np.array([ref_kmer_entropy(s, k) for s in seqs])
    np.testing.assert_allclose(mia.kmer_entropy_bits(flat, offsets, k), want, atol=1e-12)
    # Chunk boundaries in the middle of the data must not change anything.
    np.testing.assert_allclose(mia.kmer_entropy_bits(flat, offsets, k, max_chunk_nt=37), want, atol=1e-12)


def test_kmer_entropy_ratio_formula_and_homopolymer_floor():
    h = np.array([4.0, 0.0])
    got = mia.kmer_entropy_ratio(np.array([-100.0, -5.0]), np.array([60, 60]), h, k=2)
    np.testing.assert_allclose(got, [-100 / math.log(2) / (60 * 4.0 / 2), -5 / math.log(2) / 1.0])


@pytest.mark.parametrize("p", [5, 20, 50, 100, 12.5])
def test_min_k_from_tokens_matches_loop(p):
    rng = np.random.default_rng(2)
    lengths = rng.integers(1, 60, 25)
    vals = [rng.normal(size=L) for L in lengths]
    offsets = np.r_[0, np.cumsum(lengths)]
    want = []
    for v in vals:
        k = max(1, int(math.floor(len(v) * p / 100)))
        want.append(np.sort(v)[:k].mean())
    np.testing.assert_allclose(mia.min_k_from_tokens(np.concatenate(vals), offsets, p), want, rtol=1e-12)


def test_min_k_plus_plus_standardises():
    lp = np.array([-1.0, -2.0, -0.5, -3.0])
    mu = np.array([-1.5, -1.0, -0.5, -2.0])
    sd = np.array([0.5, 1.0, 0.0, 2.0])
    z = np.array([1.0, -1.0, 0.0, -0.5])
    got = mia.min_k_plus_plus_from_tokens(lp, mu, sd, np.array([0, 2, 4]), 50)
    np.testing.assert_allclose(got, [min(z[:2]), min(z[2:])])


def test_reference_and_neighbourhood():
    np.testing.assert_allclose(mia.reference_ratio([-1.0, -2.0], [-1.5, -1.0]), [0.5, -1.0])
    nb = np.array([[-3.0, -5.0], [-1.0, -1.0]])
    np.testing.assert_allclose(mia.neighbourhood_score([-2.0, -2.0], nb), [2.0, -1.0])
    with pytest.raises(ConfigError):
        mia.neighbourhood_score([-2.0], np.zeros((2, 3)))


def test_point_mutation_neighbours():
    rng = np.random.default_rng(3)
    codes = rng.integers(0, 4, (6, 200)).astype(np.uint8)
    codes[:, 10:20] = 4  # N run
    nb = mia.point_mutation_neighbours(codes, n=8, rate=0.05, seed=1)
    assert nb.shape == (6, 8, 200) and nb.dtype == np.uint8
    diff = nb != codes[:, None, :]
    np.testing.assert_array_equal(diff.sum(-1), 10)  # round(0.05 * 200)
    assert not diff[:, :, 10:20].any()  # N stays N
    assert (nb[diff] < 4).all()
    np.testing.assert_array_equal(nb, mia.point_mutation_neighbours(codes, 8, 0.05, seed=1))
    assert not np.array_equal(nb, mia.point_mutation_neighbours(codes, 8, 0.05, seed=2))
    one = mia.point_mutation_neighbours(codes[0], 3, 0.01, seed=0)
    assert one.shape == (3, 200) and ((one != codes[0]).sum(-1) == 2).all()
    # Positions and substitutions are uniform: many neighbours of one sequence.
    big = mia.point_mutation_neighbours(np.zeros(50, np.uint8), 4000, 0.1, seed=5)
    per_pos = (big != 0).mean(0)
    assert abs(per_pos.mean() - 0.1) < 1e-12 and per_pos.std() < 0.02
    counts = np.bincount(big[big != 0], minlength=4)[1:]
    assert stats.chisquare(counts).pvalue > 1e-3


# ------------------------------------------------------------------ LiRA


def ref_lira(target, shadow, inc, online, fixed, logit):
    f = (lambda v: v - np.log(-np.expm1(v))) if logit else (lambda v: v)
    x, s = f(target), f(shadow)
    n = x.size
    res_in, res_out = [], []
    for i in range(n):
        si, so = s[inc[:, i], i], s[~inc[:, i], i]
        res_in += list(si - si.mean()) if si.size else []
        res_out += list(so - so.mean()) if so.size else []
    dof_in = sum(max(inc[:, i].sum() - 1, 0) for i in range(n))
    dof_out = sum(max((~inc[:, i]).sum() - 1, 0) for i in range(n))
    g_in = math.sqrt(sum(r * r for r in res_in) / dof_in) if dof_in else math.nan
    g_out = math.sqrt(sum(r * r for r in res_out) / dof_out)
    diffs = [s[inc[:, i], i].mean() - s[~inc[:, i], i].mean() for i in range(n)
             if inc[:, i].any() and (~inc[:, i]).any()]
    shift = np.mean(diffs) if diffs else math.nan
    out = np.empty(n)
    for i in range(n):
        si, so = s[inc[:, i], i], s[~inc[:, i], i]
        sd_in = g_in if fixed or si.size < 2 else si.std(ddof=1)
        sd_out = g_out if fixed or so.size < 2 else so.std(ddof=1)
        mu_out = so.mean() if so.size else si.mean() - shift
        mu_in = si.mean() if si.size else mu_out + shift
        if online:
            out[i] = stats.norm.logpdf(x[i], mu_in, sd_in) - stats.norm.logpdf(x[i], mu_out, sd_out)
        else:
            out[i] = (x[i] - mu_out) / sd_out
    return out


def _lira_data(seed, n=60, m=10):
    rng = np.random.default_rng(seed)
    member = rng.random(n) < 0.5
    base = rng.normal(-1.5, 0.3, n)  # per-example difficulty
    inc = rng.random((m, n)) < 0.5
    inc[:, 0] = True  # no OUT shadow for example 0
    inc[:, 1] = False  # no IN shadow for example 1
    inc[:3, 2] = [True, False, False]
    inc[3:, 2] = False  # a single IN shadow for example 2
    shadow = np.minimum(base + 0.4 * inc + rng.normal(0, 0.1, (m, n)), -1e-3)
    target = np.minimum(base + 0.4 * member + rng.normal(0, 0.1, n), -1e-3)
    return member, target, shadow, inc


@pytest.mark.parametrize("fixed", [False, True])
@pytest.mark.parametrize("logit", [True, False])
def test_lira_online_matches_loop_reference(fixed, logit):
    member, target, shadow, inc = _lira_data(4)
    got = mia.lira(target, shadow, inc, online=True, fixed_variance=fixed, logit=logit, chunk=7)
    np.testing.assert_allclose(got, ref_lira(target, shadow, inc, True, fixed, logit), rtol=1e-10, atol=1e-10)
    assert M.roc_auc(member, got) > 0.9


@pytest.mark.parametrize("fixed", [False, True])
def test_lira_offline_matches_loop_reference(fixed):
    member, target, shadow, inc = _lira_data(5)  # example 0 has no OUT shadow: filled in
    got = mia.lira(target, shadow, inc, online=False, fixed_variance=fixed)
    np.testing.assert_allclose(got, ref_lira(target, shadow, inc, False, fixed, True), rtol=1e-10)
    assert M.roc_auc(member, got) > 0.9
    # A pure offline design (every shadow OUT everywhere) needs no IN scores at all.
    out_only = np.zeros_like(inc)
    got2 = mia.lira(target, shadow, out_only, online=False, fixed_variance=fixed)
    np.testing.assert_allclose(got2, ref_lira(target, shadow, out_only, False, fixed, True), rtol=1e-10)
    with pytest.raises(ConfigError, match="OUT shadow scores"):
        mia.lira(target, shadow, np.ones_like(inc), online=False)
    no_both = np.zeros_like(inc)
    no_both[:, :5] = True  # examples 0-4 only IN, the rest only OUT: nothing to borrow a shift from
    with pytest.raises(ConfigError, match="both IN and OUT"):
        mia.lira(target, shadow, no_both, online=False)


# ------------------------------------------------------------------ RMIA


def ref_rmia(tx, rx, tz, rz, gamma, a):
    def pr(t, r):
        p_ref = np.exp(r).mean(0)
        if a is not None:
            p_ref = 0.5 * ((1 + a) * p_ref + (1 - a))
        return np.exp(t) / p_ref
    lx, lz = pr(tx, rx), pr(tz, rz)
    return np.array([np.mean([lx[i] / lz[j] >= gamma for j in range(lz.size)]) for i in range(lx.size)])


@pytest.mark.parametrize("gamma,a", [(1.0, None), (2.0, None), (1.0, 0.3), (1.5, 1.0)])
def test_rmia_matches_pairwise_reference(gamma, a):
    rng = np.random.default_rng(6)
    n, z, r = 80, 120, 4
    tx = rng.uniform(-2.0, -0.1, n)
    rx = rng.uniform(-2.0, -0.1, (r, n))
    tz = rng.uniform(-2.0, -0.1, z)
    rz = rng.uniform(-2.0, -0.1, (r, z))
    got = mia.rmia(tx, rx, tz, rz, gamma=gamma, offline_a=a)
    np.testing.assert_array_equal(got, ref_rmia(tx, rx, tz, rz, gamma, a))


def test_rmia_detects_members_and_validates():
    rng = np.random.default_rng(7)
    n, z, r = 2000, 1000, 4
    member = rng.random(n) < 0.5
    diff = rng.normal(-1.0, 0.3, n)
    tx = np.minimum(diff + 0.3 * member + rng.normal(0, 0.05, n), -1e-3)
    rx = np.minimum(diff + rng.normal(0, 0.05, (r, n)), -1e-3)
    dz = rng.normal(-1.0, 0.3, z)
    tz = np.minimum(dz + rng.normal(0, 0.05, z), -1e-3)
    rz = np.minimum(dz + rng.normal(0, 0.05, (r, z)), -1e-3)
    s = mia.rmia(tx, rx, tz, rz)
    assert M.roc_auc(member, s) > 0.95
    assert M.roc_auc(member, tx) < 0.85  # the reference calibration is what helps
    with pytest.raises(ConfigError, match="log-probabilities"):
        mia.rmia(-tx, rx, tz, rz)


def test_attack_scores_from_columns_and_store_like_object():
    rng = np.random.default_rng(8)
    n = 50
    cols = {"mean_logp": rng.uniform(-2, -0.5, n), "n_nucleotides": np.full(n, 100)}
    cols["sum_logp"] = cols["mean_logp"] * 100
    for p in (10, 20):
        cols[f"mink_{p}"] = cols["mean_logp"] - 1
        cols[f"minkpp_{p}"] = rng.normal(size=n)

    class Store:
        def column(self, name):
            return cols[name]

    ref = {"mean_logp": cols["mean_logp"] + 0.1}
    seqs, _, _ = _ragged(9, n=n, lo=100, hi=101, n_frac=0.0)
    out = mia.attack_scores(Store(), reference=ref, zlib_code_bits=mia.zlib_bits(seqs),
                            mink_percents=(10, 20), neighbour_sum_logp=np.zeros((n, 3)))
    assert set(out) == {"loss", "zlib", "mink_10", "minkpp_10", "mink_20", "minkpp_20", "reference",
                        "neighbourhood"}
    np.testing.assert_allclose(out["reference"], -0.1)
    np.testing.assert_allclose(out["neighbourhood"], cols["sum_logp"])


def test_rmia_one_million_by_ten_thousand():
    """1M audited rows against 10k population samples, in O(N + Z) memory; spot-checked against
    explicit pairwise comparisons on a subset of rows."""
    rng = np.random.default_rng(10)
    n, z, r = 1_000_000, 10_000, 2
    tx = -rng.uniform(0.05, 2.0, n)
    rx = -rng.uniform(0.05, 2.0, (r, n))
    tz = -rng.uniform(0.05, 2.0, z)
    rz = -rng.uniform(0.05, 2.0, (r, z))
    got = mia.rmia(tx, rx, tz, rz, gamma=1.3)
    assert got.shape == (n,) and 0.0 <= got.min() and got.max() <= 1.0
    idx = rng.choice(n, 50, replace=False)
    lx = mia.rmia_ratio(tx[idx], rx[:, idx])
    lz = mia.rmia_ratio(tz, rz)
    pairwise = ((lx[:, None] - lz[None, :]) >= math.log(1.3)).mean(axis=1)
    np.testing.assert_array_equal(got[idx], pairwise)


def tf_privacy_lira(target, shadow, inc, option, fix_variance, centre):
    """LiRA as TF Privacy's compute_score_lira / compute_score_offset define it, one example at a
    time from per-example lists (NaN-aware, ragged), with its sign (lower = member) flipped."""
    n = target.size
    stat_in = [shadow[inc[:, i], i] for i in range(n)]
    stat_out = [shadow[~inc[:, i], i] for i in range(n)]
    avg = np.nanmedian if centre == "median" else np.nanmean

    def centres(stats):
        c = np.array([avg(v) if np.isfinite(v).any() else np.nan for v in stats])
        return np.where(np.isnan(c), np.nanmean(c), c)

    def stds(stats, c):
        if fix_variance:
            devs = [x - ci for v, ci in zip(stats, c, strict=True) for x in v if not np.isnan(x)]
            return np.full(n, np.std(devs))
        sd = np.array([np.nanstd(v) if np.isfinite(v).any() else np.nan for v in stats])
        return np.where(np.isnan(sd), np.nanmean(sd), sd)

    c_in, c_out = centres(stat_in), centres(stat_out)
    if option == "offset":
        return target - (c_in + c_out) / 2
    sd_in, sd_out = stds(stat_in, c_in), stds(stat_out, c_out)
    lp_in = np.array([stats.norm.logpdf(target[i], c_in[i], sd_in[i] + 1e-30) for i in range(n)])
    lp_out = np.array([stats.norm.logpdf(target[i], c_out[i], sd_out[i] + 1e-30) for i in range(n)])
    return {"both": lp_in - lp_out, "in": lp_in, "out": -lp_out}[option]


@pytest.mark.parametrize("centre", ["mean", "median"])
@pytest.mark.parametrize("fixed", [False, True])
@pytest.mark.parametrize("variant,option", [("online", "both"), ("in", "in"), ("out", "out"), ("offset", "offset")])
def test_lira_reference_convention_matches_tf_privacy(variant, option, fixed, centre):
    member, target, shadow, inc = _lira_data(8)
    shadow = shadow.copy()
    shadow[2, 5] = shadow[7, 9] = np.nan  # a shadow model that did not score an example
    inc[:, 10] = False
    inc[0, 10] = True  # one IN model only (its σ is 0, as in the reference)
    got = mia.lira(target, shadow, inc, variant=variant, fixed_variance=fixed, logit=False, variance="reference",
                   centre=centre, chunk=7)
    want = tf_privacy_lira(target, shadow, inc, option, fixed, centre)
    ok = np.isfinite(want)
    np.testing.assert_allclose(got[ok], want[ok], rtol=1e-10, atol=1e-10)
    np.testing.assert_array_equal(np.isfinite(got), ok)
    if variant in ("online", "offset"):
        assert M.roc_auc(member, got) > 0.85


def test_lira_ignores_nan_shadow_scores_and_rejects_nan_targets():
    member, target, shadow, inc = _lira_data(9)
    holes = shadow.copy()
    holes[0, 4] = np.nan
    got = mia.lira(target, holes, inc)
    assert np.isfinite(got).all()
    # a NaN score is the same as that shadow model not having scored the example: example 4's own
    # fit is the fit without model 0 (it keeps >= 2 IN and >= 2 OUT scores)
    others = np.arange(1, shadow.shape[0])
    assert inc[others, 4].sum() >= 2 and (~inc[others, 4]).sum() >= 2
    without = mia.lira(target, shadow[others], inc[others])
    assert got[4] == pytest.approx(without[4], rel=1e-12)
    # the other examples keep their own fits; only those on the pooled σ (< 2 scores on a side) move
    base = mia.lira(target, shadow, inc)
    own = (inc.sum(0) >= 2) & ((~inc).sum(0) >= 2)
    own[4] = False
    np.testing.assert_array_equal(got[own], base[own])
    assert got[4] != base[4]
    bad = target.copy()
    bad[3] = np.nan
    with pytest.raises(ConfigError, match="NaN"):
        mia.lira(bad, shadow, inc)
    with pytest.raises(ConfigError, match="unknown LiRA variant"):
        mia.lira(target, shadow, inc, variant="both")


def test_logit_confidence_is_exact_for_large_margins():
    margins = np.array([1.0, 10.0, 27.6, 30.0, 100.0, 400.0, 700.0])
    logp = -np.log1p(np.exp(-margins))  # log sigmoid(m), exact in float64
    np.testing.assert_allclose(mia.logit_confidence(logp), margins, rtol=1e-12)
    assert mia.logit_confidence(np.array([0.0]))[0] == pytest.approx(744.44, abs=0.01)  # p rounded to 1
    assert mia.logit_confidence(np.array([-math.log(2.0)]))[0] == pytest.approx(0.0, abs=1e-15)


def test_rmia_trimmed_mean_and_single_reference_inversion():
    """p(x) as scipy.stats.trim_mean over the reference models; with one reference model that
    trained on x, its probability inverted to an OUT one (p + a - 1) / a before the offline rule."""
    rng = np.random.default_rng(11)
    n, z, r = 40, 50, 6
    tx, tz = rng.uniform(-2.0, -0.05, n), rng.uniform(-2.0, -0.05, z)
    rx, rz = rng.uniform(-2.0, -0.05, (r, n)), rng.uniform(-2.0, -0.05, (r, z))
    for trim in (0.0, 0.2, 0.34):
        want = np.log(np.exp(tx) / stats.trim_mean(np.exp(rx), trim, axis=0))
        np.testing.assert_allclose(mia.rmia_ratio(tx, rx, trim=trim), want, rtol=1e-12)
        lx = np.exp(tx) / stats.trim_mean(np.exp(rx), trim, axis=0)
        lz = np.exp(tz) / stats.trim_mean(np.exp(rz), trim, axis=0)
        ref = np.array([np.mean([lx[i] / lz[j] >= 1.0 for j in range(z)]) for i in range(n)])
        np.testing.assert_array_equal(mia.rmia(tx, rx, tz, rz, trim=trim), ref)
    a = 0.3
    one, inn = rx[:1], rng.random((1, n)) < 0.5
    got = mia.rmia_ratio(tx, one, offline_a=a, reference_in=inn)
    p = np.exp(one[0])
    p_out = np.where(inn[0], np.clip((p + a - 1) / a, np.nextafter(0, 1), 1.0), p)
    np.testing.assert_allclose(got, tx - np.log(((1 + a) * p_out + (1 - a)) / 2), rtol=1e-12)
    assert not np.allclose(got, mia.rmia_ratio(tx, one, offline_a=a))  # the inversion changed the IN rows
    with pytest.raises(ConfigError, match="exactly one reference model"):
        mia.rmia_ratio(tx, rx, offline_a=a, reference_in=np.ones_like(rx, bool))
    with pytest.raises(ConfigError, match="trim"):
        mia.rmia_ratio(tx, rx, trim=0.5)


def test_attack_scores_pass_lira_conventions_through():
    member, target, shadow, inc = _lira_data(12)
    cols = {"mean_logp": target, "sum_logp": target * 10}
    got = mia.attack_scores(cols, mink_percents=(), lira_inputs=(shadow, inc),
                            lira_options={"variance": "reference", "centre": "median"})
    for name, online in (("lira_online", True), ("lira_offline", False)):
        want = mia.lira(target, shadow, inc, online=online, fixed_variance=True, variance="reference", centre="median")
        np.testing.assert_array_equal(got[name], want)
    default = mia.attack_scores(cols, mink_percents=(), lira_inputs=(shadow, inc))
    assert not np.allclose(default["lira_online"], got["lira_online"])
