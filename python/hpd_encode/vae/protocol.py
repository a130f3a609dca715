"""What the encode loop needs of a latent encoder: :class:`LatentEncoder`.

Any object with these attributes and this method can be passed as
``hpd_encode.encode(..., vae=obj)`` (or to the :class:`~hpd_encode.pipeline.Encoder`);
the diffusers VAEs (:class:`~hpd_encode.vae.DiffusersVae`) are one implementation.

Seeded noise for ``mode="sample"`` is shared by every implementation: image *i*
of a batch gets ``torch.randn(shape, generator=torch.Generator().manual_seed(seeds[i]))``
on the CPU (float32), so a sampled latent is the same on every device, batch
size and rank. :func:`gaussian_noise` returns it; when the encode loop passes
:class:`Seeds`, the noise was already drawn off the main thread (and, on CUDA,
copied to the device on a side stream) while the previous batch ran.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, SupportsIndex, overload, runtime_checkable

if TYPE_CHECKING:
    import torch

LATENT_MODES = ("sample", "mean")


@runtime_checkable
class LatentEncoder(Protocol):
    """A latent encoder the encode loop can drive.

    Attributes:
        device: where :meth:`encode` takes its pixels (``"cpu"``, ``"cuda:0"``, ...).
        dtype: the dtype of the pixels it takes (``torch.bfloat16``, ...).
        down_factor: pixels per latent along each side (8 for SD3.5/FLUX VAEs).
        latent_channels: channels of a latent (16 for SD3.5/FLUX VAEs).
        identity: text that changes whenever the latents would (class, config,
            weights); recorded in ``manifest.json`` and the resume fingerprint.
        normalization: how raw latents are normalised, JSON-able, for
            provenance: ``{"kind": "shift_scale", "shift": s, "scale": k}``
            (``(z - s) * k``), ``{"kind": "per_channel", "mean": [...],
            "std": [...], "scale": k}`` (``(z - mean) * k / std``), or ``{}``
            when unknown.
    """

    device: str
    dtype: torch.dtype
    down_factor: int
    latent_channels: int
    identity: str
    normalization: dict[str, Any]

    def encode(self, pixels: torch.Tensor, *, mode: str, seeds: Sequence[int] | None) -> torch.Tensor:
        """Encode ``pixels`` (``N x 3 x H x W``, float in [-1, 1], on :attr:`device`
        in :attr:`dtype`) to normalised latents ``N x C x H/f x W/f`` on the
        device (any float dtype). ``mode`` is ``"mean"`` (the posterior mean,
        or the deterministic latent) or ``"sample"`` (with one seed per image in
        ``seeds``; :func:`gaussian_noise` gives the shared seeded noise).
        May raise ``torch.cuda.OutOfMemoryError``: the loop then retries with
        fewer images per call."""
        ...


def item_seed(seed: int, key: str) -> int:
    """A stable 63-bit seed for one item (an image at a target size)."""
    digest = hashlib.blake2b(f"{seed}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def job_seed(seed: int, path: str, size: tuple[int, int]) -> int:
    """The noise seed of one job: image ``path`` (relative to the data root) at
    target ``size`` (what the encode loop and ``verify --reencode`` use)."""
    return item_seed(seed, f"{path}@{size[0]}x{size[1]}")


def fill_noise(out: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
    """Write image *i*'s standard normal noise, from a generator seeded with
    ``seeds[i]``, into ``out[i]`` (a float32 CPU tensor, pinned or not).
    The values depend only on the seed and the number of elements."""
    import torch

    for i, s in enumerate(seeds):
        torch.randn(out.shape[1:], generator=torch.Generator().manual_seed(int(s)), out=out[i])
    return out


class NoiseAhead:
    """Noise for a batch's :class:`Seeds`, being drawn (and moved to the device)
    by another thread: ``get()`` waits for it and returns it ready for use on
    the calling thread's current stream. Made by the encode loop."""

    def __init__(self, shape: tuple[int, ...], result: Callable[[], torch.Tensor]) -> None:
        self.shape = shape
        self._result = result
        self._tensor: torch.Tensor | None = None

    def get(self) -> torch.Tensor:
        if self._tensor is None:
            self._tensor = self._result()
        return self._tensor


class Seeds(list[int]):
    """One seed per image, optionally with its noise drawn ahead (:class:`NoiseAhead`,
    covering ``ahead_start`` onwards). Slicing keeps the noise."""

    def __init__(self, seeds: Sequence[int] = (), ahead: NoiseAhead | None = None, ahead_start: int = 0):
        super().__init__(int(s) for s in seeds)
        self.ahead, self.ahead_start = ahead, ahead_start

    @overload
    def __getitem__(self, i: SupportsIndex) -> int: ...
    @overload
    def __getitem__(self, i: slice) -> Seeds: ...
    def __getitem__(self, i: SupportsIndex | slice) -> int | Seeds:
        if not isinstance(i, slice):
            return super().__getitem__(i)
        start, _, step = i.indices(len(self))
        part = super().__getitem__(i)
        if step != 1 or self.ahead is None:
            return Seeds(part)
        return Seeds(part, self.ahead, self.ahead_start + start)


def gaussian_noise(
    seeds: Sequence[int], shape: tuple[int, ...], device: str | torch.device = "cpu"
) -> torch.Tensor:
    """The seeded standard normal noise of a batch, ``len(seeds) x *shape``
    float32 on ``device``: image *i*'s from ``torch.Generator().manual_seed(seeds[i])``
    on the CPU, whatever the device (see the module docstring). Noise that the
    encode loop drew ahead for these seeds is used when its shape matches."""
    import torch

    shape = tuple(int(d) for d in shape)
    if isinstance(seeds, Seeds) and seeds.ahead is not None and seeds.ahead.shape == shape:
        lo = seeds.ahead_start
        return seeds.ahead.get()[lo : lo + len(seeds)]
    out = fill_noise(torch.empty((len(seeds), *shape), dtype=torch.float32), seeds)
    return out.to(device)


def check_encoder(obj: Any) -> LatentEncoder:
    """``obj`` if it has what :class:`LatentEncoder` asks for, else a
    :class:`~hpd_encode.errors.VaeError` naming what is missing or wrong."""
    import torch

    from hpd_encode.errors import VaeError

    name = type(obj).__qualname__
    missing = [
        a
        for a in ("device", "dtype", "down_factor", "latent_channels", "identity", "normalization", "encode")
        if not hasattr(obj, a)
    ]
    if missing:
        raise VaeError(
            f"the encoder object {name} lacks {', '.join(missing)}: pass a diffusers folder, a hub id, "
            "or an object implementing hpd_encode.vae.LatentEncoder"
        )
    problems = []
    if not isinstance(obj.device, str):
        problems.append(f"device must be a str like 'cuda:0', not {obj.device!r}")
    if not isinstance(obj.dtype, torch.dtype):
        problems.append(f"dtype must be a torch.dtype, not {obj.dtype!r}")
    for a in ("down_factor", "latent_channels"):
        v = getattr(obj, a)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            problems.append(f"{a} must be an int >= 1, not {v!r}")
    if not isinstance(obj.identity, str) or not obj.identity:
        problems.append(f"identity must be a non-empty str, not {obj.identity!r}")
    if not isinstance(obj.normalization, dict):
        problems.append(f"normalization must be a dict, not {obj.normalization!r}")
    if not callable(obj.encode):
        problems.append("encode must be a method")
    if problems:
        raise VaeError(f"the encoder object {name} cannot be used: {'; '.join(problems)}")
    return obj


def to_encoder_input(pixels: torch.Tensor, device: str | torch.device, dtype: torch.dtype) -> torch.Tensor:
    """What :meth:`LatentEncoder.encode` takes, from a decoded batch: a
    ``(B, H, W, 3)`` uint8 tensor is moved as uint8 (4x less to copy) and
    scaled to [-1, 1] on the device (``x / 127.5 - 1``, bit-identical to
    ``load_batch(..., normalize=True)`` in float32); a floating ``(B, 3, H, W)``
    tensor already in [-1, 1] is only moved and cast."""
    from hpd_encode.errors import VaeError

    shape = tuple(pixels.shape)
    if pixels.is_floating_point():
        if pixels.ndim != 4 or shape[1] != 3:
            raise VaeError(f"float pixels must be (B, 3, H, W) in [-1, 1], not {shape}")
        return pixels.to(device, dtype, non_blocking=True)
    if pixels.ndim != 4 or shape[3] != 3:
        raise VaeError(f"uint8 pixels must be (B, H, W, 3), not {shape}")
    x = pixels.to(device, non_blocking=True).permute(0, 3, 1, 2)
    return x.to(dtype).div_(127.5).sub_(1.0)


def encode_pixels(
    encoder: LatentEncoder, pixels: torch.Tensor, *, mode: str = "sample", seeds: Sequence[int] | None = None
) -> torch.Tensor:
    """Encode a decoded batch (uint8 ``(B, H, W, 3)`` or float ``(B, 3, H, W)``
    in [-1, 1], on any device) with ``encoder``: its normalised latents on
    its device."""
    return encoder.encode(to_encoder_input(pixels, encoder.device, encoder.dtype), mode=mode, seeds=seeds)
