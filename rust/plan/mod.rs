//! Planning: bucket and pair rules (`buckets`) and the integer kernels of the
//! split and the index (`groups`: components, LPT over ranks, job numbers,
//! per-group ranks).

pub mod buckets;
pub mod groups;
