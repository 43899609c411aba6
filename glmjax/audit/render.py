"""Rendering of an audit report: the self-contained report.html (plots embedded as base64 PNG)
and the terminal summary table. Works on the report dict alone (:func:`glmjax.audit.report.evaluate`
computes every number; nothing here computes a statistic).
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from glmjax.audit import risk as R
from glmjax.audit.perplexity import NULL_CONTROLS, NULL_WINDOWS

_BAND_COLOURS = {"low": "#2e7d32", "medium": "#ef6c00", "high": "#c62828"}


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _plots(report: dict) -> list[tuple[str, str]]:
    """(title, base64 PNG) for every plot the report's data allow."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    out = []
    risk = report["risk"]
    fig, ax = plt.subplots(figsize=(6, 2.4))
    names = list(risk["vectors"])
    vals = [risk["vectors"][k] for k in names]
    ax.axvspan(0, 0.1, color=_BAND_COLOURS["low"], alpha=0.12)
    ax.axvspan(0.1, 0.3, color=_BAND_COLOURS["medium"], alpha=0.12)
    ax.axvspan(0.3, 1.0, color=_BAND_COLOURS["high"], alpha=0.12)
    ax.barh(names, vals, color=[_BAND_COLOURS[R.band(v)] for v in vals])
    ax.set_xlim(0, 1)
    ax.set_xlabel("risk")
    ax.set_title(f"worst case {risk['worst_case']:.3f} ({risk['band']}, set by {risk['worst_vector']})")
    out.append(("Risk summary", _png(fig)))

    mia = report.get("mia")
    if mia:
        for log in (False, True):
            fig, ax = plt.subplots(figsize=(5.2, 4.6))
            for name, a in sorted(mia["attacks"].items(), key=lambda kv: -kv[1]["auc"]):
                f, t = np.array(a["roc"]["fpr"], float), np.array(a["roc"]["tpr"], float)
                if log:
                    keep = f > 0
                    ax.step(f[keep], np.maximum(t[keep], 1e-5), where="post", label=f"{name} (AUC {a['auc']:.3f})")
                else:
                    ax.step(f, t, where="post", label=f"{name} (AUC {a['auc']:.3f})")
            if log:
                ax.set_xscale("log")
                ax.set_yscale("log")
                lo = min(min((x for x in a["roc"]["fpr"] if x and x > 0), default=1e-3)
                         for a in mia["attacks"].values())
                ax.plot([lo, 1], [lo, 1], "k:", lw=0.8)
                ax.set_xlim(lo, 1)
                ax.set_ylim(lo, 1.05)
            else:
                ax.plot([0, 1], [0, 1], "k:", lw=0.8)
            ax.set_xlabel("false-positive rate")
            ax.set_ylabel("true-positive rate")
            ax.legend(fontsize=7, loc="lower right")
            ax.set_title("ROC, log scale" if log else "ROC")
            out.append(("Membership inference: ROC (log scale)" if log else "Membership inference: ROC",
                        _png(fig)))

    hist = (report.get("histograms") or {}).get("log_perplexity")
    if hist:
        fig, ax = plt.subplots(figsize=(6.4, 3.6))
        edges = np.array(hist["edges"])
        width = np.diff(edges)
        colours = {"members": "#1565c0", "nonmembers": "#757575", "canaries": "#c62828"}
        known = [c for c in report["canaries"] if c.get("log_perplexity") is not None]
        for k, c in hist["counts"].items():
            if k == "canaries" and 0 < len(known) <= 200:
                # A handful of canaries reads better as individual marks than as a density;
                # the never-planted controls (the canary null) are marked apart from the planted.
                for planted, colour, name in ((True, colours[k], "planted canaries"),
                                              (False, "#212121", "control canaries")):
                    xs = [c["log_perplexity"] for c in known if (c["repetitions"] > 0) == planted]
                    if xs:
                        ax.plot(xs, np.zeros(len(xs)), "|", color=colour, markersize=28 if planted else 18,
                                mew=2, label=f"{name} (n={len(xs)})", clip_on=False)
                continue
            c = np.array(c, float)
            dens = c / max(c.sum(), 1.0) / width
            ax.stairs(dens, edges, label=f"{k} (n={hist['n'][k]})", color=colours.get(k), lw=1.6,
                      fill=k == "nonmembers", alpha=0.5 if k == "nonmembers" else 1.0)
        det = report.get("detection") or {}
        for key, ls, what in (("windows", "--", "windows"), ("canaries", ":", "canaries")):
            d = det.get(key)
            if d and d.get("threshold") is not None:
                ax.axvline(d["threshold"], color="k", ls=ls, lw=1,
                           label=f"{what} threshold @ FPR {d['fpr_target']:g} on {d['null']}")
        ax.set_xlabel(f"log-perplexity (nats/token, mode {report['scoring']['mode']})")
        ax.set_ylabel("density")
        # outside the axes: the canary marks along the bottom edge stay visible
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        ax.set_title("Perplexity: members vs non-members vs canaries")
        out.append(("Perplexity histograms", _png(fig)))

    ext = report.get("extraction")
    if ext and report["canaries"]:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(9.5, 3.6))
        reps = np.array([c["repetitions"] for c in report["canaries"]], float)
        exp = np.array([c["exposure"] for c in report["canaries"]], float)
        a1.scatter(reps, exp, s=14, alpha=0.6, color="#1565c0", label="canary")
        by = ext["by_repetition"]
        bx = [r["repetitions"] for r in by]
        a1.plot(bx, [r["exposure_mean"] for r in by], "o-", color="k", label="mean")
        a1.axhline(max(c["log2_candidates"] for c in report["canaries"]), color="#c62828", ls=":",
                   lw=1, label="log2 |R| (maximum)")
        a1.set_ylabel("exposure (bits)")
        a1.legend(fontsize=7)
        a1.set_title("Exposure vs repetition")
        a2.plot(bx, [r["extracted_mean"] for r in by], "o-", color="#c62828", label="extracted exactly")
        cd = (report.get("detection") or {}).get("canaries")
        if cd and cd["groups"]["canaries"]["by_repetition"]:
            dr = cd["groups"]["canaries"]["by_repetition"]
            xs, ys = [r["repetitions"] for r in dr], [r["tpr"] for r in dr]
            if cd["null"] == NULL_CONTROLS:
                # The controls are the null: at 0 copies, the chance of a flag (expected FPR).
                xs, ys = [0, *xs], [cd["expected_fpr"], *ys]
            a2.plot(xs, ys, "s--", color="#1565c0",
                    label=f"detected (TPR @ FPR {cd['fpr_target']:g} on {cd['null']})")
        a2.set_ylim(-0.02, 1.02)
        a2.set_ylabel("fraction of canaries")
        a2.legend(fontsize=7)
        a2.set_title("Extraction and detection vs repetition")
        # repetitions on a log axis that still holds 0 (the never-planted controls), every count labelled
        ticks = sorted({int(r) for r in reps})
        for ax in (a1, a2):
            ax.set_xscale("symlog", linthresh=1.0, linscale=0.6)
            ax.set_xticks(ticks)
            ax.set_xticklabels(["0\ncontrols" if t == 0 else str(t) for t in ticks], fontsize=8)
            ax.minorticks_off()
            ax.set_xlim(-0.3 if 0 in ticks else 0.7, max(ticks) * 1.4 if ticks else 1)
            ax.set_xlabel("copies in the training data")
        out.append(("Canaries: exposure and extraction vs repetition", _png(fig)))
    return out


# ------------------------------------------------------------------ HTML

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#222;padding:0 1rem}
h1{font-size:1.6rem;margin-bottom:.2rem} h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0} td,th{border:1px solid #ddd;padding:.25rem .5rem;text-align:right}
th{background:#f5f5f5} td.l,th.l{text-align:left} .muted{color:#777;font-size:.85rem}
.headline{display:inline-block;padding:.6rem 1rem;border-radius:6px;color:#fff;font-size:1.3rem;margin:.6rem 0}
figure{margin:1rem 0} figure img{max-width:100%;border:1px solid #eee} figcaption{font-size:.85rem;color:#555}
pre{background:#f7f7f7;padding:.6rem;overflow:auto;font-size:.75rem;max-height:24rem}
#plot-warning{display:none;color:#c62828;font-weight:bold}
.warn{background:#fff3e0;border-left:4px solid #ef6c00;padding:.4rem .8rem;margin:.6rem 0;font-size:.9rem}
td span.l{display:block;text-align:left;max-width:34rem;font-size:.8rem;color:#444} .lead{font-size:1rem}
details summary{cursor:pointer;font-size:.9rem;color:#1565c0}
"""

# Once the page has loaded, records how many embedded plots decoded and shows a warning if any
# did not.
_JS = """
window.addEventListener('load', function(){
  var imgs=Array.prototype.slice.call(document.querySelectorAll('img.plot'));
  var ok=imgs.filter(function(i){return i.complete&&i.naturalWidth>0;}).length;
  document.body.setAttribute('data-plots-total',String(imgs.length));
  document.body.setAttribute('data-plots-ok',String(ok));
  if(ok!==imgs.length){document.getElementById('plot-warning').style.display='block';}
});
"""


def _fmt(x: Any, nd: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if isinstance(x, float):
        return f"{x:.{nd}f}" if abs(x) >= 10 ** (-nd) or x == 0 else f"{x:.2e}"
    return html.escape(str(x))


def _ci(pair: Sequence | None, nd: int = 3) -> str:
    if not pair or pair[0] is None:
        return "–"
    return f"[{_fmt(pair[0], nd)}, {_fmt(pair[1], nd)}]"


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    th = "".join(f'<th class="{"l" if i < left else ""}">{html.escape(h)}</th>' for i, h in enumerate(head))
    body = "".join("<tr>" + "".join(f'<td class="{"l" if i < left else ""}">{c}</td>' for i, c in enumerate(r))
                   + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _model_name(report: dict) -> str:
    """The audited model as the report names it: its folder (or Hub id), else its family."""
    model = (report.get("config") or {}).get("model") or ((report.get("provenance") or {}).get("model") or {}).get("source")
    return str(model) if model else "(not recorded)"


_VECTOR_TEXT = {
    "detection": "Perplexity detection: are training sequences (and planted canaries) unusually familiar to the "
                 "model? A threshold flags sequences less perplexing than all but 1 % of never-seen ones; the "
                 "risk is the fraction of training sequences flagged minus that false-alarm rate.",
    "extraction": "Canary extraction: can the secret be read back from the model, by decoding from its prefix or "
                  "by ranking it among all possible secrets (exposure)? The risk is the larger of the fraction "
                  "extracted exactly and the mean exposure as a fraction of its maximum.",
    "mia": "Membership inference: can an attacker tell, sequence by sequence, which were in the training data? "
           "The risk is the best attack's true-positive rate at 1 % false positives, or its advantage "
           "(TPR − FPR at its best threshold), whichever is larger.",
}


def _conf(report: dict) -> str:
    c = (report["risk"].get("ci") or {}).get("confidence", report["config"].get("confidence", 0.95))
    return f"{c:.0%}"


def _headline_text(report: dict) -> str:
    risk = report["risk"]
    ci = risk.get("worst_case_ci")
    interval = (f" ({_conf(report)} interval {ci[0]:.3f}–{ci[1]:.3f})" if ci else "")
    return (f"<p class='lead'>The headline is the <b>worst case</b> over the attacks that were run: an adversary "
            f"uses whichever works best. Here that is <b>{html.escape(risk['worst_vector'])}</b>, at "
            f"{risk['worst_case']:.3f}{interval}, which is <b>{html.escape(risk['band'])}</b> risk.</p>")


def _warnings_html(risk: dict) -> list[str]:
    w = risk.get("warnings") or []
    if not w:
        return []
    items = "".join(f"<li>{html.escape(x)}</li>" for x in w)
    return [f"<div class='warn'><b>Too small a sample to rank models:</b><ul>{items}</ul></div>"]


def _leaked(report: dict) -> list[dict]:
    """Planted canaries that leaked: extracted, or ranked in the top half of the normalised exposure."""
    out = [c for c in report["canaries"] if c["repetitions"] > 0 and
           (c["extracted"] or c["exposure"] >= 0.5 * c["log2_candidates"])]
    return sorted(out, key=lambda c: (-c["exposure"], c["id"]))


def _next_steps_html(report: dict) -> list[str]:
    risk = report["risk"]
    leaked = _leaked(report)
    parts = ["<h2>What to do next</h2>"]
    if leaked:
        names = ", ".join(f"{html.escape(c['id'])} ({c['repetitions']}×, {c['exposure']:.1f} bits"
                          + (", extracted" if c["extracted"] else "") + ")" for c in leaked[:12])
        more = f" and {len(leaked) - 12} more" if len(leaked) > 12 else ""
        parts.append(f"<p><b>{len(leaked)} planted canaries leaked</b> (extracted, or exposure above half its "
                     f"maximum): {names}{more}. Sequences repeated as often in the real training data are at "
                     "the same risk.</p>")
    elif report["canaries"]:
        parts.append("<p>No planted canary was extracted or ranked in the top half of its candidates.</p>")
    if risk["band"] == "low":
        parts.append("<p>The risk is low on this sample. Keep the audit with the model's release notes, and "
                     "re-audit after further fine-tuning.</p>")
    else:
        parts.append("<p>What typically reduces memorization, roughly from cheapest to strongest: "
                     "<b>deduplicate</b> the training data (repeated sequences are what leaks first); train "
                     "<b>fewer epochs</b> or stop at the best validation loss; fine-tune with <b>LoRA</b> "
                     "instead of all weights; train with <b>differential privacy</b> (DP-SGD) for a formal "
                     "bound. Then <b>re-audit</b> with the same canaries, controls and seed, and compare the "
                     "intervals, not only the headline.</p>")
    return parts


def render_html(report: dict) -> str:
    """One self-contained HTML page (no external resources) from a report dict."""
    risk = report["risk"]
    colour = _BAND_COLOURS[risk["band"]]
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>glmjax memorization audit — {html.escape(risk['band'])} risk</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>Memorization and privacy audit</h1>",
        f"<div class='muted'>model <b>{html.escape(_model_name(report))}</b> · glmjax "
        f"{html.escape(report['provenance']['glmjax_version'])} · {html.escape(report['created'])} · scoring mode "
        f"<b>{html.escape(report['scoring']['mode'])}</b>"
        + (f" {html.escape(json.dumps(report['scoring']['mode_params']))}" if report["scoring"]["mode_params"] else "")
        + "</div>",
        f"<div class='headline' style='background:{colour}'>worst-case risk {risk['worst_case']:.3f} — "
        f"{html.escape(risk['band'].upper())} (set by {html.escape(risk['worst_vector'])})</div>",
        "<div id='plot-warning'>Some plots failed to render.</div>",
        _headline_text(report),
        *_warnings_html(risk),
        "<h2>Risk by attack vector</h2>",
        _table(["vector", "risk", f"{_conf(report)} interval", "band", "set by", "what it measured"],
               [[html.escape(k), _fmt(v), _ci((risk.get("vectors_ci") or {}).get(k)), R.band(v),
                 _fmt(risk["sources"].get(k, "")), f"<span class='l'>{_VECTOR_TEXT[k]}</span>"]
                for k, v in risk["vectors"].items()], left=1),
        "<p class='muted'>Each vector is a number in [0, 1]: 0 means the attack did no better than guessing, 1 "
        "that it recovered every training sequence or secret it was aimed at. Bands: low &lt; 0.1 ≤ medium &lt; "
        "0.3 ≤ high. Intervals: " + html.escape((risk.get("ci") or {}).get("method", "not computed")) +
        ". Exact formulas: docs/report-schema.md.</p>",
        *_next_steps_html(report),
    ]
    mia = report.get("mia")
    if mia:
        rows = []
        for name, a in sorted(mia["attacks"].items(), key=lambda kv: -kv[1]["auc"]):
            t = a["tpr_at_fpr"]
            tc = a["tpr_at_fpr_ci"]
            rows.append([html.escape(name), _fmt(a["auc"]), _ci(a["auc_ci"]), _fmt(t["0.001"]), _ci(tc["0.001"]),
                         _fmt(t["0.01"]), _ci(tc["0.01"]), _fmt(a["balanced_accuracy"]), _fmt(a["advantage"])])
        parts += ["<h2>Membership inference</h2>",
                  _table(["attack", "AUC", "AUC CI", "TPR@0.1%", "CI", "TPR@1%", "CI", "bal. acc.", "advantage"], rows),
                  f"<p class='muted'>{mia['attacks'][mia['strongest_attack']]['n_members']} members, "
                  f"{mia['attacks'][mia['strongest_attack']]['n_nonmembers']} non-members; "
                  f"{int(report['config']['confidence'] * 100)}% stratified bootstrap intervals "
                  f"({report['config']['n_bootstrap']} replicates).</p>"]
        eps = mia.get("epsilon")
        if eps:
            parts.append(f"<p>Empirical ε lower bound ({html.escape(eps['method'])}, attack "
                         f"{html.escape(eps['attack'])}, δ = {eps['delta']:g}, confidence {eps['confidence']:.2f}): "
                         f"<b>ε ≥ {eps['epsilon']:.3f}</b></p>"
                         "<p class='muted'>What this means: if this model had been trained with differential "
                         "privacy, its ε would have to be at least this large for the strongest attack to succeed "
                         "as often as it did (with the stated confidence). ε ≥ 0.000 means the attacks found no "
                         "statistically significant evidence of membership leakage at this sample size; it does "
                         "not prove the model private.</p>")
        one = mia.get("one_run_epsilon")
        if one:
            parts.append(f"<p>One-run audit (Steinke et al. 2023): <b>ε ≥ {one['epsilon']:.3f}</b> "
                         f"(m = {one['details']['m']}, r = {one['details']['r']}, v = {one['details']['v']}).</p>")
    det = report.get("detection")
    if det:
        rows, notes = [], []
        for key, what in (("windows", "member windows"), ("canaries", "planted canaries")):
            top = det.get(key)
            if not top:
                continue
            for d in (top, top.get("reference")):
                if not d:
                    continue
                for name, g in d["groups"].items():
                    rows.append([html.escape(d["statistic"]), html.escape(name), html.escape(d["null"]),
                                 str(d["n_nonmembers"]), str(g["n"]), _fmt(d["threshold"]), _fmt(g["tpr"]),
                                 _fmt(d["realised_fpr"]), _fmt(g["z_mean"]), _fmt(g["p_median"])])
            notes.append(f"{what}: threshold calibrated to FPR ≤ {top['fpr_target']:g} on "
                         f"{top['n_nonmembers']} {html.escape(top['null'])}")
        parts += ["<h2>Perplexity detection</h2>",
                  _table(["statistic", "group", "null", "n null", "n", "threshold", "TPR", "FPR", "mean z",
                          "median p"], rows, left=3),
                  f"<p class='muted'>{'; '.join(notes)}. p-values (1 + #null ≤ x) / (1 + n null). Planted "
                  "canaries are compared with never-planted control canaries from the same generator: canaries "
                  "and genome windows differ in length and composition, so windows are no fair null for "
                  "canaries.</p>"]
        cd = det.get("canaries")
        if cd and cd["null"] == NULL_WINDOWS:
            parts.append("<p><b>No control canaries:</b> the planted canaries were calibrated on the non-member "
                         "windows, which differ from canaries in length and composition; the canary detection "
                         "rate may be inflated. Add never-planted controls (<code>glmjax data canaries --controls N</code>) for a fair null.</p>")
        if cd and cd["groups"]["canaries"]["by_repetition"]:
            ref_rows = {r["repetitions"]: r for r in
                        ((cd.get("reference") or {}).get("groups", {}).get("canaries", {}).get("by_repetition")
                         or [])}
            rows = [[str(r["repetitions"]), str(r["n"]), _fmt(r["tpr"]), _fmt(r["z_mean"]), _fmt(r["p_median"]),
                     _fmt((ref_rows.get(r["repetitions"]) or {}).get("tpr"))]
                    for r in cd["groups"]["canaries"]["by_repetition"]]
            parts += [f"<p>Planted canaries by repetition count (against {html.escape(cd['null'])}):</p>",
                      _table(["repetitions", "n", "TPR", "mean z", "median p", "TPR (reference ratio)"], rows)]
    if report["canaries"]:
        ext = report.get("extraction") or {}
        by = ext.get("by_repetition") or []
        parts += ["<h2>Canaries</h2>",
                  "<p>Each canary is a random prefix followed by a random secret, planted the given number of "
                  "times in the training data (0: a control, never planted). <b>Exposure</b> (bits) says how "
                  "high the model ranks the true secret among all |R| possible secrets: log2 |R| for a secret "
                  "ranked first, about 1 for one ranked in the middle. <b>Extracted</b>: greedy or beam-search "
                  "decoding from the prefix produced the secret exactly.</p>"]
        if by:
            parts.append(_table(["repetitions", "canaries", "mean exposure (bits)", "mean exposure / log2 |R|",
                                 "extracted"],
                                [["0 (controls)" if r["repetitions"] == 0 else str(r["repetitions"]), str(r["n"]),
                                  _fmt(r["exposure_mean"], 2), _fmt(r["normalised_exposure_mean"]),
                                  _fmt(r["extracted_mean"])] for r in by]))
        rows = []
        for c in sorted(report["canaries"], key=lambda c: (-c["repetitions"], -c["exposure"], c["id"])):
            interval = "exact" if c["exposure_method"] == "exact" else _ci(c["exposure_ci"], 2)
            row = [html.escape(c["id"]), str(c["repetitions"]),
                   _fmt(c["exposure"], 2), interval, _fmt(c["log2_candidates"], 1),
                   html.escape(c["exposure_method"]), _fmt(c["extracted"])]
            if report["reveal"]:
                row.append(f"<code>{html.escape(c.get('secret', ''))}</code>")
            rows.append(row)
        head = ["canary", "repetitions", "exposure", "interval", "log2 |R|", "method", "extracted"]
        table = _table(head + (["secret"] if report["reveal"] else []), rows, left=1)
        parts.append(f"<details{' open' if len(rows) <= 20 else ''}><summary>every canary ({len(rows)}, most "
                     f"repeated and most exposed first)</summary>{table}</details>")
    parts.append("<h2>Plots</h2>")
    for title, b64 in _plots(report):
        parts.append(f"<figure><img class='plot' alt='{html.escape(title)}' src='data:image/png;base64,{b64}'>"
                     f"<figcaption>{html.escape(title)}</figcaption></figure>")
    parts += ["<h2>Configuration and provenance</h2>",
              f"<pre>{html.escape(json.dumps({'config': report['config'], 'provenance': report['provenance']}, indent=2))}</pre>",
              f"<script>{_JS}</script></body></html>"]
    return "\n".join(parts)


# ------------------------------------------------------------------ files and terminal


def summary_table(report: dict):
    """A rich Table with the risk per vector and the headline metrics of each vector."""
    from rich.table import Table

    risk = report["risk"]
    ci = risk.get("worst_case_ci")
    t = Table(title=f"glmjax audit — worst-case risk {risk['worst_case']:.3f}"
                    + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
                    + f" ({risk['band'].upper()}, set by {risk['worst_vector']})")
    t.add_column("vector")
    t.add_column("risk", justify="right")
    t.add_column("interval", justify="right")
    t.add_column("band")
    t.add_column("headline")
    for k, v in risk["vectors"].items():
        if k == "mia":
            a = report["mia"]["attacks"][report["mia"]["strongest_attack"]]
            head = (f"{report['mia']['strongest_attack']}: AUC {a['auc']:.3f}, "
                    f"TPR@1% {a['tpr_at_fpr']['0.01']:.3f}, TPR@0.1% {a['tpr_at_fpr']['0.001']:.3f}")
        elif k == "extraction":
            e = report["extraction"]
            head = (f"{e['n_canaries']} canaries: {e['fraction_extracted']:.0%} extracted, "
                    f"mean exposure/log2|R| {e['mean_normalised_exposure']:.3f}")
        else:
            det = report["detection"]
            src = risk["sources"].get(k, "")
            d = det.get("canaries") if src.endswith(":canaries") else det.get("windows")
            head = f"{src} @ FPR {det['fpr_target']:g}" + (f" vs {d['null']}" if d else "")
        vci = (risk.get("vectors_ci") or {}).get(k)
        t.add_row(k, f"{v:.3f}", f"[{vci[0]:.3f}, {vci[1]:.3f}]" if vci else "–", R.band(v), head)
    return t


def print_summary(report: dict, console=None) -> None:
    """Print :func:`summary_table` (to ``console`` or a new rich Console)."""
    from rich.console import Console

    console = console or Console()
    console.print(summary_table(report))
    for w in report["risk"].get("warnings") or []:
        console.print(f"[bold yellow]warning:[/] {w}", markup=True, highlight=False)
