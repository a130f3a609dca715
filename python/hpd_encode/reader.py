"""Reading training pairs through the bucket index.

:class:`LatentPairDataset` turns an index (the CSV that ``hpd-encode index``
writes) into a map-style dataset: ``ds[i]`` opens row ``i``'s part file, reads
only its row group (and only the columns it needs), and decodes the two
latents. Decoded row groups are kept in a small LRU cache, so reading in
index order (which is file and row-group order) reads each row group once.

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

from hpd_encode.index.table import read_index

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
    raise FileNotFoundError(
        f"part file '{path}' named in the index does not exist (looked {' and '.join(where)}); "
        "pass root= to say where the part files are"
    )


class _RowGroup:
    """One decoded row group: the needed columns as Arrow arrays."""

    __slots__ = ("columns", "num_rows")

    def __init__(self, table: pa.Table) -> None:
        self.num_rows = table.num_rows
        self.columns = {name: table.column(name).combine_chunks() for name in table.column_names}


class LatentPairDataset:
    """A map-style dataset of latent pairs, through a bucket index.

    ``index`` is the index CSV (or the frame :func:`hpd_encode.build_index`
    returns). Relative ``parquet_path`` values are looked up from the current
    directory, then beside the CSV; ``root`` puts them under another directory.

    ``ds[i]`` (``i`` is a position in the index, which is sorted by
    ``global_id``) is a dict: ``global_id``, ``prompt``, ``model1``,
    ``model2``, ``latent1`` and ``latent2`` (``torch.Tensor``, float32,
    ``(C, H/8, W/8)``), ``height``, ``width``, ``bucket_id``,
    ``votes_chosen``, ``votes_rejected`` and ``confidence`` (typed columns
    when the file has them, else ``detailed_results`` parsed with
    ``ast.literal_eval``; missing values read as the reference's defaults 0 and
    0.0).

    ``cache_row_groups`` decoded row groups are kept per process (LRU). A row
    group of 100 SD3.5 1024² latent pairs is about 200 MB, so keep it small.
    ``row_group_reads`` counts the row groups read so far in this process.
    """

    def __init__(
        self,
        index: IndexLike,
        *,
        cache_row_groups: int = 4,
        root: str | PathLike[str] | None = None,
    ) -> None:
        if cache_row_groups < 1:
            raise ValueError(f"cache_row_groups must be at least 1, not {cache_row_groups}")
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
        self.row_group_reads = 0
        self._reset()

    # -- per-process state (files, cache, lock) -----------------------------

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._files: dict[int, pq.ParquetFile] = {}
        self._columns: dict[int, list[str]] = {}
        self._cache: OrderedDict[tuple[int, int], _RowGroup] = OrderedDict()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for key in ("_lock", "_files", "_columns", "_cache", "_pid"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    def close(self) -> None:
        """Close the open part files and drop the cache (reopened on the next read)."""
        with self._lock:
            for f in self._files.values():
                f.close()
            self._files.clear()
            self._cache.clear()

    def __enter__(self) -> LatentPairDataset:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading -------------------------------------------------------------

    def _row_group_of(self, file_idx: int, group: int) -> _RowGroup:
        if os.getpid() != self._pid:  # a forked DataLoader worker: its own files and cache
            self._reset()
        key = (file_idx, group)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
            pf = self._files.get(file_idx)
            if pf is None:
                pf = self._files[file_idx] = pq.ParquetFile(self._paths[file_idx])
                names = set(pf.schema_arrow.names)
                wanted = ["prompt", "model1", "model2", "latent1", "latent2"]
                wanted += (
                    list(_TYPED_VOTES) if all(c in names for c in _TYPED_VOTES) else ["detailed_results"]
                )
                missing = [c for c in wanted if c not in names]
                if missing:
                    raise ValueError(f"part file '{self._paths[file_idx]}' lacks the column(s) {missing}")
                self._columns[file_idx] = wanted
            if not 0 <= group < pf.num_row_groups:
                raise IndexError(
                    f"'{self._paths[file_idx]}' has {pf.num_row_groups} row groups, the index asks for "
                    f"row group {group}: the index is stale; rebuild it"
                )
            rg = _RowGroup(pf.read_row_group(group, columns=self._columns[file_idx]))
            self.row_group_reads += 1
            self._cache[key] = rg
            while len(self._cache) > self.cache_row_groups:
                self._cache.popitem(last=False)
            return rg

    def __len__(self) -> int:
        return len(self._global_id)

    @property
    def bucket_ids(self) -> np.ndarray:
        """The bucket id of every position (what :class:`BucketBatchSampler` groups by)."""
        return self._bucket

    def __getitem__(self, i: int) -> dict[str, Any]:
        import torch

        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for a dataset of {n} rows")
        i = int(i) % n
        f, g, r = int(self._file[i]), int(self._row_group[i]), int(self._row_index[i])
        rg = self._row_group_of(f, g)
        where = f"'{self._paths[f]}' row group {g} row {r}"
        if not 0 <= r < rg.num_rows:
            raise IndexError(
                f"{where} does not exist (the row group has {rg.num_rows} rows): rebuild the index"
            )
        cols = rg.columns
        height, width = int(self._height[i]), int(self._width[i])
        latents = []
        for name in ("latent1", "latent2"):
            data = cols[name][r].as_py()
            if data is None:
                raise ValueError(f"{where}: {name} is null")
            arr = np.load(io.BytesIO(data), allow_pickle=False)
            if arr.ndim < 2 or arr.shape[-2] * 8 != height or arr.shape[-1] * 8 != width:
                raise ValueError(
                    f"{where}: {name} has shape {arr.shape}, the index says {height}x{width}: "
                    "rebuild the index"
                )
            latents.append(torch.from_numpy(arr))
        if "detailed_results" in cols:
            votes = _parse_votes(cols["detailed_results"][r].as_py(), where)
        else:
            votes = {k: cols[k][r].as_py() for k in _TYPED_VOTES}
        return {
            "global_id": int(self._global_id[i]),
            "prompt": cols["prompt"][r].as_py(),
            "model1": cols["model1"][r].as_py(),
            "model2": cols["model2"][r].as_py(),
            "latent1": latents[0],
            "latent2": latents[1],
            "height": height,
            "width": width,
            "bucket_id": int(self._bucket[i]),
            "votes_chosen": int(votes["votes_chosen"] or 0),
            "votes_rejected": int(votes["votes_rejected"] or 0),
            "confidence": float(votes["confidence"] or 0.0),
        }


def _parse_votes(raw: str | None, where: str) -> dict[str, Any]:
    """The vote fields of a reference ``detailed_results`` string."""
    try:
        d = ast.literal_eval(raw) if raw is not None else None
    except (ValueError, SyntaxError) as e:
        raise ValueError(f"{where}: cannot parse detailed_results {raw!r}: {e}") from e
    if not isinstance(d, dict):
        raise ValueError(f"{where}: detailed_results is not a dict: {raw!r}")
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
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        if num_replicas < 1:
            raise ValueError(f"num_replicas must be at least 1, not {num_replicas}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), not {rank}")
        if seed < 0:
            raise ValueError(f"seed must be non-negative, not {seed}")
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
