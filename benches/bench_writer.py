"""Writer benchmark: ``hpd_encode.ParquetWriter`` vs pyarrow driven from a Python thread, same rows.

Rows: ``--rows`` (400) comparisons of two distinct SD3.5-shaped latents
(16x128x128 float32, 1 MiB each: about 840 MB of latents), every value distinct
as real latents are.

- pyarrow: the reference's way, in a Python thread: ``np.save`` each latent,
  ``str(dict)`` the details, ``pa.Table.from_pylist`` per 100 rows with the
  reference's ten columns, ``pq.ParquetWriter(compression="zstd")`` (pyarrow's
  defaults otherwise: zstd level 1, one data page per ~1 MB), then fsync.
- hpd-encode: ``ParquetWriter.submit`` 4 rows per call from the main thread
  (the row copy into ``.npy`` bytes happens there, with the GIL), the Rust
  writer thread builds and writes the part file (all 21 columns, one data page
  per latent value, offset index), fsync and rename on ``close()``; twice: the
  default (latent pages uncompressed, the other columns zstd 1) and with
  ``latent_compression="zstd"`` (every column zstd 1, like the pyarrow side).

Best of ``--runs`` (3) wall times, MB/s of latents, the ratio, the least process
CPU time (user + system of all threads: steadier than wall time on a shared
machine), and the longest
stall seen by a concurrent Python thread that ticks every 0.5 ms (an upper
bound of the longest time the writer kept the GIL away from other Python code).

Run: ``.venv/bin/python benches/bench_writer.py [--rows 400] [--runs 3] [--dir /tmp]``.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import resource
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import hpd_encode
from hpd_encode.output_dir import fsync_path
from hpd_encode.schema import PART_SCHEMA, REFERENCE_COLUMNS, ROW_GROUP_SIZE

SHAPE = (16, 128, 128)


class StallProbe:
    """A Python thread ticking every 0.5 ms; the longest gap between ticks is
    (an upper bound of) the longest time something kept it from running."""

    def __init__(self) -> None:
        self.max_gap = 0.0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        last = time.perf_counter()
        while not self._stop.is_set():
            time.sleep(0.0005)
            now = time.perf_counter()
            self.max_gap = max(self.max_gap, now - last)
            last = now

    def __enter__(self) -> StallProbe:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()


def make_rows(n: int) -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        rows.append(
            {
                "prompt": f"a prompt for comparison {i}",
                "model1": "flux",
                "model2": "sd3",
                "image1_path": f"images/{i}_a.jpg",
                "image2_path": f"images/{i}_b.jpg",
                "latent1": rng.standard_normal(SHAPE, dtype=np.float32),
                "latent2": rng.standard_normal(SHAPE, dtype=np.float32),
                "record_index": i,
                "votes_chosen": 3,
                "votes_rejected": 1,
                "confidence": 0.75,
                "height": SHAPE[1] * 8,
                "width": SHAPE[2] * 8,
                "bucket_id": 8,
                "orig_chosen_height": 1100,
                "orig_chosen_width": 1000,
                "orig_rejected_height": 1200,
                "orig_rejected_width": 900,
            }
        )
    return rows


def write_pyarrow(rows: list[dict], path: Path) -> None:
    """The reference's writer loop, run in a Python thread."""

    def run() -> None:
        schema = pa.schema([PART_SCHEMA.field(c) for c in REFERENCE_COLUMNS])
        writer = pq.ParquetWriter(path, schema, compression="zstd")
        batch: list[dict] = []
        for r in rows:
            lat = []
            for k in ("latent1", "latent2"):
                buf = io.BytesIO()
                np.save(buf, r[k])
                lat.append(buf.getvalue())
            details = {
                "votes_chosen": r["votes_chosen"],
                "votes_rejected": r["votes_rejected"],
                "confidence": r["confidence"],
                "orig_chosen_hw": [r["orig_chosen_height"], r["orig_chosen_width"]],
                "orig_rejected_hw": [r["orig_rejected_height"], r["orig_rejected_width"]],
                "final_chosen_hw": [r["height"], r["width"]],
                "final_rejected_hw": [r["height"], r["width"]],
            }
            batch.append(
                {
                    "prompt": r["prompt"],
                    "model1": r["model1"],
                    "model2": r["model2"],
                    "detailed_results": str(details),
                    "image1_path": r["image1_path"],
                    "image2_path": r["image2_path"],
                    "latent1": lat[0],
                    "latent2": lat[1],
                    "latent1_shape": list(SHAPE),
                    "latent2_shape": list(SHAPE),
                }
            )
            if len(batch) == ROW_GROUP_SIZE:
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                batch.clear()
        if batch:
            writer.write_table(pa.Table.from_pylist(batch, schema=schema))
        writer.close()
        fsync_path(path)

    t = threading.Thread(target=run)
    t.start()
    t.join()


def write_ours(rows: list[dict], path: Path, latent_compression: str = "none") -> None:
    with hpd_encode.ParquetWriter(path, latent_compression=latent_compression) as w:
        for i in range(0, len(rows), 4):
            w.submit(rows[i : i + 4])


def write_ours_zstd(rows: list[dict], path: Path) -> None:
    write_ours(rows, path, "zstd")


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)  # every thread of the process
    return r.ru_utime + r.ru_stime


def measure(
    fn: Callable[[list[dict], Path], None], rows: list[dict], path: Path, runs: int
) -> tuple[float, float, float]:
    """Best wall time of ``runs``, the least process CPU time (user + system, all
    threads; steadier than wall time on a shared machine) and the longest probe
    stall over all runs."""
    best, cpu, stall = float("inf"), float("inf"), 0.0
    for _ in range(runs):
        path.unlink(missing_ok=True)
        with StallProbe() as probe:
            t, c = time.perf_counter(), cpu_seconds()
            fn(rows, path)
            best = min(best, time.perf_counter() - t)
            cpu = min(cpu, cpu_seconds() - c)
        stall = max(stall, probe.max_gap)
    return best, cpu, stall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=400)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument(
        "--dir", type=Path, default=None, help="where the files are written (default: a temp dir)"
    )
    args = ap.parse_args()
    rows = make_rows(args.rows)
    mb = sum(r["latent1"].nbytes + r["latent2"].nbytes for r in rows) / 1e6
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        py_s, py_cpu, py_stall = measure(write_pyarrow, rows, Path(tmp) / "pyarrow.parquet", args.runs)
        py_size = (Path(tmp) / "pyarrow.parquet").stat().st_size / 1e6
        ours_s, ours_cpu, ours_stall = measure(write_ours, rows, Path(tmp) / "ours.parquet", args.runs)
        ours_size = (Path(tmp) / "ours.parquet").stat().st_size / 1e6
        z_s, z_cpu, z_stall = measure(write_ours_zstd, rows, Path(tmp) / "ours-zstd.parquet", args.runs)
        z_size = (Path(tmp) / "ours-zstd.parquet").stat().st_size / 1e6
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"pyarrow {pa.__version__}, hpd-encode {hpd_encode.__version__}"
    )
    print(
        f"{args.rows} rows, two {SHAPE} float32 latents each: {mb:.0f} MB of latents; best of {args.runs}\n"
    )
    print("| writer | wall s | MB/s | CPU s | file MB | longest stall of a Python thread, ms |")
    print("|---|---:|---:|---:|---:|---:|")
    print(
        f"| pyarrow in a Python thread (reference way, zstd) | {py_s:.2f} | {mb / py_s:.0f} | {py_cpu:.2f} | "
        f"{py_size:.0f} | {py_stall * 1e3:.0f} |"
    )
    print(
        f"| hpd_encode.ParquetWriter (page per latent value, latents uncompressed: the default) | {ours_s:.2f} | "
        f"{mb / ours_s:.0f} | {ours_cpu:.2f} | {ours_size:.0f} | {ours_stall * 1e3:.0f} |"
    )
    print(
        f"| hpd_encode.ParquetWriter (page per latent value, latent_compression='zstd') | {z_s:.2f} | "
        f"{mb / z_s:.0f} | {z_cpu:.2f} | {z_size:.0f} | {z_stall * 1e3:.0f} |"
    )
    print(
        f"| ratio (ours vs pyarrow): default / zstd | | **{py_s / ours_s:.2f}x** / **{py_s / z_s:.2f}x** | "
        f"**{ours_cpu / py_cpu:.2f}x** / **{z_cpu / py_cpu:.2f}x** CPU | | |"
    )


if __name__ == "__main__":
    main()
