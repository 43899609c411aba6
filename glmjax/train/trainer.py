"""The trainer: causal-LM or masked-LM objective, AdamW with warmup + cosine decay, gradient
clipping and accumulation, per-epoch seeded shuffling, validation with early stopping, resumable
orbax checkpoints, a JSON-lines log and a loss-curve plot.

Determinism: the data order of epoch ``e`` is ``permutation(seed, e)``; the masking key of step
``s`` is ``fold_in(key(seed), s)``. A run killed at any point and resumed from its last checkpoint
therefore replays exactly the same steps and ends with the same parameters (CPU, fp32).

Output folder::

    OUT/model/            final parameters (glmjax model folder; LoRA adapters merged)
    OUT/best/             parameters of the best validation epoch (when validating)
    OUT/adapter/          LoRA adapters alone (when training LoRA)
    OUT/checkpoints/      orbax checkpoints for resuming (kept: the last two)
    OUT/train_log.jsonl   one JSON object per logged step / epoch
    OUT/loss.png          loss curves
    OUT/train_config.json the configuration, data description and provenance
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from glmjax import __version__
from glmjax.errors import ConfigError
from glmjax.models.base import LoadedModel
from glmjax.progress import progress
from glmjax.storage import command_line
from glmjax.train.data import TokenizedSet
from glmjax.train.lora import adapter_state, apply_lora, merge_lora
from glmjax.train.objectives import causal_lm_loss, masked_lm_loss, mlm_corrupt


@dataclass(frozen=True)
class TrainConfig:
    """Training hyper-parameters (all seeded; see the module docstring for determinism)."""

    epochs: int = 3
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    weight_decay: float = 0.01
    clip_norm: float = 1.0
    mask_prob: float = 0.15
    seed: int = 0
    patience: int = 0  # epochs without validation improvement before stopping (0: never stop early)
    log_every: int = 10
    checkpoint_every: int = 200  # steps; a checkpoint is also written at the end of every epoch
    lora_rank: int = 0
    lora_alpha: float | None = None
    lora_targets: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class TrainResult:
    """What a finished run produced."""

    out: Path
    steps: int
    epochs_run: int
    final_train_loss: float
    best_val_loss: float | None
    stopped_early: bool
    adapted_layers: list[str] = field(default_factory=list)
    seconds: float = 0.0
    tokens_per_second: float = 0.0


# ---------------------------------------------------------------------------------------------
# Pure pieces (shared with the vmapped shadow ensemble)

def make_optimizer(cfg: TrainConfig, total_steps: int) -> optax.GradientTransformation:
    """AdamW with linear warmup then cosine decay to ``min_lr_ratio * lr``; global-norm clipping;
    weight decay only on matrices (ndim >= 2)."""
    warm = max(0, min(cfg.warmup_steps, total_steps - 1))
    sched = optax.warmup_cosine_decay_schedule(0.0 if warm else cfg.lr, cfg.lr, warm, max(total_steps, warm + 1),
                                               end_value=cfg.lr * cfg.min_lr_ratio)
    decay_mask = lambda params: jax.tree.map(lambda x: x.ndim >= 2, params)
    return optax.chain(optax.clip_by_global_norm(cfg.clip_norm),
                       optax.adamw(sched, b1=0.9, b2=0.98, eps=1e-8, weight_decay=cfg.weight_decay,
                                   mask=decay_mask))


def make_loss(graphdef, abstract_trainable, objective: str, mask_id: int | None,
              replacement_ids: jax.Array, mask_prob: float) -> Callable:
    """``loss(params, frozen, ids, att, scored, rng) -> (sum of token NLL, token count)``."""

    def loss(params, frozen, ids, att, sc, rng):
        st = jax.tree.map(lambda a: a, abstract_trainable)
        nnx.replace_by_pure_dict(st, params)
        model = nnx.merge(graphdef, st, frozen)
        if objective == "causal":
            return causal_lm_loss(model(ids, att), ids, att)
        inp, sel = mlm_corrupt(rng, ids, sc, mask_id, replacement_ids, mask_prob)
        return masked_lm_loss(model(inp, att), ids, sel)

    return loss


def make_step(loss_fn: Callable, tx: optax.GradientTransformation) -> Callable:
    """``step(params, opt_state, frozen, ids[A,B,L], att, scored, key) -> (params, opt_state, loss, tokens)``.

    The A micro-batches are accumulated inside the step (lax.scan); the gradient is that of the
    mean token loss over the whole accumulated batch.
    """

    def step(params, opt_state, frozen, ids, att, sc, key):
        def micro(carry, xs):
            g_acc, s_acc, n_acc = carry
            i, mb_ids, mb_att, mb_sc = xs
            (s, n), g = _value_and_grad_sum(loss_fn, params, frozen, mb_ids, mb_att, mb_sc,
                                            jax.random.fold_in(key, i))
            return (jax.tree.map(jnp.add, g_acc, g), s_acc + s, n_acc + n), None

        zeros = jax.tree.map(jnp.zeros_like, params)
        idx = jnp.arange(ids.shape[0])
        (g, s, n), _ = jax.lax.scan(micro, (zeros, 0.0, 0.0), (idx, ids, att, sc))
        n = jnp.maximum(n, 1.0)
        g = jax.tree.map(lambda x: x / n, g)
        updates, opt_state = tx.update(g, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, opt_state, s / n, n

    return step


def _value_and_grad_sum(loss_fn, params, frozen, ids, att, sc, rng):
    """Gradient of the summed token loss (the count rides along as auxiliary output)."""
    (s, n), g = jax.value_and_grad(lambda p: loss_fn(p, frozen, ids, att, sc, rng), has_aux=True)(params)
    return (s, n), g


def make_eval(loss_fn: Callable) -> Callable:
    """``eval(params, frozen, ids, att, scored, key) -> (sum NLL, count)`` (no gradient)."""
    return lambda params, frozen, ids, att, sc, key: loss_fn(params, frozen, ids, att, sc, key)


def replacement_ids(data: TokenizedSet) -> np.ndarray:
    """Token ids random MLM replacements are drawn from: every id seen at a scored position."""
    ids = np.unique(data.ids[data.scored])
    return ids.astype(np.int32) if ids.size else np.zeros(1, np.int32)


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The data order of an epoch: a permutation seeded by (seed, epoch)."""
    return np.random.default_rng([seed, epoch, 0xDA7A]).permutation(n)


def steps_per_epoch(n: int, cfg: TrainConfig) -> int:
    per = cfg.batch_size * cfg.grad_accum
    if n < per:
        raise ConfigError(f"{n} training sequences are fewer than one batch ({cfg.batch_size} x "
                          f"{cfg.grad_accum} accumulation steps); lower --batch-size")
    return n // per


def batch_arrays(data: TokenizedSet, order: np.ndarray, step: int, cfg: TrainConfig):
    """The [A, B, L] arrays of one optimizer step."""
    per = cfg.batch_size * cfg.grad_accum
    idx = order[step * per:(step + 1) * per]
    ids, att, sc = data.take(idx)
    shape = (cfg.grad_accum, cfg.batch_size, ids.shape[1])
    return ids.reshape(shape), att.reshape(shape), sc.reshape(shape)


# ---------------------------------------------------------------------------------------------
# Checkpoints (orbax): the training state is a pytree; its leaves are saved by index so the
# structure (with int keys from layer lists) is rebuilt from a freshly built template.

def _save_tree(mgr, step: int, tree: Any, meta: dict) -> None:
    import orbax.checkpoint as ocp

    leaves = {f"{i:06d}": np.asarray(x) for i, x in enumerate(jax.tree_util.tree_leaves(tree))}
    mgr.save(step, args=ocp.args.Composite(leaves=ocp.args.StandardSave(leaves),
                                           meta=ocp.args.JsonSave(meta)))
    mgr.wait_until_finished()


def _restore_tree(mgr, step: int, like: Any) -> tuple[Any, dict]:
    import orbax.checkpoint as ocp

    flat, treedef = jax.tree_util.tree_flatten(like)
    target = {f"{i:06d}": np.zeros(np.shape(x), np.asarray(x).dtype) for i, x in enumerate(flat)}
    out = mgr.restore(step, args=ocp.args.Composite(leaves=ocp.args.StandardRestore(target),
                                                    meta=ocp.args.JsonRestore()))
    leaves = [jnp.asarray(out["leaves"][f"{i:06d}"]) for i in range(len(flat))]
    return jax.tree_util.tree_unflatten(treedef, leaves), out["meta"]


def _manager(path: Path):
    import orbax.checkpoint as ocp

    opts = ocp.CheckpointManagerOptions(max_to_keep=2, create=True)
    return ocp.CheckpointManager(path.absolute(), options=opts, item_names=("leaves", "meta"))


# ---------------------------------------------------------------------------------------------

class Trainer:
    """Train one model on a tokenized set (see :func:`train` for the one-call entry point)."""

    def __init__(self, model: LoadedModel, cfg: TrainConfig, out: Path):
        self.model = model
        self.cfg = cfg
        self.out = Path(out)
        self.adapted: list[str] = []
        if cfg.lora_rank:
            targets = cfg.lora_targets or model.spec.lora_targets
            if not targets:
                raise ConfigError(f"family {model.family} names no default LoRA targets; pass --lora-targets")
            self.adapted = apply_lora(model.module, targets, cfg.lora_rank, cfg.lora_alpha, seed=cfg.seed)
            model.invalidate()
        self.trainable_filter = nnx.LoRAParam if cfg.lora_rank else nnx.Param
        self.graphdef, trainable, self.frozen = nnx.split(model.module, self.trainable_filter, ...)
        self.abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), trainable)
        self.params = nnx.to_pure_dict(trainable)

    def _sync_model(self) -> None:
        st = jax.tree.map(lambda a: a, self.abstract)
        nnx.replace_by_pure_dict(st, self.params)
        nnx.update(self.model.module, st)
        self.model.invalidate()

    def fit(self, train: TokenizedSet, val: TokenizedSet | None = None,
            on_step: Callable[[int], None] | None = None) -> TrainResult:
        cfg = self.cfg
        t_start = time.perf_counter()
        spe = steps_per_epoch(len(train), cfg)
        total = spe * cfg.epochs
        tx = make_optimizer(cfg, total)
        obj = self.model.objective
        tok = self.model.tokenizer
        if obj == "masked" and tok.mask_id is None:
            raise ConfigError(f"tokenizer {tok.name} has no mask token; cannot train a masked LM")
        repl = jnp.asarray(replacement_ids(train))
        loss_fn = make_loss(self.graphdef, self.abstract, obj, tok.mask_id, repl, cfg.mask_prob)
        step_fn = jax.jit(make_step(loss_fn, tx), donate_argnums=(0, 1))
        eval_fn = jax.jit(make_eval(loss_fn))
        opt_state = tx.init(self.params)
        key = jax.random.key(cfg.seed)

        self.out.mkdir(parents=True, exist_ok=True)
        log_path = self.out / "train_log.jsonl"
        mgr = _manager(self.out / "checkpoints")
        state = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "best_val": None, "bad_epochs": 0,
                 "last_loss": float("nan"), "stopped_early": False, "tokens": 0}
        if mgr.latest_step() is not None:
            (self.params, opt_state), meta = _restore_tree(mgr, mgr.latest_step(), (self.params, opt_state))
            if meta.get("config_fingerprint") != cfg.fingerprint():
                raise ConfigError(f"{self.out} holds checkpoints of a different training configuration; "
                                  "use another --out or --overwrite")
            state.update(meta["state"])
            _truncate_log(log_path, state["global_step"])
        log = log_path.open("a")

        def checkpoint() -> None:
            _save_tree(mgr, state["global_step"], (self.params, opt_state),
                       {"state": state, "config_fingerprint": cfg.fingerprint()})

        tokens_per_step = None
        try:
            with progress("training", total=total, unit="step") as bar:
                bar.advance(state["global_step"])
                while state["epoch"] < cfg.epochs and not state["stopped_early"]:
                    order = epoch_order(len(train), cfg.seed, state["epoch"])
                    while state["step_in_epoch"] < spe:
                        ids, att, sc = batch_arrays(train, order, state["step_in_epoch"], cfg)
                        k = jax.random.fold_in(key, state["global_step"])
                        self.params, opt_state, loss, ntok = step_fn(self.params, opt_state, self.frozen,
                                                                     ids, att, sc, k)
                        state["global_step"] += 1
                        state["step_in_epoch"] += 1
                        if tokens_per_step is None:
                            tokens_per_step = int(att.sum())
                        state["tokens"] += tokens_per_step
                        gs = state["global_step"]
                        if gs % cfg.log_every == 0 or state["step_in_epoch"] == spe:
                            state["last_loss"] = float(loss)
                            _log(log, {"step": gs, "epoch": state["epoch"], "loss": state["last_loss"]})
                        bar.advance(1, tokens=tokens_per_step)
                        if on_step is not None:
                            on_step(gs)
                        if gs % cfg.checkpoint_every == 0 and state["step_in_epoch"] < spe:
                            checkpoint()
                    state["last_loss"] = float(loss)
                    entry = {"epoch": state["epoch"], "step": state["global_step"], "train_loss": state["last_loss"]}
                    if val is not None and len(val):
                        v = self._evaluate(eval_fn, val, key)
                        entry["val_loss"] = v
                        if state["best_val"] is None or v < state["best_val"]:
                            state["best_val"], state["bad_epochs"] = v, 0
                            self._sync_model()
                            self._export(self.out / "best", merged=True)
                        else:
                            state["bad_epochs"] += 1
                            if cfg.patience and state["bad_epochs"] >= cfg.patience:
                                state["stopped_early"] = True
                                entry["early_stop"] = True
                    _log(log, entry)
                    state["epoch"] += 1
                    state["step_in_epoch"] = 0
                    checkpoint()
        finally:
            log.close()
            mgr.close()
        self._sync_model()
        if cfg.lora_rank:
            _save_adapter(self.model.module, self.out / "adapter", self.adapted, cfg)
        self._export(self.out / "model", merged=True)
        plot_losses(log_path, self.out / "loss.png")
        secs = time.perf_counter() - t_start
        return TrainResult(self.out, state["global_step"], state["epoch"], state["last_loss"], state["best_val"],
                           state["stopped_early"], self.adapted, secs, state["tokens"] / max(secs, 1e-9))

    def _evaluate(self, eval_fn, data: TokenizedSet, key) -> float:
        s_tot, n_tot = 0.0, 0.0
        bs = self.cfg.batch_size
        ek = jax.random.fold_in(key, 0x7FFFFFFF)  # fixed masks: validation losses comparable across epochs
        for lo in range(0, len(data), bs):
            idx = np.arange(lo, min(lo + bs, len(data)))
            ids, att, sc = data.take(idx)
            s, n = eval_fn(self.params, self.frozen, ids, att, sc, jax.random.fold_in(ek, lo))
            s_tot += float(s)
            n_tot += float(n)
        return s_tot / max(n_tot, 1.0)

    def _export(self, path: Path, merged: bool = True) -> None:
        """Save the current parameters as a glmjax model folder (LoRA merged into a copy)."""
        from glmjax import models

        module = self.model.module
        if merged and self.cfg.lora_rank:
            module = nnx.clone(module)
            merge_lora(module)
        tmp_model = LoadedModel(self.model.spec, self.model.config, module, self.model.tokenizer, self.model.source)
        models.save(tmp_model, path, overwrite=True, extra={
            "training": {"config": self.cfg.to_dict(), "lora_layers": self.adapted, "glmjax_version": __version__}})


def _save_adapter(module: nnx.Module, path: Path, layers: list[str], cfg: TrainConfig) -> None:
    import orbax.checkpoint as ocp

    tmp = path.with_name(path.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    pure = adapter_state(module)
    leaves = {f"{i:06d}": np.asarray(x) for i, x in enumerate(jax.tree_util.tree_leaves(pure))}
    with ocp.StandardCheckpointer() as ck:
        ck.save(tmp.absolute() / "state", leaves)
    (tmp / "adapter.json").write_text(json.dumps({"format": "glmjax.lora", "rank": cfg.lora_rank,
                                                  "alpha": cfg.lora_alpha or 2 * cfg.lora_rank,
                                                  "layers": layers}, indent=2))
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)


def _log(fh, entry: dict) -> None:
    entry = {**entry, "time": round(time.time(), 3)}
    fh.write(json.dumps(entry) + "\n")
    fh.flush()


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint a run resumes from (they will be replayed)."""
    if not path.exists():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= step]
    path.write_text("".join(k + "\n" for k in keep))


def plot_losses(log_path: Path, out_png: Path) -> None:
    """Training loss per logged step and validation loss per epoch, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(ln) for ln in log_path.read_text().splitlines() if ln.strip()]
    tr = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    va = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    if tr:
        ax.plot(*zip(*tr, strict=True), label="train", lw=1)
    if va:
        ax.plot(*zip(*va, strict=True), "o-", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png)
    plt.close(fig)


def write_run_description(out: Path, cfg: TrainConfig, model: LoadedModel, data: dict[str, Any]) -> None:
    """``train_config.json``: configuration, model, data and provenance of the run."""
    desc = {"train_config": cfg.to_dict(), "family": model.family, "model_config": model.config.to_dict(),
            "model_source": model.source, "data": data, "glmjax_version": __version__, "command": command_line()}
    (Path(out) / "train_config.json").write_text(json.dumps(desc, indent=2, sort_keys=True, default=str))


def train(model: LoadedModel, store_path: str | Path, cfg: TrainConfig, out: str | Path,
          val_fraction: float = 0.05, overwrite: bool = False) -> TrainResult:
    """Train ``model`` on the member rows of a SequenceStore (see :func:`glmjax.train.data.training_rows`).

    A folder ``out`` holding checkpoints of the same configuration is resumed; of another
    configuration it is an error unless ``overwrite``.
    """
    from glmjax.data.store import SequenceStore
    from glmjax.storage import remove_own_output
    from glmjax.train.data import tokenize_rows, training_rows

    out = Path(out)
    if overwrite and out.exists():
        remove_own_output(out)
    with SequenceStore(store_path) as store:
        train_rows, val_rows = training_rows(store, val_fraction, cfg.seed)
        max_len = getattr(model.config, "max_len", None)
        tr = tokenize_rows(store, train_rows, model.tokenizer, max_len)
        va = tokenize_rows(store, val_rows, model.tokenizer, max_len, length=tr.ids.shape[1]) if len(val_rows) else None
        data = {"store": str(Path(store_path).absolute()), "store_provenance": store.provenance,
                "train_rows": int(len(train_rows)), "val_rows": int(len(val_rows)),
                "split": store.split_info(), "canary_manifest": store.canary_manifest(),
                "tokens_per_sequence": int(tr.ids.shape[1])}
    out.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(model, cfg, out)
    write_run_description(out, cfg, model, data)
    return trainer.fit(tr, va)
