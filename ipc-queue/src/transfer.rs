//! Handing a queue to another process inside a message: `Serialize`/`Deserialize` for
//! [`Queue`] and [`JoinableQueue`] through the workspace's transfer context
//! ([`ipc_shm::transfer`]).
//!
//! A queue travels as its segment's descriptor (duplicated into the message's batch) and a hash
//! of its item type's name. The receiver rebuilds it with [`Queue::from_fd`]: the segment header
//! (magic, version, size, the queue's type tag) and the queue's control block (magic, capacity,
//! `max_items`) are validated again, and the item type must match. Sending duplicates: the
//! sender's handle stays usable, and both processes share one queue. A named queue's name is
//! unlinked by its creator only (a received handle has no name); an anonymous queue lives while
//! any process holds it.
//!
//! Outside a transfer context (a plain bincode call) a queue refuses to serialise: send it with
//! `ipc_pipe::Connection::send`, or as an argument of the pool's tasks, initializer or
//! `Process`.

use ipc_shm::TypeTag;
use ipc_shm::transfer::{self, FdRef, Refused, TransferError};
use serde::de::Error as _;
use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::OpenError;
use crate::queue::{JoinableQueue, Queue};

const KIND: &str = "Queue";

#[derive(Serialize, Deserialize)]
struct QueueWire {
    fd: FdRef,
    /// `TypeTag::from_name(type_name::<T>())`: the receiver's `T` must be the sender's.
    item: u64,
}

fn item_hash<T>() -> u64 {
    TypeTag::from_name(std::any::type_name::<T>()).0
}

fn rebuild<T>(wire: QueueWire) -> Result<Queue<T>, Refused> {
    let fd = transfer::take_fd(wire.fd, KIND)?;
    if wire.item != item_hash::<T>() {
        return Err(transfer::fail(TransferError::Invalid {
            kind: KIND,
            what: "the sender's item type differs from the receiver's",
        }));
    }
    Queue::from_fd(fd).map_err(|e| {
        transfer::fail(match e {
            OpenError::Segment(e) => TransferError::Open(e),
            OpenError::Corrupted { what } => TransferError::Invalid { kind: KIND, what },
        })
    })
}

/// The queue travels as its segment (see the module docs); only inside a transfer context.
impl<T> Serialize for Queue<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let fd = transfer::put_fd(self.fd(), KIND).map_err(S::Error::custom)?;
        QueueWire {
            fd,
            item: item_hash::<T>(),
        }
        .serialize(s)
    }
}

/// Rebuilds a received queue, validating its header and control block again.
impl<'de, T> Deserialize<'de> for Queue<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Queue<T>, D::Error> {
        rebuild(QueueWire::deserialize(d)?).map_err(D::Error::custom)
    }
}

/// As [`Queue`]'s: the joinable queue travels as its segment.
impl<T> Serialize for JoinableQueue<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.queue().serialize(s)
    }
}

impl<'de, T> Deserialize<'de> for JoinableQueue<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<JoinableQueue<T>, D::Error> {
        Queue::deserialize(d).map(JoinableQueue::from_queue)
    }
}
