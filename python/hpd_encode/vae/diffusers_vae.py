"""The diffusers VAEs as :class:`~hpd_encode.vae.LatentEncoder` implementations.

Two families are supported:

* ``AutoencoderKL`` (SD3.5 / FLUX style): ``latent = (z - shift_factor) * scaling_factor``
  (a missing ``shift_factor`` counts as 0). If the config carries per-channel
  ``latents_mean``/``latents_std`` (SDXL-style variants) the latent is
  ``(z - mean) * scaling_factor / std``.
* ``AutoencoderKLQwenImage`` (Qwen-Image style, takes a frame axis
  ``(B, C, 1, H, W)``): ``latent = (z - latents_mean) / latents_std`` per channel.

``z`` is the posterior mean (``latent="mean"``) or a sample with noise drawn
from a per-item seed (``latent="sample"``, :func:`~hpd_encode.vae.gaussian_noise`),
so reruns give the same latents.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hpd_encode.vae.identity import WEIGHT_PREFIX, folder_identity, weight_files
from hpd_encode.vae.protocol import LATENT_MODES, gaussian_noise

log = logging.getLogger("hpd_encode.vae")

SUPPORTED_CLASSES = ("AutoencoderKL", "AutoencoderKLQwenImage")


def resolve_dtype(dtype: str, device: str) -> Any:
    import torch

    from hpd_encode.errors import VaeError

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
        raise VaeError(f"dtype must be auto, float32, bfloat16 or float16, not {dtype!r}")
    return table[dtype]


def normalization_of(class_name: str, config: dict[str, Any]) -> dict[str, Any]:
    """The normalisation a diffusers VAE of ``class_name`` with ``config`` applies
    (:meth:`DiffusersVae.normalize`), as :attr:`LatentEncoder.normalization` states it."""
    mean, std = config.get("latents_mean"), config.get("latents_std")
    if class_name == "AutoencoderKLQwenImage":
        return {"kind": "per_channel", "mean": list(mean or []), "std": list(std or []), "scale": 1.0}
    scale = float(config.get("scaling_factor") or 1.0)
    if mean is not None and std is not None:
        return {"kind": "per_channel", "mean": list(mean), "std": list(std), "scale": scale}
    return {"kind": "shift_scale", "shift": float(config.get("shift_factor") or 0.0), "scale": scale}


@dataclass(frozen=True)
class VaeFolder:
    """A diffusers VAE found on disk (a local folder, or a hub id's files in
    the hub cache): where it is, its class and config, and its identity."""

    source: str  # as given: a folder or a hub id
    folder: Path  # the folder holding config.json and the weights
    subfolder: str | None
    class_name: str
    config: dict[str, Any]
    identity: str

    @property
    def normalization(self) -> dict[str, Any]:
        """What a loaded VAE's :attr:`DiffusersVae.normalization` will be (no model loaded)."""
        return normalization_of(self.class_name, self.config)


def _read_config(folder: Path) -> dict[str, Any] | None:
    path = folder / "config.json"
    if not path.is_file():
        return None
    config = json.loads(path.read_text())
    return config if isinstance(config, dict) else None


def _hub_snapshot(source: str, subfolder: str | None) -> tuple[Path, str | None]:
    """Download (or find in the hub cache) the config and weight files of a hub
    id's VAE; ``subfolder=None`` tries ``vae`` first, then the repository root."""
    from hpd_encode.errors import VaeLoadError

    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:
        raise VaeLoadError(
            f"VAE '{source}' is not a local folder and huggingface_hub is not installed: "
            "pip install 'hpd-encode[download]', or pass a local diffusers folder"
        ) from e
    last: Exception | None = None
    for sub in [subfolder] if subfolder is not None else ["vae", None]:
        prefix = f"{sub}/" if sub else ""
        for weights in ("*.safetensors", "*.safetensors.index.json", "*.bin", "*.bin.index.json"):
            try:
                root = Path(
                    snapshot_download(
                        source, allow_patterns=[f"{prefix}config.json", f"{prefix}{WEIGHT_PREFIX}{weights}"]
                    )
                )
            except Exception as e:  # noqa: BLE001 - hub errors vary by version; reported below
                last = e
                break
            folder = root / (sub or "")
            if not (folder / "config.json").is_file():
                break
            if weight_files(folder):
                return root, sub
    raise VaeLoadError(
        f"cannot load VAE '{source}' from the hub: {last or 'no config.json with weights found'}"
    )


def find_vae(source: str, subfolder: str | None = None) -> VaeFolder:
    """Locate a diffusers VAE and compute its identity, without loading it.

    ``subfolder=None`` means: ``vae`` when the folder has one (or, for a hub
    id, try ``vae`` first), else the folder itself.
    """
    from hpd_encode.errors import VaeError

    local = Path(source).expanduser()
    if local.exists():
        if subfolder is None:
            subfolder = "vae" if (local / "vae" / "config.json").is_file() else None
        root = local
    else:
        root, subfolder = _hub_snapshot(source, subfolder)
    folder = root / (subfolder or "")
    config = _read_config(folder)
    if config is None:
        raise VaeError(f"'{folder}' has no config.json: not a diffusers VAE folder")
    class_name = config.get("_class_name", "AutoencoderKL")
    if class_name not in SUPPORTED_CLASSES:
        raise VaeError(
            f"'{folder}': VAE class {class_name!r} is not supported (supported: {', '.join(SUPPORTED_CLASSES)}); "
            "wrap it in an object implementing hpd_encode.vae.LatentEncoder"
        )
    return VaeFolder(
        str(source), folder, subfolder, class_name, config, folder_identity(folder, class_name, config)
    )


def load_vae(
    source: str | VaeFolder,
    *,
    subfolder: str | None = None,
    device: str | None = None,
    dtype: str = "auto",
) -> DiffusersVae:
    """Load a VAE from a local diffusers folder or a hub id (or a :func:`find_vae` result)."""
    import diffusers
    import torch

    from hpd_encode.errors import VaeLoadError
    from hpd_encode.pipeline.options import parse_device, resolve_device

    found = source if isinstance(source, VaeFolder) else find_vae(str(source), subfolder)
    device = resolve_device(parse_device(device))
    torch_dtype = resolve_dtype(dtype, device)
    cls = getattr(diffusers, found.class_name)
    try:
        model = cls.from_pretrained(found.folder, torch_dtype=torch_dtype, low_cpu_mem_usage=False)
    except Exception as e:  # file and format errors vary by version
        raise VaeLoadError(f"cannot load the VAE in '{found.folder}': {e}") from e
    model = model.to(device).eval().requires_grad_(False)
    if device.startswith("cuda"):
        model = model.to(memory_format=torch.channels_last)
    return DiffusersVae(
        model=model,
        class_name=found.class_name,
        source=found.source,
        subfolder=found.subfolder,
        device=device,
        dtype=torch_dtype,
        config=dict(model.config),
        identity=found.identity,
    )


@dataclass
class DiffusersVae:
    """A diffusers ``AutoencoderKL`` or ``AutoencoderKLQwenImage`` as a
    :class:`~hpd_encode.vae.LatentEncoder` (see the module docstring for its
    normalisation). Made by :func:`load_vae`."""

    model: Any
    class_name: str
    source: str
    subfolder: str | None
    device: str
    dtype: Any
    config: dict[str, Any]
    identity: str
    down_factor: int = field(init=False)
    latent_channels: int = field(init=False)
    normalization: dict[str, Any] = field(init=False)
    _compiled: Any = field(default=None, init=False, repr=False)
    _compiled_backend: str | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        cfg = self.config
        if self.frame_axis:
            self.down_factor = 2 ** (len(cfg["dim_mult"]) - 1)
            self.latent_channels = int(cfg["z_dim"])
        else:
            self.down_factor = 2 ** (len(cfg["block_out_channels"]) - 1)
            self.latent_channels = int(cfg["latent_channels"])
        self.normalization = normalization_of(self.class_name, cfg)

    @property
    def frame_axis(self) -> bool:
        return self.class_name == "AutoencoderKLQwenImage"

    def normalize(self, z: Any) -> Any:
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

    def compile(self, backend: str = "inductor") -> bool:
        """Run the encoder through ``torch.compile`` from now on. A failure, now
        or at the first call of a shape, is a warning, and the encoder runs
        without it. Returns whether compilation was set up."""
        import torch

        if self._compiled is not None and self._compiled_backend == backend:
            return True
        try:
            self._compiled = torch.compile(self._moments, backend=backend, dynamic=False)
            self._compiled_backend = backend
        except Exception as e:  # noqa: BLE001 - any compile failure falls back
            log.warning("torch.compile(backend=%r) is not available (%s); encoding without it", backend, e)
            self._compiled = None
            return False
        # One graph per bucket size and batch size: keep them all (the names changed in torch 2.6).
        config = torch._dynamo.config
        for name, least in (("recompile_limit", 256), ("cache_size_limit", 256)):
            if hasattr(config, name):
                setattr(config, name, max(getattr(config, name), least))
        for name in ("accumulated_recompile_limit", "accumulated_cache_size_limit"):
            if hasattr(config, name):
                setattr(config, name, max(getattr(config, name), 4096))
        return True

    def _moments(self, x: Any) -> Any:
        return self.model.encode(x).latent_dist.parameters

    def _posterior(self, x: Any) -> Any:
        import torch

        if self._compiled is not None:
            try:
                from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

                return DiagonalGaussianDistribution(self._compiled(x))
            except torch.cuda.OutOfMemoryError:
                raise
            except Exception as e:  # noqa: BLE001 - any compile failure falls back
                detail = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
                log.warning(
                    "torch.compile of the %s encoder failed at %s (%s: %s); encoding without it",
                    self.class_name,
                    "x".join(str(d) for d in x.shape),
                    type(e).__name__,
                    detail[:300],
                )
                self._compiled = None
        return self.model.encode(x).latent_dist

    def encode(self, pixels: Any, *, mode: str, seeds: Sequence[int] | None = None) -> Any:
        """Normalised float32 latents ``(B, C, H/8, W/8)`` on the VAE's device
        for float pixels ``(B, 3, H, W)`` in [-1, 1] on it, in its dtype."""
        import torch

        from hpd_encode.errors import VaeError

        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise VaeError(f"float pixels must be (B, 3, H, W) in [-1, 1], not {tuple(pixels.shape)}")
        if mode not in LATENT_MODES:
            raise VaeError(f"latent mode must be 'sample' or 'mean', not {mode!r}")
        if mode == "sample" and (seeds is None or len(seeds) != pixels.shape[0]):
            raise VaeError("sample mode needs one seed per image")
        x = pixels
        if self.frame_axis:
            x = x.unsqueeze(2).contiguous()
        elif self.device.startswith("cuda"):
            x = x.contiguous(memory_format=torch.channels_last)
        else:
            # Plain NCHW on CPU: the layout the reference feeds, so kernels (and
            # their last-bit rounding) match a direct diffusers call.
            x = x.contiguous()
        with torch.inference_mode():
            dist = self._posterior(x)
            mean = dist.mean.float()
            if mode == "mean":
                z = mean
            else:
                assert seeds is not None
                std = dist.std.float()
                shape = (mean.shape[1], *mean.shape[-2:])
                noise = gaussian_noise(seeds, shape, mean.device).view(mean.shape)
                z = mean + std * noise
            if self.frame_axis:
                z = z[:, :, 0]
            return self.normalize(z)


#: The name this class had before the encoder protocol.
Vae = DiffusersVae


def decode_latents(vae: DiffusersVae, z: Any, normalization: dict[str, Any]) -> np.ndarray:
    """Stored latents ``(B, C, h, w)`` back to pixels, ``(B, H, W, 3)`` uint8:
    the normalisation undone (``normalization`` as the provenance records it),
    then the VAE's decoder (for a person to look at: ``verify --preview``)."""
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

    from hpd_encode.errors import VaeError

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
        raise VaeError(f"kind must be 'kl', 'sd35' or 'qwen', not {kind!r}")
    model.save_pretrained(out)
    return Path(path)


def latents_to_numpy(z: Any, store_dtype: str) -> np.ndarray:
    arr = z.detach().to("cpu", torch_dtype_of(store_dtype)).numpy()
    return np.ascontiguousarray(arr)


def torch_dtype_of(store_dtype: str) -> Any:
    import torch

    from hpd_encode.errors import VaeError

    if store_dtype not in ("float32", "float16"):
        raise VaeError(f"store dtype must be float32 or float16, not {store_dtype!r}")
    return torch.float32 if store_dtype == "float32" else torch.float16
