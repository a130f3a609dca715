"""How much of the encode loop's host work hides behind the device.

A stand-in encoder (it implements ``hpd_encode.LatentEncoder``) sleeps S seconds
per megapixel with the GIL released, as a host thread waiting on a GPU does,
and returns latents of the right shape (the seeded noise in ``sample``
mode, which the loop draws ahead on its noise thread, as for a real VAE;
zeros in ``mean`` mode). It does no math on the host, so the bench runs
torch with one intra-op thread. The real ``hpd_encode.encode`` runs on real
photographs (scikit-image's samples as JPEG, PNG and WebP, ``bench_encode.make_dataset``)
at HPDv3's sizes (``_hpdv3_scale.SIZES``), prompts with 3-4 images and all
their pairwise comparisons:

1. S = 0: the host time (decode, noise, row assembly, Parquet writing);
2. S set so that the stand-in's total is ``--ratio`` (1.5) times the host time.

Printed: the fraction of the encode stage's wall time the stand-in is busy
(sleeping) and the milliseconds per image of host work not hidden behind it
(wall - busy, per image). A loop that hides everything would be busy
``ratio / (ratio + fill)``, the fill being the first batch's decode and the
last batch's finishing.

Each timed run follows the S = 0 run that sets its S, so both see the same
machine load. Run: ``python benches/bench_overlap.py [--prompts 32] [--repeat 3]
[--latent sample] [--out-dir /dev/shm]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
import hpd_encode
from _hpdv3_scale import SIZES as HPDV3_SIZES
from bench_encode import make_dataset
from hpd_encode.pipeline import encode
from hpd_encode.vae import gaussian_noise


class StandIn:
    """A stand-in accelerator: ``encode`` sleeps ``seconds_per_mp`` per megapixel (GIL released)
    and returns ``N x 16 x H/8 x W/8`` latents."""

    device = "cpu"
    dtype = torch.float32
    down_factor = 8
    latent_channels = 16
    normalization: dict[str, Any] = {}

    def __init__(self, seconds_per_mp: float) -> None:
        self.seconds_per_mp = seconds_per_mp
        self.identity = f"stand-in/{seconds_per_mp:.6f}"
        self.busy_s = 0.0
        self.images = 0
        self.zeros: dict[tuple[int, ...], torch.Tensor] = {}
        self.lock = threading.Lock()

    def encode(self, pixels: torch.Tensor, *, mode: str, seeds: Any) -> torch.Tensor:
        n, _, h, w = pixels.shape
        shape = (self.latent_channels, h // 8, w // 8)
        # Latents as a GPU's would arrive: no host work. In sample mode the seeded noise itself (drawn
        # ahead by the loop's noise thread; waiting for it counts as host time, not busy), else zeros
        # made once per shape (the loop only reads latents; filling fresh ones here would be the
        # stand-in's own host work, counted against the loop).
        if mode == "sample":
            z = gaussian_noise(seeds, shape)
        else:
            z = self.zeros.get((n, *shape))
            if z is None:
                z = self.zeros[(n, *shape)] = torch.zeros(n, *shape)
        t = time.perf_counter()
        time.sleep(self.seconds_per_mp * n * h * w / 1e6)
        with self.lock:
            self.busy_s += time.perf_counter() - t
            self.images += n
        return z


def run(root: Path, meta: Path, out: Path, stand_in: StandIn, args: argparse.Namespace) -> dict[str, Any]:
    shutil.rmtree(out, ignore_errors=True)
    s = encode(
        root,
        meta,
        out,
        stand_in,
        latent=args.latent,
        progress=False,
        num_threads=args.num_threads,
        batch_size=args.batch_size,
        prefetch=args.prefetch,
    )
    wall = s.encode_seconds
    n = s.images_encoded
    return {
        "wall_s": wall,
        "busy_s": stand_in.busy_s,
        "images": n,
        "rows": s.rows_written,
        "busy": stand_in.busy_s / wall if wall else 0.0,
        "not_hidden_ms": (wall - stand_in.busy_s) / max(n, 1) * 1e3,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=32, help="3-4 images each (32: about 112 images)")
    ap.add_argument("--ratio", type=float, default=1.5, help="stand-in total / host time")
    ap.add_argument("--repeat", type=int, default=3, help="pairs of runs (S = 0, then S)")
    ap.add_argument("--latent", default="sample", choices=["sample", "mean"])
    ap.add_argument("--batch-size", default="auto")
    ap.add_argument("--prefetch", type=int, default=2, help="decoded batches queued ahead (default: 2)")
    ap.add_argument("--num-threads", type=int, default=None, help="decode threads (default: all cores)")
    ap.add_argument("--keep", default=None, help="work folder to keep (default: a temporary one)")
    ap.add_argument("--out-dir", default=None, help="where the part files go (default: the work folder)")
    args = ap.parse_args()
    # The stand-in does no math on the host: torch's intra-op threads would only add wake-up latency
    # to the loop's small CPU ops (the finite check) on a loaded 2-core machine.
    torch.set_num_threads(1)
    tmp = Path(args.keep or tempfile.mkdtemp(prefix="hpd-bench-overlap-"))
    root = tmp / "data"
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    meta = make_dataset(root, args.prompts, HPDV3_SIZES)
    sizes, _ = hpd_encode.probe_images(sorted(str(p) for p in root.glob("img/*/*")))
    n_images, mp = len(sizes), sum(h * w for h, w in sizes if h) / 1e6
    print(
        f"dataset: {n_images} real photos at HPDv3 sizes ({mp / n_images:.2f} MP on average), "
        f"{len(json.loads(meta.read_text()))} comparisons; latent={args.latent}; "
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; torch {torch.__version__}"
    )
    out = Path(args.out_dir or tmp) / "out"
    # A warm-up run (page cache, imports, the Rust pool), not reported.
    run(root, meta, out, StandIn(0.0), args)
    print(f"output in {out.parent}; each row: a run with S = 0, then one with S from it\n")
    print(
        "| run | images | host s (S = 0) | S ms/MP | stand-in busy s | wall s | busy "
        "| host ms/image not hidden | load |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for k in range(args.repeat):
        # Each timed run right after the host run that sets its S, so that both see the same load.
        host = run(root, meta, out, StandIn(0.0), args)
        s_per_mp = args.ratio * host["wall_s"] / mp
        r = run(root, meta, out, StandIn(s_per_mp), args)
        print(
            f"| {k + 1} | {r['images']} | {host['wall_s']:.2f} | {s_per_mp * 1e3:.1f} | {r['busy_s']:.2f} "
            f"| {r['wall_s']:.2f} | **{r['busy'] * 100:.1f} %** | {r['not_hidden_ms']:.1f} "
            f"| {os.getloadavg()[0]:.1f} |",
            flush=True,
        )
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
