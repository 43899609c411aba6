"""Synthetic DNA: i.i.d. sequences of a chosen GC content, and Markov order-k sequences fitted to a genome.

A Markov model of order k is fitted by counting the (k+1)-mers of a genome (both the counts and
the sampling ignore any k-mer that contains N) and adding a pseudocount to every cell:

    P(next = b | context = c) = (count(c b) + pseudocount) / sum_b' (count(c b') + pseudocount)

The first k bases of a sequence are drawn from the k-mer distribution (the (k+1)-mer counts summed
over the last base, plus the pseudocount), the rest base by base from the transition table.
Contexts never seen (possible only with pseudocount 0) fall back to uniform.

Sampling uses a seeded ``numpy.random.Generator`` and is vectorised over sequences: one step per
position updates all sequences at once, so ``num`` sequences of length ``L`` cost ``L`` numpy
operations on arrays of ``num`` elements. The same seed gives the same sequences.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from glmjax import alphabet
from glmjax.errors import ConfigError

MAX_ORDER = 10  # 4**11 counts (32 MiB of int64): beyond this the table outgrows typical genomes


def base_probabilities(gc: float) -> np.ndarray:
    """Probabilities of A, C, G, T (float64 [4]) for a GC fraction ``gc``."""
    if not 0.0 <= gc <= 1.0:
        raise ConfigError(f"--gc must be in [0, 1] (got {gc})")
    return np.array([(1 - gc) / 2, gc / 2, gc / 2, (1 - gc) / 2])


def _draw(cdf: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Inverse-CDF draw: ``cdf`` [..., 4] (last entry 1), ``u`` uniform of the leading shape -> codes."""
    return (u[..., None] >= cdf[..., :3]).sum(-1).astype(np.uint8)


def iid_sequences(num: int, length: int, gc: float, rng: np.random.Generator) -> np.ndarray:
    """``num`` i.i.d. sequences of ``length`` bases with GC probability ``gc``: uint8 [num, length]."""
    cdf = np.cumsum(base_probabilities(gc))
    cdf[-1] = 1.0
    return _draw(cdf, rng.random((num, length)))


def kmer_index(codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Base-4 index of every k-mer of a code array and whether it is free of N.

    Returns (index int64 [n-k+1], valid bool [n-k+1]); index = sum_j code[i+j] * 4**(k-1-j), with N
    positions counted as 0 (check ``valid``).
    """
    codes = np.asarray(codes, dtype=np.uint8)
    n = codes.size - k + 1
    if n <= 0:
        return np.empty(0, np.int64), np.empty(0, bool)
    is_n = codes >= alphabet.N
    acgt = np.where(is_n, 0, codes).astype(np.int64)
    idx = np.zeros(n, np.int64)
    for j in range(k):
        idx = idx * 4 + acgt[j:j + n]
    ncum = np.concatenate([[0], np.cumsum(is_n)])
    return idx, (ncum[k:k + n] - ncum[:n]) == 0


@dataclass(frozen=True)
class MarkovModel:
    """A fitted Markov chain of order ``order`` over A C G T.

    ``counts`` is int64 [4**(order+1)]: the (k+1)-mer counts, indexed by base-4 value (first base
    most significant).
    """

    order: int
    counts: np.ndarray
    pseudocount: float = 1.0

    @classmethod
    def fit(cls, sequences: Iterable[np.ndarray], order: int, pseudocount: float = 1.0) -> MarkovModel:
        """Count the (k+1)-mers of code arrays (N-containing k-mers skipped)."""
        if not 0 <= order <= MAX_ORDER:
            raise ConfigError(f"--order must be between 0 and {MAX_ORDER} (got {order})")
        if pseudocount < 0:
            raise ConfigError(f"--pseudocount must be >= 0 (got {pseudocount})")
        size = 4 ** (order + 1)
        counts = np.zeros(size, np.int64)
        for codes in sequences:
            idx, ok = kmer_index(codes, order + 1)
            counts += np.bincount(idx[ok], minlength=size)
        return cls(order=order, counts=counts, pseudocount=float(pseudocount))

    @classmethod
    def fit_fasta(cls, path: str | os.PathLike, order: int, pseudocount: float = 1.0) -> MarkovModel:
        """Fit to all records of a FASTA file (streamed; k-mers do not span records)."""
        from glmjax.data.fasta import iter_fasta

        def records() -> Iterable[np.ndarray]:
            carry: np.ndarray | None = None
            current = None
            for name, codes in iter_fasta(path):
                if name != current:
                    current, carry = name, None
                if codes.size == 0:
                    continue
                # Keep the last `order` bases so (k+1)-mers spanning two pieces are counted once.
                joined = codes if carry is None else np.concatenate([carry, codes])
                yield joined
                carry = joined[max(joined.size - order, 0):] if order else None

        model = cls.fit(records(), order, pseudocount)
        if model.counts.sum() == 0:
            raise ConfigError(f"{path}: no {order + 1}-mer without N to fit an order-{order} model")
        return model

    def transition(self) -> np.ndarray:
        """P(next | context): float64 [4**order, 4]; unseen contexts (pseudocount 0) are uniform."""
        table = self.counts.reshape(4 ** self.order, 4).astype(np.float64) + self.pseudocount
        tot = table.sum(1, keepdims=True)
        return np.where(tot > 0, table / np.where(tot > 0, tot, 1.0), 0.25)

    def initial(self) -> np.ndarray:
        """Distribution of the first ``order`` bases as a k-mer: float64 [4**order]."""
        w = self.counts.reshape(4 ** self.order, 4).sum(1).astype(np.float64) + self.pseudocount
        return w / w.sum() if w.sum() > 0 else np.full(w.size, 1.0 / w.size)

    def gc(self) -> float:
        """GC fraction of the fitted (k+1)-mers' last base (the model's base composition)."""
        last = self.counts.reshape(-1, 4).sum(0)
        return float(last[[alphabet.C, alphabet.G]].sum() / max(last.sum(), 1))

    def sample(self, num: int, length: int, rng: np.random.Generator,
               on_step: Callable[[int], None] | None = None) -> np.ndarray:
        """Draw ``num`` sequences of ``length`` bases: uint8 [num, length]."""
        k = self.order
        out = np.empty((num, length), np.uint8)
        u = rng.random((num, length))
        head = min(k, length)
        if k:
            cdf0 = np.cumsum(self.initial())
            cdf0[-1] = 1.0
            first = np.searchsorted(cdf0, rng.random(num), side="right").astype(np.int64)
            first = np.minimum(first, cdf0.size - 1)
            for j in range(head):
                out[:, j] = (first >> (2 * (k - 1 - j))) & 3
            ctx = first
        else:
            ctx = np.zeros(num, np.int64)
        cdf = np.cumsum(self.transition(), axis=1)
        cdf[:, -1] = 1.0
        mask = 4 ** k - 1 if k else 0
        for t in range(head, length):
            nxt = _draw(cdf[ctx], u[:, t])
            out[:, t] = nxt
            ctx = ((ctx << 2) | nxt) & mask if k else ctx
            if on_step is not None and (t + 1) % 256 == 0:
                on_step(256)
        return out

    def summary(self) -> dict[str, Any]:
        """Small JSON-able description (order, pseudocount, total (k+1)-mers, GC)."""
        return {"order": self.order, "pseudocount": self.pseudocount,
                "kmers": int(self.counts.sum()), "gc": round(self.gc(), 6)}


SAMPLE_BATCH = 4096  # sequences drawn per Generator call; part of the seed -> output contract


def synth_to_store(out: str | os.PathLike, num: int, length: int, seed: int, gc: float = 0.5,
                   order: int | None = None, fit: str | os.PathLike | None = None,
                   pseudocount: float = 1.0, on_rows: Callable[[int, int], None] | None = None
                   ) -> dict[str, Any]:
    """Write ``num`` synthetic sequences of ``length`` bases to a new SequenceStore.

    Without ``fit``: i.i.d. bases with GC fraction ``gc`` (``order`` must be 0 or None). With
    ``fit``: a Markov chain of ``order`` (default 0) fitted to that FASTA file. Rows are
    ``synthetic-<i>`` (zero-padded), kind ``synthetic``. Sequences are drawn ``SAMPLE_BATCH`` at a
    time from one ``numpy.random.default_rng(seed)``, so the same seed gives the same store.
    """
    from glmjax.data.provenance import source_entry
    from glmjax.data.store import SequenceStoreWriter
    from glmjax.storage import base_provenance

    if num < 1 or length < 1:
        raise ConfigError(f"--num and --length must be at least 1 (got {num}, {length})")
    if fit is None and order:
        raise ConfigError("--order needs --fit GENOME.fa (the genome the Markov chain is fitted to)")
    model = None
    if fit is not None:
        model = MarkovModel.fit_fasta(fit, order or 0, pseudocount)
        generator: dict[str, Any] = {"kind": "markov", **model.summary(), "fit": source_entry(fit)}
    else:
        base_probabilities(gc)
        generator = {"kind": "iid", "gc": gc}
    rng = np.random.default_rng(seed)
    prov = base_provenance(seed=seed, generator=generator, num=num, length=length)
    width = max(6, len(str(num - 1)))
    kind = "synthetic"
    with SequenceStoreWriter(out, provenance=prov) as writer:
        for lo in range(0, num, SAMPLE_BATCH):
            n = min(SAMPLE_BATCH, num - lo)
            seqs = model.sample(n, length, rng) if model is not None else iid_sequences(n, length, gc, rng)
            writer.append({"id": [f"synthetic-{i:0{width}d}" for i in range(lo, lo + n)],
                           "source": [kind] * n, "start": np.zeros(n, np.int64),
                           "strand": np.ones(n, np.int8), "kind": [kind] * n, "canary": [""] * n,
                           "group": [""] * n}, {"seq": list(seqs)})
            if on_rows is not None:
                on_rows(n, n * length)
    return {"sequences": num, "length": length, "bases": num * length, "seed": seed, **generator}
