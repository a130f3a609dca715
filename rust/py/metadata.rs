//! Bindings of the metadata fast path (`hpd_encode.metadata`): columns as
//! NumPy arrays (strings as Arrow-style offsets + bytes), built without the GIL.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::py::errors::OPTION;
use numpy::{IntoPyArray, PyArray1, PyReadonlyArray1};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::error::Error;
use crate::image::decode::DEFAULT_MAX_PIXELS;
use crate::metadata::read::{
    read_entries, read_part, summarize_range, value_end, Layout, MetaColumns, Part, StrColumn, DEFAULT_WINDOW,
};
use crate::metadata::structure::StructScan;
use crate::metadata::survey::{read_and_probe, PathIds, Surveyed};
use crate::py::images::{open_root, probe_limits};

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

/// `read_metadata_columns(path, mode, start, *, limit=None, window=..., num_threads=None,
/// part=None, until=None, depth=0, in_string=False) -> dict`: the plainly good records of a JSON
/// list (`mode="list"`, its `[` at `start`) or JSON Lines (`mode="lines"`, from `start`) as
/// columns, and where every other entry is (`slow_*`: entry number, file offset, length, line).
/// `part=(k, n)`: only the entries numbered `k` modulo `n`. `until`: one byte range, from
/// `start` (a list: scanned from there at `depth`, inside a string or not) to `until`. Without
/// `text` the prompts and models are checked but returned empty.
#[pyfunction]
#[pyo3(signature = (path, mode, start, *, limit=None, window=DEFAULT_WINDOW, num_threads=None, part=None, until=None, depth=0, in_string=false, text=true))]
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
    until: Option<u64>,
    depth: i64,
    in_string: bool,
    text: bool,
) -> PyResult<Bound<'py, PyDict>> {
    let layout = layout_of(mode, start)?;
    let part = match (part, until) {
        (Some(_), Some(_)) => return Err(OPTION.err("part and until are two ways to split: give one")),
        (Some((k, n)), None) => Part::Modulo(k, n),
        (None, Some(until)) => Part::Bytes { until, scan: StructScan::at(depth, in_string) },
        (None, None) => Part::All,
    };
    let m = py
        .detach(|| read_part(&path, layout, limit, window, num_threads, part, text))
        .map_err(|e| io_error(&path, e))?;
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

/// `survey_metadata(path, mode, start, root, *, limit=None, window=..., num_threads=None,
/// max_pixels=..., skip=None) -> dict`: [`read_metadata_columns`]'s columns, and meanwhile the
/// distinct image paths of the good records numbered and probed beneath `root` (see
/// `survey.rs`): `id1`, `id2` (per good row; -1 for the records in `skip`, a sorted int64
/// array), `ids` (a `PathIds`: more paths can be numbered after), and `probe_heights`,
/// `probe_widths`, `probe_kinds`, `probe_errors` by id. Without `text` the prompts and models
/// of the fast path's records are empty strings (checked, not kept).
#[pyfunction]
#[pyo3(signature = (path, mode, start, root, *, limit=None, window=DEFAULT_WINDOW, num_threads=None, max_pixels=DEFAULT_MAX_PIXELS, skip=None, counter=None, text=true))]
#[allow(clippy::too_many_arguments)]
pub fn survey_metadata<'py>(
    py: Python<'py>,
    path: PathBuf,
    mode: &str,
    start: u64,
    root: PathBuf,
    limit: Option<u64>,
    window: usize,
    num_threads: Option<usize>,
    max_pixels: u64,
    skip: Option<PyReadonlyArray1<'py, i64>>,
    counter: Option<PyRef<'py, PyCounter>>,
    text: bool,
) -> PyResult<Bound<'py, PyDict>> {
    let layout = layout_of(mode, start)?;
    let counter = counter.map(|c| c.n.clone());
    let skip = match &skip {
        Some(a) => a.as_slice()?,
        None => &[],
    };
    if skip.windows(2).any(|p| p[0] > p[1]) {
        return Err(OPTION.err("skip must be sorted"));
    }
    let limits = probe_limits(Some(max_pixels), None);
    let found = py.detach(|| -> PyResult<Surveyed> {
        let root = open_root(Some(&root))?;
        Ok(read_and_probe(
            &path,
            layout,
            limit,
            window,
            num_threads,
            root.as_ref(),
            &limits,
            skip,
            counter.as_deref(),
            text,
        )
        .map_err(|e| io_error(&path, e))?)
    })?;
    let Surveyed { meta, ids, id1, id2, probe } = found;
    let d = columns(py, meta)?;
    d.set_item("id1", id1.into_pyarray(py))?;
    d.set_item("id2", id2.into_pyarray(py))?;
    d.set_item("ids", PyPathIds { inner: ids })?;
    d.set_item("probe_heights", probe.heights.into_pyarray(py))?;
    d.set_item("probe_widths", probe.widths.into_pyarray(py))?;
    d.set_item("probe_kinds", probe.kinds.into_pyarray(py))?;
    d.set_item("probe_errors", probe.errors)?;
    Ok(d)
}

/// A count another thread adds to (`survey_metadata`: the images probed so far), read with `value`.
#[pyclass(name = "Counter", module = "hpd_encode._core")]
#[derive(Default)]
pub struct PyCounter {
    n: Arc<AtomicU64>,
}

#[pymethods]
impl PyCounter {
    #[new]
    fn new() -> Self {
        Self::default()
    }

    #[getter]
    fn value(&self) -> u64 {
        self.n.load(Ordering::Relaxed)
    }
}

/// Distinct paths numbered in order of first appearance (what `survey_metadata` numbered).
#[pyclass(name = "PathIds", module = "hpd_encode._core")]
pub struct PyPathIds {
    inner: PathIds,
}

#[pymethods]
impl PyPathIds {
    fn __len__(&self) -> usize {
        self.inner.len()
    }

    /// The ids of `paths` (int64), numbering those not seen before.
    fn number<'py>(&mut self, py: Python<'py>, paths: Vec<String>) -> Bound<'py, PyArray1<i64>> {
        paths.iter().map(|p| self.inner.id(p.as_bytes())).collect::<Vec<i64>>().into_pyarray(py)
    }

    /// The paths of ids `start` on.
    fn paths_from(&self, start: usize) -> Vec<String> {
        (start..self.inner.len()).map(|i| String::from_utf8_lossy(self.inner.paths.get(i)).into_owned()).collect()
    }

    /// Every path, by id, as `read_metadata_columns` gives a string column (`path_views` or
    /// `path_offsets`, and `path_data`); this object is empty after.
    fn take_paths<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        put_str(&d, "path", std::mem::take(&mut self.inner).paths)?;
        Ok(d)
    }
}

fn layout_of(mode: &str, start: u64) -> PyResult<Layout> {
    match mode {
        "list" => Ok(Layout::List(start)),
        "lines" => Ok(Layout::Lines(start)),
        other => Err(OPTION.err(format!("mode must be 'list' or 'lines', not {other:?}"))),
    }
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
    d.set_item("n_lines", m.n_lines)?;
    Ok(d)
}

/// `metadata_range_summary(path, start, end, *, window=...) -> (odd_quotes, depth_change_outside,
/// depth_change_inside)`: what bytes `[start, end)` of a JSON list do to its structure, whether
/// the range starts outside or inside a string (it must not start right after a backslash): the
/// parity of its string delimiters, and the change of depth outside strings in either case.
#[pyfunction]
#[pyo3(signature = (path, start, end, *, window=DEFAULT_WINDOW))]
pub fn metadata_range_summary(
    py: Python<'_>,
    path: PathBuf,
    start: u64,
    end: u64,
    window: usize,
) -> PyResult<(bool, i64, i64)> {
    let s = py.detach(|| summarize_range(&path, start, end, window)).map_err(|e| io_error(&path, e))?;
    Ok((s.odd_quotes, s.depth_change[0], s.depth_change[1]))
}

/// `metadata_value_end(path, start, *, window=...) -> int | None`: the offset
/// of the bracket closing the value opened at `start` (strings and escapes
/// followed), or None when the file ends first.
#[pyfunction]
#[pyo3(signature = (path, start, *, window=DEFAULT_WINDOW))]
pub fn metadata_value_end(py: Python<'_>, path: PathBuf, start: u64, window: usize) -> PyResult<Option<u64>> {
    Ok(py.detach(|| value_end(&path, start, window)).map_err(|e| io_error(&path, e))?)
}
