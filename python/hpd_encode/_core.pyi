"""Typed stubs of the Rust extension ``hpd_encode._core``.

Defaults written ``...`` are: ``max_pixels = DEFAULT_MAX_PIXELS`` (128 000 000)
for the image functions (``max_file_bytes=None`` means ``max_pixels * 8 + 16 MiB``,
``DEFAULT_MAX_FILE_BYTES`` at the default pixel limit); ``aspect_tolerance = 0.03``, ``pair_aspect_tolerance =
0.05``, ``min_pixels = 65536`` for ``BucketSet``; ``max_pixels = 1024 * 1024``
for ``BucketSet.generate``.

Kept in step with the module by ``tests/test_stubs.py`` (names, parameters,
defaults) and, where mypy is installed, ``python -m mypy.stubtest hpd_encode._core``.
"""

from collections.abc import Callable, Sequence
from os import PathLike
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Literal, TypeAlias, final, overload

import numpy as np
import numpy.typing as npt
from typing_extensions import Self

from hpd_encode.schema import PartRow

_Path: TypeAlias = str | PathLike[str]
_Alpha: TypeAlias = Literal["drop", "white", "black"]
_Size: TypeAlias = tuple[int, int]
_Ints: TypeAlias = npt.ArrayLike

__all__ = [
    "__version__",
    "DEFAULT_MAX_PIXELS",
    "HpdError",
    "ImageDecodeError",
    "ImageTooLargeError",
    "WriterError",
    "InvalidRowError",
    "UnsafePathError",
    "NotRegularFileError",
    "OutOfMemoryError",
    "OptionError",
    "UsageError",
    "FileAccessError",
    "InputNotFoundError",
    "AccessDeniedError",
    "PathNotADirectoryError",
    "PartFileError",
    "RowOutOfRangeError",
    "ObjectStoreError",
    "ObjectNotFoundError",
    "ObjectStoreAuthError",
    "ObjectStoreConfigError",
    "PartFileChangedError",
    "DEFAULT_MAX_FILE_BYTES",
    "METADATA_WINDOW",
    "PROBE_OK",
    "PROBE_UNSAFE_PATH",
    "PROBE_UNREADABLE",
    "PROBE_NOT_REGULAR",
    "PROBE_BAD_IMAGE",
    "PROBE_MISSING",
    "probe_paths",
    "probe_images",
    "load_images",
    "load_batch",
    "free_batch_buffers",
    "load_image",
    "probe_image",
    "_rebuild_bucket_set",
    "BucketSet",
    "ParquetWriter",
    "temp_name",
    "part_columns",
    "reference_columns",
    "row_fields",
    "TEMP_FILE_PATTERN",
    "LATENT_DOWN_FACTOR",
    "MAX_ROW_GROUP_SIZE",
    "LATENT_COMPRESSIONS",
    "LATENT_COLUMNS",
    "CHECKSUM_COLUMNS",
    "FILE_DIGEST",
    "parquet_layout",
    "rank_in_group",
    "connected_components",
    "partition_rows",
    "first_use_numbering",
    "number_jobs",
    "image_owners",
    "MAX_DETAIL",
    "record_fields",
    "RecordField",
    "metadata_file_kind",
    "read_metadata_columns",
    "MetadataShare",
    "metadata_range_summary",
    "read_metadata_entries",
    "survey_metadata",
    "MetadataColumns",
    "MetadataFailures",
    "StringColumn",
    "SurveyedMetadata",
    "Counter",
    "PathIds",
    "read_pairs",
    "latent_layout",
    "check_part_file",
    "clear_reader_cache",
    "object_store_settings",
    "configure_object_store",
    "s3_storage_options",
    "list_objects",
    "head_object",
    "get_object",
    "put_object",
    "delete_object",
    "download_object",
    "upload_file",
    "file_crc64nvme",
    "object_store_stats",
    "reset_object_store",
    "reset_object_store_stats",
    "read_row_group_columns",
    "part_file_columns",
    "check_part_columns",
    "footer_metadata",
    "file_digest",
    "latent_checksum",
    "rewrite_part_file",
    "default_num_threads",
]

__version__: str
#: Default pixel limit of a decoded image (about 128 megapixels).
DEFAULT_MAX_PIXELS: int
#: Threads used when ``num_threads`` is not given: the machine's cores.
default_num_threads: int
#: Largest image file read at the default pixel limit (``max_pixels * 8 + 16 MiB``).
DEFAULT_MAX_FILE_BYTES: int
#: ``probe_paths`` kind codes: ok.
PROBE_OK: int
#: Refused by the containment rule (absolute, ``..``, a symlink out of the root).
PROBE_UNSAFE_PATH: int
#: Unreadable (an I/O error other than a missing file).
PROBE_UNREADABLE: int
#: A FIFO, socket, device or directory.
PROBE_NOT_REGULAR: int
#: Not an image, truncated, over a limit, corrupt, or a caught decoder crash.
PROBE_BAD_IMAGE: int
#: No such file (or a path component is not a directory).
PROBE_MISSING: int

class HpdError(Exception):
    """Base class of hpd-encode's errors."""

class ImageDecodeError(HpdError):
    """An image could not be decoded."""

class ImageTooLargeError(ImageDecodeError):
    """An image is over the pixel limit."""

class WriterError(HpdError):
    """The Parquet writer failed."""

class InvalidRowError(WriterError, ValueError):
    """A submitted row cannot be written. ``field``, ``record_index`` (None when
    the row has none) and ``position`` (in the submitted list) say which; nothing
    of that ``submit()`` call was queued."""

    field: str | None
    record_index: int | None
    position: int | None

class UnsafePathError(HpdError, ValueError):
    """A metadata path that is absolute or leaves the data root."""

class FileAccessError(HpdError, OSError):
    """A file or directory that cannot be opened, read or written; the message names it."""

class InputNotFoundError(FileAccessError, FileNotFoundError):
    """A file or directory that does not exist."""

class AccessDeniedError(FileAccessError, PermissionError):
    """A file or directory this process may not open."""

class PathNotADirectoryError(FileAccessError, NotADirectoryError):
    """A path that goes through something other than a directory."""

class NotRegularFileError(FileAccessError, OSError):
    """A FIFO, socket, device or directory where a regular file was expected."""

class OutOfMemoryError(HpdError, MemoryError):
    """A batch or image that this machine's memory cannot hold (refused, not an abort)."""

class OptionError(HpdError, ValueError):
    """An option or argument whose value cannot be used; the message names it and what is allowed."""

class UsageError(HpdError, TypeError):
    """A call with an unknown or missing argument, or an argument of the wrong type."""

class PartFileError(HpdError, ValueError):
    """A part file, or a value in it, cannot be read (damaged footer or page, malformed ``.npy``
    bytes); the message names the file, row group and row."""

class RowOutOfRangeError(HpdError, IndexError):
    """A row group or row that the part file or dataset does not have."""

class ObjectStoreError(HpdError, OSError):
    """A request to the object store (s3://) failed, after its retries. ``url`` is the object or
    prefix, ``status`` the HTTP status (None when the server never answered)."""

    url: str | None
    status: int | None

class ObjectNotFoundError(ObjectStoreError, FileNotFoundError):
    """The object store has no such object, or no such bucket (HTTP 404)."""

    url: str | None
    status: int | None

class ObjectStoreAuthError(ObjectStoreError, PermissionError):
    """The object store refused the credentials (HTTP 401 or 403)."""

    url: str | None
    status: int | None

class ObjectStoreConfigError(HpdError, ValueError):
    """An s3:// URL, endpoint, credential or object store setting that cannot be used."""

class PartFileChangedError(PartFileError, ValueError):
    """A part file was replaced or rewritten while it was being read (its identity, device, inode,
    size and mtime, is not the one seen before)."""

def probe_paths(
    root: _Path | None,
    rel_paths: Sequence[_Path],
    *,
    num_threads: int | None = None,
    max_pixels: int = ...,
    max_file_bytes: int | None = None,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.uint8], list[str | None]]:
    """Header-only sizes of many files beneath ``root``, as columns:
    ``(heights, widths, kinds, errors)``. Sizes as ``probe_images`` gives
    them (EXIF orientation applied), 0 where the item failed; ``kinds[i]`` a
    ``PROBE_*`` code; ``errors[i]`` the reason, ``None`` when ok. An image
    over ``max_pixels`` is ``PROBE_BAD_IMAGE``. Each path is opened as
    ``root`` does for ``load_batch``; ``root=None`` opens the paths as given."""

def probe_images(
    paths: Sequence[_Path],
    *,
    root: _Path | None = None,
    num_threads: int | None = None,
    max_file_bytes: int | None = None,
) -> tuple[list[_Size | None], list[str | None]]:
    """Header-only ``(height, width)`` of each file as displayed (EXIF
    orientation applied); ``None`` and a reason where it cannot be read.
    ``root``: as for ``load_batch``."""

def probe_image(path: _Path, *, root: _Path | None = None, max_file_bytes: int | None = None) -> _Size:
    """Header-only ``(height, width)`` of one file; raises on failure."""

def load_images(
    paths: Sequence[_Path],
    sizes: Sequence[_Size] | None = None,
    *,
    root: _Path | None = None,
    num_threads: int | None = None,
    alpha: _Alpha = "drop",
    max_pixels: int = ...,
    max_file_bytes: int | None = None,
) -> tuple[list[npt.NDArray[np.uint8] | None], list[str | None]]:
    """Decode each file to RGB ``(h, w, 3)`` uint8, EXIF orientation applied,
    resized (Lanczos-3, stretching) to ``sizes[i] = (h, w)`` when given.
    A failed item is ``None`` with its reason in the second list.
    ``root``, ``max_file_bytes``: as for ``load_batch``."""

@overload
def load_batch(
    paths: Sequence[_Path],
    size: _Size,
    *,
    root: _Path | None = None,
    num_threads: int | None = None,
    alpha: _Alpha = "drop",
    max_pixels: int = ...,
    max_file_bytes: int | None = None,
    normalize: Literal[False] = False,
    out: npt.NDArray[np.uint8] | None = None,
) -> tuple[npt.NDArray[np.uint8], list[str | None]]: ...
@overload
def load_batch(
    paths: Sequence[_Path],
    size: _Size,
    *,
    root: _Path | None = None,
    num_threads: int | None = None,
    alpha: _Alpha = "drop",
    max_pixels: int = ...,
    max_file_bytes: int | None = None,
    normalize: Literal[True],
    out: npt.NDArray[np.float32] | None = None,
) -> tuple[npt.NDArray[np.float32], list[str | None]]: ...
@overload
def load_batch(
    paths: Sequence[_Path],
    size: _Size,
    *,
    root: _Path | None = None,
    num_threads: int | None = None,
    alpha: _Alpha = "drop",
    max_pixels: int = ...,
    max_file_bytes: int | None = None,
    normalize: bool = False,
    out: npt.NDArray[np.uint8] | npt.NDArray[np.float32] | None = None,
) -> tuple[npt.NDArray[np.uint8] | npt.NDArray[np.float32], list[str | None]]:
    """Decode and resize every file into one C-contiguous batch.

    By default a ``(n, h, w, 3)`` uint8 array; failed slots are zero-filled
    and named in the error list. With ``normalize=True`` a ``(n, 3, h, w)``
    float32 array in [-1, 1] (the tensor a VAE encoder takes), each value
    bit-identical to ``np.float32(v) / np.float32(127.5) - np.float32(1)`` on
    the uint8 pixel ``v`` (torch's ``x.float() / 127.5 - 1`` on the CPU); the
    conversion runs in the same parallel per-image work, with no uint8 batch
    in between. Failed slots are then 0.0 (mid-grey, not black): drop them
    using the error list.

    A new batch's memory is recycled: once a batch array and every view of
    it are gone, its buffer is kept (at most two per dtype, 1 GiB in all) and
    the next batch that fits reuses it, so a loop does not pay for the kernel
    zeroing fresh pages on every call (as much as a third of the work for
    large float batches). ``free_batch_buffers()`` releases what is kept.

    ``out``: write into this array instead of a new one and return it (a
    writeable C-contiguous array of exactly that dtype and shape, e.g. a view
    of pinned memory for a GPU copy; ``TypeError`` / ``ValueError``
    otherwise). Every element is overwritten.

    ``root``: the data root; each path is then relative to it and opened
    beneath it (the kernel's ``openat2(RESOLVE_BENEATH)`` on Linux, a
    component-wise ``O_NOFOLLOW`` walk elsewhere): an absolute path, a ``..``
    component or a symlink leading out of the root is that item's error
    (``UnsafePathError`` words), checked when the file is opened, so a
    symlink swapped in after planning is still refused. Every file, with or
    without a root, is opened non-blocking and must be a regular file (a
    FIFO, socket, device or directory is that item's error, before any
    read), of at most ``max_file_bytes`` bytes (``None``: ``max_pixels * 8 +
    16 MiB``), read no further than its size when opened.

    A batch larger than the machine's memory (RAM and swap), or whose
    allocation fails, raises ``OutOfMemoryError`` (a ``MemoryError``) before
    any file is read."""

def free_batch_buffers() -> int:
    """Release the batch buffers ``load_batch`` keeps for reuse; returns the
    number of bytes released."""

def load_image(
    path: _Path,
    size: _Size | None = None,
    *,
    root: _Path | None = None,
    alpha: _Alpha = "drop",
    max_pixels: int = ...,
    max_file_bytes: int | None = None,
) -> npt.NDArray[np.uint8]:
    """Decode one file; raises ``ImageDecodeError`` / ``ImageTooLargeError`` / ``OSError`` /
    ``UnsafePathError`` / ``NotRegularFileError`` / ``OutOfMemoryError``."""

def _rebuild_bucket_set(
    buckets: Sequence[_Size], aspect_tolerance: float, pair_aspect_tolerance: float, min_pixels: int
) -> BucketSet: ...

@final
class BucketSet:
    """Aspect-ratio buckets ``(height, width)`` and the reference's pair rule."""

    #: Names of the reason codes ``assign_pairs`` returns (0 = kept).
    DROP_REASONS: ClassVar[list[str]]
    __hash__: ClassVar[None]  # type: ignore[assignment]

    def __new__(
        cls,
        buckets: Sequence[_Size],
        *,
        aspect_tolerance: float = ...,
        pair_aspect_tolerance: float = ...,
        min_pixels: int = ...,
    ) -> Self: ...
    @staticmethod
    def hpdv3(
        *, aspect_tolerance: float = ..., pair_aspect_tolerance: float = ..., min_pixels: int = ...
    ) -> BucketSet:
        """The 13 buckets of the reference, same ids."""

    @staticmethod
    def generate(
        max_pixels: int = ...,
        step: int = 64,
        min_side: int = 256,
        max_side: int = 2048,
        *,
        aspect_tolerance: float = ...,
        pair_aspect_tolerance: float = ...,
        min_pixels: int = ...,
    ) -> BucketSet:
        """A generated (kohya-style) set within a pixel budget."""

    @property
    def buckets(self) -> list[_Size]:
        """The buckets as ``(height, width)``, in id order."""

    @property
    def aspect_tolerance(self) -> float: ...
    @property
    def pair_aspect_tolerance(self) -> float: ...
    @property
    def min_pixels(self) -> int: ...
    def __len__(self) -> int: ...
    def __eq__(self, value: object, /) -> bool: ...
    def __reduce__(self) -> tuple[Any, tuple[list[_Size], float, float, int]]: ...
    def index(self, height: int, width: int) -> int | None:
        """Id of the bucket that is exactly ``height x width``, or None."""

    def assign(self, height: int, width: int) -> int | None:
        """Bucket id of one image, or None."""

    def assign_many(self, heights: _Ints, widths: _Ints) -> npt.NDArray[np.int32]:
        """Bucket ids of many images (int32, -1 = no bucket)."""

    def assign_pair(self, h1: int, w1: int, h2: int, w2: int) -> int | None:
        """Target bucket id of a pair, or None when the pair rules drop it."""

    def assign_pairs(
        self, h1: _Ints, w1: _Ints, h2: _Ints, w2: _Ints
    ) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int8]]:
        """Target ids (int32, -1 = dropped) and reason codes (int8, indexes into ``DROP_REASONS``)."""

@final
class ParquetWriter:
    """A part file written by a background thread; a context manager. Safe to
    share between threads (every thread's rows land in the file).

    Every column is zstd-compressed (``zstd_level``) except the latents:
    ``latent_compression="none"`` (default) stores them uncompressed (zstd
    saves ~8 % on float latents and halves read speed per core), ``"zstd"``
    compresses them too. Each latent's checksum (XXH3) goes into its checksum column
    (``CHECKSUM_COLUMNS``); ``metadata`` (key, value) pairs go into the
    footer's key-value metadata (the provenance, under ``hpd_encode``)."""

    def __new__(
        cls,
        path: _Path,
        *,
        row_group_size: int = 100,
        queue_size: int = 64,
        zstd_level: int = 1,
        latent_compression: str = "none",
        metadata: Sequence[tuple[str, str]] | None = None,
    ) -> Self: ...
    @property
    def path(self) -> Path:
        """Final path of the file (it exists only after ``close()``)."""

    @property
    def closed(self) -> bool: ...
    @property
    def queued_rows(self) -> int:
        """Rows submitted but not yet written by the background thread."""

    def submit(self, rows: Sequence[PartRow]) -> None:
        """Queue rows (a list of dicts with the fields of ``row_fields()``;
        ``latent1``/``latent2`` are float32/float16 numpy arrays). Blocks,
        without the GIL, while the queue is full. Raises ``InvalidRowError``
        for a bad row (nothing of the call queued) and ``WriterError`` when the
        writer thread failed or the writer is closed."""

    def close(self) -> dict[str, Any]:
        """Flush, write the footer, fsync and rename; returns statistics
        (``path``, ``rows``, ``row_groups``, ``bytes``, ``blocked_seconds``,
        ``xxh3_128``: the file's digest, ``FILE_DIGEST``, computed as it was written; later
        calls return the same)."""

    def abort(self) -> None:
        """Discard everything: no file appears (nothing happens after ``close()``)."""

    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        _exc_value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> bool: ...

def temp_name(path: _Path) -> Path:
    """The temporary path a file is written under before it is complete
    (``.NAME.tmp-PID`` beside it, this process; see ``TEMP_FILE_PATTERN``)."""

def part_columns() -> list[tuple[str, str]]:
    """The part file's columns in file order, ``(name, pyarrow type name)``."""

def reference_columns() -> list[str]:
    """The reference pipeline's columns (the first of ``part_columns()``)."""

def row_fields() -> list[tuple[str, bool]]:
    """The fields of a submitted row, ``(name, required)``."""

#: Regex of a temporary name (``.NAME.tmp-PID``): groups ``name`` and ``pid``.
TEMP_FILE_PATTERN: str
#: Image height and width over latent height and width.
LATENT_DOWN_FACTOR: int
#: The most rows of a row group; ``ParquetWriter`` refuses a larger ``row_group_size``.
MAX_ROW_GROUP_SIZE: int
#: The codecs ``ParquetWriter(latent_compression=...)`` accepts for the latent columns; the first is the default.
LATENT_COMPRESSIONS: tuple[str, ...]
#: The latent columns, in the order a pair holds them.
LATENT_COLUMNS: tuple[str, ...]
#: The checksum column of each latent column (uint64, XXH3), in the same order.
CHECKSUM_COLUMNS: tuple[str, ...]
#: The whole-file digest's name and manifest key (``"xxh3_128"``).
FILE_DIGEST: str

def parquet_layout(path: _Path) -> tuple[list[int], list[str], int, str | None]:
    """``(rows per row group, top-level column names, rows, provenance)`` of a
    Parquet file, from its footer alone (``provenance``: the JSON text under the
    footer key ``hpd_encode``, None when absent). Raises ``OSError`` when the file
    cannot be opened and ``ValueError`` naming the file when it is not Parquet or
    its footer is damaged."""

def rank_in_group(groups: npt.NDArray[np.int64], order: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Each row's rank (0-based) among the rows of its group (``groups[i]``, any
    int64 code), rows counted in the order ``order`` (a permutation of the row
    numbers) visits them. One pass, no sort; ``ValueError`` if ``order`` is not
    a permutation."""

def connected_components(n: int, a: npt.NDArray[np.int64], b: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Each node's component label (the smallest node id in its component) in
    the graph on nodes ``0..n`` with edges ``(a[i], b[i])``. Union-find, GIL
    released; ``ValueError`` for an edge end outside ``0..n``."""

#: Longest reason (in characters) a bad metadata record's failure keeps.
MAX_DETAIL: int

@final
class RecordField:
    """One field of the record as ``rust/metadata/record.rs`` declares it."""

    @property
    def name(self) -> str:
        """Its name in the metadata table and the plan's rows."""
    @property
    def part_name(self) -> str:
        """Its name in the part file (a column, and a field of the writer's rows)."""
    @property
    def kind(self) -> Literal["text", "path", "count", "real", "index", "size", "bucket", "latent"]: ...
    @property
    def dtype(self) -> str:
        """Its Arrow type, as pyarrow spells it (``int64``, ``string``...)."""
    @property
    def source(self) -> Literal["position", "key", "pair_item", "survey", "plan", "encoder"]: ...
    @property
    def key(self) -> str | None:
        """The metadata key it is read from (None for the others)."""
    @property
    def missing(self) -> Literal["required", "default", "null"]:
        """What an absent or null value becomes."""
    @property
    def together_with(self) -> str | None:
        """The other half of a pair given together or not at all (an image's height and width)."""

def record_fields() -> list[RecordField]:
    """The record's fields, in declaration order: the one definition every
    other list of them derives from (``hpd_encode.record``)."""

def metadata_file_kind(
    path: str, *, window: int = ...
) -> tuple[Literal["list", "lines", "object", "empty"], int, int]:
    """What a metadata file holds: ``(kind, start, first)``: a JSON list,
    JSON Lines, one object over several lines, or only whitespace (or
    nothing); where its metadata starts (after a UTF-8 byte-order mark) and
    its first byte that is not whitespace."""

@final
class StringColumn:
    """A column of strings as Arrow buffers: ``views`` (the string-view
    layout, 16 bytes a value) when the data is under 4 GiB, else ``offsets``
    (int64); and ``data`` (UTF-8 bytes)."""

    @property
    def views(self) -> npt.NDArray[np.uint8] | None: ...
    @property
    def offsets(self) -> npt.NDArray[np.int64] | None: ...
    @property
    def data(self) -> npt.NDArray[np.uint8]: ...
    def __len__(self) -> int: ...

@final
class MetadataFailures:
    """The bad records of a read, as columns."""

    @property
    def record_index(self) -> npt.NDArray[np.int64]: ...
    @property
    def detail(self) -> list[str]:
        """Why each is bad (at most ``MAX_DETAIL`` characters)."""
    @property
    def image1_path(self) -> list[str]:
        """Its chosen image's path where usable (a non-empty string), else ``""``."""
    @property
    def image2_path(self) -> list[str]: ...

@final
class MetadataColumns:
    """What a read of the metadata found (``rust/metadata/judge.rs`` judged
    every entry): the good records as columns, the bad ones as failures."""

    @property
    def record_index(self) -> npt.NDArray[np.int64]:
        """The good records' numbers, in file order."""
    @property
    def entry_offset(self) -> npt.NDArray[np.int64]:
        """Where each good record's entry is in the file (with ``entry_len``)."""
    @property
    def entry_len(self) -> npt.NDArray[np.int64]: ...
    @property
    def n_entries(self) -> int:
        """Entries considered (good or bad; blank lines do not count)."""
    @property
    def n_lines(self) -> int:
        """JSON Lines: the lines read, blank ones too."""
    @property
    def list_end(self) -> int:
        """A list: the offset of its closing bracket, -1 when not reached."""
    @property
    def limit_reached(self) -> bool:
        """A list: ``limit`` elements were found before its end."""
    @property
    def list_error(self) -> tuple[int, str] | None:
        """A list's first element that is not JSON (it breaks the list): its number and why."""
    def take_failures(self) -> MetadataFailures:
        """The bad records, handed over: the object no longer holds them."""
    def take_column(self, name: str) -> npt.NDArray[np.int64] | npt.NDArray[np.float64] | StringColumn:
        """The column of the record field ``name`` (one read from the entries),
        handed over: the object no longer holds it."""
    def shift(self, entries: int, lines: int) -> None:
        """Number the records ``entries`` more and the lines ``lines`` more
        (a byte range's read, once the ranges before are counted)."""

#: Bytes of a metadata file the reader holds at a time (``metadata._WINDOW``).
METADATA_WINDOW: int

@final
class MetadataShare:
    """Which entries of a metadata file a read takes (one rank's share).
    ``part=(k, n)``: only the entries numbered ``k`` modulo ``n`` (the others
    are counted). ``until``: one byte range instead, from the read's
    ``start`` to ``until``: the lines that start in it, or the list elements
    whose separator is in it, the list scanned from ``start`` at ``depth``,
    inside a string or not (entries and lines are numbered from the range's
    start, see :meth:`MetadataColumns.shift`; a list's ``list_end`` only when
    its bracket is in the range). Neither: every entry."""

    def __new__(
        cls,
        *,
        part: tuple[int, int] | None = None,
        until: int | None = None,
        depth: int = 0,
        in_string: bool = False,
    ) -> MetadataShare: ...

def read_metadata_columns(
    path: str,
    mode: str,
    start: int,
    *,
    limit: int | None = None,
    window: int = ...,
    num_threads: int | None = None,
    share: MetadataShare | None = None,
    text: bool = True,
) -> MetadataColumns:
    """The entries of a JSON list (``mode="list"``, its ``[`` at byte
    ``start``) or JSON Lines (``mode="lines"``, from byte ``start``) judged:
    the good records as columns (one per field of :func:`record_fields` read
    from the entries), the bad ones as failures with their reasons; only the
    entries of ``share`` when given. Without ``text`` the text fields
    are checked but returned as empty strings (the paths are kept). Reads
    ``window`` bytes at a time (``METADATA_WINDOW``), the entries of a window
    judged in parallel, GIL released."""

def read_metadata_entries(
    path: str,
    indices: npt.NDArray[np.int64],
    offsets: npt.NDArray[np.int64],
    lengths: npt.NDArray[np.int64],
    *,
    num_threads: int | None = None,
) -> MetadataColumns:
    """The entries at those byte ranges (records an earlier read found, with
    their numbers ``indices``) judged again; one that is no longer a good
    record is a failure."""

def metadata_range_summary(path: str, start: int, end: int, *, window: int = ...) -> tuple[bool, int, int]:
    """What bytes ``[start, end)`` of a JSON list do to its structure, for a
    range that does not start right after a backslash: ``(odd_quotes,
    depth_change_outside, depth_change_inside)``, the parity of its string
    delimiters and the change of depth outside strings when the range starts
    outside, or inside, a string."""

@final
class SurveyedMetadata:
    """What :func:`survey_metadata` found."""

    @property
    def columns(self) -> MetadataColumns: ...
    @property
    def ids(self) -> PathIds:
        """The distinct image paths of the good records not skipped."""
    @property
    def id1(self) -> npt.NDArray[np.int64]:
        """Each good record's chosen image id (-1 for a skipped record)."""
    @property
    def id2(self) -> npt.NDArray[np.int64]: ...
    @property
    def probe_heights(self) -> npt.NDArray[np.int64]: ...
    @property
    def probe_widths(self) -> npt.NDArray[np.int64]: ...
    @property
    def probe_kinds(self) -> npt.NDArray[np.uint8]: ...
    @property
    def probe_errors(self) -> list[str | None]: ...

def survey_metadata(
    path: str,
    mode: str,
    start: int,
    root: str,
    *,
    limit: int | None = None,
    window: int = ...,
    num_threads: int | None = None,
    max_pixels: int = ...,
    skip: npt.NDArray[np.int64] | None = None,
    counter: Counter | None = None,
    text: bool = True,
    share: MetadataShare | None = None,
    probe: bool = True,
) -> SurveyedMetadata:
    """:func:`read_metadata_columns` (the same ``share``), and meanwhile the distinct image paths of the good
    records numbered (in order of first appearance, a record's ``path1``
    then its ``path2``, each with its 64-bit hash) and, with ``probe``,
    probed beneath ``root`` as :func:`probe_paths` does, each window's new
    paths while the next windows are read (the probes are empty without
    ``probe``); the records in ``skip`` (sorted record numbers) get ids -1.
    ``counter`` counts the images probed."""

@final
class Counter:
    """A count the Rust side adds to while Python reads it (``value``)."""

    def __new__(cls) -> Counter: ...
    @property
    def value(self) -> int: ...

@final
class PathIds:
    """Distinct paths numbered in order of first appearance."""

    def __len__(self) -> int: ...
    def take_hashes(self) -> npt.NDArray[np.uint64]:
        """Every path's 64-bit hash (XXH3), by id; empty after."""
    def take_paths(self) -> StringColumn:
        """Every path by id; this object is empty after."""

def number_jobs(
    id1: npt.NDArray[np.int64], id2: npt.NDArray[np.int64], bucket: npt.NDArray[np.int64], share: bool
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Each row's chosen and rejected job, numbered by first use (row by row):
    with ``share`` a job is an image id at the row's bucket, else each row has
    two of its own. The numbering :func:`partition_rows` uses."""

def image_owners(
    seen: list[npt.NDArray[np.uint64]], rank: int
) -> tuple[int, npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int32]]:
    """Under torchrun, from every rank's distinct image hashes (sorted, by
    rank), this rank's view: ``(n_images, ids, probe, seer_start, seers)``:
    the number of distinct images, the id of each of this rank's hashes (its
    position among all of them, sorted), the positions (in this rank's
    hashes) of the images it probes (each image is probed by one of the
    ranks that saw it, picked by its hash), and for each of those the ranks
    that saw it, ``seers[seer_start[k]:seer_start[k + 1]]``, in rank order.
    Raises ``ValueError`` when a list is not sorted and distinct."""

def first_use_numbering(keys: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Each key's number in order of first appearance (0, 1, 2... as a loop
    over ``keys`` hands them out). A hash map in Rust, GIL released."""

def partition_rows(
    id1: npt.NDArray[np.int64],
    id2: npt.NDArray[np.int64],
    bucket: npt.NDArray[np.int64],
    pixels: npt.NDArray[np.int64],
    record: npt.NDArray[np.int64],
    world: int,
    share: bool,
) -> tuple[npt.NDArray[np.int64], int, list[int]]:
    """Each planned row's rank: components of rows sharing a job (an image id
    at the row's bucket with ``share``; else two jobs per row), largest pixel
    cost first (ties: smaller first record) onto the least-loaded rank (ties:
    lower rank). Returns the ranks, the number of distinct jobs and each
    rank's pixels (each job once)."""

_Checksum: TypeAlias = bool | tuple[int, int] | None
_LatentInfo: TypeAlias = tuple[str, tuple[int, ...], int, _Checksum] | str
_Identity: TypeAlias = tuple[int, int, int, int]

def read_pairs(
    requests: Sequence[tuple[_Path, int, int]],
    *,
    num_threads: int | None = None,
    verify_checksums: bool = True,
    expect: Sequence[_Identity | None] | None = None,
) -> list[tuple[npt.NDArray[Any], npt.NDArray[Any]]]:
    """The two latents (``latent1``, ``latent2``) of each ``(part_file, row_group,
    row)``, in request order, as NumPy arrays (float32 or float16, as stored).

    Reads only the two latent columns, and in files written with one page per
    latent value and an offset index only the pages of the rows asked for;
    other files are decoded a row group at a time (requests of one row group
    share the read). Requests run in parallel on the shared thread pool with
    the GIL released; files and footers stay open per process. Raises
    ``hpd_encode.errors.PartFileError`` naming the file, row group and row for
    a damaged file or malformed ``.npy`` value, ``IndexError`` for a row group
    or row the file does not have, ``OSError`` when a file cannot be opened.

    Each latent's bytes are checked against their stored checksum (files without
    checksum columns are read unchecked) unless ``verify_checksums`` is false; a
    mismatch is a ``PartFileError``. ``expect`` gives, per request, the file's
    identity ``(st_dev, st_ino, st_size, st_mtime_ns)`` as the caller saw it (or
    None): a file replaced since raises ``PartFileChangedError``."""

def latent_layout(path: _Path) -> tuple[list[int], bool]:
    """``(rows per row group, paged)``: ``paged`` is true when every latent value
    of the file is its own data page with an offset index (random access reads
    only a row's pages)."""

def check_part_file(
    path: _Path, *, num_threads: int | None = None
) -> list[tuple[int, int, _LatentInfo, _LatentInfo]]:
    """Read every latent of a part file (row groups in parallel, large sequential
    reads) and return, per row in file order, ``(row_group, row, latent1,
    latent2)``; each latent is ``(dtype, shape, nonfinite_count, checksum)`` or
    the reason it cannot be read; ``checksum`` is None when the file stores none,
    True when the bytes match it, ``(stored, computed)`` when they do not.
    Raises like :func:`read_pairs` when the file itself cannot be read."""

def clear_reader_cache() -> None:
    """Close the part files :func:`read_pairs` keeps open (reopened when next read)."""

# Object storage (rust/parts/store.rs). Every ``path`` of the reader functions above may also be an
# ``s3://bucket/key`` URL: the same footer and page logic, pages fetched by ranged GETs.

def object_store_settings() -> dict[str, Any]:
    """The object store client settings of this process: ``max_concurrency``, ``max_retries``,
    ``retry_timeout``, ``timeout``, ``connect_timeout`` (seconds) and ``part_size`` (bytes)."""

def configure_object_store(
    *,
    max_concurrency: int | None = None,
    max_retries: int | None = None,
    retry_timeout: float | None = None,
    timeout: float | None = None,
    connect_timeout: float | None = None,
    part_size: int | None = None,
) -> dict[str, Any]:
    """Change the settings for this process (the clients are rebuilt); returns the new ones."""

def s3_storage_options() -> dict[str, str]:
    """The resolved endpoint, region and credentials as ``object_store`` keys (Polars' ``storage_options``)."""

def list_objects(url: str) -> list[tuple[str, int]]:
    """``(url, size)`` of the objects directly under the prefix ``url``, sorted."""

def head_object(url: str) -> dict[str, Any] | None:
    """``url``, ``size``, ``etag`` and user ``metadata`` of an object, or None when there is none."""

def get_object(url: str) -> bytes:
    """The whole object (small ones: manifests)."""

def put_object(url: str, data: bytes) -> str | None:
    """Store ``data`` in one PUT; returns the ETag."""

def delete_object(url: str) -> None:
    """Delete an object (no error when there is none)."""

def download_object(url: str, path: _Path) -> int:
    """Copy an object into a local file (fsynced); returns its size."""

def upload_file(path: _Path, url: str, *, progress: Callable[[int], object] | None = None) -> dict[str, Any]:
    """Upload a local file: one PUT up to ``part_size``, a multipart upload above. Returns ``size``,
    ``etag``, ``crc64nvme`` (also stored as the object's ``hpd-crc64nvme`` metadata) and ``parts``."""

def file_crc64nvme(path: _Path) -> str:
    """The CRC-64/NVME of a local file (16 hex digits), as :func:`upload_file` records it."""

def object_store_stats() -> dict[str, int]:
    """``gets``, ``get_bytes``, ``puts``, ``put_bytes`` of this process so far."""

def reset_object_store() -> None:
    """Drop the clients; the next request builds them again from the environment."""

def reset_object_store_stats() -> None:
    """Zero the counters of :func:`object_store_stats`."""

def read_row_group_columns(path: _Path, row_group: int, columns: Sequence[str]) -> dict[str, list[Any]]:
    """The values of ``columns`` in one row group of a part file (local or s3://), through the
    reader's cached footer; from an object the column chunks are fetched at once, touching ones in
    one GET."""

def part_file_columns(path: _Path) -> list[str]:
    """The top-level column names of a part file (local or s3://), from the reader's cached footer."""

def check_part_columns(path: _Path) -> list[tuple[int, str, str]]:
    """Decode every page of every column of a part file but the latents:
    ``(row_group, column, reason)`` for each that fails (empty when all decode)."""

def footer_metadata(path: _Path) -> dict[str, str | None]:
    """The footer's key-value metadata of a part file."""

def file_digest(path: _Path) -> str:
    """A file's digest (XXH3-128, 32 hex digits: what the manifest records
    under ``FILE_DIGEST``), read without the GIL."""

def latent_checksum(data: bytes) -> int:
    """The checksum (XXH3, 64 bits, seed 0) the writer stores for a latent's bytes (its whole ``.npy`` value)."""

def rewrite_part_file(
    src: _Path,
    dest: _Path,
    *,
    latent_compression: str = "none",
    zstd_level: int = 1,
    metadata: Sequence[tuple[str, str]] | None = None,
) -> dict[str, Any]:
    """Rewrite a part file into the page layout the writer uses (``repack``'s
    core): every column and row group kept, checksum columns added when
    missing (checked when present), ``metadata`` as the footer's key-value
    metadata; atomic (temporary name, fsync, rename). Returns ``rows``,
    ``row_groups``, ``bytes``, ``xxh3_128`` (``FILE_DIGEST``) and ``checksums_added``. Raises
    ``PartFileError`` for a source that is damaged or not a part file."""
