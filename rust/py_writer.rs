//! `hpd_encode.ParquetWriter`: the background part-file writer as a Python
//! context manager. `submit` copies the row fields and latent buffers (a
//! memcpy each) while holding the GIL, then waits for queue space without it.

use numpy::{PyArrayDyn, PyArrayMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::error::Error;
use crate::writer::{Latent, PartWriter, Row, WriterOptions};

#[pyclass(name = "ParquetWriter", module = "hpd_encode._core")]
pub struct PyParquetWriter {
    inner: PartWriter,
    stats: Option<Py<PyDict>>,
}

fn latent_from(obj: &Bound<'_, PyAny>, key: &str) -> PyResult<Latent> {
    let arr =
        obj.cast::<PyUntypedArray>().map_err(|_| Error::InvalidArgument(format!("'{key}' must be a numpy array")))?;
    let shape: Vec<usize> = arr.shape().to_vec();
    let dtype: String = obj.getattr("dtype")?.getattr("str")?.extract()?;
    let contiguous = obj.py().import("numpy")?.call_method1("ascontiguousarray", (obj,))?;
    let (descr, as_u8): (&'static str, Bound<'_, PyAny>) = match dtype.as_str() {
        "<f4" => ("<f4", contiguous.call_method1("view", ("u1",))?),
        "<f2" => ("<f2", contiguous.call_method1("view", ("u1",))?),
        other => {
            return Err(Error::InvalidArgument(format!("'{key}' must be float32 or float16, not {other}")).into());
        }
    };
    let bytes = as_u8.cast::<PyArrayDyn<u8>>().map_err(|e| Error::InvalidArgument(e.to_string()))?.readonly();
    let data = bytes.as_slice().map_err(|e| Error::InvalidArgument(e.to_string()))?.to_vec();
    Ok(Latent { descr, shape, data })
}

fn row_from(d: &Bound<'_, PyDict>) -> PyResult<Row> {
    fn get<'py, T: for<'a> FromPyObject<'a, 'py>>(
        d: &Bound<'py, PyDict>,
        key: &str,
        default: Option<T>,
    ) -> PyResult<T> {
        match d.get_item(key)? {
            Some(v) if !v.is_none() => v.extract::<T>().map_err(|e| {
                let e: PyErr = e.into();
                Error::InvalidArgument(format!("row field '{key}': {e}")).into()
            }),
            _ => default.ok_or_else(|| Error::InvalidArgument(format!("row is missing '{key}'")).into()),
        }
    }
    let latent = |key: &str| -> PyResult<Latent> {
        let v = d.get_item(key)?.ok_or_else(|| Error::InvalidArgument(format!("row is missing '{key}'")))?;
        latent_from(&v, key)
    };
    let latent1 = latent("latent1")?;
    let latent2 = latent("latent2")?;
    let (dh, dw) = match latent1.shape.as_slice() {
        [.., h, w] => ((*h * 8) as i64, (*w * 8) as i64),
        _ => (0, 0),
    };
    let height = get(d, "height", Some(dh))?;
    let width = get(d, "width", Some(dw))?;
    Ok(Row {
        prompt: get(d, "prompt", None)?,
        model1: get(d, "model1", Some(String::new()))?,
        model2: get(d, "model2", Some(String::new()))?,
        image1_path: get(d, "image1_path", None)?,
        image2_path: get(d, "image2_path", None)?,
        record_index: get(d, "record_index", Some(-1))?,
        votes_chosen: get(d, "votes_chosen", Some(0))?,
        votes_rejected: get(d, "votes_rejected", Some(0))?,
        confidence: get(d, "confidence", Some(0.0))?,
        height,
        width,
        bucket_id: get(d, "bucket_id", Some(-1))?,
        orig_chosen: (get(d, "orig_chosen_height", Some(height))?, get(d, "orig_chosen_width", Some(width))?),
        orig_rejected: (get(d, "orig_rejected_height", Some(height))?, get(d, "orig_rejected_width", Some(width))?),
        latent1,
        latent2,
    })
}

#[pymethods]
impl PyParquetWriter {
    #[new]
    #[pyo3(signature = (path, *, row_group_size=100, queue_size=64, zstd_level=1))]
    fn new(path: std::path::PathBuf, row_group_size: usize, queue_size: usize, zstd_level: i32) -> PyResult<Self> {
        let inner = PartWriter::create(path, WriterOptions { row_group_size, queue_size, zstd_level })?;
        Ok(Self { inner, stats: None })
    }

    /// Final path of the file (it exists only after `close()`).
    #[getter]
    fn path(&self) -> std::path::PathBuf {
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

    /// Queue rows (a list of dicts with the part-file columns; `latent1` and
    /// `latent2` are float32/float16 numpy arrays). Blocks while the queue is
    /// full; raises `WriterError` if the writer thread has failed.
    fn submit(&mut self, py: Python<'_>, rows: &Bound<'_, PyList>) -> PyResult<()> {
        let rows: Vec<Row> = rows
            .iter()
            .map(|r| {
                let d = r.cast::<PyDict>().map_err(|_| Error::InvalidArgument("each row must be a dict".into()))?;
                row_from(d)
            })
            .collect::<PyResult<_>>()?;
        let inner = &mut self.inner;
        py.detach(|| {
            inner.submit(rows, || {
                Python::attach(|py| py.check_signals()).map_err(|e| Error::Writer(format!("interrupted: {e}")))
            })
        })?;
        Ok(())
    }

    /// Write the remaining rows and the footer, fsync, and move the file to
    /// its final name. Returns `{"path", "rows", "row_groups", "bytes",
    /// "blocked_seconds"}`; re-raises any error of the writer thread.
    fn close(&mut self, py: Python<'_>) -> PyResult<Py<PyDict>> {
        if let Some(stats) = &self.stats {
            return Ok(stats.clone_ref(py));
        }
        let inner = &mut self.inner;
        let stats = py.detach(|| inner.close())?;
        let d = PyDict::new(py);
        d.set_item("path", self.inner.path().to_path_buf())?;
        d.set_item("rows", stats.rows)?;
        d.set_item("row_groups", stats.row_groups)?;
        d.set_item("bytes", stats.bytes)?;
        d.set_item("blocked_seconds", stats.blocked_seconds)?;
        let d: Py<PyDict> = d.unbind();
        self.stats = Some(d.clone_ref(py));
        Ok(d)
    }

    /// Discard everything: no file appears.
    fn abort(&mut self, py: Python<'_>) {
        let inner = &mut self.inner;
        py.detach(|| inner.abort());
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (exc_type, _exc_value, _traceback))]
    fn __exit__(
        &mut self,
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
