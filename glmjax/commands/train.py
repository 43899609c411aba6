"""``glmjax train`` and ``glmjax train-shadows``."""

from __future__ import annotations

import argparse
from pathlib import Path

from glmjax.commands import argtypes as A
from glmjax.dtypes import DTYPE_CHOICES, dtype_name
from glmjax.errors import ConfigError


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--family", help="model family (required for a preset config): "
                   "nt, llama, gpt2, hyenadna, caduceus, dnabert2, mamba, evo1, evo2")
    p.add_argument("--config", default="tiny",
                   help="a preset name of the family (tiny, small, ...) for training from scratch, "
                        "or a checkpoint folder or Hugging Face Hub id ORG/NAME[@REVISION] to fine-tune "
                        "(default: tiny)")
    p.add_argument("--data", required=True, help="SequenceStore to train on (its member split)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--epochs", type=A.positive_int, default=3)
    p.add_argument("--batch-size", type=A.positive_int, default=16)
    p.add_argument("--grad-accum", type=A.positive_int, default=1, help="micro-batches accumulated per step")
    p.add_argument("--lr", type=A.positive, default=1e-3)
    p.add_argument("--warmup-steps", type=A.count, default=50)
    p.add_argument("--weight-decay", type=A.non_negative, default=0.01)
    p.add_argument("--clip-norm", type=A.non_negative, default=1.0)
    p.add_argument("--lora", type=A.count, default=0, metavar="RANK", help="train LoRA adapters of this rank")
    p.add_argument("--lora-alpha", type=A.positive, default=None, help="LoRA alpha (default 2 x rank)")
    p.add_argument("--lora-targets", default="", help="comma-separated layer-name patterns (default: family's)")
    p.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto",
                   help="compute dtype (auto: bf16 on GPU/TPU, fp32 on CPU)")
    p.add_argument("--seed", type=A.seed, default=0)
    p.add_argument("--trust-pickle", action="store_true", help="allow pickle-based checkpoints")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")


def register(sub) -> None:
    p = sub.add_parser("train", help="train or fine-tune a model (full or LoRA) on a SequenceStore",
                       description="Train a model on the member rows of a SequenceStore (planted canaries "
                       "included). Writes OUT/model (final), OUT/best (best validation epoch), OUT/adapter "
                       "(LoRA), OUT/checkpoints (resume: rerun the same command), OUT/train_log.jsonl, "
                       "OUT/loss.png.")
    _common(p)
    p.add_argument("--val-fraction", type=A.number(0.0, 1.0, high_open=True), default=0.05,
                   help="fraction of non-member rows used for validation loss (default 0.05)")
    p.add_argument("--patience", type=A.count, default=0, help="early stopping patience in epochs (0: off)")
    p.add_argument("--checkpoint-every", type=A.positive_int, default=200, help="steps between checkpoints")
    p.set_defaults(func=run_train, io=(("data", "config"), ("out",)))

    s = sub.add_parser("train-shadows", help="train M shadow/reference models on random halves of a store",
                       description="Train M models, each on a seeded random half of every row of the store "
                       "(the LiRA protocol); saves OUT/inclusion.npy, OUT/shadows.json, OUT/shadow_XXX/.")
    _common(s)
    s.add_argument("--num-models", type=A.positive_int, required=True)
    s.add_argument("--mode", choices=["auto", "vmapped", "sequential"], default="auto",
                   help="vmapped: all models in one compiled step on one device (small models)")
    s.set_defaults(func=run_shadows, io=(("data", "config"), ("out",)))


def model_factory(args):
    """``seed -> LoadedModel`` from --family/--config (preset or checkpoint folder)."""
    from glmjax import models
    from glmjax.models.hub import parse_hub_id, resolve

    dtype = dtype_name(args.dtype)
    cfg_path = Path(args.config)
    if cfg_path.exists() or parse_hub_id(args.config) is not None:
        cfg_path = resolve(args.config, trust_pickle=args.trust_pickle)

        def from_checkpoint(seed: int):
            return models.load(cfg_path, trust_pickle=args.trust_pickle, dtype=dtype)
        from_checkpoint(0)  # validate once, before any work
        return from_checkpoint
    if not args.family:
        raise ConfigError(f"--config {args.config!r} is not a folder; give --family to build a preset model")
    spec = models.get_family(args.family)
    preset = getattr(spec.config_cls, "preset", None)
    if args.config == "tiny" or preset is None:
        if args.config != "tiny":
            raise ConfigError(f"family {args.family} has only the 'tiny' preset")
        cfg = spec.config_cls.tiny()
    else:
        try:
            cfg = preset(args.config)
        except (KeyError, ValueError) as e:
            raise ConfigError(f"unknown preset {args.config!r} for family {args.family} ({e})") from None
    import dataclasses

    if hasattr(cfg, "dtype"):
        cfg = dataclasses.replace(cfg, dtype=dtype)
    return lambda seed: models.build(args.family, cfg, seed=seed, source=f"{args.family}:{args.config}")


def train_config(args):
    from glmjax.train.trainer import TrainConfig

    for name in ("epochs", "batch_size", "grad_accum"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1")
    return TrainConfig(epochs=args.epochs, batch_size=args.batch_size, grad_accum=args.grad_accum, lr=args.lr,
                       warmup_steps=args.warmup_steps, weight_decay=args.weight_decay, clip_norm=args.clip_norm,
                       seed=args.seed, patience=getattr(args, "patience", 0),
                       checkpoint_every=getattr(args, "checkpoint_every", 200), lora_rank=args.lora,
                       lora_alpha=args.lora_alpha,
                       lora_targets=tuple(t for t in args.lora_targets.split(",") if t))


def run_train(args) -> int:
    from glmjax.train.trainer import train

    cfg = train_config(args)
    factory = model_factory(args)
    model = factory(args.seed)
    res = train(model, args.data, cfg, args.out, val_fraction=args.val_fraction, overwrite=args.overwrite)
    best = f", best validation loss {res.best_val_loss:.4f}" if res.best_val_loss is not None else ""
    lora = f", LoRA on {len(res.adapted_layers)} layers" if res.adapted_layers else ""
    print(f"trained {model.family} for {res.steps} steps ({res.epochs_run} epoch{'' if res.epochs_run == 1 else 's'}{lora}) in {res.seconds:.1f} s "
          f"({res.tokens_per_second:,.0f} tokens/s); final train loss {res.final_train_loss:.4f}{best}"
          f"{' (stopped early)' if res.stopped_early else ''}")
    print(f"model: {Path(args.out) / 'model'}")
    return 0


def run_shadows(args) -> int:
    from glmjax.train.shadows import train_shadows

    cfg = train_config(args)
    out = train_shadows(model_factory(args), args.data, args.num_models, cfg, args.out, mode=args.mode,
                        overwrite=args.overwrite)
    print(f"{args.num_models} shadow models in {out}")
    return 0
