"""Downloading a dataset repository: from the Hugging Face hub
(``huggingface_hub.snapshot_download``, repo type ``dataset``), or copied from
a local directory (a mirror, a ``git clone``, a hub cache snapshot) with the
same include-pattern rules. Both resume: files already present are kept.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

from hpd_encode.errors import FetchError, InputNotFoundError, MissingExtraError, SourceError, UnsafePathError
from hpd_encode.fetch._common import (
    CHUNK,
    TMP_SUFFIX,
    OutputRoot,
    Refused,
    fmt_bytes,
    is_complete,
    open_new,
    output_dir_arg,
    tmp_path,
    unlink_quiet,
    within,
)

log = logging.getLogger(__name__)

__all__ = ["DownloadReport", "download"]


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
            if not name.endswith(TMP_SUFFIX):
                yield rel_dir + name


def _is_lfs_pointer(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(40).startswith(b"version https://git-lfs.github.com/spec/")


def _copy_local(src: Path, out: Path, patterns: list[str] | None) -> DownloadReport:
    if not src.is_dir():
        raise InputNotFoundError(f"local source '{src}' is not a directory")
    src_real = os.path.realpath(src)
    out_real = os.path.realpath(out)
    if within(out_real, src_real) or within(src_real, out_real):
        raise SourceError(
            f"the output directory '{out}' and the source '{src}' overlap; choose another --output-dir"
        )
    root = OutputRoot(out)
    report = DownloadReport(out=out, source=str(src))
    for rel in _source_files(src):
        if not _included(rel, patterns):
            continue
        from_path = src / rel
        try:
            st = os.stat(from_path)
        except OSError as e:
            raise FetchError(f"cannot read '{from_path}' in the source: {e.strerror}") from e
        if not stat.S_ISREG(st.st_mode):
            log.warning("skipping '%s': not a regular file", from_path)
            continue
        parts = tuple(rel.split("/"))
        try:
            directory = Path(root.ensure_dir(parts[:-1]))
        except Refused as e:
            raise UnsafePathError(f"cannot place '{rel}' under '{out}': {e}") from None
        if st.st_size < 1024 and _is_lfs_pointer(from_path):
            raise SourceError(
                f"'{from_path}' is a Git LFS pointer, not the file itself: run `git lfs pull` in '{src}' first"
            )
        target = directory / parts[-1]
        report.files.append(rel)
        tmp = tmp_path(directory, parts[-1])
        if is_complete(target, st.st_size):
            unlink_quiet(tmp)  # a killed run's leftover
            report.skipped.append(rel)
            continue
        try:
            with open(from_path, "rb") as fin, open_new(tmp) as fout:
                n = 0
                while chunk := fin.read(4 * CHUNK):
                    fout.write(chunk)
                    n += len(chunk)
            if n != st.st_size:
                raise FetchError(f"'{from_path}' changed size while being copied ({st.st_size} -> {n} bytes)")
            os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
            os.replace(tmp, target)
        except BaseException:
            unlink_quiet(tmp)
            raise
        report.copied.append(rel)
        report.bytes_copied += n
        log.debug("copied %s (%s)", rel, fmt_bytes(n))
    return report


def _list_files(out: Path, patterns: list[str] | None) -> list[str]:
    return [rel for rel in _source_files(out) if _included(rel, patterns)]


def download(
    repo_id: str,
    output_dir: str | PathLike[str] | None = None,
    *,
    revision: str | None = None,
    include: str | Sequence[str] | None = None,
    source: str | PathLike[str] | None = None,
    out: str | PathLike[str] | None = None,
) -> DownloadReport:
    """Download dataset repository ``repo_id`` into directory ``output_dir``.

    Without ``source`` this calls ``huggingface_hub.snapshot_download(repo_id,
    repo_type="dataset", local_dir=output_dir, revision=revision,
    allow_patterns=include)``: resumable, with the hub client's progress bars
    (needs ``pip install 'hpd-encode[download]'`` and network access).

    With ``source`` (a local directory: a mirror of the repository, a ``git
    clone`` of it, or a hub cache snapshot folder) the files are copied from
    there instead, with the same ``include`` pattern rules (case-sensitive
    globs where ``*`` also matches ``/``; ``dir/`` means everything below
    ``dir``). A file already in ``output_dir`` with the source's size is kept; others
    are copied to a temporary name and renamed, so an interrupted copy resumes.
    ``repo_id`` and ``revision`` are then not used. Git LFS pointer files
    (a clone without ``git lfs pull``) are refused.

    ``out=`` is the deprecated old name of ``output_dir`` (DeprecationWarning).
    """
    dest = output_dir_arg(output_dir, out, "download")
    patterns = _expand_patterns(include)
    if source is not None:
        if revision is not None:
            log.warning("revision %r is ignored when copying from a local directory", revision)
        report = _copy_local(Path(source), dest, patterns)
        log.info(
            "copied %d files (%s) from '%s' to '%s', kept %d already present",
            len(report.copied),
            fmt_bytes(report.bytes_copied),
            source,
            dest,
            len(report.skipped),
        )
        return report
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:
        raise MissingExtraError(
            "downloading from the hub needs huggingface_hub: pip install 'hpd-encode[download]' "
            "(or copy from a local directory with --from-dir)"
        ) from e
    try:
        path = snapshot_download(
            repo_id,
            repo_type="dataset",
            revision=revision,
            local_dir=dest,
            allow_patterns=list(include) if include is not None and not isinstance(include, str) else include,
        )
    except OSError as e:
        raise FetchError(
            f"cannot download dataset '{repo_id}' from the hub: {e} "
            "(rerun to resume; without network, copy from a local mirror with --from-dir DIR)"
        ) from e
    dest = Path(str(path))
    return DownloadReport(
        out=dest,
        source=f"hub:{repo_id}" + (f"@{revision}" if revision else ""),
        files=_list_files(dest, patterns),
    )
