//! The error of each operation.

use std::io;

pub use crate::ring::Corruption;

/// Why [`pipe`](crate::pipe), [`channel`](crate::channel) or [`PipeBuilder`](crate::PipeBuilder)
/// failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PipeError {
    /// A ring capacity that is not a power of two of at least 64 bytes.
    #[error("ring capacity {0} is not a power of two >= 64")]
    BadCapacity(usize),
    /// The shared-memory segment could not be created.
    #[error("cannot create the shared segment")]
    Segment(#[from] ipc_shm::SegmentCreateError),
    /// The socketpair could not be created.
    #[error("cannot create the socketpair")]
    Socket(#[source] io::Error),
}

/// Why an end could not be opened from descriptors (after `exec`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The descriptors or the side were not handed to this process as expected.
    #[error("inherited descriptor missing or invalid")]
    Inherit(#[from] ipc_shm::InheritError),
    /// The environment variable naming the side is missing or malformed.
    #[error("environment variable {key} missing or not 0/1")]
    BadSide {
        /// The variable.
        key: String,
    },
    /// The segment is not a valid pipe segment.
    #[error("not a pipe segment")]
    Segment(#[from] ipc_shm::SegmentOpenError),
    /// The control block holds impossible values.
    #[error(transparent)]
    Corrupted(#[from] Corruption),
}

/// Why an end could not be passed to a child command.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PassError {
    /// Duplicating a descriptor failed.
    #[error("cannot pass the descriptors")]
    Io(#[from] io::Error),
}

/// Why a send failed. `send` borrows the value, so the caller still holds it and may retry
/// elsewhere.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The other end was closed, dropped in every process, or its process died.
    #[error("the other end of the pipe is gone")]
    Disconnected,
    /// The encoded message exceeds the maximum message size.
    #[error("message of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Its size.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// The value could not be serialised.
    #[error("cannot encode the message")]
    Encode(#[from] bincode::error::EncodeError),
    /// The shared control block holds impossible values (a buggy or hostile peer).
    #[error(transparent)]
    Corrupted(#[from] Corruption),
    /// Another process is using this end (see "One process per end" in the crate docs).
    #[error("this end is in use by process {owner}")]
    WrongProcess {
        /// The process recorded as using it.
        owner: u32,
    },
    /// A handle in the message could not travel (see [`ipc_shm::transfer`]): outside the
    /// message's reach (a pipe end already given away, an end sent over its own pipe), too many
    /// descriptors, or the socket refused them. Nothing of the message was written.
    #[error("a handle in the message cannot be sent")]
    Transfer(#[source] ipc_shm::transfer::TransferError),
    /// Only from the async sends (feature `tokio`): the end's readiness fd could not be
    /// registered with the tokio reactor (`epoll_ctl` failed, or the runtime is shutting down).
    /// Nothing was written.
    #[cfg(feature = "tokio")]
    #[error("cannot register the readiness fd with the tokio reactor")]
    Reactor(#[source] io::Error),
    /// Only from the timed and non-blocking sends ([`try_send`](crate::Connection::try_send),
    /// [`send_timeout`](crate::Connection::send_timeout) and their bytes forms) and the async
    /// sends (feature `tokio`): the frame (an 8-byte header and `len` bytes) is larger than
    /// the outgoing ring of `capacity` bytes, so it could only be streamed, which cannot stop
    /// at a deadline (or a dropped future) without breaking the stream. Nothing was written;
    /// send it with the blocking `send`/`send_bytes`.
    #[error("message of {len} bytes does not fit in the ring of {capacity} bytes")]
    LargerThanRing {
        /// The message's size.
        len: usize,
        /// The outgoing ring's capacity.
        capacity: usize,
    },
}

macro_rules! send_with_value {
    ($(#[$m:meta])* $name:ident, $wait:ident, $wait_doc:literal, $wait_msg:literal) => {
        $(#[$m])*
        #[non_exhaustive]
        pub enum $name<T> {
            #[doc = $wait_doc]
            $wait(T),
            /// The send failed for another reason (see [`SendError`]); nothing of the message
            /// was written.
            Failed {
                /// Why.
                error: SendError,
                /// The value, handed back.
                value: T,
            },
        }

        impl<T> $name<T> {
            /// The value that was not sent.
            pub fn into_inner(self) -> T {
                match self {
                    $name::$wait(value) | $name::Failed { value, .. } => value,
                }
            }
        }

        // Not derived: the value need not be `Debug` (as with `std::sync::mpsc`'s errors).
        impl<T> std::fmt::Debug for $name<T> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                match self {
                    $name::$wait(_) => write!(f, "{}(..)", stringify!($wait)),
                    $name::Failed { error, .. } => f
                        .debug_struct("Failed")
                        .field("error", error)
                        .finish_non_exhaustive(),
                }
            }
        }

        impl<T> std::fmt::Display for $name<T> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                match self {
                    $name::$wait(_) => f.write_str($wait_msg),
                    $name::Failed { .. } => f.write_str("send failed"),
                }
            }
        }

        impl<T> std::error::Error for $name<T> {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                match self {
                    $name::$wait(_) => None,
                    $name::Failed { error, .. } => Some(error),
                }
            }
        }
    };
}

send_with_value!(
    /// Why [`try_send`](crate::Connection::try_send) or
    /// [`try_send_bytes`](crate::Connection::try_send_bytes) did not send; the value comes back.
    TrySendError,
    Full,
    "The outgoing ring has no room for the whole message now; nothing was written.",
    "the pipe is full"
);

send_with_value!(
    /// Why [`send_timeout`](crate::Connection::send_timeout) or
    /// [`send_bytes_timeout`](crate::Connection::send_bytes_timeout) did not send; the value
    /// comes back.
    SendTimeoutError,
    Timeout,
    "The peer did not free room for the whole message before the timeout (it is alive but not reading); nothing was written.",
    "timed out waiting for room in the pipe"
);

macro_rules! recv_common {
    ($(#[$m:meta])* $vis:vis enum $name:ident { $($extra:tt)* }) => {
        $(#[$m])*
        #[derive(Debug, thiserror::Error)]
        #[non_exhaustive]
        $vis enum $name {
            $($extra)*
            /// The other end is gone and every message it sent has been received.
            #[error("the other end of the pipe is gone")]
            Disconnected,
            /// The incoming message exceeds this end's maximum message size.
            #[error("incoming message of {len} bytes exceeds the maximum of {max}")]
            TooLarge {
                /// Its announced size.
                len: u64,
                /// The maximum.
                max: usize,
            },
            /// The message could not be deserialised as the requested type.
            #[error("cannot decode the message")]
            Decode(#[from] bincode::error::DecodeError),
            /// The shared control block holds impossible values (a buggy or hostile peer).
            #[error(transparent)]
            Corrupted(#[from] Corruption),
            /// The message decoded, but a handle in it (a segment, queue or pipe end; see
            /// [`ipc_shm::transfer`]) could not be rebuilt: its descriptors did not arrive or
            /// do not match, or the object failed validation. The message was consumed.
            #[error("a handle in the message could not be received")]
            Transfer(#[source] ipc_shm::transfer::TransferError),
            /// Another process is using this end.
            #[error("this end is in use by process {owner}")]
            WrongProcess {
                /// The process recorded as using it.
                owner: u32,
            },
        }
    };
}

recv_common! {
    /// Why [`recv`](crate::Connection::recv) or [`recv_bytes`](crate::Connection::recv_bytes)
    /// (or, with feature `tokio`, `recv_async`/`recv_bytes_async`) failed.
    pub enum RecvError {
        /// Only from the async receives (feature `tokio`): the end's readiness fd could not be
        /// registered with the tokio reactor (`epoll_ctl` failed, or the runtime is shutting
        /// down). Nothing was received.
        #[cfg(feature = "tokio")]
        #[error("cannot register the readiness fd with the tokio reactor")]
        Reactor(#[source] io::Error),
    }
}

recv_common! {
    /// Why [`try_recv`](crate::Connection::try_recv) returned nothing.
    pub enum TryRecvError {
        /// No complete message is waiting.
        #[error("no message waiting")]
        Empty,
    }
}

recv_common! {
    /// Why [`recv_timeout`](crate::Connection::recv_timeout) returned nothing.
    pub enum RecvTimeoutError {
        /// No whole message arrived before the timeout. Nothing was lost: a message that fits
        /// in the ring stays there, and what arrived of a larger one is kept in the end for the
        /// next receive.
        #[error("timed out waiting for a message")]
        Timeout,
    }
}

recv_common! {
    /// Why [`recv_bytes_into`](crate::Connection::recv_bytes_into) failed.
    pub enum RecvIntoError {
        /// The buffer is shorter than the next message, which stays in the pipe: call again
        /// with a buffer of at least `needed` bytes (or use `recv_bytes`).
        #[error("buffer too small: the next message has {needed} bytes")]
        BufferTooSmall {
            /// The message's size.
            needed: usize,
        },
    }
}

recv_common! {
    /// Why [`poll`](crate::Connection::poll) or [`wait`](crate::wait) failed.
    pub enum PollError {}
}

/// Why a received message did not become a value: its bytes, or a handle in it.
#[derive(Debug)]
pub(crate) enum DecodeFail {
    Decode(bincode::error::DecodeError),
    Transfer(ipc_shm::transfer::TransferError),
}

macro_rules! from_decode_fail {
    ($($name:ident),*) => {$(
        impl From<DecodeFail> for $name {
            fn from(f: DecodeFail) -> $name {
                match f {
                    DecodeFail::Decode(e) => $name::Decode(e),
                    DecodeFail::Transfer(e) => $name::Transfer(e),
                }
            }
        }
    )*};
}

from_decode_fail!(RecvError, TryRecvError, RecvTimeoutError);

/// The internal failure of a receive, converted into each operation's enum.
#[derive(Debug)]
pub(crate) enum Fail {
    Empty,
    Timeout,
    Disconnected,
    TooLarge { len: u64, max: usize },
    Corrupted(Corruption),
    WrongProcess { owner: u32 },
}

impl From<Corruption> for Fail {
    fn from(c: Corruption) -> Fail {
        Fail::Corrupted(c)
    }
}

macro_rules! from_fail {
    ($name:ident, $empty:expr, $timeout:expr) => {
        impl From<Fail> for $name {
            fn from(f: Fail) -> $name {
                match f {
                    Fail::Empty => $empty,
                    Fail::Timeout => $timeout,
                    Fail::Disconnected => $name::Disconnected,
                    Fail::TooLarge { len, max } => $name::TooLarge { len, max },
                    Fail::Corrupted(c) => $name::Corrupted(c),
                    Fail::WrongProcess { owner } => $name::WrongProcess { owner },
                }
            }
        }
    };
}

// Blocking receives never see Empty/Timeout; map them to Disconnected defensively.
from_fail!(RecvError, RecvError::Disconnected, RecvError::Disconnected);
from_fail!(TryRecvError, TryRecvError::Empty, TryRecvError::Empty);
from_fail!(
    RecvTimeoutError,
    RecvTimeoutError::Timeout,
    RecvTimeoutError::Timeout
);
from_fail!(
    RecvIntoError,
    RecvIntoError::Disconnected,
    RecvIntoError::Disconnected
);
from_fail!(PollError, PollError::Disconnected, PollError::Disconnected);

impl From<Fail> for SendError {
    fn from(f: Fail) -> SendError {
        match f {
            Fail::Corrupted(c) => SendError::Corrupted(c),
            Fail::WrongProcess { owner } => SendError::WrongProcess { owner },
            Fail::TooLarge { len, max } => SendError::TooLarge {
                len: len as usize,
                max,
            },
            _ => SendError::Disconnected,
        }
    }
}
