"""Scanning part files for the fields an index needs, never the latents.

Only the small columns are read (``prompt``, ``model1``, ``model2``,
``latent1_shape``, and ``detailed_results`` or the typed extras), with
``pl.scan_parquet`` in slices of :data:`BATCH_ROWS` rows, a few slices at a
time; the latent columns are never read. Text is kept as ``Categorical``
after the filter. Files written by the reference carry only the
``detailed_results`` string, parsed by :mod:`hpd_encode.index.results`; files
written by ``hpd-encode`` carry typed columns that are used directly.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import polars as pl

from hpd_encode.errors import IndexInputError
from hpd_encode.index.filters import FILTER_FIELDS, TEXT_FIELDS
from hpd_encode.index.parts import Part
from hpd_encode.index.results import DR_FIELDS, Key, fast_parse, general_parse
from hpd_encode.schema import LATENT_DOWN_FACTOR
from hpd_encode.store import is_remote, storage_options

# Rows scanned and parsed at a time (bounds the memory for the strings).
BATCH_ROWS = 100_000
# Batches scanned at once (each holds about 100 MB while it is parsed).
SCAN_THREADS = 4


def part_frame(
    part: Part,
    file_idx: int,
    keys: Sequence[Key],
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
        raise IndexInputError(f"'{part.path}' has no 'prompt' column: is it a part file?")
    exprs: list[pl.Expr] = [
        pl.lit(file_idx, dtype=pl.Int32).alias("_file"),
        pl.col("_row").cast(pl.Int64),
    ]
    text = [c for c in TEXT_FIELDS if c in cols and (models or c == "prompt")]
    wanted = list(text)
    exprs += [
        pl.col(c).cast(pl.String) if c in text else pl.lit(None, pl.String).alias(c) for c in TEXT_FIELDS
    ]
    if "height" in cols and "width" in cols:
        wanted += ["height", "width"]
        exprs += [pl.col("height").cast(pl.Int64), pl.col("width").cast(pl.Int64)]
    elif "latent1_shape" in cols:
        wanted.append("latent1_shape")
        shape = pl.col("latent1_shape")
        exprs += [
            (shape.list.get(-2, null_on_oob=True).cast(pl.Int64) * LATENT_DOWN_FACTOR).alias("height"),
            (shape.list.get(-1, null_on_oob=True).cast(pl.Int64) * LATENT_DOWN_FACTOR).alias("width"),
        ]
    else:
        raise IndexInputError(f"'{part.path}' has neither 'height'/'width' nor 'latent1_shape' columns")

    needed = {f for k in keys for f in k.fields}
    typed = all(f in cols for f in DR_FIELDS)
    if keys and not typed and "detailed_results" not in cols:
        missing = [f for f in DR_FIELDS if f not in cols]
        raise IndexInputError(
            f"'{part.path}' lacks the columns {missing} and has no 'detailed_results' to parse them from"
        )
    if not keys:
        pass  # nothing to read: no filter
    elif typed:
        wanted += [f for f in DR_FIELDS if f in needed]
    else:
        wanted.append("detailed_results")
    options = storage_options() if is_remote(part.path) else None
    scan = pl.scan_parquet(part.path, row_index_name="_row", glob=False, storage_options=options)
    scan = scan.slice(offset, length)
    lf = scan.select("_row", *wanted).collect(engine="streaming").rechunk().lazy()
    if keys and typed:
        exprs += [
            pl.col(f).cast(FILTER_FIELDS[f]) if f in needed else pl.lit(None, FILTER_FIELDS[f]).alias(f)
            for f in DR_FIELDS
        ]
        exprs += [pl.lit(False).alias("_fallback"), pl.lit(None, pl.String).alias("_raw")]
    elif keys:
        dr = pl.col("detailed_results").cast(pl.String)
        stage1, fields, ok = fast_parse(dr, keys)
        lf = lf.with_columns(stage1)
        exprs += fields
        exprs += [(~ok).alias("_fallback"), pl.when(ok).then(None).otherwise(dr).alias("_raw")]
    else:
        exprs += [pl.lit(None, FILTER_FIELDS[f]).alias(f) for f in DR_FIELDS]
        exprs += [pl.lit(False).alias("_fallback"), pl.lit(None, pl.String).alias("_raw")]
    order = ["_file", "_row", *FILTER_FIELDS, "_fallback", "_raw"]
    return lf.select(exprs).select(order)


@dataclass
class Scanned:
    """Every row that passed the filter expression, and the malformed rows."""

    rows: pl.DataFrame  # _file, _row, FILTER_FIELDS (text as Categorical); sorted by (_file, _row)
    malformed: pl.DataFrame  # _file, _row, _raw of rows whose detailed_results could not be parsed


def scan_parts(
    parts: Sequence[Part],
    keys: Sequence[Key],
    expr: pl.Expr | None,
    models: bool,
    desc: str | None,
) -> Scanned:
    """Scan every part in batches, a few at once, keep the rows ``expr`` keeps
    (null counts as false), and parse the fast pass's leftovers the tolerant way."""
    keep = pl.lit(True) if expr is None else expr.fill_null(False)

    def scan(job: tuple[int, int]) -> pl.DataFrame:
        # A batch of rows at a time: memory holds a batch's strings, not all of them.
        i, offset = job
        try:
            lf = part_frame(parts[i], i, keys, offset, BATCH_ROWS, models)
            if expr is not None:
                # Rows the fast pass could not read ride along; they are parsed and filtered below.
                lf = lf.filter(pl.col("_fallback") | keep)
            return lf.with_columns(pl.col(TEXT_FIELDS).cast(pl.Categorical)).collect()
        except pl.exceptions.PolarsError as e:
            raise IndexInputError(f"scanning '{parts[i].path}' failed (filter: {desc}): {e}") from e

    jobs = [(i, o) for i, p in enumerate(parts) for o in range(0, max(p.num_rows, 1), BATCH_ROWS)]
    # Each batch runs mostly on one core (Polars releases the GIL): run a few at once.
    with ThreadPoolExecutor(max_workers=max(1, min(SCAN_THREADS, len(jobs), os.cpu_count() or 1))) as pool:
        frames = list(pool.map(scan, jobs))
    df = pl.concat(frames, how="vertical")
    del frames

    bad = df.clear()
    if df["_fallback"].any():
        fixed = general_parse(df.filter(pl.col("_fallback")), "_raw", keys)
        bad = fixed.filter(pl.col("_malformed"))
        good = fixed.filter(~pl.col("_malformed")).drop("_malformed")
        if expr is not None:
            good = good.with_columns(pl.col(TEXT_FIELDS).cast(pl.String)).filter(keep)
            good = good.with_columns(pl.col(TEXT_FIELDS).cast(pl.Categorical))
        df = pl.concat([df.filter(~pl.col("_fallback")), good.select(df.columns)], how="vertical")
    return Scanned(
        rows=df.sort("_file", "_row"), malformed=bad.select("_file", "_row", "_raw").sort("_file", "_row")
    )
