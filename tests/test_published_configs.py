"""The published configuration files of full-size checkpoints (``shared/configs``, no weights)
go through glmjax's own detection and config readers and build abstractly with the published
parameter count; the relatives glmjax cannot audit fail with a clear ``CheckpointError``."""

from __future__ import annotations

import shutil

import pytest
from causal_lm_checks import param_count
from conftest import SHARED

import glmjax.models as gm
from glmjax.errors import CheckpointError
from glmjax.models.checkpoints import read_config_json

BASE = SHARED / "configs"

# (folder, family, config file used as config.json, published tensor count or None, the tensors
#  the published files hold that a faithful model does not count as parameters, tolerance)
CASES = [
    # NT: reference formula of the published EsmForMaskedLM tensors (SOURCE.txt) = glmjax's count
    # + the contact head (layers x heads + 1) [+ the unused absolute position table of the v2 port]
    ("nt/nucleotide-transformer-500m-human-ref", "nt", "config.json", 485_699_306, 24 * 20 + 1, 0),
    ("nt/nucleotide-transformer-v2-100m-multi-species", "nt", "config.json", 97_889_132,
     2050 * 512 + 22 * 16 + 1, 0),
    ("nt/nucleotide-transformer-v2-500m-multi-species", "nt", "config.json", 498_345_436,
     2050 * 1024 + 29 * 16 + 1, 0),
    # DNABERT-2: bert_layers BertForMaskedLM with the tied decoder (SOURCE.txt formula), both the
    # older hub revision (no model_type / architectures) and the newer one
    ("dnabert2/DNABERT-2-117M", "dnabert2", "config.json", 117_074_176, 0, 0),
    ("dnabert2/DNABERT-2-117M", "dnabert2", "config.compact-vendored.json", 117_074_176, 0, 0),
    # HyenaDNA: fp32 safetensors bytes / 4 from the hub listing (3 significant figures), holding
    # the buffers pos_emb.t [max_seq_len] and modulation.deltas [d_model] of every layer
    ("hyenadna/hyenadna-small-32k-seqlen-hf", "hyenadna", "config.json", 16.3e6 / 4, 4 * (32770 + 256), 0.005),
    ("hyenadna/hyenadna-medium-160k-seqlen-hf", "hyenadna", "config.json", 57e6 / 4, 8 * (160002 + 256), 0.005),
    ("hyenadna/hyenadna-medium-450k-seqlen-hf", "hyenadna", "config.json", 113e6 / 4, 8 * (450002 + 256), 0.005),
    ("hyenadna/hyenadna-large-1m-seqlen-hf", "hyenadna", "config.json", 218e6 / 4, 8 * (1000002 + 256), 0.005),
    # Evo: nominal sizes only (the exact count is tested against a formula in test_evo.py)
    ("evo1/evo-1-131k-base", "evo1", "config.json", 7e9, 0, 0.1),
    ("evo2/evo2-7b-8k", "evo2", None, 7e9, 0, 0.1),
    ("evo2/evo2-40b-1m", "evo2", None, 40e9, 0, 0.1),
]


def _folder(tmp_path, rel: str, as_config: str | None):
    if not BASE.exists():
        pytest.skip(f"{BASE} not available (the shared data folder is absent)")
    d = tmp_path / "ckpt"
    shutil.copytree(BASE / rel, d)
    if as_config and as_config != "config.json":
        shutil.copy(d / as_config, d / "config.json")
    return d


@pytest.mark.parametrize("rel,family,as_config,published,extra,tol", CASES,
                         ids=[f"{c[0].split('/')[1]}:{c[2] or 'yml'}" for c in CASES])
def test_published_config_detects_and_counts(tmp_path, rel, family, as_config, published, extra, tol):
    d = _folder(tmp_path, rel, as_config)
    spec = gm.detect(d)
    assert spec.name == family
    # as `glmjax models info` reads a folder: config.json first, else the family's native config
    cfg = spec.config_cls.from_hf(read_config_json(d)) if (d / "config.json").exists() else spec.config_dir(d)
    n = param_count(spec.build, cfg) + extra
    if tol == 0:
        assert n == published
    else:
        assert abs(n - published) <= tol * published, (n, published)


@pytest.mark.parametrize("rel,match", [
    ("dnabert2/DNABERT-S", r"without its masked-LM head \(e\.g\. DNABERT-S"),
])
def test_unauditable_relatives_fail_clearly(tmp_path, rel, match):
    d = _folder(tmp_path, rel, None)
    with pytest.raises(CheckpointError, match=match):
        gm.detect(d)
    assert not gm.get_family("dnabert2").detect(read_config_json(d))


def test_unsupported_architecture_names_itself(tmp_path):
    """GENA-LM (pre-LN BERT with its own config json): not a family glmjax implements; the error
    lists the families it does."""
    d = _folder(tmp_path, "gena-lm/gena-lm-bert-base-t2t", "L12-H768-A12-V32k-preln.json")
    with pytest.raises(CheckpointError, match=r"is not a supported family \(.*dnabert2.*evo2.*\)"):
        gm.detect(d)
