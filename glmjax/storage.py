"""Append-only HDF5 tables with a committed-row counter, atomic creation and resume.

Both stores of glmjax (SequenceStore for inputs, ScoreStore for scores) are built on
:class:`TableWriter` / :class:`TableReader`:

* a file has a ``schema`` and ``schema_version`` attribute and a JSON ``provenance`` attribute;
* every row-aligned dataset lives under ``/rows`` and grows in chunks (compressed);
* ragged columns are stored as a flat buffer ``/ragged/<name>/values`` plus
  ``/ragged/<name>/offsets`` (int64, one more entry than rows);
* the attribute ``committed_rows`` is written (and the file flushed) only after a batch has been
  fully appended, so a killed writer can be resumed: rows past the counter are discarded;
* a file is written under ``<path>.partial`` and renamed to ``<path>`` when finalized, so a failed
  run never leaves a file that looks finished.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from glmjax import __version__
from glmjax.errors import InputFileError, StoreError

STR = h5py.string_dtype("utf-8")
_CHUNK_ROWS = 4096
_CHUNK_VALUES = 1 << 20


# ---------------------------------------------------------------------------------------------
# Output safety: paths, ownership, one writer at a time

# a folder glmjax wrote holds one of these files (model, training run, shadows, audit, demo, grid)
OWN_FOLDER_MARKERS = (".glmjax", "glmjax_model.json", "train_config.json", "shadows.json", "report.json",
                      "summary.json", "results.json")
FOLDER_MARKER = ".glmjax"  # written first into a folder a command fills over minutes (demo)


def _real(p: str | os.PathLike) -> Path:
    return Path(p).expanduser().resolve()


def check_io(inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> None:
    """Refuse an output that is, contains, or lies inside an input (before anything is written).

    ``inputs`` / ``outputs`` map an option name (for the message) to a path, a list of paths or
    None; inputs that do not exist on disk (e.g. Hub ids) are skipped. Symlinks and ``..`` are
    resolved first.
    """
    def flat(m):
        for name, v in m.items():
            for x in (v if isinstance(v, (list, tuple)) else [v]):
                if x is not None and str(x) != "":
                    yield name, x

    ins = [(n, _real(p)) for n, p in flat(inputs) if Path(p).expanduser().exists()]
    for oname, o in flat(outputs):
        out = _real(o)
        for iname, inp in ins:
            if out == inp:
                raise StoreError(f"{oname} {o} is the input {iname} itself; writing it would destroy the input")
            if out in inp.parents:
                raise StoreError(f"{oname} {o} contains the input {iname} {inp}; choose an output outside it")
            if inp.is_dir() and inp in out.parents:
                raise StoreError(f"{oname} {o} lies inside the input {iname} {inp}; choose an output outside it")


def is_own_output(path: str | os.PathLike) -> bool:
    """True if ``path`` is something glmjax wrote: an HDF5 store or JSON file whose ``schema``
    starts with ``glmjax.``, a ``.partial`` of one, a folder holding one of
    :data:`OWN_FOLDER_MARKERS` (or only ``.partial`` leftovers), or an empty folder."""
    p = Path(path)
    if p.is_symlink():
        return False
    if p.is_dir():  # an empty folder holds nothing to lose
        names = {q.name for q in p.iterdir()}
        return not names or bool(names & set(OWN_FOLDER_MARKERS)) or all(n.endswith(".partial") for n in names)
    if not p.is_file():
        return False
    with p.open("rb") as fh:
        head = fh.read(8)
    if head == b"\x89HDF\r\n\x1a\n":
        try:
            with h5py.File(p, "r") as f:
                return str(f.attrs.get("schema", "")).startswith("glmjax.")
        except OSError:
            return p.name.endswith(".partial")
    if p.suffix == ".json":
        try:
            d = json.loads(p.read_text())
        except (OSError, ValueError, UnicodeDecodeError):
            return False
        return isinstance(d, dict) and str(d.get("schema", d.get("format", ""))).startswith("glmjax.")
    return False


def remove_own_output(path: str | os.PathLike, option: str = "--out") -> None:
    """Delete ``path`` for ``--overwrite`` only if glmjax wrote it; anything else is refused."""
    import shutil

    p = Path(path)
    if not p.exists() and not p.is_symlink():
        return
    if not is_own_output(p):
        kind = "folder" if p.is_dir() else "file"
        raise StoreError(f"{option} {p} is a {kind} glmjax did not write; --overwrite only replaces glmjax's own "
                         "outputs (stores, models, runs, reports): choose another output or remove it yourself")
    if p.is_dir():
        shutil.rmtree(p)
    else:
        p.unlink()


class OutputLock:
    """``<path>.lock`` held while ``path`` is being written: created with ``O_EXCL``, holding the
    owner's pid and host. A second writer is refused while the owner lives; the lock of a
    process that died (same host) is taken over."""

    def __init__(self, path: str | os.PathLike):
        import socket

        self.path = Path(path)
        self.lock = self.path.with_name(self.path.name + ".lock")
        self.host = socket.gethostname()
        self.held = False

    def _owner(self) -> dict | None:
        try:
            return json.loads(self.lock.read_text())
        except (OSError, ValueError):
            return None

    def acquire(self) -> OutputLock:
        for _ in range(3):
            try:
                fd = os.open(self.lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is None or not isinstance(owner.get("pid"), int):
                    self.lock.unlink(missing_ok=True)  # unreadable: a writer killed while creating it
                    continue
                if owner.get("host") != self.host:
                    raise StoreError(f"{self.path} is being written by pid {owner['pid']} on {owner.get('host')} "
                                     f"(lock {self.lock}); if that run is gone, remove the lock file") from None
                if owner["pid"] != os.getpid() and _alive(owner["pid"]):
                    raise StoreError(f"{self.path} is being written by pid {owner['pid']}; wait for it to finish "
                                     "or stop it, then run again") from None
                self.lock.unlink(missing_ok=True)  # the owner died: take the lock over
                continue
            except OSError as e:
                raise StoreError(f"cannot create {self.lock}: {e.strerror or e}") from None
            with os.fdopen(fd, "w") as fh:
                json.dump({"pid": os.getpid(), "host": self.host}, fh)
            self.held = True
            return self
        raise StoreError(f"could not take the lock {self.lock}; remove it if no glmjax run writes {self.path}")

    def release(self) -> None:
        if self.held:
            owner = self._owner()
            if owner is not None and owner.get("pid") == os.getpid():
                self.lock.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _hdf5_reason(e: BaseException) -> str:
    """The cause of an HDF5 write failure in a few words (its message spans lines)."""
    text = str(e)
    if "errno = 28" in text or "No space left" in text:
        return "no space left on the device"
    if "Read-only" in text or "errno = 30" in text:
        return "the file system is read-only"
    return text.strip().splitlines()[0][:200] if text.strip() else type(e).__name__


def partial_path(path: str | os.PathLike) -> Path:
    """The temporary name a store is written under until it is finalized."""
    p = Path(path)
    return p.with_name(p.name + ".partial")


_COMMAND: list[str] | None = None


def set_command_line(argv: list[str] | None) -> None:
    """Record the command line of an in-process CLI call (``glmjax.cli.main(argv)``) for provenance;
    ``None`` goes back to ``sys.argv``."""
    global _COMMAND
    _COMMAND = None if argv is None else [str(a) for a in argv]


def command_line() -> str:
    """The command line of this process (or of the running ``glmjax.cli.main`` call), for provenance."""
    if _COMMAND is not None:
        return " ".join(_COMMAND)
    return " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else ""


def base_provenance(**extra: Any) -> dict[str, Any]:
    """Provenance common to every store: package version and command line.

    No wall-clock time is recorded, so the same command with the same seed writes byte-identical
    files.
    """
    prov = {"glmjax_version": __version__, "command": command_line()}
    prov.update(extra)
    return prov


def _np_dtype(dtype: Any) -> Any:
    if dtype is str or dtype == "str":
        return STR
    return np.dtype(dtype)


class TableWriter:
    """Append rows to an HDF5 table; resumable and atomically finalized.

    Args:
      path: final file name. Data is written to ``<path>.partial`` until :meth:`finalize`.
      schema: schema name stored in the ``schema`` attribute (e.g. ``"glmjax.SequenceStore"``).
      version: schema version.
      columns: row-aligned columns: name -> dtype, or (dtype, trailing_shape).
      ragged: ragged columns: name -> dtype of their values.
      attrs: extra file attributes (JSON-serialisable values are JSON-encoded).
      resume: when a ``.partial`` file of the same schema exists, continue after its committed
        rows instead of starting over.
      overwrite: allow replacing an existing finished file at ``path``.
    """

    def __init__(self, path: str | os.PathLike, schema: str, version: int,
                 columns: Mapping[str, Any], ragged: Mapping[str, Any] | None = None,
                 attrs: Mapping[str, Any] | None = None, resume: bool = False,
                 overwrite: bool = True, compression: str | None = "gzip"):
        self.path = Path(path)
        self.tmp = partial_path(self.path)
        self.schema = schema
        self.columns = {k: (v if isinstance(v, tuple) else (v, ())) for k, v in columns.items()}
        self.ragged = dict(ragged or {})
        if self.path.exists() and not overwrite:
            raise StoreError(f"{self.path} already exists; choose another output or pass --overwrite")
        if self.path.is_dir():
            raise StoreError(f"{self.path} is a folder; give a file name for the store")
        if self.path.exists() and not is_own_output(self.path):
            raise StoreError(f"{self.path} exists and is not a glmjax store; --overwrite only replaces glmjax's "
                             "own outputs: choose another output or remove it yourself")
        if not self.path.parent.exists():
            raise InputFileError(f"output folder {self.path.parent} does not exist; create it first")
        self.resumed_rows = 0
        self._lock = OutputLock(self.path).acquire()
        try:
            if resume and self.tmp.exists():
                self.f = self._open_existing()
            else:
                if self.tmp.exists():
                    self.tmp.unlink()
                # No free-space reuse: a chunk rewritten after a commit goes to new space, so the chunks
                # the last committed (flushed) metadata points to stay intact if the writer is killed
                # (with reuse, a killed run left chunks overwritten by other data and could not resume).
                self.f = h5py.File(self.tmp, "w", fs_strategy="none")
                self._create(version, attrs or {}, compression)
        except BaseException:
            self._lock.release()
            raise
        self.rows = int(self.f.attrs["committed_rows"])
        self.resumed_rows = self.rows

    # -- creation / resume -------------------------------------------------------------------
    def _create(self, version: int, attrs: Mapping[str, Any], compression: str | None) -> None:
        f = self.f
        f.attrs["schema"] = self.schema
        f.attrs["schema_version"] = version
        f.attrs["committed_rows"] = 0
        f.attrs["complete"] = False
        for k, v in attrs.items():
            set_attr(f, k, v)
        rows = f.create_group("rows")
        for name, (dtype, shape) in self.columns.items():
            rows.create_dataset(name, shape=(0, *shape), maxshape=(None, *shape), dtype=_np_dtype(dtype),
                                chunks=(_CHUNK_ROWS, *shape), compression=compression)
        rg = f.create_group("ragged")
        for name, dtype in self.ragged.items():
            g = rg.create_group(name)
            g.create_dataset("values", shape=(0,), maxshape=(None,), dtype=np.dtype(dtype),
                             chunks=(_CHUNK_VALUES,), compression=compression)
            g.create_dataset("offsets", data=np.zeros(1, np.int64), maxshape=(None,),
                             chunks=(_CHUNK_ROWS,), compression=compression)
        f.flush()

    def _open_existing(self) -> h5py.File:
        try:
            f = h5py.File(self.tmp, "r+")
        except OSError:
            # An unreadable partial file (killed during creation) cannot be resumed: start over.
            self.tmp.unlink()
            raise StoreError(f"{self.tmp} was damaged and has been removed; run the command again") from None
        if f.attrs.get("schema") != self.schema:
            f.close()
            raise StoreError(f"{self.tmp} is not a partial {self.schema}; remove it to start over")
        n = int(f.attrs["committed_rows"])
        for name in self.columns:
            if name not in f["rows"]:
                f.close()
                raise StoreError(f"{self.tmp} lacks column {name!r} (written by another command?); remove it")
            f["rows"][name].resize(n, axis=0)
        for name in self.ragged:
            g = f["ragged"][name]
            g["offsets"].resize(n + 1, axis=0)
            g["values"].resize(int(g["offsets"][n]), axis=0)
        return f

    # -- writing -----------------------------------------------------------------------------
    def append(self, columns: Mapping[str, Any], ragged: Mapping[str, Sequence[np.ndarray]] | None = None,
               commit: bool = True) -> None:
        """Append a batch of rows. All columns must be given with the same number of rows."""
        ragged = ragged or {}
        missing = set(self.columns) - set(columns) | set(self.ragged) - set(ragged)
        if missing:
            raise ValueError(f"append is missing columns {sorted(missing)}")
        lengths = {len(v) for v in columns.values()} | {len(v) for v in ragged.values()}
        if len(lengths) != 1:
            raise ValueError(f"columns have different lengths {sorted(lengths)}")
        n = lengths.pop()
        if n == 0:
            return
        self._ensure_space(columns, ragged)
        try:
            self._append(columns, ragged, n, commit)
        except (OSError, RuntimeError) as e:  # HDF5 reports a failed write (full disk, I/O error) so
            raise StoreError(f"writing {self.path} failed: {_hdf5_reason(e)}") from None

    def _ensure_space(self, columns: Mapping[str, Any], ragged: Mapping[str, Sequence[np.ndarray]]) -> None:
        """Refuse a batch the file system has no room for, before HDF5 writes (and fails) midway:
        the uncompressed size of the batch plus 256 kB must be free."""
        import shutil

        need = sum(np.asarray(v).nbytes if _np_dtype(self.columns[k][0]) is not STR else
                   sum(len(str(x)) for x in v) for k, v in columns.items())
        need += sum(int(np.asarray(a).nbytes) for parts in ragged.values() for a in parts)
        free = shutil.disk_usage(self.tmp.parent).free
        if free < need + (1 << 18):
            raise StoreError(f"not enough space to write {self.path}: the next rows need about "
                             f"{(need + (1 << 18)) / 1e6:,.1f} MB, {free / 1e6:,.1f} MB are free on "
                             f"{self.tmp.parent}; free some space or write elsewhere")

    def _append(self, columns, ragged, n: int, commit: bool) -> None:
        start = int(self.f["rows"][next(iter(self.columns))].shape[0]) if self.columns else self.rows
        for name in self.columns:
            ds = self.f["rows"][name]
            ds.resize(start + n, axis=0)
            ds[start:start + n] = np.asarray(columns[name]) if _np_dtype(self.columns[name][0]) is not STR \
                else np.asarray([str(x) for x in columns[name]], dtype=object)
        for name in self.ragged:
            g = self.f["ragged"][name]
            vdtype = g["values"].dtype  # looked up once: an h5py lookup per row dominated large batches
            parts = [np.asarray(a, dtype=vdtype).ravel() for a in ragged[name]]
            lens = np.fromiter((p.size for p in parts), dtype=np.int64, count=n)
            base = int(g["offsets"][start])
            offs = base + np.cumsum(lens)
            vals = g["values"]
            vals.resize(int(offs[-1]), axis=0)
            if offs[-1] > base:
                vals[base:int(offs[-1])] = np.concatenate(parts)
            g["offsets"].resize(start + n + 1, axis=0)
            g["offsets"][start + 1:start + n + 1] = offs
        if commit:
            self.commit(start + n)

    def commit(self, rows: int | None = None) -> None:
        """Record ``rows`` (default: all written rows) as durable and flush to disk."""
        if rows is None:
            rows = int(self.f["rows"][next(iter(self.columns))].shape[0])
        self.f.flush()
        self.f.attrs["committed_rows"] = rows
        self.f.flush()
        self.rows = rows

    def set_attr(self, key: str, value: Any) -> None:
        set_attr(self.f, key, value)

    def finalize(self) -> Path:
        """Mark complete, close and atomically rename to the final path."""
        self.commit(self.rows)
        self.f.attrs["complete"] = True
        self.f.close()
        try:
            os.replace(self.tmp, self.path)
        finally:
            self._lock.release()
        return self.path

    def abort(self, keep_partial: bool = False) -> None:
        """Close; remove the partial file unless it is kept for a later resume."""
        try:
            self.f.close()
        except Exception:  # noqa: BLE001 - closing a broken file must not mask the real error
            pass
        if not keep_partial and self.tmp.exists():
            self.tmp.unlink()
        self._lock.release()

    def __enter__(self) -> TableWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finalize()
        else:
            # KeyboardInterrupt / kill keeps the partial for resume; a user error removes it.
            self.abort(keep_partial=not issubclass(exc_type, Exception))


def set_attr(obj: h5py.HLObject, key: str, value: Any) -> None:
    """Store an attribute; dicts and lists are JSON-encoded strings."""
    if isinstance(value, dict | list | tuple):
        obj.attrs[key] = json.dumps(value, sort_keys=True)
    elif value is None:
        obj.attrs[key] = "null"
    else:
        obj.attrs[key] = value


def get_json_attr(obj: h5py.HLObject, key: str, default: Any = None) -> Any:
    """Read an attribute written by :func:`set_attr` (JSON strings are decoded)."""
    if key not in obj.attrs:
        return default
    v = obj.attrs[key]
    if isinstance(v, bytes):
        v = v.decode()
    if isinstance(v, str):
        try:
            return json.loads(v)
        except json.JSONDecodeError:
            return v
    return v.item() if isinstance(v, np.generic) else v


# the command that reads each kind of file, named when a file of one kind is given to another
_READ_WITH = {"glmjax.ScoreStore": "glmjax scores info|export", "glmjax.MembershipScores": "glmjax scores info|export",
              "glmjax.SequenceStore": "glmjax data info"}


def open_table(path: str | os.PathLike, schema: str, kind: str = "store") -> h5py.File:
    """Open a finished table for reading, with clear errors for wrong or unfinished files."""
    p = Path(path)
    if not p.exists():
        if partial_path(p).exists():
            raise StoreError(f"{p} is unfinished ({partial_path(p).name} exists); rerun the command that writes it")
        raise InputFileError(f"{p}: no such file")
    if p.is_dir():
        raise InputFileError(f"{p} is a folder, not an HDF5 {kind}")
    if p.stat().st_size == 0:
        raise InputFileError(f"{p} is empty")
    try:
        f = h5py.File(p, "r")
    except OSError:
        raise StoreError(f"{p} is not an HDF5 file; expected a {schema} (make one with glmjax)") from None
    got = f.attrs.get("schema")
    if isinstance(got, bytes):
        got = got.decode()
    if got != schema:
        f.close()
        what = f"a {got}" if got else "not written by glmjax"
        hint = _READ_WITH.get(got, "")
        raise StoreError(f"{p} is {what}, not a {schema}" + (f"; read it with {hint}" if hint else ""))
    for key in ("schema_version", "committed_rows"):  # a damaged or hand-edited header
        v = f.attrs.get(key)
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or int(v) < 0:
            f.close()
            raise StoreError(f"{p} is damaged: its {key} attribute is {'missing' if v is None else repr(v)}, "
                             "not a non-negative integer; write the store again")
    return f


class TableReader:
    """Read access to a finished table: row columns, ragged rows, attributes."""

    schema = ""
    kind = "store"

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.f = open_table(path, self.schema, self.kind)
        self.n = int(self.f.attrs["committed_rows"])
        self._offsets: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return self.n

    @property
    def schema_version(self) -> int:
        return int(self.f.attrs["schema_version"])

    def attr(self, key: str, default: Any = None) -> Any:
        return get_json_attr(self.f, key, default)

    @property
    def provenance(self) -> dict[str, Any]:
        return self.attr("provenance", {}) or {}

    @property
    def column_names(self) -> list[str]:
        return list(self.f["rows"].keys())

    def column(self, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows [start, stop) of a row-aligned column (strings are returned as Python str)."""
        if name not in self.f["rows"]:
            raise StoreError(f"{self.path} has no column {name!r} (has: {', '.join(self.column_names)})")
        stop = self.n if stop is None else min(stop, self.n)
        ds = self.f["rows"][name]
        if h5py.check_string_dtype(ds.dtype) is not None:
            return ds.asstr()[start:stop]
        return ds[start:stop]

    def columns(self, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Several row columns at once, by name (all by default)."""
        return {n: self.column(n) for n in (names or self.column_names)}

    def offsets(self, name: str) -> np.ndarray:
        if name not in self._offsets:
            self._offsets[name] = self.f["ragged"][name]["offsets"][: self.n + 1]
        return self._offsets[name]

    def ragged_rows(self, name: str, start: int = 0, stop: int | None = None) -> list[np.ndarray]:
        """Rows [start, stop) of a ragged column as a list of arrays (one read per call)."""
        stop = self.n if stop is None else min(stop, self.n)
        offs = self.offsets(name)
        lo, hi = int(offs[start]), int(offs[stop])
        flat = self.f["ragged"][name]["values"][lo:hi]
        return [flat[int(offs[i]) - lo:int(offs[i + 1]) - lo] for i in range(start, stop)]

    def ragged_row(self, name: str, i: int) -> np.ndarray:
        if not 0 <= i < self.n:
            raise IndexError(f"row {i} out of range 0..{self.n - 1}")
        offs = self.offsets(name)
        return self.f["ragged"][name]["values"][int(offs[i]):int(offs[i + 1])]

    def close(self) -> None:
        self.f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
