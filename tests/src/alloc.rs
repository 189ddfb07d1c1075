//! A counting global allocator: the system allocator, recording the largest single allocation
//! each thread makes, so that a test can show that decoding garbage never asks for more than the
//! decode limit (a hostile length header must not turn into a huge `Vec::with_capacity`).
//!
//! A test binary installs it with its own static (the attribute must be in the binary's crate):
//!
//! ```
//! use ipc_tests::alloc::{CountingAllocator, largest_allocation};
//!
//! #[global_allocator]
//! static ALLOC: CountingAllocator = CountingAllocator::new();
//!
//! fn main() {
//!     let (v, largest) = largest_allocation(|| vec![1u8; 10_000]);
//!     assert_eq!(v.len(), 10_000);
//!     assert!(largest >= 10_000, "{largest}");
//! }
//! ```
//!
//! Without that static nothing is recorded and every figure is 0: a test that relies on it
//! should check once that a known allocation is seen (as the pool's garbage tests do).
//!
//! The figures are per thread (a const-initialised thread-local), so tests running in parallel
//! do not see each other's allocations. This is the one `unsafe` of the crate: the
//! `GlobalAlloc` impl, which forwards every call to [`System`] unchanged.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// The system allocator, recording the largest single allocation (or reallocation target) made
/// by each thread since that thread's last [`reset_largest`].
#[derive(Debug, Clone, Copy, Default)]
pub struct CountingAllocator;

impl CountingAllocator {
    /// The allocator, for a `#[global_allocator]` static.
    pub const fn new() -> CountingAllocator {
        CountingAllocator
    }
}

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

/// Records an allocation of `size` bytes on this thread. `try_with` because the allocator also
/// runs while thread-locals are torn down; a const-initialised `Cell` has no destructor and
/// never allocates, so this cannot recurse into the allocator.
#[inline]
fn note(size: usize) {
    let _ = LARGEST.try_with(|m| m.set(m.get().max(size)));
}

// SAFETY: `GlobalAlloc`'s contract (blocks valid for their layout, no unwinding, `dealloc` and
// `realloc` of blocks this allocator gave out) is met by forwarding every method to `System`
// with the caller's arguments unchanged, so `System`'s guarantees are ours; `note` only touches
// a const-initialised thread-local without destructor, which neither allocates nor panics.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: forwarded unchanged; the caller upholds `GlobalAlloc::alloc`'s contract
        // (a layout of non-zero size).
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: forwarded unchanged; the caller upholds `alloc_zeroed`'s contract (a layout
        // of non-zero size).
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged: `ptr` was returned by this allocator, i.e. by `System`
        // through the methods above, and `layout` is the one it was allocated with (the
        // caller's contract).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: forwarded unchanged: `ptr` came from `System` through this allocator with
        // `layout`, and `new_size` is non-zero and does not overflow when rounded up to the
        // alignment (the caller's contract).
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Forgets this thread's record: the next [`largest_since_reset`] counts from here.
pub fn reset_largest() {
    LARGEST.with(|m| m.set(0));
}

/// The largest single allocation this thread made since its last [`reset_largest`] (0 if the
/// binary does not install [`CountingAllocator`]).
pub fn largest_since_reset() -> usize {
    LARGEST.with(Cell::get)
}

/// Runs `f` and returns its result with the largest single allocation it made on this thread.
pub fn largest_allocation<R>(f: impl FnOnce() -> R) -> (R, usize) {
    reset_largest();
    let r = f();
    (r, largest_since_reset())
}
