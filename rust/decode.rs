//! Probe (header only) and decode images to 8-bit RGB, with EXIF orientation
//! applied, alpha handled as asked, and a pixel limit enforced from the header
//! before any pixel buffer is allocated.
//!
//! JPEG goes through `zune-jpeg` in strict mode (a truncated scan is an error,
//! not a grey bottom); PNG, WebP, GIF (first frame) and BMP through `image`.

use std::io::{BufReader, Cursor, Seek};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits};
use zune_core::bytestream::ZCursor;
use zune_core::colorspace::ColorSpace;
use zune_core::options::DecoderOptions;

use crate::error::{Error, ImageFailure, Result};
use crate::safe_open::{open_image, FileLimit, Root};

/// Default pixel limit: about 128 megapixels.
pub const DEFAULT_MAX_PIXELS: u64 = 128_000_000;

/// The largest image file read for a pixel limit, unless the caller says
/// otherwise: 8 bytes a pixel (an uncompressed 16-bit RGBA picture) plus
/// 16 MiB of metadata. No real image of allowed size is larger; a file that
/// is (3 GB of padding after a PNG, a symlink to a huge file) is refused
/// from its size without being read.
pub const fn default_max_file_bytes(max_pixels: u64) -> u64 {
    max_pixels.saturating_mul(8).saturating_add(16 << 20)
}

/// Memory this machine has (RAM plus swap), in bytes; `u64::MAX` where it
/// cannot be told. A single allocation larger than that cannot succeed (and
/// Rust's allocator aborts the process on failure), so such requests are
/// refused up front as errors.
pub fn machine_memory() -> u64 {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: sysinfo fills the struct it is given.
        let mut info: libc::sysinfo = unsafe { std::mem::zeroed() };
        if unsafe { libc::sysinfo(&mut info) } == 0 {
            let unit = u64::from(info.mem_unit.max(1));
            return (info.totalram as u64).saturating_add(info.totalswap as u64).saturating_mul(unit);
        }
    }
    u64::MAX
}

/// An error unless `bytes` can possibly be allocated on this machine.
pub(crate) fn check_memory(bytes: u64) -> Failure<()> {
    let available = machine_memory();
    if bytes > available {
        return Err(ImageFailure::OutOfMemory { bytes, available });
    }
    Ok(())
}

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
            other => Err(Error::InvalidArgument(format!("alpha must be 'drop', 'white' or 'black', not '{other}'"))),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    pub alpha: AlphaMode,
    pub max_pixels: u64,
    /// Files larger than this are refused unread; `None`:
    /// [`default_max_file_bytes`] of `max_pixels`.
    pub max_file_bytes: Option<u64>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self { alpha: AlphaMode::Drop, max_pixels: DEFAULT_MAX_PIXELS, max_file_bytes: None }
    }
}

impl LoadOptions {
    pub fn file_limit(&self) -> FileLimit {
        FileLimit(self.max_file_bytes.unwrap_or(default_max_file_bytes(self.max_pixels)))
    }
}

/// What a probe refuses.
#[derive(Debug, Clone, Copy)]
pub struct ProbeLimits {
    /// Images over this many pixels are errors (`None`: any size is reported).
    pub max_pixels: Option<u64>,
    /// Files over this many bytes are refused unread.
    pub max_file_bytes: u64,
}

impl Default for ProbeLimits {
    fn default() -> Self {
        Self { max_pixels: None, max_file_bytes: default_max_file_bytes(DEFAULT_MAX_PIXELS) }
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
        Ok(f @ (ImageFormat::Jpeg | ImageFormat::Png | ImageFormat::WebP | ImageFormat::Gif | ImageFormat::Bmp)) => {
            Ok(f)
        }
        Ok(other) => Err(ImageFailure::Unsupported(format!("{other:?} (supported: JPEG, PNG, WebP, GIF, BMP)"))),
        Err(_) => {
            let head: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
            Err(ImageFailure::NotAnImage(format!("unrecognised signature, first bytes {}", head.join(" "))))
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
    if lower.contains("premature")
        || lower.contains("end of")
        || lower.contains("eof")
        || lower.contains("no more bytes")
        || lower.contains("exhausted")
    {
        ImageFailure::Truncated(format!("JPEG: {msg}"))
    } else {
        ImageFailure::Corrupt(format!("JPEG: {msg}"))
    }
}

fn format_name(format: ImageFormat) -> &'static str {
    match format {
        ImageFormat::Jpeg => "JPEG",
        ImageFormat::Png => "PNG",
        ImageFormat::WebP => "WebP",
        ImageFormat::Gif => "GIF",
        ImageFormat::Bmp => "BMP",
        _ => "image",
    }
}

fn image_failure(format: ImageFormat, e: image::ImageError) -> ImageFailure {
    use image::ImageError as E;
    let name = format_name(format);
    match e {
        E::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            ImageFailure::Truncated(format!("{name}: the stream ends early"))
        }
        E::Unsupported(u) => ImageFailure::Unsupported(format!("{name}: {u}")),
        E::Limits(l) => ImageFailure::Corrupt(format!("{name}: decoder limit: {l}")),
        other => {
            let msg = other.to_string();
            let lower = msg.to_lowercase();
            if lower.contains("eof")
                || lower.contains("end of")
                || lower.contains("truncated")
                || lower.contains("incomplete")
            {
                ImageFailure::Truncated(msg)
            } else {
                ImageFailure::Corrupt(msg)
            }
        }
    }
}

/// A WebP file states its own length in the RIFF header; a shorter file was
/// cut off (image-webp reports that only as a corrupt bitstream).
fn check_riff_length(bytes: &[u8]) -> Failure<()> {
    if bytes.len() >= 8 {
        let declared = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) as u64 + 8;
        if (bytes.len() as u64) < declared {
            return Err(ImageFailure::Truncated(format!(
                "WebP: the RIFF header announces {declared} bytes, the file has {}",
                bytes.len()
            )));
        }
    }
    Ok(())
}

/// Whether the JPEG stream reaches its end-of-image marker (`FF D9`).
///
/// zune-jpeg, even in strict mode, pads a scan that stops a few bytes early
/// with zero bits and returns an image whose last blocks are wrong; Pillow
/// (the reference) refuses any JPEG without its EOI. So walk the markers:
/// skip each header segment by its length (an EXIF thumbnail's own markers
/// sit inside APP1 and are skipped with it), step through entropy-coded data
/// (where `FF` is only ever followed by `00`, a restart marker or a fill
/// byte), and stop at the first EOI. Bytes after it (appended MPF pictures,
/// padding) do not matter.
fn jpeg_has_eoi(bytes: &[u8]) -> bool {
    let n = bytes.len();
    let mut pos = 2; // after SOI
    loop {
        // Find the next marker: an FF (any number of fill FFs) then a code.
        while pos < n && bytes[pos] != 0xFF {
            pos += 1;
        }
        while pos < n && bytes[pos] == 0xFF {
            pos += 1;
        }
        if pos >= n {
            return false;
        }
        let code = bytes[pos];
        pos += 1;
        match code {
            0xD9 => return true,
            // Stuffed zero, TEM, restart markers: no length field.
            0x00 | 0x01 | 0xD0..=0xD7 => continue,
            _ => {
                if pos + 2 > n {
                    return false;
                }
                let len = u16::from_be_bytes([bytes[pos], bytes[pos + 1]]) as usize;
                if len < 2 {
                    return false;
                }
                pos += len;
                // After SOS (0xDA) comes entropy-coded data: the scan above
                // walks through it to the next real marker.
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

/// A JPEG header as read: size, EXIF orientation, and whether the headers
/// needed the lenient parser (stray bytes between segments).
struct JpegHeader {
    width: u64,
    height: u64,
    orientation: Orientation,
    lenient: bool,
}

/// Stray bytes between header segments: libjpeg (so Pillow) warns and goes on;
/// zune-jpeg's strict mode refuses the file. Files from some cameras and
/// editors have them, so they must not cost the image.
fn is_stray_header_bytes(e: &zune_jpeg::errors::DecodeErrors) -> bool {
    e.to_string().contains("Extra bytes between headers")
}

fn jpeg_header(bytes: &[u8]) -> Failure<JpegHeader> {
    let mut lenient = false;
    let mut dec = jpeg_decoder(bytes, true);
    if let Err(e) = dec.decode_headers() {
        if !is_stray_header_bytes(&e) {
            return Err(jpeg_failure(e));
        }
        lenient = true;
        dec = jpeg_decoder(bytes, false);
        dec.decode_headers().map_err(jpeg_failure)?;
    }
    let (w, h) = dec.dimensions().ok_or_else(|| ImageFailure::Corrupt("JPEG without a frame header".into()))?;
    let orientation = dec.exif().and_then(|e| Orientation::from_exif_chunk(e)).unwrap_or(Orientation::NoTransforms);
    Ok(JpegHeader { width: w as u64, height: h as u64, orientation, lenient })
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
    probe_file(None, path, &ProbeLimits::default())
}

/// [`probe_path`] of `path` beneath `root` (relative to it) or as it is, a
/// regular file of at most `limits.max_file_bytes` bytes; with
/// `limits.max_pixels`, a larger image is an error too.
pub fn probe_file(root: Option<&Root>, path: &Path, limits: &ProbeLimits) -> Result<(u32, u32)> {
    let mut opened = open_image(root, path, FileLimit(limits.max_file_bytes))?;
    let name = opened.shown.clone();
    let prefix = opened.read_prefix(PROBE_PREFIX)?;
    let format = sniff(&prefix).map_err(|f| Error::image(&name, f))?;
    let result = if format == ImageFormat::Jpeg {
        let header = |bytes: &[u8]| guarded(|| jpeg_header(bytes).map(|h| (h.width, h.height, h.orientation)));
        match header(&prefix) {
            // The headers do not fit in the prefix (large ICC profiles or thumbnails).
            Err(_) if prefix.len() == PROBE_PREFIX => header(&opened.read_all()?),
            other => other,
        }
    } else {
        let file = &mut opened.file;
        file.rewind().map_err(|e| Error::io(&name, e))?;
        guarded(|| {
            let mut reader = ImageReader::with_format(BufReader::new(file), format);
            reader.limits(reader_limits(u64::MAX / 16));
            let mut dec = reader.into_decoder().map_err(|e| image_failure(format, e))?;
            let (w, h) = dec.dimensions();
            let orientation = dec.orientation().unwrap_or(Orientation::NoTransforms);
            Ok((w as u64, h as u64, orientation))
        })
    };
    let (w, h, orientation) = result.map_err(|f| Error::image(&name, f))?;
    if w == 0 || h == 0 {
        return Err(Error::image(&name, ImageFailure::Corrupt(format!("header gives an empty size {w}x{h}"))));
    }
    if let Some(limit) = limits.max_pixels {
        check_pixels(w, h, limit).map_err(|f| Error::image(&name, f))?;
    }
    let (w, h) = (w.min(u32::MAX as u64) as u32, h.min(u32::MAX as u64) as u32);
    Ok(if swaps_axes(orientation) { (w, h) } else { (h, w) })
}

/// Run `f`, turning a panic into this item's error.
pub(crate) fn guarded<T>(f: impl FnOnce() -> Failure<T>) -> Failure<T> {
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
    let JpegHeader { width: w, height: h, orientation, lenient } = jpeg_header(bytes)?;
    check_pixels(w, h, opts.max_pixels)?;
    // The decoded picture, and a second copy when it is turned.
    check_memory(w.saturating_mul(h).saturating_mul(6))?;
    if !jpeg_has_eoi(bytes) {
        return Err(ImageFailure::Truncated(format!(
            "JPEG: the stream ends without its end-of-image marker (file is {} bytes)",
            bytes.len()
        )));
    }
    // Strict (corrupt scan data is an error) unless the headers already needed leniency.
    let mut dec = jpeg_decoder(bytes, !lenient);
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
    let mut dec = reader.into_decoder().map_err(|e| image_failure(format, e))?;
    let (w, h) = dec.dimensions();
    check_pixels(w as u64, h as u64, opts.max_pixels)?;
    // Up to 8 bytes a pixel decoded (16-bit RGBA), then the RGB copy.
    check_memory((w as u64).saturating_mul(h as u64).saturating_mul(11))?;
    if format == ImageFormat::WebP {
        check_riff_length(bytes)?;
    }
    let orientation = dec.orientation().unwrap_or(Orientation::NoTransforms);
    if format == ImageFormat::WebP {
        if let Some(data) = decode_webp_libwebp(bytes, w as usize, h as usize, opts.alpha)? {
            return Ok(orient(w as usize, h as usize, data, orientation));
        }
    }
    let img = DynamicImage::from_decoder(dec).map_err(|e| image_failure(format, e))?;
    let (w, h, data) = dynamic_to_rgb(img, opts.alpha);
    Ok(orient(w, h, data, orientation))
}

/// Still WebP pictures through libwebp (what Pillow uses; about 3x faster
/// than image-webp on lossy files). `None` for animations: image-webp
/// decodes their first frame.
fn decode_webp_libwebp(bytes: &[u8], w: usize, h: usize, alpha: AlphaMode) -> Failure<Option<Vec<u8>>> {
    use libwebp_sys as webp;
    let mut features = std::mem::MaybeUninit::<webp::WebPBitstreamFeatures>::zeroed();
    // SAFETY: `bytes` is a valid slice; `features` is written by the call.
    let status = unsafe { webp::WebPGetFeatures(bytes.as_ptr(), bytes.len(), features.as_mut_ptr()) };
    if status != webp::VP8StatusCode::VP8_STATUS_OK {
        return Err(ImageFailure::Corrupt(format!("WebP: libwebp cannot read the header ({status:?})")));
    }
    // SAFETY: initialised by WebPGetFeatures on success.
    let features = unsafe { features.assume_init() };
    if features.has_animation != 0 {
        return Ok(None);
    }
    if (features.width as usize, features.height as usize) != (w, h) {
        return Err(ImageFailure::Corrupt("WebP: inconsistent picture size".into()));
    }
    let channels = if features.has_alpha != 0 && alpha != AlphaMode::Drop { 4 } else { 3 };
    let mut out = vec![0u8; w * h * channels];
    let stride = (w * channels) as std::ffi::c_int;
    // SAFETY: `out` holds exactly `stride * h` bytes, libwebp writes within it.
    let written = unsafe {
        if channels == 4 {
            webp::WebPDecodeRGBAInto(bytes.as_ptr(), bytes.len(), out.as_mut_ptr(), out.len(), stride)
        } else {
            webp::WebPDecodeRGBInto(bytes.as_ptr(), bytes.len(), out.as_mut_ptr(), out.len(), stride)
        }
    };
    if written.is_null() {
        return Err(ImageFailure::Corrupt("WebP: libwebp could not decode the bitstream".into()));
    }
    Ok(Some(if channels == 4 { samples_to_rgb(out, 4, alpha) } else { out }))
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
    decode_file(None, path, opts)
}

/// Decode `path`, beneath `root` (relative to it) or as it is: a regular
/// file of at most `opts.file_limit()` bytes, read no further than that.
pub fn decode_file(root: Option<&Root>, path: &Path, opts: &LoadOptions) -> Result<RgbImage> {
    let mut opened = open_image(root, path, opts.file_limit())?;
    let bytes = opened.read_all()?;
    decode_bytes(&bytes, opts).map_err(|f| Error::image(opened.shown, f))
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::codecs::jpeg::JpegEncoder;
    use image::codecs::png::PngEncoder;
    use image::ImageEncoder;

    fn gradient(w: u32, h: u32) -> Vec<u8> {
        (0..h)
            .flat_map(|y| (0..w).flat_map(move |x| [(x * 255 / w) as u8, (y * 255 / h) as u8, ((x + y) % 256) as u8]))
            .collect()
    }

    fn jpeg(w: u32, h: u32) -> Vec<u8> {
        let mut out = Vec::new();
        JpegEncoder::new_with_quality(&mut out, 90)
            .write_image(&gradient(w, h), w, h, image::ExtendedColorType::Rgb8)
            .unwrap();
        out
    }

    fn png(w: u32, h: u32) -> Vec<u8> {
        let mut out = Vec::new();
        PngEncoder::new(&mut out).write_image(&gradient(w, h), w, h, image::ExtendedColorType::Rgb8).unwrap();
        out
    }

    #[test]
    fn jpeg_decodes_and_finds_its_eoi() {
        let bytes = jpeg(96, 64);
        assert!(jpeg_has_eoi(&bytes));
        let img = decode_bytes(&bytes, &LoadOptions::default()).unwrap();
        assert_eq!((img.width, img.height, img.data.len()), (96, 64, 96 * 64 * 3));
        // Trailing bytes after the EOI are allowed (appended pictures, padding).
        let mut padded = bytes.clone();
        padded.extend_from_slice(&[0u8; 100]);
        assert_eq!(decode_bytes(&padded, &LoadOptions::default()).unwrap(), img);
    }

    #[test]
    fn every_cut_jpeg_is_an_error() {
        // Cutting even one byte (the EOI) must fail, as it does in Pillow; a
        // few bytes short used to decode "successfully" with wrong last blocks.
        let bytes = jpeg(64, 48);
        for cut in (1..40).chain((40..bytes.len() - 4).step_by(97)) {
            let short = &bytes[..bytes.len() - cut];
            match decode_bytes(short, &LoadOptions::default()) {
                Err(ImageFailure::Truncated(_)) | Err(ImageFailure::Corrupt(_)) => {}
                Ok(img) => panic!("cut {cut} bytes: expected an error, got a {}x{} image", img.width, img.height),
                Err(other) => panic!("cut {cut} bytes: expected truncated/corrupt, got {other:?}"),
            }
        }
    }

    #[test]
    fn eoi_inside_an_app_segment_does_not_count() {
        // An APP1 segment whose payload holds FF D9 (as an EXIF thumbnail
        // does) must be skipped by its length, not read as the EOI.
        let bytes = jpeg(32, 32);
        let mut with_app = bytes[..2].to_vec();
        let payload = [0x45, 0x78, 0xFF, 0xD9, 0xFF, 0xD9, 0x00];
        with_app.extend_from_slice(&[0xFF, 0xE1, 0x00, (payload.len() + 2) as u8]);
        with_app.extend_from_slice(&payload);
        with_app.extend_from_slice(&bytes[2..]);
        assert!(jpeg_has_eoi(&with_app));
        let cut = &with_app[..with_app.len() - 2];
        assert!(!jpeg_has_eoi(cut));
    }

    #[test]
    fn stray_bytes_between_header_segments_are_tolerated() {
        // Pillow (libjpeg) loads such files with a warning; so must we.
        let bytes = jpeg(48, 40);
        let first_len = u16::from_be_bytes([bytes[4], bytes[5]]) as usize;
        let at = 4 + first_len; // after SOI and the first segment
        let mut stray = bytes[..at].to_vec();
        stray.extend_from_slice(&[0, 0, 0, 0]);
        stray.extend_from_slice(&bytes[at..]);
        assert!(jpeg_decoder(&stray, true).decode_headers().is_err(), "strict mode refuses it");
        let clean = decode_bytes(&bytes, &LoadOptions::default()).unwrap();
        assert_eq!(decode_bytes(&stray, &LoadOptions::default()).unwrap(), clean);
        // Truncation is still caught on such a file.
        let cut = &stray[..stray.len() - 3];
        assert!(matches!(decode_bytes(cut, &LoadOptions::default()), Err(ImageFailure::Truncated(_))));
    }

    #[test]
    fn png_cut_is_truncated_and_names_the_format() {
        let bytes = png(64, 64);
        let err = decode_bytes(&bytes[..bytes.len() / 2], &LoadOptions::default()).unwrap_err();
        assert!(matches!(err, ImageFailure::Truncated(_)), "{err:?}");
        assert!(err.to_string().contains("PNG"), "{err}");
    }

    #[test]
    fn webp_shorter_than_its_riff_size_is_truncated() {
        let mut fake = b"RIFF".to_vec();
        fake.extend_from_slice(&1000u32.to_le_bytes());
        fake.extend_from_slice(b"WEBP");
        assert!(matches!(check_riff_length(&fake), Err(ImageFailure::Truncated(_))));
        fake.resize(1008, 0);
        assert!(check_riff_length(&fake).is_ok());
    }

    #[test]
    fn pixel_limit_is_checked_from_the_header() {
        let opts = LoadOptions { max_pixels: 100, ..LoadOptions::default() };
        let err = decode_bytes(&jpeg(16, 16), &opts).unwrap_err();
        assert_eq!(err, ImageFailure::TooLarge { width: 16, height: 16, limit: 100 });
        let err = decode_bytes(&png(16, 16), &opts).unwrap_err();
        assert_eq!(err, ImageFailure::TooLarge { width: 16, height: 16, limit: 100 });
    }

    #[test]
    fn bad_inputs_are_classified() {
        let opts = LoadOptions::default();
        assert_eq!(decode_bytes(b"", &opts).unwrap_err(), ImageFailure::Empty);
        assert!(matches!(decode_bytes(b"hello world", &opts), Err(ImageFailure::NotAnImage(_))));
        assert!(matches!(decode_bytes(b"II*\0\x08\0\0\0", &opts), Err(ImageFailure::Unsupported(_))));
    }

    #[test]
    fn alpha_compositing() {
        assert_eq!(composite(200, 255, AlphaMode::White), 200);
        assert_eq!(composite(200, 0, AlphaMode::White), 255);
        assert_eq!(composite(200, 0, AlphaMode::Black), 0);
        assert_eq!(composite(200, 0, AlphaMode::Drop), 200);
        assert_eq!(composite(100, 128, AlphaMode::Black), 50);
    }
}
