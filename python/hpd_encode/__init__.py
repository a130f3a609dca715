"""hpd-encode: HPDv3-style preference datasets to VAE latents in Parquet.

The heavy lifting (image decode/resize, bucketing, Parquet writing) runs in
the Rust extension ``hpd_encode._core`` with the GIL released.
"""

from __future__ import annotations

from hpd_encode._core import (
    DEFAULT_MAX_PIXELS,
    BucketSet,
    HpdError,
    ImageDecodeError,
    ImageTooLargeError,
    ParquetWriter,
    WriterError,
    free_batch_buffers,
    load_batch,
    load_image,
    load_images,
    probe_image,
    probe_images,
)
from hpd_encode._core import __version__ as __version__
from hpd_encode.buckets import load_bucket_set

# Heavier parts (torch, diffusers, polars) load on first use.
_LAZY = {
    "encode": "hpd_encode.pipeline",
    "build_index": "hpd_encode.index",
    "write_index": "hpd_encode.index",
    "LatentPairDataset": "hpd_encode.reader",
    "BucketBatchSampler": "hpd_encode.reader",
    "download": "hpd_encode.fetch",
    "extract": "hpd_encode.fetch",
    "check_dataset": "hpd_encode.fetch",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'hpd_encode' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value

__all__ = [
    "BucketBatchSampler",
    "LatentPairDataset",
    "build_index",
    "check_dataset",
    "download",
    "encode",
    "extract",
    "write_index",
    "DEFAULT_MAX_PIXELS",
    "BucketSet",
    "HpdError",
    "ImageDecodeError",
    "ImageTooLargeError",
    "ParquetWriter",
    "WriterError",
    "free_batch_buffers",
    "load_batch",
    "load_bucket_set",
    "load_image",
    "load_images",
    "probe_image",
    "probe_images",
]
