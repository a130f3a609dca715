//! hpd-encode's Rust core.
//!
//! The pure-Rust layer (`decode`, `resize`, `load`, `recycle`, `buckets`, `npy`, `metadata`,
//! `owners`, `structure`, `writer`, `footer`, `groups`) knows nothing of Python and is tested with `cargo test`. The
//! `py_*` modules are thin PyO3 wrappers, built with the `python` feature
//! (maturin turns it on).

pub mod buckets;
pub mod decode;
pub mod error;
pub mod footer;
pub mod groups;
pub mod load;
pub mod metadata;
pub mod npy;
pub mod owners;
pub mod pool;
pub mod reader;
pub mod recycle;
pub mod resize;
pub mod safe_open;
pub mod structure;
pub mod survey;
pub mod writer;

#[cfg(test)]
mod fuzz_tests;

#[cfg(feature = "python")]
mod py_buckets;
#[cfg(feature = "python")]
mod py_errors;
#[cfg(feature = "python")]
mod py_images;
#[cfg(feature = "python")]
mod py_index;
#[cfg(feature = "python")]
mod py_metadata;
#[cfg(feature = "python")]
mod py_reader;
#[cfg(feature = "python")]
mod py_writer;

#[cfg(feature = "python")]
#[pyo3::pymodule]
fn _core(m: &pyo3::Bound<'_, pyo3::types::PyModule>) -> pyo3::PyResult<()> {
    use pyo3::prelude::*;
    let py = m.py();
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("DEFAULT_MAX_PIXELS", decode::DEFAULT_MAX_PIXELS)?;
    m.add("HpdError", py.get_type::<py_errors::HpdError>())?;
    m.add("ImageDecodeError", py.get_type::<py_errors::ImageDecodeError>())?;
    m.add("ImageTooLargeError", py.get_type::<py_errors::ImageTooLargeError>())?;
    m.add("WriterError", py.get_type::<py_errors::WriterError>())?;
    py_errors::add_multi_base_errors(m)?;
    py_images::add_probe_kinds(m)?;
    m.add("DEFAULT_MAX_FILE_BYTES", decode::default_max_file_bytes(decode::DEFAULT_MAX_PIXELS))?;
    m.add_function(wrap_pyfunction!(py_images::probe_paths, m)?)?;
    m.add_function(wrap_pyfunction!(py_images::probe_images, m)?)?;
    m.add_function(wrap_pyfunction!(py_images::load_images, m)?)?;
    m.add_function(wrap_pyfunction!(py_images::load_batch, m)?)?;
    m.add_function(wrap_pyfunction!(py_images::load_image, m)?)?;
    m.add_function(wrap_pyfunction!(py_images::probe_image, m)?)?;
    m.add_function(wrap_pyfunction!(py_images::free_batch_buffers, m)?)?;
    m.add_function(wrap_pyfunction!(py_buckets::_rebuild_bucket_set, m)?)?;
    m.add_class::<py_buckets::PyBucketSet>()?;
    py_writer::register(m)?;
    m.add_function(wrap_pyfunction!(py_index::parquet_layout, m)?)?;
    m.add_function(wrap_pyfunction!(py_index::rank_in_group, m)?)?;
    m.add_function(wrap_pyfunction!(py_reader::read_pairs, m)?)?;
    m.add_function(wrap_pyfunction!(py_reader::latent_layout, m)?)?;
    m.add_function(wrap_pyfunction!(py_reader::check_part_file, m)?)?;
    m.add_function(wrap_pyfunction!(py_reader::clear_reader_cache, m)?)?;
    m.add_function(wrap_pyfunction!(py_index::connected_components, m)?)?;
    m.add_function(wrap_pyfunction!(py_index::partition_rows, m)?)?;
    m.add_function(wrap_pyfunction!(py_index::first_use_numbering, m)?)?;
    m.add_function(wrap_pyfunction!(py_index::number_jobs, m)?)?;
    m.add_function(wrap_pyfunction!(py_index::image_owners, m)?)?;
    m.add_function(wrap_pyfunction!(py_metadata::read_metadata_columns, m)?)?;
    m.add_function(wrap_pyfunction!(py_metadata::metadata_value_end, m)?)?;
    m.add_function(wrap_pyfunction!(py_metadata::metadata_range_summary, m)?)?;
    m.add_function(wrap_pyfunction!(py_metadata::read_metadata_entries, m)?)?;
    m.add_function(wrap_pyfunction!(py_metadata::survey_metadata, m)?)?;
    m.add_class::<py_metadata::PyPathIds>()?;
    m.add_class::<py_metadata::PyCounter>()?;
    m.add("METADATA_WINDOW", metadata::DEFAULT_WINDOW)?;
    m.add("default_num_threads", pool::default_threads())?;
    Ok(())
}
