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

import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from glmjax.errors import ConfigError

DEFAULT_CAP = 0.01  # the reference implementation's a


def _flat(rows: Iterable[np.ndarray], dtype) -> tuple[np.ndarray, np.ndarray]:
    rows = [np.asarray(r) for r in rows]
    offs = np.concatenate([[0], np.cumsum([r.shape[0] for r in rows])]).astype(np.int64)
    flat = np.concatenate(rows).astype(dtype) if rows else np.zeros(0, dtype)
    return flat, offs


DENSE_MAX = 1 << 24  # n-gram spaces up to this size get a dense count table (one gather per lookup)


def gram_ids(dense: np.ndarray, offsets: np.ndarray, n: int, base: int) -> tuple[np.ndarray, np.ndarray]:
    """The n-gram ending at every token of dense symbols ``0..base-1``: ``(ids int64 [T], ok
    bool [T])``, ``ok`` where the n-gram lies inside its row; id = sum_j dense[t - j] * base**j."""
    if n < 1:
        raise ConfigError(f"DC-PDD n-gram length must be at least 1, not {n}")
    if float(base) ** n >= 2.0 ** 62:
        raise ConfigError(f"DC-PDD n-grams of {n} tokens over {base} token ids do not fit 62 bits; use a "
                          "shorter --dcpdd-n")
    dense = np.asarray(dense, np.int64)
    offsets = np.asarray(offsets, np.int64)
    t = dense.shape[0]
    lens = np.diff(offsets)
    local = np.arange(t, dtype=np.int64) - np.repeat(offsets[:-1], lens)
    ok = local >= n - 1
    ids = dense.copy()
    for j in range(1, n):
        ids[j:] += dense[:t - j] * (int(base) ** j)
    return ids, ok


@dataclass(frozen=True)
class NgramTable:
    """Reference n-gram counts over a fixed alphabet of token ids (``alphabet_ids``, sorted); a
    token outside it is one extra symbol. ``grams``/``counts``: sorted unique n-gram ids and their
    counts; ``total``: n-grams counted."""

    n: int
    alphabet_ids: np.ndarray   # int64 [A], sorted
    grams: np.ndarray          # int64 [G], sorted
    counts: np.ndarray         # int64 [G]
    total: int
    source: str = "reference"

    def __post_init__(self):
        dense = None
        if self.base ** self.n <= DENSE_MAX:
            dense = np.zeros(self.base ** self.n, np.int64)
            dense[self.grams] = self.counts
        object.__setattr__(self, "_dense", dense)

    @property
    def alphabet(self) -> int:
        return int(self.alphabet_ids.shape[0])

    @property
    def base(self) -> int:
        return self.alphabet + 1

    def symbols(self, tokens: np.ndarray) -> np.ndarray:
        """Dense symbols of token ids (``alphabet`` for a token outside the alphabet)."""
        tokens = np.asarray(tokens, np.int64)
        if self.alphabet == 0:
            return np.zeros(tokens.shape, np.int64)
        pos = np.clip(np.searchsorted(self.alphabet_ids, tokens), 0, self.alphabet - 1)
        return np.where(self.alphabet_ids[pos] == tokens, pos, self.alphabet)

    def count(self, ids: np.ndarray) -> np.ndarray:
        """Reference counts of the n-grams ``ids`` (0 for unseen)."""
        if self._dense is not None:
            return self._dense[ids]
        if self.grams.size == 0:
            return np.zeros(np.shape(ids), np.int64)
        pos = np.clip(np.searchsorted(self.grams, ids), 0, self.grams.size - 1)
        return np.where(self.grams[pos] == ids, self.counts[pos], 0)

    def to_dict(self) -> dict:
        return {"n": self.n, "source": self.source, "ngrams_counted": int(self.total),
                "distinct_ngrams": int(self.grams.size), "alphabet": self.alphabet}


def ngram_table(token_rows: Iterable[np.ndarray], n: int, alphabet_ids: np.ndarray | None = None,
                source: str = "reference") -> NgramTable:
    """Count the n-grams of token rows; ``alphabet_ids`` (default: the distinct tokens of the rows)
    fixes the alphabet, so that tables of several chunks can be merged (:func:`merge_tables`)."""
    tokens, offs = _flat(token_rows, np.int64)
    alpha = distinct_tokens(tokens) if alphabet_ids is None else np.unique(np.asarray(alphabet_ids, np.int64))
    probe = NgramTable(n, alpha, np.zeros(0, np.int64), np.zeros(0, np.int64), 0, source)
    ids, ok = gram_ids(probe.symbols(tokens), offs, n, probe.base)
    if probe.base ** n <= DENSE_MAX:
        dense = np.bincount(ids[ok], minlength=probe.base ** n)
        grams = np.flatnonzero(dense)
        counts = dense[grams]
    else:
        grams, counts = np.unique(ids[ok], return_counts=True)
    return NgramTable(n, alpha, grams.astype(np.int64), counts.astype(np.int64), int(ok.sum()), source)


def distinct_tokens(tokens: np.ndarray) -> np.ndarray:
    """Sorted distinct token ids (a count per id for small non-negative ids, else a sort)."""
    tokens = np.asarray(tokens, np.int64)
    if tokens.size and tokens.min() >= 0 and tokens.max() < DENSE_MAX:
        return np.flatnonzero(np.bincount(tokens)).astype(np.int64)
    return np.unique(tokens)


def merge_tables(tables: list[NgramTable]) -> NgramTable:
    """One table from the counts of several over the same ``n`` and alphabet."""
    if not tables:
        raise ConfigError("DC-PDD needs a non-empty reference")
    t0 = tables[0]
    if any(t.n != t0.n or not np.array_equal(t.alphabet_ids, t0.alphabet_ids) for t in tables):
        raise ConfigError("DC-PDD tables over different n or alphabets cannot be merged")
    grams = np.concatenate([t.grams for t in tables])
    counts = np.concatenate([t.counts for t in tables])
    uniq, inv = np.unique(grams, return_inverse=True)
    merged = np.bincount(inv, weights=counts, minlength=uniq.size).astype(np.int64)
    return NgramTable(t0.n, t0.alphabet_ids, uniq.astype(np.int64), merged, int(sum(t.total for t in tables)),
                      t0.source)


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
    n, space = table.n, table.base ** table.n
    ids, ok = gram_ids(table.symbols(tokens), offs, n, table.base)
    lens = np.diff(offs)
    rid = np.repeat(np.arange(nrows, dtype=np.int64), lens)
    # the model's log p of each n-gram (summed in position order: the same in any chunking), valid
    # where all n tokens have a prediction (NaN propagates)
    win_logp = logp.copy()
    for j in range(1, n):
        win_logp[j:] += logp[:-j]
    win_live = np.isfinite(win_logp)
    sel = np.flatnonzero(ok)
    # first occurrence of each (row, n-gram): a stable sort keeps positions in order within a key
    if float(nrows) * space < 2.0 ** 62:
        order = sel[np.argsort(rid[sel] * space + ids[sel], kind="stable")]
    else:
        order = sel[np.lexsort((sel, ids[sel], rid[sel]))]
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


def dcpdd_scores_parallel(token_rows: list[np.ndarray], logp_rows: list[np.ndarray], table: NgramTable,
                          cap: float = DEFAULT_CAP, leave_out: np.ndarray | None = None,
                          workers: int | None = None, chunk_tokens: int = 1 << 19) -> np.ndarray:
    """:func:`dcpdd_scores` over chunks of rows in a thread pool (numpy's sorts and ufuncs release
    the GIL); identical results."""
    nrows = len(token_rows)
    lens = np.fromiter((len(r) for r in token_rows), np.int64, count=nrows)
    cuts = [0]
    acc = 0
    for i, n in enumerate(lens):
        acc += int(n)
        if acc >= chunk_tokens:
            cuts.append(i + 1)
            acc = 0
    if cuts[-1] != nrows:
        cuts.append(nrows)
    spans = list(zip(cuts[:-1], cuts[1:], strict=True))
    if len(spans) <= 1:
        return dcpdd_scores(token_rows, logp_rows, table, cap, leave_out)
    workers = workers or min(8, os.cpu_count() or 1)

    def one(span):
        a, b = span
        return dcpdd_scores(token_rows[a:b], logp_rows[a:b], table, cap,
                            None if leave_out is None else np.asarray(leave_out, bool)[a:b])

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="glmjax-dcpdd") as pool:
        return np.concatenate(list(pool.map(one, spans)))
