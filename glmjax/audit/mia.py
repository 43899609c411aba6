"""Membership-inference attacks on per-sequence scores. Every attack returns a float64 score
where HIGHER means "more likely a member", vectorised over all rows (no Python loop per row).

Inputs are ScoreStore columns (``sum_logp``, ``mean_logp``, ``mink_<p>``, ``minkpp_<p>``,
``n_nucleotides``; see SCORESTORE contract) of the target model and, where an attack needs them,
of reference or shadow models scored in the same mode.

- loss: ``mean_logp`` (= minus the mean token loss; Yeom et al. 2018).
- zlib ratio (Carlini et al. 2021, adapted to code lengths): model code length over zlib code
  length, both in bits for the whole sequence: score = sum_logp / ln 2 / (8 * len(zlib(seq))).
- k-mer entropy ratio (DNA): zlib barely compresses 4-letter text, so the sequence's own
  complexity is measured by the Shannon entropy H_k (bits) of its empirical k-mer distribution
  (windows with N skipped); its empirical code length is C = n_nucleotides * H_k / k bits
  (floored at 1 bit for homopolymers) and score = sum_logp / ln 2 / C. Low-complexity sequences
  (repeats, microsatellites) that every model finds easy are thereby not mistaken for members.
- Min-K% (Shi et al. 2024) and Min-K%++ (Zhang et al. 2024): the ``mink_<p>`` / ``minkpp_<p>``
  columns; :func:`min_k_from_tokens` recomputes them from per-token values (k = max(1,
  floor(p/100 * n_tokens)) lowest tokens).
- reference ratio (Carlini et al. 2021; Mireshghallah et al. 2022): target logp - reference logp.
- neighbourhood (Mattern et al. 2023): logp(x) - mean logp over neighbours of x; for DNA the
  neighbours are random point mutants (:func:`point_mutation_neighbours`).
- LiRA (Carlini et al. 2022, "Membership inference attacks from first principles"): Gaussian
  fits of the logit-scaled confidence over shadow models that did (IN) or did not (OUT) train on
  each example; online = log N(x; mu_in, s_in) - log N(x; mu_out, s_out), offline = the one-sided
  statistic (x - mu_out) / s_out (monotone in their Lambda = Phi((x - mu_out) / s_out)); with
  per-example or fixed (global, pooled) variances.
- RMIA (Zarifzadeh et al. 2024, "Low-cost high-power membership inference attacks"): score(x) =
  fraction of population samples z with LR(x, z) = [p(x|θ)/p(x)] / [p(z|θ)/p(z)] >= γ, where
  p(.) averages the reference models (offline: p(x) = ((1 + a) p_OUT(x) + (1 - a)) / 2).
"""

from __future__ import annotations

import math
import os
import warnings
import zlib
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import special

from glmjax.errors import ConfigError

LN2 = math.log(2.0)


def _f64(x, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if not np.isfinite(a).all():
        raise ConfigError(f"{name}: {int((~np.isfinite(a)).sum())} values are NaN or infinite")
    return a


# ------------------------------------------------------------------ single-model attacks


def loss_attack(mean_logp: np.ndarray) -> np.ndarray:
    """Loss attack: the mean token log-probability (higher = lower loss = member), float64 [N]."""
    return _f64(mean_logp, "mean_logp")


def zlib_bits(codes: Sequence[np.ndarray] | np.ndarray, offsets: np.ndarray | None = None,
              workers: int | None = None) -> np.ndarray:
    """zlib code length (level 9) of each sequence's upper-case ACGTN text, in bits.

    Mimir compresses the text as given at zlib's default level (6); glmjax compresses the
    upper-case text (soft-masked bases are read as upper case everywhere) at level 9, the
    smallest code zlib finds: a tighter proxy for the sequence's own complexity.

    Args:
      codes: a list of uint8 code arrays, or one concatenated uint8 array with ``offsets``
        ([N + 1], sequence i is ``codes[offsets[i]:offsets[i+1]]``).
      workers: threads (default: up to 8, one per CPU); zlib releases the GIL while it
        compresses, so chunks of sequences compress in parallel. Results do not depend on it.

    Returns:
      float64 [N]. (zlib has no batch interface: this is one C call per sequence.)
    """
    from concurrent.futures import ThreadPoolExecutor

    letters = np.frombuffer(b"ACGTN", dtype=np.uint8)
    if offsets is None:
        parts = [np.asarray(c, dtype=np.uint8) for c in codes]
        lengths = np.fromiter((p.size for p in parts), dtype=np.int64, count=len(parts))
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        codes = np.concatenate(parts) if parts else np.zeros(0, np.uint8)
    codes = np.asarray(codes, dtype=np.uint8)
    offsets = np.asarray(offsets, dtype=np.int64)
    n = offsets.size - 1
    out = np.empty(n, dtype=np.float64)
    step = 1 << 14  # sequences per chunk: the text of a few chunks at a time, not of the whole set

    def chunk(lo: int) -> None:
        hi = min(lo + step, n)
        base = int(offsets[lo])
        text = letters[codes[base:offsets[hi]]].tobytes()
        cuts = (offsets[lo:hi + 1] - base).tolist()
        out[lo:hi] = [len(zlib.compress(text[a:b], 9)) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]

    starts = range(0, n, step)
    threads = max(1, min(workers or min(os.cpu_count() or 1, 8), len(starts)))
    if threads == 1:
        for lo in starts:
            chunk(lo)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(chunk, starts))
    return 8.0 * out


def zlib_ratio(sum_logp: np.ndarray, zlib_code_bits: np.ndarray) -> np.ndarray:
    """zlib ratio score: sum_logp / ln 2 / zlib bits (= -model bits / zlib bits), float64 [N]."""
    z = _f64(zlib_code_bits, "zlib bits")
    if np.any(z <= 0):
        raise ConfigError("zlib code lengths must be positive")
    return _f64(sum_logp, "sum_logp") / LN2 / z


def kmer_entropy_bits(codes: np.ndarray, offsets: np.ndarray, k: int = 3,
                      max_chunk_nt: int = 32_000_000) -> np.ndarray:
    """Shannon entropy (bits) of each sequence's empirical k-mer distribution.

    Args:
      codes: uint8 [T] concatenated nucleotide codes (A C G T N = 0..4).
      offsets: int [N + 1] sequence boundaries.
      k: k-mer length (1..8); windows containing N are skipped.
      max_chunk_nt: nucleotides processed per chunk (memory bound ~ 20 bytes each + N * 4^k * 8).

    Returns:
      float64 [N]; 0 for sequences with fewer than k valid positions.
    """
    if not 1 <= k <= 8:
        raise ConfigError(f"k-mer length must be in 1..8, got {k}")
    codes = np.asarray(codes, dtype=np.uint8)
    offsets = np.asarray(offsets, dtype=np.int64)
    n = offsets.size - 1
    out = np.zeros(n, dtype=np.float64)
    nk = 4**k
    rows_per_chunk = max(1, 4_000_000 // nk)  # bounds the [rows, 4^k] count matrix
    start = 0
    while start < n:
        # Grow the chunk until it holds max_chunk_nt nucleotides or rows_per_chunk sequences.
        stop = int(np.searchsorted(offsets, offsets[start] + max_chunk_nt, side="right")) - 1
        stop = min(max(stop, start + 1), start + rows_per_chunk, n)
        out[start:stop] = _kmer_entropy_chunk(codes[offsets[start]:offsets[stop]],
                                              offsets[start:stop + 1] - offsets[start], k)
        start = stop
    return out


def _kmer_entropy_chunk(c: np.ndarray, offsets: np.ndarray, k: int) -> np.ndarray:
    """k-mer entropies of the sequences of one chunk (offsets relative to the chunk, [r + 1])."""
    rows = offsets.size - 1
    nk = 4**k
    t = c.size
    m = t - k + 1
    if m <= 0:
        return np.zeros(rows)
    # k-mer code of the window starting at each position (int32: 4^8 * rows fits).
    kmer = np.zeros(m, dtype=np.int32)
    base = np.minimum(c, 3).astype(np.int32)
    for j in range(k):  # k is tiny: a loop over window offsets, not rows
        kmer <<= 2
        kmer |= base[j:j + m]
    # A window is dropped if it holds an N or runs past the end of its sequence.
    n_before = np.zeros(t + 1, dtype=np.int32)
    np.cumsum(c > 3, out=n_before[1:])
    drop = n_before[k:] != n_before[:m]
    # Windows starting in the last k - 1 positions of a sequence. (For a sequence shorter than
    # k - 1 these reach back into the previous one, whose own tail drops them anyway.)
    tail = (offsets[1:, None] - np.arange(1, k, dtype=np.int64)[None, :]).ravel()
    drop[tail[(tail >= 0) & (tail < m)]] = True
    seq = np.repeat(np.arange(rows, dtype=np.int32), np.diff(offsets))[:m]
    key = seq * nk + kmer
    key[drop] = rows * nk  # dropped windows go to one extra bin that is discarded
    counts = np.bincount(key, minlength=rows * nk + 1)[: rows * nk].reshape(rows, nk).astype(np.float64)
    tot = np.maximum(counts.sum(axis=1), 1.0)
    # H = log2 T - sum c log2 c / T; 0 log 0 = 0 and rows without a window give 0.
    clogc = (counts * np.log2(np.maximum(counts, 1.0))).sum(axis=1)
    return np.maximum(np.log2(tot) - clogc / tot, 0.0)


def kmer_entropy_ratio(sum_logp: np.ndarray, n_nucleotides: np.ndarray, kmer_entropy: np.ndarray,
                       k: int = 3) -> np.ndarray:
    """k-mer entropy ratio: sum_logp / ln 2 / max(n_nucleotides * H_k / k, 1), float64 [N]."""
    c = np.maximum(_f64(n_nucleotides, "n_nucleotides") * _f64(kmer_entropy, "k-mer entropy") / k, 1.0)
    return _f64(sum_logp, "sum_logp") / LN2 / c


def min_k_from_tokens(values: np.ndarray, offsets: np.ndarray, percent: float) -> np.ndarray:
    """Mean of the lowest max(1, floor(percent/100 * n)) values of each ragged row.

    Args:
      values: float [T] per-token values (log p for Min-K%, the standardised log p for Min-K%++).
      offsets: int [N + 1] row boundaries.
      percent: p in (0, 100].

    Returns:
      float64 [N] (NaN for empty rows).
    """
    if not 0 < percent <= 100:
        raise ConfigError(f"Min-K% percent must be in (0, 100], got {percent}")
    values = np.asarray(values, dtype=np.float64)
    offsets = np.asarray(offsets, dtype=np.int64)
    lengths = np.diff(offsets)
    n = lengths.size
    seg = np.repeat(np.arange(n), lengths)
    order = np.lexsort((values, seg))  # ascending within each row, rows in order
    rank = np.arange(values.size) - offsets[seg]
    if float(percent).is_integer():  # integer arithmetic, as the scoring kernels do
        k = np.maximum(1, lengths * int(percent) // 100)
    else:
        k = np.maximum(1, np.floor(percent / 100.0 * lengths).astype(np.int64))
    keep = rank < k[seg]
    sums = np.bincount(seg[keep], weights=values[order][keep], minlength=n)
    return np.where(lengths > 0, sums / k, np.nan)


def min_k_plus_plus_from_tokens(token_logp: np.ndarray, token_mu: np.ndarray, token_sigma: np.ndarray,
                                offsets: np.ndarray, percent: float) -> np.ndarray:
    """Min-K%++ from per-token log p, mu and sigma: Min-K% of (log p - mu) / sigma.

    A zero sigma (a one-hot prediction, where log p = mu) standardises to 0.
    """
    lp = np.asarray(token_logp, np.float64)
    mu = np.asarray(token_mu, np.float64)
    sd = np.asarray(token_sigma, np.float64)
    z = np.divide(lp - mu, sd, out=np.zeros_like(lp), where=sd > 0)
    return min_k_from_tokens(z, offsets, percent)


def reference_ratio(target_logp: np.ndarray, reference_logp: np.ndarray) -> np.ndarray:
    """Reference-model attack: target logp - reference logp (same statistic, same mode), [N]."""
    t = _f64(target_logp, "target logp")
    r = _f64(reference_logp, "reference logp")
    if t.shape != r.shape:
        raise ConfigError(f"target {t.shape} and reference {r.shape} scores differ in length")
    return t - r


def neighbourhood_score(logp: np.ndarray, neighbour_logp: np.ndarray) -> np.ndarray:
    """Neighbourhood attack: logp(x) - mean over x's neighbours of logp, float64 [N].

    Args:
      logp: [N] the sequences' statistic (e.g. sum_logp). neighbour_logp: [N, n] the neighbours'.
    """
    x = _f64(logp, "logp")
    nb = _f64(neighbour_logp, "neighbour logp")
    if nb.ndim != 2 or nb.shape[0] != x.shape[0] or nb.shape[1] == 0:
        raise ConfigError(f"neighbour scores must be [N={x.shape[0]}, n>=1], got {nb.shape}")
    return x - nb.mean(axis=1)


def point_mutation_neighbours(codes: np.ndarray, n: int, rate: float, seed: int) -> np.ndarray:
    """Random point-mutation neighbours of nucleotide sequences.

    Each neighbour changes exactly m = max(1, round(rate * L)) positions of its sequence, chosen
    uniformly without replacement among the A/C/G/T positions (N positions stay N), each to one of
    the three other bases uniformly — so a neighbour always differs from its sequence (when it has
    any A/C/G/T) and lies at Hamming distance m.

    Args:
      codes: uint8 [L] or [B, L] (equal-length batch) codes A C G T N = 0..4.
      n: neighbours per sequence.
      rate: fraction of positions mutated (0 < rate <= 1).
      seed: RNG seed.

    Returns:
      uint8 [n, L] for one sequence, [B, n, L] for a batch.
    """
    codes = np.asarray(codes, dtype=np.uint8)
    single = codes.ndim == 1
    x = codes[None] if single else codes
    if x.ndim != 2 or n < 1 or not 0 < rate <= 1:
        raise ConfigError("point_mutation_neighbours needs codes [L] or [B, L], n >= 1 and 0 < rate <= 1")
    b, length = x.shape
    m = max(1, int(round(rate * length)))
    rng = np.random.default_rng(seed)
    out = np.repeat(x[:, None, :], n, axis=1)  # [B, n, L]
    keys = rng.random((b, n, length))
    keys[np.broadcast_to((x > 3)[:, None, :], keys.shape)] = 2.0  # N positions sort last
    pos = np.argpartition(keys, m - 1, axis=-1)[..., :m] if m < length else np.argsort(keys, axis=-1)
    chosen_keys = np.take_along_axis(keys, pos, axis=-1)
    old = np.take_along_axis(out, pos, axis=-1)
    new = ((old.astype(np.int16) + rng.integers(1, 4, size=pos.shape)) % 4).astype(np.uint8)
    new = np.where(chosen_keys < 2.0, new, old)  # more mutations asked than A/C/G/T positions
    np.put_along_axis(out, pos, new, axis=-1)
    return out[0] if single else out


# ------------------------------------------------------------------ LiRA


SMALLEST_GAP = float(np.nextafter(0.0, 1.0))  # the smallest positive float64 (4.9e-324)
LIRA_VARIANTS = ("online", "offline", "in", "out", "offset")
LIRA_VARIANCES = ("unbiased", "reference")


def logit_confidence(logp: np.ndarray) -> np.ndarray:
    """Exact log-odds of a probability given as log p: log p - log(1 - p), float64.

    ``log(1 - p)`` is computed as ``log(-expm1(log p))``, exact to rounding for every log p < 0, so
    margins up to 744 (log p down to -5e-324) are represented. A log p of exactly 0 (p rounded to 1
    in the model's precision) is read as the smallest representable gap, log p = -4.9e-324, which
    gives the largest finite log-odds, 744.4.
    """
    lp = np.minimum(np.asarray(logp, dtype=np.float64), -SMALLEST_GAP)
    return lp - np.log(-np.expm1(lp))


def _shadow_moments(shadow: np.ndarray, inclusion: np.ndarray, chunk: int, logit: bool, median: bool):
    """Per-example counts, means, medians (when asked) and sums of squared deviations from the
    mean of the IN and OUT shadow scores (logit-scaled first when ``logit``), over chunks of
    examples. NaN shadow scores are left out, as if that shadow model had not scored the example."""
    m, n = shadow.shape
    keys = ["n_in", "n_out", "mu_in", "mu_out", "ss_in", "ss_out"] + (["med_in", "med_out"] if median else [])
    out = {k: np.empty(n) for k in keys}
    for lo in range(0, n, chunk):
        hi = min(lo + chunk, n)
        s = np.asarray(shadow[:, lo:hi], dtype=np.float64)
        if logit:
            s = logit_confidence(s)
        inc = np.asarray(inclusion[:, lo:hi], dtype=bool)
        seen = ~np.isnan(s)
        s0 = np.where(seen, s, 0.0)
        for side, w in (("in", inc & seen), ("out", ~inc & seen)):
            cnt = w.sum(axis=0).astype(np.float64)
            mu = np.where(cnt > 0, (s0 * w).sum(axis=0) / np.maximum(cnt, 1), np.nan)
            out[f"n_{side}"][lo:hi] = cnt
            out[f"mu_{side}"][lo:hi] = mu
            out[f"ss_{side}"][lo:hi] = (((s0 - np.nan_to_num(mu)) ** 2) * w).sum(axis=0)
            if median:
                with np.errstate(all="ignore"), warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: NaN, filled later
                    out[f"med_{side}"][lo:hi] = np.nanmedian(np.where(w, s, np.nan), axis=0)
    return out


def _fixed_sd_reference(shadow, inclusion, centre_in, centre_out, chunk: int, logit: bool) -> tuple[float, float]:
    """TF Privacy's fixed σ: the population standard deviation (ddof 0) of every shadow score's
    deviation from its example's centre, pooled over examples, per side."""
    acc = np.zeros((2, 3))  # side x (count, sum d, sum d^2)
    for lo in range(0, shadow.shape[1], chunk):
        hi = min(lo + chunk, shadow.shape[1])
        s = np.asarray(shadow[:, lo:hi], dtype=np.float64)
        if logit:
            s = logit_confidence(s)
        inc = np.asarray(inclusion[:, lo:hi], dtype=bool)
        seen = ~np.isnan(s)
        for j, (w, c) in enumerate(((inc & seen, centre_in[lo:hi]), (~inc & seen, centre_out[lo:hi]))):
            d = np.where(w, s - c, 0.0)
            acc[j] += (w.sum(), d.sum(), (d * d).sum())
    sds = []
    for cnt, s1, s2 in acc:
        sds.append(math.sqrt(max(s2 / cnt - (s1 / cnt) ** 2, 0.0)) if cnt else math.nan)
    return sds[0], sds[1]


def _column_mean_fill(a: np.ndarray) -> np.ndarray:
    """NaN entries replaced by the mean of the others (TF Privacy's fill for examples that lack a side)."""
    bad = np.isnan(a)
    if bad.all():
        return a
    return np.where(bad, a[~bad].mean(), a)


def lira(target: np.ndarray, shadow: np.ndarray, inclusion: np.ndarray, *, online: bool = True,
         variant: str | None = None, fixed_variance: bool = False, logit: bool = True,
         variance: str = "unbiased", centre: str = "mean", offset_side: str = "both",
         chunk: int = 1_000_000, min_std: float = 1e-6) -> np.ndarray:
    """LiRA membership scores (higher = member).

    Args:
      target: float [N] the target model's per-example statistic (a log-probability such as
        ``mean_logp`` when ``logit``, else any confidence statistic, higher = more confident).
      shadow: float [M, N] the same statistic under M shadow models; NaN where a shadow model
        did not score an example (left out of that example's fit).
      inclusion: bool [M, N], True where shadow model m trained on example n.
      online: shorthand for ``variant="online"`` (True) or ``"offline"`` (False).
      variant: ``online``: log N(x; μ_in, σ_in) - log N(x; μ_out, σ_out); ``offline``: the
        one-sided (x - μ_out) / σ_out of Carlini et al.; ``in``: log N(x; μ_in, σ_in); ``out``:
        -log N(x; μ_out, σ_out) (TF Privacy's ``option="out"``, two-sided); ``offset``:
        x - offset, the offset μ_in, μ_out or their average (``offset_side`` in, out, both).
      fixed_variance: one variance per side for all examples instead of per-example ones.
      logit: apply :func:`logit_confidence` to target and shadow statistics first.
      variance: ``unbiased`` (default): per-example σ with ddof = 1, an example with fewer than 2
        scores on a side takes the pooled σ = sqrt(Σ squared deviations / Σ (n - 1)), every σ
        floored at ``min_std``; an example without IN (or OUT) scores takes the other side's
        centre shifted by the mean IN - OUT difference of the examples that have both.
        ``reference``: TF Privacy's ``compute_score_lira`` conventions: ``np.nanstd`` (ddof = 0)
        per example, the fixed σ the ddof-0 deviation over all examples, σ + 1e-30, and a
        missing centre or σ replaced by the mean over the examples that have one.
      centre: ``mean`` or ``median`` of each example's IN / OUT scores (μ).
      offset_side: for ``variant="offset"``.
      chunk: examples per chunk (bounds memory to ~ M * chunk * 24 bytes).
      min_std: floor on standard deviations (``unbiased`` only).

    Returns:
      float64 [N].

    Raises:
      ConfigError: shapes disagree, a target score is NaN, or a side needed by the variant has
        no score at all.
    """
    variant = variant or ("online" if online else "offline")
    if variant not in LIRA_VARIANTS:
        raise ConfigError(f"unknown LiRA variant {variant!r}; choose one of {', '.join(LIRA_VARIANTS)}")
    if variance not in LIRA_VARIANCES:
        raise ConfigError(f"unknown LiRA variance convention {variance!r}; choose unbiased or reference")
    if centre not in ("mean", "median"):
        raise ConfigError(f"unknown LiRA centre {centre!r}; choose mean or median")
    if offset_side not in ("both", "in", "out"):
        raise ConfigError(f"unknown LiRA offset side {offset_side!r}; choose both, in or out")
    x = _f64(target, "target scores")
    shadow = np.asarray(shadow)
    inclusion = np.asarray(inclusion, dtype=bool)
    if shadow.ndim != 2 or shadow.shape[1] != x.size or inclusion.shape != shadow.shape:
        raise ConfigError(f"shadow scores must be [M, N={x.size}] with a bool inclusion matrix of the "
                          f"same shape; got {shadow.shape} and {inclusion.shape}")
    if shadow.shape[0] < 1:
        raise ConfigError("LiRA needs at least one shadow model")
    if logit:
        x = logit_confidence(x)
    need_in = variant in ("online", "in") or (variant == "offset" and offset_side != "out")
    need_out = variant in ("online", "offline", "out") or (variant == "offset" and offset_side != "in")
    mom = _shadow_moments(shadow, inclusion, chunk, logit, centre == "median")
    n_in, n_out = mom["n_in"], mom["n_out"]
    c_in, c_out = (mom["med_in"], mom["med_out"]) if centre == "median" else (mom["mu_in"], mom["mu_out"])
    for side, cnt, needed in (("IN", n_in, need_in), ("OUT", n_out, need_out)):
        if needed and not cnt.any():
            raise ConfigError(f"LiRA ({variant}) needs {side} shadow scores, and no example has one")

    if variance == "reference":
        c_in, c_out = _column_mean_fill(c_in), _column_mean_fill(c_out)
        if fixed_variance:
            f_in, f_out = _fixed_sd_reference(shadow, inclusion, c_in, c_out, chunk, logit)
            sd_in, sd_out = np.full_like(x, f_in), np.full_like(x, f_out)
        else:
            def nanstd(ss, cnt):
                return _column_mean_fill(np.where(cnt > 0, np.sqrt(ss / np.maximum(cnt, 1)), np.nan))

            sd_in, sd_out = nanstd(mom["ss_in"], n_in), nanstd(mom["ss_out"], n_out)
        sd_in, sd_out = sd_in + 1e-30, sd_out + 1e-30
    else:
        missing = (n_in == 0) | (n_out == 0)
        if need_in and (n_in == 0).any() or need_out and (n_out == 0).any():
            both = ~missing
            if not both.any():
                raise ConfigError("LiRA needs examples with both IN and OUT shadow scores to fill in "
                                  f"{int(missing.sum())} examples that lack one side")
            shift = float((c_in[both] - c_out[both]).mean())
            c_in, c_out = (np.where(n_in > 0, c_in, c_out + shift), np.where(n_out > 0, c_out, c_in - shift))

        def unbiased(ss, cnt, side):
            dof = np.maximum(cnt - 1, 0).sum()
            if dof <= 0:
                raise ConfigError(f"LiRA ({variant}) needs at least 2 {side} shadow scores for some example "
                                  "to estimate a variance")
            pooled = max(math.sqrt(ss.sum() / dof), min_std)
            sd = np.full_like(x, pooled) if fixed_variance else np.where(
                cnt >= 2, np.sqrt(ss / np.maximum(cnt - 1, 1)), pooled)
            return np.maximum(sd, min_std)

        needs_sd = variant != "offset"
        sd_in = unbiased(mom["ss_in"], n_in, "IN") if needs_sd and need_in else None
        sd_out = unbiased(mom["ss_out"], n_out, "OUT") if needs_sd and need_out else None
    if variant == "online":
        return _norm_logpdf(x, c_in, sd_in) - _norm_logpdf(x, c_out, sd_out)
    if variant == "offline":
        return (x - c_out) / sd_out
    if variant == "in":
        return _norm_logpdf(x, c_in, sd_in)
    if variant == "out":
        return -_norm_logpdf(x, c_out, sd_out)
    offset = {"in": c_in, "out": c_out, "both": None}[offset_side]
    return x - ((c_in + c_out) / 2 if offset is None else offset)


def _norm_logpdf(x: np.ndarray, mu: np.ndarray, sd: np.ndarray) -> np.ndarray:
    return -0.5 * ((x - mu) / sd) ** 2 - np.log(sd) - 0.5 * math.log(2 * math.pi)


# ------------------------------------------------------------------ RMIA


def _log_mean_exp(a: np.ndarray, axis: int = 0) -> np.ndarray:
    return special.logsumexp(a, axis=axis) - math.log(a.shape[axis])


def rmia_ratio(target_logp: np.ndarray, reference_logp: np.ndarray, offline_a: float | None = None,
               trim: float = 0.0, reference_in: np.ndarray | None = None) -> np.ndarray:
    """log [p(x|θ) / p(x)] with p(x) the reference models' average probability.

    Args:
      target_logp: [N] log p(x|θ) (a log-probability statistic, e.g. mean_logp).
      reference_logp: [R, N] the same under R reference models.
      offline_a: None for online references (IN and OUT: p(x) = mean); with OUT-only
        references, the offline approximation p(x) = ((1 + a) p_OUT(x) + (1 - a)) / 2, 0 <= a <= 1.
      trim: ``proportiontocut`` of a trimmed mean over the reference models (as
        ``scipy.stats.trim_mean``: int(trim * R) lowest and as many highest probabilities of each
        example are left out), 0 <= trim < 0.5; 0 is the plain mean.
      reference_in: bool [1, N], with a single reference model and ``offline_a``: True where the
        reference model trained on x. Its IN probability is mapped back to an OUT one by
        inverting p_IN = a p_OUT + 1 - a, p_OUT = (p_IN + a - 1) / a (ML Privacy Meter's
        single-reference rule), clipped to [4.9e-324, 1] so p(x) stays a probability.

    Returns:
      float64 [N].
    """
    t = _f64(target_logp, "target logp")
    ref = _f64(reference_logp, "reference logp")
    if ref.ndim != 2 or ref.shape[1] != t.size or ref.shape[0] < 1:
        raise ConfigError(f"reference scores must be [R>=1, N={t.size}], got {ref.shape}")
    if np.any(t > 0) or np.any(ref > 0):
        raise ConfigError("RMIA needs log-probabilities (<= 0); pass e.g. mean_logp, not a loss")
    if not 0.0 <= trim < 0.5:
        raise ConfigError(f"RMIA trim (proportiontocut) must be in [0, 0.5), got {trim}")
    if offline_a is not None and not 0.0 <= offline_a <= 1.0:
        raise ConfigError(f"RMIA offline parameter a must be in [0, 1], got {offline_a}")
    if reference_in is not None:
        if not offline_a or ref.shape[0] != 1:
            raise ConfigError("the single-reference IN -> OUT inversion needs exactly one reference model "
                              "and an offline parameter a > 0")
        inn = np.asarray(reference_in, bool).reshape(ref.shape)
        p_out = np.clip((np.exp(ref) + offline_a - 1.0) / offline_a, SMALLEST_GAP, 1.0)
        ref = np.where(inn, np.log(p_out), ref)
    cut = int(trim * ref.shape[0])
    if cut:
        ref = np.sort(ref, axis=0)[cut:ref.shape[0] - cut]
    lp = _log_mean_exp(ref, axis=0)
    if offline_a is not None:
        lp = math.log(0.5) + (np.logaddexp(math.log1p(offline_a) + lp, math.log(1.0 - offline_a))
                              if offline_a < 1.0 else math.log(2.0) + lp)
    return t - lp


def rmia(target_x: np.ndarray, reference_x: np.ndarray, target_z: np.ndarray, reference_z: np.ndarray, *,
         gamma: float = 1.0, offline_a: float | None = None, trim: float = 0.0,
         reference_in_x: np.ndarray | None = None, reference_in_z: np.ndarray | None = None) -> np.ndarray:
    """RMIA scores: the fraction of population samples z with LR(x, z) >= gamma (higher = member).

    LR(x, z) = [p(x|θ)/p(x)] / [p(z|θ)/p(z)] factorises, so log LR(x, z) = r(x) - r(z) with
    r = :func:`rmia_ratio`. Counting ``r(z) <= r(x) - log gamma`` over all z is then a binary search
    in the sorted r(z): the exact result of all |X| x |Z| pairwise comparisons in
    O((|X| + |Z|) log |Z|) time and O(|X| + |Z|) memory.

    Args:
      target_x: [N] log p(x|θ) of the audited sequences; reference_x: [R, N].
      target_z: [Z] log p(z|θ) of population (non-member) samples; reference_z: [R, Z].
      gamma: likelihood-ratio threshold (> 0).
      offline_a, trim: see :func:`rmia_ratio`.
      reference_in_x, reference_in_z: bool [1, N] / [1, Z], the single reference model's
        inclusion of x and z (see ``reference_in`` of :func:`rmia_ratio`).

    Returns:
      float64 [N] in [0, 1].
    """
    if not gamma > 0:
        raise ConfigError(f"RMIA gamma must be > 0, got {gamma}")
    rx = rmia_ratio(target_x, reference_x, offline_a, trim, reference_in_x)
    rz = np.sort(rmia_ratio(target_z, reference_z, offline_a, trim, reference_in_z))
    if rz.size == 0:
        raise ConfigError("RMIA needs population samples z")
    return np.searchsorted(rz, rx - math.log(gamma), side="right") / rz.size


# ------------------------------------------------------------------ all attacks at once


def attack_scores(target: Mapping[str, np.ndarray], *, reference: Mapping[str, np.ndarray] | None = None,
                  zlib_code_bits: np.ndarray | None = None, kmer_entropy: np.ndarray | None = None,
                  kmer_k: int = 3, neighbour_sum_logp: np.ndarray | None = None,
                  mink_percents: Sequence[int] = (20,),
                  lira_inputs: tuple[np.ndarray, np.ndarray] | None = None,
                  rmia_inputs: dict | None = None, lira_options: Mapping | None = None) -> dict[str, np.ndarray]:
    """Every attack whose inputs are available, by name (higher = member).

    Args:
      target: ScoreStore columns of the target model (``sum_logp``, ``mean_logp``,
        ``n_nucleotides`` and ``mink_<p>`` / ``minkpp_<p>``); a ScoreStore works too (``.column``).
      reference: the same columns under a reference model (reference-ratio attack).
      zlib_code_bits: [N] from :func:`zlib_bits`; kmer_entropy: [N] from :func:`kmer_entropy_bits`.
      neighbour_sum_logp: [N, n] target sum_logp of each row's neighbours.
      mink_percents: which Min-K% / Min-K%++ columns to use.
      lira_inputs: (shadow mean_logp [M, N], inclusion [M, N]) for online and offline LiRA
        (fixed variance below 64 shadow models, per-example variance from 64 on).
      lira_options: more keyword arguments of :func:`lira` (``variance``, ``centre``).
      rmia_inputs: {"reference_x": [R, N], "target_z": [Z], "reference_z": [R, Z], "gamma", "offline_a"}
        over ``mean_logp``.

    Returns:
      attack name -> float64 [N].
    """
    col = _columns(target)
    out = {"loss": loss_attack(col("mean_logp"))}
    if zlib_code_bits is not None:
        out["zlib"] = zlib_ratio(col("sum_logp"), zlib_code_bits)
    if kmer_entropy is not None:
        out[f"kmer{kmer_k}_entropy"] = kmer_entropy_ratio(col("sum_logp"), col("n_nucleotides"), kmer_entropy, kmer_k)
    for p in mink_percents:
        out[f"mink_{p}"] = _f64(col(f"mink_{p}"), f"mink_{p}")
        out[f"minkpp_{p}"] = _f64(col(f"minkpp_{p}"), f"minkpp_{p}")
    if reference is not None:
        out["reference"] = reference_ratio(col("mean_logp"), _columns(reference)("mean_logp"))
    if neighbour_sum_logp is not None:
        out["neighbourhood"] = neighbourhood_score(col("sum_logp"), neighbour_sum_logp)
    if lira_inputs is not None:
        shadow, inc = lira_inputs
        # Carlini et al. recommend one global variance when there are few shadow models.
        fixed = np.shape(shadow)[0] < 64
        kw = dict(lira_options or {})
        out["lira_online"] = lira(col("mean_logp"), shadow, inc, online=True, fixed_variance=fixed, **kw)
        out["lira_offline"] = lira(col("mean_logp"), shadow, inc, online=False, fixed_variance=fixed, **kw)
    if rmia_inputs is not None:
        r = dict(rmia_inputs)
        out["rmia"] = rmia(col("mean_logp"), r.pop("reference_x"), r.pop("target_z"), r.pop("reference_z"), **r)
    return out


def _columns(src):
    """A column getter over a mapping or an object with ``.column(name)`` (a ScoreStore)."""
    if hasattr(src, "column"):
        return lambda name: np.asarray(src.column(name))
    return lambda name: np.asarray(src[name])
