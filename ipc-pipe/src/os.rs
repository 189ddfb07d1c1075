//! The operating-system calls of the crate (all through `rustix`, no `unsafe` here): the
//! socketpair that tracks peer death and carries readiness bytes, `poll`, and `getpid`; and
//! [`Socket`], the production [`Link`] of an end.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType};

use crate::end::Link;

/// A connected pair of Unix stream sockets, close-on-exec and non-blocking.
pub(crate) fn socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?)
}

/// Sends one readiness byte to the peer. Never blocks and never raises `SIGPIPE`; a full
/// buffer (a byte is already pending) and a dead peer are both fine to ignore here.
pub(crate) fn send_byte(fd: BorrowedFd<'_>) {
    let _ = rustix::net::send(fd, &[1], SendFlags::DONTWAIT | SendFlags::NOSIGNAL);
}

/// Reads and discards every pending readiness byte. Returns `true` if the peer hung up (EOF).
pub(crate) fn drain(fd: BorrowedFd<'_>) -> bool {
    let mut buf = [0u8; 64];
    loop {
        match rustix::net::recv(fd, &mut buf[..], RecvFlags::DONTWAIT) {
            Ok((0, _)) => return true,
            Ok((n, _)) if n < buf.len() => return false,
            Ok(_) => continue,
            Err(Errno::INTR) => continue,
            Err(_) => return false,
        }
    }
}

fn timespec(d: Duration) -> Timespec {
    Timespec {
        tv_sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        tv_nsec: i64::from(d.subsec_nanos()),
    }
}

/// What `poll` reported for one descriptor.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Ready {
    /// Readable (a readiness byte or EOF).
    pub(crate) readable: bool,
    /// The peer hung up (every copy of its socket end is closed) or the socket failed.
    pub(crate) hung_up: bool,
}

/// Polls `fds` for readability, waiting at most `timeout` (`None`: forever). Interrupted polls
/// return with nothing ready (callers loop on their own deadline).
pub(crate) fn poll(fds: &[BorrowedFd<'_>], timeout: Option<Duration>, out: &mut Vec<Ready>) {
    let mut pfds: Vec<PollFd<'_>> = fds
        .iter()
        .map(|fd| PollFd::from_borrowed_fd(*fd, PollFlags::IN))
        .collect();
    let ts = timeout.map(timespec);
    out.clear();
    match rustix::event::poll(&mut pfds, ts.as_ref()) {
        Ok(_) => out.extend(pfds.iter().map(|p| {
            let r = p.revents();
            Ready {
                readable: r.intersects(PollFlags::IN | PollFlags::HUP | PollFlags::ERR),
                hung_up: r.intersects(PollFlags::HUP | PollFlags::ERR),
            }
        })),
        Err(_) => out.resize(fds.len(), Ready::default()),
    }
}

/// Polls one descriptor.
pub(crate) fn poll_one(fd: BorrowedFd<'_>, timeout: Option<Duration>) -> Ready {
    let mut out = Vec::with_capacity(1);
    poll(&[fd], timeout, &mut out);
    out.first().copied().unwrap_or_default()
}

/// Whether the peer of this socket hung up (non-blocking check).
pub(crate) fn hung_up(fd: impl AsFd) -> bool {
    poll_one(fd.as_fd(), Some(Duration::ZERO)).hung_up
}

/// This process's id.
pub(crate) fn pid() -> u32 {
    rustix::process::getpid().as_raw_nonzero().get() as u32
}

/// Whether a process with this id exists (it may be a zombie; good enough for misuse checks).
pub(crate) fn process_exists(pid: u32) -> bool {
    let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return false;
    };
    !matches!(rustix::process::test_kill_process(pid), Err(Errno::SRCH))
}

/// An end's socket of the pipe's socketpair: the kernel reports the peer's hang-up on it, and in
/// fd mode it carries readiness bytes. Taken (closed) when the end is dropped or released.
#[derive(Debug)]
pub(crate) struct Socket(Option<OwnedFd>);

impl Socket {
    /// Wraps an end's socket.
    pub(crate) fn new(fd: OwnedFd) -> Socket {
        Socket(Some(fd))
    }

    /// The descriptor.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.0
            .as_ref()
            .expect("the socket is only taken in drop, release and into_raw_parts")
            .as_fd()
    }

    /// Takes the descriptor out (the end is going away).
    pub(crate) fn take(&mut self) -> Option<OwnedFd> {
        self.0.take()
    }
}

impl Link for Socket {
    fn hung_up(&self) -> bool {
        hung_up(self.fd())
    }

    fn drain(&self) -> bool {
        drain(self.fd())
    }

    fn notify(&self) {
        send_byte(self.fd())
    }

    fn sleep(&self, timeout: Option<Duration>) {
        poll_one(self.fd(), timeout);
    }

    fn pid(&self) -> u32 {
        pid()
    }

    fn process_exists(&self, pid: u32) -> bool {
        process_exists(pid)
    }
}
