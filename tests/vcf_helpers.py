"""Small synthetic cohorts (reference FASTA + VCF) and an independent haplotype builder for the
VCF-import and cohort-audit tests."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pysam

from glmjax.errors import GlmjaxError

SAMPLES = ("S1", "S2", "S3")


@dataclass
class Rec:
    """One VCF record: 1-based position, REF, ALTs and a GT string per sample."""

    contig: str
    pos: int
    ref: str
    alts: tuple[str, ...]
    gts: dict[str, str]


def random_reference(seed: int = 3, lengths: dict[str, int] | None = None) -> dict[str, str]:
    rng = np.random.default_rng(seed)
    lengths = lengths or {"c1": 200, "c2": 60}
    return {c: "".join(np.array(list("ACGT"))[rng.integers(0, 4, n)]) for c, n in lengths.items()}


def other_base(b: str, k: int = 1) -> str:
    return "ACGT"[("ACGT".index(b.upper()) + k) % 4]


def synthetic_records(ref: dict[str, str]) -> list[Rec]:
    """SNV, insertion, deletion, an SNV inside the deletion (overlap on S1 h1), a multiallelic SNV,
    a symbolic allele, a complex replacement, a record crossing the end of region c1:1-190, and an
    SNV on c2."""
    r = ref["c1"]

    def g(s1="0|0", s2="0|0", s3="0|0"):
        return {"S1": s1, "S2": s2, "S3": s3}

    return [
        Rec("c1", 11, r[10], (other_base(r[10]),), g("1|0", "0|1")),
        Rec("c1", 31, r[30], (r[30] + "GGG",), g("0|1", "1|1")),
        Rec("c1", 51, r[50:54], (r[50],), g("1|0")),
        Rec("c1", 52, r[51], (other_base(r[51]),), g("1|0", "0|0", "0|1")),
        Rec("c1", 81, r[80], (other_base(r[80], 1), other_base(r[80], 2)), g("0|0", "2|1", "1|0")),
        Rec("c1", 101, r[100], ("<DEL>",), g("0|0", "0|0", "0|1")),
        Rec("c1", 121, r[120:122], ("TTT",), g("0|0", "1|0")),
        Rec("c1", 189, r[188:192], (r[188],), g("1|1")),
        Rec("c2", 5, ref["c2"][4], (other_base(ref["c2"][4]),), g("1|1")),
    ]


def write_reference(folder: Path, ref: dict[str, str], name: str = "ref.fa.gz") -> Path:
    """bgzip FASTA (its .fai/.gzi are built on first open)."""
    plain = folder / (name.removesuffix(".gz") + ".txt")
    plain.write_text("".join(f">{c}\n{s}\n" for c, s in ref.items()))
    out = folder / name
    pysam.tabix_compress(str(plain), str(out), force=True)
    plain.unlink()
    return out


def vcf_text(records: list[Rec], contigs: dict[str, int], samples=SAMPLES, fmt_extra: bool = False) -> str:
    head = ["##fileformat=VCFv4.2"]
    head += [f"##contig=<ID={c},length={n}>" for c, n in contigs.items()]
    head += ['##ALT=<ID=DEL,Description="Deletion">',
             '##INFO=<ID=END,Number=1,Type=Integer,Description="End position">',
             '##INFO=<ID=AF,Number=A,Type=Float,Description="Allele Frequency">',
             '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">']
    if fmt_extra:
        head.append('##FORMAT=<ID=DP,Number=1,Type=Integer,Description="Depth">')
    head.append("\t".join(["#CHROM", "POS", "ID", "REF", "ALT", "QUAL", "FILTER", "INFO", "FORMAT", *samples]))
    lines = []
    for k, r in enumerate(records):
        gts = [r.gts[s] + (":7" if fmt_extra else "") for s in samples]
        lines.append("\t".join([r.contig, str(r.pos), f"v{k}", r.ref, ",".join(r.alts), ".", "PASS", ".",
                                "GT:DP" if fmt_extra else "GT", *gts]))
    return "\n".join(head + lines) + "\n"


def write_vcf(folder: Path, records: list[Rec], contigs: dict[str, int], name: str = "calls.vcf.gz",
              index: bool = False, samples=SAMPLES, fmt_extra: bool = False) -> Path:
    """bgzip VCF, with a .tbi index when ``index``."""
    plain = folder / (name.removesuffix(".gz") + ".txt")
    plain.write_text(vcf_text(records, contigs, samples, fmt_extra))
    out = folder / name
    pysam.tabix_compress(str(plain), str(out), force=True)
    plain.unlink()
    if index:
        pysam.tabix_index(str(out), preset="vcf", force=True)
    return out


def expected_haplotype(ref: str, records, start: int, end: int, ref_offset: int = 0
                       ) -> tuple[str, list[int], list[tuple[int, int]]]:
    """Loop-based haplotype of [start, end) (0-based): (sequence, reference position of every base,
    haplotype spans of applied alleles). ``records``: iterable of (pos0, REF, ALTs, allele index);
    ``ref`` holds the reference from position ``ref_offset`` on."""
    seq: list[str] = []
    refpos: list[int] = []
    spans: list[tuple[int, int]] = []
    cur, last_end = start, -1
    for s, r, alts, a in records:
        e = s + len(r)
        if s < start or e > end or a <= 0:
            continue
        alt = alts[a - 1]
        if alt.startswith("<") or alt == "*" or s < last_end:
            continue
        seq.append(ref[cur - ref_offset:s - ref_offset].upper())
        refpos.extend(range(cur, s))
        spans.append((len(refpos), len(refpos) + len(alt)))
        seq.append(alt.upper())
        refpos.extend(s + min(j, len(r) - 1) for j in range(len(alt)))
        cur, last_end = e, e
    seq.append(ref[cur - ref_offset:end - ref_offset].upper())
    refpos.extend(range(cur, end))
    return "".join(seq), refpos, spans


def synthetic_expected(ref: dict[str, str], records: list[Rec], sample: str, hap: int, contig: str,
                       start: int, end: int):
    recs = [(r.pos - 1, r.ref, r.alts, int(r.gts[sample].replace("/", "|").split("|")[hap - 1]))
            for r in records if r.contig == contig]
    return expected_haplotype(ref[contig], recs, start, end)


def run_cli(argv: list[str]) -> tuple[int, str]:
    """Run ``glmjax <argv>``; returns (exit status, how it was run).

    Through :func:`glmjax.cli.main` when ``data import-vcf`` is registered there; otherwise the
    subcommand is added to the real parser's ``data`` group with
    :func:`glmjax.commands.data_vcf.register_into` and run with the same error handling.
    """
    from glmjax.cli import build_parser, main
    from glmjax.commands.data_vcf import register_into
    from glmjax.storage import set_command_line

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    data = sub.choices["data"]
    dsub = next(a for a in data._actions if isinstance(a, argparse._SubParsersAction))
    if "import-vcf" in dsub.choices:
        return main([str(a) for a in argv]), "glmjax.cli.main"
    register_into(dsub)
    args = parser.parse_args([str(a) for a in argv])
    set_command_line(["glmjax", *map(str, argv)])
    try:
        return int(args.func(args) or 0), "test parser"
    except GlmjaxError as e:
        import sys

        print(f"glmjax: error: {e}", file=sys.stderr)
        return 2, "test parser"
    finally:
        set_command_line(None)
