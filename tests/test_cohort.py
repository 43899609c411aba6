"""Individual-level membership inference: aggregates equal loop references, aggregating many weakly
shifted windows per individual gives the closed-form AUC gain over the window level, allele-resampled
neighbours follow the cohort's allele frequencies, and a tiny Llama trained on half of a 1000 Genomes
cohort yields individual-level AUCs with bootstrap intervals."""

from __future__ import annotations

import importlib.util
import json
import math

import numpy as np
import pytest
from conftest import ROOT, shared_path
from scipy import stats
from vcf_helpers import random_reference, synthetic_records, write_reference, write_vcf

from glmjax.audit.cohort import (
    aggregate_by_individual,
    allele_resampling_neighbours,
    evaluate_cohort,
    individual_index,
    individual_labels,
    load_windows,
    split_individuals,
)
from glmjax.data.store import SequenceStore
from glmjax.data.vcf import ImportOptions, import_vcf, read_cohort
from glmjax.errors import ConfigError


def test_aggregates_equal_loops():
    rng = np.random.default_rng(0)
    n, g = 500, 23
    inv = rng.integers(0, g, n)
    inv[:g] = np.arange(g)  # every individual has a window
    x = rng.normal(size=n)
    alt = rng.integers(0, 3, n) * (rng.random(n) < 0.5)
    alt[inv == 5] = 0  # one individual without variant windows
    agg = aggregate_by_individual(x, inv, g, alt)
    for k in range(g):
        w = x[inv == k]
        v = x[(inv == k) & (alt > 0)]
        np.testing.assert_allclose([agg["sum"][k], agg["mean"][k], agg["max"][k]], [w.sum(), w.mean(), w.max()],
                                   rtol=1e-12)
        np.testing.assert_allclose(agg["variant"][k], v.mean() if v.size else w.mean(), rtol=1e-12)
    assert list(np.flatnonzero(agg["variant_fallback"])) == [5]


def test_individual_level_beats_window_level():
    """m windows per individual, member windows shifted by d (unit-variance noise): window AUC is
    Phi(d / sqrt 2), individual mean/sum AUC Phi(d sqrt(m / 2)); with d = 0.2 and m = 100 that is
    0.556 vs 0.921."""
    rng = np.random.default_rng(1)
    n_ind, m, d = 300, 100, 0.2
    member_ind = np.arange(n_ind) < n_ind // 2
    groups = np.repeat(np.array([f"I{i:03d}" for i in range(n_ind)]), m)
    member = np.repeat(member_ind, m)
    x = rng.normal(size=member.size) + d * member
    res = evaluate_cohort({"loss": x}, member, groups, n_bootstrap=200, seed=0)["loss"]
    w_auc, i_auc = res.window.auc, res.individual["mean"].auc
    assert abs(w_auc - stats.norm.cdf(d / math.sqrt(2))) < 0.01
    assert abs(i_auc - stats.norm.cdf(d * math.sqrt(m / 2))) < 0.04
    assert res.individual["sum"].auc == i_auc  # same window count for everybody
    assert i_auc > res.window.ci["auc"][1] + 0.2  # far above the window level, intervals included
    lo, hi = res.individual["mean"].ci["auc"]
    assert lo < i_auc < hi and hi - lo < 0.12
    assert (res.n_individuals, res.individual["mean"].n_members) == (n_ind, n_ind // 2)
    # Memorization only at the individual's private variants: the variant-window mean sees it best.
    alt = (rng.random(member.size) < 0.2).astype(np.int32)
    y = rng.normal(size=member.size) + 0.5 * (member & (alt > 0))
    r2 = evaluate_cohort({"loss": y}, member, groups, alt, n_bootstrap=0)["loss"]
    assert r2.individual["variant"].auc > r2.individual["mean"].auc + 0.05
    assert r2.individual["variant"].auc > r2.window.auc


def test_mixed_individuals_and_empty_groups_refused():
    inv = np.array([0, 0, 1, 1])
    with pytest.raises(ConfigError, match="both member and non-member"):
        individual_labels(np.array([1, 0, 1, 1], bool), inv, 2)
    with pytest.raises(ConfigError, match="no individual"):
        individual_index(np.array(["a", ""], dtype=object))


@pytest.fixture
def synth_store(tmp_path):
    ref = random_reference()
    fa = write_reference(tmp_path, ref)
    vcf = write_vcf(tmp_path, synthetic_records(ref), {c: len(s) for c, s in ref.items()})
    out = tmp_path / "c.h5"
    import_vcf(fa, vcf, out, ImportOptions(window=40, stride=20), regions=["c1:1-190"])
    return out


def test_split_by_individual(synth_store):
    info = split_individuals(synth_store, 0.5, seed=4)
    assert info["by"] == "group"
    cw = load_windows(synth_store)
    names, inv = individual_index(cw.groups)
    labels = individual_labels(cw.member, inv, names.size)  # raises if an individual were split
    assert list(names) == ["S1", "S2", "S3"] and labels.sum() == info["member_units"]
    assert cw.alt_alleles.shape == cw.member.shape


def test_allele_resampling_neighbours(synth_store):
    cd = read_cohort(synth_store)
    with SequenceStore(synth_store) as st:
        rows = np.flatnonzero(np.diff(cd.row_offsets) > 0)
        codes = np.stack(st.take(rows))
    n = 4000
    nb = allele_resampling_neighbours(codes, rows, cd, n, seed=7)
    assert nb.shape == (rows.size, n, codes.shape[1])
    np.testing.assert_array_equal(nb, allele_resampling_neighbours(codes, rows, cd, n, seed=7))
    assert not np.array_equal(nb, allele_resampling_neighbours(codes, rows, cd, n, seed=8))
    freq, bases = cd.site_frequencies(), cd.allele_bases()
    for b, r in enumerate(rows):
        entries = range(cd.row_offsets[r], cd.row_offsets[r + 1])
        offs = [int(cd.row_offset[e]) for e in entries]
        other = np.setdiff1d(np.arange(codes.shape[1]), offs)
        assert (nb[b][:, other] == codes[b, other]).all()  # only variant sites change
        for e, o in zip(entries, offs, strict=True):
            v = cd.row_site[e]
            k = int(np.diff(cd.allele_offsets)[v])
            got = np.array([(nb[b, :, o] == bases[v, a]).mean() for a in range(k)])
            assert np.abs(got - freq[v, :k]).max() < 0.03, (r, v, got, freq[v, :k])
    bad = codes.copy()
    e0 = cd.row_offsets[rows[0]]
    bad[0, cd.row_offset[e0]] = (bad[0, cd.row_offset[e0]] + 1) % 4
    with pytest.raises(ConfigError, match="do not carry the recorded alleles"):
        allele_resampling_neighbours(bad, rows, cd, 2, seed=0)


# ------------------------------------------------------------------ tiny model on a real cohort


def _script():
    spec = importlib.util.spec_from_file_location("cohort_mia_tiny", ROOT / "scripts" / "cohort_mia_tiny.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow  # trains and scores a model: ~20 s on 2 idle cores, minutes on a shared machine
def test_tiny_llama_individual_auc(tmp_path):
    """scripts/cohort_mia_tiny.py --smoke: a tiny Llama trained on 8 of 16 individuals; every attack
    reports window- and individual-level AUCs with bootstrap intervals."""
    fa = shared_path("data", "eukaryote", "human_grch37_chr20_0-5Mb.fa.gz")
    vcf = shared_path("data", "cohort", "1000G_chr20_1-4Mb.vcf.gz")
    script = _script()
    out = script.run(fa, vcf, tmp_path, **script.SMOKE, seed=0)
    losses = out["logged_losses"]
    assert losses[-1] < losses[0] - 0.5 and losses[0] < math.log(16) + 0.1  # from ~uniform over 16 ids: it learned
    print(out["seconds"], losses[0], losses[-1])
    cw = load_windows(tmp_path / "cohort.h5")
    assert out["import"]["samples"] == 16 and out["import"]["windows"] == cw.groups.size
    for name, r in out["_report"].items():
        assert r.n_individuals == 16 and r.n_windows == cw.groups.size
        assert r.individual["mean"].n_members == 8 and set(r.individual) == {"sum", "mean", "max", "variant"}
        for m in (r.window, *r.individual.values()):
            lo, hi = m.ci["auc"]
            assert 0.0 <= lo <= m.auc <= hi <= 1.0
        print(name, json.dumps(out["attacks"][name]))
