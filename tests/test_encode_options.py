"""Encode options end to end through the CLI: JSON Lines metadata, a bucket
file, float16 storage, and the demo command."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from hpd_encode.cli import main
from hpd_encode.pipeline import list_part_files
from hpd_encode.vae import make_tiny_vae


def _image(path: Path, h: int, w: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)


@pytest.fixture(scope="module")
def vae(tmp_path_factory) -> Path:
    return make_tiny_vae(tmp_path_factory.mktemp("vae"))


def test_jsonl_bucket_file_float16(tmp_path, vae):
    root = tmp_path / "root"
    for i in range(3):
        _image(root / f"a{i}.png", 300, 300, i)
        _image(root / f"b{i}.png", 330, 310, i + 10)
    lines = [
        json.dumps({"prompt": f"p{i}", "path1": f"a{i}.png", "path2": f"b{i}.png", "choice_dist": [2, 1]})
        for i in range(3)
    ]
    meta = tmp_path / "train.jsonl"
    meta.write_text("\n".join(lines[:2] + ["{broken"] + lines[2:]) + "\n")
    buckets = tmp_path / "buckets.json"
    buckets.write_text(json.dumps({"buckets": [[320, 320], [512, 512]], "aspect_tolerance": 0.1}))
    out = tmp_path / "out"
    rc = main(
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
            "--buckets",
            str(buckets),
            "--store-dtype",
            "float16",
            "--latent",
            "mean",
            "-q",
        ]
    )
    assert rc == 0
    rows = pq.read_table(list_part_files(out)[0]).to_pylist()
    assert sorted(r["record_index"] for r in rows) == [0, 1, 3]
    for r in rows:
        lat = np.load(io.BytesIO(r["latent1"]))
        assert lat.dtype == np.float16 and lat.shape == (16, 40, 40)
        assert (r["height"], r["width"], r["bucket_id"]) == (320, 320, 0)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["buckets"]["buckets"] == [[320, 320], [512, 512]]
    assert summary["by_reason"] == {"bad_record": 1}


def test_cli_reports_errors_in_one_line(tmp_path, vae, capsys):
    rc = main(
        [
            "encode",
            "--data-root",
            str(tmp_path / "nope"),
            "--metadata",
            str(tmp_path / "m.json"),
            "--output-dir",
            str(tmp_path / "o"),
            "--vae",
            str(vae),
        ]
    )
    assert rc == 1
    err = capsys.readouterr().err
    assert "error:" in err and "nope" in err and "Traceback" not in err


def test_demo_runs_the_whole_job(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "hpd_encode", "demo", "--output-dir", str(tmp_path / "demo"), "--pairs", "6"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    assert "rows written:      6 this run" in r.stdout
    assert "unsafe_path: 1" in r.stdout and "decode_error: 1" in r.stdout
    assert (tmp_path / "demo" / "index.csv").read_text().count("\n") == 7  # header + 6 rows
    assert (tmp_path / "demo" / "latents" / "part_rank00.parquet").is_file()
