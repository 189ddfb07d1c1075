//! `Process` and a worker `Pool` with the API of Python's `multiprocessing`, that survives
//! crashing, hanging and leaking workers.
//!
//! - [`Pool`]: `apply`, `apply_async` (with callbacks, and an [`AsyncResult`] that is also a
//!   `Future`), `map`/`map_async`/`starmap` with automatic chunk sizes, lazy and bounded
//!   `imap`/`imap_unordered`, `close`/`join`/`terminate`, and [`Pool::stats`].
//! - [`PoolBuilder`]: processes (default: the CPUs this process may use, cgroup quota
//!   respected), an initializer, `max_tasks_per_child` (with jitter), `max_memory_per_child`,
//!   `task_timeout`, elastic sizing (`max_workers`, `min_idle`, `max_idle`, `idle_timeout`) and
//!   the [`StartMethod`].
//! - [`Process`]: one function in one child, its result or panic returned to the parent.
//!
//! Tasks are plain functions `fn(A) -> R` (closures that capture nothing coerce to them) with
//! serde arguments and results. A worker finds the function by its offset from an anchor symbol
//! of the same executable, and refuses to run a different build.
//!
//! ```
//! fn square(x: u64) -> u64 {
//!     x * x
//! }
//!
//! let pool = pool::PoolBuilder::new().processes(2).build()?;
//! assert_eq!(pool.map(square, 0..5u64)?, vec![0, 1, 4, 9, 16]);
//! assert_eq!(pool.apply(|s: String| s.len(), "four".to_string())?, 4);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Failures stay with their task
//!
//! A task that panics fails with [`TaskError::Panicked`] and its worker lives on. A worker that
//! dies (SIGKILL, SIGSEGV, `abort`, `exit`) fails only the task it was running with
//! [`TaskError::WorkerLost`] and is replaced; the other tasks of its chunk that had not started
//! run elsewhere, and no task ever runs twice. (Results of tasks shorter than 50 us that
//! finished in the last 50 us before the death are lost with it and fail too.) A task that exceeds `task_timeout` fails with [`TaskError::Timeout`]; its
//! worker is killed and replaced. Workers that keep dying at start-up (a failing initializer)
//! trip a breaker instead of respawning forever. Python's `Pool` hangs in these cases and
//! `ProcessPoolExecutor` breaks as a whole.
//!
//! The parent's death, even by SIGKILL, ends every worker (`PR_SET_PDEATHSIG`, and workers also
//! see their pipe hang up). Pools, workers and the fork server talk only over descriptors they
//! inherit; no filesystem name is created, and shared memory is anonymous (memfd, `0600`).
//!
//! # Start methods
//!
//! See [`StartMethod`]. `ForkServer` and `Spawn` need [`init`] to run first in the program; with
//! the default `ctor` feature it runs by itself before `main`, in test binaries too.
//!
//! # Dependencies
//!
//! - `ipc-pipe` (one duplex pipe per worker: tasks out, results back, death detection) and
//!   `ipc-shm` (the workers' progress slots).
//! - `serde` and `bincode` 2: arguments, results and protocol frames.
//! - `crossbeam-channel`: the parent's job queue and result streams (`select` with a timeout).
//! - `nix`, `rustix` and `libc`: fork, exec, waitpid, signals, pidfds, `SCM_RIGHTS` for the
//!   fork server, all in the private `os` and `init` modules.
//! - `thiserror`: error `Display`. `ctor` (optional, default): run [`init`] before `main`.
//!   `indicatif` (optional, feature `progress`): `progress_bar()`.
#![deny(unsafe_code)]

mod error;
mod imap;
mod os;
mod pool;
mod process;
mod result;
mod slot;
mod start;
mod stats;
mod task;
mod wire;
mod worker;

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use error::{Exit, PoolError, TaskError};
pub use imap::Imap;
pub use pool::Pool;
pub use process::{Finished, Process, ProcessBuilder};
pub use result::AsyncResult;
pub use start::StartMethod;
pub use start::init::init;
pub use stats::{PoolStats, WorkerState, WorkerStats};

/// A progress hook for [`Pool::map_with_progress`] that draws an `indicatif` progress bar on
/// standard error.
#[cfg(feature = "progress")]
pub fn progress_bar(total: u64) -> impl Fn(u64, u64) + Send + Sync + 'static {
    let bar = indicatif::ProgressBar::new(total);
    move |done, total| {
        bar.set_length(total);
        bar.set_position(done);
        if done == total {
            bar.finish();
        }
    }
}

/// The start method used when none is given: `ForkServer` when [`init`] has run (always, with
/// the default `ctor` feature), `Fork` otherwise.
pub fn default_start_method() -> StartMethod {
    if start::init::initialised() {
        StartMethod::ForkServer
    } else {
        StartMethod::Fork
    }
}

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
    initializer: Option<(task::TaskRef, Vec<u8>)>,
    initializer_error: Option<String>,
    restart_limit: (u32, Duration),
    max_in_flight: Option<usize>,
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
        }
    }

    /// How many workers to start (and keep, at least). Default: the CPUs this process may use,
    /// affinity and cgroup CPU quota respected.
    pub fn processes(mut self, n: usize) -> Self {
        self.processes = Some(n);
        self
    }

    /// Runs `f(arg)` in every worker when it starts (Python's `initializer`/`initargs`). A panic
    /// there is reported as [`PoolError::InitializerFailed`].
    pub fn initializer<A: Serialize + DeserializeOwned>(mut self, f: fn(A), arg: A) -> Self {
        match wire::codec::encode(std::slice::from_ref(&arg)) {
            Ok(buf) => self.initializer = Some((task::TaskRef::new(f), buf)),
            Err(e) => self.initializer_error = Some(e.to_string()),
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
    /// replace its worker. The limit is checked a few times per `timeout`.
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

    /// How workers are created (default: [`default_start_method`]).
    pub fn start_method(mut self, method: StartMethod) -> Self {
        self.start_method = Some(method);
        self
    }

    /// Stop replacing workers after `failures` start-up failures within `window` (default 5
    /// in 10 s); tasks then fail with [`PoolError::RestartLimit`] (or the initializer's error).
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

    /// Starts the workers. Returns once every initial worker has started and run the
    /// initializer.
    pub fn build(self) -> Result<Pool, PoolError> {
        if let Some(e) = self.initializer_error {
            return Err(PoolError::Config(format!(
                "the initializer's argument does not encode: {e}"
            )));
        }
        let processes = self.processes.unwrap_or_else(os::available_cpus);
        if processes == 0 && self.max_workers.unwrap_or(0) == 0 {
            return Err(PoolError::Config("a pool needs at least one worker".into()));
        }
        let max_workers = self.max_workers.unwrap_or(processes).max(processes).max(1);
        let config = pool::Config {
            processes,
            max_workers,
            min_idle: self.min_idle.min(max_workers),
            max_idle: self.max_idle.unwrap_or(max_workers),
            idle_timeout: self.idle_timeout,
            max_tasks_per_child: self.max_tasks_per_child,
            max_memory_per_child: self.max_memory_per_child,
            task_timeout: self.task_timeout,
            start_method: self.start_method.unwrap_or_else(default_start_method),
            initializer: self.initializer,
            restart_limit: self.restart_limit,
            max_in_flight: self.max_in_flight.unwrap_or((max_workers * 4).max(16)),
        };
        Pool::start(config)
    }
}
