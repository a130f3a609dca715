"""The Rust image core (probe_images / load_images / load_batch) on real files.

Every file here is written by the test from a real photograph (scikit-image's
bundled samples) with Pillow or by hand (16-bit PNG, YCCK JPEG, crafted
headers). Pixels are compared with the reference pixel path:
``Image.open(p).convert("RGB").resize((w, h), Image.LANCZOS)`` (plus
``ImageOps.exif_transpose`` where an EXIF orientation is set, since we apply it
and the reference does not).
"""

from __future__ import annotations

import os
import random
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

import hpd_encode
from hpd_encode import (
    DEFAULT_MAX_PIXELS,
    HpdError,
    ImageDecodeError,
    ImageTooLargeError,
    load_batch,
    load_image,
    load_images,
    probe_image,
    probe_images,
)

# Parity bounds, in levels of 255.
RESIZE_MAD = 1.5  # the bar for decode + Lanczos vs Pillow
LOSSY_DECODE_MAD = 0.5  # JPEG / lossy WebP decoded (not resized): IDCT and upsampling rounding only
ORIENTATION_TAG = 0x0112

# ---------------------------------------------------------------------------
# Writers for what Pillow cannot write directly


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_png16(path: Path, arr: np.ndarray) -> None:
    """A 16-bit PNG (gray, gray+alpha, RGB or RGBA from the last axis) from a uint16 array."""
    h, w = arr.shape[:2]
    channels = 1 if arr.ndim == 2 else arr.shape[2]
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    rows = np.zeros((h, 1 + w * channels * 2), np.uint8)  # filter byte 0 (None) on each row
    rows[:, 1:] = arr.astype(">u2").view(np.uint8).reshape(h, -1)
    ihdr = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    data = zlib.compress(rows.tobytes(), 6)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", data)
        + _png_chunk(b"IEND", b"")
    )


def write_huge_png_header(path: Path, width: int, height: int) -> None:
    """A valid-looking PNG whose IHDR claims ``width x height`` (the pixel data is a few bytes)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def patch_jpeg_size(data: bytes, width: int, height: int) -> bytes:
    """Rewrite the frame header (SOF0/SOF2) of a JPEG to claim another size."""
    b = bytearray(data)
    pos = 2
    while pos < len(b):
        assert b[pos] == 0xFF
        marker = b[pos + 1]
        length = struct.unpack(">H", b[pos + 2 : pos + 4])[0]
        if marker in (0xC0, 0xC2):
            b[pos + 5 : pos + 9] = struct.pack(">HH", height, width)
            return bytes(b)
        pos += 2 + length
    raise AssertionError("no SOF marker")


def write_ycck_jpeg(path: Path, rgb: np.ndarray) -> None:
    """A real YCCK JPEG (Adobe APP14 transform = 2), as Adobe tools write CMYK.

    Pillow writes CMYK JPEGs inverted with an Adobe marker whose transform is
    0 (plain CMYK). A YCCK file stores YCbCr of (C, M, Y) plus K, inverted;
    so encode those values through Pillow's CMYK writer (which inverts every
    channel) and flip the marker's transform byte to 2.
    """
    rgb = rgb.astype(np.float64)
    # Pillow's CMYK -> RGB is R = (255 - K) * (255 - C) / 255: invert that.
    top = rgb.max(axis=-1, keepdims=True)
    k = 255.0 - top[..., 0]
    cmy = np.clip(255.0 - 255.0 * rgb / np.maximum(top, 1), 0, 255)
    c, m, y = cmy[..., 0], cmy[..., 1], cmy[..., 2]
    luma = 0.299 * c + 0.587 * m + 0.114 * y
    cb = -0.168736 * c - 0.331264 * m + 0.5 * y + 128
    cr = 0.5 * c - 0.418688 * m - 0.081312 * y + 128
    ycc = np.clip(np.round(np.stack([luma, cb, cr], axis=-1)), 0, 255)
    channels = np.concatenate([255 - ycc, k[..., None]], axis=-1).astype(np.uint8)
    Image.fromarray(channels, mode="CMYK").save(path, quality=95, subsampling=0)
    data = bytearray(path.read_bytes())
    at = data.find(b"Adobe")
    assert at > 0 and data[at + 11] == 0, "Pillow wrote no Adobe marker with transform 0"
    data[at + 11] = 2
    path.write_bytes(bytes(data))


def alpha_mask(h: int, w: int) -> np.ndarray:
    """A smooth alpha ramp with fully transparent and fully opaque regions."""
    x = np.linspace(-40, 300, w)[None, :]
    y = np.linspace(0, 60, h)[:, None]
    a = np.clip(x + y, 0, 255).astype(np.uint8)
    a[: h // 6, : w // 6] = 0
    return a


def rgba(img: Image.Image) -> Image.Image:
    out = img.convert("RGBA")
    out.putalpha(Image.fromarray(alpha_mask(img.height, img.width)))
    return out


# ---------------------------------------------------------------------------
# The reference pixel path


def pil_rgb(path: Path, size: tuple[int, int] | None = None, *, transpose: bool = False) -> np.ndarray:
    im = Image.open(path)
    if transpose:
        im = ImageOps.exif_transpose(im)
    im = im.convert("RGB")
    if size is not None:
        im = im.resize((size[1], size[0]), Image.LANCZOS)
    return np.asarray(im)


def pil_composite(path: Path, background: str) -> np.ndarray:
    im = Image.open(path).convert("RGBA")
    bg = Image.new("RGBA", im.size, (255, 255, 255, 255) if background == "white" else (0, 0, 0, 255))
    return np.asarray(Image.alpha_composite(bg, im).convert("RGB"))


def mad(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def load_one(path: Path, size: tuple[int, int] | None = None, **kw) -> np.ndarray:
    arrays, errors = load_images([path], None if size is None else [size], **kw)
    assert errors == [None], errors
    return arrays[0]


# ---------------------------------------------------------------------------
# The files: name -> (path, exact) where exact means Pillow decodes the same pixels


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory, photo) -> dict[str, tuple[Path, bool]]:
    d = tmp_path_factory.mktemp("good")
    out: dict[str, tuple[Path, bool]] = {}

    def save(name: str, img: Image.Image, same_pixels: bool, **kw) -> None:
        path = d / name
        img.save(path, **kw)
        out[name] = (path, same_pixels)

    # JPEG
    save("baseline.jpg", photo("astronaut", (1024, 1024)), False, quality=90)
    save("progressive.jpg", photo("coffee", (832, 1248)), False, quality=90, progressive=True)
    save("yuv444.jpg", photo("chelsea", (1248, 832)), False, quality=95, subsampling=0)
    save("restart.jpg", photo("retina", (768, 1024)), False, quality=90, restart_marker_blocks=3)
    save("gray.jpg", photo("rocket", (832, 1152)).convert("L"), False, quality=90)
    save("cmyk.jpg", photo("hubble_deep_field", (1024, 768)).convert("CMYK"), False, quality=92)
    write_ycck_jpeg(d / "ycck.jpg", np.asarray(photo("astronaut", (768, 1024))))
    out["ycck.jpg"] = (d / "ycck.jpg", False)
    # PNG
    save("rgb.png", photo("retina", (1024, 1024)), True)
    save("palette.png", photo("rocket", (832, 1248)).convert("P", palette=Image.ADAPTIVE, colors=200), True)
    pal = photo("chelsea", (896, 1344)).convert("P", palette=Image.ADAPTIVE, colors=64)
    save("palette_trns.png", pal, True, transparency=5)
    save("gray.png", photo("hubble_deep_field", (896, 1344)).convert("L"), True)
    save("la.png", rgba(photo("coffee", (768, 1024))).convert("LA"), True)
    save("rgba.png", rgba(photo("astronaut", (832, 1152))), True)
    rng = np.random.default_rng(16)
    base = np.asarray(photo("coffee", (576, 832))).astype(np.uint16)
    noise = rng.integers(0, 256, base.shape, dtype=np.uint16)  # low bytes: keep-high-byte vs rounding differ
    write_png16(d / "rgb16.png", base * 256 + noise)
    out["rgb16.png"] = (d / "rgb16.png", True)
    a16 = alpha_mask(576, 832).astype(np.uint16)[..., None] * 257
    write_png16(d / "rgba16.png", np.concatenate([base * 256 + noise, a16], axis=-1))
    out["rgba16.png"] = (d / "rgba16.png", True)
    # WebP
    save("lossy.webp", photo("chelsea", (832, 1472)), False, quality=85)
    save("lossless.webp", photo("rocket", (1024, 768)), True, lossless=True)
    save("alpha.webp", rgba(photo("coffee", (768, 1024))), False, quality=85)
    save("alpha_lossless.webp", rgba(photo("retina", (1024, 1024))), True, lossless=True, exact=True)
    # GIF: the first frame of an animation
    frames = [photo("astronaut", (640, 640)).convert("P", palette=Image.ADAPTIVE)]
    frames += [Image.new("P", (640, 640), c) for c in (30, 200)]
    frames[0].save(d / "anim.gif", save_all=True, append_images=frames[1:], duration=80, loop=0)
    out["anim.gif"] = (d / "anim.gif", True)
    save(
        "trns.gif",
        photo("coffee", (480, 640)).convert("P", palette=Image.ADAPTIVE, colors=64),
        True,
        transparency=7,
    )
    # BMP
    save("rgb.bmp", photo("hubble_deep_field", (768, 1024)), True)
    return out


LOSSLESS_WITH_ALPHA = [
    "la.png",
    "rgba.png",
    "rgba16.png",
    "palette_trns.png",
    "alpha_lossless.webp",
    "trns.gif",
]


def test_every_format_is_covered(good: dict[str, tuple[Path, bool]]) -> None:
    modes = {name: Image.open(p).mode for name, (p, _) in good.items()}
    assert modes["gray.jpg"] == "L" and modes["cmyk.jpg"] == "CMYK" and modes["ycck.jpg"] == "CMYK"
    assert modes["palette.png"] == "P" and modes["la.png"] == "LA" and modes["rgba.png"] == "RGBA"
    assert modes["rgb16.png"] == "RGB" and modes["rgba16.png"] == "RGBA"
    assert Image.open(good["progressive.jpg"][0]).info.get("progressive") == 1
    assert good["restart.jpg"][0].read_bytes().count(b"\xff\xd3") > 10  # restart markers in the scan
    assert Image.open(good["anim.gif"][0]).n_frames == 3
    assert Image.open(good["alpha.webp"][0]).mode == "RGBA"


# ---------------------------------------------------------------------------
# Parity with Pillow


def test_decoded_pixels_match_pillow(good: dict[str, tuple[Path, bool]]) -> None:
    paths = [p for p, _ in good.values()]
    arrays, errors = load_images(paths)
    assert errors == [None] * len(paths)
    for (name, (path, exact)), ours in zip(good.items(), arrays):
        ref = pil_rgb(path)
        assert ours.shape == ref.shape, name
        assert ours.dtype == np.uint8 and ours.flags.c_contiguous and ours.flags.writeable, name
        if exact:
            np.testing.assert_array_equal(ours, ref, err_msg=name)
        else:
            assert mad(ours, ref) <= LOSSY_DECODE_MAD, (name, mad(ours, ref))


def test_ycck_fixture_is_the_photo(good: dict[str, tuple[Path, bool]], photo) -> None:
    # The crafted YCCK file must look like the photograph to Pillow (libjpeg)
    # too, or the parity check above would compare two wrong pictures.
    ref = np.asarray(photo("astronaut", (768, 1024)))
    assert mad(pil_rgb(good["ycck.jpg"][0]), ref) < 2.0  # a misread YCCK is off by ~100
    assert mad(load_one(good["ycck.jpg"][0]), ref) < 2.0


@pytest.mark.parametrize("target", ["down", "up", "bucket"])
def test_resized_pixels_match_pillow(good: dict[str, tuple[Path, bool]], target: str) -> None:
    paths, sizes = [], []
    for path, _ in good.values():
        w, h = Image.open(path).size
        sizes.append(
            {"down": (h * 3 // 8, w * 5 // 12), "up": (h * 3 // 2, w * 4 // 3), "bucket": (832, 1472)}[target]
        )
        paths.append(path)
    arrays, errors = load_images(paths, sizes)
    assert errors == [None] * len(paths)
    for name, path, size, ours in zip(good, paths, sizes, arrays):
        assert ours.shape == (*size, 3), name
        assert mad(ours, pil_rgb(path, size)) <= RESIZE_MAD, (name, size, mad(ours, pil_rgb(path, size)))


def test_same_size_is_not_resampled(good: dict[str, tuple[Path, bool]]) -> None:
    path = good["rgb.png"][0]
    np.testing.assert_array_equal(load_one(path, (1024, 1024)), pil_rgb(path))


def test_stray_bytes_between_jpeg_headers_are_tolerated(tmp_path: Path, photo) -> None:
    # libjpeg (Pillow) only warns about junk between header segments, as some
    # cameras and editors write it; the image must load, not be dropped.
    photo("rocket", (600, 800)).save(tmp_path / "clean.jpg", quality=90)
    data = (tmp_path / "clean.jpg").read_bytes()
    at = 4 + struct.unpack(">H", data[4:6])[0]  # after SOI and APP0
    path = tmp_path / "stray.jpg"
    path.write_bytes(data[:at] + b"\x00" * 6 + data[at:])
    Image.open(path).load()
    assert probe_images([path]) == ([(600, 800)], [None])
    assert mad(load_one(path), pil_rgb(path)) <= LOSSY_DECODE_MAD
    np.testing.assert_array_equal(load_one(path), load_one(tmp_path / "clean.jpg"))


def test_16bit_rgb_keeps_the_high_byte_like_pillow(good: dict[str, tuple[Path, bool]]) -> None:
    path = good["rgb16.png"][0]
    ours = load_one(path)
    np.testing.assert_array_equal(ours, pil_rgb(path))  # Pillow: RGB;16 -> RGB keeps the high byte
    assert ours.max() > 200 and (ours != 0).any()


def test_16bit_gray_keeps_the_high_byte_where_pillow_clips(tmp_path: Path) -> None:
    # Our choice: 16-bit grayscale is reduced like 16-bit RGB (high byte, the
    # value / 256). Pillow opens it as mode I;16 and convert("RGB") *clips*
    # at 255, which turns nearly every real 16-bit photo white; we do not
    # mimic that.
    values = (np.arange(64 * 96, dtype=np.uint32).reshape(64, 96) * 10).astype(np.uint16)
    path = tmp_path / "gray16.png"
    write_png16(path, values)
    ours = load_one(path)
    np.testing.assert_array_equal(ours, np.repeat((values >> 8).astype(np.uint8)[..., None], 3, axis=-1))
    assert Image.open(path).mode == "I;16"
    pillow = pil_rgb(path)
    np.testing.assert_array_equal(pillow[..., 0], np.minimum(values, 255).astype(np.uint8))
    assert (pillow != ours).mean() > 0.9


@pytest.mark.parametrize("name", LOSSLESS_WITH_ALPHA + ["alpha.webp"])
@pytest.mark.parametrize("background", ["white", "black"])
def test_alpha_composite_matches_pillow(
    good: dict[str, tuple[Path, bool]], name: str, background: str
) -> None:
    path = good[name][0]
    ours = load_one(path, alpha=background)
    ref = pil_composite(path, background)
    diff = np.abs(ours.astype(np.int16) - ref)
    assert diff.max() <= 1, (name, diff.max())
    # The alpha channel matters: compositing changed pixels that "drop" keeps.
    dropped = load_one(path, alpha="drop")
    np.testing.assert_array_equal(dropped, pil_rgb(path))
    assert (dropped != ours).any(axis=-1).mean() > 0.01, name


def test_alpha_modes_agree_on_opaque_images(good: dict[str, tuple[Path, bool]]) -> None:
    paths = [good[n][0] for n in ("baseline.jpg", "rgb.png", "lossy.webp", "rgb.bmp")]
    drop, _ = load_images(paths, alpha="drop")
    for mode in ("white", "black"):
        other, errors = load_images(paths, alpha=mode)
        assert errors == [None] * len(paths)
        for a, b in zip(drop, other):
            np.testing.assert_array_equal(a, b)


def test_probe_matches_decoded_size(good: dict[str, tuple[Path, bool]]) -> None:
    paths = [p for p, _ in good.values()]
    sizes, errors = probe_images(paths)
    assert errors == [None] * len(paths)
    arrays, _ = load_images(paths)
    for name, size, arr, path in zip(good, sizes, arrays, paths):
        assert size == arr.shape[:2], name
        assert size == probe_image(path), name
        w, h = Image.open(path).size
        assert size == (h, w), name


# ---------------------------------------------------------------------------
# EXIF orientation


#: Pillow's transpose for each orientation (what ``ImageOps.exif_transpose`` does) and its inverse.
TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
INVERSE = {**TRANSPOSE, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}


@pytest.fixture(scope="module")
def oriented(tmp_path_factory: pytest.TempPathFactory, photo) -> dict[tuple[str, int], Path]:
    """A 480x640 (h x w) photo stored, for each EXIF orientation, transformed so
    that it *displays* upright: orientations 5..8 store a 640x480 picture."""
    d = tmp_path_factory.mktemp("oriented")
    upright = photo("chelsea", (480, 640))
    out = {}
    for o in range(1, 9):
        exif = Image.Exif()
        exif[ORIENTATION_TAG] = o
        stored = upright if o == 1 else upright.transpose(INVERSE[o])
        for ext, kw in (("jpg", {"quality": 92}), ("png", {}), ("webp", {"lossless": True})):
            path = d / f"o{o}.{ext}"
            stored.save(path, exif=exif, **kw)
            out[(ext, o)] = path
    return out


@pytest.mark.parametrize("ext", ["jpg", "png", "webp"])
def test_exif_orientation(oriented: dict[tuple[str, int], Path], photo, ext: str) -> None:
    upright = np.asarray(photo("chelsea", (480, 640)))
    paths = [oriented[(ext, o)] for o in range(1, 9)]
    stored = [Image.open(p).size[::-1] for p in paths]
    assert stored == [(480, 640)] * 4 + [(640, 480)] * 4
    sizes, errors = probe_images(paths)
    assert errors == [None] * 8
    assert sizes == [(480, 640)] * 8  # displayed size: 5..8 swap the stored sides
    arrays, errors = load_images(paths)
    assert errors == [None] * 8
    for o, path, ours in zip(range(1, 9), paths, arrays):
        assert Image.open(path).getexif()[ORIENTATION_TAG] == o
        ref = pil_rgb(path, transpose=True)
        assert ours.shape == ref.shape == (480, 640, 3), o
        if ext == "jpg":
            assert mad(ours, ref) <= LOSSY_DECODE_MAD, (o, mad(ours, ref))
            assert mad(ours, upright) <= 3.0, (o, mad(ours, upright))  # q92 compression only
        else:
            np.testing.assert_array_equal(ours, ref, err_msg=f"orientation {o}")
            np.testing.assert_array_equal(ours, upright, err_msg=f"orientation {o}")


def test_exif_orientation_then_resize(oriented: dict[tuple[str, int], Path]) -> None:
    paths = [oriented[("jpg", o)] for o in range(1, 9)]
    size = (832, 1248)
    batch, errors = load_batch(paths, size)
    assert errors == [None] * 8
    for o, path, ours in zip(range(1, 9), paths, batch):
        ref = np.asarray(
            ImageOps.exif_transpose(Image.open(path)).convert("RGB").resize((size[1], size[0]), Image.LANCZOS)
        )
        assert mad(ours, ref) <= RESIZE_MAD, o


@pytest.mark.parametrize("progressive", [False, True])
def test_probe_reads_as_far_as_the_headers_go(tmp_path: Path, photo, progressive: bool) -> None:
    """The JPEG probe reads 4 KB first, then as far as the headers go: EXIF, XMP,
    a comment and ICC profiles of any size before the frame header (past 4 KB,
    16 KB, 256 KB) give the size Pillow displays and the decoder returns; cut
    inside those headers, the file is an error naming it."""
    stored = photo("coffee", (96, 160))  # h x w
    paths, sof_at = [], []
    for icc in (0, 3000, 20_000, 300_000):
        for o in (1, 6):
            exif = Image.Exif()
            exif[ORIENTATION_TAG] = o
            path = tmp_path / f"icc{icc}_o{o}.jpg"
            kw = {"icc_profile": b"\x11" * icc} if icc else {}
            stored.save(
                path, quality=85, progressive=progressive, exif=exif, xmp=b"<x/>", comment=b"hi", **kw
            )
            data = path.read_bytes()
            sof_at.append(data.index(b"\xff\xc2" if progressive else b"\xff\xc0"))
            assert sof_at[-1] > icc
            paths.append(path)
    sizes, errors = probe_images(paths)
    assert errors == [None] * len(paths)
    assert sizes == [ImageOps.exif_transpose(Image.open(p)).size[::-1] for p in paths]
    assert sizes == [(96, 160), (160, 96)] * 4
    arrays, _ = load_images(paths)
    assert [a.shape[:2] for a in arrays] == sizes
    cut = []
    for path, at in zip(paths, sof_at):
        short = path.with_name("cut_" + path.name)
        short.write_bytes(path.read_bytes()[: at - 10])
        cut.append(short)
    sizes, errors = probe_images(cut)
    assert sizes == [None] * len(cut)
    for path, err in zip(cut, errors):
        assert err is not None and str(path) in err and "JPEG" in err, err


# ---------------------------------------------------------------------------
# Bad input


@pytest.fixture(scope="module")
def bad(tmp_path_factory: pytest.TempPathFactory, photo) -> dict[str, tuple[Path, str]]:
    """name -> (path, a word the error must contain)."""
    d = tmp_path_factory.mktemp("bad")
    img = photo("coffee", (768, 1024))
    img.save(d / "src.jpg", quality=90)
    img.save(d / "src_progressive.jpg", quality=90, progressive=True)
    img.save(d / "src.png")
    img.save(d / "src.webp", quality=90)
    img.convert("P", palette=Image.ADAPTIVE).save(d / "src.gif")
    jpg, prog, png = (
        (d / "src.jpg").read_bytes(),
        (d / "src_progressive.jpg").read_bytes(),
        (d / "src.png").read_bytes(),
    )
    webp, gif = (d / "src.webp").read_bytes(), (d / "src.gif").read_bytes()
    out: dict[str, tuple[Path, str]] = {}

    def put(name: str, data: bytes, word: str) -> None:
        (d / name).write_bytes(data)
        out[name] = (d / name, word)

    put("empty.jpg", b"", "empty")
    put("half.jpg", jpg[: len(jpg) // 2], "truncated")
    put("no_eoi.jpg", jpg[:-2], "truncated")  # all scan data, no end-of-image marker
    put("short_by_8.jpg", jpg[:-8], "truncated")  # decoded "fine" with wrong last blocks before the EOI check
    put("half_progressive.jpg", prog[: len(prog) // 2], "truncated")
    corrupt = bytearray(jpg)
    mid = len(jpg) // 2
    corrupt[mid : mid + 64] = bytes([0x00, 0xFF] * 32)
    put("corrupt.jpg", bytes(corrupt), "corrupt")
    put("half.png", png[: len(png) // 2], "truncated")
    corrupt = bytearray(png)
    corrupt[len(png) // 2 : len(png) // 2 + 64] = b"\x00" * 64
    put("corrupt.png", bytes(corrupt), "corrupt")
    put("half.webp", webp[: len(webp) // 2], "truncated")
    put("half.gif", gif[: len(gif) // 2], "truncated")
    put("text.jpg", b"this is not an image\n" * 10, "not an image")
    img.save(d / "photo.tiff")
    out["photo.tiff"] = (d / "photo.tiff", "unsupported")
    write_huge_png_header(d / "huge.png", 100_000, 100_000)
    out["huge.png"] = (d / "huge.png", "limit")
    put("huge.jpg", patch_jpeg_size(jpg, 60_000, 60_000), "limit")
    out["missing.png"] = (d / "missing.png", "No such file")
    (d / "a_directory.png").mkdir()
    out["a_directory.png"] = (d / "a_directory.png", "directory")
    return out


def test_each_bad_input_gets_a_clear_error(bad: dict[str, tuple[Path, str]]) -> None:
    paths = [p for p, _ in bad.values()]
    arrays, errors = load_images(paths)
    for (name, (path, word)), arr, err in zip(bad.items(), arrays, errors):
        assert arr is None, name
        assert err is not None and str(path) in err, (name, err)
        assert word.lower() in err.lower(), (name, err)


def test_bad_input_raises_the_right_class(bad: dict[str, tuple[Path, str]]) -> None:
    classes = {
        "huge.png": ImageTooLargeError,
        "huge.jpg": ImageTooLargeError,
        "missing.png": FileNotFoundError,
    }
    for name, (path, _) in bad.items():
        expected = classes.get(name, OSError if name == "a_directory.png" else ImageDecodeError)
        with pytest.raises(expected) as info:
            load_image(path)
        assert str(path) in str(info.value), name
    assert issubclass(ImageTooLargeError, ImageDecodeError) and issubclass(ImageDecodeError, HpdError)
    assert issubclass(HpdError, Exception)


def test_probe_reads_headers_only(bad: dict[str, tuple[Path, str]]) -> None:
    paths = [p for p, _ in bad.values()]
    sizes, errors = probe_images(paths)
    got = dict(zip(bad, zip(sizes, errors)))
    # A cut or corrupt body still has an intact header: probing succeeds.
    for name in ("half.jpg", "no_eoi.jpg", "half_progressive.jpg", "corrupt.jpg", "half.png", "half.webp"):
        assert got[name] == ((768, 1024), None), name
    assert got["huge.png"] == ((100_000, 100_000), None)  # no limit on probing: nothing is allocated
    assert got["huge.jpg"] == ((60_000, 60_000), None)
    for name in ("empty.jpg", "text.jpg", "photo.tiff", "missing.png", "a_directory.png"):
        size, err = got[name]
        assert size is None and str(bad[name][0]) in err, name
        assert bad[name][1].lower() in err.lower(), (name, err)


def test_huge_headers_are_refused_without_allocating(bad: dict[str, tuple[Path, str]]) -> None:
    # In a child process capped at 8 GiB of address space: decoding the
    # 100000x100000 PNG (30 GB of RGB) or the 60000x60000 JPEG (10.8 GB) would
    # abort the child at the allocation instead of returning the error.
    code = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))\n"
        "import hpd_encode\n"
        "arrays, errors = hpd_encode.load_images(sys.argv[1:], num_threads=1)\n"
        "print(sum(e is not None and 'limit' in e for e in errors))\n"
    )
    paths = [str(bad["huge.png"][0]), str(bad["huge.jpg"][0])]
    done = subprocess.run([sys.executable, "-c", code, *paths], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "2"


def test_pixel_limit(good: dict[str, tuple[Path, bool]]) -> None:
    assert DEFAULT_MAX_PIXELS == 128_000_000
    for name in ("baseline.jpg", "rgb.png", "lossy.webp", "anim.gif", "rgb.bmp"):
        path = good[name][0]
        w, h = Image.open(path).size
        load_one(path, max_pixels=w * h)  # exactly at the limit: fine
        arrays, errors = load_images([path], max_pixels=w * h - 1)
        assert arrays == [None] and "limit" in errors[0] and str(path) in errors[0], name
        with pytest.raises(ImageTooLargeError):
            load_image(path, max_pixels=1000)
        assert probe_image(path) == (h, w)  # probing has no limit


def test_mixed_batch_loads_every_good_item(
    good: dict[str, tuple[Path, bool]], bad: dict[str, tuple[Path, str]]
) -> None:
    goods = [p for p, _ in good.values()]
    bads = [p for p, _ in bad.values()]
    rng = random.Random(3)
    items = [(p, True) for p in goods] + [(p, False) for p in bads]
    rng.shuffle(items)
    paths = [p for p, _ in items]
    size = (256, 384)
    alone = {p: a for p, a in zip(goods, load_images(goods, [size] * len(goods))[0])}

    arrays, errors = load_images(paths, [size] * len(paths))
    batch, batch_errors = load_batch(paths, size)
    assert batch.shape == (len(paths), *size, 3)
    for i, (path, ok) in enumerate(items):
        if ok:
            assert errors[i] is None and batch_errors[i] is None, (path, errors[i])
            np.testing.assert_array_equal(arrays[i], alone[path])
            np.testing.assert_array_equal(batch[i], alone[path])
        else:
            assert arrays[i] is None and str(path) in errors[i]
            assert batch_errors[i] == errors[i]
            assert not batch[i].any(), "a failed slot must be zero-filled"


def test_fuzzed_files_never_raise(tmp_path: Path, photo) -> None:
    """Cut and scrambled files: each item fails or loads on its own; no
    exception (a PanicException is a BaseException: pytest would report it)."""
    img = photo("astronaut", (96, 128))
    sources = []
    for ext, kw in (
        ("jpg", {"quality": 85}),
        ("jpg", {"progressive": True}),
        ("png", {}),
        ("webp", {"quality": 80}),
        ("webp", {"lossless": True}),
        ("gif", {}),
        ("bmp", {}),
    ):
        path = tmp_path / f"src{len(sources)}.{ext}"
        img.save(path, **kw)
        sources.append((ext, path.read_bytes()))
    rng = random.Random(1234)
    paths = []
    for i, (ext, data) in enumerate(sources):
        for j in range(40):
            b = bytearray(data)
            kind = j % 4
            if kind == 0:
                b = b[: rng.randrange(1, len(b))]
            elif kind == 1:
                for _ in range(rng.randrange(1, 20)):
                    b[rng.randrange(len(b))] = rng.randrange(256)
            elif kind == 2:
                at = rng.randrange(len(b))
                b[at : at + 32] = bytes(rng.randrange(256) for _ in range(32))
            else:
                at = rng.randrange(8, 200)  # the headers
                b[at] ^= 0xFF
            path = tmp_path / f"fuzz_{i}_{j}.{ext}"
            path.write_bytes(bytes(b))
            paths.append(path)
    sizes, probe_errors = probe_images(paths)
    arrays, errors = load_images(paths, [(64, 64)] * len(paths))
    batch, batch_errors = load_batch(paths, (64, 64))
    _, normalized_errors = load_batch(paths, (64, 64), normalize=True)
    assert normalized_errors == batch_errors
    assert len(arrays) == len(errors) == len(batch_errors) == len(paths)
    for path, arr, err, berr in zip(paths, arrays, errors, batch_errors):
        assert (arr is None) != (err is None)
        assert (berr is None) == (err is None)
        if err is not None:
            assert str(path) in err
        else:
            assert arr.shape == (64, 64, 3)
    assert sum(e is not None for e in errors) > len(paths) // 4  # the fuzzing did break files


def test_paths_may_be_pathlike_and_non_ascii(tmp_path: Path, photo) -> None:
    path = tmp_path / "фото ü 1.png"
    photo("rocket", (300, 400)).save(path)
    arrays, errors = load_images([path, str(path)])
    assert errors == [None, None]
    np.testing.assert_array_equal(arrays[0], arrays[1])
    missing = tmp_path / "нет.png"
    _, errors = load_images([missing])
    assert str(missing) in errors[0]


# ---------------------------------------------------------------------------
# Threads, batches, arguments


def test_thread_counts_give_identical_arrays(good: dict[str, tuple[Path, bool]]) -> None:
    paths = [p for p, _ in good.values()] * 2
    sizes = [(512, 512) if i % 2 else (832, 1248) for i in range(len(paths))]
    one, e1 = load_images(paths, sizes, num_threads=1)
    two, e2 = load_images(paths, sizes, num_threads=2)
    every, e3 = load_images(paths, sizes)  # default: all cores
    assert e1 == e2 == e3 == [None] * len(paths)
    for a, b, c in zip(one, two, every):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    b1, _ = load_batch(paths, (512, 512), num_threads=1)
    b3, _ = load_batch(paths, (512, 512), num_threads=3)
    bn, _ = load_batch(paths, (512, 512))
    np.testing.assert_array_equal(b1, b3)
    np.testing.assert_array_equal(b1, bn)


def test_load_batch_is_ready_for_torch(good: dict[str, tuple[Path, bool]]) -> None:
    torch = pytest.importorskip("torch")
    paths = [good[n][0] for n in ("baseline.jpg", "rgb.png", "lossy.webp")]
    size = (832, 1248)
    batch, errors = load_batch(paths, size)
    assert errors == [None] * 3
    assert batch.dtype == np.uint8 and batch.shape == (3, *size, 3)
    assert batch.flags.c_contiguous and batch.flags.writeable
    arrays, _ = load_images(paths, [size] * 3)
    for a, b in zip(arrays, batch):
        np.testing.assert_array_equal(a, b)
    t = torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 127.5 - 1
    assert t.shape == (3, 3, *size) and float(t.min()) >= -1 and float(t.max()) <= 1
    assert np.shares_memory(torch.from_numpy(batch).numpy(), batch)


def normalized(batch: np.ndarray) -> np.ndarray:
    """The reference's normalisation of a uint8 ``(n, h, w, 3)`` batch, in float32 throughout."""
    return np.float32(batch.transpose(0, 3, 1, 2)) / np.float32(127.5) - np.float32(1)


def test_normalized_batch_is_the_float_normalisation_of_the_uint8_batch(
    good: dict[str, tuple[Path, bool]], bad: dict[str, tuple[Path, str]]
) -> None:
    torch = pytest.importorskip("torch")
    # rgb.png is 1024x1024 already (converted without resampling); the rest are resized.
    paths = [p for p, _ in good.values()] + [p for p, _ in bad.values()]
    random.Random(5).shuffle(paths)
    size = (1024, 1024)
    batch, errors = load_batch(paths, size)
    x, x_errors = load_batch(paths, size, normalize=True)
    assert x_errors == errors and any(e is None for e in errors) and any(e is not None for e in errors)
    assert x.dtype == np.float32 and x.shape == (len(paths), 3, *size)
    assert (
        x.flags.c_contiguous and x.flags.writeable and x.flags.owndata is False
    )  # NumPy views Rust's buffer
    ok = [i for i, e in enumerate(errors) if e is None]
    failed = [i for i, e in enumerate(errors) if e is not None]
    # Bit-identical to NumPy's float32 formula and to torch's on the CPU.
    np.testing.assert_array_equal(x[ok].view(np.uint32), normalized(batch[ok]).view(np.uint32))
    t = torch.from_numpy(batch[ok]).permute(0, 3, 1, 2).float() / 127.5 - 1
    np.testing.assert_array_equal(x[ok].view(np.uint32), t.contiguous().numpy().view(np.uint32))
    assert x[ok].min() >= -1 and x[ok].max() <= 1
    assert not x[failed].any(), "a failed slot must be zero-filled (0.0)"
    # Every byte value maps exactly, ends included.
    levels = np.arange(256, dtype=np.uint8)
    grey = Image.fromarray(np.repeat(levels[None, :, None], 3, axis=2))  # a 1x256 ramp, already at its size
    ramp = paths[ok[0]].parent / "ramp.png"
    grey.save(ramp)
    r, _ = load_batch([ramp], (1, 256), normalize=True)
    expected = normalized(levels[None, None, :, None].repeat(3, axis=3))
    np.testing.assert_array_equal(r.view(np.uint32), expected.view(np.uint32))
    assert r[0, 0, 0, 0] == -1.0 and r[0, 0, 0, 255] == 1.0


def test_normalized_batch_is_the_same_at_any_thread_count(good: dict[str, tuple[Path, bool]]) -> None:
    paths = [p for p, _ in good.values()] * 2
    x1, e1 = load_batch(paths, (512, 768), num_threads=1, normalize=True)
    x3, e3 = load_batch(paths, (512, 768), num_threads=3, normalize=True)
    xn, en = load_batch(paths, (512, 768), normalize=True)
    assert e1 == e3 == en == [None] * len(paths)
    np.testing.assert_array_equal(x1, x3)
    np.testing.assert_array_equal(x1, xn)


def test_load_batch_into_a_reused_buffer(
    good: dict[str, tuple[Path, bool]], bad: dict[str, tuple[Path, str]]
) -> None:
    """``out=``: the same values as a fresh batch, written into the caller's
    array (returned as is), failed slots overwritten with zeros too."""
    paths = [p for p, _ in good.values()][:4] + [next(iter(bad.values()))[0]]
    size = (96, 64)
    for normalize, dtype, shape in (
        (False, np.uint8, (len(paths), *size, 3)),
        (True, np.float32, (len(paths), 3, *size)),
    ):
        fresh, errors = load_batch(paths, size, normalize=normalize)
        buf = np.full(shape, 7, dtype)  # stale contents from an earlier batch
        for _ in range(2):
            got, got_errors = load_batch(paths, size, normalize=normalize, out=buf)
            assert got is buf and got_errors == errors and errors[-1] is not None
            np.testing.assert_array_equal(got, fresh)
        assert not buf[-1].any(), "the failed slot is zero-filled, not left stale"
        # A view of a larger flat buffer works when it is C-contiguous.
        flat = np.zeros(int(np.prod(shape)) + 10, dtype)
        view = flat[: np.prod(shape)].reshape(shape)
        load_batch(paths, size, normalize=normalize, out=view)
        np.testing.assert_array_equal(view, fresh)

    u8 = np.zeros((len(paths), *size, 3), np.uint8)
    with pytest.raises(
        TypeError, match=r"out must be a 4-D numpy float32 array \(n, 3, h, w\), not ndarray of uint8"
    ):
        load_batch(paths, size, normalize=True, out=u8)
    with pytest.raises(TypeError, match="not list"):
        load_batch(paths, size, out=[0, 1])
    with pytest.raises(
        ValueError, match=r"out has shape \[4, 96, 64, 3\], this batch needs \[5, 96, 64, 3\]"
    ):
        load_batch(paths, size, out=u8[:4])
    with pytest.raises(ValueError, match="C-contiguous"):
        load_batch(paths, size, out=np.zeros((len(paths), size[0], size[1] * 2, 3), np.uint8)[:, :, ::2])
    with pytest.raises(ValueError, match="C-contiguous"):
        load_batch(paths, size, out=np.asfortranarray(u8))
    u8.flags.writeable = False
    with pytest.raises(ValueError, match="not writeable"):
        load_batch(paths, size, out=u8)


def test_fresh_batches_recycle_their_memory(
    good: dict[str, tuple[Path, bool]], bad: dict[str, tuple[Path, str]]
) -> None:
    """A batch's buffer goes back to a pool when the array and all its views
    are gone, and the next batch that fits reuses it: same values as ever,
    failed slots zero-filled, never the memory of an array still alive."""
    import torch

    paths = [p for p, _ in good.values()][:4]
    broken = next(iter(bad.values()))[0]
    size = (96, 64)
    addr = lambda a: a.__array_interface__["data"][0]  # noqa: E731
    for normalize in (False, True):
        hpd_encode.free_batch_buffers()
        first, _ = load_batch(paths, size, normalize=normalize)
        expected = first.copy()
        where = addr(first)
        assert first.flags.writeable and first.flags.c_contiguous
        del first
        # The same call again: the same memory, the same values.
        again, _ = load_batch(paths, size, normalize=normalize)
        assert addr(again) == where
        np.testing.assert_array_equal(again, expected)
        # A smaller batch with a failed slot reuses it: the bad slot is zeros,
        # not the pixels the buffer held before.
        del again
        mixed, errors = load_batch([broken, *paths[:2]], size, normalize=normalize)
        assert addr(mixed) == where and errors[0] is not None and errors[1:] == [None, None]
        assert not mixed[0].any()
        np.testing.assert_array_equal(mixed[1:], expected[:2])
        # Memory still referenced (a view, a tensor) is never handed out again.
        view = mixed[1:]
        tensor = torch.from_numpy(mixed)
        del mixed
        others = [load_batch(paths[::-1], size, normalize=normalize)[0] for _ in range(3)]
        assert where not in {addr(o) for o in others}
        np.testing.assert_array_equal(view, expected[:2])
        np.testing.assert_array_equal(tensor[1:].numpy(), expected[:2])
        del view, tensor, others
        assert hpd_encode.free_batch_buffers() > 0
        assert hpd_encode.free_batch_buffers() == 0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_loads_batches(good: dict[str, tuple[Path, bool]]) -> None:
    """After a fork (DataLoader workers, multiprocessing's default on Linux)
    the child has none of the parent's worker threads: it must build its own
    pool and may use the recycled buffers it inherited, without hanging."""
    paths = [p for p, _ in good.values()][:4]
    size = (96, 64)
    expected, _ = load_batch(paths, size, num_threads=2, normalize=True)  # pools exist now
    expected = expected.copy()  # ...and the batch's buffer is back in the recycling pool
    pid = os.fork()
    if pid == 0:  # the child: exit status 0 only when the batch is right
        code = 1
        try:
            got, errors = load_batch(paths, size, num_threads=2, normalize=True)
            code = 0 if errors == [None] * 4 and np.array_equal(got, expected) else 2
        finally:
            os._exit(code)
    deadline = time.monotonic() + 60
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0:
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung loading a batch")
        time.sleep(0.05)
    assert os.waitstatus_to_exitcode(done[1]) == 0


def test_load_image_and_probe_image(good: dict[str, tuple[Path, bool]]) -> None:
    path = good["progressive.jpg"][0]
    np.testing.assert_array_equal(load_image(path), load_one(path))
    np.testing.assert_array_equal(load_image(path, (300, 200)), load_one(path, (300, 200)))
    assert probe_image(path) == (832, 1248)


def test_empty_inputs() -> None:
    assert probe_images([]) == ([], [])
    assert load_images([]) == ([], [])
    batch, errors = load_batch([], (64, 32))
    assert batch.shape == (0, 64, 32, 3) and errors == []
    x, errors = load_batch([], (64, 32), normalize=True)
    assert x.shape == (0, 3, 64, 32) and x.dtype == np.float32 and errors == []


@pytest.mark.parametrize(
    "call",
    [
        lambda p: load_images([p], alpha="red"),
        lambda p: load_images([p], [(10, 10), (10, 10)]),
        lambda p: load_images([p], [(0, 10)]),
        lambda p: load_images([p], [(-3, 10)]),
        lambda p: load_images([p], [(20_000, 20_000)]),  # over the pixel limit
        lambda p: load_batch([p], (10, 0)),
        lambda p: load_batch([p], (10, -1)),
        lambda p: load_batch([p], (100_000, 100_000)),
        lambda p: load_batch([p], (64, 64), alpha="grey"),
        lambda p: load_batch([p], (0, 64), normalize=True),
        lambda p: load_batch([p], (100_000, 100_000), normalize=True),
        lambda p: load_image(p, (0, 5)),
    ],
)
def test_bad_arguments_raise_value_error(good: dict[str, tuple[Path, bool]], call) -> None:
    with pytest.raises(ValueError):
        call(good["rgb.png"][0])
