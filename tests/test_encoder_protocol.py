"""The encoder protocol (``hpd_encode.LatentEncoder``): the diffusers VAEs implement it,
any object that does can be encoded with, and the encoder's identity (class,
config and weight digests) guards a resume. Real tiny diffusers VAEs, real
images, real Parquet."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import torch

import hpd_encode
from hpd_encode.errors import ResumeMismatchError, VaeError
from hpd_encode.pipeline import encode, list_part_files
from hpd_encode.vae import LatentEncoder, folder_identity, gaussian_noise, load_vae, make_tiny_vae


def latents_by_record(out: Path) -> dict[int, tuple[bytes, bytes]]:
    rows = {}
    for p in list_part_files(out):
        for r in pq.read_table(p, columns=["record_index", "latent1", "latent2"]).to_pylist():
            rows[r["record_index"]] = (r["latent1"], r["latent2"])
    return rows


class WrappedKL:
    """Another family, as a user would plug it in: a diffusers AutoencoderKL
    driven by hand (no hpd_encode.vae code), normalised as SD3.5 does."""

    def __init__(self, folder: Path, identity: str = "wrapped-kl/1") -> None:
        from diffusers import AutoencoderKL

        self.model = AutoencoderKL.from_pretrained(folder, subfolder="vae").eval()
        self.device, self.dtype = "cpu", torch.float32
        self.down_factor, self.latent_channels = 8, 16
        self.shift, self.scale = self.model.config.shift_factor, self.model.config.scaling_factor
        self.identity = identity
        self.normalization = {"kind": "shift_scale", "shift": self.shift, "scale": self.scale}
        self.calls: list[tuple[int, ...]] = []

    def encode(self, pixels: torch.Tensor, *, mode: str, seeds: Any) -> torch.Tensor:
        self.calls.append(tuple(pixels.shape))
        with torch.inference_mode():
            d = self.model.encode(pixels).latent_dist
            z = d.mean
            if mode == "sample":
                z = z + d.std * gaussian_noise(seeds, tuple(z.shape[1:]), pixels.device)
            return (z - self.shift) * self.scale


@pytest.mark.parametrize("kind", ["kl", "qwen"])
def test_diffusers_vaes_implement_the_protocol(tmp_path, kind):
    folder = make_tiny_vae(tmp_path, kind=kind)
    vae = load_vae(str(folder), device="cpu")
    assert isinstance(vae, LatentEncoder) and isinstance(vae, hpd_encode.DiffusersVae)
    assert (vae.device, vae.dtype, vae.down_factor, vae.latent_channels) == ("cpu", torch.float32, 8, 16)
    cfg = json.loads((folder / "vae" / "config.json").read_text())
    if kind == "kl":
        assert vae.normalization == {
            "kind": "shift_scale",
            "shift": cfg["shift_factor"],
            "scale": cfg["scaling_factor"],
        }
    else:
        assert vae.normalization == {
            "kind": "per_channel",
            "mean": cfg["latents_mean"],
            "std": cfg["latents_std"],
            "scale": 1.0,
        }
    json.dumps(vae.normalization)  # JSON-able
    ident = json.loads(vae.identity)
    weights = folder / "vae" / "diffusion_pytorch_model.safetensors"
    assert ident["class"] == cfg["_class_name"]
    assert ident["weights_sha256"] == {weights.name: hashlib.sha256(weights.read_bytes()).hexdigest()}
    assert len(ident["config_sha256"]) == 64
    # Canonical text: the same folder named another way has the same identity.
    assert load_vae(str(folder) + "/", device="cpu").identity == vae.identity
    assert folder_identity(folder / "vae") == vae.identity  # what an encoder object can record
    # The protocol's encode: float NCHW in [-1, 1] -> N x C x H/f x W/f.
    x = torch.rand(2, 3, 64, 96) * 2 - 1
    z = vae.encode(x, mode="sample", seeds=[1, 2])
    assert z.shape == (2, 16, 8, 12)
    # (a batch of one may round the last bits of the convolutions differently)
    torch.testing.assert_close(z[1:], vae.encode(x[1:], mode="sample", seeds=[2]), rtol=0, atol=1e-5)
    with pytest.raises(VaeError, match="one seed per image"):
        vae.encode(x, mode="sample", seeds=[1])


def test_resume_is_refused_after_the_weights_in_the_same_folder_change(encode_dataset, tmp_path):
    root, meta = encode_dataset
    folder = make_tiny_vae(tmp_path / "vae", seed=0)
    out = tmp_path / "out"
    s = encode(root, meta, out, folder, latent="mean", progress=False, limit=3)
    assert s.rows_written == 3
    manifest = json.loads((out / "manifest.json").read_text())
    assert json.loads(manifest["settings"]["vae_identity"])["class"] == "AutoencoderKL"
    make_tiny_vae(tmp_path / "vae", seed=1)  # new weights, same folder, same config
    with pytest.raises(ResumeMismatchError) as e:
        encode(root, meta, out, folder, latent="mean", progress=False, limit=3)
    msg = str(e.value)
    assert "\n" not in msg
    assert "vae_identity" in msg and "weights differ (diffusion_pytorch_model.safetensors)" in msg
    assert "config.json" not in msg and "--overwrite" in msg
    # Back to the first weights: the same run again, so it resumes.
    make_tiny_vae(tmp_path / "vae", seed=0)
    again = encode(root, meta, out, folder, latent="mean", progress=False, limit=3)
    assert again.records_already_done == 3 and again.rows_written == 0


@pytest.mark.parametrize("latent", ["mean", "sample"])
def test_an_encoder_object_writes_what_the_folder_does(encode_dataset, kl_vae, tmp_path, latent):
    root, meta = encode_dataset
    by_folder = encode(root, meta, tmp_path / "folder", kl_vae, latent=latent, progress=False, seed=3)
    enc = WrappedKL(kl_vae)
    by_object = encode(root, meta, tmp_path / "object", enc, latent=latent, progress=False, seed=3)
    assert by_object.rows_written == by_folder.rows_written > 0
    assert enc.calls and all(len(c) == 4 and c[1] == 3 for c in enc.calls)
    a, b = latents_by_record(tmp_path / "folder"), latents_by_record(tmp_path / "object")
    assert a.keys() == b.keys()
    for k in a:
        assert a[k] == b[k], f"record {k}: latents differ"
    settings = json.loads((tmp_path / "object" / "manifest.json").read_text())["settings"]
    assert settings["vae_identity"] == "wrapped-kl/1" and settings["vae"] == "WrappedKL"
    assert by_object.settings["vae_class"] == "WrappedKL"
    # Another identity is another run.
    with pytest.raises(ResumeMismatchError, match="vae_identity"):
        encode(
            root, meta, tmp_path / "object", WrappedKL(kl_vae, "wrapped-kl/2"), latent=latent, progress=False
        )


def test_an_object_that_is_not_an_encoder_is_refused_before_anything_is_written(
    encode_dataset, kl_vae, tmp_path
):
    root, meta = encode_dataset

    class Half:
        device, dtype, down_factor = "cpu", torch.float32, 8

        def encode(self, pixels, *, mode, seeds):
            return pixels

    with pytest.raises(VaeError, match="Half lacks latent_channels, identity, normalization"):
        encode(root, meta, tmp_path / "o", Half(), progress=False)
    bad = WrappedKL(kl_vae)
    bad.down_factor = 0
    with pytest.raises(VaeError, match="down_factor must be an int >= 1"):
        encode(root, meta, tmp_path / "o", bad, progress=False)
    with pytest.raises(VaeError, match="runs on 'cpu'"):
        encode(root, meta, tmp_path / "o", WrappedKL(kl_vae), device="cuda", progress=False)
    with pytest.raises(VaeError, match="takes torch.float32"):
        encode(root, meta, tmp_path / "o", WrappedKL(kl_vae), dtype="bfloat16", progress=False)
    assert not (tmp_path / "o").exists()


def test_latents_of_the_wrong_shape_are_an_error_naming_the_encoder(encode_dataset, kl_vae, tmp_path):
    root, meta = encode_dataset
    enc = WrappedKL(kl_vae)
    enc.down_factor = 16  # the model gives H/8: not what the object says
    with pytest.raises(
        VaeError, match=r"WrappedKL returned latents of shape \(\d+, 16, \d+, \d+\) \(torch.float32\) for"
    ):
        encode(root, meta, tmp_path / "o", enc, latent="mean", progress=False, limit=2)


def test_the_noise_is_the_same_whatever_the_shape_and_slicing():
    """Image i's noise depends only on its seed and the element count (the
    frame axis of a Qwen VAE does not change it)."""
    from hpd_encode.vae import NoiseAhead, Seeds, fill_noise

    seeds = [5, 7, 11]
    a = gaussian_noise(seeds, (16, 4, 6))
    b = gaussian_noise(seeds, (16, 1, 4, 6)).view(3, 16, 4, 6)
    assert torch.equal(a, b)
    ref = torch.stack([torch.randn((16, 4, 6), generator=torch.Generator().manual_seed(s)) for s in seeds])
    assert torch.equal(a, ref)
    drawn = fill_noise(torch.empty(3, 16, 4, 6), seeds)
    ahead = Seeds(seeds, NoiseAhead((16, 4, 6), lambda: drawn))
    part = ahead[1:]
    assert isinstance(part, Seeds) and list(part) == [7, 11]
    assert gaussian_noise(part, (16, 4, 6)).data_ptr() == drawn[1].data_ptr()  # drawn ahead, not again
    assert torch.equal(gaussian_noise(part, (16, 4, 6)), ref[1:])
    assert torch.equal(gaussian_noise(ahead[2:], (16, 24)), ref[2:].view(1, 16, 24))  # other shape: drawn now
