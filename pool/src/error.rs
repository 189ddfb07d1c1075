//! The pool's error types: one for a task's failure, one for the pool's own.

use std::fmt;
use std::io;
use std::time::Duration;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Exit {
    /// It exited with this status code.
    Code(i32),
    /// It was killed by this signal.
    Signal(i32),
}

impl Exit {
    /// Whether it exited with status 0.
    pub fn success(self) -> bool {
        self == Exit::Code(0)
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Exit::Code(c) => write!(f, "exit code {c}"),
            Exit::Signal(s) => match nix::sys::signal::Signal::try_from(s) {
                Ok(sig) => write!(f, "signal {s} ({})", sig.as_str()),
                Err(_) => write!(f, "signal {s}"),
            },
        }
    }
}

/// Why one task produced no result. Every other task of the pool is unaffected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TaskError {
    /// The task panicked; the worker caught it and lives on.
    #[error("the task panicked: {message}")]
    Panicked {
        /// The panic message.
        message: String,
    },
    /// The worker running the task died (killed by a signal, or exited) before finishing it; a
    /// new worker replaces it.
    #[error("the worker (pid {pid}) running the task was lost: {exit}")]
    WorkerLost {
        /// The lost worker's process id.
        pid: u32,
        /// How it ended.
        exit: Exit,
    },
    /// The task ran longer than the pool's `task_timeout`; its worker was killed and replaced.
    #[error("the task ran longer than {limit:?}; its worker was killed")]
    Timeout {
        /// The limit that was exceeded.
        limit: Duration,
    },
    /// The argument could not be encoded in the parent or decoded in the worker.
    #[error("the task's argument could not be (de)serialized: {0}")]
    Argument(String),
    /// The result could not be encoded in the worker or decoded in the parent.
    #[error("the task's result could not be (de)serialized: {0}")]
    Result(String),
    /// The pool was terminated (or dropped) before the task finished.
    #[error("the pool was terminated before the task finished")]
    Terminated,
    /// The pool could not run the task at all (see the inner error).
    #[error(transparent)]
    Pool(#[from] PoolError),
}

/// Why the pool (or a `Process`) could not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// The pool was closed: it accepts no new tasks.
    #[error("the pool is closed")]
    Closed,
    /// A worker could not be started.
    #[error("starting a worker failed: {0}")]
    Spawn(String),
    /// The start method needs `pool::init()` at the top of `main` (or the `ctor` feature).
    #[error(
        "the {method} start method needs pool::init() to run at the top of main, before any \
         other thread exists (or the default `ctor` feature)"
    )]
    NeedsInit {
        /// The start method asked for.
        method: &'static str,
    },
    /// A worker runs a different build of the program and cannot run this program's functions.
    #[error("the worker runs a different build of the program than the pool ({detail})")]
    BuildMismatch {
        /// What differed.
        detail: String,
    },
    /// The initializer failed in a worker.
    #[error("the worker initializer failed: {message}")]
    InitializerFailed {
        /// Its panic message or failure.
        message: String,
    },
    /// Workers kept dying at start-up; the pool stopped replacing them.
    #[error("{failures} workers failed within {window:?}; the pool stopped starting new ones")]
    RestartLimit {
        /// How many failures were counted.
        failures: u32,
        /// In how long a window.
        window: Duration,
    },
    /// Waiting for the pool (or a process) took longer than the timeout given.
    #[error("timed out")]
    Timeout,
    /// The builder was given an invalid value.
    #[error("invalid pool configuration: {0}")]
    Config(String),
    /// A system call failed.
    #[error("{op}: {message}")]
    Os {
        /// What was being done.
        op: &'static str,
        /// The system's message.
        message: String,
    },
}

impl PoolError {
    pub(crate) fn os(op: &'static str, e: io::Error) -> PoolError {
        PoolError::Os {
            op,
            message: e.to_string(),
        }
    }
}
