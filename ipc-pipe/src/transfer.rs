//! Moving a pipe end into a message: `Serialize`/`Deserialize` for [`Connection`], [`Sender`]
//! and [`Receiver`] through the workspace's transfer context ([`ipc_shm::transfer`]).
//!
//! An end travels as its two descriptors (the shared segment's and its socket's, duplicated
//! into the message's batch) and its side. The receiver rebuilds it with
//! [`Connection::from_raw_parts`], which validates the segment header and the control block,
//! and records the receiving process as the end's user.
//!
//! # Giving an end away
//!
//! An end has one user at a time. Serialising it *gives it away*: the sender's handle is marked,
//! cannot be sent again ([`TransferError::NotTransferable`]), and dropping it releases this
//! process's copy quietly (like [`Connection::release`]: the peer sees no hang-up, since the end
//! lives on in the receiver). If the sender keeps using it anyway, the receiver's claim makes
//! that a `WrongProcess` error. An end cannot be sent over its own pipe (the peer would receive
//! itself, or this end would receive itself). A message that fails to send after it was encoded
//! still gave the end away: do not reuse handles of a failed message.

use std::sync::Arc;

use ipc_shm::transfer::{self, FdRef, Refused, TransferError};
use serde::de::Error as _;
use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::channel::{Receiver, Sender};
use crate::connection::Connection;
use crate::error::OpenError;

const KIND: &str = "pipe end (Connection)";

#[derive(Serialize, Deserialize)]
struct EndWire {
    shm: FdRef,
    sock: FdRef,
    side: u8,
}

impl Connection {
    /// The identity of this pipe in the transfer context: its shared segment (shared by both
    /// ends made in one process).
    pub(crate) fn channel_id(&self) -> usize {
        Arc::as_ptr(&self.seg) as usize
    }

    fn to_wire(&self) -> Result<EndWire, Refused> {
        let refuse = |reason| transfer::fail(TransferError::NotTransferable { kind: KIND, reason });
        if self.given_away.get() || self.released {
            return Err(refuse("it was already given away"));
        }
        if transfer::sending_over(self.channel_id()) {
            return Err(refuse("an end cannot be sent over its own pipe"));
        }
        let wire = EndWire {
            shm: transfer::put_fd(self.seg.fd(), KIND)?,
            sock: transfer::put_fd(self.sock(), KIND)?,
            side: self.end.side as u8,
        };
        self.given_away.set(true);
        Ok(wire)
    }

    fn from_wire(wire: EndWire) -> Result<Connection, Refused> {
        let shm = transfer::take_fd(wire.shm, KIND)?;
        let sock = transfer::take_fd(wire.sock, KIND)?;
        Connection::from_raw_parts(shm, sock, usize::from(wire.side)).map_err(|e| {
            transfer::fail(match e {
                OpenError::Segment(e) => TransferError::Open(e),
                OpenError::Corrupted(c) => TransferError::Invalid {
                    kind: KIND,
                    what: c.what,
                },
                _ => TransferError::Invalid {
                    kind: KIND,
                    what: "the end could not be rebuilt",
                },
            })
        })
    }
}

/// Gives the end away into the message (see the module docs); only inside a transfer context,
/// such as another pipe's [`Connection::send`] or the pool's task arguments.
impl Serialize for Connection {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_wire().map_err(S::Error::custom)?.serialize(s)
    }
}

/// Rebuilds a received end (segment and control block validated).
impl<'de> Deserialize<'de> for Connection {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Connection, D::Error> {
        Connection::from_wire(EndWire::deserialize(d)?).map_err(D::Error::custom)
    }
}

/// As [`Connection`]'s: the sending end of a channel travels and is given away.
impl Serialize for Sender {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Sender {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Sender, D::Error> {
        Connection::deserialize(d).map(Sender)
    }
}

/// As [`Connection`]'s: the receiving end of a channel travels and is given away.
impl Serialize for Receiver {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Receiver {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Receiver, D::Error> {
        Connection::deserialize(d).map(Receiver)
    }
}
