//! Metadata: a JSON list or JSON Lines file followed through its structure
//! (`structure`), cut and parsed into columns (`read`), read while its images
//! are probed (`survey`), and the torchrun ranks' image ids and probe owners
//! (`owners`).

pub mod owners;
pub mod read;
pub mod structure;
pub mod survey;
