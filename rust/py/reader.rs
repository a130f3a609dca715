//! Python wrappers of the latent reader (`reader.rs`): convert requests,
//! release the GIL around the reads, hand each parsed latent to NumPy
//! without copying it again.

use std::path::PathBuf;

use numpy::ndarray::{ArrayD, IxDyn};
use numpy::IntoPyArray;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyTuple};

use crate::parts::digest;
use crate::parts::reader::{self, ChecksumCheck, Latent, LatentData, LatentInfo, ReadError, Request};
use crate::parts::rewrite;
use crate::parts::store::Identity;
use crate::parts::writer::{LatentCompression, WriterOptions};
use crate::py::errors::{io_error, NOT_REGULAR, OPTION, OUT_OF_RANGE, PART_FILE, PART_FILE_CHANGED};

/// The exception of a failed read.
pub(crate) fn to_pyerr(e: ReadError) -> PyErr {
    let msg = e.to_string();
    match e {
        ReadError::Io { kind, .. } => io_error(&std::io::Error::from(kind), msg),
        ReadError::OutOfRange(_) => OUT_OF_RANGE.err(msg),
        ReadError::Store(e) => crate::py::errors::store_error(e),
        ReadError::NotRegular { .. } => NOT_REGULAR.err(msg),
        ReadError::File { .. } | ReadError::Row { .. } => PART_FILE.err(msg),
        ReadError::Changed { .. } => PART_FILE_CHANGED.err(msg),
    }
}

fn to_array<'py>(py: Python<'py>, latent: Latent) -> PyResult<Bound<'py, PyAny>> {
    let shape = IxDyn(&latent.shape);
    let bad = |e: numpy::ndarray::ShapeError| PART_FILE.err(format!("latent shape: {e}"));
    Ok(match latent.data {
        LatentData::F32(v) => ArrayD::from_shape_vec(shape, v).map_err(bad)?.into_pyarray(py).into_any(),
        LatentData::F16(v) => {
            let bits = ArrayD::from_shape_vec(shape, v).map_err(bad)?.into_pyarray(py);
            bits.call_method1("view", ("float16",))?
        }
    })
}

/// A file's identity as Python's `os.stat` gives it: `(st_dev, st_ino, st_size, st_mtime_ns)`.
type PyIdentity = (u64, u64, u64, i64);

fn identity_of((dev, ino, len, mtime_ns): PyIdentity) -> Identity {
    Identity::Local { dev, ino, len, mtime_ns: mtime_ns.into() }
}

/// `read_pairs(requests, *, num_threads=None, verify_checksums=True, expect=None)
/// -> list[tuple[ndarray, ndarray]]`: the two latents of each `(part_file,
/// row_group, row)`, in request order, each checked against its stored
/// checksum (XXH3) unless `verify_checksums` is false. `expect` gives, per request,
/// the file's identity `(st_dev, st_ino, st_size, st_mtime_ns)` as the caller
/// saw it (or None): a file replaced since raises `PartFileChangedError`.
/// Raises on the first request that cannot be read.
#[pyfunction]
#[pyo3(signature = (requests, *, num_threads=None, verify_checksums=true, expect=None))]
pub fn read_pairs<'py>(
    py: Python<'py>,
    requests: Vec<(PathBuf, i64, i64)>,
    num_threads: Option<usize>,
    verify_checksums: bool,
    expect: Option<Vec<Option<PyIdentity>>>,
) -> PyResult<Vec<Bound<'py, PyTuple>>> {
    if expect.as_ref().is_some_and(|e| e.len() != requests.len()) {
        return Err(OPTION.err("expect must give one identity (or None) per request"));
    }
    let mut expect = expect.unwrap_or_default().into_iter();
    // Signed here so that a negative row group or row (a damaged index) is an error naming the
    // file, not pyo3's bare OverflowError.
    let requests = requests
        .into_iter()
        .map(|(path, row_group, row)| {
            let expect = expect.next().flatten().map(identity_of);
            match (usize::try_from(row_group), usize::try_from(row)) {
                (Ok(row_group), Ok(row)) => Ok(Request { path, row_group, row, expect }),
                _ => Err(OUT_OF_RANGE.err(format!(
                    "'{}' row group {row_group} row {row} does not exist: row groups and rows are never negative \
                     (a damaged index? rebuild it)",
                    path.display()
                ))),
            }
        })
        .collect::<PyResult<Vec<Request>>>()?;
    let results = py.detach(|| reader::read_pairs(&requests, num_threads, verify_checksums));
    let mut out = Vec::with_capacity(results.len());
    for r in results {
        let [a, b] = r.map_err(to_pyerr)?;
        out.push(PyTuple::new(py, [to_array(py, a)?, to_array(py, b)?])?);
    }
    Ok(out)
}

/// `latent_layout(path) -> (row_group_rows, paged)`: rows per row group, and
/// whether every latent value is its own page (cheap random access).
#[pyfunction]
pub fn latent_layout(py: Python<'_>, path: PathBuf) -> PyResult<(Vec<i64>, bool)> {
    let file = py.detach(|| reader::open_cached(&path)).map_err(to_pyerr)?;
    Ok((file.row_group_rows(), file.paged()))
}

/// `part_file_columns(path) -> list[str]`: the top-level column names of a part
/// file (local or s3://), from the reader's cached footer.
#[pyfunction]
pub fn part_file_columns(py: Python<'_>, path: PathBuf) -> PyResult<Vec<String>> {
    let file = py.detach(|| reader::open_cached(&path)).map_err(to_pyerr)?;
    Ok(file.column_names())
}

/// `check_part_file(path, *, num_threads=None)`: read every latent of a
/// part file and return, per row, `(row_group, row, latent1, latent2)` where
/// each latent is `(dtype, shape, nonfinite_count, checksum)` or the reason
/// it cannot be read (a string); `checksum` is None when the file stores
/// none, True when the bytes match it, and `(stored, computed)` when not.
#[pyfunction]
#[pyo3(signature = (path, *, num_threads=None))]
pub fn check_part_file<'py>(
    py: Python<'py>,
    path: PathBuf,
    num_threads: Option<usize>,
) -> PyResult<Vec<Bound<'py, PyTuple>>> {
    let checks = py.detach(|| reader::check_file(&path, num_threads)).map_err(to_pyerr)?;
    let info = |r: Result<LatentInfo, String>| -> PyResult<Bound<'py, PyAny>> {
        Ok(match r {
            Ok(i) => {
                let checksum = match i.checksum {
                    ChecksumCheck::Absent => py.None().into_bound(py),
                    ChecksumCheck::Match => true.into_pyobject(py)?.to_owned().into_any(),
                    ChecksumCheck::Mismatch { stored, computed } => (stored, computed).into_pyobject(py)?.into_any(),
                };
                (i.dtype.name(), PyTuple::new(py, i.shape)?, i.nonfinite, checksum).into_pyobject(py)?.into_any()
            }
            Err(e) => e.into_pyobject(py)?.into_any(),
        })
    };
    checks
        .into_iter()
        .map(|c| {
            let [a, b] = c.latents;
            (c.row_group, c.row, info(a)?, info(b)?).into_pyobject(py)
        })
        .collect()
}

/// `check_part_columns(path) -> list[tuple[int, str, str]]`: decode every
/// page of every column but the latents; `(row_group, column, reason)` for
/// each that fails (empty when all decode).
#[pyfunction]
pub fn check_part_columns(py: Python<'_>, path: PathBuf) -> PyResult<Vec<(usize, String, String)>> {
    let problems = py.detach(|| reader::check_columns(&path)).map_err(to_pyerr)?;
    Ok(problems.into_iter().map(|p| (p.row_group, p.column, p.message)).collect())
}

/// `footer_metadata(path) -> dict[str, str | None]`: the footer's key-value metadata.
#[pyfunction]
pub fn footer_metadata<'py>(py: Python<'py>, path: PathBuf) -> PyResult<Bound<'py, PyDict>> {
    let file = py.detach(|| reader::open_cached(&path)).map_err(to_pyerr)?;
    let d = PyDict::new(py);
    for (k, v) in file.key_values() {
        d.set_item(k, v)?;
    }
    Ok(d)
}

/// `file_digest(path) -> str`: a file's digest (XXH3-128, 32 hex digits: the
/// manifest's `FILE_DIGEST`), read without the GIL.
#[pyfunction]
pub fn file_digest(py: Python<'_>, path: PathBuf) -> PyResult<String> {
    Ok(py.detach(|| digest::file_digest(&path))?)
}

/// `latent_checksum(data) -> int`: the checksum (XXH3, 64 bits) the writer stores for a latent's bytes.
#[pyfunction]
pub fn latent_checksum(data: &Bound<'_, PyBytes>) -> u64 {
    digest::latent_checksum(data.as_bytes())
}

/// `rewrite_part_file(src, dest, *, latent_compression="none", zstd_level=1,
/// metadata=None) -> dict`: `repack`'s rewrite of one part file into the
/// page layout (see `rust/parts/rewrite.rs`); `metadata` is the footer's
/// key-value metadata. Returns `{"rows", "row_groups", "bytes", FILE_DIGEST,
/// "checksums_added"}`.
#[pyfunction]
#[pyo3(signature = (src, dest, *, latent_compression="none", zstd_level=1, metadata=None))]
pub fn rewrite_part_file<'py>(
    py: Python<'py>,
    src: PathBuf,
    dest: PathBuf,
    latent_compression: &str,
    zstd_level: i32,
    metadata: Option<Vec<(String, String)>>,
) -> PyResult<Bound<'py, PyDict>> {
    let opts = WriterOptions {
        latent_compression: LatentCompression::parse(latent_compression)?,
        zstd_level,
        metadata: metadata.unwrap_or_default(),
        ..WriterOptions::default()
    };
    let done = py.detach(|| rewrite::rewrite_file(&src, &dest, &opts))?;
    let d = PyDict::new(py);
    d.set_item("rows", done.stats.rows)?;
    d.set_item("row_groups", done.stats.row_groups)?;
    d.set_item("bytes", done.stats.bytes)?;
    d.set_item(digest::FILE_DIGEST, done.stats.digest)?;
    d.set_item("checksums_added", done.checksums_added)?;
    Ok(d)
}

/// `clear_reader_cache()`: close the part files the reader keeps open.
#[pyfunction]
pub fn clear_reader_cache() {
    reader::clear_cache();
}
