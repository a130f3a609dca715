"""Surveying a dataset: read the metadata, and probe every distinct image it
names (header only, opened beneath the data root in Rust), as columns.

Both in one pass (``metadata.read_metadata_and_probe``, ``rust/survey.rs``):
the Rust reader numbers each window's new image paths and probes them as tasks
on the pool while it cuts and parses the next windows, so the metadata's serial
part (following a JSON list's structure) and the probe's kernel work overlap
instead of one leaving a core idle while the other runs.

``encode`` (one process) and ``check`` start here; under torchrun ``encode``
plans from each rank's share instead (``pipeline/shared.py``, which uses the
helpers here).
"""

from __future__ import annotations

import logging
import resource
import sys
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from hpd_encode import _core, record
from hpd_encode._core import PROBE_OK, PROBE_UNSAFE_PATH  # the probe outcome codes
from hpd_encode.failures import Failure
from hpd_encode.metadata import (
    ENTRY_COLUMNS,
    TABLE_SCHEMA,
    Metadata,
    path_column,
    read_metadata_and_probe,
    read_records,
)

log = logging.getLogger("hpd_encode.survey")


def cpu_seconds() -> float:
    """CPU time of this process so far: user + system, all threads (Rust's included)."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


class Steps:
    """Seconds and CPU seconds per named step, each from the end of the one before: ``step("probe")``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self._t, self._c = time.monotonic(), cpu_seconds()

    def __call__(self, name: str) -> None:
        now, cpu = time.monotonic(), cpu_seconds()
        self.seconds[name] = now - self._t
        self.cpu[name] = cpu - self._c
        self._t, self._c = now, cpu


@dataclass(frozen=True)
class Survey:
    """The metadata and the probed images of the records still to do.

    ``images`` has one row per distinct image path (``image_id`` is its row
    number): ``path``, ``height``, ``width`` (0 when not probed ok), ``kind``
    (a probe outcome code) and ``error``. ``records`` are the metadata's good
    records not already done, with ``id1``/``id2`` (image ids) and the sizes
    ``h1, w1, h2, w2``; ``pairable`` marks those whose two images probed ok.
    ``failures`` are the metadata's bad records and, for each record whose
    image is refused or unreadable, one failure (as ``failures.csv`` has it).
    """

    records: pl.DataFrame
    images: pl.DataFrame
    failures: list[Failure]
    n_entries: int
    n_done: int
    #: Seconds per step (``metadata_ids_and_probe``, ``sizes``; under torchrun those of
    #: ``plan_shared``, from ``read_metadata`` to ``order_and_batch``), and the CPU seconds of the
    #: process in each.
    timings: dict[str, float] = field(default_factory=dict)
    cpu_timings: dict[str, float] = field(default_factory=dict)
    #: Set when ``records`` were kept without their text (``survey(narrow=True)``): the metadata file,
    #: from which :meth:`with_record_columns` reads the text of the rows planned, by byte offset.
    metadata: Path | None = None

    @property
    def pairable(self) -> pl.DataFrame:
        return self.records.filter(pl.col("pairable")).drop("pairable")

    #: The columns planning needs (no prompts or models: at HPDv3 scale those are most of the bytes).
    PLAN_COLUMNS = ("record_index", "path1", "path2", "id1", "id2", "h1", "w1", "h2", "w2")

    def pairable_for_planning(self) -> pl.DataFrame:
        """:attr:`pairable` narrowed to :attr:`PLAN_COLUMNS`, with ``_row`` (the row in
        :attr:`records`) so that :meth:`with_record_columns` can add the rest to the rows a rank keeps."""
        return (
            self.records.select(*self.PLAN_COLUMNS, "pairable")
            .with_row_index("_row")
            .filter(pl.col("pairable"))
            .drop("pairable")
        )

    def with_record_columns(self, rows: pl.DataFrame) -> pl.DataFrame:
        """``rows`` (planned from :meth:`pairable_for_planning`) with every column of a record again
        (read from the metadata file for those rows when :attr:`records` has no text), in the
        order of :data:`~hpd_encode.metadata.TABLE_SCHEMA` then the survey's and the plan's columns,
        without ``_row``."""
        at = rows["_row"].cast(pl.Int64).to_numpy()
        have = set(rows.columns)
        keep = [c for c in self.records.columns if c not in have and c not in ("pairable", *ENTRY_COLUMNS)]
        parts = [rows, self.records.select(keep)[at]]
        if self.metadata is not None:
            where = self.records.select(*ENTRY_COLUMNS)[at]
            text = read_records(
                self.metadata,
                rows["record_index"].to_numpy(),
                where["entry_offset"].to_numpy(),
                where["entry_len"].to_numpy(),
            )
            parts.append(text.select(_TEXT))
        return in_record_order(pl.concat(parts, how="horizontal"))


def in_record_order(rows: pl.DataFrame) -> pl.DataFrame:
    """A planned row's columns in one order, however they were put together:
    :data:`~hpd_encode.metadata.TABLE_SCHEMA`'s first, then the others as they
    come (the survey's ids and sizes, the plan's bucket and size); no ``_row``."""
    return rows.select([*TABLE_SCHEMA] + [c for c in rows.columns if c not in TABLE_SCHEMA and c != "_row"])


#: The record columns only the writer needs (most of the bytes at HPDv3 scale).
_TEXT = record.TEXT_FIELDS


def survey(
    data_root: str | Path,
    metadata: str | Path,
    *,
    limit: int | None = None,
    done: Collection[int] = (),
    num_threads: int | None = None,
    max_pixels: int = _core.DEFAULT_MAX_PIXELS,
    progress: bool = False,
    narrow: bool = False,
) -> Survey:
    """Read ``metadata`` and probe its images under ``data_root`` (one process;
    under torchrun each rank takes its share instead: ``pipeline/shared.py``).

    ``done`` are record indices already encoded (skipped). ``progress``
    shows a progress bar on a terminal while probing. ``narrow``: keep the
    records without their prompts and models (where each entry is instead;
    :meth:`Survey.with_record_columns` reads them again for the rows planned).
    """
    step = Steps()
    timings = step.seconds
    meta, images, h, w, kinds, errors = _read_and_probe(
        Path(data_root), metadata, limit, done, num_threads, max_pixels, progress, not narrow
    )
    table = meta.table
    if narrow and meta.entries is not None:
        table = pl.concat([table.drop(*_TEXT), meta.entries], how="horizontal")
    failures = list(meta.failures)
    n_entries = meta.n_entries
    del meta
    table, n_done = without_done(table, done)
    step("metadata_ids_and_probe")
    error_of = {i: e for i, e in enumerate(errors) if e is not None}
    images = images.with_columns(
        pl.Series("height", h),
        pl.Series("width", w),
        pl.Series("kind", kinds),
        pl.Series("error", errors, dtype=pl.String),
    )
    table = with_sizes(table, h, w, kinds)
    failures += _record_failures(table.filter(~pl.col("pairable")), kinds, error_of)
    step("sizes")
    return Survey(
        records=table,
        images=images,
        failures=failures,
        n_entries=n_entries,
        n_done=n_done,
        timings=timings,
        cpu_timings=step.cpu,
        metadata=Path(metadata) if narrow else None,
    )


def _read_and_probe(
    root: Path,
    metadata: str | Path,
    limit: int | None,
    done: Collection[int],
    num_threads: int | None,
    max_pixels: int,
    progress: bool,
    text: bool,
) -> tuple[Metadata, pl.DataFrame, np.ndarray, np.ndarray, np.ndarray, list[str | None]]:
    """The metadata (its table with image ids ``id1``, ``id2``), the distinct image paths (``image_id``,
    ``path``) and their probes (heights, widths, kinds, reasons), in one pass: Rust probes the
    images of each window of the metadata while it reads the next (``_core.survey_metadata``). The
    records in ``done`` get no ids (their images are not probed). Without ``text`` the prompts and
    models are not kept (a narrow survey drops them)."""
    skip = np.sort(np.fromiter(done, dtype=np.int64, count=len(done)))
    counter = _core.Counter()
    with _ProbeProgress(counter, progress):
        meta, found = read_metadata_and_probe(
            metadata,
            root,
            limit,
            skip=skip,
            num_threads=num_threads,
            max_pixels=max_pixels,
            counter=counter,
            text=text,
        )
    images = pl.DataFrame({"path": path_column(found.ids)}).with_row_index("image_id")
    h, w, kinds, errors = found.probe_heights, found.probe_widths, found.probe_kinds, found.probe_errors
    return meta, images, h, w, kinds, errors


class _ProbeProgress:
    """A progress bar of the images probed so far (``counter``) while the survey runs, on a
    terminal and when asked for (the total is not known until the metadata is read)."""

    def __init__(self, counter: Any, enabled: bool) -> None:
        self.counter, self.enabled = counter, enabled and sys.stderr.isatty()
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def __enter__(self) -> _ProbeProgress:
        if self.enabled:
            self.thread = threading.Thread(target=self._run, daemon=True)
            self.thread.start()
        return self

    def _run(self) -> None:
        from tqdm.auto import tqdm

        with tqdm(unit="img", desc="probe") as bar:
            while not self.stop.wait(0.2):
                bar.update(self.counter.value - bar.n)
            bar.update(self.counter.value - bar.n)

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join()


def without_done(table: pl.DataFrame, done: Collection[int]) -> tuple[pl.DataFrame, int]:
    """``table`` without the records already done, and how many those were."""
    if not done:
        return table, 0
    done_arr = np.fromiter(done, dtype=np.int64, count=len(done))
    kept = table.filter(pl.Series(~np.isin(table["record_index"].to_numpy(), done_arr)))
    return kept, table.height - kept.height


def with_sizes(table: pl.DataFrame, height: np.ndarray, width: np.ndarray, kinds: np.ndarray) -> pl.DataFrame:
    """``table`` (with image ids ``id1``, ``id2``) with its images' sizes ``h1, w1, h2, w2`` and
    ``pairable`` (both probed ok), from per-image arrays."""
    id1, id2 = table["id1"].to_numpy(), table["id2"].to_numpy()
    return table.with_columns(
        pl.Series("h1", height[id1]),
        pl.Series("w1", width[id1]),
        pl.Series("h2", height[id2]),
        pl.Series("w2", width[id2]),
        pl.Series("pairable", (kinds[id1] == PROBE_OK) & (kinds[id2] == PROBE_OK)),
    )


def _record_failures(bad: pl.DataFrame, kinds: np.ndarray, error_of: dict[int, str]) -> list[Failure]:
    """One failure per record with a refused or unreadable image: a refused
    path first (stage ``path``), else every unreadable image's reason."""
    out = []
    for r in bad.select("record_index", "path1", "path2", "id1", "id2").iter_rows(named=True):
        ids = (r["id1"], r["id2"]) if r["id1"] != r["id2"] else (r["id1"],)
        unsafe = [error_of[i] for i in ids if kinds[i] == PROBE_UNSAFE_PATH]
        if unsafe:
            out.append(Failure(r["record_index"], "path", "unsafe_path", unsafe[0], r["path1"], r["path2"]))
        else:
            errs = [error_of[i] for i in ids if kinds[i] != PROBE_OK]
            out.append(
                Failure(
                    r["record_index"], "probe", "unreadable_image", "; ".join(errs), r["path1"], r["path2"]
                )
            )
    return out


def _probe_all(
    root: Path, rels: pl.Series, num_threads: int | None, max_pixels: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str | None]]:
    """Probe in chunks (only a chunk's paths as Python strings at a time)."""
    step = 1 << 16
    parts = [
        _probe(root, rels.slice(a, step).to_list(), num_threads, max_pixels)
        for a in range(0, len(rels), step)
    ]
    if not parts:
        return _probe(root, [], num_threads, max_pixels)
    return (
        np.concatenate([p[0] for p in parts]),
        np.concatenate([p[1] for p in parts]),
        np.concatenate([p[2] for p in parts]),
        [e for p in parts for e in p[3]],
    )


def _probe(
    root: Path, rels: list[str], num_threads: int | None, max_pixels: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str | None]]:
    """Probe images named relative to ``root`` (opened beneath it, in Rust):
    heights, widths, outcome codes, reasons."""
    h, w, kind, errors = _core.probe_paths(str(root), rels, num_threads=num_threads, max_pixels=max_pixels)
    return np.asarray(h, np.int64), np.asarray(w, np.int64), np.asarray(kind, np.uint8), list(errors)
