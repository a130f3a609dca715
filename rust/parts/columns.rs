//! The small columns of one row group (prompt, models, votes...), for a
//! reader that takes its latents from `reader::read_pairs`: read through the
//! same cached footer and [`Input`](crate::parts::store::Input) as the
//! latents. From an object the column chunks asked for are fetched ahead,
//! chunks that touch merged into one GET (the reference columns `prompt`,
//! `model1`, `model2`, `detailed_results` lie side by side: one GET).

use std::path::Path;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type, UInt32Type, UInt64Type};
use arrow_array::Array;
use arrow_schema::DataType;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;

use crate::parts::reader::{open_cached, PartFile, ReadError, Result};
use crate::parts::store::{self, StoreErrorKind};

/// One column's values, in row order (`None` for nulls).
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    Str(Vec<Option<String>>),
    Int(Vec<Option<i64>>),
    Float(Vec<Option<f64>>),
    Bytes(Vec<Option<Vec<u8>>>),
    IntList(Vec<Option<Vec<i64>>>),
}

fn convert(name: &str, col: &dyn Array) -> std::result::Result<Values, String> {
    let n = col.len();
    // `$array`'s values (None for nulls), each through `$conv`, as `Values::$variant`.
    macro_rules! each {
        ($array:expr, $variant:ident, $conv:expr) => {{
            let a = $array;
            Values::$variant((0..n).map(|i| (!a.is_null(i)).then(|| $conv(a.value(i)))).collect())
        }};
    }
    Ok(match col.data_type() {
        DataType::Utf8 => each!(col.as_string::<i32>(), Str, str::to_owned),
        DataType::LargeUtf8 => each!(col.as_string::<i64>(), Str, str::to_owned),
        DataType::Utf8View => each!(col.as_string_view(), Str, str::to_owned),
        DataType::Binary => each!(col.as_binary::<i32>(), Bytes, <[u8]>::to_vec),
        DataType::LargeBinary => each!(col.as_binary::<i64>(), Bytes, <[u8]>::to_vec),
        DataType::Int8 => each!(col.as_primitive::<Int8Type>(), Int, i64::from),
        DataType::Int16 => each!(col.as_primitive::<Int16Type>(), Int, i64::from),
        DataType::Int32 => each!(col.as_primitive::<Int32Type>(), Int, i64::from),
        DataType::Int64 => each!(col.as_primitive::<Int64Type>(), Int, |v: i64| v),
        DataType::UInt32 => each!(col.as_primitive::<UInt32Type>(), Int, i64::from),
        DataType::UInt64 => each!(col.as_primitive::<UInt64Type>(), Int, |v: u64| v as i64),
        DataType::Float32 => each!(col.as_primitive::<Float32Type>(), Float, f64::from),
        DataType::Float64 => each!(col.as_primitive::<Float64Type>(), Float, |v: f64| v),
        DataType::List(_) | DataType::LargeList(_) => {
            let lists: Vec<Option<Arc<dyn Array>>> = match col.data_type() {
                DataType::List(_) => {
                    let a = col.as_list::<i32>();
                    (0..n).map(|i| (!a.is_null(i)).then(|| a.value(i))).collect()
                }
                _ => {
                    let a = col.as_list::<i64>();
                    (0..n).map(|i| (!a.is_null(i)).then(|| a.value(i))).collect()
                }
            };
            let mut out = Vec::with_capacity(n);
            for l in lists {
                out.push(match l {
                    None => None,
                    Some(inner) => match convert(name, inner.as_ref())? {
                        Values::Int(v) => Some(v.into_iter().map(|x| x.unwrap_or(0)).collect()),
                        _ => return Err(format!("column '{name}' is a list of {}, not integers", inner.data_type())),
                    },
                });
            }
            Values::IntList(out)
        }
        other => return Err(format!("column '{name}' has type {other}, which this reader does not hand out")),
    })
}

/// The values of `names` in row group `row_group` of the part file at `path`.
pub fn read_columns(path: &Path, row_group: usize, names: &[String]) -> Result<Vec<(String, Values)>> {
    let file: Arc<PartFile> = open_cached(path)?;
    file.check_row_group(row_group)?;
    let md = file.metadata().metadata().clone();
    let schema = md.file_metadata().schema_descr();
    let root = schema.root_schema().get_fields();
    let mut roots = Vec::with_capacity(names.len());
    for name in names {
        let i = root.iter().position(|f| f.name() == name).ok_or_else(|| ReadError::File {
            path: file.path().to_owned(),
            message: format!("it has no '{name}' column"),
        })?;
        roots.push(i);
    }
    let mask = ProjectionMask::roots(schema, roots.iter().copied());
    let rows = md.row_group(row_group).num_rows() as usize;
    let view = match file.input().remote() {
        None => file.clone(),
        Some(remote) => {
            let rg = md.row_group(row_group);
            let ranges: Vec<std::ops::Range<u64>> = (0..schema.num_columns())
                .filter(|&leaf| mask.leaf_included(leaf))
                .map(|leaf| {
                    let (start, len) = rg.column(leaf).byte_range();
                    start..start + len
                })
                .collect();
            match store::block_on(remote.object().get_ranges(&ranges)) {
                Ok(buffers) => Arc::new(file.with_buffers(buffers)),
                Err(e) => {
                    if e.kind == StoreErrorKind::Changed {
                        crate::parts::reader::forget(path);
                    }
                    return Err(ReadError::Store(e));
                }
            }
        }
    };
    let failed = |message: String| match view.input().failure() {
        Some(f) => ReadError::Store(f),
        None => ReadError::File { path: view.path().to_owned(), message: format!("row group {row_group}: {message}") },
    };
    let reader = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        ParquetRecordBatchReaderBuilder::new_with_metadata(view.input().clone(), view.metadata().clone())
            .with_row_groups(vec![row_group])
            .with_projection(mask)
            .with_batch_size(rows.max(1))
            .build()
            .map_err(|e| e.to_string())
            .and_then(|r| r.collect::<std::result::Result<Vec<_>, _>>().map_err(|e| e.to_string()))
    }))
    .map_err(|_| failed("the Parquet reader crashed (caught panic)".into()))?
    .map_err(failed)?;
    // One batch: the row group's rows (a row group is read whole).
    let batch = match reader.as_slice() {
        [] => return Ok(names.iter().map(|n| (n.clone(), Values::Int(Vec::new()))).collect()), // no rows
        [one] => one,
        _ => return Err(failed("the reader returned the row group in several batches".into())),
    };
    let mut out: Vec<(String, Values)> = Vec::with_capacity(names.len());
    for name in names {
        let col = batch.column_by_name(name).ok_or_else(|| failed(format!("the reader returned no '{name}'")))?;
        out.push((name.clone(), convert(name, col.as_ref()).map_err(failed)?));
    }
    Ok(out)
}
