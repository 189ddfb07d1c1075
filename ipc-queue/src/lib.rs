//! A lossless cross-process multi-producer multi-consumer `Queue` and `JoinableQueue` of serde
//! messages in shared memory: Python's `multiprocessing.Queue`, minus its failure modes.
//!
//! (Crate docs are completed below.)
#![deny(unsafe_code)]

#[cfg_attr(loom, allow(dead_code))]
mod core;
mod lock;
mod mem;
mod sync;

#[cfg(not(loom))]
mod error;
#[cfg(not(loom))]
mod queue;

#[cfg(not(loom))]
pub use error::{
    CloseError, CreateError, GetBytesError, GetError, GetManyError, GetTimeoutError, JoinError,
    OpenError, PutBytesError, PutError, PutManyError, PutTimeoutError, TaskDoneError,
    TryGetError, TryPutError,
};
#[cfg(not(loom))]
pub use queue::{DEFAULT_CAPACITY, JoinableQueue, QUEUE_TAG, Queue, QueueBuilder};
