"""Latents you can trust: per-latent checksums, whole-file digests, provenance in
the footer, and ``verify`` finding damage anywhere in a part file (issue 24).

The bit-flip test flips single bits at sampled positions (fixed seed) of a real
part file written by the Rust writer, in each region: latent data, latent page
headers, the footer, the small columns.
"""

from __future__ import annotations

import io
import json
import os
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import PartRecord, write_reference_part, write_with_encoder
from hpd_encode import ParquetWriter
from hpd_encode._core import check_part_columns, file_digest, latent_checksum, read_pairs
from hpd_encode.errors import MixedProvenanceError, PartFileError
from hpd_encode.index import build_index
from hpd_encode.latents.verify import verify
from hpd_encode.output_dir import MANIFEST
from hpd_encode.provenance import PROVENANCE_KEY, read_provenance
from hpd_encode.schema import CHECKSUM_COLUMNS, FILE_DIGEST

NPY_MAGIC = b"\x93NUMPY"


def _digest(path: Path) -> str:
    return file_digest(path)


def _output(root: Path, records: list[PartRecord], *, digest: bool = True) -> Path:
    """An output directory of one part file written by the Rust writer, its manifest
    listing it (with its digest when ``digest``)."""
    root.mkdir(parents=True)
    part = root / "part_rank00.parquet"
    write_with_encoder(part, records)
    entry = {"path": part.name, "rows": len(records), "bytes": part.stat().st_size}
    if digest:
        entry[FILE_DIGEST] = _digest(part)
    (root / MANIFEST).write_text(json.dumps({"status": "complete", "files": [entry]}))
    return root


def _write(path: Path, records: list[PartRecord], provenance: dict | None, row_group_size: int = 100) -> dict:
    """A part file of ``records`` written by ``ParquetWriter`` with ``provenance`` in its footer; its stats."""
    kv = [(PROVENANCE_KEY, json.dumps(provenance))] if provenance is not None else []
    rows = [
        {
            "prompt": r.prompt,
            "image1_path": r.image1_path,
            "image2_path": "b.png",
            "latent1": r.latent(1),
            "latent2": r.latent(2),
            "height": r.height,
            "width": r.width,
        }
        for r in records
    ]
    with ParquetWriter(path, row_group_size=row_group_size, metadata=kv) as w:
        w.submit(rows)
    return w.close()


def test_writer_stores_checksums_provenance_and_digest(
    tmp_path: Path, part_records: list[PartRecord]
) -> None:
    path = tmp_path / "part.parquet"
    provenance = {"format": 1, "latent": "mean", "vae": {"class": "AutoencoderKL"}}
    stats = _write(path, part_records[:30], provenance, row_group_size=10)
    assert stats[FILE_DIGEST] == _digest(path)
    assert read_provenance(path) == provenance
    assert pq.read_metadata(path).metadata[PROVENANCE_KEY.encode()] == json.dumps(provenance).encode()
    table = pq.read_table(path)
    assert [table.schema.field(c).type for c in CHECKSUM_COLUMNS] == [pa.uint64(), pa.uint64()]
    # The reference's readers still read the file: its ten columns, npy bytes, literal_eval.
    for i, r in enumerate(part_records[:30]):
        for k, name in enumerate(("latent1", "latent2")):
            raw = table.column(name)[i].as_py()
            assert np.load(io.BytesIO(raw)).tolist() == r.latent(k + 1).tolist()
            assert table.column(CHECKSUM_COLUMNS[k])[i].as_py() == latent_checksum(raw)
    write_reference_part(tmp_path / "ref.parquet", part_records[:5])
    assert read_provenance(tmp_path / "ref.parquet") is None


def _regions(path: Path) -> dict[str, list[tuple[int, tuple[int, int] | None]]]:
    """Byte positions of each region of a part file, with the (row group, row) of
    each latent data byte: ``latent data`` (the float samples of each .npy value),
    ``latent page headers`` (each latent page's Thrift header), ``footer``, and
    ``small columns`` (every other column chunk)."""
    data = path.read_bytes()
    meta = pq.ParquetFile(path).metadata
    names = [meta.schema.column(i).path for i in range(meta.num_columns)]
    out: dict[str, list[tuple[int, tuple[int, int] | None]]] = {
        "latent data": [],
        "latent page headers": [],
        "footer": [],
        "small columns": [],
    }
    footer_len = int.from_bytes(data[-8:-4], "little")
    out["footer"] = [(p, None) for p in range(len(data) - footer_len - 8, len(data))]
    for g in range(meta.num_row_groups):
        rg = meta.row_group(g)
        for c, name in enumerate(names):
            col = rg.column(c)
            start = col.dictionary_page_offset or col.data_page_offset
            end = start + col.total_compressed_size
            if name not in ("latent1", "latent2"):
                out["small columns"] += [(p, None) for p in range(start, end)]
                continue
            at = start
            for row in range(rg.num_rows):
                magic = data.index(NPY_MAGIC, at)
                # Before the value: its definition level (4-byte length 2, 2 RLE bytes), its 4-byte length.
                assert data[magic - 10 : magic - 6] == (2).to_bytes(4, "little")
                value_len = int.from_bytes(data[magic - 4 : magic], "little")
                header_len = int.from_bytes(data[magic + 8 : magic + 10], "little")
                out["latent page headers"] += [(p, None) for p in range(at, magic - 10)]
                out["latent data"] += [
                    (p, (g, row)) for p in range(magic + 10 + header_len, magic + value_len)
                ]
                at = magic + value_len
            assert at == end
    return out


def _flip(path: Path, clean: bytes, position: int, bit: int) -> None:
    """``path`` replaced (atomic rename: a new file, as a restore or a copy would make) by
    ``clean`` with one bit flipped."""
    damaged = bytearray(clean)
    damaged[position] ^= 1 << bit
    tmp = path.with_name(path.name + ".flip")
    tmp.write_bytes(bytes(damaged))
    os.replace(tmp, path)


FLIPS_PER_REGION = 25


@pytest.mark.parametrize("digest", [True, False], ids=["with-manifest-digest", "without-digest"])
def test_single_bit_flips_are_detected(tmp_path: Path, part_records: list[PartRecord], digest: bool) -> None:
    """Every flip in latent data is found, by ``verify`` and by the reader (the
    checksums); with the manifest's digest, every flip anywhere is found."""
    out = _output(tmp_path / "out", part_records[:150], digest=digest)
    part = out / "part_rank00.parquet"
    clean = part.read_bytes()
    assert verify(out, progress=False).ok
    rng = random.Random(20241126)
    found: dict[str, int] = {}
    for region, positions in _regions(part).items():
        assert positions, region
        found[region] = 0
        for position, row in rng.sample(positions, FLIPS_PER_REGION):
            _flip(part, clean, position, rng.randrange(8))
            report = verify(out, progress=False)
            found[region] += not report.ok
            if row is not None:  # the reader catches it too, naming the row
                assert not report.ok, f"{region}: a flip at byte {position} passed verify"
                with pytest.raises(PartFileError, match=f"row group {row[0]} row {row[1]}: latent"):
                    read_pairs([(str(part), row[0], row[1])])
                bad = [p for p in report.problems if p.kind == "checksum"]
                assert [(p.row_group, p.row) for p in bad] == [row], report.summary()
        os.replace(_restored(part, clean), part)
    print(f"\ndetected of {FLIPS_PER_REGION} per region ({'with' if digest else 'without'} digest): {found}")
    assert found["latent data"] == FLIPS_PER_REGION
    if digest:
        assert found == dict.fromkeys(found, FLIPS_PER_REGION)


def _restored(path: Path, clean: bytes) -> Path:
    tmp = path.with_name(path.name + ".clean")
    tmp.write_bytes(clean)
    return tmp


def test_verify_names_digest_checksum_and_column_damage(
    tmp_path: Path, part_records: list[PartRecord]
) -> None:
    out = _output(tmp_path / "out", part_records[:150])
    part = out / "part_rank00.parquet"
    clean = part.read_bytes()
    regions = _regions(part)
    # A small column's page damaged beyond decoding: named by row group and column, and the digest differs.
    small = [p for p, _ in regions["small columns"]]
    meta = pq.ParquetFile(part).metadata
    prompt = meta.row_group(1).column(0)
    damaged = bytearray(clean)
    for p in range(prompt.data_page_offset + 20, prompt.data_page_offset + prompt.total_compressed_size):
        damaged[p] ^= 0x5A
    assert all(p in set(small) for p in range(prompt.data_page_offset, prompt.data_page_offset + 5))
    tmp = part.with_name("x")
    tmp.write_bytes(bytes(damaged))
    os.replace(tmp, part)
    report = verify(out, progress=False)
    kinds = {(p.kind, p.row_group) for p in report.problems}
    assert ("digest", None) in kinds and ("unreadable_column", 1) in kinds, report.summary()
    assert any("column 'prompt'" in p.detail for p in report.problems if p.kind == "unreadable_column")
    assert check_part_columns(part)[0][:2] == (1, "prompt")
    os.replace(_restored(part, clean), part)
    assert verify(out, progress=False).ok
    summary = verify(out, progress=False).summary()
    assert "300 latents checked" in summary and "whole-file digests: 1 of 1 files checked" in summary


def test_reference_files_are_read_and_reported_unchecked(reference_parts: Path) -> None:
    report = verify(reference_parts, progress=False)
    assert report.ok
    assert report.latents_unchecked == report.latents > 0
    assert "unchecked (files without checksum columns" in report.summary()
    assert read_pairs([(str(reference_parts / "part_rank00.parquet"), 0, 3)])[0][0].shape[0] == 4


def test_an_empty_directory_is_not_ok(tmp_path: Path) -> None:
    report = verify(tmp_path, progress=False)
    assert not report.ok
    assert [p.kind for p in report.problems] == ["no_part_files"]


def test_index_refuses_mixed_provenance(
    tmp_path: Path, part_records: list[PartRecord], small_buckets_json
) -> None:
    part = _write
    base = {
        "format": 1,
        "tool": "hpd-encode 0.1.0",
        "latent": "sample",
        "seed": 0,
        "vae": {"weights": {"w": "aa"}},
    }
    d = tmp_path / "parts"
    d.mkdir()
    part(d / "part_rank00.parquet", part_records[:50], base)
    part(d / "part_rank01.parquet", part_records[50:90], {**base, "tool": "hpd-encode 0.2.0"})  # neutral
    assert build_index(d, buckets=small_buckets_json).height > 0
    part(d / "part_rank02.parquet", part_records[90:99], {**base, "vae": {"weights": {"w": "bb"}}})
    with pytest.raises(MixedProvenanceError) as e:
        build_index(d, buckets=small_buckets_json)
    msg = str(e.value)
    assert "\n" not in msg and "part_rank00.parquet" in msg and "part_rank02.parquet" in msg
    assert 'vae.weights.w ("aa" vs "bb")' in msg and "--allow-mixed" in msg
    assert build_index(d, buckets=small_buckets_json, allow_mixed=True).height > 0
    (d / "part_rank02.parquet").unlink()
    part(d / "part_rank03.parquet", part_records[90:99], None)  # no provenance at all
    with pytest.raises(MixedProvenanceError, match="has no provenance"):
        build_index(d, buckets=small_buckets_json)


def test_repack_keeps_provenance_and_records_its_source(
    tmp_path: Path, part_records: list[PartRecord]
) -> None:
    from hpd_encode.latents.repack import repack

    src = tmp_path / "src"
    src.mkdir()
    prov = {"format": 1, "latent": "mean", "seed": None}
    _write(src / "part_rank00.parquet", part_records[:10], prov)
    repack(src, tmp_path / "dest", progress=False)
    got = read_provenance(tmp_path / "dest" / "part_rank00.parquet")
    assert got is not None
    record = got.pop("repack")
    assert got == prov
    st = (src / "part_rank00.parquet").stat()
    assert record["source"] == {
        "file": "part_rank00.parquet",
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        FILE_DIGEST: _digest(src / "part_rank00.parquet"),
    }
    manifest = json.loads((tmp_path / "dest" / MANIFEST).read_text())
    assert manifest["files"][0][FILE_DIGEST] == _digest(tmp_path / "dest" / "part_rank00.parquet")
    assert verify(tmp_path / "dest", progress=False).files_digest_checked == 1
