"""Caduceus PH / PS: golden logit parity, RC equivariance, tied-weight loading, config."""

import dataclasses
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import rel_err
from flax import nnx
from safetensors.numpy import load_file, save_file

import glmjax.models as gm
from glmjax import alphabet
from glmjax.errors import CheckpointError, ConfigError
from glmjax.models.caduceus import SPEC, CaduceusConfig, detect

PAD = 4


def _forward(module):
    graphdef, state = nnx.split(module)
    return lambda ids: jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))(state, jnp.asarray(ids, jnp.int32))


def _rc_ids(ids: np.ndarray, comp: tuple[int, ...]) -> np.ndarray:
    return np.asarray(comp)[ids[:, ::-1]]


@pytest.mark.parametrize("name", ["caduceus_ph", "caduceus_ps"])
def test_golden_parity(golden, name):
    case = golden(name)
    model = gm.load(case.dir)
    assert model.family == "caduceus" and model.objective == "masked"
    assert model.spec.architecture_class == "state-space"
    assert model.config.rcps == (name == "caduceus_ps") and model.config.fused_add_norm
    ids = case.inputs["input_ids"]
    meaningful = ids != PAD
    graphdef, state = model.split()

    @jax.jit
    def run(state, x):
        m = nnx.merge(graphdef, state)
        return m(x), m.hidden_states(x)

    logits, hidden = (np.asarray(a) for a in run(state, jnp.asarray(ids)))
    assert logits.shape == case.outputs["logits"].shape and logits.dtype == np.float32
    assert rel_err(logits, case.outputs["logits"], meaningful) <= 1e-4
    assert rel_err(hidden, case.outputs["hidden_states_last"], meaningful) <= 1e-4
    # the tokenizer reproduces the reference ids (left [PAD], [SEP] appended, upper-cased input)
    encs = [model.tokenizer.encode_codes(alphabet.encode(str(s).lower().upper())) for s in case.inputs["sequences"]]
    padded, _, _ = model.tokenizer.pad_batch(encs, ids.shape[1])
    np.testing.assert_array_equal(padded, case.inputs["input_ids_before_masking"])


def test_golden_fused_add_norm_variants(golden):
    """PH: fused and unfused add-norm agree; PS: they differ (the fused block swaps halves) yet
    both are RC-equivariant (checked in the property test)."""
    for name, same in (("caduceus_ph", True), ("caduceus_ps", False)):
        case = golden(name)
        model = gm.load(case.dir)
        ids = case.inputs["input_ids"]
        unfused = dataclasses.replace(model.config, fused_add_norm=False)
        other = SPEC.build(unfused, nnx.Rngs(0))
        nnx.update(other, nnx.state(model.module, nnx.Param))
        err = rel_err(np.asarray(_forward(other)(ids)), case.outputs["logits"])
        assert (err <= 1e-5) if same else (err > 1e-2), (name, err)


@pytest.mark.parametrize("fused", [True, False])
def test_ps_reverse_complement_equivariance(fused):
    """logits(rc(x)) == complement-permuted, position-reversed logits(x), on random weights/inputs."""
    cfg = dataclasses.replace(CaduceusConfig.tiny(rcps=True), fused_add_norm=fused, scan_chunk=8)
    model = gm.build("caduceus", cfg, seed=11)
    rng = np.random.default_rng(12)
    ids = rng.integers(0, cfg.vocab_size, size=(3, 29)).astype(np.int32)
    fwd = _forward(model.module)
    both = np.asarray(fwd(np.concatenate([ids, _rc_ids(ids, cfg.complement_map)])))
    out, out_rc = both[:3], both[3:]
    expected = out[:, ::-1][..., np.asarray(cfg.complement_map)]
    assert rel_err(out_rc, expected) <= 1e-5


def test_ph_is_not_equivariant():
    cfg = CaduceusConfig.tiny(rcps=False)
    model = gm.build("caduceus", cfg, seed=13)
    ids = np.random.default_rng(14).integers(7, 11, size=(2, 21)).astype(np.int32)
    fwd = _forward(model.module)
    both = np.asarray(fwd(np.concatenate([ids, _rc_ids(ids, cfg.complement_map)])))
    assert rel_err(both[2:], both[:2, ::-1][..., np.asarray(cfg.complement_map)]) > 1e-2


def test_untied_bidirectional_with_equal_weights_matches_tied(golden):
    case = golden("caduceus_ph")
    tied = gm.load(case.dir)
    cfg = dataclasses.replace(tied.config, bidirectional_weight_tie=False)
    untied = SPEC.build(cfg, nnx.Rngs(0))
    flat = {tuple(p): v for p, v in nnx.to_flat_state(nnx.state(tied.module, nnx.Param))}
    for (path, var) in list(flat.items()):
        if path[-2] in ("in_proj", "out_proj"):
            flat[(*path[:-2], f"rev_{path[-2]}", path[-1])] = var
    nnx.update(untied, nnx.from_flat_state({p: v for p, v in flat.items()}))
    ids = case.inputs["input_ids"]
    assert rel_err(np.asarray(_forward(untied)(ids)), case.outputs["logits"]) <= 1e-5


def test_tied_tensors_stored_or_absent(golden, tmp_path):
    case = golden("caduceus_ps")
    shutil.copytree(case.dir, tmp_path / "m")
    f = tmp_path / "m" / "model.safetensors"
    tensors = load_file(str(f))
    p = "caduceus.backbone.layers.0.mixer.submodule."
    # an explicit, equal copy of a tied tensor loads like the absent one
    tensors[f"{p}mamba_rev.in_proj.weight"] = tensors[f"{p}mamba_fwd.in_proj.weight"]
    tensors["lm_head.lm_head.weight"] = tensors["caduceus.backbone.embeddings.word_embeddings.embedding.weight"]
    save_file(tensors, str(f), metadata={"format": "pt"})
    logits = np.asarray(gm.load(tmp_path / "m").logits(case.inputs["input_ids"]))
    assert rel_err(logits, case.outputs["logits"]) <= 1e-4
    # a different one breaks the tie and is refused
    tensors[f"{p}mamba_rev.in_proj.weight"] = tensors[f"{p}mamba_fwd.in_proj.weight"] * 2
    save_file(tensors, str(f), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="mamba_rev.in_proj.weight"):
        gm.load(tmp_path / "m")
    # a missing stored tensor is named
    del tensors[f"{p}mamba_rev.in_proj.weight"]
    del tensors[f"{p}mamba_rev.A_log"]
    save_file(tensors, str(f), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="mamba_rev.A_log"):
        gm.load(tmp_path / "m")


def test_config_from_hf_presets_and_roundtrip(golden, tmp_path):
    raw = json.loads((golden("caduceus_ps").dir / "config.json").read_text())
    cfg = CaduceusConfig.from_hf(raw)
    assert (cfg.vocab_size, cfg.d_model, cfg.n_layer, cfg.d_inner, cfg.time_step_rank) == (16, 32, 2, 64, 2)
    assert cfg.rcps and cfg.complement_map[7:12] == (10, 9, 8, 7, 11) and cfg.complement_map[15] == 15
    assert CaduceusConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert detect(raw) and not detect({"model_type": "mamba"})
    # vocabulary 12 is padded to 16 and the complement map extended with identities
    small = dict(raw, vocab_size=12, complement_map={str(i): c for i, c in enumerate((0, 1, 2, 3, 4, 5, 6, 10, 9, 8, 7, 11))})
    assert CaduceusConfig.from_hf(small).complement_map == cfg.complement_map
    with pytest.raises(ConfigError, match="involution"):
        dataclasses.replace(cfg, complement_map=(1,) * 16)
    with pytest.raises(ConfigError, match="bidirectional_strategy"):
        dataclasses.replace(cfg, bidirectional_strategy="concat")
    with pytest.raises(ConfigError, match="scan_inner"):
        dataclasses.replace(cfg, scan_inner="fft")
    with pytest.raises(ConfigError, match="unknown Caduceus preset"):
        CaduceusConfig.preset("ps-1m")
    # the published 131k models: 16 BiMamba blocks of d 256, 7.7M parameters (30.9 MB fp32)
    for name in ("ph-131k", "ps-131k"):
        pc = CaduceusConfig.preset(name)
        n = gm.build("caduceus", pc).num_params()
        d, di, r = 256, 512, 16
        per_dir = di * 4 + di + di * (r + 32) + r * di + di + di * 16 + di
        assert n == 16 * (d * 2 * di + di * d + 2 * per_dir + d) + 16 * d + d
        assert 7.5e6 < n < 7.8e6 and pc.max_len == 131072
    assert CaduceusConfig.preset("ph-1k").d_model == 118 and CaduceusConfig.preset("ps-1k").rcps
    tok = SPEC.tokenizer(cfg, None)
    assert tok.padding_side == "left" and tok.encode("ACGTN").tolist() == [7, 8, 9, 10, 11, 1]


def test_orbax_roundtrip_and_scan_chunk(golden, tmp_path):
    case = golden("caduceus_ps")
    model = gm.load(case.dir)
    gm.save(model, tmp_path / "ps")
    back = gm.load(tmp_path / "ps")
    assert back.family == "caduceus" and back.config == model.config
    assert back.fingerprint() == model.fingerprint()
    jax.tree.map(np.testing.assert_array_equal, nnx.state(back.module, nnx.Param), nnx.state(model.module, nnx.Param))
    ids = case.inputs["input_ids"]
    # another scan chunking (segment-sum chunks of 4) of the same weights gives the same logits
    chunked = SPEC.build(dataclasses.replace(model.config, scan_chunk=4, scan_inner="segsum"), nnx.Rngs(0))
    nnx.update(chunked, nnx.state(model.module, nnx.Param))
    assert rel_err(np.asarray(_forward(chunked)(ids)), case.outputs["logits"]) <= 1e-4


@pytest.mark.slow
def test_bench_smoke_runs(capsys):
    """scripts/bench_forward_caduceus.py --smoke (in-process) reports every section and the peer
    (slow: ~30 s of compiles on 2 cores)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "bench_forward_caduceus.py"
    spec = importlib.util.spec_from_file_location("bench_forward_caduceus", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    report = bench.main(["--smoke", "--mamba-cases", "32:2", "--mamba-dtypes", "float32", "--caduceus-cases",
                         "tiny-ps:float32", "--caduceus-length", "64", "--kernel-chunks", "16", "--kernel-segsum-chunks", "8",
                         "--scan-inner", "segsum", "--iters", "1",
                         "--warmup", "1", "--hf-iters", "1", "--copy-mib", "4"])
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(report))
    (kernel,) = report["kernel"]
    assert {"chunked-16", "chunked-segsum-8", "associative"} <= set(kernel["variants"]) and "fastest" in kernel
    assert all(v["max_rel_diff_vs_first"] <= 1e-5 for v in list(kernel["variants"].values())[1:])
    (cad,) = report["caduceus"]
    assert cad["tokens_per_s"] > 0 and cad["finite"] and cad["variant"] == "ps" and cad["scan_inner"] == "segsum"
    (mamba,) = report["mamba"]
    assert mamba["glmjax"]["tokens_per_s"] > 0 and mamba["transformers"]["float32"]["tokens_per_s"] > 0
    assert mamba["max_abs_logp_diff_vs_transformers"]["float32"] < 1e-4
