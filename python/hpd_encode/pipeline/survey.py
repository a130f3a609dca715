"""Surveying a dataset: read the metadata, and probe every distinct image it
names (header only, opened beneath the data root in Rust), as columns.

One survey for one process and for each torchrun rank, the ranks a parameter
(``comm``, a :class:`~hpd_encode.dist.Dist`; one process is a world of one):

1. Rank *r* reads its share of the metadata (``metadata.read_metadata``: its
   byte range of the file, or with ``--limit`` every *n*-th of the first
   entries; one process reads it all) and meanwhile numbers the distinct image
   paths of its good records, each with a stable 64-bit hash of the path
   (``rust/metadata/survey.rs``).
2. The ranks all-gather their sorted hashes; an image's id is its position among
   all of them, so ids agree everywhere, and each image is probed by one of the
   ranks that saw it, picked by its hash (``_core.image_owners``), which sends
   the size to the ranks that saw it. A rank that is known to probe every image
   it sees (one process) probes them while it reads instead, as tasks on the
   pool between the windows of the metadata: the metadata's serial part and the
   probe's kernel work then overlap.
3. Each record gets its images' sizes; a record whose image is refused or
   unreadable becomes a failure.

``check`` uses the survey alone; ``encode`` plans from it
(:func:`hpd_encode.pipeline.plan.plan`).
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

from hpd_encode import _core
from hpd_encode._core import PROBE_OK, PROBE_UNSAFE_PATH, image_owners  # the probe outcome codes
from hpd_encode.dist import Dist
from hpd_encode.errors import DistError
from hpd_encode.failures import Failure
from hpd_encode.metadata import ENTRY_COLUMNS, ImagesWhileReading, Share, path_column, read_metadata
from hpd_encode.pipeline.options import SurveyOptions

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
    """This rank's share of the metadata and the probed images of its records still to do.

    ``records`` are the good records of this rank's share not already done, with image ids
    ``id1``/``id2`` (the same on every rank), the sizes ``h1, w1, h2, w2`` and ``pairable`` (both
    images probed ok); without their prompts and models when read narrow (``entry_offset`` and
    ``entry_len`` say where each record is, to read the rows planned again). ``kinds`` is each
    image's probe outcome code by id (0 for the images of other ranks' records), ``errors`` the
    reasons of the images that did not probe ok. ``failures`` are the share's bad records and,
    for each record whose image is refused or unreadable, one failure (as ``failures.csv`` has
    it). :attr:`images` has one row per distinct image of this rank's records (all of them for
    one process), by id: ``image_id``, ``path``, ``height``, ``width`` (0 when not probed ok),
    ``kind`` and ``error``; built when asked for, from ``paths`` (this rank's distinct image
    paths by local id), ``image_ids`` (each one's image id) and ``heights``/``widths`` (by image
    id), which is all a survey keeps of them.
    """

    records: pl.DataFrame
    paths: pl.Series
    image_ids: np.ndarray
    heights: np.ndarray
    widths: np.ndarray
    failures: list[Failure]
    n_entries: int  # entries in the metadata (every rank's)
    n_done: int  # records of this share already done
    n_images: int  # distinct images over every rank
    kinds: np.ndarray
    errors: dict[int, str]
    metadata: Path  # the file, to read the text of the rows planned again
    #: Seconds and CPU seconds per step.
    timings: dict[str, float] = field(default_factory=dict)
    cpu_timings: dict[str, float] = field(default_factory=dict)

    @property
    def images(self) -> pl.DataFrame:
        order = np.argsort(self.image_ids, kind="stable")
        ids = self.image_ids[order]
        return pl.DataFrame(
            {
                "image_id": ids,
                "path": self.paths.gather(order),
                "height": self.heights[ids],
                "width": self.widths[ids],
                "kind": self.kinds[ids],
                "error": _by_id(ids, self.errors),
            }
        )

    @property
    def pairable(self) -> pl.DataFrame:
        return self.records.filter(pl.col("pairable")).drop("pairable")

    #: The columns planning needs (no prompts or models: at HPDv3 scale those are most of the bytes).
    PLAN_COLUMNS = ("record_index", "path1", "path2", "id1", "id2", "h1", "w1", "h2", "w2", *ENTRY_COLUMNS)

    def pairable_for_planning(self) -> pl.DataFrame:
        """:attr:`pairable` narrowed to :attr:`PLAN_COLUMNS`."""
        # Narrowed before it is filtered: a filter copies every column it is given.
        return self.records.select(*self.PLAN_COLUMNS, "pairable").filter(pl.col("pairable")).drop("pairable")


def survey(
    opts: SurveyOptions,
    comm: Dist | None = None,
    *,
    done: Collection[int] = (),
    text: bool = True,
    progress: bool = False,
) -> Survey:
    """Read this rank's share of the metadata and probe its images (``comm``: the ranks; None for
    one process).

    ``done`` are record indices already encoded (skipped). ``progress`` shows a progress bar of
    the probe on a terminal (one process). Without ``text`` the records keep no prompts or
    models (read them again for the rows planned: :func:`hpd_encode.metadata.read_records`).
    """
    comm = comm or Dist()
    alone = comm.world_size == 1
    step = Steps()
    skip = np.sort(np.fromiter(done, dtype=np.int64, count=len(done)))
    counter = _core.Counter()
    root = Path(opts.data_root)
    with _ProbeProgress(counter, progress and alone):
        meta = read_metadata(
            opts.metadata,
            opts.limit,
            num_threads=opts.num_threads,
            share=Share(comm.rank, comm.world_size, comm.all_gather),
            text=text,
            images=ImagesWhileReading(root, skip, opts.max_pixels, counter, probe=alone),
        )
        assert meta.images is not None and meta.entries is not None
        table, n_done = without_done(pl.concat([meta.table, meta.entries], how="horizontal"), done)
        local = _LocalImages.of(meta.images)
    failures, n_entries = list(meta.failures), meta.n_entries
    del meta
    step("read_metadata")

    # Image ids: positions among every rank's distinct hashes; who probes what.
    hashes = local.ids.take_hashes()
    order = np.argsort(hashes, kind="stable")
    seen = hashes[order]
    if np.any(seen[1:] == seen[:-1]):
        raise DistError("two image paths of this share of the metadata have the same 64-bit hash")
    n, ids, probe, seer_start, seers = image_owners(comm.all_gather_array(seen), comm.rank)
    global_id = np.empty(len(hashes), dtype=np.int64)
    global_id[order] = ids
    paths = path_column(local.ids)
    del hashes, seen
    step("image_ids")

    height, width = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    kinds = np.zeros(n, dtype=np.uint8)
    if alone:  # probed while reading, every image of this rank
        height[global_id], width[global_id], kinds[global_id] = local.height, local.width, local.kinds
        errors = {int(global_id[i]): e for i, e in enumerate(local.errors) if e is not None}
    else:
        at = order[probe]  # the local ids this rank probes
        h, w, kind, errs = _probe_all(root, paths.gather(at), opts.num_threads, opts.max_pixels)
        probed = np.empty(len(at), dtype=_probe_layout(n))
        probed["image"], probed["height"], probed["width"], probed["kind"] = global_id[at], h, w, kind
        got = _to_seers(comm, probed, seer_start, seers)
        if len(got) != len(ids):
            raise DistError(f"image sizes: {len(got)} received for the {len(ids)} images of this rank")
        idx = got["image"]
        height[idx], width[idx], kinds[idx] = got["height"], got["width"], got["kind"]
        errors = {}
        for mine in comm.all_gather({int(global_id[a]): e for a, e in zip(at, errs) if e is not None}):
            errors.update(mine)
    step("probe")

    id1, id2 = (table[c].to_numpy() for c in ("id1", "id2"))
    table = table.with_columns(
        pl.Series("id1", np.where(id1 >= 0, global_id[np.maximum(id1, 0)], -1)),
        pl.Series("id2", np.where(id2 >= 0, global_id[np.maximum(id2, 0)], -1)),
    )
    del id1, id2, local  # (views of the local ids, and the probes: copied above)
    table = with_sizes(table, height, width, kinds)
    failures += _record_failures(table.filter(~pl.col("pairable")), kinds, errors)
    step("sizes")
    return Survey(
        records=table,
        paths=paths,
        image_ids=global_id,
        heights=height,
        widths=width,
        failures=failures,
        n_entries=n_entries,
        n_done=n_done,
        n_images=n,
        kinds=kinds,
        errors=errors,
        metadata=Path(opts.metadata),
        timings=step.seconds,
        cpu_timings=step.cpu,
    )


@dataclass
class _LocalImages:
    """This rank's distinct image paths by local id (``ids``, a ``_core.PathIds``), and their probes
    when they were probed here (empty otherwise)."""

    ids: _core.PathIds
    height: np.ndarray
    width: np.ndarray
    kinds: np.ndarray
    errors: list[str | None]

    @classmethod
    def of(cls, found: _core.SurveyedMetadata) -> _LocalImages:
        return cls(found.ids, found.probe_heights, found.probe_widths, found.probe_kinds, found.probe_errors)


def _probe_layout(n_images: int) -> np.dtype:
    """One image's probe as the ranks exchange it (its id, its size, its outcome code)."""
    return np.dtype(
        [("image", image_id_type(n_images)), ("height", np.uint32), ("width", np.uint32), ("kind", np.uint8)]
    )


def image_id_type(n_images: int) -> type[np.signedinteger]:
    """Image ids in 32 bits while there are fewer than 2**31 images."""
    return np.int32 if n_images < 2**31 else np.int64


def _by_id(ids: np.ndarray, errors: dict[int, str]) -> pl.Series:
    """The reasons in ``errors`` (image id -> reason) for the images ``ids`` (ascending), null where
    there is none."""
    out = pl.repeat(None, len(ids), dtype=pl.String, eager=True)
    keys = np.fromiter(errors, dtype=np.int64, count=len(errors))
    pos = np.searchsorted(ids, keys)
    mine = (pos < len(ids)) & (ids[np.minimum(pos, len(ids) - 1)] == keys) if len(ids) else keys < 0
    if mine.any():
        out = out.scatter(pos[mine], [errors[int(k)] for k in keys[mine]])
    return out.alias("error")


def _to_seers(comm: Dist, probed: np.ndarray, seer_start: np.ndarray, seers: np.ndarray) -> np.ndarray:
    """Send each probed image (``probed[k]``) to the ranks that saw it (``seers[seer_start[k]:
    seer_start[k + 1]]``, this one among them); returns what every rank sent to this one: each of
    its images once."""
    copies = np.repeat(probed, np.diff(seer_start))
    by_rank = np.argsort(seers, kind="stable")
    copies, bounds = copies[by_rank], np.searchsorted(seers[by_rank], np.arange(comm.world_size + 1))
    got = comm.all_to_all_arrays([copies[bounds[r] : bounds[r + 1]] for r in range(comm.world_size)])
    return np.concatenate(got) if got else probed[:0]


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
