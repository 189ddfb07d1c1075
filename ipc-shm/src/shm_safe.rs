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
///
/// Padding between fields is allowed: this crate never copies a `T` into or out of a segment
/// (it hands out `&T`, and code reads and writes through it field by field), so padding bytes
/// are never read as part of a value.
///
/// # Your own types: `#[derive(ShmSafe)]`
///
/// With the default feature `derive`, `#[derive(ShmSafe)]` (the same name as the trait, as
/// serde does) writes the impl after checking every point above at compile time: `#[repr(C)]`
/// or `#[repr(transparent)]` and not packed, a struct (no enum, no union), no lifetime
/// parameters, no `Drop` impl, and every field `ShmSafe` (so a raw pointer, reference, `Box`,
/// `Vec`, `String` or `bool` field is a compile error naming the field). Type parameters are
/// bounded `ShmSafe`. No `unsafe` in your code, and it builds under `#![forbid(unsafe_code)]`.
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use ipc_shm::{Layout, SegmentBuilder, ShmSafe};
/// use ipc_sync::Lock;
///
/// /// Shared by every worker: a lock for the multi-field update, counters read without it.
/// #[derive(ShmSafe)]
/// #[repr(C)]
/// struct Stats {
///     lock: Lock,                 // zeroed bytes are an unlocked lock
///     jobs_done: AtomicU64,
///     bytes_in: AtomicU64,
///     per_worker: [AtomicU64; 4],
/// }
///
/// let mut layout = Layout::new();
/// let stats = layout.add::<Stats>()?;
/// let segment = SegmentBuilder::new(layout.size()).create()?; // fork, or pass its descriptor
///
/// let s: &Stats = segment.get(stats)?;
/// {
///     // Err only if a holder died (see ipc_sync::LockError); LockFailure is that error without
///     // the guard, so `?` can carry it.
///     let _guard = s.lock.lock().map_err(ipc_sync::LockFailure::from)?;
///     s.jobs_done.fetch_add(1, Ordering::Relaxed);
///     s.bytes_in.fetch_add(512, Ordering::Relaxed);
/// }
/// s.per_worker[2].fetch_add(1, Ordering::Relaxed);
/// assert_eq!(s.jobs_done.load(Ordering::Relaxed), 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot live in shared memory (it is not `ShmSafe`)",
    label = "not `ShmSafe`: it may hold an address, have invalid bit patterns or an undefined layout",
    note = "shared memory holds integers, atomics, arrays of them, ipc_sync primitives and \
            #[derive(ShmSafe)] #[repr(C)] structs of those; refer to other objects by \
            `ipc_shm::Offset`, never by pointer or reference"
)]
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
