//! Python wrapper of [`crate::plan::buckets::BucketSet`].

use numpy::{AllowTypeChange, IntoPyArray, PyArray1, PyArrayLike1};
use pyo3::prelude::*;

use crate::error::Error;
use crate::plan::buckets::{self, DROP_REASONS};

#[pyclass(name = "BucketSet", module = "hpd_encode._core", frozen)]
pub struct PyBucketSet {
    pub inner: buckets::BucketSet,
}

type Ints<'py> = PyArrayLike1<'py, i64, AllowTypeChange>;
/// What `__reduce__` returns: the rebuild function and its arguments.
type Reduced<'py> = (Bound<'py, PyAny>, (Vec<(u32, u32)>, f64, f64, u64));
/// Target ids and reason codes of many pairs.
type PairArrays<'py> = (Bound<'py, PyArray1<i32>>, Bound<'py, PyArray1<i8>>);

fn side(v: i64) -> u64 {
    v.max(0) as u64
}

/// The values of a 1-d integer array, contiguous or not (a strided view such
/// as `a[::2]` is as valid an input as a fresh array).
fn values(a: &Ints<'_>) -> Vec<i64> {
    a.as_array().iter().copied().collect()
}

/// A Python int that must fit `T` (a side as u32, a pixel count as u64):
/// ValueError, not OverflowError, when it is negative or too large.
fn fit<T: TryFrom<i64>>(what: &str, v: i64) -> PyResult<T> {
    T::try_from(v)
        .map_err(|_| Error::InvalidArgument(format!("{what} must be a non-negative integer in range, not {v}")).into())
}

fn bucket_list(buckets: Vec<(i64, i64)>) -> PyResult<Vec<(u32, u32)>> {
    buckets.into_iter().map(|(h, w)| Ok((fit("a bucket height", h)?, fit("a bucket width", w)?))).collect()
}

fn with_params(
    mut set: buckets::BucketSet,
    aspect_tolerance: f64,
    pair_aspect_tolerance: f64,
    min_pixels: i64,
) -> PyResult<PyBucketSet> {
    if !(aspect_tolerance >= 0.0 && pair_aspect_tolerance >= 0.0) {
        return Err(Error::InvalidArgument("tolerances must be >= 0".into()).into());
    }
    set.aspect_tolerance = aspect_tolerance;
    set.pair_aspect_tolerance = pair_aspect_tolerance;
    set.min_pixels = fit("min_pixels", min_pixels)?;
    Ok(PyBucketSet { inner: set })
}

#[pymethods]
impl PyBucketSet {
    #[new]
    #[pyo3(signature = (buckets, *, aspect_tolerance=buckets::DEFAULT_ASPECT_TOLERANCE, pair_aspect_tolerance=buckets::DEFAULT_PAIR_ASPECT_TOLERANCE, min_pixels=buckets::DEFAULT_MIN_PIXELS as i64))]
    fn new(
        buckets: Vec<(i64, i64)>,
        aspect_tolerance: f64,
        pair_aspect_tolerance: f64,
        min_pixels: i64,
    ) -> PyResult<Self> {
        with_params(
            buckets::BucketSet::new(bucket_list(buckets)?)?,
            aspect_tolerance,
            pair_aspect_tolerance,
            min_pixels,
        )
    }

    /// The 13 buckets of the reference, same ids.
    #[staticmethod]
    #[pyo3(signature = (*, aspect_tolerance=buckets::DEFAULT_ASPECT_TOLERANCE, pair_aspect_tolerance=buckets::DEFAULT_PAIR_ASPECT_TOLERANCE, min_pixels=buckets::DEFAULT_MIN_PIXELS as i64))]
    fn hpdv3(aspect_tolerance: f64, pair_aspect_tolerance: f64, min_pixels: i64) -> PyResult<Self> {
        with_params(buckets::BucketSet::hpdv3(), aspect_tolerance, pair_aspect_tolerance, min_pixels)
    }

    /// A generated (kohya-style) set within a pixel budget.
    #[staticmethod]
    #[pyo3(signature = (max_pixels=1024*1024, step=64, min_side=256, max_side=2048, *, aspect_tolerance=buckets::DEFAULT_ASPECT_TOLERANCE, pair_aspect_tolerance=buckets::DEFAULT_PAIR_ASPECT_TOLERANCE, min_pixels=buckets::DEFAULT_MIN_PIXELS as i64))]
    #[allow(clippy::too_many_arguments)]
    fn generate(
        max_pixels: i64,
        step: i64,
        min_side: i64,
        max_side: i64,
        aspect_tolerance: f64,
        pair_aspect_tolerance: f64,
        min_pixels: i64,
    ) -> PyResult<Self> {
        let set = buckets::BucketSet::generate(
            fit("max_pixels", max_pixels)?,
            fit("step", step)?,
            fit("min_side", min_side)?,
            fit("max_side", max_side)?,
        )?;
        with_params(set, aspect_tolerance, pair_aspect_tolerance, min_pixels)
    }

    /// The buckets as `(height, width)`, in id order.
    #[getter]
    fn buckets(&self) -> Vec<(u32, u32)> {
        self.inner.buckets().to_vec()
    }
    #[getter]
    fn aspect_tolerance(&self) -> f64 {
        self.inner.aspect_tolerance
    }
    #[getter]
    fn pair_aspect_tolerance(&self) -> f64 {
        self.inner.pair_aspect_tolerance
    }
    #[getter]
    fn min_pixels(&self) -> u64 {
        self.inner.min_pixels
    }
    #[classattr]
    #[allow(non_snake_case)]
    fn DROP_REASONS() -> Vec<&'static str> {
        DROP_REASONS.to_vec()
    }

    fn __len__(&self) -> usize {
        self.inner.buckets().len()
    }

    fn __repr__(&self) -> String {
        let sizes: Vec<String> = self.inner.buckets().iter().map(|(h, w)| format!("{h}x{w}")).collect();
        format!(
            "BucketSet([{}], aspect_tolerance={}, pair_aspect_tolerance={}, min_pixels={})",
            sizes.join(", "),
            self.inner.aspect_tolerance,
            self.inner.pair_aspect_tolerance,
            self.inner.min_pixels
        )
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other.cast::<Self>().map(|o| o.get().inner == self.inner).unwrap_or(false)
    }

    fn __reduce__<'py>(&self, py: Python<'py>) -> PyResult<Reduced<'py>> {
        let s = &self.inner;
        let rebuild = py.import("hpd_encode._core")?.getattr("_rebuild_bucket_set")?;
        Ok((rebuild, (s.buckets().to_vec(), s.aspect_tolerance, s.pair_aspect_tolerance, s.min_pixels)))
    }

    /// Id of the bucket that is exactly `height x width`, or None.
    fn index(&self, height: i64, width: i64) -> Option<usize> {
        let (h, w) = (u32::try_from(height).ok()?, u32::try_from(width).ok()?);
        self.inner.buckets().iter().position(|&b| b == (h, w))
    }

    /// Bucket id of one image, or None.
    fn assign(&self, height: i64, width: i64) -> Option<usize> {
        self.inner.assign(side(height), side(width))
    }

    /// Bucket ids of many images (int32, -1 = no bucket).
    fn assign_many<'py>(
        &self,
        py: Python<'py>,
        heights: Ints<'py>,
        widths: Ints<'py>,
    ) -> PyResult<Bound<'py, PyArray1<i32>>> {
        let (h, w) = (values(&heights), values(&widths));
        if h.len() != w.len() {
            return Err(Error::InvalidArgument(format!("{} heights but {} widths", h.len(), w.len())).into());
        }
        let ids: Vec<i32> = py.detach(|| {
            h.iter().zip(&w).map(|(&h, &w)| self.inner.assign(side(h), side(w)).map_or(-1, |i| i as i32)).collect()
        });
        Ok(ids.into_pyarray(py))
    }

    /// Target bucket id of a pair, or None when the pair rules drop it.
    fn assign_pair(&self, h1: i64, w1: i64, h2: i64, w2: i64) -> Option<usize> {
        self.inner.assign_pair(side(h1), side(w1), side(h2), side(w2)).ok()
    }

    /// Target bucket ids of many pairs (int32, -1 = dropped) and the reason
    /// codes (int8, indexes into `DROP_REASONS`; 0 = kept).
    fn assign_pairs<'py>(
        &self,
        py: Python<'py>,
        h1: Ints<'py>,
        w1: Ints<'py>,
        h2: Ints<'py>,
        w2: Ints<'py>,
    ) -> PyResult<PairArrays<'py>> {
        let cols = [values(&h1), values(&w1), values(&h2), values(&w2)];
        let n = cols[0].len();
        if cols.iter().any(|c| c.len() != n) {
            return Err(Error::InvalidArgument("h1, w1, h2 and w2 must have the same length".into()).into());
        }
        let (ids, reasons): (Vec<i32>, Vec<i8>) = py.detach(|| {
            use rayon::prelude::*;
            // On the shared pool: a million pairs are a tenth of a second on one core.
            crate::pool::pool(None).install(|| {
                (0..n)
                    .into_par_iter()
                    .map(|i| {
                        match self.inner.assign_pair(
                            side(cols[0][i]),
                            side(cols[1][i]),
                            side(cols[2][i]),
                            side(cols[3][i]),
                        ) {
                            Ok(b) => (b as i32, 0),
                            Err(d) => (-1, d as i8),
                        }
                    })
                    .unzip()
            })
        });
        Ok((ids.into_pyarray(py), reasons.into_pyarray(py)))
    }
}

/// Unpickling helper.
#[pyfunction]
pub fn _rebuild_bucket_set(
    buckets: Vec<(i64, i64)>,
    aspect_tolerance: f64,
    pair_aspect_tolerance: f64,
    min_pixels: i64,
) -> PyResult<PyBucketSet> {
    with_params(buckets::BucketSet::new(bucket_list(buckets)?)?, aspect_tolerance, pair_aspect_tolerance, min_pixels)
}
