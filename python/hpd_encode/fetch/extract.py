"""Extracting a split tar(.gz) archive into a data root, safely.

The parts are read in natural name order as one stream (:mod:`.archive`) into
:mod:`tarfile` in stream mode, and only regular files are written. Hostile
members (absolute paths, ``..``, links, devices, oversized files) and members
whose name the filesystem cannot hold are refused and reported, and
extraction goes on; nothing is ever written outside the output root.
Resumable: complete files are skipped, and every file is written under a
temporary name and renamed when complete. One extract at a time per root:
the root's lock (:class:`hpd_encode.output_dir.OutputLock`) refuses a second.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import sys
import tarfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any, NoReturn

from hpd_encode.errors import ArchiveError, ExtractLimitError
from hpd_encode.fetch._common import (
    CHUNK,
    PATH_ERRNOS,
    TMP_SUFFIX,
    OutputRoot,
    Refused,
    fmt_bytes,
    open_new,
    output_dir_arg,
    show,
    tmp_path,
    unlink_quiet,
)
from hpd_encode.fetch.archive import GunzipStream, PartsReader, RawStream, StreamError, resolve_inputs, sniff
from hpd_encode.output_dir import LOCK_FILE, OutputLock

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MAX_MEMBER_BYTES",
    "DEFAULT_MAX_TOTAL_BYTES",
    "ExtractReport",
    "RefusedMember",
    "extract",
]

#: Per-file limit of :func:`extract`: an image file over 1 GiB is not an image.
DEFAULT_MAX_MEMBER_BYTES = 1 << 30
#: Total limit of :func:`extract` (bytes written by one run): 4 TiB.
DEFAULT_MAX_TOTAL_BYTES = 4 << 40

_TAR_BUFSIZE = 1 << 16  # tarfile's read size from our stream

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


def _member_parts(name: str) -> tuple[str, ...]:
    """The path components of a member name, or :class:`Refused`."""
    if "\x00" in name:
        raise Refused("name contains a NUL byte")
    if name.startswith("/"):
        raise Refused("absolute path")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise Refused("path contains '..' and would leave the output root")
    if parts and parts[-1].endswith(TMP_SUFFIX):
        raise Refused(f"name ends in '{TMP_SUFFIX}', the extractor's temporary suffix")
    if parts == (LOCK_FILE,):
        raise Refused(f"'{LOCK_FILE}' is the output root's lock file, held by this extract")
    return parts


def _type_refusal(member: tarfile.TarInfo) -> str | None:
    if member.issym():
        return f"symbolic link (to '{show(member.linkname)}'); only regular files are extracted"
    if member.islnk():
        return f"hard link (to '{show(member.linkname)}'); only regular files are extracted"
    if member.ischr():
        return "character device; only regular files are extracted"
    if member.isblk():
        return "block device; only regular files are extracted"
    if member.isfifo():
        return "FIFO; only regular files are extracted"
    if not member.isreg() and not member.isdir():
        return f"unsupported member type {member.type!r}; only regular files are extracted"
    return None


def _cannot_create(e: OSError, parts: tuple[str, ...]) -> str:
    """The refusal reason for a member whose path the filesystem rejects."""
    reason = f"cannot create it in the output root: {e.strerror or e}"
    if e.errno == errno.ENAMETOOLONG:
        longest = max((len(os.fsencode(p)) for p in parts), default=0)
        reason += f" (longest name component {longest} bytes, path {len(os.fsencode('/'.join(parts)))} bytes)"
    return reason


class _Extractor:
    def __init__(
        self, root: OutputRoot, report: ExtractReport, max_member: int | None, max_total: int | None
    ) -> None:
        self.root = root
        self.report = report
        self.max_member = max_member
        self.max_total = max_total

    def refuse(self, name: str, reason: str) -> None:
        log.warning("refused archive member '%s': %s", show(name), reason)
        self.report.refused.append(RefusedMember(name, reason))

    def stream(self, parts: list[Path], on_read: Callable[[int], object] | None) -> None:
        src = PartsReader(parts, on_read)
        stream: GunzipStream | RawStream = GunzipStream(src) if sniff(parts) == "gzip" else RawStream(src)
        try:
            self._run(src, stream)
        except StreamError as e:
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

    def _os_error(self, e: OSError, name: str, path: Path | str | None) -> OSError:
        """``e`` again, saying which member and file it concerns (an OSError
        from a syscall without a path would otherwise print as a bare
        ``[Errno 2] No such file or directory``)."""
        where = e.filename if e.filename is not None else path
        at = f" at '{os.fsdecode(where)}'" if where is not None else ""
        return OSError(e.errno, f"cannot extract archive member '{show(name)}'{at}: {e.strerror or e}")

    def _run(self, src: PartsReader, stream: GunzipStream | RawStream) -> None:
        try:
            # Closed by the `with tf:` below; opening reads the first header.
            tf = tarfile.open(  # type: ignore[call-overload]
                fileobj=stream,
                mode="r|",
                bufsize=_TAR_BUFSIZE,
                tarinfo=_TrackingTarInfo,
            )
        except tarfile.ReadError as e:
            raise StreamError(f"'{src.parts[0]}' does not start a tar archive ({e})", src.parts[0]) from None
        with tf:
            # next() rather than iteration: tarfile keeps every member it has
            # read in tf.members, which for a million images is a lot of memory.
            while (member := tf.next()) is not None:
                self._member(tf, member, src)
                tf.members.clear()
            stop = getattr(tf, "_hpd_stop", None)
            if isinstance(stop, _HEADER_MISSING):
                last = src.parts[-1]
                raise StreamError(
                    f"the tar archive ends without its end-of-archive marker at the end of '{last}': "
                    "the last part looks truncated, or a part is missing",
                    last,
                )
            if isinstance(stop, _HEADER_GARBLED):
                raise StreamError(f"damaged tar header while reading '{src.part}': {stop}", src.part)
        # Read to the end: checks the gzip CRC and length, and notices a cut-off
        # last part even when it only lost the archive's zero padding.
        while stream.read(CHUNK):
            pass

    def _member(self, tf: tarfile.TarFile, member: tarfile.TarInfo, src: PartsReader) -> None:
        name = member.name
        reason = _type_refusal(member)
        if reason:
            self.refuse(name, reason)
            return
        parts: tuple[str, ...] = ()
        target: Path | None = None
        try:
            parts = _member_parts(name)
            if member.isdir():
                self.root.ensure_dir(parts)
                return
            if not parts:
                raise Refused("empty file name")
            if self.max_member is not None and member.size > self.max_member:
                raise Refused(
                    f"{member.size} bytes ({fmt_bytes(member.size)}) is over the per-file limit of "
                    f"{fmt_bytes(self.max_member)}"
                )
            directory = Path(self.root.ensure_dir(parts[:-1]))
            target = directory / parts[-1]
            try:
                # Raises for a name the filesystem cannot hold (ENAMETOOLONG…): refused below.
                st: os.stat_result | None = os.lstat(target)
            except FileNotFoundError:
                st = None
            if st is not None and stat.S_ISREG(st.st_mode) and st.st_size == member.size:
                unlink_quiet(tmp_path(directory, parts[-1]))  # a killed run's leftover
                self.report.skipped += 1
                return
            if st is not None and stat.S_ISDIR(st.st_mode):
                raise Refused("a directory of that name exists in the output root")
        except Refused as e:
            self.refuse(name, str(e))
            return
        except OSError as e:
            if e.errno in PATH_ERRNOS:
                self.refuse(name, _cannot_create(e, parts))
                return
            raise self._os_error(e, name, target) from e
        if self.max_total is not None and self.report.bytes_written + member.size > self.max_total:
            self._fail(
                f"stopping before '{show(name)}' ({fmt_bytes(member.size)}): this run would write more than the "
                f"total limit of {fmt_bytes(self.max_total)} (raise it with --max-total-size if the archive "
                "really is that big)",
                src.part,
                ExtractLimitError,
            )
        self._write(tf, member, directory, parts, src)

    def _write(
        self,
        tf: tarfile.TarFile,
        member: tarfile.TarInfo,
        directory: Path,
        parts: tuple[str, ...],
        src: PartsReader,
    ) -> None:
        tmp = tmp_path(directory, parts[-1])
        target = directory / parts[-1]
        try:
            with open_new(tmp) as out:
                data = tf.extractfile(member)
                assert data is not None  # a regular file
                n = 0
                while chunk := data.read(CHUNK):
                    out.write(chunk)
                    n += len(chunk)
            if n != member.size:
                raise StreamError(
                    f"member '{show(member.name)}' ended after {n} of {member.size} bytes while reading "
                    f"'{src.part}'",
                    src.part,
                )
            if 0 < member.mtime < 2**40:
                os.utime(tmp, (member.mtime, member.mtime))
            os.replace(tmp, target)
        except OSError as e:
            unlink_quiet(tmp)
            if e.errno in PATH_ERRNOS:
                # tarfile skips whatever of the member's data was not read: go on.
                self.refuse(member.name, _cannot_create(e, parts))
                return
            raise self._os_error(e, member.name, target) from e
        except BaseException:
            unlink_quiet(tmp)
            raise
        self.report.extracted += 1
        self.report.bytes_written += n


def extract(
    parts_or_dir: str | PathLike[str] | Sequence[str | PathLike[str]],
    output_dir: str | PathLike[str] | None = None,
    *,
    max_member_bytes: int | None = DEFAULT_MAX_MEMBER_BYTES,
    max_total_bytes: int | None = DEFAULT_MAX_TOTAL_BYTES,
    progress: bool = True,
    out: str | PathLike[str] | None = None,
) -> ExtractReport:
    """Extract a split tar(.gz) archive into directory ``output_dir``, safely.

    ``parts_or_dir`` is a directory (every archive in it is found with
    :func:`find_archive_parts` and extracted in turn) or the part files of one
    archive (any order: they are sorted naturally, ``part-2`` before
    ``part-10``). The parts are read as one stream (gzip or plain tar, detected
    from the first bytes); no concatenated copy is made.

    Only regular files are written, with mode 0644 (umask applied) and the
    member's mtime; directories are created as needed. Members with an
    absolute path, a ``..`` component, a link, device or FIFO type, a size
    over ``max_member_bytes``, or a name the filesystem cannot hold (a
    component or path too long) are refused, listed in the report's
    ``refused`` and logged, and extraction goes on. Nothing is written outside
    ``output_dir``, also not through symlinks already inside it.

    Resumable: a file already present with the member's size is skipped;
    each file is written to a temporary name beside its target and renamed
    when complete (a leftover temporary file from a killed run is replaced).
    A rerun's cost per member is linear in its path depth: each directory is
    checked once per run.

    The root's lock file ``.hpd-encode.lock`` is held for the whole run:
    a second extract into the same root raises
    :class:`~hpd_encode.errors.OutputBusyError` naming the holder's pid and
    host. Raises :class:`ArchiveError` naming the part file on a truncated or
    corrupt archive, and :class:`ExtractLimitError` before writing more than
    ``max_total_bytes`` in this run; both carry the report so far. ``None``
    disables a limit. Any other :class:`OSError` (a full disk…) names the
    member and the file. A progress bar (compressed bytes read) is shown on a
    TTY when ``progress`` is true.

    ``out=`` is the deprecated old name of ``output_dir`` (DeprecationWarning).
    """
    dest = output_dir_arg(output_dir, out, "extract")
    groups = resolve_inputs(parts_or_dir)
    with OutputLock(dest, purpose="extract"):
        root = OutputRoot(dest)
        report = ExtractReport(root=dest, parts=[p for g in groups for p in g])
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
                    "extracting %s (%d part%s) into '%s'",
                    group[0].name,
                    len(group),
                    "s" * (len(group) != 1),
                    dest,
                )
                extractor.stream(group, bar.update)
    log.info(
        "extracted %d files (%s), skipped %d already present, refused %d members",
        report.extracted,
        fmt_bytes(report.bytes_written),
        report.skipped,
        len(report.refused),
    )
    return report
