"""Latent encoders: the protocol the encode loop drives (:class:`LatentEncoder`)
and its diffusers implementation (:class:`DiffusersVae`, :func:`load_vae`).

Nothing here imports torch until it is used.
"""

from __future__ import annotations

from hpd_encode.vae.diffusers_vae import (
    SUPPORTED_CLASSES,
    DiffusersVae,
    Vae,
    VaeFolder,
    decode_latents,
    find_vae,
    latents_to_numpy,
    load_vae,
    make_tiny_vae,
    resolve_dtype,
    torch_dtype_of,
)
from hpd_encode.vae.identity import describe_change, file_digest, folder_identity
from hpd_encode.vae.protocol import (
    LatentEncoder,
    NoiseAhead,
    Seeds,
    check_encoder,
    encode_pixels,
    fill_noise,
    gaussian_noise,
    item_seed,
    job_seed,
    to_encoder_input,
)

__all__ = [
    "SUPPORTED_CLASSES",
    "DiffusersVae",
    "LatentEncoder",
    "NoiseAhead",
    "Seeds",
    "Vae",
    "VaeFolder",
    "check_encoder",
    "decode_latents",
    "describe_change",
    "encode_pixels",
    "file_digest",
    "fill_noise",
    "find_vae",
    "folder_identity",
    "gaussian_noise",
    "item_seed",
    "job_seed",
    "latents_to_numpy",
    "load_vae",
    "make_tiny_vae",
    "resolve_dtype",
    "to_encoder_input",
    "torch_dtype_of",
]
