//! Waiting for descriptors to become readable.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Duration;

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

/// Whether the peer of this socket hung up (a non-blocking check).
pub fn hung_up(fd: impl AsFd) -> bool {
    poll_one(fd.as_fd(), Some(Duration::ZERO)).hung_up
}
