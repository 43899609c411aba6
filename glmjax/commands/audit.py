"""``glmjax audit``: run every audit vector that has inputs and write the report."""

from __future__ import annotations

from pathlib import Path

from glmjax.commands import argtypes as A
from glmjax.dtypes import DTYPE_CHOICES, dtype_name
from glmjax.errors import ConfigError


def register(sub) -> None:
    p = sub.add_parser(
        "audit", help="audit a model: perplexity detection, canary extraction/exposure, membership inference",
        description="Audit a model for memorization. Scores the store (members, non-members, canaries), runs "
        "perplexity detection, canary extraction and exposure, and membership-inference attacks (LiRA and RMIA "
        "when --shadows is given, the reference ratio with --reference), combines them into the worst-case "
        "risk, and writes OUT/report.json, OUT/report.html and OUT/scores/. Vectors without inputs are "
        "skipped and listed with the reason.")
    p.add_argument("--model", required=True, help="model folder (HF snapshot, NT JAX checkpoint or glmjax folder) or Hugging Face Hub id "
                   "ORG/NAME[@REVISION] (fetched into the HF cache; HF_HUB_OFFLINE=1 reads the cache only)")
    p.add_argument("--data", required=True, help="SequenceStore with a member/non-member split")
    p.add_argument("--canaries", help="canary manifest (JSON) written by glmjax data plant")
    p.add_argument("--reference", help="reference model folder or Hub id (reference-ratio attack)")
    p.add_argument("--shadows", help="shadow-model folder from glmjax train-shadows (LiRA, RMIA)")
    p.add_argument("--out", required=True, help="report folder")
    p.add_argument("--pll", help="masked LMs: exact (default), strided:K or random:K")
    p.add_argument("--dtype", choices=DTYPE_CHOICES, default="fp32",
                   help="compute dtype of every model of the audit (auto: bf16 on GPU/TPU, fp32 on CPU)")
    p.add_argument("--batch-tokens", type=A.positive_int, help="tokens per device and forward pass")
    p.add_argument("--exact-k-max", type=A.count, default=10,
                   help="enumerate all 4^k candidates for secrets up to k nucleotides (default 10; 0: never "
                   "enumerate, always use the sampled estimate)")
    p.add_argument("--exact-budget", type=A.number(0.0, allow_inf=True), default=120.0, metavar="SECONDS",
                   help="enumerate only while the estimated time of the exact enumeration stays within this "
                   "many seconds; longer secret lengths get the sampled estimate, and the report says so "
                   "(default 120; inf: no limit)")
    p.add_argument("--exposure-samples", type=A.positive_int, default=4096,
                   help="random candidates per canary for the sampled exposure estimate (longer secrets)")
    p.add_argument("--beam-width", type=A.positive_int, default=8)
    p.add_argument("--neighbours", type=A.count, default=8, help="neighbours per sequence (0: no neighbourhood attack)")
    p.add_argument("--bootstrap", type=A.count, default=200, help="bootstrap resamples for confidence intervals")
    p.add_argument("--fpr", type=A.open_fraction, default=0.01, help="false-positive rate of the detection threshold")
    p.add_argument("--lira-variance", choices=["unbiased", "reference"], default="unbiased",
                   help="LiRA's σ: unbiased (ddof 1, pooled for sparse examples; default) or reference "
                   "(TF Privacy's np.std conventions); see docs/statistics.md")
    p.add_argument("--lira-centre", choices=["mean", "median"], default="mean",
                   help="LiRA's μ: mean (default) or median of the IN / OUT shadow scores")
    p.add_argument("--rmia-trim", type=A.number(0.0, 0.5, high_open=True), default=0.0, metavar="FRACTION",
                   help="RMIA: trim this fraction of reference models from each end when averaging p(x) "
                   "(scipy.stats.trim_mean; default 0: the mean)")
    p.add_argument("--no-dcpdd", action="store_true",
                   help="skip DC-PDD (on by default: the model's k-mer probabilities calibrated by reference "
                   "k-mer frequencies)")
    p.add_argument("--dcpdd-n", type=A.positive_int, metavar="N",
                   help="DC-PDD unit: n-grams of N tokens (default 6 for one token per nucleotide, else 1)")
    p.add_argument("--dcpdd-cap", type=A.number(0.0, low_open=True), default=0.01, metavar="A",
                   help="DC-PDD's cap a on each unit's score (default 0.01, as the reference implementation)")
    p.add_argument("--dcpdd-reference", metavar="FASTA",
                   help="public genome (FASTA or SequenceStore) for DC-PDD's reference frequencies (default: "
                   "the non-member split, each non-member left out of its own counts)")
    p.add_argument("--recall-shots", type=A.count, default=1,
                   help="ReCaLL: non-member sequences in the prefix (causal families; default 1, 0: off)")
    p.add_argument("--recall-rows", type=A.positive_int, default=1000,
                   help="ReCaLL: sequences evaluated per class (default 1000)")
    p.add_argument("--gradnorm-rows", type=A.count, default=None,
                   help="gradient-norm attack: sequences evaluated per class (default 1000 for models up to 1 B "
                   "parameters, off above; 0: off)")
    p.add_argument("--gradnorm-p", choices=["1", "2", "inf"], default="inf",
                   help="gradient-norm attack: the norm of each parameter tensor's gradient (default inf, as mimir)")
    p.add_argument("--seed", type=A.seed, default=0)
    p.add_argument("--reveal", action="store_true", help="write raw canary secrets into the report")
    p.add_argument("--trust-pickle", action="store_true", help="allow pickle-based checkpoints")
    p.set_defaults(func=run, io=(("model", "data", "canaries", "reference", "shadows", "dcpdd_reference"), ("out",)))


def run(args) -> int:
    from glmjax.audit.pipeline import AuditOptions, headline, run_audit, timings_line
    from glmjax.audit.render import print_summary

    if not 0 < args.fpr < 1:
        raise ConfigError("--fpr must lie in (0, 1)")
    if args.exact_k_max < 0 or args.exact_k_max > 16:
        raise ConfigError("--exact-k-max must lie in 0..16 (0: never enumerate; 4^16 candidates is the most "
                          "that fits)")
    if not args.exact_budget >= 0:
        raise ConfigError("--exact-budget must be a number of seconds >= 0 (inf: no limit)")
    for name in ("model", "data", "canaries", "reference", "shadows", "dcpdd_reference"):
        v = getattr(args, name)
        if v is not None and not Path(v).exists():
            raise ConfigError(f"--{name.replace('_', '-')} {v}: no such file or folder")
    opts = AuditOptions(pll=args.pll, dtype=dtype_name(args.dtype),
                        batch_tokens=args.batch_tokens, exact_k_max=args.exact_k_max,
                        exact_budget_s=args.exact_budget,
                        exposure_samples=args.exposure_samples, beam_width=args.beam_width,
                        neighbours=args.neighbours, n_bootstrap=args.bootstrap, detection_fpr=args.fpr,
                        seed=args.seed, trust_pickle=args.trust_pickle, lira_variance=args.lira_variance,
                        lira_centre=args.lira_centre, rmia_trim=args.rmia_trim, dcpdd=not args.no_dcpdd,
                        dcpdd_n=args.dcpdd_n, dcpdd_cap=args.dcpdd_cap, dcpdd_reference=args.dcpdd_reference,
                        recall_shots=args.recall_shots, recall_rows=args.recall_rows,
                        gradnorm_rows=args.gradnorm_rows, gradnorm_p=float(args.gradnorm_p))
    res = run_audit(args.model, args.data, args.out, canaries=args.canaries, reference=args.reference,
                    shadows=args.shadows, opts=opts, reveal=args.reveal)
    print_summary(res.report)
    for vec, why in res.report.get("skipped", {}).items():
        print(f"skipped {vec}: {why}")
    print(timings_line(res.report))
    print(headline(res.report))
    print(f"report: {res.paths['html']} ({res.paths['json'].name}), {res.seconds:.1f} s")
    return 0
