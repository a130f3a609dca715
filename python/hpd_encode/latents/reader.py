"""Reading training pairs through the bucket index.

:class:`LatentPairDataset` turns an index (the CSV that ``hpd-encode index``
writes) into a map-style dataset: ``ds[i]`` reads row ``i``'s two latents, and
``ds.__getitems__(positions)`` a whole batch in one call. Part files in the
random-access layout (one page per latent value, with an offset index) are
read by the Rust reader (``hpd_encode._core.read_pairs``): only the pages of
the rows asked for, in parallel, without the GIL. Older files are read a row
group at a time, with decoded row groups kept in a small LRU cache, so reading
them in index order (file and row-group order) reads each row group once.

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
from collections.abc import Iterator, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from hpd_encode.errors import InputNotFoundError, OptionError, PartFileError, RowOutOfRangeError
from hpd_encode.index.table import read_index
from hpd_encode.schema import LATENT_DOWN_FACTOR

IndexLike = str | PathLike[str] | pl.DataFrame

_TYPED_VOTES = ("votes_chosen", "votes_rejected", "confidence")


def _resolve_part(path: str, root: Path | None, index_dir: Path | None) -> str:
    """Where a part file named in the index is: as written, under ``root``, or beside the index."""
    p = Path(path)
    if root is not None and not p.is_absolute():
        candidate = root / p
        if candidate.is_file():
            return str(candidate)
    elif p.is_file():
        return path
    if index_dir is not None and not p.is_absolute() and (index_dir / p).is_file():
        return str(index_dir / p)
    where = [f"under '{root}'" if root is not None else "from the current directory"]
    if index_dir is not None:
        where.append(f"beside the index in '{index_dir}'")
    raise InputNotFoundError(
        f"part file '{path}' named in the index does not exist (looked {' and '.join(where)}); "
        "pass root= to say where the part files are"
    )


class _RowGroup:
    """One decoded row group: the needed columns as Arrow arrays."""

    __slots__ = ("columns", "num_rows")

    def __init__(self, table: pa.Table) -> None:
        self.num_rows = table.num_rows
        self.columns = {name: table.column(name).combine_chunks() for name in table.column_names}


#: Row groups whose small columns (prompt, models, votes) are kept per process.
_SMALL_CACHE_GROUPS = 1024


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
    """

    def __init__(
        self,
        index: IndexLike,
        *,
        cache_row_groups: int = 4,
        root: str | PathLike[str] | None = None,
        num_threads: int | None = None,
    ) -> None:
        if cache_row_groups < 1:
            raise OptionError(f"cache_row_groups must be at least 1, not {cache_row_groups}")
        if num_threads is not None and num_threads < 1:
            raise OptionError(f"num_threads must be at least 1, not {num_threads}")
        df = read_index(index)
        index_dir = None if isinstance(index, pl.DataFrame) else Path(index).resolve().parent
        root_dir = None if root is None else Path(root)
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
        self.row_group_reads = 0
        self._reset()

    # -- per-process state (files, caches, lock) -----------------------------

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._files: dict[int, pq.ParquetFile] = {}
        self._columns: dict[int, list[str]] = {}
        self._paged: dict[int, bool] = {}
        self._cache: OrderedDict[tuple[int, int], _RowGroup] = OrderedDict()
        self._small: OrderedDict[tuple[int, int], _RowGroup] = OrderedDict()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for key in ("_lock", "_files", "_columns", "_paged", "_cache", "_small", "_pid"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    def close(self) -> None:
        """Close the open part files and drop the caches (reopened on the next read)."""
        with self._lock:
            for f in self._files.values():
                f.close()
            self._files.clear()
            self._cache.clear()
            self._small.clear()

    def __enter__(self) -> LatentPairDataset:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading -------------------------------------------------------------

    def _check_pid(self) -> None:
        if os.getpid() != self._pid:  # a forked DataLoader worker: its own files and caches
            self._reset()

    def _parquet_file(self, file_idx: int) -> pq.ParquetFile:
        """The file opened with pyarrow (under ``self._lock``), its small columns decided."""
        pf = self._files.get(file_idx)
        if pf is None:
            pf = self._files[file_idx] = pq.ParquetFile(self._paths[file_idx])
            names = set(pf.schema_arrow.names)
            wanted = ["prompt", "model1", "model2"]
            wanted += list(_TYPED_VOTES) if all(c in names for c in _TYPED_VOTES) else ["detailed_results"]
            missing = [c for c in [*wanted, "latent1", "latent2"] if c not in names]
            if missing:
                raise PartFileError(f"part file '{self._paths[file_idx]}' lacks the column(s) {missing}")
            self._columns[file_idx] = wanted
        return pf

    def _check_group(self, pf: pq.ParquetFile, file_idx: int, group: int) -> None:
        if not 0 <= group < pf.num_row_groups:
            raise RowOutOfRangeError(
                f"'{self._paths[file_idx]}' has {pf.num_row_groups} row groups, the index asks for "
                f"row group {group}: the index is stale; rebuild it"
            )

    def _is_paged(self, file_idx: int) -> bool:
        """Whether the file is in the random-access layout (asked once per process)."""
        paged = self._paged.get(file_idx)
        if paged is None:
            from hpd_encode._core import latent_layout

            paged = self._paged[file_idx] = latent_layout(self._paths[file_idx])[1]
        return paged

    def _row_group_of(self, file_idx: int, group: int) -> _RowGroup:
        """An old-layout row group, latents included (LRU cache of ``cache_row_groups``)."""
        key = (file_idx, group)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
            pf = self._parquet_file(file_idx)
            self._check_group(pf, file_idx, group)
            columns = [*self._columns[file_idx], "latent1", "latent2"]
            rg = _RowGroup(pf.read_row_group(group, columns=columns))
            self.row_group_reads += 1
            self._cache[key] = rg
            while len(self._cache) > self.cache_row_groups:
                self._cache.popitem(last=False)
            return rg

    def _small_of(self, file_idx: int, group: int) -> _RowGroup:
        """A row group's small columns (prompt, models, votes), cached per process."""
        key = (file_idx, group)
        with self._lock:
            hit = self._small.get(key)
            if hit is not None:
                self._small.move_to_end(key)
                return hit
            pf = self._parquet_file(file_idx)
            self._check_group(pf, file_idx, group)
            rg = _RowGroup(pf.read_row_group(group, columns=self._columns[file_idx]))
            self._small[key] = rg
            while len(self._small) > _SMALL_CACHE_GROUPS:
                self._small.popitem(last=False)
            return rg

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
        """The items at ``indices``, read together (one call into the Rust reader for the paged files)."""
        import torch

        from hpd_encode._core import read_pairs

        self._check_pid()
        positions = [self._position(int(i)) for i in indices]
        where_of: list[tuple[int, int, int]] = []
        paged_at: list[int] = []
        requests: list[tuple[str, int, int]] = []
        for k, i in enumerate(positions):
            f, g, r = int(self._file[i]), int(self._row_group[i]), int(self._row_index[i])
            where_of.append((f, g, r))
            if self._is_paged(f):
                paged_at.append(k)
                requests.append((self._paths[f], g, r))
        latents: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        if requests:
            for k, read in zip(paged_at, read_pairs(requests, num_threads=self.num_threads)):
                latents[k] = read
        items = []
        for k, i in enumerate(positions):
            f, g, r = where_of[k]
            where = f"'{self._paths[f]}' row group {g} row {r}"
            rg = self._small_of(f, g) if k in latents else self._row_group_of(f, g)
            if not 0 <= r < rg.num_rows:
                raise RowOutOfRangeError(
                    f"{where} does not exist (the row group has {rg.num_rows} rows): rebuild the index"
                )
            cols = rg.columns
            pair = latents.get(k)
            if pair is None:
                pair = (
                    _load_npy(cols["latent1"][r].as_py(), where, "latent1"),
                    _load_npy(cols["latent2"][r].as_py(), where, "latent2"),
                )
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
            if "detailed_results" in cols:
                votes = _parse_votes(cols["detailed_results"][r].as_py(), where)
            else:
                votes = {c: cols[c][r].as_py() for c in _TYPED_VOTES}
            items.append(
                {
                    "global_id": int(self._global_id[i]),
                    "prompt": cols["prompt"][r].as_py(),
                    "model1": cols["model1"][r].as_py(),
                    "model2": cols["model2"][r].as_py(),
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


def _load_npy(data: bytes | None, where: str, name: str) -> np.ndarray:
    """An old-layout latent's ``.npy`` bytes as an array."""
    if data is None:
        raise PartFileError(f"{where}: {name} is null")
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
