"""Memorization risk: each attack vector mapped to [0, 1], the worst case as the headline.

Formulas (also in docs/report-schema.md):

- detection = clip(TPR - FPR, 0, 1) at the threshold calibrated to the target FPR (default 1%)
  on each detection's null distribution, FPR the expected rate for a fresh draw from that null
  ((1 + #{null below the threshold}) / (1 + n): with n = 16 controls and the threshold at the
  lowest, 1/17 rather than the 0 realised on the controls themselves), maximised over the
  two detections — member windows against non-member windows, planted canaries against
  never-planted control canaries (non-member windows when there is no control) — and over the
  raw and the reference-ratio statistic. A detector no better than chance scores 0.
- extraction = max(fraction of canaries extracted exactly,
                   mean over canaries of clip(exposure / log2 |R|, 0, 1)).
  Exposure / log2 |R| is 1 for a canary ranked first among all its candidates and 0 for one
  ranked last.
- mia = max over attacks of max(TPR at 1% FPR, advantage), advantage = 2 * (best balanced
  accuracy) - 1 = max (TPR - FPR). Random guessing scores about 0.01.
- worst case = max over the vectors that were run; ties go to the first of detection,
  extraction, mia. Bands: low < 0.1 <= medium < 0.3 <= high.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from glmjax.errors import ConfigError

VECTORS = ("detection", "extraction", "mia")
BAND_EDGES = (0.1, 0.3)  # low < 0.1 <= medium < 0.3 <= high
MIA_FPR = 0.01


def band(risk: float) -> str:
    """'low' (< 0.1), 'medium' (0.1 <= r < 0.3) or 'high' (>= 0.3)."""
    if not 0.0 <= risk <= 1.0:
        raise ConfigError(f"a risk must lie in [0, 1], got {risk}")
    return "low" if risk < BAND_EDGES[0] else ("medium" if risk < BAND_EDGES[1] else "high")


def _clip(x: float) -> float:
    return float(min(max(x, 0.0), 1.0))


def detection_risk(tpr: float, fpr: float) -> float:
    """clip(TPR - FPR, 0, 1) at a calibrated threshold."""
    return _clip(tpr - fpr)


def detection_risk_from(*results) -> tuple[float, str]:
    """Detection risk of one or more :class:`glmjax.audit.perplexity.DetectionResult` and what set it.

    Each result is scored against its own null (its expected FPR); the risk is the maximum over
    the results, their reference-ratio results and their query groups. None entries are skipped.

    Returns:
      (risk, source) with source "<statistic>:<group>" (the first maximum in the order given).

    Raises:
      ConfigError: when every result is None.
    """
    best, source = 0.0, ""
    for result in results:
        if result is None:
            continue
        for res in (result, result.reference):
            if res is None:
                continue
            for name, g in res.groups.items():
                r = detection_risk(g.tpr, res.expected_fpr)
                if r > best or not source:
                    best, source = r, f"{res.statistic}:{name}"
    if not source:
        raise ConfigError("detection risk needs at least one detection result")
    return best, source


def extraction_risk(extracted: Sequence[bool] | np.ndarray, exposure: Sequence[float] | np.ndarray,
                    log2_candidates: Sequence[float] | np.ndarray | float) -> float:
    """max(fraction extracted exactly, mean clip(exposure / log2 |R|, 0, 1)) over canaries."""
    ext = np.asarray(extracted, dtype=bool)
    exp = np.asarray(exposure, dtype=np.float64)
    lr = np.broadcast_to(np.asarray(log2_candidates, dtype=np.float64), exp.shape)
    if ext.size == 0 or ext.shape != exp.shape:
        raise ConfigError("extraction risk needs one extracted flag and one exposure per canary")
    if np.any(lr <= 0) or not np.isfinite(exp).all():
        raise ConfigError("exposures must be finite and candidate spaces larger than one")
    return _clip(max(float(ext.mean()), float(np.clip(exp / lr, 0.0, 1.0).mean())))


def mia_attack_risk(tpr_at_1pct: float, advantage: float) -> float:
    """max(TPR at 1% FPR, advantage) of one attack, clipped to [0, 1]."""
    return _clip(max(tpr_at_1pct, advantage))


def mia_risk(attacks: Mapping[str, tuple[float, float]]) -> tuple[float, str]:
    """Max over attacks of :func:`mia_attack_risk`; attacks: name -> (TPR at 1% FPR, advantage).

    Returns:
      (risk, attack name that set it).
    """
    if not attacks:
        raise ConfigError("MIA risk needs at least one attack")
    name = max(attacks, key=lambda k: mia_attack_risk(*attacks[k]))
    return mia_attack_risk(*attacks[name]), name


@dataclass
class RiskSummary:
    """Per-vector risks and the worst case."""

    vectors: dict[str, float]
    worst_case: float
    band: str
    worst_vector: str
    sources: dict[str, str] = field(default_factory=dict)  # vector -> what set it

    def to_dict(self) -> dict:
        """JSON-ready dict (the ``risk`` entry of report.json)."""
        return {"worst_case": self.worst_case, "band": self.band, "worst_vector": self.worst_vector,
                "vectors": dict(self.vectors), "sources": dict(self.sources),
                "bands": {"low": [0.0, BAND_EDGES[0]], "medium": [BAND_EDGES[0], BAND_EDGES[1]],
                          "high": [BAND_EDGES[1], 1.0]}}


def summarise(vectors: Mapping[str, float | None], sources: Mapping[str, str] | None = None) -> RiskSummary:
    """Worst case over the vectors that were run (None = not run).

    Raises:
      ConfigError: when no vector was run or a value lies outside [0, 1].
    """
    run = {k: float(v) for k, v in vectors.items() if v is not None}
    unknown = set(run) - set(VECTORS)
    if unknown:
        raise ConfigError(f"unknown risk vector(s) {sorted(unknown)}; expected {', '.join(VECTORS)}")
    if not run:
        raise ConfigError("no attack vector was run; nothing to score")
    for k, v in run.items():
        if not (0.0 <= v <= 1.0) or math.isnan(v):
            raise ConfigError(f"risk of {k} must lie in [0, 1], got {v}")
    ordered = [k for k in VECTORS if k in run]
    worst = max(ordered, key=lambda k: (run[k], -ordered.index(k)))
    return RiskSummary({k: run[k] for k in ordered}, run[worst], band(run[worst]), worst,
                       {k: v for k, v in (sources or {}).items() if k in run})


# ------------------------------------------------------------------ uncertainty of the risk

# Below these sample sizes the report warns that its risk is too coarse to rank models.
MIN_CONTROLS = 100  # a 1 % FPR threshold needs >= 99 controls; with n the smallest expected FPR is 1/(n+1)
MIN_CANARIES_PER_REPETITION = 10
MAX_RANKABLE_CI_WIDTH = 0.2  # a wider worst-case interval cannot separate two typical models


@dataclass
class RiskInputs:
    """The data each vector's risk is computed from, for :func:`bootstrap_risk`.

    Any part may be missing (None / empty). Member and non-member windows share their resampling
    with the membership attacks when they are the same rows (same counts, same order as the
    attack rows of each label); planted canaries and controls are resampled within their class,
    and the canary detection and the extraction see the same resampled canaries.
    """

    detection_fpr: float = 0.01
    members: np.ndarray | None = None            # log-ppl of member windows
    nonmembers: np.ndarray | None = None
    ref_members: np.ndarray | None = None        # reference log-ppl of the same windows
    ref_nonmembers: np.ndarray | None = None
    canary_log_ppl: np.ndarray | None = None     # [C] every canary, controls included
    ref_canary_log_ppl: np.ndarray | None = None
    canary_planted: np.ndarray | None = None     # bool [C] repetitions > 0
    canary_null_windows: bool = False            # no control: planted canaries against non-member windows
    extracted: np.ndarray | None = None          # bool [C]
    exposure: np.ndarray | None = None           # [C]
    log2_candidates: np.ndarray | None = None    # [C]
    mia_labels: np.ndarray | None = None         # bool [N]
    mia_scores: dict = field(default_factory=dict)           # attack -> [N]
    mia_sample_scores: dict = field(default_factory=dict)    # attack -> (labels [n], scores [n])


def _cum(w: np.ndarray) -> np.ndarray:
    out = np.zeros((w.shape[0], w.shape[1] + 1), np.int64)
    np.cumsum(w, axis=1, out=out[:, 1:])
    return out


def detection_replicates(x: np.ndarray, null: np.ndarray, fpr: float, wx: np.ndarray | None = None,
                         wn: np.ndarray | None = None) -> np.ndarray:
    """clip(TPR - expected FPR, 0, 1) of queries ``x`` against ``null`` for resampled data.

    Args:
      x, null: float [nx], [nn] log-perplexities (lower = flagged).
      fpr: target FPR of the calibrated threshold (:func:`glmjax.audit.perplexity.calibrate_threshold`).
      wx, wn: int [B, nx], [B, nn] multiplicities of each value in one replicate per row (each
        row summing to nx / nn), in the order of ``x`` / ``null``; None: the data itself (B = 1).

    Returns:
      float64 [B]; with identity weights exactly :func:`detection_risk` of the detection result.
    """
    from glmjax.audit.perplexity import max_flags

    x, null = np.asarray(x, np.float64), np.asarray(null, np.float64)
    ox, on = np.argsort(x, kind="stable"), np.argsort(null, kind="stable")
    xs, ns = x[ox], null[on]
    nx, n = xs.size, ns.size
    wx = np.ones((1, nx), np.int64) if wx is None else np.asarray(wx)[:, ox]
    wn = np.ones((1, n), np.int64) if wn is None else np.asarray(wn)[:, on]
    b = wx.shape[0]
    k = max_flags(fpr, n)
    if k >= n:  # every value flagged: TPR 1, expected FPR 1
        return np.zeros(b)
    cx, cn = _cum(wx), _cum(wn)
    rows = np.arange(b)
    j = (cn[:, 1:] < k + 1).sum(axis=1)          # the (k+1)-th smallest resampled null value
    t = ns[j]
    below = cn[rows, np.searchsorted(ns, t, side="left")]
    tpr = cx[rows, np.searchsorted(xs, t, side="left")] / nx
    return np.clip(tpr - (1.0 + below) / (1.0 + n), 0.0, 1.0)


def extraction_replicates(extracted: np.ndarray, exposure: np.ndarray, log2_candidates: np.ndarray,
                          w: np.ndarray | None = None) -> np.ndarray:
    """:func:`extraction_risk` for resampled canaries (``w`` int [B, C] multiplicities)."""
    ext = np.asarray(extracted, np.float64)
    norm = np.clip(np.asarray(exposure, np.float64) / np.asarray(log2_candidates, np.float64), 0.0, 1.0)
    w = np.ones((1, ext.size)) if w is None else np.asarray(w, np.float64)
    c = ext.size
    return np.clip(np.maximum(w @ ext / c, w @ norm / c), 0.0, 1.0)


def _strata(rng, groups: list[np.ndarray], n: int, b: int) -> np.ndarray:
    """[b, n] multiplicities resampling each index group (a partition of range(n)) within itself."""
    from glmjax.audit.metrics import _resample_counts

    w = np.zeros((b, n), np.int64)
    for g in groups:
        if g.size:
            w[:, g] = _resample_counts(rng, g.size, b)
    return w


def bootstrap_risk(inputs: RiskInputs, n_bootstrap: int, seed: int = 0, confidence: float = 0.95,
                   max_cells: int = 20_000_000) -> dict:
    """Percentile-bootstrap intervals of every vector's risk and of the worst case.

    Each replicate resamples, with replacement and within each class, the member and non-member
    windows (jointly for the window detection and the membership attacks), the rows of each
    sampled attack, and the planted and control canaries (jointly for canary detection and
    extraction); it recomputes every vector's risk exactly as the point estimate does (thresholds
    recalibrated on the resampled null) and takes the worst case of that replicate. A canary's
    exposure itself is held fixed (a sampled estimate has its own interval in the canary table).

    Returns:
      {"worst_case_ci": [lo, hi], "vectors_ci": {vector: [lo, hi]}, "n_bootstrap", "confidence",
      "seed"}; intervals are None when n_bootstrap is 0.
    """
    from glmjax.audit.metrics import RocBasis

    if n_bootstrap <= 0:
        return {"worst_case_ci": None, "vectors_ci": {}, "n_bootstrap": 0, "confidence": confidence, "seed": seed}
    rng = np.random.default_rng([seed, 0x5215C])
    fpr = inputs.detection_fpr
    have_windows = inputs.members is not None and inputs.nonmembers is not None
    labels = None if inputs.mia_labels is None else np.asarray(inputs.mia_labels, bool)
    pos_rows = neg_rows = None
    if labels is not None and inputs.mia_scores:
        pos_rows, neg_rows = np.flatnonzero(labels), np.flatnonzero(~labels)
    shared = (have_windows and pos_rows is not None and len(inputs.members) == pos_rows.size
              and len(inputs.nonmembers) == neg_rows.size)
    bases = {}
    for name, s in inputs.mia_scores.items():
        bases[name] = RocBasis(labels, s)
    orders = {name: (np.argsort(np.asarray(s, np.float64)[pos_rows], kind="stable"),
                     np.argsort(np.asarray(s, np.float64)[neg_rows], kind="stable"))
              for name, s in inputs.mia_scores.items()}
    sample_bases = {name: RocBasis(lab, s) for name, (lab, s) in inputs.mia_sample_scores.items()}
    canaries = inputs.canary_planted is not None
    if canaries:
        planted = np.asarray(inputs.canary_planted, bool)
        cgroups = [np.flatnonzero(planted), np.flatnonzero(~planted)]
    n_rows = (0 if pos_rows is None else labels.size) + (0 if not have_windows else
                                                           len(inputs.members) + len(inputs.nonmembers))
    chunk = int(max(1, min(n_bootstrap, max_cells // max(n_rows, 1))))
    reps: dict[str, list[np.ndarray]] = {}
    done = 0
    while done < n_bootstrap:
        b = min(chunk, n_bootstrap - done)
        vec: dict[str, np.ndarray] = {}
        det = []
        wm = wn = None
        if have_windows:
            wm = _strata(rng, [np.arange(len(inputs.members))], len(inputs.members), b)
            wn = _strata(rng, [np.arange(len(inputs.nonmembers))], len(inputs.nonmembers), b)
            det.append(detection_replicates(inputs.members, inputs.nonmembers, fpr, wm, wn))
            if inputs.ref_members is not None and inputs.ref_nonmembers is not None:
                det.append(detection_replicates(np.asarray(inputs.members) - inputs.ref_members,
                                                np.asarray(inputs.nonmembers) - inputs.ref_nonmembers, fpr, wm, wn))
        if canaries:
            wc = _strata(rng, cgroups, planted.size, b)
            if inputs.canary_log_ppl is not None and planted.any():
                x = np.asarray(inputs.canary_log_ppl, np.float64)
                if not inputs.canary_null_windows and (~planted).any():
                    det.append(detection_replicates(x[planted], x[~planted], fpr, wc[:, planted], wc[:, ~planted]))
                    if inputs.ref_canary_log_ppl is not None:
                        d = x - np.asarray(inputs.ref_canary_log_ppl, np.float64)
                        det.append(detection_replicates(d[planted], d[~planted], fpr, wc[:, planted],
                                                        wc[:, ~planted]))
                elif inputs.canary_null_windows and inputs.nonmembers is not None:
                    wn_c = wn if wn is not None else _strata(rng, [np.arange(len(inputs.nonmembers))],
                                                             len(inputs.nonmembers), b)
                    det.append(detection_replicates(x[planted], inputs.nonmembers, fpr, wc[:, planted], wn_c))
                    if inputs.ref_canary_log_ppl is not None and inputs.ref_nonmembers is not None:
                        d = x - np.asarray(inputs.ref_canary_log_ppl, np.float64)
                        dn = np.asarray(inputs.nonmembers, np.float64) - inputs.ref_nonmembers
                        det.append(detection_replicates(d[planted], dn, fpr, wc[:, planted], wn_c))
            if inputs.exposure is not None:
                vec["extraction"] = extraction_replicates(inputs.extracted, inputs.exposure,
                                                          inputs.log2_candidates, wc)
        if det:
            vec["detection"] = np.max(np.stack(det), axis=0)
        mia = []
        if bases:
            if shared:
                wp_rows, wn_rows = wm, wn
            else:
                wp_rows = _strata(rng, [np.arange(pos_rows.size)], pos_rows.size, b)
                wn_rows = _strata(rng, [np.arange(neg_rows.size)], neg_rows.size, b)
            for name, basis in bases.items():
                op, onn = orders[name]
                m = basis.metrics([MIA_FPR], wp_rows[:, op], wn_rows[:, onn])
                mia.append(np.clip(np.maximum(m[f"tpr@{MIA_FPR:g}"], m["advantage"]), 0.0, 1.0))
        for basis in sample_bases.values():
            from glmjax.audit.metrics import _resample_counts

            m = basis.metrics([MIA_FPR], _resample_counts(rng, basis.n_pos, b), _resample_counts(rng, basis.n_neg, b))
            mia.append(np.clip(np.maximum(m[f"tpr@{MIA_FPR:g}"], m["advantage"]), 0.0, 1.0))
        if mia:
            vec["mia"] = np.max(np.stack(mia), axis=0)
        if vec:
            vec["worst_case"] = np.max(np.stack(list(vec.values())), axis=0)
        for k, v in vec.items():
            reps.setdefault(k, []).append(v)
        done += b
    q = [50.0 * (1.0 - confidence), 50.0 * (1.0 + confidence)]
    ci = {k: [float(x) for x in np.percentile(np.concatenate(v), q)] for k, v in reps.items()}
    worst = ci.pop("worst_case", None)
    return {"worst_case_ci": worst, "vectors_ci": {k: ci[k] for k in VECTORS if k in ci},
            "n_bootstrap": int(n_bootstrap), "confidence": float(confidence), "seed": int(seed)}


def sample_warnings(n_controls: int | None, canaries_per_repetition: Mapping[int, int],
                    worst_case_ci: Sequence[float] | None, canary_detection_run: bool,
                    worst_case: float | None = None) -> list[str]:
    """Plain-language warnings when the audit's samples are too small to rank models."""
    out = []
    if canary_detection_run and n_controls is not None and n_controls < MIN_CONTROLS:
        out.append(f"only {n_controls} control canaries (at least {MIN_CONTROLS} recommended): with n controls "
                   f"a canary can be flagged at a false-positive rate no lower than 1/(n+1) = "
                   f"{1 / (n_controls + 1):.3f}, so the canary detection is coarse; plant more with "
                   "glmjax data canaries --controls N")
    few = sorted(r for r, n in canaries_per_repetition.items() if r > 0 and n < MIN_CANARIES_PER_REPETITION)
    if few:
        out.append(f"fewer than {MIN_CANARIES_PER_REPETITION} canaries at repetition count(s) "
                   f"{', '.join(map(str, few))}: the exposure and extraction rates per repetition rest on a "
                   "handful of canaries; plant more (glmjax data canaries --num N)")
    if worst_case_ci is not None and worst_case_ci[1] - worst_case_ci[0] > MAX_RANKABLE_CI_WIDTH:
        out.append("the interval of the worst-case risk "
                   f"[{worst_case_ci[0]:.3f}, {worst_case_ci[1]:.3f}] is wider than {MAX_RANKABLE_CI_WIDTH}: "
                   "models whose intervals overlap cannot be ranked by this audit; use more canaries, controls "
                   "and windows")
    if worst_case is not None and worst_case_ci is not None and worst_case < worst_case_ci[0]:
        out.append(f"the worst-case risk {worst_case:.3f} lies below its interval: several attacks of similar "
                   "strength compete for the maximum, and on a small sample each resample's maximum picks the "
                   "luckiest one; read the interval as how high the risk may plausibly be and audit with more "
                   "windows and canaries")
    return out
