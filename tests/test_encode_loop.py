"""The overlapped encode loop (pipeline/encoder.py) on the CPU: the same latents
as the loop before it, bit for bit; torch.compile and its fallback; errors in
any of its threads end the run without leaving a thread behind. Real images,
tiny real diffusers VAEs, real Parquet."""

from __future__ import annotations

import io
import logging
import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

import hpd_encode
from hpd_encode.pipeline import encode, list_part_files
from hpd_encode.vae import load_vae, make_tiny_vae
from reference_encode import item_seed, reference_latents


def rows_of(out: Path) -> dict[int, dict[str, Any]]:
    return {r["record_index"]: r for p in list_part_files(out) for r in pq.read_table(p).to_pylist()}


def no_loop_threads() -> bool:
    return not [t.name for t in threading.enumerate() if t.name.startswith("hpd-encode")]


@pytest.mark.parametrize(
    "kind,latent,store",
    [
        ("kl", "mean", "float32"),
        ("kl", "sample", "float32"),
        ("kl", "sample", "float16"),
        ("qwen", "sample", "float32"),
    ],
)
def test_cpu_latents_are_bit_identical_to_the_loop_before_the_overlap(
    encode_dataset, tmp_path, kind, latent, store
):
    """Each stored latent equals, bit for bit, what the pre-overlap loop computed for
    that image (tests/reference_encode.py; batch size 1, so batches are alike)."""
    root, meta = encode_dataset
    folder = make_tiny_vae(tmp_path, kind=kind)
    out = tmp_path / "o"
    s = encode(
        root,
        meta,
        out,
        folder,
        latent=latent,
        store_dtype=store,
        batch_size=1,
        seed=5,
        progress=False,
        limit=10,
    )
    rows = rows_of(out)
    assert len(rows) == s.rows_written >= 6
    model = load_vae(str(folder), device="cpu")  # the same weights, read by diffusers
    checked = set()
    for row in rows.values():
        for side in ("1", "2"):
            rel, h, w = row[f"image{side}_path"], row["height"], row["width"]
            if (rel, h, w) in checked:
                continue
            checked.add((rel, h, w))
            pixels, errors = hpd_encode.load_batch([rel], (h, w), root=root, normalize=True)
            assert errors == [None]
            ref = reference_latents(
                model.model, model.normalize, pixels, latent, [item_seed(5, f"{rel}@{h}x{w}")], store
            )
            stored = np.load(io.BytesIO(row[f"latent{side}"]))
            assert stored.dtype == ref.dtype and stored.shape == ref.shape[1:]
            assert stored.tobytes() == ref[0].tobytes(), f"{rel} at {h}x{w}: latents differ"
    assert len(checked) == s.images_encoded
    assert no_loop_threads()


def test_compile_runs_the_encoder_through_torch_compile(encode_dataset, kl_vae, tmp_path):
    """``compile=`` a backend: the encoder runs compiled (the ``eager`` backend
    captures the same operations, so the latents are the same)."""
    root, meta = encode_dataset
    plain = encode(root, meta, tmp_path / "plain", kl_vae, latent="sample", progress=False, limit=6)
    vae = load_vae(str(kl_vae), device="cpu")
    compiled = encode(
        root, meta, tmp_path / "compiled", vae, latent="sample", progress=False, limit=6, compile="eager"
    )
    assert vae._compiled is not None and vae._compiled_backend == "eager"
    assert compiled.rows_written == plain.rows_written == 6
    a, b = rows_of(tmp_path / "plain"), rows_of(tmp_path / "compiled")
    for k in a:
        np.testing.assert_allclose(
            np.load(io.BytesIO(a[k]["latent1"])), np.load(io.BytesIO(b[k]["latent1"])), rtol=0, atol=1e-6
        )


def test_compile_failures_fall_back_with_a_warning(encode_dataset, kl_vae, tmp_path, caplog):
    """A backend that fails at the first call, or one that does not exist: a warning, and the
    encoder runs without compilation (the same latents as a plain run)."""
    from torch._dynamo import register_backend

    def failing(gm: Any, example_inputs: Any) -> Any:
        raise RuntimeError("no compiler on this machine")

    register_backend(failing, name="hpd_test_failing")
    root, meta = encode_dataset
    plain = encode(root, meta, tmp_path / "plain", kl_vae, latent="mean", progress=False, limit=4)
    for backend, said in [
        ("hpd_test_failing", "torch.compile of the AutoencoderKL encoder failed at 2x3x"),
        ("no-such-backend", "torch.compile(backend='no-such-backend') is not available"),
    ]:
        caplog.clear()
        out = tmp_path / backend
        with caplog.at_level(logging.WARNING, logger="hpd_encode"):
            s = encode(root, meta, out, kl_vae, latent="mean", progress=False, limit=4, compile=backend)
        assert said in caplog.text
        assert backend != "hpd_test_failing" or "no compiler on this machine" in caplog.text
        assert s.rows_written == plain.rows_written == 4
        assert rows_of(out) == rows_of(tmp_path / "plain")


class DeletesTheOutput:
    """An encoder (the protocol, wrapping a real tiny VAE) that removes the output
    directory at its second call: the finishing thread's next write fails."""

    def __init__(self, folder: Path, out: Path) -> None:
        self.inner = load_vae(str(folder), device="cpu")
        self.out, self.calls = out, 0
        for a in ("device", "dtype", "down_factor", "latent_channels", "identity", "normalization"):
            setattr(self, a, getattr(self.inner, a))

    def encode(self, pixels: torch.Tensor, *, mode: str, seeds: Any) -> torch.Tensor:
        self.calls += 1
        if self.calls == 2:
            shutil.rmtree(self.out)
        return self.inner.encode(pixels, mode=mode, seeds=seeds)


def test_an_error_in_the_finishing_thread_ends_the_run(encode_dataset, kl_vae, tmp_path):
    root, meta = encode_dataset
    out = tmp_path / "o"
    enc = DeletesTheOutput(kl_vae, out)
    with pytest.raises(OSError):
        encode(root, meta, out, enc, latent="mean", batch_size=1, rows_per_file=1, progress=False)
    assert enc.calls < 20  # stopped early, not after every batch
    assert no_loop_threads()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_loop_gives_the_cpu_latents(encode_dataset, kl_vae, tmp_path):
    """On CUDA (pinned staging, side-stream copies, device-side finite check, events) the
    latents are the CPU's up to float rounding; sample noise is the same on both devices."""
    root, meta = encode_dataset
    cpu = encode(root, meta, tmp_path / "cpu", kl_vae, latent="sample", device="cpu", progress=False)
    gpu = encode(
        root, meta, tmp_path / "gpu", kl_vae, latent="sample", device="cuda", dtype="float32", progress=False
    )
    assert gpu.rows_written == cpu.rows_written > 0
    a, b = rows_of(tmp_path / "cpu"), rows_of(tmp_path / "gpu")
    assert a.keys() == b.keys()
    for k in a:
        for side in ("latent1", "latent2"):
            np.testing.assert_allclose(
                np.load(io.BytesIO(a[k][side])), np.load(io.BytesIO(b[k][side])), rtol=0, atol=2e-3
            )
    assert no_loop_threads()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_finite_rows_agrees_with_isfinite_all(dtype):
    """The loop's finite check (a sum of ``z * 0`` per latent) flags exactly the latents
    holding a NaN or an Inf, also when finite values are large enough that their sum
    would overflow the dtype."""
    from hpd_encode.pipeline.encoder import finite_rows

    g = torch.Generator().manual_seed(7)
    z = torch.randn(8, 4, 6, 5, generator=g).to(dtype)
    z[1] = torch.finfo(dtype).max  # finite, though any sum of it overflows
    z[2, 3, 5, 4] = float("nan")
    z[3, 0, 0, 0] = float("inf")
    z[4, 1, 2, 3] = float("-inf")
    z[5, 2] = -torch.finfo(dtype).max
    z[6, 0, 0, 0], z[6, 1, 0, 0] = float("inf"), float("-inf")
    got = finite_rows(z)
    assert got.dtype == torch.bool and got.shape == (8,)
    assert got.tolist() == torch.isfinite(z).flatten(1).all(dim=1).tolist()
    assert got.tolist() == [True, True, False, False, False, True, False, True]
