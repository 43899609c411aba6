"""scripts/reproduce_paper.py: the paper's grid end to end on CPU (``--tiny``: 2 dataset kinds x the
causal transformer x full/LoRA; ``--small``, marked slow: the 4 architecture classes), resume,
input checks, and the window sampler."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "reproduce_paper.py"


def _module():
    spec = importlib.util.spec_from_file_location("reproduce_paper", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the class is built
    spec.loader.exec_module(mod)
    return mod


rp = _module()


# CPU compilation dominates these runs; XLA's cheapest CPU passes halve it (same results here).
FAST_XLA = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def _run(*args: str, timeout: int = 1200) -> subprocess.CompletedProcess:
    env = {**os.environ, "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} {FAST_XLA}".strip()}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          env=env)


def _check_outputs(out: Path, datasets: tuple, families: tuple, schedule: tuple) -> dict:
    """Every expected cell, table column, figure; per-repetition rows for 0 (controls) + schedule."""
    res = json.loads((out / "results.json").read_text())
    assert res["schema"] == "glmjax.PaperReproduction" and res["complete"] is True
    expected = {f"{d}/{f}/{m}" for d in datasets for f in families for m in ("full", "lora")}
    assert set(res["expected_cells"]) == expected and set(res["cells"]) == expected
    for cid, c in res["cells"].items():
        assert (out / "cells" / (cid.replace("/", "__") + ".json")).exists()
        assert [r["repetitions"] for r in c["by_repetition"]] == [0, *schedule]
        # the controls are the canaries' null: with fewer than 100 of them the threshold is the lowest
        # control, and the chance level at 0 copies is the expected FPR 1 / (controls + 1)
        assert c["by_repetition"][0]["detection_tpr"] == pytest.approx(1 / (res["config"]["controls"] + 1))
        assert all(r["detection_tpr"] is not None for r in c["by_repetition"])
        v = c["risk"]["vectors"]
        assert set(v) == {"detection", "extraction", "mia"}
        assert all(0.0 <= x <= 1.0 for x in v.values())
        assert c["risk"]["worst_case"] == max(v.values())
        assert 0.0 <= c["mia"]["auc_strongest"] <= 1.0 and 0.0 <= c["mia"]["auc_loss"] <= 1.0
        # LoRA trains a small fraction of the weights; full fine-tuning all of them
        if c["finetune"] == "lora":
            assert 0 < c["trainable_params"] < c["params"] / 2 and c["train"]["lora_layers"] > 0
        else:
            assert c["trainable_params"] == c["params"]
        assert (out / c["report"]).exists()
    with (out / "tables" / "vectors_by_repetition.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == rp.REP_COLUMNS and len(rows) == len(expected) * (len(schedule) + 1)
    with (out / "tables" / "risk_by_model.csv").open() as fh:
        risk = list(csv.DictReader(fh))
    assert tuple(risk[0]) == rp.RISK_COLUMNS and len(risk) == len(expected)
    for name in ("vectors_by_repetition.md", "risk_by_model.md"):
        head = (out / "tables" / name).read_text().splitlines()[0]
        assert head.startswith("| dataset | family | architecture | finetune |")
    for name in ("exposure", "extraction", "detection_tpr", "mia_auc"):
        png = out / "figures" / f"{name}_vs_repetition.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "figures" / "risk_by_model.png").stat().st_size > 1000
    assert "risk_by_model.png" in (out / "summary.md").read_text()
    return res


def _vector(res: dict, family: str, finetune: str, key: str, reps: int) -> list[float]:
    return [next(r[key] for r in c["by_repetition"] if r["repetitions"] == reps)
            for c in res["cells"].values() if c["family"] == family and c["finetune"] == finetune]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny grid in two runs: the first stopped by --budget after one cell, the second resuming."""
    data = shared_path("data")
    out = tmp_path_factory.mktemp("repro") / "tiny"
    common = ("--tiny", "--out", str(out), "--data-root", str(data), "--seed", "0", "--jax-cache",
              str(out.parent / "jax-cache"))
    # data preparation takes well under 5 s, a cell (training + audit, compiled afresh) far more
    first = _run(*common, "--budget", "5")
    assert first.returncode == 0, first.stderr[-3000:]
    partial = json.loads((out / "results.json").read_text())
    second = _run(*common)
    assert second.returncode == 0, second.stderr[-3000:]
    return out, data, first.stdout, partial, second.stdout


def test_budget_stops_and_rerun_resumes(tiny):
    _, _, first, partial, second = tiny
    assert "stopped by --budget with 3 cells left" in first and "[1/4]" in first
    assert partial["complete"] is False and list(partial["cells"]) == ["synthetic/llama/full"]
    assert "(1 already done)" in second and "[1/4]" not in second
    assert all(f"[{k}/4]" in second for k in (2, 3, 4))


def test_tiny_grid_outputs_and_trends(tiny):
    out = tiny[0]
    prof = rp.PROFILES["tiny"]
    res = _check_outputs(out, prof.datasets, prof.families, prof.schedule)
    lo, hi = min(prof.schedule), max(prof.schedule)
    for mode in ("full", "lora"):
        e_lo = _vector(res, "llama", mode, "exposure_mean", lo)
        e_hi = _vector(res, "llama", mode, "exposure_mean", hi)
        # the causal transformer memorizes a canary seen 32 times far better than one seen once
        assert all(h > low + 2.0 for low, h in zip(e_lo, e_hi, strict=True)), (mode, e_lo, e_hi)
        assert np.mean(_vector(res, "llama", mode, "extraction_rate", hi)) >= \
            np.mean(_vector(res, "llama", mode, "extraction_rate", lo))
    auc_hi = _vector(res, "llama", "full", "mia_auc", hi) + _vector(res, "llama", "lora", "mia_auc", hi)
    assert np.mean(auc_hi) > 0.5
    info = res["datasets"]["prokaryote"]
    assert info["public_windows"] == prof.public_windows and info["cohort_windows"] == prof.cohort_windows
    assert info["canaries"] == prof.canaries_per_repetition * len(prof.schedule)


def test_rerun_of_a_finished_grid_trains_nothing(tiny):
    out, data = tiny[:2]
    before = json.loads((out / "results.json").read_text())["cells"]
    r = _run("--tiny", "--out", str(out), "--data-root", str(data), "--seed", "0", "--jax-cache", "off",
             timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "(4 already done)" in r.stdout and "[1/4]" not in r.stdout
    assert json.loads((out / "results.json").read_text())["cells"] == before


def test_other_profile_or_seed_in_same_folder_is_refused(tiny, capsys):
    out, data = tiny[:2]
    assert rp.main(["--tiny", "--out", str(out), "--data-root", str(data), "--seed", "1"]) == 2
    err = capsys.readouterr().err
    assert "another profile or seed" in err and len(err.strip().splitlines()) == 1
    assert rp.main(["--tiny", "--out", str(out), "--data-root", str(data), "--schedule", "1,16"]) == 2


def test_missing_data_is_a_clear_error(tmp_path, capsys):
    assert rp.main(["--tiny", "--out", str(tmp_path / "o"), "--data-root", str(tmp_path / "nope")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    empty = tmp_path / "root"
    empty.mkdir()
    assert rp.main(["--tiny", "--out", str(tmp_path / "o"), "--data-root", str(empty)]) == 2
    err = capsys.readouterr().err
    assert "prokaryote" in err and "--prokaryote PATH" in err
    assert rp.main(["--tiny", "--out", str(tmp_path / "o"), "--datasets", "synthetic,marsupial"]) == 2
    assert "unknown marsupial" in capsys.readouterr().err
    assert not (tmp_path / "o" / "results.json").exists()


def test_sample_windows_balanced_deterministic_and_n_free():
    files = [shared_path("data", "small", f) for f in ("phiX174.fa.gz", "lambda_phage.fa.gz",
                                                        "sars_cov_2.fa.gz")]
    a = rp.sample_windows(files, 100, 165, seed=3)
    b = rp.sample_windows(files, 100, 165, seed=3)
    assert [r.id for r in a] == [r.id for r in b] and len(a) == 165
    groups = {}
    for r in a:
        groups[r.group] = groups.get(r.group, 0) + 1
        assert r.codes.shape == (100,) and (r.codes == 4).mean() <= 0.1
        name, span = r.id.rsplit(":", 1)
        assert span == f"{r.start + 1}-{r.start + 100}(+)" and r.start % 100 == 0
    # phiX174 (5.4 kb) gives all its 53 windows; the rest is split evenly
    assert groups == {"phiX174": 53, "lambda_phage": 56, "sars_cov_2": 56}
    assert len({r.id for r in a}) == 165
    assert [r.id for r in rp.sample_windows(files, 100, 165, seed=4)] != [r.id for r in a]
    with pytest.raises(rp.ConfigError, match="give only"):
        rp.sample_windows(files[:1], 100, 54, seed=0)


@pytest.mark.slow
def test_small_profile_all_architecture_classes(tmp_path):
    data = shared_path("data")
    out = tmp_path / "small"
    r = _run("--small", "--out", str(out), "--data-root", str(data), "--jax-cache", str(tmp_path / "jax-cache"),
             timeout=3600)
    assert r.returncode == 0, r.stderr[-3000:]
    prof = rp.PROFILES["small"]
    res = _check_outputs(out, prof.datasets, prof.families, prof.schedule)
    archs = {c["architecture"] for c in res["cells"].values()}
    assert archs == {"masked-transformer", "long-convolution", "state-space", "causal-transformer"}
    for fam in prof.families:
        e_lo = np.mean(_vector(res, fam, "full", "exposure_mean", 1))
        e_hi = np.mean(_vector(res, fam, "full", "exposure_mean", 64))
        assert e_hi > e_lo, (fam, e_lo, e_hi)


def test_merge_folders_of_sub_grids(tiny, tmp_path, capsys):
    """Sub-grids run in separate folders (e.g. one dataset per GPU) merge into one set of outputs."""
    out = tiny[0]
    full = json.loads((out / "results.json").read_text())
    parts = []
    for ds in ("synthetic", "prokaryote"):
        d = tmp_path / ds
        (d / "cells").mkdir(parents=True)
        cells = {k: v for k, v in full["cells"].items() if k.startswith(f"{ds}/")}
        assert cells
        (d / "results.json").write_text(json.dumps({**full, "cells": cells, "datasets": {ds: full["datasets"][ds]},
                                                    "complete": False}))
        parts.append(str(d))
    merged = tmp_path / "merged"
    assert rp.main(["--tiny", "--out", str(merged), "--merge", *parts]) == 0
    res = json.loads((merged / "results.json").read_text())
    assert res["complete"] is True and res["cells"] == full["cells"]
    assert set(res["datasets"]) == {"synthetic", "prokaryote"} and len(res["merged_from"]) == 2
    assert len(list((merged / "cells").glob("*.json"))) == len(full["cells"])
    assert (merged / "tables" / "risk_by_model.csv").exists() and (merged / "figures" / "risk_by_model.png").exists()
    # the same cell finished with other results, another seed, or the output folder itself: refused
    bad = tmp_path / "bad"
    bad.mkdir()
    cid = next(iter(json.loads(Path(parts[0], "results.json").read_text())["cells"]))
    cell = {**full["cells"][cid], "risk": {**full["cells"][cid]["risk"], "worst_case": -1.0}}
    (bad / "results.json").write_text(json.dumps({**full, "cells": {cid: cell}}))
    capsys.readouterr()
    assert rp.main(["--tiny", "--out", str(tmp_path / "m2"), "--merge", parts[0], str(bad)]) == 2
    assert "different results" in capsys.readouterr().err
    (bad / "results.json").write_text(json.dumps({**full, "seed": 7}))
    assert rp.main(["--tiny", "--out", str(tmp_path / "m3"), "--merge", str(bad)]) == 2
    assert "another profile or seed" in capsys.readouterr().err
    assert rp.main(["--tiny", "--out", str(merged), "--merge", str(merged)]) == 2
    assert rp.main(["--tiny", "--out", str(tmp_path / "m4"), "--merge", str(tmp_path / "nowhere")]) == 2


@pytest.mark.parametrize("profile", sorted(rp.PROFILES))
def test_every_profile_model_builds(profile):
    """Every family a profile names has a config that builds (abstractly) with a context that
    holds a window; the Evo entries are StripedHyena models of the stated block pattern."""
    from causal_lm_checks import param_count

    from glmjax import models

    prof = rp.PROFILES[profile]
    for family in prof.models:
        cfg = rp.model_config(family, prof)
        assert cfg.max_len >= prof.window and cfg.dtype == prof.dtype
        assert param_count(models.get_family(family).build, cfg) > 0
    if profile == "full":
        e1, e2 = rp.model_config("evo1", prof), rp.model_config("evo2", prof)
        assert e1.layers == ("modal", "modal", "attn", "modal") and e2.layers == ("hcs", "hcm", "hcl", "attn")
        assert e1.hidden_size == e2.hidden_size == rp.model_config("llama", prof).hidden_size == 256
