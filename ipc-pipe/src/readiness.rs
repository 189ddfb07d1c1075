//! Readiness: fd mode, [`Connection::poll`], [`wait`] over several ends, and the readiness
//! descriptor ([`AsFd`]).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::time::Duration;

use ipc_sync::futex::Deadline;

use crate::channel::Receiver;
use crate::connection::Connection;
use crate::error::{Fail, PollError};
use crate::os;

impl Connection {
    /// Whether a message is waiting (or the other end is gone, so that a receive would return
    /// at once), waiting up to `timeout` for one (`Duration::ZERO`: just check).
    ///
    /// ```
    /// use std::time::Duration;
    /// let (a, b) = ipc_pipe::pipe()?;
    /// assert!(!b.poll(Duration::ZERO)?);
    /// a.send(&1u8)?;
    /// assert!(b.poll(Duration::from_secs(1))?);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn poll(&self, timeout: Duration) -> Result<bool, PollError> {
        let nonblocking = timeout.is_zero();
        let deadline = (!nonblocking).then(|| Deadline::after(timeout));
        match self.wait_message(deadline, nonblocking) {
            Ok(_) | Err(Fail::Disconnected) => Ok(true),
            Err(Fail::Empty | Fail::Timeout) => Ok(false),
            Err(f) => Err(f.into()),
        }
    }

    /// Switches this end to fd mode (see the module docs) and arms the fd if no message waits.
    pub(crate) fn enable_fd_mode(&self) {
        if !self.fd_mode.replace(true) {
            let _ = self.wait_rx(1, None, true);
        }
    }
}

impl AsFd for Connection {
    /// The readiness descriptor: readable when a message has arrived since this end last found
    /// its incoming ring empty, and when the other end hangs up. Asking for it switches the end
    /// to fd mode (see the crate docs); drain with `try_recv` until `Empty` after each wake-up.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.enable_fd_mode();
        self.sock()
    }
}

impl AsRawFd for Connection {
    /// See [`AsFd::as_fd`].
    fn as_raw_fd(&self) -> RawFd {
        self.as_fd().as_raw_fd()
    }
}

mod sealed {
    pub trait Sealed {
        fn connection(&self) -> &super::Connection;
    }
}

/// Something [`wait`] can wait on: a [`Connection`] or a [`Receiver`].
pub trait Waitable: sealed::Sealed {}

impl sealed::Sealed for Connection {
    fn connection(&self) -> &Connection {
        self
    }
}
impl Waitable for Connection {}

impl sealed::Sealed for Receiver {
    fn connection(&self) -> &Connection {
        &self.0
    }
}
impl Waitable for Receiver {}

/// Waits until at least one of `conns` has a message waiting (or its peer is gone), or until
/// `timeout` passes (`None`: no limit), and returns the indices of the ready ones (empty on
/// timeout). Python's `multiprocessing.connection.wait`.
///
/// It uses each end's readiness fd, so it switches them to fd mode.
///
/// ```
/// use std::time::Duration;
/// let (a1, b1) = ipc_pipe::pipe()?;
/// let (a2, b2) = ipc_pipe::pipe()?;
/// a2.send(&"second")?;
/// let ready = ipc_pipe::wait(&[&b1, &b2], Some(Duration::from_secs(1)))?;
/// assert_eq!(ready, [1]);
/// assert!(ipc_pipe::wait(&[&b1], Some(Duration::from_millis(1)))?.is_empty());
/// # drop(a1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn wait<W: Waitable + ?Sized>(
    conns: &[&W],
    timeout: Option<Duration>,
) -> Result<Vec<usize>, PollError> {
    let deadline = timeout.map(Deadline::after);
    let mut polled = Vec::with_capacity(conns.len());
    loop {
        let mut ready = Vec::new();
        for (i, c) in conns.iter().enumerate() {
            let c = c.connection();
            c.fd_mode.set(true);
            if c.poll(Duration::ZERO)? {
                ready.push(i);
            }
        }
        if !ready.is_empty() {
            return Ok(ready);
        }
        let remaining = deadline.map(|d| d.remaining());
        if remaining == Some(Duration::ZERO) {
            return Ok(ready);
        }
        let fds: Vec<BorrowedFd<'_>> = conns.iter().map(|c| c.connection().sock()).collect();
        os::poll(&fds, remaining, &mut polled);
    }
}

impl AsFd for Receiver {
    /// See [`Connection::as_fd`](struct.Connection.html#method.as_fd).
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl AsRawFd for Receiver {
    /// See [`Connection::as_fd`](struct.Connection.html#method.as_fd).
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}
