"""The encode stage: decode batches in the background (Rust), run the encoder
(torch), and hand finished rows to the part-file writer (Rust).

An :class:`Encoder` holds one rank's run: its plan, the encoder (any
:class:`~hpd_encode.vae.LatentEncoder`), the rotator that commits part files,
and the bookkeeping that releases a latent as soon as every row needing it
has been written. Its state is its fields.

One loop for every device, in three threads, so that while the device
encodes batch k the host prepares k+1 and finishes k-1:

* the decode thread decodes batch k+1 (Rust, GIL released) into a staging
  buffer (pinned memory on CUDA) and queues its copy to the device on a side
  stream; a noise thread draws its images' seeded noise (``latent="sample"``)
  and moves it the same way;
* the main thread turns batch k's pixels into the encoder's input on the
  device and calls the encoder (halving the batch on CUDA out-of-memory),
  nothing more: between two encoder calls it only takes the next batch;
* the finishing thread takes batch k-1's latents, checks their shape, casts
  them to the stored dtype, checks them for NaN/Inf on the device and copies
  them back into pinned memory, waiting on an event; then it keeps them,
  assembles the rows whose two latents exist and hands them to the writer.

On the CPU the copies are no-ops and there are no events: the same loop
simply has nothing to overlap but the decoding and the finishing.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from hpd_encode import _core, record
from hpd_encode.failures import Failure
from hpd_encode.output_dir import PartRotator
from hpd_encode.pipeline.options import EncoderOptions
from hpd_encode.pipeline.plan import RankPlan
from hpd_encode.vae import (
    LatentEncoder,
    NoiseAhead,
    Seeds,
    fill_noise,
    job_seed,
    to_encoder_input,
    torch_dtype_of,
)

log = logging.getLogger("hpd_encode.encode")

#: The interpreter's thread switch interval during a run (Python's default is 5 ms).
SWITCH_INTERVAL_S = 0.0005

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


def finite_rows(z: Any) -> Any:
    """One bool per latent of the batch ``z``: it holds no NaN or Inf.

    Computed as ``isfinite(sum(z * 0))`` per latent, which is exact (a finite
    value times zero is a zero, an Inf or NaN times zero is NaN, and a sum of
    zeros cannot overflow) and on the CPU 5-9x faster than
    ``isfinite(z).flatten(1).all(dim=1)``, whose boolean reduction along a
    dimension costs about 1.5 ms per batch of HPDv3-sized latents on the
    encode loop's main thread. On a GPU both are a couple of queued kernels.
    """
    import torch

    return torch.isfinite(z.flatten(1).mul(0).sum(dim=1))


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
class _Moving:
    """A tensor on its way to the device: ``event`` (CUDA) marks the copy's end on the side stream."""

    tensor: Any
    event: Any = None


class DeviceIO:
    """Copies between host and device for the encode loop.

    CUDA: staging buffers in pinned memory, host-to-device copies on a side
    stream (from any thread), device-to-host copies into pinned memory with
    an event to wait on. Elsewhere plain memory, synchronous copies, no
    events; on the CPU every "copy" returns the tensor itself.
    """

    def __init__(self, device: str) -> None:
        import torch

        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        if self.cuda and self.device.index is None:
            # Each thread has its own current device: name this one's for the loop's other threads.
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.copy_stream = torch.cuda.Stream(self.device) if self.cuda else None
        if self.cuda:
            # Bucket shapes repeat: let cuDNN pick its fastest kernels once per shape.
            torch.backends.cudnn.benchmark = True

    def host_empty(self, shape: tuple[int, ...], dtype: Any) -> Any:
        """A host tensor to stage a copy in (pinned on CUDA)."""
        import torch

        return torch.empty(shape, dtype=dtype, pin_memory=self.cuda)

    def to_device(self, host: Any) -> _Moving:
        """Start moving ``host`` to the device (from any thread)."""
        import torch

        if not self.cuda:
            return _Moving(host.to(self.device))
        with torch.cuda.stream(self.copy_stream):
            tensor = host.to(self.device, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self.copy_stream)
        return _Moving(tensor, event)

    def arrived(self, moving: _Moving) -> Any:
        """The moved tensor, safe to use on the calling thread's current stream."""
        import torch

        if moving.event is not None:
            stream = torch.cuda.current_stream(self.device)
            stream.wait_event(moving.event)
            moving.tensor.record_stream(stream)
        return moving.tensor

    def to_host(self, *tensors: Any) -> tuple[list[Any], Any]:
        """Queue copies of device tensors into host memory; returns the host
        tensors and the event to wait on before reading them (None: ready)."""
        import torch

        if not self.cuda:
            return [t.to("cpu") for t in tensors], None
        tensors = tuple(t.contiguous() for t in tensors)  # (a channels_last latent: made plain on the device)
        hosts = [torch.empty(t.shape, dtype=t.dtype, pin_memory=True) for t in tensors]
        for h, t in zip(hosts, tensors):
            h.copy_(t, non_blocking=True)
        # A blocking event: the finishing thread's wait sleeps instead of spinning on a core.
        event = torch.cuda.Event(blocking=True)
        event.record(torch.cuda.current_stream(self.device))
        return hosts, event

    def thread_context(self) -> contextlib.ExitStack:
        """What a thread that runs torch work of the loop enters: inference mode and,
        on CUDA, this device as its current one (each thread has its own)."""
        import torch

        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode())
        if self.cuda:
            stack.enter_context(torch.cuda.device(self.device))
        return stack


@dataclass
class _Decoded:
    """A decoded batch, from the decode thread to the main thread."""

    a: int  # jobs a..b
    b: int
    size: tuple[int, int]
    rels: list[str]
    errs: list[str | None]
    ok: list[int]  # positions decoded
    pixels: _Moving | None  # the whole batch (uint8 NHWC, or float NCHW on the CPU); None: nothing decoded
    seeds: Seeds  # one per decoded image, with its noise being drawn ahead in sample mode


@dataclass
class _Encoded:
    """A batch's latents, from the main thread to the finishing thread."""

    batch: _Decoded
    z: Any = None  # the encoder's output on the device, one latent per decoded image (None: none decoded)


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
        # At most one batch waits for the finishing thread while it finishes another.
        self._done: queue.Queue[_Encoded | None] = queue.Queue(maxsize=1)
        self._finish_error: BaseException | None = None
        self._noise: ThreadPoolExecutor | None = None
        self.io = DeviceIO(self.vae.device)
        # On the CPU the decode threads also normalize (float32 NCHW in [-1, 1],
        # bit-identical to torch's `/ 127.5 - 1`), in parallel, per image; an
        # accelerator gets uint8 (4x less to copy) and normalizes it itself.
        self.normalize = self.io.device.type == "cpu"
        if self.opts.compile:
            self._compile()

    def _compile(self) -> None:
        """``torch.compile`` the encoder through its ``compile(backend=...)`` method (the diffusers
        VAEs fall back with a warning when compilation fails)."""
        backend = "inductor" if self.opts.compile is True else str(self.opts.compile)
        method = getattr(self.vae, "compile", None)
        if not callable(method):
            log.warning(
                "--compile: %s has no compile() method; encoding without it", type(self.vae).__qualname__
            )
            return
        method(backend=backend)

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
        import torch

        try:
            for k in range(self.plan.n_batches):
                if self._stop.is_set():
                    return
                a, b = int(self.plan.batch_start[k]), int(self.plan.batch_start[k + 1])
                size = (int(self.plan.job_height[a]), int(self.plan.job_width[a]))
                rels = self.image_paths.gather(self.plan.job_path[a:b]).to_list()
                seeds = [job_seed(self.opts.seed, rel, size) for rel in rels]
                # The noise is drawn while the batch is decoded (a failed image's too: failures are rare).
                noise = self._noise.submit(self._draw_noise, seeds, size) if self._noise else None
                staging = None if self.normalize else self.io.host_empty((b - a, *size, 3), torch.uint8)
                # Opened beneath the data root (race-free: a symlink swapped in since the survey is refused).
                arr, errs = _core.load_batch(
                    rels,
                    size,
                    root=self.opts.data_root,
                    num_threads=self.opts.num_threads,
                    alpha=self.opts.alpha,
                    max_pixels=self.opts.max_pixels,
                    normalize=self.normalize,
                    out=None if staging is None else staging.numpy(),
                )
                ok = [i for i, e in enumerate(errs) if e is None]
                pixels = None
                if ok:
                    pixels = self.io.to_device(torch.from_numpy(arr) if staging is None else staging)
                decoded = _Decoded(a, b, size, rels, errs, ok, pixels, self._seeds(seeds, ok, noise, size))
                if not self._hand_over(decoded):
                    return
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            self._hand_over(e)
            return
        self._hand_over(None)

    def _seeds(self, seeds: list[int], ok: list[int], noise: Any, size: tuple[int, int]) -> Seeds:
        """The decoded images' seeds (per image and size), with the noise the noise thread draws
        for them (sample mode), moved to the device, while earlier batches run."""
        import torch

        kept = Seeds([seeds[i] for i in ok])
        if noise is not None and ok:
            io = self.io
            if len(ok) == len(seeds):
                kept.ahead = NoiseAhead(self._noise_shape(size), lambda: io.arrived(noise.result()))
            else:
                rows = torch.tensor(ok)
                kept.ahead = NoiseAhead(
                    self._noise_shape(size), lambda: io.arrived(noise.result())[rows.to(io.device)]
                )
        return kept

    def _noise_shape(self, size: tuple[int, int]) -> tuple[int, int, int]:
        f = self.vae.down_factor
        return (self.vae.latent_channels, size[0] // f, size[1] // f)

    def _draw_noise(self, seeds: list[int], size: tuple[int, int]) -> _Moving:
        import torch

        host = self.io.host_empty((len(seeds), *self._noise_shape(size)), torch.float32)
        return self.io.to_device(fill_noise(host, seeds))

    # -- the main thread: the encoder --------------------------------------

    def run(self, progress: Progress) -> None:
        """Encode every batch; rows go to the rotator as soon as both latents exist."""
        self._progress = progress
        # The main thread takes the GIL back after every torch call (each kernel launch on a GPU) while
        # the other threads run Python: a shorter switch interval keeps it from waiting up to 5 ms
        # each time. Restored when the run ends.
        switch = sys.getswitchinterval()
        sys.setswitchinterval(min(switch, SWITCH_INTERVAL_S))
        if self.opts.latent == "sample":
            self._noise = ThreadPoolExecutor(1, thread_name_prefix="hpd-encode-noise")
        decode = threading.Thread(target=self._produce, name="hpd-encode-decode", daemon=True)
        finish = threading.Thread(target=self._finish_loop, name="hpd-encode-finish", daemon=True)
        decode.start()
        finish.start()
        try:
            with self.io.thread_context():
                while (item := self._queue.get()) is not None:
                    if isinstance(item, BaseException):
                        raise item
                    self._to_finisher(self._encode(item))
            self._to_finisher(None)
            finish.join()
            if self._finish_error is not None:
                raise self._finish_error
        finally:
            self._stop.set()
            decode.join(timeout=30)
            finish.join()
            if self._noise is not None:
                self._noise.shutdown(wait=True, cancel_futures=True)
            sys.setswitchinterval(switch)

    def _encode(self, batch: _Decoded) -> _Encoded:
        """Run the encoder on batch ``batch`` (on a GPU: queue its work); everything
        after the encoder call is the finishing thread's (:meth:`_landed`)."""
        import torch

        if batch.pixels is None:
            return _Encoded(batch)
        x = self.io.arrived(batch.pixels)
        if len(batch.ok) < len(batch.errs):
            x = x[torch.tensor(batch.ok, device=x.device)]
        return _Encoded(batch, self._vae_chunked(x, batch.seeds, batch.size))

    def _to_finisher(self, item: _Encoded | None) -> None:
        while True:
            if self._finish_error is not None:
                raise self._finish_error
            try:
                self._done.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

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

    def _vae_chunked(self, x: Any, seeds: Seeds, size: tuple[int, int]) -> Any:
        """Run the encoder on the decoded pixels ``x`` (on the device) in chunks, each turned into the
        encoder's input on the device; on CUDA OOM halve the chunk (auto batch size only)."""
        import torch

        n = x.shape[0]
        chunk = self.max_chunk.get(size, n)
        device, dtype = self.vae.device, self.vae.dtype
        while True:
            try:
                outs = [
                    self.vae.encode(
                        to_encoder_input(x[i : i + chunk], device, dtype),
                        mode=self.opts.latent,
                        seeds=seeds[i : i + chunk],
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

    # -- the finishing thread ----------------------------------------------

    def _finish_loop(self) -> None:
        try:
            with self.io.thread_context():
                while not self._stop.is_set():
                    try:
                        item = self._done.get(timeout=0.2)
                    except queue.Empty:
                        continue
                    if item is None:
                        return
                    self._finish(item)
        except BaseException as e:  # noqa: BLE001 - raised again by the main thread
            self._finish_error = e

    def _landed(self, z: Any, n: int, size: tuple[int, int]) -> tuple[np.ndarray, list[bool]]:
        """A batch's latents on the host in the stored dtype, and which are finite: the shape
        checked, the cast and the NaN/Inf check done on the device, the copy back waited for."""
        self._check_latents(z, n, size)
        z = z.to(torch_dtype_of(self.opts.store_dtype))
        # Checked in the stored dtype: a float32 latent beyond float16's range is not finite either.
        (latents, finite), ready = self.io.to_host(z, finite_rows(z))
        if ready is not None:
            ready.synchronize()
        return np.ascontiguousarray(latents.numpy()), finite.tolist()

    def _finish(self, enc: _Encoded) -> None:
        """Keep a batch's latents (or record its failures), then write the rows it completes."""
        batch = enc.batch
        a, b, size, rels = batch.a, batch.b, batch.size, batch.rels
        self.stats["images_decoded"] += b - a
        for i, e in enumerate(batch.errs):
            if e is not None:
                self.job_error[a + i] = f"decode_error: {e}"
                self.stats["images_failed"] += 1
        if batch.ok:
            z_np, finite = self._landed(enc.z, len(batch.ok), size)
            for pos, i in enumerate(batch.ok):
                if finite[pos]:
                    self.latents[a + i] = z_np[pos]
                else:
                    self.job_error[a + i] = (
                        f"nonfinite_latent: '{rels[i]}' at {size[0]}x{size[1]} gave NaN/Inf"
                    )
            self.stats["images_encoded"] += len(batch.ok)
        ready: list[int] = []
        for j in range(a, b):
            for r in self.job_row_idx[self.job_row_ptr[j] : self.job_row_ptr[j + 1]].tolist():
                self.jobs_left_per_row[r] -= 1
                if self.jobs_left_per_row[r] == 0:
                    ready.append(r)
        self._progress.update(self._finish_rows(ready))
        self.stats["max_pending_latents"] = max(self.stats["max_pending_latents"], len(self.latents))

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
