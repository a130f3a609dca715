"""hpd-encode 0.1's Python path check, kept as the oracle for the wording of
the Rust opener's refusals (rust/safe_open.rs opens beneath the data root and
must refuse the same paths with the same words)."""

from __future__ import annotations

import os
from os import PathLike
from pathlib import Path, PurePosixPath, PureWindowsPath

from hpd_encode.errors import UnsafePathError


def resolve_image_path(root: str | PathLike[str], rel: str) -> Path:
    """Join a metadata path to the data root, refusing anything that could
    leave it: absolute paths (POSIX or Windows style), ``..`` components, and
    symlinks pointing outside the root. Raises :class:`UnsafePathError`."""
    if not rel or "\x00" in rel:
        raise UnsafePathError(f"path {rel!r} is empty or contains a NUL byte")
    posix, win = PurePosixPath(rel), PureWindowsPath(rel)
    if posix.is_absolute() or win.is_absolute() or win.drive or rel.startswith("\\"):
        raise UnsafePathError(f"path '{rel}' is absolute; metadata paths must be relative to the data root")
    if ".." in posix.parts or ".." in win.parts:
        raise UnsafePathError(f"path '{rel}' contains '..' and could escape the data root")
    root_real = Path(os.path.realpath(root))
    full = root_real / rel
    real = Path(os.path.realpath(full))
    if real != root_real and root_real not in real.parents:
        raise UnsafePathError(f"path '{rel}' resolves to '{real}', outside the data root '{root_real}'")
    return full
