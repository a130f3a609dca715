"""Building the bucket index: the reference's steps (``REFERENCE.md`` §5), fast.

:func:`build_index_with_stats` runs, in order:

1. :func:`_load_parts`: resolve the source to part files (sorted path order),
   refuse an encode output directory whose run has not completed, read the
   footers (in Rust, a few at once).
2. :func:`~hpd_encode.index.scan.scan_parts`: scan the small columns in
   batches, parse ``detailed_results`` when a filter needs it, apply the filter
   expression; then :func:`~hpd_encode.index.filters.apply_row_filter` for a
   callable filter.
3. :func:`_cap_per_prompt`: the reference's shuffle and cap, exactly: the rows
   in (file, row group, row) order are visited in the order of
   ``numpy.random.RandomState(seed).permutation(n)`` (what
   ``pandas.DataFrame.sample(frac=1, random_state=seed)`` draws) and the first
   ``max_per_prompt`` of each prompt are kept (``groupby('prompt').head(n)``,
   which drops rows whose prompt is null). The rank within a prompt is
   computed in Rust (``_core.rank_in_group``), in one pass, without a sort.
4. :func:`_assign_buckets`: ``bucket_id`` of ``(height, width)``; rows whose
   size is not a bucket are dropped.
5. :func:`_index_frame`: (row group, row) from the footers, sorted by
   ``(parquet_path, row_group, row_index)``, ``global_id`` 0..n-1.

So the same part files (the same glob string), filter and cap give the
reference's CSV byte for byte (:func:`~hpd_encode.index.table.write_index`
writes it as ``pandas.DataFrame.to_csv(index=False)`` does).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from os import PathLike
from typing import Any

import numpy as np
import polars as pl

from hpd_encode._core import BucketSet, rank_in_group
from hpd_encode.buckets import load_bucket_set
from hpd_encode.errors import IndexInputError
from hpd_encode.index.filters import FILTER_FIELDS, IndexFilter, apply_row_filter, fields_of, resolve_filter
from hpd_encode.index.parts import (
    Part,
    RowLocator,
    Source,
    check_outputs_complete,
    check_provenance,
    find_part_files,
    inspect_part,
)
from hpd_encode.index.results import keys_for, malformed_reason
from hpd_encode.index.scan import scan_parts

log = logging.getLogger(__name__)

# Malformed rows are all counted; this many are described in stats and the log.
_MAX_REPORTED = 10


@dataclass
class IndexStats:
    """Counts from one :func:`build_index_with_stats` run (JSON-able via :meth:`to_dict`).

    ``after_filter - after_cap`` counts rows over the per-prompt cap, rows with
    a null prompt among them (the reference's ``groupby('prompt')`` drops
    them). ``incomplete_outputs`` maps each encode output directory read whose
    run has not completed (allowed with ``allow_partial``) to its manifest status.
    """

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
    incomplete_outputs: dict[str, str] = field(default_factory=dict)

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
    allow_partial: bool = False,
    allow_mixed: bool = False,
) -> pl.DataFrame:
    """Build the bucket index of the part files in ``source``.

    Returns a frame with exactly :data:`~hpd_encode.index.table.INDEX_COLUMNS`.
    See :func:`build_index_with_stats` for the arguments; this drops the stats.
    """
    return build_index_with_stats(
        source,
        filter=filter,
        max_per_prompt=max_per_prompt,
        seed=seed,
        shuffle=shuffle,
        buckets=buckets,
        per_model=False,
        allow_partial=allow_partial,
        allow_mixed=allow_mixed,
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
    allow_partial: bool = False,
    allow_mixed: bool = False,
) -> tuple[pl.DataFrame, IndexStats]:
    """Build the bucket index and count what each step kept.

    Steps (the reference's, ``REFERENCE.md`` §5, in its exact order and
    shuffle; see the module doc): scan every row's fields; with a filter, drop
    rows whose ``detailed_results`` cannot be parsed (counted, logged) and
    apply ``filter``; shuffle as ``DataFrame.sample(frac=1, random_state=seed)``
    (unless ``shuffle`` is false: file order) and keep at most
    ``max_per_prompt`` rows per non-null prompt (``None``: no cap, null prompts
    kept); set ``bucket_id`` to the id of ``(height, width)`` in ``buckets``
    and drop rows whose size is not a bucket; sort by ``(parquet_path,
    row_group, row_index)`` and number the rows ``global_id`` 0..n-1.

    ``source`` is a directory, a glob, a file or a list of them (see
    :func:`~hpd_encode.index.parts.find_part_files`). ``filter`` is a
    :class:`polars.Expr`, a SQL condition string, or a callable taking a row
    dict of :data:`~hpd_encode.index.filters.FILTER_FIELDS` and returning
    truthy to keep it (slow: Python per row). The result is deterministic for a
    given ``seed`` and input.

    Part files in an encode output directory whose ``manifest.json`` does not
    say ``complete`` are refused (:class:`~hpd_encode.errors.PartialOutputError`)
    unless ``allow_partial``. Part files whose latents were made differently
    (their footers' provenance differs: another VAE, normalisation, latent
    mode, dtype, seed or bucket set) are refused
    (:class:`~hpd_encode.errors.MixedProvenanceError`) unless ``allow_mixed``.

    ``per_model=False`` skips the per-model counts (``stats.per_model`` is
    empty) and, unless the filter uses them, the reading of ``model1`` and
    ``model2``.
    """
    if max_per_prompt is not None and max_per_prompt < 1:
        raise IndexInputError(f"max_per_prompt must be at least 1 (or None for no cap), not {max_per_prompt}")
    bucket_set = load_bucket_set(buckets)
    expr, row_fn, desc = resolve_filter(filter)
    paths, parts, incomplete = _load_parts(source, allow_partial)
    if not allow_mixed:
        check_provenance(parts)
    locator = RowLocator(parts)

    # Parse only what is needed: a callable may read any field, an expression its own.
    used = set(FILTER_FIELDS) if row_fn is not None else fields_of(expr) if expr is not None else None
    models = per_model or bool((used or set()) & {"model1", "model2"})
    scanned = scan_parts(parts, keys_for(used), expr, models, desc)
    df = scanned.rows
    if row_fn is not None:
        df = apply_row_filter(df, row_fn, desc)
    after_filter = df.height

    df = _cap_per_prompt(df, max_per_prompt, seed if shuffle else None)
    after_cap = df.height
    df = _assign_buckets(df, bucket_set)
    out = _index_frame(df, paths, locator)

    stats = IndexStats(
        files=len(paths),
        rows_in=sum(p.num_rows for p in parts),
        malformed=scanned.malformed.height,
        after_filter=after_filter,
        after_cap=after_cap,
        not_in_buckets=after_cap - out.height,
        indexed=out.height,
        filter=desc,
        max_per_prompt=max_per_prompt,
        seed=seed,
        shuffle=shuffle,
        per_bucket=_count_buckets(out, bucket_set),
        per_model=_count_models(df) if per_model else {},
        malformed_rows=_report_malformed(scanned.malformed, locator, paths),
        incomplete_outputs=incomplete,
    )
    _log_stats(stats)
    return out, stats


def _load_parts(source: Source, allow_partial: bool) -> tuple[list[str], list[Part], dict[str, str]]:
    """(paths in sorted order, their footers, incomplete output directories allowed)."""
    paths = find_part_files(source)
    incomplete = check_outputs_complete(paths, allow_partial)
    # Footers are parsed in Rust without the GIL: a few at once.
    with ThreadPoolExecutor(max_workers=max(1, min(len(paths), os.cpu_count() or 1))) as pool:
        parts = list(pool.map(inspect_part, paths))
    return paths, parts, incomplete


def shuffle_order(n: int, seed: int | None) -> np.ndarray:
    """The order in which the reference's cap visits ``n`` rows: row ``order[k]``
    is the k-th row of ``DataFrame.sample(frac=1, random_state=seed)``
    (``RandomState(seed).permutation(n)``); ``seed=None``: file order."""
    if seed is None:
        return np.arange(n, dtype=np.int64)
    return np.random.RandomState(seed).permutation(n).astype(np.int64)


def _cap_per_prompt(df: pl.DataFrame, max_per_prompt: int | None, seed: int | None) -> pl.DataFrame:
    """Keep the first ``max_per_prompt`` rows of each prompt in the shuffled order,
    dropping null prompts, as ``df.sample(frac=1, random_state=seed).groupby('prompt').head(n)``.

    ``df`` is in (file, row) order; the result stays in that order.
    """
    if max_per_prompt is None:
        return df
    order = shuffle_order(df.height, seed)
    codes = df["prompt"].to_physical().cast(pl.Int64).fill_null(-1).to_numpy()
    keep = (rank_in_group(codes, order) < max_per_prompt) & (codes >= 0)
    return df.filter(pl.Series(keep))


def _assign_buckets(df: pl.DataFrame, bucket_set: BucketSet) -> pl.DataFrame:
    """Add ``bucket_id`` of ``(height, width)``; rows whose size is not a bucket are dropped."""
    bucket_frame = pl.DataFrame(
        {
            "height": [h for h, _ in bucket_set.buckets],
            "width": [w for _, w in bucket_set.buckets],
            "bucket_id": [bucket_set.index(h, w) for h, w in bucket_set.buckets],
        },
        schema={"height": pl.Int64, "width": pl.Int64, "bucket_id": pl.Int64},
    ).unique(subset=["height", "width"], keep="first")
    return df.join(bucket_frame, on=["height", "width"], how="inner").sort("_file", "_row")


def _index_frame(df: pl.DataFrame, paths: Sequence[str], locator: RowLocator) -> pl.DataFrame:
    """The index: rows located in their row groups, in (path, row group, row) order, numbered."""
    group, index = locator.locate(df["_file"].to_numpy(), df["_row"].to_numpy())
    return pl.DataFrame(
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


def _count_buckets(out: pl.DataFrame, bucket_set: BucketSet) -> list[dict[str, int]]:
    """Rows per bucket, every bucket of the set (empty ones too)."""
    counts = dict(out.group_by("bucket_id").len().iter_rows())
    return [
        {"bucket_id": i, "height": h, "width": w, "rows": int(counts.get(i, 0))}
        for i, (h, w) in enumerate(bucket_set.buckets)
    ]


def _count_models(df: pl.DataFrame) -> dict[str, dict[str, int]]:
    """{model: {"chosen": rows as model1, "rejected": rows as model2}}; missing names as ""."""
    out: dict[str, dict[str, int]] = {}
    for col, role in (("model1", "chosen"), ("model2", "rejected")):
        for name, n in df.group_by(pl.col(col).fill_null("")).len().iter_rows():
            out.setdefault(name, {"chosen": 0, "rejected": 0})[role] = int(n)
    return dict(sorted(out.items()))


def _report_malformed(bad: pl.DataFrame, locator: RowLocator, paths: Sequence[str]) -> list[dict[str, Any]]:
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
            {"parquet_path": paths[f], "row_group": g, "row_index": i, "reason": malformed_reason(raw)}
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


def _log_stats(stats: IndexStats) -> None:
    log.info(
        "index: %d rows in %d file(s); %d malformed; %d after filter; %d after cap of %s per prompt; "
        "%d not in a bucket; %d indexed",
        stats.rows_in,
        stats.files,
        stats.malformed,
        stats.after_filter,
        stats.after_cap,
        stats.max_per_prompt,
        stats.not_in_buckets,
        stats.indexed,
    )
    for directory, status in stats.incomplete_outputs.items():
        log.warning(
            "indexed '%s' although its encode run has not completed (manifest status %r)", directory, status
        )
