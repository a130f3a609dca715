"""The bucket index: where each training pair lives, grouped by bucket.

This is the reference pipeline's third step (``REFERENCE.md`` §5) rebuilt on
Polars. From a set of part files it writes a CSV with the columns
``global_id, parquet_path, row_group, row_index, width, height, bucket_id``
that trainers use to read pairs bucket by bucket.

How it differs from the reference, and why it is fast and small:

* Only the small columns are scanned (``prompt``, ``model1``, ``model2``,
  ``latent1_shape``, and ``detailed_results`` or the typed extras), with
  ``pl.scan_parquet`` in slices of 100 000 rows, a few slices at a time; the
  latent columns are never read. Text is kept as ``Categorical`` after the
  filter.
* ``row_group`` / ``row_index`` come from the Parquet footers (rows per row
  group, parsed in Rust), not from reading row groups one by one.
* Files written by the reference carry only the ``detailed_results`` string (a
  Python-literal dict). It is parsed inside Polars with one anchored regular
  expression over the string's head, not with ``ast.literal_eval`` per row;
  strings not spelled exactly as the reference writes them (another key
  order, double quotes, other spacing, float votes...) go through a tolerant
  second pass. Only the keys
  the run needs are parsed: the votes always, the others when the filter uses
  their fields. A string that cannot be parsed (null, not a ``{...}`` literal,
  no votes, a value that is not a number / ``None`` / ``[h, w]``) is counted,
  reported with its location, and its row dropped. Files written by
  ``hpd-encode`` carry typed columns that are used directly.

Filters see these fields (:data:`FILTER_FIELDS`): ``prompt, model1, model2,
votes_chosen, votes_rejected, confidence, height, width`` (the pair's final
size: ``latent1_shape[-2:] * 8``, or the typed columns), ``orig_chosen_height,
orig_chosen_width, orig_rejected_height, orig_rejected_width``. A filter is a
:class:`polars.Expr`, a SQL ``WHERE``-style string such as :data:`EXAMPLE_WHERE`
(``"votes_chosen / (votes_chosen + votes_rejected + 1e-6) > 0.6 OR votes_chosen = 0"``),
or a Python callable on a row ``dict`` of those fields (the reference's style;
much slower, since it runs once per row in Python). A filter that evaluates to
null for a row (e.g. on a null confidence) drops the row, as in SQL.
"""

from __future__ import annotations

import argparse
import ast
import glob as globmod
import importlib
import importlib.util
import json
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from hpd_encode._core import BucketSet, parquet_layout, rank_in_group
from hpd_encode.buckets import load_bucket_set

log = logging.getLogger(__name__)

#: The CSV's columns, in the reference's order.
INDEX_COLUMNS: tuple[str, ...] = (
    "global_id",
    "parquet_path",
    "row_group",
    "row_index",
    "width",
    "height",
    "bucket_id",
)

#: The fields a filter can use, with their types.
FILTER_FIELDS: dict[str, pl.DataType] = {
    "prompt": pl.String(),
    "model1": pl.String(),
    "model2": pl.String(),
    "votes_chosen": pl.Int64(),
    "votes_rejected": pl.Int64(),
    "confidence": pl.Float64(),
    "height": pl.Int64(),
    "width": pl.Int64(),
    "orig_chosen_height": pl.Int64(),
    "orig_chosen_width": pl.Int64(),
    "orig_rejected_height": pl.Int64(),
    "orig_rejected_width": pl.Int64(),
}

#: The reference's example filter (``REFERENCE.md`` §5, step 2) as a SQL string.
EXAMPLE_WHERE = "votes_chosen / (votes_chosen + votes_rejected + 1e-6) > 0.6 OR votes_chosen = 0"

RowFilter = Callable[[dict[str, Any]], object]
IndexFilter = pl.Expr | str | RowFilter | None
Source = str | PathLike[str] | Sequence[str | PathLike[str]]

# Text fields, held as Categorical between the scan and the output (less memory).
_TEXT = ["prompt", "model1", "model2"]

# Rows scanned and parsed at a time (bounds the memory for the strings).
_BATCH_ROWS = 100_000
# Batches scanned at once (each holds about 100 MB while it is parsed).
_SCAN_THREADS = 4

# Malformed rows are all counted; this many are described in stats and the log.
_MAX_REPORTED = 10

# ---------------------------------------------------------------------------
# Finding part files and their row-group layout


@dataclass(frozen=True)
class _Part:
    path: str
    row_group_rows: tuple[int, ...]
    columns: frozenset[str]

    @property
    def num_rows(self) -> int:
        return sum(self.row_group_rows)


def find_part_files(source: Source) -> list[str]:
    """Resolve ``source`` to a sorted list of Parquet files.

    ``source`` is a directory (its ``*.parquet`` files), a glob pattern, a
    single file, or a list of any of these. Paths are kept as given (relative
    stays relative), deduplicated by their real path, and sorted as strings.
    Raises :class:`FileNotFoundError` naming the path when nothing is found.
    """
    items: list[str | PathLike[str]]
    if isinstance(source, (str, PathLike)):
        items = [source]
    else:
        items = list(source)
        if not items:
            raise FileNotFoundError("no Parquet files given: the list of sources is empty")
    found: list[str] = []
    for item in items:
        s = os.fspath(item)
        p = Path(s)
        if p.is_dir():
            matches = sorted(str(x) for x in p.glob("*.parquet") if x.is_file())
            if not matches:
                raise FileNotFoundError(f"no *.parquet files in directory '{s}'")
        elif p.is_file():
            matches = [s]
        elif any(c in s for c in "*?["):
            matches = sorted(m for m in globmod.glob(s, recursive=True) if os.path.isfile(m))
            if not matches:
                raise FileNotFoundError(f"no files match the pattern '{s}'")
        else:
            raise FileNotFoundError(f"no such Parquet file or directory: '{s}'")
        found.extend(matches)
    seen: set[str] = set()
    unique: list[str] = []
    for f in found:
        real = os.path.realpath(f)
        if real not in seen:
            seen.add(real)
            unique.append(f)
    return sorted(unique)


def _inspect(path: str) -> _Part:
    """Row-group sizes and column names, from the footer only (parsed in Rust:
    pyarrow hands out one Python object per row group, thousands per file)."""
    try:
        sizes, names, total = parquet_layout(path)  # ValueError naming the file when damaged
    except OSError as e:
        raise ValueError(f"cannot read the Parquet footer of '{path}': {e}") from e
    if sum(sizes) != total:
        raise ValueError(f"'{path}': row groups hold {sum(sizes)} rows but the footer says {total}")
    return _Part(path=path, row_group_rows=tuple(sizes), columns=frozenset(names))


class _RowLocator:
    """Maps (file number, row within file) to (row_group, row_index), vectorised.

    Built from the footers' rows-per-row-group: one global array of row-group
    start offsets, searched with ``np.searchsorted``.
    """

    def __init__(self, parts: Sequence[_Part]) -> None:
        rows = np.array([p.num_rows for p in parts], dtype=np.int64)
        groups = np.array([len(p.row_group_rows) for p in parts], dtype=np.int64)
        self._file_row0 = np.concatenate([[0], np.cumsum(rows)[:-1]]).astype(np.int64)
        self._file_group0 = np.concatenate([[0], np.cumsum(groups)[:-1]]).astype(np.int64)
        sizes = np.array([n for p in parts for n in p.row_group_rows], dtype=np.int64)
        self._group_start = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)

    def locate(self, file_idx: np.ndarray, row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Row group and row within the group for each (file, row-in-file)."""
        g = self._file_row0[file_idx] + row
        # side="right" skips empty row groups (they share their start with the next one).
        grp = np.searchsorted(self._group_start, g, side="right") - 1
        return grp - self._file_group0[file_idx], g - self._group_start[grp]


# ---------------------------------------------------------------------------
# Parsing detailed_results inside Polars
#
# Two passes. The fast pass runs on every row: one anchored regex over the
# string's head, matching exactly what the reference writes (``str()`` of its
# dict: its key order, single quotes, ": " and ", ", lists or tuples,
# ``None``). A row it cannot read (other key order, spacing or quotes, float
# votes, a missing key, garbage) is marked
# ``_fallback`` and keeps its string in ``_raw``; the general pass then parses
# only those rows, tolerating any spacing and either quote, and flags the
# ones that are malformed. Reference-written files never reach the second pass.
#
# Only the keys the run needs are parsed: the votes always (a row without them
# is malformed), the others when the filter uses their fields.


@dataclass(frozen=True)
class _Key:
    name: str  # the key in detailed_results
    fields: tuple[str, ...]  # the filter fields it gives
    kind: str  # "int", "float" or "hw"
    required: bool


_KEYS = (
    _Key("votes_chosen", ("votes_chosen",), "int", True),
    _Key("votes_rejected", ("votes_rejected",), "int", True),
    _Key("confidence", ("confidence",), "float", False),
    _Key("orig_chosen_hw", ("orig_chosen_height", "orig_chosen_width"), "hw", False),
    _Key("orig_rejected_hw", ("orig_rejected_height", "orig_rejected_width"), "hw", False),
)
#: Fields that come from ``detailed_results`` (or typed columns of the same names).
_DR_FIELDS = tuple(f for k in _KEYS for f in k.fields)

# Fast pass: values as the reference writes them, in named groups.
_FAST = {
    "int": r"(?P<{name}>-?\d+|None)",
    "float": r"(?P<{name}>-?\d+(?:\.\d+)?(?:e[-+]?\d+)?|None)",
    "hw": r"(?:[\[(](?P<{name}_0>\d+), (?P<{name}_1>\d+)[\])]|None)",
}
_Q = r"""['"]"""
_GENERAL = {
    "int": r"(-?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|None)",
    "float": r"(-?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|None)",
    "hw": r"[\[(]\s*(\d+)\s*,\s*(\d+)\s*,?\s*[\])]|(None)",
}


def _keys_for(fields: set[str]) -> list[_Key]:
    """The keys to parse: the required ones and those giving any of ``fields``."""
    return [k for k in _KEYS if k.required or fields.intersection(k.fields)]


def _not_none(raw: pl.Expr) -> pl.Expr:
    return pl.when(raw != "None").then(raw)


def _unparsed(keys: Sequence[_Key]) -> list[pl.Expr]:
    """Null columns for the fields of keys not parsed this run."""
    done = {f for k in keys for f in k.fields}
    return [pl.lit(None, FILTER_FIELDS[f]).alias(f) for f in _DR_FIELDS if f not in done]


def _fast_parse(dr: pl.Expr, keys: Sequence[_Key]) -> tuple[list[pl.Expr], list[pl.Expr], pl.Expr]:
    """(stage-1 columns, field expressions on them, "row fully read" flag).

    One anchored regular expression reads the string's head exactly as the
    reference writes it: ``{'votes_chosen': 3, 'votes_rejected': 1, ...``, the
    keys in the reference's order up to the last one needed. Anchored, it
    stops at the first character that differs, and one pass reads every key
    (a search per key costs twice as much).
    """
    last = max(_KEYS.index(k) for k in keys)
    head = ", ".join(f"'{k.name}': " + _FAST[k.kind].format(name=k.name) for k in _KEYS[: last + 1])
    stage1 = [
        dr.str.extract_groups(rf"^\{{{head}[,}}]").alias("_f_head"),
        dr.str.ends_with("}").alias("_f_end"),
    ]
    g = pl.col("_f_head").struct
    fields = _unparsed(keys)
    for key in keys:
        if key.kind == "hw":
            fields += [
                g.field(f"{key.name}_{i}").cast(pl.Int64, strict=False).alias(f) for i, f in enumerate(key.fields)
            ]
        else:
            fields.append(
                _not_none(g.field(key.name)).cast(FILTER_FIELDS[key.fields[0]], strict=False).alias(key.fields[0])
            )
    # The first key is always in the pattern and always captured when it matches.
    ok = g.field(_KEYS[0].name).is_not_null() & pl.col("_f_end")
    return stage1, fields, ok.fill_null(False)


def _general_parse(df: pl.DataFrame, column: str, keys: Sequence[_Key]) -> pl.DataFrame:
    """Parse ``column`` (``detailed_results`` strings) of ``df`` the tolerant way.

    Returns ``df`` with the :data:`_DR_FIELDS` (re)set and ``_malformed`` added:
    true where the string is null, not a ``{...}`` literal, lacks the votes, or
    has a value (of a key in ``keys``) that is not a number / ``None`` / ``[h, w]``.
    """
    dr = pl.col(column).cast(pl.String)
    groups = []
    malformed = dr.is_null() | ~dr.str.contains(r"(?s)^\s*\{.*\}\s*$")
    fields = _unparsed(keys)
    for key in keys:
        # Group 1 captures the opening quote, so "key present" and "value well-formed"
        # come out of one pass: a present key with a bad value has group 1 set and
        # the value groups null.
        pattern = rf"({_Q}){key.name}{_Q}\s*:\s*(?:(?:{_GENERAL[key.kind]})\s*[,}}])?"
        groups.append(dr.str.extract_groups(pattern).alias(f"_g_{key.name}"))
        g = pl.col(f"_g_{key.name}").struct
        present = g.field("1").is_not_null()
        if key.required:
            malformed = malformed | ~present
        if key.kind == "hw":
            malformed = malformed | (present & g.field("2").is_null() & g.field("4").is_null())
            fields += [g.field(str(i + 2)).cast(pl.Int64).alias(f) for i, f in enumerate(key.fields)]
        else:
            malformed = malformed | (present & g.field("2").is_null())
            value = _not_none(g.field("2")).cast(pl.Float64, strict=False)
            fields.append(value.cast(FILTER_FIELDS[key.fields[0]], strict=False).alias(key.fields[0]))
    return (
        df.lazy()
        .with_columns(groups)
        .with_columns(*fields, malformed.fill_null(True).alias("_malformed"))
        .drop([f"_g_{k.name}" for k in keys])
        .collect()
    )


def _part_frame(
    part: _Part,
    file_idx: int,
    keys: Sequence[_Key],
    offset: int = 0,
    length: int | None = None,
    models: bool = True,
) -> pl.LazyFrame:
    """A slice of a part file: filter fields, ``_file``, ``_row``, ``_fallback``, ``_raw``.

    Typed columns are used when the file has them all; otherwise the fields of
    ``keys`` are parsed from ``detailed_results`` by the fast pass (the other
    fields are null), and rows it cannot read get ``_fallback`` = true and
    their string in ``_raw``. ``models=False`` leaves ``model1``/``model2``
    null (unread).

    The slice is scanned for the needed columns only (Polars reads just the
    row groups it covers), then the parsing runs on the contiguous (rechunked)
    result: string expressions on 100-row chunks (one per row group) cost
    about twice as much.
    """
    cols = part.columns
    if "prompt" not in cols:
        raise ValueError(f"'{part.path}' has no 'prompt' column: is it a part file?")
    exprs: list[pl.Expr] = [
        pl.lit(file_idx, dtype=pl.Int32).alias("_file"),
        pl.col("_row").cast(pl.Int64),
    ]
    text = [c for c in _TEXT if c in cols and (models or c == "prompt")]
    wanted = list(text)
    exprs += [pl.col(c).cast(pl.String) if c in text else pl.lit(None, pl.String).alias(c) for c in _TEXT]
    if "height" in cols and "width" in cols:
        wanted += ["height", "width"]
        exprs += [pl.col("height").cast(pl.Int64), pl.col("width").cast(pl.Int64)]
    elif "latent1_shape" in cols:
        wanted.append("latent1_shape")
        shape = pl.col("latent1_shape")
        exprs += [
            (shape.list.get(-2, null_on_oob=True).cast(pl.Int64) * 8).alias("height"),
            (shape.list.get(-1, null_on_oob=True).cast(pl.Int64) * 8).alias("width"),
        ]
    else:
        raise ValueError(f"'{part.path}' has neither 'height'/'width' nor 'latent1_shape' columns")

    typed = all(f in cols for f in _DR_FIELDS)
    if not typed and "detailed_results" not in cols:
        missing = [f for f in _DR_FIELDS if f not in cols]
        raise ValueError(
            f"'{part.path}' lacks the columns {missing} and has no 'detailed_results' to parse them from"
        )
    wanted += list(_DR_FIELDS) if typed else ["detailed_results"]
    scan = pl.scan_parquet(part.path, row_index_name="_row", glob=False).slice(offset, length)
    lf = scan.select("_row", *wanted).collect(engine="streaming").rechunk().lazy()
    if typed:
        exprs += [pl.col(f).cast(FILTER_FIELDS[f]) for f in _DR_FIELDS]
        exprs += [pl.lit(False).alias("_fallback"), pl.lit(None, pl.String).alias("_raw")]
    else:
        dr = pl.col("detailed_results").cast(pl.String)
        stage1, fields, ok = _fast_parse(dr, keys)
        lf = lf.with_columns(stage1)
        exprs += fields
        exprs += [(~ok).alias("_fallback"), pl.when(ok).then(None).otherwise(dr).alias("_raw")]
    order = ["_file", "_row", *FILTER_FIELDS, "_fallback", "_raw"]
    return lf.select(exprs).select(order)


def _malformed_reason(raw: str | None) -> str:
    """Why a ``detailed_results`` string was rejected, in words (few rows only)."""
    if raw is None:
        return "detailed_results is null"
    snippet = raw if len(raw) <= 120 else raw[:117] + "..."
    if len(raw) > 100_000:
        return f"detailed_results is not a dict literal: {snippet!r}"
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError) as e:
        return f"detailed_results is not a Python literal ({type(e).__name__}): {snippet!r}"
    if not isinstance(value, dict):
        return f"detailed_results is a {type(value).__name__}, not a dict: {snippet!r}"
    absent = [k.name for k in _KEYS if k.required and k.name not in value]
    if absent:
        return f"detailed_results lacks {', '.join(repr(k) for k in absent)}: {snippet!r}"
    return f"detailed_results has a value of the wrong type: {snippet!r}"


# ---------------------------------------------------------------------------
# Filters


def _fields_of(expr: pl.Expr) -> set[str]:
    """The columns an expression reads (all filter fields when Polars cannot say)."""
    try:
        return set(expr.meta.root_names())
    except pl.exceptions.PolarsError:
        return set(FILTER_FIELDS)


def _check_fields(expr: pl.Expr, what: str) -> None:
    unknown = sorted(_fields_of(expr) - set(FILTER_FIELDS))
    if unknown:
        raise ValueError(
            f"{what} uses unknown field(s) {', '.join(unknown)}; available: {', '.join(FILTER_FIELDS)}"
        )


def parse_where(where: str) -> pl.Expr:
    """A SQL ``WHERE``-style condition to a Polars expression (via ``pl.sql_expr``)."""
    if where.lstrip()[:6].upper() == "WHERE ":
        where = where.lstrip()[6:]
    try:
        expr = pl.sql_expr(where)
    except (pl.exceptions.PolarsError, ValueError) as e:
        raise ValueError(f"cannot parse the filter {where!r}: {e}") from e
    if not isinstance(expr, pl.Expr):
        raise ValueError(f"the filter {where!r} must be one condition")
    _check_fields(expr, f"the filter {where!r}")
    return expr


def _resolve_filter(flt: IndexFilter) -> tuple[pl.Expr | None, RowFilter | None, str | None]:
    """(expression, row callable, description) for a user filter."""
    if flt is None:
        return None, None, None
    if isinstance(flt, pl.Expr):
        _check_fields(flt, "the filter expression")
        return flt, None, str(flt)
    if isinstance(flt, str):
        return parse_where(flt), None, flt
    if callable(flt):
        name = getattr(flt, "__qualname__", None) or repr(flt)
        return None, flt, f"{getattr(flt, '__module__', '?')}:{name}"
    raise TypeError(f"filter must be a polars.Expr, a SQL string or a callable, not {type(flt).__name__}")


def load_callable(spec: str) -> RowFilter:
    """``module:function`` or ``path/to/file.py:function`` to the function object.

    A module that is not importable as is is looked up in the current directory
    too (as ``python -m`` would).
    """
    module_name, sep, func_name = spec.rpartition(":")
    if not sep or not module_name or not func_name:
        raise ValueError(f"filter {spec!r} must be 'module:function' or 'file.py:function'")
    if module_name.endswith(".py") or os.sep in module_name:
        path = Path(module_name)
        if not path.is_file():
            raise ValueError(f"filter module file '{path}' does not exist")
        mod_spec = importlib.util.spec_from_file_location(f"_hpd_filter_{path.stem}", path)
        if mod_spec is None or mod_spec.loader is None:
            raise ValueError(f"cannot load filter module '{path}'")
        module = importlib.util.module_from_spec(mod_spec)
        mod_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError:
            cwd = os.getcwd()
            if cwd in sys.path:
                raise ValueError(f"cannot import filter module {module_name!r}") from None
            sys.path.insert(0, cwd)
            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError as e:
                raise ValueError(f"cannot import filter module {module_name!r}: {e}") from e
            finally:
                sys.path.remove(cwd)
    func = getattr(module, func_name, None)
    if not callable(func):
        raise ValueError(f"{module_name!r} has no function {func_name!r}")
    return func


# ---------------------------------------------------------------------------
# The index


@dataclass
class IndexStats:
    """Counts from one :func:`build_index_with_stats` run (JSON-able via :meth:`to_dict`)."""

    files: int
    rows_in: int
    malformed: int
    after_filter: int
    after_cap: int
    not_in_buckets: int
    indexed: int
    filter: str | None
    max_per_prompt: int | None
    seed: int
    shuffle: bool
    per_bucket: list[dict[str, int]] = field(default_factory=list)
    per_model: dict[str, dict[str, int]] = field(default_factory=dict)
    malformed_rows: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A plain dict for ``json.dump``."""
        return asdict(self)


def build_index(
    source: Source,
    *,
    filter: IndexFilter = None,
    max_per_prompt: int | None = 8,
    seed: int = 42,
    shuffle: bool = True,
    buckets: str | PathLike[str] | BucketSet = "hpdv3",
) -> pl.DataFrame:
    """Build the bucket index of the part files in ``source``.

    Returns a frame with exactly :data:`INDEX_COLUMNS`. See
    :func:`build_index_with_stats` for the arguments; this drops the stats.
    """
    return build_index_with_stats(
        source,
        filter=filter,
        max_per_prompt=max_per_prompt,
        seed=seed,
        shuffle=shuffle,
        buckets=buckets,
        per_model=False,
    )[0]


def build_index_with_stats(
    source: Source,
    *,
    filter: IndexFilter = None,
    max_per_prompt: int | None = 8,
    seed: int = 42,
    shuffle: bool = True,
    buckets: str | PathLike[str] | BucketSet = "hpdv3",
    per_model: bool = True,
) -> tuple[pl.DataFrame, IndexStats]:
    """Build the bucket index and count what each step kept.

    Steps (the reference's, ``REFERENCE.md`` §5): scan every row's fields;
    drop rows whose ``detailed_results`` cannot be parsed (counted, logged);
    apply ``filter``; shuffle with ``seed`` (unless ``shuffle`` is false: file
    order) and keep at most ``max_per_prompt`` rows per prompt (``None``: no
    cap); set ``bucket_id`` to the id of ``(height, width)`` in ``buckets`` and
    drop rows whose size is not a bucket; sort by ``(parquet_path, row_group,
    row_index)`` and number the rows ``global_id`` 0..n-1.

    ``source`` is a directory, a glob, a file or a list of them (see
    :func:`find_part_files`). ``filter`` is a :class:`polars.Expr`, a SQL
    condition string, or a callable taking a row dict of
    :data:`FILTER_FIELDS` and returning truthy to keep it (slow: Python per row).
    The result is deterministic for a given ``seed`` and input.

    ``per_model=False`` skips the per-model counts (``stats.per_model`` is
    empty) and, unless the filter uses them, the reading of ``model1`` and
    ``model2``.
    """
    if max_per_prompt is not None and max_per_prompt < 1:
        raise ValueError(f"max_per_prompt must be at least 1 (or None for no cap), not {max_per_prompt}")
    bucket_set = load_bucket_set(buckets)
    expr, row_fn, desc = _resolve_filter(filter)
    paths = find_part_files(source)
    # Footers are parsed in Rust without the GIL: a few at once.
    with ThreadPoolExecutor(max_workers=max(1, min(len(paths), os.cpu_count() or 1))) as pool:
        parts = list(pool.map(_inspect, paths))
    locator = _RowLocator(parts)
    rows_in = sum(p.num_rows for p in parts)

    keep = pl.lit(True) if expr is None else expr.fill_null(False)
    # Parse only what is needed: a callable may read any field, an expression its own.
    used = set(FILTER_FIELDS) if row_fn is not None else _fields_of(expr) if expr is not None else set()
    keys = _keys_for(used)
    models = per_model or bool(used & {"model1", "model2"})

    def scan(job: tuple[int, int]) -> pl.DataFrame:
        # A batch of rows at a time: memory holds a batch's strings, not all of them.
        i, offset = job
        try:
            lf = _part_frame(parts[i], i, keys, offset, _BATCH_ROWS, models)
            if expr is not None:
                # Rows the fast pass could not read ride along; they are parsed and filtered below.
                lf = lf.filter(pl.col("_fallback") | keep)
            return lf.with_columns(pl.col(_TEXT).cast(pl.Categorical)).collect()
        except pl.exceptions.PolarsError as e:
            raise ValueError(f"scanning '{parts[i].path}' failed (filter: {desc}): {e}") from e

    jobs = [(i, o) for i, p in enumerate(parts) for o in range(0, max(p.num_rows, 1), _BATCH_ROWS)]
    # Each batch runs mostly on one core (Polars releases the GIL): run a few at once.
    with ThreadPoolExecutor(max_workers=max(1, min(_SCAN_THREADS, len(jobs), os.cpu_count() or 1))) as pool:
        frames = list(pool.map(scan, jobs))
    df = pl.concat(frames, how="vertical")
    del frames

    bad = df.clear()
    if df["_fallback"].any():
        fixed = _general_parse(df.filter(pl.col("_fallback")), "_raw", keys)
        bad = fixed.filter(pl.col("_malformed"))
        good = fixed.filter(~pl.col("_malformed")).drop("_malformed")
        if expr is not None:
            good = good.with_columns(pl.col(_TEXT).cast(pl.String)).filter(keep)
            good = good.with_columns(pl.col(_TEXT).cast(pl.Categorical))
        df = pl.concat([df.filter(~pl.col("_fallback")), good.select(df.columns)], how="vertical")
    malformed_rows = _report_malformed(bad.sort("_file", "_row"), locator, paths)

    if row_fn is not None:
        mask = []
        rows = df.select(list(FILTER_FIELDS)).with_columns(pl.col(_TEXT).cast(pl.String))
        for row in rows.iter_rows(named=True):
            try:
                mask.append(bool(row_fn(row)))
            except Exception as e:
                raise ValueError(f"the filter {desc} failed on {row}: {type(e).__name__}: {e}") from e
        df = df.filter(pl.Series(mask, dtype=pl.Boolean))
    after_filter = df.height

    df = df.select("_file", "_row", "prompt", "model1", "model2", "height", "width").sort("_file", "_row")
    if max_per_prompt is not None:
        # Row r's place in the shuffled order is key[r]; visit rows in that order.
        n = df.height
        key = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
        order = np.empty(n, dtype=np.int64)
        order[key] = np.arange(n, dtype=np.int64)
        codes = df["prompt"].to_physical().cast(pl.Int64).fill_null(-1).to_numpy()
        df = df.filter(pl.Series(rank_in_group(codes, order) < max_per_prompt))
    after_cap = df.height

    bucket_frame = pl.DataFrame(
        {
            "height": [h for h, _ in bucket_set.buckets],
            "width": [w for _, w in bucket_set.buckets],
            "bucket_id": [bucket_set.index(h, w) for h, w in bucket_set.buckets],
        },
        schema={"height": pl.Int64, "width": pl.Int64, "bucket_id": pl.Int64},
    ).unique(subset=["height", "width"], keep="first")
    df = df.join(bucket_frame, on=["height", "width"], how="inner").sort("_file", "_row")

    model_counts = _count_models(df) if per_model else {}
    group, index = locator.locate(df["_file"].to_numpy(), df["_row"].to_numpy())
    out = pl.DataFrame(
        {
            "global_id": np.arange(df.height, dtype=np.int64),
            "parquet_path": pl.Series(paths, dtype=pl.String).gather(df["_file"]),
            "row_group": group.astype(np.int64),
            "row_index": index.astype(np.int64),
            "width": df["width"],
            "height": df["height"],
            "bucket_id": df["bucket_id"],
        }
    )
    counts = dict(out.group_by("bucket_id").len().iter_rows())
    per_bucket = [
        {"bucket_id": i, "height": h, "width": w, "rows": int(counts.get(i, 0))}
        for i, (h, w) in enumerate(bucket_set.buckets)
    ]
    stats = IndexStats(
        files=len(paths),
        rows_in=rows_in,
        malformed=bad.height,
        after_filter=after_filter,
        after_cap=after_cap,
        not_in_buckets=after_cap - out.height,
        indexed=out.height,
        filter=desc,
        max_per_prompt=max_per_prompt,
        seed=seed,
        shuffle=shuffle,
        per_bucket=per_bucket,
        per_model=model_counts,
        malformed_rows=malformed_rows,
    )
    log.info(
        "index: %d rows in %d file(s); %d malformed; %d after filter; %d after cap of %s per prompt; "
        "%d not in a bucket; %d indexed",
        rows_in,
        len(paths),
        bad.height,
        after_filter,
        after_cap,
        max_per_prompt,
        stats.not_in_buckets,
        out.height,
    )
    return out, stats


def _report_malformed(bad: pl.DataFrame, locator: _RowLocator, paths: Sequence[str]) -> list[dict[str, Any]]:
    """Log and describe (up to a few) malformed rows; all are counted by the caller."""
    if bad.height == 0:
        return []
    head = bad.head(_MAX_REPORTED)
    group, index = locator.locate(head["_file"].to_numpy(), head["_row"].to_numpy())
    rows = []
    for f, g, i, raw in zip(
        head["_file"].to_list(), group.tolist(), index.tolist(), head["_raw"].to_list(), strict=True
    ):
        rows.append(
            {"parquet_path": paths[f], "row_group": g, "row_index": i, "reason": _malformed_reason(raw)}
        )
    for r in rows:
        log.warning(
            "dropped '%s' row group %d row %d: %s",
            r["parquet_path"],
            r["row_group"],
            r["row_index"],
            r["reason"],
        )
    if bad.height > len(rows):
        log.warning("... and %d more malformed rows", bad.height - len(rows))
    log.warning("dropped %d row(s) with a malformed detailed_results", bad.height)
    return rows


def _count_models(df: pl.DataFrame) -> dict[str, dict[str, int]]:
    """{model: {"chosen": rows as model1, "rejected": rows as model2}}; missing names as ""."""
    out: dict[str, dict[str, int]] = {}
    for col, role in (("model1", "chosen"), ("model2", "rejected")):
        for name, n in df.group_by(pl.col(col).fill_null("")).len().iter_rows():
            out.setdefault(name, {"chosen": 0, "rejected": 0})[role] = int(n)
    return dict(sorted(out.items()))


def write_index(df: pl.DataFrame, path: str | PathLike[str]) -> None:
    """Write the index as CSV with exactly :data:`INDEX_COLUMNS`, atomically.

    The file appears complete or not at all (written beside, then renamed).
    """
    missing = [c for c in INDEX_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"index frame lacks the column(s) {missing}; build it with build_index()")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            df.select(INDEX_COLUMNS).write_csv(fh)
        # mkstemp creates the file 0600; give it the usual umask-based mode so
        # trainers running as another user can read it.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_index(index: str | PathLike[str] | pl.DataFrame) -> pl.DataFrame:
    """Read an index CSV (or check a frame): :data:`INDEX_COLUMNS`, sorted by ``global_id``."""
    if isinstance(index, pl.DataFrame):
        df = index
        where = "index frame"
    else:
        where = f"index '{os.fspath(index)}'"
        schema = {c: (pl.String if c == "parquet_path" else pl.Int64) for c in INDEX_COLUMNS}
        if not os.path.isfile(index):
            raise FileNotFoundError(f"no index file '{os.fspath(index)}'; build it with 'hpd-encode index'")
        try:
            df = pl.read_csv(Path(index), schema_overrides=schema)
        except (pl.exceptions.PolarsError, OSError) as e:
            raise ValueError(f"cannot read {where}: {e}") from e
    missing = [c for c in INDEX_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{where} lacks the column(s) {missing}")
    return df.select(INDEX_COLUMNS).sort("global_id")


# ---------------------------------------------------------------------------
# Plot (Pillow only; no matplotlib)


def plot_buckets(stats: IndexStats, path: str | PathLike[str]) -> None:
    """Write a PNG bar chart of rows per bucket (every bucket of the set, empty ones too)."""
    from PIL import Image, ImageDraw, ImageFont

    def font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
        try:
            return ImageFont.load_default(size=size)
        except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
            return ImageFont.load_default()

    bars = stats.per_bucket
    n = max(len(bars), 1)
    slot = 84
    left, right, top, bottom = 70, 20, 50, 60
    plot_h = 360
    width = left + right + slot * n
    height = top + plot_h + bottom
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    small, title_font = font(12), font(16)
    peak = max([b["rows"] for b in bars] + [1])
    draw.text(
        (left, 15),
        f"rows per bucket ({stats.indexed:,} indexed of {stats.rows_in:,})",
        fill="black",
        font=title_font,
    )
    base = top + plot_h
    for k in range(5):  # gridlines at 0, 1/4, ... of the peak
        value = peak * k / 4
        y = base - plot_h * k / 4
        draw.line([(left, y), (width - right, y)], fill=(225, 225, 225))
        label = f"{value:,.0f}"
        tw = draw.textlength(label, font=small)
        draw.text((left - 6 - tw, y - 7), label, fill="black", font=small)
    draw.line([(left, top), (left, base)], fill="black")
    draw.line([(left, base), (width - right, base)], fill="black")
    for k, b in enumerate(bars):
        x0 = left + k * slot + 12
        x1 = x0 + slot - 24
        y0 = base - plot_h * b["rows"] / peak
        if b["rows"]:
            draw.rectangle([x0, y0, x1, base], fill=(66, 114, 196), outline=(40, 70, 130))
        for text, y in (
            (f"{b['rows']:,}", y0 - 16),
            (f"{b['height']}x{b['width']}", base + 6),
            (f"#{b['bucket_id']}", base + 22),
        ):
            tw = draw.textlength(text, font=small)
            draw.text(((x0 + x1) / 2 - tw / 2, y), text, fill="black", font=small)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG")


# ---------------------------------------------------------------------------
# CLI


def add_subcommands(subparsers: Any, common_parent: argparse.ArgumentParser) -> None:
    """Register ``index`` on an argparse subparsers object (``common_parent`` carries -v/-q)."""
    p = subparsers.add_parser(
        "index",
        parents=[common_parent],
        help="build the bucket index CSV of part files",
        description="Scan part files lazily (never the latents) and write the bucket index CSV "
        "(global_id, parquet_path, row_group, row_index, width, height, bucket_id). Filter fields: "
        + ", ".join(FILTER_FIELDS)
        + ".",
    )
    p.add_argument(
        "--parquet-dir",
        required=True,
        nargs="+",
        metavar="DIR_OR_GLOB",
        help="a directory of *.parquet part files, a glob, or files",
    )
    p.add_argument("--out-index", required=True, metavar="CSV", help="where to write the index")
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--where",
        metavar="EXPR",
        help=f"SQL condition a row must meet, e.g. {EXAMPLE_WHERE!r}",
    )
    group.add_argument(
        "--filter",
        metavar="MODULE:FUNCTION",
        help="Python function taking a row dict, returning true to keep it (slow: per row)",
    )
    p.add_argument(
        "--max-per-prompt",
        type=int,
        metavar="N",
        default=8,
        help="keep at most N rows per prompt after the shuffle; 0: no cap (default: %(default)s)",
    )
    p.add_argument("--seed", type=int, default=42, help="shuffle seed (default: %(default)s)")
    p.add_argument("--no-shuffle", action="store_true", help="cap per prompt in file order instead")
    p.add_argument(
        "--buckets", default="hpdv3", help="'hpdv3' or a JSON file of [h, w] sizes (default: %(default)s)"
    )
    p.add_argument("--stats", metavar="JSON", help="write the counts (per step, bucket, model) here")
    p.add_argument("--plot", metavar="PNG", help="write a bar chart of rows per bucket here")
    p.set_defaults(func=run_index_command)


def run_index_command(args: argparse.Namespace) -> int:
    """The ``index`` subcommand: build, write, report. Returns the exit status."""
    flt: IndexFilter = None
    if args.where:
        flt = args.where
    elif args.filter:
        flt = load_callable(args.filter)
    df, stats = build_index_with_stats(
        args.parquet_dir,
        per_model=bool(args.stats),
        filter=flt,
        max_per_prompt=args.max_per_prompt or None,
        seed=args.seed,
        shuffle=not args.no_shuffle,
        buckets=args.buckets,
    )
    write_index(df, args.out_index)
    if args.stats:
        stats_path = Path(args.stats)
        stats_path.parent.mkdir(parents=True, exist_ok=True)
        stats_path.write_text(json.dumps(stats.to_dict(), indent=2) + "\n")
    if args.plot:
        plot_buckets(stats, args.plot)
    filtered_out = stats.rows_in - stats.malformed - stats.after_filter
    print(
        f"indexed {stats.indexed:,} of {stats.rows_in:,} rows from {stats.files} file(s) "
        f"into {args.out_index} "
        f"({stats.malformed:,} malformed, {filtered_out:,} filtered out, "
        f"{stats.after_filter - stats.after_cap:,} over the per-prompt cap, "
        f"{stats.not_in_buckets:,} not in a bucket)"
    )
    return 0
