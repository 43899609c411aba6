"""Reference and shadow models for LiRA / RMIA: M models on random halves of a candidate pool.

Model ``m`` trains on exactly half of the pool (a seeded random half), so every pool row is a
member of about M/2 models; the inclusion matrix (bool [M, N]) is saved with the models.

Two ways to train them, with identical results (same seeds → same parameters):

* ``sequential``: one :class:`glmjax.train.trainer.Trainer` run after another (checkpointed,
  resumable; for models too large to hold M copies on one device);
* ``vmapped``: the M models stacked and trained as one ``jax.vmap``-ed step on one device —
  one compilation, M models per step. Fixed epochs, no validation (shadow training has no
  early stopping).

Output folder::

    OUT/inclusion.npy        bool [M, N] (row n of the pool is in model m's training half)
    OUT/shadows.json         pool store, row ids, seeds, configuration, mode
    OUT/shadow_000/ ...      one glmjax model folder per shadow model
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from glmjax import models
from glmjax.errors import ConfigError
from glmjax.models.base import LoadedModel
from glmjax.progress import progress
from glmjax.train.data import TokenizedSet, tokenize_rows
from glmjax.train.lora import apply_lora, merge_lora
from glmjax.train.trainer import (
    TrainConfig,
    Trainer,
    batch_arrays,
    epoch_order,
    make_loss,
    make_optimizer,
    make_step,
    replacement_ids,
    steps_per_epoch,
)


def shadow_seed(seed: int, m: int) -> int:
    """Seed of shadow model m (initialisation, data order and masking)."""
    return seed * 1009 + m + 1


def inclusion_matrix(n: int, num_models: int, seed: int) -> np.ndarray:
    """bool [M, N]: each model includes exactly ``n // 2`` rows chosen at random (seeded)."""
    if n < 2:
        raise ConfigError("the candidate pool needs at least 2 sequences")
    keep = np.zeros((num_models, n), bool)
    for m in range(num_models):
        keep[m, np.random.default_rng([seed, m, 0x1A]).permutation(n)[: n // 2]] = True
    return keep


def _subset(data: TokenizedSet, mask: np.ndarray) -> TokenizedSet:
    idx = np.flatnonzero(mask)
    return TokenizedSet(data.ids[idx], data.attention[idx], data.scored[idx], data.rows[idx])


def train_shadows_vmapped(factory: Callable[[int], LoadedModel], pool: TokenizedSet, keep: np.ndarray,
                          cfg: TrainConfig) -> list[LoadedModel]:
    """Train M models at once as one vmapped step; returns the trained models (LoRA merged)."""
    m_count = keep.shape[0]
    loaded = []
    for m in range(m_count):
        lm = factory(shadow_seed(cfg.seed, m))
        if cfg.lora_rank:
            apply_lora(lm.module, cfg.lora_targets or lm.spec.lora_targets, cfg.lora_rank, cfg.lora_alpha,
                       seed=shadow_seed(cfg.seed, m))
        loaded.append(lm)
    filt = nnx.LoRAParam if cfg.lora_rank else nnx.Param
    splits = [nnx.split(lm.module, filt, ...) for lm in loaded]
    graphdef, abstract_src, frozen = splits[0]
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), abstract_src)
    params = jax.tree.map(lambda *xs: jnp.stack(xs), *[nnx.to_pure_dict(s[1]) for s in splits])
    subsets = [_subset(pool, keep[m]) for m in range(m_count)]
    spe = steps_per_epoch(len(subsets[0]), cfg)
    tx = make_optimizer(cfg, spe * cfg.epochs)
    tok = loaded[0].tokenizer
    loss_fn = make_loss(graphdef, abstract, loaded[0].objective, tok.mask_id, jnp.asarray(replacement_ids(pool)),
                        cfg.mask_prob)
    step = make_step(loss_fn, tx)
    # frozen (LoRA base weights, buffers) is shared by all models: not vmapped.
    vstep = jax.jit(jax.vmap(step, in_axes=(0, 0, None, 0, 0, 0, 0)), donate_argnums=(0, 1))
    opt_state = jax.vmap(tx.init)(params)
    keys = jnp.stack([jax.random.key(shadow_seed(cfg.seed, m)) for m in range(m_count)])
    gs = 0
    with progress(f"training {m_count} shadow models (vmapped)", total=spe * cfg.epochs, unit="step") as bar:
        for epoch in range(cfg.epochs):
            orders = [epoch_order(len(subsets[m]), shadow_seed(cfg.seed, m), epoch) for m in range(m_count)]
            for s in range(spe):
                bats = [batch_arrays(subsets[m], orders[m], s, replace(cfg, seed=shadow_seed(cfg.seed, m)))
                        for m in range(m_count)]
                ids, att, sc = (np.stack([b[i] for b in bats]) for i in range(3))
                k = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, gs)
                params, opt_state, _, _ = vstep(params, opt_state, frozen, ids, att, sc, k)
                gs += 1
                bar.advance(1, tokens=int(att.sum()))
    for m, lm in enumerate(loaded):
        st = jax.tree.map(lambda a: a, abstract)
        nnx.replace_by_pure_dict(st, jax.tree.map(lambda x, m=m: x[m], params))
        nnx.update(lm.module, st)
        if cfg.lora_rank:
            merge_lora(lm.module)
        lm.invalidate()
    return loaded


def train_shadows(factory: Callable[[int], LoadedModel], store_path: str | Path, num_models: int,
                  cfg: TrainConfig, out: str | Path, mode: str = "auto", overwrite: bool = False) -> Path:
    """Train ``num_models`` shadow models on random halves of every row of a store.

    Args:
      factory: ``seed -> LoadedModel`` (a fresh model of a config, or a loaded base checkpoint).
      mode: ``vmapped``, ``sequential`` or ``auto`` (vmapped when M copies of the parameters and
        optimizer state take under 2 GB).
    """
    from glmjax.data.store import SequenceStore
    from glmjax.storage import remove_own_output

    out = Path(out)
    if num_models < 1:
        raise ConfigError("--num-models must be >= 1")
    if out.exists():
        if not overwrite and (out / "shadows.json").exists():
            raise ConfigError(f"{out} already holds shadow models; choose another --out or pass --overwrite")
        if overwrite:
            remove_own_output(out)
    probe = factory(shadow_seed(cfg.seed, 0))
    with SequenceStore(store_path) as store:
        rows = np.arange(len(store))
        pool = tokenize_rows(store, rows, probe.tokenizer, getattr(probe.config, "max_len", None))
        ids = store.ids
    keep = inclusion_matrix(len(pool), num_models, cfg.seed)
    if mode == "auto":
        mode = "vmapped" if probe.num_params() * 4 * 4 * num_models < 2e9 else "sequential"
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if mode == "vmapped":
        trained = train_shadows_vmapped(factory, pool, keep, cfg)
        for m, lm in enumerate(trained):
            models.save(lm, out / f"shadow_{m:03d}", overwrite=True,
                        extra={"shadow": {"index": m, "seed": shadow_seed(cfg.seed, m)}})
    elif mode == "sequential":
        for m in range(num_models):
            lm = factory(shadow_seed(cfg.seed, m))
            scfg = replace(cfg, seed=shadow_seed(cfg.seed, m), patience=0)
            work = out / f"work_{m:03d}"
            Trainer(lm, scfg, work).fit(_subset(pool, keep[m]))
            dst = out / f"shadow_{m:03d}"
            if dst.exists():
                shutil.rmtree(dst)
            (work / "model").rename(dst)
            shutil.rmtree(work)
    else:
        raise ConfigError(f"unknown shadow training mode {mode!r} (vmapped, sequential, auto)")
    np.save(out / "inclusion.npy", keep)
    (out / "shadows.json").write_text(json.dumps({
        "format": "glmjax.shadows", "num_models": num_models, "mode": mode, "store": str(Path(store_path).absolute()),
        "row_ids": [str(x) for x in ids], "seeds": [shadow_seed(cfg.seed, m) for m in range(num_models)],
        "train_config": cfg.to_dict(), "family": probe.family, "seconds": round(time.perf_counter() - t0, 3),
    }, indent=1))
    return out
