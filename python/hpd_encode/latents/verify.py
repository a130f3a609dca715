"""Check an output directory: every row readable, every latent sound.

:func:`verify` reads every latent of every part file through the Rust reader
(row groups in parallel, large sequential reads, the ``.npy`` checks in Rust)
and checks:

- each value's bytes against the checksum (XXH3) stored beside it (files without
  the checksum columns, the reference's and older ones, are reported as
  unchecked: a flipped bit inside their float data is only caught when it
  makes a NaN or an infinity);
- each value's ``.npy`` header parses, its dtype is float32 or float16 and
  its shape equals the row's ``latent1_shape`` / ``latent2_shape``;
- every value is finite (no NaN or infinity);
- every page of every other column decodes;
- ``record_index`` (when the files have it) is unique across the directory;
- the part files agree with ``manifest.json``: files listed but missing,
  present but not listed, row counts that differ, and each file's digest
  (XXH3-128) when the manifest records it (then every changed byte of the file, page
  headers and footer included, is found).

A directory without part files is a problem, not "OK". Each problem names
its file, row group and row. The result is a :class:`VerifyReport`;
``hpd-encode verify`` prints it.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any, TypeAlias

from hpd_encode import store
from hpd_encode.files import open_parquet, require_directory
from hpd_encode.output_dir import (
    list_part_files,
    list_part_urls,
    refuse_if_busy,
    require_complete,
)
from hpd_encode.schema import FILE_DIGEST

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
    #: Latents read whose file stores no checksum (their bytes are unchecked).
    latents_unchecked: int = 0
    #: Files whose digest was compared with the one ``manifest.json`` records.
    files_digest_checked: int = 0
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
        checked = self.latents - self.latents_unchecked
        lines.append(
            f"checksums: {checked} latents checked"
            + (
                f", {self.latents_unchecked} unchecked (files without checksum columns: "
                "the reference's or older ones)"
                if self.latents_unchecked
                else ""
            )
            + f"; whole-file digests: {self.files_digest_checked} of {self.files} files checked"
            + (
                ""
                if self.files_digest_checked == self.files
                else " (objects in a bucket are not digested: push checked each one's CRC-64/NVME)"
                if self.output_dir.startswith("s3://")
                else " (the others have none in manifest.json)"
            )
        )
        if self.ok:
            lines.append("OK: no problems found")
        else:
            kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.by_kind().items()))
            lines.append(f"{len(self.problems)} problems ({kinds}):")
            lines += [f"  {p}" for p in self.problems[:max_problems]]
            if len(self.problems) > max_problems:
                lines.append(f"  ... and {len(self.problems) - max_problems} more (--json lists them all)")
        return "\n".join(lines)


def _shape_of(value: Any) -> tuple[int, ...] | None:
    return None if value is None else tuple(int(v) for v in value)


#: What :func:`_read_file` gives: the Rust checks, the small columns and the
#: columns that do not decode, or why the file is unreadable.
_Read: TypeAlias = "tuple[list[Any], dict[str, list[Any]], list[Problem]] | Problem"

#: A part file: a local path, or an ``s3://`` URL.
_Part: TypeAlias = "Path | str"

_SMALL = ("record_index", "latent1_shape", "latent2_shape")


def _remote_small_columns(url: str) -> dict[str, list[Any]]:
    """The small columns of an ``s3://`` part file, a row group at a time through the Rust
    reader (the three lie side by side after the latents: one GET per row group)."""
    from hpd_encode._core import latent_layout, part_file_columns, read_row_group_columns

    cols = [c for c in _SMALL if c in set(part_file_columns(url))]
    out: dict[str, list[Any]] = {c: [] for c in cols}
    if cols:
        for group in range(len(latent_layout(url)[0])):
            for c, values in read_row_group_columns(url, group, cols).items():
                out[c].extend(values)
    return out


def _read_file(path: _Part, threads: int | None) -> _Read:
    """The reads of one file (no GIL held for long, so it runs on a worker
    thread ahead of the checks): every latent's check from the Rust reader,
    every page of the other columns decoded (Rust), and the small columns the
    checks compare against; or the problem that stops the file from being read."""
    from hpd_encode._core import check_part_columns, check_part_file

    name = str(path)
    try:
        checks = check_part_file(path, num_threads=threads)
        columns = [
            Problem(name, group, None, "unreadable_column", f"column '{column}': {reason}")
            for group, column, reason in check_part_columns(path)
        ]
    except (OSError, ValueError) as e:
        return Problem(name, None, None, "unreadable_file", str(e))
    try:
        if isinstance(path, str):
            small = _remote_small_columns(path)
        else:
            pf = open_parquet(path)
            try:
                cols = [c for c in _SMALL if c in pf.schema_arrow.names]
                small = pf.read(columns=cols).to_pydict() if cols else {}
            finally:
                pf.close(force=True)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several kinds on damaged pages
        return Problem(name, None, None, "unreadable_file", f"cannot read its small columns: {e}")
    return checks, small, columns


def _digest(path: _Part, want: str | None) -> Problem | bool:
    """Compare the file's digest with the one the manifest records (False:
    none recorded, or an ``s3://`` object, whose bytes were checked against
    their CRC-64/NVME when pushed; True: equal)."""
    from hpd_encode._core import file_digest

    if not want or isinstance(path, str):
        return False
    try:
        got = file_digest(path)
    except OSError as e:
        return Problem(str(path), None, None, "unreadable_file", str(e))
    if got != want:
        return Problem(
            str(path),
            None,
            None,
            "digest",
            f"its digest (XXH3-128) is {got}, manifest.json records {want}: the file changed or is damaged "
            "since it was written; restore it, or encode it again",
        )
    return True


def _check_file(
    path: _Part, read: _Read, report: VerifyReport, seen: dict[int, tuple[str, int, int]]
) -> None:
    name = str(path)
    if isinstance(read, Problem):
        report.problems.append(read)
        return
    checks, small, columns = read
    report.problems += columns
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
            dtype, shape, nonfinite, checksum = info
            if checksum is None:
                report.latents_unchecked += 1
            elif checksum is not True:
                stored, computed = checksum
                report.problems.append(
                    Problem(
                        name,
                        group,
                        row,
                        "checksum",
                        f"{column}'s bytes give checksum {computed:#018x}, {column}_xxh3 says {stored:#018x}: "
                        "the latent is damaged",
                    )
                )
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


def _name(path: _Part) -> str:
    return store.name_of(path) if isinstance(path, str) else path.name


def _account(
    path: _Part,
    size: int,
    read: _Read,
    digest: Problem | bool,
    report: VerifyReport,
    seen: dict[int, tuple[str, int, int]],
    listed: dict[str, int | None],
    manifest: dict[str, Any] | None,
) -> None:
    """Check one file's rows and compare it with ``manifest.json``."""
    rows_before = report.rows
    _check_file(path, read, report, seen)
    report.files += 1
    report.bytes += size
    if isinstance(digest, Problem):
        report.problems.append(digest)
    elif digest:
        report.files_digest_checked += 1
    if manifest is None:
        return
    name = _name(path)
    if name not in listed:
        if manifest.get("status") == "complete":
            report.problems.append(
                Problem(str(path), None, None, "unlisted_file", "present but not listed in manifest.json")
            )
    elif listed[name] is not None and int(listed[name] or 0) != report.rows - rows_before:
        report.problems.append(
            Problem(
                str(path),
                None,
                None,
                "row_count",
                f"{report.rows - rows_before} rows, manifest.json says {listed[name]}",
            )
        )


def verify(
    output_dir: str | PathLike[str],
    *,
    allow_partial: bool = False,
    progress: bool = True,
    num_threads: int | None = None,
) -> VerifyReport:
    """Read and check every row of the part files in ``output_dir`` (a
    directory, or an ``s3://bucket/prefix`` that ``hpd-encode push`` wrote).

    Refuses a directory whose manifest says the encode run has not completed,
    or whose lock another process holds, unless ``allow_partial`` (then it
    checks what is committed and warns). ``num_threads`` bounds the reader's
    threads (default: all cores). A progress bar is shown on a terminal when
    ``progress``.
    """
    if store.is_remote(output_dir):
        return _verify(str(output_dir), allow_partial, progress, num_threads)
    out = Path(output_dir)
    require_directory(out, "output directory")  # says what it is when it is not one
    return _verify(out, allow_partial, progress, num_threads)


def _verify(out: Path | str, allow_partial: bool, progress: bool, num_threads: int | None) -> VerifyReport:
    manifest = require_complete(out, allow_partial, "verify")
    if not isinstance(out, str):  # a bucket has no lock
        refuse_if_busy(out, allow_partial, "verify")
    parts: list[_Part]
    if isinstance(out, str):
        parts = list(list_part_urls(out))
        listing = store.sizes(out)
        sizes = [listing[_name(p)] for p in parts]
    else:
        local = list_part_files(out)
        parts, sizes = list(local), [p.stat().st_size for p in local]
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
    digests: dict[str, str] = {}
    if manifest is not None:
        for entry in manifest.get("files") or []:
            if isinstance(entry, dict) and "path" in entry:
                listed[str(entry["path"])] = entry.get("rows")
                if isinstance(entry.get(FILE_DIGEST), str):
                    digests[str(entry["path"])] = entry[FILE_DIGEST]
    if not parts:
        report.problems.append(
            Problem(str(out), None, None, "no_part_files", "it holds no part files (part_rankNN*.parquet)")
        )
    t0 = time.monotonic()
    bar = None
    if progress and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=sum(sizes), unit="B", unit_scale=True, desc="verify")
    seen: dict[int, tuple[str, int, int]] = {}
    # The next file is read (Rust, GIL released, on the same thread pool) while
    # this one is read and checked: the disk never waits for the Python side or
    # for the last column chunks of a file.
    # The whole-file digest is computed on a thread of its own beside the checks.
    with ThreadPoolExecutor(3, thread_name_prefix="verify-read") as ahead:
        reads: dict[int, tuple[Future[_Read], Future[Problem | bool]]] = {}
        for i, path in enumerate(parts):
            for j in (i, i + 1):
                if j < len(parts) and j not in reads:
                    reads[j] = (
                        ahead.submit(_read_file, parts[j], num_threads),
                        ahead.submit(_digest, parts[j], digests.get(_name(parts[j]))),
                    )
            read, digest = reads.pop(i)
            _account(path, sizes[i], read.result(), digest.result(), report, seen, listed, manifest)
            if bar is not None:
                bar.update(sizes[i])
    if bar is not None:
        bar.close()
    present = {_name(p) for p in parts}
    for name in listed:
        if name not in present:
            where = store.join(out, name) if isinstance(out, str) else str(out / name)
            report.problems.append(
                Problem(where, None, None, "missing_file", "listed in manifest.json but not present")
            )
    report.seconds = round(time.monotonic() - t0, 3)
    return report
