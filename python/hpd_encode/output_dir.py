"""The encode output directory: part-file naming and listing, the manifest,
the settings fingerprint, atomic JSON files, and the directory's lock.

Layout::

    OUTPUT_DIR/
      part_rank00.parquet, part_rank00-0001.parquet, ...   committed part files
      .part_rank00.parquet.tmp-PID                         a part file being written
      manifest.json    settings, fingerprint, status ("running" | "complete"), files
      summary.json     the run summary
      failures.csv     every dropped or failed record
      .hpd-encode.lock held (flock) by the one process writing here
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import socket
import time
import uuid
from os import PathLike
from pathlib import Path
from typing import Any

from hpd_encode.errors import DamagedOutputError, OutputBusyError, PartialOutputError

MANIFEST = "manifest.json"
SUMMARY = "summary.json"
FAILURES = "failures.csv"
LOCK_FILE = ".hpd-encode.lock"
PART_RE = re.compile(r"^part_rank(\d+)(?:-(\d+))?\.parquet$")

log = logging.getLogger("hpd_encode.output")


def _is_part_temp(name: str) -> bool:
    """A part file being written (the Rust writer's temporary name for it)."""
    from hpd_encode.schema import TEMP_RE

    m = TEMP_RE.match(name)
    return m is not None and PART_RE.match(m["name"]) is not None


def part_file_name(rank: int, k: int) -> str:
    """``part_rank00.parquet`` for a rank's first file (the reference's name), then ``part_rank00-0001.parquet``..."""
    return f"part_rank{rank:02d}.parquet" if k == 0 else f"part_rank{rank:02d}-{k:04d}.parquet"


def list_part_files(output_dir: str | PathLike[str]) -> list[Path]:
    """The committed part files of ``output_dir``, sorted by name."""
    output_dir = Path(output_dir)
    return sorted(p for p in output_dir.iterdir() if PART_RE.match(p.name)) if output_dir.is_dir() else []


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (after a rename into it) by its path."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON to a temporary name, fsync, rename; the temporary
    file is removed whatever happens (a full disk leaves nothing behind)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_manifest(output_dir: str | PathLike[str]) -> dict[str, Any] | None:
    """The manifest of an encode output directory, or None when there is none."""
    path = Path(output_dir) / MANIFEST
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as e:
        raise DamagedOutputError(f"'{path}' is not valid JSON ({e}); it is damaged") from e
    if not isinstance(manifest, dict):
        raise DamagedOutputError(f"'{path}' is not a JSON object; it is damaged")
    return manifest


def require_complete(
    output_dir: str | PathLike[str], allow_partial: bool, what: str
) -> dict[str, Any] | None:
    """Refuse to ``what`` (index, verify...) a directory whose encode run is
    still running or was interrupted, unless ``allow_partial``. Returns the manifest."""
    manifest = read_manifest(output_dir)
    if manifest is not None and manifest.get("status") != "complete" and not allow_partial:
        raise PartialOutputError(
            f"'{output_dir}' holds an encode run that has not completed (manifest status "
            f"{manifest.get('status')!r}); finish it by rerunning encode, or pass --allow-partial to {what} "
            "what is committed so far"
        )
    return manifest


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fingerprint(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def vae_identity(vae: str | PathLike[str]) -> str:
    """The VAE as the fingerprint records it: a local folder or file by its
    resolved path (``./vae``, ``vae/`` and ``/abs/vae`` are the same run), a
    hub id as given."""
    path = Path(os.fspath(vae)).expanduser()
    return str(path.resolve()) if path.exists() else os.fspath(vae)


class OutputLock:
    """An exclusive advisory lock (``flock``) on ``OUTPUT_DIR/.hpd-encode.lock``,
    held for a whole run by one process. The kernel drops it when the process
    dies, so a killed run never blocks a rerun. The file records the holder
    (pid, host, run id) so a refused second run can name it.

    Use as a context manager, or :meth:`acquire` / :meth:`release`.
    """

    def __init__(self, output_dir: str | PathLike[str], purpose: str = "encode") -> None:
        self.path = Path(output_dir) / LOCK_FILE
        self.purpose = purpose
        self.run_id = uuid.uuid4().hex
        self._fd: int | None = None

    def acquire(self) -> OutputLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holder = read_lock_holder(self.path.parent)
            who = (
                f"{holder.get('purpose', 'a run')} by pid {holder.get('pid')} on host {holder.get('host')}, "
                f"since {holder.get('started')}"
                if holder
                else "another process"
            )
            raise OutputBusyError(
                f"'{self.path.parent}' is in use: {who}; wait for it to finish (or stop it) and run again"
            ) from None
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "run_id": self.run_id,
            "purpose": self.purpose,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def read_lock_holder(output_dir: str | PathLike[str]) -> dict[str, Any] | None:
    """What the lock file says of its holder (None when empty or absent)."""
    try:
        data = json.loads((Path(output_dir) / LOCK_FILE).read_text() or "null")
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def clear_run(output_dir: Path) -> None:
    """``--overwrite``: remove a previous run's part files, temporary files and reports."""
    for p in output_dir.iterdir():
        if PART_RE.match(p.name) or _is_part_temp(p.name):
            p.unlink()
    for name in (MANIFEST, SUMMARY, FAILURES):
        (output_dir / name).unlink(missing_ok=True)


def prepare_output(output_dir: Path, settings: dict[str, Any], overwrite: bool, tool: str) -> dict[str, Any]:
    """Check a previous run's settings (or clear it with ``overwrite``), remove
    temporary files an interrupted run left, and write the ``running`` manifest.
    The caller holds the directory's :class:`OutputLock`, so no other run's
    files are touched."""
    from hpd_encode.errors import ResumeMismatchError

    output_dir.mkdir(parents=True, exist_ok=True)
    fp = fingerprint(settings)
    if overwrite:
        clear_run(output_dir)
    else:
        old = read_manifest(output_dir)
        if old is not None and old.get("fingerprint") != fp:
            before = old.get("settings", {})
            changed = sorted(k for k in set(before) | set(settings) if before.get(k) != settings.get(k))
            what = ", ".join(changed)
            if "vae_identity" in changed:
                from hpd_encode.vae import describe_change

                what += (
                    f"; the VAE: {describe_change(before.get('vae_identity'), settings.get('vae_identity'))}"
                )
            raise ResumeMismatchError(
                f"'{output_dir}' holds a run made with different settings ({what}); "
                "pass --overwrite to start over, or choose another --output-dir"
            )
        if old is None and list_part_files(output_dir):
            raise ResumeMismatchError(
                f"'{output_dir}' holds part files but no {MANIFEST}; pass --overwrite or choose another --output-dir"
            )
    for p in output_dir.iterdir():
        if _is_part_temp(p.name):
            log.info("removing the incomplete file %s left by an interrupted run", p.name)
            p.unlink()
    manifest = {
        "format": 1,
        "tool": tool,
        "fingerprint": fp,
        "settings": settings,
        "status": "running",
        "files": [],
    }
    write_json_atomic(output_dir / MANIFEST, manifest)
    return manifest


def done_records(output_dir: Path) -> set[int]:
    """The record indices already committed in ``output_dir``'s part files."""
    import pyarrow.parquet as pq

    done: set[int] = set()
    for p in list_part_files(output_dir):
        try:
            names = pq.read_schema(p).names
        except Exception as e:
            raise DamagedOutputError(
                f"cannot read the existing part file '{p}': {e}; remove it or pass --overwrite"
            ) from e
        if "record_index" not in names:
            raise DamagedOutputError(
                f"'{p}' was not written by hpd-encode (no record_index column); pass --overwrite"
            )
        col = pq.read_table(p, columns=["record_index"]).column(0).to_numpy().tolist()
        dup = done.intersection(col)
        if dup:
            raise DamagedOutputError(f"'{p}' repeats records already in other part files (e.g. {min(dup)})")
        done.update(col)
    return done


def committed_files(output_dir: Path) -> list[dict[str, Any]]:
    """Name, rows and bytes of every committed part file (from the footers)."""
    from hpd_encode._core import parquet_layout

    return [
        {"path": p.name, "rows": parquet_layout(p)[2], "bytes": p.stat().st_size}
        for p in list_part_files(output_dir)
    ]


class PartRotator:
    """Writes a rank's rows into committed part files of at most ``rows_per_file`` rows."""

    def __init__(
        self,
        output_dir: Path,
        rank: int,
        rows_per_file: int,
        queue_size: int = 8,
        latent_compression: str = "none",
    ) -> None:
        self.output_dir, self.rank = output_dir, rank
        self.latent_compression = latent_compression
        self.rows_per_file = rows_per_file if rows_per_file > 0 else None
        self.queue_size = queue_size
        taken = [
            int(m.group(2) or 0)
            for p in list_part_files(output_dir)
            if (m := PART_RE.match(p.name)) and int(m.group(1)) == rank
        ]
        self.next_k = max(taken) + 1 if taken else 0
        self.writer: Any = None
        self.in_file = 0
        self.files: list[dict[str, Any]] = []
        self.blocked_s = 0.0

    def open(self) -> None:
        from hpd_encode._core import ParquetWriter
        from hpd_encode.schema import ROW_GROUP_SIZE

        path = self.output_dir / part_file_name(self.rank, self.next_k)
        self.next_k += 1
        self.writer = ParquetWriter(
            path,
            row_group_size=ROW_GROUP_SIZE,
            queue_size=self.queue_size,
            latent_compression=self.latent_compression,
        )
        self.in_file = 0

    def submit(self, rows: list[dict[str, Any]]) -> list[tuple[dict[str, Any], Exception]]:
        """Write ``rows``, rotating files as they fill. A row the writer refuses
        (``InvalidRowError``: nothing of that call is queued) is left out and
        returned with its error; every other row is written exactly once."""
        from hpd_encode.errors import InvalidRowError

        refused: list[tuple[dict[str, Any], Exception]] = []
        while rows:
            if self.writer is None:
                self.open()
            room = len(rows) if self.rows_per_file is None else self.rows_per_file - self.in_file
            chunk, rows = rows[:room], rows[room:]
            try:
                self.writer.submit(chunk)
            except InvalidRowError as e:
                if e.position is None:
                    raise
                bad = e.position
                refused.append((chunk[bad], e))
                rows = chunk[:bad] + chunk[bad + 1 :] + rows
                continue
            self.in_file += len(chunk)
            if self.rows_per_file is not None and self.in_file >= self.rows_per_file:
                self.commit()
        return refused

    def commit(self) -> None:
        if self.writer is not None:
            stats = self.writer.close()
            self.blocked_s += stats["blocked_seconds"]
            self.files.append(
                {"path": Path(stats["path"]).name, "rows": stats["rows"], "bytes": stats["bytes"]}
            )
            log.debug("committed %s (%d rows)", stats["path"], stats["rows"])
            self.writer = None

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()
            self.writer = None
