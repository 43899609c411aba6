"""Scoring engine: tokenization, buckets, parity with an unbatched float64 reference, independence
of batch companions / bucket / batch size for every family, windows, resume, errors, merging."""

from __future__ import annotations

import h5py
import jax
import numpy as np
import pytest
from test_logprob_kernels import ref_position, ref_sequence

import glmjax.models as gm
from glmjax import alphabet
from glmjax.data.store import Record, SequenceStoreWriter
from glmjax.engine import batching, runner, sharding
from glmjax.engine.runner import Scorer, parse_mode, score, target_mask
from glmjax.engine.scorestore import MINK_PERCENTS, ROW_COLUMNS, ScoreStore, merge_scores
from glmjax.errors import ConfigError, GlmjaxError, SequenceError, StoreError
from glmjax.kernels.reductions import sequence_reductions
from glmjax.storage import partial_path
from glmjax.tokenizers import (
    causal_char_tokenizer,
    hyena_char_tokenizer,
    nt_kmer_tokenizer,
)

FLOAT_COLS = [c for c, t in ROW_COLUMNS.items() if t in (np.float32, np.float64)]


FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


@pytest.fixture(autouse=True)
def _fast_compile(tmp_path_factory, monkeypatch):
    """These tests compile far more than they compute: cheaper CPU code generation."""
    monkeypatch.setenv("GLMJAX_JAX_CACHE", str(tmp_path_factory.getbasetemp() / "jax-cache"))
    monkeypatch.setattr(runner, "COMPILER_OPTIONS", FAST_COMPILE)


def make_store(path, seqs, ids=None):
    with SequenceStoreWriter(path) as w:
        w.add([Record(id=ids[i] if ids else f"s{i}", codes=np.asarray(s, np.uint8)) for i, s in enumerate(seqs)])
    return path


def random_seqs(n, lo, hi, seed=0, with_n=False, lengths=None):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        size = lengths[i % len(lengths)] if lengths else int(rng.integers(lo, hi + 1))
        s = rng.integers(0, 4, size=size).astype(np.uint8)
        if with_n and s.size > 8:
            s[rng.integers(0, s.size, 2)] = 4
        out.append(s)
    return out


def read_all(path):
    with ScoreStore(path) as s:
        cols = {c: s.column(c) for c in ROW_COLUMNS}
        toks = {c: s.ragged_rows(c) for c in ("token_logp", "token_rank")} if s.has_token_values else None
        return cols, toks, s.mode, s.mode_params


def assert_same_scores(a, b, atol=1e-5):
    ca, ta = a[0], b[0]
    for c in ("index", "id", "n_nucleotides", "n_tokens"):
        np.testing.assert_array_equal(ca[c], ta[c], err_msg=c)
    for c in FLOAT_COLS:
        np.testing.assert_allclose(ca[c], ta[c], rtol=atol, atol=atol, err_msg=c)


# ---------------------------------------------------------------------------------------------
# host side

@pytest.mark.parametrize("tok", [hyena_char_tokenizer(), causal_char_tokenizer(), nt_kmer_tokenizer(1),
                                 nt_kmer_tokenizer(2)], ids=lambda t: t.name)
def test_vectorised_tokenization_equals_tokenizer(tok):
    seqs = random_seqs(40, 0, 30, seed=3, with_n=True)
    offs = np.concatenate([[0], np.cumsum([s.size for s in seqs])])
    block = batching.tokenize_block(tok, np.concatenate(seqs), offs)
    assert len(block) == len(seqs)
    for i, s in enumerate(seqs):
        e = tok.encode_codes(s)
        p = block.piece(i)
        np.testing.assert_array_equal(p.ids, e.ids)
        np.testing.assert_array_equal(p.scored, e.scored)
        np.testing.assert_array_equal(p.nucleotides, e.nucleotides)


def test_bucket_lengths_and_windows():
    for n in range(1, 3000):
        b = batching.bucket_length(n)
        assert b >= n and b % 8 == 0 and (n < 64 or b <= n * 1.125 + 8)
    assert batching.bucket_length(1002) == 1024 and batching.bucket_length(168) == 176
    assert batching.bucket_length(60, max_len=60) == 60
    seq, piece, start = batching.window_pieces(np.array([5, 12, 0]), 5)
    np.testing.assert_array_equal(seq, [0, 1, 1, 1, 2])
    np.testing.assert_array_equal(piece, [0, 0, 1, 2, 0])
    np.testing.assert_array_equal(start, [0, 0, 5, 10, 0])
    policies = {name: batching.padding_policy(spec) for name, spec in gm.families().items()}
    assert policies == {**{n: "right" for n in policies}, "caduceus": "exact"}


def test_block_bounds():
    lens = np.array([5, 5, 5, 30, 1, 1, 1, 1])
    np.testing.assert_array_equal(runner.block_bounds(lens, 3, 12), [0, 2, 3, 4, 7, 8])
    np.testing.assert_array_equal(runner.block_bounds(lens, 100, 10**9), [0, 8])
    np.testing.assert_array_equal(runner.block_bounds(lens[:0], 3, 12), [0])


def test_parse_mode():
    assert parse_mode("causal").name == "causal"
    assert parse_mode("masked").name == "pll-exact"
    assert parse_mode("masked", "strided:4").param_dict == {"k": 4}
    assert parse_mode("masked", "random:8", seed=3).param_dict == {"k": 8, "fraction": 0.15, "seed": 3}
    for bad in ("strided:0", "random:x", "sometimes", "random:4:2.0"):
        with pytest.raises(ConfigError):
            parse_mode("masked", bad)
    with pytest.raises(ConfigError):
        parse_mode("causal", "exact")


# ---------------------------------------------------------------------------------------------
# batch independence, every family

def _pieces_batch(tok, seqs, length, size):
    offs = np.concatenate([[0], np.cumsum([s.size for s in seqs])])
    tb = batching.tokenize_block(tok, np.concatenate(seqs), offs)
    n = len(seqs)
    return batching.assemble(tb, np.arange(n), length, size, tok.pad_id, np.arange(n) + 7, np.zeros(n))


# llama/nt (attention with a mask), hyenadna (mask-less causal) and caduceus (mask-less
# bidirectional, exact-length batches) cover the padding policies in the default run.
CORE_FAMILIES = ("llama", "nt", "hyenadna", "caduceus")


@pytest.mark.parametrize("family", [f if f in CORE_FAMILIES else pytest.param(f, marks=pytest.mark.slow)
                                    for f in sorted(gm.families())])
def test_scores_do_not_depend_on_batch_bucket_or_size(family):
    model = gm.build(family)
    tok = model.tokenizer
    mode = parse_mode(model.objective, "random:3:0.3" if family == "nt" else "strided:2", seed=1) \
        if model.objective == "masked" else parse_mode("causal")
    policy = batching.padding_policy(model.spec)
    scorer = Scorer(model, mode, sharding.make_mesh(1), per_token=True, batch_tokens=4096)
    rng = np.random.default_rng(11)
    target = rng.integers(0, 4, 30).astype(np.uint8)
    comp_len = (30, 30, 30) if policy == "exact" else (44, 9, 37)
    others = [rng.integers(0, 4, n).astype(np.uint8) for n in comp_len]
    n_tok = tok.encode_codes(target).ids.shape[0]
    alone = _pieces_batch(tok, [target], n_tok, 1)
    # in a batch: other companions, another position, padded to a larger bucket, more rows
    mixed_seqs = [others[0], target, others[1], others[2]]
    longest = max(tok.encode_codes(s).ids.shape[0] for s in mixed_seqs)
    length = longest if policy == "exact" else batching.bucket_length(longest + 9)
    mixed = _pieces_batch(tok, mixed_seqs, length, 4)
    mixed.rows[1] = alone.rows[0]  # same input row -> same random masks
    ra, ta = jax.device_get(scorer(scorer.device_batch(alone)))
    rm, tm = jax.device_get(scorer(scorer.device_batch(mixed)))
    np.testing.assert_allclose(rm[1], ra[0], rtol=1e-5, atol=1e-5)
    ma = target_mask(alone.scored, model.objective)[0]
    mm = target_mask(mixed.scored, model.objective)[1]
    np.testing.assert_allclose(tm[1][mm], ta[0][ma], rtol=1e-5, atol=1e-5)
    assert np.isfinite(ra[0][1])  # sum_logp


# ---------------------------------------------------------------------------------------------
# end to end

@pytest.fixture(scope="module")
def llama():
    return gm.build("llama", seed=3)


def reference_causal(model, seqs):
    """Per-sequence float64 statistics from one unpadded forward per sequence."""
    tok = model.tokenizer
    rows = []
    for s in seqs:
        e = tok.encode_codes(s)
        logits = np.asarray(model.logits(e.ids[None]))[0]
        st = [ref_position(logits[t - 1], int(e.ids[t])) for t in range(1, e.ids.shape[0]) if e.scored[t]]
        ref = ref_sequence(*([p[k] for p in st] for k in ("logp", "mu", "sigma", "entropy", "rank")))
        ref["logp_per_nt"] = ref["sum_logp"] / len(st)
        rows.append(ref)
    return rows


def test_causal_engine_matches_reference_and_any_batching(tmp_path, llama):
    seqs = random_seqs(9, 0, 0, seed=1, lengths=(26, 31))
    store = make_store(tmp_path / "in.h5", seqs)
    score(llama, store, tmp_path / "a.h5", batch_tokens=4096, block_rows=100, per_token=True)
    a = read_all(tmp_path / "a.h5")
    assert a[2] == "causal" and a[3] == {}
    ref = reference_causal(llama, seqs)
    for i, r in enumerate(ref):
        for k, v in r.items():
            np.testing.assert_allclose(a[0][k][i], v, rtol=1e-5, atol=1e-5, err_msg=k)
    np.testing.assert_array_equal(a[0]["n_nucleotides"], [s.size for s in seqs])
    np.testing.assert_array_equal(a[0]["index"], np.arange(9))
    # small batches and blocks: other shapes, other companions, rows come back out of order
    score(llama, store, tmp_path / "b.h5", batch_tokens=64, block_rows=4, per_token=True)
    b = read_all(tmp_path / "b.h5")
    assert_same_scores(a, b)
    for x, y in zip(a[1]["token_logp"], b[1]["token_logp"], strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)
    # blocks prepared by several host threads arrive in order: the file is the same row for row
    score(llama, store, tmp_path / "c.h5", batch_tokens=64, block_rows=2, per_token=True, host_workers=1)
    score(llama, store, tmp_path / "d.h5", batch_tokens=64, block_rows=2, per_token=True, host_workers=3)
    c, d = read_all(tmp_path / "c.h5"), read_all(tmp_path / "d.h5")
    for k in c[0]:
        np.testing.assert_array_equal(c[0][k], d[0][k], err_msg=k)
    for x, y in zip(c[1]["token_logp"], d[1]["token_logp"], strict=True):
        np.testing.assert_array_equal(x, y)
    # per-token values reduce to the row statistics
    with ScoreStore(tmp_path / "a.h5") as s:
        for i in range(len(s)):
            t = [s.token_values(n, i).astype(np.float64)[None] for n in ("logp", "mu", "sigma", "entropy", "rank")]
            red = sequence_reductions(*t, None, np.ones_like(t[0], bool), MINK_PERCENTS, xp=np)
            for k in ("mean_logp", "mink_10", "minkpp_50", "mean_rank"):
                np.testing.assert_allclose(red[k][0], a[0][k][i], rtol=1e-5, atol=1e-6)
            assert s.token_values("rank", i).dtype == np.int32


def test_masked_exact_pll_matches_reference(tmp_path):
    model = gm.build("nt", seed=2)
    tok = model.tokenizer
    # 36, 31 and 26 nt are all 7 tokens (<cls>, 6-mers, single bases): one reference shape
    seqs = random_seqs(3, 0, 0, seed=4, lengths=(36, 31, 26))
    store = make_store(tmp_path / "in.h5", seqs)
    score(model, store, tmp_path / "pll.h5", batch_tokens=256, per_token=True)
    cols, toks, mode, params = read_all(tmp_path / "pll.h5")
    assert mode == "pll-exact"
    for i, s in enumerate(seqs):
        e = tok.encode_codes(s)
        pos = np.flatnonzero(e.scored)
        copies = np.repeat(e.ids[None], pos.size, 0)
        copies[np.arange(pos.size), pos] = tok.mask_id
        logits = np.asarray(model.logits(copies))
        st = [ref_position(logits[j, t], int(e.ids[t])) for j, t in enumerate(pos)]
        ref = ref_sequence(*([p[k] for p in st] for k in ("logp", "mu", "sigma", "entropy", "rank")))
        for k, v in ref.items():
            np.testing.assert_allclose(cols[k][i], v, rtol=1e-5, atol=1e-5, err_msg=k)
        # 6-mers: per-nucleotide normalisation divides by the nucleotides, not the tokens
        np.testing.assert_allclose(cols["logp_per_nt"][i], ref["sum_logp"] / s.size, rtol=1e-5)
        np.testing.assert_allclose(toks["token_logp"][i], [p["logp"] for p in st], rtol=1e-5, atol=1e-5)


def test_random_pll_estimator(tmp_path):
    model = gm.build("nt", seed=2)
    store = make_store(tmp_path / "in.h5", random_seqs(4, 30, 40, seed=5))
    score(model, store, tmp_path / "r.h5", pll="random:3:0.3", seed=7, per_token=True)
    cols, toks, mode, params = read_all(tmp_path / "r.h5")
    assert mode == "pll-random" and params == {"k": 3, "fraction": 0.3, "seed": 7}
    for i, t in enumerate(toks["token_logp"]):
        cov = ~np.isnan(t)
        assert cov.any() and t.size == cols["n_tokens"][i]
        np.testing.assert_allclose(cols["mean_logp"][i], t[cov].mean(), rtol=1e-5)
        np.testing.assert_allclose(cols["sum_logp"][i], t[cov].mean() * t.size, rtol=1e-5)
        assert (toks["token_rank"][i][~cov] == -1).all()


def test_windows(tmp_path, llama):
    seqs = random_seqs(3, 60, 75, seed=6)
    store = make_store(tmp_path / "in.h5", seqs)
    w = 30
    score(llama, store, tmp_path / "w.h5", window=w, per_token=True, batch_tokens=64)
    pieces = [s[i:i + w] for s in seqs for i in range(0, s.size, w)]
    score(llama, make_store(tmp_path / "p.h5", pieces), tmp_path / "p_out.h5", per_token=True, batch_tokens=64)
    cw, tw, *_ = read_all(tmp_path / "w.h5")
    cp, tp, *_ = read_all(tmp_path / "p_out.h5")
    k = 0
    for i, s in enumerate(seqs):
        n = -(-s.size // w)
        cat = np.concatenate(tp["token_logp"][k:k + n])
        np.testing.assert_allclose(tw["token_logp"][i], cat, rtol=1e-5, atol=1e-5)
        assert cw["n_tokens"][i] == cp["n_tokens"][k:k + n].sum() == cat.size
        np.testing.assert_allclose(cw["sum_logp"][i], cp["sum_logp"][k:k + n].sum(), rtol=1e-5)
        np.testing.assert_allclose(cw["mink_20"][i], np.sort(cat)[:max(1, int(cat.size * 0.2))].mean(), rtol=1e-5)
        k += n
    np.testing.assert_array_equal(cw["n_nucleotides"], [s.size for s in seqs])


def test_resume_after_interrupt_gives_identical_file(tmp_path, llama):
    store = make_store(tmp_path / "in.h5", random_seqs(16, 25, 31, seed=8))
    score(llama, store, tmp_path / "full.h5", block_rows=3, per_token=True)
    out = tmp_path / "cut.h5"

    def stop_after_two(rows):
        if rows >= 6:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        score(llama, store, out, block_rows=3, per_token=True, on_commit=stop_after_two)
    assert partial_path(out).exists() and not out.exists()
    with h5py.File(partial_path(out)) as f:
        assert int(f.attrs["committed_rows"]) == 6
    s = score(llama, store, out, block_rows=3, per_token=True)
    assert s.resumed_rows == 6 and s.rows == 16
    a, b = read_all(tmp_path / "full.h5"), read_all(out)
    for c in ROW_COLUMNS:
        np.testing.assert_array_equal(a[0][c], b[0][c], err_msg=c)
    for x, y in zip(a[1]["token_logp"], b[1]["token_logp"], strict=True):
        np.testing.assert_array_equal(x, y)
    # a partial file of another configuration is not silently continued
    with pytest.raises(KeyboardInterrupt):
        score(llama, store, tmp_path / "x.h5", block_rows=3, per_token=True, window=60, on_commit=stop_after_two)
    with pytest.raises(StoreError, match="other options"):
        score(llama, store, tmp_path / "x.h5", block_rows=3, per_token=True)


def test_bad_inputs_fail_before_scoring_and_leave_nothing(tmp_path, llama):
    store = make_store(tmp_path / "in.h5", random_seqs(9, 25, 31))
    out = tmp_path / "o.h5"
    score(llama, store, out, per_token=True)
    with pytest.raises(StoreError, match="ScoreStore, not a glmjax.SequenceStore"):
        score(llama, out, tmp_path / "o2.h5")
    long = make_store(tmp_path / "long.h5", [np.zeros(10, np.uint8), np.zeros(300, np.uint8)], ids=["ok", "big"])
    with pytest.raises(SequenceError, match="'big'.*--window"):
        score(llama, long, tmp_path / "o3.h5")
    with pytest.raises(ConfigError, match="window"):
        score(llama, long, tmp_path / "o3.h5", window=1000)
    with pytest.raises(StoreError, match="already exists"):
        score(llama, store, out)
    with pytest.raises(GlmjaxError):
        score(llama, tmp_path / "missing.h5", tmp_path / "o4.h5")
    with pytest.raises(ConfigError):
        score(llama, store, tmp_path / "nodir" / "o5.h5")
    for name in ("o2.h5", "o3.h5", "o4.h5", "o5.h5"):
        assert not (tmp_path / name).exists() and not partial_path(tmp_path / name).exists()


def test_fasta_input_and_merge(tmp_path, llama):
    seqs = random_seqs(9, 25, 31, seed=9)
    fa = tmp_path / "in.fa"
    fa.write_text("".join(f">r{i} x\n{alphabet.decode(s)}\n" for i, s in enumerate(seqs)))
    score(llama, fa, tmp_path / "fa.h5", per_token=True)
    store = make_store(tmp_path / "in.h5", seqs, ids=[f"r{i}" for i in range(9)])
    score(llama, store, tmp_path / "st.h5", per_token=True)
    a, b = read_all(tmp_path / "fa.h5"), read_all(tmp_path / "st.h5")
    assert list(a[0]["id"]) == [f"r{i}" for i in range(9)]
    assert_same_scores(a, b)
    for i in range(2):
        score(llama, store, tmp_path / "sh.h5", process_index=i, process_count=2, per_token=True,
              batch_tokens=64)
    shards = sorted(tmp_path.glob("sh.shard*"))
    assert len(shards) == 2
    merge_scores(shards[::-1], tmp_path / "merged.h5")
    assert_same_scores(b, read_all(tmp_path / "merged.h5"))
    with pytest.raises(StoreError, match="complete set"):
        merge_scores(shards[:1], tmp_path / "m2.h5")
    model2 = gm.build("nt")
    score(model2, store, tmp_path / "nt.h5", pll="strided:2", process_index=1, process_count=2)
    with pytest.raises(StoreError, match="never merged"):
        merge_scores([shards[0], tmp_path / "nt.shard00001-of-00002.h5"], tmp_path / "m3.h5")
    assert not (tmp_path / "m3.h5").exists()


# ---------------------------------------------------------------------------------------------
# compilation settings

def _dot_precisions(hlo_text: str) -> set[str]:
    import re

    return set(re.findall(r"precision = \[(\w+), \w+\]", hlo_text))


@pytest.mark.parametrize("dtype,want", [("float32", {"HIGHEST"}), ("bfloat16", {"DEFAULT"})])
def test_forward_passes_trace_float32_matmuls_at_full_precision(dtype, want):
    """float32 models: every matmul of the scoring step and of LoadedModel.logits asks for full
    float32 precision (GPUs would otherwise use TF32); bf16 models keep the default."""
    cls = gm.get_family("llama").config_cls
    model = gm.build("llama", cls.from_dict({**cls.tiny().to_dict(), "dtype": dtype}), seed=0)
    assert gm.base.matmul_precision(model.config) == ("highest" if dtype == "float32" else "default")
    scorer = Scorer(model, parse_mode("causal"), sharding.make_mesh(1), batch_tokens=256)
    batch = _pieces_batch(model.tokenizer, [np.zeros(12, np.uint8)], 16, 1)
    assert _dot_precisions(scorer.lower(scorer.device_batch(batch)).as_text()) == want
    model.logits(np.zeros((1, 8), np.int32))
    fwd, state = model._fwd
    ids = jax.numpy.zeros((1, 8), jax.numpy.int32)
    assert _dot_precisions(fwd.lower(state, ids, None).as_text()) == want


def test_family_gpu_compiler_options_apply_on_gpu_only(monkeypatch):
    spec = gm.get_family("nt")
    assert spec.gpu_compiler_options  # measured for NT-500M (BENCHMARKS.md)
    monkeypatch.setattr(runner, "COMPILER_OPTIONS", None)
    assert runner.compiler_options(spec, "cpu") is None
    assert runner.compiler_options(spec, "gpu") == spec.gpu_compiler_options
    monkeypatch.setattr(runner, "COMPILER_OPTIONS", {"xla_gpu_enable_triton_gemm": True, "a": 1})
    assert runner.compiler_options(spec, "cpu") == {"xla_gpu_enable_triton_gemm": True, "a": 1}
    assert runner.compiler_options(spec, "gpu")["xla_gpu_enable_triton_gemm"] is True
    assert runner.compiler_options(gm.get_family("llama"), "gpu") == {"xla_gpu_enable_triton_gemm": True, "a": 1}


def test_score_sequences_in_memory_matches_reference(llama):
    """A list of strings (or code arrays) scores to the float64 reference, in input order."""
    from glmjax.engine.runner import score_sequences

    seqs = random_seqs(5, 0, 0, seed=3, lengths=(19, 27, 8))
    strs = [alphabet.decode(s) for s in seqs]
    cols = score_sequences(llama, [strs[0], seqs[1], strs[2].lower(), *strs[3:]], ids=list("abcde"),
                           per_token=True)
    assert list(cols["id"]) == list("abcde")
    np.testing.assert_array_equal(cols["n_nucleotides"], [s.size for s in seqs])
    for i, r in enumerate(reference_causal(llama, seqs)):
        for k, v in r.items():
            np.testing.assert_allclose(cols[k][i], v, rtol=1e-5, atol=1e-5, err_msg=k)
        assert cols["tokens"]["token_logp"][i].shape == (int(cols["n_tokens"][i]),)
    with pytest.raises(SequenceError, match="0..4"):
        score_sequences(llama, [np.array([0, 7], np.uint8)])
    with pytest.raises(SequenceError, match="not a nucleotide"):
        score_sequences(llama, ["ACGZ"])
    with pytest.raises(ConfigError, match="not one string"):
        score_sequences(llama, "ACGT")
