//! Python wrappers of the image core: convert arguments, release the GIL
//! around the heavy call, hand pixel buffers to NumPy without copying.

use std::path::PathBuf;

use numpy::ndarray::{Array3, Array4};
use numpy::{IntoPyArray, PyArray3};
use pyo3::prelude::*;

use crate::decode::{AlphaMode, LoadOptions};
use crate::error::Error;
use crate::load::{load_batch_into, load_batch_normalised_into, load_many, probe_many};

type Sizes = Vec<Option<(u32, u32)>>;
type Errors = Vec<Option<String>>;
type Arrays<'py> = Vec<Option<Bound<'py, PyArray3<u8>>>>;

fn options(alpha: &str, max_pixels: u64) -> PyResult<LoadOptions> {
    Ok(LoadOptions { alpha: alpha.parse::<AlphaMode>()?, max_pixels })
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

/// Header-only `(height, width)` of each file, EXIF orientation applied.
#[pyfunction]
#[pyo3(signature = (paths, *, num_threads=None))]
pub fn probe_images(py: Python<'_>, paths: Vec<PathBuf>, num_threads: Option<usize>) -> (Sizes, Errors) {
    let results = py.detach(|| probe_many(&paths, num_threads));
    split(results)
}

/// Decode (and optionally resize) each file to an `(h, w, 3)` uint8 array.
#[pyfunction]
#[pyo3(signature = (paths, sizes=None, *, num_threads=None, alpha="drop", max_pixels=crate::decode::DEFAULT_MAX_PIXELS))]
pub fn load_images<'py>(
    py: Python<'py>,
    paths: Vec<PathBuf>,
    sizes: Option<Vec<(i64, i64)>>,
    num_threads: Option<usize>,
    alpha: &str,
    max_pixels: u64,
) -> PyResult<(Arrays<'py>, Errors)> {
    let opts = options(alpha, max_pixels)?;
    if let Some(s) = &sizes {
        if s.len() != paths.len() {
            return Err(Error::InvalidArgument(format!("{} paths but {} sizes", paths.len(), s.len())).into());
        }
    }
    let sizes: Option<Vec<(usize, usize)>> =
        sizes.map(|s| s.into_iter().map(|hw| check_target(hw, max_pixels)).collect()).transpose()?;
    let results = py.detach(|| load_many(&paths, sizes.as_deref(), num_threads, &opts));
    let (images, errors) = split(results);
    let arrays = images.into_iter().map(|img| img.map(|img| to_array(py, img))).collect();
    Ok((arrays, errors))
}

/// Decode and resize every file into one contiguous batch: `(n, h, w, 3)`
/// uint8, or with `normalize` `(n, 3, h, w)` float32 in [-1, 1].
#[pyfunction]
#[pyo3(signature = (paths, size, *, num_threads=None, alpha="drop", max_pixels=crate::decode::DEFAULT_MAX_PIXELS, normalize=false))]
pub fn load_batch<'py>(
    py: Python<'py>,
    paths: Vec<PathBuf>,
    size: (i64, i64),
    num_threads: Option<usize>,
    alpha: &str,
    max_pixels: u64,
    normalize: bool,
) -> PyResult<(Bound<'py, PyAny>, Errors)> {
    let opts = options(alpha, max_pixels)?;
    let (h, w) = check_target(size, max_pixels)?;
    let n = paths.len();
    let item_bytes = if normalize { 3 * std::mem::size_of::<f32>() } else { 3 };
    if (n as u128) * (h as u128) * (w as u128) * (item_bytes as u128) > isize::MAX as u128 {
        return Err(Error::InvalidArgument(format!("a batch of {n} images of {h}x{w} does not fit in memory")).into());
    }
    let (batch, errors) = if normalize {
        let (buffer, errors) = py.detach(|| {
            let mut buffer = vec![0f32; n * 3 * h * w];
            let errors = load_batch_normalised_into(&paths, (h, w), num_threads, &opts, &mut buffer);
            (buffer, errors)
        });
        let batch = Array4::from_shape_vec((n, 3, h, w), buffer).expect("batch buffer matches its shape");
        (batch.into_pyarray(py).into_any(), errors)
    } else {
        let (buffer, errors) = py.detach(|| {
            let mut buffer = vec![0u8; n * h * w * 3];
            let errors = load_batch_into(&paths, (h, w), num_threads, &opts, &mut buffer);
            (buffer, errors)
        });
        let batch = Array4::from_shape_vec((n, h, w, 3), buffer).expect("batch buffer matches its shape");
        (batch.into_pyarray(py).into_any(), errors)
    };
    Ok((batch, errors.into_iter().map(|e| e.map(|e| e.to_string())).collect()))
}

fn to_array(py: Python<'_>, img: crate::decode::RgbImage) -> Bound<'_, PyArray3<u8>> {
    Array3::from_shape_vec((img.height, img.width, 3), img.data)
        .expect("decoded buffer matches its shape")
        .into_pyarray(py)
}

/// Decode one file; raises `ImageDecodeError` / `ImageTooLargeError` / `OSError`.
#[pyfunction]
#[pyo3(signature = (path, size=None, *, alpha="drop", max_pixels=crate::decode::DEFAULT_MAX_PIXELS))]
pub fn load_image<'py>(
    py: Python<'py>,
    path: PathBuf,
    size: Option<(i64, i64)>,
    alpha: &str,
    max_pixels: u64,
) -> PyResult<Bound<'py, PyArray3<u8>>> {
    let opts = options(alpha, max_pixels)?;
    let size = size.map(|hw| check_target(hw, max_pixels)).transpose()?;
    let img = py.detach(|| crate::load::load_one(&path, size, &opts))?;
    Ok(to_array(py, img))
}

/// Header-only `(height, width)` of one file; raises on failure.
#[pyfunction]
pub fn probe_image(py: Python<'_>, path: PathBuf) -> PyResult<(u32, u32)> {
    Ok(py.detach(|| crate::decode::probe_path(&path))?)
}
