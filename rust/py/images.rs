//! Python wrappers of the image core: convert arguments, release the GIL
//! around the heavy call, hand pixel buffers to NumPy without copying.

use std::path::PathBuf;

use crate::py::errors::{OPTION, USAGE};
use numpy::ndarray::{Array3, ArrayView4};
use numpy::{Element, IntoPyArray, PyArray1, PyArray3, PyArray4, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::prelude::*;

use crate::error::Error;
use crate::image::decode::{default_max_file_bytes, AlphaMode, LoadOptions, ProbeLimits, DEFAULT_MAX_PIXELS};
use crate::image::load::{
    load_batch_into, load_batch_normalized, load_batch_normalized_over, load_many, probe_columns, probe_many, ProbeKind,
};
use crate::image::recycle::{F32_BATCHES, U8_BATCHES};
use crate::image::safe_open::Root;

type Sizes = Vec<Option<(u32, u32)>>;
type Errors = Vec<Option<String>>;
type Arrays<'py> = Vec<Option<Bound<'py, PyArray3<u8>>>>;

fn options(alpha: &str, max_pixels: u64, max_file_bytes: Option<u64>) -> PyResult<LoadOptions> {
    Ok(LoadOptions { alpha: alpha.parse::<AlphaMode>()?, max_pixels, max_file_bytes })
}

/// The data root's directory handle, opened once per call (`OSError` when
/// it cannot be opened: that fails the call, not each item).
pub(crate) fn open_root(root: Option<&PathBuf>) -> Result<Option<Root>, Error> {
    root.map(|r| Root::open(r)).transpose()
}

/// Add the probe kind codes: `PROBE_OK`, `PROBE_UNSAFE_PATH`, ...
pub fn add_probe_kinds(m: &Bound<'_, PyModule>) -> PyResult<()> {
    for kind in ProbeKind::ALL {
        let name = ProbeKind::NAMES[kind as usize];
        m.add(format!("PROBE_{}", name.to_uppercase()), kind as u8)?;
    }
    Ok(())
}

/// A target size must have two positive sides and stay within the pixel
/// limit: an absurd size would otherwise abort the process on allocation.
fn check_target((h, w): (i64, i64), max_pixels: u64) -> PyResult<(usize, usize)> {
    if h <= 0 || w <= 0 {
        return Err(Error::InvalidArgument(format!("target size {h}x{w} must have two positive sides")).into());
    }
    if (h as u128) * (w as u128) > max_pixels as u128 {
        return Err(Error::InvalidArgument(format!(
            "target size {h}x{w} is over the limit of {max_pixels} pixels (raise max_pixels to allow it)"
        ))
        .into());
    }
    Ok((h as usize, w as usize))
}

fn split<T>(results: Vec<Result<T, Error>>) -> (Vec<Option<T>>, Errors) {
    results
        .into_iter()
        .map(|r| match r {
            Ok(v) => (Some(v), None),
            Err(e) => (None, Some(e.to_string())),
        })
        .unzip()
}

pub(crate) fn probe_limits(max_pixels: Option<u64>, max_file_bytes: Option<u64>) -> ProbeLimits {
    let file_limit = default_max_file_bytes(max_pixels.unwrap_or(DEFAULT_MAX_PIXELS));
    ProbeLimits { max_pixels, max_file_bytes: max_file_bytes.unwrap_or(file_limit) }
}

/// Header-only `(height, width)` of each file, EXIF orientation applied.
#[pyfunction]
#[pyo3(signature = (paths, *, root=None, num_threads=None, max_file_bytes=None))]
pub fn probe_images(
    py: Python<'_>,
    paths: Vec<PathBuf>,
    root: Option<PathBuf>,
    num_threads: Option<usize>,
    max_file_bytes: Option<u64>,
) -> PyResult<(Sizes, Errors)> {
    let limits = probe_limits(None, max_file_bytes);
    let results = py.detach(|| -> Result<_, Error> {
        let root = open_root(root.as_ref())?;
        Ok(probe_many(root.as_ref(), &paths, num_threads, &limits))
    })?;
    Ok(split(results))
}

type Columns<'py> = (Bound<'py, PyArray1<i64>>, Bound<'py, PyArray1<i64>>, Bound<'py, PyArray1<u8>>, Errors);

/// Columnar probe of many paths beneath `root`: heights, widths (int64, 0
/// where failed), kinds (uint8 `PROBE_*` codes) and reasons.
#[pyfunction]
#[pyo3(signature = (root, rel_paths, *, num_threads=None, max_pixels=DEFAULT_MAX_PIXELS, max_file_bytes=None))]
pub fn probe_paths<'py>(
    py: Python<'py>,
    root: Option<PathBuf>,
    rel_paths: Vec<PathBuf>,
    num_threads: Option<usize>,
    max_pixels: u64,
    max_file_bytes: Option<u64>,
) -> PyResult<Columns<'py>> {
    let limits = probe_limits(Some(max_pixels), max_file_bytes);
    let cols = py.detach(|| -> Result<_, Error> {
        let root = open_root(root.as_ref())?;
        Ok(probe_columns(root.as_ref(), &rel_paths, num_threads, &limits))
    })?;
    Ok((cols.heights.into_pyarray(py), cols.widths.into_pyarray(py), cols.kinds.into_pyarray(py), cols.errors))
}

/// Decode (and optionally resize) each file to an `(h, w, 3)` uint8 array.
#[pyfunction]
#[pyo3(signature = (paths, sizes=None, *, root=None, num_threads=None, alpha="drop", max_pixels=DEFAULT_MAX_PIXELS, max_file_bytes=None))]
#[allow(clippy::too_many_arguments)]
pub fn load_images<'py>(
    py: Python<'py>,
    paths: Vec<PathBuf>,
    sizes: Option<Vec<(i64, i64)>>,
    root: Option<PathBuf>,
    num_threads: Option<usize>,
    alpha: &str,
    max_pixels: u64,
    max_file_bytes: Option<u64>,
) -> PyResult<(Arrays<'py>, Errors)> {
    let opts = options(alpha, max_pixels, max_file_bytes)?;
    if let Some(s) = &sizes {
        if s.len() != paths.len() {
            return Err(Error::InvalidArgument(format!("{} paths but {} sizes", paths.len(), s.len())).into());
        }
    }
    let sizes: Option<Vec<(usize, usize)>> =
        sizes.map(|s| s.into_iter().map(|hw| check_target(hw, max_pixels)).collect()).transpose()?;
    let results = py.detach(|| -> Result<_, Error> {
        let root = open_root(root.as_ref())?;
        Ok(load_many(root.as_ref(), &paths, sizes.as_deref(), num_threads, &opts))
    })?;
    let (images, errors) = split(results);
    let arrays = images.into_iter().map(|img| img.map(|img| to_array(py, img))).collect();
    Ok((arrays, errors))
}

/// Decode and resize every file into one contiguous batch: `(n, h, w, 3)`
/// uint8, or with `normalize` `(n, 3, h, w)` float32 in [-1, 1]; into `out`
/// when given (a reused buffer: no fresh memory for the kernel to zero).
#[pyfunction]
#[pyo3(signature = (paths, size, *, root=None, num_threads=None, alpha="drop", max_pixels=DEFAULT_MAX_PIXELS, max_file_bytes=None, normalize=false, out=None))]
#[allow(clippy::too_many_arguments)]
pub fn load_batch<'py>(
    py: Python<'py>,
    paths: Vec<PathBuf>,
    size: (i64, i64),
    root: Option<PathBuf>,
    num_threads: Option<usize>,
    alpha: &str,
    max_pixels: u64,
    max_file_bytes: Option<u64>,
    normalize: bool,
    out: Option<Bound<'py, PyAny>>,
) -> PyResult<(Bound<'py, PyAny>, Errors)> {
    let opts = options(alpha, max_pixels, max_file_bytes)?;
    let (h, w) = check_target(size, max_pixels)?;
    let n = paths.len();
    let errors = |e: Vec<Option<Error>>| -> Errors { e.into_iter().map(|e| e.map(|e| e.to_string())).collect() };
    let root = py.detach(|| open_root(root.as_ref()))?;
    let root = root.as_ref();
    if let Some(out) = out {
        let errs = if normalize {
            with_out_slice::<f32, _>(&out, [n, 3, h, w], "float32", "(n, 3, h, w)", |slice| {
                py.detach(|| load_batch_normalized_over(root, &paths, (h, w), num_threads, &opts, slice))
            })?
        } else {
            with_out_slice::<u8, _>(&out, [n, h, w, 3], "uint8", "(n, h, w, 3)", |slice| {
                py.detach(|| load_batch_into(root, &paths, (h, w), num_threads, &opts, slice))
            })?
        };
        return Ok((out, errors(errs)));
    }
    let (batch, errs) = if normalize {
        let (buffer, errs) = py.detach(|| load_batch_normalized(root, &paths, (h, w), num_threads, &opts))?;
        (kept_array(py, buffer, [n, 3, h, w], Kept::F32)?, errs)
    } else {
        let (buffer, errs) = py.detach(|| crate::image::load::load_batch(root, &paths, (h, w), num_threads, &opts))?;
        (kept_array(py, buffer, [n, h, w, 3], Kept::U8)?, errs)
    };
    Ok((batch, errors(errs)))
}

/// A batch buffer owned by the NumPy array made from it (its `base`): when
/// the array and every view of it are gone, the buffer goes back to its
/// pool for the next batch (see `recycle.rs`).
enum Kept {
    U8(Vec<u8>),
    F32(Vec<f32>),
}

#[pyclass(frozen, name = "_BatchMemory", module = "hpd_encode._core")]
struct BatchMemory {
    buffer: Kept,
}

impl Drop for BatchMemory {
    fn drop(&mut self) {
        match &mut self.buffer {
            Kept::U8(v) => U8_BATCHES.give(std::mem::take(v)),
            Kept::F32(v) => F32_BATCHES.give(std::mem::take(v)),
        }
    }
}

/// The first elements of `buffer` as a writeable C-contiguous NumPy array
/// of `shape`, without a copy, the whole buffer returned to its pool when
/// the array dies.
fn kept_array<'py, T: Element>(
    py: Python<'py>,
    buffer: Vec<T>,
    shape: [usize; 4],
    kept: fn(Vec<T>) -> Kept,
) -> PyResult<Bound<'py, PyAny>> {
    assert!(buffer.len() >= shape.iter().product::<usize>(), "batch buffer holds its shape");
    // Moving the vector into the owner does not move its heap allocation.
    let data = buffer.as_ptr();
    let owner = Bound::new(py, BatchMemory { buffer: kept(buffer) })?;
    // SAFETY: `data` points at (at least) `shape`'s product of initialised elements,
    // owned by `owner`, which never reallocates or frees them while alive;
    // NumPy keeps `owner` alive as the array's base for as long as the
    // array (or any view of it) exists.
    let array = unsafe {
        let view = ArrayView4::from_shape_ptr(shape, data);
        PyArray4::borrow_from_array(&view, owner.into_any())
    };
    Ok(array.into_any())
}

/// Drop the batch buffers kept for reuse (see `load_batch`); the bytes released.
#[pyfunction]
pub fn free_batch_buffers() -> usize {
    U8_BATCHES.clear() + F32_BATCHES.clear()
}

/// Run `f` on the elements of `out`, which must be a writeable C-contiguous
/// 4-D array of `T` with exactly `shape` (`TypeError` / `ValueError` otherwise).
fn with_out_slice<T: Element, R>(
    out: &Bound<'_, PyAny>,
    shape: [usize; 4],
    dtype: &str,
    layout: &str,
    f: impl FnOnce(&mut [T]) -> R,
) -> PyResult<R> {
    let array = out
        .cast::<PyArray4<T>>()
        .map_err(|_| USAGE.err(format!("out must be a 4-D numpy {dtype} array {layout}, not {}", describe(out))))?;
    if array.shape() != shape {
        return Err(OPTION.err(format!("out has shape {:?}, this batch needs {shape:?} {layout}", array.shape())));
    }
    if !array.is_c_contiguous() {
        return Err(OPTION.err("out must be C-contiguous"));
    }
    let out_err = |e: &dyn std::fmt::Display| OPTION.err(format!("out: {e}"));
    let mut view = array.try_readwrite().map_err(|e| out_err(&e))?;
    Ok(f(view.as_slice_mut().map_err(|e| out_err(&e))?))
}

/// A short description of a Python object for an error message.
fn describe(obj: &Bound<'_, PyAny>) -> String {
    match obj.getattr("dtype").and_then(|d| d.str()) {
        Ok(dtype) => format!("{} of {dtype}", obj.get_type().name().map(|n| n.to_string()).unwrap_or_default()),
        Err(_) => obj.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "an unknown object".into()),
    }
}

fn to_array(py: Python<'_>, img: crate::image::decode::RgbImage) -> Bound<'_, PyArray3<u8>> {
    Array3::from_shape_vec((img.height, img.width, 3), img.data)
        .expect("decoded buffer matches its shape")
        .into_pyarray(py)
}

/// Decode one file; raises `ImageDecodeError` / `ImageTooLargeError` / `OSError`.
#[pyfunction]
#[pyo3(signature = (path, size=None, *, root=None, alpha="drop", max_pixels=DEFAULT_MAX_PIXELS, max_file_bytes=None))]
pub fn load_image<'py>(
    py: Python<'py>,
    path: PathBuf,
    size: Option<(i64, i64)>,
    root: Option<PathBuf>,
    alpha: &str,
    max_pixels: u64,
    max_file_bytes: Option<u64>,
) -> PyResult<Bound<'py, PyArray3<u8>>> {
    let opts = options(alpha, max_pixels, max_file_bytes)?;
    let size = size.map(|hw| check_target(hw, max_pixels)).transpose()?;
    let img = py.detach(|| -> Result<_, Error> {
        let root = open_root(root.as_ref())?;
        crate::image::load::load_one(root.as_ref(), &path, size, &opts)
    })?;
    Ok(to_array(py, img))
}

/// Header-only `(height, width)` of one file; raises on failure.
#[pyfunction]
#[pyo3(signature = (path, *, root=None, max_file_bytes=None))]
pub fn probe_image(
    py: Python<'_>,
    path: PathBuf,
    root: Option<PathBuf>,
    max_file_bytes: Option<u64>,
) -> PyResult<(u32, u32)> {
    let limits = probe_limits(None, max_file_bytes);
    Ok(py.detach(|| -> Result<_, Error> {
        let root = open_root(root.as_ref())?;
        crate::image::decode::probe_file(root.as_ref(), &path, &limits)
    })?)
}
