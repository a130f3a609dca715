"""Small helpers shared by :mod:`.download` and :mod:`.extract`: sizes, printable
names, temporary names, and :class:`OutputRoot`, which creates directories under
a root and never lets a write lead outside it.

Both download (``--from-dir``) and extract write a file the same way: to a
fixed temporary name beside the target (so a rerun replaces a killed run's
leftover instead of adding another), then rename it into place.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
import warnings
from os import PathLike
from pathlib import Path
from typing import BinaryIO

from hpd_encode.errors import OptionError, UsageError

CHUNK = 1 << 20  # bytes read at a time from a part or a source file
TMP_SUFFIX = ".hpd-tmp"
#: errnos that mean "this one path cannot be created here" rather than "the disk is in trouble".
PATH_ERRNOS = frozenset(
    {errno.ENAMETOOLONG, errno.EISDIR, errno.ENOTDIR, errno.EEXIST, errno.EINVAL, errno.EILSEQ}
)


def parse_size(text: str) -> int | None:
    """Parse a byte count such as ``1048576``, ``512M``, ``1.5G``, ``4TiB``.

    Suffixes are binary (K = 1024). ``none`` or ``0`` means no limit (None).
    """
    s = text.strip().lower().replace("_", "")
    if s in ("none", "0", "unlimited"):
        return None
    m = re.fullmatch(r"(\d+(?:\.\d*)?)\s*([kmgtp]?)(?:i?b)?", s)
    if not m:
        raise OptionError(
            f"cannot read size {text!r}: use bytes or a number with K, M, G, T or P (e.g. 512M)"
        )
    scale = 1024 ** " kmgtp".index(m.group(2) or " ")
    return int(float(m.group(1)) * scale)


def fmt_bytes(n: int) -> str:
    """``n`` bytes for people: ``512 B``, ``1.5 MiB``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def show(name: str) -> str:
    """A member name safe to print (archives may hold undecodable bytes)."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def within(path: str, root: str) -> bool:
    """``path`` is ``root`` or lies below it (both already resolved)."""
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def output_dir_arg(
    output_dir: str | PathLike[str] | None, out: str | PathLike[str] | None, func: str
) -> Path:
    """The output directory of :func:`download` / :func:`extract`, accepting
    the old keyword ``out=`` with a :class:`DeprecationWarning`."""
    if out is not None:
        if output_dir is not None:
            raise UsageError(f"{func}() got both output_dir and its deprecated alias out")
        warnings.warn(f"{func}(out=...) is deprecated; use output_dir=...", DeprecationWarning, stacklevel=3)
        output_dir = out
    if output_dir is None:
        raise UsageError(f"{func}() missing required argument: 'output_dir'")
    return Path(output_dir)


def tmp_path(directory: Path, name: str) -> Path:
    """Temporary name for ``name`` in ``directory``: fixed, so a rerun replaces
    a leftover from a killed run instead of adding another one."""
    tmp = f".{name}{TMP_SUFFIX}"
    if len(os.fsencode(tmp)) > 255:
        digest = hashlib.sha1(os.fsencode(name)).hexdigest()[:16]
        tmp = f".{digest}{TMP_SUFFIX}"
    return directory / tmp


def unlink_quiet(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def open_new(path: Path) -> BinaryIO:
    """Create ``path`` for writing, never following a symlink planted there."""
    unlink_quiet(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    return os.fdopen(os.open(path, flags, 0o644), "wb")


def is_complete(path: Path, size: int) -> bool:
    """A regular file (not a symlink) of exactly ``size`` bytes is at ``path``."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_size == size


class Refused(Exception):
    """One archive member (or file) is not written; the reason is the message."""


class _Dir:
    """A directory under the root already checked: its resolved path, and the
    subdirectories checked so far (a tree, so a lookup costs one step per
    component whatever the depth)."""

    __slots__ = ("children", "real")

    def __init__(self, real: str) -> None:
        self.real = real
        self.children: dict[str, _Dir] = {}


class OutputRoot:
    """Creates directories under a root and refuses any that would lead outside
    it, including through symlinks already present inside the root.

    Each directory is checked once per run and remembered with its resolved
    path, so placing a file ``depth`` levels down costs ``depth`` dictionary
    steps and no system calls once its directory has been seen; a component
    that is a real directory (not a symlink) resolves to its parent's resolved
    path plus its name, so only symlinks are ever resolved with ``realpath``.
    """

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.real = os.path.realpath(root)
        self._top = _Dir(self.real)

    def ensure_dir(self, parts: tuple[str, ...]) -> str:
        """Return ``root/parts…`` (resolved, a string: a deep tree's paths are
        long, and a :class:`Path` parses its string on construction) as a
        directory inside the root, creating it.

        ``parts`` are plain components (no ``..``, ``.``, ``/`` or empty ones).
        Raises :class:`Refused` when a component is a symlink leading outside
        the root or a non-directory is in the way, and :class:`OSError` when a
        directory cannot be created.
        """
        node = self._top
        for i, comp in enumerate(parts):
            child = node.children.get(comp)
            if child is None:
                child = _Dir(self._check(node.real, comp, parts[: i + 1]))
                node.children[comp] = child
            node = child
        return node.real

    def _check(self, parent_real: str, comp: str, key: tuple[str, ...]) -> str:
        """Make sure ``parent_real/comp`` is a directory inside the root; return its resolved path."""
        path = os.path.join(parent_real, comp)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            try:
                os.mkdir(path)
            except FileExistsError:  # made meanwhile: check it like any other
                st = os.lstat(path)
            else:
                return path
        if stat.S_ISLNK(st.st_mode):
            rel = "/".join(key)
            target = os.path.realpath(path)
            if not within(target, self.real):
                raise Refused(f"'{rel}' in the output root is a symlink to '{target}', outside the root")
            if not os.path.isdir(target):
                raise Refused(f"'{rel}' in the output root is a symlink to a non-directory")
            return target
        if not stat.S_ISDIR(st.st_mode):
            raise Refused(f"'{'/'.join(key)}' already exists in the output root and is not a directory")
        # A real directory inside a resolved parent that is inside the root:
        # its resolved path is the parent's plus its name.
        return path
