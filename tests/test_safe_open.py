"""Opening image files safely (issues #15 item 2 and #16): paths from metadata
are opened beneath the data root by the Rust core (no absolute path, no
``..``, no symlink out of the root, checked at open time so a symlink swapped
in after planning is still refused); anything but a regular file is refused
before a byte is read (a FIFO never hangs); reads are bounded; a batch the
machine cannot hold raises ``MemoryError`` instead of aborting.

Every case runs on real files: JPEG/PNG written with Pillow, real symlinks,
FIFOs and (where allowed) device nodes."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hpd_encode import _core
from hpd_encode.errors import UnsafePathError as PyUnsafePathError
from reference_paths import resolve_image_path

SIZE = (48, 64)  # (h, w) of the test pictures


def picture(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8))


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    """tmp/root with good images, in-root symlinks (relative and absolute),
    symlinks out, a FIFO, a directory and device links named like images;
    tmp/outside.png beside it."""
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    picture(1).save(root / "a.jpg", quality=92)
    picture(2).save(root / "sub" / "b.png")
    picture(3).save(tmp_path / "outside.png")
    (root / "in_link.png").symlink_to("sub/b.png")
    (root / "abs_in_link.jpg").symlink_to(root / "a.jpg")
    (root / "out_link.png").symlink_to("../outside.png")
    (root / "abs_out_link.png").symlink_to(tmp_path / "outside.png")
    (root / "zero.jpg").symlink_to("/dev/zero")
    (root / "null.jpg").symlink_to("/dev/null")
    (root / "dir.jpg").mkdir()
    os.mkfifo(root / "fifo.jpg")
    return root


def python_reason(root: Path, rel: str) -> str:
    """What the Python-side resolve_image_path says about ``rel``."""
    with pytest.raises(PyUnsafePathError) as e:
        resolve_image_path(root, rel)
    return str(e.value)


UNSAFE = [
    "/etc/passwd",
    "\\windows\\x.jpg",
    "C:x.jpg",
    "../outside.png",
    "sub/../../outside.png",
    "a\\..\\b",
    "",
]


@pytest.mark.parametrize("rel", UNSAFE)
def test_unsafe_paths_are_refused_with_the_python_reasons(tree: Path, rel: str) -> None:
    heights, widths, kinds, errors = _core.probe_paths(tree, [rel])
    assert kinds.tolist() == [_core.PROBE_UNSAFE_PATH] and heights.tolist() == [0] and widths.tolist() == [0]
    assert errors == [python_reason(tree, rel)]
    _, load_errors = _core.load_batch([rel], (8, 8), root=tree)
    assert load_errors == errors
    with pytest.raises(_core.UnsafePathError) as e:
        _core.load_image(rel, root=tree)
    assert str(e.value) == errors[0]
    assert isinstance(e.value, ValueError) and isinstance(e.value, _core.HpdError)


@pytest.mark.parametrize("rel", ["out_link.png", "abs_out_link.png", "zero.jpg", "null.jpg"])
def test_symlinks_out_of_the_root_are_refused(tree: Path, rel: str) -> None:
    _, _, kinds, errors = _core.probe_paths(tree, [rel])
    assert kinds.tolist() == [_core.PROBE_UNSAFE_PATH]
    assert errors == [python_reason(tree, rel)], "the same words as resolve_image_path"
    assert "outside the data root" in errors[0]
    sizes, probe_errors = _core.probe_images([rel], root=tree)
    assert sizes == [None] and probe_errors == errors


def test_symlinks_inside_the_root_are_followed(tree: Path) -> None:
    rels = ["a.jpg", "sub/b.png", "in_link.png", "abs_in_link.jpg", "./sub//b.png"]
    heights, widths, kinds, errors = _core.probe_paths(tree, rels)
    assert kinds.tolist() == [_core.PROBE_OK] * 5 and errors == [None] * 5
    assert heights.dtype == np.int64 and widths.dtype == np.int64 and kinds.dtype == np.uint8
    assert list(zip(heights.tolist(), widths.tolist())) == [SIZE] * 5
    batch, errs = _core.load_batch(rels, SIZE, root=tree)
    assert errs == [None] * 5
    direct, _ = _core.load_images([tree / r for r in rels])
    for got, want in zip(batch, direct):
        np.testing.assert_array_equal(got, want)


def test_probe_paths_matches_probe_images(tree: Path) -> None:
    rels = ["a.jpg", "sub/b.png", "missing.jpg", "dir.jpg", "out_link.png"]
    heights, widths, kinds, errors = _core.probe_paths(tree, rels, num_threads=2)
    sizes, probe_errors = _core.probe_images([str(tree / r) for r in rels[:4]])
    assert [(h, w) if k == 0 else None for h, w, k in zip(heights, widths, kinds)][:4] == sizes
    assert kinds.tolist() == [
        _core.PROBE_OK,
        _core.PROBE_OK,
        _core.PROBE_MISSING,
        _core.PROBE_NOT_REGULAR,
        _core.PROBE_UNSAFE_PATH,
    ]
    assert errors[:4] == probe_errors
    codes = [_core.PROBE_OK, _core.PROBE_UNSAFE_PATH, _core.PROBE_UNREADABLE, _core.PROBE_NOT_REGULAR]
    assert codes + [_core.PROBE_BAD_IMAGE, _core.PROBE_MISSING] == [0, 1, 2, 3, 4, 5]


def test_probe_paths_applies_the_pixel_limit(tree: Path) -> None:
    _, _, kinds, errors = _core.probe_paths(tree, ["a.jpg"], max_pixels=100)
    assert kinds.tolist() == [_core.PROBE_BAD_IMAGE]
    assert "over the limit of 100 pixels" in errors[0]
    (tree / "junk.jpg").write_bytes(b"not an image at all")
    _, _, kinds, errors = _core.probe_paths(tree, ["junk.jpg"])
    assert kinds.tolist() == [_core.PROBE_BAD_IMAGE] and "not an image" in errors[0]


def test_a_symlink_swapped_in_after_planning_is_refused_at_decode(tree: Path) -> None:
    rels = ["sub/b.png", "a.jpg", "in_link.png"]
    _, _, kinds, _ = _core.probe_paths(tree, rels)
    assert kinds.tolist() == [_core.PROBE_OK] * 3, "planned: every image is fine"
    # Between planning and decoding, a.jpg becomes a symlink out of the root.
    (tree / "a.jpg").unlink()
    (tree / "a.jpg").symlink_to(tree.parent / "outside.png")
    for normalize in (False, True):
        batch, errors = _core.load_batch(rels, SIZE, root=tree, normalize=normalize)
        assert errors[0] is None and errors[2] is None
        assert errors[1] is not None and "outside the data root" in errors[1], errors[1]
        assert not batch[1].any(), "the refused slot is zero-filled"
        assert batch[0].any() and batch[2].any()
    images, errors = _core.load_images(rels, root=tree)
    assert images[1] is None and "outside the data root" in errors[1]
    np.testing.assert_array_equal(images[0], np.asarray(Image.open(tree / "sub" / "b.png").convert("RGB")))


def test_non_regular_files_are_refused(tree: Path) -> None:
    for rel, what in [("dir.jpg", "directory"), ("fifo.jpg", "FIFO")]:
        _, _, kinds, errors = _core.probe_paths(tree, [rel])
        assert kinds.tolist() == [_core.PROBE_NOT_REGULAR]
        assert f"not a regular file ({what})" in errors[0], errors[0]
        with pytest.raises(_core.NotRegularFileError) as e:
            _core.load_image(tree / rel)
        assert isinstance(e.value, OSError) and f"not a regular file ({what})" in str(e.value)
    # Without a root, a link to a device is followed and then refused as not regular.
    sizes, errors = _core.probe_images([tree / "zero.jpg", tree / "null.jpg"])
    assert sizes == [None, None]
    assert all("not a regular file (character device)" in e for e in errors), errors


def test_a_device_node_inside_the_root_is_refused(tree: Path) -> None:
    try:
        os.mknod(tree / "dev.jpg", stat.S_IFCHR | 0o600, os.makedev(1, 5))  # a /dev/zero node
    except (PermissionError, OSError) as e:
        pytest.skip(f"cannot make a device node here: {e}")
    _, _, kinds, errors = _core.probe_paths(tree, ["dev.jpg"])
    assert kinds.tolist() == [_core.PROBE_NOT_REGULAR]
    assert "not a regular file (character device)" in errors[0]
    _, errors = _core.load_batch(["dev.jpg"], (8, 8), root=tree)
    assert "character device" in errors[0]


def test_a_fifo_never_hangs(tree: Path) -> None:
    """Each image function on a FIFO named like an image, with and without a
    root, in a child process that is killed if it hangs."""
    code = textwrap.dedent(
        f"""
        from hpd_encode import _core
        root = {str(tree)!r}
        fifo = root + "/fifo.jpg"
        results = [
            _core.probe_images([fifo])[1][0],
            _core.probe_images(["fifo.jpg"], root=root)[1][0],
            _core.probe_paths(root, ["fifo.jpg"])[3][0],
            _core.load_images([fifo])[1][0],
            _core.load_batch(["fifo.jpg"], (8, 8), root=root)[1][0],
            _core.load_batch([fifo], (8, 8), normalize=True)[1][0],
        ]
        for name, call in [("probe_image", lambda: _core.probe_image(fifo)),
                           ("load_image", lambda: _core.load_image("fifo.jpg", root=root))]:
            try:
                call()
                results.append(name + " returned")
            except OSError as e:
                results.append(str(e))
        assert all("not a regular file (FIFO)" in r for r in results), results
        print("ok", len(results))
        """
    )
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("reading a FIFO hung")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok 8"


def test_files_over_the_byte_limit_are_refused_unread(tree: Path) -> None:
    padded = tree / "padded.png"
    picture(4).save(padded)
    real_size = padded.stat().st_size
    with open(padded, "r+b") as f:  # sparse: 3 GB of padding costs no disk and is never read
        f.truncate(3 << 30)
    _, _, kinds, errors = _core.probe_paths(tree, ["padded.png"])
    assert kinds.tolist() == [_core.PROBE_BAD_IMAGE]
    assert f"file is {3 << 30} bytes, over the limit of {_core.DEFAULT_MAX_FILE_BYTES} bytes" in errors[0]
    assert _core.DEFAULT_MAX_FILE_BYTES == _core.DEFAULT_MAX_PIXELS * 8 + (16 << 20)
    with pytest.raises(_core.ImageTooLargeError, match="over the limit"):
        _core.load_image(padded)
    # A smaller padding under an explicit limit: loads (bytes after IEND are ignored).
    with open(padded, "r+b") as f:
        f.truncate(real_size + 10_000)
    _, errors = _core.load_images([padded], max_file_bytes=real_size + 9_999)
    assert f"over the limit of {real_size + 9_999} bytes" in errors[0]
    images, errors = _core.load_images([padded], max_file_bytes=real_size + 10_000)
    assert errors == [None] and images[0].shape == (*SIZE, 3)
    # The default limit follows max_pixels.
    with open(padded, "r+b") as f:
        f.truncate(20 << 20)
    _, errors = _core.load_batch(["padded.png"], (8, 8), root=tree, max_pixels=100)
    assert f"over the limit of {100 * 8 + (16 << 20)} bytes" in errors[0]


def test_a_missing_root_is_one_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope"):
        _core.probe_paths(tmp_path / "nope", ["a.jpg"])
    with pytest.raises(FileNotFoundError):
        _core.load_batch(["a.jpg"], (8, 8), root=tmp_path / "nope")
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(NotADirectoryError):
        _core.load_images(["a.jpg"], root=tmp_path / "file")


def machine_memory() -> int:
    """RAM plus swap, as /proc/meminfo gives them."""
    fields = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    return (int(fields["MemTotal"].split()[0]) + int(fields["SwapTotal"].split()[0])) * 1024


@pytest.mark.skipif(not Path("/proc/meminfo").exists(), reason="needs /proc/meminfo")
@pytest.mark.parametrize("normalize", [False, True])
def test_a_batch_larger_than_memory_raises_memory_error(tree: Path, normalize: bool) -> None:
    """#16: 20 images of 11000x11000 with normalize=True (29 GB) aborted the
    process. One small real path, repeated: the check comes before any decode."""
    h = w = 11_000
    per_image = h * w * 3 * (4 if normalize else 1)
    n = machine_memory() // per_image + 1  # just over this machine's memory
    with pytest.raises(MemoryError) as e:
        _core.load_batch(["a.jpg"] * n, (h, w), root=tree, normalize=normalize)
    assert isinstance(e.value, _core.OutOfMemoryError) and isinstance(e.value, _core.HpdError)
    assert f"a batch of {n} images of 11000x11000" in str(e.value)
    assert f"needs {n * per_image} bytes" in str(e.value)
    if 20 * h * w * 12 > machine_memory() and normalize:
        with pytest.raises(MemoryError, match="needs 29040000000 bytes"):
            _core.load_batch(["a.jpg"] * 20, (h, w), root=tree, normalize=True)
    # The process is alive and the next batch loads.
    batch, errors = _core.load_batch(["a.jpg"], SIZE, root=tree, normalize=normalize)
    assert errors == [None] and batch.shape[0] == 1


def test_decoding_more_than_memory_is_an_error(tmp_path: Path) -> None:
    """A header announcing more pixels than the machine can hold (allowed by a
    raised pixel limit): that item's error, MemoryError for one image."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    side = 1 << 20
    huge = tmp_path / "huge.png"
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    huge.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)))
    images, errors = _core.load_images([huge], max_pixels=1 << 42)
    assert images == [None] and "more than this machine's" in errors[0], errors
    with pytest.raises(MemoryError):
        _core.load_image(huge, max_pixels=1 << 42)
