//! The ring's bytes: copying into and out of shared memory.
//!
//! This is the only module of the crate with `unsafe` code: raw copies between the caller's
//! buffers and the ring, which lives in a mapping that other processes write. The queue's
//! protocol (see [`crate::core`]) gives each byte range one writer at a time: a producer writes
//! only bytes between the tail and the head plus the capacity while it holds the put lock, and a
//! consumer reads only bytes between the head and the tail while it holds the get lock. Offsets
//! and lengths are checked here again, so even a protocol violation by a corrupted peer cannot
//! make a copy leave the ring.
//!
//! Under `--cfg loom` the ring is a vector of loom `UnsafeCell`s, so loom reports any read and
//! write of the same byte that the protocol fails to order.
#![allow(unsafe_code)]

/// Byte storage of a ring of `cap()` bytes (a power of two).
pub(crate) trait RingMem {
    /// The ring's size in bytes.
    fn cap(&self) -> usize;
    /// Copies `src` to `off..off + src.len()`; does nothing if that range leaves the ring.
    fn write_at(&self, off: usize, src: &[u8]);
    /// Copies `off..off + dst.len()` into `dst`; does nothing if that range leaves the ring.
    fn read_at(&self, off: usize, dst: &mut [u8]);
    /// Appends `off..off + n` to `out`; does nothing if that range leaves the ring.
    fn append_at(&self, off: usize, n: usize, out: &mut Vec<u8>);

    /// Copies `src` starting at ring position `pos`, wrapping at the end.
    #[inline]
    fn write(&self, pos: u32, src: &[u8]) {
        let off = pos as usize & (self.cap() - 1);
        let first = src.len().min(self.cap() - off);
        self.write_at(off, &src[..first]);
        if first < src.len() {
            self.write_at(0, &src[first..]);
        }
    }

    /// Fills `dst` from ring position `pos`, wrapping at the end.
    #[inline]
    fn read(&self, pos: u32, dst: &mut [u8]) {
        let off = pos as usize & (self.cap() - 1);
        let first = dst.len().min(self.cap() - off);
        let (a, b) = dst.split_at_mut(first);
        self.read_at(off, a);
        if !b.is_empty() {
            self.read_at(0, b);
        }
    }

    /// Appends `n` bytes from ring position `pos` to `out`, wrapping at the end.
    #[inline]
    fn append(&self, pos: u32, n: usize, out: &mut Vec<u8>) {
        let off = pos as usize & (self.cap() - 1);
        let first = n.min(self.cap() - off);
        self.append_at(off, first, out);
        if first < n {
            self.append_at(0, n - first, out);
        }
    }
}

/// The ring inside a mapped segment.
#[cfg(not(loom))]
#[derive(Debug, Clone, Copy)]
pub(crate) struct ShmRing<'a> {
    bytes: &'a [std::cell::UnsafeCell<u8>],
}

#[cfg(not(loom))]
impl<'a> ShmRing<'a> {
    /// The `cap` bytes at `off` in `segment`'s payload, or `None` if they do not fit or `cap` is
    /// not a power of two.
    pub(crate) fn new(segment: &'a ipc_shm::Segment, off: usize, cap: usize) -> Option<Self> {
        if !cap.is_power_of_two() || off.checked_add(cap)? > segment.len() {
            return None;
        }
        // SAFETY: `off + cap <= segment.len()` was checked, so the range lies inside the mapped
        // payload, which stays mapped for `'a` (the segment is borrowed). `UnsafeCell<u8>` has
        // the layout of `u8`, every bit pattern is valid, and the cells are only accessed through
        // raw pointers below, so no `&mut` is ever formed to memory another process may write.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                segment
                    .as_ptr()
                    .add(off)
                    .cast::<std::cell::UnsafeCell<u8>>(),
                cap,
            )
        };
        Some(ShmRing { bytes })
    }
}

#[cfg(not(loom))]
impl RingMem for ShmRing<'_> {
    #[inline]
    fn cap(&self) -> usize {
        self.bytes.len()
    }

    #[inline]
    fn write_at(&self, off: usize, src: &[u8]) {
        let Some(dst) = self.bytes.get(off..off.saturating_add(src.len())) else {
            return;
        };
        // SAFETY: `dst` is `src.len()` cells inside the ring (checked by `get`), valid for
        // writes through `UnsafeCell::get`; `src` is a distinct local buffer, so they do not
        // overlap. The queue's protocol gives this process the only access to these bytes while
        // it copies (module docs); a misbehaving peer can at worst make the bytes garbage, which
        // readers validate.
        unsafe {
            std::ptr::copy_nonoverlapping(
                src.as_ptr(),
                dst.as_ptr().cast_mut().cast::<u8>(),
                src.len(),
            )
        }
    }

    #[inline]
    fn read_at(&self, off: usize, dst: &mut [u8]) {
        let Some(src) = self.bytes.get(off..off.saturating_add(dst.len())) else {
            return;
        };
        // SAFETY: `src` is `dst.len()` cells inside the ring, valid for reads; `dst` is the
        // caller's exclusive buffer, distinct from the mapping. Any byte values are valid `u8`s.
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr().cast::<u8>(), dst.as_mut_ptr(), dst.len())
        }
    }

    #[inline]
    fn append_at(&self, off: usize, n: usize, out: &mut Vec<u8>) {
        let Some(src) = self.bytes.get(off..off.saturating_add(n)) else {
            return;
        };
        out.reserve(n);
        let spare = &mut out.spare_capacity_mut()[..n];
        // SAFETY: `src` is `n` cells inside the ring, valid for reads; `spare` is `n` bytes of
        // the vector's own spare capacity (reserved above), valid for writes and distinct from
        // the mapping.
        unsafe {
            std::ptr::copy_nonoverlapping(
                src.as_ptr().cast::<u8>(),
                spare.as_mut_ptr().cast::<u8>(),
                n,
            )
        };
        let len = out.len() + n;
        // SAFETY: the `n` bytes after the old length were just initialised by the copy, and
        // `len <= capacity` because `n` bytes were reserved.
        unsafe { out.set_len(len) };
    }
}

/// A ring on the heap whose bytes loom watches for unordered accesses.
#[cfg(loom)]
#[derive(Debug)]
pub(crate) struct ModelRing {
    bytes: Vec<loom::cell::UnsafeCell<u8>>,
}

#[cfg(loom)]
impl ModelRing {
    /// A zeroed ring of `cap` bytes.
    pub(crate) fn new(cap: usize) -> Self {
        ModelRing {
            bytes: (0..cap).map(|_| loom::cell::UnsafeCell::new(0)).collect(),
        }
    }
}

#[cfg(loom)]
impl RingMem for &ModelRing {
    fn cap(&self) -> usize {
        self.bytes.len()
    }

    fn write_at(&self, off: usize, src: &[u8]) {
        for (cell, b) in self.bytes[off..off + src.len()].iter().zip(src) {
            // SAFETY: loom checks that no other access to this cell is concurrent.
            cell.with_mut(|p| unsafe { *p = *b });
        }
    }

    fn read_at(&self, off: usize, dst: &mut [u8]) {
        for (cell, b) in self.bytes[off..off + dst.len()].iter().zip(dst) {
            // SAFETY: loom checks that no write to this cell is concurrent.
            *b = cell.with(|p| unsafe { *p });
        }
    }

    fn append_at(&self, off: usize, n: usize, out: &mut Vec<u8>) {
        let start = out.len();
        out.resize(start + n, 0);
        self.read_at(off, &mut out[start..]);
    }
}

#[cfg(not(loom))]
// SAFETY: (1) `Control` and its parts are `#[repr(C)]` (with an alignment attribute, which
// only adds trailing padding). (2) It holds only atomics and `ipc_sync::Lock`: no pointers.
// (3) Atomics accept every bit pattern, `Lock` is `ShmSafe` (all bit patterns valid, all-zero
// unlocked), and all-zero is an empty queue; every value is validated on use (module docs).
// (4) Every field is an atomic or the lock; the config atomics are written before publication.
// (5) No `Drop`.
unsafe impl ipc_shm::ShmSafe for crate::core::Control {}
