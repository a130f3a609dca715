"""``verify`` beside a plain sequential read of the same part files, both cold.

Writes SD3.5-shaped pairs (two 16x128x128 float32 latents, 2 MiB a pair;
default 512 pairs = 1.07 GB) with ``hpd_encode.ParquetWriter`` into an output
directory with a complete ``manifest.json``, then, ``--repeat`` times:

* drops the files' pages from the page cache
  (``posix_fadvise(POSIX_FADV_DONTNEED)``), reads every file start to end in
  8 MiB ``read`` calls and reports MB/s (what the disk gives a reader that
  does nothing with the bytes), one file at a time and then two at a time
  (dropped again before each: the disk of a VM often gives more to two
  streams than to one);
* drops the pages again and runs ``hpd_encode.latents.verify`` on the directory.

Prints the MB/s and verify's ratio to the faster plain read, each pass and
the best. The manifest records each file's digest (as ``encode`` does), so
``verify`` also digests every file. ``--warm`` also times ``verify`` from the
page cache (CPU cost alone), with the digests and, for comparison, with a
manifest that records none.

Usage::

    python benches/bench_verify.py                                  # 512 pairs, uncompressed latents
    python benches/bench_verify.py --latent-compression zstd --data /work/bench-data --keep
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from bench_reader import drop_cache  # benches/ is on sys.path when a bench runs as a script

SHAPE = (16, 128, 128)  # SD3.5, 1024x1024 images


def generate(out: Path, pairs: int, files: int, latent_compression: str) -> list[Path]:
    """Part files written by our writer, and a manifest saying the run is complete."""
    from hpd_encode import ParquetWriter
    from hpd_encode.output_dir import part_file_name
    from hpd_encode.schema import FILE_DIGEST

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    pool = rng.standard_normal((8, *SHAPE), dtype=np.float32)
    per_file = -(-pairs // files)
    paths, entries, rec = [], [], 0
    for k in range(files):
        n = min(per_file, pairs - rec)
        path = out / part_file_name(0, k)
        with ParquetWriter(path, latent_compression=latent_compression) as w:
            for start in range(0, n, 16):
                rows = []
                for i in range(rec + start, rec + min(start + 16, n)):
                    rows.append(
                        {
                            "prompt": f"prompt {i}",
                            "image1_path": f"x/{i}.jpg",
                            "image2_path": f"y/{i}.jpg",
                            "latent1": pool[i % 8] * np.float32(1 + i * 1e-3),
                            "latent2": pool[(i + 3) % 8] - np.float32(i * 1e-3),
                            "record_index": i,
                            "height": 1024,
                            "width": 1024,
                        }
                    )
                w.submit(rows)
        paths.append(path)
        entries.append({"path": path.name, "rows": n, FILE_DIGEST: w.close()[FILE_DIGEST]})
        rec += n
    (out / "manifest.json").write_text(json.dumps({"status": "complete", "files": entries}))
    return paths


def _read_file(p: Path) -> int:
    nbytes = 0
    with open(p, "rb", buffering=0) as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
        while chunk := f.read(8 << 20):
            nbytes += len(chunk)
    return nbytes


def plain_read(paths: list[Path], threads: int = 1) -> float:
    """MB/s of reading every file start to end in 8 MiB reads (``threads`` files at a time)."""
    t = time.perf_counter()
    if threads == 1:
        nbytes = sum(map(_read_file, paths))
    else:
        with ThreadPoolExecutor(threads) as pool:
            nbytes = sum(pool.map(_read_file, paths))
    return nbytes / 1e6 / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=512, help="pairs to write (2 MiB each)")
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--latent-compression", choices=("none", "zstd"), default="none")
    ap.add_argument("--repeat", type=int, default=2, help="cold passes (the best is reported)")
    ap.add_argument("--warm", action="store_true", help="also time verify from the page cache")
    ap.add_argument("--data", type=Path, default=None, help="where to put the files (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the generated files")
    args = ap.parse_args()

    from hpd_encode.latents.verify import verify
    from hpd_encode.schema import FILE_DIGEST

    root = Path(tempfile.mkdtemp(prefix="bench-verify-", dir=args.data))
    try:
        t = time.perf_counter()
        paths = generate(root / "out", args.pairs, args.files, args.latent_compression)
        size = sum(p.stat().st_size for p in paths)
        print(
            f"wrote {args.pairs} pairs ({args.latent_compression} latents) in {args.files} files, "
            f"{size / 1e9:.2f} GB, in {time.perf_counter() - t:.0f} s; cores: {os.cpu_count()}, "
            f"load average {os.getloadavg()[0]:.1f}"
        )
        best_plain = best_verify = 0.0
        for k in range(args.repeat):
            drop_cache(paths)
            plain1 = plain_read(paths)
            drop_cache(paths)
            plain2 = plain_read(paths, threads=2)
            plain = max(plain1, plain2)
            drop_cache(paths)
            t0, c0 = time.perf_counter(), time.process_time()
            report = verify(root / "out", progress=False)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            assert report.ok, report.summary()
            mbs = size / 1e6 / wall
            best_plain, best_verify = max(best_plain, plain), max(best_verify, mbs)
            print(
                f"pass {k + 1} (cold): plain read {plain1:.0f} MB/s (1 stream), {plain2:.0f} MB/s (2 streams), "
                f"verify {mbs:.0f} MB/s "
                f"({cpu / wall:.2f} CPU-s per s), verify / plain = {mbs / plain:.0%}"
            )
        print(
            f"best of {args.repeat}: plain read {best_plain:.0f} MB/s, verify {best_verify:.0f} MB/s, "
            f"verify / plain = {best_verify / best_plain:.0%}"
        )
        if args.warm:
            manifest = root / "out" / "manifest.json"
            with_digests = manifest.read_text()
            without = json.loads(with_digests)
            for entry in without["files"]:
                entry.pop(FILE_DIGEST)
            for label, text in (
                ("digests in the manifest", with_digests),
                ("no digests", json.dumps(without)),
            ):
                manifest.write_text(text)
                verify(root / "out", progress=False)
                best = (0.0, 0.0)
                for _ in range(args.repeat):
                    t0, c0 = time.perf_counter(), time.process_time()
                    report = verify(root / "out", progress=False)
                    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                    best = max(best, (size / 1e6 / wall, size / 1e6 / cpu))
                print(
                    f"verify (warm, page cache, {label}; {report.files_digest_checked} files hashed): "
                    f"{best[0]:.0f} MB/s, {best[1]:.0f} MB per CPU-second"
                )
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
