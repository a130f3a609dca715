//! Rewriting a part file into the page layout hpd-encode writes: `repack`'s
//! Rust side, through the part writer's own [`Sink`] and
//! [`WriterOptions`], so the layout has one author.
//!
//! Every column of the source is kept, its values and types unchanged, and
//! so are its row-group boundaries (an index's `(row_group, row_index)`
//! positions stay valid); the latent columns get one data page per value,
//! uncompressed unless asked, and the offset index. A source without
//! checksum columns gets them, computed from its latents; a source with them
//! has every latent checked against them first, so a damaged source is
//! refused instead of being copied under fresh checksums. The footer gets
//! the key-value metadata the caller gives (the source's, plus where it came
//! from). The file is written under its temporary name, fsynced and renamed.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::Arc;

use arrow_array::{new_empty_array, Array, ArrayRef, UInt64Array};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder};

use crate::error::{Error, Result};
use crate::parts::digest::latent_checksum;
use crate::parts::reader::{binary_value, panic_message};
use crate::parts::writer::{
    create_temp, publish, Sink, Spares, WriterOptions, WriterStats, CHECKSUM_COLUMNS, LATENT_COLUMNS,
};

/// The columns a file must have to be a part file worth rewriting.
const REQUIRED: [&str; 4] = ["latent1", "latent2", "latent1_shape", "latent2_shape"];

/// What [`rewrite_file`] wrote.
#[derive(Debug, Clone)]
pub struct Rewritten {
    pub stats: WriterStats,
    /// The source had no checksum columns: they were computed from its latents.
    pub checksums_added: bool,
}

/// The checksum of each value of a latent column (null stays null).
fn checksums(column: &dyn Array) -> std::result::Result<Vec<Option<u64>>, String> {
    (0..column.len()).map(|i| Ok(binary_value(column, i)?.map(latent_checksum))).collect()
}

/// The output schema: the source's, plus the checksum columns when it lacks
/// them (`Ok(true)`); a source with only one of them, or of another type, is refused.
fn with_checksums(schema: &SchemaRef) -> std::result::Result<(SchemaRef, bool), String> {
    for name in REQUIRED {
        if schema.field_with_name(name).is_err() {
            return Err(format!("it has no '{name}' column: not a part file; nothing was written"));
        }
    }
    for name in LATENT_COLUMNS {
        let ty = schema.field_with_name(name).map(|f| f.data_type().clone()).unwrap_or(DataType::Null);
        if !matches!(ty, DataType::Binary | DataType::LargeBinary | DataType::BinaryView) {
            return Err(format!("column '{name}' is {ty}, not binary: not a part file; nothing was written"));
        }
    }
    let found: Vec<Option<&Field>> = CHECKSUM_COLUMNS.iter().map(|c| schema.field_with_name(c).ok()).collect();
    match (found[0], found[1]) {
        (None, None) => {
            let mut fields: Vec<Arc<Field>> = schema.fields().iter().cloned().collect();
            fields.extend(CHECKSUM_COLUMNS.iter().map(|c| Arc::new(Field::new(*c, DataType::UInt64, true))));
            Ok((Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone())), true))
        }
        (Some(a), Some(b)) if a.data_type() == &DataType::UInt64 && b.data_type() == &DataType::UInt64 => {
            Ok((schema.clone(), false))
        }
        _ => Err(format!(
            "its checksum columns are incomplete or not uint64 ({}); nothing was written",
            CHECKSUM_COLUMNS.join(", ")
        )),
    }
}

/// Rewrite the part file `src` into `dest` (see the module's description).
/// `opts` gives the latent codec, the zstd level and the footer's key-value
/// metadata; the row-group size is the source's.
pub fn rewrite_file(src: &Path, dest: &Path, opts: &WriterOptions) -> Result<Rewritten> {
    let shown = src.display().to_string();
    let part_error = |message: String| Error::PartFile { path: shown.clone(), message };
    // Never blocks: a FIFO or device named like a part file is refused, saying what it is.
    let (file, _) = crate::image::safe_open::open_regular(src)?;
    let meta = catch_unwind(AssertUnwindSafe(|| ArrowReaderMetadata::load(&file, ArrowReaderOptions::new())))
        .map_err(|p| part_error(format!("the Parquet reader crashed (caught panic: {})", panic_message(p))))?
        .map_err(|e| part_error(format!("cannot read its footer: {e}")))?;
    let (schema, add) = with_checksums(meta.schema()).map_err(&part_error)?;
    let source_fields = meta.schema().fields().len();
    let latent_at: Vec<usize> = LATENT_COLUMNS.iter().map(|c| meta.schema().index_of(c).unwrap_or(0)).collect();
    let stored_at: Vec<usize> = CHECKSUM_COLUMNS.iter().map(|c| schema.index_of(c).unwrap_or(0)).collect();
    let (tmp, out) = create_temp(dest)?;
    let written = catch_unwind(AssertUnwindSafe(|| -> Result<(u64, u64, String)> {
        let mut sink = Sink::create(out, schema.clone(), opts, Arc::new(Spares::default()))?;
        let md = meta.metadata().clone();
        let mut rows = 0u64;
        for rg in 0..md.num_row_groups() {
            let n = usize::try_from(md.row_group(rg).num_rows()).unwrap_or(0);
            let at = |message: String| part_error(format!("row group {rg}: {message}"));
            let input = file.try_clone().map_err(|e| Error::io(&shown, e))?;
            let batches: Vec<_> = ParquetRecordBatchReaderBuilder::new_with_metadata(input, meta.clone())
                .with_row_groups(vec![rg])
                .with_batch_size(n.max(1))
                .build()
                .map_err(|e| at(e.to_string()))?
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| at(format!("cannot be read: {e}")))?;
            let mut columns: Vec<ArrayRef> = match batches.as_slice() {
                [] => meta.schema().fields().iter().map(|f| new_empty_array(f.data_type())).collect(),
                [batch] => batch.columns().to_vec(),
                _ => return Err(at("read as more than one batch".into())),
            };
            if columns.first().map_or(0, |c| c.len()) != n || columns.len() != source_fields {
                return Err(at(format!("holds a different number of rows than its footer's {n}")));
            }
            let mut sums = Vec::with_capacity(2);
            for &i in &latent_at {
                sums.push(checksums(columns[i].as_ref()).map_err(&at)?);
            }
            if add {
                columns.extend(sums.into_iter().map(|s| Arc::new(UInt64Array::from(s)) as ArrayRef));
            } else {
                for (k, sum) in sums.iter().enumerate() {
                    let stored = columns[stored_at[k]]
                        .as_any()
                        .downcast_ref::<UInt64Array>()
                        .ok_or_else(|| at(format!("column '{}' is not uint64", CHECKSUM_COLUMNS[k])))?;
                    for (row, got) in sum.iter().enumerate() {
                        if let (Some(got), true) = (got, stored.is_valid(row)) {
                            if stored.value(row) != *got {
                                return Err(at(format!(
                                    "row {row}: {} does not match its stored checksum ({} says {:#018x}, its \
                                     bytes give {got:#018x}): the source is damaged; nothing was written",
                                    LATENT_COLUMNS[k],
                                    CHECKSUM_COLUMNS[k],
                                    stored.value(row)
                                )));
                            }
                        }
                    }
                }
            }
            sink.write_row_group(columns)?;
            rows += n as u64;
        }
        let (row_groups, digest) = sink.finish()?;
        Ok((rows, row_groups, digest))
    }))
    .unwrap_or_else(|p| Err(part_error(format!("the Parquet reader crashed (caught panic: {})", panic_message(p)))));
    let (rows, row_groups, digest) = written.inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })?;
    let bytes = publish(&tmp, dest)?;
    Ok(Rewritten { stats: WriterStats { rows, row_groups, bytes, blocked_seconds: 0.0, digest }, checksums_added: add })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parts::reader::{check_file, ChecksumCheck, PartFile};
    use crate::parts::writer::tests::{row, write_rows};
    use crate::parts::writer::PartWriter;
    use arrow_array::cast::AsArray;
    use arrow_array::types::UInt64Type;
    use arrow_array::RecordBatch;
    use parquet::arrow::ArrowWriter;
    use std::fs::File;

    fn temp_dir(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("hpd-rewrite-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A file as pyarrow's defaults would write one: our columns without the
    /// checksums, plus one extra column, row groups of 40, latents in big pages.
    fn plain_file(path: &Path, extra: bool) {
        let src = path.with_extension("src.parquet");
        let w = PartWriter::create(&src, WriterOptions::default()).unwrap();
        w.submit((0..90).map(row).collect(), || Ok(())).unwrap();
        w.close().unwrap();
        let batches: Vec<RecordBatch> = ParquetRecordBatchReaderBuilder::try_new(File::open(&src).unwrap())
            .unwrap()
            .build()
            .unwrap()
            .map(|b| b.unwrap())
            .collect();
        let keep = |b: &RecordBatch| -> RecordBatch {
            let mut cols: Vec<usize> = (0..b.num_columns())
                .filter(|&i| !CHECKSUM_COLUMNS.contains(&b.schema().field(i).name().as_str()))
                .collect();
            if !extra {
                cols.truncate(10);
            }
            b.project(&cols).unwrap()
        };
        let schema = keep(&batches[0]).schema();
        let props =
            parquet::file::properties::WriterProperties::builder().set_max_row_group_row_count(Some(40)).build();
        let mut w = ArrowWriter::try_new(File::create(path).unwrap(), schema, Some(props)).unwrap();
        for b in &batches {
            w.write(&keep(b)).unwrap();
        }
        w.close().unwrap();
        std::fs::remove_file(&src).unwrap();
    }

    #[test]
    fn keeps_columns_and_row_groups_adds_checksums_and_pages() {
        let dir = temp_dir("keep");
        for extra in [false, true] {
            let src = dir.join(format!("src-{extra}.parquet"));
            plain_file(&src, extra);
            let dest = dir.join(format!("dest-{extra}.parquet"));
            let metadata = vec![("hpd_encode".to_string(), "{}".to_string())];
            let done = rewrite_file(&src, &dest, &WriterOptions { metadata, ..Default::default() }).unwrap();
            assert!(done.checksums_added);
            assert_eq!((done.stats.rows, done.stats.row_groups), (90, 3));
            let a = PartFile::open(&src).unwrap();
            let b = PartFile::open(&dest).unwrap();
            assert!(!a.paged() && b.paged());
            assert_eq!(a.row_group_rows(), b.row_group_rows());
            assert_eq!(b.key_value("hpd_encode").as_deref(), Some("{}"));
            let read = |p: &Path| -> Vec<RecordBatch> {
                ParquetRecordBatchReaderBuilder::try_new(File::open(p).unwrap())
                    .unwrap()
                    .build()
                    .unwrap()
                    .map(|b| b.unwrap())
                    .collect()
            };
            let (before, after) = (read(&src), read(&dest));
            let n = before[0].num_columns();
            assert_eq!(after[0].num_columns(), n + 2);
            for (x, y) in before.iter().zip(&after) {
                for c in 0..n {
                    assert_eq!(x.column(c).as_ref(), y.column(c).as_ref(), "column {c}");
                }
                let crc = y.column(n).as_primitive::<UInt64Type>();
                let latent = x.column_by_name("latent1").unwrap().as_binary::<i32>();
                for i in 0..x.num_rows() {
                    assert_eq!(crc.value(i), latent_checksum(latent.value(i)));
                }
            }
            let checks = check_file(&dest, Some(2)).unwrap();
            assert!(checks
                .iter()
                .all(|c| c.latents.iter().all(|l| l.as_ref().unwrap().checksum == ChecksumCheck::Match)));
            // A second rewrite keeps the checksums it finds, after checking them.
            let again = dir.join(format!("again-{extra}.parquet"));
            assert!(!rewrite_file(&dest, &again, &WriterOptions::default()).unwrap().checksums_added);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn refuses_damaged_sources_and_non_part_files() {
        let dir = temp_dir("refuse");
        let good = dir.join("good.parquet");
        write_rows(&good, 5, 100);
        // One bit of row 3's latent2 data flipped: refused, naming the row; nothing left behind.
        let mut bytes = std::fs::read(&good).unwrap();
        let f = PartFile::open(&good).unwrap();
        let page = f.page_locations(0, 1).unwrap()[3].clone();
        let at = (page.offset + page.compressed_page_size as i64 - 5) as usize;
        bytes[at] ^= 0x10;
        let bad = dir.join("bad.parquet");
        std::fs::write(&bad, &bytes).unwrap();
        let dest = dir.join("dest.parquet");
        let err = rewrite_file(&bad, &dest, &WriterOptions::default()).unwrap_err().to_string();
        assert!(err.contains("bad.parquet") && err.contains("row group 0: row 3: latent2"), "{err}");
        assert!(!dest.exists());
        let only: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(only.len(), 2, "no temporary file left: {only:?}");
        // Not a part file: no latent columns.
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
        let batch =
            RecordBatch::try_new(schema.clone(), vec![Arc::new(arrow_array::Int64Array::from(vec![1]))]).unwrap();
        let other = dir.join("other.parquet");
        let mut w = ArrowWriter::try_new(File::create(&other).unwrap(), schema, None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        let err = rewrite_file(&other, &dest, &WriterOptions::default()).unwrap_err().to_string();
        assert!(err.contains("no 'latent1' column"), "{err}");
        std::fs::write(&other, b"PAR1 not really").unwrap();
        assert!(rewrite_file(&other, &dest, &WriterOptions::default()).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
