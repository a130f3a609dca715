//! Part files: the Parquet layout hpd-encode writes (`writer`, which owns the
//! schema), rewrites other files into (`rewrite`, `repack`'s side), reads
//! back a page at a time (`reader`) from a local file or an `s3://` object
//! (`store`), reads footers of (`footer`), the `.npy` bytes of each latent
//! (`npy`), and the checksums and digests that prove a file intact
//! (`digest`).
//!
//! (Named `parts`, not `parquet`, so that it never shadows the `parquet` crate.)

pub mod columns;
pub mod digest;
pub mod footer;
pub mod npy;
pub mod reader;
pub mod rewrite;
pub mod store;
pub mod writer;
