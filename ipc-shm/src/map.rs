//! The mapping: the one place where raw pointers into shared memory become references.
//!
//! A [`Mapping`] owns a `MAP_SHARED` read-write mapping (memmap2's `MmapRaw`, which never forms
//! a `&mut [u8]`) and hands out `&T` only for `T: ShmSafe`, only inside its bounds and only at
//! offsets aligned for `T`. Because `ShmSafe` types are valid for every bit pattern and mutate only
//! through atomics, a shared reference stays sound whatever other processes write.
#![allow(unsafe_code)]

use std::io;
use std::mem::{align_of, size_of};
use std::os::fd::BorrowedFd;

use memmap2::{MmapOptions, MmapRaw};

use crate::error::LayoutError;
use crate::header::{PAYLOAD_ALIGN, PAYLOAD_OFFSET, SegmentHeader};
use crate::shm_safe::ShmSafe;

/// A whole object mapped shared and read-write: header, then payload.
#[derive(Debug)]
pub(crate) struct Mapping {
    raw: MmapRaw,
}

impl Mapping {
    /// Maps the first `len` bytes of `fd` (`len` must be at least `PAYLOAD_OFFSET`; the caller
    /// checked the object's real size first, so no access can fault).
    pub(crate) fn new(fd: BorrowedFd<'_>, len: usize) -> io::Result<Mapping> {
        debug_assert!(len >= PAYLOAD_OFFSET);
        let raw = MmapOptions::new().len(len).map_raw(&fd)?;
        Ok(Mapping { raw })
    }

    /// The header at offset 0.
    pub(crate) fn header(&self) -> &SegmentHeader {
        // SAFETY: the mapping is at least PAYLOAD_OFFSET >= size_of::<SegmentHeader>() bytes long
        // (checked in `new`'s callers) and page aligned, so the pointer is in bounds and aligned
        // for the 64-byte-aligned header. The header holds only atomics, valid for any bit
        // pattern, so another process's writes cannot make the reference invalid. The reference
        // lives no longer than `self`, which keeps the mapping alive.
        unsafe { &*self.raw.as_ptr().cast::<SegmentHeader>() }
    }

    /// The start of the payload.
    #[inline]
    pub(crate) fn payload_ptr(&self) -> *mut u8 {
        // `wrapping_add` keeps this free of unsafe; the offset is within the mapping.
        self.raw.as_mut_ptr().wrapping_add(PAYLOAD_OFFSET)
    }

    /// The payload's length in bytes.
    #[inline]
    pub(crate) fn payload_len(&self) -> usize {
        self.raw.len() - PAYLOAD_OFFSET
    }

    fn check(&self, offset: usize, bytes: usize, align: usize) -> Result<(), LayoutError> {
        let payload = self.payload_len();
        let end = offset.checked_add(bytes).ok_or(LayoutError::OutOfBounds {
            offset,
            len: bytes,
            payload,
        })?;
        if end > payload {
            return Err(LayoutError::OutOfBounds {
                offset,
                len: bytes,
                payload,
            });
        }
        if align > PAYLOAD_ALIGN {
            return Err(LayoutError::AlignTooLarge {
                align,
                max: PAYLOAD_ALIGN,
            });
        }
        if !offset.is_multiple_of(align) {
            return Err(LayoutError::Misaligned { offset, align });
        }
        Ok(())
    }

    /// A `&T` at `offset` bytes into the payload, bounds- and alignment-checked.
    pub(crate) fn get<T: ShmSafe>(&self, offset: usize) -> Result<&T, LayoutError> {
        self.check(offset, size_of::<T>(), align_of::<T>())?;
        // SAFETY: `check` proved offset..offset+size_of::<T>() lies inside the payload, and the
        // payload starts PAYLOAD_OFFSET (a multiple of 128) into a page-aligned mapping, so the
        // pointer is aligned for T whenever align_of::<T>() divides both 128 and offset; `check`
        // tests the offset and rejects alignments above 128. T: ShmSafe is
        // valid for any bit pattern and mutates only through atomics, so a shared reference is
        // sound while other processes write. The borrow is tied to `self`, which owns the mapping.
        Ok(unsafe { &*self.payload_ptr().add(offset).cast::<T>() })
    }

    /// Faults in the payload's bytes `offset .. offset + len` for writing, in one system call
    /// (`MADV_POPULATE_WRITE`). Fails with `InvalidInput` if the range is outside the payload.
    pub(crate) fn populate(&self, offset: usize, len: usize) -> io::Result<()> {
        let in_payload = offset
            .checked_add(len)
            .is_some_and(|end| end <= self.payload_len());
        if !in_payload {
            return Err(io::ErrorKind::InvalidInput.into());
        }
        // memmap2 checks the range against the mapping and rounds it out to whole pages; the
        // advice only populates page tables, it never changes the bytes.
        self.raw
            .advise_range(memmap2::Advice::PopulateWrite, PAYLOAD_OFFSET + offset, len)
    }

    /// A `&[T]` of `len` elements at `offset` bytes into the payload, checked like [`Mapping::get`].
    pub(crate) fn slice<T: ShmSafe>(&self, offset: usize, len: usize) -> Result<&[T], LayoutError> {
        let bytes = size_of::<T>()
            .checked_mul(len)
            .ok_or(LayoutError::OutOfBounds {
                offset,
                len: usize::MAX,
                payload: self.payload_len(),
            })?;
        self.check(offset, bytes, align_of::<T>())?;
        // SAFETY: as in `get`: in bounds, aligned, valid for any bit pattern, shared mutation
        // only through atomics, and the borrow cannot outlive the mapping. `len * size_of::<T>()`
        // fits in the payload, so it is at most isize::MAX.
        Ok(unsafe { std::slice::from_raw_parts(self.payload_ptr().add(offset).cast::<T>(), len) })
    }
}
