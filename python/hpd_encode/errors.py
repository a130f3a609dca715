"""Every exception hpd-encode raises derives from :class:`HpdError`.

The Rust core defines the root and the errors both sides raise (options,
usage, file access, images, path containment, memory, part files, the
writer); the Python-only ones are here. Each also has the built-in base a
caller would expect (``ValueError``, ``OSError``, ``FileNotFoundError``,
``TypeError``, ``IndexError``...), so ``except ValueError`` still works.
``tests/test_errors.py`` fails on any ``raise`` of a bare built-in class.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hpd_encode._core import (
    AccessDeniedError,
    FileAccessError,
    HpdError,
    ImageDecodeError,
    ImageTooLargeError,
    InputNotFoundError,
    InvalidRowError,
    NotRegularFileError,
    OptionError,
    OutOfMemoryError,
    PartFileError,
    PathNotADirectoryError,
    RowOutOfRangeError,
    UnsafePathError,
    UsageError,
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


class PartFilesNotFoundError(InputNotFoundError):
    """A source names no Parquet file: a missing path, an empty directory, a glob matching nothing."""


class OutputOverwritesInputError(IndexInputError):
    """An output path (``--output``, ``--stats``, ``--plot``) that is a part file read or another Parquet file."""


class MissingExtraError(HpdError, ImportError):
    """An optional dependency is not installed; the message says which extra to install."""


class OutputBusyError(HpdError, RuntimeError):
    """Another process holds the output directory's lock."""


class PartialOutputError(HpdError, ValueError):
    """An output directory whose encode run has not completed."""


class DamagedOutputError(HpdError, ValueError):
    """An output directory's own files (manifest, part files) are damaged or disagree; the message
    names the file and what to do."""


class VaeError(HpdError, ValueError):
    """A VAE or encoder object that cannot be used: no ``config.json``, an
    unsupported class, an object lacking what ``LatentEncoder`` asks for, latents
    of the wrong shape, pixels of the wrong layout (the message says which)."""


class VaeLoadError(FileAccessError):
    """A VAE's files cannot be read or downloaded (the message names the folder or hub id)."""


class SourceError(HpdError, ValueError):
    """A dataset source that holds something other than the data (a Git LFS pointer, a directory
    that overlaps the output)."""


class FetchError(FileAccessError):
    """A download or local copy that failed; the message names the file or repository."""


class DistError(HpdError, RuntimeError):
    """torchrun ranks that disagree (an exchange that gave a rank other data than the plan)."""


class MissingNameError(HpdError, AttributeError):
    """A name the package does not have."""


class UnknownKeyError(HpdError, KeyError):
    """A key a result object does not have."""


__all__ = [
    "AccessDeniedError",
    "ArchiveError",
    "DamagedOutputError",
    "DistError",
    "ExtractLimitError",
    "FetchError",
    "FileAccessError",
    "HpdError",
    "ImageDecodeError",
    "ImageTooLargeError",
    "IndexInputError",
    "InputNotFoundError",
    "InvalidRowError",
    "MetadataError",
    "MissingExtraError",
    "MissingNameError",
    "NotRegularFileError",
    "OptionError",
    "OutOfMemoryError",
    "OutputBusyError",
    "OutputOverwritesInputError",
    "PartFileError",
    "PartFilesNotFoundError",
    "PartialOutputError",
    "PathNotADirectoryError",
    "ResumeMismatchError",
    "RowOutOfRangeError",
    "SourceError",
    "UnknownKeyError",
    "UnsafePathError",
    "UsageError",
    "VaeError",
    "VaeLoadError",
    "WriterError",
]
