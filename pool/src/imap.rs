//! Lazy maps: [`Imap`], with a bounded number of tasks in flight.

use std::collections::BTreeMap;
use std::sync::Arc;

use crossbeam_channel::Receiver;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::api::Pool;
use crate::error::TaskError;
use crate::job::CancelToken;
use crate::result::{Sink, StreamSink};
use crate::task::TaskRef;

/// The iterator returned by [`Pool::imap`] and [`Pool::imap_unordered`].
///
/// It pulls arguments from its input only as results are consumed, keeping at most the pool's
/// `max_in_flight` tasks submitted ahead, so an endless input works and memory stays bounded.
/// Ordered (`imap`) iterators yield `Result<R, TaskError>` in argument order; unordered ones
/// yield the same items as they complete, without the argument's index. Every argument yields
/// exactly one item: once the pool is closed or broken (its restart breaker tripped), each
/// remaining argument yields that error. An input iterator that panics ends the input: the
/// results of the arguments it gave before come first, then one
/// [`TaskError::InputPanicked`], then the end (as Python's `imap` raises the input's
/// exception after the results before it).
///
/// Dropping an `Imap` before its end stops it: no further input is pulled, its queued tasks
/// never run, and the workers running its tasks are killed and replaced (their results would go
/// nowhere). Like [`AsyncResult::cancel`](crate::AsyncResult::cancel), this never counts
/// towards the restart breaker and touches no other task.
///
/// ```
/// fn double(x: u64) -> u64 {
///     x * 2
/// }
///
/// let pool = pool::PoolBuilder::new().processes(2).build()?;
/// // An endless input: only what `take` consumes (plus a bounded look-ahead) is computed.
/// let firsts: Vec<u64> = pool.imap(double, 0..).take(5).map(Result::unwrap).collect();
/// assert_eq!(firsts, vec![0, 2, 4, 6, 8]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Imap<'p, A, R, I> {
    pool: &'p Pool,
    task: TaskRef,
    input: I,
    input_done: bool,
    /// The input iterator panicked: yielded once every result before it was.
    input_panic: Option<TaskError>,
    ordered: bool,
    chunksize: usize,
    next_index: u64,
    next_yield: u64,
    in_flight: usize,
    results: Receiver<(u64, Result<R, TaskError>)>,
    sink: Arc<dyn Sink>,
    cancel: Arc<CancelToken>,
    pending: BTreeMap<u64, Result<R, TaskError>>,
    _arg: std::marker::PhantomData<fn(A)>,
}

/// Cancels what is in flight (nothing, once every result was taken).
impl<A, R, I> Drop for Imap<'_, A, R, I> {
    fn drop(&mut self) {
        if self.in_flight > 0 {
            self.cancel.cancel();
        }
    }
}

impl<A, R, I> std::fmt::Debug for Imap<'_, A, R, I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Imap")
            .field("ordered", &self.ordered)
            .field("submitted", &self.next_index)
            .field("in_flight", &self.in_flight)
            .finish()
    }
}

impl<'p, A, R, I> Imap<'p, A, R, I>
where
    A: Serialize + DeserializeOwned,
    R: Serialize + DeserializeOwned + Send + 'static,
    I: Iterator<Item = A>,
{
    pub(crate) fn new(
        pool: &'p Pool,
        f: fn(A) -> R,
        input: I,
        ordered: bool,
        chunksize: usize,
    ) -> Self {
        let (tx, rx) = crossbeam_channel::unbounded();
        Imap {
            pool,
            task: TaskRef::new(f),
            input,
            input_done: false,
            input_panic: None,
            ordered,
            chunksize: chunksize.max(1),
            next_index: 0,
            next_yield: 0,
            in_flight: 0,
            results: rx,
            sink: Arc::new(StreamSink(tx)),
            cancel: CancelToken::new(),
            pending: BTreeMap::new(),
            _arg: std::marker::PhantomData,
        }
    }

    /// Submits chunks until the in-flight limit or the end of the input. A chunk the pool
    /// refuses (closed, or broken by its restart breaker) or that does not encode still gets an
    /// outcome per argument: the error, through the same channel as results, so that every
    /// input yields exactly one item and the iterator never ends early.
    fn fill(&mut self) {
        // Results held back for ordering count too, so memory stays bounded.
        let limit = self.pool.max_in_flight().max(self.chunksize);
        while !self.input_done && self.in_flight + self.pending.len() + self.chunksize <= limit {
            let mut chunk: Vec<A> = Vec::with_capacity(self.chunksize.min(1024));
            let input = &mut self.input;
            let take = self.chunksize;
            // A panicking input ends the input, as an exception in Python's `imap` input does:
            // what it gave before still runs, then the panic is yielded as an error.
            let pulled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                chunk.extend(input.by_ref().take(take));
            }));
            if let Err(payload) = pulled {
                self.input_done = true;
                self.input_panic = Some(TaskError::InputPanicked {
                    message: crate::task::panic_message(&*payload),
                });
            }
            if chunk.is_empty() {
                self.input_done = true;
                break;
            }
            let n = chunk.len();
            if let Err(e) = self.pool.submit_chunk(
                self.task,
                &chunk,
                self.next_index,
                self.sink.clone(),
                &self.cancel,
            ) {
                for i in e.submitted as u64..n as u64 {
                    self.sink.fail(self.next_index + i, e.error.clone());
                }
            }
            self.next_index += n as u64;
            self.in_flight += n;
            if n < self.chunksize {
                self.input_done = true;
            }
        }
    }
}

impl<A, R, I> Iterator for Imap<'_, A, R, I>
where
    A: Serialize + DeserializeOwned,
    R: Serialize + DeserializeOwned + Send + 'static,
    I: Iterator<Item = A>,
{
    type Item = Result<R, TaskError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            self.fill();
            if self.ordered
                && let Some(r) = self.pending.remove(&self.next_yield)
            {
                self.next_yield += 1;
                return Some(r);
            }
            if self.in_flight == 0 {
                return self.input_panic.take().map(Err);
            }
            let (index, result) = self.results.recv().ok()?;
            self.in_flight -= 1;
            if !self.ordered {
                return Some(result);
            }
            self.pending.insert(index, result);
        }
    }
}
