"""download / extract / check on real files the tests build: real tar.gz
archives split into parts, hostile members, truncated parts, real PNG images."""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Sequence
from pathlib import Path

import pytest
from PIL import Image

from hpd_encode.check import check_dataset, image_of
from hpd_encode.cli import build_parser
from hpd_encode.fetch import (
    ArchiveError,
    ExtractLimitError,
    download,
    extract,
    find_archive_parts,
    natural_key,
    parse_size,
)
from hpd_encode.output_dir import LOCK_FILE

# --------------------------------------------------------------------------- helpers


def payload(seed: int = 0, n: int = 30, max_size: int = 60_000) -> dict[str, bytes]:
    """Incompressible files of varied sizes (0 included) in a few directories."""
    rng = random.Random(seed)
    files = {}
    for i in range(n):
        size = 0 if i == 3 else rng.randrange(1, max_size)
        files[f"images/set{i % 3}/img_{i:03d}.jpg"] = rng.randbytes(size)
    return files


def reg(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 1_700_000_000
    return info, data


def build_tar(members: Sequence[tuple[tarfile.TarInfo, bytes | None]], gz: bool = True) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    raw = buf.getvalue()
    return gzip.compress(raw, compresslevel=1, mtime=0) if gz else raw


def tar_of(files: dict[str, bytes], gz: bool = True, with_dirs: bool = True) -> bytes:
    members: list[tuple[tarfile.TarInfo, bytes | None]] = []
    if with_dirs:
        for d in sorted({str(Path(n).parent) for n in files}):
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            members.append((info, None))
    members += [reg(n, d) for n, d in files.items()]
    return build_tar(members, gz=gz)


def split(data: bytes, directory: Path, names: Sequence[str]) -> list[Path]:
    """Write ``data`` as len(names) consecutive parts, in the order given."""
    directory.mkdir(parents=True, exist_ok=True)
    step = -(-len(data) // len(names))
    paths = []
    for i, name in enumerate(names):
        p = directory / name
        p.write_bytes(data[i * step : (i + 1) * step])
        paths.append(p)
    return paths


def numbered(n: int, fmt: str = "images.tar.gz.part-{}") -> list[str]:
    return [fmt.format(i) for i in range(1, n + 1)]


def tree(root: Path) -> dict[str, bytes]:
    """Every regular file under root (relative posix path -> bytes), leaving
    out the lock file extract holds in its root (empty once released)."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink() and p.relative_to(root).as_posix() != LOCK_FILE
    }


def temp_leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".hpd-tmp")]


def run_cli(argv: list[str]) -> int:
    """Run a subcommand through the real ``hpd-encode`` parser (exceptions propagate)."""
    args = build_parser().parse_args(argv)
    return int(args.func(args))


# --------------------------------------------------------------------------- naming


def test_natural_key_orders_part_numbers_by_value() -> None:
    names = ["x.part-10", "x.part-2", "x.part-1", "x.part-100", "x.part-9"]
    assert sorted(names, key=natural_key) == ["x.part-1", "x.part-2", "x.part-9", "x.part-10", "x.part-100"]
    letters = ["a.tar.gz.ab", "a.tar.gz.ba", "a.tar.gz.aa", "a.tar.gz.zaaa", "a.tar.gz.yz"]
    assert sorted(letters, key=natural_key) == [
        "a.tar.gz.aa",
        "a.tar.gz.ab",
        "a.tar.gz.ba",
        "a.tar.gz.yz",
        "a.tar.gz.zaaa",
    ]
    assert sorted(["p.010", "p.001", "p.000", "p.9000"], key=natural_key) == [
        "p.000",
        "p.001",
        "p.010",
        "p.9000",
    ]


def test_find_archive_parts_groups_and_ignores_sidecars(tmp_path: Path) -> None:
    for name in [
        *numbered(11),  # images.tar.gz.part-1 … part-11
        "images.tar.gz.part-3.sha256",
        "images.tar.gz.md5",
        "images.tar.gz.json",
        "videos.tgz.partaa",
        "videos.tgz.partab",
        "train.json",
        "README.md",
        ".images.tar.gz.part-1.hpd-tmp",
    ]:
        (tmp_path / name).write_bytes(b"x")
    groups = find_archive_parts(tmp_path)
    assert [[p.name for p in g] for g in groups] == [numbered(11), ["videos.tgz.partaa", "videos.tgz.partab"]]


def test_split_part_named_like_a_sidecar_is_kept(tmp_path: Path) -> None:
    # `split -a 2` names its 316th part "md" (and 3-letter runs hit "asc", "log"...).
    letters = "abcdefghijklmnopqrstuvwxyz"
    suffixes = [a + b for a in letters for b in letters][:339]
    for prefix in ("images.tar.gz.part-", "videos.tar.gz."):
        for sfx in suffixes:
            (tmp_path / f"{prefix}{sfx}").write_bytes(b"x")
    (tmp_path / "other.tar.gz.part-aa").write_bytes(b"x")
    (tmp_path / "other.tar.gz.md").write_bytes(b"x")  # a real sidecar: its suffix differs from the parts'
    groups = {g[0].name.split(".")[0]: [p.name for p in g] for g in find_archive_parts(tmp_path)}
    assert len(groups["images"]) == len(groups["videos"]) == 339
    assert "images.tar.gz.part-md" in groups["images"] and "videos.tar.gz.md" in groups["videos"]
    assert groups["other"] == ["other.tar.gz.part-aa"]


def test_find_archive_parts_refuses_whole_archive_beside_its_parts(tmp_path: Path) -> None:
    for name in ["images.tar.gz", "images.tar.gz.000", "images.tar.gz.001"]:
        (tmp_path / name).write_bytes(b"x")
    with pytest.raises(ValueError, match="both 'images.tar.gz' and parts of it"):
        find_archive_parts(tmp_path)


def test_parse_size() -> None:
    assert parse_size("1048576") == 1 << 20
    assert parse_size("512M") == 512 << 20
    assert parse_size("1.5G") == 3 << 29
    assert parse_size("4TiB") == 4 << 40
    assert parse_size("none") is None
    with pytest.raises(ValueError, match="cannot read size"):
        parse_size("12 parsecs")


# --------------------------------------------------------------------------- extract: normal


def test_extract_twelve_parts_in_natural_order_byte_exact(tmp_path: Path) -> None:
    files = payload()
    data = tar_of(files)
    parts = split(data, tmp_path / "dl", numbered(12))
    assert min(p.stat().st_size for p in parts) > 70_000  # members cross part boundaries
    # Noise the directory search must leave alone.
    (tmp_path / "dl" / "train.json").write_text("[]")
    (tmp_path / "dl" / "images.tar.gz.part-12.sha256").write_text("0" * 64)

    report = extract(tmp_path / "dl", tmp_path / "root", progress=False)

    assert tree(tmp_path / "root") == files
    assert report.extracted == len(files) and report.skipped == 0 and report.refused == []
    assert report.bytes_written == sum(map(len, files.values()))
    assert [p.name for p in report.parts] == numbered(12)
    assert temp_leftovers(tmp_path / "root") == []
    assert (tmp_path / "root/images/set1/img_001.jpg").stat().st_mtime == 1_700_000_000


def test_extract_sorts_explicit_parts_like_a_human(tmp_path: Path) -> None:
    files = payload(seed=1)
    parts = split(tar_of(files), tmp_path / "dl", numbered(12))
    shuffled = sorted(
        parts, key=lambda p: p.name
    )  # what a shell glob gives: part-1, part-10, part-11, part-2 …
    assert shuffled != parts
    report = extract([str(p) for p in shuffled], tmp_path / "root", progress=False)
    assert tree(tmp_path / "root") == files
    assert report.parts == parts


@pytest.mark.parametrize(
    "names, gz",
    [
        (["images.tar.gz.part-aa", "images.tar.gz.part-ab", "images.tar.gz.part-ac"], True),
        (["images.tar.gz.partaa", "images.tar.gz.partab", "images.tar.gz.partac"], True),
        (["images.tar.gz.000", "images.tar.gz.001", "images.tar.gz.002"], True),
        (["images.tar.gzaa", "images.tar.gzab", "images.tar.gzac"], True),  # `split` with no separator
        (["images.tar.part_01", "images.tar.part_02", "images.tar.part_03"], False),  # plain tar
        (["images.tar.gz"], True),
    ],
)
def test_extract_naming_schemes(tmp_path: Path, names: list[str], gz: bool) -> None:
    files = payload(seed=2, n=8)
    split(tar_of(files, gz=gz), tmp_path / "dl", names)
    extract(tmp_path / "dl", tmp_path / "root", progress=False)
    assert tree(tmp_path / "root") == files


def test_extract_multi_member_gzip(tmp_path: Path) -> None:
    """bgzip-style: the tar compressed as several concatenated gzip members."""
    files = payload(seed=3, n=10)
    raw = tar_of(files, gz=False)
    cut = len(raw) // 3
    data = b"".join(gzip.compress(raw[i : i + cut], compresslevel=1) for i in range(0, len(raw), cut))
    split(data, tmp_path / "dl", numbered(4))
    extract(tmp_path / "dl", tmp_path / "root", progress=False)
    assert tree(tmp_path / "root") == files


# --------------------------------------------------------------------------- extract: hostile members


def pax_sparse(name: str, realsize: int) -> tuple[tarfile.TarInfo, bytes]:
    """A GNU PAX 1.0 sparse member: a few bytes in the archive, ``realsize`` once extracted."""
    sparse_map = f"1\n{realsize - 4}\n4\n".encode().ljust(512, b"\0")
    data = sparse_map + b"DATA"
    info = tarfile.TarInfo(f"GNUSparseFile.0/{name}")
    info.size = len(data)
    info.pax_headers = {
        "GNU.sparse.major": "1",
        "GNU.sparse.minor": "0",
        "GNU.sparse.name": name,
        "GNU.sparse.realsize": str(realsize),
    }
    return info, data


def special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info, None


def test_extract_refuses_hostile_members_and_goes_on(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "target.txt").write_bytes(b"precious")
    root = tmp_path / "root"
    good = {f"ok/{i}.bin": os.urandom(100 + i) for i in range(9)}
    members = [
        reg("ok/0.bin", good["ok/0.bin"]),
        reg("../escape.txt", b"evil"),
        reg("ok/1.bin", good["ok/1.bin"]),
        reg(str(outside / "absolute.txt"), b"evil"),
        reg("ok/../../escape2.txt", b"evil"),
        special("link", tarfile.SYMTYPE, str(outside)),
        reg("ok/2.bin", good["ok/2.bin"]),
        special("hard", tarfile.LNKTYPE, str(outside / "target.txt")),
        special("dev/null", tarfile.CHRTYPE),
        special("dev/sda", tarfile.BLKTYPE),
        special("pipe", tarfile.FIFOTYPE),
        reg("ok/3.bin", good["ok/3.bin"]),
        pax_sparse("huge.bin", 8 << 40),  # 8 TiB once expanded
        reg("big.bin", os.urandom(300_000)),  # over the 256 KiB limit below
        reg("ok/4.bin", good["ok/4.bin"]),
        reg("link/through-the-refused-link.txt", b"fine: 'link' is a plain directory now"),
    ] + [reg(f"ok/{i}.bin", good[f"ok/{i}.bin"]) for i in range(5, 9)]
    split(build_tar(members), tmp_path / "dl", numbered(3))

    report = extract(tmp_path / "dl", root, max_member_bytes=256 * 1024, progress=False)

    refused = {r.name: r.reason for r in report.refused}
    assert set(refused) == {
        "../escape.txt",
        str(outside / "absolute.txt"),
        "ok/../../escape2.txt",
        "link",
        "hard",
        "dev/null",
        "dev/sda",
        "pipe",
        "huge.bin",
        "big.bin",
    }
    assert "absolute path" in refused[str(outside / "absolute.txt")]
    assert "'..'" in refused["../escape.txt"] and "'..'" in refused["ok/../../escape2.txt"]
    assert "symbolic link" in refused["link"] and str(outside) in refused["link"]
    assert "hard link" in refused["hard"]
    assert "character device" in refused["dev/null"] and "block device" in refused["dev/sda"]
    assert "FIFO" in refused["pipe"]
    assert "8796093022208 bytes" in refused["huge.bin"] and "per-file limit" in refused["huge.bin"]
    assert "per-file limit" in refused["big.bin"]
    assert not report.ok

    # Everything good is there, byte-exact; nothing else was written anywhere.
    expected = {**good, "link/through-the-refused-link.txt": b"fine: 'link' is a plain directory now"}
    assert tree(root) == expected
    assert not (root / "link").is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dl", "outside", "root"]
    assert tree(outside) == {"target.txt": b"precious"}


@pytest.mark.skipif(shutil.which("tar") is None, reason="needs GNU tar to write a GNU sparse member")
def test_extract_refuses_gnu_sparse_member_without_reading_it(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "huge.img", "wb") as f:
        f.truncate(3 << 40)  # 3 TiB, all hole
    (src / "small.txt").write_bytes(b"after the sparse one")
    archive = tmp_path / "dl" / "images.tar.gz"
    archive.parent.mkdir()
    try:
        subprocess.run(
            ["tar", "-S", "-czf", str(archive), "-C", str(src), "huge.img", "small.txt"],
            check=True,
            capture_output=True,
            timeout=60,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"this tar cannot write sparse archives: {e}")
    assert archive.stat().st_size < 100_000

    report = extract(archive.parent, tmp_path / "root", progress=False)

    assert [(r.name, "per-file limit" in r.reason) for r in report.refused] == [("huge.img", True)]
    assert tree(tmp_path / "root") == {"small.txt": b"after the sparse one"}


def test_extract_never_writes_through_symlinks_inside_root(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.txt").write_bytes(b"precious")
    root = tmp_path / "root"
    (root / "real").mkdir(parents=True)
    (root / "escape").symlink_to(outside, target_is_directory=True)  # dir symlink leading out
    (root / "alias").symlink_to(root / "real", target_is_directory=True)  # dir symlink staying in
    (root / "victim.txt").symlink_to(outside / "victim.txt")  # file symlink at a target name
    members = [
        reg("escape/evil.txt", b"evil"),
        reg("escape/sub/evil.txt", b"evil"),
        reg("alias/inside.txt", b"inside"),
        reg("victim.txt", b"archive content"),
    ]
    split(build_tar(members), tmp_path / "dl", ["images.tar.gz"])

    report = extract(tmp_path / "dl", root, progress=False)

    refused = {r.name: r.reason for r in report.refused}
    assert set(refused) == {"escape/evil.txt", "escape/sub/evil.txt"}
    assert "symlink" in refused["escape/evil.txt"] and "outside the root" in refused["escape/evil.txt"]
    assert tree(outside) == {"victim.txt": b"precious"}
    assert (root / "real" / "inside.txt").read_bytes() == b"inside"
    # The planted file symlink was replaced by the member, not written through.
    assert not (root / "victim.txt").is_symlink()
    assert (root / "victim.txt").read_bytes() == b"archive content"


# --------------------------------------------------------------------------- extract: interrupted, truncated, damaged


def test_total_limit_stops_then_rerun_completes(tmp_path: Path) -> None:
    files = payload(seed=4)
    split(tar_of(files), tmp_path / "dl", numbered(5))
    root = tmp_path / "root"
    limit = sum(map(len, files.values())) // 2

    with pytest.raises(ExtractLimitError, match="total limit") as exc:
        extract(tmp_path / "dl", root, max_total_bytes=limit, progress=False)
    first = exc.value.report
    assert 0 < first.extracted < len(files)
    assert first.bytes_written <= limit
    assert f"{first.extracted} files were complete" in str(exc.value)
    assert len(tree(root)) == first.extracted  # complete files only
    assert temp_leftovers(root) == []

    report = extract(tmp_path / "dl", root, progress=False)
    assert report.skipped == first.extracted
    assert report.extracted == len(files) - first.extracted
    assert tree(root) == files


def test_truncated_final_part_names_it_then_rerun_recovers(tmp_path: Path) -> None:
    files = payload(seed=5)
    parts = split(tar_of(files), tmp_path / "dl", numbered(4))
    broken = tmp_path / "broken"
    broken.mkdir()
    for p in parts:
        shutil.copy(p, broken / p.name)
    last = broken / parts[-1].name
    with open(last, "r+b") as f:
        f.truncate(last.stat().st_size // 2)
    root = tmp_path / "root"

    with pytest.raises(ArchiveError) as exc:
        extract(broken, root, progress=False)
    err = exc.value
    assert err.part == last
    assert str(last) in str(err) and "truncated" in str(err)
    done = err.report.completed
    assert 0 < done < len(files) and f"{done} files were complete" in str(err)
    assert len(tree(root)) == done
    assert temp_leftovers(root) == []  # the member being written when it broke is cleaned up

    # What a killed run leaves: a stale temporary file and a half-written file at a target name.
    victim = next(n for n in files if not (root / n).exists() and len(files[n]) > 10)
    (root / victim).parent.mkdir(parents=True, exist_ok=True)
    (root / victim).write_bytes(files[victim][:10])
    stale = root / Path(victim).parent / f".{Path(victim).name}.hpd-tmp"
    stale.write_bytes(b"partial")
    complete = next(n for n in files if (root / n).exists())
    (root / Path(complete).parent / f".{Path(complete).name}.hpd-tmp").write_bytes(b"partial")

    report = extract(tmp_path / "dl", root, progress=False)
    assert tree(root) == files
    assert temp_leftovers(root) == []
    assert report.skipped == done and report.extracted == len(files) - done


def test_missing_gzip_trailer_is_an_error(tmp_path: Path) -> None:
    """Only the last 8 bytes (CRC and length) are lost: tarfile's own gzip
    reader would call this archive complete."""
    files = payload(seed=6, n=5)
    data = tar_of(files)[:-8]
    parts = split(data, tmp_path / "dl", numbered(3))
    with pytest.raises(ArchiveError, match="truncated") as exc:
        extract(tmp_path / "dl", tmp_path / "root", progress=False)
    assert exc.value.part == parts[-1]
    assert exc.value.report.completed == len(files)  # the files themselves were all there


def test_plain_tar_cut_at_a_header_boundary_is_an_error(tmp_path: Path) -> None:
    files = payload(seed=7, n=6)
    raw = tar_of(files, gz=False, with_dirs=False)
    # Cut right after the data of the third member (a 512-byte boundary): no end-of-archive marker.
    offsets = []
    with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
        for m in tf.getmembers():
            offsets.append(m.offset_data + -(-m.size // 512) * 512)
    parts = split(raw[: offsets[2]], tmp_path / "dl", ["images.tar.part-1", "images.tar.part-2"])
    with pytest.raises(ArchiveError, match="end-of-archive marker") as exc:
        extract(tmp_path / "dl", tmp_path / "root", progress=False)
    assert exc.value.part == parts[-1]
    assert exc.value.report.completed == 3


def test_corrupt_middle_part_names_it(tmp_path: Path) -> None:
    files = payload(seed=8)
    parts = split(tar_of(files), tmp_path / "dl", numbered(5))
    parts[2].write_bytes(b"\0" * parts[2].stat().st_size)  # same size, garbage content
    with pytest.raises(ArchiveError, match="corrupt gzip data") as exc:
        extract(tmp_path / "dl", tmp_path / "root", progress=False)
    assert exc.value.part == parts[2]
    assert str(parts[2]) in str(exc.value)


def test_not_an_archive(tmp_path: Path) -> None:
    split(os.urandom(5000), tmp_path / "dl", ["images.tar.part-1", "images.tar.part-2"])
    with pytest.raises(ArchiveError, match="does not start a tar archive"):
        extract(tmp_path / "dl", tmp_path / "root", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no archive parts"):
        extract(tmp_path / "empty", tmp_path / "root", progress=False)


# --------------------------------------------------------------------------- check


def write_png(path: Path, h: int, w: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (w, h), (200, 30, 90)).save(path)


def make_dataset(root: Path, broken: bool = True) -> Path:
    write_png(root / "img/a.png", 40, 50)
    write_png(root / "img/b.png", 60, 30)
    write_png(root / "img/c.png", 32, 32)
    records = [
        {"prompt": "good", "path1": "img/a.png", "path2": "img/b.png", "choice_dist": [3, 1]},
        {"prompt": "good again", "path1": "img/c.png", "path2": "img/a.png"},
    ]
    if broken:
        (root / "img/corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
        (root / "notes.txt").write_text("not an image")
        records += [
            {"prompt": "missing", "path1": "img/a.png", "path2": "img/gone.png"},
            {"prompt": "corrupt", "path1": "img/corrupt.png", "path2": "img/b.png"},
            {"prompt": "unsafe", "path1": "../outside.png", "path2": "/etc/passwd"},
            {"prompt": "bad record", "path1": "img/a.png"},
            {"prompt": "not an image", "path1": "img/b.png", "path2": "notes.txt"},
        ]
    meta = root / "train.json"
    meta.write_text(json.dumps(records))
    return meta


def test_check_dataset_counts_and_reasons(tmp_path: Path) -> None:
    write_png(tmp_path / "outside.png", 40, 40)  # readable, but outside the root
    root = tmp_path / "data"
    meta = make_dataset(root)

    report = check_dataset(root, meta)

    assert report.records == 7 and report.ok == 2 and report.failed_records == 5
    got = [(f.record_index, f.kind, image_of(f)) for f in report.failures]
    assert got == [
        (2, "missing", "img/gone.png"),
        (3, "unreadable", "img/corrupt.png"),
        (4, "unsafe_path", "../outside.png"),
        (4, "unsafe_path", "/etc/passwd"),
        (5, "bad_record", ""),
        (6, "unreadable", "notes.txt"),
    ]
    assert report.counts == {"missing": 1, "unreadable": 2, "unsafe_path": 2, "bad_record": 1}
    assert "corrupt.png" in report.failures[1].detail
    assert "path2" in report.failures[4].detail
    assert report.images_checked == 5  # a, b, c, corrupt, notes: each probed once


def test_check_cli_exit_codes_and_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good_root = tmp_path / "good"
    good_meta = make_dataset(good_root, broken=False)
    assert run_cli(["check", "--data-root", str(good_root), "--metadata", str(good_meta)]) == 0
    assert "2 of 2 records" in capsys.readouterr().out

    root = tmp_path / "data"
    meta = make_dataset(root)
    csv_path = tmp_path / "failures.csv"
    assert (
        run_cli(["check", "--data-root", str(root), "--metadata", str(meta), "--report", str(csv_path)]) == 1
    )
    out = capsys.readouterr().out
    assert "2 of 7 records" in out and "missing: 1" in out
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["index"], r["reason"], r["path"]) for r in rows][:2] == [
        ("2", "missing", "img/gone.png"),
        ("3", "unreadable", "img/corrupt.png"),
    ]
    assert len(rows) == 6

    assert run_cli(["check", "--data-root", str(root), "--metadata", str(meta), "--json"]) == 1
    summary = json.loads(capsys.readouterr().out)
    assert summary["ok"] == 2 and summary["failure_counts"]["unsafe_path"] == 2


# --------------------------------------------------------------------------- download


def make_source(src: Path) -> dict[str, bytes]:
    files = {
        "train.json": b"[]",
        "test.json": b'[{"a": 1}]',
        "meta/extra/info.json": b"{}",
        "images.tar.gz.part-aa": os.urandom(3000),
        "images.tar.gz.part-ab": os.urandom(2000),
        "README.md": b"# HPDv3",
    }
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    # Not part of the dataset: git internals and the hub client's own cache folder.
    (src / ".git/objects").mkdir(parents=True)
    (src / ".git/objects/pack.json").write_bytes(b"git")
    (src / ".cache/huggingface").mkdir(parents=True)
    (src / ".cache/huggingface/x.json").write_bytes(b"cache")
    return files


def test_download_from_local_dir_with_include_patterns(tmp_path: Path) -> None:
    src = tmp_path / "mirror"
    files = make_source(src)

    report = download("MizzenAI/HPDv3", tmp_path / "out", include=["*.json"], source=src)
    jsons = {k: v for k, v in files.items() if k.endswith(".json")}  # '*' crosses '/': meta/extra too
    assert tree(tmp_path / "out") == jsons
    assert sorted(report.copied) == sorted(jsons) and report.skipped == []

    report = download(
        "MizzenAI/HPDv3", tmp_path / "out2", include=["meta/", "images.tar.gz.part-a?"], source=src
    )
    assert sorted(tree(tmp_path / "out2")) == [
        "images.tar.gz.part-aa",
        "images.tar.gz.part-ab",
        "meta/extra/info.json",
    ]

    report = download("MizzenAI/HPDv3", tmp_path / "all", source=src)
    assert tree(tmp_path / "all") == files
    assert report.bytes_copied == sum(map(len, files.values()))


def test_download_from_local_dir_resumes(tmp_path: Path) -> None:
    src = tmp_path / "mirror"
    files = make_source(src)
    (src / "linked.bin").symlink_to(src / "images.tar.gz.part-aa")  # hub cache snapshots are symlinks
    files["linked.bin"] = files["images.tar.gz.part-aa"]
    out = tmp_path / "out"

    first = download("MizzenAI/HPDv3", out, source=src)
    assert tree(out) == files and not (out / "linked.bin").is_symlink()

    # A killed copy: one file cut short, a stale temporary file beside another.
    (out / "images.tar.gz.part-ab").write_bytes(files["images.tar.gz.part-ab"][:100])
    (out / ".train.json.hpd-tmp").write_bytes(b"half")
    second = download("MizzenAI/HPDv3", out, source=src)
    assert second.copied == ["images.tar.gz.part-ab"]
    assert sorted(second.skipped) == sorted(set(first.copied) - {"images.tar.gz.part-ab"})
    assert tree(out) == files
    assert not (out / ".train.json.hpd-tmp").exists()


def test_download_refuses_overlapping_dirs(tmp_path: Path) -> None:
    make_source(tmp_path / "mirror")
    with pytest.raises(ValueError, match="overlap"):
        download("x/y", tmp_path / "mirror" / "out", source=tmp_path / "mirror")


def test_download_refuses_git_lfs_pointers(tmp_path: Path) -> None:
    src = tmp_path / "clone"
    make_source(src)
    (src / "images.tar.gz.part-ab").write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:" + "0" * 64 + "\nsize 2000\n"
    )
    with pytest.raises(ValueError, match="Git LFS pointer"):
        download("MizzenAI/HPDv3", tmp_path / "out", source=src)


def test_download_cli_local(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "mirror"
    make_source(src)
    argv = [
        "download",
        "MizzenAI/HPDv3",
        "--output-dir",
        str(tmp_path / "out"),
        "--from-dir",
        str(src),
        "--include",
        "*.json",
        "--include",
        "README.md",
        "--json",
    ]
    assert run_cli(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert sorted(summary["copied"]) == ["README.md", "meta/extra/info.json", "test.json", "train.json"]


def test_download_from_hub_offline_fails_clearly(tmp_path: Path) -> None:
    """The hub call itself, run with the hub client offline (no network here)."""
    code = (
        "import sys\n"
        "from hpd_encode.fetch import download\n"
        "try:\n"
        f"    download('MizzenAI/HPDv3', {str(tmp_path / 'out')!r}, include=['*.json'])\n"
        "except OSError as e:\n"
        "    print(e); sys.exit(3)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 3, proc.stderr
    assert "cannot download dataset 'MizzenAI/HPDv3'" in proc.stdout and "--from-dir" in proc.stdout


# --------------------------------------------------------------------------- extract CLI


def test_extract_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = payload(seed=9, n=6)
    split(tar_of(files), tmp_path / "dl", numbered(2))
    argv = ["extract", str(tmp_path / "dl"), "--output-dir", str(tmp_path / "root")]
    assert run_cli([*argv, "--no-progress"]) == 0
    assert f"extracted {len(files)} files" in capsys.readouterr().out
    assert tree(tmp_path / "root") == files

    # Rerun: all skipped. A low per-file limit on a fresh root: refusals give exit status 1.
    assert run_cli(["extract", str(tmp_path / "dl"), "--output-dir", str(tmp_path / "root"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["skipped"] == len(files)
    code = run_cli(
        ["extract", str(tmp_path / "dl"), "--output-dir", str(tmp_path / "r2"), "--max-file-size", "1K"]
    )
    assert code == 1
    assert "per-file limit" in capsys.readouterr().out

    parts = sorted((tmp_path / "dl").iterdir())
    with open(parts[-1], "r+b") as f:
        f.truncate(100)
    assert run_cli(["extract", *map(str, parts), "--output-dir", str(tmp_path / "r3")]) == 1
    assert str(parts[-1]) in capsys.readouterr().err


# --------------------------------------------------------------------------- extract: names, depth, locking


def files_under(root: Path) -> dict[str, bytes]:
    """Like :func:`tree`, but walks with an explicit stack: fine for trees
    deeper than Python's recursion limit."""
    found: dict[str, bytes] = {}
    stack = [""]
    while stack:
        rel = stack.pop()
        with os.scandir(root / rel if rel else root) as it:
            for entry in it:
                name = f"{rel}/{entry.name}" if rel else entry.name
                if entry.is_dir(follow_symlinks=False):
                    stack.append(name)
                elif entry.is_file(follow_symlinks=False) and name != LOCK_FILE:
                    with open(entry.path, "rb") as f:
                        found[name] = f.read()
    return found


def test_extract_refuses_names_the_filesystem_cannot_hold_and_reruns(tmp_path: Path) -> None:
    long_file = "ok/" + "n" * 300 + ".bin"  # one component over NAME_MAX (255 bytes)
    long_dir = "d" * 300 + "/x.bin"
    too_deep = "/".join(["p" * 200] * 25) + "/f.bin"  # every component fits, the path (5 KB) does not
    good = {f"ok/{i}.bin": os.urandom(500 + i) for i in range(4)}
    members = [
        reg("ok/0.bin", good["ok/0.bin"]),
        reg(long_file, os.urandom(4000)),
        reg("ok/1.bin", good["ok/1.bin"]),
        reg(long_dir, b"x"),
        reg("ok/2.bin", good["ok/2.bin"]),
        reg(too_deep, b"f"),
        reg("ok/3.bin", good["ok/3.bin"]),
    ]
    split(build_tar(members), tmp_path / "dl", numbered(2))
    root = tmp_path / "root"

    for run in range(2):  # the rerun also completes, skipping what is there
        report = extract(tmp_path / "dl", root, progress=False)
        refused = {r.name: r.reason for r in report.refused}
        assert set(refused) == {long_file, long_dir, too_deep}, run
        assert all("File name too long" in reason for reason in refused.values())
        assert "longest name component 304 bytes" in refused[long_file]
        assert tree(root) == good
        assert temp_leftovers(root) == []
        assert (report.extracted, report.skipped) == ((4, 0) if run == 0 else (0, 4))


Members = list[tuple[tarfile.TarInfo, bytes | None]]


def deep_members(depth: int, every: int) -> tuple[Members, dict[str, bytes]]:
    """A chain of ``depth`` directories ``d/d/d…`` as tar writes it (a
    directory member per level), with a file every ``every`` levels and at the bottom."""
    members: Members = []
    files: dict[str, bytes] = {}
    for k in range(1, depth + 1):
        info = tarfile.TarInfo("/".join(["d"] * k))
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        members.append((info, None))
        if k % every == 0 or k == depth:
            name = "/".join(["d"] * k) + f"/f{k}.bin"
            files[name] = f"level {k}".encode()
            members.append(reg(name, files[name]))
    return members, files


def remove_tree(root: Path) -> None:
    """``shutil.rmtree`` without recursion: pytest's own clean-up of old temporary
    directories recurses once per level and fails on a tree 1500 levels deep."""
    dirs, stack = [], [str(root)]
    while stack:
        d = stack.pop()
        dirs.append(d)
        with os.scandir(d) as it:
            for entry in it:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                else:
                    os.unlink(entry.path)
    for d in reversed(dirs):
        os.rmdir(d)


def test_extract_rerun_over_a_deep_tree(tmp_path: Path) -> None:
    members, files = deep_members(1500, every=100)
    split(build_tar(members), tmp_path / "dl", numbered(2))
    root = tmp_path / "root"
    try:
        first = extract(tmp_path / "dl", root, progress=False)
        assert first.refused == [] and first.extracted == len(files) == 15
        second = extract(tmp_path / "dl", root, progress=False)
        assert second.refused == [] and (second.extracted, second.skipped) == (0, len(files))
        assert files_under(root) == files
    finally:
        if root.exists():
            remove_tree(root)


def test_extract_rerun_work_is_linear_in_depth(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Counts the lstat calls of a rerun (a measure of work, not of time): the
    old extractor resolved every directory with realpath, one lstat per
    ancestor, so a chain of 400 directories cost ~80 000 of them."""
    members, files = deep_members(400, every=50)
    split(build_tar(members), tmp_path / "dl", ["images.tar.gz"])
    root = tmp_path / "root"
    extract(tmp_path / "dl", root, progress=False)

    calls = 0
    real_lstat = os.lstat

    def counting_lstat(*args: object, **kwargs: object) -> os.stat_result:
        nonlocal calls
        calls += 1
        return real_lstat(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "lstat", counting_lstat)
    report = extract(tmp_path / "dl", root, progress=False)
    monkeypatch.undo()

    assert report.skipped == len(files) and report.refused == []
    assert calls <= 3 * len(members) + 50, calls


def test_concurrent_extract_into_one_root_is_refused(tmp_path: Path) -> None:
    from hpd_encode.errors import OutputBusyError
    from hpd_encode.output_dir import OutputLock

    files = payload(seed=10, n=6)
    split(tar_of(files), tmp_path / "dl", numbered(2))
    root = tmp_path / "root"
    argv = ["extract", str(tmp_path / "dl"), "--output-dir", str(root), "--no-progress"]
    with OutputLock(root, purpose="extract"):  # another extract, as far as the lock file says
        proc = subprocess.run(
            [sys.executable, "-m", "hpd_encode", *argv],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        with pytest.raises(OutputBusyError, match=f"pid {os.getpid()}"):
            extract(tmp_path / "dl", root, progress=False)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("hpd-encode extract: error:") and "is in use" in lines[0]
    assert f"extract by pid {os.getpid()} on host" in lines[0]
    assert tree(root) == {}  # nothing was written while the lock was held

    # Released: the next extract runs, and the lock file is neither a member nor in the way.
    report = extract(tmp_path / "dl", root, progress=False)
    assert report.extracted == len(files) and report.refused == []
    assert tree(root) == files
    assert sorted(p.name for p in root.iterdir()) == [LOCK_FILE, "images"]


def test_archive_member_named_like_the_lock_file_is_refused(tmp_path: Path) -> None:
    members = [
        reg(LOCK_FILE, b"not a lock"),
        reg("sub/" + LOCK_FILE, b"fine below the top"),
        reg("a.bin", b"a"),
    ]
    split(build_tar(members), tmp_path / "dl", ["images.tar.gz"])
    report = extract(tmp_path / "dl", tmp_path / "root", progress=False)
    assert [(r.name, "lock file" in r.reason) for r in report.refused] == [(LOCK_FILE, True)]
    assert tree(tmp_path / "root") == {"sub/" + LOCK_FILE: b"fine below the top", "a.bin": b"a"}
    assert (tmp_path / "root" / LOCK_FILE).read_bytes() == b""  # ours, released


def test_extract_os_error_names_member_and_file(tmp_path: Path) -> None:
    """A write error that is not about the path (here EFBIG from a file-size
    limit) stops extraction with a message naming the member and the file,
    never a bare ``[Errno N] …``."""
    files = {"small.bin": b"s" * 100, "sub/big.bin": os.urandom(50_000)}
    split(tar_of(files, with_dirs=False), tmp_path / "dl", ["images.tar.gz"])
    root = tmp_path / "root"
    code = (
        "import resource, signal, sys\n"
        "from hpd_encode.cli import main\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (10_000, 10_000))\n"
        f"argv = ['extract', {str(tmp_path / 'dl')!r}, '--output-dir', {str(root)!r}, '--no-progress', '-q']\n"
        "sys.exit(main(argv))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 1, proc.stderr
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert "'sub/big.bin'" in err and str(root / "sub" / "big.bin") in err and "File too large" in err
    assert (root / "small.bin").read_bytes() == files["small.bin"]
    assert temp_leftovers(root) == []


# --------------------------------------------------------------------------- deprecated spellings


def test_out_is_a_deprecated_alias_of_output_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = payload(seed=11, n=4)
    split(tar_of(files), tmp_path / "dl", numbered(2))
    assert run_cli(["extract", str(tmp_path / "dl"), "--out", str(tmp_path / "root"), "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert f"extracted {len(files)} files" in captured.out
    warning = "hpd-encode extract: warning: --out is deprecated; use --output-dir"
    assert captured.err.strip().splitlines() == [warning]
    assert tree(tmp_path / "root") == files

    src = tmp_path / "mirror"
    make_source(src)
    argv = ["download", "x/y", "--out", str(tmp_path / "copy"), "--from-dir", str(src), "--json"]
    assert run_cli(argv) == 0
    assert "--out is deprecated" in capsys.readouterr().err
    assert (tmp_path / "copy" / "train.json").read_bytes() == b"[]"

    # Hidden from --help; one of the two is required; not both.
    for command in ("extract", "download"):
        with pytest.raises(SystemExit):
            build_parser().parse_args([command, "--help"])
        help_text = capsys.readouterr().out
        options = [line.split()[0] for line in help_text.splitlines() if line.startswith("  -")]
        assert "--output-dir" in options and "--out" not in options and "--out," not in options
        with pytest.raises(SystemExit) as exc:
            build_parser().parse_args([command, "x"])
        assert exc.value.code == 2 and "--output-dir" in capsys.readouterr().err
        with pytest.raises(SystemExit) as exc:
            build_parser().parse_args([command, "x", "--output-dir", "a", "--out", "b"])
        assert exc.value.code == 2 and "not allowed with argument --output-dir" in capsys.readouterr().err


def test_api_out_keyword_is_deprecated(tmp_path: Path) -> None:
    files = payload(seed=12, n=3)
    split(tar_of(files), tmp_path / "dl", numbered(2))
    with pytest.warns(DeprecationWarning, match="output_dir"):
        report = extract(tmp_path / "dl", out=tmp_path / "root", progress=False)
    assert report.extracted == len(files) and tree(tmp_path / "root") == files
    report = extract(tmp_path / "dl", output_dir=tmp_path / "root", progress=False)
    assert report.skipped == len(files)
    with pytest.raises(TypeError, match="both"):
        extract(tmp_path / "dl", tmp_path / "root", out=tmp_path / "root", progress=False)

    src = tmp_path / "mirror"
    make_source(src)
    with pytest.warns(DeprecationWarning, match="output_dir"):
        dl = download("x/y", out=tmp_path / "copy", source=src, include="*.json")
    assert dl.copied and (tmp_path / "copy" / "train.json").exists()
