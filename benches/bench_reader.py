"""Training-side reads: the reference's way vs the row-group reader vs the page-level Rust reader.

Generates SD3.5-shaped pairs (two 16x128x128 float32 latents, 2 MiB a pair;
default 1024 pairs = 2 GiB per layout) in several part files, twice:

* ``old`` layout: pyarrow's defaults (row groups of 100, zstd), as the
  reference and earlier hpd-encode write them: a row group's latent column is
  one large page;
* ``new`` layout: one data page per latent value with the offset index
  (``hpd_encode.latents.repack.write_paged_table``; latents uncompressed, the
  default, or zstd with ``--latent-compression zstd``).

Then reads shuffled bucket batches (``BucketBatchSampler``, batch 16) with:

* ``reference``: what the reference's trainer does per row on old files:
  ``pq.ParquetFile(path).read_row_group(rg)``, take the row, ``np.load``;
* ``row-group``: ``LatentPairDataset(cache_row_groups=1)`` on old files
  (``ds[i]`` per item; the old dataset behaviour);
* ``rust ds[i]``: ``LatentPairDataset`` on new files, one item at a time;
* ``rust getitems``: ``LatentPairDataset.__getitems__`` on new files, a batch per call.

Each cold (the part files' pages dropped from the page cache with
``posix_fadvise(DONTNEED)`` before each batch) and warm. Reports pairs/s,
MB/s of latents delivered, bytes read from storage per pair
(``/proc/self/io`` ``read_bytes``) and the ratio to the reference.

Then the cost of checking every latent's checksum (XXH3) on warm reads:
``__getitems__`` with the check (the default) and with
``verify_checksums=False``, in alternating turns (``--turns``, best of each),
as the ratio of GB of latents per CPU-second (target: at most 5 % lower).
``verify`` beside a plain sequential read is ``benches/bench_verify.py``.

Usage::

    python benches/bench_reader.py                     # 1024 pairs per layout, data in a temp dir
    python benches/bench_reader.py --pairs 512 --seconds 5 --data /work/bench-data
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

SHAPE = (16, 128, 128)  # SD3.5, 1024x1024 images
PAIR_BYTES = 2 * int(np.prod(SHAPE)) * 4
BATCH = 16


def npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def generate(root: Path, pairs: int, files: int, paged: bool, latent_compression: str = "none") -> list[Path]:
    """Part files of random float32 latents (each value distinct, so pages do not share bytes)."""
    from hpd_encode.latents.repack import write_paged_table

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    base = rng.standard_normal((8, *SHAPE), dtype=np.float32)
    per_file = -(-pairs // files)
    out = []
    rec = 0
    for k in range(files):
        n = min(per_file, pairs - rec)
        lat1, lat2 = [], []
        for i in range(n):
            # a new array per value: a pool latent scaled and shifted by the record number
            lat1.append(npy(base[(rec + i) % 8] * (1 + (rec + i) * 1e-3)))
            lat2.append(npy(base[(rec + i + 3) % 8] - (rec + i) * 1e-3))
        table = pa.table(
            {
                "prompt": [f"prompt {rec + i}" for i in range(n)],
                "model1": ["a"] * n,
                "model2": ["b"] * n,
                "detailed_results": [
                    str({"votes_chosen": 3, "votes_rejected": 1, "confidence": 0.5}) for _ in range(n)
                ],
                "image1_path": [f"x/{rec + i}.jpg" for i in range(n)],
                "image2_path": [f"y/{rec + i}.jpg" for i in range(n)],
                "latent1": pa.array(lat1, pa.binary()),
                "latent2": pa.array(lat2, pa.binary()),
                "latent1_shape": [list(SHAPE)] * n,
                "latent2_shape": [list(SHAPE)] * n,
            }
        )
        path = root / f"part_rank{k:02d}.parquet"
        if paged:
            write_paged_table(table, path, latent_compression=latent_compression)
        else:
            pq.write_table(table, path, row_group_size=100, compression="zstd")
        out.append(path)
        rec += n
        del table, lat1, lat2
    return out


def drop_cache(paths: list[Path]) -> None:
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def warm_cache(paths: list[Path]) -> None:
    for p in paths:
        with open(p, "rb") as f:
            while f.read(8 << 20):
                pass


def read_bytes() -> int:
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("read_bytes:"):
                return int(line.split()[1])
    return 0


def reference_reader(index_df) -> Callable[[list[int]], None]:
    """The reference trainer's per-row read."""
    paths = index_df["parquet_path"].to_list()
    groups = index_df["row_group"].to_list()
    rows = index_df["row_index"].to_list()

    def read(batch: list[int]) -> None:
        for i in batch:
            table = pq.ParquetFile(paths[i]).read_row_group(groups[i])
            row = table.slice(rows[i], 1).to_pylist()[0]
            np.load(io.BytesIO(row["latent1"]))
            np.load(io.BytesIO(row["latent2"]))

    return read


def measure(
    read: Callable[[list[int]], None],
    batches: list[list[int]],
    files: list[Path],
    cold: bool,
    seconds: float,
    per_item: bool,
) -> dict[str, float]:
    """Read ``batches`` until ``seconds`` have passed. Cold: the files' pages are
    dropped before each access (each item for per-item readers, each batch for
    batch readers); the time of the drop itself is not counted."""
    pairs, elapsed, cpu, io0 = 0, 0.0, 0.0, read_bytes()
    for batch in batches:
        units = [[i] for i in batch] if per_item else [batch]
        for unit in units:
            if cold:
                drop_cache(files)
            t, c = time.perf_counter(), time.process_time()
            read(unit)
            elapsed += time.perf_counter() - t
            cpu += time.process_time() - c
        pairs += len(batch)
        if elapsed > seconds:
            break
    storage = read_bytes() - io0
    return {
        "pairs": pairs,
        "pairs_s": pairs / elapsed,
        "mb_s": pairs * PAIR_BYTES / 1e6 / elapsed,
        "read_per_pair": storage / pairs / PAIR_BYTES,
        # GB of latents per CPU-second, all of the process's threads counted
        "gb_cpu_s": pairs * PAIR_BYTES / 1e9 / cpu if cpu > 0 else 0.0,
    }


def checksum_cost(index, files: list[Path], batches: list[list[int]], seconds: float, turns: int) -> None:
    """Warm ``__getitems__`` with and without the per-latent checksum check, in alternating turns."""
    from hpd_encode.latents.reader import LatentPairDataset

    warm_cache(files)
    readers = {
        "checked (default)": LatentPairDataset(index),
        "verify_checksums=False": LatentPairDataset(index, verify_checksums=False),
    }
    best: dict[str, dict[str, float]] = {}
    for _ in range(turns):
        for name, ds in readers.items():
            ds.__getitems__(batches[-1])  # open files, fill footers and stored checksums
            res = measure(lambda b, ds=ds: ds.__getitems__(b) and None, batches, files, False, seconds, False)
            if name not in best or res["gb_cpu_s"] > best[name]["gb_cpu_s"]:
                best[name] = res
    base = best["verify_checksums=False"]
    print(f"\nchecksum cost, warm __getitems__ of {BATCH} pairs (best of {turns} alternating turns):")
    print(f"{'reader':26} {'pairs/s':>9} {'GB/CPU-s':>9} {'vs unchecked':>13}")
    for name, r in best.items():
        print(f"{name:26} {r['pairs_s']:9.1f} {r['gb_cpu_s']:9.2f} {r['gb_cpu_s'] / base['gb_cpu_s']:12.3f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=1024, help="pairs per layout (2 MiB each)")
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=8.0, help="time limit per measurement")
    ap.add_argument("--data", type=Path, default=None, help="where to put the files (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the generated files")
    ap.add_argument("--turns", type=int, default=5, help="alternating turns of the checksum-cost measurement")
    ap.add_argument(
        "--latent-compression",
        choices=("none", "zstd"),
        default="none",
        help="codec of the new files' latents",
    )
    args = ap.parse_args()

    from hpd_encode.index import build_index
    from hpd_encode.latents.reader import BucketBatchSampler, LatentPairDataset

    root = Path(tempfile.mkdtemp(prefix="bench-reader-", dir=args.data))
    try:
        t = time.perf_counter()
        old = generate(root / "old", args.pairs, args.files, paged=False)
        new = generate(
            root / "new", args.pairs, args.files, paged=True, latent_compression=args.latent_compression
        )
        size_old = sum(p.stat().st_size for p in old)
        size_new = sum(p.stat().st_size for p in new)
        print(
            f"generated {args.pairs} pairs per layout in {args.files} files: old {size_old / 1e9:.2f} GB, "
            f"new {size_new / 1e9:.2f} GB ({time.perf_counter() - t:.0f} s); cores: {os.cpu_count()}"
        )
        old_index = build_index(root / "old", max_per_prompt=None)
        new_index = build_index(root / "new", max_per_prompt=None)
        sampler = BucketBatchSampler(new_index["bucket_id"].to_numpy(), BATCH, seed=0)
        batches = list(sampler)
        ds_old = LatentPairDataset(old_index, cache_row_groups=1)
        ds_new = LatentPairDataset(new_index)

        def per_item(ds: LatentPairDataset) -> Callable[[list[int]], None]:
            return lambda batch: [ds[i] for i in batch] and None

        methods = [  # (name, read a list of positions, files, per item)
            ("reference (old files)", reference_reader(old_index), old, True),
            ("row-group ds[i] (old files)", per_item(ds_old), old, True),
            ("rust ds[i] (new files)", per_item(ds_new), new, True),
            ("rust __getitems__ (new files)", lambda b: ds_new.__getitems__(b) and None, new, False),
        ]
        rows = []
        for cold in (True, False):
            for name, read, files, item in methods:
                if not cold:
                    warm_cache(files)
                    read(batches[-1])  # open files, fill footers
                res = measure(read, batches, files, cold, args.seconds, item)
                rows.append((name, "cold" if cold else "warm", res))
        ref = {temp: r for name, temp, r in rows if name.startswith("reference")}
        print(
            f"\n{'method':32} {'cache':5} {'pairs':>6} {'pairs/s':>9} {'MB/s':>8} {'read/pair':>10} {'vs ref':>8} "
            f"{'GB/CPU-s':>9}"
        )
        for name, temp, r in rows:
            read_pp = f"{r['read_per_pair']:.2f}x" if temp == "cold" else "-"
            print(
                f"{name:32} {temp:5} {r['pairs']:6d} {r['pairs_s']:9.1f} {r['mb_s']:8.0f} {read_pp:>10} "
                f"{r['pairs_s'] / ref[temp]['pairs_s']:7.1f}x {r['gb_cpu_s']:9.2f}"
            )
        print(
            "(read/pair: bytes read from storage per pair, over the pair's own 2 MiB of latents; "
            "GB/CPU-s: GB of latents per CPU-second of the whole process)"
        )
        checksum_cost(new_index, new, batches, args.seconds, args.turns)

    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
