"""SequenceStore: round trips, batches, index access, atomic creation, resume after SIGKILL, errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest

from glmjax.data.store import Record, SequenceStore, SequenceStoreWriter, write_split
from glmjax.errors import InputFileError, StoreError
from glmjax.storage import partial_path

ROOT = Path(__file__).resolve().parents[1]


def make_records(lo, hi):
    """Records lo..hi-1; record i is the same whichever batch it is made in."""
    return [Record(id=f"seq{i}", codes=np.random.default_rng(i).integers(0, 5, 3 + (i * 7) % 50).astype(np.uint8),
                   source=f"src{i % 3}", start=i * 10, strand=1 if i % 2 else -1,
                   kind="genome" if i % 5 else "canary", canary="" if i % 5 else f"canary-{i:04d}",
                   group=f"g{i % 4}") for i in range(lo, hi)]


def write_store(path, records, batch=7, **kw):
    with SequenceStoreWriter(path, **kw) as w:
        for i in range(0, len(records), batch):
            w.add(records[i:i + batch])
    return path


def test_round_trip_records_and_metadata(tmp_path):
    recs = make_records(0, 40)
    write_store(tmp_path / "s.h5", recs, provenance={"seed": 3, "command": "x"})
    with SequenceStore(tmp_path / "s.h5") as st:
        assert len(st) == 40
        assert st.schema_version == 1
        assert st.provenance == {"seed": 3, "command": "x"}
        got = st.records()
        for a, b in zip(got, recs, strict=True):
            assert (a.id, a.source, a.start, a.strand, a.kind, a.canary, a.group) == \
                   (b.id, b.source, b.start, b.strand, b.kind, b.canary, b.group)
            np.testing.assert_array_equal(a.codes, b.codes)
            assert a.codes.dtype == np.uint8
        np.testing.assert_array_equal(st.lengths(), [r.codes.size for r in recs])
        assert list(st.ids) == [r.id for r in recs]
        assert st.attr("complete") in (True, np.True_)


def test_batches_and_index_access(tmp_path):
    recs = make_records(0, 23)
    write_store(tmp_path / "s.h5", recs)
    with SequenceStore(tmp_path / "s.h5") as st:
        seen = []
        for lo, seqs in st.iter_batches(batch_size=5):
            assert lo == len(seen)
            assert len(seqs) == min(5, 23 - lo)
            seen.extend(seqs)
        for a, b in zip(seen, recs, strict=True):
            np.testing.assert_array_equal(a, b.codes)
        for i in (0, 7, 22):
            np.testing.assert_array_equal(st[i], recs[i].codes)
        np.testing.assert_array_equal(st[np.int64(4)], recs[4].codes)
        for a, i in zip(st.take([9, 2, 9]), [9, 2, 9], strict=True):
            np.testing.assert_array_equal(a, recs[i].codes)
        # runs of consecutive rows, gaps, repeats and any order: each row as read alone
        pick = [22, 3, 4, 5, 0, 21, 4, 10, 11, 1]
        for a, i in zip(st.take(np.array(pick)), pick, strict=True):
            np.testing.assert_array_equal(a, recs[i].codes)
        assert st.take([]) == []
        for bad in ([3, 23], [-1]):
            with pytest.raises(IndexError):
                st.take(bad)
        sub = list(st.iter_batches(batch_size=4, start=10, stop=15))
        assert [lo for lo, _ in sub] == [10, 14]
        assert [r.id for r in st.records(20)] == ["seq20", "seq21", "seq22"]
        with pytest.raises(IndexError):
            st[23]
        with pytest.raises(StoreError, match="no column"):
            st.column("nope")


def test_creation_is_atomic(tmp_path):
    out = tmp_path / "s.h5"
    w = SequenceStoreWriter(out)
    w.add(make_records(0, 5))
    assert not out.exists() and partial_path(out).exists()
    with pytest.raises(StoreError, match="unfinished"):
        SequenceStore(out)
    w.finalize()
    assert out.exists() and not partial_path(out).exists()
    # a user error inside the writer removes the partial file; nothing looks finished
    out2 = tmp_path / "t.h5"
    with pytest.raises(ValueError), SequenceStoreWriter(out2) as w2:
        w2.add(make_records(0, 5))
        raise ValueError("boom")
    assert not out2.exists() and not partial_path(out2).exists()


def test_same_content_gives_identical_bytes(tmp_path):
    recs = make_records(0, 30)
    a = write_store(tmp_path / "a.h5", recs, provenance={"seed": 1})
    b = write_store(tmp_path / "b.h5", recs, provenance={"seed": 1})
    assert a.read_bytes() == b.read_bytes()


_CHILD = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {tests!r})
    from test_store import make_records
    from glmjax.data.store import SequenceStoreWriter
    w = SequenceStoreWriter(sys.argv[1], provenance={{"run": 1}})
    for lo in range(0, 30, 10):
        w.add(make_records(lo, lo + 10))
    # a fourth batch is written but not committed when the process dies
    recs = make_records(30, 40)
    w.append({{k: [getattr(r, k) for r in recs] for k in
              ("id", "source", "start", "strand", "kind", "canary", "group")}},
             {{"seq": [r.codes for r in recs]}}, commit=False)
    w.f.flush()
    print("ready", flush=True)
    time.sleep(120)
""")


def test_resume_after_sigkill_mid_write(tmp_path):
    out = tmp_path / "s.h5"
    script = tmp_path / "child.py"
    script.write_text(_CHILD.format(tests=str(ROOT / "tests")))
    env = dict(os.environ)  # the installed package, as a user runs it
    proc = subprocess.Popen([sys.executable, str(script), str(out)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "ready"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists() and partial_path(out).exists()
    with h5py.File(partial_path(out), "r") as f:  # the uncommitted rows really are on disk
        assert f["rows"]["id"].shape[0] == 40 and int(f.attrs["committed_rows"]) == 30
    w = SequenceStoreWriter(out, resume=True)
    assert w.resumed_rows == 30
    for lo in range(30, 60, 10):
        w.add(make_records(lo, lo + 10))
    w.finalize()
    want = make_records(0, 60)
    with SequenceStore(out) as st:
        assert len(st) == 60
        assert list(st.ids) == [r.id for r in want]  # nothing lost, nothing duplicated
        for a, b in zip(st.sequences(), want, strict=True):
            np.testing.assert_array_equal(a, b.codes)
        assert st.provenance == {"run": 1}
        assert len(st.f["ragged"]["seq"]["values"]) == sum(r.codes.size for r in want)


def test_resume_without_partial_starts_over(tmp_path):
    out = tmp_path / "s.h5"
    w = SequenceStoreWriter(out, resume=True)
    assert w.resumed_rows == 0
    w.add(make_records(0, 3))
    w.finalize()
    with SequenceStore(out) as st:
        assert len(st) == 3


def test_open_errors(tmp_path):
    with pytest.raises(InputFileError, match="no such file"):
        SequenceStore(tmp_path / "nope.h5")
    (tmp_path / "empty.h5").write_bytes(b"")
    with pytest.raises(InputFileError, match="is empty"):
        SequenceStore(tmp_path / "empty.h5")
    (tmp_path / "text.h5").write_text("hello")
    with pytest.raises(StoreError, match="not an HDF5 file"):
        SequenceStore(tmp_path / "text.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = 1
    with pytest.raises(StoreError, match="not written by glmjax"):
        SequenceStore(tmp_path / "other.h5")
    with pytest.raises(InputFileError, match="folder"):
        SequenceStore(tmp_path)


def test_split_round_trip(tmp_path):
    out = write_store(tmp_path / "s.h5", make_records(0, 10))
    with SequenceStore(out) as st:
        assert not st.has_split
        with pytest.raises(StoreError, match="no member/non-member split"):
            st.member_mask()
    member = np.arange(10) % 3 == 0
    write_split(out, member, {"seed": 5, "by": "record"})
    write_split(out, ~member, {"seed": 6, "by": "record"})  # replaces the first
    with SequenceStore(out) as st:
        np.testing.assert_array_equal(st.member_mask(), ~member)
        assert st.split_info() == {"seed": 6, "by": "record"}
    with pytest.raises(StoreError, match="split has 3 rows"):
        write_split(out, np.ones(3, bool), {})
