"""``verify --reencode``: encode stored rows again from their source images,
with the settings the output records, and compare.

:func:`reencode_check` picks ``n`` rows at random (``seed``; every row when
``n`` is at least the row count), reads their two latents (checksums
checked), decodes each distinct source image at its row's target size and
encodes it again through the encode stage's own code (``_core.load_batch``,
``hpd_encode.vae.encode_pixels`` with the same per-image seed, the stored
dtype), and names every row whose stored latent differs from the new one by
more than the tolerance, with its image paths.

The data root, the metadata file and the VAE come from ``manifest.json``
(``inputs`` and ``settings``); each can be given again when moved. The VAE
is checked against the identity the part files' provenance records (another
VAE, or other weights in the same folder, is refused up front rather than
reported as every row differing), and the metadata file against the SHA-256
the manifest records.

Tolerance: the relative RMS difference ``rms(new - stored) / rms(stored)`` of
each latent, by the compute dtype the output was encoded with
(:data:`TOLERANCE`), plus :data:`FLOAT16_STORE_TOLERANCE` when latents are
stored as float16. Re-encoding on another device, or batching images
differently, changes the last bits of the convolutions; a different or
changed source image changes the latent entirely (a relative difference near
1 or more).

``preview`` writes a contact sheet (the ``plot`` extra, matplotlib) for a
person to look at: per image of the first rows checked, the source at its
target size | the stored latent decoded by the VAE | their difference, with
the PSNR.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from hpd_encode.errors import ReencodeError
from hpd_encode.output_dir import list_part_files, require_complete

log = logging.getLogger(__name__)

#: Largest relative RMS difference of a re-encoded latent, by the compute dtype
#: the output was encoded with (``settings.dtype``): float32 allows for TF32
#: convolutions on CUDA and another batch composition; bfloat16 keeps 8 bits of
#: mantissa, float16 11.
TOLERANCE = {"float32": 1e-3, "bfloat16": 3e-2, "float16": 1e-2}

#: Added to the tolerance when latents are stored as float16 (its rounding, 2**-11 relative).
FLOAT16_STORE_TOLERANCE = 1e-3

#: Rows drawn in the preview (two images each).
PREVIEW_ROWS = 4


@dataclass
class RowDifference:
    """A row whose stored latents differ from the re-encoded ones (or could not be re-encoded)."""

    file: str
    row_group: int
    row: int
    image1_path: str
    image2_path: str
    #: Relative RMS difference of latent1 and latent2 (None: not re-encoded).
    errors: tuple[float | None, float | None]
    detail: str

    def __str__(self) -> str:
        return (
            f"'{self.file}' row group {self.row_group} row {self.row} "
            f"({self.image1_path}, {self.image2_path}): {self.detail}"
        )


@dataclass
class ReencodeReport:
    """What :func:`reencode_check` found. ``ok`` when every row checked matches."""

    output_dir: str
    rows_total: int = 0
    rows_checked: int = 0
    images_encoded: int = 0
    tolerance: float = 0.0
    device: str = ""
    compute_dtype: str = ""
    max_error: float = 0.0
    metadata_unchanged: bool | None = None
    seconds: float = 0.0
    preview: str | None = None
    differing: list[RowDifference] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.differing and self.metadata_unchanged is not False

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ok"] = self.ok
        return d

    def summary(self, max_rows: int = 20) -> str:
        lines = [
            f"re-encoded {self.rows_checked} of {self.rows_total} rows ({self.images_encoded} images) on "
            f"{self.device} in {self.compute_dtype}, {self.seconds:.1f} s; largest relative RMS difference "
            f"{self.max_error:.2e} (tolerance {self.tolerance:.1e})"
        ]
        if self.metadata_unchanged is False:
            lines.append("the metadata file differs from the one the output was encoded from (SHA-256)")
        if self.preview:
            lines.append(f"preview: {self.preview}")
        if self.ok:
            lines.append("OK: every row checked matches its source images")
        else:
            lines.append(f"{len(self.differing)} rows differ from their source images:")
            lines += [f"  {d}" for d in self.differing[:max_rows]]
            if len(self.differing) > max_rows:
                lines.append(f"  ... and {len(self.differing) - max_rows} more (--json lists them all)")
        return "\n".join(lines)


def relative_rms(new: np.ndarray, stored: np.ndarray) -> float:
    """``rms(new - stored) / rms(stored)`` (in float64; a zero latent compares absolutely)."""
    a, b = new.astype(np.float64), stored.astype(np.float64)
    scale = math.sqrt(float(np.mean(b * b))) or 1.0
    return math.sqrt(float(np.mean((a - b) ** 2))) / scale


@dataclass
class _Sources:
    """Where the sources are and how the output was made."""

    data_root: Path
    metadata: Path | None
    vae: str
    vae_subfolder: str | None
    settings: dict[str, Any]


def _sources(
    out: Path,
    manifest: dict[str, Any] | None,
    data_root: str | PathLike[str] | None,
    metadata: str | PathLike[str] | None,
    vae: Any,
) -> _Sources:
    settings = (manifest or {}).get("settings")
    if not isinstance(settings, dict) or "latent" not in settings:
        raise ReencodeError(
            f"'{out}' has no manifest.json with the encode settings: --reencode needs an output written by "
            "hpd-encode encode (or repacked from one)"
        )
    inputs = (manifest or {}).get("inputs") or {}
    root = data_root or inputs.get("data_root")
    if root is None:
        raise ReencodeError(f"'{out}/manifest.json' does not record the data root; pass --data-root")
    if not Path(root).is_dir():
        raise ReencodeError(
            f"data root '{root}' (from {'--data-root' if data_root else 'manifest.json'}) is not a directory; "
            "pass --data-root where the images are now"
        )
    meta = metadata or inputs.get("metadata")
    model = vae or settings.get("vae")
    if not model:
        raise ReencodeError(f"'{out}/manifest.json' does not record the VAE; pass --vae")
    return _Sources(
        data_root=Path(root),
        metadata=Path(meta) if meta else None,
        vae=str(model),
        vae_subfolder=settings.get("vae_subfolder"),
        settings=settings,
    )


def _locations(parts: list[Path]) -> list[tuple[int, int, int]]:
    """Every row as ``(file, row group, row)``, in file order (from the footers)."""
    from hpd_encode._core import parquet_layout

    out: list[tuple[int, int, int]] = []
    for f, path in enumerate(parts):
        for g, n in enumerate(parquet_layout(path)[0]):
            out += [(f, g, r) for r in range(n)]
    return out


def _small_columns(path: Path, group: int, rows: list[int]) -> list[dict[str, Any]]:
    """The image paths and target size of ``rows`` of one row group."""
    import pyarrow.parquet as pq

    from hpd_encode.schema import LATENT_DOWN_FACTOR

    pf = pq.ParquetFile(path)
    names = set(pf.schema_arrow.names)
    cols = ["image1_path", "image2_path", *(c for c in ("height", "width") if c in names), "latent1_shape"]
    table = pf.read_row_group(group, columns=cols).to_pydict()
    out = []
    for r in rows:
        shape = table["latent1_shape"][r]
        size = (
            (int(table["height"][r]), int(table["width"][r]))
            if "height" in table and table["height"][r] is not None
            else (int(shape[-2]) * LATENT_DOWN_FACTOR, int(shape[-1]) * LATENT_DOWN_FACTOR)
        )
        out.append(
            {"image1_path": table["image1_path"][r], "image2_path": table["image2_path"][r], "size": size}
        )
    return out


def _check_vae(parts: list[Path], vae: Any, settings: dict[str, Any]) -> None:
    """Refuse a VAE other than the one that encoded the output (its identity as
    the part files' provenance, or else the manifest, records it)."""
    from hpd_encode.provenance import parse_identity, provenance_difference, read_provenance

    recorded = next((p.get("vae") for p in map(read_provenance, parts) if p and p.get("vae")), None)
    if recorded is None and settings.get("vae_identity"):
        recorded = parse_identity(settings["vae_identity"])
    if recorded is None:
        return  # an output written before identities were recorded
    mine = parse_identity(vae.identity)
    if mine != recorded:
        how = provenance_difference({"vae": recorded}, {"vae": mine})
        raise ReencodeError(
            f"the VAE at '{getattr(vae, 'source', type(vae).__qualname__)}' is not the one that encoded this "
            f"output ({how}); "
            "pass --vae with the VAE it was encoded with"
        )


def reencode_check(
    output_dir: str | PathLike[str],
    n: int,
    *,
    seed: int = 0,
    data_root: str | PathLike[str] | None = None,
    metadata: str | PathLike[str] | None = None,
    vae: Any = None,
    device: str | None = None,
    tolerance: float | None = None,
    preview: str | PathLike[str] | None = None,
    allow_partial: bool = False,
    num_threads: int | None = None,
) -> ReencodeReport:
    """Re-encode ``n`` random rows of ``output_dir`` (all when ``n`` is at least
    the row count) and compare them with the stored latents; see the module's
    description. ``tolerance`` overrides the dtype's (:data:`TOLERANCE`).
    ``vae`` may also be an encoder object (:class:`~hpd_encode.vae.LatentEncoder`):
    an output encoded by one is checked with it (``--preview`` needs a diffusers VAE)."""
    import torch

    from hpd_encode._core import read_pairs
    from hpd_encode.output_dir import file_sha256
    from hpd_encode.pipeline.options import parse_device, resolve_device, vae_is_object
    from hpd_encode.vae import check_encoder, load_vae

    if n < 1:
        raise ReencodeError(f"--reencode needs a row count of at least 1, not {n}")
    if preview is not None:
        from hpd_encode.index.plot import require_matplotlib

        require_matplotlib("--preview")
    out = Path(output_dir)
    manifest = require_complete(out, allow_partial, "verify")
    src = _sources(out, manifest, data_root, metadata, vae)
    settings = src.settings
    t0 = time.monotonic()
    dev = resolve_device(parse_device(device))
    dtype = str(settings.get("dtype") or "float32")
    store = str(settings.get("store_dtype") or "float32")
    tol = tolerance if tolerance is not None else TOLERANCE.get(dtype, TOLERANCE["float16"])
    if tolerance is None and store == "float16":
        tol += FLOAT16_STORE_TOLERANCE
    report = ReencodeReport(output_dir=str(out), tolerance=tol, device=dev, compute_dtype=dtype)
    if src.metadata is not None and settings.get("metadata_sha256"):
        if src.metadata.is_file():
            report.metadata_unchanged = file_sha256(src.metadata) == settings["metadata_sha256"]
        else:
            log.warning("metadata file '%s' is not there: not checked (pass --metadata)", src.metadata)
    parts = list_part_files(out)
    where = _locations(parts)
    report.rows_total = len(where)
    if not where:
        raise ReencodeError(f"'{out}' holds no rows to re-encode")
    rng = np.random.default_rng(seed)
    picked = sorted(rng.choice(len(where), size=min(n, len(where)), replace=False).tolist())
    rows = [where[i] for i in picked]
    model = (
        check_encoder(vae)
        if vae is not None and vae_is_object(vae)
        else load_vae(src.vae, subfolder=src.vae_subfolder, device=dev, dtype=dtype)
    )
    _check_vae(parts, model, settings)

    # Stored latents (checksums checked) and each row's images and target size.
    stored = read_pairs([(str(parts[f]), g, r) for f, g, r in rows], num_threads=num_threads)
    info: list[dict[str, Any]] = []
    by_group: dict[tuple[int, int], list[int]] = {}
    for f, g, r in rows:
        by_group.setdefault((f, g), []).append(r)
    small = {key: dict(zip(rs, _small_columns(parts[key[0]], key[1], rs))) for key, rs in by_group.items()}
    for f, g, r in rows:
        info.append(small[(f, g)][r])

    fresh, failed = _encode_images(model, src, info, dev, num_threads)
    report.images_encoded = len(fresh)
    for (f, g, r), item, pair in zip(rows, info, stored):
        keys = [(item["image1_path"], item["size"]), (item["image2_path"], item["size"])]
        errors: list[float | None] = []
        problems = []
        for k, key in enumerate(keys):
            if key in failed:
                errors.append(None)
                problems.append(f"latent{k + 1}: its source cannot be re-encoded: {failed[key]}")
                continue
            new = fresh[key]
            if new.shape != pair[k].shape:
                errors.append(None)
                problems.append(f"latent{k + 1} has shape {pair[k].shape}, the source gives {new.shape}")
                continue
            err = relative_rms(new, pair[k])
            errors.append(err)
            report.max_error = max(report.max_error, err)
            if not err <= tol:
                problems.append(
                    f"latent{k + 1} differs from its source by {err:.3g} (relative RMS; tolerance {tol:.1e})"
                )
        if problems:
            report.differing.append(
                RowDifference(
                    str(parts[f]),
                    g,
                    r,
                    item["image1_path"],
                    item["image2_path"],
                    (errors[0], errors[1]),
                    "; ".join(problems),
                )
            )
    report.rows_checked = len(rows)
    if preview is not None:
        torch.set_grad_enabled(False)
        _write_preview(Path(preview), model, src, info[:PREVIEW_ROWS], stored[:PREVIEW_ROWS], num_threads)
        report.preview = str(preview)
    report.seconds = round(time.monotonic() - t0, 3)
    return report


def _encode_images(
    model: Any, src: _Sources, info: list[dict[str, Any]], device: str, num_threads: int | None
) -> tuple[dict[tuple[str, tuple[int, int]], np.ndarray], dict[tuple[str, tuple[int, int]], str]]:
    """Each distinct (image, target size) of ``info`` encoded as the encode
    stage does it: decoded in Rust beneath the data root, the VAE with the
    image's seeded noise, stored dtype. Returns the latents, and the images
    that cannot be decoded with why."""
    import torch

    from hpd_encode._core import load_batch
    from hpd_encode.pipeline.options import AUTO_BATCH_PIXELS
    from hpd_encode.vae import encode_pixels, job_seed, latents_to_numpy

    settings = src.settings
    by_size: dict[tuple[int, int], list[str]] = {}
    for item in info:
        for path in (item["image1_path"], item["image2_path"]):
            paths = by_size.setdefault(item["size"], [])
            if path not in paths:
                paths.append(path)
    budget = AUTO_BATCH_PIXELS["cuda" if device.startswith("cuda") else "cpu"]
    latents: dict[tuple[str, tuple[int, int]], np.ndarray] = {}
    failed: dict[tuple[str, tuple[int, int]], str] = {}
    for size, paths in sorted(by_size.items()):
        per_call = max(1, budget // (size[0] * size[1]))
        for i in range(0, len(paths), per_call):
            rels = paths[i : i + per_call]
            arr, errs = load_batch(
                rels,
                size,
                root=str(src.data_root),
                num_threads=num_threads,
                alpha=settings.get("alpha") or "drop",
                normalize=device.startswith("cpu"),
            )
            ok = [j for j, e in enumerate(errs) if e is None]
            for j, e in enumerate(errs):
                if e is not None:
                    failed[(rels[j], size)] = str(e)
            if not ok:
                continue
            x = torch.from_numpy(arr if len(ok) == len(rels) else arr[ok])
            seeds = [job_seed(int(settings.get("seed") or 0), rels[j], size) for j in ok]
            z = encode_pixels(model, x, mode=str(settings["latent"]), seeds=seeds)
            z_np = latents_to_numpy(z, str(settings.get("store_dtype") or "float32"))
            for pos, j in enumerate(ok):
                latents[(rels[j], size)] = z_np[pos]
    return latents, failed


def _write_preview(
    path: Path,
    model: Any,
    src: _Sources,
    info: list[dict[str, Any]],
    stored: list[tuple[np.ndarray, np.ndarray]],
    num_threads: int | None,
) -> None:
    """The contact sheet: per image, source | stored latent decoded | difference (PSNR)."""
    import torch
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from hpd_encode._core import load_batch
    from hpd_encode.vae import DiffusersVae, decode_latents

    if not isinstance(model, DiffusersVae):
        raise ReencodeError(
            "--preview decodes latents with a diffusers VAE; this encoder object has no decoder"
        )
    normalization = model.normalization
    panels = []
    for item, pair in zip(info, stored):
        for k, rel in enumerate((item["image1_path"], item["image2_path"])):
            arr, errs = load_batch(
                [rel], item["size"], root=str(src.data_root), num_threads=num_threads, alpha="drop"
            )
            source = arr[0] if errs[0] is None else np.zeros((*item["size"], 3), np.uint8)
            z = torch.from_numpy(np.ascontiguousarray(pair[k])).float().unsqueeze(0)
            decoded = decode_latents(model, z, normalization)[0]
            diff = np.abs(source.astype(np.int16) - decoded.astype(np.int16)).astype(np.uint8)
            mse = float(np.mean((source.astype(np.float64) - decoded.astype(np.float64)) ** 2))
            psnr = 10 * math.log10(255.0**2 / mse) if mse > 0 else float("inf")
            panels.append((rel, source, decoded, diff, psnr))
    fig = Figure(figsize=(9, 3 * max(1, len(panels))), dpi=80)
    FigureCanvasAgg(fig)
    for i, (rel, source, decoded, diff, psnr) in enumerate(panels):
        for j, (img, title) in enumerate(
            (
                (source, f"source {rel}"),
                (decoded, "stored latent, decoded"),
                (diff, f"|difference|, PSNR {psnr:.1f} dB"),
            )
        ):
            ax = fig.add_subplot(len(panels), 3, 3 * i + j + 1)
            ax.imshow(img)
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
