//! The asynchronous Parquet part-file writer, and the part-file schema it owns.
//!
//! Rows go through a bounded lock-free channel (crossbeam's array queue) to a
//! dedicated thread that builds the `detailed_results` strings and the Arrow
//! batches, and writes Parquet with small row groups: zstd for every column
//! but the latents, which are stored uncompressed by default (zstd saves ~8 %
//! on float latents and costs more CPU than the read itself; see
//! [`LatentCompression`]). Every value of `latent1`/`latent2` is its own data
//! page and the file carries the offset index, so one row's latent is one
//! contiguous byte range a reader can fetch alone. The file is written under a temporary name and only appears under
//! its final name, fsynced, once complete: a killed process never leaves a
//! file that looks complete and isn't.
//!
//! The writer is one definition of the part file shared with Python:
//! [`PART_COLUMNS`], [`REFERENCE_COLUMNS`], [`ROW_FIELDS`], the temporary
//! name rule ([`temp_path`], [`TEMP_FILE_PATTERN`]), [`LATENT_DOWN_FACTOR`]
//! and [`MAX_ROW_GROUP_SIZE`] are exported by `hpd_encode._core` and
//! `hpd_encode.schema` derives from them.
//!
//! A [`PartWriter`] is `Sync`: any number of threads may `submit` to one
//! writer, and `close` / `abort` may be called from any of them.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arrow_array::builder::{BinaryViewBuilder, Float64Builder, Int32Builder, Int64Builder, ListBuilder, StringBuilder};
use arrow_array::{ArrayRef, BinaryViewArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use crossbeam_channel::{bounded, Receiver, SendTimeoutError, Sender};
use parquet::arrow::arrow_writer::{
    compute_leaves, ArrowColumnChunk, ArrowColumnWriter, ArrowLeafColumn, ArrowRowGroupWriterFactory,
};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::ColumnPath;

use crate::error::{Error, Result};
use crate::parts::npy::{npy_header, py_float_repr};

/// An image's height and width over its latent's (8 for every VAE family we
/// support); readers derive the image size from `latent1_shape` with it.
pub const LATENT_DOWN_FACTOR: usize = 8;

/// The most rows a row group may hold: the reference's row-group size, and
/// the writer's default.
pub const MAX_ROW_GROUP_SIZE: usize = 100;

/// The Arrow type of a part-file column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    String,
    Binary,
    Int64,
    Int32,
    Float64,
    /// `list<int64>` (the latent shapes).
    Int64List,
}

impl ColumnType {
    /// The type's name as pyarrow spells it (`pa.type_for_alias`, or
    /// `list<int64>`); `hpd_encode.schema` builds the pyarrow schema from it.
    pub fn name(self) -> &'static str {
        match self {
            Self::String => "string",
            Self::Binary => "binary",
            Self::Int64 => "int64",
            Self::Int32 => "int32",
            Self::Float64 => "float64",
            Self::Int64List => "list<int64>",
        }
    }

    fn arrow(self) -> DataType {
        match self {
            Self::String => DataType::Utf8,
            Self::Binary => DataType::Binary,
            Self::Int64 => DataType::Int64,
            Self::Int32 => DataType::Int32,
            Self::Float64 => DataType::Float64,
            Self::Int64List => DataType::List(Arc::new(Field::new("item", DataType::Int64, true))),
        }
    }
}

/// The part file's columns in file order: the reference's ten (same names,
/// types and contents, so existing trainers keep working), then typed extras
/// that spare readers the string parsing. Every column is nullable, as in the
/// reference's pyarrow schema.
pub const PART_COLUMNS: [(&str, ColumnType); 21] = [
    ("prompt", ColumnType::String),
    ("model1", ColumnType::String),
    ("model2", ColumnType::String),
    ("detailed_results", ColumnType::String),
    ("image1_path", ColumnType::String),
    ("image2_path", ColumnType::String),
    ("latent1", ColumnType::Binary),
    ("latent2", ColumnType::Binary),
    ("latent1_shape", ColumnType::Int64List),
    ("latent2_shape", ColumnType::Int64List),
    // Typed extras; readers must not require them (the reference's files lack them).
    ("record_index", ColumnType::Int64),
    ("votes_chosen", ColumnType::Int64),
    ("votes_rejected", ColumnType::Int64),
    ("confidence", ColumnType::Float64),
    ("height", ColumnType::Int64),
    ("width", ColumnType::Int64),
    ("bucket_id", ColumnType::Int32),
    ("orig_chosen_height", ColumnType::Int64),
    ("orig_chosen_width", ColumnType::Int64),
    ("orig_rejected_height", ColumnType::Int64),
    ("orig_rejected_width", ColumnType::Int64),
];

/// How many of [`PART_COLUMNS`] (the first ones) are the reference's.
pub const REFERENCE_COLUMN_COUNT: usize = 10;

/// The reference pipeline's columns, in file order.
pub fn reference_columns() -> impl Iterator<Item = &'static str> {
    PART_COLUMNS[..REFERENCE_COLUMN_COUNT].iter().map(|(name, _)| *name)
}

/// The fields of one submitted row, `(name, required)`. `detailed_results`
/// and the shapes are derived; the optional fields take the reference's
/// defaults for missing metadata (model names "", votes 0, confidence 0.0)
/// or are stored as null (`record_index`, `bucket_id`, original sizes).
pub const ROW_FIELDS: [(&str, bool); 18] = [
    ("prompt", true),
    ("model1", false),
    ("model2", false),
    ("image1_path", true),
    ("image2_path", true),
    ("latent1", true),
    ("latent2", true),
    ("record_index", false),
    ("votes_chosen", false),
    ("votes_rejected", false),
    ("confidence", false),
    ("height", true),
    ("width", true),
    ("bucket_id", false),
    ("orig_chosen_height", false),
    ("orig_chosen_width", false),
    ("orig_rejected_height", false),
    ("orig_rejected_width", false),
];

/// The latent columns, written one data page per value.
const LATENT_COLUMNS: [&str; 2] = ["latent1", "latent2"];

/// The sample type of a stored latent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LatentDtype {
    F32,
    F16,
}

impl LatentDtype {
    /// From a NumPy dtype string (`dtype.str`): little-endian float32/float16 only.
    pub fn from_descr(descr: &str) -> Option<Self> {
        match descr {
            "<f4" => Some(Self::F32),
            "<f2" => Some(Self::F16),
            _ => None,
        }
    }
    pub fn descr(self) -> &'static str {
        match self {
            Self::F32 => "<f4",
            Self::F16 => "<f2",
        }
    }
    pub fn itemsize(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 => 2,
        }
    }
}

/// One latent as it is stored: the `.npy` bytes (header, then the C-ordered
/// little-endian samples) and its shape.
#[derive(Debug, Clone)]
pub struct Latent {
    shape: Vec<usize>,
    npy: Vec<u8>,
}

impl Latent {
    /// A latent from its raw samples (copied once, after the header).
    pub fn from_bytes(dtype: LatentDtype, shape: Vec<usize>, data: &[u8]) -> Result<Self> {
        Self::from_bytes_in(Vec::new(), dtype, shape, data)
    }

    /// [`Latent::from_bytes`] into `buf` (its contents are replaced; its
    /// memory reused when large enough).
    pub fn from_bytes_in(mut buf: Vec<u8>, dtype: LatentDtype, shape: Vec<usize>, data: &[u8]) -> Result<Self> {
        let want = shape.iter().try_fold(dtype.itemsize(), |n, &d| n.checked_mul(d));
        if want != Some(data.len()) {
            return Err(Error::InvalidArgument(format!(
                "latent of shape {shape:?} and {} bytes per sample cannot hold {} bytes",
                dtype.itemsize(),
                data.len()
            )));
        }
        let header = npy_header(dtype.descr(), &shape);
        buf.clear();
        buf.reserve_exact(header.len() + data.len());
        buf.extend_from_slice(&header);
        buf.extend_from_slice(data);
        Ok(Self { shape, npy: buf })
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The `.npy` file's bytes, as stored in the column.
    pub fn npy(&self) -> &[u8] {
        &self.npy
    }
}

/// One output row: a comparison with both latents.
#[derive(Debug, Clone)]
pub struct Row {
    pub prompt: String,
    pub model1: String,
    pub model2: String,
    pub image1_path: String,
    pub image2_path: String,
    /// Position of the comparison in the metadata (null when not given).
    pub record_index: Option<i64>,
    pub votes_chosen: i64,
    pub votes_rejected: i64,
    pub confidence: f64,
    /// The target (final) size of both images.
    pub height: i64,
    pub width: i64,
    pub bucket_id: Option<i32>,
    /// Decoded sizes `(height, width)` (null when not given).
    pub orig_chosen: Option<(i64, i64)>,
    pub orig_rejected: Option<(i64, i64)>,
    pub latent1: Latent,
    pub latent2: Latent,
}

/// Why a row cannot be written: the field and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: &'static str,
    pub reason: String,
}

impl Row {
    /// The reference's `str(dict)` of the vote and size details (an unknown
    /// original size is `None`, as `str()` writes it).
    pub fn detailed_results(&self) -> String {
        let hw = |size: Option<(i64, i64)>| size.map_or_else(|| "None".to_string(), |(h, w)| format!("[{h}, {w}]"));
        let fin = Some((self.height, self.width));
        format!(
            "{{'votes_chosen': {}, 'votes_rejected': {}, 'confidence': {}, 'orig_chosen_hw': {}, \
             'orig_rejected_hw': {}, 'final_chosen_hw': {}, 'final_rejected_hw': {}}}",
            self.votes_chosen,
            self.votes_rejected,
            py_float_repr(self.confidence),
            hw(self.orig_chosen),
            hw(self.orig_rejected),
            hw(fin),
            hw(fin)
        )
    }

    /// The value rules a row must meet to be written: non-negative votes, a
    /// finite confidence, positive sizes, a non-negative index and bucket.
    pub fn check(&self) -> std::result::Result<(), FieldError> {
        let fail = |field: &'static str, reason: String| Err(FieldError { field, reason });
        for (field, v) in [("votes_chosen", self.votes_chosen), ("votes_rejected", self.votes_rejected)] {
            if v < 0 {
                return fail(field, format!("must be a non-negative integer, got {v}"));
            }
        }
        if !self.confidence.is_finite() {
            return fail("confidence", format!("must be a finite number, got {}", py_float_repr(self.confidence)));
        }
        if let Some(i) = self.record_index.filter(|i| *i < 0) {
            return fail("record_index", format!("must be >= 0, got {i}"));
        }
        if let Some(b) = self.bucket_id.filter(|b| *b < 0) {
            return fail("bucket_id", format!("must be >= 0, got {b}"));
        }
        let sizes = [
            ("height", Some(self.height)),
            ("width", Some(self.width)),
            ("orig_chosen_height", self.orig_chosen.map(|s| s.0)),
            ("orig_chosen_width", self.orig_chosen.map(|s| s.1)),
            ("orig_rejected_height", self.orig_rejected.map(|s| s.0)),
            ("orig_rejected_width", self.orig_rejected.map(|s| s.1)),
        ];
        for (field, v) in sizes {
            if let Some(v) = v.filter(|v| *v <= 0) {
                return fail(field, format!("must be a positive size in pixels, got {v}"));
            }
        }
        Ok(())
    }
}

/// The codec of the `latent1`/`latent2` column chunks.
///
/// `None` (the default) stores the `.npy` bytes as they are: zstd saves only
/// about 8 % on float latents, while decompressing costs more CPU than
/// reading the bytes (measured: warm batch reads 1.9 GB/s per CPU-second
/// uncompressed against 0.76 GB/s with zstd level 1), and an uncompressed
/// page hands its value over without a copy. `Zstd` (at
/// [`WriterOptions::zstd_level`]) is for storage-bound setups.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LatentCompression {
    #[default]
    None,
    Zstd,
}

impl LatentCompression {
    /// The names accepted by [`LatentCompression::parse`], as Python spells them.
    pub const NAMES: [&'static str; 2] = ["none", "zstd"];

    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "none" => Ok(Self::None),
            "zstd" => Ok(Self::Zstd),
            other => Err(Error::InvalidArgument(format!(
                "latent_compression must be one of {}, not {other:?}",
                Self::NAMES.join(", ")
            ))),
        }
    }
}

#[derive(Debug, Clone)]
pub struct WriterOptions {
    pub row_group_size: usize,
    pub queue_size: usize,
    /// zstd level of every zstd-compressed column.
    pub zstd_level: i32,
    /// Codec of the two latent columns (the others are always zstd).
    pub latent_compression: LatentCompression,
}

impl Default for WriterOptions {
    fn default() -> Self {
        Self {
            row_group_size: MAX_ROW_GROUP_SIZE,
            queue_size: 64,
            zstd_level: 1,
            latent_compression: LatentCompression::None,
        }
    }
}

/// What a finished file holds.
#[derive(Debug, Clone, Default)]
pub struct WriterStats {
    pub rows: u64,
    pub row_groups: u64,
    pub bytes: u64,
    /// Time `submit` calls spent waiting on a full queue (back-pressure),
    /// summed over the threads that submitted.
    pub blocked_seconds: f64,
}

/// The part file's Arrow schema, from [`PART_COLUMNS`].
pub fn part_schema() -> SchemaRef {
    Arc::new(Schema::new(PART_COLUMNS.iter().map(|(name, ty)| Field::new(*name, ty.arrow(), true)).collect::<Vec<_>>()))
}

/// The columns of one row group, in [`PART_COLUMNS`] order. The rows are
/// consumed: each latent's `.npy` bytes become a buffer of a `BinaryView`
/// array without a copy (Parquet stores it as the same BYTE_ARRAY column a
/// `Binary` array gives; the file's schema says `Binary`).
fn row_group_columns(rows: Vec<Row>) -> Result<(Vec<ArrayRef>, [BinaryViewArray; 2])> {
    fn strings(rows: &[Row], f: impl Fn(&Row) -> &str) -> ArrayRef {
        let mut b = StringBuilder::new();
        rows.iter().for_each(|r| b.append_value(f(r)));
        Arc::new(b.finish())
    }
    fn ints(rows: &[Row], f: impl Fn(&Row) -> Option<i64>) -> ArrayRef {
        let mut b = Int64Builder::with_capacity(rows.len());
        rows.iter().for_each(|r| b.append_option(f(r)));
        Arc::new(b.finish())
    }
    fn shapes(rows: &[Row], f: impl Fn(&Row) -> &Latent) -> ArrayRef {
        let mut shapes = ListBuilder::new(Int64Builder::new());
        for r in rows {
            f(r).shape.iter().for_each(|&d| shapes.values().append_value(d as i64));
            shapes.append(true);
        }
        Arc::new(shapes.finish())
    }
    fn latents(npys: Vec<Vec<u8>>) -> Result<BinaryViewArray> {
        let mut b = BinaryViewBuilder::with_capacity(npys.len());
        for npy in npys {
            let len = u32::try_from(npy.len())
                .map_err(|_| Error::Writer(format!("a latent of {} bytes is over 4 GiB", npy.len())))?;
            let block = b.append_block(npy.into()); // Buffer::from_vec: no copy
            b.try_append_view(block, 0, len).map_err(|e| Error::Writer(format!("building a latent column: {e}")))?;
        }
        Ok(b.finish())
    }
    let mut details = StringBuilder::new();
    rows.iter().for_each(|r| details.append_value(r.detailed_results()));
    let mut bucket = Int32Builder::with_capacity(rows.len());
    rows.iter().for_each(|r| bucket.append_option(r.bucket_id));
    let mut confidence = Float64Builder::with_capacity(rows.len());
    rows.iter().for_each(|r| confidence.append_value(r.confidence));
    let mut columns: Vec<ArrayRef> = vec![
        strings(&rows, |r| &r.prompt),
        strings(&rows, |r| &r.model1),
        strings(&rows, |r| &r.model2),
        Arc::new(details.finish()),
        strings(&rows, |r| &r.image1_path),
        strings(&rows, |r| &r.image2_path),
        // latent1, latent2: inserted below, once the rows are consumed
        shapes(&rows, |r| &r.latent1),
        shapes(&rows, |r| &r.latent2),
        ints(&rows, |r| r.record_index),
        ints(&rows, |r| Some(r.votes_chosen)),
        ints(&rows, |r| Some(r.votes_rejected)),
        Arc::new(confidence.finish()),
        ints(&rows, |r| Some(r.height)),
        ints(&rows, |r| Some(r.width)),
        Arc::new(bucket.finish()),
        ints(&rows, |r| r.orig_chosen.map(|s| s.0)),
        ints(&rows, |r| r.orig_chosen.map(|s| s.1)),
        ints(&rows, |r| r.orig_rejected.map(|s| s.0)),
        ints(&rows, |r| r.orig_rejected.map(|s| s.1)),
    ];
    let (l1, l2): (Vec<_>, Vec<_>) = rows.into_iter().map(|r| (r.latent1.npy, r.latent2.npy)).unzip();
    let latent_arrays = [latents(l1)?, latents(l2)?];
    columns.insert(6, Arc::new(latent_arrays[0].clone()));
    columns.insert(7, Arc::new(latent_arrays[1].clone()));
    debug_assert_eq!(columns.len(), PART_COLUMNS.len());
    Ok((columns, latent_arrays))
}

/// zstd for every column but the latents (uncompressed unless
/// `latent_compression` says zstd); for the latent columns no dictionary, no
/// statistics (random floats never repeat) and one data page per value, with
/// the offset index (written for every column) locating each page.
fn properties(opts: &WriterOptions) -> Result<WriterProperties> {
    let level = ZstdLevel::try_new(opts.zstd_level).map_err(|e| Error::InvalidArgument(format!("zstd level: {e}")))?;
    let latent_codec = match opts.latent_compression {
        LatentCompression::None => Compression::UNCOMPRESSED,
        LatentCompression::Zstd => Compression::ZSTD(level),
    };
    let mut b = WriterProperties::builder()
        .set_compression(Compression::ZSTD(level))
        .set_max_row_group_row_count(Some(opts.row_group_size))
        .set_offset_index_disabled(false);
    for col in LATENT_COLUMNS {
        b = b
            .set_column_compression(ColumnPath::from(col), latent_codec)
            .set_column_dictionary_enabled(ColumnPath::from(col), false)
            .set_column_statistics_enabled(ColumnPath::from(col), EnabledStatistics::None)
            .set_column_data_page_row_count_limit(ColumnPath::from(col), 1);
    }
    Ok(b.build())
}

/// The regex (Python `re` syntax) of the temporary names [`temp_path`] gives:
/// group `name` is the final file name, group `pid` the writing process.
pub const TEMP_FILE_PATTERN: &str = r"^\.(?P<name>.+)\.tmp-(?P<pid>[0-9]+)$";

/// Where a file is written before it is complete: `.NAME.tmp-PID` beside
/// `path` (hidden, and unique to this process).
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

/// Latent buffers given back by the writer thread once their row group is
/// written, for `submit` to fill again: a long run reuses memory that is
/// already mapped instead of faulting in fresh pages for every latent (a
/// latent is 1 MiB for SD3.5 at 1024², above glibc's first mmap threshold).
#[derive(Default)]
pub struct Spares {
    free: Mutex<(Vec<Vec<u8>>, usize)>,
}

impl Spares {
    /// Most bytes kept (about one row group of two SD3.5 latents at 1024²).
    const KEEP_BYTES: usize = 256 << 20;

    /// A buffer of at least `len` bytes (at most 4x), or a new one.
    fn take(&self, len: usize) -> Vec<u8> {
        let mut free = lock(&self.free);
        let (list, bytes) = &mut *free;
        if let Some(pos) = list.iter().rposition(|b| (len..=len.saturating_mul(4)).contains(&b.capacity())) {
            let buf = list.swap_remove(pos);
            *bytes -= buf.capacity();
            return buf;
        }
        Vec::with_capacity(len)
    }

    fn give(&self, buf: Vec<u8>) {
        let mut free = lock(&self.free);
        let (list, bytes) = &mut *free;
        if *bytes + buf.capacity() <= Self::KEEP_BYTES {
            *bytes += buf.capacity();
            list.push(buf);
        }
    }

    /// Take back the buffers of a written latent column (those still shared
    /// are left alone).
    fn recycle(&self, array: BinaryViewArray) {
        let (_, mut buffers, _) = array.into_parts();
        if let Some(buffers) = Arc::get_mut(&mut buffers) {
            for b in buffers.iter_mut() {
                if let Ok(v) = std::mem::replace(b, Vec::<u8>::new().into()).into_vec::<u8>() {
                    self.give(v);
                }
            }
        }
    }
}

/// The writer thread's side: owns the Parquet writer and the temporary file.
/// Each row group's columns are encoded in parallel (the two latent columns,
/// which are nearly all the bytes and the zstd work, each on its own thread),
/// then appended in schema order.
struct Sink {
    schema: SchemaRef,
    writer: SerializedFileWriter<BufWriter<File>>,
    columns: ArrowRowGroupWriterFactory,
    pending: Vec<Row>,
    row_group_size: usize,
    rows: u64,
    row_groups: usize,
    spares: Arc<Spares>,
}

fn encode_column(mut writer: ArrowColumnWriter, leaves: Vec<ArrowLeafColumn>) -> Result<ArrowColumnChunk> {
    for leaf in &leaves {
        writer.write(leaf).map_err(|e| Error::Writer(format!("encoding a column: {e}")))?;
    }
    writer.close().map_err(|e| Error::Writer(format!("encoding a column: {e}")))
}

impl Sink {
    fn create(file: File, opts: &WriterOptions, spares: Arc<Spares>) -> Result<Self> {
        let schema = part_schema();
        let (writer, columns) =
            ArrowWriter::try_new(BufWriter::with_capacity(1 << 20, file), schema.clone(), Some(properties(opts)?))
                .and_then(ArrowWriter::into_serialized_writer)
                .map_err(|e| Error::Writer(format!("opening the file: {e}")))?;
        Ok(Self {
            schema,
            writer,
            columns,
            pending: Vec::new(),
            row_group_size: opts.row_group_size,
            rows: 0,
            row_groups: 0,
            spares,
        })
    }

    fn write_pending(&mut self, all: bool) -> Result<()> {
        while self.pending.len() >= self.row_group_size || (all && !self.pending.is_empty()) {
            let n = self.pending.len().min(self.row_group_size);
            let chunk: Vec<Row> = self.pending.drain(..n).collect();
            let (columns, latents) = row_group_columns(chunk)?;
            self.write_row_group(columns)?;
            // The columns are written and dropped: their buffers go back for reuse.
            for array in latents {
                self.spares.recycle(array);
            }
            self.rows += n as u64;
        }
        Ok(())
    }

    fn write_row_group(&mut self, columns: Vec<ArrayRef>) -> Result<()> {
        let err = |e: parquet::errors::ParquetError| Error::Writer(format!("writing a row group: {e}"));
        let writers = self.columns.create_column_writers(self.row_groups).map_err(err)?;
        let mut jobs = Vec::with_capacity(writers.len());
        for ((writer, field), array) in writers.into_iter().zip(self.schema.fields()).zip(&columns) {
            let leaves = compute_leaves(field, array).map_err(err)?;
            jobs.push((LATENT_COLUMNS.contains(&field.name().as_str()), writer, leaves));
        }
        let chunks: Vec<Result<ArrowColumnChunk>> = std::thread::scope(|s| {
            let started: Vec<_> = jobs
                .into_iter()
                .map(|(heavy, writer, leaves)| {
                    if heavy {
                        Err(s.spawn(move || encode_column(writer, leaves)))
                    } else {
                        Ok(encode_column(writer, leaves))
                    }
                })
                .collect();
            started
                .into_iter()
                .map(|job| match job {
                    Ok(done) => done,
                    Err(handle) => {
                        handle.join().unwrap_or_else(|_| Err(Error::Writer("a column encoder panicked".into())))
                    }
                })
                .collect()
        });
        let mut group = self.writer.next_row_group().map_err(err)?;
        for chunk in chunks {
            chunk?.append_to_row_group(&mut group).map_err(err)?;
        }
        group.close().map_err(err)?;
        self.row_groups += 1;
        self.start_writeback();
        Ok(())
    }

    /// Ask the kernel to start writing this file's dirty pages to storage now (Linux), so that the
    /// fsync at `close` has little left to wait for: a part file of a few GB would otherwise stay in
    /// the page cache until then, and its commit would stall the run for seconds. A hint; errors
    /// are ignored (the fsync still decides).
    fn start_writeback(&self) {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            let fd = self.writer.inner().get_ref().as_raw_fd();
            // SAFETY: `fd` is this sink's open file; the call only reads its arguments.
            unsafe {
                libc::sync_file_range(fd, 0, 0, libc::SYNC_FILE_RANGE_WRITE);
            }
        }
    }
}

struct Shared {
    failed: AtomicBool,
    error: Mutex<Option<String>>,
    queued_rows: AtomicU64,
}

type SinkResult = Result<(u64, u64)>;

/// Where the file is in its life; guarded by one mutex so `close` and
/// `abort` from different threads happen once, in some order.
enum State {
    Running(JoinHandle<SinkResult>),
    /// `close` ran: its result, repeated to later calls.
    Closed(std::result::Result<WriterStats, String>),
    Aborted,
}

/// A Parquet part file being written in the background. All methods take
/// `&self`: the writer may be shared by threads.
pub struct PartWriter {
    path: PathBuf,
    tmp: PathBuf,
    /// `None` once closed or aborted; `submit` sends on a clone, so a close
    /// waits for every submit already under way.
    tx: Mutex<Option<Sender<Vec<Row>>>>,
    state: Mutex<State>,
    shared: Arc<Shared>,
    blocked_ns: AtomicU64,
    spares: Arc<Spares>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl PartWriter {
    pub fn create(path: impl Into<PathBuf>, opts: WriterOptions) -> Result<Self> {
        let path = path.into();
        if !(1..=MAX_ROW_GROUP_SIZE).contains(&opts.row_group_size) {
            return Err(Error::InvalidArgument(format!(
                "row_group_size must be between 1 and {MAX_ROW_GROUP_SIZE}, got {}",
                opts.row_group_size
            )));
        }
        if opts.queue_size == 0 {
            return Err(Error::InvalidArgument("queue_size must be > 0".into()));
        }
        properties(&opts)?; // bad options fail before any file is created
        let tmp = temp_path(&path);
        let file = File::create(&tmp).map_err(|e| Error::io(tmp.display().to_string(), e))?;
        let spares = Arc::new(Spares::default());
        let sink = Sink::create(file, &opts, spares.clone()).inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })?;
        let (tx, rx) = bounded::<Vec<Row>>(opts.queue_size);
        let shared = Arc::new(Shared {
            failed: AtomicBool::new(false),
            error: Mutex::new(None),
            queued_rows: AtomicU64::new(0),
        });
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("hpd-encode-writer".into())
            .spawn(move || run_sink(sink, rx, thread_shared))
            .map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                Error::Writer(format!("cannot start the writer thread: {e}"))
            })?;
        Ok(Self {
            path,
            tmp,
            tx: Mutex::new(Some(tx)),
            state: Mutex::new(State::Running(thread)),
            shared,
            blocked_ns: AtomicU64::new(0),
            spares,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A latent for a row of this writer: its `.npy` bytes go into a buffer
    /// an earlier row group gave back when there is one.
    pub fn latent(&self, dtype: LatentDtype, shape: Vec<usize>, data: &[u8]) -> Result<Latent> {
        let buf = self.spares.take(npy_header(dtype.descr(), &shape).len() + data.len());
        Latent::from_bytes_in(buf, dtype, shape, data)
    }

    /// Rows handed over but not yet written.
    pub fn queued_rows(&self) -> u64 {
        self.shared.queued_rows.load(Ordering::Relaxed)
    }

    fn deferred_error(&self) -> Option<Error> {
        if self.shared.failed.load(Ordering::Acquire) {
            let msg = lock(&self.shared.error).clone();
            return Some(Error::Writer(msg.unwrap_or_else(|| "the writer was aborted".into())));
        }
        None
    }

    /// Hand rows to the writer thread; blocks while the queue is full
    /// (back-pressure). `interrupted` is polled while blocked so a caller can
    /// honour Ctrl-C. Safe to call from several threads at once.
    pub fn submit(&self, rows: Vec<Row>, mut interrupted: impl FnMut() -> Result<()>) -> Result<()> {
        if let Some(e) = self.deferred_error() {
            return Err(e);
        }
        let tx = lock(&self.tx).clone().ok_or_else(|| {
            Error::Writer(format!("'{}' is already closed: submit rows before close()", self.path.display()))
        })?;
        let n = rows.len() as u64;
        self.shared.queued_rows.fetch_add(n, Ordering::Relaxed);
        let start = Instant::now();
        let mut msg = rows;
        let sent = loop {
            match tx.send_timeout(msg, Duration::from_millis(100)) {
                Ok(()) => break Ok(()),
                Err(SendTimeoutError::Timeout(back)) => {
                    msg = back;
                    if let Some(e) = self.deferred_error() {
                        break Err(e);
                    }
                    if let Err(e) = interrupted() {
                        break Err(e);
                    }
                }
                Err(SendTimeoutError::Disconnected(_)) => {
                    break Err(self
                        .deferred_error()
                        .unwrap_or_else(|| Error::Writer("the writer thread stopped".into())));
                }
            }
        };
        if sent.is_err() {
            take_queued(&self.shared.queued_rows, n);
        }
        self.blocked_ns.fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
        sent
    }

    /// Flush everything, write the footer, fsync, rename to the final name.
    /// Re-raises any error of the writer thread. A second call returns the
    /// first one's result.
    pub fn close(&self) -> Result<WriterStats> {
        let mut state = lock(&self.state);
        let thread = match std::mem::replace(&mut *state, State::Aborted) {
            State::Running(thread) => thread,
            State::Closed(result) => {
                *state = State::Closed(result.clone());
                return result.map_err(Error::Writer);
            }
            State::Aborted => {
                return Err(Error::Writer(format!("'{}' was aborted: nothing to close", self.path.display())))
            }
        };
        lock(&self.tx).take();
        let result = self.finish(thread);
        *state = State::Closed(result.as_ref().map(Clone::clone).map_err(ToString::to_string));
        result
    }

    fn finish(&self, thread: JoinHandle<SinkResult>) -> Result<WriterStats> {
        let joined = thread.join().map_err(|_| Error::Writer("the writer thread panicked".into())).and_then(|r| r);
        let (rows, row_groups) = match joined {
            Ok(v) => v,
            Err(e) => {
                let _ = std::fs::remove_file(&self.tmp);
                return Err(e);
            }
        };
        if let Err(e) = std::fs::rename(&self.tmp, &self.path) {
            let _ = std::fs::remove_file(&self.tmp);
            return Err(Error::io(self.path.display().to_string(), e));
        }
        sync_dir(&self.path);
        let bytes = std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
        let blocked_seconds = self.blocked_ns.load(Ordering::Relaxed) as f64 * 1e-9;
        Ok(WriterStats { rows, row_groups, bytes, blocked_seconds })
    }

    /// Stop without publishing anything: the temporary file is removed. After
    /// `close` it does nothing (the file is already published).
    pub fn abort(&self) {
        let mut state = lock(&self.state);
        if !matches!(*state, State::Running(_)) {
            return;
        }
        self.shared.failed.store(true, Ordering::Release);
        lock(&self.tx).take();
        if let State::Running(thread) = std::mem::replace(&mut *state, State::Aborted) {
            let _ = thread.join();
        }
        let _ = std::fs::remove_file(&self.tmp);
    }

    /// True once `close` or `abort` has run.
    pub fn is_closed(&self) -> bool {
        !matches!(*lock(&self.state), State::Running(_))
    }
}

impl Drop for PartWriter {
    fn drop(&mut self) {
        self.abort();
    }
}

/// `queued -= n`, never below 0.
fn take_queued(queued: &AtomicU64, n: u64) {
    let _ = queued.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |q| Some(q.saturating_sub(n)));
}

fn run_sink(mut sink: Sink, rx: Receiver<Vec<Row>>, shared: Arc<Shared>) -> SinkResult {
    let fail = |e: &Error| {
        *lock(&shared.error) = Some(e.to_string());
        shared.failed.store(true, Ordering::Release);
    };
    for rows in rx.iter() {
        let n = rows.len() as u64;
        if !shared.failed.load(Ordering::Acquire) {
            // (aborted or failed: keep draining so senders never block)
            sink.pending.extend(rows);
            if let Err(e) = sink.write_pending(false) {
                fail(&e);
            }
        }
        take_queued(&shared.queued_rows, n);
    }
    if shared.failed.load(Ordering::Acquire) {
        let msg = lock(&shared.error).clone();
        return Err(Error::Writer(msg.unwrap_or_else(|| "aborted".into())));
    }
    let finish = (|| -> SinkResult {
        sink.write_pending(true)?;
        let meta = sink.writer.finish().map_err(|e| Error::Writer(format!("writing the footer: {e}")))?;
        let row_groups = meta.num_row_groups() as u64;
        let buffered = sink.writer.inner_mut();
        std::io::Write::flush(buffered).map_err(|e| Error::Writer(format!("flushing the file: {e}")))?;
        buffered.get_mut().sync_all().map_err(|e| Error::Writer(format!("fsync: {e}")))?;
        Ok((sink.rows, row_groups))
    })();
    if let Err(e) = &finish {
        fail(e);
    }
    finish
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::file::serialized_reader::ReadOptionsBuilder;

    /// A small row with distinct latents (also used by other modules' tests).
    pub(crate) fn row(i: i64) -> Row {
        let lat = |v: f32| {
            let data: Vec<u8> = [v; 16].iter().flat_map(|x| x.to_le_bytes()).collect();
            Latent::from_bytes(LatentDtype::F32, vec![4, 2, 2], &data).unwrap()
        };
        Row {
            prompt: format!("p{i}"),
            model1: "a".into(),
            model2: "b".into(),
            image1_path: format!("x/{i}.jpg"),
            image2_path: format!("y/{i}.jpg"),
            record_index: Some(i),
            votes_chosen: 3,
            votes_rejected: 1,
            confidence: 0.75,
            height: 16,
            width: 16,
            bucket_id: Some(0),
            orig_chosen: Some((20, 20)),
            orig_rejected: Some((30, 30)),
            latent1: lat(i as f32),
            latent2: lat(-(i as f32)),
        }
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("hpd-writer-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn writes_row_groups_and_renames_on_close() {
        let dir = temp_dir("rename");
        let path = dir.join("part.parquet");
        let w = PartWriter::create(
            &path,
            WriterOptions { row_group_size: 10, queue_size: 2, zstd_level: 3, ..WriterOptions::default() },
        )
        .unwrap();
        for chunk in 0..5 {
            w.submit((chunk * 7..chunk * 7 + 7).map(row).collect(), || Ok(())).unwrap();
        }
        assert!(!path.exists(), "the final name appears only on close");
        assert!(temp_path(&path).exists());
        let stats = w.close().unwrap();
        assert_eq!(stats.rows, 35);
        assert_eq!(stats.row_groups, 4);
        assert!(path.exists());
        assert_eq!(w.close().unwrap().rows, 35, "a second close repeats the first one's result");
        let err = w.submit(vec![row(99)], || Ok(())).unwrap_err().to_string();
        assert!(err.contains("already closed"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn every_latent_value_is_its_own_page_with_an_offset_index() {
        let dir = temp_dir("pages");
        let path = dir.join("part.parquet");
        let w = PartWriter::create(&path, WriterOptions { row_group_size: 10, ..Default::default() }).unwrap();
        w.submit((0..25).map(row).collect(), || Ok(())).unwrap();
        w.close().unwrap();
        let file = File::open(&path).unwrap();
        let reader =
            SerializedFileReader::new_with_options(file, ReadOptionsBuilder::new().with_page_index().build()).unwrap();
        let meta = reader.metadata();
        let names: Vec<&str> = PART_COLUMNS.iter().map(|(n, _)| *n).collect();
        let latent_cols: Vec<usize> =
            LATENT_COLUMNS.iter().map(|c| names.iter().position(|n| n == c).unwrap()).collect();
        assert_eq!(meta.num_row_groups(), 3);
        for rg in 0..meta.num_row_groups() {
            let rows = meta.row_group(rg).num_rows() as usize;
            let index = meta.page_index_for_row_group(rg);
            for (col, name) in names.iter().enumerate() {
                let pages = index.page_locations(col).expect("every column has an offset index");
                if latent_cols.contains(&col) {
                    let firsts: Vec<i64> = pages.iter().map(|p| p.first_row_index).collect();
                    assert_eq!(firsts, (0..rows as i64).collect::<Vec<_>>(), "column {name}");
                    // Pages are contiguous and each is independently readable.
                    for pair in pages.windows(2) {
                        assert_eq!(pair[0].offset + pair[0].compressed_page_size as i64, pair[1].offset);
                    }
                } else {
                    assert_eq!(pages.len(), 1, "column {name} keeps one page per row group");
                }
            }
            // The page reader agrees: one data page per row of each latent column.
            let group = reader.get_row_group(rg).unwrap();
            for &col in &latent_cols {
                let mut pages = group.get_column_page_reader(col).unwrap();
                let mut n = 0;
                while let Some(page) = pages.get_next_page().unwrap() {
                    assert_eq!(page.num_values(), 1);
                    n += 1;
                }
                assert_eq!(n, rows);
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn threads_share_one_writer() {
        let dir = temp_dir("threads");
        let path = dir.join("part.parquet");
        let w = PartWriter::create(
            &path,
            WriterOptions { row_group_size: 7, queue_size: 1, zstd_level: 1, ..WriterOptions::default() },
        )
        .unwrap();
        std::thread::scope(|s| {
            for t in 0..4i64 {
                let w = &w;
                s.spawn(move || {
                    for i in 0..50 {
                        w.submit(vec![row(t * 1000 + i)], || Ok(())).unwrap();
                    }
                });
            }
        });
        assert_eq!(w.close().unwrap().rows, 200);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn latents_are_uncompressed_unless_asked() {
        use parquet::file::reader::{FileReader, SerializedFileReader};
        let dir = temp_dir("codecs");
        for (name, want) in [("none", Compression::UNCOMPRESSED), ("zstd", Compression::ZSTD(ZstdLevel::default()))] {
            let path = dir.join(format!("{name}.parquet"));
            let latent_compression = LatentCompression::parse(name).unwrap();
            let w = PartWriter::create(&path, WriterOptions { latent_compression, ..Default::default() }).unwrap();
            w.submit((0..3).map(row).collect(), || Ok(())).unwrap();
            w.close().unwrap();
            let reader = SerializedFileReader::new(File::open(&path).unwrap()).unwrap();
            let rg = reader.metadata().row_group(0);
            for c in rg.columns() {
                let column = c.column_path().string();
                let expected = if LATENT_COLUMNS.contains(&column.as_str()) {
                    want
                } else {
                    Compression::ZSTD(ZstdLevel::default())
                };
                // The footer records the codec, not its level.
                assert_eq!(c.compression(), expected, "{name}: column {column}");
            }
        }
        assert_eq!(WriterOptions::default().latent_compression, LatentCompression::None);
        let err = LatentCompression::parse("lz4").unwrap_err().to_string();
        assert!(err.contains("none, zstd") && err.contains("lz4"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn written_latent_buffers_are_reused() {
        let dir = temp_dir("spares");
        let w = PartWriter::create(dir.join("part.parquet"), WriterOptions { row_group_size: 5, ..Default::default() })
            .unwrap();
        let data: Vec<u8> = (0..64u32).flat_map(|x| (x as f32).to_le_bytes()).collect();
        let rows = |w: &PartWriter| -> Vec<Row> {
            (0..5)
                .map(|i| Row {
                    latent1: w.latent(LatentDtype::F32, vec![4, 4, 4], &data).unwrap(),
                    latent2: w.latent(LatentDtype::F32, vec![4, 4, 4], &data).unwrap(),
                    ..row(i)
                })
                .collect()
        };
        w.submit(rows(&w), || Ok(())).unwrap();
        // The row group is written on the writer thread; then its 10 buffers come back.
        let start = Instant::now();
        while lock(&w.spares.free).0.len() < 10 && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(5));
        }
        let kept: Vec<*const u8> = lock(&w.spares.free).0.iter().map(|b| b.as_ptr()).collect();
        assert_eq!(kept.len(), 10);
        let again = w.latent(LatentDtype::F32, vec![4, 4, 4], &data).unwrap();
        assert!(kept.contains(&again.npy().as_ptr()), "a spare buffer is filled again");
        assert_eq!(again.npy(), crate::parts::npy::npy_bytes("<f4", &[4, 4, 4], &data));
        assert_eq!(w.close().unwrap().rows, 5);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn abort_leaves_nothing() {
        let dir = temp_dir("abort");
        let path = dir.join("part.parquet");
        let w = PartWriter::create(&path, WriterOptions::default()).unwrap();
        w.submit(vec![row(1)], || Ok(())).unwrap();
        w.abort();
        assert!(w.is_closed());
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        assert!(w.submit(vec![row(2)], || Ok(())).unwrap_err().to_string().contains("aborted"));
        assert!(w.close().unwrap_err().to_string().contains("aborted"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn row_group_size_is_bounded() {
        let dir = temp_dir("bounds");
        for bad in [0, MAX_ROW_GROUP_SIZE + 1] {
            let opts = WriterOptions { row_group_size: bad, ..Default::default() };
            let err = PartWriter::create(dir.join("x.parquet"), opts).err().unwrap().to_string();
            assert!(err.contains("row_group_size must be between 1 and 100"), "{err}");
        }
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "nothing created for bad options");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn detailed_results_is_a_python_literal() {
        let mut r = row(1);
        assert_eq!(
            r.detailed_results(),
            "{'votes_chosen': 3, 'votes_rejected': 1, 'confidence': 0.75, 'orig_chosen_hw': [20, 20], \
             'orig_rejected_hw': [30, 30], 'final_chosen_hw': [16, 16], 'final_rejected_hw': [16, 16]}"
        );
        r.orig_chosen = None;
        assert!(r.detailed_results().contains("'orig_chosen_hw': None, 'orig_rejected_hw': [30, 30]"));
    }

    #[test]
    fn row_values_are_checked() {
        assert_eq!(row(1).check(), Ok(()));
        type Spoil = fn(&mut Row);
        let cases: [(Spoil, &str); 5] = [
            (|r| r.votes_rejected = -1, "votes_rejected"),
            (|r| r.confidence = f64::NAN, "confidence"),
            (|r| r.width = 0, "width"),
            (|r| r.orig_rejected = Some((5, -5)), "orig_rejected_width"),
            (|r| r.record_index = Some(-1), "record_index"),
        ];
        for (spoil, field) in cases {
            let mut r = row(1);
            spoil(&mut r);
            assert_eq!(r.check().unwrap_err().field, field);
        }
    }

    #[test]
    fn schema_tables_agree() {
        let schema = part_schema();
        assert_eq!(schema.fields().len(), PART_COLUMNS.len());
        assert_eq!(
            reference_columns().collect::<Vec<_>>(),
            [
                "prompt",
                "model1",
                "model2",
                "detailed_results",
                "image1_path",
                "image2_path",
                "latent1",
                "latent2",
                "latent1_shape",
                "latent2_shape"
            ]
        );
        // Every submitted field is a column or a latent; every column but the
        // derived ones is a submitted field.
        let columns: Vec<&str> = PART_COLUMNS.iter().map(|(n, _)| *n).collect();
        for (field, _) in ROW_FIELDS {
            assert!(columns.contains(&field), "{field}");
        }
        let derived = ["detailed_results", "latent1_shape", "latent2_shape"];
        for c in columns.iter().filter(|c| !derived.contains(c)) {
            assert!(ROW_FIELDS.iter().any(|(f, _)| f == c), "{c}");
        }
    }

    #[test]
    fn latent_bytes_are_npy() {
        let data: Vec<u8> = (0..24u8).collect();
        let l = Latent::from_bytes(LatentDtype::F16, vec![3, 4], &data).unwrap();
        assert_eq!(l.npy(), crate::parts::npy::npy_bytes("<f2", &[3, 4], &data));
        assert!(Latent::from_bytes(LatentDtype::F32, vec![3, 4], &data).is_err());
    }
}
