"""Shared-prefix decoding and batched candidate walks: the same log p as the copied-state path and
as full forward passes; batched exposure (ranks up to float32 near-ties), greedy and beam search equal to one canary at
a time;
the canary axis spread over 8 devices gives the same ranks as one device."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from trie_reference import K, causal_case, causal_params

import glmjax.models
from glmjax.audit import candidates as en
from glmjax.audit import extraction as ex
from glmjax.audit.decoding import codes_to_index, index_to_codes
from glmjax.models.decoding import CausalDecoder

ROOT = Path(__file__).resolve().parents[1]


def _model(family: str):
    return glmjax.models.build(family, seed=3)


@pytest.mark.parametrize("family", causal_params("evo1", "evo2"))
def test_shared_prefix_step_equals_full_forward(family):
    model = _model(family)
    rng = np.random.default_rng(0)
    c, t, s, m = 3, 7, 5, 2
    ids = rng.integers(4, 8, (c, t)).astype(np.int32)
    suffix = rng.integers(4, 8, (c, m, s)).astype(np.int32)
    full = np.concatenate([np.repeat(ids[:, None], m, 1), suffix], 2).reshape(c * m, t + s)
    ref = np.asarray(model.logits(full), np.float64).reshape(c, m, t + s, -1)
    scale = np.abs(ref).max()
    for share in (True, False):
        dec = CausalDecoder.of(model, share_prefix=share)
        logits, shared, state = jax.jit(lambda p, i, d=dec: d.prefix(p, i, s))(dec.params, ids)
        assert np.abs(np.asarray(logits) - ref[:, 0, t - 1]).max() <= 1e-5 * scale
        state = jax.tree.map(lambda x: jnp.repeat(x, m, axis=1), state)
        step = jax.jit(dec.suffix_step)
        for j in range(s):
            logits, state = step(dec.params, shared, state, jnp.asarray(suffix[:, :, j]))
            assert logits.shape == (c, m, ref.shape[-1])
            assert np.abs(np.asarray(logits) - ref[:, :, t + j]).max() <= 1e-5 * scale, (share, j)
    # llama, gpt2 and hyenadna share their prefix; mamba's fixed-size state is its row state
    assert CausalDecoder.of(model).shares_prefix == (family != "mamba")


@pytest.mark.parametrize("family", causal_params("evo1", "evo2"))
def test_shared_prefix_trie_matches_full_forward(family):
    case = causal_case(family)
    logp, stats = en.causal_candidate_logprobs(case.model, case.prefix, K, block=16)
    rel = np.abs(logp - case.total) / np.abs(case.total)
    assert rel.max() <= 1e-5, rel.max()
    assert stats.shared_prefix == (family != "mamba")


def _rank_band(logp: np.ndarray, idx: int, tol: float) -> tuple[int, int]:
    """The ranks candidate ``idx`` can take when every score may move by ``tol``: candidates
    clearly above it push it down, near-ties may fall either way."""
    return int(np.count_nonzero(logp > logp[idx] + 2 * tol)) + 1, int(np.count_nonzero(logp > logp[idx] - 2 * tol)) + 1


@pytest.mark.parametrize("family", causal_params("evo2"))
@pytest.mark.parametrize("k", [4, 7])
def test_batched_exposure_equals_one_canary_at_a_time(family, k):
    model = _model(family)
    rng = np.random.default_rng(k)
    # prefix lengths 5, 9, 12, 9, 9: three token-length groups, one of them with three canaries
    lengths = (5, 9, 12, 9, 9) if k < 7 else (5, 9, 9)
    prefixes = [rng.integers(0, 4, n).astype(np.uint8) for n in lengths]
    batched, stats = en.causal_candidate_logprobs_many(model, prefixes, k, block=64 if k > 4 else None)
    assert batched.shape == (len(prefixes), 4 ** k) and stats.canaries == len(prefixes)
    assert stats.canaries_per_call > 1
    probes = [*rng.integers(0, 4 ** k, 6).tolist()]
    for i, p in enumerate(prefixes):
        # the same shared-prefix walk, one canary per call: identical ranks
        alone, st1 = en.causal_candidate_logprobs(model, p, k)
        assert st1.canaries_per_call == 1
        # the copied-state path (every node carries the whole cache): the same log p in fp32
        copied, st2 = en.causal_candidate_logprobs(model, p, k, share_prefix=False)
        assert not st2.shared_prefix
        scale = np.abs(copied).max()
        assert np.abs(batched[i] - copied).max() <= 1e-5 * scale
        assert np.abs(alone - copied).max() <= 1e-5 * scale
        # ranks agree up to near-ties: candidates closer than the observed float32 noise of the
        # other batch shape may swap places, nothing else may move
        for ref in (alone, copied):
            noise = float(np.abs(batched[i] - ref).max())
            for idx in (*probes, int(np.argmax(alone)), int(np.argmin(alone))):
                lo, hi = _rank_band(ref, idx, noise)
                assert lo <= en.rank_of(batched[i], idx) <= hi
    entries = [{"id": f"c{i}", "prefix": p, "secret": index_to_codes(int(rng.integers(0, 4 ** k)), k),
                "repetitions": i} for i, p in enumerate(prefixes)]
    seen = []
    results = en.exact_exposures(model, entries, on_progress=seen.append)
    assert seen[-1] == len(entries) and seen == sorted(seen)
    for i, (e, r) in enumerate(zip(entries, results, strict=True)):
        assert (r.canary_id, r.repetitions, r.secret_index) == (e["id"], i, codes_to_index(e["secret"]))
        lo, hi = _rank_band(batched[i], r.secret_index, 1e-5 * np.abs(batched[i]).max())
        assert lo <= r.rank <= hi
        assert r.exposure == pytest.approx(2 * k - np.log2(r.rank))


@pytest.mark.parametrize("family", causal_params("evo1"))
@pytest.mark.parametrize("width", [1, 4])
def test_batched_greedy_and_beam_equal_one_canary_at_a_time(family, width):
    model = _model(family)
    rng = np.random.default_rng(width)
    prefixes = [rng.integers(0, 4, n).astype(np.uint8) for n in (6, 9, 9, 9, 14)]
    k = 7
    codes, logp = ex.decode_secrets(model, prefixes, k, width=width)
    for i, p in enumerate(prefixes):
        one, lp1 = ex.decode_secrets(model, [p], k, width=width, share_prefix=False)
        assert np.array_equal(codes[i], one[0])
        assert logp[i] == pytest.approx(float(lp1[0]), rel=1e-5, abs=1e-5)


def test_canaries_spread_over_eight_devices(tmp_path):
    script = textwrap.dedent("""
        import json, sys
        import numpy as np
        import jax
        import glmjax.models
        from glmjax.audit import candidates as en
        model = glmjax.models.build("llama", seed=3)
        rng = np.random.default_rng(0)
        prefixes = [rng.integers(0, 4, 9).astype(np.uint8) for _ in range(16)]
        logp, stats = en.causal_candidate_logprobs_many(model, prefixes, 5)
        np.save(sys.argv[1], logp)
        print(json.dumps({"devices": jax.device_count(), "cpc": stats.canaries_per_call}))
    """)
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "logp.npy")], env=env, text=True,
                         capture_output=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    info = out.stdout.strip().splitlines()[-1]
    assert '"devices": 8' in info and '"cpc": 16' in info, info
    multi = np.load(tmp_path / "logp.npy")
    model = _model("llama")
    rng = np.random.default_rng(0)
    prefixes = [rng.integers(0, 4, 9).astype(np.uint8) for _ in range(16)]
    one, _ = en.causal_candidate_logprobs_many(model, prefixes, 5)
    assert np.abs(multi - one).max() <= 1e-5 * np.abs(one).max()
    for i in range(16):
        for idx in (0, 77, 1023, int(np.argmax(one[i]))):
            assert en.rank_of(multi[i], idx) == en.rank_of(one[i], idx)


@pytest.mark.parametrize("family", ["dnabert2", "nt"])
def test_masked_exposure_batched_over_canaries_equals_one_at_a_time(family):
    model = _model(family)
    rng = np.random.default_rng(5)
    k = 4
    # prefixes of different lengths: their rows are padded into the same batches (dnabert2) or
    # batched by length (nt); a chunk of (canary, candidate) pairs crosses canary boundaries
    prefixes = [rng.integers(0, 4, n).astype(np.uint8) for n in (9, 14, 9, 20)]
    old = en.CANDIDATE_CHUNK
    en.CANDIDATE_CHUNK = 100
    try:
        many = en.masked_candidate_pll_many(model, prefixes, k, batch_size=64)
    finally:
        en.CANDIDATE_CHUNK = old
    assert many.shape == (len(prefixes), 4 ** k)
    for i, p in enumerate(prefixes):
        alone = en.masked_candidate_pll(model, p, k, batch_size=256)
        assert np.abs(many[i] - alone).max() <= 1e-5 * np.abs(alone).max()
    entries = [{"id": f"m{i}", "prefix": p, "secret": index_to_codes(int(rng.integers(0, 4 ** k)), k)}
               for i, p in enumerate(prefixes)]
    seen: list[int] = []
    results = en.exact_exposures(model, entries, on_candidates=seen.append)
    assert sum(seen) == len(prefixes) * 4 ** k
    for i, r in enumerate(results):
        lo, hi = _rank_band(many[i], r.secret_index, 1e-5 * np.abs(many[i]).max())
        assert r.mode == "pll-secret" and lo <= r.rank <= hi
