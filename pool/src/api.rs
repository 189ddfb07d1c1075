//! The pool's public face: [`PoolBuilder`], the [`Settings`] it resolves to, and [`Pool`], the
//! handle callers submit work through.
//!
//! Every submission becomes a [`Job`] (one task function over a chunk of arguments, and a sink
//! for its outcomes). A call goes down from here and never comes back: the handle makes the job,
//! runs it on an idle worker from the calling thread (`driver::run_here`) or queues it in the
//! [`Registry`], where a driver thread takes it and sends it over the wire to its worker.
//!
//! No shared queue is touched by workers, so a worker killed at any instant cannot corrupt or
//! wedge the pool (Python's Pool hangs in that case, gh-66587, gh-96062).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::chunking::ChunkPlan;
use crate::driver::{self, Applied};
use crate::error::{ConfigError, PoolError, SpawnErrorKind, TaskError};
use crate::job::{CancelToken, Job};
use crate::registry::Registry;
use crate::result::{AsyncResult, Callback, ErrorCallback, MapSink, Progress, ResultCell, Sink};
use crate::start::{self, StartMethod};
use crate::stats::PoolStats;
use crate::task::TaskRef;
use crate::wire::args::{self, Args};

/// Builds a [`Pool`].
///
/// ```
/// use std::time::Duration;
///
/// fn setup(level: u32) {
///     assert!(level > 0);
/// }
///
/// let pool = pool::PoolBuilder::new()
///     .processes(2)
///     .initializer(setup, 3)
///     .max_tasks_per_child(1000)
///     .task_timeout(Duration::from_secs(60))
///     .build()?;
/// # drop(pool);
/// # Ok::<(), pool::PoolError>(())
/// ```
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct PoolBuilder {
    processes: Option<usize>,
    max_workers: Option<usize>,
    min_idle: usize,
    max_idle: Option<usize>,
    idle_timeout: Option<Duration>,
    max_tasks_per_child: Option<u64>,
    max_memory_per_child: Option<u64>,
    task_timeout: Option<Duration>,
    start_method: Option<StartMethod>,
    initializer: Option<(TaskRef, Args)>,
    initializer_error: Option<ConfigError>,
    restart_limit: (u32, Duration),
    max_in_flight: Option<usize>,
    warm_spare: bool,
    #[cfg(feature = "nats")]
    cluster: Option<crate::cluster::NatsCluster>,
}

impl Default for PoolBuilder {
    fn default() -> Self {
        PoolBuilder::new()
    }
}

impl PoolBuilder {
    /// Default settings: one worker per usable CPU, no limits, the default start method.
    pub fn new() -> PoolBuilder {
        PoolBuilder {
            processes: None,
            max_workers: None,
            min_idle: 0,
            max_idle: None,
            idle_timeout: None,
            max_tasks_per_child: None,
            max_memory_per_child: None,
            task_timeout: None,
            start_method: None,
            initializer: None,
            initializer_error: None,
            restart_limit: (5, Duration::from_secs(10)),
            max_in_flight: None,
            warm_spare: false,
            #[cfg(feature = "nats")]
            cluster: None,
        }
    }

    /// Runs the pool's tasks on a NATS JetStream cluster of nodes instead of local workers
    /// (feature `nats`); every `Pool` method works the same. See [`crate::cluster`] for the
    /// nodes, the guarantees and where they differ from a local pool's. `processes`,
    /// `max_workers` and the sizing settings then do not apply (each node sizes its own local
    /// pool); `task_timeout` is enforced on the nodes; an `initializer` is refused by `build`
    /// ([`ClusterError::Config`](crate::cluster::ClusterError::Config)).
    #[cfg(feature = "nats")]
    pub fn cluster(mut self, cluster: crate::cluster::NatsCluster) -> Self {
        self.cluster = Some(cluster);
        self
    }

    /// How many workers to start (and keep, at least). Default: the CPUs this process may use,
    /// affinity and cgroup CPU quota respected.
    pub fn processes(mut self, n: usize) -> Self {
        self.processes = Some(n);
        self
    }

    /// Runs `f(arg)` in every worker when it starts (Python's `initializer`/`initargs`). A panic
    /// there is reported as [`PoolError::InitializerFailed`]: by `build` for the first workers,
    /// and through the restart breaker ([`restart_limit`](PoolBuilder::restart_limit)) later.
    pub fn initializer<A: Serialize + DeserializeOwned>(mut self, f: fn(A), arg: A) -> Self {
        match args::encode(std::slice::from_ref(&arg)) {
            Ok(buf) => self.initializer = Some((TaskRef::new(f), buf)),
            Err(e) => {
                self.initializer_error = Some(e.into_config_error(ConfigError::InitializerArgument))
            }
        }
        self
    }

    /// Replace a worker after it has run about `n` tasks (±10% per worker, so that workers do
    /// not all restart at once). Python's `maxtasksperchild`.
    pub fn max_tasks_per_child(mut self, n: u64) -> Self {
        self.max_tasks_per_child = Some(n.max(1));
        self
    }

    /// Replace a worker whose resident memory exceeds `bytes` after a task.
    pub fn max_memory_per_child(mut self, bytes: u64) -> Self {
        self.max_memory_per_child = Some(bytes);
        self
    }

    /// Fail a task that runs longer than `timeout` with [`TaskError::Timeout`], and kill and
    /// replace its worker. The limit is checked a few times per `timeout`. A zero timeout is
    /// refused by [`build`](PoolBuilder::build) ([`ConfigError::ZeroTaskTimeout`]): leave the
    /// setting out for no limit.
    pub fn task_timeout(mut self, timeout: Duration) -> Self {
        self.task_timeout = Some(timeout);
        self
    }

    /// Let the pool grow up to `n` workers when tasks wait and no worker is idle (default: no
    /// growth beyond `processes`).
    pub fn max_workers(mut self, n: usize) -> Self {
        self.max_workers = Some(n);
        self
    }

    /// Keep at least `n` idle workers while below `max_workers` (php-fpm's `min_spare_servers`).
    pub fn min_idle(mut self, n: usize) -> Self {
        self.min_idle = n;
        self
    }

    /// Retire idle workers beyond `n` (never going below `processes`).
    pub fn max_idle(mut self, n: usize) -> Self {
        self.max_idle = Some(n);
        self
    }

    /// Retire a worker idle for this long (never going below `processes`).
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = Some(timeout);
        self
    }

    /// How workers are created (default: [`default_start_method`](crate::default_start_method)).
    pub fn start_method(mut self, method: StartMethod) -> Self {
        self.start_method = Some(method);
        self
    }

    /// Stop replacing workers after `failures` start-up failures within `window` (default 5
    /// in 10 s); tasks then fail with [`PoolError::RestartLimit`] (or the initializer's error).
    ///
    /// Counted are the workers' own failures: the initializer's error or panic, an exit, a
    /// crash (SIGSEGV, SIGABRT, ...), a hang. A worker killed from outside while it starts
    /// (SIGKILL, SIGTERM) is no restart loop: such deaths count only against 20 times
    /// `failures` in the same window.
    pub fn restart_limit(mut self, failures: u32, window: Duration) -> Self {
        self.restart_limit = (failures.max(1), window);
        self
    }

    /// How many tasks `imap` sends ahead of what has been consumed (default: 4 per worker, at
    /// least 16).
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = Some(n.max(1));
        self
    }

    /// Keep one more worker started, greeted and initialised, beside the pool's workers: a
    /// worker that dies (a crash, a kill, a timeout, a cancel) or is recycled
    /// (`max_tasks_per_child`, `max_memory_per_child`) is replaced by it at once, and the next
    /// spare is started in the background 5 ms later (so that its start does not slow the
    /// replacement's first tasks; a worker lost meanwhile waits for it). Replacing a worker
    /// then costs microseconds instead of a start (a `fork` of the pool's process grows with
    /// its size; `Spawn` pays the program's start-up). The price: one more idle process, all
    /// the time. Default: off.
    ///
    /// A spare runs no task until it replaces a worker, and then is exactly that worker; one
    /// found dead when needed is reaped and a worker is started as without a spare. The
    /// restart breaker counts the drivers' own starts only.
    ///
    /// ```
    /// fn boom(_: u32) {
    ///     std::process::abort();
    /// }
    ///
    /// let pool = pool::PoolBuilder::new()
    ///     .processes(1)
    ///     .warm_spare(true)
    ///     .build()?;
    /// assert!(matches!(pool.apply(boom, 0), Err(pool::TaskError::WorkerLost { .. })));
    /// assert_eq!(pool.apply(|x: u32| x + 1, 1)?, 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn warm_spare(mut self, on: bool) -> Self {
        self.warm_spare = on;
        self
    }

    /// Starts the workers. Returns once every initial worker has started and run the
    /// initializer.
    pub fn build(self) -> Result<Pool, PoolError> {
        if let Some(e) = self.initializer_error {
            return Err(e.into());
        }
        if self.task_timeout == Some(Duration::ZERO) {
            return Err(ConfigError::ZeroTaskTimeout.into());
        }
        #[cfg(feature = "nats")]
        if let Some(cluster) = self.cluster {
            if self.initializer.is_some() {
                return Err(crate::cluster::ClusterError::Config {
                    detail: "an initializer does not run on cluster nodes".to_owned(),
                }
                .into());
            }
            let settings = Settings {
                processes: 0,
                // The cluster's one dispatcher counts as the one "worker", so the pool never
                // grows local workers.
                max_workers: 1,
                min_idle: 0,
                max_idle: 1,
                idle_timeout: None,
                max_tasks_per_child: None,
                max_memory_per_child: None,
                task_timeout: self.task_timeout,
                start_method: StartMethod::Fork,
                initializer: None,
                restart_limit: self.restart_limit,
                max_in_flight: self.max_in_flight.unwrap_or(cluster.default_in_flight()),
                warm_spare: false,
                cluster: Some(cluster),
            };
            return Ok(Pool {
                registry: crate::cluster::start(settings)?,
            });
        }
        let processes = self.processes.unwrap_or_else(ipc_shm::os::available_cpus);
        if processes == 0 && self.max_workers.unwrap_or(0) == 0 {
            return Err(ConfigError::NoWorkers.into());
        }
        let max_workers = self.max_workers.unwrap_or(processes).max(processes).max(1);
        let settings = Settings {
            processes,
            max_workers,
            min_idle: self.min_idle.min(max_workers),
            max_idle: self.max_idle.unwrap_or(max_workers),
            idle_timeout: self.idle_timeout,
            max_tasks_per_child: self.max_tasks_per_child,
            max_memory_per_child: self.max_memory_per_child,
            task_timeout: self.task_timeout,
            start_method: self
                .start_method
                .unwrap_or_else(crate::default_start_method),
            initializer: self.initializer,
            restart_limit: self.restart_limit,
            max_in_flight: self.max_in_flight.unwrap_or((max_workers * 4).max(16)),
            warm_spare: self.warm_spare,
            #[cfg(feature = "nats")]
            cluster: None,
        };
        Pool::start(settings)
    }
}

/// How the pool sizes itself and treats its workers: what [`PoolBuilder::build`] resolves
/// the builder's choices to.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) processes: usize,
    pub(crate) max_workers: usize,
    pub(crate) min_idle: usize,
    pub(crate) max_idle: usize,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) max_tasks_per_child: Option<u64>,
    pub(crate) max_memory_per_child: Option<u64>,
    pub(crate) task_timeout: Option<Duration>,
    pub(crate) start_method: StartMethod,
    pub(crate) initializer: Option<(TaskRef, Args)>,
    pub(crate) restart_limit: (u32, Duration),
    pub(crate) max_in_flight: usize,
    /// Keep a warm spare worker (`spare`).
    pub(crate) warm_spare: bool,
    /// Where the tasks run when not on local workers (feature `nats`).
    #[cfg(feature = "nats")]
    pub(crate) cluster: Option<crate::cluster::NatsCluster>,
}

/// A pool of worker processes, like Python's `multiprocessing.Pool`.
///
/// Build one with [`PoolBuilder`]. All methods take `&self`, so one pool
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
    registry: Arc<Registry>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("workers", &self.registry.workers.load(Ordering::Relaxed))
            .field("settings", &self.registry.settings)
            .finish()
    }
}

impl Pool {
    /// A pool of `processes` workers with default settings (see [`PoolBuilder`]).
    pub fn new(processes: usize) -> Result<Pool, PoolError> {
        crate::PoolBuilder::new().processes(processes).build()
    }

    /// Starts the initial workers and waits until each has greeted the pool (and run the
    /// initializer), so that a broken initializer or start method is reported here.
    fn start(settings: Settings) -> Result<Pool, PoolError> {
        start::check_start_method(settings.start_method)?;
        let pool = Pool {
            registry: Arc::new(Registry::new(settings)),
        };
        let mut ready = Vec::new();
        for _ in 0..pool.registry.settings.processes {
            let (tx, rx) = crossbeam_channel::bounded(1);
            driver::add(&pool.registry, Some(tx))?;
            ready.push(rx);
        }
        for rx in ready {
            match rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(SpawnErrorKind::DriverEnded.into()),
            }
        }
        if pool.registry.settings.warm_spare {
            crate::spare::Spare::start_keeper(&pool.registry)
                .map_err(|e| PoolError::os("spawning the spare's keeper thread", e))?;
        }
        Ok(pool)
    }

    fn submit(&self, job: Job) -> Result<(), PoolError> {
        Registry::submit(&self.registry, job)
    }

    fn new_job<A: Serialize + DeserializeOwned>(
        &self,
        task: TaskRef,
        args: &[A],
        first: u64,
        sink: Arc<dyn Sink>,
        cancel: Option<Arc<CancelToken>>,
    ) -> Result<Job, TaskError> {
        let areas = !self.registry.is_cluster();
        Job::new(
            self.registry.next_job_id(),
            task,
            args,
            first,
            sink,
            cancel,
            areas,
        )
    }

    /// Runs `f(arg)` in a worker and waits for the result (Python's `apply`).
    ///
    /// When a worker is idle, the calling thread runs the task on it directly (no hand-off to a
    /// pool thread, and no job, result cell or allocation unless something goes wrong), so a
    /// round trip to a hot worker costs about one pipe round trip. A worker running an `apply`
    /// this way shows [`Busy`](crate::WorkerState::Busy) in [`stats`](Pool::stats) at once, and
    /// its `current_task_runtime` from the first liveness check (100 ms, or a quarter of
    /// `task_timeout`) on.
    pub fn apply<A, R>(&self, f: fn(A) -> R, arg: A) -> Result<R, TaskError>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        let task = TaskRef::new(f);
        match driver::apply_here(&self.registry, task, &arg) {
            Applied::Done(outcome) => return outcome,
            Applied::Pending(cell) => return AsyncResult::new(cell).get(),
            Applied::NoSeat => {}
        }
        let cell = ResultCell::new(None, None);
        let sink: Arc<dyn Sink> = cell.clone();
        let job = self.new_job(task, std::slice::from_ref(&arg), 0, sink, None)?;
        if let Err(job) = driver::run_here(&self.registry, job, driver::Blocking::Freely) {
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
    /// not wait on this pool from one: it runs on the thread that feeds a worker. (A task
    /// refused at submission, or cancelled, has its `error_callback` run on the calling
    /// thread.)
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
        let cell = ResultCell::new(callback, error_callback);
        let sink: Arc<dyn Sink> = cell.clone();
        let cancel = CancelToken::new();
        let args = std::slice::from_ref(&arg);
        match self.new_job(TaskRef::new(f), args, 0, sink, Some(cancel.clone())) {
            Ok(job) => {
                if let Err(e) = self.submit(job) {
                    let _ = cell.complete(Err(e.into()));
                }
            }
            Err(e) => {
                let _ = cell.complete(Err(e));
            }
        }
        AsyncResult::cancellable(cell, cancel)
    }

    /// Applies `f` to every argument in workers and returns the results in order (Python's
    /// `map`). The arguments are sent in chunks (see [`map_chunked`](Pool::map_chunked) for a
    /// size of your own); here the sizes are chosen automatically, shrinking toward the end of
    /// the map (see [`map_async`](Pool::map_async)). The first failed task fails the whole map.
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
        self.map_async_inner(f, args, None, Some(Box::new(progress)), None, None)
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

    /// [`starmap`](Pool::starmap) with an explicit chunk size (Python's `starmap(func,
    /// iterable, chunksize)`).
    ///
    /// ```
    /// fn add((a, b): (u32, u32)) -> u32 {
    ///     a + b
    /// }
    ///
    /// let pool = pool::Pool::new(2)?;
    /// let sums = pool.starmap_chunked(add, vec![(1, 2), (3, 4), (5, 6)], 2)?;
    /// assert_eq!(sums, vec![3, 7, 11]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn starmap_chunked<A, R, I>(
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
        self.map_chunked(f, args, chunksize)
    }

    /// Python's `starmap_async`: [`starmap`](Pool::starmap) whose results come later, in order,
    /// through the [`AsyncResult`]; `chunksize` as in [`map_async`](Pool::map_async).
    ///
    /// ```
    /// fn mul((a, b): (u64, u64)) -> u64 {
    ///     a * b
    /// }
    ///
    /// let pool = pool::Pool::new(2)?;
    /// let pending = pool.starmap_async(mul, vec![(2, 3), (4, 5)], None);
    /// assert_eq!(pending.get()?, vec![6, 20]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn starmap_async<A, R, I>(
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
        self.map_async(f, args, chunksize)
    }

    /// Starts a map; the results come later, in order, through the [`AsyncResult`]. `chunksize`
    /// `None` picks the sizes automatically: chunks that shrink toward the end of the map (half
    /// of an even share of what is left per worker, down to 1/64 of a share), so the workers
    /// finish together even when later tasks take longer, and that hold about a mebibyte of
    /// encoded arguments at most (one argument at least; the first argument's size decides),
    /// so that copying large arguments in and out overlaps with running them. Python uses one
    /// size, about four chunks per worker; pass `Some(size)` for that behaviour.
    /// [`AsyncResult::cancel`] cancels every chunk of the map.
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
        self.map_async_inner(f, args, chunksize, None, None, None)
    }

    /// Like [`map_async`](Pool::map_async), and runs `callback` with the results, or
    /// `error_callback` with the map's (first) error, as
    /// [`apply_async_with`](Pool::apply_async_with) does: once, on a pool thread in the parent
    /// (on the calling thread when the map fails at submission or is cancelled), before the
    /// result is made available (Python's `map_async(..., callback, error_callback)`). Keep
    /// callbacks short, and do not wait on this pool from one.
    ///
    /// ```
    /// fn square(x: u64) -> u64 {
    ///     x * x
    /// }
    ///
    /// let pool = pool::Pool::new(2)?;
    /// let (tx, rx) = std::sync::mpsc::channel();
    /// let pending = pool.map_async_with(
    ///     square,
    ///     1..=3u64,
    ///     None,
    ///     move |squares: &Vec<u64>| tx.send(squares.iter().sum::<u64>()).unwrap(),
    ///     |e| eprintln!("map failed: {e}"),
    /// );
    /// assert_eq!(pending.get()?, vec![1, 4, 9]);
    /// assert_eq!(rx.recv()?, 14);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn map_async_with<A, R, I>(
        &self,
        f: fn(A) -> R,
        args: I,
        chunksize: Option<usize>,
        callback: impl FnOnce(&Vec<R>) + Send + 'static,
        error_callback: impl FnOnce(&TaskError) + Send + 'static,
    ) -> AsyncResult<Vec<R>>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
    {
        self.map_async_inner(
            f,
            args,
            chunksize,
            None,
            Some(Box::new(callback)),
            Some(Box::new(error_callback)),
        )
    }

    fn map_async_inner<A, R, I>(
        &self,
        f: fn(A) -> R,
        args: I,
        chunksize: Option<usize>,
        progress: Option<Progress>,
        callback: Option<Callback<Vec<R>>>,
        error_callback: Option<ErrorCallback>,
    ) -> AsyncResult<Vec<R>>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
    {
        let args: Vec<A> = args.into_iter().collect();
        let cell = ResultCell::new(callback, error_callback);
        let len = args.len();
        let sink: Arc<dyn Sink> = Arc::new(MapSink::new(cell.clone(), len, progress));
        let plan = match chunksize {
            Some(size) => ChunkPlan::Fixed(size),
            None => self.auto_chunks(&args),
        };
        let task = TaskRef::new(f);
        let cancel = CancelToken::new();
        // The first chunk of every worker is encoded before any is queued, and they are queued
        // at once (see `registry`'s doorbell), so that a map starts on every worker together;
        // the others are queued as they are encoded, while the workers run the first ones.
        // Chunks of large arguments are queued at once: encoding the next one takes long
        // enough that the first worker should be under way meanwhile (1 MiB arguments: 16.2%
        // of memcpy queued one by one, 13.5% when every chunk was encoded before any was
        // queued).
        let mut together = self.registry.settings.max_workers.max(1);
        let mut jobs = Vec::new();
        let mut first = 0usize;
        for size in plan.sizes(len) {
            let chunk_args = &args[first..first + size];
            if let Err(error) =
                self.chunk_jobs(task, chunk_args, first as u64, &sink, &cancel, &mut jobs)
            {
                let _ = cell.complete(Err(error));
                return AsyncResult::cancellable(cell, cancel);
            }
            first += size;
            let large = jobs.iter().map(|j| j.args.len()).sum::<usize>() >= QUEUE_AT_ONCE;
            if jobs.len() >= together || large || first == len {
                if let Err(e) = Registry::submit_all(&self.registry, std::mem::take(&mut jobs)) {
                    let _ = cell.complete(Err(e.into()));
                    return AsyncResult::cancellable(cell, cancel);
                }
                together = 1;
            }
        }
        AsyncResult::cancellable(cell, cancel)
    }

    /// The chunks a map of `args` is cut into when the caller gives no size: one task each
    /// when a task timeout is set (a timeout is per task); on a cluster, its own fixed size;
    /// otherwise guided chunks (see `chunking`), shrinking toward the end of the map and
    /// holding about a mebibyte of arguments at most, as the first argument's encoded size
    /// tells (counted, not written: a byte string costs nothing to size).
    pub(crate) fn auto_chunks<A: Serialize>(&self, args: &[A]) -> ChunkPlan {
        let len = args.len();
        if self.registry.settings.task_timeout.is_some() {
            return ChunkPlan::Fixed(1);
        }
        #[cfg(feature = "nats")]
        if let Some(cluster) = &self.registry.settings.cluster {
            return ChunkPlan::Fixed(cluster.auto_chunksize(len));
        }
        // An argument that cannot be encoded fails the map when its chunk is encoded.
        let arg_bytes = args
            .first()
            .and_then(|a| ipc_shm::codec::encoded_len(a).ok())
            .unwrap_or(0);
        ChunkPlan::guided(len, self.registry.settings.max_workers, arg_bytes)
    }

    /// Lazily applies `f` to the arguments, yielding results in argument order (Python's
    /// `imap`). At most `max_in_flight` tasks (a builder setting) are sent ahead, so an endless
    /// iterator works and memory stays bounded. Dropping the [`Imap`](crate::Imap) before its
    /// end cancels the tasks it has in flight.
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

    /// Like [`imap`](Pool::imap), but yields each result as soon as it arrives (Python's
    /// `imap_unordered`): the same `Result<R, TaskError>` items, one per argument, in completion
    /// order rather than argument order, and without the argument's index (return it from the
    /// task, as in Python, when you need it).
    ///
    /// ```
    /// fn tagged(x: u64) -> (u64, u64) {
    ///     (x, x * x)
    /// }
    ///
    /// let pool = pool::Pool::new(2)?;
    /// let mut got: Vec<(u64, u64)> = pool
    ///     .imap_unordered(tagged, 0..4u64)
    ///     .collect::<Result<_, _>>()?;
    /// got.sort();
    /// assert_eq!(got, vec![(0, 0), (1, 1), (2, 4), (3, 9)]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
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

    /// Like [`imap_unordered`](Pool::imap_unordered), in chunks of `chunksize` (Python's
    /// `imap_unordered(func, iterable, chunksize)`). A chunk's results arrive together (a long
    /// chunk's results as its worker reports them), in completion order between chunks.
    ///
    /// ```
    /// fn square(x: u64) -> u64 {
    ///     x * x
    /// }
    ///
    /// let pool = pool::Pool::new(2)?;
    /// let mut got: Vec<u64> = pool
    ///     .imap_unordered_chunked(square, 0..10u64, 4)
    ///     .collect::<Result<_, _>>()?;
    /// got.sort();
    /// assert_eq!(got, (0..10u64).map(square).collect::<Vec<_>>());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn imap_unordered_chunked<A, R, I>(
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
        crate::imap::Imap::new(self, f, args.into_iter(), false, chunksize)
    }

    /// Submits the tasks `args` (indexes `first..`) as one job, or as several when their IPC
    /// handles are more than one message may carry ([`ipc_shm::transfer::MAX_FDS`]): a chunk
    /// size is a performance hint, so a map of many segments or queues never fails for it.
    /// On a refusal, says how many of the tasks were submitted before it (each of those will
    /// get its outcome as usual; the rest must be failed by the caller).
    pub(crate) fn submit_chunk<A: Serialize + DeserializeOwned>(
        &self,
        task: TaskRef,
        args: &[A],
        first: u64,
        sink: Arc<dyn Sink>,
        cancel: &Arc<CancelToken>,
    ) -> Result<(), ChunkRefused> {
        let mut jobs = Vec::new();
        self.chunk_jobs(task, args, first, &sink, cancel, &mut jobs)
            .map_err(|error| ChunkRefused {
                submitted: 0,
                error,
            })?;
        let mut submitted = 0;
        for job in jobs {
            let n = job.count as usize;
            self.submit(job).map_err(|e| ChunkRefused {
                submitted,
                error: e.into(),
            })?;
            submitted += n;
        }
        Ok(())
    }

    /// Encodes `args` as one job, or, if they carry more descriptors than one message may, as
    /// the jobs of its two halves (recursively). Nothing is submitted here.
    fn chunk_jobs<A: Serialize + DeserializeOwned>(
        &self,
        task: TaskRef,
        args: &[A],
        first: u64,
        sink: &Arc<dyn Sink>,
        cancel: &Arc<CancelToken>,
        jobs: &mut Vec<Job>,
    ) -> Result<(), TaskError> {
        match self.new_job(task, args, first, sink.clone(), Some(cancel.clone())) {
            Ok(job) => {
                jobs.push(job);
                Ok(())
            }
            Err(TaskError::Unsendable(e))
                if args.len() > 1
                    && matches!(
                        e.transfer_error(),
                        ipc_shm::transfer::TransferError::TooMany { .. }
                    ) =>
            {
                let (a, b) = args.split_at(args.len() / 2);
                self.chunk_jobs(task, a, first, sink, cancel, jobs)?;
                self.chunk_jobs(task, b, first + a.len() as u64, sink, cancel, jobs)
            }
            Err(e) => Err(e),
        }
    }

    /// Queues a job whose arguments are already encoded (a cluster node running a chunk it
    /// received; `cluster::node`). With `here`, runs it on an idle worker from the calling
    /// thread first if one is idle (as `apply` does), blocking as `here` allows, and queues it
    /// only if none is.
    #[cfg(feature = "nats")]
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn submit_encoded(
        &self,
        task: TaskRef,
        args: Vec<u8>,
        count: u64,
        reslice: crate::job::Reslice,
        sink: Arc<dyn Sink>,
        cancel: Option<Arc<CancelToken>>,
        here: Option<driver::Blocking<'_>>,
    ) -> Result<(), PoolError> {
        let job = Job::from_encoded(
            self.registry.next_job_id(),
            task,
            args,
            count,
            reslice,
            sink,
            cancel,
        );
        let job = if let Some(blocking) = here {
            match driver::run_here(&self.registry, job, blocking) {
                Ok(()) => return Ok(()),
                Err(job) => job,
            }
        } else {
            job
        };
        self.submit(job)
    }

    /// Whether a worker waits idle for a job (a hint: it may be taken the next instant).
    #[cfg(feature = "nats")]
    pub(crate) fn has_idle_worker(&self) -> bool {
        self.registry.idle.load(Ordering::SeqCst) > 0
    }

    pub(crate) fn max_in_flight(&self) -> usize {
        self.registry.settings.max_in_flight
    }

    /// Stops accepting tasks; queued ones still run. Workers exit once the queue is empty.
    pub fn close(&self) {
        self.registry.close();
    }

    /// Kills every worker now. Every unfinished task, queued or running, fails with
    /// [`TaskError::Terminated`].
    pub fn terminate(&self) {
        self.registry.terminate();
    }

    /// Waits for every worker to exit (Python's `join`). Closes the pool first if neither
    /// [`close`](Pool::close) nor [`terminate`](Pool::terminate) was called (where Python raises
    /// an error), so queued tasks finish and then the workers exit.
    pub fn join(&self) {
        self.close();
        self.registry.join_drivers();
    }

    /// [`join`](Pool::join) with a limit (closing the pool first, likewise); returns whether
    /// every worker exited in time.
    pub fn join_timeout(&self, timeout: Duration) -> bool {
        self.close();
        let deadline = crate::deadline_after(timeout);
        loop {
            if self.registry.workers.load(Ordering::SeqCst) == 0 {
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
        self.registry.stats()
    }

    /// The number of live workers (of a cluster pool: the workers of the nodes that reported in
    /// the last few seconds).
    pub fn workers(&self) -> usize {
        #[cfg(feature = "nats")]
        if self.registry.settings.cluster.is_some() {
            return self.stats().nodes.iter().map(|n| n.workers.len()).sum();
        }
        self.registry.workers.load(Ordering::SeqCst)
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.terminate();
        self.join();
    }
}

/// A chunk the pool did not take whole ([`Pool::submit_chunk`]): the first `submitted` tasks
/// went in (each gets its outcome as usual), the rest failed with `error`.
#[derive(Debug)]
pub(crate) struct ChunkRefused {
    pub(crate) submitted: usize,
    pub(crate) error: TaskError,
}

/// Encoded arguments of at least this many bytes are queued as soon as they are encoded, without
/// waiting to be queued together with the first chunks of the other workers (`map_async_inner`).
const QUEUE_AT_ONCE: usize = 64 << 10;
