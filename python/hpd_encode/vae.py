"""Loading a diffusers VAE and encoding pixel batches to normalised latents.

Two families are supported:

* ``AutoencoderKL`` (SD3.5 / FLUX style): ``latent = (z - shift_factor) * scaling_factor``
  (a missing ``shift_factor`` counts as 0). If the config carries per-channel
  ``latents_mean``/``latents_std`` (SDXL-style variants) the latent is
  ``(z - mean) * scaling_factor / std``.
* ``AutoencoderKLQwenImage`` (Qwen-Image style, takes a frame axis
  ``(B, C, 1, H, W)``): ``latent = (z - latents_mean) / latents_std`` per channel.

``z`` is the posterior mean (``latent="mean"``) or a sample with noise drawn
from a per-item seed (``latent="sample"``), so reruns give the same latents.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("hpd_encode.vae")

SUPPORTED_CLASSES = ("AutoencoderKL", "AutoencoderKLQwenImage")


def resolve_dtype(dtype: str, device: str):
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    table = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
    }
    if dtype not in table:
        raise ValueError(f"dtype must be auto, float32, bfloat16 or float16, not {dtype!r}")
    return table[dtype]


def item_seed(seed: int, key: str) -> int:
    """A stable 63-bit seed for one item (an image at a target size)."""
    digest = hashlib.blake2b(f"{seed}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def job_seed(seed: int, path: str, size: tuple[int, int]) -> int:
    """The noise seed of one job: image ``path`` (relative to the data root) at target ``size``."""
    return item_seed(seed, f"{path}@{size[0]}x{size[1]}")


@dataclass
class Vae:
    model: Any
    class_name: str
    source: str
    subfolder: str | None
    device: str
    dtype: Any
    config: dict

    @property
    def frame_axis(self) -> bool:
        return self.class_name == "AutoencoderKLQwenImage"

    def normalize(self, z):
        """Latent normalisation from the VAE's config (see module docstring)."""
        import torch

        cfg = self.config
        mean, std = cfg.get("latents_mean"), cfg.get("latents_std")
        if self.frame_axis:
            m = torch.tensor(mean, dtype=z.dtype, device=z.device).view(1, -1, 1, 1)
            s = torch.tensor(std, dtype=z.dtype, device=z.device).view(1, -1, 1, 1)
            return (z - m) / s
        scale = float(cfg.get("scaling_factor") or 1.0)
        if mean is not None and std is not None:
            m = torch.tensor(mean, dtype=z.dtype, device=z.device).view(1, -1, 1, 1)
            s = torch.tensor(std, dtype=z.dtype, device=z.device).view(1, -1, 1, 1)
            return (z - m) * scale / s
        shift = float(cfg.get("shift_factor") or 0.0)
        return (z - shift) * scale


def _read_config(source: str, subfolder: str | None) -> dict | None:
    path = Path(source) / (subfolder or "") / "config.json"
    if path.is_file():
        return json.loads(path.read_text())
    return None


def load_vae(
    source: str, *, subfolder: str | None = None, device: str | None = None, dtype: str = "auto"
) -> Vae:
    """Load a VAE from a local diffusers folder or a hub id.

    ``subfolder=None`` means: ``vae`` when the folder has one (or, for a hub id,
    try ``vae`` first), else the folder itself.
    """
    import diffusers
    import torch

    from hpd_encode.pipeline.options import parse_device, resolve_device

    device = resolve_device(parse_device(device))
    torch_dtype = resolve_dtype(dtype, device)
    local = Path(source).exists()
    if local:
        if subfolder is None:
            subfolder = "vae" if (Path(source) / "vae" / "config.json").is_file() else None
        config = _read_config(source, subfolder)
        if config is None:
            where = Path(source) / (subfolder or "")
            raise ValueError(f"'{where}' has no config.json: not a diffusers VAE folder")
        candidates = [subfolder]
    else:
        config = None
        candidates = [subfolder] if subfolder is not None else ["vae", None]
    last_error: Exception | None = None
    for sub in candidates:
        try:
            kwargs = {"subfolder": sub} if sub else {}
            if config is None:
                from huggingface_hub import hf_hub_download

                cfg_path = hf_hub_download(source, "config.json", subfolder=sub)
                config = json.loads(Path(cfg_path).read_text())
            class_name = config.get("_class_name", "AutoencoderKL")
            if class_name not in SUPPORTED_CLASSES:
                raise ValueError(
                    f"VAE class {class_name!r} is not supported (supported: {', '.join(SUPPORTED_CLASSES)})"
                )
            cls = getattr(diffusers, class_name)
            model = cls.from_pretrained(source, torch_dtype=torch_dtype, low_cpu_mem_usage=False, **kwargs)
            subfolder = sub
            break
        except ValueError:
            raise
        except Exception as e:  # noqa: BLE001 - hub/file errors vary by version
            last_error = e
            config = None
    else:
        raise OSError(f"cannot load VAE '{source}': {last_error}") from last_error
    model = model.to(device).eval().requires_grad_(False)
    if device.startswith("cuda"):
        model = model.to(memory_format=torch.channels_last)
    return Vae(
        model=model,
        class_name=class_name,
        source=str(source),
        subfolder=subfolder,
        device=device,
        dtype=torch_dtype,
        config=dict(model.config),
    )


def encode_pixels(vae: Vae, pixels, *, mode: str = "sample", seeds: list[int] | None = None):
    """Encode pixels (a tensor on any device) to normalised float32 latents
    ``(B, C, H/8, W/8)`` on the VAE's device.

    ``pixels`` is either a ``(B, H, W, 3)`` uint8 tensor, moved as uint8 and
    scaled to [-1, 1] on the device, or a floating ``(B, 3, H, W)`` tensor
    already in [-1, 1] (``load_batch(..., normalize=True)``), only cast to
    the VAE's dtype.
    """
    import torch

    if pixels.is_floating_point():
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise ValueError(f"float pixels must be (B, 3, H, W) in [-1, 1], not {tuple(pixels.shape)}")
        x = pixels.to(vae.device, vae.dtype, non_blocking=True)
    else:
        x = pixels.to(vae.device, non_blocking=True).permute(0, 3, 1, 2)
        x = x.to(vae.dtype).div_(127.5).sub_(1.0)
    if vae.frame_axis:
        x = x.unsqueeze(2).contiguous()
    elif vae.device.startswith("cuda"):
        x = x.contiguous(memory_format=torch.channels_last)
    else:
        # Plain NCHW on CPU: the layout the reference feeds, so kernels (and
        # their last-bit rounding) match a direct diffusers call.
        x = x.contiguous()
    with torch.inference_mode():
        dist = vae.model.encode(x).latent_dist
        mean = dist.mean.float()
        if mode == "mean":
            z = mean
        elif mode == "sample":
            if seeds is None or len(seeds) != mean.shape[0]:
                raise ValueError("sample mode needs one seed per item")
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
        else:
            raise ValueError(f"latent mode must be 'sample' or 'mean', not {mode!r}")
        if vae.frame_axis:
            z = z[:, :, 0]
        return vae.normalize(z)


def decode_latents(vae: Vae, z: Any, normalization: dict[str, Any]) -> np.ndarray:
    """Stored latents ``(B, C, h, w)`` back to pixels, ``(B, H, W, 3)`` uint8:
    the normalisation undone (``normalization`` as the provenance records it),
    then the VAE's decoder (for a person to look at; ``verify --preview``)."""
    import torch

    kind = normalization.get("kind")
    z = z.to(vae.device, torch.float32)
    if kind == "shift_scale":
        z = z / float(normalization["scale"]) + float(normalization["shift"])
    elif kind == "per_channel":
        mean = torch.tensor(normalization["mean"], dtype=z.dtype, device=z.device).view(1, -1, 1, 1)
        std = torch.tensor(normalization["std"], dtype=z.dtype, device=z.device).view(1, -1, 1, 1)
        z = z * std / float(normalization.get("scale") or 1.0) + mean
    with torch.inference_mode():
        x = z.to(vae.dtype)
        if vae.frame_axis:
            x = x.unsqueeze(2)
        out = vae.model.decode(x).sample
        if vae.frame_axis:
            out = out[:, :, 0]
        pixels = ((out.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).cpu().numpy()


def make_tiny_vae(path: str | Path, *, kind: str = "kl", seed: int = 0) -> Path:
    """Save a tiny random-weight VAE as a diffusers folder (``path/vae``).

    ``kind="kl"``: an SD3.5-shaped ``AutoencoderKL`` (16 latent channels, 8x
    down) with a few channels; ``kind="sd35"``: the SD3.5 VAE's full
    architecture (random weights; for GPU benchmarks); ``kind="qwen"``: a tiny
    ``AutoencoderKLQwenImage``.
    Used by the demo, the tests and the benchmarks (no hub access needed).
    """
    import torch
    from diffusers import AutoencoderKL, AutoencoderKLQwenImage

    torch.manual_seed(seed)
    out = Path(path) / "vae"
    model: Any
    sd35 = dict(
        in_channels=3,
        out_channels=3,
        latent_channels=16,
        scaling_factor=1.5305,
        shift_factor=0.0609,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
    )
    if kind == "kl":
        model = AutoencoderKL(
            **sd35,
            block_out_channels=(8, 8, 16, 16),
            layers_per_block=1,
            norm_num_groups=4,
            sample_size=64,
            mid_block_add_attention=False,
        )
    elif kind == "sd35":
        model = AutoencoderKL(
            **sd35,
            block_out_channels=(128, 256, 512, 512),
            layers_per_block=2,
            norm_num_groups=32,
            sample_size=1024,
            use_quant_conv=False,
            use_post_quant_conv=False,
        )
    elif kind == "qwen":
        model = AutoencoderKLQwenImage(
            base_dim=8,
            z_dim=16,
            dim_mult=[1, 2, 2, 2],
            num_res_blocks=1,
            attn_scales=[],
            temperal_downsample=[False, True, True],
        )
    else:
        raise ValueError(f"kind must be 'kl', 'sd35' or 'qwen', not {kind!r}")
    model.save_pretrained(out)
    return Path(path)


def latents_to_numpy(z, store_dtype: str) -> np.ndarray:
    arr = z.detach().to("cpu", torch_dtype_of(store_dtype)).numpy()
    return np.ascontiguousarray(arr)


def torch_dtype_of(store_dtype: str):
    import torch

    if store_dtype not in ("float32", "float16"):
        raise ValueError(f"store dtype must be float32 or float16, not {store_dtype!r}")
    return torch.float32 if store_dtype == "float32" else torch.float16
