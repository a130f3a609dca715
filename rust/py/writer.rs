//! `hpd_encode.ParquetWriter`: the background part-file writer as a Python
//! context manager, and the part-file schema facts `hpd_encode.schema`
//! derives from.
//!
//! `submit` converts and checks every row of the call while holding the GIL
//! (one copy of each latent, straight into its `.npy` bytes), so a bad row
//! raises `InvalidRowError` naming the field and the row's `record_index`
//! and nothing of that call is queued; then it waits for queue space without
//! the GIL. The class is `frozen` and the writer it wraps is `Sync`: threads
//! may share one writer.

use std::path::PathBuf;

use numpy::{PyArrayDyn, PyArrayMethods, PyUntypedArray, PyUntypedArrayMethods};

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PySequence, PyString, PyTuple};

use crate::error::Error;
use crate::parts::writer::{
    reference_columns, temp_path, Latent, LatentCompression, LatentDtype, PartWriter, Row, WriterOptions,
    LATENT_DOWN_FACTOR, MAX_ROW_GROUP_SIZE, PART_COLUMNS, ROW_FIELDS, TEMP_FILE_PATTERN,
};
use crate::py::errors::{INVALID_ROW, USAGE};

/// What is wrong with one row: the field (or unknown key) and why.
struct Bad {
    field: String,
    reason: String,
}

impl Bad {
    fn new(field: &str, reason: impl Into<String>) -> Self {
        Self { field: field.into(), reason: reason.into() }
    }
}

type Field<T> = Result<T, Bad>;

/// `repr(v)`, shortened (a vote count of `10**400` has 401 digits).
fn short_repr(v: &Bound<'_, PyAny>) -> String {
    let r = v.repr().map(|r| r.to_string()).unwrap_or_else(|_| "<unprintable>".into());
    if r.chars().count() > 40 {
        format!("{}... ({} characters)", r.chars().take(30).collect::<String>(), r.chars().count())
    } else {
        r
    }
}

fn type_name(v: &Bound<'_, PyAny>) -> String {
    v.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "?".into())
}

/// The row's fields, strictly: unknown keys are refused, `None` counts as absent.
struct Fields<'a, 'py> {
    d: &'a Bound<'py, PyDict>,
    writer: &'a PartWriter,
}

impl<'py> Fields<'_, 'py> {
    fn get(&self, field: &str) -> Field<Option<Bound<'py, PyAny>>> {
        match self.d.get_item(field) {
            Ok(Some(v)) if !v.is_none() => Ok(Some(v)),
            Ok(_) => Ok(None),
            Err(e) => Err(Bad::new(field, format!("cannot be read ({e})"))),
        }
    }

    fn required(&self, field: &str) -> Field<Bound<'py, PyAny>> {
        self.get(field)?.ok_or_else(|| Bad::new(field, "is required but missing (or None)"))
    }

    fn text(&self, field: &str, default: Option<&str>) -> Field<String> {
        let v = match (self.get(field)?, default) {
            (Some(v), _) => v,
            (None, Some(d)) => return Ok(d.to_string()),
            (None, None) => return Err(Bad::new(field, "is required but missing (or None)")),
        };
        let s = v.cast::<PyString>().map_err(|_| Bad::new(field, format!("must be a str, not {}", type_name(&v))))?;
        s.to_str()
            .map(str::to_string)
            .map_err(|_| Bad::new(field, format!("is not valid Unicode text (a lone surrogate?): {}", short_repr(&v))))
    }

    /// An integer in `min..=max`: Python ints and NumPy integers, not bools or floats.
    fn int(&self, field: &str, min: i64, max: i64) -> Field<Option<i64>> {
        let Some(v) = self.get(field)? else { return Ok(None) };
        let bad = || {
            Bad::new(
                field,
                format!("must be an integer from {min} to {max}, got {} ({})", short_repr(&v), type_name(&v)),
            )
        };
        if v.is_instance_of::<PyBool>() {
            return Err(bad());
        }
        let i = v.extract::<i64>().map_err(|_| bad())?;
        if !(min..=max).contains(&i) {
            return Err(bad());
        }
        Ok(Some(i))
    }

    fn float(&self, field: &str) -> Field<Option<f64>> {
        let Some(v) = self.get(field)? else { return Ok(None) };
        let bad = |what: &str| Bad::new(field, format!("must be {what}, got {} ({})", short_repr(&v), type_name(&v)));
        if v.is_instance_of::<PyBool>() || v.is_instance_of::<PyString>() {
            return Err(bad("a number"));
        }
        let x = v.extract::<f64>().map_err(|_| bad("a number"))?;
        if !x.is_finite() {
            return Err(bad("a finite number"));
        }
        Ok(Some(x))
    }

    /// Both halves of a size, or neither.
    fn size(&self, name: &str) -> Field<Option<(i64, i64)>> {
        let (hf, wf) = (format!("{name}_height"), format!("{name}_width"));
        match (self.int(&hf, 1, i64::MAX)?, self.int(&wf, 1, i64::MAX)?) {
            (Some(h), Some(w)) => Ok(Some((h, w))),
            (None, None) => Ok(None),
            (Some(_), None) => Err(Bad::new(&wf, format!("is missing while '{hf}' is given (give both or neither)"))),
            (None, Some(_)) => Err(Bad::new(&hf, format!("is missing while '{wf}' is given (give both or neither)"))),
        }
    }

    fn latent(&self, field: &str) -> Field<Latent> {
        let v = self.required(field)?;
        latent_from(&v, self.writer).map_err(|reason| Bad::new(field, reason))
    }
}

/// Copy a float32/float16 NumPy array straight into its `.npy` bytes.
fn latent_from(obj: &Bound<'_, PyAny>, writer: &PartWriter) -> Result<Latent, String> {
    let arr = obj.cast::<PyUntypedArray>().map_err(|_| format!("must be a numpy array, not {}", type_name(obj)))?;
    let descr: String =
        arr.dtype().getattr("str").and_then(|s| s.extract()).map_err(|e| format!("has an unreadable dtype ({e})"))?;
    let dtype = LatentDtype::from_descr(&descr)
        .ok_or_else(|| format!("must be float32 or float16 (little-endian), not {descr}"))?;
    if arr.ndim() == 0 {
        return Err("must have at least one dimension".into());
    }
    let shape = arr.shape().to_vec();
    let py_err = |e: PyErr| format!("cannot be read as bytes ({e})");
    let contiguous =
        obj.py().import("numpy").and_then(|np| np.call_method1("ascontiguousarray", (obj,))).map_err(py_err)?;
    let as_u8 = contiguous.call_method1("view", ("u1",)).map_err(py_err)?;
    let bytes = as_u8.cast::<PyArrayDyn<u8>>().map_err(|e| format!("cannot be read as bytes ({e})"))?.readonly();
    let data = bytes.as_slice().map_err(|e| format!("cannot be read as bytes ({e})"))?;
    writer.latent(dtype, shape, data).map_err(|e| e.to_string())
}

fn row_from(d: &Bound<'_, PyDict>, record_index: Option<i64>, writer: &PartWriter) -> Field<Row> {
    for key in d.keys() {
        let name = key.cast::<PyString>().ok().and_then(|s| s.to_str().ok().map(str::to_string));
        if !name.as_deref().is_some_and(|n| ROW_FIELDS.iter().any(|(f, _)| *f == n)) {
            let known: Vec<&str> = ROW_FIELDS.iter().map(|(f, _)| *f).collect();
            let field = name.unwrap_or_else(|| short_repr(&key));
            return Err(Bad::new(&field, format!("is not a row field (known: {})", known.join(", "))));
        }
    }
    let f = Fields { d, writer };
    let votes = |field: &str| Ok(f.int(field, 0, i64::MAX)?.unwrap_or(0));
    let row = Row {
        prompt: f.text("prompt", None)?,
        model1: f.text("model1", Some(""))?,
        model2: f.text("model2", Some(""))?,
        image1_path: f.text("image1_path", None)?,
        image2_path: f.text("image2_path", None)?,
        record_index,
        votes_chosen: votes("votes_chosen")?,
        votes_rejected: votes("votes_rejected")?,
        confidence: f.float("confidence")?.unwrap_or(0.0),
        height: f.int("height", 1, i64::MAX)?.ok_or_else(|| Bad::new("height", "is required but missing (or None)"))?,
        width: f.int("width", 1, i64::MAX)?.ok_or_else(|| Bad::new("width", "is required but missing (or None)"))?,
        bucket_id: f.int("bucket_id", 0, i32::MAX.into())?.map(|b| b as i32),
        orig_chosen: f.size("orig_chosen")?,
        orig_rejected: f.size("orig_rejected")?,
        latent1: f.latent("latent1")?,
        latent2: f.latent("latent2")?,
    };
    row.check().map_err(|e| Bad::new(e.field, e.reason))?;
    Ok(row)
}

/// Convert a whole `submit` call, or raise `InvalidRowError` for its first bad row.
fn rows_from(py: Python<'_>, rows: &Bound<'_, PyAny>, writer: &PartWriter) -> PyResult<Vec<Row>> {
    let seq = rows
        .cast::<PySequence>()
        .ok()
        .filter(|_| !rows.is_instance_of::<PyString>())
        .ok_or_else(|| USAGE.err(format!("rows must be a list of dicts, not {}", type_name(rows))))?;
    let mut out = Vec::with_capacity(seq.len().unwrap_or(0));
    for (position, item) in seq.try_iter()?.enumerate() {
        let item = item?;
        let (record_index, result) = match item.cast::<PyDict>() {
            Ok(d) => {
                let f = Fields { d, writer };
                match f.int("record_index", 0, i64::MAX) {
                    Ok(ri) => (ri, row_from(d, ri, writer)),
                    Err(bad) => (None, Err(bad)),
                }
            }
            Err(_) => (None, Err(Bad::new("", format!("the row must be a dict, not {}", type_name(&item))))),
        };
        match result {
            Ok(row) => out.push(row),
            Err(bad) => return Err(invalid_row(py, position, record_index, bad)),
        }
    }
    Ok(out)
}

fn invalid_row(py: Python<'_>, position: usize, record_index: Option<i64>, bad: Bad) -> PyErr {
    let which = match record_index {
        Some(i) => format!("record_index {i}, row {position} of this submit()"),
        None => format!("row {position} of this submit(), no record_index"),
    };
    let what = if bad.field.is_empty() { String::new() } else { format!("field '{}' ", bad.field) };
    let msg = format!("invalid row ({which}): {what}{}; nothing of this submit() was queued", bad.reason);
    let ty = match INVALID_ROW.get(py) {
        Ok(ty) => ty.clone(),
        Err(e) => return e,
    };
    let err = PyErr::from_type(ty, msg);
    let value = err.value(py);
    let set = value
        .setattr("field", Some(&bad.field).filter(|f| !f.is_empty()))
        .and_then(|_| value.setattr("record_index", record_index))
        .and_then(|_| value.setattr("position", position));
    match set {
        Ok(()) => err,
        Err(e) => e,
    }
}

const _: () = assert!(MAX_ROW_GROUP_SIZE == 100, "update ParquetWriter's default row_group_size");

#[pyclass(name = "ParquetWriter", module = "hpd_encode._core", frozen)]
pub struct PyParquetWriter {
    inner: PartWriter,
}

impl PyParquetWriter {
    fn stats_dict(&self, py: Python<'_>) -> PyResult<Py<PyDict>> {
        let stats = py.detach(|| self.inner.close())?;
        let d = PyDict::new(py);
        d.set_item("path", self.inner.path().to_path_buf())?;
        d.set_item("rows", stats.rows)?;
        d.set_item("row_groups", stats.row_groups)?;
        d.set_item("bytes", stats.bytes)?;
        d.set_item("blocked_seconds", stats.blocked_seconds)?;
        Ok(d.unbind())
    }
}

#[pymethods]
impl PyParquetWriter {
    #[new]
    // (a literal default so the signature shows it; the assert keeps it MAX_ROW_GROUP_SIZE)
    // `latent_compression`: "none" (default; zstd saves ~8 % on float latents
    // and halves read speed per core) or "zstd" (at `zstd_level`).
    #[pyo3(signature = (path, *, row_group_size=100, queue_size=64, zstd_level=1, latent_compression="none"))]
    fn new(
        path: PathBuf,
        row_group_size: usize,
        queue_size: usize,
        zstd_level: i32,
        latent_compression: &str,
    ) -> PyResult<Self> {
        let latent_compression = LatentCompression::parse(latent_compression)?;
        let inner =
            PartWriter::create(path, WriterOptions { row_group_size, queue_size, zstd_level, latent_compression })?;
        Ok(Self { inner })
    }

    /// Final path of the file (it exists only after `close()`).
    #[getter]
    fn path(&self) -> PathBuf {
        self.inner.path().to_path_buf()
    }

    #[getter]
    fn closed(&self) -> bool {
        self.inner.is_closed()
    }

    /// Rows submitted but not yet written by the background thread.
    #[getter]
    fn queued_rows(&self) -> u64 {
        self.inner.queued_rows()
    }

    /// Queue rows (a list of dicts with the fields of `ROW_FIELDS`; `latent1`
    /// and `latent2` are float32/float16 numpy arrays). Blocks, without the
    /// GIL, while the queue is full; raises `InvalidRowError` for a bad row
    /// (nothing of the call queued) and `WriterError` if the writer thread has
    /// failed or the writer is closed. Threads may submit to one writer.
    fn submit(&self, py: Python<'_>, rows: &Bound<'_, PyAny>) -> PyResult<()> {
        let rows = rows_from(py, rows, &self.inner)?;
        let mut interrupt: Option<PyErr> = None;
        let result = py.detach(|| {
            self.inner.submit(rows, || {
                Python::attach(|py| py.check_signals()).map_err(|e| {
                    interrupt = Some(e);
                    Error::Writer("interrupted".into())
                })
            })
        });
        if let Some(e) = interrupt {
            return Err(e);
        }
        Ok(result?)
    }

    /// Write the remaining rows and the footer, fsync, and move the file to
    /// its final name. Returns `{"path", "rows", "row_groups", "bytes",
    /// "blocked_seconds"}`; re-raises any error of the writer thread. Later
    /// calls return the same.
    fn close(&self, py: Python<'_>) -> PyResult<Py<PyDict>> {
        self.stats_dict(py)
    }

    /// Discard everything: no file appears (does nothing after `close()`).
    fn abort(&self, py: Python<'_>) {
        py.detach(|| self.inner.abort());
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (exc_type, _exc_value, _traceback))]
    fn __exit__(
        &self,
        py: Python<'_>,
        exc_type: Option<&Bound<'_, PyAny>>,
        _exc_value: Option<&Bound<'_, PyAny>>,
        _traceback: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        if exc_type.is_some_and(|t| !t.is_none()) {
            self.abort(py);
        } else if !self.inner.is_closed() {
            self.close(py)?;
        }
        Ok(false)
    }
}

/// The temporary path a file is written under before it is complete
/// (`.NAME.tmp-PID` beside it, this process; see `TEMP_FILE_PATTERN`).
#[pyfunction]
fn temp_name(path: PathBuf) -> PathBuf {
    temp_path(&path)
}

/// The part file's columns in file order, `(name, pyarrow type name)`.
#[pyfunction]
fn part_columns() -> Vec<(&'static str, &'static str)> {
    PART_COLUMNS.iter().map(|(name, ty)| (*name, ty.name())).collect()
}

/// The reference pipeline's columns (the first of `part_columns()`).
#[pyfunction(name = "reference_columns")]
fn py_reference_columns() -> Vec<&'static str> {
    reference_columns().collect()
}

/// The fields of a submitted row, `(name, required)`.
#[pyfunction]
fn row_fields() -> Vec<(&'static str, bool)> {
    ROW_FIELDS.to_vec()
}

/// Register the writer and the part-file schema facts on `_core`.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyParquetWriter>()?;
    m.add_function(wrap_pyfunction!(temp_name, m)?)?;
    m.add_function(wrap_pyfunction!(part_columns, m)?)?;
    m.add_function(wrap_pyfunction!(py_reference_columns, m)?)?;
    m.add_function(wrap_pyfunction!(row_fields, m)?)?;
    m.add("TEMP_FILE_PATTERN", TEMP_FILE_PATTERN)?;
    m.add("LATENT_DOWN_FACTOR", LATENT_DOWN_FACTOR)?;
    m.add("MAX_ROW_GROUP_SIZE", MAX_ROW_GROUP_SIZE)?;
    m.add("LATENT_COMPRESSIONS", PyTuple::new(m.py(), LatentCompression::NAMES)?)?;
    Ok(())
}
