"""One writer per output directory, dry runs that touch nothing, and every
bad CLI value as a one-line usage error (exit 2)."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import encode_cmd
from hpd_encode import OutputBusyError, encode
from hpd_encode.cli import main
from hpd_encode.output_dir import LOCK_FILE, OutputLock, list_part_files
from hpd_encode.vae import make_tiny_vae


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> tuple[Path, Path, Path]:
    """12 comparisons of 64x64 images and a tiny VAE: a quick real run."""
    base = tmp_path_factory.mktemp("small")
    root = base / "root"
    rng = np.random.default_rng(0)
    root.mkdir()
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)).save(root / f"{i}.png")
    records = [
        {"prompt": f"p{i}", "path1": f"{i % 8}.png", "path2": f"{(i + 1) % 8}.png", "choice_dist": [3, 1]}
        for i in range(12)
    ]
    meta = base / "train.json"
    meta.write_text(json.dumps(records))
    return root, meta, make_tiny_vae(base / "vae")


def _rows(out: Path) -> list[int]:
    return [
        i
        for p in list_part_files(out)
        for i in pq.read_table(p, columns=["record_index"])["record_index"].to_pylist()
    ]


def _cmd(root: Path, meta: Path, out: Path, vae: Path, *extra: str) -> list[str]:
    return encode_cmd(root, meta, vae, out, "--rows-per-file", "4", *extra)


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_second_run_on_a_locked_directory_refuses_at_once(small, tmp_path, overwrite):
    root, meta, vae = small
    out = tmp_path / "out"
    encode(root, meta, out, vae, latent="mean", progress=False, rows_per_file=4)
    before = {p.name: p.stat().st_mtime_ns for p in list_part_files(out)}
    with OutputLock(out, purpose="encode"):  # another run holds the directory
        r = subprocess.run(
            _cmd(root, meta, out, vae, *(["--overwrite"] if overwrite else [])),
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert r.returncode == 1
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert f"pid {os.getpid()}" in err and socket.gethostname() in err and "in use" in err
    assert {p.name: p.stat().st_mtime_ns for p in list_part_files(out)} == before  # nothing touched
    assert sorted(_rows(out)) == list(range(12))


def test_two_concurrent_runs_never_duplicate_rows(small, tmp_path):
    root, meta, vae = small
    for delay in (0.0, 1.5):
        out = tmp_path / f"out{delay}"
        a = subprocess.Popen(
            _cmd(root, meta, out, vae, "--batch-size", "1"), stderr=subprocess.PIPE, text=True
        )
        time.sleep(delay)
        b = subprocess.Popen(_cmd(root, meta, out, vae, "--overwrite"), stderr=subprocess.PIPE, text=True)
        ra, rb = a.wait(timeout=300), b.wait(timeout=300)
        errs = a.stderr.read() + b.stderr.read()  # type: ignore[union-attr]
        assert sorted((ra, rb)) in ([0, 0], [0, 1]), errs
        if 1 in (ra, rb):
            assert "in use" in errs
        rows = _rows(out)
        assert sorted(rows) == sorted(set(rows)) and set(rows) == set(range(12)), errs


def test_a_killed_holder_never_blocks_a_rerun(small, tmp_path):
    root, meta, vae = small
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import sys, time; from hpd_encode.output_dir import OutputLock\n"
                f"OutputLock({str(out)!r}).acquire(); print('held', flush=True); time.sleep(600)"
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"  # type: ignore[union-attr]
    with pytest.raises(OutputBusyError, match=f"pid {holder.pid}"):
        encode(root, meta, out, vae, latent="mean", progress=False)
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    assert (out / LOCK_FILE).exists()  # the stale file stays, the lock is gone with its process
    s = encode(root, meta, out, vae, latent="mean", progress=False)
    assert s.rows_written == 12 and sorted(_rows(out)) == list(range(12))


def test_dry_run_leaves_no_trace(small, tmp_path, capsys):
    root, meta, vae = small
    missing = tmp_path / "not-yet"
    assert (
        main(
            [
                "encode",
                "--data-root",
                str(root),
                "--metadata",
                str(meta),
                "--output-dir",
                str(missing),
                "--dry-run",
                "--json",
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    # 12 pairs over 8 images, all at 256x256: each image encoded once.
    assert report["rows_planned"] == 12 and report["jobs"] == 8 and report["dropped_by_reason"] == {}
    assert report["batches_per_bucket"] and report["pixel_cost_per_rank"] == [8 * 256 * 256]
    assert not missing.exists()
    # An existing output directory: unchanged, and its committed rows count as done.
    out = tmp_path / "out"
    encode(root, meta, out, vae, latent="mean", progress=False, limit=5)
    listing = {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in out.iterdir()}
    report = encode(root, meta, out, None, dry_run=True)
    assert report.records_already_done == 5 and report.rows_planned == 7
    assert {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in out.iterdir()} == listing


@pytest.mark.parametrize(
    "args",
    [
        ["--num-threads", "-1"],
        ["--workers", "0"],
        ["--device", "banana"],
        ["--device", "cuda:x"],
        ["--batch-size", "0"],
        ["--batch-size", "many"],
        ["--rows-per-file", "-5"],
        ["--limit", "-1"],
        ["--seed", "1.5"],
        ["--max-pixels", "0"],
        ["--latent", "median"],
        ["--vae", "./no/such/folder"],
        ["--buckets", "BUCKETS_BAD_SIDE"],
        ["--buckets", "BUCKETS_HUGE_MIN"],
        ["--buckets", "missing.json"],
        ["--json"],
    ],
)
def test_every_bad_option_is_a_one_line_usage_error(small, tmp_path, args, capsys):
    root, meta, vae = small
    bad_side = tmp_path / "bad_side.json"
    bad_side.write_text(json.dumps([[256.7, 256]]))
    huge = tmp_path / "huge.json"
    huge.write_text(json.dumps({"buckets": [[256, 256]], "min_pixels": 1e30}))
    args = [
        str(bad_side) if a == "BUCKETS_BAD_SIDE" else str(huge) if a == "BUCKETS_HUGE_MIN" else a
        for a in args
    ]
    base = ["encode", "--data-root", str(root), "--metadata", str(meta), "--output-dir", str(tmp_path / "o")]
    if "--vae" not in args:
        base += ["--vae", str(vae)]
    with pytest.raises(SystemExit) as exc:
        main(base + args)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("hpd-encode encode: error:"), err
    assert not (tmp_path / "o").exists()  # nothing written before the options are valid


def test_cuda_without_cuda_is_refused_before_anything_is_written(small, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    root, meta, vae = small
    out = tmp_path / "o"
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "encode",
                "--data-root",
                str(root),
                "--metadata",
                str(meta),
                "--output-dir",
                str(out),
                "--vae",
                str(vae),
                "--device",
                "cuda",
            ]
        )
    assert exc.value.code == 2 and "CUDA is not available" in capsys.readouterr().err
    assert not out.exists()
    # and a CPU run afterwards is a fresh run, not a refused resume
    assert encode(root, meta, out, vae, device="cpu", latent="mean", progress=False).rows_written == 12


def test_deprecated_workers_still_works(small, tmp_path, capsys):
    root, meta, vae = small
    rc = main(["encode", "--data-root", str(root), "--metadata", str(meta), "--dry-run", "--workers", "1"])
    assert rc == 0 and "--workers is deprecated; use --num-threads" in capsys.readouterr().err
    with pytest.warns(DeprecationWarning, match="num_threads"):
        encode(root, meta, None, None, dry_run=True, workers=1)


def test_fifo_device_and_escaping_symlinks_are_per_record_failures(small, tmp_path):
    """Named like images: a FIFO, a device, a symlink out of the root. Neither
    `check` nor `encode` hangs or stops; each is that record's failure."""
    root, meta, vae = small
    data = tmp_path / "root"
    data.mkdir()
    for p in root.iterdir():
        os.link(p, data / p.name)
    os.mkfifo(data / "fifo.jpg")
    os.symlink("/dev/zero", data / "zero.png")
    (tmp_path / "outside.png").write_bytes((root / "0.png").read_bytes())
    os.symlink(tmp_path / "outside.png", data / "escape.png")
    records = json.loads(meta.read_text())[:4] + [
        {"prompt": "fifo", "path1": "0.png", "path2": "fifo.jpg"},
        {"prompt": "zero", "path1": "zero.png", "path2": "1.png"},
        {"prompt": "escape", "path1": "2.png", "path2": "escape.png"},
    ]
    m = tmp_path / "train.json"
    m.write_text(json.dumps(records))
    out = tmp_path / "out"
    r = subprocess.run(_cmd(data, m, out, vae), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert sorted(_rows(out)) == [0, 1, 2, 3]
    with open(out / "failures.csv", newline="") as f:
        rows = {int(r["record_index"]): r for r in csv.DictReader(f)}
    assert rows[4]["stage"] == "probe" and "not a regular file (FIFO)" in rows[4]["reason"]
    assert rows[5]["stage"] == "path" and "'/dev/zero', outside the data root" in rows[5]["reason"]
    assert rows[6]["stage"] == "path" and rows[6]["reason"].startswith(
        "unsafe_path: path 'escape.png' resolves to"
    )
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "hpd_encode",
            "check",
            "--data-root",
            str(data),
            "--metadata",
            str(m),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 1 and json.loads(r.stdout)["ok"] == 4, r.stderr


def test_a_symlink_swapped_in_after_planning_is_refused_at_decode(small, tmp_path):
    """The survey sees a real image; before decoding it becomes a symlink out of
    the root. The decode (opened beneath the root) refuses it."""
    from hpd_encode import _core
    from hpd_encode.output_dir import PartRotator
    from hpd_encode.pipeline import EncodeOptions
    from hpd_encode.pipeline.encoder import Encoder, Progress
    from hpd_encode.pipeline.options import BatchSize
    from hpd_encode.pipeline.plan import apply_pair_rules, order_and_batch
    from hpd_encode.pipeline.survey import survey
    from hpd_encode.vae import load_vae

    root, meta, vae_dir = small
    data = tmp_path / "root"
    data.mkdir()
    for p in root.iterdir():
        (data / p.name).write_bytes(p.read_bytes())
    opts = EncodeOptions.create(data, meta, tmp_path / "out", vae_dir, latent="mean", limit=4)
    s = survey(data, meta, limit=4)
    plan = order_and_batch(
        apply_pair_rules(s.pairable, opts.plan.buckets).rows, True, BatchSize(fixed=2), "cpu"
    )
    assert plan.n_rows == 4
    (tmp_path / "outside.png").write_bytes((data / "1.png").read_bytes())
    (data / "1.png").unlink()
    os.symlink(tmp_path / "outside.png", data / "1.png")  # swapped in after planning
    (tmp_path / "out").mkdir()
    rotator = PartRotator(tmp_path / "out", 0, 0)
    enc = Encoder(opts.encoder, plan, s.images["path"], load_vae(str(vae_dir), device="cpu"), rotator)
    enc.run(Progress(plan.n_rows, False, 0))
    rotator.commit()
    bad = {f.record_index: f for f in enc.failures}
    assert set(bad) == {0, 1}  # the two records with image 1
    assert all(f.kind == "decode_error" and "outside the data root" in f.detail for f in bad.values())
    assert sorted(_rows(tmp_path / "out")) == [2, 3]
    assert _core.PROBE_UNSAFE_PATH == _core.probe_paths(data, ["1.png"])[2][0]


def test_a_row_the_writer_refuses_is_left_out_and_nothing_is_written_twice(tmp_path):
    """Rows split across two part files, a bad one in the second: the bad row is
    returned with its error, every other row lands exactly once."""
    from hpd_encode.errors import InvalidRowError
    from hpd_encode.output_dir import PartRotator

    def row(i: int, votes: int = 1) -> dict:
        z = np.full((4, 8, 8), i, dtype=np.float32)
        return {
            "prompt": f"p{i}",
            "image1_path": "a.png",
            "image2_path": "b.png",
            "latent1": z,
            "latent2": z,
            "height": 64,
            "width": 64,
            "record_index": i,
            "votes_chosen": votes,
        }

    rotator = PartRotator(tmp_path, 0, rows_per_file=3)
    refused = rotator.submit([row(0), row(1), row(2), row(3), row(4, votes=-1), row(5)])
    rotator.commit()
    assert [r["record_index"] for r, _ in refused] == [4]
    assert isinstance(refused[0][1], InvalidRowError) and "votes_chosen" in str(refused[0][1])
    assert sorted(_rows(tmp_path)) == [0, 1, 2, 3, 5]
    assert [f["rows"] for f in rotator.files] == [3, 2]
