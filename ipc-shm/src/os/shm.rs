//! POSIX shared-memory objects and memfds: create, open, unlink, seal, size.
//!
//! Named objects are files under `/dev/shm`, opened the way glibc's `shm_open` opens them
//! (`O_NOFOLLOW | O_CLOEXEC`), through rustix's safe `open`.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};

use rustix::fs::{MemfdFlags, Mode, OFlags, SealFlags};

/// The longest name (without the leading '/') that `shm_open` accepts: NAME_MAX less the '/'.
pub const MAX_NAME_LEN: usize = 254;

/// Where Linux keeps POSIX shared-memory objects (what glibc's `shm_open` opens).
const SHM_DIR: &str = "/dev/shm/";

/// The path of the object `/name`; a name that is empty, `.` or `..`, or holds a `/` or a NUL
/// is refused with `EINVAL` (as glibc does; so no name resolves outside `/dev/shm`), a longer
/// one than [`MAX_NAME_LEN`] with `ENAMETOOLONG`.
fn shm_path(name: &str) -> io::Result<String> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
        return Err(rustix::io::Errno::INVAL.into());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(rustix::io::Errno::NAMETOOLONG.into());
    }
    Ok(format!("{SHM_DIR}{name}"))
}

/// The flags glibc's `shm_open` adds to every open: never follow a symbolic link planted in the
/// world-writable directory, and close on exec.
fn shm_flags() -> OFlags {
    OFlags::NOFOLLOW | OFlags::CLOEXEC
}

/// Creates a new POSIX shared-memory object `/name` exclusively, with exactly `mode` (the umask
/// does not apply).
pub fn shm_create(name: &str, mode: u32) -> io::Result<OwnedFd> {
    let mode = Mode::from_bits_truncate(mode);
    let fd = rustix::fs::open(
        shm_path(name)?,
        OFlags::CREATE | OFlags::EXCL | OFlags::RDWR | shm_flags(),
        mode,
    )?;
    // The umask may have cleared bits the caller asked for; set the mode exactly.
    rustix::fs::fchmod(&fd, mode)?;
    Ok(fd)
}

/// Opens the existing POSIX shared-memory object `/name` for reading and writing.
pub fn shm_open_existing(name: &str) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        shm_path(name)?,
        OFlags::RDWR | shm_flags(),
        Mode::empty(),
    )?)
}

/// Removes the POSIX shared-memory name `/name`.
pub fn shm_remove(name: &str) -> io::Result<()> {
    Ok(rustix::fs::unlink(shm_path(name)?)?)
}

/// Removes the POSIX shared-memory name `/name`, ignoring every error (cleanup paths).
pub fn shm_unlink_quiet(name: &str) {
    let _ = shm_remove(name);
}

/// Creates an anonymous memfd, close-on-exec, which can be sealed. A `debug_name` with a NUL
/// byte is replaced by `"ipc-shm"`.
pub fn memfd(debug_name: &str) -> io::Result<OwnedFd> {
    let flags = MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING;
    if debug_name.contains('\0') {
        return Ok(rustix::fs::memfd_create("ipc-shm", flags)?);
    }
    Ok(rustix::fs::memfd_create(debug_name, flags)?)
}

/// Seals a memfd's size so that no process can shrink it under another's mapping (SIGBUS).
pub fn seal_size(fd: BorrowedFd<'_>) -> io::Result<()> {
    let seals = SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL;
    Ok(rustix::fs::fcntl_add_seals(fd, seals)?)
}

/// Sets the object's size. A size over `i64::MAX` is refused with `EFBIG`.
pub fn set_len(fd: BorrowedFd<'_>, len: u64) -> io::Result<()> {
    if i64::try_from(len).is_err() {
        return Err(rustix::io::Errno::FBIG.into());
    }
    Ok(rustix::fs::ftruncate(fd, len)?)
}

/// The object's real size (from `fstat`).
pub fn len_of(fd: BorrowedFd<'_>) -> io::Result<u64> {
    Ok(stat_of(fd)?.len)
}

/// What one `fstat` says about a shared-memory object: what an opener checks before it maps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectStat {
    /// The size in bytes (a negative `st_size`, which no object has, reads as 0).
    pub len: u64,
    /// The owner's user id.
    pub uid: u32,
    /// The permission bits (`st_mode & 0o7777`).
    pub mode: u32,
}

/// The object's size, owner and permission bits, from one `fstat`.
pub fn stat_of(fd: BorrowedFd<'_>) -> io::Result<ObjectStat> {
    let st = rustix::fs::fstat(fd)?;
    Ok(ObjectStat {
        len: u64::try_from(st.st_size).unwrap_or(0),
        uid: st.st_uid,
        mode: st.st_mode & 0o7777,
    })
}

/// Whether the object's size is sealed against shrinking (`F_SEAL_SHRINK`), so that no process
/// can truncate it under a mapping. Only memfds can carry seals; a named POSIX object, or any
/// object that does not support sealing, gives `false`.
pub fn is_shrink_sealed(fd: BorrowedFd<'_>) -> bool {
    rustix::fs::fcntl_get_seals(fd).is_ok_and(|seals| seals.contains(SealFlags::SHRINK))
}
