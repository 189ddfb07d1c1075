//! Drivers: one parent thread per worker, which takes jobs from the registry, sends them down
//! the wire to its worker and collects the outcomes.
//!
//! Each worker process has a *driver* thread in the parent that takes a job, sends it to its
//! worker over the worker's own pipe, and receives the outcomes. Because the parent always knows
//! which job each worker holds, and the worker's progress slot (shared memory) tells which
//! argument it was running, a worker's death fails exactly that argument:
//!
//! | event while a job runs         | the argument running          | finished, reported | not started |
//! |--------------------------------|-------------------------------|--------------------|-------------|
//! | the task panics                | `Panicked`; the worker lives  | delivered          | run on      |
//! | the worker dies (signal, exit) | `WorkerLost`                  | delivered          | requeued    |
//! | `task_timeout` passes          | `Timeout`; the worker is killed | delivered        | requeued    |
//! | the job's handle is cancelled  | `Cancelled`; the worker is killed | delivered (ignored) | `Cancelled` |
//! | the pool is terminated         | `Terminated`; the worker is killed | delivered      | `Terminated` |
//!
//! Tasks that had not started run again on another worker however many times other deaths
//! bounce them (a worker killed before it took the job, while idle or starting). The one bound:
//! a job whose worker died three times while decoding its arguments, before its first task
//! started, fails with `WorkerLost` (a chunk that crashes its decoder would otherwise loop).
//!
//! A task never runs twice. A worker sends each result before it starts the next task whenever
//! tasks take 50 us or more (and every 50 us of work otherwise), so only fast tasks that finished
//! in the last 50 us before a death can lose their results; those fail with `WorkerLost` too
//! rather than run again (their side effects happened). The dead worker is reaped and replaced
//! by the same driver; workers that keep failing at start-up trip the restart-loop breaker
//! (`sizing`).
//!
//! A worker that crashes (a fatal signal it raises itself) says so before it is gone: its crash
//! handler stores the signal into the slot's `dying` word and hangs up its link
//! (`worker::serve`). The driver then settles the job at once with `WorkerLost { exit:
//! Signal(dying) }` and starts the replacement without waiting for the kernel to tear the old
//! process down (milliseconds for a large process); the old process is reaped afterwards, off
//! the replacement's path (`bury`). A worker killed from outside (SIGKILL: no handler runs) is
//! reaped first, as ever, for its exit status. With a warm spare (`spare`), the spare takes
//! the seat in `lost` before anything else, and the driver starts nothing. A job run on a
//! caller's thread (`run_here`) returns to the caller as soon as it is settled: the seat's
//! driver thread is woken to start the replacement.
//!
//! A cancel (see `job`'s protocol) kills the worker from the cancelling thread; its driver
//! settles the job like any death, with `Cancelled` for the job's tasks, and starts a new
//! worker as it would after a crash. That is no start-up failure, so the restart breaker never
//! counts it.
//!
//! A driver's state sits in a *seat* (a mutex): [`run_here`] lets a caller's thread borrow an
//! idle seat and run its job on that worker directly, and [`apply_here`] runs a lone task
//! (`Pool::apply`) that way without making a job at all unless it has to take the general way
//! (a death, a timeout, handles, a large argument), at the point it reached. A caller's thread
//! that must not block for long (a cluster node's runtime thread) runs its job
//! [`Blocking::Briefly`]: past a deadline, the rest of its wait goes through a function of its
//! choosing (the node's `tokio::task::block_in_place`).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Exit, PoolError, TaskError};
use crate::job::{CancelToken, Job};
use crate::registry::{Registry, lock};
use crate::result::{ResultCell, Sink, decode_one, failure_to_error};
use crate::start::{self, StartFailure, Worker};
use crate::stats::{WorkerState, WorkerStats};
use crate::task::TaskRef;
use crate::wire::args::{self, Args};
use crate::wire::bulk::BULK_MIN;
use crate::wire::bulk::BulkOut;
use crate::wire::header;
use crate::wire::protocol::{self, FromWorker, LinkError, ToWorker};
use crate::wire::shared_args::SharedArgs;

/// How many times a job's worker may die while decoding the job's arguments (before any of its
/// tasks starts) before the job fails with `WorkerLost` instead of running again.
const DECODE_DEATHS: u32 = 3;

/// The largest argument buffer a seat keeps for the next `apply` (`Driver::args`).
const KEEP_ARGS: usize = 64 << 10;

/// A worker seat: the driver's state behind a mutex. The driver thread holds it only while it
/// starts a worker or runs a job, so a thread calling [`Pool::apply`](crate::Pool::apply) can take an idle seat and
/// run its task on that worker directly, with no hand-off between threads.
pub(crate) type Seat = Arc<Mutex<Driver>>;

/// Counts one more worker and starts its driver thread; `ready`, if given, receives the outcome
/// of the driver's first worker start.
pub(crate) fn add(
    this: &Arc<Registry>,
    ready: Option<crossbeam_channel::Sender<Result<(), PoolError>>>,
) -> Result<(), PoolError> {
    this.workers.fetch_add(1, Ordering::SeqCst);
    spawn(this, ready)
}

/// Starts a driver thread for a worker already counted in `workers`.
pub(crate) fn spawn(
    this: &Arc<Registry>,
    ready: Option<crossbeam_channel::Sender<Result<(), PoolError>>>,
) -> Result<(), PoolError> {
    let id = this.next_driver.fetch_add(1, Ordering::Relaxed);
    let registry = this.clone();
    let seat: Seat = Arc::new(Mutex::new(Driver::new(this.clone(), id)));
    this.seats
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .push(seat.clone());
    let handle = std::thread::Builder::new()
        .name(format!("pool-driver-{id}"))
        .spawn(move || drive(seat, registry, ready))
        .map_err(|e| {
            this.workers.fetch_sub(1, Ordering::SeqCst);
            PoolError::os("spawning a driver thread", e)
        })?;
    lock(&this.drivers).push(handle);
    Ok(())
}

/// How long the thread collecting a job's outcomes may block in its wait for the worker.
pub(crate) enum Blocking<'a> {
    /// As long as the job runs (a driver thread, or a caller's thread that may block).
    Freely,
    /// Until `until`; from then on the rest of the wait runs inside `aside`, which must call the
    /// function it is given (once). A cluster node's runtime thread passes
    /// `tokio::task::block_in_place`: a chunk that ends within a short while costs no thread
    /// hand-off, and one that runs long stops holding the node's runtime.
    #[cfg_attr(not(feature = "nats"), allow(dead_code))]
    Briefly {
        until: Instant,
        aside: &'a mut dyn FnMut(&mut dyn FnMut()),
    },
}

impl Blocking<'_> {
    /// The limit of the next receive: the receive slice, or less, up to `until`.
    fn slice(&self, slice: Duration) -> Duration {
        match self {
            Blocking::Freely => slice,
            Blocking::Briefly { until, .. } => {
                slice.min(until.saturating_duration_since(Instant::now()))
            }
        }
    }
}

/// Runs `job` on an idle worker from the calling thread (blocking as `blocking` allows); gives
/// the job back if no worker is idle (or the pool cannot take work). A cluster pool publishes
/// it from the calling thread instead, when it can (`Registry::direct`).
pub(crate) fn run_here(this: &Registry, job: Job, blocking: Blocking<'_>) -> Result<(), Job> {
    if !this.takes_work() {
        return Err(job);
    }
    #[cfg(feature = "nats")]
    if let Some(direct) = this.direct.get() {
        return direct(job);
    }
    let seats = this.seats.read().unwrap_or_else(|p| p.into_inner());
    for seat in seats.iter() {
        let Ok(mut d) = seat.try_lock() else { continue };
        if d.worker.is_none() {
            continue;
        }
        // Counted and shown busy once the job is sent, while the worker runs it (see
        // `Driver::announce`).
        d.announce = Some(job.count);
        let ran = d.run_job(job, blocking);
        d.settle_here(ran);
        return Ok(());
    }
    Err(job)
}

/// What [`apply_here`] did with an `apply`.
pub(crate) enum Applied<R> {
    /// The worker answered: the task's outcome.
    Done(Result<R, TaskError>),
    /// The task took the general way part-way (see [`apply_here`]): its outcome comes
    /// through this cell.
    Pending(Arc<ResultCell<R>>),
    /// No idle worker (or the pool takes no work on the caller's thread): submit the task as
    /// a job.
    NoSeat,
}

/// Runs one task (`Pool::apply`) on an idle worker from the calling thread, as [`run_here`]
/// runs a job, without making a job while all goes well: the argument is encoded into the
/// seat's buffer and sent, and the caller waits on the seat for the one `Results` frame and
/// decodes the outcome itself (no result cell, no sink, no allocation). Anything else (the
/// worker died or did not answer within a receive slice, a frame other than that one,
/// arguments that hand descriptors over or are large enough for the bulk area) turns the task
/// into the job it would have been, at the point it reached, and the driver's general code
/// (`collect`, `lost`) takes it from there: every guarantee of a job holds.
pub(crate) fn apply_here<A, R>(this: &Registry, task: TaskRef, arg: &A) -> Applied<R>
where
    A: Serialize + DeserializeOwned,
    R: DeserializeOwned + Send + 'static,
{
    if !this.takes_work() {
        return Applied::NoSeat;
    }
    #[cfg(feature = "nats")]
    if this.direct.get().is_some() {
        return Applied::NoSeat;
    }
    let seats = this.seats.read().unwrap_or_else(|p| p.into_inner());
    for seat in seats.iter() {
        let Ok(mut d) = seat.try_lock() else { continue };
        if d.worker.is_none() {
            continue;
        }
        return d.apply(task, arg);
    }
    Applied::NoSeat
}

/// The job an `apply` becomes when it takes the general way, and the cell its outcome goes to.
fn apply_job<A, R>(id: u64, task: TaskRef, args: Args) -> (Arc<ResultCell<R>>, Job)
where
    A: Serialize + DeserializeOwned,
    R: DeserializeOwned + Send + 'static,
{
    let cell = ResultCell::new(None, None);
    let sink: Arc<dyn Sink> = cell.clone();
    (cell, Job::encoded::<A>(id, task, args, 0, 1, sink, None))
}

/// The driver thread of one seat: take jobs, run them, replace the worker when it goes.
fn drive(
    seat: Seat,
    registry: Arc<Registry>,
    ready: Option<crossbeam_channel::Sender<Result<(), PoolError>>>,
) {
    // An initial worker (one `build` waits for) reports its first start; a failure of its own
    // fails `build`, which then drops the pool. Other drivers start their worker in the loop,
    // where every failure counts for the breaker.
    let mut failed_at_start = false;
    if let Some(ready) = ready {
        let first = first_worker(&seat, &registry);
        failed_at_start = first.is_err();
        let _ = ready.send(first);
    }
    loop {
        if failed_at_start {
            break;
        }
        if registry.terminated.load(Ordering::SeqCst) {
            break;
        }
        let (started, wake) = {
            let mut d = lock(&seat);
            let started = if d.worker.is_none() {
                d.ensure_worker()
            } else {
                // A warm spare took the seat in `lost`: reap the dead worker now.
                d.bury();
                Ok(())
            };
            // A nudge from before this point is answered (the worker is in place or its start
            // failed): only a new loss on a caller's thread may wake the wait below.
            while d.wake.1.try_recv().is_ok() {}
            (started, d.wake.1.clone())
        };
        if let Err(failure) = started {
            if registry.record_failure(&failure) {
                break;
            }
            // Back off a little before trying again (a rate limit, as httpd's spawn rate).
            std::thread::sleep(RESTART_BACKOFF);
            continue;
        }
        let idle_limit = {
            let d = lock(&seat);
            d.set_state(WorkerState::Idle);
            d.idle_limit()
        };
        registry.idle.fetch_add(1, Ordering::SeqCst);
        let next = registry.next_job(idle_limit, &wake);
        registry.idle.fetch_sub(1, Ordering::SeqCst);
        match next {
            Some(Ok(job)) => {
                if registry.terminated.load(Ordering::SeqCst) {
                    registry.finish_job_error(&job, &TaskError::Terminated);
                    continue;
                }
                let mut d = lock(&seat);
                d.set_state(WorkerState::Busy);
                // Jobs still waiting and nobody idle: time to grow (if allowed).
                Registry::maybe_grow(&registry);
                match d.run_job(job, Blocking::Freely) {
                    Ran::Done => d.after_task(),
                    Ran::WorkerGone => {}
                }
            }
            Some(Err(())) => {
                // Woken because the worker was lost on a caller's thread: replace it.
                if lock(&seat).worker.is_none() {
                    continue;
                }
                if idle_limit.is_some() && lock(&seat).may_shrink() {
                    break;
                }
            }
            None => break,
        }
    }
    let id = {
        let mut d = lock(&seat);
        d.retire();
        d.id
    };
    // A broken pool: jobs this driver requeued after the breaker emptied the queue would wait
    // for a driver that never comes; they fail with the breaker's error instead.
    if let Some(broken) = lock(&registry.broken).clone() {
        registry.close_with(&broken.into());
    }
    lock(&registry.table).remove(&id);
    registry
        .seats
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .retain(|s| !Arc::ptr_eq(s, &seat));
    registry.workers.fetch_sub(1, Ordering::SeqCst);
}

/// The pause between failed worker starts (a rate limit, as httpd's spawn rate).
const RESTART_BACKOFF: Duration = Duration::from_millis(20);

/// Starts a new seat's first worker. A worker killed from outside while it starts (or lost with
/// its fork server) is replaced, as long as the breaker's rate for such deaths allows; the
/// first failure of the worker's own (its initializer's error, a crash, a hang) is the answer,
/// so that `build` reports a broken initializer at once.
fn first_worker(seat: &Seat, registry: &Registry) -> Result<(), PoolError> {
    loop {
        let failure = match lock(seat).ensure_worker() {
            Ok(()) => return Ok(()),
            Err(failure) => failure,
        };
        if !failure.outside || registry.terminated.load(Ordering::SeqCst) {
            return Err(failure.error);
        }
        if registry.record_failure(&failure) {
            return Err(lock(&registry.broken).clone().unwrap_or(failure.error));
        }
        std::thread::sleep(RESTART_BACKOFF);
    }
}

/// The outcome of running one job on a worker.
pub(crate) enum Ran {
    /// Every argument has an outcome; the worker is fine.
    Done,
    /// The worker is gone (died, or killed for a timeout); the job was settled.
    WorkerGone,
}

/// A parent thread that owns one worker.
pub(crate) struct Driver {
    pub(crate) registry: Arc<Registry>,
    pub(crate) id: usize,
    pub(crate) worker: Option<Worker>,
    frame: Vec<u8>,
    buf: Vec<u8>,
    /// The buffer the argument of an `apply` run on a caller's thread is encoded into, kept
    /// between calls (`Driver::apply`).
    args: Vec<u8>,
    /// The seat's bulk area, for large arguments (`wire/bulk.rs`).
    bulk: BulkOut,
    pub(crate) tasks_limit: Option<u64>,
    /// The cancel token of the job running now, while the worker's pid is registered in it.
    running: Option<(Arc<CancelToken>, u32)>,
    /// When this driver saw its worker die, until a replacement is ready (`replaced_in`).
    lost_at: Option<Instant>,
    /// Crashed workers whose job was settled from their `dying` word, not reaped yet
    /// (`bury`, once the replacement is ready).
    dead: Vec<Worker>,
    /// A job run by `run_here` not yet counted as submitted nor shown busy: done right after
    /// its frame is sent ([`Driver::announce`]), off the round trip's critical path.
    announce: Option<u64>,
    /// The driver thread's nudge: `run_here` lost this seat's worker, start a new one.
    wake: (
        crossbeam_channel::Sender<()>,
        crossbeam_channel::Receiver<()>,
    ),
}

impl Driver {
    fn new(registry: Arc<Registry>, id: usize) -> Driver {
        Driver {
            registry,
            id,
            worker: None,
            frame: Vec::new(),
            buf: Vec::new(),
            args: Vec::new(),
            bulk: BulkOut::default(),
            tasks_limit: None,
            running: None,
            lost_at: None,
            dead: Vec::new(),
            announce: None,
            wake: crossbeam_channel::bounded(1),
        }
    }

    /// After a job or an `apply` ran on a caller's thread: the worker's limits are checked
    /// (`after_task`) or, if it is gone, the seat's driver thread is woken to replace it (the
    /// caller has its outcome: its return must not wait for a new process); the seat shows
    /// idle.
    fn settle_here(&mut self, ran: Ran) {
        match ran {
            Ran::Done => self.after_task(),
            Ran::WorkerGone => {
                let _ = self.wake.0.try_send(());
            }
        }
        self.set_state(WorkerState::Idle);
    }

    /// Runs one task on this seat's worker for [`apply_here`] (see there).
    fn apply<A, R>(&mut self, task: TaskRef, arg: &A) -> Applied<R>
    where
        A: Serialize + DeserializeOwned,
        R: DeserializeOwned + Send + 'static,
    {
        let id = self.registry.next_job_id();
        let scratch = std::mem::take(&mut self.args);
        let (args, shared) = match args::encode_job(std::slice::from_ref(arg), scratch, true) {
            Ok(encoded) => encoded,
            Err(e) => return Applied::Done(Err(e.into_task_error())),
        };
        // Handles and large arguments take the job's way (descriptors, a bulk area).
        if args.fds.is_some() || shared.is_some() || args.bytes.len() >= BULK_MIN {
            return self.apply_as_job::<A, R>(id, task, args, shared);
        }
        if header::run_head(id, task, None, None, &mut self.frame).is_err() {
            // The job's way frames it again and reports the error.
            return self.apply_as_job::<A, R>(id, task, args, None);
        }
        let sent = match self.worker.as_mut() {
            Some(worker) => worker
                .link
                .send_vectored(&[&self.frame, &args.bytes], false),
            None => Err(LinkError::Disconnected),
        };
        // Counted and shown busy while the worker runs it (as `announce` does for a job), but
        // without reading the clock for `busy_since` (on this path as costly as the rest of
        // the bookkeeping): a task still running after a receive slice is given its start
        // then (`mark_busy_since`), when its running time starts to matter.
        self.registry.count_submitted(1);
        self.mark_busy();
        if sent.is_err() {
            let (cell, job) = apply_job::<A, R>(id, task, args);
            let ran = self.lost(job, 0, None);
            self.settle_here(ran);
            return Applied::Pending(cell);
        }
        let slice = self.recv_slice();
        let got = match self.worker.as_mut() {
            Some(worker) => worker.link.recv(&mut self.buf, Some(slice)),
            None => Err(LinkError::Disconnected),
        };
        if matches!(got, Err(LinkError::Timeout)) {
            self.mark_busy_since(slice);
        }
        if got.is_ok()
            && let Some((results, payload)) = header::read_results(&self.buf)
            && results
                == (header::Results {
                    job: id,
                    first: 0,
                    count: 1,
                    done: true,
                })
        {
            let (outcome, ok, failed) = decode_one::<R>(1, payload);
            let outcome = outcome
                .unwrap_or_else(|| Err(TaskError::Result("the worker sent no outcome".into())));
            // Counted before the caller sees the outcome, as a sink's tally is.
            self.registry.tally(ok, failed);
            self.task_finished(ok, failed);
            if args.bytes.capacity() <= KEEP_ARGS {
                self.args = args.bytes;
            }
            self.after_task();
            return Applied::Done(outcome);
        }
        // Anything else is the general code's: the frame received (if any) is still in `buf`.
        let (cell, job) = apply_job::<A, R>(id, task, args);
        let ran = self.collect(job, 0, Some(got), None, Blocking::Freely);
        self.settle_here(ran);
        Applied::Pending(cell)
    }

    /// An `apply` that takes the job's way from the start (see [`apply_here`]).
    fn apply_as_job<A, R>(
        &mut self,
        id: u64,
        task: TaskRef,
        args: Args,
        shared: Option<SharedArgs>,
    ) -> Applied<R>
    where
        A: Serialize + DeserializeOwned,
        R: DeserializeOwned + Send + 'static,
    {
        let (cell, mut job) = apply_job::<A, R>(id, task, args);
        job.shared = shared.map(Box::new);
        self.announce = Some(1);
        let ran = self.run_job(job, Blocking::Freely);
        self.settle_here(ran);
        Applied::Pending(cell)
    }

    /// Shows the seat busy, its running time not known yet (see [`Driver::mark_busy_since`]).
    fn mark_busy(&self) {
        if let Some(w) = lock(&self.registry.table).get_mut(&self.id) {
            w.state = WorkerState::Busy;
            w.busy_since = None;
        }
    }

    /// The seat's task, shown busy by [`Driver::mark_busy`], has been running for `running`.
    fn mark_busy_since(&self, running: Duration) {
        let since = Instant::now().checked_sub(running);
        if let Some(w) = lock(&self.registry.table).get_mut(&self.id) {
            w.busy_since = since;
        }
    }

    /// The seat's worker finished a task run on a caller's thread: its counts, and the seat
    /// shows idle (one look-up in the statistics table).
    fn task_finished(&self, ok: u64, failed: u64) {
        if let Some(w) = lock(&self.registry.table).get_mut(&self.id) {
            w.tasks_done += ok;
            w.tasks_failed += failed;
            w.state = WorkerState::Idle;
            w.busy_since = None;
            w.current_task = None;
        }
    }

    /// Counts the job `run_here` handed over as submitted and shows the worker busy, if that
    /// is still to do. Called as soon as the job's frame is in the pipe (or on any path that
    /// settles the job without sending it, before it is settled): the bookkeeping then runs
    /// while the worker works instead of before the worker can start.
    fn announce(&mut self) {
        if let Some(count) = self.announce.take() {
            self.registry.count_submitted(count);
            self.set_state(WorkerState::Busy);
        }
    }

    pub(crate) fn set_state(&self, state: WorkerState) {
        if let Some(w) = lock(&self.registry.table).get_mut(&self.id) {
            w.state = state;
            if state == WorkerState::Idle {
                w.busy_since = None;
                w.current_task = None;
            } else if state == WorkerState::Busy {
                w.busy_since = Some(Instant::now());
            }
        }
    }

    pub(crate) fn ensure_worker(&mut self) -> Result<(), StartFailure> {
        if self.worker.is_some() {
            return Ok(());
        }
        if self.adopt_spare(true) {
            return Ok(());
        }
        let mut worker = start::start(self.registry.settings.start_method)?;
        let initializer = self.registry.settings.initializer.as_ref();
        if let Err(e) = start::handshake(&mut worker, initializer, &mut self.buf, &mut self.frame) {
            worker.kill();
            let _ = worker.reap();
            return Err(e);
        }
        self.install(worker);
        Ok(())
    }

    /// Takes the pool's warm spare (`spare`) as this seat's worker, if the pool keeps one and
    /// it is ready (or, with `wait`, ready soon) and alive; returns whether it did.
    fn adopt_spare(&mut self, wait: bool) -> bool {
        if self.worker.is_some() || !self.registry.settings.warm_spare {
            return false;
        }
        if self.registry.terminated.load(Ordering::SeqCst) {
            return false;
        }
        match self.registry.spare.take(wait) {
            Some(worker) => {
                self.install(worker);
                true
            }
            None => false,
        }
    }

    /// Makes `worker`, started and greeted, this seat's worker: its statistics (a replacement
    /// keeps the seat's restart and failure counts, and records how long it took since the
    /// death was seen) and its task limit.
    fn install(&mut self, worker: Worker) {
        let pid = worker.pid;
        let mut table = lock(&self.registry.table);
        let was_replacement = table.contains_key(&self.id);
        let restarts = table
            .get(&self.id)
            .map_or(0, |w| w.restarts + u64::from(was_replacement));
        let tasks_failed = table.get(&self.id).map_or(0, |w| w.tasks_failed);
        table.insert(
            self.id,
            WorkerStats {
                pid,
                state: WorkerState::Idle,
                current_task: None,
                busy_since: None,
                current_task_runtime: None,
                tasks_done: 0,
                tasks_failed,
                restarts,
                rss_bytes: 0,
                cpu_time: Duration::ZERO,
                started: Instant::now(),
                replaced_in: self.lost_at.take().map(|seen| seen.elapsed()),
            },
        );
        drop(table);
        self.tasks_limit = self
            .registry
            .settings
            .max_tasks_per_child
            .map(|n| crate::sizing::jitter(n, pid));
        self.worker = Some(worker);
        // A new worker keeps no bulk area yet (even one whose pid was reused).
        self.bulk.forget();
        self.bury();
    }

    /// Reaps the crashed workers settled early (`lost`): those already gone here, the others
    /// on a thread of their own, so that nobody waits for their teardown.
    pub(crate) fn bury(&mut self) {
        for mut worker in self.dead.drain(..) {
            if !matches!(worker.try_reap(), Ok(None)) {
                continue;
            }
            let reaper = std::thread::Builder::new()
                .name("pool-reaper".into())
                .spawn(move || {
                    let _ = worker.reap();
                });
            // No thread to spare: the handle went with the failed spawn; the process stays a
            // zombie until ours ends, which costs a pid and nothing else.
            drop(reaper);
        }
    }

    /// Runs `job` on the worker, registered with the job's cancel token meanwhile (a job
    /// whose handle is already cancelled fails with `Cancelled`, unrun).
    fn run_job(&mut self, job: Job, blocking: Blocking<'_>) -> Ran {
        if job.cancel.is_some() {
            self.announce();
        }
        if let (Some(cancel), Some(worker)) = (&job.cancel, &self.worker) {
            let pid = worker.pid;
            if !cancel.enter(pid) {
                self.registry.finish_job_error(&job, &TaskError::Cancelled);
                return Ran::Done;
            }
            self.running = Some((cancel.clone(), pid));
        }
        let ran = self.run_registered(job, blocking);
        if self.leave_cancel() && matches!(ran, Ran::Done) {
            // A cancel may have sent this worker SIGKILL just after its job ended: never hand
            // it another job (which its death would then fail); replace it.
            if let Some(mut worker) = self.worker.take() {
                worker.kill();
                let _ = worker.reap();
            }
            return Ran::WorkerGone;
        }
        ran
    }

    /// Takes the worker's pid out of the running job's cancel token (before the worker is
    /// reaped: a cancel must never signal a pid that may be reused). Returns whether the token
    /// was cancelled while the worker was registered (see `CancelToken::leave`).
    fn leave_cancel(&mut self) -> bool {
        self.running
            .take()
            .is_some_and(|(cancel, pid)| cancel.leave(pid))
    }

    /// Sends `job` to the worker and collects its outcomes, handling death and timeouts.
    fn run_registered(&mut self, job: Job, blocking: Blocking<'_>) -> Ran {
        let registry = self.registry.clone();
        let Some(worker) = self.worker.as_mut() else {
            self.announce();
            let _ = registry.tx_requeue(job);
            return Ran::WorkerGone;
        };
        // Large arguments go through a bulk area: the one the caller encoded them into, or the
        // seat's own, rewritten only here; a job is sent only once the last one has ended, so
        // the worker never reads an area mid-write.
        let filled = job.shared.as_deref().and_then(SharedArgs::filled);
        let bulk = self.bulk.offer(
            &mut *worker.link,
            worker.pid,
            &job.args,
            filled,
            &mut self.frame,
        );
        let copied;
        let payload: &[u8] = match (bulk, &job.shared) {
            (Some(_), _) => &[],
            // The area could not be handed over: the bytes take the link.
            (None, Some(shared)) => {
                copied = shared.to_vec();
                &copied
            }
            (None, None) => &job.args,
        };
        // The frame's head is built here; the arguments go from the job straight into the
        // pipe (copied together only in the rare job that hands descriptors over).
        let framed = match job.fds.as_deref() {
            None => header::run_head(job.id, job.task, None, bulk, &mut self.frame),
            Some(fds) => {
                let header = ToWorker::Run {
                    job: job.id,
                    task: job.task,
                    fds: Some(fds.id()),
                    bulk,
                };
                protocol::frame(&header, payload, &mut self.frame)
            }
        };
        if let Err(e) = framed {
            self.announce();
            registry.finish_job_error(&job, &TaskError::Argument(e.to_string()));
            return Ran::Done;
        }
        let reported = job.first; // every index below this has an outcome
        let sent = match job.fds.as_deref() {
            None => worker.link.send_vectored(&[&self.frame, payload], false),
            Some(fds) => worker.link.send_with_fds(&self.frame, Some(fds)),
        };
        self.announce();
        if sent.is_err() {
            return self.lost(job, reported, None);
        }
        self.collect(job, reported, None, None, blocking)
    }

    /// How long a receive waits before the driver checks the pool's state and the running
    /// task's time limit.
    fn recv_slice(&self) -> Duration {
        self.registry
            .settings
            .task_timeout
            .map_or(Duration::from_millis(100), |t| {
                (t / 4).clamp(Duration::from_millis(1), Duration::from_millis(100))
            })
    }

    /// Collects the outcomes of `job`, sent to the worker, from argument `reported` on,
    /// handling death and timeouts. `received`: the outcome of a receive already made (its
    /// frame, if any, in `self.buf`), handled before receiving anything more. `watched`: the
    /// item the time limit watches, and since when. Blocks as `blocking` allows.
    fn collect(
        &mut self,
        mut job: Job,
        mut reported: u64,
        mut received: Option<Result<(), LinkError>>,
        mut watched: Option<(u64, Instant)>,
        mut blocking: Blocking<'_>,
    ) -> Ran {
        let registry = self.registry.clone();
        let end = job.first + job.count;
        let timeout = registry.settings.task_timeout;
        let slice = self.recv_slice();
        loop {
            let Some(worker) = self.worker.as_mut() else {
                return Ran::WorkerGone;
            };
            let got = match received.take() {
                Some(got) => got,
                None => worker.link.recv(&mut self.buf, Some(blocking.slice(slice))),
            };
            match got {
                Ok(()) => {
                    let (header, payload) = match protocol::unframe::<FromWorker>(&self.buf) {
                        Ok(frame) => frame,
                        Err(_) => {
                            // A worker that speaks nonsense is as good as dead.
                            self.kill_worker();
                            return self.lost(job, reported, None);
                        }
                    };
                    match header {
                        FromWorker::Results {
                            job: id,
                            first,
                            count,
                            done,
                        } if id == job.id => {
                            let start = job.first + first;
                            let n = count.min(end.saturating_sub(start));
                            if start == reported && n > 0 {
                                let id = self.id;
                                job.sink.deliver_encoded(start, n, payload, &|ok, failed| {
                                    registry.tally(ok, failed);
                                    if let Some(w) = lock(&registry.table).get_mut(&id) {
                                        w.tasks_done += ok;
                                        w.tasks_failed += failed;
                                    }
                                });
                                reported = start + n;
                            }
                            if done {
                                for i in reported..end {
                                    registry.deliver_error(
                                        &job,
                                        i,
                                        TaskError::Result("the worker sent no outcome".into()),
                                    );
                                }
                                return Ran::Done;
                            }
                        }
                        FromWorker::ChunkFailed { job: id, failure } if id == job.id => {
                            let error = failure_to_error(failure);
                            for i in reported..end {
                                registry.deliver_error(&job, i, error.clone());
                            }
                            return Ran::Done;
                        }
                        _ => continue,
                    }
                }
                Err(LinkError::Timeout) => {
                    if registry.terminated.load(Ordering::SeqCst) {
                        self.kill_worker();
                        job.first = reported;
                        job.count = end - reported;
                        registry.finish_job_error(&job, &TaskError::Terminated);
                        return Ran::WorkerGone;
                    }
                    let current = worker.slot.current_item();
                    if let Some(w) = lock(&registry.table).get_mut(&self.id) {
                        w.current_task = current;
                    }
                    if let (Some(limit), Some(item)) = (timeout, current) {
                        match watched {
                            Some((seen, since)) if seen == item => {
                                if since.elapsed() >= limit {
                                    self.kill_worker();
                                    return self.lost(
                                        job,
                                        reported,
                                        Some(TaskError::Timeout { limit }),
                                    );
                                }
                            }
                            _ => watched = Some((item, Instant::now())),
                        }
                    }
                    if let Blocking::Briefly { until, aside } = &mut blocking
                        && Instant::now() >= *until
                    {
                        // The rest of the wait, inside `aside` (which should call it; if it
                        // does not, the wait goes on here).
                        let mut rest = Some(job);
                        let mut ran = Ran::Done;
                        aside(&mut || {
                            if let Some(job) = rest.take() {
                                ran = self.collect(job, reported, None, watched, Blocking::Freely);
                            }
                        });
                        return match rest {
                            Some(job) => {
                                self.collect(job, reported, None, watched, Blocking::Freely)
                            }
                            None => ran,
                        };
                    }
                }
                Err(LinkError::Disconnected) | Err(LinkError::Broken) => {
                    return self.lost(job, reported, None);
                }
            }
        }
    }

    fn kill_worker(&mut self) {
        if let Some(w) = &self.worker {
            let _ = ipc_shm::os::kill(w.pid, ipc_shm::os::Signal::SIGKILL);
        }
    }

    /// The worker is gone while holding `job`: settle the job and drop the worker.
    /// `cause` is the error for the running argument (default: `WorkerLost` with its exit).
    fn lost(&mut self, mut job: Job, reported: u64, cause: Option<TaskError>) -> Ran {
        let registry = self.registry.clone();
        let Some(mut worker) = self.worker.take() else {
            let _ = registry.tx_requeue(job);
            return Ran::WorkerGone;
        };
        let pid = worker.pid;
        self.lost_at = Some(Instant::now());
        let _ = self.leave_cancel();
        // A warm spare takes the seat first, before the job is settled: the seat is back in
        // service at once (the old worker is reaped afterwards, off this path).
        let adopted = self.adopt_spare(false);
        // The link failed: whether the worker died or only its pipe broke, make sure it is gone
        // (a dying process keeps the status it is dying with; the pid stays ours until reaped).
        worker.kill();
        let slot = worker.slot.clone();
        let exit = match slot.dying() {
            // Its crash handler said how it ends: settle now, reap once the replacement runs.
            Some(signal) => {
                self.dead.push(worker);
                Exit::Signal(signal)
            }
            None => worker.reap().unwrap_or(Exit::Code(-1)),
        };
        if !adopted && let Some(w) = lock(&registry.table).get_mut(&self.id) {
            w.state = WorkerState::Starting;
        }
        // Cut short by terminate() (which killed the worker) or by a cancel of the job's handle:
        // every task of the job without an outcome gets that reason, whatever the worker was
        // doing, and nothing runs again.
        let stopped = if registry.terminated.load(Ordering::SeqCst) {
            Some(TaskError::Terminated)
        } else if job.is_cancelled() {
            Some(TaskError::Cancelled)
        } else {
            None
        };
        if let Some(stopped) = stopped {
            let end = job.first + job.count;
            job.first = reported.min(end);
            job.count = end - job.first;
            registry.finish_job_error(&job, &stopped);
            return Ran::WorkerGone;
        }
        let cause = cause.unwrap_or(TaskError::WorkerLost { pid, exit });
        let end = job.first + job.count;
        let words = slot.words();
        // Whether the worker had taken this very job off its pipe before it died.
        let received = words.job.load(Ordering::Acquire) == job.id;
        let running = if received {
            slot.current_item().map(|i| job.first + i)
        } else {
            None
        };
        match running {
            Some(item) if item >= reported && item < end => {
                // Arguments that finished but whose results were not sent yet: they ran (their
                // side effects happened), so they are not run again; their results are lost.
                for i in reported..item {
                    registry.deliver_error(&job, i, TaskError::WorkerLost { pid, exit });
                }
                registry.deliver_error(&job, item, cause);
                if let Some(w) = lock(&registry.table).get_mut(&self.id) {
                    w.tasks_failed += 1;
                }
                if let Some(rest) = job.rest_from(item + 1) {
                    let _ = registry.tx_requeue(rest);
                }
            }
            _ => {
                // None of the job's remaining tasks started: run them again elsewhere. A death
                // before the worker even took the job (killed while idle or starting, or another
                // task's death) says nothing about this job and is never counted, however often
                // it happens. Only a death while the worker held this job and was decoding its
                // arguments, before its first task started, counts: a chunk that kills its
                // decoder three times fails rather than loop forever.
                let mut rest = match job.rest_from(reported) {
                    Some(rest) => rest,
                    None => return Ran::WorkerGone,
                };
                if received {
                    rest.attempts += 1;
                }
                if rest.attempts >= DECODE_DEATHS {
                    registry.finish_job_error(&rest, &cause);
                } else {
                    let _ = registry.tx_requeue(rest);
                }
            }
        }
        Ran::WorkerGone
    }

    /// Asks the worker to exit and reaps it (killing it if it does not go in time).
    fn retire(&mut self) {
        if let Some(worker) = self.worker.take() {
            finish_worker(worker);
        }
        for mut worker in self.dead.drain(..) {
            let _ = worker.reap();
        }
    }
}

/// Asks `worker` to exit and reaps it, killing it if it does not go within 2 s.
pub(crate) fn finish_worker(mut worker: Worker) {
    let mut frame = Vec::new();
    if protocol::frame(&ToWorker::Exit, &[], &mut frame).is_ok() {
        let _ = worker.link.send(&frame);
    }
    if !worker.wait_exit(Duration::from_secs(2)) {
        worker.kill();
    }
    let _ = worker.reap();
}
