"""No hangs, bounded memory (issue 24, hostile finding 7).

(a) A FIFO named like a part file is refused without blocking by every
    reader of part files: ``verify``, ``repack``, a resume and a dry run on the
    output directory, ``index``, ``read_pairs`` and ``LatentPairDataset``. Each
    runs in its own process with a time limit (before the fix they waited
    forever for a writer).
(b) ``load_batch`` refuses a new batch above the memory available now, even
    when RAM and swap could hold it, before allocating (never zero-filled
    into the OOM killer).
(c) ``LatentPairDataset.__getitems__`` refuses a request above its
    ``max_request_bytes``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import encode_cmd, indexed_part, random_pngs
from hpd_encode.errors import OutOfMemoryError
from hpd_encode.latents.reader import LatentPairDataset
from hpd_encode.vae import make_tiny_vae

#: Seconds a command may take before it counts as hung.
HANG_S = 180


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=HANG_S)


def _python(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return _run([sys.executable, "-c", textwrap.dedent(script), *args], cwd)


def _one_line(done: subprocess.CompletedProcess[str]) -> str:
    err = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(err) == 1, (done.returncode, done.stdout, done.stderr)
    return err[0]


@pytest.fixture(scope="module")
def encoded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, Path]:
    """A finished encode run: (data root, metadata, VAE, output directory)."""
    base = tmp_path_factory.mktemp("encoded")
    root = base / "root"
    random_pngs(root, 4, 256)
    meta = base / "train.json"
    meta.write_text(
        json.dumps(
            [{"prompt": f"p{i}", "path1": f"{i}.png", "path2": f"{(i + 1) % 4}.png"} for i in range(4)]
        )
    )
    vae = make_tiny_vae(base / "vae")
    out = base / "out"
    done = _run(encode_cmd(root, meta, vae, out), base)
    assert done.returncode == 0, done.stderr
    assert (out / "part_rank00.parquet").is_file()
    return root, meta, vae, out


@pytest.fixture
def fifo_output(encoded, tmp_path: Path) -> Path:
    """A copy of the finished output whose ``part_rank00.parquet`` is a FIFO no one writes to."""
    out = tmp_path / "out"
    shutil.copytree(encoded[3], out)
    (out / "part_rank00.parquet").unlink()
    os.mkfifo(out / "part_rank00.parquet")
    return out


def _mentions_fifo(line: str) -> None:
    assert "FIFO" in line and "part_rank00.parquet" in line, line
    assert "does not exist" not in line, line


def test_verify_and_repack_refuse_a_fifo_part(fifo_output: Path, tmp_path: Path) -> None:
    done = _run([sys.executable, "-m", "hpd_encode", "verify", str(fifo_output), "--json"], tmp_path)
    report = json.loads(done.stdout)
    assert done.returncode == 1 and not report["ok"], done.stderr
    problems = [p for p in report["problems"] if p["file"].endswith("part_rank00.parquet")]
    assert problems and problems[0]["kind"] == "unreadable_file", report["problems"]
    _mentions_fifo(problems[0]["detail"])

    dest = tmp_path / "dest"
    line = _one_line(
        _run([sys.executable, "-m", "hpd_encode", "repack", str(fifo_output), str(dest)], tmp_path)
    )
    _mentions_fifo(line)
    assert not dest.exists() or not list(dest.iterdir())  # refused before anything is written


def test_a_dry_run_and_a_resume_refuse_a_fifo_part(encoded, fifo_output: Path, tmp_path: Path) -> None:
    root, meta, vae, _ = encoded
    manifest = (fifo_output / "manifest.json").read_text()
    _mentions_fifo(_one_line(_run([*encode_cmd(root, meta, vae, fifo_output), "--dry-run"], tmp_path)))
    assert (fifo_output / "manifest.json").read_text() == manifest  # a dry run writes nothing
    _mentions_fifo(_one_line(_run(encode_cmd(root, meta, vae, fifo_output), tmp_path)))


def test_index_refuses_a_fifo_part(fifo_output: Path, tmp_path: Path) -> None:
    for source in (fifo_output / "part_rank00.parquet", fifo_output / "*.parquet"):
        argv = [
            sys.executable,
            "-m",
            "hpd_encode",
            "index",
            "--parquet-dir",
            str(source),
            "--output",
            "i.csv",
        ]
        done = _run(argv, tmp_path)
        if source.name == "*.parquet":  # a glob skips what is not a file
            assert done.returncode in (0, 1), done.stderr
            continue
        _mentions_fifo(_one_line(done))


def test_the_readers_refuse_a_fifo_part(part_records, tmp_path: Path, small_buckets_json: Path) -> None:
    index = indexed_part(tmp_path, part_records[:50], small_buckets_json)
    parts = tmp_path / "parts"
    # The file turns into a FIFO after the index was built (and after a dataset was made).
    script = """
        import os, sys
        from hpd_encode._core import latent_layout, parquet_layout, read_pairs
        from hpd_encode.latents.reader import LatentPairDataset
        part, index = sys.argv[1], sys.argv[2]
        ds = LatentPairDataset(index)
        os.unlink(part)
        os.mkfifo(part)
        calls = {
            "read_pairs": lambda: read_pairs([(part, 0, 0)]),
            "latent_layout": lambda: latent_layout(part),
            "parquet_layout": lambda: parquet_layout(part),
            "ds[0]": lambda: ds[0],
            "LatentPairDataset": lambda: LatentPairDataset(index),
        }
        for name, call in calls.items():
            try:
                call()
                print(name, "READ")
            except Exception as e:
                print(name, type(e).__name__, str(e).replace(chr(10), " | "))
    """
    done = _python(script, str(parts / "part_rank00.parquet"), str(index), cwd=tmp_path)
    lines = done.stdout.strip().splitlines()
    assert done.returncode == 0 and len(lines) == 5, done.stdout + done.stderr
    for line in lines:
        assert "NotRegularFileError" in line, line
        _mentions_fifo(line)


# ---------------------------------------------------------------------------
# (b) load_batch and the memory available now


def _meminfo() -> dict[str, int]:
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, value = line.split(":")
            out[key] = int(value.split()[0]) * 1024
    return out


@pytest.mark.skipif(not os.path.exists("/proc/meminfo"), reason="needs /proc/meminfo")
def test_load_batch_refuses_a_batch_above_the_memory_available_now(tmp_path: Path) -> None:
    """A uint8 batch just under all of RAM: within RAM and swap (what the old check allowed), above
    MemAvailable. Run in a process whose address space is capped well below the batch, so that
    should the check be missing the allocation fails there (a different message) instead of
    zero-filling gigabytes on this machine."""
    info = _meminfo()
    batch = info["MemTotal"] - (64 << 20)
    if info["MemAvailable"] >= batch:
        pytest.skip("nearly all of RAM is available: nothing between the two bounds to test")
    width = batch // 3
    script = f"""
        import resource, sys
        vm = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
        cap = vm + (2 << 30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        import numpy as np
        import hpd_encode as hpd
        for kw in ({{}}, {{"normalize": True}}):
            w = {width} if not kw else {width} // 4
            try:
                hpd.load_batch(["missing.png"], (1, w), max_pixels=10**15, **kw)
                print("LOADED")
            except MemoryError as e:
                print(type(e).__name__, e)
    """
    done = _python(script, cwd=tmp_path)
    lines = done.stdout.strip().splitlines()
    assert done.returncode == 0 and len(lines) == 2, done.stdout + done.stderr
    for line in lines:
        assert line.startswith("OutOfMemoryError"), line
        assert "available now" in line and "a batch of 1 images of 1x" in line, line


# ---------------------------------------------------------------------------
# (c) a request's byte budget


def test_getitems_refuses_a_request_over_its_byte_budget(
    part_records, tmp_path: Path, small_buckets_json: Path
) -> None:
    index = indexed_part(tmp_path, part_records[:300], small_buckets_json)
    ds = LatentPairDataset(index)
    pair_bytes = [it["latent1"].nbytes + it["latent2"].nbytes for it in ds.__getitems__(range(len(ds)))]
    assert len(ds) > 150 and min(pair_bytes) > 0
    # A budget that fits the first 100 pairs only.
    budget = sum(pair_bytes[:100])
    small = LatentPairDataset(index, max_request_bytes=budget)
    assert len(small.__getitems__(range(100))) == 100  # at the budget: fine
    assert small[150]["global_id"] == 150
    for request in (range(101), range(len(ds)), [0] * 70 + list(range(100, 200))):
        with pytest.raises(OutOfMemoryError, match=r"max_request_bytes \(") as e:
            small.__getitems__(request)
        assert isinstance(e.value, MemoryError)
        assert f"a request of {len(request)} pairs" in str(e.value)
    with pytest.raises(ValueError, match="max_request_bytes"):
        LatentPairDataset(index, max_request_bytes=0)
