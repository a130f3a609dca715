//! Python wrappers of the object store layer (`parts/store.rs`) and of the
//! small-column reader (`parts/columns.rs`): convert, release the GIL around
//! every request, convert back. Failures raise `ObjectStoreError` and its
//! subclasses (`errors.rs`), naming the URL and the HTTP status.

use std::path::PathBuf;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::{IntoPyDict, PyBytes, PyDict, PyList};
use pyo3::IntoPyObjectExt;

use crate::parts::columns::{self, Values};
use crate::parts::store::{self, Settings, StoreError};
use crate::py::errors::store_error;

/// A dict of `items`, each value converted to Python.
fn dict<'py>(py: Python<'py>, items: Vec<(&str, PyResult<Bound<'py, PyAny>>)>) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    for (key, value) in items {
        d.set_item(key, value?)?;
    }
    Ok(d)
}

fn settings_dict<'py>(py: Python<'py>, s: &Settings) -> PyResult<Bound<'py, PyDict>> {
    dict(
        py,
        vec![
            ("max_concurrency", s.max_concurrency.into_bound_py_any(py)),
            ("max_retries", s.max_retries.into_bound_py_any(py)),
            ("retry_timeout", s.retry_timeout.as_secs_f64().into_bound_py_any(py)),
            ("timeout", s.timeout.as_secs_f64().into_bound_py_any(py)),
            ("connect_timeout", s.connect_timeout.as_secs_f64().into_bound_py_any(py)),
            ("part_size", s.part_size.into_bound_py_any(py)),
        ],
    )
}

fn seconds(name: &str, v: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(v).map_err(|_| {
        store_error(StoreError::config("", format!("{name} must be a non-negative number of seconds, not {v}")))
    })
}

/// `object_store_settings() -> dict`: the settings in force in this process.
#[pyfunction]
pub fn object_store_settings(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let s = store::try_settings().map_err(store_error)?;
    settings_dict(py, &s)
}

/// `configure_object_store(*, max_concurrency=None, ...) -> dict`: change the
/// settings for this process (the clients are rebuilt); returns the new ones.
#[pyfunction]
#[pyo3(signature = (*, max_concurrency=None, max_retries=None, retry_timeout=None, timeout=None, connect_timeout=None, part_size=None))]
pub fn configure_object_store(
    py: Python<'_>,
    max_concurrency: Option<usize>,
    max_retries: Option<usize>,
    retry_timeout: Option<f64>,
    timeout: Option<f64>,
    connect_timeout: Option<f64>,
    part_size: Option<usize>,
) -> PyResult<Bound<'_, PyDict>> {
    let mut s = store::try_settings().map_err(store_error)?;
    if let Some(v) = max_concurrency {
        s.max_concurrency = v;
    }
    if let Some(v) = max_retries {
        s.max_retries = v;
    }
    if let Some(v) = retry_timeout {
        s.retry_timeout = seconds("retry_timeout", v)?;
    }
    if let Some(v) = timeout {
        s.timeout = seconds("timeout", v)?;
    }
    if let Some(v) = connect_timeout {
        s.connect_timeout = seconds("connect_timeout", v)?;
    }
    if let Some(v) = part_size {
        s.part_size = v;
    }
    py.detach(|| store::configure(s.clone())).map_err(store_error)?;
    settings_dict(py, &s)
}

/// `s3_storage_options() -> dict[str, str]`: the resolved endpoint, region and
/// credentials as `object_store` configuration keys (what Polars'
/// `storage_options` takes), so other readers reach the same server.
#[pyfunction]
pub fn s3_storage_options(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let c = store::current_config().map_err(store_error)?;
    let d = PyDict::new(py);
    d.set_item("aws_region", &c.region)?;
    if let Some(e) = &c.endpoint {
        d.set_item("aws_endpoint_url", e)?;
    }
    if let (Some(k), Some(s)) = (&c.access_key_id, &c.secret_access_key) {
        d.set_item("aws_access_key_id", k)?;
        d.set_item("aws_secret_access_key", s)?;
    }
    if let Some(t) = &c.session_token {
        d.set_item("aws_session_token", t)?;
    }
    if c.allow_http {
        d.set_item("aws_allow_http", "true")?;
    }
    Ok(d)
}

/// `list_objects(url) -> list[tuple[str, int]]`: the objects directly under
/// the prefix `url`, as `(url, size)`, sorted.
#[pyfunction]
pub fn list_objects(py: Python<'_>, url: String) -> PyResult<Vec<(String, u64)>> {
    py.detach(|| store::list(&url)).map_err(store_error)
}

/// `head_object(url) -> dict | None`: size, etag and user metadata, or None.
#[pyfunction]
pub fn head_object(py: Python<'_>, url: String) -> PyResult<Option<Bound<'_, PyDict>>> {
    let Some(info) = py.detach(|| store::head(&url)).map_err(store_error)? else { return Ok(None) };
    let metadata = info.metadata.into_py_dict(py).map(Bound::into_any);
    let items = vec![
        ("url", info.url.into_bound_py_any(py)),
        ("size", info.size.into_bound_py_any(py)),
        ("etag", info.etag.into_bound_py_any(py)),
        ("metadata", metadata),
    ];
    dict(py, items).map(Some)
}

/// `get_object(url) -> bytes`: the whole object (small ones: manifests).
#[pyfunction]
pub fn get_object(py: Python<'_>, url: String) -> PyResult<Bound<'_, PyBytes>> {
    let data = py.detach(|| store::get(&url)).map_err(store_error)?;
    Ok(PyBytes::new(py, &data))
}

/// `put_object(url, data) -> str | None`: store `data` in one PUT; the ETag.
#[pyfunction]
pub fn put_object(py: Python<'_>, url: String, data: Vec<u8>) -> PyResult<Option<String>> {
    py.detach(|| store::put(&url, data.into())).map_err(store_error)
}

/// `delete_object(url)`: remove it (no error when absent).
#[pyfunction]
pub fn delete_object(py: Python<'_>, url: String) -> PyResult<()> {
    py.detach(|| store::delete(&url)).map_err(store_error)
}

/// `download_object(url, path) -> int`: copy the object into a local file; its size.
#[pyfunction]
pub fn download_object(py: Python<'_>, url: String, path: PathBuf) -> PyResult<u64> {
    py.detach(|| store::download(&url, &path)).map_err(store_error)
}

/// `file_crc64nvme(path) -> str`: the CRC-64/NVME of a local file, as `push` records it.
#[pyfunction]
pub fn file_crc64nvme(py: Python<'_>, path: PathBuf) -> PyResult<String> {
    py.detach(|| store::file_crc64(&path))
        .map(store::crc64_hex)
        .map_err(|e| crate::error::Error::io(path.display().to_string(), e).into())
}

/// `upload_file(path, url, *, progress=None) -> dict`: upload a local file
/// (one PUT, or a multipart upload in `part_size` parts); `progress(n)` is
/// called with the bytes of each part read. Returns size, etag, crc64nvme, parts.
#[pyfunction]
#[pyo3(signature = (path, url, *, progress=None))]
pub fn upload_file<'py>(
    py: Python<'py>,
    path: PathBuf,
    url: String,
    progress: Option<Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyDict>> {
    let progress = progress.map(Bound::unbind);
    let mut callback_error: Option<PyErr> = None;
    let result = py.detach(|| {
        let mut report = |n: u64| {
            if let Some(cb) = &progress {
                Python::attach(|py| {
                    if let Err(e) = cb.call1(py, (n,)) {
                        callback_error.get_or_insert(e);
                    }
                });
            }
        };
        let mut interrupted = || Python::attach(|py| py.check_signals().is_err());
        store::upload_file(&path, &url, &mut report, &mut interrupted)
    });
    if let Some(e) = callback_error {
        return Err(e);
    }
    let up = match result {
        Ok(up) => up,
        Err(e) => {
            // A Ctrl-C seen between parts: raise KeyboardInterrupt, not a store error.
            py.check_signals()?;
            return Err(store_error(e));
        }
    };
    let items = vec![
        ("size", up.size.into_bound_py_any(py)),
        ("etag", up.etag.into_bound_py_any(py)),
        ("crc64nvme", up.crc64.into_bound_py_any(py)),
        ("parts", up.parts.into_bound_py_any(py)),
    ];
    dict(py, items)
}

/// `reset_object_store()`: drop this process's clients; the next request
/// builds them again from the environment (after a change of `AWS_*`).
#[pyfunction]
pub fn reset_object_store(py: Python<'_>) {
    py.detach(store::reset);
}

/// `object_store_stats() -> dict`: requests and bytes of this process so far
/// (`gets`, `get_bytes`, `puts`, `put_bytes`).
#[pyfunction]
pub fn object_store_stats(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let (gets, get_bytes, puts, put_bytes) = store::stats();
    [("gets", gets), ("get_bytes", get_bytes), ("puts", puts), ("put_bytes", put_bytes)].into_py_dict(py)
}

/// `reset_object_store_stats()`: zero the counters.
#[pyfunction]
pub fn reset_object_store_stats() {
    store::reset_stats();
}

/// `read_row_group_columns(path, row_group, columns) -> dict[str, list]`: the
/// values of `columns` in one row group of a part file (local or s3://),
/// through the reader's cached footer; from an object, the column chunks
/// fetched at once (touching ones in one GET).
#[pyfunction]
pub fn read_row_group_columns<'py>(
    py: Python<'py>,
    path: PathBuf,
    row_group: usize,
    columns: Vec<String>,
) -> PyResult<Bound<'py, PyDict>> {
    let read = py.detach(|| columns::read_columns(&path, row_group, &columns)).map_err(crate::py::reader::to_pyerr)?;
    let d = PyDict::new(py);
    for (name, values) in read {
        let list = match values {
            Values::Str(v) => PyList::new(py, v)?,
            Values::Int(v) => PyList::new(py, v)?,
            Values::Float(v) => PyList::new(py, v)?,
            Values::Bytes(v) => {
                PyList::new(py, v.into_iter().map(|b| b.map(|b| PyBytes::new(py, &b))).collect::<Vec<_>>())?
            }
            Values::IntList(v) => PyList::new(py, v)?,
        };
        d.set_item(name, list)?;
    }
    Ok(d)
}
