"""Evo 1 (StripedHyena) and Evo 2 (StripedHyena 2): golden parity through the project's loader,
the published checkpoint layouts, recurrent decoding, published configs and presets."""

from __future__ import annotations

import dataclasses
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from causal_lm_checks import check_decode, param_count
from conftest import SHARED, GoldenCase, rel_err
from flax import nnx

import glmjax.models as gm
from glmjax import alphabet
from glmjax.errors import CheckpointError, ConfigError, SequenceError
from glmjax.models import evo

TOL = 1e-4  # the golden cases' tolerance (fp32, FFT convolutions)
CASES = ("evo1", "evo2")
PREFILL = {"evo1": 2, "evo2": 6}  # the reference's recurrent fixtures prefill this many tokens


@pytest.fixture(scope="module", params=CASES)
def golden_pair(request):
    case = GoldenCase(request.param)
    return request.param, case, gm.load(case.dir)


def _jit(module):
    graphdef, state = nnx.split(module)
    step = jax.jit(lambda st, cache, tok: nnx.merge(graphdef, st).decode_step(cache, tok))
    prefill = jax.jit(lambda st, ids, n: nnx.merge(graphdef, st).prefill(ids, n), static_argnums=2)
    return state, step, prefill


def test_golden_logits_and_hidden_states(golden_pair):
    family, case, model = golden_pair
    assert model.family == family and model.objective == "causal"
    assert model.spec.architecture_class == "long-convolution"
    ids = case.inputs["input_ids"]
    logits = np.asarray(model.logits(ids))
    ref = case.outputs["logits"]
    assert logits.shape == ref.shape and logits.dtype == np.float32
    assert rel_err(logits, ref) <= TOL
    assert rel_err(logits, ref, ids != evo.PAD_ID) <= TOL
    hidden = np.asarray(model.module.hidden_states(jnp.asarray(ids)))
    assert rel_err(hidden, case.outputs["hidden_states_last"]) <= TOL


def test_golden_tokenizer(golden_pair):
    """The byte tokenizer reproduces the reference's ids (BOS for Evo 1 only, right pads of 1)."""
    family, case, model = golden_pair
    tok = model.tokenizer
    want = case.inputs["input_ids_before_masking"]
    ids, _, _ = tok.pad_batch([tok.encode_codes(alphabet.encode(s)) for s in case.inputs["sequences"]],
                              want.shape[1])
    np.testing.assert_array_equal(ids, want)
    assert (tok.bos_id == 0) == (family == "evo1") and tok.pad_id == 1 and tok.padding_side == "right"


def test_recurrent_matches_reference_and_parallel(golden_pair):
    """The reference's cached path (prefill, then teacher-forced steps) and our own from token 0."""
    family, case, model = golden_pair
    ids = case.inputs["input_ids"]
    b, length = ids.shape
    state, step, prefill = _jit(model.module)
    n0 = PREFILL[family]
    logits, cache = prefill(state, jnp.asarray(ids[:, :n0]), length)
    outs = [np.asarray(logits)]
    for t in range(n0, length):
        lg, cache = step(state, cache, jnp.asarray(ids[:, t]))
        outs.append(np.asarray(lg)[:, None])
    rec = np.concatenate(outs, axis=1)
    assert rel_err(rec, case.outputs["logits_recurrent"]) <= TOL
    assert rel_err(rec, case.outputs["logits"]) <= TOL
    # unlike the reference, the recurrent state is exact from an empty cache too
    cache = model.module.init_cache(b, length)
    outs = []
    for t in range(length):
        lg, cache = step(state, cache, jnp.asarray(ids[:, t]))
        outs.append(np.asarray(lg))
    assert rel_err(np.stack(outs, 1), case.outputs["logits"]) <= TOL
    # the cache does not grow with the position except for attention's keys/values
    sizes = {k: v.shape for k, v in cache["layers"][0].items()}
    assert all(s[1] <= 127 or k in ("k", "v") for k, s in sizes.items())


@pytest.mark.parametrize("family", CASES)
def test_decode_checks_on_tiny_models(family):
    """Per-row positions, gathering, prefill + decode on a fresh tiny model (fp32, 1e-5)."""
    check_decode(gm.build(family, seed=2).module, vocab_size=512, max_len=14)


def test_evo2_published_layouts(tmp_path):
    """The vortex yaml next to the torch state dict (weights_only), its split .pt.part files, the
    safetensors copy, and config.json + .pt all load to the same model."""
    case = GoldenCase("evo2")
    ids = case.inputs["input_ids"]
    ref = case.outputs["logits"]
    layouts = {
        "pt": {"config.yml": "config.yml", "model.pt": "evo2_tiny.pt"},
        "st": {"config.yml": "config.yml", "model.safetensors": "model.safetensors"},
        "json+pt": {"config.json": "config.json", "model.pt": "model.pt"},
    }
    for name, files in layouts.items():
        d = tmp_path / name
        d.mkdir()
        for src, dst in files.items():
            shutil.copyfile(case.dir / src, d / dst)
        assert gm.detect(d).name == "evo2"
        model = gm.load(d)
        assert rel_err(np.asarray(model.logits(ids)), ref) <= TOL, name
    parts = tmp_path / "parts"
    parts.mkdir()
    shutil.copyfile(case.dir / "config.yml", parts / "config.yml")
    blob = (case.dir / "model.pt").read_bytes()
    cuts = [0, 1000, len(blob) // 2, len(blob)]
    for i in range(3):
        (parts / f"evo2_tiny.pt.part{i}").write_bytes(blob[cuts[i]:cuts[i + 1]])
    assert rel_err(np.asarray(gm.load(parts).logits(ids)), ref) <= TOL


def test_evo2_torch_file_never_unpickles_code(tmp_path):
    import pickle

    case = GoldenCase("evo2")
    shutil.copyfile(case.dir / "config.yml", tmp_path / "config.yml")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(tmp_path / "model.pt", "wb") as f:
        pickle.dump({"x": Evil()}, f)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        gm.load(tmp_path)


def test_evo2_stored_rotary_buffer_is_used_and_saved(tmp_path):
    """vortex uses the stored inv_freq: a checkpoint whose buffer differs from the formula keeps
    it, through glmjax's own format too."""
    from safetensors.numpy import load_file, save_file

    case = GoldenCase("evo2")
    d = tmp_path / "m"
    d.mkdir()
    shutil.copyfile(case.dir / "config.yml", d / "config.yml")
    tensors = load_file(str(case.dir / "model.safetensors"))
    key = "blocks.3.inner_mha_cls.rotary_emb.inv_freq"
    tensors[key] = (tensors[key] * 1.01).astype(np.float32)
    save_file(tensors, str(d / "model.safetensors"))
    model = gm.load(d)
    np.testing.assert_array_equal(model.config.inv_freq(), tensors[key])
    ids = case.inputs["input_ids"]
    assert rel_err(np.asarray(model.logits(ids)), case.outputs["logits"]) > 1e-3
    gm.save(model, tmp_path / "saved")
    back = gm.load(tmp_path / "saved")
    assert back.config == model.config
    np.testing.assert_array_equal(np.asarray(back.logits(ids)), np.asarray(model.logits(ids)))


def test_evo1_checkpoint_errors(tmp_path):
    from safetensors.numpy import load_file, save_file

    case = GoldenCase("evo1")
    d = tmp_path / "m"
    d.mkdir()
    shutil.copyfile(case.dir / "config.json", d / "config.json")
    tensors = load_file(str(case.dir / "model.safetensors"))
    # a stored unembedding must be the tied embedding
    tensors["backbone.unembed.weight"] = tensors["backbone.embedding_layer.weight"].copy()
    save_file(tensors, str(d / "model.safetensors"))
    assert rel_err(np.asarray(gm.load(d).logits(case.inputs["input_ids"])), case.outputs["logits"]) <= TOL
    tensors["backbone.unembed.weight"] = tensors["backbone.unembed.weight"] + 1
    save_file(tensors, str(d / "model.safetensors"))
    with pytest.raises(CheckpointError, match="ties"):
        gm.load(d)
    del tensors["backbone.unembed.weight"], tensors["backbone.blocks.0.filter.poles"]
    save_file(tensors, str(d / "model.safetensors"))
    with pytest.raises(CheckpointError, match="filter.poles"):
        gm.load(d)


# ---------------------------------------------------------------------------------------------
# Published configurations


def _published():
    import yaml

    base = SHARED / "configs"
    if not base.exists():
        pytest.skip(f"{base} not available (the shared data folder is absent)")
    out = {"evo1-7b-131k": ("evo1", json.loads((base / "evo1/evo-1-131k-base/config.json").read_text())),
           "evo1-7b-8k": ("evo1", yaml.safe_load(
               (base / "evo1/evo-1-8k-base/evo-1-8k-base_inference.yml").read_text()))}
    for f in sorted((base / "evo2").glob("*/*.yml")):
        out[f.parent.name] = ("evo2", yaml.safe_load(f.read_text()))
    return out


def _formula_params(c: evo.EvoConfig) -> int:
    """Parameters of an Evo model written out from the architecture (independent of the module)."""
    d, s = c.hidden_size, c.state_size
    total = c.vocab_size * d + d  # tied embedding, final norm
    for kind in c.layers:
        total += 2 * d + 3 * d * c.inner_mlp_size  # norms, gated MLP
        if kind == "attn":
            total += 3 * d * d + c.qkv_proj_bias * 3 * d + d * d + c.mha_out_proj_bias * d
            continue
        total += 3 * d * d + c.proj_bias * 3 * d + d * d + c.hyena_out_proj_bias * d
        total += 3 * d * c.short_filter_length + c.short_filter_bias * 3 * d
        total += {"modal": d + 4 * d * s, "hcl": d + 2 * d * s,
                  "hcm": d + c.hcm_filter_groups * c.hcm_filter_length,
                  "hcs": c.hcs_filter_groups * c.hcs_filter_length}[kind]
    return total


def test_published_configs_build_abstractly_and_equal_the_presets():
    nominal = {"1b": 1e9, "7b": 7e9, "20b": 20e9, "40b": 40e9}
    for name, (family, raw) in _published().items():
        spec = gm.get_family(family)
        cfg = spec.config_cls.from_hf(raw)
        assert cfg == spec.config_cls.preset(name), name
        n = param_count(spec.build, cfg)
        assert n == _formula_params(cfg), name
        size = name.split("-")[1]
        # the names are nominal sizes (Evo 1 and Evo 2 7B: 6.45 / 6.48 B, Evo 2 1B: 1.11 B parameters)
        assert 0.85 * nominal[size] <= n <= 1.15 * nominal[size], (name, n)
        assert spec.detect(raw) and not gm.get_family("evo1" if family == "evo2" else "evo2").detect(raw)
    c = evo.Evo2Config.preset("evo2-40b-1m")
    assert (c.rotary_emb_base, c.rotary_emb_scaling_factor, c.max_len) == (1e6, 128.0, 1048576)
    assert [i for i, k in enumerate(c.layers) if k == "attn"] == [3, 10, 17, 24, 31, 35, 42, 49]
    assert any("FP8" in line for line in evo.notes(evo.Evo2Config.preset("evo2-1b-8k")))
    assert not evo.notes(evo.Evo1Config.preset("evo1-7b-8k"))


def test_config_validation_and_detection(tmp_path):
    with pytest.raises(ConfigError, match="listed as both"):
        evo.Evo2Config.from_hf({"hidden_size": 64, "num_layers": 2, "num_attention_heads": 4, "inner_mlp_size": 8,
                                "attn_layer_idxs": [0], "hcs_layer_idxs": [0, 1], "hcl_layer_idxs": []})
    with pytest.raises(ConfigError, match="in none of"):
        evo.Evo1Config.from_hf({"hidden_size": 64, "num_layers": 3, "num_attention_heads": 4, "state_size": 8,
                                "attn_layer_idxs": [0], "hyena_layer_idxs": [1]})
    with pytest.raises(ConfigError, match="hyena_filter_groups"):
        evo.Evo1Config.from_hf({"hidden_size": 64, "num_layers": 1, "num_attention_heads": 4, "state_size": 8,
                                "attn_layer_idxs": [], "hyena_layer_idxs": [0], "hyena_filter_groups": 4})
    with pytest.raises(ConfigError, match="other Evo generation"):
        evo.Evo1Config(layers=("hcl",))
    with pytest.raises(ConfigError, match="unknown preset"):
        evo.Evo2Config.preset("evo1-7b-8k")
    # StripedHyena's MLP rule when inner_mlp_size is null: round_up(int(2 d 4 / 3), multiple)
    c = evo.Evo1Config.from_hf({"hidden_size": 4096, "num_layers": 1, "num_attention_heads": 32, "state_size": 8,
                                "attn_layer_idxs": [], "hyena_layer_idxs": [0], "inner_mlp_size": None,
                                "inner_size_multiple_of": 16, "mlp_activation": "gelu"})
    assert c.inner_mlp_size == 10928
    # a folder holding only a published Evo 2 weight file name is recognised (config from the preset)
    (tmp_path / "evo2_7b_base.pt").write_bytes(b"")
    assert gm.detect(tmp_path).name == "evo2"
    from glmjax.commands.models import describe

    info = describe(tmp_path)
    assert info["family"] == "evo2" and info["context_length"] == 32768
    assert any("FP8" in line for line in info["notes"])
    assert info["parameters"] == _formula_params(evo.Evo2Config.preset("evo2-7b-8k"))


@pytest.mark.parametrize("family", CASES)
def test_fresh_model_limits_roundtrip_and_bf16(family, tmp_path):
    model = gm.build(family, seed=3)
    cfg = model.config
    ids = model.tokenizer.encode("ACGTNACGTTGCAAGT")[None]
    logits = np.asarray(model.logits(ids))
    assert logits.shape == (1, ids.shape[1], 512) and np.isfinite(logits).all()
    gm.save(model, tmp_path / "m")
    again = gm.load(tmp_path / "m")
    assert again.config == cfg
    np.testing.assert_array_equal(np.asarray(again.logits(ids)), logits)
    with pytest.raises(SequenceError, match="context"):
        model.module(jnp.zeros((1, cfg.max_len + 1), jnp.int32))
    with pytest.raises(ConfigError):
        model.module.init_cache(1, cfg.max_len + 1)
    bf = gm.build(family, dataclasses.replace(cfg, dtype="bfloat16"), seed=3)
    lp32 = jax.nn.log_softmax(jnp.asarray(logits), -1)
    lp16 = jax.nn.log_softmax(bf.logits(ids), -1)
    assert float(jnp.abs(lp16 - lp32).max()) < 0.05


@pytest.mark.parametrize("family", ["evo1", "evo2"])
def test_bench_forward_smoke_without_peer(family, capsys):
    """scripts/bench_forward.py --family evo* --smoke without --peer-src: glmjax alone is timed,
    the report says why there is no peer, and FLOPs/token = 2 x (every dense kernel + the tied
    head) + the attention products, counted here from the built module."""
    import importlib.util
    import sys
    from pathlib import Path

    from glmjax.models.checkpoints import param_paths

    path = Path(__file__).resolve().parents[1] / "scripts" / "bench_forward.py"
    spec = importlib.util.spec_from_file_location("bench_forward", path)
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench
    spec.loader.exec_module(bench)
    report = bench.main(["--family", family, "--smoke", "--dtype", "fp32", "--seq-tokens", "16", "--batch", "1",
                         "--iters", "1", "--warmup", "1", "--peak-n", "64"])
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(report))
    assert "--peer-src" in report["peer"]["error"] and "torch" not in report
    assert report["glmjax"]["tokens_per_s"] > 0
    cfg = (evo.Evo1Config if family == "evo1" else evo.Evo2Config).tiny()
    abstract = nnx.eval_shape(lambda: evo.build(cfg, nnx.Rngs(0)))
    kernels = sum(int(np.prod(shape)) for p, shape in param_paths(abstract).items() if p[-1] == "kernel")
    attention = sum(k == "attn" for k in cfg.layers) * 4 * 16 * cfg.hidden_size
    assert report["flops_per_token"] == 2 * (kernels + cfg.vocab_size * cfg.hidden_size) + attention
