"""Nucleotide Transformer v1/v2: parity with transformers' EsmForMaskedLM (random configs, loaded
through glmjax.models.load from save_pretrained folders) and with the golden nt_v1 / nt_v2 cases."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import rel_err
from flax import nnx
from safetensors.numpy import save_file

import glmjax.models as models
from glmjax.errors import CheckpointError, ConfigError, SequenceError
from glmjax.models.joblib_io import read_joblib_arrays
from glmjax.models.nt import SPEC, NTConfig

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def _perturb(model, seed: int) -> None:
    """Re-draw every parameter so that biases, LayerNorms and the LM head all matter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("LayerNorm.weight") or ("layer_norm" in name and name.endswith("weight")):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
            elif "embeddings" in name:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.08 * torch.randn(p.shape, generator=g))


def _inputs(seed: int, vocab: int, lengths: list[int], length: int, masks: int = 2):
    """Right-padded NT-style ids: <cls>, random 6-mers, some <mask> tokens, <pad>=1 after the end."""
    rng = np.random.default_rng(seed)
    ids = np.ones((len(lengths), length), np.int64)
    att = np.zeros((len(lengths), length), np.int64)
    for i, n in enumerate(lengths):
        ids[i, 0] = 3
        ids[i, 1:n] = rng.integers(4, vocab - 5, n - 1)
        att[i, :n] = 1
        if masks and n > 3:
            ids[i, rng.choice(np.arange(1, n), size=min(masks, n - 2), replace=False)] = 2
    return ids, att


HF_CASES = [
    # (EsmConfig kwargs, how to save, seed)
    (dict(vocab_size=4105, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
          max_position_embeddings=40, token_dropout=True, layer_norm_eps=1e-12), "safetensors", 1),
    (dict(vocab_size=4105, hidden_size=48, num_hidden_layers=3, num_attention_heads=6, intermediate_size=96,
          max_position_embeddings=34, token_dropout=False, emb_layer_norm_before=True, layer_norm_eps=1e-5),
     "sharded", 2),
    (dict(vocab_size=4107, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=80,
          max_position_embeddings=66, token_dropout=True, position_embedding_type="rotary", layer_norm_eps=1e-12),
     "bin", 3),
]


@pytest.mark.parametrize("kwargs,fmt,seed", HF_CASES, ids=["v1-safetensors", "v1-lnbefore-sharded", "rotary-bin"])
def test_logits_match_transformers_esm(tmp_path, kwargs, fmt, seed):
    torch.manual_seed(seed)
    cfg = transformers.EsmConfig(pad_token_id=1, mask_token_id=2, tie_word_embeddings=False,
                                 attention_probs_dropout_prob=0.0, hidden_dropout_prob=0.0, **kwargs)
    ref = transformers.EsmForMaskedLM(cfg).eval()
    _perturb(ref, seed)
    if fmt == "bin":
        cfg.save_pretrained(tmp_path)
        torch.save(ref.state_dict(), tmp_path / "pytorch_model.bin")
    else:
        ref.save_pretrained(tmp_path, **({"max_shard_size": "100KB"} if fmt == "sharded" else {}))
    if fmt == "sharded":
        assert (tmp_path / "model.safetensors.index.json").exists()

    model = models.load(tmp_path)
    assert model.family == "nt" and model.objective == "masked"
    assert model.config.version == (2 if kwargs.get("position_embedding_type") == "rotary" else 1)

    length = min(cfg.max_position_embeddings - 2, 24)
    ids, att = _inputs(seed, cfg.vocab_size, [length, length - 7, 5, length - 1], length)
    with torch.no_grad():
        want = ref(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(att)).logits.numpy()
    got = np.asarray(model.logits(ids, att.astype(bool)))
    assert got.shape == want.shape and got.dtype == np.float32
    real = att.astype(bool)
    assert rel_err(got, want, real) <= 1e-4


def test_hf_decoder_tied_to_embeddings(tmp_path):
    """A checkpoint without lm_head.decoder.weight and tie_word_embeddings=true reuses the embedding."""
    cfg = NTConfig.tiny()
    m = models.build("nt", cfg, seed=3)
    golden_like = {}
    rng = np.random.default_rng(0)
    from glmjax.models.checkpoints import param_paths

    for path, shape in param_paths(m.module).items():
        golden_like[path] = rng.normal(0, 0.1, shape).astype(np.float32)
    # write the HF layout by inverting the converter's mapping on a state dict of known values
    hf = _to_hf_keys(golden_like, cfg)
    hf.pop("lm_head.decoder.weight")
    conf = _hf_config(cfg, tie_word_embeddings=True)
    (tmp_path / "config.json").write_text(json.dumps(conf))
    save_file(hf, str(tmp_path / "model.safetensors"))
    loaded = models.load(tmp_path)
    from glmjax.models.checkpoints import param_paths as pp

    state = {k: np.asarray(v) for k, v in _flat_params(loaded.module).items()}
    assert set(state) == set(pp(loaded.module))
    np.testing.assert_array_equal(state[("lm_decoder", "kernel")], golden_like[("embed", "embedding")].T)


def _flat_params(module) -> dict:
    flat = nnx.to_flat_state(nnx.state(module, nnx.Param))
    return {tuple(k): v.value for k, v in flat}


def _hf_config(cfg: NTConfig, **extra) -> dict:
    return {"model_type": "esm", "architectures": ["EsmForMaskedLM"], "vocab_size": cfg.vocab_size,
            "hidden_size": cfg.hidden_size, "num_hidden_layers": cfg.num_layers,
            "num_attention_heads": cfg.num_heads, "intermediate_size": cfg.intermediate_size,
            "max_position_embeddings": cfg.max_position_embeddings, "layer_norm_eps": cfg.layer_norm_eps,
            "token_dropout": cfg.token_dropout, "pad_token_id": 1, "mask_token_id": 2,
            "position_embedding_type": "absolute" if cfg.position_embedding == "learned" else "rotary",
            "emb_layer_norm_before": cfg.emb_layer_norm_before, **extra}


def _to_hf_keys(flat: dict, cfg: NTConfig) -> dict:
    """glmjax flat params -> HF EsmForMaskedLM state-dict names (torch Linear: [out, in])."""
    out = {"esm.embeddings.word_embeddings.weight": flat[("embed", "embedding")],
           "esm.encoder.emb_layer_norm_after.weight": flat[("final_ln", "scale")],
           "esm.encoder.emb_layer_norm_after.bias": flat[("final_ln", "bias")],
           "lm_head.dense.weight": flat[("lm_dense", "kernel")].T, "lm_head.dense.bias": flat[("lm_dense", "bias")],
           "lm_head.layer_norm.weight": flat[("lm_ln", "scale")], "lm_head.layer_norm.bias": flat[("lm_ln", "bias")],
           "lm_head.decoder.weight": flat[("lm_decoder", "kernel")].T, "lm_head.bias": flat[("lm_bias",)]}
    if cfg.position_embedding == "learned":
        out["esm.embeddings.position_embeddings.weight"] = flat[("pos_embed", "embedding")]
    names = {"query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value",
             "attn_out": "attention.output.dense", "fc1": "intermediate.dense", "fc2": "output.dense"}
    for i in range(cfg.num_layers):
        p = f"esm.encoder.layer.{i}."
        for ours, theirs in names.items():
            out[p + theirs + ".weight"] = flat[("layers", i, ours, "kernel")].T
            if ("layers", i, ours, "bias") in flat:
                out[p + theirs + ".bias"] = flat[("layers", i, ours, "bias")]
        for ours, theirs in (("attn_ln", "attention.LayerNorm"), ("ffn_ln", "LayerNorm")):
            out[p + theirs + ".weight"] = flat[("layers", i, ours, "scale")]
            out[p + theirs + ".bias"] = flat[("layers", i, ours, "bias")]
    return {k: np.ascontiguousarray(v, np.float32) for k, v in out.items()}


# ---------------------------------------------------------------------------------------------
# Golden cases (official implementations' outputs)

def _check_golden(model, case, mask_from_ids: bool):
    ids = case.inputs["input_ids"]
    att = case.inputs.get("attention_mask")
    real = ids != 1
    logits = np.asarray(model.logits(ids, None if mask_from_ids else att.astype(bool)))
    assert logits.shape == case.outputs["logits"].shape
    assert rel_err(logits, case.outputs["logits"], real) <= 1e-4
    graphdef, state = nnx.split(model.module)
    hidden = np.asarray(jax.jit(lambda st, x: nnx.merge(graphdef, st).encode(x))(state, ids))
    assert rel_err(hidden, case.outputs["hidden_states_last"], real) <= 1e-4
    return logits


def test_golden_nt_v1_through_loader(golden):
    case = golden("nt_v1")
    model = models.load(case.dir)
    assert model.config.version == 1 and model.config.position_embedding == "learned"
    assert model.config.token_dropout and model.config.layer_norm_eps == 1e-12
    assert (case.inputs["input_ids"] == 2).any()  # token dropout is exercised
    _check_golden(model, case, mask_from_ids=False)
    np.testing.assert_array_equal(model.tokenizer.encode(str(case.inputs["sequences"][0])),
                                  case.inputs["input_ids_before_masking"][0][case.inputs["attention_mask"][0] == 1])


def test_golden_nt_v2_official_jax_checkpoint(golden):
    case = golden("nt_v2")
    with pytest.raises(CheckpointError, match=r"pickle.*trust_pickle=True.*--trust-pickle"):
        models.load(case.dir)
    model = models.load(case.dir, trust_pickle=True)
    cfg = model.config
    assert (cfg.version, cfg.position_embedding, cfg.ffn_glu, cfg.ffn_bias) == (2, "rotary", True, False)
    assert cfg.layer_norm_eps == 1e-5 and cfg.vocab_size == 4107 and cfg.max_len == 64
    logits = _check_golden(model, case, mask_from_ids=True)
    assert np.all(logits[case.inputs["input_ids"] == 1] == 0.0)  # pads zeroed like the reference


def test_golden_nt_v2_hf_port_layout(golden, tmp_path):
    """The v2 PyTorch port (remote code, add_bias_fnn=false, no model_type) loads and matches."""
    case = golden("nt_v2")
    params = read_joblib_arrays(case.dir / "pytree_ckpt.joblib", trust_pickle=True)
    g = {k.replace("esm_transformer", ""): v for k, v in params.items()}
    sd = {"esm.embeddings.word_embeddings.weight": g["/~/embed"]["embeddings"]}
    for i in range(2):
        p, a = f"esm.encoder.layer.{i}.", f"/attention_layer_{i}/~/"
        for hf, jx in (("attention.self.query", "mha/query"), ("attention.self.key", "mha/key"),
                       ("attention.self.value", "mha/value"), ("attention.output.dense", "mha/mha_output")):
            sd[p + hf + ".weight"] = g[a + jx]["w"].T
            sd[p + hf + ".bias"] = g[a + jx]["b"]
        sd[p + "attention.LayerNorm.weight"] = g[a + "mha_layer_norm"]["scale"]
        sd[p + "attention.LayerNorm.bias"] = g[a + "mha_layer_norm"]["offset"]
        sd[p + "intermediate.dense.weight"] = g[a + "fc1"]["w"].T
        sd[p + "output.dense.weight"] = g[a + "fc2"]["w"].T
        sd[p + "LayerNorm.weight"] = g[a + "final_layer_norm"]["scale"]
        sd[p + "LayerNorm.bias"] = g[a + "final_layer_norm"]["offset"]
        sd[p + "attention.self.rotary_embeddings.inv_freq"] = np.zeros(4, np.float32)  # ignored buffer
    h = "/~/esm_roberta_lm_head/~/"
    sd.update({"esm.encoder.emb_layer_norm_after.weight": g[h + "emb_layer_norm_after"]["scale"],
               "esm.encoder.emb_layer_norm_after.bias": g[h + "emb_layer_norm_after"]["offset"],
               "lm_head.dense.weight": g[h + "lm_head_fc_1"]["w"].T, "lm_head.dense.bias": g[h + "lm_head_fc_1"]["b"],
               "lm_head.layer_norm.weight": g[h + "lm_head_layer_norm"]["scale"],
               "lm_head.layer_norm.bias": g[h + "lm_head_layer_norm"]["offset"],
               "lm_head.decoder.weight": g[h + "lm_final_fc"]["w"].T, "lm_head.bias": g[h + "lm_final_fc"]["b"],
               # unused by the rotary model, present in the published port
               "esm.embeddings.position_embeddings.weight": np.zeros((66, 32), np.float32),
               "esm.contact_head.regression.weight": np.zeros((1, 8), np.float32),
               "esm.contact_head.regression.bias": np.zeros((1,), np.float32)})
    save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, str(tmp_path / "model.safetensors"))
    conf = {"add_bias_fnn": False, "architectures": ["EsmForMaskedLM"],
            "auto_map": {"AutoConfig": "esm_config.EsmConfig", "AutoModelForMaskedLM": "modeling_esm.EsmForMaskedLM"},
            "hidden_size": 32, "intermediate_size": 64, "layer_norm_eps": 1e-5, "mask_token_id": 2,
            "max_position_embeddings": 66, "num_attention_heads": 4, "num_hidden_layers": 2, "pad_token_id": 1,
            "position_embedding_type": "rotary", "tie_word_embeddings": False, "token_dropout": False,
            "vocab_size": 4107}
    (tmp_path / "config.json").write_text(json.dumps(conf))
    model = models.load(tmp_path)
    assert (model.config.version, model.config.ffn_glu, model.config.ffn_bias) == (2, True, False)
    ids = case.inputs["input_ids"]
    assert rel_err(np.asarray(model.logits(ids)), case.outputs["logits"], ids != 1) <= 1e-4


# ---------------------------------------------------------------------------------------------
# Configs

def test_config_roundtrip_and_presets():
    for name in ("tiny", "tiny-v2", "v1-500m", "v1-2.5b", "v2-50m", "v2-100m", "v2-250m", "v2-500m"):
        cfg = NTConfig.preset(name)
        assert NTConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    v1 = NTConfig.preset("v1-500m")
    assert (v1.num_layers, v1.hidden_size, v1.num_heads, v1.intermediate_size, v1.vocab_size, v1.max_len) == \
        (24, 1280, 20, 5120, 4105, 1000)
    v2 = NTConfig.preset("v2-100m")
    assert (v2.num_layers, v2.hidden_size, v2.num_heads, v2.intermediate_size, v2.vocab_size, v2.max_len) == \
        (22, 512, 16, 2048, 4107, 2048)
    with pytest.raises(ConfigError, match="unknown NT preset"):
        NTConfig.preset("v3")
    with pytest.raises(ConfigError, match="protein ESM"):
        NTConfig.from_hf({"model_type": "esm", "vocab_size": 33, "hidden_size": 32, "num_hidden_layers": 1,
                          "num_attention_heads": 4, "intermediate_size": 64})


def test_preset_parameter_count_matches_published():
    """The hub lists the v2-50m port at 55.9M parameters, which include the unused absolute
    position table (2050 x d) and the contact head (layers * heads + 1)."""
    cfg, published = NTConfig.preset("v2-50m"), 55.9e6
    abstract = nnx.eval_shape(lambda: SPEC.build(cfg, nnx.Rngs(0)))
    ours = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(nnx.state(abstract, nnx.Param)))
    hub = ours + cfg.max_position_embeddings * cfg.hidden_size + cfg.num_layers * cfg.num_heads + 1
    assert round(hub / 1e5) == round(published / 1e5)


def test_detect_hf_configs():
    assert SPEC.detect({"model_type": "esm"})
    assert SPEC.detect({"auto_map": {"AutoConfig": "InstaDeepAI/nt--esm_config.EsmConfig"}})
    assert not SPEC.detect({"model_type": "esm", "is_folding_model": True})
    assert not SPEC.detect({"model_type": "bert"})


def test_too_long_input_is_a_clear_error():
    model = models.build("nt", NTConfig.tiny())
    ids = np.full((1, model.config.max_len + 1), 5, np.int32)
    with pytest.raises(SequenceError, match="64-token context"):
        model.logits(ids)


def test_bf16_compute_tracks_fp32():
    cfg = NTConfig.tiny(2)
    m32 = models.build("nt", cfg, seed=5)
    m16 = models.build("nt", NTConfig.from_dict({**cfg.to_dict(), "dtype": "bfloat16"}), seed=5)
    ids, att = _inputs(0, 4107, [20, 12], 20)
    a = np.asarray(m32.logits(ids, att.astype(bool)))
    b = np.asarray(m16.logits(ids, att.astype(bool)))
    assert b.dtype == np.float32
    assert rel_err(b, a, att.astype(bool)) < 3e-2


def test_padding_does_not_change_real_positions():
    model = models.build("nt", NTConfig.tiny(), seed=2)
    ids, att = _inputs(4, 4105, [12], 12)
    padded = np.concatenate([ids, np.ones((1, 9), ids.dtype)], axis=1)
    a = np.asarray(model.logits(ids))
    b = np.asarray(model.logits(padded))[:, :12]
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)


def test_bench_smoke_runs(capsys):
    """scripts/bench_forward.py --smoke: both sides hold the same weights (converted by glmjax's
    own converter), so fp32 per-token log p agree; FLOPs/token = 2 x kernel parameters + attention."""
    import importlib.util
    import sys
    from pathlib import Path

    from glmjax.models.checkpoints import param_paths

    path = Path(__file__).resolve().parents[1] / "scripts" / "bench_forward.py"
    spec = importlib.util.spec_from_file_location("bench_forward", path)
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # its dataclasses look their module up
    spec.loader.exec_module(bench)
    report = bench.main(["--smoke", "--dtype", "fp32", "--seq-tokens", "16", "--batch", "1", "--iters", "1",
                         "--warmup", "1", "--peak-n", "64"])
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(report))
    assert report["max_abs_logp_diff_vs_torch"] < 1e-4
    assert report["glmjax"]["tokens_per_s"] > 0 and report["torch"]["tokens_per_s"] > 0
    cfg = NTConfig.tiny()
    abstract = nnx.eval_shape(lambda: SPEC.build(cfg, nnx.Rngs(0)))
    kernels = sum(int(np.prod(shape)) for path, shape in param_paths(abstract).items() if path[-1] == "kernel")
    length = report["seq_tokens"]
    attention = cfg.num_layers * 4 * length * cfg.hidden_size
    assert report["flops_per_token"] == 2 * kernels + attention


def test_lora_on_default_targets():
    """LoRA wraps NT's linear layers (SPEC.lora_targets): no change at init (B = 0), a change once
    the adapters move, and merging gives the adapted model's logits."""
    from glmjax.train.lora import apply_lora, merge_lora

    model = models.build("nt", NTConfig.tiny(2), seed=6)
    ids, att = _inputs(1, 4107, [14, 9], 14)
    base = np.asarray(model.logits(ids, att.astype(bool)))
    adapted = apply_lora(model.module, SPEC.lora_targets, rank=2)
    assert len(adapted) == 6 * model.config.num_layers
    model.invalidate()
    np.testing.assert_allclose(np.asarray(model.logits(ids, att.astype(bool))), base, rtol=1e-6, atol=1e-6)
    rng = np.random.default_rng(0)
    for _path, var in nnx.to_flat_state(nnx.state(model.module, nnx.LoRAParam)):
        var.value = jax.numpy.asarray(rng.normal(0, 0.05, var.value.shape), jax.numpy.float32)
    model.invalidate()
    lora_logits = np.asarray(model.logits(ids, att.astype(bool)))
    assert np.abs(lora_logits - base).max() > 1e-3
    assert merge_lora(model.module) == len(adapted)
    model.invalidate()
    np.testing.assert_allclose(np.asarray(model.logits(ids, att.astype(bool))), lora_logits, rtol=1e-4, atol=1e-4)


def _exact_gelu(x64: np.ndarray) -> np.ndarray:
    """GELU in float64 from ``math.erfc`` (independent of scipy, which glmjax's table uses).

    ``erfc(-x / sqrt 2)`` rather than ``1 + erf(x / sqrt 2)``: the latter cancels in the negative
    tail (at x = -8 a few bits remain, where bf16 still represents the GELU)."""
    from math import erfc

    return np.array([v * 0.5 * erfc(-v / np.sqrt(2.0)) for v in x64])


def test_gelu_erf_matches_float64_exact_gelu():
    from glmjax.models.layers import gelu_erf

    x = np.linspace(-10, 10, 20001, dtype=np.float32)
    want = _exact_gelu(x.astype(np.float64))
    got = np.asarray(gelu_erf(jnp.asarray(x)), np.float64)
    assert np.abs(got - want).max() <= 3e-7 * max(1.0, np.abs(x).max())
    assert np.abs(got - want)[np.abs(x) <= 1].max() <= 3e-7


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_gelu_16bit_table_is_correctly_rounded_exact_gelu(dtype):
    """Every 16-bit input: the lookup returns the representable value nearest the float64 GELU."""
    from glmjax.models.layers import gelu_erf

    dt = np.dtype(jnp.dtype(dtype))
    with np.errstate(invalid="ignore", over="ignore"):
        x = np.arange(1 << 16, dtype=np.uint16).view(dt)
        x64 = x.astype(np.float64)
    got = np.asarray(jax.jit(gelu_erf)(jnp.asarray(x)))
    assert got.dtype == dt
    fin = np.isfinite(x64)
    assert np.isnan(got.astype(np.float64)[np.isnan(x64)]).all()
    want = _exact_gelu(x64[fin])
    g = got.astype(np.float64)[fin]
    assert np.isfinite(g).all()
    err = np.abs(g - want)
    # the neighbouring representable values (one bit pattern up and down) are no closer
    bits = got.view(np.uint16)[fin].astype(np.int64)
    for step in (-1, 1):
        nb = np.clip(bits + step, 0, 0xFFFF).astype(np.uint16).view(dt).astype(np.float64)
        ok = np.isfinite(nb) & (np.sign(nb) == np.sign(g))
        assert (err[ok] <= np.abs(nb[ok] - want[ok])).all()
    # and it is what the float32 formula gives, rounded, wherever float32 is accurate enough
    f32 = np.asarray(gelu_erf(jnp.asarray(x64[fin], jnp.float32))).astype(np.float64)
    with np.errstate(over="ignore"):
        ulp = np.abs(np.asarray(np.nextafter(g.astype(dt), np.asarray(np.inf, dt)), np.float64) - g)
    assert (np.abs(f32 - g) <= ulp + 1e-30)[np.abs(want) > 1e-3].all()


def test_gelu_16bit_gradient_is_the_exact_derivative():
    from math import erf as _erf
    from math import exp, pi, sqrt

    from glmjax.models.layers import gelu_erf

    xb = jnp.asarray(np.linspace(-6, 6, 301), jnp.bfloat16)
    got = jax.grad(lambda a: gelu_erf(a).astype(jnp.float32).sum())(xb)
    assert got.dtype == jnp.bfloat16
    # the derivative is taken at the bf16 input: compare against the float64 value at that point
    xv = np.asarray(xb, np.float64)
    exact = np.array([0.5 * (1 + _erf(v / sqrt(2))) + v * exp(-v * v / 2) / sqrt(2 * pi) for v in xv])
    assert np.abs(np.asarray(got, np.float64) - exact).max() <= 2 ** -8 * max(1.0, np.abs(exact).max())
    g32 = jax.grad(lambda a: gelu_erf(a).sum())(jnp.asarray(xv, jnp.float32))
    np.testing.assert_allclose(np.asarray(g32, np.float64), exact, atol=1e-6)
