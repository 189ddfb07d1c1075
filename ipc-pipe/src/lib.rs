//! A duplex pipe of two connections over shared memory, with peer-death detection and poll
//! readiness: Python's `multiprocessing.Pipe` for Rust.
#![deny(unsafe_code)]

#[cfg(not(loom))]
mod conn;
#[cfg(not(loom))]
mod error;
#[cfg(not(loom))]
mod os;
mod ring;
#[cfg(not(loom))]
mod slots;
mod sync;

#[cfg(not(loom))]
pub use conn::{Connection, PipeBuilder, Receiver, Sender, Waitable, channel, pipe, wait};
#[cfg(not(loom))]
pub use error::{
    Corruption, OpenError, PassError, PipeError, PollError, RecvError, RecvIntoError,
    RecvTimeoutError, SendError, TryRecvError,
};
