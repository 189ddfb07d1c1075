//! The one-way ends made by [`channel`](crate::channel): [`Sender`] and [`Receiver`], thin
//! wrappers over a [`Connection`] that expose one direction.

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::connection::Connection;
use crate::error::{
    OpenError, PassError, PollError, RecvError, RecvIntoError, RecvTimeoutError, SendError,
    SendTimeoutError, TryRecvError, TrySendError,
};

/// The sending end of a one-way pipe made by [`channel`](crate::channel()).
#[derive(Debug)]
pub struct Sender(pub(crate) Connection);

/// The receiving end of a one-way pipe made by [`channel`](crate::channel()).
#[derive(Debug)]
pub struct Receiver(pub(crate) Connection);

impl Sender {
    /// See [`Connection::send`]: `value` is a message or a reference to one.
    pub fn send<M: Serialize>(&self, value: M) -> Result<(), SendError> {
        self.0.send(value)
    }

    /// See [`Connection::send_bytes`].
    pub fn send_bytes(&self, bytes: &[u8]) -> Result<(), SendError> {
        self.0.send_bytes(bytes)
    }

    /// [`Connection::try_send`]: sends only if the whole message fits now; the value comes back.
    pub fn try_send<T: Serialize>(&self, value: T) -> Result<(), TrySendError<T>> {
        self.0.try_send(value)
    }

    /// [`Connection::send_timeout`]: waits at most `timeout` for room; the value comes back.
    pub fn send_timeout<T: Serialize>(
        &self,
        value: T,
        timeout: Duration,
    ) -> Result<(), SendTimeoutError<T>> {
        self.0.send_timeout(value, timeout)
    }

    /// [`Connection::try_send_bytes`].
    pub fn try_send_bytes<'a>(&self, bytes: &'a [u8]) -> Result<(), TrySendError<&'a [u8]>> {
        self.0.try_send_bytes(bytes)
    }

    /// [`Connection::send_bytes_timeout`].
    pub fn send_bytes_timeout<'a>(
        &self,
        bytes: &'a [u8],
        timeout: Duration,
    ) -> Result<(), SendTimeoutError<&'a [u8]>> {
        self.0.send_bytes_timeout(bytes, timeout)
    }

    /// See [`Connection::close`].
    pub fn close(self) {
        self.0.close()
    }

    /// See [`Connection::pass_to_command`].
    pub fn pass_to_command(
        &self,
        cmd: &mut (impl ipc_shm::ChildSetup + ?Sized),
        key: &str,
    ) -> Result<(), PassError> {
        self.0.pass_to_command(cmd, key)
    }

    /// See [`Connection::from_inherited`] (the inherited end must be a sender).
    pub fn from_inherited(key: &str) -> Result<Sender, OpenError> {
        Connection::from_inherited(key).map(Sender)
    }
}

impl Receiver {
    /// See [`Connection::recv`].
    pub fn recv<T: DeserializeOwned>(&self) -> Result<T, RecvError> {
        self.0.recv()
    }

    /// See [`Connection::recv_timeout`].
    pub fn recv_timeout<T: DeserializeOwned>(
        &self,
        timeout: Duration,
    ) -> Result<T, RecvTimeoutError> {
        self.0.recv_timeout(timeout)
    }

    /// See [`Connection::try_recv`].
    pub fn try_recv<T: DeserializeOwned>(&self) -> Result<T, TryRecvError> {
        self.0.try_recv()
    }

    /// See [`Connection::recv_bytes`].
    pub fn recv_bytes(&self) -> Result<Vec<u8>, RecvError> {
        self.0.recv_bytes()
    }

    /// [`Connection::recv_bytes_timeout`].
    pub fn recv_bytes_timeout(&self, timeout: Duration) -> Result<Vec<u8>, RecvTimeoutError> {
        self.0.recv_bytes_timeout(timeout)
    }

    /// See [`Connection::recv_bytes_into`].
    pub fn recv_bytes_into(&self, buf: &mut [u8]) -> Result<usize, RecvIntoError> {
        self.0.recv_bytes_into(buf)
    }

    /// See [`Connection::poll`].
    pub fn poll(&self, timeout: Duration) -> Result<bool, PollError> {
        self.0.poll(timeout)
    }

    /// See [`Connection::close`].
    pub fn close(self) {
        self.0.close()
    }

    /// See [`Connection::pass_to_command`].
    pub fn pass_to_command(
        &self,
        cmd: &mut (impl ipc_shm::ChildSetup + ?Sized),
        key: &str,
    ) -> Result<(), PassError> {
        self.0.pass_to_command(cmd, key)
    }

    /// See [`Connection::from_inherited`] (the inherited end must be a receiver).
    pub fn from_inherited(key: &str) -> Result<Receiver, OpenError> {
        Connection::from_inherited(key).map(Receiver)
    }
}
