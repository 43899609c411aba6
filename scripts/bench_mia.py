#!/usr/bin/env python
"""Membership-inference statistics at scale, on CPU: every attack of glmjax.audit.mia and the
metrics of glmjax.audit.metrics (AUC, TPR at 0.1% / 1% FPR, balanced accuracy, each with a
stratified bootstrap) for N synthetic score rows.

    python scripts/bench_mia.py                     # 10 M rows, 100 bootstrap replicates
    python scripts/bench_mia.py --smoke             # 20 k rows, a few seconds

DC-PDD runs over every row from synthetic per-token log p (rows x seq-len tokens, the non-member
rows as the leave-one-out 6-gram reference); every attack also gets the ROC-hull
(randomised-threshold) metrics.

Inputs are synthetic ScoreStore-like columns with a weak membership signal (no model runs here):
target mean/sum log p, Min-K% and Min-K%++, a reference model, point-mutation neighbours, shadow
models with a random inclusion matrix (LiRA), reference models and population samples (RMIA),
and nucleotide sequences for the zlib and k-mer entropy ratios.

Baseline measured in the same run: the per-replicate cost of the usual bootstrap (resample the
rows, then recompute the AUC from a fresh rank/sort, as ``sklearn.metrics.roc_auc_score`` does per
replicate) against ours, and ``scipy.stats.mannwhitneyu`` for the point AUC.

Prints one JSON object: wall-clock and CPU seconds per stage, metrics per attack, the baseline,
peak resident memory in GiB.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time

import numpy as np  # noqa: E402
from scipy import stats  # noqa: E402

from glmjax.audit import dcpdd as DC  # noqa: E402
from glmjax.audit import metrics as M  # noqa: E402
from glmjax.audit import mia  # noqa: E402


def _peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


class Timer:
    """Collects named wall-clock timings (``t``) and this process's CPU time (``cpu``): on a
    shared machine the CPU seconds are the cost, the wall seconds also include waiting."""

    def __init__(self):
        self.t: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    def __call__(self, name: str, fn, *a, **kw):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn(*a, **kw)
        self.t[name] = round(time.perf_counter() - t0, 3)
        self.cpu[name] = round(time.process_time() - c0, 3)
        return out


def synthesize(rows: int, seq_len: int, shadows: int, refs: int, neighbours: int, population: int,
               seed: int) -> dict:
    """Synthetic score columns with a weak membership signal (float32 where the store is)."""
    rng = np.random.default_rng(seed)
    f32 = np.float32
    labels = rng.random(rows) < 0.5
    difficulty = rng.normal(-1.2, 0.25, rows).astype(f32)  # per-sequence intrinsic log p
    sig = labels.astype(f32)
    mean_logp = np.minimum(difficulty + 0.03 * sig + rng.normal(0, 0.05, rows).astype(f32), -1e-3)
    d = {"labels": labels, "mean_logp": mean_logp,
         "sum_logp": mean_logp.astype(np.float64) * seq_len,
         "n_nucleotides": np.full(rows, seq_len, np.int32),
         "mink_20": (mean_logp - 1.0 + 0.05 * sig + rng.normal(0, 0.1, rows)).astype(f32),
         "minkpp_20": (rng.normal(0, 1, rows) + 0.1 * sig).astype(f32),
         "ref_mean_logp": np.minimum(difficulty + rng.normal(0, 0.05, rows).astype(f32), -1e-3)}
    nb = np.empty((rows, neighbours), f32)
    for j in range(neighbours):  # column by column keeps the temporaries small
        nb[:, j] = (difficulty + rng.normal(0, 0.05, rows).astype(f32)) * seq_len
    d["neighbour_sum_logp"] = nb
    inc = rng.random((shadows, rows)) < 0.5
    sh = np.empty((shadows, rows), f32)
    for m in range(shadows):
        sh[m] = np.minimum(difficulty + 0.03 * inc[m] + rng.normal(0, 0.05, rows).astype(f32), -1e-3)
    d["shadow"], d["inclusion"] = sh, inc
    rx = np.empty((refs, rows), f32)
    for r in range(refs):
        rx[r] = np.minimum(difficulty + rng.normal(0, 0.05, rows).astype(f32), -1e-3)
    d["rmia_ref_x"] = rx
    dz = rng.normal(-1.2, 0.25, population)
    d["rmia_target_z"] = np.minimum(dz + rng.normal(0, 0.05, population), -1e-3)
    d["rmia_ref_z"] = np.minimum(dz + rng.normal(0, 0.05, (refs, population)), -1e-3)
    d["codes"] = rng.integers(0, 4, rows * seq_len, dtype=np.uint8)
    d["offsets"] = np.arange(rows + 1, dtype=np.int64) * seq_len
    return d


def dcpdd_all_rows(codes: np.ndarray, seq_len: int, labels: np.ndarray, mean_logp: np.ndarray, seed: int,
                   chunk_rows: int = 100_000) -> tuple[np.ndarray, float, float]:
    """DC-PDD over every row from synthetic per-token log p (the row's mean log p plus noise), the
    non-member rows as the leave-one-out reference of 6-grams: ``(scores, table s, score s)``."""
    rows = labels.shape[0]
    grid = codes.reshape(rows, seq_len)

    def tok(idx):  # the char tokenizer's A C G T ids, one chunk of rows at a time
        return list(grid[idx].astype(np.int64) + 7)

    t0 = time.perf_counter()
    alphabet = np.arange(7, 11)
    nonmem = np.flatnonzero(~labels)
    tables = [DC.ngram_table(tok(nonmem[i:i + chunk_rows]), 6, alphabet, "non-members")
              for i in range(0, nonmem.size, chunk_rows)]
    table = DC.merge_tables(tables)
    t_table = time.perf_counter() - t0
    rng = np.random.default_rng([seed, 6])
    out = np.empty(rows)
    t0 = time.perf_counter()
    for i in range(0, rows, chunk_rows):
        j = min(rows, i + chunk_rows)
        lp = (mean_logp[i:j, None] + rng.normal(0, 0.3, (j - i, seq_len))).astype(np.float32)
        out[i:j] = DC.dcpdd_scores_parallel(tok(np.arange(i, j)), list(lp), table, leave_out=~labels[i:j])
    return out, t_table, time.perf_counter() - t0


def naive_bootstrap_replicate(labels: np.ndarray, scores: np.ndarray, rng: np.random.Generator) -> float:
    """One stratified replicate the usual way: resample rows, then AUC from fresh ranks."""
    pos = np.flatnonzero(labels)
    neg = np.flatnonzero(~labels)
    idx = np.concatenate([pos[rng.integers(0, pos.size, pos.size)], neg[rng.integers(0, neg.size, neg.size)]])
    s, lab = scores[idx], labels[idx]
    ranks = stats.rankdata(s)
    n1 = lab.sum()
    return float((ranks[lab].sum() - n1 * (n1 + 1) / 2) / (n1 * (lab.size - n1)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--n-bootstrap", type=int, default=100)
    ap.add_argument("--seq-len", type=int, default=100, help="nucleotides per sequence (zlib, k-mer entropy)")
    ap.add_argument("--shadows", type=int, default=8)
    ap.add_argument("--refs", type=int, default=4)
    ap.add_argument("--neighbours", type=int, default=8)
    ap.add_argument("--population", type=int, default=10_000)
    ap.add_argument("--baseline-replicates", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true", help="20 k rows, 20 replicates")
    a = ap.parse_args()
    if a.smoke:
        a.rows, a.n_bootstrap, a.population, a.baseline_replicates = 20_000, 20, 2_000, 2

    timer = Timer()
    t_all = time.perf_counter()
    d = timer("synthesize", synthesize, a.rows, a.seq_len, a.shadows, a.refs, a.neighbours, a.population, a.seed)
    labels = d["labels"]

    bits = timer("zlib_bits", mia.zlib_bits, d["codes"], d["offsets"])
    kh = timer("kmer_entropy_bits", mia.kmer_entropy_bits, d["codes"], d["offsets"], 3)
    dc, dc_table_s, dc_score_s = timer("dcpdd", dcpdd_all_rows, d["codes"], a.seq_len, labels, d["mean_logp"], a.seed)
    del d["codes"], d["offsets"]

    scores: dict[str, np.ndarray] = {}
    score_t = Timer()
    cols = {k: d[k] for k in ("mean_logp", "sum_logp", "n_nucleotides", "mink_20", "minkpp_20")}
    scores["loss"] = score_t("loss", mia.loss_attack, cols["mean_logp"])
    scores["zlib"] = score_t("zlib", mia.zlib_ratio, cols["sum_logp"], bits)
    scores["kmer3_entropy"] = score_t("kmer3_entropy", mia.kmer_entropy_ratio, cols["sum_logp"],
                                      cols["n_nucleotides"], kh, 3)
    scores["mink_20"] = score_t("mink_20", np.asarray, cols["mink_20"], np.float64)
    scores["minkpp_20"] = score_t("minkpp_20", np.asarray, cols["minkpp_20"], np.float64)
    scores["reference"] = score_t("reference", mia.reference_ratio, cols["mean_logp"], d["ref_mean_logp"])
    scores["neighbourhood"] = score_t("neighbourhood", mia.neighbourhood_score, cols["sum_logp"],
                                      d["neighbour_sum_logp"])
    del d["neighbour_sum_logp"]
    scores["lira_online"] = score_t("lira_online", mia.lira, cols["mean_logp"], d["shadow"], d["inclusion"],
                                    online=True, fixed_variance=a.shadows < 64)
    scores["lira_offline"] = score_t("lira_offline", mia.lira, cols["mean_logp"], d["shadow"], d["inclusion"],
                                     online=False, fixed_variance=a.shadows < 64)
    del d["shadow"], d["inclusion"]
    scores["rmia"] = score_t("rmia", mia.rmia, cols["mean_logp"], d["rmia_ref_x"], d["rmia_target_z"],
                             d["rmia_ref_z"])
    del d["rmia_ref_x"]
    scores["dcpdd"] = dc
    score_t.t["dcpdd"], score_t.cpu["dcpdd"] = timer.t["dcpdd"], timer.cpu["dcpdd"]

    per_attack = {}
    metric_t = Timer()
    for i, (name, s) in enumerate(scores.items()):
        r = metric_t(name, M.evaluate_attack, labels, s, n_bootstrap=a.n_bootstrap, seed=a.seed + i)
        per_attack[name] = {"auc": round(r.auc, 5), "auc_ci": [round(x, 5) for x in r.ci["auc"]],
                            "tpr_at_0.001": round(r.tpr_at_fpr[0.001], 5),
                            "tpr_at_0.01": round(r.tpr_at_fpr[0.01], 5),
                            "balanced_accuracy": round(r.balanced_accuracy, 5),
                            "seconds_score": score_t.t[name], "seconds_metrics": metric_t.t[name],
                            "cpu_seconds_metrics": metric_t.cpu[name]}
    hull_t = Timer()
    for name, s in scores.items():  # the randomised-threshold metrics on the ROC's convex hull
        hull = hull_t(name, M.roc_hull, labels, s)
        rnd = M.randomised_metrics(hull, fpr_targets=(0.001, 0.01))
        per_attack[name].update({"hull_auc": round(rnd["auc"], 5), "seconds_hull": hull_t.t[name]})

    # Baseline in the same run: the usual bootstrap replicate and scipy's Mann-Whitney AUC.
    loss = scores["loss"]
    rng = np.random.default_rng(a.seed)
    t0 = time.perf_counter()
    for _ in range(a.baseline_replicates):
        naive_bootstrap_replicate(labels, loss, rng)
    naive_per_rep = (time.perf_counter() - t0) / a.baseline_replicates
    basis = M.RocBasis(labels, loss)
    t0 = time.perf_counter()
    M.bootstrap_replicates(basis, a.baseline_replicates, seed=a.seed)
    ours_per_rep = (time.perf_counter() - t0) / a.baseline_replicates
    t0 = time.perf_counter()
    u = stats.mannwhitneyu(loss[labels], loss[~labels], alternative="two-sided").statistic
    scipy_auc_s = time.perf_counter() - t0
    scipy_auc = float(u / (labels.sum() * (~labels).sum()))
    t0 = time.perf_counter()
    our_auc = M.roc_auc(labels, loss)
    our_auc_s = time.perf_counter() - t0

    out = {
        "benchmark": "bench_mia",
        "date": time.strftime("%Y-%m-%d"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "numpy": np.__version__, "load_average_1min": round(os.getloadavg()[0], 2)},
        "rows": a.rows, "n_bootstrap": a.n_bootstrap, "seq_len": a.seq_len, "shadows": a.shadows,
        "refs": a.refs, "neighbours": a.neighbours, "population": a.population,
        "seconds": {
            "synthesize": timer.t["synthesize"],
            "zlib_bits": timer.t["zlib_bits"],
            "kmer_entropy_bits": timer.t["kmer_entropy_bits"],
            "attack_scores_total": round(sum(score_t.t.values()), 3),
            "metrics_with_bootstrap_total": round(sum(metric_t.t.values()), 3),
            "roc_hull_total": round(sum(hull_t.t.values()), 3),
            "dcpdd_reference_table": round(dc_table_s, 3), "dcpdd_scores": round(dc_score_s, 3),
            "statistics_total": round(timer.t["zlib_bits"] + timer.t["kmer_entropy_bits"]
                                      + sum(score_t.t.values()) + sum(metric_t.t.values())
                                      + sum(hull_t.t.values()), 3),
            "wall_total": round(time.perf_counter() - t_all, 3),
        },
        "cpu_seconds": {
            "zlib_bits": timer.cpu["zlib_bits"],
            "kmer_entropy_bits": timer.cpu["kmer_entropy_bits"],
            "attack_scores_total": round(sum(score_t.cpu.values()), 3),
            "metrics_with_bootstrap_total": round(sum(metric_t.cpu.values()), 3),
            "roc_hull_total": round(sum(hull_t.cpu.values()), 3),
            "statistics_total": round(timer.cpu["zlib_bits"] + timer.cpu["kmer_entropy_bits"]
                                      + sum(score_t.cpu.values()) + sum(metric_t.cpu.values())
                                      + sum(hull_t.cpu.values()), 3),
        },
        "attacks": per_attack,
        "baseline": {
            "bootstrap_seconds_per_replicate_resample_and_rerank": round(naive_per_rep, 4),
            "bootstrap_seconds_per_replicate_glmjax": round(ours_per_rep, 4),
            "bootstrap_speedup": round(naive_per_rep / ours_per_rep, 2),
            "auc_scipy_mannwhitneyu": scipy_auc, "auc_scipy_seconds": round(scipy_auc_s, 3),
            "auc_glmjax": our_auc, "auc_glmjax_seconds": round(our_auc_s, 3),
            "auc_abs_diff": abs(scipy_auc - our_auc),
        },
        "peak_rss_gib": round(_peak_gib(), 3),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
