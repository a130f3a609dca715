"""Which part files an index reads, and where each row sits in them.

* :func:`find_part_files` resolves a source (a directory, a glob, files, or a
  list of them) to a sorted list of paths, kept as given, so that the same glob
  string gives the same ``parquet_path`` strings as the reference's
  ``sorted(glob.glob(pattern, recursive=True))``.
* :func:`inspect_part` reads one footer's layout (rows per row group, column
  names) through ``_core.parquet_layout``: parsed in Rust, no Python object per
  row group.
* :class:`RowLocator` maps (file, row within the file) to (row group, row
  within the group), vectorised, from those layouts alone.
* :func:`check_outputs_complete` refuses directories whose encode run has not
  completed; :func:`refuse_overwriting_inputs` refuses output paths that are
  part files or other Parquet files.
"""

from __future__ import annotations

import glob as globmod
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np

from hpd_encode import store
from hpd_encode._core import parquet_layout
from hpd_encode.errors import (
    IndexInputError,
    NotRegularFileError,
    ObjectStoreError,
    OutputOverwritesInputError,
    PartFilesNotFoundError,
)
from hpd_encode.files import path_kind
from hpd_encode.output_dir import MANIFEST, read_manifest, require_complete

log = logging.getLogger(__name__)

Source = str | PathLike[str] | Sequence[str | PathLike[str]]


@dataclass(frozen=True)
class Part:
    """One part file's footer layout."""

    path: str
    row_group_rows: tuple[int, ...]
    columns: frozenset[str]
    #: The footer's provenance JSON text (None: the file has none).
    provenance: str | None = None

    @property
    def num_rows(self) -> int:
        return sum(self.row_group_rows)


def find_part_files(source: Source) -> list[str]:
    """Resolve ``source`` to a sorted list of Parquet files.

    ``source`` is a directory (its ``*.parquet`` files), a glob pattern
    (``**`` recurses), a single file, or a list of any of these. Paths are kept
    as given (relative stays relative), deduplicated by their real path, and
    sorted as strings. An ``s3://bucket/prefix`` URL names the ``*.parquet``
    objects directly under the prefix (``s3://bucket/prefix/part_*.parquet``:
    those matching the pattern; ``s3://bucket/key.parquet``: that object). Raises :class:`PartFilesNotFoundError` (a
    ``FileNotFoundError``) naming the path when nothing is found.
    """
    items: list[str | PathLike[str]]
    if isinstance(source, (str, PathLike)):
        items = [source]
    else:
        items = list(source)
        if not items:
            raise PartFilesNotFoundError("no Parquet files given: the list of sources is empty")
    found: list[str] = []
    for item in items:
        s = os.fspath(item)
        p = Path(s)
        if store.is_remote(s):
            found.extend(_find_remote(s))
            continue
        if p.is_dir():
            matches = sorted(str(x) for x in p.glob("*.parquet") if x.is_file())
            if not matches:
                raise PartFilesNotFoundError(f"no *.parquet files in directory '{s}'")
        elif p.is_file():
            matches = [s]
        elif any(c in s for c in "*?["):
            matches = sorted(m for m in globmod.glob(s, recursive=True) if os.path.isfile(m))
            if not matches:
                raise PartFilesNotFoundError(f"no files match the pattern '{s}'")
        elif (kind := path_kind(p)) is not None:  # a FIFO, a device...: said, never opened
            raise NotRegularFileError(f"'{s}' is a {kind}, not a Parquet file or a directory")
        else:
            raise PartFilesNotFoundError(f"no such Parquet file or directory: '{s}'")
        found.extend(matches)
    seen: set[str] = set()
    unique: list[str] = []
    for f in found:
        real = f if store.is_remote(f) else os.path.realpath(f)
        if real not in seen:
            seen.add(real)
            unique.append(f)
    return sorted(unique)


def _find_remote(url: str) -> list[str]:
    """The ``*.parquet`` objects an ``s3://`` source names (see :func:`find_part_files`)."""
    from hpd_encode._core import head_object

    name = store.name_of(url)
    if name.endswith(".parquet") and not any(c in name for c in "*?["):
        if head_object(url) is None:
            raise PartFilesNotFoundError(f"no such Parquet object: '{url}'")
        return [url]
    matches = store.list_files(url, "*.parquet")
    if not matches:
        raise PartFilesNotFoundError(f"no *.parquet objects under '{url}'")
    return matches


def inspect_part(path: str) -> Part:
    """Row-group sizes and column names, from the footer only (parsed in Rust:
    pyarrow hands out one Python object per row group, thousands per file)."""
    try:
        sizes, names, total, provenance = parquet_layout(path)  # ValueError naming the file when damaged
    except ObjectStoreError:
        raise  # names the URL and the HTTP status already
    except OSError as e:
        raise IndexInputError(f"cannot read the Parquet footer of '{path}': {e}") from e
    except ValueError as e:
        raise IndexInputError(str(e)) from e
    if sum(sizes) != total:
        raise IndexInputError(f"'{path}': row groups hold {sum(sizes)} rows but the footer says {total}")
    return Part(path=path, row_group_rows=tuple(sizes), columns=frozenset(names), provenance=provenance)


def check_provenance(parts: Sequence[Part]) -> None:
    """Refuse part files of different provenance in one index
    (:class:`~hpd_encode.errors.MixedProvenanceError`, one line naming two
    files and how they differ). Files without rows are not compared (a
    torchrun rank with no rows writes an empty file without loading the VAE)."""
    from hpd_encode.provenance import check_same_provenance, parse_provenance

    used = [p for p in parts if p.num_rows > 0]
    check_same_provenance([p.path for p in used], [parse_provenance(p.provenance, p.path) for p in used])


class RowLocator:
    """Maps (file number, row within file) to (row_group, row_index), vectorised.

    Built from the footers' rows-per-row-group: one global array of row-group
    start offsets, searched with ``np.searchsorted``.
    """

    def __init__(self, parts: Sequence[Part]) -> None:
        rows = np.array([p.num_rows for p in parts], dtype=np.int64)
        groups = np.array([len(p.row_group_rows) for p in parts], dtype=np.int64)
        self._file_row0 = np.concatenate([[0], np.cumsum(rows)[:-1]]).astype(np.int64)
        self._file_group0 = np.concatenate([[0], np.cumsum(groups)[:-1]]).astype(np.int64)
        sizes = np.array([n for p in parts for n in p.row_group_rows], dtype=np.int64)
        self._group_start = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)

    def locate(self, file_idx: np.ndarray, row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Row group and row within the group for each (file, row-in-file)."""
        g = self._file_row0[file_idx] + row
        # side="right" skips empty row groups (they share their start with the next one).
        grp = np.searchsorted(self._group_start, g, side="right") - 1
        return grp - self._file_group0[file_idx], g - self._group_start[grp]


def check_outputs_complete(paths: Sequence[str], allow_partial: bool) -> dict[str, str]:
    """Refuse part files in an encode output directory whose run has not completed.

    Each directory holding one of ``paths`` that has a ``manifest.json`` must
    say ``"complete"``; otherwise :class:`~hpd_encode.errors.PartialOutputError`
    (a ``ValueError``) is raised, unless ``allow_partial``. Files in a directory
    without a manifest (copies, the reference's files) are not affected.
    Returns ``{directory: manifest status}`` of the incomplete ones allowed.
    """
    incomplete: dict[str, str] = {}
    for directory in sorted(
        {store.parent_of(p) if store.is_remote(p) else os.path.dirname(p) or "." for p in paths}
    ):
        if store.is_remote(directory):
            if read_manifest(directory) is None:
                continue
        elif not os.path.isfile(os.path.join(directory, MANIFEST)):
            continue
        manifest = require_complete(directory, allow_partial, "index")
        if manifest is not None and manifest.get("status") != "complete":
            incomplete[directory] = str(manifest.get("status"))
    return incomplete


def refuse_overwriting_inputs(
    outputs: Mapping[str, str | PathLike[str] | None], inputs: Sequence[str]
) -> None:
    """Raise :class:`OutputOverwritesInputError` if an output path is one of the
    ``inputs`` (compared by real path), and
    :class:`~hpd_encode.errors.OutputPathError` if it may not be written at all
    (:func:`hpd_encode.files.check_output`: not a regular file, a file of an
    encode output directory, an existing Parquet file).

    ``outputs`` maps an option name (for the message) to its path (None: unused).
    Called before anything is written, so a refused run overwrites nothing.
    """
    from hpd_encode.files import check_output

    read = {os.path.realpath(p) for p in inputs}
    for option, path in outputs.items():
        if path is None:
            continue
        if os.path.realpath(path) in read:
            raise OutputOverwritesInputError(
                f"{option} '{os.fspath(path)}' is one of the part files being indexed; choose another path"
            )
        check_output(path, option)
