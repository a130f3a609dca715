//! Random access to the latent pairs of part files.
//!
//! A request is (part file, row group, row). Only the two latent columns are
//! read, and only the pages of the requested rows: files written with one data
//! page per latent value and an offset index (the layout hpd-encode writes)
//! cost one positional read per latent; files without per-value pages (the
//! reference's, pyarrow's defaults, earlier hpd-encode) still read correctly,
//! at the cost of decoding the row group's latent column chunks.
//!
//! Files are opened once per process and their footers (with the offset
//! index) kept in a bounded cache, keyed by path and checked against the
//! file's identity (device, inode, size, mtime) on every use: a file replaced
//! or rewritten is opened again, never read through a stale footer, and a
//! caller that read other columns of a file elsewhere can pass the identity
//! it saw ([`Request::expect`]) and get [`ReadError::Changed`] instead of
//! another file's latents. All reads are positional (`pread`), so a
//! file descriptor shared with a forked child never has its offset moved
//! under another reader; the cache also remembers the pid that filled it and
//! starts over in a child. Every value is parsed from its `.npy` bytes
//! (float32 or float16, C order, little-endian), and checked against its
//! stored XXH3 checksum when the file has the checksum columns (unless the caller
//! opts out); anything else, a damaged page or a damaged footer, is an error
//! naming the file, row group and row.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{BufReader, Read};
use std::os::unix::fs::FileExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use arrow_array::cast::AsArray;
use arrow_array::types::{Int64Type, UInt64Type};
use arrow_array::{Array, RecordBatch};
use arrow_schema::DataType;
use bytes::{Bytes, BytesMut};
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder, RowSelection, RowSelectionPolicy,
    RowSelector,
};
use parquet::arrow::ProjectionMask;
use parquet::basic::Encoding;
use parquet::column::page::{Page, PageReader};
use parquet::errors::ParquetError;
use parquet::file::metadata::{ColumnChunkMetaData, PageIndexPolicy, ParquetStatisticsPolicy};
use parquet::file::page_index::offset_index::PageLocation;
use parquet::file::reader::{ChunkReader, Length};
use parquet::file::serialized_reader::SerializedPageReader;
use rayon::prelude::*;

use crate::parts::digest::latent_checksum;
use crate::parts::store::{self, Identity, Input, OpenError, StoreError};
pub use crate::parts::writer::{CHECKSUM_COLUMNS, LATENT_COLUMNS};
use crate::pool;

/// Part files whose footers are kept open per process.
pub const CACHE_FILES: usize = 256;

/// Rows decoded per Arrow batch (bounds the memory of one read).
const BATCH_ROWS: usize = 8;

/// Size of the sequential reads `check_file` issues.
const SCAN_WINDOW: usize = 8 << 20;

/// How far past the window being checked a full scan asks the kernel to read
/// (`POSIX_FADV_WILLNEED`): the next two windows are on their way while one is checked.
const PREFETCH: usize = 2 * SCAN_WINDOW;

/// Receives `(row, column, value)` for each latent value read.
type ValueSink<'a> = dyn FnMut(usize, usize, Option<&[u8]>) + 'a;
/// One value's result, once it has been read.
type Slot<T> = Option<Result<T, String>>;

/// One latent value read straight from its own page.
enum Direct {
    /// The page's buffer and where the value lies in it.
    Value(Bytes, std::ops::Range<usize>),
    Null,
    /// A page this fast path does not decode (an encoding other than PLAIN,
    /// several values): the Arrow reader takes over.
    Unsupported,
}

/// Why a read failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// The file cannot be opened or read.
    #[error("cannot read '{path}': {message}")]
    Io { path: String, kind: std::io::ErrorKind, message: String },
    /// The footer is damaged, missing (a truncated or unfinished file) or not Parquet,
    /// or the file lacks the latent columns.
    #[error("'{path}' is not a readable part file: {message}")]
    File { path: String, message: String },
    /// A FIFO, socket, device or directory named like a part file (refused without blocking).
    #[error("cannot read '{path}': not a regular file ({what}); only regular files are read")]
    NotRegular { path: String, what: &'static str },
    /// A request outside the file (a stale index).
    #[error("{0}")]
    OutOfRange(String),
    /// One row's value cannot be read or parsed.
    #[error("'{path}' row group {row_group} row {row}: {message}")]
    Row { path: String, row_group: usize, row: usize, message: String },
    /// A request to the object store failed (names the URL and HTTP status).
    #[error("{0}")]
    Store(StoreError),
    /// The file is not the one the caller read before (replaced or rewritten since).
    #[error(
        "'{path}' changed while it was being read (replaced or rewritten since its other columns were read); \
         read it again"
    )]
    Changed { path: String },
}

pub type Result<T, E = ReadError> = std::result::Result<T, E>;

// ---------------------------------------------------------------------------
// .npy parsing

/// Element type of a latent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    F32,
    F16,
}

impl Dtype {
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "float32",
            Dtype::F16 => "float16",
        }
    }
    fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 => 2,
        }
    }
}

/// The header of a `.npy` value and where its data starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NpyHeader {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data_offset: usize,
}

/// A parsed latent: float32 values, or float16 values as their bit patterns.
#[derive(Debug, Clone, PartialEq)]
pub enum LatentData {
    F32(Vec<f32>),
    F16(Vec<u16>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Latent {
    pub shape: Vec<usize>,
    pub data: LatentData,
}

/// What `check_file` learns of one value without keeping it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LatentInfo {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Values that are NaN or infinite.
    pub nonfinite: u64,
    /// The value's bytes against its stored checksum.
    pub checksum: ChecksumCheck,
}

/// A latent's stored bytes against the checksum (XXH3) stored beside them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChecksumCheck {
    /// No checksum is stored (the reference's files, older ones): the bytes are unchecked.
    Absent,
    Match,
    Mismatch {
        stored: u64,
        computed: u64,
    },
}

impl ChecksumCheck {
    /// The check of `bytes`, the value of latent column `k` in `row`, against `stored`.
    fn of(stored: Option<&StoredChecksums>, row: usize, k: usize, bytes: &[u8]) -> Self {
        match stored.and_then(|s| s[k].get(row).copied().flatten()) {
            None => Self::Absent,
            Some(want) => match latent_checksum(bytes) {
                got if got == want => Self::Match,
                got => Self::Mismatch { stored: want, computed: got },
            },
        }
    }

    /// An error for a mismatch, naming the columns (None otherwise).
    fn error(self, k: usize) -> Option<String> {
        match self {
            Self::Mismatch { stored, computed } => Some(format!(
                "checksum mismatch: {} says {stored:#018x}, the stored bytes give {computed:#018x}: the latent is \
                 damaged; restore the file or encode it again",
                CHECKSUM_COLUMNS[k]
            )),
            _ => None,
        }
    }
}

/// The stored checksums of one row group, per latent column (null: none stored).
pub type StoredChecksums = [Vec<Option<u64>>; 2];

/// Parses one value, given `(row, latent column, stored bytes)`.
type Parse<'a, T> = &'a (dyn Fn(usize, usize, &[u8]) -> Result<T, String> + Sync);

fn header_value<'a>(header: &'a str, key: &str) -> Result<&'a str, String> {
    let at = header.find(&format!("'{key}'")).ok_or_else(|| format!("npy header has no '{key}': {header:?}"))?;
    let rest = header[at + key.len() + 2..].trim_start();
    rest.strip_prefix(':').map(str::trim_start).ok_or_else(|| format!("npy header is malformed: {header:?}"))
}

/// Parse the header of `.npy` bytes (format 1.0, 2.0 or 3.0) and check that
/// the data that follows is exactly as long as the shape says.
pub fn parse_npy_header(bytes: &[u8]) -> Result<NpyHeader, String> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(format!("not .npy bytes ({} bytes, no NUMPY magic)", bytes.len()));
    }
    let (hlen, start): (usize, usize) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12),
        v => return Err(format!("unsupported .npy format version {v}")),
    };
    let end = start.checked_add(hlen).filter(|&e| e <= bytes.len()).ok_or_else(|| {
        format!("truncated .npy bytes: the header says {hlen} header bytes, the value has {}", bytes.len())
    })?;
    let header = std::str::from_utf8(&bytes[start..end]).map_err(|_| "npy header is not text".to_string())?;
    let descr = header_value(header, "descr")?;
    let descr = descr
        .strip_prefix('\'')
        .and_then(|d| d.split_once('\''))
        .map(|(d, _)| d)
        .ok_or_else(|| format!("npy header has a malformed 'descr': {header:?}"))?;
    let dtype = match descr {
        "<f4" => Dtype::F32,
        "<f2" => Dtype::F16,
        ">f4" | ">f2" => {
            return Err(format!("big-endian latents ('{descr}') are not supported; expected '<f4' or '<f2'"))
        }
        other => {
            return Err(format!("unsupported latent dtype '{other}'; expected float32 ('<f4') or float16 ('<f2')"))
        }
    };
    let fortran = header_value(header, "fortran_order")?;
    if fortran.starts_with("True") {
        return Err("Fortran-ordered latents are not supported; expected C order".into());
    } else if !fortran.starts_with("False") {
        return Err(format!("npy header has a malformed 'fortran_order': {header:?}"));
    }
    let shape_str = header_value(header, "shape")?;
    let inner = shape_str
        .strip_prefix('(')
        .and_then(|s| s.split_once(')'))
        .map(|(s, _)| s)
        .ok_or_else(|| format!("npy header has a malformed 'shape': {header:?}"))?;
    let mut shape = Vec::new();
    for part in inner.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        shape.push(part.parse::<usize>().map_err(|_| format!("npy header has a malformed 'shape': {header:?}"))?);
    }
    let count = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    let want =
        count.and_then(|c| c.checked_mul(dtype.size())).ok_or_else(|| format!("npy shape {shape:?} is too large"))?;
    let have = bytes.len() - end;
    if have != want {
        return Err(format!(
            "npy data is {have} bytes, the header ({} {shape:?}) needs {want}: the value is {}",
            dtype.name(),
            if have < want { "truncated" } else { "longer than its header says" }
        ));
    }
    Ok(NpyHeader { dtype, shape, data_offset: end })
}

/// Parse `.npy` bytes into a latent (one copy of the data).
pub fn parse_npy(bytes: &[u8]) -> Result<Latent, String> {
    let h = parse_npy_header(bytes)?;
    let raw = &bytes[h.data_offset..];
    let data = match h.dtype {
        Dtype::F32 => {
            let mut v = vec![0f32; raw.len() / 4];
            copy_le(raw, &mut v, |c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]));
            LatentData::F32(v)
        }
        Dtype::F16 => {
            let mut v = vec![0u16; raw.len() / 2];
            copy_le(raw, &mut v, |c| u16::from_le_bytes([c[0], c[1]]));
            LatentData::F16(v)
        }
    };
    Ok(Latent { shape: h.shape, data })
}

/// Fill `dst` from little-endian `raw` (exactly `dst`'s size in bytes): one
/// `memcpy` on little-endian machines, a conversion per value elsewhere.
fn copy_le<T: Copy>(raw: &[u8], dst: &mut [T], from_le: impl Fn(&[u8]) -> T) {
    let size = std::mem::size_of::<T>();
    let total = std::mem::size_of_val(dst);
    debug_assert_eq!(raw.len(), total);
    if cfg!(target_endian = "little") {
        // SAFETY: `dst` owns `dst.len() * size` initialised bytes, `T` is f32
        // or u16 (every bit pattern valid), and the two slices cannot overlap.
        let bytes = unsafe { std::slice::from_raw_parts_mut(dst.as_mut_ptr().cast::<u8>(), total) };
        bytes.copy_from_slice(&raw[..total]);
    } else {
        for (d, c) in dst.iter_mut().zip(raw.chunks_exact(size)) {
            *d = from_le(c);
        }
    }
}

/// Header, shape and the number of non-finite values of `.npy` bytes.
pub fn inspect_npy(bytes: &[u8]) -> Result<LatentInfo, String> {
    let h = parse_npy_header(bytes)?;
    let raw = &bytes[h.data_offset..];
    let nonfinite = match h.dtype {
        Dtype::F32 => count_nonfinite_f32(raw),
        Dtype::F16 => count_nonfinite_f16(raw),
    };
    Ok(LatentInfo { dtype: h.dtype, shape: h.shape, nonfinite, checksum: ChecksumCheck::Absent })
}

/// Values per block of the non-finite counts: the inner loop over a block
/// adds 0/1 into `u32` lanes of the element's width (SIMD compares and
/// subtracts, no widening), and only the block's total goes to `u64`.
const COUNT_BLOCK: usize = 4096;

/// How many little-endian float32 values of `raw` are NaN or infinite (all
/// exponent bits set). Branch-free over fixed-size blocks, so it compiles to
/// SIMD compares and adds; `raw` needs no alignment.
pub fn count_nonfinite_f32(raw: &[u8]) -> u64 {
    const EXP: u32 = 0x7f80_0000;
    let count = |block: &[u8]| -> u64 {
        block.chunks_exact(4).map(|c| u32::from(u32::from_le_bytes([c[0], c[1], c[2], c[3]]) & EXP == EXP)).sum::<u32>()
            as u64
    };
    let blocks = raw.chunks_exact(4 * COUNT_BLOCK);
    let tail = count(blocks.remainder());
    blocks.map(count).sum::<u64>() + tail
}

/// How many little-endian float16 values of `raw` are NaN or infinite.
pub fn count_nonfinite_f16(raw: &[u8]) -> u64 {
    const EXP: u16 = 0x7c00;
    let count = |block: &[u8]| -> u64 {
        block.chunks_exact(2).map(|c| u16::from(u16::from_le_bytes([c[0], c[1]]) & EXP == EXP)).sum::<u16>() as u64
    };
    let blocks = raw.chunks_exact(2 * COUNT_BLOCK);
    let tail = count(blocks.remainder());
    blocks.map(count).sum::<u64>() + tail
}

// ---------------------------------------------------------------------------
// Positional reads

/// A file read only with `pread`: no shared offset, so concurrent readers
/// (threads, or a parent and its forked child) never disturb each other.
#[derive(Clone)]
pub struct PosFile {
    file: Arc<File>,
    len: u64,
}

impl PosFile {
    pub fn new(file: File, len: u64) -> Self {
        PosFile { file: Arc::new(file), len }
    }

    fn read_range(&self, start: u64, length: usize) -> std::io::Result<Vec<u8>> {
        let mut buf = vec![0u8; length];
        self.file.read_exact_at(&mut buf, start)?;
        Ok(buf)
    }
}

/// A `Read` at a position of a [`PosFile`].
pub struct PosReader {
    file: Arc<File>,
    pos: u64,
}

impl Read for PosReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Length for PosFile {
    fn len(&self) -> u64 {
        self.len
    }
}

impl ChunkReader for PosFile {
    type T = BufReader<PosReader>;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        Ok(BufReader::with_capacity(16 << 10, PosReader { file: self.file.clone(), pos: start }))
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        if start.checked_add(length as u64).map_or(true, |end| end > self.len) {
            return Err(ParquetError::EOF(format!(
                "{length} bytes at offset {start} are past the end of the file ({} bytes)",
                self.len
            )));
        }
        Ok(self.read_range(start, length)?.into())
    }
}

/// An [`Input`] read in large windows over one byte range, for full scans,
/// so they read at disk speed instead of one page at a time: pages are
/// handed out as slices of a window (no copy), `slots` windows are kept (the
/// least recently used one is replaced: a row-group read through the Arrow
/// reader walks the two latent columns in step, so it keeps two). From a
/// local file, a window's buffer is refilled in place once its pages are
/// dropped (no fresh allocation, no zeroing per window), and the next
/// [`PREFETCH`] bytes are announced to the kernel (`POSIX_FADV_WILLNEED`) so
/// the disk reads them while this window is checked; from an object, each
/// window is one ranged GET.
struct Windowed {
    file: Input,
    end: u64,
    /// `(start, last use, bytes)` of each window.
    slots: Mutex<Vec<(u64, u64, Bytes)>>,
}

impl Windowed {
    fn new(file: Input, start: u64, end: u64, slots: usize) -> Self {
        let end = end.min(file.len());
        advise(&file, start, PREFETCH as u64, end, libc::POSIX_FADV_WILLNEED);
        Windowed { file, end, slots: Mutex::new(vec![(0, 0, Bytes::new()); slots.max(1)]) }
    }

    fn bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let stop = start.checked_add(length as u64).ok_or_else(|| ParquetError::EOF("page offset overflows".into()))?;
        let tick = slots.iter().map(|s| s.1).max().unwrap_or(0) + 1;
        for slot in slots.iter_mut() {
            if start >= slot.0 && stop <= slot.0 + slot.2.len() as u64 {
                let off = (start - slot.0) as usize;
                slot.1 = tick;
                return Ok(slot.2.slice(off..off + length));
            }
        }
        if stop > self.file.len() {
            return Err(ParquetError::EOF(format!(
                "{length} bytes at offset {start} are past the end of the file ({} bytes)",
                self.file.len()
            )));
        }
        let want = (SCAN_WINDOW as u64).min(self.end.saturating_sub(start)).max(length as u64) as usize;
        let lru = (0..slots.len()).min_by_key(|&i| slots[i].1).unwrap_or(0);
        let Input::Local(local) = &self.file else {
            // An object: the window is one ranged GET (no buffer to reuse).
            slots[lru] = (start, tick, self.file.get_bytes(start, want)?);
            return Ok(slots[lru].2.slice(0..length));
        };
        // Reuse the old window's buffer when no page of it is still held.
        let mut buf = std::mem::take(&mut slots[lru].2).try_into_mut().unwrap_or_else(|_| BytesMut::new());
        if buf.len() >= want {
            buf.truncate(want);
        } else {
            buf.resize(want, 0);
        }
        local.file.read_exact_at(&mut buf, start)?;
        advise(&self.file, start + want as u64, PREFETCH as u64, self.end, libc::POSIX_FADV_WILLNEED);
        slots[lru] = (start, tick, buf.freeze());
        Ok(slots[lru].2.slice(0..length))
    }
}

impl Length for Windowed {
    fn len(&self) -> u64 {
        self.file.len()
    }
}

impl ChunkReader for Windowed {
    type T = store::InputRead;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        self.file.get_read(start)
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        self.bytes(start, length)
    }
}

/// `posix_fadvise` over `[start, min(start + len, end))` of `file` (a hint:
/// errors are ignored; nothing for an object).
fn advise(file: &Input, start: u64, len: u64, end: u64, advice: libc::c_int) {
    use std::os::fd::AsRawFd;
    let Input::Local(file) = file else { return };
    let len = len.min(end.saturating_sub(start));
    if len == 0 && advice == libc::POSIX_FADV_WILLNEED {
        return;
    }
    let (Ok(start), Ok(len)) = (libc::off_t::try_from(start), libc::off_t::try_from(len)) else { return };
    // SAFETY: a plain system call on a descriptor we own; it reads no memory of ours.
    unsafe {
        libc::posix_fadvise(file.file.as_raw_fd(), start, len, advice);
    }
}

// ---------------------------------------------------------------------------
// One part file

/// An open part file: its parsed footer and offset index, and where its latent columns are.
pub struct PartFile {
    path: String,
    file: Input,
    identity: Identity,
    meta: ArrowReaderMetadata,
    /// Leaf column indices of latent1, latent2.
    leaves: [usize; 2],
    /// Leaf column indices of their checksum columns, when the file has them.
    checksum_leaves: Option<[usize; 2]>,
    /// Every row group stores each latent value in its own page, with an offset index.
    paged: bool,
    /// The stored checksums of the row groups read so far (shared with this file's views).
    stored: Arc<Mutex<HashMap<usize, Arc<StoredChecksums>>>>,
}

/// Open a local part file: never blocks, and refuses a FIFO, socket, device
/// or directory named like one before reading a byte
/// ([`crate::image::safe_open::open_regular`]).
fn open_local(path: &Path) -> Result<(File, std::fs::Metadata)> {
    crate::image::safe_open::open_regular(path).map_err(|e| local_error(path, e))
}

/// A local file's opening error as the reader reports it.
fn local_error(path: &Path, e: crate::error::Error) -> ReadError {
    match e {
        crate::error::Error::NotRegular { path, what } => ReadError::NotRegular { path, what },
        crate::error::Error::Io { path, source } => io_error(&path, source),
        other => ReadError::File { path: path.display().to_string(), message: other.to_string() },
    }
}

fn io_error(path: &str, e: std::io::Error) -> ReadError {
    ReadError::Io { path: path.to_owned(), kind: e.kind(), message: e.to_string() }
}

pub(crate) fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

impl PartFile {
    /// Open `path` (a local path or an `s3://` URL) and parse its footer and offset index.
    pub fn open(path: &Path) -> Result<Self> {
        let shown = path.display().to_string();
        let (pos, identity) = Input::open(path).map_err(|e| match e {
            OpenError::Local(e) => local_error(path, e),
            OpenError::Store(e) => ReadError::Store(e),
        })?;
        let options = ArrowReaderOptions::new()
            .with_column_index_policy(PageIndexPolicy::Skip)
            .with_offset_index_policy(PageIndexPolicy::Optional)
            .with_column_stats_policy(ParquetStatisticsPolicy::SkipAll)
            .with_encoding_stats_policy(ParquetStatisticsPolicy::SkipAll)
            .with_size_stats_policy(ParquetStatisticsPolicy::SkipAll);
        let meta = catch_unwind(AssertUnwindSafe(|| ArrowReaderMetadata::load(&pos, options)))
            .map_err(|p| ReadError::File {
                path: shown.clone(),
                message: format!("the Parquet reader crashed (caught panic: {})", panic_message(p)),
            })?
            .map_err(|e| match pos.failure() {
                Some(failure) => ReadError::Store(failure),
                None => ReadError::File {
                    path: shown.clone(),
                    message: format!("{e} (a truncated file, or one whose writer never finished)"),
                },
            })?;
        let schema = meta.metadata().file_metadata().schema_descr();
        let top_level = |name: &str| {
            (0..schema.num_columns()).find(|&i| {
                let c = schema.column(i);
                c.path().parts().len() == 1 && c.path().parts()[0] == name
            })
        };
        let mut leaves = [0usize; 2];
        for (k, name) in LATENT_COLUMNS.iter().enumerate() {
            leaves[k] = top_level(name).ok_or_else(|| ReadError::File {
                path: shown.clone(),
                message: format!("it has no '{name}' column"),
            })?;
            let physical = schema.column(leaves[k]).physical_type();
            if physical != parquet::basic::Type::BYTE_ARRAY {
                return Err(ReadError::File {
                    path: shown,
                    message: format!("column '{name}' is {physical}, not binary"),
                });
            }
        }
        let int64 = |i: usize| schema.column(i).physical_type() == parquet::basic::Type::INT64;
        let checksum_leaves = match (top_level(CHECKSUM_COLUMNS[0]), top_level(CHECKSUM_COLUMNS[1])) {
            (Some(a), Some(b)) if int64(a) && int64(b) => Some([a, b]),
            (None, None) => None,
            _ => {
                return Err(ReadError::File {
                    path: shown,
                    message: format!(
                        "its checksum columns ({}) are incomplete or not 64-bit integers",
                        CHECKSUM_COLUMNS.join(", ")
                    ),
                })
            }
        };
        let md = meta.metadata();
        let paged = md.num_row_groups() > 0
            && md.page_index().is_some_and(|index| {
                (0..md.num_row_groups()).all(|rg| {
                    let rows = md.row_group(rg).num_rows();
                    leaves.iter().all(|&col| {
                        index.page_locations(rg, col).is_some_and(|locs| {
                            locs.len() as i64 == rows
                                && locs.iter().enumerate().all(|(i, l)| l.first_row_index == i as i64)
                        })
                    })
                })
            });
        Ok(PartFile {
            path: shown,
            file: pos,
            identity,
            meta,
            leaves,
            checksum_leaves,
            paged,
            stored: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    /// The identity of the file this footer was read from.
    pub fn identity(&self) -> Identity {
        self.identity.clone()
    }

    /// Whether the file stores a checksum of every latent.
    pub fn has_checksums(&self) -> bool {
        self.checksum_leaves.is_some()
    }

    /// The footer's key-value metadata, in file order.
    pub fn key_values(&self) -> Vec<(String, Option<String>)> {
        let kv = self.meta.metadata().file_metadata().key_value_metadata();
        kv.map(|kv| kv.iter().map(|e| (e.key.clone(), e.value.clone())).collect()).unwrap_or_default()
    }

    /// The footer's value under `key`.
    pub fn key_value(&self, key: &str) -> Option<String> {
        self.key_values().into_iter().find(|(k, _)| k == key).and_then(|(_, v)| v)
    }

    /// Where the pages of latent column `k` of `row_group` are (paged files).
    pub fn page_locations(&self, row_group: usize, k: usize) -> Option<Vec<PageLocation>> {
        self.meta.metadata().page_index()?.page_locations(row_group, self.leaves[k]).cloned()
    }

    /// The stored checksums of `row_group` (None when the file has none),
    /// read once per open file: one small decode of the two checksum columns.
    pub fn stored_checksums(&self, row_group: usize) -> Result<Option<Arc<StoredChecksums>>, String> {
        let Some(leaves) = self.checksum_leaves else { return Ok(None) };
        if let Some(hit) = self.stored.lock().unwrap_or_else(|e| e.into_inner()).get(&row_group) {
            return Ok(Some(hit.clone()));
        }
        let md = self.meta.metadata();
        let rows = md.row_group(row_group).num_rows() as usize;
        let mask = ProjectionMask::leaves(md.file_metadata().schema_descr(), leaves);
        let read = catch_unwind(AssertUnwindSafe(|| -> Result<StoredChecksums, String> {
            let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(self.file.clone(), self.meta.clone())
                .with_row_groups(vec![row_group])
                .with_projection(mask)
                .with_batch_size(rows.max(1))
                .build()
                .map_err(|e| e.to_string())?;
            let mut out: StoredChecksums = [Vec::with_capacity(rows), Vec::with_capacity(rows)];
            for batch in reader {
                let batch = batch.map_err(|e| e.to_string())?;
                for (k, name) in CHECKSUM_COLUMNS.iter().enumerate() {
                    let col = batch.column_by_name(name).ok_or_else(|| format!("the reader returned no '{name}'"))?;
                    let value = |i: usize| -> Result<u64, String> {
                        match col.data_type() {
                            DataType::UInt64 => Ok(col.as_primitive::<UInt64Type>().value(i)),
                            DataType::Int64 => Ok(col.as_primitive::<Int64Type>().value(i) as u64),
                            other => Err(format!("'{name}' has Arrow type {other}, not uint64")),
                        }
                    };
                    for i in 0..col.len() {
                        out[k].push(if col.is_null(i) { None } else { Some(value(i)?) });
                    }
                }
            }
            if out.iter().any(|v| v.len() != rows) {
                return Err(format!("the checksum columns do not hold the row group's {rows} rows"));
            }
            Ok(out)
        }))
        .unwrap_or_else(|p| Err(format!("the Parquet reader crashed (caught panic: {})", panic_message(p))))
        .map_err(|e| format!("cannot read the stored checksums: {e}"))?;
        let read = Arc::new(read);
        self.stored.lock().unwrap_or_else(|e| e.into_inner()).insert(row_group, read.clone());
        Ok(Some(read))
    }

    /// True when every latent value is its own page (random access costs one read per value).
    pub fn paged(&self) -> bool {
        self.paged
    }

    /// Rows in each row group.
    pub fn row_group_rows(&self) -> Vec<i64> {
        self.meta.metadata().row_groups().iter().map(|rg| rg.num_rows()).collect()
    }

    /// Top-level column names, in schema order.
    pub fn column_names(&self) -> Vec<String> {
        let schema = self.meta.metadata().file_metadata().schema_descr();
        schema.root_schema().get_fields().iter().map(|f| f.name().to_owned()).collect()
    }

    /// The parsed footer (with the offset index).
    pub(crate) fn metadata(&self) -> &ArrowReaderMetadata {
        &self.meta
    }

    /// Where its bytes are read from.
    pub(crate) fn input(&self) -> &Input {
        &self.file
    }

    pub(crate) fn check_row_group(&self, row_group: usize) -> Result<()> {
        self.check_request(row_group, 0).or_else(|e| match e {
            ReadError::OutOfRange(m) if m.contains("does not exist") => Ok(()), // an empty row group
            e => Err(e),
        })
    }

    fn check_request(&self, row_group: usize, row: usize) -> Result<()> {
        let md = self.meta.metadata();
        if row_group >= md.num_row_groups() {
            return Err(ReadError::OutOfRange(format!(
                "'{}' has {} row groups, the index asks for row group {row_group}: the index is stale; rebuild it",
                self.path,
                md.num_row_groups()
            )));
        }
        let n = md.row_group(row_group).num_rows() as usize;
        if row >= n {
            return Err(ReadError::OutOfRange(format!(
                "'{}' row group {row_group} row {row} does not exist (the row group has {n} rows): rebuild the index",
                self.path
            )));
        }
        Ok(())
    }

    /// Where the pages of latent column `k` of `row_group` lie, when every
    /// value is its own page and the fast paths can read them: the page
    /// locations, the column chunk, and the column's max definition level.
    fn direct_pages(&self, row_group: usize, k: usize) -> Option<(Vec<PageLocation>, &ColumnChunkMetaData, i16)> {
        let md = self.meta.metadata();
        let leaf = self.leaves[k];
        let locs = md.page_index().and_then(|i| i.page_locations(row_group, leaf))?;
        let descr = md.file_metadata().schema_descr().column(leaf);
        let (max_def, max_rep) = (descr.max_def_level(), descr.max_rep_level());
        let chunk = md.row_group(row_group).column(leaf);
        // The page reader takes a first page that does not start the chunk
        // for a dictionary page: give it every location, skip to the row's.
        if max_rep != 0
            || max_def > 1
            || chunk.dictionary_page_offset().is_some()
            || locs.first().map_or(true, |l| l.offset as u64 != chunk.byte_range().0)
        {
            return None;
        }
        Some((locs.clone(), chunk, max_def))
    }

    /// The bytes of row `row`'s page of latent column `k` in `row_group`, when
    /// the fast path reads it from its own page (what a read will fetch).
    fn page_range(&self, row_group: usize, row: usize, k: usize) -> Option<std::ops::Range<u64>> {
        let (locs, ..) = self.direct_pages(row_group, k)?;
        let l = locs.get(row)?;
        Some(l.offset as u64..l.offset as u64 + l.compressed_page_size as u64)
    }

    /// The bytes of `row_group`'s checksum column chunks (side by side: one range), when the file
    /// has them and they are not cached yet (what a checked read will fetch).
    fn checksum_range(&self, row_group: usize) -> Option<std::ops::Range<u64>> {
        let leaves = self.checksum_leaves?;
        if self.stored.lock().unwrap_or_else(|e| e.into_inner()).contains_key(&row_group) {
            return None;
        }
        let rg = self.meta.metadata().row_groups().get(row_group)?;
        let (a, b) = (rg.column(leaves[0]).byte_range(), rg.column(leaves[1]).byte_range());
        Some(a.0.min(b.0)..(a.0 + a.1).max(b.0 + b.1))
    }

    /// This file, its reads served from `buffers` (`(start, bytes)`) where they cover them.
    pub(crate) fn with_buffers(&self, buffers: Vec<(u64, Bytes)>) -> PartFile {
        let file = match &self.file {
            Input::Remote(r) => Input::Remote(r.with_buffers(buffers)),
            local => local.clone(),
        };
        PartFile {
            path: self.path.clone(),
            file,
            identity: self.identity.clone(),
            meta: self.meta.clone(),
            leaves: self.leaves,
            checksum_leaves: self.checksum_leaves,
            paged: self.paged,
            stored: self.stored.clone(),
        }
    }

    /// Row `row` of latent column `k` of `row_group`, read from its own page
    /// (paged files): one positional read, one decompression (none for
    /// uncompressed latents), no Arrow array.
    fn page_value(&self, row_group: usize, row: usize, k: usize) -> Result<Direct, String> {
        let Some((locs, chunk, max_def)) = self.direct_pages(row_group, k).filter(|(l, ..)| row < l.len()) else {
            return Ok(Direct::Unsupported);
        };
        let rows = self.meta.metadata().row_group(row_group).num_rows() as usize;
        let mut pages = SerializedPageReader::new(Arc::new(self.file.clone()), chunk, rows, Some(locs))
            .map_err(|e| e.to_string())?;
        for _ in 0..row {
            pages.skip_next_page().map_err(|e| e.to_string())?;
        }
        let page = pages.get_next_page().map_err(|e| e.to_string())?.ok_or("the page is missing")?;
        direct_value(page, max_def)
    }

    /// Every value of latent column `k` of `row_group`, in row order, each
    /// parsed by `parse` (or why it cannot be), for a full scan of a paged
    /// file: the column chunk is read front to back in large windows
    /// ([`SeqWindow`], from `input`, a descriptor of its own) and each
    /// uncompressed value is parsed in place, no copy. `Ok(None)`: the
    /// pages are not ones this path decodes (the Arrow reader takes over);
    /// `Err`: the read failed (the caller retries row by row to blame a row).
    fn scan_column<T>(
        &self,
        input: &Input,
        row_group: usize,
        k: usize,
        parse: Parse<'_, T>,
    ) -> Result<Option<Vec<Result<T, String>>>, String> {
        let Some((locs, chunk, max_def)) = self.direct_pages(row_group, k) else {
            return Ok(None);
        };
        let rows = self.meta.metadata().row_group(row_group).num_rows() as usize;
        if locs.len() != rows {
            return Ok(None);
        }
        let (start, len) = chunk.byte_range();
        let window = Arc::new(Windowed::new(input.clone(), start, start.saturating_add(len), 1));
        let column = LATENT_COLUMNS[k];
        let result = catch_unwind(AssertUnwindSafe(|| -> Result<Option<Vec<Result<T, String>>>, String> {
            let mut pages = SerializedPageReader::new(window, chunk, rows, Some(locs)).map_err(|e| e.to_string())?;
            let mut out = Vec::with_capacity(rows);
            for row in 0..rows {
                let page = pages.get_next_page().map_err(|e| e.to_string())?.ok_or("the page is missing")?;
                out.push(match direct_value(page, max_def)? {
                    Direct::Value(buf, range) => parse(row, k, &buf[range]).map_err(|e| format!("{column}: {e}")),
                    Direct::Null => Err(format!("{column} is null")),
                    Direct::Unsupported => return Ok(None),
                });
            }
            Ok(Some(out))
        }));
        result.unwrap_or_else(|p| Err(format!("the Parquet reader crashed (caught panic: {})", panic_message(p))))
    }

    /// Call `f(row, column, value)` for both latent columns of each of `rows`
    /// (sorted, distinct) of `row_group`, in row order. `scan` reads the
    /// column chunks in large sequential windows (for reading every row).
    fn for_each_value(&self, row_group: usize, rows: &[usize], scan: bool, f: &mut ValueSink) -> Result<(), String> {
        let num_rows = self.meta.metadata().row_group(row_group).num_rows() as usize;
        let mut selectors = Vec::new();
        let mut next = 0usize;
        for &r in rows {
            if r > next {
                selectors.push(RowSelector::skip(r - next));
            }
            selectors.push(RowSelector::select(1));
            next = r + 1;
        }
        let whole = rows.len() == num_rows;
        let mask = ProjectionMask::leaves(self.meta.metadata().file_metadata().schema_descr(), self.leaves);
        let run = |reader: Box<dyn Iterator<Item = std::result::Result<RecordBatch, arrow_schema::ArrowError>>>,
                   f: &mut ValueSink|
         -> Result<(), String> {
            let mut at = 0usize;
            for batch in reader {
                let batch = batch.map_err(|e| e.to_string())?;
                if batch.num_rows() + at > rows.len() {
                    return Err("the reader returned more rows than asked for".into());
                }
                for (k, name) in LATENT_COLUMNS.iter().enumerate() {
                    let col = batch.column_by_name(name).ok_or_else(|| format!("the reader returned no '{name}'"))?;
                    for i in 0..batch.num_rows() {
                        let value = binary_value(col.as_ref(), i)?;
                        f(rows[at + i], k, value);
                    }
                }
                at += batch.num_rows();
            }
            if at != rows.len() {
                return Err(format!("the row group ended after {at} of the {} rows asked for", rows.len()));
            }
            Ok(())
        };
        let result = catch_unwind(AssertUnwindSafe(|| -> Result<(), String> {
            if self.paged && !scan {
                let mut direct = true;
                'rows: for &r in rows {
                    for k in 0..2 {
                        match self.page_value(row_group, r, k)? {
                            Direct::Value(buf, range) => f(r, k, Some(&buf[range])),
                            Direct::Null => f(r, k, None),
                            Direct::Unsupported => {
                                direct = false;
                                break 'rows;
                            }
                        }
                    }
                }
                if direct {
                    return Ok(());
                }
            }
            macro_rules! build {
                ($input:expr) => {{
                    let mut b = ParquetRecordBatchReaderBuilder::new_with_metadata($input, self.meta.clone())
                        .with_row_groups(vec![row_group])
                        .with_projection(mask.clone())
                        .with_batch_size(BATCH_ROWS);
                    if !whole {
                        b = b
                            .with_row_selection(RowSelection::from(selectors.clone()))
                            .with_row_selection_policy(RowSelectionPolicy::Selectors);
                    }
                    b.build().map_err(|e| e.to_string())?
                }};
            }
            if scan {
                let rg = self.meta.metadata().row_group(row_group);
                let ranges = self.leaves.map(|c| rg.column(c).byte_range());
                let start = ranges.iter().map(|r| r.0).min().unwrap_or(0);
                let end = ranges.iter().map(|r| r.0 + r.1).max().unwrap_or(0);
                let input = Windowed::new(self.file.clone(), start, end, 2);
                run(Box::new(build!(input)), f)
            } else {
                run(Box::new(build!(self.file.clone())), f)
            }
        }));
        result.unwrap_or_else(|p| Err(format!("the Parquet reader crashed (caught panic: {})", panic_message(p))))
    }

    /// Read `rows` (sorted, distinct) of `row_group`, handing each value to
    /// `f`. A failure of the whole read is retried row by row, so a damaged
    /// page is blamed on its own row only.
    fn visit_rows<T>(
        &self,
        row_group: usize,
        rows: &[usize],
        scan: bool,
        parse: Parse<'_, T>,
    ) -> Vec<(usize, [Result<T, String>; 2])> {
        let mut out: Vec<(usize, [Slot<T>; 2])> = rows.iter().map(|&r| (r, [None, None])).collect();
        let pos: HashMap<usize, usize> = rows.iter().enumerate().map(|(i, &r)| (r, i)).collect();
        let mut visit = |row: usize, k: usize, value: Option<&[u8]>| {
            let parsed = match value {
                None => Err(format!("{} is null", LATENT_COLUMNS[k])),
                Some(b) => parse(row, k, b).map_err(|e| format!("{}: {e}", LATENT_COLUMNS[k])),
            };
            if let Some(&i) = pos.get(&row) {
                out[i].1[k] = Some(parsed);
            }
        };
        match self.for_each_value(row_group, rows, scan, &mut visit) {
            Ok(()) => {}
            Err(e) if rows.len() == 1 => {
                for slot in out[0].1.iter_mut().filter(|s| s.is_none()) {
                    *slot = Some(Err(format!("cannot read the latents: {e}")));
                }
            }
            Err(_) => {
                for i in 0..rows.len() {
                    if out[i].1.iter().all(|s| matches!(s, Some(Ok(_)))) {
                        continue;
                    }
                    let one = self.visit_rows(row_group, &rows[i..=i], scan, parse);
                    let [a, b] = one.into_iter().next().expect("one row asked, one row answered").1;
                    out[i].1 = [Some(a), Some(b)];
                }
            }
        }
        out.into_iter()
            .map(|(r, [a, b])| {
                let missing = || Err("the reader returned no value".to_string());
                (r, [a.unwrap_or_else(missing), b.unwrap_or_else(missing)])
            })
            .collect()
    }
}

/// The value of a page that holds exactly one PLAIN value (a paged latent
/// column's page), as a range of the page's buffer; `Unsupported` for any
/// other page.
fn direct_value(page: Page, max_def: i16) -> Result<Direct, String> {
    let short = || "the page is shorter than its header says".to_string();
    let plain_value = |buf: Bytes, at: usize| -> Result<Direct, String> {
        let len = buf.get(at..at + 4).ok_or_else(short)?;
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let range = at + 4..at + 4 + len;
        if range.end > buf.len() {
            return Err(short());
        }
        Ok(Direct::Value(buf, range))
    };
    match page {
        Page::DataPage { buf, num_values, encoding, def_level_encoding, .. } => {
            if num_values != 1 || encoding != Encoding::PLAIN {
                return Ok(Direct::Unsupported);
            }
            let mut at = 0;
            if max_def == 1 {
                if def_level_encoding != Encoding::RLE {
                    return Ok(Direct::Unsupported);
                }
                let len = buf.get(0..4).ok_or_else(short)?;
                let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
                let levels = buf.get(4..4 + len).ok_or_else(short)?;
                if first_level(levels).ok_or_else(short)? == 0 {
                    return Ok(Direct::Null);
                }
                at = 4 + len;
            }
            plain_value(buf, at)
        }
        Page::DataPageV2 { buf, num_values, encoding, num_nulls, def_levels_byte_len, rep_levels_byte_len, .. } => {
            if num_values != 1 || encoding != Encoding::PLAIN {
                return Ok(Direct::Unsupported);
            }
            if num_nulls == 1 {
                return Ok(Direct::Null);
            }
            plain_value(buf, def_levels_byte_len as usize + rep_levels_byte_len as usize)
        }
        _ => Ok(Direct::Unsupported),
    }
}

/// The first level of an RLE / bit-packed hybrid run of bit width 1 (a
/// definition level of a flat nullable column), or None when cut short.
fn first_level(levels: &[u8]) -> Option<u8> {
    // Skip the run header (a ULEB128 varint); either kind of run stores the
    // first value in the low bit of the byte after it.
    let header_len = levels.iter().position(|b| b & 0x80 == 0)? + 1;
    Some(levels.get(header_len)? & 1)
}

pub(crate) fn binary_value(col: &dyn Array, i: usize) -> Result<Option<&[u8]>, String> {
    if col.is_null(i) {
        return Ok(None);
    }
    match col.data_type() {
        DataType::Binary => Ok(Some(col.as_binary::<i32>().value(i))),
        DataType::LargeBinary => Ok(Some(col.as_binary::<i64>().value(i))),
        DataType::BinaryView => Ok(Some(col.as_binary_view().value(i))),
        DataType::Utf8 => Ok(Some(col.as_string::<i32>().value(i).as_bytes())),
        DataType::LargeUtf8 => Ok(Some(col.as_string::<i64>().value(i).as_bytes())),
        other => Err(format!("the latent column has Arrow type {other}, not binary")),
    }
}

// ---------------------------------------------------------------------------
// The per-process cache of open files

struct Cache {
    pid: u32,
    tick: u64,
    files: HashMap<PathBuf, (u64, Arc<PartFile>)>,
}

static CACHE: OnceLock<Mutex<Cache>> = OnceLock::new();

fn cache() -> std::sync::MutexGuard<'static, Cache> {
    let c = CACHE.get_or_init(|| Mutex::new(Cache { pid: std::process::id(), tick: 0, files: HashMap::new() }));
    let mut guard = c.lock().unwrap_or_else(|e| e.into_inner());
    let pid = std::process::id();
    if guard.pid != pid {
        // A forked child: its own files (pread keeps shared descriptors safe, but start clean).
        guard.files.clear();
        guard.pid = pid;
    }
    guard
}

/// The open part file at `path`, from the cache when the file is unchanged.
/// An object (`s3://`) is not asked again: its later reads carry its ETag,
/// so one replaced since is an error, and [`forget`] drops it.
pub fn open_cached(path: &Path) -> Result<Arc<PartFile>> {
    let shown = path.display().to_string();
    let id = if store::is_remote(&shown) {
        None
    } else {
        Some(store::local_identity(&std::fs::metadata(path).map_err(|e| io_error(&shown, e))?))
    };
    {
        let mut c = cache();
        c.tick += 1;
        let tick = c.tick;
        if let Some((used, f)) = c.files.get_mut(path) {
            if id.as_ref().map_or(true, |id| &f.identity == id) {
                *used = tick;
                return Ok(f.clone());
            }
        }
    }
    let opened = Arc::new(PartFile::open(path)?);
    let mut c = cache();
    c.tick += 1;
    let tick = c.tick;
    if c.files.len() >= CACHE_FILES && !c.files.contains_key(path) {
        if let Some(oldest) = c.files.iter().min_by_key(|(_, (used, _))| *used).map(|(p, _)| p.clone()) {
            c.files.remove(&oldest);
        }
    }
    c.files.insert(path.to_path_buf(), (tick, opened.clone()));
    Ok(opened)
}

/// Forget the cached file at `path` (reopened on its next read).
pub fn forget(path: &Path) {
    cache().files.remove(path);
}

/// Forget every cached file (they are reopened on the next read).
pub fn clear_cache() {
    cache().files.clear();
}

// ---------------------------------------------------------------------------
// Requests

/// One pair to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub path: PathBuf,
    pub row_group: usize,
    pub row: usize,
    /// The identity of the file as the caller saw it (when it read the row's
    /// other columns): another file under this path is [`ReadError::Changed`].
    pub expect: Option<Identity>,
}

/// A pair's two latents.
pub type Pair = [Latent; 2];

/// Read the pairs of `requests`, in parallel on the shared pool: requests of
/// one row group are served by one read. Results are in request order. With
/// `verify`, each latent's bytes are checked against their stored checksum
/// (files without the checksum columns are read unchecked).
pub fn read_pairs(requests: &[Request], num_threads: Option<usize>, verify: bool) -> Vec<Result<Pair>> {
    let pool = pool::pool(num_threads);
    // Each file opened once per call (from the cache; new ones in parallel).
    let mut paths: Vec<&Path> = requests.iter().map(|r| r.path.as_path()).collect();
    paths.sort_unstable();
    paths.dedup();
    let opened: Vec<Result<Arc<PartFile>>> = pool.install(|| paths.par_iter().map(|p| open_cached(p)).collect());
    let mut files: HashMap<&Path, Result<Arc<PartFile>>> = paths.into_iter().zip(opened).collect();
    // In a paged file each request is its own unit of work (one row's pages);
    // in other files the requests of one row group share its read.
    let mut groups: BTreeMap<(&Path, usize, Option<usize>), Vec<usize>> = BTreeMap::new();
    for (i, r) in requests.iter().enumerate() {
        let path = r.path.as_path();
        let is_paged = matches!(files.get(path), Some(Ok(f)) if f.paged);
        groups.entry((path, r.row_group, is_paged.then_some(r.row))).or_default().push(i);
    }
    let keys: Vec<(&Path, usize, Option<usize>)> = groups.keys().copied().collect();
    prefetch_pages(&mut files, &keys, verify);
    let groups: Vec<_> = groups.into_iter().collect();
    let served: Vec<Vec<(usize, Result<Pair>)>> = pool.install(|| {
        groups.par_iter().map(|((path, rg, _), idx)| read_group(&files[path], *rg, idx, requests, verify)).collect()
    });
    let mut out: Vec<Option<Result<Pair>>> = (0..requests.len()).map(|_| None).collect();
    for (i, r) in served.into_iter().flatten() {
        out[i] = Some(r);
    }
    out.into_iter().map(|r| r.unwrap_or_else(|| Err(ReadError::OutOfRange("request left unanswered".into())))).collect()
}

/// The pages that the row requests `(path, row group, Some(row))` of paged
/// objects will read, fetched ahead: every range of every object at once
/// (bounded by the store's permits), a latent page per GET (or pages that
/// touch merged), with `verify` each row group's checksum column chunks not
/// cached yet (one more range per row group). Each such file in `files` is
/// replaced by a view whose reads are served from those buffers, or by the
/// store error.
fn prefetch_pages<'a>(
    files: &mut HashMap<&'a Path, Result<Arc<PartFile>>>,
    keys: &[(&'a Path, usize, Option<usize>)],
    verify: bool,
) {
    let mut wanted: HashMap<&Path, Vec<std::ops::Range<u64>>> = HashMap::new();
    let mut groups: HashSet<(&Path, usize)> = HashSet::new();
    for &(path, rg, row) in keys {
        let (Some(row), Some(Ok(file))) = (row, files.get(path)) else { continue };
        if file.file.remote().is_none() || file.check_request(rg, row).is_err() {
            continue;
        }
        let ranges = wanted.entry(path).or_default();
        ranges.extend((0..2).filter_map(|k| file.page_range(rg, row, k)));
        if verify && groups.insert((path, rg)) {
            ranges.extend(file.checksum_range(rg));
        }
    }
    let mut jobs = Vec::with_capacity(wanted.len());
    let mut order = Vec::with_capacity(wanted.len());
    for (path, ranges) in wanted {
        if let Some(Ok(file)) = files.get(path) {
            if let Some(remote) = file.file.remote() {
                jobs.push((remote.object().clone(), ranges));
                order.push(path);
            }
        }
    }
    for (path, fetched) in order.into_iter().zip(store::fetch_all(&jobs)) {
        let Some(Ok(file)) = files.get(path) else { continue };
        let view = match fetched {
            Ok(buffers) => Ok(Arc::new(file.with_buffers(buffers))),
            Err(e) => {
                if e.kind == store::StoreErrorKind::Changed {
                    forget(path);
                }
                Err(ReadError::Store(e))
            }
        };
        files.insert(path, view);
    }
}

fn read_group(
    file: &Result<Arc<PartFile>>,
    rg: usize,
    idx: &[usize],
    requests: &[Request],
    verify: bool,
) -> Vec<(usize, Result<Pair>)> {
    let file = match file {
        Ok(f) => f,
        Err(e) => return idx.iter().map(|&i| (i, Err(e.clone()))).collect(),
    };
    let mut answers = Vec::with_capacity(idx.len());
    let mut rows = Vec::new();
    for &i in idx {
        let req = &requests[i];
        if req.expect.as_ref().is_some_and(|id| id != &file.identity) {
            answers.push((i, Err(ReadError::Changed { path: file.path.clone() })));
            continue;
        }
        match file.check_request(rg, req.row) {
            Ok(()) => rows.push(req.row),
            Err(e) => answers.push((i, Err(e))),
        }
    }
    rows.sort_unstable();
    rows.dedup();
    if rows.is_empty() {
        return answers;
    }
    let stored = if verify { file.stored_checksums(rg) } else { Ok(None) };
    let parse = |row: usize, k: usize, bytes: &[u8]| -> Result<Latent, String> {
        let stored = stored.as_ref().map_err(Clone::clone)?;
        // (Measured: one pass of XXH3 over the value, then the copy, costs less than both in
        // 16-32 KiB pieces through the streaming hasher: 8 % against 24 % of a warm batch read.)
        if let Some(e) = ChecksumCheck::of(stored.as_deref(), row, k, bytes).error(k) {
            return Err(e);
        }
        parse_npy(bytes)
    };
    let values = file.visit_rows(rg, &rows, false, &parse);
    let by_row: HashMap<usize, &[Result<Latent, String>; 2]> = values.iter().map(|(r, v)| (*r, v)).collect();
    for &i in idx {
        let row = requests[i].row;
        let Some([a, b]) = by_row.get(&row) else { continue };
        // A read of an object that failed in the store: its error, with the URL and status.
        let err = |message: &String| match file.file.failure() {
            Some(failure) => ReadError::Store(failure),
            None => ReadError::Row { path: file.path.clone(), row_group: rg, row, message: message.clone() },
        };
        answers.push((
            i,
            match (a, b) {
                (Ok(a), Ok(b)) => Ok([a.clone(), b.clone()]),
                (Err(e), _) | (_, Err(e)) => Err(err(e)),
            },
        ));
    }
    answers
}

/// Every row of a part file, as `check_file` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowCheck {
    pub row_group: usize,
    pub row: usize,
    pub latents: [Result<LatentInfo, String>; 2],
}

/// Read every latent of the part file at `path` and report each value's
/// dtype, shape and count of non-finite numbers, or why it cannot be read.
///
/// In a paged file (one page per value) each latent column chunk is one unit
/// of work on the shared pool (so two columns of one row group read in
/// parallel), read front to back through a descriptor of its own opened for
/// sequential reading, and checked in place; a chunk that fails is re-read
/// row by row to name the row. Other files are read a row group at a time
/// through the Arrow reader.
pub fn check_file(path: &Path, num_threads: Option<usize>) -> Result<Vec<RowCheck>> {
    let file = open_cached(path)?;
    let groups = file.meta.metadata().num_row_groups();
    let rows_of = |rg: usize| file.meta.metadata().row_group(rg).num_rows() as usize;
    let by_rows = |rg: usize| -> Vec<RowCheck> {
        let rows: Vec<usize> = (0..rows_of(rg)).collect();
        let stored = file.stored_checksums(rg);
        file.visit_rows(rg, &rows, true, &|row, k, bytes| inspect_checked(&stored, row, k, bytes))
            .into_iter()
            .map(|(row, latents)| RowCheck { row_group: rg, row, latents })
            .collect()
    };
    if !file.paged {
        return Ok(pool::pool(num_threads)
            .install(|| (0..groups).into_par_iter().map(by_rows).collect::<Vec<_>>())
            .into_iter()
            .flatten()
            .collect());
    }
    scan_input(&file)?; // a file changed since its footer was read is an error, not a scan
    let per_group: Vec<Vec<RowCheck>> = pool::pool(num_threads).install(|| {
        let units: Vec<(usize, usize)> = (0..groups).flat_map(|rg| [(rg, 0), (rg, 1)]).collect();
        let mut columns: Vec<Option<Vec<Result<LatentInfo, String>>>> = units
            .par_iter()
            .with_max_len(1)
            .map(|&(rg, k)| {
                let input = scan_input(&file).ok()?;
                let stored = file.stored_checksums(rg);
                let parse = |row: usize, k: usize, bytes: &[u8]| inspect_checked(&stored, row, k, bytes);
                file.scan_column(&input, rg, k, &parse).ok().flatten()
            })
            .collect();
        let pairs: Vec<_> = (0..groups).map(|rg| (rg, columns[2 * rg].take(), columns[2 * rg + 1].take())).collect();
        pairs
            .into_par_iter()
            .map(|(rg, a, b)| match (a, b) {
                (Some(a), Some(b)) if a.len() == rows_of(rg) && b.len() == rows_of(rg) => a
                    .into_iter()
                    .zip(b)
                    .enumerate()
                    .map(|(row, (a, b))| RowCheck { row_group: rg, row, latents: [a, b] })
                    .collect(),
                // not decodable in place, or a read failed: row by row, so a failure names its row
                _ => by_rows(rg),
            })
            .collect()
    });
    Ok(per_group.into_iter().flatten().collect())
}

/// [`inspect_npy`] of a value, with its bytes checked against `stored`.
fn inspect_checked(
    stored: &Result<Option<Arc<StoredChecksums>>, String>,
    row: usize,
    k: usize,
    bytes: &[u8],
) -> Result<LatentInfo, String> {
    let stored = stored.as_ref().map_err(Clone::clone)?;
    let checksum = ChecksumCheck::of(stored.as_deref(), row, k, bytes);
    Ok(LatentInfo { checksum, ..inspect_npy(bytes)? })
}

/// A column that cannot be decoded, as [`check_columns`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnProblem {
    pub row_group: usize,
    /// The column's path (`latent1_shape.list.item` for a list's values).
    pub column: String,
    pub message: String,
}

/// Decode every page of every column of the part file at `path` but the two
/// latent columns (which [`check_file`] reads): each failure names its row
/// group and column. The whole file is decoded in one pass; a row group that
/// fails is decoded again one column at a time to name the column.
pub fn check_columns(path: &Path) -> Result<Vec<ColumnProblem>> {
    let file = open_cached(path)?;
    let md = file.meta.metadata();
    let schema = md.file_metadata().schema_descr();
    let others: Vec<usize> = (0..schema.num_columns()).filter(|i| !file.leaves.contains(i)).collect();
    let decode = |groups: Vec<usize>, leaves: &[usize]| -> Result<usize, String> {
        catch_unwind(AssertUnwindSafe(|| -> Result<usize, String> {
            let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(file.file.clone(), file.meta.clone())
                .with_row_groups(groups)
                .with_projection(ProjectionMask::leaves(schema, leaves.iter().copied()))
                .with_batch_size(1024)
                .build()
                .map_err(|e| e.to_string())?;
            let mut n = 0;
            for batch in reader {
                n += batch.map_err(|e| e.to_string())?.num_rows();
            }
            Ok(n)
        }))
        .unwrap_or_else(|p| Err(format!("the Parquet reader crashed (caught panic: {})", panic_message(p))))
    };
    let all: Vec<usize> = (0..md.num_row_groups()).collect();
    let total = md.row_groups().iter().map(|rg| rg.num_rows().max(0) as usize).sum::<usize>();
    if others.is_empty() || decode(all.clone(), &others) == Ok(total) {
        return Ok(Vec::new());
    }
    let mut problems = Vec::new();
    for rg in all {
        let rows = md.row_group(rg).num_rows().max(0) as usize;
        match decode(vec![rg], &others) {
            Ok(n) if n == rows => continue,
            Ok(n) => problems.push(ColumnProblem {
                row_group: rg,
                column: "(all)".into(),
                message: format!("decoded {n} rows, the footer says {rows}"),
            }),
            Err(_) => {
                for &leaf in &others {
                    let message = match decode(vec![rg], &[leaf]) {
                        Ok(n) if n == rows => continue,
                        Ok(n) => format!("decoded {n} rows, the footer says {rows}"),
                        Err(e) => e,
                    };
                    problems.push(ColumnProblem {
                        row_group: rg,
                        column: schema.column(leaf).path().string(),
                        message,
                    });
                }
            }
        }
    }
    if problems.is_empty() {
        problems.push(ColumnProblem {
            row_group: 0,
            column: "(all)".into(),
            message: "the columns cannot be decoded together, though each row group decodes alone".into(),
        });
    }
    Ok(problems)
}

/// A descriptor of its own on `file` for the full scan of one column chunk,
/// hinted sequential: the kernel keeps read-ahead state per open file, so
/// each concurrent stream gets its own (and the cached descriptor, which
/// serves random reads, keeps the default read-ahead). Errors when the file
/// changed since its footer was read.
fn scan_input(file: &PartFile) -> Result<Input> {
    if let Input::Remote(_) = &file.file {
        return Ok(file.file.clone()); // each window is its own GET, checked against the ETag
    }
    let (f, meta) = open_local(Path::new(&file.path))?;
    if store::local_identity(&meta) != file.identity {
        return Err(ReadError::File {
            path: file.path.clone(),
            message: "the file changed while it was being read; run again".into(),
        });
    }
    let input = Input::Local(PosFile::new(f, meta.len()));
    advise(&input, 0, 0, 0, libc::POSIX_FADV_SEQUENTIAL);
    Ok(input)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parts::npy::npy_bytes;
    use crate::parts::writer::tests::{row, write_rows};
    use crate::parts::writer::{PartWriter, WriterOptions};

    fn npy_f32(shape: &[usize], values: &[f32]) -> Vec<u8> {
        let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        npy_bytes("<f4", shape, &data)
    }

    #[test]
    fn parses_float32_and_float16() {
        let b = npy_f32(&[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, f32::NAN]);
        let l = parse_npy(&b).unwrap();
        assert_eq!(l.shape, vec![2, 3]);
        match &l.data {
            LatentData::F32(v) => assert_eq!(&v[..5], &[1.0, 2.0, 3.0, 4.0, 5.0]),
            other => panic!("{other:?}"),
        }
        assert_eq!(inspect_npy(&b).unwrap().nonfinite, 1);
        let half: Vec<u8> = [0x3c00u16, 0x7c00, 0x0000].iter().flat_map(|v| v.to_le_bytes()).collect();
        let h = npy_bytes("<f2", &[3], &half);
        assert_eq!(parse_npy(&h).unwrap().data, LatentData::F16(vec![0x3c00, 0x7c00, 0]));
        let info = inspect_npy(&h).unwrap();
        assert_eq!((info.dtype, info.shape.clone(), info.nonfinite), (Dtype::F16, vec![3], 1));
    }

    #[test]
    fn bad_npy_is_a_clear_error() {
        let good = npy_f32(&[2, 2], &[0.0; 4]);
        assert!(parse_npy(b"hello").unwrap_err().contains("NUMPY magic"));
        assert!(parse_npy(&good[..good.len() - 1]).unwrap_err().contains("truncated"));
        let mut long = good.clone();
        long.push(0);
        assert!(parse_npy(&long).unwrap_err().contains("longer"));
        let f8 = npy_bytes("<f8", &[1], &[0; 8]);
        assert!(parse_npy(&f8).unwrap_err().contains("'<f8'"));
        let be = npy_bytes(">f4", &[1], &[0; 4]);
        assert!(parse_npy(&be).unwrap_err().contains("big-endian"));
        let mut fortran = good.clone();
        let at = good.windows(5).position(|w| w == b"False").unwrap();
        fortran[at..at + 5].copy_from_slice(b"True ");
        let e = parse_npy(&fortran).unwrap_err();
        assert!(e.contains("Fortran"), "{e}");
        // Header length past the end of the value.
        let mut cut = good[..20].to_vec();
        cut[8] = 0xff;
        assert!(parse_npy(&cut).unwrap_err().contains("truncated"));
        // Arbitrary junk never panics.
        for n in 0..good.len() {
            let _ = parse_npy(&good[..n]);
            let mut flipped = good.clone();
            flipped[n] ^= 0x5a;
            let _ = parse_npy(&flipped);
        }
    }

    #[test]
    fn nonfinite_counts_match_a_plain_loop() {
        // A xorshift stream of bit patterns with NaN, infinities, the largest
        // finite values and subnormals planted, over lengths around the block size.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let special32 = [0x7fc0_0000u32, 0x7f80_0000, 0xff80_0000, 0x7f7f_ffff, 0x0000_0001, 0xffff_ffff];
        let special16 = [0x7e00u16, 0x7c00, 0xfc00, 0x7bff, 0x0001, 0xffff];
        for n in [0, 1, 15, 16, 17, COUNT_BLOCK - 1, COUNT_BLOCK, COUNT_BLOCK + 3, 3 * COUNT_BLOCK + 5] {
            let v32: Vec<u32> = (0..n)
                .map(|_| {
                    let r = next();
                    if r % 7 == 0 {
                        special32[(r >> 8) as usize % special32.len()]
                    } else {
                        r as u32 & 0x7f7f_ffff
                    }
                })
                .collect();
            let raw: Vec<u8> = v32.iter().flat_map(|v| v.to_le_bytes()).collect();
            let want = v32.iter().filter(|&&b| !f32::from_bits(b).is_finite()).count() as u64;
            assert_eq!(count_nonfinite_f32(&raw), want, "f32, {n} values");
            // Unaligned: the same values one byte into a buffer.
            let shifted = [&[0u8][..], &raw].concat();
            assert_eq!(count_nonfinite_f32(&shifted[1..]), want, "f32 unaligned, {n} values");
            let v16: Vec<u16> = (0..n)
                .map(|_| {
                    let r = next();
                    if r % 7 == 0 {
                        special16[(r >> 8) as usize % special16.len()]
                    } else {
                        r as u16 & 0x7bff
                    }
                })
                .collect();
            let raw: Vec<u8> = v16.iter().flat_map(|v| v.to_le_bytes()).collect();
            let want = v16.iter().filter(|&&b| b & 0x7c00 == 0x7c00).count() as u64;
            assert_eq!(count_nonfinite_f16(&raw), want, "f16, {n} values");
        }
    }

    #[test]
    fn full_scan_equals_row_reads_for_both_codecs() {
        use crate::parts::writer::{Latent as WLatent, LatentCompression, LatentDtype};
        let dir = temp_dir("scan");
        for codec in [LatentCompression::None, LatentCompression::Zstd] {
            let path = dir.join(format!("{codec:?}.parquet"));
            let opts = WriterOptions { row_group_size: 6, latent_compression: codec, ..WriterOptions::default() };
            let writer = PartWriter::create(&path, opts).unwrap();
            let rows: Vec<_> = (0..15)
                .map(|i| {
                    let mut values: Vec<f32> = (0..48).map(|v| (v + i) as f32 * 0.5).collect();
                    if i % 4 == 1 {
                        values[i as usize] = f32::NAN;
                        values[47] = f32::INFINITY;
                    }
                    let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
                    let latent1 = WLatent::from_bytes(LatentDtype::F32, vec![3, 4, 4], &data).unwrap();
                    crate::parts::writer::Row { latent1, ..row(i) }
                })
                .collect();
            writer.submit(rows, || Ok(())).unwrap();
            writer.close().unwrap();
            let file = PartFile::open(&path).unwrap();
            assert!(file.paged());
            let checks = check_file(&path, Some(2)).unwrap();
            assert_eq!(checks.len(), 15);
            for (rg, &n) in file.row_group_rows().iter().enumerate() {
                let rows: Vec<usize> = (0..n as usize).collect();
                let stored = file.stored_checksums(rg);
                for (row, [a, b]) in file.visit_rows(rg, &rows, false, &|r, k, b| inspect_checked(&stored, r, k, b)) {
                    let c = &checks[rg * 6 + row];
                    assert_eq!((c.row_group, c.row), (rg, row));
                    assert_eq!(&c.latents, &[a, b], "{codec:?} row group {rg} row {row}");
                }
            }
            let bad: Vec<_> = checks.iter().filter(|c| c.latents[0].as_ref().unwrap().nonfinite == 2).collect();
            assert_eq!(bad.len(), 4, "{codec:?}: rows 1, 5, 9, 13 hold a NaN and an infinity");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("hpd-reader-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn reads_what_the_writer_wrote() {
        let dir = temp_dir("rw");
        let path = dir.join("part.parquet");
        let opts = WriterOptions { row_group_size: 7, ..WriterOptions::default() };
        let writer = PartWriter::create(&path, opts).unwrap();
        let rows: Vec<_> = (0..17).map(row).collect();
        writer.submit(rows.clone(), || Ok(())).unwrap();
        writer.close().unwrap();
        let file = PartFile::open(&path).unwrap();
        assert_eq!(file.row_group_rows(), vec![7, 7, 3]);
        let requests: Vec<Request> = [(2, 1), (0, 0), (1, 6), (0, 3), (2, 1)]
            .iter()
            .map(|&(g, r)| Request { path: path.clone(), row_group: g, row: r, expect: None })
            .collect();
        let got = read_pairs(&requests, Some(2), true);
        for (req, pair) in requests.iter().zip(&got) {
            let pair = pair.as_ref().unwrap();
            let n = req.row_group * 7 + req.row;
            for (k, latent) in pair.iter().enumerate() {
                let src = if k == 0 { &rows[n].latent1 } else { &rows[n].latent2 };
                let want = parse_npy(src.npy()).unwrap();
                assert_eq!(latent, &want, "row {n} latent {k}");
            }
        }
        let stale = read_pairs(&[Request { path: path.clone(), row_group: 3, row: 0, expect: None }], None, true);
        assert!(matches!(&stale[0], Err(ReadError::OutOfRange(m)) if m.contains("stale")));
        let stale = read_pairs(&[Request { path: path.clone(), row_group: 2, row: 3, expect: None }], None, true);
        assert!(matches!(&stale[0], Err(ReadError::OutOfRange(m)) if m.contains("row group 2 row 3 does not exist")));
        let checks = check_file(&path, Some(2)).unwrap();
        assert_eq!(checks.len(), 17);
        assert!(checks.iter().all(|c| c.latents.iter().all(|l| l.as_ref().is_ok_and(|i| i.nonfinite == 0))));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn damaged_files_are_named_errors() {
        let dir = temp_dir("bad");
        let path = dir.join("cut.parquet");
        let writer = PartWriter::create(&path, WriterOptions::default()).unwrap();
        writer.submit((0..5).map(row).collect(), || Ok(())).unwrap();
        writer.close().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        // Flip bytes in the middle of latent1's column chunk: every row either reads or names its row.
        let (start, len) = {
            let f = PartFile::open(&path).unwrap();
            f.meta.metadata().row_group(0).column(f.leaves[0]).byte_range()
        };
        let mut flipped = bytes.clone();
        for b in &mut flipped[(start + len / 3) as usize..(start + 2 * len / 3) as usize] {
            *b ^= 0xa5;
        }
        let bad = dir.join("flipped.parquet");
        std::fs::write(&bad, &flipped).unwrap();
        let requests: Vec<Request> =
            (0..5).map(|r| Request { path: bad.clone(), row_group: 0, row: r, expect: None }).collect();
        let got = read_pairs(&requests, Some(2), true);
        assert!(got.iter().any(|r| r.is_err()));
        for (r, res) in got.iter().enumerate() {
            if let Err(e) = res {
                let msg = e.to_string();
                assert!(msg.contains("flipped.parquet") && msg.contains(&format!("row {r}")), "{msg}");
            }
        }
        // The full scan agrees with the row reads: the same rows fail, each named.
        let checks = check_file(&bad, Some(2)).unwrap();
        assert_eq!(checks.len(), 5);
        for (c, res) in checks.iter().zip(&got) {
            assert_eq!(c.latents.iter().any(|l| l.is_err()), res.is_err(), "row {}", c.row);
        }
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        let got = read_pairs(&[Request { path: path.clone(), row_group: 0, row: 0, expect: None }], None, true);
        let err = got[0].as_ref().unwrap_err();
        assert!(matches!(err, ReadError::File { .. }), "{err:?}");
        assert!(err.to_string().contains("cut.parquet"));
        let missing =
            read_pairs(&[Request { path: dir.join("nope.parquet"), row_group: 0, row: 0, expect: None }], None, true);
        assert!(matches!(&missing[0], Err(ReadError::Io { kind: std::io::ErrorKind::NotFound, .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn checksums_catch_every_flipped_bit_of_a_latent() {
        let dir = temp_dir("crc");
        let path = dir.join("part.parquet");
        write_rows(&path, 10, 4);
        let clean = std::fs::read(&path).unwrap();
        let (locs, npy_len) = {
            let f = PartFile::open(&path).unwrap();
            assert!(f.has_checksums());
            (f.page_locations(1, 0).unwrap(), row(0).latent1.npy().len())
        };
        // Row 2 of row group 1: every bit of its latent1 value (header and data), one at a time.
        let page_end = (locs[2].offset + locs[2].compressed_page_size as i64) as usize;
        let bad = dir.join("bad.parquet");
        for bit in 0..npy_len * 8 {
            let mut bytes = clean.clone();
            bytes[page_end - npy_len + bit / 8] ^= 1 << (bit % 8);
            std::fs::write(&bad, &bytes).unwrap();
            let req = Request { path: bad.clone(), row_group: 1, row: 2, expect: None };
            let got = read_pairs(std::slice::from_ref(&req), None, true);
            let err = got[0].as_ref().err().unwrap_or_else(|| panic!("bit {bit} not caught")).to_string();
            assert!(err.contains("row group 1 row 2: latent1"), "{err}");
            let checks = check_file(&bad, Some(1)).unwrap();
            let c = &checks[4 + 2].latents[0];
            assert!(
                c.as_ref().map_or(true, |i| matches!(i.checksum, ChecksumCheck::Mismatch { .. })),
                "bit {bit}: {c:?}"
            );
            assert!(checks
                .iter()
                .enumerate()
                .all(|(i, c)| i == 6 || c.latents[0].as_ref().unwrap().checksum == ChecksumCheck::Match));
        }
        // Opting out reads a data flip unchecked.
        let mut bytes = clean.clone();
        bytes[page_end - 3] ^= 0x01;
        std::fs::write(&bad, &bytes).unwrap();
        let req = Request { path: bad.clone(), row_group: 1, row: 2, expect: None };
        let err = read_pairs(std::slice::from_ref(&req), None, true)[0].as_ref().unwrap_err().to_string();
        assert!(err.contains("checksum mismatch: latent1_xxh3 says 0x"), "{err}");
        assert!(read_pairs(&[req], None, false)[0].is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_replaced_file_is_read_again_or_refused() {
        let dir = temp_dir("replace");
        let path = dir.join("part.parquet");
        let write = |target: &Path, offset: i64| {
            let w = PartWriter::create(target, WriterOptions::default()).unwrap();
            w.submit((0..3).map(|i| row(i + offset)).collect(), || Ok(())).unwrap();
            w.close().unwrap();
        };
        write(&path, 0);
        let seen = open_cached(&path).unwrap().identity();
        let req = |expect| Request { path: path.clone(), row_group: 0, row: 1, expect };
        let first = read_pairs(&[req(Some(seen.clone()))], None, true).remove(0).unwrap();
        // Replaced by an atomic rename (same shapes, other values).
        let other = dir.join("other.parquet");
        write(&other, 100);
        std::fs::rename(&other, &path).unwrap();
        let got = read_pairs(&[req(Some(seen))], None, true);
        assert!(matches!(&got[0], Err(ReadError::Changed { .. })), "{got:?}");
        let fresh = read_pairs(&[req(None)], None, true).remove(0).unwrap();
        assert_ne!(first, fresh, "the new file's values, read through a fresh footer");
        assert_eq!(fresh[0], parse_npy(row(101).latent1.npy()).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn every_small_column_page_is_decoded() {
        let dir = temp_dir("columns");
        let path = dir.join("part.parquet");
        write_rows(&path, 12, 5);
        assert_eq!(check_columns(&path).unwrap(), vec![]);
        let (start, len) = {
            let f = PartFile::open(&path).unwrap();
            let schema = f.meta.metadata().file_metadata().schema_descr();
            let leaf = (0..schema.num_columns()).find(|&i| schema.column(i).name() == "prompt").unwrap();
            f.meta.metadata().row_group(1).column(leaf).byte_range()
        };
        let mut bytes = std::fs::read(&path).unwrap();
        for b in &mut bytes[(start + len / 2) as usize..(start + len) as usize] {
            *b ^= 0x5a;
        }
        let bad = dir.join("bad.parquet");
        std::fs::write(&bad, &bytes).unwrap();
        let problems = check_columns(&bad).unwrap();
        assert!(!problems.is_empty());
        assert!(problems.iter().all(|p| p.row_group == 1 && p.column == "prompt"), "{problems:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
