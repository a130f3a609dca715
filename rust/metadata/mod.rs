//! Metadata: the record declared once (`record`), a JSON list or JSON Lines
//! file followed through its structure (`structure`), cut into entries and
//! judged into columns (`read`; `judge` decides, over `json` values shown by
//! `pyrepr`), read while its images are probed (`survey`), and the torchrun
//! ranks' image ids and probe owners (`owners`).

pub mod json;
pub mod judge;
pub mod owners;
pub mod pyrepr;
pub mod read;
pub mod record;
pub mod structure;
pub mod survey;
