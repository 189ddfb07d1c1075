//! One function in one child process: [`Process`], like Python's `multiprocessing.Process`.

use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{ConfigError, Exit, PoolError, TaskError};
use crate::start::{self, StartMethod, Worker};
use crate::task::TaskRef;
use crate::wire::args;
use crate::wire::protocol::{self, FromWorker, LinkError, ToWorker};

/// Builds a [`Process`].
///
/// ```
/// fn shout(s: String) -> String {
///     s.to_uppercase()
/// }
///
/// let child = pool::ProcessBuilder::new().name("shouter").spawn(shout, "hi".to_string())?;
/// let finished = child.join();
/// assert_eq!(finished.result?, "HI");
/// assert!(finished.exit.success());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `spawn` is called"]
pub struct ProcessBuilder {
    name: Option<String>,
    daemon: bool,
    start_method: Option<StartMethod>,
    drop_grace: Duration,
}

/// How long dropping a still-running non-daemon [`Process`] waits for its function by default
/// (see [`ProcessBuilder::drop_grace`]).
pub const DEFAULT_DROP_GRACE: Duration = Duration::from_secs(10);

/// How long a child has, after SIGTERM, before it gets SIGKILL (when a drop's grace ran out).
const TERM_GRACE: Duration = Duration::from_secs(1);

impl Default for ProcessBuilder {
    fn default() -> Self {
        ProcessBuilder::new()
    }
}

impl ProcessBuilder {
    /// A builder with default settings: not a daemon, the default start method.
    pub fn new() -> ProcessBuilder {
        ProcessBuilder {
            name: None,
            daemon: false,
            start_method: None,
            drop_grace: DEFAULT_DROP_GRACE,
        }
    }

    /// A name, for messages and [`Process::name`].
    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.to_owned());
        self
    }

    /// A daemon is killed when its `Process` handle is dropped unjoined; a non-daemon is waited
    /// for, up to its [`drop_grace`](ProcessBuilder::drop_grace). Either way a child never
    /// outlives its parent process (it gets SIGKILL when the parent dies).
    pub fn daemon(mut self, daemon: bool) -> Self {
        self.daemon = daemon;
        self
    }

    /// How long dropping the [`Process`] unjoined waits for a non-daemon child's function to
    /// finish (default [`DEFAULT_DROP_GRACE`], 10 s). When it has not finished by then, the
    /// child gets SIGTERM, then SIGKILL one second later, and is reaped: a drop never waits
    /// longer than about `grace` + 1 s, and never leaves a child or a zombie behind (a
    /// `join_timeout` that timed out cannot lead to a drop that hangs).
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    ///
    /// fn forever(_: ()) {
    ///     loop {
    ///         std::thread::park();
    ///     }
    /// }
    ///
    /// let child = pool::ProcessBuilder::new()
    ///     .drop_grace(Duration::from_millis(50))
    ///     .spawn(forever, ())?;
    /// let child = child.join_timeout(Duration::from_millis(10)).unwrap_err();
    /// let started = Instant::now();
    /// drop(child); // waits 50 ms, then SIGTERM, and reaps it
    /// assert!(started.elapsed() < Duration::from_secs(5));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn drop_grace(mut self, grace: Duration) -> Self {
        self.drop_grace = grace;
        self
    }

    /// How the child is created (default: [`crate::default_start_method`]).
    pub fn start_method(mut self, method: StartMethod) -> Self {
        self.start_method = Some(method);
        self
    }

    /// Starts a child process running `f(arg)`.
    pub fn spawn<A, R>(self, f: fn(A) -> R, arg: A) -> Result<Process<R>, PoolError>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
    {
        let method = self
            .start_method
            .unwrap_or_else(crate::default_start_method);
        start::check_start_method(method)?;
        let args = args::encode(std::slice::from_ref(&arg))
            .map_err(|e| e.into_config_error(ConfigError::Argument))?;
        let mut worker = start::start(method)?;
        let mut buf = Vec::new();
        let mut frame = Vec::new();
        if let Err(failure) = start::handshake(&mut worker, None, &mut buf, &mut frame) {
            worker.kill();
            let _ = worker.reap();
            return Err(failure.error);
        }
        protocol::frame(
            &ToWorker::Run {
                job: 1,
                task: TaskRef::new(f),
                fds: args.batch_id(),
                bulk: None,
            },
            &args.bytes,
            &mut frame,
        )
        .map_err(|e| ConfigError::Argument(crate::EncodeError::new(e)))?;
        // A send failure means the child is already gone; `join` reports how it ended.
        let _ = worker.link.send_with_fds(&frame, args.fds.as_deref());
        let pid = worker.pid;
        Ok(Process {
            name: self.name.unwrap_or_else(|| format!("Process-{pid}")),
            daemon: self.daemon,
            drop_grace: self.drop_grace,
            worker: Some(Box::new(worker)),
            buf,
            frame,
            _result: PhantomData,
        })
    }
}

/// A child process running one function; its return value (or panic) comes back to the parent.
///
/// # Dropping
///
/// Dropping a `Process` that was not joined never blocks for long and never leaves a child
/// behind: a daemon is killed at once; a non-daemon is given its
/// [`drop_grace`](ProcessBuilder::drop_grace) (default 10 s) to finish its function, then gets
/// SIGTERM, then SIGKILL a second later. Either way the child is reaped before `drop` returns.
/// Join it to wait as long as it takes.
pub struct Process<R> {
    name: String,
    daemon: bool,
    drop_grace: Duration,
    // Boxed: keeps `join_timeout`'s `Err(Process)` small.
    worker: Option<Box<Worker>>,
    buf: Vec<u8>,
    frame: Vec<u8>,
    _result: PhantomData<fn() -> R>,
}

/// A finished [`Process`]: the function's outcome and how the process ended.
#[derive(Debug)]
pub struct Finished<R> {
    /// The return value, or why there is none (`Panicked`, `WorkerLost` with the exit status).
    pub result: Result<R, TaskError>,
    /// How the process ended.
    pub exit: Exit,
}

impl<R> fmt::Debug for Process<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Process")
            .field("name", &self.name)
            .field("pid", &self.pid())
            .field("daemon", &self.daemon)
            .finish()
    }
}

impl<R> Process<R> {
    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.worker.as_ref().map_or(0, |w| w.pid)
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the child is still running.
    pub fn is_alive(&mut self) -> bool {
        self.worker
            .as_mut()
            .is_some_and(|w| !w.wait_exit(Duration::ZERO))
    }

    /// How the child ended, if it has (without waiting).
    pub fn exit_status(&mut self) -> Option<Exit> {
        let w = self.worker.as_mut()?;
        if w.wait_exit(Duration::ZERO) {
            w.reap().ok()
        } else {
            None
        }
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        if let Some(w) = &self.worker {
            let _ = ipc_shm::os::kill(w.pid, ipc_shm::os::Signal::SIGTERM);
        }
    }

    /// Sends SIGKILL.
    pub fn kill(&self) {
        if let Some(w) = &self.worker {
            w.kill();
        }
    }
}

impl<R: DeserializeOwned> Process<R> {
    /// Waits for the function's result and for the process to end.
    pub fn join(mut self) -> Finished<R> {
        self.wait(None)
            .unwrap_or_else(|_| unreachable!("an unlimited wait cannot time out"))
    }

    /// Like [`join`](Process::join), but gives the process back if it has not finished within
    /// `timeout`.
    pub fn join_timeout(mut self, timeout: Duration) -> Result<Finished<R>, Process<R>> {
        match self.wait(Some(timeout)) {
            Ok(f) => Ok(f),
            Err(()) => Err(self),
        }
    }

    fn wait(&mut self, timeout: Option<Duration>) -> Result<Finished<R>, ()> {
        let Some(worker) = self.worker.as_mut() else {
            return Ok(Finished {
                result: Err(TaskError::Terminated),
                exit: Exit::Code(-1),
            });
        };
        let result = match worker.link.recv(&mut self.buf, timeout) {
            Err(LinkError::Timeout) => return Err(()),
            Ok(()) => decode_single(&self.buf),
            Err(_) => None,
        };
        let mut worker = self
            .worker
            .take()
            .unwrap_or_else(|| unreachable!("checked above"));
        if result.is_some() && protocol::frame(&ToWorker::Exit, &[], &mut self.frame).is_ok() {
            let _ = worker.link.send(&self.frame);
        }
        if !worker.wait_exit(Duration::from_secs(5)) {
            worker.kill();
        }
        let exit = worker.reap().unwrap_or(Exit::Code(-1));
        let result = result.unwrap_or(Err(TaskError::WorkerLost {
            pid: worker.pid,
            exit,
        }));
        Ok(Finished { result, exit })
    }
}

fn decode_single<R: DeserializeOwned>(frame: &[u8]) -> Option<Result<R, TaskError>> {
    match protocol::unframe::<FromWorker>(frame).ok()? {
        (FromWorker::Results { count: 1, .. }, payload) => {
            crate::result::decode_outcomes::<R>(1, payload)
                .into_iter()
                .next()
        }
        (FromWorker::ChunkFailed { failure, .. }, _) => {
            Some(Err(crate::result::failure_to_error(failure)))
        }
        _ => None,
    }
}

impl<R> Drop for Process<R> {
    fn drop(&mut self) {
        if let Some(mut w) = self.worker.take() {
            if self.daemon {
                w.kill();
            } else {
                // Let it finish its function, for at most the grace period: wait for its report,
                // then tell it to exit.
                let reported = match w.link.recv(&mut self.buf, Some(self.drop_grace)) {
                    Ok(()) => true,
                    Err(LinkError::Timeout) => false,
                    // Gone already (or its pipe broke): only the reaping is left.
                    Err(_) => true,
                };
                if reported {
                    if protocol::frame(&ToWorker::Exit, &[], &mut self.frame).is_ok() {
                        let _ = w.link.send(&self.frame);
                    }
                    if !w.wait_exit(self.drop_grace.max(TERM_GRACE)) {
                        w.kill();
                    }
                } else {
                    let _ = ipc_shm::os::kill(w.pid, ipc_shm::os::Signal::SIGTERM);
                    if !w.wait_exit(TERM_GRACE) {
                        w.kill();
                    }
                }
            }
            let _ = w.reap();
        }
    }
}
