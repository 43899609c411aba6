"""Provenance helpers: content hashes of input files and atomic writes of small output files.

Stores and manifests record the sha256 of every file they were made from, so an audit can prove
which data a result belongs to. Hashes are streamed (constant memory).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from glmjax.errors import InputFileError

_BLOCK = 1 << 20


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 (hex) of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(_BLOCK), b""):
                h.update(block)
    except OSError as e:
        raise InputFileError(f"{path}: cannot read ({e.strerror or e})") from None
    return h.hexdigest()


def source_entry(path: str | os.PathLike) -> dict[str, Any]:
    """Provenance entry of an input file: path as given, size in bytes and sha256."""
    p = Path(path)
    return {"path": str(path), "bytes": p.stat().st_size, "sha256": file_sha256(p)}


def canonical_json(obj: Any) -> bytes:
    """Deterministic JSON bytes (sorted keys, 1-space indent, trailing newline) for files and hashes."""
    return (json.dumps(obj, sort_keys=True, indent=1, ensure_ascii=True) + "\n").encode("ascii")


def bytes_sha256(data: bytes) -> str:
    """sha256 (hex) of a byte string."""
    return hashlib.sha256(data).hexdigest()


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``<path>.partial`` and rename it to ``path`` once fully written."""
    p = Path(path)
    if not p.parent.exists():
        raise InputFileError(f"output folder {p.parent} does not exist; create it first")
    if p.is_dir():
        raise InputFileError(f"{p} is a folder; give a file name")
    from glmjax.storage import is_own_output

    if p.exists() and not is_own_output(p):
        raise InputFileError(f"{p} exists and glmjax did not write it; choose another output or remove it yourself")
    tmp = p.with_name(p.name + ".partial")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    finally:
        if tmp.exists():
            tmp.unlink()
    return p
