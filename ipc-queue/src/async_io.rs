//! Async get and put (feature `tokio`): [`Queue::get_async`] and [`Queue::put_async`] (and
//! the bytes forms [`Queue::get_bytes_async`], [`Queue::put_bytes_async`]), for
//! tokio (or any executor: the futures need no runtime of their own), without a thread per
//! waiter.
//!
//! Each operation is the non-blocking one in a loop, with the wait of the sync path in
//! between, done by the process's reactor thread instead of the calling thread (see
//! `reactor.rs`):
//!
//! ```text
//! loop {
//!     try_get()                      -> a message (or Closed, Corrupted...): return it
//!     token = data.listen()          (registers exactly as a sleeping getter does)
//!     try_get()                      -> a message: cancel the token, return it
//!     WaitFor(data, token).await     (the reactor sleeps on the word in futex_waitv)
//! }
//! ```
//!
//! The putter's loop is the same with `try_put` and the `space` event count. A notifier
//! (any process's `put`, `get` or `close`) cannot tell an async waiter from a sleeping thread,
//! so the sync path is unchanged, down to its system calls.
//!
//! # Cancel safety
//!
//! - [`Queue::get_async`]: a message is taken from the queue only inside `try_get`, in the poll
//!   that returns it, so a future dropped before it completed (by `tokio::time::timeout` or
//!   `select!`) took nothing: the message stays queued for the next getter.
//! - [`Queue::put_async`]: the value is put inside `try_put`, in the poll that completes; a
//!   future dropped before it completed put nothing (its value is dropped with it).
//! - A dropped future cancels its registration on the event count, so it costs the notifier
//!   nothing (and a process killed while awaiting leaves a registration that the next notify
//!   clears, as for a sleeping thread).

use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use ipc_sync::EventCount;

use crate::error::{GetBytesError, GetError, PutBytesError, PutError, TryGetError, TryPutError};
use crate::queue::{Queue, Shared};
use crate::reactor::{Source, WaitFor};

/// Which of a queue's waits a task awaits.
#[derive(Debug, Clone, Copy)]
enum Which {
    /// `put.data`: a getter waits for a message (or the close).
    Data,
    /// `get.space`: a putter waits for room (or the close).
    Space,
}

/// A queue's event count for the reactor: the shared state (which keeps the segment mapped
/// while the reactor sleeps on the word) and which wait.
#[derive(Debug)]
struct QueueWait {
    shared: Arc<Shared>,
    which: Which,
}

impl Source for QueueWait {
    fn event_count(&self) -> Option<&EventCount> {
        let ctl = self.shared.control()?;
        Some(match self.which {
            Which::Data => &ctl.put.data,
            Which::Space => &ctl.get.space,
        })
    }
}

/// What `listen` found wrong: the control block no longer validates.
const NO_CONTROL: &str = "control block";

impl<T> Queue<T> {
    /// Puts one message of raw bytes, awaiting room: [`put_bytes`](Queue::put_bytes) for
    /// async code (feature `tokio`), cancel-safe as [`put_async`](Queue::put_async) (a dropped
    /// future put nothing).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let q: ipc_queue::Queue<()> = ipc_queue::QueueBuilder::new().build()?;
    /// q.put_bytes_async(b"raw").await?;
    /// let mut buf = [0u8; 16];
    /// let n = q.get_bytes_async(&mut buf).await?;
    /// assert_eq!(&buf[..n], b"raw");
    /// # Ok(())
    /// # }
    /// ```
    pub async fn put_bytes_async(&self, bytes: &[u8]) -> Result<(), PutBytesError> {
        loop {
            match self.try_put_bytes(bytes) {
                Err(PutBytesError::Full) => {}
                r => return r,
            }
            let wait = self
                .listen(Which::Space)
                .ok_or(PutBytesError::Corrupted(NO_CONTROL))?;
            match self.try_put_bytes(bytes) {
                Err(PutBytesError::Full) => wait.await,
                r => return r,
            }
        }
    }

    /// Gets one message's bytes into `buf`, awaiting one; returns its length:
    /// [`get_bytes`](Queue::get_bytes) for async code (feature `tokio`). A message longer than
    /// `buf` stays queued ([`GetBytesError::BufferTooSmall`]). Cancel-safe as
    /// [`get_async`](Queue::get_async) (a dropped future took no message).
    pub async fn get_bytes_async(&self, buf: &mut [u8]) -> Result<usize, GetBytesError> {
        loop {
            match self.try_get_bytes(buf) {
                Err(GetBytesError::Empty) => {}
                r => return r,
            }
            let wait = self
                .listen(Which::Data)
                .ok_or(GetBytesError::Corrupted(NO_CONTROL))?;
            match self.try_get_bytes(buf) {
                Err(GetBytesError::Empty) => wait.await,
                r => return r,
            }
        }
    }

    /// Registers on the event count of `which` (as a sleeper about to re-check does) and
    /// returns the wait, which cancels the registration if it is dropped un-awaited.
    fn listen(&self, which: Which) -> Option<WaitFor> {
        let source = Arc::new(QueueWait {
            shared: Arc::clone(&self.shared),
            which,
        });
        let token = source.event_count()?.listen();
        Some(WaitFor::new(source, token))
    }
}

/// A non-blocking get's failure as a blocking get's (`Empty` is handled before).
fn get_error(e: TryGetError) -> GetError {
    match e {
        TryGetError::Closed => GetError::Closed,
        TryGetError::Decode(e) => GetError::Decode(e),
        TryGetError::Corrupted(what) => GetError::Corrupted(what),
        TryGetError::Empty => GetError::Corrupted("empty after a completed wait"),
    }
}

/// A non-blocking put's failure as a blocking put's (`Full` is handled before).
fn put_error<T>(e: TryPutError<T>) -> PutError<T> {
    match e {
        TryPutError::Closed(v) => PutError::Closed(v),
        TryPutError::TooLarge(v) => PutError::TooLarge(v),
        TryPutError::Encode(v, e) => PutError::Encode(v, e),
        TryPutError::Corrupted(v, what) => PutError::Corrupted(v, what),
        TryPutError::Full(v) => PutError::Corrupted(v, "full after a completed wait"),
    }
}

impl<T: Serialize + DeserializeOwned> Queue<T> {
    /// Gets the next message, awaiting one without blocking the thread:
    /// [`get`](Queue::get) for async code (feature `tokio`). After [`close`](Queue::close),
    /// returns what is queued and then [`GetError::Closed`].
    ///
    /// Any number of tasks may await one queue (or many queues) at once: one thread per
    /// process sleeps for all of them (`futex_waitv`, Linux >= 5.16), woken by the producers'
    /// ordinary futex wake-up. Cancel-safe: a dropped future took no message (see the
    /// `async_io` module docs in the source).
    ///
    /// ```
    /// use ipc_queue::{Queue, QueueBuilder};
    ///
    /// #[tokio::main]
    /// async fn main() -> Result<(), Box<dyn std::error::Error>> {
    ///     let q: Queue<String> = QueueBuilder::new().capacity(1 << 16).build()?;
    ///     let producer = q.clone(); // in real use: a forked or exec'ed process
    ///     let waiter = tokio::spawn(async move { q.get_async().await });
    ///     std::thread::spawn(move || producer.put("work".to_string()).unwrap());
    ///     assert_eq!(waiter.await??, "work");
    ///     Ok(())
    /// }
    /// ```
    pub async fn get_async(&self) -> Result<T, GetError> {
        loop {
            match self.try_get() {
                Err(TryGetError::Empty) => {}
                r => return r.map_err(get_error),
            }
            let wait = self
                .listen(Which::Data)
                .ok_or(GetError::Corrupted(NO_CONTROL))?;
            match self.try_get() {
                Err(TryGetError::Empty) => wait.await,
                r => return r.map_err(get_error), // `wait` dropped: registration cancelled
            }
        }
    }

    /// Puts `value`, awaiting room without blocking the thread: [`put`](Queue::put) for async
    /// code (feature `tokio`). On failure the value comes back in the error. Cancel-safe in the
    /// sense that matters for a queue: a dropped future put nothing (the value is put whole,
    /// in the poll that completes).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use ipc_queue::{Queue, QueueBuilder};
    ///
    /// let q: Queue<u32> = QueueBuilder::new().max_items(1).build()?;
    /// q.put_async(1).await?;
    /// // Full: this put waits for a get, with no thread blocked meanwhile.
    /// let consumer = q.clone();
    /// let getter = tokio::spawn(async move { consumer.get_async().await });
    /// q.put_async(2).await?;
    /// assert_eq!(getter.await??, 1);
    /// assert_eq!(q.get_async().await?, 2);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn put_async(&self, value: T) -> Result<(), PutError<T>> {
        let mut value = value;
        loop {
            match self.try_put(value) {
                Err(TryPutError::Full(v)) => value = v,
                r => return r.map_err(put_error),
            }
            let Some(wait) = self.listen(Which::Space) else {
                return Err(PutError::Corrupted(value, NO_CONTROL));
            };
            match self.try_put(value) {
                Err(TryPutError::Full(v)) => {
                    value = v;
                    wait.await;
                }
                r => return r.map_err(put_error),
            }
        }
    }
}
