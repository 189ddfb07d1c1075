//! Task, initializer and `Process` arguments that carry IPC handles: the pool's use of the
//! workspace's transfer context ([`ipc_shm::transfer`]).
//!
//! Arguments are encoded once, when they are submitted, inside a transfer context: a
//! `Segment`, `SharedValue`, `SharedSlice`, `ipc_queue::Queue` or `ipc_pipe::Connection` in
//! them duplicates its descriptors into the arguments' [`FdBatch`] (an argument that cannot
//! travel fails there, at submit time, never in the worker). The batch stays with the job
//! (shared, so a job resent to another worker after a death sends the same descriptors again),
//! and goes down the worker's link ahead of the `Run`/`Init` frame, which names the batch by
//! id (`SCM_RIGHTS` over the pipe's socket: see `ipc_pipe::Connection::send_bytes_with_fds`).
//! The worker takes the batch from its link before it runs the task and decodes the arguments
//! with it in force; descriptors nobody took are closed when the decode ends.
//!
//! The same path serves every start method, since tasks and initializer arguments always
//! travel over the link (a fork-server worker inherits nothing the parent created after the
//! server started, and needs nothing: the descriptors come with the message).
//!
//! Results do not carry handles yet: a handle in a result fails to encode in the worker
//! (`TaskError::Result`).

use std::sync::Arc;

use ipc_shm::transfer::{self, FdBatch};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::wire::codec::{self, CodecEncodeError};

/// Encoded arguments: one bincode sequence, and the descriptors their handles put in a batch
/// (`None` when they carry none, the common case).
#[derive(Debug, Clone)]
pub(crate) struct Args {
    pub(crate) bytes: Vec<u8>,
    pub(crate) fds: Option<Arc<FdBatch>>,
}

impl Args {
    /// The batch id the frame names, if the arguments carry descriptors.
    pub(crate) fn batch_id(&self) -> Option<u64> {
        self.fds.as_ref().map(|b| b.id())
    }
}

/// Encodes `args` in a transfer context. An argument that cannot travel (a pipe end already
/// given away, too many descriptors) fails here with the codec's error, whose message says
/// why.
pub(crate) fn encode<A: Serialize>(args: &[A]) -> Result<Args, CodecEncodeError> {
    let (bytes, batch, _) = transfer::encode(|| codec::encode(args));
    // A handle's failure is also `bytes`' error (serde's, carrying the same message).
    let bytes = bytes?;
    let fds = (!batch.is_empty()).then(|| Arc::new(batch));
    Ok(Args { bytes, fds })
}

/// Re-encodes arguments `skip..skip + take` of `args` (for a job split after its worker
/// died): decoded with duplicates of the job's descriptors in force, then encoded again with
/// a new batch.
pub(crate) fn reslice<A: Serialize + DeserializeOwned>(
    args: &Args,
    skip: usize,
    take: usize,
) -> Option<Args> {
    let batch = match &args.fds {
        Some(b) => Some(b.try_clone().ok()?),
        None => None,
    };
    let (all, error) = transfer::decode_with(batch, || codec::decode::<Vec<A>>(&args.bytes));
    if error.is_some() {
        return None;
    }
    let all = all.ok()?;
    let part = all.get(skip..skip.checked_add(take)?)?;
    encode(part).ok()
}
