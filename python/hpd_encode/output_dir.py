"""The encode output directory: part-file naming and listing, the manifest,
the settings fingerprint, atomic JSON files, and the directory's lock.

Layout::

    OUTPUT_DIR/
      part_rank00.parquet, part_rank00-0001.parquet, ...   committed part files
      .part_rank00.parquet.tmp-PID                         a part file being written
      manifest.json    settings, fingerprint, inputs, status ("running" | "complete"),
                       files (name, rows, bytes, xxh3_128: each committed part file's digest)
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
import stat
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

from hpd_encode._core import temp_name
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


def list_part_urls(prefix: str) -> list[str]:
    """The committed part files under an ``s3://`` prefix (pushed output), sorted by name."""
    from hpd_encode import store

    return [u for u in store.list_files(prefix) if PART_RE.match(store.name_of(u))]


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
    tmp = temp_name(path)
    try:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_manifest(output_dir: str | PathLike[str]) -> dict[str, Any] | None:
    """The manifest of an encode output directory (or ``s3://`` prefix), or None when there is none."""
    from hpd_encode import store

    if store.is_remote(output_dir):
        url = store.join(str(output_dir), MANIFEST)
        remote = store.read_json(url)
        if remote is not None and not isinstance(remote, dict):
            from hpd_encode.errors import PartFileError

            raise PartFileError(f"'{url}' is not a JSON object; it is damaged")
        return remote
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
    """An exclusive advisory lock (``flock``) on the output directory itself,
    held for a whole run by one process. The kernel drops it when the process
    dies, so a killed run never blocks a rerun. The lock is on the directory's
    own descriptor (opened read-only, kept for the run), not on a file in it, so
    deleting or replacing ``OUTPUT_DIR/.hpd-encode.lock`` cannot let a second
    run in; that file only records the holder (pid, host, run id) so that a
    refused second run can name it.

    Use as a context manager, or :meth:`acquire` / :meth:`release`.
    """

    def __init__(self, output_dir: str | PathLike[str], purpose: str = "encode") -> None:
        self.path = Path(output_dir) / LOCK_FILE
        self.purpose = purpose
        self.run_id = uuid.uuid4().hex
        self._fd: int | None = None

    def acquire(self) -> OutputLock:
        directory = self.path.parent
        directory.mkdir(parents=True, exist_ok=True)
        fd = lock_directory(directory, exclusive=True)
        if fd is None:
            raise OutputBusyError(
                f"'{directory}' is in use: {describe_holder(directory)}; wait for it to finish (or stop it) "
                "and run again"
            )
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "run_id": self.run_id,
            "purpose": self.purpose,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        try:
            self._write_holder(json.dumps(info).encode())
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def _write_holder(self, data: bytes) -> None:
        """Write the holder file: never through a symlink, never into a FIFO or device."""
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(self.path, flags, 0o644)
        except OSError as e:
            raise DamagedOutputError(
                f"cannot write the lock file '{self.path}': {e.strerror or e}; remove it and run again"
            ) from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise DamagedOutputError(f"'{self.path}' is not a regular file; remove it and run again")
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
        finally:
            os.close(fd)

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError, DamagedOutputError):
                self._write_holder(b"")
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_directory(directory: str | PathLike[str], exclusive: bool) -> int | None:
    """``flock`` ``directory`` (its own descriptor, read-only), without waiting: the descriptor, which
    holds the lock until closed, or None when another process holds a conflicting lock. A shared
    lock only tests that no run holds the directory (``verify``, ``repack``'s source)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise
        return None
    return fd


def holder_if_busy(directory: str | PathLike[str]) -> str | None:
    """Who holds ``directory``'s lock (an encode or repack writing it), or None when nobody does.

    Only tests the lock (a shared, non-blocking ``flock`` on the directory, opened read-only), so it
    works on a read-only directory and takes nothing."""
    try:
        fd = lock_directory(directory, exclusive=False)
    except (FileNotFoundError, NotADirectoryError):
        return None
    if fd is None:
        return describe_holder(directory)
    os.close(fd)
    return None


def refuse_if_busy(directory: Path, allow_partial: bool, what: str) -> bool:
    """Refuse ``directory`` when a run holds its lock (an encode or repack writing it), with
    :class:`OutputBusyError`; with ``allow_partial``, warn and go on. True when it is busy."""
    holder = holder_if_busy(directory)
    if holder is None:
        return False
    msg = f"'{directory}' is in use: {holder}"
    if not allow_partial:
        raise OutputBusyError(
            f"{msg}; wait for it to finish, or pass --allow-partial to {what} what is committed"
        )
    log.warning("%s; going on with what is committed so far (--allow-partial)", msg)
    return True


@contextlib.contextmanager
def shared_lock(directory: Path, allow_partial: bool, what: str) -> Iterator[None]:
    """:func:`refuse_if_busy`, then, when nobody holds ``directory``, a shared lock on it while the
    body runs, so that no run starts writing it meanwhile (``push`` reading it)."""
    fd = None
    if not refuse_if_busy(directory, allow_partial, what):
        fd = lock_directory(directory, exclusive=False)
        if fd is None and not allow_partial:  # taken in between: as busy
            raise OutputBusyError(f"'{directory}' is in use by another run; wait for it to finish")
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)


def describe_holder(directory: str | PathLike[str]) -> str:
    """Who holds ``directory``'s lock, as its lock file says (for a "busy" message)."""
    holder = read_lock_holder(directory)
    if not holder:
        return f"another process (its {LOCK_FILE} says nothing)"
    return (
        f"{holder.get('purpose', 'a run')} by pid {holder.get('pid')} on host {holder.get('host')}, "
        f"since {holder.get('started')}"
    )


def read_lock_holder(output_dir: str | PathLike[str]) -> dict[str, Any] | None:
    """What the lock file says of its holder (None when empty or absent)."""
    try:
        data = json.loads((Path(output_dir) / LOCK_FILE).read_text() or "null")
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


#: What each file of an encode output directory is (for messages).
_ROLES = {
    MANIFEST: "the manifest",
    SUMMARY: "the run summary",
    FAILURES: "the failures list",
    LOCK_FILE: "the lock file",
}


def encode_file_role(directory: str | PathLike[str], name: str) -> str | None:
    """What ``name`` is in ``directory`` when that is an encode output directory (it has a manifest,
    a lock file or part files) and ``name`` one of its own files ("the manifest", "a part file"...);
    None otherwise. Outputs never replace these (:func:`hpd_encode.files.check_output`)."""
    if name in _ROLES:
        role = _ROLES[name]
    elif PART_RE.match(name):
        role = "a part file"
    elif _is_part_temp(name):
        role = "a part file being written"
    else:
        return None
    d = Path(directory)
    is_encode_dir = (
        os.path.lexists(d / MANIFEST) or os.path.lexists(d / LOCK_FILE) or bool(list_part_files(d))
    )
    return role if is_encode_dir else None


def clear_run(output_dir: Path) -> None:
    """``--overwrite``: remove a previous run's part files, temporary files and reports."""
    for p in output_dir.iterdir():
        if PART_RE.match(p.name) or _is_part_temp(p.name):
            p.unlink()
    for name in (MANIFEST, SUMMARY, FAILURES):
        (output_dir / name).unlink(missing_ok=True)


def prepare_output(
    output_dir: Path,
    settings: dict[str, Any],
    overwrite: bool,
    tool: str,
    inputs: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Check a previous run's settings (or clear it with ``overwrite``), remove
    temporary files an interrupted run left, and write the ``running`` manifest.
    The caller holds the directory's :class:`OutputLock`, so no other run's
    files are touched. ``inputs`` (the data root and metadata file, absolute)
    are recorded for ``verify --reencode``; they are not part of the
    fingerprint (a dataset may move). A resumed run keeps the earlier runs'
    file entries (with their digests)."""
    from hpd_encode.errors import ResumeMismatchError

    output_dir.mkdir(parents=True, exist_ok=True)
    fp = fingerprint(settings)
    old: dict[str, Any] | None = None
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
    present = {p.name for p in list_part_files(output_dir)}
    kept = [f for f in (old or {}).get("files") or [] if isinstance(f, dict) and f.get("path") in present]
    manifest = {
        "format": 1,
        "tool": tool,
        "fingerprint": fp,
        "settings": settings,
        "inputs": inputs or {},
        "status": "running",
        "files": kept,
    }
    write_json_atomic(output_dir / MANIFEST, manifest)
    return manifest


def record_file(output_dir: Path, entry: dict[str, Any]) -> None:
    """Add (or replace) one committed part file's entry (``path``, ``rows``,
    ``bytes``, ``xxh3_128``) in the manifest's file list, as soon as it is
    committed: a run killed later keeps the digests of the files it finished.
    Only the process holding the directory's lock calls this."""
    manifest = read_manifest(output_dir) or {}
    files = [
        f for f in manifest.get("files") or [] if not (isinstance(f, dict) and f.get("path") == entry["path"])
    ]
    manifest["files"] = sorted([*files, entry], key=lambda f: str(f.get("path")))
    write_json_atomic(output_dir / MANIFEST, manifest)


def done_records(output_dir: Path) -> set[int]:
    """The record indices already committed in ``output_dir``'s part files."""
    from hpd_encode.files import open_parquet

    done: set[int] = set()
    for p in list_part_files(output_dir):
        try:
            pf = open_parquet(p)  # a FIFO named like a part file is refused, never waited on
        except Exception as e:
            raise DamagedOutputError(
                f"cannot read the existing part file '{p}': {e}; remove it or pass --overwrite"
            ) from e
        try:
            if "record_index" not in pf.schema_arrow.names:
                raise DamagedOutputError(
                    f"'{p}' was not written by hpd-encode (no record_index column); pass --overwrite"
                )
            col = pf.read(columns=["record_index"]).column(0).to_numpy().tolist()
        finally:
            pf.close(force=True)
        dup = done.intersection(col)
        if dup:
            raise DamagedOutputError(f"'{p}' repeats records already in other part files (e.g. {min(dup)})")
        done.update(col)
    return done


def committed_files(output_dir: Path, known: Sequence[dict[str, Any]] = ()) -> list[dict[str, Any]]:
    """Name, rows, bytes and digest (``schema.FILE_DIGEST``) of every committed part file.

    Rows come from the footers; the digest from ``known`` (entries recorded
    as the files were written: this run's and earlier runs') when its size
    agrees, else it is computed now (a file a killed torchrun rank committed
    without its digest reaching the manifest)."""
    from hpd_encode._core import file_digest, parquet_layout
    from hpd_encode.schema import FILE_DIGEST

    digests = {
        (f.get("path"), f.get("bytes")): f[FILE_DIGEST]
        for f in known
        if isinstance(f, dict) and f.get(FILE_DIGEST)
    }
    out = []
    for p in list_part_files(output_dir):
        size = p.stat().st_size
        sha = digests.get((p.name, size))
        if sha is None:
            log.info("computing the digest of %s (committed without a recorded one)", p.name)
            sha = file_digest(p)
        out.append({"path": p.name, "rows": parquet_layout(p)[2], "bytes": size, FILE_DIGEST: sha})
    return out


class PartRotator:
    """Writes a rank's rows into committed part files of at most ``rows_per_file`` rows."""

    def __init__(
        self,
        output_dir: Path,
        rank: int,
        rows_per_file: int,
        queue_size: int = 8,
        latent_compression: str = "none",
        metadata: list[tuple[str, str]] | None = None,
        on_commit: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        """``metadata``: the footer's key-value metadata of every file (the
        provenance); ``on_commit(entry)`` is called with each committed file's
        manifest entry (``path``, ``rows``, ``bytes``, ``xxh3_128``)."""
        self.output_dir, self.rank = output_dir, rank
        self.latent_compression = latent_compression
        self.metadata = list(metadata or [])
        self.on_commit = on_commit
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
            metadata=self.metadata,
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
            from hpd_encode.schema import FILE_DIGEST

            entry = {
                "path": Path(stats["path"]).name,
                "rows": stats["rows"],
                "bytes": stats["bytes"],
                FILE_DIGEST: stats[FILE_DIGEST],
            }
            self.files.append(entry)
            log.debug("committed %s (%d rows)", stats["path"], stats["rows"])
            self.writer = None
            if self.on_commit is not None:
                self.on_commit(entry)

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()
            self.writer = None
