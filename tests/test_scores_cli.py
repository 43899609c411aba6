"""``glmjax scores info|export`` and ``glmjax score --per-window``: every column round-trips to
CSV, TSV and Parquet exactly; per-token export lines up with the ragged columns; per-window rows
equal scoring the windows as sequences of their own; bad inputs exit 2 and leave no file."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

import glmjax.models as gm
from glmjax.audit.scoretable import MembershipScores, write_membership_scores
from glmjax.cli import main
from glmjax.data.store import Record, SequenceStoreWriter
from glmjax.engine import runner
from glmjax.engine.scorestore import ROW_COLUMNS, TOKEN_COLUMNS, ScoreStore


@pytest.fixture(autouse=True)
def _fast_compile(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("GLMJAX_JAX_CACHE", str(tmp_path_factory.getbasetemp() / "jax-cache"))
    monkeypatch.setenv("GLMJAX_QUIET", "1")
    monkeypatch.setattr(runner, "COMPILER_OPTIONS",
                        {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True})


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("scores")
    rng = np.random.default_rng(0)
    store = tmp / "in.h5"
    with SequenceStoreWriter(store) as w:
        w.add([Record(id=f"s{i}", codes=rng.integers(0, 4, int(rng.integers(20, 30))).astype(np.uint8))
               for i in range(40)])
    gm.save(gm.build("llama", seed=3), tmp / "llama")
    out = tmp / "scores.h5"
    assert main(["score", "--model", str(tmp / "llama"), "--input", str(store), "--out", str(out),
                 "--per-token"]) == 0
    return tmp, store, out


def _read_text(path, delim):
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh, delimiter=delim))
    return rows[0], rows[1:]


def _same(col: str, got: list[str], want: np.ndarray) -> None:
    if want.dtype == object or want.dtype.kind in "US":
        assert got == [str(x) for x in want], col
    elif want.dtype.kind == "b":
        assert got == ["true" if x else "false" for x in want], col
    elif want.dtype.kind in "iu":
        np.testing.assert_array_equal(np.array(got, np.int64), want, err_msg=col)
    else:
        back = np.array([np.nan if g == "" else float(g) for g in got]).astype(want.dtype)
        np.testing.assert_array_equal(back, want, err_msg=col)  # exact, NaN where NaN


@pytest.mark.parametrize("fmt", ["csv", "tsv"])
def test_text_export_round_trips_every_column(scored, tmp_path, fmt):
    _, _, out = scored
    dest = tmp_path / f"s.{fmt}"
    assert main(["scores", "export", str(out), "--out", str(dest)]) == 0
    head, rows = _read_text(dest, "\t" if fmt == "tsv" else ",")
    assert set(head) == set(ROW_COLUMNS) and head[:2] == ["index", "id"]
    with ScoreStore(out) as s:
        assert len(rows) == len(s) == 40
        for j, c in enumerate(head):
            _same(c, [r[j] for r in rows], np.asarray(s.column(c)))


def test_parquet_export_round_trips_every_column(scored, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow (the parquet extra) is not installed")
    _, _, out = scored
    dest = tmp_path / "s.parquet"
    assert main(["scores", "export", str(out), "--out", str(dest)]) == 0
    t = pq.read_table(dest)
    with ScoreStore(out) as s:
        for c in ROW_COLUMNS:
            want = np.asarray(s.column(c))
            got = t.column(c).to_pylist()
            if want.dtype == object:
                assert got == list(want)
            else:
                got = np.array([np.nan if g is None else g for g in got]).astype(want.dtype)
                np.testing.assert_array_equal(got, want, err_msg=c)


def test_per_token_export_matches_ragged_columns(scored, tmp_path):
    _, _, out = scored
    dest = tmp_path / "tok.csv"
    assert main(["scores", "export", str(out), "--out", str(dest), "--per-token"]) == 0
    head, rows = _read_text(dest, ",")
    assert head == ["index", "id", "position", *TOKEN_COLUMNS]
    with ScoreStore(out) as s:
        lens = [len(x) for x in s.ragged_rows("token_logp")]
        assert len(rows) == sum(lens)
        assert [int(r[2]) for r in rows] == [p for n in lens for p in range(n)]
        ids = s.column("id")
        assert [r[1] for r in rows] == [ids[i] for i, n in enumerate(lens) for _ in range(n)]
        for j, c in enumerate(TOKEN_COLUMNS, start=3):
            _same(c, [r[j] for r in rows], np.concatenate(s.ragged_rows(c)))


def test_columns_option_and_info(scored, tmp_path, capsys):
    _, _, out = scored
    dest = tmp_path / "few.csv"
    assert main(["scores", "export", str(out), "--out", str(dest), "--columns", "id,logp_per_nt"]) == 0
    head, rows = _read_text(dest, ",")
    assert head == ["id", "logp_per_nt"] and len(rows) == 40
    capsys.readouterr()
    assert main(["scores", "info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "ScoreStore" and info["rows"] == 40 and info["mode"] == "causal"
    assert info["per_token"] is True and info["model"]["family"] == "llama"
    with ScoreStore(out) as s:
        assert info["logp_per_nt"]["median"] == pytest.approx(float(np.median(s.column("logp_per_nt"))))
    assert main(["scores", "info", str(out)]) == 0
    assert "ScoreStore v1, 40 rows" in capsys.readouterr().out


def test_membership_table_export(tmp_path, capsys):
    rng = np.random.default_rng(1)
    n = 30
    member = rng.random(n) < 0.5
    scores = {"loss": rng.normal(size=n), "zlib": rng.normal(size=n)}
    pick = np.array([1, 4, 9])
    path = write_membership_scores(tmp_path / "membership.h5", np.arange(n) * 2, [f"w{i}" for i in range(n)],
                                   member, scores, {"neighbourhood": (pick, np.array([0.5, -1.0, 2.0]))})
    with MembershipScores(path) as m:
        assert m.attacks == ["loss", "zlib", "neighbourhood"]
        nb = np.asarray(m.column("neighbourhood"))
    assert np.isnan(nb[np.setdiff1d(np.arange(n), pick)]).all() and list(nb[pick]) == [0.5, -1.0, 2.0]
    dest = tmp_path / "m.csv"
    assert main(["scores", "export", str(path), "--out", str(dest)]) == 0
    head, rows = _read_text(dest, ",")
    assert head == ["index", "id", "member", "loss", "zlib", "neighbourhood"]
    _same("member", [r[2] for r in rows], member)
    _same("loss", [r[3] for r in rows], scores["loss"])
    _same("neighbourhood", [r[5] for r in rows], nb)
    capsys.readouterr()
    assert main(["scores", "info", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["members"] == int(member.sum()) and info["attacks"]["neighbourhood"]["n"] == 3


def test_export_errors_exit_2_and_write_nothing(scored, tmp_path, capsys):
    tmp, store, out = scored
    cases = [
        (["scores", "export", str(out), "--out", str(tmp_path / "x.txt")], "--format"),
        (["scores", "export", str(out), "--out", str(tmp_path / "x.csv"), "--columns", "nope"], "no column 'nope'"),
        (["scores", "export", str(store), "--out", str(tmp_path / "x.csv")], "read it with glmjax data info"),
        (["scores", "export", str(tmp_path / "missing.h5"), "--out", str(tmp_path / "x.csv")], "no such file"),
        (["scores", "export", str(out), "--out", str(out)], "--out"),
    ]
    for argv, msg in cases:
        capsys.readouterr()
        assert main(argv) == 2, argv
        assert msg in capsys.readouterr().err, argv
    assert not list(tmp_path.glob("x.*"))
    capsys.readouterr()
    assert main(["data", "info", str(out)]) == 2
    assert "glmjax scores info|export" in capsys.readouterr().err
    (tmp_path / "keep.csv").write_text("mine\n")
    assert main(["scores", "export", str(out), "--out", str(tmp_path / "keep.csv")]) == 2
    assert (tmp_path / "keep.csv").read_text() == "mine\n"


def test_per_window_rows_equal_windows_scored_alone(tmp_path):
    rng = np.random.default_rng(2)
    seqs = {"chrA": rng.integers(0, 4, 53).astype(np.uint8), "chrB": rng.integers(0, 4, 20).astype(np.uint8)}
    whole = tmp_path / "whole.h5"
    with SequenceStoreWriter(whole) as w:
        w.add([Record(id=k, codes=v) for k, v in seqs.items()])
    W = 16
    pieces = tmp_path / "pieces.h5"
    want_ids = []
    with SequenceStoreWriter(pieces) as w:
        for k, v in seqs.items():
            for a in range(0, len(v), W):
                b = min(a + W, len(v))
                want_ids.append(f"{k}:{a + 1}-{b}")
                w.add([Record(id=want_ids[-1], codes=v[a:b])])
    gm.save(gm.build("llama", seed=5), tmp_path / "m")
    pw, ref = tmp_path / "pw.h5", tmp_path / "ref.h5"
    assert main(["score", "--model", str(tmp_path / "m"), "--input", str(whole), "--out", str(pw),
                 "--window", str(W), "--per-window", "--block-rows", "3"]) == 0
    assert main(["score", "--model", str(tmp_path / "m"), "--input", str(pieces), "--out", str(ref)]) == 0
    with ScoreStore(pw) as a, ScoreStore(ref) as b:
        assert list(a.column("id")) == want_ids == list(b.column("id"))
        assert list(a.column("index")) == list(range(len(want_ids)))
        for c in ROW_COLUMNS:
            if c in ("id", "index"):
                continue
            np.testing.assert_allclose(np.asarray(a.column(c), np.float64), np.asarray(b.column(c), np.float64),
                                       rtol=1e-5, atol=1e-6, err_msg=c)
        assert a.provenance["scoring"]["per_window"] == W
    assert main(["score", "--model", str(tmp_path / "m"), "--input", str(whole), "--out",
                 str(tmp_path / "bad.h5"), "--per-window"]) == 2
    assert not (tmp_path / "bad.h5").exists()
