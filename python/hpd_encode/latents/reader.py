"""Reading training pairs through the bucket index.

:class:`LatentPairDataset` turns an index (the CSV that ``hpd-encode index``
writes) into a map-style dataset: ``ds[i]`` reads row ``i``'s two latents, and
``ds.__getitems__(positions)`` a whole batch in one call. Part files in the
random-access layout (one page per latent value, with an offset index) are
read by the Rust reader (``hpd_encode._core.read_pairs``): only the pages of
the rows asked for, in parallel, without the GIL. Older files are read a row
group at a time, with decoded row groups kept in a small LRU cache, so reading
them in index order (file and row-group order) reads each row group once.
Every latent is checked against its stored checksum (XXH3) when the file has one
(``verify_checksums=False`` opts out).

Each part file is opened once per process, and everything read from it is
keyed by the file's identity (device, inode, size, mtime), checked on every
call: a part replaced since (an atomic rename, a rewrite) is opened again and
read afresh, never the old file's prompt and votes with the new file's
latents; the Rust reader is told the identity the small columns came from
and refuses another file, and the batch is then read again once.

:class:`BucketBatchSampler` yields batches of dataset positions whose rows share
a bucket, so their latents stack; pass it to
``torch.utils.data.DataLoader(ds, batch_sampler=...)``.

Both work with DataLoader worker processes: each process opens its own files
and keeps its own cache (nothing is shared across ``fork``; a copy made by
pickling starts empty).
"""

from __future__ import annotations

import ast
import io
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Sequence
from os import PathLike
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from hpd_encode.errors import (
    InputNotFoundError,
    NotRegularFileError,
    OptionError,
    PartFileChangedError,
    PartFileError,
    RowOutOfRangeError,
)
from hpd_encode.files import open_regular, path_kind
from hpd_encode.index.table import read_index
from hpd_encode.schema import CHECKSUM_COLUMNS, LATENT_COLUMNS, LATENT_DOWN_FACTOR
from hpd_encode.store import is_remote
from hpd_encode.store import join as join_url

IndexLike = str | PathLike[str] | pl.DataFrame

_TYPED_VOTES = ("votes_chosen", "votes_rejected", "confidence")


def _resolve_part(path: str, root: Path | str | None, index_dir: Path | None) -> str:
    """Where a part file named in the index is: as written, under ``root``, or beside the index.
    An ``s3://`` URL is taken as it is (a missing object is an error at its first read); a
    relative path under an ``s3://`` root is joined to it."""
    if is_remote(path):
        return path
    if isinstance(root, str):
        return join_url(root, path)
    p = Path(path)
    if root is not None and not p.is_absolute():
        candidate = root / p
        if candidate.is_file():
            return str(candidate)
    elif p.is_file():
        return path
    if index_dir is not None and not p.is_absolute() and (index_dir / p).is_file():
        return str(index_dir / p)
    for candidate in [
        root / p if root is not None else p,
        *([index_dir / p] if index_dir is not None else []),
    ]:
        kind = path_kind(candidate)
        if kind not in (None, "regular file"):  # say what it is; never open it (a FIFO would block)
            raise NotRegularFileError(
                f"part file '{candidate}' named in the index is a {kind}, not a regular file"
            )
    where = [f"under '{root}'" if root is not None else "from the current directory"]
    if index_dir is not None:
        where.append(f"beside the index in '{index_dir}'")
    raise InputNotFoundError(
        f"part file '{path}' named in the index does not exist (looked {' and '.join(where)}); "
        "pass root= to say where the part files are"
    )


class _RowGroup:
    """One decoded row group: the needed columns, as Arrow arrays (pyarrow's reads) or Python
    lists (the Rust reader's); :meth:`value` reads one cell of either."""

    __slots__ = ("columns", "num_rows")

    def __init__(self, columns: dict[str, Any]) -> None:
        self.columns = columns
        self.num_rows = len(next(iter(columns.values()), []))

    @classmethod
    def from_table(cls, table: pa.Table) -> _RowGroup:
        return cls({name: table.column(name).combine_chunks() for name in table.column_names})

    def value(self, name: str, row: int) -> Any:
        v = self.columns[name][row]
        return v.as_py() if isinstance(v, pa.Scalar) else v


#: Row groups whose small columns (prompt, models, votes) are kept per process.
_SMALL_CACHE_GROUPS = 1024

#: The default ``max_request_bytes``: the latent bytes one ``__getitems__`` call may return,
#: 4 GiB (2,048 SD3.5-shaped 1024x1024 pairs of 2 MiB; a training batch is far below).
MAX_REQUEST_BYTES = 4 << 30

#: Items read per call into the reader when a request is large: the budget is checked between
#: chunks, so a refused request has read at most one chunk past what told it would not fit.
_REQUEST_CHUNK = 64

#: A local file's identity, ``(st_dev, st_ino, st_size, st_mtime_ns)``; None for an object
#: (the Rust reader checks its ETag on every read).
Identity = tuple[int, int, int, int] | None

_K = TypeVar("_K", bound=Hashable)
_V = TypeVar("_V")


class _Lru(Generic[_K, _V]):
    """A bounded map that forgets its least recently used entry: the reader's
    one cache mechanism (callers hold the dataset's lock)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[_K, _V] = OrderedDict()

    def get(self, key: _K, load: Callable[[], _V]) -> _V:
        """The value of ``key``, from ``load()`` (then kept) on a miss."""
        hit = self._items.get(key)
        if hit is not None:
            self._items.move_to_end(key)
            return hit
        value = self._items[key] = load()
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)
        return value

    def clear(self) -> None:
        self._items.clear()


def _identity(st: os.stat_result) -> Identity:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class _Part:
    """One part file as this process has it open: for a local file its own
    handle (what pyarrow reads through, so every small column comes from the
    file ``identity`` names; opened without blocking, so a FIFO named like a
    part file is refused), the columns to read, and whether the Rust reader
    serves its latents. An ``s3://`` object's columns are read by the Rust
    reader (its cached footer; one GET per row group for columns side by side)."""

    def __init__(self, path: str) -> None:
        from hpd_encode._core import latent_layout, part_file_columns

        self.path = path
        self.handle: io.BufferedReader | None = None
        self.pf: pq.ParquetFile | None = None
        self.identity: Identity = None
        try:
            if is_remote(path):
                names = set(part_file_columns(path))
                wanted = ["prompt", "model1", "model2"]
                # The reference's four small columns lie side by side: one GET per row group.
                wanted += ["detailed_results"] if "detailed_results" in names else list(_TYPED_VOTES)
            else:
                self.handle = open_regular(path, "part file")  # kept open: closed by close()
                self.identity = _identity(os.fstat(self.handle.fileno()))
                self.pf = pq.ParquetFile(self.handle)
                names = set(self.pf.schema_arrow.names)
                wanted = ["prompt", "model1", "model2"]
                wanted += (
                    list(_TYPED_VOTES) if all(c in names for c in _TYPED_VOTES) else ["detailed_results"]
                )
            missing = [c for c in [*wanted, *LATENT_COLUMNS] if c not in names]
            if missing:
                raise PartFileError(f"part file '{path}' lacks the column(s) {missing}")
            self.columns = wanted
            self.checksums = all(c in names for c in CHECKSUM_COLUMNS)
            self.paged: bool = latent_layout(path)[1]
        except BaseException:
            self.close()
            raise

    def read(self, group: int, columns: list[str]) -> _RowGroup:
        """``columns`` of row group ``group``."""
        if self.pf is None:
            from hpd_encode._core import read_row_group_columns

            return _RowGroup(read_row_group_columns(self.path, group, columns))
        if not 0 <= group < self.pf.num_row_groups:
            raise RowOutOfRangeError(
                f"'{self.path}' has {self.pf.num_row_groups} row groups, the index asks for "
                f"row group {group}: the index is stale; rebuild it"
            )
        return _RowGroup.from_table(self.pf.read_row_group(group, columns=columns))

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()


class LatentPairDataset:
    """A map-style dataset of latent pairs, through a bucket index.

    ``index`` is the index CSV (or the frame :func:`hpd_encode.build_index`
    returns). Relative ``parquet_path`` values are looked up from the current
    directory, then beside the CSV; ``root`` puts them under another directory.

    ``ds[i]`` (``i`` is a position in the index, which is sorted by
    ``global_id``) is a dict: ``global_id``, ``prompt``, ``model1``,
    ``model2``, ``latent1`` and ``latent2`` (``torch.Tensor``, float32 or
    float16 as stored, ``(C, H/8, W/8)``), ``height``, ``width``,
    ``bucket_id``, ``votes_chosen``, ``votes_rejected`` and ``confidence``
    (typed columns when the file has them, else ``detailed_results`` parsed
    with ``ast.literal_eval``; missing values read as the reference's
    defaults 0 and 0.0). ``ds.__getitems__(positions)`` returns the list of
    those dicts in one call: what ``torch.utils.data.DataLoader`` calls with
    a ``batch_sampler``, so a whole batch is read by the Rust reader at once,
    in parallel, with the GIL released.

    Part files in the random-access layout (every latent value its own page,
    with an offset index: what ``hpd-encode encode`` and ``hpd-encode
    repack`` write) are read one pair at a time, only the pages of the rows
    asked for. Files without it (the reference's, or earlier versions')
    are read a whole row group at a time, and ``cache_row_groups`` decoded
    row groups of them are kept per process (LRU; a row group of 100 SD3.5
    1024² pairs is about 200 MB, so keep it small); ``row_group_reads``
    counts those reads. ``num_threads`` bounds the reader's threads per
    process (default: all cores; with many DataLoader workers, 1 or 2 is
    plenty).

    Every latent read is checked against its stored checksum (files written
    since checksums exist; the reference's files have none and are read
    unchecked): a damaged latent raises
    :class:`~hpd_encode.errors.PartFileError` naming its file, row group and
    row. ``verify_checksums=False`` skips the check (measured cost: see
    README, "Reading for training"). A part file replaced while the dataset
    is in use is read afresh (see the module's description).

    ``max_request_bytes`` (default :data:`MAX_REQUEST_BYTES`, 4 GiB) bounds
    the latent bytes one ``__getitems__`` call may return: a larger request
    is read in chunks of 64 items and refused with
    :class:`~hpd_encode.errors.OutOfMemoryError` (a ``MemoryError``) as soon
    as it is clear it will not fit (after the first chunk, from its bytes per
    latent pixel and the index's sizes; at the latest when the running total
    passes the budget), instead of growing without bound.
    """

    def __init__(
        self,
        index: IndexLike,
        *,
        cache_row_groups: int = 4,
        root: str | PathLike[str] | None = None,
        num_threads: int | None = None,
        verify_checksums: bool = True,
        max_request_bytes: int = MAX_REQUEST_BYTES,
    ) -> None:
        if cache_row_groups < 1:
            raise OptionError(f"cache_row_groups must be at least 1, not {cache_row_groups}")
        if max_request_bytes < 1:
            raise OptionError(f"max_request_bytes must be at least 1, not {max_request_bytes}")
        self.max_request_bytes = max_request_bytes
        if num_threads is not None and num_threads < 1:
            raise OptionError(f"num_threads must be at least 1, not {num_threads}")
        df = read_index(index)
        index_dir = None if isinstance(index, pl.DataFrame) else Path(index).resolve().parent
        root_dir: Path | str | None = (
            None if root is None else os.fspath(root) if is_remote(os.fspath(root)) else Path(root)
        )
        names = df["parquet_path"].unique(maintain_order=True).to_list()
        self._paths = [_resolve_part(p, root_dir, index_dir) for p in names]
        file_of = {p: i for i, p in enumerate(names)}
        self._file = df["parquet_path"].replace_strict(file_of, return_dtype=pl.Int32).to_numpy()
        self._row_group = df["row_group"].to_numpy()
        self._row_index = df["row_index"].to_numpy()
        self._global_id = df["global_id"].to_numpy()
        self._height = df["height"].to_numpy()
        self._width = df["width"].to_numpy()
        self._bucket = df["bucket_id"].to_numpy()
        self.cache_row_groups = cache_row_groups
        self.num_threads = num_threads
        self.verify_checksums = verify_checksums
        self.row_group_reads = 0
        self._reset()

    # -- per-process state (files, caches, lock) -----------------------------

    _STATE = ("_lock", "_parts", "_groups", "_small", "_pid")

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._parts: dict[int, _Part] = {}
        # Keyed by (file, identity, row group): a replaced file never hits its predecessor's entries.
        self._groups: _Lru[tuple[int, Identity, int], _RowGroup] = _Lru(self.cache_row_groups)
        self._small: _Lru[tuple[int, Identity, int], _RowGroup] = _Lru(_SMALL_CACHE_GROUPS)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for key in self._STATE:
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    def close(self) -> None:
        """Close the open part files and drop the caches (reopened on the next read)."""
        with self._lock:
            for part in self._parts.values():
                part.close()
            self._parts.clear()
            self._groups.clear()
            self._small.clear()

    def __enter__(self) -> LatentPairDataset:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading -------------------------------------------------------------

    def _check_pid(self) -> None:
        if os.getpid() != self._pid:  # a forked DataLoader worker: its own files and caches
            self._reset()

    def _part(self, file_idx: int, fresh: bool = False) -> _Part:
        """The file as this process has it open (under ``self._lock``), opened
        again when the file at its path is no longer the one open (or ``fresh``)."""
        part = self._parts.get(file_idx)
        path = self._paths[file_idx]
        if part is not None and not fresh:
            if part.identity is None:  # an object: the Rust reader checks its ETag on every read
                return part
            try:
                if _identity(os.stat(path)) == part.identity:
                    return part
            except OSError:
                pass  # gone or unreadable: opening it again says why
        if part is not None:
            part.close()
            del self._parts[file_idx]
        part = self._parts[file_idx] = _Part(path)
        return part

    def _row_group_of(self, part: _Part, file_idx: int, group: int) -> _RowGroup:
        """An old-layout row group, latents (and checksums) included (LRU cache of ``cache_row_groups``)."""

        def load() -> _RowGroup:
            columns = [*part.columns, *LATENT_COLUMNS]
            if part.checksums and self.verify_checksums:
                columns += CHECKSUM_COLUMNS
            self.row_group_reads += 1
            return part.read(group, columns)

        with self._lock:
            return self._groups.get((file_idx, part.identity, group), load)

    def _small_of(self, part: _Part, file_idx: int, group: int) -> _RowGroup:
        """A row group's small columns (prompt, models, votes), cached per process."""

        def load() -> _RowGroup:
            return part.read(group, part.columns)

        with self._lock:
            return self._small.get((file_idx, part.identity, group), load)

    def __len__(self) -> int:
        return len(self._global_id)

    @property
    def bucket_ids(self) -> np.ndarray:
        """The bucket id of every position (what :class:`BucketBatchSampler` groups by)."""
        return self._bucket

    def _position(self, i: int) -> int:
        n = len(self)
        if not -n <= i < n:
            raise RowOutOfRangeError(f"index {i} out of range for a dataset of {n} rows")
        return int(i) % n

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        """The items at ``indices``, read together (one call into the Rust reader for the paged files;
        one per 64 items past that), within ``max_request_bytes`` of latents (see the class doc)."""
        indices = list(indices)
        if len(indices) <= _REQUEST_CHUNK:
            items = self._read_items(indices)
            self._check_budget(len(indices), _latent_bytes(items))
            return items
        items = []
        total = 0
        for start in range(0, len(indices), _REQUEST_CHUNK):
            chunk = self._read_items(indices[start : start + _REQUEST_CHUNK])
            got = _latent_bytes(chunk)
            total += got
            items += chunk
            if start == 0:  # the first chunk's bytes per latent pixel, over the whole request
                pixels = [self._latent_pixels(i) for i in indices]
                first = sum(pixels[: len(chunk)])
                self._check_budget(len(indices), total, round(got / max(first, 1) * sum(pixels)))
            self._check_budget(len(indices), total)
        return items

    def _latent_pixels(self, i: int) -> int:
        """Latent height x width of position ``i`` (from the index)."""
        p = self._position(int(i))
        return max(
            1, int(self._height[p]) // LATENT_DOWN_FACTOR * (int(self._width[p]) // LATENT_DOWN_FACTOR)
        )

    def _check_budget(self, n: int, total: int, estimate: int | None = None) -> None:
        need = max(total, estimate or 0)
        if need > self.max_request_bytes:
            from hpd_encode.errors import OutOfMemoryError

            about = "about " if estimate is not None and estimate > total else ""
            raise OutOfMemoryError(
                f"a request of {n} pairs needs {about}{need:,} bytes of latents, more than this dataset's "
                f"max_request_bytes ({self.max_request_bytes:,}); ask for fewer pairs per call (a smaller "
                "batch), or raise max_request_bytes"
            )

    def _read_items(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        """The items at ``indices``, read together (one call into the Rust reader for the paged files);
        a part replaced meanwhile is read again once."""
        self._check_pid()
        positions = [self._position(int(i)) for i in indices]
        where_of = [(int(self._file[i]), int(self._row_group[i]), int(self._row_index[i])) for i in positions]
        try:
            return self._items(positions, where_of, fresh=False)
        except PartFileChangedError:
            # A part was replaced between our look at it and the Rust reader's: read the batch again,
            # every file opened afresh (a second change in that time is raised).
            return self._items(positions, where_of, fresh=True)

    def _items(
        self, positions: list[int], where_of: list[tuple[int, int, int]], fresh: bool
    ) -> list[dict[str, Any]]:
        import torch

        from hpd_encode._core import read_pairs

        with self._lock:
            parts = {f: self._part(f, fresh) for f in sorted({f for f, _, _ in where_of})}
        paged_at: list[int] = []
        requests: list[tuple[str, int, int]] = []
        expect: list[Identity | None] = []
        for k, (f, g, r) in enumerate(where_of):
            if parts[f].paged:
                paged_at.append(k)
                requests.append((self._paths[f], g, r))
                expect.append(parts[f].identity)
        latents: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        if requests:
            read = read_pairs(
                requests, num_threads=self.num_threads, verify_checksums=self.verify_checksums, expect=expect
            )
            latents = dict(zip(paged_at, read))
        items = []
        for k, i in enumerate(positions):
            f, g, r = where_of[k]
            where = f"'{self._paths[f]}' row group {g} row {r}"
            part = parts[f]
            rg = self._small_of(part, f, g) if k in latents else self._row_group_of(part, f, g)
            if not 0 <= r < rg.num_rows:
                raise RowOutOfRangeError(
                    f"{where} does not exist (the row group has {rg.num_rows} rows): rebuild the index"
                )
            pair = latents.get(k)
            if pair is None:
                pair = (_old_layout_latent(rg, r, where, 0), _old_layout_latent(rg, r, where, 1))
            height, width = int(self._height[i]), int(self._width[i])
            for name, arr in zip(("latent1", "latent2"), pair):
                if (
                    arr.ndim < 2
                    or arr.shape[-2] * LATENT_DOWN_FACTOR != height
                    or arr.shape[-1] * LATENT_DOWN_FACTOR != width
                ):
                    raise PartFileError(
                        f"{where}: {name} has shape {arr.shape}, the index says {height}x{width}: "
                        "rebuild the index"
                    )
            if "detailed_results" in rg.columns:
                votes = _parse_votes(rg.value("detailed_results", r), where)
            else:
                votes = {c: rg.value(c, r) for c in _TYPED_VOTES}
            items.append(
                {
                    "global_id": int(self._global_id[i]),
                    "prompt": rg.value("prompt", r),
                    "model1": rg.value("model1", r),
                    "model2": rg.value("model2", r),
                    "latent1": torch.from_numpy(pair[0]),
                    "latent2": torch.from_numpy(pair[1]),
                    "height": height,
                    "width": width,
                    "bucket_id": int(self._bucket[i]),
                    "votes_chosen": int(votes["votes_chosen"] or 0),
                    "votes_rejected": int(votes["votes_rejected"] or 0),
                    "confidence": float(votes["confidence"] or 0.0),
                }
            )
        return items


def _latent_bytes(items: list[dict[str, Any]]) -> int:
    return sum(it["latent1"].nbytes + it["latent2"].nbytes for it in items)


def _old_layout_latent(rg: _RowGroup, r: int, where: str, k: int) -> np.ndarray:
    """Latent ``k`` of row ``r`` of an old-layout row group as an array,
    checked against its stored checksum when the row group was read with it."""
    from hpd_encode._core import latent_checksum

    name = LATENT_COLUMNS[k]
    data = rg.value(name, r)
    if data is None:
        raise PartFileError(f"{where}: {name} is null")
    stored = rg.value(CHECKSUM_COLUMNS[k], r) if CHECKSUM_COLUMNS[k] in rg.columns else None
    if stored is not None and latent_checksum(data) != stored:
        raise PartFileError(
            f"{where}: {name}: checksum mismatch: {CHECKSUM_COLUMNS[k]} says {stored:#018x}, the stored "
            f"bytes give {latent_checksum(data):#018x}: the latent is damaged; restore the file or encode it again"
        )
    return np.load(io.BytesIO(data), allow_pickle=False)


def _parse_votes(raw: str | None, where: str) -> dict[str, Any]:
    """The vote fields of a reference ``detailed_results`` string."""
    try:
        d = ast.literal_eval(raw) if raw is not None else None
    except (ValueError, SyntaxError) as e:
        raise PartFileError(f"{where}: cannot parse detailed_results {raw!r}: {e}") from e
    if not isinstance(d, dict):
        raise PartFileError(f"{where}: detailed_results is not a dict: {raw!r}")
    return {k: d.get(k) for k in _TYPED_VOTES}


def _bucket_ids(index: IndexLike | LatentPairDataset | Sequence[int] | np.ndarray) -> np.ndarray:
    if isinstance(index, LatentPairDataset):
        return np.asarray(index.bucket_ids)
    if isinstance(index, (str, PathLike, pl.DataFrame)):
        return read_index(index)["bucket_id"].to_numpy()
    return np.asarray(index)


class BucketBatchSampler:
    """Batches of index positions that share a bucket, for ``DataLoader(batch_sampler=...)``.

    ``index`` is an index CSV path, an index frame, a :class:`LatentPairDataset`,
    or a sequence of bucket ids (one per position). Each epoch every position
    appears exactly once across all replicas (with ``drop_last``, the rows of
    each bucket that do not fill a batch are left out, and the batch count is
    cut to a multiple of ``num_replicas`` so every replica gets as many).

    With ``shuffle``, rows are shuffled within each bucket and the batches are
    shuffled across buckets, from ``(seed, epoch)``: every replica computes
    the same global order and takes batches ``rank, rank + num_replicas, ...``,
    so replicas are disjoint. Call :meth:`set_epoch` each epoch. Without
    ``drop_last`` replicas may differ by one batch; use ``drop_last=True`` for
    collective ops that need equal step counts.
    """

    def __init__(
        self,
        index: IndexLike | LatentPairDataset | Sequence[int] | np.ndarray,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        if batch_size < 1:
            raise OptionError(f"batch_size must be at least 1, not {batch_size}")
        if num_replicas < 1:
            raise OptionError(f"num_replicas must be at least 1, not {num_replicas}")
        if not 0 <= rank < num_replicas:
            raise OptionError(f"rank must be in [0, {num_replicas}), not {rank}")
        if seed < 0:
            raise OptionError(f"seed must be non-negative, not {seed}")
        ids = _bucket_ids(index)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        order = np.argsort(ids, kind="stable")
        bounds = np.flatnonzero(np.diff(ids[order])) + 1
        self._groups: list[np.ndarray] = [g for g in np.split(order, bounds) if len(g)]

    def set_epoch(self, epoch: int) -> None:
        """Use the order of ``epoch`` (call before iterating, as with ``DistributedSampler``)."""
        self.epoch = int(epoch)

    def _global_batches(self) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, self.epoch]) if self.shuffle else None
        batches: list[np.ndarray] = []
        for group in self._groups:
            rows = rng.permutation(group) if rng is not None else group
            for start in range(0, len(rows), self.batch_size):
                batch = rows[start : start + self.batch_size]
                if self.drop_last and len(batch) < self.batch_size:
                    break
                batches.append(batch)
        if rng is not None:
            batches = [batches[k] for k in rng.permutation(len(batches))]
        if self.drop_last:
            batches = batches[: len(batches) - len(batches) % self.num_replicas]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self._global_batches()[self.rank :: self.num_replicas]:
            yield batch.tolist()

    def _total(self) -> int:
        if self.drop_last:
            total = sum(len(g) // self.batch_size for g in self._groups)
            return total - total % self.num_replicas
        return sum(-(-len(g) // self.batch_size) for g in self._groups)

    def __len__(self) -> int:
        total = self._total()
        return max(0, -(-(total - self.rank) // self.num_replicas))
