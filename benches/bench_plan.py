"""Start-up at HPDv3 scale: the reference's ``load_dataset`` vs ``encode --dry-run``, same data, same run.

Generates (or reuses, under ``--data``) an HPDv3-sized dataset with
``benches/_hpdv3_scale.py``: 1,168,962 comparisons in a ``train.json`` list
over 1,080,000 distinct image paths, hard links to ~300 real JPEGs at HPDv3
sizes, ~1.5 % of records with real-data problems (missing files, null votes).
Then, page cache warm (``train.json`` read and every image's header read
once first), times what each way does before its first VAE batch, each in its
own fresh process (wall time and peak RSS of that process from ``os.wait4``):

* ``reference``: ``datasets.load_dataset("json", data_files=train.json,
  split="train")`` + ``.select([i for i in range(n) if i % 8 == 0])`` (what
  each of the reference's ranks does), with a fresh Hugging Face cache in a
  temporary folder so the file is parsed as on a user's first run. Skipped,
  with a message, when ``datasets`` is not installed
  (``pip install -e '.[bench]'``).
* ``old planner``: hpd-encode 0.1's start-up rebuilt from its parts (one
  Python object per record from ``json.load``, two ``realpath`` per distinct
  image, ``probe_images``, ``assign_pairs``, then the object planner kept in
  ``tests/reference_planner.py``), world 1. Slow (minutes): ``--skip-old``.
* ``encode --dry-run`` world 1: ``python -m hpd_encode encode --data-root
  ROOT --metadata train.json --dry-run --json``; its JSON report gives the
  planning time (``plan_seconds``, after imports) and the stages.
* ``encode --dry-run`` under ``torchrun --nproc_per_node N`` for each of
  ``--ranks`` (default 8 and 2), best of ``--repeat`` runs like world 1:
  rank 0's own report (the CLI prints it on
  rank 0 only; each rank's stdout goes to its own log file), and the peak RSS
  of the largest process. On a 2-core machine 8 ranks share 2 cores, so rank
  0's time includes waiting for the CPU.

"time" is the work inside the process (after imports); "wall" is the whole
process (interpreter start, imports, torchrun's launch). Prints a table and
the issue-15 targets, and writes the same as JSON with ``--json-out``.

Usage::

    python benches/bench_plan.py                                   # full scale, ~10 minutes
    python benches/bench_plan.py --data bench-data/hpdv3-small --records 20000 --skip-old
    python benches/bench_plan.py --json-out bench-plan.json
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _hpdv3_scale as data

REPO = Path(__file__).resolve().parent.parent
MB = 1024  # ru_maxrss is in KiB on Linux; we print MiB as "MB", like the plan report
CPU_PIXEL_BUDGET = 2 * 1024 * 1024  # hpd-encode 0.1's VAE batch pixel budget on the CPU


@dataclass
class Run:
    name: str
    seconds: float | None  # the work inside the process
    wall: float  # the whole process
    peak_mb: float  # peak RSS of the process (for torchrun: the largest process)
    extra: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "seconds": self.seconds,
            "wall": self.wall,
            "peak_rss_mb": self.peak_mb,
            **self.extra,
        }


def say(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------------------
# Children (each runs in its own process)


def child_reference(metadata: str, cache_dir: str) -> dict[str, Any]:
    """The reference's start-up on one rank: load the JSON list with ``datasets``, keep every 8th row."""
    import datasets

    datasets.disable_progress_bars()
    t0 = time.perf_counter()
    ds = datasets.load_dataset("json", data_files=metadata, split="train", cache_dir=cache_dir)
    t_load = time.perf_counter() - t0
    n = len(ds)
    mine = ds.select([i for i in range(n) if i % 8 == 0])
    return {
        "seconds": time.perf_counter() - t0,
        "load_seconds": t_load,
        "rows": n,
        "rank_rows": len(mine),
        "datasets_version": datasets.__version__,
    }


def _old_resolve(root_real: Path, root: str, rel: str) -> str | None:
    """hpd-encode 0.1's ``resolve_image_path`` (two ``realpath`` per image); None when refused."""
    from pathlib import PurePosixPath, PureWindowsPath

    if not rel or "\x00" in rel:
        return None
    posix, win = PurePosixPath(rel), PureWindowsPath(rel)
    if posix.is_absolute() or win.is_absolute() or win.drive or rel.startswith("\\"):
        return None
    if ".." in posix.parts or ".." in win.parts:
        return None
    root_real = Path(os.path.realpath(root))  # 0.1 resolved the root again for every image
    full = root_real / rel
    real = Path(os.path.realpath(full))
    if real != root_real and root_real not in real.parents:
        return None
    return str(full)


def child_old(root: str, metadata: str) -> dict[str, Any]:
    """hpd-encode 0.1's start-up for world 1, from its parts (see the module docstring)."""
    import numpy as np

    sys.path.insert(0, str(REPO / "tests"))
    import reference_planner as rp
    from hpd_encode import BucketSet, probe_images

    stages: dict[str, float] = {}
    t0 = t = time.perf_counter()

    @dataclass(frozen=True)
    class Record:  # 0.1's Record: one object per good record
        index: int
        prompt: str
        path1: str
        path2: str
        model1: str
        model2: str
        votes_chosen: int
        votes_rejected: int
        confidence: float

    with open(metadata, "rb") as fh:
        raw = json.load(fh)
    records: list[Record] = []
    bad = 0
    for i, item in enumerate(raw):
        if not (
            isinstance(item, dict)
            and isinstance(item.get("prompt"), str)
            and all(isinstance(item.get(k), str) and item[k] for k in ("path1", "path2"))
        ):
            bad += 1
            continue
        votes = item.get("choice_dist") or [0, 0]
        records.append(
            Record(
                i,
                item["prompt"],
                item["path1"],
                item["path2"],
                item.get("model1") or "",
                item.get("model2") or "",
                int(votes[0] or 0),
                int(votes[1] or 0),
                float(item.get("confidence") or 0.0),
            )
        )
    del raw
    stages["read_metadata"] = time.perf_counter() - t
    t = time.perf_counter()
    root_real = Path(os.path.realpath(root))
    full: dict[str, str | None] = {}
    for r in records:
        for p in (r.path1, r.path2):
            if p not in full:
                full[p] = _old_resolve(root_real, root, p)
    stages["resolve_image_path"] = time.perf_counter() - t
    t = time.perf_counter()
    resolved = {p: f for p, f in full.items() if f is not None}
    paths = sorted(resolved)
    sizes, _errors = probe_images([resolved[p] for p in paths])
    probed = {p: s for p, s in zip(paths, sizes) if s is not None}
    stages["probe_images"] = time.perf_counter() - t
    t = time.perf_counter()
    pairable = [r for r in records if r.path1 in probed and r.path2 in probed]
    h1 = np.array([probed[r.path1][0] for r in pairable], dtype=np.int64)
    w1 = np.array([probed[r.path1][1] for r in pairable], dtype=np.int64)
    h2 = np.array([probed[r.path2][0] for r in pairable], dtype=np.int64)
    w2 = np.array([probed[r.path2][1] for r in pairable], dtype=np.int64)
    bucket_set = BucketSet.hpdv3()
    ids, _reasons = bucket_set.assign_pairs(h1, w1, h2, w2)
    kept = []
    for i, r in enumerate(pairable):
        if ids[i] >= 0:
            bh, bw = bucket_set.buckets[int(ids[i])]
            kept.append(
                rp.PlannedRow(
                    rp.Record(r.index, r.path1, r.path2),
                    int(ids[i]),
                    bh,
                    bw,
                    (int(h1[i]), int(w1[i])),
                    (int(h2[i]), int(w2[i])),
                )
            )
    stages["pair_rules"] = time.perf_counter() - t
    t = time.perf_counter()
    mine = rp.partition(kept, 1, True)[0]
    rows, jobs, batches = rp.order_and_batch(mine, True, lambda h, w: max(1, CPU_PIXEL_BUDGET // (h * w)))
    stages["order_and_batch"] = time.perf_counter() - t
    return {
        "seconds": time.perf_counter() - t0,
        "rows_planned": len(rows),
        "jobs": len(jobs),
        "batches": len(batches),
        "bad_records": bad,
        "stages": {k: round(v, 3) for k, v in stages.items()},
    }


# ---------------------------------------------------------------------------------------------------------------
# Measuring


def measure(cmd: list[str], env: dict[str, str] | None = None) -> tuple[str, float, float]:
    """Run ``cmd``; its stdout, wall seconds and peak RSS in MB (the largest process of its tree)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env, cwd=REPO)
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])} ... failed with exit status {code}")
    return out.decode(), wall, usage.ru_maxrss / MB


def run_child(
    which: str, args: list[str], env: dict[str, str] | None = None
) -> tuple[dict[str, Any], float, float]:
    out, wall, peak = measure([sys.executable, __file__, "--child", which, *args], env)
    return json.loads(out.strip().splitlines()[-1]), wall, peak


def warm_up(ds: data.Dataset) -> None:
    """Read ``train.json`` and the first 4 KB of every image once (page cache, dentries, inodes)."""
    t = time.perf_counter()
    with open(ds.metadata, "rb") as fh:
        while fh.read(1 << 24):
            pass
    files = data.image_files(ds.root)
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.read(fd, 4096)
        finally:
            os.close(fd)
    say(f"warm-up: train.json and {len(files):,} image headers read in {time.perf_counter() - t:.0f} s")


def bench_reference(ds: data.Dataset) -> Run | None:
    try:
        import datasets  # noqa: F401
    except ImportError:
        say("SKIP reference: `datasets` is not installed (pip install -e '.[bench]' installs the pinned one)")
        return None
    with tempfile.TemporaryDirectory(prefix="hpd-bench-hf-") as tmp:
        env = {
            **os.environ,
            "HF_HOME": tmp,
            "HF_DATASETS_CACHE": f"{tmp}/datasets",
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
        }
        say("reference: datasets.load_dataset('json') + select(i % 8 == 0), fresh cache ...")
        res, wall, peak = run_child("reference", [str(ds.metadata), f"{tmp}/datasets"], env)
    say(f"  {res['seconds']:.1f} s (load {res['load_seconds']:.1f} s), wall {wall:.1f} s, peak {peak:.0f} MB")
    return Run("reference: load_dataset + select (each rank)", res["seconds"], wall, peak, res)


def bench_old(ds: data.Dataset) -> Run:
    say("old planner (hpd-encode 0.1's start-up, world 1): this takes minutes ...")
    res, wall, peak = run_child("old", [str(ds.root), str(ds.metadata)])
    say(f"  {res['seconds']:.1f} s, wall {wall:.1f} s, peak {peak:.0f} MB; stages {res['stages']}")
    return Run("hpd-encode 0.1 planner (objects), world 1", res["seconds"], wall, peak, res)


def _dry_run_args(ds: data.Dataset) -> list[str]:
    return ["encode", "--data-root", str(ds.root), "--metadata", str(ds.metadata), "--dry-run", "--json"]


def bench_world1(ds: data.Dataset, repeat: int) -> Run:
    runs = []
    for k in range(repeat):
        say(f"encode --dry-run, world 1 (run {k + 1} of {repeat}) ...")
        out, wall, peak = measure([sys.executable, "-m", "hpd_encode", *_dry_run_args(ds)])
        report = json.loads(out)
        say(
            f"  plan {report['plan_seconds']:.1f} s, wall {wall:.1f} s, peak {peak:.0f} MB; stages {report['stages']}"
        )
        runs.append((report, wall, peak))
    report, wall, peak = min(runs, key=lambda r: r[0]["plan_seconds"])
    extra = {
        "report": report,
        "runs": [
            {"plan_seconds": r["plan_seconds"], "wall": w, "peak_rss_mb": p, "stages": r["stages"]}
            for r, w, p in runs
        ],
    }
    extra["cpu"] = report.get("plan_cpu_seconds")
    return Run("encode --dry-run, world 1", report["plan_seconds"], wall, max(p for _, _, p in runs), extra)


def bench_ranks(ds: data.Dataset, nproc: int, repeat: int) -> Run:
    """Rank 0's report under ``torchrun --nproc_per_node nproc``: the best of ``repeat`` runs (by
    the report's time, as for world 1)."""
    runs = []
    for k in range(repeat):
        say(f"encode --dry-run under torchrun --nproc_per_node {nproc} (run {k + 1} of {repeat}) ...")
        r0, wall, peak_tree = _torchrun_once(ds, nproc)
        say(
            f"  rank 0: plan {r0['plan_seconds']:.1f} s ({r0.get('plan_cpu_seconds', 0):.1f} s CPU), peak {r0['peak_rss_mb']:.0f} MB, {r0['rank_rows']:,} rows, "
            f"{r0['rank_jobs']:,} jobs, stages {r0['stages']}; largest process {peak_tree:.0f} MB; wall {wall:.1f} s"
        )
        runs.append((r0, wall, peak_tree))
    r0, wall, peak_tree = min(runs, key=lambda r: r[0]["plan_seconds"])
    extra = {
        "report_rank0": r0,
        "peak_rss_mb_largest_process": peak_tree,
        "cpu": r0.get("plan_cpu_seconds"),
        "runs": [
            {
                "plan_seconds": r["plan_seconds"],
                "cpu": r.get("plan_cpu_seconds"),
                "wall": w,
                "stages_cpu": r.get("stages_cpu"),
            }
            for r, w, _ in runs
        ],
    }
    return Run(
        f"encode --dry-run, rank 0 of {nproc} (torchrun)", r0["plan_seconds"], wall, r0["peak_rss_mb"], extra
    )


def _torchrun_once(ds: data.Dataset, nproc: int) -> tuple[dict[str, Any], float, float]:
    """One ``torchrun`` dry run: rank 0's report, the wall time and the largest process's peak RSS."""
    with tempfile.TemporaryDirectory(prefix="hpd-bench-torchrun-") as logs:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(nproc),
            "--log-dir",
            logs,
            "--redirects",
            "3",
            "-m",
            "hpd_encode",
            *_dry_run_args(ds),
        ]
        _, wall, peak_tree = measure(cmd)
        reports = {}
        for path in glob.glob(f"{logs}/**/stdout.log", recursive=True):
            rank = int(Path(path).parent.name)  # .../attempt_0/<local rank>/stdout.log
            text = Path(path).read_text().strip()
            if text:
                reports[rank] = json.loads(text.splitlines()[-1])
    if 0 not in reports:
        raise RuntimeError(f"torchrun with {nproc} ranks: no report from rank 0")
    return reports[0], wall, peak_tree  # the CLI prints the report on rank 0 only


# ---------------------------------------------------------------------------------------------------------------
# Report


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem = int(Path("/proc/meminfo").read_text().split()[1]) / 2**20
    except OSError:
        mem = 0.0
    return f"{os.cpu_count()} cores, {cpu}, {mem:.0f} GB RAM, Python {platform.python_version()}"


def table(runs: list[Run], ref: Run | None) -> list[str]:
    lines = [
        "| start-up | time s | CPU s | wall s | peak RSS MB | × faster than reference (time / wall) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        ratio = (
            "1.0 / 1.0"
            if r is ref
            else (
                f"{ref.seconds / r.seconds:.1f} / {ref.wall / r.wall:.1f}"
                if ref and ref.seconds and r.seconds
                else "-"
            )
        )
        secs = f"{r.seconds:.1f}" if r.seconds is not None else "-"
        cpu = r.extra.get("cpu") if isinstance(r.extra, dict) else None
        cpus = f"{cpu:.1f}" if cpu else "-"
        lines.append(f"| {r.name} | {secs} | {cpus} | {r.wall:.1f} | {r.peak_mb:.0f} | {ratio} |")
    return lines


def targets(world1: Run, ranks: dict[int, Run], ref: Run | None) -> list[str]:
    """The issue-15 targets, each with its measured value."""
    t1, m1 = world1.seconds or 0.0, world1.peak_mb
    out = [
        f"world 1 <= 15 s: {t1:.1f} s {'ok' if t1 <= 15 else 'MISSED'}",
        f"world 1 <= 1 GB peak RSS: {m1:.0f} MB {'ok' if m1 <= 1024 else 'MISSED'}",
    ]
    if 8 in ranks:
        t8 = ranks[8].seconds or 0.0
        out.append(
            f"rank 0 of 8 <= 1/4 of world 1 ({t1 / 4:.1f} s): {t8:.1f} s {'ok' if t8 <= t1 / 4 else 'MISSED'}"
            f" (8 processes on {os.cpu_count()} cores: rank 0's time includes waiting for the CPU)"
        )
        c1, c8 = world1.extra.get("cpu"), ranks[8].extra.get("cpu")
        if c1 and c8:
            out.append(
                f"rank 0 of 8's CPU <= 1/4 of world 1's ({c1 / 4:.1f} s): {c8:.1f} s "
                f"{'ok' if c8 <= c1 / 4 else 'MISSED'}"
            )
    if ref and ref.seconds:
        x = ref.seconds / t1 if t1 else float("inf")
        out.append(f">= 4x faster than the reference: {x:.1f}x {'ok' if x >= 4 else 'MISSED'}")
    return out


def agreement(old: Run | None, report: dict[str, Any]) -> list[str]:
    """Whether the dry run plans what hpd-encode 0.1 planned (rows, jobs, batches, world 1). Batches
    compare on a machine without CUDA only (0.1 here uses the CPU's 2 MP budget)."""
    if old is None:
        return []
    ours = (report["rows_planned"], report["jobs"], sum(report["batches_per_bucket"].values()))
    theirs = (old.extra["rows_planned"], old.extra["jobs"], old.extra["batches"])
    verdict = "same" if ours == theirs else f"DIFFERENT: 0.1 planned {theirs}"
    return [f"plan vs hpd-encode 0.1 (rows, jobs, batches) {ours}: {verdict}"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--data",
        type=Path,
        default=REPO / "bench-data" / "hpdv3-scale",
        help="dataset folder, generated when absent or of another spec (default: %(default)s)",
    )
    ap.add_argument(
        "--records", type=int, default=data.HPDV3_RECORDS, help="comparisons (default: %(default)s)"
    )
    ap.add_argument(
        "--repeat",
        type=int,
        default=2,
        help="dry runs of each kind (world 1, each --ranks), best reported (default: %(default)s)",
    )
    ap.add_argument(
        "--ranks",
        type=int,
        nargs="*",
        default=[8, 2],
        help="torchrun --nproc_per_node values to time (default: 8 2; none: skip)",
    )
    ap.add_argument("--skip-reference", action="store_true", help="do not time datasets.load_dataset")
    ap.add_argument("--skip-old", action="store_true", help="do not time hpd-encode 0.1's planner (minutes)")
    ap.add_argument("--json-out", type=Path, help="also write the results here as JSON")
    ap.add_argument("--child", choices=["reference", "old"], help=argparse.SUPPRESS)
    ap.add_argument("child_args", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child == "reference":
        print(json.dumps(child_reference(*args.child_args)))
        return
    if args.child == "old":
        print(json.dumps(child_old(*args.child_args)))
        return

    ds = data.load_or_generate(args.data, data.Spec.for_records(args.records))
    warm_up(ds)
    ref = None if args.skip_reference else bench_reference(ds)
    old = None if args.skip_old else bench_old(ds)
    world1 = bench_world1(ds, max(1, args.repeat))
    ranks = {n: bench_ranks(ds, n, max(1, args.repeat)) for n in args.ranks}
    runs = [r for r in (ref, old, world1, *ranks.values()) if r is not None]

    m = ds.manifest
    head = (
        f"start-up on {m['records']:,} records / {m['image_paths']:,} image paths "
        f"({m['image_files']:,} on disk), warm cache; {machine()}"
    )
    rep = world1.extra["report"]
    lines = [
        head,
        "",
        *table(runs, ref),
        "",
        f"plan: {rep['rows_planned']:,} rows, {rep['jobs']:,} jobs, dropped {rep['dropped_by_reason']}",
        f"world-1 stages (s): {rep['stages']}",
        *targets(world1, ranks, ref),
        *agreement(old, rep),
        "time: the work after imports (reference: load + select; encode: the report's plan_seconds); "
        "wall: the whole process; peak RSS: that process (torchrun rows: rank 0's own)",
    ]
    print("\n".join(lines))
    if args.json_out:
        result = {
            "machine": machine(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "dataset": m,
            "runs": [r.to_dict() for r in runs],
            "targets": targets(world1, ranks, ref),
        }
        args.json_out.write_text(json.dumps(result, indent=2) + "\n")
        say(f"wrote {args.json_out}")


if __name__ == "__main__":
    main()
