"""Reading HPDv3 metadata (a JSON list or JSON Lines) into columns, safely.

Each record is one comparison: ``prompt``, ``path1`` (chosen), ``path2``
(rejected), optional ``model1``/``model2``, ``choice_dist`` and
``confidence``; the fields, their types and defaults are declared once, in
Rust (:mod:`hpd_encode.record`). Missing optional fields get the reference's
defaults (votes 0, confidence 0.0, models ""). A bad record is reported with
its reason and skipped; it never stops the run.

How (HPDv3 has ~1.2 M records; one Python object per record costs tens of
seconds and over a GB): in Rust (``_core.read_metadata_columns``), the file is
read a window (8 MB) at a time and cut into entries without parsing them
(JSON Lines at newlines; a JSON list by one pass over its structure: quotes,
escapes, brackets at depth 1). The entries of a window are judged in parallel
(``rust/metadata/judge.rs``, the one place that decides whether an entry is a
good record and why not): the good records become columns, the bad ones
failures with their reasons. Python only checks the file as a whole (what it
holds, that a list is closed and nothing follows it) and hands the columns to
polars.

Measured at 1.17 M records (the 495 MB JSON list of benches/bench_plan.py, page
cache warm, 2 cores): 2.3-2.9 s of CPU, 1.3-1.9 s wall, about 420 MB of RSS for
the table (its strings are handed to polars as Arrow string views, not copied).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, make_dataclass
from os import PathLike
from pathlib import Path
from typing import Any

# isort: off
# pyarrow before polars: with that order the peak RSS of reading 1.17 M records is ~590 MB, the other
# way round ~750 MB (measured; the allocators each library sets up depend on which loads first).
import pyarrow as pa
import numpy as np
import polars as pl

# isort: on

from hpd_encode import _core, record
from hpd_encode.errors import MetadataError, OptionError
from hpd_encode.failures import Failure
from hpd_encode.files import open_regular, require_file

_POLARS_TYPES: dict[str, pl.DataType] = {
    "int64": pl.Int64(),
    "float64": pl.Float64(),
    "string": pl.String(),
}

#: Columns of :attr:`Metadata.table`, in order: the record's fields read from the metadata.
TABLE_SCHEMA: dict[str, pl.DataType] = {f.name: _POLARS_TYPES[f.dtype] for f in record.METADATA_FIELDS}

#: Longest ``detail`` kept per failure: junk input must cost memory in proportion to its size.
MAX_DETAIL: int = _core.MAX_DETAIL

#: Bytes of the file the Rust reader holds at a time (plus the unfinished entry): Rust's
#: ``DEFAULT_WINDOW`` (tests set smaller windows here to cross window edges).
_WINDOW: int = _core.METADATA_WINDOW

_PY_TYPES = {"int64": int, "float64": float, "string": str}

#: One good record as a Python object (the fields of :data:`TABLE_SCHEMA`).
Record = make_dataclass(
    "Record",
    [(name, _PY_TYPES[dtype]) for name, dtype in ((f.name, f.dtype) for f in record.METADATA_FIELDS)],
    frozen=True,
)
Record.__module__ = __name__


@dataclass(frozen=True)
class Metadata:
    """The good records as columns (:data:`TABLE_SCHEMA`, file order) and one failure per bad one."""

    table: pl.DataFrame
    failures: list[Failure]
    n_entries: int  # entries considered (good + bad), after ``limit``
    #: Where each good record is in the file: ``entry_offset`` and ``entry_len`` (int64), one row per
    #: row of :attr:`table`, so that :func:`read_records` can read a few of them again.
    entries: pl.DataFrame | None = None
    #: With :func:`read_metadata`'s ``images``: the paths it numbered (``ids``, a ``_core.PathIds``:
    #: the local ids' paths and hashes) and their probes by local id (empty when not probed while
    #: reading).
    images: _core.SurveyedMetadata | None = None

    def records(self) -> Iterator[Any]:
        """The good records as :class:`Record` objects, for small callers (one object each: not for HPDv3 scale)."""
        for row in self.table.iter_rows():
            yield Record(*row)


# ---------------------------------------------------------------------------------------------------------------
# The file as a whole: what it holds, where a rank's range starts, whether a list is closed.

#: What ``str.strip`` removes from bytes: a JSON Lines line of only these is blank.
_SPACE_BYTES = bytes([9, 10, 11, 12, 13, 28, 29, 30, 31, 32])


class _File:
    """The metadata file, read by byte ranges (the few reads the Python side makes)."""

    def __init__(self, path: Path) -> None:
        self.f = open_regular(path, "metadata file")  # closed by the readers
        self.size = os.fstat(self.f.fileno()).st_size

    @classmethod
    def open(cls, path: Path) -> _File:
        """The metadata file; ``FileNotFoundError`` naming it when nothing is there,
        ``NotRegularFileError`` saying what it is when it is a FIFO, device or directory."""
        require_file(path, "metadata file")
        return cls(path)

    def read(self, start: int, n: int) -> bytearray:
        """Bytes [start, start + n) (fewer at the end of the file)."""
        data = bytearray(max(0, min(n, self.size - start)))
        self.f.seek(start)
        got = self.f.readinto(data)
        del data[got:]
        return data

    def find(self, start: int, value: bytes) -> int:
        """Position of the first ``value`` byte at or after ``start``; the file size when there is none."""
        pos = start
        while pos < self.size:
            data = self.read(pos, 1 << 20)
            k = data.find(value)
            if k >= 0:
                return pos + k
            pos += len(data)
        return self.size

    def first_non_space(self, start: int) -> int:
        pos = start
        while pos < self.size:
            data = self.read(pos, 1 << 16)
            rest = data.lstrip(_SPACE_BYTES)
            if rest:
                return pos + len(data) - len(rest)
            pos += len(data)
        return self.size


def _layout(file: _File, path: Path) -> tuple[int, int, bool]:
    """Where the metadata starts (after a byte-order mark), its first non-space byte, and whether
    it is a list (else JSON Lines). An empty or whitespace-only file, and one object over several
    lines, are refused."""
    kind, start, first = _core.metadata_file_kind(str(path), window=_WINDOW)
    if kind == "object":
        raise MetadataError(f"metadata '{path}' must be a JSON list of records or JSON Lines, not an object")
    if kind == "empty":
        what = "is empty" if file.size <= start else "holds only whitespace"
        raise MetadataError(
            f"metadata '{path}' {what}: expected a JSON list of records or JSON Lines (one record per line)"
        )
    return start, first, kind == "list"


def _check_list_end(file: _File, path: Path, end: int, limit_reached: bool) -> None:
    """Refuse a list that is not closed (its end not reached for a ``limit``) or has more after it."""
    if end == -1 and not limit_reached:
        raise MetadataError(f"cannot parse metadata '{path}' as JSON: the list is not closed")
    if end >= 0 and (after := file.first_non_space(end + 1)) < file.size:
        raise MetadataError(
            f"cannot parse metadata '{path}' as JSON: extra data after the list at byte {after}"
        )


def _list_error(path: Path, error: tuple[int, str]) -> MetadataError:
    """A list element that is not JSON: the list is broken."""
    index, why = error
    return MetadataError(f"cannot parse metadata '{path}' as JSON: record {index}: {why}")


def _cut(file: _File, start: int, k: int, world_size: int, is_list: bool) -> int:
    """Where rank ``k``'s byte range starts (``k == world_size``: the end of the file): rank 0 at
    ``start`` (the list's bracket, or the first line), the others about ``k / world_size`` into
    the file: a list's not right after a backslash, a line's just after a newline."""
    if k == 0:
        return start
    if k >= world_size:
        return file.size
    at = max(start + 1, k * file.size // world_size)
    if at >= file.size:
        return file.size
    if not is_list:
        return min(file.find(at - 1, b"\n") + 1, file.size)
    while at < file.size and file.read(at - 1, 1) == b"\\":
        at += 1
    return at


# ---------------------------------------------------------------------------------------------------------------
# The Rust reader's columns as a table.


def _strings(col: _core.StringColumn) -> pa.Array:
    """A ``StringColumn`` as Arrow, in the string-view layout polars uses itself (so it takes the
    buffers without a copy) or, past 4 GiB of text, as large strings."""
    data = pa.py_buffer(col.data)
    if col.views is not None:
        return pa.Array.from_buffers(pa.string_view(), len(col), [None, pa.py_buffer(col.views), data])
    assert col.offsets is not None
    return pa.LargeStringArray.from_buffers(len(col), pa.py_buffer(col.offsets), data)


def _table(cols: _core.MetadataColumns, extra: dict[str, np.ndarray] | None = None) -> pl.DataFrame:
    """The good records as a table of :data:`TABLE_SCHEMA` (then the ``extra`` columns), one
    column at a time (so that only one column is ever held twice)."""
    series = []
    for f in record.METADATA_FIELDS:
        if f.source == "position":
            series.append(pl.Series(f.name, cols.record_index))
            continue
        col = cols.take_column(f.name)
        values = _strings(col) if isinstance(col, _core.StringColumn) else col
        series.append(pl.Series(f.name, values))
        del col, values
    series += [pl.Series(name, values) for name, values in (extra or {}).items()]
    return pl.DataFrame(series).cast(TABLE_SCHEMA)  # type: ignore[arg-type]


_ENTRY_SCHEMA = {"entry_offset": pl.Int64(), "entry_len": pl.Int64()}
#: Columns of :attr:`Metadata.entries`: where each good record's entry is in the file.
ENTRY_COLUMNS = tuple(_ENTRY_SCHEMA)


def _metadata(
    cols: _core.MetadataColumns,
    n_entries: int,
    extra: dict[str, np.ndarray] | None = None,
    images: _core.SurveyedMetadata | None = None,
) -> Metadata:
    f = cols.take_failures()
    failures = [
        Failure(int(i), "metadata", "bad_record", detail, p1, p2)
        for i, detail, p1, p2 in zip(f.record_index.tolist(), f.detail, f.image1_path, f.image2_path)
    ]
    entries = pl.DataFrame(
        {"entry_offset": cols.entry_offset, "entry_len": cols.entry_len}, schema=_ENTRY_SCHEMA
    )
    return Metadata(
        table=_table(cols, extra), failures=failures, n_entries=n_entries, entries=entries, images=images
    )


# ---------------------------------------------------------------------------------------------------------------
# The readers.


def _alone(obj: Any) -> list[Any]:
    return [obj]


@dataclass(frozen=True)
class Share:
    """Which entries of the metadata a reader takes: rank ``rank`` of ``world_size`` (one process is
    rank 0 of 1, which takes them all). ``all_gather(obj)`` gives every rank's ``obj`` in rank
    order (:meth:`hpd_encode.dist.Dist.all_gather`); the ranks use it to agree on where their byte
    ranges start and how the entries are numbered."""

    rank: int = 0
    world_size: int = 1
    all_gather: Callable[[Any], list[Any]] = _alone


@dataclass(frozen=True)
class ImagesWhileReading:
    """What :func:`read_metadata` does with the image paths of the good records as it reads
    (``_core.survey_metadata``): number them (a local id each, with its hash) and, with ``probe``,
    probe each beneath ``root`` meanwhile. The records in ``skip`` (sorted record numbers, already
    done) get no ids, where the read numbers entries as the file does (not in a byte range)."""

    root: Path
    skip: np.ndarray
    max_pixels: int = _core.DEFAULT_MAX_PIXELS
    counter: _core.Counter | None = None
    probe: bool = True


def read_metadata(
    path: str | PathLike[str],
    limit: int | None = None,
    *,
    num_threads: int | None = None,
    share: Share = Share(),
    text: bool = True,
    images: ImagesWhileReading | None = None,
) -> Metadata:
    """Read a JSON list or JSON Lines metadata file (a UTF-8 BOM is allowed) into :class:`Metadata`:
    the one reader, for one process and for each torchrun rank (``share``).

    ``limit`` keeps only the first ``limit`` entries of the file (good or bad; blank lines do not
    count). A bad record is a :class:`~hpd_encode.failures.Failure` (stage ``metadata``, kind
    ``bad_record``); raises :class:`MetadataError` only when the file as a whole is not a list of
    records or JSON Lines (or is empty): every rank raises the same. The file is read a window at
    a time (in Rust, the entries of a window judged on ``num_threads`` threads): memory is the
    table plus a few windows.

    A rank of several takes the entries in its byte range of the file, so that no rank reads or
    scans the whole of it: a JSON Lines range starts after a newline; a list's anywhere but right
    after a backslash, in a state (depth, inside a string or not) that the ranks work out together
    from a summary of each range (``_core.metadata_range_summary``), and a rank takes the elements
    whose separator (the opening bracket or a comma) is in its range. With a ``limit`` it takes
    the entries numbered ``rank`` modulo ``world_size`` among the first ``limit`` instead. The
    records, numbers, failures (with their line numbers) and errors are those of one reader;
    ``n_entries`` counts every rank's.

    Without ``text`` the text fields (prompts, models) are checked but left empty (for a caller
    that reads them again, by byte offset, for the rows it needs). With ``images``, the table has
    local image ids ``id1``, ``id2`` (-1 for skipped records) and :attr:`Metadata.images` what else
    the read found of them.
    """
    path = Path(path)
    rank, world = share.rank, share.world_size
    if limit is not None and limit < 0:
        raise OptionError(f"limit must be >= 0, not {limit}")
    if not 0 <= rank < world:
        raise OptionError(f"rank {rank} of {world}")
    by_bytes = world > 1 and limit is None
    file = _File.open(path)
    try:
        start, first, is_list = _layout(file, path)
        origin = first if is_list else start
        kw: dict[str, Any] = {"limit": limit, "window": _WINDOW, "num_threads": num_threads, "text": text}
        lo = origin
        if by_bytes:
            lo, until = (_cut(file, origin, k, world, is_list) for k in (rank, rank + 1))
            state = _range_state(path, lo, until, share) if is_list else {}
            kw["share"] = _core.MetadataShare(until=until, **state)
        elif world > 1:
            kw["share"] = _core.MetadataShare(part=(rank, world))
        mode = "list" if is_list else "lines"
        found: _core.SurveyedMetadata | None = None
        if images is None:
            cols = _core.read_metadata_columns(str(path), mode, lo, **kw)
        else:
            found = _core.survey_metadata(
                str(path),
                mode,
                lo,
                str(images.root),
                max_pixels=images.max_pixels,
                skip=None if by_bytes else images.skip,
                counter=images.counter,
                probe=images.probe,
                **kw,
            )
            cols = found.columns
        if by_bytes:
            counts = share.all_gather((cols.n_entries, cols.n_lines, cols.list_end, cols.list_error))
            cols.shift(sum(c[0] for c in counts[:rank]), sum(c[1] for c in counts[:rank]))
            n_entries = sum(c[0] for c in counts)
            if is_list:
                ends = [c[2] for c in counts if c[2] >= 0]  # the range with the closing bracket
                _check_list_end(file, path, ends[0] if ends else -1, False)
                # The first broken element of all, numbered among all: every rank says the same.
                broken = [
                    (e[0] + sum(c[0] for c in counts[:r]), e[1]) for r, (*_, e) in enumerate(counts) if e
                ]
                if broken:
                    raise _list_error(path, broken[0])
        else:
            n_entries = cols.n_entries
            if is_list and limit != 0:
                _check_list_end(file, path, cols.list_end, cols.limit_reached)
            # (every n-th entry of a --limit: each rank judged only its own; the errors are gathered)
            errors = share.all_gather(cols.list_error) if world > 1 else [cols.list_error]
            broken = sorted(e for e in errors if e)
            if is_list and broken:
                raise _list_error(path, broken[0])
    finally:
        file.f.close()
    extra = {"id1": found.id1, "id2": found.id2} if found is not None else None
    return _metadata(cols, n_entries, extra, images=found)


def _range_state(path: Path, lo: int, hi: int, share: Share) -> dict[str, Any]:
    """The state of a list where byte range ``[lo, hi)`` starts (depth, inside a string or not),
    from every rank's summary of its own range."""
    depth, inside = 0, False
    summary = _core.metadata_range_summary(str(path), lo, hi, window=_WINDOW)
    for odd, change_outside, change_inside in share.all_gather(summary)[: share.rank]:
        depth += change_inside if inside else change_outside
        inside ^= odd
    return {"depth": depth, "in_string": inside}


def path_column(ids: _core.PathIds) -> pl.Series:
    """Every path of a ``_core.PathIds``, by id, as a string column (the object is empty after)."""
    return pl.Series("path", _strings(ids.take_paths()), dtype=pl.String)


def read_records(
    path: str | PathLike[str],
    record_index: np.ndarray,
    entry_offset: np.ndarray,
    entry_len: np.ndarray,
    *,
    num_threads: int | None = None,
) -> pl.DataFrame:
    """Good records found by an earlier :func:`read_metadata` (their numbers and where their entries
    are, from :attr:`Metadata.entries`), read again: a table of :data:`TABLE_SCHEMA` in the order
    asked. Raises :class:`MetadataError` if one is no longer a good record (the file changed)."""
    path = Path(path)
    cols = _core.read_metadata_entries(
        str(path),
        np.ascontiguousarray(record_index, np.int64),
        np.ascontiguousarray(entry_offset, np.int64),
        np.ascontiguousarray(entry_len, np.int64),
        num_threads=num_threads,
    )
    failures = cols.take_failures()
    if len(failures.record_index):
        raise MetadataError(
            f"metadata '{path}' changed while being read: record {failures.record_index[0]} "
            f"is no longer a good record ({failures.detail[0]})"
        )
    return _table(cols)  # every entry good: in the order asked
