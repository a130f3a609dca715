"""Reading HPDv3 metadata (a JSON list or JSON Lines) safely.

Each record is one comparison: ``prompt``, ``path1`` (chosen), ``path2``
(rejected), optional ``model1``/``model2``, ``choice_dist`` and
``confidence``. Missing optional fields get the reference's defaults (votes 0,
confidence 0.0, models ""). A bad record is reported with its reason and
skipped; it never stops the run.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from os import PathLike
from pathlib import Path, PurePosixPath, PureWindowsPath


class UnsafePathError(ValueError):
    """A metadata path that is absolute or leaves the data root."""


@dataclass(frozen=True)
class Record:
    index: int  # position in the metadata file
    prompt: str
    path1: str  # chosen
    path2: str  # rejected
    model1: str
    model2: str
    votes_chosen: int
    votes_rejected: int
    confidence: float


@dataclass(frozen=True)
class Problem:
    index: int
    reason: str
    path: str = ""


def _as_votes(v: object) -> int:
    if v is None:
        return 0
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError(f"vote count {v!r} is not a number")
    return int(v)


def _parse(index: int, raw: object) -> Record:
    if not isinstance(raw, dict):
        raise ValueError(f"record is a {type(raw).__name__}, not an object")
    for key in ("prompt", "path1", "path2"):
        if not isinstance(raw.get(key), str) or (key != "prompt" and not raw[key]):
            raise ValueError(f"field {key!r} is missing or not a string")
    dist = raw.get("choice_dist")
    if dist is None:
        dist = [0, 0]
    if not isinstance(dist, (list, tuple)) or len(dist) != 2:
        raise ValueError(f"choice_dist {dist!r} is not a pair of vote counts")
    conf = raw.get("confidence")
    if conf is None:
        conf = 0.0
    if isinstance(conf, bool) or not isinstance(conf, (int, float)) or not math.isfinite(conf):
        # NaN/inf would make detailed_results unreadable by ast.literal_eval.
        raise ValueError(f"confidence {conf!r} is not a finite number")
    models = []
    for key in ("model1", "model2"):
        m = raw.get(key)
        models.append("" if m is None else str(m))
    return Record(
        index=index,
        prompt=raw["prompt"],
        path1=raw["path1"],
        path2=raw["path2"],
        model1=models[0],
        model2=models[1],
        votes_chosen=_as_votes(dist[0]),
        votes_rejected=_as_votes(dist[1]),
        confidence=float(conf),
    )


def _raw_records(path: Path) -> list[object]:
    with open(path, "rb") as f:
        head = f.read(4096).removeprefix(b"\xef\xbb\xbf").lstrip()
    if head.startswith(b"["):
        try:
            data = json.loads(path.read_text(encoding="utf-8-sig"))
        except json.JSONDecodeError as e:
            raise ValueError(f"cannot parse metadata '{path}' as JSON: {e}") from e
        if not isinstance(data, list):
            raise ValueError(f"metadata '{path}' must be a JSON list of records")
        return data
    out: list[object] = []
    with open(path, encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                # Keep the slot so record indices stay line-stable; _parse reports it.
                out.append(_BadLine(f"line {lineno} is not valid JSON: {e.msg}"))
    return out


class _BadLine:
    def __init__(self, reason: str) -> None:
        self.reason = reason


def read_metadata(path: str | PathLike[str], limit: int | None = None) -> tuple[list[Record], list[Problem]]:
    """Read a JSON list or JSON Lines metadata file.

    Returns the valid records and a :class:`Problem` for each invalid one.
    ``limit`` keeps only the first ``limit`` entries of the file.
    """
    path = Path(path)
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, not {limit}")
    if not path.is_file():
        raise FileNotFoundError(f"metadata file '{path}' does not exist")
    raw = _raw_records(path)
    if limit is not None:
        raw = raw[:limit]
    records: list[Record] = []
    problems: list[Problem] = []
    for i, item in enumerate(raw):
        if isinstance(item, _BadLine):
            problems.append(Problem(i, f"bad_record: {item.reason}"))
            continue
        try:
            records.append(_parse(i, item))
        except ValueError as e:
            problems.append(Problem(i, f"bad_record: {e}"))
    return records, problems


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
