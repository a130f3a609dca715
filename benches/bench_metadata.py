"""Time and peak memory of ``read_metadata`` on HPDv3-scale metadata.

Generates (once, cached in ``--dir``) HPDv3-like metadata of ``--records``
comparisons (prompt ~100 characters, paths like ``images/model_3/0001234.jpg``,
models, ``choice_dist``, ``confidence``) as a compact JSON list, an indented
JSON list (``json.dump(indent=2)``) and JSON Lines, the compact list again with
every tenth record bad (``bad_tenth``: a fractional, huge or non-finite vote or
confidence, an empty path, a number as a model, a null prompt), plus 5 MB of
junk lines; then reads each in a fresh process and prints wall time, CPU time
and peak RSS (``VmHWM``).

    .venv/bin/python benches/bench_metadata.py --records 1168962 --dir /tmp/hpd-meta
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

WORDS = (
    "a photo of cat dog astronaut riding horse castle sunset neon city portrait oil painting watercolor "
    "highly detailed 8k cinematic lighting forest river mountain robot dragon girl boy old man street"
).split()


def _record(rng: random.Random, i: int) -> dict[str, object]:
    m1, m2 = rng.randrange(12), rng.randrange(12)
    prompt = " ".join(rng.choice(WORDS) for _ in range(16))[:100]
    return {
        "prompt": prompt,
        "path1": f"images/model_{m1}/{2 * i:07d}.jpg",
        "path2": f"images/model_{m2}/{2 * i + 1:07d}.jpg",
        "model1": f"model_{m1}",
        "model2": f"model_{m2}",
        "choice_dist": [rng.randrange(10), rng.randrange(10)],
        "confidence": round(rng.random(), 4),
    }


def generate(out: Path, n: int) -> dict[str, Path]:
    files = {
        "list": out / "train.json",
        "list_indent": out / "train_indent.json",
        "lines": out / "train.jsonl",
        "bad_tenth": out / "bad_tenth.json",
        "junk": out / "junk.jsonl",
    }
    if all(f.exists() for f in files.values()) and (out / f"n={n}").exists():
        return files
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    records = [_record(rng, i) for i in range(n)]
    files["list"].write_text(json.dumps(records))
    files["list_indent"].write_text(json.dumps(records, indent=2))
    with open(files["lines"], "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    bad: list[dict[str, object]] = [
        {"choice_dist": [2.5, 1]},
        {"path1": ""},
        {"confidence": float("nan")},
        {"model1": 5},
        {"prompt": None},
        {"choice_dist": [10**30, 1]},
    ]
    files["bad_tenth"].write_text(
        json.dumps([{**r, **bad[i // 10 % len(bad)]} if i % 10 == 0 else r for i, r in enumerate(records)])
    )
    junk = bytearray()
    while len(junk) < 5 << 20:
        line = bytes(rng.randrange(32, 256) for _ in range(rng.randrange(1, 80)))
        junk += (b"{" if rng.random() < 0.5 else b"") + line.replace(b"\n", b" ") + b"\n"
    files["junk"].write_bytes(bytes(junk))
    (out / f"n={n}").touch()
    return files


CHILD = """
import sys, time
from hpd_encode.metadata import read_metadata
t, c = time.perf_counter(), time.process_time()
m = read_metadata(sys.argv[1])
dt, cpu = time.perf_counter() - t, time.process_time() - c
rss = int(next(ln for ln in open("/proc/self/status") if ln.startswith("VmHWM")).split()[1]) / 1024
print(f"{dt:.2f}/{cpu:.2f} {rss:.0f} {m.table.height} {len(m.failures)} {m.n_entries}")
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=1_168_962)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/hpd-meta"))
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    t = time.perf_counter()
    files = generate(args.dir, args.records)
    print(f"data in {args.dir} ({time.perf_counter() - t:.1f} s)")
    base = subprocess.run(
        [
            sys.executable,
            "-c",
            "import hpd_encode.metadata; "
            "print(next(ln for ln in open('/proc/self/status') if ln.startswith('VmHWM')).split()[1])",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    print(f"baseline RSS after import: {int(base) // 1024} MB")
    print(
        f"{'file':<12} {'MB':>6} {'wall/cpu s':>11} {'peak RSS MB':>12} {'good':>9} {'failures':>9} {'entries':>9}"
    )
    for name, path in files.items():
        for _ in range(args.repeat):
            out = subprocess.run(
                [sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True, check=True
            ).stdout.split()
            print(
                f"{name:<12} {path.stat().st_size / 1e6:>6.0f} {out[0]:>11} {out[1]:>12} {out[2]:>9} {out[3]:>9}"
                f" {out[4]:>9}"
            )


if __name__ == "__main__":
    main()
