"""HyenaDNA: golden parity (glmjax and the PyTorch peer), checkpoint conversion, incremental decoding."""

from __future__ import annotations

import importlib.util
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from causal_lm_checks import check_decode
from conftest import ROOT, GoldenCase, rel_err
from flax import nnx

import glmjax.models as gm
from glmjax.errors import CheckpointError, ConfigError, SequenceError
from glmjax.models import hyena
from glmjax.models.checkpoints import TensorSource, fill_module, read_hf_tensors

sys.path.insert(0, str(ROOT / "scripts" / "torch_ref"))
import hyena_torch  # noqa: E402

MAX_LEN = 48  # decoding cache capacity used by the golden-model tests
TOL = 1e-4  # the golden case's suggested tolerance (fp32, FFT convolution)


@pytest.fixture(scope="module")
def gcase():
    return GoldenCase("hyenadna")


@pytest.fixture(scope="module")
def gmodel(gcase):
    return gm.load(gcase.dir)


class Jitted:
    """Compiled forward / decode_step / prefill of one module (shared by the tests of a module)."""

    def __init__(self, module):
        graphdef, self.state = nnx.split(module)
        self._forward = jax.jit(lambda st, ids: nnx.merge(graphdef, st)(ids))
        self._step = jax.jit(lambda st, cache, tok: nnx.merge(graphdef, st).decode_step(cache, tok))
        self._prefill = jax.jit(lambda st, ids, max_len: nnx.merge(graphdef, st).prefill(ids, max_len),
                                static_argnums=2)

    def forward(self, ids):
        return self._forward(self.state, jnp.asarray(ids, jnp.int32))

    def step(self, cache, tok):
        return self._step(self.state, cache, jnp.asarray(tok, jnp.int32))

    def prefill(self, ids, max_len):
        return self._prefill(self.state, jnp.asarray(ids, jnp.int32), max_len)


@pytest.fixture(scope="module")
def gjit(gmodel):
    return Jitted(gmodel.module)


def test_golden_logits_parity(gmodel, gcase):
    assert gmodel.family == "hyenadna" and gmodel.objective == "causal"
    assert gmodel.spec is gm.get_family("hyenadna") and gmodel.spec.architecture_class == "long-convolution"
    ids = gcase.inputs["input_ids"]
    logits = np.asarray(gmodel.logits(ids))
    ref = gcase.outputs["logits"]
    assert logits.shape == ref.shape == (3, 41, 16) and logits.dtype == np.float32
    assert rel_err(logits, ref) <= TOL
    assert rel_err(logits, ref, ids != 4) <= TOL


def test_golden_config_and_tokenizer(gmodel, gcase):
    cfg = gmodel.config
    assert cfg == hyena.HyenaConfig.tiny()
    assert cfg.padded_vocab_size == 16 and cfg.max_len == 64
    assert hyena.HyenaConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    seqs = gcase.inputs["sequences"]
    np.testing.assert_array_equal(gmodel.tokenizer.encode(str(seqs[0])), gcase.inputs["input_ids"][0])


def test_torch_peer_matches_golden(gcase):
    import torch

    model = hyena_torch.load(gcase.dir)
    with torch.inference_mode():
        logits = model(torch.from_numpy(gcase.inputs["input_ids"]).long()).numpy()
    assert rel_err(logits, gcase.outputs["logits"]) <= TOL


def test_loaded_buffers_and_tied_freq(gmodel, gcase):
    src = read_hf_tensors(gcase.dir)
    cfg = gmodel.config
    for i, layer in enumerate(gmodel.module.layers):
        key = f"hyena.backbone.layers.{i}.mixer.filter_fn."
        f = layer.mixer.filter_fn
        # z is trained in the published models: loaded, not the analytic formula
        np.testing.assert_array_equal(np.asarray(f.z.value), src[key + "pos_emb.z"][0])
        z_formula, t_formula = hyena.positional_features(cfg.max_seq_len, cfg.emb_dim)
        assert np.abs(np.asarray(f.z.value) - z_formula).max() > 1e-3
        np.testing.assert_allclose(np.asarray(f.t.value), src[key + "pos_emb.t"][0], atol=1e-7)
        np.testing.assert_allclose(np.asarray(f.deltas.value), src[key + "modulation.deltas"][0, 0], atol=1e-6)
        np.testing.assert_array_equal(np.asarray(f.freq.value), src[key + "implicit_filter.1.freq"][0])
        assert key + "implicit_filter.3.freq" not in src


def _golden_tensors(gcase) -> dict[str, np.ndarray]:
    return dict(read_hf_tensors(gcase.dir).tensors)


def test_convert_rejects_mismatched_aliases_and_buffers(gcase):
    cfg = hyena.HyenaConfig.tiny()
    key = "hyena.backbone.layers.0.mixer.filter_fn."
    t = _golden_tensors(gcase)
    t[key + "implicit_filter.3.freq"] = t[key + "implicit_filter.1.freq"].copy()  # a non-deduplicated file
    hyena.convert_hf(TensorSource(t), cfg)
    t[key + "implicit_filter.5.freq"] = t[key + "implicit_filter.1.freq"] + 1.0
    with pytest.raises(CheckpointError, match="freq"):
        hyena.convert_hf(TensorSource(t), cfg)
    t = _golden_tensors(gcase)
    t[key + "pos_emb.t"] = t[key + "pos_emb.t"] * 2.0
    with pytest.raises(CheckpointError, match="pos_emb.t"):
        hyena.convert_hf(TensorSource(t), cfg)
    t = _golden_tensors(gcase)
    del t["lm_head.weight"]
    with pytest.raises(CheckpointError, match="lm_head"):
        hyena.convert_hf(TensorSource(t), cfg)
    with pytest.raises(CheckpointError, match="shape"):
        hyena.convert_hf(TensorSource(_golden_tensors(gcase)), hyena.HyenaConfig.from_dict(
            {**cfg.to_dict(), "d_inner": 64}))


def test_random_torch_weights_round_trip():
    """A randomly initialised PyTorch peer (all freq aliases in its state_dict) converts to glmjax
    and gives the same logits, at a length that is not a power of two."""
    import torch

    cfg = hyena.HyenaConfig(d_model=24, n_layer=2, d_inner=48, max_seq_len=80, emb_dim=7, filter_order=12,
                            num_inner_mlps=1, activation_freq=3.0)
    torch.manual_seed(0)
    peer = hyena_torch.HyenaTorchLM(hyena_torch.HyenaTorchConfig(cfg.to_dict())).eval()
    tensors = {k: v.detach().numpy().copy() for k, v in peer.state_dict().items()}
    assert "hyena.backbone.layers.0.mixer.filter_fn.implicit_filter.3.freq" in tensors
    module = hyena.build(cfg, nnx.Rngs(1))
    fill_module(module, hyena.convert_hf(TensorSource(tensors), cfg))
    ids = np.random.default_rng(0).integers(4, 12, size=(2, 77)).astype(np.int32)
    with torch.inference_mode():
        ref = peer(torch.from_numpy(ids).long()).numpy()
    assert rel_err(np.asarray(Jitted(module).forward(ids)), ref) <= 1e-5


def test_incremental_decoding_matches_forward(gmodel, gjit, gcase):
    """Stepping one token at a time gives the full forward's log-probs at every position."""
    ids = gcase.inputs["input_ids"][:, :-1]  # decoding prefixes carry no trailing [SEP]
    full = np.asarray(jax.nn.log_softmax(gjit.forward(ids), axis=-1))
    cache = gmodel.module.init_cache(ids.shape[0], MAX_LEN)
    assert all(leaf.shape[0] == 3 for leaf in jax.tree_util.tree_leaves(cache))
    outs = []
    for t in range(ids.shape[1]):
        logits, cache = gjit.step(cache, ids[:, t])
        assert logits.shape == (3, 16) and logits.dtype == jnp.float32
        outs.append(np.asarray(jax.nn.log_softmax(logits, axis=-1)))
    np.testing.assert_allclose(np.stack(outs, 1), full, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(np.asarray(cache["pos"]), [40, 40, 40])

    # an empty prefill is the empty cache
    logits, empty = gmodel.module.prefill(jnp.zeros((3, 0), jnp.int32), MAX_LEN)
    assert logits.shape == (3, 0, 16)
    for a, b in zip(jax.tree_util.tree_leaves(empty), jax.tree_util.tree_leaves(
            gmodel.module.init_cache(3, MAX_LEN)), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    # prefill over a prefix, then steps, gives the same
    logits, cache = gjit.prefill(ids[:, :25], MAX_LEN)
    np.testing.assert_allclose(np.asarray(jax.nn.log_softmax(logits, -1)), full[:, :25], atol=1e-5, rtol=0)
    for t in range(25, ids.shape[1]):
        logits, cache = gjit.step(cache, ids[:, t])
        np.testing.assert_allclose(np.asarray(jax.nn.log_softmax(logits, -1)), full[:, t], atol=1e-5, rtol=0)


def test_shared_decode_checks(gmodel):
    """The causal-family decoding checks (per-row positions, gathering, prefill) on the golden model."""
    check_decode(gmodel.module, vocab_size=12, max_len=12)


def test_gathered_cache_steps_like_the_originals(gjit, gcase):
    ids = gcase.inputs["input_ids"][:, :-1]
    _, cache = gjit.prefill(ids[:, :30], MAX_LEN)
    rows = np.asarray([2, 0, 0, 1, 2])
    gathered = jax.tree_util.tree_map(lambda x: x[rows], cache)
    ref_logits, ref_cache = gjit.step(cache, ids[:, 30])
    got_logits, got_cache = gjit.step(gathered, ids[rows, 30])
    np.testing.assert_allclose(np.asarray(got_logits), np.asarray(ref_logits)[rows], atol=1e-6, rtol=0)
    for a, b in zip(jax.tree_util.tree_leaves(got_cache),
                    jax.tree_util.tree_leaves(jax.tree_util.tree_map(lambda x: x[rows], ref_cache)), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=0)
    # the next step feeds a different token to each row (children of a shared parent differ)
    nxt = np.asarray([7, 8, 9, 10, 11], np.int32)
    got2, _ = gjit.step(got_cache, nxt)
    ext = np.concatenate([ids[rows, :31], nxt[:, None]], axis=1)
    np.testing.assert_allclose(np.asarray(got2), np.asarray(gjit.forward(ext))[:, -1], atol=1e-5, rtol=0)


def test_fresh_model_save_load_and_limits(tmp_path):
    model = gm.build("hyenadna", seed=3)
    cfg = model.config
    f = model.module.layers[0].mixer.filter_fn
    z, t = hyena.positional_features(cfg.max_seq_len, cfg.emb_dim)
    np.testing.assert_array_equal(np.asarray(f.z.value), z)
    np.testing.assert_array_equal(np.asarray(f.t.value), t)
    np.testing.assert_array_equal(np.asarray(f.deltas.value), hyena.modulation_deltas(cfg.d_model))
    np.testing.assert_array_equal(np.asarray(f.freq.value), np.full(cfg.filter_order, 10.0, np.float32))
    ids = model.tokenizer.encode("ACGTNACGTTGCA")[None]
    logits = np.asarray(model.logits(ids))
    assert logits.shape == (1, 14, 16) and np.isfinite(logits).all()
    gm.save(model, tmp_path / "m")
    again = gm.load(tmp_path / "m")
    np.testing.assert_array_equal(np.asarray(again.logits(ids)), logits)
    with pytest.raises(SequenceError, match="context"):
        model.module(jnp.zeros((1, cfg.max_len + 1), jnp.int32))
    with pytest.raises(ConfigError):
        model.module.init_cache(2, cfg.max_len + 1)


def test_bf16_compute_close_to_fp32(gmodel, gcase):
    ids = gcase.inputs["input_ids"]
    bf = gm.load(gcase.dir, dtype="bfloat16")
    assert bf.config.dtype == "bfloat16"
    lp32 = jax.nn.log_softmax(gmodel.logits(ids), -1)
    lp16 = jax.nn.log_softmax(bf.logits(ids), -1)
    assert float(jnp.abs(lp16 - lp32).max()) < 0.05


def test_config_presets_and_validation():
    small = hyena.HyenaConfig.preset("small-32k")
    assert (small.d_model, small.n_layer, small.d_inner, small.max_len) == (256, 4, 1024, 32770)
    assert hyena.HyenaConfig.preset("tiny-1k").max_len == 1026 and hyena.HyenaConfig.preset("tiny-1k").d_model == 128
    assert [hyena.HyenaConfig.preset(n).n_layer for n in ("medium-160k", "medium-450k", "large-1m")] == [8, 8, 8]
    assert hyena.HyenaConfig.preset("large-1m").max_len == 1000002
    assert hyena.HyenaConfig.preset("tiny") == hyena.HyenaConfig.tiny()
    with pytest.raises(ConfigError, match="preset"):
        hyena.HyenaConfig.preset("huge")
    with pytest.raises(ConfigError, match="order"):
        hyena.HyenaConfig.from_hf({"hyena_order": 3})
    with pytest.raises(ConfigError, match="emb_dim"):
        hyena.HyenaConfig(emb_dim=4)
    assert hyena.detect({"model_type": "hyenadna"}) and hyena.detect({"architectures": ["HyenaDNAForCausalLM"]})
    assert not hyena.detect({"model_type": "llama"})


def test_bench_smoke_runs(capsys):
    """The benchmark's --smoke run (in-process: the script is importable) reports both peers."""
    spec = importlib.util.spec_from_file_location("bench_forward_hyena", ROOT / "scripts" / "bench_forward_hyena.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    report = bench.main(["--smoke", "--dtypes", "float32", "--iters", "1", "--warmup", "1", "--copy-mib", "4"])
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(report))
    (row,) = report["results"]
    assert row["glmjax"]["tokens_per_s"] > 0 and row["torch"]["eager"]["tokens_per_s"] > 0
    assert row["max_abs_logp_diff_vs_torch"] < 1e-4
    assert report["copy_bandwidth_bytes_per_s"]["jax"] > 0
