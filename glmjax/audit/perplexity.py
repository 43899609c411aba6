"""Perplexity-based detection: is a sequence's perplexity unusually low for a non-member?

Per-sequence log-perplexity is ``-sum_logp / n_tokens`` (nats per scored token) from a
ScoreStore: the exact causal log-likelihood for causal models, the pseudo-log-likelihood for
masked models. The scoring mode ("causal", "pll-exact", "pll-strided", "pll-random" and its
parameters) travels with every array: statistics from different modes are never compared, and
every result states the mode it was computed in.

Detection compares query sequences with a null distribution of log-perplexities of sequences
the model never saw, all lower-is-more-suspicious. The null must resemble the queries in everything
but training: member genome windows are compared with non-member genome windows
(:data:`NULL_WINDOWS`), planted canaries with never-planted control canaries from the same
generator (:data:`NULL_CONTROLS`) — short random prefix + secret sequences differ from genome
windows in length and composition, so against windows even never-planted canaries look "detected".

- z-score: ``(mean_null - x) / std_null`` (positive = less perplexing than typical); undefined
  (NaN) when a control-canary null has fewer than 2 values or no spread.
- empirical p-value: ``(1 + #{null values <= x}) / (1 + n_null)``, the +1 correction making it a
  valid p-value under the null "x is one more draw from the null".
- calibrated threshold: flag ``x < t`` with ``t`` the (k+1)-th smallest null value, k the largest
  integer with k / n <= target FPR; at most k null values are then flagged (fewer when values
  tie), so the FPR on the calibration set never exceeds the target. With n * FPR < 1 (e.g. 16
  controls at 1 %) t is the lowest null value and the realised FPR is 0 — on those n values; a
  fresh draw from the null still falls below t with probability 1 / (n + 1).
- expected FPR: the probability that a fresh draw from the null is flagged,
  ``(1 + #{null values < t}) / (1 + n)`` (the rank argument behind the p-value; 0 when nothing
  can be flagged). It is what the risk subtracts from the TPR, so a query group exchangeable
  with the null scores 0 on average however few controls there are.
- TPR: the fraction of a query group flagged; per canary repetition count when given.
- reference ratio: with a reference model, the same procedure on
  ``log_ppl_target - log_ppl_reference`` (the reference model must use the same scoring mode).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from glmjax.errors import ConfigError, StoreError

MODES = ("causal", "pll-exact", "pll-strided", "pll-random")
NULL_WINDOWS = "non-member windows"
NULL_CONTROLS = "control canaries"
NULLS = (NULL_WINDOWS, NULL_CONTROLS)


def log_perplexity(sum_logp: np.ndarray, n_tokens: np.ndarray) -> np.ndarray:
    """Log-perplexity in nats per scored token: -sum_logp / n_tokens, float64 [N].

    Raises:
      ConfigError: when a sequence has no scored token.
    """
    s = np.asarray(sum_logp, dtype=np.float64)
    n = np.asarray(n_tokens, dtype=np.float64)
    if np.any(n <= 0):
        raise ConfigError(f"{int((n <= 0).sum())} sequences have no scored token; drop them before detection")
    return -s / n


def perplexity(sum_logp: np.ndarray, n_tokens: np.ndarray) -> np.ndarray:
    """Perplexity exp(-sum_logp / n_tokens) (pseudo-perplexity for PLL modes), float64 [N]."""
    return np.exp(log_perplexity(sum_logp, n_tokens))


def check_same_mode(*modes: tuple[str, str, Mapping | None]) -> tuple[str, dict]:
    """Ensure every (name, mode, mode_params) triple uses one scoring mode.

    Returns:
      (mode, mode_params) shared by all.

    Raises:
      StoreError: naming the two inputs whose modes differ.
    """
    if not modes:
        raise ConfigError("no scores given")
    name0, mode0, params0 = modes[0]
    params0 = dict(params0 or {})
    if mode0 not in MODES:
        raise StoreError(f"{name0}: unknown scoring mode {mode0!r} (expected one of {', '.join(MODES)})")
    for name, mode, params in modes[1:]:
        if mode != mode0 or dict(params or {}) != params0:
            raise StoreError(
                f"{name} was scored in mode {mode!r} {dict(params or {})} but {name0} in {mode0!r} "
                f"{params0}; rescore one of them so both use the same mode")
    return mode0, params0


def z_scores(query: np.ndarray, nonmember: np.ndarray) -> np.ndarray:
    """(mean_nonmember - x) / std_nonmember (ddof=1): positive = lower log-perplexity than typical."""
    nm = np.asarray(nonmember, dtype=np.float64)
    if nm.size < 2:
        raise ConfigError("detection needs at least 2 non-member sequences")
    sd = nm.std(ddof=1)
    if sd == 0:
        raise ConfigError("all non-member log-perplexities are equal; z-scores are undefined")
    return (nm.mean() - np.asarray(query, dtype=np.float64)) / sd


def empirical_p_values(query: np.ndarray, nonmember: np.ndarray) -> np.ndarray:
    """(1 + #{non-members <= x}) / (1 + n) for every query x, float64 [Q], in (0, 1]."""
    nm = np.sort(np.asarray(nonmember, dtype=np.float64))
    return (1.0 + np.searchsorted(nm, np.asarray(query, dtype=np.float64), side="right")) / (1.0 + nm.size)


def max_flags(fpr: float, n: int) -> int:
    """The largest k with k / n <= fpr (0 <= k <= n): how many of n null values a threshold may flag."""
    if not 0.0 <= fpr <= 1.0:
        raise ConfigError(f"the target false-positive rate must be in [0, 1], got {fpr}")
    k = min(int(math.floor(fpr * n)), n)
    while k + 1 <= n and (k + 1) / n <= fpr:
        k += 1
    while k > 0 and k / n > fpr:
        k -= 1
    return k


def calibrate_threshold(nonmember: np.ndarray, fpr: float) -> tuple[float, float]:
    """Threshold t such that flagging ``x < t`` flags at most a fraction ``fpr`` of non-members.

    Returns:
      (t, realised FPR on these non-members); t = -inf when even one flag is too many and
      +inf when fpr >= 1.
    """
    nm = np.sort(np.asarray(nonmember, dtype=np.float64))
    n = nm.size
    k = max_flags(fpr, n)
    t = math.inf if k >= n else float(nm[k])
    return t, float((nm < t).sum() / n)


@dataclass
class DetectionGroup:
    """Detection of one query group (e.g. members, canaries) against the null distribution."""

    name: str
    n: int
    tpr: float
    z_mean: float
    z_median: float
    p_median: float
    by_repetition: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return {"n": self.n, "tpr": self.tpr, "z_mean": self.z_mean, "z_median": self.z_median,
                "p_median": self.p_median, "by_repetition": self.by_repetition}


@dataclass
class DetectionResult:
    """Perplexity detection in one scoring mode, on one statistic, against one null distribution.

    ``n_nonmembers``, ``nonmember_mean`` and ``nonmember_std`` describe the null distribution that
    ``null`` names (non-member windows or control canaries); the names are kept from the time
    the null was always the non-member windows.
    """

    mode: str
    mode_params: dict
    statistic: str  # "log_perplexity" | "log_perplexity_ratio"
    fpr_target: float
    threshold: float
    realised_fpr: float
    n_nonmembers: int
    nonmember_mean: float
    nonmember_std: float
    groups: dict[str, DetectionGroup]
    reference: DetectionResult | None = None
    null: str = NULL_WINDOWS
    expected_fpr: float = 0.0

    def to_dict(self) -> dict:
        """JSON-ready dict (``detection.windows`` / ``detection.canaries`` of report.json)."""
        return {
            "mode": self.mode, "mode_params": self.mode_params, "statistic": self.statistic, "null": self.null,
            "fpr_target": self.fpr_target,
            "threshold": self.threshold if math.isfinite(self.threshold) else None,
            "realised_fpr": self.realised_fpr, "expected_fpr": self.expected_fpr, "n_nonmembers": self.n_nonmembers,
            "nonmember_mean": self.nonmember_mean, "nonmember_std": self.nonmember_std,
            "groups": {k: g.to_dict() for k, g in self.groups.items()},
            "reference": None if self.reference is None else self.reference.to_dict(),
        }


def _group(name: str, x: np.ndarray, nonmember: np.ndarray, t: float,
           repetitions: np.ndarray | None, null: str) -> DetectionGroup:
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        raise ConfigError(f"detection group {name!r} is empty")
    if null == NULL_CONTROLS and (nonmember.size < 2 or nonmember.std(ddof=1) == 0):
        # A handful of controls (often a single one) still calibrates a threshold; only the
        # z-score needs a spread, and it is reported as undefined rather than refused.
        z = np.full(x.shape, np.nan)
    else:
        z = z_scores(x, nonmember)
    p = empirical_p_values(x, nonmember)
    flagged = x < t
    rows = []
    if repetitions is not None:
        reps = np.asarray(repetitions, dtype=np.int64)
        if reps.shape != x.shape:
            raise ConfigError(f"{name}: {reps.size} repetition counts for {x.size} sequences")
        keys, inv, counts = np.unique(reps, return_inverse=True, return_counts=True)
        tpr = np.bincount(inv, weights=flagged, minlength=keys.size) / counts
        zm = np.bincount(inv, weights=z, minlength=keys.size) / counts
        for i, k in enumerate(keys):
            rows.append({"repetitions": int(k), "n": int(counts[i]), "tpr": float(tpr[i]),
                         "z_mean": float(zm[i]), "p_median": float(np.median(p[inv == i]))})
    return DetectionGroup(name, int(x.size), float(flagged.mean()), float(z.mean()), float(np.median(z)),
                          float(np.median(p)), rows)


def _detect_statistic(queries: Mapping[str, np.ndarray], nonmember: np.ndarray, mode: str, params: dict,
                      statistic: str, fpr: float, repetitions: Mapping[str, np.ndarray] | None,
                      null: str) -> DetectionResult:
    nm = np.asarray(nonmember, dtype=np.float64)
    if nm.size == 0:
        raise ConfigError(f"detection needs at least one value of its null distribution ({null})")
    if not np.isfinite(nm).all():
        raise ConfigError(f"log-perplexities of the null distribution ({null}) must be finite")
    t, realised = calibrate_threshold(nm, fpr)
    groups = {name: _group(name, x, nm, t, (repetitions or {}).get(name), null) for name, x in queries.items()}
    sd = float(nm.std(ddof=1)) if nm.size > 1 else math.nan
    return DetectionResult(mode, params, statistic, fpr, t, realised, int(nm.size), float(nm.mean()), sd, groups,
                           null=null, expected_fpr=expected_fpr(nm, t))


def expected_fpr(null: np.ndarray, t: float) -> float:
    """Probability that one more draw from the null is flagged (``x < t``):
    ``(1 + #{null < t}) / (1 + n)``; 0 when ``t = -inf`` (nothing is flagged), 1 when ``t = +inf``."""
    nm = np.asarray(null, dtype=np.float64)
    if t == -math.inf:
        return 0.0
    if t == math.inf:
        return 1.0
    return float((1 + int((nm < t).sum())) / (1 + nm.size))


def detect(queries: Mapping[str, np.ndarray], nonmember: np.ndarray, *, mode: str,
           mode_params: Mapping | None = None, fpr: float = 0.01,
           repetitions: Mapping[str, np.ndarray] | None = None,
           reference_queries: Mapping[str, np.ndarray] | None = None,
           reference_nonmember: np.ndarray | None = None, reference_mode: str | None = None,
           reference_mode_params: Mapping | None = None, null: str = NULL_WINDOWS) -> DetectionResult:
    """Perplexity detection of query groups against a null distribution.

    Args:
      queries: group name -> float [Q] log-perplexities (e.g. "members", "canaries").
      nonmember: float [N] log-perplexities of the null distribution: non-member windows, or
        never-planted control canaries when the queries are planted canaries.
      mode, mode_params: the scoring mode of all these values.
      fpr: target false-positive rate for the calibrated threshold.
      repetitions: group name -> int [Q] repetition counts (per canary), for per-count TPR.
      reference_queries, reference_nonmember: the same sequences scored by a reference model;
        when given, ``result.reference`` holds detection on target minus reference log-ppl.
      reference_mode, reference_mode_params: the reference scores' mode (must equal ``mode``).
      null: what ``nonmember`` holds, :data:`NULL_WINDOWS` or :data:`NULL_CONTROLS` (recorded in
        the result; a control-canary null may have a single value, its z-scores are then NaN).

    Returns:
      :class:`DetectionResult` (its ``reference`` uses the same null).
    """
    if null not in NULLS:
        raise ConfigError(f"unknown null distribution {null!r} (expected one of {', '.join(map(repr, NULLS))})")
    mode, params = check_same_mode(("target scores", mode, mode_params))
    result = _detect_statistic(queries, nonmember, mode, params, "log_perplexity", fpr, repetitions, null)
    if reference_nonmember is not None or reference_queries is not None:
        if reference_nonmember is None or reference_queries is None or reference_mode is None:
            raise ConfigError("a reference comparison needs reference_queries, reference_nonmember and reference_mode")
        check_same_mode(("target scores", mode, params),
                        ("reference scores", reference_mode, reference_mode_params))
        diff_q = {}
        for name, x in queries.items():
            if name not in reference_queries or np.shape(reference_queries[name]) != np.shape(x):
                raise ConfigError(f"reference scores for group {name!r} are missing or of another length")
            diff_q[name] = np.asarray(x, np.float64) - np.asarray(reference_queries[name], np.float64)
        if np.shape(reference_nonmember) != np.shape(nonmember):
            raise ConfigError(f"reference scores of the null distribution ({null}) must cover the same sequences")
        diff_nm = np.asarray(nonmember, np.float64) - np.asarray(reference_nonmember, np.float64)
        result.reference = _detect_statistic(diff_q, diff_nm, mode, params, "log_perplexity_ratio", fpr,
                                             repetitions, null)
    return result
