"""Reports: report.json numbers and schema, secret redaction, self-contained HTML that renders in
headless Chromium, terminal summary."""

from __future__ import annotations

import base64
import copy
import html
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from glmjax.audit import metrics as M
from glmjax.audit import render as RD
from glmjax.audit import report as RP
from glmjax.audit import risk as R
from glmjax.audit.exposure import ExposureEstimate, exact_exposure_estimate
from glmjax.audit.schema import ReportSchemaError, validate_report
from glmjax.errors import ConfigError, StoreError

REPS = [1, 1, 1, 4, 4, 4, 16, 16, 16, 64, 64, 64]


def _result(seed: int = 0, n: int = 2000, **kw) -> RP.AuditResult:
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < 0.5
    log_ppl = rng.normal(2.0, 0.2, n) - 0.1 * labels
    canaries = []
    for i, r in enumerate(REPS):
        secret = "".join(rng.choice(list("ACGT"), 10))
        e = float(np.clip(2 + 0.3 * r + rng.normal(0, 0.5), 0, 20))
        est = ExposureEstimate(e, (max(e - 1, 0), min(e + 1, 20)), "skewnorm", 4**10, 5000, 0.95)
        canaries.append(RP.CanaryResult.from_estimate(f"canary-{i:03d}", r, est, r >= 64, secret,
                                                      log_perplexity=2.0 - 0.02 * r))
    args = dict(mode="causal", config={"window": 1024}, provenance={"model": {"family": "hyena"}, "seed": seed},
                member_log_ppl=log_ppl[labels], nonmember_log_ppl=log_ppl[~labels], canaries=canaries,
                mia_scores={"loss": -log_ppl, "random": rng.normal(size=n)}, mia_labels=labels,
                n_bootstrap=50, one_run=(rng.normal(size=400), rng.random(400) < 0.5), seed=seed)
    args.update(kw)
    return RP.AuditResult(**args)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    res = _result()
    paths = RP.write_report(res, out)
    return res, paths, json.loads(paths["json"].read_text())


def test_report_numbers_match_direct_computation(written):
    res, _, rep = written
    validate_report(rep)
    loss = rep["mia"]["attacks"]["loss"]
    direct = M.evaluate_attack(res.mia_labels, res.mia_scores["loss"], n_bootstrap=0)
    assert loss["auc"] == pytest.approx(direct.auc, abs=0)
    assert loss["tpr_at_fpr"]["0.01"] == direct.tpr_at_fpr[0.01]
    assert loss["tpr_at_fpr"]["0.001"] == direct.tpr_at_fpr[0.001]
    assert loss["auc_ci"][0] < loss["auc"] < loss["auc_ci"][1]
    # Risk formulas recomputed from the report's own numbers.
    mia = max(max(a["tpr_at_fpr"]["0.01"], a["advantage"]) for a in rep["mia"]["attacks"].values())
    assert rep["risk"]["vectors"]["mia"] == pytest.approx(mia)
    ext = rep["canaries"]
    frac = np.mean([c["extracted"] for c in ext])
    norm = np.mean([min(c["exposure"] / np.log2(c["n_candidates"]), 1) for c in ext])
    assert rep["risk"]["vectors"]["extraction"] == pytest.approx(max(frac, norm))
    det = rep["detection"]
    assert det["fpr_target"] == res.detection_fpr
    d = max(g["tpr"] - sub["expected_fpr"] for sub in (det["windows"], det["canaries"])
            for g in sub["groups"].values())
    assert rep["risk"]["vectors"]["detection"] == pytest.approx(max(d, 0))
    assert set(det["windows"]["groups"]) == {"members"} and det["windows"]["null"] == "non-member windows"
    assert rep["risk"]["worst_case"] == max(rep["risk"]["vectors"].values())
    assert rep["risk"]["band"] == R.band(rep["risk"]["worst_case"])
    by = {r["repetitions"]: r for r in rep["extraction"]["by_repetition"]}
    assert by[64]["extracted_mean"] == 1.0 and by[1]["n"] == 3
    assert rep["mia"]["one_run_epsilon"]["epsilon"] >= 0
    assert rep["provenance"]["glmjax_version"] and rep["scoring"]["mode"] == "causal"
    assert len(rep["canaries"]) == len(REPS) and all("sha256" not in c for c in rep["canaries"])


def test_secrets_are_redacted_unless_revealed(written, tmp_path):
    res, paths, rep = written
    secrets = [c.secret for c in res.canaries]
    text = paths["json"].read_text() + paths["html"].read_text()
    buf = io.StringIO()
    from rich.console import Console

    RD.print_summary(rep, Console(file=buf, width=140))
    text += buf.getvalue()
    for s in secrets:
        assert s not in text
    # nor any unkeyed hash of a secret: 4^k candidates invert it
    import hashlib

    for s in secrets:
        for form in (s, s.upper(), s.lower()):
            assert hashlib.sha256(form.encode()).hexdigest() not in text
            assert hashlib.sha256(form.encode()).hexdigest()[:16] not in text
    shown = RP.write_report(res, tmp_path / "reveal", reveal=True)
    rj = json.loads(shown["json"].read_text())
    assert rj["reveal"] is True and [c["secret"] for c in rj["canaries"]] == secrets
    assert secrets[0] in shown["html"].read_text()


def test_files_are_complete_json_and_self_contained_html(written):
    _, paths, _ = written
    assert not list(paths["json"].parent.glob("*.partial"))
    raw = paths["json"].read_text()
    assert "NaN" not in raw and "Infinity" not in raw
    page = paths["html"].read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)  # nothing fetched from outside
    imgs = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)
    assert len(imgs) == 5  # risk, ROC, log-ROC, histograms, canaries
    for b64 in imgs:
        png = base64.b64decode(b64)
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_terminal_summary_lists_every_vector(written):
    from rich.console import Console

    _, _, rep = written
    buf = io.StringIO()
    RD.print_summary(rep, Console(file=buf, width=140))
    out = buf.getvalue()
    for k in ("detection", "extraction", "mia", "worst-case risk", rep["risk"]["band"].upper()):
        assert k in out


def test_partial_results_and_exact_exposure_only():
    est = exact_exposure_estimate(1.0, np.arange(256.0))
    can = [RP.CanaryResult.from_estimate("c0", 8, est, True, "ACGT")]
    rep = RP.evaluate(RP.AuditResult(mode="pll-strided", mode_params={"k": 4}, canaries=can))
    assert set(rep["risk"]["vectors"]) == {"extraction"}
    assert rep["mia"] is None and rep["detection"] is None
    assert rep["canaries"][0]["exposure"] == pytest.approx(8 - 1)  # rank 2 of 256
    assert rep["scoring"] == {"mode": "pll-strided", "mode_params": {"k": 4}}
    assert "plots" not in rep and len(re.findall("data:image/png", RD.render_html(rep))) == 2
    with pytest.raises(ConfigError, match="no attack vector"):
        RP.evaluate(RP.AuditResult(mode="causal"))


def _canary_result(planted_ppl: np.ndarray, control_ppl: np.ndarray, reps: np.ndarray, seed: int = 0,
                   **kw) -> RP.AuditResult:
    """Member and non-member windows from one distribution (no window signal) plus canaries."""
    rng = np.random.default_rng(seed)
    est = exact_exposure_estimate(1.0, np.arange(4.0**4))
    ppl = np.concatenate([planted_ppl, control_ppl])
    canaries = [RP.CanaryResult.from_estimate(f"c{i:03d}", int(r), est, False, "ACGT", log_perplexity=float(x))
                for i, (r, x) in enumerate(zip(np.concatenate([reps, np.zeros(len(control_ppl), int)]), ppl,
                                               strict=True))]
    args = dict(mode="causal", member_log_ppl=rng.normal(3.0, 0.2, 1000), nonmember_log_ppl=rng.normal(3.0, 0.2, 1000),
                canaries=canaries, n_bootstrap=0)
    args.update(kw)
    return RP.AuditResult(**args)


def test_canaries_like_their_controls_are_not_detected():
    """Planted and control canaries from one distribution, far below every genome window: the
    canaries are calibrated on the controls, so nothing is detected (against the windows every
    canary, controls included, would be)."""
    rng = np.random.default_rng(11)
    planted, controls = rng.normal(1.0, 0.2, 120), rng.normal(1.0, 0.2, 40)
    reps = np.repeat([1, 4, 16, 64], 30)
    rep = RP.evaluate(_canary_result(planted, controls, reps))
    cd = rep["detection"]["canaries"]
    assert cd["null"] == "control canaries" and cd["n_nonmembers"] == 40
    assert cd["groups"]["canaries"]["n"] == 120  # planted only: the controls are the null
    assert cd["threshold"] == pytest.approx(controls.min()) and cd["realised_fpr"] == 0.0
    assert cd["groups"]["canaries"]["tpr"] == pytest.approx((planted < controls.min()).mean())
    assert cd["groups"]["canaries"]["tpr"] < 0.1
    assert [r["repetitions"] for r in cd["groups"]["canaries"]["by_repetition"]] == [1, 4, 16, 64]
    assert rep["risk"]["vectors"]["detection"] < 0.1
    # what the windows null makes of the same canaries: every one of them, controls too, "detected"
    windows_null = RP.detect({"canaries": np.concatenate([planted, controls])},
                             _canary_result(planted, controls, reps).nonmember_log_ppl, mode="causal")
    assert windows_null.groups["canaries"].tpr == 1.0
    page = RD.render_html(rep)
    assert "control canaries" in page and "No control canaries" not in page


def test_planted_canaries_below_the_controls_are_detected():
    rng = np.random.default_rng(12)
    controls = rng.normal(2.0, 0.2, 16)  # 16 * 1 % < 1: the threshold is the lowest control
    low = controls.min() - rng.uniform(0.05, 0.5, 20)  # planted 16 and 64 times, below every control
    high = rng.normal(2.0, 0.2, 10) + 0.5  # planted once, nothing learnt
    reps = np.array([16] * 10 + [64] * 10 + [1] * 10)
    ref = np.concatenate([low, high, controls]) - 0.5  # a reference model finding nothing unusual
    rep = RP.evaluate(_canary_result(np.concatenate([low, high]), controls, reps, reference_mode="causal",
                                     reference_canary_log_ppl=ref))
    cd = rep["detection"]["canaries"]
    assert cd["threshold"] == pytest.approx(controls.min()) and cd["realised_fpr"] == 0.0
    assert cd["expected_fpr"] == pytest.approx(1 / 17)  # a fresh control below the lowest of 16
    by = {r["repetitions"]: r["tpr"] for r in cd["groups"]["canaries"]["by_repetition"]}
    assert by == {1: 0.0, 16: 1.0, 64: 1.0}
    assert cd["groups"]["canaries"]["tpr"] == pytest.approx(2 / 3)
    # the reference ratio is constant (0.5) for planted and controls alike: no flag beats the controls
    assert cd["reference"]["null"] == "control canaries" and cd["reference"]["groups"]["canaries"]["tpr"] == 0.0
    assert rep["detection"]["windows"]["reference"] is None  # no reference scores of the windows
    assert rep["risk"]["vectors"]["detection"] == pytest.approx(2 / 3 - 1 / 17)
    assert rep["risk"]["sources"]["detection"] == "log_perplexity:canaries"
    # no non-member windows needed: the controls alone calibrate the canaries
    alone = RP.evaluate(_canary_result(np.concatenate([low, high]), controls, reps, member_log_ppl=None,
                                       nonmember_log_ppl=None))
    assert alone["detection"]["windows"] is None and alone["detection"]["canaries"] == {
        **cd, "reference": None}
    plots = RD._plots(rep)
    assert any(t.startswith("Canaries") for t, _ in plots)


def test_without_controls_canaries_fall_back_to_the_windows(written):
    res, _, rep = written  # REPS has no control canary
    cd = rep["detection"]["canaries"]
    assert cd["null"] == "non-member windows"
    assert cd["n_nonmembers"] == len(res.nonmember_log_ppl) == rep["detection"]["windows"]["n_nonmembers"]
    assert cd["threshold"] == rep["detection"]["windows"]["threshold"]
    t = cd["threshold"]
    by = {r["repetitions"]: r for r in cd["groups"]["canaries"]["by_repetition"]}
    for r in set(REPS):
        x = np.array([c.log_perplexity for c in res.canaries if c.repetitions == r])
        assert by[r]["tpr"] == pytest.approx((x < t).mean())
    assert "No control canaries" in RD.render_html(rep)
    # without windows either, there is no null for the canaries at all
    bare = RP.evaluate(_result(member_log_ppl=None, nonmember_log_ppl=None, mia_scores={}))
    assert bare["detection"] is None and "detection" not in bare["risk"]["vectors"]


def test_modes_are_not_mixed_in_reports():
    with pytest.raises(StoreError, match="same mode"):
        RP.evaluate(_result(n=400, reference_mode="causal", reference_mode_params={"k": 1},
                            reference_member_log_ppl=np.zeros(1), reference_nonmember_log_ppl=np.zeros(1),
                            reference_canary_log_ppl=np.zeros(12)))


@pytest.mark.parametrize("mutate,match", [
    (lambda r: r["risk"].pop("worst_case"), "worst_case: is required"),
    (lambda r: r["risk"].__setitem__("band", "low" if r["risk"]["band"] != "low" else "high"), "does not match"),
    (lambda r: r["risk"]["vectors"].__setitem__("mia", 1.5), r"risk.vectors.mia: must lie in \[0.0, 1.0\]"),
    (lambda r: r.__setitem__("schema_version", 99), "understands version 3"),
    (lambda r: r["canaries"][0].__setitem__("secret", "ACGT"), "only allowed in reports written with reveal"),
    (lambda r: r["canaries"][0].__setitem__("sha256", "ab" * 32), "never carry one"),
    (lambda r: r["mia"]["attacks"]["loss"]["tpr_at_fpr"].pop("0.001"), "0.001: is required"),
    (lambda r: r["mia"]["attacks"]["loss"].__setitem__("auc", "0.7"), "must be a number"),
    (lambda r: r.__setitem__("mia", None), "mia section is null"),
    (lambda r: r["provenance"].pop("glmjax_version"), "glmjax_version: is required"),
    (lambda r: r["detection"]["canaries"].__setitem__("null", "genome"), r"detection.canaries.null: must be one of"),
    (lambda r: r["detection"]["canaries"].pop("null"), r"detection.canaries.null: is required"),
    (lambda r: r["detection"]["windows"].__setitem__("null", "control canaries"), r"detection.windows.null"),
    (lambda r: r["detection"]["canaries"]["groups"]["canaries"].__setitem__("tpr", 1.5),
     r"detection.canaries.groups.canaries.tpr: must lie"),
    (lambda r: r["detection"]["canaries"]["groups"]["canaries"]["by_repetition"][0].__setitem__("repetitions", 0),
     r"by_repetition\[0\].repetitions: must be an integer >= 1"),
    (lambda r: r["detection"]["windows"].__setitem__("realised_fpr", 0.5), r"detection.windows.realised_fpr"),
    (lambda r: r["detection"].pop("canaries"), r"detection.canaries: is required"),
    (lambda r: r["detection"].update(windows=None, canaries=None), "must hold a windows or a canaries result"),
    (lambda r: r.__setitem__("detection", None), "detection section is null"),
    (lambda r: r["canaries"][1].__setitem__("exposure", 99.0), "exposure: must lie"),
])
def test_validator_rejects_broken_reports(written, mutate, match):
    rep = copy.deepcopy(written[2])
    mutate(rep)
    with pytest.raises(ReportSchemaError, match=match):
        validate_report(rep)


def _chromium() -> str | None:
    for name in ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


# Injected in front of the page (test harness only): records console errors/warnings, uncaught
# exceptions and failed resource loads on the root element, which --dump-dom then prints.
_SHIM = """<script>
(function(){var root=document.documentElement,errs=[];
function rec(m){errs.push(String(m));root.setAttribute('data-console-errors',JSON.stringify(errs));}
root.setAttribute('data-console-errors','[]');
var e=console.error,w=console.warn;
console.error=function(){rec(Array.prototype.join.call(arguments,' '));e.apply(console,arguments);};
console.warn=function(){rec(Array.prototype.join.call(arguments,' '));w.apply(console,arguments);};
window.addEventListener('error',function(ev){rec(ev.message||('failed to load '+(ev.target&&ev.target.tagName)));},true);
})();
</script>"""


def _render(exe: str, page: str, tmp_path: Path, tag: str) -> tuple[list, int, int]:
    """Load ``page`` in headless Chromium: (console errors, plots, plots decoded)."""
    probe = tmp_path / f"{tag}.html"
    probe.write_text(page.replace("<head>", "<head>" + _SHIM, 1))
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / (tag + '-profile')}",
           "--virtual-time-budget=5000", "--enable-logging=stderr", "--v=0", "--dump-dom", probe.as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    errors = re.search(r"data-console-errors=\"([^\"]*)\"", dom.stdout)
    assert errors is not None, "the page did not run its scripts"
    errs = json.loads(html.unescape(errors.group(1)))
    errs += [line for line in dom.stderr.splitlines() if "Uncaught" in line]
    total = re.search(r'data-plots-total="(\d+)"', dom.stdout)
    ok = re.search(r'data-plots-ok="(\d+)"', dom.stdout)
    assert total and ok, "the page's load handler did not run"
    return errs, int(total.group(1)), int(ok.group(1))


def test_html_renders_in_headless_chromium(written, tmp_path):
    exe = _chromium()
    if exe is None:
        pytest.skip("Chromium is not installed (apt-get install -y chromium); HTML rendering not checked")
    _, paths, _ = written
    page = paths["html"].read_text()
    errs, total, ok = _render(exe, page, tmp_path, "report")
    assert errs == [] and total == ok == 5
    # Negative control: the harness must notice a broken plot and a console error.
    b64 = re.search(r"data:image/png;base64,([A-Za-z0-9+/=]{40})", page).group(1)
    broken = page.replace(b64, "A" * 40, 1).replace("</body>", "<script>console.error('boom')</script></body>")
    errs2, total2, ok2 = _render(exe, broken, tmp_path, "broken")
    assert any("boom" in e for e in errs2) and ok2 == total2 - 1
    shot = tmp_path / "shot.png"
    run = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu",
                          f"--user-data-dir={tmp_path / 'shot-profile'}", "--window-size=1200,4000",
                          f"--screenshot={shot}", paths["html"].resolve().as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and shot.exists(), run.stderr[-2000:]
    import matplotlib.image as mpimg

    img = mpimg.imread(shot)
    assert img.shape[:2] == (4000, 1200)
    ink = (img[..., :3].min(axis=-1) < 0.9).mean()
    assert ink > 0.03  # text, tables and plots drew something substantial


def test_an_attack_on_a_sample_of_rows_counts_towards_the_risk():
    """The neighbourhood attack runs on a sample of the rows; when it separates members best it
    sets the MIA vector (it used to be added after the risk was computed)."""
    rng = np.random.default_rng(5)
    labels = np.repeat([True, False], 500)
    weak = rng.normal(0, 1, 1000)
    lab_s = np.repeat([True, False], 100)
    strong = np.where(lab_s, 3.0, 0.0) + rng.normal(0, 0.5, 200)
    res = RP.AuditResult(mode="causal", mia_scores={"loss": weak}, mia_labels=labels,
                         mia_sample_scores={"neighbourhood": (lab_s, strong)}, n_bootstrap=0)
    rep = RP.evaluate(res)
    validate_report(rep)
    mia = rep["mia"]
    assert mia["strongest_attack"] == "neighbourhood" and rep["risk"]["sources"]["mia"] == "neighbourhood"
    nb = mia["attacks"]["neighbourhood"]
    assert nb["rows"] == 200 and nb["n_members"] == 100 and mia["neighbourhood"] == nb
    assert rep["risk"]["vectors"]["mia"] == pytest.approx(max(nb["tpr_at_fpr"]["0.01"], nb["advantage"]))
    assert "rows" not in mia["attacks"]["loss"]
    assert mia["epsilon"]["attack"] == "neighbourhood"
    with pytest.raises(ConfigError, match="on all rows and on a sample"):
        RP.evaluate(RP.AuditResult(mode="causal", mia_scores={"loss": weak}, mia_labels=labels,
                                   mia_sample_scores={"loss": (lab_s, strong)}, n_bootstrap=0))
