"""hpd_encode.latents.repack and ``hpd-encode repack``: same values in the random-access layout."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import PART_SPLIT, PartRecord, write_reference_part
from hpd_encode._core import latent_checksum, latent_layout
from hpd_encode.cli import main
from hpd_encode.errors import OutputBusyError, PartFileError, PartialOutputError
from hpd_encode.index import build_index
from hpd_encode.latents.repack import repack
from hpd_encode.latents.verify import verify
from hpd_encode.output_dir import MANIFEST, OutputLock
from hpd_encode.schema import CHECKSUM_COLUMNS


@pytest.mark.parametrize("layout", ["reference", "encoder", "ours"])
def test_round_trip(
    layout: str, request: pytest.FixtureRequest, tmp_path: Path, small_buckets_json: Path
) -> None:
    src: Path = request.getfixturevalue(f"{layout}_parts")
    dest = tmp_path / "dest"
    report = repack(src, dest, progress=False)
    names = sorted(p.name for p in src.glob("*.parquet"))
    assert report.files_written == names and report.files_skipped == []
    for name in names:
        a, b = pq.ParquetFile(src / name), pq.ParquetFile(dest / name)
        # Every source column kept as it is; the checksums added when the source lacks them.
        added = [c for c in CHECKSUM_COLUMNS if c not in a.schema_arrow.names]
        assert b.schema_arrow.names == a.schema_arrow.names + added
        assert added == (list(CHECKSUM_COLUMNS) if layout == "reference" else [])
        assert [b.metadata.row_group(g).num_rows for g in range(b.num_row_groups)] == [
            a.metadata.row_group(g).num_rows for g in range(a.num_row_groups)
        ]
        ta, tb = a.read(), b.read()
        assert tb.select(ta.column_names).equals(ta)
        assert tb.column("latent1").to_pylist() == ta.column("latent1").to_pylist()  # bytes identical
        assert latent_layout(dest / name)[1] is True
        sums = [latent_checksum(v) for v in tb.column("latent2").to_pylist()]
        assert tb.column("latent2_xxh3").to_pylist() == sums
    for kwargs in ({"max_per_prompt": None}, {}, {"filter": "votes_chosen > 1"}):
        before = build_index(src, buckets=small_buckets_json, **kwargs)
        after = build_index(dest, buckets=small_buckets_json, **kwargs)
        assert after.height == before.height > 0
        strip = pl.col("parquet_path").str.split("/").list.last()
        assert after.with_columns(strip).equals(before.with_columns(strip))
        assert set(after["parquet_path"].str.split("/").list.get(-2)) == {"dest"}
    assert verify(dest, progress=False).ok


def test_rerun_skips_complete_files_and_redoes_broken_ones(reference_parts: Path, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    repack(reference_parts, dest, progress=False)
    first = {p.name: p.stat().st_mtime_ns for p in dest.glob("*.parquet")}
    again = repack(reference_parts, dest, progress=False)
    assert again.files_written == [] and sorted(again.files_skipped) == sorted(first)
    assert {p.name: p.stat().st_mtime_ns for p in dest.glob("*.parquet")} == first
    # a destination file cut short (a killed copy) and a leftover temp file
    cut = dest / "part_rank01.parquet"
    cut.write_bytes(cut.read_bytes()[:1000])
    (dest / f".part_rank00.parquet.tmp-{os.getpid() + 1}").write_bytes(b"junk")
    third = repack(reference_parts, dest, progress=False)
    assert third.files_written == ["part_rank01.parquet"] and third.files_skipped == ["part_rank00.parquet"]
    want = pq.read_table(reference_parts / "part_rank01.parquet")
    assert pq.read_table(cut).select(want.column_names).equals(want)
    assert sorted(p.name for p in dest.iterdir() if p.name.startswith(".part")) == []


def test_refusals(reference_parts: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="is the source directory"):
        repack(reference_parts, reference_parts, progress=False)
    with pytest.raises(ValueError, match="inside the source directory"):
        repack(reference_parts, reference_parts / "sub", progress=False)
    assert not (reference_parts / "sub").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="holds no part files"):
        repack(empty, tmp_path / "other", progress=False)
    dest = tmp_path / "locked"
    with OutputLock(dest, purpose="encode"):
        with pytest.raises(OutputBusyError, match=r"in use: encode by pid"):
            repack(reference_parts, dest, progress=False)
    assert not list(dest.glob("*.parquet"))
    running = tmp_path / "running"
    running.mkdir()
    for p in reference_parts.glob("*.parquet"):
        (running / p.name).write_bytes(p.read_bytes())
    (running / MANIFEST).write_text(json.dumps({"status": "running", "files": []}))
    with pytest.raises(PartialOutputError, match="--allow-partial"):
        repack(running, tmp_path / "out", progress=False)
    (running / MANIFEST).write_text(json.dumps({"status": "complete", "files": []}))
    with OutputLock(running, purpose="encode"):  # an encode writing the source
        with pytest.raises(OutputBusyError, match="in use: encode"):
            repack(running, tmp_path / "out", progress=False)
        assert repack(running, tmp_path / "out", allow_partial=True, progress=False).files_written


def test_manifest_follows_and_cli(
    tmp_path: Path, encoder_parts: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    files = []
    for p in sorted(encoder_parts.glob("*.parquet")):
        (src / p.name).write_bytes(p.read_bytes())
        files.append({"path": p.name, "rows": pq.ParquetFile(p).metadata.num_rows, "bytes": p.stat().st_size})
    (src / MANIFEST).write_text(json.dumps({"status": "complete", "files": files, "settings": {"x": 1}}))
    (src / "failures.csv").write_text("record_index,stage\n")
    assert main(["repack", str(src), str(tmp_path / "dest"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert len(report["files_written"]) == 2
    manifest = json.loads((tmp_path / "dest" / MANIFEST).read_text())
    assert manifest["status"] == "complete" and manifest["settings"] == {"x": 1}
    assert [f["rows"] for f in manifest["files"]] == [f["rows"] for f in files]
    assert (tmp_path / "dest" / "failures.csv").read_text() == "record_index,stage\n"
    assert main(["verify", str(tmp_path / "dest"), "-q"]) == 0
    assert main(["repack", str(src), str(src)]) == 1
    assert "is the source directory" in capsys.readouterr().err
    # latents uncompressed by default ("dest" above), zstd when asked: same values, paged,
    # the other columns zstd either way
    assert main(["repack", str(src), str(tmp_path / "zstd"), "--latent-compression", "zstd", "-q"]) == 0
    for out, codec in (("dest", "UNCOMPRESSED"), ("zstd", "ZSTD")):
        for p in sorted((tmp_path / out).glob("*.parquet")):
            meta = pq.ParquetFile(p).metadata.row_group(0)
            codecs = {
                meta.column(i).path_in_schema: meta.column(i).compression for i in range(meta.num_columns)
            }
            assert codecs["latent1"] == codecs["latent2"] == codec and codecs["prompt"] == "ZSTD", out
            assert latent_layout(p)[1] is True
            assert pq.read_table(p).equals(pq.read_table(src / p.name))


def _write_dir(root: Path, records: list[PartRecord]) -> Path:
    """Reference-shaped part files of ``records`` (split as the fixtures are)."""
    root.mkdir()
    start = 0
    for rank, n in enumerate(PART_SPLIT):
        write_reference_part(root / f"part_rank{rank:02d}.parquet", records[start : start + n])
        start += n
    return root


def test_a_stale_destination_is_not_trusted(tmp_path: Path, part_records: list[PartRecord]) -> None:
    """Hostile finding 2 of issue 24: DEST holds another source's finished repack with the same
    schema and row groups; repacking SRC into it must rewrite it, not skip it."""
    other = [dataclasses.replace(r, rec=r.rec + 5000, prompt=r.prompt + " (other)") for r in part_records]
    src = _write_dir(tmp_path / "src", part_records)
    stale = _write_dir(tmp_path / "other", other)
    dest = tmp_path / "dest"
    repack(stale, dest, progress=False)
    report = repack(src, dest, progress=False)
    names = sorted(p.name for p in src.glob("*.parquet"))
    assert report.files_skipped == [] and report.files_written == names
    for name in names:
        want = pq.read_table(src / name)
        assert pq.read_table(dest / name).select(want.column_names).equals(want)
    # The proof holds for this source: a rerun skips; the same bytes under a new mtime do not prove it.
    assert repack(src, dest, progress=False).files_skipped == names
    os.utime(src / names[0], ns=(1, 1))
    again = repack(src, dest, progress=False)
    assert again.files_written == [names[0]] and again.files_skipped == names[1:]
    # Another codec is another file.
    assert repack(src, dest, progress=False, latent_compression="zstd").files_written == names


def test_a_damaged_source_is_refused(tmp_path: Path, encoder_parts: Path) -> None:
    """A source with checksums has them checked: a flipped latent bit is not copied under fresh ones."""
    src = tmp_path / "src"
    src.mkdir()
    data = bytearray((encoder_parts / "part_rank01.parquet").read_bytes())
    pf = pq.ParquetFile(encoder_parts / "part_rank01.parquet")
    chunk = pf.metadata.row_group(2).column(pf.schema_arrow.get_field_index("latent1"))
    data[chunk.data_page_offset + chunk.total_compressed_size - 7] ^= 0x08  # in the last row's samples
    (src / "part_rank01.parquet").write_bytes(bytes(data))
    with pytest.raises(
        PartFileError, match=r"row group 2: row 69: latent1 does not match its stored checksum"
    ):
        repack(src, tmp_path / "dest", progress=False)
    assert not (tmp_path / "dest" / "part_rank01.parquet").exists()
    assert [p.name for p in (tmp_path / "dest").iterdir() if p.name.startswith(".part")] == []


def test_sources_of_other_codecs_and_extra_columns(tmp_path: Path, part_records: list[PartRecord]) -> None:
    """pyarrow's default codec (snappy) and gzip are read; columns beyond ours are carried."""
    src = tmp_path / "src"
    src.mkdir()
    write_reference_part(src / "part_rank00.parquet", part_records[:150])
    table = pq.read_table(src / "part_rank00.parquet")
    table = table.append_column("aesthetic", pa.array([float(i) for i in range(table.num_rows)]))
    pq.write_table(table, src / "part_rank00.parquet", row_group_size=64)  # snappy
    pq.write_table(table.slice(0, 40), src / "part_rank01.parquet", compression="gzip")
    repack(src, tmp_path / "dest", progress=False)
    for name, rows in (("part_rank00.parquet", [64, 64, 22]), ("part_rank01.parquet", [40])):
        got = pq.read_table(tmp_path / "dest" / name)
        want = pq.read_table(src / name)
        assert got.select(want.column_names).equals(want)
        assert latent_layout(tmp_path / "dest" / name) == (rows, True)
