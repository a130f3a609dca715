"""Bucket-set helpers: name or JSON file to a :class:`BucketSet`."""

from __future__ import annotations

import json
from os import PathLike
from pathlib import Path

from hpd_encode._core import BucketSet
from hpd_encode.errors import OptionError

#: Largest bucket side accepted from a bucket file (pixels).
MAX_SIDE = 16384


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
        raise OptionError(f"bucket set {str(spec)!r} is neither 'hpdv3' nor an existing JSON file")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise OptionError(f"cannot parse bucket file '{path}': {e}") from e
    options: dict[str, float | int] = {}
    if isinstance(data, dict):
        unknown = set(data) - {"buckets", *_OPTION_LIMITS}
        if unknown:
            raise OptionError(f"bucket file '{path}' has unknown key(s): {', '.join(sorted(unknown))}")
        options = {k: _option(path, k, data[k]) for k in _OPTION_LIMITS if k in data}
        data = data.get("buckets")
    if (
        not isinstance(data, list)
        or not data
        or not all(isinstance(b, (list, tuple)) and len(b) == 2 for b in data)
    ):
        raise OptionError(f"bucket file '{path}' must hold a non-empty list of [height, width] pairs")
    sizes = [(_side(path, h), _side(path, w)) for h, w in data]
    return BucketSet(sizes, **options)  # type: ignore[arg-type]


# Option -> (integer?, upper bound).
_OPTION_LIMITS = {
    "aspect_tolerance": (False, 10.0),
    "pair_aspect_tolerance": (False, 10.0),
    "min_pixels": (True, MAX_SIDE * MAX_SIDE),
}


def _side(path: Path, v: object) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_SIDE:
        raise OptionError(
            f"bucket file '{path}': a bucket side must be an integer in 1..{MAX_SIDE}, not {v!r}"
        )
    return v


def _option(path: Path, key: str, v: object) -> float | int:
    integer, top = _OPTION_LIMITS[key]
    ok_type = isinstance(v, int) if integer else isinstance(v, (int, float))
    if isinstance(v, bool) or not ok_type or not 0 <= v <= top:  # type: ignore[operator]
        kind = "an integer" if integer else "a number"
        raise OptionError(f"bucket file '{path}': {key} must be {kind} in 0..{top:g}, not {v!r}")
    return v  # type: ignore[return-value]


def bucket_set_spec(buckets: BucketSet) -> dict:
    """A JSON-able description (for manifests and resume checks)."""
    return {
        "buckets": [list(b) for b in buckets.buckets],
        "aspect_tolerance": buckets.aspect_tolerance,
        "pair_aspect_tolerance": buckets.pair_aspect_tolerance,
        "min_pixels": buckets.min_pixels,
    }
