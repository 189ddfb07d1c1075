//! Python's synchronisation primitives for processes: Lock, RLock, Condition, Event, Semaphore,
//! BoundedSemaphore and Barrier that live in shared memory, built on shared futexes.
//!
//! (Work in progress: the futex wrapper, the waiter abstraction and `Lock` are in place.)
#![deny(unsafe_code)]

pub mod futex;
pub mod lock;
mod os;
mod owner;
mod shm;
mod sync;
pub mod waiter;

pub use futex::{Deadline, WaitOutcome};
pub use lock::{Lock, LockError, LockGuard, LockTimeoutError, TryLockError};
pub use waiter::{Futex, Waiter};
