"""Getting the data: download a dataset, extract its split image archives, check it.

Three steps, each a public function and a CLI subcommand:

- :func:`download` fetches a dataset repository from the Hugging Face hub
  (``huggingface_hub.snapshot_download``, repo type ``dataset``), or copies it
  from a local directory (a mirror, a ``git clone``, a hub cache snapshot) with
  the same include-pattern rules. Both resume: files already present are kept.
- :func:`extract` streams split archives (``images.tar.gz.part-aa``,
  ``images.tar.gz.000`` …) in natural name order as one byte stream into
  :mod:`tarfile`, without a temporary concatenated copy, and writes regular
  files only. Hostile members (absolute paths, ``..``, links, devices, oversized
  files) are refused and reported; nothing is ever written outside the output
  root. Resumable: complete files are skipped, and every file is written under
  a temporary name and renamed when complete.
- :func:`check_dataset` counts the metadata records whose two images are
  present and readable (header probe in Rust) and lists the rest with reasons.

The gzip layer is ours (``zlib``), not tarfile's: tarfile's own stream reader
neither checks the gzip CRC nor notices a stream that simply stops, so a
truncated last part would otherwise look like a complete archive.
"""

from __future__ import annotations

import argparse
import csv
import errno
import fnmatch
import hashlib
import json
import logging
import os
import re
import stat
import sys
import tarfile
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

from hpd_encode.metadata import UnsafePathError, read_metadata, resolve_image_path

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MAX_MEMBER_BYTES",
    "DEFAULT_MAX_TOTAL_BYTES",
    "ArchiveError",
    "CheckFailure",
    "CheckReport",
    "DownloadReport",
    "ExtractLimitError",
    "ExtractReport",
    "RefusedMember",
    "add_subcommands",
    "check_dataset",
    "download",
    "extract",
    "find_archive_parts",
    "natural_key",
    "parse_size",
]

#: Per-file limit of :func:`extract`: an image file over 1 GiB is not an image.
DEFAULT_MAX_MEMBER_BYTES = 1 << 30
#: Total limit of :func:`extract` (bytes written by one run): 4 TiB.
DEFAULT_MAX_TOTAL_BYTES = 4 << 40

_CHUNK = 1 << 20  # compressed bytes read from a part at a time
_TAR_BUFSIZE = 1 << 16  # tarfile's read size from our stream
_TMP_SUFFIX = ".hpd-tmp"
# errnos that mean "this one path cannot be created here" rather than "the disk is in trouble".
_PATH_ERRNOS = {errno.ENAMETOOLONG, errno.EISDIR, errno.ENOTDIR, errno.EEXIST, errno.EINVAL, errno.EILSEQ}


# --------------------------------------------------------------------------- helpers


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


def parse_size(text: str) -> int | None:
    """Parse a byte count such as ``1048576``, ``512M``, ``1.5G``, ``4TiB``.

    Suffixes are binary (K = 1024). ``none`` or ``0`` means no limit (None).
    """
    s = text.strip().lower().replace("_", "")
    if s in ("none", "0", "unlimited"):
        return None
    m = re.fullmatch(r"(\d+(?:\.\d*)?)\s*([kmgtp]?)(?:i?b)?", s)
    if not m:
        raise ValueError(f"cannot read size {text!r}: use bytes or a number with K, M, G, T or P (e.g. 512M)")
    scale = 1024 ** " kmgtp".index(m.group(2) or " ")
    return int(float(m.group(1)) * scale)


def _fmt_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _show(name: str) -> str:
    """A member name safe to print (archives may hold undecodable bytes)."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _tmp_path(directory: Path, name: str) -> Path:
    """Temporary name for ``name`` in ``directory``: fixed, so a rerun replaces
    a leftover from a killed run instead of adding another one."""
    tmp = f".{name}{_TMP_SUFFIX}"
    if len(os.fsencode(tmp)) > 255:
        digest = hashlib.sha1(os.fsencode(name)).hexdigest()[:16]
        tmp = f".{digest}{_TMP_SUFFIX}"
    return directory / tmp


def _unlink_quiet(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _open_new(path: Path) -> BinaryIO:
    """Create ``path`` for writing, never following a symlink planted there."""
    _unlink_quiet(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    return os.fdopen(os.open(path, flags, 0o644), "wb")


def _is_complete(path: Path, size: int) -> bool:
    """A regular file (not a symlink) of exactly ``size`` bytes is at ``path``."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_size == size


class _OutputRoot:
    """Creates directories under a root and refuses any that would lead outside
    it, including through symlinks already present inside the root."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.real = os.path.realpath(root)
        self._checked: set[tuple[str, ...]] = {()}

    def ensure_dir(self, parts: tuple[str, ...]) -> Path:
        """Return ``root/parts…`` as a directory inside the root, creating it.

        Raises :class:`_Refused` when a component is a symlink leading outside
        the root or a non-directory is in the way.
        """
        path = Path(self.real)
        for i, comp in enumerate(parts):
            path = path / comp
            key = parts[: i + 1]
            if key in self._checked:
                continue
            rel = "/".join(key)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                try:
                    os.mkdir(path)
                except FileExistsError:  # made meanwhile: check it like any other
                    st = os.lstat(path)
                else:
                    self._checked.add(key)
                    continue
            if stat.S_ISLNK(st.st_mode):
                target = os.path.realpath(path)
                if not _within(target, self.real):
                    raise _Refused(f"'{rel}' in the output root is a symlink to '{target}', outside the root")
                if not os.path.isdir(target):
                    raise _Refused(f"'{rel}' in the output root is a symlink to a non-directory")
            elif not stat.S_ISDIR(st.st_mode):
                raise _Refused(f"'{rel}' already exists in the output root and is not a directory")
            real = os.path.realpath(path)
            if not _within(real, self.real):
                raise _Refused(f"'{rel}' resolves to '{real}', outside the output root")
            self._checked.add(key)
        return path


class _Refused(Exception):
    """One archive member (or file) is not written; the reason is the message."""


# --------------------------------------------------------------------------- download


@dataclass
class DownloadReport:
    """What :func:`download` did.

    ``files``: the matching files now under ``out`` (relative POSIX paths).
    ``copied`` / ``skipped`` / ``bytes_copied`` are filled for a local source
    only (the hub client resumes on its own and does not say what it skipped).
    """

    out: Path
    source: str
    files: list[str] = field(default_factory=list)
    copied: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    bytes_copied: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["out"] = str(self.out)
        return d


def _expand_patterns(include: str | Sequence[str] | None) -> list[str] | None:
    if include is None:
        return None
    pats = [include] if isinstance(include, str) else list(include)
    # The hub client's rules: '\' is a separator, and 'dir/' means everything below dir.
    pats = [p.replace("\\", "/") for p in pats]
    return [p + "*" if p.endswith("/") else p for p in pats]


def _included(rel: str, patterns: list[str] | None) -> bool:
    """``huggingface_hub`` allow-pattern semantics: case-sensitive fnmatch, and
    ``*`` also matches ``/`` (``data/*.json`` matches ``data/a/b.json``)."""
    return patterns is None or any(fnmatch.fnmatchcase(rel, p) for p in patterns)


def _source_files(src: Path) -> Iterable[str]:
    """Relative POSIX paths of the files under ``src``, sorted, leaving out
    ``.git`` directories, the hub client's ``.cache/huggingface`` folder and
    leftover temporary files. Symlinked files are followed (a hub cache
    snapshot is all symlinks); symlinked directories are not entered."""
    for dirpath, dirnames, filenames in os.walk(src):
        rel_dir = os.path.relpath(dirpath, src)
        rel_dir = "" if rel_dir == "." else rel_dir.replace(os.sep, "/") + "/"
        dirnames[:] = sorted(d for d in dirnames if d != ".git" and not (rel_dir == "" and d == ".cache"))
        for name in sorted(filenames):
            if not name.endswith(_TMP_SUFFIX):
                yield rel_dir + name


def _is_lfs_pointer(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(40).startswith(b"version https://git-lfs.github.com/spec/")


def _copy_local(src: Path, out: Path, patterns: list[str] | None) -> DownloadReport:
    if not src.is_dir():
        raise FileNotFoundError(f"local source '{src}' is not a directory")
    src_real = os.path.realpath(src)
    out_real = os.path.realpath(out)
    if _within(out_real, src_real) or _within(src_real, out_real):
        raise ValueError(f"the output directory '{out}' and the source '{src}' overlap; choose another --out")
    root = _OutputRoot(out)
    report = DownloadReport(out=out, source=str(src))
    for rel in _source_files(src):
        if not _included(rel, patterns):
            continue
        from_path = src / rel
        try:
            st = os.stat(from_path)
        except OSError as e:
            raise OSError(f"cannot read '{from_path}' in the source: {e.strerror}") from e
        if not stat.S_ISREG(st.st_mode):
            log.warning("skipping '%s': not a regular file", from_path)
            continue
        parts = tuple(rel.split("/"))
        try:
            directory = root.ensure_dir(parts[:-1])
        except _Refused as e:
            raise ValueError(f"cannot place '{rel}' under '{out}': {e}") from None
        if st.st_size < 1024 and _is_lfs_pointer(from_path):
            raise ValueError(
                f"'{from_path}' is a Git LFS pointer, not the file itself: run `git lfs pull` in '{src}' first"
            )
        target = directory / parts[-1]
        report.files.append(rel)
        tmp = _tmp_path(directory, parts[-1])
        if _is_complete(target, st.st_size):
            _unlink_quiet(tmp)  # a killed run's leftover
            report.skipped.append(rel)
            continue
        try:
            with open(from_path, "rb") as fin, _open_new(tmp) as fout:
                n = 0
                while chunk := fin.read(4 * _CHUNK):
                    fout.write(chunk)
                    n += len(chunk)
            if n != st.st_size:
                raise OSError(f"'{from_path}' changed size while being copied ({st.st_size} -> {n} bytes)")
            os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
            os.replace(tmp, target)
        except BaseException:
            _unlink_quiet(tmp)
            raise
        report.copied.append(rel)
        report.bytes_copied += n
        log.debug("copied %s (%s)", rel, _fmt_bytes(n))
    return report


def _list_files(out: Path, patterns: list[str] | None) -> list[str]:
    return [rel for rel in _source_files(out) if _included(rel, patterns)]


def download(
    repo_id: str,
    out: str | PathLike[str],
    *,
    revision: str | None = None,
    include: str | Sequence[str] | None = None,
    source: str | PathLike[str] | None = None,
) -> DownloadReport:
    """Download dataset repository ``repo_id`` into directory ``out``.

    Without ``source`` this calls ``huggingface_hub.snapshot_download(repo_id,
    repo_type="dataset", local_dir=out, revision=revision,
    allow_patterns=include)``: resumable, with the hub client's progress bars
    (needs ``pip install 'hpd-encode[download]'`` and network access).

    With ``source`` (a local directory: a mirror of the repository, a ``git
    clone`` of it, or a hub cache snapshot folder) the files are copied from
    there instead, with the same ``include`` pattern rules (case-sensitive
    globs where ``*`` also matches ``/``; ``dir/`` means everything below
    ``dir``). A file already in ``out`` with the source's size is kept; others
    are copied to a temporary name and renamed, so an interrupted copy resumes.
    ``repo_id`` and ``revision`` are then not used. Git LFS pointer files
    (a clone without ``git lfs pull``) are refused.
    """
    out = Path(out)
    patterns = _expand_patterns(include)
    if source is not None:
        if revision is not None:
            log.warning("revision %r is ignored when copying from a local directory", revision)
        report = _copy_local(Path(source), out, patterns)
        log.info(
            "copied %d files (%s) from '%s' to '%s', kept %d already present",
            len(report.copied),
            _fmt_bytes(report.bytes_copied),
            source,
            out,
            len(report.skipped),
        )
        return report
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:
        raise ImportError(
            "downloading from the hub needs huggingface_hub: pip install 'hpd-encode[download]' "
            "(or copy from a local directory with --from-dir)"
        ) from e
    try:
        path = snapshot_download(
            repo_id,
            repo_type="dataset",
            revision=revision,
            local_dir=out,
            allow_patterns=list(include) if include is not None and not isinstance(include, str) else include,
        )
    except OSError as e:
        raise OSError(
            f"cannot download dataset '{repo_id}' from the hub: {e} "
            "(rerun to resume; without network, copy from a local mirror with --from-dir DIR)"
        ) from e
    out = Path(str(path))
    return DownloadReport(
        out=out,
        source=f"hub:{repo_id}" + (f"@{revision}" if revision else ""),
        files=_list_files(out, patterns),
    )


# --------------------------------------------------------------------------- archive parts

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
        raise FileNotFoundError(f"'{directory}' is not a directory")
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
            raise ValueError(
                f"'{directory}' holds both '{stem}' and parts of it ({len(suffixes) - 1}); "
                "move one away or pass the files to extract explicitly"
            )
        result.append(sorted((p for _, p in members), key=lambda p: natural_key(p.name)))
    return result


def _resolve_inputs(parts_or_dir: str | PathLike[str] | Sequence[str | PathLike[str]]) -> list[list[Path]]:
    """Directories are searched with :func:`find_archive_parts`; explicit files
    form one archive, in natural name order (a shell glob sorts part-10 before
    part-2)."""
    items = [parts_or_dir] if isinstance(parts_or_dir, (str, PathLike)) else list(parts_or_dir)
    if not items:
        raise ValueError("no archive parts given")
    paths = [Path(p) for p in items]
    if len(paths) == 1 and paths[0].is_dir():
        groups = find_archive_parts(paths[0])
        if not groups:
            raise FileNotFoundError(
                f"no archive parts (*.tar.gz, *.tar.gz.part-*, *.tar.gz.000, *.tgz, *.tar …) in '{paths[0]}'"
            )
        return groups
    for p in paths:
        if p.is_dir():
            raise ValueError(f"'{p}' is a directory: pass either one directory or the part files")
        if not p.is_file():
            raise FileNotFoundError(f"archive part '{p}' does not exist")
    return [sorted(paths, key=lambda p: natural_key(p.name))]


# --------------------------------------------------------------------------- streams


class _StreamError(Exception):
    """Damaged or truncated input; the message names the part."""

    def __init__(self, message: str, part: Path) -> None:
        super().__init__(message)
        self.part = part


class _PartsReader:
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

    def read(self, n: int = _CHUNK) -> bytes:
        while True:
            if self._file is None:
                if self._index + 1 >= len(self.parts):
                    return b""
                self._index += 1
                self._file = open(self.parts[self._index], "rb")  # noqa: SIM115 - closed at its end
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


class _RawStream:
    """An uncompressed tar stream: the parts as they are."""

    def __init__(self, src: _PartsReader) -> None:
        self.src = src
        self.total_out = 0

    def read(self, n: int = -1) -> bytes:
        data = self.src.read(_CHUNK if n is None or n < 0 else min(n, _CHUNK))
        self.total_out += len(data)
        return data


class _GunzipStream:
    """Decompresses (possibly multi-member) gzip from the parts, checking each
    member's CRC and length, and raising :class:`_StreamError` naming the part
    on corrupt data, on a stream that stops before its end, and on trailing
    garbage. Output per read is bounded, so a gzip bomb cannot fill memory."""

    def __init__(self, src: _PartsReader) -> None:
        self.src = src
        self.total_out = 0
        self._d = zlib.decompressobj(wbits=31)
        self._input = b""

    def read(self, n: int = -1) -> bytes:
        n = _CHUNK if n is None or n < 0 else n
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
                    raise _StreamError(
                        f"unexpected data after the end of the gzip stream in '{self.src.part}'",
                        self.src.part,
                    )
                self._d = zlib.decompressobj(wbits=31)
                self._input = rest
            if not self._input:
                self._input = self.src.read()
                if not self._input:
                    last = self.src.parts[-1]
                    raise _StreamError(
                        f"the input ends (at the end of '{last}') before the gzip stream does: "
                        "the last part looks truncated, or a part is missing",
                        last,
                    )
            try:
                out = self._d.decompress(self._input, n)
            except zlib.error as e:
                part = self.src.part
                raise _StreamError(
                    f"corrupt gzip data in '{part}' (in the chunk starting at byte {self.src.chunk_start}): {e}",
                    part,
                ) from None
            self._input = self._d.unconsumed_tail
            if out:
                self.total_out += len(out)
                return out


def _sniff(parts: Sequence[Path]) -> str:
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
                raise ValueError(
                    f"'{p}' is {kind}-compressed; extract reads gzip-compressed or plain tar archives"
                )
        return "tar"
    raise ValueError(f"the archive parts are all empty (first: '{parts[0]}')")


# The header errors tarfile raises internally (in neither its __all__ nor the type stubs).
_HEADER_MISSING: tuple[type[Exception], ...] = (
    tarfile.EmptyHeaderError,  # type: ignore[attr-defined]
    tarfile.TruncatedHeaderError,  # type: ignore[attr-defined]
)
_HEADER_GARBLED: type[Exception] = tarfile.InvalidHeaderError  # type: ignore[attr-defined]


class _TrackingTarInfo(tarfile.TarInfo):
    """Remembers why tarfile stopped reading headers: in stream mode tarfile
    treats a missing, cut-off or garbled header after the first as a normal
    end of archive; only an all-zero block is one."""

    @classmethod
    def fromtarfile(cls, tarfile_: tarfile.TarFile) -> _TrackingTarInfo:
        try:
            info = super().fromtarfile(tarfile_)
        except tarfile.HeaderError as e:
            tarfile_._hpd_stop = e  # type: ignore[attr-defined]
            raise
        tarfile_._hpd_stop = None  # type: ignore[attr-defined]
        return info


# --------------------------------------------------------------------------- extract


@dataclass(frozen=True)
class RefusedMember:
    """An archive member that was not written, and why."""

    name: str
    reason: str


@dataclass
class ExtractReport:
    """What :func:`extract` did (so far, when attached to an :class:`ArchiveError`)."""

    root: Path
    parts: list[Path] = field(default_factory=list)
    extracted: int = 0  # files written by this run
    skipped: int = 0  # files already present with the right size
    bytes_written: int = 0
    refused: list[RefusedMember] = field(default_factory=list)

    @property
    def completed(self) -> int:
        """Files now complete under the root (written or already there)."""
        return self.extracted + self.skipped

    @property
    def ok(self) -> bool:
        return not self.refused

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": str(self.root),
            "parts": [str(p) for p in self.parts],
            "extracted": self.extracted,
            "skipped": self.skipped,
            "bytes_written": self.bytes_written,
            "refused": [asdict(r) for r in self.refused],
        }


class ArchiveError(ValueError):
    """The archive is damaged or truncated, or a limit stopped extraction.

    ``part`` is the part file being read when it happened (None when not
    known), ``report`` what was done up to then.
    """

    def __init__(self, message: str, part: Path | None, report: ExtractReport) -> None:
        super().__init__(message)
        self.part = part
        self.report = report


class ExtractLimitError(ArchiveError):
    """The total size limit of one extraction run was reached."""


def _member_parts(name: str) -> tuple[str, ...]:
    """The path components of a member name, or :class:`_Refused`."""
    if "\x00" in name:
        raise _Refused("name contains a NUL byte")
    if name.startswith("/"):
        raise _Refused("absolute path")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise _Refused("path contains '..' and would leave the output root")
    if parts and parts[-1].endswith(_TMP_SUFFIX):
        raise _Refused(f"name ends in '{_TMP_SUFFIX}', the extractor's temporary suffix")
    return parts


def _type_refusal(member: tarfile.TarInfo) -> str | None:
    if member.issym():
        return f"symbolic link (to '{_show(member.linkname)}'); only regular files are extracted"
    if member.islnk():
        return f"hard link (to '{_show(member.linkname)}'); only regular files are extracted"
    if member.ischr():
        return "character device; only regular files are extracted"
    if member.isblk():
        return "block device; only regular files are extracted"
    if member.isfifo():
        return "FIFO; only regular files are extracted"
    if not member.isreg() and not member.isdir():
        return f"unsupported member type {member.type!r}; only regular files are extracted"
    return None


class _Extractor:
    def __init__(
        self, root: _OutputRoot, report: ExtractReport, max_member: int | None, max_total: int | None
    ) -> None:
        self.root = root
        self.report = report
        self.max_member = max_member
        self.max_total = max_total

    def refuse(self, name: str, reason: str) -> None:
        log.warning("refused archive member '%s': %s", _show(name), reason)
        self.report.refused.append(RefusedMember(name, reason))

    def stream(self, parts: list[Path], on_read: Callable[[int], object] | None) -> None:
        src = _PartsReader(parts, on_read)
        stream: _GunzipStream | _RawStream = (
            _GunzipStream(src) if _sniff(parts) == "gzip" else _RawStream(src)
        )
        try:
            self._run(src, stream)
        except _StreamError as e:
            self._fail(str(e), e.part)
        except (tarfile.TarError, EOFError, zlib.error) as e:
            self._fail(f"damaged tar data while reading '{src.part}': {e}", src.part)
        finally:
            src.close()

    def _fail(self, message: str, part: Path | None, cls: type[ArchiveError] = ArchiveError) -> NoReturn:
        done = self.report.completed
        files = "1 file was" if done == 1 else f"{done} files were"
        raise cls(
            f"{message}; {files} complete before this. "
            "Fix or re-download the part and run extract again: complete files are skipped.",
            part,
            self.report,
        )

    def _run(self, src: _PartsReader, stream: _GunzipStream | _RawStream) -> None:
        try:
            # Closed by the `with tf:` below; opening reads the first header.
            tf = tarfile.open(  # type: ignore[call-overload]  # noqa: SIM115
                fileobj=stream,
                mode="r|",
                bufsize=_TAR_BUFSIZE,
                tarinfo=_TrackingTarInfo,
            )
        except tarfile.ReadError as e:
            raise _StreamError(f"'{src.parts[0]}' does not start a tar archive ({e})", src.parts[0]) from None
        with tf:
            # next() rather than iteration: tarfile keeps every member it has
            # read in tf.members, which for a million images is a lot of memory.
            while (member := tf.next()) is not None:
                self._member(tf, member, src)
                tf.members.clear()
            stop = getattr(tf, "_hpd_stop", None)
            if isinstance(stop, _HEADER_MISSING):
                last = src.parts[-1]
                raise _StreamError(
                    f"the tar archive ends without its end-of-archive marker at the end of '{last}': "
                    "the last part looks truncated, or a part is missing",
                    last,
                )
            if isinstance(stop, _HEADER_GARBLED):
                raise _StreamError(f"damaged tar header while reading '{src.part}': {stop}", src.part)
        # Read to the end: checks the gzip CRC and length, and notices a cut-off
        # last part even when it only lost the archive's zero padding.
        while stream.read(_CHUNK):
            pass

    def _member(self, tf: tarfile.TarFile, member: tarfile.TarInfo, src: _PartsReader) -> None:
        name = member.name
        reason = _type_refusal(member)
        if reason:
            self.refuse(name, reason)
            return
        try:
            parts = _member_parts(name)
            if member.isdir():
                self.root.ensure_dir(parts)
                return
            if not parts:
                raise _Refused("empty file name")
            if self.max_member is not None and member.size > self.max_member:
                raise _Refused(
                    f"{member.size} bytes ({_fmt_bytes(member.size)}) is over the per-file limit of "
                    f"{_fmt_bytes(self.max_member)}"
                )
            directory = self.root.ensure_dir(parts[:-1])
            target = directory / parts[-1]
            if _is_complete(target, member.size):
                _unlink_quiet(_tmp_path(directory, parts[-1]))  # a killed run's leftover
                self.report.skipped += 1
                return
            if os.path.isdir(target) and not os.path.islink(target):
                raise _Refused("a directory of that name exists in the output root")
        except _Refused as e:
            self.refuse(name, str(e))
            return
        except OSError as e:
            if e.errno in _PATH_ERRNOS:
                self.refuse(name, f"cannot create it: {e.strerror}")
                return
            raise
        if self.max_total is not None and self.report.bytes_written + member.size > self.max_total:
            self._fail(
                f"stopping before '{_show(name)}' ({_fmt_bytes(member.size)}): this run would write more than the "
                f"total limit of {_fmt_bytes(self.max_total)} (raise it with --max-total-size if the archive "
                "really is that big)",
                src.part,
                ExtractLimitError,
            )
        self._write(tf, member, directory, parts[-1], src)

    def _write(
        self, tf: tarfile.TarFile, member: tarfile.TarInfo, directory: Path, name: str, src: _PartsReader
    ) -> None:
        tmp = _tmp_path(directory, name)
        try:
            try:
                out = _open_new(tmp)
            except OSError as e:
                if e.errno in _PATH_ERRNOS:
                    self.refuse(member.name, f"cannot create it: {e.strerror}")
                    return
                raise
            with out:
                data = tf.extractfile(member)
                assert data is not None  # a regular file
                n = 0
                while chunk := data.read(_CHUNK):
                    out.write(chunk)
                    n += len(chunk)
            if n != member.size:
                raise _StreamError(
                    f"member '{_show(member.name)}' ended after {n} of {member.size} bytes while reading "
                    f"'{src.part}'",
                    src.part,
                )
            if 0 < member.mtime < 2**40:
                os.utime(tmp, (member.mtime, member.mtime))
            os.replace(tmp, directory / name)
        except BaseException:
            _unlink_quiet(tmp)
            raise
        self.report.extracted += 1
        self.report.bytes_written += n


def extract(
    parts_or_dir: str | PathLike[str] | Sequence[str | PathLike[str]],
    out: str | PathLike[str],
    *,
    max_member_bytes: int | None = DEFAULT_MAX_MEMBER_BYTES,
    max_total_bytes: int | None = DEFAULT_MAX_TOTAL_BYTES,
    progress: bool = True,
) -> ExtractReport:
    """Extract a split tar(.gz) archive into directory ``out``, safely.

    ``parts_or_dir`` is a directory (every archive in it is found with
    :func:`find_archive_parts` and extracted in turn) or the part files of one
    archive (any order: they are sorted naturally, ``part-2`` before
    ``part-10``). The parts are read as one stream (gzip or plain tar, detected
    from the first bytes); no concatenated copy is made.

    Only regular files are written, with mode 0644 (umask applied) and the
    member's mtime; directories are created as needed. Members with an
    absolute path, a ``..`` component, a link, device or FIFO type, or a size
    over ``max_member_bytes`` are refused, listed in the report's
    ``refused`` and logged, and extraction goes on. Nothing is written outside
    ``out``, also not through symlinks already inside it.

    Resumable: a file already present with the member's size is skipped;
    each file is written to a temporary name beside its target and renamed
    when complete (a leftover temporary file from a killed run is replaced).

    Raises :class:`ArchiveError` naming the part file on a truncated or
    corrupt archive, and :class:`ExtractLimitError` before writing more than
    ``max_total_bytes`` in this run; both carry the report so far. ``None``
    disables a limit. A progress bar (compressed bytes read) is shown on a TTY
    when ``progress`` is true.
    """
    groups = _resolve_inputs(parts_or_dir)
    root = _OutputRoot(Path(out))
    report = ExtractReport(root=Path(out), parts=[p for g in groups for p in g])
    extractor = _Extractor(root, report, max_member_bytes, max_total_bytes)
    total = sum(p.stat().st_size for p in report.parts)
    from tqdm.auto import tqdm

    with tqdm(
        total=total,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc="extract",
        disable=None if progress else True,
        file=sys.stderr,
    ) as bar:
        for group in groups:
            log.info(
                "extracting %s (%d part%s) into '%s'", group[0].name, len(group), "s" * (len(group) != 1), out
            )
            extractor.stream(group, bar.update)
    log.info(
        "extracted %d files (%s), skipped %d already present, refused %d members",
        report.extracted,
        _fmt_bytes(report.bytes_written),
        report.skipped,
        len(report.refused),
    )
    return report


# --------------------------------------------------------------------------- check


@dataclass(frozen=True)
class CheckFailure:
    """One problem with one record: ``reason`` is ``bad_record``,
    ``unsafe_path``, ``missing`` or ``unreadable``; ``path`` the metadata path
    concerned (empty for ``bad_record``)."""

    index: int
    reason: str
    path: str
    detail: str


@dataclass
class CheckReport:
    """What :func:`check_dataset` found."""

    data_root: Path
    metadata: Path
    records: int  # entries in the metadata file, valid or not
    ok: int  # records whose two images are present and readable
    failures: list[CheckFailure] = field(default_factory=list)
    images_checked: int = 0  # distinct image files probed

    @property
    def failed_records(self) -> int:
        return self.records - self.ok

    @property
    def counts(self) -> dict[str, int]:
        """Failures per reason."""
        out: dict[str, int] = {}
        for f in self.failures:
            out[f.reason] = out.get(f.reason, 0) + 1
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "data_root": str(self.data_root),
            "metadata": str(self.metadata),
            "records": self.records,
            "ok": self.ok,
            "failed_records": self.failed_records,
            "images_checked": self.images_checked,
            "failure_counts": self.counts,
        }

    def write_csv(self, path: str | PathLike[str]) -> None:
        """Write the failures, one row per problem: index, reason, path, detail."""
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["index", "reason", "path", "detail"])
            for fail in self.failures:
                w.writerow([fail.index, fail.reason, fail.path, fail.detail])


def check_dataset(
    data_root: str | PathLike[str],
    metadata: str | PathLike[str],
    *,
    num_threads: int | None = None,
    progress: bool = False,
) -> CheckReport:
    """Check that every record's two images are present and readable.

    Reads ``metadata`` (JSON list or JSON Lines), resolves each image path
    under ``data_root`` refusing escaping paths, and probes each distinct
    existing file's header with :func:`hpd_encode.probe_images` (parallel, in
    Rust). Returns the number of good records and one :class:`CheckFailure`
    per problem (a record with two missing images has two).
    """
    from tqdm.auto import tqdm

    from hpd_encode import probe_images

    root, meta = Path(data_root), Path(metadata)
    if not root.is_dir():
        raise FileNotFoundError(f"data root '{root}' is not a directory")
    records, problems = read_metadata(meta)
    failures: list[CheckFailure] = []
    for p in problems:
        reason, _, detail = p.reason.partition(": ")
        failures.append(CheckFailure(p.index, reason or "bad_record", p.path, detail or p.reason))

    status: dict[str, tuple[str, str] | None] = {}  # rel path -> (reason, detail) or None when fine
    resolved: dict[str, str] = {}
    for rec in records:
        for rel in (rec.path1, rec.path2):
            if rel in status or rel in resolved:
                continue
            try:
                full = resolve_image_path(root, rel)
            except UnsafePathError as e:
                status[rel] = ("unsafe_path", str(e))
                continue
            try:
                os.stat(full)
            except (FileNotFoundError, NotADirectoryError):
                status[rel] = ("missing", f"'{full}' does not exist")
                continue
            except OSError as e:
                status[rel] = ("unreadable", f"cannot stat '{full}': {e.strerror}")
                continue
            resolved[rel] = str(full)

    to_probe = list(resolved)
    step = 4096
    with tqdm(
        total=len(to_probe), unit="img", desc="check", disable=None if progress else True, file=sys.stderr
    ) as bar:
        for start in range(0, len(to_probe), step):
            batch = to_probe[start : start + step]
            sizes, errors = probe_images([resolved[r] for r in batch], num_threads=num_threads)
            for rel, size, err in zip(batch, sizes, errors):
                status[rel] = None if size is not None else ("unreadable", err or "unknown error")
            bar.update(len(batch))

    ok = 0
    for rec in records:
        bad = False
        for rel in dict.fromkeys((rec.path1, rec.path2)):
            st = status[rel]
            if st is not None:
                bad = True
                failures.append(CheckFailure(rec.index, st[0], rel, st[1]))
        ok += not bad
    failures.sort(key=lambda f: f.index)
    return CheckReport(
        data_root=root,
        metadata=meta,
        records=len(records) + len(problems),
        ok=ok,
        failures=failures,
        images_checked=len(to_probe),
    )


# --------------------------------------------------------------------------- CLI


def _size_arg(text: str) -> int | None:
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _cmd_download(args: argparse.Namespace) -> int:
    try:
        report = download(
            args.repo_id, args.out, revision=args.revision, include=args.include, source=args.from_dir
        )
    except ImportError as e:
        print(f"hpd-encode download: error: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report.to_dict()))
    elif args.from_dir is not None:
        print(
            f"{len(report.files)} files in '{report.out}': copied {len(report.copied)} "
            f"({_fmt_bytes(report.bytes_copied)}), kept {len(report.skipped)} already present"
        )
    else:
        print(f"{len(report.files)} files in '{report.out}'")
    return 0


def _cmd_extract(args: argparse.Namespace) -> int:
    try:
        report = extract(
            args.parts,
            args.out,
            max_member_bytes=args.max_file_size,
            max_total_bytes=args.max_total_size,
            progress=not args.no_progress,
        )
    except ArchiveError as e:
        if args.json:
            print(json.dumps({**e.report.to_dict(), "error": str(e)}))
        print(f"hpd-encode extract: error: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report.to_dict()))
    else:
        print(
            f"extracted {report.extracted} files ({_fmt_bytes(report.bytes_written)}) into '{report.root}', "
            f"skipped {report.skipped} already present, refused {len(report.refused)} members"
        )
        for r in report.refused[: args.show]:
            print(f"  refused '{_show(r.name)}': {r.reason}")
        if len(report.refused) > args.show:
            print(f"  … and {len(report.refused) - args.show} more (see the log, or use --json)")
    return 0 if report.ok else 1


def _cmd_check(args: argparse.Namespace) -> int:
    report = check_dataset(
        args.data_root, args.metadata, num_threads=args.workers, progress=not args.no_progress
    )
    if args.report:
        report.write_csv(args.report)
    if args.json:
        print(json.dumps(report.to_dict()))
    else:
        print(
            f"{report.ok} of {report.records} records have both images present and readable; "
            f"{report.failed_records} do not"
        )
        for reason, n in sorted(report.counts.items()):
            print(f"  {reason}: {n}")
        for f in report.failures[: args.show]:
            where = f" '{f.path}'" if f.path else ""
            print(f"  record {f.index}{where}: {f.reason}: {f.detail}")
        if len(report.failures) > args.show:
            more = "; all in --report" if args.report else "; write them all with --report FILE.csv"
            print(f"  … and {len(report.failures) - args.show} more{more}")
        if args.report:
            print(f"failures written to '{args.report}'")
    return 0 if report.failed_records == 0 else 1


def add_subcommands(subparsers: Any, common_parent: argparse.ArgumentParser) -> None:
    """Register ``download``, ``extract`` and ``check`` on an argparse
    subparsers object. Each sets ``func`` (namespace -> exit code)."""
    p = subparsers.add_parser(
        "download",
        parents=[common_parent],
        help="download a dataset repository from the Hugging Face hub (or copy a local mirror)",
        description="Download dataset repository REPO_ID (e.g. MizzenAI/HPDv3) into --out with "
        "huggingface_hub.snapshot_download; rerun to resume. With --from-dir, copy from a local directory "
        "instead (same --include rules; files already present with the right size are kept). "
        "Exit status 0 on success, 1 on error.",
    )
    p.add_argument("repo_id", metavar="REPO_ID", help="hub dataset id, e.g. MizzenAI/HPDv3")
    p.add_argument("--out", required=True, type=Path, help="directory to download into")
    p.add_argument("--revision", default=None, help="branch, tag or commit (default: the main branch)")
    p.add_argument(
        "--include",
        nargs="+",
        action="extend",
        default=None,
        metavar="PATTERN",
        help="only files matching these globs ('*' also matches '/'; 'dir/' = all below dir), "
        "e.g. --include '*.json' 'images.tar.gz.*'",
    )
    p.add_argument(
        "--from-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="copy from this local directory instead of the hub (a mirror, clone or cache snapshot)",
    )
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(func=_cmd_download)

    p = subparsers.add_parser(
        "extract",
        parents=[common_parent],
        help="safely extract split image archives (images.tar.gz.part-*) into a data root",
        description="Stream the parts of a tar.gz (or tar) archive, in natural name order, as one stream and "
        "extract its regular files into --out. Refuses absolute paths, '..', links, devices and oversized "
        "files (listed, extraction goes on); never writes outside --out. Resumable: complete files are skipped. "
        "Exit status 0 when every member was extracted, 1 when some were refused or the archive is damaged "
        "or truncated (the error names the part).",
    )
    p.add_argument(
        "parts",
        nargs="+",
        metavar="DIR_OR_PARTS",
        help="a directory holding the archive parts, or the part files",
    )
    p.add_argument("--out", required=True, type=Path, metavar="ROOT", help="data root to extract into")
    p.add_argument(
        "--max-file-size",
        type=_size_arg,
        default=DEFAULT_MAX_MEMBER_BYTES,
        metavar="SIZE",
        help="refuse members larger than this (default: 1G; 'none' for no limit)",
    )
    p.add_argument(
        "--max-total-size",
        type=_size_arg,
        default=DEFAULT_MAX_TOTAL_BYTES,
        metavar="SIZE",
        help="stop before writing more than this in one run (default: 4T; 'none' for no limit)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar (it only shows on a terminal)")
    p.add_argument(
        "--show", type=int, default=20, metavar="N", help="list at most N refused members (default: 20)"
    )
    p.add_argument("--json", action="store_true", help="print a JSON report")
    p.set_defaults(func=_cmd_extract)

    p = subparsers.add_parser(
        "check",
        parents=[common_parent],
        help="count the records whose two images are present and readable",
        description="Read the metadata, resolve each record's two image paths under --data-root and probe the "
        "image headers. Prints how many records are usable and why the others are not (bad_record, "
        "unsafe_path, missing, unreadable). Exit status 0 when every record is usable, 1 otherwise.",
    )
    p.add_argument("--data-root", required=True, type=Path, help="directory the image paths are relative to")
    p.add_argument("--metadata", required=True, type=Path, help="train.json (JSON list or JSON Lines)")
    p.add_argument(
        "--report",
        type=Path,
        default=None,
        metavar="FILE.csv",
        help="write every failure (index, reason, path, detail) to this CSV file",
    )
    p.add_argument("--workers", type=int, default=None, help="probe threads (default: all cores)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (it only shows on a terminal)")
    p.add_argument("--show", type=int, default=20, metavar="N", help="print at most N failures (default: 20)")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(func=_cmd_check)
