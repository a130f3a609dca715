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
    load_batch,
    load_image,
    load_images,
    probe_image,
    probe_images,
)
from hpd_encode._core import __version__ as __version__
from hpd_encode.buckets import load_bucket_set

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "BucketSet",
    "HpdError",
    "ImageDecodeError",
    "ImageTooLargeError",
    "ParquetWriter",
    "WriterError",
    "load_batch",
    "load_bucket_set",
    "load_image",
    "load_images",
    "probe_image",
    "probe_images",
]
