//! Array helpers of the bucket index (`hpd_encode.index`: footer layout,
//! per-prompt rank) and of the encode planner (connected components), all
//! without the GIL.

use numpy::{IntoPyArray, PyArray1, PyReadonlyArray1};
use pyo3::prelude::*;

use crate::parts::footer::read_layout;
use crate::plan::groups;

/// What `parquet_layout` returns: rows per row group, column names, rows, provenance.
type FooterLayout = (Vec<i64>, Vec<String>, i64, Option<String>);

/// `parquet_layout(path) -> (row_group_rows, columns, num_rows, provenance)`:
/// a Parquet file's rows per row group, top-level column names, row count
/// and provenance JSON (None when it has none), from its footer.
#[pyfunction]
pub fn parquet_layout(py: Python<'_>, path: std::path::PathBuf) -> PyResult<FooterLayout> {
    let layout = py.detach(|| read_layout(&path))?;
    Ok((layout.row_group_rows, layout.columns, layout.num_rows, layout.provenance))
}

/// `rank_in_group(groups, order) -> int64 array`: each row's rank among the
/// rows of its group, rows counted in the order `order` visits them.
#[pyfunction]
pub fn rank_in_group<'py>(
    py: Python<'py>,
    groups: PyReadonlyArray1<'py, i64>,
    order: PyReadonlyArray1<'py, i64>,
) -> PyResult<Bound<'py, PyArray1<i64>>> {
    let (g, o) = (groups.as_slice()?, order.as_slice()?);
    let ranks = py.detach(|| groups::rank_in_group(g, o))?;
    Ok(ranks.into_pyarray(py))
}

/// `connected_components(n, a, b) -> int64 array`: for the graph on nodes
/// `0..n` with edges `(a[i], b[i])`, each node's component label (the
/// smallest node id in its component).
#[pyfunction]
pub fn connected_components<'py>(
    py: Python<'py>,
    n: usize,
    a: PyReadonlyArray1<'py, i64>,
    b: PyReadonlyArray1<'py, i64>,
) -> PyResult<Bound<'py, PyArray1<i64>>> {
    let (a, b) = (a.as_slice()?, b.as_slice()?);
    let labels = py.detach(|| groups::connected_components(n, a, b))?;
    Ok(labels.into_pyarray(py))
}

/// `partition(id1, id2, bucket, pixels, record, world, share) -> (rank_of_row, jobs, cost_per_rank)`:
/// whole components of rows sharing a job, largest first onto the least-loaded rank.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
pub fn partition_rows<'py>(
    py: Python<'py>,
    id1: PyReadonlyArray1<'py, i64>,
    id2: PyReadonlyArray1<'py, i64>,
    bucket: PyReadonlyArray1<'py, i64>,
    pixels: PyReadonlyArray1<'py, i64>,
    record: PyReadonlyArray1<'py, i64>,
    world: usize,
    share: bool,
) -> PyResult<(Bound<'py, PyArray1<i64>>, usize, Vec<i64>)> {
    let (a, b, k, p, r) =
        (id1.as_slice()?, id2.as_slice()?, bucket.as_slice()?, pixels.as_slice()?, record.as_slice()?);
    let split = py.detach(|| groups::partition(a, b, k, p, r, world, share))?;
    Ok((split.rank_of_row.into_pyarray(py), split.jobs, split.cost_per_rank))
}

/// Each row's chosen and rejected job numbers.
type JobPair<'py> = (Bound<'py, PyArray1<i64>>, Bound<'py, PyArray1<i64>>);

/// `number_jobs(id1, id2, bucket, share) -> (chosen, rejected)`: each row's two jobs (an image id
/// at the row's bucket with `share`, else two of its own), numbered by first use, row by row.
#[pyfunction]
pub fn number_jobs<'py>(
    py: Python<'py>,
    id1: PyReadonlyArray1<'py, i64>,
    id2: PyReadonlyArray1<'py, i64>,
    bucket: PyReadonlyArray1<'py, i64>,
    share: bool,
) -> PyResult<JobPair<'py>> {
    let (a, b, k) = (id1.as_slice()?, id2.as_slice()?, bucket.as_slice()?);
    if b.len() != a.len() || k.len() != a.len() {
        return Err(crate::error::Error::InvalidArgument("number_jobs: the columns differ in length".into()).into());
    }
    let (chosen, rejected, _) = py.detach(|| groups::number_jobs(a, b, k, share));
    Ok((chosen.into_pyarray(py), rejected.into_pyarray(py)))
}

/// `first_use_numbering(keys) -> int64 array`: each key's number in order of first appearance.
#[pyfunction]
pub fn first_use_numbering<'py>(
    py: Python<'py>,
    keys: PyReadonlyArray1<'py, i64>,
) -> PyResult<Bound<'py, PyArray1<i64>>> {
    let k = keys.as_slice()?;
    Ok(py.detach(|| groups::first_use_numbering(k)).into_pyarray(py))
}

/// What `image_owners` returns: `(n_images, ids, probe, seer_start, seers)`.
type OwnersOut<'py> =
    (usize, Bound<'py, PyArray1<i64>>, Bound<'py, PyArray1<i64>>, Bound<'py, PyArray1<i64>>, Bound<'py, PyArray1<i32>>);

/// `image_owners(seen, rank) -> (n_images, ids, probe, seer_start, seers)`: from every rank's
/// distinct image hashes (sorted uint64 arrays, by rank), this rank's view: the number of distinct
/// images, the id of each of its hashes (its position among all of them, sorted), the positions of
/// the images it probes, and for each of those the ranks that saw it
/// (`seers[seer_start[k]:seer_start[k + 1]]`).
#[pyfunction]
pub fn image_owners<'py>(
    py: Python<'py>,
    seen: Vec<PyReadonlyArray1<'py, u64>>,
    rank: usize,
) -> PyResult<OwnersOut<'py>> {
    let lists = seen.iter().map(|s| s.as_slice()).collect::<Result<Vec<_>, _>>()?;
    let o = py.detach(|| crate::metadata::owners::owners(&lists, rank))?;
    Ok((
        o.n_images,
        o.ids.into_pyarray(py),
        o.probe.into_pyarray(py),
        o.seer_start.into_pyarray(py),
        o.seers.into_pyarray(py),
    ))
}
