"""Canaries: k-mer packing and screening, every rejection rule, manifests, planting, schedules."""

from __future__ import annotations

import hashlib
import json
from collections import Counter

import numpy as np
import pytest
from conftest import shared_path

from glmjax import alphabet
from glmjax.data import canaries as cn
from glmjax.data.canaries import CanaryParams, KmerSet, pack_kmers
from glmjax.data.fasta import WindowSpec, window_to_store
from glmjax.data.store import Record, SequenceStore, SequenceStoreWriter
from glmjax.errors import CanaryError, ConfigError, InputFileError


def enc(s):
    return alphabet.encode(s)


def rows(*seqs):
    return np.stack([enc(s) for s in seqs])


def brute_pack(s, k):
    out = []
    for i in range(len(s) - k + 1):
        kmer = s[i:i + k]
        if "N" in kmer:
            out.append(None)
        else:
            out.append(int("".join(str("ACGT".index(c)) for c in kmer), 4))
    return out


@pytest.mark.parametrize("k", [1, 3, 5, 16, 31, 32])
def test_pack_kmers_matches_base4_values(k):
    rng = np.random.default_rng(k)
    s = alphabet.decode(rng.integers(0, 5, 90).astype(np.uint8))
    vals, ok = pack_kmers(enc(s), k)
    ref = brute_pack(s, k)
    assert vals.dtype == np.uint64 and len(vals) == len(ref)
    for v, o, r in zip(vals, ok, ref, strict=True):
        assert o == (r is not None)
        if r is not None:
            assert int(v) == r
    with pytest.raises(ConfigError):
        pack_kmers(enc(s), 33)


def test_kmer_set_membership_and_sequence_boundaries():
    ks = KmerSet.from_sequences([enc("ACGTTG"), enc("CCNAA")], k=3, batch_bases=4)
    want = {"ACG", "CGT", "GTT", "TTG"}
    assert len(ks) == len(want)
    q = np.array([brute_pack(x, 3)[0] for x in ["ACG", "TTG", "TGC", "GCC", "AAA"]], np.uint64)
    # TGC/GCC would span the two sequences; AAA is absent
    np.testing.assert_array_equal(ks.contains(q), [True, True, False, False, False])
    assert not KmerSet(3, np.empty(0, np.uint64)).contains(q).any()


def test_sorted_unique():
    x = np.array([5, 1, 5, 3, 1, 9], np.uint64)
    np.testing.assert_array_equal(cn.sorted_unique(x), [1, 3, 5, 9])


# -- rejection rules ----------------------------------------------------------------------------
def test_rule_functions():
    assert cn.longest_homopolymer(rows("ACGTTTTTTA", "AAACCCGGTT")).tolist() == [6, 3]
    ent = cn.dinucleotide_entropy(rows("ACACACACAC", "ACGTTGCAAG"))
    assert ent[0] < 0.35 < 0.9 < ent[1] <= 1.0
    # DUST against a direct computation over 64-nt windows
    rng = np.random.default_rng(0)
    s = alphabet.decode(rng.integers(0, 4, 150).astype(np.uint8))
    s = s[:40] + "CAG" * 15 + s[85:]
    best = 0.0
    for w in range(len(s) - 63):
        win = s[w:w + 64]
        c = Counter(win[i:i + 3] for i in range(62))
        best = max(best, sum(v * (v - 1) / 2 for v in c.values()) / 61)
    assert cn.dust_score(rows(s))[0] == pytest.approx(best)
    short = "ACGTTGCA"
    c = Counter(short[i:i + 3] for i in range(6))
    assert cn.dust_score(rows(short))[0] == pytest.approx(sum(v * (v - 1) / 2 for v in c.values()) / 5)


def isolated(rule, **kw):
    """Parameters where every rule but ``rule`` is disabled."""
    off = {"max_homopolymer": 10**6, "min_entropy": 0.0, "max_dust": float("inf")}
    defaults = {"max_homopolymer": 5, "min_entropy": 0.6, "max_dust": 2.0}
    if rule in ("homopolymer", "entropy", "dust"):
        key = {"homopolymer": "max_homopolymer", "entropy": "min_entropy", "dust": "max_dust"}[rule]
        off[key] = defaults[key]
    return CanaryParams(num=1, prefix_len=0, secret_len=kw.pop("secret_len", 20), **off, **kw)


def test_homopolymer_rule():
    p = isolated("homopolymer")
    why = cn.reject_reasons(rows("ACGTAAAAAACGTGCATGCA", "ACGTAAAAACGTTGCATGCA"), p)
    assert why.tolist() == ["homopolymer", ""]  # runs of 6 rejected, 5 allowed


def test_entropy_rule():
    p = isolated("entropy")
    why = cn.reject_reasons(rows("ACACACACACACACACACAC", "ACGACGACGACGACGACGAC", "ACGTTGCATGACCAGTAGCT"), p)
    assert why.tolist() == ["entropy", "entropy", ""]


def test_dust_rule():
    rng = np.random.default_rng(1)
    r = alphabet.decode(rng.integers(0, 4, 200).astype(np.uint8))
    repeat = r[:100] + "CAGT" * 15 + r[100:]  # a 60-nt tandem repeat inside random sequence
    p = isolated("dust", secret_len=len(repeat))
    assert cn.dinucleotide_entropy(rows(repeat))[0] > 0.6  # the entropy rule alone would pass it
    assert cn.longest_homopolymer(rows(repeat))[0] <= 5  # nor would the homopolymer rule
    why = cn.reject_reasons(rows(repeat, r + r[:60]), p)
    assert why.tolist() == ["dust", ""]
    # with the default thresholds it is the dust rule that fires (first failing rule)
    assert cn.reject_reasons(rows(repeat), CanaryParams(1, 0, len(repeat))).tolist() == ["dust"]


def test_dataset_rule_catches_secret_and_reverse_complement():
    rng = np.random.default_rng(2)
    data = rng.integers(0, 4, 500).astype(np.uint8)
    ks = KmerSet.from_sequences([data], k=20)
    fwd = data[100:120]
    rev = alphabet.reverse_complement(data[300:320])
    other = rng.integers(0, 4, 20).astype(np.uint8)
    p = isolated("dataset")
    why = cn.reject_reasons(np.stack([fwd, rev, other]), p, screen=ks)
    assert why.tolist() == ["dataset", "dataset", ""]
    # with a shorter screen k, sharing any k-mer is enough
    ks8 = KmerSet.from_sequences([data], k=8)
    half = np.concatenate([data[200:208], other[8:]])
    assert cn.reject_reasons(half[None], isolated("dataset", screen_k=8), screen=ks8).tolist() == ["dataset"]


def test_duplicate_rule_and_exhaustion():
    # 4-nt secrets: only 136 distinct up to reverse complement, so duplicates must occur
    p = CanaryParams(num=60, prefix_len=3, secret_len=4, min_entropy=0.0)
    entries, rejected = cn.generate(p, seed=0)
    assert rejected["duplicate"] > 0
    secrets = [e["secret"] for e in entries]
    keys = set()
    for s in secrets:
        assert s not in keys
        keys |= {s, alphabet.reverse_complement_str(s)}
    with pytest.raises(CanaryError, match="only .* of 200 canaries passed"):
        cn.generate(CanaryParams(num=200, prefix_len=0, secret_len=4, min_entropy=0.0,
                                 max_candidates_per_canary=20), seed=0)


def test_generated_canaries_obey_every_rule(tmp_path):
    store = tmp_path / "s.h5"
    window_to_store(shared_path("data", "small", "lambda_phage.fa.gz"), store, WindowSpec(500))
    p = CanaryParams(num=40, prefix_len=10, secret_len=10, controls=5, screen_k=9)
    m = cn.build_manifest(p, seed=3, screen_store=store)
    assert m["rejected"]["dataset"] > 0  # 9-mers of a 48 kb genome are hit often
    secrets = np.stack([enc(e["secret"]) for e in m["canaries"]])
    assert (cn.longest_homopolymer(secrets) <= 5).all()
    assert (cn.dinucleotide_entropy(secrets) >= 0.6).all()
    assert (cn.dust_score(secrets) <= 2.0).all()
    with SequenceStore(store) as st:
        ks = KmerSet.from_store(st, 9)
    assert not cn.secret_in_store(secrets, ks).any()
    ids = [e["id"] for e in m["canaries"]]
    assert ids[:2] == ["canary-0000", "canary-0001"] and ids[40:42] == ["control-0000", "control-0001"]
    assert m["screen"]["sha256"] == hashlib.sha256(store.read_bytes()).hexdigest()
    for e in m["canaries"]:
        assert len(e["prefix"]) == 10 and len(e["secret"]) == 10
        assert e["secret_sha256"] == hashlib.sha256(e["secret"].encode()).hexdigest()
        assert e["included"] is False and e["repetitions"] == 0


def test_manifest_reproducible_and_seed_dependent(tmp_path):
    p = CanaryParams(num=20, prefix_len=30, secret_len=16, controls=3)
    a = cn.write_manifest(tmp_path / "a.json", cn.build_manifest(p, seed=1))
    b = cn.write_manifest(tmp_path / "b.json", cn.build_manifest(p, seed=1))
    assert a == b and (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    c = cn.build_manifest(p, seed=2)
    assert {e["secret"] for e in c["canaries"]}.isdisjoint(
        e["secret"] for e in json.loads((tmp_path / "a.json").read_text())["canaries"])
    assert a == hashlib.sha256((tmp_path / "a.json").read_bytes()).hexdigest()


def test_params_validation():
    for kw in ({"num": 0}, {"secret_len": 3}, {"prefix_len": -1}, {"gc": 1.0}, {"screen_k": 33}):
        args = {"num": 1, "prefix_len": 5, "secret_len": 40, **kw}
        with pytest.raises(ConfigError):
            CanaryParams(**args)


# -- planting -----------------------------------------------------------------------------------
def toy_store(path, n=60, length=100, seed=0):
    rng = np.random.default_rng(seed)
    with SequenceStoreWriter(path, provenance={"seed": seed}) as w:
        w.add([Record(id=f"w{i}", codes=rng.integers(0, 4, length).astype(np.uint8), source="toy",
                      start=i * length, group=f"g{i % 6}") for i in range(n)])
    return path


@pytest.fixture
def planted_inputs(tmp_path):
    store = toy_store(tmp_path / "s.h5")
    m = cn.build_manifest(CanaryParams(num=9, prefix_len=12, secret_len=20, controls=2), seed=4,
                          screen_store=store)
    cn.write_manifest(tmp_path / "m.json", m)
    return store, tmp_path / "m.json"


def planted_counts(path):
    with SequenceStore(path) as st:
        return Counter(x for x in st.column("canary").tolist() if x)


def test_plant_standalone(tmp_path, planted_inputs):
    store, mpath = planted_inputs
    r = cn.plant(store, mpath, tmp_path / "p.h5", [1, 2, 4], seed=5)
    m = json.loads(r.manifest.read_text())
    assert r.manifest == tmp_path / "p.canaries.json"
    assert r.manifest_sha256 == hashlib.sha256(r.manifest.read_bytes()).hexdigest()
    canaries = [e for e in m["canaries"] if e["role"] == "canary"]
    assert sorted(Counter(e["repetitions"] for e in canaries).items()) == [(1, 3), (2, 3), (4, 3)]
    counts = planted_counts(r.store)
    assert counts == {e["id"]: e["repetitions"] for e in canaries}
    with SequenceStore(r.store) as st, SequenceStore(store) as orig:
        assert len(st) == 60 + 21
        for a, b in zip(st.sequences(0, 60), orig.sequences(), strict=True):
            np.testing.assert_array_equal(a, b)  # original rows untouched
        recs = st.records()
        for e in canaries:
            for pl in e["placements"]:
                rec = recs[pl["row"]]
                assert rec.id == pl["id"] and rec.kind == "canary" and rec.canary == e["id"]
                assert alphabet.decode(rec.codes) == e["prefix"] + e["secret"]
        attr = st.canary_manifest()
        assert attr["manifest_sha256"] == r.manifest_sha256
        assert attr["store_sha256"] == hashlib.sha256(store.read_bytes()).hexdigest()
        assert st.provenance["parent"]["sha256"] == attr["store_sha256"]
    assert m["planting"]["store"]["sha256"] == hashlib.sha256(store.read_bytes()).hexdigest()
    controls = [e for e in m["canaries"] if e["role"] == "control"]
    assert len(controls) == 2 and all(e["repetitions"] == 0 and not e["included"] for e in controls)
    assert not any(e["id"] in counts for e in controls)


def test_plant_splice(tmp_path, planted_inputs):
    store, mpath = planted_inputs
    r = cn.plant(store, mpath, tmp_path / "p.h5", [1, 3], seed=6, mode="splice")
    m = json.loads(r.manifest.read_text())
    canaries = [e for e in m["canaries"] if e["role"] == "canary"]
    counts = planted_counts(r.store)
    assert counts == {e["id"]: e["repetitions"] for e in canaries}
    assert sorted(Counter(counts.values()).items()) == [(1, 5), (3, 4)]  # schedule spread evenly
    used = set()
    with SequenceStore(r.store) as st, SequenceStore(store) as orig:
        assert len(st) == 60
        new, old = st.records(), orig.records()
        for e in canaries:
            c = e["prefix"] + e["secret"]
            for pl in e["placements"]:
                rec, o = new[pl["row"]], old[pl["row"]]
                assert rec.id == o.id == pl["id"] and rec.canary == e["id"] and rec.kind == "genome"
                off = pl["offset"]
                assert alphabet.decode(rec.codes[off:off + len(c)]) == c
                np.testing.assert_array_equal(rec.codes[:off], o.codes[:off])
                np.testing.assert_array_equal(rec.codes[off + len(c):], o.codes[off + len(c):])
                used.add(pl["row"])
        for i in set(range(60)) - used:
            np.testing.assert_array_equal(new[i].codes, old[i].codes)
            assert new[i].canary == ""
    assert len(used) == sum(counts.values())  # one copy per window


def test_plant_one_run_holds_out_canaries(tmp_path):
    store = toy_store(tmp_path / "s.h5")
    cn.write_manifest(tmp_path / "m.json", cn.build_manifest(CanaryParams(num=200, prefix_len=5, secret_len=12), 1))
    r = cn.plant(store, tmp_path / "m.json", tmp_path / "p.h5", [1, 2], seed=2, one_run=True)
    m = json.loads(r.manifest.read_text())
    inc = [e for e in m["canaries"] if e["included"]]
    held = [e for e in m["canaries"] if not e["included"]]
    assert 70 < len(inc) < 130  # Binomial(200, 1/2)
    assert all(e["repetitions"] == 0 and e["placements"] == [] and e["assigned_repetitions"] in (1, 2)
               for e in held)
    counts = planted_counts(r.store)
    assert set(counts) == {e["id"] for e in inc}
    assert all(counts[e["id"]] == e["repetitions"] == e["assigned_repetitions"] for e in inc)
    assert r.summary["held_out"] == len(held)


def test_plant_is_reproducible(tmp_path, planted_inputs):
    store, mpath = planted_inputs
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    ra = cn.plant(store, mpath, tmp_path / "a" / "p.h5", [1, 2], seed=3, mode="splice")
    rb = cn.plant(store, mpath, tmp_path / "b" / "p.h5", [1, 2], seed=3, mode="splice")
    rc = cn.plant(store, mpath, tmp_path / "p.h5", [1, 2], seed=4, mode="splice")
    pa = [e["placements"] for e in json.loads(ra.manifest.read_text())["canaries"]]
    pb = [e["placements"] for e in json.loads(rb.manifest.read_text())["canaries"]]
    pc = [e["placements"] for e in json.loads(rc.manifest.read_text())["canaries"]]
    assert pa == pb and pa != pc


def test_plant_rejects_a_schedule_that_does_not_fit(tmp_path, planted_inputs):
    store, mpath = planted_inputs
    with pytest.raises(CanaryError, match="needs 63 spliced copies but .* only 60 windows"):
        cn.plant(store, mpath, tmp_path / "p.h5", [7], seed=1, mode="splice")
    short = toy_store(tmp_path / "short.h5", n=50, length=25)
    cn.write_manifest(tmp_path / "m2.json", cn.build_manifest(CanaryParams(num=2, prefix_len=12, secret_len=20), 1))
    with pytest.raises(CanaryError, match="canaries are 32 nt .* longest window .* is 25 nt"):
        cn.plant(short, tmp_path / "m2.json", tmp_path / "p.h5", [1], seed=1, mode="splice")
    assert not list(tmp_path.glob("p.*"))


def test_plant_refuses_secrets_found_in_the_store(tmp_path):
    store = toy_store(tmp_path / "s.h5", n=5)
    m = cn.build_manifest(CanaryParams(num=3, prefix_len=5, secret_len=20), seed=1)  # not screened
    with SequenceStore(store) as st:
        m["canaries"][1]["secret"] = alphabet.decode(alphabet.reverse_complement(st[2][40:60]))
    cn.write_manifest(tmp_path / "m.json", m)
    with pytest.raises(CanaryError, match="secret of canary-0001 occurs in"):
        cn.plant(store, tmp_path / "m.json", tmp_path / "p.h5", [1], seed=1)
    assert not list(tmp_path.glob("p.*"))


def test_plant_refuses_a_store_that_already_has_the_canaries(tmp_path, planted_inputs):
    store, mpath = planted_inputs
    r = cn.plant(store, mpath, tmp_path / "p.h5", [1], seed=1)
    with pytest.raises(CanaryError, match="already contains canary-0000"):
        cn.plant(r.store, mpath, tmp_path / "q.h5", [1], seed=1)


def test_schedule_and_manifest_errors(tmp_path):
    assert cn.parse_schedule("1, 4,16") == [1, 4, 16]
    for bad in ("", "1,x", "0,1", "-2"):
        with pytest.raises(ConfigError):
            cn.parse_schedule(bad)
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(InputFileError, match="not JSON"):
        cn.load_manifest(tmp_path / "x.json")
    (tmp_path / "y.json").write_text('{"a": 1}')
    with pytest.raises(InputFileError, match="not a canary manifest"):
        cn.load_manifest(tmp_path / "y.json")
    with pytest.raises(InputFileError, match="no such file"):
        cn.load_manifest(tmp_path / "z.json")


def test_plant_does_not_copy_a_split(tmp_path, planted_inputs):
    from glmjax.data.splits import split_store

    store, mpath = planted_inputs
    split_store(store, 0.5, seed=1)
    r = cn.plant(store, mpath, tmp_path / "p.h5", [1], seed=1)
    assert r.summary["input_split_dropped"] is True
    with SequenceStore(r.store) as st:
        assert not st.has_split  # planted rows change membership: the split must be made again
