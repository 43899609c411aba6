"""Exposure of planted canaries (Carlini et al., "The Secret Sharer", USENIX Security 2019).

A canary is a prefix followed by a secret drawn from a candidate space R (for DNA, all 4^k
secrets of k bases). The model scores every candidate completion by its log-perplexity (lower =
more likely). The canary's rank is its position among all candidates, and

    exposure = log2 |R| - log2 rank.

Ties: rank = 1 + #(candidates strictly more likely than the canary). Candidates that tie with the
canary do not push it down, so ties can only raise exposure — the conservative choice for a
privacy audit. TF Privacy's interpolation counts ties against the canary and divides by the
references only; :func:`exact_exposure` gives it with ``convention="tf_privacy"``, and the audit
reports it next to the exact exposure (``exposure_tf_privacy``). Exposure therefore lies in [0, log2 |R|]: log2 |R| when the canary is the single
most likely candidate, 0 when every candidate is more likely.

Exact exposure needs the scores of all of R (:func:`exact_exposure`, or :func:`count_more_likely`
accumulated over chunks of an enumeration). When R is too large, the Secret Sharer's
extrapolation (section 4.3) fits a skew-normal distribution to the log-perplexities of a random
sample of candidates; the fraction of R more likely than the canary is then approximated by the
fitted CDF F at the canary's log-perplexity, rank ≈ |R| F, and

    exposure ≈ -log2 F(canary log-perplexity),

capped at log2 |R| when |R| is known (rank cannot fall below 1). :func:`estimate_exposure` fits
with ``scipy.stats.skewnorm.fit`` (maximum likelihood) and gives a percentile bootstrap interval
by refitting on resamples of the candidate sample; the interval reflects the fitting uncertainty
of the extrapolation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import special, stats

from glmjax.errors import ConfigError

LN2 = math.log(2.0)


def count_more_likely(canary_log_ppl, candidate_log_ppl):
    """Number of candidates strictly more likely (lower log-perplexity) than each canary.

    Pure array code with operators and methods only, so it runs unchanged on numpy arrays and on
    jax arrays inside ``jax.jit``; counts from chunks of an enumeration add up.

    Args:
      canary_log_ppl: [...] the canaries' log-perplexities.
      candidate_log_ppl: [..., R] the candidates' log-perplexities (leading axes broadcast with
        the canaries; each canary can have its own candidate set).

    Returns:
      int [...] counts.
    """
    return (candidate_log_ppl < canary_log_ppl[..., None]).sum(axis=-1)


def exposure_from_rank(rank: np.ndarray | int, n_candidates: np.ndarray | int) -> np.ndarray:
    """exposure = log2 |R| - log2 rank (bits); rank 1 = most likely, 1 <= rank <= |R|."""
    rank = np.asarray(rank, dtype=np.float64)
    n = np.asarray(n_candidates, dtype=np.float64)
    if np.any(rank < 1) or np.any(rank > n):
        raise ConfigError("exposure needs 1 <= rank <= number of candidates")
    return np.log2(n) - np.log2(rank)


def exact_exposure(canary_log_ppl: np.ndarray | float, candidate_log_ppl: np.ndarray,
                   n_candidates: int | None = None,
                   convention: str = "secret_sharer") -> tuple[np.ndarray, np.ndarray]:
    """Exact exposure from the scores of every candidate secret.

    Args:
      canary_log_ppl: [C] or scalar, the canaries' log-perplexities.
      candidate_log_ppl: [R] (shared) or [C, R] (one candidate set per canary).
      n_candidates: ``secret_sharer`` only: |R| when the given candidates exclude the canary
        itself (then |R| = R + 1). By default |R| = R, the canary among the candidates; a canary
        less likely than every given candidate (so not among them) gets |R| = R + 1 and exposure 0.
      convention: ``secret_sharer`` (default; Carlini et al. 2019): rank = 1 + #{candidates
        strictly more likely}, exposure = log2 |R| - log2 rank in [0, log2 |R|]; ties count for
        the canary. ``tf_privacy`` (TF Privacy's ``compute_exposure_interpolation``): the
        candidates are references that exclude the canary, rank = 1 + #{references at least as
        likely} (ties count against the canary), exposure = log2 #references - log2 rank, which
        is log2(R / (R + 1)) < 0 for a canary below every reference.

    Returns:
      (exposure [C] in bits, rank [C]).
    """
    canary = np.asarray(canary_log_ppl, dtype=np.float64)
    cands = np.asarray(candidate_log_ppl, dtype=np.float64)
    if not np.isfinite(cands).all() or not np.isfinite(canary).all():
        raise ConfigError("log-perplexities must be finite")
    if convention == "tf_privacy":
        if n_candidates is not None:
            raise ConfigError("the tf_privacy convention counts the references given; drop n_candidates")
        rank = 1 + (cands <= canary[..., None]).sum(axis=-1)
        return np.log2(cands.shape[-1]) - np.log2(rank.astype(np.float64)), rank
    if convention != "secret_sharer":
        raise ConfigError(f"unknown exposure convention {convention!r}; choose secret_sharer or tf_privacy")
    rank = 1 + count_more_likely(canary, cands)
    n = np.maximum(cands.shape[-1], rank) if n_candidates is None else int(n_candidates)
    return exposure_from_rank(rank, n), rank


def extrapolated_exposure(canary_log_ppl: np.ndarray | float, a: float, loc: float, scale: float,
                          n_candidates: int | None = None) -> np.ndarray:
    """Secret Sharer extrapolation: -log2 F(canary) under a skew-normal F(a, loc, scale).

    Args:
      canary_log_ppl: [...] log-perplexities.
      a, loc, scale: skew-normal shape, location, scale of the candidates' log-perplexities.
      n_candidates: |R|; when given, the result is capped at log2 |R|.

    Returns:
      float64 [...] exposure in bits (>= 0).
    """
    logcdf = stats.skewnorm.logcdf(np.asarray(canary_log_ppl, dtype=np.float64), a, loc=loc, scale=scale)
    exp = np.maximum(-np.asarray(logcdf) / LN2, 0.0)
    if n_candidates is not None:
        exp = np.minimum(exp, math.log2(n_candidates))
    return exp


@dataclass
class ExposureEstimate:
    """Exposure of one canary with its interval and how it was computed."""

    exposure: float
    ci: tuple[float, float]
    method: str  # "exact" | "skewnorm"
    n_candidates: int | None
    n_samples: int
    confidence: float
    rank: int | None = None
    fit: dict = field(default_factory=dict)  # skew-normal a, loc, scale

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return {"exposure": self.exposure, "exposure_ci": list(self.ci), "method": self.method,
                "n_candidates": self.n_candidates, "n_samples": self.n_samples,
                "confidence": self.confidence, "rank": self.rank, "fit": self.fit}


def _loglik_grad_hess(x: np.ndarray, theta: np.ndarray, need: bool = True):
    """Skew-normal log-likelihood (up to a constant), gradient and Hessian per replicate.

    Args:
      x: [B, S] samples; theta: [B, 3] parameters (a, loc, log scale).

    Returns:
      (loglik [B], grad [B, 3], hess [B, 3, 3]) — gradient and Hessian only when ``need``.
    """
    a, loc, eta = theta[:, 0:1], theta[:, 1:2], theta[:, 2:3]
    w = np.exp(eta)
    z = (x - loc) / w
    u = a * z
    log_cdf = special.log_ndtr(u)
    ll = (-eta - 0.5 * z * z + log_cdf).sum(axis=1)
    if not need:
        return ll, None, None
    r = np.exp(-0.5 * u * u - 0.5 * math.log(2 * math.pi) - log_cdf)  # phi(u) / Phi(u), stable
    dr = -r * (u + r)  # r'(u)
    gz = -z + a * r
    l_aa = z * z * dr
    l_az = r + z * a * dr
    l_zz = -1.0 + a * a * dr
    grad = np.stack([(z * r).sum(1), (gz / -w).sum(1), (-1.0 - gz * z).sum(1)], axis=1)
    h = np.empty((x.shape[0], 3, 3))
    h[:, 0, 0] = l_aa.sum(1)
    h[:, 0, 1] = h[:, 1, 0] = (l_az / -w).sum(1)
    h[:, 0, 2] = h[:, 2, 0] = (l_az * -z).sum(1)
    h[:, 1, 1] = (l_zz / (w * w)).sum(1)
    h[:, 1, 2] = h[:, 2, 1] = ((l_zz * z + gz) / w).sum(1)
    h[:, 2, 2] = (l_zz * z * z + gz * z).sum(1)
    return ll, grad, h


def fit_skewnorm(samples: np.ndarray, start: tuple[float, float, float],
                 max_iter: int = 100, tol: float = 1e-9) -> np.ndarray:
    """Maximum-likelihood skew-normal fits of many samples at once (damped Newton).

    Every replicate starts from ``start`` (for bootstrap resamples: the fit of the original
    sample, which is close to each replicate's optimum) and takes Levenberg–Marquardt-damped
    Newton steps that are kept only when they raise that replicate's likelihood.

    Args:
      samples: [B, S] samples (one fit per row).
      start: (a, loc, scale) initial parameters.
      max_iter: iteration cap; tol: stop when every accepted step is below this (max norm).

    Returns:
      float64 [B, 3]: (a, loc, scale) per row.
    """
    x = np.atleast_2d(np.asarray(samples, dtype=np.float64))
    b = x.shape[0]
    theta = np.tile([start[0], start[1], math.log(start[2])], (b, 1))
    lam = np.full(b, 1e-6)
    eye = np.eye(3)
    idx = np.arange(b)  # rows still iterating
    for _ in range(max_iter):
        xs, th, lm = x[idx], theta[idx], lam[idx]
        ll, g, h = _loglik_grad_hess(xs, th)
        damp = lm[:, None, None] * (eye + np.abs(np.diagonal(h, axis1=1, axis2=2))[:, :, None] * eye)
        step = np.linalg.solve(-h + damp, g[:, :, None])[:, :, 0]
        cand = th + step
        # a trial step far off (huge or tiny scale) overflows; it is rejected below as non-finite
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            ll_new, _, _ = _loglik_grad_hess(xs, cand, need=False)
        better = np.isfinite(ll_new) & (ll_new >= ll)
        theta[idx[better]] = cand[better]
        lam[idx] = np.where(better, np.maximum(lm * 0.1, 1e-12), lm * 10.0)
        # Converged: the Newton step is negligible (accepted or not, it cannot move the fit), or
        # damping has grown so large that no step improves the likelihood any more.
        done = (np.abs(step).max(axis=1) < tol) | (lam[idx] > 1e10)
        idx = idx[~done]
        if idx.size == 0:
            break
    out = theta.copy()
    out[:, 2] = np.exp(theta[:, 2])
    return out


def estimate_exposure(canary_log_ppl: float, sample_log_ppl: np.ndarray, *,
                      n_candidates: int | None = None, n_bootstrap: int = 100, seed: int = 0,
                      confidence: float = 0.95) -> ExposureEstimate:
    """Exposure from a random sample of candidates by the skew-normal extrapolation.

    Args:
      canary_log_ppl: the canary's log-perplexity.
      sample_log_ppl: [S] log-perplexities of candidates drawn uniformly at random from R.
      n_candidates: |R| (caps the estimate at log2 |R|); None leaves it uncapped.
      n_bootstrap: bootstrap refits for the interval (0: interval equals the point).
      seed: bootstrap seed.
      confidence: two-sided interval level.

    Returns:
      :class:`ExposureEstimate` with method "skewnorm".
    """
    sample = np.asarray(sample_log_ppl, dtype=np.float64).ravel()
    if sample.size < 20:
        raise ConfigError(f"the skew-normal exposure estimate needs at least 20 sampled candidates, got {sample.size}")
    if not np.isfinite(sample).all() or not math.isfinite(canary_log_ppl):
        raise ConfigError("log-perplexities must be finite")
    # scipy's fit gives the starting point; the Newton polish makes the point estimate and the
    # bootstrap refits one and the same estimator (the likelihood maximum).
    a0, loc0, scale0 = stats.skewnorm.fit(sample)
    fit = tuple(float(v) for v in fit_skewnorm(sample[None, :], (a0, loc0, scale0))[0])
    point = float(extrapolated_exposure(canary_log_ppl, *fit, n_candidates=n_candidates))
    lo = hi = point
    if n_bootstrap > 0:
        rng = np.random.default_rng(seed)
        reps = sample[rng.integers(0, sample.size, size=(n_bootstrap, sample.size))]
        params = fit_skewnorm(reps, fit)
        boot = extrapolated_exposure(canary_log_ppl, params[:, 0], params[:, 1], params[:, 2],
                                     n_candidates=n_candidates)
        lo, hi = (float(x) for x in np.percentile(boot, [50 * (1 - confidence), 50 * (1 + confidence)]))
    return ExposureEstimate(point, (lo, hi), "skewnorm", n_candidates, int(sample.size), confidence,
                            fit={"a": fit[0], "loc": fit[1], "scale": fit[2]})


def exact_exposure_estimate(canary_log_ppl: float, candidate_log_ppl: np.ndarray,
                            n_candidates: int | None = None) -> ExposureEstimate:
    """:func:`exact_exposure` for one canary wrapped as an :class:`ExposureEstimate` (zero-width CI)."""
    exp, rank = exact_exposure(np.asarray([canary_log_ppl]), candidate_log_ppl, n_candidates)
    n = int(np.asarray(candidate_log_ppl).shape[-1] if n_candidates is None else n_candidates)
    e = float(exp[0])
    return ExposureEstimate(e, (e, e), "exact", n, n, 1.0, rank=int(rank[0]))


def summarise_by_repetition(repetitions: Sequence[int] | np.ndarray,
                            values: dict[str, np.ndarray]) -> list[dict]:
    """Mean of per-canary values grouped by repetition count.

    Args:
      repetitions: int [C] how many times each canary was planted.
      values: name -> float [C] (e.g. exposure, extracted as 0/1, exposure / log2 |R|).

    Returns:
      One dict per distinct repetition count (ascending): {"repetitions", "n", <name>_mean ...}.
    """
    reps = np.asarray(repetitions, dtype=np.int64)
    keys, inverse, counts = np.unique(reps, return_inverse=True, return_counts=True)
    out = [{"repetitions": int(k), "n": int(c)} for k, c in zip(keys, counts, strict=True)]
    for name, v in values.items():
        v = np.asarray(v, dtype=np.float64)
        if v.shape != reps.shape:
            raise ConfigError(f"{name}: {v.shape[0] if v.ndim else 0} values for {reps.size} canaries")
        means = np.bincount(inverse, weights=v, minlength=keys.size) / counts
        for row, m in zip(out, means, strict=True):
            row[f"{name}_mean"] = float(m)
    return out
