//! Past one machine: the same [`Pool`](crate::Pool) API on a NATS JetStream cluster of nodes
//! (feature `nats`).
//!
//! A caller builds its pool with [`PoolBuilder::cluster`](crate::PoolBuilder::cluster); every
//! `Pool` method then works as with local workers (`apply`, `apply_async` and its callbacks,
//! `map`, `map_with_progress`, `starmap`, `imap`, `imap_unordered`, `task_timeout`, `close`,
//! `join`, `terminate`). The tasks run on **nodes**: the same executable started in node mode,
//! with [`serve`] (or [`NodeBuilder::serve`]) or by setting `POOL_CLUSTER_NODE=<url>`, which
//! [`init`](crate::init) recognises before `main`. Each node runs a local process pool of its
//! own, so a task that panics, segfaults or is SIGKILLed fails alone, exactly as it does
//! locally (`TaskError::Panicked`, `TaskError::WorkerLost`), and the node lives on.
//!
//! ```no_run
//! use pool::cluster::NatsCluster;
//!
//! fn square(x: u64) -> u64 {
//!     x * x
//! }
//!
//! // On every node (another machine, or another process): `POOL_CLUSTER_NODE=nats://... ./app`,
//! // or a call to `pool::cluster::serve("nats://...")`.
//! let pool = pool::PoolBuilder::new()
//!     .cluster(NatsCluster::new("nats://127.0.0.1:4222"))
//!     .build()?;
//! assert_eq!(pool.map(square, 0..1000u64)?.len(), 1000);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # How it runs
//!
//! The engine is JetStream's work queue (see `setup` for the streams): the pool publishes one
//! message per chunk of tasks (small tasks travel many to a message: `map` picks chunks
//! automatically, `map_chunked` and `imap_chunked` take a size) and every node pulls from one
//! shared durable consumer with explicit acks. A node acknowledges a chunk only after its result
//! message is stored in the result stream, and sends in-progress acks while it runs, so `AckWait`
//! (the node's [`NodeBuilder::ack_wait`], default 5 s) stays short and a dead node's chunks are
//! redelivered within seconds.
//!
//! # Guarantees, and where they differ from a local pool
//!
//! - **Exactly one result per task.** Results carry their chunk's id; the caller delivers the
//!   first result of a chunk and drops any later duplicate (a redelivered chunk's second run).
//! - **Work survives a node.** A node that dies (SIGKILL, power, network cut) loses nothing:
//!   JetStream redelivers its unacknowledged chunks to other nodes after `AckWait`.
//! - **A task may run more than once.** This is the difference from the local pool's "never runs
//!   twice": a chunk whose node died mid-run is run again elsewhere, so its tasks may have run
//!   partly (or wholly) before. Choose with [`NatsCluster::max_attempts`]: the default, 3, retries
//!   lost chunks twice; `max_attempts(1)` never runs a task a second time and fails the tasks of
//!   a lost chunk instead. A chunk delivered `max_attempts` times whose nodes were all lost fails
//!   with [`ClusterError::AttemptsExhausted`], which says how many attempts were made.
//! - **Same build only.** A node compares the caller's build identity (a hash of its whole
//!   executable) with its own and refuses a chunk of another build with
//!   [`ClusterError::BuildMismatch`], which reaches the caller, instead of running the wrong code.
//! - **`terminate`** (and dropping a pool that was not closed) fails unfinished tasks with
//!   `Terminated` at once, removes the chunks no node has taken yet, and tells the nodes on the
//!   cluster's subject `pool.<name>.cancel`: they kill the local workers running the pool's
//!   chunks (as a local cancel does; the workers are replaced) and drop the chunks of it they
//!   hold or receive later, without a result. A node cut off from the server at that moment
//!   runs its chunks to their end.
//! - **A caller that dies** (SIGKILL, power, a network cut), which cannot publish that cancel,
//!   is noticed by its silence: a live pool publishes a heartbeat on `pool.<name>.alive` every
//!   second, and a node that has not heard a pool for 5 s (counting only time the node itself
//!   was in touch with the server, and at least 5 s from its first chunk of the pool) stops the
//!   pool's chunks as for a cancel: its running tasks' local workers are killed and its held
//!   and later chunks dropped, each answered with [`ClusterError::CallerSilent`]. A caller that
//!   was only cut off that long gets that error for those tasks instead of waiting for ever.
//! - The pool's `initializer`, `processes` and sizing settings do not apply: each node sizes its
//!   own local pool ([`NodeBuilder::processes`]).
//!
//! # Progress and stats
//!
//! `map_with_progress` reports as results arrive, as locally. [`Pool::stats`](crate::Pool::stats)
//! counts the pool's tasks (`submitted`, `done`, `failed`, `in_flight`) and lists the nodes
//! that reported in the last 3 s ([`PoolStats::nodes`](crate::PoolStats::nodes)): each node's
//! workers (pid, state, current task, memory, CPU time) and the tasks it holds. Nodes report
//! once a second on the cluster's core subject `pool.<name>.nodes`.
//!
//! # Clean-up
//!
//! Every pool publishes and reads subjects with a name unique to it, purges them on
//! `close`/`join`/drop, and reads results through an ephemeral consumer that the server removes
//! 30 s after the pool stops reading. A caller that dies leaves only messages no other pool
//! reads (its tasks are not run: see above); the streams' `max_age` ([`NatsCluster::ttl`],
//! default one hour) removes them.
//!
//! # Security
//!
//! Nothing listens anywhere: callers and nodes only connect to the NATS server, with the
//! credentials given on [`NatsCluster`] (user and password, token, nkey, a `.creds` file, TLS
//! with client certificates), which pass through to `async-nats`. Every frame a node or a caller
//! reads is checked by the workspace's one frame codec and decode limit
//! ([`ipc_shm::codec`]) and refused, not trusted, when its size or shape is wrong. Anyone who
//! may publish to a cluster's task subjects can make its nodes run any function of the
//! program, as any local process that could write to a worker's pipe could: treat the NATS
//! account as the trust boundary.

use std::path::PathBuf;
use std::time::Duration;

mod client;
mod error;
mod node;
mod setup;
mod wire;

pub use error::{ClusterError, NatsError};
pub use node::NodeBuilder;

pub(crate) use client::start;

/// The environment variable that makes a program a node in [`init`](crate::init): the NATS
/// server's URL.
pub const NODE_ENV: &str = "POOL_CLUSTER_NODE";

/// A NATS JetStream cluster to run a pool's tasks on (or to serve as a node of): the server's
/// address, the credentials, and the cluster's settings.
///
/// ```
/// use std::time::Duration;
/// use pool::cluster::NatsCluster;
///
/// let cluster = NatsCluster::new("nats://127.0.0.1:4222")
///     .name("renders")
///     .user_and_password("alice", "s3cret")
///     .max_attempts(1) // a task whose node died fails instead of running again
///     .ttl(Duration::from_secs(600));
/// // The password is not printed.
/// assert!(!format!("{cluster:?}").contains("s3cret"));
/// ```
#[derive(Clone)]
pub struct NatsCluster {
    pub(crate) url: String,
    pub(crate) name: String,
    pub(crate) auth: Auth,
    pub(crate) tls: Tls,
    pub(crate) max_attempts: u32,
    pub(crate) max_chunk: usize,
    pub(crate) slots: usize,
    pub(crate) ttl: Duration,
    pub(crate) max_stream_bytes: i64,
    pub(crate) publish_timeout: Duration,
}

/// Credentials passed to `async-nats`.
#[derive(Clone, Default)]
pub(crate) struct Auth {
    pub(crate) user_password: Option<(String, String)>,
    pub(crate) token: Option<String>,
    pub(crate) nkey: Option<String>,
    pub(crate) credentials_file: Option<PathBuf>,
}

/// TLS settings passed to `async-nats`.
#[derive(Clone, Default, Debug)]
pub(crate) struct Tls {
    pub(crate) root_certificates: Vec<PathBuf>,
    pub(crate) client_certificate: Option<(PathBuf, PathBuf)>,
    pub(crate) require: bool,
}

impl std::fmt::Debug for NatsCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let a = &self.auth;
        f.debug_struct("NatsCluster")
            .field("url", &self.url)
            .field("name", &self.name)
            .field("user", &a.user_password.as_ref().map(|(u, _)| u))
            .field("token", &a.token.as_ref().map(|_| "<redacted>"))
            .field("nkey", &a.nkey.as_ref().map(|_| "<redacted>"))
            .field("credentials_file", &a.credentials_file)
            .field("tls", &self.tls)
            .field("max_attempts", &self.max_attempts)
            .field("max_chunk", &self.max_chunk)
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl NatsCluster {
    /// The cluster reached through the NATS server at `url` (`nats://host:4222`, `tls://...`,
    /// or several comma-separated), named `pool`, with no credentials.
    pub fn new(url: impl Into<String>) -> NatsCluster {
        NatsCluster {
            url: url.into(),
            name: "pool".to_owned(),
            auth: Auth::default(),
            tls: Tls::default(),
            max_attempts: 3,
            max_chunk: 4096,
            slots: 8,
            ttl: Duration::from_secs(3600),
            max_stream_bytes: 1 << 30,
            publish_timeout: Duration::from_secs(30),
        }
    }

    /// The cluster from the environment: the URL in `POOL_CLUSTER_NODE` (or
    /// `POOL_CLUSTER_URL`), the name in `POOL_CLUSTER_NAME`, credentials in
    /// `POOL_CLUSTER_USER` and `POOL_CLUSTER_PASSWORD`, `POOL_CLUSTER_TOKEN`,
    /// `POOL_CLUSTER_NKEY` (a seed) or `POOL_CLUSTER_CREDS` (a `.creds` file), and a CA file
    /// in `POOL_CLUSTER_CA`. `None` without a URL.
    pub fn from_env() -> Option<NatsCluster> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let url = var(NODE_ENV).or_else(|| var("POOL_CLUSTER_URL"))?;
        let mut c = NatsCluster::new(url);
        if let Some(name) = var("POOL_CLUSTER_NAME") {
            c = c.name(name);
        }
        if let (Some(u), Some(p)) = (var("POOL_CLUSTER_USER"), var("POOL_CLUSTER_PASSWORD")) {
            c = c.user_and_password(u, p);
        }
        if let Some(t) = var("POOL_CLUSTER_TOKEN") {
            c = c.token(t);
        }
        if let Some(seed) = var("POOL_CLUSTER_NKEY") {
            c = c.nkey(seed);
        }
        if let Some(path) = var("POOL_CLUSTER_CREDS") {
            c = c.credentials_file(path);
        }
        if let Some(path) = var("POOL_CLUSTER_CA") {
            c = c.add_root_certificate(path);
        }
        Some(c)
    }

    /// The cluster's name (default `pool`): callers and nodes of the same name work together;
    /// its streams are `POOL_<name>_TASKS` and `POOL_<name>_RESULTS`. Letters, digits, `_` and
    /// `-` only (checked when the pool or node starts).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Authenticate with a user name and password.
    pub fn user_and_password(
        mut self,
        user: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        self.auth.user_password = Some((user.into(), password.into()));
        self
    }

    /// Authenticate with a token.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.auth.token = Some(token.into());
        self
    }

    /// Authenticate with an nkey seed.
    pub fn nkey(mut self, seed: impl Into<String>) -> Self {
        self.auth.nkey = Some(seed.into());
        self
    }

    /// Authenticate with a `.creds` file (a user JWT and its nkey seed).
    pub fn credentials_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.auth.credentials_file = Some(path.into());
        self
    }

    /// Trust the CA certificates in this PEM file for the server's TLS certificate.
    pub fn add_root_certificate(mut self, path: impl Into<PathBuf>) -> Self {
        self.tls.root_certificates.push(path.into());
        self
    }

    /// Present this client certificate and key (PEM files) to the server (mutual TLS).
    pub fn client_certificate(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.tls.client_certificate = Some((cert.into(), key.into()));
        self
    }

    /// Refuse to connect without TLS.
    pub fn require_tls(mut self, require: bool) -> Self {
        self.tls.require = require;
        self
    }

    /// How many times a chunk may be delivered to nodes that are then lost before its tasks
    /// fail with [`ClusterError::AttemptsExhausted`] (default 3; at least 1). `1` means a task
    /// never runs twice: the tasks of a chunk whose node died fail instead of running again.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// The largest automatic chunk of `map` (default 4096 tasks per message). A chunk that
    /// does not fit in one message of the server is split further.
    pub fn max_chunk(mut self, tasks: usize) -> Self {
        self.max_chunk = tasks.max(1);
        self
    }

    /// How many workers the cluster is expected to have in all (default 8), for the automatic
    /// chunk size of `map`: about four chunks per worker (Python's rule; a local pool cuts
    /// shrinking chunks instead, where a message costs far less).
    pub fn expected_workers(mut self, workers: usize) -> Self {
        self.slots = workers.max(1);
        self
    }

    /// How long an unread message stays in the cluster's streams (default one hour): what is
    /// left by a caller that died goes away after this.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl.max(Duration::from_secs(1));
        self
    }

    /// How long a task message may take to be published, the server unreachable meanwhile,
    /// before its tasks fail with [`ClusterError::Publish`] (default 30 s).
    pub fn publish_timeout(mut self, timeout: Duration) -> Self {
        self.publish_timeout = timeout;
        self
    }

    pub(crate) fn tasks_stream(&self) -> String {
        format!("POOL_{}_TASKS", self.name)
    }

    pub(crate) fn results_stream(&self) -> String {
        format!("POOL_{}_RESULTS", self.name)
    }

    pub(crate) fn check(&self) -> Result<(), ClusterError> {
        let ok = !self.name.is_empty()
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if ok {
            Ok(())
        } else {
            Err(ClusterError::Config {
                detail: format!(
                    "the cluster name {:?} may only hold letters, digits, '_' and '-'",
                    self.name
                ),
            })
        }
    }

    /// The chunk size `map` uses for `len` tasks: about four chunks per expected worker, at most
    /// `max_chunk`.
    pub(crate) fn auto_chunksize(&self, len: usize) -> usize {
        len.div_ceil(self.slots * 4).clamp(1, self.max_chunk)
    }

    /// `imap`'s default bound on tasks sent ahead.
    pub(crate) fn default_in_flight(&self) -> usize {
        (self.slots * 8).max(64)
    }
}

/// Runs this process as a node of the cluster at `url` (named `pool`, no credentials, one
/// local worker per CPU) until it is killed. See [`NodeBuilder`] for the settings.
///
/// ```no_run
/// // First thing in `main`:
/// if let Ok(url) = std::env::var("MY_NODE_URL") {
///     let err = pool::cluster::serve(&url).unwrap_err();
///     eprintln!("node stopped: {err}");
///     std::process::exit(1);
/// }
/// // ... the caller's program ...
/// ```
pub fn serve(url: &str) -> Result<std::convert::Infallible, ClusterError> {
    NodeBuilder::new(NatsCluster::new(url)).serve()
}

/// Node mode from the environment, for [`init`](crate::init): when `POOL_CLUSTER_NODE` is set,
/// serves as a node (settings from [`NatsCluster::from_env`], and `POOL_CLUSTER_PROCESSES`
/// local workers if set) and returns the exit code once serving failed; `None` otherwise.
pub fn serve_if_node() -> Option<i32> {
    let cluster = NatsCluster::from_env()?;
    std::env::var_os(NODE_ENV)?;
    let mut node = NodeBuilder::new(cluster);
    if let Some(n) = std::env::var("POOL_CLUSTER_PROCESSES")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        node = node.processes(n);
    }
    let Err(e) = node.serve();
    eprintln!("pool cluster node: {e}");
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        eprintln!("  caused by: {s}");
        source = s.source();
    }
    Some(1)
}

/// A private tokio runtime for the NATS client, on the multi-threaded scheduler (a node's
/// blocking sections need it) with `workers` worker threads.
///
/// A node takes one: the work on its runtime is I/O and short hand-offs (tasks run in the
/// local pool's processes, and a chunk run from a runtime thread runs in a blocking section),
/// and a second worker only added thread switches to every message (an event woke both, one
/// to find nothing to steal): 5.8 voluntary switches per chunk with two, 4.8 with one
/// (cluster `apply`, counted from `/proc`). A caller keeps two: its reader task runs the
/// user's callbacks, and while one runs long the other worker keeps the heartbeat, the
/// acknowledgements and the connection going.
pub(crate) fn runtime(name: &str, workers: usize) -> Result<tokio::runtime::Runtime, ClusterError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name(name)
        .enable_all()
        .build()
        .map_err(|e| ClusterError::Runtime(NatsError::new(e)))
}
