"""VCF import: haplotypes equal a loop-based reference builder (SNVs, indels, overlaps, symbolic
alleles, boundaries), coordinates in ids, per-window non-reference counts, variant sites and allele
frequencies; indexed, streamed and BCF input agree; every bad input is a one-line GlmjaxError (CLI:
exit 2, no output left); the 1000 Genomes cohort imports in seconds and matches its genotypes."""

from __future__ import annotations

import gzip
import shutil
import time
from pathlib import Path

import numpy as np
import pysam
import pytest
from conftest import shared_path
from vcf_helpers import (
    SAMPLES,
    Rec,
    expected_haplotype,
    other_base,
    random_reference,
    run_cli,
    synthetic_expected,
    synthetic_records,
    write_reference,
    write_vcf,
)

from glmjax import alphabet
from glmjax.data.store import SequenceStore
from glmjax.data.vcf import ImportOptions, import_vcf, read_cohort
from glmjax.errors import ConfigError, GlmjaxError, InputFileError
from glmjax.storage import partial_path

W = 10


@pytest.fixture
def cohort(tmp_path):
    ref = random_reference()
    recs = synthetic_records(ref)
    fa = write_reference(tmp_path, ref)
    vcf = write_vcf(tmp_path, recs, {c: len(s) for c, s in ref.items()})
    return tmp_path, ref, recs, fa, vcf


def rows_of(store: SequenceStore, source: str) -> np.ndarray:
    return np.flatnonzero(store.column("source") == source)


def test_haplotypes_match_loop_builder(cohort):
    d, ref, recs, fa, vcf = cohort
    out = d / "c.h5"
    s = import_vcf(fa, vcf, out, ImportOptions(window=W), regions=["c1:1-190", "c2"])
    # 2 regions, 3 samples; S1 h1 skips the SNV inside its deletion; S3 h2 carries a symbolic allele.
    assert (s["samples"], s["haplotypes"], s["regions"], s["indexed_vcf"]) == (3, 6, 2, False)
    assert (s["records"], s["records_straddling"]) == (8, 1)
    assert (s["skipped_overlap"], s["skipped_symbolic"]) == (1, 1)
    cd = read_cohort(out)
    with SequenceStore(out) as st:
        ids, starts = st.column("id"), st.column("start")
        assert set(st.column("kind")) == {"haplotype"}
        assert list(st.column("group")[:3]) == ["S1"] * 3
        applied = 0
        for contig, (a, b) in (("c1", (0, 190)), ("c2", (0, 60))):
            for sample in SAMPLES:
                for hap in (1, 2):
                    seq, refpos, spans = synthetic_expected(ref, recs, sample, hap, contig, a, b)
                    applied += len(spans)
                    rows = [i for i in rows_of(st, f"{sample}:{hap}") if ids[i].split(":")[2] == contig]
                    got = "".join(alphabet.decode(st[i]) for i in rows)
                    n_win = (len(seq) - W) // W + 1
                    assert len(rows) == n_win and got == seq[:n_win * W], (sample, hap, contig)
                    for k, i in enumerate(rows):
                        s0, e0 = refpos[k * W], refpos[k * W + W - 1]
                        assert ids[i] == f"{sample}:h{hap}:{contig}:{s0 + 1}-{e0 + 1}"
                        assert starts[i] == s0
                        n_alt = sum(1 for hs, he in spans if hs < k * W + W and he > k * W)
                        assert cd.alt_alleles[i] == n_alt
                        assert cd.haplotype[i] == hap
        assert s["variants_applied"] == applied
    # Insertion (3 bases) on S2 h1 shifts later windows: window 4 starts at reference position 37.
    assert "S2:h1:c1:38-47" in set(ids)


def test_sites_alleles_and_frequencies(cohort):
    d, ref, recs, fa, vcf = cohort
    out = d / "c.h5"
    import_vcf(fa, vcf, out, ImportOptions(window=W), regions=["c1:1-190"])
    cd = read_cohort(out)
    in_region = [r for r in recs if r.contig == "c1" and r.pos - 1 + len(r.ref) <= 190]
    assert list(cd.site_pos) == [r.pos - 1 for r in in_region]
    assert list(cd.site_ref) == [r.ref for r in in_region]
    # Resamplable: SNV at 11 and the multiallelic SNV at 81; not the SNV inside the deletion at 51-54.
    assert [int(p) + 1 for p in cd.site_pos[cd.site_resamplable]] == [11, 81]
    freq = cd.site_frequencies()
    v81 = int(np.flatnonzero(cd.site_pos == 80)[0])
    np.testing.assert_allclose(freq[v81, :3], [3 / 6, 2 / 6, 1 / 6])  # S1 0|0, S2 2|1, S3 1|0
    assert cd.site_called[v81] == 6
    bases = cd.allele_bases()
    with SequenceStore(out) as st:
        groups, source = st.column("group"), st.column("source")
        for i in range(len(st)):
            lo, hi = cd.row_offsets[i], cd.row_offsets[i + 1]
            codes = st[i]
            sample, hap = source[i].split(":")
            assert groups[i] == sample
            for e in range(lo, hi):
                v, off, al = cd.row_site[e], cd.row_offset[e], cd.row_allele[e]
                rec = in_region[v]
                assert al == int(rec.gts[sample].split("|")[int(hap) - 1])
                assert codes[off] == bases[v, al]
        # Every window covering reference position 10 or 80 lists that site (no indel touches them).
        for i in range(len(st)):
            w = {int(cd.site_pos[v]) for v in cd.row_site[cd.row_offsets[i]:cd.row_offsets[i + 1]]}
            start = int(st.column("start", i, i + 1)[0])
            end = int(st.column("id", i, i + 1)[0].rsplit("-", 1)[1])
            assert w == {p for p in (10, 80) if start <= p < end}


def test_indexed_streamed_and_bcf_agree(cohort):
    d, ref, recs, fa, vcf = cohort
    contigs = {c: len(s) for c, s in ref.items()}
    ivcf = write_vcf(d, recs, contigs, name="indexed.vcf.gz", index=True)
    bcf = d / "calls.bcf"
    with pysam.VariantFile(str(vcf)) as src, pysam.VariantFile(str(bcf), "wb", header=src.header) as dst:
        for rec in src:
            dst.write(rec)
    outs = {}
    for name, path in (("stream", vcf), ("index", ivcf), ("bcf", bcf)):
        outs[name] = d / f"{name}.h5"
        s = import_vcf(fa, path, outs[name], ImportOptions(window=7, stride=5), regions=["c1:21-120"],
                       samples=["S3", "S2"])
        assert s["indexed_vcf"] == (name == "index")
    with SequenceStore(outs["stream"]) as a:
        assert list(dict.fromkeys(a.column("group"))) == ["S3", "S2"]  # sample-file order
        for other in ("index", "bcf"):
            with SequenceStore(outs[other]) as b:
                assert list(a.ids) == list(b.ids)
                assert all(np.array_equal(x, y) for x, y in zip(a.sequences(), b.sequences(), strict=True))
        assert np.array_equal(read_cohort(outs["stream"]).row_site, read_cohort(outs["index"]).row_site)


def test_region_without_variants_is_the_reference(cohort):
    d, ref, recs, fa, vcf = cohort
    s = import_vcf(fa, vcf, d / "z.h5", ImportOptions(window=W), regions=["c2:21-60"])
    assert (s["records"], s["variants_applied"], s["windows"]) == (0, 0, 6 * 4)
    cd = read_cohort(d / "z.h5")
    assert cd.n_sites == 0 and not cd.alt_alleles.any() and cd.row_offsets[-1] == 0
    with SequenceStore(d / "z.h5") as st:
        assert {alphabet.decode(st[i]) for i in rows_of(st, "S2:2")[:1]} == {ref["c2"][20:30]}
        assert st.ids[0] == "S1:h1:c2:21-30"


def test_extra_format_fields_bed_and_sample_file(cohort):
    d, ref, recs, fa, _ = cohort
    vcf = write_vcf(d, recs, {c: len(s) for c, s in ref.items()}, name="dp.vcf.gz", fmt_extra=True)
    (d / "r.bed").write_text("track name=x\nc2\t0\t60\nc1\t0\t190\n")
    (d / "s.txt").write_text("# two samples\nS2\n\nS1\n")
    out = d / "b.h5"
    s = import_vcf(fa, vcf, out, ImportOptions(window=W), bed=d / "r.bed", samples=d / "s.txt")
    assert (s["samples"], s["regions"], s["skipped_overlap"]) == (2, 2, 1)
    seq, _, _ = synthetic_expected(ref, recs, "S2", 1, "c1", 0, 190)
    with SequenceStore(out) as st:
        rows = [i for i in rows_of(st, "S2:1") if ":c1:" in st.ids[i]]
        assert "".join(alphabet.decode(st[i]) for i in rows) == seq[:len(rows) * W]


def test_unphased_and_missing_rules(cohort):
    d, ref, recs, fa, _ = cohort
    contigs = {c: len(s) for c, s in ref.items()}
    r = ref["c1"]
    other = other_base(r[10])
    unphased = [Rec("c1", 11, r[10], (other,), {"S1": "0/1", "S2": "1/1", "S3": "0|0"})]
    vcf = write_vcf(d, unphased, contigs, name="unphased.vcf.gz")
    with pytest.raises(InputFileError, match=r"record c1:11 \(v0\): sample S1 has an unphased heterozygous"):
        import_vcf(fa, vcf, d / "u.h5", ImportOptions(window=W), regions=["c1:1-190"])
    assert not (d / "u.h5").exists() and not partial_path(d / "u.h5").exists()
    with pytest.raises(ConfigError, match="--seed"):
        ImportOptions(window=W, unphased="random")
    alts = {}
    for seed in range(8):
        out = d / f"u{seed}.h5"
        s = import_vcf(fa, vcf, out, ImportOptions(window=W, unphased="random", seed=seed), regions=["c1:1-190"])
        assert s["unphased_het"] == 1  # 1/1 needs no phase
        with SequenceStore(out) as st:
            h1, h2 = (alphabet.decode(st[rows_of(st, f"S1:{h}")[1]])[0] for h in (1, 2))  # position 10
        assert {h1, h2} == {r[10], other}
        alts[seed] = h1
    again = d / "again.h5"
    import_vcf(fa, vcf, again, ImportOptions(window=W, unphased="random", seed=3), regions=["c1:1-190"])
    with SequenceStore(again) as st:
        assert alphabet.decode(st[rows_of(st, "S1:1")[1]])[0] == alts[3]
    assert len(set(alts.values())) == 2  # the seed decides the phase

    missing = [Rec("c1", 11, r[10], (other,), {"S1": ".|1", "S2": ".", "S3": "0|0"})]
    vcf = write_vcf(d, missing, contigs, name="missing.vcf.gz")
    with pytest.raises(InputFileError, match=r"record c1:11 \(v0\): sample S1 has a missing call.*--missing ref"):
        import_vcf(fa, vcf, d / "m.h5", ImportOptions(window=W), regions=["c1:1-190"])
    s = import_vcf(fa, vcf, d / "m.h5", ImportOptions(window=W, missing="ref"), regions=["c1:1-190"])
    assert s["missing_calls"] == 3
    cd = read_cohort(d / "m.h5")
    assert cd.site_called[0] == 3
    np.testing.assert_allclose(cd.allele_freq, [2 / 3, 1 / 3])  # over called alleles only
    with SequenceStore(d / "m.h5") as st:
        assert alphabet.decode(st[rows_of(st, "S1:1")[1]])[0] == r[10]
        assert alphabet.decode(st[rows_of(st, "S1:2")[1]])[0] == other


def bad_inputs(d: Path, ref, recs, fa, vcf):
    """(name, import_vcf kwargs, CLI argv, message pattern) for every bad input of the issue."""
    contigs = {c: len(s) for c, s in ref.items()}
    other_ref = other_base(ref["c1"][10])
    wrong = [Rec("c1", 11, other_ref, (other_base(other_ref),), {"S1": "0|0", "S2": "0|0", "S3": "0|0"})]
    bad_ref = write_vcf(d, wrong, contigs, name="badref.vcf.gz")
    plain_gz = d / "plain.fa.gz"
    with gzip.open(plain_gz, "wt") as fh:
        fh.write("".join(f">{c}\n{s}\n" for c, s in ref.items()))
    plain_vcf = d / "plain-gzip.vcf.gz"
    with gzip.open(vcf) as src, gzip.open(plain_vcf, "wb") as dst:  # the same records, plain gzip
        dst.write(src.read())
    base = dict(reference=fa, vcf=vcf, regions=["c1:1-190"])
    cases = [
        ("plain-gzip-vcf", {**base, "vcf": plain_vcf}, r"plain gzip.*bgzip"),
        ("ref-mismatch", {**base, "vcf": bad_ref},
         rf"record c1:11 \(v0\): REF '{other_ref}' does not match the reference"),
        ("contig-absent", {**base, "regions": ["chr7:1-100"]}, r"contig 'chr7' is absent from the reference"),
        ("sample-absent", {**base, "samples": ["S1", "NA00000"]}, r"sample 'NA00000' is not in .*calls.vcf.gz"),
        ("plain-gzip-reference", {**base, "reference": plain_gz}, r"plain gzip.*bgzip.*samtools faidx"),
        ("overlapping-regions", {**base, "regions": ["c1:1-100", "c1:50-120"]}, r"overlap"),
        ("no-region", {**base, "regions": []}, r"no region given"),
    ]
    return cases


def test_bad_input_library_errors(cohort):
    d, ref, recs, fa, vcf = cohort
    for name, kw, pattern in bad_inputs(d, ref, recs, fa, vcf):
        out = d / f"{name}.h5"
        with pytest.raises(GlmjaxError, match=pattern) as e:
            import_vcf(kw["reference"], kw["vcf"], out, ImportOptions(window=W), regions=kw["regions"],
                       samples=kw.get("samples"))
        assert "\n" not in str(e.value), name
        assert not out.exists() and not partial_path(out).exists(), name


def test_unsorted_and_bad_genotypes(cohort):
    d, ref, recs, fa, _ = cohort
    contigs = {c: len(s) for c, s in ref.items()}
    r = ref["c1"]
    g = {"S1": "0|1", "S2": "0|0", "S3": "0|0"}
    unsorted = write_vcf(d, [Rec("c1", 31, r[30], ("A",), g), Rec("c1", 11, r[10], ("A",), g)], contigs, "u.vcf.gz")
    with pytest.raises(InputFileError, match="not sorted"):
        import_vcf(fa, unsorted, d / "x.h5", ImportOptions(window=W), regions=["c1:1-190"])
    alt = other_base(r[10])
    haploid = write_vcf(d, [Rec("c1", 11, r[10], (alt,), {"S1": "1", "S2": "0|0", "S3": "0|0"})], contigs,
                        "h.vcf.gz")
    with pytest.raises(InputFileError, match="sample S1 has a haploid genotype"):
        import_vcf(fa, haploid, d / "x.h5", ImportOptions(window=W), regions=["c1:1-190"])
    beyond = write_vcf(d, [Rec("c1", 11, r[10], (alt,), {"S1": "0|2", "S2": "0|0", "S3": "0|0"})],
                       contigs, "b.vcf.gz")
    with pytest.raises(InputFileError, match="allele 2 but the record lists 1 ALT"):
        import_vcf(fa, beyond, d / "x.h5", ImportOptions(window=W), regions=["c1:1-190"])
    renamed = write_vcf(d, [Rec("chr1", 11, r[10], (alt,), g)], {"chr1": 200}, "n.vcf.gz")
    with pytest.raises(InputFileError, match="no records on contig 'c1'.*'20' vs 'chr20'"):
        import_vcf(fa, renamed, d / "x.h5", ImportOptions(window=W), regions=["c1:1-190"])
    assert not list(d.glob("x.h5*"))


def test_reference_index_is_built(tmp_path):
    ref = random_reference()
    fa = write_reference(tmp_path, ref)
    for ext in (".fai", ".gzi"):
        Path(f"{fa}{ext}").unlink(missing_ok=True)
    vcf = write_vcf(tmp_path, synthetic_records(ref), {c: len(s) for c, s in ref.items()})
    import_vcf(fa, vcf, tmp_path / "o.h5", ImportOptions(window=W), regions=["c2"])
    assert Path(f"{fa}.fai").exists() and Path(f"{fa}.gzi").exists()


def test_cli_summary_and_bad_input_exit_2(cohort, capsys):
    d, ref, recs, fa, vcf = cohort
    out = d / "cli.h5"
    rc, how = run_cli(["data", "import-vcf", "--reference", fa, "--vcf", vcf, "--region", "c1:1-190",
                       "--region", "c2", "--window", W, "--stride", 5, "--out", out])
    text = capsys.readouterr().out
    assert rc == 0, text
    for key in ("samples", "haplotypes", "windows", "variants applied", "skipped (overlap)"):
        assert key in text
    assert "streamed (no index)" in text
    with SequenceStore(out) as st:
        assert "import-vcf" in st.provenance["command"]
        assert st.provenance["import_vcf"]["stride"] == 5
        groups = sorted(set(st.column("group").astype(str).tolist()) - {""})
    # data info shows the individuals (groups) and, after a split by group, how many are members
    assert run_cli(["data", "split", out, "--member-fraction", "0.5", "--seed", "1", "--by", "group"])[0] == 0
    capsys.readouterr()
    assert run_cli(["data", "info", out])[0] == 0
    text = capsys.readouterr().out
    assert f"groups     {len(groups)} groups (individuals)" in text and "member groups" in text
    for name, kw, _ in bad_inputs(d, ref, recs, fa, vcf):
        o = d / f"cli-{name}.h5"
        argv = ["data", "import-vcf", "--reference", kw["reference"], "--vcf", kw["vcf"], "--window", W, "--out", o]
        for r in kw["regions"]:
            argv += ["--region", r]
        if kw.get("samples"):
            (d / "samples.txt").write_text("\n".join(kw["samples"]) + "\n")
            argv += ["--samples", d / "samples.txt"]
        rc, _ = run_cli(argv)
        err = capsys.readouterr().err
        assert rc == 2, name
        assert err.count("\n") == 1 and err.startswith("glmjax: error: "), (name, err)
        assert not o.exists() and not partial_path(o).exists(), name
    print(f"CLI run through {how}")


# --------------------------------------------------------------------------------------- real data
REGION = (1_000_000, 1_100_000)  # 0-based half-open: 20:1,000,001-1,100,000


@pytest.fixture(scope="module")
def kgp(tmp_path_factory):
    fa = shared_path("data", "eukaryote", "human_grch37_chr20_0-5Mb.fa.gz")
    vcf = shared_path("data", "cohort", "1000G_chr20_1-4Mb.vcf.gz")
    out = tmp_path_factory.mktemp("kgp") / "kgp.h5"
    t0 = time.perf_counter()
    s = import_vcf(fa, vcf, out, ImportOptions(window=1000), regions=[f"20:{REGION[0] + 1}-{REGION[1]}"])
    seconds = time.perf_counter() - t0
    print(f"1000G import: {s['samples']} samples, {s['windows']:,} windows, {s['variants_applied']:,} alleles "
          f"applied, indexed={s['indexed_vcf']}, {seconds:.1f} s")
    return fa, vcf, out, s, seconds


def _genotypes(vcf: Path, start: int, end: int):
    """Records of [start, end) through pysam's own genotype API (independent of glmjax's parser)."""
    recs = []
    with pysam.VariantFile(str(vcf)) as vf:
        samples = list(vf.header.samples)
        for rec in vf:
            if rec.start >= end:
                break
            if rec.start >= start:
                gt = np.array([rec.samples[s]["GT"] for s in samples], dtype=np.int16)
                recs.append((rec.start, rec.ref, rec.alts, gt))
    return samples, recs


def test_1000g_import_matches_genotypes(kgp):
    fa, vcf, out, s, seconds = kgp
    assert Path(f"{vcf}.tbi").exists() is False and not s["indexed_vcf"]  # the streaming path
    assert (s["samples"], s["haplotypes"]) == (300, 600)
    assert seconds < 120
    samples, recs = _genotypes(vcf, *REGION)
    assert s["records"] == len(recs)
    # Every REF allele matches the reference (checked here with pysam directly).
    with pysam.FastaFile(str(fa)) as ref_fa:
        ref_text = ref_fa.fetch("20", *REGION).upper()
    for p, r, _, _ in recs:
        assert ref_text[p - REGION[0]:p - REGION[0] + len(r)] == r.upper()
    gts = np.stack([g for *_, g in recs])  # [V, 300, 2]
    cd = read_cohort(out)
    bases = cd.allele_bases()
    with SequenceStore(out) as st:
        groups = st.column("group")
        col = {n: i for i, n in enumerate(samples)}
        sample_idx = np.array([col[g] for g in groups])
        # Bases at every resamplable variant site of every window equal the genotype's allele.
        counts = np.diff(cd.row_offsets)
        row_of = np.repeat(np.arange(len(st)), counts)
        expect = gts[cd.row_site, sample_idx[row_of], cd.haplotype[row_of] - 1]
        assert np.array_equal(cd.row_allele, expect)
        seqs = st.sequences()
        got = np.array([seqs[r][o] for r, o in zip(row_of.tolist(), cd.row_offset.tolist(), strict=True)])
        assert np.array_equal(got, bases[cd.row_site, expect])
        assert counts.sum() > 100_000
        # Whole haplotypes (indels included) of samples carrying indels equal the loop builder's.
        indel = [v for v, (_, r, a, _) in enumerate(recs) if len(r) != 1 or any(len(x) != 1 for x in a)]
        carriers = sorted({int(i) for v in indel for i in np.flatnonzero((gts[v] > 0).any(axis=1))})[:3]
        ids = st.column("id")
        source = st.column("source")
        lengths = []
        for si in [0, *carriers]:
            for hap in (1, 2):
                seq, refpos, spans = expected_haplotype(
                    ref_text, [(p, r, a, int(g[si, hap - 1])) for p, r, a, g in recs], *REGION, ref_offset=REGION[0])
                lengths.append(len(seq))
                rows = np.flatnonzero(source == f"{samples[si]}:{hap}")
                assert "".join(alphabet.decode(seqs[i]) for i in rows) == seq[:rows.size * 1000]
                assert [ids[i] for i in rows] == [
                    f"{samples[si]}:h{hap}:20:{refpos[k * 1000] + 1}-{refpos[k * 1000 + 999] + 1}"
                    for k in range(rows.size)]
                n_alt = [sum(1 for a, b in spans if a < k * 1000 + 1000 and b > k * 1000) for k in range(rows.size)]
                assert list(cd.alt_alleles[rows]) == n_alt
        assert len(set(lengths)) > 1  # indels changed some haplotype lengths


def test_1000g_indexed_equals_streamed(kgp, tmp_path):
    fa, vcf, _, _, _ = kgp
    local = tmp_path / "kgp.vcf.gz"
    shutil.copy(vcf, local)
    pysam.tabix_index(str(local), preset="vcf", force=True)
    (tmp_path / "s.txt").write_text("HG00097\nNA06986\nHG00096\n")
    outs = []
    for i, path in enumerate((vcf, local)):
        outs.append(tmp_path / f"{i}.h5")
        s = import_vcf(fa, path, outs[-1], ImportOptions(window=500, stride=250),
                       regions=["20:2,000,001-2,010,000", "20:3,500,001-3,505,000"], samples=tmp_path / "s.txt")
        assert s["indexed_vcf"] == (i == 1)
    with SequenceStore(outs[0]) as a, SequenceStore(outs[1]) as b:
        assert list(a.ids) == list(b.ids) and len(a) > 0
        assert all(np.array_equal(x, y) for x, y in zip(a.sequences(), b.sequences(), strict=True))
    ca, cb = read_cohort(outs[0]), read_cohort(outs[1])
    assert np.array_equal(ca.alt_alleles, cb.alt_alleles) and np.array_equal(ca.allele_freq, cb.allele_freq)
