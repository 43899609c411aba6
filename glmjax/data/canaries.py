"""Canaries: generation with complexity and dataset screening, planting at repetition schedules.

A canary is ``prefix + secret``, both drawn i.i.d. with GC fraction ``gc`` from a seeded
``numpy.random.Generator``. Extraction attacks prompt a model with the prefix and measure how
well it reproduces the secret, so a secret must be neither easy to guess (low complexity) nor
already present in the training data. Candidates are drawn in batches and a secret is rejected,
counting the first rule it breaks, in this order:

``homopolymer``  a run of the same base longer than ``max_homopolymer`` (default 5, i.e. runs of 6+);
``entropy``      normalised dinucleotide entropy below ``min_entropy`` (default 0.6): the Shannon
                 entropy (bits) of the secret's overlapping 2-mer counts divided by its maximum
                 ``log2(min(16, secret_len - 1))``; catches tandem repeats like ACACAC or ACGACG;
``dust``         symmetric DUST score above ``max_dust`` (default 2.0, the level-20 default of
                 dustmasker/sdust): for every 64-nt window of the secret (the whole secret when
                 shorter), ``sum_t c_t (c_t - 1) / 2 / (l - 1)`` over its l overlapping triplets
                 with counts c_t; the maximum over windows is compared;
``dataset``      with a screen store: a ``screen_k``-mer of the secret or of its reverse complement
                 occurs in the store (``screen_k`` defaults to min(secret_len, 32), i.e. the whole
                 secret when it fits one uint64);
``duplicate``    the secret, or its reverse complement, shares a ``screen_k``-mer (by default: is
                 equal) with a canary or control accepted before it.

With those defaults the complexity rules reject about 1-3% of uniform random secrets (gc 0.5) of
10-32 nt and about 6% at 100 nt (mostly runs of 6+), while tandem repeats such as ACACACACAC,
ACGACGACGACG or (AAG)n and homopolymer runs are always rejected.

The store's k-mers are packed 2 bits per base into uint64 (k <= 32) and kept as one sorted array
(:class:`KmerSet`): a few seconds for a bacterial genome, and lookups are a binary search.

Planting (:func:`plant`) assigns each canary a repetition count from a schedule (a seeded
permutation, then round robin, so every count gets the same number of canaries +-1) and writes a
new store with the copies either as standalone records (``kind="canary"``, ``canary=<id>``,
appended after the original rows, ids ``<canary id>/<copy>``) or spliced into distinct random
windows at a random offset (the window keeps its id and kind; its ``canary`` column names the
canary). In one-run mode each canary is independently included with probability 1/2; excluded
ones stay in the manifest as held-out canaries (``repetitions`` 0, ``included`` false) next to any
never-planted controls.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from glmjax import alphabet
from glmjax.errors import CanaryError, ConfigError, InputFileError

MANIFEST_SCHEMA = "glmjax.CanaryManifest"
MANIFEST_VERSION = 1
MAX_PACKED_K = 32
RULES = ("homopolymer", "entropy", "dust", "dataset", "duplicate")


# ------------------------------------------------------------------------------------------------
# k-mers packed 2 bits per base
# ------------------------------------------------------------------------------------------------
def pack_kmers(codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """All k-mers of a code array packed into uint64 (first base in the high bits), and validity.

    Returns (values uint64 [n-k+1], valid bool [n-k+1]); a k-mer is invalid when it contains N.
    Built by doubling (1-mers -> 2 -> 4 -> ...), so the cost is O(n log k) numpy work.
    """
    if not 1 <= k <= MAX_PACKED_K:
        raise ConfigError(f"k-mer length must be 1..{MAX_PACKED_K} (got {k})")
    codes = np.asarray(codes, dtype=np.uint8)
    n = codes.size - k + 1
    if n <= 0:
        return np.empty(0, np.uint64), np.empty(0, bool)
    is_n = codes >= alphabet.N
    powers = {1: np.where(is_n, 0, codes).astype(np.uint64)}
    span = 1
    while span * 2 <= k:
        p = powers[span]
        powers[span * 2] = (p[:-span] << np.uint64(2 * span)) | p[span:]
        span *= 2
    acc: np.ndarray | None = None
    got = 0
    for s in sorted(powers, reverse=True):
        if got + s <= k:
            part = powers[s][got:got + n]
            acc = part.copy() if acc is None else (acc << np.uint64(2 * s)) | part
            got += s
    ncum = np.concatenate([[0], np.cumsum(is_n, dtype=np.int64)])
    return acc, (ncum[k:k + n] - ncum[:n]) == 0


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """Sorted distinct values of a 1-D array (sort + neighbour comparison).

    Used instead of ``np.unique``, whose hash-based path in recent numpy releases is many times
    slower than a plain sort on tens of millions of uint64 keys.
    """
    s = np.sort(values)
    if s.size < 2:
        return s
    keep = np.empty(s.size, bool)
    keep[0] = True
    np.not_equal(s[1:], s[:-1], out=keep[1:])
    return s[keep]


class KmerSet:
    """Sorted unique uint64 array of the k-mers of a set of sequences; ``contains`` by binary search.

    Memory: 8 bytes per distinct k-mer (about 70 MiB for a 4.6 Mb bacterial genome with k = 20).
    """

    def __init__(self, k: int, values: np.ndarray):
        self.k = k
        self.values = values

    def __len__(self) -> int:
        return int(self.values.size)

    @classmethod
    def from_sequences(cls, seqs: Iterable[np.ndarray], k: int, batch_bases: int = 1 << 22,
                       on_batch: Callable[[int, int], None] | None = None) -> KmerSet:
        """Collect the k-mers (N-free, not spanning two sequences) of code arrays.

        Sequences are concatenated ``batch_bases`` at a time with an N between neighbours, so the
        packing runs on large arrays; ``on_batch(rows, bases)`` reports progress.
        """
        sep = np.array([alphabet.N], np.uint8)
        parts: list[np.ndarray] = []
        buf: list[np.ndarray] = []
        size = 0
        rows = 0

        def flush() -> None:
            nonlocal size, rows
            if not buf:
                return
            flat = np.concatenate([x for s in buf for x in (s, sep)])
            vals, ok = pack_kmers(flat, k)
            parts.append(sorted_unique(vals[ok]))
            if on_batch is not None:
                on_batch(rows, size)
            buf.clear()
            size, rows = 0, 0

        for s in seqs:
            buf.append(np.asarray(s, np.uint8))
            size += s.size
            rows += 1
            if size >= batch_bases:
                flush()
        flush()
        values = sorted_unique(np.concatenate(parts)) if parts else np.empty(0, np.uint64)
        return cls(k, values)

    @classmethod
    def from_store(cls, store: Any, k: int, on_batch: Callable[[int, int], None] | None = None,
                   batch_rows: int = 4096) -> KmerSet:
        """k-mers of every row of a :class:`glmjax.data.store.SequenceStore`."""

        def rows() -> Iterable[np.ndarray]:
            for _, seqs in store.iter_batches(batch_rows):
                yield from seqs

        return cls.from_sequences(rows(), k, on_batch=on_batch)

    def contains(self, values: np.ndarray) -> np.ndarray:
        """Membership of packed k-mers: bool array of the same shape."""
        values = np.asarray(values, np.uint64)
        if self.values.size == 0:
            return np.zeros(values.shape, bool)
        pos = np.searchsorted(self.values, values)
        pos = np.minimum(pos, self.values.size - 1)
        return self.values[pos] == values


# ------------------------------------------------------------------------------------------------
# Complexity rules (vectorised over candidates: codes uint8 [num, length], no N)
# ------------------------------------------------------------------------------------------------
def longest_homopolymer(codes: np.ndarray) -> np.ndarray:
    """Longest run of one base in each row: int64 [num]."""
    codes = np.atleast_2d(codes)
    num, n = codes.shape
    best = np.ones(num, np.int64) if n else np.zeros(num, np.int64)
    run = np.ones(num, np.int64)
    for j in range(1, n):
        run = np.where(codes[:, j] == codes[:, j - 1], run + 1, 1)
        best = np.maximum(best, run)
    return best


def dinucleotide_entropy(codes: np.ndarray) -> np.ndarray:
    """Normalised entropy of each row's overlapping 2-mer counts in [0, 1]: float64 [num].

    Entropy in bits divided by ``log2(min(16, length - 1))``, the largest value a row of this
    length can reach (rows shorter than 3 get 1.0).
    """
    codes = np.atleast_2d(codes).astype(np.int64)
    num, n = codes.shape
    if n < 3:
        return np.ones(num)
    di = codes[:, :-1] * 4 + codes[:, 1:] + 16 * np.arange(num)[:, None]
    counts = np.bincount(di.ravel(), minlength=16 * num).reshape(num, 16).astype(np.float64)
    p = counts / (n - 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(p > 0, p * np.log2(p), 0.0).sum(1)
    return h / np.log2(min(16, n - 1))


DUST_WINDOW = 64


def dust_score(codes: np.ndarray, window: int = DUST_WINDOW) -> np.ndarray:
    """Symmetric DUST score of each row (max over ``window``-nt windows): float64 [num].

    Per window with l overlapping triplets of counts c_t: ``sum_t c_t (c_t - 1) / 2 / (l - 1)``.
    Rows shorter than 4 nt score 0. Rows are processed in chunks so memory stays below ~64 MiB.
    """
    codes = np.atleast_2d(codes).astype(np.int64)
    num, n = codes.shape
    if n < 4:
        return np.zeros(num)
    ntri = n - 2
    lw = min(window - 2, ntri)
    step = max(1, (1 << 24) // ((ntri + 1) * 64))
    out = np.empty(num)
    for lo in range(0, num, step):
        c = codes[lo:lo + step]
        tri = c[:, :-2] * 16 + c[:, 1:-1] * 4 + c[:, 2:]  # [rows, ntri]
        onehot = np.zeros((c.shape[0], ntri + 1, 64), np.int32)
        onehot[np.arange(c.shape[0])[:, None], np.arange(1, ntri + 1)[None, :], tri] = 1
        cum = np.cumsum(onehot, axis=1)
        counts = cum[:, lw:] - cum[:, :-lw]  # triplet counts of every window [rows, windows, 64]
        out[lo:lo + step] = ((counts * (counts - 1) / 2).sum(-1) / (lw - 1)).max(1)
    return out


# ------------------------------------------------------------------------------------------------
# Generation
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CanaryParams:
    """Generator parameters (all recorded in the manifest)."""

    num: int
    prefix_len: int
    secret_len: int
    gc: float = 0.5
    controls: int = 0
    max_homopolymer: int = 5
    min_entropy: float = 0.6
    max_dust: float = 2.0
    screen_k: int | None = None
    max_candidates_per_canary: int = 1000

    def __post_init__(self) -> None:
        if self.num < 0 or self.controls < 0 or self.num + self.controls < 1:
            raise ConfigError(f"--num must be at least 1 and --controls at least 0 (got {self.num}, "
                              f"{self.controls})")
        if self.prefix_len < 0:
            raise ConfigError(f"--prefix-len must be >= 0 (got {self.prefix_len})")
        if self.secret_len < 4:
            raise ConfigError(f"--secret-len must be at least 4 (got {self.secret_len})")
        if not 0.0 < self.gc < 1.0:
            raise ConfigError(f"--gc must be strictly between 0 and 1 (got {self.gc})")
        if self.screen_k is not None and not 1 <= self.screen_k <= min(self.secret_len, MAX_PACKED_K):
            raise ConfigError(f"--screen-k must be in 1..{min(self.secret_len, MAX_PACKED_K)} (got "
                              f"{self.screen_k})")

    @property
    def k(self) -> int:
        """k-mer length used for dataset screening and duplicate checks."""
        return self.screen_k if self.screen_k is not None else min(self.secret_len, MAX_PACKED_K)


def canary_id(i: int, role: str = "canary") -> str:
    """Stable id of the i-th canary (``canary-0007``) or control (``control-0002``)."""
    return f"{role}-{i:04d}"


def _secret_kmers(secrets: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Packed k-mers of each secret and of its reverse complement, with validity.

    Returns (values uint64 [num, 2K + 2], valid bool [num, 2K + 2]) for secrets uint8 [num, K]:
    row layout ``secret N revcomp N``, so k-mers spanning the separators (or containing N) are
    marked invalid.
    """
    secrets = np.atleast_2d(np.asarray(secrets, np.uint8))
    num, n = secrets.shape
    sep = np.full((num, 1), alphabet.N, np.uint8)
    rows = np.concatenate([secrets, sep, alphabet.reverse_complement(secrets), sep], axis=1)
    vals, ok = pack_kmers(rows.ravel(), k)
    width = 2 * n + 2
    vals = np.concatenate([vals, np.zeros(k - 1, np.uint64)]).reshape(num, width)
    ok = np.concatenate([ok, np.zeros(k - 1, bool)]).reshape(num, width)
    return vals, ok


def secret_in_store(secrets: np.ndarray, kset: KmerSet) -> np.ndarray:
    """Whether any k-mer of each secret (or of its reverse complement) is in ``kset``: bool [num]."""
    vals, ok = _secret_kmers(secrets, kset.k)
    return (kset.contains(vals) & ok).any(1)


def reject_reasons(secrets: np.ndarray, params: CanaryParams, screen: KmerSet | None = None) -> np.ndarray:
    """First complexity/screening rule each secret breaks ('' when it passes): str array [num].

    Covers ``homopolymer``, ``entropy``, ``dust`` and ``dataset``; duplicates are checked while
    accepting (they depend on the canaries accepted so far).
    """
    secrets = np.atleast_2d(np.asarray(secrets, np.uint8))
    why = np.full(secrets.shape[0], "", dtype=object)

    def mark(bad: np.ndarray, rule: str) -> None:
        why[(why == "") & bad] = rule

    mark(longest_homopolymer(secrets) > params.max_homopolymer, "homopolymer")
    mark(dinucleotide_entropy(secrets) < params.min_entropy, "entropy")
    mark(dust_score(secrets) > params.max_dust, "dust")
    if screen is not None:
        mark(secret_in_store(secrets, screen), "dataset")
    return why


def generate(params: CanaryParams, seed: int, screen: KmerSet | None = None,
             on_accept: Callable[[int], None] | None = None) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Draw canaries and controls; return (entries, rejection counts per rule).

    Entries are dicts with ``id``, ``role`` (``canary``/``control``), ``prefix``, ``secret``
    (ACGT strings), ``gc`` (of prefix + secret) and ``secret_sha256``; canaries come first
    (``canary-0000``...), then controls (``control-0000``...). Candidates are drawn in batches
    from ``numpy.random.default_rng(seed)``, so the same seed and parameters give the same list.

    Raises:
      CanaryError: fewer than requested canaries pass the rules within
        ``max_candidates_per_canary * (num + controls)`` candidates.
    """
    import hashlib

    if screen is not None and screen.k != params.k:
        raise ConfigError(f"screen k-mer set has k={screen.k}, parameters ask for k={params.k}")
    rng = np.random.default_rng(seed)
    total = params.num + params.controls
    length = params.prefix_len + params.secret_len
    limit = params.max_candidates_per_canary * total
    rejected = Counter({r: 0 for r in RULES})
    accepted: list[np.ndarray] = []
    seen: set[int] = set()
    drawn = 0
    while len(accepted) < total:
        if drawn >= limit:
            raise CanaryError(
                f"only {len(accepted)} of {total} canaries passed the rules after {drawn:,} candidates "
                f"(rejected: {', '.join(f'{k} {v}' for k, v in rejected.items() if v)}); use longer "
                "secrets or relax --max-homopolymer/--min-entropy/--max-dust/--screen-k")
        batch = min(max(2 * (total - len(accepted)), 64), 4096, limit - drawn)
        cand = _iid(rng, batch, length, params.gc)
        drawn += batch
        secrets = cand[:, params.prefix_len:]
        why = reject_reasons(secrets, params, screen)
        kmers, kmer_ok = _secret_kmers(secrets, params.k)
        for i in range(batch):
            if len(accepted) == total:
                break
            if why[i]:
                rejected[why[i]] += 1
                continue
            keys = {int(x) for x in kmers[i][kmer_ok[i]]}
            if keys & seen:
                rejected["duplicate"] += 1
                continue
            seen |= keys
            accepted.append(cand[i])
            if on_accept is not None:
                on_accept(1)
    entries = []
    for j, codes in enumerate(accepted):
        role = "canary" if j < params.num else "control"
        idx = j if j < params.num else j - params.num
        prefix = alphabet.decode(codes[:params.prefix_len])
        secret = alphabet.decode(codes[params.prefix_len:])
        entries.append({"id": canary_id(idx, role), "role": role, "prefix": prefix, "secret": secret,
                        "gc": round(alphabet.gc_content(codes), 6),
                        "secret_sha256": hashlib.sha256(secret.encode()).hexdigest()})
    return entries, dict(rejected)


def _iid(rng: np.random.Generator, num: int, length: int, gc: float) -> np.ndarray:
    from glmjax.data.synthetic import iid_sequences

    return iid_sequences(num, length, gc, rng)


def build_manifest(params: CanaryParams, seed: int, screen_store: str | os.PathLike | None = None,
                   on_progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    """Generate canaries (screened against ``screen_store`` when given) and return the manifest dict.

    ``on_progress(stage, n, bases)`` reports k-mer indexing (stage ``"index"``) and accepted
    canaries (stage ``"accept"``).
    """
    from glmjax.data.provenance import file_sha256
    from glmjax.data.store import SequenceStore
    from glmjax.storage import base_provenance

    screen = None
    screen_info = None
    if screen_store is not None:
        with SequenceStore(screen_store) as store:
            cb = (lambda r, b: on_progress("index", r, b)) if on_progress else None
            screen = KmerSet.from_store(store, params.k, on_batch=cb)
            rows = len(store)
        screen_info = {"store": str(screen_store), "sha256": file_sha256(screen_store), "k": params.k,
                       "rows": rows, "distinct_kmers": len(screen)}
    acc = (lambda n: on_progress("accept", n, 0)) if on_progress else None
    entries, rejected = generate(params, seed, screen, on_accept=acc)
    for e in entries:
        e.update({"included": False, "repetitions": 0, "placements": []})
    return {
        "schema": MANIFEST_SCHEMA, "schema_version": MANIFEST_VERSION, "seed": seed,
        "generator": {**asdict(params), "screen_k": params.k, "rules": list(RULES)},
        "screen": screen_info, "rejected": rejected, "provenance": base_provenance(seed=seed),
        "planting": None, "canaries": entries,
    }


def write_manifest(path: str | os.PathLike, manifest: dict[str, Any]) -> str:
    """Write a manifest atomically as canonical JSON; return its sha256."""
    from glmjax.data.provenance import bytes_sha256, canonical_json, write_bytes_atomic

    data = canonical_json(manifest)
    write_bytes_atomic(path, data)
    return bytes_sha256(data)


def load_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a canary manifest."""
    p = Path(path)
    if not p.exists():
        raise InputFileError(f"{p}: no such file")
    if p.is_dir() or p.stat().st_size == 0:
        raise InputFileError(f"{p} is {'a folder' if p.is_dir() else 'empty'}, not a canary manifest")
    try:
        m = json.loads(p.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InputFileError(f"{p} is not JSON; expected a canary manifest from `glmjax data canaries`") from None
    if not isinstance(m, dict) or m.get("schema") != MANIFEST_SCHEMA:
        raise InputFileError(f"{p} is not a canary manifest (schema {MANIFEST_SCHEMA})")
    version = m.get("schema_version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise InputFileError(f"{p} has schema_version {version!r}, not an integer; is the manifest damaged?")
    if version > MANIFEST_VERSION:
        raise InputFileError(f"{p} has manifest schema v{m['schema_version']}; this glmjax reads up to "
                             f"v{MANIFEST_VERSION}; upgrade glmjax")
    for e in m.get("canaries", []):
        try:
            alphabet.encode(e["prefix"] + e["secret"], record=e["id"])
        except (KeyError, TypeError):
            raise InputFileError(f"{p}: a canary entry lacks id/prefix/secret") from None
    return m


# ------------------------------------------------------------------------------------------------
# Planting
# ------------------------------------------------------------------------------------------------
def parse_schedule(text: str | Sequence[int]) -> list[int]:
    """``"1,4,16,64"`` -> [1, 4, 16, 64]; every count must be a positive integer."""
    items = text.split(",") if isinstance(text, str) else list(text)
    try:
        sched = [int(x) for x in items if str(x).strip() != ""]
    except ValueError:
        raise ConfigError(f"--schedule must be comma-separated positive integers (got {text!r})") from None
    if not sched or min(sched) < 1:
        raise ConfigError(f"--schedule must be comma-separated positive integers (got {text!r})")
    return sched


@dataclass
class PlantResult:
    """What :func:`plant` wrote."""

    store: Path
    manifest: Path
    manifest_sha256: str
    summary: dict[str, Any]


def default_manifest_path(out: str | os.PathLike) -> Path:
    """``PLANTED.h5`` -> ``PLANTED.canaries.json`` (next to the planted store)."""
    p = Path(out)
    return p.with_name(p.stem + ".canaries.json")


# copies one plant may write: every copy is a store row and a placement record in the manifest
MAX_COPIES = 1_000_000


def plant(store_path: str | os.PathLike, manifest_path: str | os.PathLike, out: str | os.PathLike,
          schedule: Sequence[int], seed: int, mode: str = "standalone", one_run: bool = False,
          manifest_out: str | os.PathLike | None = None,
          on_rows: Callable[[int, int], None] | None = None, batch_rows: int = 4096) -> PlantResult:
    """Plant the canaries of a manifest into a copy of a store.

    Args:
      store_path: input SequenceStore (left unchanged).
      manifest_path: manifest from :func:`build_manifest`.
      out: planted SequenceStore to write (its split, if the input had one, is not copied).
      schedule: repetition counts; canaries are spread evenly over them.
      seed: seed of the assignment, the one-run coin flips, and splice windows/offsets.
      mode: ``standalone`` (copies are extra records) or ``splice`` (copies replace a segment of
        distinct random windows).
      one_run: include each canary with probability 1/2 (the others are held out).
      manifest_out: planted manifest (default: ``<out stem>.canaries.json``).

    Raises:
      CanaryError: the schedule does not fit (more splice copies than eligible windows, canaries
        longer than the windows), a secret occurs in the store, or the store already holds them.
    """
    from glmjax.data.provenance import file_sha256
    from glmjax.data.store import COLUMNS, SequenceStore, SequenceStoreWriter
    from glmjax.storage import base_provenance

    if mode not in ("standalone", "splice"):
        raise ConfigError(f"--mode must be standalone or splice (got {mode!r})")
    schedule = parse_schedule(schedule)
    manifest = load_manifest(manifest_path)
    out = Path(out)
    manifest_out = Path(manifest_out) if manifest_out is not None else default_manifest_path(out)
    if out.resolve() == Path(store_path).resolve():
        raise ConfigError("--out must differ from the input store (planting writes a new store)")
    entries = manifest["canaries"]
    canaries = [e for e in entries if e.get("role", "canary") == "canary"]
    if not canaries:
        raise CanaryError(f"{manifest_path} has no canaries to plant (controls are never planted)")
    with SequenceStore(store_path) as store:
        store_sha = file_sha256(store_path)
        n_rows = len(store)
        lengths = store.lengths()
        present = set(store.column("canary")) - {""}
        clash = sorted(present & {e["id"] for e in entries})
        if clash:
            raise CanaryError(f"{store_path} already contains {clash[0]}; plant into the store without "
                              "canaries")
        _screen_against(store, manifest, store_sha, entries)
        rng = np.random.default_rng(seed)
        n = len(canaries)
        assigned = np.empty(n, np.int64)
        assigned[rng.permutation(n)] = np.resize(np.asarray(schedule, np.int64), n)
        included = rng.random(n) < 0.5 if one_run else np.ones(n, bool)
        reps = np.where(included, assigned, 0)
        codes = {e["id"]: alphabet.encode(e["prefix"] + e["secret"], record=e["id"]) for e in canaries}
        clen = {cid: c.size for cid, c in codes.items()}
        copies = int(reps.sum())
        if copies > MAX_COPIES:  # refused before anything is allocated
            nt = sum(int(r) * clen[e["id"]] for e, r in zip(canaries, reps, strict=True))
            raise CanaryError(f"the schedule plants {copies:,} canary copies ({nt / 1e6:,.0f} M nt, one manifest "
                              f"record each), more than the {MAX_COPIES:,} a planted store holds; use smaller "
                              "repetition counts or fewer canaries")
        splice_at: dict[int, tuple[str, int]] = {}
        kinds = store.column("kind")
        if mode == "splice":
            longest = max(clen.values())
            eligible = np.flatnonzero((kinds != "canary") & (lengths >= longest))
            if lengths.size == 0 or lengths.max() < longest:
                e0 = canaries[0]
                raise CanaryError(
                    f"canaries are {longest} nt (prefix {len(e0['prefix'])} + secret {len(e0['secret'])}) "
                    f"but the longest window of {store_path} is {int(lengths.max(initial=0))} nt; use "
                    "shorter canaries or --mode standalone")
            if copies > eligible.size:
                raise CanaryError(
                    f"the schedule needs {copies:,} spliced copies but {store_path} has only "
                    f"{eligible.size:,} windows of at least {longest} nt (one copy per window); use a "
                    "smaller schedule, fewer canaries, or --mode standalone")
            rows = rng.choice(eligible, size=copies, replace=False)
            k = 0
            for e, r in zip(canaries, reps, strict=True):
                for _ in range(int(r)):
                    row = int(rows[k])
                    splice_at[row] = (e["id"], int(rng.integers(0, lengths[row] - clen[e["id"]] + 1)))
                    k += 1
        ids = store.column("id")
        placements: dict[str, list[dict[str, Any]]] = {e["id"]: [] for e in canaries}
        if mode == "splice":
            for row in sorted(splice_at):
                cid, off = splice_at[row]
                placements[cid].append({"row": row, "id": str(ids[row]), "offset": off})
        else:
            row = n_rows
            for e, r in zip(canaries, reps, strict=True):
                for j in range(int(r)):
                    placements[e["id"]].append({"row": row, "id": f"{e['id']}/{j + 1}", "offset": 0})
                    row += 1
        for e, a, inc, r in zip(canaries, assigned, included, reps, strict=True):
            e.update({"assigned_repetitions": int(a), "included": bool(inc), "repetitions": int(r),
                      "placements": placements[e["id"]]})
        for e in entries:
            if e.get("role") == "control":
                e.update({"included": False, "repetitions": 0, "placements": []})
        per_rep = Counter(int(r) for r in reps if r > 0)
        summary = {
            "mode": mode, "schedule": schedule, "seed": seed, "one_run": one_run,
            "canaries": n, "included": int(included.sum()), "held_out": int((~included).sum()),
            "controls": len(entries) - n, "copies": copies,
            "canaries_per_repetition": {str(k): per_rep[k] for k in sorted(per_rep)},
            "input_rows": n_rows, "output_rows": n_rows + (copies if mode == "standalone" else 0),
            "input_split_dropped": store.has_split,
        }
        manifest["planting"] = {**summary, "store": {"path": str(store_path), "sha256": store_sha},
                                "output": str(out), "manifest": str(manifest_out)}
        from glmjax.data.provenance import bytes_sha256, canonical_json, write_bytes_atomic

        data = canonical_json(manifest)
        msha = bytes_sha256(data)
        prov = base_provenance(seed=seed, parent={"path": str(store_path), "sha256": store_sha,
                                                  "provenance": store.provenance},
                               planting={k: summary[k] for k in ("mode", "schedule", "seed", "one_run")})
        attr = {**summary, "manifest_sha256": msha, "manifest": str(manifest_out),
                "store_sha256": store_sha}
        with SequenceStoreWriter(out, provenance=prov, attrs={"canary_manifest": attr}) as writer:
            for lo in range(0, n_rows, batch_rows):
                recs = store.records(lo, min(lo + batch_rows, n_rows))
                for i, rec in enumerate(recs, start=lo):
                    if i in splice_at:
                        cid, off = splice_at[i]
                        seq = rec.codes.copy()
                        seq[off:off + clen[cid]] = codes[cid]
                        rec.codes, rec.canary = seq, cid
                writer.add(recs)
                if on_rows is not None:
                    on_rows(len(recs), sum(r.codes.size for r in recs))
            if mode == "standalone":
                _append_standalone(writer, canaries, codes, COLUMNS, on_rows)
            write_bytes_atomic(manifest_out, data)
    return PlantResult(store=out, manifest=manifest_out, manifest_sha256=msha, summary=summary)


def _append_standalone(writer: Any, canaries: list[dict[str, Any]], codes: dict[str, np.ndarray],
                       columns: dict[str, Any], on_rows: Callable[[int, int], None] | None) -> None:
    from glmjax.data.store import Record

    recs = []
    for e in canaries:
        for p in e["placements"]:
            recs.append(Record(id=p["id"], codes=codes[e["id"]], source="canary", start=0, strand=1,
                               kind="canary", canary=e["id"], group=""))
    for lo in range(0, len(recs), 4096):
        writer.add(recs[lo:lo + 4096])
        if on_rows is not None:
            on_rows(len(recs[lo:lo + 4096]), sum(r.codes.size for r in recs[lo:lo + 4096]))


def _screen_against(store: Any, manifest: dict[str, Any], store_sha: str,
                    entries: list[dict[str, Any]]) -> None:
    """Refuse to plant canaries whose secret occurs in the store (skipped when already screened)."""
    screen = manifest.get("screen") or {}
    if screen.get("sha256") and screen.get("sha256") == store_sha:
        return
    gen = manifest.get("generator", {})
    secrets = [e["secret"] for e in entries]
    k = int(gen.get("screen_k") or min(min(len(s) for s in secrets), MAX_PACKED_K))
    kset = KmerSet.from_store(store, k)
    for e in entries:
        codes = alphabet.encode(e["secret"], record=e["id"])[None, :]
        if secret_in_store(codes, kset)[0]:
            raise CanaryError(f"the secret of {e['id']} occurs in {store.path} ({k}-mer match); "
                              f"regenerate the canaries with --screen {store.path}")
