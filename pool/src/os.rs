//! Every system call of the pool, in one place (Linux; another OS is another module).
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid};
use rustix::event::{PollFd, PollFlags, Timespec, poll};

use crate::error::Exit;

fn io(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// This process's id.
pub(crate) fn pid() -> u32 {
    std::process::id()
}

/// Forks. In the child, `child` runs and the process then exits with the code it returns; it
/// never returns to the caller. In the parent, returns the child's pid.
///
/// The child asks for SIGKILL when its parent dies, and exits at once if the parent already died
/// between the fork and that request.
pub(crate) fn fork_then(child: impl FnOnce() -> i32) -> io::Result<u32> {
    let parent = pid();
    // SAFETY: fork(2) duplicates only the calling thread; in the child, locks held by other
    // threads of a multi-threaded parent stay held forever. The child below touches no lock that
    // another parent thread could hold except through `child`, whose callers (the Fork start
    // method) document that caveat, and it leaves with _exit so no atexit handler or std buffer
    // flush can deadlock.
    match unsafe { nix::unistd::fork() }.map_err(io)? {
        ForkResult::Parent { child } => Ok(child.as_raw() as u32),
        ForkResult::Child => {
            let code = if die_with_parent(parent).is_ok() {
                child()
            } else {
                111
            };
            exit_now(code)
        }
    }
}

/// Asks the kernel for SIGKILL when the parent `parent` dies, and checks it has not already.
pub(crate) fn die_with_parent(parent: u32) -> io::Result<()> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(io)?;
    if nix::unistd::getppid().as_raw() as u32 != parent {
        return Err(io::Error::other(
            "the parent died before the worker started",
        ));
    }
    Ok(())
}

/// Ends the process at once: no atexit handlers, no flushing of std buffers.
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: _exit(2) has no preconditions; it never returns.
    unsafe { libc::_exit(code) }
}

/// Makes the child that `cmd` starts die with SIGKILL when this thread's process dies.
/// (PR_SET_PDEATHSIG fires when the *thread* that forked exits; pool threads live as long as
/// the pool, and workers also watch the parent through their pipe.)
pub(crate) fn command_dies_with_parent(cmd: &mut Command) {
    // SAFETY: runs between fork and exec; prctl(2) is async-signal-safe and nothing is allocated.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
                .map_err(|e| io::Error::from_raw_os_error(e as i32))
        });
    }
}

/// A pidfd for `pid` (readable once the process exits; works for non-children too).
pub(crate) fn pidfd(pid: u32) -> io::Result<OwnedFd> {
    let pid = rustix::process::Pid::from_raw(pid as i32)
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    Ok(rustix::process::pidfd_open(
        pid,
        rustix::process::PidfdFlags::empty(),
    )?)
}

/// Waits up to `timeout` for any of `fds` to become readable; returns which did.
pub(crate) fn wait_readable(
    fds: &[BorrowedFd<'_>],
    timeout: Option<Duration>,
) -> io::Result<Vec<bool>> {
    let mut polls: Vec<PollFd<'_>> = fds
        .iter()
        .map(|fd| PollFd::new(fd, PollFlags::IN))
        .collect();
    let ts = timeout.map(|t| Timespec {
        tv_sec: t.as_secs() as _,
        tv_nsec: t.subsec_nanos() as _,
    });
    loop {
        match poll(&mut polls, ts.as_ref()) {
            Ok(_) => break,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(polls.iter().map(|p| !p.revents().is_empty()).collect())
}

/// Sends `signal` to `pid`; a process that is already gone is not an error.
pub(crate) fn kill(pid: u32, signal: Signal) -> io::Result<()> {
    match nix::sys::signal::kill(Pid::from_raw(pid as i32), signal) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(e) => Err(io(e)),
    }
}

/// Reaps the child `pid`, blocking until it has ended.
pub(crate) fn reap(pid: u32) -> io::Result<Exit> {
    loop {
        match waitpid(Pid::from_raw(pid as i32), None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(Exit::Code(code)),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(Exit::Signal(sig as i32)),
            Ok(_) => continue,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(io(e)),
        }
    }
}

/// Reaps the child `pid` if it has ended; `None` if it still runs.
pub(crate) fn try_reap(pid: u32) -> io::Result<Option<Exit>> {
    match waitpid(Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG)) {
        Ok(WaitStatus::Exited(_, code)) => Ok(Some(Exit::Code(code))),
        Ok(WaitStatus::Signaled(_, sig, _)) => Ok(Some(Exit::Signal(sig as i32))),
        Ok(_) => Ok(None),
        Err(Errno::EINTR) => Ok(None),
        Err(e) => Err(io(e)),
    }
}

/// Sends `bytes` as one message on the socket `sock`, with `fds` attached (`SCM_RIGHTS`).
pub(crate) fn send_with_fds(sock: RawFd, bytes: &[u8], fds: &[RawFd]) -> io::Result<()> {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    let iov = [std::io::IoSlice::new(bytes)];
    let cmsg = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &cmsg };
    loop {
        match sendmsg::<()>(sock, &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Ok(_) => return Ok(()),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(io(e)),
        }
    }
}

/// Receives one message from the socket `sock` into `buf`, and the descriptors it carries (at
/// most four); returns the message's length (0 at end of stream).
pub(crate) fn recv_with_fds(sock: RawFd, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    use std::os::fd::FromRawFd;
    let mut cmsg = nix::cmsg_space!([RawFd; 4]);
    loop {
        let mut iov = [std::io::IoSliceMut::new(buf)];
        let msg = match recvmsg::<()>(sock, &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC) {
            Ok(m) => m,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(io(e)),
        };
        let mut fds = Vec::new();
        for c in msg.cmsgs().map_err(io)? {
            if let ControlMessageOwned::ScmRights(raw) = c {
                for fd in raw {
                    // SAFETY: the kernel just installed `fd` in this process for this message
                    // (SCM_RIGHTS); nothing else knows the number, so we are its only owner.
                    fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        }
        return Ok((msg.bytes, fds));
    }
}

/// Closes `fd` (a pool-internal descriptor inherited by a forked child that must not keep it).
pub(crate) fn close_raw(fd: RawFd) {
    // SAFETY: closing a descriptor number has no memory-safety preconditions; the caller passes
    // only numbers from the pool's registry of its own descriptors, which nothing in a freshly
    // forked worker owns any more (the objects that owned them in the parent are never used
    // in the child).
    unsafe {
        libc::close(fd);
    }
}

/// The identity of this process's executable: device, inode, size and modification time.
pub(crate) fn exe_identity() -> io::Result<(u64, u64, u64, i64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata("/proc/self/exe")?;
    Ok((m.dev(), m.ino(), m.size(), m.mtime()))
}

/// Resident set size and CPU time (user + system) of `pid`, from /proc.
pub(crate) fn usage(pid: u32) -> Option<(u64, Duration)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the ")", field 3 (state) is index 0; utime is field 14 and stime 15; rss is 24.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let rss_pages: u64 = fields.get(21)?.parse().ok()?;
    let ticks = clock_ticks();
    let cpu = Duration::from_secs_f64((utime + stime) as f64 / ticks as f64);
    Some((rss_pages * page_size(), cpu))
}

/// Resident set size of `pid` in bytes (from /proc/<pid>/statm, cheaper than stat).
pub(crate) fn rss(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_size())
}

fn page_size() -> u64 {
    rustix::param::page_size() as u64
}

fn clock_ticks() -> u64 {
    rustix::param::clock_ticks_per_second().max(1)
}

/// The CPUs this process may use: affinity and cgroup quota respected (std does both).
pub(crate) fn available_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Borrows an owned descriptor (helper for building poll sets).
pub(crate) fn borrow(fd: &OwnedFd) -> BorrowedFd<'_> {
    fd.as_fd()
}
