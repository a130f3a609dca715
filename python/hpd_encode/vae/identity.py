"""The identity of a diffusers VAE folder: what its latents depend on.

Canonical JSON text (sorted keys, no spaces) with the model class, the SHA-256
of its configuration and the SHA-256 of each weight file by name::

    {"class":"AutoencoderKL","config_sha256":"...","weights_sha256":{"diffusion_pytorch_model.safetensors":"..."}}

It goes into ``manifest.json`` and the resume fingerprint, so a rerun after
the weights in the same folder were replaced refuses to resume. Digests are
cached per process by (path, size, modification time): a run hashes each
weight file once (an SD3.5 VAE's 168 MB take about half a second).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any

#: Files diffusers loads a model's weights from (single, variant, sharded and their index).
WEIGHT_PREFIX = "diffusion_pytorch_model"

_digests: dict[tuple[str, int, int], str] = {}
_lock = threading.Lock()


def file_digest(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes, cached by (resolved path, size, mtime)."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    with _lock:
        if key in _digests:
            return _digests[key]
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    digest = h.hexdigest()
    with _lock:
        _digests[key] = digest
    return digest


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def config_digest(config: dict[str, Any]) -> str:
    """SHA-256 of a model configuration's canonical JSON, without the keys
    diffusers keeps for itself (``_class_name``, ``_diffusers_version``,
    ``_name_or_path``: none of them changes a latent)."""
    kept = {k: v for k, v in config.items() if not k.startswith("_")}
    return hashlib.sha256(canonical_json(kept).encode()).hexdigest()


def weight_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob(f"{WEIGHT_PREFIX}*") if p.is_file())


def folder_identity(
    folder: str | os.PathLike[str], class_name: str | None = None, config: dict[str, Any] | None = None
) -> str:
    """The identity text of the diffusers model saved in ``folder`` (see the module docstring);
    ``class_name`` and ``config`` default to what its ``config.json`` says. Usable for any
    diffusers model class, e.g. by an encoder object wrapping one."""
    from hpd_encode.errors import VaeError

    folder = Path(folder)
    if config is None:
        path = folder / "config.json"
        try:
            config = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise VaeError(f"cannot read '{path}': {e}; pass a diffusers model folder") from e
        if not isinstance(config, dict):
            raise VaeError(f"'{path}' is not a JSON object; pass a diffusers model folder")
    if class_name is None:
        class_name = str(config.get("_class_name", ""))
    files = weight_files(folder)
    if not files:
        raise VaeError(
            f"'{folder}' has a config.json but no weight file ({WEIGHT_PREFIX}.safetensors or .bin); "
            "pass the folder the VAE was saved to"
        )
    return canonical_json(
        {
            "class": class_name,
            "config_sha256": config_digest(config),
            "weights_sha256": {p.name: file_digest(p) for p in files},
        }
    )


def describe_change(before: Any, after: Any) -> str:
    """What differs between two identity texts, in a few words (for a refused resume)."""
    try:
        a, b = json.loads(before), json.loads(after)
    except (TypeError, ValueError):
        return "the encoder's identity changed"
    if not isinstance(a, dict) or not isinstance(b, dict):
        return "the encoder's identity changed"
    parts = []
    if a.get("class") != b.get("class"):
        parts.append(f"class {a.get('class')} -> {b.get('class')}")
    if a.get("config_sha256") != b.get("config_sha256"):
        parts.append("config.json differs")
    wa, wb = a.get("weights_sha256") or {}, b.get("weights_sha256") or {}
    changed = sorted(n for n in set(wa) | set(wb) if wa.get(n) != wb.get(n))
    if changed:
        parts.append(f"weights differ ({', '.join(changed)})")
    return "; ".join(parts) or "the encoder's identity changed"
