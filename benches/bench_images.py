"""Pixel path: the reference's PIL loop vs hpd-encode's Rust core, same files, same run.

Makes 60 real photographs (scikit-image's bundled samples, 20 sizes x JPEG
q90 / PNG / WebP q90) in a temporary directory; each image's target is its
bucket (``BucketSet.hpdv3().assign``). Two sets of sizes (``--sizes``):

* ``photos`` (default): sizes off the bucket grid, as cameras and the web
  make them (1080x1080, 1200x800, 1280x720, 1224x918, ..., 1.04 MP on
  average), so every image is resized, as in the reference's own measurement
  (``REFERENCE.md`` section 6: 29 images/s end to end, PIL decode alone
  87/s, i.e. resize + float conversion are ~2/3 of its time).
* ``generators``: the sizes diffusion models write (1024x1024, 1216x832,
  1344x768, ..., 1.08 MP on average): 11 of the 20 are exactly a bucket and
  are not resized at all, so the reference spends less of its time outside
  decoding there (59 % measured), and a decoder-bound speed-up is smaller.

The script first prints the reference's own profile on the chosen set (end
to end vs ``Image.open`` + ``convert("RGB")`` alone), to compare with
``REFERENCE.md``. Then times:

* ``reference``: one image at a time, one thread: ``Image.open`` +
  ``convert("RGB")`` + ``resize((w, h), Image.LANCZOS)`` +
  ``torch.from_numpy(np.asarray(img)).permute(2, 0, 1).float() / 127.5 - 1``.
* ``load_batch``: the images grouped by target bucket, one ``load_batch`` call
  per group, then the same normalisation on the batch
  (``permute(0, 3, 1, 2)``), with ``num_threads=1`` and with all cores.
* ``load_images``: one call for all images with per-image target sizes, then
  the same normalisation per image.
* ``load_batch(..., normalize=True)``: the same float [-1, 1] tensor
  (``(n, 3, h, w)`` float32, bit-identical to the normalisation above), made
  in Rust inside each image's parallel work: what the encode step feeds a CPU
  VAE.
* the same, written with ``out=`` into one buffer reused by every call.
* the torch-normalised batch and ``normalize=True`` again in batches of at
  most 2 MP, the encode step's default on the CPU (one bucket's images split
  into several ``load_batch`` calls).
* ``load_batch`` without the normalisation: the uint8 batch that the encode
  step hands to the GPU, which normalises there.

A batch's buffer is tens to hundreds of MB, above glibc's largest mmap
threshold (32 MB): fresh memory of that size is new pages that the kernel
faults in and zeroes, about as much work as writing the batch. ``load_batch``
recycles its buffers (a dead batch's memory serves the next one), so its
fresh-array rows run as fast as ``out=``; torch's normalisation of a whole
uint8 batch allocates new float tensors every time and pays that price (the
``load_batch + same normalisation on the batch`` row), which batches of a few
MB avoid.

Each is run ``--repeats`` times after a warm-up pass, in turns with the
reference (reference, ours, reference, ours, ...), and the best time of each
counts: the ratio of a row is to the reference measured beside it, so a
machine that speeds up or slows down over the minutes of the run shifts both.
Prints a Markdown table: images/s (wall clock), the ratio to the reference,
images per CPU-second (all threads of the process counted: the per-core
throughput, which a busy machine disturbs far less than wall time) and that
ratio. Build the extension in release mode first (``make build``). Usage::

    python benches/bench_images.py              # ~3 minutes on 2 cores
    python benches/bench_images.py --repeats 5
    python benches/bench_images.py --formats jpeg   # a JPEG-only dataset
    python benches/bench_images.py --sizes generators   # images mostly at bucket sizes
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import tempfile
import time
import warnings
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import PIL
import skimage.data
import torch
from PIL import Image

import hpd_encode
from hpd_encode import BucketSet, load_batch, load_images

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "retina")
#: (height, width) of the images written, per ``--sizes``; each fits an hpdv3 bucket.
SIZE_SETS = {
    # Off the bucket grid (camera and web sizes): every image is resized to its bucket.
    "photos": [
        (1080, 1080), (960, 960), (1152, 864), (864, 1152), (1200, 800), (800, 1200), (1280, 720),
        (720, 1280), (1000, 1000), (1200, 866), (866, 1200), (1260, 840), (840, 1260), (1344, 756),
        (756, 1344), (1224, 918), (918, 1224), (1100, 1100), (1320, 880), (880, 1320),
    ],
    # As HPDv3's generators write them: 11 of the 20 are exactly a bucket.
    "generators": [
        (1024, 1024), (1216, 832), (832, 1216), (1344, 768), (768, 1344), (1216, 896), (896, 1216),
        (1024, 768), (768, 1024), (1248, 832), (1456, 816), (816, 1456), (1472, 832), (1344, 896),
        (1024, 1024), (832, 1248), (1152, 832), (832, 1152), (1536, 1024), (896, 1344),
    ],
}  # fmt: skip
FORMATS = {"jpeg": ("jpg", {"quality": 90}), "png": ("png", {}), "webp": ("webp", {"quality": 90})}


def make_images(
    root: Path, formats: tuple[str, ...] = tuple(FORMATS), sizes: str = "photos"
) -> list[tuple[Path, str, tuple[int, int]]]:
    """(path, format, target bucket size) for every image written: each size
    of ``SIZE_SETS[sizes]`` (a photo cycled through ``PHOTOS``) in each of
    ``formats``."""
    buckets = BucketSet.hpdv3()
    out = []
    for i, (h, w) in enumerate(SIZE_SETS[sizes]):
        name = PHOTOS[i % len(PHOTOS)]
        img = Image.fromarray(getattr(skimage.data, name)()).convert("RGB").resize((w, h), Image.LANCZOS)
        bucket = buckets.assign(h, w)
        assert bucket is not None, (h, w)
        target = buckets.buckets[bucket]
        for fmt in formats:
            ext, kw = FORMATS[fmt]
            path = root / f"{i:02d}_{name}_{h}x{w}.{ext}"
            img.save(path, **kw)
            out.append((path, fmt, target))
    return out


def reference(items: list[tuple[Path, str, tuple[int, int]]]) -> int:
    n = 0
    for path, _, (h, w) in items:
        img = Image.open(path).convert("RGB").resize((w, h), Image.LANCZOS)
        t = torch.from_numpy(np.asarray(img)).permute(2, 0, 1).float() / 127.5 - 1
        n += t.shape[0] > 0
    return n


def decode_only(items: list[tuple[Path, str, tuple[int, int]]]) -> int:
    """The reference's decode alone (``REFERENCE.md`` section 6 quotes it)."""
    for path, _, _ in items:
        Image.open(path).convert("RGB")
    return len(items)


#: The encode step's pixel budget per batch on the CPU (``pipeline._auto_batch_size``).
CPU_BATCH_PIXELS = 2 * 1024 * 1024


Items = list[tuple[Path, str, tuple[int, int]]]


def batches(items: Items, max_pixels: int | None) -> list[tuple[tuple[int, int], list[Path]]]:
    """The images grouped by target bucket: one batch per bucket, or with
    ``max_pixels`` as many batches of at most that many pixels (at least one
    image) as the encode step makes."""
    groups: dict[tuple[int, int], list[Path]] = defaultdict(list)
    for path, _, size in items:
        groups[size].append(path)
    out = []
    for (h, w), paths in groups.items():
        per = len(paths) if max_pixels is None else max(1, max_pixels // (h * w))
        out += [((h, w), paths[i : i + per]) for i in range(0, len(paths), per)]
    return out


def by_batch(items: Items, threads: int | None, max_pixels: int | None = None) -> int:
    n = 0
    for size, paths in batches(items, max_pixels):
        batch, errors = load_batch(paths, size, num_threads=threads)
        assert not any(errors), errors
        t = torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 127.5 - 1
        n += t.shape[0]
    return n


def by_images(items: list[tuple[Path, str, tuple[int, int]]], threads: int | None) -> int:
    arrays, errors = load_images([p for p, _, _ in items], [s for _, _, s in items], num_threads=threads)
    assert not any(errors), errors
    n = 0
    for a in arrays:
        t = torch.from_numpy(a).permute(2, 0, 1).float() / 127.5 - 1
        n += t.shape[0] > 0
    return n


def normalized_in_rust(
    items: Items, threads: int | None, max_pixels: int | None = None, out: np.ndarray | None = None
) -> int:
    """``load_batch(normalize=True)``: the float [-1, 1] NCHW tensor straight
    from Rust, ready for ``torch.from_numpy`` (no copy). With ``out`` (a flat
    float32 buffer large enough for any batch) every batch is written into a
    view of it instead of fresh memory."""
    n = 0
    for (h, w), paths in batches(items, max_pixels):
        shape = (len(paths), 3, h, w)
        view = None if out is None else out[: len(paths) * 3 * h * w].reshape(shape)
        batch, errors = load_batch(paths, (h, w), num_threads=threads, normalize=True, out=view)
        assert not any(errors), errors
        t = torch.from_numpy(batch)
        n += t.shape[0]
    return n


def batch_buffer(items: Items) -> np.ndarray:
    """A flat float32 buffer that holds the largest whole-bucket batch."""
    return np.empty(max(len(paths) * 3 * h * w for (h, w), paths in batches(items, None)), np.float32)


def pixels_only(items: list[tuple[Path, str, tuple[int, int]]], threads: int | None) -> int:
    """``load_batch`` without the float conversion: the uint8 batch that the
    encode step sends to the GPU (it normalises there, 4x less to copy)."""
    n = 0
    for size, paths in batches(items, None):
        batch, errors = load_batch(paths, size, num_threads=threads)
        assert not any(errors), errors
        n += len(batch)
    return n


Rates = tuple[float, float]


def paired_rates(run: Callable[[], int], ref: Callable[[], int], repeats: int) -> tuple[Rates, Rates]:
    """(images per wall-clock second, images per CPU-second of this process,
    all its threads counted: the per-core throughput) of ``run`` and of the
    reference ``ref``, each the best of ``repeats`` runs, measured in turns
    (ref, run, ref, run, ...) so that both see the same machine: on a shared
    VM the reference alone drifts by ±10 % over a minute."""

    def timed(f: Callable[[], int]) -> tuple[int, float, float]:
        w0, c0 = time.perf_counter(), time.process_time()
        n = f()
        return n, time.perf_counter() - w0, time.process_time() - c0

    def best(samples: list[tuple[int, float, float]]) -> Rates:
        n = samples[0][0]
        return n / min(s[1] for s in samples), n / min(s[2] for s in samples)

    ref()  # warm-up: page cache, thread pools
    run()
    ours, theirs = [], []
    for _ in range(repeats):
        theirs.append(timed(ref))
        ours.append(timed(run))
    return best(ours), best(theirs)


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument(
        "--formats", default=",".join(FORMATS),
        help="comma-separated formats to write each photo in (default: %(default)s); e.g. 'jpeg' for a "
        "JPEG-only dataset: the ratio over a mix depends on it, as WebP gains least",
    )  # fmt: skip
    ap.add_argument(
        "--sizes", choices=sorted(SIZE_SETS), default="photos",
        help="image sizes (default: %(default)s): 'photos' are off the bucket grid, every image is resized "
        "(the reference's documented profile); 'generators' are mostly exact bucket sizes, not resized",
    )  # fmt: skip
    args = ap.parse_args()
    formats = tuple(f.strip() for f in args.formats.split(",") if f.strip())
    if not formats or any(f not in FORMATS for f in formats):
        ap.error(f"--formats takes some of {', '.join(FORMATS)}, not {args.formats!r}")
    # torch.from_numpy(np.asarray(pil_image)) warns that the array is read-only: it is, harmlessly.
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
    cores = hpd_encode._core.default_num_threads

    with tempfile.TemporaryDirectory(prefix="hpd-bench-images-") as tmp:
        items = make_images(Path(tmp), formats, args.sizes)
        resized = sum(Image.open(p).size[::-1] != s for p, _, s in items)
        mp = sum(np.prod(Image.open(p).size) for p, _, _ in items) / len(items) / 1e6
        print(
            f"{len(items)} images ({', '.join(formats)}; sizes '{args.sizes}', {mp:.2f} MP on average), "
            f"{resized} resized to their bucket, {len(items) - resized} already at it"
        )
        torch.set_num_threads(1)
        (_, decode_rate), (_, ref_rate) = paired_rates(
            lambda: decode_only(items), lambda: reference(items), args.repeats
        )
        print(
            f"Reference profile here: {ref_rate:.1f} images per CPU-second end to end, PIL decode (open + convert) "
            f"alone {decode_rate:.1f}/s: {1 - ref_rate / decode_rate:.0%} of its time is resize + float conversion "
            "(REFERENCE.md section 6: 29/s and 87/s, ~2/3)\n"
        )

        reused = batch_buffer(items)
        rows = []  # (method, threads, (images/s, per CPU-second), the reference's beside it)
        configs = [
            ("hpd_encode.load_images + same normalisation per image", lambda t: by_images(items, t)),
            ("hpd_encode.load_batch + same normalisation on the batch", lambda t: by_batch(items, t)),
            ("hpd_encode.load_batch(normalize=True): float tensor made in Rust", lambda t: normalized_in_rust(items, t)),
            ("hpd_encode.load_batch(normalize=True, out=one reused buffer), whole bucket per call",
             lambda t: normalized_in_rust(items, t, out=reused)),
            ("hpd_encode.load_batch + same normalisation, batches of ≤ 2 MP",
             lambda t: by_batch(items, t, CPU_BATCH_PIXELS)),
            ("hpd_encode.load_batch(normalize=True), batches of ≤ 2 MP (encode on CPU)",
             lambda t: normalized_in_rust(items, t, CPU_BATCH_PIXELS)),
            ("hpd_encode.load_batch, uint8 only (normalised on the GPU)", lambda t: pixels_only(items, t)),
        ]  # fmt: skip
        # torch stays on one thread throughout (set above): the threads column
        # is the decode pool's size, and OpenMP workers spinning beside
        # rayon's would only steal its cores.
        for method, run in configs:
            for threads in dict.fromkeys([1, cores]):
                ours, ref = paired_rates(
                    lambda t=threads, run=run: run(t), lambda: reference(items), args.repeats
                )
                rows.append((method, threads, ours, ref))

        # Per format, one thread each: where the gain comes from.
        per_format = []
        for fmt in formats:
            subset = [it for it in items if it[1] == fmt]
            runs = (
                lambda s: by_images(s, 1),
                lambda s: normalized_in_rust(s, 1, CPU_BATCH_PIXELS),
                lambda s: pixels_only(s, 1),
            )
            pairs = [
                paired_rates(lambda f=f, s=subset: f(s), lambda s=subset: reference(s), args.repeats)
                for f in runs
            ]
            per_format.append((fmt, len(subset), pairs))

    ref_walls = [r[3][0] for r in rows]
    print(
        "Each row is measured in turns with the reference (best of "
        f"{args.repeats} each); its ratios are to the reference run beside it.\n"
    )
    print("| method | threads | images/s | × reference | images per CPU-second | × reference per core |")
    print("|---|---:|---:|---:|---:|---:|")
    print(
        f"| reference: PIL open + convert + LANCZOS + float tensor | 1 "
        f"| {min(ref_walls):.1f}–{max(ref_walls):.1f} | 1.00 | | 1.00 |"
    )
    for method, threads, (wall, cpu), (ref_wall, ref_cpu) in rows:
        print(
            f"| {method} | {threads} | {wall:.1f} | {wall / ref_wall:.2f} | {cpu:.1f} | {cpu / ref_cpu:.2f} |"
        )
    print()
    print(
        "| format (1 thread) | images | reference images/s | load_images + normalisation | × reference per core "
        "| load_batch(normalize=True), ≤ 2 MP | × reference per core | load_batch uint8 | × reference per core |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for fmt, n, pairs in per_format:
        cells = " | ".join(f"{ours[1]:.1f} | {ours[1] / ref[1]:.2f}" for ours, ref in pairs)
        print(f"| {fmt} | {n} | {pairs[0][1][1]:.1f} | {cells} |")
    print()
    print(
        f"Machine: {cpu_name()}, {os.cpu_count()} logical CPUs ({cores} used for 'all'), "
        f"load average {os.getloadavg()[0]:.1f} at the end; Python {platform.python_version()}, "
        f"Pillow {PIL.__version__}, torch {torch.__version__}, hpd-encode {hpd_encode.__version__}"
    )


if __name__ == "__main__":
    main()
