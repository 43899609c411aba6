"""Training: loss falls on a real genome, a 64x canary is memorized, resume after SIGKILL is exact,
LoRA trains adapters only and merges exactly, the vmapped shadow ensemble equals sequential training."""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from glmjax import alphabet, models
from glmjax.data.store import Record, SequenceStoreWriter
from glmjax.train.data import TokenizedSet
from glmjax.train.lora import LoRALinear, apply_lora, merge_lora
from glmjax.train.shadows import inclusion_matrix, shadow_seed, train_shadows_vmapped
from glmjax.train.trainer import TrainConfig, Trainer, train

RES = Path(__file__).resolve().parents[1] / "glmjax" / "resources"


def lambda_windows(length: int = 96, limit: int | None = None) -> list[np.ndarray]:
    text = gzip.open(RES / "lambda_phage.fa.gz", "rt").read().split("\n", 1)[1].replace("\n", "")
    codes = alphabet.encode(text)
    wins = [codes[i:i + length] for i in range(0, codes.shape[0] - length + 1, length)]
    return wins[:limit] if limit else wins


def small_llama(**kw):
    cfg = models.get_family("llama").config_cls.tiny()
    return dataclasses.replace(cfg, **kw)


def write_store(path: Path, seqs: list[np.ndarray], kinds: list[str] | None = None) -> Path:
    w = SequenceStoreWriter(path)
    w.add([Record(f"r{i}", s, kind=(kinds[i] if kinds else "genome")) for i, s in enumerate(seqs)])
    w.finalize()
    return path


def seq_logp(model, codes: np.ndarray) -> float:
    """Sum of log p of the nucleotides of one sequence under a causal model (full forward)."""
    ids = model.tokenizer.encode_codes(codes).ids[None]
    logp = jax.nn.log_softmax(model.logits(ids)[0, :-1], -1)
    return float(jnp.take_along_axis(logp, jnp.asarray(ids[0, 1:])[:, None], -1).sum())


def test_loss_falls_and_repeated_canary_is_memorized(tmp_path):
    rng = np.random.default_rng(7)
    canary, control = rng.integers(0, 4, 48).astype(np.uint8), rng.integers(0, 4, 48).astype(np.uint8)
    seqs = lambda_windows(48, 200) + [canary] * 64
    store = write_store(tmp_path / "s.h5", seqs)
    model = models.build("llama", small_llama(hidden_size=64, intermediate_size=128), seed=1)
    before = seq_logp(model, canary) - seq_logp(model, control)
    res = train(model, store, TrainConfig(epochs=10, batch_size=32, lr=5e-3, warmup_steps=10, log_every=5),
                tmp_path / "run", val_fraction=0.0)
    log = [json.loads(x) for x in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert losses[-1] < losses[0] - 0.1, losses
    trained = models.load(tmp_path / "run" / "model")
    after = seq_logp(trained, canary) - seq_logp(trained, control)
    # 48 nt canary: log-likelihood gap to an unseen control canary grows by far (>= 20 nats)
    assert after > before + 20.0, (before, after)
    assert (tmp_path / "run" / "loss.png").stat().st_size > 1000
    assert res.steps == 10 * (264 // 32)


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys, dataclasses
    from glmjax import models
    from glmjax.train.trainer import TrainConfig, train
    kill_at = int(sys.argv[3])
    import glmjax.train.trainer as T
    orig = T.Trainer.fit
    def fit(self, tr, va=None, on_step=None):
        def hook(step):
            if kill_at and step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
        return orig(self, tr, va, on_step=hook)
    T.Trainer.fit = fit
    cfg = dataclasses.replace(models.get_family("llama").config_cls.tiny())
    model = models.build("llama", cfg, seed=3)
    train(model, sys.argv[1], TrainConfig(epochs=2, batch_size=8, checkpoint_every=3, log_every=1, seed=5),
          sys.argv[2], val_fraction=0.0)
""")


def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path):
    store = write_store(tmp_path / "s.h5", lambda_windows(40, 48))
    script = tmp_path / "run.py"
    script.write_text(KILL_SCRIPT)
    env = {**os.environ, "GLMJAX_QUIET": "1"}
    full = subprocess.run([sys.executable, script, store, tmp_path / "full", "0"], env=env, capture_output=True)
    assert full.returncode == 0, full.stderr.decode()[-2000:]
    killed = subprocess.run([sys.executable, script, store, tmp_path / "resumed", "8"], env=env, capture_output=True)
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "resumed" / "model").exists()
    again = subprocess.run([sys.executable, script, store, tmp_path / "resumed", "0"], env=env, capture_output=True)
    assert again.returncode == 0, again.stderr.decode()[-2000:]
    a = models.load(tmp_path / "full" / "model")
    b = models.load(tmp_path / "resumed" / "model")
    for x, y in zip(jax.tree_util.tree_leaves(nnx.state(a.module, nnx.Param)),
                    jax.tree_util.tree_leaves(nnx.state(b.module, nnx.Param)), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    steps = [json.loads(x).get("step") for x in (tmp_path / "resumed" / "train_log.jsonl").read_text().splitlines()]
    full_steps = [json.loads(x).get("step") for x in (tmp_path / "full" / "train_log.jsonl").read_text().splitlines()]
    assert steps == full_steps  # no lost or duplicated log rows


def test_lora_trains_adapters_only_and_merges_exactly(tmp_path):
    store = write_store(tmp_path / "s.h5", lambda_windows(40, 64))
    model = models.build("llama", small_llama(), seed=2)
    base = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model.module, nnx.Param)))
    cfg = TrainConfig(epochs=2, batch_size=8, lr=1e-2, lora_rank=4, seed=1)
    res = train(model, store, cfg, tmp_path / "lora", val_fraction=0.0)
    assert res.adapted_layers and all(n.split(".")[-1] in model.spec.lora_targets for n in res.adapted_layers)
    # base weights untouched, adapters moved (B starts at zero)
    after = nnx.state(model.module, nnx.Param)
    lora_b = [np.asarray(v) for p, v in nnx.to_flat_state(nnx.state(model.module, nnx.LoRAParam))
              if p[-1] == "lora_b"]
    assert lora_b and all(np.abs(b).max() > 0 for b in lora_b)
    for path, var in nnx.to_flat_state(after):
        if "lora" in [str(p) for p in path]:
            continue
        ref = base
        for p in [q for q in path if q != "base"]:
            ref = ref[p]
        np.testing.assert_array_equal(np.asarray(var.value), ref)
    ids = model.tokenizer.pad_batch([model.tokenizer.encode_codes(s) for s in lambda_windows(40, 3)], 48)[0]
    unmerged = np.asarray(model.logits(ids))
    merged = models.load(tmp_path / "lora" / "model")
    assert not any(isinstance(m, LoRALinear) for _, m in nnx.iter_modules(merged.module))
    np.testing.assert_allclose(np.asarray(merged.logits(ids)), unmerged, rtol=1e-5, atol=1e-5)
    assert (tmp_path / "lora" / "adapter" / "adapter.json").exists()


def test_merge_lora_equals_adapted_forward():
    model = models.build("gpt2" if "gpt2" in models.families() else "llama", seed=0)
    apply_lora(model.module, model.spec.lora_targets, rank=2, seed=0)
    for _, m in nnx.iter_modules(model.module):
        if isinstance(m, LoRALinear):
            m.lora.lora_b.value = jax.random.normal(jax.random.key(1), m.lora.lora_b.value.shape) * 0.1
    model.invalidate()
    ids = np.array([[2, 7, 8, 9, 10, 7, 8]], np.int32)
    adapted = np.asarray(model.logits(ids))
    assert merge_lora(model.module) > 0
    model.invalidate()
    np.testing.assert_allclose(np.asarray(model.logits(ids)), adapted, rtol=1e-5, atol=1e-6)


def test_vmapped_ensemble_equals_sequential_training(tmp_path):
    seqs = lambda_windows(32, 40)
    model0 = models.build("llama", small_llama(), seed=0)
    encs = [model0.tokenizer.encode_codes(s) for s in seqs]
    ids, att, sc = model0.tokenizer.pad_batch(encs, 40)
    pool = TokenizedSet(ids, att, sc, np.arange(len(seqs)))
    keep = inclusion_matrix(len(seqs), 3, seed=4)
    assert (keep.sum(1) == len(seqs) // 2).all()
    cfg = TrainConfig(epochs=2, batch_size=4, lr=5e-3, seed=4, warmup_steps=2)
    factory = lambda seed: models.build("llama", small_llama(), seed=seed)
    vm = train_shadows_vmapped(factory, pool, keep, cfg)
    for m in range(3):
        seq_model = factory(shadow_seed(cfg.seed, m))
        idx = np.flatnonzero(keep[m])
        Trainer(seq_model, dataclasses.replace(cfg, seed=shadow_seed(cfg.seed, m)), tmp_path / f"m{m}").fit(
            TokenizedSet(ids[idx], att[idx], sc[idx], idx))
        for x, y in zip(jax.tree_util.tree_leaves(nnx.state(vm[m].module, nnx.Param)),
                        jax.tree_util.tree_leaves(nnx.state(seq_model.module, nnx.Param)), strict=True):
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)
    # the models differ from each other (different halves and seeds)
    a, b = (jax.tree_util.tree_leaves(nnx.state(vm[i].module, nnx.Param))[0] for i in (0, 1))
    assert not np.allclose(np.asarray(a), np.asarray(b))


def test_masked_objective_trains(tmp_path):
    fam = next((f for f in ("nt", "dnabert2", "caduceus") if f in models.families()), None)
    if fam is None:
        pytest.skip("no masked-LM family registered")
    store = write_store(tmp_path / "s.h5", lambda_windows(60, 64))
    model = models.build(fam, seed=0)
    res = train(model, store, TrainConfig(epochs=3, batch_size=16, lr=3e-3, warmup_steps=2, log_every=1),
                tmp_path / "mlm", val_fraction=0.0)
    log = [json.loads(x) for x in (tmp_path / "mlm" / "train_log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert np.isfinite(losses).all() and np.mean(losses[-3:]) < np.mean(losses[:3]), losses
    assert res.steps == 12
