"""Outputs replace only what they may (issue 24, hostile finding 1).

``index --output/--stats/--plot``, ``check --report`` and ``write_index`` may
replace a regular file, never a FIFO, a device, a directory or a symlink to
one, and never a file of an encode output directory. Device tests use a node
made under tmp with ``os.mknod`` where that is permitted, else ``/dev/null``
only through a symlink, checked to be refused before anything is written.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from hpd_encode.cli import main
from hpd_encode.errors import OutputPathError
from hpd_encode.index import build_index, read_index, write_index
from hpd_encode.output_dir import FAILURES, LOCK_FILE, MANIFEST, SUMMARY

#: Seconds a CLI run may take before it counts as hung (a FIFO opened for writing blocks forever).
HANG_S = 120


def _char_device(tmp_path: Path) -> Path | None:
    """A null device node made under tmp (None where mknod is not permitted)."""
    node = tmp_path / "nulldev"
    try:
        os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except (PermissionError, OSError):
        return None
    return node


def _non_regular_targets(tmp_path: Path) -> dict[str, Path]:
    """Each kind of node an output must not replace."""
    fifo = tmp_path / "fifo.csv"
    os.mkfifo(fifo)
    directory = tmp_path / "adir.csv"
    directory.mkdir()
    to_null = tmp_path / "null-link.csv"
    to_null.symlink_to("/dev/null")
    to_fifo = tmp_path / "fifo-link.csv"
    to_fifo.symlink_to(fifo)
    targets = {
        "fifo": fifo,
        "directory": directory,
        "symlink to /dev/null": to_null,
        "symlink to FIFO": to_fifo,
    }
    device = _char_device(tmp_path)
    if device is not None:
        targets["character device"] = device
    return targets


def _kind(path: Path) -> int:
    return stat.S_IFMT(os.lstat(path).st_mode)


@pytest.fixture
def index_frame(reference_parts: Path, small_buckets_json: Path) -> pl.DataFrame:
    return build_index(reference_parts, buckets=small_buckets_json)


def test_write_index_refuses_every_non_regular_file(tmp_path: Path, index_frame: pl.DataFrame) -> None:
    for name, target in _non_regular_targets(tmp_path).items():
        before = _kind(target)
        with pytest.raises(OutputPathError, match="not a regular file") as e:
            write_index(index_frame, target)
        assert str(target) in str(e.value), name
        assert _kind(target) == before, f"{name} was replaced"
        assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")], "a temporary file was left"
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    # A regular file is still replaced, atomically, and a new path written.
    csv = tmp_path / "index.csv"
    csv.write_text("old")
    write_index(index_frame, csv)
    assert read_index(csv).equals(index_frame)
    write_index(index_frame, tmp_path / "new" / "index.csv")
    assert read_index(tmp_path / "new" / "index.csv").equals(index_frame)


def _encode_dir(tmp_path: Path, reference_parts: Path) -> Path:
    out = tmp_path / "latents"
    shutil.copytree(reference_parts, out)
    (out / MANIFEST).write_text(json.dumps({"status": "complete", "files": []}))
    (out / SUMMARY).write_text("{}")
    (out / FAILURES).write_text("record_index\n")
    (out / LOCK_FILE).write_text("")
    return out


@pytest.mark.parametrize(
    "name", [MANIFEST, SUMMARY, FAILURES, LOCK_FILE, "part_rank00.parquet", "part_rank07.parquet"]
)
def test_write_index_refuses_the_files_of_an_encode_directory(
    tmp_path: Path, reference_parts: Path, index_frame: pl.DataFrame, name: str
) -> None:
    out = _encode_dir(tmp_path, reference_parts)
    target = out / name
    before = target.read_bytes() if target.exists() else None
    with pytest.raises(OutputPathError, match="of the encode output directory") as e:
        write_index(index_frame, target)
    assert str(target) in str(e.value)
    assert (target.read_bytes() if target.exists() else None) == before
    # Another name in the same directory is fine, and so are those names elsewhere.
    write_index(index_frame, out / "index.csv")
    write_index(index_frame, tmp_path / name.replace(".parquet", ".csv"))


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """The CLI in its own process, so that a hang on a FIFO fails the test instead of blocking it."""
    return subprocess.run(
        [sys.executable, "-m", "hpd_encode", *argv], cwd=cwd, capture_output=True, text=True, timeout=HANG_S
    )


@pytest.fixture
def parts_and_buckets(reference_parts: Path, small_buckets_json: Path) -> tuple[Path, Path]:
    return reference_parts, small_buckets_json


@pytest.mark.parametrize("option", ["--output", "--stats", "--plot"])
def test_index_cli_refuses_non_regular_outputs_and_encode_files(
    tmp_path: Path, parts_and_buckets: tuple[Path, Path], option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    reference_parts, small_buckets_json = parts_and_buckets
    out = _encode_dir(tmp_path, reference_parts)
    manifest = (out / MANIFEST).read_bytes()
    defaults = {"--output": tmp_path / "i.csv", "--stats": tmp_path / "s.json", "--plot": tmp_path / "b.png"}
    victims = {**_non_regular_targets(tmp_path), "manifest": out / MANIFEST, "lock": out / LOCK_FILE}

    def argv(victim: Path) -> list[str]:
        args = ["index", "--parquet-dir", str(reference_parts), "--buckets", str(small_buckets_json)]
        for opt, path in {**defaults, option: victim}.items():
            args += [opt, str(path)]
        return args

    for name, victim in victims.items():
        before = _kind(victim)
        if name == "fifo":  # opened for writing, a FIFO blocks: in its own process, with a time limit
            done = _run(argv(victim), tmp_path)
            rc, err = done.returncode, done.stderr.strip().splitlines()
        else:
            rc = main(argv(victim))
            err = capsys.readouterr().err.strip().splitlines()
        assert rc == 1 and len(err) == 1, (name, err)
        assert option in err[0] and str(victim) in err[0], err
        assert _kind(victim) == before, f"{name} was replaced"
        # Refused before anything was written.
        assert not any(p.exists() for p in defaults.values())
    assert (out / MANIFEST).read_bytes() == manifest
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_check_report_refuses_a_fifo_before_probing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    meta = tmp_path / "train.json"
    meta.write_text(json.dumps([{"prompt": "p", "path1": "a.png", "path2": "b.png"}]))
    fifo = tmp_path / "report.csv"
    os.mkfifo(fifo)
    done = _run(["check", "--data-root", str(root), "--metadata", str(meta), "--report", str(fifo)], tmp_path)
    err = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(err) == 1, done.stderr
    assert "--report" in err[0] and "FIFO" in err[0] and str(fifo) in err[0]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    # A regular path gets the report.
    report = tmp_path / "report-ok.csv"
    done = _run(
        ["check", "--data-root", str(root), "--metadata", str(meta), "--report", str(report)], tmp_path
    )
    assert done.returncode == 1 and report.read_text().startswith("index,reason,path,detail")
