//! Copying bytes into and out of a ring's data area: the [`Bytes`] trait, its shared-memory
//! backend [`Slots`] and, under loom, a heap backend `ModelBytes` whose bytes loom watches.
//! (The workspace's shared byte ring in `ipc-shm` is meant to replace this module.)
//!
//! This is the only module of the crate that touches shared bytes through raw pointers. A
//! [`Slots`] is the data area of one ring: `cap` bytes (a power of two) at `offset` in the
//! payload of a [`Segment`], checked to lie inside the mapping when it is built. Positions are
//! the monotonic `u64` byte counters of the ring protocol; [`Slots::copy_in`] and
//! [`Slots::copy_out`] reduce them modulo `cap` *here*, split a copy that wraps around the end
//! into two, and never form a reference (shared or `&mut`) to the shared bytes: another process
//! writes other parts of the same area at the same time.
//!
//! The ring protocol (see `ring.rs`) guarantees that the region a producer writes is one the
//! consumer does not read until it is published, and vice versa. A buggy or hostile peer can
//! break that and scribble over bytes we are copying: we then copy garbage, which the framing
//! and decoding layers reject as data. It can never make us copy outside the area, because the
//! bounds here depend only on `cap` and the caller's slice, both local.
#![allow(unsafe_code)]

#[cfg(not(loom))]
use std::sync::Arc;

#[cfg(not(loom))]
use ipc_shm::{Segment, ShmSafe};

#[cfg(not(loom))]
use crate::ring::{Control, RingCtl};

/// The data area of one ring: `cap()` bytes (a power of two) addressed by monotonic positions,
/// reduced modulo `cap()` by the implementation.
pub(crate) trait Bytes {
    /// The capacity in bytes.
    fn cap(&self) -> usize;
    /// Copies `src` (at most `cap()` bytes) in at position `pos`, wrapping.
    fn copy_in(&self, pos: u64, src: &[u8]);
    /// Fills `dst` (at most `cap()` bytes) from position `pos`, wrapping.
    fn copy_out(&self, pos: u64, dst: &mut [u8]);
}

#[cfg(not(loom))]
// SAFETY: (1) `#[repr(C, align(128))]`; (2) only integers and atomics, no pointers; (3) every
// field is an integer atomic or a byte array, valid for any bit pattern including zero; (4)
// every field another process may change after publication is an atomic (the padding is never
// read); (5) no `Drop`.
unsafe impl ShmSafe for RingCtl {}
#[cfg(not(loom))]
// SAFETY: as for `RingCtl`: (1) repr(C); (2) no pointers; (3) integer atomics, a `RingCtl`
// array and padding, valid for any bits; (4) mutation only through atomics; (5) no Drop.
unsafe impl ShmSafe for Control {}

/// The data area of one ring in a shared segment.
#[cfg(not(loom))]
#[derive(Debug, Clone)]
pub(crate) struct Slots {
    segment: Arc<Segment>,
    offset: usize,
    cap: usize,
}

#[cfg(not(loom))]
impl Slots {
    /// The `cap` bytes at `offset` of `segment`'s payload; `None` unless they lie inside it and
    /// `cap` is a non-zero power of two.
    pub(crate) fn new(segment: Arc<Segment>, offset: usize, cap: usize) -> Option<Slots> {
        let end = offset.checked_add(cap)?;
        if !cap.is_power_of_two() || end > segment.len() {
            return None;
        }
        Some(Slots {
            segment,
            offset,
            cap,
        })
    }

    #[inline]
    fn split(&self, pos: u64, len: usize) -> (usize, usize) {
        debug_assert!(len <= self.cap);
        let start = (pos as usize) & (self.cap - 1);
        let first = len.min(self.cap - start);
        (start, first)
    }
}

#[cfg(not(loom))]
impl Bytes for Slots {
    #[inline]
    fn cap(&self) -> usize {
        self.cap
    }

    /// Copies `src` into the ring at position `pos` (wrapping). `src.len()` must not exceed the
    /// capacity (checked; longer slices are cut, which callers never ask for).
    #[inline]
    fn copy_in(&self, pos: u64, src: &[u8]) {
        let src = &src[..src.len().min(self.cap)];
        let (start, first) = self.split(pos, src.len());
        let base = self.segment.as_ptr();
        // SAFETY: `copy_nonoverlapping(src, dst, n)` requires (1) `src` valid for reads of `n`
        // bytes, (2) `dst` valid for writes of `n` bytes, (3) no overlap. (1): both source ranges
        // are sub-slices of `src` (`first <= src.len()`). (2): `offset + cap <= segment.len()`
        // was checked in `new`, `start < cap` and `first <= cap - start`, so
        // `offset + start + first <= offset + cap` lies in the mapping, which `self.segment`
        // keeps alive; likewise the wrapped part `[offset, offset + src.len() - first)` since
        // `src.len() <= cap`. The bytes are plain `u8` reached only through raw pointers (no
        // reference to them exists in this process). (3): `src` is process-private memory and
        // the destination is in the shared mapping, so they cannot overlap.
        unsafe {
            let dst = base.add(self.offset);
            std::ptr::copy_nonoverlapping(src.as_ptr(), dst.add(start), first);
            std::ptr::copy_nonoverlapping(src.as_ptr().add(first), dst, src.len() - first);
        }
    }

    /// Copies `dst.len()` bytes out of the ring from position `pos` (wrapping). `dst.len()` must
    /// not exceed the capacity (checked; longer slices are only partly filled, which callers
    /// never ask for).
    #[inline]
    fn copy_out(&self, pos: u64, dst: &mut [u8]) {
        let n = dst.len().min(self.cap);
        let dst = &mut dst[..n];
        let (start, first) = self.split(pos, n);
        let base = self.segment.as_ptr();
        // SAFETY: as in `copy_in`, with the roles swapped: (1) the shared source ranges
        // `[offset + start, offset + start + first)` and `[offset, offset + n - first)` lie inside
        // the mapping kept alive by `self.segment` (checked in `new`, `start < cap`,
        // `n <= cap`); (2) both destination ranges are inside `dst`, an exclusive private slice;
        // (3) private and shared memory never overlap. A peer writing the source bytes
        // concurrently can change the values copied, never the addresses.
        unsafe {
            let src = base.add(self.offset);
            std::ptr::copy_nonoverlapping(src.add(start), dst.as_mut_ptr(), first);
            std::ptr::copy_nonoverlapping(src, dst.as_mut_ptr().add(first), n - first);
        }
    }
}

/// A ring's data area on the heap, for the loom models: loom reports any access to a byte that
/// the ring protocol fails to order against a write of it.
#[cfg(loom)]
#[derive(Debug, Clone)]
pub(crate) struct ModelBytes(loom::sync::Arc<Vec<loom::cell::UnsafeCell<u8>>>);

#[cfg(loom)]
impl ModelBytes {
    /// A zeroed area of `cap` bytes (a power of two).
    pub(crate) fn new(cap: usize) -> ModelBytes {
        assert!(cap.is_power_of_two());
        ModelBytes(loom::sync::Arc::new(
            (0..cap).map(|_| loom::cell::UnsafeCell::new(0)).collect(),
        ))
    }
}

#[cfg(loom)]
impl Bytes for ModelBytes {
    fn cap(&self) -> usize {
        self.0.len()
    }

    fn copy_in(&self, pos: u64, src: &[u8]) {
        let mask = self.0.len() - 1;
        for (i, b) in src.iter().take(self.0.len()).enumerate() {
            let cell = &self.0[(pos as usize).wrapping_add(i) & mask];
            // SAFETY: `with_mut` hands out a pointer to the cell's value, valid for writes for
            // the closure's duration; loom itself checks that no other access to the cell is
            // concurrent (and fails the model if one is).
            cell.with_mut(|p| unsafe { *p = *b });
        }
    }

    fn copy_out(&self, pos: u64, dst: &mut [u8]) {
        let mask = self.0.len() - 1;
        for (i, b) in dst.iter_mut().take(self.0.len()).enumerate() {
            let cell = &self.0[(pos as usize).wrapping_add(i) & mask];
            // SAFETY: `with` hands out a pointer to the cell's value, valid for reads for the
            // closure's duration; loom checks that no write to the cell is concurrent.
            *b = cell.with(|p| unsafe { *p });
        }
    }
}

/// One conformance body for every [`Bytes`] backend of 64 bytes: copies that wrap, that fill
/// the whole area, and that start at huge positions land where the ring protocol expects.
#[cfg(test)]
fn conformance(bytes: &impl Bytes) {
    assert_eq!(bytes.cap(), 64);
    let data: Vec<u8> = (0..40).collect();
    bytes.copy_in(1_000_000_030, &data); // starts at 30 % 64 ... wraps at 64
    let mut out = vec![0u8; 40];
    bytes.copy_out(1_000_000_030, &mut out);
    assert_eq!(out, data);
    // The wrapped part is at the start of the area.
    let mut start = [0u8; 6];
    bytes.copy_out(64, &mut start);
    assert_eq!(start, [34, 35, 36, 37, 38, 39]);
    // A whole-area copy at an unaligned position.
    let full: Vec<u8> = (100..164).collect();
    bytes.copy_in(u64::MAX - 9, &full);
    let mut back = vec![0u8; 64];
    bytes.copy_out(u64::MAX - 9, &mut back);
    assert_eq!(back, full);
}

#[cfg(all(test, loom))]
mod loom_conformance {
    #[test]
    fn model_bytes_conform() {
        loom::model(|| super::conformance(&super::ModelBytes::new(64)));
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use ipc_shm::SegmentBuilder;

    #[test]
    fn wraps_and_stays_in_bounds() {
        let seg = Arc::new(SegmentBuilder::new(256).create().unwrap());
        assert!(Slots::new(seg.clone(), 200, 64).is_none(), "past the end");
        assert!(
            Slots::new(seg.clone(), 0, 48).is_none(),
            "not a power of two"
        );
        let slots = Slots::new(seg, 64, 64).unwrap();
        let data: Vec<u8> = (0..40).collect();
        slots.copy_in(1_000_000_030, &data); // starts at 30 % 64 ... wraps at 64
        let mut out = vec![0u8; 40];
        slots.copy_out(1_000_000_030, &mut out);
        assert_eq!(out, data);
    }

    #[test]
    fn shared_memory_slots_conform() {
        let seg = Arc::new(SegmentBuilder::new(256).create().unwrap());
        conformance(&Slots::new(seg, 128, 64).unwrap());
    }
}
