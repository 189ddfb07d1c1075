//! A job: one task function over a chunk of encoded arguments, and the sink its outcomes go to.
//!
//! Every submission (`apply`, a chunk of `map`, a chunk of `imap`) becomes one [`Job`]. The
//! caller makes it here, the registry queues it, a driver sends it to a worker. A job knows how
//! to fail its arguments and how to cut itself, for the rare job that must be split after its
//! worker died part-way through.
//!
//! A job submitted through a handle that can be cancelled (`apply_async`, `map_async`, an
//! [`Imap`](crate::Imap)) shares a [`CancelToken`] with the other jobs of that handle.
//!
//! ## Cancellation protocol
//!
//! | step | canceller ([`CancelToken::cancel`])           | driver running a job of the token              |
//! |------|-----------------------------------------------|------------------------------------------------|
//! | 0    | (`AsyncResult::cancel` has claimed the result with `Cancelled`) |                      |
//! | 1    | sets `cancelled`                              | adds its worker's pid to `running` (lock)      |
//! | 2    | locks `running`, SIGKILLs every pid in it     | checks `cancelled`: if set, fails the job unrun |
//! | 3    |                                               | a killed worker's job fails with `Cancelled`   |
//! | 4    |                                               | removes its pid (lock) before reaping the worker; if `cancelled` is set then, the worker may have been signalled after its job ended, so it is killed and replaced rather than given another job |
//!
//! Either the canceller finds the driver's pid in `running` (and kills it), or the driver sees
//! the flag before it sends the job: a job of a cancelled token never runs to completion unseen.
//! A pid is removed before its worker is reaped, so a kill never reaches a reused pid of a
//! process this pool reaped. A queued job of a cancelled token stays in the queue; the driver that
//! takes it fails it at once, unrun.
//!
//! ## Memory ordering
//!
//! `cancelled` is stored and loaded `SeqCst`; `running` is a mutex. The flag store precedes the
//! canceller's lock, and the driver's insertion precedes its flag load, so (with the mutex's
//! total order) at least one side sees the other.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::TaskError;
use crate::registry::lock;
use crate::result::Sink;
use crate::task::TaskRef;
use crate::wire::args::{self, Args};
use crate::wire::shared_args::SharedArgs;
use ipc_shm::transfer::FdBatch;

/// A job: one task function over a chunk of arguments.
pub(crate) struct Job {
    pub(crate) id: u64,
    pub(crate) task: TaskRef,
    /// The arguments, one bincode sequence (`Vec<A>`); empty when they are in `shared`.
    pub(crate) args: Vec<u8>,
    /// Large arguments the caller encoded into a bulk area of their own
    /// (`wire/shared_args.rs`), instead of into `args`.
    pub(crate) shared: Option<Box<SharedArgs>>,
    /// The descriptors of the IPC handles among the arguments, if any (`wire/args.rs`).
    pub(crate) fds: Option<Arc<FdBatch>>,
    /// The global index of the first argument.
    pub(crate) first: u64,
    pub(crate) count: u64,
    /// How many workers died while decoding this job's arguments (see `driver`).
    pub(crate) attempts: u32,
    /// Re-encodes arguments `skip..skip + take` of `args` (monomorphised for `A`), for the
    /// rare job that must be split after a worker died.
    reslice: Reslice,
    pub(crate) sink: Arc<dyn Sink>,
    /// Shared by the jobs of one cancellable handle (none for a synchronous `apply`).
    pub(crate) cancel: Option<Arc<CancelToken>>,
}

/// A large job gives its argument buffer back when it ends, for the next large encode
/// (`wire/recycle.rs`).
impl Drop for Job {
    fn drop(&mut self) {
        crate::wire::recycle::give(std::mem::take(&mut self.args));
    }
}

/// What cancelling a handle did (returned by [`CancelToken::cancel`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cancelled {
    /// How many workers running the token's jobs were killed.
    pub(crate) killed: usize,
}

/// The cancellation state shared by every job of one handle (see the module's protocol).
#[derive(Debug, Default)]
pub(crate) struct CancelToken {
    cancelled: AtomicBool,
    /// The pids of the workers running a job of this token right now.
    running: Mutex<Vec<u32>>,
}

impl CancelToken {
    pub(crate) fn new() -> Arc<CancelToken> {
        Arc::new(CancelToken::default())
    }

    /// Whether the handle was cancelled.
    #[inline]
    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    /// Cancels: sets the flag, then SIGKILLs every worker running one of the token's jobs.
    pub(crate) fn cancel(&self) -> Cancelled {
        self.cancelled.store(true, Ordering::SeqCst);
        let running = lock(&self.running);
        for &pid in running.iter() {
            let _ = ipc_shm::os::kill(pid, ipc_shm::os::Signal::SIGKILL);
        }
        Cancelled {
            killed: running.len(),
        }
    }

    /// A driver's worker `pid` is about to run a job of this token; `false` if the token is
    /// already cancelled (the job must not run; nothing stays registered).
    pub(crate) fn enter(&self, pid: u32) -> bool {
        lock(&self.running).push(pid);
        if self.is_cancelled() {
            let _ = self.leave(pid);
            return false;
        }
        true
    }

    /// The worker `pid` no longer runs a job of this token (idempotent). Called before the
    /// worker is reaped, so that no kill reaches its pid once the pid may be reused.
    ///
    /// Returns whether the token was cancelled while `pid` was registered: the worker may have
    /// been sent SIGKILL (a signal that may land after its job ended), so it must not be given
    /// another job.
    pub(crate) fn leave(&self, pid: u32) -> bool {
        let mut running = lock(&self.running);
        let Some(i) = running.iter().position(|&p| p == pid) else {
            return false;
        };
        running.swap_remove(i);
        self.is_cancelled()
    }
}

/// Re-encodes arguments `skip..skip + take` of encoded arguments, descriptors included
/// (`wire::args::reslice` monomorphised for the argument type).
pub(crate) type Reslice = fn(&Args, usize, usize) -> Option<Args>;

impl Job {
    /// The job `id` running `task` over `args`, the first of which has global index `first`;
    /// outcomes go to `sink`. With `areas`, large arguments may be encoded into a bulk area of
    /// their own (`wire/shared_args.rs`; not for a job that leaves as a cluster message).
    pub(crate) fn new<A: Serialize + DeserializeOwned>(
        id: u64,
        task: TaskRef,
        args: &[A],
        first: u64,
        sink: Arc<dyn Sink>,
        cancel: Option<Arc<CancelToken>>,
        areas: bool,
    ) -> Result<Job, TaskError> {
        let (encoded, shared) =
            args::encode_job(args, Vec::new(), areas).map_err(args::ArgsError::into_task_error)?;
        let mut job = Job::encoded::<A>(id, task, encoded, first, args.len() as u64, sink, cancel);
        job.shared = shared.map(Box::new);
        Ok(job)
    }

    /// The job `id` running `task` over `count` arguments of type `A` already encoded (as
    /// [`Job::new`] encodes them): how an `apply` run on the caller's thread becomes a job
    /// when it has to take the general way (`driver::apply_here`), without encoding again.
    pub(crate) fn encoded<A: Serialize + DeserializeOwned>(
        id: u64,
        task: TaskRef,
        args: Args,
        first: u64,
        count: u64,
        sink: Arc<dyn Sink>,
        cancel: Option<Arc<CancelToken>>,
    ) -> Job {
        Job {
            id,
            task,
            args: args.bytes,
            shared: None,
            fds: args.fds,
            first,
            count,
            attempts: 0,
            reslice: args::reslice::<A>,
            sink,
            cancel,
        }
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
        cancel: Option<Arc<CancelToken>>,
    ) -> Job {
        Job {
            id,
            task,
            args,
            shared: None,
            // A cluster message carries no descriptors (handles do not travel between
            // machines): a handle in a cluster task's argument fails to encode at submit.
            fds: None,
            first: 0,
            count,
            attempts: 0,
            reslice,
            sink,
            cancel,
        }
    }

    /// This job's re-slicing function (monomorphised for its argument type), which a cluster
    /// caller locates by offset for the node that may have to split the chunk.
    #[cfg(feature = "nats")]
    pub(crate) fn reslice_fn(&self) -> Reslice {
        self.reslice
    }

    /// The encoded arguments (copied out of their area if the caller encoded them into one).
    pub(crate) fn args_bytes(&self) -> Cow<'_, [u8]> {
        match &self.shared {
            Some(shared) => Cow::Owned(shared.to_vec()),
            None => Cow::Borrowed(&self.args),
        }
    }

    /// Takes the encoded arguments out of the job, as one buffer (copied out of their area,
    /// which goes back to the free list, if the caller encoded them into one).
    #[cfg(feature = "nats")]
    pub(crate) fn take_args(&mut self) -> Vec<u8> {
        match self.shared.take() {
            Some(shared) => shared.to_vec(),
            None => std::mem::take(&mut self.args),
        }
    }

    /// Fails every argument of the job with `error`.
    pub(crate) fn fail_all(&self, error: &TaskError) {
        for i in 0..self.count {
            self.sink.fail(self.first + i, error.clone());
        }
    }

    /// Whether the job's handle was cancelled.
    #[inline]
    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancel.as_ref().is_some_and(|c| c.is_cancelled())
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
        let whole = Args {
            bytes: self.args_bytes().into_owned(),
            fds: self.fds.clone(),
        };
        let part = (self.reslice)(&whole, skip as usize, (end - skip) as usize)?;
        Some(Job {
            id: self.id,
            task: self.task,
            args: part.bytes,
            shared: None,
            fds: part.fds,
            first: from,
            count: end - skip,
            attempts: self.attempts,
            reslice: self.reslice,
            sink: self.sink.clone(),
            cancel: self.cancel.clone(),
        })
    }
}
