//! The asynchronous Parquet part-file writer, and the part-file schema it owns.
//!
//! Rows go through a bounded lock-free channel (crossbeam's array queue) to a
//! dedicated thread that builds the `detailed_results` strings and the Arrow
//! columns, encodes each arriving row into the open row group's pages at once
//! (so a full row group only has its pages appended; the bytes do not depend
//! on how the rows arrived), and writes Parquet with small row groups: zstd for every column
//! but the latents, which are stored uncompressed by default (zstd saves ~8 %
//! on float latents and costs more CPU than the read itself; see
//! [`LatentCompression`]). Every value of `latent1`/`latent2` is its own data
//! page and the file carries the offset index, so one row's latent is one
//! contiguous byte range a reader can fetch alone. The file is written under a temporary name and only appears under
//! its final name, fsynced, once complete: a killed process never leaves a
//! file that looks complete and isn't.
//!
//! Every latent's checksum (XXH3) goes into a typed column beside it
//! ([`CHECKSUM_COLUMNS`]), and the writer hashes the file as it writes it
//! (XXH3-128, [`WriterStats::digest`], for the manifest). Key-value metadata
//! ([`WriterOptions::metadata`]: the provenance) goes into the footer.
//!
//! The writer is one definition of the part file shared with Python:
//! [`PART_COLUMNS`], [`REFERENCE_COLUMNS`], [`ROW_FIELDS`], the temporary
//! name rule ([`temp_path`], [`TEMP_FILE_PATTERN`]), [`LATENT_DOWN_FACTOR`]
//! and [`MAX_ROW_GROUP_SIZE`] are exported by `hpd_encode._core` and
//! `hpd_encode.schema` derives from them. `repack` rewrites other files
//! through the same page layout ([`crate::parts::rewrite`]).
//!
//! A [`PartWriter`] is `Sync`: any number of threads may `submit` to one
//! writer, and `close` / `abort` may be called from any of them.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arrow_array::builder::{
    BinaryViewBuilder, Float64Builder, Int32Builder, Int64Builder, ListBuilder, StringBuilder, UInt64Builder,
};
use arrow_array::{ArrayRef, BinaryViewArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use crossbeam_channel::{bounded, Receiver, SendTimeoutError, Sender};
use parquet::arrow::arrow_writer::{compute_leaves, ArrowColumnWriter, ArrowLeafColumn, ArrowRowGroupWriterFactory};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::ColumnPath;

use crate::error::{Error, Result};
use crate::metadata::record::{fields_where, position, str_eq, Field as RecordField, Kind, Missing, FIELDS};
use crate::parts::digest::{latent_checksum, Hashing};
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
    /// Parquet INT64 annotated unsigned (the latent checksums).
    UInt64,
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
            Self::UInt64 => "uint64",
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
            Self::UInt64 => DataType::UInt64,
        }
    }
}

impl ColumnType {
    /// The column type of a record field's kind.
    const fn of(kind: Kind) -> Self {
        match kind {
            Kind::Text | Kind::Path => Self::String,
            Kind::Count | Kind::Index | Kind::Size => Self::Int64,
            Kind::Real => Self::Float64,
            Kind::Bucket => Self::Int32,
            Kind::Latent => Self::Binary,
        }
    }
}

/// What a part-file column holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartSource {
    /// A row's value of one of [`CELL_FIELDS`] (its position there).
    Cell(usize),
    /// The reference's `str(dict)` of the votes and sizes ([`Row::detailed_results`]).
    DetailedResults,
    /// The `.npy` bytes of latent 0 (`latent1`) or 1 (`latent2`).
    Latent(usize),
    /// The shape of latent 0 or 1.
    Shape(usize),
    /// The checksum of latent 0 or 1's stored bytes ([`latent_checksum`]), computed by the writer.
    Checksum(usize),
}

/// The reference pipeline's ten columns, in its order, with what each holds (the record's fields
/// by their part names, and the derived columns).
const REFERENCE_LAYOUT: [(&str, PartSource); 10] = [
    ("prompt", PartSource::Cell(cell("prompt"))),
    ("model1", PartSource::Cell(cell("model1"))),
    ("model2", PartSource::Cell(cell("model2"))),
    ("detailed_results", PartSource::DetailedResults),
    ("image1_path", PartSource::Cell(cell("path1"))),
    ("image2_path", PartSource::Cell(cell("path2"))),
    ("latent1", PartSource::Latent(0)),
    ("latent2", PartSource::Latent(1)),
    ("latent1_shape", PartSource::Shape(0)),
    ("latent2_shape", PartSource::Shape(1)),
];

/// The checksum column of each of [`LATENT_COLUMNS`], in the same order.
pub const CHECKSUM_COLUMNS: [&str; 2] = ["latent1_xxh3", "latent2_xxh3"];

/// How many of [`PART_COLUMNS`] (the first ones) are the reference's.
pub const REFERENCE_COLUMN_COUNT: usize = REFERENCE_LAYOUT.len();

const fn in_reference(part_name: &str) -> bool {
    let mut i = 0;
    while i < REFERENCE_COLUMN_COUNT {
        if str_eq(REFERENCE_LAYOUT[i].0, part_name) {
            return true;
        }
        i += 1;
    }
    false
}

const fn count_extras() -> usize {
    let (mut n, mut i) = (0, 0);
    while i < N_CELLS {
        if !in_reference(CELL_FIELDS[i].part_name) {
            n += 1;
        }
        i += 1;
    }
    n
}

/// How many columns the part file has: the reference's, the record's other fields, the checksums.
pub const N_PART_COLUMNS: usize = REFERENCE_COLUMN_COUNT + count_extras() + CHECKSUM_COLUMNS.len();

/// The part file's columns in file order, with what each holds: the reference's ten (same names,
/// types and contents, so existing trainers keep working), then, as typed extras that spare
/// readers the string parsing, every other field of the record ([`CELL_FIELDS`], in declaration
/// order), then each latent's checksum ([`CHECKSUM_COLUMNS`]). Readers must not require the
/// extras (the reference's files lack them).
pub const PART_LAYOUT: [(&str, ColumnType, PartSource); N_PART_COLUMNS] = {
    let mut out = [("", ColumnType::String, PartSource::DetailedResults); N_PART_COLUMNS];
    let mut i = 0;
    while i < REFERENCE_COLUMN_COUNT {
        let (name, source) = REFERENCE_LAYOUT[i];
        let ty = match source {
            PartSource::Cell(c) => ColumnType::of(CELL_FIELDS[c].kind),
            PartSource::DetailedResults => ColumnType::String,
            PartSource::Latent(_) => ColumnType::Binary,
            PartSource::Shape(_) => ColumnType::Int64List,
            PartSource::Checksum(_) => ColumnType::UInt64,
        };
        out[i] = (name, ty, source);
        i += 1;
    }
    let (mut n, mut c) = (REFERENCE_COLUMN_COUNT, 0);
    while c < N_CELLS {
        let f = &CELL_FIELDS[c];
        if !in_reference(f.part_name) {
            out[n] = (f.part_name, ColumnType::of(f.kind), PartSource::Cell(c));
            n += 1;
        }
        c += 1;
    }
    let mut k = 0;
    while k < CHECKSUM_COLUMNS.len() {
        out[n] = (CHECKSUM_COLUMNS[k], ColumnType::UInt64, PartSource::Checksum(k));
        n += 1;
        k += 1;
    }
    out
};

/// The part file's columns in file order (see [`PART_LAYOUT`]). Every column is nullable, as in
/// the reference's pyarrow schema.
pub const PART_COLUMNS: [(&str, ColumnType); N_PART_COLUMNS] = {
    let mut out = [("", ColumnType::String); N_PART_COLUMNS];
    let mut i = 0;
    while i < N_PART_COLUMNS {
        out[i] = (PART_LAYOUT[i].0, PART_LAYOUT[i].1);
        i += 1;
    }
    out
};

/// The reference pipeline's columns, in file order.
pub fn reference_columns() -> impl Iterator<Item = &'static str> {
    PART_COLUMNS[..REFERENCE_COLUMN_COUNT].iter().map(|(name, _)| *name)
}

/// The fields of one submitted row, `(name, required)`: the record's fields by their part names
/// ([`crate::metadata::record::ROW_FIELDS`]). `detailed_results` and the shapes are derived; the
/// optional fields take the reference's defaults for missing metadata (model names "", votes 0,
/// confidence 0.0) or are stored as null (`record_index`, `bucket_id`, original sizes).
pub use crate::metadata::record::ROW_FIELDS;

/// The latent columns, written one data page per value (in the order a pair holds them).
pub const LATENT_COLUMNS: [&str; 2] = ["latent1", "latent2"];

const fn is_cell(f: &RecordField) -> bool {
    !matches!(f.kind, Kind::Latent)
}

fields_where!(
    /// How many of a row's fields are values (all but the latents).
    N_CELLS,
    /// A row's fields other than the latents: the record's ([`FIELDS`]), in declaration order.
    CELL_FIELDS,
    is_cell
);

// The latents are the record's two latent fields, in order, named as the reference names them.
const _: () = {
    let (mut n, mut i) = (0, 0);
    while i < FIELDS.len() {
        if matches!(FIELDS[i].kind, Kind::Latent) {
            assert!(n < 2 && str_eq(FIELDS[i].part_name, LATENT_COLUMNS[n]), "the latents are latent1, latent2");
            n += 1;
        }
        i += 1;
    }
    assert!(n == 2, "a row has two latents");
};

/// The position in [`CELL_FIELDS`] of the field `name` (a compile error when there is none).
pub const fn cell(name: &str) -> usize {
    position(&CELL_FIELDS, name)
}

/// A row's value of one of [`CELL_FIELDS`].
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Null,
    Text(String),
    Int(i64),
    Real(f64),
}

impl Cell {
    /// What a missing value of `f` becomes: the reference's default, or null.
    pub fn missing(f: &RecordField) -> Cell {
        match (f.missing, f.kind) {
            (Missing::Default, Kind::Text | Kind::Path) => Cell::Text(String::new()),
            (Missing::Default, Kind::Real) => Cell::Real(0.0),
            (Missing::Default, _) => Cell::Int(0),
            _ => Cell::Null,
        }
    }

    fn int(&self) -> Option<i64> {
        match self {
            Cell::Int(i) => Some(*i),
            _ => None,
        }
    }
}

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
    /// The values of [`CELL_FIELDS`], in order: text, integers and reals as their fields'
    /// kinds say; null only where a field may be (see [`Row::check`]).
    pub cells: [Cell; N_CELLS],
    pub latent1: Latent,
    pub latent2: Latent,
}

/// Why a row cannot be written: the field and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: &'static str,
    pub reason: String,
}

const VOTES_CHOSEN: usize = cell("votes_chosen");
const VOTES_REJECTED: usize = cell("votes_rejected");
const CONFIDENCE: usize = cell("confidence");
const ORIG_CHOSEN: [usize; 2] = [cell("h1"), cell("w1")];
const ORIG_REJECTED: [usize; 2] = [cell("h2"), cell("w2")];
const FINAL: [usize; 2] = [cell("height"), cell("width")];

impl Row {
    /// A row of these latents, every field missing (its default, or null: the required ones
    /// must be set before it is written).
    pub fn new(latent1: Latent, latent2: Latent) -> Self {
        Row { cells: std::array::from_fn(|k| Cell::missing(&CELL_FIELDS[k])), latent1, latent2 }
    }

    /// The value of the field `name` (a field of the record by its name, not its part name).
    pub fn get(&self, name: &str) -> Option<&Cell> {
        CELL_FIELDS.iter().position(|f| f.name == name).map(|k| &self.cells[k])
    }

    /// Set the field `name` (false when the row has no such field).
    pub fn set(&mut self, name: &str, value: Cell) -> bool {
        match CELL_FIELDS.iter().position(|f| f.name == name) {
            Some(k) => {
                self.cells[k] = value;
                true
            }
            None => false,
        }
    }

    /// The reference's `str(dict)` of the vote and size details (an unknown
    /// original size is `None`, as `str()` writes it).
    pub fn detailed_results(&self) -> String {
        let hw = |[h, w]: [usize; 2]| match (self.cells[h].int(), self.cells[w].int()) {
            (Some(h), Some(w)) => format!("[{h}, {w}]"),
            _ => "None".to_string(),
        };
        let real = |k: usize| match self.cells[k] {
            Cell::Real(x) => x,
            _ => 0.0,
        };
        let int = |k: usize| self.cells[k].int().unwrap_or(0);
        format!(
            "{{'votes_chosen': {}, 'votes_rejected': {}, 'confidence': {}, 'orig_chosen_hw': {}, \
             'orig_rejected_hw': {}, 'final_chosen_hw': {}, 'final_rejected_hw': {}}}",
            int(VOTES_CHOSEN),
            int(VOTES_REJECTED),
            py_float_repr(real(CONFIDENCE)),
            hw(ORIG_CHOSEN),
            hw(ORIG_REJECTED),
            hw(FINAL),
            hw(FINAL)
        )
    }

    /// The value rules a row must meet to be written, from each field's kind: non-negative
    /// votes, a finite confidence, positive sizes, a non-negative index and bucket; a value for
    /// every required field, of its kind; the two halves of a pair (an original size) both given
    /// or neither.
    pub fn check(&self) -> std::result::Result<(), FieldError> {
        for (f, v) in CELL_FIELDS.iter().zip(&self.cells) {
            let fail = |reason: String| Err(FieldError { field: f.part_name, reason });
            match (f.kind, v) {
                (_, Cell::Null) if f.missing == Missing::Required => return fail("is required but missing".into()),
                (_, Cell::Null) => {}
                (Kind::Text | Kind::Path, Cell::Text(_)) => {}
                (Kind::Count, Cell::Int(v)) if *v < 0 => {
                    return fail(format!("must be a non-negative integer, got {v}"))
                }
                (Kind::Index, Cell::Int(v)) if *v < 0 => return fail(format!("must be >= 0, got {v}")),
                (Kind::Bucket, Cell::Int(v)) if !(0..=i64::from(i32::MAX)).contains(v) => {
                    return fail(format!("must be >= 0 and < 2**31, got {v}"))
                }
                (Kind::Size, Cell::Int(v)) if *v <= 0 => {
                    return fail(format!("must be a positive size in pixels, got {v}"))
                }
                (Kind::Count | Kind::Index | Kind::Bucket | Kind::Size, Cell::Int(_)) => {}
                (Kind::Real, Cell::Real(x)) if !x.is_finite() => {
                    return fail(format!("must be a finite number, got {}", py_float_repr(*x)))
                }
                (Kind::Real, Cell::Real(_)) => {}
                (kind, v) => return fail(format!("must be a {} value, got {v:?}", kind.name())),
            }
            if let Some(other) = f.together_with {
                let o = CELL_FIELDS.iter().position(|g| g.name == other).map(|k| &self.cells[k]);
                if *v == Cell::Null && o.is_some_and(|o| *o != Cell::Null) {
                    let other = CELL_FIELDS.iter().find(|g| g.name == other).map_or(other, |g| g.part_name);
                    return fail(format!("is missing while '{other}' is given (give both or neither)"));
                }
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
    /// Key-value metadata for the footer (the provenance, under `hpd_encode`).
    pub metadata: Vec<(String, String)>,
}

impl Default for WriterOptions {
    fn default() -> Self {
        Self {
            row_group_size: MAX_ROW_GROUP_SIZE,
            queue_size: 64,
            zstd_level: 1,
            latent_compression: LatentCompression::None,
            metadata: Vec::new(),
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
    /// The file's digest (XXH3-128, hex: [`crate::parts::digest::FILE_DIGEST`]), computed as it was written.
    pub digest: String,
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
    fn cells(rows: &[Row], k: usize, ty: ColumnType) -> ArrayRef {
        let values = rows.iter().map(|r| &r.cells[k]);
        match ty {
            ColumnType::String => {
                let mut b = StringBuilder::new();
                for v in values {
                    match v {
                        Cell::Text(s) => b.append_value(s),
                        _ => b.append_null(),
                    }
                }
                Arc::new(b.finish())
            }
            ColumnType::Int32 => {
                let mut b = Int32Builder::with_capacity(rows.len());
                values.for_each(|v| b.append_option(v.int().and_then(|i| i32::try_from(i).ok())));
                Arc::new(b.finish())
            }
            ColumnType::Float64 => {
                let mut b = Float64Builder::with_capacity(rows.len());
                values.for_each(|v| {
                    b.append_option(match v {
                        Cell::Real(x) => Some(*x),
                        _ => None,
                    })
                });
                Arc::new(b.finish())
            }
            _ => {
                let mut b = Int64Builder::with_capacity(rows.len());
                values.for_each(|v| b.append_option(v.int()));
                Arc::new(b.finish())
            }
        }
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
    fn latent(r: &Row, k: usize) -> &Latent {
        if k == 0 {
            &r.latent1
        } else {
            &r.latent2
        }
    }
    // Every column but the latents (inserted once the rows are consumed).
    let mut columns: Vec<Option<ArrayRef>> = PART_LAYOUT
        .iter()
        .map(|&(_, ty, source)| match source {
            PartSource::Cell(k) => Some(cells(&rows, k, ty)),
            PartSource::DetailedResults => {
                let mut details = StringBuilder::new();
                rows.iter().for_each(|r| details.append_value(r.detailed_results()));
                Some(Arc::new(details.finish()) as ArrayRef)
            }
            PartSource::Shape(k) => Some(shapes(&rows, |r| latent(r, k))),
            PartSource::Checksum(k) => {
                let mut b = UInt64Builder::with_capacity(rows.len());
                rows.iter().for_each(|r| b.append_value(latent_checksum(latent(r, k).npy())));
                Some(Arc::new(b.finish()) as ArrayRef)
            }
            PartSource::Latent(_) => None,
        })
        .collect();
    let (l1, l2): (Vec<_>, Vec<_>) = rows.into_iter().map(|r| (r.latent1.npy, r.latent2.npy)).unzip();
    let latent_arrays = [latents(l1)?, latents(l2)?];
    for (col, &(_, _, source)) in columns.iter_mut().zip(PART_LAYOUT.iter()) {
        if let PartSource::Latent(k) = source {
            *col = Some(Arc::new(latent_arrays[k].clone()));
        }
    }
    Ok((columns.into_iter().flatten().collect(), latent_arrays))
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
    if !opts.metadata.is_empty() {
        let kv = opts.metadata.iter().map(|(k, v)| KeyValue::new(k.clone(), v.clone())).collect();
        b = b.set_key_value_metadata(Some(kv));
    }
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

/// Create the temporary file `path` is written under ([`temp_path`]).
pub(crate) fn create_temp(path: &Path) -> Result<(PathBuf, File)> {
    let tmp = temp_path(path);
    let file = File::create(&tmp).map_err(|e| Error::io(tmp.display().to_string(), e))?;
    Ok((tmp, file))
}

/// Move a complete, fsynced temporary file to its final name and fsync the
/// directory; the temporary file is removed if that fails. Returns the
/// file's size.
pub(crate) fn publish(tmp: &Path, path: &Path) -> Result<u64> {
    if let Err(e) = std::fs::rename(tmp, path) {
        let _ = std::fs::remove_file(tmp);
        return Err(Error::io(path.display().to_string(), e));
    }
    sync_dir(path);
    Ok(std::fs::metadata(path).map(|m| m.len()).unwrap_or(0))
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
/// Rows are encoded into the open row group's column writers as they arrive
/// (the two latent columns, which are nearly all the bytes and the zstd work,
/// side by side on the writers' pool, [`crate::pool::writer_pool`], whose
/// threads live on: a thread started per batch of rows cost ~15 % more CPU
/// in page faults), so a full row group, or the last one at
/// [`Sink::finish`], only has its encoded pages appended in schema order. The
/// page layout of every file hpd-encode writes comes from here (and
/// [`properties`]): the part writer's rows, and the row groups `repack`
/// copies ([`crate::parts::rewrite`]).
pub(crate) struct Sink {
    schema: SchemaRef,
    writer: SerializedFileWriter<BufWriter<Hashing<File>>>,
    columns: ArrowRowGroupWriterFactory,
    /// The row group being encoded: its column writers (schema order) and its rows so far.
    open: Option<(Vec<ArrowColumnWriter>, usize)>,
    row_group_size: usize,
    rows: u64,
    row_groups: usize,
    spares: Arc<Spares>,
}

fn row_group_error(e: parquet::errors::ParquetError) -> Error {
    Error::Writer(format!("writing a row group: {e}"))
}

fn encode_leaves(writer: &mut ArrowColumnWriter, leaves: Vec<ArrowLeafColumn>) -> Result<()> {
    for leaf in &leaves {
        writer.write(leaf).map_err(|e| Error::Writer(format!("encoding a column: {e}")))?;
    }
    Ok(())
}

impl Sink {
    /// A sink writing `schema`'s columns into `file` with the layout of [`properties`].
    pub(crate) fn create(file: File, schema: SchemaRef, opts: &WriterOptions, spares: Arc<Spares>) -> Result<Self> {
        let out = BufWriter::with_capacity(1 << 20, Hashing::new(file));
        let (writer, columns) = ArrowWriter::try_new(out, schema.clone(), Some(properties(opts)?))
            .and_then(ArrowWriter::into_serialized_writer)
            .map_err(|e| Error::Writer(format!("opening the file: {e}")))?;
        Ok(Self {
            schema,
            writer,
            columns,
            open: None,
            row_group_size: opts.row_group_size,
            rows: 0,
            row_groups: 0,
            spares,
        })
    }

    /// Encode `rows` into the open row group, closing each row group that fills.
    fn push(&mut self, mut rows: Vec<Row>) -> Result<()> {
        while !rows.is_empty() {
            let room = self.row_group_size - self.open.as_ref().map_or(0, |(_, n)| *n);
            let rest = if rows.len() > room { rows.split_off(room) } else { Vec::new() };
            let n = rows.len();
            let (columns, latents) = row_group_columns(rows)?;
            self.encode(&columns)?;
            drop(columns);
            // The latents are encoded and dropped: their buffers go back for reuse.
            for array in latents {
                self.spares.recycle(array);
            }
            self.rows += n as u64;
            if self.open.as_ref().is_some_and(|(_, k)| *k >= self.row_group_size) {
                self.close_row_group()?;
            }
            rows = rest;
        }
        Ok(())
    }

    /// Write `columns` (in schema order, equal lengths) as one row group.
    pub(crate) fn write_row_group(&mut self, columns: Vec<ArrayRef>) -> Result<()> {
        self.encode(&columns)?;
        self.close_row_group()
    }

    /// Encode the rows of `columns` (in schema order, equal lengths) into the open row group
    /// (opened if none is).
    fn encode(&mut self, columns: &[ArrayRef]) -> Result<()> {
        if self.open.is_none() {
            self.open = Some((self.columns.create_column_writers(self.row_groups).map_err(row_group_error)?, 0));
        }
        let Some((writers, rows)) = self.open.as_mut() else { unreachable!("opened above") };
        let mut latents = Vec::with_capacity(LATENT_COLUMNS.len());
        for ((writer, field), array) in writers.iter_mut().zip(self.schema.fields()).zip(columns) {
            let leaves = compute_leaves(field, array).map_err(row_group_error)?;
            if LATENT_COLUMNS.contains(&field.name().as_str()) {
                latents.push((writer, leaves));
            } else {
                encode_leaves(writer, leaves)?;
            }
        }
        match <[_; 2]>::try_from(latents) {
            Ok([(w1, l1), (w2, l2)]) => {
                let (a, b) = crate::pool::writer_pool().join(|| encode_leaves(w1, l1), || encode_leaves(w2, l2));
                a.and(b)?;
            }
            Err(rest) => rest.into_iter().try_for_each(|(w, l)| encode_leaves(w, l))?,
        }
        *rows += columns.first().map_or(0, |c| c.len());
        Ok(())
    }

    /// Append the open row group's encoded pages to the file.
    fn close_row_group(&mut self) -> Result<()> {
        let Some((writers, _)) = self.open.take() else { return Ok(()) };
        let mut group = self.writer.next_row_group().map_err(row_group_error)?;
        for writer in writers {
            writer.close().map_err(row_group_error)?.append_to_row_group(&mut group).map_err(row_group_error)?;
        }
        group.close().map_err(row_group_error)?;
        self.row_groups += 1;
        self.start_writeback();
        Ok(())
    }

    /// Write the last row group and the footer, flush and fsync the file: its row groups and digest.
    pub(crate) fn finish(mut self) -> Result<(u64, String)> {
        self.close_row_group()?;
        let meta = self.writer.finish().map_err(|e| Error::Writer(format!("writing the footer: {e}")))?;
        let buffered = self.writer.inner_mut();
        buffered.flush().map_err(|e| Error::Writer(format!("flushing the file: {e}")))?;
        let hashing = buffered.get_mut();
        hashing.get_mut().sync_all().map_err(|e| Error::Writer(format!("fsync: {e}")))?;
        Ok((meta.num_row_groups() as u64, hashing.hex_digest()))
    }

    /// Ask the kernel to start writing this file's dirty pages to storage now (Linux), so that the
    /// fsync at `close` has little left to wait for: a part file of a few GB would otherwise stay in
    /// the page cache until then, and its commit would stall the run for seconds. A hint; errors
    /// are ignored (the fsync still decides).
    fn start_writeback(&self) {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            let fd = self.writer.inner().get_ref().get_ref().as_raw_fd();
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

/// Rows, row groups and digest of a finished file.
type SinkResult = Result<(u64, u64, String)>;

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
        let (tmp, file) = create_temp(&path)?;
        let spares = Arc::new(Spares::default());
        let sink = Sink::create(file, part_schema(), &opts, spares.clone()).inspect_err(|_| {
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
        let (rows, row_groups, digest) = match joined {
            Ok(v) => v,
            Err(e) => {
                let _ = std::fs::remove_file(&self.tmp);
                return Err(e);
            }
        };
        let bytes = publish(&self.tmp, &self.path)?;
        let blocked_seconds = self.blocked_ns.load(Ordering::Relaxed) as f64 * 1e-9;
        Ok(WriterStats { rows, row_groups, bytes, blocked_seconds, digest })
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
            if let Err(e) = sink.push(rows) {
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
        let rows = sink.rows;
        let (row_groups, digest) = sink.finish()?;
        Ok((rows, row_groups, digest))
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
        let mut r = Row::new(lat(i as f32), lat(-(i as f32)));
        let text = |s: String| Cell::Text(s);
        for (name, v) in [
            ("prompt", text(format!("p{i}"))),
            ("model1", text("a".into())),
            ("model2", text("b".into())),
            ("path1", text(format!("x/{i}.jpg"))),
            ("path2", text(format!("y/{i}.jpg"))),
            ("record_index", Cell::Int(i)),
            ("votes_chosen", Cell::Int(3)),
            ("votes_rejected", Cell::Int(1)),
            ("confidence", Cell::Real(0.75)),
            ("height", Cell::Int(16)),
            ("width", Cell::Int(16)),
            ("bucket_id", Cell::Int(0)),
            ("h1", Cell::Int(20)),
            ("w1", Cell::Int(20)),
            ("h2", Cell::Int(30)),
            ("w2", Cell::Int(30)),
        ] {
            assert!(r.set(name, v), "{name}");
        }
        r
    }

    /// Rows `0..n` ([`row`]) written to `path` in row groups of `row_group_size`.
    pub(crate) fn write_rows(path: &Path, n: i64, row_group_size: usize) {
        let w = PartWriter::create(path, WriterOptions { row_group_size, ..WriterOptions::default() }).unwrap();
        w.submit((0..n).map(row).collect(), || Ok(())).unwrap();
        w.close().unwrap();
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("hpd-writer-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn the_bytes_do_not_depend_on_how_rows_arrive() {
        // Rows are encoded into the open row group as they arrive: one submit
        // per row, uneven submits across row-group boundaries and one submit of
        // everything give the same file, byte for byte.
        let dir = temp_dir("arrival");
        let write = |name: &str, sizes: &[usize]| {
            let path = dir.join(name);
            let w =
                PartWriter::create(&path, WriterOptions { row_group_size: 10, ..WriterOptions::default() }).unwrap();
            let mut next = 0i64;
            for &k in sizes {
                w.submit((next..next + k as i64).map(row).collect(), || Ok(())).unwrap();
                next += k as i64;
            }
            let stats = w.close().unwrap();
            assert_eq!((stats.rows, stats.row_groups), (25, 3));
            (std::fs::read(&path).unwrap(), stats.digest)
        };
        let whole = write("whole.parquet", &[25]);
        assert_eq!(write("ones.parquet", &[1; 25]), whole);
        assert_eq!(write("uneven.parquet", &[3, 9, 1, 11, 1]), whole);
        std::fs::remove_dir_all(&dir).unwrap();
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
        r.set("h1", Cell::Null);
        r.set("w1", Cell::Null);
        assert!(r.detailed_results().contains("'orig_chosen_hw': None, 'orig_rejected_hw': [30, 30]"));
    }

    #[test]
    fn row_values_are_checked() {
        assert_eq!(row(1).check(), Ok(()));
        let cases = [
            ("votes_rejected", Cell::Int(-1), "votes_rejected"),
            ("confidence", Cell::Real(f64::NAN), "confidence"),
            ("width", Cell::Int(0), "width"),
            ("w2", Cell::Int(-5), "orig_rejected_width"),
            ("record_index", Cell::Int(-1), "record_index"),
            ("bucket_id", Cell::Int(1 << 31), "bucket_id"),
            ("prompt", Cell::Null, "prompt"),
            ("prompt", Cell::Int(1), "prompt"),
            ("h1", Cell::Null, "orig_chosen_height"),
        ];
        for (name, value, field) in cases {
            let mut r = row(1);
            r.set(name, value);
            assert_eq!(r.check().unwrap_err().field, field, "{name}");
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
        // The extras are the record's other fields, in declaration order, then the checksums.
        assert_eq!(
            PART_COLUMNS[REFERENCE_COLUMN_COUNT..].iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            [
                "record_index",
                "votes_chosen",
                "votes_rejected",
                "confidence",
                "height",
                "width",
                "bucket_id",
                "orig_chosen_height",
                "orig_chosen_width",
                "orig_rejected_height",
                "orig_rejected_width",
                "latent1_xxh3",
                "latent2_xxh3"
            ]
        );
        assert_eq!(schema.field_with_name("bucket_id").unwrap().data_type(), &DataType::Int32);
        assert_eq!(schema.field_with_name("image1_path").unwrap().data_type(), &DataType::Utf8);
        // Every submitted field is a column or a latent; every column but the
        // derived ones is a submitted field.
        let columns: Vec<&str> = PART_COLUMNS.iter().map(|(n, _)| *n).collect();
        for (field, _) in ROW_FIELDS {
            assert!(columns.contains(&field), "{field}");
        }
        let derived = ["detailed_results", "latent1_shape", "latent2_shape", "latent1_xxh3", "latent2_xxh3"];
        for c in columns.iter().filter(|c| !derived.contains(c)) {
            assert!(ROW_FIELDS.iter().any(|(f, _)| f == c), "{c}");
        }
    }

    #[test]
    fn footer_metadata_checksums_and_digest() {
        use arrow_array::cast::AsArray;
        use arrow_array::types::UInt64Type;
        use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
        let dir = temp_dir("meta");
        let path = dir.join("part.parquet");
        let metadata = vec![("hpd_encode".to_string(), r#"{"seed":7}"#.to_string())];
        let w = PartWriter::create(&path, WriterOptions { row_group_size: 5, metadata, ..Default::default() }).unwrap();
        let rows: Vec<Row> = (0..12).map(row).collect();
        w.submit(rows.clone(), || Ok(())).unwrap();
        let stats = w.close().unwrap();
        assert_eq!(stats.digest, crate::parts::digest::file_digest(&path).unwrap(), "hashed as written");
        let reader = SerializedFileReader::new(File::open(&path).unwrap()).unwrap();
        let kv = reader.metadata().file_metadata().key_value_metadata().unwrap();
        assert!(kv.iter().any(|e| e.key == "hpd_encode" && e.value.as_deref() == Some(r#"{"seed":7}"#)));
        let batches = ParquetRecordBatchReaderBuilder::try_new(File::open(&path).unwrap()).unwrap().build().unwrap();
        let mut n = 0;
        for batch in batches {
            let batch = batch.unwrap();
            let crc: Vec<_> = CHECKSUM_COLUMNS
                .iter()
                .map(|c| batch.column_by_name(c).unwrap().as_primitive::<UInt64Type>().clone())
                .collect();
            for i in 0..batch.num_rows() {
                assert_eq!(crc[0].value(i), latent_checksum(rows[n].latent1.npy()));
                assert_eq!(crc[1].value(i), latent_checksum(rows[n].latent2.npy()));
                n += 1;
            }
        }
        assert_eq!(n, 12);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn latent_bytes_are_npy() {
        let data: Vec<u8> = (0..24u8).collect();
        let l = Latent::from_bytes(LatentDtype::F16, vec![3, 4], &data).unwrap();
        assert_eq!(l.npy(), crate::parts::npy::npy_bytes("<f2", &[3, 4], &data));
        assert!(Latent::from_bytes(LatentDtype::F32, vec![3, 4], &data).is_err());
    }
}
