"""``glmjax models info | convert | list | presets``."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import rel_err

import glmjax.models as models
from glmjax.cli import main
from glmjax.models.checkpoints import GLMJAX_META


def _info(capsys, path) -> dict:
    capsys.readouterr()
    assert main(["models", "info", str(path), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_info_of_hf_snapshot(golden, capsys):
    case = golden("nt_v1")
    info = _info(capsys, case.dir)
    model = models.load(case.dir)
    assert info["family"] == "nt" and info["objective"] == "masked"
    assert info["architecture_class"] == "masked-transformer"
    assert info["parameters"] == model.num_params()
    assert info["context_length"] == case.case["shapes"]["max_position_embeddings"] - 2
    assert info["vocab_size"] == case.case["shapes"]["V"] and info["tokenizer"] == "nt-6mer-v1"
    assert info["format"] == "huggingface"
    assert main(["models", "info", str(case.dir)]) == 0
    table = capsys.readouterr().out
    assert "masked-transformer" in table and f"{model.num_params():,}" in table


def test_info_of_nt_jax_folder_reads_no_pickle(golden, capsys):
    info = _info(capsys, golden("nt_v2").dir)
    model = models.load(golden("nt_v2").dir, trust_pickle=True)
    assert info["format"] == "nt-native" and info["tokenizer"] == "nt-6mer-v2"
    assert info["parameters"] == model.num_params() and info["vocab_size"] == 4107
    assert info["context_length"] == 64


def test_convert_hf_snapshot_roundtrip(golden, tmp_path, capsys):
    case = golden("nt_v1")
    out = tmp_path / "nt_v1.glmjax"
    assert main(["models", "convert", str(case.dir), "--out", str(out)]) == 0
    assert (out / GLMJAX_META).exists() and (out / "vocab.txt").exists()
    assert not (tmp_path / "nt_v1.glmjax.partial").exists()
    info = _info(capsys, out)
    assert info["format"] == "glmjax" and info["source"] == str(case.dir.resolve())
    src, dst = models.load(case.dir), models.load(out)
    assert info["parameters"] == src.num_params()
    ids, att = case.inputs["input_ids"], case.inputs["attention_mask"].astype(bool)
    np.testing.assert_array_equal(np.asarray(dst.logits(ids, att)), np.asarray(src.logits(ids, att)))
    # an existing output is kept unless --overwrite
    capsys.readouterr()
    assert main(["models", "convert", str(case.dir), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["models", "convert", str(case.dir), "--out", str(out), "--overwrite"]) == 0


def test_convert_nt_jax_needs_trust_pickle(golden, tmp_path, capsys):
    case = golden("nt_v2")
    out = tmp_path / "v2"
    capsys.readouterr()
    assert main(["models", "convert", str(case.dir), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "pickle" in err and "--trust-pickle" in err and not out.exists()
    assert main(["models", "convert", str(case.dir), "--out", str(out), "--trust-pickle"]) == 0
    # the converted folder is orbax: it loads without trusting any pickle
    model = models.load(out)
    ids = case.inputs["input_ids"]
    assert rel_err(np.asarray(model.logits(ids)), case.outputs["logits"], ids != 1) <= 1e-4


def test_info_errors(tmp_path, capsys):
    capsys.readouterr()
    assert main(["models", "info", str(tmp_path)]) == 2
    assert "not a model folder" in capsys.readouterr().err


@pytest.mark.parametrize("family", sorted(models.families()))
def test_info_of_every_registered_family(family, tmp_path, capsys):
    """A glmjax folder of each family (configuration only: info reads no weights)."""
    spec = models.get_family(family)
    cfg = spec.config_cls.tiny()
    (tmp_path / GLMJAX_META).write_text(json.dumps({"format": "glmjax.model", "format_version": 1,
                                                    "family": family, "config": cfg.to_dict()}))
    info = _info(capsys, tmp_path)
    assert (info["family"], info["objective"], info["architecture_class"]) == \
        (family, spec.objective, spec.architecture_class)
    assert info["vocab_size"] == cfg.vocab_size
    assert info["context_length"] == cfg.max_len
    assert info["parameters"] > 0 and info["format"] == "glmjax"
    if family == "nt":
        assert info["parameters"] == models.build("nt", cfg).num_params()


def test_list(capsys):
    capsys.readouterr()
    assert main(["models", "list", "--json"]) == 0
    fams = {f["family"]: f for f in json.loads(capsys.readouterr().out)}
    assert fams["nt"]["objective"] == "masked" and fams["nt"]["architecture_class"] == "masked-transformer"

    assert set(fams) == set(models.families())
    assert fams["evo2"]["presets"][:3] == ["tiny", "evo2-1b-8k", "evo2-7b-8k"]


@pytest.mark.parametrize("family", sorted(models.families()))
def test_every_config_satisfies_the_family_contract(family):
    """Every family's config is a ModelConfig: its presets build, round-trip through to_dict /
    from_dict, and carry a positive context and vocabulary; an unknown name is a ConfigError."""
    from glmjax.errors import ConfigError
    from glmjax.models.base import ModelConfig

    cls = models.get_family(family).config_cls
    names = cls.preset_names()
    assert "tiny" in names and len(set(names)) == len(names)
    for name in names:
        cfg = cls.preset(name)
        assert isinstance(cfg, ModelConfig) and isinstance(cfg, cls)
        assert cls.from_dict(cfg.to_dict()) == cfg
        assert cfg.max_len > 0 and cfg.vocab_size > 0 and cfg.dtype == "float32"
    assert cls.preset("tiny") == cls.tiny()
    with pytest.raises(ConfigError, match="preset"):
        cls.preset("no-such-preset")


def test_presets_command(capsys):
    """`glmjax models presets FAMILY`: one row per preset with the abstract parameter count."""
    capsys.readouterr()
    assert main(["models", "presets", "llama", "--json"]) == 0
    rows = {r["preset"]: r for r in json.loads(capsys.readouterr().out)}
    cfg = models.get_family("llama").config_cls.preset("small")
    assert list(rows) == list(models.get_family("llama").config_cls.preset_names())
    assert rows["small"]["parameters"] == models.build("llama", cfg).num_params()
    assert (rows["small"]["context_length"], rows["small"]["width"], rows["small"]["layers"]) == (1024, 384, 8)
    assert main(["models", "presets", "hyenadna"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["preset", "parameters", "context"] and out[-1].startswith("large-1m")
    assert main(["models", "presets", "nope"]) == 2
    assert "unknown model family 'nope'" in capsys.readouterr().err


def test_info_verifies_tensors_from_the_headers(golden, tmp_path, capsys):
    """`models info` checks the safetensors headers against the configuration: a deleted or
    mis-shaped tensor exits 2 naming it; a configuration-only folder says it has no weights."""
    import shutil

    from safetensors.numpy import load_file, save_file

    case = golden("nt_v1")
    d = tmp_path / "ckpt"
    shutil.copytree(case.dir, d)
    info = _info(capsys, d)
    assert info["weights"].startswith("safetensors") and "match the configuration" in info["weights"]
    tensors = load_file(str(d / "model.safetensors"))
    name = "esm.encoder.layer.0.attention.self.query.weight"
    for mutate, message in ((lambda t: t.pop(name), f"missing tensor '{name}'"),
                            (lambda t: t.__setitem__(name, t[name][:, :-1].copy()), name)):
        bad = dict(tensors)
        mutate(bad)
        save_file(bad, str(d / "model.safetensors"))
        capsys.readouterr()
        assert main(["models", "info", str(d)]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
    (d / "model.safetensors").unlink()
    assert _info(capsys, d)["weights"] == "none (configuration only)"
