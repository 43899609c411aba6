"""DNABERT-2: golden logit parity, padding independence, config/detection, checkpoint errors."""

import dataclasses
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import rel_err
from flax import nnx

import glmjax.models as gm
from glmjax import alphabet
from glmjax.errors import CheckpointError, ConfigError
from glmjax.models.dnabert2 import SPEC, DNABERT2Config, detect, packaged_tokenizer


@pytest.fixture(scope="module")
def case():
    from conftest import GoldenCase

    return GoldenCase("dnabert2")


@pytest.fixture(scope="module")
def model(case):
    return gm.load(case.dir)


def test_golden_logits_parity(case, model):
    assert model.family == "dnabert2" and model.objective == "masked"
    ids, mask = case.inputs["input_ids"], case.inputs["attention_mask"].astype(bool)
    logits = np.asarray(model.logits(ids, mask))
    assert logits.shape == case.outputs["logits"].shape and logits.dtype == np.float32
    assert rel_err(logits, case.outputs["logits"], mask) <= 1e-4
    hidden = np.asarray(model.module.encode(jnp.asarray(ids), jnp.asarray(mask)))
    assert rel_err(hidden, case.outputs["hidden_states_last"], mask) <= 1e-4
    # the reference writes zero hidden vectors at pads; so does glmjax
    assert np.all(hidden[~mask] == 0)


def test_golden_tokenizer_is_the_packaged_one(case, model):
    packaged = packaged_tokenizer()
    for seq, ref in zip(case.inputs["sequences"], case.inputs["input_ids_before_masking"], strict=True):
        ids = packaged.encode_codes(alphabet.encode(str(seq))).ids
        np.testing.assert_array_equal(ids, ref[: len(ids)])
        np.testing.assert_array_equal(model.tokenizer.encode(str(seq)), ids)
    assert packaged.vocab_size == 4096 and packaged.pad_id == 3 and packaged.mask_id == 4


def test_padding_independence(case, model):
    ids, mask = case.inputs["input_ids"], case.inputs["attention_mask"].astype(bool)
    width = ids.shape[1] + 5
    padded = np.full((ids.shape[0], width), model.tokenizer.pad_id, np.int32)
    pmask = np.zeros_like(padded, bool)
    padded[:, : ids.shape[1]], pmask[:, : ids.shape[1]] = ids, mask
    batch = np.asarray(model.logits(padded, pmask))
    for r in range(ids.shape[0]):
        n = int(mask[r].sum())
        alone = np.asarray(model.logits(ids[r:r + 1, :n]))[0]
        np.testing.assert_allclose(batch[r, :n], alone, rtol=0, atol=1e-5 * np.abs(alone).max())


def test_padding_independence_non_power_of_two_heads():
    cfg = dataclasses.replace(DNABERT2Config.tiny(), hidden_size=24, num_heads=6, intermediate_size=40)
    m = gm.build("dnabert2", cfg, seed=7)
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 4096, size=(2, 9)).astype(np.int32)
    mask = np.ones_like(ids, bool)
    mask[1, 6:] = False
    ids[1, 6:] = m.tokenizer.pad_id
    batch = np.asarray(m.logits(ids, mask))
    alone = np.asarray(m.logits(ids[1:, :6]))[0]
    np.testing.assert_allclose(batch[1, :6], alone, rtol=0, atol=1e-5 * np.abs(alone).max())
    # pads never change real positions, whatever token they hold
    ids2 = ids.copy()
    ids2[1, 6:] = 77
    np.testing.assert_allclose(np.asarray(m.logits(ids2, mask))[1, :6], batch[1, :6], rtol=0, atol=1e-6)


def test_config_from_hf_and_round_trip(case):
    raw = json.loads((case.dir / "config.json").read_text())
    cfg = DNABERT2Config.from_hf(raw)
    assert (cfg.vocab_size, cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.intermediate_size,
            cfg.layer_norm_eps, cfg.max_len, cfg.dtype) == (4096, 32, 2, 4, 128, 1e-12, 512, "float32")
    assert DNABERT2Config.from_dict(cfg.to_dict()) == cfg
    big = DNABERT2Config.preset("117m")
    assert (big.num_layers, big.hidden_size, big.num_heads, big.intermediate_size, big.vocab_size) == (
        12, 768, 12, 3072, 4096)
    assert DNABERT2Config.preset("tiny") == DNABERT2Config.tiny() and DNABERT2Config.tiny().vocab_size == 4096
    with pytest.raises(ConfigError, match="117m"):
        DNABERT2Config.preset("large")
    with pytest.raises(ConfigError, match="hidden_act"):
        DNABERT2Config.from_hf({**raw, "hidden_act": "relu"})
    with pytest.raises(ConfigError, match="num_heads"):
        DNABERT2Config(hidden_size=30, num_heads=4)


def test_detection_is_specific_to_dnabert2(case):
    raw = json.loads((case.dir / "config.json").read_text())
    assert detect(raw)
    assert detect({k: v for k, v in raw.items() if k != "alibi_starting_size"})  # auto_map still names bert_layers
    assert detect({k: v for k, v in raw.items() if k != "auto_map"})
    plain_bert = {k: v for k, v in raw.items() if k not in ("auto_map", "alibi_starting_size")}
    assert not detect(plain_bert)
    assert not detect({**raw, "model_type": "esm"})
    assert not detect({**raw, "architectures": ["BertForSequenceClassification"]})
    assert gm.detect(case.dir) is gm.get_family("dnabert2")


def test_build_fresh_model_uses_packaged_tokenizer():
    m = gm.build("dnabert2")
    assert m.spec is SPEC and m.spec.architecture_class == "masked-transformer"
    ids = m.tokenizer.encode("ACGTACGTTTGACNNA")
    assert ids[0] == 1 and ids[-1] == 2
    out = np.asarray(m.logits(ids[None]))
    assert out.shape == (1, len(ids), 4096) and np.isfinite(out).all()


def test_no_tokenizer_for_unknown_vocabulary(tmp_path):
    cfg = dataclasses.replace(DNABERT2Config.tiny(), vocab_size=4100)
    with pytest.raises(CheckpointError, match="tokenizer.json"):
        SPEC.tokenizer(cfg, tmp_path)


def test_save_and_load_round_trip(tmp_path):
    m = gm.build("dnabert2", seed=3)
    gm.save(m, tmp_path / "saved")
    back = gm.load(tmp_path / "saved")
    ids = m.tokenizer.encode("ACGTTGCAAGGCTTAGC")[None]
    np.testing.assert_array_equal(np.asarray(back.logits(ids)), np.asarray(m.logits(ids)))
    np.testing.assert_array_equal(back.tokenizer.encode("GATTACA"), m.tokenizer.encode("GATTACA"))


def test_bfloat16_compute_tracks_float32(case):
    ids, mask = case.inputs["input_ids"], case.inputs["attention_mask"].astype(bool)
    bf = gm.load(case.dir, dtype=jnp.bfloat16)
    assert bf.config.dtype == "bfloat16"
    assert jax_dtype_of_params(bf) == {np.dtype(np.float32)}
    out = np.asarray(bf.logits(ids, mask))
    # bf16 keeps 8 mantissa bits through 2 layers: measured 8.7e-3 of the logit range
    assert rel_err(out, case.outputs["logits"], mask) < 2e-2


def jax_dtype_of_params(m):
    return {np.dtype(x.dtype) for x in jax.tree_util.tree_leaves(nnx.state(m.module, nnx.Param))}


def _mutated_copy(case, tmp_path, edit):
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(case.dir / "model.safetensors"))
    edit(tensors)
    out = tmp_path / "ckpt"
    out.mkdir(parents=True)
    save_file(tensors, str(out / "model.safetensors"))
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(case.dir / name, out / name)
    return out


def test_missing_tensor_names_the_key(case, tmp_path):
    key = "bert.encoder.layer.1.mlp.gated_layers.weight"
    path = _mutated_copy(case, tmp_path, lambda t: t.pop(key))
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
        gm.load(path)


def test_wrong_shape_names_the_key(case, tmp_path):
    key = "bert.encoder.layer.0.attention.self.Wqkv.weight"
    path = _mutated_copy(case, tmp_path, lambda t: t.__setitem__(key, t[key][:64]))
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
        gm.load(path)


def test_untied_decoder_and_unexpected_tensor_are_refused(case, tmp_path):
    def untie(t):
        t["cls.predictions.decoder.weight"] = t["cls.predictions.decoder.weight"] + 1.0

    with pytest.raises(CheckpointError, match="decoder.weight"):
        gm.load(_mutated_copy(case, tmp_path / "a", untie))

    def extra(t):
        t["bert.encoder.layer.2.mlp.wo.bias"] = np.zeros(32, np.float32)

    with pytest.raises(CheckpointError, match=r"layer\.2\.mlp\.wo\.bias"):
        gm.load(_mutated_copy(case, tmp_path / "b", extra))


def test_decoder_weight_may_be_absent(case, tmp_path):
    # exporters that deduplicate tied tensors store only the embedding
    path = _mutated_copy(case, tmp_path, lambda t: t.pop("cls.predictions.decoder.weight"))
    ids, mask = case.inputs["input_ids"], case.inputs["attention_mask"].astype(bool)
    assert rel_err(np.asarray(gm.load(path).logits(ids, mask)), case.outputs["logits"], mask) <= 1e-4
