"""Llama family: parity with transformers.LlamaForCausalLM, incremental decoding, checkpoints, configs."""

from __future__ import annotations

import numpy as np
import pytest
from causal_lm_checks import (
    check_bf16_keeps_fp32_logits,
    check_decode,
    check_hf_parity,
    check_missing_tensor,
    check_orbax_roundtrip,
    check_padding,
    check_registry_and_presets,
    randomize_torch,
)
from conftest import rel_err
from flax import nnx

import glmjax.models
from glmjax.errors import ConfigError
from glmjax.models.llama import SPEC, Llama, LlamaConfig, build

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

HF_CONFIGS = {
    # multi-head attention, untied head, default rope
    "mha": dict(vocab_size=16, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=4, rms_norm_eps=1e-6),
    # GQA, tied head, explicit head_dim != hidden/heads, biases, large theta
    "gqa_tied_bias": dict(vocab_size=24, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                          num_attention_heads=6, num_key_value_heads=2, head_dim=16, attention_bias=True,
                          mlp_bias=True, tie_word_embeddings=True, rms_norm_eps=1e-5,
                          rope_parameters={"rope_type": "default", "rope_theta": 500000.0}),
    # MQA with Llama 3.1 rope scaling (short original context: both the divided and the smoothed bands)
    "mqa_llama3": dict(vocab_size=16, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=64,
                       rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 4.0,
                                        "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                        "original_max_position_embeddings": 8}),
}


def _hf_model(name: str, seed: int = 0):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(**HF_CONFIGS[name])
    model = transformers.LlamaForCausalLM(cfg)
    randomize_torch(model, seed=seed)
    return model.eval()


@pytest.mark.parametrize("name", sorted(HF_CONFIGS))
def test_logits_match_transformers(name, tmp_path):
    check_hf_parity(_hf_model(name), tmp_path / "hf", "llama", rel_err)


def test_from_hf_reads_rope_and_shapes(tmp_path):
    hf = _hf_model("mqa_llama3")
    hf.save_pretrained(str(tmp_path))
    model = glmjax.models.load(tmp_path)
    cfg = model.config
    assert (cfg.kv_heads, cfg.head_size, cfg.rope_type, cfg.rope_factor) == (1, 16, "llama3", 4.0)
    assert cfg.rope_original_max_position_embeddings == 8 and cfg.max_len == 64
    # the rotary frequencies are HF's own
    np.testing.assert_allclose(cfg.inv_freq(), hf.model.rotary_emb.inv_freq.numpy(), rtol=1e-6)
    # legacy config.json layout: top-level rope_theta, rope_scaling with "type"
    legacy = {"model_type": "llama", "vocab_size": 16, "hidden_size": 32, "intermediate_size": 64,
              "num_hidden_layers": 2, "num_attention_heads": 4, "rope_theta": 123.0,
              "rope_scaling": {"type": "linear", "factor": 2.0}}
    c = LlamaConfig.from_hf(legacy)
    assert (c.rope_theta, c.rope_type, c.rope_factor, c.kv_heads) == (123.0, "linear", 2.0, 4)
    with pytest.raises(ConfigError, match="model_type"):
        LlamaConfig.from_hf({**legacy, "model_type": "mistral"})
    with pytest.raises(ConfigError, match="rope type"):
        LlamaConfig.from_hf({**legacy, "rope_scaling": {"type": "yarn", "factor": 2.0}})


def test_linear_rope_matches_transformers(tmp_path):
    cfg = dict(HF_CONFIGS["mha"], rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 3.0})
    torch.manual_seed(1)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg))
    randomize_torch(hf, seed=1)
    check_hf_parity(hf, tmp_path / "hf", "llama", rel_err, seed=2)


def test_missing_tensor_is_named(tmp_path):
    check_missing_tensor(_hf_model("mha"), tmp_path, "model.layers.1.mlp.up_proj.weight")
    check_missing_tensor(_hf_model("mha"), tmp_path / "head", "lm_head.weight")


def test_orbax_roundtrip(tmp_path):
    check_orbax_roundtrip("llama", LlamaConfig.tiny(), tmp_path / "m")


def test_decode_matches_forward():
    module = build(LlamaConfig.tiny(), nnx.Rngs(0))
    check_decode(module, 16)


def test_padding_and_empty_rows():
    check_padding(build(LlamaConfig.tiny(), nnx.Rngs(1)), 16)


def test_bf16_compute_keeps_fp32_logits():
    check_bf16_keeps_fp32_logits("llama", LlamaConfig.tiny(), rel_err)


def test_config_roundtrip_presets_and_registry():
    cfg = LlamaConfig.tiny()
    check_registry_and_presets(SPEC, LlamaConfig, build, "llama", "gpt2")
    assert LlamaConfig.preset("100m").max_len == 2048
    with pytest.raises(ConfigError, match="preset"):
        LlamaConfig.preset("huge")
    with pytest.raises(ConfigError, match="num_key_value_heads"):
        LlamaConfig(num_attention_heads=4, num_key_value_heads=3)
    # every LoRA target names a linear layer of the module
    module = build(cfg, nnx.Rngs(0))
    layer = module.layers[0]
    for name in SPEC.lora_targets:
        owner = layer.self_attn if hasattr(layer.self_attn, name) else layer.mlp
        assert hasattr(owner, name), name
    assert isinstance(module, Llama)
    model = glmjax.models.build("llama")
    ids = model.tokenizer.encode("ACGTN")
    np.testing.assert_array_equal(ids, [2, 7, 8, 9, 10, 11])
