"""No data lost: an output that is, contains or lies inside an input is refused; --overwrite
replaces only glmjax's own outputs; options are validated before anything is deleted; one writer
per output at a time (a second is refused while the first finishes intact); file-system errors
are one line with exit status 2."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from importlib import resources

import pytest

from glmjax.cli import main
from glmjax.data.store import SequenceStore
from glmjax.storage import OutputLock, is_own_output


def _genome(tmp_path):
    fa = tmp_path / "genome.fa"
    src = resources.files("glmjax.resources").joinpath("lambda_phage.fa.gz")
    fa.write_text(gzip.decompress(src.read_bytes()).decode())
    return fa


def _err(capsys) -> str:
    return capsys.readouterr().err


def _store(tmp_path, name="w.h5"):
    fa = _genome(tmp_path)
    out = tmp_path / name
    assert main(["data", "window", str(fa), "--out", str(out), "--length", "100"]) == 0
    return fa, out


def test_output_equal_to_an_input_is_refused(tmp_path, capsys):
    fa = _genome(tmp_path)
    before = fa.read_bytes()
    assert main(["data", "window", str(fa), "--out", str(fa), "--length", "100"]) == 2
    assert "is the input INPUT itself" in _err(capsys) and fa.read_bytes() == before
    # through a symlink and a ".." path too
    link = tmp_path / "link.fa"
    link.symlink_to(fa)
    assert main(["data", "window", str(fa), "--out", str(tmp_path / "sub" / ".." / "link.fa"), "--length", "100"]) == 2
    assert fa.read_bytes() == before
    _, store = _store(tmp_path)
    s_before = store.read_bytes()
    assert main(["score", "--model", str(tmp_path / "m"), "--input", str(store), "--out", str(store), "--overwrite"]) == 2
    assert "is the input --input itself" in _err(capsys) and store.read_bytes() == s_before
    man = tmp_path / "c.json"
    assert main(["data", "canaries", "--out", str(man), "--num", "2", "--prefix-len", "8", "--secret-len", "6",
                 "--seed", "1"]) == 0
    assert main(["data", "plant", str(store), "--canaries", str(man), "--schedule", "1", "--out",
                 str(tmp_path / "p.h5"), "--seed", "1", "--manifest-out", str(store)]) == 2
    assert "--manifest-out" in _err(capsys) and store.read_bytes() == s_before
    assert SequenceStore(store).n > 0


def test_output_containing_or_inside_an_input_is_refused(tmp_path, capsys):
    src = tmp_path / "ckpt" / "src"
    src.mkdir(parents=True)
    (src / "config.json").write_text("{}")
    assert main(["models", "convert", str(src), "--out", str(tmp_path / "ckpt"), "--overwrite"]) == 2
    assert "contains the input SRC" in _err(capsys) and (src / "config.json").exists()
    assert main(["models", "convert", str(src), "--out", str(src / "converted")]) == 2
    assert "lies inside the input SRC" in _err(capsys)
    run = tmp_path / "run"
    run.mkdir()
    _, store = _store(run, "data.h5")
    assert main(["train", "--family", "llama", "--data", str(store), "--out", str(run), "--overwrite"]) == 2
    assert "contains the input --data" in _err(capsys) and store.exists()


def test_overwrite_replaces_only_glmjax_outputs(tmp_path, capsys):
    fa, store = _store(tmp_path)
    assert is_own_output(store) and not is_own_output(fa)
    foreign = tmp_path / "notes.h5"
    foreign.write_text("my lab notes")
    assert main(["data", "window", str(fa), "--out", str(foreign), "--length", "100"]) == 2
    assert "not a glmjax store" in _err(capsys) and foreign.read_text() == "my lab notes"
    assert main(["data", "window", str(fa), "--out", str(store), "--length", "50"]) == 0
    assert SequenceStore(store).lengths().max() == 50
    # a folder of someone else's files is never deleted by --overwrite (train, demo, convert)
    mine = tmp_path / "results"
    mine.mkdir()
    (mine / "paper.docx").write_text("draft")
    assert main(["train", "--family", "llama", "--data", str(store), "--out", str(mine), "--overwrite"]) == 2
    assert "glmjax did not write" in _err(capsys) and (mine / "paper.docx").exists()
    assert main(["demo", "--out", str(mine), "--quick"]) == 2
    assert "glmjax did not write" in _err(capsys) and (mine / "paper.docx").exists()


def test_options_are_validated_before_anything_is_deleted(tmp_path, capsys):
    prev = tmp_path / "demo"
    prev.mkdir()
    (prev / ".glmjax").write_text("written by glmjax demo\n")
    (prev / "summary.json").write_text("{}")
    assert main(["demo", "--out", str(prev), "--seed", "-1"]) == 2
    assert "--seed" in _err(capsys) and (prev / "summary.json").exists()
    assert main(["demo", "--out", str(prev), "--families", "nope"]) == 2
    assert (prev / "summary.json").exists()


def test_file_system_errors_are_one_line(tmp_path, capsys):
    fa, store = _store(tmp_path)
    folder = tmp_path / "a-folder.h5"
    folder.mkdir()
    assert main(["data", "window", str(fa), "--out", str(folder), "--length", "100"]) == 2
    assert "is a folder" in _err(capsys) and not list(tmp_path.glob("a-folder.h5.partial"))
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["train", "--family", "llama", "--data", str(store), "--out", str(afile / "run")]) == 2
    err = _err(capsys)
    assert err.startswith("glmjax: error:") and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_a_second_writer_is_refused_while_the_first_finishes(tmp_path):
    out = tmp_path / "big.h5"
    cmd = [sys.executable, "-m", "glmjax.cli", "data", "synth", "--out", str(out), "--num", "100000", "--length",
           "1000", "--seed", "3"]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lock = out.with_name(out.name + ".lock")
    t0 = time.time()
    while not lock.exists() and first.poll() is None and time.time() - t0 < 120:
        time.sleep(0.005)
    assert lock.exists(), "the first writer finished before its lock was seen"
    os.kill(first.pid, signal.SIGSTOP)  # the clash is now deterministic
    try:
        second = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert second.returncode == 2, second.stderr
        assert f"being written by pid {first.pid}" in second.stderr
        assert json.loads(lock.read_text())["pid"] == first.pid
    finally:
        os.kill(first.pid, signal.SIGCONT)
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert SequenceStore(out).n == 100000 and not lock.exists()


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "s.h5"
    lock = OutputLock(out)
    lock.lock.write_text(json.dumps({"pid": dead.pid, "host": lock.host}))
    assert main(["data", "synth", "--out", str(out), "--num", "10", "--length", "20", "--seed", "1"]) == 0
    assert SequenceStore(out).n == 10 and not lock.lock.exists()
    # a live owner on this host: refused with its pid
    lock.lock.write_text(json.dumps({"pid": os.getppid(), "host": lock.host}))
    with pytest.raises(Exception, match=f"being written by pid {os.getppid()}"):
        OutputLock(out).acquire()


def test_an_empty_output_folder_is_accepted(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert is_own_output(empty)
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "a.txt").write_text("x")
    assert not is_own_output(notes)


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 2 MB tmpfs and a read-only one (root only; skipped with the reason elsewhere)."""
    full, ro = tmp_path / "full", tmp_path / "ro"
    full.mkdir()
    ro.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mounted = []
    try:
        for d, opts in ((full, "size=2m"), (ro, "size=1m,ro")):
            r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(d)], capture_output=True, text=True)
            if r.returncode != 0:
                pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or r.returncode})")
            mounted.append(d)
        yield full, ro
    finally:
        for d in mounted:
            subprocess.run(["umount", str(d)], capture_output=True)


def test_full_and_read_only_locations_are_one_line_errors(small_tmpfs, capsys):
    full, ro = small_tmpfs
    synth = ["data", "synth", "--num", "100000", "--length", "1000", "--seed", "1"]
    assert main([*synth, "--out", str(full / "big.h5")]) == 2
    err = _err(capsys)
    assert "not enough space to write" in err and len(err.strip().splitlines()) == 1
    assert list(full.iterdir()) == []  # no partial file, no lock left behind
    assert main(["data", "synth", "--num", "100", "--length", "100", "--seed", "1", "--out", str(full / "s.h5")]) == 0
    assert SequenceStore(full / "s.h5").n == 100
    assert main([*synth, "--out", str(ro / "x.h5")]) == 2
    assert "Read-only file system" in _err(capsys) and list(ro.iterdir()) == []


def test_json_outputs_replace_only_their_own(tmp_path, capsys):
    mine = tmp_path / "mine.json"
    mine.write_text('{"lab": "notes"}')
    argv = ["data", "canaries", "--num", "2", "--prefix-len", "8", "--secret-len", "6", "--seed", "1"]
    assert main([*argv, "--out", str(mine)]) == 2
    assert "glmjax did not write it" in _err(capsys) and mine.read_text() == '{"lab": "notes"}'
    out = tmp_path / "c.json"
    assert main([*argv, "--out", str(out)]) == 0 and main([*argv, "--out", str(out)]) == 0  # its own: replaced
    folder = tmp_path / "adir"
    folder.mkdir()
    assert main([*argv, "--out", str(folder)]) == 2
    assert "is a folder" in _err(capsys) and sorted(p.name for p in tmp_path.iterdir()) == ["adir", "c.json", "mine.json"]
