"""Rewrite part files into the random-access layout.

Part files written by the reference pipeline, by pyarrow with its defaults, or
by earlier versions of hpd-encode store a row group's latents in one or a few
large pages, so reading one pair decodes the whole row group. :func:`repack`
rewrites them so that every ``latent1``/``latent2`` value is its own data page
and the offset index (page index) is written: one pair is then two small
positional reads (see :mod:`hpd_encode.latents.reader`).

Every column's values are kept as they are (the latent ``.npy`` bytes are
identical), and so are the schema and the row-group boundaries, so an index
built on the repacked directory equals the one built on the source except for
the paths. Files are written under a temporary name, fsynced and renamed;
a rerun skips the files already complete in the destination.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from hpd_encode.errors import InputNotFoundError, OptionError
from hpd_encode.output_dir import (
    FAILURES,
    MANIFEST,
    SUMMARY,
    OutputLock,
    fsync_path,
    list_part_files,
    read_manifest,
    require_complete,
    write_json_atomic,
)
from hpd_encode.schema import LATENT_COMPRESSIONS

log = logging.getLogger(__name__)

#: The columns that get one data page per value.
LATENT_COLUMNS = ("latent1", "latent2")


#: Codecs :func:`repack` offers for the latent columns (the writer's; the first, ``"none"``, is the default).
LATENT_CODECS = LATENT_COMPRESSIONS


def paged_write_options(schema: pa.Schema, latent_compression: str = "none") -> dict[str, Any]:
    """``pyarrow.parquet`` writer options for the random-access layout.

    One value per data page (``write_batch_size=1`` with a 1-byte page size
    limit closes a page after every value), the offset index written, no
    dictionary for the latents, and no statistics on the latent columns (their
    min/max would copy whole latents into the footer and the column index).
    pyarrow applies the page size to every column; the small columns' extra
    page headers cost a few tens of kilobytes per row group.

    ``latent_compression="none"`` (the default, as our writer's) stores the
    latents uncompressed: zstd saves only ~8 % on float latents and costs
    more CPU than the read itself (warm batch reads: 1.9 GB of latents per
    CPU-second uncompressed, 0.76 with zstd), so uncompressed latents keep
    readers and ``verify`` at disk speed. ``"zstd"`` suits storage-bound setups.
    """
    if latent_compression not in LATENT_CODECS:
        raise OptionError(f"latent_compression must be one of {LATENT_CODECS}, not {latent_compression!r}")
    names = schema.names
    return {
        "compression": {n: latent_compression if n in LATENT_COLUMNS else "zstd" for n in names},
        "write_batch_size": 1,
        "data_page_size": 1,
        "write_page_index": True,
        "use_dictionary": [n for n in names if n not in LATENT_COLUMNS],
        "write_statistics": [n for n in names if n not in LATENT_COLUMNS],
    }


def write_paged_table(
    table: pa.Table, path: str | PathLike[str], row_group_size: int = 100, latent_compression: str = "none"
) -> None:
    """Write ``table`` to ``path`` in the random-access layout (row groups of ``row_group_size``)."""
    options = paged_write_options(table.schema, latent_compression)
    pq.write_table(table, path, row_group_size=row_group_size, **options)


@dataclass
class RepackReport:
    """What :func:`repack` did."""

    src_dir: str
    dest_dir: str
    files_written: list[str] = field(default_factory=list)
    files_skipped: list[str] = field(default_factory=list)
    rows: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_dirs(src: Path, dest: Path) -> None:
    if not src.is_dir():
        raise InputNotFoundError(f"source directory '{src}' does not exist")
    s, d = src.resolve(), dest.resolve()
    if d == s:
        raise OptionError(f"destination '{dest}' is the source directory; repack into a new directory")
    if s in d.parents:
        raise OptionError(
            f"destination '{dest}' is inside the source directory '{src}'; choose one outside it"
        )


def _is_complete_copy(src: pq.ParquetFile, dest: Path) -> bool:
    """True when ``dest`` is a finished repack of ``src`` (same row groups, paged latents)."""
    from hpd_encode._core import latent_layout

    if not dest.is_file():
        return False
    try:
        rows, paged = latent_layout(dest)
        dest_schema = pq.read_schema(dest)
    except (OSError, ValueError, IndexError):
        return False
    src_rows = [src.metadata.row_group(i).num_rows for i in range(src.metadata.num_row_groups)]
    return paged and rows == src_rows and dest_schema.equals(src.schema_arrow, check_metadata=False)


def _repack_file(src_path: Path, dest_path: Path, latent_compression: str) -> int:
    """Rewrite one file; returns its row count."""
    tmp = dest_path.with_name(f".{dest_path.name}.tmp-{os.getpid()}")
    src = pq.ParquetFile(src_path)
    schema = src.schema_arrow
    rows = 0
    try:
        with pq.ParquetWriter(tmp, schema, **paged_write_options(schema, latent_compression)) as writer:
            for g in range(src.num_row_groups):
                table = src.read_row_group(g)
                # One source row group -> one destination row group: the index's
                # (row_group, row_index) positions stay the same.
                writer.write_table(table, row_group_size=max(1, table.num_rows))
                rows += table.num_rows
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dest_path)
        fsync_path(dest_path.parent)
    finally:
        tmp.unlink(missing_ok=True)
    return rows


def _refuse_if_busy(directory: Path, allow_partial: bool, what: str) -> None:
    """Refuse a directory whose lock another process holds (an encode writing it)."""
    from hpd_encode.latents.verify import lock_holder_if_busy

    holder = lock_holder_if_busy(directory)
    if holder is None:
        return
    from hpd_encode.errors import OutputBusyError

    msg = f"'{directory}' is in use: {holder}"
    if not allow_partial:
        raise OutputBusyError(
            f"{msg}; wait for it to finish, or pass --allow-partial to {what} what is committed"
        )
    log.warning("%s; going on with what is committed (--allow-partial)", msg)


def repack(
    src_dir: str | PathLike[str],
    dest_dir: str | PathLike[str],
    *,
    allow_partial: bool = False,
    progress: bool = True,
    latent_compression: str = "none",
) -> RepackReport:
    """Rewrite the part files of ``src_dir`` into ``dest_dir`` in the random-access layout.

    Refuses a ``dest_dir`` equal to or inside ``src_dir``, a source whose
    encode run has not completed (unless ``allow_partial``), and a
    destination another process holds. ``manifest.json``, ``summary.json``
    and ``failures.csv`` are copied (the manifest's file list describes the
    new files). Rerunning after an interruption skips the files already done.
    ``latent_compression`` is ``"none"`` (default) or ``"zstd"`` (as the
    reference; see :func:`paged_write_options`).
    """
    if latent_compression not in LATENT_CODECS:
        raise OptionError(f"latent_compression must be one of {LATENT_CODECS}, not {latent_compression!r}")
    src, dest = Path(src_dir), Path(dest_dir)
    _check_dirs(src, dest)
    manifest = require_complete(src, allow_partial, "repack")
    _refuse_if_busy(src, allow_partial, "repack")
    parts = list_part_files(src)
    if not parts:
        raise InputNotFoundError(f"'{src}' holds no part files (part_rankNN*.parquet)")
    report = RepackReport(src_dir=str(src), dest_dir=str(dest))
    t0 = time.monotonic()
    dest.mkdir(parents=True, exist_ok=True)
    with OutputLock(dest, purpose="repack"):
        for stale in dest.glob(".part_rank*.parquet.tmp-*"):  # left by a killed repack; we hold the lock
            stale.unlink(missing_ok=True)
        bar = None
        if progress and sys.stderr.isatty():
            from tqdm import tqdm

            bar = tqdm(total=sum(p.stat().st_size for p in parts), unit="B", unit_scale=True, desc="repack")
        for part in parts:
            target = dest / part.name
            size = part.stat().st_size
            src_file = pq.ParquetFile(part)
            if _is_complete_copy(src_file, target):
                report.files_skipped.append(part.name)
                report.rows += src_file.metadata.num_rows
            else:
                report.rows += _repack_file(part, target, latent_compression)
                report.files_written.append(part.name)
                report.bytes_read += size
                report.bytes_written += target.stat().st_size
            if bar is not None:
                bar.update(size)
        if bar is not None:
            bar.close()
        for name in (SUMMARY, FAILURES):
            if (src / name).is_file():
                data = (src / name).read_bytes()
                tmp = dest / f".{name}.tmp-{os.getpid()}"
                try:
                    tmp.write_bytes(data)
                    os.replace(tmp, dest / name)
                finally:
                    tmp.unlink(missing_ok=True)
        if manifest is not None or read_manifest(src) is not None:
            new = dict(manifest or read_manifest(src) or {})
            new["files"] = [
                {"path": p.name, "rows": pq.ParquetFile(p).metadata.num_rows, "bytes": p.stat().st_size}
                for p in list_part_files(dest)
                if p.name in {q.name for q in parts}
            ]
            new["repacked_from"] = str(src.resolve())
            write_json_atomic(dest / MANIFEST, new)
    report.seconds = round(time.monotonic() - t0, 3)
    return report
