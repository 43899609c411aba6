"""Individual-level membership inference on cohort haplotype windows.

A cohort store (``glmjax data import-vcf``) holds the windows of both haplotypes of every
individual, with ``group`` = the individual. Training data is chosen by individual
(:func:`split_individuals`: ``glmjax.data.splits`` with ``by="group"``), so the question an auditor asks
is "was this *person* in the training set?", not "was this window?".

Aggregation (:func:`aggregate_by_individual`): every attack's per-window scores (higher = member)
become per-individual scores, vectorised with ``np.bincount`` / ``np.maximum.reduceat``:

* ``sum``: the sum over the individual's windows. When window scores are log-likelihood ratios
  (reference ratio, online LiRA, ...) and windows are treated as independent, this is the
  individual's log-likelihood ratio — the most powerful test for a per-window shift;
* ``mean``: the mean (insensitive to how many windows an individual has);
* ``max``: the most member-like window (catches one memorized region);
* ``variant``: the mean over the windows that carry at least one of the individual's non-reference
  alleles (``/cohort/alt_alleles`` > 0): only those windows can tell individuals apart, since
  reference-identical windows are shared by the whole cohort. An individual without such windows
  falls back to its ``mean`` (counted as ``variant_fallback``).

:func:`evaluate_cohort` reports, for every attack, window-level metrics (each window labelled by
its individual's membership) alongside individual-level metrics for every aggregate, all with
stratified bootstrap intervals (:func:`glmjax.audit.metrics.evaluate_attack`). The window-level
bootstrap resamples windows as if independent; windows of one individual share most of their
sequence with everybody else's and their scores are correlated, so the individual-level intervals
are the honest ones for statements about people.

Variant-aware neighbourhood attack (:func:`allele_resampling_neighbours`): the neighbours of a
haplotype window are the same window with its alleles at the resamplable variant sites (SNVs no
other record touches, ``/cohort/row_sites``) drawn again, independently per site, from the
cohort's allele frequencies. They are plausible haplotypes of *other* people of the cohort at that
locus, unlike random point mutants, so a model that merely knows the population scores the window
and its neighbours alike while a model that memorized this person prefers the window itself.
Their scores feed :func:`glmjax.audit.mia.neighbourhood_score`. A window without resamplable
sites has only itself as neighbour (score 0).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from glmjax.audit.metrics import AttackMetrics, evaluate_attack
from glmjax.audit.mia import neighbourhood_score
from glmjax.data.vcf import CohortData
from glmjax.errors import ConfigError

AGGREGATES = ("sum", "mean", "max", "variant")


def individual_index(groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(individual names [G] sorted, index of each row's individual int64 [N]) from the group column.

    Raises:
      ConfigError: rows without a group (not a cohort store).
    """
    g = np.asarray(groups, dtype=object)
    if g.size and (g == "").any():
        raise ConfigError(f"{int((g == '').sum()):,} rows have no individual (empty group); individual-level "
                          "audits need a cohort store from `glmjax data import-vcf`")
    names, inverse = np.unique(g.astype(str), return_inverse=True)
    return names, inverse.astype(np.int64)


def individual_labels(member: np.ndarray, inverse: np.ndarray, n_individuals: int) -> np.ndarray:
    """bool [G]: membership of each individual; every row of an individual must agree.

    Raises:
      ConfigError: an individual has both member and non-member rows (a row-wise split).
    """
    member = np.asarray(member, dtype=bool)
    n_rows = np.bincount(inverse, minlength=n_individuals)
    n_mem = np.bincount(inverse, weights=member, minlength=n_individuals)
    mixed = (n_mem > 0) & (n_mem < n_rows)
    if mixed.any():
        raise ConfigError(f"{int(mixed.sum())} individuals have both member and non-member windows; split the "
                          "store by individual (`glmjax data split --by group`)")
    return n_mem > 0


def aggregate_by_individual(scores: np.ndarray, inverse: np.ndarray, n_individuals: int,
                            alt_alleles: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per-individual aggregates of per-window scores (see the module docstring).

    Args:
      scores: float [N] window scores (higher = member).
      inverse: int [N] individual index of each window (:func:`individual_index`).
      n_individuals: G.
      alt_alleles: int [N] non-reference alleles per window (``/cohort/alt_alleles``); enables
        ``variant``.

    Returns:
      name -> float64 [G] for ``sum``, ``mean``, ``max`` (and ``variant``), plus ``windows`` and
      ``variant_windows`` (counts) and ``variant_fallback`` (bool: no variant window).
    """
    x = np.asarray(scores, dtype=np.float64)
    inv = np.asarray(inverse, dtype=np.int64)
    if x.shape != inv.shape or x.ndim != 1:
        raise ConfigError(f"scores {x.shape} and individual indices {inv.shape} must be 1-D of one length")
    if not np.isfinite(x).all():
        raise ConfigError(f"{int((~np.isfinite(x)).sum())} window scores are NaN or infinite")
    n = np.bincount(inv, minlength=n_individuals).astype(np.float64)
    if (n == 0).any():
        raise ConfigError(f"{int((n == 0).sum())} individuals have no window")
    s = np.bincount(inv, weights=x, minlength=n_individuals)
    order = np.argsort(inv, kind="stable")
    starts = np.concatenate([[0], np.cumsum(n.astype(np.int64))[:-1]])
    out = {"sum": s, "mean": s / n, "max": np.maximum.reduceat(x[order], starts), "windows": n}
    if alt_alleles is not None:
        v = np.asarray(alt_alleles) > 0
        if v.shape != x.shape:
            raise ConfigError(f"alt_alleles {v.shape} and scores {x.shape} differ in length")
        nv = np.bincount(inv, weights=v, minlength=n_individuals)
        sv = np.bincount(inv, weights=x * v, minlength=n_individuals)
        out["variant"] = np.where(nv > 0, sv / np.maximum(nv, 1), out["mean"])
        out["variant_windows"] = nv
        out["variant_fallback"] = nv == 0
    return out


@dataclass
class CohortAttackResult:
    """Window-level and individual-level metrics of one attack."""

    window: AttackMetrics
    individual: dict[str, AttackMetrics]
    n_windows: int
    n_individuals: int
    variant_fallback: int = 0
    individual_scores: dict[str, np.ndarray] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: ``window`` and ``individual.<aggregate>`` metric entries."""
        return {"n_windows": self.n_windows, "n_individuals": self.n_individuals,
                "variant_fallback": self.variant_fallback, "window": self.window.to_dict(),
                "individual": {k: m.to_dict() for k, m in self.individual.items()}}


def evaluate_cohort(window_scores: Mapping[str, np.ndarray], member: np.ndarray, groups: np.ndarray,
                    alt_alleles: np.ndarray | None = None, *, n_bootstrap: int = 200, seed: int = 0,
                    confidence: float = 0.95) -> dict[str, CohortAttackResult]:
    """Window- and individual-level metrics of every attack.

    Args:
      window_scores: attack name -> float [N] per-window scores (higher = member), e.g. the output
        of :func:`glmjax.audit.mia.attack_scores`.
      member: bool [N] row membership (a split by individual).
      groups: [N] the individual of each row (the store's ``group`` column).
      alt_alleles: int [N] ``/cohort/alt_alleles`` (enables the ``variant`` aggregate).
      n_bootstrap, seed, confidence: bootstrap of :func:`glmjax.audit.metrics.evaluate_attack`.

    Returns:
      attack name -> :class:`CohortAttackResult`.
    """
    names, inv = individual_index(groups)
    member = np.asarray(member, dtype=bool)
    if member.shape != inv.shape:
        raise ConfigError(f"membership {member.shape} and groups {inv.shape} differ in length")
    labels = individual_labels(member, inv, names.size)
    out = {}
    for attack, scores in window_scores.items():
        agg = aggregate_by_individual(scores, inv, names.size, alt_alleles)
        win = evaluate_attack(member, np.asarray(scores, np.float64), n_bootstrap=n_bootstrap, seed=seed,
                              confidence=confidence)
        ind = {k: evaluate_attack(labels, agg[k], n_bootstrap=n_bootstrap, seed=seed, confidence=confidence)
               for k in AGGREGATES if k in agg}
        out[attack] = CohortAttackResult(
            window=win, individual=ind, n_windows=int(inv.size), n_individuals=int(names.size),
            variant_fallback=int(agg["variant_fallback"].sum()) if "variant_fallback" in agg else 0,
            individual_scores={k: agg[k] for k in AGGREGATES if k in agg})
    return out


def split_individuals(store_path: str | os.PathLike, member_fraction: float, seed: int) -> dict[str, Any]:
    """Seeded member / non-member split of a cohort store by individual, written into the store."""
    from glmjax.data.splits import split_store

    return split_store(store_path, member_fraction, seed, by="group")


@dataclass
class CohortWindows:
    """Per-row arrays of a cohort store needed by the individual-level audit."""

    groups: np.ndarray
    member: np.ndarray | None
    alt_alleles: np.ndarray
    haplotype: np.ndarray


def load_windows(store_path: str | os.PathLike) -> CohortWindows:
    """Groups, membership (None without a split), non-reference allele counts and haplotype of every row."""
    from glmjax.data.store import SequenceStore
    from glmjax.data.vcf import read_cohort

    cohort = read_cohort(store_path)
    with SequenceStore(store_path) as st:
        groups = st.column("group")
        member = st.member_mask() if st.has_split else None
    if cohort.alt_alleles.shape[0] != groups.shape[0]:
        raise ConfigError(f"{store_path}: cohort data has {cohort.alt_alleles.shape[0]} rows but the store has "
                          f"{groups.shape[0]}; was the store rewritten after import?")
    return CohortWindows(groups, member, cohort.alt_alleles, cohort.haplotype)


# ------------------------------------------------------------------ variant-aware neighbours


def allele_resampling_neighbours(codes: np.ndarray, rows: np.ndarray, cohort: CohortData, n: int,
                                 seed: int) -> np.ndarray:
    """Neighbours of haplotype windows with their variant-site alleles redrawn from cohort frequencies.

    Args:
      codes: uint8 [B, L] the windows (store rows ``rows``, equal length).
      rows: int [B] their row indices in the cohort store.
      cohort: :func:`glmjax.data.vcf.read_cohort` of that store.
      n: neighbours per window.
      seed: RNG seed (same seed -> same neighbours).

    Returns:
      uint8 [B, n, L]. At every resamplable site of a window, each neighbour independently takes
      allele k with probability ``allele_freq[k]`` (REF included); sites with no called allele
      keep the window's base; every other position is the window's.

    Raises:
      ConfigError: shapes, or codes that do not carry the recorded alleles at the recorded sites
        (codes from other rows or another store).
    """
    x = np.asarray(codes, dtype=np.uint8)
    rows = np.asarray(rows, dtype=np.int64)
    if x.ndim != 2 or rows.shape != (x.shape[0],) or n < 1:
        raise ConfigError(f"need codes [B, L], rows [B] and n >= 1; got {x.shape}, {rows.shape}, n={n}")
    n_rows = cohort.row_offsets.shape[0] - 1
    if rows.size and (rows.min() < 0 or rows.max() >= n_rows):
        raise ConfigError(f"row indices must be in 0..{n_rows - 1}")
    B, L = x.shape
    lo, hi = cohort.row_offsets[rows], cohort.row_offsets[rows + 1]
    counts = hi - lo
    E = int(counts.sum())
    entry = np.repeat(lo, counts) + (np.arange(E, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts))
    b_of = np.repeat(np.arange(B), counts)
    site = cohort.row_site[entry]
    off = cohort.row_offset[entry].astype(np.int64)
    out = np.repeat(x[:, None, :], n, axis=1)
    if E == 0:
        return out
    if off.max() >= L:
        raise ConfigError(f"a variant site lies at offset {int(off.max())} but the windows have {L} bases; the "
                          "codes do not belong to these rows")
    bases = cohort.allele_bases()[site]  # [E, A]
    own = bases[np.arange(E), cohort.row_allele[entry].astype(np.int64)]
    if not np.array_equal(own, x[b_of, off]):
        raise ConfigError("the windows do not carry the recorded alleles at their variant sites; the codes do "
                          "not belong to these rows of this cohort store")
    freq = cohort.site_frequencies()[site]
    n_all = np.diff(cohort.allele_offsets)[site]
    cum = np.cumsum(freq, axis=1)
    u = np.random.default_rng(seed).random((E, n)) * cum[:, -1:]
    k = np.minimum((u[:, :, None] >= cum[:, None, :]).sum(axis=2), (n_all - 1)[:, None])
    new = np.take_along_axis(bases, k, axis=1)  # [E, n]
    called = cohort.site_called[site] > 0
    new = np.where(called[:, None], new, own[:, None])
    out[b_of[:, None], np.arange(n)[None, :], off[:, None]] = new
    return out


def variant_neighbourhood_attack(score_fn: Callable[[np.ndarray], np.ndarray], codes: np.ndarray,
                                 rows: np.ndarray, cohort: CohortData, n: int, seed: int) -> np.ndarray:
    """Variant-aware neighbourhood scores: logp(window) - mean logp(allele-resampled neighbours).

    Args:
      score_fn: uint8 [M, L] codes -> float [M] a log-probability statistic (e.g. sum log p) under
        the target model.
      codes, rows, cohort, n, seed: see :func:`allele_resampling_neighbours`.

    Returns:
      float64 [B] (higher = member), from :func:`glmjax.audit.mia.neighbourhood_score`.
    """
    x = np.asarray(codes, dtype=np.uint8)
    nb = allele_resampling_neighbours(x, rows, cohort, n, seed)
    B, L = x.shape
    logp = np.asarray(score_fn(x), np.float64)
    nb_logp = np.asarray(score_fn(nb.reshape(B * n, L)), np.float64).reshape(B, n)
    return neighbourhood_score(logp, nb_logp)
