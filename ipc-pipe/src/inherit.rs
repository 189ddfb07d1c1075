//! Passing an end to another process: across `exec` ([`Connection::pass_to_command`],
//! [`Connection::from_inherited`]) or by descriptors ([`Connection::into_raw_parts`],
//! [`Connection::from_raw_parts`]). Across `fork` nothing is needed.

use ipc_shm::ChildSetup;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use ipc_shm::OpenOptions;

use crate::builder::{TAG, control_size};
use crate::connection::Connection;
use crate::end::Settings;
use crate::error::{OpenError, PassError};
use crate::ring::Corruption;

impl Connection {
    /// Makes the child that `cmd` (a `Command` or an `ipc_shm::os::Spawn`) starts inherit this end, under environment variables starting
    /// with `key`; the child calls [`Connection::from_inherited`] with the same key. Drop this
    /// end afterwards in the parent (and `cmd` once the child runs), or the other end will not
    /// see the child's death.
    pub fn pass_to_command(
        &self,
        cmd: &mut (impl ChildSetup + ?Sized),
        key: &str,
    ) -> Result<(), PassError> {
        ipc_shm::pass_fd_to_command(cmd, self.seg.fd(), &format!("{key}_SHM"))?;
        ipc_shm::pass_fd_to_command(cmd, self.sock(), &format!("{key}_SOCK"))?;
        cmd.set_env(&format!("{key}_SIDE"), self.end.side.to_string().as_ref());
        Ok(())
    }

    /// Opens the end this process inherited from [`Connection::pass_to_command`] (default
    /// settings). The segment and the control block are validated.
    pub fn from_inherited(key: &str) -> Result<Connection, OpenError> {
        let side_key = format!("{key}_SIDE");
        let side = std::env::var(&side_key)
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .filter(|s| *s <= 1)
            .ok_or(OpenError::BadSide { key: side_key })?;
        let seg = OpenOptions::new(TAG)
            .min_len(control_size())
            .from_inherited(&format!("{key}_SHM"))?;
        let sock = ipc_shm::take_inherited_fd(&format!("{key}_SOCK"))?;
        let settings = Settings::default();
        Ok(Connection::attach(Arc::new(seg), side, sock, settings)?)
    }

    /// Takes this end apart into its descriptors (the shared segment's and the socket's, both
    /// close-on-exec) and its side, to hand it to another process by some other means (a fork
    /// server, `SCM_RIGHTS`); rebuild it there with [`Connection::from_raw_parts`]. The peer is
    /// not disturbed.
    pub fn into_raw_parts(mut self) -> std::io::Result<(OwnedFd, OwnedFd, usize)> {
        let shm = self.seg.fd().try_clone_to_owned()?;
        let sock = self
            .end
            .link
            .take()
            .expect("the socket is only taken in drop");
        let side = self.end.side;
        self.release();
        Ok((shm, sock, side))
    }

    /// Rebuilds an end from [`Connection::into_raw_parts`] (or from descriptors received any
    /// other way), with default settings. The segment and the control block are validated.
    pub fn from_raw_parts(
        shm: OwnedFd,
        sock: OwnedFd,
        side: usize,
    ) -> Result<Connection, OpenError> {
        if side > 1 {
            return Err(OpenError::Corrupted(Corruption {
                what: "side",
                value: side as u64,
            }));
        }
        let seg = OpenOptions::new(TAG).min_len(control_size()).from_fd(shm)?;
        let settings = Settings::default();
        Ok(Connection::attach(Arc::new(seg), side, sock, settings)?)
    }
}
