"""Bucket index: hpd-encode's lazy Polars scan vs the reference algorithm, same files, same run.

Generates reference-shaped part files (the reference's 10 columns, string
``detailed_results``, row groups of 100; default 1.2 M rows over 8 files),
caches them under ``~/.cache/hpd-encode/bench-index`` and reuses them, then
builds the index with the reference's example filter twice, each in a fresh
subprocess so its peak memory (``ru_maxrss`` from ``os.wait4``) is its own:

* ``reference``: the reference's builder with pandas, step for step
  (``reference_index`` in tests/test_index.py, the re-implementation the
  byte-for-byte tests use): a pyarrow row-group loop into pandas frames, its
  example filter with ``ast.literal_eval`` per row,
  ``sample(frac=1, random_state=42)``, ``groupby('prompt').head(8)``, bucket
  lookup per row, sort, ``to_csv``.
* ``hpd-encode``: ``build_index_with_stats(per_model=False)`` + ``write_index``
  (what ``hpd-encode index`` runs without ``--stats``).

Both get the same glob string; the bench checks that the two CSVs are
identical byte for byte (and fails if not).

Neither reads the latent columns, so the latents are tiny (16x4x4 float32 npy,
drawn from a pool of 64, while ``latent1_shape`` claims the bucket's size) and
carry no min/max statistics (real-size latents exceed pyarrow's statistics size
limit; tiny ones would make the footers 20 times bigger than real ones).

Usage::

    python benches/bench_index.py                 # 1.2 M rows, 8 files
    python benches/bench_index.py --rows 300000   # smaller
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

HPDV3 = [
    (256, 256), (512, 512), (1024, 768), (768, 1024), (1152, 832), (832, 1152), (1248, 832),
    (832, 1248), (1024, 1024), (1344, 896), (896, 1344), (1472, 832), (832, 1472),
]  # fmt: skip
OFF_BUCKET = [(1000, 1000), (640, 480)]  # sizes not in the set: dropped by the index
MAX_PER_PROMPT = 8
SEED = 42
DATA_VERSION = 2  # bump when the generator changes, so caches are rebuilt
DEFAULT_CACHE = Path.home() / ".cache" / "hpd-encode" / "bench-index"


# ---------------------------------------------------------------------------
# Data


def generate(root: Path, rows: int, files: int) -> list[Path]:
    """Write (or reuse) ``files`` reference-shaped part files holding ``rows`` rows in all."""
    # Not "manifest.json": hpd-encode index reads that name as an encode run's manifest.
    manifest = root / "bench-spec.json"
    spec = {"rows": rows, "files": files, "version": DATA_VERSION}
    paths = [root / f"part_rank{r:02d}.parquet" for r in range(files)]
    if manifest.is_file() and json.loads(manifest.read_text()) == spec and all(p.is_file() for p in paths):
        return paths
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    t0 = time.perf_counter()
    rng = random.Random(1234)
    nprng = np.random.default_rng(1234)
    pool = []
    for _ in range(64):
        buf = io.BytesIO()
        np.save(buf, nprng.standard_normal((16, 4, 4), dtype=np.float32))
        pool.append(buf.getvalue())
    n_prompts = max(rows // 6, 1)
    adjectives = [
        "red",
        "tiny",
        "ancient",
        "glowing",
        "wooden",
        "misty",
        "golden",
        "broken",
        "happy",
        "silent",
    ]
    nouns = ["castle", "robot", "forest", "teapot", "dragon", "city", "portrait", "garden", "ship", "cat"]
    sizes = HPDV3 + OFF_BUCKET
    weights = [1.0] * len(HPDV3) + [0.2] * len(OFF_BUCKET)
    weights[8] = 6.0  # 1024x1024 dominates, as in HPDv3
    models = ["flux-dev", "sd3.5-large", "kolors", "midjourney-v6", "hunyuan", "playground-v2.5", "sdxl"]
    per_file = [rows // files + (1 if r < rows % files else 0) for r in range(files)]
    for path, n in zip(paths, per_file, strict=True):
        prompts, m1, m2, details, p1, p2, shapes = [], [], [], [], [], [], []
        for _ in range(n):
            # Skewed prompt popularity: some prompts have far more than 8 pairs.
            k = (
                min(int(rng.paretovariate(1.2)) - 1, n_prompts - 1)
                if rng.random() < 0.3
                else rng.randrange(n_prompts)
            )
            prompts.append(
                f"a {adjectives[k % 10]} {nouns[(k // 10) % 10]} in the style of study {k}, "
                "highly detailed, dramatic lighting, 8k"
            )
            m1.append(rng.choice(models))
            m2.append(rng.choice(models))
            h, w = rng.choices(sizes, weights)[0]
            vc, vr = rng.randint(0, 10), rng.randint(0, 10)
            conf = round(rng.random(), 4)
            oh1, ow1 = rng.randint(512, 2048), rng.randint(512, 2048)
            oh2, ow2 = rng.randint(512, 2048), rng.randint(512, 2048)
            details.append(
                str(
                    {
                        "votes_chosen": vc,
                        "votes_rejected": vr,
                        "confidence": conf,
                        "orig_chosen_hw": [oh1, ow1],
                        "orig_rejected_hw": [oh2, ow2],
                        "final_chosen_hw": [h, w],
                        "final_rejected_hw": [h, w],
                    }
                )
            )
            i = len(p1)
            p1.append(f"images/{path.stem}/{i:07d}_a.jpg")
            p2.append(f"images/{path.stem}/{i:07d}_b.jpg")
            shapes.append([16, h // 8, w // 8])
        latents = pa.array([pool[rng.randrange(64)] for _ in range(n)], pa.binary())
        table = pa.table(
            {
                "prompt": pa.array(prompts, pa.string()),
                "model1": pa.array(m1, pa.string()),
                "model2": pa.array(m2, pa.string()),
                "detailed_results": pa.array(details, pa.string()),
                "image1_path": pa.array(p1, pa.string()),
                "image2_path": pa.array(p2, pa.string()),
                "latent1": latents,
                "latent2": latents,
                "latent1_shape": pa.array(shapes, pa.list_(pa.int64())),
                "latent2_shape": pa.array(shapes, pa.list_(pa.int64())),
            }
        )
        # No min/max statistics for the latents: real ones (64 KB - 1 MB) are over pyarrow's
        # statistics size limit, so they have none; tiny ones would bloat the footer 20-fold.
        stats_columns = [c for c in table.column_names if c not in ("latent1", "latent2")]
        pq.write_table(table, path, row_group_size=100, compression="zstd", write_statistics=stats_columns)
        print(f"  wrote {path} ({n:,} rows)", file=sys.stderr, flush=True)
    manifest.write_text(json.dumps(spec))
    print(f"generated {rows:,} rows in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return paths


# ---------------------------------------------------------------------------
# The two algorithms (each runs in its own subprocess)


def run_reference(pattern: str, out_csv: str) -> dict[str, int]:
    """The reference's builder with pandas: ``reference_index`` of tests/test_index.py
    (the re-implementation the byte-for-byte tests compare against), with its example filter."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from test_index import reference_filter_fn, reference_index

    indexed = reference_index(
        pattern,
        out_csv,
        HPDV3,
        max_per_prompt=MAX_PER_PROMPT,
        filter_fn=reference_filter_fn,
        filter_columns=["detailed_results"],
    )
    return {"indexed": indexed}


def run_ours(pattern: str, out_csv: str) -> dict[str, int]:
    """hpd-encode's index: lazy Polars scan, footer row-group positions, regex-parsed strings."""
    from hpd_encode.index import EXAMPLE_WHERE, build_index_with_stats, write_index

    # No per-model counts: the reference computes none (hpd-encode index --stats adds them).
    df, stats = build_index_with_stats(
        pattern, filter=EXAMPLE_WHERE, max_per_prompt=MAX_PER_PROMPT, seed=SEED, per_model=False
    )
    write_index(df, out_csv)
    return {"indexed": stats.indexed, "rows_in": stats.rows_in, "after_filter": stats.after_filter}


def child_main(which: str, pattern: str, out_csv: str) -> None:
    """Subprocess entry: import, time the algorithm, print one JSON line."""
    # Imports are not part of the timed work.
    if which == "ours":
        import hpd_encode.index.build  # noqa: F401
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
        import test_index  # noqa: F401
    t0 = time.perf_counter()
    counts = (run_ours if which == "ours" else run_reference)(pattern, out_csv)
    print(json.dumps({"seconds": time.perf_counter() - t0, **counts}))


def measure(which: str, pattern: str, out_csv: Path) -> dict[str, Any]:
    """Run one algorithm in a fresh process; its time, peak RSS (MiB) and counts."""
    cmd = [sys.executable, __file__, "--child", which, "--out", str(out_csv), pattern]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{which} failed with exit status {proc.returncode}")
    result = json.loads(output.decode().strip().splitlines()[-1])
    result["wall"] = wall
    result["peak_mib"] = usage.ru_maxrss / 1024  # Linux: KiB
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_200_000, help="rows in all (default: %(default)s)")
    ap.add_argument("--files", type=int, default=8, help="part files (default: %(default)s)")
    ap.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="where generated files are kept")
    ap.add_argument(
        "--repeat", type=int, default=3, help="runs of hpd-encode (best reported; default: %(default)s)"
    )
    ap.add_argument("--skip-reference", action="store_true", help="time hpd-encode only")
    ap.add_argument("--child", choices=["ours", "reference"], help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("pattern", nargs="?", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child_main(args.child, args.pattern, args.out)
        return

    root = args.cache_dir / f"rows{args.rows}-files{args.files}"
    paths = generate(root, args.rows, args.files)
    out_dir = args.cache_dir / "out"
    out_dir.mkdir(parents=True, exist_ok=True)
    # Warm the page cache so neither side pays for the first read.
    for p in paths:
        with open(p, "rb") as fh:
            while fh.read(1 << 24):
                pass

    # Both sides get the same glob string, as the reference's --parquet_dir.
    pattern = str(root / "part_rank*.parquet")
    ours = [measure("ours", pattern, out_dir / "ours.csv") for _ in range(max(args.repeat, 1))]
    best = min(ours, key=lambda r: r["seconds"])
    best["peak_mib"] = max(r["peak_mib"] for r in ours)
    ref = None if args.skip_reference else measure("reference", pattern, out_dir / "reference.csv")

    print()
    print(
        f"index of {args.rows:,} rows in {args.files} files (row groups of 100), example filter, "
        f"<= {MAX_PER_PROMPT} per prompt; {os.cpu_count()} cores"
    )
    header = (("time (s)", 10), ("wall (s)", 10), ("peak RSS (MiB)", 16), ("indexed", 10))
    print(f"{'':<12}" + "".join(f"{name:>{width}}" for name, width in header))
    rows = [("reference", ref), ("hpd-encode", best)] if ref else [("hpd-encode", best)]
    for name, r in rows:
        print(f"{name:<12}{r['seconds']:>10.2f}{r['wall']:>10.2f}{r['peak_mib']:>16.0f}{r['indexed']:>10,}")
    print(f"hpd-encode: {best['rows_in']:,} rows read, {best['after_filter']:,} after the filter")
    if ref:
        print(
            f"ratio: {ref['seconds'] / best['seconds']:.0f}x faster (time), "
            f"{ref['wall'] / best['wall']:.0f}x (wall, with interpreter start and imports), "
            f"{best['peak_mib'] / ref['peak_mib']:.2f} of the peak memory"
        )
        same = (out_dir / "ours.csv").read_bytes() == (out_dir / "reference.csv").read_bytes()
        print(
            f"CSVs byte-identical: {'yes' if same else 'NO'} ({out_dir / 'ours.csv'}, {out_dir / 'reference.csv'})"
        )
        if not same:
            raise SystemExit("the two indexes differ: a bug")
    print(
        "time: the algorithm inside its process; wall: the whole process; peak RSS: ru_maxrss of that process"
    )


if __name__ == "__main__":
    main()
