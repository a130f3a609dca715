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
On a GPU machine pass ``--full-vae`` to use an SD3.5-shaped VAE (random
weights, real architecture) and compare bf16 bucket-batched vs fp32 batch-1.
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


def make_dataset(root: Path, prompts: int) -> Path:
    ph = demo_photos()
    fmts = [("jpg", {"quality": 90}), ("png", {}), ("webp", {"quality": 85})]
    records = []
    for p in range(prompts):
        h, w = SIZES[p % len(SIZES)]
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--keep", default=None, help="keep the work folder here")
    ap.add_argument("--full-vae", action="store_true", help="SD3.5-shaped VAE (random weights); for a GPU")
    args = ap.parse_args()
    tmp = Path(args.keep or tempfile.mkdtemp(prefix="hpd-bench-encode-"))
    tmp.mkdir(parents=True, exist_ok=True)
    root = tmp / "data"
    meta = make_dataset(root, args.prompts)
    vae_dir = make_tiny_vae(tmp / "vae", kind="sd35" if args.full_vae else "kl")
    n_records = len(json.loads(meta.read_text()))
    print(f"machine: {machine()}")
    print(
        f"dataset: {args.prompts} prompts, {n_records} comparisons at HPDv3 sizes; "
        f"{'SD3.5-shaped' if args.full_vae else 'tiny'} random AutoencoderKL; "
        f"device {args.device}\n"
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
