"""The encode job's options: parsed and validated once, then frozen.

Both the CLI and :func:`hpd_encode.encode` build an :class:`EncodeOptions`
through :meth:`EncodeOptions.create`, so every value is checked in one place
before anything is read or written. The CLI uses the same field parsers as
argparse ``type=`` functions, so a bad value there is a one-line usage error
(exit 2).
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any, Literal

from hpd_encode._core import DEFAULT_MAX_PIXELS, LATENT_COMPRESSIONS, BucketSet
from hpd_encode.buckets import load_bucket_set

LATENT_MODES = ("sample", "mean")
STORE_DTYPES = ("float32", "float16")
COMPUTE_DTYPES = ("auto", "float32", "bfloat16", "float16")
ALPHA_MODES = ("drop", "white", "black")

#: Pixels per VAE call when ``batch_size="auto"``: 8 MP on a GPU (bf16, an
#: SD3.5-size VAE), 2 MP on the CPU.
AUTO_BATCH_PIXELS = {"cuda": 8 * 1024 * 1024, "cpu": 2 * 1024 * 1024}

_DEVICE_RE = re.compile(r"^(cpu|cuda(:\d+)?|auto)$")
# A hub repository id: "name" or "owner/name" (letters, digits, '-', '_', '.').
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?$")


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}, not {value!r}")
    return value


def _int(name: str, value: Any, minimum: int, maximum: int = 2**63 - 1) -> int:
    """An integer option in ``[minimum, maximum]`` (at most a signed 64-bit one: what the Rust side
    takes), or a ValueError that names it."""
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
            value = int(value)
        else:
            raise ValueError(f"{name} must be an integer, not {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, not {value}")
    if value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, not {value}")
    return value


def parse_batch_size(value: Any) -> int | None:
    """``"auto"`` (None: a pixel budget per call) or an integer >= 1."""
    if value is None or value == "auto":
        return None
    return _int("batch size", value, 1)


def parse_device(value: str | None) -> str | None:
    """``cpu``, ``cuda``, ``cuda:N`` or None/``auto`` (CUDA when present). Checks the
    syntax only; :func:`resolve_device` checks that CUDA is there."""
    if value in (None, "", "auto"):
        return None
    if not _DEVICE_RE.match(value):
        raise ValueError(f"device must be cpu, cuda or cuda:N, not {value!r}")
    return value


def resolve_device(device: str | None) -> str:
    """The device to run on, refusing CUDA on a machine without it (before any
    output is written)."""
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} asked for, but CUDA is not available here; use --device cpu")
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise ValueError(
                f"device {device!r} asked for, but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
    return device


def check_vae_source(value: str | PathLike[str]) -> str:
    """A local folder that exists, or something shaped like a hub repository id."""
    text = os.fspath(value)
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"VAE '{text}' is a file; pass the diffusers folder that holds config.json")
        return text
    if not _HUB_ID_RE.match(text):
        raise ValueError(f"VAE '{text}' is neither an existing folder nor a hub repository id (owner/name)")
    return text


def _check_vae(vae: Any, device: str | None, dtype: str) -> Any:
    """A VAE folder or hub id (checked by :func:`check_vae_source`), or an encoder object (checked
    by :func:`~hpd_encode.vae.check_encoder`) whose device and dtype the options do not contradict."""
    if isinstance(vae, (str, PathLike)):
        return check_vae_source(vae) if os.fspath(vae) else ""
    from hpd_encode.errors import VaeError
    from hpd_encode.vae import check_encoder

    enc = check_encoder(vae)
    name = type(enc).__qualname__
    if device not in (None, "", "auto") and device != enc.device:
        raise VaeError(f"device {device!r} asked for, but the encoder object {name} runs on {enc.device!r}")
    if dtype != "auto":
        from hpd_encode.vae import resolve_dtype

        if resolve_dtype(dtype, enc.device) != enc.dtype:
            raise VaeError(f"dtype {dtype!r} asked for, but the encoder object {name} takes {enc.dtype}")
    return enc


def vae_is_object(vae: Any) -> bool:
    """Whether an encode's ``vae`` is an encoder object rather than a folder or hub id."""
    return not isinstance(vae, (str, PathLike))


@dataclass(frozen=True)
class EncodeOptions:
    """Everything an encode run needs, validated. Build with :meth:`create`."""

    data_root: Path
    metadata: Path
    output_dir: Path
    vae: Any  # a diffusers folder or hub id (str), or an object implementing LatentEncoder
    vae_subfolder: str | None = None
    dtype: str = "auto"
    device: str | None = None
    buckets: BucketSet = field(default_factory=BucketSet.hpdv3)
    batch_size: int | None = None  # None: auto (pixel budget, halves on CUDA OOM)
    latent: str = "sample"
    store_dtype: str = "float32"
    seed: int = 0
    limit: int | None = None
    overwrite: bool = False
    num_threads: int | None = None  # decode threads; None: cores / local ranks
    share: bool = True
    rows_per_file: int = 2000
    latent_compression: str = "none"  # codec of the latent columns: "none" or "zstd"
    prefetch: int = 2
    alpha: Literal["drop", "white", "black"] = "drop"
    max_pixels: int = DEFAULT_MAX_PIXELS
    compile: bool | str = False  # torch.compile the encoder: True (inductor) or a backend name
    progress: bool = True
    dist_timeout_s: float = 7200.0
    dry_run: bool = False

    @classmethod
    def create(
        cls,
        data_root: str | PathLike[str],
        metadata: str | PathLike[str],
        output_dir: str | PathLike[str] | None,
        vae: Any,
        *,
        buckets: str | PathLike[str] | BucketSet = "hpdv3",
        batch_size: int | str | None = "auto",
        device: str | None = None,
        workers: int | None = None,
        **kwargs: Any,
    ) -> EncodeOptions:
        """Validate and freeze. ``workers`` is the deprecated name of ``num_threads``."""
        if workers is not None:
            warnings.warn("'workers' is deprecated; use 'num_threads'", DeprecationWarning, stacklevel=3)
            kwargs.setdefault("num_threads", workers)
        unknown = set(kwargs) - {f for f in cls.__dataclass_fields__}
        if unknown:
            raise TypeError(f"unknown encode option(s): {', '.join(sorted(unknown))}")
        dry_run = bool(kwargs.get("dry_run", False))
        data_root, metadata = Path(data_root), Path(metadata)
        if not data_root.is_dir():
            raise FileNotFoundError(f"data root '{data_root}' is not a directory")
        if not metadata.is_file():
            raise FileNotFoundError(f"metadata file '{metadata}' does not exist")
        if output_dir is None:
            if not dry_run:
                raise ValueError("output_dir is required (unless dry_run)")
            output_dir = ""
        if vae is None:
            if not dry_run:
                raise ValueError("vae is required (unless dry_run)")
            vae = ""
        opts = cls(
            data_root=data_root,
            metadata=metadata,
            output_dir=Path(output_dir),
            vae=_check_vae(vae, device, kwargs.get("dtype", "auto")),
            buckets=load_bucket_set(buckets),
            batch_size=parse_batch_size(batch_size),
            device=parse_device(device),
            **kwargs,
        )
        opts._check()
        return opts

    def _check(self) -> None:
        _choice("dtype", self.dtype, COMPUTE_DTYPES)
        _choice("latent", self.latent, LATENT_MODES)
        _choice("store_dtype", self.store_dtype, STORE_DTYPES)
        _choice("alpha", self.alpha, ALPHA_MODES)
        _choice("latent_compression", self.latent_compression, LATENT_COMPRESSIONS)
        _int("seed", self.seed, -(2**63))
        if self.limit is not None:
            _int("limit", self.limit, 0)
        if self.num_threads is not None:
            _int("num_threads", self.num_threads, 1)
        _int("rows_per_file", self.rows_per_file, 0)
        _int("prefetch", self.prefetch, 1)
        _int("max_pixels", self.max_pixels, 1)
        if not isinstance(self.compile, (bool, str)) or self.compile == "":
            from hpd_encode.errors import VaeError

            raise VaeError(
                f"compile must be True, False or a torch.compile backend name, not {self.compile!r}"
            )
        if not self.dist_timeout_s > 0:
            raise ValueError(f"dist_timeout_s must be > 0, not {self.dist_timeout_s}")

    def batch_size_for(self, device: str) -> Any:
        """Images per VAE call for a target size: fixed, or the pixel budget's share."""
        if self.batch_size is not None:
            fixed = self.batch_size
            return lambda h, w: fixed
        budget = AUTO_BATCH_PIXELS["cuda" if device.startswith("cuda") else "cpu"]
        return lambda h, w: max(1, budget // (h * w))
