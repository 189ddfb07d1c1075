//! The one-way ends made by [`channel`](crate::channel): [`Sender`] and [`Receiver`], thin
//! wrappers over a [`Connection`] that expose one direction.

use std::process::Command;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::connection::Connection;
use crate::error::{
    OpenError, PassError, PollError, RecvError, RecvIntoError, RecvTimeoutError, SendError,
    TryRecvError,
};

/// The sending end of a one-way pipe made by [`channel`](crate::channel()).
#[derive(Debug)]
pub struct Sender(pub(crate) Connection);

/// The receiving end of a one-way pipe made by [`channel`](crate::channel()).
#[derive(Debug)]
pub struct Receiver(pub(crate) Connection);

impl Sender {
    /// See [`Connection::send`].
    pub fn send<T: Serialize + ?Sized>(&self, value: &T) -> Result<(), SendError> {
        self.0.send(value)
    }

    /// See [`Connection::send_bytes`].
    pub fn send_bytes(&self, bytes: &[u8]) -> Result<(), SendError> {
        self.0.send_bytes(bytes)
    }

    /// See [`Connection::close`].
    pub fn close(self) {
        self.0.close()
    }

    /// See [`Connection::pass_to_command`].
    pub fn pass_to_command(&self, cmd: &mut Command, key: &str) -> Result<(), PassError> {
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
    pub fn pass_to_command(&self, cmd: &mut Command, key: &str) -> Result<(), PassError> {
        self.0.pass_to_command(cmd, key)
    }

    /// See [`Connection::from_inherited`] (the inherited end must be a receiver).
    pub fn from_inherited(key: &str) -> Result<Receiver, OpenError> {
        Connection::from_inherited(key).map(Receiver)
    }
}
