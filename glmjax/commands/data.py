"""``glmjax data``: window genomes, synthesize sequences, make and plant canaries, split, inspect."""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from typing import Any

import numpy as np

from glmjax.commands import argtypes as A
from glmjax.progress import progress

_WINDOW_HELP = """\
Cut every record of a FASTA file (plain, gzip or bgzip) into windows and write a SequenceStore.

Windows start at 0, STRIDE, 2*STRIDE, ... (STRIDE defaults to LENGTH: no overlap). Ids are
record:start-end(+|-) with 1-based inclusive coordinates. A window whose fraction of N (IUPAC
ambiguity codes count as N) exceeds --max-n-fraction is dropped. The tail after the last full
window is dropped unless --keep-partial keeps it as one shorter window. With --rc every kept
window is followed by its reverse complement (strand -).
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``data`` command group and its subcommands."""
    data = subparsers.add_parser("data", help="prepare sequence stores: window, synth, canaries, plant, "
                                 "split, import-vcf, info", description="Prepare and inspect SequenceStores.")
    sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", parser_class=type(data))
    sub.required = True

    p = sub.add_parser("window", help="window a FASTA genome into a store", description=_WINDOW_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", metavar="INPUT.fa[.gz]", help="FASTA file (plain, gzip or bgzip)")
    p.add_argument("--out", required=True, metavar="STORE.h5", help="SequenceStore to write")
    p.add_argument("--length", required=True, type=A.positive_int, help="window length in nucleotides")
    p.add_argument("--stride", type=A.positive_int, default=None, help="distance between window starts (default: "
                   "--length)")
    p.add_argument("--rc", action="store_true", help="also store the reverse complement of every window")
    p.add_argument("--max-n-fraction", type=A.fraction, default=0.1, help="drop windows with a larger "
                   "fraction of N (default 0.1)")
    p.add_argument("--keep-partial", action="store_true", help="keep the shorter window at the end of "
                   "each record (default: drop it)")
    p.add_argument("--indexed", action="store_true", help="read through the FASTA index (.fai, and .gzi "
                   "for bgzip) with pysam instead of streaming the whole file")
    p.add_argument("--region", action="append", default=None, metavar="NAME[:START-END]",
                   help="window only this record or region (1-based, inclusive; repeatable; needs --indexed)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its "
                   "STORE.h5.partial file")
    p.set_defaults(func=cmd_window, io=(("input:INPUT",), ("out",)))

    p = sub.add_parser("synth", help="write synthetic sequences (i.i.d. or Markov fitted to a genome)",
                       description="Write NUM synthetic sequences of LENGTH bases: i.i.d. with GC "
                       "fraction --gc, or a Markov chain of order --order fitted to --fit GENOME.fa "
                       "((k+1)-mer counts + --pseudocount).")
    p.add_argument("--out", required=True, metavar="STORE.h5")
    p.add_argument("--num", required=True, type=A.positive_int, help="number of sequences")
    p.add_argument("--length", required=True, type=A.positive_int, help="length of each sequence (nt)")
    p.add_argument("--order", type=A.count, default=None, help="Markov order k (needs --fit; default 0)")
    p.add_argument("--fit", default=None, metavar="GENOME.fa", help="genome to fit the Markov chain to")
    p.add_argument("--gc", type=A.fraction, default=0.5, help="GC fraction of i.i.d. sequences (default 0.5)")
    p.add_argument("--pseudocount", type=A.non_negative, default=1.0, help="added to every (k+1)-mer count")
    p.add_argument("--seed", required=True, type=A.seed)
    p.set_defaults(func=cmd_synth, io=(("fit",), ("out",)))

    p = sub.add_parser("canaries", help="generate a canary manifest (prefix + secret)",
                       description="Generate NUM canaries (prefix + secret) and optional controls, "
                       "rejecting low-complexity secrets (homopolymer runs, low dinucleotide entropy, "
                       "DUST) and, with --screen, secrets found in a store; write a JSON manifest.")
    p.add_argument("--out", required=True, metavar="MANIFEST.json")
    p.add_argument("--num", required=True, type=A.positive_int, help="number of canaries")
    p.add_argument("--prefix-len", required=True, type=A.count, help="prefix length (nt)")
    p.add_argument("--secret-len", required=True, type=A.positive_int, help="secret length (nt)")
    p.add_argument("--seed", required=True, type=A.seed)
    p.add_argument("--screen", default=None, metavar="STORE.h5", help="reject secrets (or their reverse "
                   "complements) occurring in this store")
    p.add_argument("--screen-k", type=A.positive_int, default=None, help="k-mer length of the screen (default "
                   "min(secret length, 32))")
    p.add_argument("--gc", type=A.fraction, default=0.5, help="GC fraction of prefixes and secrets")
    p.add_argument("--controls", type=A.count, default=0, help="never-planted control canaries to add")
    p.add_argument("--max-homopolymer", type=A.positive_int, default=5, help="longest allowed run of one base")
    p.add_argument("--min-entropy", type=A.non_negative, default=0.6, help="minimum normalised dinucleotide entropy")
    p.add_argument("--max-dust", type=A.non_negative, default=2.0, help="maximum DUST score (64-nt windows)")
    p.set_defaults(func=cmd_canaries, io=(("screen",), ("out",)))

    p = sub.add_parser("plant", help="plant canaries into a copy of a store at a repetition schedule",
                       description="Plant the canaries of a manifest into a new store, each repeated "
                       "according to --schedule, as standalone records or spliced into random windows; "
                       "write the planted manifest next to it.")
    p.add_argument("store", metavar="STORE.h5")
    p.add_argument("--canaries", required=True, metavar="MANIFEST.json")
    p.add_argument("--schedule", required=True, help="repetition counts, e.g. 1,2,4,8,16,32,64")
    p.add_argument("--out", required=True, metavar="PLANTED.h5")
    p.add_argument("--seed", required=True, type=A.seed)
    p.add_argument("--mode", choices=("standalone", "splice"), default="standalone")
    p.add_argument("--one-run", action="store_true", help="include each canary with probability 1/2; "
                   "the others are recorded as held out")
    p.add_argument("--manifest-out", default=None, metavar="PLANTED.json", help="planted manifest "
                   "(default: PLANTED.canaries.json)")
    p.set_defaults(func=cmd_plant, io=(("store:STORE", "canaries"), ("out", "manifest_out")))

    p = sub.add_parser("split", help="seeded member / non-member split, written into the store",
                       description="Split a store into members and non-members (canary rows are always "
                       "members), by row or by group; the split is written into STORE.h5.")
    p.add_argument("store", metavar="STORE.h5")
    p.add_argument("--member-fraction", required=True, type=A.open_fraction)
    p.add_argument("--seed", required=True, type=A.seed)
    p.add_argument("--by", choices=("record", "group", "source"), default="record",
                   help="unit of the split (group: all rows of a group on the same side)")
    p.set_defaults(func=cmd_split)

    p = sub.add_parser("info", help="summarise a store", description="Counts, lengths, canaries per "
                       "repetition, provenance and split of a SequenceStore.")
    p.add_argument("store", metavar="STORE.h5")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_info)

    from glmjax.commands.data_vcf import register_into

    register_into(sub)


def _print_summary(title: str, items: dict[str, Any]) -> None:
    print(title)
    width = max(len(k) for k in items) if items else 0
    for k, v in items.items():
        shown = f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else v
        print(f"  {k:<{width}}  {shown}")


def cmd_window(args: argparse.Namespace) -> int:
    from glmjax.data.fasta import WindowSpec, window_to_store

    spec = WindowSpec(args.length, args.stride, args.rc, args.max_n_fraction, args.keep_partial)
    t0 = time.perf_counter()
    with progress("windowing", None, "row") as bar:
        s = window_to_store(args.input, args.out, spec, indexed=args.indexed, regions=args.region,
                            resume=args.resume, on_rows=lambda n, b: bar.advance(n, tokens=b))
    _print_summary(f"wrote {args.out}", {
        "records": s["records"], "bases": s["bases"], "windows": s["windows"], "rows": s["rows"],
        "dropped (N)": s["dropped_n"], "partial kept": s["partial_kept"],
        "partial dropped": s["partial_dropped"], "ambiguous -> N": s["ambiguous"],
        "lowercase": s["lowercase"], "resumed rows": s["resumed_rows"],
        **({"not windowed": f"{args.stride - args.length} nt after each window (--stride > --length)"}
           if args.stride and args.stride > args.length else {}),
        "seconds": round(time.perf_counter() - t0, 2)})
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from glmjax.data.synthetic import synth_to_store

    t0 = time.perf_counter()
    with progress("synthesizing", args.num, "seq") as bar:
        s = synth_to_store(args.out, args.num, args.length, args.seed, gc=args.gc, order=args.order,
                           fit=args.fit, pseudocount=args.pseudocount,
                           on_rows=lambda n, b: bar.advance(n, tokens=b))
    items = {"sequences": s["sequences"], "length": s["length"], "generator": s["kind"]}
    items.update({"order": s["order"], "fitted GC": s["gc"]} if s["kind"] == "markov" else {"gc": s["gc"]})
    items.update({"seed": s["seed"], "seconds": round(time.perf_counter() - t0, 2)})
    _print_summary(f"wrote {args.out}", items)
    return 0


def cmd_canaries(args: argparse.Namespace) -> int:
    from glmjax.data.canaries import CanaryParams, build_manifest, write_manifest

    params = CanaryParams(num=args.num, prefix_len=args.prefix_len, secret_len=args.secret_len, gc=args.gc,
                          controls=args.controls, max_homopolymer=args.max_homopolymer,
                          min_entropy=args.min_entropy, max_dust=args.max_dust, screen_k=args.screen_k)
    t0 = time.perf_counter()
    if args.screen is not None:
        from glmjax.data.store import SequenceStore

        with SequenceStore(args.screen) as st:
            rows = len(st)
    else:
        rows = 0
    with progress("indexing screen store", rows or None, "row") as bar:
        def on_progress(stage: str, n: int, b: int) -> None:
            if stage == "index":
                bar.advance(n, tokens=b)

        manifest = build_manifest(params, args.seed, args.screen, on_progress=on_progress)
    sha = write_manifest(args.out, manifest)
    items: dict[str, Any] = {"canaries": args.num, "controls": args.controls,
                             "prefix + secret": f"{args.prefix_len} + {args.secret_len} nt", "seed": args.seed}
    if manifest["screen"]:
        items["screened against"] = f"{manifest['screen']['distinct_kmers']:,} distinct " \
                                    f"{manifest['screen']['k']}-mers of {args.screen}"
    items["rejected"] = ", ".join(f"{k} {v}" for k, v in manifest["rejected"].items())
    items.update({"sha256": sha, "seconds": round(time.perf_counter() - t0, 2)})
    _print_summary(f"wrote {args.out}", items)
    return 0


def cmd_plant(args: argparse.Namespace) -> int:
    from glmjax.data.canaries import parse_schedule, plant

    schedule = parse_schedule(args.schedule)
    t0 = time.perf_counter()
    with progress("planting", None, "row") as bar:
        r = plant(args.store, args.canaries, args.out, schedule, args.seed, mode=args.mode,
                  one_run=args.one_run, manifest_out=args.manifest_out,
                  on_rows=lambda n, b: bar.advance(n, tokens=b))
    s = r.summary
    _print_summary(f"wrote {r.store} and {r.manifest}", {
        "mode": s["mode"], "canaries": s["canaries"], "included": s["included"], "held out": s["held_out"],
        "controls": s["controls"], "copies planted": s["copies"],
        "canaries per repetition": ", ".join(f"{k}x: {v}" for k, v in s["canaries_per_repetition"].items()),
        "rows": f"{s['input_rows']:,} -> {s['output_rows']:,}", "manifest sha256": r.manifest_sha256,
        "seconds": round(time.perf_counter() - t0, 2)})
    if s["input_split_dropped"]:
        print(f"  note: the split of {args.store} was not copied; run `glmjax data split {r.store}`")
    return 0


def cmd_split(args: argparse.Namespace) -> int:
    from glmjax.data.splits import split_store

    t0 = time.perf_counter()
    info = split_store(args.store, args.member_fraction, args.seed, args.by)
    _print_summary(f"split {args.store}", {
        "by": info["by"], "members": info["members"], "non-members": info["non_members"],
        "member units": info["member_units"], "non-member units": info["non_member_units"],
        "canary rows (members)": info["canary_rows"], "seed": info["seed"],
        "seconds": round(time.perf_counter() - t0, 2)})
    return 0


def store_info(path: str) -> dict[str, Any]:
    """Summary of a SequenceStore: counts, lengths, kinds, canaries per repetition, provenance, split."""
    from glmjax.data.store import SequenceStore

    with SequenceStore(path) as st:
        lengths = st.lengths()
        kinds = Counter(st.column("kind").tolist())
        per_canary = Counter(x for x in st.column("canary").tolist() if x)
        reps = Counter(per_canary.values())
        info: dict[str, Any] = {
            "path": str(path), "schema_version": st.schema_version, "rows": len(st),
            "bases": int(lengths.sum()),
            "length": {"min": int(lengths.min()), "median": float(np.median(lengths)),
                       "max": int(lengths.max())} if lengths.size else None,
            "kinds": dict(sorted(kinds.items())),
            "canaries": {"planted": len(per_canary), "rows": int(sum(per_canary.values())),
                         "per_repetition": {str(k): {"canaries": v, "rows": k * v}
                                            for k, v in sorted(reps.items())}},
            "canary_manifest": st.canary_manifest(),
            "provenance": st.provenance,
            "split": st.split_info() if st.has_split else None,
        }
        groups = np.asarray(st.column("group")).astype(str)
        named = groups[groups != ""]
        if named.size:  # a cohort: rows grouped by individual
            _, per = np.unique(named, return_counts=True)
            info["groups"] = {"n": int(per.size), "rows": int(named.size),
                              "rows_per_group": {"min": int(per.min()), "median": float(np.median(per)),
                                                 "max": int(per.max())}}
        if st.has_split:
            m = st.member_mask()
            info["split"].update({"members": int(m.sum()), "non_members": int((~m).sum())})
            if named.size:
                info["split"]["member_groups"] = int(np.unique(groups[m & (groups != "")]).size)
    return info


def cmd_info(args: argparse.Namespace) -> int:
    info = store_info(args.store)
    if args.json:
        print(json.dumps(info, indent=1, sort_keys=True, default=str))
        return 0
    ln = info["length"]
    print(f"{info['path']}: SequenceStore v{info['schema_version']}, {info['rows']:,} rows, "
          f"{info['bases']:,} nt")
    if ln:
        print(f"  lengths    min {ln['min']:,} · median {ln['median']:,.0f} · max {ln['max']:,}")
    print("  kinds      " + " · ".join(f"{k} {v:,}" for k, v in info["kinds"].items()))
    c, cm = info["canaries"], info["canary_manifest"]
    if c["planted"] or cm:
        line = f"  canaries   {c['planted']:,} planted in {c['rows']:,} rows"
        if cm:
            line += (f"; {cm.get('held_out', 0)} held out, {cm.get('controls', 0)} controls; mode "
                     f"{cm.get('mode')}, manifest sha256 {str(cm.get('manifest_sha256', ''))[:16]}…")
        print(line)
        print(f"  {'repetitions':>13}  {'canaries':>8}  {'rows':>8}")
        for k, v in c["per_repetition"].items():
            print(f"  {k:>13}  {v['canaries']:>8,}  {v['rows']:>8,}")
    g = info.get("groups")
    if g:
        rp = g["rows_per_group"]
        print(f"  groups     {g['n']:,} groups (individuals) over {g['rows']:,} rows · rows per group min "
              f"{rp['min']:,} · median {rp['median']:,.0f} · max {rp['max']:,}")
    prov = info["provenance"]
    if prov:
        print(f"  provenance glmjax {prov.get('glmjax_version')} · seed {prov.get('seed')} · "
              f"command: {prov.get('command')}")
        src = prov.get("source") or (prov.get("parent") or {})
        if src.get("sha256"):
            print(f"             from {src.get('path')} (sha256 {src['sha256'][:16]}…)")
    sp = info["split"]
    if sp:
        groups_part = f" ({sp['member_groups']:,} member groups)" if "member_groups" in sp else ""
        print(f"  split      by {sp.get('by')} · seed {sp.get('seed')} · member fraction "
              f"{sp.get('member_fraction')} · {sp['members']:,} members{groups_part} / {sp['non_members']:,} "
              "non-members")
    else:
        print("  split      none (run `glmjax data split`)")
    return 0

