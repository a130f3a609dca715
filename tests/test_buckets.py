"""BucketSet against an independent Python implementation of REFERENCE.md §2.

The functions ``ref_assign`` and ``ref_pair`` below are written from the
reference's text, not from our Rust code: same formulas (``math.log`` of the
h/w ratio and of the pixel count; ``int(side * E / longer)``), Python
integers, first id wins an exact tie. The Rust results must agree exactly on
every input tried.
"""

from __future__ import annotations

import copy
import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest

from hpd_encode import BucketSet, load_bucket_set

# REFERENCE.md §2, ids in this order, (height, width).
HPDV3 = [
    (256, 256), (512, 512), (1024, 768), (768, 1024), (1152, 832), (832, 1152), (1248, 832),
    (832, 1248), (1024, 1024), (1344, 896), (896, 1344), (1472, 832), (832, 1472),
]  # fmt: skip
REASONS = ["kept", "too_small", "no_bucket", "aspect_mismatch", "no_pair_bucket"]


# ---------------------------------------------------------------------------
# The independent implementation


def ref_assign(buckets: list[tuple[int, int]], h: int, w: int, tol: float = 0.03) -> int | None:
    """One image (h, w) -> bucket id: aspect within ``tol`` (log), then nearest log-area; ties -> first id."""
    if h <= 0 or w <= 0:
        return None
    ar_image = math.log(h / w)
    area_image = math.log(h * w)
    best, best_d = None, None
    for i, (bh, bw) in enumerate(buckets):
        if abs(math.log(bh / bw) - ar_image) <= tol:
            d = abs(math.log(bh * bw) - area_image)
            if best is None or d < best_d:
                best, best_d = i, d
    return best


def ref_pair(
    buckets: list[tuple[int, int]],
    h1: int, w1: int, h2: int, w2: int,
    tol: float = 0.03, pair_tol: float = 0.05, min_pixels: int = 65_536,
) -> tuple[int | None, str]:  # fmt: skip
    """A pair -> (shared target bucket id or None, reason)."""
    # 1. either image below the minimum pixel count
    if h1 * w1 < min_pixels or h2 * w2 < min_pixels:
        return None, "too_small"
    # 2. a bucket each
    b1, b2 = ref_assign(buckets, h1, w1, tol), ref_assign(buckets, h2, w2, tol)
    if b1 is None or b2 is None:
        return None, "no_bucket"
    # 3. same bucket
    if b1 == b2:
        return b1, "kept"
    # 4. the buckets' aspect ratios as width / height
    (bh1, bw1), (bh2, bw2) = buckets[b1], buckets[b2]
    ar1, ar2 = bw1 / bh1, bw2 / bh2
    if abs(ar1 - ar2) / max(ar1, ar2) >= pair_tol:
        return None, "aspect_mismatch"
    # 5. scale each bucket's longer side up to E, take the smaller sides, bucket that
    e = max(bh1, bw1, bh2, bw2)

    def scaled(h: int, w: int) -> tuple[int, int]:
        longer = max(h, w)
        if longer >= e:
            return h, w
        if h >= w:
            return e, int(w * e / longer)
        return int(h * e / longer), e

    (sh1, sw1), (sh2, sw2) = scaled(bh1, bw1), scaled(bh2, bw2)
    target = ref_assign(buckets, min(sh1, sh2), min(sw1, sw2), tol)
    if target is None:
        return None, "no_pair_bucket"
    return target, "kept"


# ---------------------------------------------------------------------------
# Inputs


def hpdv3_like_sizes() -> list[tuple[int, int]]:
    """Image sizes as generators of the HPDv3 images produce them: common
    aspect ratios at common pixel counts on 8/16/64 grids, the buckets, and
    known generator sizes (SDXL, SD3, DALL-E 3, Midjourney, Flux)."""
    sizes = set(HPDV3)
    ratios = [(1, 1), (4, 3), (3, 4), (3, 2), (2, 3), (16, 9), (9, 16), (7, 4), (4, 7), (21, 9), (9, 21),
              (5, 4), (4, 5), (2, 1), (1, 2), (13, 19), (19, 13)]  # fmt: skip
    for rw, rh in ratios:
        for side in (256, 384, 512, 640, 768, 896, 1024, 1152, 1280, 1536, 2048):
            area = side * side
            for grid in (8, 16, 64):
                w = max(grid, round(math.sqrt(area * rw / rh) / grid) * grid)
                h = max(grid, round(math.sqrt(area * rh / rw) / grid) * grid)
                sizes.add((h, w))
    known = [(1024, 1024), (1216, 832), (832, 1216), (1344, 768), (768, 1344), (1536, 640), (640, 1536),
             (1024, 1792), (1792, 1024), (816, 1456), (1456, 816), (928, 1232), (1232, 928), (1536, 1024),
             (1024, 1536), (1080, 1920), (1920, 1080), (720, 1280), (1280, 720), (2048, 2048), (576, 1024),
             (1024, 576), (1360, 768), (768, 1360), (1152, 896), (896, 1152), (1440, 1440)]  # fmt: skip
    sizes.update(known)
    return sorted(sizes)


def near_bucket_sizes(buckets: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sizes around each bucket: +-small offsets, scaled copies, and aspect
    ratios straddling the 0.03 log tolerance."""
    out = set()
    for h, w in buckets:
        for dh in (-16, -8, -3, -1, 0, 1, 2, 8, 16):
            for dw in (-16, -7, -1, 0, 1, 3, 16):
                out.add((h + dh, w + dw))
        for k in (0.25, 0.5, 0.7071, 0.75, 1.25, 1.4142, 1.5, 2.0):
            out.add((round(h * k), round(w * k)))
        for t in np.linspace(-0.036, 0.036, 25):
            out.add((max(1, round(h * math.exp(t))), w))
            out.add((h, max(1, round(w * math.exp(t)))))
    return sorted(out)


def random_pairs(n: int, buckets: list[tuple[int, int]], seed: int) -> np.ndarray:
    """(n, 4) int64 (h1, w1, h2, w2): half uniform over 64..2048 sides, half
    drawn near random buckets (a scale and a small aspect jitter each) so that
    every rule, not just "no bucket", gets exercised."""
    rng = np.random.default_rng(seed)
    uniform = rng.integers(64, 2049, size=(n // 2, 4))
    b = np.array(buckets, dtype=np.float64)
    near = np.empty((n - n // 2, 4), dtype=np.int64)
    for col in (0, 2):
        pick = b[rng.integers(0, len(b), size=len(near))]
        scale = rng.uniform(0.35, 1.8, size=len(near))
        jitter = np.exp(rng.uniform(-0.04, 0.04, size=len(near)))
        near[:, col] = np.maximum(1, np.round(pick[:, 0] * scale * jitter))
        near[:, col + 1] = np.maximum(1, np.round(pick[:, 1] * scale / jitter))
    return np.concatenate([uniform, near]).astype(np.int64)


SETS = {
    "hpdv3": lambda: (BucketSet.hpdv3(), HPDV3, {}),
    "custom": lambda: (
        BucketSet(
            [(640, 640), (512, 768), (768, 512), (960, 960), (704, 1408), (1408, 704), (600, 800)],
            aspect_tolerance=0.1,
            pair_aspect_tolerance=0.2,
            min_pixels=100_000,
        ),
        [(640, 640), (512, 768), (768, 512), (960, 960), (704, 1408), (1408, 704), (600, 800)],
        {"tol": 0.1, "pair_tol": 0.2, "min_pixels": 100_000},
    ),
    "generated": lambda: (lambda s: (s, s.buckets, {}))(BucketSet.generate(512 * 512, 32, 128, 1024)),
}


# ---------------------------------------------------------------------------
# Tests


def test_hpdv3_is_the_reference_table() -> None:
    s = BucketSet.hpdv3()
    assert s.buckets == HPDV3
    assert len(s) == 13
    assert (s.aspect_tolerance, s.pair_aspect_tolerance, s.min_pixels) == (0.03, 0.05, 65_536)
    areas = [h * w for h, w in s.buckets]
    assert areas == sorted(areas)
    for i, (h, w) in enumerate(HPDV3):
        assert s.index(h, w) == i
        assert s.assign(h, w) == i
        assert s.assign_pair(h, w, h, w) == i
    assert s.index(1000, 1000) is None and s.index(-1, 5) is None
    assert BucketSet.DROP_REASONS == REASONS


@pytest.mark.parametrize("name", list(SETS))
def test_single_image_rule_matches_reference(name: str) -> None:
    s, buckets, kw = SETS[name]()
    tol = kw.get("tol", 0.03)
    sizes = hpdv3_like_sizes() + near_bucket_sizes(buckets)
    rng = np.random.default_rng(11)
    sizes += [tuple(map(int, hw)) for hw in rng.integers(64, 2049, size=(5000, 2))]
    hs = np.array([h for h, _ in sizes], dtype=np.int64)
    ws = np.array([w for _, w in sizes], dtype=np.int64)
    expected = [ref_assign(buckets, h, w, tol) for h, w in sizes]
    many = s.assign_many(hs, ws)
    assert many.dtype == np.int32 and many.shape == (len(sizes),)
    assert many.tolist() == [-1 if e is None else e for e in expected]
    mismatches = [(hw, s.assign(*hw), e) for hw, e in zip(sizes, expected) if s.assign(*hw) != e]
    assert not mismatches, mismatches[:10]
    assigned = sum(e is not None for e in expected)
    assert 0.1 * len(sizes) < assigned < len(sizes)  # both outcomes well represented


@pytest.mark.parametrize("name", list(SETS))
def test_pair_rule_matches_reference(name: str) -> None:
    s, buckets, kw = SETS[name]()
    pairs = random_pairs(20_000, buckets, seed=5)
    expected = [ref_pair(buckets, *map(int, p), **kw) for p in pairs]
    ids, reasons = s.assign_pairs(pairs[:, 0], pairs[:, 1], pairs[:, 2], pairs[:, 3])
    assert ids.dtype == np.int32 and reasons.dtype == np.int8
    want_ids = [-1 if b is None else b for b, _ in expected]
    want_reasons = [REASONS.index(r) for _, r in expected]
    bad = np.flatnonzero((ids != want_ids) | (reasons != want_reasons))
    assert bad.size == 0, [(pairs[i].tolist(), ids[i], reasons[i], expected[i]) for i in bad[:10]]
    counts = {r: want_reasons.count(REASONS.index(r)) for r in REASONS}
    # Every rule is exercised (a pair bucket failure only happens with sets
    # whose merged size can miss every bucket).
    for r in ("kept", "too_small", "no_bucket", "aspect_mismatch"):
        assert counts[r] > 50, counts
    # The scalar method agrees with the vectorised one.
    for p, b in zip(pairs[:2000], ids[:2000]):
        assert s.assign_pair(*map(int, p)) == (None if b < 0 else b)


def test_pairs_of_generator_sizes_match_reference() -> None:
    s = BucketSet.hpdv3()
    sizes = hpdv3_like_sizes()
    a = np.array([(h1, w1, h2, w2) for h1, w1 in sizes for h2, w2 in sizes], dtype=np.int64)
    ids, reasons = s.assign_pairs(a[:, 0], a[:, 1], a[:, 2], a[:, 3])
    expected = [ref_pair(HPDV3, *map(int, p)) for p in a]
    assert ids.tolist() == [-1 if b is None else b for b, _ in expected]
    assert reasons.tolist() == [REASONS.index(r) for _, r in expected]
    # Pairs of different buckets that the rules merge into one target exist.
    b1, b2 = s.assign_many(a[:, 0], a[:, 1]), s.assign_many(a[:, 2], a[:, 3])
    merged = (ids >= 0) & (b1 != b2)
    assert merged.sum() > 0


def test_every_pair_of_buckets() -> None:
    s = BucketSet.hpdv3()
    seen = set()
    for h1, w1 in HPDV3:
        for h2, w2 in HPDV3:
            want, reason = ref_pair(HPDV3, h1, w1, h2, w2)
            got = s.assign_pair(h1, w1, h2, w2)
            assert got == want, ((h1, w1), (h2, w2), got, want, reason)
            seen.add(reason)
    assert seen == {"kept", "aspect_mismatch"}  # 256x256 has exactly 65536 pixels: not too small
    # Some hand-checked cases: same bucket; 512^2 with 1024^2 (scaled to 1024^2);
    # 1152x832 with 1248x832 (ar 0.722 vs 0.667: 7.7% apart -> mismatch).
    assert s.assign_pair(512, 512, 1024, 1024) == 8
    assert s.assign_pair(1152, 832, 1248, 832) is None
    assert s.assign_pair(255, 256, 1024, 1024) is None  # 65280 pixels: too small


def test_no_pair_bucket_reason() -> None:
    # 1000x990 and 990x1000 are 2% apart in aspect (under 0.05) and share the
    # longer side, so the merged size is 990x990: with a 0.005 aspect
    # tolerance no bucket takes a square, and the pair is dropped for that.
    buckets = [(1000, 990), (990, 1000), (600, 400)]
    s = BucketSet(buckets, aspect_tolerance=0.005, min_pixels=1)
    seen = []
    for h1, w1 in buckets:
        for h2, w2 in buckets:
            want, reason = ref_pair(buckets, h1, w1, h2, w2, tol=0.005, min_pixels=1)
            ids, reasons = s.assign_pairs([h1], [w1], [h2], [w2])
            assert (ids[0], REASONS[reasons[0]]) == (-1 if want is None else want, reason)
            seen.append(reason)
    assert seen.count("no_pair_bucket") == 2


def test_exact_tie_goes_to_the_first_id() -> None:
    # Same area, aspect tolerance wide enough for both: a true tie.
    assert BucketSet([(1024, 768), (768, 1024)], aspect_tolerance=1.0).assign(1000, 1000) == 0
    assert BucketSet([(768, 1024), (1024, 768)], aspect_tolerance=1.0).assign(1000, 1000) == 0
    assert ref_assign([(1024, 768), (768, 1024)], 1000, 1000, 1.0) == 0


def test_degenerate_sizes() -> None:
    s = BucketSet.hpdv3()
    for h, w in ((0, 5), (5, 0), (0, 0), (-5, 100), (100, -5)):
        assert s.assign(h, w) is None
        assert s.assign_pair(h, w, 1024, 1024) is None
        ids, reasons = s.assign_pairs([h], [w], [1024], [1024])
        assert (ids[0], reasons[0]) == (-1, REASONS.index("too_small"))
    assert s.assign_many([0, -1], [5, 5]).tolist() == [-1, -1]
    # Huge sides do not overflow (the area is computed exactly).
    assert s.assign(2**40, 2**40) == ref_assign(HPDV3, 2**40, 2**40) == 8
    assert s.assign_pair(2**33, 2**33, 2**33, 2**33) == 8


def test_array_inputs_of_any_layout() -> None:
    s = BucketSet.hpdv3()
    h = np.arange(200, 2000, 3, dtype=np.int64)
    w = (h * 3) // 4
    want = s.assign_many(h.copy(), w.copy())
    np.testing.assert_array_equal(s.assign_many(h.tolist(), w.tolist()), want)
    np.testing.assert_array_equal(s.assign_many(h.astype(np.int32), w.astype(np.uint16)), want)
    # Strided views (not contiguous) are valid inputs.
    big = np.stack([h, w], axis=1)
    np.testing.assert_array_equal(s.assign_many(big[:, 0], big[:, 1]), want)
    np.testing.assert_array_equal(s.assign_many(h[::2], w[::2]), want[::2])
    ids, reasons = s.assign_pairs(h[::3], w[::3], h[1::3][: len(h[::3])], w[1::3][: len(h[::3])])
    ids2, reasons2 = s.assign_pairs(*(np.ascontiguousarray(x) for x in (h[::3], w[::3], h[1::3], w[1::3])))
    np.testing.assert_array_equal(ids, ids2)
    np.testing.assert_array_equal(reasons, reasons2)
    empty = s.assign_many(np.array([], dtype=np.int64), np.array([], dtype=np.int64))
    assert empty.shape == (0,) and empty.dtype == np.int32


def ref_generate(max_pixels: int, step: int, min_side: int, max_side: int) -> list[tuple[int, int]]:
    """The documented generator: for each width min_side..max_side (multiples
    of step), the largest height (a multiple of step, <= max_side) with
    h * w <= max_pixels; both orientations; stable sort by area; no duplicates."""
    out: list[tuple[int, int]] = []
    w = -(-min_side // step) * step
    while w <= max_side:
        h = min(max_pixels // w // step * step, max_side)
        if h >= min_side:
            for b in ((h, w), (w, h)):
                if b not in out:
                    out.append(b)
        w += step
    return sorted(out, key=lambda b: b[0] * b[1])


@pytest.mark.parametrize(
    "args",
    [
        (1024 * 1024, 64, 256, 2048),
        (512 * 512, 32, 128, 1024),
        (1536 * 1536, 128, 512, 2560),
        (10**6, 50, 333, 1700),
    ],
)
def test_generate(args: tuple[int, int, int, int]) -> None:
    max_pixels, step, min_side, max_side = args
    s = BucketSet.generate(max_pixels, step, min_side, max_side)
    assert s.buckets == ref_generate(*args)
    for h, w in s.buckets:
        assert h * w <= max_pixels and h % step == 0 and w % step == 0
        assert min_side <= h <= max_side and min_side <= w <= max_side
        assert (w, h) in s.buckets
    assert len(set(s.buckets)) == len(s)
    assert BucketSet.generate() == BucketSet.generate(1024 * 1024, 64, 256, 2048)
    assert BucketSet.generate(min_pixels=1000).min_pixels == 1000


def test_pickle_copy_equality_repr() -> None:
    s = BucketSet([(640, 640), (512, 768)], aspect_tolerance=0.07, pair_aspect_tolerance=0.11, min_pixels=123)
    for clone in (pickle.loads(pickle.dumps(s)), copy.deepcopy(s), copy.copy(s)):
        assert clone == s
        assert clone.buckets == s.buckets
        assert (clone.aspect_tolerance, clone.pair_aspect_tolerance, clone.min_pixels) == (0.07, 0.11, 123)
    assert pickle.loads(pickle.dumps(BucketSet.hpdv3())) == BucketSet.hpdv3()
    assert s != BucketSet([(640, 640), (512, 768)])
    assert s != "not a bucket set"
    assert "640x640" in repr(s) and "512x768" in repr(s) and "min_pixels=123" in repr(s)


def test_load_bucket_set(tmp_path: Path) -> None:
    assert load_bucket_set() == BucketSet.hpdv3()
    path = tmp_path / "b.json"
    path.write_text(json.dumps({"buckets": [[512, 512], [512, 768]], "min_pixels": 10}))
    s = load_bucket_set(path)
    assert s.buckets == [(512, 512), (512, 768)] and s.min_pixels == 10


@pytest.mark.parametrize(
    "call",
    [
        lambda: BucketSet([]),
        lambda: BucketSet([(0, 512)]),
        lambda: BucketSet([(512, -1)]),
        lambda: BucketSet([(2**33, 512)]),
        lambda: BucketSet([(512, 512), (512, 512)]),
        lambda: BucketSet([(512, 512)], aspect_tolerance=-0.1),
        lambda: BucketSet([(512, 512)], pair_aspect_tolerance=float("nan")),
        lambda: BucketSet([(512, 512)], min_pixels=-1),
        lambda: BucketSet.hpdv3(aspect_tolerance=-1.0),
        lambda: BucketSet.generate(step=0),
        lambda: BucketSet.generate(min_side=0),
        lambda: BucketSet.generate(min_side=4096, max_side=2048),
        lambda: BucketSet.generate(max_pixels=-1),
        lambda: BucketSet.generate(max_pixels=10),  # no bucket fits the budget
        lambda: BucketSet.hpdv3().assign_many([1, 2], [1]),
        lambda: BucketSet.hpdv3().assign_pairs([1, 2], [1, 2], [1, 2], [1]),
    ],
)
def test_bad_arguments_raise_value_error(call) -> None:
    with pytest.raises(ValueError):
        call()
