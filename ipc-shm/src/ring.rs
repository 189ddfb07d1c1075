//! The one wrapping byte ring: copies into and out of `cap()` bytes (a power of two) addressed by
//! monotonic positions.
//!
//! [`ByteRing`] is the storage under the queue's ring of frames and the pipe's two stream rings.
//! The protocols that decide *which* bytes may be touched (commit words, locks, head and tail
//! counters) live in those crates; this module only copies, and does the part every ring used to
//! repeat: a position is a free-running counter (`u64`; a `u32` counter widens losslessly because
//! every capacity divides 2^32), reduced modulo the capacity *here*, and a copy that runs past the
//! end of the ring is split into two.
//!
//! Three backends implement it:
//!
//! | backend | bytes | for |
//! |---|---|---|
//! | [`ShmRing`] | a range of a [`Segment`]'s payload, checked once at construction | production: the queue (`ShmRing<&Segment>`) and the pipe (`ShmRing<Arc<Segment>>`) |
//! | [`HeapRing`] | a `Box<[UnsafeCell<u8>]>` | single-threaded tests, and conformance tests that run one test body on every backend |
//! | `LoomRing` (only under `--cfg loom`) | a `Box<[loom::cell::UnsafeCell<u8>]>` | loom models: loom reports every read and write of a byte that the protocol fails to order |
//!
//! # Bounds
//!
//! No reference (shared or `&mut`) to the ring's bytes is ever formed: another process may be
//! writing other bytes of the same area at the same time. Every copy goes through raw pointers
//! computed from a range checked against the backend's *own* capacity, so no value a peer writes
//! into shared memory (a corrupted head, tail or length) can make a copy leave the ring. Calls
//! that ask for the impossible are no-ops rather than panics:
//!
//! - [`write_at`](ByteRing::write_at), [`read_at`](ByteRing::read_at),
//!   [`append_at`](ByteRing::append_at): `off + len > cap()` copies nothing;
//! - [`write`](ByteRing::write), [`read`](ByteRing::read), [`append`](ByteRing::append): a length
//!   greater than `cap()` copies nothing (no ring protocol ever moves more than the whole ring at
//!   once; callers check lengths read from shared memory before they get here).
//!
//! A peer that breaks the protocol and writes bytes while we copy them can change the *values*
//! we copy, never the addresses; the framing (`ipc_shm::codec` when the `codec` feature is on)
//! rejects the garbage as data.
//!
//! This is one of the crate's `unsafe`-allowed modules because it must copy through raw pointers
//! into memory that other processes write.
#![allow(unsafe_code)]

use std::cell::UnsafeCell;
use std::ops::Deref;

use crate::error::RingError;
use crate::segment::Segment;

/// Byte storage of a ring of [`cap()`](ByteRing::cap) bytes, a power of two.
///
/// Implementors provide the three unwrapped primitives (`*_at`, offsets in `0..cap()`); the
/// wrapping operations on positions are provided and shared by every backend.
///
/// ```
/// use ipc_shm::{ByteRing, HeapRing};
///
/// let ring = HeapRing::new(8).unwrap();
/// ring.write(6, b"abcd"); // bytes 6, 7, then 0, 1
/// let mut out = [0u8; 4];
/// ring.read(6 + 8 * 1000, &mut out); // the same offsets, many laps later
/// assert_eq!(&out, b"abcd");
/// let mut v = b"<".to_vec();
/// ring.append(6, 4, &mut v);
/// assert_eq!(v, b"<abcd");
/// ```
pub trait ByteRing {
    /// The ring's size in bytes: a non-zero power of two.
    fn cap(&self) -> usize;

    /// Copies `src` to offsets `off..off + src.len()`; copies nothing if that range is not inside
    /// `0..cap()`.
    fn write_at(&self, off: usize, src: &[u8]);

    /// Fills `dst` from offsets `off..off + dst.len()`; leaves `dst` untouched if that range is
    /// not inside `0..cap()`.
    fn read_at(&self, off: usize, dst: &mut [u8]);

    /// Appends the bytes at offsets `off..off + n` to `out`; appends nothing if that range is not
    /// inside `0..cap()`.
    fn append_at(&self, off: usize, n: usize, out: &mut Vec<u8>);

    /// Copies `src` starting at position `pos` (taken modulo `cap()`), wrapping at the end.
    /// Copies nothing if `src` is longer than the ring.
    #[inline]
    fn write(&self, pos: u64, src: &[u8]) {
        if let Some((off, first)) = split(self.cap(), pos, src.len()) {
            let (a, b) = src.split_at(first);
            self.write_at(off, a);
            if !b.is_empty() {
                self.write_at(0, b);
            }
        }
    }

    /// Fills `dst` from position `pos` (taken modulo `cap()`), wrapping at the end. Leaves `dst`
    /// untouched if it is longer than the ring.
    #[inline]
    fn read(&self, pos: u64, dst: &mut [u8]) {
        if let Some((off, first)) = split(self.cap(), pos, dst.len()) {
            let (a, b) = dst.split_at_mut(first);
            self.read_at(off, a);
            if !b.is_empty() {
                self.read_at(0, b);
            }
        }
    }

    /// Appends `n` bytes from position `pos` (taken modulo `cap()`) to `out`, wrapping at the
    /// end. Appends nothing if `n` is larger than the ring.
    #[inline]
    fn append(&self, pos: u64, n: usize, out: &mut Vec<u8>) {
        if let Some((off, first)) = split(self.cap(), pos, n) {
            out.reserve(n);
            self.append_at(off, first, out);
            if first < n {
                self.append_at(0, n - first, out);
            }
        }
    }
}

impl<R: ByteRing + ?Sized> ByteRing for &R {
    #[inline]
    fn cap(&self) -> usize {
        (**self).cap()
    }
    #[inline]
    fn write_at(&self, off: usize, src: &[u8]) {
        (**self).write_at(off, src)
    }
    #[inline]
    fn read_at(&self, off: usize, dst: &mut [u8]) {
        (**self).read_at(off, dst)
    }
    #[inline]
    fn append_at(&self, off: usize, n: usize, out: &mut Vec<u8>) {
        (**self).append_at(off, n, out)
    }
}

/// The offset of `pos` in a ring of `cap` bytes and how many of `len` bytes fit before the end;
/// `None` if `len > cap` or `cap` is not a power of two (a broken implementor).
#[inline]
fn split(cap: usize, pos: u64, len: usize) -> Option<(usize, usize)> {
    if len > cap || !cap.is_power_of_two() {
        return None;
    }
    // `cap - 1` fits in a u64 (usize is at most 64 bits), and the result is below `cap`.
    let off = (pos & (cap as u64 - 1)) as usize;
    Some((off, len.min(cap - off)))
}

/// Whether `off..off + len` lies inside `0..cap`.
#[inline]
fn in_range(cap: usize, off: usize, len: usize) -> bool {
    off.checked_add(len).is_some_and(|end| end <= cap)
}

/// Checks a ring's geometry: `cap` a non-zero power of two and `offset..offset + cap` inside a
/// payload of `payload` bytes.
fn check_geometry(offset: usize, cap: usize, payload: usize) -> Result<(), RingError> {
    if !cap.is_power_of_two() {
        return Err(RingError::NotPowerOfTwo { cap });
    }
    if !in_range(payload, offset, cap) {
        return Err(RingError::OutOfBounds {
            offset,
            cap,
            payload,
        });
    }
    Ok(())
}

/// Copies `n` bytes from `src` to the end of `out`.
///
/// # Safety
///
/// `src` must be valid for reads of `n` bytes and must not point into `out`'s buffer.
#[inline]
unsafe fn append_raw(src: *const u8, n: usize, out: &mut Vec<u8>) {
    out.reserve(n);
    let spare = out.spare_capacity_mut();
    debug_assert!(spare.len() >= n);
    // SAFETY: `copy_nonoverlapping(src, dst, n)` requires (1) `src` valid for reads of `n` bytes:
    // the caller's contract; (2) `dst` valid for writes of `n` bytes: `spare` is the vector's
    // spare capacity, at least `n` bytes after the `reserve` above; (3) no overlap: the caller
    // promises `src` is not in `out`'s buffer; (4) alignment: `u8` needs none.
    unsafe { std::ptr::copy_nonoverlapping(src, spare.as_mut_ptr().cast::<u8>(), n) };
    let len = out.len() + n;
    // SAFETY: `set_len` requires (1) `len <= capacity`: `n` bytes were reserved past the old
    // length; (2) the elements `old_len..len` initialised: the copy above just wrote them.
    unsafe { out.set_len(len) };
}

/// A ring in a range of a [`Segment`]'s payload.
///
/// `S` is how the ring holds the segment: `&Segment` for a borrowed view (the queue's per-call
/// core), `Arc<Segment>` for an owned one (the pipe's ends), or anything else that derefs to a
/// `Segment`. The range is checked once, here; the segment's length never changes, so every
/// access after that only checks offsets against `cap`.
///
/// Which bytes a process may touch at a time is the business of the protocol above (module
/// docs); a protocol violation, even by another thread of this process, yields wrong byte values
/// but never an access outside the ring.
///
/// ```
/// use std::sync::Arc;
/// use ipc_shm::{ByteRing, RingError, SegmentBuilder, ShmRing};
///
/// let seg = Arc::new(SegmentBuilder::new(4096).create()?);
/// let ring = ShmRing::new(seg.clone(), 1024, 1024)?;
/// ring.write(u64::MAX - 1, b"wrap"); // offsets 1022, 1023, 0, 1
/// let mut out = [0u8; 4];
/// ring.read(u64::MAX - 1, &mut out);
/// assert_eq!(&out, b"wrap");
/// assert!(matches!(ShmRing::new(&*seg, 4000, 256), Err(RingError::OutOfBounds { .. })));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy)]
pub struct ShmRing<S> {
    segment: S,
    offset: usize,
    cap: usize,
}

impl<S: Deref<Target = Segment>> ShmRing<S> {
    /// The `cap` bytes at `offset` in `segment`'s payload.
    ///
    /// Fails with [`RingError::NotPowerOfTwo`] unless `cap` is a non-zero power of two, and with
    /// [`RingError::OutOfBounds`] unless `offset..offset + cap` lies inside the payload.
    pub fn new(segment: S, offset: usize, cap: usize) -> Result<Self, RingError> {
        check_geometry(offset, cap, segment.len())?;
        Ok(ShmRing {
            segment,
            offset,
            cap,
        })
    }

    /// The segment the ring lives in.
    pub fn segment(&self) -> &Segment {
        &self.segment
    }

    /// The ring's offset in the segment's payload.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// A raw pointer to ring offset `off`, for a copy of `len` bytes; `None` unless
    /// `off..off + len` is inside the ring.
    #[inline]
    fn ptr(&self, off: usize, len: usize) -> Option<*mut u8> {
        if !in_range(self.cap, off, len) {
            return None;
        }
        // SAFETY: `pointer::add(count)` requires the result to stay inside the same allocation
        // and the byte offset to fit in an `isize`. `offset + cap <= segment.len()` was checked
        // in `new` and the segment's length never changes; `off + len <= cap` was just checked,
        // so `offset + off <= offset + cap` is inside (or one past the end of) the mapped payload,
        // which is at most `isize::MAX` bytes (a mapping cannot be larger). `self.segment` keeps
        // the mapping alive while `self` exists.
        Some(unsafe { self.segment.as_ptr().add(self.offset + off) })
    }
}

impl<S: Deref<Target = Segment>> ByteRing for ShmRing<S> {
    #[inline]
    fn cap(&self) -> usize {
        self.cap
    }

    #[inline]
    fn write_at(&self, off: usize, src: &[u8]) {
        let Some(dst) = self.ptr(off, src.len()) else {
            return;
        };
        // SAFETY: `copy_nonoverlapping(src, dst, n)` requires (1) `src` valid for reads of `n`
        // bytes: it is a live slice of that length; (2) `dst` valid for writes of `n` bytes:
        // `ptr` checked `off + n <= cap`, so the range is inside the read-write shared mapping
        // kept alive by `self.segment`, and no reference to those bytes exists in this process
        // (this module never forms one); (3) no overlap: `src` is a Rust slice, which cannot
        // point at ring bytes (nothing hands out references to them), so it is elsewhere;
        // (4) alignment: `u8` needs none. Another process writing the same bytes can only change
        // their values (module docs).
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len()) }
    }

    #[inline]
    fn read_at(&self, off: usize, dst: &mut [u8]) {
        let Some(src) = self.ptr(off, dst.len()) else {
            return;
        };
        // SAFETY: (1) `src` valid for reads of `n` bytes: `ptr` checked the range is inside the
        // mapping kept alive by `self.segment`, and every byte value is a valid `u8`; (2) `dst`
        // valid for writes: it is the caller's exclusive slice of length `n`; (3) no overlap: an
        // exclusive Rust slice cannot alias ring bytes, which are never referenced; (4) `u8`
        // needs no alignment.
        unsafe { std::ptr::copy_nonoverlapping(src.cast_const(), dst.as_mut_ptr(), dst.len()) }
    }

    #[inline]
    fn append_at(&self, off: usize, n: usize, out: &mut Vec<u8>) {
        let Some(src) = self.ptr(off, n) else {
            return;
        };
        // SAFETY: `append_raw` requires (1) `src` valid for reads of `n` bytes: `ptr` checked the
        // range is inside the mapping kept alive by `self.segment`; (2) `src` not inside `out`'s
        // buffer: a `Vec`'s heap buffer is never inside a shared mapping.
        unsafe { append_raw(src.cast_const(), n, out) }
    }
}

/// A ring on the heap, for tests and for conformance tests that run one body on every backend.
///
/// It is `Send` but not `Sync`: its bytes are plain memory, so two threads copying the same
/// bytes would be a data race. Model cross-thread protocols with the loom backend (`LoomRing`
/// under `--cfg loom`) or put the ring in a [`Segment`] ([`ShmRing`]).
///
/// ```
/// use ipc_shm::{ByteRing, HeapRing, RingError};
///
/// let ring = HeapRing::new(16)?;
/// ring.write(14, &[1, 2, 3, 4]);
/// let mut out = [0u8; 4];
/// ring.read(14, &mut out);
/// assert_eq!(out, [1, 2, 3, 4]);
/// assert_eq!(HeapRing::new(12).unwrap_err(), RingError::NotPowerOfTwo { cap: 12 });
/// # Ok::<(), RingError>(())
/// ```
#[derive(Debug)]
pub struct HeapRing {
    bytes: Box<[UnsafeCell<u8>]>,
}

impl HeapRing {
    /// A zero-filled ring of `cap` bytes; fails with [`RingError::NotPowerOfTwo`] unless `cap` is
    /// a non-zero power of two.
    pub fn new(cap: usize) -> Result<Self, RingError> {
        check_geometry(0, cap, cap)?;
        Ok(HeapRing {
            bytes: (0..cap).map(|_| UnsafeCell::new(0)).collect(),
        })
    }

    /// A raw pointer to offset `off`, for a copy of `len` bytes; `None` unless the range is inside
    /// the ring.
    #[inline]
    fn ptr(&self, off: usize, len: usize) -> Option<*mut u8> {
        if !in_range(self.bytes.len(), off, len) {
            return None;
        }
        // `UnsafeCell<u8>` is `repr(transparent)` over `u8`, so the slice is `cap` contiguous
        // bytes; `raw_get` keeps the write permission that `UnsafeCell` grants through `&self`,
        // and the pointer derived from the slice's start covers the whole slice; `off <= cap`
        // was just checked, so the (safe, wrapping) offset stays inside or one past the end.
        let base = UnsafeCell::raw_get(self.bytes.as_ptr());
        Some(base.wrapping_add(off))
    }
}

impl ByteRing for HeapRing {
    #[inline]
    fn cap(&self) -> usize {
        self.bytes.len()
    }

    #[inline]
    fn write_at(&self, off: usize, src: &[u8]) {
        let Some(dst) = self.ptr(off, src.len()) else {
            return;
        };
        // SAFETY: (1) `src` valid for reads: a live slice; (2) `dst` valid for writes of
        // `src.len()` bytes: `ptr` checked the range is inside the boxed cells, which `&self`
        // keeps alive, and writing through `UnsafeCell` is allowed behind `&self`; no other access
        // can be concurrent because `HeapRing` is not `Sync`, and no reference to the bytes is ever
        // handed out; (3) no overlap: `src` cannot point at the cells, which are never referenced;
        // (4) `u8` needs no alignment.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len()) }
    }

    #[inline]
    fn read_at(&self, off: usize, dst: &mut [u8]) {
        let Some(src) = self.ptr(off, dst.len()) else {
            return;
        };
        // SAFETY: (1) `src` valid for reads of `dst.len()` initialised bytes: inside the cells
        // (checked by `ptr`), all initialised at construction; (2) `dst` is the caller's exclusive
        // slice; (3) it cannot alias the never-referenced cells; (4) `u8` needs no alignment.
        unsafe { std::ptr::copy_nonoverlapping(src.cast_const(), dst.as_mut_ptr(), dst.len()) }
    }

    #[inline]
    fn append_at(&self, off: usize, n: usize, out: &mut Vec<u8>) {
        let Some(src) = self.ptr(off, n) else {
            return;
        };
        // SAFETY: `append_raw` requires (1) `src` valid for reads of `n` bytes: inside the cells,
        // checked by `ptr`; (2) not inside `out`'s buffer: the cells are this ring's own box.
        unsafe { append_raw(src.cast_const(), n, out) }
    }
}

#[cfg(loom)]
pub use self::model::LoomRing;

#[cfg(loom)]
mod model {
    use super::{ByteRing, RingError, check_geometry, in_range};

    /// A heap ring whose bytes are loom cells: loom reports every read and write of a byte that
    /// is not ordered by the protocol under test. Only under `--cfg loom`.
    #[derive(Debug)]
    pub struct LoomRing {
        bytes: Box<[loom::cell::UnsafeCell<u8>]>,
    }

    impl LoomRing {
        /// A zero-filled ring of `cap` bytes; fails unless `cap` is a non-zero power of two.
        pub fn new(cap: usize) -> Result<Self, RingError> {
            check_geometry(0, cap, cap)?;
            Ok(LoomRing {
                bytes: (0..cap).map(|_| loom::cell::UnsafeCell::new(0)).collect(),
            })
        }

        fn cells(&self, off: usize, len: usize) -> Option<&[loom::cell::UnsafeCell<u8>]> {
            in_range(self.bytes.len(), off, len).then(|| &self.bytes[off..off + len])
        }
    }

    impl ByteRing for LoomRing {
        fn cap(&self) -> usize {
            self.bytes.len()
        }

        fn write_at(&self, off: usize, src: &[u8]) {
            for (cell, b) in self.cells(off, src.len()).into_iter().flatten().zip(src) {
                // SAFETY: writing through the cell's pointer requires that no other access to
                // this byte is concurrent; that is exactly what loom checks on `with_mut`, and it
                // fails the model otherwise. The pointer is valid: it comes from a live cell.
                cell.with_mut(|p| unsafe { *p = *b });
            }
        }

        fn read_at(&self, off: usize, dst: &mut [u8]) {
            for (cell, b) in self.cells(off, dst.len()).into_iter().flatten().zip(dst) {
                // SAFETY: reading requires that no write to this byte is concurrent; loom checks
                // it on `with`. The pointer comes from a live, initialised cell.
                *b = cell.with(|p| unsafe { *p });
            }
        }

        fn append_at(&self, off: usize, n: usize, out: &mut Vec<u8>) {
            if in_range(self.bytes.len(), off, n) {
                let start = out.len();
                out.resize(start + n, 0);
                self.read_at(off, &mut out[start..]);
            }
        }
    }
}

/// The one conformance body of the ring backends (shared with `tests/ring.rs`), run here on the
/// loom backend.
#[cfg(all(test, loom))]
#[path = "../tests/support/ring_conformance.rs"]
mod conformance;

/// Loom models: bytes handed from one thread to another through the loom ring, ordered only by
/// an atomic handshake, as the queue and the pipe do (`RUSTFLAGS="--cfg loom" cargo test -p
/// ipc-shm --lib --release`).
#[cfg(all(test, loom))]
mod loom_tests {
    use loom::sync::Arc;
    use loom::sync::atomic::{AtomicU64, Ordering};

    use super::conformance;
    use super::{ByteRing, LoomRing};

    /// The conformance body the heap and shm backends pass (`tests/ring.rs`), on the loom ring.
    #[test]
    fn loom_ring_conforms() {
        loom::model(|| conformance::conformance(&LoomRing::new(conformance::CAP).unwrap()));
    }

    /// A producer writes `msg` at position `start` (wrapping in a ring of 8) and publishes the
    /// new tail with `publish`; the consumer waits for the tail with `observe` and reads.
    fn hand_over(start: u64, msg: &'static [u8], publish: Ordering, observe: Ordering) {
        loom::model(move || {
            let ring = Arc::new(LoomRing::new(8).unwrap());
            let tail = Arc::new(AtomicU64::new(start));
            let producer = {
                let (ring, tail) = (ring.clone(), tail.clone());
                loom::thread::spawn(move || {
                    ring.write(start, msg);
                    tail.store(start + msg.len() as u64, publish);
                })
            };
            let end = start + msg.len() as u64;
            while tail.load(observe) != end {
                loom::thread::yield_now();
            }
            let mut out = vec![0u8; msg.len()];
            ring.read(start, &mut out);
            assert_eq!(out, msg);
            let mut v = Vec::new();
            ring.append(start, msg.len(), &mut v);
            assert_eq!(v, msg);
            producer.join().unwrap();
        });
    }

    #[test]
    fn release_acquire_hands_bytes_over() {
        hand_over(0, b"abc", Ordering::Release, Ordering::Acquire);
    }

    #[test]
    fn wrapping_copy_hands_bytes_over() {
        hand_over(6, b"wxyz", Ordering::Release, Ordering::Acquire);
    }

    /// The queue's and pipe's property: a producer writes free bytes while a consumer reads
    /// committed ones, with no lock between them; loom checks each byte, so disjoint ranges may be
    /// copied concurrently and only the hand-over of each range needs ordering.
    #[test]
    fn disjoint_ranges_copy_concurrently() {
        loom::model(|| {
            let ring = Arc::new(LoomRing::new(8).unwrap());
            let tail = Arc::new(AtomicU64::new(6));
            let producer = {
                let (ring, tail) = (ring.clone(), tail.clone());
                loom::thread::spawn(move || {
                    ring.write(6, b"abc"); // offsets 6, 7, 0
                    tail.store(9, Ordering::Release);
                    ring.write(9, b"de"); // offsets 1, 2: while the consumer reads 6, 7, 0
                    tail.store(11, Ordering::Release);
                })
            };
            while tail.load(Ordering::Acquire) < 9 {
                loom::thread::yield_now();
            }
            let mut first = [0u8; 3];
            ring.read(6, &mut first);
            assert_eq!(&first, b"abc");
            while tail.load(Ordering::Acquire) < 11 {
                loom::thread::yield_now();
            }
            let mut v = Vec::new();
            ring.append(9, 2, &mut v);
            assert_eq!(v, b"de");
            producer.join().unwrap();
        });
    }

    /// The loom backend is what makes these models worth running: without the release/acquire
    /// pair the reader's byte accesses race with the writer's, and loom says so.
    #[test]
    #[should_panic(expected = "Causality violation")]
    fn relaxed_handshake_is_reported() {
        hand_over(6, b"wxyz", Ordering::Relaxed, Ordering::Relaxed);
    }
}
