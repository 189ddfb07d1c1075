//! The marker trait for types that may live in shared memory.
#![allow(unsafe_code)]

use std::sync::atomic::{
    AtomicI8, AtomicI16, AtomicI32, AtomicI64, AtomicIsize, AtomicU8, AtomicU16, AtomicU32,
    AtomicU64, AtomicUsize,
};

/// A type that may be placed in memory shared with other processes.
///
/// Every type that the crates of this workspace put in a segment implements it, and
/// [`Segment::get`](crate::Segment::get), [`SharedValue`](crate::SharedValue) and
/// [`SharedSlice`](crate::SharedSlice) accept only such types.
///
/// # Safety
///
/// Implementing it promises all of the following:
///
/// 1. **Defined layout.** The type is `#[repr(C)]` or `#[repr(transparent)]` (or a primitive, or
///    an array of such types), so every process of the same build sees the same field offsets.
/// 2. **No pointers or references.** It holds no `&T`, `Box`, `Vec`, raw pointer, function pointer
///    or anything else holding an address: each process maps the segment at its own address. Refer
///    to other objects in the segment by offset ([`Offset`](crate::Offset)).
/// 3. **Any bit pattern is valid.** Another process may write any bytes at any time, and all-zero
///    bytes (a fresh segment) must be a valid value. So no `bool`, `char`, enums, `NonZero*` or
///    niche-carrying types, and every field must itself be `ShmSafe`.
/// 4. **Shared mutation goes through atomics.** Any field that may change while another process
///    can read it is an atomic (or an `UnsafeCell` accessed only by a protocol that excludes
///    concurrent access, such as a slot owned through a lock, documented at the impl). Plain
///    fields may only be written before the segment is published.
/// 5. **No `Drop` logic that matters.** The value is never dropped by this crate: memory is
///    simply unmapped. It must not own resources.
///
/// Under these rules a `&T` into shared memory is sound in every process, and no `&mut T` is ever
/// formed to memory another process may touch.
pub unsafe trait ShmSafe: Sync + 'static {}

macro_rules! shm_safe {
    ($($t:ty),* $(,)?) => {
        $(
            // SAFETY: a primitive integer, float or integer atomic: defined layout (1), no
            // pointers (2), every bit pattern is a valid value (3), atomics are the mutation
            // mechanism (4) and plain values are only read after publication, no Drop (5).
            unsafe impl ShmSafe for $t {}
        )*
    };
}

shm_safe!(
    u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize, f32, f64
);
shm_safe!(
    AtomicU8,
    AtomicU16,
    AtomicU32,
    AtomicU64,
    AtomicUsize,
    AtomicI8,
    AtomicI16,
    AtomicI32,
    AtomicI64,
    AtomicIsize,
);
shm_safe!(());

// SAFETY: an array has the element's layout repeated with no padding between elements (1); it
// holds what its elements hold, so (2)-(5) follow from `T: ShmSafe`.
unsafe impl<T: ShmSafe, const N: usize> ShmSafe for [T; N] {}
