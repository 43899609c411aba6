"""Reproduce the experiment grid of "Quantifying Memorization and Privacy Risks in Genomic Language
Models" (Nemecek, Li, Jiang, Vaidya, Ayday; arXiv 2603.08913) with glmjax.

Grid: dataset kind x architecture class x fine-tuning mode, canaries planted at several repetition
counts in every cell:

* datasets: ``synthetic`` (zero-order: i.i.d. bases, GC 0.5), ``prokaryote`` (E. coli K-12
  MG1655), ``eukaryote`` (S. cerevisiae chrI + chrII, or any FASTA such as the human chr20 slice),
  ``multispecies`` (every FASTA of a folder: bacteria, archaea, organelles, viruses, a fly slice);
* architecture classes: ``nt`` (masked-LM transformer), ``hyenadna`` (long convolution),
  ``caduceus`` (state space, masked), ``llama`` (causal transformer); ``--families`` adds
  ``evo1`` / ``evo2`` (StripedHyena 1 / 2: long convolutions striped with attention, the Evo
  models' architecture) and the other registered families;
* fine-tuning: ``full`` (every parameter) and ``lora`` (low-rank adapters, base frozen).

Per dataset the sampled windows are split three ways (seeded): a *public* part, on which one base
model per family is pretrained (it stands for the public pretrained checkpoint and serves as the
reference model of the reference-ratio attack), and a *private cohort*, into which the canaries
are planted (standalone copies, repetition schedule) and which is split 50/50 into members and
non-members. The base is fine-tuned on the members (full or LoRA) and every fine-tuned model is
audited with :func:`glmjax.audit.pipeline.run_audit`: perplexity detection, canary extraction,
exposure (exact enumeration of all 4^k secrets) and membership inference; the risk score is the
worst case over the vectors.

Usage::

    python scripts/reproduce_paper.py --small --out repro-small      # CPU, minutes
    python scripts/reproduce_paper.py --out repro-full               # one GPU, bf16; resumable
    python scripts/reproduce_paper.py --out repro-full --budget 540  # stop before 9 min; rerun resumes
    python scripts/reproduce_paper.py --out repro-full --report-only # rebuild tables and figures
    # several GPUs: one dataset per GPU into its own folder, then one set of tables and figures
    CUDA_VISIBLE_DEVICES=0 python scripts/reproduce_paper.py --out r-syn --datasets synthetic &
    CUDA_VISIBLE_DEVICES=1 python scripts/reproduce_paper.py --out r-pro --datasets prokaryote & ...
    python scripts/reproduce_paper.py --out repro-full --merge r-syn r-pro r-euk r-mul

Output (``--out``)::

    results.json               every cell: risk vectors, MIA AUCs, per-repetition vectors, timings
    cells/<cell>.json          the same per cell (written atomically when the cell finishes)
    tables/vectors_by_repetition.{csv,md}   exposure, extraction, detection TPR, MIA AUC per repetition
    tables/risk_by_model.{csv,md}           risk vectors, worst case and MIA AUCs per model
    figures/*.png              every vector vs repetition; the risk score per model
    summary.md                 both tables and the figures on one page
    data/, models/, audits/    stores, manifests, trained models, per-model audit reports

A finished cell (its entry in ``results.json``) is skipped when the command is run again with the
same ``--out``, so a run cut off by a time limit continues where it stopped. See
docs/reproduction.md for what is run and how to read the figures.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

import numpy as np  # noqa: E402

import glmjax  # noqa: E402
from glmjax.errors import ConfigError, GlmjaxError, InputFileError  # noqa: E402

SCHEMA = "glmjax.PaperReproduction"
SCHEMA_VERSION = 1
DATASETS = ("synthetic", "prokaryote", "eukaryote", "multispecies")
FAMILIES = ("nt", "hyenadna", "caduceus", "llama")
FINETUNES = ("full", "lora")
FASTA_SUFFIXES = (".fa", ".fasta", ".fna", ".fa.gz", ".fasta.gz", ".fna.gz")
DEFAULT_FILES = {
    "prokaryote": "prokaryote/ecoli_k12_mg1655.fa.gz",
    "eukaryote": "eukaryote/yeast_chrI_chrII.fa.gz",
    "multispecies": "multispecies",
}
# The per-repetition vectors of the tables and figures (column name, axis label).
REP_VECTORS = (
    ("exposure_mean", "mean exposure (bits)"),
    ("extraction_rate", "extraction rate"),
    ("detection_tpr", "detection TPR (1% FPR)"),
    ("mia_auc", "canary MIA AUC (vs controls)"),
)


# ------------------------------------------------------------------------------------------------
# Profiles
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Profile:
    """Sizes of a reproduction run (every field is recorded in results.json).

    ``models`` maps a family to ``(preset or "", field overrides)`` applied to its config;
    ``context`` is set from the window length by :func:`model_config`.
    """

    name: str
    datasets: tuple[str, ...]
    families: tuple[str, ...]
    finetunes: tuple[str, ...] = FINETUNES
    schedule: tuple[int, ...] = (1, 8, 64)
    window: int = 64
    public_windows: int = 256
    cohort_windows: int = 256
    member_fraction: float = 0.5
    canaries_per_repetition: int = 4
    controls: int = 8
    prefix_len: int = 12
    secret_len: int = 7
    pretrain_epochs: int = 2
    epochs: int = 8
    lora_epochs: int = 8
    lora_rank: int = 8
    batch_size: int = 32
    lr: float = 5e-3
    lora_lr: float = 1e-2
    warmup_steps: int = 10
    dtype: str = "float32"
    pll: str | None = None  # masked families' PLL mode in the audit (None: exact)
    # exposure: "exact" (all 4^k candidate secrets: trie walk for causal families, PLL of the
    # secret for masked ones), "sampled" (skew-normal extrapolation from exposure_samples random
    # candidates), or "exact-causal" (exact for causal families, sampled for masked ones, whose
    # enumeration costs minutes per canary on a CPU)
    exposure: str = "exact"
    exposure_samples: int = 4096
    neighbours: int = 4
    neighbour_rows: int = 128
    n_bootstrap: int = 50
    beam_width: int = 4
    extraction: tuple[str, ...] = ()  # extraction attacks (default: greedy + beam, or fill for masked)
    models: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["models"] = {k: [p, dict(o)] for k, (p, o) in self.models.items()}
        return json.loads(json.dumps(d))

    def fingerprint(self) -> str:
        """Hash of everything that changes a cell's result (the grid selection excluded)."""
        d = self.to_dict()
        for k in ("name", "datasets", "families", "finetunes"):
            d.pop(k)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


_SMALL_MODELS = {
    "llama": ("", {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                   "num_attention_heads": 4, "num_key_value_heads": 2}),
    "hyenadna": ("", {"d_model": 64, "n_layer": 2, "d_inner": 256, "filter_order": 32}),
    "nt": ("tiny", {"hidden_size": 64, "intermediate_size": 128, "num_heads": 4}),
    "caduceus": ("", {"d_model": 32, "n_layer": 2, "d_state": 8}),
    "dnabert2": ("", {}),
    "gpt2": ("", {}),
    "mamba": ("", {}),
    "evo1": ("tiny", {"hidden_size": 64, "inner_mlp_size": 128, "layers": ("modal", "attn")}),
    "evo2": ("tiny", {"hidden_size": 64, "inner_mlp_size": 128, "layers": ("hcs", "hcm", "hcl", "attn")}),
}

PROFILES: dict[str, Profile] = {
    # The test profile: 2 datasets x the causal transformer x 2 modes, two repetition counts.
    "tiny": Profile(
        name="tiny", datasets=("synthetic", "prokaryote"), families=("llama",), schedule=(1, 32),
        window=48, public_windows=96, cohort_windows=96, canaries_per_repetition=2, controls=2,
        prefix_len=12, secret_len=6, pretrain_epochs=1, epochs=6, lora_epochs=6, batch_size=16, neighbours=0,
        n_bootstrap=0, extraction=("greedy",), models=_SMALL_MODELS),
    # CPU, minutes: 2 datasets x the 4 architecture classes x 2 modes, repetitions 1, 8, 64.
    "small": Profile(
        name="small", datasets=("synthetic", "prokaryote"), families=FAMILIES, schedule=(1, 8, 64),
        window=64, public_windows=256, cohort_windows=256, canaries_per_repetition=3, controls=4,
        prefix_len=12, secret_len=7, pretrain_epochs=2, epochs=8, lora_epochs=8, neighbours=0,
        n_bootstrap=30, beam_width=2, pll="strided:8", exposure="exact-causal", exposure_samples=64,
        models=_SMALL_MODELS),
    # One GPU, bf16: the whole grid, repetitions 1..64, bigger windows and models.
    "full": Profile(
        name="full", datasets=DATASETS, families=FAMILIES, schedule=(1, 2, 4, 8, 16, 32, 64),
        window=256, public_windows=1536, cohort_windows=2048, canaries_per_repetition=4, controls=16,
        prefix_len=24, secret_len=16, exposure="sampled", exposure_samples=2048, pretrain_epochs=3, epochs=10,
        lora_epochs=10, lora_rank=16,
        batch_size=64, lr=2e-3, lora_lr=5e-3, warmup_steps=30, dtype="bfloat16", pll="strided:16",
        neighbours=8, neighbour_rows=512, n_bootstrap=200, beam_width=8,
        models={
            "llama": ("", {"hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 4,
                           "num_attention_heads": 8, "num_key_value_heads": 4}),
            "hyenadna": ("tiny-1k", {}),
            "nt": ("tiny", {"hidden_size": 256, "intermediate_size": 1024, "num_layers": 4, "num_heads": 8}),
            "caduceus": ("ph-1k", {}),
            "dnabert2": ("", {"hidden_size": 256, "num_layers": 4, "num_heads": 8, "intermediate_size": 1024}),
            "gpt2": ("", {}),
            "mamba": ("", {}),
            # StripedHyena 1 / 2 blocks at the Llama model's width and depth
            "evo1": ("tiny", {"hidden_size": 256, "num_attention_heads": 8, "inner_mlp_size": 768,
                              "layers": ("modal", "modal", "attn", "modal")}),
            "evo2": ("tiny", {"hidden_size": 256, "num_attention_heads": 8, "inner_mlp_size": 768,
                              "layers": ("hcs", "hcm", "hcl", "attn")}),
        }),
}


def model_config(family: str, prof: Profile) -> Any:
    """The config of ``family`` for a profile: preset (or ``tiny()``), overrides, a context that
    holds a window plus special tokens, and the profile's compute dtype."""
    from glmjax import models

    spec = models.get_family(family)
    preset, overrides = prof.models.get(family, ("", {}))
    cls = spec.config_cls
    cfg = cls.preset(preset) if preset and hasattr(cls, "preset") else cls.tiny()
    names = {f.name for f in dataclasses.fields(cfg)}
    bad = sorted(set(overrides) - names)
    if bad:
        raise ConfigError(f"profile {prof.name}: {family} config has no field {bad[0]!r}")
    cfg = replace(cfg, **overrides)
    context = _round_up(prof.window + 8, 64)
    for name in ("max_position_embeddings", "max_seq_len", "max_len"):
        if name in names and getattr(cfg, name) < context:
            cfg = replace(cfg, **{name: context})
    if "dtype" in names:
        cfg = replace(cfg, dtype=prof.dtype)
    return cfg


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


# ------------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------------
def default_data_root() -> Path | None:
    """``shared/data`` next to the repository, else ``../shared/data``; None when neither exists."""
    for cand in (ROOT / "shared" / "data", ROOT.parent / "shared" / "data"):
        if cand.is_dir():
            return cand
    return None


def _fasta_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.name.lower().endswith(FASTA_SUFFIXES))
        if not files:
            raise InputFileError(f"{path} holds no FASTA file ({', '.join(FASTA_SUFFIXES)})")
        return files
    if not path.exists():
        raise InputFileError(f"{path}: no such file")
    return [path]


def resolve_sources(datasets: tuple[str, ...], data_root: str | None,
                    overrides: dict[str, list[str] | None]) -> dict[str, list[Path]]:
    """FASTA files of every genome dataset (synthetic needs none), checked before any work.

    ``overrides`` maps a dataset to user paths (files or folders); the others come from the data
    root (``--data-root``, else :func:`default_data_root`).
    """
    out: dict[str, list[Path]] = {}
    root = Path(data_root) if data_root else default_data_root()
    if data_root and not Path(data_root).is_dir():
        raise InputFileError(f"--data-root {data_root} is not a folder")
    for ds in datasets:
        if ds == "synthetic":
            out[ds] = []
            continue
        given = overrides.get(ds)
        if given:
            files = [f for p in given for f in _fasta_files(Path(p))]
        else:
            if root is None:
                raise InputFileError(
                    f"the {ds} dataset needs genome FASTA files but no data folder was found (looked for "
                    f"{ROOT / 'shared' / 'data'} and {ROOT.parent / 'shared' / 'data'}); pass --data-root DIR "
                    f"or --{ds} PATH, or leave {ds} out with --datasets")
            path = root / DEFAULT_FILES[ds]
            if not path.exists():
                raise InputFileError(f"the {ds} dataset expects {path} (under the data root {root}); pass "
                                     f"--{ds} PATH or another --data-root")
            files = _fasta_files(path)
        out[ds] = files
    return out


def sample_windows(files: list[Path], length: int, n: int, seed: int, max_n_fraction: float = 0.1) -> list:
    """``n`` non-overlapping genome windows of ``length`` nt, drawn without replacement from the
    grid of window starts 0, length, 2*length, ... of every record, balanced across files (each
    file is one species of a multi-species set), windows with more than ``max_n_fraction`` N
    skipped. Returns :class:`glmjax.data.store.Record` s (group = file name)."""
    from glmjax import alphabet
    from glmjax.data.fasta import read_fasta
    from glmjax.data.store import Record

    pools = []
    for f in files:
        recs = read_fasta(f)
        starts, names, blocks = [], [], []
        for name, codes in recs:
            nw = codes.size // length
            if nw == 0:
                continue
            block = codes[: nw * length].reshape(nw, length)
            ok = np.count_nonzero(block == alphabet.N, axis=1) <= max_n_fraction * length
            idx = np.flatnonzero(ok)
            blocks.append(block[idx])
            starts.append(idx * length)
            names += [name] * idx.size
        if blocks:
            pools.append((f, np.concatenate(blocks), np.concatenate(starts), names))
    avail = np.array([p[1].shape[0] for p in pools], np.int64)
    if avail.sum() < n:
        raise ConfigError(f"{', '.join(str(f) for f in files)} give only {int(avail.sum())} windows of {length} nt "
                          f"but the profile needs {n}; use shorter windows, fewer windows or more data")
    # balanced quota: fill files in order of size, small ones give all they have
    quota = np.zeros(len(pools), np.int64)
    left = n
    for k, i in enumerate(np.argsort(avail, kind="stable")):
        share = left // (len(pools) - k)
        quota[i] = min(avail[i], share)
        left -= quota[i]
    out = []
    for i, (f, block, starts, names) in enumerate(pools):
        pick = np.sort(np.random.default_rng([seed, i, 0x57]).choice(block.shape[0], int(quota[i]), replace=False))
        group = Path(f).name.split(".")[0]
        for j in pick:
            s = int(starts[j])
            out.append(Record(f"{names[j]}:{s + 1}-{s + length}(+)", block[j].copy(), source=names[j], start=s,
                              strand=1, kind="genome", group=group))
    return out


def _write_records(path: Path, records: list, provenance: dict) -> None:
    from glmjax.data.store import SequenceStoreWriter

    with SequenceStoreWriter(path, provenance=provenance) as w:
        for lo in range(0, len(records), 4096):
            w.add(records[lo:lo + 4096])


def prepare_dataset(name: str, files: list[Path], prof: Profile, seed: int, out: Path, log) -> dict:
    """Windows -> public / cohort stores -> canaries (screened against all windows) -> planted
    cohort with a member split. Idempotent: a finished folder (``prepared.json``) is reused."""
    from glmjax.data.canaries import CanaryParams, build_manifest, plant, write_manifest
    from glmjax.data.splits import split_store
    from glmjax.data.store import SequenceStore
    from glmjax.data.synthetic import synth_to_store

    done = out / "prepared.json"
    files_used = [str(f) for f in files]
    if done.exists():
        info = json.loads(done.read_text())
        if info.get("files") != files_used:
            raise ConfigError(f"{out} was prepared from other files ({', '.join(info.get('files') or ['none'])}); "
                              "use another --out or pass --overwrite")
        return info
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    t0 = time.perf_counter()
    n = prof.public_windows + prof.cohort_windows
    dseed = seed * 7919 + DATASETS.index(name) if name in DATASETS else seed
    if name == "synthetic":
        gen = synth_to_store(out / "windows.h5", n, prof.window, dseed, gc=0.5)
    else:
        recs = sample_windows(files, prof.window, n, dseed)
        gen = {"kind": "genome windows", "files": [str(f) for f in files], "sequences": len(recs),
               "length": prof.window}
        _write_records(out / "windows.h5", recs, {"dataset": name, "seed": dseed, **gen})
    with SequenceStore(out / "windows.h5") as st:
        recs = st.records()
    order = np.random.default_rng([dseed, 0xB1]).permutation(len(recs))
    public = [recs[i] for i in np.sort(order[:prof.public_windows])]
    cohort = [recs[i] for i in np.sort(order[prof.public_windows:])]
    _write_records(out / "public.h5", public, {"dataset": name, "part": "public", "seed": dseed})
    _write_records(out / "cohort.h5", cohort, {"dataset": name, "part": "cohort", "seed": dseed})
    params = CanaryParams(num=prof.canaries_per_repetition * len(prof.schedule), prefix_len=prof.prefix_len,
                          secret_len=prof.secret_len, controls=prof.controls)
    # screened against public and private windows alike: no secret occurs anywhere in the data
    write_manifest(out / "canaries.json", build_manifest(params, dseed, screen_store=out / "windows.h5"))
    res = plant(out / "cohort.h5", out / "canaries.json", out / "planted.h5", list(prof.schedule), dseed,
                manifest_out=out / "planted.canaries.json")
    split = split_store(out / "planted.h5", prof.member_fraction, dseed)
    info = {"dataset": name, "files": files_used, "generator": gen, "seed": dseed, "window": prof.window,
            "public_windows": len(public), "cohort_windows": len(cohort),
            "members": split["members"], "non_members": split["non_members"],
            "canaries": res.summary["canaries"], "controls": res.summary["controls"],
            "canary_copies": res.summary["copies"], "schedule": list(prof.schedule),
            "seconds": round(time.perf_counter() - t0, 2)}
    _atomic_json(done, info)
    log(f"  data {name}: {len(public)} public + {len(cohort)} cohort windows of {prof.window} nt, "
        f"{info['canaries']} canaries ({res.summary['copies']} copies) + {info['controls']} controls, "
        f"{info['members']} members / {info['non_members']} non-members ({info['seconds']:.1f} s)")
    return info


# ------------------------------------------------------------------------------------------------
# Training and audit of one cell
# ------------------------------------------------------------------------------------------------
def _train_config(prof: Profile, seed: int, epochs: int, lr: float, lora: bool):
    from glmjax.train.trainer import TrainConfig

    return TrainConfig(epochs=epochs, batch_size=prof.batch_size, lr=lr, warmup_steps=prof.warmup_steps,
                       seed=seed, log_every=50, checkpoint_every=10 ** 9,
                       lora_rank=prof.lora_rank if lora else 0)


def _finished_model(folder: Path) -> Path | None:
    m = folder / "model"
    return m if (m / "glmjax_model.json").exists() else None


def pretrain_base(dataset: str, family: str, prof: Profile, seed: int, data: Path, folder: Path, log) -> Path:
    """The family's base model pretrained on the dataset's public windows (reused when present)."""
    from glmjax import models
    from glmjax.train.trainer import train

    done = _finished_model(folder)
    if done is not None:
        return done
    cfg = model_config(family, prof)
    model = models.build(family, cfg, seed=seed)
    r = train(model, data / "public.h5", _train_config(prof, seed, prof.pretrain_epochs, prof.lr, False), folder,
              val_fraction=0.0, overwrite=True)
    shutil.rmtree(folder / "checkpoints", ignore_errors=True)
    log(f"  base {dataset}/{family}: {model.num_params():,} parameters, pretrained {r.steps} steps on public "
        f"windows, loss {r.final_train_loss:.3f} ({r.seconds:.1f} s)")
    return folder / "model"


def run_cell(dataset: str, family: str, finetune: str, prof: Profile, seed: int, out: Path,
             base: Path, log) -> dict:
    """Fine-tune the base on the members (full or LoRA), audit it, and summarise the report."""
    from glmjax import models
    from glmjax.audit.pipeline import AuditOptions, run_audit
    from glmjax.train.trainer import train

    data = out / "data" / dataset
    mdir = out / "models" / dataset / family / finetune
    adir = out / "audits" / dataset / family / finetune
    lora = finetune == "lora"
    model = models.load(base, dtype=prof.dtype)
    n_params = model.num_params()
    tc = _train_config(prof, seed + 1, prof.lora_epochs if lora else prof.epochs, prof.lora_lr if lora else prof.lr,
                       lora)
    r = train(model, data / "planted.h5", tc, mdir, val_fraction=0.0, overwrite=True)
    shutil.rmtree(mdir / "checkpoints", ignore_errors=True)
    exact = prof.exposure == "exact" or (prof.exposure == "exact-causal" and model.objective == "causal")
    opts = AuditOptions(pll=prof.pll, dtype=prof.dtype, exact_k_max=prof.secret_len if exact else 0,
                        exposure_samples=prof.exposure_samples, neighbours=prof.neighbours,
                        neighbour_rows=prof.neighbour_rows, n_bootstrap=prof.n_bootstrap,
                        beam_width=prof.beam_width, extraction=prof.extraction, seed=seed)
    t0 = time.perf_counter()
    res = run_audit(mdir / "model", data / "planted.h5", adir, canaries=data / "planted.canaries.json",
                    reference=base, opts=opts, log=lambda *a: None)
    audit_s = time.perf_counter() - t0
    # the trainer exported a merged copy; the live module still holds the adapters
    trainable = _adapter_params(model) if lora else n_params
    return summarise_cell(res.report, {
        "dataset": dataset, "family": family, "architecture": models.get_family(family).architecture_class,
        "finetune": finetune, "objective": model.objective, "params": n_params,
        "trainable_params": trainable,
        "train": {"steps": r.steps, "epochs": r.epochs_run, "final_loss": r.final_train_loss,
                  "seconds": round(r.seconds, 2), "tokens_per_second": round(r.tokens_per_second, 1),
                  "lora_layers": len(r.adapted_layers)},
        "audit_seconds": round(audit_s, 2),
        "report": str(adir.relative_to(out) / "report.html"),
    })


def _adapter_params(model) -> int:
    """Number of LoRA adapter weights in a module that still holds its adapters."""
    import jax

    from glmjax.train.lora import adapter_state

    return sum(int(np.prod(np.shape(x))) for x in jax.tree_util.tree_leaves(adapter_state(model.module)))


def summarise_cell(report: dict, meta: dict) -> dict:
    """The numbers of one audit report that the tables and figures use.

    Per repetition count r (0 = control canaries, never planted): mean and max exposure, fraction
    extracted, detection TPR at the 1 % FPR threshold calibrated on the controls (raw and
    reference-ratio statistic; for r = 0 the expected FPR, the chance level), and the
    canary-level membership AUC of ``-log perplexity`` for the canaries planted r times (members)
    against the controls (non-members).
    """
    from glmjax.audit.metrics import roc_auc

    can = report.get("canaries") or []
    reps = np.array([c["repetitions"] for c in can], np.int64)
    exp = np.array([c["exposure"] for c in can], np.float64)
    ext = np.array([c["extracted"] for c in can], bool)
    lppl = np.array([np.nan if c["log_perplexity"] is None else c["log_perplexity"] for c in can], np.float64)
    det = (report.get("detection") or {}).get("canaries") or {}
    det_rows = _detection_rows(det)
    ref_rows = _detection_rows(det.get("reference") or {})
    ctrl = reps == 0
    rows = []
    for r in sorted(set(reps.tolist())):
        sel = reps == r
        auc = None
        if r > 0 and ctrl.any() and np.isfinite(lppl[sel | ctrl]).all():
            auc = roc_auc(np.concatenate([np.ones(sel.sum(), bool), np.zeros(ctrl.sum(), bool)]),
                          -np.concatenate([lppl[sel], lppl[ctrl]]))
        rows.append({
            "repetitions": int(r), "n": int(sel.sum()),
            "exposure_mean": float(exp[sel].mean()), "exposure_max": float(exp[sel].max()),
            "extraction_rate": float(ext[sel].mean()),
            "detection_tpr": _get(det_rows.get(r), "tpr"), "detection_tpr_reference": _get(ref_rows.get(r), "tpr"),
            "mia_auc": None if auc is None else float(auc),
            "log_perplexity_mean": float(np.nanmean(lppl[sel])) if np.isfinite(lppl[sel]).any() else None,
        })
    risk = report["risk"]
    mia = report.get("mia") or {}
    attacks = mia.get("attacks") or {}
    strongest = mia.get("strongest_attack")
    return {
        **meta,
        "risk": {"vectors": risk["vectors"], "worst_case": risk["worst_case"], "band": risk["band"],
                 "worst_vector": risk["worst_vector"], "sources": risk.get("sources", {})},
        "mia": {"strongest_attack": strongest,
                "auc_strongest": _get(attacks.get(strongest), "auc"),
                "auc_loss": _get(attacks.get("loss"), "auc"),
                "auc_reference": _get(attacks.get("reference"), "auc"),
                "tpr_at_1pct_strongest": _get((attacks.get(strongest) or {}).get("tpr_at_fpr"), "0.01"),
                "n_members": _get(attacks.get("loss"), "n_members"),
                "n_nonmembers": _get(attacks.get("loss"), "n_nonmembers")},
        "scoring_mode": report["scoring"]["mode"],
        "exposure_methods": sorted({c["exposure_method"] for c in can}),
        "by_repetition": rows,
    }


def _get(d: dict | None, key: str) -> Any:
    return None if d is None else d.get(key)


def _detection_rows(det: dict) -> dict[int, dict]:
    """Repetition count -> {"tpr": ..} of a report's canary detection result.

    The planted canaries come per repetition count; when the never-planted controls are the null
    (``null == "control canaries"``), the chance level — the expected FPR, the probability that a
    canary the model does not tell apart from the controls is flagged — is filed under 0.
    """
    rows = {int(x["repetitions"]): x for x in ((det.get("groups") or {}).get("canaries") or {}).get(
        "by_repetition", [])}
    if det.get("null") == "control canaries" and det.get("expected_fpr") is not None:
        rows[0] = {"tpr": det["expected_fpr"]}
    return rows


# ------------------------------------------------------------------------------------------------
# Results, tables, figures
# ------------------------------------------------------------------------------------------------
def cell_id(dataset: str, family: str, finetune: str) -> str:
    return f"{dataset}/{family}/{finetune}"


def _atomic_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(obj, indent=1, allow_nan=False))
    os.replace(tmp, path)


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(text)
    os.replace(tmp, path)


def rep_rows(results: dict) -> list[dict]:
    """One row per (cell, repetition count) for ``vectors_by_repetition``."""
    out = []
    for cid in sorted(results["cells"], key=_cell_order(results)):
        c = results["cells"][cid]
        for r in c["by_repetition"]:
            out.append({"dataset": c["dataset"], "family": c["family"], "architecture": c["architecture"],
                        "finetune": c["finetune"], "repetitions": r["repetitions"], "n_canaries": r["n"],
                        "exposure_mean": r["exposure_mean"], "exposure_max": r["exposure_max"],
                        "extraction_rate": r["extraction_rate"], "detection_tpr": r["detection_tpr"],
                        "detection_tpr_reference": r["detection_tpr_reference"], "mia_auc": r["mia_auc"]})
    return out


def risk_rows(results: dict) -> list[dict]:
    """One row per cell for ``risk_by_model``."""
    out = []
    for cid in sorted(results["cells"], key=_cell_order(results)):
        c = results["cells"][cid]
        v = c["risk"]["vectors"]
        out.append({"dataset": c["dataset"], "family": c["family"], "architecture": c["architecture"],
                    "finetune": c["finetune"], "params": c["params"], "trainable_params": c["trainable_params"],
                    "detection": v.get("detection"), "extraction": v.get("extraction"), "mia": v.get("mia"),
                    "worst_case": c["risk"]["worst_case"], "band": c["risk"]["band"],
                    "worst_vector": c["risk"]["worst_vector"], "mia_auc_strongest": c["mia"]["auc_strongest"],
                    "mia_strongest_attack": c["mia"]["strongest_attack"], "mia_auc_loss": c["mia"]["auc_loss"],
                    "mia_auc_reference": c["mia"]["auc_reference"], "train_loss": c["train"]["final_loss"],
                    "train_seconds": c["train"]["seconds"], "audit_seconds": c["audit_seconds"]})
    return out


REP_COLUMNS = ("dataset", "family", "architecture", "finetune", "repetitions", "n_canaries", "exposure_mean",
               "exposure_max", "extraction_rate", "detection_tpr", "detection_tpr_reference", "mia_auc")
RISK_COLUMNS = ("dataset", "family", "architecture", "finetune", "params", "trainable_params", "detection",
                "extraction", "mia", "worst_case", "band", "worst_vector", "mia_auc_strongest",
                "mia_strongest_attack", "mia_auc_loss", "mia_auc_reference", "train_loss", "train_seconds",
                "audit_seconds")


def _cell_order(results: dict):
    ds = list(results["config"]["datasets"])
    fam = list(results["config"]["families"])

    def key(cid: str):
        d, f, m = cid.split("/")
        return (ds.index(d) if d in ds else 99, fam.index(f) if f in fam else 99, FINETUNES.index(m))

    return key


def _fmt(x: Any) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.3f}" if abs(x) < 1000 else f"{x:,.0f}"
    if isinstance(x, int) and not isinstance(x, bool):
        return f"{x:,}" if abs(x) >= 10000 else str(x)
    return str(x)


def write_table(rows: list[dict], columns: tuple[str, ...], stem: Path) -> None:
    """``stem.csv`` (full precision, empty for missing) and ``stem.md`` (3 decimals, – for missing)."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    tmp = stem.with_suffix(".csv.partial")
    with tmp.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(columns)
        for r in rows:
            w.writerow(["" if r[c] is None else r[c] for c in columns])
    os.replace(tmp, stem.with_suffix(".csv"))
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(_fmt(r[c]) for c in columns) + " |" for r in rows]
    _atomic_text(stem.with_suffix(".md"), "\n".join(lines) + "\n")


_COLOURS = {"nt": "#1565c0", "dnabert2": "#00838f", "hyenadna": "#2e7d32", "caduceus": "#6a1b9a",
            "mamba": "#ad1457", "llama": "#c62828", "gpt2": "#ef6c00"}


def plot_vectors(results: dict, fig_dir: Path) -> list[Path]:
    """One figure per vector: a panel per dataset, x = repetitions (log2), a line per family
    (solid: full fine-tuning, dashed: LoRA). Controls (repetition 0) are left out of the lines
    and drawn as a dotted horizontal line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig_dir.mkdir(parents=True, exist_ok=True)
    rows = rep_rows(results)
    datasets = [d for d in results["config"]["datasets"] if any(r["dataset"] == d for r in rows)]
    paths = []
    for key, label in REP_VECTORS:
        fig, axes = plt.subplots(1, max(len(datasets), 1), figsize=(4.2 * max(len(datasets), 1), 3.6), dpi=110,
                                 squeeze=False, sharey=True)
        for ax, ds in zip(axes[0], datasets, strict=False):
            for cid in sorted(results["cells"], key=_cell_order(results)):
                c = results["cells"][cid]
                if c["dataset"] != ds:
                    continue
                pts = [(r["repetitions"], r[key]) for r in c["by_repetition"] if r["repetitions"] > 0
                       and r[key] is not None]
                if not pts:
                    continue
                xs, ys = zip(*pts, strict=True)
                style = "-" if c["finetune"] == "full" else "--"
                colour = _COLOURS.get(c["family"], "k")
                ax.plot(xs, ys, style, marker="o", ms=3.5, color=colour, label=f"{c['family']} ({c['finetune']})")
                ctrl = [r[key] for r in c["by_repetition"] if r["repetitions"] == 0 and r[key] is not None]
                if ctrl and key != "mia_auc":
                    ax.axhline(ctrl[0], color=colour, ls=":", lw=0.8, alpha=0.6)
            ax.set_xscale("log", base=2)
            reps = sorted({r["repetitions"] for r in rows if r["repetitions"] > 0})
            ax.set_xticks(reps, [str(r) for r in reps])
            ax.minorticks_off()
            ax.set_title(ds)
            ax.set_xlabel("repetitions of the canary")
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel(label)
        if key == "mia_auc":
            for ax in axes[0]:
                ax.axhline(0.5, color="grey", ls=":", lw=0.8)
        handles, labels = axes[0][0].get_legend_handles_labels()
        if handles:
            fig.legend(handles, labels, loc="lower center", ncol=min(4, len(handles)), fontsize=8,
                       bbox_to_anchor=(0.5, -0.02))
        fig.tight_layout(rect=(0, 0.1, 1, 1))
        p = fig_dir / f"{key.replace('_mean', '').replace('_rate', '')}_vs_repetition.png"
        fig.savefig(p)
        plt.close(fig)
        paths.append(p)
    return paths


def plot_risk(results: dict, fig_dir: Path) -> Path:
    """Grouped bars per model (detection, extraction, MIA) with the worst case marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = risk_rows(results)
    names = [f"{r['dataset']}\n{r['family']} {r['finetune']}" for r in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(rows) + 2), 4.0), dpi=110)
    for k, (vec, colour) in enumerate((("detection", "#1565c0"), ("extraction", "#c62828"), ("mia", "#2e7d32"))):
        ax.bar(x + (k - 1) * 0.27, [r[vec] or 0.0 for r in rows], 0.27, label=vec, color=colour)
    ax.plot(x, [r["worst_case"] for r in rows], "k_", ms=14, mew=2, label="worst case (risk score)")
    for y in (0.1, 0.3):
        ax.axhline(y, color="grey", ls=":", lw=0.8)
    ax.set_xticks(x, names, rotation=90, fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("risk (0-1)")
    ax.legend(fontsize=8, ncol=4, loc="upper left")
    fig.tight_layout()
    p = fig_dir / "risk_by_model.png"
    fig.savefig(p)
    plt.close(fig)
    return p


def write_outputs(results: dict, out: Path) -> dict[str, list[str]]:
    """Tables, figures and summary.md from the results (also after a partial run)."""
    tdir, fdir = out / "tables", out / "figures"
    write_table(rep_rows(results), REP_COLUMNS, tdir / "vectors_by_repetition")
    write_table(risk_rows(results), RISK_COLUMNS, tdir / "risk_by_model")
    figs = plot_vectors(results, fdir) if results["cells"] else []
    if results["cells"]:
        figs.append(plot_risk(results, fdir))
    md = [f"# Memorization risk of genomic language models: reproduction ({results['profile']} profile)", "",
          f"{len(results['cells'])} of {len(results['expected_cells'])} cells; seed {results['seed']}; "
          f"jax {results['jax_version']} on {results['backend']}; compute dtype {results['config']['dtype']}.", "",
          "## Risk per model", "", (tdir / "risk_by_model.md").read_text(), "",
          "## Vectors per repetition count (0 = control canaries, never planted)", "",
          (tdir / "vectors_by_repetition.md").read_text(), "", "## Figures", ""]
    md += [f"![{p.stem}](figures/{p.name})" for p in figs]
    _atomic_text(out / "summary.md", "\n".join(md) + "\n")
    return {"tables": [str(p.relative_to(out)) for p in sorted(tdir.glob("*.*")) if not p.name.endswith(".partial")],
            "figures": [str(p.relative_to(out)) for p in figs]}


# ------------------------------------------------------------------------------------------------
# Driver
# ------------------------------------------------------------------------------------------------
def _select(value: str | None, default: tuple[str, ...], allowed: tuple[str, ...], what: str) -> tuple[str, ...]:
    if value is None:
        return default
    items = tuple(x.strip() for x in value.split(",") if x.strip())
    bad = [x for x in items if x not in allowed]
    if bad or not items:
        raise ConfigError(f"--{what}: unknown {bad[0] if bad else 'empty list'}; choose from {', '.join(allowed)}")
    return items


def build_profile(args: argparse.Namespace) -> Profile:
    """The named profile with the grid and schedule overrides of the command line."""
    from glmjax import models

    prof = PROFILES[args.profile]
    fams = tuple(models.families())
    changes: dict[str, Any] = {
        "datasets": _select(args.datasets, prof.datasets, DATASETS, "datasets"),
        "families": _select(args.families, prof.families, fams, "families"),
        "finetunes": _select(args.finetunes, prof.finetunes, FINETUNES, "finetunes"),
    }
    if args.schedule:
        from glmjax.data.canaries import parse_schedule

        changes["schedule"] = tuple(sorted(set(parse_schedule(args.schedule))))
    if args.dtype:
        changes["dtype"] = {"bf16": "bfloat16", "fp32": "float32"}.get(args.dtype, args.dtype)
    return replace(prof, **changes)


def run(args: argparse.Namespace, log=print) -> dict:
    """Run (or resume) the grid; returns the results dict (also in ``OUT/results.json``)."""
    import jax

    prof = build_profile(args)
    out = Path(args.out)
    # the report alone needs no data
    sources = {} if args.report_only or args.merge else resolve_sources(prof.datasets, args.data_root, {
        "prokaryote": args.prokaryote, "eukaryote": args.eukaryote, "multispecies": args.multispecies})
    expected = [cell_id(d, f, m) for d in prof.datasets for f in prof.families for m in prof.finetunes]
    res_path = out / "results.json"
    if args.overwrite and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    if res_path.exists():
        results = json.loads(res_path.read_text())
        if results.get("fingerprint") != prof.fingerprint() or results.get("seed") != args.seed:
            raise ConfigError(f"{out} holds results of another profile or seed ({results.get('profile')}, seed "
                              f"{results.get('seed')}); use another --out or pass --overwrite")
    cells = dict(results.get("cells", {}))
    for f in sorted((out / "cells").glob("*.json")) if (out / "cells").exists() else []:
        c = json.loads(f.read_text())
        if c.get("fingerprint") == prof.fingerprint() and c.get("seed") == args.seed:
            cells.setdefault(cell_id(c["dataset"], c["family"], c["finetune"]), c)
    machine = {"glmjax_version": glmjax.__version__, "jax_version": jax.__version__, "backend": jax.default_backend(),
               "devices": [str(d) for d in jax.devices()]}
    if args.report_only:  # the tables are rebuilt here; the cells ran where results.json says
        machine.update({k: results[k] for k in (*machine, "seconds_this_run") if k in results})
    results = {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION, "profile": prof.name, "config": prof.to_dict(),
        "fingerprint": prof.fingerprint(), "seed": args.seed, **machine,
        "datasets": {**results.get("datasets", {})}, "expected_cells": expected, "cells": cells,
        "sources": {**results.get("sources", {}), **{k: [str(p) for p in v] for k, v in sources.items()}},
    }
    if args.merge:
        merge_folders([Path(m) for m in args.merge], out, results, prof.fingerprint(), args.seed)
        cells = results["cells"]
    if args.report_only or args.merge:
        results["complete"] = all(c in cells for c in expected)
        results["outputs"] = write_outputs(results, out)
        _atomic_json(res_path, results)
        return results

    # claim the folder for this configuration before any work (a killed run leaves no ambiguity)
    results["complete"] = all(c in cells for c in expected)
    _atomic_json(res_path, results)
    _compilation_cache(args.jax_cache)
    t0 = time.perf_counter()
    todo = [c for c in expected if c not in cells]
    log(f"reproduce_paper: profile {prof.name}, {len(expected)} cells ({len(expected) - len(todo)} already done), "
        f"schedule {list(prof.schedule)}, window {prof.window} nt, dtype {prof.dtype}, backend "
        f"{jax.default_backend()}")
    (out / "cells").mkdir(exist_ok=True)
    durations: list[float] = []
    stopped = False
    k = len(expected) - len(todo)
    for ds in prof.datasets:
        if not any(c.startswith(f"{ds}/") for c in todo):
            continue
        results["datasets"][ds] = prepare_dataset(ds, sources[ds], prof, args.seed, out / "data" / ds, log)
        for fam in prof.families:
            pending = [m for m in prof.finetunes if cell_id(ds, fam, m) in todo]
            if not pending:
                continue
            if _over_budget(args.budget, t0, durations):
                stopped = True
                break
            b0 = time.perf_counter()
            base = pretrain_base(ds, fam, prof, args.seed, out / "data" / ds, out / "models" / ds / fam / "base", log)
            for m in pending:
                # the family was admitted with its first cell (its base is trained for that cell)
                if m != pending[0] and _over_budget(args.budget, t0, durations):
                    stopped = True
                    break
                c0 = time.perf_counter()
                cell = run_cell(ds, fam, m, prof, args.seed, out, base, log)
                cell["fingerprint"], cell["seed"] = prof.fingerprint(), args.seed
                cell["seconds"] = round(time.perf_counter() - c0, 2)
                cid = cell_id(ds, fam, m)
                _atomic_json(out / "cells" / (cid.replace("/", "__") + ".json"), cell)
                results["cells"][cid] = cell
                _atomic_json(res_path, {**results, "complete": False})
                # the budget estimate of a cell includes its share of the base pretraining
                durations.append(time.perf_counter() - min(c0, b0))
                b0 = float("inf")
                k += 1
                by = {r["repetitions"]: r for r in cell["by_repetition"]}
                lo, hi = min(x for x in by if x > 0), max(by)
                log(f"[{k}/{len(expected)}] {cid} ({cell['architecture']}): risk {cell['risk']['worst_case']:.3f} "
                    f"({cell['risk']['band']}, {cell['risk']['worst_vector']}); exposure {by[lo]['exposure_mean']:.1f} "
                    f"bits at {lo}x -> {by[hi]['exposure_mean']:.1f} at {hi}x; extracted "
                    f"{by[hi]['extraction_rate']:.0%} at {hi}x; MIA AUC {_fmt(cell['mia']['auc_strongest'])} "
                    f"({cell['mia']['strongest_attack']}); train {cell['train']['seconds']:.0f} s, audit "
                    f"{cell['audit_seconds']:.0f} s")
            if stopped:
                break
        if stopped:
            break
    results["complete"] = all(c in results["cells"] for c in expected)
    results["seconds_this_run"] = round(time.perf_counter() - t0, 1)
    results["outputs"] = write_outputs(results, out)
    _atomic_json(res_path, results)
    left = len(expected) - len(results["cells"])
    if left:
        log(f"stopped by --budget with {left} cells left; run the same command again to resume")
    else:
        log(f"done: {len(expected)} cells in {out} (this run {results['seconds_this_run']:.0f} s)")
    return results


def merge_folders(folders: list[Path], out: Path, results: dict, fingerprint: str, seed: int) -> None:
    """Add the finished cells of other output folders of the same configuration to ``results``
    (runs of sub-grids on several machines or GPUs): their cell JSON files and audit reports are
    copied into ``out``, their prepared-data records and sources are kept. A folder of another
    profile or seed, or a cell finished in two folders with different results, is an error."""
    for folder in folders:
        res_path = folder / "results.json"
        if not res_path.exists():
            raise ConfigError(f"--merge {folder}: no results.json there (not a reproduce_paper output folder)")
        if folder.resolve() == out.resolve():
            raise ConfigError(f"--merge {folder} is the output folder itself")
        other = json.loads(res_path.read_text())
        if other.get("fingerprint") != fingerprint or other.get("seed") != seed:
            raise ConfigError(f"--merge {folder} holds results of another profile or seed ({other.get('profile')}, "
                              f"seed {other.get('seed')})")
        for cid, cell in other.get("cells", {}).items():
            mine = results["cells"].get(cid)
            if mine is not None and mine.get("risk") != cell.get("risk"):
                raise ConfigError(f"--merge {folder}: cell {cid} is finished in two folders with different results")
            results["cells"][cid] = cell
            name = cid.replace("/", "__") + ".json"
            (out / "cells").mkdir(exist_ok=True)
            _atomic_json(out / "cells" / name, cell)
            audit = folder / Path(cell["report"]).parent if cell.get("report") else None
            if audit is not None and audit.is_dir():
                shutil.copytree(audit, out / Path(cell["report"]).parent, dirs_exist_ok=True)
        results["datasets"].update(other.get("datasets", {}))
        results["sources"].update(other.get("sources", {}))
        results.setdefault("merged_from", []).append(
            {"folder": str(folder), "cells": sorted(other.get("cells", {})), "backend": other.get("backend"),
             "devices": other.get("devices"), "jax_version": other.get("jax_version"),
             "glmjax_version": other.get("glmjax_version")})
    # the machine that ran the cells, not the one that merged them
    ran = results.get("merged_from", [])
    for key in ("backend", "jax_version", "glmjax_version"):
        values = sorted({str(r[key]) for r in ran if r.get(key) is not None})
        if values:
            results[key] = values[0] if len(values) == 1 else values
    if ran:
        results["devices"] = sorted({str(d) for r in ran for d in (r.get("devices") or [])})


def _compilation_cache(path: str | None) -> str | None:
    """Persistent compilation cache for every program, however fast it compiles: the cells of a
    grid compile the same training, scoring and decoding programs again and again (same shapes,
    new closures), so all but the first dataset's cells mostly hit the cache."""
    import jax

    from glmjax.engine.runner import configure_compilation_cache

    used = configure_compilation_cache(path)
    if used is not None:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return used


def _over_budget(budget: float | None, t0: float, durations: list[float]) -> bool:
    """True when the next cell would likely end after ``budget`` seconds (estimate: the slowest
    cell of this run, or none before the first cell)."""
    if budget is None:
        return False
    est = max(durations) if durations else 0.0
    return time.perf_counter() - t0 + est > budget


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--profile", choices=sorted(PROFILES), default="full", help="run size (default: full, one GPU)")
    g.add_argument("--small", dest="profile", action="store_const", const="small", help="CPU profile (minutes)")
    g.add_argument("--tiny", dest="profile", action="store_const", const="tiny", help="the test profile")
    p.add_argument("--out", required=True, help="output folder (resumed when it holds results of the same profile)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--datasets", help=f"comma-separated subset of {','.join(DATASETS)}")
    p.add_argument("--families", help="comma-separated model families (default: nt,hyenadna,caduceus,llama)")
    p.add_argument("--finetunes", help="comma-separated subset of full,lora")
    p.add_argument("--schedule", help="repetition counts, e.g. 1,2,4,8,16,32,64 (changes the results)")
    p.add_argument("--dtype", choices=("bf16", "fp32", "bfloat16", "float32"), help="compute dtype override")
    p.add_argument("--data-root", help="folder with prokaryote/, eukaryote/, multispecies/ (default: shared/data "
                                       "next to the repository, else ../shared/data)")
    p.add_argument("--prokaryote", nargs="+", metavar="FASTA", help="genome FASTA(s) of the prokaryote dataset")
    p.add_argument("--eukaryote", nargs="+", metavar="FASTA", help="genome FASTA(s) of the eukaryote dataset "
                                                                   "(e.g. the human chr20 slice)")
    p.add_argument("--multispecies", nargs="+", metavar="PATH", help="FASTA files or folders of the multi-species set")
    p.add_argument("--budget", type=float, help="seconds: start no new cell that would end after this")
    p.add_argument("--jax-cache", help="persistent compilation cache folder ('off' disables; default: "
                                       "$GLMJAX_JAX_CACHE, else ~/.cache/glmjax/jax)")
    p.add_argument("--report-only", action="store_true", help="rebuild tables and figures from results.json")
    p.add_argument("--merge", nargs="+", metavar="FOLDER",
                   help="add the finished cells of these output folders (same profile and seed; e.g. one "
                        "dataset per GPU) to --out, then write the tables and figures")
    p.add_argument("--overwrite", action="store_true", help="delete --out first")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (2 on a user error)."""
    args = parse_args(argv)
    os.environ.setdefault("GLMJAX_QUIET", "1")
    try:
        run(args)
    except GlmjaxError as e:
        print(f"reproduce_paper: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
