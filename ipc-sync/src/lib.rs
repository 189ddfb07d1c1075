//! Python's synchronisation primitives for processes: Lock, RLock, Condition, Event, Semaphore,
//! BoundedSemaphore and Barrier that live in shared memory, built on shared futexes.
//!
//! (Work in progress: the futex wrapper and the waiter abstraction are in place.)
#![deny(unsafe_code)]

pub mod futex;
mod sync;
pub mod waiter;

pub use futex::{Deadline, WaitOutcome};
pub use waiter::{Futex, Waiter};
