"""Perplexity detection: closed forms for z, p-values, calibrated threshold, TPR, modes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from glmjax.audit import perplexity as P
from glmjax.errors import ConfigError, StoreError


def test_log_perplexity_and_perplexity():
    s = np.array([-10.0, -3.0])
    n = np.array([5, 3])
    np.testing.assert_allclose(P.log_perplexity(s, n), [2.0, 1.0])
    np.testing.assert_allclose(P.perplexity(s, n), [math.e**2, math.e])
    with pytest.raises(ConfigError, match="no scored token"):
        P.log_perplexity(s, np.array([5, 0]))


def test_z_and_p_values_closed_form():
    nm = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    q = np.array([0.5, 3.0, 6.0])
    sd = np.std(nm, ddof=1)
    np.testing.assert_allclose(P.z_scores(q, nm), (3.0 - q) / sd)
    # (1 + #{nm <= x}) / 6: 0.5 -> 1/6, 3.0 -> 4/6, 6.0 -> 6/6
    np.testing.assert_allclose(P.empirical_p_values(q, nm), [1 / 6, 4 / 6, 1.0])


def test_p_values_are_valid_under_the_null():
    # A query drawn from the non-member distribution has P[p <= a] <= a.
    rng = np.random.default_rng(0)
    ps = []
    for _ in range(400):
        x = rng.normal(size=50)
        ps.append(P.empirical_p_values(x[:1], x[1:])[0])
    ps = np.array(ps)
    for a in (0.05, 0.1, 0.5):
        assert (ps <= a).mean() <= a + 3 * math.sqrt(a * (1 - a) / ps.size)


@pytest.mark.parametrize("fpr", [0.0, 0.01, 0.05, 0.29, 1.0])
def test_calibrated_threshold_never_exceeds_target(fpr):
    rng = np.random.default_rng(1)
    nm = np.round(rng.normal(size=100), 1)  # ties
    t, realised = P.calibrate_threshold(nm, fpr)
    assert realised == (nm < t).mean()
    assert realised <= fpr
    # Largest admissible: the next distinct value would exceed the target.
    above = np.sort(nm[nm >= t])
    if above.size:
        assert (nm <= above[0]).mean() > fpr


def test_detect_tpr_by_repetition_and_reference():
    rng = np.random.default_rng(2)
    nm = rng.normal(3.0, 0.2, 1000)
    reps = np.repeat([1, 10, 100], 50)
    shift = np.repeat([0.0, 0.4, 2.0], 50)
    can = rng.normal(3.0, 0.2, 150) - shift
    res = P.detect({"canaries": can}, nm, mode="causal", fpr=0.01, repetitions={"canaries": reps})
    t = np.sort(nm)[10]
    assert res.threshold == t and res.realised_fpr == 0.01
    g = res.groups["canaries"]
    assert g.tpr == pytest.approx((can < t).mean())
    by = {r["repetitions"]: r for r in g.by_repetition}
    for r, sl in ((1, slice(0, 50)), (10, slice(50, 100)), (100, slice(100, 150))):
        assert by[r]["tpr"] == pytest.approx((can[sl] < t).mean())
        assert by[r]["z_mean"] == pytest.approx(((nm.mean() - can[sl]) / nm.std(ddof=1)).mean())
    assert by[100]["tpr"] == 1.0 and by[1]["tpr"] < 0.1
    # A reference model that finds the canaries just as easy removes the signal.
    ref = {"canaries": can - rng.normal(3.0, 0.2, 150)}
    ref_nm = nm - rng.normal(3.0, 0.2, 1000)
    res2 = P.detect({"canaries": can}, nm, mode="causal", reference_queries=ref,
                    reference_nonmember=ref_nm, reference_mode="causal")
    assert res2.reference is not None and res2.reference.statistic == "log_perplexity_ratio"
    diff_t = np.sort(nm - ref_nm)[10]
    assert res2.reference.threshold == diff_t
    assert res2.reference.groups["canaries"].tpr == pytest.approx((can - ref["canaries"] < diff_t).mean())
    assert res2.reference.groups["canaries"].tpr < 0.05
    d = res2.to_dict()
    assert d["mode"] == "causal" and d["reference"]["groups"]["canaries"]["n"] == 150
    assert res.null == d["null"] == d["reference"]["null"] == P.NULL_WINDOWS  # the default null


def test_control_canary_null_threshold_is_the_lowest_control():
    rng = np.random.default_rng(5)
    controls = rng.normal(3.0, 0.3, 16)  # 16 * 0.01 < 1: no control may be flagged
    planted = np.concatenate([controls.min() - rng.uniform(0.01, 1.0, 8),   # below every control
                              controls.min() + rng.uniform(0.0, 1.0, 8)])   # at or above the lowest
    reps = np.repeat([64, 1], 8)
    res = P.detect({"canaries": planted}, controls, mode="causal", fpr=0.01, repetitions={"canaries": reps},
                   null=P.NULL_CONTROLS)
    assert res.null == P.NULL_CONTROLS and res.to_dict()["null"] == "control canaries"
    assert res.threshold == controls.min() and res.realised_fpr == 0.0 and res.n_nonmembers == 16
    by = {r["repetitions"]: r for r in res.groups["canaries"].by_repetition}
    assert by[64]["tpr"] == 1.0 and by[1]["tpr"] == 0.0 and res.groups["canaries"].tpr == 0.5
    # p-values against the controls: below every control -> 1 / 17
    assert by[64]["p_median"] == pytest.approx(1 / 17)
    # 200 controls at 1 %: k = 2, the threshold is the third-lowest control and 2 controls are flagged
    many = rng.normal(3.0, 0.3, 200)
    res2 = P.detect({"canaries": planted}, many, mode="causal", fpr=0.01, null=P.NULL_CONTROLS)
    assert res2.threshold == np.sort(many)[2] and res2.realised_fpr == 0.01


def test_single_control_gives_a_threshold_but_no_z():
    res = P.detect({"canaries": np.array([1.0, 2.5])}, np.array([2.0]), mode="causal", fpr=0.01,
                   repetitions={"canaries": np.array([4, 4])}, null=P.NULL_CONTROLS)
    assert res.threshold == 2.0 and res.realised_fpr == 0.0 and res.groups["canaries"].tpr == 0.5
    assert math.isnan(res.groups["canaries"].z_mean) and math.isnan(res.nonmember_std)
    # the windows null keeps refusing what it cannot describe
    with pytest.raises(ConfigError, match="at least 2 non-member"):
        P.detect({"m": np.array([1.0])}, np.array([2.0]), mode="causal")
    with pytest.raises(ConfigError, match="unknown null"):
        P.detect({"m": np.array([1.0])}, np.array([2.0, 3.0]), mode="causal", null="controls")
    with pytest.raises(ConfigError, match="at least one value"):
        P.detect({"m": np.array([1.0])}, np.zeros(0), mode="causal", null=P.NULL_CONTROLS)


def test_modes_are_never_mixed():
    nm = np.arange(10.0)
    with pytest.raises(StoreError, match="same mode"):
        P.detect({"m": nm}, nm, mode="pll-exact", reference_queries={"m": nm},
                 reference_nonmember=nm, reference_mode="causal")
    with pytest.raises(StoreError, match="same mode"):
        P.check_same_mode(("a", "pll-strided", {"k": 4}), ("b", "pll-strided", {"k": 8}))
    with pytest.raises(StoreError, match="unknown scoring mode"):
        P.detect({"m": nm}, nm, mode="pll")
    mode, params = P.check_same_mode(("a", "pll-random", {"k": 8, "fraction": 0.15, "seed": 0}),
                                     ("b", "pll-random", {"k": 8, "fraction": 0.15, "seed": 0}))
    assert mode == "pll-random" and params["k"] == 8


def test_few_controls_flag_a_null_canary_with_probability_one_over_n_plus_one():
    # The realised FPR on the controls is 0, yet a canary exchangeable with them falls below the
    # lowest of n controls with probability 1 / (n + 1): the chance level documented for few controls.
    rng = np.random.default_rng(9)
    for n in (2, 8):
        flagged = [P.detect({"canaries": x[:1]}, x[1:], mode="causal", fpr=0.01, null=P.NULL_CONTROLS)
                   .groups["canaries"].tpr for x in rng.normal(size=(3000, n + 1))]
        p = 1 / (n + 1)
        assert abs(np.mean(flagged) - p) < 4 * math.sqrt(p * (1 - p) / 3000)


def test_expected_fpr_is_the_chance_of_flagging_a_fresh_null_draw():
    nm = np.array([3.0, 1.0, 2.0, 5.0, 4.0])
    assert P.expected_fpr(nm, 1.0) == pytest.approx(1 / 6)   # below the lowest: only a new lowest
    assert P.expected_fpr(nm, 3.5) == pytest.approx(4 / 6)   # three null values below
    assert P.expected_fpr(nm, -math.inf) == 0.0 and P.expected_fpr(nm, math.inf) == 1.0
    # with few controls, a canary group exchangeable with them scores 0 risk on average
    from glmjax.audit import risk as R

    rng = np.random.default_rng(11)
    for n in (2, 16):
        risks, tprs = [], []
        for x in rng.normal(size=(2000, n + 8)):
            res = P.detect({"canaries": x[:8]}, x[8:], mode="causal", fpr=0.01, null=P.NULL_CONTROLS)
            assert res.expected_fpr == pytest.approx(1 / (n + 1))
            tprs.append(res.groups["canaries"].tpr)
            risks.append(R.detection_risk(res.groups["canaries"].tpr, res.expected_fpr))
        assert abs(np.mean(tprs) - 1 / (n + 1)) < 0.01
        # TPR - expected FPR is 0 on average; clipping at 0 leaves a positive mean, but below the
        # 1 / (n + 1) that TPR - realised FPR (0 here) would give
        assert abs(np.mean(np.array(tprs) - 1 / (n + 1))) < 0.01
        assert np.mean(risks) < 0.8 / (n + 1)
