"""Reading HPDv3 metadata (a JSON list or JSON Lines) into columns, safely.

Each record is one comparison: ``prompt``, ``path1`` (chosen), ``path2``
(rejected), optional ``model1``/``model2``, ``choice_dist`` and
``confidence``. Missing optional fields get the reference's defaults (votes 0,
confidence 0.0, models ""). A bad record is reported with its reason and
skipped; it never stops the run.

How (HPDv3 has ~1.2 M records; one Python object per record costs tens of
seconds and over a GB): in Rust (``_core.read_metadata_columns``), the file is
read a window (8 MB) at a time and cut into entries without parsing them
(JSON Lines at newlines; a JSON list by one pass over its structure: quotes,
escapes, brackets at depth 1). The entries of a window are parsed in parallel
with serde_json, which is strict (a number where a string belongs, ``true`` as
a vote, a lone surrogate, an invalid escape, a duplicate key, ``NaN`` are
errors, never silent conversions) and reads floats exactly as Python does; only
plainly good records are kept there (required fields, non-empty paths, vote
pairs of whole numbers below 2**53, finite confidence), as columns.

Every other entry goes through the per-entry path here, ``json.loads`` and
:func:`_parse`, the authority on what is good and on the reasons. So the
reasons are the same whichever path saw the entry first, and the good records
the same as the per-entry path alone would give.

Measured at 1.17 M records (the 495 MB JSON list of benches/bench_plan.py, page
cache warm, 2 cores): 2.3-2.9 s of CPU, 1.3-1.9 s wall, about 420 MB of RSS for
the table (its strings are handed to polars as Arrow string views, not copied).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
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

from hpd_encode import _core
from hpd_encode.errors import InputNotFoundError, MetadataError, OptionError
from hpd_encode.failures import Failure

#: Columns of :attr:`Metadata.table`, in order.
TABLE_SCHEMA: dict[str, pl.DataType] = {
    "record_index": pl.Int64(),
    "prompt": pl.String(),
    "path1": pl.String(),
    "path2": pl.String(),
    "model1": pl.String(),
    "model2": pl.String(),
    "votes_chosen": pl.Int64(),
    "votes_rejected": pl.Int64(),
    "confidence": pl.Float64(),
}

#: Longest ``detail`` kept per failure: junk input must cost memory in proportion to its size.
MAX_DETAIL = 200

_INT64_MAX = 2**63 - 1


@dataclass(frozen=True)
class Record:
    index: int  # position in the metadata file
    prompt: str
    path1: str  # chosen
    path2: str  # rejected
    model1: str
    model2: str
    votes_chosen: int
    votes_rejected: int
    confidence: float


@dataclass(frozen=True)
class Metadata:
    """The good records as columns (:data:`TABLE_SCHEMA`, file order) and one failure per bad one."""

    table: pl.DataFrame
    failures: list[Failure]
    n_entries: int  # entries considered (good + bad), after ``limit``
    #: Where each good record is in the file: ``entry_offset`` and ``entry_len`` (int64), one row per
    #: row of :attr:`table`, so that :func:`read_records` can read a few of them again.
    entries: pl.DataFrame | None = None

    def records(self) -> Iterator[Record]:
        """The good records as :class:`Record` objects, for small callers (one object each: not for HPDv3 scale)."""
        for row in self.table.iter_rows():
            yield Record(*row)


# ---------------------------------------------------------------------------------------------------------------
# The per-entry path: the authority on what is good and on the reasons.


#: Bytes of the file the Rust reader holds at a time (plus the unfinished entry): Rust's
#: ``DEFAULT_WINDOW`` (tests set smaller windows here to cross window edges).
_WINDOW = _core.METADATA_WINDOW


class _BadRecord(ValueError):
    """A record that is not good (internal: it becomes the record's failure, never escapes)."""


def _cap(text: str) -> str:
    return text if len(text) <= MAX_DETAIL else text[: MAX_DETAIL - 1] + "…"


def _show(v: object) -> str:
    """A short ``repr`` for reasons (a 400-digit vote or a huge list must not make a huge reason)."""
    if isinstance(v, int) and not isinstance(v, bool) and v.bit_length() > 128:
        return f"{str(v)[:20]}… ({len(str(v))} digits)"
    if isinstance(v, (list, dict, str)) and len(v) > 40:
        r = repr(v)
        return r[:60] + "…"
    return repr(v)


def _surrogate(s: str) -> str | None:
    """The first lone surrogate in ``s`` as an escape (``\\ud800``), or None when ``s`` is valid Unicode."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as e:
        return f"\\u{ord(s[e.start]):04x}"
    return None


def _as_votes(v: object) -> int:
    if v is None:
        return 0
    if (
        isinstance(v, bool)
        or not isinstance(v, (int, float))
        or (isinstance(v, float) and not math.isfinite(v))
    ):
        raise _BadRecord(f"vote count {_show(v)} is not a number")
    if isinstance(v, float) and not v.is_integer():
        raise _BadRecord(f"vote count {v!r} is not a whole number")
    if v < 0:
        raise _BadRecord(f"vote count {_show(v)} is negative")
    if v > _INT64_MAX:
        raise _BadRecord(f"vote count {_show(v)} does not fit in a signed 64-bit integer")
    return int(v)


def _as_confidence(conf: object) -> float:
    if conf is None:
        return 0.0
    if not isinstance(conf, bool) and isinstance(conf, (int, float)):
        try:
            value = float(conf)
        except OverflowError:  # an integer beyond float range
            value = math.inf
        if math.isfinite(value):
            return value
    # NaN/inf would make detailed_results unreadable by ast.literal_eval.
    raise _BadRecord(f"confidence {_show(conf)} is not a finite number")


def _usable_path(v: object) -> str:
    return v if isinstance(v, str) and v and _surrogate(v) is None else ""


def _parse(raw: object) -> tuple[str, str, str, str, str, int, int, float]:
    """Validate one decoded record; raises ValueError with the reason. Returns the table's values."""
    if not isinstance(raw, dict):
        raise _BadRecord(f"record is a {type(raw).__name__}, not an object")
    for key in ("prompt", "path1", "path2"):
        v = raw.get(key)
        if not isinstance(v, str) or (key != "prompt" and not v):
            raise _BadRecord(f"field {key!r} is missing or not a string")
        if (bad := _surrogate(v)) is not None:
            raise _BadRecord(f"field {key!r} contains a lone surrogate ({bad}), not valid Unicode")
    models = []
    for key in ("model1", "model2"):
        m = raw.get(key)
        if m is not None and not isinstance(m, str):
            raise _BadRecord(f"field {key!r} is a {type(m).__name__}, not a string or null")
        if m is not None and (bad := _surrogate(m)) is not None:
            raise _BadRecord(f"field {key!r} contains a lone surrogate ({bad}), not valid Unicode")
        models.append(m or "")
    dist = raw.get("choice_dist")
    if dist is None:
        dist = [0, 0]
    if not isinstance(dist, list) or len(dist) != 2:
        raise _BadRecord(f"choice_dist {_show(dist)} is not a pair of vote counts")
    votes = (_as_votes(dist[0]), _as_votes(dist[1]))
    conf = _as_confidence(raw.get("confidence"))
    return raw["prompt"], raw["path1"], raw["path2"], models[0], models[1], votes[0], votes[1], conf


class _ListSyntaxError(Exception):
    pass


def _slow_entry(
    index: int, data: memoryview | bytes, lineno: int | None, offset: int = 0
) -> tuple[object, ...] | Failure:
    """Parse one entry (``lineno``: its line in a JSON Lines file; None for a list element, which
    starts at byte ``offset`` of the file).

    Returns the table row for a good record or its :class:`Failure`; raises
    :class:`_ListSyntaxError` for a list element that is not JSON (the list is broken, not the record).
    """

    def fail(detail: str, p1: str = "", p2: str = "") -> Failure:
        return Failure(index, "metadata", "bad_record", _cap(detail), p1, p2)

    try:
        text = str(data, "utf-8")
    except UnicodeDecodeError as e:
        if lineno is None:
            return fail(f"record is not valid UTF-8: {e.reason} at byte {offset + e.start} of the file")
        return fail(f"line {lineno} is not valid UTF-8: {e.reason} at byte {e.start} of the line")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        if lineno is None:
            raise _ListSyntaxError(e.msg) from None
        return fail(f"line {lineno} is not valid JSON: {e.msg}")
    except RecursionError:
        return fail(
            f"{'record' if lineno is None else f'line {lineno}'} is not valid JSON: nested too deeply"
        )
    except ValueError as e:  # an integer literal over Python's digit limit
        return fail(f"{'record' if lineno is None else f'line {lineno}'} is not valid JSON: {e}")
    try:
        return (index, *_parse(obj))
    except ValueError as e:
        if isinstance(obj, dict):
            return fail(str(e), _usable_path(obj.get("path1")), _usable_path(obj.get("path2")))
        return fail(str(e))


# ---------------------------------------------------------------------------------------------------------------
# The file, and what kind of file it is.

#: What ``str.strip`` removes from bytes: a JSON Lines line of only these is blank.
_SPACE_BYTES = bytes([9, 10, 11, 12, 13, 28, 29, 30, 31, 32])


class _File:
    """The metadata file, read by byte ranges (the few reads the Python side makes)."""

    def __init__(self, path: Path) -> None:
        self.f = open(path, "rb")  # closed by read_metadata
        self.size = os.fstat(self.f.fileno()).st_size

    @classmethod
    def open(cls, path: Path) -> _File:
        """The metadata file; ``FileNotFoundError`` naming it when it is not a file."""
        if not path.is_file():
            raise InputNotFoundError(f"metadata file '{path}' does not exist")
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


def _is_json(data: bytes | bytearray) -> bool:
    try:
        json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError):
        return False
    return True


def _multi_line_object(file: _File, path: Path, first: int) -> bool:
    """True when the file holds one object spread over several lines (a pretty-printed object), not
    JSON Lines: its first line is not a complete value, and the object opened there closes on a later
    line and parses."""
    eol = file.find(first, b"\n")
    if _is_json(file.read(first, eol - first)):
        return False
    end = _core.metadata_value_end(str(path), first, window=_WINDOW)
    return end is not None and end > eol and _is_json(file.read(first, end + 1 - first))


# ---------------------------------------------------------------------------------------------------------------
# The reader.


def _strings(cols: dict[str, Any], name: str) -> pa.Array:
    """A column of the fast path's strings as Arrow, in the string-view layout polars uses itself
    (so it takes the buffers without a copy) or, past 4 GiB of text, as large strings."""
    data = pa.py_buffer(cols.pop(f"{name}_data"))
    if f"{name}_views" in cols:
        views = cols.pop(f"{name}_views")
        return pa.Array.from_buffers(pa.string_view(), len(views) // 16, [None, pa.py_buffer(views), data])
    offsets = cols.pop(f"{name}_offsets")
    return pa.LargeStringArray.from_buffers(len(offsets) - 1, pa.py_buffer(offsets), data)


def _fast_table(cols: dict[str, Any]) -> pl.DataFrame:
    """The fast path's columns as a table of :data:`TABLE_SCHEMA`, one column at a time (so that only
    one column is ever held twice)."""
    series = [pl.Series("record_index", cols.pop("record_index"))]
    for name in ("prompt", "path1", "path2", "model1", "model2"):
        series.append(pl.Series(name, _strings(cols, name)))
    for name in ("votes_chosen", "votes_rejected", "confidence"):
        series.append(pl.Series(name, cols.pop(name)))
    return pl.DataFrame(series).cast(TABLE_SCHEMA)  # type: ignore[arg-type]


def read_metadata(
    path: str | PathLike[str],
    limit: int | None = None,
    *,
    num_threads: int | None = None,
    part: tuple[int, int] | None = None,
) -> Metadata:
    """Read a JSON list or JSON Lines metadata file (a UTF-8 BOM is allowed) into :class:`Metadata`.

    ``limit`` keeps only the first ``limit`` entries of the file (good or bad; blank lines do not
    count). A bad record is a :class:`~hpd_encode.failures.Failure` (stage ``metadata``, kind
    ``bad_record``); raises :class:`MetadataError` only when the file as a whole is not a list of
    records or JSON Lines. The file is read a window at a time (in Rust, the entries of a window
    parsed on ``num_threads`` threads): memory is the table plus a few windows.

    ``part=(k, n)``: only the entries numbered ``k`` modulo ``n`` are parsed and reported (one
    rank's share); ``n_entries`` still counts them all.
    """
    meta, _ = read_metadata_via(
        path,
        limit,
        lambda p, mode, start: _core.read_metadata_columns(
            p, mode, start, limit=limit, window=_WINDOW, num_threads=num_threads, part=part
        ),
    )
    return meta


def read_metadata_and_probe(
    path: str | PathLike[str],
    root: str | PathLike[str],
    limit: int | None = None,
    *,
    skip: np.ndarray | None = None,
    num_threads: int | None = None,
    max_pixels: int = _core.DEFAULT_MAX_PIXELS,
    counter: _core.Counter | None = None,
    text: bool = True,
) -> tuple[Metadata, dict[str, Any]]:
    """:func:`read_metadata`, and meanwhile the distinct image paths of the good records numbered
    and probed beneath ``root`` (``_core.survey_metadata``): the table has image ids ``id1``,
    ``id2`` (null where the per-entry path read the record, -1 for the records in ``skip``,
    sorted record numbers), and the dict ``ids`` (a ``_core.PathIds``), ``probe_heights``,
    ``probe_widths``, ``probe_kinds`` and ``probe_errors`` (by id). Without ``text`` the
    prompts and models are checked but left empty (in the records the Rust fast path read: for
    a caller that drops them and reads them again, by byte offset, for the rows it needs)."""
    return read_metadata_via(
        path,
        limit,
        lambda p, mode, start: _core.survey_metadata(
            p,
            mode,
            start,
            str(root),
            limit=limit,
            window=_WINDOW,
            num_threads=num_threads,
            max_pixels=max_pixels,
            skip=skip,
            counter=counter,
            text=text,
        ),
        fast_columns=("id1", "id2"),
    )


def path_column(ids: Any) -> pl.Series:
    """Every path of a ``_core.PathIds``, by id, as a string column (the object is empty after)."""
    return pl.Series("path", _strings(ids.take_paths(), "path"), dtype=pl.String)


#: ``read_columns(path, mode, start) -> dict`` for :func:`read_metadata_via`.
ReadColumns = Callable[[str, str, int], dict[str, Any]]


def read_metadata_via(
    path: str | PathLike[str],
    limit: int | None,
    read_columns: ReadColumns,
    fast_columns: tuple[str, ...] = (),
) -> tuple[Metadata, dict[str, Any]]:
    """:func:`read_metadata` with ``read_columns`` in place of ``_core.read_metadata_columns`` (which
    it must call in effect: ``_core.survey_metadata`` does, and probes too). ``fast_columns``: more
    columns it gives, one value per plainly good record, to add to the table (null in the rows
    the per-entry path read). Returns the metadata and what else ``read_columns`` gave."""
    path = Path(path)
    if limit is not None and limit < 0:
        raise OptionError(f"limit must be >= 0, not {limit}")
    file = _File.open(path)
    try:
        start, first, is_list = _layout(file, path)
        cols = read_columns(str(path), "list" if is_list else "lines", first if is_list else start)
        if is_list and limit != 0:
            _check_list_end(file, path, cols["list_end"], cols["limit_reached"])
        rows, failures = _slow_entries(file, path, cols, is_list)
    finally:
        file.f.close()
    n_entries = int(cols["n_entries"])
    extra = {name: cols.pop(name) for name in fast_columns}
    table, entries = _table_and_entries(cols, rows, extra)
    return Metadata(table=table, failures=failures, n_entries=n_entries, entries=entries), cols


def read_metadata_shared(
    path: str | PathLike[str],
    rank: int,
    world_size: int,
    all_gather: Callable[[Any], list[Any]],
    *,
    num_threads: int | None = None,
    text: bool = True,
) -> Metadata:
    """One rank's share of the metadata, every rank of ``world_size`` calling this with its
    ``rank`` (``all_gather(obj)``: every rank's ``obj``, in rank order): the entries in its byte
    range of the file, so that no rank reads or scans the whole of it. The records, numbers,
    failures (with their line numbers) and errors are those :func:`read_metadata` gives for the
    same entries; ``n_entries`` counts every rank's.

    A JSON Lines range starts after a newline. A list's range starts anywhere but right after a
    backslash, in a state (depth, inside a string or not) that the ranks work out together from
    a summary of each range (``_core.metadata_range_summary``); a rank takes the elements whose
    separator (the opening bracket or a comma) is in its range. Without ``text`` the prompts and
    models of the records the Rust fast path read are left empty (for a caller that reads them
    again, by byte offset, for the rows it needs)."""
    path = Path(path)
    if not 0 <= rank < world_size:
        raise OptionError(f"rank {rank} of {world_size}")
    file = _File.open(path)
    try:
        start, first, is_list = _layout(file, path)
        lo, hi = (_cut(file, first if is_list else start, k, world_size, is_list) for k in (rank, rank + 1))
        state: dict[str, Any] = {}
        if is_list:
            depth, inside = 0, False
            summary = _core.metadata_range_summary(str(path), lo, hi, window=_WINDOW)
            for odd, change_outside, change_inside in all_gather(summary)[:rank]:
                depth += change_inside if inside else change_outside
                inside ^= odd
            state = {"depth": depth, "in_string": inside}
        mode = "list" if is_list else "lines"
        cols = _core.read_metadata_columns(
            str(path), mode, lo, window=_WINDOW, num_threads=num_threads, until=hi, text=text, **state
        )
        counts = all_gather((int(cols["n_entries"]), int(cols["n_lines"]), int(cols["list_end"])))
        entries_before = sum(c[0] for c in counts[:rank])
        cols["record_index"] += entries_before
        cols["slow_index"] += entries_before
        cols["slow_line"] += sum(c[1] for c in counts[:rank]) if not is_list else 0
        if is_list:
            ends = [c[2] for c in counts if c[2] >= 0]  # the range with the closing bracket
            _check_list_end(file, path, ends[0] if ends else -1, False)
        rows, failures = _slow_entries(file, path, cols, is_list)
    finally:
        file.f.close()
    table, entries = _table_and_entries(cols, rows)
    return Metadata(table=table, failures=failures, n_entries=sum(c[0] for c in counts), entries=entries)


def _layout(file: _File, path: Path) -> tuple[int, int, bool]:
    """Where the metadata starts (after a byte-order mark), its first non-space byte, and whether
    it is a list (else JSON Lines; one object over several lines is refused)."""
    start = 3 if file.read(0, 3) == b"\xef\xbb\xbf" else 0
    first = file.first_non_space(start)
    opening = file.read(first, 1)
    is_list = opening == b"["
    if not is_list and opening == b"{" and _multi_line_object(file, path, first):
        raise MetadataError(f"metadata '{path}' must be a JSON list of records or JSON Lines, not an object")
    return start, first, is_list


def _check_list_end(file: _File, path: Path, end: int, limit_reached: bool) -> None:
    """Refuse a list that is not closed (its end not reached for a ``limit``) or has more after it."""
    if end == -1 and not limit_reached:
        raise MetadataError(f"cannot parse metadata '{path}' as JSON: the list is not closed")
    if end >= 0 and (after := file.first_non_space(end + 1)) < file.size:
        raise MetadataError(
            f"cannot parse metadata '{path}' as JSON: extra data after the list at byte {after}"
        )


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


_ENTRY_SCHEMA = {"entry_offset": pl.Int64(), "entry_len": pl.Int64()}
#: Columns of :attr:`Metadata.entries`: where each good record's entry is in the file.
ENTRY_COLUMNS = tuple(_ENTRY_SCHEMA)


def _table_and_entries(
    cols: dict[str, Any], rows: list[tuple[object, ...]], extra: dict[str, np.ndarray] | None = None
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The fast path's records (with the ``extra`` columns, null for the others) and the per-entry
    path's good ``rows`` (each ending with its entry's offset and length) as one table in record
    order, and where each record's entry is."""
    where = pl.DataFrame({"entry_offset": cols.pop("entry_offset"), "entry_len": cols.pop("entry_len")})
    table = pl.concat([_fast_table(cols), where], how="horizontal")
    if extra:
        table = table.with_columns(pl.Series(name, values) for name, values in extra.items())
    if rows:
        slow = pl.DataFrame(rows, schema={**TABLE_SCHEMA, **_ENTRY_SCHEMA}, orient="row")
        table = pl.concat([table, slow], how="diagonal_relaxed").sort("record_index")
    return table.drop(*_ENTRY_SCHEMA), table.select(*_ENTRY_SCHEMA)


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
    file = _File(path)
    try:
        rows, failures = _slow_entries(file, path, cols, True)
    except MetadataError as e:
        raise MetadataError(f"metadata '{path}' changed while being read: {e}") from None
    finally:
        file.f.close()
    if failures:
        raise MetadataError(
            f"metadata '{path}' changed while being read: record {failures[0].record_index} "
            f"is no longer a good record ({failures[0].detail})"
        )
    table, _ = _table_and_entries(cols, rows)
    order = pl.DataFrame({"record_index": np.asarray(record_index, np.int64)})
    return order.join(table, on="record_index", how="left", maintain_order="left")


def _slow_entries(
    file: _File, path: Path, cols: dict[str, Any], is_list: bool
) -> tuple[list[tuple[object, ...]], list[Failure]]:
    """The per-entry path over the entries the fast path did not take: their good rows (each with its
    entry's offset and length at the end) and failures."""
    rows: list[tuple[object, ...]] = []
    failures: list[Failure] = []
    fields = (cols.pop(f"slow_{k}").tolist() for k in ("index", "offset", "len", "line"))
    for index, offset, length, line in zip(*fields):
        data = bytes(file.read(offset, length))
        try:
            out = _slow_entry(index, data, None if is_list else line, offset)
        except _ListSyntaxError as e:
            raise MetadataError(f"cannot parse metadata '{path}' as JSON: record {index}: {e}") from None
        if isinstance(out, Failure):
            failures.append(out)
        else:
            rows.append((*out, offset, length))
    return rows, failures
