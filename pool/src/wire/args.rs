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
use crate::wire::recycle;
use crate::wire::shared_args::{self, SharedArgs};

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

/// Why arguments could not be encoded.
#[derive(Debug)]
pub(crate) enum ArgsError {
    /// A handle in them cannot travel (the transfer context's own error).
    Handle(ipc_shm::transfer::TransferError),
    /// The codec refused them.
    Codec(CodecEncodeError),
}

impl ArgsError {
    /// The task's error for arguments that could not be submitted.
    pub(crate) fn into_task_error(self) -> crate::TaskError {
        match self {
            ArgsError::Handle(e) => crate::TaskError::Unsendable(crate::HandleError::new(e)),
            ArgsError::Codec(e) => crate::TaskError::Argument(e.to_string()),
        }
    }

    /// The builder's error for an initializer's or a `Process`'s argument.
    pub(crate) fn into_config_error(
        self,
        codec: fn(crate::EncodeError) -> crate::ConfigError,
    ) -> crate::ConfigError {
        match self {
            ArgsError::Handle(e) => {
                crate::ConfigError::UnsendableArgument(crate::HandleError::new(e))
            }
            ArgsError::Codec(e) => codec(crate::EncodeError::new(e)),
        }
    }
}

/// Encodes `args` in a transfer context. An argument that cannot travel (a pipe end already
/// given away, too many descriptors) fails here, at submit time, with the transfer error that
/// says why.
pub(crate) fn encode<A: Serialize>(args: &[A]) -> Result<Args, ArgsError> {
    encode_reusing(args, Vec::new())
}

/// [`encode`] into `buf` (emptied first) rather than into a new buffer, unless a recycled one
/// is due (large arguments, `wire/recycle.rs`): a caller that encodes often keeps one buffer.
pub(crate) fn encode_reusing<A: Serialize>(args: &[A], buf: Vec<u8>) -> Result<Args, ArgsError> {
    let (bytes, batch, handle) = transfer::encode(|| {
        let mut bytes = recycle::buffer_for(args);
        if bytes.capacity() == 0 {
            bytes = buf;
            bytes.clear();
        }
        codec::encode_into(args, &mut bytes).map(|()| {
            shared_args::saw(bytes.len());
            bytes
        })
    });
    if let Some(e) = handle {
        return Err(ArgsError::Handle(e));
    }
    let bytes = bytes.map_err(ArgsError::Codec)?;
    let fds = (!batch.is_empty()).then(|| Arc::new(batch));
    Ok(Args { bytes, fds })
}

/// [`encode_reusing`] for a job: with `areas`, large arguments go into a bulk area of their own
/// when this process has sent large arguments before (`wire/shared_args.rs`; `bytes` is then
/// empty). A job that leaves as a message (a cluster pool's) has no use for one.
pub(crate) fn encode_job<A: Serialize>(
    args: &[A],
    buf: Vec<u8>,
    areas: bool,
) -> Result<(Args, Option<SharedArgs>), ArgsError> {
    let in_area = |args: &[A]| areas.then(|| shared_args::encode(args)).flatten();
    let (encoded, batch, handle) = transfer::encode(|| match in_area(args) {
        Some(shared) => Ok((Vec::new(), Some(shared))),
        None => {
            // Once large arguments were seen, `shared_args` sized these already: small, or
            // made of small fields (no recycled buffer: it would size them again).
            let mut bytes = if areas && shared_args::seen_large() {
                Vec::new()
            } else {
                recycle::buffer_for(args)
            };
            if bytes.capacity() == 0 {
                bytes = buf;
                bytes.clear();
            }
            codec::encode_into(args, &mut bytes).map(|()| {
                shared_args::saw(bytes.len());
                (bytes, None)
            })
        }
    });
    if let Some(e) = handle {
        return Err(ArgsError::Handle(e));
    }
    let (bytes, shared) = encoded.map_err(ArgsError::Codec)?;
    let fds = (!batch.is_empty()).then(|| Arc::new(batch));
    Ok((Args { bytes, fds }, shared))
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
