"""``glmjax scores info|export``: read score files without h5py.

Two kinds of score file exist: the ScoreStore of ``glmjax score`` (and ``OUT/scores/*.h5`` of an
audit other than ``membership.h5``) and the MembershipScores table of ``glmjax audit``
(``OUT/scores/membership.h5``: every attack's score per genome window, with its label).
``export`` writes every row column as CSV, TSV or Parquet (Parquet needs the optional
``pyarrow`` package: ``pip install 'glmjax[parquet]'``); ``--per-token`` writes the per-token
values of a ScoreStore scored with ``--per-token`` instead, one line per token. Floating-point
values are written with the shortest text that reads back to the same number, so a CSV
round-trips every column exactly.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from glmjax.errors import ConfigError, InputFileError, StoreError

FORMATS = ("csv", "tsv", "parquet")
CHUNK_ROWS = 1 << 16


def register(sub) -> None:
    p = sub.add_parser("scores", help="inspect and export score files (ScoreStore, audit membership scores)",
                       description="Read the score files glmjax writes without h5py: a ScoreStore "
                       "(glmjax score; an audit's OUT/scores/*.h5) or an audit's per-sequence membership "
                       "scores (OUT/scores/membership.h5).")
    s = p.add_subparsers(dest="scores_command", metavar="SUBCOMMAND")
    s.required = True
    i = s.add_parser("info", help="summarise a score file", description="Kind, rows, scoring mode, model, "
                     "columns and the distribution of the main statistic.")
    i.add_argument("scores", help="ScoreStore or MembershipScores file (.h5)")
    i.add_argument("--json", action="store_true", help="print the summary as JSON")
    i.set_defaults(func=cmd_info)
    e = s.add_parser("export", help="write a score file as CSV, TSV or Parquet",
                     description="One line per row (or per token with --per-token), every column; written "
                     "through OUT.partial and renamed when complete.")
    e.add_argument("scores", help="ScoreStore or MembershipScores file (.h5)")
    e.add_argument("--out", required=True, help="output file (.csv, .tsv or .parquet)")
    e.add_argument("--format", choices=FORMATS, default=None,
                   help="output format (default: from the --out suffix)")
    e.add_argument("--columns", default=None, help="comma-separated columns to write (default: all)")
    e.add_argument("--per-token", action="store_true",
                   help="ScoreStore scored with --per-token: one line per scored token (index, id, position and "
                        "the token_* values)")
    e.add_argument("--overwrite", action="store_true")
    e.set_defaults(func=cmd_export, io=(("scores:SCORES",), ("out",)))


def open_scores(path: str | os.PathLike):
    """A :class:`~glmjax.engine.scorestore.ScoreStore` or a
    :class:`~glmjax.audit.scoretable.MembershipScores`, whichever the file is."""
    import h5py

    from glmjax.audit.scoretable import SCHEMA as MEMBERSHIP
    from glmjax.audit.scoretable import MembershipScores
    from glmjax.engine.scorestore import SCHEMA as SCORESTORE
    from glmjax.engine.scorestore import ScoreStore

    p = Path(path)
    schema = None
    if p.is_file() and p.stat().st_size > 0 and h5py.is_hdf5(p):
        with h5py.File(p, "r") as f:
            schema = f.attrs.get("schema")
        schema = schema.decode() if isinstance(schema, bytes) else schema
    if schema == MEMBERSHIP:
        return MembershipScores(p)
    if schema in (SCORESTORE, None):
        return ScoreStore(p)  # its own errors for a missing, unfinished or foreign file
    raise StoreError(f"{p} is a {schema}, not a score file; "
                     + ("read it with glmjax data info" if schema == "glmjax.SequenceStore" else
                        "give a ScoreStore or an audit's scores/membership.h5"))


def _stats(x: np.ndarray) -> dict[str, Any] | None:
    x = np.asarray(x, np.float64)
    x = x[np.isfinite(x)]
    if not x.size:
        return None
    q = np.quantile(x, [0.0, 0.25, 0.5, 0.75, 1.0])
    return {"n": int(x.size), "mean": float(x.mean()), "min": float(q[0]), "q1": float(q[1]),
            "median": float(q[2]), "q3": float(q[3]), "max": float(q[4])}


def scores_info(path: str | os.PathLike) -> dict[str, Any]:
    """Summary of a score file (what ``glmjax scores info`` prints)."""
    from glmjax.audit.scoretable import MembershipScores

    with open_scores(path) as st:
        prov = st.provenance
        info: dict[str, Any] = {"path": str(path), "kind": st.kind, "schema_version": st.schema_version,
                                "rows": len(st), "columns": st.column_names,
                                "model": (prov.get("model") or {}), "command": prov.get("command"),
                                "glmjax_version": prov.get("glmjax_version")}
        if isinstance(st, MembershipScores):
            member = np.asarray(st.column("member"), bool)
            info["members"], info["non_members"] = int(member.sum()), int((~member).sum())
            info["attacks"] = {a: _stats(st.column(a)) for a in st.attacks}
        else:
            info.update(mode=st.mode, mode_params=st.mode_params, objective=st.objective, complete=st.complete,
                        per_token=st.has_token_values, input=(prov.get("input") or {}).get("path"),
                        per_window=(prov.get("scoring") or {}).get("per_window"))
            info["logp_per_nt"] = _stats(st.column("logp_per_nt"))
            info["n_nucleotides"] = int(np.asarray(st.column("n_nucleotides"), np.int64).sum())
    return info


def cmd_info(args: argparse.Namespace) -> int:
    info = scores_info(args.scores)
    if args.json:
        print(json.dumps(info, indent=1, sort_keys=True, default=str))
        return 0
    model = info["model"]
    print(f"{info['path']}: {info['kind']} v{info['schema_version']}, {info['rows']:,} rows")
    if model:
        print(f"  model      {model.get('family')} · {model.get('source')} · fingerprint "
              f"{str(model.get('fingerprint', ''))[:16]}…")
    if "attacks" in info:
        print(f"  labels     {info['members']:,} members / {info['non_members']:,} non-members")
        print(f"  {'attack':<22} {'rows':>9} {'mean':>10} {'median':>10} {'min':>10} {'max':>10}")
        for name, s in info["attacks"].items():
            if s is None:
                print(f"  {name:<22} {0:>9}")
                continue
            print(f"  {name:<22} {s['n']:>9,} {s['mean']:>10.4g} {s['median']:>10.4g} {s['min']:>10.4g} "
                  f"{s['max']:>10.4g}")
    else:
        params = f" {json.dumps(info['mode_params'])}" if info["mode_params"] else ""
        print(f"  scoring    {info['mode']}{params} ({info['objective']}) · "
              f"{info['n_nucleotides']:,} nt · per-token values {'yes' if info['per_token'] else 'no'}"
              + (f" · one row per {info['per_window']}-nt window" if info.get("per_window") else ""))
        if info.get("input"):
            print(f"  input      {info['input']}")
        s = info["logp_per_nt"]
        if s:
            print(f"  log p / nt mean {s['mean']:.4f} · median {s['median']:.4f} · min {s['min']:.4f} · "
                  f"max {s['max']:.4f}")
        if not info["complete"]:
            print("  (incomplete: the run that wrote it did not finish)")
    print("  columns    " + ", ".join(info["columns"]))
    if info.get("command"):
        print(f"  command    {info['command']}")
    return 0


# ------------------------------------------------------------------ export

def _format(out: str, fmt: str | None) -> str:
    if fmt:
        return fmt
    suffix = Path(out).suffix.lower().lstrip(".")
    if suffix in FORMATS:
        return suffix
    if suffix == "pq":
        return "parquet"
    raise ConfigError(f"cannot tell the format of {out} from its suffix; pass --format csv|tsv|parquet")


def _row_chunks(st, columns: list[str]) -> Iterator[dict[str, np.ndarray]]:
    for a in range(0, len(st), CHUNK_ROWS):
        b = min(a + CHUNK_ROWS, len(st))
        yield {c: np.asarray(st.column(c, a, b)) for c in columns}


def _token_chunks(st, columns: list[str]) -> Iterator[dict[str, np.ndarray]]:
    from glmjax.engine.scorestore import TOKEN_COLUMNS

    for a in range(0, len(st), CHUNK_ROWS):
        b = min(a + CHUNK_ROWS, len(st))
        vals = {c: st.ragged_rows(c, a, b) for c in TOKEN_COLUMNS if c in columns}
        first = next(iter(vals.values())) if vals else st.ragged_rows("token_logp", a, b)
        lens = np.array([len(x) for x in first], np.int64)
        out: dict[str, np.ndarray] = {}
        if "index" in columns:
            out["index"] = np.repeat(np.asarray(st.column("index", a, b), np.int64), lens)
        if "id" in columns:
            out["id"] = np.repeat(np.asarray(st.column("id", a, b), dtype=object), lens)
        if "position" in columns:
            out["position"] = np.concatenate([np.arange(n, dtype=np.int64) for n in lens]) if lens.size \
                else np.zeros(0, np.int64)
        for c, rows in vals.items():
            out[c] = np.concatenate(rows) if rows else np.zeros(0)
        yield {c: out[c] for c in columns}


def _text(v: Any) -> str:
    if isinstance(v, (float, np.floating)):
        f = float(v)
        return "" if math.isnan(f) else repr(f)   # repr: the shortest text that reads back exactly
    if isinstance(v, (bool, np.bool_)):
        return "true" if v else "false"
    if isinstance(v, (np.integer,)):
        return str(int(v))
    return str(v)


def export_scores(path: str | os.PathLike, out: str | os.PathLike, fmt: str | None = None,
                  columns: list[str] | None = None, per_token: bool = False, overwrite: bool = False) -> int:
    """Write the rows (or tokens) of a score file to ``out``; returns the number of lines written.

    NaN is written as an empty field in CSV/TSV and as a null in Parquet.
    """
    from glmjax.engine.scorestore import TOKEN_COLUMNS, ScoreStore
    from glmjax.storage import partial_path

    out = Path(out)
    fmt = _format(str(out), fmt)
    if out.exists() and not overwrite:
        raise StoreError(f"{out} already exists; choose another output or pass --overwrite")
    if out.is_dir():
        raise StoreError(f"{out} is a folder; give a file name")
    if not out.parent.exists():
        raise InputFileError(f"output folder {out.parent} does not exist; create it first")
    if fmt == "parquet":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise ConfigError("Parquet export needs pyarrow: pip install 'glmjax[parquet]' (or export --format "
                              "csv)") from None
    with open_scores(path) as st:
        if per_token:
            if not isinstance(st, ScoreStore) or not st.has_token_values:
                raise StoreError(f"{path} has no per-token values; score with glmjax score --per-token")
            available = ["index", "id", "position", *TOKEN_COLUMNS]
        else:
            from glmjax.audit.scoretable import FIXED_COLUMNS, MembershipScores
            from glmjax.engine.scorestore import ROW_COLUMNS

            order = [*FIXED_COLUMNS, *st.attacks] if isinstance(st, MembershipScores) else list(ROW_COLUMNS)
            present = st.column_names  # in the order they were written, any unknown ones last
            available = [c for c in order if c in present] + sorted(set(present) - set(order))
        chosen = available if columns is None else columns
        unknown = [c for c in chosen if c not in available]
        if unknown:
            raise ConfigError(f"{path} has no column {unknown[0]!r}; choose from {', '.join(available)}")
        if not chosen:
            raise ConfigError("--columns names no column")
        if out.exists() and out.suffix.lower() not in (".csv", ".tsv", ".parquet", ".pq"):
            raise StoreError(f"{out} exists and is not a .csv/.tsv/.parquet export; --overwrite replaces only "
                             "those: choose another output")
        chunks = _token_chunks(st, chosen) if per_token else _row_chunks(st, chosen)
        tmp = partial_path(out)
        lines = 0
        try:
            if fmt == "parquet":
                writer = None
                try:
                    for ch in chunks:
                        table = pa.table({c: (pa.array(v.tolist(), pa.string()) if v.dtype == object else
                                              pa.array(v, from_pandas=True)) for c, v in ch.items()})
                        if writer is None:
                            writer = pq.ParquetWriter(tmp, table.schema)
                        writer.write_table(table)
                        lines += table.num_rows
                    if writer is None:  # no rows: an empty file with the columns
                        writer = pq.ParquetWriter(tmp, pa.schema([(c, pa.float64()) for c in chosen]))
                finally:
                    if writer is not None:
                        writer.close()
            else:
                with open(tmp, "w", newline="", encoding="utf-8") as fh:
                    w = csv.writer(fh, delimiter="\t" if fmt == "tsv" else ",", lineterminator="\n")
                    w.writerow(chosen)
                    for ch in chunks:
                        cols = [ch[c] for c in chosen]
                        w.writerows([_text(v) for v in row] for row in zip(*cols, strict=True))
                        lines += len(cols[0])
            os.replace(tmp, out)
        except BaseException:
            if tmp.exists():
                tmp.unlink()
            raise
    return lines


def cmd_export(args: argparse.Namespace) -> int:
    cols = None if args.columns is None else [c.strip() for c in args.columns.split(",") if c.strip()]
    n = export_scores(args.scores, args.out, args.format, cols, args.per_token, args.overwrite)
    print(f"{args.out}: {n:,} {'tokens' if args.per_token else 'rows'} ({_format(args.out, args.format)})")
    return 0
