"""The audit pipeline end to end (tiny causal model, real genome, canaries at 1x and 64x), the
``glmjax audit`` command's input checks, and the demo's data/training/audit path."""

from __future__ import annotations

import json

import numpy as np
import pytest

from glmjax import models
from glmjax.audit.pipeline import AuditOptions, headline, run_audit
from glmjax.audit.schema import validate_report
from glmjax.cli import main
from glmjax.data.canaries import CanaryParams, build_manifest, plant, write_manifest
from glmjax.data.fasta import WindowSpec, window_to_store
from glmjax.data.splits import split_store
from glmjax.data.store import SequenceStore
from glmjax.demo import DemoProfile, run_demo
from glmjax.train.trainer import TrainConfig, train


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    """A tiny llama trained on lambda-phage windows with canaries planted 1x and 64x, audited."""
    from importlib import resources

    d = tmp_path_factory.mktemp("audit")
    fa = resources.files("glmjax.resources").joinpath("lambda_phage.fa.gz")
    window_to_store(str(fa), d / "w.h5", WindowSpec(length=48, stride=96))
    write_manifest(d / "c.json", build_manifest(CanaryParams(num=4, prefix_len=12, secret_len=6, controls=1), 3,
                                                screen_store=d / "w.h5"))
    plant(d / "w.h5", d / "c.json", d / "p.h5", [1, 64], 3, manifest_out=d / "p.json")
    split_store(d / "p.h5", 0.5, 3)
    import dataclasses

    cfg = dataclasses.replace(models.get_family("llama").config_cls.tiny(), hidden_size=64, intermediate_size=128)
    model = models.build("llama", cfg, seed=0)
    train(model, d / "p.h5", TrainConfig(epochs=10, batch_size=32, lr=5e-3, warmup_steps=5), d / "run",
          val_fraction=0.0)
    opts = AuditOptions(exact_k_max=6, neighbours=2, neighbour_rows=100, n_bootstrap=20, beam_width=4)
    lines: list[str] = []
    res = run_audit(d / "run" / "model", d / "p.h5", d / "report", canaries=d / "p.json", opts=opts,
                    log=lines.append)
    res.lines = lines
    return d, res


def test_report_is_complete_and_valid(audited):
    d, res = audited
    rep = json.loads((d / "report" / "report.json").read_text())
    validate_report(rep)
    assert set(rep["risk"]["vectors"]) == {"detection", "extraction", "mia"}
    assert 0.0 <= rep["risk"]["worst_case"] <= 1.0
    assert rep["risk"]["worst_case"] == max(rep["risk"]["vectors"].values())
    attacks = rep["mia"]["attacks"]
    for name in ("loss", "zlib", "kmer3_entropy", "mink_20", "minkpp_20", "dcpdd", "recall", "gradnorm"):
        assert 0.0 <= attacks[name]["auc"] <= 1.0
    assert rep["mia"]["neighbourhood"]["rows"] > 0
    assert {"reference", "lira", "rmia"} <= set(rep["skipped"])
    html = (d / "report" / "report.html").read_text()
    assert "<img" in html and "data:image/png;base64," in html
    # no raw secret anywhere without --reveal
    manifest = json.loads((d / "p.json").read_text())
    for c in manifest["canaries"]:
        assert c["secret"] not in json.dumps(rep) or len(c["secret"]) < 6
    assert "memorization risk" in headline(rep)
    # the planted canaries are calibrated on the never-planted control, the windows on the windows
    det = rep["detection"]
    controls = [c["log_perplexity"] for c in rep["canaries"] if c["repetitions"] == 0]
    cd = det["canaries"]
    assert cd["null"] == "control canaries" and cd["n_nonmembers"] == len(controls) == 1
    assert cd["threshold"] == pytest.approx(min(controls)) and cd["realised_fpr"] == 0.0
    assert [r["repetitions"] for r in cd["groups"]["canaries"]["by_repetition"]] == [1, 64]
    planted = [c["log_perplexity"] for c in rep["canaries"] if c["repetitions"] > 0]
    assert cd["groups"]["canaries"]["tpr"] == pytest.approx(np.mean(np.array(planted) < min(controls)))
    assert det["windows"]["null"] == "non-member windows" and set(det["windows"]["groups"]) == {"members"}


def _file_contents(path) -> list[bytes]:
    """The bytes a reader can get out of ``path``: the raw file, and for HDF5 every dataset
    decoded (decompressed) and every attribute."""
    import h5py

    raw = path.read_bytes()
    out = [raw]
    if raw[:8] == b"\x89HDF\r\n\x1a\n":
        with h5py.File(path, "r") as f:
            def visit(_name, obj):
                for v in obj.attrs.values():
                    out.append(str(v).encode() if not isinstance(v, bytes) else v)
                if isinstance(obj, h5py.Dataset):
                    a = obj[()]
                    if isinstance(a, np.ndarray) and a.dtype.kind in "OSU":
                        out.append("\n".join(x.decode() if isinstance(x, bytes) else str(x)
                                              for x in a.ravel()).encode())
                    else:
                        out.append(np.asarray(a).tobytes())
            f.visititems(visit)
            visit("/", f)
    return out


def test_report_folder_holds_no_secret_and_no_member_sequence(audited):
    """Without --reveal no file of the audit folder (HDF5 datasets decoded) contains a planted
    canary (prefix + secret, as text or as codes) or a member window: the folder can be shared."""
    from glmjax import alphabet

    d, _ = audited
    manifest = json.loads((d / "p.json").read_text())
    store = SequenceStore(d / "p.h5")
    members = [store[i] for i in np.flatnonzero(store.member_mask())]
    needles = []  # (what, bytes)
    for c in manifest["canaries"]:
        full = c["prefix"] + c["secret"]
        needles += [(f"canary {c['id']}", full.encode()), (f"canary {c['id']} codes", alphabet.encode(full).tobytes())]
    for m in members[:40]:
        needles += [("member window", alphabet.decode(m).encode()), ("member window codes", m.tobytes())]
    files = [p for p in (d / "report").rglob("*") if p.is_file()]
    assert any(p.suffix == ".h5" for p in files) and (d / "report" / "report.json") in files
    for p in files:
        blobs = _file_contents(p)
        for what, needle in needles:
            assert not any(needle in b for b in blobs), (what, p)
    assert '"secret"' not in (d / "report" / "report.json").read_text()


def test_exposure_and_extraction_rise_with_repetition(audited):
    _, res = audited
    can = res.report["canaries"]
    by = {r: [c for c in can if c["repetitions"] == r] for r in (0, 1, 64)}
    assert all(by.values())
    e64 = np.mean([c["exposure"] for c in by[64]])
    e1 = np.mean([c["exposure"] for c in by[1]])
    assert e64 > e1 + 3.0, (e1, e64)
    assert all(c["exposure_method"] == "exact" and c["n_candidates"] == 4 ** 6 for c in can)
    assert np.mean([c["extracted"] for c in by[64]]) >= np.mean([c["extracted"] for c in by[1]])


def test_every_stage_is_timed_and_reported(audited):
    d, res = audited
    rep = json.loads((d / "report" / "report.json").read_text())
    t = rep["timings"]
    assert list(t) == ["load", "dcpdd_reference", "scoring", "mia", "neighbourhood", "recall", "gradnorm",
                       "exposure_plan", "canary_scoring", "extraction", "exposure", "statistics"]
    assert all(v >= 0 for v in t.values()) and sum(t.values()) == pytest.approx(rep["seconds"], abs=0.01)
    assert rep["seconds"] <= res.seconds
    # the exposure plan: one secret length, estimated, enumerated, measured
    (row,) = rep["exposure_plan"]
    assert (row["k"], row["canaries"], row["candidates"], row["method"]) == (6, 5, 5 * 4 ** 6, "exact")
    assert row["estimated_seconds"] >= 0 and row["seconds"] > 0 and "budget" in row["reason"]
    # the long stages say what they do and report their progress as plain lines off a terminal
    text = "\n".join(res.lines)
    assert "exposure plan, k = 6: 5 canaries x 4^6 = 20,480 candidates" in text
    done = [ln for ln in res.lines if ln.startswith("exposure (exact")]
    assert done and "20,480/20,480 cand" in done[-1] and "cand/s" in done[-1]
    assert any(ln.startswith("scoring (target): ") and "seq/s" in ln for ln in res.lines)
    assert any(ln.startswith("gradient norm: ") and "seq/s" in ln for ln in res.lines)
    assert any(ln.startswith("DC-PDD: counting 6-grams of the ") for ln in res.lines)
    assert any(ln.startswith("DC-PDD reference: ") and "seq/s" in ln for ln in res.lines)
    assert any(ln.startswith("statistics (attack metrics): ") and "attack/s" in ln for ln in res.lines)


def test_exposure_falls_back_to_sampling_outside_the_budget(audited, capsys):
    d, _ = audited
    # a zero budget: nothing is enumerated, the plan says why, every canary gets the sampled estimate
    res = run_audit(d / "run" / "model", d / "p.h5", d / "report0",
                    canaries=d / "p.json", opts=AuditOptions(exact_k_max=6, exact_budget_s=0.0, neighbours=0,
                                                             n_bootstrap=0, exposure_samples=256),
                    log=lambda *a: None)
    (row,) = res.report["exposure_plan"]
    assert row["method"] == "sampled" and "exceeds the 0 s budget" in row["reason"]
    assert row["estimated_seconds"] > 0 and "seconds" not in row
    assert {c["exposure_method"] for c in res.report["canaries"]} == {"skewnorm"}
    # --exact-k-max 0: never enumerate, not even estimate; the summary prints the stage timings
    assert main(["audit", "--model", str(d / "run" / "model"), "--data", str(d / "p.h5"), "--canaries",
                 str(d / "p.json"), "--out", str(d / "report1"), "--exact-k-max", "0", "--neighbours", "0",
                 "--bootstrap", "0", "--exposure-samples", "256"]) == 0
    out = capsys.readouterr().out
    rep = json.loads((d / "report1" / "report.json").read_text())
    validate_report(rep)
    (row,) = rep["exposure_plan"]
    assert row["method"] == "sampled" and row["estimated_seconds"] is None and "off" in row["reason"]
    assert {c["exposure_method"] for c in rep["canaries"]} == {"skewnorm"}
    assert "exposure_plan" not in rep["timings"] or rep["timings"]["exposure_plan"] < 1.0
    line = next(ln for ln in out.splitlines() if ln.startswith("time: "))
    assert "exposure" in line and f"= {rep['seconds']:,.1f} s" in line


def test_scores_are_kept_for_reanalysis(audited):
    d, _ = audited
    from glmjax.engine.scorestore import ScoreStore

    with SequenceStore(d / "p.h5") as store:
        n = len(store)
    ss = ScoreStore(d / "report" / "scores" / "target.h5")
    assert len(ss) == n and ss.mode == "causal"


def test_membership_scores_reproduce_the_report(audited, tmp_path):
    """OUT/scores/membership.h5 holds every attack's per-window score with its label: the AUCs
    recomputed from it (and from its CSV export) are the report's."""
    from glmjax.audit.metrics import roc_auc
    from glmjax.audit.scoretable import MembershipScores

    d, res = audited
    attacks = res.report["mia"]["attacks"]
    with MembershipScores(d / "report" / "scores" / "membership.h5") as m, SequenceStore(d / "p.h5") as store:
        assert set(m.attacks) == set(attacks)
        idx = np.asarray(m.column("index"))
        kinds = np.asarray(store.column("kind"))
        assert list(idx) == list(np.flatnonzero(kinds != "canary"))
        member = np.asarray(m.column("member"), bool)
        assert (member == store.member_mask()[idx]).all()
        assert list(m.column("id")) == list(np.asarray(store.column("id"))[idx])
        for name in m.attacks:
            s = np.asarray(m.column(name))
            keep = np.isfinite(s)
            assert keep.sum() == attacks[name].get("rows", len(s))
            assert roc_auc(member[keep], s[keep]) == pytest.approx(attacks[name]["auc"], abs=1e-12), name
    out = tmp_path / "membership.csv"
    assert main(["scores", "export", str(d / "report" / "scores" / "membership.h5"), "--out", str(out)]) == 0
    head = out.read_text().splitlines()[0].split(",")
    assert head[:3] == ["index", "id", "member"] and set(head[3:]) == set(attacks)


def test_audit_cli_bad_inputs(tmp_path, capsys):
    assert main(["audit", "--model", str(tmp_path / "nope"), "--data", str(tmp_path / "x.h5"),
                 "--out", str(tmp_path / "r")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    bad = tmp_path / "notastore.h5"
    bad.write_bytes(b"\x89HDF\r\n\x1a\n" + b"garbage" * 10)
    model_dir = models.save(models.build("llama"), tmp_path / "m")
    assert main(["audit", "--model", str(model_dir), "--data", str(bad), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("glmjax: error:") and len(err.strip().splitlines()) == 1
    assert main(["audit", "--model", str(model_dir), "--data", str(bad), "--out", str(tmp_path / "r"),
                 "--fpr", "2"]) == 2
    for flag, value in (("--exact-k-max", "-1"), ("--exact-k-max", "17"), ("--exact-budget", "-5"),
                        ("--exact-budget", "nan"), ("--dcpdd-cap", "0"), ("--dcpdd-n", "0"),
                        ("--gradnorm-p", "3"), ("--recall-shots", "-1"),
                        ("--dcpdd-reference", str(tmp_path / "no.fa"))):
        capsys.readouterr()
        assert main(["audit", "--model", str(model_dir), "--data", str(bad), "--out", str(tmp_path / "r"),
                     flag, value]) == 2
        assert flag in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_demo_runs_end_to_end_on_bundled_genomes(tmp_path, monkeypatch):
    import glmjax.demo as demo

    tiny = DemoProfile(window=48, canaries_per_repetition=1, controls=1, prefix_len=8, secret_len=7,
                       pretrain_epochs=1, epochs=2, lora_epochs=1, batch_size=32, neighbours=0, bootstrap=10)
    monkeypatch.setattr(demo, "QUICK", tiny)
    s = run_demo(tmp_path / "demo", families=("llama",), quick=True, log=lambda *a: None)
    out = tmp_path / "demo"
    assert (out / "report.html").exists() and (out / "report.json").exists()
    assert set(s["models"]) == {"llama-full", "llama-lora"}
    assert s["headline"]["band"] in ("low", "medium", "high")
    rep = json.loads((out / "audits" / "llama-full" / "report.json").read_text())
    assert "reference" in rep["mia"]["attacks"]  # the public-data base model is the reference
    assert sorted(s["models"]["llama-full"]["exposure_by_repetition"]) == ["0", "1", "16", "4", "64"]
    # the top page is an index of every model naming the headline one; report.json is the headline's
    index = (out / "report.html").read_text()
    for m in s["models"].values():
        assert f"href='{m['report']}'" in index and (out / m["report"]).exists()
        assert f"{m['risk']:.3f}" in index
        lo, hi = m["risk_ci"]  # the bootstrap interval of the worst case is shown next to it
        assert 0.0 <= lo <= hi <= 1.0 and f"[{lo:.3f}, {hi:.3f}]" in index
    assert f"for <b>{s['headline']['model']}</b>" in index and "(headline)" in index
    top = json.loads((out / "report.json").read_text())
    assert top["risk"]["worst_case"] == s["headline"]["risk"] == max(m["risk"] for m in s["models"].values())
    # every model's own report names its model
    assert "model <b>" in (out / "audits" / "llama-lora" / "report.html").read_text()
    assert "llama-lora" in (out / "audits" / "llama-lora" / "report.html").read_text()


def test_demo_family_alias_evo(monkeypatch, capsys):
    """`glmjax demo --families evo` trains both StripedHyena generations; repeats are dropped."""
    import glmjax.demo as demo
    from glmjax.cli import main

    seen = []

    def fake(out, fams, quick=False, seed=0):
        seen.append(fams)
        return {"headline": {"risk": 0.5, "band": "high", "model": fams[0]}, "seconds": 1.0}

    monkeypatch.setattr(demo, "run_demo", fake)
    assert main(["demo", "--families", "evo,llama,evo1", "--out", "x"]) == 0
    assert seen == [("evo1", "evo2", "llama")]
    assert main(["demo", "--families", " , "]) == 2
    assert "names no family" in capsys.readouterr().err
