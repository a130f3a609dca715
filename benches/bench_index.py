"""Bucket index: hpd-encode's lazy Polars scan vs the reference algorithm, same files, same run.

Generates reference-shaped part files (the reference's 10 columns, string
``detailed_results``, row groups of 100; default 1.2 M rows over 8 files),
caches them under ``~/.cache/hpd-encode/bench-index`` and reuses them, then
builds the index with the reference's example filter twice, each in a fresh
subprocess so its peak memory (``ru_maxrss`` from ``os.wait4``) is its own:

* ``reference``: what the reference spends its time on, without pandas (not
  installed here): a pyarrow row-group loop reading ``prompt``,
  ``latent1_shape`` and ``detailed_results``, one Python dict per row,
  ``ast.literal_eval`` per row, the filter, a seeded shuffle, at most 8 per
  prompt, bucket lookup, sort, CSV.
* ``hpd-encode``: ``build_index_with_stats(per_model=False)`` + ``write_index``
  (what ``hpd-encode index`` runs without ``--stats``).

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
import ast
import csv
import io
import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections import Counter
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
    manifest = root / "manifest.json"
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


def example_filter(d: dict[str, Any]) -> bool:
    """The reference's example filter, on a parsed ``detailed_results`` dict."""
    vc, vr = d["votes_chosen"], d["votes_rejected"]
    return vc / (vc + vr + 1e-6) > 0.6 or vc == 0


def run_reference(paths: list[str], out_csv: str) -> dict[str, int]:
    """The reference's algorithm with pyarrow and plain Python (pandas is not installed)."""
    records: list[dict[str, Any]] = []
    for path in paths:
        pf = pq.ParquetFile(path)
        for rg in range(pf.num_row_groups):
            t = pf.read_row_group(rg, columns=["prompt", "latent1_shape", "detailed_results"]).to_pydict()
            for i in range(len(t["prompt"])):
                records.append(
                    {
                        "parquet_path": path,
                        "row_group": rg,
                        "row_index": i,
                        "prompt": t["prompt"][i],
                        "latent1_shape": t["latent1_shape"][i],
                        "detailed_results": t["detailed_results"][i],
                    }
                )
    rows_in = len(records)
    for r in records:
        r["detailed_results"] = ast.literal_eval(r["detailed_results"])
    records = [r for r in records if example_filter(r["detailed_results"])]
    after_filter = len(records)
    for r in records:
        r["height"] = r["latent1_shape"][-2] * 8
        r["width"] = r["latent1_shape"][-1] * 8
    random.Random(SEED).shuffle(records)
    seen: Counter[str] = Counter()
    capped = []
    for r in records:
        if seen[r["prompt"]] < MAX_PER_PROMPT:
            seen[r["prompt"]] += 1
            capped.append(r)
    bucket_of = {hw: i for i, hw in enumerate(HPDV3)}
    out = []
    for r in capped:
        b = bucket_of.get((r["height"], r["width"]))
        if b is not None:
            r["bucket_id"] = b
            out.append(r)
    out.sort(key=lambda r: (r["parquet_path"], r["row_group"], r["row_index"]))
    with open(out_csv, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["global_id", "parquet_path", "row_group", "row_index", "width", "height", "bucket_id"])
        for gid, r in enumerate(out):
            w.writerow(
                [
                    gid,
                    r["parquet_path"],
                    r["row_group"],
                    r["row_index"],
                    r["width"],
                    r["height"],
                    r["bucket_id"],
                ]
            )
    return {"rows_in": rows_in, "after_filter": after_filter, "after_cap": len(capped), "indexed": len(out)}


def run_ours(paths: list[str], out_csv: str) -> dict[str, int]:
    """hpd-encode's index: lazy Polars scan, footer row-group positions, regex-parsed strings."""
    from hpd_encode.index import EXAMPLE_WHERE, build_index_with_stats, write_index

    # No per-model counts: the reference computes none (hpd-encode index --stats adds them).
    df, stats = build_index_with_stats(
        paths, filter=EXAMPLE_WHERE, max_per_prompt=MAX_PER_PROMPT, seed=SEED, per_model=False
    )
    write_index(df, out_csv)
    return {
        "rows_in": stats.rows_in,
        "after_filter": stats.after_filter,
        "after_cap": stats.after_cap,
        "indexed": stats.indexed,
    }


def child_main(which: str, paths: list[str], out_csv: str) -> None:
    """Subprocess entry: import, time the algorithm, print one JSON line."""
    if which == "ours":
        import hpd_encode.index  # noqa: F401  (imports are not part of the timed work)
    t0 = time.perf_counter()
    counts = (run_ours if which == "ours" else run_reference)(paths, out_csv)
    print(json.dumps({"seconds": time.perf_counter() - t0, **counts}))


def measure(which: str, paths: list[Path], out_csv: Path) -> dict[str, Any]:
    """Run one algorithm in a fresh process; its time, peak RSS (MiB) and counts."""
    cmd = [sys.executable, __file__, "--child", which, "--out", str(out_csv), *map(str, paths)]
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
    ap.add_argument("paths", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child_main(args.child, args.paths, args.out)
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

    ours = [measure("ours", paths, out_dir / "ours.csv") for _ in range(max(args.repeat, 1))]
    best = min(ours, key=lambda r: r["seconds"])
    best["peak_mib"] = max(r["peak_mib"] for r in ours)
    ref = None if args.skip_reference else measure("reference", paths, out_dir / "reference.csv")

    print()
    print(
        f"index of {args.rows:,} rows in {args.files} files (row groups of 100), example filter, "
        f"<= {MAX_PER_PROMPT} per prompt; {os.cpu_count()} cores"
    )
    header = (
        ("time (s)", 10),
        ("wall (s)", 10),
        ("peak RSS (MiB)", 16),
        ("after filter", 14),
        ("after cap", 11),
    )
    print(f"{'':<12}" + "".join(f"{name:>{width}}" for name, width in header) + f"{'indexed':>10}")
    rows = [("reference", ref), ("hpd-encode", best)] if ref else [("hpd-encode", best)]
    for name, r in rows:
        print(
            f"{name:<12}{r['seconds']:>10.2f}{r['wall']:>10.2f}{r['peak_mib']:>16.0f}"
            f"{r['after_filter']:>14,}{r['after_cap']:>11,}{r['indexed']:>10,}"
        )
    if ref:
        print(
            f"ratio: {ref['seconds'] / best['seconds']:.0f}x faster (time), "
            f"{ref['wall'] / best['wall']:.0f}x (wall, with interpreter start and imports), "
            f"{best['peak_mib'] / ref['peak_mib']:.2f} of the peak memory"
        )
        if (ref["rows_in"], ref["after_filter"], ref["after_cap"]) != (
            best["rows_in"],
            best["after_filter"],
            best["after_cap"],
        ):
            raise SystemExit("the two indexes disagree on the counts: a bug")
    print(
        "time: the algorithm inside its process; wall: the whole process; peak RSS: ru_maxrss of that process"
    )


if __name__ == "__main__":
    main()
