"""Audit reports: report.json (every number, configuration, provenance); the HTML page and the
terminal summary are rendered from it by :mod:`glmjax.audit.render`.

The caller fills an :class:`AuditResult` with plain numpy/Python data — log-perplexities per
group, per-canary exposure records, membership-attack scores with labels — and
:func:`evaluate` turns it into the report dict (schema in :mod:`glmjax.audit.schema`,
docs/report-schema.md): metrics with bootstrap intervals, perplexity detection, per-repetition
summaries, ε lower bounds and the risk summary. :func:`write_report` writes both files through
a temporary name. Raw canary secrets appear only with ``reveal=True``; otherwise canaries are
named by id and the SHA-256 of their secret, and no sequence is ever written.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from glmjax import __version__
from glmjax.audit import metrics as M
from glmjax.audit import risk as R
from glmjax.audit.exposure import ExposureEstimate, summarise_by_repetition
from glmjax.audit.perplexity import NULL_CONTROLS, NULL_WINDOWS, DetectionResult, check_same_mode, detect
from glmjax.audit.render import print_summary, render_html, summary_table  # noqa: F401  (re-exported)
from glmjax.audit.schema import SCHEMA, SCHEMA_VERSION, validate_report
from glmjax.errors import ConfigError

RAW_COUNT_MIN = 50  # false positives a threshold needs for the raw-count ε estimate (jax_privacy's default)


@dataclass
class CanaryResult:
    """Extraction/exposure outcome of one planted canary.

    Attributes:
      id: canary id from the manifest. repetitions: times it was planted in the training data.
      exposure: bits; exposure_ci: (low, high) interval (equal to the point for exact exposure).
      extracted: whether greedy/beam decoding from the prefix reproduced the secret exactly.
      n_candidates: |R|, the size of the candidate secret space (4^k for k random bases).
      secret: the raw secret, written only with reveal (no hash of it is ever written: a few
        random bases have so few candidates that any unkeyed hash is as good as the secret;
        the id joins the report with the manifest the auditor holds).
      exposure_method: "exact" (full enumeration) or "skewnorm" (sampled extrapolation).
      log_perplexity: the canary's log-perplexity under the target model, when known.
    """

    id: str
    repetitions: int
    exposure: float
    exposure_ci: tuple[float, float]
    extracted: bool
    n_candidates: int
    exposure_method: str = "exact"
    secret: str | None = None
    log_perplexity: float | None = None
    exposure_tf_privacy: float | None = None  # exact only: TF Privacy's convention (ties against the canary)

    @classmethod
    def from_estimate(cls, id: str, repetitions: int, estimate: ExposureEstimate, extracted: bool,
                      secret: str, log_perplexity: float | None = None) -> CanaryResult:
        """Build from an :class:`~glmjax.audit.exposure.ExposureEstimate` and the secret text."""
        if estimate.n_candidates is None:
            raise ConfigError(f"canary {id}: the exposure estimate needs the candidate-space size")
        return cls(id, int(repetitions), float(estimate.exposure), tuple(estimate.ci), bool(extracted),
                   int(estimate.n_candidates), estimate.method, secret, log_perplexity)


@dataclass
class AuditResult:
    """Everything a report needs, as plain data. Any vector may be left out (None / empty).

    Attributes:
      mode, mode_params: scoring mode of every target score below (see ScoreStore ``mode``).
      config: the audit configuration (options, thresholds) — copied into the report.
      provenance: model / data / seed / command provenance — copied into the report.
      member_log_ppl, nonmember_log_ppl: float [.] per-sequence log-perplexities (detection, plots).
      canaries: per-canary outcomes (extraction vector); canary_log_ppl aligned with them (or
        each canary's ``log_perplexity``) adds the canary detection: planted canaries
        (repetitions > 0) against the never-planted controls (repetitions 0), or against the
        non-member windows when there is no control.
      reference_*: the same sequences under a reference model in ``reference_mode``.
      mia_scores: attack name -> float [N] scores (higher = member), mia_labels: bool [N].
      mia_sample_scores: attack name -> (labels bool [n], scores float [n]) for attacks run on a
        sample of the rows (the neighbourhood attack); they count towards the risk like the others
        and their entry says how many rows they saw (``rows``).
      attack_info: attack name -> its settings (DC-PDD's reference, ReCaLL's prefix, the
        gradient norm's p), reported as the attack entry's ``settings``.
      extraction_attacks, exposure_plan, skipped: reported as they are (the audit pipeline's
        per-method extraction records, the exposure plan, the vectors skipped and why).
      one_run: optional (scores [m], included [m]) of canaries inserted with probability 1/2 for
        the one-run ε audit.
    """

    mode: str
    mode_params: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    member_log_ppl: np.ndarray | None = None
    nonmember_log_ppl: np.ndarray | None = None
    canaries: list[CanaryResult] = field(default_factory=list)
    canary_log_ppl: np.ndarray | None = None
    reference_mode: str | None = None
    reference_mode_params: dict | None = None
    reference_member_log_ppl: np.ndarray | None = None
    reference_nonmember_log_ppl: np.ndarray | None = None
    reference_canary_log_ppl: np.ndarray | None = None
    mia_scores: dict[str, np.ndarray] = field(default_factory=dict)
    mia_labels: np.ndarray | None = None
    mia_sample_scores: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    attack_info: dict[str, dict] = field(default_factory=dict)
    extraction_attacks: dict | None = None
    exposure_plan: list | None = None
    skipped: dict[str, str] | None = None
    one_run: tuple[np.ndarray, np.ndarray] | None = None
    fpr_targets: Sequence[float] = (0.001, 0.01)
    detection_fpr: float = 0.01
    n_bootstrap: int = 200
    confidence: float = 0.95
    seed: int = 0
    epsilon_delta: float = 1e-5


def _clean(x: Any) -> Any:
    """JSON-safe copy: numpy scalars/arrays to Python, NaN and infinities to null."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, np.ndarray):
        return _clean(x.tolist())
    if isinstance(x, (np.bool_, bool)):
        return bool(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, (float, np.floating)):
        f = float(x)
        return f if math.isfinite(f) else None
    return x


def _histograms(groups: Mapping[str, np.ndarray | None], bins: int = 60) -> dict | None:
    """Shared-bin histograms of the available groups (counts only, never values)."""
    present = {k: np.asarray(v, np.float64) for k, v in groups.items() if v is not None}
    present = {k: v[np.isfinite(v)] for k, v in present.items()}
    present = {k: v for k, v in present.items() if v.size}
    if not present:
        return None
    allv = np.concatenate(list(present.values()))
    lo, hi = np.quantile(allv, [0.001, 0.999]) if allv.size > 1000 else (allv.min(), allv.max())
    for v in present.values():  # keep every canary visible even if it lies in the extreme tail
        if v.size <= 1000:
            lo, hi = min(lo, v.min()), max(hi, v.max())
    if hi <= lo:
        hi = lo + 1.0
    edges = np.linspace(lo, hi, bins + 1)
    return {"edges": edges.tolist(),
            "counts": {k: np.histogram(np.clip(v, lo, hi), edges)[0].tolist() for k, v in present.items()},
            "n": {k: int(v.size) for k, v in present.items()}}


def _reference_kw(result: AuditResult, ref_queries: dict[str, np.ndarray | None],
                  ref_null: np.ndarray | None) -> dict:
    """detect()'s reference arguments when every reference array is present, else none."""
    if ref_null is None or any(v is None for v in ref_queries.values()):
        return {}
    return {"reference_queries": ref_queries, "reference_nonmember": ref_null,
            "reference_mode": result.reference_mode, "reference_mode_params": result.reference_mode_params}


def _detect_windows(result: AuditResult, mode: str, mode_params: dict) -> DetectionResult | None:
    """Member windows against non-member windows; None without both."""
    if result.member_log_ppl is None or result.nonmember_log_ppl is None:
        return None
    ref = _reference_kw(result, {"members": result.reference_member_log_ppl}, result.reference_nonmember_log_ppl)
    return detect({"members": result.member_log_ppl}, result.nonmember_log_ppl, mode=mode, mode_params=mode_params,
                  fpr=result.detection_fpr, null=NULL_WINDOWS, **ref)


def _detect_canaries(result: AuditResult, can_ppl: np.ndarray | None, mode: str,
                     mode_params: dict) -> DetectionResult | None:
    """Planted canaries (repetitions > 0) against the never-planted controls (repetitions 0).

    Canaries differ from genome windows in length and composition, so only never-planted
    canaries from the same generator are a fair null; without any control the non-member windows
    are used instead and the result says so (``null``). None without a planted canary or a null.
    """
    if can_ppl is None:
        return None
    x = np.asarray(can_ppl, np.float64)
    reps = np.array([c.repetitions for c in result.canaries], np.int64)
    planted = reps > 0
    if not planted.any():
        return None
    ref_x = result.reference_canary_log_ppl
    if ref_x is not None:
        ref_x = np.asarray(ref_x, np.float64)
        if ref_x.shape != x.shape:
            raise ConfigError(f"{ref_x.size} reference canary log-perplexities for {x.size} canaries")
    if (~planted).any():
        null, null_x = NULL_CONTROLS, x[~planted]
        ref_null = None if ref_x is None else ref_x[~planted]
    elif result.nonmember_log_ppl is not None:
        null, null_x, ref_null = NULL_WINDOWS, result.nonmember_log_ppl, result.reference_nonmember_log_ppl
    else:
        return None
    ref = _reference_kw(result, {"canaries": None if ref_x is None else ref_x[planted]}, ref_null)
    return detect({"canaries": x[planted]}, null_x, mode=mode, mode_params=mode_params, fpr=result.detection_fpr,
                  repetitions={"canaries": reps[planted]}, null=null, **ref)


def evaluate(result: AuditResult, *, reveal: bool = False, log=None) -> dict:
    """Compute every number of the report from an :class:`AuditResult`.

    Args:
      result: the audit inputs.
      reveal: include raw canary secrets (they are otherwise replaced by their SHA-256).
      log: where the progress of the membership-attack metrics goes (see
        :func:`glmjax.progress.progress`; None: a terminal bar only).

    Returns:
      The report dict, validated against the schema.
    """
    mode, mode_params = check_same_mode(("target scores", result.mode, result.mode_params))
    fpr_targets = tuple(sorted(set(float(f) for f in result.fpr_targets) | {0.001, R.MIA_FPR}))
    vectors: dict[str, float | None] = {}
    sources: dict[str, str] = {}

    # --- detection
    can_ppl = result.canary_log_ppl
    if can_ppl is None and result.canaries and all(c.log_perplexity is not None for c in result.canaries):
        can_ppl = np.array([c.log_perplexity for c in result.canaries])
    if can_ppl is not None and len(can_ppl) != len(result.canaries):
        raise ConfigError(f"{len(can_ppl)} canary log-perplexities for {len(result.canaries)} canaries")
    windows_det, canary_det = _detect_windows(result, mode, mode_params), _detect_canaries(result, can_ppl, mode,
                                                                                            mode_params)
    detection = None
    if windows_det is not None or canary_det is not None:
        detection = {"fpr_target": result.detection_fpr,
                     "windows": None if windows_det is None else windows_det.to_dict(),
                     "canaries": None if canary_det is None else canary_det.to_dict()}
        vectors["detection"], sources["detection"] = R.detection_risk_from(windows_det, canary_det)

    # --- extraction / exposure
    canaries = []
    extraction = None
    if result.canaries:
        for c in result.canaries:
            entry = {"id": c.id, "repetitions": int(c.repetitions),
                     "exposure": float(c.exposure), "exposure_ci": [float(c.exposure_ci[0]), float(c.exposure_ci[1])],
                     "exposure_method": c.exposure_method, "n_candidates": int(c.n_candidates),
                     "extracted": bool(c.extracted), "log2_candidates": math.log2(c.n_candidates),
                     "log_perplexity": c.log_perplexity}
            if c.exposure_tf_privacy is not None:
                entry["exposure_tf_privacy"] = float(c.exposure_tf_privacy)
            if reveal and c.secret is not None:
                entry["secret"] = c.secret
            canaries.append(entry)
        exp = np.array([c["exposure"] for c in canaries])
        lr = np.array([c["log2_candidates"] for c in canaries])
        ext = np.array([c["extracted"] for c in canaries])
        vectors["extraction"] = R.extraction_risk(ext, exp, lr)
        frac, norm = float(ext.mean()), float(np.clip(exp / lr, 0, 1).mean())
        sources["extraction"] = "fraction_extracted" if frac >= norm else "normalised_exposure"
        extraction = {
            "n_canaries": len(canaries), "fraction_extracted": frac, "mean_normalised_exposure": norm,
            "by_repetition": summarise_by_repetition(
                [c["repetitions"] for c in canaries],
                {"exposure": exp, "extracted": ext.astype(float), "normalised_exposure": np.clip(exp / lr, 0, 1)}),
        }

    # --- membership inference
    mia = None
    if result.mia_scores:
        if result.mia_labels is None:
            raise ConfigError("membership-attack scores need labels (True = member)")
        inputs = {name: (result.mia_labels, s) for name, s in result.mia_scores.items()}
        overlap = set(inputs) & set(result.mia_sample_scores)
        if overlap:
            raise ConfigError(f"membership attack {sorted(overlap)[0]!r} is given on all rows and on a sample")
        inputs.update(result.mia_sample_scores)
        from glmjax.progress import progress

        attacks: dict[str, M.AttackMetrics] = {}
        with progress("statistics (attack metrics)", total=len(inputs), unit="attack", log=log) as bar:
            for i, (name, (lab, s)) in enumerate(sorted(inputs.items())):
                attacks[name] = M.evaluate_attack(lab, s, n_bootstrap=result.n_bootstrap,
                                                  seed=result.seed + i, confidence=result.confidence,
                                                  fpr_targets=fpr_targets)
                bar.advance(1)
        vectors["mia"], best = R.mia_risk({k: (a.tpr_at_fpr[R.MIA_FPR], a.advantage) for k, a in attacks.items()})
        sources["mia"] = best
        eps = M.epsilon_lower_bound_from_scores(inputs[best][0], inputs[best][1],
                                                fpr_targets=fpr_targets, delta=result.epsilon_delta,
                                                alpha=1.0 - result.confidence, seed=result.seed)
        entries = {k: a.to_dict() for k, a in attacks.items()}
        for k in result.mia_sample_scores:
            entries[k]["rows"] = int(len(inputs[k][1]))
        for k, info in result.attack_info.items():
            if k in entries:
                entries[k]["settings"] = dict(info)
        hulls = {k: M.roc_hull(lab, sc) for k, (lab, sc) in inputs.items()}
        for k, hull in hulls.items():  # jax_privacy's randomised-threshold numbers, named apart
            entries[k]["randomised"] = M.randomised_metrics(hull, fpr_targets=fpr_targets)
        gdp_delta = result.epsilon_delta or 1e-5  # the GDP conversion needs δ > 0
        eps_gdp, mu_gdp = M.epsilon_gdp(hulls[best], delta=gdp_delta, alpha=1.0 - result.confidence)
        estimates = {"raw_counts": M.epsilon_raw_counts(hulls[best], min_count=RAW_COUNT_MIN),
                     "raw_counts_min_count": RAW_COUNT_MIN, "gdp": eps_gdp, "gdp_mu": mu_gdp,
                     "gdp_delta": gdp_delta}
        mia = {"fpr_targets": list(fpr_targets), "attacks": entries,
               "strongest_attack": best, "epsilon": {"attack": best, **eps.to_dict(), "estimates": estimates}}
        if "neighbourhood" in entries:  # also under its own key, as before
            mia["neighbourhood"] = entries["neighbourhood"]
        if result.one_run is not None:
            s1, inc = result.one_run
            m = len(s1)
            grid = sorted({(k, k) for k in (m // 20, m // 10, m // 5) if k > 0} | {(m // 10, 0)} - {(0, 0)})
            one = M.one_run_epsilon_search(s1, inc, grid, delta=result.epsilon_delta,
                                           beta=1.0 - result.confidence)
            mia["one_run_epsilon"] = one.to_dict()

    summary = R.summarise(vectors, sources)
    risk = summary.to_dict()
    planted = np.array([c.repetitions > 0 for c in result.canaries], bool) if result.canaries else None
    inputs = R.RiskInputs(
        detection_fpr=result.detection_fpr,
        members=result.member_log_ppl, nonmembers=result.nonmember_log_ppl,
        ref_members=result.reference_member_log_ppl if windows_det is not None and windows_det.reference else None,
        ref_nonmembers=result.reference_nonmember_log_ppl,
        canary_log_ppl=None if canary_det is None else np.asarray(can_ppl, np.float64),
        ref_canary_log_ppl=(None if canary_det is None or canary_det.reference is None
                            else np.asarray(result.reference_canary_log_ppl, np.float64)),
        canary_planted=planted, canary_null_windows=canary_det is not None and canary_det.null == NULL_WINDOWS,
        extracted=None if not canaries else np.array([c["extracted"] for c in canaries]),
        exposure=None if not canaries else np.array([c["exposure"] for c in canaries]),
        log2_candidates=None if not canaries else np.array([c["log2_candidates"] for c in canaries]),
        mia_labels=result.mia_labels if result.mia_scores else None,
        mia_scores=dict(result.mia_scores), mia_sample_scores=dict(result.mia_sample_scores))
    if windows_det is None:  # the windows took part in no detection
        inputs.members = None
    boot = R.bootstrap_risk(inputs, result.n_bootstrap, seed=result.seed, confidence=result.confidence)
    risk["worst_case_ci"], risk["vectors_ci"] = boot["worst_case_ci"], boot["vectors_ci"]
    risk["ci"] = {"method": "percentile bootstrap over windows, attack rows, planted canaries and controls "
                            "(each resampled within its class)",
                  "n_bootstrap": boot["n_bootstrap"], "confidence": boot["confidence"]}
    reps = [c.repetitions for c in result.canaries]
    risk["warnings"] = R.sample_warnings(
        int(sum(r == 0 for r in reps)) if result.canaries else None,
        {int(r): reps.count(r) for r in set(reps)}, risk["worst_case_ci"],
        canary_det is not None and canary_det.null == NULL_CONTROLS, risk["worst_case"])
    hist = _histograms({"members": result.member_log_ppl, "nonmembers": result.nonmember_log_ppl,
                        "canaries": can_ppl})
    report = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "reveal": bool(reveal),
        "config": {**result.config, "fpr_targets": list(fpr_targets), "detection_fpr": result.detection_fpr,
                   "n_bootstrap": result.n_bootstrap, "confidence": result.confidence, "seed": result.seed,
                   "epsilon_delta": result.epsilon_delta},
        "provenance": {"glmjax_version": __version__, **result.provenance},
        "scoring": {"mode": mode, "mode_params": mode_params},
        "risk": risk,
        "detection": detection,
        "canaries": canaries,
        "extraction": extraction,
        "mia": mia,
        "histograms": {"log_perplexity": hist},
    }
    if result.extraction_attacks is not None:
        report["extraction_attacks"] = result.extraction_attacks
    if result.exposure_plan is not None:
        report["exposure_plan"] = result.exposure_plan
    if result.skipped is not None:
        report["skipped"] = dict(result.skipped)
    report = _clean(report)
    validate_report(report)
    return report


# ------------------------------------------------------------------ plots

def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_report(result: AuditResult | dict, out_dir: str | os.PathLike, *, reveal: bool = False,
                 html_report: bool = True) -> dict[str, Path]:
    """Write report.json (and report.html) into ``out_dir``, each via a temporary name.

    Args:
      result: an :class:`AuditResult` (evaluated here) or an already evaluated report dict.
      out_dir: output folder (created if missing).
      reveal: include raw canary secrets (only meaningful for an AuditResult).
      html_report: also write report.html.

    Returns:
      {"json": path, "html": path}.
    """
    report = evaluate(result, reveal=reveal) if isinstance(result, AuditResult) else result
    validate_report(report)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json"}
    _atomic_write(paths["json"], json.dumps(report, indent=2, allow_nan=False) + "\n")
    if html_report:
        paths["html"] = out / "report.html"
        _atomic_write(paths["html"], render_html(report))
    return paths
