//! Recycled argument buffers: the encoded arguments of a large job are written into the buffer of
//! one that ended, instead of into new memory.
//!
//! A job's arguments are encoded when it is submitted, into a buffer the job owns until it ends
//! (in whichever driver thread that happens). For megabyte arguments a new buffer is a fresh
//! mapping or freshly grown heap, and every page of it faults on first touch: with glibc's
//! defaults, which hand freed megabytes back to the kernel, that is every job, and the faults
//! cost more than the copy. So a job whose buffer holds at least [`BULK_MIN`] bytes gives it
//! back here when it is dropped, and the next large encode takes it (the best fit that is large
//! enough), sized beforehand with [`ipc_shm::codec::encoded_len`].
//!
//! Since a job's large arguments are encoded into an area of their own once the process has
//! seen large arguments (`wire/shared_args.rs`), these buffers serve what still takes the
//! driver's copy: the first large job, and a large `apply` encoded on the caller's thread.
//!
//! Sizing costs a second serialisation pass (byte strings are counted, not copied), so it is
//! done only while kept_bufs are kept, that is, once this process has sent large arguments: a
//! program that never does pays nothing. At most [`MAX_BUFS`] buffers and [`MAX_KEPT`] bytes
//! are kept, process-wide; a buffer larger than [`BULK_MAX`] is never kept.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::wire::bulk::{BULK_MAX, BULK_MIN};

/// How many buffers are kept at most.
const MAX_BUFS: usize = 4;
/// How many bytes (of capacity) are kept at most.
const MAX_KEPT: usize = 64 << 20;

/// The kept buffers.
static KEPT_BUFS: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());
/// Whether `KEPT_BUFS` may hold a buffer (a hint read without the lock: a stale `false` costs a
/// new buffer, a stale `true` a sizing pass).
static ANY: AtomicBool = AtomicBool::new(false);

/// A buffer for an encoding of `len` bytes, if a recycled one is large enough.
fn take(len: usize) -> Option<Vec<u8>> {
    let mut kept_bufs = KEPT_BUFS.lock().unwrap_or_else(|p| p.into_inner());
    let best = kept_bufs
        .iter()
        .enumerate()
        .filter(|(_, b)| b.capacity() >= len)
        .min_by_key(|(_, b)| b.capacity())
        .map(|(i, _)| i)?;
    let buf = kept_bufs.swap_remove(best);
    ANY.store(!kept_bufs.is_empty(), Ordering::Relaxed);
    Some(buf)
}

/// An empty buffer to encode into: a recycled one with room for `value`'s encoding while kept_bufs
/// are kept, a new one otherwise.
#[inline]
pub(crate) fn buffer_for<T: serde::Serialize + ?Sized>(value: &T) -> Vec<u8> {
    if !ANY.load(Ordering::Relaxed) {
        return Vec::new();
    }
    take_for_slow(value)
}

#[cold]
fn take_for_slow<T: serde::Serialize + ?Sized>(value: &T) -> Vec<u8> {
    match ipc_shm::codec::encoded_len(value) {
        Ok(len) if len >= BULK_MIN => take(len).unwrap_or_else(|| Vec::with_capacity(len)),
        // Small (or unencodable: the encode that follows reports why).
        _ => Vec::new(),
    }
}

/// Keeps `buf` for a later large encode, if it is one worth keeping and there is room.
#[inline]
pub(crate) fn give(buf: Vec<u8>) {
    if (BULK_MIN..=BULK_MAX).contains(&buf.capacity()) {
        give_slow(buf);
    }
}

#[cold]
fn give_slow(mut buf: Vec<u8>) {
    let mut kept_bufs = KEPT_BUFS.lock().unwrap_or_else(|p| p.into_inner());
    let kept: usize = kept_bufs.iter().map(Vec::capacity).sum();
    if kept_bufs.len() < MAX_BUFS && kept + buf.capacity() <= MAX_KEPT {
        buf.clear();
        kept_bufs.push(buf);
        ANY.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_buffer_is_reused_and_a_small_one_is_not_kept() {
        // Other tests of this binary may use the kept_bufs too: only what this test gives and
        // takes is asserted.
        give(Vec::with_capacity(16));
        let big = vec![7u8; BULK_MIN * 2];
        let ptr = big.as_ptr();
        give(big);
        let value = vec![1u8; BULK_MIN];
        let buf = buffer_for(&value);
        assert!(buf.is_empty());
        // The best fit for BULK_MIN bytes and their length prefix is the buffer just given.
        assert_eq!((buf.as_ptr(), buf.capacity()), (ptr, BULK_MIN * 2));
        // A small value takes no kept buffer.
        assert_eq!(buffer_for(&7u64).capacity(), 0);
    }
}
