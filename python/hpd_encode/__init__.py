"""hpd-encode: HPDv3-style preference datasets to VAE latents in Parquet.

The heavy lifting (image decode/resize, bucketing, Parquet writing and
reading) runs in the Rust extension ``hpd_encode._core`` with the GIL
released. The parts that need torch, diffusers or Polars load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hpd_encode._core import (
    DEFAULT_MAX_PIXELS,
    BucketSet,
    ParquetWriter,
    free_batch_buffers,
    load_batch,
    load_image,
    load_images,
    probe_image,
    probe_images,
)
from hpd_encode._core import __version__ as __version__
from hpd_encode._lazy import lazy_exports
from hpd_encode.buckets import load_bucket_set
from hpd_encode.errors import (
    ArchiveError,
    HpdError,
    ImageDecodeError,
    ImageTooLargeError,
    InvalidRowError,
    OutputBusyError,
    PartialOutputError,
    ResumeMismatchError,
    UnsafePathError,
    VaeError,
    VaeLoadError,
    WriterError,
)

if TYPE_CHECKING:
    from hpd_encode.check import CheckReport, check_dataset
    from hpd_encode.fetch.download import download
    from hpd_encode.fetch.extract import extract
    from hpd_encode.index import build_index, read_index, write_index
    from hpd_encode.latents.reader import BucketBatchSampler, LatentPairDataset
    from hpd_encode.pipeline import EncodeOptions, EncodeSummary, PlanReport, encode
    from hpd_encode.provenance import read_provenance
    from hpd_encode.transfer import PushReport, pull, push
    from hpd_encode.vae import DiffusersVae, LatentEncoder, load_vae

# Name -> module that defines it; imported on first use.
_LAZY = {
    "encode": "hpd_encode.pipeline",
    "EncodeOptions": "hpd_encode.pipeline",
    "EncodeSummary": "hpd_encode.pipeline",
    "PlanReport": "hpd_encode.pipeline",
    "build_index": "hpd_encode.index",
    "read_index": "hpd_encode.index",
    "write_index": "hpd_encode.index",
    "LatentPairDataset": "hpd_encode.latents.reader",
    "BucketBatchSampler": "hpd_encode.latents.reader",
    "download": "hpd_encode.fetch",
    "extract": "hpd_encode.fetch",
    "check_dataset": "hpd_encode.check",
    "LatentEncoder": "hpd_encode.vae",
    "DiffusersVae": "hpd_encode.vae",
    "load_vae": "hpd_encode.vae",
    "CheckReport": "hpd_encode.check",
    "push": "hpd_encode.transfer",
    "pull": "hpd_encode.transfer",
    "PushReport": "hpd_encode.transfer",
    "read_provenance": "hpd_encode.provenance",
}


__getattr__ = lazy_exports(__name__, _LAZY, globals())

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "ArchiveError",
    "BucketBatchSampler",
    "BucketSet",
    "CheckReport",
    "DiffusersVae",
    "EncodeOptions",
    "EncodeSummary",
    "HpdError",
    "ImageDecodeError",
    "ImageTooLargeError",
    "InvalidRowError",
    "LatentEncoder",
    "LatentPairDataset",
    "OutputBusyError",
    "ParquetWriter",
    "PartialOutputError",
    "PlanReport",
    "PushReport",
    "ResumeMismatchError",
    "UnsafePathError",
    "VaeError",
    "VaeLoadError",
    "WriterError",
    "build_index",
    "check_dataset",
    "download",
    "encode",
    "extract",
    "free_batch_buffers",
    "load_batch",
    "load_bucket_set",
    "load_image",
    "load_images",
    "load_vae",
    "probe_image",
    "pull",
    "push",
    "probe_images",
    "read_index",
    "read_provenance",
    "write_index",
]
