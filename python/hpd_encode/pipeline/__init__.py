"""The encode job: metadata -> probed sizes -> pair rules -> shared jobs ->
decode (Rust, background) -> VAE (torch) -> Parquet part files (Rust writer).

See :func:`encode`. The CLI's ``hpd-encode encode`` is a thin layer over it.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import queue
import re
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from hpd_encode import _core
from hpd_encode.buckets import bucket_set_spec, load_bucket_set
from hpd_encode.dist import Dist, init_dist
from hpd_encode.metadata import Record, UnsafePathError, read_metadata, resolve_image_path
from hpd_encode.plan import Batch, Job, PlannedRow, order_and_batch, partition
from hpd_encode.schema import ROW_GROUP_SIZE

log = logging.getLogger("hpd_encode.encode")

MANIFEST = "manifest.json"
SUMMARY = "summary.json"
FAILURES = "failures.csv"
STATE_DIR = ".hpd-encode"
PART_RE = re.compile(r"^part_rank(\d+)(?:-(\d+))?\.parquet$")
TEMP_RE = re.compile(r"^\.part_rank\d+(?:-\d+)?\.parquet\.tmp-\d+$")


class ResumeMismatchError(ValueError):
    """The output directory holds a run made with settings that change latents."""


@dataclass
class Failure:
    record_index: int
    image1_path: str
    image2_path: str
    stage: str  # metadata | path | probe | pair_rule | decode | nonfinite
    reason: str

    def key(self) -> str:
        return self.reason.split(":", 1)[0]


def part_file_name(rank: int, k: int) -> str:
    return f"part_rank{rank:02d}.parquet" if k == 0 else f"part_rank{rank:02d}-{k:04d}.parquet"


def list_part_files(output_dir: Path) -> list[Path]:
    return sorted(p for p in output_dir.iterdir() if PART_RE.match(p.name)) if output_dir.is_dir() else []


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _auto_batch_size(device: str) -> int:
    # A pixel budget per VAE call: 8 MP on a GPU (bf16, SD3.5-size VAE), 2 MP on CPU.
    return 8 * 1024 * 1024 if device.startswith("cuda") else 2 * 1024 * 1024


class _Progress:
    """tqdm on a terminal; plain log lines every ``every_s`` seconds otherwise."""

    def __init__(self, total: int, enabled: bool, rank: int, every_s: float = 10.0) -> None:
        self.total, self.done, self.rank, self.every_s = total, 0, rank, every_s
        self.start = self.last = time.monotonic()
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="row", desc=f"encode[rank {rank}]", dynamic_ncols=True)
        self.log = enabled

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.monotonic()
        if self.log and (now - self.last >= self.every_s or self.done == self.total):
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            log.info("rank %d: %d/%d rows, %.1f rows/s, ETA %s", self.rank, self.done, self.total, rate,
                     "?" if eta == float("inf") else time.strftime("%H:%M:%S", time.gmtime(eta)))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _PartRotator:
    """Writes a rank's rows into committed part files of at most ``rows_per_file`` rows."""

    def __init__(self, output_dir: Path, rank: int, rows_per_file: int, queue_size: int) -> None:
        self.output_dir, self.rank = output_dir, rank
        self.rows_per_file = rows_per_file if rows_per_file > 0 else None
        self.queue_size = queue_size
        taken = [int(m.group(2) or 0) for p in list_part_files(output_dir)
                 if (m := PART_RE.match(p.name)) and int(m.group(1)) == rank]
        self.next_k = max(taken) + 1 if taken else 0
        self.writer: _core.ParquetWriter | None = None
        self.in_file = 0
        self.files: list[dict] = []
        self.blocked_s = 0.0

    def open(self) -> None:
        path = self.output_dir / part_file_name(self.rank, self.next_k)
        self.next_k += 1
        self.writer = _core.ParquetWriter(path, row_group_size=ROW_GROUP_SIZE, queue_size=self.queue_size)
        self.in_file = 0

    def submit(self, rows: list[dict]) -> None:
        while rows:
            if self.writer is None:
                self.open()
            room = len(rows) if self.rows_per_file is None else self.rows_per_file - self.in_file
            chunk, rows = rows[:room], rows[room:]
            self.writer.submit(chunk)
            self.in_file += len(chunk)
            if self.rows_per_file is not None and self.in_file >= self.rows_per_file:
                self.commit()

    def commit(self) -> None:
        if self.writer is not None:
            stats = self.writer.close()
            self.blocked_s += stats["blocked_seconds"]
            self.files.append({"path": Path(stats["path"]).name, "rows": stats["rows"], "bytes": stats["bytes"]})
            log.debug("committed %s (%d rows)", stats["path"], stats["rows"])
            self.writer = None

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()
            self.writer = None


def _vae_identity(vae: str | PathLike[str]) -> str:
    """The VAE as the fingerprint records it: a local folder or file by its
    resolved path (``./vae``, ``vae/`` and ``/abs/vae`` are the same run), a
    hub id as given."""
    path = Path(os.fspath(vae)).expanduser()
    return str(path.resolve()) if path.exists() else os.fspath(vae)


def _fingerprint(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _prepare_output(output_dir: Path, settings: dict, overwrite: bool) -> dict:
    """Rank 0: check a previous run's settings, or clear it with overwrite."""
    output_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = output_dir / MANIFEST
    fp = _fingerprint(settings)
    previous = list_part_files(output_dir)
    if overwrite:
        for p in previous:
            p.unlink()
        for name in (MANIFEST, SUMMARY, FAILURES):
            (output_dir / name).unlink(missing_ok=True)
        previous = []
    elif manifest_path.is_file():
        old = json.loads(manifest_path.read_text())
        if old.get("fingerprint") != fp:
            changed = sorted(k for k in set(old.get("settings", {})) | set(settings)
                             if old.get("settings", {}).get(k) != settings.get(k))
            raise ResumeMismatchError(
                f"'{output_dir}' holds a run made with different settings ({', '.join(changed)}); "
                "pass --overwrite to start over, or choose another --output-dir"
            )
    elif previous:
        raise ResumeMismatchError(
            f"'{output_dir}' holds part files but no {MANIFEST}; pass --overwrite or choose another --output-dir"
        )
    for p in output_dir.iterdir():
        if TEMP_RE.match(p.name):
            log.info("removing the incomplete file %s left by an interrupted run", p.name)
            p.unlink()
    (output_dir / STATE_DIR).mkdir(exist_ok=True)
    for p in (output_dir / STATE_DIR).iterdir():
        p.unlink()
    manifest = {"format": 1, "tool": f"hpd-encode {_core.__version__}", "fingerprint": fp,
                "settings": settings, "status": "running", "files": []}
    _write_json_atomic(manifest_path, manifest)
    return manifest


def _done_records(output_dir: Path) -> set[int]:
    done: set[int] = set()
    for p in list_part_files(output_dir):
        try:
            names = pq.read_schema(p).names
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"cannot read the existing part file '{p}': {e}; remove it or pass --overwrite") from e
        if "record_index" not in names:
            raise ValueError(f"'{p}' was not written by hpd-encode (no record_index column); pass --overwrite")
        col = pq.read_table(p, columns=["record_index"]).column(0).to_numpy()
        dup = done.intersection(col.tolist())
        if dup:
            raise ValueError(f"'{p}' repeats records already in other part files (e.g. {min(dup)})")
        done.update(col.tolist())
    return done


def _seed_of(seed: int, job: Job) -> int:
    from hpd_encode.vae import item_seed

    return item_seed(seed, job.seed_key)


def encode(
    data_root: str | PathLike[str],
    metadata: str | PathLike[str],
    output_dir: str | PathLike[str],
    vae: str | PathLike[str],
    *,
    vae_subfolder: str | None = None,
    dtype: str = "auto",
    device: str | None = None,
    buckets: Any = "hpdv3",
    batch_size: int | str = "auto",
    latent: str = "sample",
    store_dtype: str = "float32",
    seed: int = 0,
    limit: int | None = None,
    overwrite: bool = False,
    workers: int | None = None,
    share: bool = True,
    rows_per_file: int = 2000,
    prefetch: int = 2,
    alpha: str = "drop",
    max_pixels: int = _core.DEFAULT_MAX_PIXELS,
    progress: bool = True,
    dist_timeout_s: float = 7200.0,
) -> dict:
    """Encode an HPDv3-style dataset into Parquet part files in ``output_dir``.

    Returns the run summary (also written to ``output_dir/summary.json``).
    Rerunning the same call resumes: rows already committed are kept and
    skipped. Under ``torchrun`` each rank encodes its share of the work.
    """
    from hpd_encode.vae import load_vae, resolve_device, resolve_dtype

    t0 = time.monotonic()
    if latent not in ("sample", "mean"):
        raise ValueError(f"latent must be 'sample' or 'mean', not {latent!r}")
    if store_dtype not in ("float32", "float16"):
        raise ValueError(f"store_dtype must be 'float32' or 'float16', not {store_dtype!r}")
    data_root, metadata, output_dir = Path(data_root), Path(metadata), Path(output_dir)
    if not data_root.is_dir():
        raise FileNotFoundError(f"data root '{data_root}' is not a directory")
    if not metadata.is_file():
        raise FileNotFoundError(f"metadata file '{metadata}' does not exist")
    bucket_set = load_bucket_set(buckets)
    dist = init_dist(dist_timeout_s)
    try:
        dev = resolve_device(device)
        if dev == "cuda" and dist.enabled:
            dev = f"cuda:{dist.local_rank}"
        if workers is None:
            workers = max(1, (os.cpu_count() or 1) // max(1, dist.local_world_size))
        if dev == "cpu" and dist.local_world_size > 1:
            import torch

            torch.set_num_threads(max(1, (os.cpu_count() or 1) // dist.local_world_size))
        settings = {
            "vae": _vae_identity(vae), "vae_subfolder": vae_subfolder, "dtype": str(resolve_dtype(dtype, dev)).replace("torch.", ""),
            "latent": latent, "seed": seed, "store_dtype": store_dtype, "buckets": bucket_set_spec(bucket_set),
            "alpha": alpha, "metadata_sha256": _file_sha256(metadata), "limit": limit,
        }
        # Rank 0 checks/clears the output directory; everyone learns the outcome.
        status: Any = None
        if dist.rank == 0:
            try:
                _prepare_output(output_dir, settings, overwrite)
                status = "ok"
            except Exception as e:  # noqa: BLE001 - re-raised on every rank below
                status = e
        status = dist.broadcast(status)
        if isinstance(status, Exception):
            raise status
        dist.barrier()
        summary = _run(dist, data_root, metadata, output_dir, vae, vae_subfolder, dev, dtype, bucket_set, batch_size,
                       latent, store_dtype, seed, limit, workers, share, rows_per_file, prefetch, alpha, max_pixels,
                       progress, settings, t0, load_vae)
    except BaseException:
        dist.close(clean=False)
        raise
    dist.close()
    return summary


def _run(dist: Dist, data_root: Path, metadata: Path, output_dir: Path, vae_source, vae_subfolder, dev: str,
         dtype: str, bucket_set, batch_size, latent: str, store_dtype: str, seed: int, limit, workers: int,
         share: bool, rows_per_file: int, prefetch: int, alpha: str, max_pixels: int, progress: bool,
         settings: dict, t0: float, load_vae) -> dict:
    records, problems = read_metadata(metadata, limit=limit)
    failures: list[Failure] = [Failure(p.index, "", "", "metadata", p.reason) for p in problems]
    done = _done_records(output_dir)
    todo: list[Record] = []
    full: dict[str, Path] = {}
    for r in records:
        if r.index in done:
            continue
        try:
            for p in (r.path1, r.path2):
                if p not in full:
                    full[p] = resolve_image_path(data_root, p)
        except UnsafePathError as e:
            failures.append(Failure(r.index, r.path1, r.path2, "path", f"unsafe_path: {e}"))
            continue
        todo.append(r)

    # Probe every distinct image once, split across ranks, gathered everywhere.
    paths = sorted({p for r in todo for p in (r.path1, r.path2)})
    mine = paths[dist.rank :: dist.world_size]
    sizes, errors = _core.probe_images([full[p] for p in mine], num_threads=workers)
    probed: dict[str, tuple[tuple[int, int] | None, str | None]] = {}
    for part in dist.all_gather(list(zip(mine, sizes, errors))):
        for p, s, e in part:
            probed[p] = (tuple(s) if s else None, e)

    pairable: list[Record] = []
    for r in todo:
        errs = [probed[p][1] for p in (r.path1, r.path2) if probed[p][0] is None]
        if errs:
            failures.append(Failure(r.index, r.path1, r.path2, "probe", f"unreadable_image: {'; '.join(errs)}"))
        else:
            pairable.append(r)
    h1 = np.array([probed[r.path1][0][0] for r in pairable], dtype=np.int64)
    w1 = np.array([probed[r.path1][0][1] for r in pairable], dtype=np.int64)
    h2 = np.array([probed[r.path2][0][0] for r in pairable], dtype=np.int64)
    w2 = np.array([probed[r.path2][0][1] for r in pairable], dtype=np.int64)
    ids, reasons = bucket_set.assign_pairs(h1, w1, h2, w2)
    kept: list[PlannedRow] = []
    for i, r in enumerate(pairable):
        if ids[i] < 0:
            why = bucket_set.DROP_REASONS[int(reasons[i])]
            failures.append(Failure(r.index, r.path1, r.path2, "pair_rule",
                                    f"{why}: sizes {h1[i]}x{w1[i]} and {h2[i]}x{w2[i]}"))
            continue
        bh, bw = bucket_set.buckets[int(ids[i])]
        kept.append(PlannedRow(r, int(ids[i]), bh, bw, (int(h1[i]), int(w1[i])), (int(h2[i]), int(w2[i]))))
    if dist.rank == 0:
        log.info("%d records: %d already done, %d to encode, %d dropped or bad", len(records) + len(problems),
                 len(done), len(kept), len(failures))

    budget = batch_size if isinstance(batch_size, int) else None
    if budget is None and str(batch_size) != "auto":
        budget = int(batch_size)
    pixel_budget = _auto_batch_size(dev)

    def batch_size_for(h: int, w: int) -> int:
        return budget if budget is not None else max(1, pixel_budget // (h * w))

    my_rows = partition(kept, dist.world_size, share)[dist.rank]
    rows, jobs, batches = order_and_batch(my_rows, share, batch_size_for)
    stats = Counter()
    rank_failures: list[Failure] = []
    rotator = _PartRotator(output_dir, dist.rank, rows_per_file, queue_size=8)
    t_encode = time.monotonic()
    if rows:
        vae = load_vae(str(vae_source), subfolder=vae_subfolder, device=dev, dtype=dtype)
        settings["vae_class"] = vae.class_name
        bar = _Progress(len(rows), progress, dist.rank)
        try:
            _encode_rows(vae, rows, jobs, batches, full, rotator, bar, stats, rank_failures, latent=latent,
                         store_dtype=store_dtype, seed=seed, workers=workers, prefetch=prefetch, alpha=alpha,
                         max_pixels=max_pixels, shrink_batches=budget is None)
            rotator.commit()
        except BaseException:
            rotator.abort()
            raise
        finally:
            bar.close()
    elif rotator.next_k == 0:
        # Nothing for this rank in a fresh run: still write its (empty) part
        # file, so a world of N ranks gives part_rank00 .. N-1 as the reference.
        rotator.open()
        rotator.commit()
    elapsed_encode = time.monotonic() - t_encode
    stats["rows_written"] = sum(f["rows"] for f in rotator.files)
    rank_report = {"rank": dist.rank, "stats": dict(stats), "files": rotator.files, "encode_seconds": elapsed_encode,
                   "writer_blocked_seconds": rotator.blocked_s,
                   "failures": [f.__dict__ for f in rank_failures]}
    _write_json_atomic(output_dir / STATE_DIR / f"rank{dist.rank:02d}.json", rank_report)
    dist.barrier()
    summary: dict = {}
    if dist.rank == 0:
        summary = _finish(output_dir, dist, settings, records, problems, done, kept, failures, t0)
    return dist.broadcast(summary)


def _encode_rows(vae, rows: list[PlannedRow], jobs: list[Job], batches: list[Batch], full: dict[str, Path],
                 rotator: _PartRotator, bar: _Progress, stats: Counter, failures: list[Failure], *, latent: str,
                 store_dtype: str, seed: int, workers: int, prefetch: int, alpha: str, max_pixels: int,
                 shrink_batches: bool) -> None:
    import torch

    from hpd_encode.vae import encode_pixels, latents_to_numpy

    latents: dict[int, np.ndarray] = {}
    job_error: dict[int, str] = {}
    remaining = [len(j.rows) for j in jobs]  # rows still waiting on each job
    row_waiting = [2] * len(rows)  # jobs each row still waits for
    max_chunk: dict[tuple[int, int], int] = {}

    stop = threading.Event()
    q: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
    # On the CPU the decode threads also normalise (float32 NCHW in [-1, 1],
    # bit-identical to torch's `/ 127.5 - 1`), in parallel, per image; an
    # accelerator gets uint8 (4x less to copy) and normalises it itself.
    normalize = torch.device(vae.device).type == "cpu"

    def hand_over(item: object) -> bool:
        """Queue ``item`` unless the consumer has stopped (then never block)."""
        while not stop.is_set():
            try:
                q.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def producer() -> None:
        try:
            for b in batches:
                if stop.is_set():
                    return
                arr, errs = _core.load_batch([full[jobs[j].path] for j in b.jobs], (b.height, b.width),
                                             num_threads=workers, alpha=alpha, max_pixels=max_pixels,
                                             normalize=normalize)
                if not hand_over((b, arr, errs)):
                    return
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            hand_over(e)
            return
        hand_over(None)

    thread = threading.Thread(target=producer, name="hpd-encode-decode", daemon=True)
    thread.start()

    def encode_chunked(x: torch.Tensor, seeds: list[int], size: tuple[int, int]) -> torch.Tensor:
        n = x.shape[0]
        chunk = max_chunk.get(size, n)
        while True:
            try:
                outs = [encode_pixels(vae, x[i : i + chunk], mode=latent, seeds=seeds[i : i + chunk])
                        for i in range(0, n, chunk)]
                stats["vae_calls"] += len(outs)
                return torch.cat(outs) if len(outs) > 1 else outs[0]
            except torch.cuda.OutOfMemoryError:
                if chunk == 1 or not shrink_batches:
                    raise
                torch.cuda.empty_cache()
                chunk = max(1, chunk // 2)
                max_chunk[size] = chunk
                log.warning("CUDA out of memory at %dx%d: retrying with %d images per VAE call", *size, chunk)

    def finish_job(j: int, pending: list[dict]) -> None:
        for r_i in jobs[j].rows:
            row_waiting[r_i] -= 1
            if row_waiting[r_i] == 0:
                row = rows[r_i]
                errs = [job_error[k] for k in (row.job1, row.job2) if k in job_error]
                if errs:
                    stage = "nonfinite" if all(e.startswith("nonfinite") for e in errs) else "decode"
                    failures.append(Failure(row.record.index, row.record.path1, row.record.path2, stage, "; ".join(errs)))
                    stats[f"failed_{stage}"] += 1
                    bar.update(1)
                else:
                    pending.append(_row_dict(row, latents[row.job1], latents[row.job2]))
                for k in (row.job1, row.job2):
                    remaining[k] -= 1
                    if remaining[k] == 0:
                        latents.pop(k, None)

    try:
        while True:
            item = q.get()
            if item is None:
                break
            if isinstance(item, BaseException):
                raise item
            b, arr, errs = item
            stats["images_decoded"] += len(b.jobs)
            ok = [i for i, e in enumerate(errs) if e is None]
            for i, e in enumerate(errs):
                if e is not None:
                    job_error[b.jobs[i]] = f"decode_error: {e}"
                    stats["images_failed"] += 1
            if ok:
                x = torch.from_numpy(arr if len(ok) == len(errs) else arr[ok])
                seeds = [_seed_of(seed, jobs[b.jobs[i]]) for i in ok]
                z = encode_chunked(x, seeds, (b.height, b.width))
                finite = torch.isfinite(z).flatten(1).all(dim=1).tolist()
                z_np = latents_to_numpy(z, store_dtype)
                for pos, i in enumerate(ok):
                    j = b.jobs[i]
                    if finite[pos] and np.isfinite(z_np[pos]).all():
                        latents[j] = z_np[pos]
                    else:
                        job_error[j] = f"nonfinite_latent: '{jobs[j].path}' at {b.height}x{b.width} gave NaN/Inf"
                stats["images_encoded"] += len(ok)
            pending: list[dict] = []
            for j in b.jobs:
                finish_job(j, pending)
            if pending:
                rotator.submit(pending)
                bar.update(len(pending))
            stats["max_pending_latents"] = max(stats["max_pending_latents"], len(latents))
    finally:
        stop.set()
        thread.join(timeout=30)


def _row_dict(row: PlannedRow, l1: np.ndarray, l2: np.ndarray) -> dict:
    r = row.record
    return {
        "prompt": r.prompt, "model1": r.model1, "model2": r.model2,
        "image1_path": r.path1, "image2_path": r.path2,
        "latent1": l1, "latent2": l2,
        "record_index": r.index, "votes_chosen": r.votes_chosen, "votes_rejected": r.votes_rejected,
        "confidence": r.confidence, "height": row.height, "width": row.width, "bucket_id": row.bucket_id,
        "orig_chosen_height": row.orig_chosen[0], "orig_chosen_width": row.orig_chosen[1],
        "orig_rejected_height": row.orig_rejected[0], "orig_rejected_width": row.orig_rejected[1],
    }


def _finish(output_dir: Path, dist: Dist, settings: dict, records, problems, done: set[int],
            kept: list[PlannedRow], failures: list[Failure], t0: float) -> dict:
    reports = []
    for r in range(dist.world_size):
        path = output_dir / STATE_DIR / f"rank{r:02d}.json"
        reports.append(json.loads(path.read_text()))
    stats: Counter = Counter()
    for rep in reports:
        stats.update(rep["stats"])
        failures.extend(Failure(**f) for f in rep["failures"])
    failures.sort(key=lambda f: f.record_index)
    with open(output_dir / f".{FAILURES}.tmp", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["record_index", "image1_path", "image2_path", "stage", "reason"])
        for fl in failures:
            w.writerow([fl.record_index, fl.image1_path, fl.image2_path, fl.stage, fl.reason])
    os.replace(output_dir / f".{FAILURES}.tmp", output_dir / FAILURES)
    files = []
    for p in list_part_files(output_dir):
        files.append({"path": p.name, "rows": pq.ParquetFile(p).metadata.num_rows, "bytes": p.stat().st_size})
    elapsed = time.monotonic() - t0
    encode_s = max((rep["encode_seconds"] for rep in reports), default=0.0)
    rows_written = int(stats.get("rows_written", 0))
    by_reason = Counter(f.key() for f in failures)
    summary = {
        "status": "complete",
        "output_dir": str(output_dir),
        "records_in_metadata": len(records) + len(problems),
        "records_already_done": len(done),
        "pairs_planned": len(kept),
        "rows_written": rows_written,
        "rows_total": sum(f["rows"] for f in files),
        "images_decoded": int(stats.get("images_decoded", 0)),
        "images_encoded": int(stats.get("images_encoded", 0)),
        "vae_calls": int(stats.get("vae_calls", 0)),
        "max_pending_latents": int(stats.get("max_pending_latents", 0)),
        "failed_or_dropped": len(failures),
        "by_reason": dict(sorted(by_reason.items())),
        "by_stage": dict(sorted(Counter(f.stage for f in failures).items())),
        "world_size": dist.world_size,
        "elapsed_seconds": round(elapsed, 3),
        "encode_seconds": round(encode_s, 3),
        "rows_per_second": round(rows_written / encode_s, 3) if encode_s > 0 else None,
        "images_per_second": round(stats.get("images_encoded", 0) / encode_s, 3) if encode_s > 0 else None,
        "writer_blocked_seconds": round(sum(rep["writer_blocked_seconds"] for rep in reports), 3),
        "settings": settings,
        "files": files,
        "failures_file": FAILURES,
    }
    manifest = json.loads((output_dir / MANIFEST).read_text())
    manifest.update({"status": "complete", "files": files})
    _write_json_atomic(output_dir / MANIFEST, manifest)
    _write_json_atomic(output_dir / SUMMARY, summary)
    return summary
