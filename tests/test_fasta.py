"""FASTA reading (plain, gzip, bgzip, indexed), windowing rules, FASTA -> store -> sequences."""

from __future__ import annotations

import bz2
import gzip
import shutil
from functools import partial

import numpy as np
import pytest
from conftest import shared_path

from glmjax import alphabet
from glmjax.data import fasta
from glmjax.data.fasta import FastaStats, WindowSpec, WindowStats
from glmjax.data.store import SequenceStore
from glmjax.errors import ConfigError, InputFileError, SequenceError

RECORDS = {
    "chr1 first chromosome": "ACGTACGTNNacgtRYACGT" * 7 + "GATTACA",
    "chrM": "ttttGGGGccccAAAA",
    "empty": "",
    "x|y.2": "ACGTN" * 30,
}


def write_fasta(path, records, width=60, newline="\n", opener=open):
    with opener(path, "wt", newline="") as fh:
        for name, seq in records.items():
            fh.write(f">{name}{newline}")
            for i in range(0, len(seq), width):
                fh.write(seq[i:i + width] + newline)
    return path


def expected(records):
    return [(name.split()[0], alphabet.encode(seq)) for name, seq in records.items()]


def assert_same_records(got, want):
    assert [n for n, _ in got] == [n for n, _ in want]
    for (_, a), (_, b) in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("width,newline,opener", [(60, "\n", open), (7, "\r\n", open),
                                                  (10_000, "\n", gzip.open), (13, "\n", gzip.open)])
def test_round_trip_plain_and_gzip(tmp_path, width, newline, opener):
    p = write_fasta(tmp_path / "g.fa", RECORDS, width, newline, opener)
    stats = FastaStats()
    got = list(fasta.iter_records(p, stats))
    assert_same_records(got, expected(RECORDS))
    assert stats.records == 4
    assert stats.empty_records == 1
    assert stats.bases == sum(len(s) for s in RECORDS.values())
    assert stats.ambiguous == 2 * 7
    assert stats.lowercase == 4 * 7 + 8


@pytest.mark.parametrize("block", [1, 2, 3, 5, 8, 64])
def test_tiny_blocks_give_the_same_records(tmp_path, block, monkeypatch):
    # Block boundaries fall inside headers, between '\n' and '>', and inside sequence lines.
    p = write_fasta(tmp_path / "g.fa", RECORDS, width=9)
    pieces = list(fasta.iter_fasta(p, block_bytes=block))
    assert all(c.size <= block for _, c in pieces)
    monkeypatch.setattr(fasta, "iter_fasta", partial(fasta.iter_fasta, block_bytes=block))
    assert_same_records(list(fasta.iter_records(p)), expected(RECORDS))


def test_long_single_line_record_is_streamed_in_bounded_pieces(tmp_path):
    rng = np.random.default_rng(0)
    seq = alphabet.decode(rng.integers(0, 4, 100_000).astype(np.uint8))
    p = write_fasta(tmp_path / "one.fa", {"big": seq}, width=10**9)
    pieces = list(fasta.iter_fasta(p, block_bytes=4096))
    assert len(pieces) > 20
    assert max(c.size for _, c in pieces) <= 4096
    np.testing.assert_array_equal(np.concatenate([c for _, c in pieces]), alphabet.encode(seq))


def test_bgzip_file_reads_like_plain(tmp_path):
    src = shared_path("data", "small", "phiX174.fa.gz")
    plain = tmp_path / "phix.fa"
    with gzip.open(src, "rb") as fi, open(plain, "wb") as fo:
        shutil.copyfileobj(fi, fo)
    a, b = fasta.read_fasta(src), fasta.read_fasta(plain)
    assert_same_records(a, b)
    assert a[0][1].size == 5386


def test_sequence_error_names_file_record_and_position(tmp_path):
    p = tmp_path / "bad.fa"
    p.write_text(">ok\nACGT\n>r2 desc\nACGTAC\nGT@A\n")
    with pytest.raises(SequenceError) as e:
        fasta.read_fasta(p)
    assert str(e.value).startswith(f"{p}: record 'r2', position 9: '@'")


@pytest.mark.parametrize("content,message", [
    (b"", "is empty"),
    (b"\n\n  \n", "contains no FASTA records"),
    (b"ACGT\n>r\nACGT\n", "no FASTA header line"),
    (b"\x00\x01\xff\xfe" * 100, "binary data"),
    (b">a\nAC\n>a\nGT\n", "duplicate record name 'a'"),
    (b">\nACGT\n", "empty header line"),
    (b">r\nACGT\n>", "empty header line"),
    (bz2.compress(b">r\nACGT\n"), "bzip2-compressed"),
])
def test_bad_files(tmp_path, content, message):
    p = tmp_path / "x.fa"
    p.write_bytes(content)
    with pytest.raises(InputFileError, match=message):
        fasta.read_fasta(p)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(InputFileError, match="no such file"):
        fasta.read_fasta(tmp_path / "nope.fa")
    with pytest.raises(InputFileError, match="is a folder"):
        fasta.read_fasta(tmp_path)


def test_truncated_gzip(tmp_path):
    rng = np.random.default_rng(1)
    seq = alphabet.decode(rng.integers(0, 4, 50_000).astype(np.uint8))
    data = gzip.compress(f">r\n{seq}\n".encode())
    p = tmp_path / "t.fa.gz"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputFileError, match="truncated or corrupt gzip"):
        fasta.read_fasta(p)


# -- windowing ----------------------------------------------------------------------------------
def reference_windows(name, seq, spec):
    """Windows by direct slicing, the rules of the fasta module docstring spelled out."""
    L, S = spec.length, spec.step
    codes = alphabet.encode(seq)
    rows, last_end, s = [], 0, 0
    starts = []
    while s + L <= codes.size:
        starts.append((s, s + L))
        last_end = s + L
        s += S
    if spec.keep_partial and s < codes.size and (not starts or last_end < codes.size):
        starts.append((s, codes.size))
    for a, b in starts:
        w = codes[a:b]
        if np.count_nonzero(w == alphabet.N) > spec.max_n_fraction * w.size:
            continue
        rows.append((f"{name}:{a + 1}-{b}(+)", name, a, 1, w))
        if spec.rc:
            rows.append((f"{name}:{a + 1}-{b}(-)", name, a, -1, alphabet.reverse_complement(w)))
    return rows


def flat(batches):
    return [r for b in batches for r in b]


def assert_rows_equal(got, want):
    assert [r[:4] for r in got] == [r[:4] for r in want]
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a[4], b[4])


@pytest.mark.parametrize("spec", [
    WindowSpec(10), WindowSpec(10, stride=3), WindowSpec(10, stride=25), WindowSpec(10, rc=True),
    WindowSpec(10, stride=25, keep_partial=True), WindowSpec(10, stride=10, keep_partial=True),
    WindowSpec(7, stride=4, keep_partial=True), WindowSpec(40, keep_partial=True, rc=True),
    WindowSpec(10, max_n_fraction=0.0), WindowSpec(10, max_n_fraction=1.0, keep_partial=True),
    WindowSpec(1000, keep_partial=True),
])
@pytest.mark.parametrize("block", [3, 4096])
def test_windows_match_direct_slicing(tmp_path, spec, block, monkeypatch):
    rng = np.random.default_rng(2)
    recs = {"a": alphabet.decode(rng.integers(0, 5, 203).astype(np.uint8)),
            "b": alphabet.decode(rng.integers(0, 4, 9).astype(np.uint8)), "c": "",
            "d": alphabet.decode(rng.integers(0, 4, 80).astype(np.uint8))}
    p = write_fasta(tmp_path / "w.fa", recs, width=11)
    monkeypatch.setattr(fasta, "iter_fasta", partial(fasta.iter_fasta, block_bytes=block))
    stats = WindowStats()
    got = flat(fasta.iter_windows(p, spec, stats))
    want = [r for n, s in recs.items() for r in reference_windows(n, s, spec)]
    assert_rows_equal(got, want)
    assert stats.rows == len(want)
    assert stats.fasta.records == 4


def test_window_coordinates_and_counts(tmp_path):
    seq = "A" * 10 + "N" * 10 + "C" * 10 + "G" * 5
    p = write_fasta(tmp_path / "c.fa", {"chr2": seq})
    stats = WindowStats()
    rows = flat(fasta.iter_windows(p, WindowSpec(10, rc=True), stats))
    assert [r[0] for r in rows] == ["chr2:1-10(+)", "chr2:1-10(-)", "chr2:21-30(+)", "chr2:21-30(-)"]
    assert [r[2] for r in rows] == [0, 0, 20, 20]
    assert alphabet.decode(rows[3][4]) == "G" * 10
    assert (stats.windows, stats.dropped_n, stats.partial_dropped, stats.partial_kept) == (2, 1, 1, 0)
    rows = flat(fasta.iter_windows(p, WindowSpec(10, keep_partial=True, max_n_fraction=1.0)))
    assert [r[0] for r in rows] == ["chr2:1-10(+)", "chr2:11-20(+)", "chr2:21-30(+)", "chr2:31-35(+)"]


def test_window_spec_validation():
    for kw in ({"length": 0}, {"length": 5, "stride": 0}, {"length": 5, "max_n_fraction": 1.5}):
        with pytest.raises(ConfigError):
            WindowSpec(**kw)


def test_fasta_to_store_to_sequences(tmp_path):
    p = write_fasta(tmp_path / "g.fa.gz", RECORDS, opener=gzip.open)
    spec = WindowSpec(20, stride=15, rc=True, max_n_fraction=0.25, keep_partial=True)
    out = tmp_path / "s.h5"
    summary = fasta.window_to_store(p, out, spec)
    want = [r for n, s in RECORDS.items() for r in reference_windows(n.split()[0], s, spec)]
    with SequenceStore(out) as st:
        assert len(st) == len(want) == summary["rows"]
        recs = st.records()
        assert [(r.id, r.source, r.start, r.strand) for r in recs] == [w[:4] for w in want]
        for r, w in zip(recs, want, strict=True):
            np.testing.assert_array_equal(r.codes, w[4])
            assert r.kind == "genome" and r.canary == "" and r.group == ""
        prov = st.provenance
        assert prov["windowing"] == spec.to_dict()
        assert len(prov["source"]["sha256"]) == 64
        assert prov["counts"]["rows"] == len(want)
    assert not (tmp_path / "s.h5.partial").exists()


def test_no_window_is_an_error_and_leaves_nothing(tmp_path):
    p = write_fasta(tmp_path / "s.fa", {"r": "ACGT"})
    with pytest.raises(ConfigError, match="no windows of length 100"):
        fasta.window_to_store(p, tmp_path / "o.h5", WindowSpec(100))
    assert list(tmp_path.iterdir()) == [p]


# -- indexed access -----------------------------------------------------------------------------
def test_indexed_windows_equal_streamed_windows():
    src = shared_path("data", "small", "lambda_phage.fa.gz")
    spec = WindowSpec(1000, stride=700, rc=True, keep_partial=True)
    a = flat(fasta.iter_windows(src, spec))
    b = flat(fasta.iter_windows(src, spec, indexed=True))
    assert_rows_equal(a, b)
    (name, codes), = fasta.read_fasta(src)
    with fasta.IndexedFasta(src) as fa:
        assert fa.references == (name,)
        np.testing.assert_array_equal(fa.fetch(name, 123, 4567), codes[123:4567])
    r = flat(fasta.iter_windows(src, WindowSpec(100), indexed=True, regions=[f"{name}:1001-1350"]))
    assert [x[0] for x in r] == [f"{name}:{s}-{s + 99}(+)" for s in (1001, 1101, 1201)]
    np.testing.assert_array_equal(r[0][4], codes[1000:1100])
    with pytest.raises(InputFileError, match="outside"):
        flat(fasta.iter_windows(src, WindowSpec(100), indexed=True, regions=[f"{name}:1-99999999"]))
    with pytest.raises(ConfigError, match="needs --indexed"):
        flat(fasta.iter_windows(src, WindowSpec(100), regions=[name]))


def test_indexed_needs_an_index(tmp_path):
    src = shared_path("data", "small", "phiX174.fa.gz")
    p = tmp_path / "phix.fa.gz"
    shutil.copy(src, p)
    with pytest.raises(InputFileError, match="has no index"):
        fasta.IndexedFasta(p)
