//! Batch buffers kept for reuse after NumPy lets go of them.
//!
//! A bucket's batch is tens to hundreds of MB. Memory of that size comes
//! from `mmap` (glibc's threshold tops out at 32 MB) and goes back to the
//! kernel when the array dies, so a loop calling `load_batch` got brand-new
//! pages every time and paid for the kernel zeroing them, about as much as
//! the work of writing the batch (a whole-bucket float batch ran at ~1.8x
//! the reference per core instead of ~3x). The Python wrapper therefore
//! gives a dead batch's buffer back to a [`Pool`], and the next batch that
//! fits in it reuses it: memory that is already mapped and that the loader
//! overwrites element by element.
//!
//! A batch may get a larger buffer than it needs (up to [`MAX_WASTE`] times):
//! it is the buffer's first `n * item` elements, and the rest stays unused
//! (and whole, for the next batch). A pool keeps at most [`KEEP_BUFFERS`]
//! buffers and [`KEEP_BYTES`] bytes, the largest first;
//! `free_batch_buffers()` empties it.

use std::mem::size_of_val;
use std::sync::{Mutex, TryLockError};

/// Free buffers kept per element type: a loop with a prefetch queue hands
/// back one batch while the next is being filled.
pub const KEEP_BUFFERS: usize = 2;
/// Bytes kept per element type.
pub const KEEP_BYTES: usize = 1 << 30;
/// A batch takes a kept buffer at most this many times its size: a small
/// array kept alive (a cache of batches, say) must not pin a huge buffer.
pub const MAX_WASTE: usize = 4;

/// Free buffers of one element type, all of whose elements are initialised.
pub struct Pool<T> {
    free: Mutex<Vec<Vec<T>>>,
}

impl<T: Copy> Pool<T> {
    pub const fn new() -> Self {
        Self { free: Mutex::new(Vec::new()) }
    }

    /// The list, unless another thread holds it right now: then the caller
    /// does without the pool (allocates, or frees its buffer) rather than
    /// wait. That also keeps a forked child from blocking forever on a lock
    /// held, at the fork, by a thread of the parent that the child lacks.
    fn lock(&self) -> Option<std::sync::MutexGuard<'_, Vec<Vec<T>>>> {
        match self.free.try_lock() {
            Ok(guard) => Some(guard),
            // A panic while holding the lock leaves only a list of buffers behind: still usable.
            Err(TryLockError::Poisoned(e)) => Some(e.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    /// The smallest kept buffer of `len` to `MAX_WASTE * len` elements,
    /// whole (its old contents: the caller overwrites the first `len` and
    /// leaves the rest), or `None` when none fits.
    pub fn take(&self, len: usize) -> Option<Vec<T>> {
        if len == 0 {
            return None;
        }
        let fits = |v: &Vec<T>| v.len() >= len && v.len() / MAX_WASTE <= len;
        let mut free = self.lock()?;
        let best = free.iter().enumerate().filter(|(_, v)| fits(v)).min_by_key(|(_, v)| v.len())?.0;
        Some(free.swap_remove(best))
    }

    /// Keep `buf` for a later [`take`](Self::take). Over the limits the
    /// smallest kept buffers go first: the larger ones serve more batches.
    pub fn give(&self, buf: Vec<T>) {
        if buf.is_empty() || size_of_val(buf.as_slice()) > KEEP_BYTES {
            return;
        }
        let Some(mut free) = self.lock() else { return };
        free.push(buf);
        while free.len() > KEEP_BUFFERS || free.iter().map(|v| size_of_val(v.as_slice())).sum::<usize>() > KEEP_BYTES {
            let smallest = free.iter().enumerate().min_by_key(|(_, v)| v.len()).map(|(i, _)| i).expect("not empty");
            free.swap_remove(smallest);
        }
    }

    /// Drop every kept buffer; the bytes released.
    pub fn clear(&self) -> usize {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        let n = free.iter().map(|v| size_of_val(v.as_slice())).sum();
        free.clear();
        n
    }
}

impl<T: Copy> Default for Pool<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// Kept uint8 batches.
pub static U8_BATCHES: Pool<u8> = Pool::new();
/// Kept float32 batches.
pub static F32_BATCHES: Pool<f32> = Pool::new();

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_returned_buffer_is_reused_whole() {
        let pool = Pool::<u8>::new();
        assert!(pool.take(100).is_none(), "nothing kept yet");
        let buf = vec![7u8; 100];
        let ptr = buf.as_ptr();
        pool.give(buf);
        assert!(pool.take(101).is_none(), "too small");
        assert!(pool.take(24).is_none(), "more than MAX_WASTE times the request");
        let again = pool.take(80).expect("80 fits in 100");
        assert_eq!((again.len(), again.as_ptr()), (100, ptr), "the same allocation, whole");
        assert!(again.iter().all(|&v| v == 7), "old contents, initialised");
        assert!(pool.take(80).is_none(), "taken out of the pool");
    }

    #[test]
    fn the_best_fit_is_taken_and_the_smallest_evicted() {
        assert_eq!(KEEP_BUFFERS, 2);
        let pool = Pool::<u8>::new();
        pool.give(vec![1u8; 300]);
        pool.give(vec![2u8; 150]);
        pool.give(vec![3u8; 200]); // over the count: the smallest (150) goes
        assert_eq!(pool.take(140).map(|v| v[0]), Some(3), "smallest that fits");
        assert_eq!(pool.take(140).map(|v| v[0]), Some(1));
        assert!(pool.take(1).is_none());
    }

    #[test]
    fn a_busy_pool_is_skipped_not_waited_for() {
        let pool = Pool::<u8>::new();
        pool.give(vec![1u8; 10]);
        let held = pool.free.lock().unwrap();
        assert!(pool.take(5).is_none(), "held elsewhere: allocate instead");
        pool.give(vec![2u8; 10]); // dropped, not waited on
        drop(held);
        assert_eq!(pool.take(5).map(|v| v[0]), Some(1));
        assert!(pool.take(5).is_none());
    }

    #[test]
    fn clear_reports_the_bytes_released() {
        let pool = Pool::<f32>::new();
        pool.give(vec![0.0; 10]);
        pool.give(Vec::new()); // nothing to keep
        assert_eq!(pool.clear(), 40);
        assert_eq!(pool.clear(), 0);
    }
}
