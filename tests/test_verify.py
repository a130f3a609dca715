"""hpd_encode.latents.verify and ``hpd-encode verify``: every problem found and named, refusals."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import PART_SPLIT, PartRecord, write_ours_part
from hpd_encode.cli import main
from hpd_encode.errors import OutputBusyError, PartialOutputError
from hpd_encode.latents.repack import write_paged_table
from hpd_encode.latents.verify import verify
from hpd_encode.output_dir import MANIFEST, OutputLock


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def make_output(
    root: Path,
    records: list[PartRecord],
    *,
    status: str = "complete",
    paged: bool = True,
    latent_compression: str = "none",
) -> Path:
    """An encode-like output directory: hpd-encode's schema, a manifest listing the files."""
    root.mkdir(parents=True)
    start, files = 0, []
    for rank, n in enumerate(PART_SPLIT):
        path = root / f"part_rank{rank:02d}.parquet"
        write_ours_part(path, records[start : start + n])
        if paged:
            write_paged_table(pq.read_table(path), path, latent_compression=latent_compression)
        files.append({"path": path.name, "rows": n, "bytes": path.stat().st_size})
        start += n
    (root / MANIFEST).write_text(json.dumps({"status": status, "files": files}))
    return root


def rewrite(path: Path, column: str, row: int, value: object, latent_compression: str = "none") -> None:
    """Set one cell of a part file (keeping the row groups of 100 and the paged layout)."""
    table = pq.read_table(path)
    values = table.column(column).to_pylist()
    values[row] = value
    table = table.set_column(
        table.schema.get_field_index(column), column, pa.array(values, table.schema.field(column).type)
    )
    write_paged_table(table, path, latent_compression=latent_compression)


def test_clean_output_verifies(tmp_path: Path, part_records: list[PartRecord]) -> None:
    out = make_output(tmp_path / "out", part_records)
    report = verify(out, progress=False)
    assert report.ok, report.summary()
    assert (report.files, report.rows, report.latents) == (2, sum(PART_SPLIT), 2 * sum(PART_SPLIT))
    assert report.bytes == sum(p.stat().st_size for p in out.glob("*.parquet"))
    d = report.to_dict()
    assert d["ok"] is True and d["problems"] == [] and json.dumps(d)


def test_old_layout_and_reference_files_verify(reference_parts: Path, tmp_path: Path, part_records) -> None:
    assert verify(reference_parts, progress=False).ok  # no manifest: the files alone
    assert verify(make_output(tmp_path / "old", part_records, paged=False), progress=False).ok


@pytest.mark.parametrize("codec", ["none", "zstd"])
def test_finds_every_problem_by_file_row_group_and_row(
    tmp_path: Path, part_records: list[PartRecord], codec: str
) -> None:
    out = make_output(tmp_path / "out", part_records, latent_compression=codec)
    p0, p1 = out / "part_rank00.parquet", out / "part_rank01.parquet"
    nan = part_records[123].latent(1).copy()
    nan[1, 2, 3] = math.nan
    nan[0, 0, 0] = math.inf
    rewrite(p0, "latent1", 123, _npy(nan), codec)  # row group 1 row 23
    rewrite(p0, "latent2_shape", 250, [4, 1, 1], codec)  # row group 2 row 50: shape disagrees
    rewrite(p1, "record_index", 205, part_records[7].rec, codec)  # row group 2 row 5 of file 1: record 7
    report = verify(out, progress=False)
    assert not report.ok
    found = {(Path(p.file).name, p.row_group, p.row, p.kind) for p in report.problems}
    assert ("part_rank00.parquet", 1, 23, "nonfinite") in found
    assert ("part_rank00.parquet", 2, 50, "shape") in found
    assert ("part_rank01.parquet", 2, 5, "duplicate_record_index") in found
    assert len(report.problems) == 3, report.summary()
    (nonfinite,) = [p for p in report.problems if p.kind == "nonfinite"]
    assert "latent1 has 2 NaN or infinite values" in nonfinite.detail
    (dup,) = [p for p in report.problems if p.kind == "duplicate_record_index"]
    assert "part_rank00.parquet' row group 0 row 7" in dup.detail
    assert "part_rank00.parquet' row group 2 row 50" in str([str(p) for p in report.problems])


def test_manifest_disagreements(tmp_path: Path, part_records: list[PartRecord]) -> None:
    out = make_output(tmp_path / "out", part_records)
    manifest = json.loads((out / MANIFEST).read_text())
    manifest["files"].append({"path": "part_rank02.parquet", "rows": 10, "bytes": 1})
    manifest["files"][1]["rows"] = 999
    (out / MANIFEST).write_text(json.dumps(manifest))
    (out / "part_rank00-0001.parquet").write_bytes((out / "part_rank00.parquet").read_bytes())
    report = verify(out, progress=False)
    kinds = {(Path(p.file).name, p.kind) for p in report.problems}
    assert ("part_rank02.parquet", "missing_file") in kinds
    assert ("part_rank01.parquet", "row_count") in kinds
    assert ("part_rank00-0001.parquet", "unlisted_file") in kinds
    # the copy also repeats every record_index
    assert sum(p.kind == "duplicate_record_index" for p in report.problems) == PART_SPLIT[0]


def test_damaged_files_are_problems_not_crashes(tmp_path: Path, part_records: list[PartRecord]) -> None:
    out = make_output(tmp_path / "out", part_records)
    p1 = out / "part_rank01.parquet"
    data = p1.read_bytes()
    p1.write_bytes(data[: len(data) // 2])
    rewrite(out / "part_rank00.parquet", "latent2", 42, b"\x93NUMPY garbage")
    report = verify(out, progress=False)
    kinds = {(Path(p.file).name, p.row_group, p.row, p.kind) for p in report.problems}
    assert ("part_rank01.parquet", None, None, "unreadable_file") in kinds
    assert ("part_rank00.parquet", 0, 42, "unreadable_latent") in kinds


def test_a_damaged_page_is_blamed_on_its_row(tmp_path: Path, part_records: list[PartRecord]) -> None:
    """A full scan reads a column chunk in one pass; when one page in it is
    damaged, that row (and only that row) is a problem and the rest verify."""
    out = make_output(tmp_path / "out", part_records)
    path = out / "part_rank00.parquet"
    data = bytearray(path.read_bytes())
    chunk = pq.ParquetFile(path).metadata.row_group(1).column(7)  # latent2 of row group 1
    at = chunk.data_page_offset
    for _ in range(31):  # row 30's value is the 31st .npy of the chunk
        pos = data.index(b"\x93NUMPY", at)
        at = pos + 1
    data[pos - 4 : pos + 10] = bytes(14)  # its length prefix and npy magic
    path.write_bytes(bytes(data))
    report = verify(out, progress=False)
    assert [(p.row_group, p.row, p.kind) for p in report.problems] == [(1, 30, "unreadable_latent")]
    assert "latent2" in report.problems[0].detail
    assert report.rows == sum(PART_SPLIT)


def test_refuses_running_and_locked_directories(tmp_path: Path, part_records: list[PartRecord]) -> None:
    out = make_output(tmp_path / "out", part_records, status="running")
    with pytest.raises(PartialOutputError, match="--allow-partial"):
        verify(out, progress=False)
    assert verify(out, allow_partial=True, progress=False).ok
    done = make_output(tmp_path / "done", part_records)
    with OutputLock(done, purpose="encode"):
        with pytest.raises(OutputBusyError, match=r"in use: encode by pid \d+"):
            verify(done, progress=False)
        assert verify(done, allow_partial=True, progress=False).ok
    assert verify(done, progress=False).ok  # released


def test_cli(tmp_path: Path, part_records: list[PartRecord], capsys: pytest.CaptureFixture[str]) -> None:
    out = make_output(tmp_path / "out", part_records)
    assert main(["verify", str(out)]) == 0
    assert "OK: no problems found" in capsys.readouterr().out
    shape = part_records[PART_SPLIT[0] + 3].latent_shape
    rewrite(out / "part_rank01.parquet", "latent1", 3, _npy(np.full(shape, np.nan, np.float32)))
    assert main(["verify", str(out), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False and report["by_kind"] == {"nonfinite": 1}
    assert report["problems"][0]["row_group"] == 0 and report["problems"][0]["row"] == 3
    running = make_output(tmp_path / "running", part_records, status="running")
    assert main(["verify", str(running)]) == 1
    assert "--allow-partial" in capsys.readouterr().err
    assert main(["verify", str(running), "--allow-partial", "-q"]) == 0
