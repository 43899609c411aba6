"""DC-PDD (Zhang et al., EMNLP 2024, "Pretraining data detection for large language models: a
divergence-based calibration method"), for DNA.

DC-PDD calibrates the model's probability of each token by how rare that token is in a reference
corpus: for the first occurrence of each unit ``u`` in a sequence,

    alpha(u) = min(p_model(u) * (-ln f(u)), a)            score = mean over first occurrences

with ``f`` the Laplace-smoothed reference frequency, ``a`` the cap (0.01 in the reference
implementation), and HIGHER = member (mimir returns ``-mean``, its "lower is member" sign).

For a 4-letter alphabet single tokens carry no frequency information, so the unit is the n-gram
of ``n`` consecutive scored tokens (for one-token-per-nucleotide families a k-mer; ``n = 1`` is
the reference method's unigram, natural for k-mer and BPE tokenizers):

* ``p_model(u)`` = exp(sum of the model's log p of the n tokens of ``u`` at that position) — the
  model's probability of the k-mer in its context; units containing a token without a prediction
  (a causal sequence's first token, a PLL position no copy masked) are left out;
* ``f(u) = (c(u) + 1) / (N + A^n)``: ``c`` the count of ``u`` over the reference, ``N`` the
  number of n-grams counted, ``A`` the number of distinct token ids seen in the reference;
* the reference is a public genome (FASTA) or the audit's non-member split. With the non-member
  split, each non-member's own n-grams are left out of the counts it is scored with (exact
  leave-one-out), so non-members are not made to look common by their own contribution;
* a sequence with no eligible unit scores 0 (mimir's mean over nothing would be NaN).

Everything is vectorised over a block of rows (sorts and searches, no Python loop per row).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from glmjax.errors import ConfigError

DEFAULT_CAP = 0.01  # the reference implementation's a


def _flat(rows: Iterable[np.ndarray], dtype) -> tuple[np.ndarray, np.ndarray]:
    rows = [np.asarray(r) for r in rows]
    offs = np.concatenate([[0], np.cumsum([r.shape[0] for r in rows])]).astype(np.int64)
    flat = np.concatenate(rows).astype(dtype) if rows else np.zeros(0, dtype)
    return flat, offs


def gram_ids(tokens: np.ndarray, offsets: np.ndarray, n: int, base: int) -> tuple[np.ndarray, np.ndarray]:
    """The n-gram ending at every token: ``(ids int64 [T], ok bool [T])``, ``ok`` where the n-gram
    lies inside its row; id = sum_j tokens[t - j] * base**j."""
    if n < 1:
        raise ConfigError(f"DC-PDD n-gram length must be at least 1, not {n}")
    if float(base) ** n >= 2.0 ** 62:
        raise ConfigError(f"DC-PDD n-grams of {n} tokens over {base} token ids do not fit 62 bits; use a "
                          "shorter --dcpdd-n")
    tokens = np.asarray(tokens, np.int64)
    offsets = np.asarray(offsets, np.int64)
    t = tokens.shape[0]
    lens = np.diff(offsets)
    local = np.arange(t, dtype=np.int64) - np.repeat(offsets[:-1], lens)
    ok = local >= n - 1
    ids = np.zeros(t, np.int64)
    for j in range(n):
        shifted = np.zeros(t, np.int64)
        shifted[j:] = tokens[:t - j] if j else tokens
        ids += shifted * (int(base) ** j)
    return ids, ok


@dataclass(frozen=True)
class NgramTable:
    """Reference n-gram counts: sorted unique ids, their counts, the total and the alphabet size."""

    n: int
    base: int
    grams: np.ndarray     # int64 [G], sorted
    counts: np.ndarray    # int64 [G]
    total: int
    alphabet: int
    source: str = "reference"

    def count(self, ids: np.ndarray) -> np.ndarray:
        """Reference counts of the n-grams ``ids`` (0 for unseen)."""
        if self.grams.size == 0:
            return np.zeros(np.shape(ids), np.int64)
        pos = np.clip(np.searchsorted(self.grams, ids), 0, self.grams.size - 1)
        return np.where(self.grams[pos] == ids, self.counts[pos], 0)

    def to_dict(self) -> dict:
        return {"n": self.n, "source": self.source, "ngrams_counted": int(self.total),
                "distinct_ngrams": int(self.grams.size), "alphabet": int(self.alphabet)}


def ngram_table(token_rows: Iterable[np.ndarray], n: int, base: int, source: str = "reference") -> NgramTable:
    """Count the n-grams of token rows (one table; rows may be given in chunks via :func:`merge_tables`)."""
    tokens, offs = _flat(token_rows, np.int64)
    ids, ok = gram_ids(tokens, offs, n, base)
    grams, counts = np.unique(ids[ok], return_counts=True)
    return NgramTable(n, int(base), grams.astype(np.int64), counts.astype(np.int64), int(ok.sum()),
                      int(np.unique(tokens).size), source)


def merge_tables(tables: list[NgramTable], alphabet: int | None = None) -> NgramTable:
    """One table from the counts of several (same ``n`` and ``base``); ``alphabet``: the number of
    distinct token ids over all of them (default: the largest of theirs)."""
    if not tables:
        raise ConfigError("DC-PDD needs a non-empty reference")
    t0 = tables[0]
    grams = np.concatenate([t.grams for t in tables])
    counts = np.concatenate([t.counts for t in tables])
    uniq, inv = np.unique(grams, return_inverse=True)
    merged = np.bincount(inv, weights=counts, minlength=uniq.size).astype(np.int64)
    return NgramTable(t0.n, t0.base, uniq.astype(np.int64), merged, int(sum(t.total for t in tables)),
                      int(alphabet if alphabet is not None else max(t.alphabet for t in tables)), t0.source)


def dcpdd_scores(token_rows: list[np.ndarray], logp_rows: list[np.ndarray], table: NgramTable,
                 cap: float = DEFAULT_CAP, leave_out: np.ndarray | None = None) -> np.ndarray:
    """DC-PDD score per row (float64, higher = member).

    Args:
      token_rows: per row, the scored token ids in order.
      logp_rows: per row, the model's log p of those tokens (NaN: no prediction).
      table: the reference counts (:func:`ngram_table`).
      cap: the cap ``a`` on each unit's alpha.
      leave_out: bool [rows], True for rows whose own n-grams are part of ``table`` (they are
        subtracted from the counts that row is scored with).
    """
    if not cap > 0:
        raise ConfigError(f"the DC-PDD cap must be > 0, not {cap}")
    nrows = len(token_rows)
    if len(logp_rows) != nrows:
        raise ConfigError(f"{len(logp_rows)} log-probability rows for {nrows} token rows")
    tokens, offs = _flat(token_rows, np.int64)
    logp, loffs = _flat(logp_rows, np.float64)
    if not np.array_equal(offs, loffs):
        raise ConfigError("every row needs one log-probability per token")
    n = table.n
    ids, ok = gram_ids(tokens, offs, n, table.base)
    lens = np.diff(offs)
    rid = np.repeat(np.arange(nrows, dtype=np.int64), lens)
    # the model's log p of each n-gram: a window sum, valid where all n tokens have a prediction
    live = np.isfinite(logp)
    cs = np.concatenate([[0.0], np.cumsum(np.where(live, logp, 0.0))])
    cl = np.concatenate([[0], np.cumsum(live)])
    end = np.arange(1, tokens.shape[0] + 1)
    start = np.maximum(end - n, 0)
    win_logp = cs[end] - cs[start]
    win_live = (cl[end] - cl[start]) == n
    sel = np.flatnonzero(ok)
    order = sel[np.lexsort((sel, ids[sel], rid[sel]))]        # by row, n-gram, position
    r_s, g_s = rid[order], ids[order]
    new = np.ones(order.size, bool)
    new[1:] = (r_s[1:] != r_s[:-1]) | (g_s[1:] != g_s[:-1])
    firsts = order[new]
    counts = table.count(ids[firsts]).astype(np.float64)
    denom = np.full(firsts.size, float(table.total) + float(table.alphabet) ** n)
    if leave_out is not None:
        leave_out = np.asarray(leave_out, bool)
        if leave_out.shape != (nrows,):
            raise ConfigError(f"leave_out must have one entry per row ({nrows})")
        run_starts = np.flatnonzero(new)
        own = np.diff(np.concatenate([run_starts, [order.size]]))   # occurrences of that n-gram in the row
        own_total = np.bincount(rid[sel], minlength=nrows)          # n-grams the row contributed
        lo = leave_out[rid[firsts]]
        counts = np.where(lo, counts - own, counts)
        denom = np.where(lo, denom - own_total[rid[firsts]], denom)
        if (counts < 0).any():
            raise ConfigError("DC-PDD leave-one-out: a row marked as part of the reference is not in it")
    keep = win_live[firsts]
    f = (counts[keep] + 1.0) / denom[keep]
    alpha = np.minimum(np.exp(win_logp[firsts[keep]]) * -np.log(f), cap)
    rows = rid[firsts[keep]]
    total = np.bincount(rows, weights=alpha, minlength=nrows)
    num = np.bincount(rows, minlength=nrows)
    return np.where(num > 0, total / np.maximum(num, 1), 0.0)
