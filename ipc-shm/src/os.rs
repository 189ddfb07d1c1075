//! Every system call of this crate, in one place (Linux today; another OS is another module).
//!
//! Each function turns `errno` into `io::Error` and knows nothing of headers or layouts.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, FdFlag, OFlag, SealFlag, fcntl};
use nix::sys::memfd::{MFdFlags, memfd_create};
use nix::sys::mman::{shm_open, shm_unlink};
use nix::sys::stat::{Mode, fchmod, fstat};
use nix::unistd::ftruncate;

/// The longest name (without the leading '/') that `shm_open` accepts: NAME_MAX less the '/'.
pub(crate) const MAX_NAME_LEN: usize = 254;

fn io(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

fn shm_path(name: &str) -> io::Result<CString> {
    CString::new(format!("/{name}")).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// Creates a new POSIX shared-memory object exclusively, with exactly `mode`.
pub(crate) fn shm_create(name: &str, mode: u32) -> io::Result<OwnedFd> {
    let path = shm_path(name)?;
    let mode = Mode::from_bits_truncate(mode);
    let fd = shm_open(
        path.as_c_str(),
        OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR,
        mode,
    )
    .map_err(io)?;
    // The umask may have cleared bits the caller asked for; set the mode exactly.
    fchmod(&fd, mode).map_err(io)?;
    Ok(fd)
}

/// Opens an existing POSIX shared-memory object for reading and writing.
pub(crate) fn shm_open_existing(name: &str) -> io::Result<OwnedFd> {
    let path = shm_path(name)?;
    shm_open(path.as_c_str(), OFlag::O_RDWR, Mode::empty()).map_err(io)
}

/// Removes a POSIX shared-memory name.
pub(crate) fn shm_remove(name: &str) -> io::Result<()> {
    let path = shm_path(name)?;
    shm_unlink(path.as_c_str()).map_err(io)
}

/// Creates an anonymous memfd, close-on-exec, which can be sealed.
pub(crate) fn memfd(debug_name: &str) -> io::Result<OwnedFd> {
    let name = CString::new(debug_name).unwrap_or_else(|_| c"ipc-shm".to_owned());
    memfd_create(
        name.as_c_str(),
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )
    .map_err(io)
}

/// Seals a memfd's size so that no process can shrink it under another's mapping (SIGBUS).
pub(crate) fn seal_size(fd: BorrowedFd<'_>) -> io::Result<()> {
    let seals = SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL;
    fcntl(fd, FcntlArg::F_ADD_SEALS(seals))
        .map(drop)
        .map_err(io)
}

/// Sets the object's size.
pub(crate) fn set_len(fd: BorrowedFd<'_>, len: u64) -> io::Result<()> {
    let len = i64::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc_efbig()))?;
    ftruncate(fd, len).map_err(io)
}

fn libc_efbig() -> i32 {
    Errno::EFBIG as i32
}

/// The object's real size.
pub(crate) fn len_of(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let st = fstat(fd).map_err(io)?;
    Ok(u64::try_from(st.st_size).unwrap_or(0))
}

/// This process's id.
pub(crate) fn pid() -> u32 {
    std::process::id()
}

/// Whether `fd` is an open descriptor in this process.
pub(crate) fn is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only reads the descriptor table; borrowing `fd` for the duration of the
    // call cannot close or alias it, and an fd that is not open makes fcntl fail with EBADF
    // instead of touching anything.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    fcntl(borrowed, FcntlArg::F_GETFD).is_ok()
}

/// Takes ownership of a descriptor number this process was handed.
///
/// # Safety
///
/// `fd` must be open and owned by nobody else in this process (the caller keeps a registry of
/// taken numbers so that it is taken once).
pub(crate) unsafe fn own(fd: RawFd) -> OwnedFd {
    // SAFETY: the caller guarantees `fd` is open and that nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Makes `fd` survive `exec` in the child `cmd` will start, without clearing close-on-exec in
/// this process (so other children never inherit it). `cmd` keeps `fd` open until it is dropped.
pub(crate) fn inherit_in_child(cmd: &mut Command, fd: OwnedFd) {
    let raw = fd.as_raw_fd();
    // SAFETY: the closure runs in the child between fork and exec, where only async-signal-safe
    // calls are allowed: it makes one fcntl(2) call and allocates nothing. `fd` is owned by the
    // closure, which `cmd` keeps alive until after the spawn, so `raw` is open in the child.
    unsafe {
        cmd.pre_exec(move || {
            let _keep_open = &fd;
            // SAFETY: `raw` is open in the child (see above) and is only borrowed for this call.
            let borrowed = BorrowedFd::borrow_raw(raw);
            fcntl(borrowed, FcntlArg::F_SETFD(FdFlag::empty()))
                .map(drop)
                .map_err(io)
        });
    }
}

/// A new descriptor for the same open file, close-on-exec.
pub(crate) fn dup(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    fd.try_clone_to_owned()
}
