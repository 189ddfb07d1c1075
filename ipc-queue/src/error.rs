//! The error enums, one per operation. Send-side errors hand the value back.

use bincode::error::{DecodeError, EncodeError};
use ipc_shm::{SegmentCreateError, SegmentOpenError};

/// Why [`QueueBuilder::build`](crate::QueueBuilder::build) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CreateError {
    /// The capacity is outside what a queue supports.
    #[error("capacity {requested} bytes is outside {min}..={max}")]
    InvalidCapacity {
        /// The capacity asked for.
        requested: usize,
        /// The smallest capacity.
        min: usize,
        /// The largest capacity.
        max: usize,
    },
    /// A maximum of zero items was asked for.
    #[error("max_items must be at least 1")]
    ZeroMaxItems,
    /// The segment could not be created.
    #[error(transparent)]
    Segment(#[from] SegmentCreateError),
}

/// Why opening a queue failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The segment could not be opened (missing, not a queue, ...).
    #[error(transparent)]
    Segment(#[from] SegmentOpenError),
    /// The segment is a queue's, but its control block holds impossible values.
    #[error("the queue's control block is corrupted ({what})")]
    Corrupted {
        /// What was found wrong.
        what: &'static str,
    },
}

/// Why [`Queue::put`](crate::Queue::put) failed; the value comes back.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PutError<T> {
    /// The queue was closed.
    #[error("the queue is closed")]
    Closed(T),
    /// The encoded message is larger than the queue's capacity.
    #[error("the message is larger than the queue's capacity")]
    TooLarge(T),
    /// The value could not be encoded.
    #[error("encoding the message failed: {1}")]
    Encode(T, #[source] EncodeError),
    /// The shared state is corrupted or its lock unrecoverable.
    #[error("the queue is corrupted ({1})")]
    Corrupted(T, &'static str),
}

/// Why [`Queue::try_put`](crate::Queue::try_put) failed; the value comes back.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TryPutError<T> {
    /// The queue has no room now.
    #[error("the queue is full")]
    Full(T),
    /// The queue was closed.
    #[error("the queue is closed")]
    Closed(T),
    /// The encoded message is larger than the queue's capacity.
    #[error("the message is larger than the queue's capacity")]
    TooLarge(T),
    /// The value could not be encoded.
    #[error("encoding the message failed: {1}")]
    Encode(T, #[source] EncodeError),
    /// The shared state is corrupted or its lock unrecoverable.
    #[error("the queue is corrupted ({1})")]
    Corrupted(T, &'static str),
}

/// Why [`Queue::put_timeout`](crate::Queue::put_timeout) failed; the value comes back.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PutTimeoutError<T> {
    /// No room appeared before the timeout.
    #[error("timed out waiting for room in the queue")]
    Timeout(T),
    /// The queue was closed.
    #[error("the queue is closed")]
    Closed(T),
    /// The encoded message is larger than the queue's capacity.
    #[error("the message is larger than the queue's capacity")]
    TooLarge(T),
    /// The value could not be encoded.
    #[error("encoding the message failed: {1}")]
    Encode(T, #[source] EncodeError),
    /// The shared state is corrupted or its lock unrecoverable.
    #[error("the queue is corrupted ({1})")]
    Corrupted(T, &'static str),
}

/// Why [`Queue::put_many`](crate::Queue::put_many) stopped. The items stay with the caller;
/// `sent` says how many of them (from the start) were put.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PutManyError {
    /// The queue was closed.
    #[error("the queue is closed ({sent} items were put)")]
    Closed {
        /// Items put before the failure.
        sent: usize,
    },
    /// Item `sent` is larger than the queue's capacity.
    #[error("item {sent} is larger than the queue's capacity")]
    TooLarge {
        /// Items put before the failure (also the index of the offending item).
        sent: usize,
    },
    /// Item `sent` could not be encoded.
    #[error("encoding item {sent} failed: {error}")]
    Encode {
        /// Items put before the failure (also the index of the offending item).
        sent: usize,
        /// Why.
        #[source]
        error: EncodeError,
    },
    /// The shared state is corrupted or its lock unrecoverable.
    #[error("the queue is corrupted ({what}; {sent} items were put)")]
    Corrupted {
        /// Items put before the failure.
        sent: usize,
        /// What was found wrong.
        what: &'static str,
    },
}

/// Why [`Queue::get`](crate::Queue::get) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GetError {
    /// The queue was closed and is empty.
    #[error("the queue is closed and empty")]
    Closed,
    /// The message was taken from the queue but could not be decoded (it is dropped; the queue
    /// stays usable).
    #[error("decoding the message failed: {0}")]
    Decode(#[source] DecodeError),
    /// The shared state is corrupted or its lock unrecoverable.
    #[error("the queue is corrupted ({0})")]
    Corrupted(&'static str),
}

/// Why [`Queue::try_get`](crate::Queue::try_get) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TryGetError {
    /// The queue is empty now.
    #[error("the queue is empty")]
    Empty,
    /// The queue was closed and is empty.
    #[error("the queue is closed and empty")]
    Closed,
    /// The message was taken but could not be decoded (it is dropped).
    #[error("decoding the message failed: {0}")]
    Decode(#[source] DecodeError),
    /// The shared state is corrupted or its lock unrecoverable.
    #[error("the queue is corrupted ({0})")]
    Corrupted(&'static str),
}

/// Why [`Queue::get_timeout`](crate::Queue::get_timeout) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GetTimeoutError {
    /// Nothing arrived before the timeout.
    #[error("timed out waiting for a message")]
    Timeout,
    /// The queue was closed and is empty.
    #[error("the queue is closed and empty")]
    Closed,
    /// The message was taken but could not be decoded (it is dropped).
    #[error("decoding the message failed: {0}")]
    Decode(#[source] DecodeError),
    /// The shared state is corrupted or its lock unrecoverable.
    #[error("the queue is corrupted ({0})")]
    Corrupted(&'static str),
}

/// Why [`Queue::get_many`](crate::Queue::get_many) (or its `try_`/`_timeout` forms) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GetManyError {
    /// The queue is empty now (`try_get_many` only).
    #[error("the queue is empty")]
    Empty,
    /// Nothing arrived before the timeout (`get_many_timeout` only).
    #[error("timed out waiting for a message")]
    Timeout,
    /// The queue was closed and is empty.
    #[error("the queue is closed and empty")]
    Closed,
    /// Some messages taken could not be decoded; they are dropped, and every message that
    /// did decode was pushed to the output.
    #[error("{failed} of the messages taken could not be decoded ({delivered} were): {error}")]
    Decode {
        /// Messages decoded and pushed to the output.
        delivered: usize,
        /// Messages dropped.
        failed: usize,
        /// The first decoding error.
        #[source]
        error: DecodeError,
    },
    /// The shared state is corrupted or its lock unrecoverable.
    #[error("the queue is corrupted ({0})")]
    Corrupted(&'static str),
}

/// Why a byte-level put ([`Queue::put_bytes`](crate::Queue::put_bytes) and its forms) failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PutBytesError {
    /// The queue has no room now (`try_put_bytes` only).
    #[error("the queue is full")]
    Full,
    /// No room appeared before the timeout (`put_bytes_timeout` only).
    #[error("timed out waiting for room in the queue")]
    Timeout,
    /// The queue was closed.
    #[error("the queue is closed")]
    Closed,
    /// The message is larger than the queue can ever hold.
    #[error("a {len}-byte message does not fit in the queue (at most {max} bytes)")]
    TooLarge {
        /// The message's length.
        len: usize,
        /// The largest message the queue holds.
        max: usize,
    },
    /// The shared state is corrupted or its lock unrecoverable.
    #[error("the queue is corrupted ({0})")]
    Corrupted(&'static str),
}

/// Why a byte-level get ([`Queue::get_bytes`](crate::Queue::get_bytes) and its forms) failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GetBytesError {
    /// The queue is empty now (`try_get_bytes` only).
    #[error("the queue is empty")]
    Empty,
    /// Nothing arrived before the timeout (`get_bytes_timeout` only).
    #[error("timed out waiting for a message")]
    Timeout,
    /// The queue was closed and is empty.
    #[error("the queue is closed and empty")]
    Closed,
    /// The next message is longer than the buffer; it stays in the queue.
    #[error("the next message has {needed} bytes, more than the buffer holds")]
    BufferTooSmall {
        /// The message's length.
        needed: usize,
    },
    /// The shared state is corrupted or its lock unrecoverable.
    #[error("the queue is corrupted ({0})")]
    Corrupted(&'static str),
}

/// Why [`Queue::close`](crate::Queue::close) failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CloseError {
    /// The shared state is corrupted or its lock unrecoverable.
    #[error("the queue is corrupted ({0})")]
    Corrupted(&'static str),
}

/// Why [`JoinableQueue::task_done`](crate::JoinableQueue::task_done) failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TaskDoneError {
    /// Called more times than items were put (Python's `ValueError`).
    #[error("task_done() called more times than there were items")]
    TooManyCalls,
}

/// Why [`JoinableQueue::join_timeout`](crate::JoinableQueue::join_timeout) failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JoinError {
    /// Tasks were still unfinished at the timeout.
    #[error("timed out with {unfinished} unfinished tasks")]
    Timeout {
        /// Tasks unfinished at the timeout.
        unfinished: u32,
    },
}
