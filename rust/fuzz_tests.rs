//! Fuzz-style property tests (issue #16): random and mutated bytes through
//! the image probe and decoders, the `.npy` writer and float repr, and the
//! Parquet footer reader. No panic may escape, no case may hang, and memory
//! stays bounded by the limits each reader is given.
//!
//! `cargo test` runs a few thousand cases in all (seconds); set
//! `HPD_FUZZ_CASES=N` to run N cases per property instead (see
//! `benches/fuzz_long.sh` for a long run).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use image::codecs::bmp::BmpEncoder;
use image::codecs::gif::GifEncoder;
use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::codecs::webp::WebPEncoder;
use image::{ExtendedColorType, ImageEncoder};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use crate::error::{Error, ImageFailure};
use crate::image::decode::{decode_bytes, probe_file, LoadOptions, ProbeLimits};
use crate::image::safe_open::Root;
use crate::parts::footer::read_layout;
use crate::parts::npy::{npy_bytes, py_float_repr};

/// Cases per property: `HPD_FUZZ_CASES` or the default given.
fn cases(default: u32) -> u32 {
    std::env::var("HPD_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn runner(default: u32) -> TestRunner {
    TestRunner::new(Config { cases: cases(default), failure_persistence: None, ..Config::default() })
}

/// The longest one case may take before it counts as a hang.
const SLOW: Duration = Duration::from_secs(10);

/// Limits small enough that no input can make a decoder allocate much.
fn small_limits() -> LoadOptions {
    LoadOptions { max_pixels: 1 << 20, max_file_bytes: Some(1 << 20), ..LoadOptions::default() }
}

fn pixels(w: u32, h: u32, channels: u32) -> Vec<u8> {
    (0..w * h * channels).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect()
}

/// Small real encodings of every format we read.
fn seeds() -> Vec<Vec<u8>> {
    let (w, h) = (24, 16);
    let rgb = pixels(w, h, 3);
    let rgba = pixels(w, h, 4);
    let mut out = Vec::new();
    let mut jpeg = Vec::new();
    JpegEncoder::new_with_quality(&mut jpeg, 85).write_image(&rgb, w, h, ExtendedColorType::Rgb8).unwrap();
    out.push(jpeg);
    let mut png = Vec::new();
    PngEncoder::new(&mut png).write_image(&rgba, w, h, ExtendedColorType::Rgba8).unwrap();
    out.push(png);
    let mut webp = Vec::new();
    WebPEncoder::new_lossless(&mut webp).write_image(&rgba, w, h, ExtendedColorType::Rgba8).unwrap();
    out.push(webp);
    let mut gif = Vec::new();
    GifEncoder::new(&mut gif).encode(&rgba, w, h, ExtendedColorType::Rgba8).unwrap();
    out.push(gif);
    let mut bmp = Vec::new();
    BmpEncoder::new(&mut bmp).write_image(&rgb, w, h, ExtendedColorType::Rgb8).unwrap();
    out.push(bmp);
    for s in &out {
        decode_bytes(s, &small_limits()).expect("every seed decodes");
    }
    out
}

/// An edit of a byte string: overwrite, insert, delete, or cut the tail.
#[derive(Debug, Clone)]
enum Edit {
    Set(usize, u8),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    Cut(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        4 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Set(i, b)),
        1 => (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..16)).prop_map(|(i, v)| Edit::Insert(i, v)),
        1 => (any::<usize>(), 1..64usize).prop_map(|(i, n)| Edit::Delete(i, n)),
        1 => any::<usize>().prop_map(Edit::Cut),
    ]
}

fn apply(mut bytes: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        let n = bytes.len().max(1);
        match e {
            Edit::Set(i, b) if !bytes.is_empty() => bytes[i % n] = *b,
            Edit::Insert(i, v) => {
                let at = i % (bytes.len() + 1);
                bytes.splice(at..at, v.iter().copied());
            }
            Edit::Delete(i, k) if !bytes.is_empty() => {
                let at = i % n;
                let end = (at + k).min(bytes.len());
                bytes.drain(at..end);
            }
            Edit::Cut(i) => bytes.truncate(i % (bytes.len() + 1)),
            _ => {}
        }
    }
    bytes
}

/// A scratch data root for this test process.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("hpd-fuzz-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Decode and probe `bytes` (the probe through a file beneath a root, as the
/// pipeline opens them): each returns, within [`SLOW`], and the two agree
/// on the size whenever both succeed.
fn check_image(bytes: &[u8], root: &Root, dir: &Path) -> Result<(), TestCaseError> {
    let start = Instant::now();
    let decoded = decode_bytes(bytes, &small_limits());
    std::fs::write(dir.join("case.img"), bytes).unwrap();
    let limits = ProbeLimits { max_pixels: Some(1 << 20), max_file_bytes: 1 << 20 };
    let probed = probe_file(Some(root), Path::new("case.img"), &limits);
    prop_assert!(start.elapsed() < SLOW, "a case took {:?}", start.elapsed());
    if let Err(ImageFailure::Panic(msg)) = &decoded {
        // Caught and reported as this item's error: allowed, but worth seeing.
        eprintln!("decoder panic caught: {msg}");
    }
    match (&decoded, &probed) {
        (Ok(img), Ok((h, w))) => {
            prop_assert_eq!(img.data.len(), img.width * img.height * 3);
            // Both read the same header, so the same displayed size.
            prop_assert_eq!((img.height as u32, img.width as u32), (*h, *w));
        }
        (Ok(img), Err(e)) => prop_assert!(false, "decoded {}x{} but the probe failed: {e}", img.width, img.height),
        (_, Err(Error::Image { .. } | Error::Io { .. })) | (_, Ok(_)) => {}
        (_, Err(e)) => prop_assert!(false, "unexpected probe error kind: {e:?}"),
    }
    Ok(())
}

#[test]
fn mutated_images_never_panic_or_hang() {
    let seeds = seeds();
    let scratch = Scratch::new("img");
    let root = Root::open(&scratch.0).unwrap();
    let strategy = (0..seeds.len(), proptest::collection::vec(edit(), 1..6));
    runner(1500)
        .run(&strategy, |(seed, edits)| check_image(&apply(seeds[seed].clone(), &edits), &root, &scratch.0))
        .unwrap();
}

#[test]
fn random_bytes_behind_real_signatures_never_panic() {
    let signatures: Vec<Vec<u8>> = seeds().into_iter().map(|s| s[..12.min(s.len())].to_vec()).collect();
    let scratch = Scratch::new("rand");
    let root = Root::open(&scratch.0).unwrap();
    let strategy = (0..signatures.len() + 1, proptest::collection::vec(any::<u8>(), 0..2048));
    runner(600)
        .run(&strategy, |(sig, tail)| {
            let mut bytes = signatures.get(sig).cloned().unwrap_or_default();
            bytes.extend_from_slice(&tail);
            check_image(&bytes, &root, &scratch.0)
        })
        .unwrap();
}

/// The probe's JPEG marker walk against zune-jpeg's header pass on damaged
/// headers: it never panics; where it reads a header, zune-jpeg reads the
/// same (size and orientation); where it asks for more bytes, zune-jpeg
/// fails on those given too. (Where it is unsure, zune-jpeg decides.)
#[test]
fn the_jpeg_marker_walk_never_accepts_what_zune_jpeg_refuses() {
    use crate::image::decode::tests::{jpeg_with, marker_at, zune_says};
    use crate::image::decode::{jpeg_walk, Walk};
    // Real headers (plain, grey, EXIF orientations, an ICC profile, SOF2,
    // DRI) and a few bytes of scan: the walk and the header pass read no further.
    let mut seeds = Vec::new();
    for (k, bytes) in [
        jpeg_with(24, 16, 3, None, 0),
        jpeg_with(24, 16, 1, Some(6), 0),
        jpeg_with(40, 8, 3, Some(3), 0),
        jpeg_with(8, 40, 3, Some(8), 700),
    ]
    .into_iter()
    .enumerate()
    {
        let sos = marker_at(&bytes, 0xDA);
        let mut head = bytes[..sos + 30].to_vec();
        if k == 2 {
            head[marker_at(&bytes, 0xC0) + 1] = 0xC2;
        }
        if k == 3 {
            head.splice(sos..sos, [0xFF, 0xDD, 0, 4, 0, 2]);
        }
        seeds.push(head);
    }
    // Damage that looks like JPEG structure more often than plain random bytes would.
    let byte = prop_oneof![any::<u8>(), Just(0xFF), Just(0x00), 0xC0..=0xFEu8, 0..=20u8];
    let damage = prop_oneof![
        4 => (any::<usize>(), byte.clone()).prop_map(|(i, b)| Edit::Set(i, b)),
        1 => (any::<usize>(), proptest::collection::vec(byte, 1..6)).prop_map(|(i, v)| Edit::Insert(i, v)),
        1 => (any::<usize>(), 1..8usize).prop_map(|(i, n)| Edit::Delete(i, n)),
        1 => any::<usize>().prop_map(Edit::Cut),
    ];
    let strategy = (0..seeds.len(), proptest::collection::vec(damage, 1..4));
    let read = std::cell::Cell::new(0u32);
    runner(3000)
        .run(&strategy, |(seed, edits)| {
            let bytes = apply(seeds[seed].clone(), &edits);
            match jpeg_walk(&bytes) {
                walked @ Walk::Header { .. } => {
                    read.set(read.get() + 1);
                    prop_assert_eq!(zune_says(&bytes), Some(walked));
                }
                Walk::NeedMore(need) => {
                    prop_assert!(need > bytes.len(), "asks for {} of {} bytes", need, bytes.len());
                    prop_assert_eq!(zune_says(&bytes), None, "zune-jpeg reads what the walk calls short");
                }
                Walk::Unsure => {}
            }
            Ok(())
        })
        .unwrap();
    // Most single edits miss what matters: the walk still reads those headers.
    assert!(read.get() >= cases(3000) / 10, "only {} headers read", read.get());
}

#[test]
fn npy_bytes_and_float_repr_hold_for_any_input() {
    let shape = proptest::collection::vec(0..6usize, 0..5);
    let descr = prop_oneof![Just("<f4"), Just("<f2"), Just("<i8"), Just("|u1")];
    runner(600)
        .run(&(descr, shape, proptest::collection::vec(any::<u8>(), 0..256)), |(descr, shape, data)| {
            let bytes = npy_bytes(descr, &shape, &data);
            prop_assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
            let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
            prop_assert_eq!((10 + hlen) % 64, 0);
            prop_assert_eq!(bytes.len(), 10 + hlen + data.len());
            let header = std::str::from_utf8(&bytes[10..10 + hlen]).unwrap();
            prop_assert!(header.ends_with('\n'));
            let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
            let shape_text =
                if shape.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
            prop_assert!(header.contains(&format!("'shape': {shape_text}")), "{}", header);
            Ok(())
        })
        .unwrap();
    runner(3000)
        .run(&any::<f64>(), |x| {
            let repr = py_float_repr(x);
            if x.is_nan() {
                prop_assert_eq!(repr, "nan");
            } else {
                let back: f64 = repr.parse().map_err(|e| TestCaseError::fail(format!("{repr}: {e}")))?;
                prop_assert_eq!(back.to_bits(), x.to_bits(), "{} -> {}", x, repr);
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn damaged_parquet_footers_are_errors_not_panics() {
    use crate::parts::writer::tests::row;
    use crate::parts::writer::{PartWriter, WriterOptions};
    let scratch = Scratch::new("footer");
    let good = scratch.0.join("good.parquet");
    let opts = WriterOptions { row_group_size: 3, ..WriterOptions::default() };
    let writer = PartWriter::create(&good, opts).unwrap();
    writer.submit((0..7).map(row).collect(), || Ok(())).unwrap();
    writer.close().unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let expected = read_layout(&good).unwrap();
    let case = scratch.0.join("case.parquet");
    // Edits land in the footer (the last 2 KiB) most of the time: that is what is parsed.
    let tail = bytes.len().saturating_sub(2048);
    let footer_edit = (tail..bytes.len(), any::<u8>()).prop_map(|(i, b)| Edit::Set(i, b));
    let strategy = proptest::collection::vec(prop_oneof![3 => footer_edit, 1 => edit()], 1..5);
    runner(400)
        .run(&strategy, |edits| {
            let damaged = apply(bytes.clone(), &edits);
            std::fs::write(&case, &damaged).unwrap();
            let start = Instant::now();
            let result = std::panic::catch_unwind(|| read_layout(&case));
            prop_assert!(start.elapsed() < SLOW);
            match result {
                Err(_) => prop_assert!(false, "read_layout panicked"),
                Ok(Ok(layout)) if damaged == bytes => prop_assert_eq!(layout, expected.clone()),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => prop_assert!(matches!(e, Error::Parquet { .. }), "{e:?}"),
            }
            Ok(())
        })
        .unwrap();
}
