"""``glmjax demo``: the whole audit on an embedded default, in a few minutes on a laptop CPU.

The embedded data are four small real genomes shipped with the package (``glmjax/resources``:
phage lambda NC_001416.1, phiX174 NC_001422.1, SARS-CoV-2 NC_045512.2, human mitochondrion
NC_012920.1; see ``genomes.tsv``). The demo

1. windows phiX174, SARS-CoV-2 and the human mitochondrion into 100-nt windows (the private
   cohort), generates canaries (16-nt prefix + 7-nt secret), plants them at repetitions
   1, 4, 16, 64 and splits the windows 50/50 into members and non-members;
2. pretrains a small causal transformer on phage lambda (public data: the reference model),
   fine-tunes it on the members in full and with LoRA, and trains a HyenaDNA model from scratch
   on the members (the families are configurable);
3. audits every trained model (perplexity detection, extraction, exact exposure over all 4^7
   candidate secrets, membership inference incl. the reference ratio for the fine-tuned models)
   and writes one report per model plus a summary.

Output (``--out``, default ``glmjax-demo``)::

    data/            windows, canary manifest, planted store with split
    models/          reference (public pretraining) and one folder per trained model
    audits/<model>/  report.html, report.json, scores/
    report.html      the report of the first model (also report.json), with links to the others
    summary.json     risk per model and exposure per repetition count
"""

from __future__ import annotations

import gzip
import json
import shutil
import time
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

import numpy as np

from glmjax import models
from glmjax.errors import ConfigError

COHORT_GENOMES = ("phiX174.fa.gz", "sars_cov_2.fa.gz", "human_mito_rCRS.fa.gz")
PUBLIC_GENOME = "lambda_phage.fa.gz"
SCHEDULE = (1, 4, 16, 64)


@dataclass(frozen=True)
class DemoProfile:
    """Sizes of a demo run."""

    window: int = 100
    canaries_per_repetition: int = 2
    controls: int = 8  # the null of canary detection: its expected FPR is 1 / (controls + 1)
    prefix_len: int = 16
    secret_len: int = 7
    pretrain_epochs: int = 4
    epochs: int = 10
    lora_epochs: int = 10
    lora_rank: int = 8
    batch_size: int = 32
    lr: float = 5e-3
    neighbours: int = 4
    bootstrap: int = 100


QUICK = DemoProfile(pretrain_epochs=2, epochs=6, lora_epochs=6, neighbours=0, bootstrap=50)


def _resource(name: str) -> Path:
    return Path(str(resources.files("glmjax.resources").joinpath(name)))


def _fasta_text(name: str) -> str:
    with gzip.open(_resource(name), "rt") as fh:
        return fh.read()


def _model_config(family: str):
    spec = models.get_family(family)
    cfg = spec.config_cls.tiny()
    if family == "llama":
        cfg = replace(cfg, hidden_size=64, intermediate_size=128)
    if family == "hyenadna":
        cfg = replace(cfg, max_seq_len=128)  # windows of 100 nt + [SEP]
    return cfg


def run_demo(out: str | Path = "glmjax-demo", families: tuple[str, ...] = ("llama", "hyenadna"),
             quick: bool = False, seed: int = 0, log=print) -> dict:
    """Run the demo; returns the summary dict (also written to ``out/summary.json``)."""
    from glmjax.audit.pipeline import AuditOptions, headline, run_audit
    from glmjax.data.canaries import CanaryParams, build_manifest, plant, write_manifest
    from glmjax.data.fasta import WindowSpec, window_to_store
    from glmjax.data.splits import split_store
    from glmjax.train.trainer import TrainConfig, train

    prof = QUICK if quick else DemoProfile()
    fams = models.families()
    for f in families:
        if f not in fams:
            raise ConfigError(f"unknown family {f!r}; choose from {', '.join(sorted(fams))}")
    from glmjax.storage import FOLDER_MARKER, remove_own_output

    if not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"--seed must be a non-negative integer, not {seed}")
    t0 = time.perf_counter()
    out = Path(out)
    remove_own_output(out)  # a previous demo's folder (summary.json) is replaced; anything else is refused
    d = out / "data"
    d.mkdir(parents=True)
    (out / FOLDER_MARKER).write_text("written by glmjax demo\n")

    log("1/4 data: windows of three real genomes, canaries at repetitions 1, 4, 16, 64, member split")
    (d / "cohort.fa").write_text("".join(_fasta_text(g) for g in COHORT_GENOMES))
    (d / "public.fa").write_text(_fasta_text(PUBLIC_GENOME))
    spec = WindowSpec(length=prof.window)
    window_to_store(d / "cohort.fa", d / "cohort.h5", spec)
    window_to_store(d / "public.fa", d / "public.h5", spec)
    params = CanaryParams(num=prof.canaries_per_repetition * len(SCHEDULE), prefix_len=prof.prefix_len,
                          secret_len=prof.secret_len, controls=prof.controls)
    write_manifest(d / "canaries.json", build_manifest(params, seed, screen_store=d / "cohort.h5"))
    plant(d / "cohort.h5", d / "canaries.json", d / "planted.h5", SCHEDULE, seed,
          manifest_out=d / "planted.canaries.json")
    split_store(d / "planted.h5", 0.5, seed)

    mdir = out / "models"
    trained: dict[str, Path] = {}
    reference = None
    base_tc = TrainConfig(epochs=prof.epochs, batch_size=prof.batch_size, lr=prof.lr, warmup_steps=10,
                          seed=seed, log_every=10)
    log(f"2/4 training: {', '.join(families)} (+ LoRA of {families[0]}) on the members")
    first = families[0]
    for i, fam in enumerate(families):
        cfg = _model_config(fam)
        if i == 0 and fams[fam].objective == "causal" and fams[fam].lora_targets:
            # public pretraining -> reference model; then full and LoRA fine-tuning on the cohort
            base = models.build(fam, cfg, seed=seed)
            train(base, d / "public.h5", replace(base_tc, epochs=prof.pretrain_epochs), mdir / "reference",
                  val_fraction=0.0)
            reference = mdir / "reference" / "model"
            full = models.load(reference)
            r = train(full, d / "planted.h5", base_tc, mdir / f"{fam}-full", val_fraction=0.0)
            log(f"   {fam} (full fine-tuning): {r.steps} steps, loss {r.final_train_loss:.3f}, {r.seconds:.0f} s")
            trained[f"{fam}-full"] = mdir / f"{fam}-full" / "model"
            lora = models.load(reference)
            r = train(lora, d / "planted.h5", replace(base_tc, epochs=prof.lora_epochs, lora_rank=prof.lora_rank,
                                                      lr=prof.lr * 2), mdir / f"{fam}-lora", val_fraction=0.0)
            log(f"   {fam} (LoRA rank {prof.lora_rank}): {r.steps} steps, loss {r.final_train_loss:.3f}, "
                f"{r.seconds:.0f} s")
            trained[f"{fam}-lora"] = mdir / f"{fam}-lora" / "model"
        else:
            m = models.build(fam, cfg, seed=seed + i)
            r = train(m, d / "planted.h5", base_tc, mdir / fam, val_fraction=0.0)
            log(f"   {fam} (from scratch): {r.steps} steps, loss {r.final_train_loss:.3f}, {r.seconds:.0f} s")
            trained[fam] = mdir / fam / "model"

    log(f"3/4 audits of {len(trained)} models")
    opts = AuditOptions(exact_k_max=prof.secret_len, neighbours=prof.neighbours, n_bootstrap=prof.bootstrap,
                        seed=seed, beam_width=4)
    summary = {"models": {}, "schedule": list(SCHEDULE), "seed": seed, "quick": quick}
    for name, path in trained.items():
        ref = reference if name.startswith(first) and reference is not None else None
        res = run_audit(path, d / "planted.h5", out / "audits" / name, canaries=d / "planted.canaries.json",
                        reference=ref, opts=opts, log=lambda *a: None)
        rep = res.report
        by_rep = _exposure_by_repetition(rep)
        summary["models"][name] = {"risk": rep["risk"]["worst_case"], "band": rep["risk"]["band"],
                                   "risk_ci": rep["risk"].get("worst_case_ci"),
                                   "vectors": rep["risk"]["vectors"], "worst_vector": rep["risk"]["worst_vector"],
                                   "exposure_by_repetition": by_rep,
                                   "report": str(Path("audits") / name / "report.html")}
        log(f"   {name}: {headline(rep)}; mean exposure by repetition "
            + ", ".join(f"{k}x {v:.1f}" for k, v in by_rep.items()) + f" bits ({res.seconds:.0f} s)")

    log("4/4 report")
    worst = max(summary["models"].items(), key=lambda kv: kv[1]["risk"])
    summary["headline"] = {"model": worst[0], "risk": worst[1]["risk"], "band": worst[1]["band"]}
    # report.json is the headline model's; report.html is the index of every audited model
    shutil.copyfile(out / "audits" / worst[0] / "report.json", out / "report.json")
    summary["primary"] = worst[0]
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    (out / "report.html").write_text(render_index(summary))
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def render_index(summary: dict) -> str:
    """The demo's top page: every audited model side by side (risk, vectors, mean exposure by
    repetition), the headline model named, each row linking to that model's full report."""
    import html

    from glmjax.audit.render import _BAND_COLOURS, _CSS, _table

    head = summary["headline"]
    reps = [str(r) for r in (0, *summary["schedule"])]
    rows = []
    for name, m in sorted(summary["models"].items(), key=lambda kv: -kv[1]["risk"]):
        v = m["vectors"]
        exp = m["exposure_by_repetition"]
        rows.append([f"<a href='{html.escape(m['report'])}'>{html.escape(name)}</a>"
                     + (" <b>(headline)</b>" if name == head["model"] else ""),
                     f"{m['risk']:.3f}", _interval(m.get("risk_ci")), html.escape(m["band"]),
                     html.escape(m["worst_vector"]),
                     *[f"{v[k]:.3f}" if k in v else "–" for k in ("detection", "extraction", "mia")],
                     *[f"{exp[r]:.1f}" if r in exp else "–" for r in reps]])
    table = _table(["model", "risk", "interval", "band", "set by", "detection", "extraction", "MIA",
                    *[f"exposure {r}x" if r != "0" else "exposure, controls" for r in reps]], rows)
    return "".join([
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>glmjax demo — {len(summary['models'])} models audited</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>glmjax demo: {len(summary['models'])} models audited</h1>",
        f"<div class='headline' style='background:{_BAND_COLOURS[head['band']]}'>worst-case memorization risk "
        f"{head['risk']:.3f} — {html.escape(head['band'].upper())}, for <b>{html.escape(head['model'])}</b></div>",
        "<p>Each model was fine-tuned on the same cohort with canaries planted at the repetition counts "
        "below and audited with every vector; the risk of a model is the worst of its vectors. Exposure is "
        "the mean over its canaries in bits (the controls were never planted: their exposure is chance). "
        "Follow a model's name for its full report.</p>",
        table,
        "<p class='muted'>Intervals: bootstrap over windows, canaries and controls. Models whose intervals "
        "overlap are not ranked by this audit: the demo's small canary set (a few per repetition count) is "
        "meant to show the workflow, not to tell LoRA from full fine-tuning.</p>",
        f"<p class='muted'>seed {summary['seed']}{' · quick profile' if summary['quick'] else ''} · "
        f"{summary['seconds']:.0f} s · report.json is the headline model's report</p>",
        "</body></html>"])


def _interval(ci) -> str:
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "–"


def _exposure_by_repetition(report: dict) -> dict[str, float]:
    reps: dict[int, list[float]] = {}
    for c in report.get("canaries", []):
        reps.setdefault(int(c["repetitions"]), []).append(float(c["exposure"]))
    return {str(k): float(np.mean(v)) for k, v in sorted(reps.items())}
