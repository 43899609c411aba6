"""GPT-2 family: parity with transformers.GPT2LMHeadModel, incremental decoding, checkpoints, configs."""

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
from glmjax.models.gpt2 import GPT2, SPEC, GPT2Config, build

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

HF_CONFIGS = {
    # the GPT-2 defaults: tied head, gelu_new, sqrt(head_dim) scaling
    "tied": dict(vocab_size=16, n_embd=32, n_layer=2, n_head=4, n_positions=32),
    # untied head, custom MLP width, exact GELU, per-layer attention scaling
    "untied_scaled": dict(vocab_size=20, n_embd=48, n_layer=2, n_head=3, n_inner=80, n_positions=24,
                          activation_function="gelu", scale_attn_by_inverse_layer_idx=True,
                          tie_word_embeddings=False, layer_norm_epsilon=1e-6),
    # unscaled attention logits, ReLU
    "unscaled_relu": dict(vocab_size=16, n_embd=64, n_layer=2, n_head=8, n_positions=16,
                          activation_function="relu", scale_attn_weights=False),
}


def _hf_model(name: str, seed: int = 0):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(**HF_CONFIGS[name], bos_token_id=2, eos_token_id=2)
    model = transformers.GPT2LMHeadModel(cfg)
    randomize_torch(model, seed=seed)
    return model.eval()


@pytest.mark.parametrize("name", sorted(HF_CONFIGS))
def test_logits_match_transformers(name, tmp_path):
    check_hf_parity(_hf_model(name), tmp_path / "hf", "gpt2", rel_err)


def test_tied_checkpoint_has_no_head_and_loads(tmp_path):
    from safetensors.numpy import load_file

    hf = _hf_model("tied")
    hf.save_pretrained(str(tmp_path))
    assert "lm_head.weight" not in load_file(str(tmp_path / "model.safetensors"))
    model = glmjax.models.load(tmp_path)
    assert model.config.tie_word_embeddings and not hasattr(model.module, "lm_head")
    np.testing.assert_array_equal(np.asarray(model.module.wte.embedding[...]),
                                  hf.transformer.wte.weight.detach().numpy())


def test_from_hf_fields():
    cfg = GPT2Config.from_hf({"model_type": "gpt2", **HF_CONFIGS["untied_scaled"]})
    assert (cfg.inner_size, cfg.head_dim, cfg.max_len) == (80, 16, 24)
    assert cfg.scale_attn_by_inverse_layer_idx and not cfg.tie_word_embeddings
    assert GPT2Config.from_hf({"model_type": "gpt2", "vocab_size": 16, "n_embd": 32, "n_layer": 2,
                               "n_head": 4}).n_positions == 1024
    with pytest.raises(ConfigError, match="model_type"):
        GPT2Config.from_hf({"model_type": "llama"})
    with pytest.raises(ConfigError, match="activation"):
        GPT2Config.from_hf({"model_type": "gpt2", **HF_CONFIGS["tied"], "activation_function": "mish"})


def test_missing_tensor_is_named(tmp_path):
    check_missing_tensor(_hf_model("tied"), tmp_path, "transformer.h.0.attn.c_attn.bias")
    check_missing_tensor(_hf_model("untied_scaled"), tmp_path / "head", "lm_head.weight")


def test_orbax_roundtrip(tmp_path):
    check_orbax_roundtrip("gpt2", GPT2Config.tiny(), tmp_path / "m")


def test_decode_matches_forward():
    check_decode(build(GPT2Config.tiny(), nnx.Rngs(0)), 16)


def test_padding_and_empty_rows():
    check_padding(build(GPT2Config.tiny(), nnx.Rngs(1)), 16)


def test_cache_longer_than_positions_is_refused():
    module = build(GPT2Config.tiny(), nnx.Rngs(0))
    with pytest.raises(ConfigError, match="n_positions"):
        module.init_cache(2, GPT2Config.tiny().n_positions + 1)


def test_bf16_compute_keeps_fp32_logits():
    check_bf16_keeps_fp32_logits("gpt2", GPT2Config.tiny(), rel_err)


def test_config_roundtrip_presets_and_registry():
    cfg = GPT2Config.tiny()
    check_registry_and_presets(SPEC, GPT2Config, build, "gpt2", "llama")
    assert GPT2Config.preset("small").max_len == 1024
    with pytest.raises(ConfigError, match="preset"):
        GPT2Config.preset("xl")
    with pytest.raises(ConfigError, match="divisible"):
        GPT2Config(n_embd=30, n_head=4)
    module = build(cfg, nnx.Rngs(0))
    assert isinstance(module, GPT2)
    block = module.h[0]
    assert all(hasattr(block.attn, n) or hasattr(block.mlp, n) for n in SPEC.lora_targets)
    np.testing.assert_array_equal(glmjax.models.build("gpt2").tokenizer.encode("ACGTN"), [2, 7, 8, 9, 10, 11])
