//! The PyO3 bindings (the `python` feature): each file converts arguments,
//! releases the GIL around the call into the pure layer, and converts back.
//! No rules live here.

pub mod buckets;
pub mod errors;
pub mod images;
pub mod index;
pub mod metadata;
pub mod reader;
pub mod store;
pub mod writer;
