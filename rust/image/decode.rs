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
use crate::image::safe_open::{open_image, FileLimit, Opened, Root};

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

/// An error unless `bytes` can possibly be allocated on this machine.
pub(crate) fn check_memory(bytes: u64) -> Failure<()> {
    let available = crate::pool::machine_memory();
    if bytes > available {
        return Err(ImageFailure::OutOfMemory { bytes, available });
    }
    Ok(())
}

/// How much of a file a probe reads first: the headers of a plain JPEG
/// (tables, EXIF, frame and scan headers) fit in a few hundred bytes to a
/// few KB, and at HPDv3 scale a million probes pay for every byte copied.
/// A JPEG whose headers go on (large ICC profiles, thumbnails, XMP) is read
/// further as far as its marker walk asks.
const PROBE_FIRST: usize = 4 * 1024;

/// When zune-jpeg reads a JPEG's headers for the probe (the walk was not
/// sure) and fails on the bytes read so far, it tries again on this many,
/// then on the whole file.
const PROBE_ZUNE_PREFIX: usize = 256 * 1024;

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

/// What the probe's marker walk ([`jpeg_walk`]) makes of a JPEG's first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Walk {
    /// Every segment up to the start of scan passes the checks zune-jpeg's
    /// header pass makes, so `decode_headers` gives this same answer.
    Header { width: u64, height: u64, orientation: Orientation },
    /// The headers go on past the bytes given: at least this many are needed.
    NeedMore(usize),
    /// Anything unusual (stray bytes between segments, bad tables, a
    /// marker zune-jpeg treats its own way): zune-jpeg decides.
    Unsure,
}

const EXIF_PREFIX: &[u8] = b"Exif\0\0";
const EXTENDED_XMP_PREFIX: &[u8] = b"http://ns.adobe.com/xmp/extension/\0";

fn be16(bytes: &[u8], at: usize) -> usize {
    usize::from(u16::from_be_bytes([bytes[at], bytes[at + 1]]))
}

/// A JPEG's header, read by walking its markers instead of through
/// zune-jpeg's `decode_headers`, which builds Huffman lookup tables a probe
/// never uses (a third of a probe's CPU at HPDv3 scale).
///
/// The walk reads what zune-jpeg's header pass reads, in the same order, up
/// to the start of scan (SOS), and accepts a file only where that pass
/// would: each segment checked as zune-jpeg checks it (DQT precision, table
/// ids and lengths; DHT classes, ids, counts, code-space and DC symbol
/// ranges; DRI length; the APP0/APP14 quirks; SOF precision, size,
/// components, sampling factors; SOS component ids and spectral ranges),
/// the orientation from the last `Exif` APP1 segment, as zune-jpeg keeps it.
/// Whatever it is not sure of is [`Walk::Unsure`], and zune-jpeg decides
/// (so failure messages and the lenient retry stay as they were); what it
/// cannot see for want of bytes is [`Walk::NeedMore`]. A marker scan, not
/// a codec: decoding stays with zune-jpeg.
pub(crate) fn jpeg_walk(bytes: &[u8]) -> Walk {
    let n = bytes.len();
    if n < 2 || bytes[0] != 0xFF || bytes[1] != 0xD8 {
        return Walk::Unsure;
    }
    // Width, height, and the component ids of the frame header.
    let mut frame: Option<(u64, u64, [u8; 4], usize)> = None;
    let mut exif: Option<&[u8]> = None;
    let mut pos = 2;
    loop {
        // A marker: FF, any number of fill FFs, then its code; a byte other
        // than FF here is a stray one (zune-jpeg's strict mode refuses some,
        // allows others).
        match bytes.get(pos) {
            None => return Walk::NeedMore(pos + 4),
            Some(0xFF) => {}
            Some(_) => return Walk::Unsure,
        }
        let mut at = pos + 1;
        while at < n && bytes[at] == 0xFF {
            at += 1;
        }
        let Some(&code) = bytes.get(at) else { return Walk::NeedMore(at + 3) };
        match code {
            // SOF0-2, DHT, SOS, DQT, DRI, APPn, COM: segments read below.
            0xC0..=0xC2 | 0xC4 | 0xDA..=0xDB | 0xDD | 0xE0..=0xEF | 0xFE => {}
            // Stuffed zero, TEM, RSTn, SOI, EOI, DNL, DAC, the SOF kinds
            // zune-jpeg skips as unknown, reserved codes: rare, and
            // zune-jpeg has its own ways with them.
            _ => return Walk::Unsure,
        }
        let seg = at + 1;
        if seg + 2 > n {
            return Walk::NeedMore(seg + 2);
        }
        let len = be16(bytes, seg);
        if len < 2 {
            return Walk::Unsure;
        }
        let end = seg + len;
        if end > n {
            return Walk::NeedMore(end);
        }
        let body = &bytes[seg + 2..end];
        let ok = match code {
            0xC0..=0xC2 => {
                if frame.is_some() {
                    return Walk::Unsure; // two frame headers
                }
                frame = sof_header(body);
                frame.is_some()
            }
            0xC4 => dht_ok(body),
            0xDB => dqt_ok(body),
            0xDD => len == 4,
            0xDA => {
                let Some((width, height, ids, count)) = frame else { return Walk::Unsure };
                if !sos_ok(body, &ids[..count]) {
                    return Walk::Unsure;
                }
                let orientation = exif.and_then(Orientation::from_exif_chunk).unwrap_or(Orientation::NoTransforms);
                return Walk::Header { width, height, orientation };
            }
            // zune-jpeg reads 5 bytes of APP0 then skips `len - 7`: one byte
            // too many when `len` is 6.
            0xE0 => len != 6,
            0xE1 => {
                if body.len() > EXIF_PREFIX.len() && body.starts_with(EXIF_PREFIX) {
                    exif = Some(&body[EXIF_PREFIX.len()..]);
                    true
                } else {
                    // Extended XMP is reassembled across segments: zune-jpeg's business.
                    !(body.len() > EXTENDED_XMP_PREFIX.len() && body.starts_with(EXTENDED_XMP_PREFIX))
                }
            }
            0xEE => app14_ok(body),
            _ => true,
        };
        if !ok {
            return Walk::Unsure;
        }
        pos = end;
    }
}

/// A frame header's size and component ids, where zune-jpeg accepts it:
/// 8-bit, nonzero size, 1 to 4 components, the length matching them,
/// sampling factors 1, 2 or 4 across and 1 to 4 down, quantisation tables 0-3.
fn sof_header(body: &[u8]) -> Option<(u64, u64, [u8; 4], usize)> {
    if body.len() < 6 || body[0] != 8 {
        return None;
    }
    let (height, width, count) = (be16(body, 1) as u64, be16(body, 3) as u64, usize::from(body[5]));
    if height == 0 || width == 0 || !(1..=4).contains(&count) || body.len() != 6 + 3 * count {
        return None;
    }
    let mut ids = [0u8; 4];
    for (k, c) in body[6..].chunks_exact(3).enumerate() {
        let (h, v) = (c[1] >> 4, c[1] & 0x0F);
        if !matches!(h, 1 | 2 | 4) || !(1..=4).contains(&v) || c[2] > 3 {
            return None;
        }
        ids[k] = c[0];
    }
    Some((width, height, ids, count))
}

/// A DQT segment zune-jpeg accepts: tables of 8- or 16-bit precision,
/// numbered 0-3, exactly filling the segment.
fn dqt_ok(body: &[u8]) -> bool {
    let mut rest = body;
    while let Some(&info) = rest.first() {
        let size = 1 + 64 * (usize::from(info >> 4) + 1);
        if info >> 4 > 1 || info & 0x0F > 3 || size > rest.len() {
            return false;
        }
        rest = &rest[size..];
    }
    true
}

/// A DHT segment zune-jpeg accepts: class 0 (DC) or 1 (AC), table 0-3, at
/// most 256 symbols that fit the segment, code lengths that leave room for
/// every code (as libjpeg checks: no code of all ones), DC symbols 0-15,
/// and no bytes left over.
fn dht_ok(body: &[u8]) -> bool {
    let mut rest = body;
    while rest.len() > 16 {
        let (class, id) = (rest[0] >> 4, rest[0] & 0x0F);
        if class > 1 || id > 3 {
            return false;
        }
        let counts = &rest[1..17];
        rest = &rest[17..];
        let total: usize = counts.iter().map(|&c| usize::from(c)).sum();
        if total > 256 || total > rest.len() {
            return false;
        }
        let mut code = 0u32;
        let mut started = false;
        let mut left = total;
        for (k, &c) in counts.iter().enumerate() {
            started |= c > 0;
            if !started || left == 0 {
                continue;
            }
            code += u32::from(c);
            if code >= 1 << (k + 1) {
                return false;
            }
            code <<= 1;
            left -= usize::from(c);
        }
        if class == 0 && rest[..total].iter().any(|&s| s > 15) {
            return false;
        }
        rest = &rest[total..];
    }
    rest.is_empty()
}

/// An APP14 segment zune-jpeg accepts: an `Adobe` one long enough and with
/// a known colour transform; any other at least 5 bytes long (zune-jpeg
/// looks at 5 bytes whatever the length).
fn app14_ok(body: &[u8]) -> bool {
    if body.len() < 5 {
        return false;
    }
    !body.starts_with(b"Adobe") || (body.len() >= 12 && body[11] <= 2)
}

/// A start-of-scan header zune-jpeg accepts: 1 to 4 components, the length
/// matching them, each a distinct component of the frame, spectral
/// selection within 0-63 and approximation bits within 0-13.
fn sos_ok(body: &[u8], frame_ids: &[u8]) -> bool {
    let Some(&count) = body.first() else { return false };
    let count = usize::from(count);
    if !(1..=4).contains(&count) || body.len() != 4 + 2 * count {
        return false;
    }
    let mut ids = [0u8; 4];
    for i in 0..count {
        let id = body[1 + 2 * i];
        if ids[..i].contains(&id) || !frame_ids.contains(&id) {
            return false;
        }
        ids[i] = id;
    }
    let (ss, se, a) = (body[1 + 2 * count], body[2 + 2 * count], body[3 + 2 * count]);
    ss <= 63 && se <= 63 && a >> 4 <= 13 && a & 0x0F <= 13
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
    let mut first = [0u8; PROBE_FIRST];
    let got = opened.read_at(&mut first, 0)?;
    let first = &first[..got];
    let format = sniff(first).map_err(|f| Error::image(&opened.shown, f))?;
    let result = if format == ImageFormat::Jpeg {
        probe_jpeg(&mut opened, first)?
    } else {
        let mut file = &opened.file;
        file.rewind().map_err(|e| Error::io(&opened.shown, e))?;
        guarded(|| {
            let mut reader = ImageReader::with_format(BufReader::new(file), format);
            reader.limits(reader_limits(u64::MAX / 16));
            let mut dec = reader.into_decoder().map_err(|e| image_failure(format, e))?;
            let (w, h) = dec.dimensions();
            let orientation = dec.orientation().unwrap_or(Orientation::NoTransforms);
            Ok((w as u64, h as u64, orientation))
        })
    };
    let name = &opened.shown;
    let (w, h, orientation) = result.map_err(|f| Error::image(name, f))?;
    if w == 0 || h == 0 {
        return Err(Error::image(name, ImageFailure::Corrupt(format!("header gives an empty size {w}x{h}"))));
    }
    if let Some(limit) = limits.max_pixels {
        check_pixels(w, h, limit).map_err(|f| Error::image(name, f))?;
    }
    let (w, h) = (w.min(u32::MAX as u64) as u32, h.min(u32::MAX as u64) as u32);
    Ok(if swaps_axes(orientation) { (w, h) } else { (h, w) })
}

/// A JPEG's width, height and orientation, from `first` (its first bytes)
/// and as much more of the file as needed: the marker walk where it is
/// sure, zune-jpeg's header pass otherwise (on growing prefixes, then the
/// whole file, so the answer is the one zune-jpeg gives on the whole file).
fn probe_jpeg(opened: &mut Opened, first: &[u8]) -> Result<Failure<(u64, u64, Orientation)>> {
    let size = usize::try_from(opened.size).unwrap_or(usize::MAX);
    // The bytes read beyond `first`, once there are any (they start with `first`).
    let mut more: Vec<u8> = Vec::new();
    loop {
        let bytes: &[u8] = if more.is_empty() { first } else { &more };
        let walked = guarded(|| Ok(jpeg_walk(bytes))).unwrap_or(Walk::Unsure);
        match walked {
            Walk::Header { width, height, orientation } => return Ok(Ok((width, height, orientation))),
            Walk::NeedMore(need) if bytes.len() < size => {
                // Read at least twice as much each time: a few reads even
                // for many large segments.
                let target = need.max(2 * bytes.len()).next_multiple_of(PROBE_FIRST);
                let had = bytes.len();
                if more.is_empty() {
                    more.extend_from_slice(first);
                }
                opened.read_more(&mut more, target)?;
                if more.len() == had {
                    break; // the file ends sooner than it did when opened
                }
            }
            Walk::NeedMore(_) | Walk::Unsure => break,
        }
    }
    let header = |bytes: &[u8]| guarded(|| jpeg_header(bytes).map(|h| (h.width, h.height, h.orientation)));
    let bytes: &[u8] = if more.is_empty() { first } else { &more };
    let mut result = header(bytes);
    // A failure may only mean the headers go on past the bytes read: read more.
    if result.is_err() && bytes.len() < size.min(PROBE_ZUNE_PREFIX) {
        if more.is_empty() {
            more.extend_from_slice(first);
        }
        opened.read_more(&mut more, PROBE_ZUNE_PREFIX)?;
        result = header(&more);
    }
    let read = more.len().max(first.len());
    if result.is_err() && read < size {
        result = header(&opened.read_all()?);
    }
    Ok(result)
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

/// Decode `path`, beneath `root` (relative to it) or as it is: a regular
/// file of at most `opts.file_limit()` bytes, read no further than that.
pub fn decode_file(root: Option<&Root>, path: &Path, opts: &LoadOptions) -> Result<RgbImage> {
    let mut opened = open_image(root, path, opts.file_limit())?;
    let bytes = opened.read_all()?;
    decode_bytes(&bytes, opts).map_err(|f| Error::image(opened.shown, f))
}

#[cfg(test)]
pub(crate) mod tests {
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

    /// `jpeg(w, h)` with `segments` APP2 segments of ~64 KB each right after
    /// SOI: headers that run past the probe's first (and second) prefix.
    fn jpeg_with_big_headers(w: u32, h: u32, segments: usize) -> Vec<u8> {
        let plain = jpeg(w, h);
        let mut out = plain[..2].to_vec();
        for k in 0..segments {
            out.extend_from_slice(&[0xFF, 0xE2, 0xFF, 0xFF]); // APP2, length 65535 (incl. the 2 length bytes)
            out.extend(std::iter::repeat_n(k as u8, 65533));
        }
        out.extend_from_slice(&plain[2..]);
        out
    }

    /// An EXIF block (TIFF header and one IFD) holding only an orientation.
    pub(crate) fn exif_orientation(value: u16, big_endian: bool) -> Vec<u8> {
        let u16b = |v: u16| if big_endian { v.to_be_bytes() } else { v.to_le_bytes() };
        let u32b = |v: u32| if big_endian { v.to_be_bytes() } else { v.to_le_bytes() };
        let mut out = if big_endian { b"MM\0\x2a".to_vec() } else { b"II\x2a\0".to_vec() };
        out.extend_from_slice(&u32b(8)); // the first IFD right after the header
        out.extend_from_slice(&u16b(1)); // one entry
        out.extend_from_slice(&u16b(0x0112)); // Orientation
        out.extend_from_slice(&u16b(3)); // SHORT
        out.extend_from_slice(&u32b(1));
        out.extend_from_slice(&u16b(value));
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&u32b(0)); // no next IFD
        out
    }

    /// A real JPEG from image's encoder: `channels` 1 (grey) or 3, with an
    /// EXIF orientation and an ICC profile of `icc` bytes when asked.
    pub(crate) fn jpeg_with(w: u32, h: u32, channels: u32, orientation: Option<u16>, icc: usize) -> Vec<u8> {
        let pixels: Vec<u8> = if channels == 1 {
            (0..w * h).map(|i| (i % 251) as u8).collect()
        } else {
            (0..w * h).flat_map(|i| [(i % 251) as u8, (i % 13) as u8, 90]).collect()
        };
        let color = if channels == 1 { image::ExtendedColorType::L8 } else { image::ExtendedColorType::Rgb8 };
        let mut out = Vec::new();
        let mut enc = JpegEncoder::new_with_quality(&mut out, 80);
        if let Some(o) = orientation {
            enc.set_exif_metadata(exif_orientation(o, o % 2 == 0)).unwrap();
        }
        if icc > 0 {
            enc.set_icc_profile((0..icc).map(|i| (i % 256) as u8).collect()).unwrap();
        }
        enc.write_image(&pixels, w, h, color).unwrap();
        out
    }

    /// The offset of the first marker `code` in a JPEG's headers.
    pub(crate) fn marker_at(bytes: &[u8], code: u8) -> usize {
        let mut pos = 2;
        loop {
            while bytes[pos + 1] == 0xFF {
                pos += 1; // fill bytes
            }
            if bytes[pos + 1] == code {
                return pos;
            }
            pos += 2 + u16::from_be_bytes([bytes[pos + 2], bytes[pos + 3]]) as usize;
        }
    }

    /// `bytes` with `segment` (a whole marker segment) inserted at `at`.
    fn insert(bytes: &[u8], at: usize, segment: &[u8]) -> Vec<u8> {
        let mut out = bytes[..at].to_vec();
        out.extend_from_slice(segment);
        out.extend_from_slice(&bytes[at..]);
        out
    }

    /// What zune-jpeg's header pass (strict mode) says, as the walk would.
    pub(crate) fn zune_says(bytes: &[u8]) -> Option<Walk> {
        let mut dec = jpeg_decoder(bytes, true);
        dec.decode_headers().ok()?;
        let (w, h) = dec.dimensions()?;
        let orientation = dec.exif().and_then(|e| Orientation::from_exif_chunk(e)).unwrap_or(Orientation::NoTransforms);
        Some(Walk::Header { width: w as u64, height: h as u64, orientation })
    }

    /// Real JPEGs of many shapes, each with what the walk must say.
    fn walk_cases() -> Vec<(String, Vec<u8>, Walk)> {
        let header = |width, height, o: u16| Walk::Header {
            width,
            height,
            orientation: Orientation::from_exif(o as u8).unwrap(),
        };
        let mut cases = Vec::new();
        for (w, h) in [(1024, 1024), (832, 1216), (1216, 832), (17, 9), (1, 1)] {
            cases.push((format!("rgb {w}x{h}"), jpeg_with(w, h, 3, None, 0), header(w as u64, h as u64, 1)));
            cases.push((format!("grey {w}x{h}"), jpeg_with(w, h, 1, None, 0), header(w as u64, h as u64, 1)));
        }
        for o in 1..=8 {
            cases.push((format!("orientation {o}"), jpeg_with(40, 24, 3, Some(o), 0), header(40, 24, o)));
        }
        // ICC profiles pushing the frame header past 4 KB, 16 KB, 256 KB (several APP2 chunks).
        for icc in [3000, 6000, 20_000, 300_000] {
            let bytes = jpeg_with(48, 32, 3, Some(6), icc);
            assert!(marker_at(&bytes, 0xC0) > icc, "ICC before the frame header");
            cases.push((format!("ICC {icc} bytes"), bytes, header(48, 32, 6)));
        }
        let plain = jpeg_with(64, 40, 3, None, 0);
        // Progressive: the same headers under SOF2 (what zune-jpeg's header pass reads).
        let mut progressive = plain.clone();
        progressive[marker_at(&plain, 0xC0) + 1] = 0xC2;
        cases.push(("SOF2".into(), progressive, header(64, 40, 1)));
        let mut extended = plain.clone();
        extended[marker_at(&plain, 0xC0) + 1] = 0xC1;
        cases.push(("SOF1".into(), extended, header(64, 40, 1)));
        let sos = marker_at(&plain, 0xDA);
        let dri = insert(&plain, sos, &[0xFF, 0xDD, 0, 4, 0, 8]);
        cases.push(("DRI".into(), dri, header(64, 40, 1)));
        let com = insert(&plain, 2, b"\xFF\xFE\0\x07hello");
        cases.push(("COM".into(), com, header(64, 40, 1)));
        let fill = insert(&plain, sos, &[0xFF, 0xFF, 0xFF]); // fill bytes before SOS's FF
        cases.push(("fill bytes".into(), fill, header(64, 40, 1)));
        // Two EXIF segments: zune-jpeg keeps the last one, so must the walk.
        let mut second = b"\xFF\xE1\0\0Exif\0\0".to_vec();
        second.extend_from_slice(&exif_orientation(8, false));
        let n = (second.len() - 2) as u16;
        second[2..4].copy_from_slice(&n.to_be_bytes());
        let two = jpeg_with(40, 24, 3, Some(3), 0);
        let at = marker_at(&two, 0xDB);
        cases.push(("two EXIF".into(), insert(&two, at, &second), header(40, 24, 8)));
        // What the walk leaves to zune-jpeg.
        let first_len = u16::from_be_bytes([plain[4], plain[5]]) as usize;
        cases.push(("stray bytes".into(), insert(&plain, 4 + first_len, &[0, 0, 0]), Walk::Unsure));
        cases.push(("one stray byte".into(), insert(&plain, 4 + first_len, &[0]), Walk::Unsure));
        let mut dnl = plain.clone();
        let sof = marker_at(&plain, 0xC0);
        dnl[sof + 5..sof + 7].copy_from_slice(&[0, 0]); // height 0: given by a DNL marker
        cases.push(("height 0".into(), dnl, Walk::Unsure));
        let mut sof3 = plain.clone();
        sof3[sof + 1] = 0xC3;
        cases.push(("SOF3".into(), sof3, Walk::Unsure));
        let mut twelve_bit = plain.clone();
        twelve_bit[sof + 4] = 12;
        cases.push(("12-bit".into(), twelve_bit, Walk::Unsure));
        let dqt = marker_at(&plain, 0xDB);
        let mut bad_dqt = plain.clone();
        bad_dqt[dqt + 4] = 0x24; // precision 2
        cases.push(("DQT precision 2".into(), bad_dqt, Walk::Unsure));
        let dht = marker_at(&plain, 0xC4);
        let mut bad_dht = plain.clone();
        bad_dht[dht + 4] = 0x24; // class 2
        cases.push(("DHT class 2".into(), bad_dht, Walk::Unsure));
        // An extra DC table 3: one 1-bit code is fine; two use up the code
        // space (the all-ones code is not allowed); symbol 16 is no DC size.
        let dc_table = |counts: &[u8], symbols: &[u8]| {
            let mut seg = vec![0xFF, 0xC4, 0, (2 + 17 + symbols.len()) as u8, 0x03];
            seg.extend_from_slice(counts);
            seg.resize(5 + 16, 0);
            seg.extend_from_slice(symbols);
            insert(&plain, dht, &seg)
        };
        cases.push(("extra DHT".into(), dc_table(&[1], &[0]), header(64, 40, 1)));
        cases.push(("DHT code space".into(), dc_table(&[2], &[0, 1]), Walk::Unsure));
        cases.push(("DHT DC symbol".into(), dc_table(&[1], &[16]), Walk::Unsure));
        cases.push(("DHT too short".into(), dc_table(&[2], &[0]), Walk::Unsure));
        cases.push(("APP0 of 6".into(), insert(&plain, 2, &[0xFF, 0xE0, 0, 6, 1, 2, 3, 4]), Walk::Unsure));
        cases.push(("DRI of 5".into(), insert(&plain, sos, &[0xFF, 0xDD, 0, 5, 0, 8, 0]), Walk::Unsure));
        cases.push(("EOI first".into(), insert(&plain, 2, &[0xFF, 0xD9]), Walk::Unsure));
        cases.push(("RST".into(), insert(&plain, 2, &[0xFF, 0xD0]), Walk::Unsure));
        cases.push(("not a JPEG".into(), b"\x89PNG\r\n".to_vec(), Walk::Unsure));
        cases
    }

    #[test]
    fn the_marker_walk_agrees_with_zune_jpeg() {
        for (name, bytes, expected) in walk_cases() {
            let walked = jpeg_walk(&bytes);
            assert_eq!(walked, expected, "{name}");
            if let Walk::Header { .. } = walked {
                assert_eq!(zune_says(&bytes), Some(walked), "{name}: zune-jpeg reads the same header");
            }
        }
    }

    #[test]
    fn the_marker_walk_asks_for_more_until_the_scan_header() {
        for (name, bytes, expected) in walk_cases() {
            if !matches!(expected, Walk::Header { .. }) {
                continue;
            }
            let sos = marker_at(&bytes, 0xDA);
            let scan_header = sos + 2 + u16::from_be_bytes([bytes[sos + 2], bytes[sos + 3]]) as usize;
            let step = (bytes.len() / 300).max(1);
            for cut in (0..scan_header).step_by(step).chain(scan_header - 3..scan_header) {
                match jpeg_walk(&bytes[..cut]) {
                    Walk::NeedMore(need) => {
                        assert!(need > cut && need <= scan_header + 4, "{name} cut at {cut}: asks for {need}")
                    }
                    Walk::Unsure if cut < 2 => {}
                    other => panic!("{name} cut at {cut} of {}: {other:?}", bytes.len()),
                }
            }
            assert_eq!(jpeg_walk(&bytes[..scan_header]), expected, "{name}: the headers are enough");
        }
    }

    #[test]
    fn probes_read_through_the_walk_or_zune_jpeg_alike() {
        let dir = std::env::temp_dir().join(format!("hpd-probe-walk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (k, (name, bytes, _)) in walk_cases().into_iter().enumerate() {
            if !bytes.starts_with(&[0xFF, 0xD8]) {
                continue;
            }
            let path = dir.join(format!("{k}.jpg"));
            std::fs::write(&path, &bytes).unwrap();
            let probed = probe_path(&path);
            // What the probe answered before the walk: zune-jpeg on the whole file.
            let zune = jpeg_header(&bytes);
            match (&probed, &zune) {
                (Ok(hw), Ok(h)) => {
                    let (w, ht) = (h.width as u32, h.height as u32);
                    let want = if swaps_axes(h.orientation) { (w, ht) } else { (ht, w) };
                    assert_eq!(*hw, want, "{name}");
                }
                (Err(e), Err(f)) => {
                    let shown = Error::image(path.display().to_string(), f.clone()).to_string();
                    assert_eq!(e.to_string(), shown, "{name}: the same error as before");
                }
                _ => panic!("{name}: probe {probed:?}, zune-jpeg {:?}", zune.map(|h| (h.width, h.height))),
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn probe_reads_more_when_the_headers_do_not_fit_the_first_prefix() {
        let dir = std::env::temp_dir().join(format!("hpd-probe-prefix-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // 0: fits the 16 KB prefix; 1 and 3 segments: fit the 256 KB one; 5: only the whole file.
        for segments in [0, 1, 3, 5] {
            let path = dir.join(format!("big{segments}.jpg"));
            std::fs::write(&path, jpeg_with_big_headers(40, 24, segments)).unwrap();
            assert_eq!(probe_path(&path).unwrap(), (24, 40), "{segments} big header segments");
        }
        std::fs::remove_dir_all(&dir).unwrap();
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
