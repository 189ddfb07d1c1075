//! What the pool reports about itself: [`Pool::stats`](crate::Pool::stats).

use std::time::{Duration, Instant};

/// What a worker is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WorkerState {
    /// Being started (or replaced).
    Starting,
    /// Waiting for a task.
    Idle,
    /// Running a task.
    Busy,
    /// Finishing, to be replaced (task or memory limit reached).
    Retiring,
}

/// One worker, as [`Pool::stats`](crate::Pool::stats) saw it.
#[derive(Debug, Clone)]
pub struct WorkerStats {
    /// Its process id.
    pub pid: u32,
    /// What it is doing.
    pub state: WorkerState,
    /// The index (within its `map`/`imap`, or 0 for `apply`) of the task it runs, if known.
    pub current_task: Option<u64>,
    /// How long the current job has been running.
    pub current_task_runtime: Option<Duration>,
    /// Tasks it finished.
    pub tasks_done: u64,
    /// Tasks that failed on it (panics, its own death, timeouts).
    pub tasks_failed: u64,
    /// How many times this worker slot was restarted (died, timed out, recycled).
    pub restarts: u64,
    /// Resident memory, in bytes (from /proc).
    pub rss_bytes: u64,
    /// CPU time used, user plus system (from /proc).
    pub cpu_time: Duration,
    /// When this process started.
    pub started: Instant,
    /// For a worker that replaced one that died (crashed, was killed for a timeout or a
    /// cancel): how long the replacement took, from the moment the pool saw the death to this
    /// worker being ready for tasks (started, handshake and initializer done). `None` for a
    /// first worker or one that replaced a retired worker.
    pub replaced_in: Option<Duration>,
    pub(crate) busy_since: Option<Instant>,
}

/// A snapshot of the pool: counters and every worker.
#[derive(Debug, Clone)]
pub struct PoolStats {
    /// Tasks submitted since the pool started.
    pub submitted: u64,
    /// Tasks that finished with a result.
    pub done: u64,
    /// Tasks that failed.
    pub failed: u64,
    /// Tasks submitted and not yet finished (queued or running).
    pub in_flight: u64,
    /// Jobs (chunks of tasks) waiting in the queue.
    pub queued: u64,
    /// Every live worker.
    pub workers: Vec<WorkerStats>,
    /// The cluster's nodes that reported in the last few seconds, each with its workers (a pool
    /// built with `PoolBuilder::cluster`, feature `nats`); empty for a local pool.
    pub nodes: Vec<NodeStats>,
}

/// One node of a cluster pool, as its last report showed it.
#[derive(Debug, Clone)]
pub struct NodeStats {
    /// The node's name: its host name and pid.
    pub name: String,
    /// Its local workers.
    pub workers: Vec<WorkerStats>,
    /// Tasks it holds (running, or waiting for one of its workers), of every pool of the
    /// cluster.
    pub in_flight: u64,
    /// Tasks it finished with a result since it started.
    pub done: u64,
    /// Tasks that failed on it since it started.
    pub failed: u64,
    /// How long ago its last report arrived.
    pub last_seen: Duration,
}
