//! Batch loading: decode + orient + resize many files in parallel on the
//! shared pool. Every item succeeds or fails on its own.

use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::image::decode::{check_memory, decode_file, guarded, probe_file, LoadOptions, ProbeLimits, RgbImage};
use crate::image::recycle::{F32_BATCHES, U8_BATCHES};
use crate::image::resize::{resize, resize_into};
use crate::image::safe_open::Root;
use crate::pool::pool;
use crate::pool::{available_memory, machine_memory};

/// Header-only sizes `(height, width)` of many files, each relative to `root`
/// (opened beneath it) when given.
pub fn probe_many(
    root: Option<&Root>,
    paths: &[PathBuf],
    num_threads: Option<usize>,
    limits: &ProbeLimits,
) -> Vec<Result<(u32, u32)>> {
    pool(num_threads).install(|| paths.par_iter().map(|p| probe_file(root, p, limits)).collect())
}

/// What kind of failure a probe had: the `kinds` column of [`probe_columns`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ProbeKind {
    Ok = 0,
    /// Refused by the containment rule (absolute, `..`, out of the root).
    UnsafePath = 1,
    /// Unreadable (an I/O error other than a missing file).
    Unreadable = 2,
    /// A FIFO, socket, device or directory.
    NotRegular = 3,
    /// Not an image, truncated, too large, corrupt, or a caught panic.
    BadImage = 4,
    /// No such file (or a path component is not a directory).
    Missing = 5,
}

impl ProbeKind {
    /// Names in code order (index = code).
    pub const NAMES: [&'static str; 6] = ["ok", "unsafe_path", "unreadable", "not_regular", "bad_image", "missing"];
    /// Every kind, in code order.
    pub const ALL: [ProbeKind; 6] = [
        ProbeKind::Ok,
        ProbeKind::UnsafePath,
        ProbeKind::Unreadable,
        ProbeKind::NotRegular,
        ProbeKind::BadImage,
        ProbeKind::Missing,
    ];

    pub fn of(e: &Error) -> ProbeKind {
        match e {
            Error::UnsafePath { .. } => ProbeKind::UnsafePath,
            Error::Io { source, .. }
                if matches!(source.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory) =>
            {
                ProbeKind::Missing
            }
            Error::Io { .. } => ProbeKind::Unreadable,
            Error::NotRegular { .. } => ProbeKind::NotRegular,
            _ => ProbeKind::BadImage,
        }
    }
}

/// Probe results as columns: heights, widths (0 where failed), kinds, and
/// each failure's reason.
pub struct ProbeColumns {
    pub heights: Vec<i64>,
    pub widths: Vec<i64>,
    pub kinds: Vec<u8>,
    pub errors: Vec<Option<String>>,
}

/// [`probe_many`] as columns (for a million images: no per-item objects
/// until the error strings, which exist only for failures).
pub fn probe_columns(
    root: Option<&Root>,
    paths: &[PathBuf],
    num_threads: Option<usize>,
    limits: &ProbeLimits,
) -> ProbeColumns {
    ProbeColumns::of(probe_many(root, paths, num_threads, limits))
}

impl ProbeColumns {
    /// Probe outcomes as columns.
    pub fn of(results: impl IntoIterator<Item = Result<(u32, u32)>>) -> ProbeColumns {
        let mut cols = ProbeColumns { heights: Vec::new(), widths: Vec::new(), kinds: Vec::new(), errors: Vec::new() };
        for r in results {
            let ((h, w), kind, error) = match r {
                Ok(hw) => (hw, ProbeKind::Ok, None),
                Err(e) => ((0, 0), ProbeKind::of(&e), Some(e.to_string())),
            };
            cols.heights.push(i64::from(h));
            cols.widths.push(i64::from(w));
            cols.kinds.push(kind as u8);
            cols.errors.push(error);
        }
        cols
    }

    /// `parts` (each the probes of a run of ids, from its first id) one after the other.
    pub fn concat(mut parts: Vec<(usize, ProbeColumns)>) -> ProbeColumns {
        parts.sort_by_key(|(start, _)| *start);
        let mut out = ProbeColumns { heights: Vec::new(), widths: Vec::new(), kinds: Vec::new(), errors: Vec::new() };
        for (_, p) in parts {
            out.heights.extend(p.heights);
            out.widths.extend(p.widths);
            out.kinds.extend(p.kinds);
            out.errors.extend(p.errors);
        }
        out
    }
}

/// How messages name `path`.
fn shown(root: Option<&Root>, path: &Path) -> String {
    root.map_or_else(|| path.display().to_string(), |r| r.shown(path))
}

/// Decode one file, resized to `size = (h, w)` when given.
pub fn load_one(
    root: Option<&Root>,
    path: &Path,
    size: Option<(usize, usize)>,
    opts: &LoadOptions,
) -> Result<RgbImage> {
    let img = decode_file(root, path, opts)?;
    match size {
        // The decoder is guarded inside decode_file; guard the resize too, so
        // that no panic can unwind through the pool into Python.
        Some((h, w)) => guarded(|| {
            check_memory((h as u64).saturating_mul(w as u64).saturating_mul(3))?;
            resize(&img, h, w)
        })
        .map_err(|f| Error::image(shown(root, path), f)),
        None => Ok(img),
    }
}

/// Decode each file and resize it to `sizes[i]` (or keep its size).
pub fn load_many(
    root: Option<&Root>,
    paths: &[PathBuf],
    sizes: Option<&[(usize, usize)]>,
    num_threads: Option<usize>,
    opts: &LoadOptions,
) -> Vec<Result<RgbImage>> {
    pool(num_threads)
        .install(|| paths.par_iter().enumerate().map(|(i, p)| load_one(root, p, sizes.map(|s| s[i]), opts)).collect())
}

/// The elements of a batch of `n` images of `size = (h, w)`, 3 elements a
/// pixel of `elem_bytes` bytes each, or [`Error::OutOfMemory`] when the
/// machine cannot hold it (checked before any allocation: a failed
/// allocation would abort the process).
pub fn batch_len(n: usize, (h, w): (usize, usize), elem_bytes: usize, dtype: &str) -> Result<usize> {
    let elems = (n as u128) * (h as u128) * (w as u128) * 3;
    let bytes = elems * elem_bytes as u128;
    let memory = machine_memory();
    if bytes > isize::MAX as u128 || bytes > u128::from(memory) {
        return Err(Error::OutOfMemory { what: batch_name(n, (h, w), dtype)(), bytes, available: memory });
    }
    Ok(elems as usize)
}

fn batch_name(n: usize, (h, w): (usize, usize), dtype: &str) -> impl FnOnce() -> String + '_ {
    move || format!("a batch of {n} images of {h}x{w} ({dtype})")
}

/// Refuse a new allocation of `bytes` that the memory available now
/// ([`available_memory`]) cannot hold: the kernel would grant it, then the
/// first writes (a decoded image, or the zeros of a failed slot) would push
/// the machine into swap or the OOM killer.
fn check_available(bytes: u128, what: impl FnOnce() -> String) -> Result<()> {
    let available = available_memory();
    if bytes > u128::from(available) {
        return Err(Error::MemoryUnavailable { what: what(), bytes, available });
    }
    Ok(())
}

/// `len` zero bytes, lazily zeroed by the kernel (calloc), or an error when
/// the allocation fails.
fn try_zeroed(len: usize, what: impl FnOnce() -> String) -> Result<Vec<u8>> {
    if len == 0 {
        return Ok(Vec::new());
    }
    let Ok(layout) = std::alloc::Layout::array::<u8>(len) else {
        return Err(Error::OutOfMemory { what: what(), bytes: len as u128, available: machine_memory() });
    };
    // SAFETY: the layout has a non-zero size.
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
    if ptr.is_null() {
        return Err(Error::OutOfMemory { what: what(), bytes: len as u128, available: machine_memory() });
    }
    // SAFETY: `ptr` was allocated by the global allocator with the layout of
    // `len` u8s, and all `len` bytes are initialised (zero).
    Ok(unsafe { Vec::from_raw_parts(ptr, len, len) })
}

/// Decode and resize every file to `(height, width)` into a contiguous
/// `(n, height, width, 3)` batch: the first `n * height * width * 3` bytes of
/// the returned buffer, a kept one ([`U8_BATCHES`], possibly longer) when
/// one is large enough, else a new one. Failed slots are zero-filled; the
/// returned vector holds each item's error, if any.
///
/// A batch larger than the machine's memory, or whose allocation fails, is
/// [`Error::OutOfMemory`], and a new buffer larger than the memory available
/// now [`Error::MemoryUnavailable`] (before any file is read), never an abort.
pub fn load_batch(
    root: Option<&Root>,
    paths: &[PathBuf],
    size: (usize, usize),
    num_threads: Option<usize>,
    opts: &LoadOptions,
) -> Result<(Vec<u8>, Vec<Option<Error>>)> {
    let n = paths.len();
    let len = batch_len(n, size, 1, "uint8")?;
    let mut buffer = match U8_BATCHES.take(len) {
        Some(buffer) => buffer,
        None => {
            check_available(len as u128, batch_name(n, size, "uint8"))?;
            try_zeroed(len, batch_name(n, size, "uint8"))?
        }
    };
    let errors = load_batch_into(root, paths, size, num_threads, opts, &mut buffer[..len]);
    Ok((buffer, errors))
}

/// Decode and resize every file to `(height, width)` straight into `out`, a
/// contiguous `(n, height, width, 3)` buffer. Failed slots are zero-filled;
/// the returned vector holds each item's error, if any.
pub fn load_batch_into(
    root: Option<&Root>,
    paths: &[PathBuf],
    size: (usize, usize),
    num_threads: Option<usize>,
    opts: &LoadOptions,
    out: &mut [u8],
) -> Vec<Option<Error>> {
    let (h, w) = size;
    fill_slots(paths, h * w * 3, num_threads, out, 0, |path, slot| {
        let img = decode_file(root, path, opts)?;
        guarded(|| resize_into(&img, h, w, slot)).map_err(|f| Error::image(shown(root, path), f))
    })
}

/// The normalization of one 8-bit value, `v / 127.5 - 1` in f32 arithmetic:
/// each step rounds as `np.float32(v) / np.float32(127.5) - np.float32(1)`
/// (and torch's `x.float() / 127.5 - 1` on the CPU) does, so the values are
/// bit-identical to that normalization. 0 -> -1.0, 255 -> 1.0. (Rust never
/// fuses the two steps into an FMA, nor turns the division into a
/// multiplication by an inexact reciprocal.)
#[inline(always)]
fn normalize(v: u8) -> f32 {
    f32::from(v) / 127.5 - 1.0
}

thread_local! {
    // The resized u8 image of the item a worker thread is converting; kept
    // between items so that no item allocates (and page-faults) a new one.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Decode and resize every file to `(height, width)` into a contiguous
/// `(n, 3, height, width)` f32 batch (the first `n * 3 * height * width`
/// elements of the returned buffer: a kept one, [`F32_BATCHES`], possibly
/// longer, when one is large enough, else a new one), normalized to [-1, 1] (see
/// [`normalize`]): the tensor a VAE encoder takes. Each item is resized into
/// a per-thread u8 scratch and converted from there, so the batch never
/// exists as u8. Failed slots are zero-filled (0.0, i.e. mid-grey, not black:
/// drop them using the errors); the returned vector holds each item's error,
/// if any.
///
/// The buffer is not zeroed first: every element is written exactly once
/// (memset-ing tens of MB only to overwrite them cost ~6 % of the work).
/// A batch the machine cannot hold is [`Error::OutOfMemory`] (or
/// [`Error::MemoryUnavailable`]), as in [`load_batch`].
pub fn load_batch_normalized(
    root: Option<&Root>,
    paths: &[PathBuf],
    size: (usize, usize),
    num_threads: Option<usize>,
    opts: &LoadOptions,
) -> Result<(Vec<f32>, Vec<Option<Error>>)> {
    let n = paths.len();
    let len = batch_len(n, size, 4, "float32")?;
    if let Some(mut buffer) = F32_BATCHES.take(len) {
        let errors = load_batch_normalized_over(root, paths, size, num_threads, opts, &mut buffer[..len]);
        return Ok((buffer, errors));
    }
    check_available(len as u128 * 4, batch_name(n, size, "float32"))?;
    let mut buffer: Vec<f32> = Vec::new();
    buffer.try_reserve_exact(len).map_err(|_| Error::OutOfMemory {
        what: batch_name(n, size, "float32")(),
        bytes: len as u128 * 4,
        available: machine_memory(),
    })?;
    let spare = &mut buffer.spare_capacity_mut()[..len];
    let errors = load_batch_normalized_into(root, paths, size, num_threads, opts, spare);
    // SAFETY: load_batch_normalized_into returned, so fill_slots has written
    // every slot of `spare` (the item or zeros), i.e. all `len` elements.
    unsafe { buffer.set_len(len) };
    Ok((buffer, errors))
}

/// [`load_batch_normalized_into`] over an initialised buffer (a reused
/// batch, a caller's array).
pub fn load_batch_normalized_over(
    root: Option<&Root>,
    paths: &[PathBuf],
    size: (usize, usize),
    num_threads: Option<usize>,
    opts: &LoadOptions,
    out: &mut [f32],
) -> Vec<Option<Error>> {
    // SAFETY: f32 and MaybeUninit<f32> have the same layout, and the loader
    // writes only valid floats through the cast slice: `out` stays initialised.
    let slots = unsafe { &mut *(out as *mut [f32] as *mut [MaybeUninit<f32>]) };
    load_batch_normalized_into(root, paths, size, num_threads, opts, slots)
}

/// [`load_batch_normalized`] into a caller's buffer of `n * 3 * height *
/// width` elements, initialised or not: every element is written.
pub fn load_batch_normalized_into(
    root: Option<&Root>,
    paths: &[PathBuf],
    size: (usize, usize),
    num_threads: Option<usize>,
    opts: &LoadOptions,
    out: &mut [MaybeUninit<f32>],
) -> Vec<Option<Error>> {
    let (h, w) = size;
    fill_slots(paths, 3 * h * w, num_threads, out, MaybeUninit::new(0.0), |path, slot| {
        let img = decode_file(root, path, opts)?;
        guarded(|| {
            if img.height == h && img.width == w {
                write_normalized_chw(&img.data, slot);
                return Ok(());
            }
            // Taken out of the cell, not borrowed: a nested use on this thread
            // (none today) would get an empty vector instead of a borrow panic.
            let mut scratch = SCRATCH.take();
            scratch.resize(h * w * 3, 0);
            let resized = resize_into(&img, h, w, &mut scratch);
            if resized.is_ok() {
                write_normalized_chw(&scratch, slot);
            }
            SCRATCH.set(scratch);
            resized
        })
        .map_err(|f| Error::image(shown(root, path), f))
    })
}

/// Interleaved RGB `pixels` (`h * w * 3` bytes) to planar, normalized
/// `(3, h, w)` floats in `out`, every element of which is written.
fn write_normalized_chw(pixels: &[u8], out: &mut [MaybeUninit<f32>]) {
    assert_eq!(out.len(), pixels.len(), "output slot does not match the image");
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: this CPU has AVX2 (checked just above).
        return unsafe { write_normalized_chw_avx2(pixels, out) };
    }
    normalized_chw(pixels, out)
}

/// The same loop compiled for AVX2, which LLVM vectorises about 3x faster
/// than the baseline x86-64 build's SSE2 (0.4 vs 1.4 ms per megapixel).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn write_normalized_chw_avx2(pixels: &[u8], out: &mut [MaybeUninit<f32>]) {
    normalized_chw(pixels, out)
}

#[inline(always)]
fn normalized_chw(pixels: &[u8], out: &mut [MaybeUninit<f32>]) {
    let plane = pixels.len() / 3;
    let (red, rest) = out.split_at_mut(plane);
    let (green, blue) = rest.split_at_mut(plane);
    // Every index of the three planes is reached: 3 * plane == out.len() (asserted by the caller).
    for (((px, r), g), b) in pixels.chunks_exact(3).zip(red).zip(green).zip(blue) {
        r.write(normalize(px[0]));
        g.write(normalize(px[1]));
        b.write(normalize(px[2]));
    }
}

/// Run `load(path, slot)` for every path on the pool, each into its own
/// `item`-long slot of `out`. A failed item's slot is filled with `zero` and
/// its error returned at its position. (`load` must write its whole slot when
/// it succeeds: `out` may start uninitialised.)
fn fill_slots<T: Copy + Send + Sync>(
    paths: &[PathBuf],
    item: usize,
    num_threads: Option<usize>,
    out: &mut [T],
    zero: T,
    load: impl Fn(&Path, &mut [T]) -> Result<()> + Sync,
) -> Vec<Option<Error>> {
    assert_eq!(out.len(), item * paths.len(), "batch buffer does not match n * item");
    if item == 0 {
        return paths.iter().map(|_| None).collect();
    }
    pool(num_threads).install(|| {
        out.par_chunks_mut(item)
            .zip(paths.par_iter())
            .map(|(slot, path)| match load(path, slot) {
                Ok(()) => None,
                Err(e) => {
                    slot.fill(zero);
                    Some(e)
                }
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every byte value in every channel and lane position, through the
    /// conversion this CPU uses (AVX2 or not) and the portable loop:
    /// bit-identical to the f32 formula.
    #[test]
    fn normalization_is_the_float32_formula() {
        let expected = |v: u8| f32::from(v) / 127.5f32 - 1.0f32;
        type Convert = fn(&[u8], &mut [MaybeUninit<f32>]);
        let convert: [Convert; 2] = [write_normalized_chw, normalized_chw];
        for (shift, f) in (0..3).flat_map(|s| convert.map(|f| (s, f))) {
            let pixels: Vec<u8> = (0..=255u8).cycle().skip(shift).take(3 * 256 + 3 * 37).collect();
            let out = converted(f, &pixels);
            let plane = pixels.len() / 3;
            for (i, &v) in pixels.iter().enumerate() {
                let got = out[(i % 3) * plane + i / 3];
                assert_eq!(got.to_bits(), expected(v).to_bits(), "value {v} at {i}");
            }
        }
        assert_eq!((normalize(0), normalize(255)), (-1.0, 1.0));
    }

    /// `convert` run on an output prefilled with 9.0 (seen if an element were skipped).
    fn converted(convert: fn(&[u8], &mut [MaybeUninit<f32>]), pixels: &[u8]) -> Vec<f32> {
        let mut out = vec![MaybeUninit::new(9.0f32); pixels.len()];
        convert(pixels, &mut out);
        // SAFETY: every element was initialised by `vec!`, and possibly overwritten.
        out.into_iter().map(|v| unsafe { v.assume_init() }).collect()
    }

    #[test]
    fn chw_planes_come_from_the_right_channels() {
        let pixels = [0u8, 128, 255, 10, 20, 30];
        let out = converted(write_normalized_chw, &pixels);
        let n = normalize;
        assert_eq!(out, [n(0), n(10), n(128), n(20), n(255), n(30)]);
    }

    fn write_png(path: &Path, w: u32, h: u32) -> Vec<u8> {
        let data: Vec<u8> = (0..w * h * 3).map(|i| (i * 7 % 251) as u8).collect();
        image::save_buffer(path, &data, w, h, image::ExtendedColorType::Rgb8).unwrap();
        data
    }

    #[test]
    fn normalized_batch_matches_the_u8_batch() {
        let dir = std::env::temp_dir().join(format!("hpd-load-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let same = dir.join("same.png");
        let other = dir.join("other.png");
        let bad = dir.join("bad.png");
        write_png(&same, 24, 16);
        write_png(&other, 40, 30);
        std::fs::write(&bad, b"not an image").unwrap();
        let paths = vec![same, bad, other];
        let (h, w) = (16, 24);
        let opts = LoadOptions::default();
        let mut u8s = vec![0u8; paths.len() * h * w * 3];
        let e1 = load_batch_into(None, &paths, (h, w), Some(2), &opts, &mut u8s);
        let (floats, e2) = load_batch_normalized(None, &paths, (h, w), Some(2), &opts).unwrap();
        assert!(floats.len() >= paths.len() * 3 * h * w);
        let (u8s_again, e3) = load_batch(None, &paths, (h, w), Some(2), &opts).unwrap();
        assert_eq!(&u8s_again[..u8s.len()], &u8s[..]);
        U8_BATCHES.give(u8s_again);
        let (u8s_reused, e4) = load_batch(None, &paths, (h, w), Some(2), &opts).unwrap();
        assert_eq!(&u8s_reused[..u8s.len()], &u8s[..], "the same batch in a reused buffer");
        std::fs::remove_dir_all(&dir).unwrap();
        let errors = |e: &[Option<Error>]| e.iter().map(|e| e.as_ref().map(|e| e.to_string())).collect::<Vec<_>>();
        assert_eq!(errors(&e1), errors(&e2));
        assert_eq!(errors(&e1), errors(&e3));
        assert_eq!(errors(&e1), errors(&e4));
        assert!(e2[0].is_none() && e2[1].is_some() && e2[2].is_none());
        let plane = h * w;
        for i in [0, 2] {
            for c in 0..3 {
                for p in 0..plane {
                    let v = u8s[(i * plane + p) * 3 + c];
                    assert_eq!(floats[(i * 3 + c) * plane + p].to_bits(), normalize(v).to_bits());
                }
            }
        }
        assert!(floats[3 * plane..6 * plane].iter().all(|&x| x == 0.0), "a failed slot is zero-filled");
    }

    #[test]
    fn a_batch_larger_than_the_machine_is_an_error_not_an_abort() {
        let paths = vec![PathBuf::from("/nonexistent/a.png"); 3];
        let opts = LoadOptions { max_pixels: u64::MAX, ..LoadOptions::default() };
        let side = 1 << 20; // 3 x 2^40 pixels: more than any machine's memory
        let err = load_batch(None, &paths, (side, side), Some(1), &opts).unwrap_err();
        assert!(matches!(err, Error::OutOfMemory { .. }), "{err:?}");
        assert!(err.to_string().contains("a batch of 3 images of 1048576x1048576 (uint8)"), "{err}");
        let err = load_batch_normalized(None, &paths, (side, side), Some(1), &opts).unwrap_err();
        assert!(err.to_string().contains(&format!("needs {} bytes", 3u128 * 3 * 4 * (1 << 40))), "{err}");
        // Past the address space too.
        let err = load_batch(None, &paths, (usize::MAX / 4, 8), Some(1), &opts).unwrap_err();
        assert!(matches!(err, Error::OutOfMemory { .. }), "{err:?}");
    }

    /// A batch the machine could hold (RAM and swap) but not now: refused
    /// before anything is allocated, never zero-filled into the OOM killer.
    #[test]
    fn a_batch_above_the_memory_available_now_is_refused() {
        let total = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|t| {
                t.lines().find(|l| l.starts_with("MemTotal:"))?.split_whitespace().nth(1)?.parse::<u64>().ok()
            })
            .map(|kb| kb * 1024);
        let (Some(total), available) = (total, available_memory()) else { return };
        // Just under all the RAM: within the machine (RAM and swap), above what is available now.
        let bytes = total.min(machine_memory()) - (1 << 20);
        if available >= bytes {
            return; // nothing to test where the whole RAM is free (never on a running system)
        }
        let opts = LoadOptions { max_pixels: u64::MAX, ..LoadOptions::default() };
        let paths = vec![PathBuf::from("/nonexistent/a.png")];
        let width = (bytes / 3) as usize;
        let err = load_batch(None, &paths, (1, width), Some(1), &opts).unwrap_err();
        assert!(matches!(err, Error::MemoryUnavailable { .. }), "{err:?}");
        assert!(err.to_string().contains(&format!("a batch of 1 images of 1x{width} (uint8)")), "{err}");
        let err = load_batch_normalized(None, &paths, (1, width / 4), Some(1), &opts).unwrap_err();
        assert!(matches!(err, Error::MemoryUnavailable { .. }), "{err:?}");
    }
}
