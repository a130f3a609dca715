"""Reading HPDv3 metadata (a JSON list or JSON Lines) into columns, safely.

Each record is one comparison: ``prompt``, ``path1`` (chosen), ``path2``
(rejected), optional ``model1``/``model2``, ``choice_dist`` and
``confidence``. Missing optional fields get the reference's defaults (votes 0,
confidence 0.0, models ""). A bad record is reported with its reason and
skipped; it never stops the run.

How (HPDv3 has ~1.2 M records; one Python object per record costs tens of
seconds and over a GB):

1. The file is read a window (8 MB) at a time and cut into entries without
   parsing them: JSON Lines at newlines; a JSON list after one vectorised scan
   of its structure (quotes, escapes, brackets at depth 1) that finds the
   elements, whose separators are then rewritten into newlines in each window.
2. Each entry is checked to be UTF-8 (in blocks; a failing block is bisected)
   and to start with ``{``.
3. Runs of such entries are parsed by pyarrow's JSON reader with a fixed
   schema. It is strict (a number where a string belongs, ``true`` as a vote,
   a lone surrogate or an invalid escape is an error, never a silent
   conversion), so whatever it accepts has the values ``json.loads`` gives.
   Vectorised checks (required fields, non-empty paths, vote pairs of whole
   numbers below 2**53, finite confidence) then mark the rows it accepted but
   that are not plainly good.
4. Every entry pyarrow rejects (found by the error's row number or by
   bisection) and every marked row goes through the per-entry path,
   ``json.loads`` and :func:`_parse`, the authority on what is good and on the
   reasons. So the reasons are the same whichever path found the problem, and
   the good records the same as the per-entry path alone would give.

Measured at 1.17 M records (benches/bench_metadata.py): 2.3-4.1 s of CPU and
600-670 MB peak RSS for JSON Lines and JSON lists.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

# isort: off
# pyarrow before polars: with that order the peak RSS of reading 1.17 M records is ~590 MB, the other
# way round ~750 MB (measured; the allocators each library sets up depend on which loads first).
import pyarrow as pa
import pyarrow.json as pj
import numpy as np
import polars as pl

# isort: on

from hpd_encode.errors import MetadataError
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
#: Votes the typed path accepts as exact: below 2**53 an integer parsed as float64 is exact, so the
#: typed (float64) and the per-entry (``json.loads``) readings agree; larger ones take the per-entry path.
_EXACT_FLOAT_INT = float(2**53)
_BLOCK = 1 << 24  # bytes scanned/decoded at a time: bounds the temporaries
# Small windows and typed reads keep the allocators' high-water mark low (measured at 1.17 M records:
# 32 MB / 65536 entries peaked at 820 MB, 8 MB / 16384 at 600 MB, for the same CPU time).
_CHUNK = 1 << 14  # entries parsed by one typed read
_WINDOW = 1 << 23  # bytes of the file in memory at once
_SLOW_RUN = 8  # runs this short go straight to the per-entry path (a typed read costs ~0.3 ms)
_ROW_RE = re.compile(r" in row (\d+)\b")

_ARROW_SCHEMA = pa.schema(
    [
        ("prompt", pa.string()),
        ("path1", pa.string()),
        ("path2", pa.string()),
        ("model1", pa.string()),
        ("model2", pa.string()),
        ("choice_dist", pa.list_(pa.float64())),
        ("confidence", pa.float64()),
    ]
)
_PARSE_OPTIONS = pj.ParseOptions(explicit_schema=_ARROW_SCHEMA, unexpected_field_behavior="ignore")
#: For list elements, which may span lines (pretty-printed lists): the windows are not rewritten.
_PARSE_OPTIONS_MULTILINE = pj.ParseOptions(
    explicit_schema=_ARROW_SCHEMA, unexpected_field_behavior="ignore", newlines_in_values=True
)


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

    def records(self) -> Iterator[Record]:
        """The good records as :class:`Record` objects, for small callers (one object each: not for HPDv3 scale)."""
        for row in self.table.iter_rows():
            yield Record(*row)


# ---------------------------------------------------------------------------------------------------------------
# The per-entry path: the authority on what is good and on the reasons.


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
        raise ValueError(f"vote count {_show(v)} is not a number")
    if isinstance(v, float) and not v.is_integer():
        raise ValueError(f"vote count {v!r} is not a whole number")
    if v < 0:
        raise ValueError(f"vote count {_show(v)} is negative")
    if v > _INT64_MAX:
        raise ValueError(f"vote count {_show(v)} does not fit in a signed 64-bit integer")
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
    raise ValueError(f"confidence {_show(conf)} is not a finite number")


def _usable_path(v: object) -> str:
    return v if isinstance(v, str) and v and _surrogate(v) is None else ""


def _parse(raw: object) -> tuple[str, str, str, str, str, int, int, float]:
    """Validate one decoded record; raises ValueError with the reason. Returns the table's values."""
    if not isinstance(raw, dict):
        raise ValueError(f"record is a {type(raw).__name__}, not an object")
    for key in ("prompt", "path1", "path2"):
        v = raw.get(key)
        if not isinstance(v, str) or (key != "prompt" and not v):
            raise ValueError(f"field {key!r} is missing or not a string")
        if (bad := _surrogate(v)) is not None:
            raise ValueError(f"field {key!r} contains a lone surrogate ({bad}), not valid Unicode")
    models = []
    for key in ("model1", "model2"):
        m = raw.get(key)
        if m is not None and not isinstance(m, str):
            raise ValueError(f"field {key!r} is a {type(m).__name__}, not a string or null")
        if m is not None and (bad := _surrogate(m)) is not None:
            raise ValueError(f"field {key!r} contains a lone surrogate ({bad}), not valid Unicode")
        models.append(m or "")
    dist = raw.get("choice_dist")
    if dist is None:
        dist = [0, 0]
    if not isinstance(dist, list) or len(dist) != 2:
        raise ValueError(f"choice_dist {_show(dist)} is not a pair of vote counts")
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
# Cutting the buffer into entries.

# Byte classes for the structure scan (one ``bytes.translate`` and one nonzero pass per block).
_OPEN, _CLOSE, _COMMA, _QUOTE, _BACKSLASH = 1, 2, 3, 4, 5
_CLASSES = bytearray(256)
_CLASSES[ord("[")] = _CLASSES[ord("{")] = _OPEN
_CLASSES[ord("]")] = _CLASSES[ord("}")] = _CLOSE
_CLASSES[ord(",")] = _COMMA
_CLASSES[ord('"')] = _QUOTE
_CLASSES[ord("\\")] = _BACKSLASH
_CLASS_TABLE = bytes(_CLASSES)
_WS_BYTES = b" \t\r\n"
#: What makes a JSON Lines line blank: ASCII whitespace as ``str.strip`` sees it.
_SPACE_BYTES = bytes([9, 10, 11, 12, 13, 28, 29, 30, 31, 32])
_SPACE = np.zeros(256, bool)
_SPACE[list(_SPACE_BYTES)] = True
_JSON_WS = np.zeros(256, bool)
_JSON_WS[list(_WS_BYTES)] = True


def _escaped(blk: np.ndarray, q: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Which of the quotes at ``q`` are escaped by an odd run of backslashes (``b``: the positions of all
    backslashes of ``blk``; callers never cut a block inside a backslash run)."""
    esc = np.zeros(q.size, bool)
    prev_bs = np.zeros(q.size, bool)
    nz = q > 0
    prev_bs[nz] = blk[q[nz] - 1] == 92
    if not prev_bs.any():
        return esc
    brk = np.flatnonzero(np.diff(b) != 1)
    run_start = b[np.r_[0, brk + 1]]
    run_end = b[np.r_[brk, b.size - 1]]
    cand = np.flatnonzero(prev_bs)
    k = np.searchsorted(run_end, q[cand] - 1)
    esc[cand] = ((run_end[k] - run_start[k] + 1) & 1).astype(bool)
    return esc


def _trailing_backslashes(blk: np.ndarray) -> int:
    k, step = 0, 64
    while k < blk.size:
        tail = blk[max(0, blk.size - k - step) : blk.size - k]
        nz = np.flatnonzero(tail != 92)
        if nz.size:
            return k + tail.size - 1 - int(nz[-1])
        k += tail.size
        step *= 2
    return int(blk.size)


class _File:
    """The metadata file, read by byte ranges so that at most a window of it is in memory at once."""

    def __init__(self, path: Path) -> None:
        self.f = open(path, "rb")  # closed by read_metadata
        self.size = os.fstat(self.f.fileno()).st_size

    def read(self, start: int, n: int) -> bytearray:
        """Bytes [start, start + n) (fewer at the end of the file)."""
        data = bytearray(max(0, min(n, self.size - start)))
        self.f.seek(start)
        got = self.f.readinto(data)
        del data[got:]
        return data

    def blocks(self, start: int) -> Iterator[tuple[int, np.ndarray]]:
        """Consecutive blocks from ``start``, never cut inside a run of backslashes."""
        pos = start
        while pos < self.size:
            n = _BLOCK
            while True:
                blk = np.frombuffer(self.read(pos, n), np.uint8)
                cut = blk.size if pos + blk.size >= self.size else blk.size - _trailing_backslashes(blk)
                if cut > 0:
                    break
                n *= 2
            yield pos, blk[:cut]
            pos += cut

    def find(self, start: int, value: int) -> int:
        """Position of the first ``value`` byte at or after ``start``; the file size when there is none."""
        for pos, blk in self.blocks(start):
            hit = np.flatnonzero(blk == value)
            if hit.size:
                return pos + int(hit[0])
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


@dataclass
class _Scan:
    #: Position of the bracket that closes the value opened at ``start``; -1 if never (or not reached).
    end: int
    seps: np.ndarray  # list mode: the opening bracket, the commas at depth 1, the closing bracket


def _scan(file: _File, start: int, *, list_mode: bool, max_elements: int | None = None) -> _Scan:
    """Follow the value opened by the bracket at ``start`` block by block (strings, escapes, depth)
    to its closing bracket. ``list_mode``: also collect the depth-1 separators, stopping once
    ``max_elements`` elements are delimited."""
    depth, in_string, n_seps = 0, False, 0
    seps: list[np.ndarray] = []
    for s, blk in file.blocks(start):
        cls = np.frombuffer(blk.tobytes().translate(_CLASS_TABLE), np.uint8)
        found = np.flatnonzero(cls)
        kind = cls[found]
        del cls
        qi = np.flatnonzero(kind == _QUOTE)
        real_quote = np.zeros(found.size, np.int8)
        real_quote[qi[~_escaped(blk, found[qi], found[kind == _BACKSLASH])]] = 1
        quotes_so_far = np.cumsum(real_quote, dtype=np.int64)  # at a structural byte: the quotes before it
        st = np.flatnonzero(kind <= _COMMA)
        st = st[((quotes_so_far[st] + in_string) & 1) == 0]
        pos, kind = found[st], kind[st]
        code = np.where(kind == _OPEN, 1, np.where(kind == _CLOSE, -1, 2)).astype(np.int64)
        delta = np.where(code == 2, 0, code)
        after = depth + np.cumsum(delta)
        closed = np.flatnonzero(after <= 0)
        stop = int(closed[0]) if closed.size else -1
        if stop >= 0:
            pos, code, after, delta = pos[: stop + 1], code[: stop + 1], after[: stop + 1], delta[: stop + 1]
        if list_mode:
            before = after - delta
            sp = pos[((code == 2) & (before == 1)) | ((delta == 1) & (before == 0)) | (after == 0)]
            if max_elements is not None and n_seps + sp.size > max_elements + 1:
                sp = sp[: max_elements + 1 - n_seps]
                stop = -2
            seps.append(s + sp)
            n_seps += sp.size
        if stop != -1:
            return _Scan(s + int(pos[-1]) if stop >= 0 else -1, _concat(seps))
        depth = int(after[-1]) if after.size else depth
        in_string ^= bool(int(quotes_so_far[-1]) & 1) if quotes_so_far.size else False
    return _Scan(-1, _concat(seps))


def _concat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)


def _is_json(data: bytes | bytearray) -> bool:
    try:
        json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError):
        return False
    return True


def _multi_line_object(file: _File, first: int) -> bool:
    """True when the file holds one object spread over several lines (a pretty-printed object), not
    JSON Lines: its first line is not a complete value, and the object opened there closes on a later
    line and parses."""
    eol = file.find(first, 10)
    if _is_json(file.read(first, eol - first)):
        return False
    end = _scan(file, first, list_mode=False).end
    return end > eol and _is_json(file.read(first, end + 1 - first))


# ---------------------------------------------------------------------------------------------------------------
# The reader.


class _Reader:
    """Turns windows of entries into table pieces (typed path) and failures (per-entry path)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pieces: list[pl.DataFrame] = []
        self.slow_rows: list[tuple[object, ...]] = []
        self.failures: list[Failure] = []
        self.n_entries = 0
        self.offset = 0  # file position of the current window
        self.had_errors = False  # a typed read of the last run failed
        self.tables: list[tuple[int, pa.Table]] = []  # typed reads of the current chunk

    def window(
        self,
        data: bytearray,
        buf: np.ndarray,
        starts: np.ndarray,
        ends: np.ndarray,
        linenos: np.ndarray | None,
    ) -> None:
        """Entries at [starts, ends) of ``buf``, each ending in a newline; ``linenos``: their line numbers
        in a JSON Lines file (one entry per line), None for a list (an entry may span lines)."""
        self.buf, self.view, self.starts, self.ends, self.linenos = (
            buf,
            memoryview(data),
            starts,
            ends,
            linenos,
        )
        self.base = self.n_entries
        n = starts.size
        candidate = _object_start(data, buf, starts, ends) & ~_utf8_suspect(self.view, starts, ends)
        bounds = np.r_[0, np.flatnonzero(np.diff(candidate)) + 1, n].tolist() if n else [0]
        for a, b in zip(bounds[:-1], bounds[1:]):
            if not candidate[a]:
                self.slow_range(a, b)
                continue
            for c in range(a, b, _CHUNK):
                # Threads split a run into blocks that may begin at any value of a list element (see
                # _object_start), so only JSON Lines (blocks begin at a line) use them; and not after a
                # run with errors, as a threaded read that fails names no row and is read again.
                threaded = linenos is not None and not self.had_errors
                self.had_errors = False
                self.run(c, min(c + _CHUNK, b), threaded=threaded)
                self.finish_chunk()
        self.flush_slow()
        self.n_entries += n
        del self.buf, self.view

    def table(self) -> pl.DataFrame:
        self.failures.sort(key=lambda f: f.record_index)
        if not self.pieces:
            return pl.DataFrame(schema=TABLE_SCHEMA)
        pieces, self.pieces = self.pieces, []
        return pl.concat(pieces, rechunk=False)

    def slow_range(self, a: int, b: int) -> None:
        """The per-entry path for entries [a, b): good rows wait in ``slow_rows``, bad ones become failures."""
        mv = self.view
        starts, ends = self.starts[a:b].tolist(), self.ends[a:b].tolist()
        linenos = [None] * (b - a) if self.linenos is None else self.linenos[a:b].tolist()
        base = self.base + a
        for k in range(b - a):
            try:
                out = _slow_entry(base + k, mv[starts[k] : ends[k]], linenos[k], self.offset + starts[k])
            except _ListSyntaxError as e:
                raise MetadataError(
                    f"cannot parse metadata '{self.path}' as JSON: record {base + k}: {e}"
                ) from None
            if isinstance(out, Failure):
                self.failures.append(out)
            else:
                self.slow_rows.append(out)

    def flush_slow(self) -> None:
        if self.slow_rows:
            self.pieces.append(pl.DataFrame(self.slow_rows, schema=TABLE_SCHEMA, orient="row"))
            self.slow_rows = []

    def typed(self, a: int, b: int, threaded: bool) -> tuple[pa.Table | None, int | None]:
        """Typed read of entries [a, b) (contiguous in the buffer, one per line).

        Returns the table, or None and, for a single-block read (``threaded`` False), the row of the first
        error when pyarrow names it.
        """
        s, e = int(self.starts[a]), int(self.ends[b - 1])
        longest = int((self.ends[a:b] - self.starts[a:b]).max())
        block = max(longest + 1, 1 << 20) if threaded else max(e - s + 1, 1 << 16)
        try:
            t = pj.read_json(
                pa.BufferReader(pa.py_buffer(self.buf[s:e])),
                read_options=pj.ReadOptions(use_threads=threaded, block_size=block),
                parse_options=_PARSE_OPTIONS if self.linenos is not None else _PARSE_OPTIONS_MULTILINE,
                # The system allocator gives freed blocks back; the default pool keeps them (+50 MB peak).
                memory_pool=pa.system_memory_pool(),
            )
        except (pa.ArrowException, ValueError) as err:
            m = None if threaded else _ROW_RE.search(str(err))
            return None, int(m.group(1)) if m else None
        if t.num_rows != b - a:  # e.g. two values on one line
            return None, None
        return t, None

    def run(self, a: int, b: int, threaded: bool = True) -> None:
        """Entries [a, b): contiguous candidates for the typed path.

        A failed read is retried as one block, whose error names the first bad row: the rows before it
        are read again, the bad one goes to the per-entry path. Where rows fail densely (junk), the
        per-entry path takes a stretch of entries that doubles after each early failure, so junk costs
        O(log n) typed reads; where the error names no row, the run is bisected.
        """
        stretch = _SLOW_RUN
        while b - a > 0:
            if b - a <= _SLOW_RUN:
                self.slow_range(a, b)
                return
            t, bad = self.typed(a, b, threaded)
            self.had_errors |= t is None
            if t is None and threaded:
                t, bad = self.typed(a, b, False)
            threaded = False
            if t is not None:
                self.accept(a, t)
                return
            if bad is None or bad >= b - a:
                mid = (a + b) // 2
                self.run(a, mid, False)
                a = mid
            elif bad >= stretch:
                self.run(a, a + bad, False)
                self.slow_range(a + bad, a + bad + 1)
                a += bad + 1
                stretch = _SLOW_RUN
            else:
                n = min(max(bad + 1, stretch), b - a)
                self.slow_range(a, a + n)
                a += n
                stretch *= 2

    def accept(self, a: int, t: pa.Table) -> None:
        """Keep a typed read of entries from ``a`` on; it is checked with the others of its chunk."""
        self.tables.append((a, t))

    def finish_chunk(self) -> None:
        """The chunk's typed reads as one table piece: the rows that are plainly good, merged with the
        rows the per-entry path found good (the rest went to it from here)."""
        tables, self.tables = self.tables, []
        if not tables:
            return
        # (record_index from int_range, not from a NumPy array: measured, the latter raised the peak RSS
        # at 1.17 M records from 600 to 750 MB.)
        frames = []
        for a, t in tables:
            frame = pl.from_arrow(t)
            assert isinstance(frame, pl.DataFrame)
            first = self.base + a
            frames.append(
                frame.with_columns(
                    pl.int_range(first, first + t.num_rows, dtype=pl.Int64).alias("record_index")
                )
            )
        df = frames[0] if len(frames) == 1 else pl.concat(frames)
        cd = pl.col("choice_dist")
        v0 = cd.list.get(0, null_on_oob=True)
        v1 = cd.list.get(1, null_on_oob=True)

        def vote_ok(v: pl.Expr) -> pl.Expr:
            return v.is_null() | ((v >= 0) & (v < _EXACT_FLOAT_INT) & (v.floor() == v))

        ok = (
            pl.col("prompt").is_not_null()
            & (pl.col("path1").str.len_bytes() > 0).fill_null(False)
            & (pl.col("path2").str.len_bytes() > 0).fill_null(False)
            & (cd.is_null() | ((cd.list.len() == 2) & vote_ok(v0) & vote_ok(v1)).fill_null(False))
            & (pl.col("confidence").is_null() | pl.col("confidence").is_finite())
        )
        df = df.with_columns(ok.alias("_ok"))
        for i in df.filter(~pl.col("_ok"))["record_index"].to_list():
            self.slow_range(i - self.base, i - self.base + 1)
        good = df.filter(pl.col("_ok")).select(
            "record_index",
            "prompt",
            "path1",
            "path2",
            pl.col("model1").fill_null(""),
            pl.col("model2").fill_null(""),
            v0.fill_null(0).cast(pl.Int64).alias("votes_chosen"),
            v1.fill_null(0).cast(pl.Int64).alias("votes_rejected"),
            pl.col("confidence").fill_null(0.0),
        )
        if self.slow_rows:
            extra = pl.DataFrame(self.slow_rows, schema=TABLE_SCHEMA, orient="row")
            self.slow_rows = []
            good = pl.concat([good, extra]).sort("record_index")
        self.pieces.append(good)


def _object_start(data: bytearray, buf: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Which entries begin (after whitespace) with ``{``. Only those go to the typed reader: besides
    sending it no value it would reject anyway, this keeps it safe, as pyarrow 26's JSON reader
    crashes (SIGSEGV) on a block whose first value is ``null``."""
    idx = starts.copy()
    if idx.size == 0:
        return np.zeros(0, bool)
    for _ in range(8):
        ws = _JSON_WS[buf[np.minimum(idx, buf.size - 1)]] & (idx < ends)
        if not ws.any():
            break
        idx[ws] += 1
    ok = buf[np.minimum(idx, buf.size - 1)] == ord("{")
    ok &= idx < ends
    for k in np.flatnonzero(_JSON_WS[buf[np.minimum(idx, buf.size - 1)]] & (idx < ends)):
        ok[k] = data[idx[k] : ends[k]].lstrip(_WS_BYTES)[:1] == b"{"
    return ok


def _utf8_suspect(view: memoryview, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Entries that may not be valid UTF-8 (the per-entry path decides). Decodes blocks of entries and
    bisects a block that fails down to groups of 8 (a failed decode copies its input into the exception,
    so resuming after each error would be quadratic): n log n in the size whatever the number of bad
    entries."""
    bad = np.zeros(starts.size, bool)

    def valid(i: int, j: int) -> bool:
        try:
            str(view[int(starts[i]) : int(ends[j - 1])], "utf-8")
        except UnicodeDecodeError:
            return False
        return True

    def check(i: int, j: int) -> None:
        if valid(i, j):
            return
        if j - i <= 8:
            bad[i:j] = True
            return
        mid = (i + j) // 2
        check(i, mid)
        check(mid, j)

    i = 0
    while i < starts.size:
        j = max(i + 1, int(np.searchsorted(ends, starts[i] + _BLOCK, side="right")))
        check(i, j)
        i = j
    return bad


def read_metadata(path: str | PathLike[str], limit: int | None = None) -> Metadata:
    """Read a JSON list or JSON Lines metadata file (a UTF-8 BOM is allowed) into :class:`Metadata`.

    ``limit`` keeps only the first ``limit`` entries of the file (good or bad; blank lines do not
    count). A bad record is a :class:`~hpd_encode.failures.Failure` (stage ``metadata``, kind
    ``bad_record``); raises :class:`MetadataError` only when the file as a whole is not a list of
    records or JSON Lines. The file is read a window at a time: memory is the table plus ~100 MB.
    """
    path = Path(path)
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, not {limit}")
    if not path.is_file():
        raise FileNotFoundError(f"metadata file '{path}' does not exist")
    file = _File(path)
    reader = _Reader(path)
    try:
        start = 3 if file.read(0, 3) == b"\xef\xbb\xbf" else 0
        first = file.first_non_space(start)
        opening = file.read(first, 1)
        if opening == b"[":
            _read_list(file, reader, first, limit)
        else:
            if opening == b"{" and _multi_line_object(file, first):
                raise MetadataError(
                    f"metadata '{path}' must be a JSON list of records or JSON Lines, not an object"
                )
            _read_lines(file, reader, start, limit)
    finally:
        file.f.close()
    return Metadata(table=reader.table(), failures=reader.failures, n_entries=reader.n_entries)


def _read_list(file: _File, reader: _Reader, first: int, limit: int | None) -> None:
    """A JSON list: find its elements (one scan of the structure), then hand them to ``reader`` a window
    at a time, the separators (commas, brackets) rewritten into newlines."""
    if limit == 0:
        return
    path = reader.path
    sc = _scan(file, first, list_mode=True, max_elements=limit)
    if sc.end == -1 and (limit is None or sc.seps.size <= limit):
        raise MetadataError(f"cannot parse metadata '{path}' as JSON: the list is not closed")
    if sc.end >= 0:
        after = file.first_non_space(sc.end + 1)
        if after < file.size:
            raise MetadataError(
                f"cannot parse metadata '{path}' as JSON: extra data after the list at byte {after}"
            )
    starts, ends = sc.seps[:-1] + 1, sc.seps[1:] + 1
    if starts.size == 1 and not file.read(int(starts[0]), int(ends[0] - 1 - starts[0])).strip(_WS_BYTES):
        return  # []
    a = 0
    while a < starts.size:
        b = max(a + 1, int(np.searchsorted(ends, starts[a] + _WINDOW, side="right")))
        base = int(starts[a])
        data = file.read(base, int(ends[b - 1]) - base)
        buf = np.frombuffer(data, np.uint8)
        buf[ends[a:b] - 1 - base] = 10  # separators become newlines: the elements are JSON values in sequence
        reader.offset = base
        reader.window(data, buf, starts[a:b] - base, ends[a:b] - base, None)
        a = b


def _read_lines(file: _File, reader: _Reader, start: int, limit: int | None) -> None:
    """JSON Lines, a window of whole lines at a time. Blank lines do not count as entries."""
    pos, lineno = start, 1
    n = _WINDOW
    while pos < file.size and (limit is None or reader.n_entries < limit):
        data = file.read(pos, n)
        if pos + len(data) < file.size:
            cut = data.rfind(b"\n") + 1
            if cut == 0:  # a line longer than the window
                n *= 2
                continue
            del data[cut:]
        buf = np.frombuffer(data, np.uint8)
        nl = np.flatnonzero(buf == 10)
        starts = np.r_[np.int64(0), nl + 1]
        ends = np.r_[nl + 1, np.int64(buf.size)]
        if starts[-1] >= buf.size:
            starts, ends = starts[:-1], ends[:-1]
        linenos = np.arange(lineno, lineno + starts.size, dtype=np.int64)
        lineno += starts.size
        keep = np.ones(starts.size, bool)
        for k in np.flatnonzero(_SPACE[buf[np.minimum(starts, buf.size - 1)]]) if starts.size else ():
            keep[k] = bool(data[starts[k] : ends[k]].strip(_SPACE_BYTES))
        starts, ends, linenos = starts[keep], ends[keep], linenos[keep]
        if limit is not None:
            starts, ends, linenos = (
                starts[: limit - reader.n_entries],
                ends[: limit - reader.n_entries],
                linenos[: limit - reader.n_entries],
            )
        reader.offset = pos
        reader.window(data, buf, starts, ends, linenos)
        pos += len(data)
        n = _WINDOW
