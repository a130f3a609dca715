"""Provenance: what produced a part file's latents, kept in the file itself.

Every part file hpd-encode writes carries one JSON object in its footer, as
Parquet key-value metadata under the key ``hpd_encode`` (where pandas and
Hugging Face ``datasets`` keep theirs; every Parquet reader keeps it)::

    {"format": 1, "tool": "hpd-encode 0.1.0",
     "vae": {"class": "AutoencoderKL", "config_sha256": "...", "weights": {"diffusion_pytorch_model.safetensors": "..."}},
     "normalization": {"kind": "shift_scale", "shift": 0.0609, "scale": 1.5305},
     "latent": "sample", "seed": 0, "compute_dtype": "bfloat16", "store_dtype": "float32",
     "alpha": "drop", "down_factor": 8, "buckets": {"buckets": [[256, 256], ...], ...}}

``repack`` keeps it and adds ``"repack"``: the source file's name, size,
mtime and digest, and the latent codec (what lets a rerun prove that a
finished destination file came from this source).

:func:`read_provenance` reads it back; :func:`check_same_provenance` is what
the index uses to refuse files of different provenance in one index.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from os import PathLike
from typing import Any

from hpd_encode.errors import MixedProvenanceError, PartFileError

#: The footer key the provenance is stored under.
PROVENANCE_KEY = "hpd_encode"

#: The version of the provenance object's layout.
PROVENANCE_FORMAT = 1

#: Keys that do not change what the latents are: files that differ only in
#: them may share an index (another tool version, a repacked copy).
NEUTRAL_KEYS = ("tool", "repack")


def provenance_json(provenance: dict[str, Any]) -> str:
    """The canonical JSON text of a provenance object (sorted keys, no spaces)."""
    return json.dumps(provenance, sort_keys=True, separators=(",", ":"))


def footer_entries(provenance: dict[str, Any] | None) -> list[tuple[str, str]]:
    """The key-value metadata that stores ``provenance`` (none when it is None)."""
    return [] if provenance is None else [(PROVENANCE_KEY, provenance_json(provenance))]


def parse_identity(identity: str) -> Any:
    """An encoder's ``identity`` as it goes into the provenance: the object
    when it is JSON (the diffusers VAEs' canonical JSON), else the text."""
    try:
        return json.loads(identity)
    except (TypeError, ValueError):
        return identity


def read_provenance(path: str | PathLike[str]) -> dict[str, Any] | None:
    """The provenance stored in the part file at ``path``, or None when it has
    none (the reference's files, earlier versions'). Raises
    :class:`~hpd_encode.errors.PartFileError` when the footer cannot be read or
    the stored value is not a JSON object."""
    from hpd_encode._core import footer_metadata

    raw = footer_metadata(path).get(PROVENANCE_KEY)
    return parse_provenance(raw, str(path))


def parse_provenance(raw: str | None, where: str) -> dict[str, Any] | None:
    """The provenance object of a footer's ``hpd_encode`` value (None: absent)."""
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError as e:
        raise PartFileError(f"'{where}': its '{PROVENANCE_KEY}' footer metadata is not JSON ({e})") from e
    if not isinstance(value, dict):
        raise PartFileError(f"'{where}': its '{PROVENANCE_KEY}' footer metadata is not a JSON object")
    return value


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 40 else text[:37] + "..."


def _differences(a: Any, b: Any, prefix: str) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for key in sorted(set(a) | set(b)):
            name = f"{prefix}.{key}" if prefix else str(key)
            if key not in a:
                out.append(f"{name} (absent vs {_short(b[key])})")
            elif key not in b:
                out.append(f"{name} ({_short(a[key])} vs absent)")
            else:
                out += _differences(a[key], b[key], name)
        return out
    return [] if a == b else [f"{prefix} ({_short(a)} vs {_short(b)})"]


def provenance_difference(a: dict[str, Any] | None, b: dict[str, Any] | None) -> str | None:
    """How two provenance objects differ in what changes latents (keys in
    :data:`NEUTRAL_KEYS` aside), as text; None when they do not."""

    def core(p: dict[str, Any] | None) -> dict[str, Any] | None:
        kept = {k: v for k, v in (p or {}).items() if k not in NEUTRAL_KEYS}
        return kept or None

    first, second = core(a), core(b)
    if first is None and second is None:
        return None
    if first is None or second is None:
        which = "the first" if first is None else "the second"
        return f"{which} has no provenance (written by the reference or an earlier version), the other has"
    found = _differences(first, second, "")
    if not found:
        return None
    more = f" and {len(found) - 3} more" if len(found) > 3 else ""
    return ", ".join(found[:3]) + more


def check_same_provenance(paths: Sequence[str], provenances: Sequence[dict[str, Any] | None]) -> None:
    """Raise :class:`~hpd_encode.errors.MixedProvenanceError` (one line, naming
    two files that differ and how) unless every file has the same provenance."""
    if not paths:
        return
    first, base = paths[0], provenances[0]
    for path, prov in zip(paths[1:], provenances[1:]):
        how = provenance_difference(base, prov)
        if how is not None:
            raise MixedProvenanceError(
                f"'{first}' and '{path}' hold latents of different provenance: {how}; "
                "index them separately, or pass --allow-mixed (allow_mixed=True) to mix them"
            )


def encode_provenance(settings: dict[str, Any], tool: str, normalization: dict[str, Any]) -> dict[str, Any]:
    """The provenance of an encode run's part files, from its settings (the
    fingerprinted ones: the encoder's identity, dtype, latent mode, seed, store
    dtype, buckets, alpha) and its encoder's ``normalization``."""
    from hpd_encode.schema import LATENT_DOWN_FACTOR

    return {
        "format": PROVENANCE_FORMAT,
        "tool": tool,
        "vae": parse_identity(settings.get("vae_identity") or settings.get("vae") or ""),
        "normalization": normalization,
        "latent": settings.get("latent"),
        "seed": settings.get("seed") if settings.get("latent") == "sample" else None,
        "compute_dtype": settings.get("dtype"),
        "store_dtype": settings.get("store_dtype"),
        "alpha": settings.get("alpha"),
        "buckets": settings.get("buckets"),
        "down_factor": LATENT_DOWN_FACTOR,
    }
