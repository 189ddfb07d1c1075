//! Waiting for descriptors to become readable: `poll` for a few descriptors, and an [`Epoll`]
//! set that other threads add to while one thread waits on it.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use rustix::event::epoll;
use rustix::event::{PollFd, PollFlags, Timespec};

fn timespec(d: Duration) -> Timespec {
    Timespec {
        tv_sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        tv_nsec: i64::from(d.subsec_nanos()),
    }
}

/// Waits up to `timeout` (`None`: forever) for any of `fds` to become readable (or hung up, or
/// failed); returns which did. An interrupted wait is resumed with the whole timeout.
pub fn wait_readable(fds: &[BorrowedFd<'_>], timeout: Option<Duration>) -> io::Result<Vec<bool>> {
    let mut polls: Vec<PollFd<'_>> = fds
        .iter()
        .map(|fd| PollFd::new(fd, PollFlags::IN))
        .collect();
    let ts = timeout.map(timespec);
    loop {
        match rustix::event::poll(&mut polls, ts.as_ref()) {
            Ok(_) => break,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(polls.iter().map(|p| !p.revents().is_empty()).collect())
}

/// What `poll` reported for one descriptor.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ready {
    /// Readable (data or EOF).
    pub readable: bool,
    /// The peer hung up (every copy of its socket end is closed) or the descriptor failed.
    pub hung_up: bool,
}

/// Polls `fds` for readability, waiting at most `timeout` (`None`: forever), into `out` (one
/// [`Ready`] per descriptor). An interrupted or failed poll reports nothing ready (callers loop
/// on their own deadline).
pub fn poll(fds: &[BorrowedFd<'_>], timeout: Option<Duration>, out: &mut Vec<Ready>) {
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

/// Polls one descriptor (see [`poll`]).
pub fn poll_one(fd: BorrowedFd<'_>, timeout: Option<Duration>) -> Ready {
    let mut out = Vec::with_capacity(1);
    poll(&[fd], timeout, &mut out);
    out.first().copied().unwrap_or_default()
}

/// Waits up to `timeout` (`None`: forever) for `fd` to become writable; `Ok(false)` when the
/// time ran out. A hang-up or error counts as ready (the write that follows reports it). An
/// interrupted wait is resumed with the whole timeout.
pub fn wait_writable(fd: BorrowedFd<'_>, timeout: Option<Duration>) -> io::Result<bool> {
    let mut polls = [PollFd::from_borrowed_fd(fd, PollFlags::OUT)];
    let ts = timeout.map(timespec);
    loop {
        match rustix::event::poll(&mut polls, ts.as_ref()) {
            Ok(n) => return Ok(n > 0),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Whether the peer of this socket hung up (a non-blocking check).
pub fn hung_up(fd: impl AsFd) -> bool {
    poll_one(fd.as_fd(), Some(Duration::ZERO)).hung_up
}

/// An epoll set of one-shot readability interests, each tagged with a caller's key.
///
/// Any thread may [`add_oneshot`](Epoll::add_oneshot) or [`remove`](Epoll::remove) a descriptor
/// while another thread blocks in [`wait`](Epoll::wait): the kernel applies the change to the
/// running wait at once, so no wake-up descriptor is needed. One-shot: a descriptor reports
/// once, then stays silent until removed (a readable pidfd stays readable; a level-triggered
/// interest would report it forever). Close-on-exec.
#[derive(Debug)]
pub struct Epoll {
    fd: OwnedFd,
}

impl Epoll {
    /// An empty set.
    pub fn new() -> io::Result<Epoll> {
        Ok(Epoll {
            fd: epoll::create(epoll::CreateFlags::CLOEXEC)?,
        })
    }

    /// Reports `key` from [`wait`](Epoll::wait) once `fd` becomes readable (or hangs up), once.
    /// The caller keeps `fd` open until it [`remove`](Epoll::remove)s it.
    pub fn add_oneshot(&self, fd: BorrowedFd<'_>, key: u64) -> io::Result<()> {
        Ok(epoll::add(
            &self.fd,
            fd,
            epoll::EventData::new_u64(key),
            epoll::EventFlags::IN | epoll::EventFlags::ONESHOT,
        )?)
    }

    /// Forgets `fd` (call before closing it).
    pub fn remove(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        Ok(epoll::delete(&self.fd, fd)?)
    }

    /// Waits up to `timeout` (`None`: forever) for interests to fire, and puts their keys in
    /// `keys` (cleared first; empty after a timeout or a signal).
    pub fn wait(&self, keys: &mut Vec<u64>, timeout: Option<Duration>) -> io::Result<()> {
        keys.clear();
        let mut events = Vec::with_capacity(32);
        let ts = timeout.map(timespec);
        match epoll::wait(
            &self.fd,
            rustix::buffer::spare_capacity(&mut events),
            ts.as_ref(),
        ) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        keys.extend(events.iter().map(|e| {
            let data = e.data;
            data.u64()
        }));
        Ok(())
    }
}
