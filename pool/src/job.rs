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
use crate::wire::args::{self, Args};
use ipc_shm::transfer::FdBatch;

/// A job: one task function over a chunk of arguments.
pub(crate) struct Job {
    pub(crate) id: u64,
    pub(crate) task: TaskRef,
    /// The arguments, one bincode sequence (`Vec<A>`).
    pub(crate) args: Vec<u8>,
    /// The descriptors of the IPC handles among the arguments, if any (`wire/args.rs`).
    pub(crate) fds: Option<Arc<FdBatch>>,
    /// The global index of the first argument.
    pub(crate) first: u64,
    pub(crate) count: u64,
    /// How many workers died while decoding this job's arguments (see `driver`).
    pub(crate) attempts: u32,
    /// Re-encodes arguments `skip..skip + take` of `args` (monomorphised for `A`), for the
    /// rare job that must be split after a worker died.
    reslice: fn(&Args, usize, usize) -> Option<Args>,
    pub(crate) sink: Arc<dyn Sink>,
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
        let encoded = args::encode(args).map_err(|e| TaskError::Argument(e.to_string()))?;
        Ok(Job {
            id,
            task,
            args: encoded.bytes,
            fds: encoded.fds,
            first,
            count: args.len() as u64,
            attempts: 0,
            reslice: args::reslice::<A>,
            sink,
        })
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
    fn slice(&self, from: u64, to: u64) -> Option<Job> {
        let skip = from.checked_sub(self.first)?;
        let end = to.checked_sub(self.first)?.min(self.count);
        if skip >= end {
            return None;
        }
        let whole = Args {
            bytes: self.args.clone(),
            fds: self.fds.clone(),
        };
        let part = (self.reslice)(&whole, skip as usize, (end - skip) as usize)?;
        Some(Job {
            id: self.id,
            task: self.task,
            args: part.bytes,
            fds: part.fds,
            first: from,
            count: end - skip,
            attempts: self.attempts,
            reslice: self.reslice,
            sink: self.sink.clone(),
        })
    }
}
