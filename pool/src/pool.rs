//! The worker pool: a job queue in the parent, one driver thread per worker, and workers that
//! are replaced whenever they die, hang or grow too old.
//!
//! ## Design
//!
//! Every submission becomes a *job*: a chunk of encoded arguments for one task function, plus a
//! sink that receives each argument's outcome by index. Jobs wait in one queue in the parent.
//! Each worker process has a *driver* thread in the parent that takes a job, sends it to its
//! worker over the worker's own pipe, and receives the outcomes. Because the parent always knows
//! which job each worker holds, and the worker's progress slot (shared memory) tells which
//! argument it was running, a worker's death fails exactly that argument:
//!
//! | event while a job runs         | the argument running          | finished, reported | not started |
//! |--------------------------------|-------------------------------|--------------------|-------------|
//! | the task panics                | `Panicked`; the worker lives  | delivered          | run on      |
//! | the worker dies (signal, exit) | `WorkerLost`                  | delivered          | requeued    |
//! | `task_timeout` passes          | `Timeout`; the worker is killed | delivered        | requeued    |
//!
//! A task never runs twice. A worker sends each result before it starts the next task whenever
//! tasks take 50 us or more (and every 50 us of work otherwise), so only fast tasks that finished
//! in the last 50 us before a death can lose their results; those fail with `WorkerLost` too
//! rather than run again (their side effects happened). The dead worker is reaped and replaced
//! by the same driver; workers that keep failing at start-up trip the restart-loop breaker.
//!
//! No shared queue is touched by workers, so a worker killed at any instant cannot corrupt or
//! wedge the pool (Python's Pool hangs in that case, gh-66587, gh-96062).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Exit, PoolError, TaskError};
use crate::result::{
    AsyncResult, Callback, Cell, ErrorCallback, MapSink, OneSink, Progress, Sink, failure_to_error,
};
use crate::start::{self, StartMethod, Worker};
use crate::stats::{PoolStats, WorkerState, WorkerStats};
use crate::task::TaskRef;
use crate::wire::codec;
use crate::wire::protocol::{self, FromWorker, LinkError, ToWorker};

/// A job: one task function over a chunk of arguments.
pub(crate) struct Job {
    id: u64,
    task: TaskRef,
    /// The arguments, one bincode sequence (`Vec<A>`).
    args: Vec<u8>,
    /// The global index of the first argument.
    first: u64,
    count: u64,
    attempts: u32,
    /// Re-encodes arguments `skip..skip + take` of `args` (monomorphised for `A`), for the
    /// rare job that must be split after a worker died.
    reslice: fn(&[u8], usize, usize) -> Option<Vec<u8>>,
    sink: Arc<dyn Sink>,
}

fn reslice<A: Serialize + DeserializeOwned>(
    args: &[u8],
    skip: usize,
    take: usize,
) -> Option<Vec<u8>> {
    let args: Vec<A> = codec::decode(args).ok()?;
    let part = args.get(skip..skip.checked_add(take)?)?;
    codec::encode(part).ok()
}

impl Job {
    fn fail_all(&self, error: &TaskError) {
        for i in 0..self.count {
            self.sink.fail(self.first + i, error.clone());
        }
    }

    /// The job made of this job's arguments from global index `from` on.
    fn rest_from(&self, from: u64) -> Option<Job> {
        self.slice(from, self.first + self.count)
    }

    /// The job made of this job's arguments with global indexes `from..to`.
    fn slice(&self, from: u64, to: u64) -> Option<Job> {
        let skip = from.checked_sub(self.first)?;
        let end = to.checked_sub(self.first)?.min(self.count);
        if skip >= end {
            return None;
        }
        let args = (self.reslice)(&self.args, skip as usize, (end - skip) as usize)?;
        Some(Job {
            id: self.id,
            task: self.task,
            args,
            first: from,
            count: end - skip,
            attempts: self.attempts,
            reslice: self.reslice,
            sink: self.sink.clone(),
        })
    }
}

/// How the pool sizes itself and treats its workers.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) processes: usize,
    pub(crate) max_workers: usize,
    pub(crate) min_idle: usize,
    pub(crate) max_idle: usize,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) max_tasks_per_child: Option<u64>,
    pub(crate) max_memory_per_child: Option<u64>,
    pub(crate) task_timeout: Option<Duration>,
    pub(crate) start_method: StartMethod,
    pub(crate) initializer: Option<(TaskRef, Vec<u8>)>,
    pub(crate) restart_limit: (u32, Duration),
    pub(crate) max_in_flight: usize,
}

/// What the drivers and the handle share.
pub(crate) struct Shared {
    config: Config,
    tx: Sender<Job>,
    rx: Receiver<Job>,
    closed: AtomicBool,
    stop_tx: Mutex<Option<Sender<()>>>,
    stop_rx: Receiver<()>,
    next_job: AtomicU64,
    next_driver: AtomicUsize,
    workers: AtomicUsize,
    idle: AtomicUsize,
    terminated: AtomicBool,
    broken: Mutex<Option<PoolError>>,
    failures: Mutex<Vec<Instant>>,
    drivers: Mutex<Vec<JoinHandle<()>>>,
    seats: RwLock<Vec<Seat>>,
    table: Mutex<HashMap<usize, WorkerStats>>,
    submitted: AtomicU64,
    done: AtomicU64,
    failed: AtomicU64,
    in_flight: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A pool of worker processes, like Python's `multiprocessing.Pool`.
///
/// Build one with [`PoolBuilder`](crate::PoolBuilder). All methods take `&self`, so one pool
/// serves many threads of the parent at once.
///
/// ```
/// fn square(x: u64) -> u64 {
///     x * x
/// }
///
/// let pool = pool::Pool::new(2)?;
/// assert_eq!(pool.apply(square, 7)?, 49);
/// assert_eq!(pool.map(square, 1..=4u64)?, vec![1, 4, 9, 16]);
/// let pending = pool.apply_async(square, 8);
/// assert_eq!(pending.get()?, 64);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Dropping
///
/// Dropping a pool terminates it, as Python's `with Pool() as p:` does on exit: workers are
/// killed, tasks not yet finished fail with [`TaskError::Terminated`], and every worker is
/// reaped before `drop` returns, so nothing is orphaned. Call [`close`](Pool::close) and
/// [`join`](Pool::join) first to let queued tasks finish.
pub struct Pool {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("workers", &self.shared.workers.load(Ordering::Relaxed))
            .field("config", &self.shared.config)
            .finish()
    }
}

impl Pool {
    /// A pool of `processes` workers with default settings (see [`PoolBuilder`](crate::PoolBuilder)).
    pub fn new(processes: usize) -> Result<Pool, PoolError> {
        crate::PoolBuilder::new().processes(processes).build()
    }

    pub(crate) fn start(config: Config) -> Result<Pool, PoolError> {
        start::check_start_method(config.start_method)?;
        let (tx, rx) = crossbeam_channel::unbounded();
        let (stop_tx, stop_rx) = crossbeam_channel::bounded(0);
        let shared = Arc::new(Shared {
            tx,
            rx,
            closed: AtomicBool::new(false),
            stop_tx: Mutex::new(Some(stop_tx)),
            stop_rx,
            next_job: AtomicU64::new(1),
            next_driver: AtomicUsize::new(0),
            workers: AtomicUsize::new(0),
            idle: AtomicUsize::new(0),
            terminated: AtomicBool::new(false),
            broken: Mutex::new(None),
            failures: Mutex::new(Vec::new()),
            drivers: Mutex::new(Vec::new()),
            seats: RwLock::new(Vec::new()),
            table: Mutex::new(HashMap::new()),
            submitted: AtomicU64::new(0),
            done: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            config,
        });
        let pool = Pool { shared };
        // Start the initial workers and wait until each has greeted us (and run the
        // initializer), so a broken initializer or start method is reported here.
        let mut ready = Vec::new();
        for _ in 0..pool.shared.config.processes {
            let (tx, rx) = crossbeam_channel::bounded(1);
            Shared::add_driver(&pool.shared, Some(tx))?;
            ready.push(rx);
        }
        for rx in ready {
            match rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(PoolError::Spawn("a worker driver ended at start".into())),
            }
        }
        Ok(pool)
    }

    fn submit(&self, job: Job) -> Result<(), PoolError> {
        if let Some(e) = lock(&self.shared.broken).clone() {
            return Err(e);
        }
        if self.shared.closed.load(Ordering::SeqCst) {
            return Err(PoolError::Closed);
        }
        let count = job.count;
        self.shared.submitted.fetch_add(count, Ordering::Relaxed);
        self.shared.in_flight.fetch_add(count, Ordering::Relaxed);
        if self.shared.tx.send(job).is_err() {
            return Err(PoolError::Closed);
        }
        Shared::maybe_grow(&self.shared);
        Ok(())
    }

    fn new_job<A: Serialize + DeserializeOwned>(
        &self,
        task: TaskRef,
        args: &[A],
        first: u64,
        sink: Arc<dyn Sink>,
    ) -> Result<Job, TaskError> {
        let bytes = codec::encode(args).map_err(|e| TaskError::Argument(e.to_string()))?;
        Ok(Job {
            id: self.shared.next_job.fetch_add(1, Ordering::Relaxed),
            task,
            args: bytes,
            first,
            count: args.len() as u64,
            attempts: 0,
            reslice: reslice::<A>,
            sink,
        })
    }

    /// Runs `f(arg)` in a worker and waits for the result (Python's `apply`).
    ///
    /// When a worker is idle, the calling thread runs the task on it directly (no hand-off to a
    /// pool thread), so a round trip to a hot worker costs about one pipe round trip.
    pub fn apply<A, R>(&self, f: fn(A) -> R, arg: A) -> Result<R, TaskError>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        let cell = Cell::new(None, None);
        let sink: Arc<dyn Sink> = Arc::new(OneSink(cell.clone()));
        let job = self.new_job(TaskRef::new(f), std::slice::from_ref(&arg), 0, sink)?;
        if let Err(job) = self.shared.run_here(job) {
            self.submit(job)?;
        }
        AsyncResult::new(cell).get()
    }

    /// Runs `f(arg)` in a worker; the result comes later through the [`AsyncResult`].
    pub fn apply_async<A, R>(&self, f: fn(A) -> R, arg: A) -> AsyncResult<R>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.apply_async_inner(f, arg, None, None)
    }

    /// Like [`apply_async`](Pool::apply_async), and runs `callback` with the result, or
    /// `error_callback` with the error, on a pool thread in the parent before the result is
    /// made available (Python's `callback` and `error_callback`). Keep callbacks short, and do
    /// not wait on this pool from one: it runs on the thread that feeds a worker.
    pub fn apply_async_with<A, R>(
        &self,
        f: fn(A) -> R,
        arg: A,
        callback: impl FnOnce(&R) + Send + 'static,
        error_callback: impl FnOnce(&TaskError) + Send + 'static,
    ) -> AsyncResult<R>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.apply_async_inner(
            f,
            arg,
            Some(Box::new(callback)),
            Some(Box::new(error_callback)),
        )
    }

    fn apply_async_inner<A, R>(
        &self,
        f: fn(A) -> R,
        arg: A,
        callback: Option<Callback<R>>,
        error_callback: Option<ErrorCallback>,
    ) -> AsyncResult<R>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        let cell = Cell::new(callback, error_callback);
        let sink: Arc<dyn Sink> = Arc::new(OneSink(cell.clone()));
        match self.new_job(TaskRef::new(f), std::slice::from_ref(&arg), 0, sink) {
            Ok(job) => {
                if let Err(e) = self.submit(job) {
                    cell.complete(Err(e.into()));
                }
            }
            Err(e) => cell.complete(Err(e)),
        }
        AsyncResult::new(cell)
    }

    /// Applies `f` to every argument in workers and returns the results in order (Python's
    /// `map`). The arguments are sent in chunks of `chunksize` (see
    /// [`map_chunked`](Pool::map_chunked)); here the size is chosen automatically. The first
    /// failed task fails the whole map.
    pub fn map<A, R, I>(&self, f: fn(A) -> R, args: I) -> Result<Vec<R>, TaskError>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
    {
        self.map_async(f, args, None).get()
    }

    /// [`map`](Pool::map), calling `progress(done, total)` on a pool thread after each task
    /// (see `progress_bar()` with the `progress` feature).
    pub fn map_with_progress<A, R, I>(
        &self,
        f: fn(A) -> R,
        args: I,
        progress: impl Fn(u64, u64) + Send + Sync + 'static,
    ) -> Result<Vec<R>, TaskError>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
    {
        self.map_async_inner(f, args, None, Some(Box::new(progress)))
            .get()
    }

    /// [`map`](Pool::map) with an explicit chunk size.
    pub fn map_chunked<A, R, I>(
        &self,
        f: fn(A) -> R,
        args: I,
        chunksize: usize,
    ) -> Result<Vec<R>, TaskError>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
    {
        self.map_async(f, args, Some(chunksize)).get()
    }

    /// Python's `starmap`: `f` takes its arguments as one tuple.
    pub fn starmap<A, R, I>(&self, f: fn(A) -> R, args: I) -> Result<Vec<R>, TaskError>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
    {
        self.map(f, args)
    }

    /// Starts a map; the results come later, in order, through the [`AsyncResult`]. `chunksize`
    /// `None` picks one automatically (as Python: about four chunks per worker).
    pub fn map_async<A, R, I>(
        &self,
        f: fn(A) -> R,
        args: I,
        chunksize: Option<usize>,
    ) -> AsyncResult<Vec<R>>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
    {
        self.map_async_inner(f, args, chunksize, None)
    }

    fn map_async_inner<A, R, I>(
        &self,
        f: fn(A) -> R,
        args: I,
        chunksize: Option<usize>,
        progress: Option<Progress>,
    ) -> AsyncResult<Vec<R>>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
    {
        let args: Vec<A> = args.into_iter().collect();
        let cell = Cell::new(None, None);
        let len = args.len();
        let sink: Arc<dyn Sink> = Arc::new(MapSink::new(cell.clone(), len, progress));
        let chunk = chunksize.unwrap_or_else(|| self.auto_chunksize(len)).max(1);
        let task = TaskRef::new(f);
        let mut first = 0u64;
        for chunk_args in args.chunks(chunk) {
            let n = chunk_args.len() as u64;
            match self.new_job(task, chunk_args, first, sink.clone()) {
                Ok(job) => {
                    if let Err(e) = self.submit(job) {
                        cell.complete(Err(e.into()));
                        break;
                    }
                }
                Err(e) => {
                    cell.complete(Err(e));
                    break;
                }
            }
            first += n;
        }
        AsyncResult::new(cell)
    }

    /// Python's heuristic: about four chunks per worker; one per task when a task timeout is
    /// set (a timeout is per task).
    pub(crate) fn auto_chunksize(&self, len: usize) -> usize {
        if self.shared.config.task_timeout.is_some() {
            return 1;
        }
        let workers = self.shared.config.max_workers.max(1);
        len.div_ceil(workers * 4).max(1)
    }

    /// Lazily applies `f` to the arguments, yielding results in argument order (Python's
    /// `imap`). At most `max_in_flight` tasks (a builder setting) are sent ahead, so an endless
    /// iterator works and memory stays bounded.
    pub fn imap<A, R, I>(&self, f: fn(A) -> R, args: I) -> crate::Imap<'_, A, R, I::IntoIter>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
    {
        crate::imap::Imap::new(self, f, args.into_iter(), true, 1)
    }

    /// Like [`imap`](Pool::imap), in chunks of `chunksize`.
    pub fn imap_chunked<A, R, I>(
        &self,
        f: fn(A) -> R,
        args: I,
        chunksize: usize,
    ) -> crate::Imap<'_, A, R, I::IntoIter>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
    {
        crate::imap::Imap::new(self, f, args.into_iter(), true, chunksize)
    }

    /// Like [`imap`](Pool::imap), but yields results as they complete (Python's
    /// `imap_unordered`), each with its argument's index.
    pub fn imap_unordered<A, R, I>(
        &self,
        f: fn(A) -> R,
        args: I,
    ) -> crate::Imap<'_, A, R, I::IntoIter>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
    {
        crate::imap::Imap::new(self, f, args.into_iter(), false, 1)
    }

    pub(crate) fn submit_chunk<A: Serialize + DeserializeOwned>(
        &self,
        task: TaskRef,
        args: &[A],
        first: u64,
        sink: Arc<dyn Sink>,
    ) -> Result<(), TaskError> {
        let job = self.new_job(task, args, first, sink)?;
        self.submit(job).map_err(TaskError::from)
    }

    pub(crate) fn max_in_flight(&self) -> usize {
        self.shared.config.max_in_flight
    }

    /// Stops accepting tasks; queued ones still run. Workers exit once the queue is empty.
    pub fn close(&self) {
        self.shared.close();
    }

    /// Kills every worker now. Unfinished tasks fail with [`TaskError::Terminated`].
    pub fn terminate(&self) {
        self.close();
        self.shared.terminated.store(true, Ordering::SeqCst);
        for stats in lock(&self.shared.table).values() {
            let _ = crate::os::kill(stats.pid, nix::sys::signal::Signal::SIGKILL);
        }
        while let Ok(job) = self.shared.rx.try_recv() {
            self.shared.finish_job_error(&job, &TaskError::Terminated);
        }
    }

    /// Waits for every worker to exit (Python's `join`). Closes the pool first if neither
    /// [`close`](Pool::close) nor [`terminate`](Pool::terminate) was called (where Python raises
    /// an error), so queued tasks finish and then the workers exit.
    pub fn join(&self) {
        self.close();
        loop {
            let handles: Vec<_> = std::mem::take(&mut *lock(&self.shared.drivers));
            if handles.is_empty() {
                break;
            }
            for h in handles {
                let _ = h.join();
            }
        }
    }

    /// [`join`](Pool::join) with a limit (closing the pool first, likewise); returns whether
    /// every worker exited in time.
    pub fn join_timeout(&self, timeout: Duration) -> bool {
        self.close();
        let deadline = Instant::now() + timeout;
        loop {
            if self.shared.workers.load(Ordering::SeqCst) == 0 {
                self.join();
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// A snapshot of the pool's counters and of every worker.
    pub fn stats(&self) -> PoolStats {
        let mut workers: Vec<WorkerStats> = lock(&self.shared.table).values().cloned().collect();
        workers.sort_by_key(|w| w.pid);
        for w in &mut workers {
            if let Some((rss, cpu)) = crate::os::usage(w.pid) {
                w.rss_bytes = rss;
                w.cpu_time = cpu;
            }
            if let Some(since) = w.busy_since {
                w.current_task_runtime = Some(since.elapsed());
            }
        }
        PoolStats {
            submitted: self.shared.submitted.load(Ordering::Relaxed),
            done: self.shared.done.load(Ordering::Relaxed),
            failed: self.shared.failed.load(Ordering::Relaxed),
            in_flight: self.shared.in_flight.load(Ordering::Relaxed),
            queued: self.shared.rx.len() as u64,
            workers,
        }
    }

    /// The number of live workers.
    pub fn workers(&self) -> usize {
        self.shared.workers.load(Ordering::SeqCst)
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.terminate();
        self.join();
    }
}

/// Sending and receiving on a worker, and reacting to its failures.
impl Shared {
    fn add_driver(
        this: &Arc<Shared>,
        ready: Option<crossbeam_channel::Sender<Result<(), PoolError>>>,
    ) -> Result<(), PoolError> {
        this.workers.fetch_add(1, Ordering::SeqCst);
        Shared::spawn_driver(this, ready)
    }

    /// Starts a driver thread for a worker already counted in `workers`.
    fn spawn_driver(
        this: &Arc<Shared>,
        ready: Option<crossbeam_channel::Sender<Result<(), PoolError>>>,
    ) -> Result<(), PoolError> {
        let id = this.next_driver.fetch_add(1, Ordering::Relaxed);
        let shared = this.clone();
        let seat: Seat = Arc::new(Mutex::new(Driver::new(this.clone(), id)));
        this.seats
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(seat.clone());
        let handle = std::thread::Builder::new()
            .name(format!("pool-driver-{id}"))
            .spawn(move || drive(seat, shared, ready))
            .map_err(|e| {
                this.workers.fetch_sub(1, Ordering::SeqCst);
                PoolError::os("spawning a driver thread", e)
            })?;
        lock(&this.drivers).push(handle);
        Ok(())
    }

    /// Starts another worker if jobs wait, nobody is idle and the pool may grow.
    fn maybe_grow(this: &Arc<Shared>) {
        let c = &this.config;
        if this.workers.load(Ordering::SeqCst) >= c.max_workers
            || this.terminated.load(Ordering::SeqCst)
        {
            return;
        }
        let idle = this.idle.load(Ordering::SeqCst);
        let waiting = !this.rx.is_empty();
        if !((waiting && idle == 0) || idle < c.min_idle) {
            return;
        }
        // Reserve a place below the limit, so racing callers never exceed it.
        let reserved = this
            .workers
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |w| {
                (w < c.max_workers).then_some(w + 1)
            })
            .is_ok();
        if reserved {
            let _ = Shared::spawn_driver(this, None);
        }
    }

    fn finish_job_error(&self, job: &Job, error: &TaskError) {
        self.tally(0, job.count);
        job.fail_all(error);
    }

    fn deliver_error(&self, job: &Job, index: u64, error: TaskError) {
        self.tally(0, 1);
        job.sink.fail(index, error);
    }

    /// Runs `job` on an idle worker from the calling thread; gives the job back if no worker is
    /// idle (or the pool cannot take work).
    fn run_here(&self, job: Job) -> Result<(), Job> {
        if self.closed.load(Ordering::SeqCst) || lock(&self.broken).is_some() {
            return Err(job);
        }
        let seats = self.seats.read().unwrap_or_else(|p| p.into_inner());
        for seat in seats.iter() {
            let Ok(mut d) = seat.try_lock() else { continue };
            if d.worker.is_none() {
                continue;
            }
            self.submitted.fetch_add(job.count, Ordering::Relaxed);
            self.in_flight.fetch_add(job.count, Ordering::Relaxed);
            d.set_state(WorkerState::Busy);
            match d.run_job(job) {
                Ran::Done => d.after_task(),
                // Replace the worker now rather than when its driver next wakes up.
                Ran::WorkerGone => {
                    let _ = d.ensure_worker();
                }
            }
            d.set_state(WorkerState::Idle);
            return Ok(());
        }
        Err(job)
    }

    /// Counts outcomes once per batch (the counters are shared by every driver).
    fn tally(&self, ok: u64, failed: u64) {
        if ok > 0 {
            self.done.fetch_add(ok, Ordering::Relaxed);
        }
        if failed > 0 {
            self.failed.fetch_add(failed, Ordering::Relaxed);
        }
        let _ = self
            .in_flight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(ok + failed))
            });
    }

    /// Records a worker start-up failure; trips the breaker past the limit.
    fn record_failure(&self, error: &PoolError) -> bool {
        let (limit, window) = self.config.restart_limit;
        let mut f = lock(&self.failures);
        let now = Instant::now();
        f.retain(|t| now.duration_since(*t) < window);
        f.push(now);
        if f.len() as u32 >= limit {
            let broken = match error {
                PoolError::InitializerFailed { .. } | PoolError::BuildMismatch { .. } => {
                    error.clone()
                }
                _ => PoolError::RestartLimit {
                    failures: f.len() as u32,
                    window,
                },
            };
            *lock(&self.broken) = Some(broken.clone());
            drop(f);
            self.close_with(&broken.into());
            return true;
        }
        false
    }

    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        lock(&self.stop_tx).take();
    }

    fn close_with(&self, error: &TaskError) {
        self.close();
        while let Ok(job) = self.rx.try_recv() {
            self.finish_job_error(&job, error);
        }
    }
}

/// A worker seat: the driver's state behind a mutex. The driver thread holds it only while it
/// starts a worker or runs a job, so a thread calling [`Pool::apply`] can take an idle seat and
/// run its task on that worker directly, with no hand-off between threads.
type Seat = Arc<Mutex<Driver>>;

/// The driver thread of one seat: take jobs, run them, replace the worker when it goes.
fn drive(
    seat: Seat,
    shared: Arc<Shared>,
    ready: Option<crossbeam_channel::Sender<Result<(), PoolError>>>,
) {
    let first = lock(&seat).ensure_worker();
    if let Some(ready) = ready {
        let _ = ready.send(first.clone());
    }
    loop {
        if shared.terminated.load(Ordering::SeqCst) {
            break;
        }
        let started = {
            let mut d = lock(&seat);
            if d.worker.is_none() {
                d.ensure_worker()
            } else {
                Ok(())
            }
        };
        if let Err(e) = started {
            if shared.record_failure(&e) {
                break;
            }
            // Back off a little before trying again (a rate limit, as httpd's spawn rate).
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        let idle_limit = {
            let d = lock(&seat);
            d.set_state(WorkerState::Idle);
            d.idle_limit()
        };
        shared.idle.fetch_add(1, Ordering::SeqCst);
        let next = shared.next_job(idle_limit);
        shared.idle.fetch_sub(1, Ordering::SeqCst);
        match next {
            Some(Ok(job)) => {
                if shared.terminated.load(Ordering::SeqCst) {
                    shared.finish_job_error(&job, &TaskError::Terminated);
                    continue;
                }
                let mut d = lock(&seat);
                d.set_state(WorkerState::Busy);
                // Jobs still waiting and nobody idle: time to grow (if allowed).
                Shared::maybe_grow(&shared);
                match d.run_job(job) {
                    Ran::Done => d.after_task(),
                    Ran::WorkerGone => {}
                }
            }
            Some(Err(())) => {
                if idle_limit.is_some() && lock(&seat).may_shrink() {
                    break;
                }
            }
            None => break,
        }
    }
    let id = {
        let mut d = lock(&seat);
        d.retire();
        d.id
    };
    lock(&shared.table).remove(&id);
    shared
        .seats
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .retain(|s| !Arc::ptr_eq(s, &seat));
    shared.workers.fetch_sub(1, Ordering::SeqCst);
}

/// The outcome of running one job on a worker.
enum Ran {
    /// Every argument has an outcome; the worker is fine.
    Done,
    /// The worker is gone (died, or killed for a timeout); the job was settled.
    WorkerGone,
}

/// A parent thread that owns one worker.
struct Driver {
    shared: Arc<Shared>,
    id: usize,
    worker: Option<Worker>,
    frame: Vec<u8>,
    buf: Vec<u8>,
    tasks_limit: Option<u64>,
}

impl Driver {
    fn new(shared: Arc<Shared>, id: usize) -> Driver {
        Driver {
            shared,
            id,
            worker: None,
            frame: Vec::new(),
            buf: Vec::new(),
            tasks_limit: None,
        }
    }

    /// How long this driver may wait idle before it considers shrinking the pool.
    fn idle_limit(&self) -> Option<Duration> {
        let c = &self.shared.config;
        if c.max_workers <= c.processes && c.max_idle >= c.max_workers {
            return None;
        }
        let idle = self.shared.idle.load(Ordering::SeqCst);
        if idle >= c.max_idle {
            Some(Duration::from_millis(10))
        } else {
            c.idle_timeout
        }
    }

    fn may_shrink(&self) -> bool {
        let c = &self.shared.config;
        let workers = self.shared.workers.load(Ordering::SeqCst);
        let idle = self.shared.idle.load(Ordering::SeqCst);
        workers > c.processes && idle + 1 > c.min_idle
    }

    fn set_state(&self, state: WorkerState) {
        if let Some(w) = lock(&self.shared.table).get_mut(&self.id) {
            w.state = state;
            if state == WorkerState::Idle {
                w.busy_since = None;
                w.current_task = None;
            } else if state == WorkerState::Busy {
                w.busy_since = Some(Instant::now());
            }
        }
    }

    fn ensure_worker(&mut self) -> Result<(), PoolError> {
        if self.worker.is_some() {
            return Ok(());
        }
        let was_replacement = lock(&self.shared.table).contains_key(&self.id);
        let mut worker = start::start(self.shared.config.start_method)?;
        let pid = worker.pid;
        let initializer = self.shared.config.initializer.as_ref();
        if let Err(e) = start::handshake(&mut worker, initializer, &mut self.buf, &mut self.frame) {
            worker.kill();
            let _ = worker.reap();
            return Err(e);
        }
        let mut table = lock(&self.shared.table);
        let restarts = table
            .get(&self.id)
            .map_or(0, |w| w.restarts + u64::from(was_replacement));
        let tasks_failed = table.get(&self.id).map_or(0, |w| w.tasks_failed);
        table.insert(
            self.id,
            WorkerStats {
                pid,
                state: WorkerState::Idle,
                current_task: None,
                busy_since: None,
                current_task_runtime: None,
                tasks_done: 0,
                tasks_failed,
                restarts,
                rss_bytes: 0,
                cpu_time: Duration::ZERO,
                started: Instant::now(),
            },
        );
        drop(table);
        self.tasks_limit = self
            .shared
            .config
            .max_tasks_per_child
            .map(|n| jitter(n, pid));
        self.worker = Some(worker);
        Ok(())
    }

    /// Sends `job` to the worker and collects its outcomes, handling death and timeouts.
    fn run_job(&mut self, mut job: Job) -> Ran {
        let shared = self.shared.clone();
        let Some(worker) = self.worker.as_mut() else {
            let _ = shared.tx_requeue(job);
            return Ran::WorkerGone;
        };
        if let Err(e) = protocol::frame(
            &ToWorker::Run {
                job: job.id,
                task: job.task,
            },
            &job.args,
            &mut self.frame,
        ) {
            shared.finish_job_error(&job, &TaskError::Argument(e.to_string()));
            return Ran::Done;
        }
        let mut reported = job.first; // every index below this has an outcome
        let end = job.first + job.count;
        if worker.link.send(&self.frame).is_err() {
            return self.lost(job, reported, None);
        }
        let timeout = shared.config.task_timeout;
        let slice = timeout.map_or(Duration::from_millis(100), |t| {
            (t / 4).clamp(Duration::from_millis(1), Duration::from_millis(100))
        });
        let mut watched: Option<(u64, Instant)> = None;
        loop {
            let Some(worker) = self.worker.as_mut() else {
                return Ran::WorkerGone;
            };
            match worker.link.recv(&mut self.buf, Some(slice)) {
                Ok(()) => {
                    let (header, payload) = match protocol::unframe::<FromWorker>(&self.buf) {
                        Ok(frame) => frame,
                        Err(_) => {
                            // A worker that speaks nonsense is as good as dead.
                            self.kill_worker();
                            return self.lost(job, reported, None);
                        }
                    };
                    match header {
                        FromWorker::Results {
                            job: id,
                            first,
                            count,
                            done,
                        } if id == job.id => {
                            let start = job.first + first;
                            let n = count.min(end.saturating_sub(start));
                            if start == reported && n > 0 {
                                let id = self.id;
                                job.sink.deliver_encoded(start, n, payload, &|ok, failed| {
                                    shared.tally(ok, failed);
                                    if let Some(w) = lock(&shared.table).get_mut(&id) {
                                        w.tasks_done += ok;
                                        w.tasks_failed += failed;
                                    }
                                });
                                reported = start + n;
                            }
                            if done {
                                for i in reported..end {
                                    shared.deliver_error(
                                        &job,
                                        i,
                                        TaskError::Result("the worker sent no outcome".into()),
                                    );
                                }
                                return Ran::Done;
                            }
                        }
                        FromWorker::ChunkFailed { job: id, failure } if id == job.id => {
                            let error = failure_to_error(failure);
                            for i in reported..end {
                                shared.deliver_error(&job, i, error.clone());
                            }
                            return Ran::Done;
                        }
                        _ => continue,
                    }
                }
                Err(LinkError::Timeout) => {
                    if shared.terminated.load(Ordering::SeqCst) {
                        self.kill_worker();
                        job.first = reported;
                        job.count = end - reported;
                        shared.finish_job_error(&job, &TaskError::Terminated);
                        return Ran::WorkerGone;
                    }
                    let current = worker.slot.current_item();
                    if let Some(w) = lock(&shared.table).get_mut(&self.id) {
                        w.current_task = current;
                    }
                    if let (Some(limit), Some(item)) = (timeout, current) {
                        match watched {
                            Some((seen, since)) if seen == item => {
                                if since.elapsed() >= limit {
                                    self.kill_worker();
                                    return self.lost(
                                        job,
                                        reported,
                                        Some(TaskError::Timeout { limit }),
                                    );
                                }
                            }
                            _ => watched = Some((item, Instant::now())),
                        }
                    }
                }
                Err(LinkError::Disconnected) | Err(LinkError::Broken) => {
                    return self.lost(job, reported, None);
                }
            }
        }
    }

    fn kill_worker(&mut self) {
        if let Some(w) = &self.worker {
            let _ = crate::os::kill(w.pid, nix::sys::signal::Signal::SIGKILL);
        }
    }

    /// The worker is gone while holding `job`: settle the job and drop the worker.
    /// `cause` is the error for the running argument (default: `WorkerLost` with its exit).
    fn lost(&mut self, job: Job, reported: u64, cause: Option<TaskError>) -> Ran {
        let shared = self.shared.clone();
        let Some(mut worker) = self.worker.take() else {
            let _ = shared.tx_requeue(job);
            return Ran::WorkerGone;
        };
        let pid = worker.pid;
        // The link failed: whether the worker died or only its pipe broke, make sure it is gone
        // before waiting for it (a dying process keeps the status it is dying with).
        worker.kill();
        let exit = worker.reap().unwrap_or(Exit::Code(-1));
        let cause = cause.unwrap_or(TaskError::WorkerLost { pid, exit });
        if let Some(w) = lock(&shared.table).get_mut(&self.id) {
            w.state = WorkerState::Starting;
        }
        let end = job.first + job.count;
        let words = worker.slot.words();
        let running = if words.job.load(Ordering::Acquire) == job.id {
            worker.slot.current_item().map(|i| job.first + i)
        } else {
            None
        };
        match running {
            Some(item) if item >= reported && item < end => {
                // Arguments that finished but whose results were not sent yet: they ran (their
                // side effects happened), so they are not run again; their results are lost.
                for i in reported..item {
                    shared.deliver_error(&job, i, TaskError::WorkerLost { pid, exit });
                }
                shared.deliver_error(&job, item, cause);
                if let Some(w) = lock(&shared.table).get_mut(&self.id) {
                    w.tasks_failed += 1;
                }
                if let Some(rest) = job.rest_from(item + 1) {
                    let _ = shared.tx_requeue(rest);
                }
            }
            _ => {
                // Nothing of the job started: run it again elsewhere, a few times at most.
                let mut rest = match job.rest_from(reported) {
                    Some(rest) => rest,
                    None => return Ran::WorkerGone,
                };
                rest.attempts += 1;
                if rest.attempts >= 3 {
                    shared.finish_job_error(&rest, &cause);
                } else {
                    let _ = shared.tx_requeue(rest);
                }
            }
        }
        Ran::WorkerGone
    }

    /// Recycles the worker after a task if it reached its task or memory limit.
    fn after_task(&mut self) {
        let Some(worker) = &self.worker else { return };
        let done = worker.slot.words().done.load(Ordering::Relaxed);
        let too_old = self.tasks_limit.is_some_and(|limit| done >= limit);
        let too_big = self
            .shared
            .config
            .max_memory_per_child
            .is_some_and(|max| crate::os::rss(worker.pid).is_some_and(|rss| rss > max));
        if too_old || too_big {
            self.set_state(WorkerState::Retiring);
            // Start the replacement before the old worker goes, so the seat is back in service
            // as soon as a worker can be started; the old one exits and is reaped off this
            // thread. (If the start fails, the driver loop retries before the next job.)
            let old = self.worker.take();
            let _ = self.ensure_worker();
            if let Some(old) = old {
                let held = Arc::new(Mutex::new(Some(old)));
                let theirs = held.clone();
                let spawned = std::thread::Builder::new()
                    .name("pool-retire".into())
                    .spawn(move || {
                        if let Some(w) = lock(&theirs).take() {
                            finish_worker(w);
                        }
                    });
                if spawned.is_err()
                    && let Some(w) = lock(&held).take()
                {
                    finish_worker(w);
                }
            }
        }
    }

    /// Asks the worker to exit and reaps it (killing it if it does not go in time).
    fn retire(&mut self) {
        if let Some(worker) = self.worker.take() {
            finish_worker(worker);
        }
    }
}

/// Asks `worker` to exit and reaps it, killing it if it does not go within 2 s.
fn finish_worker(mut worker: Worker) {
    let mut frame = Vec::new();
    if protocol::frame(&ToWorker::Exit, &[], &mut frame).is_ok() {
        let _ = worker.link.send(&frame);
    }
    if !worker.wait_exit(Duration::from_secs(2)) {
        worker.kill();
    }
    let _ = worker.reap();
}

impl Shared {
    /// Puts a job back in the queue (also after close: it was accepted before).
    fn tx_requeue(&self, job: Job) -> Result<(), ()> {
        if self.terminated.load(Ordering::SeqCst) {
            self.finish_job_error(&job, &TaskError::Terminated);
            return Err(());
        }
        self.tx.send(job).map_err(|e| {
            self.finish_job_error(&e.0, &TaskError::Terminated);
        })
    }

    /// The next job for an idle driver; `None` when the driver should stop (closed and
    /// drained), `Some(Err(()))` after `idle` passed with no job.
    fn next_job(&self, idle: Option<Duration>) -> Option<Result<Job, ()>> {
        if self.closed.load(Ordering::SeqCst) {
            return self.rx.try_recv().ok().map(Ok);
        }
        let wait = idle.unwrap_or(Duration::from_secs(3600));
        crossbeam_channel::select! {
            recv(self.rx) -> job => job.ok().map(Ok),
            recv(self.stop_rx) -> _ => self.rx.try_recv().ok().map(Ok),
            default(wait) => Some(Err(())),
        }
    }
}

/// `n` give or take 10%, different per worker, so workers do not all restart at once.
fn jitter(n: u64, seed: u32) -> u64 {
    let spread = n / 10;
    if spread == 0 {
        return n.max(1);
    }
    let x = u64::from(seed).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 33;
    (n - spread + x % (2 * spread + 1)).max(1)
}
