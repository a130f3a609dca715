//! Images: opening files beneath the data root (`safe_open`), probing and
//! decoding them (`decode`), resizing (`resize`), and loading whole batches on
//! the shared pool (`load`) into buffers that are reused (`recycle`).

pub mod decode;
pub mod load;
pub mod recycle;
pub mod resize;
pub mod safe_open;
