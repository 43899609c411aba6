"""Attack metrics: ROC, AUC, TPR at low FPR, balanced accuracy, bootstrap CIs, ε lower bounds.

Conventions (binding for every attack in :mod:`glmjax.audit`): ``labels`` are booleans (True =
member / positive) and ``scores`` are floats where HIGHER means "more likely a member". A
threshold ``t`` predicts "member" for ``score >= t``.

- ROC: one point per distinct score value, swept from the highest to the lowest, preceded by
  (0, 0) — the same points as ``sklearn.metrics.roc_curve(..., drop_intermediate=False)``.
- AUC: trapezoidal area under those points, which equals the Mann–Whitney U statistic with ties
  counted as one half (``sklearn.metrics.roc_auc_score``). Computed exactly in integer arithmetic.
- TPR at FPR ``f``: the largest TPR among ROC points with FPR <= ``f`` (no interpolation, so the
  reported value is always achievable — conservative).
- Balanced accuracy: the best over all thresholds of (TPR + TNR) / 2; the attack advantage is
  2 · (balanced accuracy) - 1 = max (TPR - FPR).
- Bootstrap: stratified (members and non-members resampled separately, class sizes kept), seeded,
  percentile intervals. Each replicate costs O(N) after one O(N log N) sort: resampling uniformly
  among a class's rows is the same as resampling among its sorted positions, so a replicate is a
  bincount + cumsum in sorted order looked up at precomputed positions, never a new sort (see
  :class:`RocBasis`).

ε lower bounds:

- :func:`epsilon_lower_bound`: from counts of true and false positives at one threshold. An
  (ε, δ)-DP mechanism forces TPR <= e^ε FPR + δ and TNR <= e^ε FNR + δ for every test, so with
  Clopper–Pearson bounds (TPR_lo, FPR_hi) holding jointly with probability >= 1 - α,
  ε >= max(log((TPR_lo - δ) / FPR_hi), log((1 - FPR_hi - δ) / (1 - TPR_lo))) with that
  confidence. :func:`epsilon_lower_bound_from_scores` chooses the threshold on one random half of
  the data (at a target FPR) and counts on the other half, so the threshold choice does not bias
  the interval; several targets are Bonferroni-corrected.
- :func:`one_run_epsilon`: Steinke, Nasr & Jagielski (2023), "Privacy auditing with one (1)
  training run", Theorem 3 / Algorithm 2. m canaries are each included independently with
  probability 1/2; the auditor guesses IN for the k+ highest scores and OUT for the k- lowest and
  abstains on the rest; with r = k+ + k- guesses of which v are correct, an (ε, δ)-DP mechanism
  gives P[V >= v] <= P[Binomial(r, e^ε/(1+e^ε)) >= v] + 2 m δ max_{i=1..v} P[v > W >= v-i] / i.
  The reported ε is the largest value rejected at level β.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from glmjax.errors import ConfigError

DEFAULT_FPR_TARGETS: tuple[float, ...] = (0.001, 0.01)


def _labels_scores(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert (labels, scores) to (bool [N], float64 [N])."""
    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=np.float64)
    if labels.shape != scores.shape or labels.ndim != 1:
        raise ConfigError(f"labels {labels.shape} and scores {scores.shape} must be 1-D arrays of one length")
    if labels.dtype != np.bool_:
        if not np.isin(labels, (0, 1)).all():
            raise ConfigError("labels must be booleans or 0/1 (1 = member)")
        labels = labels.astype(bool)
    if not np.isfinite(scores).all():
        bad = int((~np.isfinite(scores)).sum())
        raise ConfigError(f"{bad} attack scores are NaN or infinite; drop or repair those rows first")
    n1 = int(labels.sum())
    if n1 == 0 or n1 == labels.size:
        raise ConfigError("metrics need both members (label 1) and non-members (label 0); got only one class")
    return labels, scores


class RocBasis:
    """The sorted structure shared by all threshold metrics of one (labels, scores) pair.

    Everything is indexed by the non-members sorted by ascending score (position j, score s_j):
    the best threshold for each metric lies just above some s_j, so a bootstrap replicate needs
    only cumulative resampling counts looked up at these positions — O(N) per replicate.

    Attributes:
      n_pos, n_neg: class sizes.
      pos_sorted, neg_sorted: float64 ascending scores of each class.
      pos_le, pos_lt: int64 [n_neg], number of members with score <= s_j and < s_j.
      neg_le: int64 [n_neg], number of non-members with score <= s_j.
      pos_ties, neg_ties: whether any member ties a non-member / any two non-members tie.
    """

    def __init__(self, labels: np.ndarray, scores: np.ndarray):
        labels, scores = _labels_scores(labels, scores)
        self.pos_sorted = np.sort(scores[labels])
        self.neg_sorted = np.sort(scores[~labels])
        self.n_pos = int(self.pos_sorted.size)
        self.n_neg = int(self.neg_sorted.size)
        neg = self.neg_sorted
        self.pos_le = np.searchsorted(self.pos_sorted, neg, side="right")
        self.pos_lt = np.searchsorted(self.pos_sorted, neg, side="left")
        self.pos_ties = bool((self.pos_le != self.pos_lt).any())
        if not self.pos_ties:
            self.pos_lt = self.pos_le
        self.neg_ties = bool((neg[1:] == neg[:-1]).any())
        self.neg_le = (np.searchsorted(neg, neg, side="right") if self.neg_ties
                       else np.arange(1, self.n_neg + 1, dtype=np.int64))

    def metrics(self, fpr_targets: Sequence[float], pos_weights: np.ndarray | None = None,
                neg_weights: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """AUC, TPR at each FPR target, advantage and balanced accuracy, optionally resampled.

        Args:
          fpr_targets: FPRs for "TPR at FPR".
          pos_weights: int [B, n_pos] multiplicities of the members in ascending score order (one
            bootstrap replicate per row, each row summing to n_pos), or None for the data itself.
          neg_weights: the same for non-members.

        Returns:
          metric name -> float64 [B] (B = 1 without weights).
        """
        n1, n0 = self.n_pos, self.n_neg
        cp = _cumulative(pos_weights, n1)  # cp[:, i] = resampled members among the i lowest
        b = cp.shape[0]
        # In-place integer arithmetic throughout: at 10^7 rows, fresh temporaries cost more in
        # page faults than the arithmetic itself.
        pos_above = np.take(cp, self.pos_le, axis=1)
        np.subtract(n1, pos_above, out=pos_above)  # members strictly above s_j
        # Mann-Whitney: each non-member counts the members above it plus half of those tied.
        if neg_weights is None:
            twice_u = 2 * pos_above.sum(axis=1)
        else:
            twice_u = 2 * np.einsum("bj,bj->b", neg_weights, pos_above)
        if self.pos_ties:
            tied = np.take(cp, self.pos_le, axis=1)
            tied -= np.take(cp, self.pos_lt, axis=1)
            twice_u += tied.sum(axis=1) if neg_weights is None else np.einsum("bj,bj->b", neg_weights, tied)
            del tied
        del cp
        out: dict[str, np.ndarray] = {"auc": twice_u / (2.0 * n1 * n0)}
        cn = _cumulative(neg_weights, n0)
        neg_le = np.take(cn, self.neg_le, axis=1) if self.neg_ties else cn[:, 1:]  # non-members <= s_j
        for f in fpr_targets:
            k = _max_false_positives(f, n0)
            if k >= n0:
                out[f"tpr@{f:g}"] = np.ones(b)
                continue
            # Lowest admissible threshold: just above the first s_j with at most k resampled
            # non-members strictly above it, i.e. neg_le >= n0 - k (nondecreasing in j).
            if b <= 4:  # few long rows: binary search; many short rows: one vectorised count
                j = np.array([np.searchsorted(neg_le[r], n0 - k, side="left") for r in range(b)])
            else:
                j = (neg_le < n0 - k).sum(axis=1)
            out[f"tpr@{f:g}"] = pos_above[np.arange(b), j] / n1
        # Threshold just above s_j: TPR - FPR = (pos_above n0 + neg_le n1 - n0 n1) / (n0 n1).
        np.multiply(pos_above, n0, out=pos_above)
        np.multiply(neg_le, n1, out=neg_le)
        pos_above += neg_le
        adv = (pos_above.max(axis=1) - n0 * n1) / (n0 * n1)
        out["advantage"] = np.maximum(adv, 0.0)
        out["balanced_accuracy"] = 0.5 * (1.0 + out["advantage"])
        return out


def _cumulative(weights: np.ndarray | None, n: int) -> np.ndarray:
    """[B, n + 1] int64 cumulative counts with a leading 0 (identity weights when None)."""
    if weights is None:
        return np.arange(n + 1, dtype=np.int64)[None, :]
    out = np.zeros((weights.shape[0], n + 1), dtype=np.int64)
    np.cumsum(weights, axis=1, out=out[:, 1:])
    return out


def _max_false_positives(f: float, n_neg: int) -> int:
    """Largest integer k with k / n_neg <= f, in the same float arithmetic as fp / n_neg <= f."""
    k = min(max(int(math.floor(f * n_neg)), 0), n_neg)
    while k + 1 <= n_neg and (k + 1) / n_neg <= f:
        k += 1
    while k > 0 and k / n_neg > f:
        k -= 1
    return k


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve at every distinct score.

    Args:
      labels: bool [N] (True = member). scores: float [N], higher = member.

    Returns:
      (fpr, tpr, thresholds), each [G + 1]: the first point is (0, 0) at threshold +inf, then one
      point per distinct score in decreasing order; ``score >= threshold`` predicts member.
    """
    labels, scores = _labels_scores(labels, scores)
    order = np.argsort(-scores, kind="stable")
    s = scores[order]
    tp = np.cumsum(labels[order], dtype=np.int64)
    del order
    fp = np.arange(1, s.size + 1, dtype=np.int64) - tp
    last = np.empty(s.size, dtype=bool)  # the last row of each run of equal scores
    last[-1] = True
    np.not_equal(s[1:], s[:-1], out=last[:-1])
    n1, n0 = int(tp[-1]), int(fp[-1])
    fpr = np.concatenate([[0.0], fp[last] / n0])
    tpr = np.concatenate([[0.0], tp[last] / n1])
    return fpr, tpr, np.concatenate([[np.inf], s[last]])


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann–Whitney U / (n_pos n_neg), ties count one half)."""
    return float(RocBasis(labels, scores).metrics(())["auc"][0])


def tpr_at_fpr(labels: np.ndarray, scores: np.ndarray, fpr: float) -> float:
    """The largest TPR among ROC points whose FPR is <= ``fpr`` (conservative, no interpolation)."""
    return float(RocBasis(labels, scores).metrics((fpr,))[f"tpr@{fpr:g}"][0])


def balanced_accuracy(labels: np.ndarray, scores: np.ndarray) -> float:
    """Best balanced accuracy (TPR + TNR) / 2 over all thresholds (>= 0.5)."""
    return float(RocBasis(labels, scores).metrics(())["balanced_accuracy"][0])


def roc_points(basis: RocBasis, n_points: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """A downsampled ROC step curve for plots and reports, dense at low FPR.

    Args:
      basis: the sorted data (:class:`RocBasis`).
      n_points: number of log-spaced FPR grid values from 1 / n_neg to 1 (0 is added in front).

    Returns:
      (fpr_grid, tpr_grid): at each grid FPR, the largest TPR with FPR <= it (conservative).
    """
    n1, n0 = basis.n_pos, basis.n_neg
    grid = np.unique(np.concatenate([[0.0], np.logspace(-np.log10(n0), 0.0, n_points)]))
    ks = np.array([_max_false_positives(float(g), n0) for g in grid])
    # Same rule as RocBasis.metrics, with a binary search on the (sorted) identity counts.
    j = np.minimum(np.searchsorted(basis.neg_le, n0 - ks, side="left"), n0 - 1)
    tpr = np.where(ks >= n0, 1.0, (n1 - basis.pos_le[j]) / n1)
    return grid, tpr


@dataclass
class AttackMetrics:
    """Metrics of one attack with bootstrap percentile intervals.

    ``ci`` maps each metric name ("auc", "tpr@0.001", "tpr@0.01", "balanced_accuracy",
    "advantage") to its (low, high) interval at ``confidence``.
    """

    n_members: int
    n_nonmembers: int
    auc: float
    tpr_at_fpr: dict[float, float]
    balanced_accuracy: float
    advantage: float
    ci: dict[str, tuple[float, float]] = field(default_factory=dict)
    confidence: float = 0.95
    n_bootstrap: int = 0
    seed: int = 0
    roc_fpr: np.ndarray = field(default_factory=lambda: np.zeros(0))
    roc_tpr: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def to_dict(self) -> dict:
        """JSON-ready dict (the ``mia.attacks.<name>`` entry of report.json)."""
        nan2 = [math.nan, math.nan]
        return {
            "n_members": self.n_members,
            "n_nonmembers": self.n_nonmembers,
            "auc": self.auc,
            "auc_ci": list(self.ci.get("auc", nan2)),
            "tpr_at_fpr": {f"{f:g}": v for f, v in self.tpr_at_fpr.items()},
            "tpr_at_fpr_ci": {f"{f:g}": list(self.ci.get(f"tpr@{f:g}", nan2)) for f in self.tpr_at_fpr},
            "balanced_accuracy": self.balanced_accuracy,
            "balanced_accuracy_ci": list(self.ci.get("balanced_accuracy", nan2)),
            "advantage": self.advantage,
            "advantage_ci": list(self.ci.get("advantage", nan2)),
            "confidence": self.confidence,
            "n_bootstrap": self.n_bootstrap,
            "seed": self.seed,
            "roc": {"fpr": [float(x) for x in self.roc_fpr], "tpr": [float(x) for x in self.roc_tpr]},
        }


def _resample_counts(rng: np.random.Generator, n: int, reps: int) -> np.ndarray:
    """int64 [reps, n]: multiplicities of a uniform resample of n out of n items, one per row."""
    if n >= 100_000:  # long rows: one bincount each, no offset array
        out = np.empty((reps, n), dtype=np.int64)
        for r in range(reps):
            out[r] = np.bincount(rng.integers(0, n, size=n, dtype=np.int32 if n < 2**31 else np.int64),
                                 minlength=n)
        return out
    idx = rng.integers(0, n, size=(reps, n), dtype=np.int64)
    idx += (np.arange(reps, dtype=np.int64) * n)[:, None]
    return np.bincount(idx.ravel(), minlength=reps * n).reshape(reps, n)


def bootstrap_replicates(basis: RocBasis, n_bootstrap: int, seed: int,
                         fpr_targets: Sequence[float] = DEFAULT_FPR_TARGETS,
                         max_cells: int = 20_000_000) -> dict[str, np.ndarray]:
    """Stratified bootstrap replicates of every threshold metric.

    Args:
      basis: the sorted structure of the data (:class:`RocBasis`).
      n_bootstrap: number of replicates B.
      seed: RNG seed (same seed -> same replicates).
      fpr_targets: FPRs at which TPR is reported.
      max_cells: replicates are processed in chunks of about ``max_cells / N`` rows so that memory
        stays near ``100 * max_cells`` bytes whatever N and B.

    Returns:
      metric name -> float64 [B].
    """
    rng = np.random.default_rng(seed)
    n = basis.n_pos + basis.n_neg
    chunk = int(max(1, min(n_bootstrap, max_cells // max(n, 1))))
    parts: list[dict[str, np.ndarray]] = []
    done = 0
    while done < n_bootstrap:
        b = min(chunk, n_bootstrap - done)
        wp = _resample_counts(rng, basis.n_pos, b)
        wn = _resample_counts(rng, basis.n_neg, b)
        parts.append(basis.metrics(fpr_targets, wp, wn))
        del wp, wn
        done += b
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def evaluate_attack(labels: np.ndarray, scores: np.ndarray, *, n_bootstrap: int = 200, seed: int = 0,
                    confidence: float = 0.95,
                    fpr_targets: Sequence[float] = DEFAULT_FPR_TARGETS,
                    roc_points_n: int = 200) -> AttackMetrics:
    """All metrics of one attack, with stratified percentile-bootstrap intervals.

    Args:
      labels: bool [N], True = member. scores: float [N], higher = member.
      n_bootstrap: replicates (0 disables intervals; they are then reported as NaN).
      seed: bootstrap seed.
      confidence: two-sided interval level.
      fpr_targets: FPR values for "TPR at FPR".
      roc_points_n: size of the downsampled (log-spaced) ROC kept for plots.

    Returns:
      :class:`AttackMetrics`.
    """
    if not 0.0 < confidence < 1.0:
        raise ConfigError(f"confidence must be in (0, 1), got {confidence}")
    basis = RocBasis(labels, scores)
    point = basis.metrics(fpr_targets)
    grid_fpr, grid_tpr = roc_points(basis, roc_points_n)
    ci: dict[str, tuple[float, float]] = {}
    if n_bootstrap > 0:
        reps = bootstrap_replicates(basis, n_bootstrap, seed, fpr_targets)
        q = [50.0 * (1.0 - confidence), 50.0 * (1.0 + confidence)]
        for k, v in reps.items():
            lo, hi = np.percentile(v, q)
            ci[k] = (float(lo), float(hi))
    return AttackMetrics(
        n_members=basis.n_pos, n_nonmembers=basis.n_neg, auc=float(point["auc"][0]),
        tpr_at_fpr={float(f): float(point[f"tpr@{f:g}"][0]) for f in fpr_targets},
        balanced_accuracy=float(point["balanced_accuracy"][0]), advantage=float(point["advantage"][0]),
        ci=ci, confidence=confidence, n_bootstrap=n_bootstrap, seed=seed,
        roc_fpr=grid_fpr, roc_tpr=grid_tpr,
    )


# ------------------------------------------------------------------ randomised-threshold metrics
#
# jax_privacy's CanaryScoreAuditor reports metrics of classifiers that may randomise between two
# thresholds: their ROC is the upper convex hull of the step ROC above. They are reported under
# their own names ("randomised", "epsilon_raw_counts", "epsilon_gdp") and never mixed with the
# step-ROC numbers, which are achievable by a single threshold.


@dataclass
class RocHull:
    """Vertices of the upper convex hull of the ROC, from (0, 0) to (1, 1), FPR increasing:
    float rates and int64 counts (collinear points dropped). Iterates as (fpr, tpr, fp, tp)."""

    fpr: np.ndarray
    tpr: np.ndarray
    fp: np.ndarray
    tp: np.ndarray

    def __iter__(self):
        return iter((self.fpr, self.tpr, self.fp, self.tp))


def roc_hull(labels: np.ndarray, scores: np.ndarray) -> RocHull:
    """The :class:`RocHull` of an attack (one sort; the hull statistics below accept it in place
    of labels and scores, so an attack is sorted once for all of them)."""
    labels, scores = _labels_scores(labels, scores)
    fpr, tpr, _ = roc_curve(labels, scores)
    n1, n0 = int(labels.sum()), int((~labels).sum())
    fp = np.rint(fpr * n0).astype(np.int64)
    tp = np.rint(tpr * n1).astype(np.int64)
    keep = _upper_hull(fp, tp)
    return RocHull(fp[keep] / n0, tp[keep] / n1, fp[keep], tp[keep])


def _hull(labels, scores) -> RocHull:
    return labels if isinstance(labels, RocHull) else roc_hull(labels, scores)


def _upper_hull(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Indices of the upper hull of ROC points sorted by x (then y), from the first to the last.

    The exact monotone-chain scan in integer arithmetic (points that do not turn strictly
    clockwise are popped: collinear and dominated points go) runs over a candidate set: points
    above the running maximum of y, and for large inputs only the vertices Qhull finds
    (``scipy.spatial.ConvexHull``, O(n log n) in C), so 10 M rows take seconds."""
    cand = np.flatnonzero(np.concatenate([[True], y[1:] > np.maximum.accumulate(y)[:-1]]))
    if cand[-1] != x.size - 1:
        cand = np.append(cand, x.size - 1)
    if cand.size > 4096:
        from scipy.spatial import ConvexHull

        pts = np.stack([x[cand], y[cand]], axis=1).astype(np.float64)
        corner = np.array([[float(x[-1]), float(y[0])]])  # closes the polygon below the ROC
        v = ConvexHull(np.concatenate([pts, corner])).vertices
        v = v[v < cand.size]
        cand = np.unique(np.concatenate([cand[v], cand[[0, -1]]]))
    hull: list[int] = []
    for i in cand.tolist():
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            cross = (int(x[b]) - int(x[a])) * (int(y[i]) - int(y[a])) - (int(y[b]) - int(y[a])) * (int(x[i]) - int(x[a]))
            if cross >= 0:
                hull.pop()
            else:
                break
        hull.append(i)
    return np.asarray(hull, dtype=np.int64)


def hull_auc(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Area under a piecewise-linear ROC (trapezoids)."""
    return float(np.sum((fpr[1:] - fpr[:-1]) * (tpr[1:] + tpr[:-1])) / 2.0)


def hull_tpr_at_fpr(fpr_h: np.ndarray, tpr_h: np.ndarray, f: float | np.ndarray) -> np.ndarray:
    """Largest TPR of a randomised test at FPR ``f``: linear interpolation on the hull."""
    f = np.asarray(f, dtype=np.float64)
    if np.any((f < 0) | (f > 1)):
        raise ConfigError(f"an FPR must lie in [0, 1], got {f}")
    # the hull may hold two vertices at FPR 0 ((0, 0) and (0, t)): the upper one counts
    x, idx = np.unique(fpr_h[::-1], return_index=True)
    y = tpr_h[::-1][idx]
    return np.interp(f, x, y)


def randomised_metrics(labels: np.ndarray | RocHull, scores: np.ndarray | None = None,
                       fpr_targets: Sequence[float] = DEFAULT_FPR_TARGETS) -> dict[str, float]:
    """AUC and TPR at each target FPR of the ROC convex hull (jax_privacy's definitions);
    ``labels`` may be a :class:`RocHull` (then no ``scores``)."""
    fpr_h, tpr_h, _, _ = _hull(labels, scores)
    out = {"auc": hull_auc(fpr_h, tpr_h)}
    for f in fpr_targets:
        out[f"tpr@{f:g}"] = float(hull_tpr_at_fpr(fpr_h, tpr_h, f))
    return out


def epsilon_raw_counts(labels: np.ndarray | RocHull, scores: np.ndarray | None = None, *, min_count: int = 50,
                       delta: float = 0.0) -> float:
    """ε estimate ln(TPR / FPR) from raw counts on the ROC hull, no confidence (jax_privacy's
    ``epsilon_raw_counts``, one-sided): only thresholds with at least ``min_count`` false positives
    count, plus the hull point interpolated at FPR = min_count / n_neg; with δ > 0 the estimate is
    the maximum of ln(TPR - δ) - ln(FPR) over them. 0 when min_count >= n_neg.

    A point estimate with no coverage guarantee: larger min_count biases it towards 0, smaller
    makes it noisy. The guaranteed bound is :func:`epsilon_lower_bound_from_scores`.
    """
    if min_count < 0:
        raise ConfigError(f"min_count must be >= 0, got {min_count}")
    if not 0.0 <= delta <= 1.0:
        raise ConfigError(f"delta must be in [0, 1], got {delta}")
    fpr_h, tpr_h, fp, _ = _hull(labels, scores)
    n0 = int(fp[-1])
    if min_count >= n0:
        return 0.0
    f_min = min_count / n0
    t_min = float(hull_tpr_at_fpr(fpr_h, tpr_h, f_min))
    if delta == 0:
        eps = math.log(t_min / f_min) if f_min > 0 and t_min > 0 else (math.inf if t_min > 0 else 0.0)
        return max(eps, 0.0)
    rates = np.concatenate([np.stack([tpr_h, fpr_h], 1)[fp >= min_count], [[t_min, f_min]]])
    with np.errstate(divide="ignore", invalid="ignore"):
        vals = np.log(rates[:, 0] - delta) - np.log(rates[:, 1])
    vals = vals[~np.isnan(vals)]
    return max(float(vals.max()) if vals.size else 0.0, 0.0)


def gdp_delta(epsilon: float, mu: float) -> float:
    """δ(ε) of μ-Gaussian DP (Dong, Roth & Su 2022, Corollary 2.13):
    Φ(-ε/μ + μ/2) - e^ε Φ(-ε/μ - μ/2)."""
    a = stats.norm.logcdf(-epsilon / mu + mu / 2)
    b = epsilon + stats.norm.logcdf(-epsilon / mu - mu / 2)
    return float(math.exp(a) * -math.expm1(b - a)) if b < a else 0.0


def epsilon_gdp(labels: np.ndarray | RocHull, scores: np.ndarray | None = None, *, delta: float, alpha: float = 0.05,
                eps_max: float = 100.0, absolute: bool = False) -> tuple[float, float]:
    """ε at δ of the largest μ-GDP lower bound the hull thresholds support (after jax_privacy's
    ``epsilon_from_gdp``; Nasr et al. 2023): at every hull threshold one-sided Clopper–Pearson
    upper bounds of FPR and FNR at α/2 each, μ = max (Φ⁻¹(1 - FPR_ub) - Φ⁻¹(FNR_ub)) over the
    thresholds whose bounds are both below 1 - δ, then ε solving δ(ε; μ) = δ.

    ``absolute=True`` takes max |Φ⁻¹(1 - FPR_ub) - Φ⁻¹(FNR_ub)| as jax_privacy does. A negative
    value comes from a threshold with FPR_ub + FNR_ub > 1, whose upper bounds say nothing about
    the reversed test (that would need lower bounds); with it a chance-level attack on a few
    hundred rows reports ε of 5-10, so glmjax counts only positive values by default.

    Returns:
      (ε, μ); (0, 0) when no threshold qualifies.
    """
    if not 0.0 < delta <= 1.0:
        raise ConfigError(f"the GDP conversion needs 0 < delta <= 1, got {delta}")
    if not 0.0 < alpha < 0.5:
        raise ConfigError(f"alpha must be in (0, 0.5), got {alpha}")
    _, _, fp, tp = _hull(labels, scores)
    n0, n1 = int(fp[-1]), int(tp[-1])
    fn = n1 - tp
    fnr_ub = np.where(fn < n1, stats.beta.ppf(1 - alpha / 2, fn + 1, n1 - fn), 1.0)
    fpr_ub = np.where(fp < n0, stats.beta.ppf(1 - alpha / 2, fp + 1, n0 - fp), 1.0)
    ok = np.maximum(fnr_ub, fpr_ub) < 1 - delta
    if not ok.any():
        return 0.0, 0.0
    mus = stats.norm.isf(fpr_ub[ok]) - stats.norm.ppf(fnr_ub[ok])
    mu = float(np.max(np.abs(mus)) if absolute else max(float(np.max(mus)), 0.0))
    if mu == 0.0:
        return 0.0, 0.0
    if gdp_delta(0.0, mu) <= delta:
        return 0.0, mu
    if gdp_delta(eps_max, mu) >= delta:
        return eps_max, mu
    from scipy.optimize import brentq

    return float(brentq(lambda e: gdp_delta(e, mu) - delta, 0.0, eps_max, xtol=1e-9)), mu


def max_accuracy_bound(epsilon: float, delta: float = 0.0) -> float:
    """The largest balanced accuracy any membership test can reach against an (ε, δ)-DP model:
    (e^ε + δ) / (1 + e^ε) (TPR <= e^ε FPR + δ and TNR <= e^ε FNR + δ at FPR = FNR)."""
    if epsilon < 0 or not 0.0 <= delta <= 1.0:
        raise ConfigError("max_accuracy_bound needs epsilon >= 0 and delta in [0, 1]")
    return float(min(1.0, (1.0 + delta * math.exp(-epsilon)) / (1.0 + math.exp(-epsilon))))


# --------------------------------------------------------------------------------------------
# ε lower bounds


def clopper_pearson(k: int | np.ndarray, n: int | np.ndarray,
                    alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Exact two-sided Clopper–Pearson interval for a binomial proportion.

    Args:
      k: successes; n: trials (arrays broadcast); alpha: total miscoverage (alpha/2 per side).

    Returns:
      (low, high) with P[low <= p <= high] >= 1 - alpha.
    """
    k = np.asarray(k, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    lo = np.where(k > 0, stats.beta.ppf(alpha / 2, k, n - k + 1), 0.0)
    hi = np.where(k < n, stats.beta.ppf(1 - alpha / 2, k + 1, n - k), 1.0)
    return lo, hi


def epsilon_lower_bound(tp: int, n_pos: int, fp: int, n_neg: int, *, delta: float = 0.0,
                        alpha: float = 0.05) -> float:
    """ε lower bound at confidence 1 - α from one threshold's confusion counts.

    Args:
      tp: true positives out of ``n_pos`` members; fp: false positives out of ``n_neg`` non-members.
      delta: the δ of the (ε, δ)-DP hypothesis being tested.
      alpha: total miscoverage, split α/2 on TPR (lower bound) and α/2 on FPR (upper bound).

    Returns:
      ε_lo >= 0 (0 when nothing can be rejected).
    """
    if n_pos <= 0 or n_neg <= 0:
        raise ConfigError("epsilon_lower_bound needs at least one member and one non-member")
    # One-sided bounds at alpha/2 each: Clopper-Pearson two-sided at level alpha gives both.
    tpr_lo, _ = clopper_pearson(tp, n_pos, alpha)
    _, fpr_hi = clopper_pearson(fp, n_neg, alpha)
    tpr_lo, fpr_hi = float(tpr_lo), float(fpr_hi)
    cands = [0.0]
    if tpr_lo - delta > 0 and fpr_hi > 0:
        cands.append(math.log((tpr_lo - delta) / fpr_hi))
    if 1.0 - fpr_hi - delta > 0 and 1.0 - tpr_lo > 0:
        cands.append(math.log((1.0 - fpr_hi - delta) / (1.0 - tpr_lo)))
    return max(cands)


@dataclass
class EpsilonBound:
    """An empirical ε lower bound and how it was obtained."""

    epsilon: float
    delta: float
    confidence: float
    method: str
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return {"epsilon": self.epsilon, "delta": self.delta, "confidence": self.confidence,
                "method": self.method, "details": self.details}


def epsilon_lower_bound_from_scores(labels: np.ndarray, scores: np.ndarray, *,
                                    fpr_targets: Sequence[float] = DEFAULT_FPR_TARGETS,
                                    delta: float = 0.0, alpha: float = 0.05,
                                    seed: int = 0) -> EpsilonBound:
    """ε lower bound from attack scores with a held-out threshold choice.

    A random half of each class (seeded, stratified) picks, for every FPR target, the lowest threshold whose
    FPR on that half is <= the target; the other half gives the counts for
    :func:`epsilon_lower_bound`. With T targets each test runs at α / T (Bonferroni) so the
    maximum over targets still holds at confidence 1 - α.

    Args:
      labels: bool [N]; scores: float [N] (higher = member); fpr_targets: FPRs to try;
      delta: δ of the tested hypothesis; alpha: miscoverage; seed: split seed.

    Returns:
      :class:`EpsilonBound` with per-target details.
    """
    labels, scores = _labels_scores(labels, scores)
    if min(int(labels.sum()), int((~labels).sum())) < 2:
        raise ConfigError("an ε lower bound needs at least 2 members and 2 non-members")
    # Stratified split; the salt keeps the split independent of streams the caller seeded alike.
    rng = np.random.default_rng([seed, 0x5E1EC7])
    select = np.zeros(labels.size, dtype=bool)
    for cls in (labels, ~labels):
        idx = rng.permutation(np.flatnonzero(cls))
        select[idx[: idx.size // 2]] = True
    fit_l, fit_s = labels[select], scores[select]
    ev_l, ev_s = labels[~select], scores[~select]
    fpr, _, thr = roc_curve(fit_l, fit_s)
    per_test = alpha / max(len(fpr_targets), 1)
    best = 0.0
    details = {}
    for f in fpr_targets:
        t = thr[(fpr <= f).sum() - 1]
        pred = ev_s >= t
        tp = int((pred & ev_l).sum())
        fp = int((pred & ~ev_l).sum())
        eps = epsilon_lower_bound(tp, int(ev_l.sum()), fp, int((~ev_l).sum()), delta=delta, alpha=per_test)
        details[f"{f:g}"] = {"threshold": float(t), "tp": tp, "fp": fp, "epsilon": eps}
        best = max(best, eps)
    details.update(n_eval_members=int(ev_l.sum()), n_eval_nonmembers=int((~ev_l).sum()), seed=seed)
    return EpsilonBound(best, delta, 1.0 - alpha, "clopper-pearson split threshold", details)


def one_run_p_value(m: int, r: int, v: int, epsilon: float, delta: float = 0.0) -> float:
    """P-value of >= v correct guesses out of r under the (ε, δ)-DP null (Steinke et al. 2023).

    Args:
      m: number of canaries (each included independently with probability 1/2).
      r: number of guesses made (abstentions excluded); v: correct guesses.
      epsilon, delta: the DP guarantee being tested.

    Returns:
      P[Binomial(r, q) >= v] + 2 m δ max_{1<=i<=v} P[v > Binomial(r, q) >= v - i] / i, capped at 1,
      with q = e^ε / (1 + e^ε).
    """
    if not 0 <= v <= r <= m:
        raise ConfigError(f"need 0 <= correct ({v}) <= guesses ({r}) <= canaries ({m})")
    q = 1.0 / (1.0 + math.exp(-epsilon))
    tail = float(stats.binom.sf(v - 1, r, q))
    if delta > 0 and v > 0:
        i = np.arange(1, v + 1)
        # P[v - i <= W < v] = sum of pmf over [v - i, v - 1]
        window = np.cumsum(stats.binom.pmf(v - i, r, q))
        tail += 2.0 * m * delta * float((window / i).max())
    return min(tail, 1.0)


def one_run_epsilon_from_counts(m: int, r: int, v: int, *, delta: float = 0.0,
                                beta: float = 0.05, tol: float = 1e-6) -> float:
    """Largest ε rejected at level β given r guesses with v correct (Steinke et al. 2023).

    The p-value grows with ε, so the bound is found by bisection on
    ``one_run_p_value(m, r, v, ε, δ) < β``.

    Returns:
      ε_lo >= 0 (0 when even ε = 0 cannot be rejected).
    """
    if not 0.0 < beta < 1.0:
        raise ConfigError(f"beta must be in (0, 1), got {beta}")
    if one_run_p_value(m, r, v, 0.0, delta) >= beta:
        return 0.0
    lo, hi = 0.0, 1.0
    while one_run_p_value(m, r, v, hi, delta) < beta:
        lo, hi = hi, 2.0 * hi
        if hi > 1e3:
            return lo
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        if one_run_p_value(m, r, v, mid, delta) < beta:
            lo = mid
        else:
            hi = mid
    return lo


def one_run_epsilon(scores: np.ndarray, included: np.ndarray, *, k_pos: int, k_neg: int,
                    delta: float = 0.0, beta: float = 0.05) -> EpsilonBound:
    """One-run audit ε lower bound from canary scores (Steinke, Nasr, Jagielski 2023).

    Args:
      scores: float [m] canary scores, higher = more likely included.
      included: bool [m], which canaries were actually inserted (each with probability 1/2).
      k_pos: guess IN for the k_pos highest scores; k_neg: guess OUT for the k_neg lowest.
      delta: δ of the tested hypothesis; beta: 1 - confidence.

    Returns:
      :class:`EpsilonBound` (details: m, r, v, k_pos, k_neg).
    """
    scores = np.asarray(scores, dtype=np.float64)
    included = np.asarray(included, dtype=bool)
    m = scores.size
    if included.shape != scores.shape:
        raise ConfigError("scores and included must have the same length")
    if k_pos < 0 or k_neg < 0 or k_pos + k_neg > m:
        raise ConfigError(f"need k_pos, k_neg >= 0 and k_pos + k_neg <= {m} canaries")
    # Stable order so that equal scores are broken by index, deterministically.
    order = np.argsort(-scores, kind="stable")
    v = int(included[order[:k_pos]].sum()) + int((~included[order[m - k_neg:]]).sum() if k_neg else 0)
    r = k_pos + k_neg
    eps = one_run_epsilon_from_counts(m, r, v, delta=delta, beta=beta)
    return EpsilonBound(eps, delta, 1.0 - beta, "one-run (Steinke et al. 2023)",
                        {"m": m, "r": r, "v": v, "k_pos": k_pos, "k_neg": k_neg})


def one_run_epsilon_search(scores: np.ndarray, included: np.ndarray,
                           k_grid: Sequence[tuple[int, int]], *, delta: float = 0.0,
                           beta: float = 0.05) -> EpsilonBound:
    """Best one-run ε over several (k_pos, k_neg) guess counts, Bonferroni-corrected.

    Each candidate is tested at β / len(k_grid), so the maximum holds at confidence 1 - β.
    """
    if not k_grid:
        raise ConfigError("k_grid must list at least one (k_pos, k_neg) pair")
    per = beta / len(k_grid)
    best = max((one_run_epsilon(scores, included, k_pos=kp, k_neg=kn, delta=delta, beta=per)
                for kp, kn in k_grid), key=lambda b: b.epsilon)
    best.confidence = 1.0 - beta
    best.details["grid_size"] = len(k_grid)
    return best
