//! Python wrappers of the latent reader (`reader.rs`): convert requests,
//! release the GIL around the reads, hand each parsed latent to NumPy
//! without copying it again.

use std::path::PathBuf;

use numpy::ndarray::{ArrayD, IxDyn};
use numpy::IntoPyArray;
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use crate::parts::reader::{self, Latent, LatentData, LatentInfo, ReadError, Request};
use crate::py::errors::{io_error, OUT_OF_RANGE, PART_FILE};

fn to_pyerr(e: ReadError) -> PyErr {
    let msg = e.to_string();
    match e {
        ReadError::Io { kind, .. } => io_error(&std::io::Error::from(kind), msg),
        ReadError::OutOfRange(_) => OUT_OF_RANGE.err(msg),
        ReadError::File { .. } | ReadError::Row { .. } => PART_FILE.err(msg),
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

/// `read_pairs(requests, *, num_threads=None) -> list[tuple[ndarray, ndarray]]`:
/// the two latents of each `(part_file, row_group, row)`, in request order.
/// Raises on the first request that cannot be read.
#[pyfunction]
#[pyo3(signature = (requests, *, num_threads=None))]
pub fn read_pairs<'py>(
    py: Python<'py>,
    requests: Vec<(PathBuf, usize, usize)>,
    num_threads: Option<usize>,
) -> PyResult<Vec<Bound<'py, PyTuple>>> {
    let requests: Vec<Request> =
        requests.into_iter().map(|(path, row_group, row)| Request { path, row_group, row }).collect();
    let results = py.detach(|| reader::read_pairs(&requests, num_threads));
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

/// `check_part_file(path, *, num_threads=None)`: read every latent of a
/// part file and return, per row, `(row_group, row, latent1, latent2)` where
/// each latent is `(dtype, shape, nonfinite_count)` or the reason it cannot
/// be read (a string).
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
            Ok(i) => (i.dtype.name(), PyTuple::new(py, i.shape)?, i.nonfinite).into_pyobject(py)?.into_any(),
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

/// `clear_reader_cache()`: close the part files the reader keeps open.
#[pyfunction]
pub fn clear_reader_cache() {
    reader::clear_cache();
}
