//! Async receive and send for tokio (feature `tokio`): [`Connection::recv_async`],
//! [`Connection::recv_bytes_async`], [`Connection::send_async`] and
//! [`Connection::send_bytes_async`] (and the same on [`Receiver`] and [`Sender`]), built on the
//! end's readiness fd and `tokio::io::unix::AsyncFd`. No thread waits for a task: a task that
//! has to wait is parked in tokio's reactor (epoll), like a socket's.
//!
//! # How an operation waits
//!
//! Every async operation is the non-blocking one in a loop: try it; if it would wait, await
//! the readiness fd, clear the readiness, try again. The end is switched to fd mode
//! ([`Connection::set_pollable`]) on the first call, for good.
//!
//! | operation  | non-blocking step                    | arms (before re-checking)          | the peer, after its next step |
//! |------------|--------------------------------------|------------------------------------|-------------------------------|
//! | receive    | `try_recv` (drains the socket)       | `ARMED` in the ring's `rx_wait`    | publishes, writes a byte      |
//! | send       | whole-frame `try_send`               | `ARMED` in the ring's `tx_wait`    | frees space, writes a byte    |
//! | either     | finds the peer hung up or closed     | nothing                            | (the kernel reports hang-up)  |
//!
//! The arm-then-re-check order is the ring's sleeping protocol with `ARMED` in place of
//! `SLEEP` (see `ring.rs`, "Memory ordering"): the peer either sees the bit and writes a byte,
//! which makes the socket readable and tokio wakes the task, or the re-check sees what the peer
//! published. Readiness is cleared before each retry, never after a failed one, so a byte that
//! arrives between the retry and the await is not lost.
//!
//! The fd is registered with the current runtime's reactor only while an operation waits (one
//! `epoll_ctl` each way, only when the non-blocking step failed), so a `Connection` is not tied
//! to a runtime and an operation that completes at once costs no system call beyond the ring's.
//!
//! # Cancel safety
//!
//! - [`Connection::recv_async`] and [`Connection::recv_bytes_async`] are cancel-safe: a message
//!   is consumed only in the poll that returns it, so a future dropped before it completed (by
//!   `tokio::time::timeout` or `select!`) lost nothing, and the next receive gets the message.
//!   (A message larger than the ring that arrived half-way is kept in the end, as after a
//!   `try_recv`, and the next receive of any kind resumes it.)
//! - [`Connection::send_async`] and [`Connection::send_bytes_async`] write a message whole, in
//!   one poll, once the ring has room for all of it: a dropped future sent either the whole
//!   message or nothing. That is why they refuse a message larger than the ring with
//!   [`SendError::LargerThanRing`], as the timed sends do (build the pipe with a larger
//!   [`capacity`](crate::PipeBuilder::capacity), or send it with the blocking `send` from
//!   `spawn_blocking`).
//!
//! # Why this module allows `unsafe`
//!
//! Registering a descriptor with tokio (`AsyncFd::register_with_interest`) is `unsafe` since
//! tokio 1.54 (the safe constructors are deprecated as unsound): the caller promises that the
//! descriptor stays open, and the same, while registered. That is the one `unsafe` block here;
//! its promise holds because the registration lives inside an operation's future, which
//! borrows the `Connection` mutably, and an end's socket is closed only by `drop`, `close`,
//! `release` and `into_raw_parts`, which all need the `Connection` by value.
//!
//! # `&mut self`
//!
//! A `Connection` is `Send` but not `Sync`, so a future holding `&Connection` could not be
//! moved to another thread and `tokio::spawn` would refuse it. The async methods take
//! `&mut self` instead, and their futures are `Send`.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::channel::{Receiver, Sender};
use crate::connection::Connection;
use crate::error::{Fail, RecvError, SendError, TryRecvError};
use crate::ring::HEADER;
use ipc_shm::ByteRing;

/// An end's readiness socket as tokio's `AsyncFd` wants it. It does not own the descriptor:
/// the registration lives in an operation's future, which borrows the `Connection` (and so its
/// socket) mutably until it is dropped.
#[derive(Debug)]
struct Readiness(RawFd);

impl AsRawFd for Readiness {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// The registration of one waiting operation, made on its first wait.
#[derive(Debug, Default)]
struct Registration(Option<AsyncFd<Readiness>>);

impl Registration {
    /// Awaits the readiness of `fd` (registering it with the current runtime first), then
    /// clears the readiness, so that the caller's retry sees everything that made it readable.
    ///
    /// `fd` must be the readiness socket of the `Connection` that the calling future borrows
    /// mutably, with this registration living in that future.
    async fn readable(&mut self, fd: RawFd) -> io::Result<()> {
        let afd = match &mut self.0 {
            Some(afd) => afd,
            slot => {
                // SAFETY: `register_with_interest` asks that the descriptor be valid and open,
                // and refer to the same file description, for the whole life of the `AsyncFd`,
                // and that `as_raw_fd` always return it. (1) `fd` is the end's socket (the
                // callers pass `readiness_fd()`), open now: only `drop`, `close`, `release` and
                // `into_raw_parts` close or give it away, and they take the `Connection` by
                // value. (2) The `AsyncFd` lives in this `Registration`, a local of an async
                // method that holds `&mut Connection` until its future is dropped, so none of
                // those can run while it exists: the socket stays open and the same. (3)
                // `Readiness::as_raw_fd` returns the number it was built with, unchanged.
                let registered =
                    unsafe { AsyncFd::register_with_interest(Readiness(fd), Interest::READABLE) };
                slot.insert(registered.map_err(io::Error::from)?)
            }
        };
        let mut guard = afd.readable().await?;
        guard.clear_ready();
        Ok(())
    }
}

impl From<TryRecvError> for RecvError {
    /// A non-blocking receive's failure as a blocking receive's (`Empty` never reaches it).
    fn from(e: TryRecvError) -> RecvError {
        match e {
            TryRecvError::TooLarge { len, max } => RecvError::TooLarge { len, max },
            TryRecvError::Decode(e) => RecvError::Decode(e),
            TryRecvError::Corrupted(c) => RecvError::Corrupted(c),
            TryRecvError::WrongProcess { owner } => RecvError::WrongProcess { owner },
            // `Disconnected`, and `Empty` (which the callers handle before converting).
            _ => RecvError::Disconnected,
        }
    }
}

impl Connection {
    /// Receives the next message and deserialises it as `T`, awaiting it without blocking the
    /// thread: [`recv`](Connection::recv) for async code (feature `tokio`; must run inside a
    /// tokio runtime with IO enabled). After the other end is gone, every message already sent
    /// is received first, then [`RecvError::Disconnected`], as with `recv`; a peer killed by
    /// `SIGKILL` ends the wait at once (the kernel reports the hang-up on the readiness fd).
    ///
    /// Cancel-safe: dropping the future loses no message (see the `async_io` module docs in the
    /// source). Switches the end to fd mode ([`set_pollable`](Connection::set_pollable)).
    ///
    /// ```
    /// #[tokio::main]
    /// async fn main() -> Result<(), Box<dyn std::error::Error>> {
    ///     let (mut parent, child) = ipc_pipe::pipe()?;
    ///     // (In real use `child` is in another process; a thread shows the same protocol.)
    ///     let worker = std::thread::spawn(move || {
    ///         let job: u64 = child.recv().unwrap();
    ///         child.send(&(job * 2)).unwrap();
    ///     });
    ///     parent.send_async(&21u64).await?;
    ///     assert_eq!(parent.recv_async::<u64>().await?, 42);
    ///     worker.join().unwrap();
    ///     // The worker's end is gone: the next receive says so instead of waiting forever.
    ///     assert!(matches!(
    ///         parent.recv_async::<u64>().await,
    ///         Err(ipc_pipe::RecvError::Disconnected)
    ///     ));
    ///     Ok(())
    /// }
    /// ```
    pub async fn recv_async<T: DeserializeOwned>(&mut self) -> Result<T, RecvError> {
        self.set_pollable();
        let mut reg = Registration::default();
        loop {
            match self.try_recv::<T>() {
                Err(TryRecvError::Empty) => {}
                r => return r.map_err(RecvError::from),
            }
            let fd = self.readiness_fd().as_raw_fd();
            reg.readable(fd).await.map_err(RecvError::Reactor)?;
        }
    }

    /// Receives the next message as bytes, awaiting it: [`recv_bytes`](Connection::recv_bytes)
    /// for async code (see [`recv_async`](Connection::recv_async); cancel-safe the same way).
    pub async fn recv_bytes_async(&mut self) -> Result<Vec<u8>, RecvError> {
        self.set_pollable();
        let mut reg = Registration::default();
        loop {
            let mut buf = Vec::new();
            match self.end.recv_into_vec(&mut buf, None, true) {
                Ok(()) => return Ok(buf),
                Err(Fail::Empty) => {}
                Err(f) => return Err(f.into()),
            }
            let fd = self.readiness_fd().as_raw_fd();
            reg.readable(fd).await.map_err(RecvError::Reactor)?;
        }
    }

    /// Sends `value`, encoded with bincode, awaiting room for the whole message without
    /// blocking the thread: [`send`](Connection::send) for async code (feature `tokio`; inside
    /// a tokio runtime with IO enabled). Fails with [`SendError::Disconnected`] when the other
    /// end is gone, as `send` does (a dead peer ends the wait at once), and with
    /// [`SendError::LargerThanRing`] for a message the ring cannot hold whole.
    ///
    /// Cancel-safe in the sense that matters for a pipe: the message is written whole in one
    /// poll, so a dropped future sent all of it or none of it.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let (mut a, mut b) = ipc_pipe::PipeBuilder::new().capacity(64).duplex()?;
    /// a.send_async(&[1u8; 32]).await?;
    /// // The ring is full: this send waits until `b` reads, with no thread blocked meanwhile.
    /// let reader = tokio::spawn(async move {
    ///     let first = b.recv_async::<[u8; 32]>().await?;
    ///     let second = b.recv_async::<[u8; 32]>().await?;
    ///     Ok::<_, ipc_pipe::RecvError>((first, second))
    /// });
    /// a.send_async(&[2u8; 32]).await?;
    /// assert_eq!(reader.await??, ([1u8; 32], [2u8; 32]));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn send_async<M: Serialize + ?Sized>(&mut self, value: &M) -> Result<(), SendError> {
        let mut buf = self.scratch.take();
        buf.clear();
        let encoded = match ipc_shm::codec::encode_into(value, &mut buf) {
            Ok(()) => Ok(()),
            Err(ipc_shm::codec::EncodeError::TooLong { len, .. }) => Err(SendError::TooLarge {
                len,
                max: self.end.settings.max_message,
            }),
            Err(e) => Err(SendError::Encode(e.into())),
        };
        let result = match encoded {
            Ok(()) => self.send_bytes_async(&buf).await,
            Err(e) => Err(e),
        };
        if buf.capacity() <= 1 << 20 {
            self.scratch.set(buf);
        }
        result
    }

    /// Sends `bytes` as one message, awaiting room for all of it:
    /// [`send_bytes`](Connection::send_bytes) for async code (see
    /// [`send_async`](Connection::send_async)).
    pub async fn send_bytes_async(&mut self, bytes: &[u8]) -> Result<(), SendError> {
        let head = self.end.check_send_len(bytes.len())?;
        let capacity = self.end.tx.cap();
        if HEADER + bytes.len() > capacity {
            return Err(SendError::LargerThanRing {
                len: bytes.len(),
                capacity,
            });
        }
        let whole = (HEADER + bytes.len()) as u64;
        self.set_pollable();
        let mut reg = Registration::default();
        loop {
            match self.end.send_frame_within(head, bytes, None, true) {
                Ok(()) => return Ok(()),
                Err(Fail::Empty | Fail::Timeout) => {}
                Err(f) => return Err(f.into()),
            }
            if self.end.arm_tx_fd(whole)? {
                continue;
            }
            let fd = self.readiness_fd().as_raw_fd();
            reg.readable(fd).await.map_err(SendError::Reactor)?;
        }
    }
}

impl Receiver {
    /// See [`Connection::recv_async`].
    pub async fn recv_async<T: DeserializeOwned>(&mut self) -> Result<T, RecvError> {
        self.0.recv_async().await
    }

    /// See [`Connection::recv_bytes_async`].
    pub async fn recv_bytes_async(&mut self) -> Result<Vec<u8>, RecvError> {
        self.0.recv_bytes_async().await
    }
}

impl Sender {
    /// See [`Connection::send_async`].
    pub async fn send_async<M: Serialize + ?Sized>(&mut self, value: &M) -> Result<(), SendError> {
        self.0.send_async(value).await
    }

    /// See [`Connection::send_bytes_async`].
    pub async fn send_bytes_async(&mut self, bytes: &[u8]) -> Result<(), SendError> {
        self.0.send_bytes_async(bytes).await
    }
}
