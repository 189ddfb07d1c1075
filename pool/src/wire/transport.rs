//! The link to a worker: an `ipc_pipe::Connection` behind the [`Link`] boundary.

use std::time::Duration;

use ipc_pipe::{Connection, PipeBuilder};
use ipc_shm::transfer::{FdBatch, TransferError};

use std::sync::Arc;

use crate::error::{PoolError, SpawnErrorKind};
use crate::wire::protocol::{Link, LinkError};

/// The largest frame a worker link carries (arguments and results of one chunk): the codec's
/// frame limit, so the pipe and the decoder agree on one bound.
const MAX_FRAME: usize = ipc_shm::codec::MAX_FRAME_LEN;

/// The receive buffer a link keeps between frames (a larger one, left by a large chunk, is
/// shrunk back once small frames follow).
const KEEP_BUFFER: usize = 4 << 20;

/// One end of a worker's pipe.
#[derive(Debug)]
pub(crate) struct PipeLink(Connection);

/// A new pipe: the pool's end, the worker's end.
pub(crate) fn pair() -> Result<(PipeLink, PipeLink), PoolError> {
    let (a, b) = PipeBuilder::new()
        .max_message_size(MAX_FRAME)
        .duplex()
        .map_err(|e| SpawnErrorKind::PipeCreate(Arc::new(e)))?;
    // The pool's end sleeps in poll(2) on its socket (ipc-pipe's fd mode) rather than in timed
    // futex slices: the kernel reports a dead worker's hang-up at once, so a crash reaches its
    // task in microseconds instead of after a 20 ms slice. Hot exchanges spin and never sleep.
    // A fork-server or spawned worker switches its own end in its process (`worker::serve`).
    a.set_pollable();
    Ok((PipeLink(a), PipeLink(b)))
}

impl PipeLink {
    /// Switches this end to ipc-pipe's fd mode (`Connection::set_pollable`): a receive that
    /// has to sleep waits in `poll(2)` on the end's socket, and a sender wakes it with a byte
    /// on that socket. Called in the process that uses the end (the mode belongs to this
    /// process's handle, not to the shared pipe); see `worker::serve` for the worker's end.
    pub(crate) fn set_pollable(&self) {
        self.0.set_pollable();
    }

    /// Gives up this process's copy of an end that another process now uses (after `fork`, or
    /// after passing it to a spawned child): closes its descriptors without telling the peer.
    pub(crate) fn handed_over(self) {
        self.0.release();
    }

    /// In a forked worker: drop the copy of the pool's end without disturbing the pool.
    pub(crate) fn forget_in_child(self) {
        self.0.release();
    }

    pub(crate) fn pass_to_command(
        &self,
        cmd: &mut (impl ipc_shm::ChildSetup + ?Sized),
        key: &str,
    ) -> Result<(), PoolError> {
        self.0
            .pass_to_command(cmd, key)
            .map_err(|e| SpawnErrorKind::PipePass(Arc::new(e)).into())
    }

    pub(crate) fn from_inherited(key: &str) -> Result<PipeLink, PoolError> {
        Connection::from_inherited(key)
            .map(PipeLink)
            .map_err(|e| SpawnErrorKind::PipeOpen(Arc::new(e)).into())
    }

    /// The descriptors and side of this end, for handing it to a fork server.
    pub(crate) fn into_raw_parts(
        self,
    ) -> std::io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd, usize)> {
        self.0.into_raw_parts()
    }

    /// A duplicate of this end's socket, for the crash handler to shut down: the pool's end
    /// then sees the hang-up at once (see `worker::serve`).
    pub(crate) fn hangup_fd(&self) -> std::io::Result<std::os::fd::OwnedFd> {
        self.0.readiness_fd().try_clone_to_owned()
    }

    pub(crate) fn from_connection(conn: Connection) -> PipeLink {
        PipeLink(conn)
    }
}

impl Link for PipeLink {
    fn send_with_fds(&mut self, frame: &[u8], fds: Option<&FdBatch>) -> Result<(), LinkError> {
        let Some(fds) = fds else {
            return self.send(frame);
        };
        self.0.send_bytes_with_fds(frame, fds).map_err(|e| match e {
            ipc_pipe::SendError::Disconnected => LinkError::Disconnected,
            _ => LinkError::Broken,
        })
    }

    fn take_fds(&mut self, id: u64) -> Result<FdBatch, TransferError> {
        self.0.take_fds(id)
    }

    fn send(&mut self, frame: &[u8]) -> Result<(), LinkError> {
        self.0.send_bytes(frame).map_err(|e| match e {
            ipc_pipe::SendError::Disconnected => LinkError::Disconnected,
            _ => LinkError::Broken,
        })
    }

    fn send_quiet(&mut self, frame: &[u8]) -> Result<(), LinkError> {
        self.0.send_bytes_quiet(frame).map_err(|e| match e {
            ipc_pipe::SendError::Disconnected => LinkError::Disconnected,
            _ => LinkError::Broken,
        })
    }

    fn send_vectored(&mut self, parts: &[&[u8]], quiet: bool) -> Result<(), LinkError> {
        let sent = if quiet {
            self.0.send_bytes_vectored_quiet(parts)
        } else {
            self.0.send_bytes_vectored(parts)
        };
        sent.map_err(|e| match e {
            ipc_pipe::SendError::Disconnected => LinkError::Disconnected,
            _ => LinkError::Broken,
        })
    }

    fn recv(&mut self, buf: &mut Vec<u8>, timeout: Option<Duration>) -> Result<(), LinkError> {
        self.0
            .recv_bytes_into_vec(buf, timeout)
            .map_err(|e| match e {
                ipc_pipe::RecvTimeoutError::Timeout => LinkError::Timeout,
                ipc_pipe::RecvTimeoutError::Disconnected => LinkError::Disconnected,
                _ => LinkError::Broken,
            })?;
        // A buffer that once held a large chunk is not kept at that size for good.
        if buf.capacity() > KEEP_BUFFER && buf.len() <= KEEP_BUFFER / 4 {
            buf.shrink_to(KEEP_BUFFER);
        }
        Ok(())
    }
}
