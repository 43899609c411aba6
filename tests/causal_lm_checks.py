"""Checks shared by the causal transformer families (Llama, GPT-2): HF parity, decoding, I/O."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

import glmjax.models
from glmjax.errors import CheckpointError

PAD = 4


def right_padded_batch(vocab_size: int, lengths: list[int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random ids int32 [B, max(lengths)] ([BOS]=2 first, pads = 4 after each length) and bool mask."""
    rng = np.random.default_rng(seed)
    length = max(lengths)
    ids = rng.integers(0, vocab_size, size=(len(lengths), length)).astype(np.int32)
    ids[:, 0] = 2
    mask = np.arange(length)[None, :] < np.asarray(lengths)[:, None]
    ids[~mask] = PAD
    return ids, mask


def randomize_torch(model, std: float = 0.15, seed: int = 0) -> None:
    """Replace every parameter with random values (norm scales around 1) so parity tests see them all."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight") and ("norm" in name or ".ln_" in name or name.startswith("ln_")
                                            or ".ln_f" in name):
                p.copy_(0.5 + torch.rand(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * std)


def hf_logits(model, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """float32 [B, L, V] logits of an HF causal LM on a right-padded batch (mask passed)."""
    import torch

    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids, dtype=torch.long),
                    attention_mask=torch.tensor(mask.astype(np.int64)))
    return out.logits.float().numpy()


def check_hf_parity(hf_model, path: Path, family: str, rel_err, seed: int = 0) -> None:
    """save_pretrained -> glmjax.models.load -> logits match HF on non-pad positions (<= 1e-4)."""
    hf_model.eval()
    hf_model.save_pretrained(str(path))
    model = glmjax.models.load(path)
    assert model.family == family and model.objective == "causal"
    ids, mask = right_padded_batch(hf_model.config.vocab_size, [9, 5, 1, 7], seed)
    ref = hf_logits(hf_model, ids, mask)
    ours = np.asarray(model.logits(ids, mask))
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    assert np.isfinite(ours).all()
    err = rel_err(ours, ref, mask)
    assert err <= 1e-4, f"{family} logits differ from transformers: rel err {err:.2e}"


def check_missing_tensor(hf_model, path: Path, key: str) -> None:
    """Loading a checkpoint without ``key`` raises CheckpointError naming it."""
    hf_model.save_pretrained(str(path))
    f = path / "model.safetensors"
    tensors = load_file(str(f))
    assert key in tensors, sorted(tensors)
    del tensors[key]
    save_file(tensors, str(f), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
        glmjax.models.load(path)


def check_orbax_roundtrip(family: str, config, path: Path) -> None:
    """glmjax.models.save -> load gives the same config and bit-identical logits."""
    model = glmjax.models.build(family, config, seed=3)
    ids, mask = right_padded_batch(config.vocab_size, [6, 4], seed=1)
    glmjax.models.save(model, path)
    back = glmjax.models.load(path)
    assert back.family == family and back.config == config
    np.testing.assert_array_equal(np.asarray(back.logits(ids, mask)), np.asarray(model.logits(ids, mask)))


def _jitted_decode(module):
    graphdef, state = nnx.split(module)

    @jax.jit
    def step(state, cache, tok):
        return nnx.merge(graphdef, state).decode_step(cache, tok)

    @jax.jit
    def forward(state, ids):
        return nnx.merge(graphdef, state)(ids)

    return state, step, forward


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def check_decode(module, vocab_size: int, max_len: int = 12) -> None:
    """Token-by-token decode_step, prefill + decode, per-row positions and cache gathering all
    reproduce the full forward pass (fp32, <= 1e-5 relative)."""
    state, step, forward = _jitted_decode(module)
    ids, _ = right_padded_batch(vocab_size, [10, 10, 10], seed=5)
    full = np.asarray(forward(state, jnp.asarray(ids)))

    # every leaf, the position counter included, has the batch on axis 0
    cache = module.init_cache(3, max_len)
    assert all(leaf.shape[0] == 3 for leaf in jax.tree.leaves(cache))
    assert cache["pos"].shape == (3,)

    steps, saved = [], {}
    for t in range(ids.shape[1]):
        saved[t] = cache
        logits, cache = step(state, cache, jnp.asarray(ids[:, t]))
        assert logits.dtype == jnp.float32 and logits.shape == (3, full.shape[-1])
        steps.append(np.asarray(logits))
    assert _rel(np.stack(steps, 1), full) <= 1e-5
    np.testing.assert_array_equal(np.asarray(cache["pos"]), [10, 10, 10])

    # prefill 4 tokens, then decode the rest
    prefill = jax.jit(lambda s, x: nnx.merge(nnx.graphdef(module), s).prefill(x, max_len))
    pre_logits, cache = prefill(state, jnp.asarray(ids[:, :4]))
    assert _rel(pre_logits, full[:, :4]) <= 1e-5
    np.testing.assert_array_equal(np.asarray(cache["pos"]), [4, 4, 4])
    for t in range(4, ids.shape[1]):
        logits, cache = step(state, cache, jnp.asarray(ids[:, t]))
        assert _rel(logits, full[:, t]) <= 1e-5

    # gather rows of a cache (a trie walk: children of parents 2, 0, 0) and step once
    parent = np.asarray([2, 0, 0])
    gathered = jax.tree.map(lambda x: x[jnp.asarray(parent)], saved[6])
    got, _ = step(state, gathered, jnp.asarray(ids[parent, 6]))
    own, _ = step(state, saved[6], jnp.asarray(ids[:, 6]))
    assert _rel(got, np.asarray(own)[parent]) <= 1e-6

    # rows at different positions in one cache: row 0 after 3 tokens, rows 1-2 after 7
    mixed = jax.tree.map(lambda a, b: jnp.concatenate([a[:1], b[1:]]), saved[3], saved[7])
    np.testing.assert_array_equal(np.asarray(mixed["pos"]), [3, 7, 7])
    for t in (3, 4):
        tok = jnp.asarray([ids[0, t], ids[1, t + 4], ids[2, t + 4]])
        logits, mixed = step(state, mixed, tok)
        assert _rel(logits[0], full[0, t]) <= 1e-5
        assert _rel(logits[1:], full[1:, t + 4]) <= 1e-5


def check_padding(module, vocab_size: int) -> None:
    """Right pads never change real positions' logits, and all-pad rows / pad queries stay finite."""
    graphdef, state = nnx.split(module)
    forward = jax.jit(lambda s, x, m: nnx.merge(graphdef, s)(x, m))
    ids, mask = right_padded_batch(vocab_size, [8, 3, 5, 0], seed=9)
    out = np.asarray(forward(state, ids, mask))
    assert np.isfinite(out).all()
    # other pad contents: real positions bit-identical
    other = ids.copy()
    other[~mask] = (other[~mask] + 3) % vocab_size
    np.testing.assert_array_equal(np.asarray(forward(state, other, mask))[mask], out[mask])
    # no mask at all: real positions see only earlier (real) tokens through the causal mask anyway
    unmasked = np.asarray(forward(state, ids, np.ones_like(mask)))
    assert _rel(unmasked[mask], out[mask]) <= 1e-6


def param_count(build, config) -> int:
    """Number of parameters of ``build(config, rngs)`` without allocating them."""
    abstract = nnx.eval_shape(lambda: build(config, nnx.Rngs(0)))
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(nnx.state(abstract, nnx.Param))))


def check_bf16_keeps_fp32_logits(family: str, config, rel_err) -> None:
    """The same weights computing in bf16 return float32 logits within bf16 error of fp32."""
    import dataclasses

    m32 = glmjax.models.build(family, config, seed=4)
    m16 = glmjax.models.build(family, dataclasses.replace(config, dtype="bfloat16"), seed=4)
    ids, mask = right_padded_batch(16, [8, 6], seed=0)
    a, b = np.asarray(m32.logits(ids, mask)), m16.logits(ids, mask)
    assert b.dtype == jnp.float32
    # bf16 keeps ~3 significant digits; fp32 params and fp32 norms/softmax keep the error at that level
    assert rel_err(np.asarray(b), a, mask) < 2e-2


def check_registry_and_presets(spec, config_cls, build, name: str, other: str) -> None:
    """Registry entry, config round trip and the preset sizes every causal baseline offers."""
    cfg = config_cls.tiny()
    assert config_cls.from_dict(cfg.to_dict()) == cfg
    assert spec.name == name and spec.objective == "causal"
    assert spec.architecture_class == "causal-transformer"
    assert spec.detect({"model_type": name}) and not spec.detect({"model_type": other})
    assert glmjax.models.get_family(name) is spec
    assert config_cls.preset("tiny") == cfg
    assert 10e6 <= param_count(build, config_cls.preset("small")) <= 20e6
    assert 90e6 <= param_count(build, config_cls.preset("100m")) <= 110e6
