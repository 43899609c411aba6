"""`glmjax data ...`: every subcommand end to end, reproducibility, resume, and bad input (exit 2)."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import shared_path

from glmjax import alphabet
from glmjax.cli import main
from glmjax.data.fasta import WindowSpec
from glmjax.data.store import SequenceStore, SequenceStoreWriter
from glmjax.storage import partial_path

ROOT = Path(__file__).resolve().parents[1]
SUBCOMMANDS = ("window", "synth", "canaries", "plant", "split", "info")


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("sub", ("", *SUBCOMMANDS))
def test_help(capsys, sub):
    assert main(["data", *([sub] if sub else []), "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: glmjax data")
    if sub == "window":
        assert "--max-n-fraction" in out and "--keep-partial" in out and "record:start-end" in out


def pipeline(capsys, d: Path, genome: Path, seed: int = 1, mode: str = "standalone"):
    """window -> canaries (screened) -> plant -> split, all in folder d; returns the outputs."""
    outs = {}
    rc, outs["window"], _ = run(capsys, "data", "window", genome, "--out", d / "w.h5", "--length", 500, "--rc")
    assert rc == 0
    rc, outs["canaries"], _ = run(capsys, "data", "canaries", "--out", d / "c.json", "--num", 12,
                                  "--prefix-len", 30, "--secret-len", 16, "--seed", seed, "--screen",
                                  d / "w.h5", "--controls", 3)
    assert rc == 0
    rc, outs["plant"], _ = run(capsys, "data", "plant", d / "w.h5", "--canaries", d / "c.json", "--schedule",
                               "1,2,4,8", "--out", d / "p.h5", "--seed", seed + 1, "--mode", mode)
    assert rc == 0
    rc, outs["split"], _ = run(capsys, "data", "split", d / "p.h5", "--member-fraction", 0.5, "--seed", seed + 2)
    assert rc == 0
    rc, outs["synth"], _ = run(capsys, "data", "synth", "--out", d / "y.h5", "--num", 20, "--length", 200,
                               "--order", 2, "--fit", genome, "--seed", seed)
    assert rc == 0
    return outs


FILES = ("w.h5", "c.json", "p.h5", "p.canaries.json", "y.h5")


def test_pipeline_info_and_byte_identical_reruns(tmp_path, capsys, monkeypatch):
    genome = shared_path("data", "small", "lambda_phage.fa.gz")
    monkeypatch.chdir(tmp_path)
    d = Path(".")
    outs = pipeline(capsys, d, genome)
    assert "wrote w.h5" in outs["window"] and "rows" in outs["window"]
    assert "canaries per repetition  1x: 3, 2x: 3, 4x: 3, 8x: 3" in outs["plant"]
    rc, info, _ = run(capsys, "data", "info", "p.h5")
    assert rc == 0
    lines = info.splitlines()
    table = lines[lines.index(next(x for x in lines if "repetitions" in x)) + 1:][:4]
    assert [x.split() for x in table] == [["1", "3", "3"], ["2", "3", "6"], ["4", "3", "12"], ["8", "3", "24"]]
    assert "12 planted in 45 rows" in info and "3 controls" in info
    assert "split      by record" in info
    assert "command: glmjax data plant w.h5 --canaries c.json" in info
    rc, js, _ = run(capsys, "data", "info", "p.h5", "--json")
    js = json.loads(js)
    assert js["canaries"]["per_repetition"]["8"] == {"canaries": 3, "rows": 24}
    assert js["split"]["members"] + js["split"]["non_members"] == js["rows"]
    with SequenceStore("w.h5") as st:
        assert st.provenance["command"].startswith("glmjax data window ")
        assert st.provenance["source"]["sha256"] == \
            "0062736367f32f785741c98cb95f9a3aa68601956efd04376f7cc2dbbeae6039"

    # same command, same seed, same output path -> the same bytes
    (tmp_path / "first").mkdir()
    for f in FILES:
        shutil.move(f, tmp_path / "first" / f)
    pipeline(capsys, d, genome)
    for f in FILES:
        assert Path(f).read_bytes() == (tmp_path / "first" / f).read_bytes(), f

    # another seed -> other canaries
    (tmp_path / "other").mkdir()
    pipeline(capsys, tmp_path / "other", genome, seed=5)
    a = json.loads(Path("c.json").read_text())["canaries"]
    b = json.loads((tmp_path / "other" / "c.json").read_text())["canaries"]
    assert {e["secret"] for e in a}.isdisjoint({e["secret"] for e in b})


def test_splice_pipeline_counts(tmp_path, capsys):
    genome = shared_path("data", "small", "lambda_phage.fa.gz")
    pipeline(capsys, tmp_path, genome, mode="splice")
    m = json.loads((tmp_path / "p.canaries.json").read_text())
    with SequenceStore(tmp_path / "p.h5") as st:
        col = st.column("canary").tolist()
        assert len(st) == 2 * (48502 // 500)
        member = st.member_mask()
    for e in m["canaries"]:
        assert col.count(e["id"]) == e["repetitions"]
        for p in e["placements"]:
            assert member[p["row"]]  # planted rows are members


# -- bad input: one line on stderr, exit 2, nothing written ---------------------------------------
def bad_inputs(d: Path) -> dict[str, Path]:
    files = {"empty.fa": b"", "noheader.fa": b"ACGTACGT\nACGT\n", "garbage.bin": bytes(range(256)) * 8,
             "at.fa": b">r1\nACGTNN\nAC@T\n"}
    out = {}
    for name, data in files.items():
        (d / name).write_bytes(data)
        out[name] = d / name
    seq = alphabet.decode(np.random.default_rng(0).integers(0, 4, 40_000).astype(np.uint8))
    z = gzip.compress(f">r\n{seq}\n".encode())
    (d / "trunc.fa.gz").write_bytes(z[: len(z) // 2])
    out["trunc.fa.gz"] = d / "trunc.fa.gz"
    with h5py.File(d / "other.h5", "w") as f:
        f["x"] = np.arange(3)
    out["other.h5"] = d / "other.h5"
    out["missing.fa"] = d / "missing.fa"
    return out


@pytest.mark.parametrize("name,message", [
    ("missing.fa", "no such file"), ("empty.fa", "is empty"), ("noheader.fa", "no FASTA header line"),
    ("garbage.bin", "binary data, not a FASTA file"), ("at.fa", "record 'r1', position 9: '@'"),
    ("trunc.fa.gz", "truncated or corrupt gzip"), ("other.h5", "binary data, not a FASTA file"),
])
def test_window_bad_input(tmp_path, capsys, name, message):
    files = bad_inputs(tmp_path)
    before = set(tmp_path.iterdir())
    rc, out, err = run(capsys, "data", "window", files[name], "--out", tmp_path / "o.h5", "--length", 10)
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("glmjax: error: ") and message in err
    assert set(tmp_path.iterdir()) == before  # no output, no partial file


@pytest.mark.parametrize("argv,message", [
    (["data", "info", "{other.h5}"], "not written by glmjax, not a glmjax.SequenceStore"),
    (["data", "info", "{missing.fa}"], "no such file"),
    (["data", "info", "{empty.fa}"], "is empty"),
    (["data", "info", "{at.fa}"], "is not an HDF5 file"),
    (["data", "split", "{other.h5}", "--member-fraction", "0.5", "--seed", "1"], "not a glmjax.SequenceStore"),
    (["data", "canaries", "--out", "{o.json}", "--num", "2", "--prefix-len", "5", "--secret-len", "12",
      "--seed", "1", "--screen", "{other.h5}"], "not a glmjax.SequenceStore"),
    (["data", "plant", "{other.h5}", "--canaries", "{c.json}", "--schedule", "1", "--out", "{o.h5}",
      "--seed", "1"], "not a glmjax.SequenceStore"),
    (["data", "plant", "{w.h5}", "--canaries", "{other.h5}", "--schedule", "1", "--out", "{o.h5}",
      "--seed", "1"], "not JSON"),
    (["data", "plant", "{w.h5}", "--canaries", "{c.json}", "--schedule", "1,2,4,8,16,32,64", "--out", "{o.h5}",
      "--seed", "1", "--mode", "splice"], "spliced copies but"),
    (["data", "plant", "{w.h5}", "--canaries", "{long.json}", "--schedule", "1", "--out", "{o.h5}",
      "--seed", "1", "--mode", "splice"], "longest window"),
    (["data", "plant", "{w.h5}", "--canaries", "{c.json}", "--schedule", "1,0", "--out", "{o.h5}",
      "--seed", "1"], "--schedule must be"),
    (["data", "synth", "--out", "{o.h5}", "--num", "5", "--length", "10", "--order", "2", "--seed", "1"],
     "--order needs --fit"),
    (["data", "synth", "--out", "{o.h5}", "--num", "5", "--length", "10", "--fit", "{noheader.fa}",
      "--seed", "1"], "no FASTA header line"),
    (["data", "canaries", "--out", "{o.json}", "--num", "50", "--prefix-len", "5", "--secret-len", "4",
      "--seed", "1", "--screen", "{w.h5}"], "passed the rules"),
])
def test_other_commands_bad_input(tmp_path, capsys, argv, message):
    files = bad_inputs(tmp_path)
    rc, _, _ = run(capsys, "data", "window", shared_path("data", "small", "phiX174.fa.gz"), "--out",
                   tmp_path / "w.h5", "--length", 200)
    assert rc == 0
    for name, args in (("c.json", ("--num", "20", "--prefix-len", "10", "--secret-len", "16")),
                       ("long.json", ("--num", "2", "--prefix-len", "300", "--secret-len", "16"))):
        rc, _, _ = run(capsys, "data", "canaries", "--out", tmp_path / name, *args, "--seed", "1")
        assert rc == 0
    names = {**{k: str(v) for k, v in files.items()}, "w.h5": str(tmp_path / "w.h5"),
             "c.json": str(tmp_path / "c.json"), "long.json": str(tmp_path / "long.json"),
             "o.h5": str(tmp_path / "o.h5"), "o.json": str(tmp_path / "o.json")}
    before = {p: p.read_bytes() for p in tmp_path.iterdir()}
    rc, out, err = run(capsys, *[names[a[1:-1]] if a.startswith("{") else a for a in argv])
    assert rc == 2, err
    assert err.count("\n") == 1 and err.startswith("glmjax: error: ") and message in err, err
    assert {p: p.read_bytes() for p in tmp_path.iterdir()} == before  # nothing written or changed


# -- resume after SIGKILL -----------------------------------------------------------------------
_CHILD = textwrap.dedent("""
    import sys, time
    from glmjax.storage import TableWriter
    from glmjax.data.fasta import WindowSpec, window_to_store
    original = TableWriter.commit
    calls = []
    def commit(self, rows=None):
        calls.append(rows)
        if len(calls) == 4:  # the 4th batch is in the datasets but not yet counted
            self.f.flush()
            print("ready", flush=True)
            time.sleep(120)
        original(self, rows)
    TableWriter.commit = commit
    window_to_store(sys.argv[1], sys.argv[2], WindowSpec(100, rc=True), batch_rows=64)
""")


def test_window_resume_after_sigkill(tmp_path, capsys):
    genome = shared_path("data", "small", "lambda_phage.fa.gz")
    out = tmp_path / "w.h5"
    (tmp_path / "child.py").write_text(_CHILD)
    env = dict(os.environ)  # the installed package, as a user runs it
    proc = subprocess.Popen([sys.executable, str(tmp_path / "child.py"), str(genome), str(out)],
                            stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "ready"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not out.exists() and partial_path(out).exists()
    with h5py.File(partial_path(out), "r") as f:
        assert int(f.attrs["committed_rows"]) == 3 * 64 and f["rows"]["id"].shape[0] == 4 * 64

    # other options: refused, and the partial file is kept for a proper resume
    rc, _, err = run(capsys, "data", "window", genome, "--out", out, "--length", 100, "--resume")
    assert rc == 2 and "other options (windowing differs)" in err
    assert partial_path(out).exists()

    rc, text, _ = run(capsys, "data", "window", genome, "--out", out, "--length", 100, "--rc", "--resume")
    assert rc == 0 and "resumed rows     192" in text
    rc, _, _ = run(capsys, "data", "window", genome, "--out", tmp_path / "fresh.h5", "--length", 100, "--rc")
    with SequenceStore(out) as a, SequenceStore(tmp_path / "fresh.h5") as b:
        assert len(a) == len(b) == 2 * 485
        assert list(a.ids) == list(b.ids)
        for x, y in zip(a.sequences(), b.sequences(), strict=True):
            np.testing.assert_array_equal(x, y)
        assert a.provenance["counts"] == b.provenance["counts"]


def test_resume_with_unrelated_partial_is_refused(tmp_path, capsys):
    genome = shared_path("data", "small", "phiX174.fa.gz")
    out = tmp_path / "w.h5"
    w = SequenceStoreWriter(out, provenance={"source": {"sha256": "0" * 64},
                                             "windowing": WindowSpec(100).to_dict()})
    w.f.close()
    rc, _, err = run(capsys, "data", "window", genome, "--out", out, "--length", 100, "--resume")
    assert rc == 2 and "another input" in err and "(source differs)" in err
    assert partial_path(out).exists() and not out.exists()


# -- E. coli acceptance timing ------------------------------------------------------------------
@pytest.mark.slow
def test_ecoli_window_plant_split_under_a_minute(tmp_path, capsys):
    genome = shared_path("data", "prokaryote", "ecoli_k12_mg1655.fa.gz")
    d = tmp_path
    steps = [
        ("window", ["data", "window", genome, "--out", d / "ecoli.h5", "--length", 1000]),
        ("canaries", ["data", "canaries", "--out", d / "c.json", "--num", 100, "--prefix-len", 50,
                      "--secret-len", 20, "--seed", 1, "--controls", 20, "--screen", d / "ecoli.h5"]),
        ("plant", ["data", "plant", d / "ecoli.h5", "--canaries", d / "c.json", "--schedule",
                   "1,2,4,8,16,32,64", "--out", d / "planted.h5", "--seed", 2]),
        ("split", ["data", "split", d / "planted.h5", "--member-fraction", 0.5, "--seed", 3]),
        ("info", ["data", "info", d / "planted.h5"]),
    ]
    times = {}
    for name, argv in steps:
        t0 = time.perf_counter()
        rc, out, err = run(capsys, *argv)
        times[name] = time.perf_counter() - t0
        assert rc == 0, err
    print(json.dumps({k: round(v, 2) for k, v in times.items()}), file=sys.stderr)
    assert sum(times.values()) < 60
    table = out.splitlines()
    for reps in (1, 2, 4, 8, 16, 32, 64):
        assert any(x.split()[:1] == [str(reps)] for x in table)
    with SequenceStore(d / "planted.h5") as st:
        assert len(st) == 4639 + 1781
