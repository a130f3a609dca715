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
    macro_rules! prim {
        ($t:ty, $variant:ident, $conv:expr) => {{
            let a = col.as_primitive::<$t>();
            Values::$variant((0..n).map(|i| (!a.is_null(i)).then(|| $conv(a.value(i)))).collect())
        }};
    }
    Ok(match col.data_type() {
        DataType::Utf8 => {
            let a = col.as_string::<i32>();
            Values::Str((0..n).map(|i| (!a.is_null(i)).then(|| a.value(i).to_owned())).collect())
        }
        DataType::LargeUtf8 => {
            let a = col.as_string::<i64>();
            Values::Str((0..n).map(|i| (!a.is_null(i)).then(|| a.value(i).to_owned())).collect())
        }
        DataType::Utf8View => {
            let a = col.as_string_view();
            Values::Str((0..n).map(|i| (!a.is_null(i)).then(|| a.value(i).to_owned())).collect())
        }
        DataType::Binary => {
            let a = col.as_binary::<i32>();
            Values::Bytes((0..n).map(|i| (!a.is_null(i)).then(|| a.value(i).to_vec())).collect())
        }
        DataType::LargeBinary => {
            let a = col.as_binary::<i64>();
            Values::Bytes((0..n).map(|i| (!a.is_null(i)).then(|| a.value(i).to_vec())).collect())
        }
        DataType::Int8 => prim!(Int8Type, Int, i64::from),
        DataType::Int16 => prim!(Int16Type, Int, i64::from),
        DataType::Int32 => prim!(Int32Type, Int, i64::from),
        DataType::Int64 => prim!(Int64Type, Int, |v| v),
        DataType::UInt32 => prim!(UInt32Type, Int, i64::from),
        DataType::UInt64 => prim!(UInt64Type, Int, |v: u64| v as i64),
        DataType::Float32 => prim!(Float32Type, Float, f64::from),
        DataType::Float64 => prim!(Float64Type, Float, |v| v),
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
            .with_batch_size(1 << 16)
            .build()
            .map_err(|e| e.to_string())
            .and_then(|r| r.collect::<std::result::Result<Vec<_>, _>>().map_err(|e| e.to_string()))
    }))
    .map_err(|_| failed("the Parquet reader crashed (caught panic)".into()))?
    .map_err(failed)?;
    let mut out: Vec<(String, Values)> = Vec::with_capacity(names.len());
    for name in names {
        let mut parts = Vec::new();
        for batch in &reader {
            let col = batch.column_by_name(name).ok_or_else(|| failed(format!("the reader returned no '{name}'")))?;
            parts.push(convert(name, col.as_ref()).map_err(failed)?);
        }
        let mut merged = parts.into_iter();
        let first = merged.next().unwrap_or(Values::Int(Vec::new()));
        let all = merged.fold(first, |acc, next| match (acc, next) {
            (Values::Str(mut a), Values::Str(b)) => {
                a.extend(b);
                Values::Str(a)
            }
            (Values::Int(mut a), Values::Int(b)) => {
                a.extend(b);
                Values::Int(a)
            }
            (Values::Float(mut a), Values::Float(b)) => {
                a.extend(b);
                Values::Float(a)
            }
            (Values::Bytes(mut a), Values::Bytes(b)) => {
                a.extend(b);
                Values::Bytes(a)
            }
            (Values::IntList(mut a), Values::IntList(b)) => {
                a.extend(b);
                Values::IntList(a)
            }
            (a, _) => a,
        });
        out.push((name.clone(), all));
    }
    Ok(out)
}
