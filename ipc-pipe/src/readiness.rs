//! Readiness: the explicit switch to fd mode ([`Connection::set_pollable`]), the readiness
//! descriptor ([`Connection::readiness_fd`], and [`AsFd`] for existing callers),
//! [`Connection::poll`], and [`wait`] over several ends.
//!
//! # Futex mode and fd mode
//!
//! | mode            | receiver sleeps in             | sender pays per wake-up      | fd usable |
//! |-----------------|--------------------------------|------------------------------|-----------|
//! | futex (default) | `FUTEX_WAIT`, 20 ms slices     | one `FUTEX_WAKE`             | no        |
//! | fd (pollable)   | `poll(2)` on its socket        | one `send` of a byte         | yes       |
//!
//! An end switches to fd mode once, for good, with [`Connection::set_pollable`] (or
//! [`Connection::pollable`]); there is no way back. What fd mode costs: a sleeping receiver is
//! woken by a socket byte instead of a futex wake, measured 6.9 us against 5.4-6.7 us for a
//! 64-byte round trip with both peers asleep (see `connection.rs`), and a receiver woken by
//! that byte drains its socket once (one `recv` system call; a wait drains before it sleeps
//! only if it armed since its last drain). Hot peers that never sleep pay nothing in either
//! mode. What it gives: the descriptor becomes readable when a
//! message arrives, so it can be registered with poll/epoll/mio/tokio, and a peer's death wakes
//! a sleeper at once instead of within one futex slice.
//!
//! [`AsFd::as_fd`] (and `as_raw_fd`) on an end still switch it to fd mode as they always did:
//! a getter with a side effect, kept for existing callers and deprecated in favour of
//! `set_pollable` followed by `readiness_fd`, which has none.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::time::Duration;

use ipc_sync::futex::Deadline;

use crate::channel::Receiver;
use crate::connection::Connection;
use crate::error::{Fail, PollError};
use ipc_shm::os;

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
        match self.end.wait_message(deadline, nonblocking) {
            Ok(_) | Err(Fail::Disconnected) => Ok(true),
            Err(Fail::Empty | Fail::Timeout) => Ok(false),
            Err(f) => Err(f.into()),
        }
    }

    /// Switches this end to fd mode, for good: from now on it sleeps in `poll(2)` on its
    /// socket, and its [`readiness_fd`](Connection::readiness_fd) becomes readable when a
    /// message arrives (and when the peer hangs up). Idempotent. Arms the fd at once when no
    /// message waits, so register the fd and then drain with
    /// [`try_recv`](Connection::try_recv) until `Empty`.
    ///
    /// Costs a socket byte per wake-up of a sleeping receiver instead of a futex wake (about
    /// 1 us more per sleeping round trip, see the `readiness` module docs in the source); hot
    /// peers pay nothing.
    ///
    /// ```
    /// use std::os::fd::AsRawFd;
    /// let (a, b) = ipc_pipe::pipe()?;
    /// b.set_pollable();
    /// assert!(b.is_pollable());
    /// let fd = b.readiness_fd().as_raw_fd(); // register with epoll, mio, ...
    /// # let _ = fd;
    /// a.send(&1u8)?;
    /// assert_eq!(b.try_recv::<u8>()?, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set_pollable(&self) {
        if !self.end.fd_mode.replace(true) {
            let _ = self.end.wait_rx(1, None, true);
        }
    }

    /// [`set_pollable`](Connection::set_pollable), by value: `let conn = conn.pollable();`.
    #[must_use = "the end is returned, switched to fd mode"]
    pub fn pollable(self) -> Connection {
        self.set_pollable();
        self
    }

    /// Whether this end is in fd mode ([`set_pollable`](Connection::set_pollable) or `as_fd`
    /// was called, or it was passed to [`wait`]).
    pub fn is_pollable(&self) -> bool {
        self.end.fd_mode.get()
    }

    /// The readiness descriptor, with no side effect: readable when a message has arrived
    /// since this end last found its incoming ring empty, and when the other end hangs up.
    /// Messages make it readable only in fd mode: call
    /// [`set_pollable`](Connection::set_pollable) first (in futex mode only hang-up does).
    /// After it fires, drain with [`try_recv`](Connection::try_recv) until `Empty`.
    pub fn readiness_fd(&self) -> BorrowedFd<'_> {
        self.sock()
    }
}

impl AsFd for Connection {
    /// The readiness descriptor, switching the end to fd mode first: the same as
    /// [`set_pollable`](Connection::set_pollable) then
    /// [`readiness_fd`](Connection::readiness_fd).
    ///
    /// Deprecated in favour of those two: a getter should not change how the end waits. Kept
    /// (with its side effect) for existing callers.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.set_pollable();
        self.readiness_fd()
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
/// It uses each end's readiness fd, so it switches them to fd mode
/// ([`Connection::set_pollable`]).
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
            c.set_pollable();
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

impl Receiver {
    /// See [`Connection::set_pollable`].
    pub fn set_pollable(&self) {
        self.0.set_pollable()
    }

    /// See [`Connection::pollable`].
    #[must_use = "the end is returned, switched to fd mode"]
    pub fn pollable(self) -> Receiver {
        self.0.set_pollable();
        self
    }

    /// See [`Connection::is_pollable`].
    pub fn is_pollable(&self) -> bool {
        self.0.is_pollable()
    }

    /// See [`Connection::readiness_fd`].
    pub fn readiness_fd(&self) -> BorrowedFd<'_> {
        self.0.readiness_fd()
    }
}

impl AsFd for Receiver {
    /// See [`Connection::as_fd`](struct.Connection.html#method.as_fd) (deprecated in favour of
    /// [`Receiver::set_pollable`] and [`Receiver::readiness_fd`]).
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
