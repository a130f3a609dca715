"""The bucket index: where each training pair lives, grouped by bucket.

This is the reference pipeline's third step (``REFERENCE.md`` §5) rebuilt on
Polars. From a set of part files it writes a CSV with the columns
``global_id, parquet_path, row_group, row_index, width, height, bucket_id``
that trainers use to read pairs bucket by bucket; by default the same part
files, filter and cap give the reference's CSV byte for byte.

One concern a module:

* :mod:`~hpd_encode.index.table`: :data:`INDEX_COLUMNS`, :func:`read_index`,
  :func:`write_index` (all a trainer needs; imports nothing else of the index).
* :mod:`~hpd_encode.index.parts`: finding part files, footer layouts, the row
  locator, refusing incomplete outputs and overwriting inputs.
* :mod:`~hpd_encode.index.results`: parsing ``detailed_results``.
* :mod:`~hpd_encode.index.filters`: :data:`FILTER_FIELDS`, SQL / expression /
  callable filters.
* :mod:`~hpd_encode.index.scan`: reading the small columns, never the latents.
* :mod:`~hpd_encode.index.build`: :func:`build_index`,
  :func:`build_index_with_stats`, :class:`IndexStats`.
* :mod:`~hpd_encode.index.plot`: the bucket bar chart (matplotlib, optional).

The command line (``hpd-encode index``) is :mod:`hpd_encode.cli.index`.

Names are loaded on first use, so ``import hpd_encode.index.table`` (the
reader's import) does not pay for the builder.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hpd_encode._lazy import lazy_exports
from hpd_encode.errors import (
    IndexInputError,
    MissingExtraError,
    OutputOverwritesInputError,
    PartFilesNotFoundError,
)

if TYPE_CHECKING:
    from hpd_encode.index.build import IndexStats, build_index, build_index_with_stats
    from hpd_encode.index.filters import (
        EXAMPLE_WHERE,
        FILTER_FIELDS,
        IndexFilter,
        RowFilter,
        load_callable,
        parse_where,
    )
    from hpd_encode.index.parts import Source, find_part_files
    from hpd_encode.index.plot import bucket_figure, plot_buckets
    from hpd_encode.index.table import INDEX_COLUMNS, read_index, write_index

_LAZY: dict[str, str] = {
    "IndexStats": ".build",
    "build_index": ".build",
    "build_index_with_stats": ".build",
    "EXAMPLE_WHERE": ".filters",
    "FILTER_FIELDS": ".filters",
    "IndexFilter": ".filters",
    "RowFilter": ".filters",
    "load_callable": ".filters",
    "parse_where": ".filters",
    "Source": ".parts",
    "find_part_files": ".parts",
    "bucket_figure": ".plot",
    "plot_buckets": ".plot",
    "INDEX_COLUMNS": ".table",
    "read_index": ".table",
    "write_index": ".table",
}


__getattr__ = lazy_exports(__name__, _LAZY, globals())


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "EXAMPLE_WHERE",
    "FILTER_FIELDS",
    "INDEX_COLUMNS",
    "IndexFilter",
    "IndexInputError",
    "IndexStats",
    "MissingExtraError",
    "OutputOverwritesInputError",
    "PartFilesNotFoundError",
    "RowFilter",
    "Source",
    "bucket_figure",
    "build_index",
    "build_index_with_stats",
    "find_part_files",
    "load_callable",
    "parse_where",
    "plot_buckets",
    "read_index",
    "write_index",
]
