"""``glmjax data import-vcf``: individuals of a phased VCF/BCF as haplotype windows in a SequenceStore.

The ``data`` command group adds this subcommand by calling :func:`register_into` with its
subparsers.
"""

from __future__ import annotations

import argparse
import time

from glmjax.commands import argtypes as A
from glmjax.progress import progress

_HELP = """\
Build both haplotypes of every sample of a phased VCF/BCF over the given regions of a reference
FASTA (SNVs and indels applied) and write their windows into a SequenceStore.

Rows: kind haplotype, group = sample (split with `glmjax data split --by group`), source =
SAMPLE:1|2, id = SAMPLE:h1|h2:CONTIG:START-END in 1-based inclusive reference coordinates (tracked
through indels). The store also holds /cohort: non-reference alleles per window, the variant sites
of each window and the cohort's allele frequencies (for individual-level membership inference).

Rules: a REF allele that differs from the reference is an error; heterozygous unphased calls are
refused unless --unphased random (seeded); missing calls are refused unless --missing ref; an
allele overlapping one already applied to the same haplotype is skipped and counted; symbolic
alleles (<DEL>, *) keep the reference (counted); records crossing a region boundary are not
applied (counted). The VCF is fetched through its .tbi/.csi index when there is one, else
streamed. The reference must be plain or bgzip FASTA with (or where glmjax can write) its
.fai/.gzi index.
"""


def register_into(data_subparsers: argparse._SubParsersAction) -> None:
    """Add the ``import-vcf`` subcommand to the ``data`` group's subparsers."""
    p = data_subparsers.add_parser("import-vcf", help="individuals of a phased VCF as haplotype windows",
                                   description=_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reference", required=True, metavar="FA", help="reference FASTA (plain or bgzip, "
                   "indexed with samtools faidx)")
    p.add_argument("--vcf", required=True, metavar="VCF", help="phased VCF/BCF (uncompressed or bgzip; "
                   "indexed or not; a plain-gzip file is refused with the bgzip command to convert it)")
    p.add_argument("--region", action="append", default=[], metavar="CONTIG[:START-END]",
                   help="region to import (1-based, inclusive; repeatable)")
    p.add_argument("--regions", default=None, metavar="BED", help="BED file of further regions "
                   "(0-based, half-open)")
    p.add_argument("--samples", default=None, metavar="FILE", help="samples to import, one per line "
                   "(default: all samples of the VCF)")
    p.add_argument("--window", required=True, type=A.positive_int, metavar="N", help="window length in nucleotides")
    p.add_argument("--stride", type=A.positive_int, default=None, metavar="S", help="distance between window starts "
                   "on the haplotype (default: --window)")
    p.add_argument("--out", required=True, metavar="STORE", help="SequenceStore to write")
    p.add_argument("--unphased", choices=("refuse", "random"), default="refuse",
                   help="heterozygous unphased calls: refuse (default) or order the alleles at random")
    p.add_argument("--missing", choices=("refuse", "ref"), default="refuse",
                   help="missing calls: refuse (default) or use the reference allele")
    p.add_argument("--seed", type=A.seed, default=None, help="seed of --unphased random")
    p.add_argument("--max-n-fraction", type=A.fraction, default=0.1, help="drop windows with a larger "
                   "fraction of N (default 0.1)")
    p.set_defaults(func=cmd_import_vcf, io=(("reference", "vcf", "samples"), ("out",)))


def cmd_import_vcf(args: argparse.Namespace) -> int:
    """Run ``glmjax data import-vcf`` and print its summary."""
    from glmjax.data.vcf import ImportOptions, import_vcf

    opts = ImportOptions(window=args.window, stride=args.stride, unphased=args.unphased, missing=args.missing,
                         seed=args.seed, max_n_fraction=args.max_n_fraction)
    t0 = time.perf_counter()
    with progress("importing haplotypes", None, "hap") as bar:
        def on_progress(stage: str, n: int, bases: int) -> None:
            if stage == "haplotype":
                bar.advance(1, tokens=bases)

        s = import_vcf(args.reference, args.vcf, args.out, opts, regions=args.region, bed=args.regions,
                       samples=args.samples, on_progress=on_progress)
    items = {
        "samples": s["samples"], "haplotypes": s["haplotypes"],
        "regions": f"{s['regions']} ({s['region_bases']:,} bases)",
        "VCF access": "index" if s["indexed_vcf"] else "streamed (no index)",
        "records in regions": s["records"], "resamplable sites": s["resamplable_sites"],
        "variants applied": s["variants_applied"],
        "skipped (overlap)": s["skipped_overlap"], "skipped (symbolic)": s["skipped_symbolic"],
        "records crossing a boundary": s["records_straddling"],
        "missing calls": f"{s['missing_calls']:,}" + (" (as reference)" if s["missing_calls"] else ""),
        "unphased het calls": f"{s['unphased_het']:,}" + (" (random phase)" if s["unphased_het"] else ""),
        "windows": s["windows"], "dropped (N)": s["dropped_n"], "tails dropped": s["tails_dropped"],
        "seconds": round(time.perf_counter() - t0, 2),
    }
    print(f"wrote {args.out}")
    width = max(len(k) for k in items)
    for k, v in items.items():
        shown = f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else v
        print(f"  {k:<{width}}  {shown}")
    return 0
