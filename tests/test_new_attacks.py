"""DC-PDD, ReCaLL and the gradient-norm attack: each against an independent loop implementation
of its published formula, the engine's token reducer against stored per-token values, and all
three on a model that memorised its members (AUC above 0.5 with the CI excluding it)."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from glmjax import models
from glmjax.audit import dcpdd as DC
from glmjax.audit import modelattacks as MA
from glmjax.errors import ConfigError

# ------------------------------------------------------------------ DC-PDD


def _dcpdd_loop(tokens, logps, ref_rows, n, cap, leave_out=None, alphabet=None):
    """DC-PDD written from the reference code: first occurrences, Laplace-smoothed frequencies,
    alpha = min(p * ln(1/f), a), mean; one dict per row, float64 loops."""
    counts: dict[tuple, int] = {}
    total = 0
    seen_tokens = set()
    for r in ref_rows:
        seen_tokens.update(int(t) for t in r)
        for t in range(n - 1, len(r)):
            g = tuple(int(x) for x in r[t - n + 1:t + 1])
            counts[g] = counts.get(g, 0) + 1
            total += 1
    a_size = alphabet if alphabet is not None else len(seen_tokens)
    out = []
    for i, (toks, lp) in enumerate(zip(tokens, logps, strict=True)):
        own: dict[tuple, int] = {}
        own_total = 0
        for t in range(n - 1, len(toks)):
            g = tuple(int(x) for x in toks[t - n + 1:t + 1])
            own[g] = own.get(g, 0) + 1
            own_total += 1
        seen = set()
        alphas = []
        for t in range(n - 1, len(toks)):
            g = tuple(int(x) for x in toks[t - n + 1:t + 1])
            if g in seen:
                continue
            seen.add(g)
            window = [float(x) for x in lp[t - n + 1:t + 1]]
            if any(math.isnan(x) for x in window):
                continue
            c, tot = counts.get(g, 0), total
            if leave_out is not None and leave_out[i]:
                c, tot = c - own[g], tot - own_total
            f = (c + 1) / (tot + a_size ** n)
            alphas.append(min(math.exp(sum(window)) * math.log(1 / f), cap))
        out.append(sum(alphas) / len(alphas) if alphas else 0.0)
    return np.array(out)


def _rows(rng, n_rows, vocab, lo=1, hi=40, nan_rate=0.1):
    toks = [rng.integers(0, vocab, size=rng.integers(lo, hi)) for _ in range(n_rows)]
    lps = []
    for t in toks:
        lp = np.log(rng.uniform(0.05, 1.0, size=len(t)))
        lp[rng.uniform(size=len(t)) < nan_rate] = np.nan
        lps.append(lp)
    return toks, lps


@pytest.mark.parametrize("n,vocab,cap", [(1, 7, 0.01), (3, 4, 0.05), (6, 5, 0.01), (2, 11, 10.0)])
def test_dcpdd_matches_the_loop_reference(n, vocab, cap):
    rng = np.random.default_rng(n * 31 + vocab)
    toks, lps = _rows(rng, 60, vocab)
    toks[0] = np.array([2, 2, 2, 2, 2, 2, 2, 2])          # repeats: only the first occurrence counts
    lps[0] = np.log(np.linspace(0.9, 0.2, 8))
    toks[1] = np.array([1])                                # shorter than n (for n > 1): score 0
    lps[1] = np.array([np.nan])                            # no prediction at all: score 0
    ref = [rng.integers(0, vocab, size=rng.integers(1, 50)) for _ in range(30)]
    table = DC.ngram_table(ref, n)
    got = DC.dcpdd_scores(toks, lps, table, cap=cap)
    want = _dcpdd_loop(toks, lps, ref, n, cap)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
    assert got[1] == 0.0
    # unigrams: exactly the reference implementation's (1 + count) / (sum + |V|) smoothing
    assert table.alphabet == len({int(t) for r in ref for t in r})
    # a token the reference never saw (id 99) is its own symbol, with count 0
    other = DC.dcpdd_scores([np.array([99] * n)], [np.full(n, -0.1)], table, cap=cap)
    f = 1 / (table.total + table.alphabet ** n)
    assert other[0] == pytest.approx(min(math.exp(-0.1 * n) * -math.log(f), cap))


def test_dcpdd_leave_one_out_and_chunked_tables():
    rng = np.random.default_rng(5)
    toks, lps = _rows(rng, 40, 4, lo=5, hi=60)
    ref_idx = np.arange(0, 40, 2)                          # every second row is also a reference row
    ref = [toks[i] for i in ref_idx] + [rng.integers(0, 4, size=30) for _ in range(10)]
    leave = np.zeros(40, bool)
    leave[ref_idx] = True
    whole = DC.ngram_table(ref, 4)
    chunked = DC.merge_tables([DC.ngram_table(ref[:7], 4, np.arange(4)), DC.ngram_table(ref[7:], 4, np.arange(4))])
    np.testing.assert_array_equal(whole.grams, chunked.grams)
    np.testing.assert_array_equal(whole.counts, chunked.counts)
    assert whole.total == chunked.total
    got = DC.dcpdd_scores(toks, lps, chunked, cap=0.02, leave_out=leave)
    want = _dcpdd_loop(toks, lps, ref, 4, 0.02, leave_out=leave, alphabet=4)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
    # the threaded version over chunks of rows gives the same numbers
    np.testing.assert_array_equal(DC.dcpdd_scores_parallel(toks, lps, chunked, cap=0.02, leave_out=leave,
                                                           workers=3, chunk_tokens=100), got)
    # leaving a row out matters: its own n-grams no longer make it look common
    plain = DC.dcpdd_scores(toks, lps, chunked, cap=0.02)
    assert (got[leave] >= plain[leave] - 1e-15).all() and (got[leave] > plain[leave]).any()
    np.testing.assert_array_equal(got[~leave], plain[~leave])
    with pytest.raises(ConfigError, match="not in it"):
        DC.dcpdd_scores([np.array([3, 3, 3, 3, 3, 3])], [np.zeros(6)],
                        DC.ngram_table([np.array([0, 1, 2, 3])], 4), leave_out=np.array([True]))
    with pytest.raises(ConfigError, match="62 bits"):
        DC.gram_ids(np.zeros(3, np.int64), np.array([0, 3]), 20, 512)
    # a large n-gram space (no dense table) gives the same scores through its sorted counts
    big = DC.ngram_table(ref, 13)
    assert big._dense is None
    np.testing.assert_allclose(DC.dcpdd_scores(toks, lps, big, cap=0.02),
                               _dcpdd_loop(toks, lps, ref, 13, 0.02, alphabet=big.alphabet), rtol=1e-12, atol=1e-15)


def test_dcpdd_of_a_sure_prediction_is_the_cap():
    """p = 1 on every token and rare n-grams: every alpha hits the cap a."""
    table = DC.ngram_table([np.array([0, 1, 0, 1, 0, 1])], 1)
    s = DC.dcpdd_scores([np.array([2, 3, 2])], [np.zeros(3)], table, cap=0.01)
    assert s[0] == pytest.approx(0.01)


# ------------------------------------------------------------------ the engine's token reducer


@pytest.fixture(scope="module")
def tiny_llama():
    cfg = dataclasses.replace(models.get_family("llama").config_cls.tiny(), hidden_size=32, intermediate_size=64)
    return models.build("llama", cfg, seed=1)


def _seqs(rng, n, lo=20, hi=90):
    return [rng.integers(0, 4, size=rng.integers(lo, hi)).astype(np.uint8) for _ in range(n)]


def test_token_reducer_sees_the_stored_per_token_values(tiny_llama, tmp_path):
    from glmjax.data.store import Record, SequenceStoreWriter
    from glmjax.engine.runner import score
    from glmjax.engine.scorestore import ScoreStore

    rng = np.random.default_rng(0)
    seqs = _seqs(rng, 37)
    with SequenceStoreWriter(tmp_path / "in.h5") as w:
        w.add([Record(f"s{i}", s) for i, s in enumerate(seqs)])
    seen: dict[int, tuple] = {}

    def reducer(lo, hi, ids, logp):
        for r in range(lo, hi):
            seen[r] = (ids[r - lo], logp[r - lo])
        return {"first_logp": np.array([lp[1] for lp in logp]), "n": np.array([len(i) for i in ids])}

    summ = score(tiny_llama, tmp_path / "in.h5", tmp_path / "a.h5", per_token=True, resume=False,
                 token_reducer=reducer, block_rows=8, batch_tokens=256)
    assert sorted(seen) == list(range(37))
    with ScoreStore(tmp_path / "a.h5") as s:
        stored = s.ragged_rows("token_logp")
    toks = MA.scored_tokens(tiny_llama.tokenizer, seqs)
    for r in range(37):
        ids, lp = seen[r]
        np.testing.assert_array_equal(ids, toks[r])       # the scored tokens, in order
        np.testing.assert_array_equal(lp, stored[r])       # ([BOS] first: every nucleotide is predicted)
    np.testing.assert_array_equal(summ.reduced["n"], [len(t) for t in toks])
    # another batching gives the same columns (batch- and block-independence)
    other = score(tiny_llama, tmp_path / "in.h5", tmp_path / "b.h5", resume=False, token_reducer=reducer,
                  block_rows=5, batch_tokens=1024)
    np.testing.assert_allclose(other.reduced["first_logp"], summ.reduced["first_logp"], rtol=2e-6, atol=2e-6)
    with pytest.raises(ConfigError, match="resume=False"):
        score(tiny_llama, tmp_path / "in.h5", tmp_path / "c.h5", token_reducer=reducer)


# ------------------------------------------------------------------ ReCaLL


def test_recall_conditional_likelihood_is_that_of_the_sequence_after_the_prefix(tiny_llama):
    """(sum_logp(P x) - sum_logp(P)) / (n(P x) - n(P)) equals the mean log p of x's own tokens
    scored after P (read from the per-token values of P x)."""
    from glmjax.engine.runner import score_sequences

    rng = np.random.default_rng(3)
    prefix = rng.integers(0, 4, size=40).astype(np.uint8)
    xs = _seqs(rng, 6)
    cols = score_sequences(tiny_llama, [prefix] + [np.concatenate([prefix, x]) for x in xs], per_token=True)
    cond = MA.conditional_mean_logp(cols["sum_logp"][1:], cols["n_tokens"][1:], cols["sum_logp"][0],
                                    cols["n_tokens"][0])
    for i, x in enumerate(xs):
        lp = np.asarray(cols["tokens"]["token_logp"][i + 1], np.float64)
        assert cond[i] == pytest.approx(lp[-len(x):].mean(), rel=1e-5)
    plain = score_sequences(tiny_llama, xs)["mean_logp"]
    r = MA.recall_ratio(cond, plain)
    np.testing.assert_allclose(r, cond / plain)
    assert MA.recall_ratio(np.array([-1.0]), np.array([0.0]))[0] == pytest.approx(1e30)
    with pytest.raises(ConfigError, match="NaN"):
        MA.recall_ratio(np.array([np.nan]), np.array([-1.0]))
    p, used = MA.recall_prefix(xs, 2, 50, seed=0)
    assert len(used) == 2 and len(p) <= 50
    np.testing.assert_array_equal(p, np.concatenate([xs[i] for i in used])[-50:])
    with pytest.raises(ConfigError, match="more than"):
        MA.recall_prefix(xs[:2], 2, 50, seed=0)


def test_recall_and_gradnorm_support():
    nt = models.build("nt", models.get_family("nt").config_cls.tiny(), seed=0)
    assert "causal" in MA.recall_support(nt)
    assert MA.gradnorm_support(nt) is None
    assert "GiB" in MA.gradnorm_support(nt, max_bytes=1000)


# ------------------------------------------------------------------ gradient norm


def _gradnorm_loop(model, seqs, ps, seed, rows, mask_fraction=0.15):
    """One unpadded sequence at a time: jax.grad of the mean token loss, numpy norms per tensor;
    ``{p: scores}`` for every p in ``ps``."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    graphdef, params, rest = nnx.split(model.module, nnx.Param, ...)
    out: dict = {p: [] for p in ps}
    for s, r in zip(seqs, rows, strict=True):
        enc = model.tokenizer.encode_codes(s)
        ids = jnp.asarray(enc.ids[None])
        att = jnp.ones_like(ids, dtype=bool)
        sc = np.asarray(enc.scored)[None]

        def loss(prm, ids, att, sc, r):
            m = nnx.merge(graphdef, prm, rest)
            if model.objective == "causal":
                lp = jax.nn.log_softmax(m(ids, att)[:, :-1].astype(jnp.float32), -1)
                tok = jnp.take_along_axis(lp, ids[:, 1:, None], -1)[..., 0]
                w = sc[:, 1:].astype(jnp.float32)
            else:
                key = jax.random.fold_in(jax.random.key(seed), r)
                sel = (jax.random.uniform(key, ids.shape) < mask_fraction) & sc
                lp = jax.nn.log_softmax(m(jnp.where(sel, model.tokenizer.mask_id, ids), att).astype(jnp.float32), -1)
                tok = jnp.take_along_axis(lp, ids[..., None], -1)[..., 0]
                w = sel.astype(jnp.float32)
            return -(tok * w).sum() / jnp.maximum(w.sum(), 1.0)

        g = jax.tree_util.tree_leaves(jax.jit(jax.grad(loss))(params, ids, att, jnp.asarray(sc), r))
        for p in ps:
            out[p].append(-float(np.mean([np.linalg.norm(np.asarray(x, np.float64).ravel(), ord=p) for x in g])))
    return {p: np.array(v) for p, v in out.items()}


def test_gradnorm_matches_per_sequence_gradients(tiny_llama):
    rng = np.random.default_rng(7)
    seqs = [rng.integers(0, 4, size=n).astype(np.uint8) for n in (24, 56, 24, 40, 56, 40)]  # 3 shapes to compile
    rows = np.arange(100, 106)
    want = _gradnorm_loop(tiny_llama, seqs, (math.inf, 2, 1), 0, rows)
    for p in (math.inf, 2, 1):
        got = MA.gradnorm_scores(tiny_llama, seqs, p=p, rows=rows, memory_bytes=4 * tiny_llama.num_params() * 4)
        np.testing.assert_allclose(got, want[p], rtol=2e-4)
    # batch-independence: one sequence at a time (no padding) gives the same scores
    alone = MA.gradnorm_scores(tiny_llama, seqs[1:2], rows=rows[1:2])
    np.testing.assert_allclose(alone, want[math.inf][1:2], rtol=2e-4)
    with pytest.raises(ConfigError, match="1, 2 or inf"):
        MA.gradnorm_scores(tiny_llama, seqs, p=3)


def test_gradnorm_of_a_masked_family_matches_the_loop():
    nt = models.build("nt", models.get_family("nt").config_cls.tiny(), seed=0)
    rng = np.random.default_rng(8)
    seqs = [rng.integers(0, 4, size=96).astype(np.uint8) for _ in range(4)]   # one length: no padding
    got = MA.gradnorm_scores(nt, seqs, p=2, seed=3, rows=np.arange(4))
    np.testing.assert_allclose(got, _gradnorm_loop(nt, seqs, (2,), 3, np.arange(4))[2], rtol=2e-4)
    assert (got < 0).sum() >= 3                            # masked positions were drawn: real gradients


# ------------------------------------------------------------------ on a memorising model


@pytest.fixture(scope="module")
def memorised(tmp_path_factory):
    """A llama trained for 40 epochs on half of 190 lambda-phage windows, audited without canaries."""
    from importlib import resources

    from glmjax.audit.pipeline import AuditOptions, run_audit
    from glmjax.data.fasta import WindowSpec, window_to_store
    from glmjax.data.splits import split_store
    from glmjax.train.trainer import TrainConfig, train

    d = tmp_path_factory.mktemp("memorised")
    fa = resources.files("glmjax.resources").joinpath("lambda_phage.fa.gz")
    window_to_store(str(fa), d / "w.h5", WindowSpec(length=64, stride=256))
    split_store(d / "w.h5", 0.5, 3)
    cfg = dataclasses.replace(models.get_family("llama").config_cls.tiny(), hidden_size=128, intermediate_size=256)
    train(models.build("llama", cfg, seed=0), d / "w.h5",
          TrainConfig(epochs=40, batch_size=32, lr=5e-3, warmup_steps=5), d / "run", val_fraction=0.0)
    res = run_audit(d / "run" / "model", d / "w.h5", d / "report", opts=AuditOptions(neighbours=0, n_bootstrap=200),
                    log=lambda *a: None)
    return d, res.report


def test_new_attacks_detect_memorised_members(memorised):
    from glmjax.audit.schema import validate_report

    d, rep = memorised
    validate_report(json.loads((d / "report" / "report.json").read_text()))
    attacks = rep["mia"]["attacks"]
    for name in ("dcpdd", "recall", "gradnorm"):
        lo, hi = attacks[name]["auc_ci"]
        assert attacks[name]["auc"] > 0.5 and lo > 0.5, (name, attacks[name]["auc"], lo)
        assert "randomised" in attacks[name] and "settings" in attacks[name]
    assert attacks["dcpdd"]["settings"]["leave_one_out"] is True and attacks["dcpdd"]["settings"]["n"] == 6
    assert attacks["recall"]["settings"]["prefix_nucleotides"] == 64
    assert attacks["gradnorm"]["settings"]["p"] == "inf" and attacks["gradnorm"]["rows"] == attacks["recall"]["rows"] + 1
    assert list(rep["timings"])[:3] == ["load", "dcpdd_reference", "scoring"]
    assert {"recall", "gradnorm"} <= set(rep["timings"])


def test_dcpdd_with_a_public_genome_as_the_reference(memorised):
    """--dcpdd-reference: k-mer counts of another genome (no leave-one-out), through the CLI."""
    from importlib import resources

    from glmjax.cli import main

    d, _ = memorised
    fa = resources.files("glmjax.resources").joinpath("phiX174.fa.gz")
    rows = MA.fasta_rows(str(fa))
    assert sum(len(r) for r in rows) == 5386 and max(len(r) for r in rows) == 4096
    assert main(["audit", "--model", str(d / "run" / "model"), "--data", str(d / "w.h5"), "--out",
                 str(d / "phix"), "--neighbours", "0", "--recall-shots", "0", "--gradnorm-rows", "0",
                 "--dcpdd-reference", str(fa), "--bootstrap", "20"]) == 0
    rep = json.loads((d / "phix" / "report.json").read_text())
    st = rep["mia"]["attacks"]["dcpdd"]["settings"]
    assert st["source"] == str(fa) and st["leave_one_out"] is False
    assert st["ngrams_counted"] == sum(len(r) - 5 for r in rows) and st["alphabet"] == 4
    assert {"recall", "gradnorm", "neighbourhood"} <= set(rep["skipped"])
    assert rep["config"]["options"]["dcpdd_reference"] == str(fa)


def test_gradnorm_is_off_by_default_above_a_billion_parameters(tiny_llama, monkeypatch):
    """Unasked, the gradient norm runs on models up to GRADNORM_AUTO_MAX_PARAMS parameters only;
    --gradnorm-rows N runs it whatever the size."""
    from glmjax.audit import pipeline as P
    from glmjax.audit.report import AuditResult

    rng = np.random.default_rng(1)
    seqs = _seqs(rng, 12, lo=20, hi=30)
    labels = np.arange(12) % 2 == 0
    monkeypatch.setattr(P, "GRADNORM_AUTO_MAX_PARAMS", tiny_llama.num_params() - 1)
    skipped, scores, res = {}, {}, AuditResult(mode="causal")
    assert not P._gradnorm(tiny_llama, seqs, labels, np.arange(12), P.AuditOptions(), scores, res, skipped,
                           lambda *a: None)
    assert "--gradnorm-rows N" in skipped["gradnorm"] and "gradnorm" not in scores
    skipped = {}
    assert P._gradnorm(tiny_llama, seqs, labels, np.arange(12), P.AuditOptions(gradnorm_rows=3), scores, res,
                       skipped, lambda *a: None)
    pick, s = scores["gradnorm"]
    assert len(pick) == 6 and labels[pick].sum() == 3 and res.attack_info["gradnorm"]["rows_per_class"] == 3
    np.testing.assert_allclose(s, MA.gradnorm_scores(tiny_llama, [seqs[i] for i in pick], rows=pick), rtol=1e-6)
