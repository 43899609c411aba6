"""Risk formulas, bands and the worst case."""

from __future__ import annotations

import numpy as np
import pytest

from glmjax.audit import risk as R
from glmjax.audit.perplexity import NULL_CONTROLS, detect
from glmjax.errors import ConfigError


@pytest.mark.parametrize("x,want", [(0.0, "low"), (0.0999, "low"), (0.1, "medium"), (0.2999, "medium"),
                                    (0.3, "high"), (1.0, "high")])
def test_band_edges(x, want):
    assert R.band(x) == want


def test_band_rejects_out_of_range():
    with pytest.raises(ConfigError):
        R.band(1.5)


def test_detection_risk():
    assert R.detection_risk(0.25, 0.01) == pytest.approx(0.24)
    assert R.detection_risk(0.005, 0.01) == 0.0


def test_detection_risk_from_result_takes_max_over_groups_and_reference():
    rng = np.random.default_rng(0)
    nm = rng.normal(3, 0.2, 1000)
    members = rng.normal(3, 0.2, 200)
    canaries = rng.normal(2.2, 0.2, 20)
    res = detect({"members": members, "canaries": canaries}, nm, mode="causal", fpr=0.01,
                 reference_queries={"members": members - 3, "canaries": canaries - 3},
                 reference_nonmember=nm - rng.normal(3, 0.05, 1000), reference_mode="causal")
    want = max(max(g.tpr for g in r.groups.values()) - r.expected_fpr for r in (res, res.reference))
    risk, src = R.detection_risk_from(res)
    assert risk == pytest.approx(max(want, 0.0))
    assert src.endswith(":canaries")


def test_detection_risk_is_the_max_over_windows_and_canary_results():
    rng = np.random.default_rng(1)
    nm = rng.normal(3, 0.2, 1000)
    windows = detect({"members": rng.normal(2.9, 0.2, 500)}, nm, mode="causal", fpr=0.01)
    controls = rng.normal(4.0, 0.1, 10)
    # 3 of 10 planted canaries lie below every control: TPR 0.3 at realised FPR 0 and expected
    # FPR 1 / 11 (a fresh control falls below the lowest of 10 with probability 1 / 11)
    planted = np.concatenate([np.full(3, 3.5), np.full(7, 4.5)])
    canaries = detect({"canaries": planted}, controls, mode="causal", fpr=0.01,
                      reference_queries={"canaries": planted - 4.0}, reference_nonmember=controls - rng.normal(3.8, 0.01, 10),
                      reference_mode="causal", null="control canaries")
    w_risk = windows.groups["members"].tpr - windows.expected_fpr
    assert canaries.realised_fpr == 0.0 and canaries.groups["canaries"].tpr == pytest.approx(0.3)
    assert canaries.expected_fpr == pytest.approx(1 / 11)
    # under the reference ratio the canaries (4.0) sit above every control (about 3.8): none flagged
    assert canaries.reference.groups["canaries"].tpr == 0.0
    assert 0 < w_risk < 0.3 - 1 / 11
    assert R.detection_risk_from(windows, canaries) == (pytest.approx(0.3 - 1 / 11), "log_perplexity:canaries")
    assert R.detection_risk_from(windows, None) == (pytest.approx(w_risk), "log_perplexity:members")
    assert R.detection_risk_from(None, canaries) == R.detection_risk_from(canaries)
    with pytest.raises(ConfigError, match="at least one detection"):
        R.detection_risk_from(None, None)


def test_extraction_risk():
    # fraction extracted 1/4; mean exposure/log2R = (20 + 10 + 0 + 30 capped at 20) / 20 / 4 = 0.625
    r = R.extraction_risk([True, False, False, False], [20.0, 10.0, 0.0, 30.0], 20.0)
    assert r == pytest.approx(0.625)
    assert R.extraction_risk([True, True], [0.0, 0.0], [16.0, 20.0]) == 1.0
    with pytest.raises(ConfigError):
        R.extraction_risk([], [], 20.0)


def test_mia_risk_picks_the_worst_attack():
    r, name = R.mia_risk({"loss": (0.02, 0.10), "lira": (0.35, 0.30), "zlib": (0.01, 0.2)})
    assert (r, name) == (0.35, "lira")
    assert R.mia_attack_risk(0.01, -0.1) == 0.01


def test_summary_worst_case_band_and_ties():
    s = R.summarise({"detection": 0.05, "extraction": 0.31, "mia": None}, {"extraction": "fraction_extracted"})
    assert s.worst_case == 0.31 and s.band == "high" and s.worst_vector == "extraction"
    assert "mia" not in s.vectors and s.sources == {"extraction": "fraction_extracted"}
    tie = R.summarise({"mia": 0.2, "detection": 0.2})
    assert tie.worst_vector == "detection"  # ties go to the first of detection, extraction, mia
    d = tie.to_dict()
    assert d["band"] == "medium" and d["vectors"] == {"detection": 0.2, "mia": 0.2}
    with pytest.raises(ConfigError, match="no attack vector"):
        R.summarise({"mia": None})
    with pytest.raises(ConfigError, match="unknown"):
        R.summarise({"bogus": 0.1})


# ------------------------------------------------------------------ bootstrap of the risk

def _counts(idx: np.ndarray, n: int) -> np.ndarray:
    return np.bincount(idx, minlength=n)[None]


@pytest.mark.parametrize("fpr,n_null", [(0.01, 16), (0.01, 500), (0.1, 37), (0.05, 3)])
def test_detection_replicates_equal_detect_on_the_resampled_data(fpr, n_null):
    """One replicate = detect() run on the explicitly resampled arrays (ties included)."""
    rng = np.random.default_rng(n_null)
    null = np.round(rng.normal(3.0, 0.3, n_null), 1)      # rounded: ties within the null and with queries
    x = np.round(rng.normal(2.7, 0.3, 40), 1)
    point = detect({"q": x}, null, mode="causal", fpr=fpr, null=NULL_CONTROLS)
    assert R.detection_replicates(x, null, fpr)[0] == pytest.approx(R.detection_risk(point.groups["q"].tpr,
                                                                                     point.expected_fpr), abs=1e-15)
    for _ in range(20):
        ix, inn = rng.integers(0, x.size, x.size), rng.integers(0, null.size, null.size)
        res = detect({"q": x[ix]}, null[inn], mode="causal", fpr=fpr, null=NULL_CONTROLS)
        want = R.detection_risk(res.groups["q"].tpr, res.expected_fpr)
        got = R.detection_replicates(x, null, fpr, _counts(ix, x.size), _counts(inn, null.size))[0]
        assert got == pytest.approx(want, abs=1e-15)


def test_extraction_replicates_equal_extraction_risk_on_resampled_canaries():
    rng = np.random.default_rng(1)
    ext = rng.random(30) < 0.2
    exp = rng.uniform(0, 24, 30)
    lr = np.full(30, 20.0)
    assert R.extraction_replicates(ext, exp, lr)[0] == pytest.approx(R.extraction_risk(ext, exp, lr))
    for _ in range(10):
        i = rng.integers(0, 30, 30)
        assert R.extraction_replicates(ext, exp, lr, _counts(i, 30))[0] == pytest.approx(
            R.extraction_risk(ext[i], exp[i], lr[i]))


def _inputs(rng, shift: float, n: int = 400, controls: int = 120):
    labels = np.zeros(2 * n, bool)
    labels[:n] = True
    lppl = rng.normal(3.0, 0.3, 2 * n)
    lppl[labels] -= shift
    can = rng.normal(3.0, 0.3, 60 + controls)
    planted = np.zeros(can.size, bool)
    planted[:60] = True
    can[planted] -= 2 * shift
    return R.RiskInputs(members=lppl[labels], nonmembers=lppl[~labels], canary_log_ppl=can, canary_planted=planted,
                        extracted=np.zeros(can.size, bool), exposure=np.where(planted, 8 * shift, 0.5),
                        log2_candidates=np.full(can.size, 20.0), mia_labels=labels,
                        mia_scores={"loss": -lppl, "noise": rng.normal(size=2 * n)})


def test_bootstrap_risk_intervals():
    rng = np.random.default_rng(2)
    strong = R.bootstrap_risk(_inputs(rng, 0.6), 200, seed=0)
    assert set(strong["vectors_ci"]) == {"detection", "extraction", "mia"}
    lo, hi = strong["worst_case_ci"]
    assert 0.5 < lo <= hi <= 1.0
    for v in strong["vectors_ci"].values():
        assert 0.0 <= v[0] <= v[1] <= 1.0
    # the worst case of each replicate is at least each vector's: so are its percentiles
    assert lo >= max(v[0] for v in strong["vectors_ci"].values()) - 1e-12
    none = R.bootstrap_risk(_inputs(rng, 0.0), 200, seed=0)
    assert none["vectors_ci"]["detection"][0] == 0.0 and none["vectors_ci"]["detection"][1] < 0.2
    assert none["worst_case_ci"][1] < strong["worst_case_ci"][0]
    # deterministic per seed; replicates processed in small chunks (other draws) agree within noise
    again = R.bootstrap_risk(_inputs(np.random.default_rng(2), 0.6), 200, seed=0)
    assert again == strong
    chunked = R.bootstrap_risk(_inputs(np.random.default_rng(2), 0.6), 200, seed=0, max_cells=5000)
    np.testing.assert_allclose(chunked["worst_case_ci"], strong["worst_case_ci"], atol=0.05)
    assert R.bootstrap_risk(_inputs(rng, 0.6), 0)["worst_case_ci"] is None


def test_sample_warnings():
    w = R.sample_warnings(8, {0: 8, 1: 2, 4: 12}, [0.1, 0.5], True)
    assert len(w) == 3
    assert "only 8 control canaries" in w[0] and "1/(n+1) = 0.111" in w[0]
    assert "repetition count(s) 1:" in w[1]
    assert "cannot be ranked" in w[2]
    assert R.sample_warnings(200, {0: 200, 1: 20}, [0.3, 0.35], True) == []
    assert R.sample_warnings(200, {0: 200, 1: 20}, [0.3, 0.35], True, worst_case=0.3) == []
    (below,) = R.sample_warnings(200, {0: 200, 1: 20}, [0.3, 0.35], True, worst_case=0.25)
    assert "0.250 lies below its interval" in below
