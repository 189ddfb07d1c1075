//! Python's synchronisation primitives for processes: Lock, RLock, Condition, Event, Semaphore,
//! BoundedSemaphore and Barrier that live in shared memory, built on shared futexes.
//!
//! Every type is `#[repr(C)]`, made of atomics only, and [`ipc_shm::ShmSafe`]: put it in an
//! ipc-shm segment (or any shared mapping) and use it from every process that maps it, at any
//! address. The same types work on the heap between threads (`new()`).
//!
//! | type | Python | all-zero bytes are | a participant's death |
//! |---|---|---|---|
//! | [`Lock`], [`Mutex<T>`] | `Lock` (+ data) | unlocked | next acquirer gets `OwnerDied(guard)` |
//! | [`RLock`] | `RLock` | unlocked | as `Lock` |
//! | [`Condition`] | `Condition` (lock kept apart) | no waiters | the lock reports it; a silent notifier needs timeouts |
//! | [`Event`] | `Event` | clear | no owner: use timeouts |
//! | [`Semaphore`] | `Semaphore` | value 0 | permits have no owner: use timeouts |
//! | [`BoundedSemaphore`] | `BoundedSemaphore` | value and bound 0 (call `configure`) | as `Semaphore` |
//! | [`Barrier`] | `Barrier` | no parties (call `configure`) | a dead registered process breaks it |
//!
//! Beside them, [`ShmArena`] and [`ShmVec`]: large payloads written once into a block of a
//! shared segment and handed between processes as a small [`ShmToken`] (through a queue, a
//! pipe or a pool task), read in place by the receiver; a dead owner's blocks are reclaimed
//! (see [`shm_vec`] and the block table's algorithm in [`arena`]).
//!
//! # Owner death
//!
//! [`Lock`], [`Mutex`] and [`RLock`] record their owner (thread id, process id, thread start
//! time). A waiter that sleeps longer than 200 us arms a *death watch* on the owner (a pidfd of
//! its thread, or of its process on kernels before 6.9, polled by one background thread per
//! process), which wakes the waiters the moment the owner exits; they then check the owner in
//! procfs (gone, zombie, or its id reused). Owners a watch cannot see are checked after each
//! [`lock::LIVENESS_SLICE`] (see the [`lock`] module). The next acquirer gets
//! [`LockError::OwnerDied`] with the guard, as pthread's robust mutexes give `EOWNERDEAD`. It repairs the data and calls `mark_consistent`; otherwise the lock reports
//! `NotRecoverable` from then on. Each module documents its algorithm with a state table, its
//! memory ordering, and what a participant's death means.
//!
//! # The shared pieces
//!
//! Besides the primitives, this crate holds the waiting machinery the whole workspace shares,
//! so each mechanism is written (and model-checked) once:
//!
//! - [`Backoff`]: the one adaptive spin-then-sleep policy, with a time budget.
//! - [`EventCount`]: the one "waiter count + sequence" wake protocol (used by [`Condition`],
//!   [`Semaphore`] and the queue); a dead sleeper's registration is cleared by the next notify.
//! - [`Waiter`] and [`Futex`]: how algorithms sleep (a loom model under `--cfg loom`).
//! - [`RawLock`] and [`SharedLock`]: a robust lock behind a trait, with a loom model lock.
//! - [`sync`]: the one atomics shim.
//!
//! # Waiting
//!
//! Uncontended operations make no system call; unlock, set, release and notify wake only when
//! somebody sleeps; waiters spin briefly (the adaptive [`Backoff`]; a `Lock` does not spin, see
//! [`lock`]) and then sleep in the
//! kernel. Every blocking
//! call has a timeout form taking an absolute [`Deadline`] on the monotonic clock, so signals
//! (`EINTR`) never stretch or shorten a wait. [`futex`] is the workspace's one futex wrapper
//! (shared futexes only), and [`Waiter`] the trait the algorithms sleep through.
//!
//! ```
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use ipc_shm::{Layout, SegmentBuilder};
//! use ipc_sync::{Lock, LockError};
//!
//! let mut layout = Layout::new();
//! let lock = layout.add::<Lock>()?;
//! let total = layout.add::<AtomicU64>()?;
//! let seg = SegmentBuilder::new(layout.size()).create()?; // zero-filled: the lock is unlocked
//! // ... fork, or pass `seg` to a child; every process does:
//! let guard = match seg.get(lock)?.lock() {
//!     Ok(g) => g,
//!     Err(LockError::OwnerDied(mut g)) => {
//!         // A holder died mid-update: repair `total` here, then
//!         g.mark_consistent();
//!         g
//!     }
//!     Err(_) => return Err("the lock is not recoverable".into()),
//! };
//! seg.get(total)?.fetch_add(1, Ordering::Relaxed);
//! drop(guard);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Model checking
//!
//! The algorithms use atomics from one internal `sync` module and sleep through [`Futex`];
//! under `--cfg loom` both become loom's models, so
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p ipc-sync --release --lib`
//! checks mutual exclusion, owner-death hand-over, lost wake-ups (the event count's too,
//! including a stolen wake and a dead waiter's recovery) and barrier generations.
//!
//! # Dependencies
//!
//! - `ipc-shm`: the [`ShmSafe`](ipc_shm::ShmSafe) contract the types implement, and the
//!   workspace's OS layer [`ipc_shm::os`] for the fork generation and the cached pid (to
//!   invalidate the cached thread id in a forked child), and pidfds and an epoll set for the
//!   death watch.
//! - `rustix`: safe `futex` (the futex wrapper is this crate's own mechanism),
//!   `clock_gettime(CLOCK_MONOTONIC)` and `gettid`.
//! - `thiserror`: `Display` for the error enums.
//! - `serde` (feature `serde`, which ipc-queue, ipc-pipe and the pool turn on): a
//!   [`ShmToken`] is plain data in a message, and a [`ShmArena`] travels as its segment's
//!   descriptor (ipc-shm's transfer context).
//! - `loom` (only under `--cfg loom`): the model checker.
#![deny(unsafe_code)]

pub mod arena;
pub mod backoff;
pub mod barrier;
pub mod condition;
mod death_watch;
pub mod event;
pub mod eventcount;
pub mod futex;
pub mod lock;
pub mod mutex;
mod owner;
pub mod raw_lock;
pub mod rlock;
pub mod semaphore;
mod shm;
#[cfg(not(loom))]
pub mod shm_vec;
pub mod sync;
pub mod waiter;

pub use backoff::{Backoff, cpu_tag};
pub use barrier::{Barrier, BarrierWaitError};
pub use condition::{CondGuard, Condition};
pub use event::Event;
pub use eventcount::{EventCount, EventWait, Token};
pub use futex::{Deadline, WaitOutcome};
pub use lock::{Lock, LockError, LockFailure, LockGuard, LockTimeoutError, TryLockError};
pub use mutex::{Mutex, MutexGuard};
pub use raw_lock::{LockFail, RawGuard, RawLock, SharedLock};
pub use rlock::{RLock, RLockGuard};
pub use semaphore::{BoundedSemaphore, ReleaseError, Semaphore};
#[cfg(not(loom))]
pub use shm_vec::{
    AdoptError, AllocError, ArenaCreateError, ArenaOpenError, IntoTokenError, ShmArena,
    ShmArenaBuilder, ShmToken, ShmVec,
};
pub use waiter::{Futex, Waiter};

// The README's code blocks are compiled and run as doctests, so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
mod readme {}
