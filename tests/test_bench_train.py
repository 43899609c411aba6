"""scripts/bench_train.py --smoke: every measurement is reported, the peer holds the same
architecture, and the ensemble comparison trains the same number of tokens both ways."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_smoke_reports_every_measurement(tmp_path):
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_train.py"), "--smoke", "--out", str(out)],
                       capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout)
    assert res == json.loads(out.read_text()) and res["finished"] is True
    for key in ("device", "backend", "jax_version", "dtype", "matmul_peak_tflops", "models", "peer", "ensemble",
                "tokens_per_s", "speedup"):
        assert key in res, key
    names = ("tiny", "llama-100m", "hyenadna-small-32k")
    assert set(res["tokens_per_s"]) == {*names, "peer:llama-100m"}
    assert set(res["speedup"]) == {"llama-100m_vs_peer", "ensemble_vmapped_vs_sequential_total",
                                   "ensemble_vmapped_vs_sequential_excluding_compile",
                                   "ensemble_vmapped_vs_sequential_step"}
    for name in names:
        m = res["models"][name]
        assert m["compile_s"] > 0 and m["step_s"] > 0 and m["finite"]
        assert math.isclose(m["tokens_per_s"], m["tokens_per_step"] / m["step_s"], rel_tol=1e-9)
        # a few small steps from a small init: the loss is still near uniform over the vocabulary
        vocab = m["config"]["vocab_size"]
        assert abs(m["final_loss"] - math.log(vocab)) < 0.5, (name, m["final_loss"])
    big, peer = res["models"]["llama-100m"], res["peer"]["llama-100m"]
    # the peer is the same architecture: same parameter count, same batch and length
    assert peer["params"] == big["params"]
    assert (peer["batch"], peer["seq_tokens"]) == (big["batch"], big["seq_tokens"])
    assert abs(peer["final_loss"] - math.log(big["config"]["vocab_size"])) < 0.5
    assert math.isclose(big["ratio_vs_peer"], big["tokens_per_s"] / peer["tokens_per_s"], rel_tol=1e-9)
    ens = res["ensemble"]
    seq, vm = ens["sequential"], ens["vmapped"]
    assert seq["models_measured"] == ens["models"] == len(seq["per_model_s"]) and not seq["extrapolated"]
    assert math.isclose(seq["total_s"], sum(seq["per_model_s"]), abs_tol=1e-2)
    # every sequential Trainer compiles its own step; the vmapped ensemble compiles one for all
    assert seq["compilations"] >= ens["models"] and vm["compilations"] >= 1
    for d in (seq, vm):
        assert d["total_s"] > d["compile_s"] > 0 and math.isclose(d["run_s"], d["total_s"] - d["compile_s"],
                                                                   abs_tol=2e-3)
    assert math.isclose(ens["speedup_total"], seq["total_s"] / vm["total_s"], rel_tol=1e-9)
    st = ens["step_level"]
    assert st["models"] == ens["models"] and st["speedup"] > 0
    assert res["matmul_peak_tflops"]["tflops"] > 0
