"""Rewrite part files into the random-access layout, through the Rust writer.

Part files written by the reference pipeline, by pyarrow with its defaults, or
by earlier versions of hpd-encode store a row group's latents in one or a few
large pages, so reading one pair decodes the whole row group. :func:`repack`
rewrites them so that every ``latent1``/``latent2`` value is its own data page
and the offset index (page index) is written: one pair is then two small
positional reads (see :mod:`hpd_encode.latents.reader`). The page layout comes
from the part writer itself (``_core.rewrite_part_file``, ``rust/parts/rewrite.rs``):
one author of the layout.

Every column's values are kept as they are (the latent ``.npy`` bytes are
identical; columns beyond hpd-encode's are carried too), and so are the
row-group boundaries, so an index built on the repacked directory equals the
one built on the source except for the paths. A source without checksum
columns gets them; a source with them has every latent checked first (a
damaged source is refused, never copied under fresh checksums), and a source
whose manifest records its digest is compared with it.

Each destination file's footer keeps the source's metadata (its provenance
included) and records where it came from (``"repack"`` in the provenance:
the source's name, size, mtime and digest, and the latent codec). Files are
written under a temporary name, fsynced and renamed; a rerun skips a
destination file only when that record proves it is a finished repack of
this very source file (same size, mtime and digest, same codec).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from hpd_encode.errors import InputNotFoundError, OptionError, PartFileError
from hpd_encode.files import open_parquet, require_directory
from hpd_encode.output_dir import (
    FAILURES,
    MANIFEST,
    SUMMARY,
    OutputLock,
    list_part_files,
    read_manifest,
    refuse_if_busy,
    require_complete,
    write_json_atomic,
)
from hpd_encode.provenance import PROVENANCE_KEY, parse_provenance, provenance_json
from hpd_encode.schema import (
    CHECKSUM_COLUMNS,
    FILE_DIGEST,
    LATENT_COMPRESSIONS,
    REFERENCE_COLUMNS,
    TEMP_RE,
    temp_name,
)
from hpd_encode.store import is_remote

log = logging.getLogger(__name__)

#: Codecs :func:`repack` offers for the latent columns (the writer's; the first, ``"none"``, is the default).
LATENT_CODECS = LATENT_COMPRESSIONS

#: Footer keys the writer makes itself (never copied from a source).
_WRITER_KEYS = ("ARROW:schema",)


def _check_codec(latent_compression: str) -> None:
    if latent_compression not in LATENT_CODECS:
        raise OptionError(f"latent_compression must be one of {LATENT_CODECS}, not {latent_compression!r}")


def write_paged_table(
    table: pa.Table, path: str | PathLike[str], row_group_size: int = 100, latent_compression: str = "none"
) -> None:
    """Write ``table`` (a part file's columns) to ``path`` in the random-access
    layout, with row groups of ``row_group_size``: pyarrow writes the values,
    the Rust writer lays them out and computes each latent's checksum (any
    checksum columns in ``table`` are dropped and computed afresh)."""
    _check_codec(latent_compression)
    from hpd_encode._core import rewrite_part_file

    path = Path(path)
    plain = temp_name(path.with_name(path.name + ".plain"))
    keep = [n for n in table.column_names if n not in CHECKSUM_COLUMNS]
    try:
        pq.write_table(table.select(keep), plain, row_group_size=row_group_size)
        rewrite_part_file(plain, path, latent_compression=latent_compression)
    finally:
        plain.unlink(missing_ok=True)


@dataclass
class RepackReport:
    """What :func:`repack` did. ``checksums_added`` names the files whose
    source had no checksums (they were computed from its latents)."""

    src_dir: str
    dest_dir: str
    files_written: list[str] = field(default_factory=list)
    files_skipped: list[str] = field(default_factory=list)
    checksums_added: list[str] = field(default_factory=list)
    rows: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_dirs(src: Path, dest: Path) -> None:
    require_directory(src, "source directory")  # says what it is when it is not one
    s, d = src.resolve(), dest.resolve()
    if d == s:
        raise OptionError(f"destination '{dest}' is the source directory; repack into a new directory")
    if s in d.parents:
        raise OptionError(
            f"destination '{dest}' is inside the source directory '{src}'; choose one outside it"
        )


def _check_sources(parts: list[Path]) -> None:
    """Refuse, before anything is written, a source part that is not a regular file (a FIFO is
    never waited on) or lacks a column of the reference's layout (a repack of it would pass
    :func:`repack` and fail every reader)."""
    for part in parts:
        try:
            pf = open_parquet(part)
        except ValueError as e:  # pyarrow's ArrowInvalid: not Parquet, or a damaged footer
            raise PartFileError(f"cannot read the part file '{part}': {e}") from e
        try:
            names = set(pf.schema_arrow.names)
        finally:
            pf.close(force=True)
        missing = [c for c in REFERENCE_COLUMNS if c not in names]
        if missing:
            raise PartFileError(
                f"'{part}' lacks the column(s) {', '.join(missing)}: it is not a complete part file; "
                "remove it from the source (or restore it) and run again"
            )


def _source_facts(src: Path) -> dict[str, Any]:
    """What identifies a source file, its digest aside: name, size, mtime."""
    st = src.stat()
    return {"file": src.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _recorded_source(dest: Path) -> dict[str, Any] | None:
    """What a destination file's footer says it was repacked from (None: nothing, or unreadable)."""
    from hpd_encode._core import footer_metadata

    try:
        prov = parse_provenance(footer_metadata(dest).get(PROVENANCE_KEY), str(dest))
    except (OSError, ValueError):
        return None
    record = (prov or {}).get("repack")
    return record if isinstance(record, dict) else None


def _is_proven_copy(src: Path, dest: Path, latent_compression: str) -> bool:
    """True when ``dest`` is a finished repack of this very ``src``: its
    footer records the source's name, size and mtime as they are now, the
    same codec, and the digest ``src`` has now (read only when the rest
    agrees), and it is in the paged layout with the source's row groups."""
    from hpd_encode._core import file_digest, latent_layout, parquet_layout

    if not dest.is_file():
        return False
    record = _recorded_source(dest)
    if record is None or record.get("latent_compression") != latent_compression:
        return False
    source = record.get("source") or {}
    facts = _source_facts(src)
    if any(source.get(k) != v for k, v in facts.items()):
        return False
    try:
        rows, paged = latent_layout(dest)
        src_rows = parquet_layout(src)[0]
    except (OSError, ValueError, IndexError):
        return False
    return bool(paged and rows == src_rows and source.get(FILE_DIGEST) == file_digest(src))


def _footer_metadata(src: Path, source: dict[str, Any], latent_compression: str) -> list[tuple[str, str]]:
    """The destination's footer metadata: the source's (its provenance
    included), plus the record of the source this copy was made from."""
    from hpd_encode._core import footer_metadata

    kv = footer_metadata(src)
    provenance = parse_provenance(kv.get(PROVENANCE_KEY), str(src)) or {}
    provenance["repack"] = {"source": source, "latent_compression": latent_compression}
    kept = [(k, v) for k, v in kv.items() if v is not None and k not in (*_WRITER_KEYS, PROVENANCE_KEY)]
    return [*kept, (PROVENANCE_KEY, provenance_json(provenance))]


def _repack_file(src: Path, dest: Path, latent_compression: str, recorded_sha: str | None) -> dict[str, Any]:
    """Rewrite one file through the Rust writer; returns its stats."""
    from hpd_encode._core import file_digest, rewrite_part_file

    facts = _source_facts(src)
    sha = file_digest(src)
    if recorded_sha is not None and sha != recorded_sha:
        raise PartFileError(
            f"'{src}': its digest is {sha}, its manifest.json records {recorded_sha}: the source changed or is "
            "damaged since it was written; nothing was written for it (verify the source directory)"
        )
    metadata = _footer_metadata(src, {**facts, FILE_DIGEST: sha}, latent_compression)
    stats = rewrite_part_file(src, dest, latent_compression=latent_compression, metadata=metadata)
    if _source_facts(src) != facts:
        dest.unlink(missing_ok=True)
        raise PartFileError(f"'{src}' changed while it was being repacked; run repack again")
    return dict(stats)


def _manifest_digests(manifest: dict[str, Any] | None) -> dict[tuple[str, Any], str]:
    """``(file name, bytes) -> digest`` of a manifest's file entries."""
    return {
        (str(f.get("path")), f.get("bytes")): f[FILE_DIGEST]
        for f in (manifest or {}).get("files") or []
        if isinstance(f, dict) and isinstance(f.get(FILE_DIGEST), str)
    }


def repack(
    src_dir: str | PathLike[str],
    dest_dir: str | PathLike[str],
    *,
    allow_partial: bool = False,
    progress: bool = True,
    latent_compression: str = "none",
) -> RepackReport:
    """Rewrite the part files of ``src_dir`` into ``dest_dir`` in the random-access layout.

    Refuses a ``dest_dir`` equal to or inside ``src_dir``, a source whose
    encode run has not completed (unless ``allow_partial``), and a
    destination another process holds. ``manifest.json``, ``summary.json``
    and ``failures.csv`` are copied (the manifest's file list describes the
    new files, with their digests). Rerunning after an interruption skips
    the files proven done (see the module's description).
    Either side may be an ``s3://`` prefix (staged through a local temporary
    directory: :func:`hpd_encode.transfer.repack_remote`).
    ``latent_compression`` is ``"none"`` (default) or ``"zstd"``.
    """
    _check_codec(latent_compression)
    if is_remote(os.fspath(src_dir)) or is_remote(os.fspath(dest_dir)):
        # s3:// source or destination: staged through a local directory (pulled, pushed).
        from hpd_encode.transfer import repack_remote

        return repack_remote(
            src_dir,
            dest_dir,
            allow_partial=allow_partial,
            progress=progress,
            latent_compression=latent_compression,
        )
    from hpd_encode._core import file_digest, parquet_layout

    src, dest = Path(src_dir), Path(dest_dir)
    _check_dirs(src, dest)
    manifest = require_complete(src, allow_partial, "repack")
    refuse_if_busy(src, allow_partial, "repack")
    parts = list_part_files(src)
    if not parts:
        raise InputNotFoundError(f"'{src}' holds no part files (part_rankNN*.parquet)")
    _check_sources(parts)
    source_digests = _manifest_digests(manifest)
    report = RepackReport(src_dir=str(src), dest_dir=str(dest))
    t0 = time.monotonic()
    dest.mkdir(parents=True, exist_ok=True)
    with OutputLock(dest, purpose="repack"):
        old_digests = _manifest_digests(read_manifest(dest))
        for p in dest.iterdir():  # left by a killed repack; we hold the lock
            m = TEMP_RE.match(p.name)
            if m is not None and m["name"].startswith("part_rank"):
                p.unlink(missing_ok=True)
        bar = None
        if progress and sys.stderr.isatty():
            from tqdm import tqdm

            bar = tqdm(total=sum(p.stat().st_size for p in parts), unit="B", unit_scale=True, desc="repack")
        files: list[dict[str, Any]] = []
        for part in parts:
            target = dest / part.name
            size = part.stat().st_size
            if _is_proven_copy(part, target, latent_compression):
                report.files_skipped.append(part.name)
                out_size = target.stat().st_size
                sha = old_digests.get((part.name, out_size)) or file_digest(target)
                rows = parquet_layout(target)[2]
            else:
                stats = _repack_file(part, target, latent_compression, source_digests.get((part.name, size)))
                rows, sha, out_size = stats["rows"], stats[FILE_DIGEST], stats["bytes"]
                report.files_written.append(part.name)
                if stats["checksums_added"]:
                    report.checksums_added.append(part.name)
                report.bytes_read += size
                report.bytes_written += out_size
            report.rows += rows
            files.append({"path": part.name, "rows": rows, "bytes": out_size, FILE_DIGEST: sha})
            if bar is not None:
                bar.update(size)
        if bar is not None:
            bar.close()
        for name in (SUMMARY, FAILURES):
            if (src / name).is_file():
                data = (src / name).read_bytes()
                tmp = temp_name(dest / name)
                try:
                    tmp.write_bytes(data)
                    os.replace(tmp, dest / name)
                finally:
                    tmp.unlink(missing_ok=True)
        new = dict(manifest or {})
        new.setdefault("status", "complete")
        new["files"] = files
        new["repacked_from"] = str(src.resolve())
        new["repack_latent_compression"] = latent_compression
        write_json_atomic(dest / MANIFEST, new)
    report.seconds = round(time.monotonic() - t0, 3)
    return report
