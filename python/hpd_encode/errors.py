"""Every exception hpd-encode raises derives from :class:`HpdError`.

The Rust core defines the root and the errors it raises (image, path
containment, non-regular files, memory, writer); the Python-side ones are
here. Each keeps the built-in base it had before (``ValueError``,
``RuntimeError``), so callers' existing ``except`` clauses still work.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hpd_encode._core import (
    HpdError,
    ImageDecodeError,
    ImageTooLargeError,
    InvalidRowError,
    NotRegularFileError,
    OutOfMemoryError,
    UnsafePathError,
    WriterError,
)


class MetadataError(HpdError, ValueError):
    """The metadata file as a whole cannot be read (not a list or JSON Lines, broken list syntax)."""


class ResumeMismatchError(HpdError, ValueError):
    """The output directory holds a run made with settings that change latents."""


class ArchiveError(HpdError, ValueError):
    """The archive is damaged or truncated, or a limit stopped extraction.

    ``part`` is the part file being read when it happened (None when not
    known), ``report`` what was done up to then (an ``ExtractReport``).
    """

    def __init__(self, message: str, part: Path | None = None, report: Any = None) -> None:
        super().__init__(message)
        self.part = part
        self.report = report


class ExtractLimitError(ArchiveError):
    """The total size limit of one extraction run was reached."""


class IndexInputError(HpdError, ValueError):
    """A part file, filter or option the index cannot use (the message names it)."""


class PartFilesNotFoundError(HpdError, FileNotFoundError):
    """A source names no Parquet file: a missing path, an empty directory, a glob matching nothing."""


class OutputOverwritesInputError(IndexInputError):
    """An output path (``--output``, ``--stats``, ``--plot``) that is a part file read or another Parquet file."""


class MissingExtraError(HpdError, ImportError):
    """An optional dependency is not installed; the message says which extra to install."""


class OutputBusyError(HpdError, RuntimeError):
    """Another process holds the output directory's lock."""


class PartialOutputError(HpdError, ValueError):
    """An output directory whose encode run has not completed."""


class PartFileError(HpdError, ValueError):
    """A part file, or a value in it, cannot be read (damaged footer or page,
    malformed ``.npy`` bytes, a latent whose bytes do not match their stored
    checksum); the message names the file, row group and row."""


class PartFileChangedError(PartFileError):
    """A part file was replaced or rewritten while it was being read (its
    identity, device, inode, size and mtime, is not the one seen before)."""


class MixedProvenanceError(IndexInputError):
    """Part files whose latents were made differently (another VAE, normalisation,
    latent mode, dtype, seed or bucket set) given to one index."""


class RepackError(HpdError, ValueError):
    """``repack`` refuses its arguments (a destination that is, or is inside, the source)."""


class ReencodeError(HpdError, ValueError):
    """``verify --reencode`` cannot re-encode: a source (data root, VAE,
    metadata) is missing or not the one recorded, or the output lacks settings."""


__all__ = [
    "ArchiveError",
    "ExtractLimitError",
    "HpdError",
    "ImageDecodeError",
    "ImageTooLargeError",
    "IndexInputError",
    "InvalidRowError",
    "MetadataError",
    "MissingExtraError",
    "MixedProvenanceError",
    "NotRegularFileError",
    "OutOfMemoryError",
    "OutputBusyError",
    "OutputOverwritesInputError",
    "PartFilesNotFoundError",
    "PartFileChangedError",
    "PartFileError",
    "PartialOutputError",
    "ReencodeError",
    "RepackError",
    "ResumeMismatchError",
    "UnsafePathError",
    "WriterError",
]
