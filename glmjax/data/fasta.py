"""FASTA input: streaming reader (plain, gzip, bgzip), indexed access (pysam), genome windowing.

Reading is streamed: the file is read in blocks of a few MiB and each block is encoded to uint8
codes (:mod:`glmjax.alphabet`) as it arrives, so a multi-megabase single-line record never exists
as Python text. Records come out as ``(name, codes)`` pieces; a record's name is the first word of
its header line and must be unique within the file.

Windowing cuts every record into windows of ``length`` nucleotides starting at 0, ``stride``,
``2*stride``, ... Rules (documented for users in ``glmjax data window --help``):

* **ids** are ``record:start-end(+|-)`` with 1-based inclusive coordinates in the record (the
  ``start`` column holds the 0-based start), e.g. the first 1 kb window of ``chr1`` is
  ``chr1:1-1000(+)``;
* **N**: a window whose fraction of N (including IUPAC ambiguity codes, which become N) exceeds
  ``max_n_fraction`` (default 0.1) is dropped and counted; windows at or below it are kept with
  their N codes;
* **final partial window**: when the last full window does not reach the end of the record, the
  remaining tail ``[next_start, end)`` is dropped (counted) by default, or kept as one shorter
  window with ``keep_partial``; records shorter than ``length`` give at most that one window;
* **reverse complement** (``rc``): every kept window is followed by its reverse complement, with
  the same coordinates and strand ``-``.
"""

from __future__ import annotations

import gzip
import os
import re
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from glmjax import alphabet
from glmjax.errors import ConfigError, InputFileError, SequenceError, StoreError

BLOCK_BYTES = 4 << 20
_MAX_HEADER = 1 << 20
_WHITESPACE = np.zeros(256, dtype=bool)
_WHITESPACE[[ord(c) for c in " \t\r\n"]] = True
_TEXT = np.zeros(256, dtype=bool)
_TEXT[32:127] = True
_TEXT[[9, 10, 13]] = True
_OTHER_COMPRESSION = {b"BZh": "bzip2", b"\xfd7zXZ": "xz", b"\x28\xb5\x2f\xfd": "zstd", b"PK\x03\x04": "zip"}


# ------------------------------------------------------------------------------------------------
# Opening and streaming
# ------------------------------------------------------------------------------------------------
def check_input_file(path: str | os.PathLike) -> Path:
    """Check that ``path`` is an existing, non-empty regular file; return it as a Path."""
    p = Path(path)
    if not p.exists():
        raise InputFileError(f"{p}: no such file")
    if p.is_dir():
        raise InputFileError(f"{p} is a folder, not a FASTA file")
    if p.stat().st_size == 0:
        raise InputFileError(f"{p} is empty (0 bytes); expected a FASTA file")
    return p


def is_gzip(path: str | os.PathLike) -> bool:
    """True when the file starts with the gzip magic bytes (gzip and bgzip alike)."""
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def open_binary(path: str | os.PathLike) -> IO[bytes]:
    """Open a plain or gzip/bgzip file for binary reading (decompressed transparently)."""
    p = check_input_file(path)
    with open(p, "rb") as fh:
        magic = fh.read(6)
    for sig, name in _OTHER_COMPRESSION.items():
        if magic.startswith(sig):
            raise InputFileError(f"{p} is {name}-compressed; decompress it or recompress it with "
                                 "bgzip (gzip also works)")
    if magic[:2] == b"\x1f\x8b":
        return gzip.open(p, "rb")
    return open(p, "rb")


def _read_block(fh: IO[bytes], path: Path, size: int) -> bytes:
    try:
        return fh.read(size)
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise InputFileError(f"{path}: truncated or corrupt gzip data ({e}); re-download the file "
                             "or compress it again") from None
    except OSError as e:
        raise InputFileError(f"{path}: cannot read ({e})") from None


@dataclass
class FastaStats:
    """Counts gathered while reading a FASTA file."""

    records: int = 0
    bases: int = 0
    ambiguous: int = 0
    lowercase: int = 0
    empty_records: int = 0


def iter_fasta(path: str | os.PathLike, stats: FastaStats | None = None,
               block_bytes: int = BLOCK_BYTES) -> Iterator[tuple[str, np.ndarray]]:
    """Stream a FASTA file as ``(record_name, codes)`` pieces.

    Every record yields at least one piece (empty codes for an empty record); following pieces of
    the same record carry the same name. Codes are uint8 arrays (A C G T N = 0..4). Memory is
    bounded by ``block_bytes`` whatever the line or record length.

    Raises:
      InputFileError: missing/empty/binary/compressed-otherwise/truncated file, no header line,
        empty or duplicate record names.
      SequenceError: a character that is not a nucleotide (names record, position, character).
    """
    p = check_input_file(path)
    stats = stats if stats is not None else FastaStats()
    enc = alphabet.EncodeStats()
    names: set[str] = set()
    name: str | None = None
    offset = 0  # nucleotides of the current record seen so far
    seen_any = False

    def sequence_piece(data: bytes) -> np.ndarray:
        raw = np.frombuffer(data, dtype=np.uint8)
        raw = raw[~_WHITESPACE[raw]]
        try:
            return alphabet.encode(raw, record=name, offset=offset, stats=enc)
        except SequenceError as e:
            raise SequenceError(f"{p}: {e}") from None

    def header(line: bytes) -> str:
        line = line.rstrip(b"\r")
        words = line.split(None, 1)
        if not words:
            raise InputFileError(f"{p}: record {stats.records + 1} has an empty header line ('>' "
                                 "without a name)")
        try:
            nm = words[0].decode("utf-8")
        except UnicodeDecodeError:
            raise InputFileError(f"{p}: header of record {stats.records + 1} is not text; is this a "
                                 "FASTA file?") from None
        if not nm.isprintable():
            raise InputFileError(f"{p}: header of record {stats.records + 1} contains control "
                                 "characters; is this a FASTA file?")
        if nm in names:
            raise InputFileError(f"{p}: duplicate record name {nm!r}; record names must be unique")
        names.add(nm)
        return nm

    def end_record() -> None:
        if name is not None and offset == 0:
            stats.empty_records += 1

    with open_binary(p) as fh:
        pending = b""
        in_header = False
        line_start = True
        eof = False
        while not eof:
            block = _read_block(fh, p, block_bytes)
            eof = not block
            data = pending + block if pending else block
            pending = b""
            if not seen_any and data.strip():
                seen_any = True
            i, n = 0, len(data)
            while i < n:
                if in_header:
                    j = data.find(b"\n", i)
                    if j < 0 and not eof:
                        pending = data[i:]
                        if len(pending) > _MAX_HEADER:
                            raise InputFileError(f"{p}: a header line is longer than 1 MiB; is this a "
                                                 "FASTA file?")
                        break
                    j = n if j < 0 else j
                    end_record()
                    name = header(data[i:j])
                    offset = 0
                    stats.records += 1
                    in_header, line_start, i = False, True, j + 1
                    yield name, np.empty(0, dtype=np.uint8)
                    continue
                if line_start and data[i] == 0x3E:  # '>'
                    in_header = True
                    i += 1
                    continue
                j = data.find(b"\n>", i)
                stop = n if j < 0 else j + 1
                chunk = data[i:stop]
                if name is None:
                    if chunk.strip():
                        raw = np.frombuffer(chunk, dtype=np.uint8)
                        if not _TEXT[raw].all():
                            raise InputFileError(f"{p} is binary data, not a FASTA file")
                        raise InputFileError(f"{p} has no FASTA header line: the first line must "
                                             "start with '>' followed by the record name")
                else:
                    codes = sequence_piece(chunk)
                    if codes.size:
                        offset += codes.size
                        stats.bases += codes.size
                        yield name, codes
                line_start = chunk.endswith(b"\n")
                i = stop
        if in_header:  # a lone '>' at the very end of the file
            header(b"")
    if not seen_any:
        raise InputFileError(f"{p} contains no FASTA records (only whitespace, or empty after "
                             "decompression)")
    end_record()
    stats.ambiguous += enc.ambiguous
    stats.lowercase += enc.lowercase


def iter_records(path: str | os.PathLike, stats: FastaStats | None = None) -> Iterator[tuple[str, np.ndarray]]:
    """Whole records ``(name, codes)`` of a FASTA file, one at a time (memory: one record)."""
    stats = stats if stats is not None else FastaStats()
    cur: str | None = None
    parts: list[np.ndarray] = []
    for name, codes in iter_fasta(path, stats):
        if name != cur:
            if cur is not None:
                yield cur, _finish_record(parts)
            cur, parts = name, []
        if codes.size:
            parts.append(codes)
    if cur is not None:
        yield cur, _finish_record(parts)


def _finish_record(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.uint8)


def read_fasta(path: str | os.PathLike) -> list[tuple[str, np.ndarray]]:
    """All records of a (small) FASTA file as a list of ``(name, codes)``."""
    return list(iter_records(path))


# ------------------------------------------------------------------------------------------------
# Indexed random access
# ------------------------------------------------------------------------------------------------
class IndexedFasta:
    """Random access to a bgzip-compressed (``.fai`` + ``.gzi``) or plain (``.fai``) FASTA via pysam.

    ``fetch(name, start, end)`` returns uint8 codes of the 0-based half-open interval.
    """

    def __init__(self, path: str | os.PathLike):
        p = check_input_file(path)
        fai = p.with_name(p.name + ".fai")
        gzi = p.with_name(p.name + ".gzi")
        if not fai.exists() or (is_gzip(p) and not gzi.exists()):
            need = f"{fai.name} and {gzi.name}" if is_gzip(p) else fai.name
            raise InputFileError(f"{p} has no index ({need} missing); build it with `samtools faidx "
                                 f"{p}` (gzip files must be bgzip-compressed), or read it without --indexed")
        import pysam  # only the indexed path needs htslib

        try:
            self._fa = pysam.FastaFile(str(p))
        except (OSError, ValueError) as e:
            raise InputFileError(f"{p}: cannot open indexed FASTA ({e}); plain gzip cannot be "
                                 "indexed, recompress with bgzip") from None
        self.path = p
        self.references: tuple[str, ...] = tuple(self._fa.references)
        self.lengths: tuple[int, ...] = tuple(int(x) for x in self._fa.lengths)

    def length(self, name: str) -> int:
        """Length in nucleotides of record ``name``."""
        if name not in self.references:
            raise InputFileError(f"{self.path} has no record {name!r} (has: {', '.join(self.references[:5])}"
                                 f"{', ...' if len(self.references) > 5 else ''})")
        return self.lengths[self.references.index(name)]

    def fetch(self, name: str, start: int, end: int, stats: alphabet.EncodeStats | None = None) -> np.ndarray:
        """Codes of ``name[start:end]`` (0-based, half-open), uint8 [end - start]."""
        total = self.length(name)
        if not 0 <= start <= end <= total:
            raise InputFileError(f"region {name}:{start + 1}-{end} is outside {name} (length {total})")
        try:
            text = self._fa.fetch(name, start, end)
        except (OSError, ValueError) as e:
            raise InputFileError(f"{self.path}: cannot read {name}:{start + 1}-{end} ({e})") from None
        try:
            return alphabet.encode(text, record=name, offset=start, stats=stats)
        except SequenceError as e:
            raise SequenceError(f"{self.path}: {e}") from None

    def close(self) -> None:
        self._fa.close()

    def __enter__(self) -> IndexedFasta:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_REGION = re.compile(r"^(?P<name>.+):(?P<start>[\d,]+)-(?P<end>[\d,]+)$")


def parse_region(region: str, index: IndexedFasta) -> tuple[str, int, int]:
    """``name`` or ``name:start-end`` (1-based inclusive) -> (name, start0, end) in 0-based half-open."""
    if region in index.references:
        return region, 0, index.length(region)
    m = _REGION.match(region)
    if not m:
        raise InputFileError(f"region {region!r}: expected NAME or NAME:START-END (1-based, inclusive)")
    name = m["name"]
    start, end = int(m["start"].replace(",", "")), int(m["end"].replace(",", ""))
    total = index.length(name)
    if not 1 <= start <= end <= total:
        raise InputFileError(f"region {region!r} is outside {name} (1..{total})")
    return name, start - 1, end


# ------------------------------------------------------------------------------------------------
# Windowing
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WindowSpec:
    """How to cut records into windows (see the module docstring for the rules)."""

    length: int
    stride: int | None = None
    rc: bool = False
    max_n_fraction: float = 0.1
    keep_partial: bool = False

    def __post_init__(self) -> None:
        if self.length < 1:
            raise ConfigError(f"--length must be at least 1 (got {self.length})")
        if self.stride is not None and self.stride < 1:
            raise ConfigError(f"--stride must be at least 1 (got {self.stride})")
        if not 0.0 <= self.max_n_fraction <= 1.0:
            raise ConfigError(f"--max-n-fraction must be in [0, 1] (got {self.max_n_fraction})")

    @property
    def step(self) -> int:
        return self.length if self.stride is None else self.stride

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["stride"] = self.step
        return d


@dataclass
class WindowStats:
    """Counts of a windowing run."""

    windows: int = 0
    rows: int = 0
    dropped_n: int = 0
    partial_kept: int = 0
    partial_dropped: int = 0
    short_records: int = 0
    fasta: FastaStats = field(default_factory=FastaStats)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(d.pop("fasta"))
        return d


class _Windower:
    """Cuts the stream of one record (fed as code chunks) into full windows; vectorised per chunk.

    Only the bases not yet consumed by a window are kept (at most ``length + stride`` plus the
    latest chunk), so memory does not grow with the record.
    """

    def __init__(self, spec: WindowSpec, origin: int = 0):
        self.spec = spec
        self.buf = np.empty(0, dtype=np.uint8)
        self.buf_start = origin      # record coordinate of buf[0]
        self.next_start = origin     # record coordinate of the next window start
        self.origin = origin
        self.last_full_end = origin  # end of the last full window emitted (origin: none yet)

    def feed(self, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Add codes; return (starts int64 [W], windows uint8 [W, length]) of newly complete windows.

        ``windows`` is a read-only strided view of an internal buffer that is never modified later.
        """
        L, S = self.spec.length, self.spec.step
        self.buf = np.concatenate([self.buf, codes]) if self.buf.size else codes
        end = self.buf_start + self.buf.size
        avail = end - self.next_start
        count = (avail - L) // S + 1 if avail >= L else 0
        starts = self.next_start + S * np.arange(count, dtype=np.int64)
        if count:
            off = self.next_start - self.buf_start
            view = np.lib.stride_tricks.sliding_window_view(self.buf[off:], L)[::S][:count]
            self.last_full_end = int(starts[-1]) + L
            self.next_start += count * S
        else:
            view = np.empty((0, L), dtype=np.uint8)
        keep_from = min(self.next_start, end) - self.buf_start
        if keep_from:
            self.buf = self.buf[keep_from:].copy()
            self.buf_start += keep_from
        return starts, view

    def finish(self, record_end: int) -> tuple[int, np.ndarray] | None:
        """The tail after the last full window as (start, codes), or None when nothing is left."""
        if self.last_full_end > self.origin and self.last_full_end >= record_end:
            return None
        if self.next_start >= record_end:
            return None
        off = self.next_start - self.buf_start
        return self.next_start, self.buf[off:record_end - self.buf_start].copy()


Row = tuple[str, str, int, int, np.ndarray]
_ROWS_PER_YIELD = 4096


def _rows_for(name: str, starts: np.ndarray, wins: np.ndarray | list[np.ndarray], spec: WindowSpec,
              stats: WindowStats) -> list[Row]:
    """Apply the N rule and the reverse-complement option; rows are (id, source, start0, strand, codes)."""
    rows: list[Row] = []
    if len(starts) == 0:
        return rows
    if isinstance(wins, np.ndarray):
        n_count = np.count_nonzero(wins == alphabet.N, axis=1)
        sizes = np.full(len(starts), wins.shape[1])
    else:
        n_count = np.array([np.count_nonzero(w == alphabet.N) for w in wins])
        sizes = np.array([w.size for w in wins])
    keep = n_count <= spec.max_n_fraction * sizes
    stats.dropped_n += int((~keep).sum())
    for k in np.flatnonzero(keep):
        s, w = int(starts[k]), wins[k]
        e = s + w.size
        rows.append((f"{name}:{s + 1}-{e}(+)", name, s, 1, w))
        if spec.rc:
            rows.append((f"{name}:{s + 1}-{e}(-)", name, s, -1, alphabet.reverse_complement(w)))
    stats.windows += int(keep.sum())
    stats.rows += len(rows)
    return rows


def _window_stream(pieces: Iterable[tuple[str, int, Iterable[np.ndarray]]], spec: WindowSpec,
                   stats: WindowStats) -> Iterator[list[Row]]:
    """Window a stream of (record, origin, code chunks); yields lists of at most a few thousand rows."""
    for name, origin, chunks in pieces:
        w = _Windower(spec, origin)
        pos = origin
        for codes in chunks:
            pos += codes.size
            starts, wins = w.feed(codes)
            for lo in range(0, len(starts), _ROWS_PER_YIELD):
                rows = _rows_for(name, starts[lo:lo + _ROWS_PER_YIELD], wins[lo:lo + _ROWS_PER_YIELD],
                                 spec, stats)
                if rows:
                    yield rows
        if pos - origin < spec.length:
            stats.short_records += 1
        tail = w.finish(pos)
        if tail is not None:
            if spec.keep_partial:
                stats.partial_kept += 1
                rows = _rows_for(name, np.array([tail[0]]), [tail[1]], spec, stats)
                if rows:
                    yield rows
            else:
                stats.partial_dropped += 1


def _streamed_records(path: str | os.PathLike, stats: FastaStats) -> Iterator[tuple[str, int, Iterator]]:
    """Group the piece stream of :func:`iter_fasta` by record, lazily (one pass over the file)."""
    it = iter_fasta(path, stats)
    state: dict[str, Any] = {"next": next(it, None)}

    def chunks(name: str) -> Iterator[np.ndarray]:
        while state["next"] is not None and state["next"][0] == name:
            codes = state["next"][1]
            state["next"] = next(it, None)
            yield codes

    while state["next"] is not None:
        gen = chunks(state["next"][0])
        yield state["next"][0], 0, gen
        for _ in gen:  # the consumer normally exhausts it; make sure the stream moves on
            pass


def _indexed_records(index: IndexedFasta, regions: list[tuple[str, int, int]], stats: FastaStats,
                     block: int = BLOCK_BYTES) -> Iterator[tuple[str, int, Iterator]]:
    enc = alphabet.EncodeStats()

    def chunks(name: str, start: int, end: int) -> Iterator[np.ndarray]:
        for lo in range(start, end, block):
            codes = index.fetch(name, lo, min(lo + block, end), stats=enc)
            stats.bases += codes.size
            yield codes

    for name, start, end in regions:
        stats.records += 1
        yield name, start, chunks(name, start, end)
    stats.ambiguous += enc.ambiguous
    stats.lowercase += enc.lowercase


def iter_windows(path: str | os.PathLike, spec: WindowSpec, stats: WindowStats | None = None,
                 indexed: bool = False, regions: list[str] | None = None) -> Iterator[list[Row]]:
    """Stream the windows of a FASTA file as lists of rows ``(id, source, start0, strand, codes)``.

    Args:
      path: FASTA file (plain, gzip or bgzip).
      spec: window length, stride, reverse complement, N rule, partial-window rule.
      stats: counters filled while streaming (windows, dropped, records, bases, ambiguity codes).
      indexed: read through the pysam index (``.fai``/``.gzi``) instead of streaming the file.
      regions: ``NAME`` or ``NAME:START-END`` (1-based inclusive) to window; requires ``indexed``.
    """
    stats = stats if stats is not None else WindowStats()
    if regions and not indexed:
        raise ConfigError("--region needs --indexed (random access through the FASTA index)")
    if indexed:
        index = IndexedFasta(path)
        try:
            regs = [parse_region(r, index) for r in regions] if regions else \
                [(n, 0, ln) for n, ln in zip(index.references, index.lengths, strict=True)]
            yield from _window_stream(_indexed_records(index, regs, stats.fasta), spec, stats)
        finally:
            index.close()
    else:
        yield from _window_stream(_streamed_records(path, stats.fasta), spec, stats)


def window_to_store(path: str | os.PathLike, out: str | os.PathLike, spec: WindowSpec,
                    indexed: bool = False, regions: list[str] | None = None, resume: bool = False,
                    on_rows: Callable[[int, int], None] | None = None,
                    batch_rows: int = 8192) -> dict[str, Any]:
    """Window a FASTA file into a new SequenceStore at ``out``; return the summary counts.

    Rows are written in file order (records, then window starts; a reverse-complement row follows
    its forward window). With ``resume``, a ``.partial`` store left by an interrupted run with the
    same input and options is continued after its committed rows. ``on_rows(rows, bases)`` is
    called after each written batch (progress).

    Raises:
      InputFileError / SequenceError: bad input (the partial output is removed).
      ConfigError: no window at all could be made.
    """
    from glmjax.data.provenance import source_entry
    from glmjax.data.store import SequenceStoreWriter
    from glmjax.storage import base_provenance

    src = source_entry(check_input_file(path))
    prov = base_provenance(source=src, seed=None, windowing=spec.to_dict(), indexed=indexed,
                           regions=list(regions or []))
    if resume:
        _check_resumable(out, prov)
    stats = WindowStats()
    with SequenceStoreWriter(out, provenance=prov, resume=resume) as writer:
        skip = writer.resumed_rows
        batch: list[Row] = []

        def write(rows: list[Row]) -> None:
            writer.append({"id": [r[0] for r in rows], "source": [r[1] for r in rows],
                           "start": np.array([r[2] for r in rows], np.int64),
                           "strand": np.array([r[3] for r in rows], np.int8),
                           "kind": ["genome"] * len(rows), "canary": [""] * len(rows),
                           "group": [""] * len(rows)},
                          {"seq": [r[4] for r in rows]})
            if on_rows is not None:
                on_rows(len(rows), sum(r[4].size for r in rows))

        def flush(final: bool = False) -> None:
            while len(batch) >= batch_rows or (final and batch):
                write(batch[:batch_rows])
                del batch[:batch_rows]

        seen = 0
        for rows in iter_windows(path, spec, stats, indexed=indexed, regions=regions):
            if seen + len(rows) <= skip:
                seen += len(rows)
                continue
            batch.extend(rows[max(skip - seen, 0):])
            seen += len(rows)
            flush()
        flush(final=True)
        if stats.rows == 0:
            raise ConfigError(
                f"{path}: no windows of length {spec.length} ({stats.fasta.records} records, "
                f"{stats.fasta.bases:,} bases, {stats.dropped_n} dropped for N > {spec.max_n_fraction}, "
                f"{stats.partial_dropped} partial); use a shorter --length or --keep-partial")
        if seen < skip:
            raise StoreError(f"{writer.tmp} had more rows ({skip}) than this input gives ({seen}) and "
                             "was removed; run again")
        summary = stats.to_dict()
        summary["resumed_rows"] = skip
        prov["counts"] = {k: v for k, v in summary.items() if k != "resumed_rows"}
        writer.set_attr("provenance", prov)
    return summary


def _check_resumable(out: str | os.PathLike, prov: dict[str, Any]) -> None:
    """Refuse to resume a partial store written from another input or with other options."""
    import h5py

    from glmjax.storage import get_json_attr, partial_path

    tmp = partial_path(out)
    if not tmp.exists():
        return
    try:
        with h5py.File(tmp, "r") as f:
            old = get_json_attr(f, "provenance", {}) or {}
    except OSError:
        return  # unreadable: the writer reports it and starts over
    for key in ("source", "windowing", "indexed", "regions"):
        a, b = old.get(key), prov[key]
        if key == "source":
            a, b = (a or {}).get("sha256"), b["sha256"]
        if a != b:
            raise StoreError(f"{tmp} was written from another input or with other options ({key} "
                             "differs); remove it or run without --resume")
