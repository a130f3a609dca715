"""``hpd-encode demo``: the whole job on a small generated dataset.

Writes an HPDv3-shaped dataset (prompts with 3-4 images each, all their
pairwise comparisons, real JPEG/PNG/WebP files at HPDv3 sizes, plus a few bad
records), saves a tiny random-weight ``AutoencoderKL`` as a diffusers folder,
runs :func:`hpd_encode.encode` on it (CPU unless CUDA is present), builds the
bucket index when available, and prints a summary.
"""

from __future__ import annotations

import itertools
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

# Image sizes (height, width) as HPDv3's generators produce them; each maps to an hpdv3 bucket.
DEMO_SIZES = [(512, 512), (768, 1024), (1024, 768), (832, 1248), (1024, 1024), (1248, 832), (520, 520)]
FORMATS: list[tuple[str, dict[str, Any]]] = [("jpg", {"quality": 90}), ("png", {}), ("webp", {"quality": 85})]


def photos() -> list[np.ndarray]:
    """Real photographs when scikit-image's samples are installed, else synthetic textures."""
    try:
        from skimage import data

        return [
            data.astronaut(),
            data.coffee(),
            data.chelsea(),
            data.rocket(),
            data.hubble_deep_field(),
            data.immunohistochemistry(),
        ]
    except Exception:  # noqa: BLE001 - optional dependency
        rng = np.random.default_rng(0)
        out = []
        for k in range(6):
            y, x = np.mgrid[0:480, 0:640] / 80.0
            base = np.stack([np.sin(x + k), np.cos(y * 1.3 + k), np.sin(x * y / 7 + k)], axis=-1)
            noise = rng.normal(0, 0.08, base.shape)
            out.append(((base + noise + 1.5) / 3.0 * 255).clip(0, 255).astype(np.uint8))
        return out


def make_demo_dataset(root: str | Path, pairs: int = 36, seed: int = 0) -> tuple[Path, Path]:
    """Create ``root/images/...`` and ``root/train.json``; returns (data_root, metadata)."""
    root = Path(root)
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    samples = photos()
    models = ["flux", "sd3.5", "kolors", "hunyuan"]
    records: list[dict] = []
    p = 0
    while len(records) < pairs:
        n_img = 3 + p % 2
        size = DEMO_SIZES[p % len(DEMO_SIZES)]
        names = []
        for k in range(n_img):
            photo = samples[(p + k) % len(samples)]
            ext, opts = FORMATS[(p + k) % len(FORMATS)]
            img = Image.fromarray(photo).resize((size[1], size[0]), Image.Resampling.BICUBIC)
            rel = f"images/p{p:03d}/{models[k % len(models)]}.{ext}"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            img.save(root / rel, **opts)
            names.append((rel, models[k % len(models)]))
        for (a, ma), (b, mb) in itertools.combinations(names, 2):
            votes = rng.integers(0, 10, size=2).tolist()
            chosen, rejected = ((a, ma), (b, mb)) if votes[0] >= votes[1] else ((b, mb), (a, ma))
            records.append(
                {
                    "prompt": f"demo prompt {p}: a photo, style {p % 5}",
                    "path1": chosen[0],
                    "path2": rejected[0],
                    "model1": chosen[1],
                    "model2": rejected[1],
                    "choice_dist": sorted(votes, reverse=True),
                    "confidence": round(float(rng.random()), 4),
                }
            )
        p += 1
    del records[pairs:]
    # A few bad records, as real data has them.
    (images / "broken").mkdir(exist_ok=True)
    good = records[0]["path1"]
    data = (root / good).read_bytes()
    (images / "broken" / "truncated.jpg").write_bytes(
        data[: len(data) // 2] if good.endswith(".jpg") else b"\xff\xd8\xff"
    )
    Image.fromarray(samples[0]).resize((900, 300)).save(images / "broken" / "wide.jpg")  # fits no bucket
    records += [
        {"prompt": "missing file", "path1": good, "path2": "images/nowhere/missing.png"},
        {
            "prompt": "truncated jpeg",
            "path1": good,
            "path2": "images/broken/truncated.jpg",
            "choice_dist": [3, None],
        },
        {"prompt": "escapes the root", "path1": good, "path2": "../../etc/passwd"},
        {"prompt": "no bucket", "path1": good, "path2": "images/broken/wide.jpg"},
        {"prompt": 42, "path1": good},  # malformed record
    ]
    meta = root / "train.json"
    meta.write_text(json.dumps(records, indent=1))
    return root, meta


def run_demo(output_dir: str | Path = "demo-output", pairs: int = 36, num_threads: int | None = None) -> int:
    from hpd_encode.pipeline import encode
    from hpd_encode.vae import make_tiny_vae

    out = Path(output_dir)
    if out.exists():
        shutil.rmtree(out)
    t0 = time.monotonic()
    data_root, meta = make_demo_dataset(out / "dataset", pairs=pairs)
    vae_dir = make_tiny_vae(out / "tiny-vae")
    print(
        f"demo dataset: {meta} ({len(json.loads(meta.read_text()))} records), tiny VAE: {vae_dir}/vae "
        f"[{time.monotonic() - t0:.1f} s]"
    )
    summary = encode(
        data_root, meta, out / "latents", vae_dir, batch_size="auto", latent="sample", num_threads=num_threads
    )
    for line in summary.lines():
        print(line)
    from hpd_encode.index import build_index, write_index

    df = build_index(out / "latents")
    write_index(df, out / "index.csv")
    print(f"index:             {out / 'index.csv'} ({df.height} rows)")
    print(f"demo finished in {time.monotonic() - t0:.1f} s")
    return 0
