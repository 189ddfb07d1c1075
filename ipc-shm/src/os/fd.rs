//! Descriptors: whether a number is open, taking ownership of an inherited number, keeping one
//! open across `exec` in one child only, duplicating.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

use rustix::io::FdFlags;

/// Whether `fd` is an open descriptor in this process.
pub fn is_open(fd: RawFd) -> bool {
    if fd < 0 {
        return false;
    }
    // SAFETY: `borrow_raw` requires `fd` to stay open for the borrow's lifetime. The borrow
    // lives for this one F_GETFD call, which only reads the descriptor table: it cannot close or
    // alias `fd`, and a number that is not open makes fcntl fail with EBADF instead of touching
    // anything (the -1 sentinel is excluded above).
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    rustix::io::fcntl_getfd(borrowed).is_ok()
}

/// Takes ownership of a descriptor number this process was handed (by `exec` inheritance).
///
/// # Safety
///
/// `fd` must be open and owned by nobody else in this process (the caller keeps a registry of
/// taken numbers so that it is taken once); it is closed when the result is dropped.
pub unsafe fn own(fd: RawFd) -> OwnedFd {
    // SAFETY: the caller guarantees `fd` is open and that nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Makes `fd` survive `exec` in the child `cmd` will start, without clearing close-on-exec in
/// this process (so other children never inherit it). `cmd` keeps `fd` open until it is dropped.
pub fn inherit_in_child(cmd: &mut Command, fd: OwnedFd) {
    let raw = fd.as_raw_fd();
    // SAFETY: `pre_exec`'s contract: the closure runs in the child between fork and exec, where
    // only async-signal-safe calls are allowed. It makes one fcntl(2) call and allocates nothing
    // (the error path builds an `io::Error` from a raw errno, which does not allocate). `fd` is
    // owned by the closure, which `cmd` keeps alive until after the spawn, so `raw` is open in
    // the child.
    unsafe {
        cmd.pre_exec(move || {
            let _keep_open = &fd;
            // SAFETY: `raw` is open in the child (see above) and is only borrowed for this call.
            let borrowed = BorrowedFd::borrow_raw(raw);
            Ok(rustix::io::fcntl_setfd(borrowed, FdFlags::empty())?)
        });
    }
}

/// A new descriptor for the same open file, close-on-exec.
pub fn dup(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    fd.try_clone_to_owned()
}
