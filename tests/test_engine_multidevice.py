"""Scores do not depend on the number of devices or processes: 1 CPU device (in process) vs 8
forced host devices (subprocess) vs two ``jax.distributed`` processes on localhost."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import glmjax.models as gm
from glmjax.data.store import Record, SequenceStoreWriter
from glmjax.engine import merge_scores, score
from glmjax.engine.scorestore import ROW_COLUMNS, ScoreStore

ROOT = Path(__file__).resolve().parents[1]
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def _env(tmp: Path, devices: int | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["GLMJAX_JAX_CACHE"] = str(tmp / "jax-cache")
    env["GLMJAX_QUIET"] = "1"
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    # cheaper CPU code generation: these runs compile far more than they compute
    flags = [FAST_COMPILE]
    if devices:
        flags.append(f"--xla_force_host_platform_device_count={devices}")
    env["XLA_FLAGS"] = " ".join(flags)
    return env


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("multidevice")
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, 4, int(rng.integers(25, 32))).astype(np.uint8) for _ in range(13)]
    store = tmp / "in.h5"
    with SequenceStoreWriter(store) as w:
        w.add([Record(id=f"s{i}", codes=s) for i, s in enumerate(seqs)])
    models = {}
    for fam, seed in (("llama", 3), ("nt", 1)):
        models[fam] = gm.build(fam, seed=seed)
        gm.save(models[fam], tmp / fam)
    return tmp, store, models


def _cols(path):
    with ScoreStore(path) as s:
        return {c: s.column(c) for c in ROW_COLUMNS}, s.mode, s.mode_params


def _same(a, b):
    assert a[1:] == b[1:]
    for c in ROW_COLUMNS:
        if a[0][c].dtype.kind in "fc":
            np.testing.assert_allclose(a[0][c], b[0][c], rtol=1e-5, atol=1e-5, err_msg=c)
        else:
            np.testing.assert_array_equal(a[0][c], b[0][c], err_msg=c)


def test_eight_devices_equal_one(setup):
    tmp, store, models = setup
    loaded = {f: gm.load(tmp / f) for f in models}
    score(loaded["llama"], store, tmp / "one_llama.h5")
    score(loaded["nt"], store, tmp / "one_nt.h5", pll="random:3", seed=5)
    code = (
        "import jax, sys\n"
        "from glmjax.cli import main\n"
        "assert jax.device_count() == 8, jax.devices()\n"
        f"rc = main(['score', '--model', r'{tmp / 'llama'}', '--input', r'{store}', '--out', r'{tmp / 'eight_llama.h5'}',"
        " '--devices', '8', '--block-rows', '5'])\n"
        f"rc |= main(['score', '--model', r'{tmp / 'nt'}', '--input', r'{store}', '--out', r'{tmp / 'eight_nt.h5'}',"
        " '--devices', '8', '--pll', 'random:3', '--seed', '5'])\n"
        "sys.exit(rc)\n")
    r = subprocess.run([sys.executable, "-c", code], env=_env(tmp, 8), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    _same(_cols(tmp / "one_llama.h5"), _cols(tmp / "eight_llama.h5"))
    _same(_cols(tmp / "one_nt.h5"), _cols(tmp / "eight_nt.h5"))


def test_two_distributed_processes_equal_one(setup):
    tmp, store, models = setup
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp / "dist.h5"
    procs = [subprocess.Popen([sys.executable, "-m", "glmjax.cli", "score", "--model", str(tmp / "llama"),
                               "--input", str(store), "--out", str(out), "--coordinator", f"127.0.0.1:{port}",
                               "--num-processes", "2", "--process-id", str(i)],
                              env=_env(tmp), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    shards = sorted(tmp.glob("dist.shard*-of-00002.h5"))
    assert len(shards) == 2
    with ScoreStore(shards[0]) as s0, ScoreStore(shards[1]) as s1:
        assert s0.provenance["shard"]["rows"] == [0, 6] and s1.provenance["shard"]["rows"] == [6, 13]
    merge_scores(shards, tmp / "merged.h5")
    if not (tmp / "one_llama.h5").exists():
        score(gm.load(tmp / "llama"), store, tmp / "one_llama.h5")
    _same(_cols(tmp / "one_llama.h5"), _cols(tmp / "merged.h5"))
