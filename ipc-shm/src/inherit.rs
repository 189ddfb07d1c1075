//! Handing a descriptor to an exec'ed child without leaking it into unrelated children.
//!
//! Every descriptor this workspace opens is close-on-exec. To give one to a particular child,
//! [`pass_fd_to_command`] duplicates it into the `Command` (or [`os::Spawn`]: any
//! [`ChildSetup`]) and clears close-on-exec *in the child only* (between `fork` and `exec`, or
//! by a `posix_spawn` file action), then names the number in an environment variable.
//! The child claims it once with [`take_inherited_fd`].
#![allow(unsafe_code)]

use std::collections::HashSet;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::process::Command;
use std::sync::Mutex;

use crate::error::InheritError;
use crate::os;

/// Descriptor numbers already claimed in this process, so that none is owned twice.
static TAKEN: Mutex<Option<HashSet<RawFd>>> = Mutex::new(None);

/// Makes the child that `cmd` starts inherit a duplicate of `fd`, and sets the environment
/// variable `key` to its number there.
///
/// The duplicate stays close-on-exec in this process (children spawned from other `Command`s
/// never see it) and is closed when `cmd` is dropped.
///
/// ```no_run
/// use std::process::Command;
/// use std::os::fd::AsFd;
///
/// let file = std::fs::File::open("/etc/hostname")?;
/// let mut cmd = Command::new("/path/to/child");
/// ipc_shm::pass_fd_to_command(&mut cmd, file.as_fd(), "MY_FD")?;
/// // In the child: let fd = ipc_shm::take_inherited_fd("MY_FD")?;
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn pass_fd_to_command(
    cmd: &mut (impl ChildSetup + ?Sized),
    fd: BorrowedFd<'_>,
    key: &str,
) -> io::Result<()> {
    let dup = os::dup(fd)?;
    cmd.set_env(key, dup.as_raw_fd().to_string().as_ref());
    cmd.keep_open(dup);
    Ok(())
}

/// A child process being set up, which descriptors and environment variables can be handed to:
/// `std::process::Command` (started by `fork` + `exec`), or [`os::Spawn`] (started by
/// `posix_spawn`, which does not copy this process: the one to use from a large process).
pub trait ChildSetup {
    /// Sets the environment variable `key` in the child.
    fn set_env(&mut self, key: &str, value: &std::ffi::OsStr);
    /// Keeps `fd` open in the child under its number here, close-on-exec in this process
    /// meanwhile (so that no other child inherits it); closed here when `self` is dropped.
    fn keep_open(&mut self, fd: OwnedFd);
}

impl ChildSetup for Command {
    fn set_env(&mut self, key: &str, value: &std::ffi::OsStr) {
        self.env(key, value);
    }

    fn keep_open(&mut self, fd: OwnedFd) {
        os::inherit_in_child(self, fd);
    }
}

impl ChildSetup for os::Spawn {
    fn set_env(&mut self, key: &str, value: &std::ffi::OsStr) {
        self.env(key, value);
    }

    fn keep_open(&mut self, fd: OwnedFd) {
        os::Spawn::keep_open(self, fd);
    }
}

/// Claims the descriptor named by the environment variable `key`, as set up by
/// [`pass_fd_to_command`] in the parent.
///
/// Each number can be claimed once per process; a second call returns
/// [`InheritError::AlreadyTaken`].
pub fn take_inherited_fd(key: &str) -> Result<OwnedFd, InheritError> {
    let value = std::env::var(key).map_err(|_| InheritError::Missing { key: key.into() })?;
    let fd: RawFd = value
        .trim()
        .parse()
        .ok()
        .filter(|fd| *fd >= 0)
        .ok_or_else(|| InheritError::Malformed {
            key: key.into(),
            value: value.clone(),
        })?;
    let mut taken = TAKEN
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let taken = taken.get_or_insert_with(HashSet::new);
    if taken.contains(&fd) {
        return Err(InheritError::AlreadyTaken {
            key: key.into(),
            fd,
        });
    }
    if fd <= 2 || !os::is_open(fd) {
        return Err(InheritError::NotOpen {
            key: key.into(),
            fd,
        });
    }
    taken.insert(fd);
    // SAFETY: `fd` is open (checked above), is not stdin/stdout/stderr, and was handed to this
    // process for us alone by `pass_fd_to_command`; the TAKEN registry, checked and updated under
    // its lock, guarantees no earlier call of this function took ownership of the same number.
    Ok(unsafe { os::own(fd) })
}
