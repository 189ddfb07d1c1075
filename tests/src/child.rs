//! Child processes with watchdogs.

use std::fmt;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ipc_shm::os::{self, ExitStatus, Signal};

use crate::{CHILD_ENV, DEFAULT_WATCHDOG, entry_test_name};

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitKind {
    /// It exited with this status code.
    Exited(i32),
    /// It was killed by this signal.
    Signaled(i32),
}

/// A finished child: how it ended and what it printed (re-run children only).
#[derive(Clone)]
pub struct ChildOutcome {
    /// How it ended.
    pub exit: ExitKind,
    /// Its standard output (empty for forked children, which share the parent's).
    pub stdout: String,
    /// Its standard error (empty for forked children).
    pub stderr: String,
    /// Its label, for messages.
    pub label: String,
}

impl ChildOutcome {
    /// Whether it exited with status 0.
    pub fn success(&self) -> bool {
        self.exit == ExitKind::Exited(0)
    }

    /// Its exit code, if it exited.
    pub fn code(&self) -> Option<i32> {
        match self.exit {
            ExitKind::Exited(c) => Some(c),
            ExitKind::Signaled(_) => None,
        }
    }

    /// The signal that killed it, if one did.
    pub fn signal(&self) -> Option<i32> {
        match self.exit {
            ExitKind::Signaled(s) => Some(s),
            ExitKind::Exited(_) => None,
        }
    }

    /// Panics, showing the child's output, unless it exited with status 0.
    #[track_caller]
    pub fn assert_success(&self) {
        assert!(self.success(), "child failed: {self:?}");
    }
}

impl fmt::Debug for ChildOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "child {} ended {:?}", self.label, self.exit)?;
        if !self.stdout.trim().is_empty() {
            write!(f, "\n--- stdout ---\n{}", self.stdout.trim_end())?;
        }
        if !self.stderr.trim().is_empty() {
            write!(f, "\n--- stderr ---\n{}", self.stderr.trim_end())?;
        }
        Ok(())
    }
}

/// A child process to start: the current test binary re-run as a [`child_entry!`] entry, or
/// any program.
///
/// [`child_entry!`]: crate::child_entry
#[derive(Debug)]
pub struct ChildCommand {
    cmd: Command,
    label: String,
    watchdog: Duration,
}

impl ChildCommand {
    /// Re-runs the current test binary as the entry `name` of module `module_path` (use
    /// [`child!`](crate::child) rather than calling this).
    pub fn for_entry(module_path: &str, name: &str) -> ChildCommand {
        let test = entry_test_name(module_path, name);
        let exe = std::env::current_exe().expect("the test binary's own path");
        let mut cmd = Command::new(exe);
        cmd.args([
            "--exact",
            &test,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &test);
        ChildCommand::new(cmd, test)
    }

    /// Runs `cmd` (for example a helper binary) as a watched child.
    pub fn new(mut cmd: Command, label: impl Into<String>) -> ChildCommand {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        os::command_dies_with_parent(&mut cmd);
        ChildCommand {
            cmd,
            label: label.into(),
            watchdog: DEFAULT_WATCHDOG,
        }
    }

    /// Sets an environment variable in the child.
    pub fn env(mut self, key: &str, value: impl AsRef<std::ffi::OsStr>) -> ChildCommand {
        self.cmd.env(key, value);
        self
    }

    /// How long the child may run before it is killed and the test fails (default 60 s).
    pub fn watchdog(mut self, watchdog: Duration) -> ChildCommand {
        self.watchdog = watchdog;
        self
    }

    /// The underlying command, for example to pass descriptors with `ipc_shm::pass_fd_to_command`.
    pub fn command_mut(&mut self) -> &mut Command {
        &mut self.cmd
    }

    /// Starts the child.
    #[track_caller]
    pub fn spawn(mut self) -> ChildProcess {
        let mut child = self
            .cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning child {}: {e}", self.label));
        let pid = child.id();
        let pidfd = os::pidfd(pid).expect("pidfd_open of a child we just spawned");
        let drain = |r: Option<Box<dyn Read + Send>>| {
            r.map(|mut r| {
                std::thread::spawn(move || {
                    let mut s = Vec::new();
                    let _ = r.read_to_end(&mut s);
                    String::from_utf8_lossy(&s).into_owned()
                })
            })
        };
        let out = drain(child.stdout.take().map(|s| Box::new(s) as _));
        let err = drain(child.stderr.take().map(|s| Box::new(s) as _));
        ChildProcess {
            pid,
            pidfd,
            std: Some(child),
            out,
            err,
            deadline: deadline_after(self.watchdog),
            label: self.label,
            done: None,
        }
    }

    /// Starts the child and waits for it (under the watchdog).
    #[track_caller]
    pub fn run(self) -> ChildOutcome {
        self.spawn().wait()
    }
}

/// Runs `body` in a forked copy of this process, under a watchdog of `watchdog`; the child exits
/// with the code `body` returns (101 if it panics).
///
/// Keep `body` simple: other threads of the test binary may have held locks (stdout, the
/// allocator's arenas) at the instant of the fork, and the child gets them still held.
#[track_caller]
pub fn fork_child(watchdog: Duration, body: impl FnOnce() -> i32) -> ChildProcess {
    // The child leaves with `_exit`; a panic in `body` becomes exit code 101.
    let body = || std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)).unwrap_or(101);
    let pid = os::fork_then(&[], body).expect("fork");
    let pidfd = os::pidfd(pid).expect("pidfd_open of a child we just forked");
    ChildProcess {
        pid,
        pidfd,
        std: None,
        out: None,
        err: None,
        deadline: deadline_after(watchdog),
        label: format!("forked pid {pid}"),
        done: None,
    }
}

/// The instant `limit` from now, saturating at about a century for a limit too long to add to
/// the clock (`Duration::MAX`: no watchdog), rather than panicking as `Instant + Duration` does.
fn deadline_after(limit: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    let now = Instant::now();
    now.checked_add(limit)
        .or_else(|| now.checked_add(FAR))
        .unwrap_or(now)
}

/// A running child under a watchdog. Dropping it kills and reaps the child if it still runs.
#[derive(Debug)]
pub struct ChildProcess {
    pid: u32,
    pidfd: OwnedFd,
    std: Option<std::process::Child>,
    out: Option<JoinHandle<String>>,
    err: Option<JoinHandle<String>>,
    deadline: Instant,
    label: String,
    done: Option<ChildOutcome>,
}

impl ChildProcess {
    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Sends `signal` to the child (no effect once it has been reaped).
    pub fn signal(&self, signal: Signal) {
        if self.done.is_none() {
            let _ = os::kill(self.pid, signal);
        }
    }

    /// Kills the child with SIGKILL.
    pub fn kill(&self) {
        self.signal(Signal::SIGKILL);
    }

    /// Waits for the child to end; if the watchdog expires first, kills it and panics.
    #[track_caller]
    pub fn wait(mut self) -> ChildOutcome {
        let left = self.deadline.saturating_duration_since(Instant::now());
        match self.wait_for(left) {
            Some(outcome) => outcome,
            None => {
                self.kill();
                let outcome = self.finish();
                panic!("watchdog: child did not finish in time, killed it: {outcome:?}");
            }
        }
    }

    /// Waits at most `timeout` (and never past the watchdog) for the child to end.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ChildOutcome> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        self.wait_for(timeout.min(left))
    }

    fn wait_for(&mut self, timeout: Duration) -> Option<ChildOutcome> {
        if let Some(done) = &self.done {
            return Some(done.clone());
        }
        match os::wait_exit(&self.pidfd, timeout) {
            Ok(true) => Some(self.finish()),
            Ok(false) => None,
            Err(e) => panic!("waiting for child {}: {e}", self.label),
        }
    }

    /// Reaps the child (which has exited or been killed) and collects its output.
    fn finish(&mut self) -> ChildOutcome {
        if let Some(done) = &self.done {
            return done.clone();
        }
        let exit = match self.std.as_mut() {
            Some(child) => {
                let status = child.wait().expect("waiting for a child");
                match (status.code(), status.signal()) {
                    (Some(code), _) => ExitKind::Exited(code),
                    (None, Some(sig)) => ExitKind::Signaled(sig),
                    (None, None) => ExitKind::Exited(-1),
                }
            }
            None => match os::reap(self.pid).expect("waitpid") {
                ExitStatus::Code(code) => ExitKind::Exited(code),
                ExitStatus::Signal(sig) => ExitKind::Signaled(sig),
            },
        };
        let join = |h: Option<JoinHandle<String>>| h.map(|h| h.join().unwrap_or_default());
        let outcome = ChildOutcome {
            exit,
            stdout: join(self.out.take()).unwrap_or_default(),
            stderr: join(self.err.take()).unwrap_or_default(),
            label: self.label.clone(),
        };
        self.done = Some(outcome.clone());
        outcome
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if self.done.is_none() {
            self.kill();
            let _ = self.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endless_watchdog_saturates_instead_of_panicking() {
        let far = deadline_after(Duration::MAX);
        assert!(far > Instant::now() + Duration::from_secs(365 * 24 * 3600));
        let near = deadline_after(Duration::from_secs(1));
        assert!(near <= Instant::now() + Duration::from_secs(1));
    }
}
