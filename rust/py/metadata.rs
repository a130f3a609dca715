//! Bindings of the metadata reader (`hpd_encode.metadata`) and of the record's
//! declaration: typed results (`MetadataColumns`, `StringColumn`,
//! `MetadataFailures`, `SurveyedMetadata`), built without the GIL, the
//! columns as NumPy arrays (strings as Arrow buffers).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use numpy::{IntoPyArray, PyArray1, PyArrayMethods, PyReadonlyArray1};
use pyo3::prelude::*;

use crate::error::Error;
use crate::image::decode::DEFAULT_MAX_PIXELS;
use crate::metadata::read::{
    file_kind, read_entries, read_part, summarize_range, Column, Failures, FileKind, Layout, MetaColumns, Part,
    StrColumn, DEFAULT_WINDOW,
};
use crate::metadata::record::{Field, FIELDS, READ_FIELDS};
use crate::metadata::structure::StructScan;
use crate::metadata::survey::{read_and_probe, PathIds, ProbeWhile, SurveyRead, Surveyed};
use crate::py::errors::{OPTION, USAGE};
use crate::py::images::{open_root, probe_limits};

fn io_error(path: &std::path::Path, e: std::io::Error) -> Error {
    Error::io(path.display().to_string(), e)
}

/// One field of the record as `rust/metadata/record.rs` declares it.
#[pyclass(name = "RecordField", module = "hpd_encode._core", frozen, get_all)]
pub struct PyRecordField {
    /// Its name in the metadata table and the plan's rows.
    name: &'static str,
    /// Its name in the part file (a column, and a field of the writer's rows).
    part_name: &'static str,
    /// `text`, `path`, `count`, `real`, `index`, `size`, `bucket` or `latent`.
    kind: &'static str,
    /// Its Arrow type, as pyarrow spells it.
    dtype: &'static str,
    /// `position`, `key`, `pair_item`, `survey`, `plan` or `encoder`.
    source: &'static str,
    /// The metadata key it is read from (`None` for the others).
    key: Option<&'static str>,
    /// `required`, `default` or `null`: what an absent or null value becomes.
    missing: &'static str,
    /// The other half of a pair given together (an image's height and width), or `None`.
    together_with: Option<&'static str>,
}

impl From<&Field> for PyRecordField {
    fn from(f: &Field) -> Self {
        PyRecordField {
            name: f.name,
            part_name: f.part_name,
            kind: f.kind.name(),
            dtype: f.kind.dtype(),
            source: f.source.name(),
            key: f.source.key(),
            missing: f.missing.name(),
            together_with: f.together_with,
        }
    }
}

#[pymethods]
impl PyRecordField {
    fn __repr__(&self) -> String {
        format!("RecordField({:?}, part_name={:?}, kind={:?})", self.name, self.part_name, self.kind)
    }
}

/// `record_fields() -> list[RecordField]`: the record's fields, in declaration order.
#[pyfunction]
pub fn record_fields() -> Vec<PyRecordField> {
    FIELDS.iter().map(PyRecordField::from).collect()
}

/// A column of strings as Arrow buffers: `views` (the string-view layout, 16 bytes per value)
/// when the data allows (under 4 GiB), else `offsets` (int64, one more than the values); and
/// `data` (uint8).
#[pyclass(name = "StringColumn", module = "hpd_encode._core", frozen)]
pub struct PyStringColumn {
    #[pyo3(get)]
    views: Option<Py<PyArray1<u8>>>,
    #[pyo3(get)]
    offsets: Option<Py<PyArray1<i64>>>,
    #[pyo3(get)]
    data: Py<PyArray1<u8>>,
    len: usize,
}

impl PyStringColumn {
    fn new(py: Python<'_>, col: StrColumn) -> Self {
        let len = col.len();
        let views = col.views();
        let offsets = if views.is_none() { Some(col.offsets.into_pyarray(py).unbind()) } else { None };
        let views = views.map(|v| v.into_pyarray(py).unbind());
        PyStringColumn { views, offsets, data: col.data.into_pyarray(py).unbind(), len }
    }
}

#[pymethods]
impl PyStringColumn {
    fn __len__(&self) -> usize {
        self.len
    }
}

/// The bad records of a read, as columns: number, reason, usable image paths.
#[pyclass(name = "MetadataFailures", module = "hpd_encode._core", frozen, get_all)]
pub struct PyFailures {
    record_index: Py<PyArray1<i64>>,
    detail: Vec<String>,
    image1_path: Vec<String>,
    image2_path: Vec<String>,
}

/// What a read of the metadata found: the good records as columns (`take_column`, one per field
/// of the declaration read from the entries, in `record_fields()` order), where each one's entry
/// is, the bad records (`failures`), and what a list's reader must check.
#[pyclass(name = "MetadataColumns", module = "hpd_encode._core")]
pub struct PyMetaColumns {
    /// The good records' numbers (file order).
    #[pyo3(get)]
    record_index: Py<PyArray1<i64>>,
    /// Where each good record's entry is in the file: offset and length.
    #[pyo3(get)]
    entry_offset: Py<PyArray1<i64>>,
    #[pyo3(get)]
    entry_len: Py<PyArray1<i64>>,
    /// Entries considered (good or bad; blank lines do not count).
    #[pyo3(get)]
    n_entries: i64,
    /// JSON Lines: the lines read (blank ones too).
    #[pyo3(get)]
    n_lines: i64,
    /// A list: the offset of its closing bracket, or -1 when the read did not reach it.
    #[pyo3(get)]
    list_end: i64,
    /// A list: `limit` elements were found before its end.
    #[pyo3(get)]
    limit_reached: bool,
    columns: Vec<(&'static str, Option<Column>)>,
    failures: Failures,
    list_error: Option<(i64, String)>,
}

impl PyMetaColumns {
    fn new(py: Python<'_>, m: MetaColumns) -> Self {
        PyMetaColumns {
            record_index: m.record_index.into_pyarray(py).unbind(),
            entry_offset: m.entry_offset.into_pyarray(py).unbind(),
            entry_len: m.entry_len.into_pyarray(py).unbind(),
            n_entries: m.n_entries,
            n_lines: m.n_lines,
            list_end: m.list_end,
            limit_reached: m.limit_reached,
            columns: READ_FIELDS.iter().map(|f| f.name).zip(m.columns.into_iter().map(Some)).collect(),
            failures: m.failures,
            list_error: m.list_error.map(|(i, e)| (i, e.to_string())),
        }
    }
}

#[pymethods]
impl PyMetaColumns {
    /// The column of the field `name` (int64 or float64 array, or a `StringColumn`), handed over:
    /// the object no longer holds it.
    fn take_column(&mut self, py: Python<'_>, name: &str) -> PyResult<Py<PyAny>> {
        let slot = self.columns.iter_mut().find(|(n, _)| *n == name).ok_or_else(|| {
            USAGE.err(format!(
                "no metadata column {name:?}: the columns are those of record_fields() read from the entries"
            ))
        })?;
        let col = slot.1.take().ok_or_else(|| USAGE.err(format!("the column {name:?} was taken already")))?;
        Ok(match col {
            Column::Text(c) => Py::new(py, PyStringColumn::new(py, c))?.into_any(),
            Column::Int(v) => v.into_pyarray(py).into_any().unbind(),
            Column::Real(v) => v.into_pyarray(py).into_any().unbind(),
        })
    }

    /// The bad records, their reasons in words, handed over: the object no longer holds them.
    fn take_failures(&mut self, py: Python<'_>) -> PyFailures {
        let Failures { record_index, reasons, paths: [image1_path, image2_path] } = std::mem::take(&mut self.failures);
        PyFailures {
            record_index: record_index.into_pyarray(py).unbind(),
            detail: reasons.into_iter().map(|r| r.render()).collect(),
            image1_path,
            image2_path,
        }
    }

    /// A list's first element that is not JSON, which breaks the list: `(its number, why)`.
    #[getter]
    fn list_error(&self) -> Option<(i64, String)> {
        self.list_error.clone()
    }

    /// Number the records `entries` more and the lines `lines` more (a byte range's read, once
    /// the ranges before it are counted).
    fn shift(&mut self, py: Python<'_>, entries: i64, lines: u64) -> PyResult<()> {
        let index = self.record_index.bind(py);
        let mut index = index.try_readwrite()?;
        index.as_slice_mut()?.iter_mut().for_each(|i| *i += entries);
        self.failures.shift(entries, lines);
        if let Some((i, _)) = &mut self.list_error {
            *i += entries;
        }
        Ok(())
    }
}

/// `MetadataShare(*, part=None, until=None, depth=0, in_string=False)`: which entries of the
/// file a read takes (both readers take one): `part=(k, n)`, the entries numbered `k` modulo
/// `n`; `until`, one byte range from the read's `start` (a list: scanned from there at `depth`,
/// inside a string or not) to `until`; neither, every entry.
#[pyclass(name = "MetadataShare", module = "hpd_encode._core", frozen)]
pub struct PyShare {
    part: Part,
}

#[pymethods]
impl PyShare {
    #[new]
    #[pyo3(signature = (*, part=None, until=None, depth=0, in_string=false))]
    fn new(part: Option<(u64, u64)>, until: Option<u64>, depth: i64, in_string: bool) -> PyResult<Self> {
        Ok(Self { part: part_of(part, until, depth, in_string)? })
    }
}

/// The share of a read: `share`, or every entry.
fn share_of(share: Option<PyRef<'_, PyShare>>) -> Part {
    share.map_or(Part::All, |s| s.part.clone())
}

/// `read_metadata_columns(path, mode, start, *, limit=None, window=..., num_threads=None,
/// share=None, text=True) -> MetadataColumns`: the entries of a JSON list (`mode="list"`, its
/// `[` at `start`) or JSON Lines (`mode="lines"`, from `start`) judged: the good records as
/// columns, the bad ones as failures; only those of `share` (a [`PyShare`]) when given. Without
/// `text` the text fields are checked but returned empty (the paths are kept).
#[pyfunction]
#[pyo3(signature = (path, mode, start, *, limit=None, window=DEFAULT_WINDOW, num_threads=None, share=None, text=true))]
#[allow(clippy::too_many_arguments)]
pub fn read_metadata_columns(
    py: Python<'_>,
    path: PathBuf,
    mode: &str,
    start: u64,
    limit: Option<u64>,
    window: usize,
    num_threads: Option<usize>,
    share: Option<PyRef<'_, PyShare>>,
    text: bool,
) -> PyResult<PyMetaColumns> {
    let layout = layout_of(mode, start)?;
    let part = share_of(share);
    let m = py
        .detach(|| read_part(&path, layout, limit, window, num_threads, part, text))
        .map_err(|e| io_error(&path, e))?;
    Ok(PyMetaColumns::new(py, m))
}

/// `read_metadata_entries(path, indices, offsets, lengths, *, num_threads=None) ->
/// MetadataColumns`: the entries at those byte ranges (good records an earlier read found, with
/// their numbers) judged again; one that is no longer good is a failure.
#[pyfunction]
#[pyo3(signature = (path, indices, offsets, lengths, *, num_threads=None))]
pub fn read_metadata_entries<'py>(
    py: Python<'py>,
    path: PathBuf,
    indices: PyReadonlyArray1<'py, i64>,
    offsets: PyReadonlyArray1<'py, i64>,
    lengths: PyReadonlyArray1<'py, i64>,
    num_threads: Option<usize>,
) -> PyResult<PyMetaColumns> {
    let (i, o, l) = (indices.as_slice()?, offsets.as_slice()?, lengths.as_slice()?);
    let m = py.detach(|| read_entries(&path, i, o, l, num_threads)).map_err(|e| io_error(&path, e))?;
    Ok(PyMetaColumns::new(py, m))
}

/// What `survey_metadata` found: the metadata read, and meanwhile the distinct image paths of
/// its good records numbered and probed.
#[pyclass(name = "SurveyedMetadata", module = "hpd_encode._core", frozen, get_all)]
pub struct PySurveyed {
    /// The metadata read (as `read_metadata_columns` gives it).
    columns: Py<PyMetaColumns>,
    /// The distinct image paths of the good records not skipped, numbered by first appearance.
    ids: Py<PyPathIds>,
    /// Each good record's image ids (-1 for a skipped record), row by row.
    id1: Py<PyArray1<i64>>,
    id2: Py<PyArray1<i64>>,
    /// The probe of each distinct path, by id: height, width (0 unless probed ok), outcome code,
    /// reason (None when ok).
    probe_heights: Py<PyArray1<i64>>,
    probe_widths: Py<PyArray1<i64>>,
    probe_kinds: Py<PyArray1<u8>>,
    probe_errors: Vec<Option<String>>,
}

/// `survey_metadata(path, mode, start, root, *, limit=None, window=..., num_threads=None,
/// max_pixels=..., skip=None, counter=None, text=True, share=None, probe=True) ->
/// SurveyedMetadata`: [`read_metadata_columns`] (the same `share`), and meanwhile the distinct image paths of the good
/// records numbered (see `survey.rs`, each with its hash) and, with `probe`, probed beneath
/// `root`, except the records in `skip` (a sorted int64 array), which get ids -1. `counter`
/// counts the images probed so far.
#[pyfunction]
#[pyo3(signature = (path, mode, start, root, *, limit=None, window=DEFAULT_WINDOW, num_threads=None, max_pixels=DEFAULT_MAX_PIXELS, skip=None, counter=None, text=true, share=None, probe=true))]
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
    share: Option<PyRef<'py, PyShare>>,
    probe: bool,
) -> PyResult<PySurveyed> {
    let layout = layout_of(mode, start)?;
    let part = share_of(share);
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
        let read = SurveyRead { path: &path, layout, part, limit, window, num_threads, skip, keep_text: text };
        let with = ProbeWhile { probe, root: root.as_ref(), limits: &limits, counter: counter.as_deref() };
        Ok(read_and_probe(read, with).map_err(|e| io_error(&path, e))?)
    })?;
    let Surveyed { meta, ids, id1, id2, probe } = found;
    Ok(PySurveyed {
        columns: Py::new(py, PyMetaColumns::new(py, meta))?,
        ids: Py::new(py, PyPathIds { inner: ids })?,
        id1: id1.into_pyarray(py).unbind(),
        id2: id2.into_pyarray(py).unbind(),
        probe_heights: probe.heights.into_pyarray(py).unbind(),
        probe_widths: probe.widths.into_pyarray(py).unbind(),
        probe_kinds: probe.kinds.into_pyarray(py).unbind(),
        probe_errors: probe.errors,
    })
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

    /// Every path's hash (`survey.path_hash`, uint64), by id; empty after.
    fn take_hashes<'py>(&mut self, py: Python<'py>) -> Bound<'py, PyArray1<u64>> {
        std::mem::take(&mut self.inner.hashes).into_pyarray(py)
    }

    /// Every path, by id, as a `StringColumn`; this object is empty after.
    fn take_paths(&mut self, py: Python<'_>) -> PyStringColumn {
        PyStringColumn::new(py, std::mem::take(&mut self.inner).paths)
    }
}

/// A rank's share: every `n`-th entry (`part=(k, n)`), one byte range (to `until`, a list's read
/// starting at `depth`, inside a string or not), or all of them.
fn part_of(part: Option<(u64, u64)>, until: Option<u64>, depth: i64, in_string: bool) -> PyResult<Part> {
    Ok(match (part, until) {
        (Some(_), Some(_)) => return Err(OPTION.err("part and until are two ways to split: give one")),
        (Some((k, n)), None) => Part::Modulo(k, n),
        (None, Some(until)) => Part::Bytes { until, scan: StructScan::at(depth, in_string) },
        (None, None) => Part::All,
    })
}

fn layout_of(mode: &str, start: u64) -> PyResult<Layout> {
    match mode {
        "list" => Ok(Layout::List(start)),
        "lines" => Ok(Layout::Lines(start)),
        other => Err(OPTION.err(format!("mode must be 'list' or 'lines', not {other:?}"))),
    }
}

/// `metadata_file_kind(path, *, window=...) -> (kind, start, first)`: what the metadata file
/// holds, `"list"`, `"lines"`, `"object"` (one object over several lines) or `"empty"` (only
/// whitespace, or nothing); where its metadata starts (after a UTF-8 byte-order mark) and its
/// first byte that is not whitespace.
#[pyfunction]
#[pyo3(signature = (path, *, window=DEFAULT_WINDOW))]
pub fn metadata_file_kind(py: Python<'_>, path: PathBuf, window: usize) -> PyResult<(&'static str, u64, u64)> {
    let (kind, start, first) = py.detach(|| file_kind(&path, window)).map_err(|e| io_error(&path, e))?;
    let name = match kind {
        FileKind::List => "list",
        FileKind::Lines => "lines",
        FileKind::Object => "object",
        FileKind::Empty => "empty",
    };
    Ok((name, start, first))
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
