//! The one place the workspace imports atomics from: `std`'s normally, loom's under
//! `--cfg loom`.
//!
//! Every algorithm in this crate, and in the crates built on it (`ipc-queue`, `ipc-pipe`), uses
//! these names, so the loom build model-checks exactly the code that runs in production (tokio's
//! `loom` module pattern), and the [`Waiter`](crate::Waiter) they pass atomics to is the same
//! type in every crate.

#[cfg(not(loom))]
pub use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};

#[cfg(loom)]
pub use loom::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};

/// A hint that we are spinning (`PAUSE` on x86-64); a yield to the model checker under loom.
#[inline]
pub fn spin_hint() {
    #[cfg(not(loom))]
    std::hint::spin_loop();
    #[cfg(loom)]
    loom::thread::yield_now();
}

/// Between the two `SeqCst` operations of one side of a Dekker pair (store my flag, then read
/// yours). In the C++/Rust model `SeqCst` operations are totally ordered, so production code
/// needs nothing more; loom models `SeqCst` accesses as `AcqRel` (its documented limitation)
/// but supports `fence(SeqCst)`, so under loom this is that fence.
#[inline(always)]
pub fn dekker_fence() {
    #[cfg(loom)]
    loom::sync::atomic::fence(Ordering::SeqCst);
}
