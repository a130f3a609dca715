//! Bindings of the metadata fast path (`hpd_encode.metadata`): columns as
//! NumPy arrays (strings as Arrow-style offsets + bytes), built without the GIL.

use std::path::PathBuf;

use numpy::{IntoPyArray, PyArray1, PyReadonlyArray1};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::error::Error;
use crate::metadata::{
    dense_ids as ids_of, read_entries, read_part, value_end, Layout, MetaColumns, StrColumn, StrView, DEFAULT_WINDOW,
};

fn io_error(path: &std::path::Path, e: std::io::Error) -> Error {
    Error::io(path.display().to_string(), e)
}

/// `{name}_views` (Arrow string views) when the data allows, else `{name}_offsets`; and `{name}_data`.
fn put_str<'py>(d: &Bound<'py, PyDict>, name: &str, col: StrColumn) -> PyResult<()> {
    let py = d.py();
    match col.views() {
        Some(views) => d.set_item(format!("{name}_views"), views.into_pyarray(py))?,
        None => d.set_item(format!("{name}_offsets"), col.offsets.into_pyarray(py))?,
    }
    d.set_item(format!("{name}_data"), col.data.into_pyarray(py))?;
    Ok(())
}

/// `read_metadata_columns(path, mode, start, *, limit=None, window=..., num_threads=None) -> dict`:
/// the plainly good records of a JSON list (`mode="list"`, its `[` at `start`)
/// or JSON Lines (`mode="lines"`, from `start`) as columns, and where every
/// other entry is (`slow_*`: entry number, file offset, length, line).
#[pyfunction]
#[pyo3(signature = (path, mode, start, *, limit=None, window=DEFAULT_WINDOW, num_threads=None, part=None))]
#[allow(clippy::too_many_arguments)]
pub fn read_metadata_columns<'py>(
    py: Python<'py>,
    path: PathBuf,
    mode: &str,
    start: u64,
    limit: Option<u64>,
    window: usize,
    num_threads: Option<usize>,
    part: Option<(u64, u64)>,
) -> PyResult<Bound<'py, PyDict>> {
    let layout = match mode {
        "list" => Layout::List(start),
        "lines" => Layout::Lines(start),
        other => return Err(PyValueError::new_err(format!("mode must be 'list' or 'lines', not {other:?}"))),
    };
    let m = py.detach(|| read_part(&path, layout, limit, window, num_threads, part)).map_err(|e| io_error(&path, e))?;
    columns(py, m)
}

/// `read_metadata_entries(path, indices, offsets, lengths, *, num_threads=None) -> dict`:
/// the entries at those byte ranges (good records an earlier read found, with
/// their numbers) parsed again, as [`read_metadata_columns`] gives them.
#[pyfunction]
#[pyo3(signature = (path, indices, offsets, lengths, *, num_threads=None))]
pub fn read_metadata_entries<'py>(
    py: Python<'py>,
    path: PathBuf,
    indices: PyReadonlyArray1<'py, i64>,
    offsets: PyReadonlyArray1<'py, i64>,
    lengths: PyReadonlyArray1<'py, i64>,
    num_threads: Option<usize>,
) -> PyResult<Bound<'py, PyDict>> {
    let (i, o, l) = (indices.as_slice()?, offsets.as_slice()?, lengths.as_slice()?);
    let m = py.detach(|| read_entries(&path, i, o, l, num_threads)).map_err(|e| io_error(&path, e))?;
    columns(py, m)
}

fn columns(py: Python<'_>, m: MetaColumns) -> PyResult<Bound<'_, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("record_index", m.record_index.into_pyarray(py))?;
    put_str(&d, "prompt", m.prompt)?;
    put_str(&d, "path1", m.path1)?;
    put_str(&d, "path2", m.path2)?;
    put_str(&d, "model1", m.model1)?;
    put_str(&d, "model2", m.model2)?;
    d.set_item("votes_chosen", m.votes_chosen.into_pyarray(py))?;
    d.set_item("votes_rejected", m.votes_rejected.into_pyarray(py))?;
    d.set_item("confidence", m.confidence.into_pyarray(py))?;
    d.set_item("entry_offset", m.entry_offset.into_pyarray(py))?;
    d.set_item("entry_len", m.entry_len.into_pyarray(py))?;
    d.set_item("slow_index", m.slow_index.into_pyarray(py))?;
    d.set_item("slow_offset", m.slow_offset.into_pyarray(py))?;
    d.set_item("slow_len", m.slow_len.into_pyarray(py))?;
    d.set_item("slow_line", m.slow_line.into_pyarray(py))?;
    d.set_item("n_entries", m.n_entries)?;
    d.set_item("list_end", m.list_end)?;
    d.set_item("limit_reached", m.limit_reached)?;
    Ok(d)
}

/// `metadata_value_end(path, start, *, window=...) -> int | None`: the offset
/// of the bracket closing the value opened at `start` (strings and escapes
/// followed), or None when the file ends first.
#[pyfunction]
#[pyo3(signature = (path, start, *, window=DEFAULT_WINDOW))]
pub fn metadata_value_end(py: Python<'_>, path: PathBuf, start: u64, window: usize) -> PyResult<Option<u64>> {
    Ok(py.detach(|| value_end(&path, start, window)).map_err(|e| io_error(&path, e))?)
}

type Ids<'py> =
    (Bound<'py, PyArray1<i64>>, Bound<'py, PyArray1<i64>>, Bound<'py, PyArray1<i64>>, Bound<'py, PyArray1<u8>>);

/// `dense_ids(offsets_a, data_a, offsets_b, data_b) -> (ids_a, ids_b, offsets, data)`:
/// for two string columns (Arrow-style offsets + bytes), each string's
/// position among the distinct strings of both, returned in order of first
/// appearance.
#[pyfunction]
pub fn dense_ids<'py>(
    py: Python<'py>,
    offsets_a: PyReadonlyArray1<'py, i64>,
    data_a: PyReadonlyArray1<'py, u8>,
    offsets_b: PyReadonlyArray1<'py, i64>,
    data_b: PyReadonlyArray1<'py, u8>,
) -> PyResult<Ids<'py>> {
    let a = StrView::new(offsets_a.as_slice()?, data_a.as_slice()?).map_err(PyValueError::new_err)?;
    let b = StrView::new(offsets_b.as_slice()?, data_b.as_slice()?).map_err(PyValueError::new_err)?;
    let (ia, ib, d) = py.detach(|| ids_of(a, b));
    Ok((ia.into_pyarray(py), ib.into_pyarray(py), d.offsets.into_pyarray(py), d.data.into_pyarray(py)))
}
