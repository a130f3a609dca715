//! Part files: the Parquet layout hpd-encode writes (`writer`, which owns the
//! schema), reads back a page at a time (`reader`) from a local file or an `s3://`
//! object (`store`), reads footers of
//! (`footer`), and the `.npy` bytes of each latent (`npy`).
//!
//! (Named `parts`, not `parquet`, so that it never shadows the `parquet` crate.)

pub mod columns;
pub mod footer;
pub mod npy;
pub mod reader;
pub mod store;
pub mod writer;
