"""Hugging Face Hub ids (``ORG/NAME[@REVISION]``) resolve through huggingface_hub into the HF
cache and load offline from a filled cache; pickle-format weights only with --trust-pickle. The
cache is built here in the library's layout (no network)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import glmjax.models as gm
from glmjax.cli import main
from glmjax.errors import CheckpointError
from glmjax.models.hub import parse_hub_id

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _fill_cache(cache, repo: str, files_from, commit: str = COMMIT, ref: str = "main"):
    """A snapshot of ``repo`` at ``commit`` in huggingface_hub's cache layout, ``ref`` -> commit."""
    base = cache / f"models--{repo.replace('/', '--')}"
    snap = base / "snapshots" / commit
    snap.mkdir(parents=True)
    for f in files_from.iterdir():
        shutil.copy(f, snap / f.name)
    (base / "refs").mkdir(exist_ok=True)
    (base / "refs" / ref).write_text(commit)
    return snap


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)  # a relative ORG/NAME must not exist on disk
    return cache


def _hf_llama(tmp_path, safe: bool = True):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=16, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, max_position_embeddings=64)
    model = transformers.LlamaForCausalLM(cfg).eval()
    out = tmp_path / ("hf-safe" if safe else "hf-bin")
    model.save_pretrained(str(out))
    if not safe:  # the pytorch_model.bin layout of older snapshots
        for f in out.glob("*.safetensors"):
            f.unlink()
        torch.save(model.state_dict(), out / "pytorch_model.bin")
    return model, out


def test_parse_hub_id():
    assert parse_hub_id("GenerTeam/GENERator-eukaryote-1.2b-base") == ("GenerTeam/GENERator-eukaryote-1.2b-base", None)
    assert parse_hub_id("togethercomputer/evo-1-131k-base@1.1_fix") == ("togethercomputer/evo-1-131k-base", "1.1_fix")
    for not_an_id in ("model", "./a/b", "/abs/path", "a/b/c", "~/x/y", "a/b@"):
        assert parse_hub_id(not_an_id) is None, not_an_id


def test_hub_id_loads_offline_from_the_cache(tmp_path, offline_cache, capsys):
    hf, folder = _hf_llama(tmp_path)
    _fill_cache(offline_cache, "someorg/tiny-llama", folder)
    model = gm.load("someorg/tiny-llama")
    ids = np.array([[1, 5, 7, 3, 9, 2]], np.int32)
    with torch.no_grad():
        ref = hf(torch.from_numpy(ids).long()).logits.numpy()
    got = np.asarray(model.logits(ids))[..., :16]
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()
    # a revision (commit) and the CLI: models info reads the same snapshot
    assert gm.load(f"someorg/tiny-llama@{COMMIT}").num_params() == model.num_params()
    capsys.readouterr()
    assert main(["models", "info", "someorg/tiny-llama", "--json"]) == 0
    out = capsys.readouterr()
    info = json.loads(out.out)
    assert info["family"] == "llama" and COMMIT in info["path"]
    assert info["weights"].startswith("safetensors")  # this cache already holds them
    assert "reading the Hugging Face cache" in out.err


def test_hub_errors_are_one_line(tmp_path, offline_cache, capsys):
    with pytest.raises(CheckpointError, match="not in the Hugging Face cache"):
        gm.load("someorg/absent")
    capsys.readouterr()
    assert main(["models", "info", "someorg/absent"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len([line for line in err if line.startswith("glmjax: error:")]) == 1 and "Traceback" not in "\n".join(err)
    assert main(["models", "info", "no-such-folder"]) == 2
    assert "no such model folder" in capsys.readouterr().err


def test_pickle_weights_need_trust_pickle(tmp_path, offline_cache):
    hf, folder = _hf_llama(tmp_path, safe=False)
    assert (folder / "pytorch_model.bin").exists() and not list(folder.glob("*.safetensors"))
    _fill_cache(offline_cache, "someorg/bin-llama", folder)
    with pytest.raises(CheckpointError, match="pickle-format weights only.*--trust-pickle"):
        gm.load("someorg/bin-llama")
    model = gm.load("someorg/bin-llama", trust_pickle=True)
    assert model.num_params() == sum(p.numel() for n, p in hf.named_parameters() if "lm_head" not in n) + \
        (0 if hf.config.tie_word_embeddings else hf.lm_head.weight.numel())


def test_a_folder_on_disk_wins_over_a_hub_id(tmp_path, offline_cache):
    _, folder = _hf_llama(tmp_path)
    local = tmp_path / "someorg" / "tiny-llama"
    shutil.copytree(folder, local)
    assert gm.load("someorg/tiny-llama").source == "someorg/tiny-llama"
