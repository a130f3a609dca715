"""What a path the user names may be, decided in one place.

Inputs: :func:`require_file` and :func:`require_directory` say what a path is
when it is not what was asked for ("is a FIFO, not a regular file", "is a
regular file, not a directory", "does not exist") from ``stat`` alone:
nothing is opened, so a FIFO never blocks. :func:`open_regular` opens a file
that must be regular (a part file, the metadata) without blocking
(``O_NONBLOCK``) and refuses anything else by ``fstat`` before a byte is read,
as ``rust/image/safe_open.rs`` does for images and part files.

Outputs: :func:`check_output` is the one rule for what a user-named output
path may replace; :func:`write_output` applies it, writes beside the path and
renames into place. Every writer of a user-named file (``index --output``,
``--stats``, ``--plot``, ``check --report``, :func:`hpd_encode.write_index`)
goes through them. Refused: anything that is not a regular file (a FIFO, a
device, a socket, a directory; a symlink to one), a file of an encode output
directory (its manifest, summary, failures, lock file or part files, see
:mod:`hpd_encode.output_dir`), and an existing Parquet file.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
import tempfile
from collections.abc import Callable, Iterable
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from hpd_encode.errors import (
    AccessDeniedError,
    FileAccessError,
    InputNotFoundError,
    NotRegularFileError,
    OutputPathError,
    PathNotADirectoryError,
)

if TYPE_CHECKING:
    import pyarrow.parquet as pq

_KINDS = (
    (stat.S_ISREG, "regular file"),
    (stat.S_ISDIR, "directory"),
    (stat.S_ISFIFO, "FIFO"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
    (stat.S_ISSOCK, "socket"),
    (stat.S_ISLNK, "symlink"),
)


def kind_of(mode: int) -> str:
    """What a file of ``st_mode`` ``mode`` is called in messages ("FIFO", "character device"...)."""
    return next((name for test, name in _KINDS if test(mode)), "file of unknown type")


def path_kind(path: str | PathLike[str]) -> str | None:
    """What ``path`` is (symlinks followed; "broken symlink" when its target is missing), or None
    when nothing is there. Only ``stat``: nothing is opened."""
    try:
        return kind_of(os.stat(path).st_mode)
    except FileNotFoundError:
        return "broken symlink" if os.path.islink(path) else None
    except OSError as e:
        raise FileAccessError(f"cannot look at '{os.fspath(path)}': {e.strerror or e}") from e


def require_file(path: str | PathLike[str], what: str) -> None:
    """Raise unless ``path`` is a regular file: :class:`InputNotFoundError` when nothing is there,
    :class:`NotRegularFileError` naming what it is otherwise (``what``: "metadata file"...)."""
    kind = path_kind(path)
    if kind is None:
        raise InputNotFoundError(f"{what} '{os.fspath(path)}' does not exist")
    if kind != "regular file":
        raise NotRegularFileError(f"{what} '{os.fspath(path)}' is a {kind}, not a regular file")


def require_directory(path: str | PathLike[str], what: str) -> None:
    """Raise unless ``path`` is a directory: :class:`InputNotFoundError` when nothing is there,
    :class:`PathNotADirectoryError` naming what it is otherwise."""
    kind = path_kind(path)
    if kind is None:
        raise InputNotFoundError(f"{what} '{os.fspath(path)}' does not exist")
    if kind != "directory":
        raise PathNotADirectoryError(f"{what} '{os.fspath(path)}' is a {kind}, not a directory")


def open_regular(path: str | PathLike[str], what: str = "file") -> io.BufferedReader:
    """Open ``path`` to read, never blocking: ``O_NONBLOCK`` (a FIFO with no writer opens at once),
    then ``fstat``; anything but a regular file is :class:`NotRegularFileError` before a byte is
    read. The file object can be handed to pyarrow (``pq.ParquetFile(f)``)."""
    shown = os.fspath(path)
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise InputNotFoundError(f"{what} '{shown}' does not exist") from None
    except PermissionError as e:
        raise AccessDeniedError(f"cannot open {what} '{shown}': {e.strerror}") from None
    except OSError as e:  # ENXIO: a socket, or a device without a driver
        kind = path_kind(path)
        if kind not in (None, "regular file"):
            raise NotRegularFileError(f"{what} '{shown}' is a {kind}, not a regular file") from None
        raise FileAccessError(f"cannot open {what} '{shown}': {e.strerror or e}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFileError(f"{what} '{shown}' is a {kind_of(mode)}, not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def open_parquet(path: str | PathLike[str], what: str = "part file") -> pq.ParquetFile:
    """A pyarrow ``ParquetFile`` read through :func:`open_regular`: a FIFO or a device named like a
    part file is refused, never waited on. ``close(force=True)`` closes the file (pyarrow leaves a
    file object it was handed open on a plain ``close()``)."""
    import pyarrow.parquet as pq

    fh = open_regular(path, what)
    try:
        return pq.ParquetFile(fh)
    except BaseException:
        fh.close()
        raise


def check_output(path: str | PathLike[str], option: str, inputs: Iterable[str | PathLike[str]] = ()) -> None:
    """Raise :class:`OutputPathError` unless writing ``path`` (the value of ``option``, named in the
    message) may replace what is there: nothing, or a regular file that is not one of ``inputs``
    (compared by real path), not a file of an encode output directory and not a Parquet file.
    Called before anything is written."""
    from hpd_encode.output_dir import encode_file_role

    shown = os.fspath(path)
    kind = path_kind(path)
    if kind is not None and kind != "regular file":
        link = " (through a symlink)" if os.path.islink(path) else ""
        raise OutputPathError(
            f"{option} '{shown}' is a {kind}{link}, not a regular file; refusing to replace it: "
            "choose a file path"
        )
    real = Path(os.path.realpath(path))
    if str(real) in {os.path.realpath(p) for p in inputs}:
        raise OutputPathError(f"{option} '{shown}' is one of the files being read; choose another path")
    role = encode_file_role(real.parent, real.name)
    if role is not None:
        raise OutputPathError(
            f"{option} '{shown}' is {role} of the encode output directory '{real.parent}'; refusing to "
            "overwrite it: choose a path outside the directory or another name"
        )
    if kind is not None and real.suffix.lower() == ".parquet":
        raise OutputPathError(f"{option} '{shown}' is an existing Parquet file; refusing to overwrite it")


def write_output(
    path: str | PathLike[str],
    option: str,
    write: Callable[[BinaryIO], object],
    inputs: Iterable[str | PathLike[str]] = (),
) -> None:
    """Write a user-named output atomically: :func:`check_output`, then ``write(file)`` into a
    temporary file beside ``path`` (its folder is created), then a rename over ``path``. The
    file appears complete or not at all, with the usual umask-based mode."""
    inputs = list(inputs)
    check_output(path, option, inputs)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        # mkstemp creates the file 0600; give it the usual mode so that others may read it.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        check_output(path, option, inputs)  # again: what is there may have changed while writing
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
