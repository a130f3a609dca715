"""End-to-end encode benchmark: hpd-encode vs the reference loop, same data, same run.

1. Pairs/s on an HPDv3-shaped dataset (prompts with 3-4 images, all pairwise
   comparisons, JPEG/PNG/WebP at HPDv3 sizes) with a tiny random VAE:
   - reference: PIL open + convert + LANCZOS + float tensor, one image at a
     time, VAE batch 1 fp32 per image of every comparison, np.save, str(dict),
     pyarrow ParquetWriter (zstd, row groups of 100);
   - hpd-encode with sharing (each image encoded once per target size) and
     with ``share=False``.
   Also VAE calls per row (issue 7).
2. Writer: rows/s of hpd_encode.ParquetWriter vs pyarrow driven from a Python
   thread, and the longest GIL hold each causes (the largest gap seen by a
   Python thread that ticks every 0.5 ms).

Run: ``.venv/bin/python benches/bench_encode.py [--prompts 10] [--device cpu|cuda]``.

``--full-vae --device cuda``: the GPU benchmark (one script, a few minutes on
an H100; see :func:`full_vae`). The SD3.5 VAE's architecture built from its
config with random weights (no hub), images/s at 1024x1024 for the
reference way (fp32, batch 1), ours in bf16 with the automatic batch size,
and ours with ``torch.compile``; each VAE-only (pixels already on the device)
and end to end (JPEG files to Parquet) on the same images.
``--full-vae --device cpu --quick`` runs the same script small (256x256, a
few images, ``torch.compile`` with the ``eager`` backend) to check it.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

import hpd_encode
from hpd_encode.demo import photos as demo_photos
from hpd_encode.metadata import read_metadata
from hpd_encode.pipeline import encode
from hpd_encode.schema import PART_SCHEMA, REFERENCE_COLUMNS
from hpd_encode.vae import make_tiny_vae

SIZES = [(1024, 1024), (768, 1024), (1248, 832), (512, 512), (832, 1152)]


def make_dataset(root: Path, prompts: int, sizes: list[tuple[int, int]] = SIZES) -> Path:
    """Prompts of 3-4 real photos (JPEG, PNG, WebP) at one size each, cycling through ``sizes``,
    and all their pairwise comparisons."""
    ph = demo_photos()
    fmts = [("jpg", {"quality": 90}), ("png", {}), ("webp", {"quality": 85})]
    records = []
    for p in range(prompts):
        h, w = sizes[p % len(sizes)]
        names = []
        for k in range(3 + p % 2):
            ext, opts = fmts[(p + k) % 3]
            rel = f"img/{p}/{k}.{ext}"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(ph[(p + k) % len(ph)]).resize((w, h), Image.BICUBIC).save(root / rel, **opts)
            names.append(rel)
        for a, b in itertools.combinations(names, 2):
            records.append(
                {
                    "prompt": f"p{p}",
                    "path1": a,
                    "path2": b,
                    "model1": "x",
                    "model2": "y",
                    "choice_dist": [3, 1],
                    "confidence": 0.7,
                }
            )
    meta = root / "train.json"
    meta.write_text(json.dumps(records))
    return meta


def _flush(writer: pq.ParquetWriter, rows: list[dict], schema: pa.Schema) -> None:
    """Write buffered rows as one row group (the reference's pyarrow way) and empty the buffer."""
    if rows:
        writer.write_table(pa.Table.from_pylist(rows, schema=schema))
        rows.clear()


def reference_loop(root: Path, meta: Path, vae_dir: Path, out: Path, device: str) -> int:
    """The reference's way: everything per comparison, per image, fp32 batch 1."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(vae_dir, subfolder="vae", low_cpu_mem_usage=False).to(device).eval()
    shift = vae.config.shift_factor or 0.0
    scale = vae.config.scaling_factor
    buckets = hpd_encode.BucketSet.hpdv3()
    records = list(read_metadata(meta).records())
    rows = []
    schema = pa.schema([PART_SCHEMA.field(c) for c in REFERENCE_COLUMNS])
    writer = pq.ParquetWriter(out, schema, compression="zstd")
    for r in records:
        imgs = [Image.open(root / p).convert("RGB") for p in (r.path1, r.path2)]
        (w1, h1), (w2, h2) = imgs[0].size, imgs[1].size
        b = buckets.assign_pair(h1, w1, h2, w2)
        if b is None:
            continue
        th, tw = buckets.buckets[b]
        lat = []
        for img in imgs:
            arr = np.asarray(img.resize((tw, th), Image.LANCZOS))
            x = (torch.from_numpy(arr).permute(2, 0, 1).float() / 127.5 - 1).contiguous()[None].to(device)
            with torch.no_grad():
                z = (vae.encode(x).latent_dist.sample() - shift) * scale
            buf = io.BytesIO()
            np.save(buf, z[0].float().cpu().numpy())
            lat.append((buf.getvalue(), list(z.shape[1:])))
        details = {
            "votes_chosen": r.votes_chosen,
            "votes_rejected": r.votes_rejected,
            "confidence": r.confidence,
            "orig_chosen_hw": [h1, w1],
            "orig_rejected_hw": [h2, w2],
            "final_chosen_hw": [th, tw],
            "final_rejected_hw": [th, tw],
        }
        rows.append(
            {
                "prompt": r.prompt,
                "model1": r.model1,
                "model2": r.model2,
                "detailed_results": str(details),
                "image1_path": r.path1,
                "image2_path": r.path2,
                "latent1": lat[0][0],
                "latent2": lat[1][0],
                "latent1_shape": lat[0][1],
                "latent2_shape": lat[1][1],
            }
        )
        if len(rows) == 100:
            _flush(writer, rows, schema)
    _flush(writer, rows, schema)
    writer.close()
    return pq.ParquetFile(out).metadata.num_rows


def machine() -> str:
    try:
        cpu = next(
            line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")
        )
    except (OSError, StopIteration):
        cpu = platform.processor()
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return f"{cpu}, {os.cpu_count()} cores{gpu}, torch {torch.__version__}"


def make_square_dataset(root: Path, images: int, side: int) -> Path:
    """Prompts of 4 real photos (JPEG q90) at ``side`` x ``side``, all 6 comparisons of each."""
    ph = demo_photos()
    records = []
    for p in range(images // 4):
        names = []
        for k in range(4):
            rel = f"sq/{p:04d}/{k}.jpg"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            img = Image.fromarray(ph[(p + k) % len(ph)]).resize((side, side), Image.BICUBIC)
            # A different crop of the photo for every image, so no two files are alike.
            img = img.rotate(90 * ((p + k) % 4)).transpose(
                Image.FLIP_LEFT_RIGHT if p % 2 else Image.FLIP_TOP_BOTTOM
            )
            img.save(root / rel, quality=90)
            names.append(rel)
        for a, b in itertools.combinations(names, 2):
            records.append(
                {"prompt": f"p{p}", "path1": a, "path2": b, "choice_dist": [2, 1], "confidence": 0.5}
            )
    meta = root / "square.json"
    meta.write_text(json.dumps(records))
    return meta


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def vae_only_reference(vae_dir: Path, x: torch.Tensor, device: str) -> float:
    """The reference's VAE step: diffusers fp32, one image per call, ``sample()``, to the host. Images/s."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(vae_dir, subfolder="vae", low_cpu_mem_usage=False).to(device).eval()
    shift, scale = vae.config.shift_factor or 0.0, vae.config.scaling_factor
    x = x.to(device, torch.float32)
    torch.backends.cudnn.benchmark = False  # torch's default, which the reference keeps

    def step(i: int) -> None:
        with torch.no_grad():
            z = (vae.encode(x[i : i + 1]).latent_dist.sample() - shift) * scale
        z.float().cpu()

    step(0)  # warm-up (cuDNN's choice of kernels)
    _sync(device)
    t = time.perf_counter()
    for i in range(x.shape[0]):
        step(i)
    _sync(device)
    return x.shape[0] / (time.perf_counter() - t)


def vae_only_ours(vae: Any, x: torch.Tensor, batch: int) -> float:
    """Our VAE step: ``DiffusersVae.encode`` on device-resident batches (its noise drawn beforehand, as
    the encode loop does off the main thread), latents to the host. Images/s."""
    from hpd_encode.vae import NoiseAhead, Seeds, fill_noise

    n, _, h, w = x.shape
    x = x.to(vae.device, vae.dtype)
    shape = (vae.latent_channels, h // vae.down_factor, w // vae.down_factor)
    seeds = list(range(n))
    noise = fill_noise(torch.empty((n, *shape)), seeds).to(vae.device)
    ahead = Seeds(seeds, NoiseAhead(shape, lambda: noise))
    torch.backends.cudnn.benchmark = True  # as the encode loop sets it on CUDA

    def step(i: int) -> None:
        vae.encode(x[i : i + batch], mode="sample", seeds=ahead[i : i + batch]).float().cpu()

    step(0)  # warm-up (cuDNN's choice, or compilation)
    _sync(vae.device)
    t = time.perf_counter()
    for i in range(0, n, batch):
        step(i)
    _sync(vae.device)
    return n / (time.perf_counter() - t)


def full_vae(args: argparse.Namespace, tmp: Path) -> None:
    """The GPU benchmark: SD3.5's VAE architecture (random weights), images/s for the reference way,
    ours in bf16 (auto batch size) and ours with torch.compile, VAE-only and end to end."""
    from hpd_encode.pipeline.options import AUTO_BATCH_PIXELS
    from hpd_encode.vae import load_vae

    t_start = time.perf_counter()
    side = 256 if args.quick else 1024
    n_images = args.images or (4 if args.quick else 256)
    n_ref = args.ref_images or (2 if args.quick else 48)
    backend = args.compile_backend or ("eager" if args.quick else "inductor")
    device = args.device
    root = tmp / "data"
    meta = make_square_dataset(root, n_images, side)
    n_images = 4 * (n_images // 4)
    vae_dir = make_tiny_vae(tmp / "vae", kind="sd35")
    batch = max(1, AUTO_BATCH_PIXELS["cuda" if device.startswith("cuda") else "cpu"] // (side * side))
    print(f"machine: {machine()}")
    print(
        f"SD3.5 VAE architecture (random weights), {n_images} JPEG photos at {side}x{side}, device {device}, "
        f"auto batch {batch}, torch.compile backend {backend!r}; set-up {time.perf_counter() - t_start:.0f} s\n"
    )
    paths = [str(root / f"sq/{p:04d}/{k}.jpg") for p in range(n_images // 4) for k in range(4)]
    pixels, errors = hpd_encode.load_batch(paths, (side, side), normalize=True)
    assert not any(errors), errors
    x = torch.from_numpy(pixels)
    rows: list[tuple[str, float, float]] = []

    ref_vae = vae_only_reference(vae_dir, x[:n_ref], device)
    ref_meta = root / "ref.json"
    ref_meta.write_text(json.dumps(json.loads(meta.read_text())[: max(1, n_ref // 2)]))
    t = time.perf_counter()
    ref_rows = reference_loop(root, ref_meta, vae_dir, tmp / "ref.parquet", device)
    ref_e2e = 2 * ref_rows / (time.perf_counter() - t)
    rows.append(("reference: fp32, batch 1 (PIL, per comparison)", ref_vae, ref_e2e))
    print(f"reference done at {time.perf_counter() - t_start:.0f} s", flush=True)

    vae = load_vae(str(vae_dir), device=device, dtype="auto")
    for label, compile_ in (
        (f"hpd-encode {str(vae.dtype).replace('torch.', '')}, batch {batch}", False),
        (
            f"hpd-encode {str(vae.dtype).replace('torch.', '')}, batch {batch}, torch.compile ({backend})",
            True,
        ),
    ):
        if compile_:
            t = time.perf_counter()
            vae.compile(backend=backend)
            vae_rate = vae_only_ours(vae, x, batch)  # its warm-up call compiles
            print(f"compiled in {time.perf_counter() - t:.0f} s (with the VAE-only run)", flush=True)
        else:
            vae_rate = vae_only_ours(vae, x, batch)
        e2e = 0.0
        for _ in range(args.repeat or (1 if args.quick else 2)):  # the first run also warms the page cache
            out = tmp / "ours"
            shutil.rmtree(out, ignore_errors=True)
            s = encode(root, meta, out, vae, progress=False, compile=compile_ and backend)
            e2e = max(e2e, s.images_per_second or 0.0)
        rows.append((label, vae_rate, e2e))
        print(f"{label} done at {time.perf_counter() - t_start:.0f} s", flush=True)

    print(
        "\n| method | VAE-only images/s | end-to-end images/s | end-to-end / VAE-only | VAE-only x reference |"
    )
    print("|---|---:|---:|---:|---:|")
    for label, v, e in rows:
        print(f"| {label} | {v:.1f} | {e:.1f} | {e / v:.2f} | {v / ref_vae:.2f} |")
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--keep", default=None, help="keep the work folder here")
    ap.add_argument("--full-vae", action="store_true", help="the GPU benchmark: SD3.5's VAE architecture")
    ap.add_argument("--quick", action="store_true", help="with --full-vae: small, to check the script")
    ap.add_argument("--images", type=int, default=None, help="with --full-vae: images (256; quick 4)")
    ap.add_argument("--ref-images", type=int, default=None, help="with --full-vae: reference images (48)")
    ap.add_argument("--compile-backend", default=None, help="with --full-vae: inductor (quick: eager)")
    ap.add_argument(
        "--repeat", type=int, default=None, help="with --full-vae: end-to-end runs, best kept (2)"
    )
    args = ap.parse_args()
    tmp = Path(args.keep or tempfile.mkdtemp(prefix="hpd-bench-encode-"))
    tmp.mkdir(parents=True, exist_ok=True)
    if args.full_vae:
        full_vae(args, tmp)
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        return
    root = tmp / "data"
    meta = make_dataset(root, args.prompts)
    vae_dir = make_tiny_vae(tmp / "vae", kind="kl")
    n_records = len(json.loads(meta.read_text()))
    print(f"machine: {machine()}")
    print(
        f"dataset: {args.prompts} prompts, {n_records} comparisons at HPDv3 sizes; tiny random "
        f"AutoencoderKL; device {args.device}\n"
    )

    t = time.perf_counter()
    ref_rows = reference_loop(root, meta, vae_dir, tmp / "ref.parquet", args.device)
    ref_s = time.perf_counter() - t
    results = {}
    for share in (True, False):
        out = tmp / f"ours-{share}"
        shutil.rmtree(out, ignore_errors=True)
        t = time.perf_counter()
        s = encode(root, meta, out, vae_dir, device=args.device, share=share, progress=False)
        results[share] = (time.perf_counter() - t, s)
    print("| pipeline | rows | wall s | rows/s | VAE images | VAE images/row | speed-up |")
    print("|---|---|---|---|---|---|---|")
    print(
        f"| reference loop (PIL, batch 1 fp32, per comparison) | {ref_rows} | {ref_s:.1f} | {ref_rows / ref_s:.2f} "
        f"| {2 * ref_rows} | 2.00 | 1.0x |"
    )
    for share, label in ((False, "hpd-encode --no-share"), (True, "hpd-encode (shared images)")):
        wall, s = results[share]
        rows = s["rows_written"]
        print(
            f"| {label} | {rows} | {wall:.1f} | {rows / wall:.2f} | {s['images_encoded']} | "
            f"{s['images_encoded'] / max(rows, 1):.2f} | {ref_s / wall:.1f}x |"
        )

    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
