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
    return df.select(INDEX_COLUMNS).sort("global_id")
