"""``glmjax score`` / ``merge-scores`` / ``bench`` on the command line: a SIGKILLed run resumed by
the same command equals an uninterrupted one; user mistakes exit 2 before scoring and leave no
file; the benchmark script runs tiny on CPU."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

import glmjax.models as gm
from glmjax.cli import main
from glmjax.data.store import Record, SequenceStoreWriter
from glmjax.engine import runner
from glmjax.engine.scorestore import ROW_COLUMNS, TOKEN_COLUMNS, ScoreStore
from glmjax.storage import partial_path

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _fast_compile(tmp_path_factory, monkeypatch):
    """In-process runs compile far more than they compute: cheaper CPU code generation."""
    monkeypatch.setenv("GLMJAX_JAX_CACHE", str(tmp_path_factory.getbasetemp() / "jax-cache"))
    monkeypatch.setattr(runner, "COMPILER_OPTIONS",
                        {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True})


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    store = tmp / "in.h5"
    with SequenceStoreWriter(store) as w:
        w.add([Record(id=f"s{i}", codes=rng.integers(0, 4, int(rng.integers(25, 32))).astype(np.uint8))
               for i in range(120)])
    gm.save(gm.build("llama", seed=3), tmp / "llama")
    return tmp, store


def _env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["GLMJAX_JAX_CACHE"] = str(tmp / "jax-cache")
    env["GLMJAX_QUIET"] = "1"
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env["HDF5_USE_FILE_LOCKING"] = "FALSE"
    # cheaper CPU code generation: these runs compile far more than they compute
    env["XLA_FLAGS"] = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
    return env


def _committed(path: Path) -> int:
    try:
        with h5py.File(path, "r", locking=False) as f:
            return int(f.attrs["committed_rows"])
    except (OSError, KeyError):
        return 0


def _read(path: Path) -> tuple[dict, dict]:
    with ScoreStore(path) as s:
        return {c: s.column(c) for c in ROW_COLUMNS}, {c: s.ragged_rows(c) for c in TOKEN_COLUMNS}


def test_sigkill_then_rerun_equals_uninterrupted(setup):
    tmp, store = setup
    cmd = [sys.executable, "-m", "glmjax.cli", "score", "--model", str(tmp / "llama"), "--input", str(store),
           "--per-token", "--block-rows", "8", "--batch-tokens", "256"]
    env = _env(tmp)
    full = tmp / "full.h5"
    r = subprocess.run([*cmd, "--out", str(full)], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp / "killed.h5"
    proc = subprocess.Popen([*cmd, "--out", str(out)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None and _committed(partial_path(out)) < 16:
        time.sleep(0.02)
    killed_at = _committed(partial_path(out))
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists() and partial_path(out).exists()
    assert 16 <= killed_at < 120
    r = subprocess.run([*cmd, "--out", str(out)], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed after" in r.stdout
    a_rows, a_tok = _read(full)
    b_rows, b_tok = _read(out)
    for c in ROW_COLUMNS:
        np.testing.assert_array_equal(a_rows[c], b_rows[c], err_msg=c)
    for c in TOKEN_COLUMNS:
        assert len(a_tok[c]) == len(b_tok[c]) == 120
        for x, y in zip(a_tok[c], b_tok[c], strict=True):
            np.testing.assert_array_equal(x, y)


def test_user_mistakes_exit_2_and_leave_no_file(setup, tmp_path, capsys):
    tmp, store = setup
    model = str(tmp / "llama")
    long = tmp_path / "long.h5"
    with SequenceStoreWriter(long) as w:
        w.add([Record(id="short", codes=np.zeros(20, np.uint8)), Record(id="chr_long", codes=np.zeros(5000, np.uint8))])
    scores = tmp_path / "s.h5"
    assert main(["score", "--model", model, "--input", str(store), "--out", str(scores), "--block-rows", "512"]) == 0
    cases = [
        (["--model", str(tmp_path / "nomodel"), "--input", str(store)], "no such model"),
        (["--model", model, "--input", str(scores)], "not a glmjax.SequenceStore"),
        (["--model", model, "--input", str(long)], "chr_long"),
        (["--model", model, "--input", str(tmp_path / "missing.fa")], "no such input"),
        (["--model", model, "--input", str(store), "--pll", "exact"], "causal"),
        (["--model", model, "--input", str(store), "--window", "0"], "--window"),
    ]
    for i, (args, msg) in enumerate(cases):
        out = tmp_path / f"bad{i}.h5"
        assert main(["score", *args, "--out", str(out)]) == 2, args
        err = capsys.readouterr().err
        assert msg in err and "Traceback" not in err, err
        assert not out.exists() and not partial_path(out).exists()
    assert main(["score", "--model", model, "--input", str(store), "--out", str(scores)]) == 2
    assert "already exists" in capsys.readouterr().err
    # merge-scores refuses an incomplete set of shards
    assert main(["merge-scores", str(scores), "--out", str(tmp_path / "m.h5")]) == 2
    assert "complete set of shards" in capsys.readouterr().err
    assert main(["merge-scores", str(scores), "--out", str(tmp_path / "m.h5"), "--allow-partial"]) == 0
    with ScoreStore(tmp_path / "m.h5") as m, ScoreStore(scores) as s:
        np.testing.assert_array_equal(m.column("sum_logp"), s.column("sum_logp"))


def test_bench_command_json(capsys):
    assert main(["bench", "--family", "llama", "--shape", "tiny", "--seq-len", "30", "--iters", "2", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    r = rows[0]
    assert r["devices"] == 1 and r["family"] == "llama" and r["length"] == 32 and r["tokens_per_row"] == 30
    for k in ("compile_s", "tokens_per_s", "sequences_per_s", "flops_per_s", "peak_flops_per_s", "bytes_per_s"):
        assert r[k] > 0, k
    assert 0 < r["flops_fraction"] < 1.5
    np.testing.assert_allclose(r["tokens_per_s"], r["sequences_per_s"] * 30, rtol=1e-9)


@pytest.mark.slow
def test_bench_script_smoke(tmp_path):
    out = tmp_path / "b.json"
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_score.py"), "--smoke", "--models",
                        "hyenadna:tiny,nt:tiny-v2", "--workdir", str(tmp_path / "w"), "--json-out", str(out)],
                       env=_env(tmp_path), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout)
    assert res == json.loads(out.read_text())
    hy, nt = res["models"]
    for m in (hy, nt):
        assert m["kernel"][0]["tokens_per_s"] > 0 and m["host"]["tokens_per_s"] > 0
        assert [e["store"] for e in m["end_to_end"]] == ["small", "large"]
        assert all(e["fraction_of_kernel"] > 0 for e in m["end_to_end"])
        assert m["peak_rss_mb_large"] >= m["peak_rss_mb_small"] > 0
    assert nt["torch"]["tokens_per_s"] > 0 and nt["exact_pll"]["speedup"] > 0
    assert res["data"]["large_rows"] == 600
