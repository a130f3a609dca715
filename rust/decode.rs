//! Probe (header only) and decode images to 8-bit RGB, with EXIF orientation
//! applied, alpha handled as asked, and a pixel limit enforced from the header
//! before any pixel buffer is allocated.
//!
//! JPEG goes through `zune-jpeg` in strict mode (a truncated scan is an error,
//! not a grey bottom); PNG, WebP, GIF (first frame) and BMP through `image`.

use std::fs::File;
use std::io::{BufReader, Cursor, Read};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits};
use zune_core::bytestream::ZCursor;
use zune_core::colorspace::ColorSpace;
use zune_core::options::DecoderOptions;

use crate::error::{Error, ImageFailure, Result};

/// Default pixel limit: about 128 megapixels.
pub const DEFAULT_MAX_PIXELS: u64 = 128_000_000;

/// How much of a JPEG a probe reads first; the whole file only when the
/// headers do not fit (large ICC profiles or thumbnails).
const PROBE_PREFIX: usize = 128 * 1024;

/// What to do with an alpha channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlphaMode {
    /// Ignore it (the reference's behaviour: Pillow's `convert("RGB")`).
    Drop,
    /// Composite over white.
    White,
    /// Composite over black.
    Black,
}

impl std::str::FromStr for AlphaMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "drop" => Ok(Self::Drop),
            "white" => Ok(Self::White),
            "black" => Ok(Self::Black),
            other => Err(Error::InvalidArgument(format!(
                "alpha must be 'drop', 'white' or 'black', not '{other}'"
            ))),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    pub alpha: AlphaMode,
    pub max_pixels: u64,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self { alpha: AlphaMode::Drop, max_pixels: DEFAULT_MAX_PIXELS }
    }
}

/// A decoded image: tightly packed RGB, row-major, `height * width * 3` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

type Failure<T> = std::result::Result<T, ImageFailure>;

fn sniff(bytes: &[u8]) -> Failure<ImageFormat> {
    if bytes.is_empty() {
        return Err(ImageFailure::Empty);
    }
    match image::guess_format(bytes) {
        Ok(f @ (ImageFormat::Jpeg | ImageFormat::Png | ImageFormat::WebP | ImageFormat::Gif | ImageFormat::Bmp)) => Ok(f),
        Ok(other) => Err(ImageFailure::Unsupported(format!(
            "{other:?} (supported: JPEG, PNG, WebP, GIF, BMP)"
        ))),
        Err(_) => {
            let head: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
            Err(ImageFailure::NotAnImage(format!(
                "unrecognised signature, first bytes {}",
                head.join(" ")
            )))
        }
    }
}

fn check_pixels(width: u64, height: u64, limit: u64) -> Failure<()> {
    if width == 0 || height == 0 {
        return Err(ImageFailure::Corrupt(format!("header gives an empty size {width}x{height}")));
    }
    if width.saturating_mul(height) > limit {
        return Err(ImageFailure::TooLarge { width, height, limit });
    }
    Ok(())
}

fn swaps_axes(o: Orientation) -> bool {
    matches!(
        o,
        Orientation::Rotate90 | Orientation::Rotate270 | Orientation::Rotate90FlipH | Orientation::Rotate270FlipH
    )
}

fn jpeg_failure(e: zune_jpeg::errors::DecodeErrors) -> ImageFailure {
    let msg = e.to_string();
    let lower = msg.to_lowercase();
    if lower.contains("premature") || lower.contains("end of") || lower.contains("eof") || lower.contains("no more bytes") || lower.contains("exhausted") {
        ImageFailure::Truncated(format!("JPEG: {msg}"))
    } else {
        ImageFailure::Corrupt(format!("JPEG: {msg}"))
    }
}

fn image_failure(e: image::ImageError) -> ImageFailure {
    use image::ImageError as E;
    match e {
        E::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            ImageFailure::Truncated(format!("unexpected end of file: {io}"))
        }
        E::Unsupported(u) => ImageFailure::Unsupported(u.to_string()),
        E::Limits(l) => ImageFailure::Corrupt(format!("decoder limit: {l}")),
        other => {
            let msg = other.to_string();
            let lower = msg.to_lowercase();
            if lower.contains("eof") || lower.contains("end of") || lower.contains("truncated") || lower.contains("incomplete") {
                ImageFailure::Truncated(msg)
            } else {
                ImageFailure::Corrupt(msg)
            }
        }
    }
}

fn jpeg_decoder(bytes: &[u8], strict: bool) -> zune_jpeg::JpegDecoder<ZCursor<&[u8]>> {
    let options = DecoderOptions::default()
        .set_strict_mode(strict)
        .set_max_width(usize::MAX)
        .set_max_height(usize::MAX)
        .jpeg_set_out_colorspace(ColorSpace::RGB);
    zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(bytes), options)
}

/// (width, height, orientation) of a JPEG from its headers.
fn jpeg_header(bytes: &[u8]) -> Failure<(u64, u64, Orientation)> {
    let mut dec = jpeg_decoder(bytes, true);
    dec.decode_headers().map_err(jpeg_failure)?;
    let (w, h) = dec.dimensions().ok_or_else(|| ImageFailure::Corrupt("JPEG without a frame header".into()))?;
    let orientation = dec.exif().and_then(|e| Orientation::from_exif_chunk(e)).unwrap_or(Orientation::NoTransforms);
    Ok((w as u64, h as u64, orientation))
}

fn reader_limits(max_pixels: u64) -> Limits {
    let mut limits = Limits::no_limits();
    // 8 bytes a pixel covers RGBA16, plus room for the decoders' scratch.
    limits.max_alloc = Some(max_pixels.saturating_mul(8).saturating_add(64 << 20));
    limits
}

/// Header-only size of an image file as displayed: `(height, width)` with the
/// EXIF orientation applied. Reads no pixel data.
pub fn probe_path(path: &Path) -> Result<(u32, u32)> {
    let name = path.display().to_string();
    let mut file = File::open(path).map_err(|e| Error::io(&name, e))?;
    let mut prefix = Vec::with_capacity(PROBE_PREFIX);
    (&mut file).take(PROBE_PREFIX as u64).read_to_end(&mut prefix).map_err(|e| Error::io(&name, e))?;
    let result = guarded(|| -> Failure<(u64, u64, Orientation)> {
        let format = sniff(&prefix)?;
        if format == ImageFormat::Jpeg {
            match jpeg_header(&prefix) {
                Ok(h) => Ok(h),
                Err(_) if prefix.len() == PROBE_PREFIX => {
                    let whole = std::fs::read(path).map_err(|e| ImageFailure::Corrupt(e.to_string()))?;
                    jpeg_header(&whole)
                }
                Err(e) => Err(e),
            }
        } else {
            let reader = BufReader::new(File::open(path).map_err(|e| ImageFailure::Corrupt(e.to_string()))?);
            let mut reader = ImageReader::with_format(reader, format);
            reader.limits(reader_limits(u64::MAX / 16));
            let mut dec = reader.into_decoder().map_err(image_failure)?;
            let (w, h) = dec.dimensions();
            let orientation = dec.orientation().unwrap_or(Orientation::NoTransforms);
            Ok((w as u64, h as u64, orientation))
        }
    });
    let (w, h, orientation) = result.map_err(|f| Error::image(&name, f))?;
    if w == 0 || h == 0 {
        return Err(Error::image(&name, ImageFailure::Corrupt(format!("header gives an empty size {w}x{h}"))));
    }
    let (w, h) = (w.min(u32::MAX as u64) as u32, h.min(u32::MAX as u64) as u32);
    Ok(if swaps_axes(orientation) { (w, h) } else { (h, w) })
}

/// Run `f`, turning a panic into this item's error.
fn guarded<T>(f: impl FnOnce() -> Failure<T>) -> Failure<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
            Err(ImageFailure::Panic(msg))
        }
    }
}

fn composite(v: u8, a: u8, alpha: AlphaMode) -> u8 {
    let bg: u32 = match alpha {
        AlphaMode::Drop => return v,
        AlphaMode::White => 255,
        AlphaMode::Black => 0,
    };
    let (v, a) = (v as u32, a as u32);
    ((v * a + bg * (255 - a) + 127) / 255) as u8
}

/// 8-bit interleaved samples with `channels` (1 = L, 2 = LA, 3 = RGB, 4 = RGBA)
/// to packed RGB.
fn samples_to_rgb(samples: Vec<u8>, channels: usize, alpha: AlphaMode) -> Vec<u8> {
    match channels {
        3 => samples,
        1 => samples.iter().flat_map(|&v| [v, v, v]).collect(),
        2 => samples
            .chunks_exact(2)
            .flat_map(|p| {
                let v = composite(p[0], p[1], alpha);
                [v, v, v]
            })
            .collect(),
        4 => samples
            .chunks_exact(4)
            .flat_map(|p| [composite(p[0], p[3], alpha), composite(p[1], p[3], alpha), composite(p[2], p[3], alpha)])
            .collect(),
        _ => unreachable!("channels is 1..=4"),
    }
}

/// Like Pillow, 16-bit samples keep their high byte.
fn high_bytes(v: &[u16]) -> Vec<u8> {
    v.iter().map(|&s| (s >> 8) as u8).collect()
}

fn dynamic_to_rgb(img: DynamicImage, alpha: AlphaMode) -> (usize, usize, Vec<u8>) {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let data = match img {
        DynamicImage::ImageRgb8(b) => b.into_raw(),
        DynamicImage::ImageRgba8(b) => samples_to_rgb(b.into_raw(), 4, alpha),
        DynamicImage::ImageLuma8(b) => samples_to_rgb(b.into_raw(), 1, alpha),
        DynamicImage::ImageLumaA8(b) => samples_to_rgb(b.into_raw(), 2, alpha),
        DynamicImage::ImageRgb16(b) => high_bytes(b.as_raw()),
        DynamicImage::ImageRgba16(b) => samples_to_rgb(high_bytes(b.as_raw()), 4, alpha),
        DynamicImage::ImageLuma16(b) => samples_to_rgb(high_bytes(b.as_raw()), 1, alpha),
        DynamicImage::ImageLumaA16(b) => samples_to_rgb(high_bytes(b.as_raw()), 2, alpha),
        other if other.color().has_alpha() => samples_to_rgb(other.to_rgba8().into_raw(), 4, alpha),
        other => other.to_rgb8().into_raw(),
    };
    (w, h, data)
}

fn orient(width: usize, height: usize, data: Vec<u8>, o: Orientation) -> RgbImage {
    if o == Orientation::NoTransforms {
        return RgbImage { width, height, data };
    }
    let buf = image::RgbImage::from_raw(width as u32, height as u32, data).expect("buffer matches its size");
    let mut img = DynamicImage::ImageRgb8(buf);
    img.apply_orientation(o);
    let (w, h) = (img.width() as usize, img.height() as usize);
    RgbImage { width: w, height: h, data: img.into_rgb8().into_raw() }
}

fn decode_jpeg(bytes: &[u8], opts: &LoadOptions) -> Failure<RgbImage> {
    let (w, h, orientation) = jpeg_header(bytes)?;
    check_pixels(w, h, opts.max_pixels)?;
    let mut dec = jpeg_decoder(bytes, true);
    let data = dec.decode().map_err(jpeg_failure)?;
    let (w, h) = (w as usize, h as usize);
    let data = match data.len() {
        n if n == w * h * 3 => data,
        n if n == w * h => samples_to_rgb(data, 1, opts.alpha),
        n => return Err(ImageFailure::Corrupt(format!("decoder returned {n} bytes for a {w}x{h} image"))),
    };
    Ok(orient(w, h, data, orientation))
}

fn decode_other(bytes: &[u8], format: ImageFormat, opts: &LoadOptions) -> Failure<RgbImage> {
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    reader.limits(reader_limits(opts.max_pixels));
    let mut dec = reader.into_decoder().map_err(image_failure)?;
    let (w, h) = dec.dimensions();
    check_pixels(w as u64, h as u64, opts.max_pixels)?;
    let orientation = dec.orientation().unwrap_or(Orientation::NoTransforms);
    let img = DynamicImage::from_decoder(dec).map_err(image_failure)?;
    let (w, h, data) = dynamic_to_rgb(img, opts.alpha);
    Ok(orient(w, h, data, orientation))
}

/// Decode an in-memory image file to RGB8 with EXIF orientation applied.
pub fn decode_bytes(bytes: &[u8], opts: &LoadOptions) -> Failure<RgbImage> {
    guarded(|| {
        let format = sniff(bytes)?;
        if format == ImageFormat::Jpeg {
            decode_jpeg(bytes, opts)
        } else {
            decode_other(bytes, format, opts)
        }
    })
}

/// Decode a file to RGB8 (orientation applied).
pub fn decode_path(path: &Path, opts: &LoadOptions) -> Result<RgbImage> {
    let name = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| Error::io(&name, e))?;
    decode_bytes(&bytes, opts).map_err(|f| Error::image(name, f))
}
