//! hpd-encode's Rust core.
//!
//! The pure-Rust layer knows nothing of Python and is tested with `cargo test`:
//! `image/` (open, probe, decode, resize, batch load), `parts/` (the part-file
//! writer, reader, footers, npy), `metadata/` (the metadata reader and the
//! survey), `plan/` (bucket and pair rules, split kernels), with `error` and
//! `pool` beside them. `py/` holds the thin PyO3 wrappers, built with the
//! `python` feature (maturin turns it on). ARCHITECTURE.md maps every file.

pub mod error;
pub mod image;
pub mod metadata;
pub mod parts;
pub mod plan;
pub mod pool;

#[cfg(test)]
mod fuzz_tests;

#[cfg(feature = "python")]
mod py;

#[cfg(feature = "python")]
#[pyo3::pymodule]
fn _core(m: &pyo3::Bound<'_, pyo3::types::PyModule>) -> pyo3::PyResult<()> {
    use pyo3::prelude::*;
    let py = m.py();
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("DEFAULT_MAX_PIXELS", image::decode::DEFAULT_MAX_PIXELS)?;
    m.add("HpdError", py.get_type::<py::errors::HpdError>())?;
    m.add("ImageDecodeError", py.get_type::<py::errors::ImageDecodeError>())?;
    m.add("ImageTooLargeError", py.get_type::<py::errors::ImageTooLargeError>())?;
    m.add("WriterError", py.get_type::<py::errors::WriterError>())?;
    py::errors::add_multi_base_errors(m)?;
    py::images::add_probe_kinds(m)?;
    m.add("DEFAULT_MAX_FILE_BYTES", image::decode::default_max_file_bytes(image::decode::DEFAULT_MAX_PIXELS))?;
    m.add_function(wrap_pyfunction!(py::images::probe_paths, m)?)?;
    m.add_function(wrap_pyfunction!(py::images::probe_images, m)?)?;
    m.add_function(wrap_pyfunction!(py::images::load_images, m)?)?;
    m.add_function(wrap_pyfunction!(py::images::load_batch, m)?)?;
    m.add_function(wrap_pyfunction!(py::images::load_image, m)?)?;
    m.add_function(wrap_pyfunction!(py::images::probe_image, m)?)?;
    m.add_function(wrap_pyfunction!(py::images::free_batch_buffers, m)?)?;
    m.add_function(wrap_pyfunction!(py::buckets::_rebuild_bucket_set, m)?)?;
    m.add_class::<py::buckets::PyBucketSet>()?;
    py::writer::register(m)?;
    m.add_function(wrap_pyfunction!(py::index::parquet_layout, m)?)?;
    m.add_function(wrap_pyfunction!(py::index::rank_in_group, m)?)?;
    m.add_function(wrap_pyfunction!(py::reader::read_pairs, m)?)?;
    m.add_function(wrap_pyfunction!(py::reader::latent_layout, m)?)?;
    m.add_function(wrap_pyfunction!(py::reader::check_part_file, m)?)?;
    m.add_function(wrap_pyfunction!(py::reader::clear_reader_cache, m)?)?;
    for f in [
        wrap_pyfunction!(py::store::object_store_settings, m)?,
        wrap_pyfunction!(py::store::configure_object_store, m)?,
        wrap_pyfunction!(py::store::s3_storage_options, m)?,
        wrap_pyfunction!(py::store::list_objects, m)?,
        wrap_pyfunction!(py::store::head_object, m)?,
        wrap_pyfunction!(py::store::get_object, m)?,
        wrap_pyfunction!(py::store::put_object, m)?,
        wrap_pyfunction!(py::store::delete_object, m)?,
        wrap_pyfunction!(py::store::download_object, m)?,
        wrap_pyfunction!(py::store::upload_file, m)?,
        wrap_pyfunction!(py::store::file_crc64nvme, m)?,
        wrap_pyfunction!(py::store::object_store_stats, m)?,
        wrap_pyfunction!(py::store::reset_object_store, m)?,
        wrap_pyfunction!(py::store::reset_object_store_stats, m)?,
        wrap_pyfunction!(py::store::read_row_group_columns, m)?,
        wrap_pyfunction!(py::reader::part_file_columns, m)?,
        wrap_pyfunction!(py::reader::check_part_columns, m)?,
        wrap_pyfunction!(py::reader::footer_metadata, m)?,
        wrap_pyfunction!(py::reader::file_digest, m)?,
        wrap_pyfunction!(py::reader::latent_checksum, m)?,
        wrap_pyfunction!(py::reader::rewrite_part_file, m)?,
    ] {
        m.add_function(f)?;
    }
    m.add_function(wrap_pyfunction!(py::index::connected_components, m)?)?;
    m.add_function(wrap_pyfunction!(py::index::partition_rows, m)?)?;
    m.add_function(wrap_pyfunction!(py::index::first_use_numbering, m)?)?;
    m.add_function(wrap_pyfunction!(py::index::number_jobs, m)?)?;
    m.add_function(wrap_pyfunction!(py::index::image_owners, m)?)?;
    m.add("MAX_DETAIL", metadata::pyrepr::MAX_DETAIL)?;
    m.add_function(wrap_pyfunction!(py::metadata::record_fields, m)?)?;
    m.add_function(wrap_pyfunction!(py::metadata::metadata_file_kind, m)?)?;
    m.add_function(wrap_pyfunction!(py::metadata::read_metadata_columns, m)?)?;
    m.add_function(wrap_pyfunction!(py::metadata::metadata_range_summary, m)?)?;
    m.add_function(wrap_pyfunction!(py::metadata::read_metadata_entries, m)?)?;
    m.add_function(wrap_pyfunction!(py::metadata::survey_metadata, m)?)?;
    m.add_class::<py::metadata::PyRecordField>()?;
    m.add_class::<py::metadata::PyMetaColumns>()?;
    m.add_class::<py::metadata::PyStringColumn>()?;
    m.add_class::<py::metadata::PyFailures>()?;
    m.add_class::<py::metadata::PySurveyed>()?;
    m.add_class::<py::metadata::PyPathIds>()?;
    m.add_class::<py::metadata::PyCounter>()?;
    m.add_class::<py::metadata::PyShare>()?;
    m.add("METADATA_WINDOW", metadata::read::DEFAULT_WINDOW)?;
    m.add("default_num_threads", pool::default_threads())?;
    Ok(())
}
