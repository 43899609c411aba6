"""Perplexity-based detection: is a sequence's perplexity unusually low for a non-member?

Per-sequence log-perplexity is ``-sum_logp / n_tokens`` (nats per scored token) from a
ScoreStore: the exact causal log-likelihood for causal models, the pseudo-log-likelihood for
masked models. The scoring mode ("causal", "pll-exact", "pll-strided", "pll-random" and its
parameters) travels with every array: statistics from different modes are never compared, and
every result states the mode it was computed in.

Detection compares query sequences (members, canaries) with the distribution of non-member
log-perplexities, all lower-is-more-suspicious:

- z-score: ``(mean_nonmember - x) / std_nonmember`` (positive = less perplexing than typical).
- empirical p-value: ``(1 + #{non-members with log-ppl <= x}) / (1 + n_nonmembers)``, the +1
  correction making it a valid p-value under the null "x is one more non-member".
- calibrated threshold: flag ``x < t`` with ``t`` the (k+1)-th smallest non-member value, k the
  largest integer with k / n <= target FPR; at most k non-members are then flagged (fewer when
  values tie), so the FPR on the calibration non-members never exceeds the target.
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


def calibrate_threshold(nonmember: np.ndarray, fpr: float) -> tuple[float, float]:
    """Threshold t such that flagging ``x < t`` flags at most a fraction ``fpr`` of non-members.

    Returns:
      (t, realised FPR on these non-members); t = -inf when even one flag is too many and
      +inf when fpr >= 1.
    """
    if not 0.0 <= fpr <= 1.0:
        raise ConfigError(f"the target false-positive rate must be in [0, 1], got {fpr}")
    nm = np.sort(np.asarray(nonmember, dtype=np.float64))
    n = nm.size
    k = min(int(math.floor(fpr * n)), n)
    while k + 1 <= n and (k + 1) / n <= fpr:
        k += 1
    while k > 0 and k / n > fpr:
        k -= 1
    t = math.inf if k >= n else float(nm[k])
    return t, float((nm < t).sum() / n)


@dataclass
class DetectionGroup:
    """Detection of one query group (e.g. members, canaries) against the non-members."""

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
    """Perplexity detection in one scoring mode, on one statistic."""

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

    def to_dict(self) -> dict:
        """JSON-ready dict (the ``detection`` entry of report.json)."""
        return {
            "mode": self.mode, "mode_params": self.mode_params, "statistic": self.statistic,
            "fpr_target": self.fpr_target,
            "threshold": self.threshold if math.isfinite(self.threshold) else None,
            "realised_fpr": self.realised_fpr, "n_nonmembers": self.n_nonmembers,
            "nonmember_mean": self.nonmember_mean, "nonmember_std": self.nonmember_std,
            "groups": {k: g.to_dict() for k, g in self.groups.items()},
            "reference": None if self.reference is None else self.reference.to_dict(),
        }


def _group(name: str, x: np.ndarray, nonmember: np.ndarray, t: float,
           repetitions: np.ndarray | None) -> DetectionGroup:
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        raise ConfigError(f"detection group {name!r} is empty")
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
                      statistic: str, fpr: float,
                      repetitions: Mapping[str, np.ndarray] | None) -> DetectionResult:
    nm = np.asarray(nonmember, dtype=np.float64)
    if not np.isfinite(nm).all():
        raise ConfigError("non-member log-perplexities must be finite")
    t, realised = calibrate_threshold(nm, fpr)
    groups = {name: _group(name, x, nm, t, (repetitions or {}).get(name)) for name, x in queries.items()}
    return DetectionResult(mode, params, statistic, fpr, t, realised, int(nm.size), float(nm.mean()),
                           float(nm.std(ddof=1)), groups)


def detect(queries: Mapping[str, np.ndarray], nonmember: np.ndarray, *, mode: str,
           mode_params: Mapping | None = None, fpr: float = 0.01,
           repetitions: Mapping[str, np.ndarray] | None = None,
           reference_queries: Mapping[str, np.ndarray] | None = None,
           reference_nonmember: np.ndarray | None = None, reference_mode: str | None = None,
           reference_mode_params: Mapping | None = None) -> DetectionResult:
    """Perplexity detection of query groups against non-members.

    Args:
      queries: group name -> float [Q] log-perplexities (e.g. "members", "canaries").
      nonmember: float [N] non-member log-perplexities (the null distribution).
      mode, mode_params: the scoring mode of all these values.
      fpr: target false-positive rate for the calibrated threshold.
      repetitions: group name -> int [Q] repetition counts (per canary), for per-count TPR.
      reference_queries, reference_nonmember: the same sequences scored by a reference model;
        when given, ``result.reference`` holds detection on target minus reference log-ppl.
      reference_mode, reference_mode_params: the reference scores' mode (must equal ``mode``).

    Returns:
      :class:`DetectionResult`.
    """
    mode, params = check_same_mode(("target scores", mode, mode_params))
    result = _detect_statistic(queries, nonmember, mode, params, "log_perplexity", fpr, repetitions)
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
            raise ConfigError("reference non-member scores must cover the same non-members")
        diff_nm = np.asarray(nonmember, np.float64) - np.asarray(reference_nonmember, np.float64)
        result.reference = _detect_statistic(diff_q, diff_nm, mode, params, "log_perplexity_ratio", fpr,
                                             repetitions)
    return result
