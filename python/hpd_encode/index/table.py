"""The index CSV itself: its columns, reading and writing.

Kept apart from the builder so that :mod:`hpd_encode.latents.reader` (and trainers)
can read an index without importing the scan, the parsers or the filters.
"""

from __future__ import annotations

import os
import tempfile
from os import PathLike
from pathlib import Path

import polars as pl

from hpd_encode.errors import IndexInputError, InputNotFoundError, OutputOverwritesInputError

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
    An existing ``.parquet`` file is never replaced (a mistyped path must not
    destroy a part file).
    """
    missing = [c for c in INDEX_COLUMNS if c not in df.columns]
    if missing:
        raise IndexInputError(f"index frame lacks the column(s) {missing}; build it with build_index()")
    path = Path(path)
    if path.suffix.lower() == ".parquet" and path.exists():
        raise OutputOverwritesInputError(f"refusing to write the index over the Parquet file '{path}'")
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
            raise InputNotFoundError(f"no index file '{os.fspath(index)}'; build it with 'hpd-encode index'")
        try:
            df = pl.read_csv(Path(index), schema_overrides=schema)
        except (pl.exceptions.PolarsError, OSError) as e:
            raise IndexInputError(f"cannot read {where}: {e}") from e
    missing = [c for c in INDEX_COLUMNS if c not in df.columns]
    if missing:
        raise IndexInputError(f"{where} lacks the column(s) {missing}")
    return df.select(INDEX_COLUMNS).sort("global_id")
