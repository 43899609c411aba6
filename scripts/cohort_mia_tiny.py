"""Individual-level membership inference on a 1000 Genomes cohort with a tiny Llama.

Pipeline: ``import_vcf`` (both haplotypes of the first ``--samples`` individuals over ``--region``,
windows of ``--window`` nt) -> split by individual (half members, seeded) -> train a tiny Llama
(:func:`glmjax.models.build` ``llama`` tiny, context ``window + 1``) on the members' windows ->
score every window (sum of log p, one jitted forward) -> attacks: loss and the variant-aware
neighbourhood attack (``--neighbours`` allele-resampled neighbours per window) -> window-level and
individual-level (sum, mean, max, variant-window mean) AUC with 95% stratified bootstrap intervals.

Prints one JSON object. Examples::

    python scripts/cohort_mia_tiny.py                # 40 individuals, 4.8 kb, 4 epochs (CPU: minutes)
    python scripts/cohort_mia_tiny.py --smoke        # 16 individuals, 1.9 kb, 3 epochs (CPU: seconds)

Reads ``../shared/data`` next to the repository by default (``--reference`` / ``--vcf`` to change).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
SMOKE = {"samples": 16, "region": "20:1,200,001-1,201,920", "window": 96, "epochs": 3, "neighbours": 2}


def window_logp(model, batch: int = 128):
    """A scorer: codes uint8 [M, L] -> sum of log p of the nucleotides under a causal char model, [M]."""
    tok = model.tokenizer
    graphdef, state = model.split()

    @jax.jit
    def fwd(state, ids):
        logits = nnx.merge(graphdef, state)(ids, None).astype(jnp.float32)
        lp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
        return jnp.take_along_axis(lp, ids[:, 1:, None], axis=-1)[..., 0].sum(axis=1)

    def score(codes: np.ndarray) -> np.ndarray:
        ids = np.stack([tok.encode_codes(c).ids for c in codes])  # [BOS] + one id per base
        out = []
        for lo in range(0, ids.shape[0], batch):
            chunk = ids[lo:lo + batch]
            # One batch shape for every call: the last chunk is padded with copies of its first row.
            pad = np.repeat(chunk[:1], batch - chunk.shape[0], axis=0)
            out.append(np.asarray(fwd(state, jnp.asarray(np.concatenate([chunk, pad]))))[:chunk.shape[0]])
        return np.concatenate(out).astype(np.float64)

    return score


def run(reference: Path, vcf: Path, workdir: Path, samples: int = 40, region: str = "20:1,200,001-1,204,800",
        window: int = 96, epochs: int = 4, neighbours: int = 4, seed: int = 0, n_bootstrap: int = 200) -> dict:
    """Run the pipeline in ``workdir``; returns the JSON-ready result."""
    import pysam

    from glmjax import models
    from glmjax.audit.cohort import (
        evaluate_cohort,
        load_windows,
        split_individuals,
        variant_neighbourhood_attack,
    )
    from glmjax.audit.mia import attack_scores
    from glmjax.data.store import SequenceStore
    from glmjax.data.vcf import ImportOptions, import_vcf, read_cohort
    from glmjax.train.trainer import TrainConfig, train

    t0 = time.perf_counter()
    with pysam.VariantFile(str(vcf)) as vf:
        names = list(vf.header.samples)[:samples]
    (workdir / "samples.txt").write_text("\n".join(names) + "\n")
    store = workdir / "cohort.h5"
    summary = import_vcf(reference, vcf, store, ImportOptions(window=window), regions=[region],
                         samples=workdir / "samples.txt")
    t_import = time.perf_counter() - t0
    split_individuals(store, 0.5, seed=seed)
    cw = load_windows(store)
    cfg = dataclasses.replace(models.get_family("llama").config_cls.tiny(), max_position_embeddings=window + 1)
    model = models.build("llama", cfg, seed=seed)
    t0 = time.perf_counter()
    res = train(model, store, TrainConfig(epochs=epochs, batch_size=32, lr=3e-3, warmup_steps=10, seed=seed,
                                          log_every=5, checkpoint_every=1_000_000), workdir / "run",
                val_fraction=0.0)
    t_train = time.perf_counter() - t0
    t0 = time.perf_counter()
    score = window_logp(model)
    with SequenceStore(store) as st:
        codes = np.stack(st.sequences())
    sum_logp = score(codes)
    scores = attack_scores({"sum_logp": sum_logp, "mean_logp": sum_logp / codes.shape[1]}, mink_percents=())
    scores["variant_neighbourhood"] = variant_neighbourhood_attack(
        score, codes, np.arange(codes.shape[0]), read_cohort(store), n=neighbours, seed=seed)
    t_score = time.perf_counter() - t0
    report = evaluate_cohort(scores, cw.member, cw.groups, cw.alt_alleles, n_bootstrap=n_bootstrap, seed=seed)

    def auc(m) -> dict:
        return {"auc": m.auc, "ci95": list(m.ci.get("auc", (float("nan"), float("nan"))))}

    logged = [json.loads(line) for line in (workdir / "run" / "train_log.jsonl").read_text().splitlines()]
    step_losses = [e["loss"] for e in logged if "loss" in e]
    return {
        "config": {"samples": samples, "region": region, "window": window, "epochs": epochs,
                   "neighbours": neighbours, "seed": seed, "n_bootstrap": n_bootstrap,
                   "model": "llama tiny", "params": model.num_params()},
        "import": summary, "final_train_loss": res.final_train_loss, "train_steps": res.steps,
        "logged_losses": step_losses,
        "seconds": {"import": round(t_import, 2), "train": round(t_train, 2), "score": round(t_score, 2)},
        "attacks": {name: {"windows": r.n_windows, "individuals": r.n_individuals,
                           "variant_fallback": r.variant_fallback, "window": auc(r.window),
                           "individual": {k: auc(m) for k, m in r.individual.items()}}
                    for name, r in report.items()},
        "_report": report,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", type=Path, default=DATA / "eukaryote" / "human_grch37_chr20_0-5Mb.fa.gz")
    ap.add_argument("--vcf", type=Path, default=DATA / "cohort" / "1000G_chr20_1-4Mb.vcf.gz")
    ap.add_argument("--samples", type=int, default=40)
    ap.add_argument("--region", default="20:1,200,001-1,204,800")
    ap.add_argument("--window", type=int, default=96)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--neighbours", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true", help="16 individuals, 1.9 kb, 3 epochs, 2 neighbours")
    a = ap.parse_args()
    if a.smoke:
        a.samples, a.region, a.epochs, a.neighbours = SMOKE["samples"], SMOKE["region"], SMOKE["epochs"], SMOKE["neighbours"]
    with tempfile.TemporaryDirectory() as d:
        out = run(a.reference, a.vcf, Path(d), a.samples, a.region, a.window, a.epochs, a.neighbours, a.seed)
    out.pop("_report")
    print(json.dumps(out, indent=1, default=float))


if __name__ == "__main__":
    main()
