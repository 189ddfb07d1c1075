//! A job: one task function over a chunk of encoded arguments, and the sink its outcomes go to.
//!
//! Every submission (`apply`, a chunk of `map`, a chunk of `imap`) becomes one [`Job`]. The
//! caller makes it here, the registry queues it, a driver sends it to a worker. A job knows how
//! to fail its arguments and how to cut itself, for the rare job that must be split after its
//! worker died part-way through.

use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::TaskError;
use crate::result::Sink;
use crate::task::TaskRef;
use crate::wire::codec;

/// A job: one task function over a chunk of arguments.
pub(crate) struct Job {
    pub(crate) id: u64,
    pub(crate) task: TaskRef,
    /// The arguments, one bincode sequence (`Vec<A>`).
    pub(crate) args: Vec<u8>,
    /// The global index of the first argument.
    pub(crate) first: u64,
    pub(crate) count: u64,
    /// How many workers died while decoding this job's arguments (see `driver`).
    pub(crate) attempts: u32,
    /// Re-encodes arguments `skip..skip + take` of `args` (monomorphised for `A`), for the
    /// rare job that must be split after a worker died.
    reslice: Reslice,
    pub(crate) sink: Arc<dyn Sink>,
}

/// Re-encodes arguments `skip..skip + take` of an encoded `Vec<A>` (monomorphised for `A`).
pub(crate) type Reslice = fn(&[u8], usize, usize) -> Option<Vec<u8>>;

fn reslice<A: Serialize + DeserializeOwned>(
    args: &[u8],
    skip: usize,
    take: usize,
) -> Option<Vec<u8>> {
    let args: Vec<A> = codec::decode(args).ok()?;
    let part = args.get(skip..skip.checked_add(take)?)?;
    codec::encode(part).ok()
}

impl Job {
    /// The job `id` running `task` over `args`, the first of which has global index `first`;
    /// outcomes go to `sink`.
    pub(crate) fn new<A: Serialize + DeserializeOwned>(
        id: u64,
        task: TaskRef,
        args: &[A],
        first: u64,
        sink: Arc<dyn Sink>,
    ) -> Result<Job, TaskError> {
        let bytes = codec::encode(args).map_err(|e| TaskError::Argument(e.to_string()))?;
        Ok(Job {
            id,
            task,
            args: bytes,
            first,
            count: args.len() as u64,
            attempts: 0,
            reslice: reslice::<A>,
            sink,
        })
    }

    /// A job over arguments that are already encoded (one bincode `Vec<A>` of `count`), with
    /// the `reslice` function of their type: how a cluster node runs a chunk it received
    /// without knowing `A` (`cluster::node`).
    #[cfg(feature = "nats")]
    pub(crate) fn from_encoded(
        id: u64,
        task: TaskRef,
        args: Vec<u8>,
        count: u64,
        reslice: Reslice,
        sink: Arc<dyn Sink>,
    ) -> Job {
        Job {
            id,
            task,
            args,
            first: 0,
            count,
            attempts: 0,
            reslice,
            sink,
        }
    }

    /// This job's re-slicing function (monomorphised for its argument type), which a cluster
    /// caller locates by offset for the node that may have to split the chunk.
    #[cfg(feature = "nats")]
    pub(crate) fn reslice_fn(&self) -> Reslice {
        self.reslice
    }

    /// Fails every argument of the job with `error`.
    pub(crate) fn fail_all(&self, error: &TaskError) {
        for i in 0..self.count {
            self.sink.fail(self.first + i, error.clone());
        }
    }

    /// The job made of this job's arguments from global index `from` on.
    pub(crate) fn rest_from(&self, from: u64) -> Option<Job> {
        self.slice(from, self.first + self.count)
    }

    /// The job made of this job's arguments with global indexes `from..to`.
    pub(crate) fn slice(&self, from: u64, to: u64) -> Option<Job> {
        let skip = from.checked_sub(self.first)?;
        let end = to.checked_sub(self.first)?.min(self.count);
        if skip >= end {
            return None;
        }
        let args = (self.reslice)(&self.args, skip as usize, (end - skip) as usize)?;
        Some(Job {
            id: self.id,
            task: self.task,
            args,
            first: from,
            count: end - skip,
            attempts: self.attempts,
            reslice: self.reslice,
            sink: self.sink.clone(),
        })
    }
}
