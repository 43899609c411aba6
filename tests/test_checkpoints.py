"""Checkpoint I/O: orbax save/restore, clear errors for wrong/missing/mis-shaped tensors, the
pickle policy (torch weights_only, restricted joblib reader, trust_pickle)."""

from __future__ import annotations

import gzip
import json
import pickle
import shutil
import zlib

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import glmjax.models as models
from glmjax.errors import CheckpointError
from glmjax.models.joblib_io import read_joblib_arrays
from glmjax.models.nt import NTConfig


def _ids(vocab: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    ids = rng.integers(4, vocab - 5, (3, 17)).astype(np.int32)
    ids[:, 0] = 3
    ids[1, 11:] = 1
    ids[2, 5] = 2
    return ids


def test_orbax_roundtrip_gives_identical_logits(tmp_path):
    """(v1 is also round-tripped by the ``models convert`` test.)"""
    model = models.build("nt", NTConfig.tiny(2), seed=11)
    out = models.save(model, tmp_path / "m")
    assert (out / "glmjax_model.json").exists() and (out / "state").is_dir()
    assert not (tmp_path / "m.partial").exists()
    again = models.load(out)
    assert again.config == model.config and again.family == "nt"
    ids = _ids(model.config.vocab_size)
    np.testing.assert_array_equal(np.asarray(again.logits(ids)), np.asarray(model.logits(ids)))
    with pytest.raises(CheckpointError, match="already exists"):
        models.save(model, out)
    # a compute dtype can be asked for at load time; parameters stay float32
    half = models.load(out, dtype="bfloat16")
    assert half.config.dtype == "bfloat16"
    assert str(half.module.embed.embedding[...].dtype) == "float32"


def _golden_copy(golden, tmp_path, edit=None):
    case = golden("nt_v1")
    dst = tmp_path / "ckpt"
    dst.mkdir()
    shutil.copy(case.dir / "config.json", dst / "config.json")
    tensors = load_file(str(case.dir / "model.safetensors"))
    if edit is not None:
        edit(tensors)
    save_file(tensors, str(dst / "model.safetensors"))
    return case, dst


def test_missing_tensor_is_named(golden, tmp_path):
    key = "esm.encoder.layer.1.attention.self.key.weight"
    _, d = _golden_copy(golden, tmp_path, lambda t: t.pop(key))
    with pytest.raises(CheckpointError, match=rf"missing tensor '{key}'"):
        models.load(d)


def test_unexpected_tensor_is_named(golden, tmp_path):
    key = "esm.encoder.layer.2.attention.self.key.weight"
    _, d = _golden_copy(golden, tmp_path, lambda t: t.__setitem__(key, np.zeros((32, 32), np.float32)))
    with pytest.raises(CheckpointError, match=rf"unexpected tensor\(s\) '{key}'"):
        models.load(d)


def test_misshaped_tensor_is_named(golden, tmp_path):
    key = "lm_head.dense.weight"
    _, d = _golden_copy(golden, tmp_path, lambda t: t.__setitem__(key, np.zeros((32, 31), np.float32)))
    with pytest.raises(CheckpointError, match=rf"'{key}' has shape \(32, 31\), expected \(32, 32\)"):
        models.load(d)


def test_config_disagreeing_with_weights_is_named(golden, tmp_path):
    case, d = _golden_copy(golden, tmp_path)
    conf = json.loads((case.dir / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**conf, "num_hidden_layers": 3}))
    with pytest.raises(CheckpointError, match="missing tensor 'esm.encoder.layer.2."):
        models.load(d)


def test_ignored_buffers_and_legacy_names_load(golden, tmp_path):
    """position_ids buffers and LayerNorm gamma/beta names (older writers) are accepted."""
    def edit(t):
        t["esm.embeddings.position_ids"] = np.arange(34, dtype=np.int64)[None]
        t["esm.encoder.layer.0.LayerNorm.gamma"] = t.pop("esm.encoder.layer.0.LayerNorm.weight")
        t["esm.encoder.layer.0.LayerNorm.beta"] = t.pop("esm.encoder.layer.0.LayerNorm.bias")

    case, d = _golden_copy(golden, tmp_path, edit)
    ids, att = case.inputs["input_ids"], case.inputs["attention_mask"].astype(bool)
    got = np.asarray(models.load(d).logits(ids, att))
    np.testing.assert_allclose(got[att], case.outputs["logits"][att], rtol=0, atol=1e-4)


def test_sharded_index_with_missing_shard(golden, tmp_path):
    case, d = _golden_copy(golden, tmp_path)
    (d / "model.safetensors").rename(d / "model-00001-of-00002.safetensors")
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    with pytest.raises(CheckpointError, match="model-00002-of-00002.safetensors which is missing"):
        models.load(d)


@pytest.mark.parametrize("shard", ["../outside.safetensors", "/etc/outside.safetensors", "a/../../x.safetensors"])
def test_sharded_index_pointing_outside_the_folder_is_refused(golden, tmp_path, shard):
    case, d = _golden_copy(golden, tmp_path)
    (d / "model.safetensors").rename(tmp_path / "outside.safetensors")
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": shard}}))
    with pytest.raises(CheckpointError, match="outside the checkpoint folder"):
        models.load(d)


def test_torch_bin_is_read_without_running_code(golden, tmp_path):
    torch = pytest.importorskip("torch")
    case, d = _golden_copy(golden, tmp_path)
    sd = {k: torch.from_numpy(np.array(v)) for k, v in load_file(str(d / "model.safetensors")).items()}
    (d / "model.safetensors").unlink()
    torch.save(sd, d / "pytorch_model.bin")
    ids = case.inputs["input_ids"]
    att = case.inputs["attention_mask"].astype(bool)
    np.testing.assert_allclose(np.asarray(models.load(d).logits(ids, att))[att], case.outputs["logits"][att],
                               rtol=0, atol=1e-4)
    # a .bin carrying an arbitrary object is refused by weights_only, and nothing runs
    marker = tmp_path / "ran"
    torch.save({"x": _Exploit(str(marker))}, d / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="weights_only=True"):
        models.load(d)
    assert not marker.exists()


class _Exploit:
    """Unpickling this object would create a file (stands for arbitrary code)."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_missing_weights_and_bad_folders(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "esm", "vocab_size": 4105, "hidden_size": 32,
                                                      "num_hidden_layers": 1, "num_attention_heads": 4,
                                                      "intermediate_size": 64}))
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        models.load(tmp_path)
    with pytest.raises(CheckpointError, match="no such model folder"):
        models.load(tmp_path / "absent")
    with pytest.raises(CheckpointError, match="is a file"):
        models.load(tmp_path / "config.json")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "vit"}))
    with pytest.raises(CheckpointError, match="'vit'.*not a supported family"):
        models.load(tmp_path)


# ---------------------------------------------------------------------------------------------
# joblib (official NT JAX checkpoint)

def test_joblib_reader_needs_trust_and_reads_compressed_variants(golden, tmp_path):
    src = golden("nt_v2").dir / "pytree_ckpt.joblib"
    with pytest.raises(CheckpointError, match="is a pickle"):
        read_joblib_arrays(src)
    ref = read_joblib_arrays(src, trust_pickle=True)
    assert ref["esm_transformer/~/embed"]["embeddings"].shape == (4107, 32)
    raw = src.read_bytes()
    (tmp_path / "g.joblib").write_bytes(gzip.compress(raw))
    (tmp_path / "z.joblib").write_bytes(zlib.compress(raw))
    for name in ("g.joblib", "z.joblib"):
        got = read_joblib_arrays(tmp_path / name, trust_pickle=True)
        assert got.keys() == ref.keys()
        for mod in ref:
            for p in ref[mod]:
                np.testing.assert_array_equal(got[mod][p], ref[mod][p])
    (tmp_path / "t.joblib").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        read_joblib_arrays(tmp_path / "t.joblib", trust_pickle=True)


def test_joblib_reader_refuses_foreign_globals_even_when_trusted(tmp_path):
    marker = tmp_path / "ran"
    f = tmp_path / "evil.joblib"
    f.write_bytes(pickle.dumps({"m": {"w": _Exploit(str(marker))}}, protocol=4))
    with pytest.raises(CheckpointError, match=r"references io\.open.*refusing"):
        read_joblib_arrays(f, trust_pickle=True)
    assert not marker.exists()


def test_nt_jax_folder_needs_trust_pickle_and_names_missing_modules(golden, tmp_path):
    case = golden("nt_v2")
    with pytest.raises(CheckpointError, match=r"trust_pickle=True \(CLI: --trust-pickle\)"):
        models.load(case.dir)
    params = read_joblib_arrays(case.dir / "pytree_ckpt.joblib", trust_pickle=True)
    del params["esm_transformer/attention_layer_1/~/fc2"]
    d = tmp_path / "jax"
    d.mkdir()
    shutil.copy(case.dir / "hyperparams.json", d / "hyperparams.json")
    with open(d / "pytree_ckpt.joblib", "wb") as fh:
        pickle.dump(params, fh, protocol=4)  # plain numpy pickles use numpy's reconstructor: refused
    with pytest.raises(CheckpointError, match="numpy"):
        models.load(d, trust_pickle=True)
