"""The encode stage: decode batches in the background (Rust), run the VAE
(torch), and hand finished rows to the part-file writer (Rust).

An :class:`Encoder` holds one rank's run: its plan, the VAE, the rotator that
commits part files, and the bookkeeping that releases a latent as soon as
every row needing it has been written. Its state is its fields.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from hpd_encode import _core, record
from hpd_encode.failures import Failure
from hpd_encode.output_dir import PartRotator
from hpd_encode.pipeline.options import EncoderOptions
from hpd_encode.pipeline.plan import RankPlan
from hpd_encode.vae import LatentEncoder, encode_pixels, job_seed, latents_to_numpy

log = logging.getLogger("hpd_encode.encode")

#: The row fields handed to the writer, besides the latents (planned-row column -> writer field).
_ROW_FIELDS = record.ROW_NAMES


class Progress:
    """tqdm on a terminal; plain log lines every ``every_s`` seconds otherwise."""

    def __init__(self, total: int, enabled: bool, rank: int, every_s: float = 10.0) -> None:
        self.total, self.done, self.rank, self.every_s = total, 0, rank, every_s
        self.start = self.last = time.monotonic()
        self.bar: Any = None
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
            log.info(
                "rank %d: %d/%d rows, %.1f rows/s, ETA %s",
                self.rank,
                self.done,
                self.total,
                rate,
                "?" if eta == float("inf") else time.strftime("%H:%M:%S", time.gmtime(eta)),
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@dataclass
class RankResult:
    """What one rank did, gathered by rank 0 for the summary."""

    rank: int
    stats: dict[str, int]
    files: list[dict[str, Any]]
    encode_seconds: float
    writer_blocked_seconds: float
    failures: list[Failure]


@dataclass
class Encoder:
    """One rank's encode run over its :class:`RankPlan`."""

    opts: EncoderOptions
    plan: RankPlan
    image_paths: pl.Series  # image id -> path relative to the data root
    vae: LatentEncoder
    rotator: PartRotator
    rank: int = 0
    stats: Counter[str] = field(default_factory=Counter)
    failures: list[Failure] = field(default_factory=list)
    latents: dict[int, np.ndarray] = field(default_factory=dict)  # job -> latent, until its rows are written
    job_error: dict[int, str] = field(default_factory=dict)
    max_chunk: dict[tuple[int, int], int] = field(default_factory=dict)  # per size, after a CUDA OOM

    def __post_init__(self) -> None:
        self.job_row_ptr, self.job_row_idx = self.plan.job_rows()
        self.rows_left_per_job = np.diff(self.job_row_ptr)  # rows still waiting on each job
        # A row waits on two job slots (one job twice when both sides are the same image).
        self.jobs_left_per_row = np.full(self.plan.n_rows, 2, dtype=np.int8)
        self.row_data = self.plan.rows.select(list(_ROW_FIELDS)).rename(_ROW_FIELDS)
        self._stop = threading.Event()
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=self.opts.prefetch)
        # On the CPU the decode threads also normalize (float32 NCHW in [-1, 1],
        # bit-identical to torch's `/ 127.5 - 1`), in parallel, per image; an
        # accelerator gets uint8 (4x less to copy) and normalizes it itself.
        self.normalize = self.vae.device.startswith("cpu")

    # -- the decode thread -------------------------------------------------

    def _hand_over(self, item: object) -> bool:
        """Queue ``item`` unless the consumer has stopped (then never block)."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        try:
            for k in range(self.plan.n_batches):
                if self._stop.is_set():
                    return
                a, b = int(self.plan.batch_start[k]), int(self.plan.batch_start[k + 1])
                size = (int(self.plan.job_height[a]), int(self.plan.job_width[a]))
                rels = self.image_paths.gather(self.plan.job_path[a:b]).to_list()
                # Opened beneath the data root (race-free: a symlink swapped in since the survey is refused).
                arr, errs = _core.load_batch(
                    rels,
                    size,
                    root=self.opts.data_root,
                    num_threads=self.opts.num_threads,
                    alpha=self.opts.alpha,
                    max_pixels=self.opts.max_pixels,
                    normalize=self.normalize,
                )
                if not self._hand_over((a, b, size, rels, arr, errs)):
                    return
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            self._hand_over(e)
            return
        self._hand_over(None)

    # -- the VAE loop ------------------------------------------------------

    def run(self, progress: Progress) -> None:
        """Encode every batch; rows go to the rotator as soon as both latents exist."""
        thread = threading.Thread(target=self._produce, name="hpd-encode-decode", daemon=True)
        thread.start()
        try:
            while (item := self._queue.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                written = self._encode_batch(*item)
                progress.update(written)
                self.stats["max_pending_latents"] = max(self.stats["max_pending_latents"], len(self.latents))
        finally:
            self._stop.set()
            thread.join(timeout=30)

    def _encode_batch(
        self, a: int, b: int, size: tuple[int, int], rels: list[str], arr: np.ndarray, errs: list[str | None]
    ) -> int:
        import torch

        self.stats["images_decoded"] += b - a
        ok = [i for i, e in enumerate(errs) if e is None]
        for i, e in enumerate(errs):
            if e is not None:
                self.job_error[a + i] = f"decode_error: {e}"
                self.stats["images_failed"] += 1
        if ok:
            x = torch.from_numpy(arr if len(ok) == len(errs) else arr[ok])
            seeds = [job_seed(self.opts.seed, rels[i], size) for i in ok]
            z = self._vae_chunked(x, seeds, size)
            self._check_latents(z, len(ok), size)
            finite = torch.isfinite(z).flatten(1).all(dim=1).tolist()
            z_np = latents_to_numpy(z, self.opts.store_dtype)
            for pos, i in enumerate(ok):
                if finite[pos] and np.isfinite(z_np[pos]).all():
                    self.latents[a + i] = z_np[pos]
                else:
                    self.job_error[a + i] = (
                        f"nonfinite_latent: '{rels[i]}' at {size[0]}x{size[1]} gave NaN/Inf"
                    )
            self.stats["images_encoded"] += len(ok)
        ready: list[int] = []
        for j in range(a, b):
            for r in self.job_row_idx[self.job_row_ptr[j] : self.job_row_ptr[j + 1]].tolist():
                self.jobs_left_per_row[r] -= 1
                if self.jobs_left_per_row[r] == 0:
                    ready.append(r)
        return self._finish_rows(ready)

    def _check_latents(self, z: Any, n: int, size: tuple[int, int]) -> None:
        """The encoder gave ``n x latent_channels x H/f x W/f`` floats, or a VaeError naming it."""
        f, c = self.vae.down_factor, self.vae.latent_channels
        want = (n, c, size[0] // f, size[1] // f)
        if tuple(z.shape) != want or not z.is_floating_point():
            from hpd_encode.errors import VaeError

            raise VaeError(
                f"the encoder {type(self.vae).__qualname__} returned latents of shape {tuple(z.shape)} "
                f"({z.dtype}) for {n} images at {size[0]}x{size[1]}; expected floats of shape {want} "
                f"(latent_channels={c}, down_factor={f})"
            )

    def _vae_chunked(self, x: Any, seeds: list[int], size: tuple[int, int]) -> Any:
        """Run the VAE on ``x`` in chunks; on CUDA OOM halve the chunk (auto batch size only)."""
        import torch

        n = x.shape[0]
        chunk = self.max_chunk.get(size, n)
        while True:
            try:
                outs = [
                    encode_pixels(
                        self.vae, x[i : i + chunk], mode=self.opts.latent, seeds=seeds[i : i + chunk]
                    )
                    for i in range(0, n, chunk)
                ]
                self.stats["vae_calls"] += len(outs)
                return torch.cat(outs) if len(outs) > 1 else outs[0]
            except torch.cuda.OutOfMemoryError:
                if chunk == 1 or not self.opts.batch_size.auto:
                    raise
                torch.cuda.empty_cache()
                chunk = max(1, chunk // 2)
                self.max_chunk[size] = chunk
                log.warning("CUDA out of memory at %dx%d: retrying with %d images per VAE call", *size, chunk)

    def _finish_rows(self, ready: list[int]) -> int:
        """Write (or record as failed) the rows whose two jobs are done; free latents no row needs."""
        rows: list[dict[str, Any]] = []
        data = self.row_data[ready].to_dicts() if ready else []
        for r, fields in zip(ready, data):
            j1, j2 = (int(j) for j in self.plan.row_jobs[r])
            errs = [self.job_error[k] for k in (j1, j2) if k in self.job_error]
            if errs:
                stage = "nonfinite" if all(e.startswith("nonfinite") for e in errs) else "decode"
                kind, _, detail = "; ".join(errs).partition(": ")
                self.failures.append(
                    Failure(
                        fields["record_index"],
                        stage,
                        kind,
                        detail,
                        fields["image1_path"],
                        fields["image2_path"],
                    )
                )
                self.stats[f"failed_{stage}"] += 1
            else:
                fields["latent1"], fields["latent2"] = self.latents[j1], self.latents[j2]
                rows.append(fields)
            for k in (j1, j2):
                self.rows_left_per_job[k] -= 1
                if self.rows_left_per_job[k] == 0:
                    self.latents.pop(k, None)
        if rows:
            self._submit(rows)
        return len(ready)

    def _submit(self, rows: list[dict[str, Any]]) -> None:
        """Hand rows to the writer; a row the writer refuses becomes that record's failure."""
        for r, e in self.rotator.submit(rows):
            self.failures.append(
                Failure(r["record_index"], "write", "write_error", str(e), r["image1_path"], r["image2_path"])
            )
            self.stats["failed_write"] += 1

    def result(self, encode_seconds: float) -> RankResult:
        self.stats["rows_written"] = sum(f["rows"] for f in self.rotator.files)
        return RankResult(
            self.rank,
            dict(self.stats),
            self.rotator.files,
            encode_seconds,
            self.rotator.blocked_s,
            self.failures,
        )
