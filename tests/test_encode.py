"""End-to-end tests of the encode job on CPU with tiny random VAEs, real image
files, real Parquet files and real torchrun processes."""

from __future__ import annotations

import ast
import io
import itertools
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

import hpd_encode
from conftest import encode_cmd, torchrun
from hpd_encode.pipeline import encode, list_part_files
from hpd_encode.schema import PART_SCHEMA
from hpd_encode.vae import load_vae, make_tiny_vae

# (height, width) of generated images; each prompt's images share a size, the
# last two are a different-but-compatible pair and a no-bucket misfit.
SIZES = [(256, 256), (512, 512), (260, 250), (384, 512)]


def _photo(seed: int, h: int, w: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / 37.0
    base = np.stack([np.sin(x + seed), np.cos(y * 1.3 + seed), np.sin(x * y / 50 + seed)], axis=-1)
    arr = ((base + rng.normal(0, 0.15, base.shape) + 1.5) / 3 * 255).clip(0, 255).astype(np.uint8)
    return Image.fromarray(arr)


def build_dataset(root: Path, n_prompts: int = 6) -> Path:
    """Prompts with 3-4 images each and all their pairwise comparisons, plus bad records."""
    fmts = ["jpg", "png", "webp"]
    records = []
    for p in range(n_prompts):
        h, w = SIZES[p % len(SIZES)]
        names = []
        for k in range(3 + p % 2):
            rel = f"img/p{p}/m{k}.{fmts[(p + k) % 3]}"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            _photo(p * 10 + k, h, w).save(root / rel, quality=90)
            names.append(rel)
        for i, (a, b) in enumerate(itertools.combinations(names, 2)):
            records.append(
                {
                    "prompt": f"prompt {p}",
                    "path1": a,
                    "path2": b,
                    "model1": "ma",
                    "model2": "mb",
                    "choice_dist": [3 + i, i],
                    "confidence": 0.5 + i / 100,
                }
            )
    outside = root.parent / "outside.png"
    _photo(99, 256, 256).save(outside)
    (root / "img" / "bad").mkdir(parents=True, exist_ok=True)
    (root / "img" / "bad" / "empty.jpg").write_bytes(b"")
    _photo(98, 100, 900).save(root / "img" / "bad" / "wide.png")
    good = records[0]["path1"]
    records += [
        {"prompt": "escape", "path1": good, "path2": "../outside.png"},
        {"prompt": "absolute", "path1": str(outside), "path2": good},
        {"prompt": "empty file", "path1": good, "path2": "img/bad/empty.jpg"},
        {"prompt": "no bucket", "path1": good, "path2": "img/bad/wide.png"},
        {"prompt": "missing", "path1": good, "path2": "img/none.png", "choice_dist": None},
        ["not", "a", "record"],
    ]
    meta = root / "train.json"
    meta.write_text(json.dumps(records))
    return meta


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("ds") / "root"
    root.mkdir()
    return root, build_dataset(root)


@pytest.fixture(scope="module")
def tiny_vae(tmp_path_factory) -> Path:
    return make_tiny_vae(tmp_path_factory.mktemp("vae"))


@pytest.fixture(scope="module")
def qwen_vae(tmp_path_factory) -> Path:
    return make_tiny_vae(tmp_path_factory.mktemp("qvae"), kind="qwen")


def read_rows(out: Path) -> dict[int, dict]:
    rows = {}
    for p in list_part_files(out):
        for r in pq.read_table(p).to_pylist():
            assert r["record_index"] not in rows, f"duplicate record {r['record_index']}"
            rows[r["record_index"]] = r
    return rows


@pytest.fixture(scope="module")
def mean_run(dataset, tiny_vae, tmp_path_factory) -> tuple[Path, dict]:
    root, meta = dataset
    out = tmp_path_factory.mktemp("out") / "mean"
    summary = encode(root, meta, out, tiny_vae, latent="mean", batch_size=1, progress=False)
    return out, summary


def expected_survivors(root: Path, meta: Path) -> dict[int, tuple[int, int]]:
    """The pair rules applied independently of the pipeline (PIL sizes + BucketSet)."""
    buckets = hpd_encode.BucketSet.hpdv3()
    keep = {}
    for i, r in enumerate(json.loads(meta.read_text())):
        if not isinstance(r, dict) or ".." in r["path2"] or os.path.isabs(r["path1"]):
            continue
        try:
            (h1, w1), (h2, w2) = [Image.open(root / p).size[::-1] for p in (r["path1"], r["path2"])]
        except (OSError, Image.UnidentifiedImageError):
            continue
        b = buckets.assign_pair(h1, w1, h2, w2)
        if b is not None:
            keep[i] = buckets.buckets[b]
    return keep


def test_schema_contents_and_survivors(dataset, mean_run):
    root, meta = dataset
    out, summary = mean_run
    assert [p.name for p in list_part_files(out)] == ["part_rank00.parquet"]
    table = pq.read_table(out / "part_rank00.parquet")
    assert table.schema.names == PART_SCHEMA.names
    for field in PART_SCHEMA:
        assert table.schema.field(field.name).type == field.type, field.name
    pf = pq.ParquetFile(out / "part_rank00.parquet")
    assert all(pf.metadata.row_group(i).num_rows <= 100 for i in range(pf.metadata.num_row_groups))
    assert pf.metadata.row_group(0).column(0).compression == "ZSTD"

    rows = read_rows(out)
    expected = expected_survivors(root, meta)
    assert set(rows) == set(expected)
    records = json.loads(meta.read_text())
    for idx, row in rows.items():
        rec = records[idx]
        h, w = expected[idx]
        details = ast.literal_eval(row["detailed_results"])
        assert details["votes_chosen"] == rec["choice_dist"][0]
        assert details["votes_rejected"] == rec["choice_dist"][1]
        assert details["confidence"] == rec["confidence"]
        assert details["final_chosen_hw"] == details["final_rejected_hw"] == [h, w]
        assert details["orig_chosen_hw"] == list(Image.open(root / rec["path1"]).size[::-1])
        assert (row["prompt"], row["image1_path"], row["image2_path"]) == (
            rec["prompt"],
            rec["path1"],
            rec["path2"],
        )
        for k in ("latent1", "latent2"):
            arr = np.load(io.BytesIO(row[k]))
            assert arr.dtype == np.float32 and arr.shape == (16, h // 8, w // 8)
            assert list(arr.shape) == row[f"{k}_shape"]
        assert (row["height"], row["width"]) == (h, w)
        assert hpd_encode.BucketSet.hpdv3().buckets[row["bucket_id"]] == (h, w)

    # Every other record is accounted for, with its reason.
    with open(out / "failures.csv") as f:
        failed = {int(line.split(",")[0]): line for line in f.read().splitlines()[1:]}
    assert set(failed) | set(rows) == set(range(len(records)))
    assert "unsafe_path" in failed[len(records) - 6] and "unsafe_path" in failed[len(records) - 5]
    assert "empty" in failed[len(records) - 4] and "img/bad/empty.jpg" in failed[len(records) - 4]
    assert "no_bucket" in failed[len(records) - 3]
    assert "No such file" in failed[len(records) - 2]
    assert "bad_record" in failed[len(records) - 1]
    s = json.loads((out / "summary.json").read_text())
    assert s["rows_written"] == len(rows) == s["rows_total"]
    assert s["failed_or_dropped"] == len(failed)
    assert json.loads((out / "manifest.json").read_text())["status"] == "complete"


def test_images_encoded_once_per_image_and_size(dataset, mean_run):
    root, meta = dataset
    out, summary = mean_run
    rows = read_rows(out)
    jobs = {(r[k], r["height"], r["width"]) for r in rows.values() for k in ("image1_path", "image2_path")}
    assert summary["images_encoded"] == len(jobs)
    assert summary["images_encoded"] < 2 * summary["rows_written"]


def test_mean_latents_equal_direct_diffusers_encode(dataset, mean_run, tiny_vae):
    root, _ = dataset
    out, _ = mean_run
    from diffusers import AutoencoderKL

    model = AutoencoderKL.from_pretrained(tiny_vae, subfolder="vae").eval()
    shift, scale = model.config.shift_factor, model.config.scaling_factor
    for row in list(read_rows(out).values())[:4]:
        pixels = hpd_encode.load_image(root / row["image1_path"], (row["height"], row["width"]))
        x = (torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 127.5 - 1).contiguous()
        with torch.no_grad():
            z = (model.encode(x).latent_dist.mean - shift) * scale
        np.testing.assert_allclose(np.load(io.BytesIO(row["latent1"])), z[0].numpy(), rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", ["kl", "qwen"])
def test_encode_pixels_takes_uint8_or_normalized_float(dataset, tiny_vae, qwen_vae, kind):
    """The CPU encode feeds ``load_batch(normalize=True)``'s float NCHW batch, a
    GPU the uint8 NHWC batch; on the CPU both give the same latents, bit for bit."""
    from hpd_encode.vae import encode_pixels

    root, _ = dataset
    vae = load_vae(str(tiny_vae if kind == "kl" else qwen_vae), device="cpu")
    paths = sorted(root.glob("img/p1/*"))[:3]
    u8, errors = hpd_encode.load_batch(paths, (256, 256))
    x, x_errors = hpd_encode.load_batch(paths, (256, 256), normalize=True)
    assert errors == x_errors == [None] * len(paths)
    z_u8 = encode_pixels(vae, torch.from_numpy(u8), mode="mean")
    z_x = encode_pixels(vae, torch.from_numpy(x), mode="mean")
    assert torch.equal(z_u8, z_x)
    with pytest.raises(ValueError, match="B, 3, H, W"):
        encode_pixels(vae, torch.from_numpy(x).permute(0, 2, 3, 1), mode="mean")


def test_share_matches_no_share_byte_for_byte(dataset, mean_run, tiny_vae, tmp_path):
    root, meta = dataset
    out, shared = mean_run
    summary = encode(
        root, meta, tmp_path / "noshare", tiny_vae, latent="mean", batch_size=1, share=False, progress=False
    )
    assert summary["images_encoded"] == 2 * summary["rows_written"] > shared["images_encoded"]
    a, b = read_rows(out), read_rows(tmp_path / "noshare")
    assert a.keys() == b.keys()
    for k in a:
        assert a[k] == b[k]


def test_sample_mode_is_seeded_and_consistent_across_rows(dataset, tiny_vae, tmp_path):
    root, meta = dataset
    s1 = encode(root, meta, tmp_path / "s1", tiny_vae, latent="sample", seed=7, progress=False, limit=12)
    s2 = encode(
        root,
        meta,
        tmp_path / "s2",
        tiny_vae,
        latent="sample",
        seed=7,
        progress=False,
        limit=12,
        share=False,
        batch_size=1,
    )
    assert s1["rows_written"] == s2["rows_written"] > 0
    a, b = read_rows(tmp_path / "s1"), read_rows(tmp_path / "s2")
    by_image: dict[tuple, np.ndarray] = {}
    for k in a:
        for side in ("1", "2"):
            la = np.load(io.BytesIO(a[k][f"latent{side}"]))
            np.testing.assert_allclose(la, np.load(io.BytesIO(b[k][f"latent{side}"])), atol=1e-4)
            key = (a[k][f"image{side}_path"], a[k]["height"], a[k]["width"])
            if key in by_image:
                assert np.array_equal(by_image[key], la), "an image's latent differs between rows"
            by_image[key] = la
    s3 = encode(root, meta, tmp_path / "s3", tiny_vae, latent="sample", seed=8, progress=False, limit=3)
    assert s3.rows_written > 0
    c = read_rows(tmp_path / "s3")
    k = next(iter(c))
    assert not np.allclose(np.load(io.BytesIO(c[k]["latent1"])), np.load(io.BytesIO(a[k]["latent1"])))


def test_resume_refuses_changed_settings(dataset, tiny_vae, tmp_path):
    root, meta = dataset
    out = tmp_path / "o"
    encode(root, meta, out, tiny_vae, latent="mean", progress=False, limit=3)
    with pytest.raises(ValueError, match="different settings.*latent"):
        encode(root, meta, out, tiny_vae, latent="sample", progress=False, limit=3)
    s = encode(root, meta, out, tiny_vae, latent="sample", progress=False, limit=3, overwrite=True)
    assert s["records_already_done"] == 0 and s["rows_written"] == 3
    again = encode(root, meta, out, tiny_vae, latent="sample", progress=False, limit=3)
    assert again["rows_written"] == 0 and again["records_already_done"] == 3 and again["rows_total"] == 3
    # The same VAE folder named another way (relative, trailing slash) is the same run.
    relative = os.path.relpath(tiny_vae) + os.sep
    same = encode(root, meta, out, relative, latent="sample", progress=False, limit=3)
    assert same["records_already_done"] == 3 and same["rows_written"] == 0


def test_qwen_vae_end_to_end(dataset, qwen_vae, tmp_path):
    root, meta = dataset
    s = encode(root, meta, tmp_path / "q", qwen_vae, latent="mean", progress=False, limit=6, batch_size=1)
    assert s["rows_written"] == 6
    rows = read_rows(tmp_path / "q")
    vae = load_vae(str(qwen_vae))
    row = rows[0]
    pixels = hpd_encode.load_image(root / row["image2_path"], (row["height"], row["width"]))
    x = (torch.from_numpy(pixels).permute(2, 0, 1)[None, :, None].float() / 127.5 - 1).contiguous()
    with torch.no_grad():
        z = vae.model.encode(x).latent_dist.mean[:, :, 0]
    mean = torch.tensor(vae.config["latents_mean"]).view(1, -1, 1, 1)
    std = torch.tensor(vae.config["latents_std"]).view(1, -1, 1, 1)
    stored = np.load(io.BytesIO(row["latent2"]))
    assert stored.shape == (16, row["height"] // 8, row["width"] // 8)
    np.testing.assert_allclose(stored, ((z - mean) / std)[0].numpy(), atol=1e-5)


def test_nonfinite_latents_are_quarantined(dataset, tmp_path):
    root, meta = dataset
    vae_dir = make_tiny_vae(tmp_path / "hot")
    cfg_path = vae_dir / "vae" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["scaling_factor"] = 1e39  # beyond float32: every latent becomes +-inf or NaN
    cfg_path.write_text(json.dumps(cfg))
    s = encode(root, meta, tmp_path / "o", vae_dir, latent="mean", progress=False, limit=4)
    assert s["rows_written"] == 0 and s["rows_total"] == 0
    assert s["by_stage"]["nonfinite"] == 4
    assert "NaN/Inf" in (tmp_path / "o" / "failures.csv").read_text()


def _encode_cmd(root: Path, meta: Path, vae: Path, out: Path, *extra: str) -> list[str]:
    return encode_cmd(root, meta, vae, out, "--batch-size", "1", *extra)


def test_kill_9_then_resume(dataset, tiny_vae, mean_run, tmp_path):
    root, meta = dataset
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        _encode_cmd(root, meta, tiny_vae, out, "--rows-per-file", "3"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list_part_files(out)) < 2 and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    committed = list_part_files(out)
    assert committed, "the run was killed before committing anything; test timing is off"
    done_before = sum(pq.ParquetFile(p).metadata.num_rows for p in committed)
    r = subprocess.run(
        _encode_cmd(root, meta, tiny_vae, out, "--rows-per-file", "3"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["records_already_done"] == done_before > 0
    rows = read_rows(out)  # asserts no duplicates
    reference = read_rows(mean_run[0])
    assert rows.keys() == reference.keys()
    for k in rows:
        assert rows[k]["latent1"] == reference[k]["latent1"]
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]


@pytest.mark.slow
def test_torchrun_two_ranks_same_rows_as_one(dataset, tiny_vae, mean_run, tmp_path):
    root, meta = dataset
    out = tmp_path / "tr"
    cmd = [*torchrun(2), "-m", "hpd_encode", *_encode_cmd(root, meta, tiny_vae, out)[3:]]
    r = subprocess.run(
        cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert r.returncode == 0, r.stderr[-8000:]
    names = sorted(p.name for p in list_part_files(out))
    assert names == ["part_rank00.parquet", "part_rank01.parquet"]
    per_rank = [set(pq.read_table(out / n, columns=["record_index"]).column(0).to_pylist()) for n in names]
    assert per_rank[0] and per_rank[1] and not per_rank[0] & per_rank[1]
    rows, reference = read_rows(out), read_rows(mean_run[0])
    assert rows.keys() == reference.keys()
    for k in rows:
        np.testing.assert_allclose(
            np.load(io.BytesIO(rows[k]["latent2"])), np.load(io.BytesIO(reference[k]["latent2"])), atol=1e-5
        )
    # Images are encoded by one rank only: the two ranks' image sets are disjoint.
    imgs = [
        set(pq.read_table(out / n, columns=["image1_path"]).column(0).to_pylist())
        | set(pq.read_table(out / n, columns=["image2_path"]).column(0).to_pylist())
        for n in names
    ]
    assert not imgs[0] & imgs[1]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["rows_written"] == len(reference)


@pytest.mark.slow
def test_torchrun_rank_killed_others_stop_then_resume(dataset, tiny_vae, mean_run, tmp_path):
    root, meta = dataset
    out = tmp_path / "tr-kill"
    cmd = [
        *torchrun(2),
        "-m",
        "hpd_encode",
        *_encode_cmd(root, meta, tiny_vae, out, "--rows-per-file", "2")[3:],
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 180
    workers: list[int] = []
    while time.monotonic() < deadline and proc.poll() is None:
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
        workers = [int(p) for p in children.read_text().split()] if children.exists() else []
        if len(workers) == 2 and list_part_files(out):
            break
        time.sleep(0.05)
    assert len(workers) == 2 and proc.poll() is None, "the run ended before a worker could be killed"
    os.kill(workers[-1], signal.SIGKILL)
    try:
        _, stderr = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the surviving rank hung after the other was killed")
    assert proc.returncode != 0
    assert "SIGKILL" in stderr or "Signal 9" in stderr or "exitcode" in stderr
    # Rerunning the same command finishes the job: every kept pair exactly once.
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-8000:]
    rows = read_rows(out)  # asserts no duplicates
    assert rows.keys() == read_rows(mean_run[0]).keys()
    assert json.loads((out / "summary.json").read_text())["records_already_done"] > 0
