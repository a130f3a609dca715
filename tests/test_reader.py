"""The training-side reader: LatentPairDataset and BucketBatchSampler, on real part files."""

from __future__ import annotations

import ast
import dataclasses
import io
import os
import pickle
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torch.utils.data import DataLoader

from conftest import SMALL_BUCKETS, PartRecord, write_reference_part, write_with_encoder
from hpd_encode._core import latent_layout, read_pairs
from hpd_encode.errors import PartFileError
from hpd_encode.index import build_index, read_index, write_index
from hpd_encode.latents.reader import BucketBatchSampler, LatentPairDataset


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


@pytest.mark.parametrize("writer", ["encoder", "reference"])
def test_a_part_replaced_by_rename_is_read_afresh(
    tmp_path: Path, part_records: list[PartRecord], small_buckets_json: Path, writer: str
) -> None:
    """Hostile finding 3 of issue 24: after a part is replaced by an atomic rename (same shapes),
    an item must not pair the old file's prompt and votes with the new file's latents."""
    records = [r for r in part_records[:120] if (r.height, r.width) in SMALL_BUCKETS]
    other = [
        dataclasses.replace(r, rec=r.rec + 5000, prompt=r.prompt + " (new)", votes_chosen=9) for r in records
    ]
    write = write_with_encoder if writer == "encoder" else write_reference_part
    parts = tmp_path / "parts"
    parts.mkdir()
    part = parts / "part_rank00.parquet"
    write(part, records)
    ds = LatentPairDataset(build_index(parts, buckets=small_buckets_json, max_per_prompt=None))
    before = ds.__getitems__([0, 1, 2])
    assert [record_of(item, part_records).prompt for item in before] == [item["prompt"] for item in before]
    staged = tmp_path / "staged.parquet"
    write(staged, other)
    os.replace(staged, part)
    after = ds.__getitems__([0, 1, 2])
    for old, new in zip(before, after):
        rec = int(new["latent1"][0, 0, 0])
        assert rec == int(old["latent1"][0, 0, 0]) + 5000, "the new file's latents"
        assert new["prompt"] == old["prompt"] + " (new)", "and the new file's prompt with them"
        assert new["votes_chosen"] == 9


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


# ---------------------------------------------------------------------------
# The random-access layout and the Rust reader (hpd_encode._core.read_pairs)


def paged_copy(src: Path, dest: Path) -> Path:
    """``src``'s part files rewritten with one page per latent value (same row groups)."""
    from hpd_encode.latents.repack import write_paged_table

    dest.mkdir(parents=True, exist_ok=True)
    for p in sorted(src.glob("*.parquet")):
        write_paged_table(pq.read_table(p), dest / p.name)
    return dest


@pytest.fixture(scope="module")
def paged_parts(tmp_path_factory: pytest.TempPathFactory, reference_parts: Path) -> Path:
    return paged_copy(reference_parts, tmp_path_factory.mktemp("paged_parts"))


@pytest.fixture(scope="module")
def paged_index(
    tmp_path_factory: pytest.TempPathFactory, paged_parts: Path, small_buckets_json: Path
) -> Path:
    path = tmp_path_factory.mktemp("paged_index") / "index.csv"
    write_index(build_index(paged_parts, buckets=small_buckets_json, max_per_prompt=None), path)
    return path


def _npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def seeded_parts(
    root: Path,
    *,
    paged: bool,
    sizes: tuple[int, ...] = (57, 23, 40),
    group: int = 10,
    latent_compression: str = "none",
) -> dict:
    """Part files of seeded random latents (float32 in even files, float16 in odd ones, mixed shapes).

    Returns ``{(path, row_group, row): (latent1, latent2)}``.
    """
    from hpd_encode.latents.repack import write_paged_table

    rng = np.random.default_rng(1234)
    root.mkdir(parents=True, exist_ok=True)
    truth = {}
    for k, n in enumerate(sizes):
        dtype = np.float32 if k % 2 == 0 else np.float16
        pairs = []
        for _ in range(n):
            shape = (4, int(rng.integers(2, 9)), int(rng.integers(2, 9)))
            pairs.append(tuple(rng.standard_normal(shape).astype(dtype) for _ in range(2)))
        table = pa.table(
            {
                "prompt": [f"p{k}-{i}" for i in range(n)],
                "latent1": pa.array([_npy_bytes(a) for a, _ in pairs], pa.binary()),
                "latent2": pa.array([_npy_bytes(b) for _, b in pairs], pa.binary()),
                "latent1_shape": [list(a.shape) for a, _ in pairs],
                "latent2_shape": [list(b.shape) for _, b in pairs],
            }
        )
        path = root / f"part_rank{k:02d}.parquet"
        if paged:
            write_paged_table(table, path, row_group_size=group, latent_compression=latent_compression)
        else:
            pq.write_table(table, path, row_group_size=group, compression="zstd")
        for i, pair in enumerate(pairs):
            truth[(str(path), i // group, i % group)] = pair
    return truth


def test_paged_files_are_one_page_per_value(paged_parts: Path, reference_parts: Path) -> None:
    for p in sorted(paged_parts.glob("*.parquet")):
        rows, paged = latent_layout(p)
        assert paged, p
        assert rows == [pq.ParquetFile(p).metadata.row_group(g).num_rows for g in range(len(rows))]
        # the latents carry no statistics (no copy of whole latents in the footer)
        assert not pq.ParquetFile(p).metadata.row_group(0).column(6).is_stats_set
    for p in sorted(reference_parts.glob("*.parquet")):
        assert latent_layout(p)[1] is False


def test_reference_style_reading_of_paged_files(paged_parts: Path, part_records: list[PartRecord]) -> None:
    pf = pq.ParquetFile(paged_parts / "part_rank00.parquet")
    table = pf.read_row_group(1)
    row = table.slice(5, 1).to_pylist()[0]
    rec = part_records[105]
    assert np.array_equal(np.load(io.BytesIO(row["latent1"])), rec.latent(1))
    assert ast.literal_eval(row["detailed_results"])["votes_chosen"] == rec.votes_chosen


@pytest.mark.parametrize("paged", [True, False])
def test_random_access_returns_what_was_written(tmp_path: Path, paged: bool) -> None:
    truth = seeded_parts(tmp_path / "parts", paged=paged)
    keys = list(truth)
    order = np.random.default_rng(5).permutation(len(keys))
    requests = [keys[i] for i in order] + keys[:3]  # shuffled, with repeats
    assert any(k[1] == 5 and k[2] == 6 for k in requests)  # the last, partial row group (57 rows)
    for threads in (1, 2):
        got = read_pairs(requests, num_threads=threads)
        assert len(got) == len(requests)
        for key, (a, b) in zip(requests, got):
            want_a, want_b = truth[key]
            assert a.dtype == want_a.dtype and b.dtype == want_b.dtype, key
            assert a.shape == want_a.shape and a.flags.c_contiguous and a.flags.writeable
            assert np.array_equal(a, want_a) and np.array_equal(b, want_b), key
    assert read_pairs([]) == []


def test_dataset_items_on_paged_files(
    paged_index: Path, ref_index: Path, part_records: list[PartRecord]
) -> None:
    ds = LatentPairDataset(paged_index)
    old = LatentPairDataset(ref_index)
    assert len(ds) == len(old)
    positions = np.random.default_rng(0).permutation(len(ds))[:60].tolist() + [-1]
    batch = ds.__getitems__(positions)
    assert ds.row_group_reads == 0  # no row group was decoded for the latents
    for pos, item in zip(positions, batch):
        ref = old[pos]
        assert item.keys() == ref.keys()
        for key, value in item.items():
            if isinstance(value, torch.Tensor):
                assert value.dtype == torch.float32 and torch.equal(value, ref[key]), key
            else:
                assert value == ref[key], key
        single = ds[pos]
        assert torch.equal(single["latent2"], item["latent2"]) and single["global_id"] == item["global_id"]
    with pytest.raises(IndexError):
        ds.__getitems__([0, len(ds)])


def test_stale_index_on_paged_files(paged_index: Path) -> None:
    df = read_index(paged_index)
    with pytest.raises(IndexError, match=r"row group 0 row 150 does not exist.*rebuild the index"):
        LatentPairDataset(
            df.with_columns(
                pl.when(pl.col("global_id") == 0).then(150).otherwise("row_index").alias("row_index")
            )
        )[0]
    with pytest.raises(IndexError, match="the index is stale"):
        LatentPairDataset(df.with_columns(pl.lit(99).alias("row_group")))[0]


@pytest.mark.parametrize("codec", ["none", "zstd"])
def test_truncated_and_corrupt_part_files_are_named_errors(tmp_path: Path, codec: str) -> None:
    truth = seeded_parts(tmp_path / "parts", paged=True, sizes=(30,), latent_compression=codec)
    path = tmp_path / "parts" / "part_rank00.parquet"
    data = path.read_bytes()
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(PartFileError, match=r"cut\.parquet.*not a readable part file"):
        read_pairs([(cut, 0, 0)])
    # Damage the pages of row group 1 row 4's latent1, found through the offset index.
    meta = pq.ParquetFile(path).metadata
    chunk = meta.row_group(1).column(1)
    start = chunk.data_page_offset
    if codec == "zstd":
        # the pages of a row group's latent1 follow each other; row 4 is roughly 4/10 of the way in
        pos = start + chunk.total_compressed_size * 4 // 10 + 40
    else:
        # uncompressed: row 4's value is the fifth .npy in the chunk; zero its length and npy header
        # (damage inside the float data of an uncompressed page is not detectable, but by verify's
        # finite check)
        pos, at = start, start
        for _ in range(5):
            pos = data.index(b"\x93NUMPY", at)
            at = pos + 1
        pos -= 8
    bad = bytearray(data)
    bad[pos : pos + 64] = bytes(64)
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(bytes(bad))
    rows = [(broken, 1, r) for r in range(10)]
    failures = []
    for req in rows:
        try:
            ((a, b),) = read_pairs([req])
            assert np.array_equal(a, truth[(str(path), 1, req[2])][0])  # an intact row still reads right
        except PartFileError as e:
            failures.append((req[2], str(e)))
    assert failures, "damaging a page must fail the row it belongs to"
    for row, msg in failures:
        assert f"broken.parquet' row group 1 row {row}" in msg
    with pytest.raises(PartFileError, match=r"broken\.parquet' row group 1 row"):
        read_pairs(rows)  # a batch names the first bad row
    with pytest.raises(FileNotFoundError, match="missing.parquet"):
        read_pairs([(tmp_path / "missing.parquet", 0, 0)])


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"not npy at all", "no NUMPY magic"),
        ("f8", r"unsupported latent dtype '<f8'"),
        ("big", "big-endian"),
        ("short", "truncated"),
        (None, "is null"),
    ],
)
def test_bad_npy_bytes_name_file_row_group_and_row(tmp_path: Path, value: object, reason: str) -> None:
    from hpd_encode.latents.repack import write_paged_table

    good = np.zeros((2, 3, 3), np.float32)
    bad = {
        "f8": _npy_bytes(good.astype(np.float64)),
        "big": _npy_bytes(good.astype(">f4")),
        "short": _npy_bytes(good)[:-3],
    }.get(value, value)  # type: ignore[arg-type]
    latent2 = [_npy_bytes(good)] * 25
    latent2[13] = bad
    shapes = [list(good.shape)] * 25
    table = pa.table(
        {
            "latent1": [_npy_bytes(good)] * 25,
            "latent2": pa.array(latent2, pa.binary()),
            "latent1_shape": shapes,
            "latent2_shape": shapes,
        }
    )
    path = tmp_path / "part_rank00.parquet"
    write_paged_table(table, path, row_group_size=10)
    assert read_pairs([(path, 1, 2)])[0][0].shape == (2, 3, 3)
    with pytest.raises(PartFileError, match=rf"part_rank00\.parquet' row group 1 row 3: latent2.*{reason}"):
        read_pairs([(path, 0, 1), (path, 1, 3)])


def test_dataloader_spawn_workers_over_getitems(paged_index: Path) -> None:
    ds = LatentPairDataset(paged_index, num_threads=1)
    ds[0]  # the parent has its files open: the workers start their own
    sampler = BucketBatchSampler(ds, 8, seed=1)
    calls = []
    original = LatentPairDataset.__getitems__

    def spy(self, indices):
        calls.append(len(indices))
        return original(self, indices)

    loader = DataLoader(ds, batch_sampler=sampler, num_workers=2, multiprocessing_context="spawn")
    seen = []
    for batch in loader:
        (bucket,) = set(batch["bucket_id"].tolist())
        h, w = SMALL_BUCKETS[bucket]
        assert batch["latent1"].shape == (len(batch["prompt"]), 4, h // 8, w // 8)
        # latent 1 of record n is full of n, latent 2 of -n - 0.5
        assert torch.equal(batch["latent2"], -batch["latent1"] - 0.5)
        seen += batch["global_id"].tolist()
    assert sorted(seen) == list(range(len(ds)))
    # in this process, a batch is one __getitems__ call
    LatentPairDataset.__getitems__ = spy  # type: ignore[method-assign]
    try:
        first = next(iter(DataLoader(ds, batch_sampler=sampler, num_workers=0)))
    finally:
        LatentPairDataset.__getitems__ = original  # type: ignore[method-assign]
    assert calls == [len(first["global_id"])]


def test_dataloader_fork_workers_after_reading(paged_index: Path) -> None:
    ds = LatentPairDataset(paged_index)
    before = ds.__getitems__(list(range(20)))  # the Rust reader has files open before the fork
    loader = DataLoader(
        ds, batch_sampler=BucketBatchSampler(ds, 16, seed=4), num_workers=2, multiprocessing_context="fork"
    )
    seen = []
    for batch in loader:
        assert torch.equal(batch["latent2"], -batch["latent1"] - 0.5)
        seen += batch["global_id"].tolist()
    assert sorted(seen) == list(range(len(ds)))
    after = ds.__getitems__(list(range(20)))
    assert all(torch.equal(a["latent1"], b["latent1"]) for a, b in zip(before, after))
