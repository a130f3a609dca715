"""Moving an output directory to and from object storage.

:func:`push` uploads an encode (or repack) output directory to an
``s3://bucket/prefix``: the committed part files first, then
``failures.csv`` and ``summary.json``, and ``manifest.json`` last, so a
reader that finds the manifest finds every file it lists. It is resumable:
an object already there with the same size and CRC-64/NVME (recorded as the
object's ``hpd-crc64nvme`` metadata) is skipped. Each object is checked after
its upload (HEAD: size, checksum metadata and ETag). The uploads themselves
run in Rust (``_core.upload_file``: the same client, credentials, retries and
request permits as the reads; multipart uploads of ``part_size`` parts for
large files, a CRC-64/NVME header on every request that S3 checks on
arrival), without the GIL.

:func:`pull` copies a pushed prefix back into a local directory, and
:func:`repack_remote` runs :func:`hpd_encode.latents.repack.repack` with an
``s3://`` source or destination by staging through a local directory: the
source is pulled, the destination pushed, repack's own loop is unchanged.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

from hpd_encode import store
from hpd_encode.errors import (
    ObjectStoreConfigError,
    PartFilesNotFoundError,
    UploadCheckError,
)
from hpd_encode.output_dir import (
    FAILURES,
    MANIFEST,
    SUMMARY,
    list_part_files,
    list_part_urls,
    require_complete,
    shared_lock,
)

log = logging.getLogger(__name__)

#: The metadata key of the checksum (``x-amz-meta-hpd-crc64nvme``).
CHECKSUM_KEY = "hpd-crc64nvme"


@dataclass(frozen=True)
class PushedObject:
    """One file of a push: its name, size, and whether it was ``uploaded`` (in ``parts`` parts,
    0 for one PUT) or ``skipped`` (already there with the same size and checksum)."""

    name: str
    size: int
    action: str
    parts: int = 0


@dataclass
class PushReport:
    """What :func:`push` did: every file in upload order, and the objects under the prefix
    that the output directory does not have (``extra``, left as they are)."""

    output_dir: str
    url: str
    manifest_status: str | None = None
    objects: list[PushedObject] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def names(self, action: str) -> list[str]:
        return [o.name for o in self.objects if o.action == action]

    @property
    def uploaded(self) -> list[str]:
        return self.names("uploaded")

    @property
    def skipped(self) -> list[str]:
        return self.names("skipped")

    def bytes(self, action: str) -> int:
        return sum(o.size for o in self.objects if o.action == action)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(uploaded=self.uploaded, skipped=self.skipped, bytes_uploaded=self.bytes("uploaded"))
        return d


def _require_url(url: str, what: str) -> str:
    if not store.is_remote(url):
        raise ObjectStoreConfigError(f"{what} must be an s3://bucket/prefix URL, not '{url}'")
    return str(url).rstrip("/")


def _same_object(path: Path, url: str, size: int) -> bool:
    """True when the object at ``url`` has ``path``'s size and CRC-64/NVME."""
    from hpd_encode._core import file_crc64nvme, head_object

    head = head_object(url)
    if head is None or head["size"] != size:
        return False
    recorded = head["metadata"].get(CHECKSUM_KEY)
    return recorded is not None and recorded == file_crc64nvme(path)


def _check_upload(path: Path, url: str, done: dict[str, Any]) -> None:
    """HEAD the new object: its size, checksum metadata and ETag must be what was sent."""
    from hpd_encode._core import head_object

    head = head_object(url)
    problems = []
    if head is None:
        problems.append("it is not there")
    else:
        if head["size"] != done["size"]:
            problems.append(f"it has {head['size']} bytes, {done['size']} were sent")
        if head["metadata"].get(CHECKSUM_KEY) != done["crc64nvme"]:
            problems.append(
                f"its {CHECKSUM_KEY} is {head['metadata'].get(CHECKSUM_KEY)!r}, the content sent has {done['crc64nvme']!r}"
            )
        if done.get("etag") and head.get("etag") and head["etag"] != done["etag"]:
            problems.append(f"its ETag is {head['etag']}, the upload returned {done['etag']}")
    if problems:
        raise UploadCheckError(
            f"'{url}' does not match '{path}' after its upload: {'; '.join(problems)}; run push again"
        )


def push(
    output_dir: str | PathLike[str],
    url: str,
    *,
    allow_partial: bool = False,
    progress: bool = True,
) -> PushReport:
    """Upload ``output_dir`` to the prefix ``url`` (``s3://bucket/prefix``).

    Order: committed part files, then ``failures.csv`` and ``summary.json``,
    then ``manifest.json``. Refuses a directory whose encode run has not
    completed or whose lock a run holds, unless ``allow_partial`` (then it
    pushes what is committed, and the manifest as it is). Resumable: objects
    already there with the same size and checksum are skipped. Progress: a
    bar on a terminal when ``progress``, one log line per file otherwise.
    """
    from hpd_encode._core import upload_file

    out = Path(output_dir)
    prefix = _require_url(url, "the destination")
    if not out.is_dir():
        raise PartFilesNotFoundError(f"output directory '{out}' does not exist")
    manifest = require_complete(out, allow_partial, "push")
    report = PushReport(output_dir=str(out), url=prefix)
    report.manifest_status = None if manifest is None else manifest.get("status")
    t0 = time.monotonic()
    with shared_lock(out, allow_partial, "push"):
        parts = list_part_files(out)
        if not parts:
            raise PartFilesNotFoundError(f"'{out}' holds no part files (part_rankNN*.parquet)")
        files = [*parts, *(out / n for n in (FAILURES, SUMMARY, MANIFEST) if (out / n).is_file())]
        remote = store.sizes(prefix)
        local_names = {p.name for p in files}
        report.extra = sorted(n for n in remote if n not in local_names)
        sizes = [p.stat().st_size for p in files]
        bar = None
        if progress and sys.stderr.isatty():
            from tqdm import tqdm

            bar = tqdm(total=sum(sizes), unit="B", unit_scale=True, desc="push")
        try:
            for path, size in zip(files, sizes):
                target = store.join(prefix, path.name)
                if path.name in remote and remote[path.name] == size and _same_object(path, target, size):
                    report.objects.append(PushedObject(path.name, size, "skipped"))
                    if bar is not None:
                        bar.update(size)
                    continue
                t = time.monotonic()
                done = upload_file(path, target, progress=bar.update if bar is not None else None)
                _check_upload(path, target, done)
                report.objects.append(PushedObject(path.name, size, "uploaded", done["parts"]))
                if bar is None and progress:
                    log.info(
                        "pushed %s (%.1f MB, %s) in %.1f s",
                        target,
                        size / 1e6,
                        f"{done['parts']} parts" if done["parts"] else "one PUT",
                        time.monotonic() - t,
                    )
        finally:
            if bar is not None:
                bar.close()
    report.seconds = round(time.monotonic() - t0, 3)
    return report


def pull(url: str, dest_dir: str | PathLike[str], *, threads: int = 4) -> list[Path]:
    """Copy the part files, ``failures.csv``, ``summary.json`` and
    ``manifest.json`` under the prefix ``url`` into ``dest_dir`` (each written
    whole under a temporary name, then renamed); returns the part files."""
    from hpd_encode._core import download_object

    prefix = _require_url(url, "the source")
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    parts = list_part_urls(prefix)
    if not parts:
        raise PartFilesNotFoundError(f"'{prefix}' holds no part files (part_rankNN*.parquet)")
    names = set(store.sizes(prefix))
    extras = [store.join(prefix, n) for n in (FAILURES, SUMMARY, MANIFEST) if n in names]

    def fetch(object_url: str) -> Path:
        target = dest / store.name_of(object_url)
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        try:
            download_object(object_url, tmp)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        return target

    with ThreadPoolExecutor(max(1, threads), thread_name_prefix="pull") as pool:
        got = list(pool.map(fetch, [*parts, *extras]))
    return got[: len(parts)]


def repack_remote(
    src: str | PathLike[str],
    dest: str | PathLike[str],
    staging_dir: str | PathLike[str] | None = None,
    **options: Any,
) -> Any:
    """:func:`~hpd_encode.latents.repack.repack` (``options`` are its keyword
    arguments) where ``src`` or ``dest`` (or both) is an ``s3://`` prefix: the
    source is pulled into a local staging directory, repacked there, and the
    result pushed (resumable: a rerun skips the objects already pushed).
    Staging needs local room for the source and the result (under
    ``staging_dir``, default the system's temporary directory)."""
    from hpd_encode.latents.repack import repack

    s, d = os.fspath(src), os.fspath(dest)
    if store.is_remote(s) and store.is_remote(d):
        a, b = s.rstrip("/") + "/", d.rstrip("/") + "/"
        if a == b or b.startswith(a):
            raise ObjectStoreConfigError(
                f"destination '{d}' is or is inside the source '{s}'; choose another prefix"
            )
    with tempfile.TemporaryDirectory(prefix="hpd-repack-", dir=staging_dir) as tmp:
        local_src = Path(s)
        if store.is_remote(s):
            local_src = Path(tmp) / "src"
            pull(s, local_src)
        local_dest = Path(tmp) / "dest" if store.is_remote(d) else Path(d)
        report = repack(local_src, local_dest, **options)
        if store.is_remote(d):
            push(
                local_dest,
                d,
                allow_partial=options.get("allow_partial", False),
                progress=options.get("progress", True),
            )
    report.src_dir, report.dest_dir = s, d
    return report
