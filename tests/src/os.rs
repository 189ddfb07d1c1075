//! The system calls of the test support, in one place.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid};
use rustix::event::{PollFd, PollFlags, Timespec, poll};

use crate::child::ExitKind;

pub(crate) fn shm_unlink_quiet(name: &str) {
    let _ = nix::sys::mman::shm_unlink(format!("/{name}").as_str());
}

/// Makes the child that `cmd` starts die with SIGKILL when the thread that spawned it exits.
pub(crate) fn die_with_parent(cmd: &mut Command) {
    // SAFETY: the closure runs between fork and exec and makes one prctl(2) call, which is
    // async-signal-safe; it allocates nothing and touches no lock.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
                .map_err(|e| io::Error::from_raw_os_error(e as i32))
        });
    }
}

/// Forks; the child runs `body` and exits without returning.
pub(crate) fn fork(body: impl FnOnce() -> i32) -> io::Result<u32> {
    let parent = std::process::id();
    // SAFETY: fork(2) in a possibly multi-threaded process: the child gets a copy of memory in
    // which locks held by other threads stay held. The child below runs only the caller's body
    // (documented on `fork_child` to be simple work) and leaves with _exit, which runs no atexit
    // handlers and flushes no std buffers that another thread might have been holding.
    match unsafe { nix::unistd::fork() }.map_err(|e| io::Error::from_raw_os_error(e as i32))? {
        ForkResult::Parent { child } => Ok(child.as_raw() as u32),
        ForkResult::Child => {
            let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
            let code = if nix::unistd::getppid().as_raw() as u32 != parent {
                102
            } else {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)).unwrap_or(101)
            };
            // SAFETY: _exit(2) ends the process at once; it is always safe to call and is the
            // documented way out of a forked child of a multi-threaded process.
            unsafe { libc::_exit(code) }
        }
    }
}

pub(crate) fn pidfd(pid: u32) -> io::Result<OwnedFd> {
    let pid = rustix::process::Pid::from_raw(pid as i32)
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    Ok(rustix::process::pidfd_open(
        pid,
        rustix::process::PidfdFlags::empty(),
    )?)
}

/// Waits until the process behind `pidfd` exits or `timeout` passes; true if it exited.
pub(crate) fn wait_exit(pidfd: &OwnedFd, timeout: Duration) -> io::Result<bool> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let ts = Timespec {
            tv_sec: left.as_secs() as _,
            tv_nsec: left.subsec_nanos() as _,
        };
        let mut fds = [PollFd::new(pidfd, PollFlags::IN)];
        match poll(&mut fds, Some(&ts)) {
            Ok(0) => return Ok(false),
            Ok(_) => return Ok(true),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

pub(crate) fn kill(pid: u32, signal: Signal) -> io::Result<()> {
    nix::sys::signal::kill(Pid::from_raw(pid as i32), signal)
        .map_err(|e| io::Error::from_raw_os_error(e as i32))
}

/// Reaps a forked child (blocking; call after it exited or was killed).
pub(crate) fn reap(pid: u32) -> io::Result<ExitKind> {
    loop {
        match waitpid(Pid::from_raw(pid as i32), Some(WaitPidFlag::empty())) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(ExitKind::Exited(code)),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(ExitKind::Signaled(sig as i32)),
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(io::Error::from_raw_os_error(e as i32)),
        }
    }
}
