//! Aspect-ratio buckets and the preference-pair rule, exactly as the reference
//! pipeline defines them (`REFERENCE.md` §2). Every comparison is written in
//! the same floating-point form as the reference so results agree bit for bit.

use crate::error::{Error, Result};

pub const DEFAULT_ASPECT_TOLERANCE: f64 = 0.03;
pub const DEFAULT_PAIR_ASPECT_TOLERANCE: f64 = 0.05;
pub const DEFAULT_MIN_PIXELS: u64 = 65_536;

/// The `hpdv3` set, ids in this order, as `(height, width)`.
pub const HPDV3: [(u32, u32); 13] = [
    (256, 256),
    (512, 512),
    (1024, 768),
    (768, 1024),
    (1152, 832),
    (832, 1152),
    (1248, 832),
    (832, 1248),
    (1024, 1024),
    (1344, 896),
    (896, 1344),
    (1472, 832),
    (832, 1472),
];

/// Why a pair got no target bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i8)]
pub enum PairDrop {
    /// One of the images has fewer than `min_pixels` pixels.
    TooSmall = 1,
    /// One of the images fits no bucket.
    NoBucket = 2,
    /// The two images' buckets differ too much in aspect ratio.
    AspectMismatch = 3,
    /// The merged size of the two buckets fits no bucket.
    NoPairBucket = 4,
}

/// Names of the pair outcomes, indexed by the `PairDrop` discriminant (0 = kept):
/// the reason codes `assign_pairs` returns and `BucketSet.DROP_REASONS` exports.
pub const DROP_REASONS: [&str; 5] = ["kept", "too_small", "no_bucket", "aspect_mismatch", "no_pair_bucket"];

#[derive(Debug, Clone, PartialEq)]
pub struct BucketSet {
    buckets: Vec<(u32, u32)>,
    /// Each bucket's `ln(h / w)` and `ln(h * w)`, as [`BucketSet::assign`] compares them
    /// (computed once: a million pairs would otherwise take tens of millions of logarithms).
    logs: Vec<(f64, f64)>,
    pub aspect_tolerance: f64,
    pub pair_aspect_tolerance: f64,
    pub min_pixels: u64,
}

impl BucketSet {
    pub fn new(buckets: Vec<(u32, u32)>) -> Result<Self> {
        if buckets.is_empty() {
            return Err(Error::InvalidArgument("a bucket set needs at least one bucket".into()));
        }
        if let Some(&(h, w)) = buckets.iter().find(|&&(h, w)| h == 0 || w == 0) {
            return Err(Error::InvalidArgument(format!("bucket {h}x{w} has a zero side")));
        }
        for (i, b) in buckets.iter().enumerate() {
            if buckets[..i].contains(b) {
                return Err(Error::InvalidArgument(format!("bucket {}x{} is listed twice", b.0, b.1)));
            }
        }
        let logs = buckets
            .iter()
            .map(|&(bh, bw)| ((bh as f64 / bw as f64).ln(), ((bh as u64 * bw as u64) as f64).ln()))
            .collect();
        Ok(Self {
            buckets,
            logs,
            aspect_tolerance: DEFAULT_ASPECT_TOLERANCE,
            pair_aspect_tolerance: DEFAULT_PAIR_ASPECT_TOLERANCE,
            min_pixels: DEFAULT_MIN_PIXELS,
        })
    }

    pub fn hpdv3() -> Self {
        Self::new(HPDV3.to_vec()).expect("the built-in set is valid")
    }

    /// A kohya-style generated set: for every width from `min_side` to
    /// `max_side` in steps of `step`, the largest height (a multiple of
    /// `step`, at most `max_side`) keeping `h * w <= max_pixels`; both
    /// orientations; sorted by area (stable), then deduplicated.
    pub fn generate(max_pixels: u64, step: u32, min_side: u32, max_side: u32) -> Result<Self> {
        if step == 0 || min_side == 0 || min_side > max_side {
            return Err(Error::InvalidArgument(format!(
                "generate needs step > 0 and 0 < min_side <= max_side (got step={step}, min_side={min_side}, max_side={max_side})"
            )));
        }
        let mut out: Vec<(u32, u32)> = Vec::new();
        let mut w = min_side.div_ceil(step) * step;
        while w <= max_side {
            let h = ((max_pixels / w as u64) / step as u64 * step as u64).min(max_side as u64) as u32;
            if h >= min_side {
                for b in [(h, w), (w, h)] {
                    if !out.contains(&b) {
                        out.push(b);
                    }
                }
            }
            w += step;
        }
        out.sort_by_key(|&(h, w)| h as u64 * w as u64);
        Self::new(out)
    }

    pub fn buckets(&self) -> &[(u32, u32)] {
        &self.buckets
    }

    /// The single-image rule: aspect within tolerance (log), then the nearest
    /// area (log); exact ties go to the lower id.
    pub fn assign(&self, h: u64, w: u64) -> Option<usize> {
        if h == 0 || w == 0 {
            return None;
        }
        let ar_image = (h as f64 / w as f64).ln();
        // The exact product (no overflow for any u64 sides), rounded once to
        // f64 as Python's `math.log(h * w)` does.
        let area_image = ((h as u128 * w as u128) as f64).ln();
        let mut best: Option<(usize, f64)> = None;
        for (i, &(ar_bucket, area_bucket)) in self.logs.iter().enumerate() {
            if (ar_bucket - ar_image).abs() > self.aspect_tolerance {
                continue;
            }
            let d = (area_bucket - area_image).abs();
            // `map_or`, not `is_none_or`: the crate's MSRV is 1.80.
            if best.map_or(true, |(_, bd)| d < bd) {
                best = Some((i, d));
            }
        }
        best.map(|(i, _)| i)
    }

    /// The pair rule: the shared target bucket of two images, or why none.
    pub fn assign_pair(&self, h1: u64, w1: u64, h2: u64, w2: u64) -> std::result::Result<usize, PairDrop> {
        let small = |h: u64, w: u64| (h as u128 * w as u128) < self.min_pixels as u128;
        if small(h1, w1) || small(h2, w2) {
            return Err(PairDrop::TooSmall);
        }
        let (b1, b2) = match (self.assign(h1, w1), self.assign(h2, w2)) {
            (Some(a), Some(b)) => (a, b),
            _ => return Err(PairDrop::NoBucket),
        };
        if b1 == b2 {
            return Ok(b1);
        }
        let (bh1, bw1) = self.buckets[b1];
        let (bh2, bw2) = self.buckets[b2];
        let ar1 = bw1 as f64 / bh1 as f64;
        let ar2 = bw2 as f64 / bh2 as f64;
        if (ar1 - ar2).abs() / ar1.max(ar2) >= self.pair_aspect_tolerance {
            return Err(PairDrop::AspectMismatch);
        }
        let e = bh1.max(bw1).max(bh2).max(bw2) as u64;
        let scale = |h: u64, w: u64| -> (u64, u64) {
            let longer = h.max(w);
            if longer >= e {
                return (h, w);
            }
            // int(side * E / longer): exact integer product, float division, truncation.
            let f = |side: u64| ((side * e) as f64 / longer as f64) as u64;
            if h >= w {
                (e, f(w))
            } else {
                (f(h), e)
            }
        };
        let (h1s, w1s) = scale(bh1 as u64, bw1 as u64);
        let (h2s, w2s) = scale(bh2 as u64, bw2 as u64);
        self.assign(h1s.min(h2s), w1s.min(w2s)).ok_or(PairDrop::NoPairBucket)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_hpdv3_bucket_maps_to_itself() {
        let s = BucketSet::hpdv3();
        for (i, &(h, w)) in HPDV3.iter().enumerate() {
            assert_eq!(s.assign(h as u64, w as u64), Some(i));
        }
    }

    #[test]
    fn near_sizes_and_misfits() {
        let s = BucketSet::hpdv3();
        assert_eq!(s.assign(1000, 1000), Some(8));
        assert_eq!(s.assign(300, 300), Some(0));
        assert_eq!(s.assign(400, 400), Some(1)); // ln(512^2/400^2) < ln(400^2/256^2)
        assert_eq!(s.assign(100, 1000), None);
        assert_eq!(s.assign(0, 10), None);
    }

    #[test]
    fn pair_rules() {
        let s = BucketSet::hpdv3();
        assert_eq!(s.assign_pair(1024, 1024, 1024, 1024), Ok(8));
        assert_eq!(s.assign_pair(200, 200, 1024, 1024), Err(PairDrop::TooSmall));
        assert_eq!(s.assign_pair(100, 1000, 1024, 1024), Err(PairDrop::NoBucket));
        assert_eq!(s.assign_pair(1024, 768, 768, 1024), Err(PairDrop::AspectMismatch));
        assert_eq!(DROP_REASONS[PairDrop::AspectMismatch as usize], "aspect_mismatch");
        assert_eq!(DROP_REASONS[PairDrop::NoPairBucket as usize], "no_pair_bucket");
        // 512x512 and 1024x1024: same aspect, scale up to 1024 -> 1024x1024.
        assert_eq!(s.assign_pair(512, 512, 1024, 1024), Ok(8));
    }

    #[test]
    fn huge_sides_do_not_overflow() {
        let s = BucketSet::hpdv3();
        // 2^33 x 2^33 overflows u64; the area must still be computed exactly.
        let big = 1u64 << 33;
        assert_eq!(s.assign(big, big), Some(8));
        assert_eq!(s.assign_pair(big, big, big, big), Ok(8));
        assert_eq!(s.assign(u64::MAX, u64::MAX), Some(8));
        assert_eq!(s.assign_pair(1, u64::MAX, 1, u64::MAX), Err(PairDrop::NoBucket));
    }

    #[test]
    fn generated_set_is_sorted_and_within_budget() {
        let s = BucketSet::generate(1024 * 1024, 64, 256, 2048).unwrap();
        let areas: Vec<u64> = s.buckets().iter().map(|&(h, w)| h as u64 * w as u64).collect();
        assert!(areas.windows(2).all(|a| a[0] <= a[1]));
        assert!(areas.iter().all(|&a| a <= 1024 * 1024));
        assert!(s.buckets().contains(&(1024, 1024)));
        assert!(BucketSet::generate(1, 0, 1, 1).is_err());
    }
}
