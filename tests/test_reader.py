"""The training-side reader: LatentPairDataset and BucketBatchSampler, on real part files."""

from __future__ import annotations

import pickle
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from conftest import SMALL_BUCKETS, PartRecord
from hpd_encode.index import build_index, read_index, write_index
from hpd_encode.reader import BucketBatchSampler, LatentPairDataset
from torch.utils.data import DataLoader


@pytest.fixture(scope="module")
def ref_index(
    tmp_path_factory: pytest.TempPathFactory, reference_parts: Path, small_buckets_json: Path
) -> Path:
    """The uncapped index of the reference-shaped parts, as CSV."""
    path = tmp_path_factory.mktemp("index") / "index.csv"
    write_index(build_index(reference_parts, buckets=small_buckets_json, max_per_prompt=None), path)
    return path


def record_of(item: dict, records: list[PartRecord]) -> PartRecord:
    return records[int(item["latent1"][0, 0, 0])]  # latent 1 is full of the record number


# ---------------------------------------------------------------------------
# LatentPairDataset


@pytest.mark.parametrize("layout", ["reference", "ours", "encoder"])
def test_items_match_their_records(
    layout: str,
    ref_index: Path,
    request: pytest.FixtureRequest,
    part_records: list[PartRecord],
    small_buckets_json: Path,
    tmp_path: Path,
) -> None:
    index = ref_index
    if layout != "reference":
        index = tmp_path / f"{layout}.csv"
        parts = request.getfixturevalue(f"{layout}_parts")
        write_index(build_index(parts, buckets=small_buckets_json, max_per_prompt=None), index)
    ds = LatentPairDataset(index)
    expected = [r for r in part_records if (r.height, r.width) in SMALL_BUCKETS]
    assert len(ds) == len(expected)
    seen = []
    for i in range(len(ds)):
        item = ds[i]
        rec = record_of(item, part_records)
        seen.append(rec.rec)
        assert item["global_id"] == i
        assert (item["prompt"], item["model1"], item["model2"]) == (rec.prompt, rec.model1, rec.model2)
        assert isinstance(item["latent1"], torch.Tensor) and item["latent1"].dtype == torch.float32
        assert torch.equal(item["latent1"], torch.from_numpy(rec.latent(1)))
        assert torch.equal(item["latent2"], torch.from_numpy(rec.latent(2)))
        assert (item["height"], item["width"]) == (rec.height, rec.width)
        assert item["bucket_id"] == SMALL_BUCKETS.index((rec.height, rec.width))
        assert (item["votes_chosen"], item["votes_rejected"]) == (rec.votes_chosen, rec.votes_rejected)
        assert item["confidence"] == (rec.confidence if rec.confidence is not None else 0.0)
    assert sorted(seen) == [r.rec for r in expected]
    assert ds[-1]["global_id"] == len(ds) - 1
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_reads_each_row_group_once_in_index_order(ref_index: Path) -> None:
    groups = read_index(ref_index).select("parquet_path", "row_group").unique().height
    ds = LatentPairDataset(ref_index, cache_row_groups=1)
    for i in range(len(ds)):
        ds[i]
    assert ds.row_group_reads == groups
    for i in range(len(ds)):  # a second pass with a one-group cache reads them all again
        ds[i]
    assert ds.row_group_reads == 2 * groups
    big = LatentPairDataset(ref_index, cache_row_groups=groups)
    for _ in range(2):
        for i in reversed(range(len(big))):
            big[i]
    assert big.row_group_reads == groups


def test_cache_is_least_recently_used(ref_index: Path) -> None:
    df = read_index(ref_index).with_row_index("pos")
    first = df.group_by("parquet_path", "row_group", maintain_order=True).first()["pos"].to_list()
    a, b, c = first[:3]
    ds = LatentPairDataset(ref_index, cache_row_groups=2)
    for i in (a, b, a, c, a):  # c evicts b, the least recently used, so a stays cached
        ds[i]
    assert ds.row_group_reads == 3


def test_paths_relative_to_the_index(
    tmp_path: Path, reference_parts: Path, small_buckets_json: Path, monkeypatch
) -> None:
    data = tmp_path / "data"
    shutil.copytree(reference_parts, data / "parts")
    monkeypatch.chdir(data)
    write_index(build_index("parts", buckets=small_buckets_json), "index.csv")
    assert read_index("index.csv")["parquet_path"][0] == "parts/part_rank00.parquet"
    first = LatentPairDataset("index.csv")[0]

    monkeypatch.chdir(tmp_path)  # relative paths now resolve beside the index
    assert torch.equal(LatentPairDataset("data/index.csv")[0]["latent1"], first["latent1"])
    df = read_index("data/index.csv")
    with pytest.raises(FileNotFoundError, match=r"part file 'parts/part_rank00.parquet'.*pass root="):
        LatentPairDataset(df)
    assert torch.equal(LatentPairDataset(df, root=data)[0]["latent1"], first["latent1"])


def test_stale_index_is_a_clear_error(ref_index: Path, tmp_path: Path) -> None:
    df = read_index(ref_index)
    with pytest.raises(IndexError, match=r"row group 0 row 150 does not exist.*rebuild the index"):
        LatentPairDataset(
            df.with_columns(
                pl.when(pl.col("global_id") == 0).then(150).otherwise("row_index").alias("row_index")
            )
        )[0]
    with pytest.raises(IndexError, match="the index is stale"):
        LatentPairDataset(df.with_columns(pl.lit(99).alias("row_group")))[0]
    wrong_size = df.with_columns((pl.col("height") * 2).alias("height"))
    with pytest.raises(ValueError, match=r"latent1 has shape .* the index says"):
        LatentPairDataset(wrong_size)[0]


def test_pickles_without_its_cache(ref_index: Path) -> None:
    ds = LatentPairDataset(ref_index)
    first = ds[0]
    copy = pickle.loads(pickle.dumps(ds))
    assert copy.row_group_reads == ds.row_group_reads == 1
    assert torch.equal(copy[0]["latent2"], first["latent2"])
    assert copy.row_group_reads == 2  # its own cache started empty
    with ds:
        ds[1]
    assert torch.equal(ds[0]["latent1"], first["latent1"])  # reopens after close()


# ---------------------------------------------------------------------------
# BucketBatchSampler


def bucket_ids(n: int = 1003, buckets: int = 5, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, buckets, n)


def test_batches_share_a_bucket_and_cover_every_row_once() -> None:
    ids = bucket_ids()
    sampler = BucketBatchSampler(ids, 16, seed=3)
    batches = list(sampler)
    assert len(batches) == len(sampler)
    for b in batches:
        assert 1 <= len(b) <= 16
        assert len({int(ids[i]) for i in b}) == 1
    assert sorted(i for b in batches for i in b) == list(range(len(ids)))
    partial = Counter(int(ids[b[0]]) for b in batches if len(b) < 16)
    assert all(c == 1 for c in partial.values())  # at most one short batch per bucket
    assert len(batches) == sum(-(-c // 16) for c in Counter(ids.tolist()).values())


def test_drop_last_gives_full_batches_and_equal_replicas() -> None:
    ids = bucket_ids()
    samplers = [BucketBatchSampler(ids, 16, seed=3, drop_last=True, num_replicas=3, rank=r) for r in range(3)]
    runs = [list(s) for s in samplers]
    assert len({len(r) for r in runs}) == 1
    assert [len(r) for r in runs] == [len(s) for s in samplers]
    full = sum(c // 16 for c in Counter(ids.tolist()).values())
    assert sum(len(r) for r in runs) == full - full % 3
    assert all(len(b) == 16 for r in runs for b in r)
    rows = [i for r in runs for b in r for i in b]
    assert len(rows) == len(set(rows))


@pytest.mark.parametrize("replicas", [2, 3, 4])
def test_replicas_are_disjoint_and_cover_everything(replicas: int) -> None:
    ids = bucket_ids(n=517)
    runs = []
    for rank in range(replicas):
        s = BucketBatchSampler(ids, 8, seed=11, num_replicas=replicas, rank=rank)
        s.set_epoch(4)
        runs.append(list(s))
        assert len(runs[-1]) == len(s)
    rows = [i for r in runs for b in r for i in b]
    assert sorted(rows) == list(range(len(ids)))
    assert max(len(r) for r in runs) - min(len(r) for r in runs) <= 1


def test_order_depends_only_on_seed_and_epoch() -> None:
    ids = bucket_ids()
    a, b = BucketBatchSampler(ids, 8, seed=1), BucketBatchSampler(ids, 8, seed=1)
    assert list(a) == list(b) == list(a)
    b.set_epoch(1)
    assert list(a) != list(b)
    a.set_epoch(1)
    assert list(a) == list(b)
    assert list(BucketBatchSampler(ids, 8, seed=2)) != list(BucketBatchSampler(ids, 8, seed=1))
    buckets_in_order = [int(ids[batch[0]]) for batch in a]
    assert buckets_in_order != sorted(buckets_in_order)  # batches of different buckets interleave
    plain = list(BucketBatchSampler(ids, 8, shuffle=False))
    assert [i for batch in plain for i in batch] == list(np.argsort(ids, kind="stable"))


def test_sampler_inputs_agree(ref_index: Path) -> None:
    ds = LatentPairDataset(ref_index)
    forms = [ref_index, str(ref_index), read_index(ref_index), ds, ds.bucket_ids]
    runs = [list(BucketBatchSampler(f, 5, seed=9)) for f in forms]
    assert all(r == runs[0] for r in runs)


def test_bad_sampler_arguments() -> None:
    ids = bucket_ids(n=10)
    for kwargs in (
        {"batch_size": 0},
        {"batch_size": 2, "num_replicas": 0},
        {"batch_size": 2, "num_replicas": 2, "rank": 2},
    ):
        with pytest.raises(ValueError):
            BucketBatchSampler(ids, **kwargs)


def test_dataloader_with_workers(ref_index: Path) -> None:
    ds = LatentPairDataset(ref_index)
    sampler = BucketBatchSampler(ds, 6, seed=0)
    sampler.set_epoch(2)
    loader = DataLoader(ds, batch_sampler=sampler, num_workers=2)
    seen = []
    for batch in loader:
        (bucket,) = set(batch["bucket_id"].tolist())
        h, w = SMALL_BUCKETS[bucket]
        assert batch["latent1"].shape == (len(batch["prompt"]), 4, h // 8, w // 8)
        assert batch["latent2"].shape == batch["latent1"].shape
        seen += batch["global_id"].tolist()
    assert sorted(seen) == list(range(len(ds)))
    assert len(seen) == len(ds)
