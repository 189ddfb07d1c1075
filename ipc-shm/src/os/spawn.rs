//! Starting a program with `posix_spawn`: a child whose start does not copy this process.
//!
//! `std::process::Command` falls back to `fork` + `exec` as soon as a `pre_exec` closure is set
//! (which [`command_dies_with_parent`](super::command_dies_with_parent) and
//! [`pass_fd_to_command`](crate::pass_fd_to_command) on a `Command` do), and `fork` copies the
//! page tables of the whole parent: milliseconds for a large process. [`Spawn`] goes through
//! `posix_spawn` (glibc and musl use `clone(CLONE_VM | CLONE_VFORK)`: nothing is copied), with no
//! code of ours between the clone and the `exec`:
//!
//! - descriptors handed to the child ([`crate::pass_fd_to_command`] works on a [`Spawn`] too)
//!   stay close-on-exec here; a `dup2(fd, fd)` file action clears the flag in the child only
//!   (POSIX 2024, glibc >= 2.29, musl), so children started elsewhere never inherit them;
//! - a child that must die with its parent asks for it itself, first thing, and checks that its
//!   parent is still the expected one ([`die_with_parent`](super::die_with_parent)): the standard
//!   fix for the race between the start and that request.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

use nix::spawn::{PosixSpawnAttr, PosixSpawnFileActions, PosixSpawnFlags, posix_spawn};
use nix::sys::signal::{SigSet, Signal};

/// A program to start with `posix_spawn`: its path (not looked up in `PATH`), arguments, the
/// environment of this process plus variables set here, and descriptors to keep open across the
/// `exec`. Standard input, output and error are inherited; the child starts with no signal
/// blocked and `SIGPIPE` at its default action (as `std::process::Command` does it).
///
/// ```no_run
/// use std::os::fd::AsFd;
///
/// let file = std::fs::File::open("/etc/hostname")?;
/// let mut spawn = ipc_shm::os::Spawn::new("/path/to/child")?;
/// spawn.arg("--role=child")?.env("MY_SETTING", "1");
/// ipc_shm::pass_fd_to_command(&mut spawn, file.as_fd(), "MY_FD")?;
/// let pid = spawn.spawn()?;
/// // The caller reaps it: ipc_shm::os::reap(pid)?;
/// # let _ = pid;
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct Spawn {
    program: CString,
    args: Vec<CString>,
    env: Vec<(OsString, OsString)>,
    keep: Vec<OwnedFd>,
}

/// A string with a NUL byte cannot cross `exec`.
fn c_string(bytes: Vec<u8>) -> io::Result<CString> {
    CString::new(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

impl Spawn {
    /// A program at `path`; its `argv[0]` is `path`.
    pub fn new(path: impl AsRef<Path>) -> io::Result<Spawn> {
        let program = c_string(path.as_ref().as_os_str().as_bytes().to_vec())?;
        Ok(Spawn {
            args: vec![program.clone()],
            program,
            env: Vec::new(),
            keep: Vec::new(),
        })
    }

    /// Appends an argument.
    pub fn arg(&mut self, arg: impl AsRef<OsStr>) -> io::Result<&mut Spawn> {
        self.args.push(c_string(arg.as_ref().as_bytes().to_vec())?);
        Ok(self)
    }

    /// Sets the environment variable `key` in the child (over this process's value, if any).
    pub fn env(&mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> &mut Spawn {
        let key = key.as_ref().to_os_string();
        self.env.retain(|(k, _)| *k != key);
        self.env.push((key, value.as_ref().to_os_string()));
        self
    }

    /// Keeps `fd` open in the child under the same number (it stays close-on-exec here, and is
    /// closed here when `self` is dropped).
    pub fn keep_open(&mut self, fd: OwnedFd) -> &mut Spawn {
        self.keep.push(fd);
        self
    }

    /// Starts the program; returns its pid. The caller reaps it (`reap`, `try_reap`). A program
    /// that cannot be executed fails here (glibc reports the `exec` error).
    pub fn spawn(&self) -> io::Result<u32> {
        let mut actions = PosixSpawnFileActions::init()?;
        for fd in &self.keep {
            // dup2 onto itself: clears close-on-exec in the child only.
            actions.add_dup2(fd.as_raw_fd(), fd.as_raw_fd())?;
        }
        let mut attr = PosixSpawnAttr::init()?;
        attr.set_sigmask(&SigSet::empty())?;
        let mut default = SigSet::empty();
        default.add(Signal::SIGPIPE);
        attr.set_sigdefault(&default)?;
        attr.set_flags(
            PosixSpawnFlags::POSIX_SPAWN_SETSIGMASK | PosixSpawnFlags::POSIX_SPAWN_SETSIGDEF,
        )?;
        let mut env: Vec<CString> = Vec::new();
        for (key, value) in std::env::vars_os() {
            if !self.env.iter().any(|(k, _)| *k == key) {
                env.push(c_string(assignment(key, &value))?);
            }
        }
        for (key, value) in &self.env {
            env.push(c_string(assignment(key.clone(), value))?);
        }
        let pid = posix_spawn(self.program.as_c_str(), &actions, &attr, &self.args, &env)?;
        Ok(pid.as_raw().unsigned_abs())
    }
}

/// `KEY=VALUE`, as `envp` holds it.
fn assignment(key: OsString, value: &OsStr) -> Vec<u8> {
    let mut bytes = key.into_vec();
    bytes.push(b'=');
    bytes.extend_from_slice(value.as_bytes());
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::time::Duration;

    /// A descriptor handed over stays close-on-exec here and is open in the child under the
    /// number named in its environment; a variable set here overrides the inherited one.
    #[test]
    fn child_gets_the_descriptor_and_the_environment() {
        let (ours, theirs) = crate::os::socketpair().expect("socketpair");
        let mut spawn = Spawn::new("/bin/sh").expect("program");
        spawn
            .arg("-c")
            .expect("arg")
            .arg("printf '%s' \"$GREETING\" >&$FD")
            .expect("arg")
            .env("GREETING", "hello");
        crate::pass_fd_to_command(&mut spawn, theirs.as_fd(), "FD").expect("pass");
        drop(theirs);
        let pid = spawn.spawn().expect("spawn");
        drop(spawn);
        assert_eq!(
            crate::os::reap(pid).expect("reap"),
            crate::os::ExitStatus::Code(0)
        );
        // Read to the end (the socket is non-blocking; a child another test starts meanwhile
        // may hold a copy of the write end until its own exec, so wait for the end).
        let mut got = Vec::new();
        let mut file = std::fs::File::from(ours);
        let mut chunk = [0u8; 64];
        loop {
            let ready = crate::os::wait_readable(&[file.as_fd()], Some(Duration::from_secs(30)));
            assert_eq!(ready.expect("poll"), vec![true], "no end of stream in 30 s");
            match std::io::Read::read(&mut file, &mut chunk) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("read: {e}"),
            }
        }
        assert_eq!(got, b"hello");
    }

    /// A program that cannot be executed fails at `spawn`, not later.
    #[test]
    fn missing_program_fails_at_spawn() {
        let spawn = Spawn::new("/nonexistent/program").expect("program");
        assert!(spawn.spawn().is_err());
    }
}
