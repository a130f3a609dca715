"""``hpd-encode verify --reencode``: stored latents against their source images,
re-encoded with the recorded settings (real images, a real tiny VAE, real encodes)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hpd_encode.cli import main
from hpd_encode.errors import MissingExtraError, ReencodeError
from hpd_encode.latents.reencode import TOLERANCE, reencode_check, relative_rms
from hpd_encode.output_dir import MANIFEST
from hpd_encode.pipeline import encode
from hpd_encode.provenance import read_provenance
from hpd_encode.vae import make_tiny_vae


def _picture(seed: int, h: int = 256, w: int = 256) -> Image.Image:
    y, x = np.mgrid[0:h, 0:w] / 23.0
    base = np.stack([np.sin(x + seed), np.cos(y * 1.7 + seed), np.sin(x * y / 40 + seed)], axis=-1)
    return Image.fromarray(((base + 1) * 127.5).clip(0, 255).astype(np.uint8))


@pytest.fixture
def encoded(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(data root, output, VAE): 5 images, 4 comparisons, sample latents, encoded on the CPU."""
    root = tmp_path / "root"
    (root / "img").mkdir(parents=True)
    for k in range(5):
        _picture(k).save(root / "img" / f"{k}.png")
    records = [
        {"prompt": f"p{i}", "path1": f"img/{a}.png", "path2": f"img/{b}.png", "choice_dist": [2, 1]}
        for i, (a, b) in enumerate([(0, 1), (1, 2), (3, 4), (0, 4)])
    ]
    (root / "train.json").write_text(json.dumps(records))
    vae = make_tiny_vae(tmp_path / "vae")
    out = tmp_path / "out"
    encode(root, root / "train.json", out, vae, latent="sample", seed=3, device="cpu", progress=False)
    return root, out, vae


def test_an_untouched_output_passes(
    encoded: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    root, out, _ = encoded
    report = reencode_check(out, 100, device="cpu")
    assert report.ok, report.summary()
    assert (report.rows_total, report.rows_checked, report.images_encoded) == (4, 4, 5)
    assert report.max_error <= TOLERANCE["float32"] and report.metadata_unchanged is True
    assert main(["verify", str(out), "--reencode", "2", "--seed", "1"]) == 0
    printed = capsys.readouterr().out
    assert "re-encoded 2 of 4 rows" in printed and "OK: every row checked matches" in printed
    prov = read_provenance(out / "part_rank00.parquet")
    assert prov is not None and prov["latent"] == "sample" and prov["seed"] == 3
    assert prov["normalization"]["kind"] == "shift_scale" and prov["compute_dtype"] == "float32"
    assert set(prov["vae"]["weights_sha256"]) == {"diffusion_pytorch_model.safetensors"}


def test_a_replaced_source_image_is_named(
    encoded: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    root, out, _ = encoded
    _picture(42).save(root / "img" / "4.png")  # replaced after encoding, same size
    report = reencode_check(out, 100, device="cpu")
    assert not report.ok
    named = sorted((d.image1_path, d.image2_path) for d in report.differing)
    assert named == [("img/0.png", "img/4.png"), ("img/3.png", "img/4.png")]
    assert all(
        d.errors[0] is not None and d.errors[0] <= report.tolerance < d.errors[1] for d in report.differing
    )
    assert "latent2 differs from its source" in report.differing[0].detail
    assert main(["verify", str(out), "--reencode", "10", "--json"]) == 1
    result = json.loads(capsys.readouterr().out)
    assert result["ok"] is True  # the files themselves are sound
    assert result["reencode"]["ok"] is False and len(result["reencode"]["differing"]) == 2


def test_moved_sources_and_other_weights(encoded: tuple[Path, Path, Path], tmp_path: Path) -> None:
    root, out, vae = encoded
    moved = tmp_path / "moved"
    shutil.move(root, moved)
    with pytest.raises(ReencodeError, match="pass --data-root"):
        reencode_check(out, 1, device="cpu")
    assert reencode_check(out, 4, device="cpu", data_root=moved, metadata=moved / "train.json").ok
    # Other weights in the same VAE folder: refused up front, naming the difference.
    make_tiny_vae(vae, seed=1)
    with pytest.raises(ReencodeError, match=r"not the one that encoded this output \(vae\.weights_sha256"):
        reencode_check(out, 1, device="cpu", data_root=moved)
    # A changed metadata file is reported.
    (moved / "train.json").write_text((moved / "train.json").read_text() + " ")
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["inputs"]["metadata"].endswith("root/train.json")


def test_preview_contact_sheet(encoded: tuple[Path, Path, Path], tmp_path: Path, monkeypatch) -> None:
    root, out, _ = encoded
    sheet = tmp_path / "sheet.png"
    report = reencode_check(out, 2, device="cpu", preview=sheet)
    assert report.preview == str(sheet)
    with Image.open(sheet) as img:
        assert img.size[0] > 300 and img.size[1] > 300
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(MissingExtraError, match="--preview needs matplotlib"):
        reencode_check(out, 2, device="cpu", preview=tmp_path / "again.png")
    assert main(["verify", str(out), "--reencode", "1", "--preview", str(tmp_path / "x.png")]) == 1


def test_relative_rms() -> None:
    a = np.ones((4, 2, 2), np.float32)
    assert relative_rms(a, a) == 0.0
    assert relative_rms(a * 1.01, a) == pytest.approx(0.01, rel=1e-6)
    assert relative_rms(np.zeros(3), np.zeros(3)) == 0.0
