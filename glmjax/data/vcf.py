"""Cohort import: a reference FASTA + a phased VCF/BCF + regions -> per-individual haplotype windows.

Every selected sample contributes two haplotypes per region: the reference sequence of the region
with the sample's alleles of that haplotype applied (SNVs, MNPs, insertions, deletions, complex
replacements). Each haplotype is cut into windows of ``window`` nucleotides at ``0, stride,
2*stride, ...`` (haplotype coordinates); the tail after the last full window is dropped (counted),
and a window whose fraction of N exceeds ``max_n_fraction`` is dropped (counted), as in
``glmjax data window``.

Rows of the SequenceStore: ``kind="haplotype"``, ``group=<sample>`` (the individual, for
group-wise splits), ``source=<sample>:<1|2>``, ``start`` = 0-based *reference* position of the
window's first base, and ``id = <sample>:h<1|2>:<contig>:<start>-<end>`` with 1-based inclusive
*reference* coordinates of the first and last base. Coordinates are tracked through indels: every
haplotype base maps to a reference position (a reference base to itself; base ``j`` of an allele
replacing the reference span ``[s, s + len(REF))`` to ``s + min(j, len(REF) - 1)``, so inserted bases
map to the last REF base). Should two windows of one haplotype map to the same reference
interval (possible only inside long insertions with a small stride), the later ones get ``#2``,
``#3``, ... appended to their id.

Rules, one per input problem (user mistakes raise :class:`glmjax.errors.GlmjaxError` subclasses with a
one-line message naming the record ``contig:position`` and the sample):

* **REF mismatch**: a record whose REF differs from the reference is an error (an N on either
  side matches any base), whatever its genotypes: the VCF is for another assembly or the
  contig names are swapped.
* **unphased genotypes**: a heterozygous call with ``/`` is refused by default
  (``unphased="refuse"``); ``unphased="random"`` orders its two alleles at random (seeded).
  Homozygous unphased calls need no phase and are accepted.
* **missing calls** (``.``): refused by default (``missing="refuse"``), because turning them into
  reference alleles silently would make haplotypes look more like the reference than they are;
  ``missing="ref"`` uses the reference allele and counts it. Allele frequencies are computed over
  called alleles only.
* **overlapping variants on one haplotype**: records are applied in file order; an allele whose
  REF span overlaps an allele already applied to the same haplotype is skipped and counted
  (``skipped_overlap``); the haplotype keeps the earlier one.
* **symbolic alleles** (``<DEL>``, ``*``, breakends) cannot be spelled out; a haplotype carrying
  one keeps the reference there (counted as ``skipped_symbolic``).
* **records crossing a region boundary** (REF span partly outside the region) are not applied
  (``records_straddling``).
* contigs absent from the reference, sample names absent from the VCF, haploid or polyploid calls,
  GT allele indices beyond the ALT list, an unsorted VCF: errors.
* **reference file**: a plain FASTA or a bgzip FASTA with its ``.fai`` (and ``.gzi``) index;
  a missing index is built next to the file when possible; plain-gzip FASTA cannot be indexed
  (error explaining ``bgzip`` + ``samtools faidx``).
* **VCF file**: plain, gzip or bgzip VCF, or BCF. With an index (``.tbi`` or ``.csi`` next to it) the
  regions are fetched; without one the file is streamed once and records are filtered by region
  (the stream stops once every region has been passed).

Cohort data in the store (group ``/cohort``, written into the ``.partial`` file before it is
renamed, so it is as atomic as the rows):

``/cohort/alt_alleles``       int32 [N]  non-reference alleles of the row's haplotype overlapping
                              the window (an applied allele occupies haplotype positions
                              ``[h, h + len(ALT))``)
``/cohort/haplotype``         int8 [N]   1 or 2
``/cohort/sites/*``           one entry per VCF record in the regions, in order: ``contig`` str,
                              ``pos`` int64 (0-based), ``ref`` str, ``alt`` str (comma-joined),
                              ``called`` int64 (called alleles, AN), ``resamplable`` bool (SNV whose
                              position no other record touches), and the alleles REF, ALT1, ...
                              as a ragged table: ``allele_offsets`` int64 [V + 1],
                              ``allele_count`` int64, ``allele_freq`` float64 (count / called;
                              0 where nothing is called)
``/cohort/row_sites/*``       for every row, the resamplable sites inside its window (ragged over
                              rows): ``offsets`` int64 [N + 1], ``site`` int64 (index into
                              ``/cohort/sites``), ``offset`` int32 (0-based position in the window),
                              ``allele`` int16 (the haplotype's allele there: 0 = REF)

Attributes of ``/cohort``: ``schema`` = ``glmjax.Cohort``, ``schema_version``, ``samples``
(JSON list, store order), ``regions``, ``options`` and ``counts`` (the import summary).
"""

from __future__ import annotations

import bisect
import os
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from glmjax import alphabet
from glmjax.errors import ConfigError, InputFileError, SequenceError, StoreError

COHORT_SCHEMA = "glmjax.Cohort"
COHORT_SCHEMA_VERSION = 1
UNPHASED_MODES = ("refuse", "random")
MISSING_MODES = ("refuse", "ref")
_BATCH_ROWS = 8192
_REGION = re.compile(r"^(?P<name>.+):(?P<start>[\d,]+)-(?P<end>[\d,]+)$")
_FIX_REFERENCE = ("recompress it with bgzip and index it: `zcat {p} | bgzip > {stem}.bgz.fa.gz && "
                  "samtools faidx {stem}.bgz.fa.gz`")


# ------------------------------------------------------------------------------------------------
# Options, regions, samples
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Region:
    """A reference interval, 0-based half-open."""

    contig: str
    start: int
    end: int

    @property
    def label(self) -> str:
        """``contig:start-end`` in 1-based inclusive coordinates."""
        return f"{self.contig}:{self.start + 1}-{self.end}"

    @property
    def length(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class ImportOptions:
    """How haplotypes are built and windowed (see the module docstring for the rules)."""

    window: int
    stride: int | None = None
    unphased: str = "refuse"
    missing: str = "refuse"
    seed: int | None = None
    max_n_fraction: float = 0.1

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ConfigError(f"--window must be at least 1 (got {self.window})")
        if self.stride is not None and self.stride < 1:
            raise ConfigError(f"--stride must be at least 1 (got {self.stride})")
        if self.unphased not in UNPHASED_MODES:
            raise ConfigError(f"--unphased must be one of {', '.join(UNPHASED_MODES)} (got {self.unphased!r})")
        if self.missing not in MISSING_MODES:
            raise ConfigError(f"--missing must be one of {', '.join(MISSING_MODES)} (got {self.missing!r})")
        if self.unphased == "random" and self.seed is None:
            raise ConfigError("--unphased random draws the phase at random: pass --seed")
        if not 0.0 <= self.max_n_fraction <= 1.0:
            raise ConfigError(f"--max-n-fraction must be in [0, 1] (got {self.max_n_fraction})")

    @property
    def step(self) -> int:
        return self.window if self.stride is None else self.stride

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["stride"] = self.step
        return d


def parse_region(text: str, lengths: dict[str, int]) -> Region:
    """``contig`` or ``contig:start-end`` (1-based inclusive, commas allowed) -> :class:`Region`.

    Raises:
      InputFileError: unknown contig (lists the reference's contigs) or bounds outside it.
    """
    text = text.strip()
    if text in lengths:
        return Region(text, 0, lengths[text])
    m = _REGION.match(text)
    if not m:
        if ":" not in text:
            _missing_contig(text, lengths, "--region")
        raise ConfigError(f"region {text!r}: expected CONTIG or CONTIG:START-END (1-based, inclusive)")
    name = m["name"]
    start, end = int(m["start"].replace(",", "")), int(m["end"].replace(",", ""))
    if name not in lengths:
        _missing_contig(name, lengths, f"region {text!r}")
    if not 1 <= start <= end <= lengths[name]:
        raise InputFileError(f"region {text!r} is outside contig {name} (1..{lengths[name]:,})")
    return Region(name, start - 1, end)


def _missing_contig(name: str, lengths: dict[str, int], where: str) -> None:
    names = list(lengths)
    shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
    raise InputFileError(f"{where}: contig {name!r} is absent from the reference (it has: {shown}); "
                         "check the contig naming (e.g. '20' vs 'chr20') and the assembly")


def read_bed(path: str | os.PathLike, lengths: dict[str, int]) -> list[Region]:
    """Regions of a BED file (0-based half-open; ``#``, ``track`` and ``browser`` lines skipped)."""
    p = _check_file(path, "BED")
    out = []
    with open(p, encoding="utf-8", errors="replace") as fh:
        for k, line in enumerate(fh, 1):
            if not line.strip() or line.startswith(("#", "track", "browser")):
                continue
            f = line.split()
            if len(f) < 3:
                raise InputFileError(f"{p}, line {k}: a BED line needs CONTIG START END (got {line.strip()!r})")
            try:
                start, end = int(f[1]), int(f[2])
            except ValueError:
                raise InputFileError(f"{p}, line {k}: START and END must be integers (got {f[1]!r} "
                                     f"{f[2]!r})") from None
            if f[0] not in lengths:
                _missing_contig(f[0], lengths, f"{p}, line {k}")
            if not 0 <= start < end <= lengths[f[0]]:
                raise InputFileError(f"{p}, line {k}: interval {f[0]}:{start}-{end} (0-based, half-open) "
                                     f"is empty or outside {f[0]} (length {lengths[f[0]]:,})")
            out.append(Region(f[0], start, end))
    if not out:
        raise InputFileError(f"{p} lists no regions")
    return out


def read_sample_file(path: str | os.PathLike) -> list[str]:
    """Sample names, one per line (blank lines and ``#`` comments ignored, duplicates refused)."""
    p = _check_file(path, "sample list")
    names: list[str] = []
    seen: dict[str, int] = {}
    with open(p, encoding="utf-8", errors="replace") as fh:
        for k, line in enumerate(fh, 1):
            name = line.strip()
            if not name or name.startswith("#"):
                continue
            if name in seen:
                raise InputFileError(f"{p}, line {k}: sample {name!r} is listed twice (first on line "
                                     f"{seen[name]})")
            seen[name] = k
            names.append(name)
    if not names:
        raise InputFileError(f"{p} lists no samples")
    return names


def sort_regions(regions: Sequence[Region], contigs: Sequence[str]) -> list[Region]:
    """Regions in reference order; overlapping regions are refused (their windows would repeat)."""
    order = {c: i for i, c in enumerate(contigs)}
    out = sorted(set(regions), key=lambda r: (order[r.contig], r.start, r.end))
    for a, b in zip(out, out[1:], strict=False):
        if a.contig == b.contig and b.start < a.end:
            raise ConfigError(f"regions {a.label} and {b.label} overlap; merge them")
    return out


def _check_file(path: str | os.PathLike, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise InputFileError(f"{p}: no such file")
    if p.is_dir():
        raise InputFileError(f"{p} is a folder, not a {what} file")
    if p.stat().st_size == 0:
        raise InputFileError(f"{p} is empty (0 bytes); expected a {what} file")
    return p


# ------------------------------------------------------------------------------------------------
# Reference
# ------------------------------------------------------------------------------------------------
@contextmanager
def _quiet_htslib() -> Iterator[None]:
    """Silence htslib's own stderr messages (e.g. "could not retrieve index"): errors are reported
    by glmjax, once, with what to do."""
    import pysam

    old = pysam.set_verbosity(0)
    try:
        yield
    finally:
        pysam.set_verbosity(old)


def _is_bgzf(path: Path) -> bool:
    """True for BGZF (block gzip): gzip magic with the ``BC`` extra subfield."""
    with open(path, "rb") as fh:
        head = fh.read(18)
    return len(head) >= 16 and head[:2] == b"\x1f\x8b" and head[3] & 4 == 4 and head[12:14] == b"BC"


def open_reference(path: str | os.PathLike):
    """Open an indexed reference FASTA with pysam (``pysam.FastaFile``).

    A missing ``.fai`` (and ``.gzi`` for bgzip) is built next to the file when the folder is
    writable. Plain-gzip FASTA cannot be indexed.

    Raises:
      InputFileError: missing/empty file, plain gzip, another compression, or an index that is
        absent and cannot be built.
    """
    import pysam

    p = _check_file(path, "FASTA")
    with open(p, "rb") as fh:
        magic = fh.read(2)
    stem = p.name[:-3] if p.name.endswith(".gz") else p.name
    fix = _FIX_REFERENCE.format(p=p, stem=stem.removesuffix(".fa").removesuffix(".fasta"))
    if magic == b"\x1f\x8b" and not _is_bgzf(p):
        raise InputFileError(f"{p} is plain gzip, which cannot be indexed for random access; {fix}")
    fai, gzi = Path(f"{p}.fai"), Path(f"{p}.gzi")
    bgzf = magic == b"\x1f\x8b"
    missing = not fai.exists() or (bgzf and not gzi.exists())
    try:
        with _quiet_htslib():
            fa = pysam.FastaFile(str(p))
    except (OSError, ValueError) as e:
        if missing:
            need = f"{fai.name} and {gzi.name}" if bgzf else fai.name
            raise InputFileError(f"{p} has no index ({need}) and it could not be built there ({e}); run "
                                 f"`samtools faidx {p}` where the file is writable (bgzip FASTA needs "
                                 f"both .fai and .gzi), or {fix}") from None
        raise InputFileError(f"{p}: cannot open as an indexed FASTA ({e}); {fix}") from None
    return fa


def fetch_reference(fa, region: Region, path: str | os.PathLike = "") -> np.ndarray:
    """uint8 codes of ``region`` from an open ``pysam.FastaFile``."""
    try:
        text = fa.fetch(region.contig, region.start, region.end)
    except (OSError, ValueError, KeyError) as e:
        raise InputFileError(f"{path}: cannot read {region.label} ({e})") from None
    if len(text) != region.length:
        raise InputFileError(f"{path}: {region.label} returned {len(text)} bases instead of {region.length}; "
                             "is the .fai index stale? rebuild it with `samtools faidx`")
    try:
        return alphabet.encode(text, record=region.contig, offset=region.start)
    except SequenceError as e:
        raise SequenceError(f"{path}: {e}") from None


# ------------------------------------------------------------------------------------------------
# VCF reading
# ------------------------------------------------------------------------------------------------
@dataclass
class RegionVariants:
    """The VCF records of one region, with the genotypes of the selected samples.

    ``pos`` int64 [V] 0-based reference start; ``ref`` / ``alts``: allele strings; ``labels``:
    ``contig:pos (id)`` for messages; ``gt`` int16 [V, S, 2] allele indices (-1 missing);
    ``phased`` bool [V, S].
    """

    region: Region
    pos: np.ndarray
    ref: list[str]
    alts: list[tuple[str, ...]]
    labels: list[str]
    gt: np.ndarray
    phased: np.ndarray
    straddling: int = 0

    def __len__(self) -> int:
        return int(self.pos.shape[0])


@dataclass
class ImportStats:
    """Counts of an import (the summary printed by the CLI and stored in ``/cohort`` attributes)."""

    samples: int = 0
    haplotypes: int = 0
    regions: int = 0
    region_bases: int = 0
    indexed_vcf: bool = False
    records: int = 0
    resamplable_sites: int = 0
    records_straddling: int = 0
    variants_applied: int = 0
    skipped_overlap: int = 0
    skipped_symbolic: int = 0
    missing_calls: int = 0
    unphased_het: int = 0
    windows: int = 0
    dropped_n: int = 0
    tails_dropped: int = 0
    short_haplotypes: int = 0
    bases: int = 0
    duplicate_ids: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _is_plain_gzip(path: Path) -> bool:
    """gzip but not BGZF (the blocked gzip of htslib: FEXTRA with a ``BC`` subfield)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(18)
    except OSError:
        return False
    return len(head) >= 4 and head[:2] == b"\x1f\x8b" and not (head[3] & 4 and head[12:14] == b"BC")


def _open_vcf(path: Path):
    import pysam

    if _is_plain_gzip(path):
        raise InputFileError(f"{path} is compressed with plain gzip, which htslib cannot read; recompress it with "
                             f"bgzip (`zcat {path} | bgzip > {Path(path).with_suffix('.bgz')}`) or give the "
                             "uncompressed VCF")
    try:
        with _quiet_htslib():
            return pysam.VariantFile(str(path))
    except (OSError, ValueError) as e:
        raise InputFileError(f"{path}: cannot open as VCF/BCF ({e})") from None


def vcf_index_path(path: str | os.PathLike) -> Path | None:
    """The ``.tbi`` / ``.csi`` index next to a VCF/BCF, or None."""
    for ext in (".tbi", ".csi"):
        q = Path(f"{path}{ext}")
        if q.exists():
            return q
    return None


def select_samples(vcf_samples: Sequence[str], wanted: Sequence[str] | None, vcf_path: Path) -> np.ndarray:
    """Column indices (int64 [S]) of ``wanted`` samples in the VCF (all samples when None)."""
    if not vcf_samples:
        raise InputFileError(f"{vcf_path} has no samples (a sites-only VCF); individuals need genotypes")
    if wanted is None:
        return np.arange(len(vcf_samples), dtype=np.int64)
    col = {s: i for i, s in enumerate(vcf_samples)}
    absent = [s for s in wanted if s not in col]
    if absent:
        shown = ", ".join(list(vcf_samples)[:4])
        more = f" and {len(absent) - 1} more" if len(absent) > 1 else ""
        raise InputFileError(f"sample {absent[0]!r}{more} is not in {vcf_path} ({len(vcf_samples)} samples, "
                             f"e.g. {shown}, ...)")
    return np.array([col[s] for s in wanted], dtype=np.int64)


def _parse_gts(gts: list[str], label: str, names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """GT strings -> (alleles int16 [S, 2] with -1 for '.', phased bool [S])."""
    n = len(gts)
    joined = "".join(gts)
    if len(joined) == 3 * n and joined.isascii():
        b = np.frombuffer(joined.encode("ascii"), dtype=np.uint8).reshape(n, 3)
        a = b[:, [0, 2]]
        digit = (a >= 48) & (a <= 57)
        if ((digit | (a == 46)).all()) and np.isin(b[:, 1], (47, 124)).all():
            alleles = np.where(digit, a.astype(np.int16) - 48, np.int16(-1)).astype(np.int16)
            return alleles, b[:, 1] == 124
    alleles = np.empty((n, 2), dtype=np.int16)
    phased = np.empty(n, dtype=bool)
    for i, g in enumerate(gts):
        parts = re.split(r"[|/]", g)
        if g == ".":  # a bare '.' is a missing diploid call
            alleles[i] = -1
            phased[i] = False
            continue
        if len(parts) != 2:
            kind = "haploid" if len(parts) == 1 else "polyploid"
            raise InputFileError(f"record {label}: sample {names[i]} has a {kind} genotype {g!r}; only "
                                 "diploid calls can be split into two haplotypes")
        try:
            alleles[i] = [-1 if x == "." else int(x) for x in parts]
        except ValueError:
            raise InputFileError(f"record {label}: sample {names[i]} has an unreadable genotype {g!r}") from None
        phased[i] = "|" in g
    return alleles, phased


class _Collector:
    """Collects the records of sorted regions of one contig and checks them against the reference."""

    def __init__(self, regions: list[Region], ref_codes: list[np.ndarray], cols: np.ndarray,
                 names: Sequence[str], vcf_path: Path):
        self.regions = regions
        self.starts = [r.start for r in regions]
        self.ref_codes = ref_codes
        self.cols = cols
        self.names = names
        self.path = vcf_path
        self.rows: list[list[tuple]] = [[] for _ in regions]
        self.straddling = [0] * len(regions)

    def add(self, rec, skip_before: int = -1) -> None:
        """Collect ``rec`` if it lies in a region (records starting before ``skip_before`` were seen
        by an earlier fetch and are ignored)."""
        s, ref = int(rec.start), rec.ref or ""
        if s < skip_before:
            return
        e = s + len(ref)
        j = bisect.bisect_right(self.starts, s) - 1
        if j < 0 or s >= self.regions[j].end:
            if j + 1 < len(self.regions) and e > self.regions[j + 1].start:
                self.straddling[j + 1] += 1
            return
        reg = self.regions[j]
        label = f"{rec.chrom}:{s + 1}" + (f" ({rec.id})" if rec.id else "")
        if e > reg.end:
            self.straddling[j] += 1
            return
        try:
            rc = alphabet.encode(ref, record=label)
        except SequenceError as err:
            raise InputFileError(f"{self.path}: REF of {err}") from None
        gc = self.ref_codes[j][s - reg.start:e - reg.start]
        bad = (rc != gc) & (rc != alphabet.N) & (gc != alphabet.N)
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            raise InputFileError(
                f"record {label}: REF {ref!r} does not match the reference ({alphabet.decode(gc)!r} at "
                f"{rec.chrom}:{s + 1}-{e}, first difference at {rec.chrom}:{s + k + 1}); is the VCF for "
                "another assembly?")
        fields = str(rec).rstrip("\n").split("\t")
        if len(fields) < 10 or not fields[8].startswith("GT") or fields[8][2:3] not in ("", ":"):
            raise InputFileError(f"record {label} has no GT field (FORMAT {fields[8] if len(fields) > 8 else ''!r}); "
                                 "individual haplotypes need phased genotypes")
        sample_fields = fields[9:]
        gts = [sample_fields[c] for c in self.cols.tolist()]
        if len(fields[8]) > 2:
            gts = [g.split(":", 1)[0] for g in gts]
        alleles, phased = _parse_gts(gts, label, self.names)
        alts = tuple(rec.alts or ())
        if alleles.size and int(alleles.max()) > len(alts):
            i = int(np.flatnonzero(alleles.max(axis=1) > len(alts))[0])
            raise InputFileError(f"record {label}: sample {self.names[i]} has allele {int(alleles[i].max())} "
                                 f"but the record lists {len(alts)} ALT allele(s)")
        self.rows[j].append((s, ref, alts, label, alleles, phased))

    def result(self) -> list[RegionVariants]:
        out = []
        S = len(self.cols)
        for j, reg in enumerate(self.regions):
            rows = self.rows[j]
            out.append(RegionVariants(
                region=reg, pos=np.array([r[0] for r in rows], dtype=np.int64),
                ref=[r[1] for r in rows], alts=[r[2] for r in rows], labels=[r[3] for r in rows],
                gt=np.stack([r[4] for r in rows]) if rows else np.zeros((0, S, 2), np.int16),
                phased=np.stack([r[5] for r in rows]) if rows else np.zeros((0, S), bool),
                straddling=self.straddling[j]))
        return out


def read_variants(vcf_path: str | os.PathLike, regions: Sequence[Region], ref_codes: Sequence[np.ndarray],
                  samples: Sequence[str] | None = None,
                  on_record: Callable[[int], None] | None = None) -> tuple[list[RegionVariants], list[str], bool]:
    """Read the records of ``regions`` (sorted, non-overlapping) from a VCF/BCF.

    Args:
      vcf_path: VCF (plain/gzip/bgzip) or BCF; an index next to it (``.tbi``/``.csi``) is used.
      regions: from :func:`sort_regions`.
      ref_codes: the reference codes of every region (REF alleles are checked against them).
      samples: sample names to keep (VCF order when None).
      on_record: called with the number of records read so far (progress), every 1000 records.

    Returns:
      (one :class:`RegionVariants` per region, the sample names in output order, indexed?).
    """
    p = _check_file(vcf_path, "VCF/BCF")
    vf = _open_vcf(p)
    try:
        vcf_samples = list(vf.header.samples)
        cols = select_samples(vcf_samples, samples, p)
        names = [vcf_samples[c] for c in cols.tolist()]
        declared = set(vf.header.contigs)
        by_contig: dict[str, list[int]] = {}
        for k, r in enumerate(regions):
            by_contig.setdefault(r.contig, []).append(k)
        collectors = {c: _Collector([regions[k] for k in ks], [ref_codes[k] for k in ks], cols, names, p)
                      for c, ks in by_contig.items()}
        indexed = vcf_index_path(p) is not None
        seen = _fetch_records(vf, p, regions, collectors, on_record) if indexed else \
            _stream_records(vf, p, collectors, on_record)
        for c in by_contig:
            if c not in seen and c not in declared:
                shown = ", ".join(sorted(seen)[:8]) or "none"
                raise InputFileError(f"{p} has no records on contig {c!r} and does not declare it (contigs "
                                     f"with records: {shown}); check the contig naming (e.g. '20' vs 'chr20')")
    finally:
        vf.close()
    per_contig = {c: col.result() for c, col in collectors.items()}
    out: list[RegionVariants] = []
    taken = {c: 0 for c in per_contig}
    for r in regions:
        out.append(per_contig[r.contig][taken[r.contig]])
        taken[r.contig] += 1
    return out, names, indexed


def _stream_records(vf, path: Path, collectors: dict[str, _Collector],
                    on_record: Callable[[int], None] | None) -> set[str]:
    """One pass over an unindexed file; stops after the last region of every requested contig."""
    max_end = {c: col.regions[-1].end for c, col in collectors.items()}
    pending = set(collectors)
    seen: set[str] = set()
    last_contig, last_pos, n = None, -1, 0
    try:
        with _quiet_htslib():
            for rec in vf:
                n += 1
                if on_record is not None and n % 1000 == 0:
                    on_record(n)
                c = rec.chrom
                if c != last_contig:
                    if c in seen:
                        raise InputFileError(f"{path} is not sorted (contig {c!r} appears again at record {n}); "
                                             "sort it with `bcftools sort` (and index it with `bcftools index`)")
                    pending.discard(last_contig)
                    if not pending:
                        break
                    seen.add(c)
                    last_contig, last_pos = c, -1
                s = int(rec.start)
                if s < last_pos:
                    raise InputFileError(f"{path} is not sorted ({c}:{s + 1} follows {c}:{last_pos + 1}); sort it "
                                         "with `bcftools sort`")
                last_pos = s
                col = collectors.get(c)
                if col is None:
                    continue
                if s >= max_end[c]:
                    pending.discard(c)
                    if not pending:
                        break
                    continue
                col.add(rec)
    except (OSError, ValueError) as e:
        raise InputFileError(f"{path}: cannot read record {n + 1} ({e}); is the file truncated?") from None
    return seen


def _fetch_records(vf, path: Path, regions: Sequence[Region], collectors: dict[str, _Collector],
                   on_record: Callable[[int], None] | None) -> set[str]:
    """Random access through the index: one fetch per region."""
    seen: set[str] = set()
    n = 0
    prev_end: dict[str, int] = {}
    for r in regions:
        skip_before = prev_end.get(r.contig, -1)
        prev_end[r.contig] = r.end
        try:
            with _quiet_htslib():
                it = vf.fetch(r.contig, r.start, r.end)
                for rec in it:
                    n += 1
                    if on_record is not None and n % 1000 == 0:
                        on_record(n)
                    seen.add(r.contig)
                    collectors[r.contig].add(rec, skip_before)
        except ValueError as e:
            if "contig" in str(e) or "invalid" in str(e):
                continue  # contig unknown to the index: reported by the caller if undeclared too
            raise InputFileError(f"{path}: cannot fetch {r.label} ({e})") from None
        except OSError as e:
            raise InputFileError(f"{path}: cannot fetch {r.label} ({e}); is the index stale or the file "
                                 "truncated?") from None
    return seen


# ------------------------------------------------------------------------------------------------
# Genotype rules and haplotype construction
# ------------------------------------------------------------------------------------------------
def resolve_genotypes(rv: RegionVariants, names: Sequence[str], opts: ImportOptions, rng: np.random.Generator,
                      stats: ImportStats) -> np.ndarray:
    """Apply the unphased and missing rules; returns allele indices int16 [V, S, 2] (no -1 left)."""
    gt = rv.gt.copy()
    if gt.size == 0:
        return gt
    het = (~rv.phased) & (gt[:, :, 0] != gt[:, :, 1]) & (gt >= 0).all(axis=2)
    stats.unphased_het += int(het.sum())
    if het.any():
        if opts.unphased == "refuse":
            v, s = (int(x[0]) for x in np.nonzero(het))
            raise InputFileError(f"record {rv.labels[v]}: sample {names[s]} has an unphased heterozygous genotype "
                                 f"({gt[v, s, 0]}/{gt[v, s, 1]}); phase the VCF first (e.g. SHAPEIT, Beagle) or "
                                 "pass --unphased random --seed S to order the alleles at random")
        swap = het & (rng.random(het.shape) < 0.5)
        gt[swap] = gt[swap][:, ::-1]
    miss = gt < 0
    stats.missing_calls += int(miss.sum())
    if miss.any():
        if opts.missing == "refuse":
            v, s, _ = (int(x[0]) for x in np.nonzero(miss))
            raise InputFileError(f"record {rv.labels[v]}: sample {names[s]} has a missing call; pass --missing ref "
                                 "to use the reference allele for missing calls, or impute the VCF first")
        gt[miss] = 0
    return gt


@dataclass
class AlleleTable:
    """All ALT alleles of a region's records, flattened.

    ``base[v]`` is the index of record v's ALT1 in the table; allele k >= 1 of record v is entry
    ``base[v] + k - 1``; its codes are ``codes[offsets[e]:offsets[e + 1]]``; ``symbolic[e]`` marks
    alleles that cannot be spelled out.
    """

    base: np.ndarray
    codes: np.ndarray
    offsets: np.ndarray
    symbolic: np.ndarray
    ref_len: np.ndarray

    @classmethod
    def build(cls, rv: RegionVariants) -> AlleleTable:
        base, parts, sym = [], [], []
        for alts, label in zip(rv.alts, rv.labels, strict=True):
            base.append(len(parts))
            for a in alts:
                if _is_symbolic(a):
                    parts.append(np.zeros(0, np.uint8))
                    sym.append(True)
                    continue
                try:
                    parts.append(alphabet.encode(a, record=label))
                except SequenceError as e:
                    raise InputFileError(f"ALT of {e}") from None
                sym.append(False)
        lens = np.array([x.size for x in parts], dtype=np.int64)
        return cls(base=np.array(base, np.int64),
                   codes=np.concatenate(parts) if parts else np.zeros(0, np.uint8),
                   offsets=np.concatenate([[0], np.cumsum(lens)]).astype(np.int64),
                   symbolic=np.array(sym, bool), ref_len=np.array([len(r) for r in rv.ref], np.int64))


def _is_symbolic(a: str) -> bool:
    return not a or a[0] in "<*." or "[" in a or "]" in a


@dataclass
class Haplotype:
    """One haplotype of one region.

    ``codes`` uint8 [H]; ``refpos`` int64 [H] reference position (0-based, region-relative) of each
    base; ``var_start`` / ``var_end`` int64 [K] haplotype spans of the applied alleles (sorted);
    ``var_index`` int64 [K] their records; ``var_ref_start`` / ``var_ref_len`` int64 [K] their
    region-relative REF spans; ``is_ref`` bool [H] bases copied from the reference; ``covered``
    bool [R] reference positions replaced by an applied allele.
    """

    codes: np.ndarray
    refpos: np.ndarray
    var_start: np.ndarray
    var_end: np.ndarray
    var_index: np.ndarray
    var_ref_start: np.ndarray
    var_ref_len: np.ndarray
    is_ref: np.ndarray
    covered: np.ndarray
    skipped_overlap: int = 0
    skipped_symbolic: int = 0


def apply_alleles(ref: np.ndarray, table: AlleleTable, pos: np.ndarray, alleles: np.ndarray) -> Haplotype:
    """Apply one haplotype's alleles to the region's reference codes.

    Args:
      ref: uint8 [R] reference codes of the region.
      table: the region's :class:`AlleleTable`.
      pos: int64 [V] region-relative 0-based record starts (sorted).
      alleles: int [V] this haplotype's allele index per record (0 = REF).

    Returns:
      :class:`Haplotype` (overlapping alleles after the first and symbolic alleles are skipped and
      counted).
    """
    vi = np.flatnonzero(alleles > 0)
    ent = table.base[vi] + alleles[vi].astype(np.int64) - 1
    sym = table.symbolic[ent]
    n_sym = int(sym.sum())
    vi, ent = vi[~sym], ent[~sym]
    starts = pos[vi]
    ends = starts + table.ref_len[vi]
    n_overlap = 0
    if vi.size > 1 and not np.all(starts[1:] >= np.maximum.accumulate(ends)[:-1]):
        keep = np.ones(vi.size, bool)
        last_end = -1
        for i, (s, e) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True)):
            if s < last_end:
                keep[i] = False
            else:
                last_end = e
        n_overlap = int((~keep).sum())
        vi, ent, starts, ends = vi[keep], ent[keep], starts[keep], ends[keep]
    R = ref.shape[0]
    lr = ends - starts
    covered = np.zeros(R, bool)
    covered[np.repeat(starts, lr) + (np.arange(int(lr.sum())) - np.repeat(np.cumsum(lr) - lr, lr))] = True
    kept_pos = np.flatnonzero(~covered)
    la = table.offsets[ent + 1] - table.offsets[ent]
    total = int(la.sum())
    first = np.cumsum(la) - la  # offset of each allele within the inserted bases
    within = np.arange(total, dtype=np.int64) - np.repeat(first, la)
    alt_codes = table.codes[np.repeat(table.offsets[ent], la) + within]
    alt_refpos = np.repeat(starts, la) + np.minimum(within, np.repeat(lr - 1, la))
    ins = starts - (np.cumsum(lr) - lr)  # kept reference bases before each allele (spans are disjoint)
    # One insertion builds an index into [reference | allele bases]; every per-base array is a gather.
    src = np.insert(kept_pos, np.repeat(ins, la), R + np.arange(total, dtype=np.int64))
    codes = np.concatenate([ref, alt_codes])[src]
    refpos = np.concatenate([np.arange(R, dtype=np.int64), alt_refpos])[src]
    is_ref = src < R
    var_start = ins + first
    return Haplotype(codes=codes, refpos=refpos, var_start=var_start, var_end=var_start + la, var_index=vi,
                     var_ref_start=starts, var_ref_len=lr, is_ref=is_ref, covered=covered,
                     skipped_overlap=n_overlap, skipped_symbolic=n_sym)


def resamplable_sites(rv: RegionVariants, table: AlleleTable) -> np.ndarray:
    """bool [V]: records that are SNVs (REF and every ALT one base, none symbolic) at a position no
    other record of the region touches; their alleles can be resampled in place."""
    V = len(rv)
    if V == 0:
        return np.zeros(0, bool)
    snv = table.ref_len == 1
    n_alts = np.array([len(a) for a in rv.alts], np.int64)
    ent_len = np.diff(table.offsets)
    for v in np.flatnonzero(snv):
        b = table.base[v]
        snv[v] = n_alts[v] > 0 and not table.symbolic[b:b + n_alts[v]].any() and bool((ent_len[b:b + n_alts[v]] == 1).all())
    start = rv.pos - rv.region.start
    end = start + table.ref_len
    R = rv.region.length
    touch = np.zeros(R + 1, np.int64)
    np.add.at(touch, start, 1)
    np.add.at(touch, end, -1)
    depth = np.cumsum(touch)[:R]
    return snv & (depth[start] == 1)


# ------------------------------------------------------------------------------------------------
# Import into a SequenceStore
# ------------------------------------------------------------------------------------------------
def _allele_frequencies(rv: RegionVariants, n_alleles: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(allele_count int64 [sum n_alleles], called int64 [V], allele_freq float64) over called alleles."""
    V = len(rv)
    offs = np.concatenate([[0], np.cumsum(n_alleles)]).astype(np.int64)
    g = rv.gt.reshape(V, 2 * rv.gt.shape[1]).astype(np.int64)
    called = (g >= 0).sum(axis=1)
    vv = np.broadcast_to(np.arange(V)[:, None], g.shape)
    ok = g >= 0
    counts = np.bincount(offs[:-1][vv[ok]] + g[ok], minlength=int(offs[-1])).astype(np.int64)
    freq = counts / np.maximum(np.repeat(called, n_alleles), 1)
    return counts, called, freq


def import_vcf(reference: str | os.PathLike, vcf: str | os.PathLike, out: str | os.PathLike,
               opts: ImportOptions, regions: Sequence[str] = (), bed: str | os.PathLike | None = None,
               samples: Sequence[str] | str | os.PathLike | None = None,
               on_progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    """Import the haplotypes of a cohort into a new SequenceStore at ``out``; return the summary.

    Args:
      reference: indexed reference FASTA (plain or bgzip; see :func:`open_reference`).
      vcf: phased VCF/BCF (indexed or not).
      out: SequenceStore to write (``.partial`` until complete; removed on error).
      opts: window, stride, unphased/missing rules, seed, N rule.
      regions: ``contig`` or ``contig:start-end`` strings (1-based inclusive).
      bed: BED file of further regions.
      samples: sample names, or a file with one per line (all VCF samples when None).
      on_progress: ``on_progress(stage, n, bases)``: stage ``"records"`` with records read so far,
        then ``"haplotype"`` once per haplotype written with its window count and bases.

    Returns:
      the :class:`ImportStats` as a dict.

    Raises:
      InputFileError / SequenceError / ConfigError: see the module docstring; nothing is left at
      ``out`` (nor its ``.partial``).
    """
    from glmjax.data.provenance import source_entry
    from glmjax.data.store import SequenceStoreWriter
    from glmjax.storage import base_provenance

    ref_path = _check_file(reference, "FASTA")
    vcf_path = _check_file(vcf, "VCF/BCF")
    if not regions and bed is None:
        raise ConfigError("no region given: pass --region CONTIG:START-END and/or --regions FILE.bed")
    if samples is not None and isinstance(samples, str | os.PathLike):
        sample_list: list[str] | None = read_sample_file(samples)
    else:
        sample_list = list(samples) if samples is not None else None
    fa = open_reference(ref_path)
    try:
        lengths = dict(zip(fa.references, (int(x) for x in fa.lengths), strict=True))
        regs = [parse_region(r, lengths) for r in regions]
        if bed is not None:
            regs += read_bed(bed, lengths)
        regs = sort_regions(regs, list(fa.references))
        ref_codes = [fetch_reference(fa, r, ref_path) for r in regs]
    finally:
        fa.close()
    progress_cb = (lambda n: on_progress("records", n, 0)) if on_progress is not None else None
    variants, names, indexed = read_variants(vcf_path, regs, ref_codes, sample_list, on_record=progress_cb)

    stats = ImportStats(samples=len(names), haplotypes=2 * len(names), regions=len(regs),
                        region_bases=sum(r.length for r in regs), indexed_vcf=indexed,
                        records=sum(len(v) for v in variants),
                        records_straddling=sum(v.straddling for v in variants))
    rng = np.random.default_rng([opts.seed if opts.seed is not None else 0, 0x0C0])
    resolved = [resolve_genotypes(rv, names, opts, rng, stats) for rv in variants]
    tables = [AlleleTable.build(rv) for rv in variants]

    prov = base_provenance(source={"reference": source_entry(ref_path), "vcf": source_entry(vcf_path)},
                           seed=opts.seed, regions=[r.label for r in regs], import_vcf=opts.to_dict(),
                           samples=len(names))
    L, S = opts.window, opts.step
    cohort = _CohortBuffers()
    site_base = 0
    with SequenceStoreWriter(out, provenance=prov) as writer:
        batch = _RowBatch()
        for rv, gt, table, ref in zip(variants, resolved, tables, ref_codes, strict=True):
            reg = rv.region
            rel = rv.pos - reg.start
            res = resamplable_sites(rv, table)
            stats.resamplable_sites += int(res.sum())
            res_idx = np.flatnonzero(res)
            for si, name in enumerate(names):
                for hap in (1, 2):
                    h = apply_alleles(ref, table, rel, gt[:, si, hap - 1])
                    stats.variants_applied += int(h.var_index.size)
                    stats.skipped_overlap += h.skipped_overlap
                    stats.skipped_symbolic += h.skipped_symbolic
                    n_rows, n_bases = _window_haplotype(h, reg, name, hap, L, S, opts.max_n_fraction, res_idx,
                                                        rel, gt[:, si, hap - 1], site_base, batch, cohort, stats)
                    if on_progress is not None:
                        on_progress("haplotype", n_rows, n_bases)
                    if len(batch) >= _BATCH_ROWS:
                        batch.flush(writer)
            cohort.add_sites(rv, table, res)
            site_base += len(rv)
        batch.flush(writer)
        if writer.rows == 0:
            raise ConfigError(f"no windows of length {L}: {stats.regions} region(s) of {stats.region_bases:,} bases, "
                              f"{stats.dropped_n:,} windows dropped for N > {opts.max_n_fraction}; use a shorter "
                              "--window or other regions")
        summary = stats.to_dict()
        cohort.write(writer.f, names, [r.label for r in regs], opts, summary)
        prov["counts"] = summary
        writer.set_attr("provenance", prov)
    return summary


class _RowBatch:
    """Rows waiting to be appended to the store."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.ids: list[str] = []
        self.source: list[str] = []
        self.start: list[np.ndarray] = []
        self.group: list[str] = []
        self.seqs: list[np.ndarray] = []
        self.n = 0

    def __len__(self) -> int:
        return self.n

    def add(self, ids: list[str], source: str, group: str, starts: np.ndarray, wins: np.ndarray) -> None:
        k = len(ids)
        self.ids.extend(ids)
        self.source.extend([source] * k)
        self.group.extend([group] * k)
        self.start.append(starts)
        self.seqs.append(wins)
        self.n += k

    def flush(self, writer) -> None:
        if not self.n:
            return
        seqs = np.concatenate(self.seqs)
        writer.append({"id": self.ids, "source": self.source, "start": np.concatenate(self.start),
                       "strand": np.ones(self.n, np.int8), "kind": ["haplotype"] * self.n,
                       "canary": [""] * self.n, "group": self.group}, {"seq": seqs})
        self.clear()


class _CohortBuffers:
    """The ``/cohort`` arrays, gathered while rows are written."""

    def __init__(self) -> None:
        self.alt: list[np.ndarray] = []
        self.hap: list[np.ndarray] = []
        self.rs_count: list[np.ndarray] = []
        self.rs_site: list[np.ndarray] = []
        self.rs_offset: list[np.ndarray] = []
        self.rs_allele: list[np.ndarray] = []
        self.sites: dict[str, list] = {"contig": [], "pos": [], "ref": [], "alt": [], "called": [],
                                       "resamplable": [], "n_alleles": [], "allele_count": [], "allele_freq": []}

    def add_rows(self, alt: np.ndarray, hap: int, counts: np.ndarray, site: np.ndarray, offset: np.ndarray,
                 allele: np.ndarray) -> None:
        self.alt.append(alt.astype(np.int32))
        self.hap.append(np.full(alt.shape[0], hap, np.int8))
        self.rs_count.append(counts.astype(np.int64))
        self.rs_site.append(site.astype(np.int64))
        self.rs_offset.append(offset.astype(np.int32))
        self.rs_allele.append(allele.astype(np.int16))

    def add_sites(self, rv: RegionVariants, table: AlleleTable, res: np.ndarray) -> None:
        n_alleles = np.array([1 + len(a) for a in rv.alts], np.int64)
        counts, called, freq = _allele_frequencies(rv, n_alleles)
        s = self.sites
        s["contig"] += [rv.region.contig] * len(rv)
        s["pos"].append(rv.pos)
        s["ref"] += rv.ref
        s["alt"] += [",".join(a) for a in rv.alts]
        s["called"].append(called)
        s["resamplable"].append(res)
        s["n_alleles"].append(n_alleles)
        s["allele_count"].append(counts)
        s["allele_freq"].append(freq)

    def write(self, f: h5py.File, names: list[str], regions: list[str], opts: ImportOptions,
              summary: dict[str, Any]) -> None:
        from glmjax.storage import STR, set_attr

        def cat(parts: list[np.ndarray], dtype) -> np.ndarray:
            return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)

        g = f.create_group("cohort")
        set_attr(g, "schema", COHORT_SCHEMA)
        set_attr(g, "schema_version", COHORT_SCHEMA_VERSION)
        set_attr(g, "samples", names)
        set_attr(g, "regions", regions)
        set_attr(g, "options", opts.to_dict())
        set_attr(g, "counts", summary)

        def ds(group: h5py.Group, name: str, data: np.ndarray | list[str]) -> None:
            if isinstance(data, list):
                data, dtype = np.array(data, dtype=object), STR
            else:
                dtype = data.dtype
            # HDF5 cannot chunk (hence compress) an empty dataset.
            group.create_dataset(name, data=data, dtype=dtype, compression="gzip" if len(data) else None)

        ds(g, "alt_alleles", cat(self.alt, np.int32))
        ds(g, "haplotype", cat(self.hap, np.int8))
        s = self.sites
        sg = g.create_group("sites")
        ds(sg, "contig", s["contig"])
        ds(sg, "pos", cat(s["pos"], np.int64))
        ds(sg, "ref", s["ref"])
        ds(sg, "alt", s["alt"])
        ds(sg, "called", cat(s["called"], np.int64))
        ds(sg, "resamplable", cat(s["resamplable"], bool))
        n_alleles = cat(s["n_alleles"], np.int64)
        ds(sg, "allele_offsets", np.concatenate([[0], np.cumsum(n_alleles)]).astype(np.int64))
        ds(sg, "allele_count", cat(s["allele_count"], np.int64))
        ds(sg, "allele_freq", cat(s["allele_freq"], np.float64))
        rg = g.create_group("row_sites")
        counts = cat(self.rs_count, np.int64)
        ds(rg, "offsets", np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))
        ds(rg, "site", cat(self.rs_site, np.int64))
        ds(rg, "offset", cat(self.rs_offset, np.int32))
        ds(rg, "allele", cat(self.rs_allele, np.int16))
        f.flush()


def _window_haplotype(h: Haplotype, reg: Region, name: str, hap: int, L: int, S: int, max_n: float,
                      res_idx: np.ndarray, rel: np.ndarray, alleles: np.ndarray, site_base: int,
                      batch: _RowBatch, cohort: _CohortBuffers, stats: ImportStats) -> tuple[int, int]:
    """Cut one haplotype into windows and queue its rows and cohort data; returns (rows, bases)."""
    H = h.codes.shape[0]
    W = (H - L) // S + 1 if H >= L else 0
    if H < L:
        stats.short_haplotypes += 1
    if H > 0 and (W == 0 or (W - 1) * S + L < H):
        stats.tails_dropped += 1
    if W == 0:
        return 0, 0
    a = S * np.arange(W, dtype=np.int64)
    wins = np.lib.stride_tricks.sliding_window_view(h.codes, L)[::S][:W]
    keep = np.count_nonzero(wins == alphabet.N, axis=1) <= max_n * L
    stats.dropped_n += int((~keep).sum())
    a, wins = a[keep], wins[keep]
    if a.size == 0:
        return 0, 0
    rs = h.refpos[a] + reg.start
    re_ = h.refpos[a + L - 1] + reg.start
    ids = [f"{name}:h{hap}:{reg.contig}:{s + 1}-{e + 1}" for s, e in zip(rs.tolist(), re_.tolist(), strict=True)]
    key = rs * (reg.end + 1) + re_
    if key.size > 1 and not np.all(np.diff(key) != 0):  # both ends are non-decreasing: repeats are adjacent
        seen: dict[int, int] = {}
        for i, k in enumerate(key.tolist()):
            seen[k] = seen.get(k, 0) + 1
            if seen[k] > 1:
                ids[i] += f"#{seen[k]}"
                stats.duplicate_ids += 1
    alt = np.searchsorted(h.var_start, a + L, side="left") - np.searchsorted(h.var_end, a, side="right")
    # Resamplable sites present on this haplotype: reference bases, or this haplotype's own SNV allele.
    sp = rel[res_idx]
    own_mask = np.zeros(rel.shape[0], bool)
    own_mask[h.var_index] = True
    own = own_mask[res_idx]
    present = own | ~h.covered[sp]
    hpos = np.zeros(res_idx.size, np.int64)
    # An uncovered reference position p sits after every applied allele starting before it:
    # hap position = p - (their REF bases) + (their ALT bases).
    k = np.searchsorted(h.var_ref_start, sp, side="left")
    shift = np.concatenate([[0], np.cumsum(h.var_end - h.var_start - h.var_ref_len)])
    ref_like = present & ~own
    hpos[ref_like] = sp[ref_like] + shift[k[ref_like]]
    if own.any():
        hpos[own] = h.var_start[np.searchsorted(h.var_index, res_idx[own])]
    site_ids, hpos = res_idx[present], hpos[present]
    site_allele = alleles[site_ids].astype(np.int16)
    lo = np.searchsorted(hpos, a, side="left")
    hi = np.searchsorted(hpos, a + L, side="left")
    counts = hi - lo
    row_of = np.repeat(np.arange(a.size), counts)
    idx = np.repeat(lo, counts) + (np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts))
    cohort.add_rows(alt, hap, counts, site_base + site_ids[idx], hpos[idx] - a[row_of], site_allele[idx])
    batch.add(ids, f"{name}:{hap}", name, rs.astype(np.int64), wins)
    stats.windows += int(a.size)
    stats.bases += int(a.size) * L
    return int(a.size), int(a.size) * L


# ------------------------------------------------------------------------------------------------
# Reading the cohort data back
# ------------------------------------------------------------------------------------------------
@dataclass
class CohortData:
    """The ``/cohort`` group of a store (see the module docstring for every array)."""

    samples: list[str]
    regions: list[str]
    counts: dict[str, Any]
    alt_alleles: np.ndarray
    haplotype: np.ndarray
    site_contig: np.ndarray
    site_pos: np.ndarray
    site_ref: np.ndarray
    site_alt: np.ndarray
    site_called: np.ndarray
    site_resamplable: np.ndarray
    allele_offsets: np.ndarray
    allele_count: np.ndarray
    allele_freq: np.ndarray
    row_offsets: np.ndarray
    row_site: np.ndarray
    row_offset: np.ndarray
    row_allele: np.ndarray

    @property
    def n_sites(self) -> int:
        return int(self.site_pos.shape[0])

    def allele_bases(self) -> np.ndarray:
        """uint8 [V, A] nucleotide code of allele k (0 = REF) of every single-base site; 255 where
        the allele is not one base or does not exist (A = the largest allele count)."""
        n_all = np.diff(self.allele_offsets)
        A = int(n_all.max()) if n_all.size else 1
        out = np.full((self.n_sites, A), 255, np.uint8)
        for v in np.flatnonzero(self.site_resamplable):
            alleles = [self.site_ref[v], *str(self.site_alt[v]).split(",")]
            out[v, :len(alleles)] = alphabet.encode("".join(alleles))
        return out

    def site_frequencies(self) -> np.ndarray:
        """float64 [V, A] allele frequencies (REF first), 0 beyond each site's allele count."""
        n_all = np.diff(self.allele_offsets)
        A = int(n_all.max()) if n_all.size else 1
        out = np.zeros((self.n_sites, A))
        v = np.repeat(np.arange(self.n_sites), n_all)
        k = np.arange(self.allele_freq.size) - np.repeat(self.allele_offsets[:-1], n_all)
        out[v, k] = self.allele_freq
        return out


def read_cohort(path: str | os.PathLike) -> CohortData:
    """Read the ``/cohort`` group written by :func:`import_vcf`.

    Raises:
      StoreError: the store has no cohort data (not made by ``glmjax data import-vcf``).
    """
    from glmjax.storage import get_json_attr, open_table

    f = open_table(path, "glmjax.SequenceStore")
    try:
        if "cohort" not in f:
            raise StoreError(f"{path} has no cohort data; make it with `glmjax data import-vcf`")
        g = f["cohort"]
        ver = int(get_json_attr(g, "schema_version", 0))
        if ver > COHORT_SCHEMA_VERSION:
            raise StoreError(f"{path} has cohort data v{ver}; this glmjax reads up to v{COHORT_SCHEMA_VERSION}")
        s, r = g["sites"], g["row_sites"]
        return CohortData(
            samples=list(get_json_attr(g, "samples", [])), regions=list(get_json_attr(g, "regions", [])),
            counts=dict(get_json_attr(g, "counts", {})), alt_alleles=g["alt_alleles"][:],
            haplotype=g["haplotype"][:], site_contig=s["contig"].asstr()[:], site_pos=s["pos"][:],
            site_ref=s["ref"].asstr()[:], site_alt=s["alt"].asstr()[:], site_called=s["called"][:],
            site_resamplable=s["resamplable"][:], allele_offsets=s["allele_offsets"][:],
            allele_count=s["allele_count"][:], allele_freq=s["allele_freq"][:], row_offsets=r["offsets"][:],
            row_site=r["site"][:], row_offset=r["offset"][:], row_allele=r["allele"][:])
    finally:
        f.close()
