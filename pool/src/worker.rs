//! The worker's side: greet the pool, then run jobs until told to exit or the pool is gone.
//!
//! Per argument the worker stores its index in the progress slot, runs the task (catching a
//! panic, which fails that argument only), and collects the outcome. Outcomes are sent when the
//! job is done, and also as soon as 50 us of work have accumulated, so that a death loses no
//! result of a slow task and at most 50 us of fast ones.
//!
//! ## Waiting for a job
//!
//! A spawned or fork-server worker's end of its pipe is in ipc-pipe's fd mode, like the pool's
//! end (a `Fork` worker's is not: see below): when no job is there after the pipe's brief spin,
//! the worker sleeps in `poll(2)` on the pipe's socket, and the driver that sends the next job
//! wakes it with a byte on that socket. Two things follow. An idle worker never wakes until
//! there is work (a futex-mode end wakes every 20 ms to check that its peer lives; here the
//! kernel reports the pool's hang-up). And the kernel's wake-up of a socket reader is a
//! *synchronous* one: it prefers the waker's CPU, which the driver leaves at once to wait for
//! the results. Woken through a futex, a worker was often queued behind the other worker on a
//! busy CPU while its driver's CPU went idle: on the 2-vCPU reference machine
//! `perf sched timehist` showed spells of 1-4 ms with one worker running inside 2-worker maps
//! of CPU-bound tasks (91.4% of both workers' time used inside the maps; 97.6% with this, and
//! no spell above 0.3 ms). The runner's `cpu_10us/w2` and `cpu_100us/w2` (fork-server pools),
//! six interleaved pairs each: median 94.0% and 94.6% of rayon with this, 87.9% and 91.2%
//! without.
//!
//! `Fork` workers wait on the futex as before: with them in fd mode, a crash reached its task
//! later after a run of other workloads (`compare --workloads
//! apply,map_trivial,payload,crash_recovery`, seven runs each way, alternating: crash ->
//! `WorkerLost` 0.78-1.59 ms against 0.21-0.74 ms), while run alone it made no difference. A
//! `Fork` worker is a copy of the caller's whole process, and its death tears that copy down;
//! why the wake-up placement makes that slower to report is not established. Spawned and
//! fork-server workers (small processes; the fork server is the default) showed no such cost.
//!
//! Before it greets the pool, the worker installs the early death notice
//! (`ipc_shm::os::install_death_notice`): a crash (SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT,
//! SIGTRAP, SIGSYS) stores its signal into the slot's `dying` word and shuts the link's socket
//! down, so the pool learns of the death, and how it ends, before the kernel has torn the
//! process down (milliseconds for a large process).
//!
//! A worker keeps up to 64 MiB of freed heap (`ipc_shm::os::keep_freed_heap`): a task's
//! arguments are decoded into new allocations, and with glibc's defaults a worker running
//! tasks with megabyte arguments would return that memory after each task and take every page
//! fault again on the next, which costs more than the copies themselves. A worker's resident
//! size can therefore stay up to that much above what its tasks hold (`max_memory_per_child`
//! counts it).
//!
//! This is the one place where a task reference received from the pool becomes a call. It needs
//! no `unsafe`: the call goes through [`crate::task`], and its justification, the executable
//! check of the handshake, is the `SameBuild` token that announcing the `Hello` yields.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ipc_shm::transfer::{self, FdBatch};

use crate::slot::{ProgressSlot, ProgressWords};
use crate::task::{ChunkCtx, Failure, SameBuild};
use crate::wire::bulk::{BulkIn, Input};
use crate::wire::header;
use crate::wire::protocol::{self, FromWorker, Link, LinkError, ToWorker};
use crate::wire::transport::PipeLink;

/// Exit codes of a worker process.
pub(crate) mod code {
    /// Told to exit, or the pool went away.
    pub(crate) const OK: i32 = 0;
    /// The transport broke.
    pub(crate) const LINK: i32 = 70;
    /// The pool sent something that does not decode.
    pub(crate) const PROTOCOL: i32 = 71;
    /// The initializer failed.
    pub(crate) const INIT_FAILED: i32 = 72;
}

/// Results wait in the worker at most this long (measured after each task while tasks are
/// slow, and every 16 tasks while they are fast): a task of 50 us or more is reported before
/// the next one starts, so a crash in one task never loses another's result.
const FLUSH_EVERY: Duration = Duration::from_micros(50);
const FLUSH_BYTES: usize = 1 << 20;

/// Freed heap a worker keeps rather than returning it to the kernel at once
/// (`ipc_shm::os::keep_freed_heap`).
const KEEP_FREED_HEAP: usize = 64 << 20;

/// How a worker sleeps while it waits for a job (module docs, "Waiting for a job").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JobWait {
    /// In `poll(2)` on the pipe's socket, woken synchronously by the driver's send.
    Poll,
    /// On the pipe's futex (in 20 ms slices). For `Fork` workers: see the module docs.
    Futex,
}

/// In a process made ahead of the worker it will become (the fork server's blank, the spawn
/// standby), while it waits: the first-time work of [`serve`] and [`run`] that needs no request,
/// so that the seat, once handed over, greets its pool sooner. A forked blank shares its pages
/// with the server until it writes them (each first write copies one), an executed standby has
/// never touched most of its pages: the heap settings, the panic hook, the executable's
/// identity and a first use of the heap and the stack take those faults now.
pub(crate) fn prewarm() {
    ipc_shm::os::keep_freed_heap(KEEP_FREED_HEAP);
    crate::task::install_panic_hook();
    let _ = std::hint::black_box(ipc_shm::os::exe_identity());
    // The frame and receive buffers' first sizes, and some stack for the loop's calls.
    let heap = std::hint::black_box(vec![1u8; 64 << 10]);
    drop(heap);
    let stack = std::hint::black_box([1u8; 32 << 10]);
    std::hint::black_box(&stack);
}

/// Serves the pool on `link` in a new worker process: installs the death notice (on the slot's
/// `dying` word and the link's socket), then runs the worker loop, waiting for jobs as `wait`
/// says; returns the exit code.
///
/// `name`: the name this process takes when its first request comes (a fork server's blank
/// that greeted its pool ahead keeps the blank's name until a seat is its); `None` keeps the
/// current one.
pub(crate) fn serve(
    mut link: PipeLink,
    slot: &ProgressSlot,
    wait: JobWait,
    name: Option<std::ffi::CString>,
) -> i32 {
    // Large arguments are decoded into fresh allocations task after task; without this, glibc
    // hands each one back to the kernel and the next task faults it in again (module docs).
    ipc_shm::os::keep_freed_heap(KEEP_FREED_HEAP);
    // How it waits for the next job: see the module docs, "Waiting for a job".
    if wait == JobWait::Poll {
        link.set_pollable();
    }
    // The handler needs the word for the rest of the process: this process ends with the loop.
    let kept: &'static ProgressSlot = Box::leak(Box::new(slot.clone()));
    // Without the notice (a descriptor limit) a crash is still seen, by the reap.
    if let Ok(socket) = link.hangup_fd() {
        let _ = ipc_shm::os::install_death_notice(&kept.words().dying, socket);
    }
    run(&mut link, slot, name)
}

/// Runs the worker loop on `link`; returns the process exit code.
pub(crate) fn run(
    link: &mut dyn Link,
    slot: &ProgressSlot,
    mut name: Option<std::ffi::CString>,
) -> i32 {
    // A task's panic is caught and sent to the caller (message, location, and the backtrace
    // when RUST_BACKTRACE is set); the hook prints nothing in the worker.
    crate::task::install_panic_hook();
    let mut frame = Vec::new();
    // The pool checks this identity before it sends any task; `build` is the token of that
    // check that running a task needs.
    let (exe, build) = SameBuild::announce();
    let hello = FromWorker::Hello {
        pid: std::process::id(),
        exe,
    };
    if send(link, &hello, &[], &mut frame).is_err() {
        return code::LINK;
    }
    let mut buf = Vec::new();
    let mut outcomes = Vec::new();
    let mut bulk = BulkIn::default();
    loop {
        match link.recv(&mut buf, None) {
            Ok(()) => {}
            Err(LinkError::Disconnected) => return code::OK,
            Err(_) => return code::LINK,
        }
        if let Some(name) = name.take() {
            let _ = ipc_shm::os::set_thread_name(&name);
        }
        // A task's `Run` header is read by hand (`wire/header.rs`), anything else by serde.
        let (header, payload) = match header::read_run(&buf) {
            Some((run, payload)) => (
                ToWorker::Run {
                    job: run.job,
                    task: run.task,
                    fds: run.fds,
                    bulk: run.bulk,
                },
                payload,
            ),
            None => match protocol::unframe::<ToWorker>(&buf) {
                Ok(frame) => frame,
                Err(_) => return code::PROTOCOL,
            },
        };
        match header {
            ToWorker::Exit => return code::OK,
            // Renamed above, as at any first request.
            ToWorker::Seated => {}
            ToWorker::Init { task, fds } => {
                let mut ctx = InitCtx { failure: None };
                match take_batch(link, fds) {
                    Ok(batch) => {
                        // The initializer's progress is nobody's business.
                        let running = AtomicU64::new(0);
                        let input = Input::Bytes(payload);
                        let _ = with_batch(batch, || task.run(&build, input, &running, &mut ctx));
                    }
                    Err(failure) => ctx.failure = Some(failure),
                }
                match ctx.failure {
                    None => {
                        if send(link, &FromWorker::InitDone, &[], &mut frame).is_err() {
                            return code::LINK;
                        }
                    }
                    Some(failure) => {
                        let _ = send(link, &FromWorker::InitFailed { failure }, &[], &mut frame);
                        return code::INIT_FAILED;
                    }
                }
            }
            ToWorker::Bulk { fds, id } => match take_batch(link, fds) {
                Ok(batch) => with_batch(batch, || bulk.adopt(id, payload)),
                // Without its descriptor the area stays missing: the job that needs it fails.
                Err(_) => bulk.adopt(id, &[]),
            },
            ToWorker::UseBulk { id } => bulk.select(id),
            ToWorker::Run {
                job,
                task,
                fds,
                bulk: in_bulk,
            } => {
                // The descriptors of handles among the arguments came ahead of the frame.
                let batch = match take_batch(link, fds) {
                    Ok(batch) => batch,
                    Err(failure) => {
                        let header = FromWorker::ChunkFailed { job, failure };
                        if send(link, &header, &[], &mut frame).is_err() {
                            return code::LINK;
                        }
                        continue;
                    }
                };
                // Large arguments wait in the bulk area: the trampoline decodes them straight
                // out of it, before it runs or reports anything.
                let input = match in_bulk {
                    None => Input::Bytes(payload),
                    Some(len) => match bulk.input(len) {
                        Ok(input) => input,
                        Err(failure) => {
                            let header = FromWorker::ChunkFailed { job, failure };
                            if send(link, &header, &[], &mut frame).is_err() {
                                return code::LINK;
                            }
                            continue;
                        }
                    },
                };
                let words = slot.words();
                words.job.store(job, Ordering::Release);
                let mut ctx = JobCtx {
                    link: &mut *link,
                    words,
                    job,
                    done: words.done.load(Ordering::Relaxed),
                    last_flush: None,
                    frame: &mut frame,
                    outcomes: &mut outcomes,
                };
                let sent = with_batch(batch, || task.run(&build, input, &words.item, &mut ctx));
                words.item.store(0, Ordering::Release);
                if sent.is_err() {
                    return code::LINK;
                }
            }
        }
    }
}

/// Running a job: progress into the slot, outcomes onto the link.
struct JobCtx<'a> {
    link: &'a mut dyn Link,
    words: &'a ProgressWords,
    job: u64,
    done: u64,
    /// When outcomes were last sent (or the chunk began); only read for chunks of more than
    /// one task (a one-task chunk, an `apply`, sends its outcome when done and never asks).
    last_flush: Option<Instant>,
    frame: &'a mut Vec<u8>,
    /// The outcome buffer kept between chunks (`ChunkCtx::take_buffer`).
    outcomes: &'a mut Vec<u8>,
}

/// An outcome buffer larger than this is not kept for the next chunk.
const KEEP_OUTCOMES: usize = 64 << 10;

impl ChunkCtx for JobCtx<'_> {
    fn take_buffer(&mut self) -> Vec<u8> {
        let mut buf = std::mem::take(self.outcomes);
        buf.clear();
        buf
    }

    fn keep_buffer(&mut self, buf: Vec<u8>) {
        if buf.capacity() <= KEEP_OUTCOMES {
            *self.outcomes = buf;
        }
    }

    fn begin(&mut self, tasks: usize) {
        if tasks > 1 {
            self.last_flush = Some(Instant::now());
        }
    }

    fn flush_due(&mut self, pending_bytes: usize) -> bool {
        pending_bytes >= FLUSH_BYTES || self.last_flush.is_none_or(|at| at.elapsed() >= FLUSH_EVERY)
    }

    fn flush(&mut self, first: usize, count: usize, outcomes: &[u8], done: bool) -> Result<(), ()> {
        self.done += count as u64;
        self.words.done.store(self.done, Ordering::Release);
        if !done {
            self.last_flush = Some(Instant::now());
        }
        // The bytes of `protocol::seq_frame_head` for `FromWorker::Results`, written by hand.
        header::results_head(self.job, first as u64, count as u64, done, self.frame)
            .map_err(drop)?;
        // An intermediate report only has to survive this worker's death: it goes into the
        // pipe without waking the driver, which reads it with the job's last report (or after
        // the death). A copy, not a wake-up, per report; the outcomes go from the trampoline's
        // buffer straight into the pipe.
        self.link
            .send_vectored(&[self.frame, outcomes], !done)
            .map_err(drop)
    }

    fn chunk_failed(&mut self, failure: Failure) -> Result<(), ()> {
        let header = FromWorker::ChunkFailed {
            job: self.job,
            failure,
        };
        send(self.link, &header, &[], self.frame).map_err(drop)
    }
}

/// Running the initializer: only its failure matters.
struct InitCtx {
    failure: Option<Failure>,
}

impl ChunkCtx for InitCtx {
    fn flush_due(&mut self, _pending_bytes: usize) -> bool {
        false
    }

    fn flush(
        &mut self,
        _first: usize,
        count: usize,
        outcomes: &[u8],
        _done: bool,
    ) -> Result<(), ()> {
        // One `Result<(), Failure>`: the initializer's outcome.
        if count == 1
            && let Ok(Err(failure)) = crate::wire::codec::decode::<Result<(), Failure>>(outcomes)
        {
            self.failure = Some(failure);
        }
        Ok(())
    }

    fn chunk_failed(&mut self, failure: Failure) -> Result<(), ()> {
        self.failure = Some(failure);
        Ok(())
    }
}

/// The descriptor batch `fds` names (`wire/args.rs`), taken from the link; a failure is the
/// arguments' (they cannot be decoded without it).
fn take_batch(link: &mut dyn Link, fds: Option<u64>) -> Result<Option<FdBatch>, Failure> {
    match fds {
        None => Ok(None),
        Some(id) => link
            .take_fds(id)
            .map(Some)
            .map_err(|e| Failure::DecodeArgument(format!("the handles' descriptors: {e}"))),
    }
}

/// Runs `f` (a task's decode and calls) with `batch` as the transfer context's incoming
/// descriptors; those no handle took are closed afterwards.
fn with_batch<R>(batch: Option<FdBatch>, f: impl FnOnce() -> R) -> R {
    match batch {
        None => f(),
        Some(batch) => transfer::decode_with(Some(batch), f).0,
    }
}

fn send(
    link: &mut dyn Link,
    header: &FromWorker,
    payload: &[u8],
    frame: &mut Vec<u8>,
) -> Result<(), LinkError> {
    protocol::frame(header, payload, frame).map_err(|_| LinkError::Broken)?;
    link.send(frame)
}
