//! Batch loading: decode + orient + resize many files in parallel on the
//! shared pool. Every item succeeds or fails on its own.

use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::decode::{decode_path, guarded, probe_path, LoadOptions, RgbImage};
use crate::error::{Error, Result};
use crate::pool::pool;
use crate::resize::{resize, resize_into};

/// Header-only sizes `(height, width)` of many files.
pub fn probe_many(paths: &[PathBuf], num_threads: Option<usize>) -> Vec<Result<(u32, u32)>> {
    pool(num_threads).install(|| paths.par_iter().map(|p| probe_path(p)).collect())
}

/// Decode one file, resized to `size = (h, w)` when given.
pub fn load_one(path: &Path, size: Option<(usize, usize)>, opts: &LoadOptions) -> Result<RgbImage> {
    let img = decode_path(path, opts)?;
    match size {
        // The decoder is guarded inside decode_path; guard the resize too, so
        // that no panic can unwind through the pool into Python.
        Some((h, w)) => guarded(|| resize(&img, h, w)).map_err(|f| Error::image(path.display().to_string(), f)),
        None => Ok(img),
    }
}

/// Decode each file and resize it to `sizes[i]` (or keep its size).
pub fn load_many(
    paths: &[PathBuf],
    sizes: Option<&[(usize, usize)]>,
    num_threads: Option<usize>,
    opts: &LoadOptions,
) -> Vec<Result<RgbImage>> {
    pool(num_threads)
        .install(|| paths.par_iter().enumerate().map(|(i, p)| load_one(p, sizes.map(|s| s[i]), opts)).collect())
}

/// Decode and resize every file to `(height, width)` straight into `out`, a
/// contiguous `(n, height, width, 3)` buffer. Failed slots are zero-filled;
/// the returned vector holds each item's error, if any.
pub fn load_batch_into(
    paths: &[PathBuf],
    size: (usize, usize),
    num_threads: Option<usize>,
    opts: &LoadOptions,
    out: &mut [u8],
) -> Vec<Option<Error>> {
    let (h, w) = size;
    let item = h * w * 3;
    assert_eq!(out.len(), item * paths.len(), "batch buffer does not match n * h * w * 3");
    if item == 0 {
        return paths.iter().map(|_| None).collect();
    }
    pool(num_threads).install(|| {
        out.par_chunks_mut(item)
            .zip(paths.par_iter())
            .map(|(slot, path)| {
                let result = decode_path(path, opts).and_then(|img| {
                    guarded(|| resize_into(&img, h, w, &mut *slot))
                        .map_err(|f| Error::image(path.display().to_string(), f))
                });
                match result {
                    Ok(()) => None,
                    Err(e) => {
                        slot.fill(0);
                        Some(e)
                    }
                }
            })
            .collect()
    })
}
