//! [`Socket`], the production [`Link`] of an end: the socketpair that tracks peer death and, in
//! fd mode, carries readiness bytes. Its system calls are the workspace's OS layer
//! ([`ipc_shm::os`]); this file only maps the [`Link`] operations onto them.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use ipc_shm::os;

use crate::end::Link;

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
        os::hung_up(self.fd())
    }

    fn drain(&self) -> bool {
        os::drain(self.fd())
    }

    fn notify(&self) {
        os::send_byte(self.fd())
    }

    fn sleep(&self, timeout: Option<Duration>) {
        os::poll_one(self.fd(), timeout);
    }

    fn pid(&self) -> u32 {
        os::pid()
    }

    fn process_exists(&self, pid: u32) -> bool {
        os::process_exists(pid)
    }
}
