"""Causal Mamba LM: transformers.MambaForCausalLM parity, decoding, padding, checkpoints, config."""

import dataclasses
import json

import numpy as np
import pytest
from causal_lm_checks import (
    check_decode,
    check_hf_parity,
    check_missing_tensor,
    check_orbax_roundtrip,
    check_padding,
    hf_logits,
    param_count,
)
from conftest import rel_err
from safetensors.numpy import load_file, save_file

import glmjax.models as gm
from glmjax.errors import CheckpointError, ConfigError
from glmjax.models.mamba import SPEC, MambaConfig, detect

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

HF_CONFIGS = {
    # tied head, auto dt rank
    "tied": dict(vocab_size=16, hidden_size=32, state_size=8, num_hidden_layers=2, conv_kernel=4, expand=2),
    # projection biases, no conv bias, odd sizes, explicit dt rank, untied head
    "untied": dict(vocab_size=24, hidden_size=20, state_size=5, num_hidden_layers=3, conv_kernel=3, expand=3,
                   time_step_rank=3, use_bias=True, use_conv_bias=False, tie_word_embeddings=False,
                   layer_norm_epsilon=1e-6),
}


def hf_mamba(name: str, seed: int = 0):
    """A transformers Mamba with every parameter randomised (A_log around log(1..N), D, norms...)."""
    torch.manual_seed(seed)
    model = transformers.MambaForCausalLM(transformers.MambaConfig(**HF_CONFIGS[name])).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if pname.endswith("A_log"):
                p.add_(0.3 * noise)
            elif pname.endswith(".D") or "norm" in pname:
                p.copy_(1.0 + 0.2 * noise)
            elif pname.endswith("dt_proj.bias"):
                p.add_(0.2 * noise)
            else:
                p.copy_(0.2 * noise)
    return model


@pytest.mark.parametrize("name", sorted(HF_CONFIGS))
def test_transformers_parity(name, tmp_path):
    hf = hf_mamba(name)
    check_hf_parity(hf, tmp_path, "mamba", rel_err)  # right-padded batch [4, 9] with its mask
    if name != "tied":
        return
    model = gm.load(tmp_path)
    assert model.spec.architecture_class == "state-space"
    # no mask, and left padding (the mask zeroes pads' inputs in both implementations)
    rng = np.random.default_rng(3)
    ids = rng.integers(0, hf.config.vocab_size, size=(4, 9)).astype(np.int32)
    mask = np.ones_like(ids, bool)
    ref = hf_logits(hf, ids, mask)
    assert rel_err(np.asarray(model.logits(ids)), ref) <= 1e-4
    mask[0, :6] = False
    mask[2, :1] = False
    assert rel_err(np.asarray(model.logits(ids, mask)), hf_logits(hf, ids, mask), mask) <= 1e-4


def test_left_padding_does_not_change_real_positions():
    model = gm.build("mamba", MambaConfig.tiny(), seed=1)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 16, size=(1, 9)).astype(np.int32)
    padded = np.concatenate([np.full((1, 5), 4, np.int32), ids], axis=1)
    mask = padded != 4
    mask[:, 5:] = True
    alone = np.asarray(model.logits(ids))
    assert rel_err(np.asarray(model.logits(padded, mask))[:, 5:], alone) <= 1e-5


def test_decode_and_prefill_match_forward():
    """Chunked full forward (chunk 4: several chunks) == prefill == token-by-token recurrence."""
    cfg = dataclasses.replace(MambaConfig.tiny(), scan_chunk=4)
    model = gm.build("mamba", cfg, seed=2)
    check_decode(model.module, cfg.vocab_size)
    cache = model.module.init_cache(2, 64)
    assert cache["conv"].shape == (2, cfg.n_layer, cfg.d_inner, cfg.d_conv)
    assert cache["ssm"].shape == (2, cfg.n_layer, cfg.d_inner, cfg.d_state)


def test_right_padding():
    model = gm.build("mamba", MambaConfig.tiny(), seed=4)
    check_padding(model.module, 16)


def test_bfloat16_compute_is_close_to_float32():
    rng = np.random.default_rng(7)
    ids = rng.integers(0, 16, size=(2, 40)).astype(np.int32)
    ref = np.asarray(gm.build("mamba", MambaConfig.tiny(), seed=8).logits(ids))
    half = gm.build("mamba", dataclasses.replace(MambaConfig.tiny(), dtype="bfloat16"), seed=8)
    out = np.asarray(half.logits(ids))
    assert out.dtype == np.float32 and np.isfinite(out).all()
    # bf16 matmuls (8-bit mantissa) around an fp32 scan: percent-level agreement, not parity
    assert rel_err(out, ref) <= 3e-2


def test_checkpoint_errors(tmp_path):
    hf = hf_mamba("tied")
    check_missing_tensor(hf, tmp_path / "a", "backbone.layers.1.mixer.A_log")
    # a tied head stored with different values is refused
    hf.save_pretrained(str(tmp_path / "b"))
    f = tmp_path / "b" / "model.safetensors"
    tensors = load_file(str(f))
    tensors["lm_head.weight"] = tensors["backbone.embeddings.weight"] + 1
    save_file(tensors, str(f), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="lm_head.weight"):
        gm.load(tmp_path / "b")


def test_original_mamba_ssm_layout(tmp_path):
    """mamba_ssm's own config (d_model, n_layer, ssm_cfg; vocab padded to 8) and 'embedding' key."""
    hf = hf_mamba("tied")
    hf.save_pretrained(str(tmp_path / "hf"))
    tensors = load_file(str(tmp_path / "hf" / "model.safetensors"))
    tensors["backbone.embedding.weight"] = tensors.pop("backbone.embeddings.weight")
    (tmp_path / "orig").mkdir()
    save_file(tensors, str(tmp_path / "orig" / "model.safetensors"), metadata={"format": "pt"})
    cfg = {"d_model": 32, "n_layer": 2, "vocab_size": 13, "pad_vocab_size_multiple": 8,
           "ssm_cfg": {"d_state": 8}, "rms_norm": True, "residual_in_fp32": True, "fused_add_norm": True}
    (tmp_path / "orig" / "config.json").write_text(json.dumps(cfg))
    assert detect(cfg) and not detect({"model_type": "caduceus", "d_model": 32, "n_layer": 2, "ssm_cfg": {}})
    model = gm.load(tmp_path / "orig")
    assert model.family == "mamba" and model.config.vocab_size == 16
    ids = np.random.default_rng(0).integers(0, 16, size=(2, 11)).astype(np.int32)
    ref = hf_logits(hf, ids, np.ones_like(ids, bool))
    assert rel_err(np.asarray(model.logits(ids)), ref) <= 1e-4


def test_config_roundtrip_presets_and_detection(tmp_path):
    hf_cfg = transformers.MambaConfig(**HF_CONFIGS["untied"]).to_dict()
    cfg = MambaConfig.from_hf(hf_cfg)
    assert (cfg.d_model, cfg.n_layer, cfg.d_state, cfg.d_conv, cfg.d_inner, cfg.time_step_rank) == (20, 3, 5, 3, 60, 3)
    assert cfg.bias and not cfg.conv_bias and not cfg.tie_embeddings and cfg.norm_eps == 1e-6
    assert MambaConfig.from_dict(cfg.to_dict()) == cfg
    assert detect(hf_cfg) and not detect({"model_type": "llama"})
    assert MambaConfig.from_hf(transformers.MambaConfig(hidden_size=40).to_dict()).time_step_rank == 3
    with pytest.raises(ConfigError, match="unknown Mamba preset"):
        MambaConfig.preset("huge")
    with pytest.raises(ConfigError, match="lacks 'num_hidden_layers'"):
        MambaConfig.from_hf({"model_type": "mamba", "hidden_size": 8, "vocab_size": 16})
    # parameter count of the benchmark shape equals transformers' for the same config
    ours = param_count(SPEC.build, MambaConfig.preset("d256-l16"))
    ref = transformers.MambaForCausalLM(transformers.MambaConfig(
        vocab_size=16, hidden_size=256, num_hidden_layers=16, state_size=16)).num_parameters()
    assert ours == ref
    tok = SPEC.tokenizer(MambaConfig.tiny(), None)
    assert tok.encode("ACGTN").tolist() == [2, 7, 8, 9, 10, 11] and tok.padding_side == "right"


def test_orbax_roundtrip(tmp_path):
    check_orbax_roundtrip("mamba", MambaConfig.tiny(), tmp_path / "m")
