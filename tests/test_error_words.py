"""One line, the right words (issue 24, hostile finding 9): torchrun ranks end
with the one-line error and no traceback; a negative row or row group in an
index names the file and line; ``--metadata`` that is a FIFO, a device or a
directory, and ``verify`` given a file, say what they are; ``repack`` refuses
a part that lacks columns before writing anything."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import indexed_part, torchrun, write_with_encoder
from hpd_encode._core import read_pairs
from hpd_encode.errors import IndexInputError, RowOutOfRangeError
from hpd_encode.index import read_index
from hpd_encode.latents.reader import LatentPairDataset

HANG_S = 300


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=HANG_S)


def _hpd(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return _run([sys.executable, "-m", "hpd_encode", *argv], cwd)


def _one_line(done: subprocess.CompletedProcess[str]) -> str:
    err = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(err) == 1, (done.returncode, done.stderr)
    return err[0]


# ---------------------------------------------------------------------------
# torchrun: every rank ends with one line


def _broken_list(path: Path, at: str) -> None:
    """A JSON list of 300 records, one of them broken near the start or the end (so that one
    rank's byte range holds the error while the other waits for it in a collective)."""
    text = json.dumps(
        [{"prompt": f"p{i}", "path1": f"a{i}.png", "path2": f"b{i}.png"} for i in range(300)], indent=4
    )
    path.write_text(text.replace('"prompt": "p299"' if at == "end" else '"prompt": "p1"', '"prompt": ,'))


@pytest.mark.parametrize("at", ["start", "end"])
def test_torchrun_ranks_end_with_one_line_and_no_traceback(tmp_path: Path, at: str) -> None:
    root = tmp_path / "root"
    root.mkdir()
    meta = tmp_path / "broken.json"
    _broken_list(meta, at)
    cmd = [
        *torchrun(2),
        "-m",
        "hpd_encode",
        "encode",
        "--data-root",
        str(root),
        "--metadata",
        str(meta),
        "--dry-run",
        "-q",
    ]
    done = _run(cmd, tmp_path)
    assert done.returncode != 0
    lines = (done.stdout + done.stderr).splitlines()
    ours = [line for line in lines if line.startswith("hpd-encode encode: error:")]
    assert len(ours) == 2, done.stderr  # one per rank
    assert all("Expecting value" in line for line in ours), ours
    # Nothing from the ranks themselves but that line: no gloo RuntimeError, no traceback
    # (torchrun's own summary of the failed ranks follows; it is the launcher's, not ours).
    assert not [line for line in lines if re.match(r"\[rank\d+\]", line)], done.stderr
    assert "Connection closed by peer" not in done.stderr


# ---------------------------------------------------------------------------
# A damaged index


@pytest.fixture
def index_csv(part_records, tmp_path: Path, small_buckets_json: Path) -> Path:
    return indexed_part(tmp_path, part_records[:50], small_buckets_json)


@pytest.mark.parametrize(
    ("column", "value", "says"),
    [("row_group", "-1", "-1, negative"), ("row_index", "-7", "-7, negative"), ("height", "", "empty")],
)
def test_a_negative_or_empty_value_in_an_index_names_the_file_and_line(
    index_csv: Path, column: str, value: str, says: str
) -> None:
    lines = index_csv.read_text().splitlines()
    header = lines[0].split(",")
    cells = lines[3].split(",")
    cells[header.index(column)] = value
    lines[3] = ",".join(cells)
    index_csv.write_text("\n".join(lines) + "\n")
    for read in (read_index, LatentPairDataset):
        with pytest.raises(IndexInputError) as e:
            read(index_csv)
        message = str(e.value)
        assert str(index_csv) in message and "line 4" in message and f"{column} is {says}" in message, message
        assert "\n" not in message


def test_read_pairs_names_the_file_for_a_negative_row(index_csv: Path) -> None:
    part = read_index(index_csv)["parquet_path"][0]
    for request in ((part, -1, 0), (part, 0, -3)):
        with pytest.raises(RowOutOfRangeError) as e:
            read_pairs([request])
        assert part in str(e.value) and "negative" in str(e.value)
        assert isinstance(e.value, IndexError)


# ---------------------------------------------------------------------------
# Inputs that are not what they should be


def test_metadata_that_is_a_fifo_a_device_or_a_directory_says_so(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    fifo = tmp_path / "train.json"
    os.mkfifo(fifo)  # never opened: a reader of it would wait forever for a writer
    cases = {"FIFO": fifo, "character device": Path("/dev/null"), "directory": root}
    for kind, meta in cases.items():
        for argv in (
            ["encode", "--data-root", str(root), "--metadata", str(meta), "--dry-run"],
            ["check", "--data-root", str(root), "--metadata", str(meta)],
        ):
            line = _one_line(_hpd(*argv, cwd=tmp_path))
            assert f"metadata file '{meta}' is a {kind}, not a regular file" in line, line
            assert "does not exist" not in line
    line = _one_line(
        _hpd("check", "--data-root", str(tmp_path / "nothing"), "--metadata", str(fifo), cwd=tmp_path)
    )
    assert "data root" in line and "does not exist" in line


def test_verify_given_a_file_says_it_is_a_file(index_csv: Path, tmp_path: Path) -> None:
    line = _one_line(_hpd("verify", str(index_csv), cwd=tmp_path))
    assert f"output directory '{index_csv}' is a regular file, not a directory" in line, line
    line = _one_line(_hpd("verify", str(tmp_path / "missing"), cwd=tmp_path))
    assert "does not exist" in line
    line = _one_line(_hpd("repack", str(index_csv), str(tmp_path / "dest"), cwd=tmp_path))
    assert "is a regular file, not a directory" in line, line


@pytest.mark.parametrize("drop", [["latent2"], ["latent1_shape", "latent2_shape"]])
def test_repack_refuses_a_part_that_lacks_columns(part_records, tmp_path: Path, drop: list[str]) -> None:
    src = tmp_path / "src"
    src.mkdir()
    write_with_encoder(src / "part_rank00.parquet", part_records[:20])
    write_with_encoder(src / "part_rank01.parquet", part_records[20:40])
    bad = src / "part_rank01.parquet"
    pq.write_table(pq.read_table(bad).drop_columns(drop), bad)
    dest = tmp_path / "dest"
    line = _one_line(_hpd("repack", str(src), str(dest), cwd=tmp_path))
    assert str(bad) in line and all(c in line for c in drop), line
    assert not dest.exists()  # checked before anything is written
