"""The VAE step as the encode loop did it before issue 23 (pipeline/encoder.py
and vae.py at that time), kept as an oracle: the overlapped loop must store
the same latents bit for bit on the CPU."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import numpy as np
import torch


def item_seed(seed: int, key: str) -> int:
    digest = hashlib.blake2b(f"{seed}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def reference_latents(
    model: Any,
    normalize: Callable[[torch.Tensor], torch.Tensor],
    pixels: np.ndarray,
    mode: str,
    seeds: list[int],
    store_dtype: str,
) -> np.ndarray:
    """Latents of a float32 ``(B, 3, H, W)`` batch in [-1, 1] on the CPU, stored dtype.
    ``normalize``: the VAE's latent normalisation (``DiffusersVae.normalize``, unchanged)."""
    qwen = type(model).__name__ == "AutoencoderKLQwenImage"
    x = torch.from_numpy(pixels).to("cpu", torch.float32, non_blocking=True)
    x = x.unsqueeze(2).contiguous() if qwen else x.contiguous()
    with torch.inference_mode():
        dist = model.encode(x).latent_dist
        mean = dist.mean.float()
        if mode == "mean":
            z = mean
        else:
            std = dist.std.float()
            noise = torch.stack(
                [
                    torch.randn(
                        mean.shape[1:], generator=torch.Generator().manual_seed(s), dtype=torch.float32
                    )
                    for s in seeds
                ]
            ).to(mean.device)
            z = mean + std * noise
        if qwen:
            z = z[:, :, 0]
        z = normalize(z)
    dtype = torch.float32 if store_dtype == "float32" else torch.float16
    return np.ascontiguousarray(z.detach().to("cpu", dtype).numpy())
