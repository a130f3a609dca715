"""Check an output directory: every row readable, every latent sound.

:func:`verify` reads every latent of every part file through the Rust reader
(row groups in parallel, large sequential reads, the ``.npy`` checks in Rust)
and checks:

- each value's ``.npy`` header parses, its dtype is float32 or float16 and
  its shape equals the row's ``latent1_shape`` / ``latent2_shape``;
- every value is finite (no NaN or infinity);
- ``record_index`` (when the files have it) is unique across the directory;
- the part files agree with ``manifest.json``: files listed but missing,
  present but not listed, and row counts that differ.

Each problem names its file, row group and row. The result is a
:class:`VerifyReport`; ``hpd-encode verify`` prints it.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import sys
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any, TypeAlias

import pyarrow.parquet as pq

from hpd_encode.errors import InputNotFoundError, OutputBusyError
from hpd_encode.output_dir import LOCK_FILE, list_part_files, read_lock_holder, require_complete

log = logging.getLogger(__name__)

_DTYPES = ("float32", "float16")


@dataclass(frozen=True)
class Problem:
    """One thing wrong: where (file, row group, row; None when it concerns a whole file) and what."""

    file: str
    row_group: int | None
    row: int | None
    kind: str
    detail: str

    def __str__(self) -> str:
        where = f"'{self.file}'"
        if self.row_group is not None:
            where += f" row group {self.row_group}"
        if self.row is not None:
            where += f" row {self.row}"
        return f"{where}: {self.kind}: {self.detail}"


@dataclass
class VerifyReport:
    """What :func:`verify` found. ``ok`` is True when there is no problem."""

    output_dir: str
    files: int = 0
    rows: int = 0
    latents: int = 0
    bytes: int = 0
    seconds: float = 0.0
    manifest_status: str | None = None
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def mb_per_second(self) -> float:
        return self.bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0

    def by_kind(self) -> dict[str, int]:
        return dict(Counter(p.kind for p in self.problems))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ok"] = self.ok
        d["mb_per_second"] = round(self.mb_per_second, 1)
        d["by_kind"] = self.by_kind()
        return d

    def summary(self, max_problems: int = 20) -> str:
        """A few lines for a terminal."""
        lines = [
            f"{self.output_dir}: {self.files} part files, {self.rows} rows, {self.latents} latents, "
            f"{self.bytes / 1e6:.1f} MB in {self.seconds:.1f} s ({self.mb_per_second:.0f} MB/s)",
        ]
        if self.ok:
            lines.append("OK: no problems found")
        else:
            kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.by_kind().items()))
            lines.append(f"{len(self.problems)} problems ({kinds}):")
            lines += [f"  {p}" for p in self.problems[:max_problems]]
            if len(self.problems) > max_problems:
                lines.append(f"  ... and {len(self.problems) - max_problems} more (--json lists them all)")
        return "\n".join(lines)


def lock_holder_if_busy(directory: str | PathLike[str]) -> str | None:
    """Who holds ``directory``'s output lock (an encode or repack writing it), or None when nobody does.

    Only tests the lock (a shared, non-blocking ``flock`` on the lock file,
    opened read-only), so it works on a read-only directory and takes nothing.
    """
    path = Path(directory) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise
        holder = read_lock_holder(directory)
        if holder:
            return (
                f"{holder.get('purpose', 'a run')} by pid {holder.get('pid')} on host {holder.get('host')}, "
                f"since {holder.get('started')}"
            )
        return "another process"
    finally:
        os.close(fd)
    return None


def _shape_of(value: Any) -> tuple[int, ...] | None:
    return None if value is None else tuple(int(v) for v in value)


#: What :func:`_read_file` gives: the Rust checks and the small columns, or why the file is unreadable.
_Read: TypeAlias = "tuple[list[Any], dict[str, list[Any]]] | Problem"


def _read_file(path: Path, threads: int | None) -> _Read:
    """The reads of one file (no GIL held for long, so it runs on a worker
    thread ahead of the checks): every latent's check from the Rust reader,
    and the small columns the checks compare against; or the problem that
    stops the file from being read."""
    from hpd_encode._core import check_part_file

    name = str(path)
    try:
        checks = check_part_file(path, num_threads=threads)
    except (OSError, ValueError) as e:
        return Problem(name, None, None, "unreadable_file", str(e))
    try:
        pf = pq.ParquetFile(path)
        cols = [c for c in ("record_index", "latent1_shape", "latent2_shape") if c in pf.schema_arrow.names]
        small = pf.read(columns=cols).to_pydict() if cols else {}
    except (OSError, ValueError) as e:
        return Problem(name, None, None, "unreadable_file", f"cannot read its small columns: {e}")
    return checks, small


def _check_file(path: Path, read: _Read, report: VerifyReport, seen: dict[int, tuple[str, int, int]]) -> None:
    name = str(path)
    if isinstance(read, Problem):
        report.problems.append(read)
        return
    checks, small = read
    n = len(checks)
    for c in ("latent1_shape", "latent2_shape"):
        if c not in small:
            report.problems.append(Problem(name, None, None, "missing_column", f"it has no '{c}' column"))
    record_index = small.get("record_index")
    report.rows += n
    for pos, (group, row, *latents) in enumerate(checks):
        for k, info in enumerate(latents, start=1):
            column = f"latent{k}"
            if isinstance(info, str):
                report.problems.append(Problem(name, group, row, "unreadable_latent", info))
                continue
            report.latents += 1
            dtype, shape, nonfinite = info
            if dtype not in _DTYPES:
                report.problems.append(Problem(name, group, row, "dtype", f"{column} is {dtype}"))
            stated = _shape_of(small[f"{column}_shape"][pos]) if f"{column}_shape" in small else tuple(shape)
            if tuple(shape) != stated:
                report.problems.append(
                    Problem(
                        name,
                        group,
                        row,
                        "shape",
                        f"{column} has shape {tuple(shape)}, {column}_shape says {stated}",
                    )
                )
            if nonfinite:
                report.problems.append(
                    Problem(name, group, row, "nonfinite", f"{column} has {nonfinite} NaN or infinite values")
                )
        if record_index is not None:
            rec = record_index[pos]
            if rec is None:
                report.problems.append(Problem(name, group, row, "record_index", "record_index is null"))
            elif rec in seen:
                f0, g0, r0 = seen[rec]
                report.problems.append(
                    Problem(
                        name,
                        group,
                        row,
                        "duplicate_record_index",
                        f"record_index {rec} also at '{f0}' row group {g0} row {r0}",
                    )
                )
            else:
                seen[rec] = (name, group, row)


def _account(
    path: Path,
    read: _Read,
    report: VerifyReport,
    seen: dict[int, tuple[str, int, int]],
    listed: dict[str, int | None],
    manifest: dict[str, Any] | None,
) -> None:
    """Check one file's rows and compare it with ``manifest.json``."""
    size = path.stat().st_size
    rows_before = report.rows
    _check_file(path, read, report, seen)
    report.files += 1
    report.bytes += size
    if manifest is None:
        return
    if path.name not in listed:
        if manifest.get("status") == "complete":
            report.problems.append(
                Problem(str(path), None, None, "unlisted_file", "present but not listed in manifest.json")
            )
    elif listed[path.name] is not None and int(listed[path.name] or 0) != report.rows - rows_before:
        report.problems.append(
            Problem(
                str(path),
                None,
                None,
                "row_count",
                f"{report.rows - rows_before} rows, manifest.json says {listed[path.name]}",
            )
        )


def verify(
    output_dir: str | PathLike[str],
    *,
    allow_partial: bool = False,
    progress: bool = True,
    num_threads: int | None = None,
) -> VerifyReport:
    """Read and check every row of the part files in ``output_dir``.

    Refuses a directory whose manifest says the encode run has not completed,
    or whose lock another process holds, unless ``allow_partial`` (then it
    checks what is committed and warns). ``num_threads`` bounds the reader's
    threads (default: all cores). A progress bar is shown on a terminal when
    ``progress``.
    """
    out = Path(output_dir)
    if not out.is_dir():
        raise InputNotFoundError(f"output directory '{out}' does not exist")
    manifest = require_complete(out, allow_partial, "verify")
    holder = lock_holder_if_busy(out)
    if holder is not None:
        msg = f"'{out}' is in use: {holder}"
        if not allow_partial:
            raise OutputBusyError(
                f"{msg}; wait for it to finish, or pass --allow-partial to verify what is committed"
            )
        log.warning("%s; verifying what is committed so far (--allow-partial)", msg)
    parts = list_part_files(out)
    report = VerifyReport(
        output_dir=str(out), manifest_status=None if manifest is None else manifest.get("status")
    )
    if manifest is not None and manifest.get("status") != "complete":
        log.warning(
            "'%s': the manifest says %r; verifying the %d part files committed so far",
            out,
            manifest.get("status"),
            len(parts),
        )
    listed: dict[str, int | None] = {}
    if manifest is not None:
        for entry in manifest.get("files") or []:
            if isinstance(entry, dict) and "path" in entry:
                listed[str(entry["path"])] = entry.get("rows")
    t0 = time.monotonic()
    bar = None
    if progress and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=sum(p.stat().st_size for p in parts), unit="B", unit_scale=True, desc="verify")
    seen: dict[int, tuple[str, int, int]] = {}
    # The next file is read (Rust, GIL released, on the same thread pool) while
    # this one is read and checked: the disk never waits for the Python side or
    # for the last column chunks of a file.
    with ThreadPoolExecutor(2, thread_name_prefix="verify-read") as ahead:
        reads: dict[int, Future[_Read]] = {}
        for i, path in enumerate(parts):
            for j in (i, i + 1):
                if j < len(parts) and j not in reads:
                    reads[j] = ahead.submit(_read_file, parts[j], num_threads)
            _account(path, reads.pop(i).result(), report, seen, listed, manifest)
            if bar is not None:
                bar.update(path.stat().st_size)
    if bar is not None:
        bar.close()
    present = {p.name for p in parts}
    for name in listed:
        if name not in present:
            report.problems.append(
                Problem(
                    str(out / name), None, None, "missing_file", "listed in manifest.json but not present"
                )
            )
    report.seconds = round(time.monotonic() - t0, 3)
    return report
