"""The index CSV itself: its columns, reading and writing.

Kept apart from the builder so that :mod:`hpd_encode.latents.reader` (and trainers)
can read an index without importing the scan, the parsers or the filters.
"""

from __future__ import annotations

import os
from os import PathLike
from pathlib import Path

import polars as pl

from hpd_encode.errors import IndexInputError, InputNotFoundError

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


def write_index(df: pl.DataFrame, path: str | PathLike[str]) -> None:
    """Write the index as CSV with exactly :data:`INDEX_COLUMNS`, atomically.

    The file appears complete or not at all (written beside, then renamed).
    ``path`` may only replace a regular file that is neither a Parquet file
    nor a file of an encode output directory (a mistyped path must not
    destroy a part file, a manifest or a device node):
    :func:`hpd_encode.files.check_output`, else :class:`OutputPathError`.
    """
    from hpd_encode.files import write_output

    missing = [c for c in INDEX_COLUMNS if c not in df.columns]
    if missing:
        raise IndexInputError(f"index frame lacks the column(s) {missing}; build it with build_index()")
    write_output(path, "the index", lambda fh: df.select(INDEX_COLUMNS).write_csv(fh))


def read_index(index: str | PathLike[str] | pl.DataFrame) -> pl.DataFrame:
    """Read an index CSV (or check a frame): :data:`INDEX_COLUMNS`, sorted by ``global_id``."""
    if isinstance(index, pl.DataFrame):
        df = index
        where = "index frame"
    else:
        where = f"index '{os.fspath(index)}'"
        schema = {c: (pl.String if c == "parquet_path" else pl.Int64) for c in INDEX_COLUMNS}
        if not os.path.isfile(index):
            raise InputNotFoundError(f"no index file '{os.fspath(index)}'; build it with 'hpd-encode index'")
        try:
            df = pl.read_csv(Path(index), schema_overrides=schema)
        except (pl.exceptions.PolarsError, OSError) as e:
            raise IndexInputError(f"cannot read {where}: {e}") from e
    missing = [c for c in INDEX_COLUMNS if c not in df.columns]
    if missing:
        raise IndexInputError(f"{where} lacks the column(s) {missing}")
    df = df.select(INDEX_COLUMNS)
    _check_values(df, where, csv=not isinstance(index, pl.DataFrame))
    return df.sort("global_id")


def _check_values(df: pl.DataFrame, where: str, csv: bool) -> None:
    """Every number of an index is a non-negative integer and every path is given: a bad value
    is :class:`IndexInputError` naming the file, its line and the column, never an overflow later."""
    numbers = [c for c in INDEX_COLUMNS if c != "parquet_path"]
    bad_types = [c for c in numbers if not df.schema[c].is_integer()]
    if bad_types:
        raise IndexInputError(f"{where}: the column(s) {bad_types} must hold integers; rebuild the index")
    checks = [(pl.col(c).is_null() | (pl.col(c) < 0)).alias(c) for c in numbers]
    checks.append((pl.col("parquet_path").is_null() | (pl.col("parquet_path") == "")).alias("parquet_path"))
    flags = df.select(checks)
    bad = flags.select(pl.any_horizontal(pl.all())).to_series()
    if not bad.any():
        return
    row = int(bad.arg_max() or 0)
    column = next(c for c in flags.columns if flags[c][row])
    value = df[column][row]
    what = "empty" if value is None or value == "" else f"{value}, negative"
    at = f"line {row + 2}" if csv else f"row {row}"  # line 1 is the header
    raise IndexInputError(
        f"{where} {at}: {column} is {what}; an index holds non-negative row groups, rows and sizes: "
        "rebuild it with 'hpd-encode index'"
    )
