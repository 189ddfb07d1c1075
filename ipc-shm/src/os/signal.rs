//! Signals delivered as readable descriptors: the fork server's `SIGCHLD`.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

/// `SIGCHLD`, blocked in the calling thread and delivered through a non-blocking, close-on-exec
/// `signalfd` instead: the descriptor is readable while a child's end is pending.
#[derive(Debug)]
pub struct ChildSignals(SignalFd);

impl ChildSignals {
    /// Blocks `SIGCHLD` in the calling thread and opens the descriptor that receives it.
    pub fn new() -> io::Result<ChildSignals> {
        let mut mask = SigSet::empty();
        mask.add(Signal::SIGCHLD);
        mask.thread_block()?;
        let fd = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)?;
        Ok(ChildSignals(fd))
    }

    /// Reads and discards every pending signal.
    pub fn drain(&mut self) {
        while let Ok(Some(_)) = self.0.read_signal() {}
    }
}

impl AsFd for ChildSignals {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// Unblocks every signal in the calling thread (a forked child that must not inherit its
/// parent's mask).
pub fn unblock_all_signals() -> io::Result<()> {
    Ok(SigSet::all().thread_unblock()?)
}
