"""Shared pytest fixtures."""

from __future__ import annotations

import io
import json
import os
import random
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest


@pytest.fixture(scope="session", autouse=True)
def _temporary_folder_of_the_run(tmp_path_factory: pytest.TempPathFactory):
    """Every temporary file of the run, ours and the tools' (torchrun's ``torchelastic_*``
    folders, weed's sockets, torch's caches), goes under pytest's own temporary folder (which
    pytest prunes, keeping the last three runs'): nothing piles up in the system's, which the
    machine shares."""
    folder = tmp_path_factory.mktemp("tmp")
    before = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(folder)
    tempfile.tempdir = None  # recomputed from TMPDIR on the next use
    yield
    if before is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = before
    tempfile.tempdir = None


# ---------------------------------------------------------------------------
# Part files for the index and reader tests (tests/test_index.py, tests/test_reader.py)

#: A small bucket set (ids 0..4) so the test latents stay tiny: (height, width).
SMALL_BUCKETS: list[tuple[int, int]] = [(64, 64), (64, 96), (96, 64), (128, 128), (96, 128)]
#: Sizes the records use: the buckets, plus two that are not in the set.
RECORD_SIZES: list[tuple[int, int]] = [*SMALL_BUCKETS, (80, 80), (128, 96)]
LATENT_CHANNELS = 4


@dataclass(frozen=True)
class PartRecord:
    """One comparison as a part file stores it; ``rec`` is its number (in ``image1_path`` too)."""

    rec: int
    prompt: str
    model1: str
    model2: str
    votes_chosen: int
    votes_rejected: int
    confidence: float | None
    height: int  # final (target) size of both images
    width: int
    orig_chosen: tuple[int, int] | None
    orig_rejected: tuple[int, int] | None
    tuples: bool = False  # write the sizes in detailed_results as tuples

    @property
    def image1_path(self) -> str:
        return f"img/{self.rec}_chosen.png"

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (LATENT_CHANNELS, self.height // 8, self.width // 8)

    def latent(self, which: int) -> np.ndarray:
        """Latent 1 is full of ``rec``, latent 2 of ``-rec - 0.5``."""
        value = self.rec if which == 1 else -self.rec - 0.5
        return np.full(self.latent_shape, value, dtype=np.float32)

    def detailed_results(self) -> str:
        """The reference's ``str(dict)`` (tuples / ``None`` where the record says so)."""
        size = tuple if self.tuples else list
        d = {
            "votes_chosen": self.votes_chosen,
            "votes_rejected": self.votes_rejected,
            "confidence": self.confidence,
            "orig_chosen_hw": None if self.orig_chosen is None else size(self.orig_chosen),
            "orig_rejected_hw": None if self.orig_rejected is None else size(self.orig_rejected),
            "final_chosen_hw": size((self.height, self.width)),
            "final_rejected_hw": size((self.height, self.width)),
        }
        return str(d)


def make_part_records(n: int = 700, seed: int = 7) -> list[PartRecord]:
    """Deterministic records: skewed prompt counts (some prompts far above 8), mixed sizes and votes."""
    rng = random.Random(seed)
    prompts = [f"prompt {k}: a {rng.choice(['red', 'blue', 'green'])} thing" for k in range(90)]
    weights = [1.0 / (k + 1) for k in range(len(prompts))]
    models = ["flux", "sd35", "kolors", "midjourney"]
    out = []
    for rec in range(n):
        h, w = rng.choice(RECORD_SIZES)
        conf = None if rng.random() < 0.05 else round(rng.random(), 3)
        orig1 = None if rng.random() < 0.03 else (rng.randint(300, 2000), rng.randint(300, 2000))
        out.append(
            PartRecord(
                rec=rec,
                prompt=rng.choices(prompts, weights)[0],
                model1=rng.choice(models),
                model2=rng.choice(models),
                votes_chosen=rng.randint(0, 5),
                votes_rejected=rng.randint(0, 5),
                confidence=conf,
                height=h,
                width=w,
                orig_chosen=orig1,
                orig_rejected=(rng.randint(300, 2000), rng.randint(300, 2000)),
                tuples=rng.random() < 0.2,
            )
        )
    return out


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def write_reference_part(
    path: Path, records: Sequence[PartRecord], detailed: Sequence[str | None] | None = None
) -> None:
    """A part file shaped like the reference's: its 10 columns only, row groups of 100.

    ``detailed`` overrides the ``detailed_results`` strings (to inject malformed ones).
    """
    strings = list(detailed) if detailed is not None else [r.detailed_results() for r in records]
    table = pa.table(
        {
            "prompt": pa.array([r.prompt for r in records], pa.string()),
            "model1": pa.array([r.model1 for r in records], pa.string()),
            "model2": pa.array([r.model2 for r in records], pa.string()),
            "detailed_results": pa.array(strings, pa.string()),
            "image1_path": pa.array([r.image1_path for r in records], pa.string()),
            "image2_path": pa.array([f"img/{r.rec}_rejected.png" for r in records], pa.string()),
            "latent1": pa.array([_npy(r.latent(1)) for r in records], pa.binary()),
            "latent2": pa.array([_npy(r.latent(2)) for r in records], pa.binary()),
            "latent1_shape": pa.array([list(r.latent_shape) for r in records], pa.list_(pa.int64())),
            "latent2_shape": pa.array([list(r.latent_shape) for r in records], pa.list_(pa.int64())),
        }
    )
    pq.write_table(table, path, row_group_size=100, compression="zstd")


def write_ours_part(path: Path, records: Sequence[PartRecord]) -> None:
    """A part file with hpd-encode's schema (``PART_SCHEMA``: reference columns + typed extras and
    checksums), written by pyarrow (one row group's latents in one page: the old layout)."""
    from hpd_encode._core import latent_checksum
    from hpd_encode.schema import PART_SCHEMA

    def hw(v: tuple[int, int] | None, i: int) -> int | None:
        return None if v is None else v[i]

    small = {size: i for i, size in enumerate(SMALL_BUCKETS)}
    columns = {
        "prompt": [r.prompt for r in records],
        "model1": [r.model1 for r in records],
        "model2": [r.model2 for r in records],
        "detailed_results": [r.detailed_results() for r in records],
        "image1_path": [r.image1_path for r in records],
        "image2_path": [f"img/{r.rec}_rejected.png" for r in records],
        "latent1": [_npy(r.latent(1)) for r in records],
        "latent2": [_npy(r.latent(2)) for r in records],
        "latent1_shape": [list(r.latent_shape) for r in records],
        "latent2_shape": [list(r.latent_shape) for r in records],
        "record_index": [r.rec for r in records],
        "votes_chosen": [r.votes_chosen for r in records],
        "votes_rejected": [r.votes_rejected for r in records],
        "confidence": [r.confidence for r in records],
        "height": [r.height for r in records],
        "width": [r.width for r in records],
        "bucket_id": [small.get((r.height, r.width)) for r in records],
        "orig_chosen_height": [hw(r.orig_chosen, 0) for r in records],
        "orig_chosen_width": [hw(r.orig_chosen, 1) for r in records],
        "orig_rejected_height": [hw(r.orig_rejected, 0) for r in records],
        "orig_rejected_width": [hw(r.orig_rejected, 1) for r in records],
    }
    for name, latents in (("latent1_xxh3", columns["latent1"]), ("latent2_xxh3", columns["latent2"])):
        columns[name] = [latent_checksum(v) for v in latents]
    pq.write_table(pa.table(columns, schema=PART_SCHEMA), path, row_group_size=100, compression="zstd")


def write_with_encoder(path: Path, records: Sequence[PartRecord]) -> None:
    """A part file written by the encode step's own writer (``hpd_encode.ParquetWriter``).

    A null confidence / original size is left out, so the writer stores its
    defaults (0.0, and the final size).
    """
    from hpd_encode import ParquetWriter

    rows = []
    for r in records:
        row = {
            "prompt": r.prompt,
            "model1": r.model1,
            "model2": r.model2,
            "image1_path": r.image1_path,
            "image2_path": f"img/{r.rec}_rejected.png",
            "latent1": r.latent(1),
            "latent2": r.latent(2),
            "record_index": r.rec,
            "votes_chosen": r.votes_chosen,
            "votes_rejected": r.votes_rejected,
            "height": r.height,
            "width": r.width,
        }
        if r.confidence is not None:
            row["confidence"] = r.confidence
        for name, size in (("orig_chosen", r.orig_chosen), ("orig_rejected", r.orig_rejected)):
            if size is not None:
                row[f"{name}_height"], row[f"{name}_width"] = size
        rows.append(row)
    with ParquetWriter(path, row_group_size=100) as writer:
        writer.submit(rows)


#: How the records are split over part files: two files, neither a multiple of 100 rows.
PART_SPLIT = (430, 270)


def _write_parts(root: Path, records: Sequence[PartRecord], writer: Callable[..., None]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    start = 0
    for rank, n in enumerate(PART_SPLIT):
        writer(root / f"part_rank{rank:02d}.parquet", records[start : start + n])
        start += n
    return root


@pytest.fixture(scope="session")
def part_records() -> list[PartRecord]:
    """The records in ``reference_parts`` / ``ours_parts``, in file order."""
    return make_part_records(sum(PART_SPLIT))


@pytest.fixture(scope="session")
def small_buckets_json(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bucket-set JSON file with :data:`SMALL_BUCKETS`."""
    path = tmp_path_factory.mktemp("buckets") / "small.json"
    path.write_text(json.dumps([list(b) for b in SMALL_BUCKETS]))
    return path


@pytest.fixture(scope="session")
def reference_parts(tmp_path_factory: pytest.TempPathFactory, part_records: list[PartRecord]) -> Path:
    """A directory of reference-shaped part files (string ``detailed_results`` only)."""
    return _write_parts(tmp_path_factory.mktemp("reference_parts"), part_records, write_reference_part)


@pytest.fixture(scope="session")
def encoder_parts(tmp_path_factory: pytest.TempPathFactory, part_records: list[PartRecord]) -> Path:
    """The same records as ``reference_parts``, written by ``hpd_encode.ParquetWriter``."""
    return _write_parts(tmp_path_factory.mktemp("encoder_parts"), part_records, write_with_encoder)


@pytest.fixture(scope="session")
def ours_parts(tmp_path_factory: pytest.TempPathFactory, part_records: list[PartRecord]) -> Path:
    """The same records as ``reference_parts``, written with ``PART_SCHEMA`` (typed extras)."""
    return _write_parts(tmp_path_factory.mktemp("ours_parts"), part_records, write_ours_part)


# ---------------------------------------------------------------------------
# Real photographs for the image tests and benches (tests/test_images.py)

#: scikit-image's bundled photographs (no download needed).
PHOTO_NAMES = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "retina")


@pytest.fixture(scope="session")
def photo():
    """Factory ``photo(name, (height, width)) -> PIL RGB image``: a scikit-image
    photograph resized (Lanczos) to the given size, cached for the session."""
    import skimage.data
    from PIL import Image

    cache: dict[tuple[str, tuple[int, int] | None], Image.Image] = {}

    def make(name: str, size: tuple[int, int] | None = None) -> Image.Image:
        key = (name, size)
        if key not in cache:
            img = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
            if size is not None:
                img = img.resize((size[1], size[0]), Image.LANCZOS)
            cache[key] = img
        return cache[key].copy()

    return make


def torchrun(nproc: int) -> list[str]:
    """The start of a command line running ``nproc`` processes on this machine under torchrun (a
    script or ``-m module`` follows)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]


def encode_cmd(root: Path, meta: Path, vae: Path, out: Path, *extra: str) -> list[str]:
    """``python -m hpd_encode encode`` on a dataset, mean latents, quiet; ``extra`` appended."""
    args = [
        "--data-root",
        root,
        "--metadata",
        meta,
        "--output-dir",
        out,
        "--vae",
        vae,
        "--latent",
        "mean",
        "-q",
    ]
    return [sys.executable, "-m", "hpd_encode", "encode", *map(str, args), *extra]


def random_pngs(root: Path, n: int, side: int) -> None:
    """``n`` random ``side``x``side`` PNG images named ``0.png``... in ``root`` (created)."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(root / f"{i}.png")


def indexed_part(base: Path, records: Sequence[PartRecord], buckets: Path) -> Path:
    """One part file of ``records`` (the encoder's writer) in ``base/parts`` and its index
    (every row on a bucket of ``buckets``, no cap): the index CSV's path."""
    from hpd_encode.index import build_index, write_index

    parts = base / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    write_with_encoder(parts / "part_rank00.parquet", records)
    index = base / "index.csv"
    write_index(build_index(parts, buckets=buckets, max_per_prompt=None), index)
    return index


# ---------------------------------------------------------------------------
# The encoder protocol and the encode loop (tests/test_encoder_protocol.py, tests/test_encode_loop.py)


@pytest.fixture(scope="module")
def encode_dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(data root, metadata): 4 prompts of 3-4 real image files each and all their pairs, plus bad records."""
    from test_encode import build_dataset

    root = tmp_path_factory.mktemp("ds") / "root"
    root.mkdir()
    return root, build_dataset(root, n_prompts=4)


@pytest.fixture(scope="module")
def kl_vae(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random SD3.5-shaped AutoencoderKL saved as a diffusers folder."""
    from hpd_encode.vae import make_tiny_vae

    return make_tiny_vae(tmp_path_factory.mktemp("vae"))
