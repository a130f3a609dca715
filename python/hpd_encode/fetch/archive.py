"""Split tar archives: finding an archive's parts, reading them in order as
one byte stream without a concatenated copy, and undoing the gzip layer.

The gzip layer is ours (``zlib``), not tarfile's: tarfile's own stream reader
neither checks the gzip CRC nor notices a stream that simply stops, so a
truncated last part would otherwise look like a complete archive.
"""

from __future__ import annotations

import os
import re
import zlib
from collections.abc import Callable, Sequence
from os import PathLike
from pathlib import Path
from typing import BinaryIO

from hpd_encode.errors import ArchiveError, InputNotFoundError
from hpd_encode.fetch._common import CHUNK

__all__ = ["find_archive_parts", "natural_key"]


def natural_key(name: str) -> tuple[tuple[object, ...], str]:
    """Sort key ordering digit runs by value: ``part-2`` before ``part-10``.

    Letter suffixes (``aa``, ``ab`` … as written by ``split``) keep their
    plain order. Ties between equal values (``01`` vs ``1``) fall back to the
    plain string.
    """
    tokens = re.split(r"(\d+)", name)
    # re.split with one capture group alternates text, digits, text …: every
    # position holds the same type in every key, so tuples always compare.
    return tuple(int(t) if i % 2 else t for i, t in enumerate(tokens)), name


_PART_RE = re.compile(
    r"(?P<stem>.+?\.(?:tar\.gz|tgz|tar))(?P<suffix>(?:[._-]?(?:part)?[._-]?(?P<idx>\d+|[a-z]+))?)",
    re.IGNORECASE,
)
# Letter suffixes that are sidecar files, not parts.
_NOT_PARTS = {
    "json",
    "txt",
    "sig",
    "asc",
    "lock",
    "incomplete",
    "tmp",
    "log",
    "csv",
    "md",
    "sha",
    "sfv",
    "torrent",
}


def find_archive_parts(directory: str | PathLike[str]) -> list[list[Path]]:
    """Find the tar archives in ``directory`` (not recursive) and their parts.

    A part is named ``STEM.tar.gz``/``.tgz``/``.tar`` optionally followed by a
    part suffix: ``.part-aa``, ``.partaa``, ``_part_01``, ``.000``, ``aa``
    (``split``'s default), … Checksum and other sidecar files are ignored.
    Returns one list per archive (grouped by stem), each in natural name order.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise InputNotFoundError(f"'{directory}' is not a directory")
    groups: dict[str, list[tuple[str, Path]]] = {}
    for entry in os.scandir(directory):
        if entry.name.startswith(".") or not entry.is_file():
            continue
        m = _PART_RE.fullmatch(entry.name)
        if not m:
            continue
        groups.setdefault(m.group("stem"), []).append((m.group("suffix"), Path(entry.path)))
    result = []
    for stem in sorted(groups, key=natural_key):
        # `foo.tar.gz.md` is a sidecar, unless it is one of a run of same-length
        # parts (`split -a 2` names its 316th part `md`): only then keep it.
        def sidecar(suffix: str) -> bool:
            idx = suffix.lstrip("._-")
            return "part" not in suffix.lower() and idx.lower() in _NOT_PARTS

        regular_lengths = {len(sfx) for sfx, _ in groups[stem] if sfx and not sidecar(sfx)}
        members = [(sfx, p) for sfx, p in groups[stem] if not sidecar(sfx) or len(sfx) in regular_lengths]
        if not members:
            continue
        suffixes = [s for s, _ in members]
        if "" in suffixes and len(suffixes) > 1:
            raise ArchiveError(
                f"'{directory}' holds both '{stem}' and parts of it ({len(suffixes) - 1}); "
                "move one away or pass the files to extract explicitly"
            )
        result.append(sorted((p for _, p in members), key=lambda p: natural_key(p.name)))
    return result


def resolve_inputs(parts_or_dir: str | PathLike[str] | Sequence[str | PathLike[str]]) -> list[list[Path]]:
    """Directories are searched with :func:`find_archive_parts`; explicit files
    form one archive, in natural name order (a shell glob sorts part-10 before
    part-2)."""
    items = [parts_or_dir] if isinstance(parts_or_dir, (str, PathLike)) else list(parts_or_dir)
    if not items:
        raise ArchiveError("no archive parts given")
    paths = [Path(p) for p in items]
    if len(paths) == 1 and paths[0].is_dir():
        groups = find_archive_parts(paths[0])
        if not groups:
            raise InputNotFoundError(
                f"no archive parts (*.tar.gz, *.tar.gz.part-*, *.tar.gz.000, *.tgz, *.tar …) in '{paths[0]}'"
            )
        return groups
    for p in paths:
        if p.is_dir():
            raise ArchiveError(f"'{p}' is a directory: pass either one directory or the part files")
        if not p.is_file():
            raise InputNotFoundError(f"archive part '{p}' does not exist")
    return [sorted(paths, key=lambda p: natural_key(p.name))]


class StreamError(Exception):
    """Damaged or truncated input; the message names the part."""

    def __init__(self, message: str, part: Path) -> None:
        super().__init__(message)
        self.part = part


class PartsReader:
    """The parts read as one byte stream, without concatenating them on disk.

    A read never spans two parts, so each chunk belongs to exactly one part:
    ``part`` and ``chunk_start`` say where the last chunk came from.
    """

    def __init__(self, parts: Sequence[Path], on_read: Callable[[int], object] | None = None) -> None:
        self.parts = list(parts)
        self.part = self.parts[0]
        self.chunk_start = 0
        self._on_read = on_read
        self._index = -1
        self._file: BinaryIO | None = None
        self._pos = 0

    def read(self, n: int = CHUNK) -> bytes:
        while True:
            if self._file is None:
                if self._index + 1 >= len(self.parts):
                    return b""
                self._index += 1
                self._file = open(self.parts[self._index], "rb")
                self._pos = 0
            data = self._file.read(n)
            if data:
                self.part = self.parts[self._index]
                self.chunk_start = self._pos
                self._pos += len(data)
                if self._on_read is not None:
                    self._on_read(len(data))
                return data
            self._file.close()
            self._file = None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class RawStream:
    """An uncompressed tar stream: the parts as they are."""

    def __init__(self, src: PartsReader) -> None:
        self.src = src
        self.total_out = 0

    def read(self, n: int = -1) -> bytes:
        data = self.src.read(CHUNK if n is None or n < 0 else min(n, CHUNK))
        self.total_out += len(data)
        return data


class GunzipStream:
    """Decompresses (possibly multi-member) gzip from the parts, checking each
    member's CRC and length, and raising :class:`StreamError` naming the part
    on corrupt data, on a stream that stops before its end, and on trailing
    garbage. Output per read is bounded, so a gzip bomb cannot fill memory."""

    def __init__(self, src: PartsReader) -> None:
        self.src = src
        self.total_out = 0
        self._d = zlib.decompressobj(wbits=31)
        self._input = b""

    def read(self, n: int = -1) -> bytes:
        n = CHUNK if n is None or n < 0 else n
        if n == 0:
            return b""
        while True:
            if self._d.eof:
                rest = self._d.unused_data
                while len(rest) < 2:
                    more = self.src.read()
                    if not more:
                        break
                    rest += more
                if not rest:
                    return b""  # clean end after a complete member
                if rest[:2] != b"\x1f\x8b":
                    raise StreamError(
                        f"unexpected data after the end of the gzip stream in '{self.src.part}'",
                        self.src.part,
                    )
                self._d = zlib.decompressobj(wbits=31)
                self._input = rest
            if not self._input:
                self._input = self.src.read()
                if not self._input:
                    last = self.src.parts[-1]
                    raise StreamError(
                        f"the input ends (at the end of '{last}') before the gzip stream does: "
                        "the last part looks truncated, or a part is missing",
                        last,
                    )
            try:
                out = self._d.decompress(self._input, n)
            except zlib.error as e:
                part = self.src.part
                raise StreamError(
                    f"corrupt gzip data in '{part}' (in the chunk starting at byte {self.src.chunk_start}): {e}",
                    part,
                ) from None
            self._input = self._d.unconsumed_tail
            if out:
                self.total_out += len(out)
                return out


def sniff(parts: Sequence[Path]) -> str:
    """'gzip' or 'tar' from the first bytes of the first non-empty part."""
    for p in parts:
        with open(p, "rb") as f:
            head = f.read(6)
        if not head:
            continue
        if head[:2] == b"\x1f\x8b":
            return "gzip"
        for magic, kind in ((b"\x28\xb5\x2f\xfd", "zstd"), (b"\xfd7zXZ", "xz"), (b"BZh", "bzip2")):
            if head.startswith(magic):
                raise ArchiveError(
                    f"'{p}' is {kind}-compressed; extract reads gzip-compressed or plain tar archives"
                )
        return "tar"
    raise ArchiveError(f"the archive parts are all empty (first: '{parts[0]}')")
