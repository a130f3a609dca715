"""Bucket-set helpers: name or JSON file to a :class:`BucketSet`."""

from __future__ import annotations

import json
from os import PathLike
from pathlib import Path

from hpd_encode._core import BucketSet


def load_bucket_set(spec: str | PathLike[str] | BucketSet = "hpdv3") -> BucketSet:
    """Resolve ``"hpdv3"``, a JSON file, or a :class:`BucketSet` itself.

    The JSON file is either a list of ``[height, width]`` pairs or an object
    ``{"buckets": [[h, w], ...], "aspect_tolerance": ..., "pair_aspect_tolerance": ...,
    "min_pixels": ...}`` (the tolerances are optional).
    """
    if isinstance(spec, BucketSet):
        return spec
    if str(spec) == "hpdv3":
        return BucketSet.hpdv3()
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"bucket set {str(spec)!r} is neither 'hpdv3' nor an existing JSON file")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"cannot parse bucket file '{path}': {e}") from e
    options = {}
    if isinstance(data, dict):
        options = {k: data[k] for k in ("aspect_tolerance", "pair_aspect_tolerance", "min_pixels") if k in data}
        data = data.get("buckets")
    if not isinstance(data, list) or not all(isinstance(b, (list, tuple)) and len(b) == 2 for b in data):
        raise ValueError(f"bucket file '{path}' must hold a list of [height, width] pairs")
    return BucketSet([(int(h), int(w)) for h, w in data], **options)


def bucket_set_spec(buckets: BucketSet) -> dict:
    """A JSON-able description (for manifests and resume checks)."""
    return {
        "buckets": [list(b) for b in buckets.buckets],
        "aspect_tolerance": buckets.aspect_tolerance,
        "pair_aspect_tolerance": buckets.pair_aspect_tolerance,
        "min_pixels": buckets.min_pixels,
    }
