//! What the pool and a worker say to each other, and the one boundary a transport must cross.
//!
//! A frame is one [`ipc_shm::codec`] frame carrying the header (a [`ToWorker`] or [`FromWorker`]),
//! followed by the payload, which runs to the end of the frame:
//!
//! ```text
//! | FrameHeader (8 bytes: header length, check word) | bincode header | payload ... |
//! ```
//!
//! The two headers of every task's round trip, `Run` and `Results`, are also written and read
//! by hand, to the same bytes (`wire/header.rs`); serde reads every other header, and any
//! header the hand reader does not take whole.
//!
//! The header length is validated ([`ipc_shm::codec::frame_len`]: check word intact, at most
//! the bytes that follow it) before anything is decoded, and the header decodes within the one
//! decode limit, so a corrupt or hostile frame is a typed error, never an unbounded allocation.
//! The payload of `Run` and `Init` is one bincode sequence of arguments (`Vec<A>`); the payload
//! of `Results` is one bincode sequence of outcomes (`Vec<Result<R, Failure>>`). The `Err`
//! variant's encoding does not depend on `R`, so the pool can fabricate failures without knowing
//! the type.
//!
//! ## The transport boundary
//!
//! Everything the pool needs from a transport is [`Link`]: send a frame, receive a frame with a
//! timeout, and learn that the other side is gone. Today a link is an `ipc_pipe::Connection` to a
//! local worker process; a distributed backend (MPI, a message broker) would implement the same
//! trait, and find tasks by registered name rather than by offset.

use std::time::Duration;

use ipc_shm::codec::{HEADER_LEN, frame_len};
use ipc_shm::transfer::{FdBatch, TransferError};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::task::{Failure, TaskRef};
use crate::wire::codec::{self, CodecDecodeError, CodecEncodeError};

/// Pool → worker.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ToWorker {
    /// Run the task on every argument of the payload. `fds`: the id of the descriptor batch
    /// that came ahead of the frame, if the arguments hand IPC objects over (`wire/args.rs`).
    /// `bulk`: the arguments are not in the payload (which is empty) but in the seat's bulk
    /// area, this many bytes (`wire/bulk.rs`).
    Run {
        job: u64,
        task: TaskRef,
        fds: Option<u64>,
        bulk: Option<u64>,
    },
    /// The payload is a bulk area (one transferred `Segment`, its descriptor in the batch
    /// `fds`), known as `id` from now on: keep it mapped, and read the `Run` frames' bulk
    /// arguments from it until told otherwise (`wire/bulk.rs`).
    Bulk { fds: Option<u64>, id: u64 },
    /// Run the initializer on the payload's single argument (`fds` as for `Run`).
    Init { task: TaskRef, fds: Option<u64> },
    /// Finish and exit with status 0.
    Exit,
    /// Read the `Run` frames' bulk arguments from the area `id`, handed over earlier and still
    /// kept (`wire/bulk.rs`).
    UseBulk { id: u64 },
    /// A seat took this worker, which waited as the fork server's primed blank: nothing to
    /// answer (the worker takes its own name, see `worker::serve`).
    Seated,
}

/// Worker → pool.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum FromWorker {
    /// The first message: who the worker is and which executable it runs.
    Hello { pid: u32, exe: (u64, u64, u64, i64) },
    /// Outcomes of arguments `first..first + count` (chunk-relative) of `job`; `done` once the
    /// job's last one is included.
    Results {
        job: u64,
        first: u64,
        count: u64,
        done: bool,
    },
    /// The job's arguments could not be decoded; none ran.
    ChunkFailed { job: u64, failure: Failure },
    /// The initializer returned.
    InitDone,
    /// The initializer failed (the worker exits after sending this).
    InitFailed { failure: Failure },
}

/// Why a link could not carry a frame.
#[derive(Debug)]
pub(crate) enum LinkError {
    /// The other side is gone (closed, exited or killed).
    Disconnected,
    /// Nothing arrived in time.
    Timeout,
    /// Anything else (a corrupted transport, a system error).
    Broken,
}

/// A bidirectional, message-framed link to one worker (or, in the worker, to the pool).
pub(crate) trait Link: Send {
    /// Sends one frame.
    fn send(&mut self, frame: &[u8]) -> Result<(), LinkError>;
    /// Sends one frame that must not be lost but need not wake the other side now (a later
    /// `send` does). Defaults to `send`.
    fn send_quiet(&mut self, frame: &[u8]) -> Result<(), LinkError> {
        self.send(frame)
    }
    /// Sends one frame made of `parts` (a frame's head, then its payload) without copying them
    /// together first; `quiet` as [`send_quiet`](Link::send_quiet). Defaults to copying them
    /// into one frame.
    fn send_vectored(&mut self, parts: &[&[u8]], quiet: bool) -> Result<(), LinkError> {
        let frame = parts.concat();
        if quiet {
            self.send_quiet(&frame)
        } else {
            self.send(&frame)
        }
    }
    /// Receives one frame into `buf` (replacing its contents, reusing its allocation), waiting
    /// at most `timeout`.
    fn recv(&mut self, buf: &mut Vec<u8>, timeout: Option<Duration>) -> Result<(), LinkError>;
    /// Sends one frame with the descriptors of `fds` ahead of it (see `wire/args.rs`).
    /// Defaults to `send` without descriptors, and fails if there are some.
    fn send_with_fds(&mut self, frame: &[u8], fds: Option<&FdBatch>) -> Result<(), LinkError> {
        match fds {
            None => self.send(frame),
            Some(_) => Err(LinkError::Broken),
        }
    }
    /// Takes the descriptor batch `id` that came ahead of the last frame received.
    fn take_fds(&mut self, id: u64) -> Result<FdBatch, TransferError> {
        Err(TransferError::Missing { batch: id })
    }
}

/// Builds a frame in `out` (replacing its contents): the header as one codec frame, then the
/// payload.
pub(crate) fn frame<H: Serialize>(
    header: &H,
    payload: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), CodecEncodeError> {
    out.clear();
    ipc_shm::codec::encode_frame(header, out)?;
    out.extend_from_slice(payload);
    Ok(())
}

/// Builds in `out` (replacing its contents) the head of a frame whose payload is a sequence of
/// `count` values encoded one after the other: the header as one codec frame, then the
/// sequence's length. Sent in front of those encodings, it makes the same frame as [`frame`]
/// with the sequence encoded as one value. (Workers write the `Results` head by hand,
/// `wire/header.rs`, whose tests check it against this.)
#[cfg(test)]
pub(crate) fn seq_frame_head<H: Serialize>(
    header: &H,
    count: usize,
    out: &mut Vec<u8>,
) -> Result<(), CodecEncodeError> {
    frame(header, &[], out)?;
    codec::encode_into(&(count as u64), out)
}

/// Splits a frame into its decoded header and its payload.
///
/// The header's length is checked against the bytes that follow it before the header is
/// decoded; nothing here allocates more than the decode limit allows.
pub(crate) fn unframe<H: DeserializeOwned>(bytes: &[u8]) -> Result<(H, &[u8]), CodecDecodeError> {
    let (head, rest) = bytes
        .split_first_chunk::<HEADER_LEN>()
        .ok_or(CodecDecodeError::Truncated { len: bytes.len() })?;
    let len = frame_len(*head, rest.len())?;
    let (header, payload) = rest.split_at(len);
    Ok((codec::decode(header)?, payload))
}
