//! Results that arrive later: [`AsyncResult`], and the sinks that fill them.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use serde::de::{DeserializeOwned, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

use crate::error::{TaskError, WorkerBacktrace};
use crate::job::CancelToken;
use crate::task::Failure;
use crate::wire::codec;
use crate::wire::outcome::{ONE_OK, read_outcomes};

/// A callback run with a task's result, on a pool thread in the parent.
pub(crate) type Callback<T> = Box<dyn FnOnce(&T) + Send>;
/// A callback run with a task's error, on a pool thread in the parent.
pub(crate) type ErrorCallback = Box<dyn FnOnce(&TaskError) + Send>;

/// What a [`ResultCell`] holds: the outcome once set, and who to tell.
struct ResultState<T> {
    value: Option<Result<T, TaskError>>,
    /// An outcome was accepted (its callback may still be running): later ones are ignored.
    claimed: bool,
    ready: bool,
    success: bool,
    /// Threads blocked on the condition variable: `complete` wakes them only if there are
    /// some (a wake-up is a system call even when nobody waits, and the common `apply` sets
    /// its result before anyone waits).
    waiting: usize,
    waker: Option<Waker>,
    callback: Option<Callback<T>>,
    error_callback: Option<ErrorCallback>,
}

/// The one-shot cell an [`AsyncResult`] waits on and a sink completes: the outcome, the
/// callbacks to run with it, and a condition variable and waker for whoever waits.
pub(crate) struct ResultCell<T> {
    state: Mutex<ResultState<T>>,
    ready: Condvar,
}

impl<T> ResultCell<T> {
    pub(crate) fn new(
        callback: Option<Callback<T>>,
        error_callback: Option<ErrorCallback>,
    ) -> Arc<ResultCell<T>> {
        Arc::new(ResultCell {
            state: Mutex::new(ResultState {
                value: None,
                claimed: false,
                ready: false,
                success: false,
                waiting: 0,
                waker: None,
                callback,
                error_callback,
            }),
            ready: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, ResultState<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until the outcome is set, or until `deadline`; returns the state, locked.
    fn wait_ready(&self, deadline: Option<Instant>) -> MutexGuard<'_, ResultState<T>> {
        let mut s = self.lock();
        while !s.ready {
            // Counted while blocked, under the lock `complete` sets `ready` under: it wakes
            // us if and only if we count.
            s.waiting += 1;
            s = match deadline {
                None => self.ready.wait(s).unwrap_or_else(|p| p.into_inner()),
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        s.waiting -= 1;
                        return s;
                    }
                    self.ready
                        .wait_timeout(s, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
            s.waiting -= 1;
        }
        s
    }

    /// Sets the result once (later calls are ignored and return `false`): runs the callback,
    /// then wakes waiters.
    pub(crate) fn complete(&self, result: Result<T, TaskError>) -> bool {
        let mut s = self.lock();
        if s.claimed {
            return false;
        }
        s.claimed = true;
        if s.callback.is_some() || s.error_callback.is_some() {
            let (callback, error_callback) = (s.callback.take(), s.error_callback.take());
            drop(s);
            // Callbacks run before the result becomes visible, as in Python, and outside the
            // lock.
            match &result {
                Ok(v) => {
                    if let Some(cb) = callback {
                        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cb(v)));
                    }
                }
                Err(e) => {
                    if let Some(cb) = error_callback {
                        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cb(e)));
                    }
                }
            }
            s = self.lock();
        }
        // Without callbacks (every `apply`) the claim and the result take one lock, not two.
        s.success = result.is_ok();
        s.value = Some(result);
        s.ready = true;
        let (waker, waiting) = (s.waker.take(), s.waiting > 0);
        drop(s);
        if waiting {
            self.ready.notify_all();
        }
        if let Some(w) = waker {
            w.wake();
        }
        true
    }

    pub(crate) fn is_ready(&self) -> bool {
        self.lock().ready
    }
}

/// The result of a task submitted with `apply_async` or `map_async`, available later.
///
/// Wait for it with [`get`](AsyncResult::get) (blocking), [`get_timeout`](AsyncResult::get_timeout),
/// or `.await` (it is a `Future`). Like Python's `AsyncResult`, with `ready` and `successful`,
/// and [`cancel`](AsyncResult::cancel), which Python's lacks.
pub struct AsyncResult<T> {
    cell: Arc<ResultCell<T>>,
    cancel: Option<Arc<CancelToken>>,
}

/// What [`AsyncResult::cancel`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CancelOutcome {
    /// The result was already there (or another cancel came first): nothing changed.
    AlreadyDone,
    /// No task of it was running when the cancel took effect: the queued ones were taken out
    /// and will never run. The result is [`TaskError::Cancelled`].
    Dequeued,
    /// Tasks of it were running: their workers were killed (and are replaced), and the rest
    /// will never run. The result is [`TaskError::Cancelled`].
    KilledRunning,
}

impl<T> fmt::Debug for AsyncResult<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncResult")
            .field("ready", &self.ready())
            .finish()
    }
}

impl<T> AsyncResult<T> {
    pub(crate) fn new(cell: Arc<ResultCell<T>>) -> AsyncResult<T> {
        AsyncResult { cell, cancel: None }
    }

    /// A result whose tasks share `cancel`.
    pub(crate) fn cancellable(
        cell: Arc<ResultCell<T>>,
        cancel: Arc<CancelToken>,
    ) -> AsyncResult<T> {
        AsyncResult {
            cell,
            cancel: Some(cancel),
        }
    }

    /// Cancels the task (every task, for a `map_async`): a queued task is taken out and never
    /// runs; a running one has its worker killed and replaced. The result becomes
    /// [`TaskError::Cancelled`] at once, and the `error_callback`, if any, runs with it on the
    /// calling thread.
    ///
    /// Killing a worker for a cancel is no failure of the pool: it never counts towards the
    /// restart breaker, and no other task is affected (the other tasks the killed worker would
    /// have run go to the remaining workers). A result that is already there stays as it is
    /// ([`CancelOutcome::AlreadyDone`]).
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// fn nap(ms: u64) -> u64 {
    ///     std::thread::sleep(Duration::from_millis(ms));
    ///     ms
    /// }
    ///
    /// let pool = pool::Pool::new(1)?;
    /// let running = pool.apply_async(nap, 60_000);
    /// let queued = pool.apply_async(nap, 1);
    /// assert_eq!(queued.cancel(), pool::CancelOutcome::Dequeued);
    /// // Wait until the worker runs the long task, then cancel it too.
    /// while pool.stats().workers.iter().all(|w| w.current_task.is_none()) {
    ///     std::thread::sleep(Duration::from_millis(5));
    /// }
    /// assert_eq!(running.cancel(), pool::CancelOutcome::KilledRunning);
    /// assert_eq!(running.get(), Err(pool::TaskError::Cancelled));
    /// assert_eq!(queued.get(), Err(pool::TaskError::Cancelled));
    /// assert_eq!(pool.apply(nap, 2)?, 2, "the worker was replaced");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn cancel(&self) -> CancelOutcome {
        // Claim the result first: the driver of a killed worker fails the job with `Cancelled`
        // too, and whoever completes the cell first decides what the caller is told.
        if !self.cell.complete(Err(TaskError::Cancelled)) {
            return CancelOutcome::AlreadyDone;
        }
        let killed = self.cancel.as_ref().map_or(0, |c| c.cancel().killed);
        if killed > 0 {
            CancelOutcome::KilledRunning
        } else {
            CancelOutcome::Dequeued
        }
    }

    /// Waits for the result and returns it.
    pub fn get(self) -> Result<T, TaskError> {
        let mut s = self.cell.wait_ready(None);
        s.value.take().unwrap_or(Err(TaskError::Terminated))
    }

    /// Waits at most `timeout`; on timeout the handle is given back, to wait again later.
    pub fn get_timeout(self, timeout: Duration) -> Result<Result<T, TaskError>, AsyncResult<T>> {
        if self.wait_timeout(timeout) {
            Ok(self.get())
        } else {
            Err(self)
        }
    }

    /// Waits until the result is available.
    pub fn wait(&self) {
        drop(self.cell.wait_ready(None));
    }

    /// Waits at most `timeout`; returns whether the result is available.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let deadline = crate::deadline_after(timeout);
        self.cell.wait_ready(Some(deadline)).ready
    }

    /// Whether the result is available.
    pub fn ready(&self) -> bool {
        self.cell.is_ready()
    }

    /// Whether the task succeeded; `None` while it is not finished.
    pub fn successful(&self) -> Option<bool> {
        let s = self.cell.lock();
        s.ready.then_some(s.success)
    }
}

impl<T> Future for AsyncResult<T> {
    type Output = Result<T, TaskError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut s = self.cell.lock();
        if s.ready {
            Poll::Ready(s.value.take().unwrap_or(Err(TaskError::Terminated)))
        } else {
            s.waker = Some(cx.waker().clone());
            Poll::Pending
        }
    }
}

/// Where a job's outcomes go, by global argument index.
pub(crate) trait Sink: Send + Sync {
    /// Argument `index` has no result: `error` says why.
    fn fail(&self, index: u64, error: TaskError);

    /// The outcomes of arguments `first..first + count`, encoded as one
    /// `Vec<Result<R, Failure>>`. `tally(succeeded, failed)` is called before any of them
    /// becomes visible to the caller, so counters are never behind a result.
    fn deliver_encoded(&self, first: u64, count: u64, payload: &[u8], tally: &dyn Fn(u64, u64));
}

/// A worker-side failure as the caller sees it.
pub(crate) fn failure_to_error(failure: Failure) -> TaskError {
    match failure {
        Failure::Panicked(message) => TaskError::Panicked {
            message,
            location: None,
            backtrace: None,
        },
        Failure::PanickedAt {
            message,
            location,
            backtrace,
        } => TaskError::Panicked {
            message,
            location,
            backtrace: backtrace.map(WorkerBacktrace::new),
        },
        Failure::DecodeArgument(m) => TaskError::Argument(m),
        Failure::EncodeResult(m) => TaskError::Result(m),
    }
}

/// Decodes a results payload into per-argument outcomes (exactly `count` of them).
pub(crate) fn decode_outcomes<R: DeserializeOwned>(
    count: u64,
    payload: &[u8],
) -> Vec<Result<R, TaskError>> {
    match codec::decode::<Vec<Result<R, Failure>>>(payload) {
        Ok(v) if v.len() as u64 == count => {
            v.into_iter().map(|o| o.map_err(failure_to_error)).collect()
        }
        Ok(v) => (0..count)
            .map(|_| {
                Err(TaskError::Result(format!(
                    "expected {count} outcomes, got {}",
                    v.len()
                )))
            })
            .collect(),
        Err(e) => (0..count)
            .map(|_| Err(TaskError::Result(e.to_string())))
            .collect(),
    }
}

fn counts<R>(outcomes: &[Result<R, TaskError>]) -> (u64, u64) {
    let ok = outcomes.iter().filter(|o| o.is_ok()).count() as u64;
    (ok, outcomes.len() as u64 - ok)
}

/// One task's result: the cell itself is the sink (no allocation of its own).
impl<R: DeserializeOwned + Send> Sink for ResultCell<R> {
    fn fail(&self, _index: u64, error: TaskError) {
        let _ = self.complete(Err(error));
    }

    fn deliver_encoded(&self, _first: u64, count: u64, payload: &[u8], tally: &dyn Fn(u64, u64)) {
        let (outcome, ok, failed) = decode_one::<R>(count, payload);
        tally(ok, failed);
        if let Some(outcome) = outcome {
            let _ = self.complete(outcome);
        }
    }
}

/// Decodes the outcome of a one-task job (an `apply`) from a `Results` payload that must hold
/// `count` outcomes: the first outcome (`None` for an empty run), and how many outcomes to
/// tally as succeeded and as failed. A payload that does not decode, or holds another number
/// of outcomes, is the outcome's error (all `count` failed).
pub(crate) fn decode_one<R: DeserializeOwned>(
    count: u64,
    payload: &[u8],
) -> (Option<Result<R, TaskError>>, u64, u64) {
    // The usual case, one `Ok`: the sequence's length 1 and `Ok`'s variant index 0
    // (`outcome::ONE_OK`), then the value, decoded alone (all of the rest, within the one
    // decode limit). Anything else, or a value that does not decode, takes the general way
    // below, which says what is wrong.
    if count == 1
        && let Some(value) = payload.strip_prefix(&ONE_OK[..])
        && let Ok(value) = codec::decode::<R>(value)
    {
        return (Some(Ok(value)), 1, 0);
    }
    match codec::decode::<OneRun<R>>(payload) {
        Ok(run) if run.len == count => (
            run.first.map(|o| o.map_err(failure_to_error)),
            run.len - run.failed,
            run.failed,
        ),
        Ok(run) => (
            Some(Err(TaskError::Result(format!(
                "expected {count} outcomes, got {}",
                run.len
            )))),
            0,
            count,
        ),
        Err(e) => (Some(Err(TaskError::Result(e.to_string()))), 0, count),
    }
}

/// The outcome of an `apply`, decoded from a `Results` payload (one `Vec<Result<R, Failure>>`
/// on the wire) without a vector: the first outcome, and how many there were and failed.
struct OneRun<R> {
    first: Option<Result<R, Failure>>,
    len: u64,
    failed: u64,
}

impl<'de, R: Deserialize<'de>> Deserialize<'de> for OneRun<R> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Outcomes<R>(PhantomData<R>);
        impl<'de, R: Deserialize<'de>> Visitor<'de> for Outcomes<R> {
            type Value = OneRun<R>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a sequence of outcomes")
            }

            fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<OneRun<R>, S::Error> {
                let mut run = OneRun {
                    first: None,
                    len: 0,
                    failed: 0,
                };
                while let Some(outcome) = seq.next_element::<Result<R, Failure>>()? {
                    run.len += 1;
                    run.failed += u64::from(outcome.is_err());
                    if run.first.is_none() {
                        run.first = Some(outcome);
                    }
                }
                Ok(run)
            }
        }
        d.deserialize_seq(Outcomes(PhantomData))
    }
}

/// All results of a map, in order, into an [`AsyncResult`] of a `Vec`; the first error (by
/// arrival) fails the whole map at once, as in Python.
///
/// Results arrive in runs (one per `Results` message: consecutive arguments of one job), each
/// decoded straight into a `Vec<R>` outside the lock ([`MapRun`]) and kept as it is; the runs
/// are put together once, when the last one arrives (no copy at all when there is one run).
pub(crate) struct MapSink<R> {
    cell: Arc<ResultCell<Vec<R>>>,
    slots: Mutex<MapSlots<R>>,
    progress: Option<Progress>,
    total: u64,
}

/// A progress hook: called with (tasks finished, tasks in all) after each batch of results.
pub(crate) type Progress = Box<dyn Fn(u64, u64) + Send + Sync>;

struct MapSlots<R> {
    /// The runs received, by the global index of their first result; they never overlap.
    runs: BTreeMap<u64, Vec<R>>,
    missing: u64,
    failed: bool,
}

impl<R> MapSink<R> {
    pub(crate) fn new(
        cell: Arc<ResultCell<Vec<R>>>,
        len: usize,
        progress: Option<Progress>,
    ) -> MapSink<R> {
        if len == 0 {
            let _ = cell.complete(Ok(Vec::new()));
        }
        MapSink {
            cell,
            slots: Mutex::new(MapSlots {
                runs: BTreeMap::new(),
                missing: len as u64,
                failed: false,
            }),
            progress,
            total: len as u64,
        }
    }

    fn lock(&self) -> MutexGuard<'_, MapSlots<R>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Fails the map with `error` (unless it has failed or finished already).
    fn fail_map(&self, error: TaskError) {
        {
            let mut s = self.lock();
            if s.failed || s.missing == 0 {
                return;
            }
            s.failed = true;
        }
        let _ = self.cell.complete(Err(error));
    }

    /// Stores the results of arguments `first..first + values.len()`; the last run completes
    /// the map.
    fn store(&self, first: u64, values: Vec<R>) {
        let n = values.len() as u64;
        if n == 0 {
            return;
        }
        let finished = {
            let mut s = self.lock();
            if s.failed {
                return;
            }
            // A driver reports every argument once, so runs never overlap nor leave the map;
            // if one did, the map fails rather than mix up or lose results.
            let end = first.checked_add(n).filter(|&e| e <= self.total);
            let before_ok = s
                .runs
                .range(..first)
                .next_back()
                .is_none_or(|(&at, run)| at + run.len() as u64 <= first);
            let after_ok =
                end.is_some_and(|e| s.runs.range(first..).next().is_none_or(|(&at, _)| at >= e));
            if !(before_ok && after_ok) {
                s.failed = true;
                drop(s);
                let _ = self.cell.complete(Err(TaskError::Result(format!(
                    "results for arguments {first}..{} overlap others or lie beyond the map's {}",
                    first.saturating_add(n),
                    self.total
                ))));
                return;
            }
            s.runs.insert(first, values);
            s.missing -= n;
            if let Some(progress) = &self.progress {
                progress(self.total - s.missing, self.total);
            }
            if s.missing > 0 {
                return;
            }
            let mut runs = std::mem::take(&mut s.runs).into_values();
            let mut all = runs.next().unwrap_or_default();
            all.reserve_exact(self.total as usize - all.len());
            for run in runs {
                all.extend(run);
            }
            all
        };
        let _ = self.cell.complete(Ok(finished));
    }
}

/// A run of outcomes decoded for a map (or an `apply`): the payload of one `Results` message (one
/// `Vec<Result<R, Failure>>` on the wire) with the values put straight into a `Vec<R>`: the
/// values before the first failure, that failure, and how many outcomes there were and failed.
struct MapRun<R> {
    values: Vec<R>,
    failure: Option<Failure>,
    len: u64,
    failed: u64,
}

impl<R> MapRun<R> {
    /// Adds the next outcome: a value is kept while no failure came before it.
    #[inline]
    fn push(&mut self, outcome: Result<R, Failure>) {
        self.len += 1;
        match outcome {
            Ok(v) if self.failure.is_none() => self.values.push(v),
            Ok(_) => {}
            Err(f) => {
                self.failed += 1;
                self.failure.get_or_insert(f);
            }
        }
    }
}

impl<R: DeserializeOwned> MapRun<R> {
    /// Decodes a `Results` payload that must hold `count` outcomes; the error says what was
    /// wrong with it.
    fn decode(count: u64, payload: &[u8]) -> Result<MapRun<R>, TaskError> {
        // The fast reader first (`wire::outcome`); bytes it gives up on get the full decode,
        // which says what is wrong with them.
        let mut run = MapRun {
            values: Vec::with_capacity(
                usize::try_from(count)
                    .unwrap_or(usize::MAX)
                    .min((1 << 20) / std::mem::size_of::<R>().max(1)),
            ),
            failure: None,
            len: 0,
            failed: 0,
        };
        if let Some(len) = read_outcomes::<R>(payload, |outcome| run.push(outcome)) {
            if len == count {
                return Ok(run);
            }
            return Err(TaskError::Result(format!(
                "expected {count} outcomes, got {len}"
            )));
        }
        match codec::decode::<MapRun<R>>(payload) {
            Ok(run) if run.len == count => Ok(run),
            Ok(run) => Err(TaskError::Result(format!(
                "expected {count} outcomes, got {}",
                run.len
            ))),
            Err(e) => Err(TaskError::Result(e.to_string())),
        }
    }
}

impl<'de, R: Deserialize<'de>> Deserialize<'de> for MapRun<R> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Outcomes<R>(PhantomData<R>);
        impl<'de, R: Deserialize<'de>> Visitor<'de> for Outcomes<R> {
            type Value = MapRun<R>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a sequence of outcomes")
            }

            fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<MapRun<R>, S::Error> {
                // As serde's own `Vec`: believe the announced length for at most 1 MiB of
                // values up front (a hostile length cannot make us allocate), grow beyond.
                let cap = seq
                    .size_hint()
                    .unwrap_or(0)
                    .min((1 << 20) / std::mem::size_of::<R>().max(1));
                let mut run = MapRun {
                    values: Vec::with_capacity(cap),
                    failure: None,
                    len: 0,
                    failed: 0,
                };
                while let Some(outcome) = seq.next_element::<Result<R, Failure>>()? {
                    run.push(outcome);
                }
                Ok(run)
            }
        }
        d.deserialize_seq(Outcomes(PhantomData))
    }
}

impl<R: DeserializeOwned + Send> Sink for MapSink<R> {
    fn fail(&self, _index: u64, error: TaskError) {
        self.fail_map(error);
    }

    fn deliver_encoded(&self, first: u64, count: u64, payload: &[u8], tally: &dyn Fn(u64, u64)) {
        let run = match MapRun::<R>::decode(count, payload) {
            Ok(run) => run,
            Err(e) => {
                tally(0, count);
                return self.fail_map(e);
            }
        };
        tally(run.len - run.failed, run.failed);
        match run.failure {
            None => self.store(first, run.values),
            Some(failure) => self.fail_map(failure_to_error(failure)),
        }
    }
}

/// Results as they arrive, into a channel (for `imap` and `imap_unordered`).
pub(crate) struct StreamSink<R>(pub(crate) crossbeam_channel::Sender<(u64, Result<R, TaskError>)>);

impl<R: DeserializeOwned + Send> Sink for StreamSink<R> {
    fn fail(&self, index: u64, error: TaskError) {
        let _ = self.0.send((index, Err(error)));
    }

    fn deliver_encoded(&self, first: u64, count: u64, payload: &[u8], tally: &dyn Fn(u64, u64)) {
        let outcomes = decode_outcomes::<R>(count, payload);
        let (ok, failed) = counts(&outcomes);
        tally(ok, failed);
        for (i, outcome) in outcomes.into_iter().enumerate() {
            let _ = self.0.send((first + i as u64, outcome));
        }
    }
}
