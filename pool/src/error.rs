//! The pool's error types: one for a task's failure ([`TaskError`]), one for the pool's own
//! ([`PoolError`]), and the typed details of the latter ([`SpawnError`], [`ConfigError`],
//! [`OsError`], [`EncodeError`]), each keeping the error it wraps as its `source()`.
//!
//! Errors are `Clone` (a broken pool hands the same error to every caller), so wrapped system
//! errors sit behind an `Arc`.

use std::error::Error;
use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use crate::wire::codec::{CodecDecodeError, CodecEncodeError};

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
            Exit::Signal(s) => match ipc_shm::os::signal_name(s) {
                Some(name) => write!(f, "signal {s} ({name})"),
                None => write!(f, "signal {s}"),
            },
        }
    }
}

impl From<ipc_shm::os::ExitStatus> for Exit {
    fn from(status: ipc_shm::os::ExitStatus) -> Exit {
        match status {
            ipc_shm::os::ExitStatus::Code(c) => Exit::Code(c),
            ipc_shm::os::ExitStatus::Signal(s) => Exit::Signal(s),
        }
    }
}

/// Why one task produced no result. Every other task of the pool is unaffected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TaskError {
    /// The task panicked; the worker caught it and lives on.
    ///
    /// The `Display` is one line: the location and the message. The worker's backtrace, taken
    /// when `RUST_BACKTRACE` is set (and not `0`) in the worker, is [`TaskError::backtrace`].
    #[error("the task panicked{}: {message}", at(.location.as_ref()))]
    #[non_exhaustive]
    Panicked {
        /// The panic message.
        message: String,
        /// Where the task panicked (file, line, column), when the panic reported it.
        location: Option<PanicLocation>,
        /// The worker's backtrace at the panic, when `RUST_BACKTRACE` is set in the worker.
        backtrace: Option<WorkerBacktrace>,
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
    /// The argument holds an IPC handle that cannot be sent to a worker (a pipe end already
    /// given away, an end sent over its own pipe, too many descriptors): refused at submit
    /// time, before anything reached a worker.
    #[error("the task's argument holds a handle that cannot be sent to a worker")]
    Unsendable(#[source] HandleError),
    /// The result could not be encoded in the worker or decoded in the parent.
    #[error("the task's result could not be (de)serialized: {0}")]
    Result(String),
    /// The pool was terminated (or dropped) before the task finished: queued and running tasks
    /// alike.
    #[error("the pool was terminated before the task finished")]
    Terminated,
    /// The input iterator of an [`Imap`](crate::Imap) panicked (with this message) while the
    /// `Imap` pulled arguments from it: the last item the `Imap` yields.
    #[error("the input iterator panicked: {message}")]
    InputPanicked {
        /// The panic message.
        message: String,
    },
    /// The task was cancelled ([`AsyncResult::cancel`](crate::AsyncResult::cancel), or its
    /// [`Imap`](crate::Imap) was dropped) before it finished.
    #[error("the task was cancelled")]
    Cancelled,
    /// The pool could not run the task at all (see the inner error).
    #[error(transparent)]
    Pool(#[from] PoolError),
}

impl TaskError {
    /// Where the task panicked, for a [`Panicked`](TaskError::Panicked) error that knows it.
    ///
    /// ```
    /// fn fails(_: u32) -> u32 {
    ///     panic!("no")
    /// }
    ///
    /// let pool = pool::Pool::new(1)?;
    /// let error = pool.apply(fails, 0).unwrap_err();
    /// let at = error.panic_location().expect("a location");
    /// assert!(at.file.ends_with(".rs"));
    /// assert!(error.to_string().contains(&at.to_string()));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn panic_location(&self) -> Option<&PanicLocation> {
        match self {
            TaskError::Panicked { location, .. } => location.as_ref(),
            _ => None,
        }
    }

    /// The worker's backtrace at the panic, as text, for a [`Panicked`](TaskError::Panicked)
    /// error whose worker ran with `RUST_BACKTRACE` set (and not `0`); `None` otherwise.
    /// Workers inherit the environment the way their start method gives it: `Fork` at the
    /// worker's start, `ForkServer` and `Spawn` from the program's start.
    pub fn backtrace(&self) -> Option<&str> {
        match self {
            TaskError::Panicked {
                backtrace: Some(b), ..
            } => Some(b.as_str()),
            _ => None,
        }
    }
}

/// `" at file:line:col"` when the location is known.
fn at(location: Option<&PanicLocation>) -> String {
    location.map_or_else(String::new, |l| format!(" at {l}"))
}

/// Where a task panicked: the source location its panic reported.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct PanicLocation {
    /// The source file, as the compiler named it.
    pub file: String,
    /// The line (from 1).
    pub line: u32,
    /// The column (from 1).
    pub column: u32,
}

impl fmt::Display for PanicLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// A worker's backtrace at a task's panic, as the worker printed it (see
/// [`TaskError::backtrace`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerBacktrace(Arc<str>);

impl WorkerBacktrace {
    pub(crate) fn new(text: String) -> WorkerBacktrace {
        WorkerBacktrace(text.into())
    }

    /// The backtrace's text (one frame per line or two, as `std::backtrace` prints it).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for WorkerBacktrace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why the pool (or a `Process`) could not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// The pool was closed: it accepts no new tasks.
    #[error("the pool is closed")]
    Closed,
    /// A worker could not be started; the [`SpawnError`] says why.
    #[error(transparent)]
    Spawn(#[from] SpawnError),
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
    /// The builder (or `ProcessBuilder::spawn`) was given an invalid value.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A system call failed.
    #[error(transparent)]
    Os(#[from] OsError),
    /// The cluster (feature `nats`) could not take or run the task: a node of another build,
    /// a task delivered `max_attempts` times, the NATS server unreachable, a refused frame.
    #[cfg(feature = "nats")]
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
}

impl PoolError {
    pub(crate) fn os(op: &'static str, e: io::Error) -> PoolError {
        PoolError::Os(OsError::new(op, e))
    }
}

/// A system call that failed: what was being done, and the system's error as `source()`.
#[derive(Debug, Clone)]
pub struct OsError {
    op: &'static str,
    source: Arc<io::Error>,
}

impl OsError {
    pub(crate) fn new(op: &'static str, source: io::Error) -> OsError {
        OsError {
            op,
            source: Arc::new(source),
        }
    }

    /// What was being done.
    pub fn op(&self) -> &'static str {
        self.op
    }

    /// The system's error (also the `source()`).
    pub fn io_error(&self) -> &io::Error {
        &self.source
    }
}

impl fmt::Display for OsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} failed", self.op)
    }
}

impl Error for OsError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.source)
    }
}

/// Equal when the same operation failed with the same kind of system error.
impl PartialEq for OsError {
    fn eq(&self, other: &OsError) -> bool {
        self.op == other.op
            && self.source.kind() == other.source.kind()
            && self.source.raw_os_error() == other.source.raw_os_error()
    }
}

impl Eq for OsError {}

/// A value that could not be encoded (bincode over serde, the workspace's one codec).
///
/// Its `source()` is the codec's own error, an [`ipc_shm::codec::EncodeError`] (whose `source()` in turn is bincode's, when bincode or the value's `Serialize` refused it).
/// Two `EncodeError`s are equal when the codec reported the same failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodeError(CodecEncodeError);

impl EncodeError {
    pub(crate) fn new(e: CodecEncodeError) -> EncodeError {
        EncodeError(e)
    }
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the value could not be encoded")
    }
}

impl Error for EncodeError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(self.0.as_source())
    }
}

/// Why a [`PoolBuilder`](crate::PoolBuilder) (or a
/// [`ProcessBuilder`](crate::ProcessBuilder)) refused its settings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// Neither `processes` nor `max_workers` allows a single worker.
    #[error("invalid pool configuration: a pool needs at least one worker")]
    NoWorkers,
    /// The initializer's argument does not encode.
    #[error("invalid pool configuration: the initializer's argument does not encode")]
    InitializerArgument(#[source] EncodeError),
    /// `task_timeout(Duration::ZERO)`: no task could ever finish in time. Leave the setting out
    /// for no limit.
    #[error("invalid pool configuration: a task timeout of zero lets no task finish")]
    ZeroTaskTimeout,
    /// A `Process`'s argument (or its task message) does not encode.
    #[error("invalid process configuration: the argument does not encode")]
    Argument(#[source] EncodeError),
    /// The initializer's or a `Process`'s argument holds an IPC handle that cannot be sent (a
    /// pipe end already given away, an end sent over its own pipe, too many descriptors).
    #[error("invalid configuration: the argument holds a handle that cannot be sent")]
    UnsendableArgument(#[source] HandleError),
}

/// Why an IPC handle in an argument could not travel: its `source()` is the
/// [`ipc_shm::transfer::TransferError`] that says why. Two `HandleError`s are equal when they
/// say the same thing.
#[derive(Debug, Clone)]
pub struct HandleError(Arc<ipc_shm::transfer::TransferError>);

impl HandleError {
    pub(crate) fn new(e: ipc_shm::transfer::TransferError) -> HandleError {
        HandleError(Arc::new(e))
    }

    /// The transfer error.
    pub fn transfer_error(&self) -> &ipc_shm::transfer::TransferError {
        &self.0
    }
}

impl PartialEq for HandleError {
    fn eq(&self, other: &HandleError) -> bool {
        self.0.to_string() == other.0.to_string()
    }
}

impl Eq for HandleError {}

impl fmt::Display for HandleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the handle cannot be sent: {}", self.0)
    }
}

impl Error for HandleError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.0)
    }
}

/// Why a worker (or a [`Process`](crate::Process) child) could not be started.
///
/// Opaque: its `Display` says what failed, its `source()` is the underlying system, pipe or
/// shared-memory error when there is one. Two `SpawnError`s are equal when they are of the same
/// kind.
#[derive(Debug, Clone)]
pub struct SpawnError {
    kind: SpawnErrorKind,
}

#[derive(Debug, Clone)]
pub(crate) enum SpawnErrorKind {
    /// The worker's progress slot (shared memory) could not be created.
    ProgressSlot(Arc<ipc_shm::SegmentCreateError>),
    /// The worker's pipe could not be created.
    PipeCreate(Arc<ipc_pipe::PipeError>),
    /// The worker's pipe could not be passed to a spawned program.
    PipePass(Arc<ipc_pipe::PassError>),
    /// A spawned worker could not open the pipe it inherited.
    PipeOpen(Arc<ipc_pipe::OpenError>),
    /// The worker did not greet the pool in time.
    StartupTimeout(Duration),
    /// The worker exited before greeting the pool.
    ExitedAtStartup(Option<Exit>),
    /// The worker's greeting did not decode (or was not a greeting).
    BadGreeting(Option<CodecDecodeError>),
    /// A start-up message could not be encoded.
    Encode(CodecEncodeError),
    /// The worker died before its initializer could be sent.
    DiedBeforeInitializer,
    /// The worker answered the initializer with something else than its outcome.
    UnexpectedInitAnswer,
    /// A driver thread ended before its first worker started.
    DriverEnded,
    /// The fork server could not be started.
    ForkServerStart(Arc<io::Error>),
    /// The fork server could not fork a worker.
    ForkServerFork(Arc<io::Error>),
    /// The fork server is gone.
    ForkServerGone,
}

impl SpawnError {
    pub(crate) fn new(kind: SpawnErrorKind) -> SpawnError {
        SpawnError { kind }
    }
}

impl From<SpawnErrorKind> for PoolError {
    fn from(kind: SpawnErrorKind) -> PoolError {
        PoolError::Spawn(SpawnError::new(kind))
    }
}

impl fmt::Display for SpawnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("starting a worker failed: ")?;
        match &self.kind {
            SpawnErrorKind::ProgressSlot(_) => f.write_str("cannot create its progress slot"),
            SpawnErrorKind::PipeCreate(_) => f.write_str("cannot create the worker pipe"),
            SpawnErrorKind::PipePass(_) => f.write_str("cannot pass the worker pipe"),
            SpawnErrorKind::PipeOpen(_) => f.write_str("cannot open the inherited worker pipe"),
            SpawnErrorKind::StartupTimeout(t) => write!(f, "the worker did not start within {t:?}"),
            SpawnErrorKind::ExitedAtStartup(Some(exit)) => {
                write!(f, "the worker exited at start-up ({exit})")
            }
            SpawnErrorKind::ExitedAtStartup(None) => {
                f.write_str("the worker exited at start-up (unknown status)")
            }
            SpawnErrorKind::BadGreeting(_) => f.write_str("the worker's greeting did not decode"),
            SpawnErrorKind::Encode(_) => f.write_str("a start-up message does not encode"),
            SpawnErrorKind::DiedBeforeInitializer => {
                f.write_str("the worker died before its initializer")
            }
            SpawnErrorKind::UnexpectedInitAnswer => f.write_str("unexpected answer to Init"),
            SpawnErrorKind::DriverEnded => f.write_str("a worker driver ended at start"),
            SpawnErrorKind::ForkServerStart(_) => f.write_str("cannot start the fork server"),
            SpawnErrorKind::ForkServerFork(_) => f.write_str("the fork server could not fork"),
            SpawnErrorKind::ForkServerGone => f.write_str("the fork server is gone"),
        }
    }
}

impl Error for SpawnError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match &self.kind {
            SpawnErrorKind::ProgressSlot(e) => Some(&**e),
            SpawnErrorKind::PipeCreate(e) => Some(&**e),
            SpawnErrorKind::PipePass(e) => Some(&**e),
            SpawnErrorKind::PipeOpen(e) => Some(&**e),
            SpawnErrorKind::BadGreeting(e) => e.as_ref().map(CodecDecodeError::as_source),
            SpawnErrorKind::Encode(e) => Some(e.as_source()),
            SpawnErrorKind::ForkServerStart(e) | SpawnErrorKind::ForkServerFork(e) => Some(&**e),
            SpawnErrorKind::StartupTimeout(_)
            | SpawnErrorKind::ExitedAtStartup(_)
            | SpawnErrorKind::DiedBeforeInitializer
            | SpawnErrorKind::UnexpectedInitAnswer
            | SpawnErrorKind::DriverEnded
            | SpawnErrorKind::ForkServerGone => None,
        }
    }
}

impl PartialEq for SpawnError {
    fn eq(&self, other: &SpawnError) -> bool {
        std::mem::discriminant(&self.kind) == std::mem::discriminant(&other.kind)
    }
}

impl Eq for SpawnError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapped_errors_are_kept_as_sources() {
        let os = PoolError::os("spawning a driver thread", io::Error::from_raw_os_error(11));
        let source = os.source().expect("the io::Error");
        let io = source.downcast_ref::<io::Error>().expect("an io::Error");
        assert_eq!(io.raw_os_error(), Some(11));
        assert_eq!(os.to_string(), "spawning a driver thread failed");

        let spawn: PoolError =
            SpawnErrorKind::ForkServerFork(Arc::new(io::Error::from_raw_os_error(12))).into();
        let source = spawn.source().expect("the io::Error");
        assert_eq!(
            source
                .downcast_ref::<io::Error>()
                .and_then(io::Error::raw_os_error),
            Some(12)
        );
        assert!(spawn.to_string().starts_with("starting a worker failed"));

        /// A value whose `Serialize` refuses.
        struct Refused;
        impl serde::Serialize for Refused {
            fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
                Err(serde::ser::Error::custom("bad"))
            }
        }
        let Err(codec_error) = crate::wire::codec::encode(&Refused) else {
            panic!("Refused encoded");
        };
        let encode = EncodeError::new(codec_error);
        let config = PoolError::from(ConfigError::InitializerArgument(encode.clone()));
        assert_eq!(
            config.source().map(|e| e.to_string()),
            Some("the value could not be encoded".into())
        );
        // The codec's typed error is the next source, and bincode's (with the message) the one
        // after: nothing was flattened into text.
        let codec = config
            .source()
            .and_then(Error::source)
            .expect("the codec's error");
        assert!(matches!(
            codec.downcast_ref::<ipc_shm::codec::EncodeError>(),
            Some(ipc_shm::codec::EncodeError::Bincode(_))
        ));
        let bincode = codec.source().expect("bincode's error").to_string();
        assert!(bincode.contains("bad"), "{bincode}");
        assert_eq!(config.clone(), config);

        // A start-up frame that does not decode keeps the codec's typed error too.
        let greeting: PoolError =
            SpawnErrorKind::BadGreeting(Some(crate::wire::codec::CodecDecodeError::Header(
                ipc_shm::codec::FrameError::BadCheck { len: 1, check: 2 },
            )))
            .into();
        assert!(matches!(
            greeting
                .source()
                .and_then(|e| e.downcast_ref::<ipc_shm::codec::FrameError>()),
            Some(ipc_shm::codec::FrameError::BadCheck { .. })
        ));
    }

    #[test]
    fn errors_compare_by_kind() {
        let a: PoolError = SpawnErrorKind::ForkServerGone.into();
        let b: PoolError = SpawnErrorKind::ForkServerGone.into();
        let c: PoolError = SpawnErrorKind::DriverEnded.into();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
