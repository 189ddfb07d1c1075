//! Python's synchronisation primitives for processes: Lock, RLock, Condition, Event, Semaphore,
//! BoundedSemaphore and Barrier that live in shared memory, built on shared futexes.
#![deny(unsafe_code)]

pub mod barrier;
pub mod condition;
pub mod event;
pub mod futex;
pub mod lock;
pub mod mutex;
mod os;
mod owner;
pub mod rlock;
pub mod semaphore;
mod shm;
mod sync;
pub mod waiter;

pub use barrier::{Barrier, BarrierWaitError};
pub use condition::{CondGuard, Condition};
pub use event::Event;
pub use futex::{Deadline, WaitOutcome};
pub use lock::{Lock, LockError, LockGuard, LockTimeoutError, TryLockError};
pub use mutex::{Mutex, MutexGuard};
pub use rlock::{RLock, RLockGuard};
pub use semaphore::{BoundedSemaphore, ReleaseError, Semaphore};
pub use waiter::{Futex, Waiter};
