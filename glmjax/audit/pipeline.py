"""The audit pipeline: score, attack, measure, report — the library behind ``glmjax audit``.

:func:`run_audit` takes a model, a SequenceStore with a member/non-member split (planted canaries
included), the canary manifest, and optionally a reference model and shadow models, and runs
every vector it has inputs for:

* **perplexity detection** — log-perplexity of member windows against the non-member windows,
  and of the planted canaries against the never-planted ones (controls and held-out canaries,
  repetitions 0; the non-member windows only when there is none), each with its own threshold;
* **extraction** — greedy and beam-search completion of each canary prefix (causal families)
  or most-confident-first mask filling (masked families);
* **exposure** — exact enumeration of all 4^k candidate secrets when k <= ``exact_k_max`` and
  the estimated time of the enumeration fits ``exact_budget_s`` (batched trie walks over all
  canaries for causal families, batched PLL of the secret for masked ones), else the skew-normal
  extrapolation from ``exposure_samples`` random candidates with a bootstrap interval; the
  choice per secret length and its reason land in ``report["exposure_plan"]``;
* **membership inference** — loss, zlib, k-mer entropy, Min-K%, Min-K%++, DC-PDD (reduced from
  the per-token log p while the target model scores the store), neighbourhood, ReCaLL (causal
  families) and the gradient norm (on sampled rows), with a reference model the reference ratio,
  with shadow models LiRA (online/offline) and RMIA;
  evaluated on the genome windows (canary copies excluded) with member labels from the split.

Everything lands in ``OUT/``: ``report.json``, ``report.html``, and ``scores/`` (the ScoreStores
the statistics came from, and ``membership.h5``, every attack's score per genome window with its
label — see :mod:`glmjax.audit.scoretable`; ``glmjax scores export`` writes them as CSV/Parquet). Vectors without inputs are listed under ``skipped``
with the reason; ``report["timings"]`` holds the seconds of every stage (they add up to
``report["seconds"]``).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from glmjax import alphabet, models
from glmjax.audit import mia as MIA
from glmjax.audit.exposure import estimate_exposure
from glmjax.audit.perplexity import log_perplexity
from glmjax.audit.report import AuditResult, CanaryResult, evaluate, write_report
from glmjax.data.store import Record, SequenceStore, SequenceStoreWriter
from glmjax.errors import ConfigError, StoreError
from glmjax.models.base import LoadedModel
from glmjax.progress import progress

RECALL_MIN_PREFIX = 32  # nucleotides of non-member prefix ReCaLL needs (or the sequence's length, if shorter)
GRADNORM_AUTO_ROWS = 1000
GRADNORM_AUTO_MAX_PARAMS = 1_000_000_000  # above: one gradient per sequence is too slow to run unasked


@dataclass(frozen=True)
class AuditOptions:
    """Options of an audit (defaults suit a CPU run on a small store)."""

    pll: str | None = None  # masked families: exact | strided:K | random:K
    dtype: str | None = None  # compute dtype (None: the model's)
    batch_tokens: int | None = None
    exact_k_max: int = 10  # exact exposure for secrets up to this length (0: always sampled)
    exact_budget_s: float = 120.0  # estimated seconds exact enumeration may take (inf: no limit)
    exposure_samples: int = 4096  # sampled candidates per canary above exact_k_max
    extraction: tuple[str, ...] = ()  # default: greedy+beam (causal) or fill (masked)
    beam_width: int = 8
    neighbours: int = 8  # neighbours per sequence for the neighbourhood attack (0: off)
    neighbour_rate: float = 0.02
    neighbour_rows: int = 1000  # evaluated sequences per class for the neighbourhood attack
    kmer_k: int = 3
    mink_percents: tuple[int, ...] = (10, 20)
    n_bootstrap: int = 200
    detection_fpr: float = 0.01
    seed: int = 0
    trust_pickle: bool = False
    lira_variance: str = "unbiased"  # or "reference": TF Privacy's np.std conventions (docs/statistics.md)
    lira_centre: str = "mean"  # or "median" of the IN / OUT shadow scores
    rmia_trim: float = 0.0  # proportiontocut of a trimmed mean over the reference models
    dcpdd: bool = True  # DC-PDD over every genome window (per-token log p reduced on the host)
    dcpdd_n: int | None = None  # n-gram length in tokens (None: 6 for one token per nucleotide, else 1)
    dcpdd_cap: float = 0.01  # DC-PDD's cap a
    dcpdd_reference: str | None = None  # FASTA / store of a public genome (None: the non-member split)
    recall_shots: int = 1  # non-member sequences in the ReCaLL prefix (0: no ReCaLL)
    recall_rows: int = 1000  # evaluated sequences per class for ReCaLL
    gradnorm_rows: int | None = None  # sequences per class for the gradient norm (None: 1000 up to
    # GRADNORM_AUTO_MAX_PARAMS parameters, else off; 0: off)
    gradnorm_p: float = float("inf")  # the norm of the gradient-norm attack (1, 2 or inf)


@dataclass
class AuditOutcome:
    """What :func:`run_audit` returns: the report dict and the paths written."""

    report: dict
    paths: dict[str, Path]
    seconds: float


class _Laps:
    """Wall time per audit stage: each :meth:`lap` charges the time since the previous one to a
    stage, so the stages add up to the total."""

    def __init__(self):
        self.t0 = self.t = time.perf_counter()
        self.stages: dict[str, float] = {}

    def lap(self, stage: str) -> float:
        now = time.perf_counter()
        self.stages[stage] = self.stages.get(stage, 0.0) + now - self.t
        self.t = now
        return self.stages[stage]

    def rounded(self) -> tuple[dict[str, float], float]:
        """``(stages in ms precision, their sum)``."""
        stages = {k: round(v, 3) for k, v in self.stages.items()}
        return stages, round(sum(stages.values()), 3)


def _load(model: LoadedModel | str | Path, opts: AuditOptions) -> LoadedModel:
    if isinstance(model, LoadedModel):
        return model
    return models.load(model, trust_pickle=opts.trust_pickle, dtype=opts.dtype)


def _score(model: LoadedModel, store: Path, out: Path, opts: AuditOptions, label: str = "scoring", log=None,
           token_reducer=None, reduced: dict | None = None):
    """Score ``store`` into ``out``; a ``token_reducer``'s columns are put into ``reduced``."""
    from glmjax.engine.runner import score
    from glmjax.engine.scorestore import ScoreStore

    summary = score(model, store, out, pll=opts.pll if model.objective == "masked" else None, seed=opts.seed,
                    batch_tokens=opts.batch_tokens, overwrite=True, resume=False, label=label, log=log,
                    token_reducer=token_reducer)
    if reduced is not None and summary.reduced is not None:
        reduced.update(summary.reduced)
    return ScoreStore(out)


def _sample(labels: np.ndarray, per_class: int, seed: int, tag: int, exclude: np.ndarray | None = None) -> np.ndarray:
    """Up to ``per_class`` positions of each class (sorted), drawn with ``(seed, tag)``."""
    rng = np.random.default_rng([seed, tag])
    keep = np.ones(labels.shape[0], bool)
    if exclude is not None:
        keep[exclude] = False
    pos, neg = np.flatnonzero(labels & keep), np.flatnonzero(~labels & keep)
    return np.sort(np.concatenate([rng.permutation(pos)[:per_class], rng.permutation(neg)[:per_class]]))


def _dcpdd_setup(target: LoadedModel, seqs: list[np.ndarray], n_store: int, genome: np.ndarray,
                 labels: np.ndarray, opts: AuditOptions, reference_rows: list[np.ndarray] | None, log):
    """The DC-PDD token reducer and the description of its reference (the report's ``settings``)."""
    from glmjax.audit import modelattacks as MA

    n = opts.dcpdd_n or (6 if target.tokenizer.one_token_per_nucleotide else 1)
    if reference_rows is not None:
        rows = reference_rows
        log(f"DC-PDD: counting {n}-grams of {opts.dcpdd_reference} ({sum(len(r) for r in rows):,} nt)")
        with progress("DC-PDD reference", total=2 * len(rows), unit="seq", log=log) as bar:
            table = MA.dcpdd_table(target.tokenizer, rows, n, source=str(opts.dcpdd_reference), on_rows=bar.advance)
        return MA.dcpdd_reducer(table, opts.dcpdd_cap), {**table.to_dict(), "cap": opts.dcpdd_cap,
                                                         "leave_one_out": False}
    nonmem = np.flatnonzero(~labels)
    log(f"DC-PDD: counting {n}-grams of the {len(nonmem):,} non-member windows (left out of their own scores)")
    with progress("DC-PDD reference", total=2 * len(nonmem), unit="seq", log=log) as bar:
        table = MA.dcpdd_table(target.tokenizer, [seqs[i] for i in nonmem], n, source="non-member split",
                               on_rows=bar.advance)
    in_ref = np.zeros(n_store, bool)
    in_ref[genome[nonmem]] = True
    return MA.dcpdd_reducer(table, opts.dcpdd_cap, in_reference=in_ref), {
        **table.to_dict(), "cap": opts.dcpdd_cap, "leave_one_out": True}


def _cols(ss, rows: np.ndarray, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    return {n: np.asarray(ss.column(n))[rows] for n in names}


def _canary_store(path: Path, entries: list[dict], samples: dict[str, np.ndarray]) -> list[tuple[int, int]]:
    """Write every canary (prefix + secret) followed by its sampled candidates into a store;
    returns (row of the canary, number of sampled rows after it) per entry."""
    w = SequenceStoreWriter(path, provenance={"purpose": "audit canary scoring"})
    layout = []
    row = 0
    for e in entries:
        prefix = alphabet.encode(e["prefix"])
        recs = [Record(f"{e['id']}", np.concatenate([prefix, alphabet.encode(e["secret"])]), kind="canary",
                       canary=e["id"])]
        cand = samples.get(e["id"])
        if cand is not None:
            recs += [Record(f"{e['id']}#cand{j}", np.concatenate([prefix, c]), kind="canary-candidate",
                            canary=e["id"]) for j, c in enumerate(cand)]
        w.add(recs)
        layout.append((row, len(recs) - 1))
        row += len(recs)
    w.finalize()
    return layout


def _neighbour_store(path: Path, seqs: list[np.ndarray], n: int, rate: float, seed: int) -> None:
    w = SequenceStoreWriter(path, provenance={"purpose": "neighbourhood attack", "seed": seed, "rate": rate})
    recs = []
    for i, s in enumerate(seqs):
        nb = MIA.point_mutation_neighbours(s, n, rate, seed + i)
        recs += [Record(f"n{i}.{j}", nb[j]) for j in range(n)]
        if len(recs) >= 8192:
            w.add(recs)
            recs = []
    w.add(recs)
    w.finalize()


def _read_shadows(path: Path, store: SequenceStore) -> tuple[list[Path], np.ndarray]:
    meta_file = path / "shadows.json"
    if not meta_file.exists():
        raise ConfigError(f"{path} is not a shadow-model folder (no shadows.json; make one with glmjax train-shadows)")
    try:
        meta = json.loads(meta_file.read_text())
        inc = np.load(path / "inclusion.npy", allow_pickle=False)
    except (ValueError, OSError, UnicodeDecodeError) as e:  # JSON errors are ValueErrors; a pickled .npy too
        raise ConfigError(f"{path} is not a readable shadow-model folder ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else 'unreadable'}); train the shadows again") from None
    if not isinstance(meta, dict) or "row_ids" not in meta or "num_models" not in meta:
        raise ConfigError(f"{meta_file} lacks row_ids / num_models; train the shadows again")
    if inc.dtype != bool or inc.ndim != 2 or inc.shape != (int(meta["num_models"]), len(meta["row_ids"])):
        raise ConfigError(f"{path / 'inclusion.npy'} is not a [{meta['num_models']}, {len(meta['row_ids'])}] "
                          f"boolean matrix (got {inc.dtype} {list(inc.shape)}); train the shadows again")
    ids = np.asarray(store.ids)
    if list(ids) != list(meta["row_ids"]):
        raise ConfigError(f"the shadow models in {path} were trained on another store than {store.path} "
                          "(row ids differ); train them on the audited store")
    dirs = [path / f"shadow_{m:03d}" for m in range(int(meta["num_models"]))]
    missing = [d for d in dirs if not d.exists()]
    if missing:
        raise ConfigError(f"shadow model folder {missing[0]} is missing")
    return dirs, inc


def run_audit(model: LoadedModel | str | Path, data: str | Path, out: str | Path,
              canaries: str | Path | dict | None = None, reference: LoadedModel | str | Path | None = None,
              shadows: str | Path | None = None, opts: AuditOptions | None = None,
              reveal: bool = False, log=print) -> AuditOutcome:
    """Run every audit vector that has inputs and write the report into ``out``.

    Args:
      model: the audited model (loaded, or a checkpoint folder).
      data: SequenceStore of the training candidates with a member/non-member split.
      out: report folder (created).
      canaries: the canary manifest (path or dict) written by ``glmjax data plant``.
      reference: a reference model (reference-ratio attack and perplexity ratio).
      shadows: a folder of ``glmjax train-shadows`` models trained on ``data`` (LiRA, RMIA).
      opts: :class:`AuditOptions`.
      reveal: put raw canary secrets into the report.
      log: where progress lines go (``print``; pass ``lambda *a: None`` to silence).

    The canary, candidate and neighbour sequences are scored from input stores in a private
    temporary folder (removed afterwards), never in ``out``: without ``reveal`` no file of the
    report folder holds a secret or a member sequence, so the folder can be shared.
    """
    import tempfile

    with tempfile.TemporaryDirectory(prefix="glmjax-audit-inputs-") as work:
        return _audit(model, data, out, canaries, reference, shadows, opts, reveal, log, Path(work))


def _audit(model, data, out, canaries, reference, shadows, opts, reveal, log, work: Path) -> AuditOutcome:
    opts = opts or AuditOptions()
    laps = _Laps()
    # every input is read before anything is written: a bad input leaves no output folder behind
    target = _load(model, opts)
    ref_model = _load(reference, opts) if reference is not None else None
    data = Path(data)
    store = SequenceStore(data)
    manifest = _manifest(canaries)
    shadow_models = _read_shadows(Path(shadows), store) if shadows is not None else None
    dcpdd_genome = None
    if opts.dcpdd and opts.dcpdd_reference is not None:
        from glmjax.audit.modelattacks import fasta_rows

        dcpdd_genome = fasta_rows(opts.dcpdd_reference)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sdir = out / "scores"
    sdir.mkdir(exist_ok=True)
    skipped: dict[str, str] = {}
    provenance = {"model": {"family": target.family, "source": str(target.source),
                            "fingerprint": target.fingerprint()},
                  "data": {"path": str(data), "provenance": store.provenance, "split": store.split_info()},
                  "seed": opts.seed}
    if manifest is not None:
        provenance["canaries"] = {"manifest_sha256": manifest.get("_sha256"), "n": len(manifest.get("canaries", []))}
    if ref_model is not None:
        provenance["reference"] = {"family": ref_model.family, "source": str(ref_model.source),
                                   "fingerprint": ref_model.fingerprint()}
    laps.lap("load")

    # ---------------------------------------------------------------- target scores on the store
    kinds = np.asarray(store.column("kind"))
    genome = np.flatnonzero(kinds != "canary")
    if store.has_split:
        member = store.member_mask()
    else:
        member = None
        skipped["mia"] = "the store has no member/non-member split (run glmjax data split)"
    reducer, dcpdd_info, reduced, seqs = None, None, {}, None
    if member is not None:
        seqs = store.take(genome) if len(genome) < len(store) else store.sequences()
    if member is not None and opts.dcpdd and member[genome].any() and not member[genome].all():
        reducer, dcpdd_info = _dcpdd_setup(target, seqs, len(store), genome, member[genome], opts, dcpdd_genome, log)
        laps.lap("dcpdd_reference")
    elif not opts.dcpdd:
        skipped["dcpdd"] = "turned off (--no-dcpdd)"
    log(f"scoring {len(store):,} sequences with the target model ({target.family})")
    tss = _score(target, data, sdir / "target.h5", opts, "scoring (target)", log, token_reducer=reducer,
                 reduced=reduced)
    names = ("sum_logp", "mean_logp", "n_tokens", "n_nucleotides",
             *[f"mink_{p}" for p in opts.mink_percents], *[f"minkpp_{p}" for p in opts.mink_percents])
    tcols = _cols(tss, genome, names)
    lppl = log_perplexity(tcols["sum_logp"], tcols["n_tokens"])
    result = AuditResult(mode=tss.mode, mode_params=dict(tss.mode_params), provenance=provenance,
                         n_bootstrap=opts.n_bootstrap, detection_fpr=opts.detection_fpr, seed=opts.seed)
    if member is not None:
        labels = member[genome]
        if labels.all() or not labels.any():
            skipped["mia"] = "the split leaves no member or no non-member genome window"
            member = None
        else:
            result.member_log_ppl, result.nonmember_log_ppl = lppl[labels], lppl[~labels]
    laps.lap("scoring")

    # ---------------------------------------------------------------- reference model
    rcols = None
    if ref_model is not None:
        log(f"scoring with the reference model ({ref_model.family})")
        rss = _score(ref_model, data, sdir / "reference.h5", opts, "scoring (reference)", log)
        rcols = _cols(rss, genome, ("sum_logp", "mean_logp", "n_tokens"))
        result.reference_mode, result.reference_mode_params = rss.mode, dict(rss.mode_params)
        if member is not None:
            rl = log_perplexity(rcols["sum_logp"], rcols["n_tokens"])
            result.reference_member_log_ppl, result.reference_nonmember_log_ppl = rl[labels], rl[~labels]
        laps.lap("reference")

    # ---------------------------------------------------------------- membership inference
    sample_scores: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # attack -> (positions, scores)
    if member is not None:
        log("membership-inference attacks")
        flat = np.concatenate(seqs) if seqs else np.zeros(0, np.uint8)
        offs = np.concatenate([[0], np.cumsum([len(s) for s in seqs])]).astype(np.int64)
        kw: dict[str, Any] = {"zlib_code_bits": MIA.zlib_bits(flat, offs),
                              "kmer_entropy": MIA.kmer_entropy_bits(flat, offs, k=opts.kmer_k),
                              "kmer_k": opts.kmer_k, "mink_percents": opts.mink_percents}
        if rcols is not None:
            kw["reference"] = rcols
        else:
            skipped["reference"] = "no --reference model given"
        scores = MIA.attack_scores(tcols, **kw)
        if "dcpdd" in reduced:
            scores["dcpdd"] = np.asarray(reduced["dcpdd"], np.float64)[genome]
            result.attack_info["dcpdd"] = dcpdd_info
        laps.lap("mia")
        if opts.neighbours > 0:
            pick = _sample(labels, opts.neighbour_rows, opts.seed, 0xE1)
            log(f"neighbourhood attack: {opts.neighbours} neighbours x {len(pick):,} sequences")
            _neighbour_store(work / "neighbours_input.h5", [seqs[i] for i in pick], opts.neighbours,
                             opts.neighbour_rate, opts.seed)
            nss = _score(target, work / "neighbours_input.h5", sdir / "neighbours.h5", opts,
                         "scoring (neighbours)", log)
            nb = np.asarray(nss.column("sum_logp")).reshape(len(pick), opts.neighbours)
            sample_scores["neighbourhood"] = (pick, MIA.neighbourhood_score(tcols["sum_logp"][pick], nb))
            laps.lap("neighbourhood")
        else:
            skipped["neighbourhood"] = "turned off (--neighbours 0)"
        if _recall(target, seqs, labels, tcols, opts, sample_scores, result, skipped, log):
            laps.lap("recall")
        if _gradnorm(target, seqs, labels, genome, opts, sample_scores, result, skipped, log):
            laps.lap("gradnorm")
        if shadow_models is not None:
            dirs, inc = shadow_models
            log(f"scoring with {len(dirs)} shadow models")
            sh = np.stack([np.asarray(_score(_load(d, opts), data, sdir / f"shadow_{i:03d}.h5", opts,
                                             f"scoring (shadow {i + 1}/{len(dirs)})", log)
                                      .column("mean_logp"))[genome] for i, d in enumerate(dirs)])
            inc = inc[:, genome]
            scores.update(MIA.attack_scores(tcols, lira_inputs=(sh, inc), mink_percents=(),
                                            lira_options={"variance": opts.lira_variance,
                                                          "centre": opts.lira_centre}))
            zrows = np.flatnonzero(~labels)
            scores["rmia"] = MIA.rmia(tcols["mean_logp"], sh, tcols["mean_logp"][zrows], sh[:, zrows],
                                      trim=opts.rmia_trim)
            laps.lap("shadows")
        else:
            skipped["lira"] = skipped["rmia"] = "no --shadows folder given"
        # the neighbourhood attack is evaluated on its sampled rows only; every other attack on all rows
        result.mia_labels = labels
        result.mia_scores = scores

    # ---------------------------------------------------------------- canaries
    canary_results: list[CanaryResult] = []
    extraction_info = None
    exposure_plan: list[dict] = []
    if manifest is None:
        skipped["extraction"] = skipped["exposure"] = "no canary manifest given (--canaries)"
    else:
        from glmjax.audit import candidates as EN
        from glmjax.audit import extraction as EX

        entries = [e for e in manifest["canaries"] if e.get("role", "canary") in ("canary", "control")]
        ks = {len(e["secret"]) for e in entries}
        exposure_plan = _plan_exposure(target, entries, opts, log)
        exact_ks = {p["k"] for p in exposure_plan if p["method"] == "exact"}
        laps.lap("exposure_plan")
        sampled = {e["id"]: _random_secrets(len(e["secret"]), opts.exposure_samples, opts.seed, i)
                   for i, e in enumerate(entries) if len(e["secret"]) not in exact_ks}
        log(f"scoring {len(entries)} canaries" + (f" and {sum(len(v) for v in sampled.values()):,} sampled "
                                                   "candidates" if sampled else ""))
        layout = _canary_store(work / "canaries_input.h5", entries, sampled)
        css = _score(target, work / "canaries_input.h5", sdir / "canaries.h5", opts, "scoring (canaries)", log)
        c_lppl = log_perplexity(np.asarray(css.column("sum_logp")), np.asarray(css.column("n_tokens")))
        laps.lap("canary_scoring")

        methods = opts.extraction or (("greedy", "beam") if target.objective == "causal" else ("fill",))
        log(f"extraction ({', '.join(methods)}) of {len(entries)} canaries")
        ext_reports = {m: EX.extract(target, entries, method=m, beam_width=opts.beam_width) for m in methods}
        extracted = {e["id"]: any(r.exact for rep in ext_reports.values() for r in rep.records
                                  if r.canary_id == e["id"]) for e in entries}
        extraction_info = {m: rep.to_dict(reveal=reveal) for m, rep in ext_reports.items()}
        laps.lap("extraction")

        exact_entries = [e for e in entries if len(e["secret"]) in exact_ks]
        exact: dict[str, Any] = {}
        if exact_entries:
            n_cand = sum(4 ** len(e["secret"]) for e in exact_entries)
            log(f"exposure: exact enumeration of {n_cand:,} candidates for {len(exact_entries)} canaries")
            with progress("exposure (exact)", total=n_cand, unit="cand", log=log) as bar:
                def on_progress(n: int) -> None:
                    bar.describe(f"exposure (exact, {n}/{len(exact_entries)} canaries)")

                results = EN.exact_exposures(target, exact_entries, on_progress=on_progress,
                                             on_candidates=bar.advance)
            exact = {r.canary_id: r for r in results}
            for row in exposure_plan:
                if row["method"] == "exact":
                    row["seconds"] = round(sum(r.seconds for r in results if r.k == row["k"]), 3)
        n_sampled = len(entries) - len(exact_entries)
        if n_sampled:
            log(f"exposure: sampled estimate ({opts.exposure_samples:,} candidates each) for {n_sampled} canaries")
        for e, (row, nsamp) in zip(entries, layout, strict=True):
            k = len(e["secret"])
            if e["id"] in exact:
                ex = exact[e["id"]]
                exposure, ci, method = float(ex.exposure), (float(ex.exposure), float(ex.exposure)), "exact"
                tf_exposure = ex.exposure_tf_privacy
            else:
                tf_exposure = None
                est = estimate_exposure(float(c_lppl[row]), c_lppl[row + 1:row + 1 + nsamp], n_candidates=4 ** k,
                                        seed=opts.seed)
                exposure, ci, method = float(est.exposure), (float(est.ci[0]), float(est.ci[1])), est.method
            canary_results.append(CanaryResult(
                id=e["id"], repetitions=int(e.get("repetitions", 0)), exposure=exposure, exposure_ci=ci,
                extracted=bool(extracted[e["id"]]), n_candidates=4 ** k,
                exposure_method=method, secret=e["secret"], log_perplexity=float(c_lppl[row]),
                exposure_tf_privacy=tf_exposure))
        result.canaries = canary_results
        laps.lap("exposure")
        # the canaries' reference detection needs only the canaries (controls are their null)
        if ref_model is not None:
            rcs = _score(ref_model, work / "canaries_input.h5", sdir / "canaries_reference.h5", opts,
                         "scoring (canaries, reference)", log)
            r_lppl = log_perplexity(np.asarray(rcs.column("sum_logp")), np.asarray(rcs.column("n_tokens")))
            result.reference_canary_log_ppl = np.array([r_lppl[row] for row, _ in layout])
            laps.lap("reference")
        # one-run audit: canaries included with probability 1/2 vs their held-out twins
        one = [(i, e) for i, e in enumerate(entries) if e.get("role") == "canary" and "included" in e]
        if one and any(not e["included"] for _, e in one) and any(e["included"] for _, e in one):
            result.one_run = (np.array([-c_lppl[layout[i][0]] for i, _ in one]),
                              np.array([bool(e["included"]) for _, e in one]))
        provenance["canaries"]["secret_lengths"] = sorted(ks)

    result.config = {"options": {k: _json_option(v) for k, v in asdict(opts).items()},
                     "skipped": skipped, "data": str(data), "model": str(target.source),
                     "reference": None if ref_model is None else str(ref_model.source),
                     "shadows": None if shadows is None else str(shadows)}
    log("statistics and report")
    for name, (pick, sc) in sample_scores.items():  # evaluated on sampled rows; they count towards the risk
        result.mia_sample_scores[name] = (labels[pick], sc)
    if result.mia_scores:
        from glmjax.audit.scoretable import write_membership_scores

        write_membership_scores(sdir / "membership.h5", genome, store.column("id")[genome], labels,
                                result.mia_scores, sample_scores or None,
                                provenance={"model": provenance["model"], "data": str(data)})
    result.extraction_attacks = extraction_info
    result.exposure_plan = exposure_plan if manifest is not None else None
    result.skipped = skipped
    report = evaluate(result, reveal=reveal, log=log)
    laps.lap("statistics")
    # writing the report itself comes after its own timings: the one step they cannot include
    report["timings"], report["seconds"] = laps.rounded()
    paths = write_report(report, out)
    store.close()
    return AuditOutcome(report, paths, time.perf_counter() - laps.t0)


def _recall(target, seqs, labels, tcols, opts, sample_scores, result, skipped, log) -> bool:
    """ReCaLL on up to ``recall_rows`` sequences per class (see :mod:`glmjax.audit.modelattacks`);
    False (and the reason in ``skipped``) when it does not run."""
    from glmjax.audit import modelattacks as MA

    if opts.recall_shots <= 0 or opts.recall_rows <= 0:
        skipped["recall"] = "turned off (--recall-shots 0)"
        return False
    why = MA.recall_support(target)
    nonmem = np.flatnonzero(~labels)
    if why is None and len(nonmem) <= opts.recall_shots:
        why = f"needs more than {opts.recall_shots} non-member windows for the prefix"
    if why is not None:
        skipped["recall"] = why
        return False
    # the prefix comes first: its sequences are not evaluated
    pick0 = _sample(labels, opts.recall_rows, opts.seed, 0x9EC)
    longest = max(len(seqs[i]) for i in pick0)
    context = target.config.max_len
    budget = (sum(len(seqs[i]) for i in nonmem) if context is None
              else int(context) - target.tokenizer.max_tokens(longest))
    need = min(RECALL_MIN_PREFIX, longest)
    if budget < need:
        skipped["recall"] = (f"the model's context ({context} tokens) leaves {max(budget, 0)} nt for a prefix "
                             f"before a {longest:,} nt sequence; ReCaLL needs at least {need} (shorter windows "
                             "or a longer-context model)")
        return False
    prefix, used = MA.recall_prefix([seqs[i] for i in nonmem], opts.recall_shots, budget, opts.seed)
    pick = _sample(labels, opts.recall_rows, opts.seed, 0x9EC, exclude=nonmem[used])
    log(f"ReCaLL: {len(pick):,} sequences conditioned on a {len(prefix):,} nt non-member prefix")
    from glmjax.engine.runner import score_sequences

    # the prefix alone, then the prefix before each evaluated sequence
    cols = score_sequences(target, [prefix] + [np.concatenate([prefix, seqs[i]]) for i in pick], seed=opts.seed,
                           batch_tokens=opts.batch_tokens, label="scoring (ReCaLL)", log=log)
    sp, n_px = np.asarray(cols["sum_logp"]), np.asarray(cols["n_tokens"])
    cond = MA.conditional_mean_logp(sp[1:], n_px[1:], float(sp[0]), int(n_px[0]))
    sample_scores["recall"] = (pick, MA.recall_ratio(cond, tcols["mean_logp"][pick]))
    result.attack_info["recall"] = {"shots": opts.recall_shots, "prefix_nucleotides": int(len(prefix)),
                                    "rows_per_class": opts.recall_rows}
    return True


def _gradnorm(target, seqs, labels, genome, opts, sample_scores, result, skipped, log) -> bool:
    """The gradient-norm attack on up to ``gradnorm_rows`` sequences per class (False when it does
    not run)."""
    from glmjax.audit import modelattacks as MA

    rows = opts.gradnorm_rows
    if rows is None:
        if target.num_params() > GRADNORM_AUTO_MAX_PARAMS:
            skipped["gradnorm"] = (f"{target.num_params() / 1e9:.1f} B parameters: one gradient per sequence is "
                                   "slow at this size; ask for it with --gradnorm-rows N")
            return False
        rows = GRADNORM_AUTO_ROWS
    if rows <= 0:
        skipped["gradnorm"] = "turned off (--gradnorm-rows 0)"
        return False
    why = MA.gradnorm_support(target)
    if why is not None:
        skipped["gradnorm"] = why
        return False
    pick = _sample(labels, rows, opts.seed, 0x96)
    log(f"gradient-norm attack: per-sequence gradients of {len(pick):,} sequences")
    with progress("gradient norm", total=len(pick), unit="seq", log=log) as bar:
        s = MA.gradnorm_scores(target, [seqs[i] for i in pick], p=opts.gradnorm_p, seed=opts.seed,
                               rows=genome[pick], on_rows=bar.advance)
    sample_scores["gradnorm"] = (pick, s)
    result.attack_info["gradnorm"] = {"p": _json_option(opts.gradnorm_p), "rows_per_class": rows,
                                      "loss": "next-token" if target.objective == "causal"
                                      else "masked-LM, 15 % of the nucleotide tokens masked"}
    return True


def _json_option(v: Any) -> Any:
    """An option as JSON can hold it: tuples as lists, an infinite budget as ``"inf"``."""
    if isinstance(v, tuple):
        return list(v)
    if isinstance(v, float) and not np.isfinite(v):
        return str(v)
    return v


def _plan_exposure(model: LoadedModel, entries: list[dict], opts: AuditOptions, log) -> list[dict]:
    """Exact or sampled exposure per secret length, cheapest first: exact when ``k <=
    exact_k_max`` and the estimated time, added to that of the lengths already chosen, fits
    ``exact_budget_s``. One row per length: ``k``, ``canaries``, ``candidates``,
    ``estimated_seconds`` (null when not estimated), ``method`` and ``reason``."""
    from glmjax.audit import candidates as EN

    by_k: dict[int, list[dict]] = {}
    for e in entries:
        by_k.setdefault(len(e["secret"]), []).append(e)
    plan = []
    spent = 0.0
    for k, group in sorted(by_k.items()):
        row: dict[str, Any] = {"k": k, "canaries": len(group), "candidates": len(group) * 4 ** k,
                               "estimated_seconds": None}
        if opts.exact_k_max == 0:
            row.update(method="sampled", reason="exact enumeration is off (--exact-k-max 0)")
        elif k > opts.exact_k_max:
            row.update(method="sampled", reason=f"secrets longer than --exact-k-max {opts.exact_k_max}")
        else:
            est = EN.estimate_exposure_seconds(model, [e["prefix"] for e in group], k)
            row["estimated_seconds"] = round(est, 3)
            if spent + est <= opts.exact_budget_s:
                spent += est
                row.update(method="exact", reason=f"estimated time within the {opts.exact_budget_s:g} s budget")
            else:
                row.update(method="sampled", reason=f"estimated {est:,.0f} s exceeds the {opts.exact_budget_s:g} s "
                                                    "budget for exact enumeration (--exact-budget)")
        est_text = "" if row["estimated_seconds"] is None else f", exact estimated {row['estimated_seconds']:,.1f} s"
        log(f"exposure plan, k = {k}: {len(group)} canaries x 4^{k} = {row['candidates']:,} candidates"
            f"{est_text} -> {row['method']} ({row['reason']})")
        plan.append(row)
    return plan


def _random_secrets(k: int, n: int, seed: int, i: int) -> np.ndarray:
    return np.random.default_rng([seed, i, 0xC4]).integers(0, 4, size=(n, k), dtype=np.uint8)


def _manifest(canaries: str | Path | dict | None) -> dict | None:
    if canaries is None:
        return None
    if isinstance(canaries, dict):
        return canaries
    from glmjax.data.canaries import load_manifest

    m = load_manifest(canaries)
    m["_sha256"] = hashlib.sha256(Path(canaries).read_bytes()).hexdigest()
    if not m.get("canaries"):
        raise StoreError(f"{canaries} lists no canaries")
    if not m.get("planting"):
        raise ConfigError(f"{canaries} is a manifest of canaries that were never planted (from `glmjax data "
                          "canaries`); pass the planted manifest `glmjax data plant` wrote (--manifest-out, by "
                          "default PLANTED.canaries.json next to the planted store)")
    return m


def headline(report: dict) -> str:
    """One line: the worst-case risk, its band and the vector that set it."""
    r = report["risk"]
    vec = r.get("worst_vector") or "?"
    src = r.get("sources", {}).get(vec)
    return f"memorization risk {r['worst_case']:.3f} ({r['band']}), set by {vec}" + (f" ({src})" if src else "")


def timings_line(report: dict) -> str:
    """One line: seconds per stage and the total."""
    stages = report.get("timings", {})
    parts = [f"{name.replace('_', ' ')} {sec:,.1f} s" for name, sec in stages.items()]
    return "time: " + " · ".join(parts) + f" = {report.get('seconds', sum(stages.values())):,.1f} s"
